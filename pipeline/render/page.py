"""The report page's parts: embedded pictures (PNG as data: URIs), inline SVG charts drawn by
matplotlib (text as paths, so fonts never matter), tables, number formatting and the style sheet.
Nothing here names a URL: the page works offline."""

from __future__ import annotations

import base64
import html
import io
import json
import re

import numpy as np
import pandas as pd

from pipeline.core import dataset
from pipeline.render import gallery


def png(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return img_tag(buf.getvalue(), "image/png")


def img_tag(data: bytes, mime: str, alt: str = "") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def figure(draw, width: float = 5.0, height: float = 3.2) -> str:
    """An inline SVG chart: `draw(ax)` on a fresh matplotlib figure; text as paths, so fonts never matter."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # not its font-cache notes
    import matplotlib.pyplot as plt

    with plt.rc_context({"svg.hashsalt": "report", "svg.fonttype": "path", "font.size": 8}):
        fig, ax = plt.subplots(figsize=(width, height))
        try:
            ax.grid(alpha=0.3)
            draw(ax)
            fig.tight_layout()
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata={"Date": None})
        finally:
            plt.close(fig)
    # inline SVG in HTML needs neither namespaces nor matplotlib's RDF metadata: without them the page
    # names no URL at all
    svg = re.sub(r"<metadata>.*?</metadata>", "", buf.getvalue()[buf.getvalue().index("<svg") :], flags=re.S)
    return re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)


def bars(labels: list[str], series: dict[str, list[float]], ylabel: str):
    def draw(ax):
        x, w = np.arange(len(labels)), 0.8 / max(1, len(series))
        for i, (name, values) in enumerate(series.items()):
            ax.bar(x + (i - (len(series) - 1) / 2) * w, values, w, label=name)
        ax.set_xticks(x, labels, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
        ax.set_ylabel(ylabel)
        if len(series) > 1:
            ax.legend()

    return draw


def thumbs(df: pd.DataFrame, captions: list[str], title: str, limit: int) -> str:
    """A gallery of manifest rows' pixels with captions."""
    if not len(df):
        return png(gallery.empty(title))
    df = df.iloc[:limit]
    return png(gallery.grid(dataset.load_pixels(df), captions[:limit], cols=8, title=title))


def table(rows: list[tuple], header: tuple | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return html.escape(json.dumps(v))
    return html.escape(str(v))


def flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out += flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 16px 48px;color:#222}
h1{margin:24px 0 4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
nav a{margin-right:10px}table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:2px 8px;
text-align:left}th{background:#f4f4f4}.kpis{display:flex;flex-wrap:wrap;gap:8px}.kpi{border:1px solid #ddd;
border-radius:6px;padding:6px 12px;min-width:90px}.kpi b{display:block;font-size:18px}.kpi span{color:#666;
font-size:12px}img{max-width:100%;image-rendering:pixelated}figure{margin:8px 0}figcaption{color:#666;font-size:12px}
.cols{display:flex;gap:32px;flex-wrap:wrap}tr.ok td:first-child{color:#080}tr.bad td:first-child{color:#c00}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:300px}svg{max-width:100%;height:auto}
"""

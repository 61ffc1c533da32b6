"""`python -m pipeline plots-offline`: a page template for `dvc plots show/diff` that works offline.

DVC's default page loads Vega, Vega-Lite and vega-embed from a CDN, so with no network its charts
are blank. This writes a template (`--html-template`) with the three inlined: vl-convert (the
`plots` extra) ships them bundled, so nothing is fetched, now or when the page opens. DVC fills
`{plot_divs}`; the template leaves out `{scripts}`, where DVC would put its CDN links.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.core.console import log
from pipeline.core.errors import PipelineError

OUT = ".dvc/plots/offline.html"
# DVC's specs are Vega-Lite 5 (its CDN page loads 5.2) with numbers as strings, which Vega-Lite 6
# no longer parses: the 5.x closest to it of those vl-convert bundles
VEGA_LITE = "5.8"
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC Plot</title>
<script>BUNDLE</script>
<style>table {border-spacing: 15px;} img {image-rendering: pixelated; max-width: 100%;}</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def template() -> str:
    try:
        import vl_convert
    except ImportError:
        raise PipelineError(
            "plots-offline needs vl-convert-python (pip install -e '.[plots]'), which bundles Vega"
        ) from None
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE).replace(
        "</script", "<\\/script"
    )  # cannot end the tag early
    return PAGE.replace("BUNDLE", bundle)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=OUT, help="template file to write (default: %(default)s)")


def main(params, args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(template())
    log.info("plots-offline: %s; now `dvc plots show --html-template %s` (or `dvc plots diff ...`)", out, out)

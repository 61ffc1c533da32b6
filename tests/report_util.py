"""Checks of the report page shared by the end-to-end tests: parsed, then rendered by Chromium."""

from __future__ import annotations

import base64
import io
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images, self.refs, self.tags = [], [], [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.images.append(a.get("src", ""))
        self.refs += [a[k] for k in ("src", "href", "action", "poster") if k in a and tag != "img"]


def check_report(html: str, stages: list[str]) -> _Page:
    """Every stage has its section, in pipeline order; nothing points outside the page; every image decodes."""
    page = _Page()
    page.feed(html)
    sections = [i.removeprefix("stage-") for i in page.ids if i.startswith("stage-")]
    assert sections == [s for s in stages if s != "report"], sections
    assert {"data-card", "ablation"} <= set(page.ids)
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}, page.tags
    assert all(r.startswith("#") for r in page.refs), page.refs  # in-page anchors only
    assert len(page.images) >= 8
    for src in page.images:
        head, _, data = src.partition(",")
        assert head == "data:image/png;base64", head[:40]
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    assert html.count("<svg") >= 5  # the charts: class balance, curves, confusion, calibration, robustness
    return page


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "no chromium on PATH: install Debian's chromium (.ci/run does)"
    return found


def render_in_chromium(path: Path, shot: Path, selector: str | None = None, count: str = "svg") -> dict:
    """Open the page in a real headless Chromium: console errors and failed requests, page height,
    the number of `count` elements once drawn, and a screenshot that is not blank."""
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto(path.resolve().as_uri())
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(shot))
            if selector:
                page.locator(selector).screenshot(path=str(shot.with_name(shot.stem + "_section.png")))
            height = page.evaluate("document.body.scrollHeight")
            drawn = page.evaluate(f"document.querySelectorAll({count!r}).length")
        finally:
            browser.close()
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert len(np.unique(pixels)) > 20 and pixels.std() > 10, "blank screenshot"
    return {"errors": errors, "height": height, "drawn": drawn}

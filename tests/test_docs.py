"""The README is a front door (<= 15 KB) and every relative link in it and in docs/ resolves."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_readme_is_short():
    assert (ROOT / "README.md").stat().st_size <= 15_000


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    broken = [x for x in links if not x.startswith(("http://", "https://")) and not (page.parent / x).exists()]
    assert broken == []


def test_docs_have_the_pages_people_look_for():
    names = {p.stem for p in PAGES}
    assert {"architecture", "reproducibility", "labelstudio", "results", "migrating", "ingest", "split"} <= names
    assert "np.sctypes" in (ROOT / "docs/migrating.md").read_text()  # why imgaug is not a dependency

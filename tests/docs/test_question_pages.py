"""The question pages of docs/ as a reader meets them: every page is in the docs index and in
the README's question table by its scenario, every picture it shows exists and stays under
the 250 kB the pages are held to, and every scenario it runs is bundled."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs" / "questions").glob("*.md"))
INDEX = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAX_PICTURE_BYTES = 250_000


def test_pages_are_numbered_without_gaps():
    numbers = [int(p.name.split("-")[0]) for p in PAGES]
    assert numbers == list(range(1, len(PAGES) + 1))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_page_is_indexed_and_its_pictures_and_scenarios_exist(page):
    text = page.read_text(encoding="utf-8")
    assert f"(questions/{page.name})" in INDEX
    for picture in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        path = (page.parent / picture).resolve()
        assert path.is_file(), picture
        assert path.stat().st_size <= MAX_PICTURE_BYTES, (picture, path.stat().st_size)
    for scenario in re.findall(r"scenarios/[\w.-]+\.yaml", text):
        assert (ROOT / scenario).is_file(), scenario


@pytest.mark.parametrize("scenario", ["llama3-70b-fsdp-vs-3d", "llama31-405b-8k",
                                      "llama31-405b-128k", "mixtral-8x22b-ep",
                                      "deepseek-v3-2048-h800"])
def test_modern_scenarios_have_a_page_and_a_readme_row(scenario):
    pages = [p for p in PAGES if f"scenarios/{scenario}.yaml" in p.read_text(encoding="utf-8")]
    assert pages, scenario
    assert f"scenarios/{scenario}.yaml" in README

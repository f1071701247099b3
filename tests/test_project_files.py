"""The committed study files, reports and READMEs stay true: every study file validates, every
committed report has its notes, and every relative link in the READMEs and notes resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tmafbench.study.design import load_design

ROOT = Path(__file__).resolve().parents[1]
STUDY_FILES = sorted((ROOT / "studies").glob("*.toml"))
# Reports the project commits: not those .gitignore keeps out (the quickstart report the README's
# main command writes on a user's machine).
IGNORED = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
           if line.strip().startswith("/reports/")}
REPORTS = sorted(p for p in (ROOT / "reports").iterdir()
                 if (p / "index.md").is_file() and f"reports/{p.name}" not in IGNORED)
MARKDOWN = [ROOT / "README.md", ROOT / "reports" / "README.md", *sorted((ROOT / "reports" / "notes").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_project_has_study_files_and_reports():
    assert len(STUDY_FILES) >= 5 and len(REPORTS) >= 5


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.name)
def test_study_file_validates_and_is_named_after_its_file(path):
    design = load_design(path)  # the whole validation `study run` does before writing anything
    assert design.name == path.stem  # `report build <name>` then matches the file a reader sees
    assert design.cells
    assert f"studies/{path.name}" in path.read_text()  # the header shows how to run it


@pytest.mark.parametrize("folder", REPORTS, ids=lambda p: p.name)
def test_committed_report_carries_its_notes(folder):
    notes = ROOT / "reports" / "notes" / f"{folder.name}.md"
    assert notes.is_file(), f"{folder.name} has no reports/notes/{folder.name}.md"
    index = (folder / "index.md").read_text(encoding="utf-8")
    assert notes.read_text(encoding="utf-8").strip() in index
    assert (folder / "index.html").is_file()
    assert not list(folder.rglob("*.db"))  # reports, never databases


@pytest.mark.parametrize("folder", REPORTS, ids=lambda p: p.name)
def test_committed_report_links_its_figures_and_writes_no_none(folder):
    # Committed HTML links the PNG files beside it (it does not embed them again), no SVG copies ship,
    # and no title, header or cell reads None or "=–" where a cell has no grid.
    html = (folder / "index.html").read_text(encoding="utf-8")
    images = re.findall(r'<img alt="[^"]*" src="([^"]+)">', html)
    assert images and all((folder / src).is_file() for src in images) and "data:image" not in html
    assert set(images) == {f"figures/{p.name}" for p in (folder / "figures").glob("*.png")}
    assert not list(folder.rglob("*.svg"))
    for document in (folder / "index.md", folder / "index.html"):
        text = document.read_text(encoding="utf-8")
        assert "None" not in text and "=–" not in text, document.relative_to(ROOT)


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    # Notes are shown inside reports/<study>/index.md, one folder below reports/, like reports/notes/.
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # http(s) and other absolute links
        assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to missing {target}"


PAPER_FILES = [p for p in STUDY_FILES if p.name.startswith("paper-table-")]


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: p.name)
def test_paper_study_files_carry_the_published_numbers(path):
    # Every [reference] row names axes of the study's cells and matches at least one of them, so every
    # report of the file sets that published value beside a measured one.
    design = load_design(path)
    reference = design.spec.reference
    assert reference is not None and reference.source.startswith("Li, Liu and Zikatanov")
    for row in reference.rows:
        where = {k: v for k, v in row.items() if k not in ("value", "note")}
        assert any(all(str(cell.axes.get(k)) == str(v) for k, v in where.items()) for cell in design.cells), row

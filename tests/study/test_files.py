"""Study files by path or by packaged name (study/files.py)."""

from __future__ import annotations

import pytest

from tmafbench.errors import SpecError
from tmafbench.study.design import load_design
from tmafbench.study.files import PACKAGED, locate, packaged_studies

REPO_STUDIES = PACKAGED.parent.parent / "studies"


def test_the_packaged_studies_are_the_repository_s():
    """In a checkout, tmafbench/studies is the top-level studies/ (a link); the wheel copies it."""
    assert sorted(p.name for p in PACKAGED.glob("*.toml")) == sorted(p.name for p in REPO_STUDIES.glob("*.toml"))
    assert {s.name for s in packaged_studies()} >= {"quickstart", "paper-table-3-2", "paper-table-3-1"}


def test_a_name_with_or_without_toml_finds_the_packaged_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert locate("paper-table-3-2") == PACKAGED / "paper-table-3-2.toml"
    assert locate("quickstart.toml") == PACKAGED / "quickstart.toml"
    assert load_design("paper-table-3-2").name == "paper-table-3-2"


def test_an_existing_path_wins_over_a_name(tmp_path, monkeypatch, tiny_spec_text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").write_text(tiny_spec_text)
    assert locate("quickstart").resolve() == tmp_path / "quickstart"


@pytest.mark.parametrize("spec, says", [
    ("paper-table-3-22", "did you mean paper-table-3-2"),
    ("nowhere/quickstart.toml", "no study file at nowhere/quickstart.toml"),
])
def test_unknown_names_and_paths_are_one_line(tmp_path, monkeypatch, spec, says):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match=says) as caught:
        locate(spec)
    assert "tmafbench studies" in str(caught.value) and "\n" not in str(caught.value)


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(SpecError, match="is a folder, not a study file"):
        locate(tmp_path)

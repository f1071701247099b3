"""The wheel: it carries the study files, so the paper's studies run by name from any folder."""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

import pytest
from processes import run

ROOT = Path(__file__).resolve().parents[1]
# What a fresh clone holds that the build reads (no virtual environment, build folder or report).
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "reports", "__pycache__", "*.db*",
                              ".pytest_cache", ".mypy_cache", ".ruff_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("src") / "tmafbench"
    shutil.copytree(ROOT, source, symlinks=True, ignore=SKIP)
    out = tmp_path_factory.mktemp("wheel")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out),
                 str(source)], timeout=600)
    if built.returncode != 0 and "No module named pip" in built.stderr:
        pytest.skip("pip is not installed in this environment")
    assert built.returncode == 0, built.stderr[-3000:]
    assert "license" not in built.stderr.lower(), built.stderr  # no deprecation warning about project.license
    return next(out.glob("tmafbench-*.whl"))


@pytest.mark.slow
def test_the_wheel_carries_every_study_file(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    expected = sorted(f"tmafbench/studies/{p.name}" for p in (ROOT / "studies").glob("*.toml"))
    assert sorted(n for n in names if n.startswith("tmafbench/studies/")) == expected
    assert "tmafbench/activations/kernels/tmaf_cpu.cpp" in names


@pytest.mark.slow
def test_an_installed_wheel_runs_a_paper_study_by_name_from_the_root_folder(wheel, tmp_path):
    site = tmp_path / "site"
    installed = run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site),
                     str(wheel)], timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    # Only the installed copy on the path (the dependencies come from this environment's site-packages).
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import tmafbench; assert tmafbench.__file__.startswith(sys.argv[1]), "
            "tmafbench.__file__; from tmafbench.cli import main; sys.argv = ['tmafbench', *sys.argv[2:]]; main()")
    listing = run([sys.executable, "-c", code, str(site), "studies"], timeout=300, cwd="/")
    assert listing.returncode == 0 and "paper-table-3-2 " in listing.stdout, listing.stderr
    url = f"sqlite:///{tmp_path / 'results.db'}"
    ran = run([sys.executable, "-c", code, str(site), "study", "run", "paper-table-3-2", "--storage", url, "--workers", "1",
               "--set", "defaults.training.epochs=1", "--set", "axes.seeds=1", "--set", "axes.activations=[{ name = \"relu\" }]"],
              timeout=600, cwd="/")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "study 'paper-table-3-2': 1/1 cells done" in ran.stderr + ran.stdout

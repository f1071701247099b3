"""The registries list what they hold without importing torch, exactly as the imported packages describe it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tmafbench import activations, models, tasks
from tmafbench.registries import ACTIVATIONS, MODELS, TASKS


@pytest.mark.parametrize("registry", [ACTIVATIONS, TASKS, MODELS], ids=lambda r: r.kind)
def test_catalog_read_from_the_source_matches_the_live_registry(registry):
    assert registry.catalog() == registry.describe()
    assert [row[0] for row in registry.catalog()] == registry.available()


def test_each_package_fills_its_registry():
    assert activations.describe() == ACTIVATIONS.describe() and "tmaf" in ACTIVATIONS.available()
    assert tasks.REGISTRY is TASKS and models.REGISTRY is MODELS
    for name in TASKS.available():  # the class attribute the tasks use at run time agrees
        assert TASKS.entry(name).factory.name == name


def test_lists_import_no_torch():
    code = ("import sys; from typer.testing import CliRunner; from tmafbench.cli import app; "
            "out = [CliRunner().invoke(app, [c]) for c in ('tasks', 'models', 'activations')]; "
            "assert all(r.exit_code == 0 for r in out), [r.output for r in out]; "
            "print('torch' in sys.modules, 'sine-sum' in out[0].stdout, 'resnet18-cifar' in out[1].stdout)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True"]


def test_catalog_reads_defaults_inheritance_and_summaries(tmp_path, monkeypatch):
    """A package written for the test: decorators, an inherited __init__, a module constant, a keyword-only
    parameter, a default that is not a literal, a summary given to register."""
    import tmafbench.registries as registry_module
    from tmafbench.registries import Registry

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text(
        "WIDTH = 8\n"
        "class Base:\n"
        "    \"\"\"Base doc.\n\n    More.\"\"\"\n"
        "    def __init__(self, num_features, width=WIDTH, *, mode='x', scale=2 ** 3):\n"
        "        pass\n"
        "@R.register('child')\n"
        "class Child(Base):\n"
        "    pass\n"
        "@R.register('fn', summary='given summary')\n"
        "def fn(task, depth: int = 1, shape=(1, 2)):\n"
        "    \"\"\"Ignored.\"\"\"\n")
    monkeypatch.setattr(registry_module, "__file__", str(tmp_path / "registry.py"))
    rows = Registry("thing", reserved=("num_features", "task"), package="pkg").catalog()
    assert rows == [("child", "Base doc.", "width=8, mode='x', scale=2 ** 3"),
                    ("fn", "given summary", "depth=1, shape=(1, 2)")]


def test_summaries_are_whole_first_paragraphs(tmp_path, monkeypatch):
    """A summary is the docstring's whole first paragraph, however its lines wrap (`tmafbench activations`
    once cut kan-spline's and pwlu's mid-sentence), for the listing and the live registry alike."""
    import tmafbench.registries as registry_module
    from tmafbench.registries import Registry

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text(
        "@R.register('wrapped')\n"
        "def wrapped(depth=1):\n"
        "    \"\"\"A summary that wraps\n    over two lines.\n\n    Details.\"\"\"\n")
    monkeypatch.setattr(registry_module, "__file__", str(tmp_path / "registries.py"))
    assert Registry("thing", package="pkg").catalog() == [("wrapped", "A summary that wraps over two lines.", "depth=1")]
    for registry in (ACTIVATIONS, TASKS, MODELS):
        for name, summary, _params in registry.catalog():
            assert summary.endswith("."), (registry.kind, name, summary)
    summaries = {name: summary for name, summary, _ in ACTIVATIONS.describe()}
    assert summaries["pwlu"].endswith("[left, right], trainable slopes outside it.")
    assert summaries["kan-spline"].endswith("plus 3 knots each side; per feature, not per edge.")

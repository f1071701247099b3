"""`tmafbench bench pack` (bench/packing.py): packed, one at a time and a torch.func (vmap)
ensemble, through the real CLI on a tiny setting; the ensemble trains each copy as its own run."""

from __future__ import annotations

import json

import pytest
import torch

from tmafbench.core import TrainingConfig, TrialConfig
from tmafbench.bench import packing as pack_benchmark
from tmafbench.bench.packing import train_vmap_ensemble

TINY = {"task": "sine-sum", "task_params": {"n": 1, "train_size": 96, "test_size": 32},
        "model_params": {"depth": 1, "width": 6}, "grid": {"intervals": 4}, "batch_size": 32}


def cells(activation: str, count: int = 2, epochs: int = 2) -> list[TrialConfig]:
    return [TrialConfig(task="sine-sum", model="mlp", activation=activation, seed=seed, task_params=TINY["task_params"],
                        model_params=TINY["model_params"], training=TrainingConfig(epochs=epochs, batch_size=32))
            for seed in range(count)]


def test_a_vmap_ensemble_trains_each_copy_like_its_own_run(monkeypatch):
    """One copy alone and the same copy in an ensemble of two end with the same weights: vmap, and
    Adam over stacked parameters, keep the copies apart."""
    seen = {}
    original = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen[len(self.param_groups[0]["params"][0])] = [p.detach().clone() for p in self.param_groups[0]["params"]]
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    train_vmap_ensemble(cells("relu", count=2))
    pair = seen.pop(2)
    train_vmap_ensemble(cells("relu", count=2)[1:])
    alone = seen.pop(1)
    for a, b in zip(pair, alone):
        assert torch.allclose(a[1], b[0], rtol=1e-5, atol=1e-6)


def test_vmap_cannot_run_the_tmaf_kernels():
    with pytest.raises(RuntimeError, match="functorch|setup_context"):
        train_vmap_ensemble(cells("tmaf"))


@pytest.mark.slow
def test_bench_pack_prints_all_three_columns(monkeypatch):
    from typer.testing import CliRunner

    from tmafbench.cli import app

    monkeypatch.setitem(pack_benchmark.SETTINGS, "tiny", TINY)
    result = CliRunner().invoke(app, ["bench", "pack", "--setting", "tiny", "-a", "relu", "-a", "tmaf", "--pack", "2",
                                      "--processes", "1", "--json"])
    assert result.exit_code == 0, result.output
    relu, tmaf = json.loads(result.output)
    assert relu["cells"] == 2 and relu["alone_s"] > 0 and relu["packed_s"] > 0 and relu["vmap_s"] > 0
    assert relu["packed_vs_vmap"] == pytest.approx(relu["vmap_s"] / relu["packed_s"])
    assert tmaf["vmap_s"] is None and "functorch" in tmaf["vmap_error"]

    result = CliRunner().invoke(app, ["bench", "pack", "--setting", "tiny", "-a", "relu", "--pack", "2", "--processes", "1",
                                      "--no-vmap", "--json"])
    assert result.exit_code == 0, result.output
    (alone,) = json.loads(result.output)
    assert alone["vmap_s"] is None and alone["vmap_error"] == "not measured" and alone["packed_vs_vmap"] is None

    # The table, from the figures just measured (training them again would double the test's time):
    # the vmap column holds the ensemble's cells per hour, or the reason it cannot run.
    keys = set(pack_benchmark.PackFigure.__dataclass_fields__)
    figures = [pack_benchmark.PackFigure(**{k: v for k, v in f.items() if k in keys}) for f in (relu, tmaf)]
    monkeypatch.setattr(pack_benchmark, "bench_pack", lambda *args, **kwargs: figures)
    result = CliRunner().invoke(app, ["bench", "pack", "--setting", "tiny", "-a", "relu", "-a", "tmaf", "--pack", "2",
                                      "--processes", "1"])
    assert result.exit_code == 0, result.output
    assert "vmap of 2" in result.output and "packed / vmap" in result.output
    assert "functorch" in result.output  # tmaf's row gives vmap's reason
    relu_line = next(line for line in result.output.splitlines() if "relu" in line)
    assert relu_line.count("x") >= 2  # the speed-up and packed / vmap ratios

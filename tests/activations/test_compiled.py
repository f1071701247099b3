"""torch.compile for the trainable-activation family (activations/compiled.py): the switch, the same
results as eager to 1e-6 relative, and packed cells and a study run with it on.

The rest of the suite runs the family eagerly (tests/conftest.py sets TMAFBENCH_COMPILE=off);
these tests compile on purpose, which takes tens of seconds per graph here.
"""

from __future__ import annotations

import pytest
import torch

from tmafbench import activations
from tmafbench.activations import compiled
from tmafbench.activations.piecewise import _APL
from tmafbench.activations.rational import _PAU
from tmafbench.activations.spline import _KAN

FAMILY = ["pau", "apl", "kan-spline"]
needs_compiler = pytest.mark.skipif(compiled.unavailable_reason(torch.device("cpu")) is not None,
                                    reason="torch.compile needs a C++ compiler here")


def test_the_switch(monkeypatch):
    small, large = torch.zeros(64, 8), torch.zeros(1, compiled.AUTO_MIN_ELEMENTS)
    for value, expected in [("off", (False, False, False)), ("0", (False, False, False)),
                            ("on", (True, True, True)), ("auto", (False, True, False)), ("", (False, True, False))]:
        monkeypatch.setenv("TMAFBENCH_COMPILE", value)
        got = (_PAU.enabled(True, small), _APL.enabled(True, large), _KAN.enabled(False, large))
        assert got == expected, value
    monkeypatch.setenv("TMAFBENCH_COMPILE", "sometimes")
    with pytest.raises(ValueError, match="TMAFBENCH_COMPILE must be one of auto, on, off; got 'sometimes'"):
        compiled.mode()
    assert activations.create("pau", 2).compile_by_default and activations.create("apl", 2).compile_by_default
    assert not activations.create("kan-spline", 2).compile_by_default


def _outputs_and_gradients(act: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    xx = x.detach().requires_grad_(True)
    y = act(xx)
    return [y.detach(), *torch.autograd.grad(y, [xx, *act.parameters()], grad)]


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("name", FAMILY)
def test_compiled_gives_the_eager_results_to_1e_6(name, monkeypatch):
    torch.manual_seed(0)
    act = activations.create(name, 6)
    with torch.no_grad():  # away from the starting values, so that every parameter matters
        for p in act.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    gen = torch.Generator().manual_seed(1)
    x, grad = torch.randn(40, 6, generator=gen) * 2, torch.randn(40, 6, generator=gen)
    monkeypatch.setenv("TMAFBENCH_COMPILE", "off")
    eager = _outputs_and_gradients(act, x, grad)
    monkeypatch.setenv("TMAFBENCH_COMPILE", "on")
    fused = _outputs_and_gradients(act, x, grad)
    for a, b in zip(fused, eager):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-6 * b.abs().max()


@pytest.mark.slow
@needs_compiler
def test_packed_cells_and_a_study_run_with_compilation_on(tmp_path, monkeypatch):
    """The packed trainer (K cells as one [B, K C] model) and a study's worker processes take the
    compiled path as they take the eager one."""
    from tiny_specs import study_toml
    from typer.testing import CliRunner

    from tmafbench.cli import app
    from tmafbench.core import RunStatus, TrainingConfig, TrialConfig
    from tmafbench.training import train_trial
    from tmafbench.training.packed import train_many

    monkeypatch.setenv("TMAFBENCH_COMPILE", "on")
    cells = [TrialConfig(task="sine-sum", model="mlp", activation="apl", seed=seed,
                         task_params={"n": 1, "train_size": 64, "test_size": 64}, model_params={"depth": 1, "width": 8},
                         training=TrainingConfig(epochs=2, batch_size=32)) for seed in (0, 1)]
    packed = train_many(cells)
    alone = train_trial(cells[1])
    assert all(r.status == RunStatus.COMPLETED and r.pack_size == 2 for r in packed)
    assert packed[1].final_metrics["rel_l2"] == pytest.approx(alone.final_metrics["rel_l2"], rel=1e-4)

    study = tmp_path / "compiled.toml"
    study.write_text(study_toml("compiled", activations=("apl",), seeds=2))
    result = CliRunner().invoke(app, ["study", "run", str(study), "--storage", f"sqlite:///{tmp_path / 'r.db'}",
                                      "--workers", "1", "--pack", "2"])
    assert result.exit_code == 0, result.output

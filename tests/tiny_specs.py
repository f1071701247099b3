"""Study files for the tests: tiny real studies on sine-sum n=1 (64 test samples), as TOML text.

Importable from any test (tests/ is on sys.path through tests/conftest.py). Line 3 of the text is
`description` when one is given (tests/study/test_spec.py checks that line number).
"""

from __future__ import annotations

from typing import Sequence


def study_toml(name: str, *, description: str | None = None, model: str | None = None, train_size: int = 64,
               depth: int = 1, width: int = 8, epochs: int = 1, batch_size: int = 32, seeds: int | None = 2,
               activations: Sequence[str] = ("relu", "tanh"), tail: str = "") -> str:
    """The TOML of a one-task MLP study; `seeds=None` leaves out `[axes]` (a `[tune]` study), `tail` is appended."""
    lines = ["", f'name = "{name}"']
    if description is not None:
        lines.append(f'description = "{description}"')
    lines += ["[defaults]", 'task = "sine-sum"']
    if model is not None:
        lines.append(f'model = "{model}"')
    lines += [f"task_params = {{ n = 1, train_size = {train_size}, test_size = 64 }}",
              f"model_params = {{ depth = {depth}, width = {width} }}",
              f"training = {{ epochs = {epochs}, batch_size = {batch_size} }}"]
    if seeds is not None:
        lines += ["[axes]", f"seeds = {seeds}"]
    for activation in activations:
        lines += ["[[axes.activations]]", f'name = "{activation}"']
    return "\n".join(lines) + "\n" + tail


# sine-sum, relu and tanh, two seeds, one epoch: 4 cells of well under a second each.
TINY = study_toml("tiny", description="two activations, two seeds", model="mlp")

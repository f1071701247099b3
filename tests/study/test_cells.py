"""Cell expansion: only meaningful combinations, scoped axes, stable hashes and labels."""

from __future__ import annotations

import pytest

from tmafbench.study.cells import cells_hash
from tmafbench.study.design import parse_design


GRIDS = """
name = "grids"
[defaults]
task = "sine-sum"
task_params = { train_size = 64, test_size = 64 }
model_params = { depth = 1, width = 8 }
training = { epochs = 1 }
[axes]
seeds = [3, 4]
depth = [1, 2]
task_params = { n = { values = [1, 3], activations = ["tmaf"] } }
[[axes.activations]]
name = "relu"
[[axes.activations]]
name = "tmaf"
[[axes.activations]]
name = "tmaf-tridiag"
label = "tri"
grids = ["h1"]
[[axes.activations]]
name = "tmaf"
label = "tmaf-h0.1"
params = { lo = -5.0, hi = 5.0, intervals = 100 }
[[axes.grids]]
label = "h1"
lo = -5.0
hi = 5.0
intervals = 10
[[axes.grids]]
breakpoints = [-1.0, 0.0, 1.0]
"""


def by_activation(cells):
    out: dict[str, list] = {}
    for c in cells:
        out.setdefault(c.activation, []).append(c)
    return out


def test_relu_gets_one_cell_per_seed_not_per_grid():
    cells = by_activation(parse_design(GRIDS).cells)
    # relu: depth x seeds = 2 x 2, no grid axis
    assert len(cells["relu"]) == 4
    assert {c.grid for c in cells["relu"]} == {None}
    assert all(c.config.act_params == {} for c in cells["relu"])


def test_grids_and_scoped_axes():
    cells = by_activation(parse_design(GRIDS).cells)
    # tmaf: 2 grids x depth 2 x n 2 (scoped to tmaf) x 2 seeds
    assert len(cells["tmaf"]) == 16
    assert {c.grid for c in cells["tmaf"]} == {"h1", "bp(-1,0,1)"}
    assert {c.axes["n"] for c in cells["tmaf"]} == {1, 3}
    assert {c.intervals for c in cells["tmaf"]} == {10, 2}
    # tri: only grid h1; n is not its axis, so the task default applies and "n" is no axis
    assert len(cells["tri"]) == 4
    assert {c.grid for c in cells["tri"]} == {"h1"}
    assert all("n" not in c.axes for c in cells["tri"])
    assert cells["tri"][0].config.act_params == {"lo": -5.0, "hi": 5.0, "intervals": 10}
    # an activation with its own grid ignores the study grids
    assert len(cells["tmaf-h0.1"]) == 4
    assert {c.grid for c in cells["tmaf-h0.1"]} == {"[-5,5]/100"}
    assert {c.intervals for c in cells["tmaf-h0.1"]} == {100}


def test_axes_labels_and_hashes():
    cells = parse_design(GRIDS).cells
    cell = next(c for c in cells if c.activation == "tmaf" and c.grid == "h1" and c.axes["depth"] == 2
                and c.axes["n"] == 3 and c.axes["seed"] == 4)
    assert cell.axes == {"task": "sine-sum", "activation": "tmaf", "grid": "h1", "intervals": 10, "depth": 2,
                         "width": 8, "n": 3, "seed": 4}
    assert cell.label == "tmaf h1 depth=2 width=8 n=3"
    assert cell.config.task_params == {"train_size": 64, "test_size": 64, "n": 3}
    assert cell.config.model_params == {"depth": 2, "width": 8}
    assert cell.config.seed == 4
    assert cell.config_hash == cell.config.config_hash()
    # seeds of one group share the group hash; all config hashes are distinct
    same_group = [c for c in cells if c.label == cell.label]
    assert len(same_group) == 2 and len({c.group_hash for c in same_group}) == 1
    assert len({c.config_hash for c in cells}) == len(cells)


def test_expansion_is_stable_and_design_hash_ignores_order_and_description():
    a = parse_design(GRIDS).cells
    b = parse_design(GRIDS.replace('name = "grids"', 'name = "grids"\ndescription = "other words"')).cells
    assert [c.config_hash for c in a] == [c.config_hash for c in b]
    assert cells_hash(a) == cells_hash(list(reversed(b)))
    c = parse_design(GRIDS, ["axes.seeds=[3]"]).cells
    assert cells_hash(c) != cells_hash(a)


def test_several_tasks_with_their_own_settings():
    text = GRIDS.replace("[axes]\n", """[[axes.tasks]]
name = "sine-sum"
[[axes.tasks]]
name = "oscillatory"
params = { train_size = 32 }
training = { epochs = 2 }
[axes]
""").replace('task_params = { n = { values = [1, 3], activations = ["tmaf"] } }',
             'task_params = { n = { values = [1, 3], tasks = ["sine-sum"] } }')
    cells = parse_design(text).cells
    osc = [c for c in cells if c.config.task == "oscillatory"]
    assert osc and all("n" not in c.axes and c.config.training.epochs == 2 for c in osc)
    assert all(c.config.task_params["train_size"] == 32 for c in osc)
    assert all(c.label.endswith("task=oscillatory") for c in osc)


CASES = """
name = "cases"
[defaults]
task = "sine-sum"
model_params = { width = 8 }
task_params = { train_size = 64, test_size = 64 }
training = { epochs = 1 }
[[axes.tasks]]
name = "sine-sum"
label = "shallow"
model_params = { depth = 1 }
[[axes.tasks]]
name = "sine-sum"
label = "deep"
model_params = { depth = 2 }
[axes]
seeds = 1
[axes.task_params.n]
cases = [ { values = [1, 2], tasks = ["shallow"] }, { values = [5], tasks = ["deep"] } ]
[[axes.activations]]
name = "relu"
"""


def test_axis_cases_give_each_task_its_own_values():
    cells = parse_design(CASES).cells
    got = sorted((c.axes["task"], c.config.task_params["n"], c.config.model_params["depth"]) for c in cells)
    assert got == [("deep", 5, 2), ("shallow", 1, 1), ("shallow", 2, 1)]


def test_axis_case_with_an_unknown_task_label_is_refused():
    from tmafbench.errors import SpecError

    with pytest.raises(SpecError, match=r"axes\.task_params\.n\.cases\[1\]\.tasks.*unknown task label 'nope'"):
        parse_design(CASES.replace('tasks = ["deep"]', 'tasks = ["nope"]')).spec

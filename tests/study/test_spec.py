"""Study files: good ones parse, every kind of bad one names its key path (and line)."""

from __future__ import annotations

import pytest

from tmafbench.errors import SpecError
from tmafbench.study.design import load_design, parse_design
from tmafbench.study.spec import apply_overrides



def test_good_file_parses(tiny_spec_file):
    spec = load_design(tiny_spec_file).spec
    assert spec.name == "tiny"
    assert [a.key for a in spec.axes.activations] == ["relu", "tanh"]
    assert spec.axes.seed_list() == [0, 1]
    assert spec.max_retries == 2
    assert spec.tasks()[0].name == "sine-sum"


def test_set_overrides_nested_and_list_items(tiny_spec_text):
    spec = parse_design(tiny_spec_text, ["defaults.training.epochs=3", "axes.seeds=[5, 7]",
                                       "axes.activations.1.name=elu", "max_retries=4"]).spec
    assert spec.defaults.training["epochs"] == 3
    assert spec.axes.seed_list() == [5, 7]
    assert spec.axes.activations[1].name == "elu"
    assert spec.max_retries == 4


def test_set_does_not_touch_the_input():
    data = {"a": {"b": 1}}
    out = apply_overrides(data, ["a.b=2", "a.c=x"])
    assert data == {"a": {"b": 1}} and out == {"a": {"b": 2, "c": "x"}}


BAD = [
    # (replace this, with this, expected fragments of the message)
    ('description = "two activations, two seeds"', 'descripton = "typo"', ["descripton", "unknown key", ":3"]),
    ("seeds = 2", 'seeds = "two"', ["axes.seeds", "tiny.toml:"]),
    ("width = 8 }", 'width = "8" }', ["defaults.model_params", "width must be an integer", "got str '8'"]),
    ('name = "tanh"', 'name = "tahn"', ["axes.activations[1].name", "unknown activation 'tahn'", "relu"]),
    ('task = "sine-sum"', 'task = "sinesum"', ["unknown task 'sinesum'", "sine-sum"]),
    ("epochs = 1,", "epochs = 0,", ["epochs must be >= 1"]),
    ("epochs = 1,", "epoch = 1,", ["unknown training option", "epoch"]),
    ("task_params = { n = 1,", "task_params = { m = 1,", ["defaults.task_params", "'m'"]),
    ("seeds = 2", "seeds = 0", ["axes.seeds", "seed count must be >= 1"]),
    ('name = "tiny"', 'name = "has space"', ["name", "pattern"]),
    ("[axes]", "[axis]", ["axis", "unknown key"]),
    ('[[axes.activations]]\nname = "relu"', '[[axes.activations]]\nname = "relu"\ngrids = ["h1"]',
     ["axes.activations[0].grids", "unknown grid 'h1'"]),
    ("seeds = 2", 'seeds = 2\nwidth = { values = [4], activations = ["nope"] }',
     ["axes.width.activations", "unknown activation label 'nope'"]),
    ('name = "tanh"', 'name = "relu"', ["activation label 'relu' is used twice"]),
    ("seeds = 2", "seeds = 2\n[[axes.grids]]\nlo = 5.0\nhi = -5.0\nintervals = 10", ["axes.grids[0]", "lo must be < hi"]),
    ("seeds = 2", "seeds = 2\n[[axes.grids]]\nbreakpoints = [0.0, -1.0]", ["axes.grids[0]", "strictly increasing"]),
    ("seeds = 2", "seeds = 2\n[[axes.grids]]\nlo = -1.0\nhi = 1.0", ["axes.grids[0]", "needs lo, hi and intervals"]),
    ("[defaults]", "[reference]\nsource = 'x'\nmetric = 'rel_l2'\nrows = [{ activation = 'relu' }]\n[defaults]",
     ["reference.rows", "no 'value'"]),
    ("seeds = 2", "seeds = [1, 1]", ["axes.seeds", "without repeats"]),
    ("[defaults]", "[report]\ninterval = 'wald'\n[defaults]", ["report.interval", "'auto', 'bootstrap' or 't'"]),
    ("[defaults]", "[report]\nsuccess = [{ metric = 'accuracy', threshold = 0.9 }]\n[defaults]",
     ["report.success[0].metric", "sine-sum does not measure 'accuracy'", "max_abs, mse, rel_l2, train_loss"]),
    ("[defaults]", "[report]\nsuccess = [{ metric = 'rel_l2', threshold = 0.1, tasks = ['mnist'] }]\n[defaults]",
     ["report.success[0].tasks", "unknown task label 'mnist'; choose from: sine-sum"]),
    ("[defaults]", "[report]\nsuccess = [{ metric = 'rel_l2', threshold = nan }]\n[defaults]",
     ["report.success[0].threshold", "finite"]),
    ("[defaults]", "[report]\nsuccess = [{ metric = 'rel_l2', threshold = 0.1 }, { metric = 'rel_l2', threshold = 0.2 }]"
     "\n[defaults]", ["report.success[1]", "a second success threshold for rel_l2 on task 'sine-sum'"]),
    ("[defaults]", "[report]\nsuccess = [{ metric = 'rel_l2', threshold = 0.1, below = 0.1 }]\n[defaults]",
     ["report.success[0].below", "unknown key"]),
]


@pytest.mark.parametrize("old,new,fragments", BAD, ids=[b[1].split("\n")[-1][:30] for b in BAD])
def test_bad_files_name_their_key(tmp_path, tiny_spec_text, old, new, fragments):
    assert old in tiny_spec_text
    path = tmp_path / "tiny.toml"
    path.write_text(tiny_spec_text.replace(old, new, 1))
    with pytest.raises(SpecError) as info:
        load_design(path).spec
    message = str(info.value)
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message


def test_report_table_parses_and_states_thresholds(tiny_spec_text):
    spec = parse_design(tiny_spec_text.replace("[defaults]", "[report]\ninterval = 'bootstrap'\nsuccess = [\n"
                                               "  { metric = 'rel_l2', threshold = 0.1 },\n"
                                               "  { metric = 'mse', threshold = 1, tasks = ['sine-sum'] } ]\n[defaults]")).spec
    assert spec.report.interval == "bootstrap"
    assert spec.report.threshold("rel_l2", "sine-sum") == 0.1 and spec.report.threshold("mse", "sine-sum") == 1.0
    assert spec.report.threshold("max_abs", "sine-sum") is None
    assert parse_design(tiny_spec_text).spec.report is None  # optional; nothing stored when absent
    assert "report" not in parse_design(tiny_spec_text).data


def test_wrong_type_is_not_coerced(tiny_spec_text):
    with pytest.raises(SpecError, match=r"axes\.seeds"):
        parse_design(tiny_spec_text.replace("seeds = 2", 'seeds = "2"')).spec


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match="not valid TOML"):
        parse_design("name = ", source="x.toml").spec
    with pytest.raises(SpecError, match="no study file"):
        load_design(tmp_path / "missing.toml").spec


def test_bad_set_path(tiny_spec_text):
    with pytest.raises(SpecError, match="--set expects key.path=value"):
        parse_design(tiny_spec_text, ["defaults.training.epochs"]).spec
    with pytest.raises(SpecError, match="not an index"):
        parse_design(tiny_spec_text, ["axes.activations.9.name=relu"]).spec


def test_missing_task(tiny_spec_text):
    with pytest.raises(SpecError, match="no task"):
        parse_design(tiny_spec_text.replace('task = "sine-sum"\n', "")).spec


def test_grid_on_a_gridless_activation_is_refused(tiny_spec_text):
    text = tiny_spec_text + '[[axes.grids]]\nlabel = "h1"\nlo = -5.0\nhi = 5.0\nintervals = 10\n'
    text = text.replace('name = "relu"', 'name = "relu"\ngrids = ["h1"]')
    with pytest.raises(SpecError, match=r"axes\.activations\[0\]\.grids.*takes no interval grid"):
        parse_design(text).spec


def test_impossible_activation_params_are_refused(tiny_spec_text):
    text = tiny_spec_text + '[[axes.activations]]\nname = "tmaf"\nparams = { intervals = 0 }\n'
    with pytest.raises(SpecError, match=r"axes\.activations\[2\]\.params"):
        parse_design(text).spec

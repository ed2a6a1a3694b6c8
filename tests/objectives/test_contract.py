"""The objective contract is checked when an objective is loaded: a part missing or of the wrong
kind is refused in one line that names it."""

from __future__ import annotations

import types

import pytest

from objectives import OBJECTIVES, Objective, SetupError, load_objective


def module(**parts):
    found = types.ModuleType("my_task")
    defaults = {"METRIC": "accuracy", "PARAMS": {"learning_rate": 1e-3},
                "prepare": lambda params: None,
                "train": lambda params, reporter=None, *, on_test=False: {"accuracy": 0.5}}
    for name, value in {**defaults, **parts}.items():
        if value is not None:
            setattr(found, name, value)
    return found


def test_every_built_in_objective_keeps_the_contract():
    for name in OBJECTIVES:
        objective = load_objective(name)
        assert objective.name == name and objective.metric in objective.metrics
        assert objective.params and all(isinstance(k, str) for k in objective.params)


def test_the_optional_parts_have_their_defaults_when_absent():
    objective = Objective.from_module("my_task", module())
    assert objective.folds == (None,) and objective.extra_metrics == () and objective.compute_baseline is None
    assert objective.resumable is False


def test_optional_parts_are_read_when_present():
    objective = Objective.from_module("my_task", module(FOLDS=range(3), EXTRA_METRICS=("f1",), RESUMABLE=True,
                                                        compute_baseline=lambda params: {"value": 0.1}))
    assert objective.folds == (0, 1, 2) and objective.metrics == ("accuracy", "f1") and objective.resumable


@pytest.mark.parametrize(("parts", "named"), [
    ({"METRIC": None}, "METRIC"),
    ({"METRIC": 3}, "METRIC"),
    ({"PARAMS": None}, "PARAMS"),
    ({"PARAMS": ["learning_rate"]}, "PARAMS"),
    ({"prepare": None}, "prepare"),
    ({"train": None}, "train"),
    ({"train": lambda params: {}}, "train"),  # no reporter, no on_test
    ({"FOLDS": "01234"}, "FOLDS"),
    ({"EXTRA_METRICS": "f1"}, "EXTRA_METRICS"),
    ({"compute_baseline": 0.5}, "compute_baseline"),
    ({"RESUMABLE": "yes"}, "RESUMABLE"),
])
def test_a_module_that_breaks_the_contract_is_refused_in_one_line_naming_the_part(parts, named):
    with pytest.raises(SetupError) as error:
        Objective.from_module("my_task", module(**parts))
    message = str(error.value)
    assert message.startswith(f"objective my_task: {named}: ") and "\n" not in message


def test_an_unknown_objective_lists_the_known_ones():
    with pytest.raises(SetupError, match="unknown objective 'nope' \\(known: ag_news, aste, babylm"):
        load_objective("nope")

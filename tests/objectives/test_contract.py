"""The objective contract is checked when an objective is loaded: a part missing or of the wrong
kind is refused in one line that names it."""

from __future__ import annotations

import types

import pytest

from objectives import OBJECTIVES, Objective, SetupError, load_objective
from objectives.contract import OneOf, Range, is_number


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


# --- the values a parameter takes (ACCEPTS) --------------------------------------------------


def test_every_built_in_objective_declares_what_its_parameters_accept_and_its_defaults_pass():
    for name in OBJECTIVES:
        objective = load_objective(name)
        assert set(objective.accepts) <= set(objective.params), name
        for key, default in objective.params.items():
            assert objective.check(key, default) is None, f"{name}: the default {key}={default!r} is refused"
            if is_number(default) or default is None:  # a bad number is possible: a rule says which are good
                assert key in objective.accepts, f"{name}: {key} declares no accepted values"


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("learning_rate", -1, "-1 is not a number > 0"),
    ("learning_rate", 0.0, "0.0 is not a number > 0"),
    ("learning_rate", float("nan"), "nan is not a finite number"),
    ("learning_rate", "3e-3", "'3e-3' is not a number > 0"),
    ("num_train_epochs", 0, "0 is not an integer >= 1"),
    ("num_train_epochs", 2.0, "2.0 is not an integer >= 1"),
    ("per_device_train_batch_size", True, "True is not an integer >= 1"),
    ("dropout", 1.0, "1.0 is not a number in [0, 1)"),
    ("validation_fraction", 1, "1 is not a number in (0, 1)"),
    ("seed", -1, "-1 is not an integer >= 0"),
    ("mixed_precision", "fp8", "'fp8' is not one of 'auto', 'no', 'bf16', 'fp16'"),
    ("fold", 5, "5 is not one of 0, 1, 2, 3, 4"),
    ("model_name_or_path", 3, "3 is not a string"),
])
def test_check_names_what_a_parameter_accepts(key, value, problem):
    assert load_objective("recipe_mpr").check(key, value) == problem


def test_a_none_default_takes_none_or_what_its_rule_says():
    lyrics = load_objective("lyrics_genre")
    assert lyrics.check("dropout", None) is None and lyrics.check("dropout", 0.2) is None
    assert lyrics.check("dropout", 1.5) == "1.5 is not a number in [0, 1) or null"
    assert lyrics.check("max_eval_samples", 2.5) == "2.5 is not an integer >= 1 or null"


def test_a_rule_on_an_int_parameter_takes_integers_only():
    objective = Objective.from_module("my_task", module(PARAMS={"epochs": 3, "rate": 0.1},
                                                       ACCEPTS={"epochs": Range(ge=1), "rate": Range(ge=0, le=1)}))
    assert objective.accepts["epochs"] == Range(ge=1, integer=True) and objective.accepts["rate"] == Range(ge=0, le=1)
    assert objective.check("rate", 1) is None and objective.check("rate", float("inf")) == "inf is not a finite number"


def test_one_of_matches_the_type_too():
    rule = OneOf(0, 1, "x")
    assert rule.accepts(1) and rule.accepts("x") and not rule.accepts(True) and not rule.accepts(1.0)
    assert str(rule) == "one of 0, 1, 'x'"


@pytest.mark.parametrize(("accepts", "says"), [
    ({"momentum": Range(ge=0)}, "ACCEPTS.momentum: not a parameter in PARAMS"),
    ({"learning_rate": (0, 1)}, "ACCEPTS.learning_rate: (0, 1) is not a Range(...) or OneOf(...)"),
    ({"learning_rate": Range(gt=0.1)}, "ACCEPTS.learning_rate: the default 0.001 is not a number > 0.1"),
    (["learning_rate"], "ACCEPTS: must be a dict"),
])
def test_a_bad_accepts_declaration_is_refused_when_the_objective_is_loaded(accepts, says):
    with pytest.raises(SetupError) as error:
        Objective.from_module("my_task", module(ACCEPTS=accepts))
    assert str(error.value).startswith(f"objective my_task: {says}")


def test_the_engine_enforces_the_rules_it_declares():
    from objectives.engine import TrainingArguments

    with pytest.raises(ValueError, match=r"^learning_rate -1 is not a number > 0$"):
        TrainingArguments(learning_rate=-1, num_train_epochs=1, per_device_train_batch_size=8)
    with pytest.raises(ValueError, match=r"^num_train_epochs 0 is not an integer >= 1$"):
        TrainingArguments(learning_rate=1e-3, num_train_epochs=0, per_device_train_batch_size=8)

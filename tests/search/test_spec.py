"""The study spec: strict validation, --set, and one study per spec."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import yaml

from helpers import REPO, known, spec_dict
from search.spec import SpecError, available_specs, load_spec, validate
from objectives.attributes import StudyAttr
from search.study import build_study, spec_diff
from storage import open_storage

SHIPPED = REPO / "spaces" / "recipe-mpr.yaml"


def shipped() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def test_shipped_spec_is_valid_and_complete():
    spec = load_spec(str(SHIPPED))
    assert spec.objective == "recipe_mpr" and spec.metric.name == "accuracy" and spec.metric.direction == "maximize"
    assert (spec.target.value, spec.baseline.value) == (0.75, 0.694)
    assert [c.name for c in spec.known_configs] == ["baseline", "improved", "aggressive"]
    for config in spec.known_configs:
        assert set(config.params) == set(spec.space), f"{config.name} sets every searched parameter"
    assert isinstance(spec.build_sampler(), optuna.samplers.TPESampler)
    assert isinstance(spec.build_pruner(), optuna.pruners.BasePruner)
    assert load_spec("recipe-mpr") == spec, "a spec name finds the file in spaces/"


def test_set_moves_a_searched_param_to_fixed_and_out_of_known_configs():
    spec = load_spec(str(SHIPPED), {"learning_rate": 1e-4, "model_name_or_path": "minilm"})
    assert "learning_rate" not in spec.space
    assert spec.fixed["learning_rate"] == 1e-4 and spec.fixed["model_name_or_path"] == "minilm"
    original = {c.name: c.params for c in load_spec(str(SHIPPED)).known_configs}
    assert [c.name for c in spec.known_configs] == list(original)
    for config in spec.known_configs:
        assert config.params == {k: v for k, v in original[config.name].items() if k != "learning_rate"}
    assert spec.params({})["learning_rate"] == 1e-4
    assert spec.params({"num_train_epochs": 4})["num_train_epochs"] == 4
    assert spec.digest() != load_spec(str(SHIPPED)).digest()


def test_set_of_a_param_the_objective_does_not_take_is_refused():
    with pytest.raises(SpecError, match=r"--set momentum: not a parameter of objective recipe_mpr \(allowed: .*learning_rate"):
        load_spec(str(SHIPPED), {"momentum": 0.9})


def test_unknown_spec_name_lists_the_specs_there():
    with pytest.raises(SpecError, match=r"no study spec 'nope'.*recipe-mpr"):
        load_spec("nope")


def _edit(path: str, value) -> callable:
    def edit(spec: dict) -> None:
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value

    return edit


@pytest.mark.parametrize(("edit", "says"), [
    (_edit("colour", "red"), r"x\.yaml: colour: unknown key \(allowed: name, objective, .*known_configs\)"),
    (_edit("metric.goal", 1), r"metric\.goal: unknown key \(allowed: name, direction\)"),
    (_edit("space.learning_rate.lo", 1), r"space\.learning_rate\.lo: unknown key \(allowed: type, low, high, log, step\)"),
    (_edit("space.warmup_steps.low", 400), r"space\.warmup_steps: low \(400\) must be below high \(300\)"),
    (_edit("space.learning_rate.low", 0.0), r"space\.learning_rate: a log scale needs low > 0"),
    (_edit("space.dropout.type", "real"), r"space\.dropout: .*'real'.*'float', 'int', 'categorical'"),
    (_edit("space.momentum", {"type": "float", "low": 0, "high": 1}), r"space\.momentum: not a parameter of objective recipe_mpr"),
    (_edit("fixed.max_len", 64), r"fixed\.max_len: not a parameter of objective recipe_mpr \(allowed: .*max_length"),
    (_edit("fixed.max_length", "long"), r"fixed\.max_length: 'long' is not an integer >= 8"),
    (_edit("fixed.dropout", 0.1), r"space\.dropout: also in fixed"),
    (_edit("metric.name", "f1"), r"metric\.name: objective recipe_mpr returns 'accuracy', not 'f1'"),
    (_edit("metric.direction", "up"), r"metric\.direction: Input should be 'maximize' or 'minimize'"),
    (_edit("objective", "nope"), r"objective: unknown objective 'nope'"),
    (_edit("sampler.type", "NoSampler"), r"sampler\.type: 'NoSampler' is not an optuna sampler \(allowed: .*TPESampler"),
    (_edit("pruner.options", {"min_resources": 1}), r"pruner\.options\.min_resources: not an option of HyperbandPruner \(allowed: min_resource"),
    (_edit("known_configs.0.params.learning_rate", 0.5), r"known_configs\.0\.params\.learning_rate: 0\.5 is outside the space"),
    (_edit("known_configs.1.params.max_length", 64), r"known_configs\.1\.params\.max_length: not in the space"),
    (_edit("known_configs.1.params.momentum", 0.9), r"known_configs\.1\.params\.momentum: not a parameter of objective"),
    (_edit("known_configs.2.name", "baseline"), r"known_configs\.2\.name: 'baseline' appears twice"),
    (_edit("name", "Recipe MPR"), r"name: 'Recipe MPR': not a study name: expected lowercase letters, digits"),
    (_edit("name", "../up"), r"name: '\.\./up': not a study name"),
    (_edit("name", "x[/]"), r"name: 'x\[/\]': not a study name"),
    (_edit("name", "a\nb"), r"name: 'a\\nb': not a study name"),
    (_edit("name", "a" * 201), r"name: 'a+': not a study name: 201 characters \(expected .*at most 200 characters\)"),
    (_edit("baseline.computed", True), r"baseline: give either a value or computed: true"),
    (_edit("baseline.value", None), r"baseline: give either a value or computed: true"),
    (lambda s: s["baseline"].update(value=None, computed=True), r"baseline\.computed: objective recipe_mpr computes no baseline"),
    (_edit("target.beat", "baseline"), r"target: give either a value or beat: baseline"),
    (_edit("target.beat", "target"), r"target\.beat: Input should be 'baseline'"),
    (_edit("references", [{"name": "paper", "value": 0.8}]), r"references\.0\.source: Field required"),
    (_edit("references", [{"name": "paper", "value": 0.8, "source": "x", "metric": "f1"}]),
     r"references\.0\.metric: objective recipe_mpr records no 'f1' \(allowed: accuracy\)"),
    (_edit("references", [{"name": "paper", "value": 0.8, "source": "x", "colour": "red"}]),
     r"references\.0\.colour: unknown key \(allowed: name, value, source, metric\)"),
])
def test_spec_errors_name_file_key_and_what_is_allowed(edit, says):
    data = shipped()
    edit(data)
    with pytest.raises(SpecError, match=says):
        validate(data, "x.yaml")


def test_spec_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match=r"list\.yaml: a study spec is a mapping"):
        load_spec(str(path))


def test_spec_diff_names_what_differs():
    recorded = {"fixed": {"seed": 42}, "space": {"lr": {"low": 1, "high": 2}}}
    here = {"fixed": {"seed": 42, "fold": 1}, "space": {"lr": {"low": 1, "high": 3}}}
    assert spec_diff(recorded, here) == ["fixed.fold: study lacks it, here 1", "space.lr.high: study 2, here 3"]
    assert spec_diff(here, here) == []


def test_study_is_created_once_and_refuses_a_different_spec(tmp_path, tiny_model):
    storage = open_storage(str(tmp_path / "s.journal"))
    configs = [known("a", 1e-3, 1), known("b", 1e-4, 2)]
    spec = validate(spec_dict("once", tiny_model, known=configs), "once.yaml")

    study, created = build_study(spec, storage)
    again, created_again = build_study(spec, storage)
    assert (created, created_again) == (True, False)
    assert again.user_attrs[StudyAttr.SPEC] == spec.as_dict()
    waiting = again.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["known_config"] for t in waiting] == ["a", "b"], "enqueued once, by the creator"
    assert [t.system_attrs["fixed_params"] for t in waiting] == [c["params"] for c in configs]

    other = copy.deepcopy(spec_dict("once", tiny_model, known=configs))
    other["fixed"]["seed"] = 7
    with pytest.raises(SpecError, match=r"study 'once' was created with a different spec: fixed\.seed: study 42, here 7"):
        build_study(validate(other, "other.yaml"), storage)
    pinned = load_spec_dict(tmp_path, spec_dict("once", tiny_model, known=configs), {"num_train_epochs": 1})
    with pytest.raises(SpecError, match=r"different spec: fixed\.num_train_epochs: study lacks it, here 1; .*"
                                        r"space\.num_train_epochs: study has .*, here absent"):
        build_study(pinned, storage)
    assert len(optuna.load_study(study_name="once", storage=storage).trials) == 2


def load_spec_dict(folder: Path, data: dict, overrides: dict):
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_spec(str(path), overrides)


def test_same_spec_file_gives_the_same_digest(tmp_path: Path, tiny_model):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    data = spec_dict("same", tiny_model)
    a.write_text(yaml.safe_dump(data))
    b.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=True))
    assert load_spec(str(a)).digest() == load_spec(str(b)).digest()


def test_a_target_to_beat_the_baseline_is_reached_only_by_doing_better():
    data = shipped()
    data["target"] = {"beat": "baseline", "source": "do better than the baseline"}
    spec = validate(data, "x.yaml")
    assert spec.target.value == 0.694
    assert not spec.reached(0.694) and spec.reached(0.695)
    assert load_spec(str(SHIPPED)).reached(0.75), "a figure target is reached at the figure"
    measured = spec.with_baseline(0.61, "TF-IDF", {})
    assert (measured.target.value, measured.baseline.value) == (0.61, 0.61)


def test_a_study_trains_and_exports_with_the_defaults_it_was_created_with(tmp_path, tiny_model, recipe, monkeypatch):
    """A default changed in the code after a study was created (a new release) changes neither
    what new workers train on that study nor what export says a past trial ran."""
    from search.results.export import export_config
    from search.running.worker import run_worker

    storage = open_storage(str(tmp_path / "s.journal"))
    spec = validate(spec_dict("defaults", tiny_model, known=[known("a", 3e-3, 1)]), "defaults.yaml")
    study = run_worker(spec, storage, n_trials=1)
    first = study.trials[0]
    assert study.user_attrs[StudyAttr.DEFAULTS]["per_device_eval_batch_size"] == 32
    assert first.user_attrs["params"] == spec.params(first.params), "every parameter it ran with, on the trial"

    monkeypatch.setitem(recipe.PARAMS, "per_device_eval_batch_size", 7)  # the code's default changes
    monkeypatch.setitem(recipe.PARAMS, "max_grad_norm", 0.5)
    study = run_worker(validate(spec_dict("defaults", tiny_model, known=[known("a", 3e-3, 1)]), "defaults.yaml"),
                       storage, n_trials=1)
    second = study.trials[1]
    assert second.user_attrs["params"]["per_device_eval_batch_size"] == 32, "the study's default, not today's"
    assert second.user_attrs["params"]["max_grad_norm"] == 1.0
    exported = export_config(study, spec, first, "best.yaml")
    assert exported["params"] == first.user_attrs["params"], "export reads what the trial ran with"
    assert exported["params"]["max_grad_norm"] == 1.0


def test_a_name_given_to_build_study_follows_the_spec_name_rule(tmp_path, tiny_model):
    """Any caller of build_study (another tool, the dashboard's API), not only the CLI: a name that
    would be a path, a line or markup is refused before the storage is touched."""
    spec = validate(spec_dict("names", tiny_model), "x.yaml")
    journal = tmp_path / "s.journal"
    storage = open_storage(str(journal))
    for bad in ("/some/dir", "../up", "a\nb", "x[/]", "a" * 201):
        with pytest.raises(SpecError, match="not a study name"):
            build_study(spec, storage, name=bad)
    assert optuna.get_all_study_summaries(storage, include_best_trial=False) == []


def test_every_shipped_spec_is_accepted():
    """Their fixed values, spaces, known configs, samplers and pruners pass every check."""
    for name in available_specs():
        assert load_spec(name).name == name


def test_a_spec_read_back_from_its_study_is_checked_for_shape_not_values():
    """A study created when a value was accepted stays readable (status, export) when an objective
    later accepts less; a new spec with that value is refused."""
    data = shipped()
    data["fixed"]["max_grad_norm"] = 0.0
    data["pruner"]["options"]["min_resource"] = 0
    with pytest.raises(SpecError, match=r"x\.yaml: fixed\.max_grad_norm: 0\.0 is not a number > 0$"):
        validate(data, "x.yaml")
    assert validate(data, "recorded", recorded=True).fixed["max_grad_norm"] == 0.0
    data["pruner"]["options"] = {"min_resources": 1}
    with pytest.raises(SpecError, match=r"pruner\.options\.min_resources: not an option of HyperbandPruner"):
        validate(data, "recorded", recorded=True)

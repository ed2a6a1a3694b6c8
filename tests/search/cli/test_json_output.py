"""`--format json` of `search status`, `studies` and `export`: one JSON object on stdout, in the
shape the help and README document, holding the study's own figures; the tables show the same."""

from __future__ import annotations

import json

import optuna
import yaml

from helpers import REPO, Store, ok

STATUS_KEYS = {"study", "storage", "objective", "metric", "trials", "best", "target", "baseline", "references"}
BEST_KEYS = {"number", "value", "split", "n_items", "reached", "known_config", "params", "tuned", "slices"}


def cells(table: str, label: str) -> list[str]:
    """The cells of the one table row whose first cell is ``label``."""
    (row,) = [line for line in table.splitlines() if line.startswith(f"│ {label} ")]
    return [cell.strip() for cell in row.strip("│").split("│")]


def test_status_json_is_the_study_and_the_table_shows_the_same(pruned_study, cli):
    store, name = pruned_study.store, pruned_study.name
    spec = yaml.safe_load(pruned_study.spec.read_text())
    best, pruned = sorted(store.trials(name), key=lambda t: t.state.name != "COMPLETE")
    assert pruned.state.name == "PRUNED"

    result = ok(cli("status", "--study", name, "--storage", store.url, "--format", "json"))
    assert result.stderr == ""
    status = json.loads(result.stdout)  # the whole of stdout is one object
    assert set(status) == STATUS_KEYS
    assert (status["study"], status["storage"], status["objective"]) == (name, store.url, "recipe_mpr")
    assert status["metric"] == {"name": "accuracy", "direction": "maximize"}
    assert status["trials"] == {"complete": 1, "pruned": 1, "fail": 0, "running": 0, "waiting": 0}
    shown = status["best"]
    assert set(shown) == BEST_KEYS
    assert (shown["number"], shown["value"], shown["split"], shown["n_items"]) == (best.number, best.value,
                                                                                   "validation", 80)
    assert shown["reached"] is (best.value >= 0.75) and shown["known_config"] == "good"
    assert shown["tuned"] == sorted(best.params) and {k: shown["params"][k] for k in best.params} == best.params
    assert {k: shown["params"][k] for k in spec["fixed"]} == spec["fixed"], "the complete configuration"
    assert shown["slices"] == {"per_query_type": best.user_attrs["per_query_type"]}
    assert status["target"] == {"value": 0.75, "source": spec["target"]["source"], "beat_baseline": False}
    assert status["baseline"] == {"value": 0.694, "source": spec["baseline"]["source"]}
    assert status["references"] == []

    table = ok(cli("status", "--study", name, "--storage", store.url)).stdout
    assert cells(table, f"best (trial {best.number}, validation)") == [
        f"best (trial {best.number}, validation)", f"{best.value:.4f}",
        "reached" if shown["reached"] else f"{best.value - 0.75:+.4f}"]
    assert cells(table, "baseline") == ["baseline", "0.6940", "-0.0560"]
    assert cells(table, "learning_rate") == ["learning_rate", f"{best.params['learning_rate']:.4g}", "tuned"]
    for type_, figures in best.user_attrs["per_query_type"].items():
        assert cells(table, type_) == [type_, f"{figures['accuracy']:.4f}", str(figures["n"])]


def test_status_json_gives_each_reference_the_best_trials_figure_of_its_metric(cli, tmp_path):
    from search.spec import validate
    from search.study import build_study

    store = Store("journal", str(tmp_path / "studies.journal"))
    name = store.name("refs")
    data = yaml.safe_load((REPO / "spaces" / "babylm.yaml").read_text())  # babylm also records dev_loss
    data["name"], data["known_configs"] = name, []
    data["references"] = [{"name": "published", "value": 0.6, "source": "paper X"},
                          {"name": "loss goal", "value": 2.5, "metric": "dev_loss", "source": "our guess"}]
    study, _ = build_study(validate(data, "refs.yaml"), store.optuna)
    for value, attrs in ((0.55, {"dev_loss": 2.75}), (0.62, {"dev_loss": 2.25})):  # finished trials, as workers store them
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value, user_attrs=attrs))

    def status() -> dict:
        return json.loads(ok(cli("status", "--study", name, "--storage", store.url, "--format", "json")).stdout)

    shown = status()
    assert (shown["best"]["number"], shown["best"]["value"], shown["best"]["reached"]) == (1, 0.62, False)
    assert shown["target"] == {"value": 0.65, "source": data["target"]["source"], "beat_baseline": False}
    assert shown["references"] == [
        {"name": "published", "metric": "blimp", "value": 0.6, "source": "paper X", "best": 0.62},
        {"name": "loss goal", "metric": "dev_loss", "value": 2.5, "source": "our guess", "best": 2.25}]
    table = ok(cli("status", "--study", name, "--storage", store.url)).stdout
    assert cells(table, "published") == ["published", "0.6000", "-0.0500"]
    assert cells(table, "loss goal (dev_loss)") == ["loss goal (dev_loss)", "2.5", "2.25", "our guess"]

    # A better trial that did not record the other figure: that reference's best is null.
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.7))
    shown = status()
    assert (shown["best"]["number"], shown["best"]["reached"]) == (2, True)
    assert [line["best"] for line in shown["references"]] == [0.7, None]
    table = ok(cli("status", "--study", name, "--storage", store.url)).stdout
    assert cells(table, "best (trial 2, validation)")[2] == "reached"
    assert cells(table, "loss goal (dev_loss)") == ["loss goal (dev_loss)", "2.5", "—", "our guess"]


def test_export_json_is_the_record_it_writes(pruned_study, cli, tmp_path):
    store, name = pruned_study.store, pruned_study.name
    best = next(t for t in store.trials(name) if t.state.name == "COMPLETE")
    result = ok(cli("export", "--study", name, "--storage", store.url, "-o", "best.yaml", "--format", "json"))
    assert result.stderr == ""
    printed = json.loads(result.stdout)
    assert printed == yaml.safe_load((tmp_path / "best.yaml").read_text()), "stdout is what the file holds"
    assert (printed["study"], printed["trial"], printed["metric"]["value"]) == (name, best.number, best.value)
    assert printed["params"]["learning_rate"] == best.params["learning_rate"]
    assert printed["rerun"] == "search run --config best.yaml"


def test_status_by_the_spec_name_finds_the_one_study_made_from_it(cli, tmp_path):
    """`make demo` runs the recipe-mpr spec under --name recipe-mpr-demo; `search status --study
    recipe-mpr` then shows that study, and names every candidate when there are several."""
    from search.spec import load_spec
    from search.study import build_study

    store = Store("journal", str(tmp_path / "studies.journal"))
    spec = load_spec("recipe-mpr")
    build_study(spec, store.optuna, name="recipe-mpr-demo")
    shown = ok(cli("status", "--study", "recipe-mpr", "--storage", store.url, "--format", "json"))
    assert json.loads(shown.stdout)["study"] == "recipe-mpr-demo"
    assert "showing 'recipe-mpr-demo', made from the spec 'recipe-mpr'" in shown.stderr

    build_study(spec, store.optuna, name="recipe-mpr-second")
    refused = cli("status", "--study", "recipe-mpr", "--storage", store.url)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"error: no study 'recipe-mpr' in {store.url}; made from the spec 'recipe-mpr': recipe-mpr-demo, "
        "recipe-mpr-second (give one of them to --study)"]

"""The search as users run it: `search worker`, `export` and `run` against both real stores.

Each test trains the tiny BERT on the real Recipe-MPR data through the CLI, in subprocesses.
"""

from __future__ import annotations

import collections
import json
import re
import signal
import time

import pytest
import yaml

from helpers import FINISHED, REPO, known, ok, trials_started

pytestmark = pytest.mark.usefixtures("data_dir")

# Short heartbeat so a dead worker's trial goes stale in seconds (both stores read these).
HEARTBEAT = {"SEARCH_HEARTBEAT_INTERVAL": "1", "SEARCH_GRACE_PERIOD": "3"}


def test_two_workers_share_one_study(store, write_spec, start_cli):
    name = store.name("two-workers")
    configs = [known("first", 3e-3, 1), known("second", 1e-3, 1, batch=32), known("third", 1e-4, 1)]
    spec = write_spec(name, known=configs)

    workers = [start_cli("worker", "--study", str(spec), "--storage", store.url, "--n-trials", "2")
               for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, f"worker failed\nstdout:\n{out}\nstderr:\n{err}"
        assert err == "", "a successful worker writes nothing to stderr"

    trials = store.trials(name)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == [0, 1, 2, 3], "2 workers x 2 trials each, numbered once"
    assert {t.state.name for t in trials} <= FINISHED, [(t.number, t.state.name) for t in trials]
    # Every known configuration ran exactly once in the study, not once per worker.
    runs = collections.Counter(t.user_attrs.get("known_config") for t in trials)
    assert runs == {"first": 1, "second": 1, "third": 1, None: 1}
    for t in trials:
        if t.user_attrs.get("known_config"):
            config = next(c for c in configs if c["name"] == t.user_attrs["known_config"])
            assert t.params == pytest.approx(config["params"])
    # Both workers worked, each on its own trials.
    ran = [trials_started(out) for out, _ in outputs]
    assert all(len(r) == 2 for r in ran), ran
    assert sorted(ran[0] + ran[1]) == [0, 1, 2, 3]


def test_a_clearly_worse_trial_is_pruned(pruned_study):
    good, stuck = pruned_study.store.trials(pruned_study.name)
    assert good.user_attrs["known_config"] == "good" and stuck.user_attrs["known_config"] == "stuck"
    assert good.state.name == "COMPLETE"
    assert sorted(good.intermediate_values) == [1, 2, 3]
    assert stuck.state.name == "PRUNED", f"stuck trial not pruned: {stuck.intermediate_values}\n{pruned_study.stdout}"
    match = re.fullmatch(r"pruned at epoch (\d+)", stuck.user_attrs["end_reason"])
    assert match, stuck.user_attrs["end_reason"]
    epoch = int(match.group(1))
    assert epoch < 3, "pruned before it finished"
    assert max(stuck.intermediate_values) == epoch, "no epoch trained after the pruning decision"
    assert stuck.intermediate_values[epoch] < good.intermediate_values[epoch]
    assert re.search(rf"^trial 1 pruned\b.*\bat epoch {epoch}\b", pruned_study.stdout, flags=re.M), pruned_study.stdout
    assert pruned_study.stderr == "", "a successful worker writes nothing to stderr"


def test_export_then_run_reproduces_config_and_metric(pruned_study, cli, tmp_path, recipe):
    store, name = pruned_study.store, pruned_study.name
    best = next(t for t in store.trials(name) if t.state.name == "COMPLETE")

    status = json.loads(ok(cli("status", "--study", name, "--storage", store.url, "--format", "json")).stdout)
    assert status["trials"] == {"complete": 1, "pruned": 1, "fail": 0, "running": 0, "waiting": 0}
    assert (status["best"]["number"], status["best"]["value"]) == (best.number, best.value)
    assert status["target"]["value"] == 0.75 and status["baseline"]["value"] == 0.694

    exported = ok(cli("export", "--study", name, "--storage", store.url, "-o", "best.yaml"))
    record = yaml.safe_load((tmp_path / "best.yaml").read_text())

    # The complete configuration: objective defaults < the spec's fixed values < the tuned ones.
    params = record["params"]
    assert set(params) == set(recipe.PARAMS)
    assert params["model_name_or_path"] == yaml.safe_load(pruned_study.spec.read_text())["fixed"]["model_name_or_path"]
    assert params["max_length"] == 64 and params["warmup_steps"] == 0 and params["dropout"] == 0.0
    assert params["seed"] == 42 and params["fold"] == 0
    assert {k: params[k] for k in best.params} == best.params
    assert record["tuned"] == sorted(best.params) == ["learning_rate", "num_train_epochs", "per_device_train_batch_size"]
    # Where it stands and where it came from.
    assert record["study"] == name and record["objective"] == "recipe_mpr"
    assert record["trial"] == best.number and record["known_config"] == best.user_attrs["known_config"]
    assert record["metric"] == {"name": "accuracy", "direction": "maximize", "value": best.value,
                                "split": "validation", "n_items": 80}
    assert record["target"]["value"] == 0.75 and "seed guide 000" in record["target"]["source"]
    assert record["target"]["reached"] is (best.value >= 0.75)
    assert record["baseline"]["value"] == 0.694 and "500 items" in record["baseline"]["source"]
    per_type = record["slices"]["per_query_type"]
    assert set(per_type) == set(recipe.QUERY_TYPES)
    assert sum(v["n"] for v in per_type.values()) >= 80  # an item counts under each of its types
    assert record["rerun"] == "search run --config best.yaml"
    assert "search run --config best.yaml" in exported.stdout

    rerun = ok(cli("run", "--config", "best.yaml"))
    this_run = re.search(r"this run \(validation, 80 items\)\s*│\s*([0-9.]+)", rerun.stdout)
    recorded = re.search(rf"recorded \(trial {best.number}\)\s*│\s*([0-9.]+)", rerun.stdout)
    assert this_run and recorded, rerun.stdout
    # Accuracy on 80 items is a multiple of 1/80: four decimals show it exactly.
    assert this_run.group(1) == recorded.group(1) == f"{best.value:.4f}"
    epochs = [float(v) for v in re.findall(r"^epoch \d+: ([0-9.]+)$", rerun.stdout, flags=re.M)]
    assert epochs == [round(best.intermediate_values[e], 4) for e in sorted(best.intermediate_values)]


def test_studies_lists_the_specs_and_the_stored_studies(pruned_study, cli, tmp_path):
    store, name = pruned_study.store, pruned_study.name
    best = max(t.value for t in store.trials(name) if t.state.name == "COMPLETE")
    listed = json.loads(ok(cli("studies", "--storage", store.url, "--format", "json")).stdout)
    specs = {s["spec"]: s for s in listed["specs"]}
    assert {"recipe-mpr", "lyrics-genre", "ag-news", "aste-14res", "babylm"} <= set(specs)
    searched = list(yaml.safe_load((REPO / "spaces" / "recipe-mpr.yaml").read_text())["space"])
    assert specs["recipe-mpr"] == {"spec": "recipe-mpr", "objective": "recipe_mpr",
                                   "metric": {"name": "accuracy", "direction": "maximize"},
                                   "target": {"value": 0.75, "beat_baseline": False},
                                   "baseline": {"value": 0.694, "computed": False}, "searched": searched}
    assert specs["lyrics-genre"]["target"] == {"value": None, "beat_baseline": True}
    assert specs["lyrics-genre"]["baseline"] == {"value": None, "computed": True}
    (study,) = [s for s in listed["studies"] if s["study"] == name]
    first = min(t.datetime_start for t in store.trials(name))
    assert study == {"study": name, "metric": {"name": "accuracy", "direction": "maximize"}, "trials": 2,
                     "complete": 1, "best": best, "target": 0.75, "created": f"{first:%Y-%m-%dT%H:%M:%S}+00:00"}
    # The table shows the same figures, a study to a line.
    (row,) = [line for line in ok(cli("studies", "--storage", store.url)).stdout.splitlines() if f" {name} " in line]
    assert [cell.strip() for cell in row.split("│")[2:7]] == ["2", "1", f"{best:.4f}", "0.75", f"{first:%Y-%m-%d %H:%M}"]

    # Nothing run yet on this machine: the specs, a hint, and no store created by looking.
    fresh = ok(cli("studies", env={"XDG_DATA_HOME": str(tmp_path / "fresh")})).stdout
    assert "recipe-mpr" in fresh and "no studies in" in fresh and "yet" in fresh
    fresh = json.loads(ok(cli("studies", "--format", "json", env={"XDG_DATA_HOME": str(tmp_path / "fresh")})).stdout)
    assert fresh["studies"] == [] and fresh["storage"] == str(tmp_path / "fresh" / "search" / "studies.journal")
    missing = cli("status", "--study", name, "--storage", str(tmp_path / "typo.journal"))
    assert missing.returncode == 2 and "no such journal file" in missing.stderr
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "typo.journal").exists()


def test_a_killed_workers_trial_is_rerun(store, write_spec, start_cli):
    name = store.name("kill")
    spec = write_spec(name, known=[known("long", 1e-3, 4)],
                      edit=lambda s: s["space"]["num_train_epochs"].update(high=4))
    worker = ["worker", "--study", str(spec), "--storage", store.url, "--n-trials", "1"]

    a = start_cli(*worker, env=HEARTBEAT)
    deadline = time.monotonic() + 180
    running = None
    while running is None:
        assert a.poll() is None, f"worker A ended early: {a.communicate()}"
        assert time.monotonic() < deadline, "worker A never got to train a trial"
        time.sleep(0.2)
        if name in store.study_names():
            # Mid-trial: running, with at least one epoch reported.
            running = next((t for t in store.trials(name) if t.state.name == "RUNNING" and t.intermediate_values), None)
    a.send_signal(signal.SIGKILL)
    a.wait()
    (killed,) = store.trials(name)
    assert killed.state.name == "RUNNING", "nobody has noticed the dead worker yet"
    time.sleep(3 + 1)  # past the grace period

    b = start_cli(*worker, env=HEARTBEAT)
    out, err = b.communicate(timeout=300)
    assert b.returncode == 0, f"worker B failed\nstdout:\n{out}\nstderr:\n{err}"

    first, retry = store.trials(name)
    assert first.number == killed.number and first.state.name == "FAIL"
    assert retry.state.name == "COMPLETE"
    assert retry.params == first.params == pytest.approx(known("long", 1e-3, 4)["params"])
    assert retry.system_attrs["failed_trial"] == first.number
    assert retry.user_attrs["known_config"] == "long" and retry.user_attrs["end_reason"] == "completed"
    assert sorted(retry.intermediate_values) == list(range(1, 5)), "re-run from the start, all 4 epochs"
    assert trials_started(out) == [retry.number]

    # The dashboard says why the first one ended, though nobody could write to it once it failed.
    import optuna
    from optuna_dashboard import get_note

    study = optuna.load_study(study_name=name, storage=store.optuna)
    reason = f"failed: its worker stopped (no heartbeat); re-run as trial {retry.number}"
    assert f"| {first.number} | {reason} |" in get_note(study)
    retry_note = get_note(optuna.trial.Trial(study, retry._trial_id))
    assert f"re-run of trial {first.number}, whose worker stopped" in retry_note

"""The dashboard: notes and plots the workers keep current, seen in a real headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import REPO, ok

from search.dashboard.notes import study_note
from search.dashboard.plots import PLOTS
from search.study import recorded_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPORTS = REPO / "test-reports"


def _chromium(*args: str, user_data: Path) -> str:
    """Run headless Chromium once (a fresh profile, no network but loopback) and return stdout."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={user_data}", "--virtual-time-budget=15000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def _text(dom: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


def _stored_plots(storage: optuna.storages.BaseStorage, name: str) -> dict[str, dict]:
    """Every plot optuna-dashboard would show, parsed back from its stored chunks."""
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(name))
    return {key: json.loads(payload) for key, payload in get_plotly_graph_objects(attrs).items()}


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
@pytest.mark.parametrize("pruned_study", ["postgresql"], indirect=True)
def test_dashboard_in_chromium_shows_note_target_baseline_best_and_plots(pruned_study, dashboard, tmp_path):
    store, name = pruned_study.store, pruned_study.name
    study = optuna.load_study(study_name=name, storage=store.optuna)
    study_id = store.optuna.get_study_id_from_name(name)
    served = dashboard("--storage", store.url)  # read-only, as served by default
    base = served.base

    note_page = _text(_chromium("--dump-dom", f"{base}/dashboard/studies/{study_id}/note", user_data=tmp_path / "c1"))
    assert f"{name}: accuracy, maximize" in note_page
    assert "target 0.7500" in note_page and "baseline 0.6940" in note_page
    assert f"Best {study.best_value:.4f} (validation, trial {study.best_trial.number})" in note_page
    assert "1 completed, 1 pruned, 0 failed" in note_page

    study_page = _text(_chromium("--dump-dom", f"{base}/dashboard/studies/{study_id}", user_data=tmp_path / "c2"))
    for title in ("Best accuracy so far against target and baseline",
                  "Best accuracy against cumulative training time",
                  "Best trial's accuracy per slice against the baseline's", "Where trials stopped"):
        assert title in study_page

    REPORTS.mkdir(exist_ok=True)
    shot = REPORTS / "dashboard.png"
    _chromium("--window-size=1400,2400", f"--screenshot={shot}", f"{base}/dashboard/studies/{study_id}",
              user_data=tmp_path / "c3")
    assert shot.stat().st_size > 10_000

    # The pages only read: every request they made was a GET the read-only server answered.
    _, log = served.stop()
    requests = re.findall(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})', log)
    assert requests and {method for method, _, _ in requests} == {"GET"}, requests
    assert not [r for r in requests if r[2] in ("400", "403")], requests


def test_each_trial_has_a_note_with_its_config_slices_time_and_end(pruned_study):
    from optuna_dashboard import get_note

    study = optuna.load_study(study_name=pruned_study.name, storage=pruned_study.store.optuna)
    notes = {t.number: get_note(optuna.trial.Trial(study, t._trial_id)) for t in study.get_trials()}
    by_config = {t.user_attrs["known_config"]: t.number for t in study.get_trials()}
    good, stuck = notes[by_config["good"]], notes[by_config["stuck"]]
    assert good.startswith(f"### Trial {by_config['good']}: completed")
    assert re.search(r"^### Trial \d+: pruned at epoch \d", stuck)
    for note in (good, stuck):
        assert "| learning_rate |" in note and "training time" in note
        assert "| Specific |" in note and "| Temporal |" in note  # per query type


def test_note_and_plots_stay_correct_when_workers_finish_together(store, write_spec, start_cli):
    """Four workers finish identical trials at the same moment; each rewrites the note and plots."""
    name = store.name("together")
    spec = write_spec(name, edit=lambda s: s.update(
        space={"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
        fixed={**s["fixed"], "num_train_epochs": 1, "per_device_train_batch_size": 32},
        pruner={"type": "NopPruner"}))
    workers = [start_cli("worker", "--study", str(spec), "--storage", store.url, "--n-trials", "2") for _ in range(4)]
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err

    study = optuna.load_study(study_name=name, storage=store.optuna)
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state.name == "COMPLETE" for t in trials)
    from optuna_dashboard import get_note

    # The stored note is exactly what the final state renders to: no lost update, no torn chunks.
    assert get_note(study) == study_note(study, recorded_spec(study))
    assert "8 completed, 0 pruned, 0 failed" in get_note(study)
    plots = _stored_plots(store.optuna, name)
    assert set(plots) == set(PLOTS) - {"confirmed"}
    history = plots["best-so-far"]["data"]
    assert sorted(history[0]["x"]) == sorted(t.number for t in trials)
    assert history[1]["y"][-1] == pytest.approx(study.best_value)


def test_confirm_runs_every_fold_once_and_records_what_the_runs_measured(write_spec, store, cli, start_cli, tmp_path):
    name = store.name("confirm")
    spec = write_spec(name, known=[{"name": "a", "params": {"learning_rate": 3e-3, "num_train_epochs": 1,
                                                            "per_device_train_batch_size": 32}},
                                   {"name": "b", "params": {"learning_rate": 1e-3, "num_train_epochs": 1,
                                                            "per_device_train_batch_size": 32}}],
                      pruner={"type": "NopPruner"})
    ok(cli("worker", "--study", str(spec), "--storage", store.url, "--n-trials", "2"))

    # Two confirmers at once share the 2 configs x 2 seeds x 5 folds = 20 runs.
    both = [start_cli("confirm", "--study", name, "--storage", store.url, "--top", "2", "--seeds", "2")
            for _ in range(2)]
    for proc in both:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err

    confirm = optuna.load_study(study_name=f"{name}.confirm", storage=store.optuna)
    runs = [t for t in confirm.get_trials() if t.state.name == "COMPLETE"]
    keys = [(t.params["source_trial"], t.params["seed"], t.params["fold"]) for t in runs]
    assert len(keys) == len(set(keys)) == 20  # every run exactly once
    study = optuna.load_study(study_name=name, storage=store.optuna)
    confirmed = study.user_attrs["search:confirmed"]
    assert set(confirmed) == {"0", "1"}
    for source, c in confirmed.items():
        per_seed = []
        for seed in (1000, 1001):
            tests = [t.user_attrs["test"] for t in runs if t.params["source_trial"] == int(source) and t.params["seed"] == seed]
            assert sorted(t.params["fold"] for t in runs if t.params["source_trial"] == int(source)
                          and t.params["seed"] == seed) == [0, 1, 2, 3, 4]
            assert sum(t["n_items"] for t in tests) == 500  # the test folds cover the dataset
            per_seed.append(sum(t["accuracy"] * t["n_items"] for t in tests) / 500)
        assert c["mean"] == pytest.approx(sum(per_seed) / 2)
        assert c["std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2 ** 0.5)
        assert c["n_items"] == 500 and c["seeds"] == [1000, 1001]

    # Resumable: a second confirm runs nothing new and reports the same figures.
    again = ok(cli("confirm", "--study", name, "--storage", store.url, "--top", "2", "--seeds", "2"))
    assert len(optuna.load_study(study_name=f"{name}.confirm", storage=store.optuna).get_trials()) == len(confirm.get_trials())
    assert f"{confirmed['0']['mean']:.4f} ± {confirmed['0']['std']:.4f}" in again.stdout

    from optuna_dashboard import get_note

    assert "confirmed, test (trial 0)" in get_note(study)
    assert "confirmed" in _stored_plots(store.optuna, name)
    ok(cli("export", "--study", name, "--storage", store.url, "-o", str(tmp_path / "best.yaml"), "--top", "2"))
    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert exported["confirmed"]["mean"] == pytest.approx(confirmed[str(exported["trial"])]["mean"])
    assert len(exported["others"]) == 1 and exported["others"][0]["confirmed"] is not None


def test_references_are_drawn_and_tabulated_beside_target_and_baseline(tiny_model):
    from helpers import spec_dict

    from search.dashboard.plots import figures
    from search.spec import validate

    data = spec_dict("refs", tiny_model)
    data["references"] = [{"name": "published", "value": 0.8, "source": "paper X"}]
    spec = validate(data, "refs.yaml")
    study = optuna.create_study(study_name="refs", direction="maximize")
    assert "| published | 0.8000 | paper X |" in study_note(study, spec)
    for key in ("best-so-far", "best-vs-training-time"):
        lines = {round(shape.y0, 4) for shape in figures(study, spec)[key].layout.shapes}
        assert lines == {0.75, 0.694, 0.8}, key  # target, baseline, the reference

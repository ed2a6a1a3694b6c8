"""Confirm winners honestly: re-train the top configurations with new seeds on every fold and
score each model on its fold's held-out test items, which the search never saw.

The runs are trials of a companion study, ``<study>.confirm``: each is enqueued once as
(source_trial, seed, fold), so confirmation is resumable (a finished run is never redone), can be
spread over any number of ``search confirm`` processes on any machines, and a dead worker's run is
re-queued by the same heartbeat as in the search. The figures are aggregated onto the searched
study (``StudyAttr.CONFIRMED``), where the note, a plot and ``search export`` show them.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

import optuna
from optuna.trial import TrialState

from objectives import TrialReporter
from objectives.attributes import StudyAttr, TrialAttr, TrialSystemAttr
from search.dashboard.refresh import refresh_study
from search.summary import ranked, trial_params
from search.running.events import Sink
from search.running.runner import TrialRunner, trial_checkpoint_dir
from search.running.worker import MAX_CONSECUTIVE_FAILURES, StopAfterFailures
from search.spec import StudySpec

FIRST_SEED = 1000  # confirmation seeds differ from the search's (the spec's seed, 42 by default)


def confirm_name(study_name: str) -> str:
    return f"{study_name}.confirm"


def plan(study: optuna.Study, spec: StudySpec, *, top: int, seeds: int) -> list[dict[str, int]]:
    """One run per (top configuration, seed, fold)."""
    folds = spec.objective_module.folds
    runs = []
    for trial in ranked(study, spec)[:top]:
        for seed in range(FIRST_SEED, FIRST_SEED + seeds):
            for fold in folds:
                run = {"source_trial": trial.number, "seed": seed}
                if fold is not None:
                    run["fold"] = fold
                runs.append(run)
    return runs


def open_confirm_study(study: optuna.Study, spec: StudySpec, storage: optuna.storages.BaseStorage,
                       runs: list[dict[str, int]]) -> optuna.Study:
    confirm = optuna.create_study(study_name=confirm_name(study.study_name), storage=storage,
                                  direction=spec.metric.direction, pruner=optuna.pruners.NopPruner(),
                                  load_if_exists=True)
    # Enqueue under the lock: two confirmers must not both add the same run.
    with storage.study_lock(confirm.study_name):
        for run in runs:
            confirm.enqueue_trial(run, skip_if_exists=True)
    return confirm


def confirm_trial_fixed_params(trial: optuna.Trial) -> dict[str, Any] | None:
    """The run's enqueued (source_trial, seed, fold), or None for a trial nobody enqueued."""
    frozen = trial.study.get_trials(deepcopy=False)[trial.number]
    return frozen.system_attrs.get(TrialSystemAttr.FIXED_PARAMS)


def _objective(study: optuna.Study, spec: StudySpec, on_run: Any, runner: TrialRunner):
    def run(trial: optuna.Trial) -> float:
        fixed = confirm_trial_fixed_params(trial)
        if fixed is None:
            # Another worker took the last queued run between our check and our ask.
            trial.set_user_attr(TrialAttr.END_REASON, "no confirmation run left")
            raise optuna.TrialPruned("no confirmation run left")
        source = trial.suggest_int("source_trial", 0, 10**9)
        seed = trial.suggest_int("seed", 0, 2**31 - 1)
        # What the searched trial really ran with, a new seed, and each fold in turn.
        params = trial_params(spec, study.get_trials(deepcopy=False)[source]) | {"seed": seed}
        if "fold" in fixed:
            params["fold"] = trial.suggest_int("fold", 0, 10**3)
        trial.set_user_attr(TrialAttr.PARAMS, params)
        reporter = TrialReporter(trial)
        reporter.checkpoint_dir = trial_checkpoint_dir(trial)
        result = runner.run(params, reporter, trial=trial, pruner={"type": "NopPruner"}, on_test=True)
        test = result["test"]
        trial.set_user_attr(TrialAttr.TEST, test)
        on_run(trial.number, source, seed, params.get("fold"), test[spec.metric.name])
        return test[spec.metric.name]

    return run


def _waiting(confirm: optuna.Study) -> int:
    return len(confirm.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def run_confirmations(study: optuna.Study, spec: StudySpec, storage: optuna.storages.BaseStorage,
                      confirm: optuna.Study, on_run: Any = lambda *a: None, *, gpus_per_trial: int | None = None,
                      emit: Sink | None = None) -> None:
    """Run queued confirmation runs until none is left, then aggregate onto ``study``.

    Each run goes through the trial runner as a search trial does: on ``gpus_per_trial`` (default:
    the spec's) processes, retried at half the micro-batch when it runs out of memory.
    """
    nproc = gpus_per_trial or spec.gpus_per_trial
    runner = TrialRunner(spec.objective_module, nproc=nproc, emit=emit,
                         storage_url=storage.url if nproc > 1 else None)

    def stop_when_drained(c: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if not _waiting(c):
            c.stop()

    if _waiting(confirm):
        confirm.optimize(_objective(study, spec, on_run, runner), catch=(Exception,),
                         callbacks=[stop_when_drained, StopAfterFailures(MAX_CONSECUTIVE_FAILURES)])
    aggregate(study, spec, storage, confirm)


def _weighted(parts: list[tuple[float | None, int]]) -> float | None:
    n = sum(k for v, k in parts if v is not None)
    return sum(v * k for v, k in parts if v is not None) / n if n else None


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(confirm: optuna.Study, metric: str, n_folds: int) -> dict[str, dict[str, Any]]:
    """Per source trial: cross-validated test metric per seed (seeds with every fold done), then
    mean and standard deviation over seeds, overall and per slice."""
    runs: dict[int, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for t in confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        runs[t.params["source_trial"]][t.params["seed"]].append(t.user_attrs[TrialAttr.TEST])
    out = {}
    for source, by_seed in runs.items():
        complete = {seed: tests for seed, tests in by_seed.items() if len(tests) == n_folds}
        if not complete:
            continue
        per_seed = {seed: _weighted([(t[metric], t["n_items"]) for t in tests]) for seed, tests in complete.items()}
        slice_names = [k for k, v in complete[next(iter(complete))][0].items() if k.startswith("per_") and isinstance(v, dict)]
        per_slice: dict[str, dict[str, Any]] = {}
        for attr in slice_names:
            names = complete[next(iter(complete))][0][attr]
            for name in names:
                values = [_weighted([(t[attr][name].get(metric, t[attr][name].get("accuracy")), t[attr][name]["n"])
                                     for t in tests]) for tests in complete.values()]
                values = [v for v in values if v is not None]
                per_slice[name] = _mean_sd(values) if values else {"mean": None, "std": None}
        n_items = sum(t["n_items"] for t in complete[next(iter(complete))])
        out[str(source)] = {
            **_mean_sd(list(per_seed.values())),
            "seeds": sorted(complete),
            "per_seed": {str(s): v for s, v in sorted(per_seed.items())},
            "slices": per_slice,
            "folds": n_folds,
            "n_items": n_items,
            "what": f"{'cross-validated ' if n_folds > 1 else ''}test {metric} over {n_items} items "
                    f"({n_folds} fold{'s' if n_folds > 1 else ''} x {len(complete)} seed{'s' if len(complete) > 1 else ''}; "
                    "test items never used in the search)",
        }
    return out


def aggregate(study: optuna.Study, spec: StudySpec, storage: optuna.storages.BaseStorage,
              confirm: optuna.Study) -> dict[str, dict[str, Any]]:
    n_folds = len(spec.objective_module.folds)
    with storage.study_lock(confirm.study_name):  # re-read and write as one step
        confirmed = summarize(confirm, spec.metric.name, n_folds)
        if confirmed and confirmed != study.user_attrs.get(StudyAttr.CONFIRMED):
            study.set_user_attr(StudyAttr.CONFIRMED, confirmed)
    refresh_study(study, spec, storage)
    return confirmed

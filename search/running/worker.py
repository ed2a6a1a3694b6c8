"""The worker loop: build or join the study, then run trials of the spec's objective."""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

import optuna
import sqlalchemy

from objectives import TrialReporter, get_objective
from objectives._data import checkpoint_root
from search.running.budget import StudyBudget
from search.running.display import WorkerDisplay
from search.cluster.torchrun import storage_url, train_distributed
from search.running.oom import SkipReported, train_retrying_oom
from search.dashboard.refresh import dashboard_callback
from search.running.shutdown import STOPPED_REASON, Shutdown, requeue
from search.spec import StudySpec
from search.study import build_study, suggest, with_study_baseline

MAX_CONSECUTIVE_FAILURES = 3
WORKER_ATTR = "search:worker"  # system attribute: HOST:PID of the worker running the trial


class _DisplayReporter(TrialReporter):
    def __init__(self, trial: optuna.Trial, display: WorkerDisplay | None) -> None:
        super().__init__(trial)
        self.display = display

    def report(self, value: float, step: int) -> None:
        super().report(value, step)
        if self.display:
            self.display.on_epoch(step, value)

    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        if self.display:
            self.display.on_step(epoch, step, steps_per_epoch)


def make_objective(spec: StudySpec, display: WorkerDisplay | None = None, *, gpus_per_trial: int | None = None,
                   shutdown: Shutdown | None = None, budget: StudyBudget | None = None,
                   storage: optuna.storages.BaseStorage | None = None):
    """The function ``study.optimize`` calls. ``gpus_per_trial`` (default: the spec's) above 1
    trains each trial data-parallel under torchrun (``search/cluster/torchrun.py``) on ``storage``."""
    objective = get_objective(spec.objective)
    nproc = gpus_per_trial or spec.gpus_per_trial
    url = storage_url(storage) if nproc > 1 else None  # where the ranks open the study

    def run_trial(trial: optuna.Trial) -> float:
        if budget:
            budget.release()  # the trial is asked (RUNNING): the other workers count it from now
        if shutdown:
            shutdown.trial_id = trial._trial_id
        try:
            if shutdown:
                shutdown.check()
            trial.study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR,
                                                       f"{socket.gethostname()}:{os.getpid()}")
            return train_trial(trial)
        except KeyboardInterrupt:
            if shutdown:
                shutdown.interrupted = trial._trial_id
            trial.set_user_attr("end_reason", STOPPED_REASON)
            raise
        finally:
            if shutdown:
                shutdown.trial_id = None

    def train_trial(trial: optuna.Trial) -> float:
        tuned = suggest(trial, spec)
        if display:
            display.trial_started(trial.number, tuned)
        reporter = _DisplayReporter(trial, display)
        # A dead worker's trial is re-run as a new trial that names the first one: same folder.
        system_attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
        first = system_attrs.get("failed_trial", trial.number)
        reporter.checkpoint_dir = checkpoint_root() / trial.study.study_name / f"trial-{first}"

        def train(params: dict[str, Any], skip_steps: set[int]) -> dict[str, Any]:
            if nproc > 1:
                return train_distributed(trial, spec, params, nproc=nproc, storage=url,
                                         checkpoint_dir=reporter.checkpoint_dir, skip_steps=skip_steps)
            return objective.train(params, SkipReported(reporter, skip_steps) if skip_steps else reporter)

        def reported_steps() -> set[int]:
            return set(trial.study._storage.get_trial(trial._trial_id).intermediate_values)

        try:
            result = train_retrying_oom(train, spec.params(tuned), reporter, reported_steps)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("end_reason", f"failed: {type(e).__name__}: {e}"[:500])
            raise
        trial.set_user_attr("end_reason", "completed")
        return result[spec.metric.name]

    return run_trial


class StopAfterFailures:
    """A worker whose trials keep failing (data gone, a broken spec) stops instead of spinning."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.count = self.count + 1 if trial.state == optuna.trial.TrialState.FAIL else 0
        if self.count >= self.limit:
            study.stop()


def prepare(spec: StudySpec) -> None:
    """Load data and model before the storage is touched: a missing dataset or model must not
    leave a study (or an empty journal file) behind. The warm caches then serve every trial."""
    get_objective(spec.objective).prepare(spec.params({}))


def _tolerant(callback: Any) -> Any:
    """A dashboard update that fails on a storage error is reported, and the worker goes on."""

    def call(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        try:
            callback(study, trial)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, OSError) as e:
            print(f"warning: the dashboard note of trial {trial.number} was not updated: {type(e).__name__}",
                  file=sys.stderr)

    return call


def run_trials(study: optuna.Study, spec: StudySpec, storage: optuna.storages.BaseStorage, *,
               n_trials: int | None = None, timeout: float | None = None,
               display: WorkerDisplay | None = None, study_budget: int | None = None,
               gpus_per_trial: int | None = None, shutdown: Shutdown | None = None) -> None:
    """Run trials until ``n_trials`` (this worker's), ``timeout`` seconds, or a stop.

    ``study_budget`` N instead: until the study holds N finished trials, whichever workers ran
    them (``search/running/budget.py``). ``shutdown`` (installed signal handlers): a stop ends the
    running trial FAILED and re-queues it at once. After each trial the worker writes the
    trial's note and refreshes the study's note and plots for the dashboard (``search.dashboard.report``).
    """
    failures = StopAfterFailures(MAX_CONSECUTIVE_FAILURES)
    callbacks: list[Any] = [failures, _tolerant(dashboard_callback(spec, storage))]
    if display:
        callbacks.append(display.trial_finished)
    budget = StudyBudget(study, storage, study_budget) if study_budget is not None else None
    objective = make_objective(spec, display, gpus_per_trial=gpus_per_trial, shutdown=shutdown, budget=budget,
                               storage=storage)
    if shutdown:
        shutdown.study = study
    try:
        if budget is None:
            study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(Exception,), callbacks=callbacks)
            return
        deadline = time.monotonic() + timeout if timeout else None
        while failures.count < failures.limit and not (shutdown and shutdown.requested):
            if not budget.admit(deadline=deadline):
                break
            try:  # the admission lock is held until the trial is asked (released in run_trial)
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)
            finally:
                budget.release()
    except KeyboardInterrupt:
        if shutdown and shutdown.interrupted is not None:
            requeue(study, shutdown.interrupted)
        raise


def run_worker(spec: StudySpec, storage: optuna.storages.BaseStorage, *, name: str | None = None,
               n_trials: int | None = None, timeout: float | None = None,
               display: WorkerDisplay | None = None) -> optuna.Study:
    prepare(spec)
    study, _ = build_study(spec, storage, name=name)
    spec = with_study_baseline(spec, study)
    run_trials(study, spec, storage, n_trials=n_trials, timeout=timeout, display=display)
    return study

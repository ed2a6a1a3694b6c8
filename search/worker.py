"""The worker loop: build or join the study, then run trials of the spec's objective."""

from __future__ import annotations

from typing import Any

import optuna

from objectives import TrialReporter, get_objective
from objectives._data import checkpoint_root
from search.display import WorkerDisplay
from search.report import dashboard_callback
from search.spec import StudySpec
from search.study import build_study, suggest, with_study_baseline

MAX_CONSECUTIVE_FAILURES = 3


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


def make_objective(spec: StudySpec, display: WorkerDisplay | None = None):
    objective = get_objective(spec.objective)

    def run_trial(trial: optuna.Trial) -> float:
        tuned = suggest(trial, spec)
        if display:
            display.trial_started(trial.number, tuned)
        reporter = _DisplayReporter(trial, display)
        # A dead worker's trial is re-run as a new trial that names the first one: same folder.
        system_attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
        first = system_attrs.get("failed_trial", trial.number)
        reporter.checkpoint_dir = checkpoint_root() / trial.study.study_name / f"trial-{first}"
        try:
            result = objective.train(spec.params(tuned), reporter)
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


def run_trials(study: optuna.Study, spec: StudySpec, storage: optuna.storages.BaseStorage, *,
               n_trials: int | None = None, timeout: float | None = None,
               display: WorkerDisplay | None = None) -> None:
    """Run trials until ``n_trials`` (this worker's), ``timeout`` seconds, or a stop.

    After each trial the worker writes the trial's note and refreshes the study's note and
    plots for the dashboard (``search.report``).
    """
    callbacks: list[Any] = [StopAfterFailures(MAX_CONSECUTIVE_FAILURES), dashboard_callback(spec, storage)]
    if display:
        callbacks.append(display.trial_finished)
    study.optimize(make_objective(spec, display), n_trials=n_trials, timeout=timeout,
                   catch=(Exception,), callbacks=callbacks)


def run_worker(spec: StudySpec, storage: optuna.storages.BaseStorage, *, name: str | None = None,
               n_trials: int | None = None, timeout: float | None = None,
               display: WorkerDisplay | None = None) -> optuna.Study:
    prepare(spec)
    study, _ = build_study(spec, storage, name=name)
    spec = with_study_baseline(spec, study)
    run_trials(study, spec, storage, n_trials=n_trials, timeout=timeout, display=display)
    return study

"""The worker loop: build or join the study, then run trials of the spec's objective."""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from objectives import TrialReporter
from objectives.attributes import TrialAttr, TrialSystemAttr
from search.dashboard.refresh import dashboard_callback
from search.running.budget import StudyBudget
from search.running.display import WorkerDisplay
from search.running.events import Sink, TrialEvent, fan_out, from_environment
from search.running.runner import TrialRunner, trial_checkpoint_dir
from search.running.shutdown import STOPPED_REASON, Shutdown, requeue
from search.spec import StudySpec
from search.study import as_recorded, build_study

MAX_CONSECUTIVE_FAILURES = 3
TAKEN_OVER_REASON = ("taken over: failed as stale by another worker while this one could not reach the storage; "
                     "abandoned here, its re-queued copy runs instead")


class TrialTakenOver(BaseException):
    """The running trial was finished by someone else, in practice failed as stale by another
    worker while this one could not reach the storage (``storage/_rdb.py``). Like a stop, not a
    failure of the trial: nothing catches it as one, Optuna does not tell the trial (it is no
    longer this worker's), and a checkpoint stays for the re-queued copy."""


class _DisplayReporter(TrialReporter):
    """Reports into the trial and moves the display's progress bar at every optimizer step; stops
    training at the next step once the storage's heartbeat finds the trial taken over."""

    def __init__(self, trial: optuna.Trial, display: WorkerDisplay | None,
                 storage: optuna.storages.BaseStorage | None = None) -> None:
        super().__init__(trial)
        self.display = display
        self.taken_over = getattr(storage, "taken_over", lambda trial_id: False)

    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        if self.display:
            self.display.on_step(epoch, step, steps_per_epoch)
        if self.taken_over(self.trial._trial_id):
            raise TrialTakenOver(self.trial.number)


def make_objective(spec: StudySpec, display: WorkerDisplay | None = None, *, gpus_per_trial: int | None = None,
                   shutdown: Shutdown | None = None, budget: StudyBudget | None = None,
                   storage: optuna.storages.BaseStorage | None = None, emit: Sink | None = None):
    """The function ``study.optimize`` calls. ``gpus_per_trial`` (default: the spec's) above 1
    trains each trial data-parallel under torchrun (``search/cluster/torchrun.py``) on ``storage``.
    ``emit`` receives the trial's events (the display is one sink of them)."""
    nproc = gpus_per_trial or spec.gpus_per_trial
    runner = TrialRunner(spec.objective_module, nproc=nproc, emit=emit,
                         storage_url=storage.url if nproc > 1 else None)  # where rank 0 opens the study

    def run_trial(trial: optuna.Trial) -> float:
        if budget:
            budget.release()  # the trial is asked (RUNNING): the other workers count it from now
        if shutdown:
            shutdown.trial_id = trial._trial_id
        try:
            if shutdown:
                shutdown.check()
            trial.study._storage.set_trial_system_attr(trial._trial_id, TrialSystemAttr.WORKER,
                                                       f"{socket.gethostname()}:{os.getpid()}")
            return train_trial(trial)
        except optuna.exceptions.UpdateFinishedTrialError as e:  # finished by someone else: not ours to tell
            raise TrialTakenOver(trial.number) from e
        except KeyboardInterrupt:
            if shutdown:
                shutdown.interrupted = trial._trial_id
            trial.set_user_attr(TrialAttr.END_REASON, STOPPED_REASON)
            raise
        finally:
            if shutdown:
                shutdown.trial_id = None

    def train_trial(trial: optuna.Trial) -> float:
        tuned = spec.suggest(trial)
        params = spec.params(tuned)  # resolved once, recorded: what export, confirm and the notes read
        trial.set_user_attr(TrialAttr.PARAMS, params)
        if emit:
            emit(TrialEvent("started", trial.number, params=tuned))
        reporter = _DisplayReporter(trial, display, storage)
        reporter.checkpoint_dir = trial_checkpoint_dir(trial)
        try:
            result = runner.run(params, reporter, trial=trial, pruner=spec.pruner.model_dump())
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr(TrialAttr.END_REASON, f"failed: {type(e).__name__}: {e}"[:500])
            raise
        trial.set_user_attr(TrialAttr.END_REASON, "completed")
        return result[spec.metric.name]

    return run_trial


class StopAfterFailures:
    """A worker whose own trials keep failing (data gone, a broken spec) stops instead of spinning.

    Counts this worker's trials only (an optimize callback sees those), so another worker's
    failures in a shared study neither stop it nor hide its own. ``reason``: why it stopped.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0
        self.reason: str | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.count = self.count + 1 if trial.state == TrialState.FAIL else 0
        if self.count >= self.limit:
            self.reason = (f"stopped after {self.limit} failed trials in a row; last: "
                           f"{trial.user_attrs.get(TrialAttr.END_REASON, 'unknown')}")
            study.stop()

    @property
    def stopped(self) -> bool:
        return self.count >= self.limit


def announce_end(emit: Sink, display: WorkerDisplay | None):
    """An optimize callback: the finished trial as an event (the display shows the study's best)."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if display:
            try:
                display.best = study.best_value
            except ValueError:  # no completed trial yet
                pass
        kind = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(trial.state, "failed")
        emit(TrialEvent(kind, trial.number, value=trial.value,
                        reason=None if kind == "complete" else trial.user_attrs.get(TrialAttr.END_REASON)))

    return callback


def prepare(spec: StudySpec) -> None:
    """Load data and model before the storage is touched: a missing dataset or model must not
    leave a study (or an empty journal file) behind. The warm caches then serve every trial."""
    spec.objective_module.prepare(spec.params({}))


def _tolerant(callback: Any) -> Any:
    """A dashboard update that fails on a storage error is reported, and the worker goes on."""

    def call(study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            callback(study, trial)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, OSError) as e:
            print(f"warning: the dashboard note of trial {trial.number} was not updated: {type(e).__name__}",
                  file=sys.stderr)

    return call


@dataclass
class WorkerOutcome:
    """How a worker's run of trials ended."""

    failure_stop: str | None  # why it stopped after consecutive failures of its own trials; None: it did not


def run_trials(study: optuna.Study, spec: StudySpec, storage: optuna.storages.BaseStorage, *,
               n_trials: int | None = None, timeout: float | None = None,
               display: WorkerDisplay | None = None, study_budget: int | None = None,
               gpus_per_trial: int | None = None, shutdown: Shutdown | None = None,
               emit: Sink | None = None) -> WorkerOutcome:
    """Run trials until ``n_trials`` (this worker's), ``timeout`` seconds, or a stop.

    ``study_budget`` N instead: until the study holds N finished trials, whichever workers ran
    them (``search/running/budget.py``). ``shutdown`` (installed signal handlers): a stop ends the
    running trial FAILED and re-queues it at once. After each trial the worker writes the
    trial's note and refreshes the study's note and plots for the dashboard
    (``search/dashboard/``). Every trial's events go to the display and to ``emit`` (default: the
    file ``search launch`` names in ``$SEARCH_EVENTS_FILE``, if any).
    """
    sink = fan_out(display, emit or from_environment())
    failures = StopAfterFailures(MAX_CONSECUTIVE_FAILURES)
    callbacks: list[Any] = [failures, _tolerant(dashboard_callback(spec, storage)), announce_end(sink, display)]
    budget = StudyBudget(study, storage, study_budget) if study_budget is not None else None
    objective = make_objective(spec, display, gpus_per_trial=gpus_per_trial, shutdown=shutdown, budget=budget,
                               storage=storage, emit=sink)
    if shutdown:
        shutdown.study = study
    try:
        if budget is None:
            optimize_past_takeovers(study, objective, n_trials=n_trials, timeout=timeout, callbacks=callbacks,
                                    emit=sink)
            return WorkerOutcome(failures.reason)
        deadline = time.monotonic() + timeout if timeout else None
        while not failures.stopped and not (shutdown and shutdown.requested):
            if not budget.admit(deadline=deadline):
                break
            try:  # the admission lock is held until the trial is asked (released in run_trial)
                optimize_past_takeovers(study, objective, n_trials=1, callbacks=callbacks, emit=sink, go_on=False)
            finally:
                budget.release()
    except KeyboardInterrupt:
        if shutdown and shutdown.interrupted is not None:
            requeue(study, shutdown.interrupted)
        raise
    return WorkerOutcome(failures.reason)


def optimize_past_takeovers(study: optuna.Study, objective: Any, *, n_trials: int | None, timeout: float | None = None,
                            callbacks: list[Any], emit: Sink, go_on: bool = True) -> None:
    """``study.optimize`` (``n_trials`` of this worker's trials, told by it; ``timeout`` seconds),
    going on past a trial taken over by another worker (``TrialTakenOver``; or Optuna's tell
    failing because the trial is no longer RUNNING: the takeover came after training ended).
    Such a trial is abandoned, not told (its stale failure and re-queued copy stand), and does
    not count towards ``n_trials``; ``go_on`` False: return then (the caller admits the next)."""
    asked: list[optuna.Trial] = []
    told: set[int] = set()

    def tracked(trial: optuna.Trial) -> Any:
        asked.append(trial)
        return objective(trial)

    def mark_told(study: optuna.Study, trial: FrozenTrial) -> None:
        told.add(trial._trial_id)

    deadline = time.monotonic() + timeout if timeout is not None else None
    while True:
        left = None if n_trials is None else n_trials - len(told)
        seconds = None if deadline is None else deadline - time.monotonic()
        if (left is not None and left <= 0) or (seconds is not None and seconds <= 0):
            return
        asked.clear()
        try:
            study.optimize(tracked, n_trials=left, timeout=seconds, catch=(Exception,),
                           callbacks=[mark_told, *callbacks])
            return
        except TrialTakenOver:
            trial = asked[-1]
        except Exception:
            trial = asked[-1] if asked and asked[-1]._trial_id not in told else None
            if trial is None or not _finished_by_another(study, trial):
                raise
        emit(TrialEvent("failed", trial.number, reason=TAKEN_OVER_REASON))
        if not go_on:
            return


def _finished_by_another(study: optuna.Study, trial: optuna.Trial) -> bool:
    """This worker never told ``trial``: is it finished all the same? (An error reading it says no.)"""
    try:
        return study._storage.get_trial(trial._trial_id).state.is_finished()
    except Exception:  # noqa: BLE001 - the caller raises its own error instead
        return False


def run_worker(spec: StudySpec, storage: optuna.storages.BaseStorage, *, name: str | None = None,
               n_trials: int | None = None, timeout: float | None = None,
               display: WorkerDisplay | None = None) -> optuna.Study:
    prepare(spec)
    study, _ = build_study(spec, storage, name=name)
    run_trials(study, as_recorded(spec, study), storage, n_trials=n_trials, timeout=timeout, display=display)
    return study

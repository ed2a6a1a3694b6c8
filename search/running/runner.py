"""The one way a trial is trained: by the worker, a torchrun rank, ``search confirm`` and ``search run``.

``TrialRunner.run`` takes the complete parameters and a reporter and returns the objective's
result. Whoever calls it gets the same behaviour:

- in this process, or on G processes under torchrun (``search/cluster/torchrun.py``) when the
  trial asks for several GPUs; the ranks train through this same runner (``attempt``);
- the checkpoint folder of a resumable objective (``checkpoint_dir``: a re-run of a dead worker's
  trial gets its predecessor's);
- out of memory: once more at half the micro-batch, same effective batch (``search/running/oom.py``);
- every epoch's value, the start and the end as ``TrialEvent``s to the caller's sink (display,
  ``search launch``, the console of ``search run``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from objectives import Objective, Reporter
from objectives.attributes import TrialSystemAttr
from objectives._data import checkpoint_root
from search.running.events import Sink, TrialEvent
from search.running.oom import SkipReported, train_retrying_oom


class EmittingReporter(Reporter):
    """Passes everything to ``inner`` and tells ``emit`` of every epoch; remembers the steps reported."""

    def __init__(self, inner: Reporter, emit: Sink | None, trial: int | None) -> None:
        self.inner, self.emit, self.trial = inner, emit, trial
        self.checkpoint_dir = inner.checkpoint_dir
        self.keep_checkpoint, self.resume_any_config = inner.keep_checkpoint, inner.resume_any_config
        self.steps: set[int] = set()

    def report(self, value: float, step: int) -> None:
        self.inner.report(value, step)
        self.steps.add(step)
        if self.emit:
            self.emit(TrialEvent("epoch", self.trial, step=step, value=value))

    def should_prune(self) -> bool:
        return self.inner.should_prune()

    def set_user_attr(self, key: str, value: Any) -> None:
        self.inner.set_user_attr(key, value)

    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        self.inner.on_step(epoch, step, steps_per_epoch)


def trial_checkpoint_dir(trial: optuna.Trial) -> Path:
    """Where a trial keeps its checkpoint: a re-run of a dead worker's trial (it names the first
    one) gets the same folder, and continues from it."""
    system_attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
    first = system_attrs.get(TrialSystemAttr.FAILED_TRIAL, trial.number)
    return checkpoint_root() / trial.study.study_name / f"trial-{first}"


@dataclass
class TrialRunner:
    objective: Objective
    nproc: int = 1  # > 1: data-parallel under torchrun, one process per GPU
    storage_url: str | None = None  # where rank 0 opens the trial (nproc > 1 with a trial)
    emit: Sink | None = None

    def run(self, params: dict[str, Any], reporter: Reporter, *, trial: optuna.Trial | None = None,
            pruner: dict[str, Any] | None = None, on_test: bool = False) -> dict[str, Any]:
        """Train once with ``params`` (complete), reporting to ``reporter``; the result.

        ``trial``: the Optuna trial the run belongs to, if any (its stored steps are not reported
        again by an out-of-memory retry; the ranks of a multi-GPU run report into it, pruned by
        ``pruner``, the study's pruner as a spec component). Raises ``optuna.TrialPruned``.
        """
        number = trial.number if trial is not None else None
        emitting = EmittingReporter(reporter, self.emit, number)

        def attempt(attempt_params: dict[str, Any], skip_steps: set[int]) -> dict[str, Any]:
            if self.nproc > 1:
                from search.cluster.torchrun import train_distributed

                return train_distributed(self.objective, attempt_params, nproc=self.nproc, trial=trial,
                                         pruner=pruner, storage_url=self.storage_url, emit=self.emit,
                                         reporter=emitting, skip_steps=skip_steps, on_test=on_test)
            return self.attempt(attempt_params, emitting, skip_steps=skip_steps, on_test=on_test)

        def reported_steps() -> set[int]:
            if trial is None:
                return set(emitting.steps)
            return set(trial.study._storage.get_trial(trial._trial_id).intermediate_values) | emitting.steps

        return train_retrying_oom(attempt, params, emitting, reported_steps)

    def attempt(self, params: dict[str, Any], reporter: Reporter, *, skip_steps: set[int] = frozenset(),
                on_test: bool = False) -> dict[str, Any]:
        """One training in this process (a rank's share of it under torchrun); no retry."""
        return self.objective.train(params, SkipReported(reporter, skip_steps) if skip_steps else reporter,
                                    on_test=on_test)


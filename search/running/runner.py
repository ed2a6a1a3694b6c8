"""The one way a trial is trained: by the worker, a torchrun rank, ``search confirm`` and ``search run``.

``TrialRunner.run`` takes the complete parameters and a reporter and returns the objective's
result. Whoever calls it gets the same behaviour:

- in this process, or on G processes under torchrun (``search/cluster/torchrun.py``) when the
  trial asks for several GPUs; each rank trains as one process does (``train_once``);
- the checkpoint folder of a resumable objective (``checkpoint_dir``: a re-run of a dead worker's
  trial gets its predecessor's);
- out of memory: once more at half the micro-batch, same effective batch (``search/running/oom.py``);
- every epoch's value as a ``TrialEvent`` to the caller's sink (the worker's display and
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
from search.cluster.torchrun import train_distributed
from search.running.events import Sink
from search.running.oom import train_retrying_oom
from search.running.reporting import EmittingReporter, train_once
from search.spec import name_as_path


def trial_checkpoint_dir(trial: optuna.Trial) -> Path:
    """Where a trial keeps its checkpoint: a re-run of a dead worker's trial (it names the first
    one) gets the same folder, and continues from it. The study's name comes from the storage,
    where another tool may have put any string: it is a folder only through ``name_as_path``,
    always inside the checkpoint root."""
    system_attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
    first = int(system_attrs.get(TrialSystemAttr.FAILED_TRIAL, trial.number))
    return checkpoint_root() / name_as_path(trial.study.study_name) / f"trial-{first}"


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
                return train_distributed(self.objective, attempt_params, nproc=self.nproc, trial=trial,
                                         pruner=pruner, storage_url=self.storage_url, emit=self.emit,
                                         reporter=emitting, skip_steps=skip_steps, on_test=on_test)
            return train_once(self.objective, attempt_params, emitting, skip_steps=skip_steps, on_test=on_test)

        def reported_steps() -> set[int]:
            if trial is None:
                return set(emitting.steps)
            return set(trial.study._storage.get_trial(trial._trial_id).intermediate_values) | emitting.steps

        return train_retrying_oom(attempt, params, emitting, reported_steps)

"""A study-wide trial budget: N finished trials in the study, whichever workers run them.

Optuna's ``n_trials`` counts per worker. ``search worker --n-trials N --budget study`` (and
``search launch --n-trials N``) means N for the whole study:

- finished trials (COMPLETE and PRUNED) count; FAIL does not (a failed trial is re-queued or
  was a broken configuration); WAITING trials are the queue, not yet counted;
- a RUNNING trial holds a slot: a worker starts a trial only while finished + running < N;
- a worker stops when finished >= N. While finished < N but every remaining slot is held by a
  running trial, it waits instead of stopping (a running trial may still die: its re-run must
  find a worker) and checks for dead workers' trials (``fail_stale_trials``) as it waits. So no
  worker spins and the study ends with exactly N finished trials even when a worker is killed.

Admission is atomic: the count and the start of the trial (``study.ask``, which makes it
RUNNING) happen under one per-study lock (``storage.study_lock``), so two workers never take
the last slot together. Workers started without ``--budget study`` do not take the lock; their
trials are counted but cannot be held back.
"""

from __future__ import annotations

import contextlib
import time
import warnings

import optuna
from optuna.trial import TrialState


class StudyBudget:
    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, total: int, *,
                 poll_seconds: float | None = None) -> None:
        self.study, self.storage, self.total = study, storage, total
        # A waiting worker checks once a second (one small query), or every heartbeat if faster.
        interval = getattr(storage, "get_heartbeat_interval", lambda: None)() or 1
        self.poll_seconds = poll_seconds if poll_seconds is not None else min(float(interval), 1.0)
        self._held = contextlib.ExitStack()

    def counts(self) -> tuple[int, int]:
        """(finished, running) trials of the study now."""
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        return len(trials) - running, running

    def admit(self, *, deadline: float | None = None) -> bool:
        """Wait for a free slot: True with the budget lock held (call ``release`` once the trial
        is asked), False when the budget is spent or ``deadline`` (time.monotonic) passed."""
        while deadline is None or time.monotonic() < deadline:
            self._held.enter_context(self.storage.study_lock(f"{self.study.study_name}:budget"))
            finished, running = self.counts()
            if finished >= self.total:
                self.release()
                return False
            if finished + running < self.total:
                return True
            self.release()
            with warnings.catch_warnings():  # experimental in Optuna; it is what we want
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            time.sleep(self.poll_seconds)
        return False

    def release(self) -> None:
        self._held.close()

    def spent(self) -> bool:
        return self.counts()[0] >= self.total

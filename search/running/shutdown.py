"""Stopping a worker cleanly: Ctrl-C or SIGTERM never leaves a trial RUNNING.

A running trial is interrupted, ends FAILED with the reason, and is re-queued at once with the
same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``, as for a dead worker's trial,
so the re-run carries ``failed_trial`` and shares its checkpoint folder): nobody waits out the
heartbeat's grace period. Between trials the worker finishes what it is doing (a note being
written) and starts no new trial. A second signal while stopping is ignored, so the clean-up
itself is not cut short; SIGKILL still works, and then the heartbeat re-queues the trial.
A worker of ``search launch`` also stops cleanly when the launcher dies, SIGKILL included.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

LAUNCHER_ENV = "SEARCH_LAUNCHER_PID"  # set by `search launch` for its workers: the launcher's pid
STOPPED_REASON = "stopped: the worker was stopped (Ctrl-C or SIGTERM); re-queued with the same parameters"


class Shutdown:
    def __init__(self) -> None:
        self.requested = False
        self.study: optuna.Study | None = None
        self.trial_id: int | None = None  # the trial running in this process, if any
        self.interrupted: int | None = None  # the trial a stop interrupted, to re-queue

    def install(self) -> Shutdown:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested:
            return
        self.requested = True
        if self.trial_id is not None or self.study is None:
            raise KeyboardInterrupt
        try:
            self.study.stop()  # between trials, inside optimize: start no new one
        except RuntimeError:  # not inside optimize (preparing, waiting for a budget slot)
            raise KeyboardInterrupt from None

    def stop_with_parent(self, parent_pid: int) -> None:
        """Stop cleanly when the process that started this one dies, even by SIGKILL (``search
        launch``'s workers): Linux sends SIGHUP then (``PR_SET_PDEATHSIG``), and the handler
        points stdout and stderr, the dead parent's pipes, at /dev/null before stopping as for
        SIGTERM. Elsewhere nothing happens: the heartbeat re-queues the trial later."""
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):  # not Linux
            return
        signal.signal(signal.SIGHUP, self._on_parent_death)
        prctl(1, signal.SIGHUP)  # PR_SET_PDEATHSIG
        if os.getppid() != parent_pid:  # it died before the line above
            self._on_parent_death(signal.SIGHUP, None)

    def _on_parent_death(self, signum: int, frame: Any) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            os.dup2(devnull, stream.fileno())
        self._on_signal(signum, frame)

    def check(self) -> None:
        """At the start of a trial: a stop that came while it was being asked ends it now."""
        if self.requested:
            raise KeyboardInterrupt


def requeue(study: optuna.Study, trial_id: int) -> None:
    """Fail (if it is still RUNNING) and re-queue a trial that this worker's stop interrupted."""
    storage = study._storage
    trial = storage.get_trial(trial_id)
    if trial.state == TrialState.RUNNING:  # interrupted before Optuna could record the failure
        storage.set_trial_user_attr(trial_id, "end_reason", STOPPED_REASON)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        trial = storage.get_trial(trial_id)
    if trial.state == TrialState.FAIL:
        callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
        (callback or RetryHeartbeatStaleTrialCallback(max_retry=3))(study, trial)

"""The embedded store: Optuna's journal file, with a heartbeat.

Optuna implements its heartbeat for RDB storages only. The journal store gets the same
contract here (``BaseHeartbeat``): a running trial's heartbeat is a timestamp in its system
attributes, and a trial is stale when that timestamp is older than the grace period. Optuna's
own ``study.optimize`` then runs the heartbeat thread and ``fail_stale_trials`` as it does for
PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_ATTR = "search:heartbeat"


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    def __init__(
        self,
        path: str,
        *,
        heartbeat_interval: int,
        grace_period: int,
        heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None,
    ) -> None:
        super().__init__(JournalFileBackend(path))
        self.path = path
        self._heartbeat_interval = heartbeat_interval
        self._grace_period = grace_period
        self._stale_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # the trial ended between two beats

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        deadline = time.time() - self._grace_period
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # A retry inherits the stale trial's system attrs, its last beat included: a trial
            # that started after the deadline is alive whatever beat it carries.
            beats = [trial.system_attrs.get(HEARTBEAT_ATTR)]
            if trial.datetime_start is not None:
                beats.append(trial.datetime_start.timestamp())
            beat = max((b for b in beats if b is not None), default=None)
            if beat is not None and beat < deadline:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_callback

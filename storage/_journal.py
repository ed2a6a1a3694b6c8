"""The embedded store: Optuna's journal file, with a heartbeat.

Optuna implements its heartbeat for RDB storages only. The journal store gets the same
contract here (``BaseHeartbeat``): a running trial's heartbeat is a timestamp in its system
attributes, and a trial is stale when that timestamp is older than the grace period. Optuna's
own ``study.optimize`` then runs the heartbeat thread and ``fail_stale_trials`` as it does for
PostgreSQL.

It also holds the study lock for stores that live in one machine's files (this journal, and a
SQLite database): an exclusive flock on a file beside the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import time
from collections.abc import Callable, Iterator

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_ATTR = "search:heartbeat"


def lock_key(study_name: str) -> int:
    """The study lock's 64-bit key: a PostgreSQL advisory lock id, and (its low 32 bits) the
    name of the lock file beside a file store."""
    return int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def file_lock(store_path: str, study_name: str, *, wait: bool) -> Iterator[bool]:
    """An exclusive flock on ``<store_path>.<key>.lock``: excludes every process on this machine
    that opened the same store. Yields whether it is held (False only with ``wait=False``)."""
    with open(f"{store_path}.{lock_key(study_name) & 0xFFFFFFFF:08x}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        try:
            yield held
        finally:
            if held:
                fcntl.flock(handle, fcntl.LOCK_UN)


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

    @property
    def url(self) -> str:
        """What ``open_storage`` opens this store with again (another process: a torchrun rank)."""
        return self.path

    def study_lock(self, study_name: str, *, wait: bool = True) -> contextlib.AbstractContextManager[bool]:
        """The study's lock, for a read-modify-write of its attributes across processes: yields
        True when held; with ``wait=False`` yields False at once while another process holds it."""
        return file_lock(self.path, study_name, wait=wait)

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

"""The embedded store: Optuna's journal file, with a heartbeat.

Optuna implements its heartbeat for RDB storages only. The journal store gets the same
contract here (``BaseHeartbeat``): a running trial's heartbeat is a timestamp in its system
attributes, and the rule for a stale trial is the RDB storage's: a RUNNING trial whose last beat
is older than the grace period; one that has not beaten yet is never stale. Optuna's own
``study.optimize`` then runs the heartbeat thread and ``fail_stale_trials`` as it does for
PostgreSQL. The file itself is ``storage/_journal_file.py``'s: appends never continue a line cut
short, and a damaged line is reported as such.

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
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from storage._errors import StorageError
from storage._journal_file import JournalFile

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


def last_heartbeat(trial: FrozenTrial) -> float | None:
    """The trial's last beat (a Unix time); None before its first. A retry carries the stale
    trial's last beat (``RetryHeartbeatStaleTrialCallback`` copies every system attribute; the RDB
    storage keeps beats apart, in a table of their own): a beat from before the trial started is
    not its own."""
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if beat is None or (trial.datetime_start is not None and beat < trial.datetime_start.timestamp()):
        return None
    return beat


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    def __init__(
        self,
        path: str,
        *,
        heartbeat_interval: int,
        grace_period: int,
        heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None,
    ) -> None:
        # As RDBStorage asks of its own (``storage._open`` says so to a user in one line first).
        if heartbeat_interval <= 0 or grace_period <= 0:
            raise ValueError("the heartbeat interval and the grace period should be positive integers")
        super().__init__(JournalFile(path))
        self.path = path
        # RDBStorage's attribute names: both stores' settings read the same way.
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
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
        except StorageError:
            pass  # a damaged or replaced journal: the trial's own next call says so, in one line

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # RDBStorage's rule: stale when the last beat is older than the grace period; never before the first beat.
        deadline = time.time() - self.grace_period
        return [trial._trial_id
                for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if (beat := last_heartbeat(trial)) is not None and beat < deadline]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_callback

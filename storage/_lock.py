"""A lock per study, across processes and machines, for read-modify-write of study attributes.

optuna-dashboard stores a note or a plot as several study system attributes (chunks of 2 KB);
two workers rewriting one at the same time could interleave their chunks. Writers take this
lock, re-read the study, render and write. PostgreSQL: a session advisory lock keyed by the
study name. Journal file: an exclusive flock on a file beside the journal.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator

import optuna
import sqlalchemy
from optuna.storages import RDBStorage

from storage._journal import HeartbeatJournalStorage
from storage._reconnect import connection_lost


def _key(study_name: str) -> int:
    return int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def study_lock(storage: optuna.storages.BaseStorage, study_name: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold the study's lock; ``storage`` is what ``open_storage`` returned.

    Yields True. With ``wait=False`` it does not wait for another holder: it yields False at
    once when the lock is taken (and then holds nothing).
    """
    if isinstance(storage, RDBStorage) and storage.engine.dialect.name == "postgresql":
        with storage.engine.connect() as conn:
            if wait:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _key(study_name)})
                held = True
            else:
                held = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": _key(study_name)}).scalar()
            try:
                yield held
            finally:
                try:
                    if held:
                        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _key(study_name)})
                except sqlalchemy.exc.DBAPIError as e:
                    if not connection_lost(e):
                        raise  # a lost connection took its session, and the lock, with it
    elif isinstance(storage, HeartbeatJournalStorage):
        with open(f"{storage.path}.{_key(study_name) & 0xFFFFFFFF:08x}.lock", "a") as handle:
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
    else:
        yield True  # in-memory or SQLite: one process, or the database serializes writes

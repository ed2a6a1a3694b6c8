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
def study_lock(storage: optuna.storages.BaseStorage, study_name: str) -> Iterator[None]:
    """Hold the study's lock; ``storage`` is what ``open_storage`` returned."""
    if isinstance(storage, RDBStorage) and storage.engine.dialect.name == "postgresql":
        with storage.engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _key(study_name)})
            try:
                yield
            finally:
                try:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _key(study_name)})
                except sqlalchemy.exc.DBAPIError as e:
                    if not connection_lost(e):
                        raise  # a lost connection took its session, and the lock, with it
    elif isinstance(storage, HeartbeatJournalStorage):
        with open(f"{storage.path}.{_key(study_name) & 0xFFFFFFFF:08x}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        yield  # in-memory or SQLite: one process, or the database serializes writes

"""The database store (PostgreSQL, or SQLite on one machine): Optuna's RDB storage that survives
a dropped connection and holds a per-study lock.

``pool_pre_ping`` replaces a pooled connection that died while idle. A connection that dies
while a call is using it (the server restarts, ``pg_terminate_backend``, a network blip) makes
that one call fail; in a worker that call is a trial's ``report``, its heartbeat or its final
``tell``, and one failed call would fail the trial or, in the heartbeat thread, silently stop
the heartbeat until the trial is declared dead. Here every storage call that fails because the
connection was lost is retried on a fresh connection (three times, 0.5, 1 and 2 s apart).

A write whose commit reached the server just before the connection broke is retried too:
intermediate values and attributes are simply written again; a state change that already
happened is recognised (the trial is in the state asked for) and reported as done.

The study lock (``study_lock``) exists for read-modify-writes of study attributes:
optuna-dashboard stores a note or a plot as several study system attributes (chunks of 2 KB),
and two workers rewriting one at the same time could interleave their chunks; the study budget
counts and starts a trial as one step. Only dialects with a lock that excludes every worker are
supported: PostgreSQL (a session advisory lock, across machines) and SQLite (an flock beside the
database file, across the processes of its one machine).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage

from storage._journal import file_lock, lock_key

DELAYS = (0.5, 1.0, 2.0)
LOCKING_DIALECTS = ("postgresql", "sqlite")


def connection_lost(error: BaseException) -> bool:
    """Does ``error`` (or what caused it) say the database connection went away?"""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _attempts() -> Any:
    """Yield before each attempt; the caller retries only while attempts remain."""
    yield False
    for delay in DELAYS:
        time.sleep(delay)
        yield True


def _retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: RDBStorage, *args: Any, **kwargs: Any) -> Any:
        for n, _ in enumerate(_attempts()):
            try:
                return method(self, *args, **kwargs)
            except Exception as e:  # noqa: BLE001 - only a lost connection is retried
                if n == len(DELAYS) or not connection_lost(e):
                    raise
        raise AssertionError("unreachable")

    return call


class ReconnectingRDBStorage(RDBStorage):
    """``RDBStorage`` whose calls are retried on a fresh connection when theirs was lost, with a
    per-study lock. The URL's dialect is one of ``LOCKING_DIALECTS``; a SQLite URL names a file
    by its absolute path (``storage.open_storage`` checks both)."""

    @contextlib.contextmanager
    def study_lock(self, study_name: str, *, wait: bool = True) -> Iterator[bool]:
        """The study's lock, for a read-modify-write of its attributes across processes: yields
        True when held; with ``wait=False`` yields False at once while another process holds it."""
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            with file_lock(os.path.abspath(self.engine.url.database), study_name, wait=wait) as held:
                yield held
            return
        if dialect != "postgresql":
            raise NotImplementedError(f"no study lock on {dialect}: supported are {', '.join(LOCKING_DIALECTS)}")
        key = {"k": lock_key(study_name)}
        with self.engine.connect() as conn:
            if wait:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), key)
                held = True
            else:
                held = bool(conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), key).scalar())
            try:
                yield held
            finally:
                try:
                    if held:
                        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), key)
                except sqlalchemy.exc.DBAPIError as e:
                    if not connection_lost(e):
                        raise  # a lost connection took its session, and the lock, with it

    def set_trial_state_values(self, trial_id: int, state: optuna.trial.TrialState, values: Any = None) -> bool:
        for n, retried in enumerate(_attempts()):
            try:
                return super().set_trial_state_values(trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # The attempt before had gone through: the trial already is where we put it.
                if retried and self.get_trial(trial_id).state == state:
                    return True
                raise
            except Exception as e:  # noqa: BLE001
                if n == len(DELAYS) or not connection_lost(e):
                    raise
        raise AssertionError("unreachable")


# Every other public storage call and the two heartbeat calls go through the retry.
_NOT_RETRIED = {"remove_session", "set_trial_state_values"}
for _name in [n for n in dir(BaseStorage) if not n.startswith("_")] + ["record_heartbeat", "_get_stale_trial_ids"]:
    if _name not in _NOT_RETRIED and callable(getattr(RDBStorage, _name, None)):
        setattr(ReconnectingRDBStorage, _name, _retrying(getattr(RDBStorage, _name)))
del _name

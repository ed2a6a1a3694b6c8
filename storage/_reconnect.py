"""PostgreSQL storage that survives a dropped connection.

``pool_pre_ping`` replaces a pooled connection that died while idle. A connection that dies
while a call is using it (the server restarts, ``pg_terminate_backend``, a network blip) makes
that one call fail; in a worker that call is a trial's ``report``, its heartbeat or its final
``tell``, and one failed call would fail the trial or, in the heartbeat thread, silently stop
the heartbeat until the trial is declared dead. Here every storage call that fails because the
connection was lost is retried on a fresh connection (three times, 0.5, 1 and 2 s apart).

A write whose commit reached the server just before the connection broke is retried too:
intermediate values and attributes are simply written again; a state change that already
happened is recognised (the trial is in the state asked for) and reported as done.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage

DELAYS = (0.5, 1.0, 2.0)


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
    """``RDBStorage`` whose calls are retried on a fresh connection when theirs was lost."""

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

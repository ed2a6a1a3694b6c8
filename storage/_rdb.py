"""The database store (PostgreSQL, or SQLite on one machine): Optuna's RDB storage that rides out
a database outage of minutes and holds a per-study lock.

A lost connection (the server restarts or fails over, ``pg_terminate_backend``, the database
refuses connections, a network cut): every storage call retries on a fresh connection, waiting
0.5, 1, 2, 4, ... 30, 30 s between attempts, until the connection is back or the call has waited
``retry_seconds`` (``SEARCH_DB_RETRY_SECONDS``, read by ``storage.open_storage``; default 300).
A call that gives up raises the error it got, and so does every later call at its first failure
until a call succeeds again: a worker does not wait out the deadline once per call. One line on
stderr says when the connection was lost, one when it is back (or given up on); the URL is shown
as ``storage.mask_url`` shows it.

A write is retried only when it did not happen. On PostgreSQL the transaction id of every
write is taken just before its COMMIT is sent; when the connection breaks after that, the
outcome is unknown to the client (the server may have committed and lost only its reply), and
the retry asks the server (``txid_status``, PostgreSQL's way of answering exactly this) on a
fresh connection: committed, the call is done (a new trial returns the trial that was
committed, a new study its id, a state change True); aborted, it is repeated. So a new trial or
study is never made twice, and a WAITING trial claimed just before the connection broke is not
lost as "taken by another worker". On SQLite a commit that raises did not happen (one local
file), and the call is repeated.

The heartbeat never stops: a beat that cannot be written is retried for at most one heartbeat
interval and then skipped without raising (Optuna's heartbeat thread dies on an exception, and
the trial would train on, unbeaten, until declared dead). When the connection comes back, the
beats missed are written at once, by whichever call of this process reconnects first; if the
outage lasted so long that another worker has failed the trial as stale meanwhile, the next beat
finds it finished and ``taken_over(trial_id)`` says so (the worker then abandons its copy).
A process that lost its connection judges no trial stale (``_get_stale_trial_ids``) until one
grace period after it got it back: every live worker's heartbeat had stopped too, and needs
that long to beat again.

The study lock (``study_lock``) exists for read-modify-writes of study attributes:
optuna-dashboard stores a note or a plot as several study system attributes (chunks of 2 KB),
and two workers rewriting one at the same time could interleave their chunks; the study budget
counts and starts a trial as one step. Only dialects with a lock that excludes every worker are
supported: PostgreSQL (a session advisory lock, across machines) and SQLite (an flock beside the
database file, across the processes of its one machine).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._base import DEFAULT_STUDY_NAME_PREFIX
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from storage._journal import file_lock, lock_key

DEFAULT_RETRY_SECONDS = 300.0
FIRST_DELAY, LONGEST_DELAY = 0.5, 30.0
LOCKING_DIALECTS = ("postgresql", "sqlite")
_WRITES = ("INSERT", "UPDATE", "DELETE")


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


def rolled_back(error: BaseException) -> bool:
    """Did the server roll the transaction back on purpose (a deadlock, a serialization failure:
    SQLSTATE class 40), the connection alive?"""
    seen: BaseException | None = error
    while seen is not None:
        if str(getattr(getattr(seen, "orig", None), "pgcode", None) or "").startswith("40"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def backoff() -> Iterator[float]:
    """The waits between attempts: 0.5, 1, 2, ... doubling up to 30 s, then 30 s."""
    delay = FIRST_DELAY
    while True:
        yield delay
        delay = min(2 * delay, LONGEST_DELAY)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Connection:
    """Whether this process can reach the database, shared by its threads: when the connection
    was lost, when it came back, whether a call has given up on it."""

    def __init__(self, shown_url: str, retry_seconds: float) -> None:
        self.shown_url, self.retry_seconds = shown_url, retry_seconds
        self.lost_at: float | None = None  # time.monotonic(); None: connected
        self.back_at: float | None = None
        self.given_up = False
        self._lock = threading.Lock()

    def lost(self, error: BaseException, describe: Callable[[BaseException], str]) -> None:
        with self._lock:
            if self.lost_at is None:
                self.lost_at = time.monotonic()
                _say(f"storage {self.shown_url}: connection lost ({describe(error)}); "
                     f"retrying for up to {self.retry_seconds:g} s")

    def back(self) -> bool:
        """After a call succeeded: True if that ends an outage (said once)."""
        if self.lost_at is None:  # the common case, without the lock
            return False
        with self._lock:
            if self.lost_at is None:
                return False
            self.back_at = time.monotonic()
            _say(f"storage {self.shown_url}: connection back after {self.back_at - self.lost_at:.0f} s")
            self.lost_at, self.given_up = None, False
            return True

    def give_up(self) -> None:
        with self._lock:
            if not self.given_up:
                self.given_up = True
                _say(f"storage {self.shown_url}: still unreachable after {self.retry_seconds:g} s "
                     "(SEARCH_DB_RETRY_SECONDS); giving up")

    def back_within(self, seconds: float) -> bool:
        return self.back_at is not None and time.monotonic() - self.back_at < seconds


class ReconnectingRDBStorage(RDBStorage):
    """``RDBStorage`` that retries its calls across a lost connection without repeating a write
    that happened, keeps its heartbeat beating, and has a per-study lock. The URL's dialect is
    one of ``LOCKING_DIALECTS``; a SQLite URL names a file by its absolute path
    (``storage.open_storage`` checks both)."""

    def __init__(self, url: str, *, retry_seconds: float = DEFAULT_RETRY_SECONDS, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.retry_seconds = retry_seconds
        self._start()

    def _start(self) -> None:
        """What a process holds beside the engine (also after unpickling)."""
        self._connection = _Connection(self._shown_url(), self.retry_seconds)
        self._local = threading.local()  # per thread: nesting depth, the last write's transaction id, a new trial
        self._missed_beats: set[int] = set()
        self._taken_over: set[int] = set()
        if self.engine.dialect.name == "postgresql":
            sqlalchemy.event.listen(self.engine, "begin", _forget_write)
            sqlalchemy.event.listen(self.engine, "before_cursor_execute", _note_write)
            sqlalchemy.event.listen(self.engine, "commit", self._note_commit)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        for name in ("_connection", "_local", "_missed_beats", "_taken_over"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._start()

    def _shown_url(self) -> str:
        from storage._open import mask_url  # _open imports this module

        return mask_url(self.url)

    def _describe(self, error: BaseException) -> str:
        from storage._open import url_passwords

        seen: BaseException | None = error
        while seen is not None and not isinstance(seen, sqlalchemy.exc.DBAPIError):
            seen = seen.__cause__ or seen.__context__
        lines = str(getattr(seen, "orig", None) or error).strip().splitlines()
        text = f"{type(getattr(seen, 'orig', None) or error).__name__}: {lines[0] if lines else ''}".strip()
        for password in url_passwords(self.url):
            text = text.replace(password, "***")
        return text

    # --- retrying ---------------------------------------------------------------------------

    def _note_commit(self, conn: sqlalchemy.engine.Connection) -> None:
        """Before a COMMIT that follows a write is sent: the transaction's id, asked about if
        the connection breaks before the server's reply arrives."""
        if conn.info.pop("search:wrote", False):
            self._local.txid = conn.exec_driver_sql("SELECT txid_current()").scalar()

    def _retried(self, method: Callable[..., Any], args: tuple, kwargs: dict,
                 committed: Callable[..., Any] | None) -> Any:
        """``method(self, *args, **kwargs)``, retried while the connection is lost. A write
        whose commit may have reached the server is not repeated if it did: then the call
        returns ``committed(self, *args, **kwargs)`` (None if not given)."""
        local = self._local
        if getattr(local, "depth", 0):  # inside a retried call of this thread: that call retries
            return method(self, *args, **kwargs)
        deadline = time.monotonic() + self.retry_seconds
        delays = backoff()
        while True:
            local.depth, local.txid = 1, None
            try:
                result = method(self, *args, **kwargs)
            except Exception as e:
                if not connection_lost(e):
                    raise
                error, txid = e, local.txid
            else:
                self._back()
                return result
            finally:
                local.depth = 0
            if not rolled_back(error):  # a deadlock is no outage: the server rolled it back, the retry goes ahead
                self._connection.lost(error, self._describe)
            if txid is not None:
                if self._committed(txid, deadline, error):
                    self._back()
                    return committed(self, *args, **kwargs) if committed else None
            self._wait(next(delays), deadline, error)

    def _committed(self, txid: int, deadline: float, error: BaseException) -> bool:
        """Did the transaction ``txid`` commit? Asked on a fresh connection, as long as the
        outage allows; ``error`` (the call's) is raised when that cannot be told."""
        delays = backoff()
        while True:
            try:
                with self.engine.connect() as conn:
                    status = conn.execute(sqlalchemy.text("SELECT txid_status(:t)"), {"t": txid}).scalar()
            except Exception as e:
                if not connection_lost(e):
                    raise
                self._connection.lost(e, self._describe)
                self._wait(next(delays), deadline, error)
                continue
            if status in ("committed", "aborted"):
                return status == "committed"
            if status is None:  # too old to tell: never within minutes of the commit
                raise error
            # "in progress": the broken connection's server process has not yet noticed
            self._wait(next(delays), deadline, error)

    def _wait(self, delay: float, deadline: float, error: BaseException) -> None:
        """Sleep before the next attempt, or raise ``error`` when this call or an earlier one
        of the same outage has waited long enough."""
        left = deadline - time.monotonic()
        if self._connection.given_up or left <= 0:
            self._connection.give_up()
            raise error
        time.sleep(min(delay, left))

    def _back(self) -> None:
        """A call succeeded: if that ends an outage, write the heartbeats it made us miss now."""
        if not self._connection.back():
            return
        for trial_id in list(self._missed_beats):
            try:
                RDBStorage.record_heartbeat(self, trial_id)
            except Exception as e:  # noqa: BLE001 - lost again: the heartbeat thread goes on trying
                if not connection_lost(e):
                    raise
                self._connection.lost(e, self._describe)
                return

    # --- writes that must not happen twice ------------------------------------------------

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        # The name is chosen here, not inside the attempt: a repeat and the check of a commit
        # whose reply was lost both mean the same study.
        name = study_name or DEFAULT_STUDY_NAME_PREFIX + str(uuid.uuid4())
        return self._retried(RDBStorage.create_new_study, (directions, name), {},
                             lambda self, directions, name: self.get_study_id_from_name(name))

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Optuna's trial creation in one attempt: Optuna's own loop repeats the insert on any
        storage error, a commit whose reply was lost too (a second trial); here the retry
        repeats it only when it did not commit."""
        return self._retried(ReconnectingRDBStorage._insert_trial, (study_id, template_trial), {},
                             lambda self, *args: self._local.new_trial)

    def _insert_trial(self, study_id: int, template_trial: FrozenTrial | None) -> FrozenTrial:
        with _create_scoped_session(self.scoped_session) as session:
            # The lock makes the trial's number (a count of the study's trials) unique.
            models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
            row = self._get_prepared_new_trial(study_id, template_trial, session)
            if template_trial is not None:
                trial = copy.deepcopy(template_trial)
                trial.number, trial.datetime_start, trial._trial_id = row.number, row.datetime_start, row.trial_id
            else:
                trial = FrozenTrial(number=row.number, state=row.state, value=None, values=None,
                                    datetime_start=row.datetime_start, datetime_complete=None, params={},
                                    distributions={}, user_attrs={}, system_attrs={}, intermediate_values={},
                                    trial_id=row.trial_id)
            self._local.new_trial = trial  # known before the commit: what a committed attempt returns
        return trial

    # --- the heartbeat ----------------------------------------------------------------------

    def record_heartbeat(self, trial_id: int) -> None:
        """One beat, tried for at most one heartbeat interval; a lost connection is noted, never
        raised (it would end Optuna's heartbeat thread). The first beat after missed ones checks
        that the trial is still RUNNING (``taken_over``)."""
        give_up_at = time.monotonic() + (self.heartbeat_interval or 1)
        for delay in backoff():
            try:
                RDBStorage.record_heartbeat(self, trial_id)
                break
            except Exception as e:  # noqa: BLE001 - only a lost connection is held back
                if not connection_lost(e):
                    raise
                self._connection.lost(e, self._describe)
                self._missed_beats.add(trial_id)
                if time.monotonic() + delay > give_up_at:
                    return
                time.sleep(delay)
        self._back()
        if trial_id in self._missed_beats:
            self._missed_beats.discard(trial_id)
            if self.get_trial(trial_id).state.is_finished():  # another worker failed it as stale meanwhile
                self._taken_over.add(trial_id)

    def taken_over(self, trial_id: int) -> bool:
        """Did a heartbeat of this process find its RUNNING trial finished by another worker
        (failed as stale while this process could not reach the database)?"""
        return trial_id in self._taken_over

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = self._retried(RDBStorage._get_stale_trial_ids, (study_id,), {}, None)
        grace = self.grace_period or 2 * (self.heartbeat_interval or 1)
        if stale and self._connection.back_within(grace):
            return []  # every live worker's beat stopped with ours: give them a grace period to beat again
        return stale

    # --- the study lock ---------------------------------------------------------------------

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
        conn, held = self._retried(ReconnectingRDBStorage._lock_connection, (key, wait), {}, None)
        try:
            yield held
        finally:
            try:
                if held:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), key)
            except sqlalchemy.exc.DBAPIError as e:
                if not connection_lost(e):
                    raise  # a lost connection took its session, and the lock, with it
            finally:
                conn.close()

    def _lock_connection(self, key: dict[str, int], wait: bool) -> tuple[sqlalchemy.engine.Connection, bool]:
        """A connection holding the advisory lock ``key`` (a session lock: it goes with the
        connection), or not holding it when ``wait`` is False and another process holds it."""
        conn = self.engine.connect()
        try:
            if wait:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), key)
                return conn, True
            return conn, bool(conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), key).scalar())
        except BaseException:
            conn.close()
            raise


def _note_write(conn: sqlalchemy.engine.Connection, cursor: Any, statement: str, *args: Any) -> None:
    if statement.lstrip()[:6].upper() in _WRITES:
        conn.info["search:wrote"] = True


def _forget_write(conn: sqlalchemy.engine.Connection) -> None:
    """At BEGIN: the flag says whether this transaction wrote, whatever became of the last one."""
    if not conn.invalidated:
        conn.info.pop("search:wrote", None)


def _retrying(method: Callable[..., Any], committed: Callable[..., Any] | None = None) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: ReconnectingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retried(method, args, kwargs, committed)

    return call


# Every other call that reaches the database goes through the retry: the public storage API and
# the private methods Optuna's cached storage (what a Study wraps around this one) calls. Not
# here: remove_session (no database), create_new_trial (it calls _create_new_trial), and the
# methods defined above.
_OWN = {"remove_session", "create_new_trial", *vars(ReconnectingRDBStorage)}
_COMMITTED = {"set_trial_state_values": lambda self, *args, **kwargs: True}
for _name in [n for n in dir(BaseStorage) if not n.startswith("_")] + ["_set_trial_param", "_get_trials",
                                                                       "_get_best_trial_id"]:
    if _name not in _OWN and callable(getattr(RDBStorage, _name, None)):
        setattr(ReconnectingRDBStorage, _name, _retrying(getattr(RDBStorage, _name), _COMMITTED.get(_name)))
del _name

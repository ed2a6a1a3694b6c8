"""A database outage of many seconds, and a commit whose reply never arrived: nothing lost, nothing doubled.

The outages are real: the test's own PostgreSQL database refuses new connections
(``ALLOW_CONNECTIONS false``) and every connection to it is terminated, from an administrator's
connection to the ``postgres`` database, while real `search worker` processes train. A commit
whose reply is lost is made by a real TCP relay in front of PostgreSQL that passes a COMMIT on to
the server, waits for the server's answer (the commit has happened) and then drops the
connection instead of passing the answer back.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.pool import StaticPool

from helpers import Store, known, running_mid_trial, wait_for
from storage import StorageError, open_storage

pytestmark = [pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

# A trial goes stale after 3 s without a beat; a call waits at most 60 s for the database.
WORKER_ENV = {"SEARCH_HEARTBEAT_INTERVAL": "1", "SEARCH_GRACE_PERIOD": "3", "SEARCH_DB_RETRY_SECONDS": "60"}
PASSWORD = "outage-pw-3x7"  # in the workers' URL (trust auth ignores it): it must never be shown
THREE_EPOCHS = [known("a", 1e-3, 3)]
NO_PRUNING = {"type": "NopPruner"}


class OwnDatabase:
    """A PostgreSQL database of this test's own, and an administrator's connection (to the
    ``postgres`` database) that cuts every connection to it off and lets them in again."""

    def __init__(self, pg_url: str) -> None:
        base = sqlalchemy.engine.make_url(pg_url)
        self.name = f"outage_{uuid.uuid4().hex[:12]}"
        self.admin = sqlalchemy.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
        self.sql(f'CREATE DATABASE "{self.name}"')
        self.url = base.set(database=self.name).render_as_string(hide_password=False)
        self.worker_url = base.set(database=self.name, password=PASSWORD).render_as_string(hide_password=False)

    def sql(self, statement: str, **params) -> list:
        with self.admin.connect() as conn:
            result = conn.execute(sqlalchemy.text(statement), params)
            return result.all() if result.returns_rows else []

    def cut(self, *, spare: int = 0) -> None:
        """No connection from now on: new ones refused, open ones (but the backend ``spare``) ended."""
        self.sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
        self.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name AND pid <> :spare",
                 name=self.name, spare=spare)

    def restore(self) -> None:
        self.sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    def drop(self) -> None:
        self.restore()
        self.sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.dispose()


@pytest.fixture
def own_db(pg_url: str) -> Iterator[OwnDatabase]:
    db = OwnDatabase(pg_url)
    yield db
    db.drop()


def started(start_cli, spec, db: OwnDatabase, *args: str):
    return start_cli("worker", "--study", str(spec), "--storage", db.worker_url, *args, env=WORKER_ENV)


def finished(worker) -> tuple[str, str]:
    out, err = worker.communicate(timeout=240)
    assert worker.returncode == 0, f"exit {worker.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert PASSWORD not in out + err
    return out, err


def test_an_outage_of_15_s_across_a_report_loses_nothing_and_fails_nothing(own_db, write_spec, start_cli):
    """A worker mid-trial and one waiting for a slot of the study's budget (checking for stale
    trials every second): the trial reports into the outage and completes once; the waiting
    worker, whose connection was lost too, does not fail the live trial as stale when the
    database is back, though its last beat is 15 s old."""
    store = Store("postgresql", own_db.url)
    name = store.name("outage")
    spec = write_spec(name, known=THREE_EPOCHS, pruner=NO_PRUNING)
    workers = [started(start_cli, spec, own_db, "--n-trials", "1", "--budget", "study") for _ in range(2)]
    wait_for(lambda: running_mid_trial(store, name), what="the trial's first epoch", alive=tuple(workers))
    store.optuna.engine.dispose()
    own_db.cut()
    time.sleep(15)
    own_db.restore()

    outputs = [finished(w) for w in workers]
    (trial,) = store.trials(name)
    assert trial.state.name == "COMPLETE" and trial.user_attrs["end_reason"] == "completed"
    assert sorted(trial.intermediate_values) == [1, 2, 3], "every epoch's report kept"
    for _, err in outputs:
        assert "connection lost" in err
        assert int(re.search(r"connection back after (\d+) s", err).group(1)) >= 10, err
    store.optuna.engine.dispose()


def test_a_trial_failed_as_stale_during_an_outage_is_abandoned_and_its_copy_runs_once(own_db, write_spec, start_cli):
    """Another worker, whose connection survived the cut, finds the trial silent for longer than
    the grace period and fails it (re-queueing a copy). When the database is back, the first
    worker learns it lost the trial: it stops training it without telling it, runs the copy,
    and ends normally."""
    store = Store("postgresql", own_db.url)
    name = store.name("takeover")
    # The other worker: plain Optuna on one connection, which the cut spares.
    other = RDBStorage(own_db.url, engine_kwargs={"poolclass": StaticPool}, heartbeat_interval=1, grace_period=3,
                       heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    with other.engine.connect() as conn:
        spared = conn.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()
    spec = write_spec(name, known=THREE_EPOCHS, pruner=NO_PRUNING)
    worker = started(start_cli, spec, own_db, "--n-trials", "1")
    first = wait_for(lambda: running_mid_trial(store, name), what="the trial's first epoch", alive=(worker,))
    store.optuna.engine.dispose()
    own_db.cut(spare=spared)
    study = optuna.load_study(study_name=name, storage=other)
    time.sleep(3 + 2)
    optuna.storages.fail_stale_trials(study)
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "WAITING"], "failed as stale, and re-queued"
    own_db.restore()

    out, err = finished(worker)
    failed, copy = store.trials(name)
    assert failed.number == first.number and failed.state.name == "FAIL"
    assert "end_reason" not in failed.user_attrs, "the first worker told nothing after losing it"
    assert copy.state.name == "COMPLETE" and copy.system_attrs["failed_trial"] == first.number
    assert copy.params == first.params and sorted(copy.intermediate_values) == [1, 2, 3]
    assert copy.system_attrs["search:worker"] == failed.system_attrs["search:worker"], "the same worker ran the copy"
    assert f"trial {first.number} failed taken over" in re.sub(r"\s+", " ", out), out
    assert "Cannot tell" not in out + err and "Traceback" not in err
    store.optuna.engine.dispose()
    other.engine.dispose()


def test_a_worker_back_from_an_outage_judges_no_trial_stale_for_a_grace_period(own_db, monkeypatch):
    """Every live worker's heartbeat stopped with the outage: one that reconnects first must not
    fail the others' trials before they could beat again."""
    monkeypatch.setenv("SEARCH_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SEARCH_GRACE_PERIOD", "3")
    judge = open_storage(own_db.url)
    study = optuna.create_study(study_name="judged", storage=judge)
    trial = study.ask()
    judge.record_heartbeat(trial._trial_id)  # its last beat before the outage
    own_db.cut()
    threading.Timer(3.2, own_db.restore).start()
    optuna.storages.fail_stale_trials(study)  # waits for the database, back after 3.2 s
    assert study.trials[0].state.name == "RUNNING", "silent past the grace period, but the judge was cut off too"
    time.sleep(3)
    optuna.storages.fail_stale_trials(study)
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"], "a grace period later it is judged"
    judge.engine.dispose()


@pytest.mark.parametrize("value", ["soon", "-1", "inf"])
def test_a_wait_that_is_not_seconds_is_refused_in_one_line(pg_url, monkeypatch, value):
    monkeypatch.setenv("SEARCH_DB_RETRY_SECONDS", value)
    with pytest.raises(StorageError) as error:
        open_storage(pg_url)
    assert str(error.value).startswith(f"SEARCH_DB_RETRY_SECONDS={value}: expected ") and "\n" not in str(error.value)


# --- a commit whose reply never arrives -------------------------------------------------------


class CommitReplyDropper:
    """A TCP relay to PostgreSQL. Once armed with a statement's start, it ends the connection
    that sends the COMMIT of a transaction holding such a statement, right after the server has
    answered that COMMIT (so the commit happened) and before the answer reaches the client."""

    def __init__(self, pg_url: str) -> None:
        self.upstream = sqlalchemy.engine.make_url(pg_url)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.armed: str | None = None
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        # Plain text on the wire (no TLS, no GSS encryption): the relay reads the statements.
        return self.upstream.set(host="127.0.0.1", port=self.listener.getsockname()[1],
                                 query={"sslmode": "disable", "gssencmode": "disable"}).render_as_string(
                                     hide_password=False)

    def arm(self, statement_start: str) -> None:
        self.armed = statement_start

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection((self.upstream.host or "127.0.0.1", self.upstream.port or 5432))
            dropping = threading.Event()
            threading.Thread(target=self._to_client, args=(server, client, dropping), daemon=True).start()
            threading.Thread(target=self._to_server, args=(client, server, dropping), daemon=True).start()

    def _to_client(self, server: socket.socket, client: socket.socket, dropping: threading.Event) -> None:
        while data := _recv(server):
            if dropping.is_set():  # the server's answer to the COMMIT: the commit is done
                self.dropped += 1
                break
            client.sendall(data)
        for end in (client, server):
            _close(end)

    def _to_server(self, client: socket.socket, server: socket.socket, dropping: threading.Event) -> None:
        read = _Reader(client).read
        in_armed_transaction = False
        length = read(4)  # the startup message has no type byte
        rest = read(struct.unpack("!I", length)[0] - 4) if length else None
        message = length + rest if length and rest is not None else None
        while message is not None:
            server.sendall(message)
            header = read(5)
            body = read(struct.unpack("!I", header[1:])[0] - 4) if header else None
            if header is None or body is None:
                break
            if header[:1] == b"Q":  # psycopg2 sends every statement as a simple query
                sql = body.rstrip(b"\0").decode(errors="replace").strip()
                if self.armed and sql.startswith(self.armed):
                    in_armed_transaction = True
                elif sql.upper() in ("COMMIT", "ROLLBACK"):
                    if in_armed_transaction and sql.upper() == "COMMIT":
                        self.armed = None
                        dropping.set()
                    in_armed_transaction = False
            message = header + body
        _close(server)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def read(self, n: int) -> bytes | None:
        """The next ``n`` bytes from the socket; None when it ends first."""
        while len(self.buffer) < n:
            chunk = _recv(self.sock)
            if not chunk:
                return None
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture
def dropper(pg_store) -> Iterator[tuple[CommitReplyDropper, Store]]:
    yield CommitReplyDropper(pg_store.url), pg_store


def test_a_new_trial_whose_commit_reply_was_lost_is_made_once(dropper):
    relay, store = dropper
    study = optuna.create_study(study_name=store.name("trial"), storage=open_storage(relay.url()))
    relay.arm("INSERT INTO trials")
    trial = study.ask()
    assert relay.dropped == 1, "the connection was dropped after the commit"
    (stored,) = store.trials(store.name("trial"))
    assert (stored.number, stored._trial_id, stored.state.name) == (trial.number, trial._trial_id, "RUNNING")


def test_a_new_study_whose_commit_reply_was_lost_is_made_once_and_is_this_callers(dropper):
    relay, store = dropper
    relay.arm("INSERT INTO studies")
    study = optuna.create_study(study_name=store.name("study"), storage=open_storage(relay.url()))
    assert relay.dropped == 1
    assert store.study_names() == {store.name("study")}
    assert study._study_id == optuna.load_study(study_name=store.name("study"), storage=store.optuna)._study_id
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):  # another caller's create still fails
        optuna.create_study(study_name=store.name("study"), storage=open_storage(relay.url()))


def test_a_queued_trial_claimed_just_before_the_connection_dropped_is_this_workers(dropper):
    """Taking a WAITING trial (WAITING -> RUNNING) whose commit reply is lost: the claim stands
    and the worker runs that trial, instead of taking it for another worker's and leaving it
    RUNNING with no heartbeat, forever."""
    relay, store = dropper
    study = optuna.create_study(study_name=store.name("claim"), storage=open_storage(relay.url()))
    study.enqueue_trial({"x": 0.5})
    relay.arm("UPDATE trials SET state")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert relay.dropped == 1
    (stored,) = store.trials(store.name("claim"))
    assert (trial.number, trial.params) == (0, {"x": 0.5}) and stored.state.name == "RUNNING"

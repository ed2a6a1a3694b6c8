"""The per-study lock (``storage.study_lock(name)``) excludes another PROCESS on every store the
service opens, and a database it cannot lock is refused before anything is created.

Budget admission, the dashboard refresh and the confirmation queue rely on it: two workers
holding it together would take the last trial slot twice or interleave a note's chunks.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import pytest
import sqlalchemy

from helpers import REPO
from storage import NoStore, StorageError, open_storage
from storage._open import application_name

# A second process: takes the lock (waiting), says "held", holds it until a line arrives on
# stdin, then prints the time just before it lets go.
HOLDER = """
import sys, time
from storage import open_storage
storage = open_storage(sys.argv[1])
with storage.study_lock(sys.argv[2]) as held:
    print("held" if held else "not held", flush=True)
    sys.stdin.readline()
    print(time.time(), flush=True)
"""
# A second process that tries the lock without waiting and prints whether it got it.
PROBE = """
import sys
from storage import open_storage
with open_storage(sys.argv[1]).study_lock(sys.argv[2], wait=False) as held:
    print(held)
"""


def other_process_takes(url: str, name: str) -> bool:
    result = subprocess.run([sys.executable, "-c", PROBE, url, name], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return {"True": True, "False": False}[result.stdout.strip()]


def url_of(kind: str, tmp_path, pg_url: str | None) -> str:
    if kind == "journal":
        return str(tmp_path / "studies.journal")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return pg_url


@pytest.fixture(params=["journal", "sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    return url_of(request.param, tmp_path, request.getfixturevalue("pg_url") if request.param == "postgresql" else None)


class Holder:
    """The lock held by another process until ``release``."""

    def __init__(self, url: str, name: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, url, name], cwd=REPO, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.process.stdout.readline().strip()
        assert line == "held", f"the holder did not take the lock: {line!r} {self.process.stderr.read()}"

    def release(self) -> float:
        """Let go; returns the time just before it did."""
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        released = float(self.process.stdout.readline())
        assert self.process.wait(timeout=60) == 0, self.process.stderr.read()
        return released

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def dispose(storage) -> None:
    if hasattr(storage, "engine"):
        storage.engine.dispose()


def test_the_lock_excludes_another_process_until_it_lets_go(url):
    name = f"lock-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url)
    holder = Holder(url, name)
    try:
        with storage.study_lock(name, wait=False) as held:
            assert held is False, "wait=False: taken by the other process, so not held, at once"

        acquired: list[float] = []

        def wait_for_it() -> None:
            with storage.study_lock(name) as held:
                acquired.append(time.time() if held else float("nan"))

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        time.sleep(1.0)
        assert not acquired, "wait=True waits while the other process holds it"
        released = holder.release()
        waiter.join(timeout=60)
        assert acquired and acquired[0] >= released, "taken only after the other process let go"

        with storage.study_lock(name, wait=False) as held:
            assert held is True, "free again: wait=False takes it"
    finally:
        holder.kill()
        dispose(storage)


def test_while_this_process_holds_it_another_process_cannot_take_it(url):
    name = f"lock-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url)
    try:
        with storage.study_lock(name) as held:
            assert held is True
            assert other_process_takes(url, name) is False
            assert other_process_takes(url, f"{name}:budget") is True, "another name's lock is another lock"
        assert other_process_takes(url, name) is True, "let go on leaving the block"
    finally:
        dispose(storage)


def test_the_sqlite_lock_is_a_file_beside_the_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = open_storage("sqlite:///sub/studies.db")  # relative: the lock file follows the database
    try:
        with storage.study_lock("s") as held:
            assert held is True
        assert [p.name.endswith(".lock") for p in (tmp_path / "sub").glob("studies.db.*.lock")] == [True]
    finally:
        dispose(storage)


def test_a_postgresql_lock_whose_connection_dies_is_let_go_without_an_error(pg_url):
    """A server restart or pg_terminate_backend ends the session, and its advisory lock with it:
    leaving the block must not fail the worker, and the lock is free for the others."""
    name = f"lock-{uuid.uuid4().hex[:8]}"
    storage = open_storage(pg_url)
    admin = sqlalchemy.create_engine(pg_url)
    try:
        with storage.study_lock(name) as held:
            assert held is True
            with admin.connect() as conn:
                pids = conn.execute(sqlalchemy.text(
                    "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = :app"),
                    {"app": application_name()}).scalars().all()
                assert len(pids) == 1, pids
                conn.execute(sqlalchemy.text("SELECT pg_terminate_backend(:p)"), {"p": pids[0]})
        assert other_process_takes(pg_url, name) is True, "the lock went with its session"
        with storage.study_lock(name, wait=False) as held:
            assert held is True, "and this worker goes on: a fresh connection takes it again"
    finally:
        dispose(storage)
        admin.dispose()


@pytest.mark.parametrize("url", [
    "mysql+pymysql://u:s3cret-pw@127.0.0.1/x",  # its driver is not even installed
    "mssql+pyodbc://u@127.0.0.1/x",
    "oracle://u@127.0.0.1/x",
])
def test_a_database_without_a_study_lock_is_refused_in_one_line_and_nothing_is_created(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    drivers = {m for m in sys.modules if m.split(".")[0] in {"pymysql", "pyodbc", "oracledb", "cx_Oracle"}}
    with pytest.raises(StorageError) as error:
        open_storage(url)
    message = str(error.value)
    dialect = url.split("+")[0].split(":")[0]
    assert f"{dialect} is not supported" in message
    assert "PostgreSQL" in message and "SQLite" in message and ".journal" in message, "says what is supported"
    assert "\n" not in message and "s3cret-pw" not in message
    assert list(tmp_path.iterdir()) == []
    assert {m for m in sys.modules if m.split(".")[0] in {"pymysql", "pyodbc", "oracledb", "cx_Oracle"}} == drivers, \
        "refused before its driver is loaded"


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_database_is_refused(url):
    with pytest.raises(StorageError, match="SQLite needs a database file path"):
        open_storage(url)


def test_a_read_only_command_on_a_missing_sqlite_file_creates_nothing(tmp_path):
    with pytest.raises(NoStore, match="no such SQLite file"):
        open_storage(f"sqlite:///{tmp_path / 'typo' / 'studies.db'}", create=False)
    assert list(tmp_path.iterdir()) == []

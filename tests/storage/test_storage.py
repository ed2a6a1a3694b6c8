"""Storage URLs: the journal file and SQLite with their heartbeat, PostgreSQL, and never a password in sight."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.storages._heartbeat import is_heartbeat_enabled

from storage import StorageError, default_url, mask_url, open_storage, resolve_url


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg2://alice:s3cret@db.example:5432/optuna", "postgresql+psycopg2://alice:***@db.example:5432/optuna"),
    ("postgresql://alice:p%40ss@db/optuna", "postgresql://alice:***@db/optuna"),
    ("postgresql+psycopg2://alice@db/optuna", "postgresql+psycopg2://alice@db/optuna"),
    ("/home/alice/studies.journal", "/home/alice/studies.journal"),
    ("journal:///home/alice/studies.journal", "journal:///home/alice/studies.journal"),
    ("weird://alice:s3cret@host:notaport/x", "weird://alice:***@host:notaport/x"),
])
def test_mask_url_hides_passwords_only(url, shown):
    assert mask_url(url) == shown


def test_storage_url_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("SEARCH_STORAGE", raising=False)
    assert default_url() == str(tmp_path / "search" / "studies.journal")
    assert resolve_url(None) == default_url()
    monkeypatch.setenv("SEARCH_STORAGE", "/x/env.journal")
    assert resolve_url(None) == "/x/env.journal"
    assert resolve_url("/x/flag.journal") == "/x/flag.journal"


def test_journal_store_is_created_with_its_folder_and_has_a_heartbeat(tmp_path):
    path = tmp_path / "deep" / "er" / "studies.journal"
    storage = open_storage(str(path))
    optuna.create_study(study_name="s", storage=storage)
    assert path.is_file()
    assert is_heartbeat_enabled(storage)
    # A plain Optuna journal (what optuna-dashboard opens).
    plain = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    assert [s.study_name for s in optuna.get_all_study_summaries(plain)] == ["s"]


def test_postgres_store_has_a_heartbeat(pg_url):
    storage = open_storage(pg_url)
    try:
        assert isinstance(storage, optuna.storages.RDBStorage) and is_heartbeat_enabled(storage)
    finally:
        storage.engine.dispose()


def test_sqlite_store_is_created_with_its_folder_and_has_a_heartbeat(tmp_path):
    path = tmp_path / "deep" / "studies.db"
    storage = open_storage(f"sqlite:///{path}")
    try:
        optuna.create_study(study_name="s", storage=storage)
        assert path.is_file() and is_heartbeat_enabled(storage)
        # A plain Optuna RDB storage on the same file (what optuna-dashboard opens).
        plain = optuna.storages.RDBStorage(f"sqlite:///{path}")
        assert [s.study_name for s in optuna.get_all_study_summaries(plain)] == ["s"]
        plain.engine.dispose()
    finally:
        storage.engine.dispose()


def test_a_bare_postgresql_url_opens_with_the_shipped_driver(pg_url):
    bare = "postgresql://" + pg_url.split("://", 1)[1]  # SQLAlchemy alone would look for psycopg 3
    storage = open_storage(bare)
    try:
        assert storage.engine.dialect.driver == "psycopg2"
        assert optuna.get_all_study_summaries(storage) is not None
    finally:
        storage.engine.dispose()


@pytest.mark.parametrize(("url", "says"), [
    ("studies.sqlite", "not a storage URL"),
    ("postgresql+psycopg2://alice:s3cret-pw@127.0.0.1:1/test", "cannot connect"),
    ("postgresql+nosuchdriver://alice:s3cret-pw@127.0.0.1/test", "cannot connect"),
    ("postgresql+psycopg2://alice:s3cret-pw@127.0.0.1:5432x/test", "cannot connect"),  # a typo in the port
])
def test_bad_storage_is_a_storage_error_without_the_password(url, says):
    with pytest.raises(StorageError) as error:
        open_storage(url)
    message = str(error.value)
    assert says in message and "s3cret-pw" not in message
    assert "\n" not in message


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_journal_heartbeat_fails_a_dead_trial_and_retries_it_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCH_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SEARCH_GRACE_PERIOD", "1")
    storage = open_storage(str(tmp_path / "s.journal"))
    study = optuna.create_study(study_name="hb", storage=storage)
    x = optuna.distributions.FloatDistribution(0, 1)

    dead = study.ask({"x": x})
    storage.record_heartbeat(dead._trial_id)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state.name == "RUNNING", "beating, within the grace period"

    time.sleep(1.5)  # the worker died: no beat for longer than the grace period
    optuna.storages.fail_stale_trials(study)
    failed, waiting = study.trials
    assert failed.state.name == "FAIL"
    assert waiting.state.name == "WAITING" and waiting.system_attrs["failed_trial"] == failed.number

    retry = study.ask({"x": x})
    assert retry.number == waiting.number and retry.params == failed.params
    # The retry carries the dead trial's last beat (Optuna copies system attrs); it has just
    # started, so another worker's stale check must leave it alone.
    optuna.storages.fail_stale_trials(study)
    assert study.trials[1].state.name == "RUNNING"
    assert len(study.trials) == 2

"""The heartbeat settings (``$SEARCH_HEARTBEAT_INTERVAL``, ``$SEARCH_GRACE_PERIOD``): a bad one is
one line naming it, on both stores, before anything is created; a good one is what the store runs.

An interval of 0 spins the heartbeat thread (the journal store wrote 312 lines in a one-second
trial); Optuna's RDB storage refuses it, but only as a ValueError that read "cannot connect".
"""

from __future__ import annotations

import pytest

from storage import StorageError, open_storage

INTERVAL, GRACE = "SEARCH_HEARTBEAT_INTERVAL", "SEARCH_GRACE_PERIOD"


@pytest.fixture(params=["journal", "postgresql"])
def url(request, tmp_path) -> str:
    return str(tmp_path / "studies.journal") if request.param == "journal" else request.getfixturevalue("pg_url")


@pytest.mark.parametrize(("env", "says"), [
    ({INTERVAL: "0"}, f"{INTERVAL}='0': expected a whole number of seconds, at least 1 (unset: 10)"),
    ({INTERVAL: "-5"}, f"{INTERVAL}='-5': expected a whole number of seconds, at least 1"),
    ({INTERVAL: "ten"}, f"{INTERVAL}='ten': expected a whole number of seconds"),
    ({INTERVAL: "1.5"}, f"{INTERVAL}='1.5': expected a whole number of seconds"),
    ({GRACE: "0"}, f"{GRACE}='0': expected a whole number of seconds, at least 1 (unset: 60)"),
    ({INTERVAL: "30", GRACE: "10"}, f"{GRACE}=10 is shorter than {INTERVAL}=30: a live trial would be failed"),
])
def test_a_bad_heartbeat_setting_is_one_line_and_nothing_is_created(url, env, says, monkeypatch, tmp_path):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(StorageError) as error:
        open_storage(url)
    message = str(error.value)
    assert message == says or message.startswith(says), message
    assert "\n" not in message and "cannot connect" not in message
    assert list(tmp_path.iterdir()) == [], "no journal file, no lock file"


def test_the_store_runs_the_heartbeat_it_was_given(url, monkeypatch):
    monkeypatch.setenv(INTERVAL, "2")
    monkeypatch.setenv(GRACE, "5")
    storage = open_storage(url)
    try:
        assert (storage.get_heartbeat_interval(), storage.heartbeat_interval, storage.grace_period) == (2, 2, 5)
    finally:
        if hasattr(storage, "engine"):
            storage.engine.dispose()


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_a_command_with_a_bad_heartbeat_setting_ends_in_one_line_with_exit_2(kind, cli, tmp_path, request):
    where = str(tmp_path / "studies.journal") if kind == "journal" else request.getfixturevalue("pg_url")
    result = cli("studies", "--storage", where, env={INTERVAL: "0"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == f"error: {INTERVAL}='0': expected a whole number of seconds, at least 1 (unset: 10)"

"""Optuna's heartbeat contract, held by both stores of this service alike.

The cases are those of Optuna's own tests/storages_tests/test_heartbeat.py (Optuna, MIT licence,
https://github.com/optuna/optuna), written again here for the two storages ``open_storage``
returns: the journal store (``HeartbeatJournalStorage``, on a file of this test) and PostgreSQL
(``ReconnectingRDBStorage``, on a database created for this test and dropped after it). Optuna
runs them on its RDB and Redis storages; a rule that differs between our two stores fails here.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from storage._journal import HeartbeatJournalStorage
from storage._rdb import ReconnectingRDBStorage

pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize"),
    pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),  # a heartbeat thread's error
]

INTERVAL = 1
GRACE = 1
SILENCE = GRACE + 0.6  # long enough, on either clock, for a beat to be older than the grace period

Make = Callable[..., Any]


@pytest.fixture(params=["journal", "postgresql"])
def make_storage(request: pytest.FixtureRequest, tmp_path) -> Iterator[Make]:
    """``make(interval, grace, callback=None)``: the store with that heartbeat, on a fresh file or database."""
    made: list[Any] = []
    admin = database = None
    if request.param == "postgresql":
        base = sqlalchemy.engine.make_url(request.getfixturevalue("pg_url"))
        database = f"heartbeat_{uuid.uuid4().hex[:12]}"
        admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
        url = base.set(database=database).render_as_string(hide_password=False)

    def make(interval: int = INTERVAL, grace: int = GRACE, callback: Callable[..., None] | None = None) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if request.param == "journal":
                storage = HeartbeatJournalStorage(str(tmp_path / "studies.journal"), heartbeat_interval=interval,
                                                  grace_period=grace, heartbeat_stale_trial_callback=callback)
            else:
                storage = ReconnectingRDBStorage(url, engine_kwargs={"pool_size": 1, "max_overflow": 1},
                                                 heartbeat_interval=interval, grace_period=grace,
                                                 heartbeat_stale_trial_callback=callback)
        made.append(storage)
        assert is_heartbeat_enabled(storage) and isinstance(storage, BaseHeartbeat)
        return storage

    yield make
    for storage in made:
        if isinstance(storage, ReconnectingRDBStorage):
            storage.engine.dispose()
    if admin is not None:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE "{database}" WITH (FORCE)'))
        admin.dispose()


def beats_then_goes_silent(storage: Any, trial: optuna.Trial) -> None:
    storage.record_heartbeat(trial._trial_id)
    time.sleep(SILENCE)


def test_optimize_fails_the_silent_trial_of_its_own_study_only(make_storage):
    storage = make_storage()
    mine, other = optuna.create_study(storage=storage), optuna.create_study(storage=storage)
    for study in (mine, other):
        storage.record_heartbeat(study.ask()._trial_id)
    time.sleep(SILENCE)
    assert [mine.trials[0].state, other.trials[0].state] == [TrialState.RUNNING] * 2, "only optimize checks"

    mine.optimize(lambda _: 1.0, n_trials=1)
    assert [t.state for t in mine.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert other.trials[0].state == TrialState.RUNNING, "another study's trials are its own workers' business"


@pytest.mark.parametrize(("interval", "grace"), [(0, GRACE), (-1, GRACE), (INTERVAL, 0), (INTERVAL, -1)])
def test_an_interval_or_grace_period_below_one_second_is_refused(make_storage, interval, grace):
    with pytest.raises(ValueError, match="positive integer"):
        make_storage(interval, grace)


def test_the_stale_trial_callback_gets_the_study_and_the_failed_trial(make_storage):
    calls: list[tuple[Any, ...]] = []

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        study_attrs = study._storage.get_study_system_attrs(study._study_id)  # (Optuna 5: no Study.system_attrs)
        calls.append((study_attrs["test"], trial.number, trial.state, trial.system_attrs["test"]))

    storage = make_storage(callback=callback)
    study = optuna.create_study(storage=storage)
    storage.set_study_system_attr(study._study_id, "test", "A")  # (Optuna 5 has no Study.set_system_attr)
    trial = study.ask()
    storage.set_trial_system_attr(trial._trial_id, "test", "B")
    beats_then_goes_silent(storage, trial)

    study.optimize(lambda _: 1.0, n_trials=1)
    assert calls == [("A", 0, TrialState.FAIL, "B")]


@pytest.mark.parametrize("inherit_intermediate_values", [False, True])
@pytest.mark.parametrize("max_retry", [None, 0, 1])
def test_a_stale_trial_is_retried_with_its_parameters(make_storage, max_retry, inherit_intermediate_values):
    storage = make_storage(callback=RetryHeartbeatStaleTrialCallback(
        max_retry=max_retry, inherit_intermediate_values=inherit_intermediate_values))
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    trial.suggest_float("x", -1, -1)
    trial.set_user_attr("u", "kept")
    trial.report(0.5, 1)
    beats_then_goes_silent(storage, trial)

    study.optimize(lambda _: 1.0, n_trials=1)
    failed, nxt = study.trials[:2]
    assert failed.state == TrialState.FAIL
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(nxt) == (None if max_retry == 0 else 0)
    if max_retry != 0:  # the retry ran in optimize: same parameters and attributes
        assert nxt.state == TrialState.COMPLETE
        assert (nxt.params, nxt.distributions, nxt.user_attrs) == (failed.params, failed.distributions,
                                                                  failed.user_attrs)
        assert nxt.intermediate_values == ({1: 0.5} if inherit_intermediate_values else {})


def test_a_trial_is_stale_only_once_its_heartbeat_went_silent(make_storage):
    """RDBStorage's rule, on both stores: a RUNNING trial that has not beaten yet is never failed,
    however long ago it started; one whose last beat is older than the grace period is."""
    storage = make_storage()
    study = optuna.create_study(storage=storage)
    trial = study.ask()

    time.sleep(SILENCE)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING, "no beat yet: never stale"
    assert storage._get_stale_trial_ids(study._study_id) == []

    storage.record_heartbeat(trial._trial_id)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING, "beating"

    time.sleep(SILENCE)
    assert storage._get_stale_trial_ids(study._study_id) == [trial._trial_id]
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.FAIL


def test_repeated_retries_keep_the_history_back_to_the_first_trial(make_storage):
    storage = make_storage(callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    study = optuna.create_study(storage=storage)
    for _ in range(5):  # each asked trial (a retry, while there is one) beats once and dies
        beats_then_goes_silent(storage, study.ask())
        optuna.storages.fail_stale_trials(study)

    trials = study.trials
    assert len(trials) == 6
    history = [(t.system_attrs.get("failed_trial"), t.system_attrs.get("retry_history")) for t in trials]
    assert history == [(None, None), (0, [0]), (0, [0, 1]), (0, [0, 1, 2]),  # trial 3 failed: 3 retries are all
                       (None, None), (4, [4])]

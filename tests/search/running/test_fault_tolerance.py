"""Nothing lost: dead workers, dropped connections, a crowd at start-up, out of memory, NaN loss.

Every test runs real `search worker` processes training the tiny BERT on the real Recipe-MPR
data against the real PostgreSQL at 127.0.0.1:5432.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
import sqlalchemy
import yaml

from helpers import FINISHED, command, known, open_store, running_mid_trial, spec_dict, wait_for

pytestmark = pytest.mark.usefixtures("data_dir")

# A dead worker's trial goes stale in seconds (both settings are read by every worker).
HEARTBEAT = {"SEARCH_HEARTBEAT_INTERVAL": "1", "SEARCH_GRACE_PERIOD": "3"}
NO_PRUNING = {"type": "NopPruner"}


@pytest.fixture
def pg(pg_store):
    return pg_store


def worker_pid(trial: optuna.trial.FrozenTrial) -> int:
    return int(trial.system_attrs["search:worker"].rsplit(":", 1)[1])


def test_a_killed_workers_trial_is_rerun_and_the_study_ends_with_exactly_its_budget(pg, write_spec, start_cli):
    name = pg.name("budget")
    spec = write_spec(name, known=[known("a", 1e-3, 4), known("b", 1e-3, 4, batch=32), known("c", 3e-4, 4)],
                      pruner=NO_PRUNING, edit=lambda s: s["space"]["num_train_epochs"].update(high=4))
    worker = ["worker", "--study", str(spec), "--storage", pg.url, "--n-trials", "3", "--budget", "study"]
    workers = [start_cli(*worker, env=HEARTBEAT) for _ in range(2)]

    victim = wait_for(lambda: running_mid_trial(pg, name), what="a trial mid-training", alive=tuple(workers))
    killed = next(w for w in workers if w.pid == worker_pid(victim))
    survivor = next(w for w in workers if w is not killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, f"the surviving worker failed\nstdout:\n{out}\nstderr:\n{err}"

    trials = pg.trials(name)
    states = collections.Counter(t.state.name for t in trials)
    assert states["COMPLETE"] + states["PRUNED"] == 3, states
    assert states["RUNNING"] == 0 and states["WAITING"] == 0, states
    # Nothing beyond the budget was started: the three finished trials and the killed one.
    assert len(trials) == 4 and states["FAIL"] == 1
    (first,) = [t for t in trials if t.number == victim.number]
    assert first.state.name == "FAIL"
    (rerun,) = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert rerun.state.name in FINISHED and rerun.params == first.params
    assert worker_pid(rerun) == survivor.pid


def test_a_connection_killed_mid_call_is_recovered(pg, write_spec, start_cli, pg_url):
    name = pg.name("conn")
    spec = write_spec(name, known=[known("a", 1e-3, 4)], pruner=NO_PRUNING,
                      edit=lambda s: s["space"]["num_train_epochs"].update(high=4))
    worker = start_cli("worker", "--study", str(spec), "--storage", pg.url, "--n-trials", "1")
    trial = wait_for(lambda: running_mid_trial(pg, name), what="the trial's first epoch", alive=(worker,))

    # Hold the row the worker rewrites after every epoch ("epochs"): its next write waits on the
    # lock, in the middle of a storage call, and that is when its connection is terminated.
    engine = sqlalchemy.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            with conn.begin():
                conn.execute(sqlalchemy.text("SELECT 1 FROM trial_user_attributes WHERE trial_id = :t "
                                             "AND key = 'epochs' FOR UPDATE"), {"t": trial._trial_id})
                waiting = sqlalchemy.text("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                          "AND application_name LIKE :who")
                who = {"who": f"search@%:{worker.pid}"}
                wait_for(lambda: conn.execute(waiting, who).scalars().all(), what="the worker's write to wait",
                         alive=(worker,), timeout=120)
                killed = conn.execute(sqlalchemy.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE :who"),
                    who).scalar()
                assert killed >= 1
                conn.rollback()
    finally:
        engine.dispose()

    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, f"worker failed\nstdout:\n{out}\nstderr:\n{err}"
    (done,) = pg.trials(name)
    assert done.state.name == "COMPLETE" and done.user_attrs["end_reason"] == "completed"
    assert sorted(done.intermediate_values) == [1, 2, 3, 4], "every epoch's report kept"
    assert [e["epoch"] for e in done.user_attrs["epochs"]] == [1, 2, 3, 4]
    assert done.value == done.intermediate_values[4]


def _forked_worker(argv: list[str], env: dict[str, str], out: str, barrier: Any) -> None:
    """One worker process: the `search` CLI's main() as its own process, output to a file."""
    import sys

    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["search", *argv]
    sys.stdout = sys.stderr = open(out, "w", buffering=1)
    barrier.wait()  # every worker starts the CLI at the same instant
    from search.cli import main

    main()


def test_sixteen_workers_started_at_once_create_the_study_once_and_run_each_config_once(pg, write_spec, cli_env,
                                                                                          tmp_path, recipe):
    """Forked from this process, with torch and the data already loaded: the 16 workers reach
    the storage within milliseconds of each other (16 cold interpreters importing torch on two
    cores would trickle in over a minute), and the test stays short."""
    name = pg.name("crowd")
    configs = [known(f"c{i}", 1e-4 * (i + 1), 1, batch=(16, 32)[i % 2]) for i in range(16)]
    spec = write_spec(name, known=configs, pruner=NO_PRUNING)
    import search.cli  # noqa: F401 - loaded here, shared by the forked workers
    from search.spec import load_spec

    recipe.prepare(load_spec(str(spec)).params({}))
    argv = ["worker", "--study", str(spec), "--storage", pg.url, "--n-trials", "16", "--budget", "study"]
    env = {**cli_env, "TOKENIZERS_PARALLELISM": "false", "SEARCH_DATA_DIR": os.environ["SEARCH_DATA_DIR"]}
    fork = multiprocessing.get_context("fork")
    barrier = fork.Barrier(16)
    logs = [tmp_path / f"worker-{i}.log" for i in range(16)]
    procs = [fork.Process(target=_forked_worker, args=(argv, env, str(log), barrier)) for log in logs]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=300)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    for p, log in zip(procs, logs):
        assert p.exitcode == 0, f"a worker failed (exit {p.exitcode}):\n{log.read_text()}"

    assert pg.study_names() == {name}, "one study, created once"
    trials = pg.trials(name)
    assert len(trials) == 16, "the 16 enqueued configurations and nothing else: enqueued once, budget kept"
    assert all(t.state.name == "COMPLETE" for t in trials), [(t.number, t.state.name) for t in trials]
    runs = collections.Counter(t.user_attrs.get("known_config") for t in trials)
    assert runs == {c["name"]: 1 for c in configs}
    for t in trials:
        config = next(c for c in configs if c["name"] == t.user_attrs["known_config"])
        assert t.params == pytest.approx(config["params"])
    workers = {t.system_attrs["search:worker"] for t in trials}
    assert len(workers) > 1, "the trials were shared between workers"


# --- out of memory and a non-finite loss: one worker run, read by two tests ---------------------

FAULTS = {"SEARCH_FAULT_OOM": "step=2,above_batch=8", "SEARCH_FAULT_NAN": "epoch=2"}
FAULTY_CONFIGS = [
    known("fits-halved", 1e-3, 1, batch=16),  # out of memory at batch 16; 8 x 2 fits
    known("never-fits", 1e-3, 1, batch=32),  # out of memory at 32, and at 16 x 2 again
    known("nan", 1e-3, 2, batch=8),  # fits; its loss turns NaN in epoch 2
    known("after", 3e-3, 1, batch=8),  # the worker went on
]


class FaultyRun:
    def __init__(self, store, name, spec_path, stdout, stderr, returncode) -> None:
        self.store, self.name, self.spec_path = store, name, spec_path
        self.stdout, self.stderr, self.returncode = stdout, stderr, returncode

    def trial(self, config: str) -> optuna.trial.FrozenTrial:
        (found,) = [t for t in self.store.trials(self.name) if t.user_attrs.get("known_config") == config]
        return found


@pytest.fixture(scope="module")
def faulty_run(request, tmp_path_factory, data_dir, tiny_model, cli_env) -> Iterator[FaultyRun]:
    folder = tmp_path_factory.mktemp("faults")
    store = open_store("postgresql", folder, request)
    name = store.name("faults")
    spec_path = folder / f"{name}.yaml"
    spec = spec_dict(name, tiny_model, known=FAULTY_CONFIGS, pruner=NO_PRUNING)
    spec["space"]["per_device_train_batch_size"]["choices"] = [8, 16, 32]
    spec_path.write_text(yaml.safe_dump(spec))
    result = subprocess.run(command("worker", "--study", str(spec_path), "--storage", store.url, "--n-trials", "4"),
                            cwd=folder, env={**cli_env, **FAULTS}, capture_output=True, text=True, timeout=600)
    yield FaultyRun(store, name, spec_path, result.stdout, result.stderr, result.returncode)
    store.close()


def test_out_of_memory_is_retried_with_half_the_micro_batch_and_the_same_effective_batch(faulty_run, recipe):
    assert faulty_run.returncode == 0, faulty_run.stdout + faulty_run.stderr
    halved = faulty_run.trial("fits-halved")
    assert halved.state.name == "COMPLETE"
    retry = halved.user_attrs["oom_retry"]
    assert retry["from"] == {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 1}
    assert retry["to"] == {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}
    assert "out of memory" in retry["error"] and "injected" in retry["error"]
    assert halved.params["per_device_train_batch_size"] == 16, "the trial keeps the configuration it was given"

    # What the retry trained is the configuration at 8 x 2: the same run here gives the same value.
    from search.spec import load_spec

    params = load_spec(str(faulty_run.spec_path)).params(halved.params)
    direct = recipe.train({**params, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2})
    assert direct["accuracy"] == halved.value

    never = faulty_run.trial("never-fits")
    assert never.state.name == "FAIL"
    assert never.user_attrs["end_reason"].startswith("failed: OutOfMemoryError: out of memory even at micro-batch 16 "
                                                     "with accumulation 2 (the same effective batch as 32 x 1)")
    assert never.user_attrs["oom_retry"]["to"] == {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 2}
    assert faulty_run.trial("after").state.name == "COMPLETE", "the worker went on"


def test_a_non_finite_loss_prunes_the_trial_with_the_reason(faulty_run):
    assert faulty_run.returncode == 0, faulty_run.stdout + faulty_run.stderr
    nan = faulty_run.trial("nan")
    assert nan.state.name == "PRUNED"
    assert nan.user_attrs["end_reason"] == "non-finite training loss at epoch 2"
    assert sorted(nan.intermediate_values) == [1], "epoch 1 reported; epoch 2 never evaluated"
    assert "non-finite training loss at epoch 2" in faulty_run.stdout
    assert faulty_run.trial("after").state.name == "COMPLETE", "the worker went on"


def test_confirmation_retries_out_of_memory_as_the_search_does(faulty_run, cli_env):
    """Confirmation trains through the same trial runner: a run that does not fit is retried at
    half the micro-batch, on every fold, and recorded so."""
    store = faulty_run.store
    result = subprocess.run(command("confirm", "--study", faulty_run.name, "--storage", store.url, "--top", "2",
                                    "--seeds", "1"), cwd=faulty_run.spec_path.parent, env={**cli_env, **FAULTS},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    halved = faulty_run.trial("fits-halved")
    runs = [t for t in store.trials(f"{faulty_run.name}.confirm") if t.params.get("source_trial") == halved.number]
    assert sorted(t.params["fold"] for t in runs) == [0, 1, 2, 3, 4] and {t.state.name for t in runs} == {"COMPLETE"}
    for run in runs:
        assert run.user_attrs["oom_retry"]["to"] == {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}
        assert run.user_attrs["params"]["per_device_train_batch_size"] == 16, "it ran the searched configuration"


# --- the study-wide budget, in this process -----------------------------------------------------


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_the_budget_holds_a_slot_for_a_running_trial_and_frees_it_when_that_trial_dies(pg, monkeypatch):
    from search.running.budget import StudyBudget
    from storage import open_storage

    monkeypatch.setenv("SEARCH_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SEARCH_GRACE_PERIOD", "1")
    storage = open_storage(pg.url)
    study = optuna.create_study(study_name=pg.name("slots"), storage=storage)
    study.tell(study.ask(), 1.0)
    running = study.ask()
    storage.record_heartbeat(running._trial_id)  # alive a moment ago, silent from now on

    budget = StudyBudget(study, storage, 3, poll_seconds=0.1)
    assert budget.admit() is True, "1 finished + 1 running < 3: a slot is free"
    budget.release()

    budget = StudyBudget(study, storage, 2, poll_seconds=0.1)
    started = time.monotonic()
    assert budget.admit() is True, "the running trial went silent: failed and re-queued, so its slot is free"
    budget.release()
    assert time.monotonic() - started >= 0.5, "it waited for the trial instead of stopping or starting another"
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "FAIL", "WAITING"], "the dead trial failed and its re-run queued"

    rerun = study.ask()  # the re-run takes the slot; with it running, the study's 2 slots are held
    assert rerun.params == {} and rerun.number == 2
    assert budget.admit(deadline=time.monotonic() + 1.5) is False and not budget.spent()
    study.tell(rerun, 2.0)
    assert budget.admit() is False and budget.spent(), "2 finished: spent, every worker stops"
    storage.engine.dispose()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_crowd_finishing_together_renders_the_note_once_per_wave_and_misses_no_trial(pg, tiny_model, monkeypatch):
    """Twelve workers (threads, each with its own connections) finish a trial at the same moment:
    they do not queue for the study lock one by one; the final note shows all twelve trials."""
    import threading

    from optuna_dashboard import get_note

    from search.dashboard import refresh as dashboard_refresh
    from search.dashboard.notes import study_note
    from search.spec import validate
    from search.study import build_study
    from storage import open_storage

    spec = validate(spec_dict(pg.name("wave"), tiny_model, pruner=NO_PRUNING), "test spec")
    study, _ = build_study(spec, open_storage(pg.url))
    renders = []
    original = dashboard_refresh.refresh_study
    monkeypatch.setattr(dashboard_refresh, "refresh_study", lambda *a: renders.append(1) or original(*a))
    start = threading.Barrier(12)

    def worker(i: int) -> None:
        storage = open_storage(pg.url)
        mine = optuna.load_study(study_name=study.study_name, storage=storage)
        trial = mine.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-7, 1e-2, log=True)})
        mine.tell(trial, 0.1 + i / 100)
        start.wait()
        dashboard_refresh.refresh_coalesced(mine, spec, storage)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert "12 completed, 0 pruned, 0 failed" in get_note(study)
    assert get_note(study) == study_note(study, spec), "the stored note renders the final state"
    assert 1 <= len(renders) < 12, f"{len(renders)} renders for 12 finished trials"

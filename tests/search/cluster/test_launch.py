"""`search launch`: workers per GPU (CPU workers here), restarted when they die, stopped cleanly.

Real `search launch` processes start real `search worker` processes against PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from helpers import known, run_main
from search.cluster.launch import detect_gpus, parse_gpus, slots
from search.running.shutdown import STOPPED_REASON

pytestmark = pytest.mark.usefixtures("data_dir")

LONG = {"type": "NopPruner"}


def wait_for(condition, *, what: str, proc, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert proc.poll() is None, f"launch ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def busy(store, name: str) -> dict[int, object]:
    """{worker pid: its RUNNING trial} for trials that reported an epoch."""
    if name not in store.study_names():
        return {}
    return {int(t.system_attrs["search:worker"].rsplit(":", 1)[1]): t for t in store.trials(name)
            if t.state.name == "RUNNING" and t.intermediate_values}


def test_launch_restarts_a_dead_worker_and_stops_every_worker_cleanly(pg_store, write_spec, start_cli, tmp_path):
    name = pg_store.name("launch")
    spec = write_spec(name, known=[known(f"k{i}", 1e-3, 8) for i in range(6)], pruner=LONG,
                      edit=lambda s: s["space"]["num_train_epochs"].update(high=8))
    # A long grace period: the SIGKILLed worker's trial stays RUNNING for the whole test, and the
    # stopped workers' trials can only have been re-queued by the clean stop itself.
    launch = start_cli("launch", "--study", str(spec), "--storage", pg_store.url, "--gpus", "all", "--per-gpu", "2",
                       "--max-restarts", "1", "--log-dir", str(tmp_path / "logs"), env={"SEARCH_GRACE_PERIOD": "900"})

    first = wait_for(lambda: (b if len(b := busy(pg_store, name)) == 2 else None), what="two busy workers",
                     proc=launch)
    killed_pid = next(iter(first))
    os.kill(killed_pid, signal.SIGKILL)
    restarted = wait_for(lambda: [t for p, t in busy(pg_store, name).items() if p not in first],
                         what="the restarted worker in a trial", proc=launch)

    stop_sent = time.monotonic()
    launch.send_signal(signal.SIGTERM)
    out, err = launch.communicate(timeout=120)
    assert time.monotonic() - stop_sent < 60, "stopped at once, not after a heartbeat grace period"
    assert launch.returncode == 130, f"stdout:\n{out}\nstderr:\n{err}"
    assert "died (exit -9); restart 1 of 1" in out and "stopping 2 workers" in out
    assert "worker 0 stopped (exit 130)" in out and "worker 1 stopped (exit 130)" in out
    for log in (tmp_path / "logs").glob("worker-*.log"):
        assert log.read_text().rstrip().endswith("stopped"), "each worker says it stopped, last"

    trials = pg_store.trials(name)
    # The SIGKILLed worker could not clean up: its trial waits for the heartbeat's grace period.
    assert [t.number for t in trials if t.state.name == "RUNNING"] == [first[killed_pid].number]
    # The stopped workers' trials: failed with the reason and re-queued at once, same parameters.
    stopped = [t for t in trials if t.state.name == "FAIL" and t.user_attrs.get("end_reason") == STOPPED_REASON]
    assert restarted[0].number in [t.number for t in stopped] and len(stopped) <= 2
    for trial in stopped:
        (requeued,) = [t for t in trials if t.system_attrs.get("failed_trial") == trial.number]
        assert requeued.state.name == "WAITING" and requeued.params == trial.params


def test_killing_the_launcher_stops_its_workers_cleanly(pg_store, write_spec, start_cli, tmp_path):
    name = pg_store.name("orphans")
    spec = write_spec(name, known=[known(f"k{i}", 1e-3, 8) for i in range(2)], pruner=LONG,
                      edit=lambda s: s["space"]["num_train_epochs"].update(high=8))
    # A long grace period: only the workers' own clean stop can end their trials within the test.
    launch = start_cli("launch", "--study", str(spec), "--storage", pg_store.url, "--gpus", "none", "--per-gpu", "1",
                       "--log-dir", str(tmp_path / "logs"), env={"SEARCH_GRACE_PERIOD": "900"})
    ((worker_pid, trial),) = wait_for(lambda: busy(pg_store, name) or None, what="a busy worker",
                                      proc=launch).items()

    launch.kill()  # SIGKILL: the launcher cleans up nothing
    deadline = time.monotonic() + 60
    while _alive(worker_pid):
        assert time.monotonic() < deadline, "the orphaned worker went on training"
        time.sleep(0.2)
    (stopped,) = [t for t in pg_store.trials(name) if t.number == trial.number]
    assert stopped.state.name == "FAIL" and stopped.user_attrs["end_reason"] == STOPPED_REASON
    (requeued,) = [t for t in pg_store.trials(name) if t.system_attrs.get("failed_trial") == trial.number]
    assert requeued.state.name == "WAITING" and requeued.params == trial.params


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited; its parent (gone) cannot reap it
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_launch_gives_up_on_a_worker_that_keeps_dying(pg_store, write_spec, cli, tmp_path):
    name = pg_store.name("giveup")
    spec = write_spec(name, known=[known(f"k{i}", 1e-3, 1) for i in range(3)])
    result = cli("launch", "--study", str(spec), "--storage", pg_store.url, "--gpus", "none", "--max-restarts", "1",
                 "--log-dir", str(tmp_path / "logs"), env={"SEARCH_FAULT_ERROR": "rank=0,epoch=1"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "worker 0 died (exit 1); restart 1 of 1 in 1 s" in result.stdout
    assert "worker 0 gave up after 1 restarts (exit 1)" in result.stdout
    log = (tmp_path / "logs" / "worker-0.log").read_text()
    assert log.count("stopped after 3 failed trials in a row") == 2, "started twice, and each time it failed"


def test_gpus_and_trial_groups(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert detect_gpus() == ["2", "3"], "the GPUs this process may see"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert parse_gpus("all") == [] and parse_gpus("none") == []
    assert slots([], gpus_per_trial=1, per_gpu=3) == ["", "", ""], "no GPU: CPU workers"
    assert slots(["0", "1", "2", "3"], gpus_per_trial=1, per_gpu=2) == ["0", "0", "1", "1", "2", "2", "3", "3"]
    assert slots(["0", "1", "2", "3"], gpus_per_trial=2, per_gpu=1) == ["0,1", "2,3"]

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))  # never the user's store
    code, _, err = run_main(monkeypatch, capsys, "launch", "--study", "recipe-mpr", "--gpus", "0,1,2",
                            "--gpus-per-trial", "2")
    assert (code, err.strip()) == (2, "error: 3 GPUs (0,1,2) do not divide into trials of 2 GPUs")
    code, _, err = run_main(monkeypatch, capsys, "launch", "--study", "recipe-mpr", "--gpus", "0,x")
    assert (code, err.strip()) == (2, "error: --gpus '0,x': expected all, none, or GPU ids like 0,1,2,3")
    assert list(tmp_path.iterdir()) == [], "nothing stored"

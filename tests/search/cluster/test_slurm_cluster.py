"""`search slurm` on a real SLURM cluster: the scripts it writes, submitted with the real sbatch.

The cluster (tests/search/cluster/conftest.py) is one node on this machine; the jobs' workers are
real `search worker` processes training a tiny model on the CPU against the test PostgreSQL, and
SLURM itself stops them: a time limit, `scontrol requeue`, an array's throttle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import FINISHED, ok, trials_started
from search.running.shutdown import STOPPED_REASON

pytestmark = pytest.mark.usefixtures("data_dir")

NOP = {"type": "NopPruner"}  # every trial runs all its epochs: its length is known
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def epochs(n: int) -> Callable[[dict], None]:
    """A spec edit: every trial trains exactly ``n`` epochs."""

    def edit(spec: dict) -> None:
        del spec["space"]["num_train_epochs"]
        spec["fixed"]["num_train_epochs"] = n

    return edit


def wait_for(condition: Callable[[], Any], *, what: str, timeout: float, cluster) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}\n{cluster.logs()}"
        time.sleep(0.5)
    return value


def ended(cluster, job_id: str, timeout: float) -> dict[str, str]:
    """``scontrol show job`` of ``job_id`` once it has ended."""
    return wait_for(lambda: (job if (job := cluster.job(job_id))["JobState"] in ENDED else None),
                    what=f"job {job_id} to end", timeout=timeout, cluster=cluster)


def submit(cli, cluster, pg_store, folder: Path, *args: str) -> str:
    """`search slurm ARGS -o job.sbatch`, then the real sbatch of that script; the job id."""
    ok(cli("slurm", *args, "-o", "job.sbatch"))
    return cluster.sbatch(folder / "job.sbatch", env={"SEARCH_STORAGE": pg_store.url})


def stopped_and_rerun(trials) -> list:
    """The trials SLURM's SIGTERM stopped, after checking that each was re-queued with its parameters
    and the copy finished, and that nothing else failed or was left waiting or running."""
    stopped = [t for t in trials if t.state.name == "FAIL"]
    for trial in stopped:
        assert trial.user_attrs["end_reason"] == STOPPED_REASON, trial.user_attrs
        assert any(t.state.name == "COMPLETE" and t.params == trial.params and t.number > trial.number
                   for t in trials), f"trial {trial.number} was re-queued and a later run finished it"
    assert {t.state.name for t in trials} <= {"COMPLETE", "FAIL"}, "nothing left waiting or running"
    return stopped


@pytest.fixture
def job_env(cli_env, slurm_cluster, monkeypatch):
    """sbatch passes the submitting environment to the job: this checkout, the real data."""
    for key, value in cli_env.items():
        monkeypatch.setitem(slurm_cluster.env, key, value)
    return slurm_cluster


def test_a_requeued_job_fails_and_requeues_its_running_trial_and_its_next_run_finishes_it(
        job_env, pg_store, write_spec, cli, tmp_path):
    cluster = job_env
    name = pg_store.name("requeue")
    spec = write_spec(name, edit=epochs(8), pruner=NOP)
    job = submit(cli, cluster, pg_store, tmp_path, "--study", str(spec), "--nodes", "1", "--gpus-per-node", "1",
                 "--n-trials", "2", "--requeue")

    def mid_trial():
        trials = pg_store.trials(name) if name in pg_store.study_names() else []
        return next((t for t in trials if t.state.name == "RUNNING" and t.intermediate_values), None)

    running = wait_for(mid_trial, what="a trial past its first epoch", timeout=240, cluster=cluster)
    cluster.run("scontrol", "requeue", job)  # what preemption does to a job that may be re-queued
    info = ended(cluster, job, timeout=300)

    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), info
    trials = pg_store.trials(name)
    (stopped,) = stopped_and_rerun(trials)
    assert stopped.number == running.number
    (rerun,) = [t for t in trials if t.system_attrs.get("failed_trial") == running.number]
    assert rerun.state.name == "COMPLETE" and rerun.params == running.params
    assert rerun.system_attrs["search:worker"] != running.system_attrs["search:worker"], "the job's next run"
    assert sum(t.state.name in FINISHED for t in trials) == 2
    log = (tmp_path / f"search-{name}-{job}.out").read_text()
    assert "DUE TO JOB REQUEUE" in log and log.count(f"study {name} ") == 2, "both runs, appended to one log"


def test_at_its_time_limit_a_job_requeues_itself_with_its_running_trials(job_env, pg_store, write_spec, cli, tmp_path):
    """Two workers, USR1 10 s before the time limit. Once both train, the job's end is brought
    40 s near (SLURM looks at time limits every 30 s): the job re-queues itself, the workers'
    trials are failed and re-queued, and the job's next run, with its whole limit again,
    finishes them and the study."""
    cluster = job_env
    name = pg_store.name("timelimit")
    spec = write_spec(name, edit=epochs(8), pruner=NOP)
    job = submit(cli, cluster, pg_store, tmp_path, "--study", str(spec), "--nodes", "1", "--gpus-per-node", "2",
                 "--n-trials", "4", "--time", "10", "--requeue", "--signal", "10")

    def both_mid_trial():
        trials = pg_store.trials(name) if name in pg_store.study_names() else []
        running = [t for t in trials if t.state.name == "RUNNING" and t.intermediate_values]
        return running if len(running) == 2 else None

    wait_for(both_mid_trial, what="two trials past their first epoch", timeout=300, cluster=cluster)
    end = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 40))
    cluster.run("scontrol", "update", f"JobId={job}", f"EndTime={end}")
    wait_for(lambda: cluster.job(job)["Restarts"] == "1", what="the job to re-queue itself", timeout=120,
             cluster=cluster)
    cluster.run("scontrol", "update", f"JobId={job}", "TimeLimit=10")  # undo: its next run may take 10 min
    info = ended(cluster, job, timeout=400)

    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), info
    trials = pg_store.trials(name)
    assert stopped_and_rerun(trials), "the time limit came mid-trial"
    assert sum(t.state.name in FINISHED for t in trials) == 4
    log = (tmp_path / f"search-{name}-{job}.out").read_text()
    assert f"search slurm: time limit near, re-queueing job {job}" in log


def test_a_job_array_ends_with_exactly_the_study_budget(job_env, pg_store, write_spec, cli, tmp_path):
    """Four one-worker jobs, at most two at once on a node with room for four: the first two
    share the budget, the two that start after it is spent end at once."""
    cluster = job_env
    name = pg_store.name("array")
    spec = write_spec(name, edit=epochs(3), pruner=NOP)
    array = submit(cli, cluster, pg_store, tmp_path, "--study", str(spec), "--nodes", "1", "--gpus-per-node", "1",
                   "--n-trials", "4", "--array", "0-3%2")

    most_running, throttled = 0, False
    deadline = time.monotonic() + 400
    while True:
        tasks = cluster.array_tasks(array)
        if all(task["JobState"] in ENDED for task in tasks):
            break
        assert time.monotonic() < deadline, f"the array did not end\n{cluster.logs()}"
        most_running = max(most_running, len(cluster.running(array)))
        throttled |= any(t["JobState"] == "PENDING" and t["Reason"] == "JobArrayTaskLimit" for t in tasks)
        time.sleep(0.3)

    assert most_running == 2 and throttled, "two at once, the others held by the %2 throttle, not by the node"
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1", "2", "3"]
    assert {(t["JobState"], t["ExitCode"]) for t in tasks} == {("COMPLETED", "0:0")}
    trials = pg_store.trials(name)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4, "exactly the budget, nothing failed"
    logs = {i: (tmp_path / f"search-{name}-{array}_{i}.out").read_text() for i in range(4)}
    started = {i: trials_started(log) for i, log in logs.items()}
    assert sorted(n for ns in started.values() for n in ns) == [0, 1, 2, 3], "each trial ran once"
    assert all("worker done" in log for log in logs.values())
    assert sum(1 for ns in started.values() if ns) >= 2, "the running jobs shared the budget"

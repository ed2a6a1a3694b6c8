"""`search slurm`: the sbatch script it writes, parsed, syntax-checked and run up to srun.

The script is read line by line, checked by `bash -n`, and executed with bash with nothing on
its PATH (it stops at `srun` after its own checks have run), so these tests read the same with
and without SLURM installed. test_slurm_cluster.py submits the scripts to a real cluster.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from helpers import ok, parse_cli, run_main

SECRET = "postgresql+psycopg2://alice:s3cr3t-pw@db.internal:5432/studies"


def sbatch_options(script: str) -> dict[str, str]:
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").partition("=")
            options[key] = value
    return options


def srun_line(script: str) -> list[str]:
    (line,) = [line for line in script.splitlines() if line.startswith("srun ")]
    return shlex.split(line.removesuffix(" &"))  # --requeue: in the background, so that the trap can run


@pytest.fixture
def slurm(monkeypatch, capsys, tmp_path):
    """`search slurm ARGS` in tmp_path, in this process: (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)
    return lambda *args: run_main(monkeypatch, capsys, "slurm", "--study", "recipe-mpr", *args)


def test_the_script_runs_one_worker_per_gpu_on_every_node_without_the_url(slurm, monkeypatch, tmp_path):
    monkeypatch.setenv("SEARCH_STORAGE", SECRET)
    code, out, err = slurm("--nodes", "2", "--gpus-per-node", "4", "--time", "02:00:00", "--n-trials", "40",
                           "-o", "job.sbatch")
    assert code == 0, err
    assert "8 workers on study recipe-mpr" in out and "sbatch job.sbatch" in out
    script = (tmp_path / "job.sbatch").read_text()
    assert script.startswith("#!/bin/bash\n")

    options = sbatch_options(script)
    assert options["--nodes"] == "2" and options["--gpus-per-node"] == "4" and options["--ntasks-per-node"] == "4"
    assert options["--time"] == "02:00:00" and options["--job-name"] == "search-recipe-mpr"
    # #SBATCH lines count only before the first command.
    first_command = next(i for i, line in enumerate(script.splitlines()) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(script.splitlines()) if line.startswith("#SBATCH"))

    srun = srun_line(script)
    assert "--ntasks-per-node=4" in srun and "--gpus-per-task=1" in srun
    worker = srun[srun.index("worker"):]
    params = parse_cli(worker).params  # a real `search worker` command line
    assert params["study"] == "recipe-mpr" and params["n_trials"] == 40 and params["budget"] == "study"
    assert params["storage"] is None, "the worker reads $SEARCH_STORAGE at run time"

    for secret in (SECRET, "s3cr3t-pw", "alice", "db.internal"):
        assert secret not in script and secret not in out

    ok(subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], capture_output=True, text=True))
    unset = run_without_slurm(tmp_path / "job.sbatch", {})
    assert unset.returncode != 0 and "set SEARCH_STORAGE to the PostgreSQL URL before sbatch" in unset.stderr
    given = run_without_slurm(tmp_path / "job.sbatch", {"SEARCH_STORAGE": SECRET})
    assert given.returncode == 127 and "srun: command not found" in given.stderr, "got as far as srun"


def run_without_slurm(script, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``bash SCRIPT`` with an empty folder as its PATH: no srun, whether or not SLURM is installed."""
    empty = script.parent / "empty-path"
    empty.mkdir(exist_ok=True)
    return subprocess.run([shutil.which("bash"), str(script)], capture_output=True, text=True,
                          env={"PATH": str(empty), **env})


def test_multi_gpu_trials_get_their_gpus_per_task(slurm, tmp_path):
    code, _, err = slurm("--nodes", "3", "--gpus-per-node", "8", "--gpus-per-trial", "4", "-o", "job.sbatch")
    assert code == 0, err
    script = (tmp_path / "job.sbatch").read_text()
    assert sbatch_options(script)["--ntasks-per-node"] == "2"
    srun = srun_line(script)
    assert "--gpus-per-task=4" in srun
    assert parse_cli(srun[srun.index("worker"):]).params["gpus_per_trial"] == 4
    assert "--time" not in sbatch_options(script), "the partition's limit unless asked"


@pytest.mark.parametrize(("args", "message"), [
    (["--gpus-per-node", "6", "--gpus-per-trial", "4"], "error: --gpus-per-node 6 does not divide into trials of 4 GPUs"),
    (["--gpus-per-node", "4", "--time", "2h"], "error: --time '2h': expected HH:MM:SS, D-HH:MM:SS or minutes"),
])
def test_sizes_that_do_not_fit_are_one_line(slurm, tmp_path, args, message):
    code, _, err = slurm("--nodes", "1", *args)
    assert code == 2 and err.strip() == message
    assert list(tmp_path.glob("*.sbatch")) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--partition", "gpu\necho injected"], "error: --partition 'gpu\\necho injected': expected one word"),
    (["--partition", "gpu;echo injected"], "error: --partition 'gpu;echo injected': expected one word"),
    (["--partition", "gpu x"], "error: --partition 'gpu x': expected one word"),
    (["--time", "01:00:00\necho injected"], "error: --time '01:00:00\\necho injected': expected HH:MM:SS"),
    (["--name", "x\necho injected"], "error: --name 'x\\necho injected': not a study name"),
    (["--name", "$(echo injected)"], "error: --name '$(echo injected)': not a study name"),
])
def test_a_value_that_would_add_a_line_or_a_command_is_refused(slurm, tmp_path, args, message):
    code, _, err = slurm("--nodes", "1", "--gpus-per-node", "1", *args)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == [], "no script written"


def test_a_partition_is_one_sbatch_line_and_nothing_else(slurm, tmp_path):
    assert slurm("--nodes", "1", "--gpus-per-node", "1", "-o", "plain.sbatch")[0] == 0
    assert slurm("--nodes", "1", "--gpus-per-node", "1", "--partition", "gpu-a100", "-o", "part.sbatch")[0] == 0
    plain = (tmp_path / "plain.sbatch").read_text().splitlines()
    part = (tmp_path / "part.sbatch").read_text().splitlines()
    assert [line for line in part if line not in plain] == ["#SBATCH --partition=gpu-a100"]
    assert len(part) == len(plain) + 1


def test_o_does_not_overwrite_a_file_it_did_not_write_without_force(slurm, tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    code, _, err = slurm("--nodes", "1", "--gpus-per-node", "1", "-o", "notes.txt")
    assert code == 2 and err.count("\n") == 1
    assert "notes.txt exists and was not written by `search slurm`" in err and "--force" in err
    assert mine.read_text() == "my notes\n"

    assert slurm("--nodes", "1", "--gpus-per-node", "1", "-o", "job.sbatch")[0] == 0
    code, _, err = slurm("--nodes", "2", "--gpus-per-node", "1", "-o", "job.sbatch")
    assert code == 0, "its own script is rewritten"
    assert sbatch_options((tmp_path / "job.sbatch").read_text())["--nodes"] == "2"

    code, _, err = slurm("--nodes", "1", "--gpus-per-node", "1", "-o", "notes.txt", "--force")
    assert code == 0, err
    assert (tmp_path / "notes.txt").read_text().startswith("#!/bin/bash\n# Written by `search slurm`")


def test_the_default_script_name_is_the_study_name(slurm, tmp_path):
    code, _, err = slurm("--nodes", "1", "--gpus-per-node", "1", "--name", "mpr.v2_a")
    assert code == 0, err
    script = (tmp_path / "search-mpr.v2_a.sbatch").read_text()
    assert sbatch_options(script)["--job-name"] == "search-mpr.v2_a"
    assert parse_cli(srun_line(script)[srun_line(script).index("worker"):]).params["name"] == "mpr.v2_a"


def test_an_array_that_requeues_itself_before_its_time_limit(slurm, tmp_path):
    code, out, err = slurm("--nodes", "1", "--gpus-per-node", "2", "--time", "04:00:00", "--n-trials", "200",
                           "--array", "0-9%2", "--requeue", "-o", "job.sbatch")
    assert code == 0, err
    assert "an array of 10 such jobs, at most 2 at once; re-queued at the time limit or when preempted" in out
    script = (tmp_path / "job.sbatch").read_text()
    options = sbatch_options(script)
    assert options["--array"] == "0-9%2" and options["--output"] == "search-recipe-mpr-%A_%a.out"
    assert options["--requeue"] == "" and options["--open-mode"] == "append", "each run's output kept"
    assert options["--signal"] == "B:USR1@120", "to the batch shell, which re-queues the job"
    lines = script.splitlines()
    (trap,) = [line for line in lines if line.startswith("trap ")]
    assert shlex.split(trap)[-1] == "USR1" and 'scontrol requeue "$SLURM_JOB_ID"' in trap
    srun = [line for line in lines if line.startswith("srun ")][0]
    assert srun.endswith(" &") and lines.index(trap) < lines.index(srun), "the trap is set before the workers start"
    worker = srun_line(script)[srun_line(script).index("worker"):]
    assert parse_cli(worker).params["n_trials"] == 200
    ok(subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], capture_output=True, text=True))
    given = run_without_slurm(tmp_path / "job.sbatch", {"SEARCH_STORAGE": SECRET})
    assert given.returncode == 127 and "srun: command not found" in given.stderr, "the background srun's exit"


def test_signal_stops_the_workers_before_the_time_limit(slurm, tmp_path):
    code, _, err = slurm("--nodes", "1", "--gpus-per-node", "1", "--time", "1-00:00:00", "--signal", "300",
                         "-o", "job.sbatch")
    assert code == 0, err
    script = (tmp_path / "job.sbatch").read_text()
    options = sbatch_options(script)
    assert options["--signal"] == "TERM@300", "to the workers (the job steps), not to the batch shell"
    assert "--requeue" not in options and "--array" not in options and "trap" not in script
    assert script.rstrip().splitlines()[-1].startswith("srun "), "in the foreground"


@pytest.mark.parametrize(("args", "message"), [
    (["--array", "5-2"], "error: --array '5-2': 5-2 is an empty range"),
    (["--array", "0-9%0"], "error: --array '0-9%0': %0 would never run a job"),
    (["--array", "0-9%"], "error: --array '0-9%': expected SLURM's array syntax"),
    (["--array", "1,x"], "error: --array '1,x': expected SLURM's array syntax"),
    (["--signal", "0"], "error: --signal 0: expected seconds from 1 to 65535"),
    (["--time", "1", "--signal", "60"], "error: --signal 60 s is not before the time limit (--time 1 is 60 s)"),
    (["--time", "00:01:00", "--requeue"], "error: --signal 120 s is not before the time limit (--time 00:01:00 is "
                                          "60 s); give a shorter --signal"),
])
def test_arrays_and_signals_that_slurm_would_refuse_or_misread_are_one_line(slurm, tmp_path, args, message):
    code, _, err = slurm("--nodes", "1", "--gpus-per-node", "1", *args)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == [], "no script written"

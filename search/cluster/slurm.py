"""``search slurm``: an sbatch script that runs one worker per GPU on every node of a job.

``srun`` starts ``gpus_per_node / gpus_per_trial`` tasks per node, each a ``search worker``
bound by SLURM to its own GPU(s) (``--gpus-per-task``). All of them join one study on the
PostgreSQL server named by ``$SEARCH_STORAGE`` **when the job runs**: the URL (and its
password) is never written into the script, which can be shared and committed. At the time
limit or on preemption SLURM sends SIGTERM: each worker fails its running trial and re-queues
it at once, so another job (or a later one) re-runs it.

What a long search adds:

- ``array``: the same job many times (``0-9%2``: ten jobs, at most two at once). With a
  study-wide ``--n-trials`` budget they end with exactly that many finished trials; the jobs
  that start after that find the study done and end at once.
- ``signal``: SLURM stops the workers that many seconds before the time limit (``--signal``),
  for trials that need longer than the cluster's ``KillWait`` to stop.
- ``requeue``: the job goes back to the queue instead of ending, at its time limit (SLURM sends
  the batch shell USR1 ``signal`` seconds before it and the script runs ``scontrol requeue``)
  and when it is preempted (``--requeue``). Either way SLURM stops the workers with SIGTERM, so
  their running trials are re-queued in the study, and the job's next run picks them up.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path


class SlurmError(Exception):
    """Sizes that do not fit together, a bad time limit: one line, exit 2."""


TIME = re.compile(r"(?:(?P<days>\d+)-)?(?P<hours>\d{1,2}):(?P<minutes>\d{2}):(?P<seconds>\d{2})|(?P<only_minutes>\d+)")
# SLURM's job array syntax: indexes and ranges with an optional step, then at most K at once (%K).
ARRAY_PART = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?")
ARRAY = re.compile(r"(\d+(?:-\d+(?::\d+)?)?(?:,\d+(?:-\d+(?::\d+)?)?)*)(?:%(\d+))?")
# An #SBATCH value is one word on one line: a newline would start a line of its own (a command
# that runs), a space or a quote would end or break the option.
SBATCH_VALUE = re.compile(r"[A-Za-z0-9._%:,+=@/-]+")
# The first line after the shebang of every script ``search slurm`` writes: how ``-o`` knows a
# file it may overwrite.
HEADER = "# Written by `search slurm`"
# --requeue without --signal: USR1 this long before the time limit. SLURM looks at time limits
# every 30 s, so the signal may come up to 30 s earlier still; the workers need seconds to stop.
REQUEUE_SIGNAL_S = 120
MAX_SIGNAL_S = 65535  # SLURM keeps the warning time in 16 bits


def _sbatch_value(option: str, value: str) -> str:
    if not SBATCH_VALUE.fullmatch(value):
        raise SlurmError(f"{option} {value!r}: expected one word of letters, digits and ._%:,+=@/- "
                         "(no space, newline or quote)")
    return value


def time_limit_seconds(time_limit: str) -> int:
    """``--time`` in seconds (``HH:MM:SS``, ``D-HH:MM:SS`` or minutes); SlurmError otherwise."""
    match = TIME.fullmatch(time_limit)
    if not match:
        raise SlurmError(f"--time {time_limit!r}: expected HH:MM:SS, D-HH:MM:SS or minutes")
    if match["only_minutes"]:
        return int(match["only_minutes"]) * 60
    return (int(match["days"] or 0) * 86400 + int(match["hours"]) * 3600 + int(match["minutes"]) * 60
            + int(match["seconds"]))


def array_jobs(array: str) -> tuple[int, int | None]:
    """The number of jobs in a SLURM ``--array`` value, and how many may run at once (None: all)."""
    match = ARRAY.fullmatch(array)
    if not match:
        raise SlurmError(f"--array {array!r}: expected SLURM's array syntax, like 0-9, 0-9%2 or 1,3,5-7")
    indexes: set[int] = set()
    for part in match[1].split(","):
        low, high, step = ARRAY_PART.fullmatch(part).groups()
        high_, step_ = int(high or low), int(step or 1)
        if int(low) > high_ or step_ == 0:
            raise SlurmError(f"--array {array!r}: {part} is an empty range")
        indexes.update(range(int(low), high_ + 1, step_))
    at_once = int(match[2]) if match[2] else None
    if at_once == 0:
        raise SlurmError(f"--array {array!r}: %0 would never run a job")
    return len(indexes), at_once


def written_by_slurm(text: str) -> bool:
    """Is ``text`` a script that ``search slurm`` wrote (its first comment line says so)?"""
    lines = text.splitlines()
    return len(lines) > 1 and lines[0].startswith("#!") and lines[1].startswith(HEADER)


def search_command() -> list[str]:
    """How this installation runs ``search``: its entry point, else ``python -m search.cli``."""
    entry = Path(sys.executable).parent / "search"
    return [str(entry)] if entry.is_file() else [sys.executable, "-m", "search.cli"]


def sbatch_script(*, job_name: str, nodes: int, gpus_per_node: int, gpus_per_trial: int, time_limit: str | None,
                  worker_args: list[str], workdir: Path, partition: str | None = None, array: str | None = None,
                  requeue: bool = False, signal: int | None = None) -> str:
    if gpus_per_node % gpus_per_trial:
        raise SlurmError(f"--gpus-per-node {gpus_per_node} does not divide into trials of {gpus_per_trial} GPUs")
    limit_s = time_limit_seconds(time_limit) if time_limit is not None else None
    if array is not None:
        array_jobs(array)
    if signal is not None and not 1 <= signal <= MAX_SIGNAL_S:
        raise SlurmError(f"--signal {signal}: expected seconds from 1 to {MAX_SIGNAL_S}")
    warn_s = signal if signal is not None else (REQUEUE_SIGNAL_S if requeue else None)
    if warn_s is not None and limit_s is not None and warn_s >= limit_s:
        raise SlurmError(f"--signal {warn_s} s is not before the time limit (--time {time_limit} is {limit_s} s)"
                         + ("" if signal is not None else "; give a shorter --signal"))
    tasks = gpus_per_node // gpus_per_trial
    job_name = _sbatch_value("job name", job_name)
    sbatch = [f"--job-name={job_name}", f"--nodes={nodes}", f"--ntasks-per-node={tasks}",
              f"--gpus-per-node={gpus_per_node}",
              f"--output={job_name}-%A_%a.out" if array else f"--output={job_name}-%j.out"]
    sbatch += [f"--time={time_limit}"] if time_limit else []
    sbatch += [f"--partition={_sbatch_value('--partition', partition)}"] if partition else []
    sbatch += [f"--array={array}"] if array else []
    if requeue:  # USR1 to the batch shell, which re-queues the job; each run's output appended
        sbatch += ["--requeue", "--open-mode=append", f"--signal=B:USR1@{warn_s}"]
    elif warn_s is not None:  # SIGTERM to the workers (the job steps), not to the batch shell
        sbatch += [f"--signal=TERM@{warn_s}"]
    worker = shlex.join([*search_command(), "worker", *worker_args])
    srun = f"srun --ntasks-per-node={tasks} --gpus-per-task={gpus_per_trial} --kill-on-bad-exit=0 {worker}"
    lines = [
        "#!/bin/bash",
        f"{HEADER}: {nodes} node(s) x {gpus_per_node} GPUs, one `search worker` per "
        f"{'GPU' if gpus_per_trial == 1 else f'{gpus_per_trial} GPUs'}.",
        "# The storage URL is read from $SEARCH_STORAGE when the job starts; it is never written here:",
        "#   export SEARCH_STORAGE=postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB",
        "#   sbatch THIS_FILE",
        *(f"#SBATCH {option}" for option in sbatch),
        "",
        "set -euo pipefail",
        ': "${SEARCH_STORAGE:?set SEARCH_STORAGE to the PostgreSQL URL before sbatch (it is not in this script)}"',
        f"cd {shlex.quote(str(workdir))}",
        "# One task per GPU group on every node; SLURM pins each task's GPUs (CUDA_VISIBLE_DEVICES).",
    ]
    if requeue:
        lines += [
            f"# {warn_s} s before the time limit SLURM sends this shell USR1 and it re-queues the job; then, as",
            "# when the job is preempted, SLURM sends the workers SIGTERM: each fails and re-queues its running",
            "# trial, and the job's next run picks it up. srun runs in the background so that the trap can run.",
            "trap 'echo \"search slurm: time limit near, re-queueing job $SLURM_JOB_ID\"; "
            "scontrol requeue \"$SLURM_JOB_ID\" || true' USR1",
            f"{srun} &",
            "workers=$!",
            "status=0",
            'wait "$workers" || status=$?',
            'while kill -0 "$workers" 2>/dev/null; do  # the trap ended wait early: wait for the workers to stop',
            '    status=0; wait "$workers" || status=$?',
            "done",
            'exit "$status"',
        ]
    else:
        stop = (f"{warn_s} s before the time limit SLURM sends the workers SIGTERM" if warn_s is not None
                else "At the time limit SLURM sends SIGTERM")
        lines += [f"# {stop}: each worker fails and re-queues its running trial.", srun]
    return "\n".join([*lines, ""])

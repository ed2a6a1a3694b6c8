"""``search slurm``: an sbatch script that runs one worker per GPU on every node of a job.

``srun`` starts ``gpus_per_node / gpus_per_trial`` tasks per node, each a ``search worker``
bound by SLURM to its own GPU(s) (``--gpus-per-task``). All of them join one study on the
PostgreSQL server named by ``$SEARCH_STORAGE`` **when the job runs**: the URL (and its
password) is never written into the script, which can be shared and committed. At the time
limit or on preemption SLURM sends SIGTERM: each worker fails its running trial and re-queues
it at once, so another job (or a later one) re-runs it.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path


class SlurmError(Exception):
    """Sizes that do not fit together, a bad time limit: one line, exit 2."""


TIME = re.compile(r"(\d+-)?\d{1,2}:\d{2}:\d{2}|\d+")
# An #SBATCH value is one word on one line: a newline would start a line of its own (a command
# that runs), a space or a quote would end or break the option.
SBATCH_VALUE = re.compile(r"[A-Za-z0-9._%:,+=@/-]+")
# The first line after the shebang of every script ``search slurm`` writes: how ``-o`` knows a
# file it may overwrite.
HEADER = "# Written by `search slurm`"


def _sbatch_value(option: str, value: str) -> str:
    if not SBATCH_VALUE.fullmatch(value):
        raise SlurmError(f"{option} {value!r}: expected one word of letters, digits and ._%:,+=@/- "
                         "(no space, newline or quote)")
    return value


def written_by_slurm(text: str) -> bool:
    """Is ``text`` a script that ``search slurm`` wrote (its first comment line says so)?"""
    lines = text.splitlines()
    return len(lines) > 1 and lines[0].startswith("#!") and lines[1].startswith(HEADER)


def search_command() -> list[str]:
    """How this installation runs ``search``: its entry point, else ``python -m search.cli``."""
    entry = Path(sys.executable).parent / "search"
    return [str(entry)] if entry.is_file() else [sys.executable, "-m", "search.cli"]


def sbatch_script(*, job_name: str, nodes: int, gpus_per_node: int, gpus_per_trial: int, time_limit: str | None,
                  worker_args: list[str], workdir: Path, partition: str | None = None) -> str:
    if gpus_per_node % gpus_per_trial:
        raise SlurmError(f"--gpus-per-node {gpus_per_node} does not divide into trials of {gpus_per_trial} GPUs")
    if time_limit is not None and not TIME.fullmatch(time_limit):
        raise SlurmError(f"--time {time_limit!r}: expected HH:MM:SS, D-HH:MM:SS or minutes")
    tasks = gpus_per_node // gpus_per_trial
    job_name = _sbatch_value("job name", job_name)
    sbatch = [f"--job-name={job_name}", f"--nodes={nodes}", f"--ntasks-per-node={tasks}",
              f"--gpus-per-node={gpus_per_node}", f"--output={job_name}-%j.out"]
    sbatch += [f"--time={time_limit}"] if time_limit else []
    sbatch += [f"--partition={_sbatch_value('--partition', partition)}"] if partition else []
    worker = shlex.join([*search_command(), "worker", *worker_args])
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
        "# At the time limit SLURM sends SIGTERM: each worker fails and re-queues its running trial.",
        f"srun --ntasks-per-node={tasks} --gpus-per-task={gpus_per_trial} --kill-on-bad-exit=0 {worker}",
        "",
    ]
    return "\n".join(lines)

"""A real one-node SLURM cluster on this machine, from Debian's ``slurm-wlm`` and ``munge``.

The fixture writes a ``slurm.conf`` for 127.0.0.1 (``select/cons_tres``, ``proctrack/linuxproc``,
state, spool, logs and the munge socket in a temporary folder, free ports) and starts munged,
slurmctld and slurmd itself, in the foreground, as its own child processes; it never uses (or
needs) a cluster already running here. At the end it cancels the jobs, waits for them, and stops
the daemons, whatever the tests did; a job process still alive then is killed by its pid.

The node has four GPUs this machine does not have: ``gres.conf`` names device files in the temporary
folder (character devices like /dev/null, made with mknod; SLURM's own test suite does the same).
SLURM allocates and binds them like real GPUs (``--gpus-per-node``, ``--gpus-per-task``,
``CUDA_VISIBLE_DEVICES``); the workers, with no CUDA here, train on the CPU. The node claims 4
CPUs and 4 GPUs (``SlurmdParameters=config_overrides``), more than the 2 cores it has, so that
an array's ``%K`` throttle below the node's room shows; the tests never run more than 2 workers.

Requeued jobs wait ``cred_expire`` seconds before they run again (SLURM's default 120; here 5)
and the main scheduler runs every second, so that a test sees a re-queued job's next run soon.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
NODE = "searchnode"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In a daemon, before it starts: SIGTERM when the test process dies, even killed outright
    (``PR_SET_PDEATHSIG``), so that no daemon outlives a test run that could not tear down."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _find(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


class SlurmCluster:
    """A running one-node cluster: ``env`` is what its client commands (sbatch, squeue...) need."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: dict[str, subprocess.Popen] = {}

    # --- set-up and tear-down ---------------------------------------------------------------

    def write_config(self) -> None:
        f = self.folder
        for sub in ("state", "spool", "log", "munge"):
            (f / sub).mkdir()
        key = f / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        gpus = [f / f"gpu{i}" for i in range(4)]
        for gpu in gpus:  # character devices with /dev/null's numbers: nothing reads them
            os.mknod(gpu, 0o666 | 0o020000, os.makedev(1, 3))
        host = socket.gethostname().split(".")[0]
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.conf.write_text("\n".join([
            "ClusterName=searchtest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={f / 'munge' / 'munge.socket'},cred_expire=5",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool'}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'slurmd.pid'}",
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=1",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "KillWait=10",
            "MinJobAge=600",
            "SlurmdParameters=config_overrides",
            "GresTypes=gpu",
            f"NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs=4 RealMemory={memory_mb} "
            f"Gres=gpu:{len(gpus)} State=UNKNOWN",
            f"PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        (f / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File={f}/gpu[0-{len(gpus) - 1}]\n")

    def start(self) -> None:
        f, conf = self.folder, str(self.conf)
        commands = {
            "munged": ["munged", "--foreground", "--force", f"--socket={f / 'munge' / 'munge.socket'}",
                       f"--key-file={f / 'munge' / 'munge.key'}", f"--pid-file={f / 'munge' / 'munged.pid'}",
                       f"--log-file={f / 'log' / 'munged.log'}", f"--seed-file={f / 'munge' / 'munged.seed'}"],
            "slurmctld": ["slurmctld", "-D", "-f", conf],
            "slurmd": ["slurmd", "-D", "-f", conf, "-N", NODE],
        }
        for name, argv in commands.items():
            argv = [_find(argv[0]), *argv[1:]]
            with open(f / "log" / f"{name}.out", "w") as out:
                # Its own session: a Ctrl-C in the terminal reaches the tests, which stop it in order.
                self.daemons[name] = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                      start_new_session=True, preexec_fn=_die_with_parent)
            if name == "munged":
                self._wait(lambda: (f / "munge" / "munge.socket").exists(), "munged's socket", name)
        self._wait(lambda: self.node_state() == "idle", "the node to be idle", "slurmd")

    def _wait(self, ready, what: str, daemon: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what} ({daemon}):\n{self.logs()}")
            time.sleep(0.3)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.folder / "log").iterdir()))

    def stop(self) -> None:
        """Cancel every job, wait for them, stop the daemons; kill what is left of the jobs."""
        if self.daemons.get("slurmctld") and self.daemons["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True, timeout=30)
            deadline = time.monotonic() + 30
            while self.jobs_alive() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            proc = self.daemons.get(name)
            if proc and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for pid in self.job_processes():  # a job step that outlived the daemons
            os.kill(pid, signal.SIGKILL)

    def jobs_alive(self) -> bool:
        result = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True,
                                timeout=30)
        return result.returncode == 0 and bool(result.stdout.strip()) or bool(self.job_processes())

    def job_processes(self) -> list[int]:
        """The pids of this cluster's slurmstepd processes (their environment names its slurm.conf)."""
        pids = []
        marker = f"SLURM_CONF={self.conf}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "comm").read_text().strip() == "slurmstepd" and \
                        marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    # --- what the tests ask ---------------------------------------------------------------

    def run(self, *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(argv, env={**self.env, **(env or {})}, cwd=cwd, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, f"{' '.join(argv)}: exit {result.returncode}\n{result.stderr}"
        return result.stdout

    def sbatch(self, script: Path, env: dict[str, str]) -> str:
        """Submit ``script`` with the real sbatch, from its folder, in ``env``; the job id."""
        out = self.run("sbatch", "--parsable", script.name, cwd=script.parent, env={**env, "SLURM_CONF": str(self.conf)})
        return out.strip().split(";")[0]

    def node_state(self) -> str:
        result = subprocess.run(["sinfo", "-h", "-n", NODE, "-o", "%T"], env=self.env, capture_output=True,
                                text=True, timeout=30)
        return result.stdout.strip()

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields of one job (or array task: ``ARRAYID_INDEX``)."""
        text = self.run("scontrol", "show", "job", "--oneliner", job_id)
        return dict(re.findall(r"(\S+?)=(\S*)", text.splitlines()[0]))

    def array_tasks(self, array_id: str) -> list[dict[str, str]]:
        text = self.run("scontrol", "show", "job", "--oneliner", array_id)
        return [dict(re.findall(r"(\S+?)=(\S*)", line)) for line in text.splitlines() if line.strip()]

    def running(self, job_id: str) -> list[str]:
        """The ids of ``job_id``'s jobs (array tasks) that SLURM runs now."""
        return self.run("squeue", "-h", "-r", "-t", "RUNNING", "-j", job_id, "-o", "%i").split()


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A one-node SLURM cluster of this test session's own (see the module docstring)."""
    missing = [p for p in (*DAEMONS, *CLIENTS) if not _find(p)]
    if missing:
        pytest.skip(f"SLURM is not installed here (no {', '.join(missing)}): apt-get install slurm-wlm munge "
                    "(.ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("the test SLURM cluster runs its daemons as root (slurmd starts jobs as their users)")
    folder = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))  # short: the munge socket path is limited
    folder.chmod(0o755)
    cluster = SlurmCluster(folder)
    try:
        cluster.write_config()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)

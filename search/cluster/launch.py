"""``search launch``: K workers per GPU (or per group of GPUs), watched, restarted, stopped cleanly.

Each worker is an ordinary ``search worker`` process pinned to its GPUs with
``CUDA_VISIBLE_DEVICES`` (an empty value on a machine without GPUs: CPU workers). The launcher
keeps what each worker prints in a log file per worker, follows the trial events each worker
appends to its own events file (``$SEARCH_EVENTS_FILE``, ``search/running/events.py``) and shows
one table: the GPU, the pid, the running trial, its epoch and last value, and the restarts.

- A worker that dies (killed, crashed) is restarted after a back-off (1, 2, 4, ... 60 s); one
  that keeps dying is given up after ``max_restarts`` restarts. A worker that stops with a user
  error (exit 2: bad spec, missing data) is not restarted: it would fail the same way.
- Ctrl-C or SIGTERM: every worker gets SIGTERM once; each fails its running trial and re-queues
  it at once (``search/running/shutdown.py``), then exits. A worker still alive after ``stop_timeout``
  seconds is killed (its trial is then re-queued by the heartbeat). No trial is left RUNNING.
- The launcher itself killed (SIGKILL, OOM killer): on Linux each worker gets SIGHUP from the
  kernel and stops the same clean way (``Shutdown.stop_with_parent``).
- The storage URL reaches the workers through ``$SEARCH_STORAGE``, never their command line
  (where ``ps`` would show its password).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from search.running.events import ENDED, EVENTS_ENV, TrialEvent, follow
from search.running.shutdown import LAUNCHER_ENV

USER_ERROR, INTERRUPTED = 2, 130
MAX_BACKOFF = 60.0


class LaunchError(Exception):
    """Bad --gpus or a GPU count that does not divide into trials: one line, exit 2."""


# --- which GPUs -------------------------------------------------------------------------------


def detect_gpus() -> list[str]:
    """The GPUs this machine offers: $CUDA_VISIBLE_DEVICES if set, else nvidia-smi, else torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30, check=True).stdout
            return [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    import torch  # slow to import; only when nvidia-smi cannot say

    return [str(i) for i in range(torch.cuda.device_count())]


def parse_gpus(value: str) -> list[str]:
    """``all``, ``none`` (CPU workers) or a comma-separated list of GPU ids."""
    value = value.strip()
    if value == "all":
        return detect_gpus()
    if value in ("", "none", "cpu"):
        return []
    ids = [g.strip() for g in value.split(",")]
    if not all(re.fullmatch(r"\d+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+", g) for g in ids):
        raise LaunchError(f"--gpus {value!r}: expected all, none, or GPU ids like 0,1,2,3")
    if len(set(ids)) != len(ids):
        raise LaunchError(f"--gpus {value!r}: a GPU is listed twice")
    return ids


def slots(gpus: Sequence[str], *, gpus_per_trial: int, per_gpu: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES of every worker: ``per_gpu`` workers per group of ``gpus_per_trial``."""
    if not gpus:
        return [""] * per_gpu
    if len(gpus) % gpus_per_trial:
        raise LaunchError(f"{len(gpus)} GPUs ({','.join(gpus)}) do not divide into trials of {gpus_per_trial} GPUs")
    groups = [",".join(gpus[i:i + gpus_per_trial]) for i in range(0, len(gpus), gpus_per_trial)]
    return [group for group in groups for _ in range(per_gpu)]


# --- one worker -------------------------------------------------------------------------------


@dataclass
class Worker:
    index: int
    devices: str  # CUDA_VISIBLE_DEVICES; "" = CPU
    log_path: Path
    events_path: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    restart_at: float | None = None
    state: str = "starting"  # starting, running, restarting, done, stopped, gave up, user error
    trial: str = "—"
    epoch: str = "—"
    value: str = "—"
    finished: int = 0
    last_line: str = ""
    reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def gpu(self) -> str:
        return self.devices or "cpu"

    @property
    def pid(self) -> str:
        return str(self.proc.pid) if self.proc else "—"


class Launcher:
    def __init__(self, worker_args: list[str], devices: list[str], *, storage_url: str | None, log_dir: Path,
                 max_restarts: int, stop_timeout: float, console: Console) -> None:
        self.worker_args, self.storage_url = worker_args, storage_url
        self.max_restarts, self.stop_timeout, self.console = max_restarts, stop_timeout, console
        log_dir.mkdir(parents=True, exist_ok=True)
        self.workers = [Worker(i, d, log_dir / f"worker-{i}.log", log_dir / f"worker-{i}.events.jsonl")
                        for i, d in enumerate(devices)]
        self.stopping = False
        self._lock = threading.Lock()

    # -- processes --

    def _start(self, w: Worker) -> None:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": w.devices, "PYTHONUNBUFFERED": "1", "COLUMNS": "200",
               LAUNCHER_ENV: str(os.getpid()),  # the worker stops cleanly if this process dies
               EVENTS_ENV: str(w.events_path)}
        if self.storage_url:
            env["SEARCH_STORAGE"] = self.storage_url
        log = open(w.log_path, "a")
        # Own session: a Ctrl-C in the terminal reaches the launcher only, which stops each worker once.
        w.proc = subprocess.Popen([sys.executable, "-m", "search.cli", "worker", *self.worker_args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  text=True, bufsize=1, start_new_session=True)
        w.state, w.trial, w.epoch, w.value, w.restart_at = "running", "—", "—", "—", None
        w.reader = threading.Thread(target=self._read, args=(w, w.proc, log), daemon=True)
        w.reader.start()
        self._say(f"worker {w.index} (GPU {w.gpu}) started: pid {w.proc.pid}, log {w.log_path}")

    def _read(self, w: Worker, proc: subprocess.Popen, log) -> None:
        """Keep the worker's output in its log (its last line says why it stopped); the table
        follows its events."""
        with log, follow(w.events_path, lambda event: self._on_event(w, event), from_end=True):
            for line in proc.stdout:
                log.write(line)
                if line.strip():
                    w.last_line = line.strip()

    def _on_event(self, w: Worker, event: TrialEvent) -> None:
        if event.kind == "started":
            w.trial, w.epoch, w.value = str(event.trial), "—", "—"
            self._say(f"worker {w.index}: trial {event.trial} started")
        elif event.kind == "epoch":
            w.trial, w.epoch, w.value = str(event.trial), str(event.step), f"{event.value:.4f}"
        elif event.kind in ENDED:
            w.finished += 1
            value = f" ({event.value:.4f})" if event.value is not None else ""
            reason = f": {event.reason}" if event.reason and event.kind != "complete" else ""
            self._say(f"worker {w.index}: trial {event.trial} {event.kind}{value}{reason}")

    def _say(self, text: str) -> None:
        with self._lock:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def _on_exit(self, w: Worker, code: int) -> None:
        if w.reader:
            w.reader.join(timeout=5)
        if self.stopping:
            w.state = "stopped"
            self._say(f"worker {w.index} stopped (exit {code})")
        elif code == 0:
            w.state = "done"
            self._say(f"worker {w.index} done")
        elif code == USER_ERROR:
            w.state = "user error"
            self._say(f"worker {w.index} stopped with a user error (not restarted): {w.last_line}")
        elif w.restarts >= self.max_restarts:
            w.state = "gave up"
            self._say(f"worker {w.index} gave up after {w.restarts} restarts (exit {code}): {w.last_line}")
        else:
            delay = min(2.0 ** w.restarts, MAX_BACKOFF)
            w.restarts += 1
            w.state, w.restart_at = "restarting", time.monotonic() + delay
            self._say(f"worker {w.index} died (exit {code}); restart {w.restarts} of {self.max_restarts} in {delay:g} s")

    def _stop_all(self) -> None:
        self.stopping = True
        alive = [w for w in self.workers if w.proc and w.proc.poll() is None]
        self._say(f"stopping {len(alive)} workers: their running trials are failed and re-queued")
        for w in self.workers:
            if w.state == "restarting":
                w.state = "stopped"
        for w in alive:
            w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for w in alive:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._say(f"worker {w.index} did not stop within {self.stop_timeout:g} s: killed "
                          "(the heartbeat re-queues its trial)")
                os.killpg(w.proc.pid, signal.SIGKILL)
                w.proc.wait()

    # -- the loop --

    def table(self) -> Table:
        table = Table(title="search launch")
        for col in ("worker", "GPU", "pid", "state", "trial", "epoch", "last value", "finished", "restarts"):
            table.add_column(col, justify="left" if col in ("state",) else "right")
        for w in self.workers:
            table.add_row(str(w.index), w.gpu, w.pid, w.state, w.trial, w.epoch, w.value, str(w.finished),
                          str(w.restarts))
        return table

    def run(self) -> int:
        requested = threading.Event()

        def on_signal(signum: int, frame: object) -> None:
            requested.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with Live(self.table(), console=self.console, auto_refresh=False,
                      redirect_stdout=False, transient=False) if self.console.is_terminal else _NoLive() as live:
                for w in self.workers:
                    self._start(w)
                while not requested.is_set():
                    for w in self.workers:
                        if w.state == "running" and w.proc.poll() is not None:
                            self._on_exit(w, w.proc.returncode)
                        if w.state == "restarting" and time.monotonic() >= w.restart_at:
                            self._start(w)
                    live.update(self.table(), refresh=True)
                    if all(w.state not in ("running", "restarting") for w in self.workers):
                        break
                    requested.wait(0.5)
                if requested.is_set():
                    self._stop_all()
                    for w in self.workers:
                        if w.proc and w.state == "running":
                            self._on_exit(w, w.proc.returncode)
                live.update(self.table(), refresh=True)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if not self.console.is_terminal:
            self.console.print(self.table())
        return self.exit_code(interrupted=requested.is_set())

    def exit_code(self, *, interrupted: bool) -> int:
        states = {w.state for w in self.workers}
        if "gave up" in states:
            return 1
        if "user error" in states:
            return USER_ERROR
        return INTERRUPTED if interrupted else 0


class _NoLive:
    """Stands in for ``rich.live.Live`` when the output is not a terminal (logs, CI): lines only."""

    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, *args: object, **kwargs: object) -> None:
        pass

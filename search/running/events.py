"""What a running trial tells the worker, as structured events rather than printed text.

One ``TrialEvent`` type carries every step of a trial's life: it started (with its parameters),
an epoch (or evaluation step) ended with a value, it was pruned, it failed, it completed. The same
events flow three ways:

- in a worker, from the trial runner to the live display (``search/running/display.py``);
- from rank 0 of a multi-GPU trial to its worker, through a file in the trial's job folder;
- from every worker of ``search launch`` to the launcher, through a file per worker that the
  launcher names in ``$SEARCH_EVENTS_FILE``.

A file of events holds one JSON object per line (``TrialEvent.to_json``); ``EventFile`` appends
them and ``follow`` reads them as they come, so no process parses another's console output.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

EVENTS_ENV = "SEARCH_EVENTS_FILE"  # set by `search launch`: where its worker appends its events

Kind = Literal["started", "epoch", "pruned", "failed", "complete"]
ENDED: tuple[Kind, ...] = ("pruned", "failed", "complete")


@dataclass(frozen=True)
class TrialEvent:
    kind: Kind
    trial: int | None  # the trial's number; None for a run outside a study (`search run`)
    step: int | None = None  # "epoch": the epoch, or the optimizer step when evaluating by steps
    value: float | None = None  # "epoch": the value reported; an ended trial: its final value, if any
    params: dict[str, Any] = field(default_factory=dict)  # "started": the tuned parameters
    reason: str | None = None  # "pruned" / "failed": why

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, {})}, default=str)

    @classmethod
    def from_json(cls, line: str) -> TrialEvent | None:
        """The event a line holds; None for a line that is not one (a torn last line)."""
        try:
            data = json.loads(line)
            return cls(**data) if isinstance(data, dict) and data.get("kind") else None
        except (ValueError, TypeError):
            return None


Sink = Callable[[TrialEvent], None]


class EventFile:
    """Appends events to a file, one line each, flushed at once (a sink)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def __call__(self, event: TrialEvent) -> None:
        line = event.to_json() + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())  # one write per line: appends from two processes never interleave
            finally:
                os.close(fd)


def fan_out(*sinks: Sink | None) -> Sink:
    """One sink that hands every event to each of ``sinks`` (None ones left out)."""
    present = [s for s in sinks if s is not None]

    def emit(event: TrialEvent) -> None:
        for sink in present:
            sink(event)

    return emit


def from_environment() -> Sink | None:
    """The event file ``search launch`` asked this worker to write, if any."""
    path = os.environ.get(EVENTS_ENV)
    return EventFile(path) if path else None


class follow:  # noqa: N801 - used as a context manager, like open()
    """Hand every event appended to ``path`` to ``sink`` from a background thread, until closed
    (then the events written up to that moment are all handed over). ``from_end``: only those
    appended from now on (a restarted worker's file already holds its earlier life)."""

    def __init__(self, path: Path | str, sink: Sink, *, poll_seconds: float = 0.1, from_end: bool = False) -> None:
        self.path, self.sink, self.poll_seconds = Path(path), sink, poll_seconds
        self._stop = threading.Event()
        self._offset = self.path.stat().st_size if from_end and self.path.exists() else 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> follow:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self._offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            event = TrialEvent.from_json(line)
            if event is not None:
                self.sink(event)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self._read()

"""The worker's live display: a progress bar for the running trial, a line per epoch and trial.

In a terminal the bar shows the trial's epoch, its step within the epoch and the time left of the
epoch. When the output is not a terminal (a log file, CI, a SLURM job's output) a bar cannot be
redrawn, so the display prints a progress line instead, at least every ``QUIET_LIMIT_S`` seconds
while a trial trains: never minutes of silence in a log.

It is a sink of ``TrialEvent``s (``search/running/events.py``): what it prints comes from the same
events that ``search launch`` reads, never the other way round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from search.running.events import TrialEvent
from search.spec import StudySpec


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


QUIET_LIMIT_S = 30.0  # without a terminal: the longest a training trial goes without a line


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class WorkerDisplay:
    """``n_trials``: this worker's trial budget, shown as "trial 3/10" (None: no budget).
    ``clock``: seconds, monotonic (the tests give their own)."""

    def __init__(self, spec: StudySpec, console: Console, *, n_trials: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.console = console
        self.best: float | None = None
        self.n_trials = n_trials
        self.clock = clock
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self._task: Any = None
        self._trial = -1
        self._started = 0  # trials this worker started
        self._lines = not console.is_terminal  # no bar to redraw: progress lines instead
        self._last_line = 0.0  # when the last line was printed (any line counts)
        self._epoch_start: tuple[int, float, int] | None = None  # (epoch, when, step) the rate is measured from

    def __enter__(self) -> WorkerDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def _against_target(self, value: float | None) -> str:
        t = self.spec.target.value
        return f"best {fmt(value)} / target {t:g}"

    def __call__(self, event: TrialEvent) -> None:
        if event.kind == "started":
            self.trial_started(event.trial, event.params)
        elif event.kind == "epoch":
            self.on_epoch(event.step, event.value)
        else:
            self.trial_ended(event)

    def _print(self, *args: Any, **kwargs: Any) -> None:
        self.console.print(*args, **kwargs)
        self._last_line = self.clock()

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self._trial = number
        self._started += 1
        self._epoch_start = None
        if self._task is not None:
            self.progress.remove_task(self._task)
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        count = f" ({self._started}/{self.n_trials} of this worker)" if self.n_trials else ""
        self._print(f"[dim]trial {number} starts{count}: {escape(shown)}")
        self._task = self.progress.add_task(f"trial {number} epoch 1", total=None, status=self._against_target(self.best))

    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        self.progress.update(self._task, description=f"trial {self._trial} epoch {epoch}", completed=step,
                             total=steps_per_epoch)
        now = self.clock()
        if self._epoch_start is None or self._epoch_start[0] != epoch:
            self._epoch_start = (epoch, now, step)
        if self._lines and now - self._last_line >= QUIET_LIMIT_S:
            self._print(f"trial {self._trial} epoch {epoch}: step {step}/{steps_per_epoch}"
                        f"{self._eta(now, step, steps_per_epoch)}", markup=False, highlight=False)

    def _eta(self, now: float, step: int, steps_per_epoch: int) -> str:
        """", about 2m10s left in this epoch" from the rate since the epoch's first step seen."""
        _, since, first = self._epoch_start  # type: ignore[misc]
        done = step - first
        if done <= 0 or now <= since:
            return ""
        return f", about {duration((steps_per_epoch - step) * (now - since) / done)} left in this epoch"

    def on_epoch(self, epoch: int, value: float) -> None:
        # "best" is the best completed trial's value: an epoch of a running trial is not a result.
        self._print(f"trial {self._trial} epoch {epoch}: {self.spec.metric.name} {value:.4f}  "
                    f"({self._against_target(self.best)})", markup=False)

    def trial_ended(self, event: TrialEvent) -> None:
        # The metric's name, the reason (an exception's text): shown as text, never read as markup.
        value = escape(f"{self.spec.metric.name} {event.value:.4f}") if event.value is not None else ""
        if event.kind == "complete":
            outcome = f"[green]trial {event.trial} complete[/]: {value}"
        else:
            reason = escape((event.reason or event.kind).removeprefix("pruned "))
            style = "yellow" if event.kind == "pruned" else "red"
            outcome = f"[{style}]trial {event.trial} {event.kind}[/] {reason}" + (f" ({value})" if value else "")
        reached = "  [bold green]target reached" if self.best is not None and self.spec.reached(self.best) else ""
        self._print(f"{outcome}  ({self._against_target(self.best)}){reached}")

"""The worker's live display: a progress bar for the running trial, a line per epoch and trial.

It is a sink of ``TrialEvent``s (``search/running/events.py``): what it prints comes from the same
events that ``search launch`` reads, never the other way round.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from search.running.events import TrialEvent
from search.spec import StudySpec


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


class WorkerDisplay:
    def __init__(self, spec: StudySpec, console: Console) -> None:
        self.spec = spec
        self.console = console
        self.best: float | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console, transient=True,
        )
        self._task: Any = None
        self._trial = -1

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

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self._trial = number
        if self._task is not None:
            self.progress.remove_task(self._task)
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        self.console.print(f"[dim]trial {number} starts: {escape(shown)}")
        self._task = self.progress.add_task(f"trial {number} epoch 1", total=None, status=self._against_target(self.best))

    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        self.progress.update(self._task, description=f"trial {self._trial} epoch {epoch}", completed=step,
                             total=steps_per_epoch)

    def on_epoch(self, epoch: int, value: float) -> None:
        # "best" is the best completed trial's value: an epoch of a running trial is not a result.
        self.console.print(f"trial {self._trial} epoch {epoch}: {self.spec.metric.name} {value:.4f}  "
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
        self.console.print(f"{outcome}  ({self._against_target(self.best)}){reached}")

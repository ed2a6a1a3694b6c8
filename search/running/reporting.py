"""The reporters the trial runner wraps around the caller's, and one training attempt.

- ``EmittingReporter``: tells the caller's event sink of every epoch and remembers the steps
  reported (an out-of-memory retry does not report them again);
- ``SkipReported``: a retry's reporter, silent for the steps the failed attempt reported;
- ``train_once``: one training in this process, with both; what a torchrun rank runs too.
"""

from __future__ import annotations

from typing import Any

from objectives import Objective, Reporter
from search.running.events import Sink, TrialEvent


class Forwarding(Reporter):
    """A reporter that hands everything to ``inner``, checkpoint settings included; the two
    below change what ``report`` does."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self.checkpoint_dir = inner.checkpoint_dir
        self.keep_checkpoint, self.resume_any_config = inner.keep_checkpoint, inner.resume_any_config

    def report(self, value: float, step: int) -> None:
        self.inner.report(value, step)

    def should_prune(self) -> bool:
        return self.inner.should_prune()

    def set_user_attr(self, key: str, value: Any) -> None:
        self.inner.set_user_attr(key, value)

    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        self.inner.on_step(epoch, step, steps_per_epoch)


class EmittingReporter(Forwarding):
    """Tells ``emit`` of every epoch reported, and remembers the steps reported."""

    def __init__(self, inner: Reporter, emit: Sink | None, trial: int | None) -> None:
        super().__init__(inner)
        self.emit, self.trial = emit, trial
        self.steps: set[int] = set()

    def report(self, value: float, step: int) -> None:
        self.inner.report(value, step)
        self.steps.add(step)
        if self.emit:
            self.emit(TrialEvent("epoch", self.trial, step=step, value=value))


class SkipReported(Forwarding):
    """Does not report again the steps a failed attempt already reported."""

    def __init__(self, inner: Reporter, skip_steps: set[int]) -> None:
        super().__init__(inner)
        self.skip_steps = skip_steps

    def report(self, value: float, step: int) -> None:
        if step not in self.skip_steps:
            self.inner.report(value, step)


def train_once(objective: Objective, params: dict[str, Any], reporter: Reporter, *,
               skip_steps: set[int] = frozenset(), on_test: bool = False) -> dict[str, Any]:
    """One training in this process (a rank's share of it under torchrun); no retry."""
    return objective.train(params, SkipReported(reporter, skip_steps) if skip_steps else reporter, on_test=on_test)

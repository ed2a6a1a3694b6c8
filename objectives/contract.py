from __future__ import annotations

from pathlib import Path
from typing import Any


class SetupError(Exception):
    """Missing data or model, or a bad parameter: the user fixes it; one line says how."""


class Reporter:
    """What an objective tells the outside world while it trains.

    An ``optuna.Trial`` has the first three methods; the worker wraps one in a subclass that
    also drives the live display. The base class reports to nobody (``search run`` and tests).
    """

    #: Where a resumable objective keeps this run's checkpoint; None: nowhere (not resumable).
    #: A re-run of a dead worker's trial gets the same folder as the trial it replaces.
    checkpoint_dir: Path | None = None
    #: A checkpoint there written by another configuration: False (a trial, whose re-run has the
    #: same parameters by construction) ignores it and starts over; True (``search run --resume``)
    #: continues it with this run's hyperparameters (what carries over: objectives/engine/loop.py).
    resume_any_config: bool = False
    #: False: the objective deletes the checkpoint once the run has ended (completed, pruned or
    #: failed); only a killed or interrupted run leaves it, for its re-run. ``search run
    #: --checkpoint-dir`` keeps it, to be continued later.
    keep_checkpoint: bool = False

    def report(self, value: float, step: int) -> None:
        pass

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: Any) -> None:
        pass

    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        """Called after every optimizer step; keep it cheap."""


class TrialReporter(Reporter):
    """Reports into an Optuna trial (or anything with report/should_prune/set_user_attr)."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def report(self, value: float, step: int) -> None:
        self.trial.report(value, step)

    def should_prune(self) -> bool:
        return self.trial.should_prune()

    def set_user_attr(self, key: str, value: Any) -> None:
        self.trial.set_user_attr(key, value)

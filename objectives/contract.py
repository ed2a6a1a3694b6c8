"""The objective contract: what a task module defines, and what it tells the outside world.

An objective module defines (``ObjectiveModule``, checked by ``Objective.from_module`` when the
objective is loaded: a missing or ill-typed part is refused in one line that names it):

- ``METRIC``: the name of the value ``train`` returns (and reports every epoch);
- ``PARAMS``: every parameter it takes, with its default (a spec may fix or search any of them);
- ``prepare(params)``: load data and model now, raising ``SetupError`` for what the user must fix,
  so that a worker fails before any study is touched; the warm caches then serve every trial;
- ``train(params, reporter=None, *, on_test=False) -> dict``: one training run; the result holds
  ``METRIC`` (validation) and, with ``on_test``, ``"test": {METRIC: ..., "n_items": ...}``.

and optionally:

- ``FOLDS``: folds that confirmation trains on, once each (``params["fold"]``);
- ``EXTRA_METRICS``: other figures it records on the trial, which a spec's ``references`` may name;
- ``compute_baseline(params) -> {"value", "slices", "detail"}``: a baseline measured on the study's
  own data when the study is created (``baseline: {computed: true}`` in a spec);
- ``RESUMABLE = True``: it checkpoints into ``reporter.checkpoint_dir`` and continues from there.

Per-slice figures go in the result and on the trial under keys ``per_<what>`` as
``{slice: {METRIC: value or None, "n": items}}`` (None: the slice is absent from the split); the
dashboard and confirmation read them. An objective knows nothing of storages or the CLI.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol


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
    #: continues it with this run's hyperparameters (what carries over: objectives/engine/checkpoint.py).
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


class ObjectiveModule(Protocol):
    """The required part of an objective module (the optional parts: see the module docstring)."""

    METRIC: str
    PARAMS: dict[str, Any]

    def prepare(self, params: dict[str, Any]) -> None: ...

    def train(self, params: dict[str, Any], reporter: Reporter | None = None, *,
              on_test: bool = False) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Objective:
    """A loaded objective, its contract checked: what the service calls and reads."""

    name: str
    metric: str
    params: Mapping[str, Any]  # every parameter with its default
    prepare: Callable[[dict[str, Any]], None]
    train: Callable[..., dict[str, Any]]
    folds: tuple[int | None, ...] = (None,)  # (None,): confirmation trains once, on the fixed fold
    extra_metrics: tuple[str, ...] = ()
    compute_baseline: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    resumable: bool = False

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every figure it records on a trial: the metric first."""
        return (self.metric, *self.extra_metrics)

    @classmethod
    def from_module(cls, name: str, module: ModuleType | Any) -> Objective:
        """Check ``module`` against the contract; ``SetupError`` names the first part that is wrong."""

        def fail(part: str, what: str) -> SetupError:
            return SetupError(f"objective {name}: {part}: {what}")

        metric = getattr(module, "METRIC", None)
        if not isinstance(metric, str) or not metric:
            raise fail("METRIC", "missing; a module-level str naming the value train() returns")
        params = getattr(module, "PARAMS", None)
        if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
            raise fail("PARAMS", "missing; a module-level dict of every parameter and its default")
        for part in ("prepare", "train"):
            if not callable(getattr(module, part, None)):
                raise fail(part, "missing; see the objective contract (objectives/contract.py)")
        train_params = inspect.signature(module.train).parameters
        if len(train_params) < 2 or "on_test" not in train_params:
            raise fail("train", "must take (params, reporter=None, *, on_test=False)")
        folds = getattr(module, "FOLDS", (None,))
        if not isinstance(folds, Iterable) or not all(f is None or isinstance(f, int) for f in folds):
            raise fail("FOLDS", "must be a sequence of fold numbers")
        extra = getattr(module, "EXTRA_METRICS", ())
        if isinstance(extra, str) or not isinstance(extra, Iterable) or not all(isinstance(m, str) for m in extra):
            raise fail("EXTRA_METRICS", "must be a tuple of figure names")
        baseline = getattr(module, "compute_baseline", None)
        if baseline is not None and not callable(baseline):
            raise fail("compute_baseline", "must be a function (params) -> {value, slices, detail}")
        resumable = getattr(module, "RESUMABLE", False)
        if not isinstance(resumable, bool):
            raise fail("RESUMABLE", "must be True or False")
        return cls(name=name, metric=metric, params=dict(params), prepare=module.prepare, train=module.train,
                   folds=tuple(folds), extra_metrics=tuple(extra), compute_baseline=baseline, resumable=resumable)

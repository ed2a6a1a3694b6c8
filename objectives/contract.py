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

- ``ACCEPTS``: the values a parameter takes, for those where a value of the right type can still
  be wrong (``{"learning_rate": Range(gt=0), "mixed_precision": OneOf("auto", "no", "bf16")}``);
  a spec, ``--set`` and the known configurations are checked against it (``Objective.check``)
  before anything is stored. Whatever the declaration, a number must be finite and of its
  default's type;
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

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Range:
    """A finite number within bounds: ``Range(gt=0)`` (a learning rate), ``Range(ge=1)`` (a batch
    size; on an int parameter only integers), ``Range(ge=0, lt=1)`` (a dropout probability).
    ``optional``: None is accepted too (where the parameter's None means "the model's own")."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    integer: bool = False
    optional: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if not is_number(value) or not math.isfinite(value) or (self.integer and not isinstance(value, int)):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            bounds = f" in {low}, {high}"
        elif low:
            bounds = f" {'>=' if self.ge is not None else '>'} {low[1:]}"
        elif high:
            bounds = f" {'<=' if self.le is not None else '<'} {high[:-1]}"
        else:
            bounds = ""
        return f"{kind}{bounds}{' or null' if self.optional else ''}"


@dataclass(frozen=True, init=False)
class OneOf:
    """One of a few values: ``OneOf("auto", "no", "bf16", "fp16")``; a value matches one of the
    same type only (``True`` is not ``1``)."""

    choices: tuple[Any, ...]

    def __init__(self, *choices: Any) -> None:
        object.__setattr__(self, "choices", choices)

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(choice) and value == choice for choice in self.choices)

    def __str__(self) -> str:
        return "one of " + ", ".join("null" if c is None else repr(c) for c in self.choices)


#: What ``ACCEPTS`` maps a parameter to.
Rule = Range | OneOf


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same_type(value: Any, default: Any) -> bool:
    """Is ``value`` of the type of ``default`` (an int is a float; a bool is not an int)?"""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return is_number(value)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, int):
        return "an integer"
    return {str: "a string", list: "a list", dict: "a mapping"}.get(type(default), f"a {type(default).__name__}")


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
    accepts: Mapping[str, Rule] = field(default_factory=dict)  # the values a parameter takes (ACCEPTS)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Every figure it records on a trial: the metric first."""
        return (self.metric, *self.extra_metrics)

    def check(self, name: str, value: Any) -> str | None:
        """What is wrong with ``value`` for parameter ``name`` (one of ``params``), or None: not of
        its default's type (a None default takes any), not finite, or not what ``accepts`` says."""
        default, rule = self.params[name], self.accepts.get(name)
        if default is not None and not _same_type(value, default) and not (rule and rule.accepts(value)):
            return f"{value!r} is not {rule or _type_name(default)}"
        if is_number(value) and not math.isfinite(value):
            return f"{value!r} is not a finite number"
        if rule is not None and not rule.accepts(value):
            return f"{value!r} is not {rule}"
        return None

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
                   folds=tuple(folds), extra_metrics=tuple(extra), compute_baseline=baseline, resumable=resumable,
                   accepts=_accepts(getattr(module, "ACCEPTS", {}), params, fail))


def _accepts(declared: Any, params: Mapping[str, Any], fail: Callable[[str, str], SetupError]) -> dict[str, Rule]:
    """A module's ``ACCEPTS``, checked: a rule per parameter it takes, each accepting the default.
    A ``Range`` on an int parameter counts integers only."""
    if not isinstance(declared, Mapping):
        raise fail("ACCEPTS", "must be a dict of parameter names to Range(...) or OneOf(...)")
    accepts = {}
    for name, rule in declared.items():
        if name not in params:
            raise fail(f"ACCEPTS.{name}", "not a parameter in PARAMS")
        if not isinstance(rule, (Range, OneOf)):
            raise fail(f"ACCEPTS.{name}", f"{rule!r} is not a Range(...) or OneOf(...)")
        default = params[name]
        if isinstance(rule, Range) and _same_type(default, 0) and not rule.integer:
            rule = dataclasses.replace(rule, integer=True)
        if not rule.accepts(default):
            raise fail(f"ACCEPTS.{name}", f"the default {default!r} is not {rule}")
        accepts[name] = rule
    return accepts

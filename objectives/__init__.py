"""Objectives: one module per task, each a readable training run that reports every epoch.

An objective module defines ``METRIC`` (the name of the value it returns), ``PARAMS`` (every
parameter it takes, with its default), ``prepare(params)`` (load data and model, raising
``SetupError``) and ``train(params, reporter) -> dict``. Per-slice figures go in the result
and on the trial under keys ``per_<what>`` as ``{slice: {METRIC: value or None, "n": items}}``
(None: the slice is absent from the split); the dashboard and confirmation read them. Optional: ``FOLDS`` (confirmation trains
once per fold), ``EXTRA_METRICS`` (other figures it records on the trial, which a spec's
``references`` may name) and ``compute_baseline(params) -> dict`` (a baseline measured on the
study's own data when the study is created). It knows nothing of storages or the CLI.

Every public module of this package is an objective: adding a task is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from objectives._reporting import Reporter, SetupError, TrialReporter

OBJECTIVES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))

__all__ = ["OBJECTIVES", "Reporter", "SetupError", "TrialReporter", "get_objective"]


def get_objective(name: str) -> ModuleType:
    if name not in OBJECTIVES:
        raise SetupError(f"unknown objective {name!r} (known: {', '.join(OBJECTIVES)})")
    return importlib.import_module(f"objectives.{name}")

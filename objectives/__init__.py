"""Objectives: one module per task, each a readable training run that reports every epoch.

An objective module defines ``METRIC`` (the name of the value it returns), ``PARAMS`` (every
parameter it takes, with its default), ``prepare(params)`` (load data and model, raising
``SetupError``) and ``train(params, reporter) -> dict``. It knows nothing of storages or the CLI.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from objectives._reporting import Reporter, SetupError, TrialReporter

OBJECTIVES = ("recipe_mpr",)

__all__ = ["OBJECTIVES", "Reporter", "SetupError", "TrialReporter", "get_objective"]


def get_objective(name: str) -> ModuleType:
    if name not in OBJECTIVES:
        raise SetupError(f"unknown objective {name!r} (known: {', '.join(OBJECTIVES)})")
    return importlib.import_module(f"objectives.{name}")

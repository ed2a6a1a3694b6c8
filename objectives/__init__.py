"""Objectives: the built-in tasks, the shared training engine, and the contract they follow.

- ``contract``: what an objective is (``Objective``), what it tells the outside world while it
  trains (``Reporter``) and the error a user fixes (``SetupError``);
- ``engine/``: the training loop every built-in task shares (seeding, optimisation, mixed
  precision, data-parallel training, checkpoints, evaluation each epoch, reporting);
- a module per single-file task (``recipe_mpr``, ``lyrics_genre``, ``ag_news``), a package per
  task with modules of its own (``aste/``, ``babylm/``); ``_classification``, ``_data`` and
  ``_models`` serve several tasks.

An objective knows nothing of storages or the CLI.
"""

from __future__ import annotations

import importlib

from objectives.contract import Objective, ObjectiveModule, Reporter, SetupError, TrialReporter

#: The built-in tasks, by the name a spec's ``objective:`` gives.
OBJECTIVES = ("ag_news", "aste", "babylm", "lyrics_genre", "recipe_mpr")

__all__ = ["OBJECTIVES", "Objective", "ObjectiveModule", "Reporter", "SetupError", "TrialReporter", "load_objective"]


def load_objective(name: str) -> Objective:
    """The objective a spec names, its contract checked (``SetupError`` in one line otherwise)."""
    if name not in OBJECTIVES:
        raise SetupError(f"unknown objective {name!r} (known: {', '.join(OBJECTIVES)})")
    return Objective.from_module(name, importlib.import_module(f"objectives.{name}"))

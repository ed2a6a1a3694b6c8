"""The training engine every built-in objective shares: ``fit`` (``loop.py``) and its parts.

The public names are loaded on first use, so that reading a checkpoint's summary or a step log
(the CLI, the dashboard) imports neither transformers nor optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"TrainingArguments": "arguments", "fit": "loop", "predict": "loop", "EvaluationSchedule": "loop",
          "device": "precision", "autocast_dtype": "precision", "to_device": "precision"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)

"""A training run's checkpoint: everything needed to continue it where it stopped.

One checkpoint per run folder, replaced atomically (write, then rename): ``checkpoint.pt`` holds
the model, optimizer, scheduler and gradient-scaler states, the random-number states, the data
position, the evaluations so far and the per-step log; ``checkpoint.json`` says in words what it
is (step, epoch, parameters, time) for people and for the CLI. Only tensors and plain Python
values are stored, so loading needs no pickle trust (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "checkpoint.json"


def discard(reporter: Any) -> None:
    """Delete a finished run's checkpoint folder unless the reporter keeps it."""
    if reporter.checkpoint_dir is not None and not reporter.keep_checkpoint:
        shutil.rmtree(reporter.checkpoint_dir, ignore_errors=True)


def has_checkpoint(folder: Path | str | None) -> bool:
    return folder is not None and (Path(folder) / CHECKPOINT_FILE).is_file()


def read_summary(folder: Path | str) -> dict[str, Any]:
    """What the folder's checkpoint is ({} if its summary is missing or unreadable)."""
    try:
        return json.loads((Path(folder) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def save(folder: Path | str, state: dict[str, Any], summary: dict[str, Any]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{CHECKPOINT_FILE}.{os.getpid()}"
    torch.save(state, partial)
    os.replace(partial, folder / CHECKPOINT_FILE)
    summary = {**summary, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    partial = folder / f".{SUMMARY_FILE}.{os.getpid()}"
    partial.write_text(json.dumps(summary, indent=1, default=str))
    os.replace(partial, folder / SUMMARY_FILE)


def load(folder: Path | str) -> dict[str, Any]:
    return torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """Every global random-number state a training step draws from, as plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))

"""A training run's checkpoint: everything needed to continue it where it stopped.

One checkpoint per run folder, replaced atomically (write, then rename): ``checkpoint.pt`` holds
the model, optimizer, scheduler and gradient-scaler states, the random-number states, the data
position, the evaluations so far and the per-step log; ``checkpoint.json`` says in words what it
is (step, epoch, parameters, time) for people and for the CLI. Only tensors and plain Python
values are stored, so loading needs no pickle trust (``torch.load(weights_only=True)``).

``RunCheckpoint`` is the training loop's side of it (used only with ``save_strategy``): what a
resumed run carries over is the weights, the optimizer moments, the gradient scaler, the step
count, the evaluations so far and the step log; with the same configuration also the scheduler,
the data order and every random-number state (it continues exactly); with new hyperparameters
(``Reporter.resume_any_config``) the optimizer takes the new learning rate, decay and betas, the
schedule is the new one positioned at the saved step, and the data continue in the saved epoch's
order after as many examples as were seen.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from objectives.attributes import TrialAttr
from objectives.contract import Reporter, SetupError
from objectives.engine import ddp
from objectives.engine.steplog import StepLog

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


@dataclass
class Position:
    """Where a run stands: optimizer steps done, the epoch in progress, the micro-batches of it
    already trained on, and the evaluations so far."""

    step: int = 0
    epoch: int = 1
    batch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class RunCheckpoint:
    """One training run's checkpoint in ``folder``: ``resume`` at the start, ``save`` after each
    evaluation. ``params`` (all the run's parameters) tell a checkpoint of this configuration
    from one of another."""

    def __init__(self, folder: Path | str, params: dict[str, Any], *, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
                 generator: torch.Generator, step_log: StepLog | None, batch_size: int, accumulation: int,
                 total_steps: int) -> None:
        self.folder, self.params = folder, params
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.generator, self.step_log = generator, step_log
        self.batch_size, self.accumulation, self.total_steps = batch_size, accumulation, total_steps

    def save(self, position: Position, generator_state: torch.Tensor) -> None:
        """Rank 0 writes; ``generator_state`` gives the order of ``position.epoch``'s data."""
        if ddp.active() and torch.distributed.get_rank() != 0:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "generator": generator_state, "rng": rng_state(),
                 "step": position.step, "epoch": position.epoch, "batch": position.batch,
                 "examples": position.batch * self.batch_size, "history": position.history,
                 "params": self.params, "step_log": self.step_log.state_dict() if self.step_log is not None else None}
        save(self.folder, state, {"step": position.step, "total_steps": self.total_steps, "epoch": position.epoch,
                                  "params": self.params})

    def resume(self, reporter: Reporter, batches_per_epoch: int) -> Position:
        """Load the folder's checkpoint, if any, into this run's objects; where to go on from."""
        if not has_checkpoint(self.folder):
            return Position()
        state = load(self.folder)
        saved = state["params"]
        changed = {k: [saved.get(k), self.params.get(k)] for k in sorted(set(self.params) | set(saved))
                   if saved.get(k) != self.params.get(k)}
        if changed and not reporter.resume_any_config:
            # Another configuration's checkpoint (a reused folder): start over; the first save replaces it.
            reporter.set_user_attr(TrialAttr.CHECKPOINT_IGNORED, f"{self.folder}: written by another configuration "
                                                                 f"(differs in {', '.join(list(changed)[:5])})")
            return Position()
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise SetupError(f"the checkpoint in {self.folder} does not fit this model (a size changed?): "
                             f"{str(e).strip().splitlines()[0]}") from None
        settings = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.step_log is not None and state["step_log"] is not None:
            self.step_log.load_state_dict(state["step_log"])
        position = Position(state["step"], state["epoch"], state["batch"], state["history"])
        self.generator.set_state(state["generator"])  # the saved epoch's order
        if changed:
            # New hyperparameters: this run's learning rate, decay and betas, and its schedule at the
            # saved step; the data go on after as many examples as the saved run had seen.
            for group, fresh in zip(self.optimizer.param_groups, settings):
                group.update(fresh)
            self.scheduler.last_epoch = position.step - 1
            with warnings.catch_warnings():  # "scheduler before optimizer step": positioning it, not stepping
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
            accum = self.accumulation
            position.batch = state["examples"] // self.batch_size // accum * accum
            if position.batch >= batches_per_epoch:
                position.epoch, position.batch = position.epoch + 1, 0
            reporter.set_user_attr(TrialAttr.RESUMED_WITH_CHANGES, dict(list(changed.items())[:20]))
        else:
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
        reporter.set_user_attr(TrialAttr.RESUMED_FROM_STEP, position.step)
        for entry in position.history:  # the evaluations before the checkpoint, on this record too
            reporter.report(entry["value"], entry["step"] if "step" in entry else entry["epoch"])
        if position.history:
            reporter.set_user_attr(TrialAttr.EPOCHS, position.history)
        return position


def batches_after(loader: DataLoader, skip: int) -> DataLoader:
    """``loader`` without its first ``skip`` batches (resuming mid-epoch): the same order, and the
    skipped batches are never loaded."""
    if not skip:
        return loader
    return DataLoader(loader.dataset, batch_sampler=_SkipFirst(loader.batch_sampler, skip),
                      collate_fn=loader.collate_fn, generator=loader.generator, pin_memory=loader.pin_memory)


class _SkipFirst(torch.utils.data.Sampler):
    def __init__(self, batches: Any, skip: int) -> None:
        self.batches, self.skip = batches, skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.batches) - self.skip, 0)

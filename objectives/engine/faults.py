"""Fault injection for the engine, so the recovery paths are tested on the real training loop.

Each fault is off unless its environment variable is set (a comma-separated list of key=value):

- ``SEARCH_FAULT_OOM="step=S[,above_batch=B]"``: raise ``torch.OutOfMemoryError`` at the S-th
  optimizer step of a run (1-based, counted over the whole run) when the micro-batch
  (``per_device_train_batch_size``) is above B (default 0: always). With ``above_batch=8`` a
  run at batch 16 runs out of memory and its retry at batch 8 fits; with ``above_batch=4``
  the retry does not fit either.
- ``SEARCH_FAULT_NAN="epoch=E"``: the training loss is NaN from epoch E on (the engine prunes).
- ``SEARCH_FAULT_ERROR="rank=R,epoch=E[,step=S][,batch=B]"``: raise ``RuntimeError`` on rank R
  only (0 outside a process group) at step S (default 1) of epoch E, in runs whose micro-batch
  is B (default: any): one rank of a data-parallel trial failing while the others wait in a
  collective.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def _setting(name: str) -> dict[str, int] | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return {k.strip(): int(v) for k, v in (item.split("=", 1) for item in raw.split(","))}
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected comma-separated key=integer pairs") from None


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def before_step(*, epoch: int, step_in_epoch: int, step_in_run: int, micro_batch: int) -> None:
    """Called by the engine before each optimizer step; raises the configured fault, if any."""
    oom = _setting("SEARCH_FAULT_OOM")
    if oom and step_in_run == oom.get("step", 1) and micro_batch > oom.get("above_batch", 0):
        raise torch.OutOfMemoryError(
            f"CUDA out of memory at step {step_in_run} with micro-batch {micro_batch} (injected by SEARCH_FAULT_OOM)")
    error = _setting("SEARCH_FAULT_ERROR")
    if (error and _rank() == error.get("rank", 0) and epoch == error.get("epoch", 1)
            and step_in_epoch == error.get("step", 1) and micro_batch == error.get("batch", micro_batch)):
        raise RuntimeError(f"injected failure on rank {_rank()} at epoch {epoch} step {step_in_epoch} "
                           "(SEARCH_FAULT_ERROR)")


def loss(value: torch.Tensor, *, epoch: int) -> torch.Tensor:
    """The training loss, or NaN from the configured epoch on."""
    nan = _setting("SEARCH_FAULT_NAN")
    if nan and epoch >= nan.get("epoch", 1):
        return value * float("nan")
    return value

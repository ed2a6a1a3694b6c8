"""Out of GPU memory: the worker retries the trial with half the micro-batch, same effective batch.

A configuration whose micro-batch does not fit is not a bad configuration: halving
``per_device_train_batch_size`` and doubling ``gradient_accumulation_steps`` trains on the same
effective batch with half the activation memory. The retry runs in the same worker, once; it is
recorded on the trial (``TrialAttr.OOM_RETRY``). When even that does not fit, or the
micro-batch cannot be halved exactly (odd, or 1), the trial fails with the reason and the worker
goes on with the next trial.

Epochs reported before the failure stay as they were stored: the retry does not report them a
second time (Optuna keeps the first value of a step anyway), it reports the epochs after them.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import torch

from objectives import Reporter
from objectives.attributes import TrialAttr

BATCH, ACCUMULATION = "per_device_train_batch_size", "gradient_accumulation_steps"


def halved(params: dict[str, Any]) -> dict[str, Any] | None:
    """The same effective batch at half the micro-batch, or None when it cannot be halved exactly."""
    batch, accumulation = params.get(BATCH), params.get(ACCUMULATION, 1)
    if not isinstance(batch, int) or not isinstance(accumulation, int) or batch < 2 or batch % 2:
        return None
    return {**params, BATCH: batch // 2, ACCUMULATION: accumulation * 2}


def _release_gpu_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_retrying_oom(train: Callable[[dict[str, Any], set[int]], dict[str, Any]], params: dict[str, Any],
                       reporter: Reporter, reported_steps: Callable[[], set[int]]) -> dict[str, Any]:
    """``train(params, skip_steps)``; on ``torch.OutOfMemoryError`` once more with ``halved(params)``.

    ``reported_steps()`` says which steps the trial holds already (the retry skips reporting them).
    """
    try:
        return train(params, set())
    except torch.OutOfMemoryError as e:
        first_error = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
    # Outside the except block: the traceback no longer pins the failed attempt's tensors.
    _release_gpu_memory()
    smaller = halved(params)
    if smaller is None:
        raise torch.OutOfMemoryError(f"{first_error}; micro-batch {params.get(BATCH)} cannot be halved exactly, "
                                     "so no retry")
    reporter.set_user_attr(TrialAttr.OOM_RETRY, {
        "error": first_error[:300],
        "from": {BATCH: params[BATCH], ACCUMULATION: params.get(ACCUMULATION, 1)},
        "to": {BATCH: smaller[BATCH], ACCUMULATION: smaller[ACCUMULATION]},
    })
    try:
        return train(smaller, reported_steps())
    except torch.OutOfMemoryError as e:
        second_error = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
    _release_gpu_memory()
    raise torch.OutOfMemoryError(
        f"out of memory even at micro-batch {smaller[BATCH]} with accumulation {smaller[ACCUMULATION]} "
        f"(the same effective batch as {params[BATCH]} x {params.get(ACCUMULATION, 1)}): {second_error}")

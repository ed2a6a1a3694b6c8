"""The training loop every objective shares: seed, optimise, evaluate each epoch, report.

Argument names follow ``transformers.TrainingArguments`` so a config reads like a HF run.
The loop is plain torch: dynamic padding comes from the objective's collate function, mixed
precision from ``torch.autocast``, and the loss stays on the device until the epoch ends
(one host sync per epoch, none per step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import optuna
import torch
import transformers
from torch.utils.data import DataLoader

from objectives import _ddp, _faults
from objectives._reporting import Reporter


@dataclass(kw_only=True)
class TrainingArguments:
    learning_rate: float
    num_train_epochs: int
    per_device_train_batch_size: int
    per_device_eval_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # of all optimizer steps; used when warmup_steps is 0 (as in HF)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    seed: int = 42

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainingArguments:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(mixed_precision: str, dev: torch.device) -> torch.dtype | None:
    """The autocast dtype for a setting on a device; None means fp32.

    ``auto`` is bf16 on GPUs that have it, else fp16 on GPU, and fp32 on CPU (CPU autocast
    pays only on chips with bf16 units; ask for ``bf16`` explicitly there). fp16 needs CUDA.
    """
    if mixed_precision not in {"auto", "no", "bf16", "fp16"}:
        raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, not {mixed_precision!r}")
    if dev.type != "cuda":
        return torch.bfloat16 if mixed_precision == "bf16" else None
    if mixed_precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]


def _to(batch: Mapping[str, torch.Tensor], dev: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(dev, non_blocking=True) for k, v in batch.items()}


def _optimizer(model: torch.nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    # No weight decay on biases and norm weights (every parameter with fewer than 2 dims).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate, fused=device().type == "cuda")


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, dtype: torch.dtype | None) -> torch.Tensor:
    """Logits for every example of ``loader``, in order, on the CPU."""
    dev = next(model.parameters()).device
    model.eval()
    out = []
    # In a process group each rank scores its shard; the gathered logits drop the padding.
    for batch in _ddp.shard(loader) if _ddp.active() else loader:
        batch.pop("labels", None)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            out.append(model(**_to(batch, dev)).logits.float())
    if _ddp.active():
        return _ddp.gather_in_order(torch.cat(out), len(loader.dataset))
    return torch.cat(out).cpu()


def fit(
    model: torch.nn.Module,
    train_set: Any,
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    evaluate: Callable[[torch.nn.Module, torch.dtype | None], tuple[float, dict[str, Any]]],
    args: TrainingArguments,
    reporter: Reporter,
    *,
    started: float,
) -> tuple[float, dict[str, Any]]:
    """Train ``model``; after every epoch ``evaluate`` it, report, and obey the pruner.

    ``evaluate(model, dtype)`` returns the objective value and the attributes to store with it
    (per-slice metrics). Returns the last epoch's pair. Raises ``optuna.TrialPruned`` when the
    pruner says so or the loss stops being finite.
    """
    transformers.set_seed(args.seed)
    dev = device()
    dtype = autocast_dtype(args.mixed_precision, dev)
    model.to(dev)
    sampler = _ddp.train_sampler(train_set, args.seed)  # None outside a process group
    loader = DataLoader(
        train_set,
        batch_size=args.per_device_train_batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(args.seed),
        pin_memory=dev.type == "cuda",
    )
    accum = args.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(loader) / accum)
    optimizer = _optimizer(model, args)
    total_steps = steps_per_epoch * args.num_train_epochs
    warmup = args.warmup_steps or math.ceil(args.warmup_ratio * total_steps)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    reporter.set_user_attr("mixed_precision_used", str(dtype).removeprefix("torch.") if dtype else "fp32")
    reporter.set_user_attr("device", dev.type)
    train_model = _ddp.wrap(model, dev)  # DDP in a process group, else the model itself
    if _ddp.active():
        reporter.set_user_attr("world_size", _ddp.world_size())

    history: list[dict[str, float]] = []
    value, attrs = math.nan, {}
    for epoch in range(1, args.num_train_epochs + 1):
        epoch_start = time.perf_counter()
        train_model.train()
        loss_sum = torch.zeros((), device=dev)
        step = 0
        if sampler is not None:
            sampler.set_epoch(epoch)  # a new shuffle every epoch, the same on every rank
        for i, batch in enumerate(loader):
            stepping = (i + 1) % accum == 0 or i + 1 == len(loader)
            _faults.before_step(epoch=epoch, step_in_epoch=step + 1, step_in_run=(epoch - 1) * steps_per_epoch + step + 1,
                                micro_batch=args.per_device_train_batch_size)
            with _ddp.no_sync(train_model, skip=not stepping):  # DDP: all-reduce once per optimizer step
                with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                    loss = _faults.loss(train_model(**_to(batch, dev)).loss, epoch=epoch)
                scaler.scale(loss / accum).backward()
            loss_sum += loss.detach()
            if stepping:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if epoch == 1 and step == 1:
                    reporter.set_user_attr("seconds_to_first_step", round(time.perf_counter() - started, 4))
                reporter.on_step(epoch, step, steps_per_epoch)
        train_loss = _ddp.mean_over_ranks(loss_sum, len(loader))  # every rank decides on the same loss
        if not math.isfinite(train_loss):
            reporter.set_user_attr("end_reason", f"non-finite training loss at epoch {epoch}")
            raise optuna.TrialPruned(f"non-finite training loss at epoch {epoch}")
        value, attrs = evaluate(model, dtype)
        history.append(
            {"epoch": epoch, "train_loss": round(train_loss, 5), "value": value,
             "seconds": round(time.perf_counter() - epoch_start, 3)}
        )
        for key, item in attrs.items():
            reporter.set_user_attr(key, item)
        reporter.set_user_attr("epochs", history)
        reporter.report(value, epoch)
        if reporter.should_prune():
            reporter.set_user_attr("end_reason", f"pruned at epoch {epoch}")
            raise optuna.TrialPruned(f"pruned at epoch {epoch} with {value:.4f}")
    return value, attrs

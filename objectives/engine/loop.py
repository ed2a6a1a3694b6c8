"""The training loop every objective shares: seed, optimise, evaluate each epoch, report.

Argument names follow ``transformers.TrainingArguments`` so a config reads like a HF run.
The loop is plain torch: dynamic padding comes from the objective's collate function, mixed
precision from ``torch.autocast``, and the loss stays on the device until the epoch ends
(one host sync per epoch, none per step).

Options for long pre-training runs (BabyLM), each off by default: ``max_steps``, LAMB
(``optim``), a cosine schedule with a floor, evaluation every ``eval_steps`` optimizer steps,
a per-step log of loss and gradient norm with the seed's warning signs (``logging_steps``), and
resumable checkpoints (``save_strategy``). What a resumed run carries over: the weights, the
optimizer moments, the gradient scaler, the step count, the evaluations so far and the step log;
with the same configuration also the scheduler, the data order and every random-number state
(it continues exactly); with new hyperparameters (``Reporter.resume_any_config``) the optimizer
takes the new learning rate, decay and betas, the schedule is the new one positioned at the saved
step, and the data continue in the saved epoch's order after as many examples as were seen.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import optuna
import torch
import transformers
from torch.utils.data import DataLoader

from objectives.engine import checkpoint
from objectives.engine import ddp
from objectives.engine import faults
from objectives.engine.lamb import Lamb
from objectives.contract import Reporter, SetupError
from objectives.engine.steplog import StepLog, compact, warning_signs


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
    # Long pre-training runs (BabyLM); every default keeps the behaviour above.
    max_steps: int = -1  # > 0: train this many optimizer steps, repeating epochs as needed (HF)
    optim: str = "adamw"  # adamw | lamb
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lr_scheduler_type: str = "linear"  # linear | cosine | cosine_with_min_lr (HF names)
    min_lr_rate: float = 0.0  # cosine_with_min_lr: the floor, a fraction of learning_rate
    eval_strategy: str = "epoch"  # epoch | steps: every eval_steps optimizer steps and at the end
    eval_steps: int = 0
    save_strategy: str = "no"  # no, or eval_strategy: a checkpoint after each evaluation
    logging_steps: int = 0  # > 0: log loss and gradient norm per step, stored every k steps
    spike_threshold: float = 0.3  # warning signs in that log (seed guide 002)
    spike_window: int = 20
    grad_norm_threshold: float = 3.0

    def __post_init__(self) -> None:
        choices = {"optim": ("adamw", "lamb"), "lr_scheduler_type": ("linear", "cosine", "cosine_with_min_lr"),
                   "eval_strategy": ("epoch", "steps"), "save_strategy": ("no", self.eval_strategy)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.eval_strategy == "steps" and self.eval_steps < 1:
            raise ValueError("eval_strategy steps needs eval_steps >= 1")

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
    # No weight decay on biases and norm weights (every parameter with fewer than 2 dims), nor on
    # what the model names in ``no_weight_decay()`` (timm's convention; LTG-BERT: embeddings).
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and n not in skip]
    no_decay = [p for n, p in named if p.ndim < 2 or n in skip]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (args.adam_beta1, args.adam_beta2)
    if args.optim == "lamb":
        return Lamb(groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon)
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon,
                             fused=device().type == "cuda")


def _scheduler(optimizer: torch.optim.Optimizer, args: TrainingArguments, warmup: int, total: int) -> Any:
    extra = {"min_lr_rate": args.min_lr_rate} if args.lr_scheduler_type == "cosine_with_min_lr" else None
    return transformers.get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                                      num_training_steps=total, scheduler_specific_kwargs=extra)


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, dtype: torch.dtype | None) -> torch.Tensor:
    """Logits for every example of ``loader``, in order, on the CPU."""
    dev = next(model.parameters()).device
    model.eval()
    out = []
    # In a process group each rank scores its shard; the gathered logits drop the padding.
    for batch in ddp.shard(loader) if ddp.active() else loader:
        batch.pop("labels", None)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            out.append(model(**_to(batch, dev)).logits.float())
    if ddp.active():
        return ddp.gather_in_order(torch.cat(out), len(loader.dataset))
    return torch.cat(out).cpu()


@dataclass
class _Position:
    """Where a run stands: optimizer steps done, the epoch in progress, the micro-batches of it
    already trained on, and the evaluations so far."""

    step: int = 0
    epoch: int = 1
    batch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class _SkipFirst(torch.utils.data.Sampler):
    """A batch sampler without its first ``skip`` batches: the order is the same, and the
    skipped batches are never loaded (resuming mid-epoch)."""

    def __init__(self, batches: Any, skip: int) -> None:
        self.batches, self.skip = batches, skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batches), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.batches) - self.skip, 0)


def _plain(params: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(params), default=str))


def fit(
    model: torch.nn.Module,
    train_set: Any,
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    evaluate: Callable[[torch.nn.Module, torch.dtype | None], tuple[float, dict[str, Any]]],
    args: TrainingArguments,
    reporter: Reporter,
    *,
    started: float,
    run_params: Mapping[str, Any] | None = None,
    history_keys: tuple[str, ...] = (),
) -> tuple[float, dict[str, Any]]:
    """Train ``model``; after every epoch (or every ``eval_steps`` optimizer steps) ``evaluate``
    it, report, and obey the pruner.

    ``evaluate(model, dtype)`` returns the objective value and the attributes to store with it
    (per-slice metrics). Returns the last evaluation's pair. Raises ``optuna.TrialPruned`` when
    the pruner says so or the loss stops being finite. With ``save_strategy`` and a
    ``reporter.checkpoint_dir``, a checkpoint follows each evaluation, and a run that finds one
    there continues from it; ``run_params`` (all the objective's parameters, default ``args``)
    tell a checkpoint of this configuration from one of another; ``history_keys`` name figures of
    ``evaluate``'s attributes kept in every evaluation's entry of the ``epochs`` record.
    """
    transformers.set_seed(args.seed)
    dev = device()
    dtype = autocast_dtype(args.mixed_precision, dev)
    model.to(dev)
    sampler = ddp.train_sampler(train_set, args.seed)  # None outside a process group
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
    total_steps = args.max_steps if args.max_steps > 0 else steps_per_epoch * args.num_train_epochs
    warmup = args.warmup_steps or math.ceil(args.warmup_ratio * total_steps)
    scheduler = _scheduler(optimizer, args, warmup, total_steps)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    reporter.set_user_attr("mixed_precision_used", str(dtype).removeprefix("torch.") if dtype else "fp32")
    reporter.set_user_attr("device", dev.type)
    train_model = ddp.wrap(model, dev)  # DDP in a process group, else the model itself
    if ddp.active():
        reporter.set_user_attr("world_size", ddp.world_size())

    by_steps = args.eval_strategy == "steps"
    step_log = StepLog(total_steps, dev) if args.logging_steps > 0 else None
    params = _plain(run_params if run_params is not None else asdict(args))
    folder = reporter.checkpoint_dir if args.save_strategy != "no" else None
    position = _Position()
    if checkpoint.has_checkpoint(folder):
        position = _resume(folder, params, args, reporter, model=model, optimizer=optimizer, scheduler=scheduler,
                           scaler=scaler, generator=loader.generator, step_log=step_log, batches_per_epoch=len(loader))
    history = position.history
    global_step = position.step

    def evaluate_and_report(epoch: int, train_loss: float, since: float) -> tuple[float, dict[str, Any]]:
        mark, unit = (global_step, "step") if by_steps else (epoch, "epoch")
        if not math.isfinite(train_loss):
            reporter.set_user_attr("end_reason", f"non-finite training loss at {unit} {mark}")
            raise optuna.TrialPruned(f"non-finite training loss at {unit} {mark}")
        value, attrs = evaluate(model, dtype)
        history.append({"epoch": epoch, **({"step": global_step} if by_steps else {}),
                        "train_loss": round(train_loss, 5), "value": value,
                        "seconds": round(time.perf_counter() - since, 3),  # training and evaluation
                        **{key: attrs[key] for key in history_keys if key in attrs}})
        for key, item in attrs.items():
            reporter.set_user_attr(key, item)
        reporter.set_user_attr("epochs", history)
        if step_log is not None:
            _record_step_log(step_log, global_step, args, reporter)
        reporter.report(value, mark)
        if reporter.should_prune():
            reporter.set_user_attr("end_reason", f"pruned at {unit} {mark}")
            raise optuna.TrialPruned(f"pruned at {unit} {mark} with {value:.4f}")
        return value, attrs

    def save(epoch: int, batch: int, generator_state: torch.Tensor) -> None:
        if folder is not None and (not ddp.active() or torch.distributed.get_rank() == 0):
            _save_checkpoint(folder, params, _Position(global_step, epoch, batch, history), args,
                             model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                             generator_state=generator_state, step_log=step_log, total_steps=total_steps)

    value, attrs = math.nan, {}
    evaluated = False
    for epoch in itertools.count(position.epoch):  # until total_steps (a resumed run may need more epochs)
        if global_step >= total_steps or not len(loader):
            break
        epoch_start = interval_start = time.perf_counter()
        train_model.train()
        loss_sum = torch.zeros((), device=dev)
        interval_sum, interval_batches = torch.zeros((), device=dev), 0  # since the last evaluation (steps)
        step_loss, micro = torch.zeros((), device=dev), 0  # this optimizer step's micro-batches (step log)
        skip = position.batch if epoch == position.epoch else 0
        step = skip // accum
        if sampler is not None:
            sampler.set_epoch(epoch)  # a new shuffle every epoch, the same on every rank
        epoch_shuffle = loader.generator.get_state()  # before this epoch draws from it: its order, for a checkpoint
        batches = loader if not skip else DataLoader(
            train_set, batch_sampler=_SkipFirst(loader.batch_sampler, skip), collate_fn=collate,
            generator=loader.generator, pin_memory=loader.pin_memory)
        n_batches = 0
        for i, batch in enumerate(batches, start=skip):
            stepping = (i + 1) % accum == 0 or i + 1 == len(loader)
            faults.before_step(epoch=epoch, step_in_epoch=step + 1, step_in_run=(epoch - 1) * steps_per_epoch + step + 1,
                                micro_batch=args.per_device_train_batch_size)
            with ddp.no_sync(train_model, skip=not stepping):  # DDP: all-reduce once per optimizer step
                with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                    loss = faults.loss(train_model(**_to(batch, dev)).loss, epoch=epoch)
                scaler.scale(loss / accum).backward()
            loss_sum += loss.detach()
            n_batches += 1
            if by_steps:
                interval_sum += loss.detach()
                interval_batches += 1
            if step_log is not None:
                step_loss += loss.detach()
                micro += 1
            if stepping:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                global_step += 1
                if step_log is not None:
                    step_log.record(global_step, step_loss / micro, grad_norm)
                    step_loss, micro = torch.zeros((), device=dev), 0
                if global_step == 1:
                    reporter.set_user_attr("seconds_to_first_step", round(time.perf_counter() - started, 4))
                reporter.on_step(epoch, step, steps_per_epoch)
                if by_steps and (global_step % args.eval_steps == 0 or global_step == total_steps):
                    train_loss = ddp.mean_over_ranks(interval_sum, interval_batches)
                    value, attrs = evaluate_and_report(epoch, train_loss, interval_start)
                    evaluated = True
                    train_model.train()
                    save(epoch, i + 1, epoch_shuffle)
                    interval_sum, interval_batches = torch.zeros((), device=dev), 0
                    interval_start = time.perf_counter()
                if global_step >= total_steps:
                    break
        if not by_steps:
            train_loss = ddp.mean_over_ranks(loss_sum, n_batches)  # every rank decides on the same loss
            value, attrs = evaluate_and_report(epoch, train_loss, epoch_start)
            evaluated = True
            if skip + n_batches < len(loader):  # stopped inside the epoch (max_steps)
                save(epoch, skip + n_batches, epoch_shuffle)
            else:
                save(epoch + 1, 0, loader.generator.get_state())
    if not evaluated:  # resumed from a finished run: its figures, without reporting a step twice
        value, attrs = evaluate(model, dtype)
    return value, attrs


def _record_step_log(step_log: StepLog, steps: int, args: TrainingArguments, reporter: Reporter) -> None:
    """One sync: the per-step loss and gradient norm onto the trial, and the warning signs in them."""
    loss, grad_norm = step_log.read(steps)
    reporter.set_user_attr("step_log", compact(loss, grad_norm, every=args.logging_steps))
    reporter.set_user_attr("warning_signs", warning_signs(
        loss, grad_norm, spike_threshold=args.spike_threshold, window=args.spike_window,
        grad_norm_threshold=args.grad_norm_threshold))


def _save_checkpoint(folder: Any, params: dict[str, Any], position: _Position, args: TrainingArguments, *,
                     model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     scaler: torch.amp.GradScaler, generator_state: torch.Tensor, step_log: StepLog | None,
                     total_steps: int) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "generator": generator_state, "rng": checkpoint.rng_state(),
             "step": position.step, "epoch": position.epoch, "batch": position.batch,
             "examples": position.batch * args.per_device_train_batch_size, "history": position.history,
             "params": params, "step_log": step_log.state_dict() if step_log is not None else None}
    checkpoint.save(folder, state, {"step": position.step, "total_steps": total_steps, "epoch": position.epoch,
                                     "params": params})


def _resume(folder: Any, params: dict[str, Any], args: TrainingArguments, reporter: Reporter, *,
            model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
            generator: torch.Generator, step_log: StepLog | None, batches_per_epoch: int) -> _Position:
    """Load the checkpoint in ``folder`` into this run's objects; where to go on from."""
    state = checkpoint.load(folder)
    changed = {k: [state["params"].get(k), params.get(k)] for k in sorted(set(params) | set(state["params"]))
               if state["params"].get(k) != params.get(k)}
    if changed and not reporter.resume_any_config:
        # Another configuration's checkpoint (a reused folder): start over; the first save replaces it.
        reporter.set_user_attr("checkpoint_ignored", f"{folder}: written by another configuration "
                                                     f"(differs in {', '.join(list(changed)[:5])})")
        return _Position()
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise SetupError(f"the checkpoint in {folder} does not fit this model (a size changed?): "
                         f"{str(e).strip().splitlines()[0]}") from None
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    if step_log is not None and state["step_log"] is not None:
        step_log.load_state_dict(state["step_log"])
    position = _Position(state["step"], state["epoch"], state["batch"], state["history"])
    generator.set_state(state["generator"])  # the saved epoch's order
    if changed:
        # New hyperparameters: this run's learning rate, decay and betas, and its schedule at the
        # saved step; the data go on after as many examples as the saved run had seen.
        for group, fresh in zip(optimizer.param_groups, settings):
            group.update(fresh)
        scheduler.last_epoch = position.step - 1
        with warnings.catch_warnings():  # "scheduler before optimizer step": positioning it, not stepping
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        accum = args.gradient_accumulation_steps
        position.batch = state["examples"] // args.per_device_train_batch_size // accum * accum
        if position.batch >= batches_per_epoch:
            position.epoch, position.batch = position.epoch + 1, 0
        reporter.set_user_attr("resumed_with_changes", {k: v for k, v in list(changed.items())[:20]})
    else:
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
    reporter.set_user_attr("resumed_from_step", position.step)
    for entry in position.history:  # the evaluations before the checkpoint, on this record too
        reporter.report(entry["value"], entry["step"] if "step" in entry else entry["epoch"])
    if position.history:
        reporter.set_user_attr("epochs", position.history)
    return position

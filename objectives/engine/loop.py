"""The training loop every objective shares: seed, optimise, evaluate each epoch, report, prune.

The loop is plain torch: dynamic padding comes from the objective's collate function, mixed
precision from ``torch.autocast`` (``precision.py``), the optimizer and schedule from
``optim.py``, and the loss stays on the device until an evaluation (one host sync per
evaluation, none per step). Data parallelism is ``ddp.py``: a no-op outside a process group.

Pre-training runs (BabyLM) switch on more, each off by default and absent from a fine-tuning run
(nothing of it is built, nothing of it runs per step): ``max_steps``, LAMB and cosine schedules
(``optim.py``), evaluation every ``eval_steps`` optimizer steps (``EvaluationSchedule``), a
per-step log of loss and gradient norm with the seed's warning signs (``logging_steps``,
``steplog.py``), and resumable checkpoints (``save_strategy``, ``checkpoint.RunCheckpoint``, which
says what a resumed run carries over).

Why not ``accelerate`` (measured by bench/accelerate_overhead.py, figures in bench/RESULTS.md):
what ``Accelerator`` would replace here is small (moving the model and batches, autocast and the
gradient scaler, the DDP wrapper and ``no_sync``: some 20 lines), and not what needs code: its
``save_state`` keeps the states of model, optimizer, schedule, scaler and random generators, but
where the run stands in its epoch, the evaluations so far, the step log and a resume with new
hyperparameters would still be ours (``checkpoint.py`` stays), as would gathering predictions in
dataset order (``ddp.py``). Its state is
process-wide: a second trial in the same worker with another ``mixed_precision`` is refused
unless a private reset runs before every trial. It costs 0.16 s of import per worker and 9 ms of
``Accelerator()`` + ``prepare()`` per trial, and trains no faster (the engine ran 1.03x an
accelerate loop on the same MiniLM batches). So it is no dependency; the benchmarks'
``transformers.Trainer`` sides need it (the ``bench`` extra).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import optuna
import torch
import transformers
from torch.utils.data import DataLoader

from objectives.attributes import TrialAttr
from objectives.contract import Reporter
from objectives.engine import checkpoint, ddp, faults, optim, precision
from objectives.engine.arguments import TrainingArguments
from objectives.engine.steplog import StepLog

Evaluate = Callable[[torch.nn.Module, torch.dtype | None], tuple[float, dict[str, Any]]]


def fit(
    model: torch.nn.Module,
    train_set: Any,
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    evaluate: Evaluate,
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
    the pruner says so or the loss stops being finite. ``started`` (a ``perf_counter`` time) is
    when the trial began, for ``seconds_to_first_step``. With ``save_strategy`` and a
    ``reporter.checkpoint_dir``, a checkpoint follows each evaluation, and a run that finds one
    there continues from it; ``run_params`` (all the objective's parameters, default ``args``)
    tell a checkpoint of this configuration from one of another; ``history_keys`` name figures of
    ``evaluate``'s attributes kept in every evaluation's entry of the ``epochs`` record.
    """
    transformers.set_seed(args.seed)
    dev = precision.device()
    dtype = precision.autocast_dtype(args.mixed_precision, dev)
    model.to(dev)
    sampler = ddp.train_sampler(train_set, args.seed)  # None outside a process group
    loader = DataLoader(train_set, batch_size=args.per_device_train_batch_size, shuffle=sampler is None,
                        sampler=sampler, collate_fn=collate, generator=torch.Generator().manual_seed(args.seed),
                        pin_memory=dev.type == "cuda")
    accum = args.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(loader) / accum)
    total_steps = args.max_steps if args.max_steps > 0 else steps_per_epoch * args.num_train_epochs
    optimizer = optim.optimizer(model, args)
    scheduler = optim.scheduler(optimizer, args, total_steps)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    train_model = ddp.wrap(model, dev)  # DDP in a process group, else the model itself
    reporter.set_user_attr(TrialAttr.MIXED_PRECISION, precision.dtype_name(dtype))
    reporter.set_user_attr(TrialAttr.DEVICE, dev.type)
    if ddp.active():
        reporter.set_user_attr(TrialAttr.WORLD_SIZE, ddp.world_size())

    # Pre-training extras: None (and never touched) unless the arguments ask for them.
    step_log = _step_log(args, total_steps, dev)
    saved = _run_checkpoint(args, reporter, run_params, model, optimizer, scheduler, scaler, loader, step_log,
                            total_steps)
    position = saved.resume(reporter, len(loader)) if saved else checkpoint.Position()
    schedule = EvaluationSchedule.of(args, total_steps)
    evaluations = _Evaluations(evaluate, model, dtype, reporter, schedule, position.history, history_keys, step_log)

    step, since_evaluation = position.step, _Interval(dev)
    for epoch in itertools.count(position.epoch):  # until total_steps (a resumed run may need more epochs)
        if step >= total_steps or not len(loader):
            break
        trained = position.batch if epoch == position.epoch else 0  # micro-batches of this epoch done
        if sampler is not None:
            sampler.set_epoch(epoch)  # a new shuffle every epoch, the same on every rank
        order = loader.generator.get_state()  # before this epoch draws from it: its order, for a checkpoint
        train_model.train()
        for i, batch in enumerate(checkpoint.batches_after(loader, trained), start=trained):
            steps_in_epoch = i // accum  # optimizer steps of this epoch already taken
            takes_step = (i + 1) % accum == 0 or i + 1 == len(loader)  # the step's last micro-batch
            faults.before_step(epoch=epoch, step_in_epoch=steps_in_epoch + 1,
                               step_in_run=(epoch - 1) * steps_per_epoch + steps_in_epoch + 1,
                               micro_batch=args.per_device_train_batch_size)
            with ddp.no_sync(train_model, skip=not takes_step):  # DDP: all-reduce once per optimizer step
                with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                    loss = faults.loss(train_model(**precision.to_device(batch, dev)).loss, epoch=epoch)
                scaler.scale(loss / accum).backward()
            since_evaluation.add(loss)
            if step_log is not None:
                step_log.add(loss)
            if not takes_step:
                continue
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step, trained = step + 1, i + 1
            if step_log is not None:
                step_log.record(step, grad_norm)
            if step == 1:
                reporter.set_user_attr(TrialAttr.SECONDS_TO_FIRST_STEP, round(time.perf_counter() - started, 4))
            reporter.on_step(epoch, steps_in_epoch + 1, steps_per_epoch)
            if schedule.after_step(step):
                evaluations.run(epoch, step, since_evaluation)
                if saved:
                    saved.save(checkpoint.Position(step, epoch, trained, evaluations.history), order)
                since_evaluation.restart()
                train_model.train()
            if step >= total_steps:
                break
        if schedule.after_epoch:
            evaluations.run(epoch, step, since_evaluation)
            if saved and trained < len(loader):  # stopped inside the epoch (max_steps)
                saved.save(checkpoint.Position(step, epoch, trained, evaluations.history), order)
            elif saved:
                saved.save(checkpoint.Position(step, epoch + 1, 0, evaluations.history), loader.generator.get_state())
            since_evaluation.restart()
    if evaluations.last is None:  # resumed from a finished run: its figures, without reporting a step twice
        return evaluate(model, dtype)
    return evaluations.last


@dataclass(frozen=True)
class EvaluationSchedule:
    """When the loop evaluates: after every epoch (``every_steps`` 0, fine-tuning), or after every
    ``every_steps`` optimizer steps and the last one (``eval_strategy: steps``)."""

    every_steps: int
    total_steps: int

    @classmethod
    def of(cls, args: TrainingArguments, total_steps: int) -> EvaluationSchedule:
        return cls(args.eval_steps if args.eval_strategy == "steps" else 0, total_steps)

    @property
    def after_epoch(self) -> bool:
        return not self.every_steps

    def after_step(self, step: int) -> bool:
        return bool(self.every_steps) and (step % self.every_steps == 0 or step == self.total_steps)

    def mark(self, epoch: int, step: int) -> tuple[str, int]:
        """The unit and number an evaluation is reported at."""
        return ("step", step) if self.every_steps else ("epoch", epoch)


class _Interval:
    """The training loss (kept on the device) and the time since the last evaluation."""

    def __init__(self, dev: torch.device) -> None:
        self.dev = dev
        self.restart()

    def restart(self) -> None:
        self.loss, self.batches, self.start = torch.zeros((), device=self.dev), 0, time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss.detach()
        self.batches += 1

    def mean_loss(self) -> float:
        return ddp.mean_over_ranks(self.loss, self.batches)  # every rank decides on the same loss


class _Evaluations:
    """Evaluate, record on the trial, report, and obey the pruner; ``last`` is the latest
    (value, attributes), None before the first evaluation of this run."""

    def __init__(self, evaluate: Evaluate, model: torch.nn.Module, dtype: torch.dtype | None, reporter: Reporter,
                 schedule: EvaluationSchedule, history: list[dict[str, Any]], history_keys: tuple[str, ...],
                 step_log: StepLog | None) -> None:
        self.evaluate, self.model, self.dtype, self.reporter = evaluate, model, dtype, reporter
        self.schedule, self.history, self.history_keys, self.step_log = schedule, history, history_keys, step_log
        self.last: tuple[float, dict[str, Any]] | None = None

    def run(self, epoch: int, step: int, interval: _Interval) -> None:
        unit, mark = self.schedule.mark(epoch, step)
        train_loss = interval.mean_loss()
        if not math.isfinite(train_loss):
            self.reporter.set_user_attr(TrialAttr.END_REASON, f"non-finite training loss at {unit} {mark}")
            raise optuna.TrialPruned(f"non-finite training loss at {unit} {mark}")
        value, attrs = self.evaluate(self.model, self.dtype)
        self.history.append({"epoch": epoch, **({"step": step} if unit == "step" else {}),
                             "train_loss": round(train_loss, 5), "value": value,
                             "seconds": round(time.perf_counter() - interval.start, 3),  # training and evaluation
                             **{key: attrs[key] for key in self.history_keys if key in attrs}})
        for key, item in attrs.items():
            self.reporter.set_user_attr(key, item)
        self.reporter.set_user_attr(TrialAttr.EPOCHS, self.history)
        if self.step_log is not None:
            for key, item in self.step_log.attributes(step).items():
                self.reporter.set_user_attr(key, item)
        self.reporter.report(value, mark)
        if self.reporter.should_prune():
            self.reporter.set_user_attr(TrialAttr.END_REASON, f"pruned at {unit} {mark}")
            raise optuna.TrialPruned(f"pruned at {unit} {mark} with {value:.4f}")
        self.last = value, attrs


def _step_log(args: TrainingArguments, total_steps: int, dev: torch.device) -> StepLog | None:
    if args.logging_steps <= 0:
        return None
    return StepLog(total_steps, dev, every=args.logging_steps, spike_threshold=args.spike_threshold,
                   window=args.spike_window, grad_norm_threshold=args.grad_norm_threshold)


def _run_checkpoint(args: TrainingArguments, reporter: Reporter, run_params: Mapping[str, Any] | None,
                    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    scaler: torch.amp.GradScaler, loader: DataLoader, step_log: StepLog | None,
                    total_steps: int) -> checkpoint.RunCheckpoint | None:
    if args.save_strategy == "no" or reporter.checkpoint_dir is None:
        return None
    params = json.loads(json.dumps(dict(run_params if run_params is not None else asdict(args)), default=str))
    return checkpoint.RunCheckpoint(reporter.checkpoint_dir, params, model=model, optimizer=optimizer,
                                    scheduler=scheduler, scaler=scaler, generator=loader.generator,
                                    step_log=step_log, batch_size=args.per_device_train_batch_size,
                                    accumulation=args.gradient_accumulation_steps, total_steps=total_steps)


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
            out.append(model(**precision.to_device(batch, dev)).logits.float())
    if ddp.active():
        return ddp.gather_in_order(torch.cat(out), len(loader.dataset))
    return torch.cat(out).cpu()

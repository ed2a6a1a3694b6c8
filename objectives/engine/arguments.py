"""The engine's settings, named as in ``transformers.TrainingArguments`` so a config reads like a
HF run. Fine-tuning needs only the first block; every later default turns a pre-training option
off. ``ACCEPTS``: the values each takes, which an objective declares for the settings it exposes
(``engine_accepts``) and ``TrainingArguments`` enforces."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from objectives.contract import OneOf, Range, Rule

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")  # what each means: objectives.engine.precision
PROBABILITY_BELOW_1 = Range(ge=0, lt=1)

ACCEPTS: dict[str, Rule] = {
    "learning_rate": Range(gt=0),
    "num_train_epochs": Range(ge=1, integer=True),
    "per_device_train_batch_size": Range(ge=1, integer=True),
    "per_device_eval_batch_size": Range(ge=1, integer=True),
    "gradient_accumulation_steps": Range(ge=1, integer=True),
    "warmup_steps": Range(ge=0, integer=True),
    "warmup_ratio": PROBABILITY_BELOW_1,
    "weight_decay": Range(ge=0),
    "max_grad_norm": Range(gt=0),  # clipping to 0 would zero every gradient
    "mixed_precision": OneOf(*MIXED_PRECISION),
    "seed": Range(ge=0, integer=True),
    "max_steps": Range(ge=-1, integer=True),  # -1 (or 0): train num_train_epochs
    "optim": OneOf("adamw", "lamb"),
    "adam_beta1": PROBABILITY_BELOW_1,
    "adam_beta2": PROBABILITY_BELOW_1,
    "adam_epsilon": Range(gt=0),
    "lr_scheduler_type": OneOf("linear", "cosine", "cosine_with_min_lr"),
    "min_lr_rate": Range(ge=0, le=1),
    "eval_strategy": OneOf("epoch", "steps"),
    "eval_steps": Range(ge=0, integer=True),
    "save_strategy": OneOf("no", "epoch", "steps"),
    "logging_steps": Range(ge=0, integer=True),
    "spike_threshold": Range(gt=0),
    "spike_window": Range(ge=1, integer=True),
    "grad_norm_threshold": Range(gt=0),
}


def engine_accepts(params: Mapping[str, Any]) -> dict[str, Rule]:
    """The engine's rules for the settings among an objective's ``params``, for its ``ACCEPTS``."""
    return {name: rule for name, rule in ACCEPTS.items() if name in params}


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
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16 (objectives.engine.precision)
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
        for name, rule in ACCEPTS.items():
            if not rule.accepts(getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)!r} is not {rule}")
        if self.save_strategy not in ("no", self.eval_strategy):
            raise ValueError(f"save_strategy must be no or {self.eval_strategy} (the eval_strategy), "
                             f"not {self.save_strategy!r}")
        if self.eval_strategy == "steps" and self.eval_steps < 1:
            raise ValueError("eval_strategy steps needs eval_steps >= 1")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainingArguments:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})

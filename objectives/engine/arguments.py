"""The engine's settings, named as in ``transformers.TrainingArguments`` so a config reads like a
HF run. Fine-tuning needs only the first block; every later default turns a pre-training option
off."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


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

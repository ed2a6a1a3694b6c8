"""The optimizer and learning-rate schedule a run trains with.

AdamW or LAMB (``objectives/engine/lamb.py``; torch ships none), with no weight decay on biases
and norm weights (every parameter with fewer than 2 dims) nor on what the model names in
``no_weight_decay()`` (timm's convention; LTG-BERT: its embeddings). The schedule is HF's
(``linear``, ``cosine``, ``cosine_with_min_lr``) with warmup in steps or as a share of the run.

AdamW is torch's fused kernel on the CPU as on CUDA (``transformers.Trainer``'s default too):
without ``fused`` torch steps CPU parameters one tensor at a time, 100-260 ms per step for
MiniLM's 22.7M parameters on the 2-core AMD EPYC of bench/RESULTS.md against 16 ms fused; the
engine trains MiniLM 1.09x faster with it (training steps of about 0.9 s there).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import transformers

from objectives.engine.arguments import TrainingArguments
from objectives.engine.lamb import Lamb


def optimizer(model: torch.nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and n not in skip]
    no_decay = [p for n, p in named if p.ndim < 2 or n in skip]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    betas = (args.adam_beta1, args.adam_beta2)
    if args.optim == "lamb":
        return Lamb(groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon)
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=betas, eps=args.adam_epsilon, fused=True)


def scheduler(optimizer: torch.optim.Optimizer, args: TrainingArguments, total_steps: int) -> Any:
    warmup = args.warmup_steps or math.ceil(args.warmup_ratio * total_steps)
    extra = {"min_lr_rate": args.min_lr_rate} if args.lr_scheduler_type == "cosine_with_min_lr" else None
    return transformers.get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                                      num_training_steps=total_steps, scheduler_specific_kwargs=extra)

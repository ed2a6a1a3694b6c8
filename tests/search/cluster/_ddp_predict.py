"""Run under torchrun by test_distributed.py: the engine's ``predict`` on 79 validation items
(not divisible by the world size) in a gloo process group; rank 0 saves the gathered logits."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForMultipleChoice

from objectives import recipe_mpr
from objectives.engine import predict
from objectives._models import load_model


def validation_loader(model_dir: str) -> torch.utils.data.DataLoader:
    """The first 79 of fold 0's 80 validation items, batched as the objective batches them."""
    params = {**recipe_mpr.PARAMS, "model_name_or_path": model_dir, "max_length": 64}
    indices = recipe_mpr.splits(params)["validation"][:79]
    data = recipe_mpr.encoded_items(model_dir, 64, params["shuffle_seed"])
    pad_id = recipe_mpr.load_tokenizer(model_dir).pad_token_id or 0
    return torch.utils.data.DataLoader([data[i] for i in indices], batch_size=8,
                                       collate_fn=lambda b: recipe_mpr.collate(b, pad_id))


def model(model_dir: str) -> torch.nn.Module:
    return load_model(AutoModelForMultipleChoice, model_dir, dropout=0.0, seed=42)


if __name__ == "__main__":
    model_dir, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    logits = predict(model(model_dir), validation_loader(model_dir), None)
    if dist.get_rank() == 0:
        torch.save({"logits": logits, "world_size": dist.get_world_size()}, out)
    # As search/cluster/torchrun.py's ranks leave: together, without gloo's teardown (which can abort).
    dist.barrier()
    os._exit(0)

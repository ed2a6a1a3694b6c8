"""Data-parallel training for the engine: on when the process belongs to a torch process group.

``search worker`` starts a trial that asks for G GPUs under ``torchrun`` (see
``search/cluster/torchrun.py``), which initialises the process group before the objective runs; the
engine then trains through ``DistributedDataParallel`` with a ``DistributedSampler`` (a new
shuffle every epoch through ``set_epoch``) and evaluates each rank on its own shard. An
objective needs no code of its own for it. Outside a process group every function here is a
no-op, so a single-process run is exactly what it was.

Evaluation shards come from ``DistributedSampler(shuffle=False)``, which pads the dataset with
repeated indices until it divides by the world size; the gathered predictions are put back in
dataset order and the padding is dropped, so every example counts once, as in one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def train_sampler(dataset: Any, seed: int) -> DistributedSampler | None:
    """Each rank's shuffled share of the training set (None outside a process group)."""
    return DistributedSampler(dataset, shuffle=True, seed=seed) if active() else None


def wrap(model: torch.nn.Module, dev: torch.device) -> torch.nn.Module:
    """The model that trains: DDP around ``model`` in a process group, else ``model`` itself."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dev.index or 0] if dev.type == "cuda" else None)


@contextlib.contextmanager
def no_sync(model: torch.nn.Module, skip: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-batches (DDP only)."""
    if skip and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


def mean_over_ranks(total: torch.Tensor, count: int) -> float:
    """The mean of a per-rank sum over every rank's items: the same number on every rank."""
    if not active():
        return total.item() / count
    both = torch.stack([total.detach().double().cpu(), torch.tensor(float(count), dtype=torch.double)])
    if dist.get_backend() == "nccl":
        both = both.cuda()
    dist.all_reduce(both)
    return (both[0] / both[1]).item()


def shard(loader: DataLoader) -> DataLoader:
    """This rank's share of an evaluation loader, same batch size and collate, in order."""
    sampler = DistributedSampler(loader.dataset, shuffle=False, drop_last=False)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory)


def gather_in_order(local: torch.Tensor, n_items: int) -> torch.Tensor:
    """Every rank's predictions, in dataset order, padded duplicates dropped (on every rank).

    Rank r of W held positions r, r + W, r + 2W, ... of the padded index list (range(n) followed
    by its first indices again): interleaving the ranks' rows gives that list back, and its first
    ``n_items`` rows are the dataset in order.
    """
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local.cpu())
    stacked = torch.stack(parts, dim=1)  # [per_rank, W, ...]: row k of every rank, in rank order
    return stacked.reshape(-1, *local.shape[1:])[:n_items]

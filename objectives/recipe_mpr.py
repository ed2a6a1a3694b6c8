"""Recipe-MPR: pick the recipe that matches a preference query, 5 options per query.

A multiple-choice model (``AutoModelForMultipleChoice``) scores each (query, option) pair.
Honesty rules (DESIGN.md, TASKS.md section 1):
- the data file lists the answer first in every record, so options are permuted per item with
  a seeded generator;
- a study trains on one official fold's 400 training items minus a validation part held out
  from them (stratified by query type) and selects on that validation part only; the fold's
  100 test items are scored only when asked (``search run --on-test``, confirmation).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForMultipleChoice

from objectives._data import cached, file_digest, task_files, tokenizer_digest
from objectives.engine import TrainingArguments, fit, predict
from objectives.engine.arguments import PROBABILITY_BELOW_1, engine_accepts
from objectives._models import load_model, load_tokenizer
from objectives.contract import OneOf, Range, Reporter, SetupError

METRIC = "accuracy"
FOLDS = range(5)  # confirmation trains once per official fold and scores its held-out test items
QUERY_TYPES = ("Specific", "Commonsense", "Negated", "Analogical", "Temporal")
BY_RARITY = ("Analogical", "Temporal", "Negated", "Specific", "Commonsense")  # 30, 32, 109, 151, 268 items
_REPO = "https://raw.githubusercontent.com/D3Mlab/Recipe-MPR/6db37033ed6f2f6371933354369f6912cf85dbb8"
FILES = {"500QA.json": f"{_REPO}/data/500QA.json", "folds/5_fold_inds.json": f"{_REPO}/baselines/folds/5_fold_inds.json"}

PARAMS: dict[str, Any] = {
    "model_name_or_path": "distilbert-base-uncased",
    "fold": 0,  # official 5-fold CV fold whose 400 training items the study uses
    "validation_fraction": 0.2,  # held out of those 400, stratified by query type
    "split_seed": 0,
    "shuffle_seed": 0,  # option order per item
    "max_length": 128,
    "learning_rate": 5e-5,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 32,
    "gradient_accumulation_steps": 1,
    "warmup_steps": 100,
    "weight_decay": 0.0,
    "dropout": 0.1,
    "max_grad_norm": 1.0,
    "mixed_precision": "auto",
    "seed": 42,
}
ACCEPTS = {
    **engine_accepts(PARAMS),
    "fold": OneOf(*FOLDS),
    "validation_fraction": Range(gt=0, lt=1),
    "split_seed": Range(ge=0),
    "shuffle_seed": Range(ge=0),
    "max_length": Range(ge=8),  # a query, an option and three special tokens
    "dropout": PROBABILITY_BELOW_1,
}


# --- data -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def load_items(root: Path) -> tuple[list[dict[str, Any]], list[list[list[int]]]]:
    """The 500 records and the official 5 folds (each [train, val, test] index lists)."""
    try:
        items = json.loads((root / "500QA.json").read_text())
        folds = json.loads((root / "folds" / "5_fold_inds.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SetupError(f"recipe-mpr data in {root} is unreadable: {e}") from None
    return items, folds


def shuffled_options(item: dict[str, Any], index: int, seed: int) -> tuple[list[str], int]:
    """The item's option texts in a seeded order, and where the answer went."""
    ids = list(item["options"])
    order = np.random.default_rng([seed, index]).permutation(len(ids))
    ids = [ids[i] for i in order]
    return [item["options"][i] for i in ids], ids.index(item["answer"])


def query_types(item: dict[str, Any]) -> list[str]:
    return [t for t in QUERY_TYPES if item["query_type"].get(t)]


def splits(params: dict[str, Any]) -> dict[str, list[int]]:
    """train / validation / test item indices for the configured fold."""
    items, folds = load_items(task_files("recipe-mpr", FILES))
    fold = params["fold"]
    if not 0 <= fold < len(folds):
        raise SetupError(f"fold must be 0..{len(folds) - 1}, not {fold}")
    train_idx, _, test_idx = folds[fold]
    from sklearn.model_selection import train_test_split  # 2.5 s to import: only when splitting

    # Stratify on each item's rarest query type so the few Analogical/Temporal items are spread.
    rarest = [min(query_types(items[i]), key=BY_RARITY.index, default="none") for i in train_idx]
    fit_idx, val_idx = train_test_split(
        train_idx, test_size=params["validation_fraction"], stratify=rarest, random_state=params["split_seed"]
    )
    return {"train": sorted(fit_idx), "validation": sorted(val_idx), "test": list(test_idx)}


@functools.lru_cache(maxsize=4)
def encoded_items(model_name: str, max_length: int, shuffle_seed: int) -> list[dict[str, Any]]:
    """All 500 items tokenized once per worker (and kept on disk for the next worker):
    5 (query, option) pairs each, unpadded."""
    root = task_files("recipe-mpr", FILES)
    items, _ = load_items(root)
    tokenizer = load_tokenizer(model_name)

    def encode() -> list[dict[str, Any]]:
        encoded = []
        for index, item in enumerate(items):
            options, label = shuffled_options(item, index, shuffle_seed)
            enc = tokenizer([item["query"]] * len(options), options, truncation=True, max_length=max_length)
            encoded.append({"features": {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc},
                            "label": label})
        return encoded

    key = {"data": file_digest(root / "500QA.json"), "tokenizer": tokenizer_digest(tokenizer),
           "max_length": max_length, "shuffle_seed": shuffle_seed, "format": 1}  # format: bump when encode() changes
    return cached("recipe-mpr", key, encode)


def collate(batch: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad every (query, option) pair of the batch to the batch's longest: shape [B, 5, L]."""
    n_options = len(batch[0]["features"]["input_ids"])
    length = max(len(ids) for ex in batch for ids in ex["features"]["input_ids"])
    out = {}
    for key in batch[0]["features"]:
        tensor = torch.full((len(batch), n_options, length), pad_id if key == "input_ids" else 0, dtype=torch.long)
        for b, ex in enumerate(batch):
            for o, ids in enumerate(ex["features"][key]):
                tensor[b, o, : len(ids)] = torch.tensor(ids)
        out[key] = tensor
    out["labels"] = torch.tensor([ex["label"] for ex in batch])
    return out


# --- metrics --------------------------------------------------------------------------------


def accuracy_by_type(correct: list[bool], item_indices: list[int]) -> dict[str, dict[str, Any]]:
    """Accuracy per query type; an item counts under every type it has; absent types say so."""
    items, _ = load_items(task_files("recipe-mpr", FILES))
    result = {}
    for qtype in QUERY_TYPES:
        hits = [c for c, i in zip(correct, item_indices) if items[i]["query_type"].get(qtype)]
        result[qtype] = {"accuracy": sum(hits) / len(hits) if hits else None, "n": len(hits)}
    return result


def prepare(params: dict[str, Any]) -> None:
    """Load and tokenize the data and load the model now: fail before any study is touched."""
    splits(params)
    encoded_items(params["model_name_or_path"], params["max_length"], params["shuffle_seed"])
    load_model(AutoModelForMultipleChoice, params["model_name_or_path"], dropout=None, seed=0)


def train(params: dict[str, Any], reporter: Reporter | None = None, *, on_test: bool = False) -> dict[str, Any]:
    """One training run; returns validation metrics (and the fold's test metrics if ``on_test``)."""
    started = time.perf_counter()
    reporter = reporter or Reporter()
    args = TrainingArguments.from_params(params)
    split = splits(params)
    data = encoded_items(params["model_name_or_path"], params["max_length"], params["shuffle_seed"])
    pad_id = load_tokenizer(params["model_name_or_path"]).pad_token_id or 0
    model = load_model(AutoModelForMultipleChoice, params["model_name_or_path"], dropout=params["dropout"], seed=args.seed)
    batch_collate = functools.partial(collate, pad_id=pad_id)

    def score(indices: list[int], dtype: torch.dtype | None) -> tuple[float, dict[str, Any]]:
        loader = torch.utils.data.DataLoader([data[i] for i in indices], batch_size=args.per_device_eval_batch_size,
                                             collate_fn=batch_collate)
        predicted = predict(model, loader, dtype).argmax(-1).tolist()
        correct = [p == data[i]["label"] for p, i in zip(predicted, indices)]
        return sum(correct) / len(correct), {"per_query_type": accuracy_by_type(correct, indices), "n_items": len(indices)}

    value, attrs = fit(model, [data[i] for i in split["train"]], batch_collate,
                       lambda m, dtype: score(split["validation"], dtype), args, reporter, started=started)
    result = {METRIC: value, "split": "validation", **attrs, "train_seconds": round(time.perf_counter() - started, 2)}
    if on_test:
        test_value, test_attrs = score(split["test"], None)
        result["test"] = {METRIC: test_value, **test_attrs}
    return result

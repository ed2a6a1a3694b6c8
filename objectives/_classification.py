"""Sequence classification, the part lyrics-genre and AG News share.

An objective turns its files into a ``LabelledTexts`` (the texts, one label each, the label
names and the train / validation / test indices); this module does the rest, the same way for
both: tokenize the texts once per worker (and once per machine: the token ids are kept on disk),
pad each batch to its own longest text, fine-tune an ``AutoModelForSequenceClassification``
with the shared engine, and score accuracy, macro-F1, per-class precision / recall / F1 and the
confusion matrix. ``tfidf_baseline`` scores the classic TF-IDF + logistic regression on the
same splits.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification

from objectives._data import cached, tokenizer_digest
from objectives.engine import TrainingArguments, autocast_dtype, device, fit, predict
from objectives.engine.arguments import engine_accepts
from objectives._models import load_model, load_tokenizer
from objectives.contract import Range, Reporter, Rule

METRIC = "accuracy"


def accepts(params: Mapping[str, Any]) -> dict[str, Rule]:
    """The rules for the parameters both classification tasks take (their ``ACCEPTS`` adds its own):
    the engine's settings, the split seed, the dropout (None: the checkpoint's own) and the cap on
    validation items (None: all)."""
    return {**engine_accepts(params), "split_seed": Range(ge=0), "dropout": Range(ge=0, lt=1, optional=True),
            "max_eval_samples": Range(ge=1, integer=True, optional=True)}


# --- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """The texts of a task, named by the digest of their contents: two equal corpora (another
    split of the same songs, another worker) share their token ids."""

    task: str
    digest: str
    texts: tuple[str, ...] = field(repr=False, compare=False)

    @classmethod
    def of(cls, task: str, texts: Sequence[str]) -> Corpus:
        h = hashlib.sha256()
        for text in texts:
            h.update(text.encode())
            h.update(b"\0")
        return cls(task, h.hexdigest(), tuple(texts))


@dataclass(frozen=True, eq=False)
class LabelledTexts:
    corpus: Corpus
    labels: tuple[int, ...]  # an index into label_names, one per text
    label_names: tuple[str, ...]
    splits: Mapping[str, Sequence[int]]  # train / validation / test: indices into the corpus

    def texts(self, split: str) -> list[str]:
        return [self.corpus.texts[i] for i in self.splits[split]]

    def gold(self, split: str) -> list[int]:
        return [self.labels[i] for i in self.splits[split]]


@functools.lru_cache(maxsize=4)
def token_ids(corpus: Corpus, model_name: str, max_length: int) -> list[np.ndarray]:
    """Every text's token ids (special tokens included, unpadded): computed once per machine,
    then read from the disk cache by every later worker; kept in memory for every trial."""
    tokenizer = load_tokenizer(model_name)

    def tokenize() -> dict[str, np.ndarray]:
        ids = tokenizer(list(corpus.texts), truncation=True, max_length=max_length)["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        return {"ids": np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(lengths.sum())),
                "offsets": np.concatenate([[0], np.cumsum(lengths)])}

    key = {"texts": corpus.digest, "tokenizer": tokenizer_digest(tokenizer), "max_length": max_length}
    flat = cached(corpus.task, key, tokenize)
    return np.split(flat["ids"], flat["offsets"][1:-1])


def collate(batch: list[dict[str, Any]], *, pad_id: int, token_type_ids: bool) -> dict[str, torch.Tensor]:
    """Pad the batch to its longest text (not to max_length)."""
    length = max(len(ex["input_ids"]) for ex in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, ex in enumerate(batch):
        ids[row, : len(ex["input_ids"])] = torch.from_numpy(ex["input_ids"].astype(np.int64))
        mask[row, : len(ex["input_ids"])] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if token_type_ids:  # one segment: all zeros, for the models that take them
        out["token_type_ids"] = torch.zeros_like(ids)
    out["labels"] = torch.tensor([ex["label"] for ex in batch])
    return out


# --- metrics --------------------------------------------------------------------------------


def class_metrics(predicted: Sequence[int], gold: Sequence[int], names: Sequence[str], *,
                  slice_key: str) -> dict[str, Any]:
    """Accuracy, macro-F1, per class (precision, recall, F1, n; ``accuracy`` is the class's
    recall: the share of its items classified right) and the confusion matrix (rows: true class,
    columns: predicted). A class with no item is reported as absent (None), outside macro-F1."""
    k = len(names)
    matrix = [[0] * k for _ in range(k)]
    for g, p in zip(gold, predicted):
        matrix[int(g)][int(p)] += 1
    per, f1s = {}, []
    for i, name in enumerate(names):
        n, hits, chosen = sum(matrix[i]), matrix[i][i], sum(row[i] for row in matrix)
        if n == 0:
            per[name] = {"accuracy": None, "precision": None, "recall": None, "f1": None, "n": 0}
            continue
        precision, recall = (hits / chosen if chosen else 0.0), hits / n
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per[name] = {"accuracy": recall, "precision": precision, "recall": recall, "f1": f1, "n": n}
    total = len(gold)
    return {
        "accuracy": sum(matrix[i][i] for i in range(k)) / total if total else 0.0,
        "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
        slice_key: per,
        "confusion_matrix": {"labels": list(names), "matrix": matrix},
        "n_items": total,
    }


# --- training -------------------------------------------------------------------------------


def prepare(data: LabelledTexts, params: Mapping[str, Any], *, max_length: int) -> None:
    """Tokenize and load the model now: a missing model fails before any study is touched."""
    token_ids(data.corpus, params["model_name_or_path"], max_length)
    load_model(AutoModelForSequenceClassification, params["model_name_or_path"], dropout=None, seed=0,
               num_labels=len(data.label_names))


def train(data: LabelledTexts, params: Mapping[str, Any], reporter: Reporter | None, *, max_length: int,
          slice_key: str, on_test: bool = False) -> dict[str, Any]:
    """Fine-tune on the training split, report validation accuracy every epoch (the pruner's
    figure), return the last epoch's validation metrics (and the test split's if ``on_test``)."""
    started = time.perf_counter()
    reporter = reporter or Reporter()
    args = TrainingArguments.from_params(params)
    name = params["model_name_or_path"]
    ids = token_ids(data.corpus, name, max_length)
    tokenizer = load_tokenizer(name)
    model = load_model(AutoModelForSequenceClassification, name, dropout=params.get("dropout"), seed=args.seed,
                       num_labels=len(data.label_names))
    model.config.id2label = dict(enumerate(data.label_names))
    model.config.label2id = {label: i for i, label in enumerate(data.label_names)}
    batch_collate = functools.partial(collate, pad_id=tokenizer.pad_token_id or 0,
                                      token_type_ids="token_type_ids" in tokenizer.model_input_names)

    def examples(indices: Sequence[int]) -> list[dict[str, Any]]:
        return [{"input_ids": ids[i], "label": data.labels[i]} for i in indices]

    def score(split: str, dtype: torch.dtype | None) -> dict[str, Any]:
        # Scored shortest first: batches of similar lengths carry little padding.
        indices = sorted(data.splits[split], key=lambda i: len(ids[i]))
        loader = DataLoader(examples(indices), batch_size=args.per_device_eval_batch_size, collate_fn=batch_collate)
        predicted = predict(model, loader, dtype).argmax(-1).tolist()
        return class_metrics(predicted, [data.labels[i] for i in indices], data.label_names, slice_key=slice_key)

    # Training seconds per epoch, from the epoch's first batch to its last step, validation
    # excluded: the figure the seed compares across GPU counts.
    epoch_seconds: list[float] = []
    epoch_started: list[float] = []

    def train_collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not epoch_started:
            epoch_started.append(time.perf_counter())
        return batch_collate(batch)

    def evaluate(_model: torch.nn.Module, dtype: torch.dtype | None) -> tuple[float, dict[str, Any]]:
        epoch_seconds.append(round(time.perf_counter() - epoch_started.pop(), 3))
        metrics = score("validation", dtype)
        value = metrics.pop("accuracy")
        return value, {**metrics, "seconds_per_epoch": round(sum(epoch_seconds) / len(epoch_seconds), 3),
                       "train_seconds_per_epoch": list(epoch_seconds)}

    value, attrs = fit(model, examples(data.splits["train"]), train_collate, evaluate, args, reporter,
                       started=started)
    result = {METRIC: value, "split": "validation", **attrs, "train_seconds": round(time.perf_counter() - started, 2)}
    if on_test:
        result["test"] = score("test", autocast_dtype(args.mixed_precision, device()))
    return result


# --- the classic baseline -------------------------------------------------------------------


def tfidf_baseline(data: LabelledTexts, *, slice_key: str) -> dict[str, dict[str, Any]]:
    """TF-IDF (10k features, 1-2-grams, min_df 5, max_df 0.8) + logistic regression, trained on
    the trials' training split; scored on their validation split (the figure trials are held
    against) and on the test split (the one confirmed winners are held against: nothing is
    selected on it, the baseline has no knob)."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # seconds to import: only here
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(TfidfVectorizer(max_features=10_000, ngram_range=(1, 2), min_df=5, max_df=0.8),
                             LogisticRegression(max_iter=1000))
    pipeline.fit(data.texts("train"), data.gold("train"))
    return {split: class_metrics(pipeline.predict(data.texts(split)).tolist(), data.gold(split), data.label_names,
                                 slice_key=slice_key)
            for split in ("validation", "test")}


def baseline_record(data: LabelledTexts, params: Mapping[str, Any], *, slice_key: str, items: str) -> dict[str, Any]:
    """``tfidf_baseline`` as ``compute_baseline`` returns it: value, per-class slices, detail."""
    scored = tfidf_baseline(data, slice_key=slice_key)
    validation, test = scored["validation"], scored["test"]
    return {
        "value": validation["accuracy"],
        "slices": {name: v["accuracy"] for name, v in validation[slice_key].items() if v["accuracy"] is not None},
        "detail": f"measured here: trained on the {len(data.splits['train'])} training {items}, scored on the "
                  f"{validation['n_items']} validation {items} (split_seed {params['split_seed']}): macro-F1 "
                  f"{validation['macro_f1']:.4f}; on the {test['n_items']} test {items}, for confirmed figures: "
                  f"accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}",
    }

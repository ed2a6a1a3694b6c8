"""AG News: the topic of a news item (World, Sports, Business, Sci/Tech) from its title and
description, with DistilBERT as in seed guide 004 (TASKS.md section 4).

Data: ``$SEARCH_DATA_DIR/ag_news/`` holds the complete original ``test.csv`` and, for training,
the full original ``train.csv`` if you have it, else the parts this project could get:
``train_first2000.csv`` (original format) and ``train_hf_sample5000.csv`` (HF format), merged.
Without ``SEARCH_DATA_DIR`` the HF hub dataset ``fancyzhx/ag_news`` (the ``ag_news`` id) is used.
A text is ``title + " " + description`` with runs of whitespace collapsed (as the HF dataset
builds it); duplicates are dropped, and so is any training text that is also a test text. The
validation split is carved from the training rows, stratified by class with ``split_seed``;
the test split is scored only to confirm winners.
"""

from __future__ import annotations

import csv
import functools
import os
from pathlib import Path
from typing import Any

from objectives import _classification
from objectives._classification import Corpus, LabelledTexts
from objectives._data import DATA_ENV, task_files
from objectives.contract import Range, Reporter, SetupError

METRIC = "accuracy"
EXTRA_METRICS = ("macro_f1", "seconds_per_epoch")
TASK = "ag_news"
HUB_ID = "fancyzhx/ag_news"
LABELS = ("World", "Sports", "Business", "Sci/Tech")  # classes.txt, in label order
FULL_TRAIN = "train.csv"  # the original 120,000 rows, original format
PARTIAL_TRAIN = ("train_first2000.csv", "train_hf_sample5000.csv")

PARAMS: dict[str, Any] = {
    "model_name_or_path": "distilbert-base-uncased",
    "validation_fraction": 0.1,  # of the training rows, stratified by class
    "split_seed": 0,
    "max_seq_len": 256,  # the seed's name and value
    "learning_rate": 2e-5,
    "num_train_epochs": 10,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "gradient_accumulation_steps": 1,
    "warmup_ratio": 0.0,
    "weight_decay": 0.0,
    "dropout": None,  # None: the checkpoint's own
    "max_grad_norm": 1.0,
    "mixed_precision": "auto",
    "seed": 42,
    "max_train_samples": None,  # train on the first N training rows only (quick checks; HF's name)
    "max_eval_samples": None,  # score only the first N validation rows (quick checks; never for a study)
}
ACCEPTS = {
    **_classification.accepts(PARAMS),
    "validation_fraction": Range(gt=0, lt=1),
    "max_seq_len": Range(ge=8),
    "max_train_samples": Range(ge=1, integer=True, optional=True),
}


# --- data -----------------------------------------------------------------------------------


def _text(*parts: str) -> str:
    return " ".join(" ".join(parts).split())


def _read_csv(path: Path, original_format: bool) -> list[tuple[str, int]]:
    """(text, label 0-3) rows: original format is "class 1-4","title","description";
    the HF export is text,label 0-3."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if original_format:
                return [(_text(title, description), int(label) - 1) for label, title, description in csv.reader(f)]
            return [(_text(text), int(label)) for text, label in csv.reader(f)]
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as e:
        raise SetupError(f"{TASK} data in {path} is unreadable: {type(e).__name__}: {e}") from None


def _from_files() -> tuple[list[tuple[str, int]], list[tuple[str, int]], str]:
    root = task_files(TASK, {"test.csv": ""})  # checks $SEARCH_DATA_DIR/ag_news/test.csv exists
    if (root / FULL_TRAIN).is_file():
        train, source = _read_csv(root / FULL_TRAIN, True), FULL_TRAIN
    else:
        present = [name for name in PARTIAL_TRAIN if (root / name).is_file()]
        if not present:
            raise SetupError(f"{TASK} data in {root}: no training file ({FULL_TRAIN}, or {' / '.join(PARTIAL_TRAIN)})")
        train = [row for name in present for row in _read_csv(root / name, name == PARTIAL_TRAIN[0])]
        source = " + ".join(present)
    return train, _read_csv(root / "test.csv", True), source


def _from_hub() -> tuple[list[tuple[str, int]], list[tuple[str, int]], str]:
    from objectives._models import _hub_reachable

    if not (os.environ.get("HF_HUB_OFFLINE") or _hub_reachable()):
        raise SetupError(f"{TASK} data not found: {DATA_ENV} is not set and the HF hub is unreachable "
                         f"(set {DATA_ENV} to a folder that holds {TASK}/test.csv and a training file)")
    import datasets

    try:
        hub = datasets.load_dataset(HUB_ID)
    except Exception as e:  # noqa: BLE001 - offline, missing, or a broken cache: one line for the user
        raise SetupError(f"{TASK} data not found: {DATA_ENV} is not set and the HF dataset {HUB_ID} could not be "
                         f"loaded ({type(e).__name__}); set {DATA_ENV} to a folder that holds {TASK}/") from None
    rows = {split: [(_text(r["text"]), int(r["label"])) for r in hub[split]] for split in ("train", "test")}
    return rows["train"], rows["test"], f"HF {HUB_ID}"


@functools.lru_cache(maxsize=2)
def load_rows(data_dir: str | None) -> tuple[list[tuple[str, int]], list[tuple[str, int]], dict[str, Any]]:
    """Training rows (deduplicated, none also in test), test rows, and what was dropped."""
    train, test, source = _from_files() if data_dir else _from_hub()
    in_test = {text for text, _ in test}
    seen: set[str] = set()
    kept = []
    for text, label in train:
        if text not in seen and text not in in_test:
            kept.append((text, label))
        seen.add(text)
    if not kept or any(not 0 <= label < len(LABELS) for _, label in kept + test):
        raise SetupError(f"{TASK} data ({source}): labels must be 1-4 (original) or 0-3 (HF), and training rows present")
    counts = {"source": source, "train_rows": len(train), "duplicates": len(train) - len(seen),
              "also_in_test": sum(1 for text in seen if text in in_test), "train": len(kept), "test": len(test)}
    return kept, test, counts


def labelled(params: dict[str, Any]) -> LabelledTexts:
    """Training rows split into train / validation (stratified), and the test rows."""
    train, test, _ = load_rows(os.environ.get(DATA_ENV) or None)
    from sklearn.model_selection import train_test_split  # seconds to import: only when splitting

    fraction = params["validation_fraction"]
    if not 0 < fraction < 1:
        raise SetupError(f"validation_fraction must be between 0 and 1, not {fraction!r}")
    fit_idx, val_idx = train_test_split(list(range(len(train))), test_size=fraction,
                                        stratify=[label for _, label in train], random_state=params["split_seed"])
    rows = train + test
    return LabelledTexts(
        Corpus.of(TASK, [text for text, _ in rows]), tuple(label for _, label in rows), LABELS,
        {"train": fit_idx[: params["max_train_samples"]], "validation": val_idx[: params["max_eval_samples"]],
         "test": list(range(len(train), len(rows)))},
    )


# --- the objective --------------------------------------------------------------------------


def prepare(params: dict[str, Any]) -> None:
    _classification.prepare(labelled(params), params, max_length=params["max_seq_len"])


def train(params: dict[str, Any], reporter: Reporter | None = None, *, on_test: bool = False) -> dict[str, Any]:
    """Validation accuracy every epoch, per-class accuracy and training seconds per epoch on the trial."""
    return _classification.train(labelled(params), params, reporter, max_length=params["max_seq_len"],
                                 slice_key="per_class", on_test=on_test)


def compute_baseline(params: dict[str, Any]) -> dict[str, Any]:
    """TF-IDF + logistic regression on the trials' training and validation rows."""
    return _classification.baseline_record(labelled(params), params, slice_key="per_class", items="rows")

"""A tiny BabyLM corpus and BLiMP copy cut from the real data, and the parameters of a tiny run.

The corpus is the first 300 paragraphs of ../shared/data/babylm (train) and 40 of its dev text;
BLiMP keeps the first 3 pairs of each of the 67 paradigms. The model is a 2-layer LTG-BERT of
hidden size 32, so a trial of a dozen steps takes seconds on one CPU core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


from helpers import shared_data
from objectives.babylm import blimp

PAIRS_PER_PARADIGM = 3


def real_data() -> Path:
    return shared_data("babylm/train.txt", "blimp/data")


def _head(source: Path, target: Path, n: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, encoding="utf-8") as f:
        target.write_text("".join(line for _, line in zip(range(n), f)), encoding="utf-8")


def make_tiny_data(folder: Path) -> Path:
    """``folder`` as a SEARCH_DATA_DIR: babylm/{train,dev}.txt and blimp/data/<UID>.jsonl."""
    real = real_data()
    _head(real / "babylm" / "train.txt", folder / "babylm" / "train.txt", 300)
    _head(real / "babylm" / "dev.txt", folder / "babylm" / "dev.txt", 40)
    for uid in blimp.PARADIGMS:
        _head(real / "blimp" / "data" / f"{uid}.jsonl", folder / "blimp" / "data" / f"{uid}.jsonl", PAIRS_PER_PARADIGM)
    return folder


# What a tiny run pins; the real spec searches or fixes these for a GPU.
TINY: dict[str, Any] = {
    "vocab_size": 400, "tokenizer_min_frequency": 2, "model_size": "xs", "num_hidden_layers": 2, "hidden_size": 32,
    "num_attention_heads": 2, "intermediate_size": 64, "max_seq_length": 64, "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1, "max_steps": 12, "eval_strategy": "steps", "eval_steps": 4,
    "blimp_pairs_per_paradigm": 1, "dev_max_sequences": 16, "per_device_eval_batch_size": 16,
    "learning_rate": 3e-3, "warmup_ratio": 0.0, "pll_tokens_per_batch": 16384, "mixed_precision": "no",
}

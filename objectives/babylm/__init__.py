"""BabyLM: pre-train LTG-BERT from scratch by masked-LM, score it on BLiMP.

The seed guide (../shared/seeds/002) tunes an LTG-BERT pre-training whose loss plateaued at 3.6
and whose BLiMP sat at 58.9 %; it hopes for a loss below 2.5 and BLiMP above 65 %. The model,
masking, optimiser and scoring follow the published LTG-BERT code (TASKS.md section 3):
``_ltg_bert`` (the model), ``_mlm`` (corpus, WordPiece tokenizer, span masking), ``_blimp``
(pseudo-log-likelihood scoring), ``_lamb`` (the optimiser); the shared engine trains.

What a trial measures, every ``eval_steps`` optimizer steps (or every epoch):
- ``blimp``, the objective: macro-averaged BLiMP accuracy on a fixed stratified subset (the same
  ``blimp_pairs_per_paradigm`` pairs of each of the 67 paradigms in every trial), strict ``>``;
- ``dev_loss``: masked-LM loss on a fixed sample of the dev text, masked once with a fixed seed
  at the published 15 % (so trials with another ``mask_p`` stay comparable; a different
  ``vocab_size`` still changes what a token is);
- per field, per phenomenon and per paradigm accuracy; the loss and gradient norm of every step
  and the seed's warning signs in them (the engine's step log).
Confirmation (``on_test``) scores all 67,000 pairs: the figure published results use. BLiMP has
no held-out split; the subset used for selection is 2 % of it, and ``blimp_unseen`` gives the
score on the other pairs alone.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from objectives.babylm import blimp
from objectives.engine import checkpoint
from objectives.babylm import mlm
from objectives.engine import TrainingArguments, fit
from objectives.engine.arguments import PROBABILITY_BELOW_1, engine_accepts
from objectives.babylm.ltg_bert import PRESETS, LtgBertConfig, LtgBertForMaskedLM
from objectives.contract import OneOf, Range, Reporter, SetupError

METRIC = "blimp"
EXTRA_METRICS = ("dev_loss",)
RESUMABLE = True  # checkpoints into the reporter's folder; `search run --resume` continues one
DEV_MASK_P = 0.15  # the dev loss is always measured at the published masking rate
DEV_SEQ_LENGTH = 128

PARAMS: dict[str, Any] = {
    # data: under $SEARCH_DATA_DIR/babylm, a file or a folder of files (BabyLM's train_10M/, dev/)
    "train_path": "train.txt",
    "dev_path": "dev.txt",
    "blimp_path": "",  # folder of the 67 <UID>.jsonl; "": $SEARCH_DATA_DIR/blimp/data (else downloaded)
    "train_fraction": 1.0,  # a seeded share of the training segments: a shorter trial on a CPU
    "data_seed": 0,
    "vocab_size": 16384,  # published: 16384 (100M words), 4096 (strict-small, 10M)
    "tokenizer_min_frequency": 10,
    "max_seq_length": 128,
    "short_p": 0.1,  # share of sequences cut to a random shorter length
    "mask_p": 0.15,
    "random_p": 0.1,
    "keep_p": 0.1,
    # model: a published size; a non-zero field below replaces the preset's
    "model_size": "base",  # xs | small | base
    "num_hidden_layers": 0,
    "hidden_size": 0,
    "num_attention_heads": 0,
    "intermediate_size": 0,
    "position_bucket_size": 32,
    "dropout": 0.1,
    # optimisation: the published recipe (LAMB, cosine to 10 % after 1.6 % warmup, clip 2.0)
    "optim": "lamb",
    "learning_rate": 1e-2,
    "adam_beta1": 0.9,
    "adam_beta2": 0.98,
    "adam_epsilon": 1e-6,
    "weight_decay": 0.1,
    "lr_scheduler_type": "cosine_with_min_lr",
    "min_lr_rate": 0.1,
    "warmup_ratio": 0.016,
    "max_grad_norm": 2.0,
    "per_device_train_batch_size": 128,
    "gradient_accumulation_steps": 1,
    "num_train_epochs": 1,  # used when max_steps is not positive
    "max_steps": 2000,
    "mixed_precision": "auto",
    "seed": 42,
    # evaluation
    "eval_strategy": "steps",  # steps | epoch
    "eval_steps": 500,
    "per_device_eval_batch_size": 64,
    "dev_max_sequences": 512,  # 0: the whole dev text
    "blimp_pairs_per_paradigm": 20,  # 0: all 1000
    "blimp_subset_seed": 0,
    "pll_tokens_per_batch": 16384,
    # the step log and the seed's warning signs (loss +0.3 over its running mean; grad norm > 3)
    "logging_steps": 1,
    "spike_threshold": 0.3,
    "spike_window": 20,
    "grad_norm_threshold": 3.0,
    "output_dir": "",  # if set, the trained model and its tokenizer are saved there (transformers format)
}
ACCEPTS = {  # what depends on two parameters (random_p + keep_p, heads dividing the width): check()
    **engine_accepts(PARAMS),
    "train_fraction": Range(gt=0, le=1),
    "vocab_size": Range(ge=64),
    "tokenizer_min_frequency": Range(ge=0),
    "max_seq_length": Range(ge=8),
    "mask_p": Range(gt=0, lt=1),
    **dict.fromkeys(("short_p", "random_p", "keep_p"), Range(ge=0, le=1)),
    "model_size": OneOf(*PRESETS),
    **dict.fromkeys(("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"),
                    Range(ge=0)),  # 0: the preset's
    "position_bucket_size": Range(ge=1),
    "dropout": PROBABILITY_BELOW_1,
    **dict.fromkeys(("data_seed", "blimp_subset_seed"), Range(ge=0)),
    **dict.fromkeys(("dev_max_sequences", "blimp_pairs_per_paradigm"), Range(ge=0)),  # 0: all
    "pll_tokens_per_batch": Range(ge=1),
}


# --- data -----------------------------------------------------------------------------------


def corpus(params: dict[str, Any]) -> tuple[tuple[Path, ...], tuple[Path, ...], str]:
    """Training files, dev files, and the cached tokenizer trained on the training files."""
    train_files = mlm.corpus_files(params["train_path"], role="train")
    dev_files = mlm.corpus_files(params["dev_path"], role="dev")
    mlm.load_tokenizer(train_files, params["vocab_size"], params["tokenizer_min_frequency"])
    return train_files, dev_files, str(mlm.tokenizer_path(train_files, params["vocab_size"],
                                                           params["tokenizer_min_frequency"]))


@functools.lru_cache(maxsize=4)
def dev_batches(dev_files: tuple[Path, ...], tokenizer_file: str, n: int, batch_size: int, vocab: int
                ) -> list[dict[str, torch.Tensor]]:
    """A fixed dev sample, masked once with a fixed seed: the same dev loss inputs in every trial."""
    segments = mlm.segments(dev_files, tokenizer_file, DEV_SEQ_LENGTH)
    if 0 < n < len(segments):
        segments = [segments[i] for i in np.sort(np.random.default_rng(0).permutation(len(segments))[:n])]
    collator = mlm.MaskedLmCollator(max_seq_length=DEV_SEQ_LENGTH, mask_p=DEV_MASK_P, random_p=0.1, keep_p=0.1,
                                     short_p=0.0, vocab_size=vocab)
    rng = np.random.default_rng(0)
    return [collator.collate(segments[i:i + batch_size], rng) for i in range(0, len(segments), batch_size)]


def blimp_pairs(params: dict[str, Any]) -> tuple[tuple[blimp.Pair, ...], tuple[blimp.Pair, ...]]:
    """All 67,000 pairs, and the stratified subset every evaluation scores."""
    pairs = blimp.load_pairs(blimp.blimp_folder(params["blimp_path"]))
    return pairs, blimp.stratified_subset(pairs, params["blimp_pairs_per_paradigm"], params["blimp_subset_seed"])


# --- model ----------------------------------------------------------------------------------


def model_config(params: dict[str, Any], vocab_size: int) -> LtgBertConfig:
    sizes = {k: params[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
             if params[k]}
    return LtgBertConfig.from_preset(params["model_size"], vocab_size=vocab_size, **sizes,
                                     position_bucket_size=params["position_bucket_size"],
                                     hidden_dropout_prob=params["dropout"],
                                     attention_probs_dropout_prob=params["dropout"])


def check(params: dict[str, Any]) -> TrainingArguments:
    """Refuse a bad parameter with one line, before any data is read (what ``ACCEPTS`` says, for a
    caller that did not go through a spec, and what depends on two parameters)."""
    for name, rule in ACCEPTS.items():
        if not rule.accepts(params[name]):
            raise SetupError(f"{name} {params[name]!r} is not {rule}")
    sizes = {**PRESETS[params["model_size"]], **{k: v for k, v in params.items() if k in PRESETS["xs"] and v}}
    if sizes["hidden_size"] % sizes["num_attention_heads"]:
        raise SetupError(f"hidden_size {sizes['hidden_size']} is not a multiple of num_attention_heads "
                         f"{sizes['num_attention_heads']}")
    if params["random_p"] + params["keep_p"] > 1:
        raise SetupError("random_p and keep_p must sum to at most 1")
    try:
        return TrainingArguments.from_params({**params, "save_strategy": params["eval_strategy"]})
    except ValueError as e:
        raise SetupError(str(e)) from None


def prepare(params: dict[str, Any]) -> None:
    """Check the parameters, find the text and BLiMP, train (or load) the tokenizer, segment the
    corpus: everything a trial needs, before a study is touched."""
    check(params)
    train_files, dev_files, tokenizer_file = corpus(params)
    blimp_pairs(params)
    if not mlm.segments(train_files, tokenizer_file, params["max_seq_length"]):
        raise SetupError(f"babylm training text {train_files[0]} holds no text")
    if not mlm.segments(dev_files, tokenizer_file, DEV_SEQ_LENGTH):
        raise SetupError(f"babylm dev text {dev_files[0]} holds no text")


# --- one run --------------------------------------------------------------------------------


def train(params: dict[str, Any], reporter: Reporter | None = None, *, on_test: bool = False) -> dict[str, Any]:
    """Pre-train from scratch; return validation figures (and the full BLiMP with ``on_test``)."""
    started = time.perf_counter()
    reporter = reporter or Reporter()
    args = check(params)
    train_files, dev_files, tokenizer_file = corpus(params)
    tokenizer = mlm.load_tokenizer(train_files, params["vocab_size"], params["tokenizer_min_frequency"])
    vocab = tokenizer.get_vocab_size()
    train_set = mlm.subset(mlm.segments(train_files, tokenizer_file, params["max_seq_length"]),
                            params["train_fraction"], params["data_seed"])
    dev = dev_batches(dev_files, tokenizer_file, params["dev_max_sequences"], params["per_device_eval_batch_size"], vocab)
    all_pairs, pairs = blimp_pairs(params)
    transformers.set_seed(args.seed)
    model = LtgBertForMaskedLM(model_config(params, vocab))
    collate = mlm.MaskedLmCollator(max_seq_length=params["max_seq_length"], mask_p=params["mask_p"],
                                    random_p=params["random_p"], keep_p=params["keep_p"], short_p=params["short_p"],
                                    vocab_size=vocab)

    def score_blimp(chosen: tuple[blimp.Pair, ...], dtype: torch.dtype | None) -> blimp.BlimpResult:
        def encode(sentences: list[str]) -> list[list[int]]:
            return [e.ids for e in tokenizer.encode_batch(sentences, add_special_tokens=False)]

        return blimp.score_pairs(model, encode, chosen, cls_id=mlm.CLS, sep_id=mlm.SEP, mask_id=mlm.MASK,
                                  tokens_per_batch=params["pll_tokens_per_batch"], dtype=dtype)

    def evaluate(_: torch.nn.Module, dtype: torch.dtype | None) -> tuple[float, dict[str, Any]]:
        dev_loss = mlm_loss(model, dev, dtype)
        scored = score_blimp(pairs, dtype)
        return scored.macro, {"dev_loss": dev_loss, "per_phenomenon": scored.per_phenomenon,
                             "per_field": scored.per_field, "per_paradigm": scored.per_paradigm,
                             "n_items": len(pairs), "n_parameters": model.num_parameters()}

    try:
        value, attrs = fit(model, train_set, collate, evaluate, args, reporter, started=started, run_params=params,
                           history_keys=("dev_loss",))
        result = {METRIC: value, "split": "validation", **attrs, "train_segments": len(train_set),
                  "train_seconds": round(time.perf_counter() - started, 2)}
        if on_test:
            full = score_blimp(all_pairs, None)
            seen = set(pairs)
            unseen = [(p, c) for p, c in zip(all_pairs, full.correct) if p not in seen]
            result["test"] = {METRIC: full.macro, "n_items": len(all_pairs), "per_phenomenon": full.per_phenomenon,
                              "per_field": full.per_field, "per_paradigm": full.per_paradigm,
                              "blimp_unseen": macro_accuracy(unseen)}
        if params["output_dir"]:
            model.save_pretrained(params["output_dir"])
            mlm.hf_tokenizer(tokenizer).save_pretrained(params["output_dir"])
    except Exception:  # pruned or failed: its checkpoint serves nobody (a kill or Ctrl-C keeps it)
        checkpoint.discard(reporter)
        raise
    checkpoint.discard(reporter)
    return result


@torch.no_grad()
def mlm_loss(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], dtype: torch.dtype | None) -> float:
    """Mean cross-entropy over every masked token of the batches (one host sync)."""
    dev = next(model.parameters()).device
    model.eval()
    total = torch.zeros((), device=dev, dtype=torch.float64)
    count = 0
    for batch in batches:
        n = int((batch["labels"] != -100).sum())  # on the host: no device sync
        batch = {k: v.to(dev) for k, v in batch.items()}
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            total += model(**batch).loss.double() * n
        count += n
    return float(total) / count


def macro_accuracy(pairs_correct: list[tuple[blimp.Pair, bool]]) -> float:
    by_uid: dict[str, list[bool]] = {}
    for pair, right in pairs_correct:
        by_uid.setdefault(pair.uid, []).append(right)
    return float(np.mean([np.mean(v) for v in by_uid.values()])) if by_uid else float("nan")

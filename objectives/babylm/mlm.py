"""Masked-LM data: the corpus, its WordPiece tokenizer, packed segments and span masking.

Follows ltg-bert ``babylm`` (TASKS.md 3.1-3.2):
- the tokenizer is WordPiece, pre-tokenized ByteLevel (with a prefix space) then digit by digit,
  no continuing-subword prefix, specials ``[UNK] [CLS] [SEP] [PAD] [MASK] [PAR] [TAB]`` (ids 0-6);
  it is trained on the training text once per corpus and vocabulary size and cached;
- every paragraph ends with ``[PAR]``; consecutive paragraphs of a document are packed into
  segments of up to ``max_seq_length - 2`` tokens (``[CLS] ... [SEP]`` around them);
- span masking: a budget of Binomial(maskable tokens, mask_p) tokens, covered by spans of length
  ``Geometric(1/3) % 10`` at random offsets (at most 100 tries); each span is 80 % ``[MASK]``,
  10 % random tokens, 10 % kept; special tokens are never masked. One change from the published
  code: a sequence whose tries all missed gets one masked token, so every row predicts something.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

from objectives._data import DATA_ENV, cache_dir
from objectives.contract import SetupError

SPECIALS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "[PAR]", "[TAB]")
UNK, CLS, SEP, PAD, MASK, PAR, TAB = range(len(SPECIALS))
N_SPECIAL = len(SPECIALS)  # ids below this are never masked nor drawn as random replacements


# --- corpus -----------------------------------------------------------------------------------


def corpus_root() -> Path:
    """``$SEARCH_DATA_DIR/babylm``, else ``~/.cache/search/babylm`` (put a corpus there)."""
    return Path(os.environ[DATA_ENV]) / "babylm" if os.environ.get(DATA_ENV) else cache_dir() / "babylm"


def corpus_files(path: str, *, role: str) -> tuple[Path, ...]:
    """The text files of one split: a file, or a folder of files in BabyLM's own layout (one file
    per source, e.g. ``train_10M/*.train``). A relative path is taken under ``corpus_root()``."""
    where = Path(path) if Path(path).is_absolute() else corpus_root() / path
    if where.is_file():
        return (where,)
    if where.is_dir():
        files = tuple(sorted(p for p in where.iterdir() if p.is_file() and not p.name.startswith(".")))
        if files:
            return files
        raise SetupError(f"babylm {role} folder {where} holds no files")
    hint = f"set {DATA_ENV} to the folder holding babylm/" if not Path(path).is_absolute() else "give an existing path"
    raise SetupError(f"babylm {role} text not found: {where} does not exist ({hint}, or set {role}_path)")


def documents(files: Sequence[Path]) -> Iterator[list[str]]:
    """Documents as lists of paragraphs: one paragraph per line, an empty line ends a document
    (and so does the end of a file: one file per source in BabyLM's layout)."""
    for file in files:
        paragraphs: list[str] = []
        try:
            with open(file, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line:
                        paragraphs.append(line)
                    elif paragraphs:
                        yield paragraphs
                        paragraphs = []
        except (OSError, UnicodeDecodeError) as e:
            raise SetupError(f"babylm text {file} is unreadable: {e}") from None
        if paragraphs:
            yield paragraphs


@functools.lru_cache(maxsize=8)
def fingerprint(files: tuple[Path, ...]) -> str:
    """Content hash of a split's files (a changed corpus gets its own tokenizer)."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


# --- tokenizer --------------------------------------------------------------------------------


def tokenizer_path(files: tuple[Path, ...], vocab_size: int, min_frequency: int) -> Path:
    return cache_dir() / "babylm" / "tokenizers" / f"wordpiece-{fingerprint(files)}-v{vocab_size}-f{min_frequency}.json"


@functools.lru_cache(maxsize=4)
def load_tokenizer(files: tuple[Path, ...], vocab_size: int, min_frequency: int) -> Tokenizer:
    """The WordPiece tokenizer of these training files: from the cache, else trained and cached."""
    path = tokenizer_path(files, vocab_size, min_frequency)
    if path.is_file():
        return Tokenizer.from_file(str(path))
    tokenizer = Tokenizer(WordPiece(unk_token="[UNK]", continuing_subword_prefix=""))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=True), pre_tokenizers.Digits(individual_digits=True)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS),
                               continuing_subword_prefix="", show_progress=False)
    tokenizer.train_from_iterator((p for doc in documents(files) for p in doc), trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")  # workers training at once: last rename wins, same file
    tokenizer.save(str(partial))
    os.replace(partial, path)
    return tokenizer


def hf_tokenizer(tokenizer: Tokenizer):
    """The same tokenizer as a transformers tokenizer (to save beside a model)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "attention_mask"])


# --- segments ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def encoded_documents(files: tuple[Path, ...], tokenizer_file: str) -> tuple[tuple[np.ndarray, ...], ...]:
    """Every document as its paragraphs' token ids, each paragraph ending with [PAR]."""
    tokenizer = Tokenizer.from_file(tokenizer_file)
    docs = list(documents(files))
    flat = [p for doc in docs for p in doc]
    ids = [np.array(e.ids + [PAR], dtype=np.int32) for e in tokenizer.encode_batch(flat, add_special_tokens=False)]
    out, start = [], 0
    for doc in docs:
        out.append(tuple(ids[start:start + len(doc)]))
        start += len(doc)
    return tuple(out)


def pack(paragraphs: Sequence[np.ndarray], length: int) -> list[np.ndarray]:
    """Consecutive paragraphs of one document in segments of at most ``length`` tokens; a longer
    paragraph is cut. Segments start with a maskable token and hold at least one."""
    segments: list[np.ndarray] = []
    current: list[np.ndarray] = []
    size = 0
    for paragraph in paragraphs:
        if size + len(paragraph) > length and current:
            segments.append(np.concatenate(current))
            current, size = [], 0
        while len(paragraph) > length:
            segments.append(paragraph[:length])
            paragraph = paragraph[length:]
        current.append(paragraph)
        size += len(paragraph)
    if current:
        segments.append(np.concatenate(current))
    out = []
    for segment in segments:
        maskable = np.flatnonzero(segment >= N_SPECIAL)
        if len(maskable):
            out.append(segment[maskable[0]:])
    return out


@functools.lru_cache(maxsize=8)
def segments(files: tuple[Path, ...], tokenizer_file: str, max_seq_length: int) -> tuple[np.ndarray, ...]:
    """All segments of a split for sequences of ``max_seq_length`` tokens ([CLS] and [SEP] included)."""
    return tuple(s for doc in encoded_documents(files, tokenizer_file) for s in pack(doc, max_seq_length - 2))


def subset(items: Sequence[np.ndarray], fraction: float, seed: int) -> list[np.ndarray]:
    """A seeded random ``fraction`` of ``items`` (all of them at 1.0), in corpus order."""
    if fraction >= 1.0:
        return list(items)
    keep = np.sort(np.random.default_rng(seed).permutation(len(items))[: max(1, math.ceil(fraction * len(items)))])
    return [items[i] for i in keep]


# --- masking ----------------------------------------------------------------------------------


def span_length(rng: np.random.Generator) -> int:
    """Geometric(1/3) on 1, 2, ... taken modulo 10: mostly short spans, at most 9 (0 = no span)."""
    return int(rng.geometric(1 / 3)) % 10


def span_mask(tokens: np.ndarray, rng: np.random.Generator, *, mask_p: float, random_p: float, keep_p: float,
              vocab_size: int, max_tries: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) for one sequence; labels are -100 where nothing is to be predicted."""
    maskable = tokens >= N_SPECIAL
    n = int(maskable.sum())
    inputs = tokens.copy()
    masked = np.zeros(len(tokens), dtype=bool)
    if n == 0:
        return inputs, np.full(len(tokens), -100, dtype=np.int64)
    budget = min(n, max(1, int(rng.binomial(n, mask_p))))

    def corrupt(where: np.ndarray) -> None:
        draw = rng.random()
        if draw < 1.0 - random_p - keep_p:
            inputs[where] = MASK
        elif draw < 1.0 - keep_p:
            inputs[where] = rng.integers(N_SPECIAL, vocab_size, int(where.sum()))
        else:
            inputs[where] = tokens[where]

    for _ in range(max_tries):
        if masked.sum() >= budget:
            break
        length = span_length(rng)
        start = int(rng.integers(-(length - 1), len(tokens) + length)) if length else 0
        span = np.zeros(len(tokens), dtype=bool)
        span[max(0, start):max(0, start + length)] = True
        span &= maskable
        if span.any():
            corrupt(span)
            masked |= span
    if not masked.any():
        one = np.zeros(len(tokens), dtype=bool)
        one[rng.choice(np.flatnonzero(maskable))] = True
        corrupt(one)
        masked = one
    return inputs, np.where(masked, tokens, -100).astype(np.int64)


class MaskedLmCollator:
    """Batches for the engine: ``[CLS] segment [SEP]``, span-masked, padded to the longest row.

    The randomness of a batch comes from one draw of torch's global generator (so the engine's
    seed and a checkpoint's random state decide it); within the batch numpy does the work.
    With probability ``short_p`` a segment is cut to a random shorter length, as published.
    """

    def __init__(self, *, max_seq_length: int, mask_p: float, random_p: float, keep_p: float, short_p: float,
                 vocab_size: int) -> None:
        self.max_seq_length, self.short_p, self.vocab_size = max_seq_length, short_p, vocab_size
        self.masking = {"mask_p": mask_p, "random_p": random_p, "keep_p": keep_p, "vocab_size": vocab_size}

    def __call__(self, batch: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        seed = int(torch.randint(0, 2**62, ()).item())
        return self.collate(batch, np.random.default_rng(seed))

    def collate(self, batch: Sequence[np.ndarray], rng: np.random.Generator, *, short_p: float | None = None
                ) -> dict[str, torch.Tensor]:
        short_p = self.short_p if short_p is None else short_p
        rows = []
        for segment in batch:
            body = segment[: self.max_seq_length - 2]
            if rng.random() < short_p:  # a random target length in 1 .. max_seq_length - 3, as published
                body = body[: int(rng.integers(1, self.max_seq_length - 2))]
            rows.append(span_mask(np.concatenate([[CLS], body, [SEP]]).astype(np.int64), rng, **self.masking))
        width = max(len(inputs) for inputs, _ in rows)
        input_ids = torch.full((len(rows), width), PAD, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (inputs, targets) in enumerate(rows):
            input_ids[r, : len(inputs)] = torch.from_numpy(inputs)
            labels[r, : len(targets)] = torch.from_numpy(targets)
            attention_mask[r, : len(inputs)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

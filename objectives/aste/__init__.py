"""ASTE: extract (aspect, opinion, polarity) triplets with D2E2S, on 14res, 14lap, 15res or 16res.

Data: the D2E2S release of ASTE-Data-V2 (tokens, gold triplets, POS tags and dependency parses;
TASKS.md section 2). The model is ``objectives.aste.d2e2s``; the metric is micro F1 of exact triplets
(``objectives.aste.evaluation``) on the dev split after every epoch.

Honesty rules (the published code breaks the first two):
- selection is on dev only; the test split is scored, in full (no truncation to a multiple of the
  batch size), only when asked (``search run --on-test``, confirmation);
- every sentence is kept. The parser saw a re-tokenised sentence (parentheses dropped,
  "multi-touch" written "multitouch"), so its words are aligned to the tokens (see ``align_parse``)
  and the sentences and words that needed it are counted and stored on the trial;
- gold spans longer than ``max_span_size`` cannot be predicted; they stay in the gold set (recall
  pays for them) and their count is stored.

Seed names map onto HF loop names: lr -> learning_rate, batch_size -> per_device_train_batch_size,
epochs -> num_train_epochs, lr_warmup -> warmup_ratio; weight_decay and max_grad_norm keep theirs.
Model and sampling knobs keep the D2E2S names.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import time
from dataclasses import dataclass, fields
from typing import Any

import torch
from transformers import AutoModel

from objectives.aste.evaluation import Triplet, micro_scores, triplet_scores
from objectives.aste.d2e2s import IGNORE, POLARITIES, SPAN_TYPES, D2E2S, D2E2SConfig
from objectives._data import task_files
from objectives.engine import TrainingArguments, autocast_dtype, device, fit, to_device
from objectives.engine.arguments import PROBABILITY_BELOW_1, engine_accepts
from objectives._models import load_model, load_tokenizer
from objectives.contract import OneOf, Range, Reporter, SetupError

METRIC = "f1"
EXTRA_METRICS = ("precision", "recall", "aspect_f1", "opinion_f1")
DATASETS = ("14lap", "14res", "15res", "16res")
_REPO = "https://raw.githubusercontent.com/TYZY89/D2E2S/5c6f19ff5f20654746116f549ba2df2a4bb5e049/data"

PARAMS: dict[str, Any] = {
    "dataset": "14res",
    "model_name_or_path": "bert-base-uncased",  # the published encoder; any HF id, local dir or 'minilm'
    "max_train_sentences": 0,  # 0: all; N: the first N training sentences (smoke runs, tests)
    # the training loop (HF names; the published values)
    "learning_rate": 5e-5,
    "num_train_epochs": 120,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "gradient_accumulation_steps": 1,
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "mixed_precision": "auto",
    "seed": 42,
    # the model (D2E2S names)
    "drop_out_rate": 0.5,
    "prop_drop": 0.1,
    "gcn_dropout": 0.1,  # what the published GCNs ran with (its --gcn_dropout 0.2 is not wired in)
    "hidden_dim": None,  # BiLSTM width per direction; None: hidden_size // 2 (384 for bert-base)
    "gcn_dim": None,  # GCN width; None: hidden_size (the width the published GCNs ran at)
    "attention_heads": 1,
    "num_layers": 2,  # GCN layers
    "lstm_layers": 2,
    "size_embedding": 25,
    "max_span_size": 8,
    # sampling and inference (D2E2S names)
    "neg_entity_count": 100,  # negative spans sampled per training sentence
    "neg_triple_count": 100,  # negative (span, span) pairs sampled per training sentence
    "sampling_limit": 100,  # most candidate pairs per sentence: training (gold + negatives) and inference
    "sen_filter_threshold": 0.4,  # polarity probability a predicted triplet needs
}
ACCEPTS = {
    **engine_accepts(PARAMS),
    "dataset": OneOf(*DATASETS),
    "max_train_sentences": Range(ge=0),
    **dict.fromkeys(("drop_out_rate", "prop_drop", "gcn_dropout"), PROBABILITY_BELOW_1),
    **dict.fromkeys(("hidden_dim", "gcn_dim"), Range(ge=1, integer=True, optional=True)),
    **dict.fromkeys(("attention_heads", "num_layers", "lstm_layers", "size_embedding", "max_span_size",
                     "sampling_limit"), Range(ge=1)),
    **dict.fromkeys(("neg_entity_count", "neg_triple_count"), Range(ge=0)),
    "sen_filter_threshold": Range(ge=0, le=1),
}
_MODEL_KNOBS = tuple(f.name for f in fields(D2E2SConfig))


# --- data ----------------------------------------------------------------------------------------


def data_files(dataset: str) -> dict[str, str]:
    if dataset not in DATASETS:
        raise SetupError(f"dataset must be one of {', '.join(DATASETS)}, not {dataset!r}")
    return {f"d2e2s/{dataset}/{split}_dep_triple_polarity_result.json":
            f"{_REPO}/{dataset}/{split}_dep_triple_polarity_result.json" for split in ("train", "dev", "test")}


@functools.lru_cache(maxsize=12)
def load_split(dataset: str, split: str) -> list[dict[str, Any]]:
    """The records of one split as shipped (tokens, entities, sentiments, pos, dependency)."""
    root = task_files("aste", data_files(dataset))
    path = root / "d2e2s" / dataset / f"{split}_dep_triple_polarity_result.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SetupError(f"aste data in {path} is unreadable: {e}") from None


def gold_triplets(record: dict[str, Any]) -> frozenset[Triplet]:
    entities = record["entities"]
    return frozenset(
        Triplet((entities[s["head"]]["start"], entities[s["head"]]["end"]),
                (entities[s["tail"]]["start"], entities[s["tail"]]["end"]), s["type"])
        for s in record["sentiments"])


def _comparable(word: str) -> str:
    # The parser's input lost hyphens, slashes and the like inside words: compare without them.
    return re.sub(r"[\W_]", "", word.lower()) or word


def align_parse(tokens: list[str], record: dict[str, Any]) -> tuple[list[tuple[int, int]], int]:
    """The dependency arcs as (head, dependent) token indices, and how many tokens have none.

    The parse's words (``pos``) are matched to the tokens in order by difflib's SequenceMatcher,
    comparing lowercased words without non-alphanumerics; an arc is kept when both of its words
    are matched. Where the parse is the tokens (most sentences) this is the identity. Tokens
    the parser never saw (dropped parentheses, split hyphens) keep only their self-loop.
    """
    parse_words = [_comparable(word) for word, _tag in record["pos"]]
    matcher = difflib.SequenceMatcher(a=parse_words, b=[_comparable(t) for t in tokens], autojunk=False)
    to_token = {block.a + k: block.b + k for block in matcher.get_matching_blocks() for k in range(block.size)}
    arcs = [(to_token[head - 1], to_token[dependent - 1]) for _rel, head, dependent in record["dependency"]
            if head > 0 and head - 1 in to_token and dependent - 1 in to_token]
    return arcs, len(tokens) - len(to_token)


@dataclass(frozen=True)
class Sentence:
    words: tuple[str, ...]
    input_ids: tuple[int, ...]  # [CLS] sub-tokens [SEP]
    word_starts: tuple[int, ...]  # position of each word's first sub-token in input_ids
    arcs: tuple[tuple[int, int], ...]  # dependency arcs between word indices (aligned)
    triplets: frozenset[Triplet]
    parse_length_differs: bool
    words_without_arcs: int


@functools.lru_cache(maxsize=8)
def encoded_split(dataset: str, split: str, model_name: str) -> tuple[Sentence, ...]:
    """Every sentence of a split, tokenized once per worker, word by word."""
    tokenizer = load_tokenizer(model_name)
    prefix = [i for i in (tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id,)
              if i is not None]
    suffix = [i for i in (tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id,)
              if i is not None]
    if not prefix:
        raise SetupError(f"model {model_name!r}: its tokenizer has no [CLS] (or BOS) token for the sentence vector")
    records = load_split(dataset, split)
    vocabulary = sorted({w for r in records for w in r["tokens"]})
    pieces = dict(zip(vocabulary, tokenizer(vocabulary, add_special_tokens=False)["input_ids"]))
    sentences = []
    for record in records:
        ids, starts = list(prefix), []
        for word in record["tokens"]:
            starts.append(len(ids))
            ids.extend(pieces[word] or [tokenizer.unk_token_id])  # a word of no sub-token (a lone control char)
        arcs, unmatched = align_parse(record["tokens"], record)
        sentences.append(Sentence(tuple(record["tokens"]), tuple(ids + suffix), tuple(starts), tuple(arcs),
                                  gold_triplets(record), len(record["dependency"]) != len(record["tokens"]), unmatched))
    return tuple(sentences)


def data_report(sentences: tuple[Sentence, ...], max_span_size: int) -> dict[str, int]:
    """What the data needed: parse alignment, and gold the span limit puts out of reach."""
    return {"sentences": len(sentences),
            "parse_length_differs": sum(s.parse_length_differs for s in sentences),
            "words_without_arcs": sum(s.words_without_arcs for s in sentences),
            "gold_triplets": sum(len(s.triplets) for s in sentences),
            "gold_triplets_beyond_max_span_size": sum(
                max(t.aspect[1] - t.aspect[0], t.opinion[1] - t.opinion[0]) > max_span_size
                for s in sentences for t in s.triplets)}


# --- batches and sampling ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Sampling:
    max_span_size: int
    neg_entity_count: int
    neg_triple_count: int
    sampling_limit: int

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Sampling:
        for name in ("neg_entity_count", "neg_triple_count"):
            if params[name] < 0:
                raise SetupError(f"{name} must be 0 or more, not {params[name]}")
        return cls(**{f.name: params[f.name] for f in fields(cls)})


def collate(batch: list[Sentence], *, pad_id: int, sampling: Sampling | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch; with ``sampling``, also draw the training spans and pairs."""
    size, n = len(batch), max(len(s.words) for s in batch)
    length = max(len(s.input_ids) for s in batch)
    out = {"input_ids": torch.full((size, length), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros(size, length, dtype=torch.long),
           "word_starts": torch.zeros(size, n, dtype=torch.long),
           "word_mask": torch.zeros(size, n, dtype=torch.bool),
           "adjacency": torch.zeros(size, n, n)}
    for b, s in enumerate(batch):
        out["input_ids"][b, : len(s.input_ids)] = torch.tensor(s.input_ids)
        out["attention_mask"][b, : len(s.input_ids)] = 1
        out["word_starts"][b, : len(s.words)] = torch.tensor(s.word_starts)
        out["word_mask"][b, : len(s.words)] = True
        own = torch.arange(len(s.words))
        out["adjacency"][b, own, own] = 1.0  # self-loops, as in the published graph
        if s.arcs:
            head, dependent = torch.tensor(s.arcs).T
            out["adjacency"][b, head, dependent] = out["adjacency"][b, dependent, head] = 1.0
    if sampling is not None:
        out.update(training_samples(batch, n, sampling))
    return out


def training_samples(batch: list[Sentence], n: int, sampling: Sampling) -> dict[str, torch.Tensor]:
    """Span labels on the [B, N, max_span_size] grid and the (sentence, span, span) pairs.

    Spans: every gold span within the size limit, plus ``neg_entity_count`` other spans drawn at
    random; the rest are ignored (label -100). Pairs: every gold (aspect, opinion) pair, plus
    negatives drawn from the other ordered pairs of two gold spans (as published), at most
    ``neg_triple_count`` of them and no more than ``sampling_limit`` pairs in all (gold pairs
    are never dropped). Randomness comes from torch's generator, which the engine seeds.
    """
    width = sampling.max_span_size
    labels = torch.full((len(batch), n, width), IGNORE, dtype=torch.long)
    grid_ends = torch.arange(n)[:, None] + torch.arange(1, width + 1)
    pairs, pair_labels = [], []
    for b, sentence in enumerate(batch):
        role = {}
        for t in sentence.triplets:
            role.setdefault(t.opinion, SPAN_TYPES.index("opinion"))
            role[t.aspect] = SPAN_TYPES.index("aspect")  # a span that is both (4 in the data) trains as aspect
        role = {span: r for span, r in role.items() if span[1] - span[0] <= width}
        candidates = grid_ends <= len(sentence.words)
        for start, end in role:
            candidates[start, end - start - 1] = False
        negatives = candidates.nonzero()
        negatives = negatives[torch.randperm(len(negatives))[: sampling.neg_entity_count]]
        labels[b, negatives[:, 0], negatives[:, 1]] = 0
        for (start, end), r in role.items():
            labels[b, start, end - start - 1] = r

        def flat(span: tuple[int, int]) -> int:
            return span[0] * width + span[1] - span[0] - 1

        gold = {}
        for t in sentence.triplets:
            if t.aspect in role and t.opinion in role:
                gold.setdefault((t.aspect, t.opinion), set()).add(t.polarity)
        pool = [(x, y) for x in role for y in role if x != y and (x, y) not in gold]
        n_negative = max(0, min(sampling.neg_triple_count, sampling.sampling_limit - len(gold), len(pool)))
        chosen = [pool[i] for i in torch.randperm(len(pool))[:n_negative].tolist()]
        for (x, y), polarities in [*gold.items(), *((p, set()) for p in chosen)]:
            pairs.append((b, flat(x), flat(y)))
            pair_labels.append([float(p in polarities) for p in POLARITIES])
    return {"span_labels": labels,
            "pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 3),
            "pair_labels": torch.tensor(pair_labels, dtype=torch.float).reshape(-1, len(POLARITIES))}


# --- evaluation ----------------------------------------------------------------------------------


def predict(model: D2E2S, sentences: tuple[Sentence, ...], *, batch_size: int, pad_id: int,
            dtype: torch.dtype | None) -> list[dict[str, set]]:
    """Per sentence: the predicted aspect spans, opinion spans and triplets."""
    dev = next(model.parameters()).device
    model.eval()
    found = []
    for first in range(0, len(sentences), batch_size):
        batch = collate(list(sentences[first: first + batch_size]), pad_id=pad_id)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            extraction = model.extract(**to_device(batch, dev))
        per = [{"aspect": set(), "opinion": set(), "triplets": set()} for _ in range(len(batch["word_mask"]))]
        sentence, span = extraction.span_types.nonzero(as_tuple=True)
        starts, ends = extraction.spans(span)
        for b, start, end, kind in zip(sentence.tolist(), starts.tolist(), ends.tolist(),
                                       extraction.span_types[sentence, span].tolist()):
            per[b][SPAN_TYPES[kind]].add((start, end))
        b, aspect, opinion = extraction.pairs.unbind(-1)
        a_spans, o_spans = extraction.spans(aspect), extraction.spans(opinion)
        for row in zip(b.tolist(), *(x.tolist() for x in (*a_spans, *o_spans)), extraction.polarities.tolist()):
            per[row[0]]["triplets"].add(Triplet((row[1], row[2]), (row[3], row[4]), POLARITIES[row[5]]))
        found.extend(per)
    return found


def score(model: D2E2S, sentences: tuple[Sentence, ...], *, batch_size: int, pad_id: int,
          dtype: torch.dtype | None) -> tuple[float, dict[str, Any]]:
    """Triplet F1 and what goes with it: precision, recall, span F1s, per-polarity scores."""
    found = predict(model, sentences, batch_size=batch_size, pad_id=pad_id, dtype=dtype)
    gold = [s.triplets for s in sentences]
    triplets = triplet_scores(gold, [f["triplets"] for f in found], POLARITIES)
    aspects = micro_scores([{t.aspect for t in g} for g in gold], [f["aspect"] for f in found])
    opinions = micro_scores([{t.opinion for t in g} for g in gold], [f["opinion"] for f in found])
    attrs = {"precision": triplets["precision"], "recall": triplets["recall"],
             "aspect_f1": aspects["f1"], "opinion_f1": opinions["f1"],
             "per_polarity": triplets["per_polarity"], "n_items": len(sentences),
             "n_gold_triplets": triplets["n_gold"], "n_predicted_triplets": triplets["n_predicted"]}
    return triplets["f1"], attrs


# --- the run -------------------------------------------------------------------------------------


def model_config(params: dict[str, Any]) -> D2E2SConfig:
    return D2E2SConfig(**{k: params[k] for k in _MODEL_KNOBS})


def build_model(params: dict[str, Any], *, seed: int) -> D2E2S:
    """The pretrained encoder (copied from the worker's cache) under freshly drawn D2E2S layers."""
    encoder = load_model(AutoModel, params["model_name_or_path"], dropout=None, seed=seed)
    torch.manual_seed(seed)
    try:
        return D2E2S(encoder, model_config(params))
    except ValueError as e:
        raise SetupError(str(e)) from None


def splits(params: dict[str, Any]) -> dict[str, tuple[Sentence, ...]]:
    dataset, model_name = params["dataset"], params["model_name_or_path"]
    if params["max_train_sentences"] < 0:
        raise SetupError(f"max_train_sentences must be 0 (all) or positive, not {params['max_train_sentences']}")
    train = encoded_split(dataset, "train", model_name)
    return {"train": train[: params["max_train_sentences"] or None],
            "dev": encoded_split(dataset, "dev", model_name),
            "test": encoded_split(dataset, "test", model_name)}


def _check_lengths(model: D2E2S, data: dict[str, tuple[Sentence, ...]]) -> None:
    limit = getattr(model.encoder.config, "max_position_embeddings", None)
    for split, sentences in data.items():
        longest = max(len(s.input_ids) for s in sentences)
        if limit and longest > limit:
            raise SetupError(f"a {split} sentence has {longest} sub-tokens, more than the encoder's {limit} positions")


def prepare(params: dict[str, Any]) -> None:
    """Load data, tokenizer and encoder and build the model once: fail before a study exists."""
    data = splits(params)
    Sampling.from_params(params)
    _check_lengths(build_model(params, seed=0), data)


def train(params: dict[str, Any], reporter: Reporter | None = None, *, on_test: bool = False) -> dict[str, Any]:
    """One training run; dev metrics every epoch (and the full test split if ``on_test``)."""
    started = time.perf_counter()
    reporter = reporter or Reporter()
    args = TrainingArguments.from_params(params)
    data = splits(params)
    model = build_model(params, seed=args.seed)
    _check_lengths(model, data)
    pad_id = load_tokenizer(params["model_name_or_path"]).pad_token_id or 0
    sampling = Sampling.from_params(params)
    for split in ("train", "dev"):
        reporter.set_user_attr(f"data_{split}", data_report(data[split], params["max_span_size"]))

    def evaluate(m: D2E2S, dtype: torch.dtype | None) -> tuple[float, dict[str, Any]]:
        return score(m, data["dev"], batch_size=args.per_device_eval_batch_size, pad_id=pad_id, dtype=dtype)

    value, attrs = fit(model, list(data["train"]), functools.partial(collate, pad_id=pad_id, sampling=sampling),
                       evaluate, args, reporter, started=started, history_keys=("precision", "recall"))
    result = {METRIC: value, "split": "validation", **attrs, "train_seconds": round(time.perf_counter() - started, 2)}
    if on_test:
        dtype = autocast_dtype(args.mixed_precision, device())  # as the dev scores were computed
        test_value, test_attrs = score(model, data["test"], batch_size=args.per_device_eval_batch_size,
                                       pad_id=pad_id, dtype=dtype)
        result["test"] = {METRIC: test_value, **test_attrs,
                          "data": data_report(data["test"], params["max_span_size"])}
    return result

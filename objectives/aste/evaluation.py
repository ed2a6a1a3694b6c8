"""Exact-match scoring of aspect sentiment triplets, micro-averaged over a split.

A triplet counts as correct only when its aspect span, its opinion span (word offsets, end
exclusive) and its polarity all equal a gold triplet of the same sentence. Gold and predicted
triplets are sets per sentence: the few sentences whose file lists one triplet twice count it
once, as in the published evaluator (which scores the union of gold and predicted tuples).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence, Set
from typing import Any, NamedTuple

Span = tuple[int, int]  # (first word, one past the last word)


class Triplet(NamedTuple):
    aspect: Span
    opinion: Span
    polarity: str


def prf(n_correct: int, n_predicted: int, n_gold: int) -> dict[str, Any]:
    """Precision, recall and F1 from counts; 0.0 where a ratio has nothing to divide by."""
    precision = n_correct / n_predicted if n_predicted else 0.0
    recall = n_correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "n_correct": n_correct, "n_predicted": n_predicted, "n_gold": n_gold}


def micro_scores(gold: Sequence[Set[Hashable]], predicted: Sequence[Set[Hashable]]) -> dict[str, Any]:
    """Micro P/R/F1 of exact matches, sentence by sentence (the i-th sets belong together)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    return prf(sum(len(set(g) & set(p)) for g, p in zip(gold, predicted)),
               sum(len(set(p)) for p in predicted), sum(len(set(g)) for g in gold))


def triplet_scores(gold: Sequence[Set[Triplet]], predicted: Sequence[Set[Triplet]],
                   polarities: Sequence[str]) -> dict[str, Any]:
    """Overall triplet P/R/F1 and the same per gold/predicted polarity (``per_polarity``).

    A polarity with no gold triplet in the split has ``f1: None`` (absent, not zero). Each
    polarity's ``n`` is its number of gold triplets: the slice's size, by which confirmation
    weighs it (the house convention for per-slice figures).
    """
    result = micro_scores(gold, predicted)
    per = {}
    for polarity in polarities:
        scores = micro_scores([{t for t in g if t.polarity == polarity} for g in gold],
                              [{t for t in p if t.polarity == polarity} for p in predicted])
        if not scores["n_gold"]:
            scores.update(precision=None, recall=None, f1=None)
        per[polarity] = {**scores, "n": scores["n_gold"]}
    result["per_polarity"] = per
    return result

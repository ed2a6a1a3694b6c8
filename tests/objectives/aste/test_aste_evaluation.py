"""The ASTE triplet evaluator against hand-made cases: each mistake moves P/R/F1 exactly."""

from __future__ import annotations

import pytest

from objectives.aste.evaluation import Triplet, micro_scores, triplet_scores

POLARITIES = ("POSITIVE", "NEGATIVE", "NEUTRAL")

# Two sentences, four gold triplets (three positive, one negative, no neutral).
GOLD = [
    {Triplet((1, 2), (3, 5), "POSITIVE"), Triplet((7, 9), (6, 7), "NEGATIVE")},
    {Triplet((0, 1), (2, 3), "POSITIVE"), Triplet((4, 5), (2, 3), "POSITIVE")},
]


def scores(predicted):
    return triplet_scores(GOLD, predicted, POLARITIES)


def changed(sentence, old, new):
    """GOLD with one triplet of one sentence replaced (new=None: removed)."""
    predicted = [set(s) for s in GOLD]
    predicted[sentence].discard(old)
    if new is not None:
        predicted[sentence].add(new)
    return predicted


def counts(result):
    return result["n_correct"], result["n_predicted"], result["n_gold"]


def test_perfect_prediction_scores_one():
    result = scores([set(s) for s in GOLD])
    assert (result["precision"], result["recall"], result["f1"]) == (1.0, 1.0, 1.0)
    assert counts(result) == (4, 4, 4)
    assert result["per_polarity"]["POSITIVE"]["f1"] == 1.0
    assert result["per_polarity"]["NEGATIVE"]["f1"] == 1.0


def test_wrong_polarity_is_one_miss_and_one_false_positive():
    result = scores(changed(0, Triplet((7, 9), (6, 7), "NEGATIVE"), Triplet((7, 9), (6, 7), "NEUTRAL")))
    assert counts(result) == (3, 4, 4)
    assert (result["precision"], result["recall"], result["f1"]) == (0.75, 0.75, 0.75)
    negative, neutral = result["per_polarity"]["NEGATIVE"], result["per_polarity"]["NEUTRAL"]
    assert counts(negative) == (0, 0, 1) and negative["recall"] == 0.0 and negative["f1"] == 0.0
    assert counts(neutral) == (0, 1, 0)
    assert neutral["f1"] is None, "no gold neutral triplet: the slice is absent, not zero"
    assert (negative["n"], neutral["n"], result["per_polarity"]["POSITIVE"]["n"]) == (1, 0, 3), "slice sizes"
    assert result["per_polarity"]["POSITIVE"]["f1"] == 1.0


@pytest.mark.parametrize("wrong", [
    Triplet((1, 3), (3, 5), "POSITIVE"),  # aspect one word too long
    Triplet((2, 2 + 1), (3, 5), "POSITIVE"),  # aspect shifted by one
    Triplet((1, 2), (3, 4), "POSITIVE"),  # opinion one word too short
    Triplet((1, 2), (4, 5), "POSITIVE"),  # opinion starts one word late
])
def test_a_span_boundary_off_by_one_is_wrong(wrong):
    result = scores(changed(0, Triplet((1, 2), (3, 5), "POSITIVE"), wrong))
    assert counts(result) == (3, 4, 4)
    assert (result["precision"], result["recall"], result["f1"]) == (0.75, 0.75, 0.75)
    assert counts(result["per_polarity"]["POSITIVE"]) == (2, 3, 3)


def test_a_missing_triplet_costs_recall_only():
    result = scores(changed(1, Triplet((4, 5), (2, 3), "POSITIVE"), None))
    assert counts(result) == (3, 3, 4)
    assert result["precision"] == 1.0 and result["recall"] == 0.75
    assert result["f1"] == pytest.approx(6 / 7)  # 2 * 1 * 0.75 / 1.75


def test_a_spurious_triplet_costs_precision_only():
    predicted = [set(s) for s in GOLD]
    predicted[1].add(Triplet((4, 5), (6, 8), "NEGATIVE"))
    result = scores(predicted)
    assert counts(result) == (4, 5, 4)
    assert result["precision"] == 0.8 and result["recall"] == 1.0
    assert result["f1"] == pytest.approx(8 / 9)  # 2 * 0.8 / 1.8
    assert counts(result["per_polarity"]["NEGATIVE"]) == (1, 2, 1)


def test_a_right_triplet_in_the_wrong_sentence_does_not_count():
    predicted = [set(GOLD[1]), set(GOLD[0])]
    assert counts(scores(predicted)) == (0, 4, 4)


def test_nothing_predicted_scores_zero_without_dividing_by_zero():
    result = scores([set(), set()])
    assert (result["precision"], result["recall"], result["f1"]) == (0.0, 0.0, 0.0)
    assert counts(result) == (0, 0, 4)


def test_a_triplet_listed_twice_counts_once():
    gold = [[Triplet((1, 2), (3, 4), "POSITIVE")] * 2]
    assert counts(micro_scores([set(g) for g in gold], [{Triplet((1, 2), (3, 4), "POSITIVE")}])) == (1, 1, 1)


def test_sentence_counts_must_agree():
    with pytest.raises(ValueError, match="2 gold sentences but 1 predicted"):
        micro_scores(GOLD, [set()])

"""The Recipe-MPR objective on the real data: honest options, honest splits, honest metrics."""

from __future__ import annotations

import collections
import json

import optuna
import pytest

from helpers import Recording
from objectives import SetupError
from objectives.engine.precision import cpu_flags, has_native_bf16

AUTO_ON_CPU = "bfloat16" if has_native_bf16(cpu_flags()) else "fp32"  # what mixed_precision: auto trains in here


@pytest.fixture
def items(recipe, data_dir):
    return json.loads((data_dir / "recipe-mpr" / "500QA.json").read_text())


@pytest.fixture
def folds(data_dir):
    return json.loads((data_dir / "recipe-mpr" / "folds" / "5_fold_inds.json").read_text())


# --- option order -----------------------------------------------------------------------------


def test_answer_is_listed_first_in_the_file_but_not_after_shuffling(recipe, items):
    assert all(next(iter(item["options"])) == item["answer"] for item in items), "why shuffling matters"
    positions = []
    for index, item in enumerate(items):
        options, label = recipe.shuffled_options(item, index, seed=0)
        assert sorted(options) == sorted(item["options"].values())
        assert options[label] == item["options"][item["answer"]]
        positions.append(label)
    counts = collections.Counter(positions)
    assert set(counts) == {0, 1, 2, 3, 4}
    assert all(60 <= n <= 140 for n in counts.values()), f"answer positions far from uniform: {counts}"


def test_same_seed_same_order_other_seed_other_order(recipe, items):
    first = [recipe.shuffled_options(item, i, seed=0) for i, item in enumerate(items)]
    again = [recipe.shuffled_options(item, i, seed=0) for i, item in enumerate(items)]
    other = [recipe.shuffled_options(item, i, seed=1) for i, item in enumerate(items)]
    assert first == again
    assert sum(a != b for a, b in zip(first, other)) > 400


def test_encoded_labels_follow_the_shuffle(recipe, items, tiny_model):
    encoded = recipe.encoded_items(str(tiny_model), 64, 0)
    assert len(encoded) == 500
    assert [e["label"] for e in encoded] == [recipe.shuffled_options(item, i, 0)[1] for i, item in enumerate(items)]
    assert all(len(e["features"]["input_ids"]) == 5 for e in encoded)
    assert max(len(ids) for e in encoded for ids in e["features"]["input_ids"]) <= 64


# --- splits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fold", range(5))
def test_splits_are_disjoint_and_test_is_the_official_fold(recipe, folds, fold):
    params = {**recipe.PARAMS, "fold": fold}
    split = recipe.splits(params)
    train, validation, test = (set(split[k]) for k in ("train", "validation", "test"))
    official_train, _, official_test = folds[fold]
    assert len(test) == len(split["test"]) == 100
    assert test == set(official_test)
    assert not test & (train | validation), "test items never in train or validation"
    assert not train & validation
    assert train | validation == set(official_train)
    assert (len(train), len(validation)) == (320, 80)
    assert recipe.splits(params) == split, "the same split every time"


def test_test_folds_cover_all_500_items(recipe):
    tests = [recipe.splits({**recipe.PARAMS, "fold": f})["test"] for f in range(5)]
    assert sorted(i for t in tests for i in t) == list(range(500))


def test_validation_is_stratified_by_rarest_query_type(recipe, items):
    params = recipe.PARAMS
    split = recipe.splits(params)

    def rarest(i):
        return min(recipe.query_types(items[i]), key=recipe.BY_RARITY.index, default="none")

    pool = collections.Counter(rarest(i) for i in split["train"] + split["validation"])
    held = collections.Counter(rarest(i) for i in split["validation"])
    for qtype, n in pool.items():
        assert abs(held[qtype] - n * params["validation_fraction"]) <= 1, (qtype, held[qtype], n)
    other = recipe.splits({**params, "split_seed": 1})
    assert other["validation"] != split["validation"] and other["test"] == split["test"]


def test_fold_out_of_range_is_a_setup_error(recipe):
    with pytest.raises(SetupError, match=r"fold must be 0\.\.4, not 5"):
        recipe.splits({**recipe.PARAMS, "fold": 5})


# --- metrics ----------------------------------------------------------------------------------


def test_accuracy_by_type_counts_each_type_of_an_item_and_reports_absent_types(recipe, items):
    types = {i: set(recipe.query_types(item)) for i, item in enumerate(items)}
    spec_neg = next(i for i, t in types.items() if t == {"Negated", "Specific"})
    common = next(i for i, t in types.items() if t == {"Commonsense"})
    untyped = next(i for i, t in types.items() if not t)

    result = recipe.accuracy_by_type([True, False, True], [spec_neg, common, untyped])
    assert result == {
        "Specific": {"accuracy": 1.0, "n": 1},
        "Commonsense": {"accuracy": 0.0, "n": 1},
        "Negated": {"accuracy": 1.0, "n": 1},
        "Analogical": {"accuracy": None, "n": 0},
        "Temporal": {"accuracy": None, "n": 0},
    }
    assert all(v == {"accuracy": None, "n": 0} for v in recipe.accuracy_by_type([], []).values())


# --- training ---------------------------------------------------------------------------------


def tiny_params(recipe, tiny_model, **changes):
    return {**recipe.PARAMS, "model_name_or_path": str(tiny_model), "max_length": 64, "learning_rate": 3e-3,
            "num_train_epochs": 2, "per_device_train_batch_size": 32, "warmup_steps": 0, **changes}


def test_same_config_and_seed_give_the_same_metric(recipe, tiny_model):
    params = tiny_params(recipe, tiny_model)
    runs = [Recording(), Recording(), Recording()]
    results = [recipe.train(params, runs[0]), recipe.train(params, runs[1]),
               recipe.train({**params, "seed": 7}, runs[2])]
    assert results[0]["accuracy"] == results[1]["accuracy"]
    assert runs[0].reports == runs[1].reports
    assert results[0]["per_query_type"] == results[1]["per_query_type"]
    losses = [[e["train_loss"] for e in r.attrs["epochs"]] for r in runs]
    assert losses[0] == losses[1]
    assert losses[2] != losses[0], "the seed changes the run"


def test_train_reports_every_epoch_and_returns_validation_slices(recipe, tiny_model):
    reporter = Recording()
    result = recipe.train(tiny_params(recipe, tiny_model, num_train_epochs=2), reporter, on_test=True)
    assert [step for step, _ in reporter.reports] == [1, 2]
    assert result["accuracy"] == reporter.reports[-1][1]
    assert result["split"] == "validation" and result["n_items"] == 80
    assert 0.0 <= result["accuracy"] <= 1.0 and result["accuracy"] * 80 == round(result["accuracy"] * 80)
    assert set(result["per_query_type"]) == set(recipe.QUERY_TYPES)
    assert result["test"]["n_items"] == 100 and 0.0 <= result["test"]["accuracy"] <= 1.0
    assert reporter.attrs["device"] == "cpu" and reporter.attrs["mixed_precision_used"] == AUTO_ON_CPU
    assert [e["epoch"] for e in reporter.attrs["epochs"]] == [1, 2]


def test_pruning_stops_training_at_that_epoch(recipe, tiny_model):
    reporter = Recording(prune_at=1)
    with pytest.raises(optuna.TrialPruned):
        recipe.train(tiny_params(recipe, tiny_model, num_train_epochs=3), reporter)
    assert [step for step, _ in reporter.reports] == [1]
    assert reporter.attrs["end_reason"] == "pruned at epoch 1"

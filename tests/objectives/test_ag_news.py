"""The AG News objective: the partial training files merged without leaks, a stratified
validation split, per-class accuracy and time per epoch on every trial, test only on request."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from helpers import minilm_epoch, REPO, Recording, shared_data
from objectives import SetupError
from search.spec import load_spec

SHIPPED = REPO / "spaces" / "ag-news.yaml"
CLASSES = ("World", "Sports", "Business", "Sci/Tech")


@pytest.fixture(scope="module")
def ag_dir() -> Path:
    return shared_data("ag_news/test.csv")


@pytest.fixture
def ag(ag_dir, monkeypatch):
    monkeypatch.setenv("SEARCH_DATA_DIR", str(ag_dir))
    from objectives import ag_news

    return ag_news


# --- the real data ------------------------------------------------------------------------------


@pytest.mark.realdata
def test_partial_training_files_are_merged_without_duplicates_or_test_rows(ag, ag_dir):
    train, test, counts = ag.load_rows(str(ag_dir))
    assert counts["source"] == "train_first2000.csv + train_hf_sample5000.csv"
    assert counts["train_rows"] == 7000 and counts["also_in_test"] == 1  # SOURCE.md: 87 shared rows, 1 test text
    assert len(train) == counts["train"] == 6904
    assert len(test) == 7600 and collections.Counter(label for _, label in test) == {0: 1900, 1: 1900, 2: 1900, 3: 1900}
    texts = [text for text, _ in train]
    assert len(set(texts)) == len(texts) and not set(texts) & {text for text, _ in test}
    assert train[0] == ("Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers, Wall Street's "
                        "dwindling\\band of ultra-cynics, are seeing green again.", 2), "title + description, class - 1"


@pytest.mark.realdata
def test_the_full_training_file_is_used_when_present(ag, ag_dir, tmp_path, monkeypatch):
    folder = tmp_path / "ag_news"
    folder.mkdir()
    (folder / "test.csv").symlink_to(ag_dir / "ag_news" / "test.csv")
    lines = (ag_dir / "ag_news" / "train_first2000.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "train.csv").write_text("".join(lines[:300]), encoding="utf-8")
    monkeypatch.setenv("SEARCH_DATA_DIR", str(tmp_path))
    train, _, counts = ag.load_rows(str(tmp_path))
    assert counts["source"] == "train.csv" and counts["train_rows"] == 300 and len(train) == 300


@pytest.mark.realdata
def test_validation_is_carved_from_train_stratified_and_deterministic(ag):
    data = ag.labelled(dict(ag.PARAMS))
    train, validation, test = (data.splits[k] for k in ("train", "validation", "test"))
    assert len(validation) == 691 and len(train) == 6904 - 691 and len(test) == 7600
    assert not set(train) & set(validation) and not (set(train) | set(validation)) & set(test)
    pool = collections.Counter(data.labels[i] for i in [*train, *validation])
    held = collections.Counter(data.labels[i] for i in validation)
    for label, n in pool.items():
        assert abs(held[label] - 0.1 * n) <= 1, (label, held[label], n)
    assert list(ag.labelled(dict(ag.PARAMS)).splits["validation"]) == list(validation)
    assert set(ag.labelled({**ag.PARAMS, "split_seed": 1}).splits["validation"]) != set(validation)
    small = ag.labelled({**ag.PARAMS, "max_train_samples": 100, "max_eval_samples": 50})
    assert small.splits["train"] == train[:100] and small.splits["validation"] == validation[:50]
    assert data.label_names == CLASSES


def test_without_data_dir_and_hub_the_error_is_one_line(ag, monkeypatch):
    from objectives._models import _hub_reachable

    monkeypatch.delenv("SEARCH_DATA_DIR")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    if _hub_reachable():
        pytest.skip("the HF hub is reachable from here: the dataset would be downloaded")
    with pytest.raises(SetupError, match=r"^ag_news data not found: SEARCH_DATA_DIR is not set and the HF hub is "
                                         r"unreachable \(set SEARCH_DATA_DIR to a folder that holds ag_news/") as e:
        ag.load_rows(None)
    assert "\n" not in str(e.value)


# --- training on the tiny model -------------------------------------------------------------------


def test_a_trial_records_per_class_accuracy_and_seconds_per_epoch(ag, tiny_model):
    params = {**ag.PARAMS, "model_name_or_path": str(tiny_model), "max_seq_len": 64, "num_train_epochs": 2,
              "learning_rate": 3e-3, "max_train_samples": 400, "max_eval_samples": 200}
    reporter = Recording()
    result = ag.train(params, reporter, on_test=True)
    assert [step for step, _ in reporter.reports] == [1, 2] and result["accuracy"] == reporter.reports[-1][1]
    assert result["n_items"] == 200 and result["split"] == "validation"
    per = reporter.attrs["per_class"]
    assert tuple(per) == CLASSES and sum(v["n"] for v in per.values()) == 200
    hits = sum(v["accuracy"] * v["n"] for v in per.values())
    assert result["accuracy"] == pytest.approx(hits / 200)
    epochs = reporter.attrs["epochs"]
    seconds = reporter.attrs["train_seconds_per_epoch"]
    assert len(seconds) == len(epochs) == 2
    assert all(0 < s <= e["seconds"] for s, e in zip(seconds, epochs)), "training time, validation excluded"
    assert reporter.attrs["seconds_per_epoch"] == pytest.approx(sum(seconds) / 2, abs=1e-3)
    assert result["test"]["n_items"] == 7600 and tuple(result["test"]["per_class"]) == CLASSES


# --- the spec ------------------------------------------------------------------------------------


def test_shipped_spec_targets_the_seed_and_draws_the_published_figure():
    spec = load_spec(str(SHIPPED))
    assert spec.objective == "ag_news" and spec.target.value == 0.91 and spec.baseline.computed
    assert [(r.value, r.metric) for r in spec.references] == [(0.9433, None)]
    assert spec.fixed["model_name_or_path"] == "distilbert-base-uncased"
    assert set(spec.space) == {"learning_rate", "num_train_epochs", "per_device_train_batch_size", "warmup_ratio",
                               "weight_decay", "max_seq_len"}
    assert spec.space["max_seq_len"].choices == [128, 256]
    seed = next(c for c in spec.known_configs if c.name == "baseline")
    assert seed.params == {"learning_rate": 2e-5, "num_train_epochs": 10, "per_device_train_batch_size": 32,
                           "warmup_ratio": 0.0, "weight_decay": 0.0, "max_seq_len": 256}


# --- the CLI -------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_one_short_epoch_of_minilm_on_ag_news(ag_dir, cli, tmp_path):
    config = {"objective": "ag_news",
              "params": {"model_name_or_path": "minilm", "num_train_epochs": 1, "learning_rate": 5e-5,
                         "max_seq_len": 64, "per_device_train_batch_size": 16, "max_train_samples": 160,
                         "max_eval_samples": 100}}
    minilm_epoch(cli, tmp_path, config, CLASSES)

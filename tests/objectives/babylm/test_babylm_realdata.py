"""The real corpus and the real BLiMP: a WordPiece tokenizer trained on the 4.6M-word BabyLM
stand-in, a few optimizer steps of LTG-BERT xs (the published 12-layer size) with the published
recipe, and BLiMP scored on one pair per paradigm (about a minute on two CPU cores)."""

from __future__ import annotations

import math

import pytest

from babylm_fixtures import real_data
from objectives.contract import Reporter


class Recorder(Reporter):
    def __init__(self) -> None:
        self.attrs: dict = {}
        self.reports: dict = {}

    def report(self, value: float, step: int) -> None:
        self.reports[step] = value

    def set_user_attr(self, key: str, value: object) -> None:
        self.attrs[key] = value


@pytest.mark.realdata
def test_a_few_steps_of_ltg_bert_xs_on_the_real_corpus_scored_on_blimp(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCH_DATA_DIR", str(real_data()))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # train the tokenizer here, for real
    from objectives import babylm
    from objectives.babylm import mlm

    params = {**babylm.PARAMS, "model_size": "xs", "vocab_size": 4096, "max_steps": 6, "eval_steps": 6,
              "per_device_train_batch_size": 8, "warmup_ratio": 0.0, "blimp_pairs_per_paradigm": 1,
              "dev_max_sequences": 32, "mixed_precision": "no"}
    babylm.prepare(params)
    files = mlm.corpus_files("train.txt", role="train")
    tokenizer = mlm.load_tokenizer(files, 4096, 10)
    assert tokenizer.get_vocab_size() == 4096 and tokenizer.token_to_id("[MASK]") == mlm.MASK
    assert mlm.tokenizer_path(files, 4096, 10).is_relative_to(tmp_path)

    recorder = Recorder()
    result = babylm.train(params, recorder)

    assert result["train_segments"] > 40_000, "4.6M words packed into 126-token segments"
    loss = recorder.attrs["step_log"]["loss"]
    assert len(loss) == 6 and loss[-1] < loss[0], f"LAMB at lr 1e-2 lowers the loss within a few steps: {loss}"
    assert 0 < result["dev_loss"] < math.log(4096) + 0.5
    assert sorted(recorder.reports) == [6] and 0.0 <= result["blimp"] <= 1.0
    assert result["n_items"] == 67 and len(result["per_phenomenon"]) == 13 and len(result["per_paradigm"]) == 67
    assert result["n_parameters"] > 5_000_000

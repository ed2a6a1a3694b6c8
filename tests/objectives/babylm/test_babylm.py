"""BabyLM in-process: LTG-BERT, span masking, the tokenizer cache, PLL scoring, LAMB, the step
log, and a short pre-training run that checkpoints, is interrupted and resumes exactly."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from babylm_fixtures import PAIRS_PER_PARADIGM, TINY, make_tiny_data
from objectives import SetupError
from objectives.babylm import blimp
from objectives.babylm import mlm
from objectives.engine import steplog
from objectives.engine.checkpoint import has_checkpoint, read_summary
from objectives.engine.lamb import Lamb
from objectives.babylm.ltg_bert import PRESETS, LtgBertConfig, LtgBertForMaskedLM, relative_position_buckets
from objectives.contract import Reporter


def tiny_model(vocab: int = 60, seed: int = 0) -> LtgBertForMaskedLM:
    torch.manual_seed(seed)
    config = LtgBertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64)
    return LtgBertForMaskedLM(config).eval()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("babylm-data"))


@pytest.fixture
def babylm(tiny_data: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SEARCH_DATA_DIR", str(tiny_data))  # the session's cache: one tokenizer for the module
    from objectives import babylm

    return babylm


# --- the model --------------------------------------------------------------------------------


def test_save_and_load_give_identical_logits_here_and_as_remote_code(tmp_path):
    model = tiny_model()
    ids = torch.tensor([[1, 10, 11, 12, 13, 2], [1, 20, 21, 2, 3, 3]])
    mask = (ids != 3).long()
    expected = model(ids, mask).logits
    model.save_pretrained(tmp_path)

    from transformers import AutoModelForMaskedLM

    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is LtgBertForMaskedLM
    assert torch.equal(loaded(ids, mask).logits, expected)
    assert loaded.classifier.decoder.weight is loaded.embedding.word_embedding.weight, "head tied after loading"

    # Elsewhere: a fresh process that has never imported this project loads the saved code.
    torch.save({"ids": ids, "mask": mask, "logits": expected}, tmp_path / "expected.pt")
    script = ("import sys, torch; from transformers import AutoModelForMaskedLM;"
              "e = torch.load(sys.argv[1] + '/expected.pt');"
              "m = AutoModelForMaskedLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval();"
              "assert 'objectives' not in sys.modules, 'loaded through this project';"
              "print(type(m).__module__, torch.allclose(m(e['ids'], e['mask']).logits, e['logits'], atol=1e-6))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1",
                                                                       "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "True" and "transformers_modules" in out.stdout, out.stdout


def test_no_absolute_positions_so_left_padding_changes_nothing():
    # BERT's absolute positions would shift under a masked-out left padding; relative ones do not.
    model = tiny_model()
    ids = torch.tensor([[1, 10, 11, 12, 2]])
    padded = torch.tensor([[3, 3, 1, 10, 11, 12, 2]])
    out = model(ids).logits[0]
    out_padded = model(padded, (padded != 3).long()).logits[0, 2:]
    assert torch.allclose(out, out_padded, atol=1e-5)
    names = [n for n, _ in model.named_parameters()]
    assert not any("position" in n or "token_type" in n for n in names), names
    relative = [n for n in names if "relative_embedding" in n]
    assert relative == ["embedding.relative_embedding"], "one relative table, shared by every layer"
    assert model.embedding.relative_embedding.shape == (2 * 32 - 1, 32)


def test_relative_position_buckets_are_exact_near_and_logarithmic_far():
    buckets = relative_position_buckets(512, 32, 512) - 31  # back to signed buckets
    distance = torch.arange(512)[:, None] - torch.arange(512)[None, :]
    near = distance.abs() <= 16
    assert torch.equal(buckets[near], distance[near])
    assert buckets.abs().max() == 31 and torch.equal(buckets.sign(), distance.sign())
    far = buckets[0, :].flip(0)  # distances -511 .. 0
    assert torch.all(far[1:] >= far[:-1]), "monotone in the distance"
    assert len(set(buckets[511, :].tolist())) == 32, "511 distances in 32 buckets"


def test_layout_and_init_follow_ltg_bert():
    model = tiny_model()
    layer = model.layers[1]
    assert layer.feed_forward.up.out_features == 2 * 64 and layer.feed_forward.up.bias is None  # GEGLU
    assert not layer.attention.pre_layer_norm.elementwise_affine and layer.attention.post_layer_norm.elementwise_affine
    std = math.sqrt(2 / (5 * 32))
    assert model.embedding.word_embedding.weight.std().item() == pytest.approx(std, rel=0.15)
    deep = model.layers[1].feed_forward.up.weight.std().item() / model.layers[0].feed_forward.up.weight.std().item()
    assert deep == pytest.approx(math.sqrt(2 / 4), rel=0.1), "layer i scaled by sqrt(1 / (2 (1 + i)))"
    assert model.classifier.decoder.weight is model.embedding.word_embedding.weight
    assert {"xs": 192, "small": 384, "base": 768} == {k: v["hidden_size"] for k, v in PRESETS.items()}
    assert sum(p.numel() for p in LtgBertForMaskedLM(LtgBertConfig.from_preset("xs")).parameters()) == 8_533_888


# --- masking, corpus, tokenizer --------------------------------------------------------------


def test_span_masking_never_touches_specials_and_keeps_the_80_10_10_rule():
    rng = np.random.default_rng(0)
    vocab, n_rows = 500, 3000
    corrupted = kept = randomised = labelled = maskable_total = 0
    runs: list[int] = []
    for _ in range(n_rows):
        body = rng.integers(mlm.N_SPECIAL, vocab, 100)
        body[rng.integers(0, 100, 5)] = mlm.PAR  # paragraph ends inside a segment
        tokens = np.concatenate([[mlm.CLS], body, [mlm.SEP]])
        inputs, labels = mlm.span_mask(tokens, rng, mask_p=0.15, random_p=0.1, keep_p=0.1, vocab_size=vocab)
        special = tokens < mlm.N_SPECIAL
        assert (labels[special] == -100).all() and (inputs[special] == tokens[special]).all()
        picked = labels != -100
        assert (labels[picked] == tokens[picked]).all()
        assert (inputs[~picked] == tokens[~picked]).all(), "only predicted tokens change"
        labelled += picked.sum()
        maskable_total += (~special).sum()
        corrupted += (inputs[picked] == mlm.MASK).sum()
        kept += (inputs[picked] == tokens[picked]).sum()
        randomised += ((inputs[picked] != tokens[picked]) & (inputs[picked] != mlm.MASK)).sum()
        edges = np.flatnonzero(np.diff(np.r_[0, picked.astype(int), 0]))
        runs += list(edges[1::2] - edges[::2])
    assert 0.8 - 0.02 < corrupted / labelled < 0.8 + 0.02
    assert 0.1 - 0.015 < kept / labelled < 0.1 + 0.015
    assert 0.1 - 0.015 < randomised / labelled < 0.1 + 0.015
    assert 0.15 <= labelled / maskable_total < 0.19, "Binomial(n, 0.15) budget; the last span may overshoot it"
    assert np.mean(runs) > 2, "spans, not single tokens"


def test_span_lengths_are_geometric_one_third_modulo_ten():
    rng = np.random.default_rng(1)
    lengths = np.array([mlm.span_length(rng) for _ in range(30000)])
    assert lengths.min() == 0 and lengths.max() == 9
    share = np.bincount(lengths, minlength=10) / len(lengths)
    expected = np.zeros(10)
    for k in range(1, 200):
        expected[k % 10] += (2 / 3) ** (k - 1) / 3
    assert np.abs(share - expected).max() < 0.01


def test_collator_pads_and_gives_every_row_something_to_predict():
    collator = mlm.MaskedLmCollator(max_seq_length=16, mask_p=0.15, random_p=0.1, keep_p=0.1, short_p=0.5,
                                     vocab_size=100)
    torch.manual_seed(0)
    segments = [np.arange(10, 40, dtype=np.int32), np.array([50], dtype=np.int32), np.arange(7, 12, dtype=np.int32)]
    for _ in range(50):
        batch = collator(segments)
        assert batch["input_ids"].shape[1] <= 16
        assert ((batch["labels"] != -100).sum(1) >= 1).all()
        assert (batch["input_ids"][batch["attention_mask"] == 0] == mlm.PAD).all()
        assert (batch["input_ids"][:, 0] == mlm.CLS).all()
    torch.manual_seed(5)
    first = collator(segments)
    torch.manual_seed(5)
    assert all(torch.equal(first[k], v) for k, v in collator(segments).items()), "torch's seed decides a batch"


def test_corpus_accepts_babylm_folders_and_packs_paragraphs(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCH_DATA_DIR", str(tmp_path))
    folder = tmp_path / "babylm" / "train_10M"
    folder.mkdir(parents=True)
    (folder / "childes.train").write_text("hello there\nhow are you\n\nnew story\n")
    (folder / "gutenberg.train").write_text("once upon a time\n")
    files = mlm.corpus_files("train_10M", role="train")
    assert [f.name for f in files] == ["childes.train", "gutenberg.train"]
    assert list(mlm.documents(files)) == [["hello there", "how are you"], ["new story"], ["once upon a time"]]
    paragraphs = [np.array([10, 11, 12, mlm.PAR]), np.array([13, mlm.PAR]), np.arange(20, 31)]
    packed = mlm.pack(paragraphs, 6)
    assert [len(s) for s in packed] == [6, 6, 5] and packed[0].tolist() == [10, 11, 12, mlm.PAR, 13, mlm.PAR]
    with pytest.raises(SetupError, match=r"babylm dev text not found: .*dev\.txt does not exist"):
        mlm.corpus_files("dev.txt", role="dev")


def test_tokenizer_is_trained_once_per_corpus_and_vocabulary(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    files = (tiny_data / "babylm" / "train.txt",)
    mlm.load_tokenizer.cache_clear()
    tokenizer = mlm.load_tokenizer(files, 300, 2)
    path = mlm.tokenizer_path(files, 300, 2)
    assert path.is_file() and path.is_relative_to(tmp_path)
    assert [tokenizer.token_to_id(t) for t in mlm.SPECIALS] == list(range(7))
    trained_at = path.stat().st_mtime_ns
    mlm.load_tokenizer.cache_clear()  # a new worker process: the cache on disk serves it
    again = mlm.load_tokenizer(files, 300, 2)
    assert path.stat().st_mtime_ns == trained_at and again.get_vocab() == tokenizer.get_vocab()
    mlm.load_tokenizer(files, 350, 2)
    assert len(list(path.parent.glob("*.json"))) == 2, "another vocabulary size is another tokenizer"


# --- pseudo-log-likelihood ---------------------------------------------------------------------


class Bigram(nn.Module):
    """A masked LM whose logits at position i are a fixed row chosen by the token at i - 1:
    its PLL can be computed by hand (the neighbour is never the masked one)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, input_ids: torch.Tensor, **_: object):
        logits = self.table[torch.roll(input_ids, 1, dims=1)]

        class Out:
            pass

        out = Out()
        out.logits = logits
        return out


def test_batched_pll_matches_a_hand_computation_and_the_one_by_one_loop():
    torch.manual_seed(0)
    table = torch.randn(30, 30)
    model = Bigram(table)
    sentences = [[7, 8, 9], [10, 11], [7, 8, 9], [12, 13, 14, 15, 16], [20]]
    log_p = torch.log_softmax(table, -1)

    def by_hand(sentence: list[int]) -> float:
        ids = [1, *sentence, 2]
        return sum(log_p[ids[i - 1], ids[i]].item() for i in range(1, len(ids) - 1))

    batched = blimp.pll_scores(model, sentences, cls_id=1, sep_id=2, mask_id=4, tokens_per_batch=7)
    looped = blimp.pll_one_by_one(model, sentences, cls_id=1, sep_id=2, mask_id=4)
    assert np.allclose(batched, [by_hand(s) for s in sentences], atol=1e-5)
    assert np.allclose(looped, batched, atol=1e-5)
    assert batched[0] == batched[2], "the same sentence, the same score"


def test_batched_pll_of_ltg_bert_equals_the_loop_in_any_batch_size():
    model = tiny_model()
    rng = np.random.default_rng(0)
    sentences = [rng.integers(7, 60, n).tolist() for n in (3, 5, 5, 8, 1, 12)]
    looped = blimp.pll_one_by_one(model, sentences, cls_id=1, sep_id=2, mask_id=4)
    for budget in (10, 64, 100000):
        batched = blimp.pll_scores(model, sentences, cls_id=1, sep_id=2, mask_id=4, tokens_per_batch=budget)
        assert np.allclose(batched, looped, atol=1e-4), budget


def pairs_of(uid: str, good_bad: list[tuple[str, str]], field: str = "syntax", term: str = "t") -> list[blimp.Pair]:
    return [blimp.Pair(uid, field, term, g, b) for g, b in good_bad]


def test_a_model_that_prefers_good_words_scores_one_and_ties_count_as_wrong():
    vocab = {w: i + 7 for i, w in enumerate("the cat cats sleeps sleep dog runs run".split())}
    logits = torch.zeros(30, 30)
    for good_word in ("cat", "sleeps", "runs"):
        logits[:, vocab[good_word]] = 5.0  # a unigram model: prefers these words anywhere

    def encode(sentences: list[str]) -> list[list[int]]:
        return [[vocab[w] for w in s.split()] for s in sentences]

    model = Bigram(logits)
    right = pairs_of("agreement", [("the cat sleeps", "the cat sleep"), ("the dog runs", "the dog run")])
    same = pairs_of("identical", [("the cat sleeps", "the cat sleeps")])
    reordered = pairs_of("order", [("the cat sleeps", "sleeps the cat")])  # one multiset: a unigram tie
    result = blimp.score_pairs(model, encode, right + same + reordered, cls_id=1, sep_id=2, mask_id=4)
    assert result.per_paradigm["agreement"]["blimp"] == 1.0
    assert result.per_paradigm["identical"]["blimp"] == 0.0, "a tie is wrong"
    assert result.per_paradigm["order"]["blimp"] == 0.0, "a tie is wrong"
    assert result.correct == (True, True, False, False)
    assert result.macro == pytest.approx(1 / 3), "macro over paradigms, not over pairs"


def test_summaries_are_macro_averages_by_field_and_phenomenon():
    pairs = (pairs_of("a", [("x", "y")] * 3, "syntax", "binding") + pairs_of("b", [("x", "y")], "syntax", "island")
             + pairs_of("c", [("x", "y")] * 2, "semantics", "island"))
    good = np.array([1, 1, 0, 1, 0, 1.0])
    result = blimp.summarize(pairs, good, np.full(6, 0.5))
    assert result.per_paradigm["a"] == {"blimp": pytest.approx(2 / 3), "n": 3, "field": "syntax", "phenomenon": "binding"}
    assert result.per_field["syntax"]["blimp"] == pytest.approx((2 / 3 + 1) / 2)
    assert result.per_field["syntax"]["accuracy"] == pytest.approx(3 / 4) and result.per_field["syntax"]["n"] == 4
    assert result.per_phenomenon["island"]["blimp"] == pytest.approx((1 + 0.5) / 2)
    assert result.macro == pytest.approx((2 / 3 + 1 + 0.5) / 3)


def test_blimp_loading_and_the_fixed_stratified_subset(tiny_data):
    pairs = blimp.load_pairs(blimp.blimp_folder(str(tiny_data / "blimp" / "data")))
    assert len(pairs) == 67 * PAIRS_PER_PARADIGM
    assert {p.field for p in pairs} == {"syntax", "morphology", "syntax_semantics", "semantics"}
    assert len({p.phenomenon for p in pairs}) == 13
    subset = blimp.stratified_subset(pairs, 2, seed=0)
    assert len(subset) == 134 and all(sum(p.uid == uid for p in subset) == 2 for uid in blimp.PARADIGMS)
    assert subset == blimp.stratified_subset(pairs, 2, seed=0) != blimp.stratified_subset(pairs, 2, seed=1)
    with pytest.raises(SetupError, match=r"BLiMP data not found: .*adjunct_island\.jsonl is missing"):
        blimp.blimp_folder(str(tiny_data))


# --- optimizer and step log --------------------------------------------------------------------


def test_lamb_steps_by_the_trust_ratio_and_plainly_without_decay():
    torch.manual_seed(0)
    decayed, plain = nn.Parameter(torch.randn(20, 20)), nn.Parameter(torch.randn(20))
    decayed.grad, plain.grad = torch.randn(20, 20), torch.randn(20)
    before = decayed.detach().clone(), plain.detach().clone()
    Lamb([{"params": [decayed], "weight_decay": 0.1}, {"params": [plain], "weight_decay": 0.0}],
         lr=0.01, eps=1e-12).step()
    # With decay the step is lr x ||w|| long (trust ratio ||w|| / ||update||); Adam's first step is lr x sign(g).
    assert (decayed - before[0]).norm().item() == pytest.approx(0.01 * before[0].norm().item(), rel=1e-4)
    assert torch.allclose(plain - before[1], -0.01 * plain.grad.sign(), atol=1e-6)


def test_warning_signs_follow_the_seed_guide():
    loss = np.r_[np.linspace(6, 4, 40), 5.0, 3.9, 3.9, np.nan, 3.8]  # +0.51 over the mean of 20 steps at 41
    grad_norm = np.r_[np.full(10, 5.0), np.full(35, 1.0)]
    signs = steplog.warning_signs(loss, grad_norm, spike_threshold=0.3, window=20, grad_norm_threshold=3.0)
    assert signs["loss_spike_steps"] == 2 and signs["exploding_gradient_steps"] == 10
    assert [(s["sign"], s["first_step"], s["last_step"]) for s in signs["stretches"]] == [
        ("gradient norm", 1, 10), ("loss spike", 41, 41), ("loss spike", 44, 44)]
    assert steplog.describe(signs).startswith("gradient norm at steps 1-10 (max 5.0); loss spike at steps 41")
    long = steplog.compact(np.ones(5000), np.ones(5000))
    assert long["every"] == 5 and len(long["loss"]) == 1000, "at most 1000 points on the record"


# --- a short run: per-evaluation figures, checkpoint, exact resume --------------------------


class Recorder(Reporter):
    def __init__(self, folder: Path | None = None, *, stop_at_step: int | None = None) -> None:
        self.checkpoint_dir, self.stop_at_step = folder, stop_at_step
        self.attrs: dict = {}
        self.reports: dict = {}
        self.steps = 0

    def report(self, value: float, step: int) -> None:
        self.reports[step] = value

    def set_user_attr(self, key: str, value: object) -> None:
        self.attrs[key] = value

    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        self.steps += 1
        if self.steps == self.stop_at_step:
            raise KeyboardInterrupt("the worker is stopped")


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


def test_a_short_run_reports_blimp_per_evaluation_and_resumes_exactly(babylm, tmp_path):
    params = {**babylm.PARAMS, **TINY}
    babylm.prepare(params)
    straight = Recorder(tmp_path / "straight")
    result = babylm.train(params, straight, on_test=True)

    assert sorted(straight.reports) == [4, 8, 12], "BLiMP on the subset after every 4 optimizer steps"
    assert result["blimp"] == straight.reports[12] and result["n_items"] == 67
    assert 0 < result["dev_loss"] < math.log(400) + 1
    for key in ("per_phenomenon", "per_field", "per_paradigm"):
        assert all({"blimp", "n"} <= set(v) for v in result[key].values()), key
    assert len(result["per_paradigm"]) == 67 and len(result["per_phenomenon"]) == 13
    assert result["test"]["n_items"] == 67 * PAIRS_PER_PARADIGM and 0 <= result["test"]["blimp_unseen"] <= 1
    epochs = straight.attrs["epochs"]
    assert [e["step"] for e in epochs] == [4, 8, 12] and all("dev_loss" in e for e in epochs)
    log = straight.attrs["step_log"]
    assert log["every"] == 1 and len(log["loss"]) == len(log["grad_norm"]) == 12
    assert {"loss_spike_steps", "exploding_gradient_steps", "stretches"} <= set(straight.attrs["warning_signs"])
    assert not (tmp_path / "straight").exists(), "a completed run deletes its checkpoint"

    # Stopped at step 10: the checkpoint of step 8 stays; the next run goes on from there.
    stopped = Recorder(tmp_path / "trial", stop_at_step=10)
    with pytest.raises(KeyboardInterrupt):
        babylm.train(params, stopped)
    assert has_checkpoint(tmp_path / "trial") and read_summary(tmp_path / "trial")["step"] == 8
    resumed = Recorder(tmp_path / "trial")
    again = babylm.train(params, resumed)
    assert resumed.attrs["resumed_from_step"] == 8 and resumed.steps == 4
    assert resumed.reports == straight.reports, "the earlier evaluations on the new record too"
    assert again["blimp"] == result["blimp"] and again["dev_loss"] == result["dev_loss"], "exactly the same run"
    assert without_seconds(resumed.attrs["epochs"]) == without_seconds(epochs)
    assert resumed.attrs["step_log"] == log


def test_a_checkpoint_of_another_configuration_is_ignored_unless_resuming_on_purpose(babylm, tmp_path):
    params = {**babylm.PARAMS, **TINY}
    babylm.prepare(params)
    first = Recorder(tmp_path / "run")
    first.keep_checkpoint = True  # as `search run --checkpoint-dir`
    babylm.train(params, first)
    assert read_summary(tmp_path / "run")["step"] == 12

    other = Recorder(tmp_path / "run")
    other.keep_checkpoint = True
    babylm.train({**params, "learning_rate": 1e-3}, other)
    assert "written by another configuration (differs in learning_rate)" in other.attrs["checkpoint_ignored"]
    assert "resumed_from_step" not in other.attrs and sorted(other.reports) == [4, 8, 12]

    # On purpose (`search run --resume`): weights and optimizer state go on under new hyperparameters.
    more = Recorder(tmp_path / "run")
    more.keep_checkpoint, more.resume_any_config = True, True
    babylm.train({**params, "learning_rate": 1e-3, "max_steps": 20}, more)
    assert more.attrs["resumed_from_step"] == 12 and more.steps == 8
    assert more.attrs["resumed_with_changes"] == {"max_steps": [12, 20]}
    assert sorted(more.reports) == [4, 8, 12, 16, 20]
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["step"] == 20

    wider = Recorder(tmp_path / "run")
    wider.keep_checkpoint, wider.resume_any_config = True, True
    with pytest.raises(SetupError, match=r"does not fit this model \(a size changed\?\)"):
        babylm.train({**params, "hidden_size": 48}, wider)
    assert has_checkpoint(tmp_path / "run"), "kept: the run it belongs to can still go on"


def test_bad_parameters_are_one_line_errors(babylm):
    base = {**babylm.PARAMS, **TINY}
    for change, message in [({"model_size": "huge"}, "model_size 'huge' is not one of 'xs', 'small', 'base'"),
                            ({"hidden_size": 30, "num_attention_heads": 4}, "not a multiple of num_attention_heads"),
                            ({"optim": "sgd"}, "optim 'sgd' is not one of 'adamw', 'lamb'"),
                            ({"eval_steps": 0}, "eval_strategy steps needs eval_steps >= 1"),
                            ({"mask_p": 1.5}, r"mask_p 1.5 is not a number in \(0, 1\)"),
                            ({"train_path": "nowhere.txt"}, "babylm train text not found")]:
        with pytest.raises(SetupError, match=message):
            babylm.prepare({**base, **change})

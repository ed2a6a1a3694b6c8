"""Multi-GPU trials, on CPU: two gloo ranks under torchrun, the tiny BERT on the real data.

A spec with ``resources: {gpus_per_trial: 2}`` makes `search worker` train every trial
data-parallel (search/cluster/torchrun.py); the recipe_mpr objective runs under DDP through the
engine with no code of its own for it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, known, ok
from objectives.engine import predict

pytestmark = pytest.mark.usefixtures("data_dir")

# Trials reaching epoch 2 are pruned there, whatever their value; epoch 1 is never judged.
PRUNE_AT_EPOCH_2 = {"type": "ThresholdPruner", "options": {"lower": 0.99, "n_warmup_steps": 2}}
# Rank 1 alone fails at step 2 of trials at micro-batch 32, while rank 0 waits in the all-reduce.
RANK_1_FAILS = {"SEARCH_FAULT_ERROR": "rank=1,epoch=1,step=2,batch=32"}


def test_a_multi_gpu_trial_completes_prunes_and_fails_on_all_ranks_together(pg_store, write_spec, cli):
    store = pg_store
    name = store.name("ddp")
    configs = [known("complete", 3e-3, 1), known("pruned", 3e-3, 2), known("failing", 3e-3, 1, batch=32)]
    spec = write_spec(name, known=configs, pruner=PRUNE_AT_EPOCH_2,
                      edit=lambda s: s.update(resources={"gpus_per_trial": 2}))

    started = time.monotonic()
    result = ok(cli("worker", "--study", str(spec), "--storage", store.url, "--n-trials", "3", env=RANK_1_FAILS,
                    timeout=400))
    assert time.monotonic() - started < 400, "no rank waited forever"

    complete, pruned, failing = store.trials(name)
    assert complete.state.name == "COMPLETE" and complete.user_attrs["end_reason"] == "completed"
    assert complete.user_attrs["world_size"] == 2
    assert complete.user_attrs["n_items"] == 80, "every validation item scored once, across both ranks"
    (epoch,) = complete.user_attrs["epochs"]
    assert epoch["seconds"] > 0 and epoch["value"] == complete.value == complete.intermediate_values[1]

    assert pruned.state.name == "PRUNED" and pruned.user_attrs["end_reason"] == "pruned at epoch 2", \
        (pruned.state.name, pruned.user_attrs.get("end_reason"), result.stderr[-2000:])
    assert sorted(pruned.intermediate_values) == [1, 2]

    assert failing.state.name == "FAIL"
    assert failing.user_attrs["end_reason"] == ("failed: TrialFailed: rank 1 of 2: RuntimeError: injected failure "
                                                "on rank 1 at epoch 1 step 2 (SEARCH_FAULT_ERROR)")
    # The worker printed rank 0's epochs and went on after the failure.
    assert "trial 0 epoch 1: accuracy" in result.stdout and "trial 2 fail" in result.stdout

    # Confirmation trains through the same runner: on two ranks too, every fold scored whole.
    ok(cli("confirm", "--study", name, "--storage", store.url, "--top", "1", "--seeds", "1", timeout=600))
    runs = store.trials(f"{name}.confirm")
    assert len(runs) == 5 and {t.state.name for t in runs} == {"COMPLETE"}
    assert {t.user_attrs["world_size"] for t in runs} == {2}
    assert sum(t.user_attrs["test"]["n_items"] for t in runs) == 500, "each fold's 100 test items once"


def test_evaluation_under_ddp_counts_every_item_once(tiny_model, recipe, tmp_path, cli_env):
    """79 items on 2 ranks: DistributedSampler pads one duplicate; the gathered logits are the
    single-process logits, in order, and the accuracy is the same."""
    sys.path.insert(0, str(REPO / "tests"))
    import _ddp_predict

    out = tmp_path / "ddp.pt"
    ok(subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                       str(Path(__file__).with_name("_ddp_predict.py")), str(tiny_model), str(out)],
                      env=cli_env, capture_output=True, text=True, timeout=300))
    gathered = torch.load(out)
    assert gathered["world_size"] == 2

    loader = _ddp_predict.validation_loader(str(tiny_model))
    single = predict(_ddp_predict.model(str(tiny_model)), loader, None)
    assert single.shape == gathered["logits"].shape == (79, 5)
    assert torch.allclose(gathered["logits"], single, atol=1e-5)
    labels = torch.tensor([ex["label"] for ex in loader.dataset])
    assert (gathered["logits"].argmax(-1) == labels).sum() == (single.argmax(-1) == labels).sum()


def test_the_note_shows_the_speedup_against_1_gpu_trials_of_the_same_configuration():
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from search.dashboard import scaling

    def trial(lr: float, seconds: list[float], world: int | None, number: int):
        attrs = {"epochs": [{"epoch": i + 1, "seconds": s} for i, s in enumerate(seconds)], "device": "cuda"}
        if world:
            attrs["world_size"] = world
        made = create_trial(value=0.9, params={"learning_rate": lr}, user_attrs=attrs,
                            distributions={"learning_rate": FloatDistribution(1e-5, 1e-2, log=True)})
        made.number = number
        return made

    # The seed's figures: 180 s per epoch on 1 GPU, 60 s on 4 GPUs.
    trials = [trial(2e-5, [170.0, 190.0], None, 0), trial(2e-5, [60.0], 4, 1), trial(3e-5, [55.0], 4, 2)]
    (row,) = scaling.speedups(trials)
    assert row["gpus"] == 4 and row["trials_1"] == [0] and row["trials_g"] == [1]
    assert row["speedup"] == pytest.approx(3.0) and row["efficiency"] == pytest.approx(0.75)
    note = "\n".join(scaling.note_lines(trials))
    assert "| 4 | 0 / 1 | 180.0 | 60.0 | 3.00x | 75% |" in note
    assert scaling.note_lines(trials[:1]) == [], "no multi-GPU trial: no section"
    assert "no speed-up to show" in "\n".join(scaling.note_lines(trials[1:]))


def test_a_spec_asks_for_gpus_per_trial_and_bad_values_are_one_line(tiny_model):
    from search.spec import SpecError, validate

    from helpers import spec_dict

    plain = spec_dict("plain", tiny_model)
    assert "resources" not in validate(plain, "x.yaml").as_dict(), "a spec without it records as before"
    assert validate(plain, "x.yaml").gpus_per_trial == 1
    assert validate({**plain, "resources": {"gpus_per_trial": 4}}, "x.yaml").gpus_per_trial == 4
    with pytest.raises(SpecError, match=r"^x\.yaml: resources\.gpus_per_trial: Input should be greater than or equal to 1$"):
        validate({**plain, "resources": {"gpus_per_trial": 0}}, "x.yaml")
    with pytest.raises(SpecError, match=r"^x\.yaml: resources\.gpus: unknown key \(allowed: gpus_per_trial\)$"):
        validate({**plain, "resources": {"gpus": 2}}, "x.yaml")


def test_a_rank_that_dies_without_an_error_is_named_with_its_signal():
    from search.cluster.torchrun import _root_cause

    stderr = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
======================================================
search.cluster.torchrun FAILED
------------------------------------------------------
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 8168)  (SIGTERM)
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-25_10:11:06
  rank      : 1 (local_rank: 1)
  exitcode  : -6 (pid: 8169)  (SIGABRT)
  error_file: <N/A>
======================================================
"""
    assert _root_cause(stderr) == "rank 1 (local_rank: 1), exitcode -6 (pid: 8169)  (SIGABRT)"
    assert _root_cause("Killed\n") == "Killed" and _root_cause("") == "no output"

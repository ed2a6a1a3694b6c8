"""BabyLM as users run it: `search worker` on a journal store, a killed worker's trial resuming
from its checkpoint, `search run --checkpoint-dir/--resume`, and bad input. Tiny corpus, tiny
LTG-BERT (tests/babylm_fixtures.py), real subprocesses."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
import yaml

from babylm_fixtures import TINY, make_tiny_data
from helpers import REPO, Store, ok, trials_started

HEARTBEAT = {"SEARCH_HEARTBEAT_INTERVAL": "1", "SEARCH_GRACE_PERIOD": "3"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("babylm-data"))


@pytest.fixture
def env(tiny_data: Path, tmp_path: Path) -> dict[str, str]:
    return {"SEARCH_DATA_DIR": str(tiny_data), "SEARCH_CHECKPOINT_DIR": str(tmp_path / "checkpoints")}


def write_spec(tmp_path: Path, name: str, **fixed: object) -> Path:
    """spaces/babylm.yaml with the tiny run pinned and only the learning rate searched."""
    spec = yaml.safe_load((REPO / "spaces" / "babylm.yaml").read_text())
    spec["name"] = name
    spec["fixed"] = {**spec["fixed"], **{k: v for k, v in TINY.items() if k != "learning_rate"}, **fixed}
    spec["space"] = {"learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}}
    spec["known_configs"] = [{"name": "tiny", "params": {"learning_rate": 3.0e-3}}]
    spec["pruner"] = {"type": "NopPruner"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_killed_workers_trial_resumes_from_its_checkpoint_and_reports_every_evaluation(cli, start_cli, env,
                                                                                         tmp_path):
    store = Store("journal", str(tmp_path / "studies.journal"))
    spec = write_spec(tmp_path, "babylm-kill", max_steps=40)
    worker = ["worker", "--study", str(spec), "--storage", store.url, "--n-trials", "1"]
    folder = tmp_path / "checkpoints" / "babylm-kill" / "trial-0"

    a = start_cli(*worker, env={**env, **HEARTBEAT})
    deadline = time.monotonic() + 180
    while not (folder / "checkpoint.json").is_file():
        assert a.poll() is None, f"worker A ended early: {a.communicate()}"
        assert time.monotonic() < deadline, "worker A never saved a checkpoint"
        time.sleep(0.1)
    a.send_signal(signal.SIGKILL)
    a.wait()
    saved = json.loads((folder / "checkpoint.json").read_text())["step"]
    (killed,) = store.trials("babylm-kill")
    assert killed.state.name == "RUNNING" and saved >= 4 and saved % 4 == 0
    time.sleep(3 + 1)  # past the grace period

    b = start_cli(*worker, env={**env, **HEARTBEAT})
    out, err = b.communicate(timeout=300)
    assert b.returncode == 0 and err == "", f"worker B failed\nstdout:\n{out}\nstderr:\n{err}"
    first, retry = store.trials("babylm-kill")
    assert first.state.name == "FAIL" and retry.state.name == "COMPLETE"
    assert retry.system_attrs["failed_trial"] == first.number and trials_started(out) == [retry.number]
    assert retry.user_attrs["resumed_from_step"] == saved, "continued from the saved step, not from step 0"
    assert not folder.exists(), "the re-run deletes the checkpoint once it completes"

    # BLiMP on the subset every 4 optimizer steps, the whole curve on the re-run's record.
    assert sorted(retry.intermediate_values) == list(range(4, 41, 4))
    assert retry.value == retry.intermediate_values[40] and retry.user_attrs["end_reason"] == "completed"
    attrs = retry.user_attrs
    assert attrs["n_items"] == 67 and 0 < attrs["dev_loss"] < 10
    assert len(attrs["per_phenomenon"]) == 13 and len(attrs["per_field"]) == 4 and len(attrs["per_paradigm"]) == 67
    assert [e["step"] for e in attrs["epochs"]] == list(range(4, 41, 4)) and all("dev_loss" in e for e in attrs["epochs"])
    assert len(attrs["step_log"]["loss"]) == 40 and "stretches" in attrs["warning_signs"]

    status = json.loads(ok(cli("status", "--study", "babylm-kill", "--storage", store.url, "--format", "json",
                               env=env)).stdout)
    references = {line["name"]: line for line in status["references"]}
    assert references["loss goal"] == {"name": "loss goal", "metric": "dev_loss", "value": 2.5,
                                       "source": references["loss goal"]["source"], "best": attrs["dev_loss"]}
    published = references["LTG-BERT strict-small (published)"]
    assert (published["metric"], published["value"], published["best"]) == ("blimp", 0.606, retry.value)
    assert status["best"]["slices"]["per_phenomenon"] == attrs["per_phenomenon"], "per-phenomenon slices"


def test_search_run_keeps_its_checkpoint_and_resume_continues_with_new_hyperparameters(cli, env, tmp_path):
    params = {**TINY}
    (tmp_path / "first.yaml").write_text(yaml.safe_dump({"objective": "babylm", "params": params}))
    (tmp_path / "more.yaml").write_text(yaml.safe_dump(
        {"objective": "babylm", "params": {**params, "learning_rate": 1e-3, "max_steps": 16}}))

    first = ok(cli("run", "--config", "first.yaml", "--checkpoint-dir", "ck", env=env))
    assert re.findall(r"^epoch (\d+):", first.stdout, flags=re.M) == ["4", "8", "12"]
    assert json.loads((tmp_path / "ck" / "checkpoint.json").read_text())["step"] == 12, "kept for later"

    refused = cli("run", "--config", "more.yaml", "--checkpoint-dir", "ck", env=env)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "ck holds a checkpoint (step 12): add --resume to continue it" in refused.stderr

    more = ok(cli("run", "--config", "more.yaml", "--checkpoint-dir", "ck", "--resume", env=env))
    assert "resuming ck from step 12" in more.stdout
    assert re.findall(r"^epoch (\d+):", more.stdout, flags=re.M) == ["4", "8", "12", "16"]
    summary = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    assert summary["step"] == 16 and summary["params"]["learning_rate"] == 1e-3

    nothing = cli("run", "--config", "more.yaml", "--checkpoint-dir", "empty", "--resume", env=env)
    assert nothing.returncode == 2 and nothing.stderr.strip() == "error: --resume: no checkpoint in empty"


@pytest.mark.parametrize("broken", ["corpus", "blimp"])
def test_missing_corpus_or_blimp_is_one_line_and_nothing_is_stored(cli, env, tmp_path, tiny_data, broken):
    data = tmp_path / "data"
    (data / "babylm").mkdir(parents=True)
    if broken == "blimp":
        for name in ("train.txt", "dev.txt"):
            (data / "babylm" / name).write_text((tiny_data / "babylm" / name).read_text())
    spec = write_spec(tmp_path, "babylm-broken")
    journal = tmp_path / "studies.journal"
    result = cli("worker", "--study", str(spec), "--storage", str(journal), "--n-trials", "1",
                 env={**env, "SEARCH_DATA_DIR": str(data)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    expected = {"corpus": r"^error: babylm train text not found: .*train\.txt does not exist \(set SEARCH_DATA_DIR",
                "blimp": r"^error: blimp data not found: .*adjunct_island\.jsonl is missing"}[broken]
    assert re.search(expected, result.stderr), result.stderr
    assert not journal.exists(), "nothing stored"

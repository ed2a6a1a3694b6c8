"""The ASTE studies as users run them: `search worker` on a journal store, and bad input."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from helpers import REPO, Store, ok


@pytest.fixture
def aste_spec(aste_dir, tiny_model, tmp_path):
    """spaces/aste-14res.yaml on the tiny encoder, 32 training sentences, 2 epochs, no pruning."""

    def write(name: str) -> str:
        spec = yaml.safe_load((REPO / "spaces" / "aste-14res.yaml").read_text())
        spec["name"] = name
        spec["fixed"].update(model_name_or_path=str(tiny_model), max_train_sentences=32, num_train_epochs=2,
                             warmup_ratio=0.0)
        spec["space"] = {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                         "attention_heads": {"type": "categorical", "choices": [1, 2, 4]}}
        spec["pruner"] = {"type": "NopPruner"}
        spec["known_configs"] = [{"name": "baseline", "params": {"learning_rate": 3e-3, "attention_heads": 2}}]
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return str(path)

    return write


def test_a_worker_runs_an_aste_trial_and_stores_f1_per_epoch(aste_spec, cli, tmp_path):
    journal = tmp_path / "studies.journal"
    store = Store("journal", str(journal))
    spec = aste_spec(store.name("aste"))
    result = ok(cli("worker", "--study", spec, "--storage", str(journal), "--n-trials", "1"))
    assert "trial 0 starts" in result.stdout

    (trial,) = store.trials(store.name("aste"))
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("end_reason")
    assert trial.params == {"learning_rate": 3e-3, "attention_heads": 2}
    assert sorted(trial.intermediate_values) == [1, 2]
    assert trial.value == trial.intermediate_values[2] and 0.0 <= trial.value <= 1.0
    attrs = trial.user_attrs
    for name in ("precision", "recall", "aspect_f1", "opinion_f1"):
        assert 0.0 <= attrs[name] <= 1.0
    assert set(attrs["per_polarity"]) == {"POSITIVE", "NEGATIVE", "NEUTRAL"}
    assert all("f1" in v for v in attrs["per_polarity"].values()), "the dashboard's slice plot reads f1"
    assert attrs["data_dev"]["parse_length_differs"] == 56 and attrs["data_train"]["sentences"] == 32
    assert attrs["n_items"] == 310 and attrs["end_reason"] == "completed"

    status = json.loads(ok(cli("status", "--study", store.name("aste"), "--storage", str(journal),
                               "--format", "json")).stdout)
    span = next(line for line in status["references"] if line["name"] == "Span-ASTE")
    assert (span["metric"], span["value"], span["best"]) == ("f1", 0.719, trial.value)

    # Confirmation re-trains the winner with a new seed and scores the whole test split.
    ok(cli("confirm", "--study", store.name("aste"), "--storage", str(journal), "--top", "1", "--seeds", "1"))
    confirmed = optuna.load_study(study_name=store.name("aste"), storage=store.optuna).user_attrs["search:confirmed"]
    (figures,) = confirmed.values()
    assert figures["n_items"] == 492 and figures["folds"] == 1 and 0.0 <= figures["mean"] <= 1.0
    assert set(figures["slices"]) == {"POSITIVE", "NEGATIVE", "NEUTRAL"}


@pytest.mark.parametrize(("sets", "env", "says"), [
    (["--set", "attention_heads=3"], {}, ("attention_heads (3) must divide the encoder's hidden size (32)",)),
])  # other bad parameters raise the same SetupError: test_aste.py checks them in-process
def test_bad_input_is_one_line_exit_2_and_stores_nothing(aste_spec, cli, tmp_path, sets, env, says):
    (tmp_path / "empty").mkdir()
    journal = tmp_path / "studies.journal"
    spec = aste_spec("aste-bad")
    result = cli("worker", "--study", spec, "--storage", str(journal), "--n-trials", "1", *sets,
                 env={k: str(tmp_path / v) for k, v in env.items()})
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for words in says:
        assert words in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not journal.exists(), "nothing stored: the journal file was never created"

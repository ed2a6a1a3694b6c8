"""The real backbone on the real data: one epoch of MiniLM on Recipe-MPR fold 0 (about a minute)."""

from __future__ import annotations

import re

import pytest
import yaml

from helpers import ok


@pytest.mark.realdata
def test_one_epoch_of_minilm_on_recipe_mpr(data_dir, cli, tmp_path, recipe):
    # A hand-written config: `search run` fills what it leaves out from the objective's defaults.
    config = {"objective": "recipe_mpr",
              "params": {"model_name_or_path": "minilm", "num_train_epochs": 1, "learning_rate": 5e-5,
                         "per_device_train_batch_size": 16, "warmup_steps": 0}}
    (tmp_path / "minilm.yaml").write_text(yaml.safe_dump(config))

    result = ok(cli("run", "--config", "minilm.yaml", "--on-test", timeout=900))

    epochs = re.findall(r"^epoch (\d+): ([0-9.]+)$", result.stdout, flags=re.M)
    assert [e for e, _ in epochs] == ["1"], result.stdout
    validation = re.search(r"this run \(validation, 80 items\)\s*│\s*([0-9.]+)", result.stdout)
    test = re.search(r"held-out test \(100 items\)\s*│\s*([0-9.]+)", result.stdout)
    assert validation and test, result.stdout
    assert validation.group(1) == epochs[0][1]
    assert 0.0 <= float(validation.group(1)) <= 1.0 and 0.0 <= float(test.group(1)) <= 1.0
    for qtype in recipe.QUERY_TYPES:
        assert re.search(rf"│ {qtype}\s*│\s*[0-9.]+\s*│\s*\d+\s*│", result.stdout), f"no {qtype} row"

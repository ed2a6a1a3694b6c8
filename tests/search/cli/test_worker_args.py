"""The `search worker` command line that `search launch` and `search slurm` start their workers with."""

from __future__ import annotations

from helpers import parse_cli


def test_every_forwarded_option_is_a_worker_option_with_its_value(tmp_path, monkeypatch):
    from search.cli.running import worker_args

    monkeypatch.chdir(tmp_path)
    args = worker_args("specs/mine.yaml", ["learning_rate=1e-4", "model_name_or_path=a b"], name="mine-2",
                       n_trials=40, gpus_per_trial=2, timeout=3600.0)
    params = parse_cli(["worker", *args]).params  # what the started worker will run with
    assert params == {"study": str(tmp_path / "specs" / "mine.yaml"), "storage": None, "n_trials": 40,
                      "timeout": 3600.0, "set_": ["learning_rate=1e-4", "model_name_or_path=a b"], "name": "mine-2",
                      "budget": "study", "gpus_per_trial": 2}


def test_a_spec_name_stays_a_name_and_unset_options_are_left_to_the_worker():
    from search.cli.running import worker_args

    args = worker_args("recipe-mpr", None, name=None, n_trials=None, gpus_per_trial=None)
    assert args == ["--study", "recipe-mpr"]
    params = parse_cli(["worker", *args]).params
    assert params["budget"] == "worker" and params["n_trials"] is None and not params["set_"]

"""Bad values are refused before anything is stored: one line naming the key and what it
accepts, exit 2, no journal file, no Optuna schema in the database. Good numbers are taken as
people write them (``1e-4``, ``3e-3``).

The table runs the CLI's ``main()`` in this process (it trains nothing, and a new process would
spend seconds importing torch per case); a few cases run as real processes too.
"""

from __future__ import annotations

import math
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from helpers import run_main
from search.cli.options import parse_sets
from search.spec import load_spec
from search.study import build_study
from storage import open_storage


@pytest.fixture(scope="module")
def empty_database(pg_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for this module: any table in it is something stored."""
    name = f"values_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    yield pg_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def tables(url: str) -> list[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        return sqlalchemy.inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.fixture
def signals_restored() -> Iterator[None]:
    """``search worker`` in this process installs its Ctrl-C / SIGTERM handlers: put pytest's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def edit(path: str, value) -> Callable[[dict], None]:
    def change(spec: dict) -> None:
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value

    return change


def set_(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


# id: (a change to the test spec or None, extra worker arguments, words the one line holds)
BAD = {
    "lr-negative": (None, set_("learning_rate=-1"), ("--set learning_rate: -1 is not a number > 0",)),
    "lr-nan": (None, set_("learning_rate=.nan"), ("--set learning_rate: nan is not a finite number",)),
    "lr-nan-word": (None, set_("learning_rate=nan"), ("--set learning_rate: 'nan' is not a number > 0",)),
    "batch-0": (None, set_("per_device_train_batch_size=0"), ("per_device_train_batch_size: 0 is not an integer >= 1",)),
    "batch-float": (None, set_("per_device_train_batch_size=2.5"), ("2.5 is not an integer >= 1",)),
    "dropout-2": (None, set_("dropout=2.0"), ("--set dropout: 2.0 is not a number in [0, 1)",)),
    "seed-negative": (None, set_("seed=-1"), ("--set seed: -1 is not an integer >= 0",)),
    "fp8": (None, set_("mixed_precision=fp8"), ("mixed_precision: 'fp8' is not one of 'auto', 'no', 'bf16', 'fp16'",)),
    "validation-0": (None, set_("validation_fraction=0"), ("validation_fraction: 0 is not a number in (0, 1)",)),
    "validation-1.5": (None, set_("validation_fraction=1.5"), ("validation_fraction: 1.5 is not a number in (0, 1)",)),
    "epochs-0": (None, set_("num_train_epochs=0"), ("--set num_train_epochs: 0 is not an integer >= 1",)),
    "fold-5": (None, set_("fold=5"), ("--set fold: 5 is not one of 0, 1, 2, 3, 4",)),
    "fixed-warmup-negative": (edit("fixed.warmup_steps", -10), [], ("fixed.warmup_steps: -10 is not an integer >= 0",)),
    "step-0": (edit("space.num_train_epochs.step", 0), [],
               ("space.num_train_epochs.step: Input should be greater than or equal to 1",)),
    "step-negative": (edit("space.learning_rate", {"type": "float", "low": 1e-5, "high": 1e-3, "step": -1e-5}), [],
                      ("space.learning_rate.step: Input should be greater than 0",)),
    "high-inf": (edit("space.learning_rate.high", math.inf), [], ("space.learning_rate.high: Input should be a finite number",)),
    "low-outside": (edit("space.num_train_epochs.low", 0), [], ("space.num_train_epochs.low: 0 is not an integer >= 1",)),
    "float-range-for-int": (edit("space.num_train_epochs", {"type": "float", "low": 1, "high": 3}), [],
                            ("space.num_train_epochs.type: float, but num_train_epochs is an integer", "use type: int")),
    "choice-outside": (edit("space.per_device_train_batch_size.choices", [0, 16]), [],
                       ("space.per_device_train_batch_size.choices: 0 is not an integer >= 1",)),
    "choices-mixed": (edit("space.per_device_train_batch_size.choices", [16, "32"]), [],
                      ("space.per_device_train_batch_size.choices: [16, '32'] mixes number and string",)),
    "choices-bool-and-number": (edit("space.per_device_train_batch_size.choices", [True, 16]), [],
                                ("mixes number and true/false",)),
    "target-nan": (edit("target.value", math.nan), [], ("target.value: Input should be a finite number",)),
    "baseline-inf": (edit("baseline.value", -math.inf), [], ("baseline.value: Input should be a finite number",)),
    "sampler-dunder": (edit("sampler", {"type": "__class__"}), [],
                       ("sampler.type: '__class__' is not an optuna sampler (allowed: ", "TPESampler")),
    "sampler-base": (edit("sampler", {"type": "BaseSampler"}), [], ("sampler.type: 'BaseSampler' is not an optuna sampler",)),
    "pruner-not-a-pruner": (edit("pruner", {"type": "TPESampler"}), [], ("pruner.type: 'TPESampler' is not an optuna pruner",)),
    "sampler-option-type": (edit("sampler", {"type": "TPESampler", "options": {"n_startup_trials": "8"}}), [],
                            ("sampler.options.n_startup_trials: '8' refused by TPESampler: TypeError",)),
    "pruner-option-value": (edit("pruner.options.min_resource", 0), [],
                            ("pruner.options.min_resource: 0 refused by HyperbandPruner",)),
    "pruner-percentile": (edit("pruner", {"type": "PercentilePruner", "options": {"percentile": 150}}), [],
                          ("pruner.options.percentile: 150 refused by PercentilePruner", "between 0 and 100")),
    "n-trials-0": (None, ["--n-trials", "0"], ("--n-trials 0: expected a number of trials >= 1",)),
    "n-trials-negative": (None, ["--n-trials", "-2"], ("--n-trials -2: expected a number of trials >= 1",)),
    "timeout-negative": (None, ["--timeout", "-5"], ("--timeout -5: expected a number of seconds > 0",)),
    "timeout-0": (None, ["--timeout", "0"], ("--timeout 0: expected a number of seconds > 0",)),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_a_bad_value_is_one_line_naming_it_and_nothing_is_stored(case, kind, write_spec, tmp_path, monkeypatch,
                                                                  capsys, signals_restored, request):
    change, extra, says = BAD[case]
    spec = write_spec("values", edit=change)
    journal = tmp_path / "studies.journal"
    url = str(journal) if kind == "journal" else request.getfixturevalue("empty_database")
    code, out, err = run_main(monkeypatch, capsys, "worker", "--study", str(spec), "--storage", url,
                              "--n-trials", "1", *extra)
    assert code == 2, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for words in says:
        assert words in err, f"{words!r} not in {err!r}"
    assert "Traceback" not in out + err
    assert not journal.exists(), "refused before the journal file was created"
    if kind == "postgresql":
        assert tables(url) == [], "refused before Optuna's schema was created"


def test_a_bad_value_in_a_real_worker_process_stores_nothing(cli, write_spec, tmp_path, empty_database):
    spec = str(write_spec("values"))
    journal = str(tmp_path / "studies.journal")
    for args in (["--storage", journal, "--n-trials", "1", "--set", "learning_rate=-1"],
                 ["--storage", empty_database, "--n-trials", "1", "--set", "num_train_epochs=0"],
                 ["--storage", journal, "--n-trials", "0"]):
        result = cli("worker", "--study", spec, *args)
        assert result.returncode == 2, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not (tmp_path / "studies.journal").exists()
    assert tables(empty_database) == []


def test_set_reads_numbers_as_people_write_them(write_spec, monkeypatch, capsys, tmp_path):
    sets = parse_sets(["learning_rate=1e-4", "weight_decay=1E-2", "warmup_steps=1e2", "model_name_or_path=1e-4x"])
    assert sets == {"learning_rate": 0.0001, "weight_decay": 0.01, "warmup_steps": 100.0,
                    "model_name_or_path": "1e-4x"}
    spec = load_spec(str(write_spec("values")), parse_sets(["learning_rate=1e-4"]))
    assert spec.params({})["learning_rate"] == 0.0001, "what every trial of the study trains with"
    # The CLI accepts it too: `search slurm` validates the spec and --set as a worker does, and
    # passes the --set on to the workers it starts.
    code, out, err = run_main(monkeypatch, capsys, "slurm", "--study", str(tmp_path / "values.yaml"), "--nodes", "1",
                              "--gpus-per-node", "1", "--set", "learning_rate=1e-4", "-o", str(tmp_path / "job.sbatch"))
    assert code == 0, err
    assert "--set learning_rate=1e-4" in (tmp_path / "job.sbatch").read_text()


def test_a_known_config_and_a_space_written_with_exponents_are_numbers(write_spec, tmp_path):
    path = write_spec("exponents")
    text = path.read_text()
    text = text.replace("low: 1.0e-07", "low: 1e-7").replace("high: 0.01", "high: 1e-2")
    text += "known_configs:\n- name: good\n  params: {learning_rate: 3e-3, num_train_epochs: 1, per_device_train_batch_size: 16}\n"
    path.write_text(text.replace("known_configs: []\n", ""))
    spec = load_spec(str(path))
    assert (spec.space["learning_rate"].low, spec.space["learning_rate"].high) == (1e-7, 1e-2)
    assert spec.known_configs[0].params["learning_rate"] == 0.003

    study, created = build_study(spec, open_storage(str(tmp_path / "s.journal")))
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert created and [t.system_attrs["fixed_params"] for t in waiting] == [
        {"learning_rate": 0.003, "num_train_epochs": 1, "per_device_train_batch_size": 16}]


def test_run_refuses_a_bad_value_in_a_config_and_reads_exponents(monkeypatch, capsys, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("objective: recipe_mpr\nparams: {learning_rate: 3e-3, dropout: 1.5}\n")
    code, out, err = run_main(monkeypatch, capsys, "run", "--config", str(config))
    assert code == 2, f"exit {code}\n{out}\n{err}"
    assert err == f"error: {config}: params.dropout: 1.5 is not a number in [0, 1)\n", "3e-3 is a learning rate"

"""Helpers the tests share: the CLI run in and out of process, test specs, the real stores.

Fixtures live in ``conftest.py``; what a test imports by name lives here.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from objectives import Reporter

REPO = Path(__file__).resolve().parent.parent
PG_CANDIDATES = (
    "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg2://root@127.0.0.1:5432/test",
)
FINISHED = {"COMPLETE", "PRUNED"}

# The searched part of every test spec: small enough that a trial is one to three short epochs.
TEST_SPACE = {
    "learning_rate": {"type": "float", "low": 1.0e-7, "high": 1.0e-2, "log": True},
    "num_train_epochs": {"type": "int", "low": 1, "high": 3},
    "per_device_train_batch_size": {"type": "categorical", "choices": [16, 32]},
}
# What the real spec searches and the tests pin instead.
TEST_FIXED = {"max_length": 64, "warmup_steps": 0, "weight_decay": 0.0, "dropout": 0.0,
              "gradient_accumulation_steps": 1}


# --- no user state ---------------------------------------------------------------------------


def shared_data(*needed: str) -> Path:
    """``$SEARCH_DATA_DIR`` as an absolute path (CI sets ../shared/data) when it holds every path in
    ``needed``; otherwise the test is skipped, saying what is missing."""
    raw = os.environ.get("SEARCH_DATA_DIR")
    if not raw:
        pytest.skip("SEARCH_DATA_DIR is not set: this test uses the real data (set it to ../shared/data)")
    root = Path(raw).resolve()
    missing = [path for path in needed if not (root / path).exists()]
    if missing:
        pytest.skip(f"SEARCH_DATA_DIR={raw}: no {', '.join(missing)} there")
    return root


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", *args]


def parse_cli(argv: list[str]) -> Any:
    """``search ARGV`` parsed by the real CLI: the command and its options exist and the values
    convert (a click error otherwise). Runs nothing; returns the click context (``.params``)."""
    import typer.main

    from search.cli import app

    group = typer.main.get_command(app)
    name, *rest = argv
    if name not in group.commands:
        raise LookupError(f"no command {name!r} (commands: {', '.join(group.commands)})")
    return group.commands[name].make_context(name, list(rest))


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``search ARGS`` in this test's process, where torch is already imported (fast): the exit
    code, stdout and stderr. For commands that train nothing; ``cli`` runs the real process."""
    from search.cli import main

    monkeypatch.setenv("TZ", os.environ.get("TZ", "UTC"))  # main() sets TZ; restored afterwards
    monkeypatch.setattr("sys.argv", ["search", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return exit_.value.code or 0, out, err


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def wait_for(condition: Callable[[], Any], *, what: str, timeout: float = 180, alive: tuple = ()) -> Any:
    """``condition()``'s first true value, polled; fails after ``timeout`` s, or when a process in
    ``alive`` ends first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for proc in alive:
            assert proc.poll() is None, f"a worker ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def running_mid_trial(store: Store, name: str) -> optuna.trial.FrozenTrial | None:
    """A RUNNING trial that has reported at least one epoch."""
    if name not in store.study_names():
        return None
    return next((t for t in store.trials(name) if t.state.name == "RUNNING" and t.intermediate_values), None)


def trials_started(stdout: str) -> list[int]:
    """The trial numbers a worker says it started (``trial N starts: ...``)."""
    return [int(n) for n in re.findall(r"^trial (\d+) starts", stdout, flags=re.M)]


class Recording(Reporter):
    """A reporter that keeps what the objective tells it, and asks it to stop once an epoch
    ``prune_at`` or later has been reported."""

    def __init__(self, prune_at: int | None = None) -> None:
        self.reports: list[tuple[int, float]] = []
        self.attrs: dict[str, Any] = {}
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return self.prune_at is not None and self.reports[-1][0] >= self.prune_at

    def set_user_attr(self, key: str, value: Any) -> None:
        self.attrs[key] = value


# --- study specs ----------------------------------------------------------------------------


def spec_dict(name: str, model: Path | str, *, known: list[dict[str, Any]] | None = None,
              pruner: dict[str, Any] | None = None) -> dict[str, Any]:
    """spaces/recipe-mpr.yaml, renamed, on the tiny model, with a small space."""
    spec = yaml.safe_load((REPO / "spaces" / "recipe-mpr.yaml").read_text())
    spec["name"] = name
    spec["fixed"].update(model_name_or_path=str(model), **TEST_FIXED)
    spec["space"] = copy.deepcopy(TEST_SPACE)
    spec["pruner"] = pruner or {"type": "HyperbandPruner",
                                "options": {"min_resource": 1, "max_resource": 3, "reduction_factor": 3}}
    spec["known_configs"] = known if known is not None else []
    return spec


def known(name: str, learning_rate: float, epochs: int, batch: int = 16) -> dict[str, Any]:
    return {"name": name, "params": {"learning_rate": learning_rate, "num_train_epochs": epochs,
                                     "per_device_train_batch_size": batch}}


class Store:
    """One real store (a journal file or a PostgreSQL database), seen with plain Optuna.

    Study names carry a per-test prefix so that tests never see each other's studies in the
    shared database; ``close`` deletes this test's studies from PostgreSQL.
    """

    def __init__(self, kind: str, url: str) -> None:
        self.kind, self.url = kind, url
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        if kind == "journal":
            from optuna.storages.journal import JournalFileBackend

            self.optuna = optuna.storages.JournalStorage(JournalFileBackend(url))
        else:
            self.optuna = optuna.storages.RDBStorage(url, engine_kwargs={"pool_size": 1, "max_overflow": 1})

    def name(self, what: str) -> str:
        return f"{self.prefix}-{what}"

    def study_names(self) -> set[str]:
        return {s.study_name for s in optuna.get_all_study_summaries(self.optuna, include_best_trial=False)
                if s.study_name.startswith(self.prefix)}

    def trials(self, name: str) -> list[optuna.trial.FrozenTrial]:
        return optuna.load_study(study_name=name, storage=self.optuna).get_trials()

    def snapshot(self) -> dict[str, Any]:
        """This test's studies and everything about their trials a user could see change."""
        return {
            name: [(t.number, t.state.name, t.params, t.values, t.intermediate_values, t.user_attrs)
                   for t in self.trials(name)]
            for name in sorted(self.study_names())
        }

    def close(self) -> None:
        if self.kind == "postgresql":
            for name in self.study_names():
                optuna.delete_study(study_name=name, storage=self.optuna)
            self.optuna.engine.dispose()


def open_store(kind: str, folder: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "journal":
        return Store(kind, str(folder / "studies.journal"))
    return Store(kind, request.getfixturevalue("pg_url"))


MEDIAN_PRUNER = {"type": "MedianPruner", "options": {"n_startup_trials": 1, "n_warmup_steps": 0}}


class FinishedStudy:
    """A study on one store after a real `search worker` run, and the spec it was created from."""

    def __init__(self, store: Store, name: str, spec: Path, stdout: str, stderr: str) -> None:
        self.store, self.name, self.spec, self.stdout, self.stderr = store, name, spec, stdout, stderr




def minilm_epoch(cli: Any, folder: Path, config: dict[str, Any], classes: tuple[str, ...]) -> None:
    """``search run`` of one real MiniLM epoch from ``config``: one epoch line, the table's
    validation figure is that epoch's, and a per-slice row for each of ``classes``."""
    (folder / "minilm.yaml").write_text(yaml.safe_dump(config))
    result = ok(cli("run", "--config", "minilm.yaml", timeout=900))
    epochs = re.findall(r"^epoch (\d+): ([0-9.]+)$", result.stdout, flags=re.M)
    assert [e for e, _ in epochs] == ["1"], result.stdout
    validation = re.search(r"this run \(validation, 100 items\)\s*│\s*([0-9.]+)", result.stdout)
    assert validation and validation.group(1) == epochs[0][1], result.stdout
    for name in classes:
        assert re.search(rf"│ {re.escape(name)}\s*│\s*[0-9.]+\s*│\s*\d+\s*│", result.stdout), f"no {name} row"

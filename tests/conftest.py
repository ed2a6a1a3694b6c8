"""Shared fixtures: the real data, a tiny random BERT, both real stores, and the CLI as users run it.

Everything here is real: the Recipe-MPR files from ``$SEARCH_DATA_DIR``, PostgreSQL on
127.0.0.1:5432 (``$SEARCH_TEST_PG_URL`` overrides), Optuna journal files, and training runs.
Only the backbone is small (a randomly initialised 2-layer BERT with the real MiniLM
tokenizer), so that a trial takes a second or two on a CPU core.
"""

from __future__ import annotations

import os

# One thread per process: workers run side by side on two cores, and a seeded run gives the same
# metric in every process only when they all use the same thread count. Set before torch loads.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import copy
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="session", autouse=True)
def no_user_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests running in this process (token cache, embedded store, launch state) write under a
    temporary home, never the user's ~/.cache, ~/.local/share or ~/.local/state."""
    home = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as patch:
        for var, sub in (("XDG_CACHE_HOME", "cache"), ("XDG_DATA_HOME", "data"), ("XDG_STATE_HOME", "state")):
            patch.setenv(var, str(home / sub))
        yield home


# --- data and model -------------------------------------------------------------------------


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


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data folder, holding the Recipe-MPR files."""
    return shared_data("recipe-mpr/500QA.json")


@pytest.fixture(scope="session")
def aste_dir() -> Path:
    """The real data folder, holding the D2E2S ASTE files."""
    return shared_data("aste/d2e2s/14res/dev_dep_triple_polarity_result.json")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with the real MiniLM WordPiece tokenizer.

    Saved as a bare ``BertModel``: like a real pretrained backbone, its multiple-choice head is
    missing and gets drawn from the trial's seed.
    """
    import torch
    import transformers

    from objectives._models import resolve_model

    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(resolve_model("minilm")).save_pretrained(out)
    return out


@pytest.fixture
def recipe(data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The Recipe-MPR objective module, reading the real data in this process."""
    monkeypatch.setenv("SEARCH_DATA_DIR", str(data_dir))
    from objectives import recipe_mpr

    return recipe_mpr


# --- the CLI --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of every CLI call: this checkout, the real data, no user state."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items()
           if k not in {"SEARCH_STORAGE", "SEARCH_SPACES_DIR", "SEARCH_HEARTBEAT_INTERVAL", "SEARCH_GRACE_PERIOD"}}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        XDG_DATA_HOME=str(home / "data"),  # the embedded default store, never the user's
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_STATE_HOME=str(home / "state"),
        HF_HUB_OFFLINE="1",
        COLUMNS="200",  # rich tables on one line each, so the tests can read them
        NO_COLOR="1",
    )
    if os.environ.get("SEARCH_DATA_DIR"):
        env["SEARCH_DATA_DIR"] = str(Path(os.environ["SEARCH_DATA_DIR"]).resolve())
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", *args]


@pytest.fixture
def cli(cli_env: dict[str, str], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run ``search ARGS...`` to completion in tmp_path; ``env`` adds or overrides variables."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(command(*args), cwd=tmp_path, env={**cli_env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)

    return run


@pytest.fixture
def start_cli(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start ``search ARGS...`` in the background; every process still alive at the end is killed."""
    started: list[subprocess.Popen] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(command(*args), cwd=tmp_path, env={**cli_env, **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


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


@pytest.fixture
def write_spec(tmp_path: Path, tiny_model: Path) -> Callable[..., Path]:
    """Write a test spec to tmp_path/<file or name>.yaml; ``edit`` may change the dict first."""

    def write(name: str, *, file: str | None = None, edit: Callable[[dict], None] | None = None, **kwargs: Any) -> Path:
        spec = spec_dict(name, tiny_model, **kwargs)
        if edit:
            edit(spec)
        path = tmp_path / f"{file or name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


# --- stores ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A reachable PostgreSQL URL: $SEARCH_TEST_PG_URL, else postgres (or root) on 127.0.0.1:5432/test."""
    import sqlalchemy

    candidates = [os.environ["SEARCH_TEST_PG_URL"]] if os.environ.get("SEARCH_TEST_PG_URL") else list(PG_CANDIDATES)
    errors = []
    for url in candidates:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("select 1"))
            return url
        except Exception as e:  # noqa: BLE001 - any failure means: try the next, then skip
            errors.append(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
        finally:
            engine.dispose()
    pytest.skip(f"no PostgreSQL reachable (set SEARCH_TEST_PG_URL): {'; '.join(errors)}")


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


@pytest.fixture
def pg_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The real PostgreSQL only (what many machines share)."""
    opened = open_store("postgresql", tmp_path, request)
    yield opened
    opened.close()


@pytest.fixture(params=["journal", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each store the service supports: the embedded journal file and PostgreSQL."""
    opened = open_store(request.param, tmp_path, request)
    yield opened
    opened.close()


# --- a study with a finished search, shared by the tests that only read it --------------------

MEDIAN_PRUNER = {"type": "MedianPruner", "options": {"n_startup_trials": 1, "n_warmup_steps": 0}}


class FinishedStudy:
    """A study on one store after a real `search worker` run, and the spec it was created from."""

    def __init__(self, store: Store, name: str, spec: Path, stdout: str, stderr: str) -> None:
        self.store, self.name, self.spec, self.stdout, self.stderr = store, name, spec, stdout, stderr


@pytest.fixture(scope="session", params=["journal", "postgresql"])
def pruned_study(request, tmp_path_factory, data_dir, tiny_model, cli_env) -> Iterator[FinishedStudy]:
    """Two known configs under the median pruner: "good" learns, "stuck" (lr 1e-7) cannot.

    The median pruner compares a trial with the completed ones at the same epoch: "good"
    (lr 3e-3) lifts the tiny model well above its initial accuracy after one epoch, "stuck"
    stays at its random initial accuracy, so it is pruned.
    """
    folder = tmp_path_factory.mktemp(f"study-{request.param}")
    store = open_store(request.param, folder, request)
    name = store.name("prune")
    spec = folder / f"{name}.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(name, tiny_model, known=[known("good", 3e-3, 3), known("stuck", 1e-7, 3)],
                                             pruner=MEDIAN_PRUNER), sort_keys=False))
    result = ok(subprocess.run(command("worker", "--study", str(spec), "--storage", store.url, "--n-trials", "2"),
                               cwd=folder, env=cli_env, capture_output=True, text=True, timeout=600))
    yield FinishedStudy(store, name, spec, result.stdout, result.stderr)
    store.close()

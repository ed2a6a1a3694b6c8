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

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import (MEDIAN_PRUNER, PG_CANDIDATES, REPO, FinishedStudy, Store, command, known, ok, open_store,
                     shared_data,
                     spec_dict)

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

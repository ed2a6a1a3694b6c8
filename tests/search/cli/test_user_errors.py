"""Errors a user can cause end in one line on stderr, exit code 2, no traceback, storage untouched."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from helpers import Store, command


@pytest.fixture
def populated(pruned_study) -> tuple[Store, Path]:
    """A store holding a real study (one trial complete, one pruned), and the spec it was created from."""
    return pruned_study.store, pruned_study.spec


@dataclass
class Case:
    """A command that must fail: ``args(store, spec_dir, existing_spec)`` and what the line says."""

    args: Callable[[Store, Path, Path], list[str]]
    says: tuple[str, ...]
    env: Callable[[Path], dict[str, str]] | None = None


def bad_spec(edit: Callable[[dict], None] | str, *, new_name: bool = True) -> Callable[[Store, Path, Path], list[str]]:
    """A worker on a spec derived from the existing one (under a new study name) by ``edit``."""

    def args(store: Store, folder: Path, existing: Path) -> list[str]:
        path = folder / "bad.yaml"
        if isinstance(edit, str):
            path.write_text(edit.replace("NAME", store.name("bad")))
        else:
            spec = yaml.safe_load(existing.read_text())
            if new_name:
                spec["name"] = store.name("bad")
            edit(spec)
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return ["worker", "--study", str(path), "--storage", store.url, "--n-trials", "1"]

    return args


def changed_space(spec: dict) -> None:
    """The existing study's name, another search space."""
    spec["space"]["learning_rate"]["high"] = 0.5


CASES = {
    "unknown-key": Case(bad_spec(lambda s: s.update(pruners=s["pruner"])), ("bad.yaml", "pruners", "unknown key",
                                                                             "allowed:", "pruner")),
    "unknown-param-key": Case(bad_spec(lambda s: s["space"]["learning_rate"].update(lo=1e-5)),
                              ("bad.yaml", "space.learning_rate.lo", "unknown key", "allowed:", "low")),
    "low-above-high": Case(bad_spec(lambda s: s["space"]["num_train_epochs"].update(low=5, high=2)),
                           ("bad.yaml", "space.num_train_epochs", "low (5", "high (2")),
    "param-objective-does-not-take": Case(
        bad_spec(lambda s: s["space"].update(momentum={"type": "float", "low": 0.0, "high": 0.9})),
        ("bad.yaml", "space.momentum", "not a parameter of objective recipe_mpr", "learning_rate")),
    "yaml-syntax": Case(bad_spec("name: NAME\nobjective: recipe_mpr\nspace: {learning_rate: [1, 2\n"),
                        ("bad.yaml", "not valid YAML")),
    "different-spec": Case(bad_spec(changed_space, new_name=False),
                           ("was created with a different spec", "space.learning_rate.high", "0.01", "0.5")),
    "status-unknown-study": Case(lambda s, f, e: ["status", "--study", s.name("nope"), "--storage", s.url],
                                 ("no study", "nope")),
    "export-unknown-study": Case(lambda s, f, e: ["export", "--study", s.name("nope"), "--storage", s.url,
                                                  "-o", str(f / "out.yaml")], ("no study", "nope")),
    "status-bad-format": Case(lambda s, f, e: ["status", "--study", s.name("prune"), "--storage", s.url,
                                               "--format", "yaml"], ("--format 'yaml'", "expected 'table' or 'json'")),
    "studies-bad-format": Case(lambda s, f, e: ["studies", "--storage", s.url, "--format", "JSON"],
                               ("--format 'JSON'", "expected 'table' or 'json'")),
    "export-bad-format": Case(lambda s, f, e: ["export", "--study", s.name("prune"), "--storage", s.url,
                                               "-o", str(f / "out.yaml"), "--format", "yml"],
                              ("--format 'yml'", "expected 'table' or 'json'")),
    "missing-data": Case(bad_spec(lambda s: None), ("recipe-mpr data not found", "SEARCH_DATA_DIR", "empty"),
                         env=lambda folder: {"SEARCH_DATA_DIR": str(folder / "empty")}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_and_leaves_storage_alone(case, populated, cli_env, tmp_path):
    store, existing = populated
    spec = CASES[case]
    (tmp_path / "empty").mkdir()
    before = store.snapshot()

    result = subprocess.run(command(*spec.args(store, tmp_path, existing)), cwd=tmp_path,
                            env={**cli_env, **(spec.env(tmp_path) if spec.env else {})},
                            capture_output=True, text=True, timeout=300)

    assert result.returncode == 2, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"stderr is not one line:\n{result.stderr}"
    assert lines[0].startswith("error: ")
    for word in spec.says:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert "Traceback" not in result.stdout + result.stderr
    assert store.snapshot() == before, "the storage changed"
    assert not (tmp_path / "out.yaml").exists()


def test_bad_storage_url_is_one_line_without_password(populated, cli_env, tmp_path):
    store, existing = populated
    secret = "hunter2-s3cret"
    worker = ["worker", "--study", str(existing), "--n-trials", "1"]
    status = ["status", "--study", store.name("prune")]
    if store.kind == "journal":
        (tmp_path / "a-file").write_text("")
        cases = [(worker, str(tmp_path / "a-file" / "studies.journal"), "cannot open journal file"),
                 (status, str(tmp_path / "typo.journal"), "no such journal file"),
                 (status, str(tmp_path / "studies.sqlite"), "not a storage URL")]
    else:
        user, host = re.match(r"[^:]+://([^:@/]+)(?::[^@]*)?@([^/]+)/", store.url).groups()
        cases = [(worker, f"postgresql+psycopg2://{user}:{secret}@{host}/no_such_db_{store.prefix}", "cannot connect"),
                 (status, f"postgresql+psycopg2://{user}:{secret}@127.0.0.1:1/test", "cannot connect")]
    before = store.snapshot()
    for args, url, says in cases:
        result = subprocess.run(command(*args, "--storage", url), cwd=tmp_path, env=cli_env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, f"{args} {url}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: storage "), result.stderr
        assert says in lines[0], lines[0]
        assert secret not in result.stdout + result.stderr
        if store.kind == "postgresql":
            assert f"{user}:***@" in lines[0], lines[0]
    assert store.snapshot() == before
    assert not (tmp_path / "studies.sqlite").exists() and not (tmp_path / "typo.journal").exists()


@pytest.mark.parametrize(("config", "env", "says"), [
    (None, {}, "cfg.yaml: no such file"),
    (["a", "list"], {}, "not a config written by `search export`"),
    ({"objective": "recipe_mpr", "params": {"momentum": 0.9}}, {}, "params.momentum: not a parameter of objective"),
    ({"objective": "recipe_mpr", "params": {"num_train_epochs": 1}}, {"SEARCH_DATA_DIR": "empty"},
     "recipe-mpr data not found"),
])
def test_run_with_a_bad_config_or_no_data_is_one_line(config, env, says, cli, tmp_path):
    (tmp_path / "empty").mkdir()
    if config is not None:
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    result = cli("run", "--config", "cfg.yaml", env={k: str(tmp_path / v) for k, v in env.items()})
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# Every shipped spec, run where its data is not: what the one line names.
MISSING_DATA = {
    "recipe-mpr": ("recipe-mpr data not found", "500QA.json"),
    "lyrics-genre": ("lyrics-genre data not found",),
    "ag-news": ("ag_news data not found", "test.csv"),
    "aste-14res": ("aste data not found", "14res"),
    "babylm": ("babylm train text not found", "train.txt"),
}


@pytest.mark.parametrize("spec", list(MISSING_DATA))
def test_every_shipped_spec_without_its_data_is_one_line_and_stores_nothing(spec, cli, tmp_path):
    (tmp_path / "empty").mkdir()
    journal = tmp_path / "studies.journal"
    backbone = [] if spec == "babylm" else ["--set", "model_name_or_path=minilm"]  # babylm trains its own
    result = cli("worker", "--study", spec, "--storage", str(journal), "--n-trials", "1", *backbone,
                 env={"SEARCH_DATA_DIR": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for words in (*MISSING_DATA[spec], "SEARCH_DATA_DIR"):
        assert words in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not journal.exists(), "nothing stored: the journal file was never created"

"""Study names: one rule for every new study, never a path or markup unescaped.

A new study's name (the spec's ``name``, ``--name``) is a folder, part of a file name and a word
in a shell script; a name refused is one line, exit 2, and nothing stored. A name a storage
already holds (another tool may have made it with plain Optuna) is shown as text and becomes a
folder only through a safe encoding.
"""

from __future__ import annotations

import optuna
import pytest

from helpers import Store, run_main
from objectives.attributes import StudyAttr
from search.running.display import WorkerDisplay
from search.running.events import TrialEvent
from search.running.runner import trial_checkpoint_dir
from search.spec import load_spec, name_as_path

BAD_NAMES = {
    "absolute": "/some/dir",
    "traversal": "../up",
    "newline": "a\nb",
    "markup": "x[/]",
    "upper-case": "Study",
    "too-long": "a" * 201,
}


def stored(store: Store, name: str) -> bool:
    """Does the store hold a study ``name``? (One name looked up: other tests share the database.)"""
    try:
        store.optuna.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


@pytest.mark.parametrize("bad", BAD_NAMES.values(), ids=BAD_NAMES.keys())
@pytest.mark.parametrize("command", ["worker", "launch"])
def test_a_name_that_breaks_the_rule_is_one_line_and_stores_nothing(command, bad, store, monkeypatch, capsys,
                                                                       tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    journal = tmp_path / "new.journal"
    url = str(journal) if store.kind == "journal" else store.url
    code, out, err = run_main(monkeypatch, capsys, command, "--study", "recipe-mpr", "--storage", url,
                              "--name", bad, "--n-trials", "1")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: --name ") and "not a study name" in err, err
    assert "Traceback" not in out + err
    assert not journal.exists(), "refused before the store is opened"
    if store.kind == "postgresql":
        assert not stored(store, bad)
    assert not (tmp_path / "state").exists(), "no launch log folder"


def test_a_600_character_name_is_refused_on_postgresql_without_a_traceback(pg_store, monkeypatch, capsys):
    name = pg_store.name("a" * 600)
    code, _, err = run_main(monkeypatch, capsys, "worker", "--study", "recipe-mpr", "--storage", pg_store.url,
                            "--name", name, "--n-trials", "1")
    assert code == 2 and "612 characters" in err and "at most 200 characters" in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not stored(pg_store, name)


def markup_study(store: Store, name: str) -> None:
    """A study made with plain Optuna, holding a recorded spec and one complete trial, whose name
    and parameter read as rich markup."""
    spec = load_spec("recipe-mpr")
    study = optuna.create_study(study_name=name, storage=store.optuna, direction="maximize")
    study.set_user_attr(StudyAttr.SPEC, spec.as_dict())
    study.set_user_attr(StudyAttr.READY, True)
    study.add_trial(optuna.trial.create_trial(params={"[bold]x[/]": 1.0},
                                              distributions={"[bold]x[/]": optuna.distributions.FloatDistribution(0, 2)},
                                              value=0.5))


def test_a_stored_name_with_markup_is_shown_as_text(store, monkeypatch, capsys):
    name = store.name("x[/]")
    markup_study(store, name)
    if store.kind == "journal":  # the test database is shared: its listing races other tests' deletions
        code, out, err = run_main(monkeypatch, capsys, "studies", "--storage", store.url)
        assert code == 0, err
        assert name in out
    code, out, err = run_main(monkeypatch, capsys, "status", "--study", name, "--storage", store.url)
    assert code == 0, err
    assert name in out and "[bold]x[/]" in out


def test_the_worker_display_shows_reasons_and_values_as_text(capsys):
    from rich.console import Console

    console = Console(width=200, no_color=True)
    with WorkerDisplay(load_spec("recipe-mpr"), console) as display:
        display(TrialEvent(kind="started", trial=0, params={"choice": "[/]"}))
        display(TrialEvent(kind="failed", trial=0, reason="RuntimeError: tensor[/] mismatch"))
    out = capsys.readouterr().out
    assert "choice=[/]" in out and "trial 0 failed RuntimeError: tensor[/] mismatch" in out


@pytest.mark.parametrize("name", ["../../escape", "/abs/dir", "..", "a/../../b", "x[/]", "é/\n"])
def test_a_name_read_from_storage_gives_a_checkpoint_folder_inside_the_root(name, store, monkeypatch, tmp_path):
    """Another tool created the study: its trials' checkpoints still stay under the root."""
    root = tmp_path / "checkpoints"
    monkeypatch.setenv("SEARCH_CHECKPOINT_DIR", str(root))
    study = optuna.create_study(study_name=name, storage=store.optuna)
    try:
        folder = trial_checkpoint_dir(study.ask())
    finally:
        if store.kind == "postgresql":  # the exact name, not this test's prefix: Store.close would miss it
            optuna.delete_study(study_name=name, storage=store.optuna)
    assert folder.resolve().is_relative_to(root.resolve())
    assert folder.parent.parent == root and folder.name == "trial-0"
    assert "/" not in folder.parent.name and not folder.parent.name.startswith(".")


def test_a_name_that_follows_the_rule_is_its_own_folder_and_others_never_collide():
    assert name_as_path("recipe-mpr.confirm") == "recipe-mpr.confirm"
    assert name_as_path("a/b") != name_as_path("a_b") != name_as_path("a-b")
    assert name_as_path("A") != name_as_path("a")
    assert len(name_as_path("x" * 600)) < 100

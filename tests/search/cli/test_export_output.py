"""`search export -o FILE` never overwrites a study store, nor (without --force) a file it did not
write: one line, exit 2, the file untouched. Real `search export` runs on a finished study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from helpers import ok


def refused(result, *says: str) -> None:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in says:
        assert text in lines[0], lines[0]


def other_stores(folder: Path) -> dict[Path, str]:
    """A journal file and a SQLite database, each holding a study: what a typo in -o could hit."""
    journal = folder / "other.journal"
    optuna.create_study(study_name="kept", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    sqlite = folder / "other.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{sqlite}")
    optuna.create_study(study_name="kept", storage=storage)
    storage.engine.dispose()
    return {journal: "journal file", sqlite: "SQLite database"}


def test_export_never_overwrites_a_study_store(pruned_study, cli, tmp_path):
    store, name = pruned_study.store, pruned_study.name
    targets = other_stores(tmp_path)
    if store.kind == "journal":
        targets[Path(store.url)] = "journal file"  # the very store it reads: `-o studies.journal`
    for path, kind in targets.items():
        before = path.read_bytes()
        for force in ([], ["--force"]):
            result = cli("export", "--study", name, "--storage", store.url, "-o", str(path), *force)
            refused(result, str(path), f"a {kind} (a study store)")
            assert path.read_bytes() == before, f"{path} was changed"
    assert name in store.study_names() and len(store.trials(name)) == 2


def test_export_overwrites_its_own_files_and_others_only_with_force(pruned_study, cli, tmp_path):
    store, name = pruned_study.store, pruned_study.name
    export = ("export", "--study", name, "--storage", store.url, "-o")

    ok(cli(*export, "best.yaml"))
    first = (tmp_path / "best.yaml").read_text()
    assert first.startswith("# written by `search export`")
    (tmp_path / "best.yaml").write_text(first.replace("rerun:", "rerun_edited_by_hand:"))
    ok(cli(*export, "best.yaml"))  # its own file: rewritten without asking
    assert (tmp_path / "best.yaml").read_text() == first

    older = tmp_path / "older.yaml"  # an export from before the header line
    older.write_text("".join(first.splitlines(keepends=True)[1:]))
    ok(cli(*export, str(older)))
    assert older.read_text().startswith("# written by `search export`")
    assert yaml.safe_load(older.read_text())["params"] == yaml.safe_load(first)["params"]

    notes = tmp_path / "notes.yaml"
    notes.write_text("study: mine\nthoughts: keep these\n")
    refused(cli(*export, str(notes)), str(notes), "not written by `search export`", "--force")
    assert notes.read_text() == "study: mine\nthoughts: keep these\n"
    ok(cli(*export, str(notes), "--force"))
    assert yaml.safe_load(notes.read_text())["study"] == name

    refused(cli(*export, str(tmp_path)), "a folder")


@pytest.mark.parametrize("as_json", [False, True])
def test_a_refused_export_prints_nothing_on_stdout(pruned_study, cli, tmp_path, as_json):
    (tmp_path / "notes.txt").write_text("mine\n")
    result = cli("export", "--study", pruned_study.name, "--storage", pruned_study.store.url, "-o", "notes.txt",
                 *(["--format", "json"] if as_json else []))
    refused(result, "notes.txt", "--force")
    assert result.stdout == "" and (tmp_path / "notes.txt").read_text() == "mine\n"

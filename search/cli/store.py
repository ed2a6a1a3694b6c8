"""``search store check`` and ``search store repair``: the embedded store's journal file, read line
by line, and a damaged one rewritten with every intact record (the old file kept as a backup)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from search.cli import render
from search.cli.errors import CommandError
from search.cli.options import Format, Storage
from search.cli.render import console
from storage import JournalCheck, check_journal, journal_path, mask_url, repair_journal, resolve_url

app = typer.Typer(name="store", no_args_is_help=True,
                  help="Check the embedded store (a journal file) for damage, and repair it.")


def check(storage: Storage = None, format_: Format = "table") -> None:
    """Read a journal file line by line: its damaged lines, its intact records, what a repair keeps.

    Exits 0 when no line is damaged (an unfinished last line, a write cut short, is removed by the
    next write), 1 when some are. Takes the journal's lock for the moment it reads.

    --format json prints one object: journal, lines, records (intact), studies, trials (what Optuna
    reads from them), damaged: [{line, reason, recovered (whole records found in it), lost}],
    unfinished_last_line_bytes, placeholders, repairable, problem (why a repair is refused, or null).
    """
    found = check_journal(_journal(storage))
    if format_ == "json":
        render.print_json(found.as_dict())
    else:
        _show(found)
        if found.damage and found.problem is None:
            _say(f"`search store repair --storage {_quoted(found.path)}` keeps every intact record "
                 "(and a backup of the file)")
    if found.damage:
        raise typer.Exit(1)


def repair(
    storage: Storage = None,
    drop_unreadable: Annotated[bool, typer.Option(
        "--drop-unreadable", help="Drop damaged bytes that say nothing of what they held as records that created "
        "nothing (if one created a trial, later records go to the wrong trial).")] = False,
) -> None:
    """Rewrite a damaged journal file with every intact record; the old file stays as FILE.bak-<UTC time>.

    Whole records inside a damaged line are kept, a write cut short is dropped (it never was a
    record), and a lost trial or study creation is replaced by a placeholder so that later records
    keep their trial. Refused (the file untouched) when that cannot be done. Stop the workers and
    the dashboard on the file first: a process that had it open stops at its next read.
    """
    repaired = repair_journal(_journal(storage), drop_unreadable=drop_unreadable)
    _show(repaired.check)
    if repaired.backup is None:
        _say("nothing to repair")
        return
    placeholders = f", {_count(repaired.check.placeholders, 'placeholder')}" if repaired.check.placeholders else ""
    _say(f"repaired: {_count(repaired.check.records, 'intact record')} kept{placeholders}; "
         f"the old file is {repaired.backup}")


def _journal(storage: str | None) -> Path:
    url = resolve_url(storage)
    path = journal_path(url)
    if path is None:
        raise CommandError(f"storage {mask_url(url)}: not a journal file; `search store` checks and repairs "
                           "journal files (a database keeps its own consistency)")
    return path


def _show(found: JournalCheck) -> None:
    state = _count(len(found.damage), "damaged line") if found.damage else "intact"
    _say(f"journal {found.path}: {state}; {_count(found.records, 'intact record')} "
         f"({_count(found.studies, 'study', 'studies')}, {_count(found.trials, 'trial')})")
    for damage in found.damage:
        recovered = f"; {_count(damage.recovered, 'whole record')} in it kept" if damage.recovered else ""
        _say(f"  line {damage.line}: {damage.reason}{recovered}; lost: {damage.lost}")
    if found.unfinished_bytes:
        _say(f"  line {found.lines}: unfinished ({found.unfinished_bytes} bytes: a write cut short, "
             "never a record); the next write removes it")
    if found.problem:
        _say(f"a repair is refused: {found.problem}")


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _say(line: str) -> None:
    """One line of plain text (paths and reasons are never markup), never wrapped."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _quoted(path: str) -> str:
    import shlex

    return shlex.quote(path)

"""The options several commands share, declared once (``typing.Annotated`` aliases), and what
turns their values into objects: the same flag reads and behaves the same in every command."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
import yaml

from search.cli.errors import CommandError
from search.spec import STUDY_NAME_RULE, SpecError, check_study_name, read_yaml
from storage import mask_url, resolve_url

Spec = Annotated[str, typer.Option("--study", help="Spec name in spaces/ (or a spec YAML path).")]
Study = Annotated[str, typer.Option("--study", help="Study name in storage.")]
Storage = Annotated[str | None, typer.Option(
    "--storage", show_default=False,
    help="Storage URL (postgresql+psycopg2://... or a .journal file); default $SEARCH_STORAGE, else the embedded store.")]
Set = Annotated[list[str] | None, typer.Option(
    "--set", show_default=False, help="KEY=VALUE: pin a parameter in the study being created.")]


def _check_name(value: str | None) -> str | None:
    """A new study's name follows the spec's name rule, checked before anything is opened or stored."""
    return None if value is None else check_study_name(value)


Name = Annotated[str | None, typer.Option(
    "--name", callback=_check_name,
    help=f"Study name in storage (default: the spec's name); {STUDY_NAME_RULE}.")]
GpusPerTrial = Annotated[int | None, typer.Option(
    "--gpus-per-trial", min=1, help="GPUs per trial (default: the spec's resources.gpus_per_trial, else 1).")]


def _check_n_trials(value: int | None) -> int | None:
    """A count of trials is 1 or more: one line, exit 2, before anything is opened or stored
    (click's own range check would print its usage panel)."""
    if value is not None and value < 1:
        raise CommandError(f"--n-trials {value}: expected a number of trials >= 1")
    return value


def _check_timeout(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise CommandError(f"--timeout {value:g}: expected a number of seconds > 0")
    return value


NTrials = Annotated[int | None, typer.Option(
    "--n-trials", callback=_check_n_trials, help="Finished trials the whole study should hold (1 or more); "
    "every worker stops then (default: the workers run until stopped).")]
WorkerNTrials = Annotated[int | None, typer.Option(
    "--n-trials", callback=_check_n_trials, help="Trials this worker runs (1 or more), then stops (with --budget "
    "study: finished trials in the whole study).")]
Timeout = Annotated[float | None, typer.Option(
    "--timeout", callback=_check_timeout, help="Start no trial after this many seconds (more than 0).")]

FORMATS = ("table", "json")


def _check_format(value: str) -> str:
    """A bad --format is bad input like any other: one line, exit 2 (not click's usage panel)."""

    if value not in FORMATS:
        raise CommandError(f"--format {value!r}: expected {' or '.join(repr(f) for f in FORMATS)}")
    return value


Format = Annotated[str, typer.Option(
    "--format", metavar="table|json", callback=_check_format,
    help="table: for people; json: one JSON object on stdout, for programs (its shape: above).")]


def parse_sets(values: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as parameters; values read as a spec's are (``1e-4`` is a float)."""
    out = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = read_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise SpecError(f"--set {item!r}: not a YAML value: {' '.join(str(getattr(e, 'problem', e)).split())}") from None
    return out


def open_store(storage: str | None, *, create: bool = True) -> tuple[Any, str]:
    """The storage ``--storage`` names and its URL as it may be shown (password masked);
    ``create=False`` for commands that only read: a store that does not exist is NoStore."""
    from storage import open_storage  # imported late: keeps `search --help` fast

    url = resolve_url(storage)
    return open_storage(url, create=create), mask_url(url)

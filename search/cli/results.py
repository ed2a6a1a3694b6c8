"""The commands that read what the search found: ``status``, ``studies`` and ``export``; and
those that train the winners again: ``run`` (one exported configuration) and ``confirm``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from objectives import Objective, Reporter, load_objective
from search.cli import render
from search.cli.errors import CommandError
from search.cli.options import Format, GpusPerTrial, Storage, Study, open_store
from search.cli.render import console, err_console
from rich.text import Text
from search.running.events import TrialEvent
from search.running.runner import TrialRunner
from search.spec import SpecError, read_yaml, spaces_dir
from search.study import StudyNotFound
from storage import NoStore, mask_url, resolve_url


def status(study: Study, storage: Storage = None, format_: Format = "table") -> None:
    """Trials by state, the best value against target and baseline, the best configuration.

    --format json prints one object:
    study, storage (URL, password masked), objective, metric {name, direction},
    trials {complete, pruned, fail, running, waiting} (counts),
    best: null, or {number, value, split, n_items, reached, known_config,
      params (all of them), tuned (names), slices {per_X: {slice: {figures, n}}}},
    target {value, source, beat_baseline}, baseline {value, source},
    references: [{name, metric, value, source, best (the best trial's figure)}].
    """
    from search.cli.records import status_record
    from search.study import load_study

    opened, where = open_store(storage, create=False)
    found, spec = load_study(study, opened, where, by_spec=True)
    if found.study_name != study:
        err_console.print(Text(f"no study named {study!r}: showing {found.study_name!r}, made from the spec {study!r}"))
    record = status_record(found, spec, where)
    if format_ == "json":
        render.print_json(record)
    else:
        render.status(record)


def export(
    study: Study,
    output: Annotated[Path, typer.Option("-o", "--output", help="YAML file to write.")],
    top: Annotated[int, typer.Option(
        "--top", min=1, help="Also write the next K-1 configurations (under `others`).")] = 1,
    storage: Storage = None,
    format_: Format = "table",
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite an existing file that `search export` did not write (never a study store).")] = False,
) -> None:
    """Write the winning configuration, complete and runnable, as YAML (with confirmed figures).

    --format json writes the file too, and prints its record, one object:
    study, objective, trial, known_config,
    metric {name, direction, value, split, n_items},
    target {value, reached, source}, baseline {value, source}, references,
    slices, confirmed (null, or {mean, std, seeds, ...}), params, tuned, rerun,
    others (with --top K: the next K-1 configurations, each such a record).
    """
    from search.results.export import export_top
    from search.summary import best_trial
    from search.study import load_study

    check_output(output, force=force)
    opened, where = open_store(storage, create=False)
    found, spec = load_study(study, opened, where)
    if best_trial(found) is None:
        raise StudyNotFound(f"study {study!r} has no completed trial yet: nothing to export")
    record = export_top(found, spec, str(output), top)
    try:
        output.write_text(f"{EXPORT_HEADER}\n" + yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    except OSError as e:
        raise CommandError(f"cannot write {output}: {e.strerror or e}") from None
    if format_ == "json":
        render.print_json(record)
    else:
        render.exported(record, output)


EXPORT_HEADER = "# written by `search export`; run it with `search run --config FILE`"
EXPORT_KEYS = {"study", "objective", "params", "rerun"}  # what every export holds (also those before the header)


def check_output(output: Path, *, force: bool) -> None:
    """Refuse, before anything is read from the store, to overwrite a study store (never, even with
    --force: it would lose every trial) or a file that `search export` did not write (unless --force)."""
    try:
        with open(output, "rb") as f:
            head = f.read(1 << 16)
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise CommandError(f"-o {output}: a folder; give a file name") from None
    except OSError:
        return  # unreadable: writing it says why
    store = _store_kind(head)
    if store:
        raise CommandError(f"-o {output}: a {store} (a study store); export writes YAML: give another file")
    if not force and not _written_by_export(output, head):
        raise CommandError(f"-o {output}: exists and was not written by `search export`; add --force to overwrite it")


def _store_kind(head: bytes) -> str | None:
    """What kind of store a file's first bytes show: SQLite by its header, an Optuna journal by
    its first line (a JSON object with an "op_code")."""
    if head.startswith(b"SQLite format 3\0"):
        return "SQLite database"
    first = head.lstrip().split(b"\n", 1)[0]
    try:
        line = json.loads(first)
    except ValueError:
        return None
    return "journal file" if isinstance(line, dict) and "op_code" in line else None


def _written_by_export(output: Path, head: bytes) -> bool:
    if head.startswith(EXPORT_HEADER.encode()):
        return True
    try:  # an export written before the header: a mapping with export's keys
        record = yaml.safe_load(output.read_text()) if output.stat().st_size < 1 << 20 else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(record, dict) and EXPORT_KEYS <= set(record)


def studies(storage: Storage = None, format_: Format = "table") -> None:
    """The specs in spaces/ and the studies in storage.

    --format json prints one object:
    specs_dir, specs: [{spec, objective, metric {name, direction},
      target {value, beat_baseline}, baseline {value, computed},
      searched (parameter names)}, or {spec, error} for an invalid one],
    storage (URL, password masked), studies: [{study, metric, trials, complete,
      best, target, created (ISO 8601, UTC)}] ([] while it holds none).
    """
    from search.cli.records import spec_summaries, study_summaries

    where = mask_url(resolve_url(storage))
    try:
        opened, _ = open_store(storage, create=False)
    except NoStore:
        opened = None  # nothing run here yet; looking does not create the store
    record = {"specs_dir": str(spaces_dir()), "specs": spec_summaries(), "storage": where,
              "studies": study_summaries(opened) if opened is not None else []}
    if format_ == "json":
        render.print_json(record)
    else:
        render.studies(record)


def _print_epoch(event: TrialEvent) -> None:
    if event.kind == "epoch":
        console.print(f"epoch {event.step}: {event.value:.4f}")


def _checkpointing(reporter: Reporter, objective: Objective, folder: Path | None, resume: bool) -> None:
    """Point the run at its checkpoint folder: a new run needs an empty one, --resume a checkpoint."""
    from objectives.engine.checkpoint import has_checkpoint, read_summary

    if not objective.resumable:
        raise CommandError(f"objective {objective.name} does not checkpoint: --checkpoint-dir and --resume need one "
                           "that does")
    if folder is None:
        raise CommandError("--resume needs --checkpoint-dir DIR, the folder of the run to continue")
    if resume and not has_checkpoint(folder):
        raise CommandError(f"--resume: no checkpoint in {folder}")
    if not resume and has_checkpoint(folder):
        step = read_summary(folder).get("step", "?")
        raise CommandError(f"{folder} holds a checkpoint (step {step}): add --resume to continue it, "
                           "or give another folder")
    if resume:
        console.print(f"resuming {folder} from step {read_summary(folder).get('step', '?')}", markup=False)
    reporter.checkpoint_dir, reporter.keep_checkpoint, reporter.resume_any_config = folder, True, resume


def run(
    config: Annotated[Path, typer.Option("--config", help="A YAML file written by `search export`.")],
    on_test: Annotated[bool, typer.Option(
        "--on-test", help="Also score the held-out test split (confirmation only).")] = False,
    rank: Annotated[int, typer.Option("--rank", min=1, help="Which configuration of an `export --top K` file.")] = 1,
    checkpoint_dir: Annotated[Path | None, typer.Option(
        "--checkpoint-dir", help="Keep a resumable checkpoint of this run in DIR (objectives that checkpoint, "
        "e.g. babylm).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run checkpointed in --checkpoint-dir, with this file's hyperparameters "
        "(weights, optimizer moments and step carry over).")] = False,
    gpus_per_trial: Annotated[int, typer.Option(
        "--gpus-per-trial", min=1, help="Train data-parallel on this many GPUs (processes under torchrun).")] = 1,
) -> None:
    """One training run from an exported configuration; no study needed.

    It trains as a trial of the search does (the same trial runner): on one process or
    --gpus-per-trial under torchrun, retried at half the micro-batch when it runs out of memory.
    """
    if not config.is_file():
        raise SpecError(f"{config}: no such file" if not config.exists() else f"{config}: not a file")
    try:
        record = read_yaml(config.read_text())
        if rank > 1:
            record = record["others"][rank - 2]
        objective_name, params = record["objective"], record["params"]
    except (OSError, yaml.YAMLError, KeyError, TypeError, IndexError) as e:
        raise SpecError(f"{config}: not a config written by `search export` (or no rank {rank}): "
                        f"{type(e).__name__}: {e}") from None
    if not isinstance(params, dict):
        raise SpecError(f"{config}: params: expected a mapping of parameter names to values")
    objective = load_objective(objective_name)
    unknown = set(params) - set(objective.params)
    if unknown:
        raise SpecError(f"{config}: params.{sorted(unknown)[0]}: not a parameter of objective {objective_name}")
    for key, value in params.items():
        problem = objective.check(key, value)
        if problem:
            raise SpecError(f"{config}: params.{key}: {problem}")
    params = {**objective.params, **params}  # a hand-trimmed config runs with the objective's defaults
    reporter = Reporter()
    if checkpoint_dir is not None or resume:
        _checkpointing(reporter, objective, checkpoint_dir, resume)
    objective.prepare(params)
    start = time.perf_counter()
    runner = TrialRunner(objective, nproc=gpus_per_trial, emit=_print_epoch)
    result = runner.run(params, reporter, on_test=on_test)
    render.run_result(f"{config} ({objective_name}, {time.perf_counter() - start:.0f} s)", objective.metric,
                      result, record)


def confirm(
    study: Study,
    top: Annotated[int, typer.Option("--top", min=1, help="How many of the best configurations to confirm.")] = 3,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="New seeds per configuration.")] = 3,
    storage: Storage = None,
    gpus_per_trial: GpusPerTrial = None,
) -> None:
    """Re-train the top configurations with new seeds on every fold; score held-out test items.

    Resumable, and several processes (on several GPUs or machines) share the runs. Each run trains
    as a trial of the search does: on the spec's GPUs per trial (or --gpus-per-trial), retried at
    half the micro-batch when it runs out of memory.
    """
    from search.results.confirm import open_confirm_study, plan, run_confirmations
    from search.summary import best_trial
    from search.running.worker import prepare
    from search.study import load_study

    opened, where = open_store(storage)
    found, spec = load_study(study, opened, where)
    if best_trial(found) is None:
        raise StudyNotFound(f"study {study!r} has no completed trial yet: nothing to confirm")
    prepare(spec)
    runs = plan(found, spec, top=top, seeds=seeds)
    confirm_study = open_confirm_study(found, spec, opened, runs)
    configs = len({r["source_trial"] for r in runs})
    console.print(f"confirming {configs} configuration{'s' * (configs != 1)} of {study} x {seeds} "
                  f"seed{'s' * (seeds != 1)}: {len(runs)} runs in {confirm_study.study_name} on {where}", markup=False)

    def on_run(number: int, source: int, seed: int, fold: Any, value: float) -> None:
        fold_text = f" fold {fold}" if fold is not None else ""
        console.print(f"run {number}: trial {source} seed {seed}{fold_text}: test {spec.metric.name} {value:.4f}",
                      markup=False)

    run_confirmations(found, spec, opened, confirm_study, on_run, gpus_per_trial=gpus_per_trial)
    render.confirmed(found, spec)

"""``search``: run workers, watch studies, export and re-run the winners."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from objectives import Reporter, SetupError, get_objective
from search.spec import SpecError, available_specs, load_spec, spaces_dir
from search.study import StudyNotFound
from storage import NoStore, StorageError, mask_url, resolve_url

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hyperparameter search for transformer training, on Optuna.")
console = Console()
err_console = Console(stderr=True)

class CommandError(Exception):
    """Anything else a user can cause (a busy port, an unwritable file): one line, exit 2."""


USER_ERRORS = (SpecError, SetupError, StorageError, StudyNotFound, CommandError)

StorageOpt = typer.Option(None, "--storage", help="Storage URL (postgresql+psycopg2://... or a .journal file); "
                          "default $SEARCH_STORAGE, else the embedded store.", show_default=False)


def _open(storage: str | None, *, create: bool = True):
    """The storage and its masked URL; ``create=False`` for commands that only read."""
    from storage import open_storage  # imported late: keeps `search --help` fast

    url = resolve_url(storage)
    return open_storage(url, create=create), mask_url(url)


def _parse_sets(values: list[str]) -> dict[str, Any]:
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _slices_table(attrs: dict[str, Any], metric: str) -> Table | None:
    """The trial's (or run's) per-slice figures of ``metric`` as a table."""
    from search.dashboard.report import slice_attr, slices

    found = slice_attr(attrs)
    if found is None:
        return None
    name, per = found
    table = Table(title=name.replace("_", " "))
    table.add_column("slice")
    table.add_column(metric, justify="right")
    table.add_column("n", justify="right")
    for key, value in slices(attrs, metric).items():
        table.add_row(key, "absent" if value is None else f"{value:.4f}", str(per[key].get("n", "")))
    return table


@app.command()
def worker(
    study: str = typer.Option(..., "--study", help="Spec name in spaces/ (or a spec YAML path)."),
    storage: Optional[str] = StorageOpt,
    n_trials: Optional[int] = typer.Option(None, "--n-trials", help="Trials this worker runs, then stops "
                                            "(with --budget study: finished trials in the whole study)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Start no trial after this many seconds."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE: pin a parameter in the study being created."),
    name: Optional[str] = typer.Option(None, "--name", help="Study name in storage (default: the spec's name)."),
    budget: str = typer.Option("worker", "--budget", help="What --n-trials counts: 'worker' (trials this worker "
                               "runs) or 'study' (finished trials in the whole study, all workers together)."),
    gpus_per_trial: Optional[int] = typer.Option(None, "--gpus-per-trial", min=1, help="GPUs per trial for this "
                                                 "worker (default: the spec's resources.gpus_per_trial, else 1)."),
) -> None:
    """Run trials of a study; creates the study from its spec on first use."""
    from search.running.display import WorkerDisplay
    from search.results.export import best_trial, state_counts
    from search.running.shutdown import LAUNCHER_ENV, Shutdown
    from search.study import build_study, with_study_baseline
    from search.running.worker import MAX_CONSECUTIVE_FAILURES, prepare, run_trials

    if budget not in ("worker", "study"):
        raise CommandError(f"--budget {budget!r}: expected 'worker' or 'study'")
    if budget == "study" and n_trials is None:
        raise CommandError("--budget study needs --n-trials N (the number of finished trials the study should hold)")
    shutdown = Shutdown().install()  # Ctrl-C / SIGTERM: the running trial fails and is re-queued at once
    if os.environ.get(LAUNCHER_ENV):  # started by `search launch`: stop when it dies
        shutdown.stop_with_parent(int(os.environ.pop(LAUNCHER_ENV)))
    spec = load_spec(study, _parse_sets(set_))
    prepare(spec)
    opened, where = _open(storage)
    result, _ = build_study(spec, opened, name=name)
    spec = with_study_baseline(spec, result)
    console.print(f"study [bold]{result.study_name}[/] ({spec.objective}) on {where}: "
                  f"{spec.metric.name} target {spec.target.value:g}, baseline {spec.baseline.value:g}")
    with WorkerDisplay(spec, console) as display:
        run_trials(result, spec, opened, n_trials=None if budget == "study" else n_trials, timeout=timeout,
                   display=display, study_budget=n_trials if budget == "study" else None,
                   gpus_per_trial=gpus_per_trial, shutdown=shutdown)
    if shutdown.requested:
        raise KeyboardInterrupt  # stopped between trials: main() says "stopped", exit 130
    trials = result.get_trials(deepcopy=False)
    tail = trials[-MAX_CONSECUTIVE_FAILURES:]
    if len(tail) == MAX_CONSECUTIVE_FAILURES and all(t.state.name == "FAIL" for t in tail):
        err_console.print(f"error: stopped after {MAX_CONSECUTIVE_FAILURES} failed trials in a row; last: "
                          f"{tail[-1].user_attrs.get('end_reason', 'unknown')}")
        raise typer.Exit(1)
    counts = ", ".join(f"{n} {state.lower()}" for state, n in state_counts(result).items() if n)
    best = best_trial(result)
    best_text = f"best {best.value:.4f} (trial {best.number})" if best else "no completed trial yet"
    console.print(f"worker done. {result.study_name}: {counts}; {best_text}, target {spec.target.value:g}. "
                  f"Details: search status --study {result.study_name}")


@app.command()
def launch(
    study: str = typer.Option(..., "--study", help="Spec name in spaces/ (or a spec YAML path)."),
    gpus: str = typer.Option("all", "--gpus", help="GPU ids (0,1,2,3), 'all' (detected; none found: CPU workers) "
                             "or 'none' (CPU workers)."),
    per_gpu: int = typer.Option(1, "--per-gpu", min=1, help="Workers per GPU (per group of --gpus-per-trial GPUs; "
                                "without GPUs: the number of CPU workers)."),
    storage: Optional[str] = StorageOpt,
    n_trials: Optional[int] = typer.Option(None, "--n-trials", min=1, help="Finished trials the whole study should "
                                           "hold; every worker stops then (default: run until Ctrl-C)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Workers start no trial after this many seconds."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE: pin a parameter in the study being created."),
    name: Optional[str] = typer.Option(None, "--name", help="Study name in storage (default: the spec's name)."),
    gpus_per_trial: Optional[int] = typer.Option(None, "--gpus-per-trial", min=1,
                                                 help="GPUs per trial (default: the spec's resources.gpus_per_trial)."),
    max_restarts: int = typer.Option(5, "--max-restarts", min=0, help="Restarts of a worker that keeps dying."),
    stop_timeout: float = typer.Option(60.0, "--stop-timeout", help="Seconds a stopping worker gets before SIGKILL."),
    log_dir: Optional[Path] = typer.Option(None, "--log-dir", help="Worker logs (default: "
                                           "$XDG_STATE_HOME/search/launch/STUDY)."),
) -> None:
    """Start K workers per GPU, show their progress, restart dead ones, stop all cleanly on Ctrl-C."""
    from search.cluster.launch import Launcher, LaunchError, parse_gpus, slots

    spec = load_spec(study, _parse_sets(set_))
    try:
        found = parse_gpus(gpus)
        per_trial = gpus_per_trial or spec.gpus_per_trial
        devices = slots(found, gpus_per_trial=per_trial, per_gpu=per_gpu)
    except LaunchError as e:
        raise CommandError(str(e)) from None
    _, where = _open(storage)  # a storage that does not open is one line now, not one per worker
    args = ["--study", study, *(a for item in set_ for a in ("--set", item))]
    args += ["--name", name] if name else []
    args += ["--n-trials", str(n_trials), "--budget", "study"] if n_trials else []
    args += ["--timeout", str(timeout)] if timeout else []
    args += ["--gpus-per-trial", str(gpus_per_trial)] if gpus_per_trial else []
    study_name = name or spec.name
    state_home = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    folder = log_dir or state_home / "search" / "launch" / study_name
    on = f"GPUs {', '.join(sorted(set(devices)))}" if found else "no GPU: CPU workers"
    budget = f"until the study holds {n_trials} finished trials" if n_trials else "until Ctrl-C"
    console.print(f"launching {len(devices)} workers for study {study_name} on {where} ({on}), {budget}; "
                  f"logs in {folder}", soft_wrap=True)
    code = Launcher(args, devices, storage_url=resolve_url(storage), log_dir=folder, max_restarts=max_restarts,
                    stop_timeout=stop_timeout, console=console).run()
    raise typer.Exit(code)


@app.command()
def slurm(
    study: str = typer.Option(..., "--study", help="Spec name in spaces/ (or a spec YAML path)."),
    nodes: int = typer.Option(..., "--nodes", min=1, help="Nodes of the job."),
    gpus_per_node: int = typer.Option(..., "--gpus-per-node", min=1, help="GPUs used on every node."),
    time_limit: Optional[str] = typer.Option(None, "--time", help="Job time limit, HH:MM:SS (default: the partition's)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Script to write (default: search-STUDY.sbatch)."),
    n_trials: Optional[int] = typer.Option(None, "--n-trials", min=1, help="Finished trials the whole study should "
                                           "hold; the workers stop then (default: run until the time limit)."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE: pin a parameter in the study being created."),
    name: Optional[str] = typer.Option(None, "--name", help="Study name in storage (default: the spec's name)."),
    gpus_per_trial: Optional[int] = typer.Option(None, "--gpus-per-trial", min=1,
                                                 help="GPUs per trial (default: the spec's resources.gpus_per_trial)."),
    partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition."),
) -> None:
    """Write an sbatch script: one worker per GPU on every node; the storage URL comes from
    $SEARCH_STORAGE when the job runs and is never written into the script."""
    from search.cluster.slurm import SlurmError, sbatch_script

    spec = load_spec(study, _parse_sets(set_))
    spec_arg = str(Path(study).resolve()) if study.endswith((".yaml", ".yml")) or os.sep in study else study
    args = ["--study", spec_arg, *(a for item in set_ for a in ("--set", item))]
    args += ["--name", name] if name else []
    args += ["--n-trials", str(n_trials), "--budget", "study"] if n_trials else []
    args += ["--gpus-per-trial", str(gpus_per_trial)] if gpus_per_trial else []
    study_name = name or spec.name
    per_trial = gpus_per_trial or spec.gpus_per_trial
    try:
        script = sbatch_script(job_name=f"search-{study_name}", nodes=nodes, gpus_per_node=gpus_per_node,
                               gpus_per_trial=per_trial, time_limit=time_limit, worker_args=args, workdir=Path.cwd(),
                               partition=partition)
    except SlurmError as e:
        raise CommandError(str(e)) from None
    path = output or Path(f"search-{study_name}.sbatch")
    try:
        path.write_text(script)
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror or e}") from None
    workers = nodes * gpus_per_node // per_trial
    console.print(f"wrote {path}: {nodes} node(s) x {gpus_per_node} GPUs, {workers} workers on study {study_name}. "
                  f"Submit with: export SEARCH_STORAGE=postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB; "
                  f"sbatch {path}", soft_wrap=True)


def _print_status(study: Any, spec: Any, where: str, best: Any) -> None:
    from search.results.export import state_counts

    counts = state_counts(study)
    table = Table(title=f"{study.study_name} on {where}")
    for state in counts:
        table.add_column(state.lower(), justify="right")
    table.add_row(*(str(n) for n in counts.values()))
    console.print(table)
    summary = Table(show_header=True)
    for col in ("", spec.metric.name, "vs target"):
        summary.add_column(col, justify="right" if col else "left")
    if best is not None:
        gap = best.value - spec.target.value
        mark = "reached" if spec.reached(best.value) else f"{gap:+.4f}"
        summary.add_row(f"best (trial {best.number}, validation)", f"{best.value:.4f}", mark)
    else:
        summary.add_row("best", "no completed trial yet", "")
    summary.add_row("target (beat the baseline)" if spec.target.beat else "target", f"{spec.target.value:.4f}", "")
    summary.add_row("baseline", f"{spec.baseline.value:.4f}", f"{spec.baseline.value - spec.target.value:+.4f}")
    for line in spec.references:
        if line.metric in (None, spec.metric.name):
            summary.add_row(line.name, f"{line.value:.4f}", f"{line.value - spec.target.value:+.4f}")
    console.print(summary)
    other = [line for line in spec.references if line.metric not in (None, spec.metric.name)]
    if other:
        goals = Table(title="other figures")
        for col in ("", "goal", "best trial", "source"):
            goals.add_column(col, justify="left" if col in ("", "source") else "right")
        for line in other:
            measured = best.user_attrs.get(line.metric) if best is not None else None
            goals.add_row(f"{line.name} ({line.metric})", f"{line.value:.4g}",
                          "—" if measured is None else f"{measured:.4g}", line.source)
        console.print(goals)
    if best is None:
        return
    params = Table(title="best configuration")
    params.add_column("parameter")
    params.add_column("value", justify="right")
    params.add_column("")
    for key, value in spec.params(best.params).items():
        params.add_row(key, _fmt(value), "tuned" if key in best.params else "")
    console.print(params)
    slices = _slices_table(best.user_attrs, spec.metric.name)
    if slices:
        console.print(slices)


@app.command()
def status(
    study: str = typer.Option(..., "--study", help="Study name in storage."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Trials by state, the best value against target and baseline, the best configuration."""
    from search.results.export import best_trial
    from search.study import load_study

    opened, where = _open(storage, create=False)
    found, spec = load_study(study, opened, where)
    _print_status(found, spec, where, best_trial(found))


@app.command()
def export(
    study: str = typer.Option(..., "--study", help="Study name in storage."),
    output: Path = typer.Option(..., "-o", "--output", help="YAML file to write."),
    top: int = typer.Option(1, "--top", min=1, help="Also write the next K-1 configurations (under `others`)."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Write the winning configuration, complete and runnable, as YAML (with confirmed figures)."""
    from search.results.export import best_trial, export_top
    from search.study import load_study

    opened, where = _open(storage, create=False)
    found, spec = load_study(study, opened, where)
    if best_trial(found) is None:
        raise StudyNotFound(f"study {study!r} has no completed trial yet: nothing to export")
    record = export_top(found, spec, str(output), top)
    try:
        output.write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    except OSError as e:
        raise CommandError(f"cannot write {output}: {e.strerror or e}") from None
    confirmed = record["confirmed"]
    confirmed_text = f"; confirmed {confirmed['mean']:.4f} ± {confirmed['std']:.4f} on test" if confirmed else ""
    console.print(f"wrote {output}: trial {record['trial']}, {spec.metric.name} {record['metric']['value']:.4f} "
                  f"(validation{confirmed_text}; target {spec.target.value:g}: "
                  f"{'reached' if record['target']['reached'] else 'not reached'})"
                  + (f" and {len(record['others'])} more" if record.get("others") else ""))
    console.print(f"re-run it with: {record['rerun']}")


class _ConsoleReporter(Reporter):
    def report(self, value: float, step: int) -> None:
        console.print(f"epoch {step}: {value:.4f}")


def _checkpointing(reporter: Reporter, name: str, objective: Any, folder: Path | None, resume: bool) -> None:
    """Point the run at its checkpoint folder: a new run needs an empty one, --resume a checkpoint."""
    from objectives.engine.checkpoint import has_checkpoint, read_summary

    if not getattr(objective, "RESUMABLE", False):
        raise CommandError(f"objective {name} does not checkpoint: --checkpoint-dir and --resume need one that does")
    if folder is None:
        raise CommandError("--resume needs --checkpoint-dir DIR, the folder of the run to continue")
    if resume and not has_checkpoint(folder):
        raise CommandError(f"--resume: no checkpoint in {folder}")
    if not resume and has_checkpoint(folder):
        step = read_summary(folder).get("step", "?")
        raise CommandError(f"{folder} holds a checkpoint (step {step}): add --resume to continue it, "
                           "or give another folder")
    if resume:
        console.print(f"resuming {folder} from step {read_summary(folder).get('step', '?')}")
    reporter.checkpoint_dir, reporter.keep_checkpoint, reporter.resume_any_config = folder, True, resume


@app.command()
def run(
    config: Path = typer.Option(..., "--config", help="A YAML file written by `search export`."),
    on_test: bool = typer.Option(False, "--on-test", help="Also score the held-out test split (confirmation only)."),
    rank: int = typer.Option(1, "--rank", min=1, help="Which configuration of an `export --top K` file."),
    checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help="Keep a resumable checkpoint of "
                                                  "this run in DIR (objectives that checkpoint, e.g. babylm)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run checkpointed in --checkpoint-dir, with "
                                "this file's hyperparameters (weights, optimizer moments and step carry over)."),
) -> None:
    """One training run from an exported configuration; no study needed."""
    try:
        record = yaml.safe_load(config.read_text())
        if rank > 1:
            record = record["others"][rank - 2]
        objective_name, params = record["objective"], record["params"]
    except (OSError, yaml.YAMLError, KeyError, TypeError, IndexError) as e:
        raise SpecError(f"{config}: not a config written by `search export` (or no rank {rank}): "
                        f"{type(e).__name__}: {e}") from None
    if not isinstance(params, dict):
        raise SpecError(f"{config}: params: expected a mapping of parameter names to values")
    objective = get_objective(objective_name)
    unknown = set(params) - set(objective.PARAMS)
    if unknown:
        raise SpecError(f"{config}: params.{sorted(unknown)[0]}: not a parameter of objective {objective_name}")
    params = {**objective.PARAMS, **params}  # a hand-trimmed config runs with the objective's defaults
    reporter = _ConsoleReporter()
    if checkpoint_dir is not None or resume:
        _checkpointing(reporter, objective_name, objective, checkpoint_dir, resume)
    objective.prepare(params)
    start = time.perf_counter()
    result = objective.train(params, reporter, on_test=on_test)
    metric = objective.METRIC
    table = Table(title=f"{config} ({objective_name}, {time.perf_counter() - start:.0f} s)")
    table.add_column("")
    table.add_column(metric, justify="right")
    table.add_row(f"this run ({result.get('split', 'validation')}, {result.get('n_items', '?')} items)", f"{result[metric]:.4f}")
    recorded = (record.get("metric") or {}).get("value")
    if recorded is not None:
        table.add_row(f"recorded (trial {record.get('trial')})", f"{recorded:.4f}")
    if "test" in result:
        table.add_row(f"held-out test ({result['test'].get('n_items')} items)", f"{result['test'][metric]:.4f}")
    if record.get("target"):
        table.add_row("target", f"{record['target']['value']:.4f}")
    console.print(table)
    slices = _slices_table(result, metric)
    if slices:
        console.print(slices)


@app.command()
def studies(storage: Optional[str] = StorageOpt) -> None:
    """The specs in spaces/ and the studies in storage."""
    import optuna

    from search.study import BASELINE_ATTR, SPEC_ATTR

    specs = Table(title=f"specs in {spaces_dir()}")
    for col in ("spec", "objective", "metric", "target", "baseline", "searched"):
        specs.add_column(col)
    for name in available_specs():
        try:
            s = load_spec(name)
            baseline = "computed" if s.baseline.computed else f"{s.baseline.value:g}"
            target = "beat baseline" if s.target.beat else f"{s.target.value:g}"
            specs.add_row(name, s.objective, f"{s.metric.name} ({s.metric.direction})", target,
                          baseline, str(len(s.space)))
        except (SpecError, SetupError) as e:
            specs.add_row(name, f"[red]invalid: {e}", "", "", "", "")
    console.print(specs)
    where = mask_url(resolve_url(storage))
    try:
        opened, _ = _open(storage, create=False)
    except NoStore:
        console.print(f"no studies in {where} yet: `search worker --study SPEC` creates the first")
        return
    table = Table(title=f"studies in {where}")
    for col in ("study", "trials", "complete", "best", "target", "created"):
        table.add_column(col, justify="left" if col == "study" else "right")
    for summary in optuna.get_all_study_summaries(opened, include_best_trial=True):
        spec = summary.user_attrs.get(SPEC_ATTR) or {}
        target = spec.get("target", {}).get("value")
        if spec.get("target", {}).get("beat"):
            target = (summary.user_attrs.get(BASELINE_ATTR) or spec.get("baseline", {})).get("value")
        best = summary.best_trial.value if summary.best_trial else None
        created = summary.datetime_start.strftime("%Y-%m-%d %H:%M") if summary.datetime_start else ""
        study_id = opened.get_study_id_from_name(summary.study_name)
        complete = len(opened.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        table.add_row(summary.study_name, str(summary.n_trials), str(complete),
                      "—" if best is None else f"{best:.4f}", "—" if target is None else f"{target:g}", created)
    console.print(table)


@app.command()
def confirm(
    study: str = typer.Option(..., "--study", help="Study name in storage."),
    top: int = typer.Option(3, "--top", min=1, help="How many of the best configurations to confirm."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="New seeds per configuration."),
    storage: Optional[str] = StorageOpt,
) -> None:
    """Re-train the top configurations with new seeds on every fold; score held-out test items.

    Resumable, and several processes (on several GPUs or machines) share the runs.
    """
    from search.results.confirm import open_confirm_study, plan, run_confirmations
    from search.results.export import best_trial
    from search.study import load_study
    from search.running.worker import prepare

    opened, where = _open(storage)
    found, spec = load_study(study, opened, where)
    if best_trial(found) is None:
        raise StudyNotFound(f"study {study!r} has no completed trial yet: nothing to confirm")
    prepare(spec)
    runs = plan(found, spec, top=top, seeds=seeds)
    confirm_study = open_confirm_study(found, spec, opened, runs)
    configs = len({r["source_trial"] for r in runs})
    console.print(f"confirming {configs} configuration{'s' * (configs != 1)} of {study} x {seeds} "
                  f"seed{'s' * (seeds != 1)}: {len(runs)} runs in {confirm_study.study_name} on {where}")

    def on_run(number: int, source: int, seed: int, fold: Any, value: float) -> None:
        fold_text = f" fold {fold}" if fold is not None else ""
        console.print(f"run {number}: trial {source} seed {seed}{fold_text}: test {spec.metric.name} {value:.4f}")

    run_confirmations(found, spec, opened, confirm_study, on_run)
    _print_confirmed(found, spec)


def _print_confirmed(study: Any, spec: Any) -> None:
    from search.dashboard.report import CONFIRMED_ATTR

    confirmed = sorted(study.user_attrs.get(CONFIRMED_ATTR, {}).items(), key=lambda kv: -kv[1]["mean"])
    if not confirmed:
        console.print("no configuration has all its runs finished yet")
        return
    table = Table(title=f"{study.study_name}: confirmed on held-out test items, mean ± sd over seeds")
    for col in ("trial", "validation (search)", "confirmed (test)", "seeds", "vs target"):
        table.add_column(col, justify="right")
    trials = study.get_trials(deepcopy=False)
    for number, c in confirmed:
        table.add_row(number, f"{trials[int(number)].value:.4f}", f"{c['mean']:.4f} ± {c['std']:.4f}",
                      str(len(c["seeds"])), f"{c['mean'] - spec.target.value:+.4f}")
    console.print(table)
    slices = Table(title="confirmed per slice (test)")
    slices.add_column("slice")
    for number, _ in confirmed:
        slices.add_column(f"trial {number}", justify="right")
    if spec.baseline.slices:
        slices.add_column("baseline", justify="right")
    for name in confirmed[0][1]["slices"]:
        cells = [c["slices"][name] for _, c in confirmed]
        row = ["absent" if p["mean"] is None else f"{p['mean']:.3f} ± {p['std']:.3f}" for p in cells]
        if spec.baseline.slices:
            row.append(f"{spec.baseline.slices[name]:.3f}" if name in spec.baseline.slices else "")
        slices.add_row(name, *row)
    console.print(slices)
    console.print(f"{confirmed[0][1]['what']}. Baseline {spec.baseline.value:g}: {spec.baseline.source}", soft_wrap=True)


@app.command()
def dashboard(
    storage: Optional[str] = StorageOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; loopback unless told otherwise."),
    port: int = typer.Option(8080, "--port"),
) -> None:
    """Serve optuna-dashboard on the storage the workers use."""
    from optuna_dashboard import run_server

    opened, where = _open(storage, create=False)
    console.print(f"optuna-dashboard for {where} on http://{host}:{port}/ (Ctrl-C stops it)")
    try:
        run_server(opened, host=host, port=port)
    except OSError as e:
        raise CommandError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None


def main() -> None:
    os.environ["TZ"] = "UTC"  # trial timestamps in UTC on every worker, whatever the machine's zone
    time.tzset()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        app()
    except USER_ERRORS as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("stopped")
        sys.exit(130)


if __name__ == "__main__":
    main()

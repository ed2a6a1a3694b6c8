"""The commands that run trials: one worker here (``worker``), K per GPU on this machine
(``launch``), one per GPU on every node of a SLURM job (``slurm``), or a Kubernetes Indexed Job
of worker pods (``k8s``)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from search.cli.errors import CommandError
from search.cli.options import (
    GpusPerTrial,
    Name,
    NTrials,
    Set,
    Spec,
    Storage,
    Timeout,
    WorkerNTrials,
    open_store,
    parse_sets,
)
from search.cli.render import console, err_console
from search.cluster.k8s import DEFAULT_IMAGE, DEFAULT_SECRET
from search.cluster.slurm import REQUEUE_SIGNAL_S
from search.spec import load_spec, name_as_path, names_a_file, spec_path
from storage import DEFAULT_ENV, mask_url, resolve_url


def worker_args(study: str, sets: list[str] | None, *, name: str | None, n_trials: int | None,
                gpus_per_trial: int | None, timeout: float | None = None) -> list[str]:
    """The ``search worker`` arguments of the workers that ``launch`` and ``slurm`` start: their
    --n-trials counts the whole study's trials, and a spec file is named by its absolute path,
    since a worker may start in another directory or on another node (a spec name stays a name)."""
    spec = str(spec_path(study).resolve()) if names_a_file(study) else study
    args = ["--study", spec, *(a for item in sets or [] for a in ("--set", item))]
    args += ["--name", name] if name else []
    args += ["--n-trials", str(n_trials), "--budget", "study"] if n_trials else []
    args += ["--timeout", str(timeout)] if timeout else []
    args += ["--gpus-per-trial", str(gpus_per_trial)] if gpus_per_trial else []
    return args


def worker(
    study: Spec,
    storage: Storage = None,
    n_trials: WorkerNTrials = None,
    timeout: Timeout = None,
    set_: Set = None,
    name: Name = None,
    budget: Annotated[str, typer.Option(
        "--budget", help="What --n-trials counts: 'worker' (trials this worker runs) or 'study' (finished trials "
        "in the whole study, all workers together).")] = "worker",
    gpus_per_trial: GpusPerTrial = None,
) -> None:
    """Run trials of a study; creates the study from its spec on first use."""
    from search.summary import best_trial, state_counts
    from search.running.display import WorkerDisplay
    from search.running.shutdown import LAUNCHER_ENV, Shutdown
    from search.running.worker import prepare, run_trials
    from search.study import as_recorded, build_study

    if budget not in ("worker", "study"):
        raise CommandError(f"--budget {budget!r}: expected 'worker' or 'study'")
    if budget == "study" and n_trials is None:
        raise CommandError("--budget study needs --n-trials N (the number of finished trials the study should hold)")
    shutdown = Shutdown().install()  # Ctrl-C / SIGTERM: the running trial fails and is re-queued at once
    if os.environ.get(LAUNCHER_ENV):  # started by `search launch`: stop when it dies
        shutdown.stop_with_parent(int(os.environ.pop(LAUNCHER_ENV)))
    spec = load_spec(study, parse_sets(set_))
    prepare(spec)
    opened, where = open_store(storage)
    result, _ = build_study(spec, opened, name=name)
    spec = as_recorded(spec, result)
    # Names and reasons come from storage (any tool may have written them): shown as text, never markup.
    console.print(Text.assemble("study ", (result.study_name, "bold"),
                                f" ({spec.objective}) on {where}: {spec.metric.name} target {spec.target.value:g}, "
                                f"baseline {spec.baseline.value:g}"))
    with WorkerDisplay(spec, console, n_trials=n_trials if budget == "worker" else None) as display:
        outcome = run_trials(result, spec, opened, n_trials=None if budget == "study" else n_trials,
                             timeout=timeout, display=display, study_budget=n_trials if budget == "study" else None,
                             gpus_per_trial=gpus_per_trial, shutdown=shutdown)
    if shutdown.requested:
        raise KeyboardInterrupt  # stopped between trials: main() says "stopped", exit 130
    if outcome.failure_stop:  # this worker's own trials, whatever other workers of the study did
        err_console.print(f"error: {outcome.failure_stop}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    counts = ", ".join(f"{n} {state.lower()}" for state, n in state_counts(result).items() if n)
    best = best_trial(result)
    best_text = f"best {best.value:.4f} (trial {best.number})" if best else "no completed trial yet"
    console.print(f"worker done. {result.study_name}: {counts}; {best_text}, target {spec.target.value:g}. "
                  f"Details: search status --study {result.study_name}", markup=False, highlight=False)


def launch(
    study: Spec,
    gpus: Annotated[str, typer.Option(
        "--gpus", help="GPU ids (0,1,2,3), 'all' (detected; none found: CPU workers) or 'none' (CPU workers).")] = "all",
    per_gpu: Annotated[int, typer.Option(
        "--per-gpu", min=1, help="Workers per GPU (per group of --gpus-per-trial GPUs; without GPUs: the number "
        "of CPU workers).")] = 1,
    storage: Storage = None,
    n_trials: NTrials = None,
    timeout: Timeout = None,
    set_: Set = None,
    name: Name = None,
    gpus_per_trial: GpusPerTrial = None,
    max_restarts: Annotated[int, typer.Option(
        "--max-restarts", min=0, help="Restarts of a worker that keeps dying.")] = 5,
    stop_timeout: Annotated[float, typer.Option(
        "--stop-timeout", help="Seconds a stopping worker gets before SIGKILL.")] = 60.0,
    log_dir: Annotated[Path | None, typer.Option(
        "--log-dir", help="Worker logs (default: $XDG_STATE_HOME/search/launch/STUDY).")] = None,
) -> None:
    """Start K workers per GPU, show their progress, restart dead ones, stop all cleanly on Ctrl-C."""
    from search.cluster.launch import Launcher, LaunchError, parse_gpus, slots

    spec = load_spec(study, parse_sets(set_))
    try:
        found = parse_gpus(gpus)
        per_trial = gpus_per_trial or spec.gpus_per_trial
        devices = slots(found, gpus_per_trial=per_trial, per_gpu=per_gpu)
    except LaunchError as e:
        raise CommandError(str(e)) from None
    _, where = open_store(storage)  # a storage that does not open is one line now, not one per worker
    if storage and mask_url(storage) != storage:
        # This process's command line is readable by every user of the machine (ps); its workers
        # get the URL through their environment only.
        err_console.print(f"warning: --storage shows its password to other users of this machine (ps); "
                          f"set {DEFAULT_ENV} instead", soft_wrap=True)
    args = worker_args(study, set_, name=name, n_trials=n_trials, gpus_per_trial=gpus_per_trial, timeout=timeout)
    study_name = name or spec.name
    state_home = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    folder = log_dir or state_home / "search" / "launch" / name_as_path(study_name)
    on = f"GPUs {', '.join(sorted(set(devices)))}" if found else "no GPU: CPU workers"
    budget = f"until the study holds {n_trials} finished trials" if n_trials else "until Ctrl-C"
    console.print(f"launching {len(devices)} workers for study {study_name} on {where} ({on}), {budget}; "
                  f"logs in {folder}", soft_wrap=True, markup=False, highlight=False)
    code = Launcher(args, devices, storage_url=resolve_url(storage), log_dir=folder, max_restarts=max_restarts,
                    stop_timeout=stop_timeout, console=console).run()
    raise typer.Exit(code)


def slurm(
    study: Spec,
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="Nodes of the job.")],
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", min=1, help="GPUs used on every node.")],
    time_limit: Annotated[str | None, typer.Option(
        "--time", help="Job time limit, HH:MM:SS (default: the partition's).")] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Script to write (default: search-STUDY.sbatch).")] = None,
    n_trials: NTrials = None,
    set_: Set = None,
    name: Name = None,
    gpus_per_trial: GpusPerTrial = None,
    partition: Annotated[str | None, typer.Option("--partition", help="SLURM partition.")] = None,
    array: Annotated[str | None, typer.Option(
        "--array", metavar="INDEXES[%K]",
        help="Submit the job as a job array: 0-9 runs it ten times, 0-9%2 at most two at once.")] = None,
    requeue: Annotated[bool, typer.Option(
        "--requeue", help="At its time limit (--signal seconds before) or when preempted, the job goes back "
        "to the queue; its next run picks up the trials it was running.")] = False,
    signal: Annotated[int | None, typer.Option(
        "--signal", metavar="SECONDS", help="Stop the workers this long before the time limit (with --requeue "
        f"default {REQUEUE_SIGNAL_S}: when the job re-queues itself).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite an existing file that `search slurm` did not write.")] = False,
) -> None:
    """Write an sbatch script: one worker per GPU on every node; the storage URL comes from
    $SEARCH_STORAGE when the job runs and is never written into the script."""
    from search.cluster.slurm import SlurmError, array_jobs, sbatch_script, written_by_slurm

    spec = load_spec(study, parse_sets(set_))
    args = worker_args(study, set_, name=name, n_trials=n_trials, gpus_per_trial=gpus_per_trial)
    study_name = name or spec.name
    per_trial = gpus_per_trial or spec.gpus_per_trial
    try:
        script = sbatch_script(job_name=f"search-{study_name}", nodes=nodes, gpus_per_node=gpus_per_node,
                               gpus_per_trial=per_trial, time_limit=time_limit, worker_args=args, workdir=Path.cwd(),
                               partition=partition, array=array, requeue=requeue, signal=signal)
    except SlurmError as e:
        raise CommandError(str(e)) from None
    path = output or Path(f"search-{name_as_path(study_name)}.sbatch")
    write_generated(path, script, ours=written_by_slurm, command="search slurm", force=force)
    workers = nodes * gpus_per_node // per_trial
    jobs = ""
    if array:
        count, at_once = array_jobs(array)
        jobs = f"; an array of {count} such jobs" + (f", at most {at_once} at once" if at_once else "")
    jobs += "; re-queued at the time limit or when preempted" if requeue else ""
    console.print(f"wrote {path}: {nodes} node(s) x {gpus_per_node} GPUs, {workers} workers on study {study_name}"
                  f"{jobs}. Submit with: export SEARCH_STORAGE=postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB; "
                  f"sbatch {shlex.quote(str(path))}", soft_wrap=True, markup=False, highlight=False)


def write_generated(path: Path, text: str, *, ours: Callable[[str], bool], command: str, force: bool) -> None:
    """Write a file a command generates; one that exists is replaced only if ``ours`` recognises
    it (the command wrote it) or with ``--force``."""
    if path.exists() and not force and not (path.is_file() and ours(_head(path))):
        raise CommandError(f"{path} exists and was not written by `{command}`: not overwritten "
                           "(another -o, or --force to replace it)")
    try:
        path.write_text(text)
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror or e}") from None


def _head(path: Path) -> str:
    """The first lines of ``path`` (enough to recognise a script of ours); empty if unreadable."""
    try:
        with path.open(errors="replace") as f:
            return f.read(4096)
    except OSError:
        return ""


def k8s(
    study: Spec,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="Worker pods: the Indexed Job's parallelism and completions.")],
    gpus_per_worker: Annotated[int | None, typer.Option(
        "--gpus-per-worker", min=0, help="GPUs of each worker pod, its trials' GPUs (default: the spec's "
        "resources.gpus_per_trial, else 1; 0: CPU workers).")] = None,
    image: Annotated[str, typer.Option(
        "--image", help="The image the pods run (built from this checkout's Dockerfile, pushed where the "
        "cluster pulls from).")] = DEFAULT_IMAGE,
    n_trials: NTrials = None,
    set_: Set = None,
    name: Name = None,
    secret: Annotated[str, typer.Option(
        "--secret", help="The Secret holding the storage URL (key 'url'; with --postgres also 'password').")]
    = DEFAULT_SECRET,
    postgres: Annotated[bool, typer.Option(
        "--postgres", help="Also run PostgreSQL: a StatefulSet with a volume, and its Service.")] = False,
    dashboard: Annotated[bool, typer.Option(
        "--dashboard/--no-dashboard", help="The dashboard: a Deployment and a Service inside the cluster.")] = True,
    namespace: Annotated[str | None, typer.Option(
        "--namespace", help="Namespace of every object (default: kubectl's current one).")] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="File to write (default: search-STUDY.k8s.yaml).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite an existing file that `search k8s` did not write.")] = False,
) -> None:
    """Write Kubernetes manifests: the workers as an Indexed Job, the dashboard, optionally PostgreSQL;
    the storage URL comes from a Secret and is never written into them."""
    from search.cluster.k8s import KubernetesError, manifest_file, manifests, written_by_k8s

    spec = load_spec(study, parse_sets(set_))
    study_name = name or spec.name
    gpus = spec.gpus_per_trial if gpus_per_worker is None else gpus_per_worker
    override = gpus if gpus and gpus != spec.gpus_per_trial else None
    args = worker_args(study, set_, name=name, n_trials=n_trials, gpus_per_trial=override)[2:]  # after --study
    try:
        objects = manifests(study_name=study_name, spec_text=spec_path(study).read_text(), worker_args=args,
                            workers=workers, gpus_per_worker=gpus, image=image, secret=secret, postgres=postgres,
                            dashboard=dashboard, namespace=namespace)
    except KubernetesError as e:
        raise CommandError(str(e)) from None
    text = manifest_file(objects, study_name=study_name, workers=workers, gpus_per_worker=gpus, secret=secret,
                         postgres=postgres)
    path = output or Path(f"search-{name_as_path(study_name)}.k8s.yaml")
    write_generated(path, text, ours=written_by_k8s, command="search k8s", force=force)
    kinds = ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in objects)
    console.print(f"wrote {path}: {kinds}. Create the Secret {secret} first (its command is in the file's "
                  f"first lines), then: kubectl apply -f {shlex.quote(str(path))}", soft_wrap=True, markup=False,
                  highlight=False)

"""Multi-GPU trials: one trial trained data-parallel on G GPUs under torchrun.

A spec with ``resources: {gpus_per_trial: G}`` (G > 1) makes the worker run each trial as

    python -m torch.distributed.run --standalone --nproc-per-node G -m search.cluster.torchrun JOB

The worker keeps everything that is about the study: it asks the trial (its heartbeat runs while
the trial trains), tells the result, writes the notes, retries after running out of memory.
The G processes are about training: each rank builds the objective from the job file, the
engine trains through DDP (``objectives/engine/ddp.py``), and the trial is an optuna-integration
``TorchDistributedTrial``: rank 0 holds the real ``optuna.trial.Trial`` (opened on the storage
from ``$SEARCH_STORAGE``), the other ranks hold None, and every ``report``, ``should_prune`` and
``set_user_attr`` is a collective that all ranks make in the same order. So:

- pruning: ``should_prune`` answers the same on every rank; all raise ``TrialPruned`` together;
- failure: a rank that raises writes its error and exits non-zero; torchrun then stops the
  other ranks (none waits forever in a collective), and the worker fails the trial with the
  first rank's error as the reason and goes on. An out-of-memory error on any rank is one for
  the worker's retry (``search/running/oom.py``);
- a fresh process group per trial: a failed trial leaves nothing behind for the next one;
- progress: rank 0 appends its epochs as ``TrialEvent``s to a file in the job folder, which the
  worker follows into its display (``search/running/events.py``); no output is parsed.

The ranks train as the ``TrialRunner`` trains in one process (``train_once``). ``search run`` and ``search
confirm`` use this path too; a run outside a study (``search run``) has no trial: nobody prunes.

On a machine without GPUs the ranks are CPU processes with the gloo backend (how this is tested).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

from objectives import Objective, Reporter, TrialReporter
from search.running.events import EventFile, Sink, TrialEvent, follow
from search.running.reporting import EmittingReporter, train_once

PRUNED, COMPLETE = "pruned", "complete"
EVENTS_FILE = "events.jsonl"  # rank 0's events, in the job folder


class TrialFailed(Exception):
    """A rank of a data-parallel trial failed; the message names the rank and its error."""


# --- the worker's side ------------------------------------------------------------------------


def train_distributed(objective: Objective, params: dict[str, Any], *, nproc: int, trial: optuna.Trial | None,
                      pruner: dict[str, Any] | None, storage_url: str | None, emit: Sink | None,
                      reporter: EmittingReporter, skip_steps: set[int], on_test: bool) -> dict[str, Any]:
    """Train once on ``nproc`` ranks; returns the objective's result (rank 0's).

    With a ``trial``, rank 0 reports into it on ``storage_url`` (pruned by ``pruner``); without
    (``search run``), nobody prunes. Rank 0's epochs come back as events to ``emit``.

    Raises ``optuna.TrialPruned`` when the ranks pruned it, ``torch.OutOfMemoryError`` when a
    rank ran out of memory, ``TrialFailed`` for any other failure.
    """
    if trial is not None and not storage_url:
        raise TrialFailed("a multi-GPU trial needs the URL of its storage for rank 0")
    name = f"search-trial-{trial.number}-" if trial is not None else "search-run-"
    with tempfile.TemporaryDirectory(prefix=name) as tmp:
        folder = Path(tmp)
        job = {"objective": objective.name, "params": params, "on_test": on_test, "skip_steps": sorted(skip_steps),
               "checkpoint_dir": str(reporter.checkpoint_dir) if reporter.checkpoint_dir else None,
               "keep_checkpoint": reporter.keep_checkpoint, "resume_any_config": reporter.resume_any_config,
               "trial": None if trial is None else {"study": trial.study.study_name, "id": trial._trial_id,
                                                    "number": trial.number, "pruner": pruner or {"type": "NopPruner"}},
               "out": str(folder)}
        (folder / "job.json").write_text(json.dumps(job))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if storage_url:
            env["SEARCH_STORAGE"] = storage_url
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                   f"--nproc-per-node={nproc}", "-m", "search.cluster.torchrun", str(folder / "job.json")]

        def relay(event: TrialEvent) -> None:  # rank 0's epochs: the steps held, then the caller's sink
            if event.kind == "epoch" and event.step is not None:
                reporter.steps.add(event.step)
            if emit:
                emit(event)

        with open(folder / "stderr.log", "w") as stderr, follow(folder / EVENTS_FILE, relay):
            proc = subprocess.Popen(command, env=env, stderr=stderr)
            try:
                code = proc.wait()
            except BaseException:  # Ctrl-C or SIGTERM of the worker: stop the ranks, then go on stopping
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise
        return _outcome(folder, code, nproc)


def _outcome(folder: Path, code: int, nproc: int) -> dict[str, Any]:
    errors = sorted((json.loads(p.read_text()) for p in folder.glob("error-rank*.json")), key=lambda e: e["time"])
    if errors:
        first = errors[0]
        message = f"rank {first['rank']} of {nproc}: {first['type']}: {first['message']}"
        if first["type"] == "OutOfMemoryError":
            import torch

            raise torch.OutOfMemoryError(message)
        raise TrialFailed(message)
    # Rank 0 writes the outcome after the last collective of the trial: all ranks trained to the end.
    outcome_file = folder / "outcome.json"
    if outcome_file.is_file():
        outcome = json.loads(outcome_file.read_text())
        if outcome["state"] == PRUNED:
            raise optuna.TrialPruned(outcome["reason"])
        return outcome["result"]
    raise TrialFailed(f"torchrun exited with code {code} and no rank reported an error "
                      f"({_root_cause((folder / 'stderr.log').read_text(errors='replace'))})")


def _root_cause(stderr: str) -> str:
    """torchrun's "Root Cause" of a failure (rank and exit code or signal), else the last line."""
    _, found, rest = stderr.partition("Root Cause")
    fields = dict(re.findall(r"^\s*(rank|exitcode)\s*:\s*(.+?)\s*$", rest, flags=re.M)) if found else {}
    if fields:
        return ", ".join(f"{key} {value}" for key, value in fields.items())
    lines = stderr.strip().splitlines()
    return lines[-1][:200] if lines else "no output"


# --- the ranks' side --------------------------------------------------------------------------


def _rank_reporter(job: dict[str, Any], rank: int) -> Reporter:
    """Rank 0 holds the real trial (the pruner decides there), the others None: every report,
    should_prune and set_user_attr is a collective. Without a trial, nobody prunes."""
    from optuna_integration import TorchDistributedTrial

    from search.spec import Component
    from storage import open_storage

    if job["trial"] is None:
        return Reporter()
    real = None
    if rank == 0:  # the worker asked the trial; rank 0 reports into it
        study = optuna.load_study(study_name=job["trial"]["study"], storage=open_storage(os.environ["SEARCH_STORAGE"]),
                                  pruner=Component.model_validate(job["trial"]["pruner"]).build(optuna.pruners))
        real = optuna.trial.Trial(study, job["trial"]["id"])
    return TrialReporter(TorchDistributedTrial(real))


def _rank_main(job_path: str) -> None:
    import torch
    import torch.distributed as dist

    from objectives import load_objective

    job = json.loads(Path(job_path).read_text())
    out = Path(job["out"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    try:
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        inner = _rank_reporter(job, rank)
        inner.checkpoint_dir = Path(job["checkpoint_dir"]) if job["checkpoint_dir"] else None
        inner.keep_checkpoint, inner.resume_any_config = job["keep_checkpoint"], job["resume_any_config"]
        number = job["trial"]["number"] if job["trial"] else None
        reporter = EmittingReporter(inner, EventFile(out / EVENTS_FILE) if rank == 0 else None, number)
        try:
            result = train_once(load_objective(job["objective"]), job["params"], reporter,
                                skip_steps=set(job["skip_steps"]), on_test=job["on_test"])
            outcome: dict[str, Any] = {"state": COMPLETE, "result": result}
        except optuna.TrialPruned as e:  # raised on every rank together
            outcome = {"state": PRUNED, "reason": str(e)}
        if rank == 0:
            (out / "outcome.json").write_text(json.dumps(outcome, default=_jsonable))
        dist.barrier()  # no rank leaves while another still reports or writes the outcome
    except Exception as e:
        # Written before this rank exits: torchrun then stops the others; the worker reads the first error.
        (out / f"error-rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "type": type(e).__name__, "message": str(e).strip()[:500], "time": time.time()}))
        raise
    # A rank is a one-trial process. Tearing down gloo's threads (destroy_process_group, or the
    # interpreter's exit) sometimes aborts the process ("terminate called without an active
    # exception", SIGABRT) after the trial has finished: leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


if __name__ == "__main__":
    _rank_main(sys.argv[1])

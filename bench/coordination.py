"""Coordination at scale: 1 to 16 workers on one PostgreSQL study, ours against plain Optuna.

Every worker is its own process (forked from this one, so none pays the import of torch) and
runs trials of a fixed simulated training time: ``--epochs`` sleeps of ``trial_seconds/epochs``
each, and after each epoch what the engine writes (the per-slice and per-epoch user
attributes), a report and a pruning check. Two workloads in the same run, on the same storage:

- ours: the path ``search worker --n-trials N --budget study`` takes (``search.running.worker.run_trials``:
  study built from the spec, admission under the study-wide budget, heartbeat, the reporter,
  OOM wrapper, worker attribute, and after each trial the trial note and the study's note and
  plots under the study lock). Only the objective's training is the simulated one: the bench
  hands the worker an objective whose ``train`` sleeps instead of training a model;
- plain Optuna: ``optuna.create_study(load_if_exists=True)`` and ``study.optimize(n_trials=K)``
  on ``optuna.storages.RDBStorage(url)`` with the same sampler, the same sleeps, report and
  should_prune (no attributes, notes or plots: what a plain Optuna user would write).

Figures: trials per hour (finished trials / wall time from the common start to the last
worker's end), scaling efficiency (throughput at N workers / N x throughput at 1), time per
trial against the simulated training time (the overhead), and p50/p99 latency of ask, tell,
report, the note update (trial note + study note + plots) and our budget admission.

    Usage (from the repository root):
        .venv/bin/python bench/coordination.py                       # 30 s trials, 1..16 workers
        .venv/bin/python bench/coordination.py --trial-seconds 3 --trials-per-worker 2 --workers 1,4
        ... --pg-url postgresql+psycopg2://postgres@127.0.0.1:5432/test --json bench/coordination.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TZ", "UTC")
time.tzset()

import optuna  # noqa: E402
import yaml  # noqa: E402

import search.running.worker  # noqa: E402
import search.spec  # noqa: E402
from objectives import Objective  # noqa: E402
from search.spec import validate  # noqa: E402
from search.study import as_recorded, build_study  # noqa: E402
from storage import open_storage  # noqa: E402

DEFAULT_PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
OPERATIONS = ("admit", "ask", "report", "tell", "note update")


# --- the simulated training --------------------------------------------------------------------


def simulated_objective(trial_seconds: float, epochs: int) -> Objective:
    """An objective (the contract's Objective) whose train sleeps instead of training."""
    from objectives import recipe_mpr

    def train(params: dict[str, Any], reporter: Any, *, on_test: bool = False) -> dict[str, Any]:
        history = []
        value = 0.5
        for epoch in range(1, epochs + 1):
            time.sleep(trial_seconds / epochs)
            value = 0.5 + 0.01 * epoch + 0.001 * math.log10(params["learning_rate"])
            history.append({"epoch": epoch, "train_loss": 1.0 / epoch, "value": value, "seconds": trial_seconds / epochs})
            reporter.set_user_attr("per_query_type", {t: {"accuracy": value, "n": 16} for t in recipe_mpr.QUERY_TYPES})
            reporter.set_user_attr("epochs", history)
            reporter.report(value, epoch)
            if reporter.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")
        return {"accuracy": value, "split": "validation", "n_items": 80}

    return Objective(name="recipe_mpr", metric="accuracy", params=recipe_mpr.PARAMS, prepare=lambda params: None,
                     train=train)


def plain_objective(trial_seconds: float, epochs: int) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("learning_rate", 1e-5, 1e-4, log=True)
        trial.suggest_int("num_train_epochs", 2, 15)
        trial.suggest_categorical("per_device_train_batch_size", [8, 16, 32])
        value = 0.5
        for epoch in range(1, epochs + 1):
            time.sleep(trial_seconds / epochs)
            value = 0.5 + 0.01 * epoch + 0.001 * math.log10(lr)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    return objective


# --- timing ------------------------------------------------------------------------------------


class Timings:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)

    def wrap(self, owner: Any, attr: str, operation: str) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.samples[operation].append(time.perf_counter() - start)

        setattr(owner, attr, timed)

    def wrap_callback_factory(self) -> None:
        """Time every call of the callback ``search.running.worker.dashboard_callback`` returns."""
        factory = search.running.worker.dashboard_callback

        def timed_factory(*args: Any, **kwargs: Any) -> Any:
            callback = factory(*args, **kwargs)

            def timed(*a: Any, **k: Any) -> None:
                start = time.perf_counter()
                try:
                    callback(*a, **k)
                finally:
                    self.samples["note update"].append(time.perf_counter() - start)

            return timed

        search.running.worker.dashboard_callback = timed_factory


def _time_optuna(timings: Timings) -> None:
    timings.wrap(optuna.study.Study, "ask", "ask")
    timings.wrap(optuna.study._optimize, "_tell_with_warning", "tell")
    timings.wrap(optuna.trial.Trial, "report", "report")


# --- the workers -------------------------------------------------------------------------------


def our_worker(url: str, name: str, spec_data: dict[str, Any], budget: int, trial_seconds: float, epochs: int,
               barrier: Any, results: Any) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    timings = Timings()
    _time_optuna(timings)
    timings.wrap(search.running.worker.StudyBudget, "admit", "admit")
    timings.wrap_callback_factory()
    search.spec.load_objective = lambda _name: simulated_objective(trial_seconds, epochs)  # what specs load
    storage = open_storage(url)
    spec = validate(spec_data, "bench spec")
    barrier.wait()
    start = time.time()
    study, _ = build_study(spec, storage, name=name)
    search.running.worker.run_trials(study, as_recorded(spec, study), storage, study_budget=budget)
    results.put({"end": time.time(), "start": start, "samples": dict(timings.samples)})


def plain_worker(url: str, name: str, n_trials: int, trial_seconds: float, epochs: int, barrier: Any,
                 results: Any) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    timings = Timings()
    _time_optuna(timings)
    storage = optuna.storages.RDBStorage(url)
    barrier.wait()
    start = time.time()
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                pruner=optuna.pruners.NopPruner())
    study.optimize(plain_objective(trial_seconds, epochs), n_trials=n_trials)
    results.put({"end": time.time(), "start": start, "samples": dict(timings.samples)})


def run_round(mode: str, workers: int, args: argparse.Namespace, spec_data: dict[str, Any]) -> dict[str, Any]:
    fork = multiprocessing.get_context("fork")
    barrier, results = fork.Barrier(workers + 1), fork.Queue()
    name = f"bench-coordination-{mode}-{workers}-{uuid.uuid4().hex[:8]}"
    total = workers * args.trials_per_worker
    if mode == "ours":
        target, extra = our_worker, (spec_data, total)
    else:
        target, extra = plain_worker, (args.trials_per_worker,)
    procs = [fork.Process(target=target, args=(args.pg_url, name, *extra, args.trial_seconds, args.epochs, barrier,
                                              results)) for _ in range(workers)]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.time()
    outcomes = [results.get(timeout=args.trial_seconds * total + 600) for _ in procs]
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise SystemExit(f"{mode} with {workers} workers: a worker exited with {failed}")
    wall = max(o["end"] for o in outcomes) - start
    storage = optuna.storages.RDBStorage(args.pg_url)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished()]
    optuna.delete_study(study_name=name, storage=storage)
    storage.engine.dispose()
    samples: dict[str, list[float]] = defaultdict(list)
    for o in outcomes:
        for op, values in o["samples"].items():
            samples[op].extend(values)
    return {"mode": mode, "workers": workers, "trials": len(finished), "states": sorted({t.state.name for t in trials}),
            "wall_seconds": wall, "trials_per_hour": len(finished) / wall * 3600,
            "seconds_per_trial_per_worker": wall * workers / len(finished),
            "latency": {op: _percentiles(samples.get(op, [])) for op in OPERATIONS}}


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"n": len(values), "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * p99}


def bench_spec() -> dict[str, Any]:
    """spaces/recipe-mpr.yaml as a study runs it, with no pruning (every trial takes its full time)."""
    spec = yaml.safe_load((ROOT / "spaces" / "recipe-mpr.yaml").read_text())
    spec["pruner"] = {"type": "NopPruner"}
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4,8,16", help="worker counts, comma-separated")
    parser.add_argument("--trial-seconds", type=float, default=30.0, help="simulated training time per trial")
    parser.add_argument("--epochs", type=int, default=3, help="reports per trial")
    parser.add_argument("--trials-per-worker", type=int, default=3)
    parser.add_argument("--pg-url", default=os.environ.get("SEARCH_STORAGE", DEFAULT_PG))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    print(f"{args.trial_seconds:g} s trials ({args.epochs} epochs), {args.trials_per_worker} trials per worker, "
          f"workers {counts}; load average {os.getloadavg()[0]:.2f}", flush=True)
    spec_data = bench_spec()
    rows = []
    for workers in counts:
        for mode in ("ours", "plain"):
            row = run_round(mode, workers, args, spec_data)
            rows.append(row)
            print(f"{mode:5} {workers:2} workers: {row['trials']} trials in {row['wall_seconds']:.1f} s, "
                  f"{row['trials_per_hour']:.0f} trials/h, {row['seconds_per_trial_per_worker']:.2f} s per trial "
                  f"per worker", flush=True)
    report(rows, args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items() if k != "pg_url"},
                                         "load_average_end": os.getloadavg(), "rows": rows}, indent=1))


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    base = {r["mode"]: r["trials_per_hour"] for r in rows if r["workers"] == 1}
    print("\n| workers | ours: trials/h | scaling eff. | plain: trials/h | scaling eff. | time per trial, ours / plain "
          "| overhead per trial, ours / plain (s) |")
    print("|---|---|---|---|---|---|---|")
    by = {(r["mode"], r["workers"]): r for r in rows}
    for workers in sorted({r["workers"] for r in rows}):
        ours, plain = by[("ours", workers)], by[("plain", workers)]
        eff = {m: by[(m, workers)]["trials_per_hour"] / (workers * base[m]) if m in base else float("nan")
               for m in ("ours", "plain")}
        print(f"| {workers} | {ours['trials_per_hour']:.0f} | {eff['ours']:.1%} | {plain['trials_per_hour']:.0f} | "
              f"{eff['plain']:.1%} | {ours['seconds_per_trial_per_worker'] / plain['seconds_per_trial_per_worker']:.4f} | "
              f"{ours['seconds_per_trial_per_worker'] - args.trial_seconds:.2f} / "
              f"{plain['seconds_per_trial_per_worker'] - args.trial_seconds:.2f} |")
    print("\n| workers | mode | " + " | ".join(f"{op} p50 / p99 (ms)" for op in OPERATIONS) + " |")
    print("|---|---|" + "---|" * len(OPERATIONS))
    for r in rows:
        cells = [f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f}" if (lat := r["latency"][op]) else "—" for op in OPERATIONS]
        print(f"| {r['workers']} | {r['mode']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

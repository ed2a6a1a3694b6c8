"""What the service adds around a real trial, and how fast a trial reaches its first step.

One worker (``search.running.worker.run_worker``, the path ``search worker`` takes) runs a few real
Recipe-MPR trials (MiniLM by default) on each storage: the embedded journal file and
PostgreSQL. Each storage runs in its own fresh worker process, so its first trial is a genuinely
first trial. The bench only wraps functions to time them; nothing is mocked or skipped.

(a) Service overhead per trial, as a fraction of the trial's training time:
    wall      one turn of ``study.optimize``: from the end of the previous trial (its last
              callback; for the first trial, the call of ``study.optimize``) to the end of this
              trial's last callback: fail_stale_trials, ask, suggest, display, train(), tell,
              callbacks;
    training  time inside ``objectives.recipe_mpr.train`` minus the time spent in the
              reporter it is given (report / should_prune / set_user_attr storage writes and
              the progress display on every step);
    overhead  wall - training.  The heartbeat thread's writes run beside training; their time is
              shown on its own and added in the conservative fraction.

(b) Time to the first optimizer step, first trial of a fresh worker process vs a later one.
    ``run_worker`` calls ``objective.prepare()`` (loads data, tokenizer, model) before the study
    exists; by default this bench clears the objective's lru caches right after prepare() so
    the first trial is cold (data read, tokenized, model loaded from disk; the OS file cache is
    warm by then, and torch is imported). ``--keep-prepare-cache`` leaves them warm, as a real
    worker does. prepare()'s own time, measured in the fresh process (first model load from disk,
    tokenizing the 500 items, lazy imports), is shown either way: it is what a real worker pays
    once before trial 0, so "later setup / prepare()" is the other cold-vs-warm ratio shown.
    Batch size and gradient accumulation are pinned (8 x 1, the seed baseline's; ``--set``
    changes them) so that every trial's first optimizer step does the same work; the other
    searched parameters come from the spec's known configurations, then from the sampler.

    Usage (from the repository root):
        SEARCH_DATA_DIR=../shared/data .venv/bin/python bench/trial_overhead.py
        ... --trials 4 --epochs 1 --model minilm --storages journal,postgres \\
            --pg-url postgresql+psycopg2://postgres@127.0.0.1:5432/test --set per_device_eval_batch_size=64
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if not os.environ.get("SEARCH_DATA_DIR") and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["SEARCH_DATA_DIR"] = str(ROOT.parent / "shared" / "data")  # as the Makefile does
os.environ.setdefault("TZ", "UTC")
time.tzset()

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

DEFAULT_PG = os.environ.get("SEARCH_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
OVERHEAD_TARGET = 0.01
FIRST_STEP_TARGET = 0.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=3, help="trials per storage (>= 2: the first is cold)")
    p.add_argument("--epochs", type=int, default=1, help="num_train_epochs pinned for every trial")
    p.add_argument("--model", default="minilm", help="model_name_or_path")
    p.add_argument("--storages", default="journal,postgres", help="comma list of journal, postgres")
    p.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL URL (or $SEARCH_BENCH_PG_URL)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="more pinned parameters, as `search worker --set`")
    p.add_argument("--keep-prepare-cache", action="store_true",
                   help="do not clear the objective's caches after prepare() (first trial then warm on data/model)")
    p.add_argument("--live", action="store_true", help="show the worker display on stderr instead of a StringIO console")
    p.add_argument("--note-scaling", default="100,1000",
                   help="also time the note and plot refresh at these study sizes (copies of the real trials; '' skips)")
    p.add_argument("--json", type=Path, help="also write the raw measurements here")
    p.add_argument("--report", type=Path, help="print the tables of an earlier --json file and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)  # storage to run in this (fresh) process
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- the measured worker (runs in a fresh child process per storage) ------------------------


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    import objectives.engine.loop as engine
    import objectives._models as models
    import objectives.recipe_mpr as recipe
    import search.running.worker as worker
    from search.cli.options import parse_sets
    from search.running.display import WorkerDisplay
    from search.spec import load_spec
    from storage import mask_url, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    clock = time.perf_counter
    marks: dict[str, Any] = {"prepare": None, "optimize_start": None}
    trials: list[dict[str, Any]] = []  # one record per train() call, in order
    current: dict[str, Any] = {}

    # prepare(): timed; then (by default) its caches are dropped so trial 0 starts cold.
    real_prepare = recipe.prepare

    def timed_prepare(params: dict[str, Any]) -> None:
        t0 = clock()
        real_prepare(params)
        marks["prepare"] = clock() - t0
        if not args.keep_prepare_cache:
            for cached in (recipe.load_items, recipe.encoded_items, models.load_tokenizer, models._pretrained):
                cached.cache_clear()

    recipe.prepare = timed_prepare

    # train(): start/end, and the reporter time spent inside it.
    real_train = recipe.train

    def timed_train(params: dict[str, Any], reporter: Any = None, *, on_test: bool = False) -> dict[str, Any]:
        current.clear()
        current.update(train_start=clock(), reporter_s=0.0, reporter_calls={}, first_forward=None,
                       fit_enter=None, first_step=None, batch=params["per_device_train_batch_size"],
                       accum=params["gradient_accumulation_steps"])
        try:
            return real_train(params, reporter, on_test=on_test)
        finally:
            current["train_end"] = clock()
            trials.append(dict(current))

    recipe.train = timed_train

    # fit(): entry (data, tokenizer and model copy done) and the first forward call.
    real_fit = engine.fit

    def timed_fit(model: Any, *a: Any, **kw: Any) -> Any:
        current["fit_enter"] = clock()

        def first_forward(module: Any, inputs: Any) -> None:
            if current["first_forward"] is None:
                current["first_forward"] = clock()

        hook = model.register_forward_pre_hook(first_forward)
        try:
            return real_fit(model, *a, **kw)
        finally:
            hook.remove()

    recipe.fit = timed_fit  # recipe_mpr imported fit by name

    # The reporter the worker hands to train(): every call is service time inside train().
    for name in ("report", "should_prune", "set_user_attr", "on_step"):
        real = getattr(worker._DisplayReporter, name)

        def timed(self: Any, *a: Any, _real: Any = real, _name: str = name) -> Any:
            t0 = clock()
            try:
                return _real(self, *a)
            finally:
                t1 = clock()
                current["reporter_s"] += t1 - t0
                calls = current["reporter_calls"]
                calls[_name] = calls.get(_name, 0) + 1
                if _name == "set_user_attr" and a and a[0] == "seconds_to_first_step":
                    current["first_step"] = t0  # written right after the first optimizer step

        setattr(worker._DisplayReporter, name, timed)

    # The dashboard callback (trial note, study note, plots under the study lock), timed on its own:
    # it is part of the service overhead, and issue 3 asks what it adds per trial.
    real_dashboard = worker.dashboard_callback

    def timed_dashboard(spec: Any, storage: Any) -> Any:
        callback = real_dashboard(spec, storage)

        def timed(study: Any, trial: Any) -> None:
            t0 = clock()
            try:
                callback(study, trial)
            finally:
                trials[-1]["dashboard_s"] = clock() - t0

        return timed

    worker.dashboard_callback = timed_dashboard

    # The display's trial_ended (from the worker's last callback) closes a trial's wall time.
    ends: list[float] = []
    # Running totals, snapshotted at each trial's end: Optuna's tell, and garbage-collector
    # pauses inside / outside train() (torch models leave reference cycles behind).
    totals = {"gc_in_train": 0.0, "gc_outside": 0.0}
    snapshots: list[dict[str, float]] = []

    class TimedDisplay(WorkerDisplay):
        def trial_ended(self, event: Any) -> None:
            super().trial_ended(event)
            ends.append(clock())
            snapshots.append(dict(totals))

    real_tell = optuna.study._optimize._tell_with_warning

    tells: list[tuple[float, float]] = []

    def timed_tell(*a: Any, **kw: Any) -> Any:
        t0 = clock()
        try:
            return real_tell(*a, **kw)
        finally:
            tells.append((t0, clock()))

    optuna.study._optimize._tell_with_warning = timed_tell
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_started[0] = clock()
        else:
            inside = "train_start" in current and "train_end" not in current
            totals["gc_in_train" if inside else "gc_outside"] += clock() - gc_started[0]

    gc.callbacks.append(on_gc)

    real_optimize = optuna.study.Study.optimize

    def timed_optimize(self: Any, *a: Any, **kw: Any) -> None:
        marks["optimize_start"] = clock()
        marks["totals_at_start"] = dict(totals)  # gc before the loop (imports, prepare) is not a trial's
        return real_optimize(self, *a, **kw)

    optuna.study.Study.optimize = timed_optimize

    # The storage, with its heartbeat writes (a background thread) timed.
    kind = args.child
    journal_dir = None
    if kind == "journal":
        journal_dir = tempfile.mkdtemp(prefix="bench-overhead-")
        url = str(Path(journal_dir) / "studies.journal")
    else:
        url = args.pg_url
    storage = open_storage(url)
    heartbeat = {"s": 0.0, "n": 0}
    real_beat = storage.record_heartbeat

    def timed_beat(trial_id: int) -> None:
        t0 = clock()
        try:
            real_beat(trial_id)
        finally:
            heartbeat["s"] += clock() - t0
            heartbeat["n"] += 1

    storage.record_heartbeat = timed_beat

    # Batch size and accumulation pinned (to the seed baseline's 8 x 1) so that every trial's first
    # optimizer step does the same work; --set changes them.
    overrides = {"model_name_or_path": args.model, "num_train_epochs": args.epochs,
                 "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, **parse_sets(args.sets)}
    spec = load_spec("recipe-mpr", overrides)
    name = f"bench-overhead-{kind}-{uuid.uuid4().hex[:8]}"
    console = (Console(stderr=True) if args.live
               else Console(file=io.StringIO(), force_terminal=True, width=120))  # rendered, not shown
    try:
        with TimedDisplay(spec, console) as display:
            study = worker.run_worker(spec, storage, name=name, n_trials=args.trials, display=display)
        frozen = study.get_trials(deepcopy=False)
        note_scaling = time_note_refresh(study, spec, storage, [int(n) for n in args.note_scaling.split(",") if n])
    finally:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
        if journal_dir:
            for f in Path(journal_dir).iterdir():
                f.unlink()
            os.rmdir(journal_dir)

    starts = [marks["optimize_start"], *ends[:-1]]
    gc.callbacks.remove(on_gc)
    records = []
    before = [marks["totals_at_start"], *snapshots[:-1]]
    for t, rec, start, end, prev, now, (tell_start, tell_end) in zip(frozen, trials, starts, ends, before, snapshots, tells):
        delta = {k: now[k] - prev[k] for k in totals}
        train_s = rec["train_end"] - rec["train_start"]
        in_storage = ((t.datetime_complete - t.datetime_start).total_seconds()
                      if t.datetime_complete and t.datetime_start else None)
        records.append({
            "number": t.number, "state": t.state.name, "known_config": t.user_attrs.get("known_config"),
            "batch": rec["batch"], "accum": rec["accum"], "optimizer_steps": rec["reporter_calls"].get("on_step", 0),
            "wall_s": end - start, "train_s": train_s, "reporter_s": rec["reporter_s"],
            "reporter_calls": rec["reporter_calls"], "storage_start_to_complete_s": in_storage,
            "trial_start_to_train_s": rec["train_start"] - start, "after_train_s": end - rec["train_end"],
            "train_to_tell_s": tell_start - rec["train_end"], "tell_s": tell_end - tell_start,
            "callbacks_s": end - tell_end, "dashboard_s": rec.get("dashboard_s", 0.0),
            "gc_outside_train_s": delta["gc_outside"], "gc_in_train_s": delta["gc_in_train"],
            "train_to_fit_s": rec["fit_enter"] - rec["train_start"] if rec["fit_enter"] else None,
            "fit_to_first_forward_s": (rec["first_forward"] - rec["fit_enter"]) if rec["first_forward"] else None,
            "first_forward_to_step_s": (rec["first_step"] - rec["first_forward"]) if rec["first_step"] else None,
            "train_to_first_forward_s": (rec["first_forward"] - rec["train_start"]) if rec["first_forward"] else None,
            "seconds_to_first_step": t.user_attrs.get("seconds_to_first_step"),
            "trial_start_to_first_step_s": (rec["first_step"] - start) if rec["first_step"] else None,
        })
    return {"storage": kind, "where": mask_url(url), "study": name, "prepare_s": marks["prepare"],
            "caches_cleared_after_prepare": not args.keep_prepare_cache,
            "heartbeat_s": heartbeat["s"], "heartbeats": heartbeat["n"], "trials": records,
            "note_scaling": note_scaling}


def time_note_refresh(study: Any, spec: Any, storage: Any, sizes: list[int]) -> list[dict[str, float]]:
    """Seconds to re-render the study note and plots after one more finished trial, at each study
    size: the study is grown with copies of its real finished trials (same params, values, user
    attributes), so the note renders what a long search would show."""
    import optuna

    from search.dashboard.refresh import refresh_study
    from search.study import as_recorded

    spec = as_recorded(spec, study)
    real = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    out = []
    for size in sorted(sizes):
        while len(study.get_trials(deepcopy=False)) < size:
            t = real[len(study.get_trials(deepcopy=False)) % len(real)]
            study.add_trial(optuna.trial.create_trial(state=t.state, value=t.value, params=t.params,
                                                      distributions=t.distributions, user_attrs=t.user_attrs,
                                                      intermediate_values=t.intermediate_values))
        refresh_study(study, spec, storage)  # the state with `size - 1` trials is rendered ...
        t = real[0]
        study.add_trial(optuna.trial.create_trial(state=t.state, value=t.value, params=t.params,
                                                  distributions=t.distributions, user_attrs=t.user_attrs,
                                                  intermediate_values=t.intermediate_values))
        t0 = time.perf_counter()
        refresh_study(study, spec, storage)  # ... then one more trial finishes
        changed = time.perf_counter() - t0
        t0 = time.perf_counter()
        refresh_study(study, spec, storage)
        out.append({"trials": size + 1, "refresh_s": changed, "unchanged_s": time.perf_counter() - t0})
    return out


# --- the parent: one fresh process per storage, then the tables -----------------------------


def pct(x: float) -> str:
    return f"{100 * x:.3f} %"


def sec(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def mark(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]missed[/]"


def overhead_table(run: dict[str, Any]) -> tuple[Table, float]:
    t = Table(title=f"(a) service overhead per trial, seconds — {run['storage']} ({run['where']})")
    cols = ("trial", "config", "state", "wall", "train()", "reporter (in train)",
            "before train (stale check, ask, suggest, display)", "train end→tell (end_reason write, heartbeat stop)",
            "tell", "callbacks (all)", "of which note + plots", "gc pauses outside train", "training", "overhead",
            "overhead / training")
    for col in cols:
        t.add_column(col, justify="left" if col in ("config", "state") else "right")
    tot_wall = tot_train = 0.0
    for r in run["trials"]:
        training = r["train_s"] - r["reporter_s"]
        over = r["wall_s"] - training
        tot_wall += r["wall_s"]
        tot_train += training
        t.add_row(str(r["number"]), r["known_config"] or "sampled", r["state"].lower(), sec(r["wall_s"]),
                  sec(r["train_s"]), sec(r["reporter_s"]), sec(r["trial_start_to_train_s"]), sec(r.get("train_to_tell_s")),
                  sec(r.get("tell_s")), sec(r.get("callbacks_s")), sec(r.get("dashboard_s")),
                  sec(r.get("gc_outside_train_s")), sec(training), sec(over), pct(over / training))
    frac = (tot_wall - tot_train) / tot_train
    conservative = (tot_wall - tot_train + run["heartbeat_s"]) / tot_train
    t.add_section()
    dashboard = sum(r.get("dashboard_s", 0.0) for r in run["trials"])
    t.add_row("all", "", "", sec(tot_wall), "", "", "", "", "", "", sec(dashboard), "", sec(tot_train),
              sec(tot_wall - tot_train), f"{pct(frac)} {mark(frac < OVERHEAD_TARGET)}")
    t.add_row("+hb", f"with {run['heartbeats']} heartbeat writes ({sec(run['heartbeat_s'])} s, own thread)",
              "", "", "", "", "", "", "", "", "", "", "", sec(tot_wall - tot_train + run["heartbeat_s"]), pct(conservative))
    return t, frac, dashboard / tot_train


def first_step_table(run: dict[str, Any]) -> tuple[Table, dict[str, float]]:
    trials = run["trials"]
    cold, later = trials[0], trials[1:]
    cleared = run["caches_cleared_after_prepare"]
    t = Table(title=f"(b) start of a trial to its first optimizer step, seconds — {run['storage']}; "
                    f"trial 0 {'cold: caches cleared after prepare()' if cleared else 'after prepare() (caches warm)'}")
    cols = ("trial", "trial start→train()", "train()→fit() (data, tokenizer, model)",
            "fit()→1st forward (loader, optimizer, collate)", "train()→1st forward (setup)",
            "1st fwd+bwd+step", "seconds_to_first_step (attr)", "trial start→1st step")
    for col in cols:
        t.add_column(col, justify="right")
    keys = ("trial_start_to_train_s", "train_to_fit_s", "fit_to_first_forward_s", "train_to_first_forward_s",
            "first_forward_to_step_s", "seconds_to_first_step", "trial_start_to_first_step_s")
    for r in trials:
        t.add_row(str(r["number"]), *(sec(r[k]) for k in keys))
    med = {k: statistics.median(r[k] for r in later) for k in keys}
    t.add_section()
    t.add_row("later (median)", *(sec(med[k]) for k in keys))
    ratios = {k: med[k] / cold[k] for k in keys if cold[k]}
    t.add_row("later / trial 0", *(f"{ratios[k]:.3f}" if k in ratios else "—" for k in keys))
    t.add_section()
    prepare = run["prepare_s"]
    t.add_row("prepare() in the fresh process", "", "", "", sec(prepare), "", "", "")
    t.add_row("later / prepare()", "", "", "", f"{med['train_to_first_forward_s'] / prepare:.3f}", "", "", "")
    return t, {"setup": ratios["train_to_first_forward_s"], "setup_vs_prepare": med["train_to_first_forward_s"] / prepare,
               "first_step": ratios["seconds_to_first_step"]}


def render(header: dict[str, Any], runs: list[dict[str, Any]], console: Console) -> None:
    console.print(f"trial overhead: {header['trials']} trials x {header['epochs']} epoch(s) of recipe-mpr "
                  f"({header['model']}) per storage, one fresh worker process each; load average "
                  f"{header['load_start']:.2f} at the start, {header['load_end']:.2f} at the end")
    summary = Table(title="summary (ratios measured in this run)")
    for col in ("storage", "overhead / training (target < 1 %)", "of which note + plots / training",
                "setup to 1st forward: later / trial 0",
                "setup: later / prepare()", "seconds_to_first_step: later / trial 0 (target < 0.1)"):
        summary.add_column(col, justify="right")
    for run in runs:
        if "skipped" in run:
            summary.add_row(run["storage"], f"skipped: {run['skipped']}", "", "", "", "")
            continue
        table_a, frac, note_frac = overhead_table(run)
        table_b, r = first_step_table(run)
        console.print(table_a)
        console.print(table_b)
        summary.add_row(run["storage"], f"{pct(frac)} {mark(frac < OVERHEAD_TARGET)}", pct(note_frac), f"{r['setup']:.3f}",
                        f"{r['setup_vs_prepare']:.3f}", f"{r['first_step']:.3f} {mark(r['first_step'] < FIRST_STEP_TARGET)}")
    console.print(summary)
    scaling = Table(title="note and plots: re-render after one more finished trial, by study size (seconds)")
    for col in ("storage", "trials in the study", "one more finished", "nothing changed"):
        scaling.add_column(col, justify="right")
    for run in runs:
        for row in run.get("note_scaling", []):
            scaling.add_row(run["storage"], str(row["trials"]), sec(row["refresh_s"]), sec(row["unchanged_s"]))
    if scaling.rows:
        console.print(scaling)
    console.print("setup = train() start to the first forward call; seconds_to_first_step also holds that first "
                  "forward, backward and optimizer step. Other processes on the machine stretch absolute times.")


def main() -> int:
    args = parse_args()
    if args.child:
        result = run_child(args)
        args.child_out.write_text(json.dumps(result))
        return 0
    console = Console(width=max(Console().width, 150))
    if args.report:
        data = json.loads(args.report.read_text())
        render(data["header"], data["runs"], console)
        return 0
    if args.trials < 2:
        print("--trials must be at least 2 (the first trial is the cold one)", file=sys.stderr)
        return 2
    header = {"trials": args.trials, "epochs": args.epochs, "model": args.model, "sets": args.sets,
              "keep_prepare_cache": args.keep_prepare_cache, "load_start": os.getloadavg()[0]}
    passthrough = ["--trials", str(args.trials), "--epochs", str(args.epochs), "--model", args.model,
                   "--note-scaling", args.note_scaling,
                   "--pg-url", args.pg_url, *(x for s in args.sets for x in ("--set", s)),
                   *(["--keep-prepare-cache"] if args.keep_prepare_cache else []), *(["--live"] if args.live else [])]
    runs: list[dict[str, Any]] = []
    for kind in [s.strip() for s in args.storages.split(",") if s.strip()]:
        if kind not in ("journal", "postgres"):
            console.print(f"[red]unknown storage {kind!r} (journal, postgres)")
            return 2
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = Path(f.name)
        console.print(f"[dim]{kind}: running a fresh worker process ...")
        proc = subprocess.run([sys.executable, __file__, *passthrough, "--child", kind, "--child-out", str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not out.read_text():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            console.print(f"[yellow]{kind}: skipped: {tail[0]}")
            runs.append({"storage": kind, "skipped": tail[0]})
        else:
            runs.append(json.loads(out.read_text()))
        out.unlink(missing_ok=True)
    header["load_end"] = os.getloadavg()[0]
    render(header, runs, console)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "runs": runs}, indent=1))
    return 0 if any("skipped" not in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

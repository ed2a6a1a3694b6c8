"""Everything the commands show: the rich tables for people and the JSON for programs.

Commands gather what they report (``records.py``, the export record, a run's result) and hand it
here; no command builds a table. Tables are drawn from the same records the JSON prints, so the
two formats cannot disagree.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from objectives.attributes import StudyAttr, TrialAttr

console = Console()
err_console = Console(stderr=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no number for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def print_json(record: dict[str, Any]) -> None:
    """One JSON object on stdout, plain (no markup, no wrapping), whatever the terminal."""
    sys.stdout.write(json.dumps(_finite(record), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    sys.stdout.flush()


def slices_table(attrs: dict[str, Any], metric: str) -> Table | None:
    """The trial's (or run's) per-slice figures of ``metric`` as a table."""
    from search.summary import slice_attr, slices

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


def status(record: dict[str, Any]) -> None:
    """``search status``: trials by state, best against target, baseline and references, the best
    configuration and its slices (``record``: see records.status_record)."""
    table = Table(title=f"{record['study']} on {record['storage']}")
    for state in record["trials"]:
        table.add_column(state, justify="right")
    table.add_row(*(str(n) for n in record["trials"].values()))
    console.print(table)

    metric, target, best = record["metric"]["name"], record["target"]["value"], record["best"]
    summary = Table(show_header=True)
    for col in ("", metric, "vs target"):
        summary.add_column(col, justify="right" if col else "left")
    if best is not None:
        mark = "reached" if best["reached"] else f"{best['value'] - target:+.4f}"
        summary.add_row(f"best (trial {best['number']}, {best['split']})", f"{best['value']:.4f}", mark)
    else:
        summary.add_row("best", "no completed trial yet", "")
    summary.add_row("target (beat the baseline)" if record["target"]["beat_baseline"] else "target",
                    f"{target:.4f}", "")
    baseline = record["baseline"]["value"]
    summary.add_row("baseline", f"{baseline:.4f}", f"{baseline - target:+.4f}")
    for line in record["references"]:
        if line["metric"] == metric:
            summary.add_row(line["name"], f"{line['value']:.4f}", f"{line['value'] - target:+.4f}")
    console.print(summary)

    other = [line for line in record["references"] if line["metric"] != metric]
    if other:
        goals = Table(title="other figures")
        for col in ("", "goal", "best trial", "source"):
            goals.add_column(col, justify="left" if col in ("", "source") else "right")
        for line in other:
            goals.add_row(f"{line['name']} ({line['metric']})", f"{line['value']:.4g}",
                          "—" if line["best"] is None else f"{line['best']:.4g}", line["source"])
        console.print(goals)
    if best is None:
        return
    params = Table(title="best configuration")
    params.add_column("parameter")
    params.add_column("value", justify="right")
    params.add_column("")
    for key, value in best["params"].items():
        params.add_row(key, _fmt(value), "tuned" if key in best["tuned"] else "")
    console.print(params)
    slices = slices_table(best["slices"], metric)
    if slices:
        console.print(slices)


def studies(record: dict[str, Any]) -> None:
    """``search studies``: the specs, then the stored studies (``record``: see records.studies_record)."""
    specs = Table(title=f"specs in {record['specs_dir']}")
    for col in ("spec", "objective", "metric", "target", "baseline", "searched"):
        specs.add_column(col)
    for s in record["specs"]:
        if "error" in s:
            specs.add_row(s["spec"], Text(f"invalid: {s['error']}", style="red"), "", "", "", "")
            continue
        target = "beat baseline" if s["target"]["beat_baseline"] else f"{s['target']['value']:g}"
        baseline = "computed" if s["baseline"]["computed"] else f"{s['baseline']['value']:g}"
        specs.add_row(s["spec"], s["objective"], f"{s['metric']['name']} ({s['metric']['direction']})", target,
                      baseline, str(len(s["searched"])))
    console.print(specs)
    if not record["studies"]:
        console.print(f"no studies in {record['storage']} yet: `search worker --study SPEC` creates the first")
        return
    table = Table(title=f"studies in {record['storage']}")
    for col in ("study", "trials", "complete", "best", "target", "created"):
        table.add_column(col, justify="left" if col == "study" else "right")
    for s in record["studies"]:
        created = s["created"][:16].replace("T", " ") if s["created"] else ""
        table.add_row(s["study"], str(s["trials"]), str(s["complete"]), "—" if s["best"] is None else f"{s['best']:.4f}",
                      "—" if s["target"] is None else f"{s['target']:g}", created)
    console.print(table)


def exported(record: dict[str, Any], output: Path) -> None:
    """``search export``: what was written, and how to re-run it."""
    confirmed = record["confirmed"]
    confirmed_text = f"; confirmed {confirmed['mean']:.4f} ± {confirmed['std']:.4f} on test" if confirmed else ""
    console.print(f"wrote {output}: trial {record['trial']}, {record['metric']['name']} {record['metric']['value']:.4f} "
                  f"(validation{confirmed_text}; target {record['target']['value']:g}: "
                  f"{'reached' if record['target']['reached'] else 'not reached'})"
                  + (f" and {len(record['others'])} more" if record.get("others") else ""))
    console.print(f"re-run it with: {record['rerun']}")


def run_result(title: str, metric: str, result: dict[str, Any], record: dict[str, Any]) -> None:
    """``search run``: this run's figures next to the recorded ones and the target."""
    table = Table(title=title)
    table.add_column("")
    table.add_column(metric, justify="right")
    table.add_row(f"this run ({result.get(TrialAttr.SPLIT, 'validation')}, {result.get(TrialAttr.N_ITEMS, '?')} items)",
                  f"{result[metric]:.4f}")
    recorded = (record.get("metric") or {}).get("value")
    if recorded is not None:
        table.add_row(f"recorded (trial {record.get('trial')})", f"{recorded:.4f}")
    if TrialAttr.TEST in result:
        test = result[TrialAttr.TEST]
        table.add_row(f"held-out test ({test.get(TrialAttr.N_ITEMS)} items)", f"{test[metric]:.4f}")
    if record.get("target"):
        table.add_row("target", f"{record['target']['value']:.4f}")
    console.print(table)
    slices = slices_table(result, metric)
    if slices:
        console.print(slices)


def confirmed(study: Any, spec: Any) -> None:
    """``search confirm``: every fully confirmed configuration, mean ± sd over its seeds, overall and per slice."""
    confirmed = sorted(study.user_attrs.get(StudyAttr.CONFIRMED, {}).items(), key=lambda kv: -kv[1]["mean"])
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

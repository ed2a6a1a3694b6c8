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


def _as_text(cell: Any) -> Any:
    """A table cell or header as text: names, reasons and values come from storage, where any tool
    may have written them, and are never read as rich markup (``x[/]`` is a name, not a tag)."""
    return Text(cell) if isinstance(cell, str) else cell


def _add_row(table: Table, *cells: Any) -> None:
    table.add_row(*(_as_text(c) for c in cells))


def _add_column(table: Table, header: Any = "", **options: Any) -> None:
    table.add_column(_as_text(header), **options)


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
    table = Table(title=Text(name.replace("_", " ")))
    _add_column(table, "slice")
    _add_column(table, metric, justify="right")
    _add_column(table, "n", justify="right")
    for key, value in slices(attrs, metric).items():
        _add_row(table, key, "absent" if value is None else f"{value:.4f}", str(per[key].get("n", "")))
    return table


def status(record: dict[str, Any]) -> None:
    """``search status``: trials by state, best against target, baseline and references, the best
    configuration and its slices (``record``: see records.status_record)."""
    table = Table(title=Text(f"{record['study']} on {record['storage']}"))
    for state in record["trials"]:
        _add_column(table, state, justify="right")
    _add_row(table, *(str(n) for n in record["trials"].values()))
    console.print(table)

    metric, target, best = record["metric"]["name"], record["target"]["value"], record["best"]
    summary = Table(show_header=True)
    for col in ("", metric, "vs target"):
        _add_column(summary, col, justify="right" if col else "left")
    if best is not None:
        mark = "reached" if best["reached"] else f"{best['value'] - target:+.4f}"
        _add_row(summary, f"best (trial {best['number']}, {best['split']})", f"{best['value']:.4f}", mark)
    else:
        _add_row(summary, "best", "no completed trial yet", "")
    _add_row(summary, "target (beat the baseline)" if record["target"]["beat_baseline"] else "target",
                    f"{target:.4f}", "")
    baseline = record["baseline"]["value"]
    _add_row(summary, "baseline", f"{baseline:.4f}", f"{baseline - target:+.4f}")
    for line in record["references"]:
        if line["metric"] == metric:
            _add_row(summary, line["name"], f"{line['value']:.4f}", f"{line['value'] - target:+.4f}")
    console.print(summary)

    other = [line for line in record["references"] if line["metric"] != metric]
    if other:
        goals = Table(title=Text("other figures"))
        for col in ("", "goal", "best trial", "source"):
            _add_column(goals, col, justify="left" if col in ("", "source") else "right")
        for line in other:
            _add_row(goals, f"{line['name']} ({line['metric']})", f"{line['value']:.4g}",
                          "—" if line["best"] is None else f"{line['best']:.4g}", line["source"])
        console.print(goals)
    if best is None:
        return
    params = Table(title=Text("best configuration"))
    _add_column(params, "parameter")
    _add_column(params, "value", justify="right")
    _add_column(params, "")
    for key, value in best["params"].items():
        _add_row(params, key, _fmt(value), "tuned" if key in best["tuned"] else "")
    console.print(params)
    slices = slices_table(best["slices"], metric)
    if slices:
        console.print(slices)


def studies(record: dict[str, Any]) -> None:
    """``search studies``: the specs, then the stored studies (``record``: see records.studies_record)."""
    specs = Table(title=Text(f"specs in {record['specs_dir']}"))
    for col in ("spec", "objective", "metric", "target", "baseline", "searched"):
        _add_column(specs, col)
    for s in record["specs"]:
        if "error" in s:
            _add_row(specs, s["spec"], Text(f"invalid: {s['error']}", style="red"), "", "", "", "")
            continue
        target = "beat baseline" if s["target"]["beat_baseline"] else f"{s['target']['value']:g}"
        baseline = "computed" if s["baseline"]["computed"] else f"{s['baseline']['value']:g}"
        _add_row(specs, s["spec"], s["objective"], f"{s['metric']['name']} ({s['metric']['direction']})", target,
                      baseline, str(len(s["searched"])))
    console.print(specs)
    if not record["studies"]:
        console.print(f"no studies in {record['storage']} yet: `search worker --study SPEC` creates the first",
                      markup=False, highlight=False)
        return
    table = Table(title=Text(f"studies in {record['storage']}"))
    for col in ("study", "trials", "complete", "best", "target", "created"):
        _add_column(table, col, justify="left" if col == "study" else "right")
    for s in record["studies"]:
        created = s["created"][:16].replace("T", " ") if s["created"] else ""
        _add_row(table, s["study"], str(s["trials"]), str(s["complete"]), "—" if s["best"] is None else f"{s['best']:.4f}",
                      "—" if s["target"] is None else f"{s['target']:g}", created)
    console.print(table)


def exported(record: dict[str, Any], output: Path) -> None:
    """``search export``: what was written, and how to re-run it."""
    confirmed = record["confirmed"]
    confirmed_text = f"; confirmed {confirmed['mean']:.4f} ± {confirmed['std']:.4f} on test" if confirmed else ""
    console.print(f"wrote {output}: trial {record['trial']}, {record['metric']['name']} {record['metric']['value']:.4f} "
                  f"(validation{confirmed_text}; target {record['target']['value']:g}: "
                  f"{'reached' if record['target']['reached'] else 'not reached'})"
                  + (f" and {len(record['others'])} more" if record.get("others") else ""), markup=False, highlight=False)
    console.print(f"re-run it with: {record['rerun']}", markup=False, highlight=False)


def run_result(title: str, metric: str, result: dict[str, Any], record: dict[str, Any]) -> None:
    """``search run``: this run's figures next to the recorded ones and the target."""
    table = Table(title=_as_text(title))
    _add_column(table, "")
    _add_column(table, metric, justify="right")
    _add_row(table, f"this run ({result.get(TrialAttr.SPLIT, 'validation')}, {result.get(TrialAttr.N_ITEMS, '?')} items)",
                  f"{result[metric]:.4f}")
    recorded = (record.get("metric") or {}).get("value")
    if recorded is not None:
        _add_row(table, f"recorded (trial {record.get('trial')})", f"{recorded:.4f}")
    if TrialAttr.TEST in result:
        test = result[TrialAttr.TEST]
        _add_row(table, f"held-out test ({test.get(TrialAttr.N_ITEMS)} items)", f"{test[metric]:.4f}")
    if record.get("target"):
        _add_row(table, "target", f"{record['target']['value']:.4f}")
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
    table = Table(title=Text(f"{study.study_name}: confirmed on held-out test items, mean ± sd over seeds"))
    for col in ("trial", "validation (search)", "confirmed (test)", "seeds", "vs target"):
        _add_column(table, col, justify="right")
    trials = study.get_trials(deepcopy=False)
    for number, c in confirmed:
        _add_row(table, number, f"{trials[int(number)].value:.4f}", f"{c['mean']:.4f} ± {c['std']:.4f}",
                      str(len(c["seeds"])), f"{c['mean'] - spec.target.value:+.4f}")
    console.print(table)
    slices = Table(title=Text("confirmed per slice (test)"))
    _add_column(slices, "slice")
    for number, _ in confirmed:
        _add_column(slices, f"trial {number}", justify="right")
    if spec.baseline.slices:
        _add_column(slices, "baseline", justify="right")
    for name in confirmed[0][1]["slices"]:
        cells = [c["slices"][name] for _, c in confirmed]
        row = ["absent" if p["mean"] is None else f"{p['mean']:.3f} ± {p['std']:.3f}" for p in cells]
        if spec.baseline.slices:
            row.append(f"{spec.baseline.slices[name]:.3f}" if name in spec.baseline.slices else "")
        _add_row(slices, name, *row)
    console.print(slices)
    console.print(f"{confirmed[0][1]['what']}. Baseline {spec.baseline.value:g}: {spec.baseline.source}", soft_wrap=True,
                  markup=False, highlight=False)

"""What the dashboard shows: the study's note and plots against target and baseline, trial notes.

Everything here is rendered from the study's current state, so rewriting is idempotent: the
worker that finishes a trial takes the study lock, re-reads the trials, renders and writes only
what changed. Validation figures (the search) and confirmed figures (held-out test, from
``search confirm``) are labelled as such everywhere.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from optuna_dashboard import get_note, save_note, save_plotly_graph_object

from objectives.engine.steplog import describe
from search.dashboard import scaling
from search.spec import StudySpec

CONFIRMED_ATTR = "search:confirmed"
TOP = 5
PLOTS = ("best-so-far", "best-vs-training-time", "slices", "stopped", "confirmed")
_DIGEST = "search:plot_digest:"


# --- helpers ----------------------------------------------------------------------------------


def slice_attr(attrs: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]]] | None:
    """The first per-slice attribute of a trial (``per_query_type``, ``per_genre``, ...) and its
    {slice: {metric..., n}} mapping; None when the trial has none."""
    for key, per in attrs.items():
        if key.startswith("per_") and isinstance(per, dict) and per and all(isinstance(v, dict) for v in per.values()):
            return key, per
    return None


def slices(attrs: dict[str, Any], metric: str) -> dict[str, float | None]:
    """The first per-slice attribute of a trial as {slice: value} (None = absent slice)."""
    found = slice_attr(attrs)
    return {name: v.get(metric, v.get("accuracy")) for name, v in found[1].items()} if found else {}


def seconds(trial: FrozenTrial) -> float:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def duration(total: float) -> str:
    return str(timedelta(seconds=round(total)))


def _fmt(value: Any) -> str:
    if value is None:
        return "absent"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def baseline_params(spec: StudySpec) -> dict[str, Any]:
    for config in spec.known_configs:
        if config.name == "baseline":
            return config.params
    return {}


def ranked(study: optuna.Study, spec: StudySpec) -> list[FrozenTrial]:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: t.value, reverse=spec.metric.direction == "maximize")


def end_reason(trial: FrozenTrial, trials: list[FrozenTrial] = ()) -> str:
    """Why a trial ended. A dead worker's trial holds no reason (nobody can write to it once the
    heartbeat has failed it): its re-run, which lists it in ``retry_history``, tells."""
    if trial.state == TrialState.COMPLETE:
        return "completed"
    if trial.user_attrs.get("end_reason"):
        return trial.user_attrs["end_reason"]
    rerun = next((t for t in trials if trial.number in t.system_attrs.get("retry_history", ())), None)
    if trial.state == TrialState.FAIL and rerun is not None:
        return f"failed: its worker stopped (no heartbeat); re-run as trial {rerun.number}"
    return trial.state.name.lower()


def classification_tables(attrs: dict[str, Any]) -> list[str]:
    """Markdown for a classifier's trial: per-class precision / recall / F1 (when its ``per_*``
    slices carry them) and the confusion matrix (a ``confusion_matrix`` attribute
    ``{labels, matrix}``, rows the true class, columns the predicted one). Empty otherwise."""
    lines: list[str] = []
    for key, per in attrs.items():
        if (key.startswith("per_") and isinstance(per, dict) and per
                and all(isinstance(v, dict) and {"precision", "recall", "f1"} <= set(v) for v in per.values())):
            lines += ["", f"| {key.removeprefix('per_')} | precision | recall | F1 | n |", "|---|---|---|---|---|"]
            lines += [f"| {name} | {_fmt(v['precision'])} | {_fmt(v['recall'])} | {_fmt(v['f1'])} | {v.get('n', '')} |"
                      for name, v in per.items()]
            break
    confusion = attrs.get("confusion_matrix")
    if isinstance(confusion, dict) and confusion.get("labels") and confusion.get("matrix"):
        labels = confusion["labels"]
        lines += ["", "Confusion matrix: rows are the true class, columns the predicted one.", "",
                  "| true ↓ predicted → | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        lines += [f"| {label} | " + " | ".join(f"**{n}**" if i == j else str(n) for j, n in enumerate(row)) + " |"
                  for i, (label, row) in enumerate(zip(labels, confusion["matrix"]))]
    return lines


# --- notes ------------------------------------------------------------------------------------


def trial_note(spec: StudySpec, trial: FrozenTrial) -> str:
    metric = spec.metric.name
    value = trial.value if trial.value is not None else (
        trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None)
    base = baseline_params(spec)
    lines = [
        f"### Trial {trial.number}: {end_reason(trial)}",
        "",
        f"{metric} **{_fmt(value)}** (validation, {trial.user_attrs.get('n_items', '?')} items) · "
        f"training time {duration(seconds(trial))} · device {trial.user_attrs.get('device', '?')} "
        f"({trial.user_attrs.get('mixed_precision_used', '?')})"
        + (f" · known config `{trial.user_attrs['known_config']}`" if trial.user_attrs.get("known_config") else "")
        + (f" · re-run of trial {trial.system_attrs['failed_trial']}, whose worker stopped"
           if "failed_trial" in trial.system_attrs else ""),
        "",
        "| parameter | value | baseline config |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v)} | {_fmt(base.get(k, '—'))} |" for k, v in trial.params.items()]
    per = slices(trial.user_attrs, metric)
    if per:
        lines += ["", f"| slice | {metric} | baseline |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(v)} | {_fmt(spec.baseline.slices.get(k, '—'))} |" for k, v in per.items()]
    lines += classification_tables(trial.user_attrs)
    epochs = trial.user_attrs.get("epochs") or []
    if epochs and any("step" in e for e in epochs):  # evaluated every N optimizer steps
        lines += ["", "| step | epoch | train loss | " + metric + " | seconds |", "|---|---|---|---|---|"]
        lines += [f"| {e.get('step', '')} | {e['epoch']} | {e['train_loss']} | {_fmt(e['value'])} | {e['seconds']} |"
                  for e in epochs]
    elif epochs:
        lines += ["", "| epoch | train loss | " + metric + " | seconds |", "|---|---|---|---|"]
        lines += [f"| {e['epoch']} | {e['train_loss']} | {_fmt(e['value'])} | {e['seconds']} |" for e in epochs]
    signs = trial.user_attrs.get("warning_signs")
    if signs:  # the engine's step log: loss spikes and exploding gradient norms (seed guide 002)
        lines += ["", f"**Warning signs**: {describe(signs)} (rule: {signs['rule']})"]
    if trial.user_attrs.get("world_size", 1) > 1:
        lines += ["", f"Trained data-parallel on {trial.user_attrs['world_size']} "
                  f"{'GPUs' if trial.user_attrs.get('device') == 'cuda' else 'CPU processes'}; seconds are wall time."]
    return "\n".join(lines) + "\n"


def study_note(study: optuna.Study, spec: StudySpec) -> str:
    metric = spec.metric.name
    trials = study.get_trials(deepcopy=False)
    top = ranked(study, spec)
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    spent = sum(seconds(t) for t in trials if t.state.is_finished())
    device = "GPU" if any(t.user_attrs.get("device") == "cuda" for t in trials) else "CPU"
    lines = [f"## {study.study_name}: {metric}, {spec.metric.direction}", ""]
    if top:
        best = top[0]
        gap = best.value - spec.target.value
        verdict = "**target reached**" if spec.reached(best.value) else f"target not reached (gap {gap:+.4f})"
        lines += [f"Best **{best.value:.4f}** (validation, trial {best.number}): {verdict}.", ""]
    else:
        lines += ["No completed trial yet.", ""]
    lines += [f"| | {metric} | what it is |", "|---|---|---|",
              f"| target | {spec.target.value:.4f} | {spec.target.source} |",
              f"| baseline | {spec.baseline.value:.4f} | {spec.baseline.source} |"]
    lines += [f"| {line.name} | {line.value:.4f} | {line.source} |" for line in same_metric_references(spec)]
    if top:
        lines.append(f"| best, validation (search) | {top[0].value:.4f} | trial {top[0].number}, "
                     f"{top[0].user_attrs.get('n_items', '?')} validation items; selected on it, so optimistic |")
    for number, c in sorted(study.user_attrs.get(CONFIRMED_ATTR, {}).items(), key=lambda kv: -kv[1]["mean"]):
        lines.append(f"| confirmed, test (trial {number}) | {c['mean']:.4f} ± {c['std']:.4f} | "
                     f"{c['what']} |")
    other = [line for line in spec.references if line not in same_metric_references(spec)]
    if other:
        lines += ["", "| other figure | goal | best trial | what it is |", "|---|---|---|---|"]
        for line in other:
            measured = top[0].user_attrs.get(line.metric) if top else None
            lines.append(f"| {line.metric} ({line.name}) | {line.value:.4g} | {_fmt(measured)} | {line.source} |")
    base = baseline_params(spec)
    if top:
        per_names = list(slices(top[0].user_attrs, metric))
        lines += ["", f"### Top {min(TOP, len(top))} configurations (validation)", "",
                  f"| trial | {metric} | differs from the baseline config | " + " | ".join(per_names) + " |",
                  "|---|---|---|" + "---|" * len(per_names)]
        for t in top[:TOP]:
            diff = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items() if base.get(k) != v) or "(the baseline config)"
            per = slices(t.user_attrs, metric)
            lines.append(f"| {t.number} | {t.value:.4f} | {diff} | " + " | ".join(_fmt(per.get(n)) for n in per_names) + " |")
        tables = classification_tables(top[0].user_attrs)
        if tables:
            lines += ["", f"### Best trial {top[0].number} per class (validation)", *tables]
    lines += scaling.note_lines(trials)
    failed = [t for t in trials if t.state == TrialState.FAIL][-TOP:]
    if failed:
        lines += ["", "### Failed trials (latest)", "", "| trial | why |", "|---|---|"]
        lines += [f"| {t.number} | {end_reason(t, trials)} |" for t in failed]
    lines += ["", f"**Trials**: {counts[TrialState.COMPLETE]} completed, {counts[TrialState.PRUNED]} pruned, "
              f"{counts[TrialState.FAIL]} failed; {device} time spent {duration(spent)}.", "",
              f"**Export the winner**: `search export --study {study.study_name} -o best.yaml`"]
    return "\n".join(lines) + "\n"


# --- plots ------------------------------------------------------------------------------------


def _reference_lines(fig: go.Figure, spec: StudySpec) -> None:
    fig.add_hline(y=spec.target.value, line_dash="dash", line_color="green",
                  annotation_text=f"target {spec.target.value:g}", annotation_position="top left")
    fig.add_hline(y=spec.baseline.value, line_dash="dot", line_color="gray",
                  annotation_text=f"baseline {spec.baseline.value:g}", annotation_position="bottom left")
    for line in same_metric_references(spec):
        fig.add_hline(y=line.value, line_dash="dashdot", line_color="steelblue",
                      annotation_text=f"{line.name} {line.value:g}", annotation_position="top right")


def same_metric_references(spec: StudySpec) -> list[Any]:
    return [line for line in spec.references if line.metric in (None, spec.metric.name)]


def _best_so_far(spec: StudySpec, values: list[float]) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out or spec.better(v, out[-1]) else out[-1])
    return out


def figures(study: optuna.Study, spec: StudySpec) -> dict[str, go.Figure]:
    metric = spec.metric.name
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    figs: dict[str, go.Figure] = {}

    fig = go.Figure()
    fig.add_scatter(x=[t.number for t in done], y=[t.value for t in done], mode="markers", name="trial (validation)")
    fig.add_scatter(x=[t.number for t in done], y=_best_so_far(spec, [t.value for t in done]),
                    mode="lines", line_shape="hv", name="best so far")
    _reference_lines(fig, spec)
    fig.update_layout(title=f"Best {metric} so far against target and baseline", xaxis_title="trial",
                      yaxis_title=f"{metric} (validation)")
    figs["best-so-far"] = fig

    finished = sorted((t for t in trials if t.state.is_finished() and t.datetime_complete), key=lambda t: t.datetime_complete)
    hours, spent, best_line = [], 0.0, []
    best: float | None = None
    for t in finished:
        spent += seconds(t) / 3600
        if t.state == TrialState.COMPLETE and (best is None or spec.better(t.value, best)):
            best = t.value
        if best is not None:
            hours.append(spent)
            best_line.append(best)
    fig = go.Figure(go.Scatter(x=hours, y=best_line, mode="lines+markers", line_shape="hv", name="best so far"))
    _reference_lines(fig, spec)
    fig.update_layout(title=f"Best {metric} against cumulative training time (all finished trials)",
                      xaxis_title="training time spent (hours)", yaxis_title=f"{metric} (validation)")
    figs["best-vs-training-time"] = fig

    fig = go.Figure()
    if done:
        top = ranked(study, spec)[0]
        per = slices(top.user_attrs, metric)
        fig.add_bar(x=list(per), y=[v if v is not None else 0 for v in per.values()],
                    name=f"best trial {top.number} (validation)")
        if spec.baseline.slices:
            fig.add_bar(x=list(spec.baseline.slices), y=list(spec.baseline.slices.values()), name="baseline")
    fig.add_hline(y=spec.target.value, line_dash="dash", line_color="green", annotation_text=f"target {spec.target.value:g}")
    fig.update_layout(title=f"Best trial's {metric} per slice against the baseline's", barmode="group",
                      yaxis_title=metric)
    figs["slices"] = fig

    fig = go.Figure()
    for state, color in ((TrialState.COMPLETE, "seagreen"), (TrialState.PRUNED, "orange"), (TrialState.FAIL, "crimson")):
        reached = [len(t.intermediate_values) for t in trials if t.state == state]
        if reached:
            fig.add_histogram(x=reached, name=state.name.lower(), marker_color=color, xbins={"size": 1})
    fig.update_layout(title="Where trials stopped", barmode="stack", xaxis_title="epochs reached",
                      yaxis_title="trials")
    figs["stopped"] = fig

    confirmed = study.user_attrs.get(CONFIRMED_ATTR, {})
    if confirmed:
        names = sorted(confirmed, key=lambda n: -confirmed[n]["mean"])
        fig = go.Figure(go.Bar(x=[f"trial {n}" for n in names], y=[confirmed[n]["mean"] for n in names],
                               error_y={"type": "data", "array": [confirmed[n]["std"] for n in names]},
                               name="confirmed (test, mean ± sd over seeds)"))
        _reference_lines(fig, spec)
        fig.update_layout(title=f"Confirmed {metric} on held-out test items", yaxis_title=f"{metric} (test)")
        figs["confirmed"] = fig
    return figs


# --- writing ----------------------------------------------------------------------------------


def write_trial_note(study: optuna.Study, spec: StudySpec, trial: FrozenTrial) -> None:
    # Only the worker that ran the trial writes its note: no concurrent writers.
    save_note(optuna.trial.Trial(study, trial._trial_id), trial_note(spec, trial))


def refresh_study(study: optuna.Study, spec: StudySpec, storage: optuna.storages.BaseStorage) -> None:
    """Re-render the study note and plots from the current state, under the study lock."""
    with storage.study_lock(study.study_name):
        note = study_note(study, spec)
        if get_note(study) != note:
            save_note(study, note)
        study_id = storage.get_study_id_from_name(study.study_name)
        attrs = storage.get_study_system_attrs(study_id)
        for key, fig in figures(study, spec).items():
            digest = hashlib.sha256(fig.to_json().encode()).hexdigest()
            if attrs.get(_DIGEST + key) != digest:  # unchanged plots are not rewritten
                save_plotly_graph_object(study, fig, graph_object_id=key)
                storage.set_study_system_attr(study_id, _DIGEST + key, digest)


def plot_ids(storage: optuna.storages.BaseStorage, study_name: str) -> list[str]:
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(study_name))
    return sorted(k.removeprefix(_DIGEST) for k in attrs if k.startswith(_DIGEST))


def dashboard_callback(spec: StudySpec, storage: optuna.storages.BaseStorage):
    """An ``optimize`` callback: the trial's note, then the study's note and plots."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        write_trial_note(study, spec, trial)
        refresh_study(study, spec, storage)

    return callback


__all__ = ["CONFIRMED_ATTR", "dashboard_callback", "figures", "plot_ids", "refresh_study", "study_note", "trial_note"]

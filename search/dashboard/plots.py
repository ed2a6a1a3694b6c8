"""The dashboard's plots: the search against target and baseline, slices, where trials stopped,
confirmed figures. Rendered from the study's current state (``search/dashboard/refresh.py``)."""

from __future__ import annotations

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from objectives.attributes import StudyAttr
from search.dashboard.notes import same_metric_references
from search.summary import ranked, seconds, slices
from search.spec import StudySpec

PLOTS = ("best-so-far", "best-vs-training-time", "slices", "stopped", "confirmed")



def _reference_lines(fig: go.Figure, spec: StudySpec) -> None:
    fig.add_hline(y=spec.target.value, line_dash="dash", line_color="green",
                  annotation_text=f"target {spec.target.value:g}", annotation_position="top left")
    fig.add_hline(y=spec.baseline.value, line_dash="dot", line_color="gray",
                  annotation_text=f"baseline {spec.baseline.value:g}", annotation_position="bottom left")
    for line in same_metric_references(spec):
        fig.add_hline(y=line.value, line_dash="dashdot", line_color="steelblue",
                      annotation_text=f"{line.name} {line.value:g}", annotation_position="top right")



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

    confirmed = study.user_attrs.get(StudyAttr.CONFIRMED, {})
    if confirmed:
        names = sorted(confirmed, key=lambda n: -confirmed[n]["mean"])
        fig = go.Figure(go.Bar(x=[f"trial {n}" for n in names], y=[confirmed[n]["mean"] for n in names],
                               error_y={"type": "data", "array": [confirmed[n]["std"] for n in names]},
                               name="confirmed (test, mean ± sd over seeds)"))
        _reference_lines(fig, spec)
        fig.update_layout(title=f"Confirmed {metric} on held-out test items", yaxis_title=f"{metric} (test)")
        figs["confirmed"] = fig
    return figs

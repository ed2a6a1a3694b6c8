"""What a study holds, read the same way by status, export, confirmation and the dashboard:
state counts, the ranking, the best trial, what a trial ran with, its per-slice figures, why it ended."""

from __future__ import annotations

import collections
from datetime import timedelta
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.attributes import TrialAttr, TrialSystemAttr
from search.spec import StudySpec

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts = collections.Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {state: counts.get(state, 0) for state in STATES}


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def ranked(study: optuna.Study, spec: StudySpec) -> list[FrozenTrial]:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: t.value, reverse=spec.metric.direction == "maximize")


def trial_params(spec: StudySpec, trial: FrozenTrial) -> dict[str, Any]:
    """Every parameter ``trial`` ran with, as the worker recorded it when the trial started; a
    trial from before that record: resolved now from the study's spec."""
    recorded = trial.user_attrs.get(TrialAttr.PARAMS)
    return dict(recorded) if isinstance(recorded, dict) else spec.params(trial.params)


def baseline_params(spec: StudySpec) -> dict[str, Any]:
    for config in spec.known_configs:
        if config.name == "baseline":
            return config.params
    return {}


def slice_attr(attrs: dict[str, Any]) -> tuple[str, dict[str, dict[str, Any]]] | None:
    """The first per-slice attribute of a trial (``per_query_type``, ``per_genre``, ...) and its
    {slice: {metric..., n}} mapping; None when the trial has none."""
    for key, per in attrs.items():
        if key.startswith(TrialAttr.SLICE_PREFIX) and isinstance(per, dict) and per and all(isinstance(v, dict) for v in per.values()):
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


def end_reason(trial: FrozenTrial, trials: list[FrozenTrial] = ()) -> str:
    """Why a trial ended. A dead worker's trial holds no reason (nobody can write to it once the
    heartbeat has failed it): its re-run, which lists it in ``retry_history``, tells."""
    if trial.state == TrialState.COMPLETE:
        return "completed"
    if trial.user_attrs.get(TrialAttr.END_REASON):
        return trial.user_attrs[TrialAttr.END_REASON]
    rerun = next((t for t in trials if trial.number in t.system_attrs.get(TrialSystemAttr.RETRY_HISTORY, ())), None)
    if trial.state == TrialState.FAIL and rerun is not None:
        return f"failed: its worker stopped (no heartbeat); re-run as trial {rerun.number}"
    return trial.state.name.lower()

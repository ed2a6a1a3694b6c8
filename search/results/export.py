"""What a study has found: state counts, the best trial, and the winner as a runnable config."""

from __future__ import annotations

import collections
from typing import Any

import optuna

from search.dashboard.report import CONFIRMED_ATTR, ranked
from search.spec import StudySpec

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts = collections.Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {state: counts.get(state, 0) for state in STATES}


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def rerun_command(path: str) -> str:
    return f"search run --config {path}"


def export_top(study: optuna.Study, spec: StudySpec, path: str, top: int = 1) -> dict[str, Any]:
    """The best configuration at the top level (what ``search run`` runs), the next ``top - 1``
    under ``others`` (``search run --rank N``)."""
    best, *rest = ranked(study, spec)[:top]
    record = export_config(study, spec, best, path)
    if rest:
        record["others"] = [export_config(study, spec, t, path) for t in rest]
        for rank, other in enumerate(record["others"], start=2):
            other["rerun"] = f"{rerun_command(path)} --rank {rank}"
    return record


def export_config(study: optuna.Study, spec: StudySpec, trial: optuna.trial.FrozenTrial, path: str) -> dict[str, Any]:
    """A complete, self-contained record: running it needs no study (``search run --config``)."""
    value = float(trial.value)
    return {
        "study": study.study_name,
        "objective": spec.objective,
        "trial": trial.number,
        "known_config": trial.user_attrs.get("known_config"),
        "metric": {
            "name": spec.metric.name,
            "direction": spec.metric.direction,
            "value": value,
            "split": trial.user_attrs.get("split", "validation"),
            "n_items": trial.user_attrs.get("n_items"),
        },
        "target": {"value": spec.target.value, "reached": spec.reached(value), "source": spec.target.source},
        "baseline": {"value": spec.baseline.value, "source": spec.baseline.source},
        "references": [line.model_dump(exclude_none=True) for line in spec.references],
        "slices": {k: v for k, v in trial.user_attrs.items() if k.startswith("per_")},
        "confirmed": study.user_attrs.get(CONFIRMED_ATTR, {}).get(str(trial.number)),
        "params": spec.params(trial.params),
        "tuned": sorted(trial.params),
        "rerun": rerun_command(path),
    }

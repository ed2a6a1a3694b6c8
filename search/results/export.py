"""The winner (and the runners-up) as a complete, runnable config: what ``search run`` reads."""

from __future__ import annotations

from typing import Any

import optuna

from objectives.attributes import StudyAttr, TrialAttr
from search.summary import ranked, trial_params
from search.spec import StudySpec


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
        "known_config": trial.user_attrs.get(TrialAttr.KNOWN_CONFIG),
        "metric": {
            "name": spec.metric.name,
            "direction": spec.metric.direction,
            "value": value,
            "split": trial.user_attrs.get(TrialAttr.SPLIT, "validation"),
            "n_items": trial.user_attrs.get(TrialAttr.N_ITEMS),
        },
        "target": {"value": spec.target.value, "reached": spec.reached(value), "source": spec.target.source},
        "baseline": {"value": spec.baseline.value, "source": spec.baseline.source},
        "references": [line.model_dump(exclude_none=True) for line in spec.references],
        "slices": {k: v for k, v in trial.user_attrs.items() if k.startswith(TrialAttr.SLICE_PREFIX)},
        "confirmed": study.user_attrs.get(StudyAttr.CONFIRMED, {}).get(str(trial.number)),
        "params": trial_params(spec, trial),  # what it ran with, recorded on the trial
        "tuned": sorted(trial.params),
        "rerun": rerun_command(path),
    }

"""What ``search status`` and ``search studies`` report, as plain data.

These dicts are what ``--format json`` prints and what the tables are drawn from. Their shapes
are documented in the commands' help and in README (CLI section): add keys freely, but rename or
remove one only as a deliberate, announced change. Figures are numbers (never formatted
strings), absent ones null; timestamps ISO 8601 in UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import optuna

from objectives import SetupError
from objectives.attributes import StudyAttr, TrialAttr
from search.spec import SpecError, StudySpec, available_specs, load_spec


def status_record(study: optuna.Study, spec: StudySpec, where: str) -> dict[str, Any]:
    """A study at a glance: trials by state, the best trial against the target, the baseline
    and the spec's reference figures."""
    from search.summary import best_trial, state_counts, trial_params

    best = best_trial(study)
    return {
        "study": study.study_name,
        "storage": where,
        "objective": spec.objective,
        "metric": {"name": spec.metric.name, "direction": spec.metric.direction},
        "trials": {state.lower(): n for state, n in state_counts(study).items()},
        "best": None if best is None else {
            "number": best.number,
            "value": float(best.value),
            "split": best.user_attrs.get(TrialAttr.SPLIT, "validation"),
            "n_items": best.user_attrs.get(TrialAttr.N_ITEMS),
            "reached": spec.reached(best.value),
            "known_config": best.user_attrs.get(TrialAttr.KNOWN_CONFIG),
            "params": trial_params(spec, best),
            "tuned": sorted(best.params),
            "slices": {k: v for k, v in best.user_attrs.items() if k.startswith(TrialAttr.SLICE_PREFIX)},
        },
        "target": {"value": spec.target.value, "source": spec.target.source, "beat_baseline": bool(spec.target.beat)},
        "baseline": {"value": spec.baseline.value, "source": spec.baseline.source},
        "references": [_reference(line, spec, best) for line in spec.references],
    }


def _reference(line: Any, spec: StudySpec, best: optuna.trial.FrozenTrial | None) -> dict[str, Any]:
    """A reference figure, and the best trial's figure of the same metric (None: not measured)."""
    metric = line.metric or spec.metric.name
    if best is None:
        measured = None
    elif metric == spec.metric.name:
        measured = float(best.value)
    else:
        measured = best.user_attrs.get(metric)
    return {"name": line.name, "metric": metric, "value": line.value, "source": line.source, "best": measured}


def spec_summaries() -> list[dict[str, Any]]:
    """Every spec in spaces/: what it optimises and against what; an invalid one with its error."""
    out = []
    for name in available_specs():
        try:
            s = load_spec(name)
        except (SpecError, SetupError) as e:
            out.append({"spec": name, "error": str(e)})
            continue
        out.append({
            "spec": name,
            "objective": s.objective,
            "metric": {"name": s.metric.name, "direction": s.metric.direction},
            "target": {"value": s.target.value, "beat_baseline": bool(s.target.beat)},
            "baseline": {"value": s.baseline.value, "computed": s.baseline.computed},
            "searched": list(s.space),
        })
    return out


def study_summaries(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """Every study in the storage: its trial counts, best value, target and when it started."""
    out = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
        recorded = summary.user_attrs.get(StudyAttr.SPEC) or {}
        target = recorded.get("target", {}).get("value")
        if recorded.get("target", {}).get("beat"):
            target = (summary.user_attrs.get(StudyAttr.BASELINE) or recorded.get("baseline", {})).get("value")
        study_id = storage.get_study_id_from_name(summary.study_name)
        complete = storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        out.append({
            "study": summary.study_name,
            "metric": recorded.get("metric"),
            "trials": summary.n_trials,
            "complete": len(complete),
            "best": float(summary.best_trial.value) if summary.best_trial else None,
            "target": target,
            "created": _utc(summary.datetime_start),
        })
    return out


def _utc(moment: datetime | None) -> str | None:
    """Optuna's naive timestamps, which every worker writes in UTC (``main`` sets TZ), in ISO 8601."""
    if moment is None:
        return None
    return moment.replace(tzinfo=moment.tzinfo or timezone.utc).isoformat(timespec="seconds")

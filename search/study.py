"""Build an Optuna study from a spec, or join the one that exists, refusing a different spec."""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

import optuna

from objectives.attributes import StudyAttr, TrialAttr
from search.spec import SpecError, StudySpec, check_study_name, validate


class StudyNotFound(Exception):
    pass


def build_study(spec: StudySpec, storage: optuna.storages.BaseStorage, *, name: str | None = None,
                wait_seconds: float = 60.0) -> tuple[optuna.Study, bool]:
    """Create the study on first use, else load it; returns (study, created_here).

    Creation is atomic in the storage: of many workers starting at once, one creates the study,
    records the spec and the objective's defaults and enqueues the known configurations; the
    others wait for it to be ready. The sampler and pruner are not stored by Optuna: every worker
    builds them from the spec. The spec returned fills in the study's recorded defaults and
    baseline (``as_recorded``).
    """
    name = check_study_name(name) if name else spec.name  # checked before anything is stored
    kwargs = dict(study_name=name, storage=storage, sampler=spec.build_sampler(), pruner=spec.build_pruner())
    # A computed baseline is measured before the study exists: if it fails, nothing is stored.
    baseline = compute_baseline(spec) if spec.baseline.computed and not _exists(storage, name) else None
    try:
        study = optuna.create_study(direction=spec.metric.direction, **kwargs)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kwargs)
        _wait_ready(study, wait_seconds)
        check_same_spec(study, spec)
        return study, False
    with warnings.catch_warnings():  # experimental in Optuna, and what we want: no warning on stderr
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([spec.metric.name])
    study.set_user_attr(StudyAttr.SPEC, spec.as_dict())
    study.set_user_attr(StudyAttr.DEFAULTS, _plain(spec.defaults()))
    if baseline is not None:
        study.set_user_attr(StudyAttr.BASELINE, baseline)
    for config in spec.known_configs:
        study.enqueue_trial(config.params, user_attrs={TrialAttr.KNOWN_CONFIG: config.name}, skip_if_exists=True)
    study.set_user_attr(StudyAttr.READY, True)
    return study, True


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """As stored (JSON): tuples become lists, so a re-read compares equal."""
    return json.loads(json.dumps(params, default=str))


def _exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
        return True
    except KeyError:
        return False


def compute_baseline(spec: StudySpec) -> dict[str, Any]:
    """The objective's own baseline on the study's data (its fixed parameters), as stored."""
    measured = spec.objective_module.compute_baseline(spec.params({}))
    detail = measured.get("detail")
    return {"value": float(measured["value"]), "slices": dict(measured.get("slices", {})),
            "source": f"{spec.baseline.source} ({detail})" if detail else spec.baseline.source}


def as_recorded(spec: StudySpec, study: optuna.Study) -> StudySpec:
    """The spec as its study holds it: the objective defaults recorded when the study was created
    (a study from before they were recorded: today's) and a computed baseline filled in."""
    attrs = study.user_attrs
    if attrs.get(StudyAttr.DEFAULTS) is not None:
        spec = spec.with_defaults(attrs[StudyAttr.DEFAULTS])
    if not spec.baseline.computed:
        return spec
    stored = attrs.get(StudyAttr.BASELINE)
    if stored is None:
        raise SpecError(f"study {study.study_name!r} has a computed baseline but none was recorded")
    return spec.with_baseline(stored["value"], stored["source"], stored["slices"])


def _wait_ready(study: optuna.Study, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while not study.user_attrs.get(StudyAttr.READY):
        if time.monotonic() > deadline:
            raise SpecError(f"study {study.study_name!r} exists but its creator never recorded a spec "
                            "(it was not created by `search worker`, or its creator died while creating it)")
        time.sleep(0.2)


def recorded_spec(study: optuna.Study) -> StudySpec:
    data = study.user_attrs.get(StudyAttr.SPEC)
    if data is None:
        raise SpecError(f"study {study.study_name!r} has no recorded spec (it was not created by `search worker`)")
    return as_recorded(validate(data, f"spec recorded on study {study.study_name!r}", recorded=True), study)


def check_same_spec(study: optuna.Study, spec: StudySpec) -> None:
    recorded = study.user_attrs.get(StudyAttr.SPEC, {})
    differences = spec_diff(recorded, spec.as_dict())
    if differences:
        shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
        raise SpecError(f"study {study.study_name!r} was created with a different spec: {shown} "
                        "(use the spec and --set it was created with, or another --name)")


def spec_diff(recorded: Any, here: Any, path: str = "") -> list[str]:
    """Human-readable differences 'key: study X, here Y' between two spec dicts."""
    if isinstance(recorded, dict) and isinstance(here, dict):
        out = []
        for key in sorted(set(recorded) | set(here), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in here:
                out.append(f"{sub}: study has {recorded[key]!r}, here absent")
            elif key not in recorded:
                out.append(f"{sub}: study lacks it, here {here[key]!r}")
            else:
                out.extend(spec_diff(recorded[key], here[key], sub))
        return out
    if isinstance(recorded, list) and isinstance(here, list) and len(recorded) == len(here):
        return [d for i, (a, b) in enumerate(zip(recorded, here)) for d in spec_diff(a, b, f"{path}.{i}")]
    return [] if recorded == here else [f"{path}: study {recorded!r}, here {here!r}"]


def made_from_spec(spec_name: str, storage: optuna.storages.BaseStorage) -> list[str]:
    """The stored studies created from the spec named ``spec_name`` (under any ``--name``)."""
    found = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        recorded = summary.user_attrs.get(StudyAttr.SPEC)
        if isinstance(recorded, dict) and recorded.get("name") == spec_name:
            found.append(summary.study_name)
    return found


def load_study(name: str, storage: optuna.storages.BaseStorage, where: str, *,
               by_spec: bool = False) -> tuple[optuna.Study, StudySpec]:
    """An existing study and the spec it was created with. ``by_spec``: when no study has that
    name but exactly one was made from the spec of that name (``search worker --study recipe-mpr
    --name recipe-mpr-demo``), that one."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        made = made_from_spec(name, storage)
        if by_spec and len(made) == 1:
            return load_study(made[0], storage, where)
        if made:
            raise StudyNotFound(f"no study {name!r} in {where}; made from the spec {name!r}: {', '.join(made)} "
                                f"(give one of them to --study)") from None
        known = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
        raise StudyNotFound(f"no study {name!r} in {where} (studies there: {known or 'none'})") from None
    spec = recorded_spec(study)
    # Rebuild sampler and pruner from the recorded spec (Optuna does not store them).
    study = optuna.load_study(study_name=name, storage=storage, sampler=spec.build_sampler(), pruner=spec.build_pruner())
    return study, spec



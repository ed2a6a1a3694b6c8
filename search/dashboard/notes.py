"""The dashboard's notes: the study's against target and baseline, and one per trial.

Rendered from the study's current state (``search/dashboard/refresh.py`` writes them).
Validation figures (the search) and confirmed figures (held-out test, from ``search confirm``)
are labelled as such everywhere.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.attributes import StudyAttr, TrialAttr, TrialSystemAttr
from objectives.engine.steplog import describe
from search.dashboard import scaling
from search.summary import baseline_params, duration, end_reason, ranked, seconds, slices
from search.spec import Line, StudySpec

TOP = 5



def _fmt(value: Any) -> str:
    if value is None:
        return "absent"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)



def same_metric_references(spec: StudySpec) -> list[Line]:
    return [line for line in spec.references if line.metric in (None, spec.metric.name)]



def classification_tables(attrs: dict[str, Any]) -> list[str]:
    """Markdown for a classifier's trial: per-class precision / recall / F1 (when its ``per_*``
    slices carry them) and the confusion matrix (a ``confusion_matrix`` attribute
    ``{labels, matrix}``, rows the true class, columns the predicted one). Empty otherwise."""
    lines: list[str] = []
    for key, per in attrs.items():
        if (key.startswith(TrialAttr.SLICE_PREFIX) and isinstance(per, dict) and per
                and all(isinstance(v, dict) and {"precision", "recall", "f1"} <= set(v) for v in per.values())):
            lines += ["", f"| {key.removeprefix('per_')} | precision | recall | F1 | n |", "|---|---|---|---|---|"]
            lines += [f"| {name} | {_fmt(v['precision'])} | {_fmt(v['recall'])} | {_fmt(v['f1'])} | {v.get('n', '')} |"
                      for name, v in per.items()]
            break
    confusion = attrs.get(TrialAttr.CONFUSION_MATRIX)
    if isinstance(confusion, dict) and confusion.get("labels") and confusion.get("matrix"):
        labels = confusion["labels"]
        lines += ["", "Confusion matrix: rows are the true class, columns the predicted one.", "",
                  "| true ↓ predicted → | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        lines += [f"| {label} | " + " | ".join(f"**{n}**" if i == j else str(n) for j, n in enumerate(row)) + " |"
                  for i, (label, row) in enumerate(zip(labels, confusion["matrix"]))]
    return lines



def trial_note(spec: StudySpec, trial: FrozenTrial) -> str:
    metric = spec.metric.name
    value = trial.value if trial.value is not None else (
        trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None)
    base = baseline_params(spec)
    lines = [
        f"### Trial {trial.number}: {end_reason(trial)}",
        "",
        f"{metric} **{_fmt(value)}** (validation, {trial.user_attrs.get(TrialAttr.N_ITEMS, '?')} items) · "
        f"training time {duration(seconds(trial))} · device {trial.user_attrs.get(TrialAttr.DEVICE, '?')} "
        f"({trial.user_attrs.get(TrialAttr.MIXED_PRECISION, '?')})"
        + (f" · known config `{trial.user_attrs[TrialAttr.KNOWN_CONFIG]}`" if trial.user_attrs.get(TrialAttr.KNOWN_CONFIG) else "")
        + (f" · re-run of trial {trial.system_attrs[TrialSystemAttr.FAILED_TRIAL]}, whose worker stopped"
           if TrialSystemAttr.FAILED_TRIAL in trial.system_attrs else ""),
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
    epochs = trial.user_attrs.get(TrialAttr.EPOCHS) or []
    if epochs and any("step" in e for e in epochs):  # evaluated every N optimizer steps
        lines += ["", "| step | epoch | train loss | " + metric + " | seconds |", "|---|---|---|---|---|"]
        lines += [f"| {e.get('step', '')} | {e['epoch']} | {e['train_loss']} | {_fmt(e['value'])} | {e['seconds']} |"
                  for e in epochs]
    elif epochs:
        lines += ["", "| epoch | train loss | " + metric + " | seconds |", "|---|---|---|---|"]
        lines += [f"| {e['epoch']} | {e['train_loss']} | {_fmt(e['value'])} | {e['seconds']} |" for e in epochs]
    signs = trial.user_attrs.get(TrialAttr.WARNING_SIGNS)
    if signs:  # the engine's step log: loss spikes and exploding gradient norms (seed guide 002)
        lines += ["", f"**Warning signs**: {describe(signs)} (rule: {signs['rule']})"]
    if trial.user_attrs.get(TrialAttr.WORLD_SIZE, 1) > 1:
        lines += ["", f"Trained data-parallel on {trial.user_attrs[TrialAttr.WORLD_SIZE]} "
                  f"{'GPUs' if trial.user_attrs.get(TrialAttr.DEVICE) == 'cuda' else 'CPU processes'}; seconds are wall time."]
    return "\n".join(lines) + "\n"



def study_note(study: optuna.Study, spec: StudySpec) -> str:
    metric = spec.metric.name
    trials = study.get_trials(deepcopy=False)
    top = ranked(study, spec)
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    spent = sum(seconds(t) for t in trials if t.state.is_finished())
    device = "GPU" if any(t.user_attrs.get(TrialAttr.DEVICE) == "cuda" for t in trials) else "CPU"
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
                     f"{top[0].user_attrs.get(TrialAttr.N_ITEMS, '?')} validation items; selected on it, so optimistic |")
    for number, c in sorted(study.user_attrs.get(StudyAttr.CONFIRMED, {}).items(), key=lambda kv: -kv[1]["mean"]):
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

"""Multi-GPU speed-up: a trial's time per epoch against 1-GPU trials of the same configuration.

Every trial records its epochs (``seconds`` each) and, when it trained data-parallel, its
``world_size``. Trials with the same parameters trained on 1 and on G GPUs give the speed-up
(mean seconds per epoch on 1 GPU / on G) and the efficiency (speed-up / G): the figures the
AG News seed guide claims (3.0x, 75 % on 4 GPUs). Per-device batch semantics as in HF and the
seed (32 per GPU): on G GPUs an epoch takes 1/G of the optimizer steps, each on G times the
batch, so the configurations train on the same data but not identically.
"""

from __future__ import annotations

import statistics
from typing import Any

from optuna.trial import FrozenTrial

from objectives.attributes import TrialAttr


def _seconds_per_epoch(trial: FrozenTrial) -> list[float]:
    return [e["seconds"] for e in trial.user_attrs.get(TrialAttr.EPOCHS) or [] if e.get("seconds")]


def speedups(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """One row per (configuration, G > 1) that also ran on 1 GPU: seconds per epoch, speed-up, efficiency."""
    by_config: dict[str, dict[int, list[float]]] = {}
    numbers: dict[str, dict[int, list[int]]] = {}
    for t in trials:
        epochs = _seconds_per_epoch(t)
        if not epochs:
            continue
        key = repr(sorted(t.params.items()))
        world = int(t.user_attrs.get(TrialAttr.WORLD_SIZE, 1))
        by_config.setdefault(key, {}).setdefault(world, []).extend(epochs)
        numbers.setdefault(key, {}).setdefault(world, []).append(t.number)
    rows = []
    for key, worlds in by_config.items():
        if 1 not in worlds:
            continue
        single = statistics.fmean(worlds[1])
        for world in sorted(w for w in worlds if w > 1):
            multi = statistics.fmean(worlds[world])
            speedup = single / multi
            rows.append({"trials_1": numbers[key][1], "trials_g": numbers[key][world], "gpus": world,
                         "seconds_1": single, "seconds_g": multi, "speedup": speedup, "efficiency": speedup / world})
    return rows


def note_lines(trials: list[FrozenTrial]) -> list[str]:
    """The study note's section on multi-GPU trials (nothing when no trial trained data-parallel)."""
    if not any(int(t.user_attrs.get(TrialAttr.WORLD_SIZE, 1)) > 1 for t in trials):
        return []
    lines = ["", "### Multi-GPU speed-up (seconds per epoch against 1-GPU trials of the same configuration)", ""]
    rows = speedups(trials)
    if not rows:
        return lines + ["No configuration has run on both 1 GPU and several yet (run one with "
                        "`search worker --gpus-per-trial 1`): no speed-up to show."]
    lines += ["| GPUs | trials (1 GPU / G GPUs) | s/epoch, 1 GPU | s/epoch, G GPUs | speed-up | efficiency |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['gpus']} | {', '.join(map(str, r['trials_1']))} / {', '.join(map(str, r['trials_g']))} | "
                     f"{r['seconds_1']:.1f} | {r['seconds_g']:.1f} | {r['speedup']:.2f}x | {r['efficiency']:.0%} |")
    return lines

"""Loss and gradient norm of every optimizer step, and the warning signs read from them.

The values stay on the device while training (writing a 0-d tensor into a preallocated buffer
needs no host sync) and are read in bulk at each evaluation. What goes on the trial's record is
compact: at most ``MAX_POINTS`` points per series (the mean loss and the largest gradient norm of
each block of steps), whatever the length of the run.

Warning signs are those of the seed guide (../shared/seeds/002: "Loss Spikes: If >0.3 increase,
reduce LR"; "Gradient Explosion: If grad_norm >3.0, check max_grad_norm"):
- a loss spike: a step's loss above the mean of the ``window`` steps before it by more than
  ``spike_threshold``, or a loss that is not finite;
- an exploding gradient: a gradient norm (before clipping) above ``grad_norm_threshold``.
Consecutive steps with the same sign are reported as one stretch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from objectives.attributes import TrialAttr

MAX_POINTS = 1000  # per series on the trial's record: a few thousand floats in all
MAX_STRETCHES = 20  # warning stretches listed; the counts cover them all


class StepLog:
    """The loop's per-step log (only when ``logging_steps`` > 0): ``add`` each micro-batch's loss,
    ``record`` the step once it is taken, ``attributes`` at each evaluation."""

    def __init__(self, total_steps: int, device: torch.device, *, every: int, spike_threshold: float,
                 window: int, grad_norm_threshold: float) -> None:
        self.loss = torch.full((total_steps,), math.nan, device=device)
        self.grad_norm = torch.full((total_steps,), math.nan, device=device)
        self.every, self.spike_threshold, self.window = every, spike_threshold, window
        self.grad_norm_threshold = grad_norm_threshold
        self._step_loss, self._micro_batches = torch.zeros((), device=device), 0

    def add(self, loss: torch.Tensor) -> None:
        """A micro-batch's loss, toward its optimizer step's mean."""
        self._step_loss += loss.detach()
        self._micro_batches += 1

    def record(self, step: int, grad_norm: torch.Tensor) -> None:
        """``step`` (counting from 1) is taken: its mean loss and gradient norm, kept where they are (no sync)."""
        if step <= len(self.loss):
            self.loss[step - 1] = (self._step_loss / max(self._micro_batches, 1)).float()
            self.grad_norm[step - 1] = grad_norm.detach().float()
        self._step_loss, self._micro_batches = torch.zeros_like(self._step_loss), 0

    def attributes(self, steps: int) -> dict[str, Any]:
        """What goes on the trial after ``steps`` steps: the compact log and its warning signs (one sync)."""
        loss, grad_norm = self.read(steps)
        return {TrialAttr.STEP_LOG: compact(loss, grad_norm, every=self.every),
                TrialAttr.WARNING_SIGNS: warning_signs(loss, grad_norm, spike_threshold=self.spike_threshold,
                                                       window=self.window, grad_norm_threshold=self.grad_norm_threshold)}

    def read(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``steps`` values of each series, on the host (one sync)."""
        both = torch.stack([self.loss[:steps], self.grad_norm[:steps]]).cpu().numpy()
        return both[0], both[1]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss.cpu(), "grad_norm": self.grad_norm.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        n = min(len(self.loss), len(state["loss"]))
        self.loss[:n] = state["loss"][:n].to(self.loss.device)
        self.grad_norm[:n] = state["grad_norm"][:n].to(self.grad_norm.device)


def compact(loss: np.ndarray, grad_norm: np.ndarray, *, every: int = 1) -> dict[str, Any]:
    """The record stored on the trial: one point per ``every`` steps (coarser for long runs)."""
    every = max(every, math.ceil(len(loss) / MAX_POINTS), 1)
    blocks = range(0, len(loss), every)
    with np.errstate(all="ignore"):
        mean_loss = [_rounded(np.nanmean(loss[i:i + every])) for i in blocks]
        max_norm = [_rounded(np.nanmax(grad_norm[i:i + every])) for i in blocks]
    return {"every": every, "steps": len(loss), "loss": mean_loss, "grad_norm": max_norm}


def _rounded(x: float) -> float | None:
    return round(float(x), 4) if math.isfinite(x) else None


def warning_signs(loss: np.ndarray, grad_norm: np.ndarray, *, spike_threshold: float, window: int,
                  grad_norm_threshold: float) -> dict[str, Any]:
    """Stretches of steps that show a loss spike or an exploding gradient, and their counts."""
    spikes = ~np.isfinite(loss)
    if len(loss) > window > 0:
        running = np.convolve(np.nan_to_num(loss), np.ones(window) / window, mode="valid")[:-1]
        rise = loss[window:] - running
        spikes[window:] |= rise > spike_threshold
    exploding = grad_norm > grad_norm_threshold
    stretches = _stretches(spikes, "loss spike", loss) + _stretches(exploding, "gradient norm", grad_norm)
    stretches.sort(key=lambda s: s["first_step"])
    return {"loss_spike_steps": int(spikes.sum()), "exploding_gradient_steps": int(exploding.sum()),
            "rule": f"loss > mean of previous {window} steps + {spike_threshold:g}, or not finite; "
                    f"gradient norm (before clipping) > {grad_norm_threshold:g}",
            "stretches": stretches[:MAX_STRETCHES]}


def _stretches(flags: np.ndarray, sign: str, values: np.ndarray) -> list[dict[str, Any]]:
    out = []
    steps = np.flatnonzero(flags)
    if not len(steps):
        return out
    breaks = np.flatnonzero(np.diff(steps) > 1)
    for first, last in zip(np.r_[0, breaks + 1], np.r_[breaks, len(steps) - 1]):
        a, b = int(steps[first]), int(steps[last])
        with np.errstate(all="ignore"):
            worst = values[a:b + 1]
            peak = np.nanmax(worst) if np.isfinite(worst).any() else math.inf
        out.append({"sign": sign, "first_step": a + 1, "last_step": b + 1, "max": _rounded(peak) if math.isfinite(peak) else "inf"})
    return out


def describe(signs: dict[str, Any]) -> str:
    """One line for notes: 'loss spikes at steps 130-131, 900; gradient norm > 3 at steps 1-12'."""
    if not signs["stretches"]:
        return "none"
    parts: dict[str, list[str]] = {}
    for s in signs["stretches"]:
        span = str(s["first_step"]) if s["first_step"] == s["last_step"] else f"{s['first_step']}-{s['last_step']}"
        parts.setdefault(s["sign"], []).append(f"{span} (max {s['max']})")
    more = len(signs["stretches"]) >= MAX_STRETCHES
    return "; ".join(f"{sign} at steps {', '.join(spans)}" for sign, spans in parts.items()) + (" ..." if more else "")

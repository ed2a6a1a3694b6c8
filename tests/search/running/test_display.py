"""The worker's display in a log (no terminal): a progress line at least every 30 s of training."""

from __future__ import annotations

import io

from rich.console import Console

from search.running.display import QUIET_LIMIT_S, WorkerDisplay, duration
from search.running.events import TrialEvent
from search.spec import load_spec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_a_progress_line_with_the_step_and_eta_during_a_long_epoch():
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, force_terminal=False, width=200)
    with WorkerDisplay(load_spec("recipe-mpr"), console, n_trials=3, clock=clock) as display:
        display(TrialEvent(kind="started", trial=7, params={"learning_rate": 3e-5}))
        for step in range(1, 401):  # 400 steps of 1 s: 13 windows of 30 s
            clock.now += 1.0
            display.on_step(1, step, 400)
        display(TrialEvent(kind="epoch", trial=7, step=1, value=0.5))
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert lines[0].startswith("trial 7 starts (1/3 of this worker): learning_rate=3e-05")
    progress = [line for line in lines if "step " in line]
    assert len(progress) == 400 // int(QUIET_LIMIT_S)
    assert progress[0] == "trial 7 epoch 1: step 30/400, about 6m10s left in this epoch"
    assert progress[-1].startswith("trial 7 epoch 1: step 390/400, about 10s left")
    assert lines[-1].startswith("trial 7 epoch 1: accuracy 0.5000")


def test_a_terminal_gets_the_bar_not_lines():
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, force_terminal=True, width=200)
    with WorkerDisplay(load_spec("recipe-mpr"), console, clock=clock) as display:
        display(TrialEvent(kind="started", trial=0, params={}))
        for step in range(1, 101):
            clock.now += 1.0
            display.on_step(1, step, 100)
    assert "step 30/100" not in out.getvalue()


def test_durations_read_as_a_person_writes_them():
    assert [duration(s) for s in (9.4, 69, 3725)] == ["9s", "1m09s", "1h02m"]

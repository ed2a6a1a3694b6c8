"""Trial events: what one process appends, another reads in order, whole lines only."""

from __future__ import annotations

import subprocess
import sys
import time

from search.running.events import EventFile, TrialEvent, follow


def test_an_event_survives_its_line():
    event = TrialEvent("epoch", 3, step=2, value=0.625)
    assert TrialEvent.from_json(event.to_json()) == event
    started = TrialEvent("started", 0, params={"learning_rate": 1e-4, "num_train_epochs": 3})
    assert TrialEvent.from_json(started.to_json()) == started
    assert TrialEvent.from_json("trial 0 epoch 1: accuracy 0.5") is None  # printed text is no event


def test_events_appended_by_another_process_arrive_in_order(tmp_path):
    path = tmp_path / "events.jsonl"
    code = ("import sys; from search.running.events import EventFile, TrialEvent\n"
            "sink = EventFile(sys.argv[1])\n"
            "for epoch in range(1, 6): sink(TrialEvent('epoch', 7, step=epoch, value=epoch / 10))\n"
            "sink(TrialEvent('complete', 7, value=0.5))\n")
    seen: list[TrialEvent] = []
    with follow(path, seen.append, poll_seconds=0.02):
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert [e.step for e in seen if e.kind == "epoch"] == [1, 2, 3, 4, 5]
    assert seen[-1] == TrialEvent("complete", 7, value=0.5)


def test_a_line_still_being_written_waits_for_its_end(tmp_path):
    path = tmp_path / "events.jsonl"
    whole = TrialEvent("pruned", 1, reason="pruned at epoch 2").to_json()
    seen: list[TrialEvent] = []
    with follow(path, seen.append, poll_seconds=0.02):
        path.write_text(whole[:10])
        time.sleep(0.1)
        assert seen == [], "half a line is not an event yet"
        with open(path, "a") as f:
            f.write(whole[10:] + "\n")
        EventFile(path)(TrialEvent("started", 2))
    assert [e.kind for e in seen] == ["pruned", "started"]

"""The training loop on a model small enough to check by hand: what a fine-tuning run does (and
does not build), accumulation, weight decay, pruning, and the opt-in pre-training extras."""

from __future__ import annotations

import time
from types import SimpleNamespace

import optuna
import pytest
import torch
from torch.utils.data import default_collate

from helpers import Recording
from objectives.attributes import TrialAttr
from objectives.engine import EvaluationSchedule, TrainingArguments, fit, loop, optim
from objectives.engine.checkpoint import has_checkpoint, read_summary


class Regressor(torch.nn.Module):
    """norm -> dropout -> linear, with a mean-squared-error loss."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = torch.nn.LayerNorm(4)
        self.dropout = torch.nn.Dropout(dropout)
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        prediction = self.linear(self.dropout(self.norm(x))).squeeze(-1)
        return SimpleNamespace(loss=torch.nn.functional.mse_loss(prediction, labels))


def items(n: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)
    return [{"x": x[i], "labels": y[i]} for i in range(n)]


def validation_loss(model: torch.nn.Module, dtype: torch.dtype | None) -> tuple[float, dict]:
    model.eval()
    with torch.no_grad():
        batch = default_collate(items(8))
        return model(**batch).loss.item(), {"n_items": 8}


def train(model: torch.nn.Module, reporter: Recording, **settings) -> tuple[float, dict]:
    args = TrainingArguments(**{"learning_rate": 0.05, "num_train_epochs": 3, "per_device_train_batch_size": 4,
                                "mixed_precision": "no", **settings})
    return fit(model, items(), default_collate, validation_loss, args, reporter, started=time.perf_counter())


class CountingStepLog(loop.StepLog):
    made = 0

    def __init__(self, *a, **kw) -> None:
        CountingStepLog.made += 1
        super().__init__(*a, **kw)


class CountingCheckpoint(loop.checkpoint.RunCheckpoint):
    made = 0

    def __init__(self, *a, **kw) -> None:
        CountingCheckpoint.made += 1
        super().__init__(*a, **kw)


@pytest.fixture
def counted(monkeypatch):
    """The step log and run checkpoint the loop builds, counted (the real classes do the work)."""
    CountingStepLog.made = CountingCheckpoint.made = 0
    monkeypatch.setattr(loop, "StepLog", CountingStepLog)
    monkeypatch.setattr(loop.checkpoint, "RunCheckpoint", CountingCheckpoint)
    return CountingStepLog, CountingCheckpoint


def test_a_fine_tuning_run_evaluates_each_epoch_and_builds_no_pre_training_machinery(counted, tmp_path):
    reporter = Recording()
    reporter.checkpoint_dir = tmp_path / "run"  # a folder is offered, but save_strategy is "no"
    value, attrs = train(Regressor(), reporter)

    assert [step for step, _ in reporter.reports] == [1, 2, 3]
    assert (value, attrs) == (reporter.reports[-1][1], {"n_items": 8}), "the last evaluation's pair"
    history = reporter.attrs[TrialAttr.EPOCHS]
    assert [e["epoch"] for e in history] == [1, 2, 3] and all("step" not in e for e in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"], "it learns"
    assert reporter.attrs[TrialAttr.DEVICE] == "cpu" and reporter.attrs[TrialAttr.MIXED_PRECISION] == "fp32"
    assert reporter.attrs[TrialAttr.SECONDS_TO_FIRST_STEP] > 0
    declared = {v for k, v in vars(TrialAttr).items() if k.isupper()}
    assert set(reporter.attrs) - {"n_items"} <= declared, "every key the engine writes is a TrialAttr"
    assert TrialAttr.STEP_LOG not in reporter.attrs and TrialAttr.WARNING_SIGNS not in reporter.attrs
    assert counted[0].made == counted[1].made == 0, "no step log, no checkpoint object"
    assert not (tmp_path / "run").exists()

    # The same run asking for them builds each once (so the counts above can fail).
    train(Regressor(), Recording(), logging_steps=1, save_strategy="epoch")
    assert counted[0].made == 1 and counted[1].made == 0, "no checkpoint without a folder"
    with_folder = Recording()
    with_folder.checkpoint_dir = tmp_path / "run"
    train(Regressor(), with_folder, logging_steps=1, save_strategy="epoch")
    assert counted[1].made == 1 and read_summary(tmp_path / "run")["step"] == 12
    assert with_folder.attrs[TrialAttr.STEP_LOG]["steps"] == 12


def test_accumulated_micro_batches_take_the_step_of_the_whole_batch():
    whole, accumulated = Regressor(), Regressor()
    train(whole, Recording(), num_train_epochs=1, per_device_train_batch_size=8)
    train(accumulated, Recording(), num_train_epochs=1, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    for a, b in zip(whole.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b)


def test_no_weight_decay_on_biases_norms_or_what_the_model_names():
    model = Regressor()
    args = TrainingArguments(learning_rate=0.1, num_train_epochs=1, per_device_train_batch_size=4, weight_decay=0.5)
    groups = optim.optimizer(model, args).param_groups
    assert [p for g in groups if g["weight_decay"] == 0.5 for p in g["params"]] == [model.linear.weight]
    model.no_weight_decay = lambda: {"linear.weight"}
    assert not [p for g in optim.optimizer(model, args).param_groups if g["weight_decay"] for p in g["params"]]


def test_the_pruner_stops_the_run_at_that_epoch_and_the_reason_is_recorded():
    reporter = Recording(prune_at=2)
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 2"):
        train(Regressor(), reporter)
    assert [step for step, _ in reporter.reports] == [1, 2]
    assert reporter.attrs[TrialAttr.END_REASON] == "pruned at epoch 2"


def test_a_non_finite_loss_prunes_before_evaluating(monkeypatch):
    monkeypatch.setenv("SEARCH_FAULT_NAN", "epoch=2")
    reporter = Recording()
    with pytest.raises(optuna.TrialPruned):
        train(Regressor(), reporter)
    assert [step for step, _ in reporter.reports] == [1]
    assert reporter.attrs[TrialAttr.END_REASON] == "non-finite training loss at epoch 2"


def test_evaluation_by_steps_is_every_k_steps_and_at_the_last():
    every_4 = EvaluationSchedule(every_steps=4, total_steps=10)
    assert [s for s in range(1, 11) if every_4.after_step(s)] == [4, 8, 10] and not every_4.after_epoch
    assert every_4.mark(epoch=3, step=8) == ("step", 8)
    by_epoch = EvaluationSchedule.of(TrainingArguments(learning_rate=1, num_train_epochs=1, per_device_train_batch_size=1), 10)
    assert by_epoch.after_epoch and not any(by_epoch.after_step(s) for s in range(1, 11))
    assert by_epoch.mark(epoch=3, step=8) == ("epoch", 3)


class StopsAt(Recording):
    """Stops the run (as a killed worker) after optimizer step ``at``."""

    def __init__(self, folder, at: int | None = None) -> None:
        super().__init__()
        self.checkpoint_dir, self.at, self.steps = folder, at, 0

    def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        self.steps += 1
        if self.steps == self.at:
            raise KeyboardInterrupt


def test_a_stopped_run_resumes_exactly_mid_epoch(tmp_path):
    """Shuffled data, dropout and evaluation every 3 of 4 steps per epoch: the checkpoint falls
    mid-epoch, and the resumed run ends with the straight run's weights, figures and step log."""
    settings = {"eval_strategy": "steps", "eval_steps": 3, "max_steps": 10, "save_strategy": "steps",
                "logging_steps": 1, "gradient_accumulation_steps": 1}
    straight_model, straight = Regressor(dropout=0.2), StopsAt(tmp_path / "straight")
    value, _ = train(straight_model, straight, **settings)

    with pytest.raises(KeyboardInterrupt):
        train(Regressor(dropout=0.2), StopsAt(tmp_path / "stopped", at=8), **settings)
    assert has_checkpoint(tmp_path / "stopped") and read_summary(tmp_path / "stopped")["step"] == 6
    resumed_model, resumed = Regressor(dropout=0.2), StopsAt(tmp_path / "stopped")
    again, _ = train(resumed_model, resumed, **settings)

    assert resumed.attrs[TrialAttr.RESUMED_FROM_STEP] == 6 and resumed.steps == 4
    assert again == value and resumed.reports == straight.reports
    for a, b in zip(straight_model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    drop_seconds = [{k: v for k, v in e.items() if k != "seconds"} for e in straight.attrs[TrialAttr.EPOCHS]]
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in resumed.attrs[TrialAttr.EPOCHS]] == drop_seconds
    assert resumed.attrs[TrialAttr.STEP_LOG] == straight.attrs[TrialAttr.STEP_LOG]

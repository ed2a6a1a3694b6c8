"""What adopting ``accelerate`` in the engine would cost and give: the evidence for dropping it.

``accelerate.Accelerator`` would replace engine code of ours: device placement, autocast and the
gradient scaler, DDP wrapping and ``no_sync``, gathering, checkpoint state. This bench measures,
on the real Recipe-MPR training items with MiniLM (``AutoModelForMultipleChoice``, the objective's
dynamic-padding collate, fp32 on CPU):

1. the import of ``accelerate`` in a fresh process that has already imported torch (every
   worker would pay it once; transformers also imports it when it loads a model, if installed);
2. per trial: ``Accelerator()`` and ``prepare(model, optimizer, loader, scheduler)``, against
   nothing (the engine moves the model and builds its loader anyway);
3. whether one process can run trials with different ``mixed_precision`` (the worker runs many
   trials, each with its own searched precision);
4. training speed: the same optimizer steps through an accelerate loop (``accumulate``,
   ``autocast``, ``backward``, ``clip_grad_norm_``) and through ``objectives.engine.fit``,
   alternating, ``--repeats`` times each; steady state after the first step.

    Usage (from the repository root; needs ``pip install -e '.[bench]'``):
        SEARCH_DATA_DIR=../shared/data .venv/bin/python bench/accelerate_overhead.py --steps 6 --repeats 3
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if not os.environ.get("SEARCH_DATA_DIR") and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["SEARCH_DATA_DIR"] = str(ROOT.parent / "shared" / "data")  # as the Makefile does

SEED, LEARNING_RATE, WARMUP_STEPS, WEIGHT_DECAY, MAX_GRAD_NORM = 42, 5e-5, 100, 0.01, 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="runs per side, alternating which goes first")
    p.add_argument("--trials", type=int, default=5, help="Accelerator() + prepare() rounds timed")
    return p.parse_args(argv)


def import_seconds() -> float:
    """``import accelerate`` in a fresh process after torch (median of 3)."""
    code = ("import time, torch; t = time.perf_counter(); import accelerate; "
            "print(time.perf_counter() - t)")
    return statistics.median(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                  check=True).stdout) for _ in range(3))


def main() -> int:
    args = parse_args()
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from torch.utils.data import DataLoader
    from transformers import AutoModelForMultipleChoice

    import objectives.engine.loop as loop
    import objectives.recipe_mpr as recipe
    from objectives._models import load_model, load_tokenizer
    from objectives.contract import Reporter
    from objectives.engine import TrainingArguments, optim

    params = {**recipe.PARAMS, "model_name_or_path": args.model}
    data = recipe.encoded_items(args.model, params["max_length"], params["shuffle_seed"])
    n = args.steps * args.batch_size
    train_set = [data[i] for i in itertools.islice(itertools.cycle(recipe.splits(params)["train"]), n)]
    pad_id = load_tokenizer(args.model).pad_token_id or 0

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return recipe.collate(batch, pad_id)

    targs = TrainingArguments(learning_rate=LEARNING_RATE, num_train_epochs=1, per_device_train_batch_size=args.batch_size,
                              warmup_steps=WARMUP_STEPS, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM,
                              mixed_precision="no", seed=SEED)

    def fresh_model() -> torch.nn.Module:
        return load_model(AutoModelForMultipleChoice, args.model, dropout=params["dropout"], seed=SEED)

    print(f"accelerate overhead: {args.model}, {args.steps} steps x batch {args.batch_size}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); load average {os.getloadavg()[0]:.2f}")
    print(f"1. import accelerate after torch: {import_seconds():.3f} s (median of 3 fresh processes)")

    prepare_s = []
    for _ in range(args.trials):
        model = fresh_model()
        optimizer = optim.optimizer(model, targs)
        scheduler = optim.scheduler(optimizer, targs, args.steps)
        loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, collate_fn=collate)
        AcceleratorState._reset_state(reset_partial_state=True)  # private: what a worker would need per trial
        t0 = time.perf_counter()
        accelerator = Accelerator(cpu=True, mixed_precision="no")
        accelerator.prepare(model, optimizer, loader, scheduler)
        prepare_s.append(time.perf_counter() - t0)
    print(f"2. Accelerator() + prepare() per trial: median {1000 * statistics.median(prepare_s):.1f} ms "
          f"(min {1000 * min(prepare_s):.1f}, max {1000 * max(prepare_s):.1f}; {args.trials} trials)")

    AcceleratorState._reset_state(reset_partial_state=True)
    Accelerator(cpu=True, mixed_precision="bf16")
    try:
        Accelerator(cpu=True, mixed_precision="no")
        verdict = "accepted"
    except ValueError as e:
        verdict = f"refused: {str(e).splitlines()[0]}"
    print(f"3. a second trial in the same process with mixed_precision 'no' after 'bf16': {verdict}")
    AcceleratorState._reset_state(reset_partial_state=True)

    def run_accelerate() -> float:
        model = fresh_model()
        optimizer = optim.optimizer(model, targs)
        scheduler = optim.scheduler(optimizer, targs, args.steps)
        loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                            generator=torch.Generator().manual_seed(SEED))
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(cpu=True, mixed_precision="no")
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        model.train()
        for step, batch in enumerate(loader, start=1):
            with accelerator.accumulate(model), accelerator.autocast():
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if step == 1:
                start = time.perf_counter()
        return (args.steps - 1) * args.batch_size / (time.perf_counter() - start)

    def run_engine() -> float:
        marks: dict[int, float] = {}

        class Clock(Reporter):
            def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
                marks[step] = time.perf_counter()

        loop.fit(fresh_model(), train_set, collate, lambda m, dtype: (0.0, {}), targs, Clock(), started=time.perf_counter())
        return (args.steps - 1) * args.batch_size / (marks[args.steps] - marks[1])

    speeds: dict[str, list[float]] = {"accelerate loop": [], "objectives.engine.fit": []}
    for r in range(args.repeats):
        order = (("accelerate loop", run_accelerate), ("objectives.engine.fit", run_engine))
        for name, run in order if r % 2 == 0 else order[::-1]:
            speeds[name].append(run())
    print(f"4. steady training examples/s (best / median of {args.repeats}, alternating):")
    for name, xs in speeds.items():
        print(f"   {name:24s} {max(xs):6.2f} / {statistics.median(xs):6.2f}")
    best = max(speeds["objectives.engine.fit"]) / max(speeds["accelerate loop"])
    print(f"   engine / accelerate: {best:.2f}x (best runs); load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

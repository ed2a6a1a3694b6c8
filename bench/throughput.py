"""Training throughput of the objective's engine against Hugging Face Trainer runs.

Every side trains the same pretrained model (MiniLM by default) as ``AutoModelForMultipleChoice``
on the same Recipe-MPR training items (fold 0's training part, options shuffled exactly as the
objective does), with the same batch size, optimizer settings and number of optimizer steps,
in the same process, one after the other:

- reference: ``transformers.Trainer`` configured as the seed scripts do it: every (query,
  option) pair padded to ``max_length`` (``--max-length``, 256 as in the seed; 128 is the other
  common choice), fp32, ``default_data_collator``; no evaluation, saving or reporting;
- trainer: ``transformers.Trainer`` configured well: dynamic padding to the batch's longest pair
  (``DataCollatorForMultipleChoice``, ``DataCollatorWithPadding`` for nested options), bf16 where
  the device computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX; fp32
  elsewhere, as the engine's ``auto``), its default optimizer (fused AdamW), no evaluation,
  saving or logging. It gets exactly our batches: the items in the order our loader draws them
  (``train_sampling_strategy: sequential`` over that order), so both pad to the same lengths;
  length grouping stays off, as in ours (it would change which items train together);
- ours: ``objectives.engine.fit`` with ``objectives.recipe_mpr.collate`` (dynamic padding to the
  batch's longest pair) and the objective's ``mixed_precision`` setting (``auto``: bf16 on GPUs
  and on CPUs with native bf16, else fp32; ``--ours-precision`` changes it). Its per-epoch
  evaluation is given a no-op (the Trainer sides evaluate nothing either).

An example is one Recipe-MPR item with its 5 options. Figures: examples/second in steady state
(optimizer steps after the first ``--skip`` ones; the first pays one-off kernel and allocator
warm-up) and over the whole call (``trainer.train()`` / ``fit()``, setup included), and the
ratios ours / reference and ours / trainer. FLOPs are estimated as 6 x non-embedding parameters x tokens processed
(padding included, as the hardware computes it); model FLOPs utilization (MFU) is printed when
``--peak-tflops`` gives the device's dense peak for the precision used (e.g. 989 for an H100 SXM
in bf16). Each side runs ``--repeats`` times, rotating which goes first; the fastest run of each
side is compared (the one least disturbed by other processes) and the median is shown beside it.

    Usage (from the repository root):
        SEARCH_DATA_DIR=../shared/data .venv/bin/python bench/throughput.py
        ... --steps 12 --batch-size 8 --max-length 128 --model minilm --repeats 2 --devices cpu,cuda \\
            --peak-tflops 989
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if not os.environ.get("SEARCH_DATA_DIR") and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["SEARCH_DATA_DIR"] = str(ROOT.parent / "shared" / "data")  # as the Makefile does

import torch  # noqa: E402
import transformers  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from transformers import AutoModelForMultipleChoice  # noqa: E402

import objectives.engine as engine  # noqa: E402
import objectives.engine.precision as precision  # noqa: E402
import objectives.recipe_mpr as recipe  # noqa: E402
from objectives._models import load_model, load_tokenizer, resolve_model  # noqa: E402
from objectives.contract import Reporter  # noqa: E402

TARGET_RATIO = 1.3  # ours / the seed-style Trainer
TRAINER_TARGET_RATIO = 1.1  # ours / the well-configured Trainer
SIDES = ("reference", "trainer", "ours")
# Shared training settings (the seed baseline's), identical on both sides.
LEARNING_RATE, WARMUP_STEPS, WEIGHT_DECAY, MAX_GRAD_NORM, SEED = 5e-5, 100, 0.01, 1.0, 42


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm", help="model_name_or_path (both sides)")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run (both sides)")
    p.add_argument("--skip", type=int, default=1, help="first steps left out of the steady-state figure")
    p.add_argument("--batch-size", type=int, default=8, help="per_device_train_batch_size (both sides)")
    p.add_argument("--max-length", type=int, default=256, help="the reference pads every pair to this (seed: 256)")
    p.add_argument("--repeats", type=int, default=2, help="runs per side, rotating which goes first")
    p.add_argument("--sides", default=",".join(SIDES), help=f"which sides to run, comma-separated, of {', '.join(SIDES)}")
    p.add_argument("--devices", default="auto", help="cpu, cuda, or both comma-separated; auto = cuda if available else cpu")
    p.add_argument("--ours-precision", default="auto", help="mixed_precision for ours: auto | no | bf16 | fp16")
    p.add_argument("--hf-precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="the reference's precision")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak of the device, for model FLOPs utilization")
    p.add_argument("--json", type=Path, help="also write the raw measurements here")
    return p.parse_args(argv)


# --- shared data ----------------------------------------------------------------------------


def training_items(model: str, n: int) -> list[int]:
    """``n`` item indices from fold 0's training part (the objective's own split), cycled if needed."""
    params = {**recipe.PARAMS, "model_name_or_path": model}
    train = recipe.splits(params)["train"]
    return list(itertools.islice(itertools.cycle(train), n))


def engine_order(n: int) -> list[int]:
    """The order in which the engine's loader draws ``n`` items (a RandomSampler on a generator
    seeded with the run's seed): the well-configured Trainer gets them in this order."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(SEED)).tolist()


def device_has_bf16(dev: str) -> bool:
    """Whether ``dev`` computes bf16 natively (what a well-configured run turns bf16 on for)."""
    if dev == "cuda":
        return torch.cuda.is_bf16_supported()
    return precision.has_native_bf16(precision.cpu_flags())


def non_embedding_params(model: torch.nn.Module) -> int:
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Timestamps of optimizer steps (synchronised on GPU only where they are read)."""

    def __init__(self, dev: str, skip: int, steps: int) -> None:
        self.dev, self.skip, self.steps = dev, skip, steps
        self.start = self.boundary = self.end = math.nan

    def step_done(self, step: int) -> None:
        if step == self.skip or step == self.steps:
            sync(self.dev)
            if step == self.skip:
                self.boundary = time.perf_counter()
            if step == self.steps:
                self.end = time.perf_counter()


# --- the Trainer sides ----------------------------------------------------------------------


def train_with_trainer(args: argparse.Namespace, dev: str, model: torch.nn.Module, dataset: Any, collator: Any,
                       **settings: Any) -> tuple[float, Clock]:
    """``trainer.train()`` for ``args.steps`` steps with the shared settings and ``settings``: its
    whole time and its step clock."""
    clock = Clock(dev, args.skip, args.steps)

    class StepClock(transformers.TrainerCallback):
        def on_train_begin(self, *a: Any, **kw: Any) -> None:
            clock.start = time.perf_counter()

        def on_step_end(self, targs: Any, state: Any, control: Any, **kw: Any) -> None:
            clock.step_done(state.global_step)

    with tempfile.TemporaryDirectory() as out:
        targs = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
            learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS, weight_decay=WEIGHT_DECAY,
            max_grad_norm=MAX_GRAD_NORM, seed=SEED, use_cpu=dev == "cpu", report_to="none", save_strategy="no",
            eval_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, **settings,
        )
        trainer = transformers.Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collator,
                                       callbacks=[StepClock()])
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # its closing metrics line
            trainer.train()
        sync(dev)
        total = time.perf_counter() - t0
    return total, clock


def run_reference(args: argparse.Namespace, dev: str, indices: list[int]) -> dict[str, Any]:
    """The seed's way: every pair padded to max_length, fp32 (``--hf-precision``)."""
    import datasets

    items, _ = recipe.load_items(recipe.task_files("recipe-mpr", recipe.FILES))
    path = resolve_model(args.model)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    rows = []
    for i in indices:
        options, label = recipe.shuffled_options(items[i], i, recipe.PARAMS["shuffle_seed"])
        enc = tokenizer([items[i]["query"]] * len(options), options, truncation=True,
                        max_length=args.max_length, padding="max_length")
        rows.append({**{k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc}, "labels": label})
    dataset = datasets.Dataset.from_list(rows).with_format("torch")
    real_tokens = int(sum(sum(map(sum, r["attention_mask"])) for r in rows))
    model = AutoModelForMultipleChoice.from_pretrained(path)
    total, clock = train_with_trainer(args, dev, model, dataset, transformers.default_data_collator,
                                      fp16=args.hf_precision == "fp16", bf16=args.hf_precision == "bf16")
    n = args.steps * args.batch_size
    return {"side": "reference", "device": dev, "precision": args.hf_precision,
            "padding": f"max_length {args.max_length}", "examples": n, "total_s": total,
            "steady_s": clock.end - clock.boundary, "steady_examples": (args.steps - args.skip) * args.batch_size,
            "tokens": n * 5 * args.max_length, "real_tokens": real_tokens,
            "steady_tokens": (args.steps - args.skip) * args.batch_size * 5 * args.max_length,
            "non_embedding_params": non_embedding_params(model)}


def run_trainer(args: argparse.Namespace, dev: str, indices: list[int]) -> dict[str, Any]:
    """A well-configured Trainer: dynamic padding, bf16 where native, our batches in our order."""
    params = {**recipe.PARAMS, "model_name_or_path": args.model}
    data = recipe.encoded_items(args.model, params["max_length"], params["shuffle_seed"])
    rows = [{**data[indices[j]]["features"], "labels": data[indices[j]]["label"]} for j in engine_order(len(indices))]
    pad = transformers.DataCollatorForMultipleChoice(load_tokenizer(args.model))
    per_batch: list[tuple[int, int]] = []

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out = pad(batch)
        per_batch.append((out["input_ids"].numel(), int(out["attention_mask"].sum())))
        return out

    bf16 = device_has_bf16(dev)
    fp16 = dev == "cuda" and not bf16
    model = load_model(AutoModelForMultipleChoice, args.model, dropout=params["dropout"], seed=SEED)
    total, clock = train_with_trainer(args, dev, model, rows, collate, bf16=bf16, fp16=fp16,
                                      train_sampling_strategy="sequential", remove_unused_columns=False)
    n = args.steps * args.batch_size
    return {"side": "trainer", "device": dev, "precision": "bfloat16" if bf16 else "float16" if fp16 else "fp32",
            "padding": "dynamic (batch's longest)", "examples": n, "total_s": total,
            "steady_s": clock.end - clock.boundary, "steady_examples": (args.steps - args.skip) * args.batch_size,
            "tokens": sum(t for t, _ in per_batch), "real_tokens": sum(r for _, r in per_batch),
            "steady_tokens": sum(t for t, _ in per_batch[args.skip:args.steps]),
            "non_embedding_params": non_embedding_params(model)}


# --- ours: objectives.engine.fit with the objective's dynamic-padding collate ----------------


def run_ours(args: argparse.Namespace, dev: str, indices: list[int]) -> dict[str, Any]:
    params = {**recipe.PARAMS, "model_name_or_path": args.model}
    data = recipe.encoded_items(args.model, params["max_length"], params["shuffle_seed"])
    pad_id = load_tokenizer(args.model).pad_token_id or 0
    per_batch: list[tuple[int, int]] = []  # (tokens computed, real tokens) of each batch, in order

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out = recipe.collate(batch, pad_id)
        per_batch.append((out["input_ids"].numel(), int(out["attention_mask"].sum())))
        return out

    model = load_model(AutoModelForMultipleChoice, args.model, dropout=params["dropout"], seed=SEED)
    clock = Clock(dev, args.skip, args.steps)

    class StepReporter(Reporter):
        def on_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
            clock.step_done(step)

    targs = engine.TrainingArguments(
        learning_rate=LEARNING_RATE, num_train_epochs=1, per_device_train_batch_size=args.batch_size,
        warmup_steps=WARMUP_STEPS, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM,
        mixed_precision=args.ours_precision, seed=SEED,
    )
    train_set = [data[i] for i in indices]
    t0 = clock.start = time.perf_counter()
    engine.fit(model, train_set, collate, lambda m, dtype: (0.0, {}), targs, StepReporter(), started=t0)
    sync(dev)
    total = time.perf_counter() - t0
    dtype = engine.autocast_dtype(args.ours_precision, torch.device(dev))
    n = args.steps * args.batch_size
    return {"side": "ours", "device": dev, "precision": precision.dtype_name(dtype),
            "padding": "dynamic (batch's longest)", "examples": n, "total_s": total,
            "steady_s": clock.end - clock.boundary, "steady_examples": (args.steps - args.skip) * args.batch_size,
            "tokens": sum(t for t, _ in per_batch), "real_tokens": sum(r for _, r in per_batch),
            "steady_tokens": sum(t for t, _ in per_batch[args.skip:args.steps]),
            "non_embedding_params": non_embedding_params(model)}


# --- report ---------------------------------------------------------------------------------


def flops_rate(r: dict[str, Any]) -> float:
    """Estimated model FLOP/s in steady state: 6 x non-embedding params x tokens computed (padding included)."""
    return 6 * r["non_embedding_params"] * r["steady_tokens"] / r["steady_s"]


def main() -> int:
    args = parse_args()
    if not 0 <= args.skip < args.steps:
        print("--skip must be below --steps", file=sys.stderr)
        return 2
    sides = tuple(side for side in SIDES if side in args.sides.split(","))
    if not sides or set(args.sides.split(",")) - set(SIDES):
        print(f"--sides {args.sides}: expected a comma-separated list of {', '.join(SIDES)}", file=sys.stderr)
        return 2
    devices = (["cuda" if torch.cuda.is_available() else "cpu"] if args.devices == "auto"
               else [d.strip() for d in args.devices.split(",")])
    if "cuda" in devices and not torch.cuda.is_available():
        print("--devices cuda: no CUDA device here", file=sys.stderr)
        return 2
    console = Console(width=max(Console().width, 150))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    console.print(f"throughput: {args.model}, {args.steps} steps x batch {args.batch_size} per run, torch "
                  f"{torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}; "
                  f"CPU {cpu} (native bf16: {'yes' if device_has_bf16('cpu') else 'no'}); "
                  f"GPU {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}; "
                  f"load average {os.getloadavg()[0]:.2f}")
    indices = training_items(args.model, args.steps * args.batch_size)
    runs = {"reference": run_reference, "trainer": run_trainer, "ours": run_ours}
    results: list[dict[str, Any]] = []
    for dev in devices:
        # The engine trains on CUDA whenever there is one; it has no device option.
        precision.device = lambda dev=dev: torch.device(dev)
        for r in range(args.repeats):
            order = sides[r % len(sides):] + sides[:r % len(sides)]  # each side goes first in turn
            for side in order:
                console.print(f"[dim]{dev}: repeat {r + 1}/{args.repeats}: {side} ...")
                res = runs[side](args, dev, indices)
                res["repeat"] = r
                results.append(res)
        table = Table(title=f"training throughput on {dev} (examples/s; 1 example = 1 item x 5 options)")
        for col in ("side", "precision", "padding", "tokens/example (real)", "steady ex/s best", "steady ex/s median",
                    "whole-call ex/s best", "steady est. TFLOP/s", "MFU"):
            table.add_column(col, justify="left" if col in ("side", "precision", "padding") else "right")
        figures = {}
        for side in sides:
            rows = [x for x in results if x["device"] == dev and x["side"] == side]
            steady = [x["steady_examples"] / x["steady_s"] for x in rows]
            whole = [x["examples"] / x["total_s"] for x in rows]
            flops = max(flops_rate(y) for y in rows)
            mfu = f"{100 * flops / (args.peak_tflops * 1e12):.1f} %" if args.peak_tflops else "— (no --peak-tflops)"
            x = rows[0]
            table.add_row(side, x["precision"], x["padding"],
                          f"{x['tokens'] / x['examples']:.0f} ({x['real_tokens'] / x['examples']:.0f})",
                          f"{max(steady):.2f}", f"{statistics.median(steady):.2f}", f"{max(whole):.2f}",
                          f"{flops / 1e12:.3f}", mfu)
            figures[side] = (max(steady), statistics.median(steady), max(whole))
        table.add_section()
        for other, target in (("reference", TARGET_RATIO), ("trainer", TRAINER_TARGET_RATIO)):
            if "ours" not in figures or other not in figures:
                continue
            ratios = [o / r for o, r in zip(figures["ours"], figures[other])]
            ok = "[green]met[/]" if ratios[0] >= target else "[red]missed[/]"
            table.add_row(f"ours / {other}", "", "", "", f"{ratios[0]:.2f}x {ok}", f"{ratios[1]:.2f}x",
                          f"{ratios[2]:.2f}x", "", "")
        console.print(table)
        console.print(f"targets: ours >= {TARGET_RATIO}x the reference and >= {TRAINER_TARGET_RATIO}x the trainer in steady "
                      f"state on {dev}. {args.repeats} run(s) per side, rotating which goes first; 'best' is the fastest "
                      f"run (least disturbed by other processes), steady state = optimizer steps {args.skip + 1}.."
                      f"{args.steps}; TFLOP/s and MFU from the best steady run.")
    console.print(f"load average at the end {os.getloadavg()[0]:.2f} (other processes on the machine skew absolute times)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

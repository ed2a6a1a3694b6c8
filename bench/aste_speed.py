"""ASTE (D2E2S) training speed and peak memory, for max_span_size 6 and 8, on MiniLM.

Three configurations train on the same 14res sentences (the first ``--steps`` x ``--batch-size``
of the training split, in file order, so every configuration sees the same batches), each in a
fresh process so that its peak memory is its own:

- ``d2e2s-span6`` / ``d2e2s-span8``: the objective's model and training batches
  (``objectives.aste.collate`` with its negative sampling; the published sampling counts, 100
  negative spans and pairs per sentence), AdamW steps with gradient clipping, as the engine does;
- ``encoder-only`` (the reference): the same MiniLM encoder on the same sub-token batches with a
  trivial loss (mean of its last hidden state), forward, backward and the optimizer step. It is what
  any fine-tuning of this backbone pays; the ratio to it is the cost of the D2E2S layers.

Figures: training sentences per second of wall time and per second of process CPU time (all
threads), over the steps after the first (the first pays one-off allocation); the fastest of
``--repeats`` runs per configuration (runs alternate), and the median. On a machine shared with
other jobs the CPU-time figure is the steadier one (one thread by default, so no spin-waiting
threads inflate it);
dev-split inference sentences/second (``model.extract`` on all dev sentences, D2E2S only); and
peak memory. Memory on CPU is the process's resident set (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` after setup, so it is the peak during training), given as the peak minus
the resident set before training: what training adds on top of the loaded model and data. On
CUDA it is ``torch.cuda.max_memory_allocated`` during training.

    Usage (from the repository root):
        SEARCH_DATA_DIR=../shared/data .venv/bin/python bench/aste_speed.py [--steps 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if not os.environ.get("SEARCH_DATA_DIR") and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["SEARCH_DATA_DIR"] = str(ROOT.parent / "shared" / "data")  # as the Makefile does

CONFIGS = ("encoder-only", "d2e2s-span6", "d2e2s-span8")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(config: str, *, model: str, steps: int, batch_size: int, threads: int) -> dict:
    """One configuration in this process: train ``steps`` steps, then (D2E2S) score dev."""
    import torch

    torch.set_num_threads(threads)
    from objectives import aste
    from objectives.engine import device, to_device

    dev = device()
    span = 8 if config == "d2e2s-span8" else 6
    params = {**aste.PARAMS, "model_name_or_path": model, "max_span_size": span}
    sentences = aste.encoded_split("14res", "train", model)[: steps * batch_size]
    sampling = aste.Sampling.from_params(params)
    torch.manual_seed(0)
    batches = [aste.collate(list(sentences[i: i + batch_size]), pad_id=0, sampling=sampling)
               for i in range(0, len(sentences), batch_size)]
    net = aste.build_model(params, seed=0).to(dev)
    if config == "encoder-only":
        net = net.encoder
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5)

    def step(batch: dict) -> None:
        batch = to_device(batch, dev)
        if config == "encoder-only":
            loss = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state.mean()
        else:
            loss = net(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    net.train()
    step(batches[0])  # warm-up: allocator and kernels
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    resident = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak from here on
    start, cpu_start = time.perf_counter(), time.process_time()
    for batch in batches[1:]:
        step(batch)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    n_timed = sum(len(b["word_mask"]) for b in batches[1:])
    result = {"config": config, "device": dev.type, "threads": threads,
              "train_sentences_per_s": n_timed / seconds, "train_sentences_per_cpu_s": n_timed / cpu_seconds,
              "mean_words": statistics.mean(len(s.words) for s in sentences),
              "peak_added_mib": (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
                                 else (_status_kib("VmHWM") - resident) / 1024),
              "resident_before_mib": resident / 1024}
    if config != "encoder-only":
        result["spans_per_sentence"] = statistics.mean(
            int(b["word_mask"][i].sum()) * span - span * (span - 1) // 2 for b in batches for i in range(len(b["word_mask"])))
        dev_sentences = aste.encoded_split("14res", "dev", model)
        cpu_start = time.process_time()
        aste.predict(net, dev_sentences, batch_size=32, pad_id=0, dtype=None)
        result["dev_sentences_per_cpu_s"] = len(dev_sentences) / (time.process_time() - cpu_start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--steps", type=int, default=6, help="training steps per run, the first one not timed")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, model=args.model, steps=args.steps, batch_size=args.batch_size,
                                 threads=args.threads)))
        return

    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    for repeat in range(args.repeats):
        for config in CONFIGS if repeat % 2 == 0 else reversed(CONFIGS):
            out = subprocess.run([sys.executable, __file__, "--one", config, "--model", args.model, "--steps",
                                  str(args.steps), "--batch-size", str(args.batch_size), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True, env={**os.environ})
            runs[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {config}: {runs[config][-1]['train_sentences_per_s']:.2f} sentences/s", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")

    def fastest(config: str, key: str) -> float:
        return max(x[key] for x in runs[config])

    def middle(config: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[config])

    first = runs[CONFIGS[0]][0]
    print(f"\n{args.model}, 14res, batch {args.batch_size}, {args.steps - 1} timed steps, device {first['device']}, "
          f"{first['threads']} thread(s), mean {first['mean_words']:.1f} words per sentence; best (median) of "
          f"{args.repeats} runs")
    print("| configuration | train sentences / CPU-s | vs encoder only | train sentences / wall-s | "
          "dev inference sentences / CPU-s | peak memory added by training (MiB) | spans per sentence |")
    print("|---|---|---|---|---|---|---|")
    reference = fastest("encoder-only", "train_sentences_per_cpu_s")
    for config in CONFIGS:
        inference = (f"{fastest(config, 'dev_sentences_per_cpu_s'):.1f}" if config != "encoder-only" else "-")
        spans = f"{runs[config][0]['spans_per_sentence']:.0f}" if config != "encoder-only" else "-"
        print(f"| {config} | {fastest(config, 'train_sentences_per_cpu_s'):.2f} "
              f"({middle(config, 'train_sentences_per_cpu_s'):.2f}) | "
              f"{fastest(config, 'train_sentences_per_cpu_s') / reference:.2f} | "
              f"{fastest(config, 'train_sentences_per_s'):.2f} ({middle(config, 'train_sentences_per_s'):.2f}) | "
              f"{inference} | {max(x['peak_added_mib'] for x in runs[config]):.0f} | {spans} |")
    ratio = {key: fastest("d2e2s-span8", key) / fastest("d2e2s-span6", key)
             for key in ("train_sentences_per_cpu_s", "train_sentences_per_s", "dev_sentences_per_cpu_s")}
    memory = max(x["peak_added_mib"] for x in runs["d2e2s-span8"]) / max(x["peak_added_mib"] for x in runs["d2e2s-span6"])
    spans = runs["d2e2s-span8"][0]["spans_per_sentence"] / runs["d2e2s-span6"][0]["spans_per_sentence"]
    print(f"\nspan 8 / span 6: training speed {ratio['train_sentences_per_cpu_s']:.2f} per CPU-s "
          f"({ratio['train_sentences_per_s']:.2f} per wall-s), inference speed {ratio['dev_sentences_per_cpu_s']:.2f}, "
          f"peak memory added {memory:.2f}, spans {spans:.2f}")

if __name__ == "__main__":
    main()

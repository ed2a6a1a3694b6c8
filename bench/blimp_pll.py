"""BLiMP pseudo-log-likelihood throughput: the batched scorer against the plain loops.

Three ways to score the same minimal pairs with the same LTG-BERT, in the same run:
- ``loop``: one masked copy per forward pass, the model's full logits (``blimp.pll_one_by_one``);
- ``per pair``: the published evaluation's way (ltg-bert ``evaluation/blimp/blimp.py``): one
  forward pass per pair holding every masked copy of both sentences, padded to the longer one,
  full logits;
- ``batched``: ours (``blimp.pll_scores``): every masked copy of every sentence of one length in
  passes of ``--tokens-per-batch`` tokens, no padding, the head only at the masked position.
Each side runs ``--repeats`` times, alternating; the best pairs/second counts. The scores of the
three must agree (the largest difference is printed) and the pair decisions must be the same.

    SEARCH_DATA_DIR=../shared/data .venv/bin/python bench/blimp_pll.py --model-size xs

The model is randomly initialised (throughput does not depend on training); the tokenizer is
the objective's WordPiece on the BabyLM training text (trained once, then cached).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

import numpy as np
import torch
import torch.nn.functional as F

from objectives.babylm import blimp
from objectives.babylm import mlm
from objectives.babylm.ltg_bert import LtgBertConfig, LtgBertForMaskedLM


@torch.no_grad()
def per_pair(model: torch.nn.Module, pairs_ids: list[tuple[list[int], list[int]]]) -> np.ndarray:
    """One forward pass per pair: the masked copies of both sentences, padded, full logits."""
    dev = next(model.parameters()).device
    out = []
    for good, bad in pairs_ids:
        width = max(len(good), len(bad)) + 2
        rows, positions, targets = [], [], []
        for sentence in (good, bad):
            ids = [mlm.CLS, *sentence, mlm.SEP] + [mlm.PAD] * (width - len(sentence) - 2)
            for p in range(1, len(sentence) + 1):
                row = list(ids)
                row[p] = mlm.MASK
                rows.append(row)
                positions.append(p)
                targets.append(ids[p])
        input_ids = torch.tensor(rows, device=dev)
        logits = model(input_ids=input_ids, attention_mask=(input_ids != mlm.PAD).long()).logits
        picked = logits[torch.arange(len(rows), device=dev), torch.tensor(positions, device=dev)]
        log_p = F.log_softmax(picked.float(), -1)[torch.arange(len(rows), device=dev), torch.tensor(targets, device=dev)]
        out.append([log_p[: len(good)].sum().item(), log_p[len(good):].sum().item()])
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-size", default="xs", choices=["xs", "small", "base"])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--pairs-per-paradigm", type=int, default=2, help="pairs scored by every side")
    parser.add_argument("--tokens-per-batch", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    files = mlm.corpus_files("train.txt", role="train")
    tokenizer = mlm.load_tokenizer(files, args.vocab_size, 10)
    pairs = blimp.stratified_subset(blimp.load_pairs(blimp.blimp_folder()), args.pairs_per_paradigm, 0)
    encode = [e.ids for e in tokenizer.encode_batch([p.good for p in pairs] + [p.bad for p in pairs],
                                                     add_special_tokens=False)]
    good_ids, bad_ids = encode[: len(pairs)], encode[len(pairs):]
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(LtgBertConfig.from_preset(args.model_size, vocab_size=tokenizer.get_vocab_size()))
    model.to(dev).eval()
    ids = {"cls_id": mlm.CLS, "sep_id": mlm.SEP, "mask_id": mlm.MASK}

    sides = {
        "loop (one mask per forward)": lambda: blimp.pll_one_by_one(model, good_ids + bad_ids, **ids),
        "per pair (published eval)": lambda: per_pair(model, list(zip(good_ids, bad_ids))).T.reshape(-1),
        "batched (ours)": lambda: blimp.pll_scores(model, good_ids + bad_ids, tokens_per_batch=args.tokens_per_batch,
                                                    **ids),
    }
    load = os.getloadavg()[0]
    best: dict[str, float] = {}
    scores: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, run in sides.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            scores[name] = run()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best[name] = max(best.get(name, 0.0), len(pairs) / (time.perf_counter() - start))
    reference = scores["loop (one mask per forward)"]
    n = len(pairs)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")),
                      platform.processor())
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else model_name}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f} -> "
          f"{os.getloadavg()[0]:.1f}")
    print(f"LTG-BERT {args.model_size} ({model.num_parameters() / 1e6:.1f} M parameters, vocab "
          f"{tokenizer.get_vocab_size()}), {n} BLiMP pairs ({args.pairs_per_paradigm} per paradigm), "
          f"{sum(map(len, good_ids + bad_ids))} masked copies, best of {args.repeats}")
    print("| side | pairs/s | vs loop | max abs score difference vs loop | same decisions |")
    print("|---|---|---|---|---|")
    for name, rate in best.items():
        s = scores[name]
        same = np.array_equal(s[:n] > s[n:], reference[:n] > reference[n:])
        print(f"| {name} | {rate:.1f} | {rate / best['loop (one mask per forward)']:.1f}x | "
              f"{np.abs(s - reference).max():.2e} | {same} |")


if __name__ == "__main__":
    main()

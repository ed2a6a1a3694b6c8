"""What the on-disk token cache saves a worker: the token ids of a task's whole corpus, in a
fresh process with an empty cache (tokenize, write) against a fresh process that finds the file
(read), and against a later trial in the same worker (in memory). Also times what is not cached
(reading and cleaning the data, the split) and the computed TF-IDF baseline.

    SEARCH_DATA_DIR=../shared/data .venv/bin/python bench/tokenize_cache.py [--model minilm]

Each measurement runs in its own process (``--child``), so nothing is warm that a new worker
would not find warm; the cache lives in a temporary folder, never the user's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# (objective, its length parameter, length, also time the TF-IDF baseline)
CASES = (("lyrics_genre", "max_length", 256, True), ("lyrics_genre", "max_length", 512, False),
         ("ag_news", "max_seq_len", 128, True), ("ag_news", "max_seq_len", 256, False))


def child(objective: str, length_key: str, length: int, model: str, baseline: bool) -> dict[str, float]:
    import importlib

    from objectives import _classification
    from objectives._models import load_tokenizer

    module = importlib.import_module(f"objectives.{objective}")
    params = {**module.PARAMS, "model_name_or_path": model, length_key: length}
    load_tokenizer(model)  # the tokenizer is loaded in both cases; not what is measured
    start = time.perf_counter()
    data = module.labelled(params)
    prepared = time.perf_counter()
    _classification.token_ids(data.corpus, model, length)
    tokens = time.perf_counter()
    _classification.token_ids(data.corpus, model, length)  # a later trial of the same worker
    again = time.perf_counter()
    out = {"texts": len(data.corpus.texts), "data_and_split_s": prepared - start, "token_ids_s": tokens - prepared,
           "later_trial_s": again - tokens}
    if baseline:
        module.compute_baseline(params)
        out["tfidf_baseline_s"] = time.perf_counter() - again
    return out


def run_child(case: tuple[str, str, int, bool], model: str, cache: Path, baseline: bool) -> dict[str, float]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, __file__, "--child", *map(str, case[:3]), "--model", model] + (["--baseline"] if baseline else [])
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--child", nargs=3)
    parser.add_argument("--baseline", action="store_true")
    args = parser.parse_args()
    if args.child:
        objective, key, length = args.child
        print(json.dumps(child(objective, key, int(length), args.model, args.baseline)))
        return
    print(f"load average at start: {os.getloadavg()[0]:.1f}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print("| task | length | texts | data + split (not cached) | tokenize + write (empty cache) | read (new worker) "
          "| read / tokenize | later trial (memory) | TF-IDF baseline |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in CASES:
        with tempfile.TemporaryDirectory() as cache:
            cold = run_child(case, args.model, Path(cache), baseline=case[3])
            warm = run_child(case, args.model, Path(cache), baseline=False)
        baseline = f"{cold['tfidf_baseline_s']:.1f} s" if "tfidf_baseline_s" in cold else "—"
        print(f"| {case[0]} | {case[2]} | {cold['texts']} | {cold['data_and_split_s']:.2f} s | {cold['token_ids_s']:.2f} s "
              f"| {warm['token_ids_s']:.3f} s | **{warm['token_ids_s'] / cold['token_ids_s']:.3f}** "
              f"| {warm['later_trial_s'] * 1000:.2f} ms | {baseline} |", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""Where the engine trains and in which precision.

``mixed_precision: auto`` takes bf16 autocast where the hardware computes bf16 natively and
fp32 elsewhere: on CUDA bf16 if the GPU has it, else fp16 (with a gradient scaler); on a CPU bf16
only if its flags include ``avx512_bf16`` or ``amx_bf16``. On this project's AMD EPYC machines with
AVX512-BF16 the engine trained MiniLM on Recipe-MPR at 23.0 examples/s in bf16 against 11.2 in
fp32 (same process, alternating, three runs each); on a CPU without those units autocast emulates
bf16 and measured slower than fp32, so ``auto`` stays fp32 there (the 2-core AMD EPYC of the
sessions that wrote bench/RESULTS.md has AVX2 only: fp32). ``bf16`` forces autocast anywhere;
fp16 needs CUDA.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from objectives.engine.arguments import MIXED_PRECISION as SETTINGS
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def has_native_bf16(cpu_flags: Iterable[str]) -> bool:
    """Whether a CPU with these ``/proc/cpuinfo`` flags computes bf16 in hardware."""
    return not NATIVE_BF16_FLAGS.isdisjoint(cpu_flags)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (empty where /proc/cpuinfo is not readable: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def autocast_dtype(mixed_precision: str, dev: torch.device) -> torch.dtype | None:
    """The autocast dtype for a setting on a device; None means fp32."""
    if mixed_precision not in SETTINGS:
        raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, not {mixed_precision!r}")
    if mixed_precision == "auto":
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if has_native_bf16(cpu_flags()) else None
    if dev.type != "cuda" and mixed_precision == "fp16":
        return None
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]


def dtype_name(dtype: torch.dtype | None) -> str:
    """How a trial records its precision: bfloat16, float16 or fp32."""
    return str(dtype).removeprefix("torch.") if dtype else "fp32"


def to_device(batch: Mapping[str, torch.Tensor], dev: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(dev, non_blocking=True) for k, v in batch.items()}

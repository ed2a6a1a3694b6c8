"""Which precision the engine trains in: ``mixed_precision: auto`` takes bf16 only where the
hardware computes it natively (measured twice as fast there, slower where it is emulated)."""

from __future__ import annotations

import platform
import sys

import pytest
import torch

from objectives.engine import precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, native", [
    ({"fpu", "sse2", "avx2", "fma"}, False),  # AMD EPYC Milan, most Xeons before Cooper Lake
    ({"avx512f", "avx512bw", "avx512_vnni"}, False),  # AVX-512 without its bf16 instructions
    ({"avx512f", "avx512_bf16"}, True),  # AMD EPYC Genoa, Intel Cooper Lake
    ({"amx_tile", "amx_bf16", "amx_int8"}, True),  # Intel Sapphire Rapids and later
    (set(), False),  # flags unknown (not Linux)
])
def test_native_bf16_is_read_from_the_cpu_flags(flags, native):
    assert precision.has_native_bf16(flags) is native


def test_auto_on_a_cpu_is_bf16_with_native_bf16_and_fp32_without(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert precision.autocast_dtype("auto", CPU) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert precision.autocast_dtype("auto", CPU) is None


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"), reason="reads x86 /proc/cpuinfo")
def test_this_machines_flags_are_read():
    flags = precision.cpu_flags()
    assert {"fpu", "sse2"} <= flags, "every x86-64 CPU lists these"
    expected = torch.bfloat16 if flags & {"avx512_bf16", "amx_bf16"} else None
    assert precision.autocast_dtype("auto", CPU) is expected


def test_explicit_settings_and_a_wrong_one():
    assert precision.autocast_dtype("no", CPU) is None
    assert precision.autocast_dtype("bf16", CPU) is torch.bfloat16, "forced, whatever the CPU"
    assert precision.autocast_dtype("fp16", CPU) is None, "fp16 autocast needs CUDA"
    with pytest.raises(ValueError, match="mixed_precision must be auto, no, bf16 or fp16, not 'fp8'"):
        precision.autocast_dtype("fp8", CPU)
    assert [precision.dtype_name(d) for d in (torch.bfloat16, torch.float16, None)] == ["bfloat16", "float16", "fp32"]

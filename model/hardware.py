"""What the machine's processors do fast: picks the number format generation and training run in."""

from __future__ import annotations

from pathlib import Path


def _cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags, so fp32 and no tiles
        return ""


def cpu_has_fast_bf16() -> bool:
    """bf16 runs ~2x fp32 where the CPU has native bf16 instructions, and ~20x slower than fp32 where it is
    emulated (measured for a MiniLM training step on an AVX2-only AMD EPYC)."""
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_runs_on_tiles(device) -> bool:
    """Whether bf16 matrix products on `device` run on tile units (a CUDA GPU's tensor cores, a CPU's AMX),
    which work on blocks of 16 rows: there a product whose rows are a multiple of 16 wastes no tile. A CPU that
    has AVX-512 bf16 but no AMX (or hides it, as some virtual machines do) multiplies in vectors instead."""
    return device.type == "cuda" or (device.type == "cpu" and "amx_bf16" in _cpu_flags())


def bf16_pays_off(device) -> bool:
    """Whether bf16 on `device` (a torch.device) is native: a CUDA GPU with bf16, or such a CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()

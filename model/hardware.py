"""What the machine's processors do fast: picks the number format generation and training run in."""

from __future__ import annotations

from pathlib import Path


def cpu_has_fast_bf16() -> bool:
    """bf16 runs ~2x fp32 where the CPU has native bf16 instructions, and ~20x slower than fp32 where it is
    emulated (measured for a MiniLM training step on an AVX2-only AMD EPYC)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: stay with fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_pays_off(device) -> bool:
    """Whether bf16 on `device` (a torch.device) is native: a CUDA GPU with bf16, or such a CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()

"""Freed tensor memory goes back to the system in long-running processes (the worker, the server).

glibc serves an allocation below its mmap threshold from its heap, which keeps what is freed, and it raises
that threshold (up to 32 MiB) each time a larger mapped block is freed. After a few forward passes most
tensors come from the heap, and a process that runs for days keeps the peak of its largest batches resident.
A fixed threshold (setting it also stops the raising) maps large blocks and unmaps them when they are freed.
Measured on encoding 1,200 answers with MiniLM: resident 741-904 -> 473 MiB, peak 872-1,047 -> 604 MiB, for
~20% more time (the page faults of mapping each batch's tensors afresh; BENCHMARKS.md, "Scale"). A process
started with glibc's own MALLOC_MMAP_THRESHOLD_ set keeps that choice (16777216: the speed back, and part
of the memory saving)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
THRESHOLD = 128 * 1024  # glibc's own starting value


def return_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; False where the C library is not glibc, or the
    environment chose a threshold already."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False

"""backend/heap.py: freed tensors' memory leaves the process, measured in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

# A 24 MiB block freed raises glibc's mmap threshold past 8 MiB; forty 8 MiB tensors then come from the heap,
# and the last one, kept, sits at its top: the heap cannot shrink below it. Resident memory after freeing
# the others, in MiB, is printed.
PROBE = """
import sys
sys.path.insert(0, {root!r})
if {fix}:
    from backend.heap import return_freed_memory
    assert return_freed_memory()
import torch

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024

big = torch.ones(6 * 1024 * 1024)
del big
blocks = [torch.ones(2 * 1024 * 1024) for _ in range(40)]
before = rss()
kept = blocks[-1]
del blocks
print(before - rss())
"""


def released_mib(fix: bool) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT), fix=fix)], capture_output=True,
                         text=True, check=True, timeout=120, env=env)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_tensors_leave_the_process_with_the_fix_and_stay_without_it():
    assert released_mib(fix=True) >= 250  # 39 of the 40 blocks (312 MiB) returned
    assert released_mib(fix=False) < 100  # glibc's default keeps them


def test_a_threshold_chosen_in_the_environment_is_kept(monkeypatch):
    from backend.heap import return_freed_memory

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "16777216")
    assert return_freed_memory() is False

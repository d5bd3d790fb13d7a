"""``cluster.keep_freed_memory``: a worker process reuses the pages of a freed tensor instead of
faulting in fresh ones from the kernel (glibc)."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from workers.common import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():  # a step's activation: 64 MiB, over glibc's largest mmap threshold (32 MiB), freed after
    x = torch.ones(16 << 20)
for _ in range(3):  # the heap settles (it may keep two such blocks, used in turn)
    step()
before = faults()
for _ in range(4):
    step()
print(faults() - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_tensors_pages_are_reused_only_when_kept():
    pages = 4 * (64 << 20) // 4096  # of the 4 steps measured
    assert page_faults("default") > pages // 2  # fresh pages each step, faulted in and zeroed by the kernel
    assert page_faults("keep") < pages // 50  # the pages freed by an earlier step, still in the process

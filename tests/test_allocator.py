"""recbole_mind/allocator.py: freed training buffers are reused, not faulted in again."""

import subprocess
import sys

import pytest

FAULTS_PER_STEP = """
import ctypes, resource, sys, torch
from recbole_mind.allocator import M_MMAP_THRESHOLD, keep_freed_memory
# glibc's starting mmap threshold, fixed: its default adapts to the process's history, which
# makes the page faults of the defaults vary from run to run (370 to 4,300 a step here)
assert ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024)
if sys.argv[1] == "on":
    assert keep_freed_memory()
table = torch.randn(23716, 64)  # amazon-videogames' item table, 6 MB
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    (table * 2).sum()
before = faults()
for _ in range(20):  # a step's temporaries of the table's size, made and freed
    doubled = table * 2
    shifted = doubled + 1
    del doubled
    scaled = shifted * 3
    del shifted, scaled
print((faults() - before) / 20)
"""


def faults_per_step(setting):
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, setting], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_table_sized_buffers_are_reused_without_page_faults():
    # each 6 MB temporary is 1,536 pages, mapped afresh and faulted in at every step unless kept
    assert faults_per_step("off") > 3000
    assert faults_per_step("on") < 400

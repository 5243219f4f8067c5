"""glibc malloc settings that keep a training step's large buffers in the process.

A training step on the CPU allocates and frees tensors of a few MB many times: MIND's item table
(23.7k x 64 floats, 6 MB, on amazon-videogames) and its gradients, the softmax's chunks of logits.
glibc serves such blocks with a fresh ``mmap`` and returns them on ``free``, or trims them from the
heap, so each step touches them as new pages: thousands of page faults a step, each page zeroed
by the kernel. Raising the mmap threshold to glibc's 64-bit maximum (32 MB) and the trim
threshold to 2 GiB keeps freed blocks for reuse. Nothing computed changes; the process holds its
freed memory instead of giving it back (its peak is unchanged).
"""

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: 2 GiB of free heap kept before trimming


def keep_freed_memory():
    """Apply the settings above to this process; True if it has glibc's ``mallopt`` and took them.

    Idempotent; a no-op (False) off Linux or on a libc without ``mallopt`` (musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

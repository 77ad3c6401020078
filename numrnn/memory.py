"""glibc's allocator set to keep the blocks a training step frees, for the next step.

A step allocates and frees a few megabytes of arrays: the dx an upper layer hands
down, the kernels' packed weights and per-slab gradients.
glibc returns such blocks to the kernel (a block over its mmap threshold, 128 KiB
and raised as big blocks are freed, is unmapped; the top of the heap is released
once more than twice the threshold is free there), and the next step faults every
page back in: in a 2-layer row-MNIST model about 1,500 minor faults a step, at about
2 us each on a virtual machine 3 ms of a 40-50 ms step (PERF_NOTES.md, trap 4). Here
blocks up to 32 MiB come from the heap, and up to 128 MiB of free heap is kept: the
step then reuses its own pages.
"""
import ctypes
import os

_M_TRIM_THRESHOLD = -1      # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20   # glibc's largest on 64-bit systems
TRIM_THRESHOLD = 128 << 20

# Any of these, or GLIBC_TUNABLES, is the user's own allocator setting, which is kept.
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                  "GLIBC_TUNABLES")


def keep_freed_memory():
    """Set glibc's thresholds (above) unless the user has; nothing without glibc.
    Returns whether they were set."""
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        process = ctypes.CDLL(None)         # the C library Python runs on
        mallopt = process.mallopt
        process.gnu_get_libc_version        # glibc only: musl and macOS have no such thresholds
    except (OSError, AttributeError, TypeError):     # TypeError: Windows has no CDLL(None)
        return False
    # Both at once: setting either turns off glibc's own adjustment of both.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

"""Memory the kernels touch: kept from step to step, on large pages.

glibc's allocator is set to keep the blocks a training step frees, for the next step.

A step allocates and frees a few megabytes of arrays: the dx an upper layer hands
down, the kernels' packed weights and per-slab gradients.
glibc returns such blocks to the kernel (a block over its mmap threshold, 128 KiB
and raised as big blocks are freed, is unmapped; the top of the heap is released
once more than twice the threshold is free there), and the next step faults every
page back in: in a 2-layer row-MNIST model about 1,500 minor faults a step, at about
2 us each on a virtual machine 3 ms of a 40-50 ms step (PERF_NOTES.md, trap 4). Here
blocks up to 32 MiB come from the heap, and up to 128 MiB of free heap is kept: the
step then reuses its own pages.

A layer's workspaces (the activations the forward pass saves for the backward pass:
tens of megabytes in a row-MNIST LSTM) come from one mapping advised for
transparent huge pages (workspace_arrays). On 4 KiB pages each step walks
thousands of page-table entries, and on a shared machine, with the entries out of
the cache between steps, that cost 4-8% of a row-MNIST LSTM training step
(measured alternating with the same model on ordinary pages); 2 MiB pages need 512
times fewer. A model's parameters and gradients share such a mapping however small
they are (one huge page for up to 1 MiB of parameters): a batch-1 prediction, 28
products with U, then reads U through one TLB entry instead of 64.
"""
import ctypes
import math
import mmap
import os

import numpy as np

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


def freed_memory_environment(environ):
    """keep_freed_memory's thresholds as the environment variables glibc reads when a
    process starts, for a child process that should run with them: {} when environ
    holds an allocator setting of the user's own."""
    if any(name in environ for name in _USER_SETTINGS):
        return {}
    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


HUGE_PAGE = 2 << 20
ALIGNMENT = 64              # each array starts on a cache line


def workspace_arrays(shapes, dtype, min_bytes=2 * HUGE_PAGE):
    """{name: zeroed array of that shape} for {name: shape}.

    Together min_bytes or more, they share one anonymous mapping advised for
    transparent huge pages (Linux; the kernel's setting decides whether it takes
    the advice), starting on a huge-page boundary; the arrays keep it alive. Else,
    or where there is no such advice, each is np.zeros."""
    dtype = np.dtype(dtype)
    counts = [math.prod(shape) for shape in shapes.values()]
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if sum(counts) * dtype.itemsize < min_bytes or advice is None:
        return {name: np.zeros(shape, dtype) for name, shape in shapes.items()}
    sizes = [-(-count * dtype.itemsize // ALIGNMENT) * ALIGNMENT for count in counts]
    # Whole huge pages from the first boundary on, whatever the mapping's start.
    huge_pages = -(-sum(sizes) // HUGE_PAGE)
    mapping = mmap.mmap(-1, (huge_pages + 1) * HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mapping.madvise(advice)
    except OSError:          # a kernel without transparent huge pages: ordinary pages
        pass
    block = np.frombuffer(mapping, np.uint8)        # zeroed, as every new anonymous mapping
    start = -block.ctypes.data % HUGE_PAGE
    arrays = {}
    for (name, shape), count, size in zip(shapes.items(), counts, sizes):
        arrays[name] = block[start:start + count * dtype.itemsize].view(dtype).reshape(shape)
        start += size
    return arrays

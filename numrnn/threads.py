"""Threads: Numba's pool does all of a kernel's work; the BLAS it calls runs one thread.

Each kernel cuts the batch into one slab of rows per Numba thread, and every
thread runs the GEMMs and the gate math of its own rows. The BLAS behind Numba's
``np.dot`` (SciPy's OpenBLAS) is therefore pinned to one thread the first time a
kernel runs: with its own pool it would spin against Numba's (PERF_NOTES.md,
trap 2). NumPy's BLAS, a separate library, keeps its settings.
"""
import ctypes
import os

import numba
import numpy as np

_SETTERS = ("scipy_openblas_set_num_threads", "openblas_set_num_threads")
_kernels_prepared = False


def set_num_threads(n):
    """Use ``n`` threads in numrnn's kernels (Numba's ``set_num_threads``)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    n = int(n)
    if n > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads must be at most {numba.config.NUMBA_NUM_THREADS} "
                         f"(NUMBA_NUM_THREADS when numrnn started), got {n}")
    numba.set_num_threads(n)


def get_num_threads():
    return numba.get_num_threads()


MIN_SLAB_ROWS = 8

# Elementwise work (an optimiser's update, a loss over logits) of fewer elements runs
# on one thread: waking the pool's other threads took 15-110 us on the virtual machines
# measured, an Adam update of 64K parameters about 30 us on one thread.
MIN_PARALLEL_ELEMENTS = 1 << 16


def slabs_for(rows):
    """Row slabs for a kernel over ``rows`` batch rows: one per thread, but none under
    MIN_SLAB_ROWS rows, so a small batch runs on one slab, the kernel's serial build
    (launching a parallel region costs more than a step of a few rows)."""
    if rows < 2 * MIN_SLAB_ROWS:
        return 1
    return max(1, min(get_num_threads(), rows // MIN_SLAB_ROWS))


def prepare_kernels():
    """Before the first kernel runs (once per process): run the BLAS that Numba's
    np.dot calls on one thread."""
    global _kernels_prepared
    if _kernels_prepared:
        return
    _kernels_prepared = True
    import scipy.linalg.cython_blas  # noqa: F401  (Numba's np.dot calls this BLAS; load it now)

    for path in _loaded_libraries():
        if "scipy" not in os.path.dirname(path) or "openblas" not in os.path.basename(path).lower():
            continue
        lib = ctypes.CDLL(path)
        for symbol in _SETTERS:
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setter(ctypes.c_int(1))
                break


def _loaded_libraries():
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            return sorted({line.split()[-1] for line in f if line.rstrip().endswith(".so") or ".so." in line})
    except OSError:          # not Linux: BLAS keeps its own setting
        return []

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


def slabs_for(rows):
    """Row slabs for a kernel over ``rows`` batch rows: one per thread, but none under
    MIN_SLAB_ROWS rows, so a small batch runs on one slab, the kernel's serial build
    (launching a parallel region costs more than a step of a few rows)."""
    if rows < 2 * MIN_SLAB_ROWS:
        return 1
    return max(1, min(get_num_threads(), rows // MIN_SLAB_ROWS))


def prepare_kernels():
    """Before the first kernel runs (once per process): start Numba's thread pool, and
    run the BLAS that Numba's np.dot calls on one thread.

    The serial builds of the kernels call parallel helpers (kernels.common.shared),
    so their machine code calls the thread pool's scheduling functions, whose
    addresses Numba's linker learns when the pool starts. Loaded from the cache
    before it had started (a small batch runs only serial builds), such a kernel
    called address 0 and crashed the process.
    """
    global _kernels_prepared
    if _kernels_prepared:
        return
    _kernels_prepared = True
    numba.get_num_threads()          # starts the pool (numba's threading layer) if it has not started
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

"""One thread count for Numba's kernels and for the BLAS that runs the GEMMs.

OpenBLAS reads ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` once, when NumPy
loads it, and Numba reads ``NUMBA_NUM_THREADS`` when it starts its pool; the
command line imports neither before it parses ``--threads``, so setting the
variables first is enough there. When NumPy is already loaded (``python -c``,
tests), the count is also set at run time: through threadpoolctl when it is
installed, else by calling OpenBLAS's or MKL's own ``*_set_num_threads`` in the
loaded library (Linux), which is what threadpoolctl does.
"""
import ctypes
import os
import sys

MAX_THREADS_PER_CPU = 4
_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "scipy_openblas_set_num_threads64_", "MKL_Set_Num_Threads")


def set_num_threads(n):
    """Use ``n`` threads in Numba's parallel kernels and in BLAS.

    Returns a description ({"numba": n, "blas": how it was set}).

    Raises:
        ValueError: n < 1, or Numba's pool was already started with fewer threads.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    cpus = os.cpu_count() or 1
    if n > MAX_THREADS_PER_CPU * cpus:
        # Far more threads than cores only slows the kernels, and a pool of tens of
        # thousands fails to start (the process aborts or crashes).
        raise ValueError(f"threads must be at most {MAX_THREADS_PER_CPU * cpus} ({MAX_THREADS_PER_CPU} per CPU; "
                         f"this machine has {cpus}), got {n}")
    numpy_loaded = "numpy" in sys.modules
    for name in _ENV:
        os.environ[name] = str(n)
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(max(n, os.cpu_count() or 1))
    import numba

    if n > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads must be at most {numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS), got {n}")
    numba.set_num_threads(n)
    blas = "environment" if not numpy_loaded else _set_blas_threads(n)
    return {"numba": n, "blas": blas}


def _set_blas_threads(n):
    try:
        import threadpoolctl
    except ImportError:
        pass
    else:
        threadpoolctl.threadpool_limits(limits=n, user_api="blas")
        return "threadpoolctl"
    import numpy  # noqa: F401  (loads BLAS)

    done = []
    for path in _loaded_blas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in _SETTERS:
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                done.append(symbol)
                break
    return ", ".join(done) if done else "not set (no known BLAS found)"


def _loaded_blas_libraries():
    """Paths of the shared libraries in this process that look like OpenBLAS or MKL."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if any(k in os.path.basename(p).lower() for k in ("openblas", "mkl_rt")))

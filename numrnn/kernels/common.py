"""Scalar pieces shared by the cell kernels, and the parallel/serial kernel wrapper.

Every function here is Numba-jitted and inlined into the kernels that call it.
fastmath stays off: BPTT needs IEEE behaviour (see STYLE.md, point 7).
"""
import math

import numba
import numpy as np
from numba import prange

jit = numba.njit(cache=True, inline="always")


@jit
def sigmoid(x):
    # Two branches so that exp never overflows.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@jit
def tanh(x):
    return math.tanh(x)


@jit
def relu(x):
    return x if x > 0.0 else 0.0


class ParallelKernel:
    """A whole-sequence kernel compiled with ``prange`` loops run by Numba threads.

    The same source compiled serially (``prange`` as ``range``) is used while
    ``ParallelKernel.serial`` is True, so that tests can check that both builds
    agree. The serial build is not cached: Numba's cache key does not include the
    ``parallel`` flag, and the two builds must never be confused.
    """

    serial = False

    def __init__(self, fn):
        self.py_func = fn
        self.parallel_build = numba.njit(parallel=True, cache=True)(fn)
        self._serial_build = None
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    @property
    def serial_build(self):
        if self._serial_build is None:
            self._serial_build = numba.njit(parallel=False, cache=False)(self.py_func)
        return self._serial_build

    def __call__(self, *args):
        if ParallelKernel.serial:
            return self.serial_build(*args)
        return self.parallel_build(*args)


def kernel(fn):
    """Decorator: compile ``fn`` as a :class:`ParallelKernel`."""
    return ParallelKernel(fn)


@numba.njit(cache=True)
def reverse_within_lengths(out, x, lengths):
    """out[t, b] = x[lengths[b] - 1 - t, b] for t < lengths[b], else 0.

    x, out: (T, B, F), time-major. Mirrors tf.reverse_sequence; applying it twice
    gives back x with padded steps zeroed.
    """
    T, B = x.shape[0], x.shape[1]
    for t in range(T):
        for b in range(B):
            if t < lengths[b]:
                out[t, b, :] = x[lengths[b] - 1 - t, b, :]
            else:
                out[t, b, :] = 0.0
    return out


@jit
def input_projection(z, x, W, b):
    """z[t, b] = x[t, b] @ W + b for all steps at once: one GEMM (DESIGN.md §6.1).

    z: (T, B, G) out, x: (T, B, F), W: (F, G), b: (G,).
    """
    T, B, F = x.shape
    G = W.shape[1]
    z2 = z.reshape((T * B, G))
    np.dot(x.reshape((T * B, F)), W, z2)
    for row in prange(T * B):
        for k in range(G):
            z2[row, k] += b[k]


@jit
def accumulate_weight_grads(dW, x, dz):
    """dW += x^T dz summed over all steps and rows: one GEMM after the time loop.

    dW: (F, G), x: (T, B, F), dz: (T, B, G).
    """
    T, B, F = x.shape
    G = dz.shape[2]
    add_into(dW, np.dot(x.reshape((T * B, F)).T, dz.reshape((T * B, G))))


@jit
def accumulate_bias_grads(db, dz):
    """db += sum of dz over all steps and rows: db (G,), dz (T, B, G)."""
    T, B, G = dz.shape
    for k in prange(G):
        total = 0.0
        for t in range(T):
            for row in range(B):
                total += dz[t, row, k]
        db[k] += total


@jit
def accumulate_input_grads(dx, dz, W):
    """dx += dz @ W^T over all steps: dx (T, B, F), dz (T, B, G), W (F, G)."""
    T, B, F = dx.shape
    G = dz.shape[2]
    add_into(dx.reshape((T * B, F)), np.dot(dz.reshape((T * B, G)), W.T))


@jit
def add_into(out, a):
    """out += a for 2-D arrays of one shape, rows in parallel."""
    for i in prange(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] += a[i, j]

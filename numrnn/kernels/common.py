"""Pieces shared by the cell kernels, and the parallel/serial kernel wrapper.

The scalar and per-row functions (``@jit``) are inlined into the kernels that call
them; the passes after the backward time loop (``@shared``) are compiled once and
called. Subnormals are flushed inside the kernels (flush_subnormals).
fastmath stays off: BPTT needs IEEE behaviour (see STYLE.md, point 7).
"""
import inspect
import math
import platform
import types as types_module

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ..threads import MIN_PARALLEL_ELEMENTS, prepare_kernels, slabs_for
from .gemm import matmul

# error_model="numpy": a float division by zero gives inf/nan instead of raising,
# which removes a branch per division and lets LLVM vectorise the gate loops.
jit = numba.njit(cache=True, inline="always", error_model="numpy")

# The parallel builds run their prange loops on Numba's threads and nothing else: by
# default Numba also makes each whole-array statement (x[:] = 0.0, np.zeros, +=) a
# parallel region, each compiled on its own (seconds of compilation per kernel) to
# share out a few kilobytes of work. ParallelOptions consumes the dict it is given.
_PRANGE_ONLY = {"comprehension": False, "reduction": False, "inplace_binop": False, "setitem": False,
                "numpy": False, "stencil": False, "fusion": False}


# tanh(x) = x P(x^2) / Q(x^2), the 12th convergent of Lambert's continued fraction
# x / (1 + x^2 / (3 + x^2 / (5 + ...))), with |x| clamped to 9 where tanh rounds to
# +-1 in float32. Evaluated in float32 it is within 4e-7 of libm's tanh, and it is
# branch-free, so LLVM vectorises the gate loops instead of calling libm per element
# (PERF_NOTES.md, trap 3: ten times faster). float64 keeps libm: gradient checks need it.
_P0, _P1, _P2, _P3, _P4, _P5, _P6 = (np.float32(c / 7905853580625.0) for c in
                                     (7905853580625, 1159525191825, 41247931725, 523783260, 2552550, 4095, 1))
_Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6 = (np.float32(c / 7905853580625.0) for c in
                                     (7905853580625, 3794809718700, 252070693875, 5237832600, 41351310, 120120, 91))
_TANH_CLAMP = np.float32(9.0)
_HALF = np.float32(0.5)

# 1 and 0 for the kernels' arithmetic: a Python float is a float64, and 1.0 - x (or a
# variable that is 0.0 on one branch) makes a float32 kernel's loop compute in float64,
# converting each element there and back. float32 constants keep float32 arithmetic
# float32; a float64 kernel widens them exactly.
ONE, ZERO = np.float32(1.0), np.float32(0.0)


@jit
def tanh_float32(x):
    x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
    s = x * x
    p = _P0 + s * (_P1 + s * (_P2 + s * (_P3 + s * (_P4 + s * (_P5 + s * _P6)))))
    q = _Q0 + s * (_Q1 + s * (_Q2 + s * (_Q3 + s * (_Q4 + s * (_Q5 + s * _Q6)))))
    t = x * p / q
    return min(max(t, -ONE), ONE)     # rounding can overshoot 1 by an ulp


def tanh(x):
    """tanh for scalars inside kernels: the float32 approximation above for float32,
    libm otherwise."""
    return math.tanh(x)


def sigmoid(x):
    """Logistic sigmoid for scalars inside kernels; float32 via tanh: σ(x) = (1 + tanh(x/2)) / 2."""
    return 1.0 / (1.0 + math.exp(-x))


@overload(tanh, inline="always")
def _tanh_typed(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: tanh_float32(x)
    return lambda x: math.tanh(x)


@overload(sigmoid, inline="always")
def _sigmoid_typed(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _HALF + _HALF * tanh_float32(_HALF * x)

    def sigmoid_libm(x):
        # Two branches so that exp never overflows.
        if x >= 0:
            return 1.0 / (1.0 + math.exp(-x))
        e = math.exp(x)
        return e / (1.0 + e)
    return sigmoid_libm


# ----------------------------------------------------------------------------- subnormals

# Bits of the SSE control register MXCSR: flush-to-zero (15) and denormals-are-zero (6).
_FTZ_DAZ = 0x8040
_X86 = platform.machine().lower() in ("x86_64", "amd64")


def _mxcsr_call(builder, name, slot):
    fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    builder.call(fn, [builder.bitcast(slot, ir.IntType(8).as_pointer())])


@intrinsic
def _read_fp_mode(typingctx):
    """This thread's MXCSR (0 off x86)."""
    def codegen(context, builder, sig, args):
        if not _X86:
            return ir.Constant(ir.IntType(64), 0)
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", slot)
        return builder.zext(builder.load(slot), ir.IntType(64))
    return types.int64(), codegen


@intrinsic
def _write_fp_mode(typingctx, mode):
    """Load mode into this thread's MXCSR (nothing off x86)."""
    def codegen(context, builder, sig, args):
        if _X86:
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(builder.trunc(args[0], ir.IntType(32)), slot)
            _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
        return context.get_dummy_value()
    return types.none(types.int64), codegen


@jit
def flush_subnormals():
    """Flush subnormal results and inputs to zero in this thread until restore_fp_mode;
    returns the mode to restore.

    In BPTT over long sequences states and gradients decay into the subnormal range,
    where every operation, the GEMMs' included, costs about a hundred times more
    (PERF_NOTES.md, trap 1). The mode is per thread, so each parallel loop body sets it
    in the thread that runs it and puts the caller's mode back when done: code outside
    the kernels keeps IEEE gradual underflow. Off x86 it does nothing.
    """
    mode = _read_fp_mode()
    _write_fp_mode(mode | _FTZ_DAZ)
    return mode


@jit
def restore_fp_mode(mode):
    _write_fp_mode(mode)


@jit
def relu(x):
    return x if x > ZERO else ZERO


@jit
def clip(x, bound):
    return min(max(x, -bound), bound)


LN_EPS = 1e-5


@jit
def layer_norm_forward(v, hat, gain, shift):
    """In place over one row: v <- (v - mean) * rstd * gain + shift; hat <- (v - mean) * rstd.

    Returns rstd = 1 / sqrt(var + 1e-5) (biased variance), which backward needs.
    Two passes over v, so the variance does not suffer from cancellation.
    """
    H = v.shape[0]
    mean = 0.0
    for k in range(H):
        mean += v[k]
    mean /= H
    var = 0.0
    for k in range(H):
        var += (v[k] - mean) * (v[k] - mean)
    rstd = 1.0 / math.sqrt(var / H + LN_EPS)
    for k in range(H):
        hat[k] = (v[k] - mean) * rstd
        v[k] = hat[k] * gain[k] + shift[k]
    return rstd


@jit
def layer_norm_backward(dv, dgain, dshift, hat, gain, rstd):
    """In place over one row: dv holds dL/d(output) on entry and dL/d(input) on exit;
    dgain, dshift += this row's share (llm.c layernorm_backward)."""
    H = dv.shape[0]
    mean_dhat = 0.0
    mean_dhat_hat = 0.0
    for k in range(H):
        dgain[k] += dv[k] * hat[k]
        dshift[k] += dv[k]
        dhat = dv[k] * gain[k]
        mean_dhat += dhat
        mean_dhat_hat += dhat * hat[k]
    mean_dhat /= H
    mean_dhat_hat /= H
    for k in range(H):
        dv[k] = rstd * (dv[k] * gain[k] - mean_dhat - hat[k] * mean_dhat_hat)


@jit
def copy_into(out, a):
    """out[:] = a for 1-D arrays of one length. Numba compiles ``out[:] = a`` with an
    error path that formats both shapes into a message: about a second of compilation
    in every kernel that has one."""
    for k in range(out.shape[0]):
        out[k] = a[k]


@jit
def copy_rows(out, a):
    """out[:] = a for 2-D arrays of one shape (copy_into)."""
    for i in range(out.shape[0]):
        copy_into(out[i], a[i])


@jit
def mask_row(mask, t, row):
    """Row (t, row) of a state-dropout mask: (T, B, R), or (1, B, R) when it is the
    same at every step (variational dropout, or ones when there is no dropout:
    multiplying by 1.0 is exact)."""
    return mask[min(t, mask.shape[0] - 1), row]


class ParallelKernel:
    """A whole-sequence kernel compiled twice: with ``prange`` loops run by Numba
    threads, and serially (``prange`` as ``range``).

    The serial build runs when the kernel's trailing ``n_slabs`` argument is 1 (one
    slab, nothing to share out: launching a parallel region would cost more than a
    batch-1 step) and, for every kernel, while ``ParallelKernel.serial`` is True, so
    that tests can check that both builds agree. Both builds are cached: Numba keys
    its cache files by the function's qualified name but not by the ``parallel``
    flag, so the serial build compiles a copy of the function under its own name.
    """

    serial = False

    def __init__(self, fn):
        self.py_func = fn
        self.parallel_build = numba.njit(parallel=dict(_PRANGE_ONLY), cache=True, error_model="numpy")(fn)
        serial_fn = types_module.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                                              fn.__closure__)
        serial_fn.__qualname__ = fn.__qualname__ + "_serial"
        serial_fn.__module__ = fn.__module__
        self.serial_build = numba.njit(parallel=False, cache=True, error_model="numpy")(serial_fn)
        self.takes_slabs = list(inspect.signature(fn).parameters)[-1] == "n_slabs"
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    def for_rows(self, rows):
        """This kernel for a loop over ``rows`` rows: its serial build when they are
        too few to share out between threads (threads.slabs_for), called directly."""
        return self._build(slabs_for(rows) == 1)

    def for_elements(self, n):
        """This kernel for elementwise work over ``n`` elements: its serial build below
        threads.MIN_PARALLEL_ELEMENTS, called directly."""
        return self._build(n < MIN_PARALLEL_ELEMENTS)

    def _build(self, serial):
        prepare_kernels()
        return self.serial_build if serial else self

    def __call__(self, *args):
        prepare_kernels()
        if ParallelKernel.serial or (self.takes_slabs and args[-1] == 1):
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


@numba.njit(cache=True)
def first_non_finite(x):
    """(row, column) of the first value of a 2-D array that is not finite, (-1, -1)
    if there is none: a streaming step's input check in one call (NumPy's
    isfinite(x).all() takes two, each costing more than the check)."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if not np.isfinite(x[i, j]):
                return i, j
    return -1, -1


@numba.njit(cache=True, error_model="numpy")
def copy_finite(out, x):
    """out[:] = x for 3-D arrays of one shape, x of out's dtype and any strides;
    returns whether every value is finite.

    A model's input, copied time-major and checked in one pass over it: as a NumPy
    transposing copy and an isfinite pass it cost 0.3 ms of a row-MNIST step, each
    pass a trip through memory the step's kernels had just filled with their own data
    (serial: a parallel region would cost a batch-1 prediction more than the copy).
    """
    finite = True
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            for k in range(x.shape[2]):
                out[i, j, k] = x[i, j, k]
                finite &= np.isfinite(x[i, j, k])
    return finite


@jit
def slab(s, n_slabs, n):
    """Rows [lo, hi) of slab s of n_slabs nearly equal slabs of n rows.

    Kernels run one slab per Numba thread (n_slabs is the thread count, passed in
    by the caller: a kernel that asks Numba for it cannot be cached): each thread
    does the products (gemm.matmul, or single-threaded BLAS) and the gate math of its
    own rows, so one thread pool does all the work (PERF_NOTES.md, trap 2). A row's
    recurrence involves no other row, so each thread takes its slab through every
    step: one parallel region per kernel call, and no barrier between steps, where
    the slower thread held the other back. Results depend on n_slabs only through
    the rounding of the weight gradients, summed per slab (slab_partials).
    """
    per = (n + n_slabs - 1) // n_slabs
    lo = min(n, s * per)
    return lo, min(n, lo + per)


# The passes after the time loop are compiled once, on their own, and
# called by every cell's kernels: inlined, each kernel would compile its own copy (and
# cold compilation would take twice as long). Serial: each adds up a few hundred
# kilobytes at most, less work than waking the pool's threads (15-110 us on the
# virtual machines measured), and a parallel build compiled their array += twice as slow.
shared = numba.njit(cache=True, error_model="numpy")


@jit
def project_step(z, x, W, packed_W, b):
    """z = x W + b for one step's slab of rows: z (n, G), x (n, F), W (F, G) packed as
    packed_W (gemm.pack), b (G,) or (0,) for no bias.

    The training kernels project each step's input inside the time loop, just before
    the recurrent product: z_t stays in cache for the cell, where a projection of the
    whole sequence up front wrote T B G values to memory and read them back (0.4 ms of
    a 4.5 ms row-MNIST LSTM forward).
    """
    matmul(x, W, packed_W, z)
    if b.shape[0] > 0:
        for row in range(z.shape[0]):
            for k in range(z.shape[1]):
                z[row, k] += b[k]


@jit
def input_projection(z, x, W, b, n_slabs):
    """z[t, b] = x[t, b] @ W + b for all steps at once: one GEMM (DESIGN.md §6.1),
    cut into row slabs. The inference kernels' chunks of steps.

    z: (T, B, G) out, x: (T, B, F), W: (F, G), b: (G,) or (0,) for no bias.
    """
    T, B, F = x.shape
    G = W.shape[1]
    z2 = z.reshape((T * B, G))
    x2 = x.reshape((T * B, F))
    for s in prange(n_slabs):
        lo, hi = slab(s, n_slabs, T * B)
        mode = flush_subnormals()
        if hi > lo:
            np.dot(x2[lo:hi], W, z2[lo:hi])
            if b.shape[0] > 0:
                for row in range(lo, hi):
                    for k in range(G):
                        z2[row, k] += b[k]
        restore_fp_mode(mode)


@jit
def slab_partials(grad, n_slabs):
    """Zeroed partial sums of a gradient for slabs 1 to n_slabs - 1: (n_slabs - 1,) +
    grad.shape. Slab 0 adds into grad itself (slab_share).

    The backward kernels add each slab's share of a weight gradient at every step,
    while dz_t is in cache (gemm.matmul_add: dW += x_t^T dz_t, a few hundred rows of
    inner dimension), instead of keeping every dz_t for one product over the whole
    sequence afterwards, which would stream them all back from memory. add_slab_sums
    then adds the other slabs' sums to grad.
    """
    return np.zeros((n_slabs - 1,) + grad.shape, grad.dtype)


@jit
def slab_share(grad, partials, s):
    """Where slab s adds its share of a gradient: grad for slab 0, else its partial sum."""
    return grad if s == 0 else partials[s - 1]


@jit
def add_column_sums(total, rows):
    """total (G,) += rows (n, G) summed over its rows (G may be 0: no bias). Also for
    the per-row accumulators of peepholes and layer-norm gains."""
    for row in range(rows.shape[0]):
        for k in range(total.shape[0]):
            total[k] += rows[row, k]


@shared
def add_slab_sums(grad, partials):
    """grad += the partial sums of slabs 1, 2, ... in slab order: the result depends on
    the thread count only through rounding, and not on timing."""
    for s in range(partials.shape[0]):
        grad += partials[s]


@shared
def add_into(out, a):
    """out += a for 2-D arrays of one shape."""
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] += a[i, j]

"""Optimiser kernels over the flat parameter vector (STYLE.md point 8).

Parameters, gradients and the optimiser's moment buffers share one 1-D layout of
N elements, so each update is one parallel loop over the flat index (llm.c's
one-loop AdamW), in chunks of CHUNK elements, each flushing subnormals while it runs
(common.flush_subnormals: Adam's second moments of small gradients fall below 1e-38).
Every element is independent, so threads own their memory and the result does not
depend on the thread count.

Gradient clipping costs one extra pass: ``global_norm`` reads the gradients, and
the update multiplies each gradient by ``grad_scale`` as it reads it, which gives
the same numbers as scaling the gradients in place first.

Scalars arrive as Python floats and ints. Bias corrections and other scalar
factors are computed in float64 and rounded once to the arrays' dtype; the
per-element arithmetic then runs in that dtype (float32 or float64), as PyTorch's
does. fastmath stays off.
"""
import math

import numpy as np
from numba import prange

from .common import flush_subnormals, kernel, restore_fp_mode

# Elements per chunk of the parallel loops; also global_norm's fixed summation order
# (one partial sum per chunk).
CHUNK = 4096


@kernel
def adam_step(params, exp_avg, exp_avg_sq, grads, grad_scale, lr, beta1, beta2, eps, weight_decay,
              decoupled, step):
    """One Adam or AdamW update, in place.

    Args:
        params: (N,) in/out parameters.
        exp_avg, exp_avg_sq: (N,) in/out first and second moments (zeros before step 1).
        grads: (N,) gradients, read only; each is multiplied by ``grad_scale`` (1.0, or
            the clipping coefficient) before use.
        lr, beta1, beta2, eps, weight_decay: floats.
        decoupled: True for AdamW (p *= 1 - lr*wd first); False for an L2 penalty
            added to the gradient (g += wd*p).
        step: 1-based number of this update, for the bias corrections.

    Notes:
        Kingma & Ba 2015 (Adam), Algorithm 1, with eps added to sqrt(v)/sqrt(1-b2^t)
        as in torch.optim.Adam:
            m = b1 m + (1-b1) g ;  v = b2 v + (1-b2) g^2
            p = p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
        Decoupled weight decay: Loshchilov & Hutter 2019 (AdamW), as torch.optim.AdamW.
    """
    t = params.dtype.type
    scale = t(grad_scale)
    step_size = t(lr / (1.0 - beta1 ** step))
    # A product instead of PyTorch's division by sqrt(1-b2^t): one division fewer per
    # element, where the divider also computes the square root (at most an ulp apart).
    inv_bc2_sqrt = t(1.0 / math.sqrt(1.0 - beta2 ** step))
    decay = t(1.0 - lr * weight_decay) if decoupled else t(1.0)
    l2 = t(0.0) if decoupled else t(weight_decay)
    b1, b2, c1, c2, e = t(beta1), t(beta2), t(1.0 - beta1), t(1.0 - beta2), t(eps)
    for c in prange(-(-params.shape[0] // CHUNK)):
        mode = flush_subnormals()
        # Views of the chunk, indexed from 0: LLVM then vectorises the loop.
        chunk = slice(c * CHUNK, (c + 1) * CHUNK)
        p, m_, v_, g_ = params[chunk], exp_avg[chunk], exp_avg_sq[chunk], grads[chunk]
        for i in range(p.shape[0]):
            g = g_[i] * scale + l2 * p[i]
            m = b1 * m_[i] + c1 * g
            v = b2 * v_[i] + c2 * (g * g)
            m_[i] = m
            v_[i] = v
            p[i] = p[i] * decay - step_size * (m / (math.sqrt(v) * inv_bc2_sqrt + e))
        restore_fp_mode(mode)


@kernel
def sgd_step(params, momentum_buffer, grads, grad_scale, lr, momentum, nesterov, weight_decay):
    """One SGD update with optional (Nesterov) momentum, in place.

    Args:
        params: (N,) in/out parameters.
        momentum_buffer: (N,) in/out velocity, zeros before step 1; untouched when
            momentum == 0.
        grads: (N,) gradients, read only, multiplied by ``grad_scale`` before use.
        lr, momentum, weight_decay: floats.  nesterov: bool.

    Notes:
        torch.optim.SGD with dampening=0 (Sutskever et al. 2013 for Nesterov):
            g = g + wd p ;  b = mu b + g ;  g = g + mu b if nesterov else b ;  p = p - lr g
        A zero buffer makes the first b equal g, as PyTorch's clone of the first gradient.
    """
    t = params.dtype.type
    scale, lr_, mu, wd = t(grad_scale), t(lr), t(momentum), t(weight_decay)
    for c in prange(-(-params.shape[0] // CHUNK)):
        mode = flush_subnormals()
        chunk = slice(c * CHUNK, (c + 1) * CHUNK)       # views indexed from 0, as in adam_step
        p, g_, b_ = params[chunk], grads[chunk], momentum_buffer[chunk]     # b_ empty without momentum
        for i in range(p.shape[0]):
            g = g_[i] * scale + wd * p[i]
            if momentum != 0.0:
                b = mu * b_[i] + g
                b_[i] = b
                g = g + mu * b if nesterov else b
            p[i] = p[i] - lr_ * g
        restore_fp_mode(mode)


@kernel
def global_norm(partial, x):
    """Euclidean norm of x, accumulated in float64, the same for any thread count.

    Args:
        partial: (C,) float64 workspace, C = ceil(N / CHUNK): the sum of squares
            of each chunk, filled in parallel and then added serially, so the order
            of additions is fixed.
        x: (N,) array.

    Returns:
        float, sqrt(sum of x[i]^2).
    """
    N, C = x.shape[0], partial.shape[0]
    for c in prange(C):
        total = 0.0
        for i in range(c * CHUNK, min(N, (c + 1) * CHUNK)):
            a = np.float64(x[i])  # float() would keep float32 under Numba
            total += a * a
        partial[c] = total
    total = 0.0
    for c in range(C):
        total += partial[c]
    return math.sqrt(total)

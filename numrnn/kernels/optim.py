"""Optimiser kernels over the flat parameter vector (STYLE.md point 8).

Parameters, gradients and the optimiser's moment buffers share one 1-D layout of
N elements, so each update is one parallel loop over the flat index (llm.c's
one-loop AdamW). Every element is independent, so threads own their memory and the
result does not depend on the thread count.

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

from .common import kernel

# global_norm's fixed summation order: chunks of NORM_CHUNK elements, one partial sum each.
NORM_CHUNK = 4096


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
    bc2_sqrt = t(math.sqrt(1.0 - beta2 ** step))
    decay = t(1.0 - lr * weight_decay) if decoupled else t(1.0)
    l2 = t(0.0) if decoupled else t(weight_decay)
    b1, b2, c1, c2, e = t(beta1), t(beta2), t(1.0 - beta1), t(1.0 - beta2), t(eps)
    for i in prange(params.shape[0]):
        g = grads[i] * scale + l2 * params[i]
        m = b1 * exp_avg[i] + c1 * g
        v = b2 * exp_avg_sq[i] + c2 * (g * g)
        exp_avg[i] = m
        exp_avg_sq[i] = v
        params[i] = params[i] * decay - step_size * (m / (math.sqrt(v) / bc2_sqrt + e))


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
    for i in prange(params.shape[0]):
        g = grads[i] * scale + wd * params[i]
        if momentum != 0.0:
            b = mu * momentum_buffer[i] + g
            momentum_buffer[i] = b
            g = g + mu * b if nesterov else b
        params[i] = params[i] - lr_ * g


@kernel
def global_norm(partial, x):
    """Euclidean norm of x, accumulated in float64, the same for any thread count.

    Args:
        partial: (C,) float64 workspace, C = ceil(N / NORM_CHUNK): the sum of squares
            of each chunk, filled in parallel and then added serially, so the order
            of additions is fixed.
        x: (N,) array.

    Returns:
        float, sqrt(sum of x[i]^2).
    """
    N, C = x.shape[0], partial.shape[0]
    for c in prange(C):
        total = 0.0
        for i in range(c * NORM_CHUNK, min(N, (c + 1) * NORM_CHUNK)):
            a = np.float64(x[i])  # float() would keep float32 under Numba
            total += a * a
        partial[c] = total
    total = 0.0
    for c in range(C):
        total += partial[c]
    return math.sqrt(total)

"""Losses with their gradients: softmax cross-entropy and mean squared error."""
import math

from numba import prange

from .common import kernel


@kernel
def softmax_cross_entropy(dlogits, losses, logits, labels, scale):
    """Per-row softmax cross-entropy and its gradient, rows in parallel.

    Args:
        dlogits: (N, C) out: scale * (softmax(logits) - onehot(labels)).
        losses: (N,) out: -log softmax(logits)[label].
        logits: (N, C).  labels: (N,) int in [0, C).  scale: gradient factor (1/N for a mean).
    """
    N, C = logits.shape
    for n in prange(N):
        top = logits[n, 0]
        for k in range(1, C):
            top = max(top, logits[n, k])
        total = 0.0
        for k in range(C):
            total += math.exp(logits[n, k] - top)
        log_z = top + math.log(total)
        losses[n] = log_z - logits[n, labels[n]]
        for k in range(C):
            dlogits[n, k] = scale * math.exp(logits[n, k] - log_z)
        dlogits[n, labels[n]] -= scale


@kernel
def linear_softmax(probs, x, W, b):
    """probs[n] = softmax(x[n] W + b), rows in parallel: a classifier head's
    probabilities in one call (a streaming step's head costs a few microseconds as
    three NumPy calls).

    Args:
        probs: (N, C) out.  x: (N, D).  W: (D, C).  b: (C,).
    """
    N, D = x.shape
    C = W.shape[1]
    for n in prange(N):
        for k in range(C):
            probs[n, k] = b[k]
        for d in range(D):
            for k in range(C):
                probs[n, k] += x[n, d] * W[d, k]
        top = probs[n, 0]
        for k in range(1, C):
            top = max(top, probs[n, k])
        total = 0.0
        for k in range(C):
            probs[n, k] = math.exp(probs[n, k] - top)
            total += probs[n, k]
        for k in range(C):
            probs[n, k] /= total


@kernel
def squared_error(dpred, errors, pred, target, scale):
    """Per-row sum of squared errors and its gradient, rows in parallel.

    Args:
        dpred: (N, K) out: scale * 2 (pred - target).  errors: (N,) out: sum_k (pred - target)^2.
        pred, target: (N, K).  scale: gradient factor (1/(N K) for a mean).
    """
    N, K = pred.shape
    for n in prange(N):
        total = 0.0
        for k in range(K):
            d = pred[n, k] - target[n, k]
            total += d * d
            dpred[n, k] = scale * 2.0 * d
        errors[n] = total

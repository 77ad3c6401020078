"""CTC by brute force: enumerate every path of C classes over T steps (Graves et al. 2006).

Only for tiny inputs (C**T paths). A path is one class per step; it collapses to a
labelling by merging repeated classes and then dropping blanks, and
p(labelling | x) is the sum of prod_t softmax(logits[t])[path[t]] over the paths
that collapse to it.
"""
import itertools
import math

import numpy as np


def softmax(logits):
    """(T, C) -> (T, C), rows normalised."""
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def collapse(path, blank):
    """Merge repeats, then drop blanks: (1, 1, 0, 1, 2, 2) -> (1, 1, 2) for blank 0."""
    out = []
    prev = None
    for k in path:
        if k != prev and k != blank:
            out.append(k)
        prev = k
    return tuple(out)


def paths(T, C):
    """Every path: all tuples of T classes."""
    return itertools.product(range(C), repeat=T)


def path_probability(probs, path):
    return math.prod(probs[t, k] for t, k in enumerate(path))


def loss_and_grad(logits, labels, blank):
    """-log p(labels | logits) and its gradient with respect to the logits.

    logits: (T, C) float64, labels: sequence of ints. The gradient is, for each step t
    and class k, softmax[t, k] - (sum of p(path) over the paths of the labelling with
    path[t] == k) / p(labels). Returns (inf, zeros) when no path collapses to labels.
    """
    logits = np.asarray(logits, np.float64)
    T, C = logits.shape
    probs = softmax(logits)
    target = tuple(labels)
    total = 0.0
    through = np.zeros((T, C))      # probability of the labelling's paths through (t, k)
    for path in paths(T, C):
        if collapse(path, blank) != target:
            continue
        p = path_probability(probs, path)
        total += p
        for t, k in enumerate(path):
            through[t, k] += p
    if total == 0.0:
        return math.inf, np.zeros((T, C))
    return -math.log(total), probs - through / total


def labelling_log_probs(logits, blank):
    """{labelling (tuple): log p(labelling | logits)} over every labelling with p > 0."""
    logits = np.asarray(logits, np.float64)
    T, C = logits.shape
    probs = softmax(logits)
    totals = {}
    for path in paths(T, C):
        key = collapse(path, blank)
        totals[key] = totals.get(key, 0.0) + path_probability(probs, path)
    return {key: math.log(p) for key, p in totals.items()}


def best_path(logits, blank):
    """(labelling, log-probability) of the single most probable path."""
    logits = np.asarray(logits, np.float64)
    T, C = logits.shape
    probs = softmax(logits)
    best = max(paths(T, C), key=lambda path: path_probability(probs, path))
    return collapse(best, blank), math.log(path_probability(probs, best))

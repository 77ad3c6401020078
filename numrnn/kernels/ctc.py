"""Connectionist temporal classification: loss with its gradient, greedy and prefix-beam decoding.

Every kernel works on batch-major logits ``(B, T, C)`` and runs one sequence per
``prange`` iteration; everything a sequence touches lives in its own row ``[b]``
of the output and workspace arrays, so the threads never share memory. The
arithmetic is float64 whatever the input dtype: the log-likelihood of a sequence
is a sum of T terms, and float32 would lose digits for T in the thousands.

fastmath stays off (STYLE.md, point 7): the log-space recursion relies on ``-inf``
for the log of zero.

Notes:
    A. Graves, S. Fernandez, F. Gomez, J. Schmidhuber, "Connectionist Temporal
    Classification: Labelling Unsegmented Sequence Data with Recurrent Neural
    Networks", ICML 2006 (section 4.1 for the recursions, eq. 16 for the gradient
    with respect to the unnormalised outputs). Prefix beam search: A. Graves,
    "Supervised Sequence Labelling with Recurrent Neural Networks", 2012, section
    7.5, and A. Hannun et al., "First-Pass Large Vocabulary Continuous Speech
    Recognition using Bi-Directional Recurrent DNNs", 2014.
"""
import math

import numpy as np
from numba import prange

from .common import jit, kernel

NEG_INF = -np.inf

# Multiplier of the rolling prefix hash (odd, so the map h -> h * P + x is a bijection mod 2^64).
_HASH_MUL = np.int64(0x100000001B3)


# ----------------------------------------------------------------------------- log-space helpers

@jit
def log_add(a, b):
    """log(exp(a) + exp(b)), exact for -inf arguments."""
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    # log rather than log1p: it is faster, and the rounding of 1 + e is below that of a + ....
    return a + math.log(1.0 + math.exp(b - a))


@jit
def log_add3(a, b, c):
    """log(exp(a) + exp(b) + exp(c)), exact for -inf arguments."""
    if a < b:
        a, b = b, a
    if a < c:
        a, c = c, a
    if a == NEG_INF:
        return NEG_INF
    return a + math.log(1.0 + math.exp(b - a) + math.exp(c - a))


@jit
def log_normaliser(logits, b, t):
    """log sum_k exp(logits[b, t, k]) in float64 (max-shifted)."""
    C = logits.shape[2]
    top = np.float64(logits[b, t, 0])
    for k in range(1, C):
        top = max(top, np.float64(logits[b, t, k]))
    total = 0.0
    for k in range(C):
        total += math.exp(np.float64(logits[b, t, k]) - top)
    return top + math.log(total)


@jit
def extended_label(labels, b, s, blank):
    """Label at position s of the extended sequence (blank, l_1, blank, l_2, ..., blank)."""
    if s % 2 == 0:
        return blank
    return labels[b, s // 2]


@jit
def can_skip(labels, b, s):
    """Whether position s may be entered from s - 2: only a label that differs from the
    previous label can skip the blank between them (Graves et al. 2006, eq. 6-7)."""
    return s % 2 == 1 and s >= 3 and labels[b, s // 2] != labels[b, s // 2 - 1]


@jit
def open_positions(t, Tb, L):
    """Positions [lo, hi) of the extended sequence that lie on a complete path at step t
    of Tb: a path advances at most two positions a step, so it reaches at most 2t + 1 by
    step t and must be within 2 (Tb - t) of the end, L - 1 or L - 2, to finish."""
    return max(0, L - 2 * (Tb - t)), min(L, 2 * t + 2)


# ----------------------------------------------------------------------------- loss and gradient: log space

@jit
def _log_forward(alpha, log_z, logits, labels, b, Tb, L, blank):
    """Fill alpha[b, :Tb, :L] (log forward variables, Graves et al. 2006 eq. 5-7) and
    log_z[b, :Tb]; return log p(label | x). Positions that cannot lie on a complete
    path (s > 2t + 1, or too far from the end to reach it) hold -inf."""
    for t in range(Tb):
        log_z[b, t] = log_normaliser(logits, b, t)
    for s in range(L):
        alpha[b, 0, s] = NEG_INF
    alpha[b, 0, 0] = logits[b, 0, blank] - log_z[b, 0]
    if L > 1:
        alpha[b, 0, 1] = logits[b, 0, labels[b, 0]] - log_z[b, 0]
    for t in range(1, Tb):
        lo, hi = open_positions(t, Tb, L)
        for s in range(L):
            if s < lo or s >= hi:
                alpha[b, t, s] = NEG_INF
                continue
            stay = alpha[b, t - 1, s]
            step = alpha[b, t - 1, s - 1] if s >= 1 else NEG_INF
            if can_skip(labels, b, s):
                acc = log_add3(stay, step, alpha[b, t - 1, s - 2])
            else:
                acc = log_add(stay, step)
            if acc != NEG_INF:
                acc += logits[b, t, extended_label(labels, b, s, blank)] - log_z[b, t]
            alpha[b, t, s] = acc
    last = alpha[b, Tb - 1, L - 1]
    if L > 1:
        last = log_add(last, alpha[b, Tb - 1, L - 2])
    return last


@jit
def _log_backward(dlogits, beta, occupancy, alpha, log_z, logits, labels, b, Tb, L, blank, log_p):
    """Run the backward variables (Graves et al. 2006 eq. 10-12; beta_t(s) includes the
    output at t) from t = Tb - 1 down to 0 in two rolling rows beta[b, t % 2], and write
    dlogits[b, t] = softmax(logits[b, t]) - occupancy_t (eq. 16) on the way."""
    C = logits.shape[2]
    for t in range(Tb - 1, -1, -1):
        cur = t % 2
        nxt = 1 - cur
        lo, hi = open_positions(t, Tb, L)
        for s in range(L):
            if s < lo or s >= hi:
                beta[b, cur, s] = NEG_INF
                continue
            k = extended_label(labels, b, s, blank)
            if t == Tb - 1:
                acc = 0.0          # lo >= L - 2: the two final positions
            else:
                stay = beta[b, nxt, s]
                step = beta[b, nxt, s + 1] if s + 1 < L else NEG_INF
                if s + 2 < L and can_skip(labels, b, s + 2):
                    acc = log_add3(stay, step, beta[b, nxt, s + 2])
                else:
                    acc = log_add(stay, step)
            if acc != NEG_INF:
                acc += logits[b, t, k] - log_z[b, t]
            beta[b, cur, s] = acc
        for k in range(C):
            occupancy[b, k] = 0.0
        for s in range(lo, hi):
            # alpha_t(s) beta_t(s) / y_t(k) / p: the share of probability through (t, s).
            k = extended_label(labels, b, s, blank)
            g = alpha[b, t, s] + beta[b, cur, s] - (logits[b, t, k] - log_z[b, t]) - log_p
            if g != NEG_INF:
                occupancy[b, k] += math.exp(g)
        for k in range(C):
            dlogits[b, t, k] = math.exp(logits[b, t, k] - log_z[b, t]) - occupancy[b, k]


# ----------------------------------------------------------------------------- loss and gradient: rescaled

# A step whose forward, backward or occupancy total falls below this sends the sequence to
# the log-space recursion: far below it the rescaled variables would lose digits.
SCALED_TINY = 1e-200


@jit
def _softmax_rows(probs, logits, b, Tb):
    """probs[b, t] = softmax(logits[b, t]) in float64 for t < Tb (max-shifted)."""
    C = logits.shape[2]
    for t in range(Tb):
        top = np.float64(logits[b, t, 0])
        for k in range(1, C):
            top = max(top, np.float64(logits[b, t, k]))
        total = 0.0
        for k in range(C):
            e = math.exp(np.float64(logits[b, t, k]) - top)
            probs[b, t, k] = e
            total += e
        inv = 1.0 / total
        for k in range(C):
            probs[b, t, k] *= inv


@jit
def _scaled_forward(alpha, probs, labels, b, Tb, L, blank):
    """Fill alpha[b, :Tb, :L] with the forward variables (Graves et al. 2006 eq. 5-7), each
    step divided by its total so that it sums to 1 (Graves 2012, section 7.3.1); return
    log p(label | x) = the sum of the logs of the totals, or NaN when a total falls below
    SCALED_TINY (no alignment, or probabilities beyond float64's range). Positions that
    cannot lie on a complete path hold 0."""
    log_p = 0.0
    for t in range(Tb):
        lo, hi = open_positions(t, Tb, L)
        total = 0.0
        for s in range(L):
            if s < lo or s >= hi:
                alpha[b, t, s] = 0.0
                continue
            if t == 0:
                acc = 1.0
            else:
                acc = alpha[b, t - 1, s]
                if s >= 1:
                    acc += alpha[b, t - 1, s - 1]
                if can_skip(labels, b, s):
                    acc += alpha[b, t - 1, s - 2]
            acc *= probs[b, t, extended_label(labels, b, s, blank)]
            alpha[b, t, s] = acc
            total += acc
        if not total >= SCALED_TINY:
            return np.nan
        inv = 1.0 / total
        for s in range(lo, hi):
            alpha[b, t, s] *= inv
        log_p += math.log(total)
    # At t = Tb - 1 only the two final positions are open, so their total is the last factor.
    return log_p


@jit
def _scaled_backward(dlogits, beta, occupancy, alpha, probs, labels, b, Tb, L, blank):
    """Run the backward variables, here without the output at t (beta_t(s) = p(rest of
    the labelling after t | position s at t)), from t = Tb - 1 down to 0 in two rolling
    rows beta[b, t % 2], each step divided by its total, and write
    dlogits[b, t, k] = y_t(k) - sum_{s: l'_s = k} gamma_t(s) (Graves et al. 2006 eq. 16),
    with gamma_t(s) = alpha_t(s) beta_t(s) / sum_s' alpha_t(s') beta_t(s'), the share of
    the probability through (t, s): the step totals cancel in it. Return False when a
    total falls below SCALED_TINY (dlogits[b] is then incomplete)."""
    C = probs.shape[2]
    for t in range(Tb - 1, -1, -1):
        cur = t % 2
        nxt = 1 - cur
        lo, hi = open_positions(t, Tb, L)
        total = 0.0
        for s in range(L):
            if s < lo or s >= hi:
                beta[b, cur, s] = 0.0
                continue
            if t == Tb - 1:
                acc = 1.0          # lo >= L - 2: the two final positions
            else:
                acc = beta[b, nxt, s] * probs[b, t + 1, extended_label(labels, b, s, blank)]
                if s + 1 < L:
                    acc += beta[b, nxt, s + 1] * probs[b, t + 1, extended_label(labels, b, s + 1, blank)]
                if s + 2 < L and can_skip(labels, b, s + 2):
                    acc += beta[b, nxt, s + 2] * probs[b, t + 1, labels[b, (s + 2) // 2]]
            beta[b, cur, s] = acc
            total += acc
        if not total >= SCALED_TINY:
            return False
        inv = 1.0 / total
        for k in range(C):
            occupancy[b, k] = 0.0
        through = 0.0
        for s in range(lo, hi):
            beta[b, cur, s] *= inv
            share = alpha[b, t, s] * beta[b, cur, s]
            occupancy[b, extended_label(labels, b, s, blank)] += share
            through += share
        if not through >= SCALED_TINY:
            return False
        inv = 1.0 / through
        for k in range(C):
            dlogits[b, t, k] = probs[b, t, k] - occupancy[b, k] * inv
    return True


@kernel
def ctc_loss_and_grad(dlogits, losses, alpha, beta, probs, log_z, occupancy, logits, labels, logit_lengths,
                      label_lengths, blank, zero_infinity, need_grad):
    """Per-sequence CTC negative log-likelihood and its gradient, sequences in parallel.

    Args:
        dlogits: (B, T, C) out: d losses[b] / d logits[b] (softmax folded in), exactly 0
            at t >= logit_lengths[b] and everywhere when the loss is infinite or zeroed.
            Not written when need_grad is False.
        losses: (B,) out: -log p(labels[b, :label_lengths[b]] | logits[b, :logit_lengths[b]]);
            inf when no alignment exists, or 0 then with zero_infinity.
        alpha: (B, T, L) float64 workspace, L >= 2 max(label_lengths) + 1.
        beta: (B, 2, L) float64 workspace.  probs: (B, T, C) float64 workspace.
        log_z: (B, T) float64 workspace.  occupancy: (B, C) float64 workspace.
        logits: (B, T, C) unnormalised scores.  labels: (B, S) int, each in [0, C), != blank
            before label_lengths[b].  logit_lengths, label_lengths: (B,) int.
        blank: index of the blank class.  zero_infinity, need_grad: bool.

    Notes:
        Graves et al. 2006: forward variables over the extended label sequence (section
        4.1), backward variables in two rolling rows, and
        d(-log p)/d u_k^t = y_k^t - (1/p) sum_{s: l'_s = k} alpha_t(s) beta_t(s) / y_k^t (eq. 16).
        The recursions run on probabilities rescaled at every step: one exp per logit and
        one log per step, where log space needs an exp and a log per position and step.
        A sequence whose step totals leave float64's range (no alignment, or logits
        hundreds apart) is redone exactly in log space.
    """
    B, T, C = logits.shape
    for b in prange(B):
        Tb = logit_lengths[b]
        L = 2 * label_lengths[b] + 1
        in_log_space = False
        if Tb == 0:
            log_p = 0.0 if L == 1 else NEG_INF
        else:
            _softmax_rows(probs, logits, b, Tb)
            log_p = _scaled_forward(alpha, probs, labels, b, Tb, L, blank)
            if math.isnan(log_p):
                in_log_space = True
                log_p = _log_forward(alpha, log_z, logits, labels, b, Tb, L, blank)
        finite = log_p != NEG_INF
        if finite:
            losses[b] = -log_p
        elif zero_infinity:
            losses[b] = 0.0
        else:
            losses[b] = np.inf
        if not need_grad:
            continue
        first_zero = Tb
        if finite and Tb > 0:
            if not in_log_space and not _scaled_backward(dlogits, beta, occupancy, alpha, probs, labels, b,
                                                         Tb, L, blank):
                in_log_space = True
                _log_forward(alpha, log_z, logits, labels, b, Tb, L, blank)
            if in_log_space:
                _log_backward(dlogits, beta, occupancy, alpha, log_z, logits, labels, b, Tb, L, blank, log_p)
        else:
            first_zero = 0
        for t in range(first_zero, T):
            for k in range(C):
                dlogits[b, t, k] = 0.0


# ----------------------------------------------------------------------------- greedy decoding

@kernel
def ctc_greedy_decode(out_labels, out_lengths, scores, logits, logit_lengths, blank):
    """Best-path decoding, sequences in parallel: the most probable class at each step,
    repeats collapsed, blanks dropped (Graves et al. 2006, section 3.2).

    Args:
        out_labels: (B, T) int out: the decoded labels of sequence b in out_labels[b, :out_lengths[b]].
        out_lengths: (B,) int out.
        scores: (B,) float64 out: log-probability of the best path, sum_t max_k log softmax(logits[b, t]).
        logits: (B, T, C).  logit_lengths: (B,) int.  blank: index of the blank class.

    Ties go to the lowest class index.
    """
    B, T, C = logits.shape
    for b in prange(B):
        n = 0
        prev = -1
        total = 0.0
        for t in range(logit_lengths[b]):
            best = 0
            for k in range(1, C):
                if logits[b, t, k] > logits[b, t, best]:
                    best = k
            total += np.float64(logits[b, t, best]) - log_normaliser(logits, b, t)
            if best != blank and best != prev:
                out_labels[b, n] = best
                n += 1
            prev = best
        out_lengths[b] = n
        scores[b] = total


# ----------------------------------------------------------------------------- prefix beam search
#
# A prefix is a node of a per-sequence tree kept in preallocated arrays: node_parent,
# node_label, node_length and node_hash (a rolling hash of the labels). A beam entry
# points at a node and carries two log-probabilities: of the paths so far that collapse
# to the prefix and end in a blank (pb) or in its last label (pnb).

@jit
def _same_prefix(node_parent, node_label, node_length, node_hash, b, m, n):
    """Whether nodes m and n spell the same label sequence (walk both chains to the root)."""
    if node_length[b, m] != node_length[b, n] or node_hash[b, m] != node_hash[b, n]:
        return False
    while m != n:
        if node_label[b, m] != node_label[b, n]:
            return False
        m = node_parent[b, m]
        n = node_parent[b, n]
    return True


@jit
def _offer(top_score, top_src, top_label, b, K, score, src, label):
    """Keep the K best candidates in top_*[b, :K] (unsorted; -inf marks a free slot): the
    candidate replaces the worst kept one when it is strictly better."""
    worst = 0
    for j in range(1, K):
        if top_score[b, j] < top_score[b, worst]:
            worst = j
    if score > top_score[b, worst]:
        top_score[b, worst] = score
        top_src[b, worst] = src
        top_label[b, worst] = label


@kernel
def ctc_beam_decode(out_labels, out_lengths, scores, beam_node, beam_pb, beam_pnb, new_node, new_pb, new_pnb,
                    stay_pb, stay_pnb, extends_to, top_score, top_src, top_label, log_probs,
                    node_parent, node_label, node_length, node_hash, logits, logit_lengths, blank):
    """Prefix beam search, sequences in parallel: keep the K most probable prefixes,
    merging the paths that collapse to the same prefix.

    Args:
        out_labels: (B, T) int out: the best prefix of sequence b in out_labels[b, :out_lengths[b]].
        out_lengths: (B,) int out.
        scores: (B,) float64 out: log of the best prefix's total probability (over the
            paths that the search kept).
        beam_node, new_node: (B, K) int64 workspaces, K the beam width.
        beam_pb, beam_pnb, new_pb, new_pnb, stay_pb, stay_pnb: (B, K) float64 workspaces.
        extends_to: (B, K, C) int64 workspace.
        top_score: (B, K) float64, top_src, top_label: (B, K) int64 workspaces.
        log_probs: (B, C) float64 workspace.
        node_parent, node_label, node_length, node_hash: (B, 1 + T K) int64 workspaces.
        logits: (B, T, C).  logit_lengths: (B,) int.  blank: index of the blank class.

    Notes:
        Graves 2012, section 7.5; Hannun et al. 2014. At each step every kept prefix
        either stays (the step emits a blank, or repeats its last label) or grows by
        one label c != blank (after a blank when c equals its last label). A grown
        prefix that is already in the beam adds to that entry instead of competing.
        With K at least the number of distinct prefixes the search is exhaustive and
        the score is log p(prefix | x).
    """
    B, T, C = logits.shape
    K = beam_node.shape[1]
    for b in prange(B):
        Tb = logit_lengths[b]
        node_parent[b, 0] = -1
        node_label[b, 0] = -1
        node_length[b, 0] = 0
        node_hash[b, 0] = 0
        n_nodes = 1
        n_beam = 1
        beam_node[b, 0] = 0
        beam_pb[b, 0] = 0.0
        beam_pnb[b, 0] = NEG_INF
        for t in range(Tb):
            log_zt = log_normaliser(logits, b, t)
            for k in range(C):
                log_probs[b, k] = logits[b, t, k] - log_zt
            # Which (entry i, label c) growths land on an entry j already in the beam.
            for i in range(n_beam):
                for c in range(C):
                    extends_to[b, i, c] = -1
            for j in range(n_beam):
                nj = beam_node[b, j]
                if node_length[b, nj] == 0:
                    continue
                parent = node_parent[b, nj]
                for i in range(n_beam):
                    if _same_prefix(node_parent, node_label, node_length, node_hash, b, beam_node[b, i], parent):
                        extends_to[b, i, node_label[b, nj]] = j
                        break
            # Staying: a blank, or a repeat of the last label without a blank between.
            for j in range(n_beam):
                nj = beam_node[b, j]
                stay_pb[b, j] = log_add(beam_pb[b, j], beam_pnb[b, j]) + log_probs[b, blank]
                if node_length[b, nj] > 0:
                    stay_pnb[b, j] = beam_pnb[b, j] + log_probs[b, node_label[b, nj]]
                else:
                    stay_pnb[b, j] = NEG_INF
            for j in range(K):
                top_score[b, j] = NEG_INF
                top_src[b, j] = -1
                top_label[b, j] = -1
            # Growing by one label; offered at once unless it merges into a staying entry.
            for i in range(n_beam):
                ni = beam_node[b, i]
                last = node_label[b, ni]
                total = log_add(beam_pb[b, i], beam_pnb[b, i])
                for c in range(C):
                    if c == blank:
                        continue
                    grown = (beam_pb[b, i] if c == last else total) + log_probs[b, c]
                    j = extends_to[b, i, c]
                    if j >= 0:
                        stay_pnb[b, j] = log_add(stay_pnb[b, j], grown)
                    else:
                        _offer(top_score, top_src, top_label, b, K, grown, i, c)
            for j in range(n_beam):
                _offer(top_score, top_src, top_label, b, K, log_add(stay_pb[b, j], stay_pnb[b, j]), j, -1)
            # The new beam, built in new_* and copied back.
            n_new = 0
            for m in range(K):
                if top_score[b, m] == NEG_INF:
                    continue
                src = top_src[b, m]
                c = top_label[b, m]
                if c < 0:
                    new_node[b, n_new] = beam_node[b, src]
                    new_pb[b, n_new] = stay_pb[b, src]
                    new_pnb[b, n_new] = stay_pnb[b, src]
                else:
                    parent = beam_node[b, src]
                    node_parent[b, n_nodes] = parent
                    node_label[b, n_nodes] = c
                    node_length[b, n_nodes] = node_length[b, parent] + 1
                    node_hash[b, n_nodes] = node_hash[b, parent] * _HASH_MUL + (c + 1)
                    new_node[b, n_new] = n_nodes
                    new_pb[b, n_new] = NEG_INF
                    new_pnb[b, n_new] = top_score[b, m]
                    n_nodes += 1
                n_new += 1
            for m in range(n_new):
                beam_node[b, m] = new_node[b, m]
                beam_pb[b, m] = new_pb[b, m]
                beam_pnb[b, m] = new_pnb[b, m]
            n_beam = n_new
        # Best entry.
        best = 0
        best_score = log_add(beam_pb[b, 0], beam_pnb[b, 0])
        for j in range(1, n_beam):
            sc = log_add(beam_pb[b, j], beam_pnb[b, j])
            if sc > best_score:
                best = j
                best_score = sc
        node = beam_node[b, best]
        n = node_length[b, node]
        out_lengths[b] = n
        while n > 0:
            n -= 1
            out_labels[b, n] = node_label[b, node]
            node = node_parent[b, node]
        scores[b] = best_score

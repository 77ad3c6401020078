"""Connectionist temporal classification (DESIGN.md §5): loss and gradient, decoding, metrics.

```python
loss, dlogits = nr.ctc.loss_and_grad(logits, labels, logit_lengths, label_lengths,
                                     blank=0, zero_infinity=False)
labels, scores = nr.ctc.greedy_decode(logits, logit_lengths, blank=0)
labels, scores = nr.ctc.beam_decode(logits, logit_lengths, beam=16, blank=0)
```

Shapes: logits ``(B, T, C)`` unnormalised scores over C classes, one of them the
blank (``(T, B, C)`` with ``time_major=True``); labels ``(B, S)`` int, padded;
lengths ``(B,)`` int, ``None`` for all T (or all S).

These functions check their arguments and allocate; the computation is in
:mod:`numrnn.kernels.ctc` (Graves et al. 2006). Workspaces up to
``WORKSPACE_CACHE_BYTES`` are kept per thread and reused across calls of one shape.

Lengths. A label sequence longer than its logits (``label_lengths[b] >
logit_lengths[b]``) is a ValueError. One that fits but cannot be aligned because
repeated labels need a blank between them (``[1, 1]`` in two steps) is not an
error: like ``torch.nn.functional.ctc_loss`` its loss is ``inf`` (0 with
``zero_infinity=True``); unlike torch, whose gradient is then NaN, its gradient is 0.
"""
import threading

import numpy as np

from .kernels.ctc import ctc_beam_decode, ctc_greedy_decode, ctc_loss_and_grad

__all__ = ["loss_and_grad", "loss", "greedy_decode", "beam_decode", "edit_distance", "label_error_rate",
           "sequence_accuracy"]

WORKSPACE_CACHE_BYTES = 64 << 20


class _Workspaces(threading.local):
    """Per-thread scratch buffers, reused while they are large enough (DESIGN.md §6.3).
    Buffers above WORKSPACE_CACHE_BYTES are allocated for one call and not kept."""

    def __init__(self):
        self.buffers = {}

    def take(self, name, shape, dtype):
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64))
        if size * dtype.itemsize > WORKSPACE_CACHE_BYTES:
            return np.empty(shape, dtype)
        buf = self.buffers.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.empty(max(size, 1), dtype)
            self.buffers[name] = buf
        return buf[:size].reshape(shape)


_workspaces = _Workspaces()


# ----------------------------------------------------------------------------- argument checks

def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_int(name, value, low, high=None):
    """An int in [low, high) (high None: no upper bound)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value >= high):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} = {value} is out of range: it must be in {bound}")
    return value


def _check_logits(logits, time_major):
    """(contiguous batch-major logits for the kernels, B, T, C)."""
    time_major = _check_bool("time_major", time_major)
    logits = np.asarray(logits)
    if logits.ndim != 3:
        layout = "(T, B, C)" if time_major else "(B, T, C)"
        raise ValueError(f"logits must have rank 3 {layout}, got shape {logits.shape}")
    if logits.dtype not in (np.float32, np.float64):
        raise ValueError(f"logits must be float32 or float64, got dtype {logits.dtype}")
    # The kernels read one sequence per thread: batch-major and contiguous (one copy
    # for time-major input, and one compiled version of each kernel per dtype).
    logits = np.ascontiguousarray(logits.transpose(1, 0, 2) if time_major else logits)
    B, T, C = logits.shape
    if C < 1:
        raise ValueError(f"logits must have at least one class (the blank), got shape {logits.shape}")
    return logits, B, T, C


def _check_lengths(name, lengths, B, limit, limit_name):
    """(B,) int64 in [0, limit]; None means limit everywhere."""
    if lengths is None:
        return np.full(B, limit, np.int64)
    arr = np.asarray(lengths)
    if arr.shape != (B,):
        raise ValueError(f"{name} must have shape ({B},), got {arr.shape}")
    if B and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = np.flatnonzero((arr < 0) | (arr > limit))
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"{name}[{b}] = {arr[b]} is out of range: it must be in [0, {limit}] ({limit_name})")
    return arr


def _check_finite(logits, logit_lengths, time_major):
    """Logits must be finite at every valid step (padding is never read)."""
    B, T, _ = logits.shape
    bad = ~np.isfinite(logits)
    if not bad.any():
        return
    bad &= (np.arange(T)[None, :] < logit_lengths[:, None])[:, :, None]
    if bad.any():
        b, t, k = (int(i) for i in np.argwhere(bad)[0])
        where = f"[{t}, {b}, {k}]" if time_major else f"[{b}, {t}, {k}]"
        raise ValueError(f"logits{where} = {logits[b, t, k]} (sequence {b}) is not finite")


def _check_decode_args(logits, logit_lengths, blank, time_major):
    logits, B, T, C = _check_logits(logits, time_major)
    blank = _check_int("blank", blank, 0, C)
    logit_lengths = _check_lengths("logit_lengths", logit_lengths, B, T, "the number of steps T")
    _check_finite(logits, logit_lengths, time_major)
    return logits, logit_lengths, blank, B, T, C


def check_labels(labels, label_lengths, B, C, blank, name="labels"):
    """(labels (B, S) int64, label_lengths (B,) int64): padded integer labels whose
    first label_lengths[b] entries in row b are classes in [0, C) other than
    ``blank``; label_lengths None means S everywhere. A list of label sequences of
    different lengths (what the decoders return) is padded, its lengths the label
    lengths. ValueError naming ``name`` and the sequence otherwise."""
    labels, label_lengths = _padded(labels, label_lengths, name)
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != B:
        raise ValueError(f"{name} must have shape (B, S) = ({B}, S), padded, got shape {labels.shape}")
    if labels.size and (labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"{name} must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    S = labels.shape[1]
    label_lengths = _check_lengths("label_lengths", label_lengths, B, S, f"the padded label length S of {name}")
    valid = np.arange(S)[None, :] < label_lengths[:, None]                   # (B, S)
    for bad, why in (((labels < 0) | (labels >= C)) & valid, f"is outside [0, {C})"), \
                    ((labels == blank) & valid, f"equals blank = {blank}"):
        if bad.any():
            b, s = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name}[{b}, {s}] = {labels[b, s]} (sequence {b}) {why}")
    return labels, label_lengths


def _padded(labels, label_lengths, name):
    """A list of label sequences of different lengths as (labels (B, S) padded with
    0, label lengths); anything else as given."""
    if not isinstance(labels, (list, tuple)) or not all(isinstance(row, (list, tuple, np.ndarray)) for row in labels):
        return labels, label_lengths
    rows = [np.asarray(row) for row in labels]
    row_lengths = np.array([row.shape[0] if row.ndim == 1 else -1 for row in rows], np.int64)
    if not rows or (row_lengths == row_lengths[0]).all():
        return labels, label_lengths        # one length: taken as an array (B, S)
    for b, row in enumerate(rows):
        if row.ndim != 1:
            raise ValueError(f"{name}[{b}] must be a sequence of labels, got shape {row.shape}")
        if row.size and (row.dtype == np.bool_ or not np.issubdtype(row.dtype, np.integer)):
            raise ValueError(f"{name}[{b}] must hold integers, got dtype {row.dtype}")
    if label_lengths is not None and not np.array_equal(np.asarray(label_lengths), row_lengths):
        raise ValueError(f"label_lengths = {np.asarray(label_lengths).tolist()} must be None or the lengths of "
                         f"the label sequences in {name}, {row_lengths.tolist()}")
    padded = np.zeros((len(rows), int(row_lengths.max())), np.int64)
    for b, row in enumerate(rows):
        padded[b, :row.shape[0]] = row
    return padded, row_lengths


def _check_loss_args(logits, labels, logit_lengths, label_lengths, blank, zero_infinity, time_major):
    logits, logit_lengths, blank, B, T, C = _check_decode_args(logits, logit_lengths, blank, time_major)
    zero_infinity = _check_bool("zero_infinity", zero_infinity)
    labels, label_lengths = check_labels(labels, label_lengths, B, C, blank)
    too_long = np.flatnonzero(label_lengths > logit_lengths)
    if too_long.size:
        b = int(too_long[0])
        raise ValueError(f"label_lengths[{b}] = {label_lengths[b]} exceeds logit_lengths[{b}] = {logit_lengths[b]}: "
                         f"sequence {b} has more labels than steps")
    return logits, labels, logit_lengths, label_lengths, blank, zero_infinity, B, T, C


# ----------------------------------------------------------------------------- loss

def _run_loss(logits, labels, logit_lengths, label_lengths, blank, zero_infinity, time_major, need_grad):
    logits, labels, logit_lengths, label_lengths, blank, zero_infinity, B, T, C = _check_loss_args(
        logits, labels, logit_lengths, label_lengths, blank, zero_infinity, time_major)
    dtype = logits.dtype
    L = 2 * int(label_lengths.max(initial=0)) + 1
    losses = np.empty(B, np.float64)                                    # (B,)
    dlogits = np.empty((B, T if need_grad else 0, C), dtype)           # (B, T, C)
    ws = _workspaces
    ctc_loss_and_grad(dlogits, losses,
                      ws.take("alpha", (B, max(T, 1), L), np.float64),    # (B, T, L)
                      ws.take("beta", (B, 2, L), np.float64),             # (B, 2, L)
                      ws.take("probs", (B, max(T, 1), C), np.float64),    # (B, T, C)
                      ws.take("log_z", (B, max(T, 1)), np.float64),       # (B, T)
                      ws.take("occupancy", (B, C), np.float64),           # (B, C)
                      logits, labels, logit_lengths, label_lengths, blank, zero_infinity, need_grad)
    if not need_grad:
        return losses.astype(dtype), None
    if time_major:
        dlogits = np.ascontiguousarray(dlogits.transpose(1, 0, 2))   # (T, B, C)
    return losses.astype(dtype), dlogits


def loss_and_grad(logits, labels, logit_lengths, label_lengths, blank=0, zero_infinity=False, *,
                  time_major=False):
    """Per-sequence CTC negative log-likelihood and its gradient with respect to the logits.

    Args:
        logits: (B, T, C) float32 or float64 unnormalised scores ((T, B, C) with
            time_major=True); a softmax over C is applied inside.
        labels: (B, S) int, padded; labels[b, :label_lengths[b]] in [0, C), none equal to blank.
            Or a list of B label sequences of different lengths (as the decoders
            return them), padded here; label_lengths is then None or their lengths.
        logit_lengths: (B,) int in [0, T], or None for T.
        label_lengths: (B,) int in [0, min(S, logit_lengths[b])], or None for S.
        blank: index of the blank class in [0, C).
        zero_infinity: report 0 instead of inf for sequences that no alignment fits.

    Returns:
        loss: (B,) of the logits' dtype: -log p(labels[b] | logits[b]), inf when the
            labels cannot be aligned (repeats need a blank between them), or 0 then
            with zero_infinity.
        dlogits: (B, T, C) (or (T, B, C)) of the logits' dtype: d loss[b] / d logits[b],
            softmax folded in; 0 at steps t >= logit_lengths[b] and for infinite or
            zeroed losses.

    Raises:
        ValueError naming the argument, the sequence and the value: wrong rank or shape,
        non-finite logits, lengths out of range, more labels than steps, labels equal to
        blank or outside [0, C), blank outside [0, C).

    Notes:
        Graves et al. 2006, "Connectionist Temporal Classification": forward-backward
        recursion on probabilities rescaled at every step (in log space for a sequence
        whose probabilities leave float64's range), float64 inside for every input dtype. Matches
        ``torch.nn.functional.ctc_loss(logits.log_softmax(-1), ..., reduction='none')``.
    """
    return _run_loss(logits, labels, logit_lengths, label_lengths, blank, zero_infinity, time_major, True)


def loss(logits, labels, logit_lengths, label_lengths, blank=0, zero_infinity=False, *, time_major=False):
    """Per-sequence CTC negative log-likelihood (B,), without the gradient; arguments as
    :func:`loss_and_grad`."""
    return _run_loss(logits, labels, logit_lengths, label_lengths, blank, zero_infinity, time_major, False)[0]


# ----------------------------------------------------------------------------- decoding

def _label_lists(out_labels, out_lengths):
    return [[int(v) for v in out_labels[b, :out_lengths[b]]] for b in range(out_labels.shape[0])]


def greedy_decode(logits, logit_lengths=None, blank=0, *, time_major=False):
    """Best-path decoding: the most probable class at each valid step, repeats collapsed,
    blanks dropped (Graves et al. 2006, section 3.2).

    Args:
        logits: (B, T, C) ((T, B, C) with time_major=True).  logit_lengths: (B,) int or None.
        blank: index of the blank class.

    Returns:
        (labels, scores): a list of B label lists, and (B,) float64: the log-probability
        of each best path, sum_t max_k log softmax(logits[b, t]). Ties go to the lowest class.
    """
    logits, logit_lengths, blank, B, T, C = _check_decode_args(logits, logit_lengths, blank, time_major)
    out_labels = np.empty((B, T), np.int64)
    out_lengths = np.empty(B, np.int64)
    scores = np.empty(B, np.float64)
    ctc_greedy_decode(out_labels, out_lengths, scores, logits, logit_lengths, blank)
    return _label_lists(out_labels, out_lengths), scores


def beam_decode(logits, logit_lengths=None, beam=16, blank=0, *, time_major=False):
    """Prefix beam search: the most probable labelling among those the search keeps.

    Args:
        logits: (B, T, C) ((T, B, C) with time_major=True).  logit_lengths: (B,) int or None.
        beam: number of prefixes kept at each step (>= 1).  blank: index of the blank class.

    Returns:
        (labels, scores): a list of B label lists, and (B,) float64: log of the total
        probability of each returned labelling over the paths the search kept (its
        exact log p(labels | x) when the beam never had to drop a prefix).

    Notes:
        Graves 2012, "Supervised Sequence Labelling with Recurrent Neural Networks",
        section 7.5; Hannun et al. 2014. Each prefix carries the probability of its
        paths ending in a blank and ending in its last label; paths that collapse to
        the same prefix are merged.
    """
    logits, logit_lengths, blank, B, T, C = _check_decode_args(logits, logit_lengths, blank, time_major)
    K = _check_int("beam", beam, 1)
    nodes = 1 + T * K
    ws = _workspaces
    out_labels = np.empty((B, T), np.int64)
    out_lengths = np.empty(B, np.int64)
    scores = np.empty(B, np.float64)
    ctc_beam_decode(out_labels, out_lengths, scores,
                    ws.take("beam_node", (B, K), np.int64),
                    ws.take("beam_pb", (B, K), np.float64),
                    ws.take("beam_pnb", (B, K), np.float64),
                    ws.take("new_node", (B, K), np.int64),
                    ws.take("new_pb", (B, K), np.float64),
                    ws.take("new_pnb", (B, K), np.float64),
                    ws.take("stay_pb", (B, K), np.float64),
                    ws.take("stay_pnb", (B, K), np.float64),
                    ws.take("extends_to", (B, K, C), np.int64),        # (B, K, C)
                    ws.take("top_score", (B, K), np.float64),
                    ws.take("top_src", (B, K), np.int64),
                    ws.take("top_label", (B, K), np.int64),
                    ws.take("log_probs", (B, C), np.float64),          # (B, C)
                    ws.take("node_parent", (B, nodes), np.int64),      # (B, 1 + T K)
                    ws.take("node_label", (B, nodes), np.int64),
                    ws.take("node_length", (B, nodes), np.int64),
                    ws.take("node_hash", (B, nodes), np.int64),
                    logits, logit_lengths, blank)
    return _label_lists(out_labels, out_lengths), scores


# ----------------------------------------------------------------------------- metrics

def _as_sequences(name, seqs):
    try:
        return [[int(v) for v in s] for s in seqs]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of label sequences of integers") from None


def edit_distance(a, b):
    """Levenshtein distance between two label sequences (insertions, deletions and
    substitutions, each costing 1)."""
    a, b = list(a), list(b)
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diag, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (x != y))
    return row[-1]


def _paired(predictions, references):
    predictions = _as_sequences("predictions", predictions)
    references = _as_sequences("references", references)
    if len(predictions) != len(references):
        raise ValueError(f"predictions has {len(predictions)} sequences but references has {len(references)}")
    return predictions, references


def label_error_rate(predictions, references):
    """Total edit distance over total reference length (the label, or character, error
    rate): sum_b edit_distance(predictions[b], references[b]) / sum_b len(references[b]).

    predictions, references: sequences of B label sequences. Returns a float; 0.0 when
    there is nothing to compare, inf when every reference is empty but a prediction is not.
    """
    predictions, references = _paired(predictions, references)
    edits = sum(edit_distance(p, r) for p, r in zip(predictions, references))
    total = sum(len(r) for r in references)
    if total == 0:
        return 0.0 if edits == 0 else float("inf")
    return edits / total


def sequence_accuracy(predictions, references):
    """Fraction of sequences decoded exactly: mean over b of [predictions[b] == references[b]].

    predictions, references: sequences of B label sequences (B >= 1). Returns a float.
    """
    predictions, references = _paired(predictions, references)
    if not references:
        raise ValueError("sequence_accuracy needs at least one sequence, got none")
    return sum(p == r for p, r in zip(predictions, references)) / len(references)

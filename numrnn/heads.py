"""Output heads: what is read from the top recurrent layer, and the loss.

A head is a spec (its hyperparameters) with methods that take the model's
parameter and gradient views ``p`` and ``g`` ({"W": (D, n), "b": (n,)}).
``out`` is the top layer's output, time-major (T, B, D); its first ``split``
features come from the forward direction, the rest from the backward one.
``loss_and_grad`` returns the loss and dL/d(out); Classify and Regress write the
latter into ``last_step_grad``, a model's LastStepGrad (the other heads ignore it).
``check_targets`` checks y against the lengths; ``dtype``, the model's, matters to
Regress only, whose targets must stay finite in it.
"""
from dataclasses import dataclass

import numpy as np

from . import ctc
from .cells import plain_values
from .kernels.losses import linear_softmax, softmax_cross_entropy, squared_error
from .params import glorot_uniform


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def last_step_features(out, lengths, split):
    """(B, D): forward features at step lengths[b]-1, backward features at step 0
    (where the backward direction has read the whole sequence)."""
    rows = np.arange(out.shape[1])
    return np.concatenate([out[lengths - 1, rows, :split], out[0, :, split:]], axis=1)


class LastStepGrad:
    """dL/d(out) (T, B, D) of a head that reads only last_step_features: zero but at
    the steps they come from. A model keeps one between calls: the array is zeroed
    when its shape changes, and each call clears the steps the call before wrote
    instead of zeroing all of it (a row-MNIST step spent 0.3-0.5 ms zeroing 1.8 MB
    of memory the kernels had just pushed out of the caches)."""

    def __init__(self):
        self.dout = None
        self.written = None         # (lengths, split) of the call before

    def __call__(self, dfeatures, lengths, split, T):
        """Scatter dL/d(features) (B, D) back to dL/d(out); returns the (T, B, D)
        array, valid until the next call."""
        B, D = dfeatures.shape
        rows = np.arange(B)
        if self.dout is None or self.dout.shape != (T, B, D) or self.dout.dtype != dfeatures.dtype:
            self.dout = np.zeros((T, B, D), dfeatures.dtype)
        elif self.written is not None:
            lengths_before, split_before = self.written
            self.dout[lengths_before - 1, rows, :split_before] = 0.0
            self.dout[0, :, split_before:] = 0.0
        self.dout[lengths - 1, rows, :split] = dfeatures[:, :split]
        self.dout[0, :, split:] += dfeatures[:, split:]
        self.written = (lengths.copy(), split)
        return self.dout


class _LinearHead:
    """Shared by the heads: a linear map D -> n with Glorot-uniform W and zero b."""

    def param_shapes(self, D):
        return {"W": (D, self.n), "b": (self.n,)}

    def initialise(self, p, rng):
        p["W"][:] = glorot_uniform(rng, p["W"].shape, p["W"].dtype)
        p["b"][:] = 0.0

    @staticmethod
    def linear_grads(g, features, dlogits):
        g["W"] += features.T @ dlogits
        g["b"] += dlogits.sum(axis=0)

    @staticmethod
    def require_nonempty(lengths):
        if lengths.size and lengths.min() < 1:
            b = int(np.argmin(lengths))
            raise ValueError(f"lengths[{b}] is 0, but this head reads the last step: every length must be >= 1")


@dataclass(frozen=True)
class Classify(_LinearHead):
    """Classify each sequence from its last valid output; mean softmax cross-entropy.
    Targets: int labels (B,) in [0, n)."""
    n: int

    def __post_init__(self):
        plain_values(self)
        _positive_int("n", self.n)

    def check_targets(self, y, lengths, T, label_lengths=None, dtype=np.float64):
        self.require_nonempty(lengths)
        return _check_labels(y, (lengths.shape[0],), self.n, "y")

    def loss_and_grad(self, p, g, out, y, lengths, split, need_grad=True, last_step_grad=None):
        features = last_step_features(out, lengths, split)
        logits = features @ p["W"] + p["b"]
        B = logits.shape[0]
        dlogits = np.empty_like(logits)
        losses = np.empty(B, logits.dtype)
        softmax_cross_entropy.for_elements(logits.size)(dlogits, losses, logits, y, 1.0 / B)
        loss = float(losses.sum(dtype=np.float64) / B)
        if not need_grad:
            return loss, None
        self.linear_grads(g, features, dlogits)
        return loss, (last_step_grad or LastStepGrad())(dlogits @ p["W"].T, lengths, split, out.shape[0])

    def predict(self, p, out, lengths, split):
        """Class probabilities (B, n)."""
        self.require_nonempty(lengths)
        return self.predict_features(p, last_step_features(out, lengths, split))

    @staticmethod
    def predict_features(p, features):
        """Class probabilities (B, n) from the last-step features (B, D)."""
        probs = np.empty((features.shape[0], p["b"].shape[0]), features.dtype)
        linear_softmax.for_rows(probs.shape[0])(probs, features, p["W"], p["b"])
        return probs


@dataclass(frozen=True)
class Tag(_LinearHead):
    """Classify every valid step: label y[b, t] is scored by the logits at step
    t + delay, for t + delay < lengths[b]; loss = mean cross-entropy over those.
    Targets: int labels (B, T); positions that are never scored may hold anything."""
    n: int
    delay: int = 0

    def __post_init__(self):
        plain_values(self)
        _positive_int("n", self.n)
        if isinstance(self.delay, bool) or not isinstance(self.delay, (int, np.integer)) or self.delay < 0:
            raise ValueError(f"delay must be a non-negative integer, got {self.delay!r}")

    def scored_positions(self, lengths, T):
        """(steps, rows): every (t + delay, b) whose label is scored, step-major."""
        steps, rows = np.nonzero(np.arange(T)[:, None] < lengths[None, :])
        keep = steps >= self.delay
        return steps[keep], rows[keep]

    def check_targets(self, y, lengths, T, label_lengths=None, dtype=np.float64):
        y = _check_array_shape(y, (lengths.shape[0], T), "y")
        steps, rows = self.scored_positions(lengths, T)
        _check_labels(y[rows, steps - self.delay], None, self.n, "y")
        return y.astype(np.int64, copy=False)

    def loss_and_grad(self, p, g, out, y, lengths, split, need_grad=True, last_step_grad=None):
        T = out.shape[0]
        steps, rows = self.scored_positions(lengths, T)
        N = steps.size
        if N == 0:
            return 0.0, (np.zeros_like(out) if need_grad else None)
        features = out[steps, rows]                               # (N, D)
        logits = features @ p["W"] + p["b"]
        dlogits = np.empty_like(logits)
        losses = np.empty(N, logits.dtype)
        softmax_cross_entropy.for_elements(logits.size)(dlogits, losses, logits,
                                                        np.ascontiguousarray(y[rows, steps - self.delay]), 1.0 / N)
        loss = float(losses.sum(dtype=np.float64) / N)
        if not need_grad:
            return loss, None
        self.linear_grads(g, features, dlogits)
        dout = np.zeros_like(out)
        dout[steps, rows] = dlogits @ p["W"].T
        return loss, dout

    def predict(self, p, out, lengths, split):
        """Per-step class probabilities (T, B, n), 0 at padded steps. The output at
        step s is the prediction for the label of step s - delay."""
        T, B, D = out.shape
        probs = np.empty((T * B, self.n), out.dtype)
        linear_softmax.for_rows(probs.shape[0])(probs, out.reshape(T * B, D), p["W"], p["b"])
        probs = probs.reshape(T, B, self.n)
        probs[np.arange(T)[:, None] >= lengths[None, :]] = 0.0
        return probs


@dataclass(frozen=True)
class Regress(_LinearHead):
    """Regress k values from each sequence's last valid output; mean squared error
    over the batch and the k outputs. Targets: floats (B, k)."""
    n: int

    def __post_init__(self):
        plain_values(self)
        _positive_int("n", self.n)

    def check_targets(self, y, lengths, T, label_lengths=None, dtype=np.float64):
        self.require_nonempty(lengths)
        y = _check_array_shape(y, (lengths.shape[0], self.n), "y")
        if y.dtype.kind not in "fiu":
            raise ValueError(f"y must hold real numbers, got dtype {y.dtype}")
        y = np.asarray(y, dtype=np.float64)
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(y.astype(dtype))       # 1e300 is inf in a float32 model
        if bad.any():
            b, k = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"y[{b}, {k}] = {y[b, k].item()!r} is not finite in the model's dtype {np.dtype(dtype)}")
        return y

    def loss_and_grad(self, p, g, out, y, lengths, split, need_grad=True, last_step_grad=None):
        features = last_step_features(out, lengths, split)
        pred = features @ p["W"] + p["b"]
        B, K = pred.shape
        dpred = np.empty_like(pred)
        errors = np.empty(B, pred.dtype)
        squared_error.for_elements(pred.size)(dpred, errors, pred, y.astype(pred.dtype), 1.0 / (B * K))
        loss = float(errors.sum(dtype=np.float64) / (B * K))
        if not need_grad:
            return loss, None
        self.linear_grads(g, features, dpred)
        return loss, (last_step_grad or LastStepGrad())(dpred @ p["W"].T, lengths, split, out.shape[0])

    def predict(self, p, out, lengths, split):
        """Predicted values (B, k)."""
        self.require_nonempty(lengths)
        return self.predict_features(p, last_step_features(out, lengths, split))

    @staticmethod
    def predict_features(p, features):
        """Predicted values (B, k) from the last-step features (B, D)."""
        return features @ p["W"] + p["b"]


@dataclass(frozen=True)
class CTC(_LinearHead):
    """Connectionist temporal classification (Graves et al. 2006) over every valid step.

    Logits at every step are a linear map of the top output (bidirectional: the
    concatenation [fw, bw] of that step) onto C = n_labels + 1 classes; the loss is
    the mean over the batch of each sequence's CTC negative log-likelihood
    -log p(y[b, :label_lengths[b]] | x[b, :lengths[b]]) (``numrnn.ctc.loss_and_grad``).

    Classes: the indices 0..n_labels; ``blank`` is one of them and the labels are
    the n_labels others. blank=0 (the default) makes the labels 1..n_labels;
    blank=n_labels makes them 0..n_labels-1.

    Targets: ``y`` int (B, S), padded (entries at s >= label_lengths[b] may hold
    anything), with ``label_lengths`` (B,) int in [0, S] given to the model's
    ``loss`` / ``loss_and_grad`` (None: every sequence has S labels); or a list of
    label lists of different lengths, as ``predict`` returns them. Lengths 0 are
    allowed (an empty sequence with no labels has loss 0). A labelling that needs
    more steps than ``lengths[b]`` (its labels plus a blank between each pair of
    equal neighbours) is a ValueError, as are labels equal to blank or outside
    [0, C); each names the sequence.

    ``predict`` decodes: a list of B label lists (blanks dropped, repeats
    collapsed), greedy best path by default or prefix beam search with ``beam=N``.
    """
    n_labels: int
    blank: int = 0

    def __post_init__(self):
        plain_values(self)
        _positive_int("n_labels", self.n_labels)
        if isinstance(self.blank, bool) or not isinstance(self.blank, (int, np.integer)) \
                or not 0 <= self.blank <= self.n_labels:
            raise ValueError(f"blank must be an integer in [0, n_labels] = [0, {self.n_labels}], "
                             f"got {self.blank!r}")

    @property
    def n(self):
        """Number of classes C = n_labels + 1 (the blank included)."""
        return self.n_labels + 1

    def check_targets(self, y, lengths, T, label_lengths=None, dtype=np.float64):
        """(labels (B, S) int64, label_lengths (B,) int64), checked against ``lengths``."""
        y, label_lengths = ctc.check_labels(y, label_lengths, lengths.shape[0], self.n, self.blank, "y")
        valid = np.arange(y.shape[1])[None, :] < label_lengths[:, None]          # (B, S)
        # Each label takes a step, and equal neighbours need a blank step between them.
        repeats = ((y[:, 1:] == y[:, :-1]) & valid[:, 1:]).sum(axis=1)
        needed = label_lengths + repeats
        short = np.flatnonzero(needed > lengths)
        if short.size:
            b = int(short[0])
            raise ValueError(f"label_lengths[{b}] = {label_lengths[b]} labels need at least {needed[b]} steps "
                             f"(one per label and a blank between equal neighbours), but lengths[{b}] = "
                             f"{lengths[b]}: sequence {b} has more labels than its steps can hold")
        return y, label_lengths

    def logits(self, p, out):
        """Time-major logits (T, B, C) of the top output ``out`` (T, B, D)."""
        T, B, D = out.shape
        return (out.reshape(T * B, D) @ p["W"] + p["b"]).reshape(T, B, self.n)

    def loss_and_grad(self, p, g, out, y, lengths, split, need_grad=True, last_step_grad=None):
        labels, label_lengths = y
        logits = self.logits(p, out)                                   # (T, B, C)
        T, B, D = out.shape
        args = (logits, labels, lengths, label_lengths, self.blank)
        if not need_grad:
            return float(ctc.loss(*args, time_major=True).sum(dtype=np.float64) / B), None
        losses, dlogits = ctc.loss_and_grad(*args, time_major=True)   # dlogits (T, B, C), 0 at padded steps
        loss = float(losses.sum(dtype=np.float64) / B)
        dlogits *= dlogits.dtype.type(1.0 / B)
        self.linear_grads(g, out.reshape(T * B, D), dlogits.reshape(T * B, self.n))
        return loss, dlogits @ p["W"].T                                # (T, B, D)

    def predict(self, p, out, lengths, split, beam=None):
        """Decoded label lists, one per sequence: greedy best path (beam None) or
        prefix beam search keeping ``beam`` prefixes."""
        logits = self.logits(p, out)
        if beam is None:
            return ctc.greedy_decode(logits, lengths, blank=self.blank, time_major=True)[0]
        return ctc.beam_decode(logits, lengths, beam=beam, blank=self.blank, time_major=True)[0]


HEADS = {"Classify": Classify, "Tag": Tag, "Regress": Regress, "CTC": CTC}


def _check_array_shape(y, shape, name):
    y = np.asarray(y)
    if y.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {y.shape}")
    return y


def _check_labels(y, shape, n, name):
    """Integer class labels in [0, n); shape checked unless None."""
    y = np.asarray(y)
    if shape is not None:
        y = _check_array_shape(y, shape, name)
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    bad = (y < 0) | (y >= n)
    if bad.any():
        raise ValueError(f"{name} holds label {y[bad].flat[0].item()!r} outside [0, {n})")
    return y.astype(np.int64)

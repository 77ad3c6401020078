"""Inference: forward-only prediction and step-by-step streaming.

```python
model = nr.load("runs/smnist/model.npz")
probs = model.predict(x, lengths)           # (B, T, F) -> (B, 10); several threads may call it at once

stream = model.stream(batch_size=1)         # unidirectional models
for x_t in sensor:                          # x_t (1, F)
    probs = stream.step(x_t)                # the prediction for the sequence read so far
saved = stream.state                        # {"layers.0.fw.h": (1, H), ...}: copies
stream.state = saved                        # resume from it (missing keys are zeros)
stream.reset()                              # back to the zero state
```

``predict`` runs the forward-only kernels (``rnn_infer``, ``lstm_infer``,
``gru_infer``, ``gru_ra_infer``): the same per-row step functions as the training
kernels, keeping one step of state and of gate activations instead of every step's.
A unidirectional model runs all its layers in lockstep over chunks of ``CHUNK``
steps (one input-projection GEMM per chunk and layer), so its memory is
O(CHUNK * B * H) whatever T is, plus the top layer's outputs (T, B, D) when the head
reads every step (Tag, CTC); Classify and Regress read only each sequence's final
state, which is its output at step ``lengths[b] - 1``. A bidirectional model must
finish a layer's backward direction before the next layer can start, so it keeps one
layer's outputs (T, B, D) at a time, still without gate activations.

A batch of fewer than ``2 * threads.MIN_SLAB_ROWS`` rows runs on one thread (the
kernels' serial builds): for a batch of one, starting the thread pool every step
would cost more than the step.

A ``Stream`` binds each layer's kernel call, and Classify's head, to its buffers
once: a batch-1 step of an LSTM-128 costs little more than its two matrix-vector
products (about 13 us, of which 5 in the kernel).

Every call allocates its own state and workspaces, and the model's parameters are
only read: any number of threads may call ``predict`` on one model at once. A
``Stream`` owns its state; use one stream per thread.
"""
import functools

import numpy as np

from . import heads as heads_module
from .kernels.common import first_non_finite, reverse_within_lengths
from .kernels.gru import gru_infer, gru_ra_infer
from .kernels.losses import linear_softmax
from .kernels.lstm import lstm_infer
from .kernels.rnn import rnn_infer
from .layers import GRU_LN_GAINS, GRU_LN_SHIFTS, GRULayer, GRUResetAfterLayer, LSTMLayer, RNNLayer
from .memory import workspace_arrays
from .threads import slabs_for

__all__ = ["predict", "Stream", "CHUNK"]

CHUNK = 32      # steps per kernel call: bounds the input-projection workspace to CHUNK * B * G


# ----------------------------------------------------------------------------- one direction of one layer

class _Runner:
    """One direction of one layer, forward only, for B rows: the state (2, B, size)
    per state name (row 0 holds it between calls) and workspaces for up to
    ``chunk`` steps. Reads the layer's parameter views; owns everything it writes."""

    def __init__(self, layer, B, chunk):
        self.layer, self.B, self.chunk = layer, B, chunk
        self.n_slabs = slabs_for(B)             # the thread count when the runner is made
        dtype = self.dtype = layer.dtype
        self.state = {name: np.zeros((2, B, size), dtype) for name, size in layer.state_sizes.items()}
        self.ones = np.ones((1, B, layer.output_size), dtype)
        self.y = np.zeros((chunk, B, layer.output_size), dtype)         # (chunk, B, R)
        self.ws = workspace_arrays(self._workspaces(layer, B, chunk), dtype)
        self._setup(layer)

    def get_state(self):
        return {name: s[0].copy() for name, s in self.state.items()}

    def set_state(self, values):
        for name, s in self.state.items():
            s[0] = values[name]

    def run(self, x, lengths, t0):
        """x: (n, B, F) time-major, n <= chunk, steps t0 .. t0+n-1. Returns the
        outputs (n, B, R), a view of a buffer the next call overwrites."""
        y = self.y[:x.shape[0]]
        self.kernel(*self._args(y, x, lengths, np.int64(t0)))
        return y

    def bind_step(self, x, lengths):
        """The kernel call for one step, with every argument bound: x (1, B, F) and
        lengths (B,) are buffers the caller fills before each call, the outputs go
        to ``self.y[0]``. Saves a streaming step the cost of gathering arguments."""
        return functools.partial(self.kernel.for_rows(self.B), *self._args(self.y[:1], x, lengths, np.int64(0)))


class _RNN(_Runner):
    kernel = rnn_infer

    @staticmethod
    def _workspaces(layer, B, chunk):
        H = layer.hidden
        return {"z": (chunk, B, H), "rec": (B, H)}

    def _setup(self, layer):
        self.relu = layer.spec.activation == "relu"

    def _args(self, y, x, lengths, t0):
        p, ws = self.layer.p, self.ws
        return (y, self.state["h"], x, p["W"], p["U"], p["b"], lengths, t0, self.relu, ws["z"][:x.shape[0]],
                ws["rec"], self.ones, self.n_slabs)


class _LSTM(_Runner):
    kernel = lstm_infer

    @staticmethod
    def _workspaces(layer, B, chunk):
        H, R, spec = layer.hidden, layer.output_size, layer.spec
        ln = 5 if spec.layer_norm else 0
        return {"gates": (chunk, B, 4 * H), "tanh_c": (B, H), "m": (B, H if spec.proj else 0),
                "c_pre": (B, H if spec.cell_clip else 0), "r_pre": (B, R if spec.proj_clip else 0),
                "ln_hat": (B, ln * H), "ln_rstd": (B, ln), "rec": (B, 4 * H)}

    def _setup(self, layer):
        self.packed = layer._packed()          # (peep, P, ln_gain, ln_shift, cell_clip, proj_clip): copies
        self.b = layer._empty_bias() if layer.spec.layer_norm else layer.p["b"]
        self.forget_bias = layer.dtype.type(layer.spec.forget_bias)

    def _args(self, y, x, lengths, t0):
        p, ws = self.layer.p, self.ws
        peep, P, ln_gain, ln_shift, cell_clip, proj_clip = self.packed
        return (y, self.state["h"], self.state["c"], ws["gates"][:x.shape[0]], ws["tanh_c"], ws["m"], ws["c_pre"],
                ws["r_pre"], ws["ln_hat"], ws["ln_rstd"], x, p["W"], p["U"], self.b, peep, P, ln_gain, ln_shift,
                self.ones, lengths, t0, self.forget_bias, cell_clip, proj_clip, ws["rec"], self.n_slabs)


class _GRU(_Runner):
    kernel = gru_infer

    @staticmethod
    def _workspaces(layer, B, chunk):
        H = layer.hidden
        ln = 3 if layer.spec.layer_norm else 0
        return {"gates": (chunk, B, 2 * H), "cand": (chunk, B, H), "rh": (B, H), "ln_hat": (B, ln * H),
                "ln_rstd": (B, ln), "rec_g": (B, 2 * H), "rec_c": (B, H)}

    def _setup(self, layer):
        ln = layer.spec.layer_norm
        self.b_g, self.b_c = layer._biases(layer.p)
        self.ln_gain, self.ln_shift = layer._stacked(GRU_LN_GAINS, ln), layer._stacked(GRU_LN_SHIFTS, ln)

    def _args(self, y, x, lengths, t0):
        p, ws, n = self.layer.p, self.ws, x.shape[0]
        return (y, self.state["h"], ws["gates"][:n], ws["cand"][:n], ws["rh"], ws["ln_hat"], ws["ln_rstd"], x,
                p["W_g"], p["U_g"], self.b_g, p["W_c"], p["U_c"], self.b_c, self.ln_gain, self.ln_shift,
                self.ones, lengths, t0, ws["rec_g"], ws["rec_c"], self.n_slabs)


class _GRUResetAfter(_Runner):
    kernel = gru_ra_infer

    @staticmethod
    def _workspaces(layer, B, chunk):
        H = layer.hidden
        return {"gates": (chunk, B, 3 * H), "q_c": (B, H), "rec": (B, 3 * H)}

    def _setup(self, layer):
        pass

    def _args(self, y, x, lengths, t0):
        p, ws = self.layer.p, self.ws
        return (y, self.state["h"], ws["gates"][:x.shape[0]], ws["q_c"], x, p["W"], p["U"], p["b_x"], p["b_h"],
                self.ones, lengths, t0, ws["rec"], self.n_slabs)


_RUNNERS = {RNNLayer: _RNN, LSTMLayer: _LSTM, GRULayer: _GRU, GRUResetAfterLayer: _GRUResetAfter}


def _runner(layer, B, chunk):
    return _RUNNERS[type(layer)](layer, B, chunk)


# ----------------------------------------------------------------------------- whole sequences

def _run_direction(runner, x, lengths, T_run, out):
    """Run one direction over x[:T_run] (time-major) in chunks, writing its
    outputs into out[:T_run] (out None: outputs not kept)."""
    for t0 in range(0, T_run, runner.chunk):
        y = runner.run(x[t0:t0 + runner.chunk], lengths, t0)
        if out is not None:
            out[t0:t0 + y.shape[0]] = y


def _unidirectional(model, x, lengths, T_run, keep_outputs, chunk):
    """All layers in lockstep, chunk by chunk. Returns (top outputs (T, B, D) or
    None, top final state h (B, D))."""
    T, B, _ = x.shape
    runners = [_runner(level["fw"], B, min(chunk, max(T_run, 1))) for level in model.layers]
    out = np.zeros((T, B, model.output_size), model.dtype) if keep_outputs else None
    for t0 in range(0, T_run, runners[0].chunk):
        inp = x[t0:t0 + runners[0].chunk]
        for runner in runners:
            inp = runner.run(inp, lengths, t0)
        if out is not None:
            out[t0:t0 + inp.shape[0]] = inp
    return out, runners[-1].state["h"][0]


def _bidirectional(model, x, lengths, T_run, keep_outputs, chunk):
    """Layer by layer: each direction over the whole sequence (bw on the sequence
    reversed within its length), outputs concatenated [fw, bw]. Returns (top
    outputs (T, B, D) or None, top final states [fw h, bw h] (B, D))."""
    T, B, _ = x.shape
    inp = x
    for k, level in enumerate(model.layers):
        top = k == len(model.layers) - 1
        outs, finals = [], []
        for d, layer in level.items():
            runner = _runner(layer, B, min(chunk, max(T_run, 1)))
            keep = keep_outputs or not top
            out = np.zeros((T, B, layer.output_size), model.dtype) if keep else None
            src = inp if d == "fw" else reverse_within_lengths(np.empty_like(inp), inp, lengths)
            _run_direction(runner, src, lengths, T_run, out)
            if keep and d == "bw":
                out = reverse_within_lengths(np.empty_like(out), out, lengths)
            outs.append(out)
            finals.append(runner.state["h"][0])
        inp = np.concatenate(outs, axis=2) if outs[0] is not None else None
    return inp, np.concatenate(finals, axis=1)


def predict(model, x, lengths=None, time_major=False, beam=None, chunk=CHUNK):
    """What ``SequenceModel.predict`` returns, computed by the forward-only kernels.

    Args:
        model: a ``SequenceModel``.
        x: (B, T, F) numbers ((T, B, F) with ``time_major``), cast to the model's dtype.
        lengths: (B,) int in [0, T], None for all T.
        beam: CTC head only: prefix beam search keeping ``beam`` prefixes (None: greedy).
        chunk: steps per kernel call (memory O(chunk * B * H) for a unidirectional model).

    Returns:
        Classify: probabilities (B, n). Tag: per-step probabilities (B, T, n)
        ((T, B, n) with ``time_major``), 0 at padded steps. Regress: (B, k). CTC: a
        list of B label lists.

    Raises:
        ValueError naming the argument: x of the wrong rank, feature size or dtype
        (not numbers), non-finite x, lengths out of range, a length 0 for Classify or
        Regress, ``beam`` on a head other than CTC.
    """
    head = model.head
    if beam is not None and not isinstance(head, heads_module.CTC):
        raise ValueError(f"beam = {beam!r} applies only to the CTC head; this model's head is {head}")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    x, lengths = model._checked_input(x, lengths, time_major)
    per_step = isinstance(head, (heads_module.Tag, heads_module.CTC))
    if not per_step:
        head.require_nonempty(lengths)
    T_run = int(lengths.max())          # steps beyond every length only carry the state
    run = _bidirectional if model.bidirectional else _unidirectional
    out, final_h = run(model, x, lengths, T_run, per_step, int(chunk))
    p, split = model.head_params, model._split
    if not per_step:
        # The features the head reads (output at step lengths[b] - 1, and at step 0 for the
        # backward half) are the final state h.
        return head.predict_features(p, final_h)
    if beam is not None:
        return head.predict(p, out, lengths, split, beam=beam)
    pred = head.predict(p, out, lengths, split)
    if isinstance(head, heads_module.Tag) and not time_major:
        pred = np.ascontiguousarray(pred.transpose(1, 0, 2))
    return pred


# ----------------------------------------------------------------------------- streaming

class Stream:
    """Step-by-step inference of a unidirectional model over ``batch_size`` sequences.

    ``step(x_t)`` advances every sequence by one step and returns the head's output
    for that step: Classify, probabilities (B, n), and Regress, values (B, k), of the
    sequence read so far (what ``predict`` gives when the sequence ends here); Tag,
    probabilities (B, n) of this step (the prediction for the label of step
    ``t - delay``); CTC, log-probabilities (B, C) of this step (collected over the
    steps, ``(B, T, C)`` can go to ``nr.ctc.greedy_decode`` / ``beam_decode``, which
    give ``predict``'s decoding). ``output`` is the top layer's output of the last
    step (B, D), which equals ``model.forward``'s output at that step.

    ``step(x_t, active)`` with a bool mask (B,) advances only the active rows; the
    others keep their state and, as padded steps do, output 0 (Tag, CTC) or the
    prediction of the steps they read (Classify, Regress). Stepping row b while
    ``t < lengths[b]`` reproduces ``predict(x, lengths)``.

    ``state``: {"layers.k.fw.h": (B, R), "layers.k.fw.c": (B, H) for LSTM}, copies,
    the keys of ``model.forward``'s final state; assigning a dict (missing keys are
    zeros) sets it. ``reset()`` goes back to the zero state (or a given one). A
    stream is not shared between threads; ``copy()`` forks one.
    """

    def __init__(self, model, batch_size=1, initial_state=None):
        if model.bidirectional:
            raise ValueError("this model is bidirectional: its backward direction reads each sequence from "
                             "its end, so it cannot run step by step; use model.predict on whole sequences")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model
        self.batch_size = B = int(batch_size)
        self._runners = [_runner(level["fw"], B, 1) for level in model.layers]
        # The step's input and lengths (1 for the rows that advance) live in buffers
        # bound to the kernel calls once; each layer reads the outputs of the one below.
        self._x = np.zeros((1, B, model.input_size), model.dtype)
        self._lengths = np.ones(B, np.int64)
        self._all_active = True                     # self._lengths is all ones
        self._calls, inp = [], self._x
        for runner in self._runners:
            self._calls.append(runner.bind_step(inp, self._lengths))
            inp = runner.y[:1]
        self._top = inp                             # (1, B, D): the top layer's output of the last step
        if isinstance(model.head, heads_module.Classify):
            # Classify.predict_features on the top final state, bound like the layers.
            p = model.head_params
            self._probs = np.empty((B, model.head.n), model.dtype)
            self._classify = functools.partial(linear_softmax.for_rows(B), self._probs,
                                               self._runners[-1].state["h"][0], p["W"], p["b"])
        self.reset(initial_state)

    @property
    def state(self):
        return {f"layers.{k}.fw.{name}": value for k, runner in enumerate(self._runners)
                for name, value in runner.get_state().items()}

    @state.setter
    def state(self, value):
        if not isinstance(value, dict):
            raise ValueError(f"state must be a dict {{state name: (B, size) array}}, got {type(value).__name__}")
        try:
            full = self.model._initial_state(value, self.batch_size)   # checks keys, shapes, finiteness
        except ValueError as e:
            raise ValueError(str(e).replace("initial_state", "state", 1)) from None
        for k, runner in enumerate(self._runners):
            runner.set_state({name: full[f"layers.{k}.fw.{name}"] for name in runner.state})

    def reset(self, state=None):
        """Back to the zero state, or to ``state`` (a state dict; missing keys are zeros)."""
        self.state = state or {}
        self._top[:] = 0.0
        self.steps = 0

    def copy(self):
        """An independent stream in the same state."""
        other = Stream(self.model, self.batch_size, self.state)
        other._top[:] = self._top
        other.steps = self.steps
        return other

    @property
    def output(self):
        """The top recurrent layer's output of the last step, (B, D) (a copy)."""
        return self._top[0].copy()

    def step(self, x_t, active=None):
        """x_t: (B, F) numbers, one step of each sequence. active: None (all rows) or
        bool (B,). Returns the head's output for this step (see the class)."""
        B, F = self.batch_size, self.model.input_size
        x_t = np.asarray(x_t)
        if x_t.shape != (B, F):
            raise ValueError(f"x_t must have shape (batch_size, input_size) = ({B}, {F}), got shape {x_t.shape}")
        if x_t.dtype.kind not in "fiu":
            raise ValueError(f"x_t must hold numbers, got dtype {x_t.dtype}")
        if active is not None:
            active = np.asarray(active)
            if active.shape != (B,) or active.dtype != np.bool_:
                raise ValueError(f"active must be a bool array of shape ({B},), got {active.dtype} {active.shape}")
        x = self._x[0]
        x[:] = x_t                                  # in the model's dtype
        b, f = first_non_finite(x)
        if b >= 0:
            raise ValueError(f"x_t holds a non-finite value {float(x[b, f])!r} in row {b}")
        if active is not None or not self._all_active:
            self._lengths[:] = 1 if active is None else active
            self._all_active = active is None
        for call in self._calls:
            call()
        self.steps += 1
        return self._head_output(self._top, self._lengths)

    def _head_output(self, y, lengths):
        model, head = self.model, self.model.head
        if isinstance(head, heads_module.Classify):
            self._classify()
            return self._probs.copy()
        p, split = model.head_params, model._split
        if isinstance(head, heads_module.Tag):
            return head.predict(p, y, lengths, split)[0]
        if isinstance(head, heads_module.CTC):
            logits = head.logits(p, y)[0].astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            logp[lengths == 0] = 0.0
            return logp.astype(model.dtype)
        return head.predict_features(p, self._runners[-1].state["h"][0])

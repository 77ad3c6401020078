"""SequenceModel: stacked, optionally bidirectional recurrent layers and a head.

User-facing arrays are batch-major (B, T, F) unless ``time_major=True``;
internally everything is time-major (T, B, F).
"""
import numpy as np

from . import heads as heads_module
from . import infer
from .cells import Dropout
from .kernels.common import copy_finite, reverse_within_lengths
from .layers import make_layer
from .memory import workspace_arrays
from .params import ParamLayout

DTYPES = {np.dtype(np.float32), np.dtype(np.float64)}


class SequenceModel:
    """A stack of recurrent layers (TF MultiRNNCell) with a head.

    Args:
        input_size: features per step, F.
        layers: list of specs (``nr.RNN``, ``nr.LSTM``, ``nr.GRU``); sizes may differ.
        bidirectional: each layer runs a forward and a backward direction (the
            backward one reads each sequence reversed within its length) and
            outputs their concatenation [fw, bw].
        head: ``nr.heads.Classify(n)``, ``Tag(n, delay)``, ``Regress(k)`` or ``CTC(n_labels, blank)``.
        dropout: ``nr.Dropout(...)`` or None; applied by ``loss_and_grad(train=True)`` only.
        dtype: np.float32 (default) or np.float64.
        seed: seeds the initialisation and ``self.rng``, the generator of the
            dropout masks (its state is part of a training checkpoint).

    Initialisation: input kernels Glorot-uniform, recurrent kernels orthogonal
    per gate block, biases 0 except the TF GRUCell gate bias b_g = 1.0; the
    head's W Glorot-uniform, b 0.
    """

    def __init__(self, input_size, layers, bidirectional=False, head=None, dropout=None, dtype=np.float32,
                 seed=0):
        if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) or input_size < 1:
            raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(f"layers must be a non-empty list of cell specs, got {layers!r}")
        if not isinstance(bidirectional, bool):
            raise ValueError(f"bidirectional must be True or False, got {bidirectional!r}")
        if not isinstance(head, tuple(heads_module.HEADS.values())):
            raise ValueError(f"head must be nr.heads.Classify, Tag, Regress or CTC, got {head!r}")
        if dropout is not None and not isinstance(dropout, Dropout):
            raise ValueError(f"dropout must be nr.Dropout(...) or None, got {dropout!r}")
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")

        self.input_size = int(input_size)
        self.specs = list(layers)
        self.bidirectional = bidirectional
        self.head = head
        self.dropout = dropout
        self.dtype = dtype
        self.seed = int(seed)
        self.rng = np.random.default_rng([seed, 1])   # dropout masks; apart from the init stream
        self.dropout_masks = {}
        self._last_step_grad = heads_module.LastStepGrad()    # dL/d(out) of Classify and Regress
        self.directions = ("fw", "bw") if bidirectional else ("fw",)

        layout = ParamLayout()
        self.layers = []                     # one {direction: layer} per level
        size = self.input_size
        for k, spec in enumerate(self.specs):
            level = {d: make_layer(spec, size, dtype) for d in self.directions}
            for d, layer in level.items():
                for name, shape in layer.param_shapes().items():
                    layout.add(f"layers.{k}.{d}.{name}", shape)
            self.layers.append(level)
            size = level["fw"].output_size * len(self.directions)
        self.output_size = size
        for name, shape in head.param_shapes(size).items():
            layout.add(f"head.{name}", shape)

        self.layout = layout
        # On huge pages however small (memory.py): a prediction after the process sat
        # idle then finds the weights behind one or two TLB entries.
        buffers = workspace_arrays({"params": (layout.size,), "grads": (layout.size,)}, dtype, min_bytes=0)
        self.params, self.grads = buffers["params"], buffers["grads"]
        self._bind()
        self.initialise(seed)

    def _bind(self):
        pv, gv = self.layout.views(self.params), self.layout.views(self.grads)
        for k, level in enumerate(self.layers):
            for d, layer in level.items():
                prefix = f"layers.{k}.{d}."
                layer.bind({n[len(prefix):]: v for n, v in pv.items() if n.startswith(prefix)},
                           {n[len(prefix):]: v for n, v in gv.items() if n.startswith(prefix)})
        self.head_params = {n[5:]: v for n, v in pv.items() if n.startswith("head.")}
        self.head_grads = {n[5:]: v for n, v in gv.items() if n.startswith("head.")}

    def initialise(self, seed):
        """(Re)draw every parameter from ``np.random.default_rng(seed)``."""
        rng = np.random.default_rng(seed)
        for level in self.layers:
            for layer in level.values():
                layer.initialise(rng)
        self.head.initialise(self.head_params, rng)

    def named_params(self):
        """{name: view into params}, names as in DESIGN.md §4."""
        return self.layout.views(self.params)

    def named_grads(self):
        """{name: view into grads}, same names as named_params."""
        return self.layout.views(self.grads)

    @property
    def state_shapes(self):
        """{state name: (size,)} for every layer and direction (LSTM c: hidden, h: proj or hidden)."""
        return {f"layers.{k}.{d}.{s}": (size,)
                for k, level in enumerate(self.layers) for d, layer in level.items()
                for s, size in layer.state_sizes.items()}

    # ------------------------------------------------------------------ input checks

    def _prepare(self, x, lengths, initial_state, time_major):
        """Validate; return time-major x (T, B, F), int64 lengths (B,), full state dict."""
        x, lengths = self._checked_input(x, lengths, time_major)
        return x, lengths, self._initial_state(initial_state, x.shape[1])

    def _checked_input(self, x, lengths, time_major):
        """Validate; return time-major x (T, B, F) and int64 lengths (B,)."""
        if not isinstance(time_major, (bool, np.bool_)):
            raise ValueError(f"time_major must be True or False, got {time_major!r}")
        x = np.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"x must have rank 3 ({'(T, B, F)' if time_major else '(B, T, F)'}), "
                             f"got shape {x.shape}")
        if x.dtype.kind not in "fiu":          # float, signed or unsigned integer
            raise ValueError(f"x must hold numbers, got dtype {x.dtype}")
        if x.shape[2] != self.input_size:
            raise ValueError(f"x has {x.shape[2]} features per step, but input_size is {self.input_size}")
        steps = np.asarray(x if time_major else x.transpose(1, 0, 2), dtype=self.dtype)    # (T, B, F) view
        T, B, _ = steps.shape
        if T < 1 or B < 1:
            raise ValueError(f"x must hold at least one step and one sequence, got shape {x.shape}")
        x = np.empty(steps.shape, self.dtype)
        if not copy_finite(x, steps):
            raise_non_finite(x, "x")
        return x, check_lengths(lengths, B, T)

    def _initial_state(self, initial_state, B):
        shapes = self.state_shapes
        state = {name: np.zeros((B,) + shape, self.dtype) for name, shape in shapes.items()}
        if initial_state is not None and not isinstance(initial_state, dict):
            raise ValueError(f"initial_state must be a dict {{state name: (B, size) array}} with keys among "
                             f"{sorted(shapes)}, got {type(initial_state).__name__}")
        for name, value in (initial_state or {}).items():
            if name not in shapes:
                raise ValueError(f"initial_state has unknown key {name!r}; expected keys {sorted(shapes)}")
            value = np.asarray(value)
            if value.shape != (B,) + shapes[name]:
                raise ValueError(f"initial_state[{name!r}] must have shape {(B,) + shapes[name]}, "
                                 f"got {value.shape}")
            if value.dtype.kind not in "fiu":
                raise ValueError(f"initial_state[{name!r}] must hold real numbers, got dtype {value.dtype}")
            state[name][:] = value
            if not np.isfinite(state[name]).all():        # after the cast: 1e300 is inf in float32
                raise ValueError(f"initial_state[{name!r}] holds non-finite values (in {self.dtype})")
        return state

    # ------------------------------------------------------------------ passes

    def _forward(self, x, lengths, state, train=False):
        """Run every layer on time-major x; returns the top output (T, B, D).

        With ``train`` and dropout, masks are drawn from ``self.rng`` into
        ``self.dropout_masks`` and reused by the backward pass.
        """
        self.dropout_masks = {}
        inp = x
        for k, level in enumerate(self.layers):
            outs = []
            for d, layer in level.items():
                name = f"layers.{k}.{d}"
                masks = self._draw_masks(name, inp.shape, layer) if train else {}
                self.dropout_masks.update({f"{name}.{kind}": m for kind, m in masks.items()})
                s0 = {s: state[f"{name}.{s}"] for s in layer.state_names}
                layer_in = inp * masks["input"] if "input" in masks else inp
                if d == "fw":
                    y = layer.forward(layer_in, lengths, s0, masks.get("state"))
                else:
                    y = reverse(layer.forward(reverse(layer_in, lengths), lengths, s0, masks.get("state")), lengths)
                outs.append(y * masks["output"] if "output" in masks else y)
            inp = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=2)
        return inp

    def _draw_masks(self, name, input_shape, layer):
        """{"input": (T, B, F), "state": (T, B, R), "output": (T, B, R)} for the
        keeps below 1: values 0 or 1/keep. The state mask is indexed by the
        direction's own step (the bw direction's step t reads x[lengths-1-t])."""
        drop = self.dropout
        if drop is None:
            return {}
        T, B, F = input_shape
        R = layer.output_size
        masks = {}
        for kind, keep, n in (("input", drop.input_keep, F), ("state", drop.state_keep, R),
                              ("output", drop.output_keep, R)):
            if keep < 1.0:
                steps = 1 if drop.variational else T
                kept = self.rng.random((steps, B, n)) < keep
                # C order: the kernels then see one array layout, and compile once per dtype.
                masks[kind] = np.broadcast_to(kept * self.dtype.type(1.0 / keep), (T, B, n)).astype(self.dtype,
                                                                                                   order="C")
        return masks

    def _backward(self, dout, lengths, need_dx):
        """Backpropagate dL/d(top output); returns (dx or None, dL/d initial state)."""
        dstate = {}
        for k in range(len(self.layers) - 1, -1, -1):
            level = self.layers[k]
            dinp = None
            offset = 0
            for d, layer in level.items():
                name = f"layers.{k}.{d}"
                R = layer.output_size
                dy = np.ascontiguousarray(dout[:, :, offset:offset + R])
                offset += R
                if f"{name}.output" in self.dropout_masks:
                    dy = dy * self.dropout_masks[f"{name}.output"]
                if d == "bw":
                    dy = reverse(dy, lengths)
                zero_T = {s: np.zeros((dy.shape[1], size), self.dtype) for s, size in layer.state_sizes.items()}
                dx, ds0 = layer.backward(dy, zero_T, need_dx or k > 0)
                for s, v in ds0.items():
                    dstate[f"{name}.{s}"] = v
                if dx is not None:
                    dx = reverse(dx, lengths) if d == "bw" else dx
                    if f"{name}.input" in self.dropout_masks:
                        dx *= self.dropout_masks[f"{name}.input"]
                    dinp = dx if dinp is None else dinp + dx
            dout = dinp
        return dout, dstate

    def _final_state(self, lengths):
        return {f"layers.{k}.{d}.{s}": v
                for k, level in enumerate(self.layers) for d, layer in level.items()
                for s, v in layer.final_state().items()}

    def _from_time_major(self, a, time_major):
        return a if time_major else np.ascontiguousarray(a.transpose(1, 0, 2))

    # ------------------------------------------------------------------ public API

    def forward(self, x, lengths=None, initial_state=None, time_major=False):
        """Top recurrent layer's outputs and every layer's final state.

        Returns ``(out, final_state)``: out (B, T, D) (or (T, B, D) time-major),
        exactly 0 at t >= lengths[b]; final_state {"layers.k.fw.h": (B, H), ...}.
        """
        x, lengths, state = self._prepare(x, lengths, initial_state, time_major)
        out = self._forward(x, lengths, state)
        return self._from_time_major(out.copy(), time_major), self._final_state(lengths)

    def loss(self, x, y, lengths=None, label_lengths=None, initial_state=None, time_major=False):
        """The head's loss (float); no gradient. ``label_lengths`` (B,): the CTC head's
        number of labels per row of y (other heads ignore it)."""
        x, lengths, state = self._prepare(x, lengths, initial_state, time_major)
        y = self.head.check_targets(y, lengths, x.shape[0], label_lengths, self.dtype)
        out = self._forward(x, lengths, state)
        loss, _ = self.head.loss_and_grad(self.head_params, None, out, y, lengths, self._split, need_grad=False)
        return loss

    def loss_and_grad(self, x, y, lengths=None, label_lengths=None, initial_state=None, time_major=False,
                      train=True, input_grads=False):
        """The head's loss; writes d loss / d params into ``self.grads``.

        With ``input_grads=True`` returns ``(loss, dx, dstate)``: dx shaped like x,
        dstate {state name: dL/d initial state}. ``label_lengths``: as for ``loss``.
        """
        for name, flag in (("train", train), ("input_grads", input_grads)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        x, lengths, state = self._prepare(x, lengths, initial_state, time_major)
        y = self.head.check_targets(y, lengths, x.shape[0], label_lengths, self.dtype)
        out = self._forward(x, lengths, state, train=train)
        self.grads[:] = 0.0
        loss, dout = self.head.loss_and_grad(self.head_params, self.head_grads, out, y, lengths, self._split,
                                             last_step_grad=self._last_step_grad)
        dx, dstate = self._backward(dout, lengths, input_grads)
        if not input_grads:
            return loss
        return loss, self._from_time_major(dx, time_major), dstate

    def predict(self, x, lengths=None, time_major=False, beam=None):
        """Classify: probabilities (B, n). Tag: per-step probabilities (B, T, n)
        (time-major (T, B, n)), 0 at padded steps. Regress: values (B, k).
        CTC: a list of B decoded label lists (Python ints, blanks dropped, repeats
        collapsed): greedy best path, or prefix beam search with ``beam`` (>= 1)
        prefixes kept; ``beam`` is only for the CTC head.

        Runs the forward-only kernels (``numrnn.infer.predict``): no dropout, no
        saved activations, nothing of the model written, so several threads may
        call it at once."""
        return infer.predict(self, x, lengths, time_major, beam)

    def stream(self, batch_size=1, initial_state=None):
        """A ``numrnn.infer.Stream``: step-by-step inference over ``batch_size``
        sequences (unidirectional models only)."""
        return infer.Stream(self, batch_size, initial_state)

    @property
    def _split(self):
        """Features of the top output that come from the forward direction."""
        return self.layers[-1]["fw"].output_size

    def __repr__(self):
        return (f"SequenceModel(input_size={self.input_size}, layers={self.specs}, "
                f"bidirectional={self.bidirectional}, head={self.head}, dropout={self.dropout}, "
                f"dtype={self.dtype.name}, "
                f"params={self.params.size})")


def reverse(x, lengths):
    """Reverse each sequence of time-major x (T, B, F) within its length; padding stays 0."""
    return reverse_within_lengths(np.empty_like(x), x, lengths)


def raise_non_finite(x, name, first=0):
    """A ValueError naming the first value of time-major x (T, B, F) that is not
    finite, by its sequence (counted from ``first``) and step."""
    t, b, f = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
    raise ValueError(f"{name} holds a non-finite value {float(x[t, b, f])} in sequence {first + b} at step {t}")


def check_lengths(lengths, B, T):
    """int64 (B,) lengths in [0, T]; None means all T."""
    if lengths is None:
        return np.full(B, T, np.int64)
    arr = np.asarray(lengths)
    if arr.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), one per sequence, got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype.kind != "f" or not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(f"lengths must be integers, got {arr!r}")
    bad = np.flatnonzero((arr < 0) | (arr > T))
    if bad.size:
        b = int(bad[0])
        raise ValueError(f"lengths[{b}] = {arr[b].item()!r} is outside [0, {T}] (T = {T})")
    return arr.astype(np.int64)

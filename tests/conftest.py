"""Shared pieces: cell and head menus, model and data builders, finite differences.

Shapes are reused across the test files so that Numba compiles each kernel once
per dtype; gradient checks run in float64.
"""
import contextlib

import numpy as np
import pytest

import numrnn as nr
from numrnn.kernels.common import ParallelKernel
from reference import naive

CELLS = {
    "rnn_tanh": lambda h: nr.RNN(h),
    "rnn_relu": lambda h: nr.RNN(h, activation="relu"),
    "lstm": lambda h: nr.LSTM(h, forget_bias=1.0),
    "gru": lambda h: nr.GRU(h, reset_after=False),
    "gru_ra": lambda h: nr.GRU(h, reset_after=True),
}

HEADS = {
    "classify": lambda: nr.heads.Classify(3),
    "tag": lambda: nr.heads.Tag(3),
    "tag_delay1": lambda: nr.heads.Tag(3, delay=1),
    "regress": lambda: nr.heads.Regress(2),
}

# The LSTM options and the layer-norm GRU of DESIGN.md §3 (tests/test_variants.py). Clip bounds are set so that,
# with build_model's N(0, 0.5^2) parameters, some but not all values clip.
VARIANTS = {
    "peepholes": lambda h: nr.LSTM(h, peepholes=True),
    "cell_clip": lambda h: nr.LSTM(h, cell_clip=0.6),
    "proj": lambda h: nr.LSTM(h, proj=h - 1),
    "proj_clip": lambda h: nr.LSTM(h, proj=h - 1, proj_clip=0.3),
    "forget_bias": lambda h: nr.LSTM(h, forget_bias=-0.7),
    "lstm_ln": lambda h: nr.LSTM(h, layer_norm=True),
    "lstm_combo": lambda h: nr.LSTM(h, peepholes=True, cell_clip=0.6, proj=h - 1, proj_clip=0.25),
    "lstm_ln_combo": lambda h: nr.LSTM(h, forget_bias=0.5, peepholes=True, cell_clip=1.2, proj=h + 1,
                                       proj_clip=0.4, layer_norm=True),
    "gru_ln": lambda h: nr.GRU(h, layer_norm=True),
}

STACKS = {"1layer": (3,), "2layers": (3, 2)}     # hidden sizes, top last

F = 2   # input features everywhere


def build_model(cell, stack, bidirectional, head, dtype=np.float64, seed=0, scale=0.5, dropout=None):
    """A SequenceModel whose parameters (biases included) are all random N(0, scale^2).

    cell: a key of CELLS or VARIANTS, or a list of keys, one per layer. stack: a key
    of STACKS or a tuple of hidden sizes. head: a key of HEADS. dropout: nr.Dropout or None.
    """
    sizes = STACKS[stack] if isinstance(stack, str) else tuple(stack)
    cells = [cell] * len(sizes) if isinstance(cell, str) else list(cell)
    menu = {**CELLS, **VARIANTS}
    model = nr.SequenceModel(F, layers=[menu[c](h) for c, h in zip(cells, sizes)],
                             bidirectional=bidirectional, head=HEADS[head](), dropout=dropout, dtype=dtype,
                             seed=seed)
    rng = np.random.default_rng(seed + 1000)
    model.params[:] = scale * rng.standard_normal(model.params.shape)
    return model


def state_names(model):
    """{state name: size} from the contract: h for every layer and direction (an LSTM's
    proj when projecting, else hidden), c (hidden) for LSTM."""
    names = {}
    for k, spec in enumerate(model.specs):
        for d in (("fw", "bw") if model.bidirectional else ("fw",)):
            for s in (("c", "h") if isinstance(spec, nr.LSTM) else ("h",)):
                names[f"layers.{k}.{d}.{s}"] = naive.output_size(spec) if s == "h" else spec.hidden
    return names


def random_state(rng, model, B):
    """A random initial state dict, float64."""
    return {name: 0.5 * rng.standard_normal((B, H)) for name, H in state_names(model).items()}


def random_targets(rng, head, B, T):
    """Targets for a head: int labels (B,) or (B, T), or floats (B, k)."""
    kind = type(head).__name__
    if kind == "Classify":
        return rng.integers(0, head.n, size=B)
    if kind == "Tag":
        return rng.integers(0, head.n, size=(B, T))
    return rng.standard_normal((B, head.n))


def mixed_lengths(head, T):
    """Lengths (B=4) that include 1 and T, and 0 when the head allows it (Tag)."""
    if isinstance(head, nr.heads.Tag):
        return np.array([T, 0, 1, max(T - 1, 0)])
    return np.array([T, 1, max(T // 2, 1), max(T - 1, 1)])


LENGTHS = {"full": 4, "mixed": 4, "T1": 1}     # lengths kind -> T


def make_batch(rng, model, lengths_kind, with_state=True):
    """(x, y, lengths, initial_state). lengths_kind: "full" (lengths None, T=4),
    "mixed" (T=4, mixed_lengths) or "T1" (T=1, mixed_lengths: 1 and, for Tag, 0)."""
    T = LENGTHS[lengths_kind]
    lengths = None if lengths_kind == "full" else mixed_lengths(model.head, T)
    B = 3 if lengths is None else len(lengths)
    x = rng.standard_normal((B, T, model.input_size))
    y = random_targets(rng, model.head, B, T)
    state = random_state(rng, model, B) if with_state else None
    return x, y, lengths, state


def reference(model, x, y=None, lengths=None, initial_state=None, trace=None, masks=None):
    """naive.model_forward with the model's own parameters, in float64; masks: the
    dropout masks dict (``model.dropout_masks``) or None."""
    params = {name: np.asarray(v, dtype=np.float64) for name, v in model.named_params().items()}
    return naive.model_forward(params, model.specs, model.bidirectional, model.head, np.asarray(x, np.float64),
                               y, lengths, initial_state, trace, masks)


def relu_margin(model, x, lengths, initial_state):
    """Smallest |pre-activation| that goes through a ReLU at a valid step (inf if none)."""
    trace = []
    reference(model, x, lengths=lengths, initial_state=initial_state, trace=trace)
    return min((np.abs(z).min() for z in trace if z.size), default=np.inf)


# ----------------------------------------------------------------------------- finite differences

def central_differences(f, arr, eps=1e-6):
    """d f() / d arr by central differences, perturbing arr in place (and restoring it)."""
    grad = np.zeros(arr.shape)
    flat, gflat = arr.reshape(-1), grad.reshape(-1)
    assert np.shares_memory(flat, arr), "arr must be perturbable in place"
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def relative_error(numeric, analytic, floor=1e-4):
    """max|num - ana| / max(max|num|, max|ana|, floor): one number per tensor.

    The floor keeps tensors whose gradient is ~0 from dividing rounding noise
    (about 1e-16 |loss| / eps) by itself.
    """
    numeric, analytic = np.asarray(numeric, np.float64), np.asarray(analytic, np.float64)
    scale = max(np.abs(numeric).max(initial=0.0), np.abs(analytic).max(initial=0.0), floor)
    return np.abs(numeric - analytic).max(initial=0.0) / scale


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@contextlib.contextmanager
def forced_slabs(n_slabs):
    """While active, models cut every batch into n_slabs row slabs, however small, so
    that a 4-row batch runs the kernels' parallel builds (3 slabs of 4 rows: 2, 2
    and an empty one). Outside it a small batch is one slab, the serial build."""
    modules = (nr.layers, nr.infer, nr.kernels.common)
    saved = [module.slabs_for for module in modules]
    for module in modules:
        module.slabs_for = lambda rows: n_slabs
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.slabs_for = original


@pytest.fixture
def serial_kernels():
    """Every kernel runs its serial (non-prange) build while the fixture is active."""
    ParallelKernel.serial = True
    try:
        yield
    finally:
        ParallelKernel.serial = False

"""The kernels' packed GEMM path (numrnn/kernels/gemm.py): every cell kernel packs its
weight matrices (pack) for its register-tile products (matmul) only when T * B >=
PACK_MIN_ROWS rows will be multiplied by them; below that matmul calls np.dot. The
other correctness tests use T * B <= 25, so only here do the packed products run.

- Training kernels (*_forward, *_backward), every cell and option, 2-layer
  bidirectional, on a batch of B = 64 rows and T = 8 steps (512 rows per layer call,
  mixed lengths down to 1, and 0 for Tag), with an initial state:
  forward output, final state and loss against the NumPy reference
  (tests/reference/naive.py); the loss, every parameter gradient, dx and dL/d initial
  state against an exact decomposition: the same model on sub-batches of 4 rows,
  which run unpacked (T * 4 = 32 rows). Each head's loss is a mean over the batch
  (Classify: over its B rows; Regress: over B rows and k outputs; Tag: over the
  scored positions, max(lengths[b] - delay, 0) per row), so the big batch's loss and
  gradients are the sub-batches' ones weighted by each sub-batch's share of the rows
  (of the scored positions for Tag); dx and dL/d initial state of a row are its
  sub-batch's ones times that weight.
- The same with dropout (train=True): the big batch draws its masks from a recorded
  model.rng, and each sub-batch replays the same uniform draws, sliced to its rows,
  so its masks are the big batch's rows (checked exactly).
- Inference kernels (*_infer): they pack per chunk of steps, rows = chunk * B.
  predict (B = 64, chunks of 8 steps, and of 5 then 3: a packed chunk hands its
  state to an unpacked one) and a Stream of B = 256 rows (one step per call, 256 rows)
  against the reference.

float64 throughout; a wrong packed matrix makes errors of order 1, rounding 1e-15.
"""
import numpy as np
import pytest

import numrnn as nr
from numrnn.kernels.gemm import PACK_MIN_ROWS
from conftest import CELLS, F, VARIANTS, random_state, random_targets, reference, relative_error
from test_variants import build

T = 8
B = 64              # T * B = 512 rows per layer call: packed
SUB = 4             # T * SUB = 32 rows: np.dot
STREAM_B = 256      # a Stream step is one kernel call of 1 * STREAM_B rows
TOL = 1e-10         # float64: packed and np.dot products differ in rounding only
CELL_KINDS = list(CELLS) + list(VARIANTS)
TRAIN_HEADS = ["classify", "regress", "tag_delay1"]

assert T * B >= PACK_MIN_ROWS and T * SUB < PACK_MIN_ROWS and STREAM_B >= PACK_MIN_ROWS


def make_batch(model, seed, batch=B):
    """(x (batch, T, F), y, lengths, initial state): lengths in [1, T] with T, 1 and 2
    among them, and 0 in a few rows for a Tag head."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, size=batch)
    lengths[:3] = (T, 1, 2)
    if isinstance(model.head, nr.heads.Tag):
        lengths[[5, 17, 18]] = 0
    x = rng.standard_normal((batch, T, F))
    y = random_targets(rng, model.head, batch, T)
    return x, y, lengths, random_state(rng, model, batch)


def sub_batches(batch=B):
    return [np.arange(lo, lo + SUB) for lo in range(0, batch, SUB)]


def loss_weights(head, lengths, blocks):
    """Each sub-batch's share of the big batch's loss normaliser (module docstring)."""
    if isinstance(head, nr.heads.Tag):
        counts = np.array([np.maximum(lengths[rows] - head.delay, 0).sum() for rows in blocks], np.float64)
    else:
        counts = np.array([len(rows) for rows in blocks], np.float64)
    return counts / counts.sum()


def assert_all_small(errors):
    bad = {name: f"{e:.2e}" for name, e in errors.items() if not e < TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"


class RecordedRng:
    """model.rng for the big batch: a seeded generator that keeps every uniform draw."""

    def __init__(self, seed):
        self.rng, self.draws = np.random.default_rng(seed), []

    def random(self, shape):
        u = self.rng.random(shape)
        self.draws.append(u)
        return u


class ReplayRng:
    """model.rng for a sub-batch: the big batch's draws, in order, at its rows. The
    masks are drawn as rng.random((steps, B, n)) < keep (SequenceModel._draw_masks);
    the caller checks the resulting masks against the big batch's."""

    def __init__(self, draws, rows):
        self.draws, self.rows = iter(draws), rows

    def random(self, shape):
        u = next(self.draws)[:, self.rows]
        assert u.shape == tuple(shape), f"draw of shape {shape}, recorded {u.shape}"
        return u


def check_decomposition(model, x, y, lengths, state, dropout_seed=None):
    """The big batch (packed kernels) against the reference and against its sub-batches
    (unpacked kernels); see the module docstring."""
    train = dropout_seed is not None
    if train:
        model.rng = RecordedRng(dropout_seed)
    loss, dx, dstate = model.loss_and_grad(x, y, lengths=lengths, initial_state=state, train=train,
                                           input_grads=True)
    grads = {name: g.copy() for name, g in model.named_grads().items()}
    masks = {name: m.copy() for name, m in model.dropout_masks.items()}
    draws = model.rng.draws if train else None
    if train:
        assert masks and any((m == 0).any() for m in masks.values()), "no unit is dropped"

    # (a) the packed forward against the reference.
    ref_out, ref_final, _, ref_loss = reference(model, x, y, lengths, state, masks=masks or None)
    assert loss == pytest.approx(ref_loss, rel=TOL)
    if train:
        final = model._final_state(lengths)            # the training pass's final state (dropped h)
    else:
        out, final = model.forward(x, lengths=lengths, initial_state=state)
        np.testing.assert_allclose(out, ref_out, rtol=TOL, atol=1e-13, err_msg="forward output")
    assert sorted(final) == sorted(ref_final)
    for name in ref_final:
        np.testing.assert_allclose(final[name], ref_final[name], rtol=TOL, atol=1e-13, err_msg=f"final {name}")

    # (b) gradients: the weighted sum over sub-batches of 4 rows.
    blocks = sub_batches(len(lengths))
    weights = loss_weights(model.head, lengths, blocks)
    want_loss = 0.0
    want_grads = {name: np.zeros_like(g) for name, g in grads.items()}
    want_dx = np.zeros_like(dx)
    want_dstate = {name: np.zeros_like(v) for name, v in dstate.items()}
    for rows, w in zip(blocks, weights):
        if train:
            model.rng = ReplayRng(draws, rows)
        sub_state = {name: v[rows] for name, v in state.items()}
        sub_loss, sub_dx, sub_dstate = model.loss_and_grad(x[rows], y[rows], lengths=lengths[rows],
                                                           initial_state=sub_state, train=train,
                                                           input_grads=True)
        if train:
            assert next(model.rng.draws, None) is None, "the sub-batch drew fewer masks than the big batch"
            assert sorted(model.dropout_masks) == sorted(masks)
            for name, m in masks.items():
                np.testing.assert_array_equal(model.dropout_masks[name], m[:, rows], err_msg=name)
        want_loss += w * sub_loss
        for name, g in model.named_grads().items():
            want_grads[name] += w * g
        want_dx[rows] = w * sub_dx
        for name, v in sub_dstate.items():
            want_dstate[name][rows] = w * v

    assert loss == pytest.approx(want_loss, rel=TOL)
    errors = {name: relative_error(want_grads[name], grads[name], floor=1e-12) for name in grads}
    errors["x"] = relative_error(want_dx, dx, floor=1e-12)
    assert sorted(dstate) == sorted(state)
    errors.update({f"state.{name}": relative_error(want_dstate[name], dstate[name], floor=1e-12)
                   for name in dstate})
    assert_all_small(errors)


# ----------------------------------------------------------------------------- training kernels

@pytest.mark.parametrize("head", TRAIN_HEADS)
@pytest.mark.parametrize("cell", CELL_KINDS)
def test_packed_training_matches_reference_and_sub_batches(cell, head):
    model = build(cell, "2layers", True, head)
    x, y, lengths, state = make_batch(model, seed=CELL_KINDS.index(cell))
    check_decomposition(model, x, y, lengths, state)


@pytest.mark.parametrize("variational", [False, True], ids=["per_step", "variational"])
@pytest.mark.parametrize("cell", CELL_KINDS)
def test_packed_training_with_dropout(cell, variational):
    dropout = nr.Dropout(input_keep=0.8, output_keep=0.7, state_keep=0.6, variational=variational)
    model = build(cell, "2layers", True, "tag", dropout=dropout)
    x, y, lengths, state = make_batch(model, seed=100 + CELL_KINDS.index(cell))
    check_decomposition(model, x, y, lengths, state, dropout_seed=7)


# ----------------------------------------------------------------------------- inference kernels

@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELL_KINDS)
def test_packed_predict(cell, bidirectional):
    """Per-step probabilities (Tag: every output of the top layer goes through the
    head) in chunks of 8 steps (512 rows: packed) and of 5 (320 rows: packed) then 3
    (192 rows: np.dot); Classify's probabilities from each direction's final state."""
    model = build(cell, "2layers", bidirectional, "tag")
    x, _, lengths, _ = make_batch(model, seed=200 + CELL_KINDS.index(cell))
    assert lengths.max() == T
    _, _, expected, _ = reference(model, x, lengths=lengths)
    for chunk in (nr.infer.CHUNK, 5):
        got = nr.infer.predict(model, x, lengths, chunk=chunk)
        np.testing.assert_allclose(got, expected, rtol=TOL, atol=1e-13, err_msg=f"chunk {chunk}")
    np.testing.assert_allclose(model.predict(x, lengths), expected, rtol=TOL, atol=1e-13)

    classify = build(cell, "2layers", bidirectional, "classify")
    lengths = np.maximum(lengths, 1)
    _, _, expected, _ = reference(classify, x, lengths=lengths)
    np.testing.assert_allclose(classify.predict(x, lengths), expected, rtol=TOL, atol=1e-13)


@pytest.mark.parametrize("cell", CELL_KINDS)
def test_packed_stream(cell):
    """A Stream of 256 rows from an initial state, each row active while t < lengths[b]:
    every step's output and Tag probabilities, and the final state, against the
    reference (rows not active output 0 and keep their state, as padded steps)."""
    model = build(cell, "2layers", False, "tag")
    x, _, lengths, state = make_batch(model, seed=300 + CELL_KINDS.index(cell), batch=STREAM_B)
    ref_out, ref_final, ref_pred, _ = reference(model, x, lengths=lengths, initial_state=state)
    stream = model.stream(batch_size=STREAM_B, initial_state=state)
    for t in range(T):
        probs = stream.step(x[:, t], active=t < lengths)
        np.testing.assert_allclose(stream.output, ref_out[:, t], rtol=TOL, atol=1e-13, err_msg=f"output {t}")
        np.testing.assert_allclose(probs, ref_pred[:, t], rtol=TOL, atol=1e-13, err_msg=f"probabilities {t}")
    final = stream.state
    assert sorted(final) == sorted(ref_final)
    for name in ref_final:
        np.testing.assert_allclose(final[name], ref_final[name], rtol=TOL, atol=1e-13, err_msg=name)

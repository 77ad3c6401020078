"""numrnn.heads.CTC in a SequenceModel: gradients against central differences
(float64), the loss against numrnn.ctc on the head's own logits, decoding, saving
and loading, and the errors that name the sequence. (The other heads are covered
by test_model.py, test_reference.py and test_torch.py.)"""
import numpy as np
import pytest

import numrnn as nr
from conftest import CELLS, central_differences, random_state, relative_error

EPS = 1e-5
TOL = 1e-6

# B = 5 sequences of up to T = 5 steps: a full one, an empty one (no labels), one
# step with one label, and labels with a repeat that just fit (2 labels + 1 blank in 3 steps).
LENGTHS = np.array([5, 0, 1, 3, 4])
LABEL_LENGTHS = np.array([3, 0, 1, 2, 2])


def labels(head, rng):
    """(B, 3) padded labels for LENGTHS / LABEL_LENGTHS: never the blank, a repeat
    in sequence 3, garbage (-7) beyond each label length."""
    classes = np.array([c for c in range(head.n) if c != head.blank])
    y = rng.choice(classes, size=(len(LENGTHS), 3))
    y[3, 1] = y[3, 0]
    y[np.arange(3)[None, :] >= LABEL_LENGTHS[:, None]] = -7
    return y


def ctc_model(cell, sizes, bidirectional, blank=0, n_labels=3, seed=0, dtype=np.float64):
    model = nr.SequenceModel(2, [CELLS[cell](h) for h in sizes], bidirectional=bidirectional,
                             head=nr.heads.CTC(n_labels, blank=blank), dtype=dtype, seed=seed)
    model.params[:] = 0.5 * np.random.default_rng(seed + 1000).standard_normal(model.params.shape)
    return model


def problem(cell, sizes, bidirectional, blank, seed=0):
    rng = np.random.default_rng(seed)
    model = ctc_model(cell, sizes, bidirectional, blank, seed=seed)
    x = rng.standard_normal((len(LENGTHS), 5, 2))
    return model, x, labels(model.head, rng), random_state(rng, model, len(LENGTHS))


@pytest.mark.parametrize("cell, sizes, bidirectional, blank", [
    ("lstm", (3,), False, 0),
    ("lstm", (3, 2), False, 0),
    ("lstm", (3, 2), True, 3),
    ("gru", (3, 2), True, 1),
    ("rnn_tanh", (2,), True, 0),
], ids=["lstm-uni", "lstm-stacked-uni", "lstm-stacked-bi-blank3", "gru-stacked-bi-blank1", "rnn-bi"])
def test_gradients_match_finite_differences(cell, sizes, bidirectional, blank):
    model, x, y, state = problem(cell, sizes, bidirectional, blank)
    kwargs = dict(lengths=LENGTHS, label_lengths=LABEL_LENGTHS, initial_state=state)
    loss, dx, dstate = model.loss_and_grad(x, y, input_grads=True, **kwargs)
    analytic = {name: g.copy() for name, g in model.named_grads().items()}
    analytic["x"] = dx
    analytic.update({f"state.{name}": g for name, g in dstate.items()})

    f = lambda: model.loss(x, y, **kwargs)  # noqa: E731
    assert loss == pytest.approx(f(), rel=1e-12)
    numeric = {name: central_differences(f, view, EPS) for name, view in model.named_params().items()}
    numeric["x"] = central_differences(f, x, EPS)
    numeric.update({f"state.{name}": central_differences(f, v, EPS) for name, v in state.items()})
    errors = {name: relative_error(numeric[name], analytic[name]) for name in numeric}
    bad = {name: f"{e:.2e}" for name, e in errors.items() if not e < TOL}
    assert not bad, f"relative gradient errors above {TOL}: {bad}"
    assert (dx[np.arange(5)[None, :] >= LENGTHS[:, None]] == 0).all(), "no gradient at padded steps"


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_loss_is_the_batch_mean_of_nr_ctc_on_the_head_logits(bidirectional):
    model, x, y, _ = problem("lstm", (3, 2), bidirectional, blank=2)
    out, _ = model.forward(x, LENGTHS)                                         # (B, T, D)
    p = model.named_params()
    logits = out @ p["head.W"] + p["head.b"]                                  # (B, T, C)
    losses, dlogits = nr.ctc.loss_and_grad(logits, y, LENGTHS, LABEL_LENGTHS, blank=2)
    loss = model.loss_and_grad(x, y, LENGTHS, label_lengths=LABEL_LENGTHS)
    assert loss == pytest.approx(losses.mean(), rel=1e-12)
    assert model.loss(x, y, LENGTHS, label_lengths=LABEL_LENGTHS) == pytest.approx(loss, rel=1e-12)
    # head.b's gradient is the batch mean of dlogits summed over the steps.
    np.testing.assert_allclose(model.named_grads()["head.b"], dlogits.sum(axis=(0, 1)) / len(y), rtol=1e-12)
    # label_lengths None: every row holds S labels.
    full = np.array([[1, 3], [3, 1], [1, 0]])
    x3 = x[[0, 3, 4]]
    logits3 = model.forward(x3)[0] @ p["head.W"] + p["head.b"]
    assert model.loss(x3, full) == pytest.approx(nr.ctc.loss(logits3, full, None, None, blank=2).mean(), rel=1e-12)
    # Label lists of different lengths, as predict returns them: padded, their lengths the label lengths.
    ragged = [list(row[:n]) for row, n in zip(y, LABEL_LENGTHS)]
    assert len({len(row) for row in ragged}) > 1
    grads = model.grads.copy()
    assert model.loss_and_grad(x, ragged, LENGTHS) == loss
    np.testing.assert_array_equal(model.grads, grads)


def test_float32_model_agrees_with_float64():
    model, x, y, _ = problem("lstm", (3,), True, blank=0)
    single = ctc_model("lstm", (3,), True, dtype=np.float32)
    single.params[:] = model.params
    kwargs = dict(lengths=LENGTHS, label_lengths=LABEL_LENGTHS)
    assert single.loss_and_grad(x, y, **kwargs) == pytest.approx(model.loss_and_grad(x, y, **kwargs), rel=1e-5)
    np.testing.assert_allclose(single.grads, model.grads, rtol=1e-3, atol=1e-5)


def test_predict_decodes_greedy_and_beam():
    rng = np.random.default_rng(3)
    model = ctc_model("gru", (4,), True, blank=2, n_labels=4, seed=3)
    model.params *= 4.0                                     # peaked outputs: non-trivial decodings
    x = rng.standard_normal((6, 7, 2))
    lengths = np.array([7, 0, 1, 4, 7, 6])
    greedy = model.predict(x, lengths)
    assert isinstance(greedy, list) and len(greedy) == 6 and greedy[1] == []
    assert any(len(seq) > 1 for seq in greedy)
    assert all(isinstance(v, int) and v != 2 and 0 <= v < 5 for seq in greedy for v in seq)
    assert model.predict(x, lengths, beam=1) == greedy
    out, _ = model.forward(x, lengths)
    p = model.named_params()
    logits = out @ p["head.W"] + p["head.b"]
    assert greedy == nr.ctc.greedy_decode(logits, lengths, blank=2)[0]
    assert model.predict(x, lengths, beam=8) == nr.ctc.beam_decode(logits, lengths, beam=8, blank=2)[0]
    assert model.predict(x.transpose(1, 0, 2), lengths, time_major=True) == greedy


def test_save_load_round_trip(tmp_path):
    model, x, y, _ = problem("lstm", (3, 2), True, blank=3)
    nr.save(model, tmp_path / "ctc.npz")
    loaded = nr.load(tmp_path / "ctc.npz")
    assert loaded.head == nr.heads.CTC(3, blank=3)
    np.testing.assert_array_equal(loaded.params, model.params)
    kwargs = dict(lengths=LENGTHS, label_lengths=LABEL_LENGTHS)
    assert loaded.loss(x, y, **kwargs) == model.loss(x, y, **kwargs)
    assert loaded.predict(x, LENGTHS, beam=4) == model.predict(x, LENGTHS, beam=4)


def test_bad_head_arguments():
    with pytest.raises(ValueError, match="n_labels must be a positive integer, got 0"):
        nr.heads.CTC(0)
    with pytest.raises(ValueError, match=r"blank must be an integer in \[0, n_labels\] = \[0, 3\], got 4"):
        nr.heads.CTC(3, blank=4)
    with pytest.raises(ValueError, match="blank must be an integer"):
        nr.heads.CTC(3, blank=True)
    assert nr.heads.CTC(3).n == 4


@pytest.mark.parametrize("change, message", [
    (lambda y, L, LL: (np.where(np.arange(3) == 0, 0, y), L, LL), r"y\[0, 0\] = 0 \(sequence 0\) equals blank = 0"),
    (lambda y, L, LL: (np.where((np.arange(5) == 4)[:, None], 9, y), L, LL),
     r"y\[4, 0\] = 9 \(sequence 4\) is outside \[0, 4\)"),
    (lambda y, L, LL: (np.where((np.arange(5) == 2)[:, None], -1, y), L, LL),
     r"y\[2, 0\] = -1 \(sequence 2\) is outside \[0, 4\)"),
    (lambda y, L, LL: (np.where((np.arange(5) == 2)[:, None], 1, y), L, np.array([3, 0, 2, 2, 2])),
     r"label_lengths\[2\] = 2 labels need at least 3 steps .* lengths\[2\] = 1: sequence 2"),
    (lambda y, L, LL: (y, np.array([5, 0, 1, 2, 4]), LL),
     r"label_lengths\[3\] = 2 labels need at least 3 steps .* lengths\[3\] = 2: sequence 3"),
    (lambda y, L, LL: (y, L, np.array([3, 0, 1, 2, 4])), r"label_lengths\[4\] = 4 is out of range: it must be in \[0, 3\]"),
    (lambda y, L, LL: (y, L, LL[:4]), r"label_lengths must have shape \(5,\)"),
    (lambda y, L, LL: (y, np.array([5, 0, 1, 3, 6]), LL), r"lengths\[4\] = .*6.* is outside \[0, 5\]"),
    (lambda y, L, LL: (y, np.array([5, -1, 1, 3, 4]), LL), r"lengths\[1\] = .*-1.* is outside \[0, 5\]"),
    (lambda y, L, LL: (y[:, 0], L, LL), r"y must have shape \(B, S\) = \(5, S\)"),
    (lambda y, L, LL: (y * 1.0, L, LL), "y must be integers, got dtype float64"),
    (lambda y, L, LL: (y, L, LL * 1.0), "label_lengths must be integers, got dtype float64"),
])
def test_bad_targets_name_the_sequence(change, message):
    model, x, y, _ = problem("lstm", (3,), True, blank=0)
    y, lengths, label_lengths = change(y, LENGTHS, LABEL_LENGTHS)
    for call in (model.loss, model.loss_and_grad):
        with pytest.raises(ValueError, match=message):
            call(x, y, lengths, label_lengths=label_lengths)


def test_beam_only_for_ctc():
    model, x, _, _ = problem("lstm", (3,), False, blank=0)
    with pytest.raises(ValueError, match="beam = 0 is out of range"):
        model.predict(x, LENGTHS, beam=0)
    classify = nr.SequenceModel(2, [nr.LSTM(3)], head=nr.heads.Classify(2))
    with pytest.raises(ValueError, match="beam = 4 applies only to the CTC head"):
        classify.predict(x[:, :2], beam=4)

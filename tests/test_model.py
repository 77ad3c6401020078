"""SequenceModel.loss_and_grad against central finite differences of SequenceModel.loss
(float64), for every parameter, the inputs and the initial state; padded steps and
repeated calls."""
import numpy as np
import pytest

import numrnn as nr

from conftest import CELLS, F, HEADS, LENGTHS, STACKS, build_model, central_differences, make_batch, \
    relative_error, relu_margin

EPS = 1e-5     # central differences: rounding ~1e-16/EPS, truncation ~EPS**2
TOL = 1e-6


def fd_problem(cell, stack, bidirectional, head, lengths_kind):
    """Model and batch of the first seed where every parameter, the input and the
    initial state reach the loss (a small ReLU layer can be dead for the whole batch,
    and a gradient that is 0 on both sides proves nothing) and, for ReLU, whose
    pre-activations all stay well away from the kink (a perturbation of EPS moves
    them by ~1e-4 at most)."""
    for seed in range(50):
        rng = np.random.default_rng(seed)
        model = build_model(cell, stack, bidirectional, head, seed=seed)
        x, y, lengths, state = make_batch(rng, model, lengths_kind)
        if cell == "rnn_relu" and relu_margin(model, x, lengths, state) <= 1e-3:
            continue
        _, grads = analytic_gradients(model, x, y, lengths, state)
        if all(np.any(g != 0.0) for g in grads.values()):
            return model, x, y, lengths, state
    raise AssertionError("no seed where every gradient is non-zero (and ReLU pre-activations stay away from 0)")


def numeric_gradients(model, x, y, lengths, state):
    """{name: d loss / d tensor} by central differences: every parameter, "x" and
    "state.<name>" for every initial state tensor (perturbed in place)."""
    loss = lambda: model.loss(x, y, lengths=lengths, initial_state=state)  # noqa: E731
    grads = {name: central_differences(loss, view, EPS) for name, view in model.named_params().items()}
    grads["x"] = central_differences(loss, x, EPS)
    grads.update({f"state.{name}": central_differences(loss, v, EPS) for name, v in state.items()})
    return grads


def analytic_gradients(model, x, y, lengths, state):
    loss, dx, dstate = model.loss_and_grad(x, y, lengths=lengths, initial_state=state, input_grads=True)
    grads = {name: g.copy() for name, g in model.named_grads().items()}
    grads["x"] = dx
    grads.update({f"state.{name}": g for name, g in dstate.items()})
    return loss, grads


# Every head with every kind of lengths, except a delay-1 Tag on T=1, where no step is
# scored: its loss is 0 whatever the parameters (test_nothing_scored_gives_zero_loss_and_gradients).
SCORED = [(head, kind) for head in HEADS for kind in LENGTHS if (head, kind) != ("tag_delay1", "T1")]


@pytest.mark.parametrize("head, lengths_kind", SCORED, ids=[f"{h}-{k}" for h, k in SCORED])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("cell", list(CELLS))
def test_gradients_match_finite_differences(cell, stack, bidirectional, head, lengths_kind):
    model, x, y, lengths, state = fd_problem(cell, stack, bidirectional, head, lengths_kind)
    loss, analytic = analytic_gradients(model, x, y, lengths, state)
    assert loss == pytest.approx(model.loss(x, y, lengths=lengths, initial_state=state), rel=1e-12, abs=1e-15)
    numeric = numeric_gradients(model, x, y, lengths, state)
    assert sorted(analytic) == sorted(numeric), "dstate must have a key per initial state tensor"
    errors = {name: relative_error(numeric[name], analytic[name]) for name in numeric}
    bad = {name: f"{e:.2e}" for name, e in errors.items() if not e < TOL}
    assert not bad, f"relative gradient errors above {TOL}: {bad}"


# ----------------------------------------------------------------------------- padded steps

def padded_steps(lengths, T):
    return np.arange(T)[None, :] >= np.asarray(lengths)[:, None]      # (B, T)


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_padded_steps_pass_no_gradient(cell, bidirectional, head, rng):
    model = build_model(cell, "2layers", bidirectional, head)
    x, y, lengths, state = make_batch(rng, model, "mixed")
    loss, dx, dstate = model.loss_and_grad(x, y, lengths=lengths, initial_state=state, input_grads=True)
    grads = model.grads.copy()
    pad = padded_steps(lengths, x.shape[1])
    assert (dx[pad] == 0.0).all(), "dx at t >= lengths[b] must be exactly 0"

    # Garbage at padded positions of x (and of the labels, for Tag) changes nothing.
    x2, y2 = x.copy(), np.copy(y)
    x2[pad] = rng.standard_normal(x2[pad].shape) * 100.0
    if y2.ndim == 2 and y2.dtype.kind == "i":
        y2[pad] = (y2[pad] + 1) % model.head.n
    loss2, dx2, dstate2 = model.loss_and_grad(x2, y2, lengths=lengths, initial_state=state, input_grads=True)
    assert loss2 == loss
    np.testing.assert_array_equal(model.grads, grads)
    np.testing.assert_array_equal(dx2, dx)
    for name in dstate:
        np.testing.assert_array_equal(dstate2[name], dstate[name], err_msg=name)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_tag_unscored_labels_change_nothing(bidirectional, rng):
    """With delay d, labels y[b, t] for t + d >= lengths[b] are never scored."""
    model = build_model("gru", "2layers", bidirectional, "tag_delay1")
    x, y, lengths, state = make_batch(rng, model, "mixed")
    loss = model.loss_and_grad(x, y, lengths=lengths, initial_state=state)
    grads = model.grads.copy()
    y2 = y.copy()
    unscored = padded_steps(lengths - model.head.delay, x.shape[1])
    y2[unscored] = (y2[unscored] + 1) % model.head.n
    assert model.loss_and_grad(x, y2, lengths=lengths, initial_state=state) == loss
    np.testing.assert_array_equal(model.grads, grads)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_nothing_scored_gives_zero_loss_and_gradients(bidirectional, rng):
    """A delay-1 Tag head on one step scores no label: loss 0 and every gradient 0."""
    model = build_model("lstm", "2layers", bidirectional, "tag_delay1")
    x, y, lengths, state = make_batch(rng, model, "T1")
    model.grads[:] = 1.0                           # loss_and_grad overwrites the gradients
    loss, dx, dstate = model.loss_and_grad(x, y, lengths=lengths, initial_state=state, input_grads=True)
    assert loss == 0.0
    assert (model.grads == 0.0).all() and (dx == 0.0).all()
    for name, g in dstate.items():
        assert (g == 0.0).all(), name


def test_empty_sequences_get_zero_gradients(rng):
    """A length-0 sequence's final state is its initial state, so with a Tag head
    (no scored steps) its dstate and dx rows are exactly 0."""
    model = build_model("lstm", "2layers", True, "tag")
    x, y, lengths, state = make_batch(rng, model, "mixed")
    empty = lengths == 0
    _, dx, dstate = model.loss_and_grad(x, y, lengths=lengths, initial_state=state, input_grads=True)
    assert (dx[empty] == 0.0).all()
    for name, g in dstate.items():
        assert (g[empty] == 0.0).all(), name


# ----------------------------------------------------------------------------- repeated calls

@pytest.mark.parametrize("cell", list(CELLS))
def test_grads_are_overwritten_not_accumulated(cell, rng):
    model = build_model(cell, "2layers", True, "tag")
    x, y, lengths, state = make_batch(rng, model, "mixed")
    other_x, other_y, _, _ = make_batch(rng, model, "mixed")
    loss = model.loss_and_grad(x, y, lengths=lengths, initial_state=state)
    first = model.grads.copy()
    assert np.abs(first).max() > 0
    model.loss_and_grad(other_x, other_y, lengths=lengths)
    assert model.loss_and_grad(x, y, lengths=lengths, initial_state=state) == loss
    np.testing.assert_array_equal(model.grads, first)
    assert model.loss_and_grad(x, y, lengths=lengths, initial_state=state) == loss
    np.testing.assert_array_equal(model.grads, first)


@pytest.mark.parametrize("head", ["classify", "regress"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_last_step_heads_forget_the_calls_before(head, bidirectional, rng):
    """The model keeps the last-step heads' dL/d(out) between calls and clears only
    what the call before wrote: calls with other lengths and another shape first
    change nothing."""
    model, fresh = (build_model("lstm", "2layers", bidirectional, head) for _ in range(2))
    x, y, lengths, state = make_batch(rng, model, "mixed")
    loss = fresh.loss_and_grad(x, y, lengths=lengths, initial_state=state)
    other_lengths = lengths[::-1].copy()
    model.loss_and_grad(x, y, lengths=other_lengths, initial_state=state)
    model.loss_and_grad(*make_batch(rng, model, "T1"))
    model.loss_and_grad(x, y, lengths=other_lengths, initial_state=state)
    assert model.loss_and_grad(x, y, lengths=lengths, initial_state=state) == loss
    np.testing.assert_array_equal(model.grads, fresh.grads)


def test_last_step_grad_equals_a_fresh_scatter_after_any_calls(rng):
    T, B, D = 4, 3, 5
    kept = nr.heads.LastStepGrad()
    for lengths, split in [([4, 1, 2], 5), ([2, 4, 1], 3), ([1, 1, 4], 0), ([3, 2, 4], 2)]:
        lengths = np.array(lengths)
        dfeatures = rng.standard_normal((B, D))
        fresh = nr.heads.LastStepGrad()(dfeatures, lengths, split, T)
        np.testing.assert_array_equal(kept(dfeatures, lengths, split, T), fresh)
        assert np.count_nonzero(fresh) == B * D


# ----------------------------------------------------------------------------- input

def test_input_is_copied_time_major_whatever_its_type_and_layout(rng):
    model = build_model("lstm", "1layer", False, "regress", dtype=np.float32)
    x = rng.integers(-3, 4, (3, 4, model.input_size))
    given = x.copy()
    out, _ = model.forward(x)
    for same in (x.astype(np.float64), x.astype(np.float32), np.asfortranarray(x), x[::-1][::-1],
                 x.transpose(1, 0, 2).copy().transpose(1, 0, 2)):
        np.testing.assert_array_equal(model.forward(same)[0], out)
    time_major, _ = model.forward(x.transpose(1, 0, 2), time_major=True)
    np.testing.assert_array_equal(time_major, out.transpose(1, 0, 2))
    np.testing.assert_array_equal(x, given)


H0 = "layers.0.fw.h"


@pytest.mark.parametrize("call, message", [
    (lambda m: m.forward(np.zeros((0, 4, F))), r"at least one step and one sequence, got shape \(0, 4, 2\)"),
    (lambda m: m.forward(np.zeros((3, 0, F))), r"at least one step and one sequence, got shape \(3, 0, 2\)"),
    (lambda m: m.forward(np.zeros((3, 4, F)), initial_state=(np.zeros((3, 3)),)),
     r"initial_state must be a dict \{state name: \(B, size\) array\} with keys among \['layers.0.fw.h'\], "
     r"got tuple"),
    (lambda m: m.forward(np.zeros((3, 4, F)), initial_state=np.zeros((3, 3))), "initial_state must be a dict"),
    (lambda m: m.forward(np.zeros((3, 4, F)), initial_state={H0: np.full((3, 3), 1e300)}),
     r"initial_state\['layers.0.fw.h'\] holds non-finite values \(in float32\)"),
    (lambda m: m.forward(np.zeros((3, 4, F)), initial_state={H0: np.zeros((3, 3), complex)}),
     r"initial_state\['layers.0.fw.h'\] must hold real numbers, got dtype complex128"),
    (lambda m: m.forward(np.zeros((3, 4, F)), lengths=np.array(["4", "4", "4"])), "lengths must be integers"),
    (lambda m: m.forward(np.zeros((3, 4, F)), lengths=[4, 4, None]), "lengths must be integers"),
    (lambda m: m.forward(np.zeros((3, 4, F)), time_major="yes"), "time_major must be True or False, got 'yes'"),
    (lambda m: m.predict(np.zeros((3, 4, F)), time_major=None), "time_major must be True or False, got None"),
    (lambda m: m.loss_and_grad(np.zeros((3, 4, F)), np.zeros(3, int), train="no"),
     "train must be True or False, got 'no'"),
    (lambda m: m.loss_and_grad(np.zeros((3, 4, F)), np.zeros(3, int), input_grads=1),
     "input_grads must be True or False, got 1"),
])
def test_bad_input_and_state_name_the_argument(call, message):
    """Shapes as the caller gave them (batch-major here), the state dict's form, and
    the state checked after the cast to the model's dtype."""
    model = build_model("rnn_tanh", "1layer", False, "classify", dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        with np.errstate(over="ignore"):
            call(model)


def test_regress_targets_must_be_finite_in_the_models_dtype():
    y = np.zeros((3, 2))
    y[1, 0] = 1e100
    x = np.zeros((3, 4, F))
    single = nr.SequenceModel(F, [nr.RNN(3)], head=nr.heads.Regress(2), dtype=np.float32, seed=0)
    with pytest.raises(ValueError, match=r"y\[1, 0\] = 1e\+100 is not finite in the model's dtype float32"):
        single.loss_and_grad(x, y)
    with pytest.raises(ValueError, match=r"y\[1, 0\] = 1e\+100 is not finite in the model's dtype float32"):
        single.loss(x, y)
    double = nr.SequenceModel(F, [nr.RNN(3)], head=nr.heads.Regress(2), dtype=np.float64, seed=0)
    assert np.isfinite(double.loss_and_grad(x, y))
    y[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"y\[1, 0\] = nan is not finite in the model's dtype float64"):
        double.loss(x, y)


@pytest.mark.parametrize("seed", [None, 1.5, -1, True])
def test_bad_seed_is_refused(seed):
    with pytest.raises(ValueError, match=f"seed must be an integer >= 0, got {seed!r}"):
        nr.SequenceModel(F, [nr.LSTM(3)], head=nr.heads.Classify(2), seed=seed)


@pytest.mark.parametrize("where", [(0, 0, 0), (1, 2, 0), (2, 3, 1)])
@pytest.mark.parametrize("value, shown", [(np.nan, "nan"), (-np.inf, "-inf"), (1e300, "inf")])
def test_non_finite_input_names_its_sequence_and_step(where, value, shown):
    """Checked after the cast to the model's dtype: 1e300 is inf in float32."""
    model = build_model("lstm", "1layer", False, "classify", dtype=np.float32)
    x = np.zeros((3, 4, model.input_size))
    x[where] = value
    b, t, _ = where
    with pytest.raises(ValueError, match=rf"x holds a non-finite value {shown} in sequence {b} at step {t}"):
        with np.errstate(over="ignore"):
            model.loss_and_grad(x, np.zeros(3, int))
    with pytest.raises(ValueError, match=rf"non-finite value {shown} in sequence {b} at step {t}"):
        with np.errstate(over="ignore"):
            model.forward(x.transpose(1, 0, 2), time_major=True)


def test_named_views_share_the_flat_buffers():
    model = build_model("lstm", "2layers", True, "classify")
    for name, view in model.named_params().items():
        assert np.shares_memory(view, model.params), name
    for name, view in model.named_grads().items():
        assert np.shares_memory(view, model.grads), name
    assert sum(v.size for v in model.named_params().values()) == model.params.size


def test_regress_targets_must_be_real_numbers():
    model = build_model("rnn_tanh", "1layer", False, "regress")
    with pytest.raises(ValueError, match="y must hold real numbers, got dtype <U1"):
        model.loss(np.zeros((3, 4, F)), np.full((3, 2), "a"))

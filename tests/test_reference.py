"""SequenceModel's forward pass, final state, loss and predict against the NumPy
reference (tests/reference/naive.py), and the serial kernel builds against the
parallel ones."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import CELLS, HEADS, LENGTHS, STACKS, build_model, forced_slabs, make_batch, random_state, \
    random_targets, reference

ALL_CELLS = ["rnn_relu", "lstm", "gru", "gru_ra"]      # one of each kernel; relu/tanh is a flag


def padded(lengths, B, T):
    """(B, T) bool: True at padded steps t >= lengths[b]."""
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    return np.arange(T)[None, :] >= lengths[:, None]


def assert_states_close(got, expected, **tol):
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], err_msg=name, **tol)


def check_against_reference(model, x, y, lengths, state, **tol):
    """forward, final state, loss and predict of the model agree with the reference."""
    ref_out, ref_final, _, ref_loss = reference(model, x, y, lengths, state)
    out, final = model.forward(x, lengths=lengths, initial_state=state)
    np.testing.assert_allclose(out, ref_out, **tol)
    assert_states_close(final, ref_final, **tol)
    np.testing.assert_allclose(model.loss(x, y, lengths=lengths, initial_state=state), ref_loss, **tol)
    _, _, ref_pred, _ = reference(model, x, y, lengths)            # predict has no initial state
    np.testing.assert_allclose(model.predict(x, lengths=lengths), ref_pred, **tol)
    return out


@pytest.mark.parametrize("lengths_kind", list(LENGTHS))
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("cell", list(CELLS))
def test_matches_reference(cell, stack, bidirectional, head, lengths_kind, rng):
    model = build_model(cell, stack, bidirectional, head)
    x, y, lengths, state = make_batch(rng, model, lengths_kind)
    out = check_against_reference(model, x, y, lengths, state, rtol=1e-10, atol=1e-13)
    mask = padded(lengths, *x.shape[:2])
    assert (out[mask] == 0.0).all(), "outputs at padded steps must be exactly 0"


@pytest.mark.parametrize("head", list(HEADS))
def test_mixed_cell_stack(head, rng):
    model = build_model(ALL_CELLS, (3, 2, 4, 2), True, head)
    x, y, lengths, state = make_batch(rng, model, "mixed")
    check_against_reference(model, x, y, lengths, state, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("cell", list(CELLS))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_random_shapes(cell, data):
    """B from 1, T from 1, any lengths in [0, T] (>= 1 for Classify), any state subset."""
    head = data.draw(st.sampled_from(list(HEADS)))
    bidirectional = data.draw(st.booleans())
    model = build_model(cell, "2layers", bidirectional, head)
    B, T = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
    low = 0 if head.startswith("tag") else 1
    lengths = np.array(data.draw(st.lists(st.integers(low, T), min_size=B, max_size=B)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((B, T, model.input_size))
    y = random_targets(rng, model.head, B, T)
    full = random_state(rng, model, B)
    keep = data.draw(st.lists(st.sampled_from(sorted(full)), unique=True))
    state = {name: full[name] for name in keep}                        # missing keys mean zeros
    check_against_reference(model, x, y, lengths, state, rtol=1e-10, atol=1e-13)


def test_no_initial_state_means_zeros(rng):
    model = build_model("lstm", "2layers", True, "tag")
    x, y, lengths, state = make_batch(rng, model, "mixed")
    zeros = {name: np.zeros_like(v) for name, v in state.items()}
    out_none, final_none = model.forward(x, lengths=lengths)
    out_zero, final_zero = model.forward(x, lengths=lengths, initial_state=zeros)
    np.testing.assert_array_equal(out_none, out_zero)
    assert_states_close(final_none, final_zero, rtol=0, atol=0)
    assert model.loss(x, y, lengths=lengths) == model.loss(x, y, lengths=lengths, initial_state=zeros)


def test_final_state_of_empty_sequence_is_initial_state(rng):
    model = build_model("lstm", "2layers", True, "tag")
    x, _, lengths, state = make_batch(rng, model, "mixed")
    empty = np.flatnonzero(lengths == 0)
    assert empty.size
    _, final = model.forward(x, lengths=lengths, initial_state=state)
    for name in state:
        np.testing.assert_array_equal(final[name][empty], state[name][empty], err_msg=name)


@pytest.mark.parametrize("head", ["classify", "tag_delay1", "regress"])
def test_time_major(head, rng):
    """time_major=True takes (T, B, F) and gives the transposes of the batch-major results."""
    model = build_model(ALL_CELLS[:2], (3, 2), True, head)
    x, y, lengths, state = make_batch(rng, model, "mixed")
    xt = x.transpose(1, 0, 2).copy()
    out, final = model.forward(x, lengths=lengths, initial_state=state)
    out_t, final_t = model.forward(xt, lengths=lengths, initial_state=state, time_major=True)
    np.testing.assert_allclose(out_t, out.transpose(1, 0, 2), rtol=1e-13, atol=1e-15)
    assert_states_close(final_t, final, rtol=1e-13, atol=1e-15)

    loss, dx, dstate = model.loss_and_grad(x, y, lengths=lengths, initial_state=state, input_grads=True)
    grads = model.grads.copy()
    loss_t, dx_t, dstate_t = model.loss_and_grad(xt, y, lengths=lengths, initial_state=state, input_grads=True,
                                                 time_major=True)
    np.testing.assert_allclose(loss_t, loss, rtol=1e-13)
    np.testing.assert_allclose(dx_t, dx.transpose(1, 0, 2), rtol=1e-12, atol=1e-15)
    assert_states_close(dstate_t, dstate, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(model.grads, grads, rtol=1e-12, atol=1e-15)
    pred, pred_t = model.predict(x, lengths=lengths), model.predict(xt, lengths=lengths, time_major=True)
    np.testing.assert_allclose(pred_t, pred.transpose(1, 0, 2) if pred.ndim == 3 else pred, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("cell", list(CELLS))
def test_float32_close_to_float64_reference(cell, head, rng):
    model = build_model(cell, "2layers", True, head, dtype=np.float32)
    x, y, lengths, state = make_batch(rng, model, "mixed")
    out = check_against_reference(model, x, y, lengths, state, rtol=1e-4, atol=1e-5)
    assert out.dtype == np.float32
    assert (out[padded(lengths, *x.shape[:2])] == 0.0).all()


# ----------------------------------------------------------------------------- serial vs parallel builds

def run_everything(model, x, y, lengths, state):
    """Every output of the model's passes, as a flat dict of arrays."""
    out, final = model.forward(x, lengths=lengths, initial_state=state)
    loss, dx, dstate = model.loss_and_grad(x, y, lengths=lengths, initial_state=state, input_grads=True)
    results = {"out": out, "loss": np.array(loss), "grads": model.grads.copy(), "dx": dx,
               "predict": model.predict(x, lengths=lengths)}
    results.update({f"final {k}": v for k, v in final.items()})
    results.update({f"dstate {k}": v for k, v in dstate.items()})
    return results


@pytest.mark.parametrize("n_slabs", [2, 3])
@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("head", ["classify", "tag_delay1", "regress"])
def test_serial_build_matches_parallel(head, relu, n_slabs, rng, request):
    """As tests/test_variants.py's test of the same name, for every cell kernel."""
    cells = ["rnn_relu" if relu else "rnn_tanh"] + ALL_CELLS[1:]
    x, y, lengths, state = make_batch(rng, build_model(cells, (3, 2, 4, 2), True, head), "mixed")
    with forced_slabs(n_slabs):
        parallel = run_everything(build_model(cells, (3, 2, 4, 2), True, head), x, y, lengths, state)
    request.getfixturevalue("serial_kernels")
    serial = run_everything(build_model(cells, (3, 2, 4, 2), True, head), x, y, lengths, state)
    assert sorted(serial) == sorted(parallel)
    for name in parallel:
        np.testing.assert_allclose(serial[name], parallel[name], rtol=1e-12, atol=0, err_msg=name)

"""numrnn.infer: forward-only predict and step-by-step streaming against the
whole-sequence forward (float64, 1e-12), thread safety, memory and argument errors."""
import contextlib
import copy
import threading
import tracemalloc

import numpy as np
import pytest

import numrnn as nr
from conftest import CELLS, F, STACKS, VARIANTS, forced_slabs, random_state

MENU = {**CELLS, **VARIANTS}
HEAD_KINDS = {
    "classify": lambda: nr.heads.Classify(3),
    "tag": lambda: nr.heads.Tag(3),
    "tag_delay1": lambda: nr.heads.Tag(3, delay=1),
    "regress": lambda: nr.heads.Regress(2),
    "ctc": lambda: nr.heads.CTC(2, blank=0),
}
TOL = 1e-12
T = 5


def make_model(cell, bidirectional, head, dtype=np.float64, stack="2layers", seed=0):
    """Random N(0, 0.5^2) parameters, as conftest.build_model, with any head of HEAD_KINDS."""
    sizes = STACKS[stack] if isinstance(stack, str) else tuple(stack)
    model = nr.SequenceModel(F, layers=[MENU[cell](h) for h in sizes], bidirectional=bidirectional,
                             head=HEAD_KINDS[head](), dtype=dtype, seed=seed)
    model.params[:] = 0.5 * np.random.default_rng(seed + 1000).standard_normal(model.params.size)
    return model


def per_step(head):
    return isinstance(head, (nr.heads.Tag, nr.heads.CTC))


def lengths_for(head):
    """Mixed lengths including T and 1, and 0 where the head allows it."""
    return np.array([T, 0, 1, 3]) if per_step(head) else np.array([T, 1, 2, 4])


def full_forward_predict(model, x, lengths, beam=None):
    """The whole-sequence path: model.forward's outputs through the head's predict."""
    out, _ = model.forward(x, lengths, time_major=True)
    p, split = model.head_params, model._split
    if lengths is None:
        lengths = np.full(x.shape[1], x.shape[0])
    if beam is not None:
        return model.head.predict(p, out, lengths, split, beam=beam)
    return model.head.predict(p, out, lengths, split)


def log_softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- predict

@pytest.mark.parametrize("head", list(HEAD_KINDS))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", list(MENU))
def test_predict_equals_full_forward(cell, bidirectional, head):
    model = make_model(cell, bidirectional, head)
    rng = np.random.default_rng(1)
    lengths = lengths_for(model.head)
    x = rng.standard_normal((T, len(lengths), F))                       # time-major
    for L, chunk in ((None, nr.infer.CHUNK), (lengths, nr.infer.CHUNK), (lengths, 2)):
        expected = full_forward_predict(model, x, L)
        got = nr.infer.predict(model, x, L, time_major=True, chunk=chunk)
        if isinstance(model.head, nr.heads.CTC):
            assert got == expected
            assert nr.infer.predict(model, x, L, time_major=True, beam=3, chunk=chunk) == \
                full_forward_predict(model, x, L, beam=3)
        else:
            np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
    # The model's own predict (batch-major) takes the same path.
    xb = x.transpose(1, 0, 2)
    got, expected = model.predict(xb, lengths), nr.infer.predict(model, x, lengths, time_major=True)
    if isinstance(model.head, nr.heads.Tag):
        expected = expected.transpose(1, 0, 2)
    if isinstance(model.head, nr.heads.CTC):
        assert got == expected
    else:
        np.testing.assert_array_equal(got, expected)


def slabs(n_slabs):
    """forced_slabs(n_slabs), or nothing for n_slabs 1: a small batch is then one slab."""
    return forced_slabs(n_slabs) if n_slabs > 1 else contextlib.nullcontext()


@pytest.mark.parametrize("n_slabs", [2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", list(MENU))
def test_serial_build_matches_parallel(cell, bidirectional, n_slabs, request):
    """As tests/test_variants.py's test of the same name, for the inference kernels: a
    5-row batch cut into n_slabs slabs on Numba's threads against one slab run serially,
    each on a model of its own; chunk=2 also carries the state across kernel calls."""
    lengths = np.array([T, 0, 1, 3, 2])
    x = np.random.default_rng(2).standard_normal((T, len(lengths), F))     # time-major

    def everything():
        model = make_model(cell, bidirectional, "tag")
        return {"predict": model.predict(x.transpose(1, 0, 2), lengths),
                "predict chunk 2": nr.infer.predict(model, x, lengths, time_major=True, chunk=2)}

    with forced_slabs(n_slabs):
        parallel = everything()
    request.getfixturevalue("serial_kernels")
    serial = everything()
    for name in parallel:
        np.testing.assert_allclose(serial[name], parallel[name], rtol=1e-12, atol=0, err_msg=name)


def test_predict_float32_close_to_full_forward():
    model = make_model("lstm", False, "classify", dtype=np.float32)
    x = np.random.default_rng(3).standard_normal((4, T, F)).astype(np.float32)
    lengths = lengths_for(model.head)
    out, _ = model.forward(x, lengths, time_major=False)
    expected = model.head.predict(model.head_params, np.ascontiguousarray(out.transpose(1, 0, 2)), lengths,
                                  model._split)
    np.testing.assert_allclose(model.predict(x, lengths), expected, rtol=1e-6, atol=1e-7)


def test_predict_memory_does_not_grow_with_steps():
    """Classify on a unidirectional model: besides the input (and its time-major copy)
    only O(CHUNK * B * H) is allocated, not the training path's O(T * B * 4H)."""
    model = make_model("lstm", False, "classify", stack=(16,))
    B, steps = 4, 4000
    x = np.random.default_rng(4).standard_normal((B, steps, F))
    model.predict(x[:, :3])                                             # compile outside the measurement
    tracemalloc.start()
    try:
        model.predict(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    gates_per_step = steps * B * 4 * 16 * 8
    assert peak < 2 * x.nbytes + 200_000, (peak, x.nbytes)
    assert peak < gates_per_step / 2


@pytest.mark.parametrize("n_slabs", [1, 3], ids=["natural", "3slabs"])
def test_concurrent_predict_matches_single_thread(n_slabs, tmp_path):
    """Four threads predicting on one loaded model get the single-thread results. With
    natural slabs the 3- and 4-row batches run the serial builds while the 17- and
    33-row ones run the parallel builds (when Numba has two threads or more); with 3
    slabs every batch runs the parallel builds, so four callers run them at once."""
    nr.save(make_model("lstm", False, "tag", dtype=np.float32), tmp_path / "m.npz")
    nr.save(make_model("gru_ra", True, "classify", dtype=np.float32), tmp_path / "b.npz")
    for name in ("m.npz", "b.npz"):
        model = nr.load(tmp_path / name)
        rng = np.random.default_rng(5)
        inputs = [rng.standard_normal((rows, 6 + k, F)).astype(np.float32) for k, rows in enumerate((3, 4, 17, 33))]
        results = [[None] * 5 for _ in range(4)]
        barrier = threading.Barrier(4)

        def work(k):
            barrier.wait()
            for r in range(5):
                results[k][r] = model.predict(inputs[k])

        with slabs(n_slabs):
            expected = [model.predict(x) for x in inputs]
            threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for k in range(4):
            for r in range(5):
                np.testing.assert_array_equal(results[k][r], expected[k])


# ----------------------------------------------------------------------------- streaming

@pytest.mark.parametrize("n_slabs", [1, 2, 3], ids=["1slab", "2slabs", "3slabs"])
@pytest.mark.parametrize("head", list(HEAD_KINDS))
@pytest.mark.parametrize("cell", list(MENU))
def test_stream_equals_whole_sequence(cell, head, n_slabs):
    """Each step against model.forward (one slab, the serial builds). A stream takes its
    slab count when it is made, so with n_slabs > 1 it is made, and stepped, inside
    forced_slabs: its steps then run the parallel builds."""
    model = make_model(cell, False, head)
    rng = np.random.default_rng(6)
    lengths = lengths_for(model.head)
    B = len(lengths)
    x = rng.standard_normal((B, T, F))
    state0 = random_state(rng, model, B)
    out, final = model.forward(x, lengths, initial_state=state0)        # (B, T, D)
    p, split = model.head_params, model._split
    out_tm = np.ascontiguousarray(out.transpose(1, 0, 2))

    with slabs(n_slabs):
        stream = model.stream(batch_size=B, initial_state=state0)
        assert [runner.n_slabs for runner in stream._runners] == [n_slabs] * len(model.layers)
        outputs, heads = [], []
        for t in range(T):
            active = t < lengths
            heads.append(stream.step(x[:, t], active))
            outputs.append(stream.output)
            np.testing.assert_allclose(outputs[-1], out[:, t], rtol=0, atol=TOL)
    for name, value in stream.state.items():
        np.testing.assert_allclose(value, final[name], rtol=0, atol=TOL, err_msg=name)

    head_out = np.stack(heads, axis=1)                                  # (B, T, n)
    if isinstance(model.head, nr.heads.Tag):
        expected = model.head.predict(p, out_tm, lengths, split).transpose(1, 0, 2)
        np.testing.assert_allclose(head_out, expected, rtol=0, atol=TOL)
    elif isinstance(model.head, nr.heads.CTC):
        expected = log_softmax(model.head.logits(p, out_tm)).transpose(1, 0, 2)
        valid = np.arange(T)[None, :] < lengths[:, None]
        np.testing.assert_allclose(head_out[valid], expected[valid], rtol=0, atol=TOL)
        assert (head_out[~valid] == 0).all()
        decoded = nr.ctc.greedy_decode(head_out, lengths, blank=model.head.blank)[0]
        assert decoded == model.head.predict(p, out_tm, lengths, split)
    else:   # the last step of each sequence predicts as the whole sequence does
        expected = model.head.predict(p, out_tm, lengths, split)
        last = head_out[np.arange(B), lengths - 1]
        np.testing.assert_allclose(last, expected, rtol=0, atol=TOL)
        np.testing.assert_allclose(head_out[:, -1], expected, rtol=0, atol=TOL)   # inactive rows keep it


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "lstm_ln_combo"])
def test_stream_state_get_set_reset_copy(cell):
    model = make_model(cell, False, "tag")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2 * T, F))
    stream = model.stream(batch_size=2)
    first = [stream.step(x[:, t]) for t in range(T)]
    saved = copy.deepcopy(stream.state)
    fork = stream.copy()
    second = [stream.step(x[:, t]) for t in range(T, 2 * T)]
    # The saved state is a copy, untouched by later steps; setting it replays exactly.
    stream.state = saved
    np.testing.assert_array_equal(np.stack([stream.step(x[:, t]) for t in range(T, 2 * T)]), np.stack(second))
    np.testing.assert_array_equal(np.stack([fork.step(x[:, t]) for t in range(T, 2 * T)]), np.stack(second))
    # The whole sequence gives the same, and reset() goes back to the zero state.
    np.testing.assert_allclose(np.stack(first + second, axis=1), model.predict(x), rtol=0, atol=TOL)
    stream.reset()
    assert stream.steps == 0 and all((v == 0).all() for v in stream.state.values())
    np.testing.assert_array_equal(np.stack([stream.step(x[:, t]) for t in range(T)]), np.stack(first))
    # A partial state dict: missing keys are zeros.
    stream.state = {"layers.0.fw.h": saved["layers.0.fw.h"]}
    np.testing.assert_array_equal(stream.state["layers.0.fw.h"], saved["layers.0.fw.h"])
    assert (stream.state["layers.1.fw.h"] == 0).all()


def test_stream_masked_then_unmasked_steps():
    """Steps without a mask advance every row again after masked ones, a rejected
    step changes nothing, and integer input is taken as numbers."""
    model = make_model("lstm", False, "classify")
    x = np.random.default_rng(9).standard_normal((2, 4, F))
    masks = [np.array([True, False]), None, np.array([False, True]), None]
    stream, reference = model.stream(batch_size=2), model.stream(batch_size=2)
    for t, active in enumerate(masks):
        got = stream.step(x[:, t], active)
        want = reference.step(x[:, t], np.ones(2, bool) if active is None else active)
        np.testing.assert_array_equal(got, want)
    state = stream.state
    with pytest.raises(ValueError, match="non-finite value nan in row 0"):
        stream.step(np.array([[np.nan, 0.0], [0.0, 0.0]]))
    assert stream.steps == 4
    for name, value in stream.state.items():
        np.testing.assert_array_equal(value, state[name])
    np.testing.assert_array_equal(stream.step(np.array([[1, 2], [3, 4]])),
                                  reference.step(np.array([[1.0, 2.0], [3.0, 4.0]])))


def test_stream_batch_one_float32():
    model = make_model("gru_ra", False, "classify", dtype=np.float32)
    x = np.random.default_rng(8).standard_normal((1, T, F)).astype(np.float32)
    stream = model.stream()
    for t in range(T):
        probs = stream.step(x[:, t])
    assert probs.shape == (1, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, model.predict(x), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("x, match", [
    (np.zeros((2, 3, F + 1)), "features per step"),
    (np.zeros((3, F)), "rank 3"),
    (np.zeros((2, 3, F, 1)), "rank 3"),
    (np.zeros((2, 3, F), complex), "dtype complex"),
    (np.zeros((2, 3, F), bool), "dtype bool"),
    (np.full((2, 3, F), "a"), "dtype <U1"),
    (np.full((2, 3, F), np.nan), "non-finite"),
])
def test_predict_bad_input(x, match):
    model = make_model("lstm", False, "classify")
    with pytest.raises(ValueError, match=match):
        model.predict(x)


def test_predict_bad_arguments():
    model = make_model("lstm", False, "classify")
    x = np.zeros((2, 3, F))
    with pytest.raises(ValueError, match=r"lengths\[1\] = .*4.* is outside \[0, 3\]"):
        model.predict(x, [3, 4])
    with pytest.raises(ValueError, match=r"lengths\[0\] is 0"):
        model.predict(x, [0, 3])
    with pytest.raises(ValueError, match="beam = 2 applies only to the CTC head"):
        model.predict(x, beam=2)
    with pytest.raises(ValueError, match="chunk must be a positive integer, got 0"):
        nr.infer.predict(model, x, chunk=0)


def test_stream_errors():
    model = make_model("lstm", False, "classify")
    with pytest.raises(ValueError, match="bidirectional"):
        make_model("lstm", True, "classify").stream()
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        model.stream(batch_size=0)
    stream = model.stream(batch_size=2)
    with pytest.raises(ValueError, match=r"x_t must have shape \(batch_size, input_size\) = \(2, 2\), got "
                                         r"shape \(2, 3\)"):
        stream.step(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="x_t must have shape"):
        stream.step(np.zeros(F))
    with pytest.raises(ValueError, match="x_t must hold numbers, got dtype complex128"):
        stream.step(np.zeros((2, F), complex))
    with pytest.raises(ValueError, match="non-finite value inf in row 1"):
        stream.step(np.array([[0.0, 0.0], [0.0, np.inf]]))
    with pytest.raises(ValueError, match="active must be a bool array of shape"):
        stream.step(np.zeros((2, F)), active=[1, 0])
    with pytest.raises(ValueError, match="state has unknown key 'layers.0.bw.h'"):
        stream.state = {"layers.0.bw.h": np.zeros((2, 3))}
    with pytest.raises(ValueError, match=r"state\['layers.0.fw.h'\] must have shape \(2, 3\)"):
        stream.state = {"layers.0.fw.h": np.zeros((1, 3))}
    assert stream.steps == 0

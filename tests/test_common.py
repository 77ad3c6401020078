"""numrnn.kernels.common and .activations: the activations the kernels use, element by
element and over whole gate blocks, the kernels' handling of subnormal numbers, and the
thread pool's start."""
import subprocess
import sys

import numba
import numpy as np
import pytest
from scipy.special import expit

import numrnn as nr
from numrnn.kernels.activations import sigmoid_into, tanh_into
from numrnn.kernels.common import sigmoid, tanh


@numba.njit(error_model="numpy")
def apply_tanh(x, out):
    for i in range(x.shape[0]):
        out[i] = tanh(x[i])


@numba.njit(error_model="numpy")
def apply_sigmoid(x, out):
    for i in range(x.shape[0]):
        out[i] = sigmoid(x[i])


@numba.njit(error_model="numpy")
def apply_tanh_block(x, out):
    tanh_into(out, x)


@numba.njit(error_model="numpy")
def apply_sigmoid_block(x, out):
    sigmoid_into(out, x)


def float32_grid():
    """Every float32 in [-1, 1] at a fine spacing, the saturated tails out to the
    largest finite float32, and the infinities."""
    core = np.linspace(-12.0, 12.0, 2_400_001)
    tails = np.geomspace(12.0, np.finfo(np.float32).max, 2000)
    tiny = np.geomspace(np.finfo(np.float32).tiny, 1e-3, 2000)
    values = np.concatenate([core, tails, -tails, tiny, -tiny, [0.0, np.inf, -np.inf]])
    return values.astype(np.float32)


@pytest.mark.parametrize("apply_tanh", [apply_tanh, apply_tanh_block])
def test_float32_tanh_is_within_4e7_of_libm(apply_tanh):
    x = float32_grid()
    out = np.empty_like(x)
    apply_tanh(x, out)
    assert out.dtype == np.float32
    exact = np.tanh(x.astype(np.float64))
    assert np.abs(out - exact).max() < 4e-7
    # relative accuracy where tanh is small, and exact saturation and oddness
    small = np.abs(x) < 1e-3
    assert (np.abs(out[small] - exact[small]) <= 2e-7 * np.abs(exact[small])).all()
    assert out[x == np.inf][0] == 1.0 and out[x == -np.inf][0] == -1.0
    assert (np.abs(out) <= 1.0).all()
    mirrored = np.empty_like(x)
    apply_tanh(-x, mirrored)
    np.testing.assert_array_equal(mirrored, -out)


@pytest.mark.parametrize("apply_sigmoid", [apply_sigmoid, apply_sigmoid_block])
def test_float32_sigmoid_is_within_3e7_of_libm(apply_sigmoid):
    x = float32_grid()
    out = np.empty_like(x)
    apply_sigmoid(x, out)
    exact = expit(x.astype(np.float64))
    assert np.abs(out - exact).max() < 3e-7
    assert ((out >= 0.0) & (out <= 1.0)).all()


@pytest.mark.parametrize("apply, exact", [(apply_tanh, np.tanh), (apply_tanh_block, np.tanh),
                                          (apply_sigmoid, expit), (apply_sigmoid_block, expit)])
def test_float64_uses_libm(apply, exact):
    x = np.linspace(-40.0, 40.0, 100_001)
    out = np.empty_like(x)
    apply(x, out)
    np.testing.assert_allclose(out, exact(x), rtol=2e-15, atol=1e-300)


@pytest.mark.parametrize("apply", [apply_tanh, apply_tanh_block, apply_sigmoid, apply_sigmoid_block])
def test_nan_propagates(apply):
    """A diverging run's NaN must reach the loss, not be clamped away."""
    x = np.array([0.5, np.nan, -3.0], np.float32)
    out = np.zeros_like(x)
    apply(x, out)
    assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()


@pytest.mark.parametrize("apply", [apply_tanh_block, apply_sigmoid_block])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 15, 16, 17, 31, 33, 128])
def test_blocks_of_any_length_stop_at_their_end(apply, n):
    """The last vector is masked: nothing past the block is read into or written."""
    x = np.linspace(-3.0, 3.0, n).astype(np.float32)
    buffer = np.full(n + 40, 7.0, np.float32)
    apply(x, buffer[:n])
    assert (buffer[n:] == 7.0).all()
    expected = np.empty_like(x)
    (apply_tanh if apply is apply_tanh_block else apply_sigmoid)(x, expected)
    np.testing.assert_allclose(buffer[:n], expected, rtol=0, atol=3e-7)


SUBNORMAL32 = np.float32(1e-39)


@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_flush_subnormals_and_restore_the_callers_mode(threads):
    """An RNN that copies its state (U = I, relu, no input) gets a subnormal initial
    state: the kernels flush it to 0 in every thread that runs them (both slabs of a
    batch of 32 rows), and NumPy in the calling thread still computes with subnormals
    afterwards."""
    previous = nr.get_num_threads()
    nr.set_num_threads(threads)
    try:
        model = nr.SequenceModel(1, [nr.RNN(4, activation="relu")], head=nr.heads.Tag(2), dtype=np.float32, seed=0)
        params = dict(model.named_params())
        params["layers.0.fw.W"][:] = 0.0
        params["layers.0.fw.U"][:] = np.eye(4, dtype=np.float32)
        params["layers.0.fw.b"][:] = 0.0
        B = 32
        h0 = np.full((B, 4), SUBNORMAL32, np.float32)
        out, _ = model.forward(np.zeros((B, 3, 1), np.float32), initial_state={"layers.0.fw.h": h0})
        assert np.all(out == 0.0)
        # The same model with a normal state copies it, so the zeros above are the flush.
        normal = np.full((B, 4), 1e-29, np.float32)
        out, _ = model.forward(np.zeros((B, 3, 1), np.float32), initial_state={"layers.0.fw.h": normal})
        assert np.all(out == normal[:, None, :])
    finally:
        nr.set_num_threads(previous)
    assert np.float32(2.0) * SUBNORMAL32 == np.float32(2e-39) > 0.0


def test_serial_builds_run_before_the_thread_pool_starts():
    """A small batch runs only the kernels' serial builds, and these call no parallel
    code: loaded from the cache in a fresh process before Numba's thread pool has
    started, they run (a serial build that called a parallel helper then called
    address 0 and crashed the process). The first run here may compile; the second
    loads every kernel from the cache."""
    code = """if True:
        import numba
        import numpy as np
        import numrnn as nr
        model = nr.SequenceModel(2, [nr.LSTM(3), nr.GRU(3)], head=nr.heads.Classify(2), dtype=np.float64, seed=0)
        # 4 rows: one slab, the serial builds; 143 parameters: Adam's serial build
        loss = model.loss_and_grad(np.ones((4, 5, 2)), np.array([0, 1, 0, 1]))
        nr.Adam(model).step()
        try:
            numba.threading_layer()
        except ValueError:
            print("no pool", loss)
    """
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("no pool")


def test_loss_kernels_serial_and_parallel_builds_agree():
    """The heads run the loss kernels' serial builds below MIN_PARALLEL_ELEMENTS
    logits or predictions, their parallel builds above; both give the same numbers."""
    from numrnn.kernels.losses import softmax_cross_entropy, squared_error
    from numrnn.threads import MIN_PARALLEL_ELEMENTS
    rng = np.random.default_rng(0)
    N, C = MIN_PARALLEL_ELEMENTS // 10 + 3, 10
    assert softmax_cross_entropy.for_elements(N * C) is softmax_cross_entropy
    assert softmax_cross_entropy.for_elements(N) is softmax_cross_entropy.serial_build
    logits, labels = rng.standard_normal((N, C)).astype(np.float32), rng.integers(0, C, N)
    target = rng.standard_normal((N, C)).astype(np.float32)
    results = []
    for build in ("serial_build", "parallel_build"):
        dlogits, losses = np.empty_like(logits), np.empty(N, np.float32)
        getattr(softmax_cross_entropy, build)(dlogits, losses, logits, labels, 1.0 / N)
        dpred, errors = np.empty_like(logits), np.empty(N, np.float32)
        getattr(squared_error, build)(dpred, errors, logits, target, 1.0 / (N * C))
        results.append((dlogits, losses, dpred, errors))
    for serial, parallel in zip(*results):
        assert (serial == parallel).all()
    assert results[0][1].min() > 0.0 and results[0][3].min() > 0.0

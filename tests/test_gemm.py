"""kernels.gemm: the packed register-tile product against NumPy."""
import numpy as np
import pytest

from numrnn.kernels.gemm import PACK_MIN_ROWS, TILE_ROWS, matmul, matmul_add, pack


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 6, 7, TILE_ROWS, 2 * TILE_ROWS + 7, 64])
@pytest.mark.parametrize("K", [0, 1, 7, 128])
@pytest.mark.parametrize("N", [0, 1, 15, 16, 33, 80, 512])
def test_matches_numpy(dtype, M, K, N):
    rng = np.random.default_rng(M * 10007 + K * 101 + N)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    bound = 4 * max(K, 1) * np.finfo(dtype).eps * (np.abs(a) @ np.abs(b) + 1e-30)
    # a in either layout; b packed from either layout (matmul reads b itself only
    # when there are no panels).
    for a_layout, b_layout in [(a, b), (np.asfortranarray(a), np.asfortranarray(b))]:
        # out: the start of a longer buffer, whose tail the masked stores must not touch.
        buffer = np.full(M * N + 64, np.nan, dtype)
        out = buffer[:M * N].reshape(M, N)
        matmul(a_layout, b, pack(b_layout, PACK_MIN_ROWS), out)
        assert np.isnan(buffer[M * N:]).all()
        assert np.all(np.abs(out - expected) <= bound)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M", [1, 3, TILE_ROWS + 5, 64])
@pytest.mark.parametrize("K", [0, 1, 64])
@pytest.mark.parametrize("N", [1, 15, 16, 33, 128, 200])
def test_matmul_add_accumulates(dtype, M, K, N):
    """out += a @ b, reading b itself or its panels, a transposed (as the weight
    gradients pass it) or not, b with a row stride longer than its width."""
    rng = np.random.default_rng(M * 10007 + K * 101 + N)
    a = rng.standard_normal((M, K)).astype(dtype)
    wide = rng.standard_normal((K, N + 9)).astype(dtype)
    b = wide[:, :N]
    start = rng.standard_normal((M, N)).astype(dtype)
    expected = start + a.astype(np.float64) @ b.astype(np.float64)
    bound = 4 * (max(K, 1) + 1) * np.finfo(dtype).eps * (np.abs(a) @ np.abs(b) + np.abs(start))
    for a_layout in (a, np.ascontiguousarray(a.T).T):
        for panels in (None, pack(b, PACK_MIN_ROWS), pack(b, 0)):
            buffer = np.full(M * N + 64, np.nan, dtype)
            out = buffer[:M * N].reshape(M, N)
            out[:] = start
            matmul_add(a_layout, b, panels, out)
            assert np.isnan(buffer[M * N:]).all()
            assert np.all(np.abs(out - expected) <= bound)


def test_matmul_add_reads_a_transposed_b():
    """b whose columns are not contiguous (W^T for dx) without panels is still right."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((5, 40)).astype(np.float32)
    W = rng.standard_normal((28, 40)).astype(np.float32)
    out = np.ones((5, 28), np.float32)
    matmul_add(a, W.T, None, out)
    np.testing.assert_allclose(out, 1.0 + a @ W.T, rtol=1e-5, atol=1e-5)


def test_few_rows_go_to_numpy():
    """Too few rows to pay for packing: no panels, and matmul computes with np.dot."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 128)).astype(np.float32)
    b = rng.standard_normal((128, 512)).astype(np.float32)
    panels = pack(b, PACK_MIN_ROWS - 1)
    assert panels.shape[0] == 0
    out = np.empty((3, 512), np.float32)
    matmul(a, b, panels, out)
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)


def test_rows_do_not_depend_on_the_slab():
    """A row's result is the same whichever slab of rows it is computed in (the serial
    and parallel kernels then agree exactly)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((37, 128)).astype(np.float32)
    b = rng.standard_normal((128, 200)).astype(np.float32)
    packed = pack(b, PACK_MIN_ROWS)
    whole = np.empty((37, 200), np.float32)
    matmul(a, b, packed, whole)
    for lo, hi in [(0, 5), (5, 21), (21, 37)]:
        part = np.empty((hi - lo, 200), np.float32)
        matmul(a[lo:hi], b, packed, part)
        np.testing.assert_array_equal(part, whole[lo:hi])


def test_pack_layout():
    b = np.arange(3 * 40, dtype=np.float32).reshape(3, 40)
    panels = pack(b, PACK_MIN_ROWS)
    w = panels.shape[2]
    assert panels.shape == (-(-40 // w), 3, w)
    for p in range(panels.shape[0]):
        cols = min(w, 40 - p * w)
        np.testing.assert_array_equal(panels[p, :, :cols], b[:, p * w:p * w + cols])
        assert not panels[p, :, cols:].any()


def test_bad_shapes_are_refused():
    a = np.ones((4, 5), np.float32)
    b = np.ones((5, 6), np.float32)
    packed = pack(b, PACK_MIN_ROWS)
    with pytest.raises(ValueError, match="shapes"):
        matmul(np.ones((4, 6), np.float32), b, packed, np.empty((4, 6), np.float32))
    with pytest.raises(ValueError, match="shapes"):
        matmul(a, b, packed, np.empty((3, 6), np.float32))
    with pytest.raises(ValueError, match="shapes"):
        matmul_add(a, b, None, np.empty((4, 7), np.float32))

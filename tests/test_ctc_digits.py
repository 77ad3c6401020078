"""numrnn.data.ctc_digits: digit strings built from (stand-in) MNIST images, read
column by column: shapes, lengths, labels, layout, determinism."""
import numpy as np
import pytest

from numrnn.data import ctc_digits
from numrnn.data.ctc_digits import BLANK, GAP, MARGIN, MAX_DIGITS, PAD, digit_strings, ink_columns

M = 40


@pytest.fixture(scope="module")
def images():
    """M images, each inked in its own band of columns [2 + i % 7, 12 + i % 11) with
    row r of column c holding a value unique to (image, row, column); digit i % 10."""
    x = np.zeros((M, 28, 28), np.float32)
    for i in range(M):
        lo, hi = 2 + i % 7, 12 + i % 11
        rows, cols = np.meshgrid(np.arange(28), np.arange(lo, hi), indexing="ij")
        x[i, rows, cols] = (1 + i * 28 * 28 + rows * 28 + cols) / (M * 28 * 28 + 1)
    return x, np.arange(M) % 10


def test_ink_columns(images):
    x, _ = images
    first, stop = ink_columns(x)
    np.testing.assert_array_equal(first, 2 + np.arange(M) % 7)
    np.testing.assert_array_equal(stop, 12 + np.arange(M) % 11)
    first, stop = ink_columns(np.zeros((1, 28, 28)))
    assert (first[0], stop[0]) == (0, 28)


def test_shapes_lengths_and_labels(images):
    x, digits = images
    s = digit_strings(x, digits, 300, np.random.default_rng(0))
    first, stop = ink_columns(x)
    n = 300
    assert s.x.shape == (n, s.lengths.max(), 28) and s.x.dtype == np.float32
    assert s.y.shape == s.sources.shape == (n, MAX_DIGITS) and s.y.dtype == np.int64
    assert set(np.unique(s.label_lengths)) == set(range(1, MAX_DIGITS + 1))
    used = np.arange(MAX_DIGITS)[None, :] < s.label_lengths[:, None]
    assert (s.y[~used] == PAD).all() and (s.sources[~used] == PAD).all()
    np.testing.assert_array_equal(s.y[used], digits[s.sources[used]])
    assert ((s.y[used] >= 0) & (s.y[used] < 10) & (s.y[used] != BLANK)).all()
    widths = np.where(used, (stop - first)[np.maximum(s.sources, 0)], 0).sum(axis=1)
    spaces = s.lengths - widths            # margins and gaps
    k = s.label_lengths
    assert (spaces >= 2 * MARGIN[0] + (k - 1) * GAP[0]).all()
    assert (spaces <= 2 * MARGIN[1] + (k - 1) * GAP[1]).all()
    assert (s.x[np.arange(s.x.shape[1])[None, :] >= s.lengths[:, None]] == 0).all(), "padding is 0"


def test_column_by_column_layout(images):
    """Step t of string b is column t of its canvas: the digits' inked columns, in
    order, transposed (28 row values per step), with all-zero columns between."""
    x, digits = images
    s = digit_strings(x, digits, 50, np.random.default_rng(1))
    first, stop = ink_columns(x)
    for b in range(50):
        seq = s.x[b, :s.lengths[b]]                       # (W, 28)
        inked = np.flatnonzero(seq.any(axis=1))
        # Split the inked steps into runs separated by blank columns: one run per digit.
        runs = np.split(inked, np.flatnonzero(np.diff(inked) > 1) + 1)
        assert len(runs) == s.label_lengths[b]
        assert MARGIN[0] <= inked[0] <= MARGIN[1] and MARGIN[0] <= len(seq) - 1 - inked[-1] <= MARGIN[1]
        for k, run in enumerate(runs):
            i = s.sources[b, k]
            np.testing.assert_array_equal(seq[run[0]:run[-1] + 1], x[i, :, first[i]:stop[i]].T)
            if k:
                assert GAP[0] <= run[0] - runs[k - 1][-1] - 1 <= GAP[1]


def test_determinism_and_prefixes(images):
    x, digits = images
    a = digit_strings(x, digits, 64, np.random.default_rng(5))
    b = digit_strings(x, digits, 64, np.random.default_rng(5))
    c = digit_strings(x, digits, 64, np.random.default_rng(6))
    for name in ("x", "y", "lengths", "label_lengths", "sources"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert not np.array_equal(a.y, c.y)
    head = digit_strings(x, digits, 10, np.random.default_rng(5))
    np.testing.assert_array_equal(head.y, a.y[:10])
    np.testing.assert_array_equal(head.x, a.x[:10, :head.x.shape[1]])


def test_options_and_errors(images):
    x, digits = images
    s = digit_strings(x, digits, 40, np.random.default_rng(0), min_digits=2, max_digits=2, gap=(0, 0),
                      margin=(1, 1))
    first, stop = ink_columns(x)
    assert (s.label_lengths == 2).all()
    np.testing.assert_array_equal(s.lengths, 2 + (stop - first)[s.sources[:, :2]].sum(axis=1))
    with pytest.raises(ValueError, match=r"images must have shape \(M, 28, 28\)"):
        digit_strings(x[:, :27], digits, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"digits must have shape \(40,\)"):
        digit_strings(x, digits[:3], 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        digit_strings(x, digits, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_digits = 6 exceeds MAX_DIGITS = 5"):
        digit_strings(x, digits, 3, np.random.default_rng(0), max_digits=6)
    with pytest.raises(ValueError, match=r"gap = \(3, 2\) must satisfy"):
        digit_strings(x, digits, 3, np.random.default_rng(0), gap=(3, 2))
    assert ctc_digits.INPUT_SIZE == 28 and (ctc_digits.N_LABELS, ctc_digits.BLANK) == (10, 10)

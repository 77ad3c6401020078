"""Digit strings for CTC: 1 to 5 MNIST digits side by side, read column by column.

    data = load_mnist()
    strings = digit_strings(data["train_x"], data["train_y"], 1000, np.random.default_rng(0))
    split = nr.Split(strings.x, strings.y, strings.lengths, strings.label_lengths)

Each string is built on a 28-pixel-high canvas: a left margin, then each digit
cropped to its inked columns (the columns with a non-zero pixel), with a gap
between neighbours, then a right margin; the number of digits, the images, the
gaps and the margins are drawn at random. The model reads the canvas one column
per step: ``x[b, t, r]`` is the pixel of row ``r`` (top to bottom) in column
``t``, so a string of width W is W steps of 28 features. Strings are padded with
zero columns to the widest one of the set; ``lengths`` holds each width.

Labels are the digits themselves, 0..9, and the blank is class 10:
``heads.CTC(N_LABELS, blank=BLANK)``. ``y`` (N, MAX_DIGITS) is padded with
``PAD`` beyond ``label_lengths``.

Which MNIST images a set draws from decides what it measures: ``numrnn.tasks``
builds the training strings from the 50,000 training images, the validation
strings from the 10,000 held-out training images and the fixed test strings
(seed ``TEST_SEED``) from the 10,000 test images, so no digit image is shared
between the three.
"""
from dataclasses import dataclass

import numpy as np

MIN_DIGITS, MAX_DIGITS = 1, 5
GAP = (2, 8)          # columns between neighbouring digits, inclusive range
MARGIN = (0, 4)       # columns before the first and after the last digit, inclusive range
N_LABELS = 10         # the digits 0..9
BLANK = 10            # the CTC blank class
PAD = -1              # y beyond label_lengths
INPUT_SIZE = 28       # pixels per column
TEST_SEED = 0         # the fixed test strings


@dataclass
class DigitStrings:
    """A set of digit strings.

    Attributes:
        x: (N, W, 28) float32, column by column, 0 beyond ``lengths``.
        y: (N, MAX_DIGITS) int64 digits, ``PAD`` beyond ``label_lengths``.
        lengths: (N,) int64 widths (steps).
        label_lengths: (N,) int64 number of digits, in [MIN_DIGITS, MAX_DIGITS].
        sources: (N, MAX_DIGITS) int64 index of each digit's image in the source
            images, ``PAD`` beyond ``label_lengths``.
    """

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray
    label_lengths: np.ndarray
    sources: np.ndarray


def _check_range(name, value, low):
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of integers, got {value!r}") from None
    if not low <= a <= b:
        raise ValueError(f"{name} = {value!r} must satisfy {low} <= low <= high")
    return a, b


def ink_columns(images):
    """(first, stop) (N,) int64: the columns [first, stop) of each (28, 28) image that
    hold ink (a non-zero pixel); the whole width for an empty image."""
    ink = images.max(axis=1) > 0                                       # (N, 28) per column
    empty = ~ink.any(axis=1)
    first = np.where(empty, 0, ink.argmax(axis=1))
    stop = np.where(empty, images.shape[2], images.shape[2] - ink[:, ::-1].argmax(axis=1))
    return first.astype(np.int64), stop.astype(np.int64)


def digit_strings(images, digits, n, rng, min_digits=MIN_DIGITS, max_digits=MAX_DIGITS, gap=GAP, margin=MARGIN):
    """Draw ``n`` digit strings from ``images`` with labels ``digits``.

    Args:
        images: (M, 28, 28) float pixels in [0, 1] (``load_mnist``'s ``*_x``).
        digits: (M,) int labels in [0, 10).
        n: number of strings.
        rng: a ``np.random.Generator``; the strings are a function of its state, and
            the first k of n strings equal the k strings drawn from the same state.
        min_digits, max_digits: the number of digits per string is uniform in this range.
        gap, margin: (low, high) inclusive ranges of the columns between digits and
            before / after the string, each drawn uniformly.

    Returns:
        A ``DigitStrings``.
    """
    images = np.asarray(images)
    digits = np.asarray(digits)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"images must have shape (M, 28, 28), got {images.shape}")
    if digits.shape != (images.shape[0],):
        raise ValueError(f"digits must have shape ({images.shape[0]},), one per image, got {digits.shape}")
    if images.shape[0] == 0:
        raise ValueError("images holds no image to draw digits from")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    min_digits, max_digits = _check_range("(min_digits, max_digits)", (min_digits, max_digits), 1)
    if max_digits > MAX_DIGITS:
        raise ValueError(f"max_digits = {max_digits} exceeds MAX_DIGITS = {MAX_DIGITS}")
    gap = _check_range("gap", gap, 0)
    margin = _check_range("margin", margin, 0)

    first, stop = ink_columns(images)
    # One row of uniforms per string, so that the first k of n strings are the k
    # strings drawn with n = k from the same generator state.
    u = rng.random((n, 1 + MAX_DIGITS + (MAX_DIGITS - 1) + 2))

    def uniform_int(cols, low, high):
        return np.minimum(low + (u[:, cols] * (high - low + 1)).astype(np.int64), high)

    counts = uniform_int(0, min_digits, max_digits)                                 # (n,)
    sources = uniform_int(slice(1, 1 + MAX_DIGITS), 0, images.shape[0] - 1)         # (n, MAX_DIGITS)
    gaps = uniform_int(slice(1 + MAX_DIGITS, 2 * MAX_DIGITS), gap[0], gap[1])       # (n, MAX_DIGITS - 1)
    margins = uniform_int(slice(2 * MAX_DIGITS, 2 * MAX_DIGITS + 2), margin[0], margin[1])   # (n, 2)
    used = np.arange(MAX_DIGITS)[None, :] < counts[:, None]
    sources[~used] = PAD
    widths = np.where(used, (stop - first)[sources], 0)
    lengths = margins.sum(axis=1) + widths.sum(axis=1) + (gaps * used[:, 1:]).sum(axis=1)

    x = np.zeros((n, int(lengths.max()), INPUT_SIZE), np.float32)                 # (n, W, 28)
    for b in range(n):
        t = margins[b, 0]
        for k in range(counts[b]):
            i = sources[b, k]
            w = widths[b, k]
            x[b, t:t + w] = images[i, :, first[i]:stop[i]].T                      # columns become steps
            t += w + (gaps[b, k] if k + 1 < counts[b] else 0)
    y = np.where(used, np.asarray(digits, np.int64)[np.maximum(sources, 0)], PAD)
    return DigitStrings(x, y, lengths.astype(np.int64), counts.astype(np.int64), sources.astype(np.int64))

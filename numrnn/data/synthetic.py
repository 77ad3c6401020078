"""Synthetic long-dependency tasks, generated from a seed.

Each task is a small frozen dataclass with the same interface:

- ``name``, ``input_size`` and ``head`` (the ``numrnn.heads`` spec the model needs);
- ``sample(n, rng) -> (x, y, lengths)``: ``n`` fresh sequences drawn from the
  NumPy Generator ``rng`` (training data on the fly); ``x`` is float32
  (n, T, input_size) batch-major, ``y`` the head's targets, ``lengths`` an int64
  (n,) array, or None when every sequence has all T steps;
- ``test_set(n=1000)``: a fixed test set, the same on every machine;
- ``metric`` (the name of the number to report), ``metrics(pred, y, lengths)``
  (that number, and the loss-free others, from ``model.predict``'s output) and
  ``baseline``: the value of each metric for the best predictor that does not
  remember, the figure a trained model must beat.

The fixed test sets are drawn from ``np.random.SeedSequence(TEST_SEED,
spawn_key=(k,))`` with ``k`` a per-task constant: no ``np.random.default_rng(seed)``
used for training draws the same stream.

References: the adding task and the copy task follow Hochreiter & Schmidhuber
(1997) in the forms of Le, Jaitly & Hinton (2015, "A simple way to initialize
recurrent networks of rectified linear units") and Arjovsky, Shah & Bengio
(2016, "Unitary evolution recurrent neural networks").
"""
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .. import heads

__all__ = ["TEST_SEED", "AddingTask", "CopyTask", "ParityTask", "adding", "copy", "parity",
           "TASKS", "make_task"]

TEST_SEED = 0


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class _Task:
    """What the tasks share: argument checks and the fixed test set."""

    _test_key: ClassVar[int]

    def sample(self, n, rng):
        _check_int("n", n, 1)
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return self._generate(int(n), rng)

    def test_set(self, n=1000):
        """(x, y, lengths): ``n`` sequences from the task's fixed test stream. The
        same n always gives the same set; a different n gives a different one."""
        rng = np.random.default_rng(np.random.SeedSequence(TEST_SEED, spawn_key=(self._test_key,)))
        return self.sample(n, rng)


@dataclass(frozen=True)
class AddingTask(_Task):
    """The adding problem.

    x (n, length, 2): channel 0 holds values drawn from U[0, 1], channel 1 marks
    one step chosen uniformly in the first half [0, length // 2) and one in the
    second half [length // 2, length). y (n, 1) float32: the sum of the two
    marked values; lengths None.

    Always predicting 1 (the mean of y) gives MSE Var(a + b) = 2 / 12 = 1/6 ≈ 0.167.
    """
    length: int = 200

    name: ClassVar[str] = "adding"
    input_size: ClassVar[int] = 2
    metric: ClassVar[str] = "mse"
    _test_key: ClassVar[int] = 1

    def __post_init__(self):
        _check_int("length", self.length, 2)

    @property
    def head(self):
        return heads.Regress(1)

    @property
    def baseline(self):
        return {"mse": 1.0 / 6.0}

    def _generate(self, n, rng):
        T, half = self.length, self.length // 2
        x = np.zeros((n, T, 2), np.float32)                              # (n, T, 2)
        x[:, :, 0] = rng.random((n, T), dtype=np.float32)
        rows = np.arange(n)
        first, second = rng.integers(0, half, n), rng.integers(half, T, n)
        x[rows, first, 1] = 1.0
        x[rows, second, 1] = 1.0
        y = (x[rows, first, 0] + x[rows, second, 0])[:, None]          # (n, 1)
        return x, y, None

    def metrics(self, pred, y, lengths=None):
        """{"mse": mean squared error} of predictions (n, 1) against y (n, 1)."""
        return {"mse": float(np.mean((np.asarray(pred, np.float64) - y) ** 2))}


@dataclass(frozen=True)
class CopyTask(_Task):
    """The copy (memory) problem, T = length + 20 steps.

    Input symbols, one-hot over 10 (x (n, T, 10) float32): 0 blank, 1-8 data,
    9 delimiter. Steps 0-9 hold 10 data symbols drawn uniformly from 1-8, steps
    10 to length + 8 are blank, step length + 9 is the delimiter and the last
    10 steps are blank. Targets y (n, T) int64 over 9 classes (0 blank, 1-8
    data): blank at every step up to the delimiter's, the 10 data symbols in
    order at the last 10 steps; each symbol is reproduced length + 10 steps
    after it was seen. lengths None.

    Every one of the T steps is scored (``Tag(9)``, delay 0), so the mean
    cross-entropy of the memoryless predictor (blank for sure up to the
    delimiter, uniform over 8 symbols after it) is 10 log 8 / (length + 20);
    its symbol accuracy over the last 10 steps is 1/8.
    """
    length: int = 50

    name: ClassVar[str] = "copy"
    input_size: ClassVar[int] = 10
    metric: ClassVar[str] = "symbol_accuracy"
    _test_key: ClassVar[int] = 2
    n_symbols: ClassVar[int] = 8
    n_copy: ClassVar[int] = 10
    blank: ClassVar[int] = 0
    delimiter: ClassVar[int] = 9

    def __post_init__(self):
        _check_int("length", self.length, 1)

    @property
    def steps(self):
        return self.length + 2 * self.n_copy

    @property
    def head(self):
        return heads.Tag(self.n_symbols + 1)

    @property
    def baseline(self):
        return {"cross_entropy": self.n_copy * math.log(self.n_symbols) / self.steps,
                "symbol_accuracy": 1.0 / self.n_symbols}

    def _generate(self, n, rng):
        T, k = self.steps, self.n_copy
        symbols = rng.integers(1, self.n_symbols + 1, (n, k))            # (n, 10)
        tokens = np.full((n, T), self.blank, np.int64)                  # (n, T)
        tokens[:, :k] = symbols
        tokens[:, T - k - 1] = self.delimiter
        x = np.zeros((n, T, self.input_size), np.float32)               # (n, T, 10)
        np.put_along_axis(x, tokens[:, :, None], 1.0, axis=2)
        y = np.full((n, T), self.blank, np.int64)                       # (n, T)
        y[:, T - k:] = symbols
        return x, y, None

    def metrics(self, pred, y, lengths=None):
        """{"symbol_accuracy": fraction of the last-10-step symbols whose arg max is
        right} from per-step probabilities (n, T, 9) and targets (n, T)."""
        k = self.n_copy
        guess = np.argmax(np.asarray(pred)[:, -k:], axis=-1)
        return {"symbol_accuracy": float(np.mean(guess == np.asarray(y)[:, -k:]))}


@dataclass(frozen=True)
class ParityTask(_Task):
    """Parity of a bit string of random length: the variable-length task.

    Each sequence's length is drawn uniformly from [min_length, length]; x
    (n, length, 1) float32 holds its bits (0 or 1) and zeros after it, lengths
    (n,) int64 the valid steps, y (n,) int64 the parity of the number of ones
    (``Classify(2)``). Each bit is a fair coin, so both classes have probability
    exactly 1/2: baseline accuracy 0.5, cross-entropy log 2.
    """
    length: int = 50
    min_length: int = 1

    name: ClassVar[str] = "parity"
    input_size: ClassVar[int] = 1
    metric: ClassVar[str] = "accuracy"
    _test_key: ClassVar[int] = 3

    def __post_init__(self):
        _check_int("min_length", self.min_length, 1)
        _check_int("length", self.length, self.min_length)

    @property
    def head(self):
        return heads.Classify(2)

    @property
    def baseline(self):
        return {"accuracy": 0.5, "cross_entropy": math.log(2.0)}

    def _generate(self, n, rng):
        T = self.length
        lengths = rng.integers(self.min_length, T + 1, n)                # (n,)
        bits = rng.integers(0, 2, (n, T))                               # (n, T)
        bits[np.arange(T)[None, :] >= lengths[:, None]] = 0
        x = bits[:, :, None].astype(np.float32)                         # (n, T, 1)
        y = (bits.sum(axis=1) % 2).astype(np.int64)                     # (n,)
        return x, y, lengths.astype(np.int64)

    def metrics(self, pred, y, lengths=None):
        """{"accuracy"} from class probabilities (n, 2) and labels (n,)."""
        return {"accuracy": float(np.mean(np.argmax(np.asarray(pred), axis=-1) == np.asarray(y)))}


def adding(length=200):
    """The adding task over ``length`` steps (see ``AddingTask``)."""
    return AddingTask(length)


def copy(length=50):
    """The copy task with a gap of ``length`` (``length + 20`` steps; see ``CopyTask``)."""
    return CopyTask(length)


def parity(length=50, min_length=1):
    """Parity of bit strings of ``min_length`` to ``length`` bits (see ``ParityTask``)."""
    return ParityTask(length, min_length)


TASKS = {"adding": adding, "copy": copy, "parity": parity}


def make_task(name, **options):
    """The task called ``name`` ("adding", "copy" or "parity") with ``options``
    (``length``; ``min_length`` for parity)."""
    try:
        factory = TASKS[name]
    except KeyError:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {name!r}") from None
    return factory(**options)

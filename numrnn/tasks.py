"""Tasks by name: the data, input size, head and metrics of each training task.

    task = load_task("smnist")                       # row-by-row MNIST
    model = nr.SequenceModel(task.input_size, [nr.LSTM(128)], head=task.head)
    nr.train(model, task.train, val=task.val, test=task.test, **task.defaults)

Tasks: ``smnist``, ``psmnist``, ``pmnist`` (the views of ``numrnn.data.mnist``;
train / validation / test = 50,000 / 10,000 / 10,000), the synthetic tasks of
``numrnn.data.synthetic``: ``adding``, ``copy`` and ``parity``, and ``ctc-digits``
(``numrnn.data.ctc_digits``: strings of 1 to 5 MNIST digits read column by column,
a CTC head). A synthetic task draws its training set (``train_size`` sequences)
and its validation set from the run's ``seed``; its test set is the task's fixed
``test_set``. ``ctc-digits`` does the same with digit strings: training strings
from the 50,000 MNIST training images, validation strings from the 10,000 held-out
ones, and a fixed test set from the 10,000 test images.

``Task.settings`` is the JSON-able description that rebuilds the same data
(``load_task(**settings)``); ``numrnn train`` stores it in ``config.json`` so that
``numrnn eval`` evaluates a model on exactly the split it was tested on.
"""
from dataclasses import dataclass, field

import numpy as np

from .data import ctc_digits
from .data import mnist as mnist_data
from .data import synthetic
from .heads import CTC, Classify
from .train import Split

MNIST_TASKS = ("smnist", "psmnist", "pmnist")
SYNTHETIC_TASKS = ("adding", "copy", "parity")
CTC_TASKS = ("ctc-digits",)
TASKS = MNIST_TASKS + SYNTHETIC_TASKS + CTC_TASKS
SPLITS = ("train", "valid", "test")

# Synthetic validation and test set sizes.
SYNTHETIC_VALID_SIZE = 1000
SYNTHETIC_TEST_SIZE = 1000
# ctc-digits validation and (fixed) test set sizes, in strings.
CTC_DIGITS_VALID_SIZE = 2000
CTC_DIGITS_TEST_SIZE = 10000

# Training defaults per task (fields of nr.TrainConfig plus the model and data
# settings the CLI exposes). The smnist recipe reaches about 99% test accuracy
# with LSTM-128 in 10 epochs.
_COMMON = {"cell": "lstm", "hidden": [128], "bidirectional": False, "batch_size": 128, "lr": 2e-3,
           "schedule": "cosine", "warmup": 100, "clip_norm": 1.0, "weight_decay": 0.0}
DEFAULTS = {
    "smnist": {**_COMMON, "epochs": 10, "batch_size": 64},
    "psmnist": {**_COMMON, "epochs": 20, "lr": 1e-3},
    "pmnist": {**_COMMON, "epochs": 20, "lr": 1e-3},
    # adding: LSTM-128 sits on the baseline (MSE 1/6) for about 150,000 sequences, then solves the
    # task; a cosine decay over 10 x 20,000 sequences cools the rate before that happens.
    "adding": {**_COMMON, "epochs": 8, "batch_size": 64, "lr": 2e-3, "schedule": "constant", "length": 200,
               "train_size": 50000},
    # copy: plain LSTM-128 learns it slowly (60% symbol accuracy at T=50 after 3,000,000 sequences);
    # with --chrono (the sequence length) it solves T=50 in a fraction of that.
    "copy": {**_COMMON, "epochs": 30, "batch_size": 64, "lr": 2e-3, "schedule": "constant", "length": 50,
             "train_size": 50000},
    "parity": {**_COMMON, "epochs": 10, "batch_size": 64, "lr": 1e-3, "length": 50, "train_size": 20000},
    # ctc-digits: 20,000 strings overfit (train loss 0.004, validation 0.15 after 10 epochs; test
    # sequence accuracy 96.2%): three times the strings and dropout between the layers.
    "ctc-digits": {**_COMMON, "hidden": [128, 128], "bidirectional": True, "epochs": 5, "batch_size": 32,
                   "lr": 2e-3, "train_size": 60000, "output_keep": 0.8},
}


@dataclass
class Task:
    """The data of one task, ready for ``nr.train``.

    Attributes:
        name: the task's name (a key of ``TASKS``).
        input_size: features per step.
        head: the ``numrnn.heads`` spec the model needs.
        train, val, test: ``Split``s, or None for a split that was not loaded.
        metric: the number to report ("accuracy", "mse", "symbol_accuracy" or
            "sequence_accuracy").
        baseline: the metrics of a predictor without memory (synthetic tasks), or {}.
        settings: JSON-able keyword arguments of ``load_task`` that rebuild this data.
        generator: the ``numrnn.data.synthetic`` task object, or None for the others.
    """

    name: str
    input_size: int
    head: object
    train: Split | None
    val: Split | None
    test: Split | None
    metric: str
    settings: dict
    baseline: dict = field(default_factory=dict)
    generator: object = None

    @property
    def defaults(self):
        """The default ``nr.TrainConfig`` fields for this task."""
        d = DEFAULTS[self.name]
        schedule = {"name": d["schedule"], "warmup": d["warmup"]}
        return {"epochs": d["epochs"], "batch_size": d["batch_size"], "lr": d["lr"],
                "clip_norm": d["clip_norm"], "schedule": schedule}

    def split(self, name):
        """The Split called "train", "valid" (or "val") or "test"."""
        split = {"train": self.train, "valid": self.val, "val": self.val, "test": self.test}[name]
        if split is None:
            raise ValueError(f"the {name} split of task {self.name!r} was not loaded")
        return split

    def metrics(self, model, split, batch_size=256):
        """Task metrics that ``nr.evaluate`` does not give (copy: the symbol accuracy
        over the 10 reproduced symbols), as a dict; {} for the other tasks."""
        if self.name != "copy":
            return {}
        right = total = 0
        k = self.generator.n_copy
        for lo in range(0, len(split), batch_size):
            x, y, lengths = split.batch(np.arange(lo, min(lo + batch_size, len(split))))
            probs = model.predict(x, lengths)                          # (B, T, 9)
            right += int(np.count_nonzero(probs[:, -k:].argmax(axis=-1) == y[:, -k:]))
            total += y[:, -k:].size
        return {"symbol_accuracy": right / total}


def task_shape(name, length=None):
    """(input_size, head) of task ``name`` without loading its data."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {name!r}")
    if name in MNIST_TASKS:
        return mnist_data.VIEW_INPUT_SIZE[name], Classify(10)
    if name == "ctc-digits":
        return ctc_digits.INPUT_SIZE, CTC(ctc_digits.N_LABELS, blank=ctc_digits.BLANK)
    _positive("length", length)
    generator = synthetic.make_task(name, length=DEFAULTS[name]["length"] if length is None else int(length))
    return generator.input_size, generator.head


def _positive(name, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise ValueError(f"{name} must be None or a positive integer, got {value!r}")


def load_task(name, *, length=None, limit=None, train_size=None, seed=0, mnist=None, cache_dir=None,
              splits=SPLITS, progress=None):
    """Load (or generate) the data of task ``name``.

    Args:
        name: one of ``TASKS``.
        length: sequence length of a synthetic task (adding, copy: the gap,
            parity: the longest string); None for the task's default. Not used by
            MNIST or ctc-digits.
        limit: use only the first ``limit`` training sequences (None: all).
        train_size: synthetic tasks and ctc-digits: training sequences drawn from
            ``seed`` (None: the task's default); not used by MNIST.
        seed: seeds the synthetic (and ctc-digits) training and validation sets.
        mnist, cache_dir, progress: as for ``numrnn.data.mnist.load_mnist``.
        splits: the splits to load ("train", "valid", "test"); the others are None.

    Returns:
        A ``Task``.

    Raises:
        ValueError on a bad argument; ``numrnn.data.mnist.DataError`` when MNIST
        cannot be obtained.
    """
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {name!r}")
    _positive("limit", limit)
    _positive("train_size", train_size)
    _positive("length", length)
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"splits must be among {', '.join(SPLITS)}; got {sorted(unknown)}")
    if name in MNIST_TASKS:
        return _mnist_task(name, limit, mnist, cache_dir, splits, progress)
    if name == "ctc-digits":
        return _ctc_digits_task(limit, train_size, seed, mnist, cache_dir, splits, progress)
    return _synthetic_task(name, length, limit, train_size, seed, splits)


def _mnist_task(name, limit, mnist, cache_dir, splits, progress):
    data = mnist_data.load_mnist(mnist, cache_dir=cache_dir, progress=progress)
    loaded = {}
    for split in splits:
        x, y = mnist_data.mnist_view(data, split, name)
        if split == "train" and limit is not None:
            x, y = x[:limit], y[:limit]
        loaded[split] = Split(x, y)
    settings = {"name": name, "limit": limit, "mnist": None if mnist is None else str(mnist)}
    return Task(name, mnist_data.VIEW_INPUT_SIZE[name], Classify(10), loaded.get("train"), loaded.get("valid"),
                loaded.get("test"), "accuracy", settings)


_STREAMS = {"train": 1, "valid": 2}


def _stream(seed, split):
    """The generator of a synthetic split. Entropy ``[seed, k]`` differs from the
    fixed test sets' ``SeedSequence(0, spawn_key=(k,))`` (which is what
    ``SeedSequence(0).spawn()`` would give) and from the trainer's ``default_rng(seed)``."""
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAMS[split]]))


def _synthetic_task(name, length, limit, train_size, seed, splits):
    length = DEFAULTS[name]["length"] if length is None else int(length)
    train_size = DEFAULTS[name]["train_size"] if train_size is None else int(train_size)
    generator = synthetic.make_task(name, length=length)
    n_train = train_size if limit is None else min(train_size, limit)
    loaded = {}
    if "train" in splits:
        loaded["train"] = Split(*generator.sample(n_train, _stream(seed, "train")))
    if "valid" in splits:
        loaded["valid"] = Split(*generator.sample(SYNTHETIC_VALID_SIZE, _stream(seed, "valid")))
    if "test" in splits:
        loaded["test"] = Split(*generator.test_set(SYNTHETIC_TEST_SIZE))
    settings = {"name": name, "length": length, "limit": limit, "train_size": train_size, "seed": seed}
    return Task(name, generator.input_size, generator.head, loaded.get("train"), loaded.get("valid"),
                loaded.get("test"), generator.metric, settings, dict(generator.baseline), generator)


def _ctc_digits_task(limit, train_size, seed, mnist, cache_dir, splits, progress):
    train_size = DEFAULTS["ctc-digits"]["train_size"] if train_size is None else int(train_size)
    data = mnist_data.load_mnist(mnist, cache_dir=cache_dir, progress=progress)
    # The fixed test strings come from entropy [TEST_SEED, 3], which no training or validation stream uses.
    test_rng = np.random.default_rng(np.random.SeedSequence([ctc_digits.TEST_SEED, 3]))
    plan = {"train": (min(train_size, limit or train_size), _stream(seed, "train")),
            "valid": (CTC_DIGITS_VALID_SIZE, _stream(seed, "valid")),
            "test": (CTC_DIGITS_TEST_SIZE, test_rng)}
    loaded = {}
    for split in splits:
        n, rng = plan[split]
        s = ctc_digits.digit_strings(data[f"{split}_x"], data[f"{split}_y"], n, rng)
        loaded[split] = Split(s.x, s.y, s.lengths, s.label_lengths)
    settings = {"name": "ctc-digits", "limit": limit, "train_size": train_size, "seed": seed,
                "mnist": None if mnist is None else str(mnist)}
    input_size, head = task_shape("ctc-digits")
    return Task("ctc-digits", input_size, head, loaded.get("train"), loaded.get("valid"), loaded.get("test"),
                "sequence_accuracy", settings)

"""numrnn.tasks: the task adapter behind `numrnn train` (MNIST is covered with a
generated stand-in in test_cli.py; ctc-digits here, with a stand-in whose ink
marks the split each image came from)."""
import numpy as np
import pytest

import numrnn as nr
from numrnn import heads, tasks
from numrnn.tasks import SYNTHETIC_TASKS, load_task, task_shape


@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
def test_synthetic_splits_are_distinct_and_reproducible(name):
    task = load_task(name, length=6, train_size=50, seed=3)
    again = load_task(name, length=6, train_size=50, seed=3)
    other = load_task(name, length=6, train_size=50, seed=4)
    assert (len(task.train), len(task.val), len(task.test)) == (50, 1000, 1000)
    np.testing.assert_array_equal(task.train.x, again.train.x)
    np.testing.assert_array_equal(task.val.x, again.val.x)
    assert not np.array_equal(task.train.x, other.train.x)
    np.testing.assert_array_equal(task.test.x, other.test.x)       # the fixed test set
    for a, b in ((task.train, task.val), (task.val, task.test)):
        assert not np.array_equal(a.x[:50], b.x[:50])
    assert (task.input_size, task.head) == task_shape(name, 6)
    assert load_task(**task.settings).settings == task.settings


def test_limit_splits_and_errors():
    task = load_task("copy", length=3, train_size=40, limit=10, splits=("train",))
    assert len(task.train) == 10 and task.val is None and task.test is None
    assert task.head == heads.Tag(9) and task.metric == "symbol_accuracy"
    with pytest.raises(ValueError, match="was not loaded"):
        task.split("test")
    with pytest.raises(ValueError, match="task must be one of"):
        load_task("mnist")
    with pytest.raises(ValueError, match="limit"):
        load_task("adding", limit=0)


# ----------------------------------------------------------------------------- ctc-digits

@pytest.fixture
def split_marked_mnist(monkeypatch):
    """load_mnist returns 30 / 10 / 10 images whose ink is 0.25 (train), 0.5 (valid)
    or 0.75 (test), so each string shows which split its digits came from; the
    ctc-digits validation and test sets shrink to 12 and 14 strings."""
    def load_mnist(path=None, cache_dir=None, progress=None):
        rng = np.random.default_rng(0)
        data = {}
        for split, n, ink in (("train", 30, 0.25), ("valid", 10, 0.5), ("test", 10, 0.75)):
            x = np.zeros((n, 28, 28), np.float32)
            for i in range(n):
                x[i, 4:24, 3 + i % 5:15 + i % 9] = ink
            data[f"{split}_x"], data[f"{split}_y"] = x, rng.integers(0, 10, n)
        return data

    monkeypatch.setattr(tasks.mnist_data, "load_mnist", load_mnist)
    monkeypatch.setattr(tasks, "CTC_DIGITS_VALID_SIZE", 12)
    monkeypatch.setattr(tasks, "CTC_DIGITS_TEST_SIZE", 14)


def test_ctc_digits_task(split_marked_mnist):
    task = load_task("ctc-digits", train_size=40, seed=3)
    assert (task.input_size, task.head) == task_shape("ctc-digits") == (28, heads.CTC(10, blank=10))
    assert task.metric == "sequence_accuracy"
    assert (len(task.train), len(task.val), len(task.test)) == (40, 12, 14)
    for split, ink in ((task.train, 0.25), (task.val, 0.5), (task.test, 0.75)):
        assert set(np.unique(split.x)) == {0.0, ink}, "each split draws from its own MNIST images"
        assert split.x.shape[2] == 28 and split.lengths.max() == split.x.shape[1]
        assert split.y.shape == (len(split), 5) and split.label_lengths.min() >= 1
    other = load_task("ctc-digits", train_size=40, seed=4)
    assert not np.array_equal(task.train.y, other.train.y)
    np.testing.assert_array_equal(task.test.x, other.test.x)                 # the fixed test set
    np.testing.assert_array_equal(task.test.y, other.test.y)
    again = load_task(**task.settings)
    np.testing.assert_array_equal(again.train.x, task.train.x)
    limited = load_task("ctc-digits", train_size=40, limit=8, seed=3, splits=("train",))
    np.testing.assert_array_equal(limited.train.y, task.train.y[:8])


def test_ctc_digits_training_reports_sequence_metrics(split_marked_mnist):
    task = load_task("ctc-digits", train_size=24, seed=0)
    model = nr.SequenceModel(task.input_size, [nr.GRU(4)], bidirectional=True, head=task.head, seed=0)
    result = nr.train(model, task.train, val=task.val, test=task.test, epochs=1, batch_size=8, quiet=True)
    assert [r["split"] for r in result.history] == ["train", "val", "test"]
    for record in result.history[1:]:
        assert 0 <= record["sequence_accuracy"] <= 1 and record["label_error_rate"] >= 0
    # evaluate: the loss of the padded split, greedy decodings against the label lists.
    metrics = nr.evaluate(model, task.val, batch_size=5)
    split = task.val
    assert metrics["loss"] == pytest.approx(model.loss(split.x, split.y, split.lengths,
                                                       label_lengths=split.label_lengths), rel=1e-5)
    predictions = model.predict(split.x, split.lengths)
    references = [list(row[:n]) for row, n in zip(split.y, split.label_lengths)]
    assert metrics["sequence_accuracy"] == nr.ctc.sequence_accuracy(predictions, references)
    assert metrics["label_error_rate"] == pytest.approx(nr.ctc.label_error_rate(predictions, references))
    subset = split.subset(np.arange(3))
    np.testing.assert_array_equal(subset.label_lengths, split.label_lengths[:3])

"""numrnn.tasks: the task adapter behind `numrnn train` (MNIST is covered with a
generated stand-in in test_cli.py)."""
import numpy as np
import pytest

from numrnn import heads
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

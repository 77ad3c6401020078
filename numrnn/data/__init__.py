"""Datasets: real MNIST (fetched, verified, cached) with its sequential views,
synthetic long-dependency tasks generated from a seed, and strings of MNIST
digits for CTC (``ctc_digits``)."""
from . import ctc_digits, synthetic
from .ctc_digits import DigitStrings, digit_strings
from .mnist import (PMNIST_SEED, VIEW_INPUT_SIZE, VIEWS, DataError, default_cache_dir, fetch_mnist,
                    load_mnist, mnist_info, mnist_view, pmnist_permutation)
from .synthetic import TASKS, AddingTask, CopyTask, ParityTask, adding, make_task, parity

__all__ = ["DataError", "load_mnist", "fetch_mnist", "mnist_info", "mnist_view", "default_cache_dir",
           "pmnist_permutation", "VIEWS", "VIEW_INPUT_SIZE", "PMNIST_SEED",
           "synthetic", "TASKS", "make_task", "AddingTask", "CopyTask", "ParityTask", "adding", "parity",
           "ctc_digits", "digit_strings", "DigitStrings"]

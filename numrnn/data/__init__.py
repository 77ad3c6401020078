"""Datasets: real MNIST (fetched, verified, cached) with its sequential views,
and synthetic long-dependency tasks generated from a seed."""
from . import synthetic
from .mnist import (PMNIST_SEED, VIEW_INPUT_SIZE, VIEWS, DataError, default_cache_dir, fetch_mnist,
                    load_mnist, mnist_info, mnist_view, pmnist_permutation)
from .synthetic import TASKS, AddingTask, CopyTask, ParityTask, adding, make_task, parity

__all__ = ["DataError", "load_mnist", "fetch_mnist", "mnist_info", "mnist_view", "default_cache_dir",
           "pmnist_permutation", "VIEWS", "VIEW_INPUT_SIZE", "PMNIST_SEED",
           "synthetic", "TASKS", "make_task", "AddingTask", "CopyTask", "ParityTask", "adding", "parity"]

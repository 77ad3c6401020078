"""The training loop: shuffled minibatches, evaluation, checkpoints, resume.

    train_split = nr.Split(x, y, lengths)            # x (N, T, F), batch-major
    result = nr.train(model, train_split, val=val_split, test=test_split,
                      out="runs/mnist", epochs=10, batch_size=64, lr=1e-3, clip_norm=1.0)

With ``out`` the run directory holds (every file written atomically):

- ``config.json``: the model configuration, the ``TrainConfig`` and any ``extra_config``;
- ``metrics.jsonl``: one JSON object per evaluation (``epoch``, ``step``, ``split``,
  ``loss``, ``accuracy`` or ``mse`` or, for a CTC head, ``sequence_accuracy`` and
  ``label_error_rate``, ``seconds``, ``sequences_per_second``), and one
  ``split: "train"`` object per epoch with the mean training loss;
- ``model.npz``: the best model so far (lowest validation loss; lowest training
  loss without a validation split), loadable with ``nr.load``;
- ``last.npz``: a checkpoint (parameters, optimiser moments and step, the shuffling
  and dropout generators, epoch and batch) written after every epoch, at the start
  of a run and on Ctrl-C. ``resume=True`` continues from it exactly: the same
  updates in the same order give bit-identical parameters (same thread count).

Every split is checked before the first step. A non-finite training loss stops the
run before that batch's update, and non-finite parameters or validation loss after
an epoch stop it before anything is evaluated or saved; ``last.npz`` then still
holds the last good checkpoint and the message says where.
Ctrl-C finishes the current batch, writes ``last.npz`` and raises
:class:`TrainingInterrupted`; a second Ctrl-C interrupts at once.
"""
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace

import click
import numpy as np

from . import io, optim
from .ctc import label_error_rate, sequence_accuracy
from .heads import CTC, Classify, Regress, Tag
from .model import check_lengths, raise_non_finite


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``train``: the checkpoint has been written; the message says where."""


# ---------------------------------------------------------------------------
# Data


@dataclass
class Split:
    """One split of a dataset, as arrays.

    Args:
        x: (N, T, F) inputs, batch-major.
        y: targets of the model's head: (N,) class labels (Classify), (N, T)
            per-step labels (Tag), (N, k) values (Regress) or (N, S) padded label
            sequences (CTC).
        lengths: (N,) valid steps per sequence, or None for all T.
        label_lengths: CTC: (N,) labels per row of y, or None for all S.
    """

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray | None = None
    label_lengths: np.ndarray | None = None

    def __post_init__(self):
        self.x, self.y = np.asarray(self.x), np.asarray(self.y)
        if self.x.ndim != 3:
            raise ValueError(f"Split x must have shape (N, T, F), got {self.x.shape}")
        if self.y.ndim < 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(f"Split y must have one target per sequence ({self.x.shape[0]}), "
                             f"got shape {self.y.shape}")
        if self.lengths is not None:
            self.lengths = np.asarray(self.lengths)
            if self.lengths.shape != (self.x.shape[0],):
                raise ValueError(f"Split lengths must have shape ({self.x.shape[0]},), got {self.lengths.shape}")
        if self.label_lengths is not None:
            self.label_lengths = np.asarray(self.label_lengths)
            if self.label_lengths.shape != (self.x.shape[0],):
                raise ValueError(f"Split label_lengths must have shape ({self.x.shape[0]},), "
                                 f"got {self.label_lengths.shape}")
        if self.x.shape[0] == 0:
            raise ValueError(f"Split holds no sequences (x has shape {self.x.shape})")

    def __len__(self):
        return self.x.shape[0]

    def batch(self, index):
        """(x, y, lengths) of the sequences ``index`` (an int array)."""
        return self.x[index], self.y[index], None if self.lengths is None else self.lengths[index]

    def subset(self, index):
        """A Split of the sequences ``index`` (an int array), every field included."""
        return Split(*self.batch(index), None if self.label_lengths is None else self.label_lengths[index])


# ---------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in ``config.json`` and
    in checkpoints).

    Args:
        epochs: total number of passes over the training split (a resumed run
            continues up to this number).
        batch_size: sequences per update; the last batch of an epoch may be smaller.
        optimizer: "Adam" (AdamW when weight_decay > 0) or "SGD".
        lr, weight_decay, clip_norm: as for ``nr.Adam``.
        schedule: None, a schedule name or a dict (``numrnn.optim.make_schedule``);
            a cosine schedule without ``total_steps`` ends with the last epoch.
        optimizer_options: further keyword arguments of the optimiser (Adam:
            betas, eps, decoupled_weight_decay; SGD: momentum, nesterov).
        seed: seeds the shuffling (the model's own seed drives initialisation
            and dropout).
        eval_batch_size: sequences per batch when evaluating.
    """

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "Adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_norm: float | None = None
    schedule: str | dict | None = None
    optimizer_options: dict = field(default_factory=dict)
    seed: int = 0
    eval_batch_size: int = 256

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.optimizer not in optim.OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(optim.OPTIMIZERS)}, got {self.optimizer!r}")

    def make_optimizer(self, model, steps_per_epoch):
        schedule = self.schedule
        if isinstance(schedule, str):
            schedule = {"name": schedule}
        if schedule is not None and schedule.get("name") == "cosine" and "total_steps" not in schedule:
            schedule = {**schedule, "total_steps": self.epochs * steps_per_epoch}
        return optim.make_optimizer(model, self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
                                    clip_norm=self.clip_norm, schedule=schedule, **self.optimizer_options)


@dataclass
class TrainResult:
    """What ``train`` returns.

    ``status`` is "finished" or "diverged" (then ``message`` says where);
    ``history`` holds the metrics records (as in metrics.jsonl); ``best`` the
    record that chose model.npz; ``test`` the test split's record, if any.
    """

    status: str
    epoch: int
    step: int
    history: list
    best: dict | None = None
    test: dict | None = None
    message: str = ""


# ---------------------------------------------------------------------------
# Evaluation


def _scored_steps(head, lengths, T, B):
    """(steps, rows) of a Tag batch's scored labels: output step, sequence."""
    return head.scored_positions(np.full(B, T) if lengths is None else np.asarray(lengths), T)


def _check_split(model, split, name):
    """Every sequence of ``split`` checked before the first step, by its index in the
    split: a batch's own check names a row of the shuffled batch, and a bad
    validation split would show only after a whole epoch."""
    N, T, F = split.x.shape
    if F != model.input_size:
        raise ValueError(f"{name}.x has {F} features per step, but input_size is {model.input_size}")
    if split.x.dtype.kind not in "fiu":
        raise ValueError(f"{name}.x must hold numbers, got dtype {split.x.dtype}")
    try:
        lengths = check_lengths(split.lengths, N, T)
        model.head.check_targets(split.y, lengths, T, split.label_lengths, model.dtype)
    except ValueError as e:
        raise ValueError(f"{name} split: {e}") from None
    for lo in range(0, N, 4096):          # in the model's dtype, as a batch sees it (1e300 is inf in float32)
        with np.errstate(over="ignore"):
            chunk = np.asarray(split.x[lo:lo + 4096], dtype=model.dtype)
        if not np.isfinite(chunk).all():
            raise_non_finite(chunk.transpose(1, 0, 2), f"{name}.x", first=lo)


def _batch(split, index, head):
    """(x, y, lengths, label_lengths) of the sequences ``index``. For a CTC head x is
    cut to the batch's longest sequence: its targets do not depend on T, and the
    steps beyond every length would only be computed to be ignored."""
    x, y, lengths = split.batch(index)
    label_lengths = None if split.label_lengths is None else split.label_lengths[index]
    if isinstance(head, CTC) and lengths is not None and len(lengths):
        x = x[:, :max(int(lengths.max()), 1)]
    return x, y, lengths, label_lengths


def _decoded(model, x, y, lengths, label_lengths):
    """(predictions, references) of a CTC model on one batch: greedy decodings and
    the label lists of y."""
    counts = np.full(len(y), y.shape[1]) if label_lengths is None else label_lengths
    return model.predict(x, lengths), [[int(v) for v in row[:n]] for row, n in zip(y, counts)]


def _correct(model, x, y, lengths, label_lengths=None):
    """(right, total) predictions of a Classify, Tag or CTC model on one batch (argmax;
    Tag: over the scored steps; CTC: whole sequences, greedy decoding)."""
    if isinstance(model.head, CTC):
        predictions, references = _decoded(model, x, y, lengths, label_lengths)
        return sum(p == r for p, r in zip(predictions, references)), len(references)
    probs = model.predict(x, lengths)
    if isinstance(model.head, Classify):
        return int(np.count_nonzero(probs.argmax(axis=1) == y)), len(y)
    steps, rows = _scored_steps(model.head, lengths, x.shape[1], x.shape[0])  # probs (B, T, n)
    return int(np.count_nonzero(probs[rows, steps].argmax(axis=1) == y[rows, steps - model.head.delay])), steps.size


def evaluate(model, split, batch_size=256):
    """Loss and the head's metric on ``split``, without dropout.

    Returns:
        {"loss", "accuracy" (Classify, Tag: argmax over the valid scored steps) or
        "mse" (Regress) or "sequence_accuracy" and "label_error_rate" (CTC: greedy
        decoding; the error rate is the total edit distance over the total number of
        reference labels, ``numrnn.ctc.label_error_rate``), "sequences", "seconds",
        "sequences_per_second"}. The loss is the mean over the split with the head's
        own weighting (per sequence; per scored step for Tag).
    """
    start = time.perf_counter()
    head = model.head
    loss_sum = weight = correct = 0.0
    predictions, references = [], []
    for lo in range(0, len(split), batch_size):
        x, y, lengths, label_lengths = _batch(split, np.arange(lo, min(lo + batch_size, len(split))), head)
        B, T = x.shape[:2]
        n = _scored_steps(head, lengths, T, B)[0].size if isinstance(head, Tag) else B
        if n == 0:
            continue
        loss_sum += model.loss(x, y, lengths, label_lengths=label_lengths) * n
        weight += n
        if isinstance(head, (Classify, Tag)):
            correct += _correct(model, x, y, lengths)[0]
        elif isinstance(head, CTC):
            decoded, labels = _decoded(model, x, y, lengths, label_lengths)
            predictions += decoded
            references += labels
    seconds = time.perf_counter() - start
    loss = loss_sum / weight if weight else float("nan")
    record = {"loss": loss}
    if isinstance(head, (Classify, Tag)):
        record["accuracy"] = float(correct / weight) if weight else float("nan")
    elif isinstance(head, Regress):
        record["mse"] = loss      # the Regress loss is the mean squared error
    elif isinstance(head, CTC):
        record["sequence_accuracy"] = float(sequence_accuracy(predictions, references))
        record["label_error_rate"] = float(label_error_rate(predictions, references))
    return {**record, "sequences": len(split), "seconds": seconds,
            "sequences_per_second": len(split) / seconds if seconds > 0 else float("inf")}


# ---------------------------------------------------------------------------
# Ctrl-C


@contextlib.contextmanager
def _deferred_interrupt():
    """While active, the first Ctrl-C only sets ``flag["set"]``: the loop checks it
    between batches, so a checkpoint never holds a half-made update. The second
    Ctrl-C raises KeyboardInterrupt at once. Outside the main thread (no signals)
    this does nothing."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------
# Run directory


class _RunDir:
    """The files of ``out`` (or nothing when ``out`` is None)."""

    def __init__(self, out):
        self.out = None if out is None else os.fspath(out)
        if self.out is not None:
            os.makedirs(self.out, exist_ok=True)

    def path(self, name):
        return None if self.out is None else os.path.join(self.out, name)

    def write_config(self, config):
        if self.out is not None:
            io.write_text(self.path("config.json"), json.dumps(config, indent=2) + "\n")

    def write_metrics(self, history):
        if self.out is not None:
            io.write_text(self.path("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in history))

    def read_metrics(self):
        path = self.path("metrics.jsonl")
        if path is None or not os.path.exists(path):
            return []
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------
# The loop


def train(model, train, val=None, test=None, config=None, *, out=None, resume=False, quiet=False,
          extra_config=None, **options):
    """Train ``model`` in place on the ``train`` split.

    Args:
        model: a ``SequenceModel``.
        train, val, test: ``Split``s; ``val`` is evaluated after every epoch and
            chooses the best model, ``test`` once at the end (with the best model).
        config: a ``TrainConfig`` (or dict of its fields); ``options`` override its fields.
        out: run directory (see the module docstring), or None to write nothing.
        resume: continue from ``out/last.npz``: the model's parameters and dropout
            generator, the optimiser and the shuffling position are restored.
        quiet: no progress bar and no per-epoch lines (errors still go to stderr).
        extra_config: JSON-able dict added to config.json (e.g. the data settings).

    Returns:
        A ``TrainResult``.

    Raises:
        TrainingInterrupted on Ctrl-C, after writing ``out/last.npz``.
    """
    if not isinstance(config, (TrainConfig, dict, type(None))):
        raise ValueError(f"config must be a TrainConfig, a dict of its fields or None, got {config!r}")
    if isinstance(config, dict):
        options = {**config, **options}         # checked with the keyword options below
    config = config if isinstance(config, TrainConfig) else TrainConfig()
    unknown = sorted(set(options) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ValueError(f"unknown training options {unknown}; expected fields of TrainConfig")
    config = replace(config, **options)
    for name, split in (("train", train), ("val", val), ("test", test)):
        if (split is not None or name == "train") and not isinstance(split, Split):
            raise ValueError(f"{name} must be a numrnn.train.Split, got {type(split).__name__}")
    if resume and out is None:
        raise ValueError("resume=True needs out, the run directory holding last.npz")
    for name, split in (("train", train), ("val", val), ("test", test)):
        if split is not None:
            _check_split(model, split, name)

    run = _RunDir(out)
    steps_per_epoch = -(-len(train) // config.batch_size)
    opt = config.make_optimizer(model, steps_per_epoch)
    rng = np.random.default_rng(config.seed)
    position = {"epoch": 0, "batch": 0, "rng": rng.bit_generator.state,
                "running": {"loss_sum": 0.0, "sequences": 0, "seconds": 0.0}, "best": None}
    history = []
    best_params = model.params.copy()
    if resume:
        position, history = _resume(model, opt, run, best_params)
    run.write_config({"model": io.model_config(model), "train": asdict(config), **(extra_config or {})})
    run.write_metrics(history)
    if not resume:
        _checkpoint(run, model, opt, position, config)   # a good checkpoint exists from step 0 on

    echo = (lambda message: None) if quiet else (lambda message: click.echo(message, err=True))
    with _deferred_interrupt() as interrupted:
        while position["epoch"] < config.epochs:
            epoch = position["epoch"] + 1
            rng.bit_generator.state = position["rng"]
            order = rng.permutation(len(train))
            diverged = _train_epoch(model, opt, train, config, order, position, interrupted, quiet,
                                    label=f"epoch {epoch}/{config.epochs}")
            if diverged:
                return _diverged(run, position, opt, history,
                                 f"loss is {diverged['loss']} at epoch {epoch}, batch {diverged['batch']} of "
                                 f"{steps_per_epoch} (step {opt.step_count + 1}, sequences "
                                 f"{diverged['sequences']}); stopped before its update")
            if interrupted["set"]:
                _raise_interrupted(run, model, opt, position, config, f"epoch {epoch}, after batch {position['batch']}")
            # The next batch's loss would show a bad last update of an epoch; this is the last
            # moment before the parameters are evaluated and saved.
            if not np.isfinite(model.params).all():
                return _diverged(run, position, opt, history,
                                 f"the update of epoch {epoch}'s last batch (step {opt.step_count}) "
                                 f"made the parameters non-finite")

            running = position["running"]
            records = [{"epoch": epoch, "step": opt.step_count, "split": "train",
                        "loss": running["loss_sum"] / running["sequences"], "seconds": running["seconds"],
                        "sequences_per_second": running["sequences"] / max(running["seconds"], 1e-12)}]
            if val is not None:
                records.append({"epoch": epoch, "step": opt.step_count, "split": "val",
                                **evaluate(model, val, config.eval_batch_size)})
                if not math.isfinite(records[-1]["loss"]):
                    return _diverged(run, position, opt, history,
                                     f"validation loss is {records[-1]['loss']} after epoch {epoch} "
                                     f"(step {opt.step_count})")
            history += records
            for r in records:
                echo(_summary(r))
            record = records[-1]      # val when there is a val split: it chooses the best model
            if position["best"] is None or record["loss"] < position["best"]["loss"]:
                position["best"] = record
                np.copyto(best_params, model.params)
                if run.out is not None:
                    io.save(model, run.path("model.npz"), metrics=record)
            position.update(epoch=epoch, batch=0, rng=rng.bit_generator.state,
                            running={"loss_sum": 0.0, "sequences": 0, "seconds": 0.0})
            run.write_metrics(history)
            _checkpoint(run, model, opt, position, config)
            if interrupted["set"]:
                _raise_interrupted(run, model, opt, position, config, f"the end of epoch {epoch}")

    result = TrainResult("finished", position["epoch"], opt.step_count, history, position["best"])
    if test is not None:
        # The best model, then the trained parameters back in place.
        trained = model.params.copy()
        np.copyto(model.params, best_params)
        result.test = {"epoch": position["best"]["epoch"], "step": position["best"]["step"], "split": "test",
                       **evaluate(model, test, config.eval_batch_size)}
        np.copyto(model.params, trained)
        history.append(result.test)
        run.write_metrics(history)
        echo(_summary(result.test))
    return result


def _diverged(run, position, opt, history, what):
    """Stop: say what went wrong and where the last good state is (nothing is saved)."""
    last = run.path("last.npz")
    message = (f"training diverged: {what}. "
               + (f"The last good checkpoint is {last}." if last else "No run directory: nothing saved."))
    click.echo(message, err=True)
    return TrainResult("diverged", position["epoch"], opt.step_count, history, position["best"], None, message)


def _train_epoch(model, opt, train, config, order, position, interrupted, quiet, label):
    """Run the batches of one epoch from ``position["batch"]`` on; update
    ``position`` after each. Returns None, or a dict describing the batch whose
    loss was not finite (its update is not made)."""
    n_batches = -(-len(order) // config.batch_size)
    running = position["running"]
    # Running accuracy costs a forward pass, so the bar measures it on about 32 batches per epoch.
    accuracy_every = max(1, n_batches // 32)
    shown = {"correct": 0, "total": 0}
    acc_label = "seq acc" if isinstance(model.head, CTC) else "acc"

    def status(_):
        seen = running["sequences"]
        if not seen:
            return ""
        text = f"loss {running['loss_sum'] / seen:.4f}"
        if shown["total"]:
            text += f"  {acc_label} {shown['correct'] / shown['total']:.3f}"
        return text + f"  {seen / max(running['seconds'], 1e-12):.0f} seq/s"

    bar = (contextlib.nullcontext() if quiet else
           click.progressbar(length=n_batches, label=label, show_pos=True, item_show_func=status, file=sys.stderr))
    with bar:
        if not quiet:
            bar.update(position["batch"])
        for b in range(position["batch"], n_batches):
            index = order[b * config.batch_size:(b + 1) * config.batch_size]
            start = time.perf_counter()
            x, y, lengths, label_lengths = _batch(train, index, model.head)
            loss = model.loss_and_grad(x, y, lengths, label_lengths=label_lengths)
            if not math.isfinite(loss):
                return {"loss": loss, "batch": b + 1, "sequences": index.tolist()[:8]
                        + (["..."] if len(index) > 8 else [])}
            opt.step()
            running["seconds"] += time.perf_counter() - start
            running["loss_sum"] += loss * len(index)
            running["sequences"] += len(index)
            position["batch"] = b + 1
            if not quiet:
                if isinstance(model.head, (Classify, Tag, CTC)) and b % accuracy_every == 0:
                    right, total = _correct(model, x, y, lengths, label_lengths)
                    shown["correct"] += right
                    shown["total"] += total
                bar.update(1)
            if interrupted["set"]:
                return None
    return None


def _summary(record):
    metric = (f"  accuracy {record['accuracy']:.4f}" if "accuracy" in record else
              f"  mse {record['mse']:.6g}" if "mse" in record else
              f"  sequence accuracy {record['sequence_accuracy']:.4f}  label error rate "
              f"{record['label_error_rate']:.4f}" if "sequence_accuracy" in record else "")
    return (f"epoch {record['epoch']} step {record['step']} {record['split']}: loss {record['loss']:.6g}"
            f"{metric}  ({record['sequences_per_second']:.0f} seq/s)")


def _checkpoint(run, model, opt, position, config):
    if run.out is not None:
        io.save_checkpoint(run.path("last.npz"), model, opt, {**position, "config": asdict(config)})


def _raise_interrupted(run, model, opt, position, config, where):
    _checkpoint(run, model, opt, position, config)
    where = f"{where} (step {opt.step_count})"
    if run.out is None:
        raise TrainingInterrupted(f"training interrupted at {where}; no run directory, nothing saved")
    raise TrainingInterrupted(f"training interrupted at {where}; checkpoint saved to {run.path('last.npz')}; "
                              f"continue with resume=True")


def _resume(model, opt, run, best_params):
    """Restore the state of ``run``'s last.npz into ``model`` and ``opt``; returns
    the loop position and the metrics history up to the checkpoint."""
    path = run.path("last.npz")
    if not os.path.exists(path):
        raise ValueError(f"resume=True, but there is no checkpoint {path}")
    saved, saved_opt, position = io.load_checkpoint(path)
    if io.model_config(saved) != io.model_config(model):
        raise ValueError(f"{path} holds a model of another configuration: {io.model_config(saved)}")
    np.copyto(model.params, saved.params)
    model.rng.bit_generator.state = saved.rng.bit_generator.state
    # The optimiser of the current config (hyperparameters may change), with the saved moments and step.
    opt.load_state_dict(saved_opt.state_dict())
    best = os.path.exists(run.path("model.npz")) and position["best"] is not None
    np.copyto(best_params, io.load(run.path("model.npz")).params if best else model.params)
    # Records after the checkpoint (a test evaluation) are dropped: they will be redone.
    history = [r for r in run.read_metrics() if r["step"] <= saved_opt.step_count and r["split"] != "test"]
    position.pop("config", None)
    return position, history

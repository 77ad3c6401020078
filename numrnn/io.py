"""Model files and training checkpoints: ``.npz`` archives with a JSON header.

A file holds, as plain arrays (loaded with ``allow_pickle=False``):

- ``header``: a 0-d unicode array, the JSON text of
  ``{"format": "numrnn", "version": 1, "model": {...}, "params": {"names": [...],
  "shapes": [...]}, "metrics": {...} | null}``; ``model`` holds what rebuilds the
  model (input_size, layer specs, bidirectional, head, dropout, dtype, seed).
- ``params``: the flat parameter buffer, (N,), in the model's dtype.

A checkpoint (``save_checkpoint``) adds ``"checkpoint"`` to the header (the
optimiser's type, hyperparameters and step, the state of ``model.rng`` and the
caller's JSON-able training state) and one ``optimizer.<name>`` (N,) array per
optimiser moment. ``load`` reads both kinds and returns the model.

Every file is written atomically (nanoGPT's checkpoints are not; ours must
survive a kill): a temporary file in the same directory, fsync, then
``os.replace``, so a reader sees either the old file or the new one.
"""
import json
import os
import secrets
import zipfile
from dataclasses import asdict

import numpy as np

from . import heads as heads_module
from . import optim
from .cells import Dropout, spec_from_dict, spec_to_dict
from .model import SequenceModel

FORMAT = "numrnn"
VERSION = 1


# ---------------------------------------------------------------------------
# Atomic writes


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary binary file next to ``path``, then
    fsync it and rename it over ``path``; on any error the temporary file is
    removed and ``path`` is untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never write through someone else's file; mode 0o666 lets the umask decide, as open() does.
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:       # no such directory, not a directory, no permission: name the path asked for
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave a partial temporary file
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    """Make the rename itself durable (POSIX); not possible on every platform."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# ---------------------------------------------------------------------------
# Model configuration <-> JSON


def model_config(model):
    """JSON-able keyword arguments of ``SequenceModel`` that rebuild ``model``."""
    head = model.head
    return {
        "input_size": model.input_size,
        "layers": [spec_to_dict(spec) for spec in model.specs],
        "bidirectional": model.bidirectional,
        "head": {"name": type(head).__name__, **asdict(head)},
        "dropout": None if model.dropout is None else asdict(model.dropout),
        "dtype": model.dtype.name,
        "seed": int(model.seed),
    }


def model_from_config(config):
    """A new ``SequenceModel`` (freshly initialised) from ``model_config(...)``."""
    config = dict(config)
    head = dict(config.pop("head"))
    head_name = head.pop("name", None)
    if head_name not in heads_module.HEADS:
        raise ValueError(f"head name must be one of {sorted(heads_module.HEADS)}, got {head_name!r}")
    dropout = config.pop("dropout", None)
    return SequenceModel(
        layers=[spec_from_dict(d) for d in config.pop("layers")],
        head=heads_module.HEADS[head_name](**head),
        dropout=None if dropout is None else Dropout(**dropout),
        dtype=np.dtype(config.pop("dtype")),
        **config)


# ---------------------------------------------------------------------------
# Save


def save(model, path, metrics=None):
    """Write ``model`` to ``path`` (a ``.npz`` file) atomically.

    Args:
        model: a ``SequenceModel``.
        path: file name; written as given (no suffix is added).
        metrics: optional JSON-able dict stored in the header (``read_header``).
    """
    _write(path, model, metrics, {}, {})


def save_checkpoint(path, model, optimizer, state, metrics=None):
    """Write a training checkpoint: the model, ``optimizer``'s moments and step,
    the state of ``model.rng`` (dropout masks) and ``state``, a JSON-able dict
    of the caller's (epoch, step, the trainer's RNG state...)."""
    opt = optimizer.state_dict()
    checkpoint = {
        "optimizer": {k: v for k, v in opt.items() if k != "moments"},
        "model_rng": model.rng.bit_generator.state,
        "state": state,
    }
    arrays = {f"optimizer.{name}": moment for name, moment in opt["moments"].items()}
    _write(path, model, metrics, {"checkpoint": checkpoint}, arrays)


def _write(path, model, metrics, extra_header, extra_arrays):
    header = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_config(model),
        "params": {"names": list(model.layout.shapes),
                   "shapes": [list(s) for s in model.layout.shapes.values()]},
        "metrics": metrics,
        **extra_header,
    }
    arrays = {"header": np.array(json.dumps(header)), "params": model.params, **extra_arrays}
    atomic_write(path, lambda f: np.savez(f, **arrays))


# ---------------------------------------------------------------------------
# Load


def read_header(path):
    """The JSON header of a model or checkpoint file, as a dict (checked: format
    and version)."""
    with _open(path) as archive:
        return _header(path, archive)


def load(path):
    """The ``SequenceModel`` stored in ``path`` by ``save`` or ``save_checkpoint``.

    Raises:
        ValueError naming the file when it is not a readable ``.npz`` (truncated,
        corrupt), has no or an unknown header format or version, or when its
        parameters disagree with the shapes its header describes.
    """
    with _open(path) as archive:
        return _load_model(path, archive, _header(path, archive))


def load_checkpoint(path):
    """``(model, optimizer, state)`` from a file written by ``save_checkpoint``:
    the model with its parameters and ``model.rng`` restored, the optimiser
    rebuilt with its hyperparameters, moments and step, and the caller's state."""
    with _open(path) as archive:
        header = _header(path, archive)
        if "checkpoint" not in header:
            raise ValueError(f"{path}: a model file, not a training checkpoint (no optimiser state)")
        model = _load_model(path, archive, header)
        checkpoint = header["checkpoint"]
        opt_state = dict(checkpoint["optimizer"])
        opt_state["moments"] = {name[len("optimizer."):]: _array(path, archive, name)
                                for name in archive.files if name.startswith("optimizer.")}
        try:
            optimizer = optim.from_state_dict(model, opt_state)
            model.rng.bit_generator.state = checkpoint["model_rng"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: bad optimiser or RNG state in the checkpoint ({e})") from None
        return model, optimizer, checkpoint["state"]


class _open:
    """``np.load(path, allow_pickle=False)`` as a context manager; any failure to
    read the archive becomes a ValueError that names the file."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        try:
            self.archive = np.load(self.path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{self.path}: not a readable .npz file, truncated or corrupt ({e})") from None
        if not isinstance(self.archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{self.path}: a single .npy array, not a numrnn .npz file")
        return self.archive

    def __exit__(self, *exc):
        self.archive.close()


def _array(path, archive, name):
    """One member of the archive; a truncated or corrupt member is a ValueError."""
    if name not in archive.files:
        raise ValueError(f"{path}: no {name!r} array (members: {archive.files})")
    try:
        return archive[name]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: array {name!r} is truncated or corrupt ({e})") from None


def _header(path, archive):
    raw = _array(path, archive, "header")
    try:
        header = json.loads(str(raw[()]))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: the header is not valid JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a numrnn model file (header format "
                         f"{header.get('format') if isinstance(header, dict) else header!r})")
    if header.get("version") != VERSION:
        raise ValueError(f"{path}: unknown format version {header.get('version')!r}; "
                         f"this numrnn reads version {VERSION}")
    return header


def _load_model(path, archive, header):
    try:
        model = model_from_config(header["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: the header's model configuration is invalid ({e})") from None
    try:
        described = dict(zip(header["params"]["names"], map(tuple, header["params"]["shapes"])))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: the header has no valid parameter names and shapes ({e!r})") from None
    if described != model.layout.shapes:
        wrong = sorted(set(described.items()) ^ set(model.layout.shapes.items()))
        raise ValueError(f"{path}: the header's parameter names and shapes disagree with its model "
                         f"configuration (differences: {wrong[:4]})")
    params = _array(path, archive, "params")
    if params.shape != model.params.shape or params.dtype != model.dtype:
        raise ValueError(f"{path}: params has shape {params.shape} and dtype {params.dtype}, but the "
                         f"header's parameters need {model.params.shape} {model.dtype}")
    model.params[:] = params
    return model

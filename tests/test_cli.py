"""The `numrnn` command line: tiny training runs on every task, eval, resume,
--config, Ctrl-C and divergence, and usage errors that name the option.

MNIST is replaced by a small generated dataset (the real loader checks the
official SHA-256 sums, so no fake file can pass it); nothing touches the network.
"""
import json
import os

import numba
import numpy as np
import pytest
from click.testing import CliRunner

import numrnn as nr
from numrnn import tasks
from numrnn.data import mnist as mnist_data
from numrnn.train import TrainResult
from numrnn_cli.main import main

TINY = ["--hidden", "8", "--epochs", "1", "--batch-size", "16", "--quiet"]
SYNTHETIC = {"adding": ["--length", "6"], "copy": ["--length", "3"], "parity": ["--length", "6"]}


def _fake_load_mnist(calls):
    """A load_mnist that returns 48 / 16 / 16 random images and appends each path it is given to calls."""
    def load_mnist(path=None, cache_dir=None, progress=None):
        calls.append(path)
        rng = np.random.default_rng(0)
        data = {}
        for split, n in (("train", 48), ("valid", 16), ("test", 16)):
            data[f"{split}_x"] = rng.random((n, 28, 28), dtype=np.float32)
            data[f"{split}_y"] = rng.integers(0, 10, n)
        return data
    return load_mnist


@pytest.fixture
def fake_mnist(monkeypatch):
    """load_mnist returns 48 / 16 / 16 random images; records the path it was given.
    ctc-digits builds 8 validation and 8 test strings from them."""
    calls = []
    monkeypatch.setattr(mnist_data, "load_mnist", _fake_load_mnist(calls))
    monkeypatch.setattr(tasks, "CTC_DIGITS_VALID_SIZE", 8)
    monkeypatch.setattr(tasks, "CTC_DIGITS_TEST_SIZE", 8)
    return calls


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def read_metrics(out):
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


MNIST_BASED = ("smnist", "psmnist", "pmnist", "ctc-digits")
METRIC = {"adding": "mse", "ctc-digits": "sequence_accuracy"}


@pytest.mark.parametrize("task", ["smnist", "psmnist", "pmnist", "adding", "copy", "parity", "ctc-digits"])
def test_train_each_task_and_eval(task, tmp_path, fake_mnist):
    out = tmp_path / "run"
    extra = SYNTHETIC.get(task, ["--limit", "32", "--mnist", tmp_path])
    result = run("train", task, *TINY, *extra, "--train-size", 32, "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("config.json", "metrics.jsonl", "model.npz", "last.npz"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["task"]["name"] == task
    assert config["model"]["layers"][0]["hidden"] == 8
    assert config["train"]["epochs"] == 1
    metrics = read_metrics(out)
    assert [r["split"] for r in metrics] == ["train", "val", "test"]
    test = metrics[-1]
    metric = METRIC.get(task, "accuracy")
    assert config["model"]["bidirectional"] is (task == "ctc-digits")      # the task's default
    summary = json.loads(result.stdout)
    assert summary["test"][metric] == test[metric]
    if task == "copy":
        assert 0 <= summary["test"]["symbol_accuracy"] <= 1
    if task == "ctc-digits":
        assert config["model"]["head"] == {"name": "CTC", "n_labels": 10, "blank": 10}
        assert 0 <= test["label_error_rate"] and len(summary["test"]) == len(test)
    if task in MNIST_BASED:
        assert fake_mnist == [str(tmp_path)]
        assert metrics[0]["sequences_per_second"] > 0
        assert config["task"]["limit"] == 32

    result = run("eval", out)
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["split"] == "test"
    assert evaluated["loss"] == test["loss"]
    assert evaluated[metric] == test[metric]
    if task == "ctc-digits":
        assert evaluated["label_error_rate"] == test["label_error_rate"]
        result = run("eval", out, "--split", "valid", "--limit", 3)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["sequences"] == 3
    if task == "copy":
        assert evaluated["symbol_accuracy"] == summary["test"]["symbol_accuracy"]


def test_eval_model_file_split_and_limit(tmp_path):
    out = tmp_path / "run"
    assert run("train", "parity", *TINY, "--length", 5, "--train-size", 32, "--out", out).exit_code == 0
    val = [r for r in read_metrics(out) if r["split"] == "val"][-1]
    result = run("eval", out / "model.npz", "--split", "valid")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["loss"] == val["loss"]
    result = run("eval", out, "--split", "train", "--limit", 10)
    assert json.loads(result.stdout)["sequences"] == 10


def test_resume_continues_exactly(tmp_path):
    args = ["train", "adding", "--length", 5, "--train-size", 64, "--hidden", 8, "--batch-size", 16, "--quiet",
            "--threads", 1, "--schedule", "constant", "--warmup", 0]   # cosine would depend on --epochs
    original = numba.get_num_threads()
    try:
        assert run(*args, "--epochs", 2, "--out", tmp_path / "straight").exit_code == 0
        assert run(*args, "--epochs", 1, "--out", tmp_path / "split").exit_code == 0
        # Stored options are reused; only the explicitly given --epochs changes.
        result = run("train", "--resume", tmp_path / "split", "--epochs", 2, "--quiet")
        assert result.exit_code == 0, result.output
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(original)
    a, b = nr.load(tmp_path / "straight" / "last.npz"), nr.load(tmp_path / "split" / "last.npz")
    np.testing.assert_array_equal(a.params, b.params)
    assert [r["epoch"] for r in read_metrics(tmp_path / "split")] == [1, 1, 2, 2, 2]
    result = run("train", "copy", "--resume", tmp_path / "split")
    assert result.exit_code == 2 and "adding" in result.output
    result = run("train", "--resume", tmp_path / "split", "--out", tmp_path / "other")
    assert result.exit_code == 2 and "'--out'" in result.output


def test_config_file_and_override(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('task = "parity"\nlength = 5\nhidden = [8, 4]\ncell = "gru"\n'
                      'train-size = 32\nbatch_size = 16\nepochs = 3\nlr = 0.01\nquiet = true\n')
    out = tmp_path / "run"
    result = run("train", "--config", config, "--epochs", 1, "--out", out)
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "config.json").read_text())
    assert [layer["hidden"] for layer in stored["model"]["layers"]] == [8, 4]
    assert stored["model"]["layers"][0]["cell"] == "GRU"
    assert stored["train"]["epochs"] == 1 and stored["train"]["lr"] == 0.01
    assert stored["task"] == {"name": "parity", "length": 5, "limit": None, "train_size": 32, "seed": 0}


@pytest.mark.parametrize("text, key", [("hiden = 8\n", "hiden"), ('epochs = "two"\n', "epochs"),
                                       ("bidirectional = 1\n", "bidirectional"), ("lr = -1.0\n", "lr")])
def test_config_file_errors(tmp_path, text, key):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run("train", "adding", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "--config" in result.output and repr(key) in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, option", [
    (["--hidden", "-3"], "--hidden"),
    (["--hidden", "8,x"], "--hidden"),
    (["--input-keep", "1.5"], "--input-keep"),
    (["--cell", "cnn"], "--cell"),
    (["--lr", "0"], "--lr"),
    (["--cell", "gru", "--peepholes"], "--peepholes"),
    (["--cell", "gru", "--chrono", "10"], "--chrono"),
    (["--chrono", "1"], "--chrono"),
    (["--proj-clip", "1.0"], "--proj-clip"),
    (["--cell-clip", "-1"], "--cell-clip"),
    (["--hidden", "8,8", "--layers", "3"], "--layers"),
    (["--epochs", "0"], "--epochs"),
    (["--threads", "100000"], "--threads"),
    (["--schedule", "cosine", "--warmup", "1000", "--train-size", "16"], "--warmup"),
])
def test_bad_options_exit_2_naming_the_option(tmp_path, args, option):
    result = run("train", "adding", "--length", 4, *args, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 2, result.output
    assert f"'{option}'" in result.output


def test_unwritable_outputs_name_the_option(tmp_path, smnist_run):
    (tmp_path / "afile").write_text("")
    result = run("train", "adding", "--length", 4, *TINY, "--out", tmp_path / "afile" / "run")
    assert result.exit_code == 2 and "'--out'" in result.output
    assert f"{tmp_path / 'afile'} is not a directory" in result.output
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.float32))
    for name in ("p.jsonl", "p.npy"):
        target = tmp_path / "no-such-dir" / name
        result = run("predict", smnist_run[0], tmp_path / "x.npy", "--output", target)
        assert result.exit_code == 2 and "'--output'" in result.output
        assert f"cannot write {target}: No such file or directory" in result.output


def test_ctrl_c_and_divergence(tmp_path, monkeypatch):
    real_train = nr.train

    def interrupted(*args, **kwargs):
        raise nr.TrainingInterrupted(f"training interrupted; checkpoint saved to {kwargs['out']}/last.npz")

    monkeypatch.setattr(nr, "train", interrupted)
    result = run("train", "adding", "--length", 4, *TINY, "--out", tmp_path / "a")
    assert result.exit_code == 130
    assert "last.npz" in result.output and f"numrnn train --resume {tmp_path / 'a'}" in result.output

    # Ctrl-C after the loop (the test evaluation): the loop's checkpoint is kept.
    def interrupted_after_the_loop(*args, **kwargs):
        real_train(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(nr, "train", interrupted_after_the_loop)
    result = run("train", "adding", "--length", 4, *TINY, "--out", tmp_path / "c")
    assert result.exit_code == 130
    assert f"{tmp_path / 'c' / 'last.npz'} holds the last checkpoint" in result.output
    assert f"numrnn train --resume {tmp_path / 'c'}" in result.output
    # ... and before it (making the data): nothing saved yet.
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks, "load_task", ctrl_c)
    result = run("train", "adding", "--length", 4, *TINY, "--out", tmp_path / "d")
    assert result.exit_code == 130 and "interrupted before training started; nothing saved" in result.output
    monkeypatch.undo()

    monkeypatch.setattr(nr, "train", lambda *args, **kwargs: TrainResult("diverged", 0, 3, [], message="nan"))
    result = run("train", "adding", "--length", 4, *TINY, "--out", tmp_path / "b")
    assert result.exit_code == 1 and "diverged" in result.output


def test_version_and_data_commands(tmp_path, monkeypatch):
    result = run("--version")
    assert result.exit_code == 0 and nr.__version__ in result.output
    monkeypatch.setenv("NUMRNN_DATA", str(tmp_path))
    result = run("data", "info")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["mnist"]["present"] is False and info["mnist"]["cache_dir"] == str(tmp_path)
    assert set(info["synthetic"]) == {"adding", "copy", "parity"}

    def failing(path=None, cache_dir=None, progress=None):
        raise mnist_data.DataError("could not load MNIST; tried, in order:\n  - nothing")

    monkeypatch.setattr(mnist_data, "fetch_mnist", failing)
    result = run("data", "fetch", "mnist")
    assert result.exit_code == 1 and "could not load MNIST" in result.output


# ----------------------------------------------------------------------------- predict and info

def write_pgm(path, image):
    path.write_bytes(b"P5\n# a digit\n28 28\n255\n" + image.astype(np.uint8).tobytes())


def write_png(path, image, rgb=False):
    """An 8-bit PNG whose rows cycle through the five filter types (so the reader's unfiltering is tested)."""
    import struct
    import zlib

    pixels = np.repeat(image[..., None], 3, axis=2) if rgb else image[..., None]
    h, w, bpp = pixels.shape
    rows = pixels.reshape(h, w * bpp).astype(np.int64)
    raw = bytearray()
    prev = np.zeros(w * bpp, np.int64)
    for y, row in enumerate(rows):
        kind = y % 5
        left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        if kind == 0:
            pred = np.zeros_like(row)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - up_left
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - up_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, up_left))
        raw += bytes([kind]) + bytes(((row - pred) & 255).astype(np.uint8))
        prev = row

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2 if rgb else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw)))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def smnist_run(tmp_path_factory):
    """A tiny smnist model trained by `numrnn train` on the fake MNIST, and the test split it was evaluated on."""
    tmp_path = tmp_path_factory.mktemp("smnist")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(mnist_data, "load_mnist", _fake_load_mnist([]))
        out = tmp_path / "run"
        result = run("train", "smnist", *TINY, "--limit", 32, "--mnist", tmp_path, "--out", out)
        assert result.exit_code == 0, result.output
        evaluated = json.loads(run("eval", out).stdout)
        test = tasks.load_task("smnist", mnist=str(tmp_path), splits=("test",)).test
    return out, evaluated, test



def test_predict_reproduces_eval_accuracy(smnist_run, tmp_path):
    out, evaluated, test = smnist_run
    np.save(tmp_path / "x.npy", test.x)
    result = run("predict", out, tmp_path / "x.npy", "--output", tmp_path / "probs.npy")
    assert result.exit_code == 0, result.output
    probs = np.load(tmp_path / "probs.npy")
    assert probs.shape == (len(test.y), 10)
    assert np.mean(probs.argmax(axis=1) == test.y) == evaluated["accuracy"]
    # JSON lines on stdout, from an .npz holding x and lengths, and from the model file itself.
    np.savez(tmp_path / "x.npz", x=test.x, lengths=np.full(len(test.y), 28))
    result = run("predict", out / "model.npz", tmp_path / "x.npz")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["label"] for r in records] == list(probs.argmax(axis=1))
    np.testing.assert_allclose([r["probs"] for r in records], probs, rtol=1e-6)


def test_predict_images(smnist_run, tmp_path):
    out = smnist_run[0]
    image = np.random.default_rng(9).integers(0, 256, (28, 28)).astype(np.uint8)
    expected = nr.load(out / "model.npz").predict(image[None].astype(np.float32) / np.float32(255))
    for name, write in (("d.pgm", write_pgm), ("d.png", write_png), ("rgb.png", lambda p, i: write_png(p, i, True))):
        write(tmp_path / name, image)
        result = run("predict", out, tmp_path / name)
        assert result.exit_code == 0, (name, result.output)
        np.testing.assert_allclose(json.loads(result.stdout)["probs"], expected[0], rtol=1e-6, err_msg=name)


def test_info(smnist_run):
    out, evaluated, _ = smnist_run
    result = run("info", out)
    assert result.exit_code == 0, result.output
    model = nr.load(out / "model.npz")
    assert f"parameters:    {model.params.size:,}" in result.stdout
    assert "LSTM(hidden=8" in result.stdout and "Classify(n=10)" in result.stdout and "accuracy" in result.stdout
    info = json.loads(run("info", out / "last.npz", "--json").stdout)
    assert info["parameters"] == model.params.size and info["task"] == "smnist"
    assert sum(info["parameters_by_part"].values()) == model.params.size
    assert "checkpoint" in info
    best = json.loads(run("info", out, "--json").stdout)
    assert best["metrics"]["split"] == "val"


@pytest.mark.parametrize("case, hint, message", [
    ("features", "'INPUT'", "features per step"),
    ("rank", "'INPUT'", "rank 3"),
    ("dtype", "'INPUT'", "dtype complex"),
    ("format", "'INPUT'", "unknown input format"),
    ("lengths", "'--lengths'", "lengths[0]"),
    ("beam", "'--beam'", "applies to CTC models"),
    ("image_size", "'INPUT'", "MNIST models read 28 x 28"),
    ("bad_png", "'INPUT'", "not a PNG file"),
    ("model", "'MODEL'", "not a readable .npz"),
    ("output", "'--output'", "write .npy or .jsonl"),
])
def test_predict_bad_inputs_exit_2(smnist_run, tmp_path, case, hint, message):
    out = smnist_run[0]
    good = tmp_path / "x.npy"
    np.save(good, np.zeros((2, 28, 28), np.float32))
    args = [out, good]
    if case == "features":
        np.save(good, np.zeros((2, 28, 5), np.float32))
    elif case == "rank":
        np.save(good, np.zeros(28, np.float32))
    elif case == "dtype":
        np.save(good, np.zeros((2, 28, 28), complex))
    elif case == "format":
        (tmp_path / "x.txt").write_text("1 2 3")
        args = [out, tmp_path / "x.txt"]
    elif case == "lengths":
        (tmp_path / "l.txt").write_text("29 28")
        args += ["--lengths", tmp_path / "l.txt"]
    elif case == "beam":
        args += ["--beam", 4]
    elif case == "image_size":
        (tmp_path / "d.pgm").write_bytes(b"P5 27 28 255\n" + bytes(27 * 28))
        args = [out, tmp_path / "d.pgm"]
    elif case == "bad_png":
        (tmp_path / "d.png").write_bytes(b"GIF89a")
        args = [out, tmp_path / "d.png"]
    elif case == "model":
        (tmp_path / "m.npz").write_bytes(b"not a zip")
        args = [tmp_path / "m.npz", good]
    elif case == "output":
        args += ["--output", tmp_path / "p.csv"]
    result = run("predict", *args)
    assert result.exit_code == 2, result.output
    assert hint in result.output and message in result.output


def test_predict_ctc_run(tmp_path, fake_mnist):
    """A CTC model: decoded label lists as JSON lines (greedy and beam); .npy output refused."""
    out = tmp_path / "run"
    assert run("train", "ctc-digits", *TINY, "--limit", 8, "--train-size", 8, "--mnist", tmp_path,
               "--out", out).exit_code == 0
    model = nr.load(out / "model.npz")
    x = np.random.default_rng(3).random((2, 12, model.input_size), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    for extra in ([], ["--beam", 3]):
        result = run("predict", out, tmp_path / "x.npy", *extra, "--output", tmp_path / "p.jsonl")
        assert result.exit_code == 0, result.output
        labels = [json.loads(line)["labels"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
        assert labels == model.predict(x, beam=extra[1] if extra else None)
    result = run("predict", out, tmp_path / "x.npy", "--output", tmp_path / "p.npy")
    assert result.exit_code == 2 and "write .jsonl" in result.output


def test_bench_passes_its_arguments_to_perf(tmp_path, monkeypatch):
    """numrnn bench runs `python -m perf run ARGS` from the source checkout; argparse's
    --help exits 0 and prints perf's usage."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(root)
    done = subprocess.run([sys.executable, "-c", "from numrnn_cli.main import main; main()", "bench", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "python -m perf run" in done.stdout and "--quick" in done.stdout

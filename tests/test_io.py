"""Model files and checkpoints: bit-exact round trips, refused corrupt files, atomic writes."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import numrnn as nr
from numrnn import io

ARCHITECTURES = {
    "lstm_classify": dict(layers=[nr.LSTM(4)], head=nr.heads.Classify(3)),
    "bi_stacked_tag": dict(layers=[nr.GRU(5), nr.LSTM(4, peepholes=True, proj=3)], bidirectional=True,
                           head=nr.heads.Tag(3, delay=1)),
    "bi_stacked_regress_dropout": dict(layers=[nr.RNN(4, activation="relu"), nr.GRU(4, reset_after=True)],
                                       bidirectional=True, head=nr.heads.Regress(2),
                                       dropout=nr.Dropout(input_keep=0.9, state_keep=0.8, variational=True)),
    "layer_norm": dict(layers=[nr.LSTM(4, layer_norm=True), nr.GRU(3, layer_norm=True)], head=nr.heads.Classify(2)),
}


def make_model(name="lstm_classify", dtype=np.float64, seed=7):
    model = nr.SequenceModel(2, dtype=dtype, seed=seed, **ARCHITECTURES[name])
    # Random values everywhere (biases and gains too), so that a lost or shifted tensor shows.
    model.params[:] = np.random.default_rng(seed).standard_normal(model.params.shape)
    return model


def bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_round_trip_is_bit_exact(tmp_path, name, dtype):
    model = make_model(name, dtype)
    io.save(model, tmp_path / "model.npz", metrics={"accuracy": 0.5})
    loaded = nr.load(tmp_path / "model.npz")
    assert loaded.params.dtype == dtype
    assert (bits(loaded.params) == bits(model.params)).all()
    assert io.model_config(loaded) == io.model_config(model)
    assert loaded.layout.shapes == model.layout.shapes
    assert io.read_header(tmp_path / "model.npz")["metrics"] == {"accuracy": 0.5}
    x = np.random.default_rng(0).standard_normal((3, 4, 2))
    lengths = np.array([4, 1, 3])
    assert (loaded.predict(x, lengths) == model.predict(x, lengths)).all()


def test_file_loads_without_pickle(tmp_path):
    io.save(make_model(), tmp_path / "model.npz")
    with np.load(tmp_path / "model.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["header", "params"]
        assert json.loads(str(f["header"][()]))["version"] == io.VERSION


def test_checkpoint_round_trip(tmp_path):
    model = make_model("bi_stacked_regress_dropout", np.float32)
    opt = nr.Adam(model, lr=0.01, weight_decay=0.1, clip_norm=1.0,
                  schedule={"name": "step", "every": 3, "warmup": 2})
    x = np.random.default_rng(1).standard_normal((3, 4, 2))
    y = np.random.default_rng(2).standard_normal((3, 2))
    for _ in range(3):
        model.loss_and_grad(x, y)    # draws dropout masks: moves model.rng
        opt.step()
    trainer_rng = np.random.default_rng(5)
    state = {"epoch": 2, "step": 3, "rng": trainer_rng.bit_generator.state}
    io.save_checkpoint(tmp_path / "last.npz", model, opt, state)

    loaded, loaded_opt, loaded_state = io.load_checkpoint(tmp_path / "last.npz")
    assert loaded_state == state
    assert (bits(loaded.params) == bits(model.params)).all()
    assert loaded.rng.bit_generator.state == model.rng.bit_generator.state
    assert isinstance(loaded_opt, nr.Adam) and loaded_opt.model is loaded
    assert loaded_opt.step_count == 3 and loaded_opt.hyperparameters() == opt.hyperparameters()
    assert (loaded_opt.exp_avg == opt.exp_avg).all() and (loaded_opt.exp_avg_sq == opt.exp_avg_sq).all()
    # A checkpoint is also a model file.
    assert (nr.load(tmp_path / "last.npz").params == model.params).all()


def test_load_checkpoint_refuses_a_model_file(tmp_path):
    io.save(make_model(), tmp_path / "model.npz")
    with pytest.raises(ValueError, match="model.npz: a model file, not a training checkpoint"):
        io.load_checkpoint(tmp_path / "model.npz")


# ----------------------------------------------------------------------------- corrupt files

def rewrite(path, edit_header=None, params=None):
    """Rewrite a saved file with its header edited and/or other params."""
    with np.load(path, allow_pickle=False) as f:
        header, stored = json.loads(str(f["header"][()])), f["params"]
    if edit_header:
        edit_header(header)
    np.savez(path, header=np.array(json.dumps(header)), params=stored if params is None else params)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_refused(tmp_path, fraction):
    path = tmp_path / "model.npz"
    io.save(make_model("bi_stacked_tag"), path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(ValueError, match=r"model.npz: not a readable .npz file, truncated or corrupt"):
        nr.load(path)


def test_corrupt_bytes_are_refused(tmp_path):
    path = tmp_path / "model.npz"
    io.save(make_model(), path)
    data = bytearray(path.read_bytes())
    with np.load(path) as f:
        assert f["params"].nbytes > 100
    middle = data.index(b"params.npy") + 300         # inside the stored params
    data[middle:middle + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.npz: array 'params' is truncated or corrupt"):
        nr.load(path)


def test_unknown_version_is_refused(tmp_path):
    path = tmp_path / "model.npz"
    io.save(make_model(), path)
    rewrite(path, edit_header=lambda h: h.update(version=99))
    with pytest.raises(ValueError, match=r"model.npz: unknown format version 99; this numrnn reads version 1"):
        nr.load(path)


def test_header_shapes_disagreeing_with_config_are_refused(tmp_path):
    path = tmp_path / "model.npz"
    io.save(make_model(), path)
    rewrite(path, edit_header=lambda h: h["params"]["shapes"][0].__setitem__(0, 5))
    with pytest.raises(ValueError, match=r"model.npz: the header's parameter names and shapes disagree"):
        nr.load(path)


def test_params_disagreeing_with_header_are_refused(tmp_path):
    path = tmp_path / "model.npz"
    model = make_model()
    io.save(model, path)
    rewrite(path, params=model.params[:-1])
    with pytest.raises(ValueError, match=r"model.npz: params has shape \(\d+,\) .* but the header's parameters need"):
        nr.load(path)
    rewrite(path, params=model.params.astype(np.float32))
    with pytest.raises(ValueError, match="dtype float32"):
        nr.load(path)


def test_other_files_are_refused(tmp_path):
    np.savez(tmp_path / "plain.npz", params=np.zeros(3))
    with pytest.raises(ValueError, match=r"plain.npz: no 'header' array"):
        nr.load(tmp_path / "plain.npz")
    np.savez(tmp_path / "other.npz", header=np.array(json.dumps({"format": "other"})), params=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.npz: not a numrnn model file"):
        nr.load(tmp_path / "other.npz")
    np.savez(tmp_path / "pickled.npz", header=np.array([{"format": "numrnn"}], dtype=object))
    with pytest.raises(ValueError, match="pickled.npz"):
        nr.load(tmp_path / "pickled.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="text.npz: not a readable .npz file"):
        nr.load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        nr.load(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------- atomic writes

def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "model.npz"
    model = make_model()
    io.save(model, path)
    before = path.read_bytes()

    def fail(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(path, fail)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]


SAVER = textwrap.dedent("""
    import sys
    import numrnn as nr
    model = nr.SequenceModel(256, [nr.LSTM(256)], head=nr.heads.Classify(2))   # about 0.5M params
    path = sys.argv[1]
    i = 0
    while True:
        model.params[:] = i
        nr.save(model, path)
        if i == 0:
            print("saved", flush=True)
        i += 1
""")


def test_kill_during_save_leaves_previous_file(tmp_path):
    path = tmp_path / "model.npz"
    child = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "NUMBA_NUM_THREADS": "1"})
    try:
        assert child.stdout.readline().strip() == "saved"
        time.sleep(np.random.default_rng().uniform(0.05, 0.5))   # most of the child's time is in save
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    model = nr.load(path)
    assert (model.params == model.params[0]).all()     # one whole version, not a mix


def test_numpy_scalar_options_are_stored_as_plain_values(tmp_path):
    """Options read from NumPy arrays (np.int64, np.float32, np.bool_) are taken as the
    Python values they hold, so the model saves (JSON header) and loads back equal."""
    model = nr.SequenceModel(np.int64(2), [nr.LSTM(np.int64(4), forget_bias=np.float32(0.5), peepholes=np.bool_(True),
                                                   proj=np.int32(3)), nr.GRU(np.int64(2))],
                             head=nr.heads.Tag(np.int64(3), delay=np.int64(1)),
                             dropout=nr.Dropout(state_keep=np.float64(0.5)), seed=np.int64(4))
    assert model.specs[0] == nr.LSTM(4, forget_bias=0.5, peepholes=True, proj=3)
    assert type(model.specs[0].hidden) is int and type(model.head.delay) is int
    nr.save(model, tmp_path / "m.npz")
    loaded = nr.load(tmp_path / "m.npz")
    assert loaded.specs == model.specs and loaded.head == model.head and loaded.dropout == model.dropout
    np.testing.assert_array_equal(loaded.params, model.params)
    nr.set_num_threads(np.int64(nr.get_num_threads()))

"""The trainer: run directory files, resume, Ctrl-C, divergence, reproducibility, metrics."""
import json
import os
import signal

import numpy as np
import pytest

import numrnn as nr
from numrnn import io
from numrnn.train import evaluate

N, T, F = 24, 5, 2          # 3 batches of 8 per epoch


def data(head="classify", seed=0, n=N):
    """A Split for the head: labels that depend on the inputs, mixed lengths."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T, F))
    lengths = rng.integers(1, T + 1, n)
    if head == "classify":
        y = (x[:, 0, 0] > 0).astype(int)
    elif head == "tag":
        y = (x[:, :, 0] > 0).astype(int)
    else:
        y = x[:, :2, 1].copy()
    return nr.Split(x, y, lengths)


def model(head="classify", dropout=True, dtype=np.float64):
    heads = {"classify": nr.heads.Classify(2), "tag": nr.heads.Tag(2, delay=1), "regress": nr.heads.Regress(2)}
    return nr.SequenceModel(F, [nr.GRU(4)], head=heads[head], dtype=dtype, seed=3,
                            dropout=nr.Dropout(output_keep=0.8, state_keep=0.9) if dropout else None)


OPTIONS = dict(batch_size=8, lr=0.05, clip_norm=1.0, weight_decay=0.01, seed=11, quiet=True)


def bits(a):
    return a.view(np.uint64 if a.dtype == np.float64 else np.uint32)


def losses(history):
    """The metrics records without their timings."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "sequences_per_second")} for r in history]


def test_run_directory(tmp_path):
    m = model()
    result = nr.train(m, data(), val=data(seed=1), test=data(seed=2), out=tmp_path, epochs=2,
                      extra_config={"data": {"task": "toy"}}, **OPTIONS)
    assert result.status == "finished" and result.epoch == 2 and result.step == 6
    assert sorted(os.listdir(tmp_path)) == ["config.json", "last.npz", "metrics.jsonl", "model.npz"]

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == io.model_config(m)
    assert config["train"]["epochs"] == 2 and config["train"]["clip_norm"] == 1.0
    assert config["data"] == {"task": "toy"}

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records == result.history
    assert [(r["epoch"], r["step"], r["split"]) for r in records] == [
        (1, 3, "train"), (1, 3, "val"), (2, 6, "train"), (2, 6, "val"),
        (result.best["epoch"], result.best["step"], "test")]
    for r in records:
        assert {"loss", "seconds", "sequences_per_second"} <= set(r)
        assert ("accuracy" in r) == (r["split"] != "train")

    best = nr.load(tmp_path / "model.npz")
    assert io.read_header(tmp_path / "model.npz")["metrics"] == result.best
    assert result.best == min((r for r in records if r["split"] == "val"), key=lambda r: r["loss"])
    # The test split is evaluated with the best model.
    assert losses([{**result.test, **evaluate(best, data(seed=2))}]) == losses([result.test])

    last, opt, state = io.load_checkpoint(tmp_path / "last.npz")
    assert (bits(last.params) == bits(m.params)).all()
    assert opt.step_count == 6 and state["epoch"] == 2 and state["batch"] == 0


def resume_pair(tmp_path, interrupt_at=None, **options):
    """(2-epoch run, 1-epoch run resumed for 1 more epoch); with ``interrupt_at``
    the second run is a 2-epoch run interrupted by Ctrl-C at that batch and resumed."""
    options = {**OPTIONS, **options}
    whole = model()
    whole_result = nr.train(whole, data(), val=data(seed=1), out=tmp_path / "whole", epochs=2, **options)

    parts = model()
    if interrupt_at is None:
        nr.train(parts, data(), val=data(seed=1), out=tmp_path / "parts", epochs=1, **options)
    else:
        calls = {"n": 0}
        loss_and_grad = parts.loss_and_grad

        def ctrl_c_during(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)
            return loss_and_grad(*args, **kwargs)

        parts.loss_and_grad = ctrl_c_during
        with pytest.raises(nr.TrainingInterrupted, match=r"training interrupted at epoch \d, after batch \d .*"
                                                         r"checkpoint saved to .*last.npz; continue with resume=True"):
            nr.train(parts, data(), val=data(seed=1), out=tmp_path / "parts", epochs=2, **options)
        parts.loss_and_grad = loss_and_grad
    resumed = model()                     # a fresh process would start from a fresh model
    resumed_result = nr.train(resumed, data(), val=data(seed=1), out=tmp_path / "parts", epochs=2, resume=True,
                              **options)
    return whole, whole_result, resumed, resumed_result


def test_resume_is_bit_identical(tmp_path):
    whole, whole_result, resumed, resumed_result = resume_pair(tmp_path)
    assert (bits(resumed.params) == bits(whole.params)).all()
    assert resumed_result.step == whole_result.step == 6
    assert losses(resumed_result.history) == losses(whole_result.history)
    assert losses(json.loads(line) for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()) \
        == losses(whole_result.history)


@pytest.mark.parametrize("interrupt_at", [2, 3, 5])    # mid-epoch, the epoch's last batch, next epoch
def test_ctrl_c_saves_and_resumes_exactly(tmp_path, interrupt_at):
    whole, whole_result, resumed, resumed_result = resume_pair(tmp_path, interrupt_at, schedule="cosine",
                                                               optimizer="SGD", optimizer_options={"momentum": 0.9})
    assert (bits(resumed.params) == bits(whole.params)).all()
    assert losses(resumed_result.history) == losses(whole_result.history)


def test_second_ctrl_c_interrupts_at_once(tmp_path):
    m = model()
    loss_and_grad = m.loss_and_grad
    handler = signal.getsignal(signal.SIGINT)       # ignored when the tests run as a background job

    def two_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return loss_and_grad(*args, **kwargs)

    m.loss_and_grad = two_ctrl_c
    with pytest.raises(KeyboardInterrupt) as info:
        nr.train(m, data(), out=tmp_path, epochs=1, **OPTIONS)
    assert not isinstance(info.value, nr.TrainingInterrupted)
    assert signal.getsignal(signal.SIGINT) is handler      # handler restored
    nr.load(tmp_path / "last.npz")


def test_same_seed_gives_bit_identical_runs():
    runs = []
    for _ in range(2):
        m = model()
        result = nr.train(m, data(), val=data(seed=1), epochs=2, **OPTIONS)
        runs.append((m.params.copy(), losses(result.history)))
    assert (bits(runs[0][0]) == bits(runs[1][0])).all()
    assert runs[0][1] == runs[1][1]
    other = model()
    nr.train(other, data(), epochs=2, **{**OPTIONS, "seed": 12})
    assert not (other.params == runs[0][0]).all()       # the seed drives the shuffling


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    m = model("regress", dropout=False, dtype=np.float32)
    # Epoch 1 trains; the schedule then multiplies the learning rate by 1e20 and the loss overflows.
    result = nr.train(m, data("regress"), out=tmp_path, epochs=5, optimizer="SGD",
                      schedule={"name": "step", "every": 3, "gamma": 1e20},
                      **{**OPTIONS, "lr": 0.01, "clip_norm": None})
    assert result.status == "diverged"
    assert result.epoch == 1
    assert "training diverged: loss is" in result.message
    assert f"last good checkpoint is {tmp_path / 'last.npz'}" in result.message
    assert "batch" in result.message and "at epoch 2" in result.message
    assert result.message in capsys.readouterr().err       # said even in quiet mode
    good, _, state = io.load_checkpoint(tmp_path / "last.npz")
    assert state["epoch"] == 1 and np.isfinite(good.params).all()
    assert np.isfinite(nr.load(tmp_path / "model.npz").params).all()


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("gamma, what", [(1e30, "validation loss is inf after epoch 1 (step 3)"),
                                         (1e40, "the update of epoch 1's last batch (step 3) made the "
                                                "parameters non-finite")])
def test_a_bad_last_update_of_an_epoch_is_not_saved(gamma, what, tmp_path, capsys):
    """The last batch of epoch 1 gets its learning rate multiplied by gamma: its loss,
    taken before the update, is finite; after it the validation loss (1e30) or the
    float32 parameters themselves (1e40: the rate overflows) are not. The run stops
    before choosing a best model or saving: last.npz keeps the step-0 state."""
    m = model("regress", dropout=False, dtype=np.float32)
    result = nr.train(m, data("regress"), val=data("regress", seed=1), out=tmp_path, epochs=3, optimizer="SGD",
                      schedule={"name": "step", "every": 2, "gamma": gamma}, **{**OPTIONS, "clip_norm": None})
    assert result.status == "diverged" and result.epoch == 0 and result.history == [] and result.best is None
    assert result.message == (f"training diverged: {what}. The last good checkpoint is {tmp_path / 'last.npz'}.")
    assert result.message in capsys.readouterr().err
    good, _, state = io.load_checkpoint(tmp_path / "last.npz")
    assert state["epoch"] == 0 and np.isfinite(good.params).all()
    assert not (tmp_path / "model.npz").exists()


def test_quiet_and_progress(capsys):
    nr.train(model(), data(), val=data(seed=1), epochs=1, **OPTIONS)
    assert capsys.readouterr().err == ""
    nr.train(model(), data(), val=data(seed=1), epochs=1, **{**OPTIONS, "quiet": False})
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "epoch 1 step 3 val: loss" in err and "accuracy" in err


@pytest.mark.parametrize("head", ["tag", "regress"])
def test_evaluate_metrics(head):
    m = model(head, dropout=False)
    split = data(head)
    record = evaluate(m, split, batch_size=7)       # batches of uneven size
    probs = m.predict(split.x, split.lengths)
    if head == "regress":
        mse = float(((probs - split.y) ** 2).mean())
        assert record["mse"] == pytest.approx(mse, rel=1e-12)
        assert record["loss"] == pytest.approx(m.loss(split.x, split.y, split.lengths), rel=1e-12)
    else:
        right = total = 0
        for b in range(N):
            for t in range(1, split.lengths[b]):        # delay 1: the output at t scores label t-1
                right += probs[b, t].argmax() == split.y[b, t - 1]
                total += 1
        assert record["accuracy"] == right / total
        assert record["loss"] == pytest.approx(m.loss(split.x, split.y, split.lengths), rel=1e-12)


def test_training_learns():
    m = model(dropout=False)
    before = evaluate(m, data())["loss"]
    nr.train(m, data(), epochs=8, **{**OPTIONS, "lr": 0.1})
    assert evaluate(m, data())["loss"] < 0.7 * before


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "epochs must be a positive integer, got 0"),
    (dict(batch_size=2.5), "batch_size must be a positive integer, got 2.5"),
    (dict(optimizer="RMSprop"), "optimizer must be one of .*, got 'RMSprop'"),
    (dict(learning_rate=0.1), r"unknown training options \['learning_rate'\]"),
    (dict(lr=-1.0), "lr must be a finite number > 0, got -1.0"),
    (dict(resume=True), "resume=True needs out"),
    (dict(config={"foo": 1}), r"unknown training options \['foo'\]"),
    (dict(config=[1]), r"config must be a TrainConfig, a dict of its fields or None, got \[1\]"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nr.train(model(), data(), quiet=True, **kwargs)


def test_bad_splits_and_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=r"Split y must have one target per sequence \(4\), got shape \(3,\)"):
        nr.Split(np.zeros((4, 2, 1)), np.zeros(3))
    with pytest.raises(ValueError, match=r"Split lengths must have shape \(4,\), got \(4, 1\)"):
        nr.Split(np.zeros((4, 2, 1)), np.zeros(4), np.ones((4, 1)))
    with pytest.raises(ValueError, match="val must be a numrnn.train.Split, got tuple"):
        nr.train(model(), data(), val=(1, 2), quiet=True)
    with pytest.raises(ValueError, match="there is no checkpoint .*last.npz"):
        nr.train(model(), data(), out=tmp_path, resume=True, quiet=True)


@pytest.mark.parametrize("which, change, message", [
    ("train", lambda s: s.x.__setitem__((17, 2, 1), np.nan), r"train.x holds a non-finite value nan in sequence 17 "
                                                            r"at step 2"),
    ("val", lambda s: s.x.__setitem__((5, 0, 0), 1e300), r"val.x holds a non-finite value inf in sequence 5 at step 0"),
    ("val", lambda s: s.lengths.__setitem__(3, T + 1), rf"val split: lengths\[3\] = {T + 1} is outside \[0, {T}\]"),
    ("test", lambda s: s.y.__setitem__(4, 7), r"test split: .*y"),
])
def test_splits_are_checked_before_the_first_step(which, change, message, tmp_path):
    """Every split, by its own sequence indices, before anything is trained or written
    (float32 model: 1e300 is inf)."""
    splits = {"train": data(), "val": data(seed=1), "test": data(seed=2)}
    change(splits[which])
    m = model(dtype=np.float32)
    before = m.params.copy()
    with pytest.raises(ValueError, match=message):
        with np.errstate(over="ignore"):
            nr.train(m, splits["train"], val=splits["val"], test=splits["test"], out=tmp_path / "run", **OPTIONS)
    assert (m.params == before).all() and not (tmp_path / "run").exists()

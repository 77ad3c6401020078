"""numrnn.interop: models from torch.nn.RNN / LSTM / GRU agree with PyTorch (float32,
1e-5) in every supported configuration, and the conversions round-trip the weights."""
import subprocess
import sys

import numpy as np
import pytest

import numrnn as nr

torch = pytest.importorskip("torch")

B, T, IN, H = 3, 5, 4, 4
TOL = dict(rtol=1e-5, atol=1e-5)

CONFIGS = {   # torch module, its options
    "rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
    "gru": (torch.nn.GRU, {}),
    "lstm": (torch.nn.LSTM, {}),
    "lstm_proj": (torch.nn.LSTM, {"proj_size": 3}),
}


def torch_module(config, num_layers, bidirectional, batch_first, bias, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    cls, options = CONFIGS[config]
    module = cls(IN, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
                 dtype=dtype, **options)
    with torch.no_grad():            # biases of both kinds non-zero, so that their sum matters
        for p in module.parameters():
            p.uniform_(-0.6, 0.6)
    return module.eval()


def torch_features(out, R, bidirectional):
    """What Classify / Regress read from torch's (B, T, D) output (full lengths)."""
    if not bidirectional:
        return out[:, -1]
    return torch.cat([out[:, -1, :R], out[:, 0, R:]], dim=1)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_from_torch_matches_torch(config, num_layers, bidirectional, batch_first, bias):
    module = torch_module(config, num_layers, bidirectional, batch_first, bias)
    R = module.proj_size or H
    D = R * (2 if bidirectional else 1)
    torch.manual_seed(1)
    linear = torch.nn.Linear(D, 3).eval()
    model = nr.interop.from_torch(module, head="classify", linear=linear)
    assert model.dtype == np.float32 and model.head == nr.heads.Classify(3)

    x = np.random.default_rng(2).standard_normal((B, T, IN)).astype(np.float32)
    xt = torch.from_numpy(x if batch_first else np.ascontiguousarray(x.transpose(1, 0, 2)))
    with torch.no_grad():
        out, hn = module(xt)
        out_b = out if batch_first else out.transpose(0, 1)
        probs = torch.softmax(linear(torch_features(out_b, R, bidirectional)), dim=1).numpy()
    ours, final = model.forward(xt.numpy(), time_major=not batch_first)
    np.testing.assert_allclose(ours, out.numpy(), **TOL)
    h_n, c_n = hn if isinstance(module, torch.nn.LSTM) else (hn, None)
    for k in range(num_layers):
        for i, d in enumerate(model.directions):
            np.testing.assert_allclose(final[f"layers.{k}.{d}.h"], h_n[k * len(model.directions) + i].numpy(),
                                       **TOL)
            if c_n is not None:
                np.testing.assert_allclose(final[f"layers.{k}.{d}.c"],
                                           c_n[k * len(model.directions) + i].numpy(), **TOL)
    np.testing.assert_allclose(model.predict(x), probs, **TOL)

    # torch -> numrnn -> torch: every weight exactly; biases exactly for GRU, as their sum for LSTM and RNN.
    back, back_linear = nr.interop.to_torch(model)
    theirs, again = dict(module.named_parameters()), dict(back.named_parameters())
    for name, value in again.items():
        if name.startswith("weight"):
            np.testing.assert_array_equal(value.detach().numpy(), theirs[name].detach().numpy(), err_msg=name)
        elif name.startswith("bias_ih"):
            hh = name.replace("bias_ih", "bias_hh")
            if config == "gru":
                np.testing.assert_array_equal(value.detach().numpy(), theirs[name].detach().numpy())
                np.testing.assert_array_equal(again[hh].detach().numpy(), theirs[hh].detach().numpy())
            else:
                total = theirs[name].detach().numpy() + theirs[hh].detach().numpy()
                np.testing.assert_array_equal(value.detach().numpy(), total)
                assert (again[hh] == 0).all()
    assert set(again) == set(theirs) and back.bias == bias
    np.testing.assert_array_equal(back_linear.weight.detach().numpy(), linear.weight.detach().numpy())
    np.testing.assert_array_equal(back_linear.bias.detach().numpy(), linear.bias.detach().numpy())
    # numrnn -> torch -> numrnn: every parameter exactly.
    np.testing.assert_array_equal(nr.interop.from_torch(back, head=model.head, linear=back_linear).params,
                                  model.params)


def test_from_torch_packed_lengths_and_heads():
    """Variable lengths against a PackedSequence; Tag, Regress and CTC heads; float64."""
    module = torch_module("lstm_proj", 2, True, True, True, dtype=torch.float64)
    lengths = np.array([T, 2, 4])
    x = np.random.default_rng(3).standard_normal((B, T, IN))
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.tensor(lengths), batch_first=True,
                                                     enforce_sorted=False)
    with torch.no_grad():
        out, _ = module(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    model = nr.interop.from_torch(module)                       # identity Regress head: last-step features
    assert model.dtype == np.float64 and model.head == nr.heads.Regress(6)
    ours, _ = model.forward(x, lengths)
    np.testing.assert_allclose(ours, out.numpy(), rtol=1e-12, atol=1e-12)
    rows = np.arange(B)
    features = np.concatenate([out.numpy()[rows, lengths - 1, :3], out.numpy()[:, 0, 3:]], axis=1)
    np.testing.assert_allclose(model.predict(x, lengths), features, rtol=1e-12, atol=1e-12)

    linear = torch.nn.Linear(6, 4, dtype=torch.float64)
    with torch.no_grad():
        logits = linear(out).numpy()
    tag = nr.interop.from_torch(module, head=nr.heads.Tag(4), linear=linear)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    valid = np.arange(T)[None, :] < lengths[:, None]
    np.testing.assert_allclose(tag.predict(x, lengths)[valid], probs[valid], rtol=1e-12, atol=1e-12)
    classify = nr.interop.from_torch(module, head=linear)       # a Linear as the head: Classify
    assert classify.head == nr.heads.Classify(4)
    last = np.exp(features @ linear.weight.detach().numpy().T + linear.bias.detach().numpy())
    np.testing.assert_allclose(classify.predict(x, lengths), last / last.sum(-1, keepdims=True),
                               rtol=1e-12, atol=1e-12)
    ctc = nr.interop.from_torch(module, head="ctc", linear=linear)
    assert ctc.head == nr.heads.CTC(3, blank=0)
    assert ctc.predict(x, lengths) == nr.ctc.greedy_decode(logits, lengths, blank=0)[0]


def test_to_torch_folds_forget_bias():
    """A numrnn LSTM with the default forget_bias=1.0 exports with it folded into bias_ih."""
    model = nr.SequenceModel(IN, [nr.LSTM(H), nr.LSTM(H)], head=nr.heads.Classify(3), seed=4)
    model.params[:] = 0.4 * np.random.default_rng(4).standard_normal(model.params.size)
    rnn, linear = nr.interop.to_torch(model)
    assert rnn.batch_first and not rnn.training and rnn.bias
    x = np.random.default_rng(5).standard_normal((B, T, IN)).astype(np.float32)
    with torch.no_grad():
        out, _ = rnn(torch.from_numpy(x))
        probs = torch.softmax(linear(out[:, -1]), dim=1).numpy()
    np.testing.assert_allclose(model.forward(x)[0], out.numpy(), **TOL)
    np.testing.assert_allclose(model.predict(x), probs, **TOL)


@pytest.mark.parametrize("layers, match", [
    ([nr.LSTM(4, layer_norm=True)], "layer_norm = True"),
    ([nr.LSTM(4, peepholes=True)], "peepholes = True"),
    ([nr.LSTM(4, cell_clip=1.0)], "cell_clip = 1.0"),
    ([nr.LSTM(4, proj=4)], "proj = 4"),
    ([nr.GRU(4)], "reset_after = False"),
    ([nr.GRU(4, reset_after=True), nr.GRU(3, reset_after=True)], "model.specs"),
    ([nr.LSTM(4)], "bias = False, but"),
])
def test_to_torch_refuses_what_torch_lacks(layers, match):
    with pytest.raises(ValueError, match=match):
        nr.interop.to_torch(nr.SequenceModel(IN, layers, head=nr.heads.Classify(2)), bias=False)


def test_from_torch_errors():
    lstm = torch.nn.LSTM(IN, H)
    with pytest.raises(ValueError, match="module must be a torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU, got Linear"):
        nr.interop.from_torch(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="linear has in_features = 5"):
        nr.interop.from_torch(lstm, head="classify", linear=torch.nn.Linear(5, 3))
    with pytest.raises(ValueError, match="linear has out_features = 3"):
        nr.interop.from_torch(lstm, head=nr.heads.Classify(4), linear=torch.nn.Linear(H, 3))
    with pytest.raises(ValueError, match="head must be one of"):
        nr.interop.from_torch(lstm, head="softmax", linear=torch.nn.Linear(H, 3))
    with pytest.raises(ValueError, match="takes its size from linear"):
        nr.interop.from_torch(lstm, head="classify")
    with pytest.raises(ValueError, match="linear needs head="):
        nr.interop.from_torch(lstm, linear=torch.nn.Linear(H, 3))
    with pytest.raises(ValueError, match="head is a torch.nn.Linear and linear is given too"):
        nr.interop.from_torch(lstm, head=torch.nn.Linear(H, 3), linear=torch.nn.Linear(H, 3))
    with pytest.raises(ValueError, match="module has dtype torch.float16"):
        nr.interop.from_torch(torch.nn.GRU(IN, H, dtype=torch.float16))
    model = nr.interop.from_torch(lstm, head=nr.heads.Classify(4))      # head without weights: initialised
    assert model.named_params()["head.W"].shape == (H, 4)


def test_import_numrnn_does_not_import_torch():
    code = "import sys, numrnn; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)

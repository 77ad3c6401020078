"""A float32 SequenceModel against PyTorch (float64) with the same weights copied in:
outputs, final states, loss and every gradient (parameters, inputs, initial state).

Mapping (docs/api.md): torch weight_ih is (G, F) = our W.T and weight_hh = our U.T.
LSTM (numrnn forget_bias=0): torch gate order i, f, g, o, ours i, j, f, o; our b goes
in bias_ih, zeros in bias_hh. LSTM with projection (proj_size < hidden in torch):
weight_hr = our P.T, and weight_hh = our U.T is (4H, proj). GRU (reset_after=True): torch r, z, n = ours r, u, c;
b_x = bias_ih, b_h = bias_hh. RNN: our b in bias_ih, zeros in bias_hh. Layers of
different sizes are separate torch modules, each run on a PackedSequence.
"""
import numpy as np
import pytest

import numrnn as nr
from conftest import HEADS, random_state, random_targets

torch = pytest.importorskip("torch")
F_ = torch.nn.functional

T, SIZES, IN = 4, (4, 3), 2

PROJ = {4: 3, 3: 2}     # hidden -> projection size (torch needs proj_size < hidden)

CELLS = {   # numrnn spec, torch module, its options (a dict, or a function of hidden)
    "lstm": (lambda h: nr.LSTM(h, forget_bias=0.0), torch.nn.LSTM, {}),
    "lstm_proj": (lambda h: nr.LSTM(h, forget_bias=0.0, proj=PROJ[h]), torch.nn.LSTM,
                  lambda h: {"proj_size": PROJ[h]}),
    "gru_ra": (lambda h: nr.GRU(h, reset_after=True), torch.nn.GRU, {}),
    "rnn_tanh": (lambda h: nr.RNN(h), torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (lambda h: nr.RNN(h, activation="relu"), torch.nn.RNN, {"nonlinearity": "relu"}),
}


def is_lstm(cell):
    return cell.startswith("lstm")


def gate_order(a, cell):
    """Reorder the gate blocks of the last axis between ours and torch's (an involution)."""
    if not is_lstm(cell):
        return a
    i, j, f, o = np.split(a, 4, axis=-1)
    return np.concatenate([i, f, j, o], axis=-1)


def t64(a):
    return torch.tensor(np.asarray(a, dtype=np.float64))


# ----------------------------------------------------------------------------- the torch twin

class TorchTwin:
    """The numrnn model rebuilt from torch modules, weights copied from model.params."""

    def __init__(self, model, cell):
        self.model, self.cell = model, cell
        self.dirs = ("fw", "bw") if model.bidirectional else ("fw",)
        _, module, options = CELLS[cell]
        p = model.named_params()
        self.rnns, size = [], model.input_size
        for k, spec in enumerate(model.specs):
            rnn = module(size, spec.hidden, batch_first=True, bidirectional=model.bidirectional,
                         dtype=torch.float64, **(options(spec.hidden) if callable(options) else options))
            for d in self.dirs:
                for torch_name, value in self.weights(p, f"layers.{k}.{d}.").items():
                    getattr(rnn, torch_name + ("_reverse" if d == "bw" else "")).data = t64(value)
            self.rnns.append(rnn)
            size = (getattr(spec, "proj", None) or spec.hidden) * len(self.dirs)
        self.head = torch.nn.Linear(size, model.head.n, dtype=torch.float64)
        self.head.weight.data, self.head.bias.data = t64(p["head.W"].T), t64(p["head.b"])

    def weights(self, p, prefix):
        """{torch name (layer 0): value} for one direction."""
        W, U = p[prefix + "W"], p[prefix + "U"]
        if self.cell == "gru_ra":
            b_ih, b_hh = p[prefix + "b_x"], p[prefix + "b_h"]
        else:
            b_ih, b_hh = p[prefix + "b"], np.zeros_like(p[prefix + "b"])
        weights = {"weight_ih_l0": gate_order(W, self.cell).T, "weight_hh_l0": gate_order(U, self.cell).T,
                   "bias_ih_l0": gate_order(b_ih, self.cell), "bias_hh_l0": gate_order(b_hh, self.cell)}
        if prefix + "P" in p:
            weights["weight_hr_l0"] = p[prefix + "P"].T
        return weights

    def grads(self):
        """{our parameter name: gradient} mapped back from the torch modules."""
        out = {}
        for k, rnn in enumerate(self.rnns):
            for d in self.dirs:
                grad = lambda name: getattr(rnn, name + ("_reverse" if d == "bw" else "")).grad.numpy()  # noqa
                prefix = f"layers.{k}.{d}."
                out[prefix + "W"] = gate_order(grad("weight_ih_l0").T, self.cell)
                out[prefix + "U"] = gate_order(grad("weight_hh_l0").T, self.cell)
                if self.cell == "gru_ra":
                    out[prefix + "b_x"], out[prefix + "b_h"] = grad("bias_ih_l0"), grad("bias_hh_l0")
                else:
                    out[prefix + "b"] = gate_order(grad("bias_ih_l0"), self.cell)
                if hasattr(rnn, "weight_hr_l0"):
                    out[prefix + "P"] = grad("weight_hr_l0").T
        out["head.W"], out["head.b"] = self.head.weight.grad.numpy().T, self.head.bias.grad.numpy()
        return out

    def initial_state(self, k, state):
        """Torch's hx for layer k, leaf tensors with gradients."""
        return {s: t64(np.stack([state[f"layers.{k}.{d}.{s}"] for d in self.dirs])).requires_grad_()
                for s in (("h", "c") if is_lstm(self.cell) else ("h",))}

    def forward(self, x, lengths, state):
        """Returns (top output (B, T, D), final state dict, leaf tensors of the initial state)."""
        h, final, leaves = x, {}, {}
        for k, rnn in enumerate(self.rnns):
            hx = self.initial_state(k, state) if state else None
            if hx:
                leaves.update({(k, s): v for s, v in hx.items()})
            packed = torch.nn.utils.rnn.pack_padded_sequence(h, torch.tensor(lengths), batch_first=True,
                                                             enforce_sorted=False)
            arg = None if hx is None else ((hx["h"], hx["c"]) if is_lstm(self.cell) else hx["h"])
            out, hn = rnn(packed, arg)
            h, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            hn = {"h": hn[0], "c": hn[1]} if is_lstm(self.cell) else {"h": hn}
            for s, v in hn.items():
                final.update({f"layers.{k}.{d}.{s}": v[i] for i, d in enumerate(self.dirs)})
        return h, final, leaves

    def loss(self, out, y, lengths):
        head, B = self.model.head, out.shape[0]
        if isinstance(head, nr.heads.Tag):
            steps, rows = np.nonzero(np.arange(out.shape[1])[:, None] < lengths[None, :])
            keep = steps >= head.delay
            steps, rows = steps[keep], rows[keep]
            logits = self.head(out[torch.tensor(rows), torch.tensor(steps)])
            return F_.cross_entropy(logits, torch.tensor(y[rows, steps - head.delay]))
        H = getattr(self.model.specs[-1], "proj", None) or self.model.specs[-1].hidden     # fw features
        last = out[torch.arange(B), torch.tensor(lengths - 1)]
        features = torch.cat([last[:, :H], out[:, 0, H:]], dim=1)
        if isinstance(head, nr.heads.Classify):
            return F_.cross_entropy(self.head(features), torch.tensor(y))
        return F_.mse_loss(self.head(features), t64(y))


# ----------------------------------------------------------------------------- the test

def assert_close(ours, theirs, name):
    """rtol 1e-4 for a float32 model, atol scaled to the tensor's magnitude."""
    theirs = np.asarray(theirs)
    atol = 1e-4 * max(np.abs(theirs).max(initial=0.0), 1e-3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=atol, err_msg=name)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("lengths_kind", ["full", "mixed"])
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_matches_torch(cell, bidirectional, head, lengths_kind, with_state):
    rng = np.random.default_rng(7)
    model = nr.SequenceModel(IN, layers=[CELLS[cell][0](h) for h in SIZES], bidirectional=bidirectional,
                             head=HEADS[head](), dtype=np.float32, seed=3)
    model.params[:] = 0.5 * rng.standard_normal(model.params.size)
    B = 4
    lengths = np.full(B, T) if lengths_kind == "full" else np.array([T, 1, 2, 3])   # torch packs lengths >= 1
    x = rng.standard_normal((B, T, IN)).astype(np.float32)
    y = random_targets(rng, model.head, B, T)
    state = {k: v.astype(np.float32) for k, v in random_state(rng, model, B).items()} if with_state else None

    twin = TorchTwin(model, cell)
    xt = t64(x).requires_grad_()
    out_t, final_t, leaves = twin.forward(xt, lengths, state)
    loss_t = twin.loss(out_t, y, lengths)
    loss_t.backward()

    out, final = model.forward(x, lengths=lengths, initial_state=state)
    assert_close(out, out_t.detach().numpy(), "out")
    for name, v in final_t.items():
        assert_close(final[name], v.detach().numpy(), f"final {name}")

    loss, dx, dstate = model.loss_and_grad(x, y, lengths=lengths, initial_state=state, input_grads=True)
    assert_close(loss, loss_t.item(), "loss")
    assert_close(dx, xt.grad.numpy(), "dx")
    ours = model.named_grads()
    for name, g in twin.grads().items():
        assert_close(ours[name], g, name)
    for (k, s), leaf in leaves.items():
        for i, d in enumerate(twin.dirs):
            name = f"layers.{k}.{d}.{s}"
            assert_close(dstate[name], leaf.grad.numpy()[i], f"dstate {name}")

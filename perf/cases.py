"""The timed cases: a plain spec each, the numrnn side, its weights in torch's names,
the data, and the check of numrnn against the reference.

Reference (STYLE.md point 15): with torch importable, numrnn's float32 results are
compared with PyTorch's float32 results on the same weights (mapping as in
tests/test_torch.py: torch gate order i, f, g, o vs ours i, j, f, o with
forget_bias=0; GRU reset_after=True is torch.nn.GRU with b_x = bias_ih, b_h =
bias_hh; our LSTM/RNN bias goes in bias_ih, zeros in bias_hh). Without torch, the
float32 model is compared with the float64 model of the same parameters.
"""
import types

import numpy as np

import numrnn as nr
from numrnn.kernels import optim as optim_kernels

from . import flops

# ----------------------------------------------------------------------------- case list

ROW = dict(B=128, T=28, F=28, H=128, head="classify", out=10)
PIXEL = dict(B=128, T=784, F=1, H=128, head="classify", out=10)


def _adding(T):
    return dict(B=64, T=T, F=2, H=128, head="regress", out=1)


def _train_cases():
    cases = []
    shapes = [("row", ROW, (1, 2)), ("pixel", PIXEL, (1,)), ("add200", _adding(200), (1,)),
              ("add1000", _adding(1000), (1,))]
    for shape_name, shape, layer_counts in shapes:
        for cell in ("lstm", "gru", "rnn"):
            for layers in layer_counts:
                if layers == 2 and cell != "lstm":
                    continue
                name = f"train {shape_name} {cell}" + ("x2" if layers == 2 else "")
                cases.append(dict(name=name, kind="train", cell=cell, layers=layers, **shape))
    return cases


CASES = _train_cases() + [
    dict(name="infer b1 T28 lstm", kind="infer", B=1, T=28, F=28, H=128, out=10),
    dict(name="infer b1 stream step lstm", kind="infer", B=1, T=1, F=28, H=128, out=10, streaming=True),
    dict(name="ctc T100 B32 C28 S20", kind="ctc", T=100, B=32, C=28, S=20),
    dict(name="ctc T400 B16 C80 S60", kind="ctc", T=400, B=16, C=80, S=60),
    dict(name="adam 1M", kind="adam", N=1_000_000),
    dict(name="adam 10M", kind="adam", N=10_000_000),
]

QUICK = ("train row lstm", "train row gru", "train row rnn", "infer b1 T28 lstm",
         "infer b1 stream step lstm", "ctc T100 B32 C28 S20", "adam 1M")


def step_flops(spec):
    """GEMM FLOPs of a training step (perf.flops), None for other kinds."""
    if spec["kind"] != "train":
        return None
    return flops.step_flops(spec["cell"], spec["T"], spec["B"], spec["F"], spec["H"], spec["layers"], spec["out"])


# ----------------------------------------------------------------------------- data

def make_data(spec, seed=0):
    rng = np.random.default_rng(seed)
    kind = spec["kind"]
    if kind in ("train", "infer"):
        B, T, F = spec["B"], spec["T"], spec["F"]
        if spec.get("head") == "regress":       # the adding problem
            x = np.zeros((B, T, F), np.float32)
            x[:, :, 0] = rng.random((B, T))
            first, second = rng.integers(0, T // 2, B), rng.integers(T // 2, T, B)
            x[np.arange(B), first, 1] = 1.0
            x[np.arange(B), second, 1] = 1.0
            y = (x[np.arange(B), first, 0] + x[np.arange(B), second, 0])[:, None].astype(np.float32)
        else:                                   # MNIST-like: sparse intensities in [0, 1]
            x = ((rng.random((B, T, F)) < 0.2) * rng.random((B, T, F))).astype(np.float32)
            y = rng.integers(0, spec["out"], B)
        return {"x": x, "y": y}
    if kind == "ctc":
        B, T, C, S = spec["B"], spec["T"], spec["C"], spec["S"]
        return {"logits": rng.standard_normal((B, T, C)).astype(np.float32),
                "labels": rng.integers(1, C, (B, S)).astype(np.int64),
                "logit_lengths": np.full(B, T, np.int64), "label_lengths": np.full(B, S, np.int64)}
    if kind == "adam":
        N = spec["N"]
        return {"params": rng.standard_normal(N).astype(np.float32),
                "grads": (rng.standard_normal(N) * 1e-2).astype(np.float32)}
    raise ValueError(f"unknown case kind {kind!r}")


# ----------------------------------------------------------------------------- models and weights

def cell_spec(cell, H):
    if cell == "lstm":
        return nr.LSTM(H, forget_bias=0.0)
    if cell == "gru":
        return nr.GRU(H, reset_after=True)
    return nr.RNN(H)


def build_model(spec, dtype=np.float32):
    head = nr.heads.Classify(spec["out"]) if spec.get("head", "classify") == "classify" else nr.heads.Regress(spec["out"])
    cell = spec.get("cell", "lstm")
    return nr.SequenceModel(spec["F"], [cell_spec(cell, spec["H"]) for _ in range(spec.get("layers", 1))],
                            head=head, dtype=dtype, seed=0)


def _gate_order(a, cell):
    """Our i, j, f, o blocks <-> torch's i, f, g, o (an involution); other cells unchanged."""
    if cell != "lstm":
        return a
    i, j, f, o = np.split(a, 4, axis=-1)
    return np.concatenate([i, f, j, o], axis=-1)


def to_torch_names(named, cell, layers):
    """{torch name: array} from numrnn's {name: array} (parameters or gradients).
    LSTM and RNN have one bias, which maps to bias_ih; the callers fill bias_hh
    (zeros for parameters, bias_ih's gradient for gradients)."""
    out = {}
    for k in range(layers):
        p = f"layers.{k}.fw."
        out[f"rnn.weight_ih_l{k}"] = _gate_order(named[p + "W"], cell).T.copy()
        out[f"rnn.weight_hh_l{k}"] = _gate_order(named[p + "U"], cell).T.copy()
        if cell == "gru":
            out[f"rnn.bias_ih_l{k}"], out[f"rnn.bias_hh_l{k}"] = named[p + "b_x"].copy(), named[p + "b_h"].copy()
        else:
            out[f"rnn.bias_ih_l{k}"] = _gate_order(named[p + "b"], cell).copy()
    out["head.weight"], out["head.bias"] = named["head.W"].T.copy(), named["head.b"].copy()
    return out


def torch_weights(model, cell, layers):
    w = to_torch_names(model.named_params(), cell, layers)
    if cell != "gru":
        for k in range(layers):
            w[f"rnn.bias_hh_l{k}"] = np.zeros_like(w[f"rnn.bias_ih_l{k}"])
    return w


def torch_grads(model, cell, layers):
    g = to_torch_names(model.named_grads(), cell, layers)
    if cell != "gru":                     # d/d bias_hh = d/d bias_ih when both are added to z
        for k in range(layers):
            g[f"rnn.bias_hh_l{k}"] = g[f"rnn.bias_ih_l{k}"]
    return g


# ----------------------------------------------------------------------------- the numrnn side

class NumrnnCase:
    """``step()`` is the timed call; ``check()`` the results compared with the
    reference (torch names where torch has the computation); ``weights`` the
    parameters in torch's names (None when there are none)."""

    weights = None

    def __init__(self, spec, data):
        self.spec, self.data = spec, data
        kind = spec["kind"]
        if kind in ("train", "infer"):
            cell, layers = spec.get("cell", "lstm"), spec.get("layers", 1)
            self.model = build_model(spec)
            self.weights = torch_weights(self.model, cell, layers)
        if kind == "train":
            self.opt = nr.Adam(self.model, lr=1e-3)
        if spec.get("streaming"):
            self.stream = self.model.stream(batch_size=1)
        if kind == "adam":
            self.flat = types.SimpleNamespace(params=data["params"].copy(), grads=data["grads"].copy())
            self.opt = nr.Adam(self.flat, lr=1e-3)

    def step(self):
        kind, d = self.spec["kind"], self.data
        if kind == "train":
            self.model.loss_and_grad(d["x"], d["y"])
            self.opt.step()
        elif kind == "infer" and self.spec.get("streaming"):
            self.stream.step(d["x"][:, 0])
        elif kind == "infer":
            self.model.predict(d["x"])
        elif kind == "ctc":
            nr.ctc.loss_and_grad(d["logits"], d["labels"], d["logit_lengths"], d["label_lengths"])
        else:
            self.opt.step()

    def check(self, dtype=np.float32, torch_names=True):
        """Results of one un-timed call (no optimiser step for training; one Adam step
        on copies for Adam), in ``dtype``."""
        spec, d = self.spec, self.data
        kind = spec["kind"]
        if kind in ("train", "infer"):
            model = self.model
            if dtype != np.float32:
                model = build_model(spec, dtype)
                model.params[:] = self.model.params
            x = d["x"].astype(dtype)
            if kind == "infer" and spec.get("streaming"):
                return {"probs": model.stream(batch_size=1).step(x[:, 0])}
            if kind == "infer":
                return {"probs": np.asarray(model.predict(x))}
            loss = model.loss_and_grad(x, d["y"])
            cell, layers = spec["cell"], spec["layers"]
            out = {"loss": np.array(loss)}
            out.update(torch_grads(model, cell, layers) if torch_names else model.named_grads())
            return {k: np.array(v) for k, v in out.items()}
        if kind == "ctc":
            loss, dlogits = nr.ctc.loss_and_grad(d["logits"].astype(dtype), d["labels"], d["logit_lengths"],
                                                 d["label_lengths"])
            return {"loss": np.asarray(loss), "dlogits": np.asarray(dlogits)}
        p = d["params"].astype(dtype)
        m, v = np.zeros_like(p), np.zeros_like(p)
        optim_kernels.adam_step(p, m, v, d["grads"].astype(dtype), 1.0, 1e-3, 0.9, 0.999, 1e-8, 0.0, True, 1)
        return {"params": p}


TOLERANCE = {"train": 2e-3, "infer": 1e-4, "ctc": 1e-4, "adam": 1e-5}
# PyTorch's own float32 results where they are less accurate than numrnn's: its float32
# CTC gradient is off by about 1.2e-3 of the largest value at T=400 (numrnn's float32
# gradient is within 3e-8 of torch's float64 one), so CTC is also checked against
# torch in float64 (see float64_reference) at TOLERANCE, and against torch float32 at this.
TORCH_FLOAT32_TOLERANCE = {"ctc": 5e-3}


def float64_reference(spec, data):
    """Data in float64 for a torch reference computed in float64 (CTC), else None."""
    if spec["kind"] != "ctc":
        return None
    return {**data, "logits": data["logits"].astype(np.float64)}


def compare_results(spec, ours, reference, tol=None):
    """(worst relative error, its key): per array, max |ours - ref| / max(|ref|)
    (the loss relative to itself). Raises ValueError above ``tol`` (default: the
    case's TOLERANCE)."""
    tol = TOLERANCE[spec["kind"]] if tol is None else tol
    worst, where = 0.0, None
    for key, ref in reference.items():
        if key not in ours:
            continue
        ref = np.asarray(ref, np.float64)
        mine = np.asarray(ours[key], np.float64)
        if mine.shape != ref.shape:
            raise ValueError(f"{spec['name']}: {key} has shape {mine.shape}, reference {ref.shape}")
        scale = max(float(np.abs(ref).max(initial=0.0)), 1e-12)
        err = float(np.abs(mine - ref).max(initial=0.0)) / scale
        if not np.isfinite(err) or err > tol:
            raise ValueError(f"{spec['name']}: {key} differs from the reference by {err:.2e} "
                             f"(relative to its largest value; tolerance {tol:.0e})")
        if err >= worst:
            worst, where = err, key
    if where is None:
        raise ValueError(f"{spec['name']}: nothing in common with the reference to compare")
    return worst, where

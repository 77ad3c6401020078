"""The PyTorch side of each benchmark case, built from a plain spec, weights and data.

Imported by the suite (PyTorch as users run it, in the suite's own process) and by
:mod:`perf.worker` (PyTorch at its best, in a process of its own). It imports
torch and numpy only, never numrnn, so that the worker's environment is that of a
plain PyTorch program.

``build(spec, weights, data, variant)`` returns a :class:`TorchCase` whose
``check()`` computes the reference outputs once (no optimiser step) and whose
``step()`` is the timed call. ``variant`` is "default" or "best"; "best" uses
``torch.optim.Adam(fused=True)`` where there is an optimiser (flush-to-zero is the
worker's business: it must be set before the thread pool starts).

Weights use torch's own names (``rnn.weight_ih_l0``, ``head.weight``, ...); the
suite maps numrnn's parameters to them.
"""
import numpy as np
import torch

F_ = torch.nn.functional

MODULES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


def _tensor(a):
    return torch.from_numpy(np.ascontiguousarray(a))


class TorchCase:
    def check(self):
        """Reference results: a dict of numpy arrays."""
        raise NotImplementedError

    def step(self):
        raise NotImplementedError


class Train(TorchCase):
    """Forward + loss + backward + Adam step of an nn.LSTM / GRU / RNN and a Linear head
    on the last step's output (CrossEntropy for "classify", MSE for "regress")."""

    def __init__(self, spec, weights, data, variant):
        net = torch.nn.Module()
        net.rnn = MODULES[spec["cell"]](spec["F"], spec["H"], num_layers=spec["layers"], batch_first=True)
        net.head = torch.nn.Linear(spec["H"], spec["out"])
        net.load_state_dict({k: _tensor(v) for k, v in weights.items()})
        self.net = net
        self.x = _tensor(data["x"])                                    # (B, T, F)
        self.classify = spec["head"] == "classify"
        self.y = torch.from_numpy(data["y"].astype(np.int64 if self.classify else np.float32))
        self.opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=(variant == "best"))

    def _loss(self):
        out, _ = self.net.rnn(self.x)
        pred = self.net.head(out[:, -1])
        return F_.cross_entropy(pred, self.y) if self.classify else F_.mse_loss(pred, self.y)

    def check(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss()
        loss.backward()
        out = {"loss": np.array(loss.item())}
        out.update({name: p.grad.numpy().copy() for name, p in self.net.named_parameters()})
        self.opt.zero_grad(set_to_none=True)
        return out

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        self._loss().backward()
        self.opt.step()


class Infer(TorchCase):
    """Batch-1 inference, probabilities out. T > 1: nn.LSTM over the sequence, then
    Linear and softmax. ``spec["streaming"]``: one nn.LSTMCell call from a given
    state, then Linear and softmax (a streaming step)."""

    def __init__(self, spec, weights, data, variant):
        self.streaming = spec.get("streaming", False)
        H = spec["H"]
        if self.streaming:
            self.rnn = torch.nn.LSTMCell(spec["F"], H)
            self.rnn.load_state_dict({k[len("rnn."):-len("_l0")]: _tensor(v)
                                      for k, v in weights.items() if k.startswith("rnn.")})
            self.state = (torch.zeros(1, H), torch.zeros(1, H))
            self.x = _tensor(data["x"][:, 0])                          # (1, F)
        else:
            self.rnn = torch.nn.LSTM(spec["F"], H, batch_first=True)
            self.rnn.load_state_dict({k[len("rnn."):]: _tensor(v) for k, v in weights.items()
                                      if k.startswith("rnn.")})
            self.x = _tensor(data["x"])                                # (1, T, F)
        self.head = torch.nn.Linear(H, spec["out"])
        self.head.load_state_dict({k[len("head."):]: _tensor(v) for k, v in weights.items()
                                   if k.startswith("head.")})

    def _predict(self):
        with torch.inference_mode():
            if self.streaming:
                h, _ = self.rnn(self.x, self.state)
            else:
                out, _ = self.rnn(self.x)
                h = out[:, -1]
            return torch.softmax(self.head(h), dim=-1)

    def check(self):
        return {"probs": self._predict().numpy().copy()}

    def step(self):
        self._predict()


class CTC(TorchCase):
    """``ctc_loss(log_softmax(logits))`` forward + backward to the logits (reduction
    "sum", so that the gradient of sequence b is d loss[b] / d logits[b], the
    quantity numrnn returns)."""

    def __init__(self, spec, weights, data, variant):
        self.logits = _tensor(data["logits"]).requires_grad_()       # (B, T, C)
        self.labels = torch.from_numpy(data["labels"].astype(np.int64))
        self.logit_lengths = torch.from_numpy(data["logit_lengths"].astype(np.int64))
        self.label_lengths = torch.from_numpy(data["label_lengths"].astype(np.int64))

    def _loss(self, reduction):
        log_probs = F_.log_softmax(self.logits.transpose(0, 1), dim=-1)   # (T, B, C)
        return F_.ctc_loss(log_probs, self.labels, self.logit_lengths, self.label_lengths, blank=0,
                           reduction=reduction)

    def check(self):
        per_sequence = self._loss("none").detach().numpy().copy()
        self.logits.grad = None
        self._loss("sum").backward()
        out = {"loss": per_sequence, "dlogits": self.logits.grad.numpy().copy()}
        self.logits.grad = None
        return out

    def step(self):
        self.logits.grad = None
        self._loss("sum").backward()


class Adam(TorchCase):
    """One ``torch.optim.Adam`` step on a single flat parameter of N elements."""

    def __init__(self, spec, weights, data, variant):
        self.param = torch.nn.Parameter(_tensor(data["params"].copy()))
        self.param.grad = _tensor(data["grads"].copy())
        self.opt = torch.optim.Adam([self.param], lr=1e-3, fused=(variant == "best"))

    def check(self):
        self.opt.step()
        return {"params": self.param.detach().numpy().copy()}

    def step(self):
        self.opt.step()


KINDS = {"train": Train, "infer": Infer, "ctc": CTC, "adam": Adam}


def build(spec, weights, data, variant):
    return KINDS[spec["kind"]](spec, weights, data, variant)


def denormal_probe(n=1 << 20):
    """Fraction of float32 subnormal inputs that a parallel multiply returns as 0:
    1.0 when every thread of torch's pool flushes denormals, 0.0 when none does."""
    x = torch.from_numpy(np.full(n, 1e-39, np.float32))
    return float((x * 1.0 == 0).float().mean().item())

"""PyTorch interoperability: numrnn models from torch.nn.RNN / LSTM / GRU and back.

```python
model = nr.interop.from_torch(lstm)                                  # recurrent layers only
model = nr.interop.from_torch(lstm, head=fc)                         # a Classify head from an nn.Linear
model = nr.interop.from_torch(lstm, head="regress", linear=fc)       # another head kind
model = nr.interop.from_torch(gru, head=nr.heads.CTC(10, blank=10), linear=fc)
rnn, linear = nr.interop.to_torch(model)                             # batch_first=True, eval mode
```

torch is imported inside these functions only; numrnn never depends on it.

Conventions (numrnn is row-vector, ``z = x W + h U + b``; torch is ``W_ih x + b_ih + W_hh h + b_hh``):

- Weights: our ``W`` (F, G) is ``weight_ih_l{k}.T`` and ``U`` (R, G) is ``weight_hh_l{k}.T``;
  the backward direction is the ``_reverse`` set. Layer k > 0 reads the [fw, bw] concatenation
  in both libraries.
- LSTM gate order: torch i, f, g, o; ours i, j, f, o (j is torch's g): blocks 1 and 2 swap.
  Bias: our ``b`` = ``bias_ih + bias_hh`` (one bias; ``to_torch`` writes it to ``bias_ih`` and
  zeros to ``bias_hh``). ``from_torch`` gives ``forget_bias=0`` (torch has none);
  ``to_torch`` folds a non-zero ``forget_bias`` into the f block of ``bias_ih``.
  Projection (``proj_size``): ``weight_hr_l{k}`` = ``P.T``, and ``weight_hh`` is (4H, proj).
- GRU: torch's GRU is our ``GRU(reset_after=True)`` with the same gate order (torch r, z, n =
  ours r, u, c; ``h = u h + (1 - u) c`` = torch's ``(1 - z) n + z h``); ``b_x`` = ``bias_ih``
  and ``b_h`` = ``bias_hh`` (kept apart: the candidate's b_h sits inside ``r *``).
- RNN: ``nonlinearity`` tanh / relu is our ``activation``; ``b`` = ``bias_ih + bias_hh``.
- ``bias=False`` gives zero biases. ``batch_first`` does not change the weights: numrnn takes
  (B, T, F), or (T, B, F) with ``time_major=True``. torch's ``dropout`` (between layers, in
  training only) is not carried over in either direction; neither is ``nr.Dropout``.
- Head: ``head.W`` (D, n) = ``linear.weight.T``, ``head.b`` = ``linear.bias`` (zeros when the
  Linear has no bias). numrnn's Classify and Regress read the top output at each sequence's
  last step (a bidirectional model: forward half at ``lengths[b] - 1``, backward half at step 0,
  where it has read the whole sequence); Tag and CTC read every step.

Round trips: ``from_torch(to_torch(model))`` gives back every parameter exactly (for a model
``to_torch`` accepts, with ``forget_bias=0``); ``to_torch(from_torch(module))`` gives back every
weight exactly, and the biases exactly for GRU; for LSTM and RNN it gives ``bias_ih`` = the sum
``bias_ih + bias_hh`` of the original (computed in its dtype) and ``bias_hh`` = 0.
"""
import numpy as np

from . import cells, heads
from .model import SequenceModel

__all__ = ["from_torch", "to_torch"]

_HEAD_KINDS = {"classify": heads.Classify, "tag": heads.Tag, "regress": heads.Regress, "ctc": heads.CTC}


def _lstm_order(a):
    """Swap gate blocks 1 and 2 of the first axis (torch i, f, g, o <-> ours i, j, f, o): an involution."""
    i, f, g, o = np.split(a, 4, axis=0)
    return np.concatenate([i, g, f, o], axis=0)


def _numpy(tensor):
    return tensor.detach().cpu().numpy().copy()


def _kind(module):
    """'rnn', 'lstm' or 'gru' for a torch.nn.RNN / LSTM / GRU, else ValueError."""
    import torch

    for cls, name in ((torch.nn.LSTM, "lstm"), (torch.nn.GRU, "gru"), (torch.nn.RNN, "rnn")):
        if isinstance(module, cls):
            return name
    raise ValueError(f"module must be a torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU, got {type(module).__name__}")


def _head_spec(head, linear, D):
    """(head spec, (W, b) or None) from from_torch's head and linear arguments."""
    import torch

    if isinstance(head, torch.nn.Linear):          # from_torch(lstm, head=fc): a Classify head
        if linear is not None:
            raise ValueError("head is a torch.nn.Linear and linear is given too; give one of them")
        head, linear = "classify", head
    if linear is not None:
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"linear must be a torch.nn.Linear or None, got {type(linear).__name__}")
        if linear.in_features != D:
            raise ValueError(f"linear has in_features = {linear.in_features}, but the recurrent module's "
                             f"output has {D} features (hidden or proj_size, times 2 if bidirectional)")
        W = _numpy(linear.weight).T
        b = _numpy(linear.bias) if linear.bias is not None else np.zeros(linear.out_features, W.dtype)
        weights = (W, b)
    else:
        weights = None
    if head is None:
        if linear is not None:
            raise ValueError("linear needs head=: a head kind ('classify', 'tag', 'regress', 'ctc') or a "
                             "numrnn head spec such as nr.heads.Classify(n)")
        return heads.Regress(D), (np.eye(D), np.zeros(D))
    if isinstance(head, str):
        if head not in _HEAD_KINDS:
            raise ValueError(f"head must be one of {sorted(_HEAD_KINDS)} or a numrnn head spec, got {head!r}")
        if linear is None:
            raise ValueError(f"head={head!r} takes its size from linear; give linear= or a head spec "
                             f"such as nr.heads.Classify(n)")
        n = linear.out_features
        if head == "ctc" and n < 2:
            raise ValueError(f"head='ctc' needs linear.out_features >= 2 (n_labels + 1 classes), got {n}")
        head = heads.CTC(n - 1) if head == "ctc" else _HEAD_KINDS[head](n)
    elif not isinstance(head, tuple(heads.HEADS.values())):
        raise ValueError(f"head must be None, a head kind {sorted(_HEAD_KINDS)} or a numrnn head spec, "
                         f"got {head!r}")
    if weights is not None and weights[0].shape[1] != head.n:
        raise ValueError(f"linear has out_features = {weights[0].shape[1]}, but {head} has {head.n} outputs")
    return head, weights


def from_torch(module, head=None, linear=None):
    """A ``SequenceModel`` with the weights of a torch recurrent module (and head).

    Args:
        module: ``torch.nn.RNN`` (tanh or relu), ``torch.nn.LSTM`` (any ``proj_size``) or
            ``torch.nn.GRU``; any ``num_layers``, ``bidirectional``, ``batch_first``, ``bias``.
            float32 or float64 (the model's dtype).
        head: the model's head: a ``torch.nn.Linear`` (a Classify head with its weights), a numrnn
            head spec (``nr.heads.Classify(10)``, ``Tag(n, delay)``,
            ``Regress(k)``, ``CTC(n_labels, blank)``) or a kind, ``"classify"``, ``"tag"``,
            ``"regress"`` or ``"ctc"`` (CTC with blank 0), sized by ``linear.out_features``.
            None (with no ``linear``): ``Regress(D)`` with an identity ``W`` and zero ``b``, so that
            ``predict`` returns the top output at each sequence's last step.
        linear: ``torch.nn.Linear(D, n)`` copied into the head; None leaves a head spec's
            parameters as numrnn initialises them (seed 0).

    Returns:
        A ``SequenceModel`` whose ``forward`` gives torch's outputs and final states (LSTM:
        ``h_n`` is our ``h``, ``c_n`` our ``c``) up to rounding. See the module docstring for
        the weight mapping.
    """
    import torch

    kind = _kind(module)
    dtype = module.weight_ih_l0.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"module has dtype {dtype}; numrnn models are float32 or float64")
    dtype = np.float32 if dtype == torch.float32 else np.float64
    H, proj = module.hidden_size, getattr(module, "proj_size", 0) or None
    if kind == "lstm":
        spec = cells.LSTM(H, forget_bias=0.0, proj=proj)
    elif kind == "gru":
        spec = cells.GRU(H, reset_after=True)
    else:
        spec = cells.RNN(H, activation="relu" if module.nonlinearity == "relu" else "tanh")
    dirs = ("fw", "bw") if module.bidirectional else ("fw",)
    D = spec.output_size * len(dirs)
    head_spec, head_weights = _head_spec(head, linear, D)
    model = SequenceModel(module.input_size, [spec] * module.num_layers, bidirectional=module.bidirectional,
                          head=head_spec, dtype=dtype)
    params = model.named_params()
    for k in range(module.num_layers):
        for d in dirs:
            suffix = f"_l{k}" + ("_reverse" if d == "bw" else "")
            w_ih, w_hh = _numpy(getattr(module, "weight_ih" + suffix)), _numpy(getattr(module, "weight_hh" + suffix))
            if module.bias:
                b_ih, b_hh = _numpy(getattr(module, "bias_ih" + suffix)), _numpy(getattr(module, "bias_hh" + suffix))
            else:
                b_ih = b_hh = np.zeros(w_ih.shape[0], dtype)
            p = {name[len(f"layers.{k}.{d}."):]: v for name, v in params.items()
                 if name.startswith(f"layers.{k}.{d}.")}
            if kind == "lstm":
                p["W"][:] = _lstm_order(w_ih).T
                p["U"][:] = _lstm_order(w_hh).T
                p["b"][:] = _lstm_order(b_ih + b_hh)
                if proj:
                    p["P"][:] = _numpy(getattr(module, "weight_hr" + suffix)).T
            elif kind == "gru":
                p["W"][:], p["U"][:], p["b_x"][:], p["b_h"][:] = w_ih.T, w_hh.T, b_ih, b_hh
            else:
                p["W"][:], p["U"][:], p["b"][:] = w_ih.T, w_hh.T, b_ih + b_hh
    if head_weights is not None:
        params["head.W"][:], params["head.b"][:] = head_weights
    return model


def _recurrent_biases_zero(model):
    spec = model.specs[0]
    if isinstance(spec, cells.LSTM) and spec.forget_bias != 0:
        return False
    return all(not v.any() for name, v in model.named_params().items()
               if name.startswith("layers.") and name.rsplit(".", 1)[1] in ("b", "b_x", "b_h"))


def _torch_spec(model, bias):
    """(torch module class, its keyword arguments) for a model whose layers torch has, else ValueError."""
    import torch

    specs = model.specs
    if any(s != specs[0] for s in specs):
        raise ValueError(f"model.specs = {specs}: torch's recurrent modules need one cell with the same "
                         f"options and size in every layer")
    spec = specs[0]
    kwargs = {"input_size": model.input_size, "hidden_size": spec.hidden, "num_layers": len(specs),
              "batch_first": True, "bidirectional": model.bidirectional}
    if isinstance(spec, cells.LSTM):
        for option, off in (("peepholes", False), ("cell_clip", None), ("proj_clip", None), ("layer_norm", False)):
            if getattr(spec, option) != off:
                raise ValueError(f"{option} = {getattr(spec, option)!r}: torch.nn.LSTM has no such option "
                                 f"(it has forget_bias, by folding, and proj < hidden)")
        if spec.proj is not None:
            if spec.proj >= spec.hidden:
                raise ValueError(f"proj = {spec.proj}: torch.nn.LSTM needs proj_size < hidden_size = {spec.hidden}")
            kwargs["proj_size"] = spec.proj
        cls = torch.nn.LSTM
    elif isinstance(spec, cells.GRU):
        if not spec.reset_after:
            raise ValueError("reset_after = False: the TF GRUCell form (reset gate before U_c) has no torch "
                             "module; torch.nn.GRU is nr.GRU(hidden, reset_after=True)")
        cls = torch.nn.GRU
    else:
        cls = torch.nn.RNN
        kwargs["nonlinearity"] = spec.activation
    zero = _recurrent_biases_zero(model)
    if bias is None:
        bias = not zero
    elif not isinstance(bias, bool):
        raise ValueError(f"bias must be None, True or False, got {bias!r}")
    elif not bias and not zero:
        raise ValueError("bias = False, but the model has non-zero recurrent biases (or forget_bias)")
    kwargs["bias"] = bias
    return cls, kwargs


def to_torch(model, bias=None):
    """``(rnn, linear)``: torch modules with the weights of ``model``.

    Args:
        model: a ``SequenceModel`` whose layers all have one spec that torch has:
            ``nr.RNN``; ``nr.LSTM`` without peepholes, clipping or layer norm (with
            ``proj < hidden``; a non-zero ``forget_bias`` is folded into ``bias_ih``);
            ``nr.GRU(reset_after=True)``.
        bias: the torch module's ``bias``; None: False when every recurrent bias (and
            ``forget_bias``) is 0, else True.

    Returns:
        ``rnn``: ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` with ``batch_first=True``, in eval mode,
        in the model's dtype. ``linear``: ``torch.nn.Linear(D, n)`` holding the head's W and b
        (the head's kind, e.g. Classify's softmax or CTC's blank, is not part of it).

    Raises:
        ValueError naming the option torch lacks.
    """
    import torch

    cls, kwargs = _torch_spec(model, bias)
    tdtype = torch.float32 if model.dtype == np.float32 else torch.float64
    rnn = cls(**kwargs, dtype=tdtype)
    params = model.named_params()
    spec = model.specs[0]

    def put(name, value):
        getattr(rnn, name).copy_(torch.from_numpy(np.ascontiguousarray(value)))

    def skip_bias(name, value, put=put):
        if not name.startswith("bias"):
            put(name, value)

    with torch.no_grad():
        for k in range(len(model.specs)):
            for d in model.directions:
                suffix = f"_l{k}" + ("_reverse" if d == "bw" else "")
                p = {name[len(f"layers.{k}.{d}."):]: v for name, v in params.items()
                     if name.startswith(f"layers.{k}.{d}.")}
                if not kwargs["bias"]:
                    put = skip_bias
                if isinstance(spec, cells.LSTM):
                    b = p["b"].copy()
                    H = spec.hidden
                    b[2 * H:3 * H] += model.dtype.type(spec.forget_bias)      # our f block
                    put("weight_ih" + suffix, _lstm_order(p["W"].T))
                    put("weight_hh" + suffix, _lstm_order(p["U"].T))
                    put("bias_ih" + suffix, _lstm_order(b))
                    put("bias_hh" + suffix, np.zeros_like(b))
                    if spec.proj:
                        put("weight_hr" + suffix, p["P"].T)
                elif isinstance(spec, cells.GRU):
                    put("weight_ih" + suffix, p["W"].T)
                    put("weight_hh" + suffix, p["U"].T)
                    put("bias_ih" + suffix, p["b_x"])
                    put("bias_hh" + suffix, p["b_h"])
                else:
                    put("weight_ih" + suffix, p["W"].T)
                    put("weight_hh" + suffix, p["U"].T)
                    put("bias_ih" + suffix, p["b"])
                    put("bias_hh" + suffix, np.zeros_like(p["b"]))
        W, b = params["head.W"], params["head.b"]
        linear = torch.nn.Linear(W.shape[0], W.shape[1], dtype=tdtype)
        linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
        linear.bias.copy_(torch.from_numpy(b.copy()))
    return rnn.eval(), linear.eval()

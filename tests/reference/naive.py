"""A slow, obvious NumPy reference for SequenceModel (DESIGN.md §2-§4, docs/api.md).

Nothing here comes from numrnn: the cells are written straight from the
equations, one step at a time, batch-major, in whatever dtype the parameters
have. Specs and heads are read only through their attributes (type name,
``hidden``, ``activation``, ``forget_bias``, ``reset_after``, ``n``, ``delay``).

Parameters are the dict of ``model.named_params()``: ``layers.{k}.{fw|bw}.{name}``
and ``head.W``, ``head.b``. States are dicts ``layers.{k}.{fw|bw}.{h|c}`` -> (B, H).
"""
import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def relu(z):
    return np.maximum(z, 0.0)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z):
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- cells
# Each step takes one input row block x (B, F), the previous state dict and the
# parameters of one direction, and returns the new state dict; its "h" is the output.
# ``trace``, when a list, receives the pre-activations that go through a ReLU.

def rnn_step(spec, p, x, state, trace=None):
    z = x @ p["W"] + state["h"] @ p["U"] + p["b"]
    if spec.activation == "relu":
        if trace is not None:
            trace.append(z)
        return {"h": relu(z)}
    return {"h": np.tanh(z)}


def lstm_step(spec, p, x, state, trace=None):
    """TF LSTMCell, gate order i, j, f, o."""
    z = x @ p["W"] + state["h"] @ p["U"] + p["b"]
    i, j, f, o = np.split(z, 4, axis=1)
    c = sigmoid(f + spec.forget_bias) * state["c"] + sigmoid(i) * np.tanh(j)
    return {"c": c, "h": sigmoid(o) * np.tanh(c)}


def gru_step(spec, p, x, state, trace=None):
    """TF GRUCell (reset_after=False): u is the keep gate."""
    h = state["h"]
    r, u = np.split(sigmoid(x @ p["W_g"] + h @ p["U_g"] + p["b_g"]), 2, axis=1)
    c = np.tanh(x @ p["W_c"] + (r * h) @ p["U_c"] + p["b_c"])
    return {"h": u * h + (1.0 - u) * c}


def gru_reset_after_step(spec, p, x, state, trace=None):
    """PyTorch / cuDNN GRU (reset_after=True), gate order r, u, c."""
    h = state["h"]
    a_r, a_u, a_c = np.split(x @ p["W"] + p["b_x"], 3, axis=1)
    q_r, q_u, q_c = np.split(h @ p["U"] + p["b_h"], 3, axis=1)
    r, u = sigmoid(a_r + q_r), sigmoid(a_u + q_u)
    c = np.tanh(a_c + r * q_c)
    return {"h": u * h + (1.0 - u) * c}


def cell_of(spec):
    """(step function, state names) for a layer spec."""
    kind = type(spec).__name__
    if kind == "RNN":
        return rnn_step, ("h",)
    if kind == "LSTM":
        return lstm_step, ("c", "h")
    if kind == "GRU":
        return (gru_reset_after_step if spec.reset_after else gru_step), ("h",)
    raise ValueError(f"unknown spec {spec!r}")


# ----------------------------------------------------------------------------- layers

def reverse_within_lengths(x, lengths):
    """x (B, T, F): each sequence reversed within its own length; padding 0."""
    out = np.zeros_like(x)
    for b, n in enumerate(lengths):
        out[b, :n] = x[b, :n][::-1]
    return out


def run_direction(spec, p, x, lengths, state, trace=None):
    """One direction over a batch-major sequence x (B, T, F).

    Returns (outputs (B, T, H), final state). A step at t >= lengths[b] outputs 0
    and leaves sequence b's state unchanged.
    """
    step, _ = cell_of(spec)
    B, T, _ = x.shape
    out = np.zeros((B, T, spec.hidden), dtype=x.dtype)
    for t in range(T):
        valid = (t < lengths)[:, None]
        step_trace = [] if trace is not None else None
        new = step(spec, p, x[:, t], state, step_trace)
        if trace is not None:
            trace.extend(z[valid[:, 0]] for z in step_trace)
        state = {name: np.where(valid, new[name], state[name]) for name in state}
        out[:, t] = np.where(valid, new["h"], 0.0)
    return out, state


def forward(params, specs, bidirectional, x, lengths=None, initial_state=None, trace=None):
    """The recurrent stack. x (B, T, F) batch-major.

    Returns (top outputs (B, T, D), final state dict). The bw direction reads each
    sequence reversed within its length; its outputs are reversed back, so they
    line up with the fw ones in original time order.
    """
    B, T, _ = x.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    initial_state = initial_state or {}
    directions = ("fw", "bw") if bidirectional else ("fw",)
    final, inp = {}, x
    for k, spec in enumerate(specs):
        outs = []
        for d in directions:
            prefix = f"layers.{k}.{d}."
            p = {name[len(prefix):]: v for name, v in params.items() if name.startswith(prefix)}
            _, state_names = cell_of(spec)
            state = {s: np.array(initial_state.get(prefix + s, np.zeros((B, spec.hidden))), dtype=x.dtype)
                     for s in state_names}
            seq = inp if d == "fw" else reverse_within_lengths(inp, lengths)
            out, state = run_direction(spec, p, seq, lengths, state, trace)
            outs.append(out if d == "fw" else reverse_within_lengths(out, lengths))
            final.update({prefix + s: v for s, v in state.items()})
        inp = np.concatenate(outs, axis=2)
    return inp, final


# ----------------------------------------------------------------------------- heads

def last_step_features(out, lengths, split):
    """(B, D): fw features at step lengths[b]-1 concatenated with bw features at step 0."""
    rows = np.arange(out.shape[0])
    return np.concatenate([out[rows, lengths - 1, :split], out[:, 0, split:]], axis=1)


def head_forward(params, head, out, lengths, split, y=None):
    """(head outputs, loss). Outputs as model.predict; loss None when y is None.

    Classify: probabilities (B, n), mean cross-entropy. Tag: per-step probabilities
    (B, T, n), 0 at padded steps; label y[b, t] scored at step t + delay < lengths[b].
    Regress: values (B, k), mean squared error over B and k.
    """
    W, b = params["head.W"], params["head.b"]
    kind = type(head).__name__
    if kind in ("Classify", "Regress"):
        assert (lengths >= 1).all(), "Classify / Regress need every length >= 1"
        logits = last_step_features(out, lengths, split) @ W + b
        if kind == "Regress":
            loss = None if y is None else float(np.mean((logits - y) ** 2))
            return logits, loss
        loss = None if y is None else float(-np.mean(log_softmax(logits)[np.arange(len(y)), y]))
        return softmax(logits), loss
    if kind == "Tag":
        B, T, _ = out.shape
        logits = out @ W + b                                       # (B, T, n)
        valid = np.arange(T)[None, :] < lengths[:, None]
        probs = np.where(valid[:, :, None], softmax(logits), 0.0)
        if y is None:
            return probs, None
        terms = [-log_softmax(logits[row, s])[y[row, s - head.delay]]
                 for row in range(B) for s in range(head.delay, lengths[row])]
        return probs, (float(np.mean(terms)) if terms else 0.0)
    raise ValueError(f"unknown head {head!r}")


def model_forward(params, specs, bidirectional, head, x, y=None, lengths=None, initial_state=None,
                  trace=None):
    """The whole model: returns (top outputs (B, T, D), final state, head outputs, loss)."""
    B, T, _ = x.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    out, final = forward(params, specs, bidirectional, x, lengths, initial_state, trace)
    pred, loss = head_forward(params, head, out, lengths, specs[-1].hidden, y)
    return out, final, pred, loss

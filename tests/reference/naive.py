"""A slow, obvious NumPy reference for SequenceModel (DESIGN.md §2-§4, docs/api.md).

Nothing here comes from numrnn: the cells are written straight from the
equations, one step at a time, batch-major, in whatever dtype the parameters
have. Specs and heads are read only through their attributes (type name,
``hidden``, ``activation``, ``forget_bias``, ``peepholes``, ``cell_clip``,
``proj``, ``proj_clip``, ``layer_norm``, ``reset_after``, ``n``, ``delay``).

Parameters are the dict of ``model.named_params()``: ``layers.{k}.{fw|bw}.{name}``
and ``head.W``, ``head.b``. States are dicts ``layers.{k}.{fw|bw}.{h|c}`` -> (B, size):
h has the layer's output size R (an LSTM's proj, else hidden), c has hidden.

Dropout (TF DropoutWrapper) is applied when a dict of masks is given, with the
keys and time-major shapes of ``model.dropout_masks``:
``layers.{k}.{d}.input`` (T, B, F), ``.state`` (T, B, R), ``.output`` (T, B, R).

``trace``, when given, records at every valid step how close the model is to a
point where it is not differentiable (a kink), as signed distances: a ReLU's
pre-activation z, and |v| - bound for a clipped v (> 0 where it clips). A list
receives these arrays. A dict receives them under their kind ("relu",
"cell_clip", "proj_clip") and also, under "layer_norm", the spread (standard
deviation) of every row that is layer-normalised: LN is smooth, but its
derivatives grow like 1/spread^k as the spread goes to 0.
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
# ``trace``, when a list, receives (kind, array) pairs; see the module docstring.

LN_EPS = 1e-5


def layer_norm(v, p, name, trace=None):
    """LN over the features of each row of v (B, H), biased variance, with the
    gain and shift ``{name}.gain``, ``{name}.shift`` of p."""
    mean = v.mean(axis=1, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=1, keepdims=True)
    if trace is not None:
        trace.append(("layer_norm", np.sqrt(var[:, 0])))
    return (v - mean) / np.sqrt(var + LN_EPS) * p[name + ".gain"] + p[name + ".shift"]


def clip(v, bound, kind, trace):
    """clip(v, -bound, bound); the identity when bound is None."""
    if bound is None:
        return v
    if trace is not None:
        trace.append((kind, np.abs(v) - bound))
    return np.clip(v, -bound, bound)


def rnn_step(spec, p, x, state, trace=None):
    z = x @ p["W"] + state["h"] @ p["U"] + p["b"]
    if spec.activation == "relu":
        if trace is not None:
            trace.append(("relu", z))
        return {"h": relu(z)}
    return {"h": np.tanh(z)}


def lstm_step(spec, p, x, state, trace=None):
    """TF LSTMCell, gate order i, j, f, o, with every option; with layer_norm TF
    LayerNormBasicLSTMCell (no bias; LN per gate and of the new cell)."""
    c_prev, r_prev = state["c"], state["h"]
    z = x @ p["W"] + r_prev @ p["U"]
    if not spec.layer_norm:
        z = z + p["b"]
    zi, zj, zf, zo = np.split(z, 4, axis=1)
    if spec.layer_norm:
        zi, zj = layer_norm(zi, p, "ln_i", trace), layer_norm(zj, p, "ln_j", trace)
        zf, zo = layer_norm(zf, p, "ln_f", trace), layer_norm(zo, p, "ln_o", trace)
    if spec.peepholes:
        zi = zi + p["p_i"] * c_prev
        zf = zf + p["p_f"] * c_prev
    i, j, f = sigmoid(zi), np.tanh(zj), sigmoid(zf + spec.forget_bias)
    c = f * c_prev + i * j
    if spec.layer_norm:
        c = layer_norm(c, p, "ln_c", trace)
    c = clip(c, spec.cell_clip, "cell_clip", trace)
    o = sigmoid(zo + p["p_o"] * c) if spec.peepholes else sigmoid(zo)
    m = o * np.tanh(c)
    r = m @ p["P"] if spec.proj else m
    r = clip(r, spec.proj_clip, "proj_clip", trace)
    return {"c": c, "h": r}


def gru_step(spec, p, x, state, trace=None):
    """TF GRUCell (reset_after=False): u is the keep gate. With layer_norm the
    pre-activations of r, u and the candidate are each normalised (no b_g, b_c)."""
    h = state["h"]
    if spec.layer_norm:
        zr, zu = np.split(x @ p["W_g"] + h @ p["U_g"], 2, axis=1)
        r, u = sigmoid(layer_norm(zr, p, "ln_r", trace)), sigmoid(layer_norm(zu, p, "ln_u", trace))
        c = np.tanh(layer_norm(x @ p["W_c"] + (r * h) @ p["U_c"], p, "ln_c", trace))
    else:
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


def output_size(spec):
    """Features of the output and of the state h: an LSTM's proj, else hidden."""
    return getattr(spec, "proj", None) or spec.hidden


# ----------------------------------------------------------------------------- layers

def reverse_within_lengths(x, lengths):
    """x (B, T, F): each sequence reversed within its own length; padding 0."""
    out = np.zeros_like(x)
    for b, n in enumerate(lengths):
        out[b, :n] = x[b, :n][::-1]
    return out


def run_direction(spec, p, x, lengths, state, trace=None, state_mask=None):
    """One direction over a batch-major sequence x (B, T, F), in the order it reads.

    Returns (outputs (B, T, R), final state). A step at t >= lengths[b] outputs 0
    and leaves sequence b's state unchanged. state_mask (B, T, R), indexed by this
    direction's own step: the h passed from a valid step t to step t+1 is
    h_t * state_mask[:, t] (c is never dropped); the output is the undropped h_t,
    the final state the dropped one.
    """
    step, _ = cell_of(spec)
    B, T, _ = x.shape
    out = np.zeros((B, T, output_size(spec)), dtype=x.dtype)
    for t in range(T):
        valid = (t < lengths)[:, None]
        step_trace = [] if trace is not None else None
        new = step(spec, p, x[:, t], state, step_trace)
        for kind, z in step_trace or ():
            if isinstance(trace, dict):
                trace.setdefault(kind, []).append(z[valid[:, 0]])
            elif kind != "layer_norm":
                trace.append(z[valid[:, 0]])
        out[:, t] = np.where(valid, new["h"], 0.0)
        if state_mask is not None:
            new = dict(new, h=new["h"] * state_mask[:, t])
        state = {name: np.where(valid, new[name], state[name]) for name in state}
    return out, state


def forward(params, specs, bidirectional, x, lengths=None, initial_state=None, trace=None, masks=None):
    """The recurrent stack. x (B, T, F) batch-major; masks: None or the dropout
    masks dict (time-major arrays, see the module docstring).

    Returns (top outputs (B, T, D), final state dict). The bw direction reads each
    sequence reversed within its length; its outputs are reversed back, so they
    line up with the fw ones in original time order. The input mask multiplies a
    direction's input and the output mask its output, both in original time order;
    the state mask follows the direction's own steps.
    """
    B, T, _ = x.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    initial_state = initial_state or {}
    masks = masks or {}
    directions = ("fw", "bw") if bidirectional else ("fw",)
    final, inp = {}, x
    for k, spec in enumerate(specs):
        outs = []
        _, state_names = cell_of(spec)
        sizes = {"c": spec.hidden, "h": output_size(spec)}
        for d in directions:
            prefix = f"layers.{k}.{d}."
            p = {name[len(prefix):]: v for name, v in params.items() if name.startswith(prefix)}
            mask = {kind: np.asarray(masks[prefix + kind], x.dtype).transpose(1, 0, 2)     # batch-major
                    for kind in ("input", "state", "output") if prefix + kind in masks}
            state = {s: np.array(initial_state.get(prefix + s, np.zeros((B, sizes[s]))), dtype=x.dtype)
                     for s in state_names}
            seq = inp * mask["input"] if "input" in mask else inp
            seq = seq if d == "fw" else reverse_within_lengths(seq, lengths)
            out, state = run_direction(spec, p, seq, lengths, state, trace, mask.get("state"))
            out = out if d == "fw" else reverse_within_lengths(out, lengths)
            outs.append(out * mask["output"] if "output" in mask else out)
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
                  trace=None, masks=None):
    """The whole model: returns (top outputs (B, T, D), final state, head outputs, loss).
    With dropout masks, the outputs are the dropped ones that the head sees."""
    B, T, _ = x.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    out, final = forward(params, specs, bidirectional, x, lengths, initial_state, trace, masks)
    pred, loss = head_forward(params, head, out, lengths, output_size(specs[-1]), y)
    return out, final, pred, loss

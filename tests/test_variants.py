"""The LSTM options (peepholes, cell_clip, proj, proj_clip, forget_bias,
layer_norm), the layer-norm GRU and dropout (DESIGN.md §3, §4):

- parameter names, shapes and initial values;
- loss_and_grad against central finite differences (float64), alone, stacked,
  bidirectional, with lengths 0..T, w.r.t. every parameter, the inputs and the
  initial state; with dropout, for fixed masks;
- forward, final state, loss and predict against the NumPy reference
  (tests/reference/naive.py), float64 and float32; with dropout, the training loss
  against the reference given ``model.dropout_masks``;
- dropout semantics: keep=1 changes nothing bit for bit, loss/predict/forward never
  drop, masks are reproducible and have the stated shapes, values and statistics;
- serial kernel builds against the parallel ones.

Clipping is not differentiable at the bound; every finite-difference problem is
drawn (by seed) so that no clipped quantity lies within KINK_MARGIN of its bound,
while some values do clip. Layer norm is smooth, but a row with a tiny spread s
makes its k-th derivatives grow like 1/s^k, and with them the truncation error of
central differences (EPS^2 times the third derivative): s = 0.005 gives relative
errors ~1e-4 with a correct gradient. So problems are also drawn with every
normalised row's spread either above LN_MARGIN or exactly 0 (the whole input and
state dropped: the row then stays 0 under every perturbation).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import numrnn as nr
from conftest import VARIANTS, build_model, central_differences, forced_slabs, make_batch, random_state, \
    random_targets, reference, relative_error
from reference import naive
from test_reference import check_against_reference, padded, run_everything

EPS = 1e-5            # central differences: rounding ~1e-16/EPS, truncation ~EPS**2
TOL = 1e-6
KINK_MARGIN = 1e-3    # a perturbation of EPS moves a clipped value by ~1e-5 * O(1)
LN_MARGIN = 0.03      # smallest spread of a layer-normalised row (see the module docstring)

SIZES = {"1layer": (4,), "2layers": (4, 3)}       # H, top last; proj = H - 1 or H + 1

# (stack, bidirectional, head): alone, stacked, bidirectional, both; Tag heads get
# lengths (T, 0, 1, T-1), the others (T, 1, T//2, T-1) with T = 4.
LAYOUTS = {
    "1layer-uni-tag": ("1layer", False, "tag"),
    "2layers-uni-classify": ("2layers", False, "classify"),
    "1layer-bi-regress": ("1layer", True, "regress"),
    "2layers-bi-tag": ("2layers", True, "tag"),
}

CLIPS = {   # variant -> the clip kinds it must exercise
    "cell_clip": ("cell_clip",),
    "proj_clip": ("proj_clip",),
    "lstm_combo": ("cell_clip", "proj_clip"),
    "lstm_ln_combo": ("cell_clip", "proj_clip"),
}

DROPOUT_CELLS = ["rnn_tanh", "lstm", "gru", "gru_ra", "proj", "lstm_combo", "lstm_ln", "gru_ln"]


def build(variant, stack, bidirectional, head, dtype=np.float64, seed=0, dropout=None):
    """build_model with random parameters; layer-norm gains drawn around 1 (as trained gains are)."""
    model = build_model(variant, SIZES.get(stack, stack), bidirectional, head, dtype=dtype, seed=seed,
                        dropout=dropout)
    for name, view in model.named_params().items():
        if name.endswith(".gain"):
            view += 1.0
    return model


def train_call(model, x, y, lengths, state, mask_seed, input_grads=False):
    """loss_and_grad(train=True) with model.rng reset, so every call draws the same masks."""
    model.rng = np.random.default_rng(mask_seed)
    return model.loss_and_grad(x, y, lengths=lengths, initial_state=state, train=True, input_grads=input_grads)


def kinks(model, x, lengths, state, masks=None):
    """{kind: values at every valid step}: for "cell_clip" and "proj_clip" the signed
    distance from the bound (> 0: clipped), for "layer_norm" the spread of each row."""
    trace = {}
    reference(model, x, lengths=lengths, initial_state=state, trace=trace, masks=masks)
    return {kind: np.concatenate([z.ravel() for z in zs]) for kind, zs in trace.items()}


def well_conditioned(found, clips):
    """No value within KINK_MARGIN of a clip bound, every clip in clips exercised,
    no layer-normalised row with a spread in (0, LN_MARGIN]."""
    spread = found.pop("layer_norm", np.zeros(0))
    return (all(np.abs(z).min(initial=np.inf) > KINK_MARGIN for z in found.values())
            and all((found.get(kind, np.zeros(0)) > 0).any() for kind in clips)
            and not ((spread > 0) & (spread <= LN_MARGIN)).any())


def fd_problem(variant, stack, bidirectional, head, lengths_kind="mixed", dropout=None):
    """(model, x, y, lengths, state, mask seed, kinks): the first seed whose problem
    is well conditioned for central differences (see well_conditioned)."""
    for seed in range(100):
        rng = np.random.default_rng(seed)
        model = build(variant, stack, bidirectional, head, seed=seed, dropout=dropout)
        x, y, lengths, state = make_batch(rng, model, lengths_kind)
        masks = None
        if dropout is not None:
            train_call(model, x, y, lengths, state, seed)
            masks = model.dropout_masks
        found = kinks(model, x, lengths, state, masks)
        if well_conditioned(dict(found), CLIPS.get(variant, ())):
            return model, x, y, lengths, state, seed, found
    raise AssertionError(f"no seed gives a well-conditioned problem for {variant}")


def gradient_errors(model, x, y, lengths, state, mask_seed=None):
    """{tensor: relative error} of loss_and_grad against central differences: every
    parameter, "x" and "state.<name>". With a mask seed the loss is the training
    loss under the same masks at every evaluation."""
    if mask_seed is None:
        loss = lambda: model.loss(x, y, lengths=lengths, initial_state=state)  # noqa: E731
        value, dx, dstate = model.loss_and_grad(x, y, lengths=lengths, initial_state=state, input_grads=True)
        assert value == pytest.approx(loss(), rel=1e-12, abs=1e-15)
    else:
        loss = lambda: train_call(model, x, y, lengths, state, mask_seed)  # noqa: E731
        value, dx, dstate = train_call(model, x, y, lengths, state, mask_seed, input_grads=True)
    analytic = {name: g.copy() for name, g in model.named_grads().items()}
    analytic["x"] = dx
    analytic.update({f"state.{name}": g for name, g in dstate.items()})
    silent = [name for name, g in analytic.items() if not np.any(g != 0.0)]
    assert not silent, f"gradients identically 0 (the comparison would prove nothing): {silent}"

    numeric = {name: central_differences(loss, view, EPS) for name, view in model.named_params().items()}
    numeric["x"] = central_differences(loss, x, EPS)
    numeric.update({f"state.{name}": central_differences(loss, v, EPS) for name, v in state.items()})
    assert sorted(analytic) == sorted(numeric), "dstate must have a key per initial state tensor"
    return {name: relative_error(numeric[name], analytic[name]) for name in numeric}


def assert_small(errors):
    bad = {name: f"{e:.2e}" for name, e in errors.items() if not e < TOL}
    assert not bad, f"relative gradient errors above {TOL}: {bad}"


# ----------------------------------------------------------------------------- parameters

def expected_shapes(spec, F):
    """{name: shape} of one direction's parameters, from DESIGN.md §4."""
    H = spec.hidden
    if isinstance(spec, nr.GRU):
        shapes = {"W_g": (F, 2 * H), "U_g": (H, 2 * H), "W_c": (F, H), "U_c": (H, H)}
        norms = "ruc"
    else:
        R = spec.proj or H
        shapes = {"W": (F, 4 * H), "U": (R, 4 * H)}
        if not spec.layer_norm:
            shapes["b"] = (4 * H,)
        if spec.peepholes:
            shapes.update({"p_i": (H,), "p_f": (H,), "p_o": (H,)})
        if spec.proj:
            shapes["P"] = (H, spec.proj)
        norms = "ijfoc"
    if spec.layer_norm:
        shapes.update({f"ln_{g}.{part}": (H,) for g in norms for part in ("gain", "shift")})
    return shapes


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parameter_names_shapes_and_init(variant):
    model = nr.SequenceModel(2, layers=[VARIANTS[variant](h) for h in SIZES["2layers"]], bidirectional=True,
                             head=nr.heads.Tag(3), dtype=np.float64, seed=4)
    params = model.named_params()
    size = 2
    for k, spec in enumerate(model.specs):
        for d in ("fw", "bw"):
            prefix = f"layers.{k}.{d}."
            got = {n[len(prefix):]: v.shape for n, v in params.items() if n.startswith(prefix)}
            assert got == expected_shapes(spec, size), prefix
            for name, v in params.items():
                if name.startswith(prefix) and name.endswith(".gain"):
                    assert (v == 1.0).all(), name
                if name.startswith(prefix) and (name.endswith(".shift") or name[len(prefix):].startswith("p_")):
                    assert (v == 0.0).all(), name
            R = naive.output_size(spec)
            state = {s: model.state_shapes[prefix + s] for s in ("c", "h") if prefix + s in model.state_shapes}
            assert state == ({"c": (spec.hidden,), "h": (R,)} if isinstance(spec, nr.LSTM) else {"h": (R,)})
        size = 2 * R


def test_chrono_initialisation(tmp_path):
    """chrono=T_max: forget-gate bias (b_f + forget_bias) = log u, input-gate bias = -log u,
    u in [1, T_max - 1]; the other parameters are drawn as without chrono; saved and loaded."""
    T_max, H = 50, 64
    model = nr.SequenceModel(3, [nr.LSTM(H, chrono=T_max, forget_bias=1.0)], head=nr.heads.Classify(2), seed=1)
    plain = nr.SequenceModel(3, [nr.LSTM(H, forget_bias=1.0)], head=nr.heads.Classify(2), seed=1)
    b_i, b_j, b_f, b_o = np.split(model.named_params()["layers.0.fw.b"], 4)
    log_u = b_f.astype(np.float64) + 1.0
    assert log_u.min() >= 0.0 and log_u.max() <= np.log(T_max - 1) + 1e-6
    assert log_u.std() > 0.5                                  # spread over the range, not one value
    np.testing.assert_allclose(b_i, -log_u, atol=1e-6)
    assert (b_j == 0).all() and (b_o == 0).all()
    for name in ("layers.0.fw.W", "layers.0.fw.U"):
        np.testing.assert_array_equal(model.named_params()[name], plain.named_params()[name])
    nr.save(model, tmp_path / "chrono.npz")
    loaded = nr.load(tmp_path / "chrono.npz")
    assert loaded.specs[0].chrono == T_max
    np.testing.assert_array_equal(loaded.params, model.params)
    for bad, match in ((1, "chrono must be None or an integer >= 2"), (True, "chrono must be None"),
                       (10.0, "chrono must be None")):
        with pytest.raises(ValueError, match=match):
            nr.LSTM(H, chrono=bad)
    with pytest.raises(ValueError, match="layer_norm=True does not have"):
        nr.LSTM(H, chrono=10, layer_norm=True)


# ----------------------------------------------------------------------------- finite differences

@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_match_finite_differences(variant, layout):
    model, x, y, lengths, state, _, found = fd_problem(variant, *LAYOUTS[layout])
    for kind in CLIPS.get(variant, ()):
        assert (found[kind] > 0).any(), f"no value is clipped by {kind}: the clip is not exercised"
    assert_small(gradient_errors(model, x, y, lengths, state))


@pytest.mark.parametrize("variant", ["lstm_combo", "lstm_ln_combo", "gru_ln"])
def test_gradients_one_step(variant):
    """T = 1 with lengths 1 and 0."""
    model, x, y, lengths, state, _, _ = fd_problem(variant, "2layers", True, "tag", "T1")
    assert_small(gradient_errors(model, x, y, lengths, state))


DROPOUTS = {
    "all": nr.Dropout(input_keep=0.7, output_keep=0.6, state_keep=0.5),
    "all_variational": nr.Dropout(input_keep=0.7, output_keep=0.6, state_keep=0.5, variational=True),
}


@pytest.mark.parametrize("cell, dropout", [(cell, "all") for cell in DROPOUT_CELLS]
                         + [(cell, "all_variational") for cell in ("rnn_tanh", "gru_ra", "proj", "lstm_ln")])
def test_dropout_gradients_match_finite_differences(cell, dropout):
    """Stacked, bidirectional, lengths 0..T; the masks are drawn afresh from the
    same generator state at every evaluation, so they are fixed."""
    model, x, y, lengths, state, mask_seed, _ = fd_problem(cell, "2layers", True, "tag", dropout=DROPOUTS[dropout])
    train_call(model, x, y, lengths, state, mask_seed)
    masks = model.dropout_masks
    assert {name.rsplit(".", 1)[1] for name in masks} == {"input", "state", "output"}
    assert any((m == 0).any() for m in masks.values()), "no unit is dropped"
    assert_small(gradient_errors(model, x, y, lengths, state, mask_seed))


@pytest.mark.parametrize("kind", ["input_keep", "state_keep", "output_keep"])
def test_dropout_gradients_one_kind(kind):
    """Each kind of dropout alone (LSTM with projection, stacked, bidirectional)."""
    dropout = nr.Dropout(**{kind: 0.5})
    model, x, y, lengths, state, mask_seed, _ = fd_problem("proj", "2layers", True, "classify", dropout=dropout)
    train_call(model, x, y, lengths, state, mask_seed)
    assert {name.rsplit(".", 1)[1] for name in model.dropout_masks} == {kind[:-5]}
    assert_small(gradient_errors(model, x, y, lengths, state, mask_seed))


@pytest.mark.parametrize("dropout", [None, "all"], ids=["no_dropout", "dropout"])
@pytest.mark.parametrize("variant", list(VARIANTS) + ["gru"])
def test_float32_gradients_close_to_float64(variant, dropout):
    """The float32 backward kernels (approximated activations, float32 arithmetic)
    against the float64 ones, on a problem with no value near a clip bound, with the
    same masks: every parameter, the input and the initial state."""
    dropout = DROPOUTS.get(dropout)
    model, x, y, lengths, state, mask_seed, _ = fd_problem(variant, "2layers", True, "tag", dropout=dropout)
    single = build(variant, "2layers", True, "tag", dtype=np.float32, dropout=dropout)
    single.params[:] = model.params
    results = {}
    for m in (model, single):
        loss, dx, dstate = train_call(m, x.astype(m.dtype), y, lengths, {k: v.astype(m.dtype) for k, v in state.items()},
                                      mask_seed, input_grads=True)
        results[m.dtype] = {"loss": np.array(loss), "grads": m.grads.copy(), "dx": dx,
                            **{f"dstate {k}": v for k, v in dstate.items()}}
    double, single_results = results[np.dtype(np.float64)], results[np.dtype(np.float32)]
    for name, expected in double.items():
        assert single_results[name].dtype == np.float32 or name == "loss"
        np.testing.assert_allclose(single_results[name], expected, rtol=1e-3, atol=1e-5, err_msg=name)


# ----------------------------------------------------------------------------- against the reference

@pytest.mark.parametrize("lengths_kind", ["full", "mixed", "T1"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_reference(variant, layout, lengths_kind, rng):
    stack, bidirectional, head = LAYOUTS[layout]
    model = build(variant, stack, bidirectional, head)
    x, y, lengths, state = make_batch(rng, model, lengths_kind)
    out = check_against_reference(model, x, y, lengths, state, rtol=1e-12, atol=1e-14)
    assert (out[padded(lengths, *x.shape[:2])] == 0.0).all(), "outputs at padded steps must be exactly 0"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float32_close_to_float64_reference(variant, rng):
    model = build(variant, "2layers", True, "tag", dtype=np.float32)
    x, y, lengths, state = make_batch(rng, model, "mixed")
    out = check_against_reference(model, x, y, lengths, state, rtol=1e-4, atol=1e-5)
    assert out.dtype == np.float32


def check_training_loss(model, x, y, lengths, state, **tol):
    """The training loss (and the final state, which holds the dropped h) agree with
    the reference given the masks the model drew."""
    loss = train_call(model, x, y, lengths, state, mask_seed=5)
    masks = model.dropout_masks
    _, ref_final, _, ref_loss = reference(model, x, y, lengths, state, masks=masks)
    np.testing.assert_allclose(loss, ref_loss, **tol)
    final = model._final_state(lengths)
    for name in ref_final:
        np.testing.assert_allclose(final[name], ref_final[name], err_msg=f"final state {name}", **tol)
    return masks


@pytest.mark.parametrize("variational", [False, True], ids=["per_step", "variational"])
@pytest.mark.parametrize("layout", ["1layer-uni-tag", "2layers-bi-tag", "2layers-uni-classify"])
@pytest.mark.parametrize("cell", DROPOUT_CELLS + ["rnn_relu", "lstm_ln_combo"])
def test_dropout_matches_reference(cell, layout, variational, rng):
    stack, bidirectional, head = LAYOUTS[layout]
    dropout = nr.Dropout(input_keep=0.7, output_keep=0.6, state_keep=0.5, variational=variational)
    model = build(cell, stack, bidirectional, head, dropout=dropout)
    x, y, lengths, state = make_batch(rng, model, "mixed")
    check_training_loss(model, x, y, lengths, state, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", DROPOUT_CELLS)
def test_dropout_float32_close_to_float64_reference(cell, rng):
    dropout = nr.Dropout(input_keep=0.7, output_keep=0.6, state_keep=0.5)
    model = build(cell, "2layers", True, "tag", dtype=np.float32, dropout=dropout)
    x, y, lengths, state = make_batch(rng, model, "mixed")
    masks = check_training_loss(model, x, y, lengths, state, rtol=1e-4, atol=1e-5)
    assert all(m.dtype == np.float32 for m in masks.values())


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_random_shapes_with_dropout(data):
    """Any variant, B 1..4, T 1..5, lengths in [0, T], any subset of initial state,
    any keeps: forward against the reference, and the training loss with its masks."""
    variant = data.draw(st.sampled_from(list(VARIANTS) + ["lstm", "gru", "gru_ra", "rnn_tanh"]))
    bidirectional = data.draw(st.booleans())
    keeps = {kind: data.draw(st.sampled_from([1.0, 0.8, 0.5])) for kind in ("input", "state", "output")}
    dropout = nr.Dropout(**{f"{kind}_keep": keep for kind, keep in keeps.items()},
                         variational=data.draw(st.booleans()))
    model = build(variant, "2layers", bidirectional, "tag", dropout=dropout)
    B, T = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
    lengths = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((B, T, model.input_size))
    y = random_targets(rng, model.head, B, T)
    full = random_state(rng, model, B)
    state = {name: full[name] for name in data.draw(st.lists(st.sampled_from(sorted(full)), unique=True))}
    check_against_reference(model, x, y, lengths, state, rtol=1e-12, atol=1e-14)
    masks = check_training_loss(model, x, y, lengths, state, rtol=1e-12, atol=1e-14)
    kinds = {kind for kind, keep in keeps.items() if keep < 1.0}
    assert {name.rsplit(".", 1)[1] for name in masks} == kinds


# ----------------------------------------------------------------------------- dropout semantics

def dropout_twins(cell, dropout, head="tag", stack="2layers", dtype=np.float64):
    """The same model (same parameters) with and without dropout."""
    with_dropout = build(cell, stack, True, head, dtype=dtype, dropout=dropout)
    without = build(cell, stack, True, head, dtype=dtype)
    np.testing.assert_array_equal(with_dropout.params, without.params)
    return with_dropout, without


@pytest.mark.parametrize("variational", [False, True], ids=["per_step", "variational"])
@pytest.mark.parametrize("cell", ["rnn_relu", "lstm", "gru_ra", "lstm_combo", "gru_ln"])
def test_keep_one_is_bit_identical_to_no_dropout(cell, variational, rng):
    model, plain = dropout_twins(cell, nr.Dropout(1.0, 1.0, 1.0, variational=variational))
    x, y, lengths, state = make_batch(rng, model, "mixed")
    results = {}
    for m in (model, plain):
        loss, dx, dstate = m.loss_and_grad(x, y, lengths=lengths, initial_state=state, train=True,
                                           input_grads=True)
        results[m] = (loss, dx, dstate, m.grads.copy(), m._final_state(lengths))
        assert m.dropout_masks == {}
    (loss, dx, dstate, grads, final), (loss0, dx0, dstate0, grads0, final0) = results[model], results[plain]
    assert loss == loss0
    np.testing.assert_array_equal(grads, grads0)
    np.testing.assert_array_equal(dx, dx0)
    for name in dstate0:
        np.testing.assert_array_equal(dstate[name], dstate0[name], err_msg=name)
    for name in final0:
        np.testing.assert_array_equal(final[name], final0[name], err_msg=name)


@pytest.mark.parametrize("head", ["classify", "tag"])
@pytest.mark.parametrize("cell", ["lstm", "proj", "gru"])
def test_inference_never_drops(cell, head, rng):
    """loss, predict, forward and loss_and_grad(train=False) equal those of the
    model without dropout, bit for bit, call after call."""
    model, plain = dropout_twins(cell, nr.Dropout(0.5, 0.5, 0.5), head=head)
    x, y, lengths, state = make_batch(rng, model, "mixed")
    for _ in range(2):
        assert model.loss(x, y, lengths=lengths, initial_state=state) == \
            plain.loss(x, y, lengths=lengths, initial_state=state)
        np.testing.assert_array_equal(model.predict(x, lengths=lengths), plain.predict(x, lengths=lengths))
        out, final = model.forward(x, lengths=lengths, initial_state=state)
        out0, final0 = plain.forward(x, lengths=lengths, initial_state=state)
        np.testing.assert_array_equal(out, out0)
        for name in final0:
            np.testing.assert_array_equal(final[name], final0[name], err_msg=name)
        loss = model.loss_and_grad(x, y, lengths=lengths, initial_state=state, train=False)
        assert loss == plain.loss_and_grad(x, y, lengths=lengths, initial_state=state, train=False)
        np.testing.assert_array_equal(model.grads, plain.grads)
    # ... and training does drop.
    assert model.loss_and_grad(x, y, lengths=lengths, initial_state=state) != \
        plain.loss_and_grad(x, y, lengths=lengths, initial_state=state)


@pytest.mark.parametrize("variational", [False, True], ids=["per_step", "variational"])
def test_masks_reproducible(variational, rng):
    """Same seed, same masks, loss and gradients; the next call draws new masks;
    resetting model.rng replays them."""
    dropout = nr.Dropout(0.7, 0.6, 0.5, variational=variational)
    a = build("lstm_combo", "2layers", True, "tag", seed=3, dropout=dropout)
    b = build("lstm_combo", "2layers", True, "tag", seed=3, dropout=dropout)
    x, y, lengths, state = make_batch(rng, a, "mixed")
    losses = [m.loss_and_grad(x, y, lengths=lengths, initial_state=state) for m in (a, b)]
    assert losses[0] == losses[1]
    np.testing.assert_array_equal(a.grads, b.grads)
    first = {name: m.copy() for name, m in a.dropout_masks.items()}
    assert sorted(first) == sorted(b.dropout_masks)
    for name in first:
        np.testing.assert_array_equal(first[name], b.dropout_masks[name], err_msg=name)

    generator_state = a.rng.bit_generator.state
    second_loss = a.loss_and_grad(x, y, lengths=lengths, initial_state=state)
    second = {name: m.copy() for name, m in a.dropout_masks.items()}
    second_grads = a.grads.copy()
    assert any((first[name] != second[name]).any() for name in first), "the second call reused the masks"
    a.rng.bit_generator.state = generator_state
    assert a.loss_and_grad(x, y, lengths=lengths, initial_state=state) == second_loss
    np.testing.assert_array_equal(a.grads, second_grads)
    for name in second:
        np.testing.assert_array_equal(a.dropout_masks[name], second[name], err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variational", [False, True], ids=["per_step", "variational"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "proj", "lstm_ln_combo", "gru_ra"])
def test_mask_keys_shapes_and_values(cell, variational, dtype, rng):
    dropout = nr.Dropout(input_keep=0.7, output_keep=0.6, state_keep=0.5, variational=variational)
    model = build(cell, "2layers", True, "tag", dtype=dtype, dropout=dropout)
    x, y, lengths, state = make_batch(rng, model, "mixed")
    model.loss_and_grad(x, y, lengths=lengths, initial_state=state)
    T, B, _ = x.transpose(1, 0, 2).shape
    keeps = {"input": 0.7, "state": 0.5, "output": 0.6}
    expected = {}
    size = model.input_size
    for k, spec in enumerate(model.specs):
        R = naive.output_size(spec)
        for d in ("fw", "bw"):
            expected.update({f"layers.{k}.{d}.input": (T, B, size), f"layers.{k}.{d}.state": (T, B, R),
                             f"layers.{k}.{d}.output": (T, B, R)})
        size = 2 * R
    masks = model.dropout_masks
    assert {name: m.shape for name, m in masks.items()} == expected
    for name, m in masks.items():
        keep = keeps[name.rsplit(".", 1)[1]]
        assert m.dtype == dtype, name
        assert np.isin(m, [0.0, dtype(1.0 / keep)]).all(), f"{name} holds values other than 0 and 1/keep"
        if variational:
            assert (m == m[:1]).all(), f"{name}: a variational mask must be the same at every step"


def test_only_masks_with_keep_below_one():
    model = build("lstm", "1layer", True, "tag", dropout=nr.Dropout(state_keep=0.9))
    rng = np.random.default_rng(0)
    x, y, lengths, state = make_batch(rng, model, "mixed")
    model.loss_and_grad(x, y, lengths=lengths, initial_state=state)
    assert sorted(model.dropout_masks) == ["layers.0.bw.state", "layers.0.fw.state"]


@pytest.mark.parametrize("variational", [False, True], ids=["per_step", "variational"])
def test_masked_activation_keeps_its_mean(variational):
    """Inverted dropout preserves the expected activation. With N independent draws
    of a mask m (0 or 1/p), mean(m) has standard error sqrt((1/p - 1) / N); the
    draws here are seeded, so the 4-standard-error bound is a fixed check that a
    wrong scale (1 instead of 1/p) or a wrong drop rate fails by tens of SEs."""
    keeps = {"input": 0.7, "state": 0.5, "output": 0.3}
    dropout = nr.Dropout(input_keep=keeps["input"], state_keep=keeps["state"], output_keep=keeps["output"],
                         variational=variational)
    model = nr.SequenceModel(3, layers=[nr.RNN(4)], head=nr.heads.Tag(2), dropout=dropout, dtype=np.float32,
                             seed=11)
    rng = np.random.default_rng(1)
    B, T = 400, 30
    x = 1.0 + np.abs(rng.standard_normal((B, T, 3)))         # a positive activation with mean ~1.8
    model.loss_and_grad(x, rng.integers(0, 2, size=(B, T)))
    for kind, p in keeps.items():
        mask = model.dropout_masks[f"layers.0.fw.{kind}"].astype(np.float64)
        draws = mask[:1] if variational else mask                  # the independent draws
        se = np.sqrt((1.0 / p - 1.0) / draws.size)
        assert abs(draws.mean() - 1.0) < 4 * se, f"{kind}: mean mask {draws.mean():.4f}, 4 SE = {4 * se:.4f}"
        assert abs((draws == 0).mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / draws.size), kind
        if kind == "input":
            act = x.transpose(1, 0, 2)[: draws.shape[0]]
            diff = act * draws - act                              # masked minus unmasked activation
            se_act = diff.std() / np.sqrt(diff.size)
            assert abs(diff.mean()) < 4 * se_act, \
                f"masked mean {(act * draws).mean():.4f} vs unmasked {act.mean():.4f}, 4 SE = {4 * se_act:.4f}"


# ----------------------------------------------------------------------------- serial vs parallel

@pytest.mark.parametrize("n_slabs", [2, 3])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_serial_build_matches_parallel(variant, n_slabs, rng, request):
    """A 4-row batch cut into n_slabs slabs on Numba's threads against one slab run
    serially, each on a model of its own (a model keeps its slab count)."""
    dropout = nr.Dropout(input_keep=0.7, output_keep=0.6, state_keep=0.5)
    x, y, lengths, state = make_batch(rng, build(variant, "2layers", True, "tag", dropout=dropout), "mixed")

    def everything():
        model = build(variant, "2layers", True, "tag", dropout=dropout)
        model.rng = np.random.default_rng(9)         # run_everything trains once, too
        results = run_everything(model, x, y, lengths, state)
        results["train loss"] = np.array(train_call(model, x, y, lengths, state, mask_seed=9))
        results["train grads"] = model.grads.copy()
        return results

    with forced_slabs(n_slabs):
        parallel = everything()
    request.getfixturevalue("serial_kernels")
    serial = everything()
    assert sorted(serial) == sorted(parallel)
    for name in parallel:
        np.testing.assert_allclose(serial[name], parallel[name], rtol=1e-12, atol=0, err_msg=name)


# ----------------------------------------------------------------------------- the cell in the product's tiles

@pytest.mark.parametrize("n_slabs", [1, 2])
@pytest.mark.parametrize("proj", [None, 20])
def test_cell_in_tiles_is_bit_identical_to_the_general_cell(proj, n_slabs):
    """The plain float32 LSTM, at least PACK_MIN_ROWS rows in all and H a multiple of
    GROUP, runs its cell inside the recurrent product's tiles (kernels/lstm.py
    cell_rows); peepholes that are all 0 leave the numbers as they are but take the
    general cell. Same operations in the same order: the same bits, for outputs,
    final states, loss, every gradient the two models share and predict (the
    inference kernel). 71 rows cut into 2 slabs leave tiles of 4, 2 and 1 rows;
    some sequences end early."""
    from numrnn.kernels.gemm import PACK_MIN_ROWS
    from numrnn.kernels.lstm import GROUP
    rng = np.random.default_rng(5)
    B, T, F, H = 71, 9, 5, 2 * GROUP
    assert T * B >= PACK_MIN_ROWS
    x = rng.standard_normal((B, T, F)).astype(np.float32)
    y = rng.integers(0, 3, B)
    lengths = rng.integers(1, T + 1, B)
    lengths[:3] = T

    def run(peepholes):
        model = nr.SequenceModel(F, [nr.LSTM(H, proj=proj, forget_bias=1.0, peepholes=peepholes), nr.LSTM(H)],
                                 head=nr.heads.Classify(3), dtype=np.float32, seed=0)
        if peepholes:
            plain = nr.SequenceModel(F, [nr.LSTM(H, proj=proj, forget_bias=1.0), nr.LSTM(H)],
                                     head=nr.heads.Classify(3), dtype=np.float32, seed=0)
            shared = plain.named_params()
            for name, value in model.named_params().items():
                value[...] = shared[name] if name in shared else 0.0
        out, state = model.forward(x, lengths)
        loss = model.loss_and_grad(x, y, lengths)
        grads = {name: g.copy() for name, g in model.named_grads().items()
                 if not name.split(".")[-1].startswith("p_")}
        return out, state, loss, grads, model.predict(x, lengths)

    with forced_slabs(n_slabs):
        tiles, general = run(False), run(True)
    np.testing.assert_array_equal(tiles[0], general[0])
    for name in tiles[1]:
        np.testing.assert_array_equal(tiles[1][name], general[1][name], err_msg=name)
    assert tiles[2] == general[2]
    assert sorted(tiles[3]) == sorted(general[3])
    for name in tiles[3]:
        np.testing.assert_array_equal(tiles[3][name], general[3][name], err_msg=name)
    np.testing.assert_array_equal(tiles[4], general[4])

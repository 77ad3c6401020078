"""Optimisers, clipping and schedules against torch.optim on the same gradients."""
from types import SimpleNamespace

import numpy as np
import pytest

import numrnn as nr
from numrnn import optim
from numrnn.kernels.common import ParallelKernel
from numrnn.threads import MIN_PARALLEL_ELEMENTS

# The update kernels run over chunks of CHUNK elements: N spans two whole chunks and a
# ragged third, so that chunk offsets and ends are checked. Split into torch tensors of:
CHUNK = optim.kernels.CHUNK
N = 2 * CHUNK + 37
SPLITS = (5, CHUNK + 12, CHUNK + 20)
STEPS = 20


def flat_model(dtype=np.float64, seed=0):
    """The optimiser's view of a model: flat params and grads."""
    rng = np.random.default_rng(seed)
    params = rng.standard_normal(N).astype(dtype)
    return SimpleNamespace(params=params, grads=np.zeros_like(params))


def gradient_sequence(seed=1):
    """STEPS gradients of norms 0.05 .. 50, so that clipping acts on some steps only."""
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(N) for _ in range(STEPS)]
    return [g * (norm / np.linalg.norm(g)) for g, norm in zip(grads, np.geomspace(0.05, 50.0, STEPS))]


def run_numrnn(make_opt, dtype=np.float64):
    model = flat_model(dtype)
    opt = make_opt(model)
    norms = []
    for g in gradient_sequence():
        model.grads[:] = g
        norms.append(opt.step())
    return model.params, norms


def run_torch(make_opt, clip_norm=None, make_scheduler=None):
    torch = pytest.importorskip("torch")
    flat = torch.tensor(flat_model().params, dtype=torch.float64)
    params = [p.clone().requires_grad_(True) for p in torch.split(flat, SPLITS)]
    opt = make_opt(params)
    scheduler = make_scheduler(opt) if make_scheduler else None
    norms = []
    for g in gradient_sequence():
        for p, gp in zip(params, torch.split(torch.tensor(g, dtype=torch.float64), SPLITS)):
            p.grad = gp.clone()
        if clip_norm is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, clip_norm)))
        opt.step()
        if scheduler:
            scheduler.step()
    return torch.cat([p.detach() for p in params]).numpy(), norms


def assert_close(ours, theirs, rtol=1e-10):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= rtol * scale, np.abs(ours - theirs).max() / scale


CASES = {
    # name: (numrnn optimiser, torch optimiser)
    "adam": (lambda m: nr.Adam(m, lr=0.05, betas=(0.8, 0.99), eps=1e-6),
             lambda t, p: t.optim.Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6)),
    "adam_l2": (lambda m: nr.Adam(m, lr=0.05, weight_decay=0.1, decoupled_weight_decay=False),
                lambda t, p: t.optim.Adam(p, lr=0.05, weight_decay=0.1)),
    "adamw": (lambda m: nr.Adam(m, lr=0.05, weight_decay=0.1),
              lambda t, p: t.optim.AdamW(p, lr=0.05, weight_decay=0.1)),
    "sgd": (lambda m: nr.SGD(m, lr=0.01),
            lambda t, p: t.optim.SGD(p, lr=0.01)),
    "sgd_momentum": (lambda m: nr.SGD(m, lr=0.01, momentum=0.9),
                     lambda t, p: t.optim.SGD(p, lr=0.01, momentum=0.9)),
    "sgd_nesterov_wd": (lambda m: nr.SGD(m, lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.05),
                        lambda t, p: t.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.05)),
    "sgd_wd": (lambda m: nr.SGD(m, lr=0.01, weight_decay=0.05),
               lambda t, p: t.optim.SGD(p, lr=0.01, weight_decay=0.05)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch(name):
    torch = pytest.importorskip("torch")
    ours, theirs = CASES[name]
    params, norms = run_numrnn(ours)
    expected, _ = run_torch(lambda p: theirs(torch, p))
    assert norms == [None] * STEPS
    assert_close(params, expected)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd_nesterov_wd"])
def test_clipping_matches_torch(name):
    torch = pytest.importorskip("torch")
    ours, theirs = CASES[name]

    def with_clip(model):
        opt = ours(model)
        opt.clip_norm = 1.5
        return opt

    params, norms = run_numrnn(with_clip)
    expected, expected_norms = run_torch(lambda p: theirs(torch, p), clip_norm=1.5)
    assert_close(params, expected)
    assert_close(norms, expected_norms)
    assert min(norms) < 1.5 < max(norms)          # some steps clipped, some not


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    for g in (gradient_sequence()[0], gradient_sequence()[-1]):       # below and above max_norm
        ours = g.copy()
        norm = optim.clip_grad_norm_(ours, 2.0)
        tensors = [t.clone().requires_grad_(True) for t in torch.split(torch.zeros(N, dtype=torch.float64), SPLITS)]
        for t, gt in zip(tensors, torch.split(torch.tensor(g), SPLITS)):
            t.grad = gt.clone()
        expected_norm = float(torch.nn.utils.clip_grad_norm_(tensors, 2.0))
        assert_close(norm, expected_norm)
        assert_close(ours, torch.cat([t.grad for t in tensors]).numpy())


def test_global_norm_independent_of_threads(serial_kernels):
    # Enough elements for the parallel build (threads.MIN_PARALLEL_ELEMENTS), which splits the work.
    x = np.random.default_rng(0).standard_normal(MIN_PARALLEL_ELEMENTS + 3 * CHUNK + 7).astype(np.float32)
    serial = optim.global_norm(x)
    ParallelKernel.serial = False
    assert optim.global_norm(x) == serial
    np.testing.assert_allclose(serial, np.linalg.norm(x.astype(np.float64)), rtol=1e-12)


@pytest.mark.parametrize("make", [lambda m: nr.Adam(m, lr=0.05, weight_decay=0.1, clip_norm=3.0),
                                  lambda m: nr.SGD(m, lr=0.05, momentum=0.9, nesterov=True, clip_norm=3.0)])
def test_updates_independent_of_threads(make, serial_kernels):
    """Large updates run the parallel builds, small ones the serial builds; both give
    the same numbers."""
    n = MIN_PARALLEL_ELEMENTS + CHUNK + 37
    assert optim.kernels.adam_step.for_elements(n) is optim.kernels.adam_step
    assert optim.kernels.adam_step.for_elements(MIN_PARALLEL_ELEMENTS - 1) is optim.kernels.adam_step.serial_build
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    results = []
    for serial in (True, False):
        ParallelKernel.serial = serial
        model = SimpleNamespace(params=np.linspace(-1, 1, n, dtype=np.float32), grads=np.zeros(n, np.float32))
        opt = make(model)
        for g in grads:
            model.grads[:] = g
            opt.step()
        results.append(model.params)
    assert (results[0] == results[1]).all()
    assert not (results[0] == np.linspace(-1, 1, n, dtype=np.float32)).all()


@pytest.mark.parametrize("name", ["adamw", "sgd_nesterov_wd"])
def test_float32_follows_float64(name):
    ours, _ = CASES[name]
    p32, _ = run_numrnn(ours, np.float32)
    p64, _ = run_numrnn(ours, np.float64)
    assert p32.dtype == np.float32
    np.testing.assert_allclose(p32, p64, rtol=1e-4, atol=1e-5)


def test_optimizer_does_not_modify_grads():
    model = flat_model()
    model.grads[:] = 100.0
    nr.Adam(model, clip_norm=1.0).step()
    assert (model.grads == 100.0).all()


def test_state_dict_continues_exactly():
    grads = gradient_sequence()
    model = flat_model()
    opt = nr.Adam(model, lr=0.05, weight_decay=0.1, clip_norm=3.0, schedule={"name": "cosine", "total_steps": 20})
    for g in grads[:10]:
        model.grads[:] = g
        opt.step()
    state = opt.state_dict()
    copy = SimpleNamespace(params=model.params.copy(), grads=np.zeros(N))
    resumed = optim.from_state_dict(copy, state)
    assert resumed.hyperparameters() == opt.hyperparameters()
    for g in grads[10:]:
        model.grads[:] = g
        opt.step()
        copy.grads[:] = g
        resumed.step()
    assert resumed.step_count == 20
    assert (copy.params == model.params).all()


# ----------------------------------------------------------------------------- schedules

def torch_lrs(make_scheduler, steps=40):
    """The learning rate used by each of ``steps`` updates under a torch scheduler."""
    torch = pytest.importorskip("torch")
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    scheduler = make_scheduler(torch.optim.lr_scheduler, opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def warmed_up(S, opt, warmup, after):
    return S.SequentialLR(opt, [S.LinearLR(opt, 1.0 / warmup, 1.0, total_iters=warmup - 1), after],
                          milestones=[warmup])


SCHEDULE_CASES = {
    "constant": (None, lambda S, o: S.ConstantLR(o, factor=1.0)),
    "step": ({"name": "step", "every": 7, "gamma": 0.5}, lambda S, o: S.StepLR(o, step_size=7, gamma=0.5)),
    "cosine": ({"name": "cosine", "total_steps": 40, "final_lr": 0.01},
               lambda S, o: S.CosineAnnealingLR(o, T_max=40, eta_min=0.01)),
    "warmup_constant": ({"name": "constant", "warmup": 5},
                        lambda S, o: S.LinearLR(o, 0.2, 1.0, total_iters=4)),
    "warmup_step": ({"name": "step", "warmup": 4, "every": 10, "gamma": 0.3},
                    lambda S, o: warmed_up(S, o, 4, S.StepLR(o, step_size=10, gamma=0.3))),
    "warmup_cosine": ({"name": "cosine", "warmup": 8, "total_steps": 40},
                      lambda S, o: warmed_up(S, o, 8, S.CosineAnnealingLR(o, T_max=32))),
}


@pytest.mark.parametrize("name", sorted(SCHEDULE_CASES))
def test_schedule_matches_torch(name):
    spec, make_scheduler = SCHEDULE_CASES[name]
    schedule = optim.make_schedule(0.1, spec)
    ours = [schedule.lr_at(step) for step in range(40)]
    np.testing.assert_allclose(ours, torch_lrs(make_scheduler), rtol=1e-9, atol=1e-15)


def test_schedule_drives_the_optimizer():
    torch = pytest.importorskip("torch")
    params, _ = run_numrnn(lambda m: nr.Adam(m, lr=0.05, schedule={"name": "cosine", "warmup": 4, "total_steps": 20}))
    expected, _ = run_torch(
        lambda p: torch.optim.Adam(p, lr=0.05),
        make_scheduler=lambda o: warmed_up(torch.optim.lr_scheduler, o, 4,
                                           torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=16)))
    assert_close(params, expected)


def test_cosine_holds_final_lr_after_total_steps():
    schedule = optim.make_schedule(1.0, {"name": "cosine", "total_steps": 10, "final_lr": 0.1})
    assert schedule.lr_at(10) == schedule.lr_at(1000) == pytest.approx(0.1)
    assert optim.make_schedule(1.0, schedule.spec()) == schedule


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("build, message", [
    (lambda m: nr.Adam(m, lr=0), "lr must be a finite number > 0, got 0"),
    (lambda m: nr.Adam(m, lr="fast"), "lr must be"),
    (lambda m: nr.Adam(m, betas=(0.9, 1.0)), r"betas\[1\] must be in \[0, 1\), got 1.0"),
    (lambda m: nr.Adam(m, betas=0.9), "betas must be a pair"),
    (lambda m: nr.Adam(m, eps=-1), "eps must be a finite number >= 0, got -1"),
    (lambda m: nr.Adam(m, weight_decay=-0.1), "weight_decay must be a finite number >= 0, got -0.1"),
    (lambda m: nr.Adam(m, weight_decay=float("inf")), "weight_decay must be a finite number >= 0, got inf"),
    (lambda m: nr.Adam(m, clip_norm=0), "clip_norm must be a finite number > 0, or None, got 0"),
    (lambda m: nr.Adam(m, clip_norm=float("inf")), "clip_norm must be a finite number > 0, or None, got inf"),
    (lambda m: nr.SGD(m, momentum=-1), "momentum must be a finite number >= 0, got -1"),
    (lambda m: nr.SGD(m, schedule={"name": "step", "every": 2, "gamma": float("inf")}),
     "schedule gamma must be a finite number > 0, got inf"),
    (lambda m: nr.SGD(m, nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda m: nr.SGD(m, schedule="linear"), "schedule name must be one of .*, got 'linear'"),
    (lambda m: nr.SGD(m, schedule={"name": "step"}), "schedule 'step'.*every"),
    (lambda m: nr.SGD(m, schedule={"name": "step", "every": 0}), "schedule every must be an integer >= 1, got 0"),
    (lambda m: nr.SGD(m, schedule={"name": "cosine", "total_steps": 5, "warmup": 5}),
     r"schedule total_steps must be an integer > warmup \(5\), got 5"),
    (lambda m: nr.SGD(m, schedule={"name": "constant", "warmup": 1.5}), "schedule warmup must be an integer"),
])
def test_bad_hyperparameters(build, message):
    with pytest.raises(ValueError, match=message):
        build(flat_model())


def test_an_optimiser_needs_a_model():
    with pytest.raises(ValueError, match=r"the optimiser needs a model with params and grads .*, got None"):
        nr.Adam(None)


def test_model_of_another_size_is_refused():
    model = flat_model()
    opt = nr.Adam(model)
    model.params = np.zeros(N + 1)
    model.grads = np.zeros(N + 1)
    with pytest.raises(ValueError, match="optimiser was built for"):
        opt.step()

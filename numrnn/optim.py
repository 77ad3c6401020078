"""Optimisers over the flat parameter vector, gradient clipping and learning-rate schedules.

An optimiser updates ``model.params`` in place from ``model.grads``: two 1-D arrays
of one shape ``(N,)`` and dtype (float32 or float64). Its moment buffers share that
layout (STYLE.md point 8), so each step is one call to a kernel of
:mod:`numrnn.kernels.optim`, one parallel loop over the flat index; clipping adds
one pass that computes the gradient norm.

    opt = nr.Adam(model, lr=1e-3, clip_norm=1.0,
                  schedule={"name": "cosine", "total_steps": 10_000, "warmup": 500})
    model.loss_and_grad(x, y)
    norm = opt.step()        # gradient norm before clipping (None without clip_norm)

Schedules: ``lr_at(step)`` is the learning rate of the update with 0-based index
``step``, i.e. the one made when ``step`` updates have already been made (PyTorch's
``scheduler.step()`` after every ``optimizer.step()``). An optional linear warm-up
uses ``lr * (step + 1) / warmup`` for ``step < warmup``; the schedule proper then
runs from ``step - warmup = 0``.
"""
import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from .kernels import optim as kernels


def _number(name, value, ok, expected, kind=float):
    """``kind(value)``, or a ValueError naming the argument and the value."""
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or (kind is int and value != int(value)) or not ok(value)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return kind(value)


# ---------------------------------------------------------------------------
# Learning-rate schedules


@dataclass(frozen=True, kw_only=True)
class Constant:
    """``lr`` at every step after a linear warm-up over ``warmup`` steps."""

    lr: float
    warmup: int = 0
    name: ClassVar[str] = "constant"

    def __post_init__(self):
        _number("lr", self.lr, lambda v: v > 0 and math.isfinite(v), "a finite number > 0")
        _number("schedule warmup", self.warmup, lambda v: v >= 0, "an integer >= 0", int)

    def lr_at(self, step):
        """Learning rate of the update with 0-based index ``step``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        return self._after_warmup(step - self.warmup)

    def _after_warmup(self, k):
        return self.lr

    def spec(self):
        """JSON-able description; ``make_schedule(lr, spec)`` rebuilds the schedule."""
        d = asdict(self)
        del d["lr"]
        return {"name": self.name, **d}


@dataclass(frozen=True, kw_only=True)
class StepDecay(Constant):
    """``lr * gamma ** (k // every)`` at step k after the warm-up (torch StepLR)."""

    every: int
    gamma: float = 0.1
    name: ClassVar[str] = "step"

    def __post_init__(self):
        super().__post_init__()
        _number("schedule every", self.every, lambda v: v >= 1, "an integer >= 1", int)
        _number("schedule gamma", self.gamma, lambda v: 0 < v < math.inf, "a finite number > 0")

    def _after_warmup(self, k):
        return self.lr * self.gamma ** (k // self.every)


@dataclass(frozen=True, kw_only=True)
class Cosine(Constant):
    """Cosine decay from ``lr`` to ``final_lr``, reached at step ``total_steps``
    (warm-up included), then held (torch CosineAnnealingLR with
    T_max = total_steps - warmup, eta_min = final_lr; Loshchilov & Hutter 2017)."""

    total_steps: int
    final_lr: float = 0.0
    name: ClassVar[str] = "cosine"

    def __post_init__(self):
        super().__post_init__()
        _number("schedule total_steps", self.total_steps, lambda v: v > self.warmup,
                f"an integer > warmup ({self.warmup})", int)
        _number("schedule final_lr", self.final_lr, lambda v: 0 <= v <= self.lr, f"in [0, lr={self.lr}]")

    def _after_warmup(self, k):
        span = self.total_steps - self.warmup
        cos = math.cos(math.pi * min(k, span) / span)
        return self.final_lr + (self.lr - self.final_lr) * (1.0 + cos) / 2.0


SCHEDULES = {cls.name: cls for cls in (Constant, StepDecay, Cosine)}


def make_schedule(lr, schedule=None):
    """Build a schedule for base rate ``lr``.

    Args:
        lr: float > 0.
        schedule: None (constant), a name ("constant", "step", "cosine") or a dict
            ``{"name": ..., **options}``; options are the fields of the class
            (``warmup``; ``every``, ``gamma``; ``total_steps``, ``final_lr``).
    """
    if schedule is None:
        schedule = "constant"
    spec = {"name": schedule} if isinstance(schedule, str) else dict(schedule)
    name = spec.pop("name", None)
    if name not in SCHEDULES:
        raise ValueError(f"schedule name must be one of {sorted(SCHEDULES)}, got {name!r}")
    try:
        return SCHEDULES[name](lr=lr, **spec)
    except TypeError as e:  # a missing or unknown option
        raise ValueError(f"schedule {name!r}: {e}") from None


# ---------------------------------------------------------------------------
# Gradient norm and clipping


def _norm_workspace(n):
    return np.empty(max(1, -(-n // kernels.CHUNK)))  # (C,) float64


def global_norm(x):
    """Euclidean norm of a 1-D array, accumulated in float64; the same value for any
    thread count (fixed chunks, partial sums added in a fixed order)."""
    return kernels.global_norm.for_elements(x.shape[0])(_norm_workspace(x.shape[0]), x)


def clip_grad_norm_(x, max_norm):
    """Scale the 1-D array ``x`` in place by ``max_norm / (norm + 1e-6)`` when that is
    below 1 (torch.nn.utils.clip_grad_norm_); returns the norm before clipping."""
    norm = global_norm(x)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        x *= x.dtype.type(coef)
    return norm


# ---------------------------------------------------------------------------
# Optimisers


def _flat_buffers(model):
    """``(model.params, model.grads)``, checked: contiguous (N,) arrays of one float dtype."""
    if not (hasattr(model, "params") and hasattr(model, "grads")):
        raise ValueError(f"the optimiser needs a model with params and grads (a SequenceModel), got {model!r}")
    p, g = model.params, model.grads
    for name, a in (("model.params", p), ("model.grads", g)):
        if not (isinstance(a, np.ndarray) and a.ndim == 1 and a.flags.c_contiguous
                and a.dtype in (np.float32, np.float64)):
            raise ValueError(f"{name} must be a contiguous 1-D float32/float64 array, "
                             f"got {getattr(a, 'shape', type(a))}")
    if g.shape != p.shape or g.dtype != p.dtype:
        raise ValueError(f"model.grads {g.shape} {g.dtype} must match model.params {p.shape} {p.dtype}")
    return p, g


class _Optimizer:
    """Shared machinery. Subclasses name their (N,) moment buffers in ``_moments``,
    extend ``hyperparameters()`` and call their kernel in ``_update``."""

    _moments = ()

    def __init__(self, model, lr, weight_decay, clip_norm, schedule):
        params, _ = _flat_buffers(model)
        self.model = model
        self.schedule = make_schedule(lr, schedule)
        self.weight_decay = _number("weight_decay", weight_decay, lambda v: 0 <= v < math.inf,
                                    "a finite number >= 0")
        self.clip_norm = None if clip_norm is None else _number(
            "clip_norm", clip_norm, lambda v: 0 < v < math.inf, "a finite number > 0, or None")
        for name in self._moments:
            setattr(self, name, np.zeros_like(params))  # (N,)
        self._norm_partial = _norm_workspace(params.shape[0])
        self.step_count = 0

    @property
    def lr(self):
        """Learning rate of the next step."""
        return self.schedule.lr_at(self.step_count)

    def grad_norm(self):
        """Global Euclidean norm of ``model.grads`` (one read of the gradients)."""
        grads = self._buffers()[1]
        return kernels.global_norm.for_elements(grads.shape[0])(self._norm_partial, grads)

    def step(self):
        """Update ``model.params`` in place from ``model.grads``, clipped to a global
        norm of at most ``clip_norm`` when that is set (``model.grads`` is only read).

        Returns:
            The global gradient norm before clipping when ``clip_norm`` is set, else
            None (call ``grad_norm()`` to log it without clipping).
        """
        params, grads = self._buffers()
        norm, scale = None, 1.0
        if self.clip_norm is not None:
            norm = self.grad_norm()
            scale = min(1.0, self.clip_norm / (norm + 1e-6))
        self._update(params, grads, scale, self.lr, self.step_count + 1)
        self.step_count += 1
        return norm

    def _buffers(self):
        params, grads = _flat_buffers(self.model)
        moment = getattr(self, self._moments[0])
        if params.shape != moment.shape or params.dtype != moment.dtype:
            raise ValueError(f"model.params is {params.shape} {params.dtype}, but the optimiser "
                             f"was built for {moment.shape} {moment.dtype}")
        return params, grads

    def hyperparameters(self):
        """JSON-able keyword arguments that rebuild this optimiser (see ``from_state_dict``)."""
        return {"lr": self.schedule.lr, "weight_decay": self.weight_decay,
                "clip_norm": self.clip_norm, "schedule": self.schedule.spec()}

    def state_dict(self):
        """``{"type", "hyperparameters", "step", "moments": {name: (N,) copy}}``."""
        return {"type": type(self).__name__, "hyperparameters": self.hyperparameters(),
                "step": self.step_count,
                "moments": {name: getattr(self, name).copy() for name in self._moments}}

    def load_state_dict(self, state):
        """Restore the moments and the step count of ``state_dict()``. Hyperparameters
        stay those this optimiser was built with."""
        if state["type"] != type(self).__name__:
            raise ValueError(f"optimiser state is for {state['type']!r}, not {type(self).__name__!r}")
        for name in self._moments:
            mine, theirs = getattr(self, name), np.asarray(state["moments"].get(name))
            if theirs.shape != mine.shape:
                raise ValueError(f"optimiser moment {name!r} has shape {theirs.shape}, expected {mine.shape}")
            np.copyto(mine, theirs)
        self.step_count = _number("optimiser step", state["step"], lambda v: v >= 0, "an integer >= 0", int)


class Adam(_Optimizer):
    """Adam; AdamW (decoupled weight decay) when ``weight_decay > 0``.

    Args:
        model: object with ``params`` and ``grads``, (N,) arrays of one dtype.
        lr: base learning rate > 0 (the schedule's starting point).
        betas: (beta1, beta2), each in [0, 1).
        eps: >= 0, added to the bias-corrected sqrt of the second moment.
        weight_decay: >= 0. Decoupled (p *= 1 - lr*wd, torch.optim.AdamW) by default;
            ``decoupled_weight_decay=False`` gives the L2 penalty of torch.optim.Adam
            (g += wd*p).
        clip_norm: None or > 0: clip the global gradient norm before each step.
        schedule: see :func:`make_schedule`.

    State: ``exp_avg``, ``exp_avg_sq`` (N,), ``step_count``.

    Notes:
        Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", Algorithm 1;
        Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", Algorithm 2.
        Updates match torch.optim.Adam / AdamW (eps outside the square root).
    """

    _moments = ("exp_avg", "exp_avg_sq")

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 clip_norm=None, schedule=None, decoupled_weight_decay=True):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(_number(f"betas[{i}]", b, lambda v: 0 <= v < 1, "in [0, 1)")
                           for i, b in enumerate(betas))
        self.eps = _number("eps", eps, lambda v: 0 <= v < math.inf, "a finite number >= 0")
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        super().__init__(model, lr, weight_decay, clip_norm, schedule)

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps,
                "decoupled_weight_decay": self.decoupled_weight_decay}

    def _update(self, params, grads, grad_scale, lr, step):
        kernels.adam_step.for_elements(params.shape[0])(params, self.exp_avg, self.exp_avg_sq, grads, grad_scale, lr,
                                                        *self.betas, self.eps, self.weight_decay,
                                                        self.decoupled_weight_decay, step)


class SGD(_Optimizer):
    """Stochastic gradient descent with optional momentum (torch.optim.SGD, dampening 0).

    Args:
        model: object with ``params`` and ``grads``, (N,) arrays of one dtype.
        lr: base learning rate > 0.
        momentum: >= 0.  nesterov: Nesterov momentum (needs momentum > 0).
        weight_decay: >= 0, L2 penalty added to the gradient (g += wd*p).
        clip_norm, schedule: as for :class:`Adam`.

    State: ``momentum_buffer`` (N,), ``step_count``.

    Notes:
        Polyak 1964 (heavy ball); Sutskever et al. 2013 (Nesterov form as in PyTorch).
    """

    _moments = ("momentum_buffer",)

    def __init__(self, model, lr=1e-2, momentum=0.0, nesterov=False, weight_decay=0.0,
                 clip_norm=None, schedule=None):
        self.momentum = _number("momentum", momentum, lambda v: 0 <= v < math.inf, "a finite number >= 0")
        if nesterov and self.momentum == 0:
            raise ValueError(f"nesterov=True needs momentum > 0, got momentum={momentum!r}")
        self.nesterov = bool(nesterov)
        super().__init__(model, lr, weight_decay, clip_norm, schedule)

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum, "nesterov": self.nesterov}

    def _update(self, params, grads, grad_scale, lr, step):
        kernels.sgd_step.for_elements(params.shape[0])(params, self.momentum_buffer, grads, grad_scale, lr,
                                                       self.momentum, self.nesterov, self.weight_decay)


OPTIMIZERS = {"Adam": Adam, "SGD": SGD}


def make_optimizer(model, name, **hyperparameters):
    """``Adam`` or ``SGD`` by name (a key of OPTIMIZERS) with its keyword arguments."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    return OPTIMIZERS[name](model, **hyperparameters)


def from_state_dict(model, state):
    """The optimiser of ``state`` (from ``state_dict()``), rebuilt for ``model``."""
    opt = make_optimizer(model, state["type"], **state["hyperparameters"])
    opt.load_state_dict(state)
    return opt

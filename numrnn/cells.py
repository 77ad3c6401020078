"""Layer specs: the hyperparameters of a recurrent layer, nothing else.

A spec is what a user writes (``nr.LSTM(128)``) and what a checkpoint stores;
``numrnn.layers`` turns it into a layer that owns parameters and workspaces.
"""
from dataclasses import asdict, dataclass, fields

import numpy as np


def plain_values(spec):
    """NumPy scalars among a spec's options (np.int64(128) read from a config array)
    become Python ones: checked as such, and stored as JSON in checkpoints. Also for
    the heads."""
    for f in fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, np.generic):
            object.__setattr__(spec, f.name, value.item())


def _check_hidden(hidden):
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be a positive integer, got {hidden!r}")


@dataclass(frozen=True)
class RNN:
    """Elman RNN: h_t = act(x_t W + h_{t-1} U + b), act in {"tanh", "relu"}."""
    hidden: int
    activation: str = "tanh"

    def __post_init__(self):
        plain_values(self)
        _check_hidden(self.hidden)
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {self.activation!r}")

    @property
    def output_size(self):
        return self.hidden


def _check_positive_or_none(name, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not value > 0 or value == float("inf")):
        raise ValueError(f"{name} must be None or a positive number, got {value!r}")


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class LSTM:
    """LSTM with TF LSTMCell semantics (gate order i, j, f, o); see DESIGN.md §3.

    Options, in any combination: ``peepholes`` (diagonal p_i, p_f, p_o),
    ``cell_clip`` (clip c_t to [-cell_clip, cell_clip]), ``proj`` (project the
    output m_t to ``proj`` features with P; the projection r_t is the output and
    the recurrent state), ``proj_clip`` (clip r_t; needs ``proj``), and
    ``layer_norm`` (TF LayerNormBasicLSTMCell: no bias, each gate's
    pre-activation and the new cell normalised with their own gain and shift).

    ``chrono=T_max`` changes only the initialisation (Tallec & Ollivier 2018, "Can
    recurrent neural networks warp time?"): unit k's forget-gate bias (b_f plus
    forget_bias) starts at log(u_k), u_k ~ U[1, T_max - 1], and its input-gate bias
    b_i at -log(u_k), so that the cells start out remembering over 1 to T_max steps.
    """
    hidden: int
    forget_bias: float = 1.0
    peepholes: bool = False
    cell_clip: float | None = None
    proj: int | None = None
    proj_clip: float | None = None
    layer_norm: bool = False
    chrono: int | None = None

    def __post_init__(self):
        plain_values(self)
        _check_hidden(self.hidden)
        if (isinstance(self.forget_bias, bool) or not isinstance(self.forget_bias, (int, float))
                or self.forget_bias != self.forget_bias):
            raise ValueError(f"forget_bias must be a number, got {self.forget_bias!r}")
        _check_bool("peepholes", self.peepholes)
        _check_bool("layer_norm", self.layer_norm)
        _check_positive_or_none("cell_clip", self.cell_clip)
        _check_positive_or_none("proj_clip", self.proj_clip)
        if self.proj is not None and (isinstance(self.proj, bool) or not isinstance(self.proj, int)
                                      or self.proj < 1):
            raise ValueError(f"proj must be None or a positive integer, got {self.proj!r}")
        if self.proj_clip is not None and self.proj is None:
            raise ValueError(f"proj_clip={self.proj_clip!r} needs proj (the projection size)")
        if self.chrono is not None:
            if isinstance(self.chrono, bool) or not isinstance(self.chrono, int) or self.chrono < 2:
                raise ValueError(f"chrono must be None or an integer >= 2 (the longest dependency in steps), "
                                 f"got {self.chrono!r}")
            if self.layer_norm:
                raise ValueError("chrono initialises the gate biases, which layer_norm=True does not have")

    @property
    def output_size(self):
        """Features of r_t: proj when projecting, else hidden."""
        return self.proj or self.hidden


@dataclass(frozen=True)
class GRU:
    """GRU: reset_after=False is TF GRUCell, reset_after=True the PyTorch/cuDNN form."""
    hidden: int
    reset_after: bool = False
    layer_norm: bool = False

    def __post_init__(self):
        plain_values(self)
        _check_hidden(self.hidden)
        _check_bool("reset_after", self.reset_after)
        _check_bool("layer_norm", self.layer_norm)
        if self.layer_norm and self.reset_after:
            raise ValueError("layer_norm=True needs reset_after=False (the TF GRUCell form)")

    @property
    def output_size(self):
        return self.hidden


@dataclass(frozen=True)
class Dropout:
    """TF DropoutWrapper around every layer and direction, training only.

    Inverted dropout: kept units are scaled by 1/keep. ``input_keep`` drops the
    layer's input, ``output_keep`` its output, ``state_keep`` the recurrent
    state (h, or r for LSTM; never c) passed to the next step. With
    ``variational=True`` each sequence keeps one mask for all its steps
    (Gal and Ghahramani 2016).
    """
    input_keep: float = 1.0
    output_keep: float = 1.0
    state_keep: float = 1.0
    variational: bool = False

    def __post_init__(self):
        plain_values(self)
        for name in ("input_keep", "output_keep", "state_keep"):
            keep = getattr(self, name)
            if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {keep!r}")
        _check_bool("variational", self.variational)


CELLS = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}


def spec_to_dict(spec):
    """{"cell": "LSTM", "hidden": 128, ...}: the JSON form stored in checkpoints."""
    return {"cell": type(spec).__name__, **asdict(spec)}


def spec_from_dict(d):
    d = dict(d)
    name = d.pop("cell", None)
    if name not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {name!r}")
    try:
        return CELLS[name](**d)
    except TypeError as e:
        raise ValueError(f"bad options for {name}: {d!r} ({e})") from None

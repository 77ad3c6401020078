"""Layer specs: the hyperparameters of a recurrent layer, nothing else.

A spec is what a user writes (``nr.LSTM(128)``) and what a checkpoint stores;
``numrnn.layers`` turns it into a layer that owns parameters and workspaces.
"""
from dataclasses import asdict, dataclass


def _check_hidden(hidden):
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be a positive integer, got {hidden!r}")


@dataclass(frozen=True)
class RNN:
    """Elman RNN: h_t = act(x_t W + h_{t-1} U + b), act in {"tanh", "relu"}."""
    hidden: int
    activation: str = "tanh"

    def __post_init__(self):
        _check_hidden(self.hidden)
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {self.activation!r}")


@dataclass(frozen=True)
class LSTM:
    """LSTM with TF LSTMCell semantics (gate order i, j, f, o); see DESIGN.md §3."""
    hidden: int
    forget_bias: float = 1.0

    def __post_init__(self):
        _check_hidden(self.hidden)
        if not isinstance(self.forget_bias, (int, float)) or self.forget_bias != self.forget_bias:
            raise ValueError(f"forget_bias must be a number, got {self.forget_bias!r}")


@dataclass(frozen=True)
class GRU:
    """GRU: reset_after=False is TF GRUCell, reset_after=True the PyTorch/cuDNN form."""
    hidden: int
    reset_after: bool = False

    def __post_init__(self):
        _check_hidden(self.hidden)
        if not isinstance(self.reset_after, bool):
            raise ValueError(f"reset_after must be True or False, got {self.reset_after!r}")


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

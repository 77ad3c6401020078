"""One direction of one recurrent layer: owns its parameter views and workspaces,
allocates, and calls the kernels. All arrays here are time-major (T, B, ...).

The model validates user input; a layer trusts its caller.
"""
import numpy as np

from . import cells
from .kernels.gru import gru_backward, gru_forward, gru_ra_backward, gru_ra_forward
from .kernels.lstm import lstm_backward, lstm_forward
from .kernels.rnn import rnn_backward, rnn_forward
from .params import glorot_uniform, orthogonal_blocks


class Recurrent:
    """Base class. Subclasses declare ``state_names``, ``param_shapes()``,
    ``initialise(rng)``, ``_workspaces(T, B)``, ``_forward`` and ``_backward``."""

    state_names = ("h",)

    def __init__(self, spec, input_size, dtype):
        self.spec = spec
        self.input_size = input_size
        self.hidden = spec.hidden
        self.dtype = dtype
        self._shape = None          # (T, B) the workspaces were allocated for
        self.ws = {}

    @property
    def output_size(self):
        """Features of the output and of the recurrent state h (LSTM: proj or hidden)."""
        return self.spec.output_size

    @property
    def state_sizes(self):
        """{state name: size}: h is output_size, an LSTM's c is hidden."""
        return {name: (self.hidden if name == "c" else self.output_size) for name in self.state_names}

    def bind(self, params, grads):
        """params, grads: {short name: view} into the model's flat buffers."""
        self.p, self.g = params, grads

    def _ensure_workspaces(self, T, B):
        if self._shape != (T, B):
            self.ws = {name: np.zeros(shape, self.dtype) for name, shape in self._workspaces(T, B).items()}
            self._shape = (T, B)
        return self.ws

    def forward(self, x, lengths, state0, state_mask=None):
        """x: (T, B, F); state0: {state name: (B, size)}; state_mask: None or
        (T, B, R) dropout mask of the state passed from step t to t+1.
        Returns y (T, B, R); saves what backward needs. ``final_state()`` gives
        the state after each length."""
        T, B, _ = x.shape
        ws = self._ensure_workspaces(T, B)
        ws["h"][0] = state0["h"]
        if "c" in self.state_names:
            ws["c"][0] = state0["c"]
        self.x, self.lengths = x, lengths
        self._forward(ws, x, lengths)
        return ws["y"]

    def final_state(self):
        return {name: self.ws[name][-1].copy() for name in self.state_names}

    def backward(self, dy, dstate_T, need_dx):
        """dy: (T, B, H); dstate_T: {state name: (B, H)} gradient of the final state.
        Accumulates parameter gradients into the grads views. Returns (dx or None,
        {state name: dL/d initial state})."""
        T, B, F = self.x.shape
        dx = np.zeros((T, B, F), self.dtype) if need_dx else np.zeros((1, 1, 1), self.dtype)
        dstate0 = {name: np.zeros((B, size), self.dtype) for name, size in self.state_sizes.items()}
        self._backward(dx, dstate0, dy, dstate_T, need_dx)
        return (dx if need_dx else None), dstate0


class RNNLayer(Recurrent):
    def param_shapes(self):
        F, H = self.input_size, self.hidden
        return {"W": (F, H), "U": (H, H), "b": (H,)}

    def initialise(self, rng):
        self.p["W"][:] = glorot_uniform(rng, self.p["W"].shape, self.dtype)
        self.p["U"][:] = orthogonal_blocks(rng, self.hidden, self.hidden, self.dtype)
        self.p["b"][:] = 0.0

    def _workspaces(self, T, B):
        H = self.hidden
        return {"y": (T, B, H), "h": (T + 1, B, H), "z": (T, B, H), "rec": (B, H),
                "dz": (T, B, H), "dh_carry": (B, H), "dh_rec": (B, H)}

    def _forward(self, ws, x, lengths):
        p = self.p
        rnn_forward(ws["y"], ws["h"], x, p["W"], p["U"], p["b"], lengths, self.spec.activation == "relu",
                    ws["z"], ws["rec"])

    def _backward(self, dx, dstate0, dy, dstate_T, need_dx):
        p, g, ws = self.p, self.g, self.ws
        rnn_backward(dx, dstate0["h"], g["W"], g["U"], g["b"], dy, dstate_T["h"], ws["h"], self.x,
                     p["W"], p["U"], self.lengths, self.spec.activation == "relu", need_dx,
                     ws["dz"], ws["dh_carry"], ws["dh_rec"])


class LSTMLayer(Recurrent):
    state_names = ("c", "h")

    def param_shapes(self):
        F, H = self.input_size, self.hidden
        return {"W": (F, 4 * H), "U": (H, 4 * H), "b": (4 * H,)}

    def initialise(self, rng):
        self.p["W"][:] = glorot_uniform(rng, self.p["W"].shape, self.dtype)
        self.p["U"][:] = orthogonal_blocks(rng, self.hidden, 4 * self.hidden, self.dtype)
        self.p["b"][:] = 0.0       # forget_bias is added inside the cell, as in TF

    def _workspaces(self, T, B):
        H = self.hidden
        return {"y": (T, B, H), "h": (T + 1, B, H), "c": (T + 1, B, H), "tanh_c": (T, B, H),
                "gates": (T, B, 4 * H), "rec": (B, 4 * H),
                "dz": (T, B, 4 * H), "dh_carry": (B, H), "dh_rec": (B, H)}

    def _forward(self, ws, x, lengths):
        p = self.p
        lstm_forward(ws["y"], ws["h"], ws["c"], ws["tanh_c"], ws["gates"], x, p["W"], p["U"], p["b"],
                     lengths, float(self.spec.forget_bias), ws["rec"])

    def _backward(self, dx, dstate0, dy, dstate_T, need_dx):
        p, g, ws = self.p, self.g, self.ws
        lstm_backward(dx, dstate0["h"], dstate0["c"], g["W"], g["U"], g["b"], dy, dstate_T["h"],
                      dstate_T["c"], ws["h"], ws["c"], ws["tanh_c"], ws["gates"], self.x, p["W"], p["U"],
                      self.lengths, need_dx, ws["dz"], ws["dh_carry"], ws["dh_rec"])


class GRULayer(Recurrent):
    """TF GRUCell (reset_after=False)."""

    def param_shapes(self):
        F, H = self.input_size, self.hidden
        return {"W_g": (F, 2 * H), "U_g": (H, 2 * H), "b_g": (2 * H,),
                "W_c": (F, H), "U_c": (H, H), "b_c": (H,)}

    def initialise(self, rng):
        H = self.hidden
        self.p["W_g"][:] = glorot_uniform(rng, self.p["W_g"].shape, self.dtype)
        self.p["U_g"][:] = orthogonal_blocks(rng, H, 2 * H, self.dtype)
        self.p["b_g"][:] = 1.0     # TF GRUCell: gates start open (no reset, half keep)
        self.p["W_c"][:] = glorot_uniform(rng, self.p["W_c"].shape, self.dtype)
        self.p["U_c"][:] = orthogonal_blocks(rng, H, H, self.dtype)
        self.p["b_c"][:] = 0.0

    def _workspaces(self, T, B):
        H = self.hidden
        return {"y": (T, B, H), "h": (T + 1, B, H), "gates": (T, B, 2 * H), "cand": (T, B, H),
                "rh": (T, B, H), "rec_g": (B, 2 * H), "rec_c": (B, H),
                "dz_g": (T, B, 2 * H), "dz_c": (T, B, H), "dh_carry": (B, H), "dh_rec": (B, H),
                "d_rh": (B, H)}

    def _forward(self, ws, x, lengths):
        p = self.p
        gru_forward(ws["y"], ws["h"], ws["gates"], ws["cand"], ws["rh"], x, p["W_g"], p["U_g"], p["b_g"],
                    p["W_c"], p["U_c"], p["b_c"], lengths, ws["rec_g"], ws["rec_c"])

    def _backward(self, dx, dstate0, dy, dstate_T, need_dx):
        p, g, ws = self.p, self.g, self.ws
        gru_backward(dx, dstate0["h"], g["W_g"], g["U_g"], g["b_g"], g["W_c"], g["U_c"], g["b_c"], dy,
                     dstate_T["h"], ws["h"], ws["gates"], ws["cand"], ws["rh"], self.x,
                     p["W_g"], p["U_g"], p["W_c"], p["U_c"], self.lengths, need_dx,
                     ws["dz_g"], ws["dz_c"], ws["dh_carry"], ws["dh_rec"], ws["d_rh"])


class GRUResetAfterLayer(Recurrent):
    """PyTorch / cuDNN GRU (reset_after=True)."""

    def param_shapes(self):
        F, H = self.input_size, self.hidden
        return {"W": (F, 3 * H), "U": (H, 3 * H), "b_x": (3 * H,), "b_h": (3 * H,)}

    def initialise(self, rng):
        self.p["W"][:] = glorot_uniform(rng, self.p["W"].shape, self.dtype)
        self.p["U"][:] = orthogonal_blocks(rng, self.hidden, 3 * self.hidden, self.dtype)
        self.p["b_x"][:] = 0.0
        self.p["b_h"][:] = 0.0

    def _workspaces(self, T, B):
        H = self.hidden
        return {"y": (T, B, H), "h": (T + 1, B, H), "gates": (T, B, 3 * H), "q_c": (T, B, H),
                "rec": (B, 3 * H), "da": (T, B, 3 * H), "dq": (T, B, 3 * H),
                "dh_carry": (B, H), "dh_rec": (B, H)}

    def _forward(self, ws, x, lengths):
        p = self.p
        gru_ra_forward(ws["y"], ws["h"], ws["gates"], ws["q_c"], x, p["W"], p["U"], p["b_x"], p["b_h"],
                       lengths, ws["rec"])

    def _backward(self, dx, dstate0, dy, dstate_T, need_dx):
        p, g, ws = self.p, self.g, self.ws
        gru_ra_backward(dx, dstate0["h"], g["W"], g["U"], g["b_x"], g["b_h"], dy, dstate_T["h"], ws["h"],
                        ws["gates"], ws["q_c"], self.x, p["W"], p["U"], self.lengths, need_dx,
                        ws["da"], ws["dq"], ws["dh_carry"], ws["dh_rec"])


def make_layer(spec, input_size, dtype):
    """The layer class for a spec."""
    if isinstance(spec, cells.RNN):
        return RNNLayer(spec, input_size, dtype)
    if isinstance(spec, cells.LSTM):
        return LSTMLayer(spec, input_size, dtype)
    if isinstance(spec, cells.GRU):
        cls = GRUResetAfterLayer if spec.reset_after else GRULayer
        return cls(spec, input_size, dtype)
    raise ValueError(f"layers must be nr.RNN, nr.LSTM or nr.GRU specs, got {spec!r}")

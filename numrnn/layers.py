"""One direction of one recurrent layer: owns its parameter views and workspaces,
allocates, and calls the kernels. All arrays here are time-major (T, B, ...).

The model validates user input; a layer trusts its caller.
"""
import numpy as np

from . import cells
from .kernels.gru import gru_backward, gru_forward, gru_ra_backward, gru_ra_forward
from .kernels.lstm import lstm_backward, lstm_forward
from .kernels.rnn import rnn_backward, rnn_forward
from .memory import workspace_arrays
from .params import glorot_uniform, orthogonal_blocks
from .threads import slabs_for


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
            self.ws = workspace_arrays(self._workspaces(T, B), self.dtype)
            self._shape = (T, B)
        return self.ws

    def forward(self, x, lengths, state0, state_mask=None):
        """x: (T, B, F); state0: {state name: (B, size)}; state_mask: None or
        (T, B, R) dropout mask of the state passed from step t to t+1.
        Returns y (T, B, R); saves what backward needs. ``final_state()`` gives
        the state after each length."""
        T, B, _ = x.shape
        ws = self._ensure_workspaces(T, B)
        for name in self.state_names:
            ws[name][0] = state0[name]
        if state_mask is None:      # no state dropout: one step of ones
            state_mask = np.ones((1, B, self.output_size), self.dtype)
        self.x, self.lengths, self.state_mask = x, lengths, state_mask
        self.n_slabs = slabs_for(B)     # one per thread; 1 (the serial build) for a small batch
        self._forward(ws, x, lengths)
        return ws["y"]

    def final_state(self):
        return {name: self.ws[name][-1].copy() for name in self.state_names}

    def backward(self, dy, dstate_T, need_dx):
        """dy: (T, B, R); dstate_T: {state name: (B, size)} gradient of the final state.
        Accumulates parameter gradients into the grads views. Returns (dx or None,
        {state name: dL/d initial state})."""
        T, B, F = self.x.shape
        dx = np.empty((T, B, F), self.dtype) if need_dx else np.zeros((1, 1, 1), self.dtype)    # the kernel writes it
        dstate0 = {name: np.zeros((B, size), self.dtype) for name, size in self.state_sizes.items()}
        self._backward(dx, dstate0, dy, dstate_T, need_dx)
        return (dx if need_dx else None), dstate0

    def _stacked(self, names, rows):
        """(len(names), H) copy of per-gate vectors for a kernel, or (0, H) when the
        option is off (rows False): peepholes, layer-norm gains and shifts."""
        if not rows:
            return np.zeros((0, self.hidden), self.dtype)
        return np.stack([self.p[n] for n in names])

    def _add_stacked(self, names, grads):
        for n, g in zip(names, grads):
            self.g[n] += g

    def _empty_bias(self):
        return np.zeros(0, self.dtype)


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
                "dz": (B, H), "dh_carry": (B, H), "dh_rec": (B, H)}

    def _forward(self, ws, x, lengths):
        p = self.p
        rnn_forward(ws["y"], ws["h"], x, p["W"], p["U"], p["b"], self.state_mask, lengths,
                    self.spec.activation == "relu", ws["z"], ws["rec"], self.n_slabs)

    def _backward(self, dx, dstate0, dy, dstate_T, need_dx):
        p, g, ws = self.p, self.g, self.ws
        rnn_backward(dx, dstate0["h"], g["W"], g["U"], g["b"], dy, dstate_T["h"], ws["y"], ws["h"], self.x,
                     p["W"], p["U"], self.state_mask, self.lengths, self.spec.activation == "relu", need_dx,
                     ws["dz"], ws["dh_carry"], ws["dh_rec"], self.n_slabs)


LSTM_PEEPHOLES = ("p_i", "p_f", "p_o")
LSTM_LN_GAINS = ("ln_i.gain", "ln_j.gain", "ln_f.gain", "ln_o.gain", "ln_c.gain")
LSTM_LN_SHIFTS = ("ln_i.shift", "ln_j.shift", "ln_f.shift", "ln_o.shift", "ln_c.shift")


class LSTMLayer(Recurrent):
    """LSTM with every TF option; the state is (c, h) with h = r_t (proj or hidden wide)."""

    state_names = ("c", "h")

    def param_shapes(self):
        F, H, R, spec = self.input_size, self.hidden, self.output_size, self.spec
        shapes = {"W": (F, 4 * H), "U": (R, 4 * H)}
        if not spec.layer_norm:
            shapes["b"] = (4 * H,)
        if spec.peepholes:
            shapes.update({n: (H,) for n in LSTM_PEEPHOLES})
        if spec.proj:
            shapes["P"] = (H, spec.proj)
        if spec.layer_norm:     # gains then shifts
            shapes.update({n: (H,) for n in LSTM_LN_GAINS + LSTM_LN_SHIFTS})
        return shapes

    def initialise(self, rng):
        """W Glorot, U orthogonal per gate, b 0 (forget_bias is added inside the
        cell, as in TF) or chrono's, peepholes 0, P Glorot, layer-norm gains 1 and shifts 0."""
        H, p = self.hidden, self.p
        p["W"][:] = glorot_uniform(rng, p["W"].shape, self.dtype)
        p["U"][:] = orthogonal_blocks(rng, self.output_size, 4 * H, self.dtype, width=H)
        for name in ("b",) + LSTM_PEEPHOLES + LSTM_LN_SHIFTS:
            if name in p:
                p[name][:] = 0.0
        if "P" in p:
            p["P"][:] = glorot_uniform(rng, p["P"].shape, self.dtype)
        for name in LSTM_LN_GAINS:
            if name in p:
                p[name][:] = 1.0
        if self.spec.chrono is not None:
            # Chrono initialisation (cells.LSTM): gate blocks i, j, f, o.
            log_u = np.log(rng.uniform(1.0, self.spec.chrono - 1.0, H))
            p["b"][0:H] = -log_u
            p["b"][2 * H:3 * H] = log_u - self.spec.forget_bias

    def _workspaces(self, T, B):
        H, R, spec = self.hidden, self.output_size, self.spec
        ln = 5 if spec.layer_norm else 0
        return {"y": (T, B, R), "h": (T + 1, B, R), "c": (T + 1, B, H), "gates": (T, B, 4 * H),
                "tanh_c": (T, B, H), "m": (T, B, H if spec.proj else 0),
                "c_pre": (T, B, H if spec.cell_clip else 0), "r_pre": (T, B, R if spec.proj_clip else 0),
                "ln_hat": (T, B, ln * H), "ln_rstd": (T, B, ln), "rec": (B, 4 * H),
                "dz": (B, 4 * H), "dr": (B, R if spec.proj else 0), "dm": (B, H),
                "dr_carry": (B, R), "dr_rec": (B, R),
                "dpeep_rows": (B, 3 if spec.peepholes else 0, H),
                "dln_gain_rows": (B, ln, H), "dln_shift_rows": (B, ln, H)}

    def _packed(self):
        """Per-gate vectors stacked for the kernel, and the option scalars (in the
        model's dtype, so that float32 arithmetic stays float32)."""
        spec = self.spec
        P = self.p["P"] if spec.proj else np.zeros((0, 0), self.dtype)
        if spec.peepholes or spec.layer_norm:
            peep, ln_gain, ln_shift = (self._stacked(LSTM_PEEPHOLES, spec.peepholes),
                                       self._stacked(LSTM_LN_GAINS, spec.layer_norm),
                                       self._stacked(LSTM_LN_SHIFTS, spec.layer_norm))
        else:
            # None: the kernels' build without the code of either (kernels/lstm.py). Any
            # other LSTM shares the build that has it.
            peep = ln_gain = ln_shift = None
        return (peep, P, ln_gain, ln_shift, self.dtype.type(spec.cell_clip or 0.0),
                self.dtype.type(spec.proj_clip or 0.0))

    def _forward(self, ws, x, lengths):
        p, spec = self.p, self.spec
        peep, P, ln_gain, ln_shift, cell_clip, proj_clip = self._packed()
        b = self._empty_bias() if spec.layer_norm else p["b"]
        lstm_forward(ws["y"], ws["h"], ws["c"], ws["gates"], ws["tanh_c"], ws["m"], ws["c_pre"], ws["r_pre"],
                     ws["ln_hat"], ws["ln_rstd"], x, p["W"], p["U"], b, peep, P, ln_gain, ln_shift,
                     self.state_mask, lengths, self.dtype.type(spec.forget_bias), cell_clip, proj_clip, ws["rec"],
                     self.n_slabs)

    def _backward(self, dx, dstate0, dy, dstate_T, need_dx):
        p, g, ws, spec = self.p, self.g, self.ws, self.spec
        peep, P, ln_gain, _, cell_clip, proj_clip = self._packed()
        db = self._empty_bias() if spec.layer_norm else g["b"]
        dP = g["P"] if spec.proj else np.zeros((0, 0), self.dtype)
        # The kernel sums each row's share (the *_rows workspaces) into these.
        dpeep = np.zeros(ws["dpeep_rows"].shape[1:], self.dtype)
        dln_gain, dln_shift = (np.zeros(ws["dln_gain_rows"].shape[1:], self.dtype) for _ in range(2))
        lstm_backward(dx, dstate0["h"], dstate0["c"], g["W"], g["U"], db, dpeep, dP, dln_gain, dln_shift,
                      dy, dstate_T["h"], dstate_T["c"], ws["h"], ws["c"], ws["gates"], ws["tanh_c"], ws["m"],
                      ws["c_pre"], ws["r_pre"], ws["ln_hat"], ws["ln_rstd"], self.x, p["W"], p["U"], peep, P,
                      ln_gain, self.state_mask, self.lengths, cell_clip, proj_clip, need_dx,
                      ws["dz"], ws["dr"], ws["dm"], ws["dr_carry"], ws["dr_rec"], ws["dpeep_rows"],
                      ws["dln_gain_rows"], ws["dln_shift_rows"], self.n_slabs)
        if spec.peepholes:
            self._add_stacked(LSTM_PEEPHOLES, dpeep)
        if spec.layer_norm:
            self._add_stacked(LSTM_LN_GAINS, dln_gain)
            self._add_stacked(LSTM_LN_SHIFTS, dln_shift)


GRU_LN_GAINS = ("ln_r.gain", "ln_u.gain", "ln_c.gain")
GRU_LN_SHIFTS = ("ln_r.shift", "ln_u.shift", "ln_c.shift")


class GRULayer(Recurrent):
    """TF GRUCell (reset_after=False), optionally layer-normalised."""

    def param_shapes(self):
        F, H = self.input_size, self.hidden
        if self.spec.layer_norm:     # no biases: the shifts take their place
            return {"W_g": (F, 2 * H), "U_g": (H, 2 * H), "W_c": (F, H), "U_c": (H, H),
                    **{n: (H,) for n in GRU_LN_GAINS + GRU_LN_SHIFTS}}
        return {"W_g": (F, 2 * H), "U_g": (H, 2 * H), "b_g": (2 * H,),
                "W_c": (F, H), "U_c": (H, H), "b_c": (H,)}

    def initialise(self, rng):
        H, p = self.hidden, self.p
        p["W_g"][:] = glorot_uniform(rng, p["W_g"].shape, self.dtype)
        p["U_g"][:] = orthogonal_blocks(rng, H, 2 * H, self.dtype)
        p["W_c"][:] = glorot_uniform(rng, p["W_c"].shape, self.dtype)
        p["U_c"][:] = orthogonal_blocks(rng, H, H, self.dtype)
        if self.spec.layer_norm:
            for name in GRU_LN_GAINS:
                p[name][:] = 1.0
            for name in GRU_LN_SHIFTS:
                p[name][:] = 0.0
        else:
            p["b_g"][:] = 1.0      # TF GRUCell: gates start open (no reset, half keep)
            p["b_c"][:] = 0.0

    def _workspaces(self, T, B):
        H = self.hidden
        ln = 3 if self.spec.layer_norm else 0
        return {"y": (T, B, H), "h": (T + 1, B, H), "gates": (T, B, 2 * H), "cand": (T, B, H),
                "rh": (T, B, H), "ln_hat": (T, B, ln * H), "ln_rstd": (T, B, ln),
                "rec_g": (B, 2 * H), "rec_c": (B, H),
                "dz_g": (B, 2 * H), "dz_c": (B, H), "dh_carry": (B, H), "dh_rec": (B, H),
                "d_rh": (B, H), "dln_gain_rows": (B, ln, H), "dln_shift_rows": (B, ln, H)}

    def _biases(self, params):
        if self.spec.layer_norm:
            return self._empty_bias(), self._empty_bias()
        return params["b_g"], params["b_c"]

    def _forward(self, ws, x, lengths):
        p, ln = self.p, self.spec.layer_norm
        b_g, b_c = self._biases(p)
        gru_forward(ws["y"], ws["h"], ws["gates"], ws["cand"], ws["rh"], ws["ln_hat"], ws["ln_rstd"], x,
                    p["W_g"], p["U_g"], b_g, p["W_c"], p["U_c"], b_c, self._stacked(GRU_LN_GAINS, ln),
                    self._stacked(GRU_LN_SHIFTS, ln), self.state_mask, lengths, ws["rec_g"], ws["rec_c"],
                    self.n_slabs)

    def _backward(self, dx, dstate0, dy, dstate_T, need_dx):
        p, g, ws, ln = self.p, self.g, self.ws, self.spec.layer_norm
        db_g, db_c = self._biases(g)
        ln_gain = self._stacked(GRU_LN_GAINS, ln)
        dln_gain, dln_shift = np.zeros_like(ln_gain), np.zeros_like(ln_gain)
        gru_backward(dx, dstate0["h"], g["W_g"], g["U_g"], db_g, g["W_c"], g["U_c"], db_c, dln_gain, dln_shift,
                     dy, dstate_T["h"], ws["h"], ws["gates"], ws["cand"], ws["rh"], ws["ln_hat"], ws["ln_rstd"],
                     self.x, p["W_g"], p["U_g"], p["W_c"], p["U_c"], ln_gain, self.state_mask, self.lengths,
                     need_dx, ws["dz_g"], ws["dz_c"], ws["dh_carry"], ws["dh_rec"], ws["d_rh"],
                     ws["dln_gain_rows"], ws["dln_shift_rows"], self.n_slabs)
        if ln:
            self._add_stacked(GRU_LN_GAINS, dln_gain)
            self._add_stacked(GRU_LN_SHIFTS, dln_shift)


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
                "rec": (B, 3 * H), "da": (B, 3 * H), "dq": (B, 3 * H),
                "dh_carry": (B, H), "dh_rec": (B, H)}

    def _forward(self, ws, x, lengths):
        p = self.p
        gru_ra_forward(ws["y"], ws["h"], ws["gates"], ws["q_c"], x, p["W"], p["U"], p["b_x"], p["b_h"],
                       self.state_mask, lengths, ws["rec"], self.n_slabs)

    def _backward(self, dx, dstate0, dy, dstate_T, need_dx):
        p, g, ws = self.p, self.g, self.ws
        gru_ra_backward(dx, dstate0["h"], g["W"], g["U"], g["b_x"], g["b_h"], dy, dstate_T["h"], ws["h"],
                        ws["gates"], ws["q_c"], self.x, p["W"], p["U"], self.state_mask, self.lengths, need_dx,
                        ws["da"], ws["dq"], ws["dh_carry"], ws["dh_rec"], self.n_slabs)


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

"""LSTM over a whole sequence, TF LSTMCell semantics, gate order i, j, f, o.

    z = x_t W + h_{t-1} U + b ;  i, j, f, o = split(z, 4)
    c_t = σ(f + forget_bias) c_{t-1} + σ(i) tanh(j)
    h_t = σ(o) tanh(c_t)

Time-major throughout. Steps at t >= lengths[b] output 0 and carry (c, h)
unchanged, so c[T], h[T] are each sequence's final state.
"""
from numba import prange
import numpy as np

from .common import (accumulate_bias_grads, accumulate_input_grads, accumulate_weight_grads,
                     add_into, input_projection, jit, kernel, sigmoid, tanh)


@jit
def _lstm_step_forward(y, h_new, c_new, tanh_c, gates, rec, h_prev, c_prev, valid, forget_bias):
    """One row of one step. gates holds x W + b on entry and the activations
    σ(i), tanh(j), σ(f), σ(o) on exit (0 when padded)."""
    H = h_prev.shape[0]
    for k in range(H):
        if not valid:
            gates[k] = gates[H + k] = gates[2 * H + k] = gates[3 * H + k] = 0.0
            c_new[k] = c_prev[k]
            h_new[k] = h_prev[k]
            tanh_c[k] = 0.0
            y[k] = 0.0
            continue
        i = sigmoid(gates[k] + rec[k])
        j = tanh(gates[H + k] + rec[H + k])
        f = sigmoid(gates[2 * H + k] + rec[2 * H + k] + forget_bias)
        o = sigmoid(gates[3 * H + k] + rec[3 * H + k])
        gates[k], gates[H + k], gates[2 * H + k], gates[3 * H + k] = i, j, f, o
        c_new[k] = f * c_prev[k] + i * j
        tanh_c[k] = tanh(c_new[k])
        h_new[k] = o * tanh_c[k]
        y[k] = h_new[k]


@kernel
def lstm_forward(y, h, c, tanh_c, gates, x, W, U, b, lengths, forget_bias, rec):
    """Forward pass over a whole sequence.

    Args:
        y: (T, B, H) out: outputs, 0 at padded steps.
        h, c: (T+1, B, H) in/out: [0] is the initial state (filled by the caller),
            [t+1] the state after step t.
        tanh_c: (T, B, H) out: tanh(c_t), saved for backward.
        gates: (T, B, 4H) out: σ(i), tanh(j), σ(f), σ(o), saved for backward.
        x: (T, B, F) inputs.  W: (F, 4H), U: (H, 4H), b: (4H,) parameters.
        lengths: (B,) int, 0 <= lengths[b] <= T.
        rec: (B, 4H) workspace for h_{t-1} U.

    Notes:
        tf.compat.v1.nn.rnn_cell.LSTMCell / BasicLSTMCell; with forget_bias=0 it
        is torch.nn.LSTM with gates reordered (PyTorch: i, f, g, o).
    """
    T, B, _ = x.shape
    input_projection(gates, x, W, b)
    for t in range(T):
        np.dot(h[t], U, rec)
        for row in prange(B):
            _lstm_step_forward(y[t, row], h[t + 1, row], c[t + 1, row], tanh_c[t, row], gates[t, row],
                               rec[row], h[t, row], c[t, row], t < lengths[row], forget_bias)


@jit
def _lstm_step_backward(dz, dh_carry, dc, dh_rec, dy, gates, tanh_c, c_prev, valid):
    """One row of one step. On entry dh_carry + dh_rec (+ dy) is dL/dh_t and dc
    is dL/dc_t from step t+1; on exit dz = dL/dz_t, dc = dL/dc_{t-1}, and
    dh_carry the part of dL/dh_{t-1} that does not go through U."""
    H = c_prev.shape[0]
    for k in range(H):
        g = dh_carry[k] + dh_rec[k]
        if not valid:
            dz[k] = dz[H + k] = dz[2 * H + k] = dz[3 * H + k] = 0.0
            dh_carry[k] = g
            continue
        g += dy[k]
        i, j, f, o = gates[k], gates[H + k], gates[2 * H + k], gates[3 * H + k]
        dct = dc[k] + g * o * (1.0 - tanh_c[k] * tanh_c[k])
        dz[k] = dct * j * i * (1.0 - i)
        dz[H + k] = dct * i * (1.0 - j * j)
        dz[2 * H + k] = dct * c_prev[k] * f * (1.0 - f)
        dz[3 * H + k] = g * tanh_c[k] * o * (1.0 - o)
        dc[k] = dct * f
        dh_carry[k] = 0.0


@kernel
def lstm_backward(dx, dh0, dc0, dW, dU, db, dy, dhT, dcT, h, c, tanh_c, gates, x, W, U, lengths, need_dx,
                  dz, dh_carry, dh_rec):
    """Backpropagation through time. Accumulates (+=) into dx, dW, dU, db; writes dh0, dc0.

    Args:
        dx: (T, B, F) += dL/dx, only when need_dx.  dh0, dc0: (B, H) out.
        dW (F, 4H), dU (H, 4H), db (4H,): parameter gradients.
        dy: (T, B, H) dL/dy.  dhT, dcT: (B, H) dL/d(final state).
        h, c, tanh_c, gates: saved by lstm_forward.  x, W, U, lengths: as forward.
        dz: (T, B, 4H), dh_carry, dh_rec: (B, H) workspaces.
    """
    T, B, _ = x.shape
    dh_carry[:] = dhT
    dc0[:] = dcT                       # running dL/dc, ends as dL/dc[0]
    dh_rec[:] = 0.0
    for t in range(T - 1, -1, -1):
        for row in prange(B):
            _lstm_step_backward(dz[t, row], dh_carry[row], dc0[row], dh_rec[row], dy[t, row],
                                gates[t, row], tanh_c[t, row], c[t, row], t < lengths[row])
        np.dot(dz[t], U.T, dh_rec)
    dh0[:] = dh_carry
    add_into(dh0, dh_rec)
    accumulate_weight_grads(dW, x, dz)
    accumulate_weight_grads(dU, h[:T], dz)
    accumulate_bias_grads(db, dz)
    if need_dx:
        accumulate_input_grads(dx, dz, W)

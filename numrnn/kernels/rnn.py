"""Vanilla RNN over a whole sequence: h_t = act(x_t W + h_{t-1} U + b).

With state dropout the state passed to step t+1 is h_t times that step's mask;
the output is h_t itself. Time-major throughout. Steps at t >= lengths[b] output 0 and carry the state
unchanged, so h[T] is each sequence's final state (the initial state when its
length is 0).
"""
from numba import prange

from .activations import tanh_into
from .common import (ONE, ZERO, add_column_sums, add_into, add_slab_sums, copy_into, copy_rows, flush_subnormals,
                     input_projection, jit, kernel, mask_row, project_step, relu, restore_fp_mode, slab,
                     slab_partials, slab_share)
from .gemm import matmul, matmul_add, pack


@jit
def _rnn_step_forward(y, h_new, z, rec, h_prev, mask, valid, use_relu):
    """One row of one step: y = act(z + rec), h_new = y * mask; padded: y = 0, h carried."""
    H = h_prev.shape[0]
    if not valid:
        copy_into(h_new, h_prev)
        y[:] = 0.0
        return
    for k in range(H):
        y[k] = z[k] + rec[k]
    if use_relu:
        for k in range(H):
            y[k] = relu(y[k])
    else:
        tanh_into(y, y)
    for k in range(H):
        h_new[k] = y[k] * mask[k]


@kernel
def rnn_forward(y, h, x, W, U, b, state_mask, lengths, use_relu, z, rec, n_slabs):
    """Forward pass over a whole sequence.

    Args:
        y: (T, B, H) out: outputs, 0 at padded steps.
        h: (T+1, B, H) in/out: h[0] is the initial state (filled by the caller),
            h[t+1] the state after step t; saved for the backward pass.
        x: (T, B, F) inputs.
        W: (F, H), U: (H, H), b: (H,) parameters.
        state_mask: (T, B, H) state-dropout mask, or (1, B, H).
        lengths: (B,) int, 0 <= lengths[b] <= T.
        use_relu: relu instead of tanh.
        z: (T, B, H) workspace for x W + b.  rec: (B, H) workspace for h U.
        n_slabs: row slabs, one per Numba thread (common.slab).

    Notes:
        Elman network; PyTorch ``nn.RNN(nonlinearity='tanh'|'relu')``.
    """
    T, B, _ = x.shape
    packed_W, packed_U = pack(W, T * B), pack(U, T * B)    # for matmul, once per sequence
    for s in prange(n_slabs):
        lo, hi = slab(s, n_slabs, B)
        if hi == lo:
            continue
        mode = flush_subnormals()
        for t in range(T):
            project_step(z[t, lo:hi], x[t, lo:hi], W, packed_W, b)
            matmul(h[t, lo:hi], U, packed_U, rec[lo:hi])
            for row in range(lo, hi):
                _rnn_step_forward(y[t, row], h[t + 1, row], z[t, row], rec[row], h[t, row],
                                  mask_row(state_mask, t, row), t < lengths[row], use_relu)
        restore_fp_mode(mode)


@jit
def _rnn_step_backward(dz, dh_carry, dh_rec, dy, y, mask, valid, use_relu):
    """One row of one step. On entry dh_carry + dh_rec (+ dy) is dL/dh_t; on exit
    dz = dL/d(pre-activation) and dh_carry is the part of dL/dh_{t-1} that does
    not go through U: all of it at padded steps, where the state was copied."""
    H = y.shape[0]
    for k in range(H):
        g = dh_carry[k] + dh_rec[k]
        if not valid:
            dz[k] = 0.0
            dh_carry[k] = g
            continue
        g = g * mask[k] + dy[k]
        if use_relu:
            dz[k] = g if y[k] > ZERO else ZERO
        else:
            dz[k] = g * (ONE - y[k] * y[k])
        dh_carry[k] = 0.0


@kernel
def rnn_backward(dx, dh0, dW, dU, db, dy, dhT, y, h, x, W, U, state_mask, lengths, use_relu, need_dx,
                 dz, dh_carry, dh_rec, n_slabs):
    """Backpropagation through time. Accumulates (+=) into dW, dU, db; writes dx and dh0.

    Args:
        dx: (T, B, F) out: dL/dx, only when need_dx.  dh0: (B, H) out: dL/dh[0].
        dW (F, H), dU (H, H), db (H,): parameter gradients.
        dy: (T, B, H) dL/dy.  dhT: (B, H) dL/d(final state).
        y, h: outputs and states saved by rnn_forward.
        x, W, U, state_mask, lengths, use_relu: as forward.
        dz: (B, H), dh_carry, dh_rec: (B, H) workspaces.
        n_slabs: row slabs, one per Numba thread (common.slab).
    """
    T, B, _ = x.shape
    packed_U_T, packed_W_T = pack(U.T, T * B), pack(W.T, T * B if need_dx else 0)    # for matmul, once per sequence
    dW_slabs, dU_slabs, db_slabs = slab_partials(dW, n_slabs), slab_partials(dU, n_slabs), slab_partials(db, n_slabs)
    copy_rows(dh_carry, dhT)
    dh_rec[:] = 0.0
    for s in prange(n_slabs):
        lo, hi = slab(s, n_slabs, B)
        if hi == lo:
            continue
        mode = flush_subnormals()
        for t in range(T - 1, -1, -1):
            for row in range(lo, hi):
                _rnn_step_backward(dz[row], dh_carry[row], dh_rec[row], dy[t, row], y[t, row],
                                   mask_row(state_mask, t, row), t < lengths[row], use_relu)
            matmul(dz[lo:hi], U.T, packed_U_T, dh_rec[lo:hi])
            # This step's share of the weight gradients (common.slab_partials, slab_share), and dx.
            matmul_add(x[t, lo:hi].T, dz[lo:hi], None, slab_share(dW, dW_slabs, s))
            matmul_add(h[t, lo:hi].T, dz[lo:hi], None, slab_share(dU, dU_slabs, s))
            add_column_sums(slab_share(db, db_slabs, s), dz[lo:hi])
            if need_dx:
                matmul(dz[lo:hi], W.T, packed_W_T, dx[t, lo:hi])
        restore_fp_mode(mode)
    copy_rows(dh0, dh_carry)
    add_into(dh0, dh_rec)
    add_slab_sums(dW, dW_slabs)
    add_slab_sums(dU, dU_slabs)
    add_slab_sums(db, db_slabs)


# ---------------------------------------------------------------- forward only (inference)

@kernel
def rnn_infer(y, h, x, W, U, b, lengths, t0, use_relu, z, rec, ones, n_slabs):
    """Forward only over a chunk of steps, keeping one step of state: the same
    step function as rnn_forward, without the (T+1, B, H) state history.

    Args:
        y: (T, B, H) out: outputs of the chunk, 0 at padded steps.
        h: (2, B, H) in/out: h[0] the state on entry and on exit; h[1] scratch
            (the state alternates between the two rows from step to step).
        x: (T, B, F) inputs of the chunk, whose first step is step t0 of the sequence.
        W, U, b: as rnn_forward.  lengths: (B,) int; step t0 + t of row b is valid
            when t0 + t < lengths[b].
        z: (T, B, H) workspace for x W + b.  rec: (B, H) workspace.
        ones: (1, B, H) ones (no state dropout at inference).
        n_slabs: row slabs, one per Numba thread (common.slab).
    """
    T, B, _ = x.shape
    packed_U = pack(U, T * B)    # for matmul, once per sequence
    input_projection(z, x, W, b, n_slabs)
    for s in prange(n_slabs):
        lo, hi = slab(s, n_slabs, B)
        if hi == lo:
            continue
        mode = flush_subnormals()
        for t in range(T):
            cur, nxt = t % 2, (t + 1) % 2
            matmul(h[cur, lo:hi], U, packed_U, rec[lo:hi])
            for row in range(lo, hi):
                _rnn_step_forward(y[t, row], h[nxt, row], z[t, row], rec[row], h[cur, row], ones[0, row],
                                  t0 + t < lengths[row], use_relu)
        restore_fp_mode(mode)
    if T % 2 == 1:
        copy_rows(h[0], h[1])

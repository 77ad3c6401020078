"""GRU over a whole sequence, in its two forms.

reset_after=False (TF GRUCell), gate order r, u; u is the keep gate:
    r, u = σ(x_t W_g + h_{t-1} U_g + b_g)
    c    = tanh(x_t W_c + (r h_{t-1}) U_c + b_c)
    h_t  = u h_{t-1} + (1 - u) c
The reset gate acts before U_c, so each step needs two recurrent GEMMs. With
layer norm (ln_gain (3, H) for r, u, c; (0, H) when off) the pre-activations of
r, u and c are each normalised with their own gain and shift, and there are no
biases b_g, b_c (the shifts take their place).

reset_after=True (PyTorch / cuDNN / Keras), gate order r, u, c:
    a = x_t W + b_x ;  q = h_{t-1} U + b_h
    r = σ(a_r + q_r) ;  u = σ(a_u + q_u) ;  c = tanh(a_c + r q_c)
    h_t = u h_{t-1} + (1 - u) c

With state dropout the state passed to step t+1 is h_t times that step's mask;
the output is h_t itself.

Time-major throughout. Steps at t >= lengths[b] output 0 and carry h unchanged.
"""
from numba import prange

from .activations import sigmoid_into, tanh_into
from .common import (ONE, add_column_sums, add_into, add_slab_sums, copy_into, copy_rows, flush_subnormals,
                     input_projection, jit, kernel, layer_norm_backward, layer_norm_forward, mask_row,
                     project_step, restore_fp_mode, slab, slab_partials, slab_share)
from .gemm import matmul, matmul_add, pack


# ---------------------------------------------------------------- reset_after=False

@jit
def _gru_gates_forward(gates, rh, ln_hat, ln_rstd, rec, h_prev, ln_gain, ln_shift, valid):
    """First half of a step, one row: r, u = σ([LN](gates + rec)) into gates; rh = r h_{t-1}."""
    H = h_prev.shape[0]
    if not valid:
        gates[:] = 0.0
        rh[:] = 0.0
        return
    for k in range(2 * H):
        gates[k] += rec[k]
    if ln_gain.shape[0] > 0:
        for g in range(2):
            ln_rstd[g] = layer_norm_forward(gates[g * H:(g + 1) * H], ln_hat[g * H:(g + 1) * H],
                                            ln_gain[g], ln_shift[g])
    sigmoid_into(gates, gates)     # r and u
    r = gates[:H]
    for k in range(H):
        rh[k] = r[k] * h_prev[k]


@jit
def _gru_candidate_forward(y, h_new, cand, ln_hat, ln_rstd, gates, rec, h_prev, ln_gain, ln_shift, mask, valid):
    """Second half of a step, one row: c = tanh([LN](cand + rec)) into cand;
    y = u h + (1-u) c; the state passed on is y * mask."""
    H = h_prev.shape[0]
    if not valid:
        cand[:] = 0.0
        y[:] = 0.0
        copy_into(h_new, h_prev)
        return
    for k in range(H):
        cand[k] += rec[k]
    if ln_gain.shape[0] > 0:
        ln_rstd[2] = layer_norm_forward(cand, ln_hat[2 * H:], ln_gain[2], ln_shift[2])
    u = gates[H:]
    tanh_into(cand, cand)
    for k in range(H):
        y[k] = u[k] * h_prev[k] + (ONE - u[k]) * cand[k]
    for k in range(H):
        h_new[k] = y[k] * mask[k]


@kernel
def gru_forward(y, h, gates, cand, rh, ln_hat, ln_rstd, x, W_g, U_g, b_g, W_c, U_c, b_c, ln_gain, ln_shift,
                state_mask, lengths, rec_g, rec_c, n_slabs):
    """Forward pass of the TF GRUCell over a whole sequence.

    Args:
        y: (T, B, H) out: outputs, 0 at padded steps.
        h: (T+1, B, H) in/out: h[0] is the initial state, h[t+1] the state after step t.
        gates: (T, B, 2H) out: σ(r), σ(u).  cand: (T, B, H) out: the candidate c.
        rh: (T, B, H) out: r h_{t-1}, the input of U_c.   All three are saved for backward.
        ln_hat: (T, B, 3H), ln_rstd: (T, B, 3) out with layer norm (else last axis 0).
        x: (T, B, F).  W_g (F, 2H), U_g (H, 2H), b_g (2H,), W_c (F, H), U_c (H, H), b_c (H,);
            b_g, b_c (0,) with layer norm.  ln_gain, ln_shift: (3, H) or (0, H).
        state_mask: (T, B, H) state-dropout mask, or (1, B, H).
        lengths: (B,) int.  rec_g: (B, 2H), rec_c: (B, H) workspaces.
        n_slabs: row slabs, one per Numba thread (common.slab).

    Notes:
        tf.compat.v1.nn.rnn_cell.GRUCell (Cho et al. 2014); layer norm as Ba et al. 2016.
    """
    T, B, _ = x.shape
    packed_W_g, packed_U_g = pack(W_g, T * B), pack(U_g, T * B)    # for matmul, once per sequence
    packed_W_c, packed_U_c = pack(W_c, T * B), pack(U_c, T * B)
    for s in prange(n_slabs):
        lo, hi = slab(s, n_slabs, B)
        if hi == lo:
            continue
        mode = flush_subnormals()
        for t in range(T):
            project_step(gates[t, lo:hi], x[t, lo:hi], W_g, packed_W_g, b_g)
            project_step(cand[t, lo:hi], x[t, lo:hi], W_c, packed_W_c, b_c)
            matmul(h[t, lo:hi], U_g, packed_U_g, rec_g[lo:hi])
            for row in range(lo, hi):
                _gru_gates_forward(gates[t, row], rh[t, row], ln_hat[t, row], ln_rstd[t, row], rec_g[row],
                                   h[t, row], ln_gain, ln_shift, t < lengths[row])
            matmul(rh[t, lo:hi], U_c, packed_U_c, rec_c[lo:hi])
            for row in range(lo, hi):
                _gru_candidate_forward(y[t, row], h[t + 1, row], cand[t, row], ln_hat[t, row], ln_rstd[t, row],
                                       gates[t, row], rec_c[row], h[t, row], ln_gain, ln_shift,
                                       mask_row(state_mask, t, row), t < lengths[row])
        restore_fp_mode(mode)


@jit
def _gru_candidate_backward(dz_c, dz_g, dln_gain, dln_shift, dh_carry, dh_rec, dy, gates, cand, ln_hat, ln_rstd,
                            h_prev, ln_gain, mask, valid):
    """First half of a step backward, one row: from dL/dh_t to dz_c (before layer
    norm) and dz_u (after it). dh_carry leaves holding the direct part u dL/dh_t
    of dL/dh_{t-1}; at padded steps, where h was copied, all of dL/dh_t."""
    H = h_prev.shape[0]
    if not valid:
        dz_c[:] = 0.0
        dz_g[:] = 0.0
        for k in range(H):
            dh_carry[k] += dh_rec[k]
        return
    for k in range(H):
        g = (dh_carry[k] + dh_rec[k]) * mask[k] + dy[k]
        u, c = gates[H + k], cand[k]
        dz_c[k] = g * (ONE - u) * (ONE - c * c)
        dz_g[H + k] = g * (h_prev[k] - c) * u * (ONE - u)
        dh_carry[k] = g * u
    if ln_gain.shape[0] > 0:
        layer_norm_backward(dz_c, dln_gain[2], dln_shift[2], ln_hat[2 * H:], ln_gain[2], ln_rstd[2])


@jit
def _gru_gates_backward(dz_g, dln_gain, dln_shift, dh_carry, d_rh, gates, ln_hat, ln_rstd, h_prev, ln_gain,
                        valid):
    """Second half of a step backward, one row: from dL/d(r h) to dz_r (then dz_r and
    dz_u back through layer norm) and the rest of dL/dh_{t-1} that skips U_g."""
    H = h_prev.shape[0]
    if not valid:
        return
    for k in range(H):
        r = gates[k]
        dz_g[k] = d_rh[k] * h_prev[k] * r * (ONE - r)
        dh_carry[k] += d_rh[k] * r
    if ln_gain.shape[0] > 0:
        for g in range(2):
            layer_norm_backward(dz_g[g * H:(g + 1) * H], dln_gain[g], dln_shift[g], ln_hat[g * H:(g + 1) * H],
                                ln_gain[g], ln_rstd[g])


@kernel
def gru_backward(dx, dh0, dW_g, dU_g, db_g, dW_c, dU_c, db_c, dln_gain, dln_shift, dy, dhT,
                 h, gates, cand, rh, ln_hat, ln_rstd, x, W_g, U_g, W_c, U_c, ln_gain, state_mask, lengths, need_dx,
                 dz_g, dz_c, dh_carry, dh_rec, d_rh, dln_gain_rows, dln_shift_rows, n_slabs):
    """Backpropagation through time for the TF GRUCell; accumulates (+=) into the
    parameter gradients, writes dx and dh0.

    Args:
        dx: (T, B, F) out: dL/dx when need_dx.  dh0: (B, H) out.
        dln_gain, dln_shift: (3, H) or (0, H); db_g, db_c (0,) with layer norm.
        dy: (T, B, H).  dhT: (B, H) dL/d(final state).
        h, gates, cand, rh, ln_hat, ln_rstd: saved by gru_forward.
        dz_g: (B, 2H), dz_c: (B, H), dh_carry, dh_rec, d_rh: (B, H),
            dln_gain_rows, dln_shift_rows: (B, 3, H) or (B, 0, H) workspaces.
        n_slabs: row slabs, one per Numba thread (common.slab).
    """
    T, B, _ = x.shape
    # For matmul, once per sequence.
    packed_U_c_T, packed_U_g_T = pack(U_c.T, T * B), pack(U_g.T, T * B)
    packed_W_g_T, packed_W_c_T = pack(W_g.T, T * B if need_dx else 0), pack(W_c.T, T * B if need_dx else 0)
    dW_g_slabs, dU_g_slabs = slab_partials(dW_g, n_slabs), slab_partials(dU_g, n_slabs)
    dW_c_slabs, dU_c_slabs = slab_partials(dW_c, n_slabs), slab_partials(dU_c, n_slabs)
    db_g_slabs, db_c_slabs = slab_partials(db_g, n_slabs), slab_partials(db_c, n_slabs)
    copy_rows(dh_carry, dhT)
    dh_rec[:] = 0.0
    dln_gain_rows[:] = 0.0
    dln_shift_rows[:] = 0.0
    for s in prange(n_slabs):
        lo, hi = slab(s, n_slabs, B)
        if hi == lo:
            continue
        mode = flush_subnormals()
        for t in range(T - 1, -1, -1):
            for row in range(lo, hi):
                _gru_candidate_backward(dz_c[row], dz_g[row], dln_gain_rows[row], dln_shift_rows[row],
                                        dh_carry[row], dh_rec[row], dy[t, row], gates[t, row], cand[t, row],
                                        ln_hat[t, row], ln_rstd[t, row], h[t, row], ln_gain,
                                        mask_row(state_mask, t, row), t < lengths[row])
            matmul(dz_c[lo:hi], U_c.T, packed_U_c_T, d_rh[lo:hi])
            for row in range(lo, hi):
                _gru_gates_backward(dz_g[row], dln_gain_rows[row], dln_shift_rows[row], dh_carry[row],
                                    d_rh[row], gates[t, row], ln_hat[t, row], ln_rstd[t, row], h[t, row], ln_gain,
                                    t < lengths[row])
            matmul(dz_g[lo:hi], U_g.T, packed_U_g_T, dh_rec[lo:hi])
            # This step's share of the weight gradients (common.slab_partials, slab_share), and dx.
            matmul_add(x[t, lo:hi].T, dz_g[lo:hi], None, slab_share(dW_g, dW_g_slabs, s))
            matmul_add(h[t, lo:hi].T, dz_g[lo:hi], None, slab_share(dU_g, dU_g_slabs, s))
            add_column_sums(slab_share(db_g, db_g_slabs, s), dz_g[lo:hi])
            matmul_add(x[t, lo:hi].T, dz_c[lo:hi], None, slab_share(dW_c, dW_c_slabs, s))
            matmul_add(rh[t, lo:hi].T, dz_c[lo:hi], None, slab_share(dU_c, dU_c_slabs, s))
            add_column_sums(slab_share(db_c, db_c_slabs, s), dz_c[lo:hi])
            if need_dx:
                matmul(dz_g[lo:hi], W_g.T, packed_W_g_T, dx[t, lo:hi])
                matmul_add(dz_c[lo:hi], W_c.T, packed_W_c_T, dx[t, lo:hi])
        restore_fp_mode(mode)
    copy_rows(dh0, dh_carry)
    add_into(dh0, dh_rec)
    G = dln_gain.shape[0] * dln_gain.shape[1]
    add_column_sums(dln_gain.reshape(G), dln_gain_rows.reshape((B, G)))
    add_column_sums(dln_shift.reshape(G), dln_shift_rows.reshape((B, G)))
    add_slab_sums(dW_g, dW_g_slabs)
    add_slab_sums(dU_g, dU_g_slabs)
    add_slab_sums(db_g, db_g_slabs)
    add_slab_sums(dW_c, dW_c_slabs)
    add_slab_sums(dU_c, dU_c_slabs)
    add_slab_sums(db_c, db_c_slabs)


# ---------------------------------------------------------------- reset_after=True

@jit
def _gru_ra_step_forward(y, h_new, gates, q_c, rec, b_h, h_prev, mask, valid):
    """One row of one step. gates holds x W + b_x on entry and σ(r), σ(u), c on exit;
    q_c receives h_{t-1} U_c + b_h,c, which backward needs for dr."""
    H = h_prev.shape[0]
    if not valid:
        gates[:] = 0.0
        q_c[:] = 0.0
        copy_into(h_new, h_prev)
        y[:] = 0.0
        return
    r_u, c = gates[:2 * H], gates[2 * H:]
    for k in range(2 * H):
        r_u[k] += rec[k] + b_h[k]
    sigmoid_into(r_u, r_u)
    for k in range(H):
        q_c[k] = rec[2 * H + k] + b_h[2 * H + k]
        c[k] += r_u[k] * q_c[k]
    tanh_into(c, c)
    u = gates[H:2 * H]
    for k in range(H):
        y[k] = u[k] * h_prev[k] + (ONE - u[k]) * c[k]
        h_new[k] = y[k] * mask[k]


@kernel
def gru_ra_forward(y, h, gates, q_c, x, W, U, b_x, b_h, state_mask, lengths, rec, n_slabs):
    """Forward pass of the reset-after GRU over a whole sequence.

    Args:
        y: (T, B, H) out.  h: (T+1, B, H) in/out, h[0] the initial state.
        gates: (T, B, 3H) out: σ(r), σ(u), c.  q_c: (T, B, H) out: h_{t-1} U_c + b_h,c.
        x: (T, B, F).  W (F, 3H), U (H, 3H), b_x (3H,), b_h (3H,).
        state_mask: (T, B, H) state-dropout mask, or (1, B, H).
        lengths: (B,) int.  rec: (B, 3H) workspace.
        n_slabs: row slabs, one per Numba thread (common.slab).

    Notes:
        torch.nn.GRU (gates r, z, n = our r, u, c), cuDNN, Keras GRU(reset_after=True).
    """
    T, B, _ = x.shape
    packed_W, packed_U = pack(W, T * B), pack(U, T * B)    # for matmul, once per sequence
    for s in prange(n_slabs):
        lo, hi = slab(s, n_slabs, B)
        if hi == lo:
            continue
        mode = flush_subnormals()
        for t in range(T):
            project_step(gates[t, lo:hi], x[t, lo:hi], W, packed_W, b_x)
            matmul(h[t, lo:hi], U, packed_U, rec[lo:hi])
            for row in range(lo, hi):
                _gru_ra_step_forward(y[t, row], h[t + 1, row], gates[t, row], q_c[t, row], rec[row], b_h,
                                     h[t, row], mask_row(state_mask, t, row), t < lengths[row])
        restore_fp_mode(mode)


@jit
def _gru_ra_step_backward(da, dq, dh_carry, dh_rec, dy, gates, q_c, h_prev, mask, valid):
    """One row of one step: from dL/dh_t to da = dL/da and dq = dL/dq;
    dh_carry leaves holding the direct part u dL/dh_t of dL/dh_{t-1}. One loop per
    equation over contiguous gate blocks, so that each vectorises."""
    H = h_prev.shape[0]
    g = dh_carry                    # becomes dL/dh_t in place
    for k in range(H):
        g[k] += dh_rec[k]
    if not valid:                   # the state was copied: all of dL/dh_t goes on
        da[:] = 0.0
        dq[:] = 0.0
        return
    r, u, c = gates[:H], gates[H:2 * H], gates[2 * H:]
    da_r, da_u, da_c = da[:H], da[H:2 * H], da[2 * H:]
    for k in range(H):
        g[k] = g[k] * mask[k] + dy[k]
    for k in range(H):
        da_c[k] = g[k] * (ONE - u[k]) * (ONE - c[k] * c[k])
    for k in range(H):
        da_r[k] = da_c[k] * q_c[k] * r[k] * (ONE - r[k])
    for k in range(H):
        da_u[k] = g[k] * (h_prev[k] - c[k]) * u[k] * (ONE - u[k])
    copy_into(dq[:2 * H], da[:2 * H])
    for k in range(H):
        dq[2 * H + k] = da_c[k] * r[k]
    for k in range(H):
        g[k] *= u[k]


@kernel
def gru_ra_backward(dx, dh0, dW, dU, db_x, db_h, dy, dhT, h, gates, q_c, x, W, U, state_mask, lengths, need_dx,
                    da, dq, dh_carry, dh_rec, n_slabs):
    """Backpropagation through time for the reset-after GRU; accumulates (+=) into
    the parameter gradients, writes dx and dh0.

    Args:
        dx: (T, B, F) out: dL/dx when need_dx.  dh0: (B, H) out.
        dy: (T, B, H).  dhT: (B, H) dL/d(final state).
        h, gates, q_c: saved by gru_ra_forward.
        da, dq: (B, 3H), dh_carry, dh_rec: (B, H) workspaces.
        n_slabs: row slabs, one per Numba thread (common.slab).
    """
    T, B, _ = x.shape
    packed_U_T, packed_W_T = pack(U.T, T * B), pack(W.T, T * B if need_dx else 0)    # for matmul, once per sequence
    dW_slabs, db_x_slabs = slab_partials(dW, n_slabs), slab_partials(db_x, n_slabs)
    dU_slabs, db_h_slabs = slab_partials(dU, n_slabs), slab_partials(db_h, n_slabs)
    copy_rows(dh_carry, dhT)
    dh_rec[:] = 0.0
    for s in prange(n_slabs):
        lo, hi = slab(s, n_slabs, B)
        if hi == lo:
            continue
        mode = flush_subnormals()
        for t in range(T - 1, -1, -1):
            for row in range(lo, hi):
                _gru_ra_step_backward(da[row], dq[row], dh_carry[row], dh_rec[row], dy[t, row],
                                      gates[t, row], q_c[t, row], h[t, row], mask_row(state_mask, t, row),
                                      t < lengths[row])
            matmul(dq[lo:hi], U.T, packed_U_T, dh_rec[lo:hi])
            # This step's share of the weight gradients (common.slab_partials, slab_share), and dx.
            matmul_add(x[t, lo:hi].T, da[lo:hi], None, slab_share(dW, dW_slabs, s))
            add_column_sums(slab_share(db_x, db_x_slabs, s), da[lo:hi])
            matmul_add(h[t, lo:hi].T, dq[lo:hi], None, slab_share(dU, dU_slabs, s))
            add_column_sums(slab_share(db_h, db_h_slabs, s), dq[lo:hi])
            if need_dx:
                matmul(da[lo:hi], W.T, packed_W_T, dx[t, lo:hi])
        restore_fp_mode(mode)
    copy_rows(dh0, dh_carry)
    add_into(dh0, dh_rec)
    add_slab_sums(dW, dW_slabs)
    add_slab_sums(db_x, db_x_slabs)
    add_slab_sums(dU, dU_slabs)
    add_slab_sums(db_h, db_h_slabs)


# ---------------------------------------------------------------- forward only (inference)

@kernel
def gru_infer(y, h, gates, cand, rh, ln_hat, ln_rstd, x, W_g, U_g, b_g, W_c, U_c, b_c, ln_gain, ln_shift,
              ones, lengths, t0, rec_g, rec_c, n_slabs):
    """Forward only (TF GRUCell) over a chunk of steps, keeping one step of state:
    the same step functions as gru_forward.

    Args:
        y: (T, B, H) out: outputs of the chunk, 0 at padded steps.
        h: (2, B, H) in/out: h[0] the state on entry and on exit, h[1] scratch.
        gates: (T, B, 2H), cand: (T, B, H) workspaces: the chunk's input projections,
            then each step's gates and candidate.
        rh: (B, H), ln_hat: (B, 3H or 0), ln_rstd: (B, 3 or 0): one step's workspaces.
        x: (T, B, F) inputs of the chunk, whose first step is step t0 of the sequence.
        W_g, U_g, b_g, W_c, U_c, b_c, ln_gain, ln_shift: as gru_forward.
        ones: (1, B, H) ones (no state dropout at inference).
        lengths: (B,) int; step t0 + t of row b is valid when t0 + t < lengths[b].
        rec_g: (B, 2H), rec_c: (B, H) workspaces.  n_slabs: as gru_forward.
    """
    T, B, _ = x.shape
    packed_U_g, packed_U_c = pack(U_g, T * B), pack(U_c, T * B)    # for matmul, once per sequence
    input_projection(gates, x, W_g, b_g, n_slabs)
    input_projection(cand, x, W_c, b_c, n_slabs)
    for s in prange(n_slabs):
        lo, hi = slab(s, n_slabs, B)
        if hi == lo:
            continue
        mode = flush_subnormals()
        for t in range(T):
            cur, nxt = t % 2, (t + 1) % 2
            matmul(h[cur, lo:hi], U_g, packed_U_g, rec_g[lo:hi])
            for row in range(lo, hi):
                _gru_gates_forward(gates[t, row], rh[row], ln_hat[row], ln_rstd[row], rec_g[row], h[cur, row],
                                   ln_gain, ln_shift, t0 + t < lengths[row])
            matmul(rh[lo:hi], U_c, packed_U_c, rec_c[lo:hi])
            for row in range(lo, hi):
                _gru_candidate_forward(y[t, row], h[nxt, row], cand[t, row], ln_hat[row], ln_rstd[row],
                                       gates[t, row], rec_c[row], h[cur, row], ln_gain, ln_shift, ones[0, row],
                                       t0 + t < lengths[row])
        restore_fp_mode(mode)
    if T % 2 == 1:
        copy_rows(h[0], h[1])


@kernel
def gru_ra_infer(y, h, gates, q_c, x, W, U, b_x, b_h, ones, lengths, t0, rec, n_slabs):
    """Forward only (reset-after GRU) over a chunk of steps, keeping one step of
    state: the same step function as gru_ra_forward.

    Args:
        y: (T, B, H) out.  h: (2, B, H) in/out: h[0] the state on entry and on exit, h[1] scratch.
        gates: (T, B, 3H) workspace: x W + b_x for the chunk, then each step's gates.
        q_c: (B, H) workspace.  x: (T, B, F), the chunk starting at step t0.
        W, U, b_x, b_h: as gru_ra_forward.  ones: (1, B, H) ones.
        lengths: (B,) int; step t0 + t of row b is valid when t0 + t < lengths[b].
        rec: (B, 3H) workspace.  n_slabs: as gru_ra_forward.
    """
    T, B, _ = x.shape
    packed_U = pack(U, T * B)    # for matmul, once per sequence
    input_projection(gates, x, W, b_x, n_slabs)
    for s in prange(n_slabs):
        lo, hi = slab(s, n_slabs, B)
        if hi == lo:
            continue
        mode = flush_subnormals()
        for t in range(T):
            cur, nxt = t % 2, (t + 1) % 2
            matmul(h[cur, lo:hi], U, packed_U, rec[lo:hi])
            for row in range(lo, hi):
                _gru_ra_step_forward(y[t, row], h[nxt, row], gates[t, row], q_c[row], rec[row], b_h, h[cur, row],
                                     ones[0, row], t0 + t < lengths[row])
        restore_fp_mode(mode)
    if T % 2 == 1:
        copy_rows(h[0], h[1])

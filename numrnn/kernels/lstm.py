"""LSTM over a whole sequence, TF LSTMCell semantics, gate order i, j, f, o.

    z = x_t W + r_{t-1} U (+ b) ;  i, j, f, o = split(z, 4)
    [layer norm: each of i, j, f, o normalised with its own gain and shift; no b]
    c_t = σ(f + forget_bias [+ p_f c_{t-1}]) c_{t-1} + σ(i [+ p_i c_{t-1}]) tanh(j)
    [layer norm: c_t normalised]   [cell_clip: c_t clipped]
    m_t = σ(o [+ p_o c_t]) tanh(c_t)
    r_t = m_t [P]   [proj_clip: r_t clipped]

r_t is the output and the recurrent state; with state dropout the state passed
to step t+1 is r_t times that step's mask. An option is off when its parameter
array is empty (peep (0, H), P (0, 0), ln_gain (0, H)) or its clip is 0; the
workspaces it would need then have an empty last axis. peep and ln_gain (with
ln_shift) may also be None, which compiles the kernels without their code (Numba
drops a branch on ``x is not None`` before typing when x is None): the usual LSTM,
without either, compiles in less time.

Time-major throughout. Steps at t >= lengths[b] output 0 and carry (c, r)
unchanged, so c[T], r[T] are each sequence's final state.

The plain float32 LSTM (no peepholes, layer norm or cell_clip; projection and its
clip allowed) computes its cell inside the tiles of r_{t-1} U (cell_rows): the same
operations in the same order as _lstm_cell_forward, so the same numbers, one pass
over the gates instead of several.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .activations import sigmoid_into, sigmoid_vector, tanh_into, tanh_vector
from .common import (ONE, ZERO, add_column_sums, add_into, add_slab_sums, clip, copy_into, copy_rows,
                     flush_subnormals, input_projection, jit, kernel, layer_norm_backward, layer_norm_forward, mask_row,
                     project_step, restore_fp_mode, slab, slab_partials, slab_share)
from .gemm import PACK_MIN_ROWS, TILE_ROWS, VECTOR_BYTES, matmul, matmul_add, pack, tile_product


@jit
def _lstm_cell_padded(m, gates, tanh_c, c_new, c_prev):
    """One row of a step past its sequence's length: outputs 0, the cell carried."""
    gates[:] = 0.0
    tanh_c[:] = 0.0
    m[:] = 0.0
    copy_into(c_new, c_prev)


@jit
def _lstm_cell_forward(m, gates, tanh_c, c_new, c_pre, ln_hat, ln_rstd, rec, c_prev, peep, ln_gain, ln_shift,
                       forget_bias, cell_clip, valid):
    """One row of one step, up to m_t (written into m).

    gates holds x W + b on entry and σ(i), tanh(j), σ(f), σ(o) on exit (0 when padded).
    Saved for backward: tanh_c; with layer norm ln_hat (5H) and ln_rstd (5); with
    cell_clip c_pre, the cell before clipping. One loop per equation over
    contiguous gate blocks, so that each vectorises; the activations in vector
    registers (activations.py).
    """
    H = c_prev.shape[0]
    if not valid:
        _lstm_cell_padded(m, gates, tanh_c, c_new, c_prev)
        return
    i, j, f, o = gates[:H], gates[H:2 * H], gates[2 * H:3 * H], gates[3 * H:]
    for k in range(4 * H):
        gates[k] += rec[k]
    if ln_gain is not None and ln_gain.shape[0] > 0:
        for g in range(4):
            ln_rstd[g] = layer_norm_forward(gates[g * H:(g + 1) * H], ln_hat[g * H:(g + 1) * H],
                                            ln_gain[g], ln_shift[g])
    if peep is not None and peep.shape[0] > 0:
        for k in range(H):
            i[k] += peep[0, k] * c_prev[k]
            f[k] += peep[1, k] * c_prev[k]
    for k in range(H):
        f[k] += forget_bias
    sigmoid_into(i, i)
    tanh_into(j, j)
    sigmoid_into(f, f)
    for k in range(H):
        c_new[k] = f[k] * c_prev[k] + i[k] * j[k]
    if ln_gain is not None and ln_gain.shape[0] > 0:
        ln_rstd[4] = layer_norm_forward(c_new, ln_hat[4 * H:], ln_gain[4], ln_shift[4])
    if cell_clip > 0.0:
        for k in range(H):
            c_pre[k] = c_new[k]
            c_new[k] = clip(c_new[k], cell_clip)
    if peep is not None and peep.shape[0] > 0:
        for k in range(H):
            o[k] += peep[2, k] * c_new[k]
    sigmoid_into(o, o)
    tanh_into(tanh_c, c_new)
    for k in range(H):
        m[k] = o[k] * tanh_c[k]


@jit
def _lstm_output_forward(y, r_new, r_pre, r_prev, mask, proj_clip, valid):
    """One row of one step: y holds r_t = m_t [P] on entry; clip it, and pass the
    (dropped-out) state on. Padded: y = 0 and the state is carried."""
    R = r_prev.shape[0]
    for k in range(R):
        if not valid:
            y[k] = 0.0
            r_new[k] = r_prev[k]
            continue
        if proj_clip > 0.0:
            r_pre[k] = y[k]
            y[k] = clip(y[k], proj_clip)
        r_new[k] = y[k] * mask[k]


# ---------------------------------------------------------------- the cell in the recurrent product's tiles

# Units per group: one float32 vector of each gate. pack_gate_groups lays U out so that
# a panel holds the columns of i, j, f and o of one group of units; a tile of rows x
# 4 vectors then ends r_{t-1} U with all four gates of those units in registers, and
# the plain float32 cell runs there (cell_rows): r_{t-1} U is not written and read
# back, and the gates, c, tanh(c) and m are each written once.
GROUP = VECTOR_BYTES // 4
# 4 rows x 4 vectors: 16 accumulators of the 32 AVX-512 registers; 2 rows with 16 registers.
CELL_TILE_ROWS = TILE_ROWS // 2


@numba.njit(cache=True, error_model="numpy")
def pack_gate_groups(U):
    """U (R, 4H) as panels (H / GROUP, R, 4 GROUP) for cell_rows: panels[q, k, g GROUP + l]
    = U[k, g H + q GROUP + l] for the gates g = i, j, f, o (H a multiple of GROUP)."""
    R, H = U.shape[0], U.shape[1] // 4
    panels = np.empty((H // GROUP, R, 4 * GROUP), U.dtype)
    for q in range(H // GROUP):
        for k in range(R):
            for g in range(4):
                for lane in range(GROUP):
                    panels[q, k, g * GROUP + lane] = U[k, g * H + q * GROUP + lane]
    return panels


def _cell_tile_intrinsic(rows):
    """An intrinsic tile(gates, r_prev, panel, b, c_prev, c_new, tanh_c, m_out, row, unit,
    forget_bias): for rows row .. row+rows-1 and units unit .. unit+GROUP-1, z = gates +
    b + r_prev @ panel (gates holding x W, the product's columns i, j, f, o as
    pack_gate_groups lays them out), then _lstm_cell_forward's equations without
    options, in the same order of operations: gates <- σ(i), tanh(j), σ(f +
    forget_bias), σ(o); c_new = σ(f) c_prev + σ(i) tanh(j); tanh_c = tanh(c_new);
    m_out = σ(o) tanh_c. float32 arrays with contiguous rows."""

    @intrinsic
    def tile(typingctx, gates, r_prev, panel, b, c_prev, c_new, tanh_c, m_out, row, unit, forget_bias):
        arrays = (gates, r_prev, panel, b, c_prev, c_new, tanh_c, m_out)
        if not all(isinstance(a, types.Array) and a.ndim == (1 if a is b else 2) and a.layout == "C"
                   and a.dtype == types.float32 for a in arrays):
            return None

        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            vector_type = ir.VectorType(ir.FloatType(), GROUP)
            vector_ptr = vector_type.as_pointer()
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector_type, [vector_type] * 3),
                                                 f"llvm.fma.v{GROUP}f32")

            def const(n):
                return ir.Constant(i64, n)

            def splat(value):
                return ir.Constant(vector_type, [value] * GROUP)

            def broadcast(scalar):
                single = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar,
                                                ir.Constant(ir.IntType(32), 0))
                return builder.shuffle_vector(single, ir.Constant(vector_type, ir.Undefined),
                                              ir.Constant(ir.VectorType(ir.IntType(32), GROUP), [0] * GROUP))

            def view(k):
                array = context.make_array(sig.args[k])(context, builder, args[k])
                return (array.data, cgutils.unpack_tuple(builder, array.shape),
                        [builder.sdiv(s, const(4)) for s in cgutils.unpack_tuple(builder, array.strides)])

            gates_v, r_v, panel_v, b_v, c_prev_v, c_new_v, tanh_c_v, m_v = (view(k) for k in range(8))
            row0, unit0, bias = args[8], args[9], broadcast(args[10])
            H = builder.sdiv(gates_v[1][1], const(4))
            inner = r_v[1][1]

            def vector_at(array_view, m, col):
                data, _, strides = array_view
                offset = builder.add(builder.mul(builder.add(row0, const(m)), strides[0]), col)
                return builder.bitcast(builder.gep(data, [offset]), vector_ptr)

            def gate_col(g):
                return builder.add(builder.mul(H, const(g)), unit0)

            a_rows = [builder.gep(r_v[0], [builder.mul(builder.add(row0, const(m)), r_v[2][0])]) for m in range(rows)]
            zero = ir.Constant(vector_type, None)
            products = tile_product(builder, fma, broadcast, a_rows, const(1), panel_v[0], panel_v[2][0], inner,
                                    [[zero] * 4 for _ in range(rows)], lambda ptr, _: builder.load(ptr, align=4))
            for m, product in enumerate(products):
                gate_ptrs = [vector_at(gates_v, m, gate_col(g)) for g in range(4)]
                b = [builder.load(builder.bitcast(builder.gep(b_v[0], [gate_col(g)]), vector_ptr), align=4)
                     for g in range(4)]
                z = [builder.fadd(builder.fadd(builder.load(gate_ptrs[g], align=4), b[g]), product[g])
                     for g in range(4)]
                i = sigmoid_vector(builder, fma, z[0], splat)
                j = tanh_vector(builder, fma, z[1], splat)
                f = sigmoid_vector(builder, fma, builder.fadd(z[2], bias), splat)
                o = sigmoid_vector(builder, fma, z[3], splat)
                c_prev = builder.load(vector_at(c_prev_v, m, unit0), align=4)
                c = builder.fadd(builder.fmul(f, c_prev), builder.fmul(i, j))
                tanh_c = tanh_vector(builder, fma, c, splat)
                for ptr, value in zip(gate_ptrs, (i, j, f, o)):
                    builder.store(value, ptr, align=4)
                builder.store(c, vector_at(c_new_v, m, unit0), align=4)
                builder.store(tanh_c, vector_at(tanh_c_v, m, unit0), align=4)
                builder.store(builder.fmul(o, tanh_c), vector_at(m_v, m, unit0), align=4)
            return context.get_dummy_value()

        return types.none(gates, r_prev, panel, b, c_prev, c_new, tanh_c, m_out, types.intp, types.intp,
                          types.float32), codegen

    return tile


_cell_tile, _cell_tile_2, _cell_tile_1 = (_cell_tile_intrinsic(n) for n in (CELL_TILE_ROWS, 2, 1))


def _has_cell_tile(a):
    """Whether cell_rows computes for arrays of a's dtype: float32 (for others it does nothing)."""
    return a.dtype == np.float32


def cell_rows(gates, r_prev, panels, b, c_prev, c_new, tanh_c, m_out, lo, hi, forget_bias):
    """One step of the plain cell for rows lo .. hi-1, every row as if valid:
    gates (B, 4H) holds x W on entry and the activations on exit; panels =
    pack_gate_groups(U); b (4H,); c_prev = c[t], c_new = c[t+1], tanh_c, m_out: (B, H)."""


@overload(_has_cell_tile, inline="always")
def _has_cell_tile_typed(a):
    value = a.dtype == types.float32
    return lambda a: value


@overload(cell_rows, inline="always")
def _cell_rows_typed(gates, r_prev, panels, b, c_prev, c_new, tanh_c, m_out, lo, hi, forget_bias):
    if gates.dtype != types.float32:
        return lambda gates, r_prev, panels, b, c_prev, c_new, tanh_c, m_out, lo, hi, forget_bias: None

    def rows(gates, r_prev, panels, b, c_prev, c_new, tanh_c, m_out, lo, hi, forget_bias):
        for q in range(panels.shape[0]):
            unit = q * GROUP
            panel = panels[q]
            row = lo
            while row + CELL_TILE_ROWS <= hi:
                _cell_tile(gates, r_prev, panel, b, c_prev, c_new, tanh_c, m_out, row, unit, forget_bias)
                row += CELL_TILE_ROWS
            if row + 2 <= hi:
                _cell_tile_2(gates, r_prev, panel, b, c_prev, c_new, tanh_c, m_out, row, unit, forget_bias)
                row += 2
            if row < hi:
                _cell_tile_1(gates, r_prev, panel, b, c_prev, c_new, tanh_c, m_out, row, unit, forget_bias)
    return rows


@jit
def _cell_in_tiles(gates, U, b, peep, ln_gain, cell_clip, rows):
    """Whether a kernel runs the cell in the tiles of r_{t-1} U (cell_rows): the plain
    float32 cell, H a multiple of GROUP, and enough rows in all to pack U for."""
    return (peep is None and ln_gain is None and cell_clip == 0.0 and _has_cell_tile(gates)
            and U.shape[1] % (4 * GROUP) == 0 and b.shape[0] > 0 and rows >= PACK_MIN_ROWS)


@kernel
def lstm_forward(y, r, c, gates, tanh_c, m, c_pre, r_pre, ln_hat, ln_rstd,
                 x, W, U, b, peep, P, ln_gain, ln_shift, state_mask, lengths, forget_bias, cell_clip, proj_clip,
                 rec, n_slabs):
    """Forward pass over a whole sequence.

    Args:
        y: (T, B, R) out: outputs r_t, 0 at padded steps (R = proj or H).
        r: (T+1, B, R), c: (T+1, B, H) in/out: [0] is the initial state (filled by
            the caller), [t+1] the state after step t.
        gates: (T, B, 4H) out: σ(i), tanh(j), σ(f), σ(o).  tanh_c: (T, B, H) out.
        m: (T, B, H) out with proj: m_t, the input of P.
        c_pre: (T, B, H) out with cell_clip.  r_pre: (T, B, R) out with proj_clip:
            the values before clipping.
        ln_hat: (T, B, 5H), ln_rstd: (T, B, 5) out with layer norm: normalised
            i, j, f, o, c and their 1/std.
        x: (T, B, F).  W (F, 4H), U (R, 4H), b (4H,) or (0,) with layer norm.
        peep: (3, H) p_i, p_f, p_o.  P: (H, proj).  ln_gain, ln_shift: (5, H) for i, j, f, o, c.
            peep, ln_gain and ln_shift may be None (module docstring).
        state_mask: (T, B, R) state-dropout mask, or (1, B, R).
        lengths: (B,) int.  forget_bias, cell_clip, proj_clip: floats (clips: 0 = off).
        rec: (B, 4H) workspace for r_{t-1} U (the general cell).
        n_slabs: row slabs, one per Numba thread (common.slab).

    Notes:
        tf.compat.v1.nn.rnn_cell.LSTMCell (peepholes: Sak et al. 2014; projection:
        Sak et al. 2014) and LayerNormBasicLSTMCell (Ba et al. 2016). With
        forget_bias=0 it is torch.nn.LSTM (proj_size: weight_hr = P^T) with gates
        reordered (PyTorch: i, f, g, o).
    """
    T, B, _ = x.shape
    in_tiles = _cell_in_tiles(gates, U, b, peep, ln_gain, cell_clip, T * B)
    packed_W, packed_P = pack(W, T * B), pack(P, T * B)    # once per sequence
    packed_U = pack_gate_groups(U) if in_tiles else pack(U, T * B)
    proj = P.shape[0] > 0
    for s in prange(n_slabs):
        lo, hi = slab(s, n_slabs, B)
        if hi == lo:
            continue
        mode = flush_subnormals()
        for t in range(T):
            # Without projection m_t is r_t: the cell writes it straight into y.
            m_out = m[t] if proj else y[t]
            if in_tiles:
                matmul(x[t, lo:hi], W, packed_W, gates[t, lo:hi])      # the tiles add b
                cell_rows(gates[t], r[t], packed_U, b, c[t], c[t + 1], tanh_c[t], m_out, lo, hi, forget_bias)
                for row in range(lo, hi):
                    if t >= lengths[row]:
                        _lstm_cell_padded(m_out[row], gates[t, row], tanh_c[t, row], c[t + 1, row], c[t, row])
            else:
                project_step(gates[t, lo:hi], x[t, lo:hi], W, packed_W, b)
                matmul(r[t, lo:hi], U, packed_U, rec[lo:hi])
                for row in range(lo, hi):
                    _lstm_cell_forward(m_out[row], gates[t, row], tanh_c[t, row], c[t + 1, row], c_pre[t, row],
                                       ln_hat[t, row], ln_rstd[t, row], rec[row], c[t, row], peep, ln_gain,
                                       ln_shift, forget_bias, cell_clip, t < lengths[row])
            if proj:
                matmul(m[t, lo:hi], P, packed_P, y[t, lo:hi])
            for row in range(lo, hi):
                _lstm_output_forward(y[t, row], r[t + 1, row], r_pre[t, row], r[t, row],
                                     mask_row(state_mask, t, row), proj_clip, t < lengths[row])
        restore_fp_mode(mode)


@jit
def _lstm_output_backward(dr, dr_carry, dr_rec, dy, r_pre, mask, proj_clip, valid):
    """One row of one step: dr = dL/d(r_t before proj_clip). On entry dr_carry +
    dr_rec is dL/d(state passed on from step t); dr_carry leaves holding the part
    of dL/d(state passed on from step t-1) that does not go through U: all of it
    at padded steps, where the state was copied, else 0."""
    R = dr.shape[0]
    for k in range(R):
        d = dr_carry[k] + dr_rec[k]
        if not valid:
            dr[k] = 0.0
            dr_carry[k] = d
            continue
        d = d * mask[k] + dy[k]
        if proj_clip > 0.0 and abs(r_pre[k]) > proj_clip:
            d = ZERO
        dr[k] = d
        dr_carry[k] = 0.0


@jit
def _lstm_cell_backward(dz, dc, dpeep, dln_gain, dln_shift, dm, gates, tanh_c, c_prev, c_new, c_pre,
                        ln_hat, ln_rstd, peep, ln_gain, cell_clip, valid):
    """One row of one step. On entry dm = dL/dm_t and dc = dL/dc_t from step t+1;
    on exit dz = dL/dz_t (before layer norm) and dc = dL/dc_{t-1}. dpeep (3, H),
    dln_gain and dln_shift (5, H) accumulate this row's share."""
    H = c_prev.shape[0]
    if not valid:
        dz[:] = 0.0
        return
    i, j, f, o = gates[:H], gates[H:2 * H], gates[2 * H:3 * H], gates[3 * H:]
    dzi, dzj, dzf, dzo = dz[:H], dz[H:2 * H], dz[2 * H:3 * H], dz[3 * H:]
    for k in range(H):
        dzo[k] = dm[k] * tanh_c[k] * o[k] * (ONE - o[k])
    for k in range(H):
        dc[k] += dm[k] * o[k] * (ONE - tanh_c[k] * tanh_c[k])
    if peep is not None and peep.shape[0] > 0:
        for k in range(H):
            dc[k] += dzo[k] * peep[2, k]
            dpeep[2, k] += dzo[k] * c_new[k]
    if cell_clip > 0.0:
        for k in range(H):
            if abs(c_pre[k]) > cell_clip:
                dc[k] = 0.0
    if ln_gain is not None and ln_gain.shape[0] > 0:
        layer_norm_backward(dc, dln_gain[4], dln_shift[4], ln_hat[4 * H:], ln_gain[4], ln_rstd[4])
    for k in range(H):
        dzi[k] = dc[k] * j[k] * i[k] * (ONE - i[k])
    for k in range(H):
        dzj[k] = dc[k] * i[k] * (ONE - j[k] * j[k])
    for k in range(H):
        dzf[k] = dc[k] * c_prev[k] * f[k] * (ONE - f[k])
    for k in range(H):
        dc[k] *= f[k]
    if peep is not None and peep.shape[0] > 0:
        for k in range(H):
            dc[k] += dzi[k] * peep[0, k] + dzf[k] * peep[1, k]
            dpeep[0, k] += dzi[k] * c_prev[k]
            dpeep[1, k] += dzf[k] * c_prev[k]
    if ln_gain is not None and ln_gain.shape[0] > 0:
        for g in range(4):
            layer_norm_backward(dz[g * H:(g + 1) * H], dln_gain[g], dln_shift[g], ln_hat[g * H:(g + 1) * H],
                                ln_gain[g], ln_rstd[g])


@kernel
def lstm_backward(dx, dr0, dc0, dW, dU, db, dpeep, dP, dln_gain, dln_shift, dy, drT, dcT,
                  r, c, gates, tanh_c, m, c_pre, r_pre, ln_hat, ln_rstd,
                  x, W, U, peep, P, ln_gain, state_mask, lengths, cell_clip, proj_clip, need_dx,
                  dz, dr, dm, dr_carry, dr_rec, dpeep_rows, dln_gain_rows, dln_shift_rows, n_slabs):
    """Backpropagation through time. Accumulates (+=) into the parameter gradients;
    writes dx, dr0, dc0.

    Args:
        dx: (T, B, F) out: dL/dx, only when need_dx.  dr0: (B, R), dc0: (B, H) out.
        dW (F, 4H), dU (R, 4H), db (4H,) or (0,), dpeep (3, H) or (0, H), dP (H, proj)
            or (0, 0), dln_gain, dln_shift (5, H) or (0, H): parameter gradients.
        dy: (T, B, R) dL/dy.  drT: (B, R), dcT: (B, H) dL/d(final state).
        r, c, gates, tanh_c, m, c_pre, r_pre, ln_hat, ln_rstd: saved by lstm_forward.
        x, W, U, peep, P, ln_gain, state_mask, lengths, cell_clip, proj_clip: as forward.
        dz: (B, 4H), dr: (B, R) with proj (else (B, 0)), dm: (B, H),
            dr_carry, dr_rec: (B, R), dpeep_rows (B, 3, H) or (B, 0, H),
            dln_gain_rows, dln_shift_rows (B, 5, H) or (B, 0, H): workspaces.
        n_slabs: row slabs, one per Numba thread (common.slab).
    """
    T, B, _ = x.shape
    # For matmul, once per sequence.
    packed_U_T, packed_P_T, packed_W_T = pack(U.T, T * B), pack(P.T, T * B), pack(W.T, T * B if need_dx else 0)
    proj = P.shape[0] > 0
    dW_slabs, dU_slabs, db_slabs, dP_slabs = (slab_partials(dW, n_slabs), slab_partials(dU, n_slabs),
                                              slab_partials(db, n_slabs), slab_partials(dP, n_slabs))
    copy_rows(dr_carry, drT)
    copy_rows(dc0, dcT)                # running dL/dc, ends as dL/dc[0]
    dr_rec[:] = 0.0
    dpeep_rows[:] = 0.0
    dln_gain_rows[:] = 0.0
    dln_shift_rows[:] = 0.0
    for s in prange(n_slabs):
        lo, hi = slab(s, n_slabs, B)
        if hi == lo:
            continue
        mode = flush_subnormals()
        for t in range(T - 1, -1, -1):
            # dL/dr_t lands in dr (then dm = dr P^T) with projection, else straight in dm.
            dr_out = dr if proj else dm
            for row in range(lo, hi):
                _lstm_output_backward(dr_out[row], dr_carry[row], dr_rec[row], dy[t, row], r_pre[t, row],
                                      mask_row(state_mask, t, row), proj_clip, t < lengths[row])
            if proj:
                matmul(dr[lo:hi], P.T, packed_P_T, dm[lo:hi])
            for row in range(lo, hi):
                _lstm_cell_backward(dz[row], dc0[row], dpeep_rows[row], dln_gain_rows[row], dln_shift_rows[row],
                                    dm[row], gates[t, row], tanh_c[t, row], c[t, row], c[t + 1, row],
                                    c_pre[t, row], ln_hat[t, row], ln_rstd[t, row], peep, ln_gain, cell_clip,
                                    t < lengths[row])
            matmul(dz[lo:hi], U.T, packed_U_T, dr_rec[lo:hi])
            # This step's share of the weight gradients (common.slab_partials, slab_share), and dx.
            matmul_add(x[t, lo:hi].T, dz[lo:hi], None, slab_share(dW, dW_slabs, s))
            matmul_add(r[t, lo:hi].T, dz[lo:hi], None, slab_share(dU, dU_slabs, s))
            add_column_sums(slab_share(db, db_slabs, s), dz[lo:hi])
            if proj:
                matmul_add(m[t, lo:hi].T, dr[lo:hi], None, slab_share(dP, dP_slabs, s))
            if need_dx:
                matmul(dz[lo:hi], W.T, packed_W_T, dx[t, lo:hi])
        restore_fp_mode(mode)
    copy_rows(dr0, dr_carry)
    add_into(dr0, dr_rec)
    add_slab_sums(dW, dW_slabs)
    add_slab_sums(dU, dU_slabs)
    add_slab_sums(db, db_slabs)
    add_slab_sums(dP, dP_slabs)
    G = dpeep.shape[0] * dpeep.shape[1]
    add_column_sums(dpeep.reshape(G), dpeep_rows.reshape((B, G)))
    G = dln_gain.shape[0] * dln_gain.shape[1]
    add_column_sums(dln_gain.reshape(G), dln_gain_rows.reshape((B, G)))
    add_column_sums(dln_shift.reshape(G), dln_shift_rows.reshape((B, G)))


# ---------------------------------------------------------------- forward only (inference)

@kernel
def lstm_infer(y, r, c, gates, tanh_c, m, c_pre, r_pre, ln_hat, ln_rstd,
               x, W, U, b, peep, P, ln_gain, ln_shift, ones, lengths, t0, forget_bias, cell_clip, proj_clip,
               rec, n_slabs):
    """Forward only over a chunk of steps, keeping one step of state and of gate
    activations: the same step functions as lstm_forward (the plain float32 cell in the
    tiles of r_{t-1} U).

    Args:
        y: (T, B, R) out: outputs r_t of the chunk, 0 at padded steps.
        r: (2, B, R), c: (2, B, H) in/out: [0] the state on entry and on exit, [1]
            scratch (the state alternates between the two rows from step to step).
        gates: (T, B, 4H) workspace: x W + b for the chunk, then the step's gates.
        tanh_c: (B, H), m: (B, H) with proj else (B, 0), c_pre: (B, H or 0),
            r_pre: (B, R or 0), ln_hat: (B, 5H or 0), ln_rstd: (B, 5 or 0):
            one step of the workspaces lstm_forward keeps for every step.
        x: (T, B, F) inputs of the chunk, whose first step is step t0 of the sequence.
        W, U, b, peep, P, ln_gain, ln_shift, forget_bias, cell_clip, proj_clip: as lstm_forward.
        ones: (1, B, R) ones (no state dropout at inference).
        lengths: (B,) int; step t0 + t of row b is valid when t0 + t < lengths[b].
        rec: (B, 4H) workspace.  n_slabs: row slabs, one per Numba thread (common.slab).
    """
    T, B, _ = x.shape
    in_tiles = _cell_in_tiles(gates, U, b, peep, ln_gain, cell_clip, T * B)
    packed_U = pack_gate_groups(U) if in_tiles else pack(U, T * B)    # once per chunk
    packed_P = pack(P, T * B)
    proj = P.shape[0] > 0
    input_projection(gates, x, W, b[:0] if in_tiles else b, n_slabs)     # the tiles add b
    for s in prange(n_slabs):
        lo, hi = slab(s, n_slabs, B)
        if hi == lo:
            continue
        mode = flush_subnormals()
        for t in range(T):
            cur, nxt = t % 2, (t + 1) % 2
            m_out = m if proj else y[t]
            if in_tiles:
                cell_rows(gates[t], r[cur], packed_U, b, c[cur], c[nxt], tanh_c, m_out, lo, hi, forget_bias)
                for row in range(lo, hi):
                    if t0 + t >= lengths[row]:
                        _lstm_cell_padded(m_out[row], gates[t, row], tanh_c[row], c[nxt, row], c[cur, row])
            else:
                matmul(r[cur, lo:hi], U, packed_U, rec[lo:hi])
                for row in range(lo, hi):
                    _lstm_cell_forward(m_out[row], gates[t, row], tanh_c[row], c[nxt, row], c_pre[row],
                                       ln_hat[row], ln_rstd[row], rec[row], c[cur, row], peep, ln_gain,
                                       ln_shift, forget_bias, cell_clip, t0 + t < lengths[row])
            if proj:
                matmul(m[lo:hi], P, packed_P, y[t, lo:hi])
            for row in range(lo, hi):
                _lstm_output_forward(y[t, row], r[nxt, row], r_pre[row], r[cur, row], ones[0, row], proj_clip,
                                     t0 + t < lengths[row])
        restore_fp_mode(mode)
    if T % 2 == 1:
        copy_rows(r[0], r[1])
        copy_rows(c[0], c[1])

"""The products of each step: a register-tile GEMM.

A recurrent step multiplies a slab of 32-64 state rows by U (R x 4H). Through
Numba's np.dot each such call goes to OpenBLAS, which packs U again every time and
reaches 80-110 GFLOP/s on one core at these shapes. Here b is packed once, into
panels of two vector widths of columns stored k by k (pack), and a tile of
TILE_ROWS rows by one panel is kept in registers over the whole inner dimension:
each step of k loads two vectors of the panel, broadcasts TILE_ROWS values of a and
issues 2 TILE_ROWS fused multiply-adds. 130-150 GFLOP/s on one core at the same
shapes (AVX-512). The panel is read sequentially and stays in L1 while the row tiles
pass over it; read straight from U's rows, 2 KiB apart, it does not (its rows fall
into a few cache sets).

The training kernels pack W, U (or their transposes) once per sequence and call
matmul at every step: x_t W, r_{t-1} U forward, dz_t U^T and dz_t W^T backward.
matmul_add (out += a @ b) adds each step's share of the weight gradients,
x_t^T dz_t, reading b (dz_t's slab of rows: 32-64 of them) without packing it: done
while dz_t is in cache, this is faster than one product over the whole sequence
after the loop, which reads every dz_t back from memory.

a and b may have any strides; out is C-contiguous. With panels, each output element
sums its products in order of k, so a row's result does not depend on how the rows
are cut into slabs. Too few rows to pay for packing go to np.dot (PACK_MIN_ROWS).
"""
import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# Vector registers: 32 of 512 bits with AVX-512 (a tile of 8 rows x 2 vectors takes
# 16 of them), else 16 of 256 bits (4 x 2 leaves room for b and the broadcasts).
_AVX512 = llvm.get_host_cpu_features().get("avx512f", False)
VECTOR_BYTES = 64 if _AVX512 else 32
TILE_ROWS = 8 if _AVX512 else 4


def tile_product(builder, fma, broadcast, a_rows, a_column_stride, panel_data, panel_row_stride, inner, start,
                 load_panel):
    """IR for the loop over k of a register tile; returns acc[m][v] = start[m][v] +
    sum over k of a[m, k] times vector v of panel row k, the products added in order
    of k by fused multiply-adds.

    a_rows[m]: pointer to row m of a; load_panel(pointer, v) loads vector v of a
    panel row; start: rows x vectors of initial values; broadcast(x): x in every lane.
    """
    i64 = ir.IntType(64)
    vector_type = start[0][0].type
    vector_ptr = vector_type.as_pointer()
    entry = builder.block
    loop = builder.append_basic_block("tile.k")
    done = builder.append_basic_block("tile.done")
    builder.cbranch(builder.icmp_signed(">", inner, ir.Constant(i64, 0)), loop, done)

    builder.position_at_end(loop)
    k = builder.phi(i64)
    acc = [[builder.phi(vector_type) for _ in row] for row in start]
    panel_row = builder.gep(panel_data, [builder.mul(k, panel_row_stride)])
    b_vectors = [load_panel(builder.bitcast(builder.gep(panel_row, [ir.Constant(i64, v * vector_type.count)]),
                                            vector_ptr), v) for v in range(len(start[0]))]
    summed = []
    for a_row, acc_row in zip(a_rows, acc):
        a_mk = broadcast(builder.load(builder.gep(a_row, [builder.mul(k, a_column_stride)])))
        summed.append([builder.call(fma, [a_mk, b, a]) for b, a in zip(b_vectors, acc_row)])
    k_next = builder.add(k, ir.Constant(i64, 1))
    k.add_incoming(ir.Constant(i64, 0), entry)
    k.add_incoming(k_next, loop)
    for start_row, acc_row, summed_row in zip(start, acc, summed):
        for value, phi, new in zip(start_row, acc_row, summed_row):
            phi.add_incoming(value, entry)
            phi.add_incoming(new, loop)
    builder.cbranch(builder.icmp_signed("<", k_next, inner), loop, done)

    builder.position_at_end(done)
    results = [[builder.phi(vector_type) for _ in row] for row in start]
    for start_row, result_row, summed_row in zip(start, results, summed):
        for value, phi, new in zip(start_row, result_row, summed_row):
            phi.add_incoming(value, entry)
            phi.add_incoming(new, loop)
    return results


def _tile_intrinsic(rows, accumulate=False, masked_loads=False):
    """An intrinsic tile(out, a, panel, row, col, cols):
    out[row:row+rows, col:col+cols] = a[row:row+rows] @ panel[:, :cols], panel
    (K, >= cols) with contiguous rows. Columns past cols are not written (masked
    stores). With accumulate the tile starts from out (+=).

    With masked_loads the panel and out are read only up to cols (needed when cols
    is less than 2 vector widths, unless the panel is packed and nothing is
    accumulated); else they are read 2 vector widths wide.
    """

    @intrinsic
    def tile(typingctx, out, a, panel, row, col, cols):
        dtype = a.dtype

        def codegen(context, builder, sig, args):
            out_arg, a_arg, panel_arg, row0, col0, n_cols = args
            i32, i64 = ir.IntType(32), ir.IntType(64)
            itemsize = dtype.bitwidth // 8
            width = VECTOR_BYTES // itemsize
            vector_type = ir.VectorType(context.get_value_type(dtype), width)
            mask_type = ir.VectorType(ir.IntType(1), width)
            suffix = f"v{width}f{dtype.bitwidth}"

            def intrinsic_fn(name, ret, params):
                return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, params), name)

            fma = intrinsic_fn(f"llvm.fma.{suffix}", vector_type, [vector_type] * 3)
            vector_ptr = vector_type.as_pointer()
            masked_store = intrinsic_fn(f"llvm.masked.store.{suffix}.p0", ir.VoidType(),
                                        [vector_type, vector_ptr, i32, mask_type])
            masked_load = intrinsic_fn(f"llvm.masked.load.{suffix}.p0", vector_type,
                                       [vector_ptr, i32, mask_type, vector_type])

            def const(n):
                return ir.Constant(i64, n)

            def data_shape_strides(ty, value):
                array = context.make_array(ty)(context, builder, value)
                strides = [builder.sdiv(s, const(itemsize)) for s in cgutils.unpack_tuple(builder, array.strides)]
                return array.data, cgutils.unpack_tuple(builder, array.shape), strides

            out_data, _, out_strides = data_shape_strides(sig.args[0], out_arg)
            a_data, (_, inner), a_strides = data_shape_strides(sig.args[1], a_arg)
            panel_data, _, panel_strides = data_shape_strides(sig.args[2], panel_arg)
            a_rows = [builder.gep(a_data, [builder.mul(builder.add(row0, const(m)), a_strides[0])])
                      for m in range(rows)]
            out_ptrs = [[builder.bitcast(builder.gep(out_data, [builder.add(
                builder.mul(builder.add(row0, const(m)), out_strides[0]), builder.add(col0, const(v * width)))]),
                vector_ptr) for v in range(2)] for m in range(rows)]
            lanes = ir.Constant(ir.VectorType(i32, width), list(range(width)))

            def splat(value):
                vector = ir.VectorType(value.type, width)
                single = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(i32, 0))
                return builder.shuffle_vector(single, ir.Constant(vector, ir.Undefined),
                                              ir.Constant(ir.VectorType(i32, width), [0] * width))

            masks = [builder.icmp_signed("<", lanes, splat(builder.trunc(builder.sub(n_cols, const(v * width)), i32)))
                     for v in range(2)]
            align = ir.Constant(i32, itemsize)
            zero = ir.Constant(vector_type, None)

            def load(ptr, v):
                if masked_loads:
                    return builder.call(masked_load, [ptr, align, masks[v], zero])
                return builder.load(ptr, align=itemsize)

            # out is read like a panel: masked when its last columns are narrower.
            start = [[load(out_ptrs[m][v], v) if accumulate else zero for v in range(2)] for m in range(rows)]

            results = tile_product(builder, fma, splat, a_rows, a_strides[1], panel_data, panel_strides[0], inner,
                                   start, load)
            for m in range(rows):
                for v in range(2):
                    builder.call(masked_store, [results[m][v], out_ptrs[m][v], align, masks[v]])
            return context.get_dummy_value()

        return types.none(out, a, panel, types.intp, types.intp, types.intp), codegen

    return tile


def _row_tiles(name, accumulate, masked_loads):
    """rows(out, a, panel, col, cols): out[:, col:col+cols] (= or +=) a @ panel,
    tiles of TILE_ROWS rows, then 4, 2 and 1 for the rest of the rows.

    Each variant is compiled under a name of its own: Numba names machine code by
    the function's qualified name and a per-process counter, so variants sharing a
    name, compiled by different processes into one cache, could share a symbol
    while doing different things, and a process that loads both would call one for
    the other.
    """
    tile, tile_4, tile_2, tile_1 = (_tile_intrinsic(n, accumulate, masked_loads) for n in (TILE_ROWS, 4, 2, 1))

    def rows(out, a, panel, col, cols):
        M = a.shape[0]
        row = 0
        while row + TILE_ROWS <= M:
            tile(out, a, panel, row, col, cols)
            row += TILE_ROWS
        if row + 4 <= M:
            tile_4(out, a, panel, row, col, cols)
            row += 4
        if row + 2 <= M:
            tile_2(out, a, panel, row, col, cols)
            row += 2
        if row < M:
            tile_1(out, a, panel, row, col, cols)

    rows.__name__ = rows.__qualname__ = name
    return numba.njit(cache=True, error_model="numpy")(rows)


_rows_set = _row_tiles("rows_set", accumulate=False, masked_loads=False)
_rows_add = _row_tiles("rows_add", accumulate=True, masked_loads=False)
# A masked load costs more than a plain one: only a narrow last panel of b uses them.
_rows_add_masked = _row_tiles("rows_add_masked", accumulate=True, masked_loads=True)


# Packing a 128 x 512 b takes about 30 us: it pays once a few hundred rows in all are
# multiplied by it. Below that (batch-1 inference, a streaming step) matmul calls np.dot.
PACK_MIN_ROWS = 256


@numba.njit(cache=True, error_model="numpy")
def pack(b, rows):
    """b (K, N) in panels of two vector widths w of columns, for matmul:
    panels[p, k] = b[k, p w:(p+1) w], zero-padded past column N. rows: how many rows
    in all will be multiplied by b; under PACK_MIN_ROWS the panels are empty."""
    K, N = b.shape
    w = 2 * VECTOR_BYTES // b.itemsize
    if rows < PACK_MIN_ROWS:
        return np.zeros((0, K, w), b.dtype)
    panels = np.empty(((N + w - 1) // w, K, w), b.dtype)
    for p in range(panels.shape[0]):
        cols = min(w, N - p * w)
        for k in range(K):
            if cols == w and b.strides[1] == b.itemsize:
                # A whole panel row from contiguous b: a loop of constant length, two vector copies
                # (2.5 times faster for a 128 x 512 U).
                for j in range(w):
                    panels[p, k, j] = b[k, p * w + j]
                continue
            for j in range(cols):
                panels[p, k, j] = b[k, p * w + j]
            for j in range(cols, w):
                panels[p, k, j] = 0.0
    return panels


@numba.njit(cache=True, error_model="numpy")
def matmul(a, b, panels, out):
    """out = a @ b, with panels = pack(b, rows): a (M, K), b (K, N), out (M, N)
    C-contiguous, one dtype, out not overlapping a."""
    M, K = a.shape
    N = out.shape[1]
    if b.shape[0] != K or b.shape[1] != N or out.shape[0] != M:
        raise ValueError("matmul: shapes do not match")
    if panels.shape[0] == 0:
        np.dot(a, b, out)
        return
    w = panels.shape[2]
    for p in range(panels.shape[0]):
        col = p * w
        _rows_set(out, a, panels[p], col, min(w, N - col))


@numba.njit(cache=True, error_model="numpy")
def matmul_add(a, b, panels, out):
    """out += a @ b: a (M, K) and b (K, N) with any strides, out (M, N) C-contiguous,
    not overlapping a or b.

    panels: pack(b, rows), or None. Without panels the tiles read b itself, a panel's
    width of columns at a time, which is as fast when b has few rows (a step's slab
    of rows in a weight gradient) and spares packing it."""
    M, K = a.shape
    N = out.shape[1]
    if b.shape[0] != K or b.shape[1] != N or out.shape[0] != M:
        raise ValueError("matmul_add: shapes do not match")
    packed = panels is not None and panels.shape[0] > 0
    if not packed and N > 1 and b.strides[1] != b.itemsize:
        # The tiles load whole vectors from b's rows; strided columns (W^T, not packed
        # because the sequence is short) go element by element, without allocating.
        for m in range(M):
            for k in range(K):
                for j in range(N):
                    out[m, j] += a[m, k] * b[k, j]
        return
    w = 2 * VECTOR_BYTES // b.itemsize
    for p in range((N + w - 1) // w):
        col = p * w
        cols = min(w, N - col)
        panel = panels[p] if packed else b[:, col:]
        if cols == w:
            _rows_add(out, a, panel, col, cols)
        else:
            _rows_add_masked(out, a, panel, col, cols)

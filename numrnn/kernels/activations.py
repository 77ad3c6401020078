"""tanh and σ over a whole gate block, in vector registers.

Numba's loop over ``tanh(x[k])`` (common.tanh_float32) vectorises, but LLVM picks
8-wide vectors on AVX-512 machines and, without fast-math, no fused multiply-adds:
about 7 ns a cell for an LSTM's five activations. These intrinsics evaluate the
same rational approximation on 16 lanes (8 without AVX-512) with llvm.fma for the
polynomials and an IEEE division, the last vector masked. Values stay within a few
float32 ulps of common.tanh_float32 (the polynomials round once per term instead of
twice) and NaN propagates as it does there. float64 keeps libm, element by element.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import common
from .gemm import VECTOR_BYTES

_WIDTH = VECTOR_BYTES // 4      # float32 lanes


def tanh_vector(builder, fma, x, splat):
    """IR for common.tanh_float32 on one vector."""
    def clamp(v, bound):
        v = builder.select(builder.fcmp_ordered("<", v, splat(-bound)), splat(-bound), v)
        return builder.select(builder.fcmp_ordered(">", v, splat(bound)), splat(bound), v)

    x = clamp(x, float(common._TANH_CLAMP))
    s = builder.fmul(x, x)

    def polynomial(coefficients):
        value = splat(float(coefficients[-1]))
        for c in reversed(coefficients[:-1]):
            value = builder.call(fma, [value, s, splat(float(c))])
        return value

    p = polynomial((common._P0, common._P1, common._P2, common._P3, common._P4, common._P5, common._P6))
    q = polynomial((common._Q0, common._Q1, common._Q2, common._Q3, common._Q4, common._Q5, common._Q6))
    return clamp(builder.fdiv(builder.fmul(x, p), q), 1.0)


def sigmoid_vector(builder, fma, x, splat):
    """IR for σ(x) = (1 + tanh(x/2)) / 2 on one vector, as common.sigmoid for float32."""
    half = splat(0.5)
    return builder.call(fma, [half, tanh_vector(builder, fma, builder.fmul(x, half), splat), half])


def _is_float32_block(a):
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == types.float32


def _map_intrinsic(kind):
    """An intrinsic map(out, x): out[k] = tanh(x[k]) or σ(x[k]) for 1-D C-contiguous
    float32 arrays of one length (out may be x)."""

    @intrinsic
    def apply(typingctx, out, x):
        def codegen(context, builder, sig, args):
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vector_type = ir.VectorType(f32, _WIDTH)
            mask_type = ir.VectorType(ir.IntType(1), _WIDTH)
            vector_ptr = vector_type.as_pointer()
            suffix = f"v{_WIDTH}f32"

            def intrinsic_fn(name, ret, params):
                return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, params), name)

            fma = intrinsic_fn(f"llvm.fma.{suffix}", vector_type, [vector_type] * 3)
            masked_load = intrinsic_fn(f"llvm.masked.load.{suffix}.p0", vector_type,
                                       [vector_ptr, i32, mask_type, vector_type])
            masked_store = intrinsic_fn(f"llvm.masked.store.{suffix}.p0", ir.VoidType(),
                                        [vector_type, vector_ptr, i32, mask_type])

            def splat(value):
                return ir.Constant(vector_type, [value] * _WIDTH)

            out_data = context.make_array(sig.args[0])(context, builder, args[0]).data
            x_array = context.make_array(sig.args[1])(context, builder, args[1])
            n = cgutils.unpack_tuple(builder, x_array.shape)[0]
            lanes = ir.Constant(ir.VectorType(i32, _WIDTH), list(range(_WIDTH)))
            align = ir.Constant(i32, 4)

            entry = builder.block
            check = builder.append_basic_block("map.check")
            body = builder.append_basic_block("map.body")
            done = builder.append_basic_block("map.done")
            builder.branch(check)

            builder.position_at_end(check)
            k = builder.phi(i64)
            k.add_incoming(ir.Constant(i64, 0), entry)
            builder.cbranch(builder.icmp_signed("<", k, n), body, done)

            builder.position_at_end(body)
            left = builder.sub(n, k)
            left = builder.trunc(builder.select(builder.icmp_signed("<", left, ir.Constant(i64, _WIDTH)), left,
                                                ir.Constant(i64, _WIDTH)), i32)
            left_vector = builder.insert_element(ir.Constant(ir.VectorType(i32, _WIDTH), ir.Undefined), left,
                                                 ir.Constant(i32, 0))
            left_vector = builder.shuffle_vector(left_vector, ir.Constant(ir.VectorType(i32, _WIDTH), ir.Undefined),
                                                 ir.Constant(ir.VectorType(i32, _WIDTH), [0] * _WIDTH))
            mask = builder.icmp_signed("<", lanes, left_vector)
            x_ptr = builder.bitcast(builder.gep(x_array.data, [k]), vector_ptr)
            out_ptr = builder.bitcast(builder.gep(out_data, [k]), vector_ptr)
            v = builder.call(masked_load, [x_ptr, align, mask, splat(0.0)])
            vector_fn = tanh_vector if kind == "tanh" else sigmoid_vector
            result = vector_fn(builder, fma, v, splat)
            builder.call(masked_store, [result, out_ptr, align, mask])
            k.add_incoming(builder.add(k, ir.Constant(i64, _WIDTH)), body)
            builder.branch(check)

            builder.position_at_end(done)
            return context.get_dummy_value()

        if not (_is_float32_block(out) and _is_float32_block(x)):
            return None
        return types.none(out, x), codegen

    return apply


_tanh_float32_block = _map_intrinsic("tanh")
_sigmoid_float32_block = _map_intrinsic("sigmoid")


def tanh_into(out, x):
    """out[k] = tanh(x[k]) over 1-D arrays of one length; out may be x."""
    out[:] = np.tanh(x)


def sigmoid_into(out, x):
    """out[k] = σ(x[k]) over 1-D arrays of one length; out may be x."""
    out[:] = 1.0 / (1.0 + np.exp(-x))


def _register(stub, block, scalar):
    """Compile calls to stub with the vector intrinsic block for float32 blocks, else
    element by element with scalar (common.tanh or common.sigmoid)."""
    @overload(stub, inline="always")
    def typed(out, x):
        if _is_float32_block(out) and _is_float32_block(x):
            return lambda out, x: block(out, x)

        def elementwise(out, x):
            for k in range(x.shape[0]):
                out[k] = scalar(x[k])
        return elementwise


_register(tanh_into, _tanh_float32_block, common.tanh)
_register(sigmoid_into, _sigmoid_float32_block, common.sigmoid)

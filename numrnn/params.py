"""One flat parameter buffer with a named view per tensor (llm.c's params_memory).

Parameters, gradients and the optimiser's moments share this layout, so the
optimiser is one loop over a flat index.
"""
import math

import numpy as np


class ParamLayout:
    """Collects (name, shape) pairs, then allocates one buffer and cuts views."""

    def __init__(self):
        self.shapes = {}

    def add(self, name, shape):
        if name in self.shapes:
            raise ValueError(f"parameter {name!r} declared twice")
        self.shapes[name] = tuple(shape)

    @property
    def size(self):
        return sum(math.prod(s) for s in self.shapes.values())

    def views(self, flat):
        """{name: view of flat with its shape}, in declaration order."""
        out, offset = {}, 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            out[name] = flat[offset:offset + n].reshape(shape)
            offset += n
        return out


def glorot_uniform(rng, shape, dtype):
    """Glorot & Bengio (2010) uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = shape
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape).astype(dtype)


def orthogonal_blocks(rng, rows, cols, dtype, width=None):
    """A (rows, cols) matrix cut into gate blocks of ``width`` columns (default
    rows), each orthogonal (Saxe et al. 2014), or semi-orthogonal when not square
    (orthonormal columns if rows > width, rows if rows < width)."""
    width = width or rows
    blocks = []
    for _ in range(cols // width):
        a = rng.standard_normal((max(rows, width), min(rows, width)))
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))      # sign fix: uniform over orthogonal matrices
        blocks.append(q if rows >= width else q.T)
    return np.concatenate(blocks, axis=1).astype(dtype)

"""Moving tensors between layouts: the model input, NCHW, becomes channels-last NHWC.

Every kernel works on channels-last tensors (the channels of a pixel are contiguous,
so they are the SIMD axis), while images arrive as PyTorch lays them out, (N, C, H, W)::

    out[n, i, j, c] = x[n, c, i, j]
"""
import numpy as np

from .policy import arenas, check, job


# ---------------------------------------------------------------- the reference (NumPy)
def nchw_to_nhwc_reference(x):
    """NumPy: (N, C, H, W) -> new (N, H, W, C)."""
    return np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))


# ---------------------------------------------------------------- the kernel
# fields of an "nchw_to_nhwc" op row (after [code, jobs]): x (N, C, H, W) at x_off,
# out (N, H, W, C) at o_off; one job per output row (n, i)
NCHW_TO_NHWC_FIELDS = ("x_off", "N", "C", "H", "W", "o_off")


@job
def nchw_to_nhwc_job(pa, a_size, pw, w_size, pp, job, worker):
    """Row i of image n: out[n, i, j, c] = x[n, c, i, j]."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    x_off, c, h, w, o_off = p[2], p[4], p[5], p[6], p[7]
    n = job // h
    i = job - n * h
    for j in range(w):
        dst = o_off + ((n * h + i) * w + j) * c
        for ch in range(c):
            A[dst + ch] = A[x_off + ((n * c + ch) * h + i) * w + j]


def nchw_to_nhwc_op(x_off, shape, o_off):
    """The op turning an (N, C, H, W) tensor into (N, H, W, C)."""
    check(len(shape) == 4, f"expected an (N, C, H, W) tensor, got shape {shape}")
    n, c, h, w = shape
    from .program import Op
    return Op("nchw_to_nhwc", n * h, (x_off, n, c, h, w, o_off))

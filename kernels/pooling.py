"""Global average pooling, channels last.

``out[b, c] = mean over (h, w) of x[b, h, w, c]`` — the classifier input of all
three families and the image-pooling branch of the DeepLabV3 heads.  The sums are
accumulated in float64 (from float32 vector sums of at most PIXEL_CHUNK pixels).
"""
import numpy as np

from .policy import arenas, check, check_array, job
from .simd import VEC, stack_buffer, stack_buffer_f64, vadd, vload, vsplat, vstore


# ---------------------------------------------------------------- the reference (NumPy)
def global_avg_pool_reference(x):
    """NumPy global average pool: x (B, H, W, C) -> new (B, C) float32."""
    return np.asarray(x, np.float64).mean(axis=(1, 2)).astype(np.float32)  # (B, C)


# ---------------------------------------------------------------- the kernel
CHANNEL_BLOCK = 64  # channels summed by one parallel job
PIXEL_CHUNK = 64    # pixels summed in float32 before their sum is added in float64

# fields of a "pool" op row (after [code, jobs]): x (B, HW, C) at x_off, out (B, C) at o_off
POOL_FIELDS = ("x_off", "B", "HW", "C", "o_off")


@job
def pool_job(pa, a_size, pw, w_size, pp, job, worker):
    """out[b, c0:c1] = mean over the HW pixels, for one block of channels (float64 sums)."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    x_off, hw, c, o_off = p[2], p[4], p[5], p[6]
    n_cblocks = (c + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
    b = job // n_cblocks
    c0 = (job - b * n_cblocks) * CHANNEL_BLOCK
    c1 = min(c, c0 + CHANNEL_BLOCK)
    acc = stack_buffer_f64(CHANNEL_BLOCK)    # (channels in block,)
    for ch in range(CHANNEL_BLOCK):
        acc[ch] = 0.0
    if c1 - c0 == CHANNEL_BLOCK:             # a whole block: float32 vector sums in registers
        part = stack_buffer(CHANNEL_BLOCK)   # over PIXEL_CHUNK pixels, then into the float64
        for k0 in range(0, hw, PIXEL_CHUNK):
            for v in range(0, CHANNEL_BLOCK, VEC):
                vstore(part, v, vsplat(np.float32(0.0)))
            for k in range(k0, min(hw, k0 + PIXEL_CHUNK)):
                row = x_off + (b * hw + k) * c + c0
                for v in range(0, CHANNEL_BLOCK, VEC):
                    vstore(part, v, vadd(vload(part, v), vload(A, row + v)))
            for ch in range(CHANNEL_BLOCK):
                acc[ch] += part[ch]
    else:
        for k in range(hw):
            row = x_off + (b * hw + k) * c
            for ch in range(c0, c1):
                acc[ch - c0] += A[row + ch]
    for ch in range(c0, c1):
        A[o_off + b * c + ch] = np.float32(acc[ch - c0] / hw)


def pool_op(x_off, shape, o_off):
    """The op of a global average pool of (B, H, W, C) into (B, C)."""
    check(len(shape) == 4 and shape[1] * shape[2] >= 1, f"cannot pool a map of shape {shape}")
    B, H, W, C = shape
    from .program import Op
    return Op("pool", B * -(-C // CHANNEL_BLOCK), (x_off, B, H * W, C, o_off))


def global_avg_pool(x, out):
    """Mean over the spatial axes.

    x:   (B, H, W, C) float32 C-contiguous, H*W >= 1.
    out: (B, C) float32 C-contiguous, written.   Returns ``out``.
    """
    from .program import Arena, run_ops

    check_array(x, "x", 4)
    check_array(out, "out", 2)
    B, H, W, C = x.shape
    check(out.shape == (B, C), f"out shape {out.shape} != {(B, C)}")
    if out.size == 0:
        return out
    A = Arena()
    xo, oo = A.add(x), A.add(size=out.size)
    arena = run_ops([pool_op(xo, x.shape, oo)], A.build(), Arena().build())
    out[...] = arena[oo:oo + out.size].reshape(out.shape)
    return out

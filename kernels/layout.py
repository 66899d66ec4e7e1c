"""Moving tensors between layouts, and copying channels.

Every kernel works on channels-last tensors (the channels of a pixel are contiguous,
so they are the SIMD axis), while images arrive as PyTorch lays them out, (N, C, H, W)::

    out[n, i, j, c] = x[n, c, i, j]

Concatenating maps along channels (MobileViT's fusion input, DeepLab's ASPP) copies
each map into its slice of the output's channels; broadcasting a per-image vector over a
map (the ASPP pooling branch) is the same copy reading one pixel for all::

    out[n, p, c0 + c] = x[n, p, c]      (broadcast: x[n, 0, c])

A model call also copies its input into the activation arena, checking in the same pass
that it holds no NaN or infinity (``copy_checked``: a C function called from Python,
compiled with the executor).
"""
import numpy as np

from .policy import arenas, check, check_array, entry, job, numba
from .simd import VEC, copy_floats, vadd, vload, vload_n, vmul, vsplat, vstore, vstore_n, vsum


# ---------------------------------------------------------------- the reference (NumPy)
def nchw_to_nhwc_reference(x):
    """NumPy: (N, C, H, W) -> new (N, H, W, C)."""
    return np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))


def copy_checked_reference(dst, src):
    """NumPy: dst[...] = src; whether every value of src is finite."""
    dst[...] = src
    return bool(np.isfinite(src).all())


def copy_channels_reference(x, out, c0, broadcast=False):
    """NumPy: out[..., c0:c0 + C] = x (N, H, W, C), or x (N, C) at every pixel if
    ``broadcast``; in place, returns out."""
    x = np.asarray(x, np.float32)
    c = x.shape[-1]
    out[..., c0:c0 + c] = x[:, None, None, :] if broadcast else x
    return out


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


# fields of a "copy_channels" op row: x at x_off (c floats a pixel, or one pixel an image
# when broadcasting), out (N, P, c_out) at o_off, written at channels c0 .. c0 + c
COPY_CHANNELS_FIELDS = ("x_off", "N", "P", "c", "broadcast", "o_off", "c_out", "c0", "per_job")


@job
def copy_channels_job(pa, a_size, pw, w_size, pp, job, worker):
    """Pixels job*per_job ... of one image: their c channels into the output's slice."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    x_off, n_pix, c, broadcast, o_off, c_out, c0, per = (p[2], p[4], p[5], p[6], p[7], p[8],
                                                         p[9], p[10])
    chunks = (n_pix + per - 1) // per
    n = job // chunks
    lo = (job - n * chunks) * per
    for q in range(lo, min(n_pix, lo + per)):
        src = x_off + (n * c if broadcast else (n * n_pix + q) * c)
        copy_floats(A, o_off + (n * n_pix + q) * c_out + c0, A, src, c)


def copy_channels_op(x_off, x_shape, o_off, out_shape, c0, broadcast=False, threads=1):
    """The op copying x (N, H, W, C) -- or x (N, C) broadcast over the map -- into channels
    c0 .. c0 + C of out (N, H, W, C_out)."""
    check(len(out_shape) == 4, f"expected an (N, H, W, C) output, got {out_shape}")
    n, h, w, c_out = out_shape
    c = x_shape[-1]
    check(0 <= c0 and c0 + c <= c_out and x_shape[0] == n
          and (broadcast and len(x_shape) == 2 or tuple(x_shape[1:3]) == (h, w)),
          f"cannot copy {x_shape} into channels {c0}.. of {out_shape}")
    per = max(64, -(-n * h * w // (4 * threads)))
    from .program import Op
    return Op("copy_channels", n * -(-h * w // per),
              (x_off, n, h * w, c, bool(broadcast), o_off, c_out, c0, per))


def copy_channels(x, out, c0, broadcast=False):
    """out[..., c0:c0 + C] = x (N, H, W, C) -- or x (N, C) at every pixel if ``broadcast``
    -- with the op; in place, returns ``out`` (both float32 C-contiguous)."""
    from .program import Arena, run_ops

    check_array(x, "x", 2 if broadcast else 4)
    check_array(out, "out", 4)
    if out.size == 0 or x.size == 0:
        return out
    A = Arena()
    xo, oo = A.add(x), A.add(out)
    arena = run_ops([copy_channels_op(xo, x.shape, oo, out.shape, c0, broadcast)], A.build(),
                    Arena().build())
    out[...] = arena[oo:oo + out.size].reshape(out.shape)
    return out


# ---------------------------------------------------------------- a call's input
@entry("int64(CPointer(float32), CPointer(float32), int64)")
def copy_checked(pdst, psrc, n):
    """dst[:n] = src[:n]; returns 1 if every value is finite, else 0.  One pass: x * 0 is 0
    for a finite x and NaN for NaN or an infinity, and a NaN survives the sum."""
    dst, src = numba.carray(pdst, (n,)), numba.carray(psrc, (n,))
    zero = vsplat(0.0)
    acc = zero
    i = 0
    while i + VEC <= n:
        v = vload(src, i)
        vstore(dst, i, v)
        acc = vadd(acc, vmul(v, zero))
        i += VEC
    if i < n:
        v = vload_n(src, i, n - i)                 # lanes past n: 0
        vstore_n(dst, i, v, n - i)
        acc = vadd(acc, vmul(v, zero))
    total = vsum(acc)
    return 1 if total == total else 0


def copy_in(dst, src):
    """``dst[...] = src`` (C-contiguous float32 arrays of one size); returns whether every
    value is finite (:func:`copy_checked`)."""
    check_array(dst, "dst")
    check_array(src, "src")
    check(dst.size == src.size, f"sizes differ: {dst.size} vs {src.size}")
    return bool(copy_checked.callable()(dst.ctypes.data, src.ctypes.data, src.size))

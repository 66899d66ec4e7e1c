"""Bilinear resizing of NHWC float32 tensors.

Bilinear interpolation reads, for every output pixel, the four input pixels
around a *source coordinate* and blends them::

    out[y, x] = (1-ly) * ((1-lx) * in[y0, x0] + lx * in[y0, x1])
              +    ly  * ((1-lx) * in[y1, x0] + lx * in[y1, x1])

with ``y0 = floor(src_y)``, ``y1 = min(y0 + 1, H - 1)``, ``ly = src_y - y0`` (same
for x).  The two axes are independent, so each axis becomes a small table of
``(index0, index1, weight0, weight1)`` per output index ("taps"); the kernel just
gathers and blends rows.  Only the way the source coordinate is computed differs:

* :func:`resize_bilinear` reproduces PyTorch's
  ``F.interpolate(mode="bilinear")`` exactly (float32 weights):

  - ``align_corners=False`` (half-pixel centres):
    ``scale = float32(in) / float32(out)``,
    ``src = max(scale * (dst + 0.5) - 0.5, 0)``, rounded to float32 *once*
    (computed in float64 first; ATen's compiled code fuses it into an FMA, and
    rounding twice in float32 is off by up to ~3e-5 for 65 -> 513);
  - ``align_corners=True`` (corner pixels aligned):
    ``src = float32((in - 1) / (out - 1)) * dst``;
  - the blend uses ATen's operation order with its two fused multiply-adds, so
    for an NCHW-contiguous torch tensor (what models return) and the usual
    large outputs (logits -> image) the result is bit-identical; for tiny
    outputs ATen runs differently compiled loops and we agree to ~1 ulp.

* :func:`resize_bilinear_mapped` takes an arbitrary affine map per axis,
  ``src = clamp(i * scale + offset, 0, in - 1)`` in float64.  ``segment()`` uses it
  to sample low-resolution logits exactly at the centres of the original image's
  pixels (see ``tinymvit.postprocess.logits_to_image_labels``);
  :func:`resize_bilinear_mapped_argmax` fuses the class argmax into it, so a
  12-megapixel label map never needs a (H, W, classes) float buffer.

Each public kernel has a plain NumPy reference (``*_reference``) used by the tests.
"""
from functools import lru_cache

import numpy as np

from .policy import check, check_array, helper, kernel
from .workers import POOL, default_threads, next_job


# ----------------------------------------------------------------------------- taps
def _finish_taps(src, in_size):
    """Turn float32 source coordinates (already >= 0) into bilinear taps, like ATen.

    Returns ``(i0, i1, w0, w1)``: int64 indices and float32 weights, one per output index.
    """
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)            # (out,)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))  # (out,) float32
    i1 = i0 + (i0 < in_size - 1)                                            # (out,)
    w0 = np.float32(1) - w1                                                 # (out,) float32
    return i0, i1, w0.astype(np.float32), w1.astype(np.float32)


@lru_cache(maxsize=256)
def torch_bilinear_taps(in_size, out_size, align_corners):
    """Per-axis taps of PyTorch's bilinear interpolation (cached; arrays are read-only).

    Returns ``(i0, i1, w0, w1)``, each of shape (out_size,): int64 indices, float32 weights.
    """
    dst = np.arange(out_size)
    if align_corners:
        if out_size > 1:
            scale = np.float32(in_size - 1) / np.float32(out_size - 1)
        else:
            scale = np.float32(0)
        src = scale * dst.astype(np.float32)                           # one float32 product
    else:
        scale = np.float32(in_size) / np.float32(out_size)
        # scale*(dst+0.5) - 0.5 is exact in float64, so casting once = one rounding (an FMA)
        src = np.maximum(np.float64(scale) * (dst + 0.5) - 0.5, 0.0).astype(np.float32)
    taps = _finish_taps(src, in_size)
    for a in taps:
        a.setflags(write=False)
    return taps


def mapped_bilinear_taps(in_size, out_size, scale, offset):
    """Taps for ``src = clamp(i * scale + offset, 0, in_size - 1)`` (float64 coordinates).

    Returns ``(i0, i1, w0, w1)``, each of shape (out_size,): int64 indices, float32 weights.
    """
    src = np.clip(np.arange(out_size) * float(scale) + float(offset), 0.0, in_size - 1)  # float64
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = src - i0                                                       # float64 in [0, 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (1.0 - lam).astype(np.float32), lam.astype(np.float32)


# --------------------------------------------------------------------------- kernel
@helper
def _fma32(a, b, c):
    """float32(a*b + c) as a fused multiply-add: a*b is exact in float64, so only the sum
    rounds (to float64, then float32 - the same as one rounding except in very rare
    double-rounding cases)."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


@kernel(nogil=True)
def _bilinear_gather(x, out, y0, y1, wy0, wy1, x0, x1, wx0, wx1, sync, worker, n_workers):
    """out[b, oy, ox, :] = blend of the four x rows/columns named by the taps.

    The arithmetic is ATen's, operation for operation, including the multiply-adds
    its compiled loop fuses:  row = fma(w0, x0, w1*x1);  out = fma(a0, top, a1*bot).
    One job per output row, shared by the workers.
    """
    B, Ho, Wo, C = out.shape
    while True:
        r = next_job(sync, 1)
        if r >= B * Ho:
            break
        b = r // Ho
        oy = r - b * Ho
        top = x[b, y0[oy]]        # (W, C)
        bot = x[b, y1[oy]]        # (W, C)
        a0 = wy0[oy]
        a1 = wy1[oy]
        orow = out[b, oy]         # (Wo, C)
        for ox in range(Wo):
            c0 = x0[ox]
            c1 = x1[ox]
            b0 = wx0[ox]
            b1 = wx1[ox]
            for c in range(C):
                t = _fma32(b0, top[c0, c], b1 * top[c1, c])
                u = _fma32(b0, bot[c0, c], b1 * bot[c1, c])
                orow[ox, c] = _fma32(a0, t, a1 * u)


@kernel(nogil=True)
def _bilinear_argmax(x, labels, y0, y1, wy0, wy1, x0, x1, wx0, wx1, sync, worker, n_workers):
    """labels[b, oy, ox] = argmax over c of the bilinear blend at (oy, ox).

    Separable: each output row first blends its two input rows (vertical pass into a
    small (W, C) buffer), then every output pixel blends two buffer columns and keeps
    the best class.  (Same maths as _bilinear_gather, other rounding order: a class
    can flip only where two scores tie to float32 precision.)
    """
    B, Ho, Wo = labels.shape
    W = x.shape[2]
    C = x.shape[3]
    rows_per_task = 16
    n_tasks = (B * Ho + rows_per_task - 1) // rows_per_task
    col = np.empty((W, C), dtype=np.float32)            # vertical blend of one output row
    while True:
        task = next_job(sync, 1)
        if task >= n_tasks:
            break
        for r in range(task * rows_per_task, min(B * Ho, (task + 1) * rows_per_task)):
            b = r // Ho
            oy = r - b * Ho
            top = x[b, y0[oy]]    # (W, C)
            bot = x[b, y1[oy]]    # (W, C)
            a0 = wy0[oy]
            a1 = wy1[oy]
            for i in range(W):
                for c in range(C):
                    col[i, c] = a0 * top[i, c] + a1 * bot[i, c]
            for ox in range(Wo):
                left = col[x0[ox]]
                right = col[x1[ox]]
                b0 = wx0[ox]
                b1 = wx1[ox]
                best = b0 * left[0] + b1 * right[0]
                arg = 0
                for c in range(1, C):
                    v = b0 * left[c] + b1 * right[c]
                    if v > best:      # strict: ties keep the lowest class index
                        best = v
                        arg = c
                labels[b, oy, ox] = arg


def _check(x, out):
    check_array(x, "x", 4)
    check_array(out, "out", 4)
    check(x.shape[0] == out.shape[0] and x.shape[3] == out.shape[3],
          f"batch/channels differ: x {x.shape}, out {out.shape}")
    check(x.shape[1] > 0 and x.shape[2] > 0, f"empty input {x.shape}")


def _gather(x, out, ty, tx, threads):
    POOL.run(_bilinear_gather, (x, out, *ty, *tx), threads or default_threads(), 2)


def resize_bilinear(x, out, align_corners=False, threads=None):
    """PyTorch ``F.interpolate(mode="bilinear")`` on NHWC float32 tensors.

    x:   (B, H, W, C) float32, C-contiguous.
    out: (B, Ho, Wo, C) float32, C-contiguous; written in place and returned.
    """
    _check(x, out)
    B, H, W, C = x.shape
    _, Ho, Wo, _ = out.shape
    if out.size == 0:
        return out
    ty = torch_bilinear_taps(H, Ho, bool(align_corners))   # 4 x (Ho,)
    tx = torch_bilinear_taps(W, Wo, bool(align_corners))   # 4 x (Wo,)
    _gather(x, out, ty, tx, threads)                       # out: (B, Ho, Wo, C)
    return out


def resize_bilinear_mapped(x, out, scale_y, offset_y, scale_x, offset_x, threads=None):
    """Bilinear sampling at ``src = clamp(i * scale + offset, 0, in - 1)`` per axis.

    x:   (B, H, W, C) float32, C-contiguous.
    out: (B, Ho, Wo, C) float32, C-contiguous; written in place and returned.
    Output pixel (i, j) samples x at row ``i*scale_y + offset_y`` and column
    ``j*scale_x + offset_x`` (float64 coordinates, clamped to the image).
    """
    _check(x, out)
    B, H, W, C = x.shape
    _, Ho, Wo, _ = out.shape
    if out.size == 0:
        return out
    ty = mapped_bilinear_taps(H, Ho, scale_y, offset_y)    # 4 x (Ho,)
    tx = mapped_bilinear_taps(W, Wo, scale_x, offset_x)    # 4 x (Wo,)
    _gather(x, out, ty, tx, threads)                       # out: (B, Ho, Wo, C)
    return out


def resize_bilinear_mapped_argmax(x, labels, scale_y, offset_y, scale_x, offset_x,
                                  threads=None):
    """Argmax over channels of :func:`resize_bilinear_mapped`, without the float buffer.

    x:      (B, H, W, C) float32, C-contiguous (e.g. segmentation logits).
    labels: (B, Ho, Wo) int64, C-contiguous; written in place and returned.
    Equal to ``resize_bilinear_mapped(...).argmax(-1)`` (ties -> lowest index) except
    where two classes tie to float32 rounding, but never materialises the
    (B, Ho, Wo, C) interpolated scores, and is separable (two blends per class).
    """
    check_array(x, "x", 4)
    check(isinstance(labels, np.ndarray) and labels.dtype == np.int64
          and labels.flags.c_contiguous and labels.ndim == 3,
          "labels must be C-contiguous int64 (B, Ho, Wo)")
    check(labels.shape[0] == x.shape[0] and min(x.shape) > 0,
          f"batch differs or empty input: x {x.shape}, labels {labels.shape}")
    B, H, W, C = x.shape
    _, Ho, Wo = labels.shape
    if labels.size == 0:
        return labels
    ty = mapped_bilinear_taps(H, Ho, scale_y, offset_y)    # 4 x (Ho,)
    tx = mapped_bilinear_taps(W, Wo, scale_x, offset_x)    # 4 x (Wo,)
    POOL.run(_bilinear_argmax, (x, labels, *ty, *tx), threads or default_threads(), 2)
    return labels


# ------------------------------------------------------------------------ references
def resize_bilinear_reference(x, out_size, align_corners=False):
    """NumPy reference of :func:`resize_bilinear`: (B,H,W,C) -> (B,Ho,Wo,C) float32."""
    x = np.asarray(x, dtype=np.float32)
    Ho, Wo = out_size
    _, H, W, _ = x.shape

    def axis(n_in, n_out):
        dst = np.arange(n_out)
        if align_corners:
            s = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
            src = s * dst.astype(np.float32)
        else:
            s = np.float32(n_in) / np.float32(n_out)
            src = np.float32(np.maximum(np.float64(s) * (dst + 0.5) - 0.5, 0.0))
        src = np.asarray(src, dtype=np.float32)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        lam = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
        i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
        return i0, i1, (np.float32(1) - lam).astype(np.float32), lam

    y0, y1, ay0, ay1 = axis(H, Ho)
    x0, x1, bx0, bx1 = axis(W, Wo)
    ay0, ay1 = ay0[None, :, None, None], ay1[None, :, None, None]
    bx0, bx1 = bx0[None, None, :, None], bx1[None, None, :, None]
    top = x[:, y0]                                       # (B, Ho, W, C)
    bot = x[:, y1]                                       # (B, Ho, W, C)
    res = (ay0 * (bx0 * top[:, :, x0] + bx1 * top[:, :, x1])
           + ay1 * (bx0 * bot[:, :, x0] + bx1 * bot[:, :, x1]))
    return res.astype(np.float32)                        # (B, Ho, Wo, C)


def resize_bilinear_mapped_reference(x, out_size, scale_y, offset_y, scale_x, offset_x):
    """NumPy reference of :func:`resize_bilinear_mapped` (float64 blend): (B,Ho,Wo,C) float32."""
    x = np.asarray(x, dtype=np.float64)
    Ho, Wo = out_size
    _, H, W, _ = x.shape
    out = np.empty((x.shape[0], Ho, Wo, x.shape[3]))
    for i in range(Ho):
        sy = min(max(i * scale_y + offset_y, 0.0), H - 1)
        yy0 = int(np.floor(sy))
        yy1 = min(yy0 + 1, H - 1)
        ly = sy - yy0
        for j in range(Wo):
            sx = min(max(j * scale_x + offset_x, 0.0), W - 1)
            xx0 = int(np.floor(sx))
            xx1 = min(xx0 + 1, W - 1)
            lx = sx - xx0
            out[:, i, j] = ((1 - ly) * ((1 - lx) * x[:, yy0, xx0] + lx * x[:, yy0, xx1])
                            + ly * ((1 - lx) * x[:, yy1, xx0] + lx * x[:, yy1, xx1]))
    return out.astype(np.float32)


def resize_bilinear_mapped_argmax_reference(x, out_size, scale_y, offset_y, scale_x, offset_x):
    """NumPy reference of :func:`resize_bilinear_mapped_argmax`: (B, Ho, Wo) int64."""
    scores = resize_bilinear_mapped_reference(x, out_size, scale_y, offset_y, scale_x, offset_x)
    return scores.argmax(-1).astype(np.int64)

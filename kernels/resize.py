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
import numpy as np

from .policy import arenas, check, check_array, helper, job, scratch


# ---------------------------------------------------------------- the reference (NumPy)
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


# ---------------------------------------------------------------- the kernel
@helper
def _fma32(a, b, c):
    """float32(a*b + c) as a fused multiply-add: a*b is exact in float64, so only the sum
    rounds (to float64, then float32 - the same as one rounding except in very rare
    double-rounding cases)."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


@helper
def _tap(i, n_in, n_out, mode, scale, offset):
    """The bilinear *taps* of output index i along one axis: (i0, i1, w0, w1), the two input
    indices and their weights.  mode 0: PyTorch half-pixel, 1: PyTorch align_corners, 2: the
    float64 map ``clamp(i * scale + offset, 0, n_in - 1)`` (see the module docstring)."""
    if mode == 2:
        src = min(max(i * scale + offset, 0.0), n_in - 1.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        lam = src - i0
        return i0, min(i0 + 1, n_in - 1), np.float32(1.0 - lam), np.float32(lam)
    if mode == 1:
        s32 = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0.0)
        src32 = s32 * np.float32(i)
    else:
        s32 = np.float32(n_in) / np.float32(n_out)
        src32 = np.float32(max(np.float64(s32) * (i + 0.5) - 0.5, 0.0))
    i0 = min(int(np.floor(src32)), n_in - 1)
    w1 = min(max(src32 - np.float32(i0), np.float32(0.0)), np.float32(1.0))
    return i0, i0 + 1 if i0 < n_in - 1 else i0, np.float32(1.0) - w1, w1


# fields of a "resize" op row (after [code, jobs]): x (B, H, W, C) at x_off; out (B, Ho, Wo, C)
# at o_off, or with argmax the labels (B, Ho, Wo) as float32 class indices; mode as in _tap;
# the last four: float64 scale_y, offset_y, scale_x, offset_x (mode 2), as int64 bits
RESIZE_FIELDS = ("x_off", "B", "H", "W", "C", "o_off", "Ho", "Wo", "mode", "argmax",
                 "scale_y", "offset_y", "scale_x", "offset_x")


@job
def resize_job(pa, a_size, pw, w_size, pp, r, worker):
    """Output row r = (b, oy): the blend of the two input rows around it."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    x_off, H, Wi, C, o_off, Ho, Wo, mode, argmax = (p[2], p[4], p[5], p[6], p[7], p[8], p[9],
                                                    p[10], p[11])
    affine = p[12:16].view(np.float64)
    b = r // Ho
    oy = r - b * Ho
    y0, y1, a0, a1 = _tap(oy, H, Ho, mode, affine[0], affine[1])
    top = x_off + (b * H + y0) * Wi * C
    bot = x_off + (b * H + y1) * Wi * C
    if argmax:
        # separable: blend the two rows into scratch (W, C), then two columns per pixel
        col = scratch(p, worker)
        for k in range(Wi * C):
            A[col + k] = a0 * A[top + k] + a1 * A[bot + k]
        for ox in range(Wo):
            c0, c1, b0, b1 = _tap(ox, Wi, Wo, mode, affine[2], affine[3])
            left = col + c0 * C
            right = col + c1 * C
            best = b0 * A[left] + b1 * A[right]
            arg = 0
            for c in range(1, C):
                v = b0 * A[left + c] + b1 * A[right + c]
                if v > best:      # strict: ties keep the lowest class index
                    best = v
                    arg = c
            A[o_off + r * Wo + ox] = np.float32(arg)
        return
    for ox in range(Wo):
        c0, c1, b0, b1 = _tap(ox, Wi, Wo, mode, affine[2], affine[3])
        out = o_off + (r * Wo + ox) * C
        for c in range(C):        # ATen's order, with its two fused multiply-adds
            t = _fma32(b0, A[top + c0 * C + c], b1 * A[top + c1 * C + c])
            u = _fma32(b0, A[bot + c0 * C + c], b1 * A[bot + c1 * C + c])
            A[out + c] = _fma32(a0, t, a1 * u)


def resize_op(x_off, x_shape, o_off, out_hw, mode, affine=(0.0, 0.0, 0.0, 0.0), argmax=False):
    """The op resizing x (B, H, W, C) to (B, Ho, Wo, C) (or, with argmax, to class labels)."""
    check(len(x_shape) == 4 and min(x_shape) > 0, f"cannot resize a map of shape {x_shape}")
    B, H, Wi, C = x_shape
    Ho, Wo = out_hw
    bits = np.array(affine, np.float64).view(np.int64)
    from .program import Op
    return Op("resize", B * Ho, (x_off, B, H, Wi, C, o_off, Ho, Wo, mode, argmax, *bits),
              scratch=Wi * C if argmax else 0)


def _run(x, out_shape, mode, affine, argmax, threads):
    from .program import Arena, run_ops
    A = Arena()
    xo, oo = A.add(x), A.add(size=int(np.prod(out_shape)))
    arena = run_ops([resize_op(xo, x.shape, oo, out_shape[1:3], mode, affine, argmax)], A.build(),
                    Arena().build(), threads)
    return arena[oo:oo + int(np.prod(out_shape))].reshape(out_shape)


def _check(x, out):
    check_array(x, "x", 4)
    check_array(out, "out", 4)
    check(x.shape[0] == out.shape[0] and x.shape[3] == out.shape[3],
          f"batch/channels differ: x {x.shape}, out {out.shape}")
    check(x.shape[1] > 0 and x.shape[2] > 0, f"empty input {x.shape}")


def resize_bilinear(x, out, align_corners=False, threads=None):
    """PyTorch ``F.interpolate(mode="bilinear")`` on NHWC float32 tensors.

    x:   (B, H, W, C) float32, C-contiguous.
    out: (B, Ho, Wo, C) float32, C-contiguous; written in place and returned.
    """
    _check(x, out)
    if out.size:
        out[...] = _run(x, out.shape, 1 if align_corners else 0, (0.0,) * 4, False, threads)
    return out


def resize_bilinear_mapped(x, out, scale_y, offset_y, scale_x, offset_x, threads=None):
    """Bilinear sampling at ``src = clamp(i * scale + offset, 0, in - 1)`` per axis.

    x:   (B, H, W, C) float32, C-contiguous.
    out: (B, Ho, Wo, C) float32, C-contiguous; written in place and returned.
    Output pixel (i, j) samples x at row ``i*scale_y + offset_y`` and column
    ``j*scale_x + offset_x`` (float64 coordinates, clamped to the image).
    """
    _check(x, out)
    if out.size:
        out[...] = _run(x, out.shape, 2, (scale_y, offset_y, scale_x, offset_x), False, threads)
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
    check(x.shape[3] < 1 << 24, "at most 2**24 classes")
    if labels.size:
        labels[...] = _run(x, labels.shape, 2, (scale_y, offset_y, scale_x, offset_x), True,
                           threads)
    return labels

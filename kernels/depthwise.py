"""Depthwise kxk convolution (groups == channels), channels-last.

Each channel is filtered on its own by its own kxk kernel:

    out[n, i, j, c] = act( bias[c] + sum_{a, b} w[c, a, b]
                           * x[n, i*s - pad_top + a*d, j*s - pad_left + b*d, c] )

with zeros outside the input (s = stride, d = dilation, both axes).  The output
size is given by ``out``, so the bottom/right padding is implicit and
asymmetric TF-"SAME" padding needs nothing special.

In NHWC the channels of a pixel are contiguous, so the natural vector axis is c.
For a group of PIX = 4 neighbouring output pixels and a block of 16 channels the
4 x 16 running sums stay in 8 AVX2 registers while the (at most kh*kw) taps are
added -- each weight vector, loaded once per tap, serves the 4 pixels -- and the
block is then written once, with the activation fused.  Pixels near the left or
right border, whose taps are partly in the padding, are done one at a time and
visit only their valid taps: per output row the valid tap rows [a_lo, a_hi) are
found once, per such pixel the valid tap columns [b_lo, b_hi).  Channels past
the last multiple of 16 are done one at a time.  Output rows run in parallel.
"""
import numpy as np
from numba import njit, prange

from .activations import apply_act
from .conv import pad_for_output, valid_taps
from .pointwise import act_reference_f64, copy16, fma16, stack_buffer_f32

CB = 16   # channels per register block (2 AVX2 vectors)
PIX = 4   # neighbouring output pixels computed together (share the weight loads)
ACC = PIX * CB


def prepare_depthwise_weight(w):
    """Torch-layout depthwise weight (C, 1, kh, kw) -> float32 (kh, kw, C) (once, at load)."""
    w = np.asarray(w, np.float32)
    assert w.ndim == 4 and w.shape[1] == 1, f"expected (C, 1, kh, kw), got {w.shape}"
    return np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))      # (kh, kw, C)


@njit(inline="always", fastmath=True, error_model="numpy", cache=True)
def _pixels(x, wp, bias, act, out, n, i, j, npix, c0, ih0, iw0, stride, dil,
            a_lo, a_hi, b_lo, b_hi, acc):
    """out[n, i, j:j+npix, c0:c0+16] for ``npix`` (1 or PIX) neighbouring output pixels.

    The pixels must share the valid tap ranges.  Accumulators: ``acc`` holds
    npix x 16 floats (registers); each weight vector is loaded once per tap and
    used for all npix pixels.
    """
    _, h, w_in, c = x.shape
    _, ho, wo, _ = out.shape
    kw = wp.shape[1]
    for q in range(npix):
        copy16(acc, q * CB, bias, c0)                            # start from the bias
    for a in range(a_lo, a_hi):
        x_row = (n * h + ih0 + a * dil) * w_in                   # pixel index of x[n, ih, 0]
        for b in range(b_lo, b_hi):
            wi = (a * kw + b) * c + c0                           # wp[a, b, c0]
            xi = (x_row + iw0 + b * dil) * c + c0                # x[n, ih, iw, c0], pixel j
            for q in range(npix):
                fma16(acc, q * CB, wp, wi, x, xi + q * stride * c)
    for t in range(npix * CB):
        acc[t] = apply_act(acc[t], act)
    o = ((n * ho + i) * wo + j) * c + c0                         # out[n, i, j, c0]
    for q in range(npix):
        copy16(out, o + q * c, acc, q * CB)


@njit(inline="always", fastmath=True, error_model="numpy", cache=True)
def _pixel_tail(x, wp, bias, act, out, n, i, j, c_lo, ih0, iw0, dil, a_lo, a_hi, b_lo, b_hi):
    """Channels c_lo.. (fewer than 16) of one output pixel, one at a time."""
    for ch in range(c_lo, x.shape[3]):
        v = bias[ch]
        for a in range(a_lo, a_hi):
            for b in range(b_lo, b_hi):
                v += wp[a, b, ch] * x[n, ih0 + a * dil, iw0 + b * dil, ch]
        out[n, i, j, ch] = apply_act(v, act)


@njit(fastmath=True, error_model="numpy", cache=True)
def _output_row(x, wp, bias, stride, dil, pad_t, pad_l, act, out, n, i, j_full_lo, j_full_hi):
    """out[n, i, :, :]: groups of PIX pixels whose taps are all inside, single pixels elsewhere."""
    _, h, w_in, c = x.shape
    wo = out.shape[2]
    kh, kw, _ = wp.shape
    c_main = c // CB * CB
    acc = stack_buffer_f32(ACC)
    ih0 = i * stride - pad_t
    a_lo, a_hi = valid_taps(ih0, kh, dil, h)
    j = 0
    while j < wo:
        iw0 = j * stride - pad_l
        if j_full_lo <= j and j + PIX <= j_full_hi:          # PIX pixels, all kw taps valid
            for c0 in range(0, c_main, CB):
                _pixels(x, wp, bias, act, out, n, i, j, PIX, c0, ih0, iw0, stride, dil,
                        a_lo, a_hi, 0, kw, acc)
            for q in range(PIX):
                if c_main < c:
                    _pixel_tail(x, wp, bias, act, out, n, i, j + q, c_main, ih0,
                                iw0 + q * stride, dil, a_lo, a_hi, 0, kw)
            j += PIX
        else:                                                 # one pixel near the border
            b_lo, b_hi = valid_taps(iw0, kw, dil, w_in)
            for c0 in range(0, c_main, CB):
                _pixels(x, wp, bias, act, out, n, i, j, 1, c0, ih0, iw0, stride, dil,
                        a_lo, a_hi, b_lo, b_hi, acc)
            if c_main < c:
                _pixel_tail(x, wp, bias, act, out, n, i, j, c_main, ih0, iw0, dil,
                            a_lo, a_hi, b_lo, b_hi)
            j += 1


@njit(parallel=True, fastmath=True, error_model="numpy", cache=True)
def _depthwise_kernel(x, wp, bias, stride, dil, pad_t, pad_l, act, out):
    n_img, h, w_in, c = x.shape          # x (N, H, W, C)
    _, ho, wo, _ = out.shape             # out (N, Ho, Wo, C)
    kw = wp.shape[1]                     # wp (kh, kw, C)
    # output columns whose kw taps are all inside the input: j_full_lo <= j < j_full_hi
    j_full_lo = (pad_l + stride - 1) // stride
    j_full_hi = max(j_full_lo, min(wo, (w_in - 1 - (kw - 1) * dil + pad_l) // stride + 1))
    for row in prange(n_img * ho):       # the rows (n, i) are independent
        n = row // ho
        _output_row(x, wp, bias, stride, dil, pad_t, pad_l, act, out, n, row - n * ho,
                    j_full_lo, j_full_hi)


def depthwise_conv(x, wp, bias, stride, dilation, pad_top, pad_left, act, out):
    """Depthwise conv of x (N, H, W, C) into out (N, Ho, Wo, C); returns out.

    wp: (kh, kw, C) from :func:`prepare_depthwise_weight`; bias (C,) float32;
    stride, dilation: ints for both axes; pad_top/pad_left: zeros before the
    input (bottom/right padding follows from out's size); act: activation code.
    """
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.ndim == 4
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.ndim == 4
    assert out.shape[0] == x.shape[0] and out.shape[3] == x.shape[3] == wp.shape[2]
    assert bias.shape == (x.shape[3],) and bias.dtype == np.float32
    if out.size:
        _depthwise_kernel(x, wp, bias, stride, dilation, pad_top, pad_left, act, out)
    return out


def depthwise_reference(x, w, bias, stride, dilation, pad_top, pad_left, act, out_hw):
    """Plain NumPy depthwise conv (float64); x (N,H,W,C), w (C,1,kh,kw) -> (N,Ho,Wo,C) float32."""
    w = np.asarray(w, np.float64)
    c, _, kh, kw = w.shape
    ho, wo = out_hw
    xp = pad_for_output(x, kh, kw, stride, dilation, pad_top, pad_left, out_hw)  # (N, Hp, Wp, C)
    y = np.zeros((x.shape[0], ho, wo, c)) + np.asarray(bias, np.float64)        # (N, Ho, Wo, C)
    for a in range(kh):
        for b in range(kw):
            r, s = a * dilation, b * dilation
            y += xp[:, r:r + (ho - 1) * stride + 1:stride,
                    s:s + (wo - 1) * stride + 1:stride] * w[:, 0, a, b]
    return act_reference_f64(y, act).astype(np.float32)

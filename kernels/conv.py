"""Full (groups = 1) kxk convolution, and the padding arithmetic shared by all convs.

For a channels-last input x (N, H, W, Cin) and a weight w (Cout, Cin, kh, kw):

    out[n, i, j, o] = act( bias[o] + sum_{a, b, c} w[o, c, a, b]
                           * x[n, i*s - pad_top + a*d, j*s - pad_left + b*d, c] )

reading zeros outside the input (s = stride, d = dilation, both axes).  The
output size is given by ``out``; bottom/right padding is whatever that size
needs, so symmetric and TF-"SAME" (asymmetric) padding are the same kernel.

Implementation: an *implicit GEMM* that reuses the pointwise micro-kernel.
Each output pixel is one row of a matrix A whose K = kh*kw*Cin columns are the
input vectors seen by the kh*kw taps (the "im2col" row); then out = A @ W' with
W' the weight reshaped to (kh*kw*Cin, Cout).  A is never materialised whole:
each parallel job copies the rows of its chunk of MC output pixels into a small
buffer (zeros where a tap falls in the padding) and runs the 4 x 16 register
tiles of ``pointwise.micro_tile`` over it.

Two refinements keep it at GEMM speed:

* K is processed in blocks of whole taps (<= about 512 floats), so the slice of
  a weight panel in use (K-block x 16 floats) stays in L1 while it is applied to
  all tiles of the chunk; partial sums wait in a tiny (MC x 16) buffer.
* A tap that falls in the padding for all 4 pixels of a tile is skipped.  With
  large dilations on small maps (DeepLab ASPP: rates 6/12/18 on 32x32) most
  off-centre taps only read padding, so this saves a large share of the work.
"""
from collections import namedtuple

import numpy as np
from numba import njit, prange

from .activations import ACT_NONE, apply_act
from .pointwise import (MR, NR, TILE, act_reference_f64, axpy16, copy16, micro_tile,
                        plan_jobs, prepare_pointwise_weight, stack_buffer_f32,
                        store_partial_tile, zero_tile)


# ---------------------------------------------------------------- padding arithmetic
def conv_out_size(n, k, stride, dilation, pad_before, pad_after):
    """Output length of a conv along one axis (PyTorch's floor formula)."""
    return (n + pad_before + pad_after - dilation * (k - 1) - 1) // stride + 1


def symmetric_pads(k, dilation):
    """(before, after) for PyTorch's symmetric ``padding=(k-1)//2 * dilation``."""
    p = (k - 1) // 2 * dilation
    return p, p


def tf_same_pads(n, k, stride, dilation):
    """(before, after) of transformers' MobileNetV2 ``apply_tf_padding`` along one axis.

    total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0); before = total // 2;
    after = total - before; both are then multiplied by the dilation (HF uses the
    undilated k; this matches TF SAME for the stride-1 dilated convs that occur).
    """
    if n % stride == 0:
        total = max(k - stride, 0)
    else:
        total = max(k - (n % stride), 0)
    before = total // 2
    return before * dilation, (total - before) * dilation


# ---------------------------------------------------------------- weights
ConvWeight = namedtuple("ConvWeight", "panels kh kw cin cout")
ConvWeight.__doc__ = """Packed conv weight: ``panels`` (ceil(Cout/16), kh*kw*Cin, 16) float32 with
row index (a*kw + b)*Cin + c, i.e. the im2col column order; plus the kernel shape."""


def prepare_conv_weight(w):
    """Pack a torch-layout conv weight (Cout, Cin, kh, kw) for :func:`conv2d` (once, at load)."""
    w = np.asarray(w, np.float32)
    assert w.ndim == 4, f"expected (Cout, Cin, kh, kw), got {w.shape}"
    cout, cin, kh, kw = w.shape
    w2 = w.transpose(0, 2, 3, 1).reshape(cout, kh * kw * cin)   # (Cout, kh*kw*Cin), im2col order
    return ConvWeight(prepare_pointwise_weight(w2), kh, kw, cin, cout)


# ---------------------------------------------------------------- the kernel
@njit(inline="always", fastmath=True, error_model="numpy", cache=True)
def valid_taps(pos, k, dil, size):
    """[lo, hi): the taps t < k whose input index pos + t*dil lies in [0, size)."""
    lo = 0
    while lo < k and pos + lo * dil < 0:
        lo += 1
    hi = k
    while hi > lo and pos + (hi - 1) * dil >= size:
        hi -= 1
    return lo, hi


@njit(inline="always", fastmath=True, error_model="numpy", cache=True)
def _gather(x, cols3, live, m_lo, rows, ho, wo, kh, kw, stride, dil, pad_t, pad_l):
    """cols3[r, a*kw + b, :] = x[img, i*s - pad_t + a*d, j*s - pad_l + b*d, :] (or zeros)
    for the output pixels m_lo + r = (img, i, j); live[r // MR, tap] |= tap is inside."""
    _, h, w_in, cin = x.shape
    taps = kh * kw
    img = m_lo // (ho * wo)              # pixel (img, i, j) of row 0, then counted up
    i = (m_lo // wo) % ho
    j = m_lo % wo
    for r in range(rows):
        ih0 = i * stride - pad_t
        iw0 = j * stride - pad_l
        a_lo, a_hi = valid_taps(ih0, kh, dil, h)
        b_lo, b_hi = valid_taps(iw0, kw, dil, w_in)
        if a_hi - a_lo < kh or b_hi - b_lo < kw:       # near the border: zeros first
            for t in range(taps):
                for c in range(cin):
                    cols3[r, t, c] = np.float32(0.0)
        for a in range(a_lo, a_hi):
            ih = ih0 + a * dil
            for b in range(b_lo, b_hi):
                iw = iw0 + b * dil
                t = a * kw + b
                live[r // MR, t] = True
                if cin == 3:        # RGB stem: fixed length avoids the vector-loop set-up
                    for c in range(3):
                        cols3[r, t, c] = x[img, ih, iw, c]
                else:
                    for c in range(cin):
                        cols3[r, t, c] = x[img, ih, iw, c]
        j += 1
        if j == wo:
            j = 0
            i += 1
            if i == ho:
                i = 0
                img += 1


@njit(fastmath=True, error_model="numpy", cache=True)
def _conv_job(x, wp, kh, kw, bias, stride, dil, pad_t, pad_l, act, out2, ho, wo, mc, tb,
              m_lo, p_lo, p_hi):
    """Output pixels m_lo:m_lo+mc x panels p_lo:p_hi: gather the im2col rows, then GEMM."""
    cin = x.shape[3]
    m_total, n_total = out2.shape        # out2 (N*Ho*Wo, Cout)
    taps = kh * kw
    rows = min(mc, m_total - m_lo)
    cols3 = np.empty((mc, taps, cin), np.float32)      # im2col rows of this chunk
    cols = cols3.reshape((mc, taps * cin))             # the same, as GEMM rows (MC, K)
    live = np.zeros((mc // MR, taps), np.bool_)        # tap reads real input for the tile?
    part = np.empty((mc, NR), np.float32)              # partial sums between K-blocks
    acc = stack_buffer_f32(TILE)

    # 1. gather the im2col rows (zeros in the padding) and the live-tap table
    _gather(x, cols3, live, m_lo, rows, ho, wo, kh, kw, stride, dil, pad_t, pad_l)

    # 2. GEMM: for each panel, K-blocks of tb taps, 4 x 16 tiles over the chunk
    last = rows - 1
    for p in range(p_lo, p_hi):
        n0 = p * NR
        ncols = min(NR, n_total - n0)
        for t_lo in range(0, taps, tb):
            t_hi = min(taps, t_lo + tb)
            for r0 in range(0, rows, MR):
                tile = r0 // MR
                if t_lo == 0:
                    zero_tile(acc)
                else:                                  # resume the partial sums
                    for q in range(MR):
                        copy16(acc, q * NR, part, (r0 + q) * NR)
                # runs of consecutive live taps -> one micro-kernel call each
                t = t_lo
                while t < t_hi:
                    if not live[tile, t]:
                        t += 1
                        continue
                    t_end = t + 1
                    while t_end < t_hi and live[tile, t_end]:
                        t_end += 1
                    micro_tile(cols, r0, min(r0 + 1, last), min(r0 + 2, last),
                               min(r0 + 3, last), t * cin, wp, p, (t_end - t) * cin, acc)
                    t = t_end
                if t_hi < taps:                        # park the partial sums
                    for q in range(MR):
                        copy16(part, (r0 + q) * NR, acc, q * NR)
                    continue
                # epilogue as in pointwise._pointwise_job: out = act(acc + bias)
                nrows = min(MR, rows - r0)
                if ncols < NR:
                    store_partial_tile(acc, nrows, ncols, out2, m_lo + r0, n0, bias, act,
                                       out2, False)
                    continue
                for q in range(MR):
                    axpy16(acc, q * NR, np.float32(1.0), bias, n0)
                if act != ACT_NONE:
                    for t in range(TILE):
                        acc[t] = apply_act(acc[t], act)
                for q in range(nrows):
                    copy16(out2, (m_lo + r0 + q) * n_total + n0, acc, q * NR)


@njit(parallel=True, fastmath=True, error_model="numpy", cache=True)
def _conv_kernel(x, wp, kh, kw, bias, stride, dil, pad_t, pad_l, act, out2, ho, wo, mc, pg, tb):
    m_total = out2.shape[0]              # x (N, H, W, Cin), out2 (N*Ho*Wo, Cout)
    panels = wp.shape[0]                 # wp (P, kh*kw*Cin, 16)
    n_chunks = (m_total + mc - 1) // mc
    n_groups = (panels + pg - 1) // pg
    for job in prange(n_chunks * n_groups):   # jobs: (chunk of mc pixels) x (group of pg panels)
        chunk = job // n_groups
        group = job - chunk * n_groups
        _conv_job(x, wp, kh, kw, bias, stride, dil, pad_t, pad_l, act, out2, ho, wo, mc, tb,
                  chunk * mc, group * pg, min(panels, group * pg + pg))


def conv2d(x, wp, bias, stride, dilation, pad_top, pad_left, act, out):
    """Full kxk conv (groups=1) of x (N, H, W, Cin) into out (N, Ho, Wo, Cout); returns out.

    wp: :func:`prepare_conv_weight` result; bias (Cout,) float32; stride, dilation:
    ints for both axes; pad_top/pad_left: zero rows/columns before the input
    (the bottom/right padding follows from out's size); act: activation code.
    """
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.ndim == 4
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.ndim == 4
    n, h, w, cin = x.shape
    n_o, ho, wo, cout = out.shape
    assert n_o == n and cin == wp.cin and cout == wp.cout, "shape mismatch with the weight"
    assert bias.shape == (cout,) and bias.dtype == np.float32
    m = n * ho * wo
    if m == 0:
        return out
    kt = wp.kh * wp.kw * cin
    # the im2col chunk (MC x kh*kw*Cin floats, <= 512 KiB) stays in L2; K-blocks of whole
    # taps of <= ~512 floats keep the slice of a panel in use (K-block x 16) in L1
    mc, pg = plan_jobs(m, max(MR, min(128, 131072 // kt)), wp.panels.shape[0])
    tb = max(1, 512 // cin)
    _conv_kernel(x, wp.panels, wp.kh, wp.kw, bias, stride, dilation, pad_top, pad_left, act,
                 out.reshape(m, cout), ho, wo, mc, pg, tb)
    return out


# ---------------------------------------------------------------- reference
def pad_for_output(x, k_h, k_w, stride, dilation, pad_top, pad_left, out_hw):
    """Zero-pad NHWC x so that every tap of every output pixel is inside (float64 copy)."""
    n, h, w, c = x.shape
    ho, wo = out_hw
    need_h = (ho - 1) * stride + (k_h - 1) * dilation + 1     # padded rows the output reads
    need_w = (wo - 1) * stride + (k_w - 1) * dilation + 1
    xp = np.zeros((n, max(need_h, pad_top + h), max(need_w, pad_left + w), c))   # (N, Hp, Wp, C)
    xp[:, pad_top:pad_top + h, pad_left:pad_left + w] = x
    return xp


def conv2d_reference(x, w, bias, stride, dilation, pad_top, pad_left, act, out_hw):
    """Plain NumPy full conv (float64 sum over taps).

    x (N, H, W, Cin); w torch layout (Cout, Cin, kh, kw); out_hw = (Ho, Wo);
    returns a new float32 (N, Ho, Wo, Cout).
    """
    w = np.asarray(w, np.float64)
    cout, cin, kh, kw = w.shape
    ho, wo = out_hw
    xp = pad_for_output(x, kh, kw, stride, dilation, pad_top, pad_left, out_hw)
    y = np.zeros((x.shape[0], ho, wo, cout)) + np.asarray(bias, np.float64)   # (N, Ho, Wo, Cout)
    for a in range(kh):
        for b in range(kw):
            r, c = a * dilation, b * dilation
            patch = xp[:, r:r + (ho - 1) * stride + 1:stride,
                       c:c + (wo - 1) * stride + 1:stride]                 # (N, Ho, Wo, Cin)
            y += patch @ w[:, :, a, b].T
    return act_reference_f64(y, act).astype(np.float32)

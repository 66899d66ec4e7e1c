"""Full (groups = 1) kxk convolution, and the padding arithmetic shared by all convs.

For a channels-last input x (N, H, W, Cin) and a weight w (Cout, Cin, kh, kw):

    out[n, i, j, o] = act( bias[o] + sum_{a, b, c} w[o, c, a, b]
                           * x[n, i*s - pad_top + a*d, j*s - pad_left + b*d, c] )

reading zeros outside the input (s = stride, d = dilation, both axes).  The
output size is given by ``out``; bottom/right padding is whatever that size
needs, so symmetric and TF-"SAME" (asymmetric) padding are the same kernel.

Implementation: an *implicit GEMM* on the pointwise kernel's register tile.
Each output pixel is one row of a matrix A whose K = kh*kw*Cin columns are the
input vectors seen by the kh*kw taps (the "im2col" row); then out = A @ W' with
W' the weight reshaped to (kh*kw*Cin, Cout).  A is never materialised whole:
each parallel job copies the rows of its chunk of MC output pixels into a small
buffer (zeros where a tap falls in the padding) and runs the MR x NR register
tiles of ``simd.gemm_tile`` over it.

A tap that falls in the padding for all MR pixels of a tile is skipped: the tile
runs over the runs of consecutive live taps only.  With large dilations on small
maps (DeepLab ASPP: rates 6/12/18 on 32x32) most off-centre taps only read
padding, so this saves a large share of the work.
"""
from collections import namedtuple

import numpy as np

from .pointwise import (act_reference_f64, add_tile, bias_act_channels, check_activation,
                        pack_panels, plan_jobs, store_tile, unpack_panels)
from .policy import arenas, check, check_array, helper, job, scratch
from .simd import MR, NR, TILE, copy_floats, gemm_tile, stack_buffer, zero_floats
from .workers import default_threads


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
ConvWeight.__doc__ = """Packed conv weight: ``panels`` (ceil(Cout/NR), kh*kw*Cin, NR) float32 with
row index (a*kw + b)*Cin + c, i.e. the im2col column order; plus the kernel shape."""


def prepare_conv_weight(w):
    """Pack a torch-layout conv weight (Cout, Cin, kh, kw) for :func:`conv2d` (once, at load)."""
    w = np.asarray(w, np.float32)
    check(w.ndim == 4, f"expected a (Cout, Cin, kh, kw) weight, got {w.shape}")
    cout, cin, kh, kw = w.shape
    w2 = w.transpose(0, 2, 3, 1).reshape(cout, kh * kw * cin)   # (Cout, kh*kw*Cin), im2col order
    return ConvWeight(pack_panels(w2), kh, kw, cin, cout)


def unpack_conv_weight(wp):
    """Inverse of :func:`prepare_conv_weight`: the torch-layout (Cout, Cin, kh, kw) weight."""
    w2 = unpack_panels(wp.panels, wp.cout)                       # (Cout, kh*kw*Cin)
    return np.ascontiguousarray(w2.reshape(wp.cout, wp.kh, wp.kw, wp.cin).transpose(0, 3, 1, 2))


# ---------------------------------------------------------------- the kernel
@helper
def valid_taps(pos, k, dil, size):
    """[lo, hi): the taps t < k whose input index pos + t*dil lies in [0, size)."""
    lo = 0
    while lo < k and pos + lo * dil < 0:
        lo += 1
    hi = k
    while hi > lo and pos + (hi - 1) * dil >= size:
        hi -= 1
    return lo, hi


@helper
def _gather(A, x_off, h, w_in, cin, cols, live, m_lo, rows, ho, wo, kh, kw, stride, dil, pad_t,
            pad_l, nchw):
    """The im2col rows of output pixels m_lo .. m_lo + rows (pixel m = (img, i, j)):

        cols[r*K + (a*kw + b)*cin + c] = x[img, i*s - pad_t + a*d, j*s - pad_l + b*d, c]

    or 0 where that tap falls in the padding (K = kh*kw*cin; x (N, H, W, cin) at
    A[x_off], or (N, cin, H, W) if ``nchw``: the model input, read in its own layout;
    cols = A[cols:], live = A[live:], both in the job's scratch space);
    A[live + (r // MR)*kh*kw + a*kw + b] = 1 when the tap reads real input."""
    kt = kh * kw * cin
    img = m_lo // (ho * wo)              # pixel (img, i, j) of row 0, then counted up
    i = (m_lo // wo) % ho
    j = m_lo % wo
    for r in range(rows):
        ih0 = i * stride - pad_t
        iw0 = j * stride - pad_l
        a_lo, a_hi = valid_taps(ih0, kh, dil, h)
        b_lo, b_hi = valid_taps(iw0, kw, dil, w_in)
        row = r * kt
        if a_hi - a_lo < kh or b_hi - b_lo < kw:       # near the border: zeros first
            zero_floats(A, cols + row, kt)
        for a in range(a_lo, a_hi):
            ih = ih0 + a * dil
            for b in range(b_lo, b_hi):
                t = a * kw + b
                A[live + (r // MR) * kh * kw + t] = 1.0
                iw = iw0 + b * dil
                if nchw:
                    for ch in range(cin):
                        A[cols + row + t * cin + ch] = A[x_off + ((img * cin + ch) * h + ih) * w_in
                                                         + iw]
                else:
                    copy_floats(A, cols + row + t * cin, A, x_off + ((img * h + ih) * w_in + iw) * cin,
                                cin)
        j += 1
        if j == wo:
            j = 0
            i += 1
            if i == ho:
                i = 0
                img += 1


# fields of a "conv" op row, after [code, jobs]; mc: output pixels (im2col) or rows (direct)
# per job, pg: panels per job
CONV_FIELDS = ("x_off", "n_img", "h", "w", "cin", "o_off", "ho", "wo", "cout", "kh", "kw",
               "w_off", "b_off", "act", "stride", "dil", "pad_t", "pad_l", "mc", "pg", "direct",
               "nchw")
DIRECT_MIN_CHANNELS = 32   # from this many input channels, taps are read in place


@helper
def _im2col_chunk(A, W, p, j, worker):
    """Job j of an im2col conv op: mc output pixels x pg panels -- gather their im2col rows
    into the job's scratch (zeros in the padding), then run the register tiles over the
    runs of consecutive taps that read real input for the tile."""
    x_off, n_img, h, w_in, cin, o_off, ho, wo, cout = (p[2], p[3], p[4], p[5], p[6], p[7], p[8],
                                                       p[9], p[10])
    kh, kw, w_off, b_off, act, stride, dil = p[11], p[12], p[13], p[14], p[15], p[16], p[17]
    pad_t, pad_l, mc, pg = p[18], p[19], p[20], p[21]
    m_total = n_img * ho * wo
    n_panels = (cout + NR - 1) // NR
    n_groups = (n_panels + pg - 1) // pg
    chunk = j // n_groups
    group = j - chunk * n_groups
    m_lo = chunk * mc
    rows = min(mc, m_total - m_lo)
    taps = kh * kw
    kt = taps * cin
    cols = scratch(p, worker)                          # im2col rows of this chunk: A[cols:]
    live = cols + mc * kt                              # tap t reads input for tile q: A[live:]
    zero_floats(A, live, (mc // MR + 1) * taps)
    acc = stack_buffer(TILE)
    _gather(A, x_off, h, w_in, cin, cols, live, m_lo, rows, ho, wo, kh, kw, stride, dil, pad_t,
            pad_l, p[23] != 0)
    for pp in range(group * pg, min(n_panels, group * pg + pg)):
        n0 = pp * NR
        ncols = min(NR, cout - n0)
        for r0 in range(0, rows, MR):
            tile = r0 // MR
            nrows = min(MR, rows - r0)
            started = False
            t = 0
            flags = live + tile * taps
            while t < taps:                            # runs of live taps
                if A[flags + t] == 0.0:
                    t += 1
                    continue
                t_end = t + 1
                while t_end < taps and A[flags + t_end] != 0.0:
                    t_end += 1
                gemm_tile(acc, A, cols + r0 * kt + t * cin, kt, nrows, W,
                          w_off + (pp * kt + t * cin) * NR, (t_end - t) * cin, started)
                started = True
                t = t_end
            if not started:                            # every tap in the padding
                for q in range(TILE):
                    acc[q] = np.float32(0.0)
            o = o_off + (m_lo + r0) * cout + n0
            store_tile(acc, nrows, A, o, cout, ncols, W, b_off + n0, act, A, o, False)


@helper
def _direct_rows(A, W, p, j):
    """Job j of a direct conv op: a band of mc output rows of one image x pg panels.  Tap by
    tap, the register tiles read the input pixels straight from x (a row of output pixels
    reads a row of input pixels, ``stride * cin`` floats apart) -- only the pixels whose tap
    lies inside the input -- and add their products into the output; then bias and
    activation.  No im2col copy, and taps that read only padding cost nothing."""
    x_off, n_img, h, w_in, cin, o_off, ho, wo, cout = (p[2], p[3], p[4], p[5], p[6], p[7], p[8],
                                                       p[9], p[10])
    kh, kw, w_off, b_off, act, stride, dil = p[11], p[12], p[13], p[14], p[15], p[16], p[17]
    pad_t, pad_l, mc, pg = p[18], p[19], p[20], p[21]
    n_panels = (cout + NR - 1) // NR
    n_groups = (n_panels + pg - 1) // pg
    bands = (ho + mc - 1) // mc
    group = j % n_groups
    n = (j // n_groups) // bands
    i_lo = ((j // n_groups) % bands) * mc
    i_hi = min(ho, i_lo + mc)
    p_lo = group * pg
    p_hi = min(n_panels, p_lo + pg)
    c_lo = p_lo * NR
    c_hi = min(cout, p_hi * NR)
    kt = kh * kw * cin
    acc = stack_buffer(TILE)
    for i in range(i_lo, i_hi):                         # start from zero
        for jj in range(wo):
            zero_floats(A, o_off + ((n * ho + i) * wo + jj) * cout + c_lo, c_hi - c_lo)
    for a in range(kh):
        for b in range(kw):
            # output columns whose tap (a, b) reads a real input column: [j_lo, j_hi)
            shift = b * dil - pad_l
            j_lo = max(0, (-shift + stride - 1) // stride)
            j_hi = min(wo, (w_in - 1 - shift) // stride + 1)
            if j_hi <= j_lo:
                continue
            tap = (a * kw + b) * cin
            for pp in range(p_lo, p_hi):
                n0 = pp * NR
                ncols = min(NR, cout - n0)
                for i in range(i_lo, i_hi):
                    ih = i * stride - pad_t + a * dil
                    if ih < 0 or ih >= h:
                        continue
                    x_row = x_off + ((n * h + ih) * w_in + shift) * cin
                    o_row = o_off + ((n * ho + i) * wo) * cout + n0
                    for j0 in range(j_lo, j_hi, MR):
                        rows = min(MR, j_hi - j0)
                        gemm_tile(acc, A, x_row + j0 * stride * cin, stride * cin, rows, W,
                                  w_off + pp * kt * NR + tap * NR, cin, False)
                        add_tile(acc, rows, A, o_row + j0 * cout, cout, ncols)
    for i in range(i_lo, i_hi):
        for jj in range(wo):
            o = o_off + ((n * ho + i) * wo + jj) * cout
            bias_act_channels(A, o, c_lo, c_hi, W, b_off, act)


@job
def conv_job(pa, a_size, pw, w_size, pp, j, worker):
    """Job j of a conv op (im2col for few input channels, direct for many: see conv_op)."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    if p[22]:
        _direct_rows(A, W, p, j)
    else:
        _im2col_chunk(A, W, p, j, worker)


def check_maps(x_shape, out_shape, cin, cout):
    """x (N, H, W, cin) and out (N, Ho, Wo, cout)."""
    check(len(x_shape) == 4 and len(out_shape) == 4, "x and out must be (N, H, W, C) maps")
    check(out_shape[0] == x_shape[0] and x_shape[3] == cin and out_shape[3] == cout,
          f"x {x_shape} / out {out_shape} do not fit {cin} input and {cout} output channels")


def check_geometry(x_shape, out_shape, kh, kw, stride, dilation, pad_top, pad_left):
    """Stride, dilation and padding are sane and out is not larger than they allow, so
    that no tap of any output pixel can index outside the padded input."""
    for name, v in (("kh", kh), ("kw", kw), ("stride", stride), ("dilation", dilation)):
        check(isinstance(v, (int, np.integer)) and v >= 1, f"{name} must be an int >= 1, got {v}")
    for name, v in (("pad_top", pad_top), ("pad_left", pad_left)):
        check(isinstance(v, (int, np.integer)) and v >= 0, f"{name} must be an int >= 0, got {v}")
    _, h, w, _ = x_shape
    _, ho, wo, _ = out_shape
    check(ho == 0 or (ho - 1) * stride - pad_top <= h - 1 + (kh - 1) * dilation,
          "out has more rows than the input and padding give")
    check(wo == 0 or (wo - 1) * stride - pad_left <= w - 1 + (kw - 1) * dilation,
          "out has more columns than the input and padding give")


def conv_op(x_off, x_shape, o_off, out_shape, wp, w_off, b_off, stride, dilation, pad_top,
            pad_left, act, threads=1, nchw=False):
    """The op of a full kxk conv (weights ``wp`` at W[w_off], bias at W[b_off]).  ``nchw``: x
    is stored (N, Cin, H, W) -- the model input, before any layout change (``x_shape`` is
    still given as (N, H, W, Cin))."""
    check(isinstance(wp, ConvWeight), "wp must come from prepare_conv_weight")
    check_maps(x_shape, out_shape, wp.cin, wp.cout)
    check_geometry(x_shape, out_shape, wp.kh, wp.kw, stride, dilation, pad_top, pad_left)
    check_activation(act)
    n, h, w, cin = x_shape
    _, ho, wo, cout = out_shape
    m = n * ho * wo
    kt = wp.kh * wp.kw * cin
    panels = wp.panels.shape[0]
    from .program import Op
    if cin >= DIRECT_MIN_CHANNELS and not nchw:
        # bands of output rows: the rows of input they read (bands x W x Cin floats) stay in
        # L2 while one tap's slice of a panel (Cin x NR floats) sweeps them
        band = max(1, min(ho, 65536 // max(1, w * cin)))
        band = -(-ho // max(1, -(-ho // band)))           # equal bands
        jobs_rows = n * -(-ho // band)
        groups = min(panels, max(1, -(-4 * threads // jobs_rows))) if threads > 1 else 1
        pg = -(-panels // groups)
        return Op("conv", jobs_rows * -(-panels // pg),
                  (x_off, n, h, w, cin, o_off, ho, wo, cout, wp.kh, wp.kw, w_off, b_off, act,
                   stride, dilation, pad_top, pad_left, band, pg, True, False))
    # the im2col chunk (MC x kh*kw*Cin floats, <= 256 KiB) stays in L2
    mc, pg, jobs = plan_jobs(m, max(MR, min(256, 65536 // kt)), panels, threads)
    return Op("conv", jobs, (x_off, n, h, w, cin, o_off, ho, wo, cout, wp.kh, wp.kw, w_off,
                             b_off, act, stride, dilation, pad_top, pad_left, mc, pg, False, nchw),
              scratch=mc * kt + (mc // MR + 1) * wp.kh * wp.kw)


def conv2d(x, wp, bias, stride, dilation, pad_top, pad_left, act, out, threads=None):
    """Full kxk conv (groups=1) of x (N, H, W, Cin) into out (N, Ho, Wo, Cout); returns out.

    wp: :func:`prepare_conv_weight` result; bias (Cout,) float32; stride, dilation:
    ints for both axes; pad_top/pad_left: zero rows/columns before the input
    (the bottom/right padding follows from out's size); act: activation code.
    """
    from .program import Arena, run_ops

    check(isinstance(wp, ConvWeight), "wp must come from prepare_conv_weight")
    check_bias(bias, wp.cout)
    if out.size == 0:
        return out
    check_array(x, "x", 4)
    check_array(out, "out", 4)
    A, W = Arena(), Arena()
    xo, oo = A.add(x), A.add(size=out.size)
    wo, bo = W.add(wp.panels), W.add(bias)
    threads = threads or default_threads()
    arena = run_ops([conv_op(xo, x.shape, oo, out.shape, wp, wo, bo, stride, dilation, pad_top,
                             pad_left, act, threads)], A.build(), W.build(), threads)
    out[...] = arena[oo:oo + out.size].reshape(out.shape)
    return out


def check_bias(bias, n, what="bias"):
    check(isinstance(bias, np.ndarray) and bias.dtype == np.float32 and bias.shape == (n,),
          f"{what} must be a float32 array of shape ({n},)")


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

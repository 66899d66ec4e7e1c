"""Depthwise kxk convolution, alone or fused into a separable block, channels-last.

Each channel is filtered on its own by its own kxk kernel::

    out[n, i, j, c] = act( bias[c] + sum_{a, b} w[c, a, b]
                           * x[n, i*s - pad_top + a*d, j*s - pad_left + b*d, c] )

with zeros outside the input (s = stride, d = dilation, both axes).  The output
size is given by ``out``, so the bottom/right padding is implicit and asymmetric
TF-"SAME" padding needs nothing special.

The depthwise conv rarely stands alone: MobileNetV2's *inverted residual* (also
in MobileViT and MobileViTV2) is ``1x1 expand -> depthwise 3x3 -> 1x1 reduce (+ x)``::

    e = act(x @ We + be)                 (N, H, W, Ch)      Ch = expand_ratio * Cin
    d = act(depthwise(e) + bd)           (N, H/s, W/s, Ch)
    y = d @ Wr + br  (+ x)               (N, H/s, W/s, Cout)

Run as three kernels, the wide tensors ``e`` and ``d`` go to memory and back
(MobileViTV2's first stage: 128 x 128 x 128 floats, 8 MiB, written then read).
The *separable* op here makes a band of output rows per parallel job instead:

* the input rows the band needs are *produced* one at a time into a small ring of
  rows kept in L2 -- expanded by the 1x1 conv (``pointwise.gemm_block``), or just
  copied when there is no expand conv;
* ring rows carry zero columns on both sides, and a row of zeros stands in for
  rows above or below the input, so every tap of every output pixel reads real
  memory and no pixel is a border case; with 128, 256, 512... channels a ring
  pixel is one cache line longer than its channels (:func:`pixel_stride`);
* each depthwise output row is made from the ring (``simd.dw_tile``: DW_PIX = 4
  pixels x one channel vector in registers over the taps, then bias and activation);
* output rows are *consumed* by the 1x1 reduce conv, a few rows at a time, straight
  into ``y`` (+ x), or written out when the op is a depthwise conv alone.

``e`` and ``d`` never exist whole; the only extra work is the input rows that two
neighbouring jobs both produce (one or two per job).
"""
from collections import namedtuple

import numpy as np

from .activations import ACT_NONE, ACT_SILU, activate
from .conv import check_bias, check_geometry, check_maps, pad_for_output
from .pointwise import (PointwiseWeight, act_reference_f64, check_activation, gemm_block,
                        pointwise_reference)
from .policy import arenas, check, check_array, helper, job, scratch
from .simd import (DW_PIX, NR, VEC, copy_floats, dw_pixel, dw_pixel_n, dw_tile, dw_tile_n,
                   stack_buffer_i64, zero_floats)
from .workers import resolve_threads


# ---------------------------------------------------------------- the reference (NumPy)
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


def separable_reference(x, expand, dw, reduce, stride, dilation, pad_top, pad_left, out_hw,
                        residual=False):
    """The three convs of :func:`fused_separable` one after the other, with the references.

    expand, reduce: None or (torch-layout weight (Cout, Cin[, 1, 1]), bias, act);
    dw: (torch-layout weight (C, 1, kh, kw), bias, act).
    """
    e = x if expand is None else pointwise_reference(x, *expand)                # (N, H, W, Ch)
    d = depthwise_reference(e, dw[0], dw[1], stride, dilation, pad_top, pad_left, dw[2],
                            out_hw)                                             # (N, Ho, Wo, Ch)
    if reduce is None:
        return d
    return pointwise_reference(d, *reduce, residual=x if residual else None)   # (N, Ho, Wo, Cout)


# ---------------------------------------------------------------- the kernel
MAX_KERNEL = 64    # largest kernel height (tap rows) of a depthwise conv


DepthwiseWeight = namedtuple("DepthwiseWeight", "blocks kh kw c")
DepthwiseWeight.__doc__ = """A packed depthwise weight: ``blocks`` float32 (ceil(C/VEC), kh*kw, VEC)
with ``blocks[g, a*kw + b, l] = w[g*VEC + l, 0, a, b]`` and zeros past C: the kh*kw weight
vectors of one channel vector side by side, so that a depthwise tile finds all of them at
constant distances from one pointer (see ``simd.dw_tile``)."""


def prepare_depthwise_weight(w):
    """Pack a torch-layout depthwise weight (C, 1, kh, kw) (once, at load)."""
    w = np.asarray(w, np.float32)
    check(w.ndim == 4 and w.shape[1] == 1, f"expected a (C, 1, kh, kw) weight, got {w.shape}")
    c, _, kh, kw = w.shape
    groups = -(-c // VEC)
    padded = np.zeros((groups * VEC, kh * kw), np.float32)             # (G*VEC, kh*kw)
    padded[:c] = w.reshape(c, kh * kw)
    blocks = padded.reshape(groups, VEC, kh * kw).transpose(0, 2, 1)   # (G, kh*kw, VEC)
    return DepthwiseWeight(np.ascontiguousarray(blocks), kh, kw, c)


def unpack_depthwise_weight(wp):
    """Inverse of :func:`prepare_depthwise_weight`: the torch-layout (C, 1, kh, kw) weight."""
    w = np.asarray(wp.blocks, np.float32).transpose(0, 2, 1)          # (G, VEC, kh*kw)
    return np.ascontiguousarray(w.reshape(-1, wp.kh, wp.kw)[:wp.c, None])  # (C, 1, kh, kw)


def check_depthwise_weight(wp):
    """Refuse anything but a packed weight whose blocks fit its channels and kernel size."""
    check(isinstance(wp, DepthwiseWeight), "depthwise weights must come from "
                                           "prepare_depthwise_weight")
    check_array(wp.blocks, "depthwise weight", 3)
    check(wp.blocks.shape == (-(-wp.c // VEC), wp.kh * wp.kw, VEC),
          f"depthwise weight blocks {wp.blocks.shape} do not fit {wp.c} channels "
          f"of {wp.kh}x{wp.kw}")


# ---------------------------------------------------------------- one output row
@helper
def depthwise_row(src, offs, xs, w, w_off, kh, kw, c, b_off, act, dst, d_off, ds, wo, s, d):
    """One output row (wo pixels x c channels, ds floats apart) into dst.flat[d_off:], from
    padded rows of src (pixels xs floats apart).

    offs[a]: flat offset in src of the padded input row read by tap row a; pixel j's first
    tap is at padded column j*s.  Tiles of DW_PIX pixels (d apart at stride 1: a dilated
    kernel's pixels then share input columns), then single pixels, whole channel vectors,
    then the partial one, each with its activation in registers -- except
    SiLU, applied to the finished row in a second pass over it (in L1): a tile has only
    DW_PIX sums to activate, too few independent exp chains to hide their latency, while a
    loop over the row keeps many in flight (the fused MobileViTV2 blocks -2.5..4.6 % on Zen 3;
    SiLU after a GEMM tile, with MR * NV sums, stays in registers).
    """
    tile_act = ACT_NONE if act == ACT_SILU else act
    c_full = c - c % VEC
    step = d if s == 1 else 1             # a tile's pixels: d apart share input columns
    blocks = wo // (DW_PIX * step)        # blocks of step interleaved tiles
    for q in range(step):
        o = d_off + q * ds
        if c_full:
            dw_tile(dst, o, ds, src, offs, xs, q * s, step, blocks, w, w_off, b_off, kh, kw, 0,
                    c_full, s, d, tile_act)
        if c_full < c:
            dw_tile_n(dst, o, ds, src, offs, xs, q * s, step, blocks, w, w_off, b_off, kh, kw,
                      c_full, c, s, d, tile_act)
    j = blocks * DW_PIX * step            # then single pixels
    o = d_off + j * ds
    if c_full:
        dw_pixel(dst, o, ds, src, offs, xs, j * s, 1, wo - j, w, w_off, b_off, kh, kw, 0, c_full,
                 s, d, tile_act)
    if c_full < c:
        dw_pixel_n(dst, o, ds, src, offs, xs, j * s, 1, wo - j, w, w_off, b_off, kh, kw, c_full,
                   c, s, d, tile_act)
    if act == ACT_SILU:                   # (and the padding between pixels: never read)
        activate(dst, d_off, (wo - 1) * ds + c, act)


# ---------------------------------------------------------------- the separable op
# fields of a "separable" op row, after [code, jobs]
SEPARABLE_FIELDS = (
    "x_off", "n_img", "h", "w", "cin",                       # input map
    "has_expand", "ex_w_off", "ex_b_off", "ex_act", "ch",    # 1x1 expand (or a copy: ch = cin)
    "dw_w_off", "dw_b_off", "kh", "kw", "act", "stride", "dil", "pad_t", "pad_l",  # depthwise
    "has_reduce", "re_w_off", "re_b_off", "re_act", "cout", "r_off", "has_res",  # 1x1 reduce
    "o_off", "ho", "wo",                                     # output map
    "rows_per_job", "ring_w", "band_rows", "ring_px", "band_px")  # the plan


PAD_AT = 128      # channel counts (floats) whose pixel stride in the ring gets one more line


def pixel_stride(c):
    """Floats from one pixel to the next in a job's ring and band rows: ``c``, plus one
    cache line (16 floats) when c is a multiple of PAD_AT floats (8 lines).  A depthwise tile
    reads 6 pixels of 3 ring rows at once; with a pixel stride of 2 KiB (512 channels) they
    all fall into 2 of the 64 sets of a 32 KiB 8-way L1 cache and evict each other before the
    tile's next channel vector reads the other half of their lines (a 3x3 row with 512
    channels took 3x the time of one with 480 or 528, with 1024 channels 7-11x, on Zen 3).
    An odd number of lines per pixel spreads them over all the sets."""
    return c + 16 if c % PAD_AT == 0 else c


def ring_shape(w_in, wo, kw, stride, dil, pad_l, kh):
    """(rows, padded width) of a job's ring: enough rows for one output row's taps plus
    the next row's new ones, and one more row of zeros at the end."""
    width = max(pad_l + w_in, (wo - 1) * stride + (kw - 1) * dil + 1)
    return (kh - 1) * dil + stride + 1, width


@job
def separable_job(pa, a_size, pw, w_size, pp, j, worker):
    """Job j of a separable op: output rows j*rows_per_job ... of one image, made from a
    ring of produced input rows (see the module docstring)."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    x_off, _n_img, h, w_in, cin = p[2], p[3], p[4], p[5], p[6]
    has_expand, ex_w_off, ex_b_off, ex_act, ch = p[7], p[8], p[9], p[10], p[11]
    dw_w_off, dw_b_off, kh, kw, act = p[12], p[13], p[14], p[15], p[16]
    s, d, pad_t, pad_l = p[17], p[18], p[19], p[20]
    has_reduce, re_w_off, re_b_off, re_act, cout, r_off, has_res = (p[21], p[22], p[23], p[24],
                                                                    p[25], p[26], p[27])
    o_off, ho, wo, rows_per_job, ring_w, band_rows = p[28], p[29], p[30], p[31], p[32], p[33]
    xs, bs = p[34], p[35]                                 # floats from pixel to pixel
    per_img = (ho + rows_per_job - 1) // rows_per_job
    n = j // per_img
    i_lo = (j - n * per_img) * rows_per_job
    i_hi = min(ho, i_lo + rows_per_job)

    n_slots = (kh - 1) * d + s
    row_len = ring_w * xs
    ring = scratch(p, worker)                             # padded input rows; last: zeros
    zero_floats(A, ring, (n_slots + 1) * row_len)
    zero_off = ring + n_slots * row_len
    band = zero_off + row_len                             # depthwise rows for the reduce
    offs = stack_buffer_i64(MAX_KERNEL)
    x_img = x_off + n * h * w_in * cin
    nxt = max(0, i_lo * s - pad_t)                        # next input row to produce
    pending = 0                                           # depthwise rows waiting in the band
    for i in range(i_lo, i_hi):
        ih0 = i * s - pad_t
        last = min(h - 1, ih0 + (kh - 1) * d)
        while nxt <= last:                                # produce the rows this one needs
            r = ring + (nxt % n_slots) * row_len + pad_l * xs
            src = x_img + nxt * w_in * cin
            if has_expand:                                # the 1x1 expand conv of input row nxt
                gemm_block(A, src, cin, w_in, cin, W, ex_w_off, 0, (ch + NR - 1) // NR,
                           ex_b_off, ex_act, ch, A, r, xs, A, r, False)
            elif xs == ch:                                # a copy of input row nxt
                copy_floats(A, r, A, src, w_in * ch)
            else:
                for q in range(w_in):
                    copy_floats(A, r + q * xs, A, src + q * ch, ch)
            nxt += 1
        for a in range(kh):
            ih = ih0 + a * d
            offs[a] = ring + (ih % n_slots) * row_len if 0 <= ih < h else zero_off
        if has_reduce == 0:
            depthwise_row(A, offs, xs, W, dw_w_off, kh, kw, ch, dw_b_off, act, A,
                          o_off + (n * ho + i) * wo * ch, ch, wo, s, d)
            continue
        depthwise_row(A, offs, xs, W, dw_w_off, kh, kw, ch, dw_b_off, act, A,
                      band + pending * wo * bs, bs, wo, s, d)
        pending += 1
        if pending == band_rows or i == i_hi - 1:         # the 1x1 reduce conv of the band
            pix = (n * ho + i - pending + 1) * wo
            gemm_block(A, band, bs, pending * wo, ch, W, re_w_off, 0, (cout + NR - 1) // NR,
                       re_b_off, re_act, cout, A, o_off + pix * cout, cout, A,
                       r_off + pix * cout, has_res != 0)
            pending = 0


def plan_row_jobs(n_img, ho, threads):
    """Output rows per job: every thread busy, jobs as long as possible (each job
    re-produces the few input rows it shares with its neighbour)."""
    per_img = 1
    while (n_img * per_img) % threads and per_img < ho:
        per_img += 1
    return -(-ho // per_img)


def separable_op(x_off, x_shape, o_off, out_shape, dw, expand=None, reduce=None, r_off=None,
                 stride=1, dilation=1, pad_top=0, pad_left=0, threads=1, rows_per_job=None):
    """The op ``[expand 1x1 ->] depthwise kxk [-> reduce 1x1 (+ A[r_off])]``.

    dw = (DepthwiseWeight, its blocks' offset in W, bias offset, act);
    expand, reduce = (PointwiseWeight, its panels' offset in W, bias offset, act) or None;
    maps x (N, H, W, Cin) at A[x_off], out (N, Ho, Wo, Cout) at A[o_off].
    """
    wd, dw_w_off, dw_b_off, act = dw
    check_depthwise_weight(wd)
    kh, kw, ch = wd.kh, wd.kw, wd.c
    n, h, w_in, cin = x_shape
    if expand is None:
        ex_w_off, ex_b_off, ex_act = 0, 0, ACT_NONE
        check(cin == ch, f"without an expand conv the input must have {ch} channels, not {cin}")
    else:
        ex_w, ex_w_off, ex_b_off, ex_act = expand
        check(isinstance(ex_w, PointwiseWeight) and (ex_w.cin, ex_w.cout) == (cin, ch),
              f"expand weight must be {ch}x{cin}")
    if reduce is None:
        re_w_off, re_b_off, re_act, cout = 0, 0, ACT_NONE, ch
    else:
        re_w, re_w_off, re_b_off, re_act = reduce
        check(isinstance(re_w, PointwiseWeight) and re_w.cin == ch, "reduce weight does not fit")
        cout = re_w.cout
    check_maps(x_shape, out_shape, cin, cout)
    check_geometry(x_shape, out_shape, kh, kw, stride, dilation, pad_top, pad_left)
    for a in (act, ex_act, re_act):
        check_activation(a)
    check(r_off is None or (reduce is not None and stride == 1 and out_shape == x_shape),
          "a residual needs a reduce conv, stride 1 and equal shapes")
    _, ho, wo, _ = out_shape
    rows = rows_per_job or plan_row_jobs(n, ho, threads)
    ring_rows, ring_w = ring_shape(w_in, wo, kw, stride, dilation, pad_left, kh)
    band_rows = max(1, min(rows, -(-96 // wo)))             # >= ~96 pixels per reduce product
    check(kh <= MAX_KERNEL, f"depthwise kernels larger than {MAX_KERNEL} are not supported")
    xs = pixel_stride(ch)
    bs = xs if reduce is not None else ch
    ring_floats = ring_rows * ring_w * xs
    band_floats = band_rows * wo * bs if reduce is not None else 0
    from .program import Op
    return Op("separable", n * -(-ho // rows),
              (x_off, n, h, w_in, cin, expand is not None, ex_w_off, ex_b_off, ex_act, ch,
               dw_w_off, dw_b_off, kh, kw, act, stride, dilation, pad_top, pad_left,
               reduce is not None, re_w_off, re_b_off, re_act, cout,
               o_off if r_off is None else r_off, r_off is not None, o_off, ho, wo, rows,
               ring_w, band_rows, xs, bs), scratch=ring_floats + band_floats)


# ---------------------------------------------------------------- the standalone calls
def fused_separable(x, expand, dw, reduce, stride, dilation, pad_top, pad_left, out,
                    residual=False, threads=None, rows_per_job=None):
    """[expand 1x1 ->] depthwise kxk [-> reduce 1x1 [+ x]] into ``out``; returns ``out``.

    x (N, H, W, Cin) float32; expand, reduce: None or (PointwiseWeight, bias, act);
    dw: (weight from :func:`prepare_depthwise_weight`, bias (Ch,), act);
    out (N, Ho, Wo, Cout); residual: add x (needs a reduce conv, stride 1, equal shapes).
    ``rows_per_job`` overrides the planned split into jobs.
    """
    from .program import Arena, run_ops

    check_array(x, "x", 4)
    check_array(out, "out", 4)
    if out.size == 0:
        return out
    threads = resolve_threads(threads)
    A, W = Arena(), Arena()
    xo, oo = A.add(x), A.add(size=out.size)

    def place(conv):
        if conv is None:
            return None
        wp, bias, act = conv
        check(isinstance(wp, PointwiseWeight), "1x1 weights must come from "
                                               "prepare_pointwise_weight")
        check_bias(bias, wp.cout)
        return wp, W.add(wp.panels), W.add(bias), act
    wd, bd, act = dw
    check_depthwise_weight(wd)
    check_bias(bd, wd.c, "depthwise bias")
    op = separable_op(xo, x.shape, oo, out.shape, (wd, W.add(wd.blocks), W.add(bd), act),
                      place(expand), place(reduce), xo if residual else None, stride, dilation,
                      pad_top, pad_left, threads, rows_per_job)
    arena = run_ops([op], A.build(), W.build(), threads)
    out[...] = arena[oo:oo + out.size].reshape(out.shape)
    return out


def depthwise_conv(x, wp, bias, stride, dilation, pad_top, pad_left, act, out, threads=None):
    """Depthwise conv of x (N, H, W, C) into out (N, Ho, Wo, C); returns out.

    wp: from :func:`prepare_depthwise_weight`; bias (C,) float32;
    stride, dilation: ints for both axes; pad_top/pad_left: zeros before the
    input (bottom/right padding follows from out's size); act: activation code.
    """
    return fused_separable(x, None, (wp, bias, act), None, stride, dilation, pad_top, pad_left,
                           out, threads=threads)

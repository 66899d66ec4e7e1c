"""Full (groups = 1) kxk convolution, and the padding arithmetic shared by all convs.

For a channels-last input x (N, H, W, Cin) and a weight w (Cout, Cin, kh, kw):

    out[n, i, j, o] = act( bias[o] + sum_{a, b, c} w[o, c, a, b]
                           * x[n, i*s - pad_top + a*d, j*s - pad_left + b*d, c] )

reading zeros outside the input (s = stride, d = dilation, both axes).  The
output size is given by ``out``; bottom/right padding is whatever that size
needs, so symmetric and TF-"SAME" (asymmetric) padding are the same kernel.

Implementation: an *implicit GEMM* on the pointwise kernel's register tile
(``simd.gemm_tile``), out = A @ W' with W' the weight as (kh*kw*Cin, Cout) and
A's row for an output pixel the kh*kw input vectors its taps read.  A is never
made; two ways to read it:

* staged (every undilated conv of at most TAP_ROWS rows -- the stems, Cin = 3, and
  MobileViT's 3x3 convs -- unless it has many channels and even one tile's input
  rows would exceed STAGED_MAX_FLOATS): a job takes a run of output pixels in
  row-major order, a chunk of register tiles at a time (a tile may run on from the end
  of one output row into the next); the input rows a chunk reads are staged in order,
  channels last and zero-padded (the model's NCHW input is read in its own layout
  there); then the kw taps of a tap row are kw*Cin consecutive floats for every pixel,
  and a tile sums the kh products of depth kw*Cin in its registers and stores
  act(sum + bias) once;
* direct (dilated convs, taller ones, and wide maps with >= DIRECT_MIN_CHANNELS
  inputs; a job kind of its own, compiled only by models that have one): tap by tap,
  the tiles read a row of output pixels' input vectors straight from x (pixels s*Cin
  floats apart) and add their products into the output; a tap whose pixels all fall
  in the padding is skipped (DeepLab's ASPP: rates 6/12/18 on a 32x32 map, most
  off-centre taps).
"""
from collections import namedtuple

import numpy as np

from .pointwise import (act_reference_f64, add_tile, bias_act_channels, check_activation,
                        pack_panels, unpack_panels)
from .policy import arenas, check, check_array, helper, job, scratch
from .simd import (MR, NR, TAP_ROWS, TILE, VEC, copy_floats, gemm_taps_out, gemm_tile,
                   interleave3, stack_buffer_i64, tile_buffer, zero_floats)
from .workers import resolve_threads


# ---------------------------------------------------------------- the reference (NumPy)
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
# fields of a "conv" / "conv_direct" op row, after [code, jobs].  Staged: ``a`` tiles per job,
# ``b`` tiles per chunk, ``c`` input rows staged per chunk, ``row_w`` columns of a staged row
# (:func:`staged_width`); direct: ``a`` output rows per job, ``b`` panels per job (``c`` and
# ``row_w`` unused).
CONV_FIELDS = ("x_off", "n_img", "h", "w", "cin", "o_off", "ho", "wo", "cout", "kh", "kw",
               "w_off", "b_off", "act", "stride", "dil", "pad_t", "pad_l", "a", "b", "c", "nchw",
               "row_w")
DIRECT_MIN_CHANNELS = 32   # from this many input channels, taps may be read in place
STAGED_MAX_FLOATS = 65536  # most staged floats (256 KiB) of one tile of a many-channel conv
CHUNK_FLOATS = 32768       # a staged job's rows grow to this for longer chunks of tiles
CHUNK_TILES = 96            # most tiles in a chunk
CHUNK_PIXELS = CHUNK_TILES * MR   # where each of their pixels' tap rows start (gemm_taps_out)


def stages_in_registers(kh, dilation):
    """Whether a conv can be staged: undilated and at most TAP_ROWS rows, so that a register
    tile sums every tap row (``simd.gemm_taps_out``).  The others are direct."""
    return dilation == 1 and kh <= TAP_ROWS


def staged_width(w_in, wo, kw, stride, dil, pad_l):
    """Columns of a staged (zero-padded) input row: every tap of every output pixel."""
    return max(pad_l + w_in, (wo - 1) * stride + (kw - 1) * dil + 1)


@helper
def _staged_rows(A, W, p, j, worker):
    """Job j of a staged conv op: a run of tpj register tiles of one image's output pixels
    (row-major: a tile runs on from the end of one output row into the next).

    The job goes through its pixels in chunks of at most ``chunk`` tiles.  The input rows a
    chunk reads are staged in order into the job's scratch space: zero-padded rows,
    channels last whatever x's layout, rows of zeros above and below the input.  Then a
    pixel's tap row a lies a*dil rows below its first, kw*Cin consecutive floats, and panel
    by panel each tile sums its pixels' kh tap rows in registers and stores act(sum + bias)
    (``simd.gemm_taps_out``).  A panel's weights serve every tile of the chunk while they
    are in cache.  Only undilated kernels of at most TAP_ROWS rows are staged
    (:func:`conv_op`)."""
    x_off, _n_img, h, w_in, cin, o_off, ho, wo, cout = (p[2], p[3], p[4], p[5], p[6], p[7], p[8],
                                                       p[9], p[10])
    kh, kw, w_off, b_off, act, stride, dil = p[11], p[12], p[13], p[14], p[15], p[16], p[17]
    pad_t, pad_l, tpj, chunk, n_slots, nchw = p[18], p[19], p[20], p[21], p[22], p[23] != 0
    npix = ho * wo
    per_img = (npix + tpj * MR - 1) // (tpj * MR)      # jobs per image
    n = j // per_img
    q_lo = (j - n * per_img) * tpj * MR                 # this job's output pixels
    q_hi = min(npix, q_lo + tpj * MR)
    kt = kh * kw * cin
    row_len = p[24] * cin                               # floats of a staged row
    sc = stride * cin                                   # from one output pixel to the next
    rows = scratch(p, worker)
    zero_floats(A, rows, n_slots * row_len)             # the side padding stays zero
    bases = stack_buffer_i64(CHUNK_PIXELS)
    o_img = o_off + n * npix * cout
    for c_lo in range(q_lo, q_hi, chunk * MR):
        c_hi = min(q_hi, c_lo + chunk * MR)
        i_lo = c_lo // wo
        ih_lo = i_lo * stride - pad_t                   # the input rows it reads
        ih_hi = ((c_hi - 1) // wo) * stride - pad_t + (kh - 1) * dil
        for ih in range(ih_lo, ih_hi + 1):
            r = rows + (ih - ih_lo) * row_len + pad_l * cin
            if ih < 0 or ih >= h:
                zero_floats(A, r, w_in * cin)
            elif nchw:                                 # pixel by pixel: one write stream
                src = x_off + (n * cin * h + ih) * w_in
                plane = h * w_in
                if cin == 3:                           # RGB: VEC pixels per shuffle
                    x = 0
                    while x + VEC <= w_in:
                        interleave3(A, r + 3 * x, A, src + x, plane)
                        x += VEC
                    for x in range(x, w_in):
                        A[r + 3 * x] = A[src + x]
                        A[r + 3 * x + 1] = A[src + plane + x]
                        A[r + 3 * x + 2] = A[src + 2 * plane + x]
                else:
                    for x in range(w_in):
                        for ch in range(cin):
                            A[r + x * cin + ch] = A[src + ch * plane + x]
            else:
                copy_floats(A, r, A, x_off + (n * h + ih) * w_in * cin, w_in * cin)
        q = c_lo                                       # where each pixel's first tap row
        while q < c_hi:                                # starts, a run of them per output row
            i = q // wo
            run = min(wo * (i + 1), c_hi) - q
            start = rows + (i - i_lo) * stride * row_len + (q - i * wo) * sc - (q - c_lo) * sc
            for t in range(q - c_lo, q - c_lo + run):
                bases[t] = start + t * sc
            q += run
        for pp in range((cout + NR - 1) // NR):
            n0 = pp * NR
            panel = w_off + pp * kt * NR
            for t0 in range(c_lo, c_hi, MR):
                gemm_taps_out(A, bases, t0 - c_lo, dil * row_len, kh, min(MR, c_hi - t0), W,
                              panel, kw * cin, b_off + n0, min(NR, cout - n0), A,
                              o_img + t0 * cout + n0, cout, act)


@helper
def _direct_rows(A, W, p, j):
    """Job j of a direct conv op: a band of mc output rows of one image x pg panels.  Tap by
    tap, the register tiles read the input pixels straight from x (a row of output pixels
    reads a row of input pixels, ``stride * cin`` floats apart) -- only the pixels whose tap
    lies inside the input -- and add their products into the output; then bias and
    activation.  No im2col copy, and taps that read only padding cost nothing."""
    x_off, _n_img, h, w_in, cin, o_off, ho, wo, cout = (p[2], p[3], p[4], p[5], p[6], p[7], p[8],
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
    acc = tile_buffer(TILE)
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
    """Job j of a staged conv op (see the module docstring)."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    _staged_rows(A, W, p, j, worker)


@job
def conv_direct_job(pa, a_size, pw, w_size, pp, j, worker):
    """Job j of a direct conv op.  A job of its own, not a branch of conv_job: a model whose
    convs are all staged (every classifier here: their stems) does not compile it -- a
    third of the first run's conv compilation."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    _direct_rows(A, W, p, j)


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
    panels = wp.panels.shape[0]
    from .program import Op
    width = staged_width(w, wo, wp.kw, stride, dilation, pad_left)
    in_registers = stages_in_registers(wp.kh, dilation)
    check(in_registers or not nchw, f"a conv reading the NCHW model input must be undilated and "
                                    f"at most {TAP_ROWS} rows tall, not {wp.kh} (dilation "
                                    f"{dilation})")
    one_tile = staged_floats(1, wo, wp.kh, stride, dilation, width * cin)   # its input rows
    if not nchw and (not in_registers
                     or (cin >= DIRECT_MIN_CHANNELS and one_tile > STAGED_MAX_FLOATS)):
        # bands of output rows: the rows of input they read (bands x W x Cin floats) stay in
        # L2 while one tap's slice of a panel (Cin x NR floats) sweeps them
        band = max(1, min(ho, 65536 // max(1, w * cin)))
        band = -(-ho // max(1, -(-ho // band)))           # equal bands
        jobs_rows = n * -(-ho // band)
        groups = min(panels, max(1, -(-4 * threads // jobs_rows))) if threads > 1 else 1
        pg = -(-panels // groups)
        return Op("conv_direct", jobs_rows * -(-panels // pg),
                  (x_off, n, h, w, cin, o_off, ho, wo, cout, wp.kh, wp.kw, w_off, b_off, act,
                   stride, dilation, pad_top, pad_left, band, pg, 0, False, 0))
    # staged: runs of tiles of output pixels, each job staging the input rows they read, a
    # chunk of tiles at a time -- as many as keep the staged rows within CHUNK_FLOATS
    tiles = max(1, -(-ho * wo // MR))                      # per image
    per_img = 1 if threads == 1 else min(tiles, -(-4 * threads // n))
    tpj = -(-tiles // per_img)
    chunk = min(tpj, CHUNK_TILES)
    while chunk > 1 and staged_floats(chunk, wo, wp.kh, stride, dilation,
                                      width * cin) > CHUNK_FLOATS:
        chunk -= 1
    chunk = -(-tpj // -(-tpj // chunk))                    # equal chunks
    slots = staged_row_count(chunk, wo, wp.kh, stride, dilation)
    return Op("conv", n * -(-tiles // tpj), (x_off, n, h, w, cin, o_off, ho, wo, cout, wp.kh,
                                              wp.kw, w_off, b_off, act, stride, dilation,
                                              pad_top, pad_left, tpj, chunk, slots, nchw,
                                              width),
              scratch=slots * width * cin)


def staged_row_count(chunk, wo, kh, stride, dilation):
    """Input rows a staged conv stages at once: all those that ``chunk`` tiles of output
    pixels (MR * chunk consecutive ones, on as many rows of wo as they touch) read."""
    out_rows = (chunk * MR + wo - 2) // wo + 1
    return (out_rows - 1) * stride + (kh - 1) * dilation + 1


def staged_floats(chunk, wo, kh, stride, dilation, row_floats):
    """Floats of a staged conv's staged rows for chunks of ``chunk`` tiles."""
    return staged_row_count(chunk, wo, kh, stride, dilation) * row_floats


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
    threads = resolve_threads(threads)
    arena = run_ops([conv_op(xo, x.shape, oo, out.shape, wp, wo, bo, stride, dilation, pad_top,
                             pad_left, act, threads)], A.build(), W.build(), threads)
    out[...] = arena[oo:oo + out.size].reshape(out.shape)
    return out


def check_bias(bias, n, what="bias"):
    check(isinstance(bias, np.ndarray) and bias.dtype == np.float32 and bias.shape == (n,),
          f"{what} must be a float32 array of shape ({n},)")

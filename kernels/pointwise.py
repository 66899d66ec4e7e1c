"""Pointwise (1x1) convolution: a matrix multiply over channels.

A 1x1 convolution on a channels-last tensor ``x`` of shape (..., Cin) is, for
every pixel independently, ``y = W @ x_pixel + b``.  Flattening all leading
dimensions into ``M`` rows gives one matrix product

    out[m, n] = act( sum_k x[m, k] * W[n, k] + bias[n] )  (+ residual[m, n])

with ``x`` (M, K=Cin), ``W`` (N=Cout, K) and ``out`` (M, N).  The same kernel
serves ``nn.Linear`` layers and the classifier; the full kxk convolution
(``conv.py``), the fused inverted residual (``depthwise.py``) and attention
(``attention_mha.py``) are built on its :func:`gemm_block` too.

How it is made fast (the GotoBLAS/BLIS scheme, see ``simd.py`` for the tile):

* ``W`` is packed once, at load time, into column *panels* of NR output
  channels: ``panels[p, k, j] = W[p*NR + j, k]`` (zero-padded), so the NR
  weights the register tile needs for one k are contiguous.
* The product is computed in MR x NR register tiles (``simd.gemm_tile``): per
  k, NV vector loads of the panel, MR broadcasts of x and MR*NV fused
  multiply-adds, all accumulators in registers.
* Work is split into jobs of (a chunk of rows) x (a group of panels) that run in
  parallel.  Inside a job the panel loop is outside the row-tile loop, so one
  panel (K x NR floats) stays in L1/L2 while it sweeps the chunk's rows.
* Bias, activation and the optional residual are applied when a tile is written
  out (the "fused epilogue"), so ``out`` is written exactly once.
"""
from collections import namedtuple

import numpy as np

from .activations import ACT_NONE, ACT_RELU, ACT_RELU6, ACT_SILU, vact
from .policy import arenas, check, check_array, helper, job
from .simd import (MR, NR, NV, TILE_HEIGHTS, VEC, gemm_tile_out, gemv_tile_out, vadd, vload,
                   vload_n, vstore, vstore_n)
from .workers import resolve_threads


# ---------------------------------------------------------------- the reference (NumPy)
def act_reference_f64(y, act):
    """Activation ``act`` applied to a float64 array, in float64 (used by the references)."""
    if act == ACT_RELU:
        return np.maximum(y, 0.0)
    if act == ACT_RELU6:
        return np.clip(y, 0.0, 6.0)
    if act == ACT_SILU:
        return y / (1.0 + np.exp(-y))
    if act != ACT_NONE:
        raise ValueError(f"unknown activation code {act}")
    return y


def pointwise_reference(x, w, bias, act, residual=None):
    """Plain NumPy 1x1 conv / linear: float64 matmul, then act, then residual, cast to float32.

    x (..., Cin); w torch layout (Cout, Cin[, 1, 1]); bias (Cout,); returns (..., Cout).
    """
    w = np.asarray(w, np.float64).reshape(np.shape(w)[0], -1)            # (Cout, Cin)
    y = np.asarray(x, np.float64) @ w.T + np.asarray(bias, np.float64)   # (..., Cout)
    y = act_reference_f64(y, act)
    if residual is not None:
        y = y + np.asarray(residual, np.float64)
    return y.astype(np.float32)


# ---------------------------------------------------------------- the kernel
PointwiseWeight = namedtuple("PointwiseWeight", "panels cin cout")
PointwiseWeight.__doc__ = """A packed (Cout, Cin) weight: ``panels`` float32
(ceil(Cout/NR), Cin, NR) with ``panels[p, k, j] = W[p*NR + j, k]`` and zeros past Cout."""


def pack_panels(w2):
    """(N, K) float matrix -> float32 (ceil(N/NR), K, NR) panels (zero columns past N)."""
    n, k = w2.shape
    panels = -(-n // NR)
    padded = np.zeros((panels * NR, k), np.float32)                   # (P*NR, K)
    padded[:n] = w2
    return np.ascontiguousarray(padded.reshape(panels, NR, k).transpose(0, 2, 1))  # (P, K, NR)


def prepare_pointwise_weight(w):
    """Pack a torch-layout weight (Cout, Cin) or (Cout, Cin, 1, 1) for :func:`pointwise_conv`.

    Also used for ``nn.Linear`` weights (out, in).  Called once, at load time.
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 4:
        check(w.shape[2:] == (1, 1), f"not a 1x1 conv weight: {w.shape}")
        w = w[:, :, 0, 0]
    check(w.ndim == 2, f"expected a (Cout, Cin) weight, got {w.shape}")
    return PointwiseWeight(pack_panels(w), w.shape[1], w.shape[0])


def unpack_panels(panels, n):
    """Inverse of :func:`pack_panels`: (P, K, NR) panels -> the float32 (n, K) matrix."""
    p, k, nr = panels.shape
    return np.ascontiguousarray(panels.transpose(0, 2, 1).reshape(p * nr, k)[:n])  # (n, K)


def unpack_pointwise_weight(wp):
    """Inverse of :func:`prepare_pointwise_weight`: the torch-layout (Cout, Cin) weight."""
    return unpack_panels(wp.panels, wp.cout)                          # (Cout, Cin)


# ---------------------------------------------------------------- the GEMM block
@helper
def store_tile(acc, rows, out, o_off, ldo, ncols, w, b_off, act, res, r_off, has_res):
    """The fused epilogue of one register tile, for i < rows, j < ncols (<= NR)::

        out.flat[o_off + i*ldo + j] = act(acc[i*NR + j] + w.flat[b_off + j])
                                      (+ res.flat[r_off + i*ldo + j])

    Columns past ``ncols`` are neither read nor written."""
    for i in range(rows):
        for v in range(NV):
            left = ncols - v * VEC
            if left <= 0:
                break
            oi = o_off + i * ldo + v * VEC
            ri = r_off + i * ldo + v * VEC
            if left >= VEC:
                y = vact(vadd(vload(acc, i * NR + v * VEC), vload(w, b_off + v * VEC)), act)
                if has_res:                    # read res (possibly out itself) before writing
                    y = vadd(y, vload(res, ri))
                vstore(out, oi, y)
            else:
                y = vact(vadd(vload(acc, i * NR + v * VEC), vload_n(w, b_off + v * VEC, left)),
                         act)
                if has_res:
                    y = vadd(y, vload_n(res, ri, left))
                vstore_n(out, oi, y, left)


@helper
def add_tile(acc, rows, out, o_off, ldo, ncols):
    """out.flat[o_off + i*ldo + j] += acc[i*NR + j] for i < rows, j < ncols (<= NR)."""
    for i in range(rows):
        for v in range(NV):
            left = ncols - v * VEC
            if left <= 0:
                break
            oi = o_off + i * ldo + v * VEC
            if left >= VEC:
                vstore(out, oi, vadd(vload(out, oi), vload(acc, i * NR + v * VEC)))
            else:
                vstore_n(out, oi, vadd(vload_n(out, oi, left), vload(acc, i * NR + v * VEC)),
                         left)


@helper
def bias_act_channels(x, off, c_lo, c_hi, w, b_off, act):
    """x.flat[off + c] = act(x.flat[off + c] + w.flat[b_off + c]) for c in [c_lo, c_hi)."""
    c = c_lo
    while c + VEC <= c_hi:
        vstore(x, off + c, vact(vadd(vload(x, off + c), vload(w, b_off + c)), act))
        c += VEC
    if c < c_hi:
        left = c_hi - c
        vstore_n(x, off + c, vact(vadd(vload_n(x, off + c, left), vload_n(w, b_off + c, left)),
                                  act), left)


@helper
def gemm_block(a, a_off, lda, m, k, w, w_off, p_lo, p_hi, b_off, act, n, out, o_off, ldo, res,
               r_off, has_res):
    """Rows 0..m of ``out = act(A @ W.T + bias) (+ res)``, for the panels p_lo..p_hi.

    Row r of A is a.flat[a_off + r*lda : +k]; the packed panels (P, k, NR) start at
    w.flat[w_off] and the bias (n floats) at w.flat[b_off]; row r of out is at
    out.flat[o_off + r*ldo] (n = the true Cout: columns past it are not written), of res
    at res.flat[r_off + r*ldo].  Panel-outer, row-tile-inner: a panel is reused from L1
    by all the row tiles.
    """
    if m == 1 and not has_res:           # one row: a matrix-vector product
        for p in range(p_lo, p_hi):
            n0 = p * NR
            gemv_tile_out(a, a_off, w, w_off + p * k * NR, k, b_off + n0, min(NR, n - n0),
                          out, o_off + n0, act)
        return
    for p in range(p_lo, p_hi):
        n0 = p * NR
        ncols = min(NR, n - n0)
        for m0 in range(0, m, MR):
            gemm_tile_out(a, a_off + m0 * lda, lda, min(MR, m - m0), w, w_off + p * k * NR,
                          k, b_off + n0, ncols, out, o_off + m0 * ldo + n0, ldo, res,
                          r_off + m0 * ldo + n0, act, has_res)


# ---------------------------------------------------------------- the op
# fields of a "gemm" op row, after [code, jobs]
GEMM_FIELDS = ("a_off", "m", "k", "w_off", "b_off", "n", "act", "o_off", "r_off", "has_res",
               "mc", "pg", "big")


@job
def gemm_job(pa, a_size, pw, w_size, pp, j, worker):
    """Job j of a gemm op: a chunk of rows (mc, or mc + MR for the last ``big`` chunks) x a
    group of pg panels."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    a_off, m, k, w_off, b_off, n = p[2], p[3], p[4], p[5], p[6], p[7]
    act, o_off, r_off, has_res, mc, pg, big = p[8], p[9], p[10], p[11], p[12], p[13], p[14]
    n_panels = (n + NR - 1) // NR
    n_groups = (n_panels + pg - 1) // pg
    chunk = j // n_groups
    group = j - chunk * n_groups
    small = p[1] // n_groups - big                          # chunks of mc rows, then mc + MR
    m_lo = chunk * mc + max(0, chunk - small) * MR
    rows = mc + MR if chunk >= small else mc
    gemm_block(A, a_off + m_lo * k, k, min(rows, m - m_lo), k, W, w_off, group * pg,
               min(n_panels, group * pg + pg), b_off, act, n, A, o_off + m_lo * n, n, A,
               r_off + m_lo * n, has_res != 0)


def plan_jobs(m, mc_max, panels, threads):
    """Split an (m rows) x (panels) product into parallel jobs: returns (MC rows, PG panels,
    jobs, BIG).

    Rows are cut into chunks of at most about ``mc_max`` rows, a number of chunks the
    threads share equally, each a whole number of register tiles (MR rows): MC rows, the
    last BIG chunks one tile more, so that the last chunk's partial tile (the cheap one)
    is the one that ends up with the extra tiles -- 49 rows at 2 threads are 24 + 25, not
    30 + 19 (5 tiles against 3 and a bit: 1.7x at best, not 2x).  When there are too few
    chunks to keep every thread busy (small feature maps, the batch-1 classifier) the
    panels are split into groups as well, aiming at 4 jobs per thread.

    A product of few rows whose weights outweigh its rows (m < n: MobileNetV2's 7 x 7 maps,
    320 -> 1280 channels) is split by panels alone when that shares the work out more
    evenly (by 3 %: :func:`_row_split_load`, :func:`_panel_split`): each core then reads half of
    the weights instead of all of them, and 49 rows need not be cut into 24 + 25 (a 12-row
    AVX-512 tile: 2 tiles against 2 and a bit).
    """
    tiles = -(-m // MR)
    n_chunks = -(-m // mc_max)
    if threads > 1:
        n_chunks = -(-n_chunks // threads) * threads         # a multiple of the thread count
    n_chunks = min(n_chunks, tiles)
    q, big = divmod(tiles, n_chunks)                        # q or q + 1 tiles per chunk
    if threads > 1 and n_chunks == threads and m < panels * NR:
        load, groups = _panel_split(m, panels, threads)
        if load < 0.97 * _row_split_load(m, q, big, threads) * panels:
            pg = -(-panels // groups)
            return tiles * MR, pg, -(-panels // pg), 0
    want = 4 * threads if threads > 1 else 1
    groups = min(panels, max(1, -(-want // n_chunks)))
    pg = -(-panels // groups)
    return q * MR, pg, n_chunks * -(-panels // pg), big


def _tile_height(rem):
    """Rows the tile computing the last ``rem`` (0 < rem <= MR) rows of a product has."""
    return next(h for h in TILE_HEIGHTS if h >= rem)


def _tile_cost(rows):
    """Register tiles' worth of time ``rows`` rows take: whole tiles of MR rows, then one
    of the lowest height that holds the rest (``gemm_tile_out``), its time per k step
    that of its rows or of the 8 FMA chains it needs at least (3-row AVX2 tiles: 2/3)."""
    rem = rows % MR
    return rows // MR + (0.0 if rem == 0 else max(_tile_height(rem), 8 // NV) / MR)


def tile_rows(rows):
    """Rows the register tiles compute for a product of ``rows`` rows (whole tiles of MR
    rows, then the lowest of TILE_HEIGHTS that holds the rest): 28 -> 28 with AVX2 (6 + 6
    + 6 + 6 + 4) and AVX-512 (12 + 12 + 4), 33 -> 33 (30 + 3, 24 + 9), 49 -> 51 and 52."""
    rem = rows % MR
    return rows - rem + (_tile_height(rem) if rem else 0)


def _row_split_load(m, q, big, threads):
    """The largest of ``threads`` row chunks (q or q + 1 tiles, the last ``big`` the longer
    ones; the last one ends at row m), in tiles."""
    sizes = [(q + (c >= threads - big)) * MR for c in range(threads)]
    sizes[-1] = m - sum(sizes[:-1])
    return max(_tile_cost(r) for r in sizes)


def _panel_split(m, panels, threads):
    """(largest share in tile x panel units, number of groups) of the best split of the
    panels into groups of equal size (the last one shorter), run by the workers in runs of
    consecutive groups as the executor hands them out."""
    best = None
    for groups in dict.fromkeys(min(panels, g * threads) for g in (4, 3, 5, 2, 6)):
        pg = -(-panels // groups)
        sizes = [min(pg, panels - g * pg) for g in range(-(-panels // pg))]
        runs = [sum(sizes[w * len(sizes) // threads:(w + 1) * len(sizes) // threads])
                for w in range(threads)]
        load = _tile_cost(m) * max(runs)
        if best is None or load < best[0]:
            best = (load, len(sizes))
    return best


def check_activation(act):
    check(act in (ACT_NONE, ACT_RELU, ACT_RELU6, ACT_SILU), f"activation {act} is not fused")


def gemm_op(a_off, m, k, w_off, b_off, n, act, o_off, r_off=None, threads=1):
    """The op ``A[o_off] (M, N) = act(A[a_off] (M, K) @ panels(W[w_off]) + W[b_off])
    (+ A[r_off])``: all rows contiguous (lda = K, ldo = N)."""
    check_activation(act)
    check(min(m, k, n) >= 1, f"empty product {m}x{k}x{n}")
    # a chunk of x (MC x K floats, <= 256 KiB) stays in L2 while each panel sweeps it
    mc, pg, jobs, big = plan_jobs(m, max(MR, min(256, 65536 // k)), -(-n // NR), threads)
    from .program import Op
    return Op("gemm", jobs, (a_off, m, k, w_off, b_off, n, act, o_off,
                             o_off if r_off is None else r_off, r_off is not None, mc, pg, big))


# ---------------------------------------------------------------- the standalone call
def pointwise_conv(x, wp, bias, act, out, residual=None, threads=None):
    """out = act(x @ W.T + bias) (+ residual), written into ``out``; returns ``out``.

    x: float32 C-contiguous (..., Cin); wp: from :func:`prepare_pointwise_weight`;
    bias: float32 (Cout,); act: activation code (none, ReLU, ReLU6 or SiLU); out:
    float32 C-contiguous (..., Cout) with x's leading dims; residual: None or an
    array shaped like ``out`` (may be ``out`` itself for in-place accumulation).
    The arrays are copied into a one-op program (:mod:`program`); models run the op
    on their planned arenas instead.
    """
    from .program import Arena, run_ops

    for name, arr in (("x", x), ("out", out), ("bias", bias)):
        check_array(arr, name)
    check(isinstance(wp, PointwiseWeight), "wp must come from prepare_pointwise_weight")
    k, n = x.shape[-1], out.shape[-1]
    check(out.shape[:-1] == x.shape[:-1], f"leading dims differ: {x.shape} vs {out.shape}")
    check(wp.cin == k and wp.cout == n,
          f"weight is {wp.cout}x{wp.cin}, but x has {k} and out {n} channels")
    check(bias.shape == (n,), f"bias must have shape ({n},), got {bias.shape}")
    if residual is not None:
        check_array(residual, "residual")
        check(residual.shape == out.shape, f"residual shape {residual.shape} != {out.shape}")
    m = x.size // max(k, 1)
    if m == 0 or n == 0:
        return out
    if k == 0:                                              # an empty sum: act(bias) (+ res)
        x, wp, k = np.zeros((m, 1), np.float32), prepare_pointwise_weight(np.zeros((n, 1))), 1
    A, W = Arena(), Arena()
    xo, oo = A.add(x), A.add(out)
    ro = None if residual is None else oo if residual is out else A.add(residual)
    wo, bo = W.add(wp.panels), W.add(bias)
    threads = resolve_threads(threads)
    arena = run_ops([gemm_op(xo, m, k, wo, bo, n, act, oo, ro, threads)], A.build(), W.build(),
                    threads)
    out[...] = arena[oo:oo + out.size].reshape(out.shape)
    return out

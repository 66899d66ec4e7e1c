"""Normalisation layers of the two MobileViT transformers, channels last.

MobileViTV2 "layernorm" is ``GroupNorm(num_groups=1, d)`` applied to the patch
tensor (stored here as ``(B, P, N, d)``): ONE mean and ONE (biased) variance per
sample, taken over all ``P*N*d`` values, then a per-channel affine::

    mu_b  = mean(x[b])                 var_b = mean((x[b] - mu_b)**2)
    y[b, ..., c] = (x[b, ..., c] - mu_b) / sqrt(var_b + eps) * gamma[c] + beta[c]

MobileViT (v1) uses an ordinary ``LayerNorm(h)``: the same formula, but the
statistics are taken per token (per row of the last axis).

Statistics are accumulated in float64 (over float32 partial sums of up to 32 values
each) and every variance is a sum of squared deviations from an already known mean
(two-pass), so no precision is lost to cancellation.

A GroupNorm sample is normalised by several parallel jobs when there are fewer samples than
threads (batch 1): then it is two ops.  The first takes the two-pass statistics of each
part of the sample (a run of its rows) in parallel; the second combines the parts' counts,
means and squared deviations exactly (Chan, Golub & LeVeque's pairwise update, in float64)
and normalises each part.  (Every job taking the whole sample's statistics itself, in one
op, read the sample 2 x parts times instead of twice: on Zen 3 a (1, 4, 256, 128) GroupNorm
took 76 us at 2 threads against 33 at 1, now 15; MobileViTV2-1.0 at 2 threads -1.3 %.)
"""
import numpy as np

from .policy import arenas, check, check_array, helper, job
from .simd import VEC, vadd, vfma, vload, vload_n, vmul, vsplat, vstore, vstore_n, vsub, vsum
from .workers import resolve_threads


# ---------------------------------------------------------------- the reference (NumPy)
def group_norm1_reference(x, gamma, beta, eps):
    """NumPy GroupNorm(1): x (B, ..., C) -> new float32 array of the same shape."""
    x64 = np.asarray(x, np.float64)
    axes = tuple(range(1, x64.ndim))
    mu = x64.mean(axis=axes, keepdims=True)                      # (B, 1, ..., 1)
    var = ((x64 - mu) ** 2).mean(axis=axes, keepdims=True)       # (B, 1, ..., 1)
    y = (x64 - mu) / np.sqrt(var + eps) * gamma + beta           # (B, ..., C)
    return y.astype(np.float32)


def layer_norm_reference(x, gamma, beta, eps):
    """NumPy LayerNorm over the last axis: x (..., C) -> new float32 array."""
    x64 = np.asarray(x, np.float64)
    mu = x64.mean(axis=-1, keepdims=True)                        # (..., 1)
    var = ((x64 - mu) ** 2).mean(axis=-1, keepdims=True)         # (..., 1)
    y = (x64 - mu) / np.sqrt(var + eps) * gamma + beta           # (..., C)
    return y.astype(np.float32)


# ---------------------------------------------------------------- the kernel
STATS_CHUNK = 32 * VEC  # values summed in float32 vector lanes before joining a float64 total


@helper(inline=True)
def _accumulate(acc, v, mu_v, squares):
    """acc + v, or acc + (v - mu)**2 when ``squares``."""
    if squares:
        v = vsub(v, mu_v)
        return vfma(v, v, acc)
    return vadd(acc, v)


@helper(inline=True)
def _sum_chunks(x, off, end, mu, squares):
    """float64 sum of x.flat[off : end] (``squares`` False) or of (x - mu)**2 (True): four
    independent float32 vector sums (their adds overlap instead of waiting on each other),
    8 vectors each per chunk of STATS_CHUNK values, then the chunk's sum in float64."""
    mu_v = vsplat(np.float32(mu))
    total = 0.0
    i = off
    while i + 4 * VEC <= end:
        a0 = vsplat(0.0)
        a1 = vsplat(0.0)
        a2 = vsplat(0.0)
        a3 = vsplat(0.0)
        stop = min(end, i + STATS_CHUNK)
        while i + 4 * VEC <= stop:
            a0 = _accumulate(a0, vload(x, i), mu_v, squares)
            a1 = _accumulate(a1, vload(x, i + VEC), mu_v, squares)
            a2 = _accumulate(a2, vload(x, i + 2 * VEC), mu_v, squares)
            a3 = _accumulate(a3, vload(x, i + 3 * VEC), mu_v, squares)
            i += 4 * VEC
        total += vsum(vadd(vadd(a0, a1), vadd(a2, a3)))
    lanes = vsplat(0.0)                                  # the last < 4 whole vectors
    while i + VEC <= end:
        lanes = _accumulate(lanes, vload(x, i), mu_v, squares)
        i += VEC
    total += vsum(lanes)
    while i < end:                                       # and single values
        if squares:
            dev = np.float64(x[i]) - mu
            total += dev * dev
        else:
            total += x[i]
        i += 1
    return total


@helper(inline=True)
def _sample_stats(x, off, count):
    """float64 mean and sum of squared deviations from it of x.flat[off : off + count], in
    two passes (1 / sqrt(var + eps) is left to the caller)."""
    mu = _sum_chunks(x, off, off + count, 0.0, False) / count
    return mu, _sum_chunks(x, off, off + count, mu, True)


@helper(inline=True)
def _normalize_rows(A, x_off, o_off, r_lo, r_hi, c, mu, rstd, W, g_off, b_off):
    """A[o_off + r*c + ch] = (A[x_off + r*c + ch] - mu) * rstd * gamma[ch] + beta[ch]."""
    mu_v = vsplat(np.float32(mu))
    rs_v = vsplat(np.float32(rstd))
    for r in range(r_lo, r_hi):
        xi = x_off + r * c
        oi = o_off + r * c
        ch = 0
        while ch + VEC <= c:
            vstore(A, oi + ch, vfma(vsub(vload(A, xi + ch), mu_v),
                                    vmul(rs_v, vload(W, g_off + ch)), vload(W, b_off + ch)))
            ch += VEC
        if ch < c:
            n = c - ch
            vstore_n(A, oi + ch, vfma(vsub(vload_n(A, xi + ch, n), mu_v),
                                      vmul(rs_v, vload_n(W, g_off + ch, n)),
                                      vload_n(W, b_off + ch, n)), n)


# fields of a "group_norm" op row, after [code, jobs]: x (B, M, C) at x_off, out at o_off,
# gamma / beta / eps at W[g_off] / W[b_off] / W[eps_off]; each sample split into `parts` jobs
# of `rows` rows; `phase`: one of the three below; the parts' statistics at A[stats_off]
GROUP_NORM_FIELDS = ("x_off", "B", "M", "C", "o_off", "g_off", "b_off", "eps_off", "parts",
                     "rows", "phase", "stats_off")
STATS, APPLY, WHOLE = 0, 1, 2   # a part's statistics / combine them and normalise / both at once
STATS_FLOATS = 4                # a part's mean and squared deviations: float64s as float32 pairs


@helper(inline=True)
def _put_f64(A, off, v):
    """Store float64 v in A[off], A[off + 1] as a float32 pair (high part, the rest)."""
    hi = np.float32(v)
    A[off] = hi
    A[off + 1] = np.float32(v - np.float64(hi))


@helper(inline=True)
def _get_f64(A, off):
    return np.float64(A[off]) + np.float64(A[off + 1])


@job
def group_norm_job(pa, a_size, pw, w_size, pp, j, worker):
    """Job j = part q of sample b: its rows' statistics (STATS), or the sample's statistics
    combined from its parts' and its rows normalised (APPLY), or -- a sample in one part --
    the statistics of all of it, then normalised (WHOLE)."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    x_off, m, c, o_off, g_off, b_off, eps_off, parts = (p[2], p[4], p[5], p[6], p[7], p[8],
                                                         p[9], p[10])
    rows, phase, stats_off = p[11], p[12], p[13]
    b = j // parts
    part = j - b * parts
    size = m * c
    x_b = x_off + b * size
    r_lo = part * rows
    r_hi = min(m, r_lo + rows)
    if phase != APPLY:                      # (one call: the statistics' code is inlined)
        whole = phase == WHOLE
        mu, m2 = _sample_stats(A, x_b if whole else x_b + r_lo * c,
                               size if whole else (r_hi - r_lo) * c)
        if not whole:
            _put_f64(A, stats_off + STATS_FLOATS * j, mu)
            _put_f64(A, stats_off + STATS_FLOATS * j + 2, m2)
            return
    else:                                   # Chan et al.: (n, mean, M2) of the parts so far
        n, mu, m2 = 0.0, 0.0, 0.0
        for q in range(parts):
            s = stats_off + STATS_FLOATS * (b * parts + q)
            n_q = np.float64((min(m, q * rows + rows) - q * rows) * c)
            delta = _get_f64(A, s) - mu
            total = n + n_q
            mu += delta * (n_q / total)
            m2 += _get_f64(A, s + 2) + delta * delta * (n * n_q / total)
            n = total
    rstd = 1.0 / np.sqrt(m2 / size + np.float64(W[eps_off]))
    _normalize_rows(A, x_b, o_off + b * size, r_lo, r_hi, c, mu, rstd, W, g_off, b_off)


# fields of a "layer_norm" op row: x (R, C) at x_off, out at o_off, gamma / beta / eps in W
LAYER_NORM_FIELDS = ("x_off", "R", "C", "o_off", "g_off", "b_off", "eps_off", "rows_per_job")


@job
def layer_norm_job(pa, a_size, pw, w_size, pp, j, worker):
    """Job j: rows j*rows_per_job ..., each normalised over its C values."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    x_off, n_rows, c, o_off, g_off, b_off, eps_off, per = (p[2], p[3], p[4], p[5], p[6], p[7],
                                                            p[8], p[9])
    eps = np.float64(W[eps_off])
    for r in range(j * per, min(n_rows, j * per + per)):
        mu, m2 = _sample_stats(A, x_off + r * c, c)
        _normalize_rows(A, x_off, o_off, r, r + 1, c, mu, 1.0 / np.sqrt(m2 / c + eps), W, g_off,
                        b_off)


def group_norm_parts(shape, threads=1):
    """(parts, rows): a GroupNorm(1) sample of ``shape`` (B, ..., C) is normalised by
    ``parts`` jobs of ``rows`` rows (the last one shorter), enough for every thread when there
    are fewer samples than threads; no part is empty."""
    check(len(shape) >= 2, f"GroupNorm needs a batch axis and channels, got shape {shape}")
    m = int(np.prod(shape[1:-1]))
    rows = -(-m // max(1, min(m, -(-threads // shape[0]))))
    return -(-m // rows), rows


def group_norm_stats_floats(shape, threads=1):
    """Floats of A the ops of :func:`group_norm_ops` need for the parts' statistics."""
    parts, _ = group_norm_parts(shape, threads)
    return 0 if parts == 1 else shape[0] * parts * STATS_FLOATS


def group_norm_ops(x_off, shape, o_off, g_off, b_off, eps_off, stats_off=0, threads=1):
    """The ops of GroupNorm(1) over each sample of an (B, ..., C) tensor: one (WHOLE) when a
    sample is one part, else STATS then APPLY with the parts' statistics at A[stats_off]
    (:func:`group_norm_stats_floats` floats).  ``out`` may be ``x`` (in place)."""
    b, c = shape[0], shape[-1]
    m = int(np.prod(shape[1:-1]))
    parts, rows = group_norm_parts(shape, threads)
    from .program import Op

    def op(phase):
        return Op("group_norm", b * parts, (x_off, b, m, c, o_off, g_off, b_off, eps_off,
                                            parts, rows, phase, stats_off))
    return [op(WHOLE)] if parts == 1 else [op(STATS), op(APPLY)]


def layer_norm_op(x_off, shape, o_off, g_off, b_off, eps_off, threads=1):
    """The op of LayerNorm over the last axis of a (..., C) tensor."""
    c = shape[-1]
    rows = int(np.prod(shape[:-1]))
    per = max(1, -(-rows // (4 * threads)))
    from .program import Op
    return Op("layer_norm", -(-rows // per), (x_off, rows, c, o_off, g_off, b_off, eps_off, per))


def _run_norm(group, x, gamma, beta, eps, out, min_ndim, threads):
    from .program import Arena, run_ops

    for name, a in (("x", x), ("gamma", gamma), ("beta", beta), ("out", out)):
        check_array(a, name)
    check(x.ndim >= min_ndim, f"x must have at least {min_ndim} dims, got shape {x.shape}")
    check(out.shape == x.shape, f"out shape {out.shape} != x shape {x.shape}")
    c = x.shape[-1]
    check(gamma.shape == (c,) and beta.shape == (c,), "gamma/beta must have shape (C,)")
    if x.size == 0:
        return out
    threads = resolve_threads(threads)
    A, W = Arena(), Arena()
    xo = A.add(x)
    oo = xo if np.shares_memory(x, out) else A.add(size=x.size)      # in place, as asked
    go, bo, eo = W.add(gamma), W.add(beta), W.add(np.array([eps], np.float32))
    if group:
        so = A.add(size=group_norm_stats_floats(x.shape, threads))
        ops = group_norm_ops(xo, x.shape, oo, go, bo, eo, so, threads)
    else:
        ops = [layer_norm_op(xo, x.shape, oo, go, bo, eo, threads)]
    arena = run_ops(ops, A.build(), W.build(), threads)
    out[...] = arena[oo:oo + x.size].reshape(x.shape)
    return out


def group_norm1(x, gamma, beta, eps, out, threads=None):
    """GroupNorm with a single group (MobileViTV2's "layernorm"), channels last.

    x:     (B, ..., C) float32, C-contiguous, e.g. (B, P, N, d) patch tensors.
    gamma: (C,) float32 scale;  beta: (C,) float32 shift;  eps: float.
    out:   (B, ..., C) float32, written; may be ``x`` itself (in place).
    threads: as planned for that many threads (default: every core) -- a sample is cut
    into parts when there are fewer samples than threads.
    One mean and one biased variance per sample b, over all values of x[b].
    Returns ``out``.
    """
    return _run_norm(True, x, gamma, beta, eps, out, 2, threads)


def layer_norm(x, gamma, beta, eps, out):
    """LayerNorm over the last axis (MobileViT v1), channels last.

    x:     (..., C) float32, C-contiguous, any leading dims (e.g. (B*P, N, h)).
    gamma: (C,) float32;  beta: (C,) float32;  eps: float.
    out:   same shape as x, written; may be ``x`` itself (in place).
    Returns ``out``.
    """
    return _run_norm(False, x, gamma, beta, eps, out, 1, None)

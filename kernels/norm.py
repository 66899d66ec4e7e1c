"""Normalisation layers of the two MobileViT transformers, channels last.

MobileViTV2 "layernorm" is ``GroupNorm(num_groups=1, d)`` applied to the patch
tensor (stored here as ``(B, P, N, d)``): ONE mean and ONE (biased) variance per
sample, taken over all ``P*N*d`` values, then a per-channel affine::

    mu_b  = mean(x[b])                 var_b = mean((x[b] - mu_b)**2)
    y[b, ..., c] = (x[b, ..., c] - mu_b) / sqrt(var_b + eps) * gamma[c] + beta[c]

MobileViT (v1) uses an ordinary ``LayerNorm(h)``: the same formula, but the
statistics are taken per token (per row of the last axis).

Statistics are accumulated in float64 and every variance is a sum of squared
deviations from an already known mean (two-pass), so no precision is lost to
cancellation.  GroupNorm works on chunks of rows in parallel and merges the
per-chunk (count, mean, M2) triples with Chan et al.'s exact formula.
"""
import numpy as np
from numba import njit, prange

_GN_ROWS_PER_TASK = 32  # rows of C values summed by one parallel task


@njit(parallel=True, fastmath=True, cache=True)
def _group_norm1_kernel(x, gamma, beta, eps, out):
    # x, out: (B, M, C) float32; gamma, beta: (C,)
    B, M, C = x.shape
    n_chunks = (M + _GN_ROWS_PER_TASK - 1) // _GN_ROWS_PER_TASK
    n_tasks = B * n_chunks
    chunk_mean = np.empty(n_tasks, np.float64)  # (B * n_chunks,)
    chunk_m2 = np.empty(n_tasks, np.float64)    # (B * n_chunks,) sum of squared deviations
    chunk_count = np.empty(n_tasks, np.float64)  # (B * n_chunks,) values in the chunk

    # pass 1: exact two-pass mean and squared deviations of each chunk of rows
    # (the chunk is small, so its second read comes from cache)
    for task in prange(n_tasks):
        b = task // n_chunks
        m0 = (task % n_chunks) * _GN_ROWS_PER_TASK
        m1 = min(M, m0 + _GN_ROWS_PER_TASK)
        acc = 0.0
        for m in range(m0, m1):
            for c in range(C):
                acc += np.float64(x[b, m, c])
        count = np.float64((m1 - m0) * C)
        mu = acc / count
        acc = 0.0
        for m in range(m0, m1):
            for c in range(C):
                dev = np.float64(x[b, m, c]) - mu
                acc += dev * dev
        chunk_mean[task] = mu
        chunk_m2[task] = acc
        chunk_count[task] = count

    # combine the chunks of each sample (Chan et al.'s parallel variance formula):
    #   mean = sum_k n_k mean_k / n,   M2 = sum_k (M2_k + n_k (mean_k - mean)^2)
    mean32 = np.empty(B, np.float32)  # (B,)
    rstd32 = np.empty(B, np.float32)  # (B,)
    total = np.float64(M) * np.float64(C)
    for b in range(B):
        k0 = b * n_chunks
        mu = 0.0
        for k in range(k0, k0 + n_chunks):
            mu += chunk_count[k] * chunk_mean[k]
        mu /= total
        m2 = 0.0
        for k in range(k0, k0 + n_chunks):
            dm = chunk_mean[k] - mu
            m2 += chunk_m2[k] + chunk_count[k] * dm * dm
        mean32[b] = np.float32(mu)
        rstd32[b] = np.float32(1.0 / np.sqrt(m2 / total + eps))

    # pass 2: normalise and apply the per-channel affine (out may alias x)
    for task in prange(n_tasks):
        b = task // n_chunks
        m0 = (task % n_chunks) * _GN_ROWS_PER_TASK
        m1 = min(M, m0 + _GN_ROWS_PER_TASK)
        mu32 = mean32[b]
        rs32 = rstd32[b]
        for m in range(m0, m1):
            for c in range(C):
                out[b, m, c] = (x[b, m, c] - mu32) * (rs32 * gamma[c]) + beta[c]


@njit(parallel=True, fastmath=True, cache=True)
def _layer_norm_kernel(x, gamma, beta, eps, out):
    # x, out: (R, C) float32; one LayerNorm per row
    R, C = x.shape
    for r in prange(R):
        acc = 0.0
        for c in range(C):
            acc += np.float64(x[r, c])
        mu = acc / C
        acc = 0.0
        for c in range(C):
            dev = np.float64(x[r, c]) - mu
            acc += dev * dev
        mu32 = np.float32(mu)
        rs = np.float32(1.0 / np.sqrt(acc / C + eps))
        for c in range(C):
            out[r, c] = (x[r, c] - mu32) * (rs * gamma[c]) + beta[c]


def _check_norm_args(x, gamma, beta, out, min_ndim):
    for name, a in (("x", x), ("gamma", gamma), ("beta", beta), ("out", out)):
        assert a.dtype == np.float32, f"{name} must be float32, got {a.dtype}"
        assert a.flags.c_contiguous, f"{name} must be C-contiguous"
    assert x.ndim >= min_ndim, f"x must have at least {min_ndim} dims, got shape {x.shape}"
    assert out.shape == x.shape, f"out shape {out.shape} != x shape {x.shape}"
    C = x.shape[-1]
    assert gamma.shape == (C,) and beta.shape == (C,), "gamma/beta must have shape (C,)"


def group_norm1(x, gamma, beta, eps, out):
    """GroupNorm with a single group (MobileViTV2's "layernorm"), channels last.

    x:     (B, ..., C) float32, C-contiguous, e.g. (B, P, N, d) patch tensors.
    gamma: (C,) float32 scale;  beta: (C,) float32 shift;  eps: float.
    out:   (B, ..., C) float32, written; may be ``x`` itself (in place).
    One mean and one biased variance per sample b, over all values of x[b].
    Returns ``out``.
    """
    _check_norm_args(x, gamma, beta, out, 2)
    B, C = x.shape[0], x.shape[-1]
    if x.size:
        _group_norm1_kernel(x.reshape(B, -1, C), gamma, beta, float(eps),
                            out.reshape(B, -1, C))  # views (B, M, C)
    return out


def layer_norm(x, gamma, beta, eps, out):
    """LayerNorm over the last axis (MobileViT v1), channels last.

    x:     (..., C) float32, C-contiguous, any leading dims (e.g. (B*P, N, h)).
    gamma: (C,) float32;  beta: (C,) float32;  eps: float.
    out:   same shape as x, written; may be ``x`` itself (in place).
    Returns ``out``.
    """
    _check_norm_args(x, gamma, beta, out, 1)
    C = x.shape[-1]
    if x.size:
        _layer_norm_kernel(x.reshape(-1, C), gamma, beta, float(eps),
                           out.reshape(-1, C))  # views (R, C)
    return out


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

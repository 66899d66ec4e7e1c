"""Normalisation layers of the two MobileViT transformers, channels last.

MobileViTV2 "layernorm" is ``GroupNorm(num_groups=1, d)`` applied to the patch
tensor (stored here as ``(B, P, N, d)``): ONE mean and ONE (biased) variance per
sample, taken over all ``P*N*d`` values, then a per-channel affine::

    mu_b  = mean(x[b])                 var_b = mean((x[b] - mu_b)**2)
    y[b, ..., c] = (x[b, ..., c] - mu_b) / sqrt(var_b + eps) * gamma[c] + beta[c]

MobileViT (v1) uses an ordinary ``LayerNorm(h)``: the same formula, but the
statistics are taken per token (per row of the last axis).

Statistics are accumulated in float64 and the variance is computed in a second
pass around the mean (two-pass), so no precision is lost to cancellation.
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
    partial = np.zeros(n_tasks, np.float64)  # (B * n_chunks,) partial sums

    # pass 1: partial sums -> per-sample mean
    for task in prange(n_tasks):
        b = task // n_chunks
        m0 = (task % n_chunks) * _GN_ROWS_PER_TASK
        m1 = min(M, m0 + _GN_ROWS_PER_TASK)
        acc = 0.0
        for m in range(m0, m1):
            for c in range(C):
                acc += np.float64(x[b, m, c])
        partial[task] = acc
    count = np.float64(M) * np.float64(C)
    mean = np.empty(B, np.float64)  # (B,)
    for b in range(B):
        mean[b] = partial[b * n_chunks:(b + 1) * n_chunks].sum() / count

    # pass 2: partial sums of squared deviations -> per-sample variance
    for task in prange(n_tasks):
        b = task // n_chunks
        m0 = (task % n_chunks) * _GN_ROWS_PER_TASK
        m1 = min(M, m0 + _GN_ROWS_PER_TASK)
        mu = mean[b]
        acc = 0.0
        for m in range(m0, m1):
            for c in range(C):
                dev = np.float64(x[b, m, c]) - mu
                acc += dev * dev
        partial[task] = acc
    mean32 = np.empty(B, np.float32)  # (B,)
    rstd32 = np.empty(B, np.float32)  # (B,)
    for b in range(B):
        var = partial[b * n_chunks:(b + 1) * n_chunks].sum() / count
        mean32[b] = np.float32(mean[b])
        rstd32[b] = np.float32(1.0 / np.sqrt(var + eps))

    # pass 3: normalise and apply the per-channel affine (out may alias x)
    for task in prange(n_tasks):
        b = task // n_chunks
        m0 = (task % n_chunks) * _GN_ROWS_PER_TASK
        m1 = min(M, m0 + _GN_ROWS_PER_TASK)
        mu = mean32[b]
        rs = rstd32[b]
        for m in range(m0, m1):
            for c in range(C):
                out[b, m, c] = (x[b, m, c] - mu) * (rs * gamma[c]) + beta[c]


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

"""MobileViTV2 separable ("linear") self-attention core, channels last.

The fused qkv 1x1 conv produces, for every pixel-in-patch index p and patch n,
``1 + 2d`` channels: a single query channel q, d key channels K and d value
channels V.  For each sample b and each p separately::

    s[n]  = softmax_n(q[n])                       (N,)   one score per patch
    cv[c] = sum_n K[n, c] * s[n]                  (d,)   context vector
    y[n, c] = relu(V[n, c]) * cv[c]               (N, d)

No scaling and no heads: the cost is linear in N (hence "linear attention").
The out_proj 1x1 conv that follows is not part of this kernel.
The softmax sum and the context vector are accumulated in float64.
"""
import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, fastmath=True, cache=True)
def _separable_attention_kernel(qkv, out):
    # qkv: (R, N, 1 + 2d) with R = B*P independent groups;  out: (R, N, d)
    R, N, _ = qkv.shape
    d = out.shape[2]
    cv = np.empty((R, d), np.float32)  # (R, d) context vectors

    # phase 1: softmax over n of the query channel, then the context vector
    for r in prange(R):
        qmax = qkv[r, 0, 0]
        for n in range(1, N):
            qmax = max(qmax, qkv[r, n, 0])
        acc = np.zeros(d, np.float64)  # (d,) un-normalised context vector
        denom = 0.0
        for n in range(N):
            e = math.exp(np.float64(qkv[r, n, 0] - qmax))
            denom += e
            for c in range(d):
                acc[c] += e * qkv[r, n, 1 + c]
        inv = 1.0 / denom
        for c in range(d):
            cv[r, c] = np.float32(acc[c] * inv)

    # phase 2: out = relu(V) * cv, broadcast over the N patches
    for rn in prange(R * N):
        r = rn // N
        n = rn % N
        for c in range(d):
            out[r, n, c] = max(qkv[r, n, 1 + d + c], np.float32(0.0)) * cv[r, c]


def separable_attention(qkv, out):
    """MobileViTV2 separable self-attention (before out_proj), channels last.

    qkv: (B, P, N, 1 + 2d) float32 C-contiguous, the fused qkv projection:
         channel 0 = query, 1..d = key, d+1..2d = value.
    out: (B, P, N, d) float32 C-contiguous, written.
    For each (b, p): out[n, c] = relu(V[n, c]) * sum_m K[m, c] * softmax_m(q)[m].
    Returns ``out``.
    """
    assert qkv.dtype == np.float32 and qkv.flags.c_contiguous, "qkv must be C-contiguous float32"
    assert out.dtype == np.float32 and out.flags.c_contiguous, "out must be C-contiguous float32"
    assert qkv.ndim == 4 and out.ndim == 4, "qkv and out must be (B, P, N, channels)"
    B, P, N, D1 = qkv.shape
    d = out.shape[3]
    assert D1 == 1 + 2 * d, f"qkv has {D1} channels, expected 1 + 2*{d}"
    assert out.shape == (B, P, N, d), f"out shape {out.shape} != {(B, P, N, d)}"
    if out.size:
        _separable_attention_kernel(qkv.reshape(B * P, N, D1),
                                    out.reshape(B * P, N, d))  # views (B*P, N, .)
    return out


def separable_attention_reference(qkv):
    """NumPy separable attention: qkv (B, P, N, 1+2d) -> new (B, P, N, d) float32."""
    qkv64 = np.asarray(qkv, np.float64)
    d = (qkv64.shape[-1] - 1) // 2
    q = qkv64[..., 0:1]                                          # (B, P, N, 1)
    k = qkv64[..., 1:1 + d]                                      # (B, P, N, d)
    v = qkv64[..., 1 + d:]                                       # (B, P, N, d)
    e = np.exp(q - q.max(axis=2, keepdims=True))                 # (B, P, N, 1)
    s = e / e.sum(axis=2, keepdims=True)                         # (B, P, N, 1)
    cv = (k * s).sum(axis=2, keepdims=True)                      # (B, P, 1, d)
    return (np.maximum(v, 0.0) * cv).astype(np.float32)          # (B, P, N, d)

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

from .policy import arenas, check, check_array, job, scratch
from .simd import stack_buffer_f64


# ---------------------------------------------------------------- the reference (NumPy)
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


# ---------------------------------------------------------------- the kernel
# fields of a "separable_attention" op row, after [code, jobs]: qkv (R, N, 1 + 2d) at x_off,
# out (R, N, d) at o_off; R = B*P independent groups, one per job
SEPARABLE_ATTENTION_FIELDS = ("x_off", "R", "N", "d", "o_off")


CHUNK = 64   # context-vector channels accumulated together (in float64 registers)


@job
def separable_attention_job(pa, a_size, pw, w_size, pp, r, worker):
    """Group r: softmax of its query channel over the N patches, the context vector, and
    out = relu(V) * cv.  The softmax sum and the context vector accumulate in float64."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    x_off, n_tok, d, o_off = p[2], p[4], p[5], p[6]
    width = 1 + 2 * d
    x0 = x_off + r * n_tok * width                       # qkv[r, 0, 0]
    o0 = o_off + r * n_tok * d                           # out[r, 0, 0]
    cv = scratch(p, worker)                              # (d,) context vector: A[cv:]
    qmax = A[x0]
    for n in range(1, n_tok):
        qmax = max(qmax, A[x0 + n * width])
    denom = 0.0
    for n in range(n_tok):
        denom += math.exp(np.float64(A[x0 + n * width] - qmax))
    acc = stack_buffer_f64(CHUNK)                        # un-normalised context, CHUNK channels
    for c0 in range(0, d, CHUNK):
        c1 = min(d, c0 + CHUNK)
        for c in range(c1 - c0):
            acc[c] = 0.0
        for n in range(n_tok):
            row = x0 + n * width
            e = math.exp(np.float64(A[row] - qmax))
            for c in range(c0, c1):
                acc[c - c0] += e * A[row + 1 + c]
        for c in range(c0, c1):
            A[cv + c] = np.float32(acc[c - c0] / denom)
    for n in range(n_tok):
        row = x0 + n * width + 1 + d
        out = o0 + n * d
        for c in range(d):
            A[out + c] = max(A[row + c], np.float32(0.0)) * A[cv + c]


def separable_attention_op(x_off, qkv_shape, o_off):
    """The op for a qkv tensor (B, P, N, 1 + 2d); one job per (b, p)."""
    check(len(qkv_shape) == 4 and qkv_shape[3] % 2 == 1, f"qkv must be (B, P, N, 1 + 2d), "
                                                         f"got {qkv_shape}")
    b, pp, n, width = qkv_shape
    from .program import Op
    return Op("separable_attention", b * pp, (x_off, b * pp, n, (width - 1) // 2, o_off),
              scratch=(width - 1) // 2)


def separable_attention(qkv, out):
    """MobileViTV2 separable self-attention (before out_proj), channels last.

    qkv: (B, P, N, 1 + 2d) float32 C-contiguous, the fused qkv projection:
         channel 0 = query, 1..d = key, d+1..2d = value.
    out: (B, P, N, d) float32 C-contiguous, written.
    For each (b, p): out[n, c] = relu(V[n, c]) * sum_m K[m, c] * softmax_m(q)[m].
    Returns ``out``.
    """
    from .program import Arena, run_ops

    check_array(qkv, "qkv", 4)
    check_array(out, "out", 4)
    B, P, N, D1 = qkv.shape
    d = out.shape[3]
    check(D1 == 1 + 2 * d, f"qkv has {D1} channels, expected 1 + 2*{d}")
    check(out.shape == (B, P, N, d), f"out shape {out.shape} != {(B, P, N, d)}")
    if out.size == 0:
        return out
    A = Arena()
    xo, oo = A.add(qkv), A.add(size=out.size)
    arena = run_ops([separable_attention_op(xo, qkv.shape, oo)], A.build(), Arena().build())
    out[...] = arena[oo:oo + out.size].reshape(out.shape)
    return out

"""MobileViTV2 separable ("linear") self-attention core, channels last.

The fused qkv 1x1 conv produces, for every pixel-in-patch index p and patch n,
``1 + 2d`` channels: a single query channel q, d key channels K and d value
channels V.  For each sample b and each p separately::

    s[n]  = softmax_n(q[n])                       (N,)   one score per patch
    cv[c] = sum_n K[n, c] * s[n]                  (d,)   context vector
    y[n, c] = relu(V[n, c]) * cv[c]               (N, d)

No scaling and no heads: the cost is linear in N (hence "linear attention").
The out_proj 1x1 conv that follows is not part of this kernel.

A parallel job takes one (b, p): the N weights exp(q[n] - max q) (float64 exp,
kept as float32, their sum in float64), then the context vector a block of
channels at a time -- float32 vector sums over TOKEN_CHUNK patches, each added
into float64 -- and the output rows a vector at a time.
"""
import math

import numpy as np

from .policy import arenas, check, check_array, job, scratch
from .simd import (VEC, stack_buffer, stack_buffer_f64, vfma, vload, vload_n, vmax, vmul, vsplat,
                   vstore, vstore_n)


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


CHANNEL_BLOCK = 64   # context-vector channels summed together (whole vectors)
TOKEN_CHUNK = 32     # patches summed in float32 before their sum is added in float64


@job
def separable_attention_job(pa, a_size, pw, w_size, pp, r, worker):
    """Group r: softmax of its query channel over the N patches, the context vector, and
    out = relu(V) * cv (see the module docstring)."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    x_off, n_tok, d, o_off = p[2], p[4], p[5], p[6]
    width = 1 + 2 * d
    x0 = x_off + r * n_tok * width                       # qkv[r, 0, 0]
    o0 = o_off + r * n_tok * d                           # out[r, 0, 0]
    ev = scratch(p, worker)                              # (N,) exp(q - max q): A[ev:]
    cv = ev + n_tok                                      # (d,) context vector: A[cv:]
    qmax = A[x0]
    for n in range(1, n_tok):
        qmax = max(qmax, A[x0 + n * width])
    denom = 0.0
    for n in range(n_tok):
        e = math.exp(np.float64(A[x0 + n * width] - qmax))
        A[ev + n] = np.float32(e)
        denom += np.float64(A[ev + n])
    c_vec = d - d % VEC                                  # channels in whole vectors
    acc = stack_buffer_f64(CHANNEL_BLOCK)
    part = stack_buffer(CHANNEL_BLOCK)
    for c0 in range(0, c_vec, CHANNEL_BLOCK):            # cv = sum_n e[n] K[n] / denom
        nc = min(CHANNEL_BLOCK, c_vec - c0)
        for c in range(nc):
            acc[c] = 0.0
        for n0 in range(0, n_tok, TOKEN_CHUNK):
            for v in range(0, nc, VEC):
                vstore(part, v, vsplat(np.float32(0.0)))
            for n in range(n0, min(n_tok, n0 + TOKEN_CHUNK)):
                e = vsplat(A[ev + n])
                k_row = x0 + n * width + 1 + c0
                for v in range(0, nc, VEC):
                    vstore(part, v, vfma(e, vload(A, k_row + v), vload(part, v)))
            for c in range(nc):
                acc[c] += part[c]
        for c in range(nc):
            A[cv + c0 + c] = np.float32(acc[c] / denom)
    for c in range(c_vec, d):                            # channels past the last vector
        total = 0.0
        for n in range(n_tok):
            total += np.float64(A[ev + n]) * A[x0 + n * width + 1 + c]
        A[cv + c] = np.float32(total / denom)
    zero = vsplat(np.float32(0.0))
    for n in range(n_tok):                               # out = relu(V) * cv
        v_row = x0 + n * width + 1 + d
        out = o0 + n * d
        for c in range(0, c_vec, VEC):
            vstore(A, out + c, vmul(vmax(vload(A, v_row + c), zero), vload(A, cv + c)))
        if c_vec < d:
            left = d - c_vec
            vstore_n(A, out + c_vec, vmul(vmax(vload_n(A, v_row + c_vec, left), zero),
                                          vload_n(A, cv + c_vec, left)), left)


def separable_attention_op(x_off, qkv_shape, o_off):
    """The op for a qkv tensor (B, P, N, 1 + 2d); one job per (b, p)."""
    check(len(qkv_shape) == 4 and qkv_shape[3] % 2 == 1, f"qkv must be (B, P, N, 1 + 2d), "
                                                         f"got {qkv_shape}")
    b, pp, n, width = qkv_shape
    from .program import Op
    return Op("separable_attention", b * pp, (x_off, b * pp, n, (width - 1) // 2, o_off),
              scratch=n + (width - 1) // 2)


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

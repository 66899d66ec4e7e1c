"""MobileViT (v1) multi-head self-attention core, channels last.

Input: the concatenated q/k/v projections of S independent sequences of N
tokens, ``qkv[s, n] = [q (h) | k (h) | v (h)]``.  The h features are split into
``heads`` contiguous groups of ``hd = h / heads`` (head j uses features
``[j*hd, (j+1)*hd)``).  For each sequence s and head j::

    A = softmax_rows(Q_j K_j^T / sqrt(hd))        (N, N)
    Y_j = A V_j                                   (N, hd)

and the heads are concatenated back to h features.  The output dense layer is
NOT part of this kernel.

The N x N attention matrix is never stored: a parallel job takes one (sequence,
head) and runs both products on the register tile of the GEMM kernels
(``simd.gemm_tile``), NR queries at a time:

* K, pre-scaled by 1/sqrt(hd), is packed once as panels of NR keys (like a weight),
  and V transposed to (hd, N);
* scores of NR queries: S = Q K^T, MR queries x NR keys per tile;
* each row of S becomes exp(s - max) (vectorised), and is written transposed
  into a panel P (N keys x NR queries), divided by its sum;
* the output of the NR queries, transposed: Y^T = V^T P, MR head dimensions x NR
  queries per tile (hd = 36 of MobileViT-S is exactly 6 AVX2 tiles of 6 rows).
"""
import math

import numpy as np

from .activations import vexp
from .policy import arenas, check, check_array, helper, job, scratch
from .simd import (MR, NR, TILE, VEC, gemm_tile, stack_buffer, vhmax, vload, vload_n, vmax,
                   vmul, vsplat, vstore, vstore_n, vsub, vsum)

# fields of a "mha" op row, after [code, jobs]: qkv (S, N, 3h) at x_off, out (S, N, h) at o_off
MHA_FIELDS = ("x_off", "S", "N", "h", "heads", "o_off")


@helper
def _softmax_row(A, row, n, scale_out, dst, dst_stride):
    """dst[m * dst_stride] = exp(A[row + m] - max) / sum for m < n (float64 sum)."""
    vm = vsplat(A[row])
    m = 0
    while m + VEC <= n:
        vm = vmax(vm, vload(A, row + m))
        m += VEC
    rmax = vhmax(vm)
    while m < n:
        rmax = max(rmax, A[row + m])
        m += 1
    total = 0.0
    m = 0
    while m + VEC <= n:
        e = vexp(vsub(vload(A, row + m), vsplat(rmax)))
        vstore(A, row + m, e)
        total += vsum(e)
        m += VEC
    if m < n:
        e = vexp(vsub(vload_n(A, row + m, n - m), vsplat(rmax)))
        vstore_n(A, row + m, e, n - m)
        for t in range(n - m):
            total += A[row + m + t]
    inv = np.float32(scale_out / total)
    for m in range(n):
        A[dst + m * dst_stride] = A[row + m] * inv


@job
def mha_job(pa, a_size, pw, w_size, pp, job, worker):
    """Job = (sequence s, head j): all N queries of that head."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    x_off, n_seq, N, h, num_heads, o_off = p[2], p[3], p[4], p[5], p[6], p[7]
    hd = h // num_heads
    scale = np.float32(1.0 / math.sqrt(hd))
    s = job // num_heads
    j = job - s * num_heads
    ld = 3 * h                                        # floats between tokens in qkv
    q0 = x_off + s * N * ld + j * hd                  # qkv[s, 0, q of head j]
    k0 = q0 + h
    v0 = q0 + 2 * h
    n_pad = (N + NR - 1) // NR * NR
    kp = scratch(p, worker)                           # K^T panels: (n_pad/NR, hd, NR)
    vt = kp + n_pad * hd                              # V^T: (hd, N)
    sc = vt + hd * N                                  # scores of NR queries: (NR, n_pad)
    pt = sc + NR * n_pad                              # softmax panel: (N, NR)
    for m in range(n_pad):                            # pack K (scaled) and V^T
        panel = kp + (m // NR) * hd * NR + m % NR
        for t in range(hd):
            A[panel + t * NR] = A[k0 + m * ld + t] * scale if m < N else np.float32(0.0)
    for t in range(hd):
        for m in range(N):
            A[vt + t * N + m] = A[v0 + m * ld + t]
    acc = stack_buffer(TILE)
    for qb in range(0, N, NR):                        # NR queries at a time
        nq = min(NR, N - qb)
        for i0 in range(0, nq, MR):                   # S = Q K^T, MR queries x NR keys
            rows = min(MR, nq - i0)
            for pk in range(n_pad // NR):
                gemm_tile(acc, A, q0 + (qb + i0) * ld, ld, rows, A, kp + pk * hd * NR, hd,
                          False)
                for r in range(rows):
                    for c in range(NR):
                        A[sc + (i0 + r) * n_pad + pk * NR + c] = acc[r * NR + c]
        for q in range(nq):                           # P[m, q] = softmax of query q's scores
            _softmax_row(A, sc + q * n_pad, N, 1.0, pt + q, NR)
        for q in range(nq, NR):                       # unused query columns: zeros
            for m in range(N):
                A[pt + m * NR + q] = 0.0
        for d0 in range(0, hd, MR):                   # Y^T = V^T P, MR dims x NR queries
            rows = min(MR, hd - d0)
            gemm_tile(acc, A, vt + d0 * N, N, rows, A, pt, N, False)
            for r in range(rows):
                for q in range(nq):
                    A[o_off + (s * N + qb + q) * h + j * hd + d0 + r] = acc[r * NR + q]


def mha_op(x_off, qkv_shape, num_heads, o_off):
    """The op for qkv (S, N, 3h); jobs = sequences x heads x blocks of queries."""
    check(len(qkv_shape) == 3 and qkv_shape[2] % 3 == 0, f"qkv must be (S, N, 3h), got "
                                                         f"{qkv_shape}")
    S, N, h3 = qkv_shape
    h = h3 // 3
    check(isinstance(num_heads, (int, np.integer)) and num_heads >= 1 and h % num_heads == 0,
          f"{num_heads} heads do not divide h={h}")
    from .program import Op
    hd, n_pad = h // num_heads, -(-N // NR) * NR
    return Op("mha", S * num_heads, (x_off, S, N, h, num_heads, o_off),
              scratch=n_pad * hd + hd * N + NR * n_pad + N * NR)


def multi_head_attention(qkv, num_heads, out):
    """Multi-head scaled dot-product attention (MobileViT v1), channels last.

    qkv:       (S, N, 3h) float32 C-contiguous; last axis = [q | k | v], h each,
               head j uses features [j*hd, (j+1)*hd) of each, hd = h // num_heads.
    num_heads: int, must divide h.
    out:       (S, N, h) float32 C-contiguous, written (heads concatenated; the
               output dense layer is not applied).
    out[s, :, head j] = softmax(Q_j K_j^T / sqrt(hd)) V_j.   Returns ``out``.
    """
    from .program import Arena, run_ops

    check_array(qkv, "qkv", 3)
    check_array(out, "out", 3)
    S, N, H3 = qkv.shape
    check(H3 % 3 == 0, f"qkv last axis {H3} is not a multiple of 3")
    check(out.shape == (S, N, H3 // 3), f"out shape {out.shape} != {(S, N, H3 // 3)}")
    if out.size == 0:
        return out
    A = Arena()
    xo, oo = A.add(qkv), A.add(size=out.size)
    arena = run_ops([mha_op(xo, qkv.shape, num_heads, oo)], A.build(), Arena().build())
    out[...] = arena[oo:oo + out.size].reshape(out.shape)
    return out


def multi_head_attention_reference(qkv, num_heads):
    """NumPy multi-head attention: qkv (S, N, 3h) -> new (S, N, h) float32."""
    qkv64 = np.asarray(qkv, np.float64)
    S, N, H3 = qkv64.shape
    h = H3 // 3
    hd = h // num_heads
    q, k, v = (qkv64[..., i * h:(i + 1) * h].reshape(S, N, num_heads, hd).transpose(0, 2, 1, 3)
               for i in range(3))                                # each (S, heads, N, hd)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)           # (S, heads, N, N)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))      # (S, heads, N, N)
    probs = e / e.sum(axis=-1, keepdims=True)                    # (S, heads, N, N)
    y = probs @ v                                                # (S, heads, N, hd)
    return y.transpose(0, 2, 1, 3).reshape(S, N, h).astype(np.float32)

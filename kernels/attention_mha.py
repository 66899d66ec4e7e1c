"""MobileViT (v1) multi-head self-attention core, channels last.

Input: the concatenated q/k/v projections of S independent sequences of N
tokens, ``qkv[s, n] = [q (h) | k (h) | v (h)]``.  The h features are split into
``heads`` contiguous groups of ``hd = h / heads`` (head j uses features
``[j*hd, (j+1)*hd)``).  For each sequence s and head j::

    A = softmax_rows(Q_j K_j^T / sqrt(hd))        (N, N)
    Y_j = A V_j                                   (N, hd)

and the heads are concatenated back to h features.  The output dense layer is
NOT part of this kernel.

The N x N attention matrix is never stored: every parallel job takes one
(sequence, head, block of queries), copies that head's K and V transposed to
(hd, N) so that the loops over keys are contiguous (they vectorise), and then
handles four query rows at a time: scores rows, max, exp, sum, weighted sums of V.
"""
import math

import numpy as np

from .activations import exp_f32
from .policy import arenas, check, check_array, helper, job, scratch

QUERY_BLOCK = 64  # queries per parallel job (the K/V transpose is amortised over them)
_QR = 4           # queries computed together in the inner loops

# fields of a "mha" op row, after [code, jobs]: qkv (S, N, 3h) at x_off, out (S, N, h) at o_off
MHA_FIELDS = ("x_off", "S", "N", "h", "heads", "o_off")


@job
def mha_job(pa, a_size, pw, w_size, pp, job, worker):
    """Job = (sequence s, head j, block of QUERY_BLOCK queries)."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    x_off, n_seq, N, h, num_heads, o_off = p[2], p[3], p[4], p[5], p[6], p[7]
    hd = h // num_heads
    scale = np.float32(1.0 / math.sqrt(hd))
    n_blocks = (N + QUERY_BLOCK - 1) // QUERY_BLOCK
    s = job // (num_heads * n_blocks)
    j = (job // n_blocks) % num_heads
    i0 = (job % n_blocks) * QUERY_BLOCK
    i1 = min(N, i0 + QUERY_BLOCK)
    q_off = j * hd
    k_off = h + j * hd
    v_off = 2 * h + j * hd

    # this head's keys (pre-scaled by 1/sqrt(hd)) and values, transposed, in scratch space:
    # kt = A[kt:] (hd, N), vt = A[vt:] (hd, N), scores A[sc:] (4, N)
    kt = scratch(p, worker)
    vt = kt + hd * N
    sc = vt + hd * N
    for t in range(hd):  # t outer: contiguous writes (rows of kt are 4N bytes apart)
        for m in range(N):
            row = x_off + (s * N + m) * 3 * h
            A[kt + t * N + m] = A[row + k_off + t] * scale
            A[vt + t * N + m] = A[row + v_off + t]

    # Queries go 4 at a time: every key/value element loaded from kt/vt feeds 4 FMAs
    # (one per query) instead of 1, which is what limits this loop (kt, vt sit in L2).
    for ib in range(i0, i1, _QR):
        q0 = x_off + (s * N + ib) * 3 * h + q_off   # query rows; past the block end, repeat
        q1 = x_off + (s * N + min(ib + 1, i1 - 1)) * 3 * h + q_off   # the last one (computed,
        q2 = x_off + (s * N + min(ib + 2, i1 - 1)) * 3 * h + q_off   # never stored)
        q3 = x_off + (s * N + min(ib + 3, i1 - 1)) * 3 * h + q_off
        s0, s1, s2, s3 = sc, sc + N, sc + 2 * N, sc + 3 * N
        for m in range(N):
            A[s0 + m] = 0.0
            A[s1 + m] = 0.0
            A[s2 + m] = 0.0
            A[s3 + m] = 0.0
        for t in range(hd):              # scores[r, m] = q_r . k_m / sqrt(hd)
            a0 = A[q0 + t]
            a1 = A[q1 + t]
            a2 = A[q2 + t]
            a3 = A[q3 + t]
            krow = kt + t * N
            for m in range(N):
                k = A[krow + m]
                A[s0 + m] += a0 * k
                A[s1 + m] += a1 * k
                A[s2 + m] += a2 * k
                A[s3 + m] += a3 * k
        inv0 = _softmax_numerator_inplace(A, s0, N)
        inv1 = _softmax_numerator_inplace(A, s1, N)
        inv2 = _softmax_numerator_inplace(A, s2, N)
        inv3 = _softmax_numerator_inplace(A, s3, N)
        for t in range(hd):              # y_r = sum_m softmax_r[m] * v_m
            vrow = vt + t * N
            c0 = np.float32(0.0)
            c1 = np.float32(0.0)
            c2 = np.float32(0.0)
            c3 = np.float32(0.0)
            for m in range(N):
                v = A[vrow + m]
                c0 += A[s0 + m] * v
                c1 += A[s1 + m] * v
                c2 += A[s2 + m] * v
                c3 += A[s3 + m] * v
            out = o_off + (s * N + ib) * h + q_off + t
            A[out] = c0 * inv0
            if ib + 1 < i1:
                A[out + h] = c1 * inv1
            if ib + 2 < i1:
                A[out + 2 * h] = c2 * inv2
            if ib + 3 < i1:
                A[out + 3 * h] = c3 * inv3


@helper
def _softmax_numerator_inplace(A, row, n):
    """A[row : row + n] <- exp(x - max x); returns 1 / sum (the sum accumulated in float64)."""
    rmax = A[row]
    for m in range(row + 1, row + n):
        rmax = max(rmax, A[m])
    total = 0.0
    for m in range(row, row + n):
        e = exp_f32(A[m] - rmax)   # vectorised, no libm call
        A[m] = e
        total += np.float64(e)
    return np.float32(1.0 / total)


def mha_op(x_off, qkv_shape, num_heads, o_off):
    """The op for qkv (S, N, 3h); jobs = sequences x heads x blocks of queries."""
    check(len(qkv_shape) == 3 and qkv_shape[2] % 3 == 0, f"qkv must be (S, N, 3h), got "
                                                         f"{qkv_shape}")
    S, N, h3 = qkv_shape
    h = h3 // 3
    check(isinstance(num_heads, (int, np.integer)) and num_heads >= 1 and h % num_heads == 0,
          f"{num_heads} heads do not divide h={h}")
    from .program import Op
    return Op("mha", S * num_heads * -(-N // QUERY_BLOCK), (x_off, S, N, h, num_heads, o_off),
              scratch=(2 * (h // num_heads) + _QR) * N)


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

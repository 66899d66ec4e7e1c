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
head) and runs both products on the GEMM register tile (``simd.gemm_tile_out``,
which stores straight into its destination), QB = 3 * MR queries at a time:

* K, pre-scaled by 1/sqrt(hd), is packed once as panels of NR keys (transposed a
  VEC x VEC block at a time in registers), and V as panels of NR head dimensions (like
  weights; zeros past hd);
* scores of QB queries: S = Q K^T, MR queries x NR keys per tile, into a (QB, N)
  block that stays in L1;
* each row of S becomes exp(s - max), in place (vectorised), and its 1 / sum is kept;
* the output of the QB queries: Y = E V, MR queries x NR head dimensions per tile,
  stored into the heads' columns of the output (a last, partial panel is masked), then
  each query's hd outputs are multiplied by its 1 / sum (hd products instead of N).
"""
import math

import numpy as np

from .policy import arenas, check, check_array, helper, job, scratch
from .simd import (MR, NR, VEC, gemm_tile_out, transpose_block, vadd, vexp_nonpositive, vhmax,
                   vload, vload_n, vmax, vmul, vsplat, vstore, vstore_n, vsub, vsum, zero_floats)


# ---------------------------------------------------------------- the reference (NumPy)
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


# ---------------------------------------------------------------- the kernel
# fields of a "mha" op row, after [code, jobs]: qkv (S, N, 3h) at x_off, out (S, N, h) at o_off
MHA_FIELDS = ("x_off", "S", "N", "h", "heads", "o_off")


QB = 3 * MR      # queries per block: whole register tiles


@helper
def _softmax_row(A, row, n):
    """A[row + m] = exp(A[row + m] - max) for m < n, in place; returns 1 / sum (the
    normalisation is applied to the row's output, hd values, rather than to its n scores).
    Every s - max is <= 0, so exp needs no clamp above (``vexp_nonpositive``: MobileViT's
    attention -4.5..8 % on its N = 64 / 256 shapes, Zen 3).
    The sum runs in VEC float32 lanes (n / VEC terms each), then across lanes."""
    vm = vsplat(A[row])
    m = 0
    while m + VEC <= n:
        vm = vmax(vm, vload(A, row + m))
        m += VEC
    rmax = vhmax(vm)
    while m < n:
        rmax = max(rmax, A[row + m])
        m += 1
    shift = vsplat(rmax)
    acc = vsplat(np.float32(0.0))
    m = 0
    while m + VEC <= n:
        e = vexp_nonpositive(vsub(vload(A, row + m), shift))
        vstore(A, row + m, e)
        acc = vadd(acc, e)
        m += VEC
    tail = np.float32(0.0)
    if m < n:             # masked lanes load as 0 and exp(0 - max) is not 0 (0 - max may even
        # be > 0, past vexp_nonpositive's domain): they are not stored, the tail is summed apart
        e = vexp_nonpositive(vsub(vload_n(A, row + m, n - m), shift))
        vstore_n(A, row + m, e, n - m)
        for t in range(n - m):
            tail += A[row + m + t]
    return np.float32(1.0 / (np.float64(vsum(acc)) + np.float64(tail)))


@helper
def _scale_row(A, off, n, f):
    """A[off : off + n] *= f."""
    v = vsplat(f)
    m = 0
    while m + VEC <= n:
        vstore(A, off + m, vmul(vload(A, off + m), v))
        m += VEC
    if m < n:
        vstore_n(A, off + m, vmul(vload_n(A, off + m, n - m), v), n - m)


@helper
def _pack_keys(A, kp, k0, ld, N, hd, scale):
    """K (N keys, hd floats each, ld apart), times ``scale``, as panels of NR keys: (n_pad/NR,
    hd, NR), the B operand of Q K^T (zeros past the last key).  Transposed VEC x VEC blocks
    at a time in registers (``simd.transpose_block``)."""
    for pk in range((N + NR - 1) // NR):
        panel = kp + pk * hd * NR
        for c0 in range(0, NR, VEC):
            m0 = pk * NR + c0
            rows = max(0, min(VEC, N - m0))
            for t0 in range(0, hd, VEC):
                transpose_block(A, panel + t0 * NR + c0, NR, A, k0 + m0 * ld + t0, ld, rows,
                                min(VEC, hd - t0), scale)


@helper
def _pack_values(A, vp, v0, ld, N, hd):
    """V (N tokens, hd floats each, ld apart) as panels of NR head dimensions: (ceil(hd/NR),
    N, NR), the B operand of E V (zeros past hd)."""
    zero = vsplat(np.float32(0.0))
    for m in range(N):
        src = v0 + m * ld
        for pd in range((hd + NR - 1) // NR):
            dst = vp + (pd * N + m) * NR
            for c0 in range(0, NR, VEC):
                t = pd * NR + c0
                if t + VEC <= hd:
                    vstore(A, dst + c0, vload(A, src + t))
                elif t < hd:
                    vstore(A, dst + c0, vload_n(A, src + t, hd - t))
                else:
                    vstore(A, dst + c0, zero)


@job
def mha_job(pa, a_size, pw, w_size, pp, job, worker):
    """Job = (sequence s, head j): all N queries of that head."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    x_off, _n_seq, N, h, num_heads, o_off = p[2], p[3], p[4], p[5], p[6], p[7]
    hd = h // num_heads
    scale = np.float32(1.0 / math.sqrt(hd))
    s = job // num_heads
    j = job - s * num_heads
    ld = 3 * h                                        # floats between tokens in qkv
    q0 = x_off + s * N * ld + j * hd                  # qkv[s, 0, q of head j]
    k0 = q0 + h
    v0 = q0 + 2 * h
    n_pad = (N + NR - 1) // NR * NR
    d_panels = (hd + NR - 1) // NR
    kp = scratch(p, worker)                           # K panels: (n_pad/NR, hd, NR)
    vp = kp + n_pad * hd                              # V panels: (d_panels, N, NR)
    sc = vp + d_panels * N * NR                       # scores of QB queries: (QB, n_pad)
    zeros = sc + QB * n_pad                           # NR zeros: the products' "bias"
    zero_floats(A, zeros, NR)
    inv = zeros + NR                                  # 1 / sum per query of the block
    _pack_keys(A, kp, k0, ld, N, hd, scale)
    _pack_values(A, vp, v0, ld, N, hd)
    for qb in range(0, N, QB):
        nq = min(QB, N - qb)
        for i0 in range(0, nq, MR):                   # S = Q K^T, MR queries x NR keys
            for pk in range(n_pad // NR):
                gemm_tile_out(A, q0 + (qb + i0) * ld, ld, min(MR, nq - i0), A,
                              kp + pk * hd * NR, hd, zeros, min(NR, N - pk * NR), A,
                              sc + i0 * n_pad + pk * NR, n_pad, A, 0, 0, False)
        for q in range(nq):                           # each query's exp(s - max), in place
            A[inv + q] = _softmax_row(A, sc + q * n_pad, N)
        for i0 in range(0, nq, MR):                   # Y = E V, MR queries x NR dims
            out = o_off + (s * N + qb + i0) * h + j * hd
            for pd in range(d_panels):
                gemm_tile_out(A, sc + i0 * n_pad, n_pad, min(MR, nq - i0), A,
                              vp + pd * N * NR, N, zeros, min(NR, hd - pd * NR), A,
                              out + pd * NR, h, A, 0, 0, False)
        for q in range(nq):                           # Y /= sum of the row's exps
            _scale_row(A, o_off + (s * N + qb + q) * h + j * hd, hd, A[inv + q])


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
              scratch=n_pad * hd + -(-hd // NR) * N * NR + QB * n_pad + NR + QB)


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

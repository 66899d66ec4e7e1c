"""Kernels other than convolutions: norms, the two attentions, unfold/fold, pooling.

Each Numba kernel is compared with its NumPy reference on seeded random inputs of
many shapes; each reference is checked once against PyTorch (the formulas the
Hugging Face models use), so a wrong reference cannot hide a wrong kernel.
"""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from helpers import randn
from tinymvit.kernels.policy import KernelArgumentError

from tinymvit.kernels.attention_mha import multi_head_attention, multi_head_attention_reference
from tinymvit.kernels.layout import (copy_channels, copy_channels_reference,
                                    copy_checked_reference, copy_in)
from tinymvit.kernels.attention_separable import (separable_attention,
                                                  separable_attention_reference)
from tinymvit.kernels.norm import (group_norm1, group_norm1_reference, group_norm_parts,
                                   layer_norm, layer_norm_reference)
from tinymvit.kernels.patches import (fold_patches, fold_patches_reference, unfold_patches,
                                      unfold_patches_reference)
from tinymvit.kernels.pooling import global_avg_pool, global_avg_pool_reference

RTOL = 1e-5  # tolerance relative to the scale (max |value|) of the expected output


def assert_close(got, want, rtol=RTOL):
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.isfinite(got).all()
    scale = max(float(np.abs(want).max()), 1e-30) if want.size else 1.0
    err = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol:g} * {scale:.3g}"


# ----------------------------------------------------------------------------- norms

GN_CASES = [  # (shape, eps, input scale, input shift)
    ((1, 4, 16, 8), 1e-5, 1.0, 0.0),
    ((3, 4, 37, 5), 1e-5, 2.0, 3.0),     # rows not a multiple of the chunk size
    ((2, 9, 13, 1), 1e-3, 1.0, -1.0),    # C = 1
    ((2, 4, 300, 24), 0.1, 0.5, 0.0),    # eps large enough to matter
    ((1, 4, 1024, 128), 1e-5, 3.0, 20.0),  # realistic size, large mean vs std
    ((4, 6), 1e-5, 1.0, 0.0),            # 2-D (B, C): a single row per sample
    ((2, 3, 5, 7, 6), 1e-5, 1.0, 0.0),   # extra leading dims
    ((2, 1, 1, 3), 1e-5, 1.0, 0.0),      # a single position per sample
]


@pytest.mark.parametrize("shape,eps,scale,shift", GN_CASES)
def test_group_norm1_matches_reference(shape, eps, scale, shift):
    rng = np.random.default_rng(list(shape))
    x = randn(rng, shape, scale, shift)
    gamma = randn(rng, shape[-1:], 1.0, 1.0)
    beta = randn(rng, shape[-1:])
    want = group_norm1_reference(x, gamma, beta, eps)
    out = np.full_like(x, np.nan)
    assert group_norm1(x, gamma, beta, eps, out) is out
    assert_close(out, want)
    # in place
    y = x.copy()
    group_norm1(y, gamma, beta, eps, y)
    assert_close(y, want)


def test_group_norm1_rows_with_different_means():
    # row means drift, so the per-chunk means differ and the chunk merge must account for it
    rng = np.random.default_rng(11)
    x = randn(rng, (2, 3, 200, 16), 0.1) + np.linspace(-5, 5, 600, dtype=np.float32).reshape(
        1, 3, 200, 1)
    gamma, beta = randn(rng, (16,), 1.0, 1.0), randn(rng, (16,))
    out = np.empty_like(x)
    group_norm1(x, gamma, beta, 1e-5, out)
    assert_close(out, group_norm1_reference(x, gamma, beta, 1e-5))


@pytest.mark.parametrize("threads", [2, 3, 4, 7])
@pytest.mark.parametrize("shape,eps,scale,shift", GN_CASES + [
    ((1, 3, 67, 24), 1e-5, 0.5, -40.0),   # rows not a multiple of the parts, mean >> std
    ((3, 2, 5, 8), 1e-5, 1.0, 0.0),       # 3 samples, 10 rows: parts of 4 + 4 + 2 at 7 threads
])
def test_group_norm1_in_parts_matches_reference(shape, eps, scale, shift, threads):
    # fewer samples than threads: each sample's statistics are taken in parts by one op and
    # combined by the next (out of place and in place)
    rng = np.random.default_rng(list(shape) + [threads])
    x = randn(rng, shape, scale, shift)
    drift = np.linspace(-3, 3, x.size // shape[-1], dtype=np.float32)   # per-row means differ
    x += drift.reshape(shape[:-1] + (1,))
    gamma = randn(rng, shape[-1:], 1.0, 1.0)
    beta = randn(rng, shape[-1:])
    want = group_norm1_reference(x, gamma, beta, eps)
    out = np.full_like(x, np.nan)
    group_norm1(x, gamma, beta, eps, out, threads=threads)
    assert_close(out, want)
    y = x.copy()
    group_norm1(y, gamma, beta, eps, y, threads=threads)
    assert_close(y, want)


def test_group_norm_parts():
    # batch 1, 2 threads: two halves; no part is ever empty; a sample per thread: one part
    assert group_norm_parts((1, 4, 256, 128), 2) == (2, 512)
    assert group_norm_parts((1, 5, 8), 4) == (3, 2)         # 5 rows: 2 + 2 + 1, not 4 parts
    assert group_norm_parts((1, 1, 8), 4) == (1, 1)
    assert group_norm_parts((2, 9, 13, 4), 2) == (1, 117)
    assert group_norm_parts((3, 10, 8), 7) == (3, 4)


@pytest.mark.parametrize("threads", [0, -2, 2.5, True, "2"])
def test_standalone_kernels_refuse_bad_thread_counts(threads):
    from tinymvit.kernels.activations import ACT_RELU, activation
    from tinymvit.kernels.pointwise import pointwise_conv, prepare_pointwise_weight
    x = np.ones((1, 4, 8, 3), np.float32)
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    with pytest.raises(KernelArgumentError, match="threads must be a positive int"):
        group_norm1(x, g, b, 1e-5, np.empty_like(x), threads=threads)
    with pytest.raises(KernelArgumentError, match="threads must be a positive int"):
        activation(x.copy(), ACT_RELU, threads=threads)
    with pytest.raises(KernelArgumentError, match="threads must be a positive int"):
        pointwise_conv(x, prepare_pointwise_weight(np.ones((2, 3), np.float32)),
                       np.zeros(2, np.float32), ACT_RELU, np.empty((1, 4, 8, 2), np.float32),
                       threads=threads)
    group_norm1(x, g, b, 1e-5, np.empty_like(x), threads=np.int64(2))   # NumPy ints do


LN_CASES = [
    ((5, 7), 1e-5, 1.0, 0.0),
    ((3, 16, 144), 1e-5, 2.0, 5.0),
    ((4, 37, 240), 1e-3, 1.0, 0.0),
    ((2, 3, 4, 1), 1e-5, 1.0, 0.0),      # C = 1: output is exactly beta
    ((1, 9), 0.5, 0.1, 0.0),
]


@pytest.mark.parametrize("shape,eps,scale,shift", LN_CASES)
def test_layer_norm_matches_reference(shape, eps, scale, shift):
    rng = np.random.default_rng(list(shape))
    x = randn(rng, shape, scale, shift)
    gamma = randn(rng, shape[-1:], 1.0, 1.0)
    beta = randn(rng, shape[-1:])
    want = layer_norm_reference(x, gamma, beta, eps)
    out = np.full_like(x, np.nan)
    layer_norm(x, gamma, beta, eps, out)
    assert_close(out, want)
    y = x.copy()
    layer_norm(y, gamma, beta, eps, y)
    assert_close(y, want)
    if shape[-1] == 1:
        assert np.array_equal(out, np.broadcast_to(beta, shape))


def test_norms_reject_bad_input():
    x = np.zeros((2, 3, 4), np.float32)
    g = np.ones(4, np.float32)
    with pytest.raises(KernelArgumentError):
        group_norm1(x.astype(np.float64), g, g, 1e-5, x)
    with pytest.raises(KernelArgumentError):
        layer_norm(x, g, g, 1e-5, np.zeros((2, 3, 5), np.float32))
    with pytest.raises(KernelArgumentError):
        layer_norm(x[:, ::2], g, g, 1e-5, x[:, ::2])


# ----------------------------------------------------------------- separable attention

SEP_CASES = [  # (B, P, N, d, query scale)
    (1, 4, 256, 8, 1.0),
    (2, 4, 37, 5, 3.0),
    (3, 1, 1, 1, 1.0),       # a single patch: softmax = 1
    (1, 9, 16, 1, 1.0),
    (2, 4, 64, 33, 30.0),    # very peaked softmax
    (1, 4, 100, 144, 2.0),   # channel blocks of 64 and a shorter one; patch chunks of 32 + 4
    (2, 2, 33, 70, 1.0),     # channels past the last whole vector
]


@pytest.mark.parametrize("B,P,N,d,qscale", SEP_CASES)
def test_separable_attention_matches_reference(B, P, N, d, qscale):
    rng = np.random.default_rng(B * 1000 + N + d)
    qkv = randn(rng, (B, P, N, 1 + 2 * d))
    qkv[..., 0] *= qscale
    want = separable_attention_reference(qkv)
    out = np.full((B, P, N, d), np.nan, np.float32)
    assert separable_attention(qkv, out) is out
    assert_close(out, want)


def test_separable_attention_single_patch_is_relu_v_times_k():
    rng = np.random.default_rng(7)
    qkv = randn(rng, (2, 4, 1, 7))  # d = 3
    out = np.empty((2, 4, 1, 3), np.float32)
    separable_attention(qkv, out)
    assert_close(out, np.maximum(qkv[..., 4:], 0) * qkv[..., 1:4])


# ------------------------------------------------------------------------------ MHA

MHA_CASES = [  # (S, N, h, heads, scale)
    (4, 256, 48, 4, 1.0),
    (3, 17, 12, 2, 1.0),
    (2, 1, 8, 1, 1.0),       # a single token: output = v
    (1, 5, 15, 3, 1.0),      # odd head dim (5)
    (2, 130, 20, 4, 2.0),    # N not a multiple of the query block
    (4, 64, 36, 1, 4.0),     # one head, peaked softmax
    (1, 300, 64, 2, 10.0),   # very peaked: many exp() underflow
    (2, 16, 16, 4, 1.0),     # head dim 4
    (1, 40, 80, 4, 1.0),     # head dim 20, N = 40: narrow last panels (one vector or less)
    (1, 24, 96, 2, 3.0),     # head dim 48: 32 + 16 with the AVX-512 tiles
]


@pytest.mark.parametrize("S,N,h,heads,scale", MHA_CASES)
def test_multi_head_attention_matches_reference(S, N, h, heads, scale):
    rng = np.random.default_rng(S * 7919 + N * 31 + h)
    qkv = randn(rng, (S, N, 3 * h))
    qkv[..., :2 * h] *= np.float32(np.sqrt(scale))  # q and k: scores scaled by `scale`
    want = multi_head_attention_reference(qkv, heads)
    out = np.full((S, N, h), np.nan, np.float32)
    assert multi_head_attention(qkv, heads, out) is out
    assert_close(out, want)
    if N == 1:
        assert_close(out, qkv[..., 2 * h:])


def test_multi_head_attention_with_every_score_far_below_zero():
    """Scores all < -100: exp(s - max) is fine, while the masked lanes of a row's tail would
    be exp(0 - max) > exp(88) -- outside vexp_nonpositive's domain, and never used."""
    rng = np.random.default_rng(5)
    S, N, h, heads = 1, 13, 32, 2                    # 13 tokens: a partial vector per row
    qkv = randn(rng, (S, N, 3 * h))
    qkv[..., :h] = np.abs(qkv[..., :h]) + 5          # q > 0
    qkv[..., h:2 * h] = -np.abs(qkv[..., h:2 * h]) - 5   # k < 0: every q.k/4 < -100
    want = multi_head_attention_reference(qkv, heads)
    out = np.full((S, N, h), np.nan, np.float32)
    assert_close(multi_head_attention(qkv, heads, out), want)


@pytest.mark.parametrize("rows,cols", [(8, 8), (16, 16), (5, 3), (0, 7), (1, 1), (16, 4)])
def test_transpose_block_turns_rows_into_scaled_columns(rows, cols):
    """simd.transpose_block (MobileViT's key packing): rows past ``rows`` read as zeros,
    only ``cols`` output rows are written."""
    from numba import njit
    from tinymvit.kernels import lazy
    lazy.materialize()
    from tinymvit.kernels.simd import VEC, transpose_block
    rows, cols = min(rows, VEC), min(cols, VEC)

    @njit
    def run(dst, src, rows, cols):
        transpose_block(dst, 3, VEC + 5, src, 2, 11 + VEC, rows, cols, np.float32(0.5))

    rng = np.random.default_rng(rows * 17 + cols)
    src = randn(rng, (2 + VEC * (11 + VEC),))
    dst = np.full(3 + VEC * (VEC + 5), np.nan, np.float32)
    run(dst, src, rows, cols)
    block = src[2:2 + VEC * (11 + VEC)].reshape(VEC, 11 + VEC)[:, :cols].copy()   # (VEC, cols)
    block[rows:] = 0
    got = dst[3:3 + VEC * (VEC + 5)].reshape(VEC, VEC + 5)
    assert_array_equal(got[:cols, :VEC], 0.5 * block.T)
    assert np.isnan(got[cols:, :VEC]).all() and np.isnan(got[:, VEC:]).all()   # nothing else


def test_multi_head_attention_rejects_bad_heads():
    qkv = np.zeros((1, 4, 30), np.float32)
    with pytest.raises(KernelArgumentError):
        multi_head_attention(qkv, 3, np.zeros((1, 4, 10), np.float32))  # 3 does not divide h=10
    with pytest.raises(KernelArgumentError):
        multi_head_attention(qkv, 2, np.zeros((1, 4, 30), np.float32))  # out must be (S, N, h)


# --------------------------------------------------------------------- unfold / fold

PATCH_CASES = [  # (B, H, W, C, p)
    (2, 8, 8, 3, 2),
    (1, 9, 7, 5, 2),      # odd: last row and column dropped
    (2, 10, 11, 1, 3),    # C = 1, H mod 3 = 1, W mod 3 = 2
    (1, 4, 4, 2, 4),      # a single patch
    (3, 5, 6, 4, 1),      # p = 1: tokens are the pixels
    (1, 32, 32, 16, 2),
    (2, 3, 5, 2, 2),      # 1 x 2 patches
]


@pytest.mark.parametrize("B,H,W,C,p", PATCH_CASES)
def test_unfold_fold_match_reference(B, H, W, C, p):
    rng = np.random.default_rng(B + H * 13 + W * 17 + C + p)
    x = randn(rng, (B, H, W, C))
    nh, nw = H // p, W // p
    want = unfold_patches_reference(x, p, nh, nw)
    tok = np.full((B, p * p, nh * nw, C), np.nan, np.float32)
    assert unfold_patches(x, p, nh, nw, tok) is tok
    assert np.array_equal(tok, want)
    # the index formula, checked literally on a few entries
    for _ in range(20):
        b, a, bb, i, j, c = (rng.integers(n) for n in (B, p, p, nh, nw, C))
        assert tok[b, a * p + bb, i * nw + j, c] == x[b, i * p + a, j * p + bb, c]

    tok2 = randn(rng, tok.shape)
    fmap = np.full((B, H, W, C), np.nan, np.float32)  # stale garbage must be overwritten
    assert fold_patches(tok2, p, nh, nw, fmap) is fmap
    assert np.array_equal(fmap, fold_patches_reference(tok2, p, nh, nw, H, W))
    assert np.all(fmap[:, nh * p:] == 0.0) and np.all(fmap[:, :, nw * p:] == 0.0)
    # fold inverts unfold on the covered region
    fold_patches(tok, p, nh, nw, fmap)
    assert np.array_equal(fmap[:, :nh * p, :nw * p], x[:, :nh * p, :nw * p])


def test_unfold_fold_reject_bad_shapes():
    x = np.zeros((1, 5, 5, 2), np.float32)
    with pytest.raises(KernelArgumentError):
        unfold_patches(x, 2, 3, 2, np.zeros((1, 4, 6, 2), np.float32))  # 3*2 > 5
    with pytest.raises(KernelArgumentError):
        fold_patches(np.zeros((1, 4, 5, 2), np.float32), 2, 2, 2, x)    # N != nh*nw


# ---------------------------------------------------------------------------- pooling

@pytest.mark.parametrize("shape", [(2, 8, 8, 640), (1, 1, 1, 5), (3, 7, 9, 130), (1, 32, 32, 1)])
def test_global_avg_pool_matches_reference(shape):
    rng = np.random.default_rng(shape[3])
    x = randn(rng, shape, 2.0, 1.0)
    out = np.full((shape[0], shape[3]), np.nan, np.float32)
    assert global_avg_pool(x, out) is out
    assert_close(out, global_avg_pool_reference(x))


# ------------------------------------------------------- references against PyTorch

def test_references_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(1234)

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))

    # GroupNorm(1, C) on the NCHW-style patch tensor (B, C, P, N)
    x = randn(rng, (2, 4, 37, 6), 2.0, 1.0)  # (B, P, N, C)
    g, b = randn(rng, (6,), 1.0, 1.0), randn(rng, (6,))
    want = F.group_norm(t(x).permute(0, 3, 1, 2), 1, t(g), t(b), 1e-5).permute(0, 2, 3, 1)
    assert_close(group_norm1_reference(x, g, b, 1e-5), want.numpy(), 1e-6)

    # LayerNorm over the last axis
    x = randn(rng, (8, 16, 20))
    g, b = randn(rng, (20,), 1.0, 1.0), randn(rng, (20,))
    want = F.layer_norm(t(x), (20,), t(g), t(b), 1e-5)
    assert_close(layer_norm_reference(x, g, b, 1e-5), want.numpy(), 1e-6)

    # unfold / fold exactly as MobileViTV2Layer.unfolding / folding (incl. H, W not multiples of p)
    B, C, H, W, p = 2, 3, 9, 11, 2
    x = randn(rng, (B, H, W, C))
    nh, nw = H // p, W // p
    xt = t(x).permute(0, 3, 1, 2)                                          # NCHW
    hf = F.unfold(xt, kernel_size=(p, p), stride=(p, p)).reshape(B, C, p * p, -1)
    tok = unfold_patches_reference(x, p, nh, nw)
    assert np.array_equal(tok, hf.permute(0, 2, 3, 1).numpy().astype(np.float32))
    hf_map = F.fold(t(tok).permute(0, 3, 1, 2).reshape(B, C * p * p, nh * nw),
                    output_size=(H, W), kernel_size=(p, p), stride=(p, p))
    assert np.array_equal(fold_patches_reference(tok, p, nh, nw, H, W),
                          hf_map.permute(0, 2, 3, 1).numpy().astype(np.float32))

    # unfold / fold exactly as MobileViTLayer (v1) does with its reshapes (exact multiple)
    H, W = 8, 12
    nh, nw = H // p, W // p
    x = randn(rng, (B, H, W, C))
    f = t(x).permute(0, 3, 1, 2)
    v1 = f.reshape(B * C * nh, p, nw, p).transpose(1, 2).reshape(B, C, nh * nw, p * p)
    v1 = v1.transpose(1, 3).reshape(B * p * p, nh * nw, C)
    tok = unfold_patches_reference(x, p, nh, nw)
    assert np.array_equal(tok.reshape(B * p * p, nh * nw, C), v1.numpy().astype(np.float32))
    back = t(tok).reshape(B, p * p, nh * nw, C).transpose(1, 3)
    back = back.reshape(B * C * nh, nw, p, p).transpose(1, 2).reshape(B, C, nh * p, nw * p)
    assert np.array_equal(fold_patches_reference(tok, p, nh, nw, H, W),
                          back.permute(0, 2, 3, 1).numpy().astype(np.float32))

    # separable attention as MobileViTV2LinearSelfAttention.forward (NCHW-style (B, 1+2d, P, N))
    d = 5
    qkv = randn(rng, (2, 4, 19, 1 + 2 * d))
    q, k, v = torch.split(t(qkv).permute(0, 3, 1, 2), [1, d, d], dim=1)
    cv = (k * torch.softmax(q, dim=-1)).sum(dim=-1, keepdim=True)
    want = (F.relu(v) * cv.expand_as(v)).permute(0, 2, 3, 1)
    assert_close(separable_attention_reference(qkv), want.numpy(), 1e-6)

    # multi-head attention as MobileViTSelfAttention.forward, and torch's fused SDPA
    S, N, h, heads = 3, 23, 12, 4
    hd = h // heads
    qkv = randn(rng, (S, N, 3 * h), 2.0)
    ql, kl, vl = (t(qkv[..., i * h:(i + 1) * h]).view(S, N, heads, hd).transpose(1, 2)
                  for i in range(3))
    probs = torch.softmax(ql @ kl.transpose(-1, -2) / np.sqrt(hd), dim=-1)
    want = (probs @ vl).permute(0, 2, 1, 3).reshape(S, N, h)
    ref = multi_head_attention_reference(qkv, heads)
    assert_close(ref, want.numpy(), 1e-6)
    sdpa = F.scaled_dot_product_attention(ql, kl, vl).permute(0, 2, 1, 3).reshape(S, N, h)
    assert_close(ref, sdpa.numpy(), 1e-6)

    # global average pooling
    x = randn(rng, (2, 5, 7, 9))
    assert_close(global_avg_pool_reference(x), t(x).mean(dim=(1, 2)).numpy(), 1e-6)


@pytest.mark.parametrize("shape,c_out,c0", [((1, 5, 7, 3), 10, 2), ((2, 4, 4, 16), 16, 0),
                                            ((3, 1, 9, 8), 20, 12)])
def test_copy_channels_matches_reference(shape, c_out, c0):
    rng = np.random.default_rng(c_out)
    x = randn(rng, shape)
    out = randn(rng, shape[:3] + (c_out,))
    want = copy_channels_reference(x, out.copy(), c0)
    assert_array_equal(copy_channels(x, out, c0), want)
    v = randn(rng, (shape[0], shape[3]))                       # broadcast a vector per image
    want = copy_channels_reference(v, out.copy(), c0, broadcast=True)
    assert_array_equal(copy_channels(v, out, c0, broadcast=True), want)
    with pytest.raises(KernelArgumentError, match="cannot copy"):
        copy_channels(x, out, c_out - 1)


# ----------------------------------------------------------------------------- the executor

def _op_chain(rng):
    """A chain of ops, each reading the whole output of the one before and accumulating into
    its output in place (a job run twice would add twice), with 1 job, fewer jobs than
    workers and runs of unequal length.  Returns (A, W, ops, expected): ``expected(k)`` is
    [(offset, values)] of the outputs after running the ops k times (NumPy, float64)."""
    from tinymvit.kernels.pointwise import gemm_op, prepare_pointwise_weight
    from tinymvit.kernels.program import Arena
    A, W = Arena(), Arena()
    # (rows, output channels, the thread count the op's jobs were planned for)
    layers = [(3, 16, 1), (40, 24, 3), (700, 40, 2), (90, 70, 5), (13, 300, 4)]
    m0 = max(m for m, _, _ in layers)
    x = randn(rng, (m0, 8))
    a_off, cin, ops, steps = A.add(x), 8, [], []
    for m, n, planned in layers:
        w, b, y0 = randn(rng, (n, cin), scale=0.3), randn(rng, (n,)), randn(rng, (m0, n))
        wp = prepare_pointwise_weight(w)
        o_off = A.add(y0)
        ops.append(gemm_op(a_off, m, cin, W.add(wp.panels), W.add(b), n, 0, o_off, o_off,
                           planned))                        # y[:m] += x[:m] @ w.T + b
        steps.append((m, w.T.astype(np.float64), b, o_off, y0.astype(np.float64)))
        a_off, cin = o_off, n
    jobs = {op.n_jobs for op in ops}
    assert 1 in jobs and len(jobs) >= 3, jobs

    def expected(k):
        ys = [y0.copy() for *_, y0 in steps]
        for _ in range(k):
            a = x.astype(np.float64)
            for (m, wt, b, _, _), y in zip(steps, ys):
                y[:m] += a[:m] @ wt + b                     # (m0, n)
                a = y
        return [(o_off, y) for (*_, o_off, _), y in zip(steps, ys)]
    return A, W, ops, expected


def _check_outputs(arena, outputs):
    for o_off, want in outputs:
        assert_close(arena[o_off:o_off + want.size].reshape(want.shape), want)


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_program_runs_every_job_once_and_each_op_after_the_one_before(threads):
    """The executor's per-worker runs of jobs, the help from the other workers and the wait
    between ops give the NumPy result on any number of threads (see :func:`_op_chain`)."""
    from tinymvit.kernels.program import run_ops
    A, W, ops, expected = _op_chain(np.random.default_rng(threads))
    _check_outputs(run_ops(ops, A.build(), W.build(), threads), expected(1))


def test_pool_threads_join_back_to_back_calls_from_their_doorbells():
    """After its part of a call a pool thread waits a little on its doorbell, and the next
    call rings it there instead of waking it through its queue: back-to-back calls are
    joined that way (by the threads the process has cores for).  Back-to-back calls, calls
    after a pause (the threads gone back to their queues), with more or fewer threads, or
    from a second Python thread while the pool is busy: each job runs exactly once."""
    import threading
    import time

    from tinymvit.kernels.program import bind_ops, run_ops
    from tinymvit.kernels.workers import ANSWERED, ASLEEP, POOL, WAITING
    A, W, ops, expected = _op_chain(np.random.default_rng(7))
    a0, w0 = A.build(), W.build()
    runs = {t: bind_ops(ops, a0.copy(), w0, t) for t in (1, 2, 3)}
    done = dict.fromkeys(runs, 0)

    def call(threads, pause):
        runs[threads][1]()
        done[threads] += 1
        time.sleep(pause)

    call(3, 0)                                  # the pool has two threads now
    first = POOL._threads[0]
    answered = int(first.door[ANSWERED])
    for _ in range(300 if first._wait else 0):  # 2+ cores (threads beyond them do not wait)
        t_end = time.perf_counter() + 0.05      # (a busy machine may take many tries)
        while first.door[0] != WAITING and time.perf_counter() < t_end:
            pass                                # until it waits on its doorbell
        call(2, 0)                              # rings it
        if int(first.door[ANSWERED]) > answered:
            break
    else:
        assert not first._wait, "the pool thread never answered its doorbell"
    for threads, pause in [(2, 0)] * 20 + [(3, 0)] * 20 + [(2, 0.01), (3, 0.01), (1, 0)] * 5:
        call(threads, pause)                    # 10 ms: the threads go back to their queues
    for t, (arena, _) in runs.items():
        _check_outputs(arena, expected(done[t]))
    t_end = time.perf_counter() + 2
    while any(w.door[0] != ASLEEP for w in POOL._threads) and time.perf_counter() < t_end:
        time.sleep(0.01)
    assert all(w.door[0] == ASLEEP for w in POOL._threads)     # no thread spins on
    arena, run = bind_ops(ops, a0.copy(), w0, 2)
    errors = []

    def elsewhere():                            # each call on its own arena
        try:
            for _ in range(10):
                _check_outputs(run_ops(ops, a0.copy(), w0, 2), expected(1))
        except AssertionError as exc:          # pragma: no cover - reported below
            errors.append(exc)
    other = threading.Thread(target=elsewhere)
    other.start()
    for _ in range(10):
        run()
    other.join()
    assert not errors
    _check_outputs(arena, expected(10))


@pytest.mark.parametrize("n", [1, 7, 8, 15, 16, 17, 100, 3 * 224 * 224])
def test_copy_in_copies_and_finds_nan_and_infinities(n):
    """A call's input is copied into the arena and checked in one pass: equal to NumPy's
    copy and ``np.isfinite(x).all()``, wherever the NaN or infinity is (first value, a
    whole vector, the tail shorter than a vector, the last value)."""
    rng = np.random.default_rng(n)
    x = randn(rng, (n,), scale=1e3)
    x[0] = 3.4e38                                       # extreme but finite
    for bad_at in [None, 0, n // 2, n - 1]:
        for bad in (np.nan, np.inf, -np.inf):
            src = x.copy()
            if bad_at is not None:
                src[bad_at] = bad
            got, want = np.full(n, 7.0, np.float32), np.empty(n, np.float32)
            assert copy_in(got, src) == copy_checked_reference(want, src) == (bad_at is None)
            assert_array_equal(got, want)
            if bad_at is None:
                break

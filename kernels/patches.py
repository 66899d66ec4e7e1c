"""Unfold a feature map into patch-major tokens, and fold them back (MobileViT v1/v2).

The map is cut into non-overlapping p x p patches; patch (i, j) covers rows
``i*p .. i*p+p-1`` and columns ``j*p .. j*p+p-1``.  Tokens are grouped by the
pixel position inside the patch (a, bb), the layout Hugging Face uses (channels
last here)::

    tokens[b, a*p + bb, i*nw + j, c] = x[b, i*p + a, j*p + bb, c]
    tokens shape (B, P = p*p, N = nh*nw, C)

so that attention runs along N: between the pixels that sit at the same place
in every patch.  (v1 views the same memory as (B*P, N, C) sequences.)

``nh, nw`` are given by the caller: MobileViTV2 uses floor(H/p), floor(W/p) and
simply drops the last ``H mod p`` rows / ``W mod p`` columns, which fold back as
exact zeros; MobileViT v1 first resizes the map to a multiple of p.
"""
import numpy as np
from numba import njit, prange


@njit(parallel=True, fastmath=True, cache=True)
def _unfold_kernel(x, p, nh, nw, out):
    # x: (B, H, W, C);  out: (B, p*p, nh*nw, C)
    B = x.shape[0]
    C = x.shape[3]
    for bi in prange(B * nh):
        b = bi // nh
        i = bi % nh
        for a in range(p):
            for j in range(nw):
                for bb in range(p):
                    src = x[b, i * p + a, j * p + bb]         # (C,)
                    dst = out[b, a * p + bb, i * nw + j]      # (C,)
                    for c in range(C):
                        dst[c] = src[c]


@njit(parallel=True, fastmath=True, cache=True)
def _fold_kernel(tokens, p, nh, nw, out):
    # tokens: (B, p*p, nh*nw, C);  out: (B, H, W, C)
    B, H, W, C = out.shape
    for by in prange(B * H):
        b = by // H
        y = by % H
        i = y // p
        a = y % p
        for xc in range(W):
            dst = out[b, y, xc]                               # (C,)
            if i < nh and xc < nw * p:
                j = xc // p
                bb = xc % p
                src = tokens[b, a * p + bb, i * nw + j]       # (C,)
                for c in range(C):
                    dst[c] = src[c]
            else:  # not covered by any patch
                for c in range(C):
                    dst[c] = 0.0


def _check(a, name):
    assert a.dtype == np.float32, f"{name} must be float32, got {a.dtype}"
    assert a.flags.c_contiguous, f"{name} must be C-contiguous"
    assert a.ndim == 4, f"{name} must be 4-D, got shape {a.shape}"


def unfold_patches(x, p, nh, nw, out):
    """Feature map -> patch-major tokens.

    x:   (B, H, W, C) float32 C-contiguous, with nh*p <= H and nw*p <= W
         (rows/columns beyond nh*p, nw*p are not read).
    p:   patch size;  nh, nw: number of patches down / across.
    out: (B, p*p, nh*nw, C) float32 C-contiguous, written:
         out[b, a*p + bb, i*nw + j, c] = x[b, i*p + a, j*p + bb, c].
    Returns ``out``.
    """
    _check(x, "x")
    _check(out, "out")
    B, H, W, C = x.shape
    p, nh, nw = int(p), int(nh), int(nw)
    assert p >= 1 and nh * p <= H and nw * p <= W, f"{nh}x{nw} patches of {p} do not fit {H}x{W}"
    assert out.shape == (B, p * p, nh * nw, C), f"out shape {out.shape} != {(B, p * p, nh * nw, C)}"
    if out.size:
        _unfold_kernel(x, p, nh, nw, out)
    return out


def fold_patches(tokens, p, nh, nw, out):
    """Patch-major tokens -> feature map (inverse of :func:`unfold_patches`).

    tokens: (B, p*p, nh*nw, C) float32 C-contiguous.
    out:    (B, H, W, C) float32 C-contiguous with nh*p <= H, nw*p <= W, written:
            out[b, i*p + a, j*p + bb, c] = tokens[b, a*p + bb, i*nw + j, c]; the last
            H - nh*p rows and W - nw*p columns (no patch covers them) are set to 0.
    Returns ``out``.
    """
    _check(tokens, "tokens")
    _check(out, "out")
    B, H, W, C = out.shape
    p, nh, nw = int(p), int(nh), int(nw)
    assert p >= 1 and nh * p <= H and nw * p <= W, f"{nh}x{nw} patches of {p} do not fit {H}x{W}"
    assert tokens.shape == (B, p * p, nh * nw, C), \
        f"tokens shape {tokens.shape} != {(B, p * p, nh * nw, C)}"
    if out.size:
        _fold_kernel(tokens, p, nh, nw, out)
    return out


def unfold_patches_reference(x, p, nh, nw):
    """NumPy unfold: x (B, H, W, C) -> new tokens (B, p*p, nh*nw, C)."""
    B, H, W, C = x.shape
    crop = np.asarray(x, np.float32)[:, :nh * p, :nw * p, :]      # (B, nh*p, nw*p, C)
    t = crop.reshape(B, nh, p, nw, p, C)                          # (B, i, a, j, bb, C)
    t = t.transpose(0, 2, 4, 1, 3, 5)                             # (B, a, bb, i, j, C)
    return np.ascontiguousarray(t.reshape(B, p * p, nh * nw, C))  # (B, P, N, C)


def fold_patches_reference(tokens, p, nh, nw, H, W):
    """NumPy fold: tokens (B, p*p, nh*nw, C) -> new map (B, H, W, C), zeros where uncovered."""
    B, P, N, C = tokens.shape
    t = np.asarray(tokens, np.float32).reshape(B, p, p, nh, nw, C)  # (B, a, bb, i, j, C)
    t = t.transpose(0, 3, 1, 4, 2, 5).reshape(B, nh * p, nw * p, C)  # (B, i*p+a, j*p+bb, C)
    out = np.zeros((B, H, W, C), np.float32)                         # (B, H, W, C)
    out[:, :nh * p, :nw * p, :] = t
    return out

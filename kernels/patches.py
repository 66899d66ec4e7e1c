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

from .policy import arenas, check, check_array, helper, job
from .simd import copy_floats, zero_floats


# ---------------------------------------------------------------- the reference (NumPy)
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


# ---------------------------------------------------------------- the kernel
# fields of an "unfold" op row (after [code, jobs]): map x (B, H, W, C) at x_off, tokens
# (B, p*p, nh*nw, C) at o_off; one job per (b, patch row i).  A "fold" op has the same
# fields the other way round: tokens at x_off, map (B, H, W, C) at o_off; one job per map row.
PATCH_FIELDS = ("x_off", "B", "H", "W", "C", "p", "nh", "nw", "o_off")


@helper(inline=True)
def _fields(prm):
    """x_off, H, W, C, p, nh, nw, o_off of a patch op row (B is in the job index)."""
    return prm[2], prm[4], prm[5], prm[6], prm[7], prm[8], prm[9], prm[10]


@job
def unfold_job(pa, a_size, pw, w_size, pp, job, worker):
    """tokens[b, a*p + bb, i*nw + j, :] = x[b, i*p + a, j*p + bb, :] for patch row i."""
    A, W, prm = arenas(pa, a_size, pw, w_size, pp)
    x_off, H, Wd, C, p, nh, nw, o_off = _fields(prm)
    b = job // nh
    i = job - b * nh
    for a in range(p):
        for j in range(nw):
            for bb in range(p):
                src = x_off + ((b * H + i * p + a) * Wd + j * p + bb) * C
                dst = o_off + ((b * p * p + a * p + bb) * nh * nw + i * nw + j) * C
                copy_floats(A, dst, A, src, C)


@job
def fold_job(pa, a_size, pw, w_size, pp, job, worker):
    """Map row y of image b from the tokens; rows/columns no patch covers become 0."""
    A, W, prm = arenas(pa, a_size, pw, w_size, pp)
    x_off, H, Wd, C, p, nh, nw, o_off = _fields(prm)
    b = job // H
    y = job - b * H
    i = y // p
    a = y - i * p
    for xc in range(Wd):
        dst = o_off + ((b * H + y) * Wd + xc) * C
        if i < nh and xc < nw * p:
            j = xc // p
            bb = xc - j * p
            src = x_off + ((b * p * p + a * p + bb) * nh * nw + i * nw + j) * C
            copy_floats(A, dst, A, src, C)
        else:
            zero_floats(A, dst, C)


def patch_op(kind, x_off, map_shape, p, nh, nw, o_off):
    """The "unfold" or "fold" op between a map (B, H, W, C) and nh x nw patches of p x p."""
    check(len(map_shape) == 4, f"a map must be (B, H, W, C), got {map_shape}")
    B, H, Wd, C = map_shape
    check(p >= 1 and nh >= 0 and nw >= 0 and nh * p <= H and nw * p <= Wd,
          f"{nh}x{nw} patches of {p} do not fit {H}x{Wd}")
    from .program import Op
    jobs = B * nh if kind == "unfold" else B * H
    return Op(kind, jobs, (x_off, B, H, Wd, C, p, nh, nw, o_off))


def _run(kind, src, p, nh, nw, out, map_shape):
    from .program import Arena, run_ops

    A = Arena()
    xo, oo = A.add(src), A.add(size=out.size)
    arena = run_ops([patch_op(kind, xo, map_shape, p, nh, nw, oo)], A.build(), Arena().build())
    out[...] = arena[oo:oo + out.size].reshape(out.shape)
    return out


def unfold_patches(x, p, nh, nw, out):
    """Feature map -> patch-major tokens.

    x:   (B, H, W, C) float32 C-contiguous, with nh*p <= H and nw*p <= W
         (rows/columns beyond nh*p, nw*p are not read).
    p:   patch size;  nh, nw: number of patches down / across.
    out: (B, p*p, nh*nw, C) float32 C-contiguous, written:
         out[b, a*p + bb, i*nw + j, c] = x[b, i*p + a, j*p + bb, c].
    Returns ``out``.
    """
    check_array(x, "x", 4)
    check_array(out, "out", 4)
    B, H, W, C = x.shape
    p, nh, nw = int(p), int(nh), int(nw)
    check(out.shape == (B, p * p, nh * nw, C), f"out shape {out.shape} != {(B, p * p, nh * nw, C)}")
    if out.size == 0:
        return out
    return _run("unfold", x, p, nh, nw, out, x.shape)


def fold_patches(tokens, p, nh, nw, out):
    """Patch-major tokens -> feature map (inverse of :func:`unfold_patches`).

    tokens: (B, p*p, nh*nw, C) float32 C-contiguous.
    out:    (B, H, W, C) float32 C-contiguous with nh*p <= H, nw*p <= W, written:
            out[b, i*p + a, j*p + bb, c] = tokens[b, a*p + bb, i*nw + j, c]; the last
            H - nh*p rows and W - nw*p columns (no patch covers them) are set to 0.
    Returns ``out``.
    """
    check_array(tokens, "tokens", 4)
    check_array(out, "out", 4)
    B, H, W, C = out.shape
    p, nh, nw = int(p), int(nh), int(nw)
    check(tokens.shape == (B, p * p, nh * nw, C),
          f"tokens shape {tokens.shape} != {(B, p * p, nh * nw, C)}")
    if out.size == 0:
        return out
    return _run("fold", tokens, p, nh, nw, out, out.shape)

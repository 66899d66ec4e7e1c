"""Global average pooling, channels last.

``out[b, c] = mean over (h, w) of x[b, h, w, c]`` — the classifier input of all
three families and the image-pooling branch of the DeepLabV3 heads.  The sums are
accumulated in float64.
"""
import numpy as np
from numba import njit, prange

_CHANNEL_BLOCK = 64  # channels summed by one parallel task


@njit(parallel=True, fastmath=True, cache=True)
def _global_avg_pool_kernel(x, out):
    # x: (B, HW, C);  out: (B, C)
    B, HW, C = x.shape
    n_cblocks = (C + _CHANNEL_BLOCK - 1) // _CHANNEL_BLOCK
    inv = 1.0 / HW
    for task in prange(B * n_cblocks):
        b = task // n_cblocks
        c0 = (task % n_cblocks) * _CHANNEL_BLOCK
        c1 = min(C, c0 + _CHANNEL_BLOCK)
        acc = np.zeros(c1 - c0, np.float64)  # (channels in block,)
        for k in range(HW):
            for c in range(c0, c1):
                acc[c - c0] += x[b, k, c]
        for c in range(c0, c1):
            out[b, c] = np.float32(acc[c - c0] * inv)


def global_avg_pool(x, out):
    """Mean over the spatial axes.

    x:   (B, H, W, C) float32 C-contiguous, H*W >= 1.
    out: (B, C) float32 C-contiguous, written.   Returns ``out``.
    """
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.ndim == 4, \
        "x must be a C-contiguous float32 (B, H, W, C) array"
    assert out.dtype == np.float32 and out.flags.c_contiguous, "out must be C-contiguous float32"
    B, H, W, C = x.shape
    assert out.shape == (B, C), f"out shape {out.shape} != {(B, C)}"
    assert H * W >= 1, "cannot pool an empty map"
    if out.size:
        _global_avg_pool_kernel(x.reshape(B, H * W, C), out)  # view (B, HW, C)
    return out


def global_avg_pool_reference(x):
    """NumPy global average pool: x (B, H, W, C) -> new (B, C) float32."""
    return np.asarray(x, np.float64).mean(axis=(1, 2)).astype(np.float32)  # (B, C)

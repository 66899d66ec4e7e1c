"""Batch normalisation in inference mode, and folding it into the preceding conv.

With the running statistics frozen, BatchNorm is a per-channel affine map:

    BN(y)[c] = (y[c] - mean[c]) / sqrt(var[c] + eps) * gamma[c] + beta[c]
             = scale[c] * y[c] + (beta[c] - scale[c] * mean[c]),
    scale[c] = gamma[c] / sqrt(var[c] + eps).

When ``y = conv(x, w) + b`` the map can be moved into the convolution, because
the conv is linear in its weights and output channel c only uses ``w[c]``:

    BN(conv(x, w) + b) = conv(x, w * scale[:, None, None, None]) + scale * (b - mean) + beta.

So every conv+BN pair of these models becomes one conv with ``w'``, ``b'``
computed once at load time (in float64, then rounded to float32).
The tests show with :func:`batchnorm_reference` that the folding is exact.
"""
import numpy as np


# ---------------------------------------------------------------- the reference (NumPy)
def batchnorm_reference(x, gamma, beta, mean, var, eps):
    """Plain NumPy BatchNorm (float64 maths, textbook formula) on x (..., C); returns float32."""
    x64 = np.asarray(x, np.float64)
    y = (x64 - np.asarray(mean, np.float64)) / np.sqrt(np.asarray(var, np.float64) + eps)
    return (y * np.asarray(gamma, np.float64) + np.asarray(beta, np.float64)).astype(np.float32)


# ---------------------------------------------------------------- the kernel
def _scale_shift(gamma, beta, mean, var, eps):
    """float64 per-channel (scale, shift) with BN(y) = scale * y + shift."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)   # (C,)
    shift = np.asarray(beta, np.float64) - scale * np.asarray(mean, np.float64)          # (C,)
    return scale, shift


def fold_batchnorm(w, b, gamma, beta, mean, var, eps):
    """Fold an inference-mode BatchNorm into the conv before it.

    w: conv weight in torch layout (Cout, ...); b: conv bias (Cout,) or None;
    gamma, beta, mean, var: BN parameters (Cout,); eps: BN epsilon.
    Returns float32 ``(w', b')`` with conv(x, w') + b' == BN(conv(x, w) + b).
    """
    w64 = np.asarray(w, np.float64)
    cout = w64.shape[0]
    b64 = np.zeros(cout) if b is None else np.asarray(b, np.float64)
    scale, shift = _scale_shift(gamma, beta, mean, var, eps)
    assert scale.shape == (cout,), f"BN has {scale.shape[0]} channels, conv has {cout}"
    w_f = w64 * scale.reshape((cout,) + (1,) * (w64.ndim - 1))    # (Cout, ...)
    b_f = scale * b64 + shift                                      # (Cout,)
    return w_f.astype(np.float32), b_f.astype(np.float32)

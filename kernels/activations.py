"""Activations: ReLU, ReLU6, SiLU (a.k.a. swish), and the identity.

Activations are almost always fused into the kernel that produces the tensor:
those kernels take an ``act`` code and call :func:`apply_act` per element.
:func:`activation` is the standalone in-place form.
"""
import math

import numpy as np
from numba import njit, prange

ACT_NONE = 0
ACT_RELU = 1
ACT_RELU6 = 2
ACT_SILU = 3

_BY_NAME = {None: ACT_NONE, "none": ACT_NONE, "identity": ACT_NONE, "linear": ACT_NONE,
            "relu": ACT_RELU, "relu6": ACT_RELU6, "silu": ACT_SILU, "swish": ACT_SILU}


def act_code(name):
    """Map a transformers ``hidden_act`` string to a kernel activation code."""
    key = name.lower() if isinstance(name, str) else name
    if key not in _BY_NAME:
        raise ValueError(f"unsupported activation {name!r}; expected one of "
                         f"'relu', 'relu6', 'silu'/'swish' or None")
    return _BY_NAME[key]


@njit(inline="always", fastmath=True, cache=True)
def apply_act(v, act):
    """Apply activation ``act`` to the float32 scalar ``v``."""
    if act == ACT_RELU:
        return max(v, np.float32(0.0))
    if act == ACT_RELU6:
        return min(max(v, np.float32(0.0)), np.float32(6.0))
    if act == ACT_SILU:
        return v / (np.float32(1.0) + np.float32(math.exp(-v)))
    return v


@njit(parallel=True, fastmath=True, cache=True)
def _activation_rows(x2d, act):
    for i in prange(x2d.shape[0]):
        row = x2d[i]
        for j in range(row.shape[0]):
            row[j] = apply_act(row[j], act)


def activation(x, act):
    """Apply ``act`` to the C-contiguous float32 array ``x`` in place; returns ``x``."""
    assert x.dtype == np.float32 and x.flags.c_contiguous
    if act != ACT_NONE and x.size:
        _activation_rows(x.reshape(-1, x.shape[-1]), act)
    return x


def activation_reference(x, act):
    """Plain NumPy activation (float32 in, float32 out)."""
    x = np.asarray(x, dtype=np.float32)
    if act == ACT_RELU:
        return np.maximum(x, 0)
    if act == ACT_RELU6:
        return np.clip(x, 0, 6)
    if act == ACT_SILU:
        return (x / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    return x.copy()

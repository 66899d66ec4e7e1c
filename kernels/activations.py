"""Activations: ReLU, ReLU6, SiLU (a.k.a. swish), and the identity; plus a vectorisable exp.

Activations are almost always fused into the kernel that produces the tensor:
those kernels take an ``act`` code and call :func:`apply_act` per element.
:func:`activation` is the standalone in-place form.

SiLU needs ``exp``.  ``math.exp`` compiles to a scalar libm call that LLVM cannot
vectorise (no SVML here), which made SiLU a third of MobileViTV2's run time, so
:func:`exp_f32` computes it inline: x = n*ln2 + r with |r| <= ln2/2 (Cody-Waite
reduction), exp(r) by a degree-6 polynomial (Cephes' expf coefficients), and 2**n
assembled directly as float32 exponent bits.  Max relative error ~1.2e-7 (float32
rounding level); the softmax kernels use it too.  Kernels calling it must be
compiled with ``error_model="numpy"`` so the division in SiLU does not block
vectorisation.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

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


@intrinsic
def _pow2_f32(typingctx, n):
    """2**n for an integral float32 n in [-126, 127], built from its exponent bits."""
    if n != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        e = builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(e, ir.Constant(i32, 23)), ir.FloatType())
    return types.float32(types.float32), codegen


@njit(inline="always", fastmath=True, error_model="numpy", cache=True)
def exp_f32(x):
    """exp(x) for float32 x, inlinable and vectorisable (clamped to the float32 range)."""
    x = min(max(x, np.float32(-87.3)), np.float32(88.0))
    n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))      # round(x / ln2)
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)  # x - n*ln2, 2 parts
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    return (p * r * r + r + np.float32(1.0)) * _pow2_f32(n)


@njit(inline="always", fastmath=True, error_model="numpy", cache=True)
def apply_act(v, act):
    """Apply activation ``act`` to the float32 scalar ``v``."""
    if act == ACT_RELU:
        return max(v, np.float32(0.0))
    if act == ACT_RELU6:
        return min(max(v, np.float32(0.0)), np.float32(6.0))
    if act == ACT_SILU:
        return v / (np.float32(1.0) + exp_f32(-v))
    return v


@njit(parallel=True, fastmath=True, error_model="numpy", cache=True)
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

"""Activations: ReLU, ReLU6, SiLU (a.k.a. swish), and the identity; the rarer ones of
transformers' ACT2FN; and a vectorised exp.

ReLU, ReLU6 and SiLU are applied in registers by the kernel that produces a tensor
(the GEMM and depthwise tiles of ``simd.py`` take an ``act`` code); the rarer ones
run as a separate pass (:func:`activation_job`, float64 per element, never on a hot
path).  :func:`activation` is the standalone in-place form.

SiLU is x * sigmoid(x) = x / (1 + exp(-x)).  ``math.exp`` compiles to a scalar libm
call, so ``simd.vexp`` computes exp a vector at a time: x = n*ln2 + r with |r| <=
ln2/2 (Cody-Waite reduction: ln2 in two parts), exp(r) by a degree-6 polynomial in
Horner form, and 2**n assembled directly as float32 exponent bits; max error ~1 ulp
(float32 rounding level); then one division.  The register tiles' epilogues and the
softmax kernels use the same code (``simd._exp``, ``simd._silu``).
"""
import math

import numpy as np

from .policy import arenas, check, check_array, helper, job
from .simd import VEC, vload, vload_n, vmax, vmin, vsilu, vsplat, vstore, vstore_n


# ---------------------------------------------------------------- the reference (NumPy)
def activation_reference(x, act):
    """Plain NumPy activation (float32 in, float32 out)."""
    x = np.asarray(x, dtype=np.float32)
    if act == ACT_RELU:
        return np.maximum(x, 0)
    if act == ACT_RELU6:
        return np.clip(x, 0, 6)
    d = x.astype(np.float64)
    if act == ACT_SILU:
        return (d / (1 + np.exp(-d))).astype(np.float32)
    rare = {
        ACT_GELU: lambda: 0.5 * d * (1 + np.vectorize(math.erf)(d / math.sqrt(2))),
        ACT_GELU_TANH: lambda: 0.5 * d * (1 + np.tanh(math.sqrt(2 / math.pi)
                                                      * (d + 0.044715 * d ** 3))),
        ACT_QUICK_GELU: lambda: d / (1 + np.exp(-1.702 * d)),
        ACT_SIGMOID: lambda: 1 / (1 + np.exp(-d)),
        ACT_TANH: lambda: np.tanh(d),
        ACT_HARDSWISH: lambda: d * np.clip(d + 3, 0, 6) / 6,
        ACT_MISH: lambda: d * np.tanh(np.logaddexp(0, d)),
        ACT_LEAKY_RELU: lambda: np.where(d >= 0, d, 0.01 * d),
        ACT_RELU2: lambda: np.maximum(d, 0) ** 2,
    }
    return rare[act]().astype(np.float32) if act in rare else x.copy()


# ---------------------------------------------------------------- the kernel
ACT_NONE = 0
ACT_RELU = 1
ACT_RELU6 = 2
ACT_SILU = 3
# Rarer ``hidden_act`` values transformers accepts (none is used by a published checkpoint of
# these families; they are computed in float64 through libm, correct rather than fast).
ACT_GELU = 4          # x * Phi(x), exact (erf)
ACT_GELU_TANH = 5     # tanh approximation ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
ACT_QUICK_GELU = 6    # x * sigmoid(1.702 x)
ACT_SIGMOID = 7
ACT_TANH = 8
ACT_HARDSWISH = 9     # x * relu6(x + 3) / 6
ACT_MISH = 10         # x * tanh(softplus(x))
ACT_LEAKY_RELU = 11   # slope 0.01 (nn.LeakyReLU's default)
ACT_RELU2 = 12        # relu(x)**2

_BY_NAME = {None: ACT_NONE, "none": ACT_NONE, "identity": ACT_NONE, "linear": ACT_NONE,
            "relu": ACT_RELU, "relu6": ACT_RELU6, "silu": ACT_SILU, "swish": ACT_SILU,
            "gelu": ACT_GELU, "gelu_python": ACT_GELU, "gelu_new": ACT_GELU_TANH,
            "gelu_pytorch_tanh": ACT_GELU_TANH, "gelu_python_tanh": ACT_GELU_TANH,
            "gelu_fast": ACT_GELU_TANH, "quick_gelu": ACT_QUICK_GELU, "sigmoid": ACT_SIGMOID,
            "tanh": ACT_TANH, "hardswish": ACT_HARDSWISH, "mish": ACT_MISH,
            "leaky_relu": ACT_LEAKY_RELU, "relu2": ACT_RELU2}
SUPPORTED = tuple(sorted(k for k in _BY_NAME if k is not None))
_CODES = set(_BY_NAME.values())


def act_code(name):
    """Map a transformers ``hidden_act`` string to a kernel activation code."""
    key = name.lower() if isinstance(name, str) else name
    if key not in _BY_NAME:
        raise ValueError(f"unsupported activation {name!r}; expected one of {', '.join(SUPPORTED)}")
    return _BY_NAME[key]


MAX_FUSED = ACT_SILU  # codes 0..MAX_FUSED are applied in registers by producing kernels


@helper
def activate(x, off, count, act):
    """x.flat[off : off + count] = act(itself) (ReLU, ReLU6 or SiLU), VEC lanes at a time."""
    end = off + count
    i = off
    while i + VEC <= end:
        vstore(x, i, vact(vload(x, i), act))
        i += VEC
    if i < end:
        vstore_n(x, i, vact(vload_n(x, i, end - i), act), end - i)


@helper
def vact(v, act):
    """Activation ``act`` (ReLU, ReLU6, SiLU or none) of every lane; NaN stays NaN."""
    if act == ACT_RELU:
        return vmax(v, vsplat(0.0))
    if act == ACT_RELU6:
        return vmin(vmax(v, vsplat(0.0)), vsplat(6.0))
    if act == ACT_SILU:
        return vsilu(v)
    return v


@helper
def _rare_act(v, act):
    """The uncommon activations, in float64 (never on a hot path of a published model)."""
    if act == ACT_GELU:
        return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))
    if act == ACT_GELU_TANH:
        return 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))
    if act == ACT_QUICK_GELU:
        return v / (1.0 + math.exp(-1.702 * v))
    if act == ACT_SIGMOID:
        return 1.0 / (1.0 + math.exp(-v))
    if act == ACT_TANH:
        return math.tanh(v)
    if act == ACT_HARDSWISH:
        return v * min(max(v + 3.0, 0.0), 6.0) / 6.0
    if act == ACT_MISH:
        return v * math.tanh(math.log1p(math.exp(v)) if v < 20.0 else v)
    if act == ACT_LEAKY_RELU:
        return v if v >= 0.0 else 0.01 * v
    if act == ACT_RELU2:
        return max(v, 0.0) ** 2
    return v


# fields of an "activation" op row (after [code, jobs]): count floats at A[x_off], in place
ACTIVATION_FIELDS = ("x_off", "count", "act", "per_job")


@job
def activation_job(pa, a_size, pw, w_size, pp, j, worker):
    """Floats j*per_job ... of the op's range: x = act(x), in place."""
    A, W, p = arenas(pa, a_size, pw, w_size, pp)
    x_off, count, act, per = p[2], p[3], p[4], p[5]
    lo = x_off + j * per
    hi = x_off + min(count, j * per + per)
    if act <= MAX_FUSED:
        activate(A, lo, hi - lo, act)
    else:
        for i in range(lo, hi):
            A[i] = np.float32(_rare_act(np.float64(A[i]), act))


def activation_op(x_off, count, act, threads=1):
    """The op applying activation ``act`` to ``count`` floats at A[x_off], in place."""
    per = max(4096, -(-count // (4 * threads)))
    from .program import Op
    return Op("activation", -(-count // per), (x_off, count, act, per))


def activation(x, act, threads=None):
    """Apply ``act`` to the C-contiguous float32 array ``x`` in place; returns ``x``."""
    from .program import Arena, run_ops
    from .workers import resolve_threads

    check_array(x, "x")
    check(act in _CODES, f"unknown activation code {act}")
    if act != ACT_NONE and x.size:
        A = Arena()
        xo = A.add(x)
        threads = resolve_threads(threads)
        arena = run_ops([activation_op(xo, x.size, act, threads)], A.build(), Arena().build(),
                        threads)
        x[...] = arena[xo:xo + x.size].reshape(x.shape)
    return x

"""Activation kernels and the vectorised exp vs NumPy."""
import numpy as np
import pytest
from numba import njit

from tinymvit.kernels import lazy

lazy.materialize()      # the kernels' helpers become Numba functions (they are called below)
from tinymvit.kernels.activations import (ACT_NONE, ACT_RELU6, ACT_SILU, SUPPORTED,  # noqa: E402
                                          act_code, activation, activation_reference)
from tinymvit.kernels.simd import VEC, vexp, vexp_nonpositive, vload, vstore  # noqa: E402


@njit(fastmath={"contract", "reassoc"}, error_model="numpy")
def _exp_all(x, out):
    for i in range(0, x.shape[0], VEC):
        vstore(out, i, vexp(vload(x, i)))


@njit(fastmath={"contract", "reassoc"}, error_model="numpy")
def _exp_nonpositive_all(x, out):
    for i in range(0, x.shape[0], VEC):
        vstore(out, i, vexp_nonpositive(vload(x, i)))


def _exp(x):
    x = np.concatenate([x, np.zeros(-len(x) % VEC, np.float32)])
    out = np.empty_like(x)
    _exp_all(x, out)
    return out


def test_vexp_accuracy_over_the_float32_range():
    x = np.linspace(-87.0, 87.9, 2_000_000).astype(np.float32)
    y = _exp(x)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(y - want) / want) < 1.2e-7          # ~1 float32 ulp
    assert _exp(np.zeros(1, np.float32))[0] == 1.0


def test_silu_is_accurate_to_float32_rounding():
    """x / (1 + exp(-x)) in float32 (one division) against float64, over [-30, 30]."""
    x = np.linspace(-30, 30, 1_000_001).astype(np.float32)
    got = activation(x.copy(), ACT_SILU).astype(np.float64)
    want = x.astype(np.float64) / (1 + np.exp(-x.astype(np.float64)))
    assert np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-3)) < 1.8e-7


@pytest.mark.parametrize("lo, hi, max_ulp", [(-10, 10, 2.5), (-17, -10, 3.5), (10, 88, 1.5),
                                             (-87, -17, 6.0)])
def test_silu_error_in_ulps(lo, hi, max_ulp):
    """simd._silu's error bounds, in units of the float32 result's last place: its exp(-v)
    reduces with ln2 as one constant, exact while |v| < ~17; beyond, SiLU is v itself (above)
    or under 1e-6 in size (below).  Measured: 2.2, 3.1, 1.3 and 5.3 ulp (the exact two-part
    reduction: 1.9, 2.3, 1.3, 1.8)."""
    x = np.linspace(lo, hi, 1_000_001).astype(np.float32)
    got = activation(x.copy(), ACT_SILU).astype(np.float64)
    d = x.astype(np.float64)
    want = d / (1 + np.exp(-d))
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - want) / ulp) <= max_ulp
    if lo >= 17:
        np.testing.assert_array_equal(got[x >= 17], d[x >= 17])


def test_silu_of_extremes():
    x = np.array([np.nan, np.inf, 1e30, 100, 0, -0.0, -100, -1e30], np.float32)
    got = activation(x.copy(), ACT_SILU)
    assert np.isnan(got[0]) and got[1] == np.inf
    np.testing.assert_array_equal(got[2:6], x[2:6])
    assert -1e-36 < got[6] <= 0 and -1e-7 < got[7] <= 0     # ~0: the true values underflow


def test_vexp_nonpositive_equals_vexp_where_it_is_defined():
    """Softmax's exp (x <= 0, no clamp above): the same bits as vexp, ~1 ulp, NaN stays NaN."""
    x = np.concatenate([[np.nan, -np.inf], np.linspace(-100.0, 0.0, 2_000_000)])
    x = np.concatenate([x, np.zeros(-len(x) % VEC)]).astype(np.float32)
    got = np.empty_like(x)
    _exp_nonpositive_all(x, got)
    np.testing.assert_array_equal(got, _exp(x))           # NaN == NaN for assert_array_equal
    inside = x >= -87.0
    want = np.exp(x[inside].astype(np.float64))
    assert np.max(np.abs(got[inside] - want) / want) < 1.2e-7
    assert np.isnan(got[0]) and got[-1] == 1.0


def test_vexp_clamps_instead_of_overflowing():
    y = _exp(np.array([-1000.0, -100.0, 100.0, 1000.0], np.float32))
    assert np.all(np.isfinite(y[:4]))
    assert 0 <= y[0] < 2e-38 and y[3] > 1e38


@pytest.mark.parametrize("act", list(range(13)))
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 9, 33), (1000, 17)])
def test_activation_matches_reference(act, shape):
    rng = np.random.default_rng(act * 100 + len(shape))
    x = (rng.standard_normal(shape) * 8).astype(np.float32)
    want = activation_reference(x, act)
    got = activation(x.copy(), act)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_act_code_names():
    assert act_code("swish") == act_code("silu") == ACT_SILU
    assert act_code("relu6") == ACT_RELU6 and act_code(None) == ACT_NONE
    with pytest.raises(ValueError, match="unsupported activation 'swiglu'"):
        act_code("swiglu")


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_supported_name_matches_transformers(name):
    """Each hidden_act string computes what transformers' ACT2FN[name] computes."""
    torch = pytest.importorskip("torch")
    act2fn = pytest.importorskip("transformers.activations").ACT2FN
    if name not in act2fn:
        pytest.skip(f"{name!r} is tinymvit's alias of the identity, not a transformers name")
    x = np.linspace(-12, 12, 4001).astype(np.float32)
    want = act2fn[name](torch.from_numpy(x.astype(np.float64))).numpy()
    got = activation(x.copy(), act_code(name))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)

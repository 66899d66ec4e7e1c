"""The NumPy backend: every node computed with the kernels' NumPy references.

For every family and head it matches the Numba backend within 1e-5 relative and
transformers within the golden tolerance; it runs in a process with NUMBA_DISABLE_JIT=1
without ever importing Numba; ``tinymvit.debug.first_divergence`` finds the first node
where two computations part ways.
"""
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

import tinymvit
from helpers import rel_err
from hf_models import model_pairs, run_torch, save
from tinymvit.debug import compare, first_divergence, torch_activations
from tinymvit.kernels import conv, depthwise, pointwise

BACKENDS_TOL = 1e-5   # the bound between the two backends
GOLDEN_TOL = 1e-4     # tests/test_golden.py

V1_SMALL = dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320])
CASES = [  # (family, task, config, input (N, H, W)): every family and head
    ("mobilevitv2", "classification", dict(width_multiplier=0.5), (2, 97, 131)),
    ("mobilevitv2", "base", dict(width_multiplier=0.75, patch_size=3, hidden_act="gelu"),
     (1, 96, 80)),
    ("mobilevitv2", "segmentation", dict(width_multiplier=0.5, output_stride=8,
                                         aspp_out_channels=32, num_labels=5), (1, 65, 70)),
    ("mobilevit", "classification", dict(V1_SMALL, num_attention_heads=2, qkv_bias=False),
     (1, 77, 64)),
    ("mobilevit", "base", dict(V1_SMALL, output_stride=16), (2, 64, 64)),
    ("mobilevit", "segmentation", dict(V1_SMALL, output_stride=16, aspp_out_channels=24,
                                       atrous_rates=[2, 4, 6], num_labels=4), (1, 70, 90)),
    ("mobilenet_v2", "classification", dict(depth_multiplier=0.5, num_labels=11,
                                            hidden_act="hardswish"), (2, 75, 61)),
    ("mobilenet_v2", "base", dict(depth_multiplier=0.35, tf_padding=False,
                                  first_layer_is_expansion=False), (1, 64, 50)),
    ("mobilenet_v2", "segmentation", dict(depth_multiplier=0.5, output_stride=8,
                                          num_labels=6), (1, 97, 81)),
]


def _ids(case):
    family, task, cfg, shape = case
    return f"{family}-{task}-{'x'.join(map(str, shape))}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pairs = model_pairs(tmp_path_factory)
    return lambda case: pairs(*case[:3], zlib.crc32(_ids(case).encode()) % 991)


def _outputs(out):
    """{name: array} of a ModelOutput or of run_torch's dict."""
    get = out.get if isinstance(out, dict) else lambda k: getattr(out, k)
    items = {k: get(k) for k in ("logits", "pooler_output", "last_hidden_state")}
    items.update({f"hidden_states[{i}]": h for i, h in enumerate(get("hidden_states"))})
    return {k: v for k, v in items.items() if v is not None}


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_numpy_backend_matches_numba_and_transformers(case, models):
    family, task, cfg, (n, h, w) = case
    hf, ours = models(case)
    x = np.random.default_rng(7).standard_normal((n, 3, h, w)).astype(np.float32)
    numpy_out = _outputs(ours(x, output_hidden_states=True, backend="numpy"))
    numba_out = _outputs(ours(x, output_hidden_states=True))
    torch_out = _outputs(run_torch(hf, x))
    assert numpy_out.keys() == numba_out.keys() >= torch_out.keys()   # + pooled, last state
    for name, value in numpy_out.items():
        assert value.dtype == np.float32 and value.shape == numba_out[name].shape, name
        assert rel_err(value, numba_out[name]) <= BACKENDS_TOL, name
    for name, value in torch_out.items():
        assert rel_err(numpy_out[name], value) <= GOLDEN_TOL, name


@pytest.mark.parametrize("case", [CASES[0], CASES[5], CASES[8]], ids=_ids)
def test_first_divergence_finds_nothing_when_all_agree(case, models):
    hf, ours = models(case)
    x = np.random.default_rng(8).standard_normal((1, 3) + case[3][1:]).astype(np.float32)
    assert first_divergence(ours, x) is None
    acts = torch_activations(hf, x)
    rows = compare(ours, x, acts)
    # most nodes have a transformers module to be compared with (not: unfold/fold, concat,
    # attention cores, layers followed by a residual add)
    assert len(rows) >= 0.6 * len(ours.graph.nodes)
    assert max(r.error for r in rows) <= GOLDEN_TOL
    assert first_divergence(ours, x, reference=acts) is None


def test_first_divergence_names_the_first_node_that_differs(models, monkeypatch):
    hf, ours = models(CASES[3])                           # MobileViT classification
    x = np.random.default_rng(9).standard_normal((1, 3, 64, 64)).astype(np.float32)
    nodes = ours.graph.nodes
    victim = next(n for n in nodes if n.name.endswith("encoder.layer.3.transformer.layer.1"
                                                      ".layernorm_before"))
    reference = type(victim).reference
    monkeypatch.setattr(victim, "reference", lambda xs, shape, args: reference(
        victim, xs, shape, args) * np.float32(1.001))     # a 0.1% bug in one layer
    found = first_divergence(ours, x)
    assert found is not None and found.name == victim.name
    assert found.index == nodes.index(victim) and found.agreed == found.index
    assert 5e-4 < found.error < 2e-3 and victim.name in str(found)
    # against transformers: the same node, found with the NumPy backend
    found = first_divergence(ours, x, reference=torch_activations(hf, x), backend="numpy")
    assert found is not None and found.name == victim.name


def test_first_divergence_against_transformers_finds_a_damaged_weight(models):
    hf, ours = models(CASES[0])                           # MobileViTV2 classification
    x = np.random.default_rng(10).standard_normal((1, 3, 64, 64)).astype(np.float32)
    acts = torch_activations(hf, x)
    victim = next(n for n in ours.graph.nodes
                  if n.name.endswith("encoder.layer.3.transformer.layer.0.ffn.conv1"))
    saved = victim.bias.copy()
    victim.bias[:] += 0.5                                 # a view into the weight arena
    try:
        found = first_divergence(ours, x, reference=acts)
    finally:
        victim.bias[:] = saved
    assert found is not None and found.name == victim.name
    assert found.other == victim.name                     # compared with that very module
    assert first_divergence(ours, x, reference=acts) is None


def test_backend_is_a_model_default_and_a_call_option(models, tmp_path):
    hf, _ = models(CASES[6])
    folder = save(hf, tmp_path / "ckpt")
    ours = tinymvit.load(folder, backend="numpy")
    assert ours.backend == "numpy"
    x = np.random.default_rng(11).standard_normal((1, 3, 40, 40)).astype(np.float32)
    a, b = ours(x).logits, ours(x, backend="numba").logits
    assert rel_err(a, b) <= BACKENDS_TOL
    with pytest.raises(tinymvit.InputError, match="backend must be 'numba' or 'numpy', got 'torch'"):
        ours(x, backend="torch")
    with pytest.raises(tinymvit.InputError, match="backend must be"):
        tinymvit.load(folder, backend="jax")
    with pytest.raises(tinymvit.InputError, match="must be float32"):  # the same checks
        ours(x.astype(np.float64))


CHILD = """
import json, sys
import numpy as np
import tinymvit
model = tinymvit.load(sys.argv[1], backend="numpy")
x = np.random.default_rng(12).standard_normal((1, 3, 64, 72)).astype(np.float32)
out = model(x, output_hidden_states=True)
print(json.dumps({"numba": [m for m in sys.modules if m.split(".")[0] == "numba"],
                  "logits": out.logits.tolist(), "top": model.classify(np.zeros((40, 50, 3),
                  np.uint8), top_k=1)[0]["index"]}))
"""


def test_numpy_backend_runs_with_numba_jit_disabled_and_never_imports_numba(models, tmp_path):
    hf, ours = models(CASES[3])                           # MobileViT classification
    folder = save(hf, tmp_path / "ckpt")
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", TINYMVIT_NUMBA_CACHE="0")
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["numba"] == []
    x = np.random.default_rng(12).standard_normal((1, 3, 64, 72)).astype(np.float32)
    assert rel_err(np.array(result["logits"], np.float32), ours(x).logits) <= BACKENDS_TOL
    assert result["top"] == ours.classify(np.zeros((40, 50, 3), np.uint8), top_k=1)[0]["index"]


@pytest.mark.parametrize("shape", [(5, 7, 1, 1), (33, 16), (17, 3, 3, 3), (8, 5, 5, 2)])
def test_unpacking_inverts_packing(shape):
    w = np.random.default_rng(13).standard_normal(shape).astype(np.float32)
    if len(shape) == 2 or shape[2:] == (1, 1):
        back = pointwise.unpack_pointwise_weight(pointwise.prepare_pointwise_weight(w))
        assert np.array_equal(back, w.reshape(shape[0], -1))
    else:
        assert np.array_equal(conv.unpack_conv_weight(conv.prepare_conv_weight(w)), w)
    dw = w[:, :1] if len(shape) == 4 else w[:, None, None, :1]
    dw = np.ascontiguousarray(dw)
    back = depthwise.unpack_depthwise_weight(depthwise.prepare_depthwise_weight(dw))
    assert np.array_equal(back, dw)

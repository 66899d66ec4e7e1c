"""Golden tests: tinymvit vs transformers' PyTorch models with random weights.

Each case builds a transformers model from a config, randomises its weights and
normalisation statistics, saves it with ``save_pretrained``, loads the folder with
``tinymvit.load`` and compares logits, pooled output, last hidden state and every
hidden state (max abs error relative to the tensor's scale <= 1e-4).
"""
import zlib

import numpy as np
import pytest

import tinymvit
from helpers import rel_err
from hf_models import make_model, run_torch, save

TOL = 1e-4

# (family, task, config overrides, input (N, H, W))
CASES = [
    # MobileViTV2: widths, odd sizes (zero-filled leftovers), output strides, config fields
    ("mobilevitv2", "classification", dict(), (1, 256, 256)),
    ("mobilevitv2", "classification", dict(width_multiplier=0.5), (2, 97, 131)),
    ("mobilevitv2", "classification", dict(width_multiplier=0.75, n_attn_blocks=[1, 2, 1],
                                           base_attn_unit_dims=[64, 80, 96], ffn_multiplier=3,
                                           expand_ratio=3.0, conv_kernel_size=5,
                                           hidden_act="relu6", layer_norm_eps=1e-3,
                                           num_labels=7), (1, 320, 200)),
    ("mobilevitv2", "classification", dict(width_multiplier=0.5, output_stride=16), (1, 33, 47)),
    ("mobilevitv2", "classification", dict(width_multiplier=1.25, output_stride=8, patch_size=3),
     (1, 150, 130)),
    ("mobilevitv2", "base", dict(width_multiplier=0.5), (2, 64, 96)),
    ("mobilevitv2", "classification", dict(width_multiplier=0.5, hidden_act="gelu"), (1, 64, 80)),
    # MobileViT v1: variants, odd sizes (bilinear resize path), heads, qkv_bias, OS
    ("mobilevit", "classification", dict(), (1, 256, 256)),
    ("mobilevit", "classification", dict(hidden_sizes=[64, 80, 96],
                                         neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
                                         expand_ratio=2.0), (2, 97, 131)),
    ("mobilevit", "classification", dict(hidden_sizes=[96, 120, 144],
                                         neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384],
                                         num_attention_heads=2, mlp_ratio=3.0, qkv_bias=False,
                                         conv_kernel_size=5, layer_norm_eps=1e-6,
                                         hidden_act="relu", num_labels=5), (1, 200, 320)),
    ("mobilevit", "classification", dict(hidden_sizes=[64, 80, 96],
                                         neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
                                         output_stride=8, patch_size=3), (1, 16, 23)),
    ("mobilevit", "base", dict(hidden_sizes=[64, 80, 96],
                               neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320]), (1, 64, 64)),
    # MobileNetV2: depth multipliers, TF padding on/off, OS, stem expansion, fine-grained output
    ("mobilenet_v2", "classification", dict(num_labels=1001, layer_norm_eps=1e-3), (1, 224, 224)),
    ("mobilenet_v2", "classification", dict(depth_multiplier=0.35, num_labels=11), (2, 96, 96)),
    ("mobilenet_v2", "classification", dict(depth_multiplier=1.4, tf_padding=False), (1, 127, 95)),
    ("mobilenet_v2", "classification", dict(depth_multiplier=0.5, finegrained_output=False,
                                            first_layer_is_expansion=False, expand_ratio=4.0,
                                            hidden_act="relu", output_stride=16,
                                            layer_norm_eps=1e-5), (1, 161, 130)),
    ("mobilenet_v2", "classification", dict(depth_multiplier=0.75, output_stride=8, min_depth=16,
                                            depth_divisible_by=16), (2, 75, 64)),
    ("mobilenet_v2", "base", dict(depth_multiplier=0.5), (1, 33, 65)),
    ("mobilenet_v2", "classification", dict(depth_multiplier=0.35, hidden_act="hardswish"),
     (1, 50, 50)),
    ("mobilevit", "classification", dict(hidden_sizes=[64, 80, 96], hidden_act="quick_gelu",
                                         neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320]),
     (1, 64, 64)),
]


def _ids(case):
    family, task, cfg, shape = case
    extra = ",".join(f"{k}={v}" for k, v in cfg.items())
    return f"{family}-{task}-{'x'.join(map(str, shape))}-{extra}"


def compare(model_hf, ours, x):
    ref = run_torch(model_hf, x)
    out = ours(x, output_hidden_states=True)
    for name in ("logits", "pooler_output", "last_hidden_state"):
        if name in ref:
            assert getattr(out, name) is not None, name
            err = rel_err(getattr(out, name), ref[name])
            assert err <= TOL, f"{name}: relative error {err:.2e}"
    assert len(out.hidden_states) == len(ref["hidden_states"])
    for i, (a, b) in enumerate(zip(out.hidden_states, ref["hidden_states"])):
        err = rel_err(a, b)
        assert err <= TOL, f"hidden_states[{i}] {b.shape}: relative error {err:.2e}"
    return ref, out


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_matches_transformers(case, tmp_path):
    family, task, cfg, (n, h, w) = case
    model_hf = make_model(family, task, seed=zlib.crc32(_ids(case).encode()) % 1000, **cfg)
    save(model_hf, tmp_path)
    ours = tinymvit.load(tmp_path)
    assert ours.family == family and ours.task == task
    x = np.random.default_rng(0).standard_normal((n, 3, h, w)).astype(np.float32)
    ref, out = compare(model_hf, ours, x)
    if task == "classification":
        assert out.logits.shape == (n, ours.config.num_labels)
        # the ranking is what users see: it must agree too
        assert (out.logits.argmax(-1) == ref["logits"].argmax(-1)).all()


def test_pytorch_bin_checkpoint_loads(tmp_path):
    """A folder with pytorch_model.bin (read via torch.load(weights_only=True)) loads too."""
    model_hf = make_model("mobilevitv2", "classification", seed=3, width_multiplier=0.5)
    save(model_hf, tmp_path, safe=False)
    assert (tmp_path / "pytorch_model.bin").exists()
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    compare(model_hf, tinymvit.load(tmp_path), x)


def test_converted_file_matches(tmp_path):
    """tinymvit.convert writes one file that loads to the same outputs."""
    model_hf = make_model("mobilevit", "classification", seed=4, hidden_sizes=[64, 80, 96],
                          neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], num_labels=3)
    save(model_hf, tmp_path / "ckpt")
    dst = tinymvit.convert(tmp_path / "ckpt", tmp_path / "model.safetensors")
    ours = tinymvit.load(dst)
    assert ours.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    x = np.random.default_rng(2).standard_normal((1, 3, 80, 72)).astype(np.float32)
    compare(model_hf, ours, x)


TINY = dict(mobilenet_v2=dict(depth_multiplier=0.35),
            mobilevit=dict(hidden_sizes=[64, 80, 96],
                           neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320]),
            mobilevitv2=dict(width_multiplier=0.5))
EDGE_CASES = [  # (family, task, extra config, sizes); torch decides which sizes are valid
    ("mobilenet_v2", "classification", {}, [(1, 1), (2, 3), (5, 17)]),
    ("mobilenet_v2", "segmentation", dict(output_stride=8), [(1, 1), (3, 2), (9, 9)]),
    ("mobilevit", "classification", {}, [(1, 1), (2, 3), (5, 17)]),
    ("mobilevit", "segmentation", dict(output_stride=16), [(1, 1), (7, 3)]),
    ("mobilevitv2", "classification", {}, [(33, 33), (33, 200), (32, 40), (16, 16)]),
    ("mobilevitv2", "segmentation", dict(output_stride=8), [(9, 9), (8, 8), (9, 30)]),
    ("mobilevitv2", "segmentation", dict(output_stride=16), [(17, 17), (16, 40)]),
]


@pytest.mark.parametrize("family, task, extra, sizes", EDGE_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in EDGE_CASES])
def test_extreme_input_sizes(family, task, extra, sizes, tmp_path):
    """Tiny inputs: same outputs as PyTorch where it runs, a clear InputError where it fails."""
    model_hf = make_model(family, task, seed=5, **TINY[family], **extra)
    save(model_hf, tmp_path)
    ours = tinymvit.load(tmp_path)
    for h, w in sizes:
        x = np.random.default_rng(h * 100 + w).standard_normal((1, 3, h, w)).astype(np.float32)
        try:
            ref = run_torch(model_hf, x)
        except RuntimeError:  # F.unfold on a map smaller than a patch
            with pytest.raises(tinymvit.InputError, match=f"{h}x{w} is too small"):
                ours(x)
            continue
        assert rel_err(ours(x).logits, ref["logits"]) <= TOL, (h, w)

"""model.summary() and ``tinymvit summary``: totals against PyTorch, rows, the CLI.

Parameters are compared with ``sum(p.numel() for p in model.parameters())`` of the same
transformers model, multiply-adds with forward hooks on every Conv2d and Linear plus
MobileViT's attention matmuls (2 S N^2 C per MobileViTSelfAttention call), per image.
"""
import re

import numpy as np
import pytest

import tinymvit
from fake_checkpoints import random_model
from helpers import cli
from hf_models import make_model, save, torch
from tinymvit.summary import BUFFERS

V1_SMALL = dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320])
CASES = [  # (family, task, config, input (H, W))
    ("mobilevitv2", "classification", dict(width_multiplier=0.75, num_labels=10), (200, 320)),
    ("mobilevitv2", "segmentation", dict(width_multiplier=0.5, output_stride=8,
                                         aspp_out_channels=64, num_labels=7), (96, 130)),
    ("mobilevitv2", "base", dict(width_multiplier=1.25, n_attn_blocks=[1, 2, 1]), (64, 64)),
    ("mobilevit", "classification", dict(V1_SMALL, num_attention_heads=2, patch_size=3),
     (97, 131)),
    ("mobilevit", "segmentation", dict(V1_SMALL, output_stride=16, num_labels=3), (128, 96)),
    ("mobilevit", "base", dict(V1_SMALL, mlp_ratio=3.0), (64, 80)),
    ("mobilenet_v2", "classification", dict(depth_multiplier=1.4, num_labels=1001), (224, 224)),
    ("mobilenet_v2", "segmentation", dict(depth_multiplier=0.5, output_stride=16,
                                          num_labels=21), (129, 161)),
    ("mobilenet_v2", "base", dict(depth_multiplier=0.75, finegrained_output=False), (96, 96)),
]


def torch_counts(model, h, w):
    """(parameters, multiply-adds of one image, module names in the order they are called)
    of a transformers model, counted by PyTorch."""
    macs, called = [], []

    def conv(m, i, o):
        macs.append(o[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])

    def linear(m, i, o):
        macs.append(o.numel() * m.in_features)

    def attention(m, i, o):                            # Q K^T and A V: (S, N, C) sequences
        s, n, c = i[0].shape
        macs.append(2 * s * n * n * c)
    hooks = []
    for name, module in model.named_modules():
        kind = {torch.nn.Conv2d: conv, torch.nn.Linear: linear}.get(type(module))
        if type(module).__name__ == "MobileViTSelfAttention":
            kind = attention
        if kind is not None:
            hooks.append(module.register_forward_hook(kind))
        hooks.append(module.register_forward_pre_hook(
            lambda m, i, name=name: called.append(name)))
    with torch.inference_mode():
        model(torch.zeros(1, 3, h, w))
    for hook in hooks:
        hook.remove()
    return sum(p.numel() for p in model.parameters()), sum(macs), called


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_totals_match_pytorch(case, tmp_path):
    family, task, cfg, (h, w) = case
    hf = make_model(family, task, **cfg)
    ours = tinymvit.load(save(hf, tmp_path))
    summary = ours.summary((h, w))
    params, macs, called = torch_counts(hf, h, w)
    assert summary.total_params == params
    assert summary.total_macs == macs
    assert summary.input_shape == (1, 3, h, w)
    # rows: execution order, checkpoint names, shapes of the plan
    state = {k: v.shape for k, v in hf.state_dict().items() if not k.endswith(BUFFERS)}
    shapes = ours.graph.shapes((1, 3, h, w))
    run = [r for r in summary.rows if r["run"]]
    assert [r["output_shape"] for r in run] == [shapes[n.output] for n in ours.graph.nodes]
    assert sum(r["params"] for r in summary.rows) == params == sum(
        int(np.prod(s)) for s in state.values())
    for row in summary.rows:
        assert {"name", "op", "output_shape", "params", "macs"} <= row.keys()
        if row["params"]:
            assert all(any(k.startswith(n + ".") for k in state) for n in row["names"]), row
    first = [min(i for i, m in enumerate(called) if m == n or m.startswith(n + "."))
             for r in summary.rows if r["params"] for n in r["names"][:1]]
    assert first == sorted(first)                                 # transformers' call order
    text = str(summary)
    assert f"total params: {params:,}" in text
    assert all(row["name"] in text for row in summary.rows)


def test_mobilenet_v2_segmentation_counts_the_unused_conv_1x1(tmp_path):
    """transformers computes conv_1x1 under the DeepLab head without reading it: PyTorch
    counts it, tinymvit shows it as a row that is not run."""
    hf = make_model("mobilenet_v2", "segmentation", output_stride=8, num_labels=21)
    summary = tinymvit.load(save(hf, tmp_path)).summary(513)
    assert (summary.total_params, summary.total_macs) == torch_counts(hf, 513, 513)[:2]
    unused = [r for r in summary.rows if not r["run"]]
    assert [r["name"] for r in unused] == ["mobilenet_v2.conv_1x1"]
    assert unused[0]["params"] == 320 * 1280 + 2 * 1280
    assert unused[0]["macs"] == 65 * 65 * 320 * 1280
    assert "not run" in str(summary) and "which tinymvit skips" in str(summary)


def test_time_column(tmp_path):
    model = random_model("mobilevitv2", width_multiplier=0.5)
    summary = model.summary(64, time=True, repeats=2)
    shares = [r["share"] for r in summary.rows]
    assert all(r["ms"] >= 0 for r in summary.rows) and abs(sum(shares) - 1) < 1e-9
    assert "share" in str(summary).splitlines()[2] and "total time" in str(summary)
    with pytest.raises(tinymvit.InputError, match="too small"):
        model.summary(8)
    with pytest.raises(tinymvit.InputError, match="size must be"):
        model.summary("big")
    with pytest.raises(tinymvit.InputError, match="repeats must be"):
        model.summary(64, time=True, repeats=0)


# The published numbers (../shared/reference/params-macs.txt) and the configs they are for.
V1 = {"xx-small": dict(V1_SMALL, expand_ratio=2.0),
      "x-small": dict(hidden_sizes=[96, 120, 144],
                      neck_hidden_sizes=[16, 32, 48, 64, 80, 96, 384]),
      "small": {}}


def _reference_config(name):
    """(family, task, config) of a row of params-macs.txt."""
    found = re.fullmatch(r"MobileViTV2-([\d.]+) cls", name)
    if found:
        return "mobilevitv2", "classification", dict(width_multiplier=float(found[1]),
                                                      num_labels=1000)
    found = re.fullmatch(r"DeepLabV3-MobileViTV2-([\d.]+) \(VOC: OS16, aspp512\)", name)
    if found:
        return "mobilevitv2", "segmentation", dict(width_multiplier=float(found[1]),
                                                    num_labels=21, output_stride=16,
                                                    aspp_out_channels=512)
    found = re.fullmatch(r"(DeepLabV3-)?MobileViT-([\w-]+) (cls|\(OS16, aspp256\))", name)
    if found:
        if found[1]:
            return "mobilevit", "segmentation", dict(V1[found[2]], num_labels=21,
                                                      output_stride=16, aspp_out_channels=256)
        return "mobilevit", "classification", dict(V1[found[2]], num_labels=1000)
    found = re.fullmatch(r"MobileNetV2 ([\d.]+)_\d+ cls", name)
    if found:
        return "mobilenet_v2", "classification", dict(depth_multiplier=float(found[1]),
                                                       num_labels=1001)
    assert name == "DeepLabV3 MobileNetV2 1.0_513 (OS8)", name
    return "mobilenet_v2", "segmentation", dict(output_stride=8, num_labels=21)


def test_published_parameter_and_mac_counts(shared_dir):
    lines = (shared_dir / "reference" / "params-macs.txt").read_text().splitlines()[1:]
    rows = [re.fullmatch(r"(.+?)\s+(\d+)\s+([\d.]+) M\s+([\d.]+) G(?:\s+([\d.]+) G)?\s*", line)
            for line in lines if line.strip()]
    assert len(rows) >= 20 and all(rows)
    for row in rows:
        family, task, cfg = _reference_config(row[1])
        model = random_model(family, task, **cfg)
        for size, macs in ((int(row[2]), row[4]), (384, row[5])):
            if macs is None:
                continue
            summary = model.summary(size)
            assert f"{summary.total_params / 1e6:.3f}" == row[3], row[1]
            assert f"{summary.total_macs / 1e9:.3f}" == macs, (row[1], size)


def test_cli_summary(tmp_path, capsys):
    from fake_checkpoints import random_checkpoint
    folder = random_checkpoint(tmp_path / "v2", "mobilevitv2", width_multiplier=0.5,
                               num_labels=4)
    code, out, err = cli(["summary", folder, "--size", 64], capsys)
    assert code == 0 and not err
    expected = str(tinymvit.load(folder).summary(64))
    assert out.rstrip("\n") == expected
    assert "mobilevitv2.encoder.layer.2.transformer.layer.0.attention " in out
    code, out, err = cli(["summary", folder, "--size", 64, "--time", "--threads", 1], capsys)
    assert code == 0 and "share" in out and "total time" in out
    code, out, err = cli(["summary", folder, "--size", 16], capsys)
    assert code == 1 and len(err) == 1 and "too small" in err[0]
    code, out, err = cli(["summary", tmp_path / "nope"], capsys)
    assert code == 1 and len(err) == 1 and "no such checkpoint" in err[0]

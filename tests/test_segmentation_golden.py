"""Golden tests for the segmentation models (DeepLabV3 heads) against transformers.

Random weights and normalisation statistics; logits (N, num_labels, h, w) and every
hidden state within 1e-4 relative; post-processing identical to transformers'.
"""
import zlib

import numpy as np
import pytest

from helpers import rel_err
from hf_models import model_pairs, run_torch, torch

TOL = 1e-4

CASES = [
    # MobileViTV2 DeepLabV3: OS16 (VOC) / OS8 (ADE), aspp widths and rates, 512² and odd sizes
    ("mobilevitv2", dict(width_multiplier=0.5, output_stride=16, num_labels=21,
                         aspp_out_channels=64), (1, 512, 512)),
    ("mobilevitv2", dict(width_multiplier=0.5, output_stride=8, num_labels=5,
                         aspp_out_channels=48, atrous_rates=[12, 24, 36]), (2, 97, 131)),
    ("mobilevitv2", dict(width_multiplier=0.75, output_stride=16, num_labels=3,
                         aspp_out_channels=32, atrous_rates=[1, 2, 3]), (1, 200, 320)),
    # MobileViT v1 DeepLabV3 (no conv_1x1_exp)
    ("mobilevit", dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
                       expand_ratio=2.0, output_stride=16, num_labels=21), (1, 512, 512)),
    ("mobilevit", dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320],
                       expand_ratio=2.0, output_stride=8, aspp_out_channels=40,
                       atrous_rates=[3, 7, 11], num_labels=4), (2, 131, 97)),
    # MobileNetV2 "DeepLabV3Plus" head: OS8 (hub) and OS16, TF padding with dilation
    ("mobilenet_v2", dict(output_stride=8, num_labels=21), (1, 513, 513)),
    ("mobilenet_v2", dict(output_stride=16, num_labels=21, depth_multiplier=0.5), (2, 129, 200)),
    ("mobilenet_v2", dict(output_stride=8, num_labels=6, tf_padding=False,
                          depth_multiplier=0.75), (1, 96, 77)),
]


def _ids(case):
    family, cfg, shape = case
    return f"{family}-{'x'.join(map(str, shape))}-" + ",".join(f"{k}={v}" for k, v in cfg.items())


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    pairs = model_pairs(tmp_path_factory)
    return lambda case: pairs(case[0], "segmentation", case[1],
                              zlib.crc32(_ids(case).encode()) % 997)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_segmentation_logits_match(case, loaded):
    family, cfg, (n, h, w) = case
    hf, ours = loaded(case)
    assert ours.task == "segmentation"
    x = np.random.default_rng(1).standard_normal((n, 3, h, w)).astype(np.float32)
    ref = run_torch(hf, x)
    out = ours(x, output_hidden_states=True)
    os_ = cfg["output_stride"]
    assert out.logits.shape == (n, cfg["num_labels"], -(-h // os_), -(-w // os_))
    err = rel_err(out.logits, ref["logits"])
    assert err <= TOL, f"logits relative error {err:.2e}"
    assert len(out.hidden_states) == len(ref["hidden_states"])
    for i, (a, b) in enumerate(zip(out.hidden_states, ref["hidden_states"])):
        assert rel_err(a, b) <= TOL, f"hidden_states[{i}]"
    assert (out.logits.argmax(1) == ref["logits"].argmax(1)).mean() > 0.999


@pytest.mark.parametrize("case", [CASES[1], CASES[6]], ids=_ids)
def test_post_processing_matches_transformers(case, loaded):
    from transformers import MobileNetV2ImageProcessorPil, MobileViTImageProcessorPil

    family, cfg, (n, h, w) = case
    hf, ours = loaded(case)
    x = np.random.default_rng(2).standard_normal((n, 3, h, w)).astype(np.float32)
    logits = ours(x).logits
    proc = (MobileNetV2ImageProcessorPil if family == "mobilenet_v2"
            else MobileViTImageProcessorPil)()

    class Out:  # what transformers' post-processing reads
        pass
    o = Out()
    o.logits = torch.from_numpy(logits)
    sizes = [(h * 3 + 1, w * 2 - 3), (50, 60)][:n]
    ref = proc.post_process_semantic_segmentation(o, target_sizes=sizes)
    got = ours.post_process_semantic_segmentation(logits, target_sizes=sizes)
    for a, b in zip(got, ref):
        assert a.shape == tuple(b.shape)
        assert np.array_equal(a, b.numpy())
    raw_ref = proc.post_process_semantic_segmentation(o)
    raw = ours.post_process_semantic_segmentation(logits)
    for a, b in zip(raw, raw_ref):
        assert np.array_equal(a, b.numpy())


def test_segment_returns_full_size_map(loaded):
    hf, ours = loaded(CASES[2])
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, size=(123, 201, 3), dtype=np.uint8)
    labels = ours.segment(image)
    assert labels.shape == (123, 201)
    assert labels.min() >= 0 and labels.max() < ours.config.num_labels

"""model.attention_maps() and ``tinymvit attention``.

"scores" are compared with the tensors transformers computes, caught with forward hooks
on the attention dropout modules (identities in eval mode, right after the softmax):
MobileViTV2's ``attn_dropout`` (context scores) and MobileViT's
``attention.attention.dropout`` (attention probabilities).
"""
import numpy as np
import pytest
from PIL import Image

import tinymvit
from fake_checkpoints import random_checkpoint
from helpers import cli, rel_err
from hf_models import model_pairs, torch

V1_SMALL = dict(hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320])
CASES = [  # (family, task, config, input (H, W))
    ("mobilevitv2", "classification", dict(width_multiplier=0.5), (97, 131)),
    ("mobilevitv2", "segmentation", dict(width_multiplier=0.5, output_stride=8,
                                         n_attn_blocks=[1, 2, 1], aspp_out_channels=16), (64, 80)),
    ("mobilevit", "classification", dict(V1_SMALL, num_attention_heads=2, patch_size=3),
     (70, 90)),
    ("mobilevit", "segmentation", dict(V1_SMALL, output_stride=16, aspp_out_channels=16),
     (96, 64)),
]
SUFFIX = {"mobilevitv2": ".attn_dropout", "mobilevit": ".attention.dropout"}


def torch_scores(hf, family, pixel_values):
    """[(attention module name, scores)] in the order transformers computes them."""
    found, hooks = [], []
    for name, module in hf.named_modules():
        if name.endswith(SUFFIX[family]):
            block = name[:-len(SUFFIX[family])]
            hooks.append(module.register_forward_hook(
                lambda m, i, o, block=block: found.append((block, o.numpy().copy()))))
    with torch.inference_mode():
        hf(torch.from_numpy(pixel_values))
    for hook in hooks:
        hook.remove()
    return found


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pairs = model_pairs(tmp_path_factory)
    return lambda case: pairs(*case[:3], seed=CASES.index(case) + 3)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_scores_are_what_transformers_computes(case, models):
    family, task, cfg, (h, w) = case
    hf, ours = models(case)
    x = np.random.default_rng(1).standard_normal((1, 3, h, w)).astype(np.float32)
    maps = ours.attention_maps(x)
    expected = torch_scores(hf, family, x)
    assert [m["name"] for m in maps] == [name for name, _ in expected]
    assert len(maps) == sum(cfg.get("n_attn_blocks", [2, 4, 3]))
    for m, (name, scores) in zip(maps, expected):
        assert m["scores"].shape == scores.shape and m["scores"].dtype == np.float32, name
        assert rel_err(m["scores"], scores) <= 1e-5, name
        assert m["map"].shape == (h, w) and m["map"].dtype == np.float32
        assert m["title"].startswith("layer ") and ", block " in m["title"]
    assert maps[0]["name"] == f"{family}.encoder.layer.2.transformer.layer.0.attention"
    assert maps[0]["title"] == "layer 2, block 0"
    # the same with the NumPy backend
    ours.backend = "numpy"
    try:
        again = ours.attention_maps(x)
    finally:
        ours.backend = "numba"
    assert all(rel_err(a["scores"], b["scores"]) <= 1e-5 for a, b in zip(again, maps))


@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=lambda c: c[0])
def test_map_places_each_token_at_its_pixels(case, models):
    """Input 64x64: stage 2 works on an 8x8 map (stride 8); with 2x2 patches, feature pixel
    (i, j) is token (position (i%2)*2 + j%2, patch (i//2)*4 + j//2)."""
    family, task, cfg, _ = case
    hf, ours = models(case)
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    first = ours.attention_maps(x)[0]
    if family == "mobilevitv2":
        tokens = first["scores"][0, 0]                               # (P, N)
    else:
        tokens = first["scores"].mean(axis=(1, 2))                   # received: (P, N)
    for i in range(8):
        for j in range(8):
            want = tokens[(i % 2) * 2 + j % 2, (i // 2) * 4 + j // 2]
            assert first["map"][8 * i, 8 * j] == pytest.approx(want, rel=1e-6)
            assert first["map"][8 * i + 3, 8 * j + 3] == pytest.approx(want, rel=1e-6)
    assert np.isfinite(first["map"]).all()


def test_map_of_a_photo_covers_what_the_processor_kept(tmp_path):
    pre = {"size": {"shortest_edge": 72}, "crop_size": {"height": 64, "width": 64}}
    folder = random_checkpoint(tmp_path / "v2", "mobilevitv2", width_multiplier=0.5,
                               num_labels=3, preprocessor=pre)
    model = tinymvit.load(folder)
    photo = np.random.default_rng(3).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    maps = model.attention_maps(photo)
    assert all(m["map"].shape == (90, 120) for m in maps)
    seen = np.isfinite(maps[0]["map"])
    # resized to 72x96, center crop 64x64 from row 4, column 16: original rows 5..84 and
    # columns 20..99 (pixel centres inside the crop) are seen, the sides are not
    rows, cols = np.flatnonzero(seen.any(1)), np.flatnonzero(seen.any(0))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 84, 20, 99)
    assert seen[5:85, 20:100].all() and not seen[:, :20].any() and not seen[:, 100:].any()
    # scores are those of the processor's pixel values
    direct = model.attention_maps(model.preprocess(photo))
    assert all(np.array_equal(a["scores"], b["scores"]) for a, b in zip(maps, direct))


def test_bad_inputs(tmp_path):
    mnv2 = random_checkpoint(tmp_path / "mnv2", "mobilenet_v2", depth_multiplier=0.35)
    with pytest.raises(tinymvit.InputError, match="MobileNetV2 has no attention layers"):
        tinymvit.load(mnv2).attention_maps(np.zeros((40, 40, 3), np.uint8))
    v2 = tinymvit.load(random_checkpoint(tmp_path / "v2", "mobilevitv2", width_multiplier=0.5))
    with pytest.raises(tinymvit.InputError, match="one image"):
        v2.attention_maps(np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(tinymvit.InputError, match="too small"):
        v2.attention_maps(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(tinymvit.ImageError, match="image file not found"):
        v2.attention_maps(tmp_path / "nothere.jpg")


def test_cli_attention(tmp_path, capsys):
    v1 = random_checkpoint(tmp_path / "v1", "mobilevit", **V1_SMALL, num_labels=3)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (120, 160, 3), np.uint8)).save(photo)
    code, out, err = cli(["attention", photo, "--model", v1, "--out", tmp_path / "a.png"], capsys)
    assert code == 0 and err == []
    lines = out.splitlines()
    assert lines[0] == "mobilevit.encoder.layer.2.transformer.layer.0.attention  scores " \
                       "(4, 4, 256, 256)"
    assert lines[-1] == f"wrote {tmp_path / 'a.png'} (9 attention blocks)"
    grid = Image.open(tmp_path / "a.png")
    assert grid.format == "PNG" and grid.width > 4 * 256 and grid.height > 3 * 192
    for argv, message in [
            (["attention", photo, "--model", v1, "--out", photo], "refusing to overwrite an input"),
            (["attention", photo, "--model", v1, "--out", tmp_path / "a.xyz"],
             "--out " + str(tmp_path / "a.xyz") + ": unknown image extension"),
            (["attention", photo, "--model", tmp_path / "nope", "--out", tmp_path / "b.png"],
             "no such checkpoint"),
            (["attention", photo, "--model", random_checkpoint(tmp_path / "m", "mobilenet_v2"),
              "--out", tmp_path / "b.png"], "MobileNetV2 has no attention layers")]:
        code, out, err = cli(argv, capsys)
        assert code == 1 and len(err) == 1 and message in err[0], err
    with pytest.raises(SystemExit) as stop:                     # argparse: one line, status 1
        cli(["attention", photo, "--model", v1], capsys)
    err = capsys.readouterr().err.splitlines()
    assert stop.value.code == 1 and len(err) == 1 and "required: --out" in err[0]

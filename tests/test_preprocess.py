"""Preprocessing is bit-identical to transformers' PIL image processors.

Every comparison is ``np.array_equal`` against ``MobileViTImageProcessorPil`` /
``MobileNetV2ImageProcessorPil`` built from the same preprocessor_config dict, fed the
image transformers' ``load_image`` returns.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tinymvit.errors import ConfigError, InputError
from tinymvit.images import ImageError, load_image
from tinymvit.preprocess import ImageProcessor, SegmentationMeta

transformers = pytest.importorskip("transformers")
from transformers.image_utils import load_image as hf_load_image  # noqa: E402

HF_CLASS = {"mobilevit": transformers.MobileViTImageProcessorPil,
            "mobilevitv2": transformers.MobileViTImageProcessorPil,
            "mobilenet_v2": transformers.MobileNetV2ImageProcessorPil}

# (family, config) pairs that do not need ../shared
CONFIGS = {
    "mobilevit-hub-256": ("mobilevit", {
        "crop_size": {"height": 256, "width": 256}, "do_center_crop": True,
        "do_flip_channel_order": True, "do_rescale": True, "do_resize": True,
        "image_processor_type": "MobileViTImageProcessor", "resample": 2,
        "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 288}}),
    "mobilevitv2-deeplab-512": ("mobilevitv2", {
        "crop_size": {"height": 512, "width": 512}, "do_flip_channel_order": True,
        "resample": 2, "size": {"shortest_edge": 544}}),
    "mobilevit-v5-default-bicubic": ("mobilevit", {
        "size": {"shortest_edge": 288}, "crop_size": {"height": 256, "width": 256}}),
    "mobilevit-legacy-keys": ("mobilevit", {
        "crop_size": 256, "do_center_crop": True, "do_flip_channels": True, "do_resize": True,
        "feature_extractor_type": "MobileViTFeatureExtractor", "resample": 2, "size": 288}),
    "mobilenet_v2-legacy-int-sizes": ("mobilenet_v2", {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "MobileNetV2FeatureExtractor", "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 256}),
    "mobilenet_v2-crop-larger-than-image": ("mobilenet_v2", {
        "size": {"shortest_edge": 200}, "crop_size": {"height": 256, "width": 300}}),
    "mobilevit-crop-larger-normalize-ignored": ("mobilevit", {
        "size": {"shortest_edge": 200}, "crop_size": {"height": 256, "width": 300},
        "do_normalize": True, "image_mean": [0.1, 0.2, 0.3], "resample": 3}),
    "mobilevit-class-defaults": ("mobilevit", {}),      # 224 shortest edge < 256 crop: padding
    "mobilenet_v2-imagenet-mean-no-flip": ("mobilenet_v2", {
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3,
        "size": {"shortest_edge": 183}}),
    "mobilevit-no-flip-nearest": ("mobilevit", {
        "do_flip_channel_order": False, "resample": 0, "size": {"shortest_edge": 300}}),
    "mobilenet_v2-height-width-resize": ("mobilenet_v2", {
        "size": {"height": 150, "width": 170}, "crop_size": {"height": 120, "width": 160}}),
}


def hf_processor(family, config):
    return HF_CLASS[family](**config)


def hf_pixels(processor, images):
    """transformers' pipeline path: load_image (EXIF + RGB), then the PIL processor."""
    if not isinstance(images, list):
        images = [images]
    return processor([_hf_load(im) for im in images], return_tensors="np")["pixel_values"]


def _hf_load(image):
    """transformers' load_image; files are opened here so that they get closed again."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return hf_load_image(im)
    return hf_load_image(image)


def assert_identical(ours, theirs):
    assert ours.dtype == np.float32 and theirs.dtype == np.float32
    assert ours.shape == theirs.shape
    assert ours.flags.c_contiguous
    if not np.array_equal(ours, theirs):
        diff = np.abs(ours.astype(np.float64) - theirs)
        pytest.fail(f"not bit-identical: {np.count_nonzero(diff)} values differ, max {diff.max()}")


# ----------------------------------------------------------------------------- real images
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bit_identical_on_shared_images(name, shared_images):
    family, config = CONFIGS[name]
    ours = ImageProcessor.from_config(config, family, image_size=256)
    theirs = hf_processor(family, config)
    for path in shared_images:
        assert_identical(ours(path), hf_pixels(theirs, path))


def test_bit_identical_shared_checkpoint_configs(shared_dir, shared_images):
    configs = sorted((shared_dir / "checkpoints").glob("*/preprocessor_config.json"))
    assert len(configs) >= 3
    for cfg_path in configs:
        config = json.loads(cfg_path.read_text())
        family = json.loads((cfg_path.parent / "config.json").read_text())["model_type"]
        ours = ImageProcessor.from_config(config, family, image_size=224)
        theirs = hf_processor(family, config)
        for path in shared_images:
            assert_identical(ours(path), hf_pixels(theirs, path))


@pytest.mark.parametrize("family,image_size", [("mobilevit", 256), ("mobilevitv2", 256),
                                               ("mobilenet_v2", 224), ("mobilenet_v2", 513)])
def test_no_config_uses_hub_convention(family, image_size, shared_images):
    ours = ImageProcessor.from_config(None, family, image_size=image_size)
    assert ours.size == {"shortest_edge": image_size + 32}
    assert ours.crop_size == {"height": image_size, "width": image_size}
    assert ours.resample == 2
    theirs = hf_processor(family, {"size": {"shortest_edge": image_size + 32}, "resample": 2,
                                   "crop_size": {"height": image_size, "width": image_size}})
    for path in shared_images[:6]:
        assert_identical(ours(path), hf_pixels(theirs, path))


def test_batch_of_mixed_inputs(shared_images):
    family, config = CONFIGS["mobilevit-hub-256"]
    ours = ImageProcessor.from_config(config, family, 256)
    paths = shared_images[:3]
    with Image.open(paths[1]) as pil:
        mixed = [str(paths[0]), pil, load_image(paths[2])]
        got = ours(mixed)
    assert got.shape == (3, 3, 256, 256)
    assert_identical(got, hf_pixels(hf_processor(family, config), paths))
    assert_identical(ours.preprocess(paths[0]), got[:1])


# ------------------------------------------------------------------------ synthetic images
def _random_rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("hw", [(1, 37), (29, 1), (7, 300), (300, 7), (97, 61), (61, 97),
                                (256, 256), (289, 288)])
@pytest.mark.parametrize("name", ["mobilevit-hub-256", "mobilenet_v2-crop-larger-than-image",
                                  "mobilevit-crop-larger-normalize-ignored"])
def test_odd_sizes(hw, name):
    family, config = CONFIGS[name]
    rgb = _random_rgb(*hw, seed=hw[0] * 1000 + hw[1])
    ours = ImageProcessor.from_config(config, family, 256)
    theirs = hf_processor(family, config)
    assert_identical(ours(rgb), hf_pixels(theirs, Image.fromarray(rgb)))
    assert_identical(ours(Image.fromarray(rgb)), hf_pixels(theirs, Image.fromarray(rgb)))


def _mode_image(mode, seed=0):
    rng = np.random.default_rng(seed)
    h, w = 45, 70
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
    if mode == "P":
        return Image.fromarray(_random_rgb(h, w, seed)).convert("P", palette=Image.Palette.ADAPTIVE)
    if mode == "CMYK":
        return Image.fromarray(_random_rgb(h, w, seed)).convert("CMYK")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 600, (h, w), dtype=np.uint16))   # > 255 clips
    if mode == "LA":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).convert("LA")
    if mode == "F":
        return Image.fromarray(rng.uniform(-10, 300, (h, w)).astype(np.float32))
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "F"])
def test_pil_modes_match_transformers_load_image(mode):
    im = _mode_image(mode)
    assert im.mode == mode
    rgb = load_image(im)
    assert rgb.dtype == np.uint8 and rgb.shape == (45, 70, 3) and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, np.asarray(hf_load_image(im)))
    family, config = CONFIGS["mobilenet_v2-legacy-int-sizes"]
    assert_identical(ImageProcessor.from_config(config, family, 224)(im),
                     hf_pixels(hf_processor(family, config), im))


def test_mode_files_round_trip(tmp_path):
    for mode, ext in [("L", "png"), ("RGBA", "png"), ("P", "gif"), ("CMYK", "jpg"),
                      ("I;16", "png"), ("P", "png")]:
        path = tmp_path / f"img_{mode.replace(';', '')}.{ext}"
        _mode_image(mode, seed=3).save(path)
        np.testing.assert_array_equal(load_image(path), np.asarray(_hf_load(str(path))))
        np.testing.assert_array_equal(load_image(str(path)), load_image(path))


def test_uint8_arrays():
    rng = np.random.default_rng(9)
    gray = rng.integers(0, 256, (33, 50), dtype=np.uint8)
    rgba = rng.integers(0, 256, (33, 50, 4), dtype=np.uint8)
    rgb = rng.integers(0, 256, (33, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(gray),
                                  np.asarray(hf_load_image(Image.fromarray(gray))))
    np.testing.assert_array_equal(load_image(gray[:, :, None]), np.repeat(gray[:, :, None], 3, 2))
    np.testing.assert_array_equal(load_image(rgba),
                                  np.asarray(hf_load_image(Image.fromarray(rgba))))
    np.testing.assert_array_equal(load_image(rgb), rgb)
    strided = np.asfortranarray(rgb)[:, ::2]
    out = load_image(strided)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb[:, ::2])


def test_exif_orientation_applied(tmp_path):
    # 60 wide x 30 tall: left half red, right half blue; EXIF 6 = rotate 90 deg clockwise to view
    a = np.zeros((30, 60, 3), dtype=np.uint8)
    a[:, :30] = (255, 0, 0)
    a[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(a).save(path, exif=exif, quality=95)
    with Image.open(path) as stored:
        assert stored.size == (60, 30) and stored.getexif()[0x0112] == 6
    rgb = load_image(path)
    assert rgb.shape == (60, 30, 3)                       # upright: 30 wide x 60 tall
    top, bottom = rgb[:25].reshape(-1, 3).mean(0), rgb[35:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50                   # the left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 50
    with Image.open(path) as im:
        np.testing.assert_array_equal(rgb, np.asarray(ImageOps.exif_transpose(im).convert("RGB")))
        np.testing.assert_array_equal(load_image(im), rgb)   # PIL input: EXIF applied too
    family, config = CONFIGS["mobilevit-hub-256"]
    assert_identical(ImageProcessor.from_config(config, family, 256)(path),
                     hf_pixels(hf_processor(family, config), str(path)))


# ------------------------------------------------------------------------------- errors
def test_image_errors_name_the_input(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match=r"nope\.jpg: image file not found"):
        load_image(missing)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg at all" * 10)
    with pytest.raises(ImageError, match=r"garbage\.jpg: not an image file"):
        load_image(str(garbage))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ImageError, match=r"notes\.txt: not an image file"):
        load_image(text)
    good = tmp_path / "good.png"
    Image.fromarray(_random_rgb(64, 64, 1)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match=r"truncated\.png: unreadable or corrupt image file"):
        load_image(truncated)
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="URLs are not supported"):
        load_image("https://example.com/cat.jpg")
    with pytest.raises(ImageError, match="dtype float32.*expected dtype uint8"):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageError, match=r"shape \(4, 4, 2\).*expected shape \(H, W, 3\)"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError, match=r"shape \(1, 4, 4, 3\)"):
        load_image(np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ImageError, match="zero-sized"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageError, match="zero-sized"):
        load_image(Image.new("RGB", (0, 3)))
    with pytest.raises(ImageError, match="unsupported image input int"):
        load_image(5)
    assert issubclass(ImageError, ValueError)
    proc = ImageProcessor.from_config(None, "mobilenet_v2", 224)
    with pytest.raises(ImageError, match=r"nope\.jpg"):
        proc([good, missing])


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown model family 'resnet'"):
        ImageProcessor.from_config({}, "resnet", 224)
    with pytest.raises(ConfigError, match="size must be"):
        ImageProcessor.from_config({"size": {"longest_edge": 300}}, "mobilevit", 256)
    with pytest.raises(ConfigError, match="crop_size needs 'height' and 'width'"):
        ImageProcessor.from_config({"crop_size": {"shortest_edge": 300}}, "mobilevit", 256)
    with pytest.raises(ConfigError, match="resample must be a PIL filter number"):
        ImageProcessor.from_config({"resample": 9}, "mobilenet_v2", 224)
    with pytest.raises(ConfigError, match="image_mean must be"):
        ImageProcessor.from_config({"image_mean": [0.5, 0.5]}, "mobilenet_v2", 224)
    with pytest.raises(ConfigError, match="do_resize must be true/false"):
        ImageProcessor.from_config({"do_resize": "yes"}, "mobilenet_v2", 224)
    with pytest.raises(ConfigError, match="positive integer no larger than 8192"):
        ImageProcessor.from_config({"size": {"shortest_edge": 0}}, "mobilenet_v2", 224)
    no_crop = ImageProcessor.from_config({"do_center_crop": False}, "mobilenet_v2", 224)
    with pytest.raises(InputError, match="different sizes"):
        no_crop([_random_rgb(30, 40, 0), _random_rgb(40, 30, 0)])


def test_legacy_flip_key_is_ignored_and_to_dict_round_trips():
    family, config = CONFIGS["mobilevit-legacy-keys"]
    legacy = dict(config, do_flip_channels=False)
    p = ImageProcessor.from_config(legacy, family, 256)
    assert p.do_flip_channel_order is True                 # as transformers: legacy key ignored
    assert p.size == {"shortest_edge": 288} and p.crop_size == {"height": 256, "width": 256}
    d = p.to_dict()
    assert d["image_processor_type"] == "MobileViTImageProcessor"
    assert "do_flip_channels" not in d and "feature_extractor_type" not in d
    json.dumps(d)                                          # serialisable
    again = ImageProcessor.from_config(d, family, 999)
    assert again.to_dict() == d
    rgb = _random_rgb(120, 170, 5)
    assert_identical(again(rgb), p(rgb))
    assert_identical(again(rgb), hf_pixels(hf_processor(family, d), Image.fromarray(rgb)))
    assert_identical(p(rgb), hf_pixels(hf_processor(family, legacy), Image.fromarray(rgb)))


def test_mobilevit_values_are_bgr_in_unit_range():
    rgb = np.zeros((300, 300, 3), dtype=np.uint8)
    rgb[..., 0] = 255                                      # pure red
    p = ImageProcessor.from_config(CONFIGS["mobilevit-hub-256"][1], "mobilevit", 256)
    x = p(rgb)
    assert x.shape == (1, 3, 256, 256)
    assert np.all(x[0, 2] == 1.0) and np.all(x[0, :2] == 0.0)       # red lands in channel 2
    m = ImageProcessor.from_config(None, "mobilenet_v2", 224)(rgb)
    assert np.all(m[0, 0] == 1.0) and np.all(m[0, 1:] == -1.0)      # RGB, (x - 0.5) / 0.5


# ------------------------------------------------------------------------- segmentation
@pytest.mark.parametrize("family,config,output_stride", [
    ("mobilenet_v2", {"size": {"shortest_edge": 545}, "crop_size": 513}, 16),
    ("mobilenet_v2", {"size": {"shortest_edge": 545}, "crop_size": 513}, 8),
    ("mobilevit", CONFIGS["mobilevitv2-deeplab-512"][1], 16),
    ("mobilevitv2", CONFIGS["mobilevitv2-deeplab-512"][1], 16),
])
@pytest.mark.parametrize("hw", [(480, 640), (929, 512), (343, 512), (20, 30), (513, 513)])
def test_prepare_for_segmentation_sizes_and_values(family, config, output_stride, hw):
    p = ImageProcessor.from_config(config, family, 512)
    rgb = _random_rgb(*hw, seed=hw[0] + hw[1])
    x, meta = p.prepare_for_segmentation(rgb, output_stride=output_stride)
    assert isinstance(meta, SegmentationMeta)
    h, w = meta.input_size
    assert meta.original_size == hw and meta.output_stride == output_stride
    assert x.shape == (1, 3, h, w) and x.dtype == np.float32 and x.flags.c_contiguous
    crop = max(p.crop_size.values())
    if family == "mobilenet_v2":
        assert (h - 1) % output_stride == 0 and (w - 1) % output_stride == 0
        assert h >= output_stride + 1 and w >= output_stride + 1
    else:
        assert h % 32 == 0 and w % 32 == 0
        assert min(h, w) >= (64 if family == "mobilevitv2" else 32)
    grid = output_stride if family == "mobilenet_v2" else 32
    long_in, long_out = max(hw), (h if hw[0] >= hw[1] else w)
    assert abs(long_out - crop) <= grid / 2 + 1                    # longer edge ~ crop size
    if min(hw) * crop / long_in > 2 * grid:                        # aspect ratio kept (to grid)
        assert abs(h / w - hw[0] / hw[1]) < grid / min(h, w) * 1.5
    # values: exactly transformers resizing the whole image to (h, w), without crop
    theirs = hf_processor(family, dict(config, size={"height": h, "width": w},
                                       do_center_crop=False))
    assert_identical(x, hf_pixels(theirs, Image.fromarray(rgb)))


def test_prepare_for_segmentation_native_and_explicit_size():
    p = ImageProcessor.from_config(None, "mobilenet_v2", 513)
    rgb = _random_rgb(513, 385, 1)
    x, meta = p.prepare_for_segmentation(rgb, size="native", output_stride=16)
    assert meta.input_size == (513, 385)                    # already on the OS*k+1 grid
    want = ((rgb.astype(np.float64) / 255).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
    np.testing.assert_array_equal(x[0], want.transpose(2, 0, 1))
    x2, meta2 = p.prepare_for_segmentation(rgb, size=257, output_stride=16)
    assert meta2.input_size == (257, 193)
    v = ImageProcessor.from_config(None, "mobilevit", 256)
    _, meta3 = v.prepare_for_segmentation(_random_rgb(100, 700, 2), size="native",
                                          output_stride=16)
    assert meta3.input_size == (96, 704)
    with pytest.raises(InputError, match="size must be"):
        p.prepare_for_segmentation(rgb, size="big", output_stride=16)
    with pytest.raises(InputError, match="output_stride"):
        p.prepare_for_segmentation(rgb, output_stride=0)


def test_pil_images_are_recognised_without_importing_pillow(monkeypatch):
    """images.is_pil_image: Pillow is imported only when an image needs it, and a decoding
    thread may ask while another thread is still importing it."""
    import sys
    import types

    from tinymvit.images import is_pil_image
    assert is_pil_image(Image.new("RGB", (2, 3)))
    assert not is_pil_image(np.zeros((3, 2, 3), np.uint8)) and not is_pil_image("a.png")
    monkeypatch.setitem(sys.modules, "PIL.Image", types.ModuleType("PIL.Image"))  # importing
    assert not is_pil_image(np.zeros((3, 2, 3), np.uint8))
    monkeypatch.delitem(sys.modules, "PIL.Image")
    assert not is_pil_image(object())


@pytest.mark.parametrize("config, want", [
    (None, (224, 224)),                                                   # hub convention
    ({"size": {"shortest_edge": 256}, "crop_size": {"height": 200, "width": 180}}, (200, 180)),
    ({"do_center_crop": False, "size": {"height": 120, "width": 160}}, (120, 160)),
    ({"do_center_crop": False, "size": {"shortest_edge": 256}}, None),   # keeps aspect ratio
    ({"do_center_crop": False, "do_resize": False}, None),
])
def test_output_size_is_known_only_where_fixed(config, want, shared_images):
    proc = ImageProcessor.from_config(config, "mobilevit", 224)
    assert proc.output_size() == want
    if want is not None:                      # what preprocess() really makes
        assert proc(shared_images[0]).shape[2:] == want

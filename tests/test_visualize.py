"""Palette, label PNGs, overlays and class fractions."""
import numpy as np
import pytest
from PIL import Image

from tinymvit.visualize import class_fractions, overlay, palette, save_label_png

VOC = {0: "background", 3: "bird", 8: "cat", 15: "person"}


def test_voc_palette_first_entries():
    p = palette(21)
    assert p.dtype == np.uint8 and p.shape == (21, 3)
    np.testing.assert_array_equal(p[:8], [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                                          [0, 0, 128], [128, 0, 128], [0, 128, 128],
                                          [128, 128, 128]])
    np.testing.assert_array_equal(p[8], [64, 0, 0])
    np.testing.assert_array_equal(p[15], [192, 128, 128])          # person
    np.testing.assert_array_equal(p[20], [0, 64, 128])             # tv/monitor
    np.testing.assert_array_equal(palette(256)[255], [224, 224, 192])  # VOC "void" colour


def test_palette_is_unique_and_extends_beyond_256():
    p256, p1000 = palette(256), palette(1000)
    assert len({tuple(c) for c in p256}) == 256
    assert len({tuple(c) for c in p1000}) == 1000
    np.testing.assert_array_equal(p1000[:256], p256)
    np.testing.assert_array_equal(palette(1000), p1000)             # deterministic
    assert palette(0).shape == (0, 3)


def test_label_png_round_trip_palette_mode(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 21, size=(37, 53)).astype(np.int64)
    path = tmp_path / "labels.png"
    save_label_png(labels, path, 21)
    with Image.open(path) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.array(im), labels)
        pal = np.array(im.getpalette()[: 21 * 3]).reshape(21, 3)
        np.testing.assert_array_equal(pal, palette(21))
        np.testing.assert_array_equal(np.array(im.convert("RGB")), palette(21)[labels])


def test_label_png_round_trip_many_classes(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 1000, size=(20, 30))
    path = tmp_path / "labels1000.png"
    save_label_png(labels, path, 1000)
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.array(im), labels)


def test_label_png_rejects_bad_labels(tmp_path):
    with pytest.raises(ValueError, match="not below num_classes=21"):
        save_label_png(np.full((4, 4), 21), tmp_path / "x.png", 21)
    with pytest.raises(ValueError, match=">= 0"):
        save_label_png(np.full((4, 4), -1), tmp_path / "x.png", 21)
    with pytest.raises(ValueError, match="2-D integer"):
        save_label_png(np.zeros((4, 4), np.float32), tmp_path / "x.png", 21)


def _scene(h=200, w=300):
    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    labels = np.zeros((h, w), np.int64)
    labels[120:, 200:] = 15          # person, bottom right
    labels[150:, :60] = 3            # bird, bottom left
    return photo, labels


@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
def test_overlay_blends_palette_colours(alpha):
    photo, labels = _scene()
    im = overlay(photo, labels, VOC, alpha=alpha)
    assert isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (300, 200)
    out = np.asarray(im).astype(np.float64)
    p = palette(16).astype(np.float64)
    for k, (ys, xs) in {15: (slice(120, None), slice(200, None)),
                        3: (slice(150, None), slice(0, 60))}.items():
        want = (1 - alpha) * photo[ys, xs] + alpha * p[k]
        assert np.max(np.abs(out[ys, xs] - want)) <= 0.5 + 1e-9
    # un-tinted background far from the legend
    np.testing.assert_array_equal(out[60:110, 150:290], photo[60:110, 150:290])


def test_overlay_legend_lists_only_present_classes():
    photo, labels = _scene()
    im = overlay(photo, labels, VOC)
    legend = im.info["legend"]
    assert [e["index"] for e in legend] == [15, 3]          # by area, background not listed
    assert [e["label"] for e in legend] == ["person", "bird"]
    assert legend[0]["color"] == (192, 128, 128)
    assert im.info["legend_position"] == "inside"
    out = np.asarray(im)
    assert not np.array_equal(out[:40, :80], photo[:40, :80])   # the box is drawn top-left
    assert np.any(np.all(out[:40, :80] == (192, 128, 128), axis=-1))  # person swatch drawn
    bare = overlay(photo, np.zeros_like(labels), VOC)
    assert bare.info["legend"] == [] and bare.info["legend_position"] is None
    np.testing.assert_array_equal(np.asarray(bare), photo)


def test_overlay_small_image_gets_legend_strip_below():
    photo, labels = _scene(24, 30)
    labels[:] = 8
    labels[:5, :5] = 15
    im = overlay(photo, labels, VOC, alpha=0.4)
    assert im.info["legend_position"] == "below"
    assert [e["label"] for e in im.info["legend"]] == ["cat", "person"]
    assert im.size[1] > 24 and im.size[0] >= 30
    out = np.asarray(im).astype(np.float64)
    want = 0.6 * photo[10:, 10:] + 0.4 * palette(9)[8]
    assert np.max(np.abs(out[10:24, 10:30] - want)) <= 0.5 + 1e-9


def test_overlay_tints_class_zero_when_not_background():
    photo, labels = _scene(100, 120)
    im = overlay(photo, labels, {0: "road", 3: "bird", 15: "person"}, alpha=0.5)
    out = np.asarray(im).astype(np.float64)
    want = 0.5 * photo[50:100, 60:110] + 0.5 * 0.0                 # palette[0] is black
    assert np.max(np.abs(out[50:100, 60:110] - want)) <= 0.5 + 1e-9
    assert [e["label"] for e in im.info["legend"]][0] == "road"


def test_overlay_validates():
    photo, labels = _scene(20, 20)
    with pytest.raises(ValueError, match="does not match"):
        overlay(photo, labels[:10], VOC)
    with pytest.raises(ValueError, match="alpha"):
        overlay(photo, labels, VOC, alpha=1.5)


def test_class_fractions():
    labels = np.zeros((10, 10), np.int64)
    labels[:3] = 15
    labels[3:5, :5] = 3
    labels[9, 9] = 20
    fr = class_fractions(labels, VOC)
    assert [f["index"] for f in fr] == [0, 15, 3, 20]
    assert [f["label"] for f in fr] == ["background", "person", "bird", "LABEL_20"]
    np.testing.assert_allclose([f["fraction"] for f in fr], [0.59, 0.30, 0.10, 0.01])
    assert sum(f["fraction"] for f in fr) == pytest.approx(1.0)
    tie = class_fractions(np.array([[2, 1], [1, 2]]), {"1": "one", "2": "two"})
    assert [f["index"] for f in tie] == [1, 2]

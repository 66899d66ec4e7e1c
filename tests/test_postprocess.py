"""Post-processing vs transformers / torch, and the exact geometry of logits_to_image_labels."""
from types import SimpleNamespace

import numpy as np
import pytest

from tinymvit.errors import InputError
from tinymvit.kernels.resize import resize_bilinear_mapped_reference
from tinymvit.postprocess import (
    label_name,
    logits_to_image_labels,
    post_process_semantic_segmentation,
    softmax,
    top_k,
)
from tinymvit.preprocess import ImageProcessor, SegmentationMeta

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["mobilevit", "mobilenet_v2"])
def hf_processor(request):
    cls = {"mobilevit": transformers.MobileViTImageProcessorPil,
           "mobilenet_v2": transformers.MobileNetV2ImageProcessorPil}[request.param]
    return cls()


def test_semantic_segmentation_with_target_sizes_matches_transformers(hf_processor):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((3, 21, 33, 33)) * 4).astype(np.float32)
    sizes = [(513, 513), (480, 640), (20, 17)]
    ours = post_process_semantic_segmentation(logits, target_sizes=sizes, return_scores=True)
    theirs = hf_processor.post_process_semantic_segmentation(
        SimpleNamespace(logits=torch.from_numpy(logits)), target_sizes=sizes,
        return_segmentation_scores=True)
    assert len(ours) == 3
    for (labels, scores), ref, size in zip(ours, theirs, sizes):
        ref_scores = ref.segmentation_scores.numpy()
        assert scores.shape == ref_scores.shape == (21, *size)
        assert np.max(np.abs(scores - ref_scores)) <= 1e-5
        assert labels.dtype == np.int64 and labels.shape == size
        np.testing.assert_array_equal(labels, ref.segmentation.numpy())
    plain = post_process_semantic_segmentation(logits, target_sizes=sizes)
    for labels, (ref_labels, _) in zip(plain, ours):
        np.testing.assert_array_equal(labels, ref_labels)


def test_semantic_segmentation_without_sizes_is_raw_argmax(hf_processor):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 5, 9, 12)).astype(np.float32)
    logits[0, 3, 0, 0] = logits[0, 1, 0, 0] = 50.0           # tie: lowest index wins
    ours = post_process_semantic_segmentation(logits)
    theirs = hf_processor.post_process_semantic_segmentation(
        SimpleNamespace(logits=torch.from_numpy(logits)))
    for a, b in zip(ours, theirs):
        assert a.dtype == np.int64 and a.shape == (9, 12)
        np.testing.assert_array_equal(a, b.numpy())
    assert ours[0][0, 0] == 1


def test_semantic_segmentation_validates_inputs():
    logits = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(InputError, match="as many target sizes as the batch dimension"):
        post_process_semantic_segmentation(logits, target_sizes=[(8, 8)])
    with pytest.raises(InputError, match=r"\(N, C, h, w\)"):
        post_process_semantic_segmentation(logits[0])


def test_softmax():
    rng = np.random.default_rng(2)
    z = (rng.standard_normal((4, 1001)) * 6).astype(np.float32)
    p = softmax(z)
    assert p.dtype == np.float32 and p.shape == z.shape
    ref = torch.softmax(torch.from_numpy(z).double(), dim=-1).numpy()
    assert np.max(np.abs(p - ref)) < 1e-7
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    big = softmax(np.array([1000.0, 1001.0, -1e30], dtype=np.float32))
    np.testing.assert_allclose(big, [1 / (1 + np.e), np.e / (1 + np.e), 0.0], rtol=1e-6)
    cols = softmax(z.T, axis=0)
    np.testing.assert_array_equal(cols, p.T)


def test_top_k():
    probs = np.array([0.1, 0.3, 0.05, 0.3, 0.25], dtype=np.float32)
    out = top_k(probs, 3, {"0": "zero", "1": "one", "3": "three"})
    assert [r["index"] for r in out] == [1, 3, 4]             # tie 0.3/0.3: lower index first
    assert [r["label"] for r in out] == ["one", "three", "LABEL_4"]
    assert out[0]["score"] == pytest.approx(0.3) and isinstance(out[0]["score"], float)
    assert all(isinstance(r["index"], int) for r in out)
    assert [r["label"] for r in top_k(probs, 2, {1: "one", 3: "three"})] == ["one", "three"]
    assert len(top_k(probs, 10)) == 5
    assert top_k(probs, 10)[-1] == {"label": "LABEL_2", "score": pytest.approx(0.05), "index": 2}
    with pytest.raises(InputError):
        top_k(probs, 0)
    with pytest.raises(InputError):
        top_k(probs[None], 1)
    assert label_name(None, 7) == "LABEL_7"


# ------------------------------------------------------------------- logits -> image pixels
def test_logits_to_image_labels_matches_reference():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((1, 9, 7, 21)).astype(np.float32)
    meta = SegmentationMeta(original_size=(151, 120), input_size=(129, 97), output_stride=16)
    got = logits_to_image_labels(logits, meta, 16)
    assert got.shape == (151, 120) and got.dtype == np.int64
    H, W = meta.original_size
    h, w = meta.input_size
    ref = resize_bilinear_mapped_reference(
        logits, (H, W), h / (H * 16), (0.5 * h / H - 0.5) / 16,
        w / (W * 16), (0.5 * w / W - 0.5) / 16).argmax(-1)
    assert np.mean(got != ref) < 1e-3                          # near-ties may flip at 1 ulp
    np.testing.assert_array_equal(got, logits_to_image_labels(logits, meta))  # OS from meta


@pytest.mark.parametrize("family,os_", [("mobilenet_v2", 16), ("mobilenet_v2", 8),
                                        ("mobilevit", 16), ("mobilevitv2", 32)])
def test_logits_to_image_labels_geometry_is_exact(family, os_):
    """Logit pixel i sits on model-input pixel OS*i; model input y_in = (v+0.5)*h/H - 0.5.

    Logits that are a linear function f of their input position (class 1) against a
    constant threshold (class 0) are interpolated exactly, so every original pixel
    must be labelled f(y_in(v), x_in(u)) > t.
    """
    H, W = 373, 558
    proc = ImageProcessor.from_config(None, family, 512)
    h, w = proc.segmentation_input_size(H, W, output_stride=os_)
    hl = -(-h // os_)                                          # ceil: logits size
    wl = -(-w // os_)
    yi = os_ * np.arange(hl, dtype=np.float64)[:, None]        # input position of logit rows
    xi = os_ * np.arange(wl, dtype=np.float64)[None, :]

    def f(y, x):
        return 0.7 * y - 0.4 * x

    t = 40.0
    logits = np.zeros((1, hl, wl, 2), np.float32)
    logits[0, :, :, 0] = t
    logits[0, :, :, 1] = f(yi, xi)
    meta = SegmentationMeta((H, W), (h, w), os_)
    got = logits_to_image_labels(logits, meta, os_)
    y_in = (np.arange(H) + 0.5) * h / H - 0.5
    x_in = (np.arange(W) + 0.5) * w / W - 0.5
    inside = (((y_in >= 0) & (y_in <= yi[-1, 0]))[:, None]
              & ((x_in >= 0) & (x_in <= xi[0, -1]))[None])
    value = f(y_in[:, None], x_in[None, :])
    clear = inside & (np.abs(value - t) > 1e-2)
    want = (value > t).astype(np.int64)
    assert clear.mean() > 0.8
    np.testing.assert_array_equal(got[clear], want[clear])
    # a half-pixel or one-stride error in the map would mislabel a band along the boundary:
    shifted = (f(y_in[:, None] + os_ / 2, x_in[None, :]) > t)
    assert np.any(shifted[clear] != want[clear].astype(bool))


def test_logits_to_image_labels_validates():
    meta = SegmentationMeta((10, 10), (17, 17), 16)
    with pytest.raises(InputError, match=r"\(1, h, w, C\)"):
        logits_to_image_labels(np.zeros((2, 2, 2, 3), np.float32), meta)

"""Bilinear resize kernels vs their NumPy references and vs torch.nn.functional.interpolate."""
import numpy as np
import pytest

from helpers import rel_err
from tinymvit.kernels.policy import KernelArgumentError

from tinymvit.kernels.resize import (
    resize_bilinear,
    resize_bilinear_mapped,
    resize_bilinear_mapped_argmax,
    resize_bilinear_mapped_argmax_reference,
    resize_bilinear_mapped_reference,
    resize_bilinear_reference,
)

torch = pytest.importorskip("torch")

SIZES = [
    # (H, W) -> (Ho, Wo)
    ((65, 65), (513, 513)),      # DeepLab logits -> image
    ((32, 32), (500, 375)),      # non-integer up-sampling
    ((1, 7), (5, 13)),           # 1xN input
    ((9, 1), (1, 4)),            # to a single row
    ((17, 23), (8, 11)),         # down-sampling
    ((100, 80), (33, 79)),       # down-sampling, odd
    ((8, 8), (16, 16)),          # exact factor 2 (MobileViT v1 unfold sizes)
    ((13, 20), (13, 20)),        # identity
    ((7, 5), (20, 3)),           # up in one axis, down in the other
    ((1, 1), (6, 4)),            # a single pixel
]


def _torch_resize(x, size, align_corners):
    # NCHW-contiguous, like a model's logits (a channels-last view takes another ATen path)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()        # (B, C, H, W)
    r = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=align_corners)
    return r.permute(0, 2, 3, 1).contiguous().numpy()               # NHWC


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("src,dst", SIZES)
def test_resize_bilinear_matches_torch_and_reference(src, dst, align_corners):
    rng = np.random.default_rng(hash((src, dst)) % 2**32)
    C = int(rng.integers(1, 6))
    x = rng.standard_normal((2, *src, C)).astype(np.float32) * 10
    out = np.full((2, *dst, C), np.nan, dtype=np.float32)
    got = resize_bilinear(x, out, align_corners=align_corners)
    assert got is out
    want = _torch_resize(x, dst, align_corners)
    ref = resize_bilinear_reference(x, dst, align_corners=align_corners)
    assert got.shape == want.shape == ref.shape
    assert rel_err(got, want) <= 1e-6
    assert rel_err(ref, want) <= 1e-6
    assert rel_err(got, ref) <= 1e-6


def test_resize_bilinear_random_shapes():
    rng = np.random.default_rng(1)
    for _ in range(25):
        H, W = rng.integers(1, 70, size=2)
        Ho, Wo = rng.integers(1, 140, size=2)
        C = int(rng.integers(1, 40))
        x = rng.uniform(-50, 50, size=(1, H, W, C)).astype(np.float32)
        out = np.empty((1, Ho, Wo, C), dtype=np.float32)
        resize_bilinear(x, out)
        assert rel_err(out, _torch_resize(x, (int(Ho), int(Wo)), False)) <= 1e-6


def test_single_rounding_source_coordinate_matters():
    """65 -> 513 (DeepLab logits to image size) is bit-identical to torch on NCHW logits.

    It needs both the single-rounding source coordinate and ATen's fused multiply-adds;
    rounding the coordinate twice in float32 is off by up to ~3e-5 here.
    """
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 65, 65, 21)).astype(np.float32) * 8
    out = np.empty((1, 513, 513, 21), dtype=np.float32)
    resize_bilinear(x, out)
    np.testing.assert_array_equal(out, _torch_resize(x, (513, 513), False))
    ramp = np.ascontiguousarray(np.broadcast_to(
        np.arange(65, dtype=np.float32)[None, :, None, None], (1, 65, 65, 1)))
    out1 = np.empty((1, 513, 513, 1), dtype=np.float32)
    resize_bilinear(ramp, out1)
    np.testing.assert_array_equal(out1, _torch_resize(ramp, (513, 513), False))
    # negative control: the two-rounding float32 coordinate is measurably different
    s = np.float32(65) / np.float32(513)
    two = np.maximum(s * (np.arange(513, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    one = np.maximum(np.float64(s) * (np.arange(513) + 0.5) - 0.5, 0).astype(np.float32)
    assert np.any(two != one)


def test_resize_rejects_bad_buffers():
    x = np.zeros((1, 4, 4, 2), dtype=np.float64)
    with pytest.raises(KernelArgumentError):
        resize_bilinear(x, np.zeros((1, 8, 8, 2), np.float32))
    with pytest.raises(KernelArgumentError):
        resize_bilinear(np.zeros((1, 4, 4, 2), np.float32), np.zeros((1, 8, 8, 3), np.float32))


@pytest.mark.parametrize("src,dst,sy,oy,sx,ox", [
    ((33, 33), (40, 57), 33 / (40 * 16) * 16 / 1, -0.3, 0.55, 0.1),
    ((17, 12), (23, 31), 0.5, -0.25, 0.37, 0.0),
    ((5, 5), (12, 12), 1.0, -3.0, 2.0, 1.0),    # coordinates clamped at both ends
    ((1, 9), (4, 9), 0.7, 0.2, 1.0, 0.0),       # single-row input
])
def test_resize_bilinear_mapped_matches_reference(src, dst, sy, oy, sx, ox):
    rng = np.random.default_rng(7)
    C = 21
    x = rng.standard_normal((1, *src, C)).astype(np.float32)
    out = np.empty((1, *dst, C), dtype=np.float32)
    resize_bilinear_mapped(x, out, sy, oy, sx, ox)
    ref = resize_bilinear_mapped_reference(x, dst, sy, oy, sx, ox)
    assert rel_err(out, ref) <= 1e-6


def test_resize_bilinear_mapped_equals_torch_half_pixel_map():
    """With scale=in/out and offset=0.5*scale-0.5 the mapped form is torch's align_corners=False."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 20, 30, 4)).astype(np.float32)
    Ho, Wo = 47, 71
    out = np.empty((1, Ho, Wo, 4), dtype=np.float32)
    sy, sx = 20 / Ho, 30 / Wo
    resize_bilinear_mapped(x, out, sy, 0.5 * sy - 0.5, sx, 0.5 * sx - 0.5)
    assert rel_err(out, _torch_resize(x, (Ho, Wo), False)) <= 2e-6


def test_resize_bilinear_mapped_hits_grid_points_exactly():
    """Integer source coordinates reproduce the input values exactly."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 6, 7, 3)).astype(np.float32)
    out = np.empty((1, 11, 13, 3), dtype=np.float32)
    resize_bilinear_mapped(x, out, 0.5, 0.0, 0.5, 0.0)
    np.testing.assert_array_equal(out[:, ::2, ::2], x)


def test_resize_bilinear_mapped_argmax():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 9, 7, 21)).astype(np.float32)
    x[0, :, :, 5] = x[0, :, :, 2] = 9.0                 # exact ties everywhere: lowest index wins
    Ho, Wo = 40, 31
    args = (0.21, -0.1, 0.2, -0.05)
    labels = np.full((2, Ho, Wo), -1, dtype=np.int64)
    got = resize_bilinear_mapped_argmax(x, labels, *args)
    assert got is labels
    assert np.all(got[0] == 2)
    ref = resize_bilinear_mapped_argmax_reference(x, (Ho, Wo), *args)
    assert np.mean(got != ref) < 2e-3                   # float32 vs float64 blend: near-ties only
    scores = np.empty((2, Ho, Wo, 21), dtype=np.float32)
    resize_bilinear_mapped(x, scores, *args)
    assert np.mean(got != scores.argmax(-1)) < 2e-3    # same maths, other rounding order
    big = np.empty((1, 3000, 4000), dtype=np.int64)      # a 12-megapixel label map
    y = np.linspace(-1, 1, 25, dtype=np.float32)[:, None] * np.ones((1, 33), np.float32)
    ramp = np.ascontiguousarray(np.stack([y, -y], axis=-1)[None])   # class 1 on top, 0 below
    resize_bilinear_mapped_argmax(ramp, big, 24 / 2999, 0.0, 32 / 3999, 0.0)
    rows = big[0, :, 0]
    assert np.all(big == rows[None, :, None]) and np.all(np.diff(rows) <= 0)
    assert rows[0] == 1 and rows[-1] == 0
    assert 1490 <= np.argmin(rows) <= 1510                # flips in the middle

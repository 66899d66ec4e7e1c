"""Convolution kernel family: pointwise (1x1 / linear), depthwise, the fused inverted residual,
full kxk conv, batch norm.

Every Numba kernel is compared with its plain NumPy reference on many random
shapes (tails of the 4 x 16 register tiles, Cout = 1, K = 1, batch > 1, strides,
dilations larger than the map, symmetric and TF-"SAME" padding, every
activation, residual modes).  The references and the padding helpers are in
turn checked against PyTorch / transformers when those are installed.
"""
import numpy as np
import pytest

from helpers import randn, rel_err
from tinymvit.kernels import batchnorm, conv, depthwise, pointwise, simd
from tinymvit.kernels.activations import ACT_NONE, ACT_RELU, ACT_RELU6, ACT_SILU

ACTS = (ACT_NONE, ACT_RELU, ACT_RELU6, ACT_SILU)
TOL = 1e-5          # max |kernel - reference| relative to max |reference|


def pads_for(n, k, stride, dilation, tf):
    return conv.tf_same_pads(n, k, stride, dilation) if tf else conv.symmetric_pads(k, dilation)


def out_size(n, k, stride, dilation, tf):
    return conv.conv_out_size(n, k, stride, dilation, *pads_for(n, k, stride, dilation, tf))


# ------------------------------------------------------------------ pointwise
POINTWISE_SHAPES = [  # (leading dims of x, Cin, Cout)
    ((1,), 1, 1), ((1,), 512, 1000), ((3,), 7, 5), ((4,), 16, 16), ((5,), 33, 17),
    ((37,), 19, 33), ((64,), 64, 32), ((130,), 3, 48), ((2, 5, 7), 24, 40),
    ((1, 9, 11), 64, 130), ((2, 6, 6), 96, 257), ((257,), 128, 1), ((1, 16, 16), 32, 64),
    ((3, 2, 4, 5), 10, 31), ((600,), 1, 20),
    ((8,), 20, 40), ((9,), 33, 35), ((23,), 17, 64), ((2, 28), 24, 48),   # every tile height
]


@pytest.mark.parametrize("lead,cin,cout", POINTWISE_SHAPES)
def test_pointwise_matches_reference(lead, cin, cout):
    rng = np.random.default_rng(cin * 1000 + cout)
    x = randn(rng, (*lead, cin))                                        # (..., Cin)
    w = randn(rng, (cout, cin), scale=1 / np.sqrt(cin))                 # (Cout, Cin)
    b = randn(rng, (cout,), scale=0.5)
    wp = pointwise.prepare_pointwise_weight(w)
    for act in ACTS:
        for mode in ("none", "separate", "inplace"):
            res = randn(rng, (*lead, cout))
            if mode == "inplace":
                out = res.copy()
                residual = out                                        # residual is out
            else:
                out = np.full(lead + (cout,), np.nan, np.float32)
                residual = res if mode == "separate" else None
            got = pointwise.pointwise_conv(x, wp, b, act, out, residual)
            assert got is out
            ref = pointwise.pointwise_reference(x, w, b, act, None if mode == "none" else res)
            assert rel_err(out, ref) < TOL, (act, mode)


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_gemm_jobs_cover_every_row_once(threads):
    """However an m x n product is cut into jobs -- row chunks of q or q + 1 tiles, or
    groups of panels for few rows and many columns -- every output row and column is
    computed exactly once (the residual is out itself: a job run twice adds it twice)."""
    rng = np.random.default_rng(threads)
    for m in list(range(1, 40)) + [48, 49, 50, 64, 97, 196]:
        for cin, cout in ((8, 200), (40, 24), (320, 1280)):
            if cout == 1280 and m not in (1, 7, 49, 64):
                continue
            x = randn(rng, (m, cin))                                    # (M, Cin)
            w = randn(rng, (cout, cin), scale=1 / np.sqrt(cin))         # (Cout, Cin)
            b = randn(rng, (cout,))
            res = randn(rng, (m, cout))
            out = res.copy()
            pointwise.pointwise_conv(x, pointwise.prepare_pointwise_weight(w), b, ACT_NONE,
                                     out, out, threads=threads)
            ref = pointwise.pointwise_reference(x, w, b, ACT_NONE, res)
            assert rel_err(out, ref) < TOL, (m, cin, cout)


def test_gemm_plan_balances_few_rows():
    """49 rows (a 7 x 7 map) by 1280 columns at 2 threads: split by panels, two equal
    halves; 4096 rows: row chunks differing by at most one tile, the longer ones last."""
    MR, NR = pointwise.MR, pointwise.NR
    panels = -(-1280 // NR)
    mc, pg, jobs, big = pointwise.plan_jobs(49, 204, panels, 2)
    assert mc >= 49 and jobs * pg >= panels and (jobs // 2) * pg * 2 == panels
    mc, pg, jobs, big = pointwise.plan_jobs(4096, 256, 16, 2)
    chunks = jobs // -(-16 // pg)
    assert mc % MR == 0 and chunks % 2 == 0 and 0 <= big < chunks
    assert (chunks - big) * mc + big * (mc + MR) >= 4096 > (chunks - big) * mc + big * (mc + MR) - MR


def test_pointwise_weight_layouts_agree():
    rng = np.random.default_rng(7)
    w = randn(rng, (20, 9))
    assert np.array_equal(pointwise.prepare_pointwise_weight(w).panels,
                          pointwise.prepare_pointwise_weight(w[:, :, None, None]).panels)
    wp = pointwise.prepare_pointwise_weight(w).panels
    nr = simd.NR                                                      # panel width of this CPU
    panels = -(-20 // nr)
    assert wp.shape == (panels, 9, nr)                                # zero padded panels
    last = 20 - (panels - 1) * nr                                     # columns of the last one
    assert np.array_equal(wp[-1, :, last:], np.zeros((9, nr - last), np.float32))
    assert np.array_equal(wp[-1, :, :last], w[(panels - 1) * nr:].T)


@pytest.mark.parametrize("isa", ["avx2", "avx512", "generic"])
def test_tile_rows_and_heights(monkeypatch, isa):
    """Rows a 1x1 product's register tiles compute (AVX2 6-row, AVX-512 12-row tiles, the
    last rows by the lowest tile that holds them): the fusion decision
    (graph.FusedSeparable.fused) weighs the idle ones, the job split their cost."""
    _, mr, nv = simd.TILES[isa]
    heights = simd.HEIGHTS[isa]
    monkeypatch.setattr(pointwise, "MR", mr)
    monkeypatch.setattr(pointwise, "NV", nv)
    monkeypatch.setattr(pointwise, "TILE_HEIGHTS", heights)
    assert heights[-1] == mr and list(heights) == sorted(heights)
    assert all(h * nv >= 8 for h in heights[1:])   # enough FMA chains, but in the lowest
    for rows in range(1, 5 * mr):
        full, rem = divmod(rows, mr)
        last = min((h for h in heights if h >= rem), default=0) if rem else 0
        assert pointwise.tile_rows(rows) == full * mr + last, rows
        cost = max(last, 8 // nv) / mr if rem else 0   # (the lowest one: latency-bound)
        assert pointwise._tile_cost(rows) == pytest.approx(full + cost), rows
    if isa != "generic":
        assert pointwise.tile_rows(28) == 28       # MobileNetV2's 28 x 28 stage
        assert pointwise.tile_rows(64) == 64       # MobileViT's 64 x 64 stage


def test_pointwise_reference_is_plain_matmul():
    rng = np.random.default_rng(8)
    x, w, b = randn(rng, (6, 5)), randn(rng, (3, 5)), randn(rng, (3,))
    ref = pointwise.pointwise_reference(x, w, b, ACT_RELU, residual=np.ones((6, 3), np.float32))
    expect = np.maximum(x.astype(np.float64) @ w.T.astype(np.float64) + b, 0) + 1
    np.testing.assert_allclose(ref, expect, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ depthwise
DEPTHWISE_CASES = [  # (N, H, W, C, k, stride, dilation, tf_padding)
    (1, 8, 8, 16, 3, 1, 1, False), (1, 17, 13, 40, 3, 1, 1, True), (2, 16, 16, 64, 3, 2, 1, True),
    (1, 15, 9, 64, 3, 2, 1, True), (1, 15, 9, 24, 3, 2, 1, False), (1, 9, 9, 35, 3, 1, 4, False),
    (1, 5, 6, 16, 3, 1, 6, False), (1, 3, 3, 48, 3, 1, 12, True), (1, 8, 8, 21, 5, 2, 2, True),
    (1, 30, 30, 48, 3, 1, 1, False), (1, 31, 31, 32, 3, 2, 1, True), (2, 12, 20, 7, 3, 1, 2, True),
    (1, 4, 4, 1, 3, 1, 1, False), (1, 11, 23, 96, 5, 1, 1, False), (1, 33, 33, 80, 3, 1, 4, True),
    (1, 2, 2, 40, 3, 2, 1, True), (1, 1, 1, 16, 3, 1, 1, False), (3, 10, 10, 17, 1, 1, 1, False),
    # channel counts whose ring pixels are padded (depthwise.pixel_stride)
    (1, 7, 9, 128, 3, 2, 1, True), (2, 5, 6, 256, 3, 1, 2, False), (1, 6, 5, 512, 5, 1, 1, False),
]


@pytest.mark.parametrize("n,h,w,c,k,stride,dil,tf", DEPTHWISE_CASES)
def test_depthwise_matches_reference(n, h, w, c, k, stride, dil, tf):
    rng = np.random.default_rng(h * 100 + w * 10 + c)
    x = randn(rng, (n, h, w, c))                                        # (N, H, W, C)
    wt = randn(rng, (c, 1, k, k), scale=1 / k)                          # (C, 1, k, k)
    b = randn(rng, (c,), scale=0.5)
    wp = depthwise.prepare_depthwise_weight(wt)
    (top, _), (left, _) = pads_for(h, k, stride, dil, tf), pads_for(w, k, stride, dil, tf)
    ho, wo = out_size(h, k, stride, dil, tf), out_size(w, k, stride, dil, tf)
    for act in ACTS:
        out = np.full((n, ho, wo, c), np.nan, np.float32)
        got = depthwise.depthwise_conv(x, wp, b, stride, dil, top, left, act, out)
        assert got is out
        ref = depthwise.depthwise_reference(x, wt, b, stride, dil, top, left, act, (ho, wo))
        assert rel_err(out, ref) < TOL, act


@pytest.mark.parametrize("c,k", [(1, 3), (40, 3), (2 * simd.VEC, 3), (21, 5)])
def test_depthwise_weight_blocks(c, k):
    """The packed layout the depthwise tiles read: channel vector g's k*k weight vectors side
    by side, zeros past C; unpacking gives the torch weight back."""
    rng = np.random.default_rng(c * 10 + k)
    wt = randn(rng, (c, 1, k, k))                                       # (C, 1, k, k)
    wp = depthwise.prepare_depthwise_weight(wt)
    vec, groups = simd.VEC, -(-c // simd.VEC)
    assert (wp.kh, wp.kw, wp.c) == (k, k, c) and wp.blocks.shape == (groups, k * k, vec)
    for ch in (0, c // 2, c - 1):
        g, lane = divmod(ch, vec)
        assert np.array_equal(wp.blocks[g, :, lane], wt[ch, 0].ravel())   # taps a*k + b
    assert not wp.blocks[-1, :, c - (groups - 1) * vec:].any()          # padded lanes
    assert np.array_equal(depthwise.unpack_depthwise_weight(wp), wt)


def test_depthwise_conv_wants_a_packed_weight():
    x = np.zeros((1, 4, 4, 8), np.float32)
    raw = np.zeros((3, 3, 8), np.float32)                               # not packed
    with pytest.raises(ValueError, match="prepare_depthwise_weight"):
        depthwise.depthwise_conv(x, raw, np.zeros(8, np.float32), 1, 1, 1, 1, ACT_NONE,
                                 np.zeros((1, 4, 4, 8), np.float32))


# ------------------------------------------------------------------ fused inverted residual
SEPARABLE_CASES = [  # (N, H, W, Cin, Ch, Cout, stride, dilation, expand, reduce, residual)
    (1, 9, 7, 16, 96, 24, 1, 1, True, True, False),      # MobileNetV2 block, no residual
    (2, 8, 8, 24, 144, 24, 1, 1, True, True, True),      # with the residual, batch 2
    (1, 13, 11, 32, 192, 40, 2, 1, True, True, False),   # stride 2, odd map
    (1, 9, 9, 40, 240, 40, 1, 2, True, True, True),      # dilated (DeepLab)
    (1, 7, 7, 160, 960, 160, 1, 1, True, True, True),    # wide channels, rows of 7
    (2, 14, 14, 96, 576, 160, 2, 1, True, True, False),  # stride 2, batch 2
    (1, 6, 10, 32, 32, 16, 1, 1, False, True, False),    # depthwise + reduce (MobileViTV2)
    (1, 5, 6, 8, 48, 48, 1, 1, True, False, False),      # expand + depthwise
    # ring and band pixels padded by a cache line (depthwise.pixel_stride)
    (1, 9, 11, 64, 128, 32, 2, 1, True, True, False),    # expand, stride 2
    (2, 6, 7, 256, 256, 24, 1, 1, False, True, False),   # copied rows + reduce
    (1, 6, 5, 24, 128, 24, 1, 2, True, True, True),      # dilated, residual
    (1, 5, 9, 16, 128, 128, 1, 1, True, False, False),   # expand + depthwise
]


@pytest.mark.parametrize("n,h,w,cin,ch,cout,stride,dil,has_ex,has_re,res", SEPARABLE_CASES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fused_separable_matches_reference(n, h, w, cin, ch, cout, stride, dil, has_ex, has_re,
                                           res, threads):
    """The fused op ([expand 1x1 ->] depthwise 3x3 [-> reduce 1x1 (+ x)]) against the three
    references one after the other, with any job split (jobs re-expand the rows they share)."""
    rng = np.random.default_rng(h * 100 + cin + ch + threads)
    x = randn(rng, (n, h, w, cin))                                      # (N, H, W, Cin)
    ex = (randn(rng, (ch, cin), scale=1 / np.sqrt(cin)), randn(rng, (ch,)), ACT_RELU6)
    wd = (randn(rng, (ch, 1, 3, 3), scale=0.3), randn(rng, (ch,)), ACT_SILU)
    re = (randn(rng, (cout, ch), scale=1 / np.sqrt(ch)), randn(rng, (cout,)), ACT_NONE)
    top, left = dil, dil
    ho, wo = (conv.conv_out_size(v, 3, stride, dil, dil, dil) for v in (h, w))
    out = np.full((n, ho, wo, cout if has_re else ch), np.nan, np.float32)
    def packed(c):                                                      # 1x1 weights as loaded
        return (pointwise.prepare_pointwise_weight(c[0]), c[1], c[2]) if c else None
    got = depthwise.fused_separable(
        x, packed(ex if has_ex else None),
        (depthwise.prepare_depthwise_weight(wd[0]), wd[1], wd[2]),
        packed(re if has_re else None), stride, dil, top, left, out, residual=res,
        threads=threads)
    assert got is out
    want = depthwise.separable_reference(x, ex if has_ex else None, wd, re if has_re else None,
                                         stride, dil, top, left, (ho, wo), residual=res)
    assert rel_err(out, want) < TOL


# ------------------------------------------------------------------ full conv
CONV_CASES = [  # (N, H, W, Cin, Cout, k, stride, dilation, tf_padding)
    (1, 17, 13, 3, 32, 3, 2, 1, True), (1, 16, 16, 3, 16, 3, 2, 1, False),
    (2, 9, 7, 5, 17, 3, 1, 1, False), (1, 10, 10, 35, 40, 3, 1, 2, True),
    (1, 12, 12, 16, 1, 3, 1, 6, False), (1, 8, 8, 24, 48, 3, 1, 12, False),
    (1, 6, 5, 20, 16, 3, 1, 18, False), (1, 32, 32, 64, 24, 3, 1, 12, False),
    (1, 9, 9, 130, 33, 3, 1, 1, False), (1, 6, 6, 600, 20, 3, 1, 1, False),
    (2, 7, 9, 12, 20, 1, 1, 1, False), (1, 11, 11, 8, 12, 5, 2, 1, True),
    (1, 4, 4, 1, 5, 3, 1, 1, False), (1, 1, 1, 40, 16, 3, 1, 1, False),
    # many channels, staged (taps summed in registers): stride 2 with TF padding, batch 2
    (2, 13, 11, 48, 40, 3, 2, 1, True),
    # direct path (dilated or taller than TAP_ROWS -- also the few-channel ones above -- or
    # Cin >= 32 with input rows too big to stage): dilation past the map, a wide map
    (2, 9, 10, 32, 20, 3, 1, 2, False), (1, 5, 7, 33, 17, 5, 2, 3, True),
    (3, 3, 3, 64, 70, 3, 1, 4, False), (1, 9, 700, 48, 40, 3, 2, 1, True),
]


@pytest.mark.parametrize("n,h,w,cin,cout,k,stride,dil,tf", CONV_CASES)
def test_conv2d_matches_reference(n, h, w, cin, cout, k, stride, dil, tf):
    rng = np.random.default_rng(cin * 100 + cout + dil)
    x = randn(rng, (n, h, w, cin))                                      # (N, H, W, Cin)
    wt = randn(rng, (cout, cin, k, k), scale=1 / np.sqrt(cin * k * k))  # (Cout, Cin, k, k)
    b = randn(rng, (cout,), scale=0.5)
    wp = conv.prepare_conv_weight(wt)
    (top, _), (left, _) = pads_for(h, k, stride, dil, tf), pads_for(w, k, stride, dil, tf)
    ho, wo = out_size(h, k, stride, dil, tf), out_size(w, k, stride, dil, tf)
    for act in ACTS:
        out = np.full((n, ho, wo, cout), np.nan, np.float32)
        got = conv.conv2d(x, wp, b, stride, dil, top, left, act, out)
        assert got is out
        ref = conv.conv2d_reference(x, wt, b, stride, dil, top, left, act, (ho, wo))
        assert rel_err(out, ref) < TOL, act


@pytest.mark.parametrize("n,h,w,cin,k,stride,dil", [
    (1, 17, 13, 3, 3, 2, 1), (2, 9, 10, 3, 3, 1, 1), (2, 8, 7, 4, 3, 2, 1),
    (1, 7, 9, 1, 2, 1, 1), (1, 12, 11, 3, 1, 1, 1),
    (1, 6, 37, 3, 3, 2, 1)])    # RGB rows of whole vectors + a tail, with 8 and 16 lanes
def test_conv_reads_an_nchw_input_in_place(n, h, w, cin, k, stride, dil):
    """The stem reads the model's NCHW input itself (RGB and other channel counts)."""
    from tinymvit.kernels.program import Arena, run_ops
    rng = np.random.default_rng(n * 100 + cin + k)
    x = randn(rng, (n, h, w, cin))                                      # (N, H, W, Cin)
    wt, b = randn(rng, (20, cin, k, k), scale=0.3), randn(rng, (20,))
    wp = conv.prepare_conv_weight(wt)
    (top, _), (left, _) = pads_for(h, k, stride, dil, True), pads_for(w, k, stride, dil, True)
    ho, wo = out_size(h, k, stride, dil, True), out_size(w, k, stride, dil, True)
    A, W = Arena(), Arena()
    xo = A.add(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))          # stored (N, Cin, H, W)
    oo = A.add(size=n * ho * wo * 20)
    op = conv.conv_op(xo, x.shape, oo, (n, ho, wo, 20), wp, W.add(wp.panels), W.add(b),
                      stride, dil, top, left, ACT_RELU6, threads=2, nchw=True)
    got = run_ops([op], A.build(), W.build(), 2)[oo:oo + n * ho * wo * 20]
    ref = conv.conv2d_reference(x, wt, b, stride, dil, top, left, ACT_RELU6, (ho, wo))
    assert rel_err(got.reshape(ref.shape), ref) < TOL


@pytest.mark.parametrize("n,h,w,cin,stride,tf", [
    (1, 8, 8, 40, 1, False),     # 8-pixel rows: register tiles run on into the next row
    (2, 9, 3, 33, 1, True),      # rows narrower than a tile: one tile spans several rows
    (1, 13, 11, 24, 2, True),    # stride 2, TF padding
    (2, 6, 17, 8, 2, False)])
@pytest.mark.parametrize("chunk_floats,threads", [(1, 1), (1, 3), (2000, 2), (1 << 20, 2)])
def test_staged_conv_tiles_chunks_and_jobs(monkeypatch, n, h, w, cin, stride, tf,
                                           chunk_floats, threads):
    """A staged conv cuts each image's output pixels into runs of register tiles (a tile
    may span rows), a run per job, staged chunk by chunk: any cut gives the reference."""
    from tinymvit.kernels.program import Arena, run_ops
    monkeypatch.setattr(conv, "CHUNK_FLOATS", chunk_floats)     # 1: one tile per chunk
    rng = np.random.default_rng(h * 10 + w + chunk_floats % 7 + threads)
    x = randn(rng, (n, h, w, cin))                                      # (N, H, W, Cin)
    wt, b = randn(rng, (21, cin, 3, 3), scale=0.2), randn(rng, (21,))
    wp = conv.prepare_conv_weight(wt)
    (top, _), (left, _) = pads_for(h, 3, stride, 1, tf), pads_for(w, 3, stride, 1, tf)
    ho, wo = out_size(h, 3, stride, 1, tf), out_size(w, 3, stride, 1, tf)
    A, W = Arena(), Arena()
    xo, oo = A.add(x), A.add(size=n * ho * wo * 21)
    op = conv.conv_op(xo, x.shape, oo, (n, ho, wo, 21), wp, W.add(wp.panels), W.add(b),
                      stride, 1, top, left, ACT_SILU, threads=threads)
    assert op.kind == "conv"
    tpj, chunk = op.fields[18], op.fields[19]
    assert 1 <= chunk <= tpj and chunk == {1: 1, 1 << 20: tpj}.get(chunk_floats, chunk)
    got = run_ops([op], A.build(), W.build(), threads)[oo:oo + n * ho * wo * 21]
    ref = conv.conv2d_reference(x, wt, b, stride, 1, top, left, ACT_SILU, (ho, wo))
    assert rel_err(got.reshape(ref.shape), ref) < TOL


@pytest.mark.parametrize("k,dil,in_place", [(3, 1, True), (1, 1, True), (5, 1, False),
                                             (3, 2, False)])
def test_only_a_staged_stem_reads_the_nchw_input(k, dil, in_place):
    """A stem that would be a direct conv (taller than TAP_ROWS, dilated) keeps the layout
    change before it; a staged one reads the model input itself."""
    from tinymvit.graph import Conv, ToNHWC, read_input_in_place
    rng = np.random.default_rng(k)
    nodes = [ToNHWC("to_nhwc", ("pixel_values",), "x"),
             Conv("stem", ("x",), "y", "full", randn(rng, (8, 3, k, k)), randn(rng, (8,)),
                  k, 2, dil, "symmetric", ACT_RELU6)]
    out = read_input_in_place(nodes, keep=set())
    assert [type(node).__name__ for node in out] == (["Conv"] if in_place
                                                      else ["ToNHWC", "Conv"])
    assert out[-1].nchw_input == in_place


def test_conv2d_1x1_equals_pointwise():
    rng = np.random.default_rng(3)
    x, wt, b = randn(rng, (2, 5, 6, 20)), randn(rng, (18, 20, 1, 1)), randn(rng, (18,))
    a = conv.conv2d(x, conv.prepare_conv_weight(wt), b, 1, 1, 0, 0, ACT_SILU,
                    np.empty((2, 5, 6, 18), np.float32))
    p = pointwise.pointwise_conv(x, pointwise.prepare_pointwise_weight(wt), b, ACT_SILU,
                                 np.empty((2, 5, 6, 18), np.float32))
    np.testing.assert_allclose(a, p, rtol=1e-5, atol=1e-5)


def test_results_do_not_depend_on_thread_count():
    """The job split changes with the thread count; every output must be computed alike."""
    rng = np.random.default_rng(4)
    x = randn(rng, (1, 19, 21, 40))
    wq, wd = randn(rng, (70, 40)), randn(rng, (40, 1, 3, 3))
    wf = randn(rng, (33, 40, 3, 3), scale=0.05)
    b70, b40, b33 = randn(rng, (70,)), randn(rng, (40,)), randn(rng, (33,))

    def run_all(threads):
        return (pointwise.pointwise_conv(x, pointwise.prepare_pointwise_weight(wq), b70, ACT_SILU,
                                         np.empty((1, 19, 21, 70), np.float32), threads=threads),
                depthwise.depthwise_conv(x, depthwise.prepare_depthwise_weight(wd), b40, 2, 1, 1, 1,
                                         ACT_RELU6, np.empty((1, 10, 11, 40), np.float32),
                                         threads=threads),
                conv.conv2d(x, conv.prepare_conv_weight(wf), b33, 1, 2, 2, 2, ACT_RELU,
                            np.empty((1, 19, 21, 33), np.float32), threads=threads))

    one = run_all(1)
    many = run_all(4)                                # more workers than cores: still the same
    for a, b in zip(one, many):
        assert np.array_equal(a, b)


def test_padding_helpers_known_values():
    # spec 4.2: 3x3 s2 even n -> (0, 1); odd n -> (1, 1); 3x3 s1 dilation d -> (d, d); 1x1 -> 0
    assert conv.tf_same_pads(224, 3, 2, 1) == (0, 1)
    assert conv.tf_same_pads(225, 3, 2, 1) == (1, 1)
    assert conv.tf_same_pads(33, 3, 1, 4) == (4, 4)
    assert conv.tf_same_pads(7, 1, 1, 1) == (0, 0)
    assert conv.symmetric_pads(3, 6) == (6, 6) and conv.symmetric_pads(1, 1) == (0, 0)
    for n in (224, 225, 13, 7, 1):                  # stride 2 always gives ceil(n / 2)
        assert out_size(n, 3, 2, 1, True) == out_size(n, 3, 2, 1, False) == -(-n // 2)


# ------------------------------------------------------------------ batch norm
def _bn_params(rng, c):
    return (randn(rng, (c,), scale=0.5) + 1, randn(rng, (c,), scale=0.3), randn(rng, (c,), scale=0.5),
            rng.uniform(0.2, 2.0, c).astype(np.float32))             # gamma, beta, mean, var


def test_batchnorm_reference_is_the_textbook_formula():
    rng = np.random.default_rng(11)
    x = randn(rng, (2, 5, 7, 19))
    gamma, beta, mean, var = _bn_params(rng, 19)
    ref = batchnorm.batchnorm_reference(x, gamma, beta, mean, var, 1e-3)
    by_hand = (x.astype(np.float64)[..., 3] - mean[3]) / np.sqrt(var[3] + 1e-3) * gamma[3] + beta[3]
    np.testing.assert_allclose(ref[..., 3], by_hand, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("with_bias", [False, True])
def test_fold_batchnorm_is_exact(with_bias):
    rng = np.random.default_rng(12 + with_bias)
    eps = 1e-3
    x = randn(rng, (1, 9, 10, 12))
    # full conv + BN
    wt = randn(rng, (20, 12, 3, 3), scale=1 / 6)
    b = randn(rng, (20,)) if with_bias else None
    bn = _bn_params(rng, 20)
    b0 = np.zeros(20) if b is None else b
    y = conv.conv2d_reference(x, wt, b0, 1, 1, 1, 1, ACT_NONE, (9, 10))
    expect = batchnorm.batchnorm_reference(y, *bn, eps)
    wf, bf = batchnorm.fold_batchnorm(wt, b, *bn, eps)
    assert wf.dtype == bf.dtype == np.float32 and wf.shape == wt.shape and bf.shape == (20,)
    assert rel_err(conv.conv2d_reference(x, wf, bf, 1, 1, 1, 1, ACT_NONE, (9, 10)), expect) < 1e-6
    got = conv.conv2d(x, conv.prepare_conv_weight(wf), bf, 1, 1, 1, 1, ACT_NONE,
                      np.empty((1, 9, 10, 20), np.float32))
    assert rel_err(got, expect) < TOL
    # depthwise + BN
    wd = randn(rng, (12, 1, 3, 3), scale=1 / 3)
    bn = _bn_params(rng, 12)
    y = depthwise.depthwise_reference(x, wd, np.zeros(12), 2, 1, 0, 0, ACT_NONE, (5, 5))
    expect = batchnorm.batchnorm_reference(y, *bn, eps)
    wf, bf = batchnorm.fold_batchnorm(wd, None, *bn, eps)
    got = depthwise.depthwise_conv(x, depthwise.prepare_depthwise_weight(wf), bf, 2, 1, 0, 0,
                                   ACT_NONE, np.empty((1, 5, 5, 12), np.float32))
    assert rel_err(got, expect) < TOL
    # 1x1 conv + BN
    wq = randn(rng, (7, 12, 1, 1), scale=0.3)
    bn = _bn_params(rng, 7)
    expect = batchnorm.batchnorm_reference(pointwise.pointwise_reference(x, wq, np.zeros(7), 0),
                                           *bn, eps)
    wf, bf = batchnorm.fold_batchnorm(wq, None, *bn, eps)
    got = pointwise.pointwise_conv(x, pointwise.prepare_pointwise_weight(wf), bf, ACT_NONE,
                                   np.empty((1, 9, 10, 7), np.float32))
    assert rel_err(got, expect) < TOL


# ------------------------------------------------------------------ against PyTorch
def _torch_conv(torch, x, w, b, stride, dil, pads_h, pads_w, groups):
    """NHWC numpy -> torch conv2d (float64) after explicit F.pad -> NHWC numpy."""
    F = torch.nn.functional
    xt = torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2)
    xt = F.pad(xt, (pads_w[0], pads_w[1], pads_h[0], pads_h[1]))
    y = F.conv2d(xt, torch.from_numpy(w.astype(np.float64)), torch.from_numpy(b.astype(np.float64)),
                 stride=stride, padding=0, dilation=dil, groups=groups)
    return y.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("kind", ["depthwise", "full"])
def test_references_match_torch(kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(21)
    cases = [(1, 13, 10, 3, 1, 1, False), (2, 15, 8, 3, 2, 1, True), (1, 7, 9, 3, 1, 4, True),
             (1, 6, 6, 3, 1, 12, False), (1, 11, 12, 5, 2, 2, True), (1, 16, 16, 3, 2, 1, True)]
    for n, h, w, k, stride, dil, tf in cases:
        c = 6
        x = randn(rng, (n, h, w, c))
        if kind == "depthwise":
            wt, groups, cout = randn(rng, (c, 1, k, k)), c, c
        else:
            wt, groups, cout = randn(rng, (5, c, k, k)), 1, 5
        b = randn(rng, (cout,))
        ph, pw = pads_for(h, k, stride, dil, tf), pads_for(w, k, stride, dil, tf)
        expect = _torch_conv(torch, x, wt, b, stride, dil, ph, pw, groups)
        out_hw = (out_size(h, k, stride, dil, tf), out_size(w, k, stride, dil, tf))
        assert expect.shape[1:3] == out_hw
        ref_fn = depthwise.depthwise_reference if kind == "depthwise" else conv.conv2d_reference
        ref = ref_fn(x, wt, b, stride, dil, ph[0], pw[0], ACT_NONE, out_hw)
        assert rel_err(ref, expect) < 1e-6


def test_padding_helpers_match_torch_and_transformers():
    torch = pytest.importorskip("torch")
    mnv2 = pytest.importorskip("transformers.models.mobilenet_v2.modeling_mobilenet_v2")
    for n in range(1, 20):
        for k in (1, 3, 5):
            for stride in (1, 2):
                for dil in (1, 2, 4):
                    layer = torch.nn.Conv2d(1, 1, k, stride=stride, dilation=dil, bias=False)
                    ones = torch.ones(1, 1, n, n)
                    rows = mnv2.apply_tf_padding(ones, layer)[0, 0].sum(dim=1)   # 0 = padding
                    nz = torch.nonzero(rows).flatten()
                    before, after = int(nz[0]), len(rows) - 1 - int(nz[-1])
                    assert conv.tf_same_pads(n, k, stride, dil) == (before, after), (n, k, dil)
                    for pb, pa in ((before, after), conv.symmetric_pads(k, dil)):
                        if n + pb + pa < (k - 1) * dil + 1:
                            continue                  # torch refuses: kernel larger than input
                        y = layer(torch.nn.functional.pad(ones, (pb, pa, pb, pa)))
                        assert conv.conv_out_size(n, k, stride, dil, pb, pa) == y.shape[-1]


@pytest.mark.parametrize("shape,k,dil,direct", [
    ((1, 32, 32, 96), 3, 1, False),      # MobileViT-S conv_kxk: staged, taps in registers
    ((1, 32, 32, 96), 3, 6, True),       # dilated (DeepLab's ASPP): read in place
    ((1, 32, 32, 96), 5, 1, True),       # taller than TAP_ROWS
    ((1, 9, 700, 48), 3, 1, True),       # input rows too big to stage
    ((1, 32, 32, 3), 3, 1, False),       # the stem
    ((1, 32, 32, 8), 3, 2, True),        # few channels, dilated
    ((1, 32, 32, 8), 5, 1, True),        # few channels, taller than TAP_ROWS
])
def test_conv_chooses_staged_rows_where_taps_sum_in_registers(shape, k, dil, direct):
    n, h, w, cin = shape
    wp = conv.prepare_conv_weight(np.ones((16, cin, k, k), np.float32))
    pads = conv.symmetric_pads(k, dil)
    ho, wo = (conv.conv_out_size(v, k, 1, dil, *pads) for v in (h, w))
    op = conv.conv_op(0, shape, 0, (n, ho, wo, 16), wp, 0, 0, 1, dil, pads[0], pads[0],
                      ACT_NONE)
    assert op.kind == ("conv_direct" if direct else "conv")     # a job of its own
    assert len(op.fields) == len(conv.CONV_FIELDS)
    if not conv.stages_in_registers(k, dil):     # the NCHW model input: staged convs only
        with pytest.raises(ValueError, match="NCHW model input"):
            conv.conv_op(0, shape, 0, (n, ho, wo, 16), wp, 0, 0, 1, dil, pads[0], pads[0],
                         ACT_NONE, nchw=True)

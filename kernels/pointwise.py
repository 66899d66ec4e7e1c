"""Pointwise (1x1) convolution: a matrix multiply over channels.

A 1x1 convolution on a channels-last tensor ``x`` of shape (..., Cin) is, for
every pixel independently, ``y = W @ x_pixel + b``.  Flattening all leading
dimensions into ``M`` rows gives one matrix product

    out[m, n] = act( sum_k x[m, k] * W[n, k] + bias[n] )  (+ residual[m, n])

with ``x`` (M, K=Cin), ``W`` (N=Cout, K) and ``out`` (M, N).  The same kernel
serves ``nn.Linear`` layers and the classifier, and its micro-kernel also runs
the full kxk convolution (``conv.py`` feeds it im2col rows).

How it is made fast (the GEMM "micro-kernel" idea of GotoBLAS/BLIS):

* ``W`` is packed once, at load time, into column *panels* of NR = 16 output
  channels: ``wp[p, k, j] = W[p*16 + j, k]`` (zero-padded).  For a fixed k the
  16 weights of a panel are contiguous: exactly two AVX2 vectors of 8 floats.
* The output is computed in tiles of MR = 4 rows x NR = 16 columns.  The 64
  partial sums of a tile live in a small stack buffer that LLVM promotes to 8
  vector registers; per k the tile does 4 broadcasts of ``x[m, k]`` + 2 vector
  loads of the panel + 8 fused multiply-adds.  4 x 16 is the largest tile that
  fits the 16 AVX2 registers without spilling (8 accumulators + 4 broadcasts +
  2 weight vectors); 6 x 16 spills and is slower.
* Work is split into jobs of (a chunk of MC rows) x (a group of panels) that
  run in parallel with ``prange``.  Inside a job the panel loop is outside the
  row-tile loop, so one panel (K x 16 floats) stays in L1 while it is applied to
  all the rows of the chunk (MC x K floats, kept in L2).
* Bias, activation and the optional residual are applied when the tile is
  written out ("fused epilogue"), so ``out`` is written exactly once.

Rows past the end of ``x`` are handled by re-reading the last row (clamping)
and not storing the extra results; columns past Cout read the zero padding of
the last panel and are not stored.

All kernels of this family are compiled with ``error_model="numpy"``: a float
division (the one in SiLU) then never raises, so the fused epilogue stays
vectorisable.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .activations import ACT_NONE, ACT_RELU, ACT_RELU6, ACT_SILU, apply_act

MR = 4    # rows of x per micro-tile
NR = 16   # output channels per weight panel (= 2 AVX2 vectors)
TILE = MR * NR


# ---------------------------------------------------------------- SIMD helpers
# Numba has no vector types, and leaving the vectorisation of a 16-wide loop to
# LLVM is fragile: Numba's negative-index wrap-around test on ``a[i0 + j]`` hides
# that consecutive j are consecutive addresses, and LLVM sometimes vectorises the
# wrong loop (the 9 taps of a depthwise kernel instead of its channels).  These
# tiny intrinsics state the 16-lane operations explicitly: each becomes two
# 8-float AVX2 loads/stores and multiply-adds (fused into FMAs under fastmath).
# They index C-contiguous float32 arrays by *flat* element index and do no bounds
# checks; the callers guarantee idx .. idx+15 lies inside the array.
_VEC8 = ir.VectorType(ir.FloatType(), 8)


def _is_f32_c_array(ty):
    return isinstance(ty, types.Array) and ty.dtype == types.float32 and ty.layout == "C"


def _are_indices(*tys):
    return all(isinstance(ty, types.Integer) for ty in tys)


def _lane_ptrs(context, builder, arrty, arr, idxty, idx):
    """LLVM pointers to the two 8-float halves of arr.flat[idx:idx+16]."""
    data = context.make_array(arrty)(context, builder, arr).data
    base = builder.gep(data, [context.cast(builder, idx, idxty, types.intp)])
    return [builder.bitcast(builder.gep(base, [context.get_constant(types.intp, half)]),
                            _VEC8.as_pointer()) for half in (0, 8)]


@intrinsic
def stack_buffer_f32(typingctx, size):
    """``stack_buffer_f32(n)`` -> uninitialised float32 array of n elements on the stack.

    ``n`` must be a compile-time constant.  Unlike ``np.empty`` this does not
    call the allocator, and because the memory is a plain ``alloca`` that is only
    touched at constant offsets, LLVM keeps it entirely in registers.
    """
    if not isinstance(size, types.IntegerLiteral):
        return None
    n = size.literal_value
    arrty = types.Array(types.float32, 1, "C")

    def codegen(context, builder, signature, args):
        intp = types.intp
        ptr = cgutils.alloca_once(builder, context.get_value_type(types.float32), size=n)
        ary = context.make_array(arrty)(context, builder)
        context.populate_array(ary, data=ptr, shape=[context.get_constant(intp, n)],
                               strides=[context.get_constant(intp, 4)],
                               itemsize=context.get_constant(intp, 4), meminfo=None)
        return ary._getvalue()

    return arrty(size), codegen


@intrinsic
def axpy16(typingctx, acc, ai, s, src, si):
    """acc.flat[ai:ai+16] += s * src.flat[si:si+16]   (s a float32 scalar, broadcast)."""
    if not (_is_f32_c_array(acc) and _is_f32_c_array(src) and s == types.float32
            and _are_indices(ai, si)):
        return None

    def codegen(context, builder, signature, args):
        acc_v, ai_v, s_v, src_v, si_v = args
        at, ait, _, st, sit = signature.args
        vs = ir.Constant(_VEC8, ir.Undefined)                      # broadcast s to 8 lanes
        for lane in range(8):
            vs = builder.insert_element(vs, s_v, context.get_constant(types.int32, lane))
        for pa, ps in zip(_lane_ptrs(context, builder, at, acc_v, ait, ai_v),
                          _lane_ptrs(context, builder, st, src_v, sit, si_v)):
            prod = builder.fmul(vs, builder.load(ps, align=4), flags=("fast",))
            builder.store(builder.fadd(builder.load(pa, align=4), prod, flags=("fast",)), pa,
                          align=4)
        return context.get_dummy_value()

    return types.void(acc, ai, s, src, si), codegen


@intrinsic
def fma16(typingctx, acc, ai, w, wi, x, xi):
    """acc.flat[ai:ai+16] += w.flat[wi:wi+16] * x.flat[xi:xi+16]   (element-wise)."""
    if not (_is_f32_c_array(acc) and _is_f32_c_array(w) and _is_f32_c_array(x)
            and _are_indices(ai, wi, xi)):
        return None

    def codegen(context, builder, signature, args):
        acc_v, ai_v, w_v, wi_v, x_v, xi_v = args
        at, ait, wt, wit, xt, xit = signature.args
        for pa, pw, px in zip(_lane_ptrs(context, builder, at, acc_v, ait, ai_v),
                              _lane_ptrs(context, builder, wt, w_v, wit, wi_v),
                              _lane_ptrs(context, builder, xt, x_v, xit, xi_v)):
            prod = builder.fmul(builder.load(pw, align=4), builder.load(px, align=4),
                                flags=("fast",))
            builder.store(builder.fadd(builder.load(pa, align=4), prod, flags=("fast",)), pa,
                          align=4)
        return context.get_dummy_value()

    return types.void(acc, ai, w, wi, x, xi), codegen


@intrinsic
def copy16(typingctx, dst, di, src, si):
    """dst.flat[di:di+16] = src.flat[si:si+16]."""
    if not (_is_f32_c_array(dst) and _is_f32_c_array(src) and _are_indices(di, si)):
        return None

    def codegen(context, builder, signature, args):
        d_v, di_v, s_v, si_v = args
        dt, dit, st, sit = signature.args
        for pd, ps in zip(_lane_ptrs(context, builder, dt, d_v, dit, di_v),
                          _lane_ptrs(context, builder, st, s_v, sit, si_v)):
            builder.store(builder.load(ps, align=4), pd, align=4)
        return context.get_dummy_value()

    return types.void(dst, di, src, si), codegen


# ---------------------------------------------------------------- micro-kernel
@njit(inline="always", fastmath=True, error_model="numpy", cache=True)
def micro_tile(a, r0, r1, r2, r3, k0, wp, p, kn, acc):
    """acc[16*i + j] += sum_{k<kn} a[r_i, k0+k] * wp[p, k0+k, j]   (i < 4, j < 16).

    ``a`` is 2-D (rows, K); ``r0..r3`` are the 4 rows of the tile; ``wp`` is a
    packed weight (P, K, 16).  Per k: 4 scalar loads of ``a`` (broadcast), one
    16-float row of the panel (2 vector loads, shared by the 4 axpy16 after
    LLVM's common-subexpression elimination) and 8 vector FMAs into the 8
    accumulator registers.
    """
    k_total = wp.shape[1]
    for k in range(kn):
        kk = k0 + k
        wi = (p * k_total + kk) * NR      # flat index of wp[p, kk, 0]
        axpy16(acc, 0, a[r0, kk], wp, wi)
        axpy16(acc, NR, a[r1, kk], wp, wi)
        axpy16(acc, 2 * NR, a[r2, kk], wp, wi)
        axpy16(acc, 3 * NR, a[r3, kk], wp, wi)


@njit(inline="always", fastmath=True, error_model="numpy", cache=True)
def zero_tile(acc):
    for t in range(TILE):
        acc[t] = np.float32(0.0)


@njit(fastmath=True, error_model="numpy", cache=True)
def store_partial_tile(acc, nrows, ncols, out, m0, n0, bias, act, res, has_res):
    """The epilogue of a tile narrower than 16 columns (last panel, Cout % 16 != 0):
    out[m0+i, n0+j] = act(acc[16*i + j] + bias[n0+j]) (+ res[m0+i, n0+j]), element by element."""
    for i in range(nrows):
        m = m0 + i
        for j in range(ncols):
            v = apply_act(acc[i * NR + j] + bias[n0 + j], act)
            if has_res:
                v += res[m, n0 + j]
            out[m, n0 + j] = v


# ---------------------------------------------------------------- job planning
def plan_jobs(m, mc_max, panels):
    """Split an (m rows) x (panels) product into parallel jobs: returns (MC rows, PG panels).

    Rows are cut into equal chunks of at most ``mc_max`` rows (a multiple of MR),
    so that the threads get equal shares.  When there are too few chunks to keep
    every thread busy (small feature maps, the batch-1 classifier) the panels
    are split into groups as well, aiming at 4 jobs per thread.
    """
    n_chunks = -(-m // mc_max)
    mc = -(-m // (n_chunks * MR)) * MR                  # equal chunks, multiples of MR
    n_chunks = -(-m // mc)
    want = 4 * numba.get_num_threads()
    groups = min(panels, max(1, -(-want // n_chunks)))
    pg = -(-panels // groups)
    return mc, pg


# ---------------------------------------------------------------- the kernel
@njit(fastmath=True, error_model="numpy", cache=True)
def _pointwise_job(x, wp, bias, act, out, res, has_res, m_lo, m_hi, p_lo, p_hi):
    """Rows m_lo:m_hi x panels p_lo:p_hi of the product, one 4 x 16 tile at a time."""
    k = x.shape[1]
    n_total = out.shape[1]
    acc = stack_buffer_f32(TILE)         # the 4 x 16 tile, in registers
    last = m_hi - 1
    for p in range(p_lo, p_hi):          # one panel stays in L1 ...
        n0 = p * NR
        ncols = min(NR, n_total - n0)
        for mt in range(m_lo, m_hi, MR):  # ... while it sweeps the chunk's rows
            nrows = min(MR, m_hi - mt)
            zero_tile(acc)
            micro_tile(x, mt, min(mt + 1, last), min(mt + 2, last), min(mt + 3, last),
                       0, wp, p, k, acc)
            # epilogue: out = act(acc + bias) (+ res), 16-lane vector code.  (Written out
            # here: as an inlined helper, Numba adds reference-count calls on every tile.)
            if ncols < NR:
                store_partial_tile(acc, nrows, ncols, out, mt, n0, bias, act, res, has_res)
                continue
            for i in range(MR):
                axpy16(acc, i * NR, np.float32(1.0), bias, n0)          # + bias
            if act != ACT_NONE:
                for t in range(TILE):    # constant trip count: unrolled and vectorised
                    acc[t] = apply_act(acc[t], act)
            for i in range(nrows):
                flat = (mt + i) * n_total + n0                          # out[mt+i, n0]
                if has_res:              # read res (possibly out itself) before writing
                    axpy16(acc, i * NR, np.float32(1.0), res, flat)
                copy16(out, flat, acc, i * NR)


@njit(parallel=True, fastmath=True, error_model="numpy", cache=True)
def _pointwise_kernel(x, wp, bias, act, out, res, has_res, mc, pg):
    m_total = x.shape[0]                 # x (M, K), out (M, N), wp (P, K, 16)
    panels = wp.shape[0]
    n_chunks = (m_total + mc - 1) // mc
    n_groups = (panels + pg - 1) // pg
    for job in prange(n_chunks * n_groups):   # jobs: (chunk of mc rows) x (group of pg panels)
        chunk = job // n_groups
        group = job - chunk * n_groups
        _pointwise_job(x, wp, bias, act, out, res, has_res, chunk * mc,
                       min(m_total, chunk * mc + mc), group * pg, min(panels, group * pg + pg))


# ---------------------------------------------------------------- public API
def prepare_pointwise_weight(w):
    """Pack a torch-layout weight (Cout, Cin) or (Cout, Cin, 1, 1) into panels.

    Returns ``wp`` float32 (ceil(Cout/16), Cin, 16) with
    ``wp[p, k, j] = w[16*p + j, k]`` and zeros past Cout.  Also used for
    ``nn.Linear`` weights (out, in).  Called once at load time.
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim == 4:
        assert w.shape[2:] == (1, 1), f"not a 1x1 conv weight: {w.shape}"
        w = w[:, :, 0, 0]
    assert w.ndim == 2, f"expected (Cout, Cin), got {w.shape}"
    cout, cin = w.shape
    panels = -(-cout // NR)
    padded = np.zeros((panels * NR, cin), np.float32)    # (P*16, Cin)
    padded[:cout] = w
    return np.ascontiguousarray(padded.reshape(panels, NR, cin).transpose(0, 2, 1))  # (P, Cin, 16)


def pointwise_conv(x, wp, bias, act, out, residual=None):
    """out = act(x @ W.T + bias) (+ residual), written into ``out``; returns ``out``.

    x: float32 C-contiguous (..., Cin); wp: from :func:`prepare_pointwise_weight`;
    bias: float32 (Cout,); act: activation code; out: float32 C-contiguous
    (..., Cout) with x's leading dims; residual: None or an array shaped like
    ``out`` (may be ``out`` itself for in-place accumulation).
    """
    assert x.dtype == np.float32 and x.flags.c_contiguous, "x must be C-contiguous float32"
    assert out.dtype == np.float32 and out.flags.c_contiguous, "out must be C-contiguous float32"
    k = x.shape[-1]
    n = out.shape[-1]
    assert out.shape[:-1] == x.shape[:-1], f"leading dims differ: {x.shape} vs {out.shape}"
    assert wp.ndim == 3 and wp.shape[1] == k and wp.shape[2] == NR, "weight/input mismatch"
    assert (wp.shape[0] - 1) * NR < n <= wp.shape[0] * NR, "weight/output mismatch"
    assert bias.shape == (n,) and bias.dtype == np.float32
    x2 = x.reshape(-1, k)                                   # (M, K)
    out2 = out.reshape(-1, n)                               # (M, N)
    if residual is None:
        res2, has_res = out2, False
    else:
        assert residual.shape == out.shape and residual.dtype == np.float32
        assert residual.flags.c_contiguous
        res2, has_res = residual.reshape(-1, n), True       # (M, N)
    m = x2.shape[0]
    if m == 0:
        return out
    # a chunk of x (MC x K floats, <= 128 KiB) stays in L2 while each panel sweeps it
    mc, pg = plan_jobs(m, max(MR, min(128, 32768 // k)), wp.shape[0])
    _pointwise_kernel(x2, wp, bias, act, out2, res2, has_res, mc, pg)
    return out


def act_reference_f64(y, act):
    """Activation ``act`` applied to a float64 array, in float64 (used by the references)."""
    if act == ACT_RELU:
        return np.maximum(y, 0.0)
    if act == ACT_RELU6:
        return np.clip(y, 0.0, 6.0)
    if act == ACT_SILU:
        return y / (1.0 + np.exp(-y))
    assert act == ACT_NONE, f"unknown activation code {act}"
    return y


def pointwise_reference(x, w, bias, act, residual=None):
    """Plain NumPy 1x1 conv / linear: float64 matmul, then act, then residual, cast to float32.

    x (..., Cin); w torch layout (Cout, Cin[, 1, 1]); bias (Cout,); returns (..., Cout).
    """
    w = np.asarray(w, np.float64).reshape(np.shape(w)[0], -1)            # (Cout, Cin)
    y = np.asarray(x, np.float64) @ w.T + np.asarray(bias, np.float64)   # (..., Cout)
    y = act_reference_f64(y, act)
    if residual is not None:
        y = y + np.asarray(residual, np.float64)
    return y.astype(np.float32)

"""SIMD vectors and register tiles: the machinery behind the fast kernels.

Numba has no vector types: a loop over 8 or 16 channels is left to LLVM's
auto-vectoriser, which often picks the wrong loop, and a small array used as a
register tile stays in registers only when LLVM can prove every index constant.
This module gives the kernels explicit tools instead, all of them Numba
*intrinsics* (LLVM IR emitted at the call site: no function call, nothing to type):

1. Vectors -- a Numba type whose values are LLVM ``<VEC x float>``, one SIMD
   register (8 floats with AVX2, 16 with AVX-512), and the operations on it::

       acc = vload(bias, c0)                          # VEC biases
       acc = vfma(vload(w, wi), vload(x, xi), acc)    # acc += w * x, VEC lanes at once
       vstore(out, oi, acc)

   They index C-contiguous float32 arrays by *flat* element index and do not
   check bounds: callers guarantee ``i .. i+VEC-1`` is inside, or use
   ``vload_n``/``vstore_n`` (masked) for a tail of ``n < VEC`` lanes.

2. ``gemm_tile`` -- the matrix-multiply micro-kernel of GotoBLAS/BLIS: an
   ``MR x NR`` block of ``A @ B`` kept in ``MR * NV`` vector registers
   (``NR = NV * VEC``) while k runs.  Per k it loads NV vectors of a packed
   weight row, broadcasts one value from each of the MR rows of A and issues
   MR * NV fused multiply-adds.  ``gemm_tile_out`` adds the epilogue (bias,
   activation, residual) in registers, and computes a last panel of at most VEC
   columns with one vector per row (half the FMAs: 144 channels on AVX-512, a
   36-wide attention head) and the last rows of a product (49 pixels, 28-pixel image
   rows) with a lower tile (TILE_HEIGHTS: e.g. 4 or 8 rows of 12); ``gemm_taps_out`` runs
   the k loop over up to TAP_ROWS segments of A per tile row, each row starting where it
   likes (the tap rows of a staged convolution's output pixels, a tile running on from one
   image row into the next).

3. ``dw_tile`` -- the depthwise-convolution micro-kernel: DW_PIX output pixels of one
   channel vector (neighbours, or d apart for a kernel of dilation d, so that they share
   input columns), their running sums in registers while the kh x kw taps are added
   (each weight vector loaded once serves the DW_PIX pixels).

Both micro-kernels are written directly as LLVM IR loops whose accumulators are
SSA values, so register allocation is guaranteed rather than hoped for.

Tile sizes follow the instruction set found at import (``ISA``):

    ISA        VEC  MR  NV  NR   accumulators  vector registers
    avx512     16   12   2  32   24            32 zmm  (ONNX Runtime's MLAS uses 12 x 32 too)
    avx2        8    6   2  16   12            16 ymm  (the BLIS Haswell tile)
    generic     4    4   4  16   16            SSE / NEON: correct anywhere

The accumulators must leave room for the NV weight vectors and a broadcast register,
and the MR * NV independent FMA chains must cover the FMA latency (4 cycles) times
the FMA units (2).  Measured on an AMD EPYC (Zen 3, AVX2): 80-94 GFLOP/s on one core,
OpenBLAS's peak there being ~81.  The AVX-512 tile compiles to 24 zmm accumulators
without spills (checked in the assembly for skylake-avx512; llvm-mca's Skylake-X model:
13 cycles per k step of 24 FMAs, 12 the bound); its results are checked
on any x86 machine by the tests, which run it with ``TINYMVIT_ISA=avx512`` (LLVM
splits the 16-lane operations where the CPU has no AVX-512).
"""
import os
import platform

from .lazy import LazyModule, intrinsic, on_numba
from .native import host_cpu

ir = LazyModule("llvmlite.ir")                 # Numba and LLVM are only needed to compile
types = LazyModule("numba.core.types")
cgutils = LazyModule("numba.core.cgutils")

# ISA -> (VEC lanes, MR rows, NV vectors per tile row)
TILES = {"avx512": (16, 12, 2), "avx2": (8, 6, 2), "generic": (4, 4, 4)}
# ISA -> the heights of the whole-width tiles compiled, the last MR: a product's last rows
# (fewer than MR) are computed by the lowest that holds them.  A tile of h rows takes
# max(h, 8 / NV) rows' time per k step (8 FMA chains cover the FMA latency 4 x 2 units),
# its epilogue (bias, activation) h rows' time.  A fused block's 1x1 expand takes one
# image row at a time: with AVX-512, rows of 28, 64, 112 pixels end in 4 rows, of 32, 56, 128
# in 8, and DeepLabV3-MobileNetV2's 33 x 33 maps in 9 (before, 6 or 12: 3-7 % more GEMM
# work for MobileNetV2 and 4 % for that DeepLabV3, now 3 and 0.7 %, as the plans count it).
# AVX2 keeps the 3-row tile for 1-3 last rows (a 4-row one made MobileViT-XXS, whose
# 128-pixel rows are 16 channels deep, 1.5 % slower).
HEIGHTS = {"avx512": (4, 8, 9, 12), "avx2": (3, 4, 6), "generic": (2, 4)}


def _host_features():
    try:
        return host_cpu()[1]
    except Exception:  # noqa: BLE001 - no feature query on this platform: stay generic
        return frozenset()


def _host_isa(features):
    """'avx512', 'avx2' or 'generic', from the host CPU's features (or TINYMVIT_ISA)."""
    forced = os.environ.get("TINYMVIT_ISA", "").strip().lower()
    if forced:
        if forced not in TILES:
            raise ValueError(f"TINYMVIT_ISA={forced!r}: expected one of {', '.join(TILES)}")
        return forced
    if "avx512f" in features:
        return "avx512"
    if "avx2" in features and "fma" in features:
        return "avx2"
    return "generic"


FEATURES = _host_features()
ISA = _host_isa(FEATURES)
FORCED_ISA = bool(os.environ.get("TINYMVIT_ISA", "").strip())
VEC, MR, NV = TILES[ISA]
TILE_HEIGHTS = HEIGHTS[ISA]
NR = NV * VEC          # columns of a register tile = width of a packed weight panel
TILE = MR * NR         # floats in a register tile
DW_PIX = 4             # output pixels of a depthwise tile


# ---------------------------------------------------------------- the vector type
VECTOR = _LLVEC = _MASK = _I32 = None    # defined once Numba is imported


@on_numba
def _vector_type():
    """The Numba type FloatVector: ``lanes`` float32 values in one SIMD register (LLVM
    ``<lanes x float>``); VECTOR is the one with VEC lanes."""
    from llvmlite import ir as llvm_ir
    from numba.core import types as numba_types
    from numba.extending import models, register_model

    class FloatVector(numba_types.Type):
        def __init__(self, lanes):
            self.lanes = lanes
            super().__init__(name=f"float32x{lanes}")

    @register_model(FloatVector)
    class FloatVectorModel(models.PrimitiveModel):
        def __init__(self, dmm, fe_type):
            super().__init__(dmm, fe_type, llvm_ir.VectorType(llvm_ir.FloatType(), fe_type.lanes))

    global VECTOR, _LLVEC, _MASK, _I32
    VECTOR = FloatVector(VEC)
    _LLVEC = llvm_ir.VectorType(llvm_ir.FloatType(), VEC)
    _MASK = llvm_ir.VectorType(llvm_ir.IntType(1), VEC)
    _I32 = llvm_ir.IntType(32)


# ---------------------------------------------------------------- IR helpers
def _is_f32_c_array(ty):
    return isinstance(ty, types.Array) and ty.dtype == types.float32 and ty.layout == "C"


def _ints(*tys):
    return all(isinstance(t, types.Integer) for t in tys)


def _intp(context, builder, value, ty):
    return context.cast(builder, value, ty, types.intp)


def _data(context, builder, arrty, arr):
    """The float* (or int64*) data pointer of an array."""
    return context.make_array(arrty)(context, builder, arr).data


def _lanes(idx):
    """A shuffle mask: the i32 lane indices ``idx``."""
    return ir.Constant(ir.VectorType(_I32, len(idx)), list(idx))


def _vptr(builder, fptr):
    return builder.bitcast(fptr, _LLVEC.as_pointer())


def _splat(builder, scalar, vecty=None):
    vecty = vecty or _LLVEC
    v = builder.insert_element(ir.Constant(vecty, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vecty, ir.Undefined), _lanes([0] * vecty.count))


def _declare(builder, name, ret, params):
    """The LLVM intrinsic ``name`` with the given signature, declared once per module."""
    fn = builder.module.globals.get(name)
    if fn is None:
        fn = ir.Function(builder.module, ir.FunctionType(ret, params), name=name)
    return fn


_V = f"v{VEC}f32"


def _fma(builder, a, b, c):
    return builder.call(_declare(builder, f"llvm.fma.{_V}", _LLVEC, [_LLVEC] * 3), [a, b, c])


def _lane_mask(builder, n):
    """<VEC x i1>: lane l is on when l < n (n an intp; compared as i32, one vpcmpgtd)."""
    i32v = ir.VectorType(_I32, VEC)
    n = builder.select(builder.icmp_signed("<", n, ir.Constant(n.type, VEC)), n,
                       ir.Constant(n.type, VEC))
    return builder.icmp_signed("<", ir.Constant(i32v, list(range(VEC))),
                               _splat(builder, builder.trunc(n, _I32), i32v))


def _load(builder, fptr, mask=None):
    if mask is None:
        return builder.load(_vptr(builder, fptr), align=4)
    fn = _declare(builder, f"llvm.masked.load.{_V}.p0", _LLVEC,
                  [_LLVEC.as_pointer(), _I32, _MASK, _LLVEC])
    return builder.call(fn, [_vptr(builder, fptr), ir.Constant(_I32, 4), mask,
                             ir.Constant(_LLVEC, [0.0] * VEC)])


def _store(builder, v, fptr, mask=None):
    if mask is None:
        builder.store(v, _vptr(builder, fptr), align=4)
        return
    fn = _declare(builder, f"llvm.masked.store.{_V}.p0", ir.VoidType(),
                  [_LLVEC, _LLVEC.as_pointer(), _I32, _MASK])
    builder.call(fn, [v, _vptr(builder, fptr), ir.Constant(_I32, 4), mask])


def _loop(builder, start, stop, step, carried, body, name, opaque=False):
    """Emit ``for i in range(start, stop, step)`` carrying SSA values; returns their final
    values.  ``body(i, values) -> new values`` emits the loop body.  ``opaque``: i advances
    through :func:`_opaque` (addresses indexed by i stay as written)."""
    entry = builder.block
    check = builder.append_basic_block(f"{name}.check")
    loop = builder.append_basic_block(f"{name}.body")
    done = builder.append_basic_block(f"{name}.done")
    builder.branch(check)
    builder.position_at_end(check)
    i = builder.phi(start.type, name=name)
    i.add_incoming(start, entry)
    phis = []
    for k, v in enumerate(carried):
        phi = builder.phi(v.type, name=f"{name}.v{k}")
        phi.add_incoming(v, entry)
        phis.append(phi)
    builder.cbranch(builder.icmp_signed("<", i, stop), loop, done)
    builder.position_at_end(loop)
    new = body(i, phis)
    nxt = builder.add(i, step)
    i.add_incoming(_opaque(builder, nxt) if opaque else nxt, builder.block)
    for phi, v in zip(phis, new):
        phi.add_incoming(v, builder.block)
    builder.branch(check)
    builder.position_at_end(done)
    return phis


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _opaque(builder, value):
    """``value``, hidden from LLVM's loop optimisers (an empty inline-asm statement that
    returns its operand in a register; no instruction).  A 3x3 depthwise tile reads 3 rows x
    6 columns and writes 4 pixels at run-time distances: seeing through its pointers, LLVM's
    loop strength reduction made one pointer of each of the 22 addresses, more than x86's
    16 registers hold (the AVX-512 loop reloaded 30 of them from the stack per channel
    vector: 35 cycles in llvm-mca's Skylake-X model, 25 without).  Pointers updated through
    ``_opaque`` stay as written: one per input row, columns at offsets in registers.
    Elsewhere (ARM...) the value as it is."""
    if not _X86:
        return value
    return builder.asm(ir.FunctionType(value.type, [value.type]), "", "=r,0", [value], False)


# ---------------------------------------------------------------- activations, in IR
def _vconst(value):
    return ir.Constant(_LLVEC, [float(value)] * VEC)


def _max(builder, x, y):
    """max(x, y) keeping a NaN of x (y > x ? y : x)."""
    return builder.select(builder.fcmp_ordered(">", y, x), y, x)


def _min(builder, x, y):
    return builder.select(builder.fcmp_ordered("<", y, x), y, x)


# exp(r) = 1 + r + r^2 (C2 + r (C3 + r (C4 + r (C5 + r C6)))) on |r| <= ln2/2: a fit of the
# relative error (1.4e-9 with float32 coefficients, far below float32's 6e-8 rounding)
EXP_POLY = (0.0013814608100801706, 0.008368710055947304, 0.04166838899254799,
            0.1666652113199234, 0.4999999403953552, 1.0, 1.0)          # C6 ... C2, 1, 1
_ROUNDER = 12582912.0    # 1.5 * 2**23: t + it is rounded to an integer, in t's low mantissa bits
_LOG2E = 1.44269504      # 1 / ln2
_LN2 = 0.6931471805599453


def _exp(builder, x, upper=True):
    """exp of every lane, to ~1 ulp, clamped to float32's range [-87.3, 88] (``upper``
    False: lanes known to be <= 0, e.g. softmax's x - max, are not clamped above):

    * x = n*ln2 + r with n = round(x / ln2) and |r| <= ln2/2 -- n comes out of one FMA,
      x/ln2 + 1.5 * 2**23, whose float32 rounding leaves the integer n in the low
      mantissa bits; r = x - n*ln2 with ln2 in two parts (Cody-Waite), so r is exact;
    * exp(r) by the polynomial EXP_POLY in Horner form (6 FMAs);
    * 2**n from n's bits shifted into the float32 exponent field.

    NaN stays NaN.  Used by softmax (:func:`vexp_nonpositive`); :func:`vexp` is the general
    form; SiLU (:func:`_silu`) takes the same steps with a shorter reduction."""
    x = _max(builder, x, _vconst(-87.3))
    if upper:
        x = _min(builder, x, _vconst(88.0))
    t = _fma(builder, x, _vconst(_LOG2E), _vconst(_ROUNDER))        # bits: ROUNDER's + n
    n = builder.fsub(t, _vconst(_ROUNDER))
    r = _fma(builder, n, _vconst(-0.693359375), x)                   # x - n*ln2, in 2 parts
    r = _fma(builder, n, _vconst(2.12194440e-4), r)
    return _exp_reduced(builder, r, t)


def _exp_reduced(builder, r, t):
    """exp(r) * 2**n: EXP_POLY at r (|r| <= ln2/2), times 2**n made from n's bits in t
    (``t`` = x/ln2 + ROUNDER, see :func:`_exp`)."""
    p = _vconst(EXP_POLY[0])
    for c in EXP_POLY[1:]:
        p = _fma(builder, p, r, _vconst(c))
    ivec = ir.VectorType(_I32, VEC)
    bias = 127 - 0x4B400000                                          # - bits of ROUNDER + 127
    e = builder.add(builder.bitcast(t, ivec), ir.Constant(ivec, [bias] * VEC))   # n + 127
    return builder.fmul(p, builder.bitcast(builder.shl(e, ir.Constant(ivec, [23] * VEC)),
                                           _LLVEC))


ACTIVATIONS_IR = (0, 1, 2, 3)   # none, ReLU, ReLU6, SiLU (the codes of activations.py)


def _activation(builder, v, act):
    """Activation code ``act`` (a Python int) of every lane; NaN stays NaN."""
    if act == 1:
        return _max(builder, v, _vconst(0.0))
    if act == 2:
        return _min(builder, _max(builder, v, _vconst(0.0)), _vconst(6.0))
    if act == 3:
        return _silu(builder, v)
    return v


def _silu(builder, v):
    """v * sigmoid(v) = v / (1 + exp(-v)), one correctly rounded division (faster than a
    reciprocal estimate + Newton step + product on Zen 3; on Skylake-X about even, the divider
    running beside the FMA ports).  exp(-v) as in :func:`_exp`, with two steps fewer:

    * the reduction starts from v itself: n = round(-v/ln2) from v * -log2(e), and
      r = -v - n*ln2 is one fused negative multiply-subtract -- no negated copy of v;
    * ln2 is one float32 constant, not two parts: r is then off by n * 1.9e-9, which is
      below exp's own rounding while |v| < ~17 (|n| <= 24) and only grows where SiLU no
      longer needs it -- above, 1 + exp(-v) rounds to 1 and the result is v; below, the
      result is under 1e-6 in size.

    Max error against float64 (tests): 2.2 ulp where |v| < 10, 3.1 from -17 to -10, 5.3
    below (results under 1e-6); the exact reduction had 1.9, 2.3 and 1.8.  In L1 on Zen 3:
    0.34 ns per float instead of 0.49 (SiLU is 10-25 % of the time of MobileViT's inverted
    residuals); Skylake-X in llvm-mca: 10.2 cycles per 16 floats instead of 11.7.  NaN stays
    NaN; v is clamped to [-88, 87.3] inside exp only (exp(-v) stays finite and normal)."""
    c = _min(builder, _max(builder, v, _vconst(-88.0)), _vconst(87.3))
    t = _fma(builder, c, _vconst(-_LOG2E), _vconst(_ROUNDER))       # bits: ROUNDER's + n
    n = builder.fsub(t, _vconst(_ROUNDER))
    r = _fma(builder, n, _vconst(-_LN2), builder.fsub(_vconst(-0.0), c))   # -c - n*ln2
    return builder.fdiv(v, builder.fadd(_vconst(1.0), _exp_reduced(builder, r, t)))


def _activations(builder, values, act, codes=ACTIVATIONS_IR[1:]):
    """Activation ``act`` (a run-time integer: one of ACTIVATIONS_IR) of every vector of
    ``values``: a branch per activation, taken once for the whole list (one compiled copy
    serves every activation).  Codes not in ``codes`` leave the values as they are."""
    done = builder.append_basic_block("act.done")
    start = builder.block
    branches = []
    switch = builder.switch(act, done)
    for code in codes:
        block = builder.append_basic_block(f"act.{code}")
        switch.add_case(ir.Constant(act.type, code), block)
        builder.position_at_end(block)
        branches.append(([_activation(builder, v, code) for v in values], builder.block))
        builder.branch(done)
    builder.position_at_end(done)
    out = []
    for k, v in enumerate(values):
        phi = builder.phi(v.type)
        phi.add_incoming(v, start)
        for new, block in branches:
            phi.add_incoming(new[k], block)
        out.append(phi)
    return out


# ---------------------------------------------------------------- vector operations
@intrinsic
def vload(typingctx, a, i):
    """a.flat[i : i + VEC] as a vector."""
    if not (_is_f32_c_array(a) and _ints(i)):
        return None

    def codegen(context, builder, sig, args):
        p = builder.gep(_data(context, builder, sig.args[0], args[0]),
                        [_intp(context, builder, args[1], sig.args[1])])
        return _load(builder, p)
    return VECTOR(a, i), codegen


@intrinsic
def vstore(typingctx, a, i, v):
    """a.flat[i : i + VEC] = v."""
    if not (_is_f32_c_array(a) and _ints(i) and v == VECTOR):
        return None

    def codegen(context, builder, sig, args):
        p = builder.gep(_data(context, builder, sig.args[0], args[0]),
                        [_intp(context, builder, args[1], sig.args[1])])
        _store(builder, args[2], p)
        return context.get_dummy_value()
    return types.void(a, i, v), codegen


@intrinsic
def vload_n(typingctx, a, i, n):
    """a.flat[i : i + n] in the first n lanes (n <= VEC), zeros in the others; lanes >= n
    are never read (a masked load)."""
    if not (_is_f32_c_array(a) and _ints(i, n)):
        return None

    def codegen(context, builder, sig, args):
        p = builder.gep(_data(context, builder, sig.args[0], args[0]),
                        [_intp(context, builder, args[1], sig.args[1])])
        return _load(builder, p, _lane_mask(builder, _intp(context, builder, args[2],
                                                             sig.args[2])))
    return VECTOR(a, i, n), codegen


@intrinsic
def vstore_n(typingctx, a, i, v, n):
    """a.flat[i : i + n] = the first n lanes of v (a masked store)."""
    if not (_is_f32_c_array(a) and _ints(i, n) and v == VECTOR):
        return None

    def codegen(context, builder, sig, args):
        p = builder.gep(_data(context, builder, sig.args[0], args[0]),
                        [_intp(context, builder, args[1], sig.args[1])])
        _store(builder, args[2], p, _lane_mask(builder, _intp(context, builder, args[3],
                                                               sig.args[3])))
        return context.get_dummy_value()
    return types.void(a, i, v, n), codegen


@intrinsic
def vsplat(typingctx, s):
    """A vector with every lane = s."""
    if not isinstance(s, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.float32))
    return VECTOR(s), codegen


def _lanewise(emit, doc):
    @intrinsic
    def op(typingctx, a, b):
        if not (a == VECTOR and b == VECTOR):
            return None

        def codegen(context, builder, sig, args):
            return emit(builder, *args)
        return VECTOR(a, b), codegen
    op.__doc__ = doc
    return op


vadd = _lanewise(lambda b, x, y: b.fadd(x, y), "a + b, lane by lane.")
vsub = _lanewise(lambda b, x, y: b.fsub(x, y), "a - b, lane by lane.")
vmul = _lanewise(lambda b, x, y: b.fmul(x, y), "a * b, lane by lane.")
vdiv = _lanewise(lambda b, x, y: b.fdiv(x, y), "a / b, lane by lane.")
# max/min keep a NaN of ``a`` (like torch): y > x ? y : x is false for a NaN x
vmax = _lanewise(lambda b, x, y: b.select(b.fcmp_ordered(">", y, x), y, x),
                 "max(a, b) lane by lane; a NaN in a stays NaN.")
vmin = _lanewise(lambda b, x, y: b.select(b.fcmp_ordered("<", y, x), y, x),
                 "min(a, b) lane by lane; a NaN in a stays NaN.")


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c lane by lane, with one rounding (a fused multiply-add)."""
    if not (a == VECTOR and b == VECTOR and c == VECTOR):
        return None

    def codegen(context, builder, sig, args):
        return _fma(builder, *args)
    return VECTOR(a, b, c), codegen


@intrinsic
def vsilu(typingctx, a):
    """SiLU of every lane, a / (1 + exp(-a)) (see ``_silu``)."""
    if a != VECTOR:
        return None

    def codegen(context, builder, sig, args):
        return _silu(builder, args[0])
    return VECTOR(a), codegen


@intrinsic
def vexp(typingctx, x):
    """exp of every lane, to ~1 ulp, clamped to float32's range (see ``_exp``)."""
    if x != VECTOR:
        return None

    def codegen(context, builder, sig, args):
        return _exp(builder, args[0])
    return VECTOR(x), codegen


@intrinsic
def vexp_nonpositive(typingctx, x):
    """exp of every lane for lanes <= 0 (softmax's s - max), one instruction less than
    :func:`vexp`: a positive lane is not clamped (garbage for x > 88)."""
    if x != VECTOR:
        return None

    def codegen(context, builder, sig, args):
        return _exp(builder, args[0], upper=False)
    return VECTOR(x), codegen


def _reduce(combine, doc):
    @intrinsic
    def op(typingctx, a):
        if a != VECTOR:
            return None

        def codegen(context, builder, sig, args):
            v, width = args[0], VEC
            while width > 1:              # pairwise: halves combined until one lane is left
                half = width // 2
                idx = [_lanes(range(half)), _lanes(range(half, width))]
                v = combine(builder, *(builder.shuffle_vector(v, v, i) for i in idx))
                width = half
            return builder.extract_element(v, ir.Constant(_I32, 0))
        return types.float32(a), codegen
    op.__doc__ = doc
    return op


vsum = _reduce(lambda b, x, y: b.fadd(x, y), "Sum of the lanes (pairwise), a float32.")
vhmax = _reduce(lambda b, x, y: b.select(b.fcmp_ordered(">", y, x), y, x), "Largest lane.")


def _stack_array(dtype_name, doc, align=64):
    @intrinsic
    def buffer(typingctx, size):
        if not isinstance(size, types.IntegerLiteral):
            return None
        n = size.literal_value
        dtype = getattr(types, dtype_name)
        arrty = types.Array(dtype, 1, "C")

        def codegen(context, builder, signature, args):
            intp = types.intp
            item = context.get_abi_sizeof(context.get_value_type(dtype))
            ptr = cgutils.alloca_once(builder, context.get_value_type(dtype), size=n)
            ptr.align = align
            ary = context.make_array(arrty)(context, builder)
            context.populate_array(ary, data=ptr, shape=[context.get_constant(intp, n)],
                                   strides=[context.get_constant(intp, item)],
                                   itemsize=context.get_constant(intp, item), meminfo=None)
            return ary._getvalue()
        return arrty(size), codegen
    buffer.__doc__ = doc
    return buffer


stack_buffer = _stack_array("float32", """An uninitialised float32 array of ``size`` (a
compile-time constant) on the stack: no allocator call, and LLVM keeps it in registers where
all its indices are constant.  Aligned to a cache line: whole vectors in one line.""")
stack_buffer_f64 = _stack_array("float64", "stack_buffer for float64 values.")
# A function with a buffer aligned beyond the stack's 16 bytes realigns its stack and gives up
# a register (rbp) to do it -- one the 12 row pointers of an AVX-512 register tile then miss
# (two reloads per k step).  Offsets need no more than their own alignment, and a tile's
# spill buffer, stored and loaded once per tile, can live with vectors across cache lines.
stack_buffer_i64 = _stack_array("int64", "stack_buffer for int64 values.", align=8)
tile_buffer = _stack_array("float32", """stack_buffer for a register tile's sums (MR * NR
floats, ``gemm_tile``): aligned to 16 bytes only, so that the stack keeps its alignment.""",
                           align=16)


# ---------------------------------------------------------------- the GEMM micro-kernel
def _row_indices(builder, rows):
    """min(i, rows - 1) for the MR rows i of a tile: rows past ``rows`` repeat the last one."""
    const = lambda v: ir.Constant(rows.type, v)  # noqa: E731
    last = builder.sub(rows, const(1))
    return [builder.select(builder.icmp_signed("<", const(i), last), const(i), last)
            for i in range(MR)]


def _tile_rows(builder, a_p, a_base, lda, rows):
    """Pointers to the MR rows of a tile of A, ``lda`` floats apart (see _row_indices)."""
    a_p = builder.gep(a_p, [a_base])
    return [builder.gep(a_p, [builder.mul(i, lda)]) for i in _row_indices(builder, rows)]


def _tile_products(builder, row_ptrs, w_p, kn, init, nv=NV):
    """The k loop of a register tile of len(row_ptrs) rows: nv vector accumulators per row
    (phi nodes), from ``init``.  Per k: nv weight vectors (row k of the packed panel at
    w_p, NR floats apart), one broadcast per row, nv FMAs per row."""
    const = lambda v: ir.Constant(kn.type, v)  # noqa: E731

    def step(k, carried):
        w_row, accs = carried[0], carried[1:]
        b = [_load(builder, builder.gep(w_row, [const(j * VEC)])) for j in range(nv)]
        new = []
        for i, row in enumerate(row_ptrs):
            s = _splat(builder, builder.load(builder.gep(row, [k]), align=4))
            new += [_fma(builder, s, b[j], accs[i * nv + j]) for j in range(nv)]
        return [_opaque(builder, builder.gep(w_row, [const(NR)]))] + new
    # k and the weight row advance out of LLVM's sight (_opaque): rows stay fixed pointers
    # read at [k] (with AVX-512's 12 rows, strength reduction made 12 row counters of them,
    # and no registers were left: 19 cycles per k instead of 12)
    return _loop(builder, const(0), kn, const(1), [w_p] + init, step, "k", opaque=True)[1:]


def _by_width(builder, ncols, emit):
    """``emit(nv)`` twice: for a tile whose columns fit one vector (ncols <= VEC: the last,
    narrow panel of a product whose width is not a multiple of NR, e.g. 144 channels on
    AVX-512 or a 36-wide attention head) with one accumulator per row -- half the FMAs,
    and MR independent chains still cover the FMA latency -- and for the whole NV-vector
    tile.  With NV == 1 only the latter."""
    if NV == 1:
        emit(NV)
        return
    narrow = builder.icmp_signed("<=", ncols, ir.Constant(ncols.type, VEC))
    with builder.if_else(narrow) as (one, whole):
        with one:
            emit(1)
        with whole:
            emit(NV)


@intrinsic
def gemm_tile(typingctx, acc, a, a_base, lda, rows, w, w_base, kn, accumulate):
    """The MR x NR register tile of a matrix product, into ``acc`` (MR * NR floats)::

        acc[i*NR + j] (+)= sum_{k < kn} a.flat[a_base + min(i, rows-1)*lda + k]
                                        * w.flat[w_base + k*NR + j]

    for i < MR, j < NR: A's rows are ``lda`` floats apart (rows past ``rows`` repeat the
    last one, so a partial tile never reads past A), w holds a packed weight panel, NR
    floats per k.  ``accumulate`` False starts from zero, True from acc's contents.
    """
    if not (_is_f32_c_array(acc) and _is_f32_c_array(a) and _is_f32_c_array(w)
            and _ints(a_base, lda, rows, w_base, kn)
            and isinstance(accumulate, (types.Boolean, types.Integer))):
        return None

    def codegen(context, builder, sig, args):
        acc_p, a_p, w_p = (_data(context, builder, sig.args[i], args[i]) for i in (0, 1, 5))
        a_base, lda, rows, w_base, kn = (_intp(context, builder, args[i], sig.args[i])
                                         for i in (2, 3, 4, 6, 7))
        const = lambda v: ir.Constant(a_base.type, v)  # noqa: E731
        start = context.cast(builder, args[8], sig.args[8], types.boolean)
        init = [builder.select(start, _load(builder, builder.gep(acc_p, [const(t * VEC)])),
                               _vconst(0.0)) for t in range(MR * NV)]
        accs = _tile_products(builder, _tile_rows(builder, a_p, a_base, lda, rows),
                              builder.gep(w_p, [w_base]), kn, init)
        for t, v in enumerate(accs):
            _store(builder, v, builder.gep(acc_p, [const(t * VEC)]))
        return context.get_dummy_value()
    return types.void(acc, a, a_base, lda, rows, w, w_base, kn, accumulate), codegen


def _tile_epilogue(context, builder, accs, w_p, b_base, ncols, out_p, o_base, ldo, res_p,
                   r_base, rows, act, with_res, nv=NV, mr=MR):
    """Store ``act(acc + bias) (+ res)`` for the rows < ``rows`` and columns < ``ncols`` of
    a register tile of mr x (nv * VEC) (the code after the k loop of gemm_tile_out and
    gemm_taps_out)."""
    const = lambda v: ir.Constant(b_base.type, v)  # noqa: E731
    masks = [_lane_mask(builder, builder.sub(ncols, const(j * VEC))) for j in range(nv)]
    b_p = builder.gep(w_p, [b_base])
    bias = [_load(builder, builder.gep(b_p, [const(j * VEC)]), masks[j]) for j in range(nv)]
    vals = _activations(builder, [builder.fadd(accs[t], bias[t % nv])
                                  for t in range(mr * nv)], act)
    out_p, res_p = builder.gep(out_p, [o_base]), builder.gep(res_p, [r_base])

    def store(masks, residual):
        for i in range(mr):
            with builder.if_then(builder.icmp_signed("<", const(i), rows)):
                row_o = builder.gep(out_p, [builder.mul(const(i), ldo)])
                row_r = builder.gep(res_p, [builder.mul(const(i), ldo)])
                for j in range(nv):
                    v = vals[i * nv + j]
                    if residual:
                        v = builder.fadd(v, _load(builder, builder.gep(
                            row_r, [const(j * VEC)]), masks[j]))
                    _store(builder, v, builder.gep(row_o, [const(j * VEC)]), masks[j])

    whole_tile = builder.icmp_signed("==", ncols, const(nv * VEC))
    with builder.if_else(whole_tile) as (whole, partial):
        with whole:
            with builder.if_else(with_res) as (plus, plain):
                with plus:
                    store([None] * nv, True)
                with plain:
                    store([None] * nv, False)
        with partial:
            with builder.if_else(with_res) as (plus, plain):
                with plus:
                    store(masks, True)
                with plain:
                    store(masks, False)


@intrinsic
def gemm_tile_out(typingctx, a, a_base, lda, rows, w, w_base, kn, b_base, ncols, out, o_base,
                  ldo, res, r_base, act, has_res):
    """A register tile of ``out = act(A @ W + bias) (+ res)`` with the epilogue in registers::

        out.flat[o_base + i*ldo + j] = act(sum_{k < kn} a.flat[a_base + i*lda + k]
                                           * w.flat[w_base + k*NR + j] + w.flat[b_base + j])
                                       (+ res.flat[r_base + i*ldo + j])

    for i < rows (<= MR), j < ncols (<= NR); ``act`` (none, ReLU, ReLU6, SiLU) and
    ``has_res`` are chosen at run time, once per tile.  Columns past ncols and rows past
    ``rows`` are neither read nor written; when ncols <= VEC only the panel's first
    vector of columns is computed, else only the rows of the lowest of TILE_HEIGHTS that
    holds ``rows``.
    """
    if not (_is_f32_c_array(a) and _is_f32_c_array(w) and _is_f32_c_array(out)
            and _is_f32_c_array(res) and _ints(a_base, lda, rows, w_base, kn, b_base, ncols,
                                               o_base, ldo, r_base, act)
            and isinstance(has_res, (types.Boolean, types.Integer))):
        return None

    def codegen(context, builder, sig, args):
        a_p, w_p, out_p, res_p = (_data(context, builder, sig.args[i], args[i])
                                  for i in (0, 4, 9, 12))
        a_base, lda, rows, w_base, kn, b_base, ncols, o_base, ldo, r_base, act = (
            _intp(context, builder, args[i], sig.args[i]) for i in (1, 2, 3, 5, 6, 7, 8, 10,
                                                                    11, 13, 14))
        with_res = context.cast(builder, args[15], sig.args[15], types.boolean)
        row_ptrs = _tile_rows(builder, a_p, a_base, lda, rows)

        def tile(nv, mr):
            accs = _tile_products(builder, row_ptrs[:mr], builder.gep(w_p, [w_base]), kn,
                                  [_vconst(0.0)] * (mr * nv), nv)
            _tile_epilogue(context, builder, accs, w_p, b_base, ncols, out_p, o_base, ldo,
                           res_p, r_base, rows, act, with_res, nv, mr)

        def by_height(nv, heights=TILE_HEIGHTS):
            """A whole-width tile computes the rows of the lowest of TILE_HEIGHTS that
            holds ``rows`` (the last rows of a product whose height is not a multiple of
            MR: 49 pixels of a 7x7 map, a 28-pixel image row); a narrow one MR rows.  The
            full tile, by far the most common, is the first branch."""
            if nv == 1 or len(heights) == 1:      # (heights[-1]: MR, or the lowest left)
                tile(nv, heights[-1])
                return
            more = builder.icmp_signed(">", rows, ir.Constant(rows.type, heights[-2]))
            with builder.if_else(more, likely=True) as (tall, low):
                with tall:
                    tile(nv, heights[-1])
                with low:
                    by_height(nv, heights[:-1])
        _by_width(builder, ncols, by_height)
        return context.get_dummy_value()
    return types.void(a, a_base, lda, rows, w, w_base, kn, b_base, ncols, out, o_base, ldo, res,
                      r_base, act, has_res), codegen


TAP_ROWS = 3       # most tap rows gemm_taps_out sums in registers


@intrinsic
def gemm_taps_out(typingctx, a, bases, b0, tap_step, n_taps, rows, w, w_base, kn, b_base, ncols,
                  out, o_base, ldo, act):
    """gemm_tile_out over up to TAP_ROWS segments of A per row, ``tap_step`` floats apart, each
    row of the tile starting where it likes -- the tap rows of a kxk convolution's output
    pixels, kn = kw*Cin floats deep -- summed in the same registers::

        out.flat[o_base + i*ldo + j] = act(w.flat[b_base + j] + sum_{t < n_taps} sum_{k < kn}
                                           a.flat[bases[b0 + i] + t*tap_step + k]
                                           * w.flat[w_base + (t*kn + k)*NR + j])

    for i < rows (<= MR), j < ncols (<= NR); n_taps <= TAP_ROWS.  ``bases`` (int64) holds
    where each row of the tile starts: the rows need not be evenly spaced, so a tile may run
    on from the end of one image row into the next (no half-empty tile at the end of each
    row).  Rows past ``rows`` repeat the last one.  No partial sums go to memory between the
    tap rows.
    """
    if not (_is_f32_c_array(a) and _is_f32_c_array(w) and _is_f32_c_array(out)
            and isinstance(bases, types.Array) and bases.dtype == types.int64
            and _ints(b0, tap_step, n_taps, rows, w_base, kn, b_base, ncols, o_base, ldo, act)):
        return None

    def codegen(context, builder, sig, args):
        a_p, bases_p, w_p, out_p = (_data(context, builder, sig.args[i], args[i])
                                    for i in (0, 1, 6, 11))
        (b0, tap_step, n_taps, rows, w_base, kn, b_base, ncols, o_base, ldo, act) = (
            _intp(context, builder, args[i], sig.args[i])
            for i in (2, 3, 4, 5, 7, 8, 9, 10, 12, 13, 14))
        const = lambda v: ir.Constant(kn.type, v)  # noqa: E731
        starts = [builder.gep(a_p, [builder.load(builder.gep(bases_p, [builder.add(b0, i)]))])
                  for i in _row_indices(builder, rows)]
        accs = [_vconst(0.0)] * (MR * NV)
        for t in range(TAP_ROWS):
            depth = builder.select(builder.icmp_signed(">", n_taps, const(t)), kn, const(0))
            step = builder.mul(const(t), tap_step)
            w_t = builder.gep(w_p, [builder.add(w_base, builder.mul(const(t * NR), kn))])
            accs = _tile_products(builder, [builder.gep(s, [step]) for s in starts], w_t, depth,
                                  accs)
        _tile_epilogue(context, builder, accs, w_p, b_base, ncols, out_p, o_base, ldo, out_p,
                       o_base, rows, act, ir.Constant(ir.IntType(1), 0))
        return context.get_dummy_value()
    return types.void(a, bases, b0, tap_step, n_taps, rows, w, w_base, kn, b_base, ncols, out,
                      o_base, ldo, act), codegen


@intrinsic
def gemv_tile_out(typingctx, a, a_base, w, w_base, kn, b_base, ncols, out, o_base, act):
    """One row of a register tile, for a product with a single row (the batch-1 classifier):
    ``out.flat[o_base + j] = act(sum_k a.flat[a_base + k] * w.flat[w_base + k*NR + j]
    + w.flat[b_base + j])`` for j < ncols.  gemm_tile_out would compute MR rows for it.
    The sums run over k in the same order as in a full tile, so a row gets the same bits
    whether it is computed alone or in a batch."""
    if not (_is_f32_c_array(a) and _is_f32_c_array(w) and _is_f32_c_array(out)
            and _ints(a_base, w_base, kn, b_base, ncols, o_base, act)):
        return None

    def codegen(context, builder, sig, args):
        a_p, w_p, out_p = (_data(context, builder, sig.args[i], args[i]) for i in (0, 2, 7))
        a_base, w_base, kn, b_base, ncols, o_base, act = (
            _intp(context, builder, args[i], sig.args[i]) for i in (1, 3, 4, 5, 6, 8, 9))
        const = lambda v: ir.Constant(a_base.type, v)  # noqa: E731
        row = [builder.gep(a_p, [a_base])]
        sums = _tile_products(builder, row, builder.gep(w_p, [w_base]), kn, [_vconst(0.0)] * NV)
        b_p, out_p = builder.gep(w_p, [b_base]), builder.gep(out_p, [o_base])
        masks = [_lane_mask(builder, builder.sub(ncols, const(j * VEC))) for j in range(NV)]
        vals = _activations(builder, [builder.fadd(sums[j], _load(builder, builder.gep(
            b_p, [const(j * VEC)]), masks[j])) for j in range(NV)], act)
        for j in range(NV):
            _store(builder, vals[j], builder.gep(out_p, [const(j * VEC)]), masks[j])
        return context.get_dummy_value()
    return types.void(a, a_base, w, w_base, kn, b_base, ncols, out, o_base, act), codegen


# ---------------------------------------------------------------- the depthwise micro-kernel
def _dw_codegen(npix, masked):
    """IR of ``n`` depthwise tiles along a row, each of ``npix`` pixels ``step`` pixels
    apart: full vectors for channels [c_lo, c_hi), or one masked vector of c_hi - c_lo lanes
    at c_lo.  The 3x3
    kernels (nearly all of them) get unrolled copies in which the tile's pixels share the
    loads of the input columns they both read: at stride 1 with pixels d apart (d the
    dilation: 1, or DeepLab's 2 and 4), pixel q's taps read columns (q + b)*d, so 4 pixels
    read 6 columns per tap row instead of 12; at stride 2 (undilated) 9 instead of 12.

    The unrolled loop over channel vectors walks one pointer per input row, one into the
    packed weights (their 9 vectors at fixed distances), one into the biases and one into
    the output; the columns and pixels are fixed offsets from those (see :func:`_opaque`)."""
    def codegen(context, builder, sig, args):
        dst_p, src_p, offs_p, w_p = (_data(context, builder, sig.args[i], args[i])
                                     for i in (0, 3, 4, 9))
        d_off, ds, xs, col, step, n, w_off, b_off, kh, kw, c_lo, c_hi, s, d, act = (
            _intp(context, builder, args[i], sig.args[i])
            for i in (1, 2, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18))
        const = lambda v: ir.Constant(d_off.type, v)  # noqa: E731
        mask = _lane_mask(builder, builder.sub(c_hi, c_lo)) if masked else None
        b_p = builder.gep(w_p, [b_off])
        dst_p, w_p = builder.gep(dst_p, [d_off]), builder.gep(w_p, [w_off])
        taps = builder.mul(kh, kw)
        dc = builder.mul(d, xs)                       # input pixels are xs floats apart
        out_step = builder.mul(step, ds)              # from one of the tile's pixels to the next
        in_step = builder.mul(s, builder.mul(step, xs))   # ... and their first taps

        def along_row(emit):
            """emit(dst_t, x0_t) for the n tiles, npix*step pixels apart: their output
            pointer and the offset of their first input column."""
            def tile(_, carried):
                emit(*carried)
                return [builder.gep(carried[0], [builder.mul(const(npix), out_step)]),
                        builder.add(carried[1], builder.mul(const(npix), in_step))]
            _loop(builder, const(0), n, const(1), [dst_p, builder.mul(col, xs)], tile, "dw.t")

        def input_row(a, x0, c0):                    # tap row a's input at column x0, channel c0
            return builder.gep(src_p, [builder.add(builder.load(builder.gep(offs_p, [a])),
                                                   builder.add(x0, c0))])

        def store(accs, out):                        # with the activation, in registers
            for q, acc in enumerate(_activations(builder, accs, act, DW_ACTIVATIONS)):
                _store(builder, acc, builder.gep(out, [builder.mul(const(q), out_step)]), mask)

        def generic(c0, dst_t, x0):
            w_c = builder.gep(w_p, [builder.mul(c0, taps)])   # channel vector c0's weights

            def tap_row(a, accs):
                x_row = input_row(a, x0, c0)

                def tap(b, accs):
                    wv = _load(builder, builder.gep(w_c, [builder.mul(
                        builder.add(builder.mul(a, kw), b), const(VEC))]), mask)
                    x_tap = builder.gep(x_row, [builder.mul(b, dc)])
                    return [_fma(builder, wv, _load(builder, builder.gep(
                        x_tap, [builder.mul(const(q), in_step)]), mask), accs[q])
                        for q in range(npix)]
                return _loop(builder, const(0), kw, const(1), accs, tap, "dw.b")
            bias = _load(builder, builder.gep(b_p, [c0]), mask)
            store(_loop(builder, const(0), kh, const(1), [bias] * npix, tap_row, "dw.a"),
                  builder.gep(dst_t, [c0]))
            return []

        def unrolled_3x3(stride, unit):
            """Pixel q's tap b reads input column q*stride + b, ``unit`` floats apart."""
            offsets = [builder.mul(const(k), unit) for k in range((npix - 1) * stride + 3)]

            def body(_, pointers):
                rows, wv_p, bias_p, out = pointers[:3], pointers[3], pointers[4], pointers[5]
                accs = [_load(builder, bias_p, mask)] * npix
                for a in range(3):
                    columns = {}                     # input column -> its loaded vector
                    for b in range(3):
                        wv = _load(builder, builder.gep(wv_p, [const((3 * a + b) * VEC)]), mask)
                        for q in range(npix):
                            k = q * stride + b
                            if k not in columns:
                                columns[k] = _load(builder, builder.gep(rows[a], [offsets[k]]),
                                                   mask)
                            accs[q] = _fma(builder, wv, columns[k], accs[q])
                store(accs, out)
                return [_opaque(builder, builder.gep(p, [const(n)]))
                        for p, n in zip(pointers, (VEC, VEC, VEC, 9 * VEC, VEC, VEC))]

            def run(dst_t, x0):
                start = [input_row(const(a), x0, c_lo) for a in range(3)] + [
                    builder.gep(w_p, [builder.mul(c_lo, const(9))]), builder.gep(b_p, [c_lo]),
                    builder.gep(dst_t, [c_lo])]
                if masked:
                    body(None, start)
                    return
                vectors = builder.sdiv(builder.sub(c_hi, c_lo), const(VEC))
                _loop(builder, const(0), vectors, const(1), start, body, "dw.c")
            return run

        def over_channels(dst_t, x0):
            if masked:
                generic(c_lo, dst_t, x0)
            else:
                _loop(builder, c_lo, c_hi, const(VEC), [],
                      lambda c0, _: generic(c0, dst_t, x0), "dw.c")

        eq = lambda a, b: builder.icmp_signed("==", a, b)  # noqa: E731
        is_3x3 = builder.and_(eq(kh, const(3)), eq(kw, const(3)))
        if npix == 1:              # one pixel reads columns b*d at any stride: one copy
            with builder.if_else(is_3x3) as (three, rest):
                with three:
                    along_row(unrolled_3x3(1, dc))
                with rest:
                    along_row(over_channels)
            return context.get_dummy_value()
        with builder.if_else(builder.and_(is_3x3, builder.and_(eq(s, const(1)), eq(step, d)))) \
                as (stride1, other):
            with stride1:                            # columns (q + b)*d
                along_row(unrolled_3x3(1, dc))
            with other:
                with builder.if_else(builder.and_(builder.and_(is_3x3, eq(s, const(2))),
                                                  builder.and_(eq(d, const(1)),
                                                               eq(step, const(1))))) \
                        as (stride2, rest):
                    with stride2:                    # columns 2q + b
                        along_row(unrolled_3x3(2, xs))
                    with rest:
                        along_row(over_channels)
        return context.get_dummy_value()
    return codegen


def _dw_intrinsic(npix, masked, doc):
    @intrinsic
    def tile(typingctx, dst, d_off, ds, src, offs, xs, col, step, n, w, w_off, b_off, kh, kw,
             c_lo, c_hi, s, d, act):
        if not (_is_f32_c_array(dst) and _is_f32_c_array(src) and _is_f32_c_array(w)
                and isinstance(offs, types.Array) and offs.dtype == types.int64
                and offs.layout == "C"
                and _ints(d_off, ds, xs, col, step, n, w_off, b_off, kh, kw, c_lo, c_hi, s, d,
                          act)):
            return None
        return (types.void(dst, d_off, ds, src, offs, xs, col, step, n, w, w_off, b_off, kh,
                           kw, c_lo, c_hi, s, d, act), _dw_codegen(npix, masked))
    tile.__doc__ = doc
    return tile


# The activations a depthwise tile applies: ReLU, ReLU6.  Not SiLU: a tile's few sums are
# too few independent exp chains to hide their latency, so depthwise.depthwise_row applies
# SiLU to the finished row instead (and the tiles compile without four copies of it).
DW_ACTIVATIONS = ACTIVATIONS_IR[1:3]

_DW_DOC = """{what} of a depthwise convolution, with its activation ``act`` (none, ReLU or
ReLU6: a run-time code; any other leaves the sums as they are, see DW_ACTIVATIONS)::

    dst.flat[d_off + p*step*ds + ch] = act(w.flat[b_off + ch] + sum_{{a<kh, b<kw}}
                                           w.flat[w_off + g*kh*kw*VEC + (a*kw + b)*VEC + l]
                                           * src.flat[offs[a] + (col + p*step*s + b*d)*xs + ch])

for the pixels p = t*{npix} + q of n tiles (t < n, q < {npix}) and channels ch = g*VEC + l in
[c_lo, c_hi) ({lanes}; c_lo a multiple of VEC): output pixels ``step`` apart (1; d for a
dilated 3x3 kernel at stride 1, whose pixels then share input columns).  ``offs[a]`` is the
flat offset of the input row read by tap row a (padded: every tap must lie inside src),
``col`` the column of pixel 0's first tap, s the stride, d the dilation, w the packed weight
(``depthwise.DepthwiseWeight``: the kh*kw vectors of channel vector g side by side) and the
biases; input pixels are xs >= c floats apart, output pixels ds >= c (see
depthwise.pixel_stride).  The tiles run one after the other in one call (the set-up and the
choice of loop, once per row rather than per tile: 1.4x at 32 channels on AVX2)."""
dw_tile = _dw_intrinsic(DW_PIX, False, _DW_DOC.format(
    what="Tiles of DW_PIX output pixels", npix="DW_PIX",
    lanes="whole vectors: c_hi - c_lo a multiple of VEC"))
dw_tile_n = _dw_intrinsic(DW_PIX, True, _DW_DOC.format(
    what="dw_tile for one partial channel vector", npix="DW_PIX", lanes="c_hi - c_lo < VEC"))
dw_pixel = _dw_intrinsic(1, False, _DW_DOC.format(
    what="Single output pixels", npix="1", lanes="whole vectors"))
dw_pixel_n = _dw_intrinsic(1, True, _DW_DOC.format(
    what="Single output pixels, one partial channel vector", npix="1",
    lanes="c_hi - c_lo < VEC"))


# ---------------------------------------------------------------- block copies
@intrinsic
def interleave3(typingctx, dst, d_off, src, s_off, plane):
    """VEC pixels of three planes interleaved, channels last (the RGB input of the stem)::

        dst.flat[d_off + 3*x + c] = src.flat[s_off + c*plane + x]    for x < VEC, c < 3

    Three vector loads, one shuffle of the 3 * VEC lanes, one 3 * VEC-float store (LLVM
    does not vectorise the scalar loop: it cannot tell that dst and src do not overlap)."""
    if not (_is_f32_c_array(dst) and _is_f32_c_array(src) and _ints(d_off, s_off, plane)):
        return None

    def codegen(context, builder, sig, args):
        d_p, s_p = (_data(context, builder, sig.args[i], args[i]) for i in (0, 2))
        d_off, s_off, plane = (_intp(context, builder, args[i], sig.args[i]) for i in (1, 3, 4))
        s_p = builder.gep(s_p, [s_off])
        r, g, b = (_load(builder, builder.gep(s_p, [builder.mul(plane, ir.Constant(
            plane.type, c))])) for c in range(3))
        rg = builder.shuffle_vector(r, g, _lanes(range(2 * VEC)))
        b2 = builder.shuffle_vector(b, b, _lanes(list(range(VEC)) * 2))
        rgb = builder.shuffle_vector(rg, b2, _lanes([c * VEC + x for x in range(VEC)
                                                     for c in range(3)]))
        out = builder.bitcast(builder.gep(d_p, [d_off]), rgb.type.as_pointer())
        builder.store(rgb, out, align=4)
        return context.get_dummy_value()
    return types.void(dst, d_off, src, s_off, plane), codegen


@intrinsic
def transpose_block(typingctx, dst, d_off, ldd, src, s_off, lds, rows, cols, scale):
    """A block of up to VEC x VEC floats transposed (and scaled) in registers::

        dst.flat[d_off + c*ldd + r] = scale * (src.flat[s_off + r*lds + c] if r < rows else 0)

    for r < VEC, c < cols (<= VEC): ``rows`` rows of ``cols`` floats are read (lds apart),
    ``cols`` rows of VEC floats written (ldd apart).  log2(VEC) rounds of interleaving
    pairs of vectors (row i with row i + VEC/2) turn rows into columns: VEC/2 * log2(VEC)
    shuffle pairs instead of VEC * VEC scalar stores (MobileViT's keys, packed once per
    sequence and head as the B operand of Q K^T)."""
    if not (_is_f32_c_array(dst) and _is_f32_c_array(src)
            and _ints(d_off, ldd, s_off, lds, rows, cols) and isinstance(scale, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        d_p, s_p = (_data(context, builder, sig.args[i], args[i]) for i in (0, 3))
        d_off, ldd, s_off, lds, rows, cols = (_intp(context, builder, args[i], sig.args[i])
                                              for i in (1, 2, 4, 5, 6, 7))
        scale = context.cast(builder, args[8], sig.args[8], types.float32)
        const = lambda v: ir.Constant(d_off.type, v)  # noqa: E731
        s_p, d_p = builder.gep(s_p, [s_off]), builder.gep(d_p, [d_off])
        col_mask = _lane_mask(builder, cols)
        off = ir.Constant(_MASK, [0] * VEC)
        vecs = [_load(builder, builder.gep(s_p, [builder.mul(const(r), lds)]), builder.select(
            builder.icmp_signed("<", const(r), rows), col_mask, off)) for r in range(VEC)]
        half = VEC // 2
        lo = _lanes([i // 2 + (VEC if i % 2 else 0) for i in range(VEC)])
        hi = _lanes([half + i // 2 + (VEC if i % 2 else 0) for i in range(VEC)])
        for _ in range(VEC.bit_length() - 1):       # log2(VEC) perfect shuffles
            nxt = []
            for i in range(half):
                nxt += [builder.shuffle_vector(vecs[i], vecs[i + half], lo),
                        builder.shuffle_vector(vecs[i], vecs[i + half], hi)]
            vecs = nxt
        factor = _splat(builder, scale)
        for c in range(VEC):
            with builder.if_then(builder.icmp_signed("<", const(c), cols)):
                _store(builder, builder.fmul(vecs[c], factor),
                       builder.gep(d_p, [builder.mul(const(c), ldd)]))
        return context.get_dummy_value()
    return types.void(dst, d_off, ldd, src, s_off, lds, rows, cols, scale), codegen


@intrinsic
def copy_floats(typingctx, dst, d_off, src, s_off, n):
    """dst.flat[d_off : d_off + n] = src.flat[s_off : s_off + n] (a memmove)."""
    if not (_is_f32_c_array(dst) and _is_f32_c_array(src) and _ints(d_off, s_off, n)):
        return None

    def codegen(context, builder, sig, args):
        d = builder.gep(_data(context, builder, sig.args[0], args[0]),
                        [_intp(context, builder, args[1], sig.args[1])])
        s = builder.gep(_data(context, builder, sig.args[2], args[2]),
                        [_intp(context, builder, args[3], sig.args[3])])
        nbytes = builder.mul(_intp(context, builder, args[4], sig.args[4]),
                             ir.Constant(ir.IntType(64), 4))
        i8p = ir.IntType(8).as_pointer()
        fn = _declare(builder, "llvm.memmove.p0.p0.i64", ir.VoidType(),
                      [i8p, i8p, ir.IntType(64), ir.IntType(1)])
        builder.call(fn, [builder.bitcast(d, i8p), builder.bitcast(s, i8p), nbytes,
                          ir.Constant(ir.IntType(1), 0)])
        return context.get_dummy_value()
    return types.void(dst, d_off, src, s_off, n), codegen


@intrinsic
def zero_floats(typingctx, dst, d_off, n):
    """dst.flat[d_off : d_off + n] = 0 (a memset)."""
    if not (_is_f32_c_array(dst) and _ints(d_off, n)):
        return None

    def codegen(context, builder, sig, args):
        d = builder.gep(_data(context, builder, sig.args[0], args[0]),
                        [_intp(context, builder, args[1], sig.args[1])])
        nbytes = builder.mul(_intp(context, builder, args[2], sig.args[2]),
                             ir.Constant(ir.IntType(64), 4))
        i8p = ir.IntType(8).as_pointer()
        fn = _declare(builder, "llvm.memset.p0.i64", ir.VoidType(),
                      [i8p, ir.IntType(8), ir.IntType(64), ir.IntType(1)])
        builder.call(fn, [builder.bitcast(d, i8p), ir.Constant(ir.IntType(8), 0), nbytes,
                          ir.Constant(ir.IntType(1), 0)])
        return context.get_dummy_value()
    return types.void(dst, d_off, n), codegen

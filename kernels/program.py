"""A planned model is a *program*: a table of kernel calls run by one parallel kernel.

Once a model's graph is planned for an input shape and a thread count, every
kernel call is fixed: which kernel, where its inputs and outputs live, its sizes,
how its work is cut into parallel jobs.  Each call becomes one row of an int64
table (an :class:`Op`), and :func:`execute` runs the rows in order, on every
worker thread at once (``workers.py``)::

    for each op:                                  # in order: each reads what earlier ones wrote
        while (j := next job of this op) < op.n_jobs:   # the workers share the jobs
            run_job(A, W, op, j)                  # -> e.g. pointwise.gemm_job
        barrier                                   # the op is finished everywhere

Memory is two flat float32 *arenas*: ``A`` holds every activation tensor of the
plan (and scratch space), ``W`` every weight of the model; ops name tensors by
their offset in them.  So a whole forward pass is one Numba call (no Python per
layer), compiling a model means compiling one parallel kernel, and loading it
from Numba's disk cache is one cache entry.

Each kernel family provides, in its own module, a ``*_job(A, W, p, j)`` function
(job j of op row p) and a Python function that checks arguments and returns the
:class:`Op`; the ``pointwise_conv``-style functions the tests call build a
one-op program around their arrays with :func:`run_ops`.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .activations import activation_job
from .attention_mha import mha_job
from .attention_separable import separable_attention_job
from .conv import conv_job
from .depthwise import separable_job
from .layout import nchw_to_nhwc_job
from .norm import group_norm_job, layer_norm_job
from .patches import fold_job, unfold_job
from .pointwise import gemm_job
from .policy import OP_FIELDS, SCRATCH, check, kernel
from .pooling import pool_job
from .workers import POOL, barrier, default_threads, next_job

FIELDS = OP_FIELDS     # int64 fields per op row: [op code, jobs, the op's own fields...]
ALIGN = 16             # arena offsets are multiples of 16 floats (64 bytes: a cache line)

# op name -> code; the codes are the branches of run_job below
CODES = {"gemm": 1, "conv": 2, "separable": 3, "group_norm": 4, "layer_norm": 5,
         "separable_attention": 6, "mha": 7, "unfold": 8, "fold": 9, "pool": 10,
         "nchw_to_nhwc": 11, "activation": 12}


class Op:
    """One kernel call: ``kind`` (a key of CODES), how many parallel jobs, its int fields, and
    the floats of scratch space each worker thread needs (placed in A by the planner, which
    sets ``scratch_off``)."""

    __slots__ = ("kind", "n_jobs", "fields", "scratch", "scratch_off")

    def __init__(self, kind, n_jobs, fields, scratch=0):
        check(kind in CODES, f"unknown op {kind!r}")
        check(len(fields) <= SCRATCH - 2, f"op {kind} has too many fields")
        self.kind, self.n_jobs, self.fields = kind, max(1, int(n_jobs)), [int(f) for f in fields]
        self.scratch = -(-int(scratch) // ALIGN) * ALIGN if scratch else 0
        self.scratch_off = 0

    def __repr__(self):
        return f"Op({self.kind}, jobs={self.n_jobs})"


def table(ops):
    """The int64 (len(ops), FIELDS) table of a list of Ops."""
    prog = np.zeros((max(1, len(ops)), FIELDS), np.int64)
    for i, op in enumerate(ops):
        prog[i, 0], prog[i, 1] = CODES[op.kind], op.n_jobs
        prog[i, 2:2 + len(op.fields)] = op.fields
        prog[i, SCRATCH], prog[i, SCRATCH + 1] = op.scratch_off, op.scratch
    return prog


class Arena:
    """Lays out arrays (or empty space) one after another in one flat float32 array."""

    def __init__(self):
        self.parts, self.size = [], 0

    def add(self, array=None, size=None):
        """Reserve room for ``array`` (copied in by :meth:`build`) or ``size`` floats;
        returns the offset."""
        n = int(np.size(array)) if array is not None else int(size)
        offset = self.size
        self.parts.append((offset, array))
        self.size = offset + -(-max(n, 1) // ALIGN) * ALIGN
        return offset

    def build(self):
        flat = np.zeros(max(self.size, ALIGN), np.float32)
        for offset, array in self.parts:
            if array is not None:
                a = np.asarray(array, np.float32).ravel()
                flat[offset:offset + a.size] = a
        return flat


# ---------------------------------------------------------------- the executor
JOBS = {"gemm": gemm_job, "conv": conv_job, "separable": separable_job,
        "group_norm": group_norm_job, "layer_norm": layer_norm_job,
        "separable_attention": separable_attention_job, "mha": mha_job, "unfold": unfold_job,
        "fold": fold_job, "pool": pool_job, "nchw_to_nhwc": nchw_to_nhwc_job,
        "activation": activation_job}


def job_addresses(ops):
    """int64 array: code -> address of the compiled job function, for the ops' kinds only
    (the first use of a kind compiles it, or loads it from the cache)."""
    table = np.zeros(max(CODES.values()) + 1, np.int64)
    for kind in {op.kind for op in ops}:
        table[CODES[kind]] = JOBS[kind].address
    return table


@intrinsic
def call_job(typingctx, address, A, W, p, j, worker):
    """Call the job function at ``address`` (a C function, see policy.JOB_SIGNATURE)."""
    def codegen(context, builder, sig, args):
        i64, f32p = ir.IntType(64), ir.FloatType().as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [f32p, i64, f32p, i64, i64.as_pointer(), i64, i64])
        arrays = [context.make_array(t)(context, builder, v) for t, v in zip(sig.args[1:4],
                                                                             args[1:4])]
        size = lambda a: builder.extract_value(a.shape, 0)  # noqa: E731
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, [arrays[0].data, size(arrays[0]), arrays[1].data, size(arrays[1]),
                          arrays[2].data, context.cast(builder, args[4], sig.args[4], types.int64),
                          context.cast(builder, args[5], sig.args[5], types.int64)])
        return context.get_dummy_value()
    return types.void(address, A, W, p, j, worker), codegen


@kernel(nogil=True)
def execute(A, W, prog, jobs, first, last, sync, worker, n_workers):
    """Ops first..last of the table ``prog`` on the arenas A (activations) and W (weights),
    as worker ``worker`` of ``n_workers``: the workers take turns at each op's jobs
    (counter sync[1 + op]) and wait for each other before the next op (sync[0]).
    ``jobs``: the job functions' addresses by op code (:func:`job_addresses`)."""
    for i in range(first, last):
        p = prog[i]
        address = jobs[p[0]]
        if n_workers == 1:
            for j in range(p[1]):
                call_job(address, A, W, p, j, worker)
            continue
        while True:
            j = next_job(sync, 1 + i - first)
            if j >= p[1]:
                break
            call_job(address, A, W, p, j, worker)
        barrier(sync, 1 + i - first, n_workers)


def run_program(A, W, prog, jobs, first, last, threads=1):
    """Run ops first..last of ``prog`` on ``threads`` threads (jobs: :func:`job_addresses`)."""
    POOL.run(execute, (A, W, prog, jobs, first, last), threads, 2 + last - first)


def run_ops(ops, A, W, threads=None):
    """Run a list of Ops on arena arrays A and W (the standalone kernels' entry point);
    ``threads`` defaults to every core the process may use.  Returns A (the ops' scratch
    space is appended to it)."""
    threads = threads or default_threads()
    size = A.size
    for op in ops:
        op.scratch_off = size
        size += op.scratch * threads
    if size > A.size:
        A = np.concatenate([A, np.empty(size - A.size, np.float32)])
    run_program(A, W, table(ops), job_addresses(ops), 0, len(ops), threads)
    return A

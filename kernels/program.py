"""A planned model is a *program*: a table of kernel calls run by one parallel kernel.

Once a model's graph is planned for an input shape and a thread count, every
kernel call is fixed: which kernel, where its inputs and outputs live, its sizes,
how its work is cut into parallel jobs.  Each call becomes one row of an int64
table (an :class:`Op`), and :func:`execute` runs the rows in order, on every
worker thread at once (``workers.py``)::

    for each op:                                  # in order: each reads what earlier ones wrote
        while (j := next job of this op) < op.n_jobs:   # the workers share the jobs
            run_job(A, W, op, j)                  # -> e.g. pointwise.gemm_job
            count it finished
        (the next op waits until all of this op's jobs are counted finished)

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

from .lazy import LazyModule, intrinsic

from .activations import activation_job
from .attention_mha import mha_job
from .attention_separable import separable_attention_job
from .conv import conv_direct_job, conv_job
from .depthwise import separable_job
from .layout import copy_channels_job, copy_checked, nchw_to_nhwc_job
from .norm import group_norm_job, layer_norm_job
from .patches import fold_job, unfold_job
from .pointwise import gemm_job
from .policy import (CACHE_DIR, OP_FIELDS, SCRATCH, check, claim, compile_all, entry, helper,
                     numba)
from .pooling import pool_job
from .resize import resize_job
from .workers import (ANSWERED, ARGS, DOOR, POOL, TASK, WAITING, address_of, atomic_cas,
                      atomic_load, atomic_store, float32_pointer, int64_pointer, job_done,
                      next_job, resolve_threads, settle, wait_done, wait_for_call)

FIELDS = OP_FIELDS     # int64 fields per op row: [op code, jobs, the op's own fields...]
ALIGN = 16             # arena offsets are multiples of 16 floats (64 bytes: a cache line)


def aligned_floats(n, zero=False):
    """A new float32 array of n values whose data starts on a 64-byte boundary, so that
    arena offsets that are multiples of ALIGN are cache-line aligned addresses too.
    (NumPy's allocator only promises 16 bytes: a large array usually starts 16 bytes into
    a page, and then every other AVX2 vector -- every AVX-512 vector -- of a tensor would
    straddle two cache lines.)"""
    n = max(int(n), 1)
    raw = (np.zeros if zero else np.empty)(n + ALIGN, np.float32)
    skip = (-raw.ctypes.data % (4 * ALIGN)) // 4
    return raw[skip:skip + n]

# op name -> code; the codes are the branches of run_job below
CODES = {"gemm": 1, "conv": 2, "separable": 3, "group_norm": 4, "layer_norm": 5,
         "separable_attention": 6, "mha": 7, "unfold": 8, "fold": 9, "pool": 10,
         "nchw_to_nhwc": 11, "activation": 12, "resize": 13, "copy_channels": 14,
         "conv_direct": 15}


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
        self.parts, self.size, self.filled = [], 0, 0

    def add(self, array=None, size=None):
        """Reserve room for ``array`` (copied in by :meth:`build`) or ``size`` floats;
        returns the offset."""
        n = int(np.size(array)) if array is not None else int(size)
        offset = self.size
        self.parts.append((offset, array))
        self.size = offset + -(-max(n, 1) // ALIGN) * ALIGN
        return offset

    def build(self):
        """The flat array, every array copied in."""
        flat = self.allocate()
        self._copy(flat, 0, len(self.parts))
        return flat

    def allocate(self):
        """The flat array, zeros (to be filled in with :meth:`fill`)."""
        return aligned_floats(max(self.size, ALIGN), zero=True)

    def fill(self, flat, count):
        """Copy the arrays added up to the ``count``-th into ``flat`` (those not copied yet)
        and let go of them: filling a large arena piece by piece, while their owners free
        their own copies, needs little more memory than the arena itself."""
        self._copy(flat, self.filled, count)
        for i in range(self.filled, count):
            self.parts[i] = (self.parts[i][0], None)
        self.filled = max(self.filled, count)

    def _copy(self, flat, first, last):
        for offset, array in self.parts[first:last]:
            if array is not None:
                a = np.asarray(array, np.float32).ravel()
                flat[offset:offset + a.size] = a


ir = LazyModule("llvmlite.ir")                 # Numba and LLVM are only needed to compile
types = LazyModule("numba.core.types")


# ---------------------------------------------------------------- the executor
JOBS = {"gemm": gemm_job, "conv": conv_job, "separable": separable_job,
        "group_norm": group_norm_job, "layer_norm": layer_norm_job,
        "separable_attention": separable_attention_job, "mha": mha_job, "unfold": unfold_job,
        "fold": fold_job, "pool": pool_job, "nchw_to_nhwc": nchw_to_nhwc_job,
        "activation": activation_job, "resize": resize_job, "copy_channels": copy_channels_job,
        "conv_direct": conv_direct_job}


N_CODES = max(CODES.values()) + 1


# Rough seconds each one takes to compile (one core, Zen 3): the costliest are compiled
# first, so that the two compiling processes end close together (policy.compile_all).
COMPILE_SECONDS = {"separable": 3.0, "conv": 1.6, "conv_direct": 1.6, "mha": 1.7,
                   "resize": 1.5, "layer_norm": 1.3, "group_norm": 1.2, "gemm": 1.1,
                   "separable_attention": 1.1, "activation": 0.9, "execute": 0.7, "pool": 0.6}

# Jobs compiled in the same process as another (when both are needed): they share its big
# helpers (the gemm job is little more than separable's gemm_block), which a process
# compiles once -- only ~40 % of their own cost is left.
COMPILED_WITH = {"gemm": "separable", "serve": "execute", "copy_checked": "execute"}


def _calls():
    """The C functions every model call needs besides its jobs, compiled as one unit: the
    executor, the pool threads' doorbell loop, the checked copy of a call's input."""
    return [("execute", execute), ("serve", serve), ("copy_checked", copy_checked)]


def _functions(kinds):
    return _calls() + [(kind, JOBS[kind]) for kind in sorted(kinds)]


def compile_kernels(kinds=None):
    """Compile -- or load from the cache -- the executor and the jobs of ``kinds`` (default:
    every op kind), as a first run would (see :func:`kernel_status`).  Kernels not in the
    cache yet are compiled by two processes at once where there are two cores (policy.py's
    :func:`compile_all`)."""
    units = {}
    for name, fn in _functions(JOBS if kinds is None else kinds):
        unit = units.setdefault(COMPILED_WITH.get(name, name), [[], 0.0])
        unit[0].append(fn)
        unit[1] += COMPILE_SECONDS.get(name, 0.3) * (0.4 if name in COMPILED_WITH else 1.0)
    compile_all([(tuple(fns), cost) for fns, cost in units.values()])


def compile_child(cache_dir, claims, units):
    """Entry point of the helper process of :func:`policy.compile_all`: work down ``units``
    (each "key,key,...": functions compiled together), compiling into the cache every unit
    this process claims first (:func:`policy.claim`); exit status 0 when done."""
    if cache_dir != CACHE_DIR:          # another tinymvit (other sources): no use compiling
        return 3
    by_key = {fn.key: fn for _, fn in _functions(JOBS)}
    for i, unit in enumerate(units):
        if claim(claims, i):
            for key in unit.split(","):
                by_key[key].address
    return 0


def cached_kernels():
    """Names of the executor and job functions whose machine code is in the cache now."""
    from . import native
    return {name for name, fn in _functions(JOBS) if native.is_cached(CACHE_DIR, fn.key)}


def kernels_ready(kinds):
    """Whether the executor and the jobs of ``kinds`` can run without compiling anything:
    each loaded in this process already or its machine code in the cache."""
    from . import native
    return all(fn._address is not None or native.is_cached(CACHE_DIR, fn.key)
               for _, fn in _functions(kinds))


def kernel_status():
    """{name: 'compiled' (in this process), 'cached' (loaded from the cache) or 'unused'}
    for the executor (and the other C functions of :func:`_calls`) and every job function."""
    return {name: fn.status for name, fn in [*_calls(), *sorted(JOBS.items())]}


def job_addresses(ops, also=()):
    """int64 array: code -> address of the compiled job function, for the ops' kinds only
    (the first use of a kind compiles it, or loads it from the cache).  ``also``: more kinds
    to compile now, beside them (e.g. the resize a segmentation model's output needs next:
    compiled in parallel rather than after)."""
    table = np.zeros(N_CODES, np.int64)
    compile_kernels({op.kind for op in ops} | set(also))
    for kind in {op.kind for op in ops}:
        table[CODES[kind]] = JOBS[kind].address
    return table


@intrinsic
def call_job(typingctx, address, pa, a_size, pw, w_size, prog, i, j, worker):
    """Call the job function at ``address`` (a C function, see policy.JOB_SIGNATURE) for
    row i of the op table ``prog``."""
    def codegen(context, builder, sig, args):
        i64, f32p = ir.IntType(64), ir.FloatType().as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [f32p, i64, f32p, i64, i64.as_pointer(), i64, i64])
        as_i64 = lambda k: context.cast(builder, args[k], sig.args[k], types.int64)  # noqa: E731
        table = context.make_array(sig.args[5])(context, builder, args[5]).data
        row = builder.gep(table, [builder.mul(as_i64(6), ir.Constant(i64, OP_FIELDS))])
        fn = builder.inttoptr(as_i64(0), fnty.as_pointer())
        builder.call(fn, [args[1], as_i64(2), args[3], as_i64(4), row, as_i64(7), as_i64(8)])
        return context.get_dummy_value()
    return types.void(address, pa, a_size, pw, w_size, prog, i, j, worker), codegen


EXECUTE_SIGNATURE = ("void(CPointer(float32), int64, CPointer(float32), int64, CPointer(int64), "
                     "int64, CPointer(int64), int64, int64, CPointer(int64), int64, int64, "
                     "CPointer(int64), int64)")


@entry(EXECUTE_SIGNATURE)
def execute(pa, a_size, pw, w_size, pprog, n_ops, pjobs, first, last, psync, worker, n_workers,
            pdoors, n_doors):
    """Ops first..last of the op table (n_ops rows at pprog) on the arenas A and W, as
    worker ``worker`` of ``n_workers`` (see :func:`run_part`).  pdoors: the addresses of the
    doorbells of the n_doors pool threads (workers 1..n_doors; none in a pool thread):
    those waiting on theirs are asked to join first, and the call returns only once they
    have left it (see workers.py)."""
    doors = numba.carray(pdoors, (n_doors,))
    for w in range(n_doors):
        ring(numba.carray(int64_pointer(doors[w]), (DOOR,)), pa, a_size, pw, w_size, pprog,
             n_ops, pjobs, first, last, psync, n_workers)
    run_part(pa, a_size, pw, w_size, pprog, n_ops, pjobs, first, last, psync, worker, n_workers)
    for w in range(n_doors):
        settle(numba.carray(int64_pointer(doors[w]), (DOOR,)))


@helper
def ring(door, pa, a_size, pw, w_size, pprog, n_ops, pjobs, first, last, psync, n_workers):
    """Ask the pool thread waiting on ``door`` to join the call: its arguments into the
    door, then WAITING -> TASK.  Nothing if it is not waiting (its queue brings it the call,
    or it misses this one: the other workers do its jobs)."""
    if atomic_load(door, 0) != WAITING:
        return
    door[ARGS], door[ARGS + 1], door[ARGS + 2], door[ARGS + 3] = (address_of(pa), a_size,
                                                                   address_of(pw), w_size)
    door[ARGS + 4], door[ARGS + 5], door[ARGS + 6] = address_of(pprog), n_ops, address_of(pjobs)
    door[ARGS + 7], door[ARGS + 8], door[ARGS + 9] = first, last, address_of(psync)
    door[ARGS + 10] = n_workers
    atomic_cas(door, 0, WAITING, TASK)


SERVE_SIGNATURE = "void(CPointer(int64), int64, int64)"


@entry(SERVE_SIGNATURE)
def serve(pdoor, worker, wait):
    """Run by pool thread ``worker`` after its part of a call (GIL released): wait on its
    doorbell at pdoor for the next call and run its part of each, until none comes for a
    while (workers.wait_for_call; ``wait`` 0: not at all).  door[ANSWERED] counts the calls
    joined so."""
    door = numba.carray(pdoor, (DOOR,))
    atomic_store(door, 0, WAITING)
    while wait_for_call(door, wait):
        run_part(float32_pointer(door[ARGS]), door[ARGS + 1], float32_pointer(door[ARGS + 2]),
                 door[ARGS + 3], int64_pointer(door[ARGS + 4]), door[ARGS + 5],
                 int64_pointer(door[ARGS + 6]), door[ARGS + 7], door[ARGS + 8],
                 int64_pointer(door[ARGS + 9]), worker, door[ARGS + 10])
        door[ANSWERED] += 1
        atomic_store(door, 0, WAITING)                     # left the call


@helper
def run_part(pa, a_size, pw, w_size, pprog, n_ops, pjobs, first, last, psync, worker, n_workers):
    """Ops first..last of the op table (n_ops rows at pprog) on the arenas A and W, as
    worker ``worker`` of ``n_workers``.  An op's jobs are cut into n_workers runs of
    consecutive jobs; each worker takes the jobs of its own run first -- the same part of
    every op, e.g. the same rows of an image, whose inputs the op before wrote into this
    core's cache -- then helps with the others' runs.  A job is claimed from its run's
    counter (sync slot (n_workers + 1)*k + run for the k-th op run) and counted finished in
    slot (n_workers + 1)*k + n_workers; an op starts once every job of the op before it is
    finished, and worker 0 returns once the last op is finished.  pjobs: the job functions'
    addresses by op code (:func:`job_addresses`)."""
    prog = numba.carray(pprog, (n_ops, OP_FIELDS))
    jobs = numba.carray(pjobs, (N_CODES,))
    slots = n_workers + 1                                   # per op: run counters, finished
    sync = numba.carray(psync, (slots * (last - first),))
    for i in range(first, last):
        address = jobs[prog[i, 0]]
        n_jobs = prog[i, 1]
        if n_workers == 1:
            for j in range(n_jobs):
                call_job(address, pa, a_size, pw, w_size, prog, i, j, worker)
            continue
        k = i - first
        if k > 0:
            wait_done(sync, slots * k - 1, prog[i - 1, 1])    # the op before is finished
        for t in range(n_workers):                          # its own run, then the others'
            run = (worker + t) % n_workers
            lo, hi = run * n_jobs // n_workers, (run + 1) * n_jobs // n_workers
            while True:
                j = lo + next_job(sync, slots * k + run)
                if j >= hi:
                    break
                call_job(address, pa, a_size, pw, w_size, prog, i, j, worker)
                job_done(sync, slots * k + n_workers)
    if n_workers > 1 and worker == 0 and last > first:
        wait_done(sync, slots * (last - first) - 1, prog[last - 1, 1])


def _execute(A, W, prog, jobs, first, last, sync, worker, n_workers, doors):
    """Call :func:`execute` (through ctypes, which releases the GIL during the call)."""
    execute.callable()(A.ctypes.data, A.size, W.ctypes.data, W.size, prog.ctypes.data,
                       prog.shape[0], jobs.ctypes.data, first, last, sync.ctypes.data, worker,
                       n_workers, None if doors is None else doors.ctypes.data,
                       0 if doors is None else doors.size)


def run_program(A, W, prog, jobs, first, last, threads=1):
    """Run ops first..last of ``prog`` on ``threads`` threads (jobs: :func:`job_addresses`)."""
    POOL.run(_execute, (A, W, prog, jobs, first, last), threads,
             (threads + 1) * (last - first), serve.callable() if threads > 1 else None)


def bind_ops(ops, A, W, threads=None):
    """Plan a list of Ops on arena arrays A and W once: returns (A, run), ``run()`` running
    them (A grows by the ops' scratch space).  ``threads`` defaults to every core the
    process may use.  The standalone kernels (and benchmarks) use this."""
    threads = resolve_threads(threads)
    size = A.size
    for op in ops:
        op.scratch_off = size
        size += op.scratch * threads
    if size > A.size:
        grown = aligned_floats(size)
        grown[:A.size] = A
        A = grown
    prog, jobs = table(ops), job_addresses(ops)
    return A, lambda: run_program(A, W, prog, jobs, 0, len(ops), threads)


def run_ops(ops, A, W, threads=None):
    """Run a list of Ops on arena arrays A and W once; returns A (see :func:`bind_ops`)."""
    A, run = bind_ops(ops, A, W, threads)
    run()
    return A

"""tinymvit's own worker threads: how a program's jobs are shared between cores.

A kernel that runs on several cores is an ordinary Numba function compiled with
``nogil=True`` and called at the same time from several threads -- the calling
thread and ``threads - 1`` pool threads -- each with its own ``worker`` number.
The jobs of a loop are cut into one run of consecutive jobs per worker.  A worker
takes the jobs of its own run first, then those left in the others' runs, each by
taking the next free job index of the run from a counter incremented atomically
(:func:`next_job`), so a slow job never leaves the other cores idle.  Each
finished job is counted in one more counter (:func:`job_done`); work that needs a
loop's results waits for that count to reach the loop's size (:func:`wait_done`),
not for the other *threads*::

    for run in my_run, the_runs_after_it:    # in every worker
        while True:
            j = run.first + next_job(sync, run.claimed)
            if j >= run.end:
                break
            ... job j ...
            job_done(sync, finished)
    wait_done(sync, finished, n_jobs)        # every job of the loop is finished

So a worker thread the operating system has not scheduled yet (a busy machine)
never holds the others up: they take its share of the jobs, and when it wakes
it finds nothing left and moves on.  The calling thread returns as soon as the
last job is finished, without waiting for pool threads that have not even
started.

Its own run first: a worker then computes the same part of every loop -- the same
rows of an image, the same images of a batch -- and reads what it wrote itself in
the loop before from its own core's cache, instead of from another core's
(in-process A/B on Zen 3, 2 threads, batch 1: MobileNetV2 -1.3..2.6 %, MobileViTV2-0.5
-1.3 %, MobileViT-XXS -2.6 %; batch 8 unchanged within noise).

No OpenMP or TBB is involved: a forked child simply starts new pool threads (no
hang after ``fork``), and Numba compiles plain serial functions (a parallel
``prange`` kernel costs several seconds of compilation each).  Between calls a
pool thread waits a little on its doorbell (see below), then on a queue, so it
uses no CPU while the model is idle; waiting for a job count it spins briefly
(it is only ever waiting for another core), then yields the core.  One model
call uses the pool at a time; a concurrent call from another thread runs on its
own thread instead of waiting (calls never block each other).
"""
import functools
import math
import numbers
import os
import queue
import threading

import numpy as np

from .lazy import LazyModule, intrinsic
from .policy import check, helper

ir = LazyModule("llvmlite.ir")                 # Numba and LLVM are only needed to compile
types = LazyModule("numba.core.types")


# ---------------------------------------------------------------- atomics
def _slot(arr, idx, *ints):
    """Typing check of the atomics: an int64 C array, an integer index, integer values."""
    return (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.layout == "C"
            and all(isinstance(v, types.Integer) for v in (idx, *ints)))


def _slot_pointer(context, builder, sig, args):
    """The address of arr[idx] (arguments 0 and 1), and the other arguments as int64."""
    data = context.make_array(sig.args[0])(context, builder, args[0]).data
    ptr = builder.gep(data, [context.cast(builder, args[1], sig.args[1], types.intp)])
    return ptr, [context.cast(builder, a, t, types.int64) for a, t in zip(args[2:], sig.args[2:])]


@intrinsic
def atomic_add(typingctx, arr, idx, value):
    """arr[idx] += value atomically (sequentially consistent); returns the old value."""
    if not _slot(arr, idx, value):
        return None

    def codegen(context, builder, sig, args):
        ptr, (val,) = _slot_pointer(context, builder, sig, args)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")
    return types.int64(arr, idx, value), codegen


@intrinsic
def atomic_load(typingctx, arr, idx):
    """arr[idx], read atomically with acquire order (sees what others wrote before their add)."""
    if not _slot(arr, idx):
        return None

    def codegen(context, builder, sig, args):
        ptr, _ = _slot_pointer(context, builder, sig, args)
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(arr, idx), codegen


@intrinsic
def atomic_store(typingctx, arr, idx, value):
    """arr[idx] = value, written atomically with release order (what this thread wrote
    before is seen by whoever reads the value with acquire order)."""
    if not _slot(arr, idx, value):
        return None

    def codegen(context, builder, sig, args):
        ptr, (val,) = _slot_pointer(context, builder, sig, args)
        builder.store_atomic(val, ptr, "release", 8)
        return context.get_dummy_value()
    return types.void(arr, idx, value), codegen


@intrinsic
def atomic_cas(typingctx, arr, idx, expected, new):
    """If arr[idx] == expected, set it to new -- atomically, sequentially consistent;
    returns whether it did (compare-and-swap)."""
    if not _slot(arr, idx, expected, new):
        return None

    def codegen(context, builder, sig, args):
        ptr, (old, val) = _slot_pointer(context, builder, sig, args)
        return builder.extract_value(builder.cmpxchg(ptr, old, val, "seq_cst", "seq_cst"), 1)
    return types.boolean(arr, idx, expected, new), codegen


@intrinsic
def address_of(typingctx, p):
    """The address a C pointer holds, as an int64 (to pass it on through an int64 array)."""
    if not isinstance(p, types.CPointer):
        return None

    def codegen(context, builder, sig, args):
        return builder.ptrtoint(args[0], ir.IntType(64))
    return types.int64(p), codegen


def _inttoptr(context, builder, sig, args):
    value = context.cast(builder, args[0], sig.args[0], types.int64)
    return builder.inttoptr(value, context.get_value_type(sig.return_type))


@intrinsic
def float32_pointer(typingctx, address):
    """The int64 ``address`` as a C float32 pointer (see :func:`address_of`)."""
    if not isinstance(address, types.Integer):
        return None
    return types.CPointer(types.float32)(address), _inttoptr


@intrinsic
def int64_pointer(typingctx, address):
    """The int64 ``address`` as a C int64 pointer (see :func:`address_of`)."""
    if not isinstance(address, types.Integer):
        return None
    return types.CPointer(types.int64)(address), _inttoptr


@intrinsic
def cpu_relax(typingctx):
    """A spin-wait hint (x86 ``pause``; nothing elsewhere)."""
    def codegen(context, builder, sig, args):
        if "x86" in builder.module.triple or "i686" in builder.module.triple:
            fn = builder.module.globals.get("llvm.x86.sse2.pause")
            if fn is None:
                fn = ir.Function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                 name="llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def cycle_counter(typingctx):
    """The CPU's time-stamp counter (x86 ``rdtsc``: ticks at a constant rate of a few GHz);
    0 elsewhere."""
    def codegen(context, builder, sig, args):
        if "x86" in builder.module.triple:
            fn = builder.module.globals.get("llvm.readcyclecounter")
            if fn is None:
                fn = ir.Function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                 name="llvm.readcyclecounter")
            return builder.call(fn, [])
        return ir.Constant(ir.IntType(64), 0)
    return types.int64(), codegen


@intrinsic
def yield_cpu(typingctx):
    """Give the core to another runnable thread (POSIX ``sched_yield``)."""
    def codegen(context, builder, sig, args):
        if os.name == "posix":
            fn = builder.module.globals.get("sched_yield")
            if fn is None:
                fn = ir.Function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                 name="sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


SPINS = 20000       # pause instructions (~0.5 ms on Zen 3) before a waiting worker yields


@helper
def next_job(sync, slot):
    """The next unclaimed job index of the counter sync[slot]."""
    return atomic_add(sync, slot, 1)


@helper
def job_done(sync, slot):
    """Count one finished job in sync[slot] (its writes are visible to whoever sees the count)."""
    atomic_add(sync, slot, 1)


@helper
def wait_done(sync, slot, n_jobs):
    """Wait until sync[slot] counts n_jobs finished jobs (spin briefly, then yield the core)."""
    spins = 0
    while atomic_load(sync, slot) < n_jobs:
        if spins < SPINS:
            cpu_relax()
            spins += 1
        else:
            yield_cpu()


# ---------------------------------------------------------------- doorbells
# A pool thread that has just run its part of a call waits a little for the next call in
# machine code, on its *doorbell* (an int64 row of its own), rather than on its queue: the
# calling thread rings it from machine code too (writes the call's arguments there, then
# sets TASK), and it joins at once.  Woken through its queue instead, it would start ~100 us
# after the calling thread (measured on a 2-vCPU VM: the operating system wakes it, then it
# waits for Python's GIL), which back-to-back calls -- a stream of images, a benchmark --
# pay every time (in-process A/B on Zen 3, 2 threads: whole models at batch 1 -1.2..2.2 %;
# a GEMM op run 4 times per call +1.5..5.5 % GFLOP/s).  A thread that hears nothing for
# about a millisecond goes back to its queue (ASLEEP) and uses no CPU.  door[0] moves
# (by compare-and-swap where two threads could race):  ASLEEP -> WAITING (the pool thread,
# entering serve) -> TASK (the caller, ringing) -> RUNNING (the pool thread, answering) ->
# WAITING (it left the call) ... -> ASLEEP (it gave up waiting); TASK -> WAITING (the
# caller, taking back a ring that came too late to be answered).
DOOR = 16            # int64 fields of a doorbell (two cache lines)
ASLEEP, WAITING, TASK, RUNNING = 0, 1, 2, 3
ARGS = 1             # door[ARGS:]: the arguments of the call (program.ring)
ANSWERED = DOOR - 1  # door[ANSWERED]: how many calls the pool thread joined from its doorbell
SERVE_TICKS = 3000000  # how long a pool thread waits for the next call: x86 time-stamp counter
#                        ticks, ~1 ms (the counter runs at 2-3.5 GHz); Model calls are ~0.4 ms
#                        apart when made back to back (their Python before and after)
SERVE_SPINS = 40000    # the same in pause instructions, without a counter (~1 ms on Zen 3)


@helper
def wait_for_call(door, wait):
    """In a pool thread whose doorbell says WAITING: True once it answered a ring (the state
    is then RUNNING and the call's arguments are in the door), False after SERVE_TICKS
    without one -- at once if ``wait`` is 0 (the state is then ASLEEP)."""
    start = cycle_counter()
    n = 0
    while True:
        if atomic_load(door, 0) == TASK:
            if atomic_cas(door, 0, TASK, RUNNING):
                return True
        elif wait == 0 or (cycle_counter() - start > SERVE_TICKS if start else n > SERVE_SPINS):
            if atomic_cas(door, 0, WAITING, ASLEEP):
                return False
        else:
            cpu_relax()
            n += 1


@helper
def settle(door):
    """In the calling thread, after its call: take back a ring the pool thread has not
    answered, or wait until it has left the call (the call's arrays may be freed then)."""
    if atomic_cas(door, 0, TASK, WAITING):
        return
    spins = 0
    while atomic_load(door, 0) == RUNNING:
        if spins < SPINS:
            cpu_relax()
            spins += 1
        else:
            yield_cpu()


# ---------------------------------------------------------------- the pool
def default_threads():
    """The cores this process may run on: the CPUs of its affinity mask, no more than its
    cgroup's CPU quota allows (:func:`cgroup_cpu_limit`)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cpus, limit) if limit else cpus)


def resolve_threads(threads):
    """The threads a standalone kernel call runs on: ``None`` -> :func:`default_threads`,
    else a positive int (anything else is refused)."""
    if threads is None:
        return default_threads()
    check(isinstance(threads, numbers.Integral) and not isinstance(threads, bool)
          and threads >= 1, f"threads must be a positive int or None, got {threads!r}")
    return int(threads)


@functools.lru_cache(maxsize=None)
def cgroup_cpu_limit(proc_cgroup="/proc/self/cgroup", root="/sys/fs/cgroup"):
    """Whole CPUs' worth of time this process's Linux cgroup may use (its CPU quota over its
    period, rounded up; the smallest along the path to the hierarchy's root), or None: no
    quota, or none to be read.  A container started with ``--cpus 2`` (Docker, a Kubernetes
    CPU limit) on a 64-core host still sees 64 CPUs in its affinity mask, but may run only 2
    cores' worth: 64 workers would be throttled by the kernel in turn and hold each other up
    at every op.  Read once per process (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``)."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1].split(","), parts[2]
        if parts[1] == "":                                       # v2: the unified hierarchy
            limits += _quotas([root], path, _v2_quota)
        elif "cpu" in controllers:                               # v1: the cpu controller
            mounts = [os.path.join(root, name) for name in ("cpu", "cpu,cpuacct",
                                                            "cpuacct,cpu")]
            limits += _quotas(mounts, path, _v1_quota)
    return max(1, math.ceil(min(limits) - 1e-9)) if limits else None


def _quotas(mounts, path, read):
    """The quotas read from ``path``'s folder under each mount and every folder above it
    (a process in a container often sees its host's path, or "/", and its own limit at the
    mount itself)."""
    found = []
    for mount in mounts:
        if not os.path.isdir(mount):
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            quota = read(os.path.join(mount, *parts[:depth]))
            if quota is not None:
                found.append(quota)
    return found


def _read_words(path):
    try:
        with open(path) as f:
            return f.read().split()
    except (OSError, UnicodeDecodeError):
        return []


def _ratio(quota, period):
    try:
        q, p = float(quota), float(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _v2_quota(folder):
    words = _read_words(os.path.join(folder, "cpu.max"))      # "max 100000" or "200000 100000"
    return _ratio(*words) if len(words) == 2 and words[0] != "max" else None


def _v1_quota(folder):
    quota = _read_words(os.path.join(folder, "cpu.cfs_quota_us"))     # -1: none
    period = _read_words(os.path.join(folder, "cpu.cfs_period_us"))
    return _ratio(quota[0], period[0]) if len(quota) == 1 and len(period) == 1 else None


class Pool:
    """Threads that run ``fn(*args, sync, worker, n_workers, doors)`` beside the calling
    thread."""

    def __init__(self):
        self._reset_after_fork()

    def _reset_after_fork(self):
        self._lock = threading.Lock()
        self._threads, self._pid = [], os.getpid()
        self._doors = np.zeros(0, np.int64)        # the threads' doorbell addresses

    def run(self, fn, args, n_workers, sync_slots, serve=None):
        """Run ``fn`` on ``n_workers`` threads (this one is worker 0).

        ``sync_slots``: int64 counters the workers share (zeroed here).  ``fn`` must return
        in worker 0 only when the whole task is done (it waits for job counts, see the
        module docstring); the pool threads may still be on their way out -- or not yet
        have started -- when this returns: they find no jobs left.  If the pool is busy
        (another thread's call) or ``n_workers`` is 1, this thread runs alone.

        ``serve``: None, or a C function ``serve(door address, worker, wait)`` a pool thread
        calls after its part of the call (with the GIL released) to wait on its doorbell for
        the next call (SERVE_TICKS; not at all for threads beyond the cores this process may
        use, which would only take a core from one that works).  A thread waiting there
        is not sent the call through its queue: worker 0 is given the addresses of the
        doorbells (``doors``, for workers 1..n_workers-1) and rings them itself; it returns
        only once a thread that answered has left the call.
        """
        if os.getpid() != self._pid:             # a forked child: the threads are gone
            self._reset_after_fork()
        sync = np.zeros(sync_slots, np.int64)
        if n_workers <= 1 or not self._lock.acquire(blocking=False):
            fn(*args, sync, 0, 1, None)
            return
        try:
            while len(self._threads) < n_workers - 1:
                self._threads.append(_Worker(len(self._threads) + 1))
                self._doors = np.array([w.door_address for w in self._threads], np.int64)
            for w in self._threads[:n_workers - 1]:
                if w.door[0] == ASLEEP:            # not waiting on its doorbell: wake it up
                    w.submit(fn, args, sync, n_workers, serve)
            fn(*args, sync, 0, n_workers, self._doors[:n_workers - 1] if serve else None)
        finally:
            self._lock.release()


class _Worker:
    """One pool thread: runs the tasks queued for it, in order, and after each waits a
    little on its doorbell for the next (``serve``, see :meth:`Pool.run`)."""

    def __init__(self, number):
        self.number = number
        self.door = np.zeros(DOOR, np.int64)                  # ASLEEP
        self.door_address = self.door.ctypes.data
        self._wait = 1 if number < default_threads() else 0     # a thread per core waits
        self._tasks = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=f"tinymvit-worker-{number}",
                         daemon=True).start()

    def submit(self, fn, args, sync, n_workers, serve):
        self._tasks.put((fn, args, sync, n_workers, serve))

    def _loop(self):
        while True:
            fn, args, sync, n_workers, serve = self._tasks.get()
            try:
                fn(*args, sync, self.number, n_workers, None)
                if serve is not None:
                    serve(self.door_address, self.number, self._wait)
            except BaseException as exc:  # noqa: BLE001 - a pool thread must not die
                # The calling thread has done (or does) every job this one did not, so the
                # result is complete; say what happened rather than lose it.
                import sys
                print(f"tinymvit: worker thread {self.number}: {exc!r}", file=sys.stderr)


POOL = Pool()

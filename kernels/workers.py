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
``prange`` kernel costs several seconds of compilation each).  A pool thread
waits on a queue between calls, so it uses no CPU while the model is idle;
waiting for a job count it spins briefly (it is only ever waiting for another
core), then yields the core.  One model call uses the pool at a time; a
concurrent call from another thread runs on its own thread instead of waiting
(calls never block each other).
"""
import os
import queue
import threading

import numpy as np

from .lazy import LazyModule, intrinsic
from .policy import helper

ir = LazyModule("llvmlite.ir")                 # Numba and LLVM are only needed to compile
types = LazyModule("numba.core.types")


# ---------------------------------------------------------------- atomics
@intrinsic
def atomic_add(typingctx, arr, idx, value):
    """arr[idx] += value atomically (sequentially consistent); returns the old value."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.layout == "C"
            and isinstance(idx, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.gep(data, [context.cast(builder, args[1], sig.args[1], types.intp)])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")
    return types.int64(arr, idx, value), codegen


@intrinsic
def atomic_load(typingctx, arr, idx):
    """arr[idx], read atomically with acquire order (sees what others wrote before their add)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.layout == "C"
            and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.gep(data, [context.cast(builder, args[1], sig.args[1], types.intp)])
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(arr, idx), codegen


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


SPINS = 20000       # pause instructions (~100 us) before a waiting worker starts yielding


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


# ---------------------------------------------------------------- the pool
def default_threads():
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Pool:
    """Threads that run ``fn(*args, sync, worker, n_workers)`` beside the calling thread."""

    def __init__(self):
        self._reset_after_fork()

    def _reset_after_fork(self):
        self._lock = threading.Lock()
        self._threads, self._pid = [], os.getpid()

    def run(self, fn, args, n_workers, sync_slots):
        """Run ``fn`` on ``n_workers`` threads (this one is worker 0).

        ``sync_slots``: int64 counters the workers share (zeroed here).  ``fn`` must return
        in worker 0 only when the whole task is done (it waits for job counts, see the
        module docstring); the pool threads may still be on their way out -- or not yet
        have started -- when this returns: they find no jobs left.  If the pool is busy
        (another thread's call) or ``n_workers`` is 1, this thread runs alone.
        """
        if os.getpid() != self._pid:             # a forked child: the threads are gone
            self._reset_after_fork()
        sync = np.zeros(sync_slots, np.int64)
        if n_workers <= 1 or not self._lock.acquire(blocking=False):
            fn(*args, sync, 0, 1)
            return
        try:
            while len(self._threads) < n_workers - 1:
                self._threads.append(_Worker(len(self._threads) + 1))
            for w in self._threads[:n_workers - 1]:
                w.submit(fn, args, sync, n_workers)
            fn(*args, sync, 0, n_workers)
        finally:
            self._lock.release()


class _Worker:
    """One pool thread: runs the tasks queued for it, in order."""

    def __init__(self, number):
        self.number = number
        self._tasks = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=f"tinymvit-worker-{number}",
                         daemon=True).start()

    def submit(self, fn, args, sync, n_workers):
        self._tasks.put((fn, args, sync, n_workers))

    def _loop(self):
        while True:
            fn, args, sync, n_workers = self._tasks.get()
            try:
                fn(*args, sync, self.number, n_workers)
            except BaseException as exc:  # noqa: BLE001 - a pool thread must not die
                # The calling thread has done (or does) every job this one did not, so the
                # result is complete; say what happened rather than lose it.
                import sys
                print(f"tinymvit: worker thread {self.number}: {exc!r}", file=sys.stderr)


POOL = Pool()

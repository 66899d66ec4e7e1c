"""How every kernel is compiled: the one place for Numba options.

Every compiled function in ``tinymvit.kernels`` is declared with one of these
decorators, never with a bare ``@njit``, so the choices below hold everywhere:

* :func:`job` -- one parallel job of a program op (``program.py``), compiled into
  a C function that the program executor calls through a pointer;
* :func:`entry` -- a C function called from Python (the program executor);
* :func:`helper` -- a function called from other compiled code (LLVM inlines the
  small ones);
* :func:`intrinsic` -- a function written directly in LLVM IR (``simd.py``).

Numba is imported only to compile.  A job's machine code is kept on disk
(``native.py``) and later processes load it without importing Numba at all, so the
decorators above only *record* functions at import; ``lazy.materialize`` turns them
into Numba objects the first time something must be compiled.

The options:

* ``fastmath``: only ``contract`` (a*b + c may become one fused multiply-add) and
  ``reassoc`` (sums may be re-ordered, so reductions vectorise).  Not ``nnan`` /
  ``ninf``: NaN and infinity keep their IEEE meaning, so a NaN in a weight or an
  overflow shows up in the output instead of being optimised into garbage.
  ``TINYMVIT_FASTMATH=0`` compiles strict IEEE code (for debugging a difference).
* ``error_model="numpy"``: a float division by zero gives inf/NaN instead of raising,
  so no branch sits in vector loops.
* ``nogil``: jobs and the executor release the GIL, so tinymvit's own worker threads
  (``workers.py``) run them side by side.  No kernel uses ``parallel=True``: Numba's
  ``prange`` costs seconds of compilation per kernel and needs an OpenMP/TBB runtime
  that cannot survive ``fork``.
* ``boundscheck``: off (Numba's default); every op's arguments are checked in Python
  when it is planned (:func:`check`), with real exceptions, never ``assert``.
* caching: compiled code is kept on disk (``native.py``: where, and why it can never
  be stale); ``TINYMVIT_NUMBA_CACHE=0`` turns it off.
"""
import os
import re
import threading

import numpy as np

from ..errors import TinyMViTError
from . import native, simd
from .lazy import LazyModule, intrinsic, materialize, on_numba, register_helper  # noqa: F401

FASTMATH = {"contract", "reassoc"} if native.flag("TINYMVIT_FASTMATH", True) else False
OPTIONS = dict(fastmath=FASTMATH, error_model="numpy")
CACHE_DIR = native.cache_root(repr((simd.ISA, sorted(FASTMATH or ()))), simd.FORCED_ISA)
_LOCK = threading.RLock()
_ANNOUNCED = False


# ---------------------------------------------------------------- the decorators
def helper(fn=None, *, inline=False):
    """Decorator of a function called only from other compiled code.

    ``inline=True`` makes Numba inline it into every caller before compiling
    (``inline="always"``): for tiny functions whose callers pass compile-time constants.
    """
    def wrap(f):
        # no_cpython_wrapper: a helper is never called from Python (saves compile time)
        return register_helper(f, dict(inline="always" if inline else "never",
                                       no_cpython_wrapper=True, **OPTIONS))
    return wrap if fn is None else wrap(fn)


numba = LazyModule("numba")


# ---------------------------------------------------------------- compiled C functions
# a job's C signature: (A data, A size, W data, W size, op row data, job index, worker)
JOB_SIGNATURE = ("void(CPointer(float32), int64, CPointer(float32), int64, CPointer(int64), "
                 "int64, int64)")


class CFunction:
    """A function compiled on first use into a C function; its machine code is cached."""

    def __init__(self, fn, signature):
        self.py_func, self.signature = fn, signature
        self.__name__, self.__doc__ = fn.__name__, fn.__doc__
        self.key = f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"
        self._address, self._keep, self._callable = None, None, None

    @property
    def status(self):
        """'compiled' in this process, 'cached' (loaded from the disk cache) or 'unused'."""
        return "unused" if self._address is None else "compiled" if self._keep else "cached"

    @property
    def address(self):
        """The C function's address: loaded from the cache, or compiled (once)."""
        with _LOCK:
            if self._address is None:
                self._address = native.load(CACHE_DIR, self.key) or self._compile()
        return self._address

    def callable(self):
        """This C function called from Python (ctypes, which releases the GIL during the call),
        its argument and result types read from its signature: int64 or a C pointer (passed as
        an address), void."""
        if self._callable is None:
            import ctypes
            ret, args = re.fullmatch(r"(\w+)\((.*)\)", self.signature.replace(" ", "")).groups()
            c_type = {"void": None, "int64": ctypes.c_int64}
            c_args = [ctypes.c_void_p if a.startswith("CPointer") else c_type[a]
                      for a in re.findall(r"CPointer\(\w+\)|\w+", args)]
            self._callable = ctypes.CFUNCTYPE(c_type[ret], *c_args)(self.address)
        return self._callable

    def _compile(self):
        global _ANNOUNCED
        if not _ANNOUNCED:            # the first compilation of this process says so, once
            _ANNOUNCED = True
            where = (f"cached in {CACHE_DIR}, so this happens once" if CACHE_DIR
                     else "not cached: see the line above")
            native.say(f"compiling kernels for this CPU ({simd.ISA}); {where}")
        materialize()
        from numba.core import sigutils
        from numba.core.ccallback import CFunc
        args, ret = sigutils.normalize_signature(self.signature)
        cfunc = CFunc(self.py_func, (args, ret), locals={}, options=dict(nogil=True, **OPTIONS))
        cfunc.compile()
        native.save(CACHE_DIR, self.key, cfunc._wrapper_name,
                    cfunc._library._get_compiled_object())
        self._keep = cfunc                      # the code lives as long as its CFunc
        return cfunc.address


def compile_all(units):
    """Give every CFunction of ``units`` -- (functions, rough compile seconds) pairs, the
    functions of a unit sharing helpers that are compiled once per process -- its address.

    Those not in the cache are compiled, the costliest units first.  If that is two or more
    units and this machine has two cores, a helper process (program.compile_child) works
    down the same list at the same time: each process takes the next unit nobody has taken
    yet (:func:`claim`), so the two share the work by what each unit really costs on this
    machine, not by the estimates, and a first run takes about half as long.  This process
    then loads the helper's units from the cache; should the helper fail, it compiles them
    itself."""
    todo = sorted([(fns, cost) for fns, cost in units
                   if any(fn._address is None and not native.is_cached(CACHE_DIR, fn.key)
                          for fn in fns)], key=lambda fc: -fc[1])
    claims = helper_proc = None
    try:
        if (len(todo) >= 2 and CACHE_DIR and native.flag("TINYMVIT_PARALLEL_COMPILE", True)
                and _cores() >= 2):
            claims = _claims_folder()
            helper_proc = _start_helper(claims, [fns for fns, _ in todo]) if claims else None
        mine = 0
        for i, (fns, _) in enumerate(todo):
            if helper_proc is None or claim(claims, i):
                mine += 1
                for fn in fns:
                    fn.address
        if helper_proc is not None:
            if mine == len(todo):        # the helper has claimed nothing (still starting up)
                helper_proc.kill()
            helper_proc.wait()
    except BaseException:
        if helper_proc is not None:      # e.g. Ctrl-C: no orphan compiling on
            helper_proc.kill()
            helper_proc.wait()
        raise
    finally:
        if claims:
            import shutil
            shutil.rmtree(claims, ignore_errors=True)
    for fns, _ in units:
        for fn in fns:
            fn.address                    # the helper's: from the cache (or compiled here)
    if todo and CACHE_DIR:
        native.byte_compile_modules()     # the Python side of every later start, likewise


def claim(claims, i):
    """Take unit ``i`` of a compile_all list for this process: True for the one process whose
    ``mkdir`` of its folder in ``claims`` succeeds (atomic), False for any other."""
    try:
        os.mkdir(os.path.join(claims, str(i)))
        return True
    except OSError:                      # taken already (or the claims folder is gone)
        return False


def _claims_folder():
    """A new, empty folder in the cache for one compile_all's claims (None if impossible)."""
    import tempfile
    try:
        return tempfile.mkdtemp(prefix="claims-", dir=CACHE_DIR)
    except OSError:
        return None


def _cores():
    from .workers import default_threads         # (workers imports this module)
    return default_threads()


def _start_helper(claims, units):
    """The helper process working down ``units`` (lists of CFunctions) with the claims
    folder ``claims`` (None if it cannot start)."""
    import subprocess
    import sys
    code = ("import sys\nfrom tinymvit.kernels.program import compile_child\n"
            "sys.exit(compile_child(sys.argv[1], sys.argv[2], sys.argv[3:]))")
    try:
        return subprocess.Popen([sys.executable, "-c", code, CACHE_DIR, claims]
                                + [",".join(fn.key for fn in fns) for fns in units],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except (OSError, ValueError):
        return None


def job(fn):
    """Decorator of a program job ``fn(pa, a_size, pw, w_size, pp, j, worker)``: pointers to
    and sizes of the arenas A and W, a pointer to the op's row (see :func:`arenas`), the job
    index and the number of the worker thread running it (see :func:`scratch`)."""
    return CFunction(fn, JOB_SIGNATURE)


def entry(signature):
    """Decorator of a C function with the given Numba signature, called from Python."""
    return lambda fn: CFunction(fn, signature)


OP_FIELDS = 40   # int64 fields per op row: [op code, jobs, the op's own fields...]
SCRATCH = OP_FIELDS - 2  # p[SCRATCH]: offset in A of the op's scratch, p[SCRATCH + 1]: its
#                          floats per worker (each worker thread has its own)


@helper
def arenas(pa, a_size, pw, w_size, pp):
    """The arenas and the op row of a job, as arrays (A, W, p)."""
    return (numba.carray(pa, (a_size,)), numba.carray(pw, (w_size,)),
            numba.carray(pp, (OP_FIELDS,)))


@helper
def scratch(p, worker):
    """Offset in A of this worker's scratch space for op p (planned with the op)."""
    return p[SCRATCH] + worker * p[SCRATCH + 1]


# ---------------------------------------------------------------- argument checks
class KernelArgumentError(TinyMViTError, ValueError):
    """A kernel was called with arguments that do not fit together (a bug in the caller)."""


def check(condition, message):
    """Raise KernelArgumentError(message) unless ``condition``: the kernels' preconditions.

    Kernels index raw memory without bounds checks, so every shape, stride and count they
    trust is verified here first, with a real exception (``python -O`` removes asserts).
    """
    if not condition:
        raise KernelArgumentError(message)


def check_array(a, name, ndim=None):
    """``a`` is a C-contiguous float32 NumPy array (of ``ndim`` dimensions, if given)."""
    check(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous
          and (ndim is None or a.ndim == ndim),
          f"{name} must be a C-contiguous float32 array" + (f" of {ndim} dimensions"
                                                          if ndim else ""))

"""How every kernel is compiled and cached: the one place for Numba options.

Every Numba function in ``tinymvit.kernels`` is declared with one of three
decorators, never with a bare ``@njit``, so the choices below hold everywhere:

* :func:`job` -- one parallel job of a program op (``program.py``): compiled, the
  first time a model needs it, into a C function that the program executor calls
  through a pointer.  Each job is compiled (and cached) once, on its own.
* :func:`kernel` -- a function called from Python (the executor, the resize kernels).
* :func:`helper` -- a function called from other kernels; LLVM inlines the small ones.

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
* caching: compiled jobs and kernels are written to disk, so only the very first run
  pays for compilation.  The cache folder's name is a hash of every kernel source
  file, of Numba's and LLVM's versions and of these options: Numba itself only notices
  edits of the file that holds a cached function, not of the helpers it calls, and a
  folder per hash can never serve stale machine code.  It lives under
  ``NUMBA_CACHE_DIR`` if set, else beside the kernels (``__pycache__``), else in the
  user's cache folder, else in a private folder in the temp dir, else nowhere (one
  line on stderr says so).  A damaged entry is dropped and recompiled.
  ``TINYMVIT_NUMBA_CACHE=0`` turns caching off; so does ``TINYMVIT_ISA`` (forcing
  another tile size: that code must not land in the real CPU's cache).
"""
import glob
import hashlib
import os
import stat
import sys
import tempfile
import threading

import numba
import numpy as np
from numba import types
from numba.core import caching

from ..errors import TinyMViTError
from .simd import FORCED_ISA, ISA


def _flag(name, default):
    value = os.environ.get(name, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return default


FASTMATH = {"contract", "reassoc"} if _flag("TINYMVIT_FASTMATH", True) else False
OPTIONS = dict(fastmath=FASTMATH, error_model="numpy")
KERNELS_DIR = os.path.dirname(os.path.realpath(__file__))


# ---------------------------------------------------------------- the cache folder
def _say(message):
    sys.stderr.write(f"tinymvit: {message}\n")


def source_hash():
    """A short hash of everything the compiled code depends on."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(KERNELS_DIR, "*.py"))):
        with open(path, "rb") as f:
            h.update(f.read())
    import llvmlite
    h.update(repr((numba.__version__, llvmlite.__version__, sys.version_info[:2], ISA,
                   sorted(FASTMATH or ()))).encode())
    return h.hexdigest()[:16]


def _writable_dir(path, private=False):
    """``path`` (created if missing) if we can write there; private: ours alone (0700)."""
    try:
        os.makedirs(path, mode=0o700 if private else 0o777, exist_ok=True)
        if private:
            info = os.lstat(path)
            uid = os.getuid() if hasattr(os, "getuid") else None
            if (not stat.S_ISDIR(info.st_mode) or info.st_mode & 0o022
                    or (uid is not None and info.st_uid != uid)):
                return None
        tempfile.TemporaryFile(dir=path).close()
        return path
    except (OSError, ValueError):
        return None


def _cache_root():
    """Where compiled kernels are cached, or None (not cached)."""
    if not _flag("TINYMVIT_NUMBA_CACHE", True) or FORCED_ISA:
        return None
    name = f"tinymvit-{source_hash()}"
    if os.environ.get("NUMBA_CACHE_DIR"):
        candidates = [os.path.join(os.environ["NUMBA_CACHE_DIR"], name)]
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        candidates = [os.path.join(KERNELS_DIR, "__pycache__", name),
                      os.path.join(xdg, "tinymvit", name)]
    for path in candidates:
        if _writable_dir(path):
            return path
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    private = _writable_dir(os.path.join(tempfile.gettempdir(), f"tinymvit-numba-{uid}"), True)
    tried = " and ".join(candidates)
    if private and _writable_dir(os.path.join(private, name)):
        _say(f"cannot write the kernel cache to {tried}: caching compiled kernels in "
             f"{os.path.join(private, name)} (set NUMBA_CACHE_DIR to choose)")
        return os.path.join(private, name)
    _say(f"no writable folder for the kernel cache ({tried}, the temp folder): kernels are "
         f"compiled in every process; set NUMBA_CACHE_DIR to a writable folder to cache them")
    return None


CACHE_DIR = _cache_root()


class _Locator(caching.UserProvidedCacheLocator):
    """Numba's cache locator, pointed at CACHE_DIR."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = CACHE_DIR

    @classmethod
    def from_function(cls, py_func, py_file):
        return cls(py_func, py_file)


class _Impl(caching.CompileResultCacheImpl):
    _locator_classes = [_Locator]


class _SelfHealing:
    """A damaged cache entry (unreadable pickle, truncated file) is dropped and recompiled."""
    reported = False

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception as exc:  # noqa: BLE001  whatever a damaged file makes pickle raise
            index = self._cache_file._index_path
            try:
                os.unlink(index)         # entries forgotten; data files get overwritten
                message = (f"dropped a damaged kernel cache entry ({type(exc).__name__}) in "
                           f"{self.cache_path}; recompiling")
            except OSError as err:
                self.disable()
                message = (f"the kernel cache in {self.cache_path} is damaged ({index}: "
                           f"{type(exc).__name__}) and cannot be removed ({err.strerror}); "
                           f"compiling without it - delete that folder to fix this")
            if not _SelfHealing.reported:
                _SelfHealing.reported = True
                _say(message)
            return None


class _FunctionCache(_SelfHealing, caching.FunctionCache):
    _impl_class = _Impl


# ---------------------------------------------------------------- the decorators
def kernel(fn=None, *, nogil=False):
    """Decorator of a kernel called from Python (``nogil=True``: it releases the GIL, so the
    worker threads of ``workers.py`` can run it at the same time); cached."""
    def wrap(f):
        dispatcher = numba.njit(nogil=nogil, **OPTIONS)(f)
        if CACHE_DIR:
            dispatcher._cache = _FunctionCache(f)
        return dispatcher
    return wrap if fn is None else wrap(fn)


def helper(fn=None, *, inline=False):
    """Decorator of a function called only from other kernels (compiled into each caller).

    ``inline=True`` makes Numba inline it into every caller before compiling
    (``inline="always"``): for tiny functions whose callers pass compile-time constants.
    """
    def wrap(f):
        return numba.njit(inline="always" if inline else "never", **OPTIONS)(f)
    return wrap if fn is None else wrap(fn)


# a job's C signature: (A data, A size, W data, W size, op row data, job index, worker)
JOB_SIGNATURE = types.void(types.CPointer(types.float32), types.int64,
                           types.CPointer(types.float32), types.int64,
                           types.CPointer(types.int64), types.int64, types.int64)


class Job:
    """A job function compiled on first use into a C function (see :func:`job`)."""

    _lock = threading.Lock()

    def __init__(self, fn):
        self.py_func, self._cfunc = fn, None
        self.__name__, self.__doc__ = fn.__name__, fn.__doc__

    @property
    def address(self):
        """The C function's address (compiling it, or loading it from the cache, once)."""
        with self._lock:
            if self._cfunc is None:
                from numba.core.ccallback import CFunc
                cfunc = CFunc(self.py_func, (JOB_SIGNATURE.args, JOB_SIGNATURE.return_type),
                              locals={}, options=dict(nogil=True, **OPTIONS))
                if CACHE_DIR:
                    cfunc._cache = _FunctionCache(self.py_func)
                cfunc.compile()
                self._cfunc = cfunc
        return self._cfunc.address


def job(fn):
    """Decorator of a program job ``fn(pa, a_size, pw, w_size, pp, j, worker)``: pointers to
    and sizes of the arenas A and W, a pointer to the op's row (see :func:`arenas`), the job
    index and the number of the worker thread running it (see :func:`scratch`)."""
    return Job(fn)


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

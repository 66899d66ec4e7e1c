"""tinymvit.kernels: hand-written Numba kernels, one family per module.

Every kernel works on float32, channels-last (NHWC) arrays, writes into an
output buffer the caller planned, and sits beside a plain NumPy reference
(``*_reference``) that the tests compare it with.  Kernels know nothing of the
architectures; the model builders in ``tinymvit.models`` know nothing of pixels.

Importing this package picks Numba's threading layer.  Numba's default
``workqueue`` layer is not safe when an application calls a model from several
threads at once (and is about 2x slower here), so we ask for TBB (thread- and
fork-safe) or else OpenMP (thread-safe).  If neither can be loaded,
``THREAD_SAFE_LAYER`` is False and the API serialises model calls with a lock.

GNU OpenMP is not fork-safe: a child forked (e.g. by ``multiprocessing`` with the
"fork" start method) after the parent ran a parallel kernel would hang in its
first parallel kernel.  An at-fork hook records that situation in
``FORKED_AFTER_OPENMP`` so the API can raise a clear error instead of hanging.

It also decides where the compiled kernels are cached (:func:`configure_numba_cache`),
BEFORE any kernel module is imported: Numba picks a cache location when an
``@njit(cache=True)`` function is decorated, and raises "no locator available" when
nothing is writable (a read-only install run with ``HOME=/nonexistent``).
"""
import os
import stat
import sys
import tempfile

import numba

_KERNELS_DIR = os.path.dirname(os.path.realpath(__file__))


def configure_numba_cache():
    """Make sure the kernels can be cached somewhere (or run uncached); returns the folder.

    Numba's own choice wins when it works: ``NUMBA_CACHE_DIR``, else ``__pycache__`` beside
    the kernels, else the user's cache folder (``~/.cache/numba``).  When none of them is
    writable, the kernels are cached in a private folder under the temp dir (created
    with mode 0700 and used only if this user owns it), else not cached at all; one line
    on stderr says so.  A damaged cache entry (e.g. a truncated ``.nbi`` / ``.nbc`` file)
    is removed and the kernel recompiled, with one line on stderr.  Returns the cache
    folder of the kernels, or None when they are not cached.
    """
    from numba.core import caching

    if numba.config.CACHE_LOCATOR_CLASSES:          # the user chose Numba's locators
        return None
    for locator_class in caching.CacheImpl._locator_classes:
        try:
            locator = locator_class.from_function(configure_numba_cache, __file__)
        except Exception:  # noqa: BLE001  a locator that cannot work here
            locator = None
        if locator is not None:
            _use_cache(None)
            return locator.get_cache_path()
    tried = "NUMBA_CACHE_DIR, the package's __pycache__ and the user cache folder"
    root = _private_temp_folder()
    if root is None:
        _say(f"no writable Numba cache folder ({tried}, the temp folder): kernels are "
             f"compiled in every process; set NUMBA_CACHE_DIR to a writable folder to cache them")
        _use_cache(False)
        return None
    _say(f"no writable Numba cache folder ({tried}): caching compiled kernels in {root} "
         f"(set NUMBA_CACHE_DIR to choose)")
    _use_cache(root)
    return root


def _say(message):
    sys.stderr.write(f"tinymvit: {message}\n")


def _private_temp_folder():
    """<tempdir>/tinymvit-numba-<uid>, created 0700; None unless it is ours and writable.

    Cached machine code is loaded and run, so a folder another user could have planted
    or can write to is never used.
    """
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        path = os.path.join(tempfile.gettempdir(), f"tinymvit-numba-{uid}")
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
        if (not stat.S_ISDIR(info.st_mode) or info.st_mode & 0o022
                or (uid is not None and info.st_uid != uid)):
            return None
        tempfile.TemporaryFile(dir=path).close()
    except (OSError, ValueError):
        return None
    return path


def _use_cache(root):
    """Give every kernel of this package a self-healing cache: Numba's location (root None),
    one under ``root``, or none at all (root False)."""
    from numba.core import caching, dispatcher

    class TempFolderLocator(caching.UserWideCacheLocator):
        def __init__(self, py_func, py_file):
            super().__init__(py_func, py_file)
            self._cache_path = os.path.join(root, self.get_suitable_cache_subpath(py_file))

    class Impl(caching.CompileResultCacheImpl):
        _locator_classes = ([TempFolderLocator] if root else []) + \
            caching.CompileResultCacheImpl._locator_classes

    class SelfHealingCache(caching.FunctionCache):
        """A damaged entry (unreadable pickle, truncated file) is dropped and recompiled."""
        _impl_class = Impl
        reported = False

        def load_overload(self, sig, target_context):
            try:
                return super().load_overload(sig, target_context)
            except Exception as exc:  # noqa: BLE001  whatever a damaged file makes pickle raise
                self._drop_damaged_entry(exc)
                return None

        def _drop_damaged_entry(self, exc):
            index = getattr(getattr(self, "_cache_file", None), "_index_path", self.cache_path)
            try:
                os.unlink(index)           # entries forgotten; data files get overwritten
                message = (f"dropped a damaged Numba cache entry ({type(exc).__name__}) in "
                           f"{self.cache_path}; recompiling")
            except OSError as err:
                self.disable()
                message = (f"the Numba cache in {self.cache_path} is damaged ({index}: "
                           f"{type(exc).__name__}) and cannot be removed ({err.strerror}); "
                           f"compiling without it - delete that folder to fix this")
            if not SelfHealingCache.reported:
                SelfHealingCache.reported = True
                _say(message)

    original = getattr(dispatcher.Dispatcher, "_numba_enable_caching",
                       dispatcher.Dispatcher.enable_caching)

    def enable_caching(self):
        code = getattr(self.py_func, "__code__", None)
        if code is None or os.path.dirname(os.path.realpath(code.co_filename)) != _KERNELS_DIR:
            return original(self)                      # not one of ours: Numba's behaviour
        self._cache = caching.NullCache() if root is False else SelfHealingCache(self.py_func)

    dispatcher.Dispatcher._numba_enable_caching = original
    dispatcher.Dispatcher.enable_caching = enable_caching


CACHE_DIR = configure_numba_cache()


def _pick_threading_layer():
    """Select a thread-safe Numba threading layer if one is importable."""
    if "NUMBA_THREADING_LAYER" in os.environ:  # the user decided; respect it
        return os.environ["NUMBA_THREADING_LAYER"] in ("tbb", "omp", "safe", "threadsafe")
    for layer in ("tbb", "omp"):
        try:
            __import__(f"numba.np.ufunc.{layer}pool")
        except Exception:  # shared library missing (libtbb / libgomp)
            continue
        numba.config.THREADING_LAYER = layer
        return True
    return False


THREAD_SAFE_LAYER = _pick_threading_layer()
FORKED_AFTER_OPENMP = False


def _after_fork_in_child():
    global FORKED_AFTER_OPENMP
    try:
        layer = numba.threading_layer()  # raises until the first parallel kernel has run
    except ValueError:
        return
    if layer == "omp":
        FORKED_AFTER_OPENMP = True


os.register_at_fork(after_in_child=_after_fork_in_child)

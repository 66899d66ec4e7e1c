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
"""
import os

import numba


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

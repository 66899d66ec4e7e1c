"""tinymvit.kernels: hand-written Numba kernels, one family per module.

Every kernel works on float32, channels-last (NHWC) arrays, writes into an
output buffer the caller planned, and sits beside a plain NumPy reference
(``*_reference``) that the tests compare it with.  Kernels know nothing of the
architectures; the model builders in ``tinymvit.models`` know nothing of pixels.

Importing this package picks Numba's threading layer.  Numba's default
``workqueue`` layer is not safe when an application calls a model from several
threads at once, so we ask for a thread-safe layer (OpenMP or TBB).  If none can
be loaded, ``THREAD_SAFE_LAYER`` is False and the graph runner serialises model
calls with a lock instead.
"""
import os

import numba


def _pick_threading_layer():
    """Select a thread-safe Numba threading layer if one is importable."""
    if "NUMBA_THREADING_LAYER" in os.environ:  # the user decided; respect it
        return os.environ["NUMBA_THREADING_LAYER"] in ("tbb", "omp", "safe", "threadsafe")
    for layer in ("omp", "tbb"):
        try:
            __import__(f"numba.np.ufunc.{layer}pool")
        except Exception:  # shared library missing (libgomp / libtbb)
            continue
        numba.config.THREADING_LAYER = layer
        return True
    return False


THREAD_SAFE_LAYER = _pick_threading_layer()

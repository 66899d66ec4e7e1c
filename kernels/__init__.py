"""tinymvit.kernels: hand-written Numba kernels, one family per module.

Every kernel works on float32, channels-last (NHWC) tensors and sits beside a plain
NumPy reference (``*_reference``) that the tests compare it with.  Kernels know
nothing of the architectures; the model builders in ``tinymvit.models`` know
nothing of pixels.

How the pieces fit (read in this order):

* ``simd.py``       -- SIMD vectors and the register tiles of the GEMM and depthwise
                       micro-kernels, sized for the CPU found at import;
* ``policy.py``     -- how every kernel is compiled and where it is cached;
* ``workers.py``    -- tinymvit's own worker threads, atomics and job counters;
* ``program.py``    -- a planned model as a table of ops, run by one executor;
* the families      -- ``pointwise``, ``conv``, ``depthwise`` (with the fused inverted
                       residual), ``norm``, ``attention_separable``, ``attention_mha``,
                       ``patches``, ``pooling``, ``layout``, ``activations``, ``resize``,
                       ``batchnorm``: each one's maths, its op (a ``*_job`` function
                       and a planner), a standalone call for tests, and its reference.
"""


def __getattr__(name):
    # CACHE_DIR: where compiled kernels are cached (None: not cached).  Looked up lazily: this
    # folder sits at the top of the repository, where ``python -m pytest`` puts it on sys.path,
    # and transformers probes for a PyPI package called ``kernels`` by importing it; importing
    # this package must then have no side effects.
    if name == "CACHE_DIR":
        from .policy import CACHE_DIR
        return CACHE_DIR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""tinymvit.kernels: the compute kernels, one family per module.

Every kernel works on float32, channels-last (NHWC) tensors.  Kernels know nothing
of the architectures; the model builders in ``tinymvit.models`` know nothing of
pixels.  Each family module reads top to bottom as: the maths (its docstring), the
plain NumPy reference (``*_reference``: what the tests and ``backend="numpy"`` run),
then the fast kernel -- its parallel ``*_job`` functions and the planner of its op --
and a standalone call that runs the op on arrays (for tests and benchmarks).

The machinery the families share (read in this order):

* ``simd.py``       -- SIMD vectors and the register tiles of the GEMM and depthwise
                       micro-kernels, sized for the CPU found at import;
* ``workers.py``    -- tinymvit's own worker threads, atomics and job counters;
* ``program.py``    -- a planned model as a table of ops, run by one executor;
* ``policy.py``     -- how every kernel is compiled (options, decorators);
* ``lazy.py``, ``native.py``, ``elf.py`` -- Numba imported only to compile; the
                       machine-code cache; loading it without Numba or LLVM.

The families: ``pointwise`` (1x1 convs, linears), ``conv`` (full kxk), ``depthwise``
(with the fused inverted residual), ``norm``, ``attention_separable`` (MobileViTV2),
``attention_mha`` (MobileViT), ``patches``, ``pooling``, ``layout``, ``activations``,
``resize`` (segmentation logits) and ``batchnorm`` (folded into conv weights at load).
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

"""``tinymvit bench``: how fast a checkpoint runs on this machine, measured in a few seconds.

    from tinymvit.benchmark import benchmark
    result = benchmark(model, batch_size=1, seconds=3)
    result["latency_ms"]["median"], result["images_per_second"], result["first_call_seconds"]

The forward pass (``model(pixel_values)``) is timed on a random input of the size the model
sees in use: the processor's crop size for classification (e.g. 224x224), the input
``segment()`` makes of a square photo for segmentation (e.g. 513x513); ``size=N`` for another.
The first call is timed on its own (in a fresh process it plans the buffers and loads the cached
Numba kernels, unless ``tinymvit.load`` did that already -- it does for a classifier's usual
input -- or compiles them on the very first run); after two warm-up calls, calls run
back to back for ``seconds`` (at least ``min_calls``) and the median is reported, with the
10th/90th percentiles.  Decoding and preprocessing are not included.  Peak memory is the
process's peak resident set size (``VmHWM`` from ``/proc/self/status``, else
``resource.getrusage``).
"""
import sys
import time

import numpy as np

from .errors import InputError

__all__ = ["benchmark", "peak_memory", "input_shape"]


def peak_memory():
    """(bytes, how it was measured) of this process's peak resident set size, or (None, None)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "VmHWM"
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:                                         # Windows
        return None, None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024), "getrusage"   # macOS: bytes


def input_shape(model, batch_size=1, size=None):
    """(N, C, H, W) of the benchmark input (see the module docstring)."""
    processor = model.processor
    crop = (processor.crop_size["height"], processor.crop_size["width"])
    if model.task == "segmentation":
        side = size or max(crop)
        h, w = processor.segmentation_input_size(side, side, side,
                                                 output_stride=model.config.output_stride)
    else:
        h, w = (size, size) if size else crop
    return batch_size, model.config.num_channels, h, w


def benchmark(model, batch_size=1, size=None, seconds=3.0, min_calls=5, warmup=2):
    """Time ``model``'s forward pass; returns a dict (see the module docstring)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    shape = input_shape(model, batch_size, size)
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)     # (N, C, H, W)
    start = time.perf_counter()
    model(x)
    first = time.perf_counter() - start
    for _ in range(warmup):
        model(x)
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    memory, measured_by = peak_memory()
    return {"model": str(model.source), "family": model.family, "task": model.task,
            "input_shape": list(shape), "threads": model._threads(),
            "first_call_seconds": first, "calls": len(times),
            "latency_ms": {"median": 1e3 * median,
                           "p10": 1e3 * float(np.percentile(times, 10)),
                           "p90": 1e3 * float(np.percentile(times, 90)),
                           "min": 1e3 * float(min(times))},
            "images_per_second": batch_size / median,
            "peak_memory_bytes": memory, "peak_memory_source": measured_by}

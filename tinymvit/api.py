"""The Python API: ``tinymvit.load``, ``tinymvit.convert`` and :class:`Model`.

    model = tinymvit.load("path/to/checkpoint")        # folder or tinymvit .safetensors
    out = model(pixel_values)                          # (N, 3, H, W) float32, as HF's processor
    out.logits, out.pooler_output, out.last_hidden_state, out.hidden_states  (NCHW, like HF)
    model.preprocess(images)                           # bit-identical to HF's PIL processor
    model.classify("cat.jpg", top_k=5)                 # [{"label", "score", "index"}, ...]
    model.segment("street.jpg")                        # (H, W) label map of the whole image
"""
import threading

import numba
import numpy as np

from . import kernels
from .config import Config
from .errors import CheckpointError, InputError, ThreadingError
from .graph import GraphBuilder, InputTooSmall
from .models import BUILDERS, backbone_prefix
from .preprocess import ImageProcessor
from .weights import Checkpoint, read_checkpoint, save_tinymvit_file
from .weightstore import WeightStore

# With Numba's workqueue layer (no OpenMP/TBB available) parallel kernels must not be
# entered from two threads at once: serialise model calls in that case.
_WORKQUEUE_LOCK = None if kernels.THREAD_SAFE_LAYER else threading.Lock()
_default_threads = None  # set by tinymvit.set_num_threads; None = every core


def _check_not_forked_after_openmp():
    if kernels.FORKED_AFTER_OPENMP:
        raise ThreadingError(
            "this process was forked after its parent ran tinymvit kernels on Numba's OpenMP "
            "threading layer, and GNU OpenMP cannot run in such a child (it would hang). Use "
            "multiprocessing's 'spawn' or 'forkserver' start method, or run models only in the "
            "children, or make TBB available (pip/conda install tbb) so tinymvit picks Numba's "
            "fork-safe TBB layer")


class ModelOutput:
    """What a model call returns; attributes (``out.logits``) or keys (``out["logits"]``).

    logits             (N, num_labels) for classification, (N, num_labels, h, w) for
                       segmentation, None for a bare backbone
    pooler_output      (N, C) pooled features (None for segmentation models)
    last_hidden_state  (N, C, h, w) (None for segmentation models)
    hidden_states      tuple of NCHW stage outputs when asked for, else None
    """

    _FIELDS = ("logits", "pooler_output", "last_hidden_state", "hidden_states")

    def __init__(self, **fields):
        for name in self._FIELDS:
            setattr(self, name, fields.get(name))

    def __getitem__(self, key):
        if key not in self._FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self):
        return [k for k in self._FIELDS if getattr(self, k) is not None]

    def __repr__(self):
        parts = []
        for k in self.keys():
            v = getattr(self, k)
            parts.append(f"{k}={tuple(v.shape) if hasattr(v, 'shape') else f'{len(v)} maps'}")
        return f"ModelOutput({', '.join(parts)})"


def _nchw(a):
    """NHWC map -> contiguous NCHW array; (N, C) vectors pass through."""
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if a.ndim == 4 else a


def detect_head(tensors):
    """'segmentation', 'classification' or 'base', from the checkpoint's tensor names."""
    if any(k.startswith("segmentation_head.") for k in tensors):
        return "segmentation"
    if any(k.startswith("classifier.") for k in tensors):
        return "classification"
    return "base"


class Model:
    """A loaded model: a static graph plus its config, image processor and labels."""

    def __init__(self, checkpoint, num_threads=None):
        if not isinstance(checkpoint, Checkpoint):
            raise TypeError("Model(checkpoint) expects a Checkpoint; use tinymvit.load(path)")
        self.source = checkpoint.source
        self.config = Config.from_dict(checkpoint.config, source=f"{self.source} (config)")
        self.family = self.config.model_type
        self.task = detect_head(checkpoint.tensors)
        prefix = backbone_prefix(self.family)
        has_prefix = any(k.startswith(prefix) for k in checkpoint.tensors)
        if self.task != "base" and not has_prefix:
            raise CheckpointError(
                f"{self.source}: has {self.task} head tensors but no backbone tensors under "
                f"'{prefix}'")
        store = WeightStore(checkpoint.tensors, prefix if has_prefix else "", self.source)
        builder = GraphBuilder(store, self.config.num_channels)
        outputs = BUILDERS[self.family](builder, self.config, self.task)
        self.graph = builder.build(outputs)
        self.id2label = dict(self.config.id2label)
        self.preprocessor_config = checkpoint.preprocessor_config
        size = self.config.image_size
        self.processor = ImageProcessor.from_config(      # validates preprocessor_config now
            self.preprocessor_config, self.family, size if isinstance(size, int) else int(size[0]))
        self._min_size = None
        self.num_threads = num_threads

    # -- settings -------------------------------------------------------------------------
    @property
    def num_threads(self):
        """Threads the kernels use (None: tinymvit.set_num_threads' value, else every core)."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, n):
        self._num_threads = None if n is None else _check_threads(n)

    def _threads(self):
        return self._num_threads or get_num_threads()

    def __repr__(self):
        return (f"<tinymvit.Model {self.family} {self.task} from {self.source}: "
                f"{self.config.num_labels} labels, output_stride {self.config.output_stride}>")

    # -- the forward pass ------------------------------------------------------------------
    def __call__(self, pixel_values, output_hidden_states=False):
        """Run the model on ``pixel_values`` (N, C, H, W) float32, as HF's processor makes them."""
        x = self._check_pixel_values(pixel_values)
        _check_not_forked_after_openmp()
        try:
            res = self.graph.run(x, with_hidden=output_hidden_states, threads=self._threads())
        except InputTooSmall as exc:
            raise InputError(self._too_small_message(x.shape, exc)) from None
        out = {k: (_nchw(res[v]) if v else None) for k, v in self.graph.outputs.items()
               if k != "hidden_states"}
        if output_hidden_states:
            out["hidden_states"] = tuple(_nchw(res[v]) for v in self.graph.outputs["hidden_states"])
        return ModelOutput(**out)

    def profile(self, pixel_values, repeats=5):
        """Per-node median run times in seconds for ``pixel_values``, slowest first.

        Returns [(node description, seconds), ...]; handy to see where time goes.
        """
        x = self._check_pixel_values(pixel_values)
        _check_not_forked_after_openmp()
        self.graph.run(x, threads=self._threads())          # warm-up (JIT, planning)
        runs = []
        for _ in range(repeats):
            timings = []
            self.graph.run(x, threads=self._threads(), timings=timings)
            runs.append(timings)
        rows, shapes = [], self.graph.shapes(x.shape)
        for i, (node, _) in enumerate(runs[0]):
            kind = getattr(node, "kind", type(node).__name__)
            rows.append((f"{node.name} [{kind}] {shapes[node.output]}",
                         float(np.median([r[i][1] for r in runs]))))
        return sorted(rows, key=lambda r: -r[1])

    def _check_pixel_values(self, x):
        c = self.config.num_channels
        if not isinstance(x, np.ndarray):
            raise InputError(f"pixel_values must be a NumPy array of shape (N, {c}, H, W), got "
                             f"{type(x).__name__}; use model.preprocess(images) to make one")
        if x.dtype != np.float32:
            hint = (" (this looks like raw image data: use model.preprocess(images))"
                    if x.dtype == np.uint8 else " (use x.astype(np.float32))")
            raise InputError(f"pixel_values must be float32, got {x.dtype}{hint}")
        if x.ndim != 4 or x.shape[1] != c:
            hint = ""
            if x.ndim == 3 and x.shape[0] == c:
                hint = "; add a batch axis: pixel_values[None]"
            elif x.ndim == 4 and x.shape[-1] == c:
                hint = "; this looks channels-last, transpose it with x.transpose(0, 3, 1, 2)"
            raise InputError(f"pixel_values must have shape (N, {c}, H, W), got "
                             f"{tuple(x.shape)}{hint}")
        if 0 in x.shape:
            raise InputError(f"pixel_values is empty: shape {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise InputError("pixel_values holds NaN or infinite values")
        return np.ascontiguousarray(x)

    def min_input_size(self):
        """Smallest square input side this model accepts (e.g. 33 for MobileViTV2 at OS 32)."""
        if self._min_size is None:
            for n in range(1, 1025):
                try:
                    self.graph.shapes((1, self.config.num_channels, n, n))
                except InputTooSmall:
                    continue
                self._min_size = n
                break
        return self._min_size

    def _too_small_message(self, shape, exc):
        return (f"input {shape[2]}x{shape[3]} is too small for this {self.family} model at "
                f"output_stride {self.config.output_stride}: height and width must be at least "
                f"{self.min_input_size()} pixels ({exc})")

    # -- images in, answers out ------------------------------------------------------------
    def preprocess(self, images):
        """Images (paths, PIL images, uint8 arrays; one or a list) -> pixel_values (N, 3, h, w).

        Bit-identical to transformers' PIL image processor with this checkpoint's
        ``preprocessor_config.json`` (resize, center crop, rescale, BGR flip or mean/std).
        """
        return self.processor(images)

    def classify(self, image, top_k=5):
        """Top-k classes of one image (path, PIL image or uint8 array), or of a list of them.

        Returns [{"label": str, "score": float, "index": int}, ...] by descending softmax
        score (a list of such lists for a list of images).
        """
        from .postprocess import softmax
        from .postprocess import top_k as _top_k

        if self.task != "classification":
            raise InputError(f"classify() needs an image-classification checkpoint; this one is "
                             f"a {self.task} model" +
                             (" (use segment())" if self.task == "segmentation" else ""))
        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be a positive int, got {top_k!r}")
        batch = isinstance(image, (list, tuple))
        images = list(image) if batch else [image]
        if self.processor.do_center_crop:          # one batch: every image ends the same size
            logits = self(self.preprocess(images)).logits
        else:                                      # sizes may differ: one call per image
            logits = np.concatenate([self(self.preprocess(im)).logits for im in images])
        probs = softmax(logits, axis=-1)
        results = [_top_k(row, top_k, self.id2label) for row in probs]
        return results if batch else results[0]

    def post_process_semantic_segmentation(self, logits, target_sizes=None):
        """transformers' post-processing: per image, bilinear resize (align_corners=False) of
        the logits to ``target_sizes[i]`` then argmax; without sizes, argmax of the raw logits."""
        from .postprocess import post_process_semantic_segmentation
        if hasattr(logits, "logits"):
            logits = logits.logits
        return post_process_semantic_segmentation(logits, target_sizes)

    def segment(self, image, size=None):
        """(H, W) int64 label map covering the whole image, aligned pixel for pixel.

        Unlike transformers' processor (which center-crops), the whole image is resized
        without cropping so that its longer side is about ``size`` (default: the
        checkpoint's crop size; ``"native"`` keeps the original scale), the model runs
        on it, and the logits are resampled back to every original pixel using the
        network's exact stride geometry.
        """
        from .images import load_image
        from .postprocess import logits_to_image_labels

        if self.task != "segmentation":
            raise InputError(f"segment() needs a semantic-segmentation checkpoint; this one is "
                             f"a {self.task} model")
        rgb = load_image(image)
        pixel_values, meta = self.processor.prepare_for_segmentation(
            rgb, size=size, output_stride=self.config.output_stride)
        logits = self(pixel_values).logits                       # (1, L, h, w)
        return logits_to_image_labels(np.ascontiguousarray(logits.transpose(0, 2, 3, 1)), meta,
                                      self.config.output_stride)


def load(path, num_threads=None):
    """Load a checkpoint folder or tinymvit ``.safetensors`` file into a :class:`Model`."""
    return Model(read_checkpoint(path), num_threads=num_threads)


def convert(src, dst):
    """Convert checkpoint ``src`` (folder, .bin folder or file) into one tinymvit file ``dst``.

    Every tensor is validated against the config before writing.  Returns ``dst``.
    """
    checkpoint = read_checkpoint(src)
    Model(checkpoint)  # validates every tensor name, shape and dtype against the config
    return save_tinymvit_file(checkpoint, dst)


def _check_threads(n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"num_threads must be a positive int, got {n!r}")
    return n


def set_num_threads(n):
    """Default number of kernel threads for every model without its own ``num_threads``.

    Capped at Numba's thread pool size (``NUMBA_NUM_THREADS``, the core count by default).
    """
    global _default_threads
    _default_threads = _check_threads(n)


def get_num_threads():
    """The number of kernel threads models use by default."""
    return _default_threads or kernels.workers.default_threads()

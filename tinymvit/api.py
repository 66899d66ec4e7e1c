"""The Python API: ``tinymvit.load``, ``tinymvit.convert`` and :class:`Model`.

    model = tinymvit.load("path/to/checkpoint")        # folder or tinymvit .safetensors
    out = model(pixel_values)                          # (N, 3, H, W) float32, as HF's processor
    out.logits, out.pooler_output, out.last_hidden_state, out.hidden_states  (NCHW, like HF)
    model.preprocess(images)                           # bit-identical to HF's PIL processor
    model.classify("cat.jpg", top_k=5)                 # [{"label", "score", "index"}, ...]
    model.segment("street.jpg")                        # (H, W) label map of the whole image
    for image, result in model.iter_classify(paths):   # lazily, batch by batch; a failing
        ...                                            # image yields its error, others go on
"""
import math

import numpy as np

from . import kernels, limits
from .config import Config
from .errors import CheckpointError, InputError, NumericalError, TinyMViTError
from .graph import GraphBuilder, InputTooSmall, NonFiniteInput
from .hub import open_checkpoint
from .models import BUILDERS, backbone_prefix
from .preprocess import ImageProcessor
from .weights import Checkpoint, save_tinymvit_file
from .weightstore import WeightStore

_default_threads = None  # set by tinymvit.set_num_threads; None = every core


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


def detect_head(tensors):
    """'segmentation', 'classification' or 'base', from the checkpoint's tensor names."""
    if any(k.startswith("segmentation_head.") for k in tensors):
        return "segmentation"
    if any(k.startswith("classifier.") for k in tensors):
        return "classification"
    return "base"


class Model:
    """A loaded model: a static graph plus its config, image processor and labels."""

    def __init__(self, checkpoint, num_threads=None, backend="numba"):
        if not isinstance(checkpoint, Checkpoint):
            raise TypeError("Model(checkpoint) expects a Checkpoint; use tinymvit.load(path)")
        self.source = checkpoint.source
        self.files = tuple(checkpoint.files)          # what was read (outputs never replace them)
        # Every config and preprocessor value is checked before anything is built.
        self.config = Config.from_dict(checkpoint.config, source=checkpoint.config_source)
        self.family = self.config.model_type
        self.preprocessor_config = checkpoint.preprocessor_config
        size = self.config.image_size
        self.processor = ImageProcessor.from_config(
            self.preprocessor_config, self.family, size if isinstance(size, int) else int(size[0]),
            source=checkpoint.preprocessor_source)
        self.task = detect_head(checkpoint.tensors)
        prefix = backbone_prefix(self.family)
        has_prefix = any(k.startswith(prefix) for k in checkpoint.tensors)
        if self.task != "base" and not has_prefix:
            raise CheckpointError(
                f"{self.source}: has {self.task} head tensors but no backbone tensors under "
                f"'{prefix}'")
        store = WeightStore(checkpoint.tensors, prefix if has_prefix else "", self.source)
        builder = GraphBuilder(store, self.config.num_channels)
        try:
            with np.errstate(over="raise", invalid="raise", divide="raise"):
                outputs = BUILDERS[self.family](builder, self.config, self.task)
        except FloatingPointError as exc:      # finite weights whose BN folding overflows
            layer = store.last_key.rsplit(".normalization.", 1)[0]
            raise CheckpointError(
                f"{self.source}: the weights of '{layer}' overflow float32 once its BatchNorm "
                f"is folded in ({exc}); its weights or BatchNorm statistics are out of range - "
                f"the checkpoint is damaged") from None
        self.graph = builder.build(outputs)
        if self.task == "segmentation":        # segment() resizes the logits to the image
            self.graph.post_kernels = ("resize",)
        self.id2label = dict(self.config.id2label)
        self._min_size = None
        self._activation_cache = {}
        self.num_threads = num_threads
        self.backend = backend

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

    @property
    def backend(self):
        """How a forward pass computes, by default: "numba" (compiled kernels) or "numpy"
        (every layer with its NumPy reference: slow, readable, no compiled code)."""
        return self._backend

    @backend.setter
    def backend(self, name):
        self._backend = _check_backend(name)

    def __repr__(self):
        return (f"<tinymvit.Model {self.family} {self.task} from {self.source}: "
                f"{self.config.num_labels} labels, output_stride {self.config.output_stride}>")

    # -- the forward pass ------------------------------------------------------------------
    def __call__(self, pixel_values, output_hidden_states=False, backend=None):
        """Run the model on ``pixel_values`` (N, C, H, W) float32, as HF's processor makes them.

        ``backend``: "numba" or "numpy" for this call (default: :attr:`backend`).
        """
        res = self._run(pixel_values, output_hidden_states, backend, nchw=True)
        out = {k: (res[v] if v else None) for k, v in self.graph.outputs.items()
               if k != "hidden_states"}
        if output_hidden_states:
            out["hidden_states"] = tuple(res[v] for v in self.graph.outputs["hidden_states"])
        return ModelOutput(**out)

    def _run(self, pixel_values, with_hidden=False, backend=None, keep=(), timings=None,
             nchw=False):
        """The checked forward pass: {tensor name: array} of the outputs and ``keep``, maps
        NHWC as computed (or NCHW, as transformers returns them, with ``nchw``)."""
        backend = self._backend if backend is None else _check_backend(backend)
        x = self._check_pixel_values(pixel_values)
        self._check_input_shape(x.shape)
        try:
            # Overflow on extreme inputs or weights gives inf/NaN outputs (classify() and
            # segment() refuse them), never numpy warnings on stderr.
            with np.errstate(all="ignore"):
                return self.graph.run(x, with_hidden=with_hidden, threads=self._threads(),
                                      timings=timings, backend=backend, keep=keep, nchw=nchw)
        except InputTooSmall as exc:
            raise InputError(self._too_small_message(x.shape, exc)) from None
        except NonFiniteInput:            # checked by graph.run as it copies x in
            raise InputError("pixel_values holds NaN or infinite values") from None
        except ArithmeticError as exc:        # e.g. a division by an overflowed zero variance
            raise NumericalError(f"the forward pass overflowed float32 ({type(exc).__name__}: "
                                 f"{exc}); the input or the checkpoint's weights are out of "
                                 f"range") from None

    def warm_up(self, batch_size=1, size=None):
        """Make the first forward pass on ``batch_size`` images of ``size`` as fast as the
        ones after it: compile the kernels it needs (or load them from the cache) and plan
        its buffers now -- e.g. when a server starts, before its first request.  ``size``:
        (height, width), or one int for a square (default: what :meth:`preprocess` makes).
        :func:`tinymvit.load` does this for one image already, when the kernels are in the
        cache.  The plans of the 4 input shapes used last are kept (``Graph.MAX_CACHED_SHAPES``).
        Returns the model.  Nothing to do with the "numpy" backend."""
        _check_batch_size(batch_size)
        if size is None:
            size = self.processor.output_size()
            if size is None:
                raise InputError("this model's image processor keeps each image's aspect "
                                 "ratio: give warm_up() a size=(height, width)")
        else:
            size = _check_size(size)
        if self._backend == "numba":
            self._prepare((batch_size, self.config.num_channels) + size, True)
        return self

    def _prepare(self, shape, may_compile):
        self._check_input_shape(shape)
        try:
            return self.graph.prepare(shape, self._threads(), may_compile)
        except InputTooSmall as exc:
            raise InputError(self._too_small_message(shape, exc)) from None

    def _warm_up_from_cache(self):
        """load()'s share of :meth:`warm_up`: one image at the processor's size, only if its
        kernels are all in the cache (a first-ever run compiles at its first call, which says
        so), and not for segmentation (segment() sizes each input after its image)."""
        size = self.processor.output_size()
        if self._backend != "numba" or self.task == "segmentation" or size is None:
            return
        try:
            self._prepare((1, self.config.num_channels) + tuple(size), False)
        except InputError:
            pass                              # the first call says what is wrong with it

    def summary(self, size=None, time=False, repeats=5):
        """A layer-by-layer table of the network for one image (:mod:`tinymvit.summary`).

        One row per node in execution order: checkpoint name(s), operation, output shape,
        parameters, multiply-adds; ``str()`` of the result is the table, ``.rows``,
        ``.total_params`` (as PyTorch counts ``model.parameters()``) and ``.total_macs``
        its contents.  ``size``: the input side (an N x N image) or (height, width);
        default: what the model sees in use (the processor's crop; for segmentation, what
        ``segment()`` makes of a square photo).  ``time=True`` adds each node's measured
        time (median of ``repeats`` runs with the model's backend and threads) and share.
        """
        from .benchmark import input_shape
        from .summary import median_timings, summarize
        if size is None:
            shape = input_shape(self)
        else:
            shape = (1, self.config.num_channels, *_check_size(size))
        self._check_input_shape(shape)                      # too small, or too large
        timings = None
        if time:
            _check_positive(repeats, "repeats")
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            timings = median_timings(self, x, repeats)
        return summarize(self, shape, timings)

    def attention_maps(self, image):
        """One dict per attention block, in execution order: "name" (the attention module in
        the checkpoint), "title", "scores" (the tensor transformers computes there: MobileViTV2
        context scores (1, 1, P, N), MobileViT attention probabilities (P, heads, N, N)) and
        "map" ((H, W) aligned with the original image).  ``image``: a path, PIL image or
        uint8 array (preprocessed as transformers would), or one image's pixel_values.
        See :mod:`tinymvit.attention`."""
        from .attention import attention_maps
        return attention_maps(self, image)

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
        return np.ascontiguousarray(x)     # NaN and infinities: see _run

    def activation_bytes(self, shape):
        """Total size in bytes of the intermediate tensors of a forward pass on an input of
        ``shape`` (N, C, H, W), before buffer reuse (what ``limits.MAX_ACTIVATION_BYTES``
        caps).  Raises InputError when the input is too small for the network."""
        shape = tuple(int(v) for v in shape)
        if shape not in self._activation_cache:
            try:
                shapes = self.graph.shapes(shape)
            except InputTooSmall as exc:
                raise InputError(self._too_small_message(shape, exc)) from None
            if len(self._activation_cache) > 64:
                self._activation_cache.clear()
            self._activation_cache[shape] = 4 * sum(math.prod(s) for s in shapes.values())
        return self._activation_cache[shape]

    def _check_input_shape(self, shape):
        """Too small for the network, or too big for the memory cap: InputError, before any
        buffer is allocated."""
        need = self.activation_bytes(shape)
        if need > limits.MAX_ACTIVATION_BYTES:
            n, _, h, w = shape
            raise InputError(
                f"input of {n} image(s) of {h}x{w} is too large: its intermediate tensors would "
                f"total {limits.gib(need)}, above the limit of "
                f"{limits.gib(limits.MAX_ACTIVATION_BYTES)} (tinymvit.limits."
                f"MAX_ACTIVATION_BYTES); use a smaller image size or batch")

    def min_input_size(self):
        """Smallest square input side this model accepts (e.g. 33 for MobileViTV2 at OS 32)."""
        if self._min_size is None:
            def fits(n):
                try:
                    self.graph.shapes((1, self.config.num_channels, n, n))
                    return True
                except InputTooSmall:
                    return False

            lo, hi = 1, limits.MAX_SIDE          # a bigger input never stops fitting
            if fits(hi):
                while lo < hi:
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
                self._min_size = lo
        return self._min_size

    def _too_small_message(self, shape, exc):
        n = self.min_input_size()
        need = (f"height and width must be at least {n} pixels" if n is not None else
                f"it needs inputs larger than {limits.MAX_SIDE} pixels")
        return (f"input {shape[2]}x{shape[3]} is too small for this {self.family} model at "
                f"output_stride {self.config.output_stride}: {need} ({exc})")

    # -- images in, answers out ------------------------------------------------------------
    def preprocess(self, images):
        """Images (paths, PIL images, uint8 arrays; one or a list) -> pixel_values (N, 3, h, w).

        Bit-identical to transformers' PIL image processor with this checkpoint's
        ``preprocessor_config.json`` (resize, center crop, rescale, BGR flip or mean/std).
        """
        return self.processor(images)

    def classify(self, image, top_k=5, batch_size=32):
        """Top-k classes of one image (path, PIL image or uint8 array), or of a list of them.

        Returns [{"label": str, "score": float, "index": int}, ...] by descending softmax
        score (a list of such lists for a list of images).  A list is processed
        ``batch_size`` images at a time, so memory does not grow with its length.  Raises
        the first image's error (NumericalError if the logits are not finite).
        """
        batch = isinstance(image, (list, tuple))
        results = _raise_first(self.iter_classify(image if batch else [image], top_k, batch_size))
        return results if batch else results[0]

    def iter_classify(self, images, top_k=5, batch_size=32):
        """Classify an iterable of images lazily, ``batch_size`` at a time.

        Yields ``(image, predictions)`` in input order.  An image that fails (unreadable,
        too large, non-finite logits, ...) yields ``(image, error)`` - the TinyMViTError,
        not raised - and the others go on.
        """
        from .postprocess import softmax
        from .postprocess import top_k as _top_k

        self._check_task("classification", "classify")
        _check_positive(top_k, "top_k")
        _check_batch_size(batch_size)
        _check_iterable(images, "iter_classify", "classify")

        def prepare(image):
            return self.preprocess(image), None                  # (1, 3, h, w)

        def finish(logits, info, name):                          # logits (1, num_labels)
            _check_finite(logits, name)
            return _top_k(softmax(logits, axis=-1)[0], top_k, self.id2label)

        return self._iter_batched(images, prepare, finish, batch_size)

    def post_process_semantic_segmentation(self, logits, target_sizes=None):
        """transformers' post-processing: per image, bilinear resize (align_corners=False) of
        the logits to ``target_sizes[i]`` then argmax; without sizes, argmax of the raw logits."""
        from .postprocess import post_process_semantic_segmentation
        if hasattr(logits, "logits"):
            logits = logits.logits
        return post_process_semantic_segmentation(logits, target_sizes)

    def segment(self, image, size=None, batch_size=8):
        """(H, W) int64 label map covering the whole image, aligned pixel for pixel (a list of
        maps for a list of images, processed ``batch_size`` at a time).

        Unlike transformers' processor (which center-crops), the whole image is resized
        without cropping so that its longer side is about ``size`` (default: the
        checkpoint's crop size; ``"native"`` keeps the original scale), the model runs
        on it, and the logits are resampled back to every original pixel using the
        network's exact stride geometry.  Images whose model inputs have the same size
        share a forward pass.
        """
        batch = isinstance(image, (list, tuple))
        results = _raise_first(self.iter_segment(image if batch else [image], size, batch_size))
        return results if batch else results[0]

    def iter_segment(self, images, size=None, batch_size=8):
        """Segment an iterable of images lazily; yields ``(image, labels or error)`` in order
        (see :meth:`iter_classify` and :meth:`segment`)."""
        from .postprocess import logits_to_image_labels

        self._check_task("segmentation", "segment")
        _check_batch_size(batch_size)
        _check_iterable(images, "iter_segment", "segment")
        os_ = self.config.output_stride
        self.processor.segmentation_input_size(1, 1, size, output_stride=os_)   # checks size

        def prepare(image):                                      # (1, 3, h, w), meta
            return self.processor.prepare_for_segmentation(image, size=size, output_stride=os_)

        def finish(logits, meta, name):                          # logits (1, L, h, w)
            _check_finite(logits, name)
            return logits_to_image_labels(np.ascontiguousarray(logits.transpose(0, 2, 3, 1)),
                                          meta, os_)

        return self._iter_batched(images, prepare, finish, batch_size)

    # -- batching ---------------------------------------------------------------------------
    def _check_task(self, task, method):
        if self.task != task:
            kind = "an image-classification" if task == "classification" else \
                "a semantic-segmentation"
            other = {"classification": " (use classify())",
                     "segmentation": " (use segment())"}.get(self.task, "")
            raise InputError(f"{method}() needs {kind} checkpoint; this one is a {self.task} "
                             f"model{other}")

    def _iter_batched(self, images, prepare, finish, batch_size):
        """Yield (image, result or TinyMViTError) for ``images``, in order, as they are done.

        prepare(image) -> (pixel_values (1, C, h, w), info); finish(logits (1, ...), info,
        name) -> result.  Consecutive images whose inputs have the same size are run as
        one batch of at most ``batch_size`` (fewer if the batch would exceed
        ``limits.MAX_ACTIVATION_BYTES``); if a batch fails, its images are retried one by
        one so that the error is pinned on the image that caused it.  At most one batch
        of prepared inputs is held in memory.
        """
        pending = []                                  # [(index, image, (pixel_values, info))]
        for index, image in enumerate(images):
            item = _attempt(index, image, prepare, image)
            if pending and (isinstance(item, TinyMViTError)
                            or not self._joins(pending, item[0].shape, batch_size)):
                yield from self._run_batch(pending, finish)
                pending = []
            if isinstance(item, TinyMViTError):
                yield image, item
                continue
            pending.append((index, image, item))
            if len(pending) == batch_size:            # full: run it before reading further
                yield from self._run_batch(pending, finish)
                pending = []
        yield from self._run_batch(pending, finish)

    def _joins(self, pending, shape, batch_size):
        """Can an input of ``shape`` (1, C, h, w) join the batch ``pending``?"""
        if len(pending) >= batch_size or pending[0][2][0].shape != shape:
            return False
        try:
            return self.activation_bytes((len(pending) + 1,) + shape[1:]) \
                <= limits.MAX_ACTIVATION_BYTES
        except InputError:                            # too small: fails the same either way
            return True

    def _run_batch(self, pending, finish):
        """Run ``pending`` as one batch; yields (image, result or error) for each."""
        if not pending:
            return
        try:
            logits = self(np.concatenate([item[0] for _, _, item in pending])).logits
        except (TinyMViTError, MemoryError) as exc:
            if len(pending) > 1:                      # find out which image it was
                for entry in pending:
                    yield from self._run_batch([entry], finish)
            else:
                yield pending[0][1], _named(_as_error(exc), *pending[0][:2])
            return
        for row, (index, image, (_, info)) in enumerate(pending):
            yield image, _attempt(index, image, finish, logits[row:row + 1], info,
                                  _image_name(index, image))


def load(path, num_threads=None, *, backend="numba", revision=None, token=None,
         allow_pickle=False):
    """Load a checkpoint folder, a tinymvit ``.safetensors`` file, or a Hugging Face Hub repo id
    ``org/name[@revision]`` (needs ``tinymvit[hub]``; see :mod:`tinymvit.hub`) into a
    :class:`Model`.  A local path always wins over a repo id; from the Hub a pickled
    ``pytorch_model.bin`` is fetched only with ``allow_pickle=True``.  ``backend``: the
    model's default, "numba" (compiled kernels) or "numpy" (the NumPy references).

    A classifier whose kernels are in the cache comes back ready for one image at its image
    processor's size (see :meth:`Model.warm_up`): its first call costs what the next ones do.
    """
    model = Model(open_checkpoint(path, revision=revision, token=token,
                                  allow_pickle=allow_pickle),
                  num_threads=num_threads, backend=backend)
    model._warm_up_from_cache()
    return model


def convert(src, dst, *, allow_pickle=False):
    """Convert checkpoint ``src`` (folder, .bin folder, file or Hub repo id) into one tinymvit
    file ``dst``.

    Every tensor is validated against the config before writing.  Returns ``dst``.
    """
    checkpoint = open_checkpoint(src, allow_pickle=allow_pickle)
    Model(checkpoint)  # validates every tensor name, shape and dtype against the config
    return save_tinymvit_file(checkpoint, dst)


BACKENDS = ("numba", "numpy")


def _check_backend(name):
    if name not in BACKENDS:
        raise InputError(f"backend must be 'numba' or 'numpy', got {name!r}")
    return name


def _check_threads(n):
    return _check_positive(n, "num_threads")


def set_num_threads(n):
    """Default number of kernel threads for every model without its own ``num_threads``
    (otherwise: every core the process may use -- its CPU affinity, within its container's
    CPU quota)."""
    global _default_threads
    _default_threads = _check_threads(n)


def get_num_threads():
    """The number of kernel threads models use by default."""
    return _default_threads or kernels.workers.default_threads()


def _check_positive(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_size(size):
    """(height, width) of an input ``size``: one int (a square) or a pair of ints, each from 1
    to limits.MAX_SIDE (summary(), warm_up())."""
    side = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    if not (isinstance(side, (tuple, list)) and len(side) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limits.MAX_SIDE
            for v in side)):
        raise InputError(f"size must be an integer or a (height, width) pair of integers "
                         f"from 1 to {limits.MAX_SIDE}, got {size!r}")
    return tuple(side)


def _check_batch_size(batch_size):
    _check_positive(batch_size, "batch_size")


def _check_iterable(images, method, single):
    """``images`` must be an iterable of images, not one image (a path would be iterated
    character by character)."""
    from .images import is_pil_image
    if (isinstance(images, (str, bytes, np.ndarray)) or is_pil_image(images)
            or hasattr(images, "__fspath__") or not hasattr(images, "__iter__")):
        raise InputError(f"{method}() takes an iterable of images (a list, a generator...), got "
                         f"{type(images).__name__}; for one image use {single}()")


def _image_name(index, image):
    """How an image is named in an error: its path, else its position and kind."""
    from .images import describe_image
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        return str(image)
    return f"image {index} ({describe_image(image)})"


def _named(exc, index, image):
    """``exc`` with the image it is about named first (unless it already names it)."""
    name = _image_name(index, image)
    if name in str(exc):
        return exc
    return type(exc)(f"{name}: {exc}")


def _attempt(index, image, fn, *args):
    """fn(*args), or the TinyMViTError it raised, naming image number ``index``."""
    try:
        return fn(*args)
    except (TinyMViTError, MemoryError) as exc:
        return _named(_as_error(exc), index, image)


def _as_error(exc):
    """A MemoryError while handling one image becomes that image's InputError."""
    if isinstance(exc, MemoryError):
        return InputError("not enough memory to process this image (MemoryError); use a "
                          "smaller image, size or batch_size")
    return exc


def _raise_first(pairs):
    """The results of (image, result or error) pairs; raises the first error."""
    results = []
    for _, result in pairs:
        if isinstance(result, TinyMViTError):
            raise result
        results.append(result)
    return results


def _check_finite(values, name):
    if not np.isfinite(values).all():
        bad = values.size - int(np.count_nonzero(np.isfinite(values)))
        raise NumericalError(
            f"{name}: the model's output holds {bad} NaN or infinite value(s) (of {values.size}): "
            f"float32 overflowed on this input, or the checkpoint's weights are out of range; "
            f"there is no meaningful prediction")

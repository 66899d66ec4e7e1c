"""Scale-out on a Ray cluster with Ray Data (``pip install 'tinymvit[ray]'``).

Callable classes for ``Dataset.map_batches``; each actor loads the model once and sets its
kernel threads to the CPUs Ray gave it::

    import ray, tinymvit.ray
    ds = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    out = ds.map_batches(tinymvit.ray.Classifier, fn_constructor_kwargs={"model": "org/name"},
                         batch_size=16, num_cpus=1, compute=ray.data.ActorPoolStrategy(size=8))

A batch (Ray's NumPy format, a dict of columns) may hold any of

* ``"image"``: decoded images, as ``ray.data.read_images`` makes them (``"path"`` too with
  ``include_paths=True``).  Ray decodes without applying the EXIF orientation, so photos stored
  sideways differ from tinymvit's own loading: prefer bytes or paths;
* ``"bytes"`` + ``"path"``: raw files, as ``ray.data.read_binary_files(include_paths=True)``
  makes them; decoded in the actor exactly like ``tinymvit.load_image`` (EXIF, RGB);
* ``"path"`` alone: files the actor reads itself (paths must be visible on every node).

Returned columns: ``path`` (when given), ``record`` (the JSON line of the serial CLI's
``--jsonl``, see :mod:`tinymvit.predict`) and ``error`` ("" when fine), and

* :class:`Classifier`: ``label``, ``score``, ``index`` (top-1) and ``labels`` (a list of
  top_k str per row), ``scores``, ``indices`` (N, top_k), best first;
* :class:`Segmenter`: ``height``, ``width``, ``fractions`` (N, num_labels) float64 (share of
  pixels per class) and, with ``return_masks=True``, ``mask`` (each (H, W) uint8, or int32 for
  more than 256 classes).

A failed image gets its error in ``error``/``record`` and empty values elsewhere (label "",
score NaN, index -1), never a failed job.  :func:`classify` and :func:`segment` run the whole
pipeline over a list of paths and yield the same records as the serial command line.
"""
import io
import json
import logging

import numpy as np

from .batching import decode_ahead, decode_one
from .errors import InputError, TinyMViTError
from .images import ImageError, load_image
from .predict import predict_batch

__all__ = ["Classifier", "Segmenter", "classify", "segment", "actor_cpus"]

INSTALL_HINT = "pip install 'tinymvit[ray]' (or pip install 'ray[data]')"


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise TinyMViTError(f"running on Ray needs Ray Data: {INSTALL_HINT}") from None
    return ray


def actor_cpus():
    """Whole CPUs Ray assigned to the calling task or actor, or None outside Ray."""
    try:
        import ray
        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not in a Ray worker, or an older Ray without these calls
        return None
    return max(1, int(cpus)) if cpus else None


def decode_bytes(data, name):
    """Encoded image bytes -> (H, W, 3) uint8 RGB via ``load_image`` (size limit, EXIF
    orientation, RGB), as for a file; ``name`` (the path) names it in errors."""
    from PIL import Image, UnidentifiedImageError
    try:
        im = Image.open(io.BytesIO(bytes(data)))        # reads the header only
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read") from None
    except Exception as exc:  # noqa: BLE001  truncated header, DecompressionBombError...
        raise ImageError(f"{name}: unreadable image ({type(exc).__name__}: {exc})") from None
    with im:
        try:
            return load_image(im)                       # decodes; errors are ImageErrors
        except ImageError as exc:
            raise ImageError(f"{name}: {exc}") from None


def _decode_batch(batch, workers):
    """Ray NumPy batch -> list of Decoded (item = the path, or the row number without paths)."""
    if not isinstance(batch, dict):
        raise InputError(f"expected Ray's NumPy batch format (a dict of columns), got "
                         f"{type(batch).__name__}; use map_batches(..., batch_format='numpy')")
    paths = batch.get("path")
    if "image" in batch:
        images = batch["image"]
        items = list(paths) if paths is not None else list(range(len(images)))
        return [decode_one(load_image, item, img) for item, img in zip(items, images)]
    if "bytes" in batch:
        items = list(paths) if paths is not None else list(range(len(batch["bytes"])))
        return [decode_one(lambda data, name=str(item): decode_bytes(data, name), item, data)
                for item, data in zip(items, batch["bytes"])]
    if paths is not None:
        return next(decode_ahead([str(p) for p in paths], batch_size=max(1, len(paths)),
                                 workers=workers), [])
    raise InputError(f"the batch has columns {sorted(batch)}; expected 'image' (read_images), "
                     f"'bytes' + 'path' (read_binary_files) or 'path'")


def _strings(values):
    return np.array(values, dtype=str)


def _load(model, task, **kwargs):
    """``tinymvit.load(model)``, which must be a ``task`` checkpoint."""
    from .api import load
    loaded = load(model, **kwargs)
    if loaded.task != task:
        raise InputError(f"{model}: this is a {loaded.task} checkpoint; expected a {task} one")
    return loaded


class _Predictor:
    """Loads the model once per actor; kernel threads = the actor's CPUs (or ``num_threads``)."""

    TASK = None

    def __init__(self, model, num_threads=None, revision=None, allow_pickle=False,
                 decode_workers=2):
        self.model = _load(model, self.TASK, num_threads=num_threads or actor_cpus(),
                           revision=revision, allow_pickle=allow_pickle)
        self.decode_workers = decode_workers

    def _run(self, batch, **options):
        decoded = _decode_batch(batch, self.decode_workers)
        results = predict_batch(self.model, decoded, **options)
        records = [r.record for r in results]
        columns = {"record": _strings([json.dumps(r, ensure_ascii=False) for r in records]),
                   "error": _strings([r.get("error", "") for r in records])}
        if "path" in batch:
            columns["path"] = _strings([str(p) for p in batch["path"]])
        return results, columns


class Classifier(_Predictor):
    """``map_batches`` callable: top-k classes of every image.

    model: checkpoint path (visible on every node) or Hub repo id ``org/name[@revision]``.
    top_k: classes per image; num_threads: kernel threads (default: the actor's CPUs).
    """

    TASK = "classification"

    def __init__(self, model, top_k=5, num_threads=None, revision=None, allow_pickle=False,
                 decode_workers=2):
        super().__init__(model, num_threads, revision, allow_pickle, decode_workers)
        self.top_k = min(top_k, self.model.config.num_labels)

    def __call__(self, batch):
        results, columns = self._run(batch, top_k=self.top_k)
        n, k = len(results), self.top_k
        labels = np.empty(n, dtype=object)   # lists of str: Arrow list<string> (a 2-D str array
        scores = np.full((n, k), np.nan, dtype=np.float32)            # would be fixed-width
        indices = np.full((n, k), -1, dtype=np.int64)                 # bytes, per batch)
        for i, result in enumerate(results):
            predictions = result.record.get("predictions", [])
            labels[i] = [p["label"] for p in predictions] + [""] * (k - len(predictions))
            for j, p in enumerate(predictions):
                scores[i, j], indices[i, j] = p["score"], p["index"]
        columns.update(label=_strings([row[0] for row in labels]), score=scores[:, 0].copy(),
                       index=indices[:, 0].copy(), labels=labels, scores=scores, indices=indices)
        return columns


class Segmenter(_Predictor):
    """``map_batches`` callable: label map and class shares of every image (``model.segment``).

    size: ``segment()``'s size (None: the checkpoint's crop size, or "native");
    return_masks: also return each (H, W) label map in the ``mask`` column.
    """

    TASK = "segmentation"

    def __init__(self, model, size=None, return_masks=False, num_threads=None, revision=None,
                 allow_pickle=False, decode_workers=2):
        super().__init__(model, num_threads, revision, allow_pickle, decode_workers)
        self.size, self.return_masks = size, return_masks

    def __call__(self, batch):
        results, columns = self._run(batch, size=self.size)
        n, num_labels = len(results), self.model.config.num_labels
        fractions = np.zeros((n, num_labels), dtype=np.float64)                 # (N, L)
        sizes = np.zeros((n, 2), dtype=np.int64)                                # (N, 2) H, W
        dtype = np.uint8 if num_labels <= 256 else np.int32
        masks = np.empty(n, dtype=object)            # ragged (H, W) maps, (0, 0) for errors
        for i, labels in enumerate(r.labels for r in results):
            masks[i] = np.zeros((0, 0), dtype) if labels is None else labels.astype(dtype)
            if labels is not None:
                sizes[i] = labels.shape
                fractions[i] = np.bincount(labels.ravel(), minlength=num_labels) / labels.size
        columns.update(height=sizes[:, 0].copy(), width=sizes[:, 1].copy(), fractions=fractions)
        if self.return_masks:
            columns["mask"] = masks
        return columns


# -- the whole pipeline over a list of paths -----------------------------------------------------
def _init(ray, address, quiet):
    if not ray.is_initialized():
        # address None: $RAY_ADDRESS if set, else a new local instance on this machine
        ray.init(address=address, include_dashboard=False,
                 logging_level="WARNING" if quiet else "INFO", log_to_driver=not quiet)
    context = ray.data.DataContext.get_current()
    if quiet:                                 # no progress bars, no per-dataset INFO lines
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    return context


def _run(callable_class, model, paths, options, *, address, num_actors, cpus_per_actor,
         batch_size, quiet, preserve_order, check_model):
    ray = _import_ray()
    paths = [str(p) for p in paths]
    if not paths:
        return
    if check_model:       # on the driver: a bad path or checkpoint fails before Ray starts
        _load(model, callable_class.TASK, revision=options["revision"],
              allow_pickle=options["allow_pickle"])
    context = _init(ray, address, quiet)
    context.execution_options.preserve_order = preserve_order
    if num_actors is None:
        total = int(ray.cluster_resources().get("CPU", 1))
        num_actors = max(1, min(total // cpus_per_actor, len(paths)))
    ds = ray.data.from_items([{"path": p} for p in paths])
    ds = ds.map_batches(callable_class, fn_constructor_kwargs=dict(model=model, **options),
                        batch_size=batch_size, batch_format="numpy", num_cpus=cpus_per_actor,
                        compute=ray.data.ActorPoolStrategy(size=num_actors))
    try:
        for row in ds.iter_rows():
            mask = row.get("mask")
            yield json.loads(row["record"]), (mask if mask is not None and mask.size else None)
    except ray.exceptions.RayError as exc:      # an actor died, the cluster went away, ...
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise TinyMViTError(f"the Ray job failed: {lines[-1] if lines else type(exc).__name__}") \
            from exc


def classify(model, paths, *, top_k=5, address=None, num_actors=None, cpus_per_actor=1,
             batch_size=16, quiet=False, preserve_order=False, revision=None,
             allow_pickle=False, check_model=True):
    """Classify ``paths`` on Ray; yield the serial CLI's JSONL records (see tinymvit.predict).

    address: a Ray cluster (``"ray://head:10001"``, ``"auto"``); None: ``$RAY_ADDRESS`` if set,
        else a local Ray instance using this machine's cores (an already initialised Ray is used
        as it is).
    num_actors: model replicas (default: the cluster's CPUs / ``cpus_per_actor``); each runs its
        kernels on ``cpus_per_actor`` threads.  ``preserve_order``: records in input order
        (slower); otherwise in completion order.  Paths and ``model`` must be visible on every
        node (a shared file system; for the model a Hub repo id works everywhere).
    check_model: load the model once on the driver first, so that a bad path or checkpoint is a
        one-line error before Ray starts (False: when the path exists only on the workers).
    Yields ``record`` dicts.  A failed Ray job raises TinyMViTError (the Ray error chained).
    """
    options = dict(top_k=top_k, revision=revision, allow_pickle=allow_pickle)
    for record, _ in _run(Classifier, model, paths, options, address=address,
                          num_actors=num_actors, cpus_per_actor=cpus_per_actor,
                          batch_size=batch_size, quiet=quiet, preserve_order=preserve_order,
                          check_model=check_model):
        yield record


def segment(model, paths, *, size=None, return_masks=False, address=None, num_actors=None,
            cpus_per_actor=1, batch_size=4, quiet=False, preserve_order=False, revision=None,
            allow_pickle=False, check_model=True):
    """Segment ``paths`` on Ray; yield ``(record, mask)`` (mask: the (H, W) label map with
    ``return_masks``, else None).  Arguments as for :func:`classify`."""
    options = dict(size=size, return_masks=return_masks, revision=revision,
                   allow_pickle=allow_pickle)
    yield from _run(Segmenter, model, paths, options, address=address, num_actors=num_actors,
                    cpus_per_actor=cpus_per_actor, batch_size=batch_size, quiet=quiet,
                    preserve_order=preserve_order, check_model=check_model)

"""From model outputs to answers: probabilities, top-k labels, segmentation label maps.

* :func:`softmax` - ``exp(z - max z) / sum exp(z - max z)`` in float64 (returned as
  float32); subtracting the max keeps ``exp`` from overflowing.
* :func:`top_k` - the k most probable classes with their names.
* :func:`post_process_semantic_segmentation` - transformers' processor method: each
  image's (C, h, w) logits are resized bilinearly (PyTorch's ``align_corners=False``,
  via :func:`tinymvit.kernels.resize.resize_bilinear`) to the requested (H, W), then
  ``argmax`` over classes (ties -> lowest index, like torch).
* :func:`logits_to_image_labels` - the exact way back for ``segment()``: the model
  input was the whole image resized by Pillow (half-pixel centres), so the centre of
  original pixel ``v`` sits at model-input coordinate ``y_in = (v + 0.5) * h / H - 0.5``;
  with symmetric padding (MobileViT, even sizes) or TF-SAME padding on odd sizes
  (MobileNetV2, ``h = OS*k + 1``) logit pixel ``i`` is centred on input pixel ``OS*i``,
  so the logit coordinate is ``y_in / OS``.  The logits are sampled there bilinearly
  and argmaxed in one pass (:func:`tinymvit.kernels.resize.resize_bilinear_mapped_argmax`),
  so a large photo never needs a full (H, W, C) float buffer.
"""
import numpy as np

from . import limits
from .errors import InputError
from tinymvit.kernels.resize import resize_bilinear, resize_bilinear_mapped_argmax

__all__ = ["softmax", "top_k", "label_name", "post_process_semantic_segmentation",
           "logits_to_image_labels"]


def softmax(logits, axis=-1):
    """Softmax along ``axis`` computed in float64; returns float32 of the same shape."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(np.float32)


def label_name(id2label, index):
    """Class name of ``index`` in ``id2label`` (keys int or str), else ``f"LABEL_{index}"``."""
    index = int(index)
    if id2label:
        if index in id2label:
            return str(id2label[index])
        if str(index) in id2label:
            return str(id2label[str(index)])
    return f"LABEL_{index}"


def top_k(probs_row, k, id2label=None):
    """The ``k`` highest scores of a 1-D row, best first (ties: lower index first).

    Returns ``[{"label": str, "score": float, "index": int}, ...]`` (at most len(row) items).
    """
    p = np.asarray(probs_row)
    if p.ndim != 1:
        raise InputError(f"top_k expects one row of scores (1-D), got shape {p.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    order = np.argsort(-p.astype(np.float64), kind="stable")[:int(k)]   # stable: ties by index
    return [{"label": label_name(id2label, i), "score": float(p[i]), "index": int(i)}
            for i in order]


def post_process_semantic_segmentation(logits, target_sizes=None, return_scores=False):
    """transformers' ``post_process_semantic_segmentation`` on NCHW logits.

    logits: (N, C, h, w) float32, as transformers' models return them.
    target_sizes: None, or N (H, W) pairs.  With sizes, each image's logits are resized
        bilinearly (align_corners=False) to (H, W) and argmaxed; without, the raw
        (h, w) logits are argmaxed.
    Returns a list of N (H, W) int64 label maps; with ``return_scores=True`` a list of
    (labels, scores) pairs, scores being the (C, H, W) float32 resized logits.
    """
    logits = np.asarray(logits)
    if logits.ndim != 4:
        raise InputError(f"logits must be (N, C, h, w), got shape {logits.shape}")
    logits = logits.astype(np.float32, copy=False)
    if target_sizes is not None and len(target_sizes) != len(logits):
        raise InputError("Make sure that you pass in as many target sizes as the batch dimension "
                         f"of the logits: got {len(target_sizes)} sizes for {len(logits)} images")
    results = []
    for i in range(len(logits)):
        if target_sizes is None:
            scores = logits[i]                                                 # (C, h, w)
        else:
            try:
                H, W = (int(v) for v in target_sizes[i])
            except (TypeError, ValueError):
                raise InputError(f"target size {target_sizes[i]!r} must be a (height, width) "
                                 f"pair of integers") from None
            if H <= 0 or W <= 0 or H * W > limits.MAX_IMAGE_PIXELS:
                raise InputError(f"target size {target_sizes[i]!r} must be positive and at most "
                                 f"{limits.MAX_IMAGE_PIXELS} pixels (tinymvit.limits."
                                 f"MAX_IMAGE_PIXELS)")
            nhwc = np.ascontiguousarray(logits[i].transpose(1, 2, 0))[None]    # (1, h, w, C)
            out = np.empty((1, H, W, logits.shape[1]), dtype=np.float32)       # (1, H, W, C)
            resize_bilinear(nhwc, out, align_corners=False)
            scores = out[0].transpose(2, 0, 1)                                 # (C, H, W) view
        labels = np.argmax(scores, axis=0).astype(np.int64)                    # (H, W)
        results.append((labels, np.ascontiguousarray(scores)) if return_scores else labels)
    return results


def logits_to_image_labels(logits_nhwc, meta, output_stride=None):
    """Label map of the ORIGINAL image from segmentation logits of the whole-image input.

    logits_nhwc: (1, hl, wl, C) float32 logits of the input made by
        ``ImageProcessor.prepare_for_segmentation``.
    meta: the ``SegmentationMeta`` it returned (original (H, W), input (h, w)).
    output_stride: the model's output stride (default: ``meta.output_stride``).
    Returns (H, W) int64: argmax over classes of the logits sampled bilinearly at
    every original pixel centre (see the module docstring for the geometry).
    """
    x = np.ascontiguousarray(logits_nhwc, dtype=np.float32)
    if x.ndim != 4 or x.shape[0] != 1 or min(x.shape) == 0:
        raise InputError(f"logits must be (1, h, w, C) channels-last, got shape {x.shape}")
    os_ = int(output_stride if output_stride is not None else meta.output_stride)
    (H, W), (h, w) = meta.original_size, meta.input_size
    # original pixel v -> model input y_in = (v + 0.5) * h / H - 0.5 -> logits y_in / OS
    scale_y, offset_y = h / (H * os_), (0.5 * h / H - 0.5) / os_
    scale_x, offset_x = w / (W * os_), (0.5 * w / W - 0.5) / os_
    labels = np.empty((1, H, W), dtype=np.int64)                        # (1, H, W)
    resize_bilinear_mapped_argmax(x, labels, scale_y, offset_y, scale_x, offset_x)
    return labels[0]                                                    # (H, W)

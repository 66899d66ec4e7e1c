"""Many images in, one JSON-able record per image out: the record format of ``--jsonl``.

One definition of the records, shared by the command line's folder pipeline and by
:mod:`tinymvit.ray`, so both write the same lines:

* classification: ``{"path": ..., "predictions": [{"label", "score", "index"}, ...]}`` (best
  first, exactly what ``model.classify(path, top_k)`` returns);
* segmentation:   ``{"path": ..., "width": W, "height": H, "fractions": {label: fraction}}``
  (the classes present, largest share first; the CLI adds ``"mask"`` / ``"overlay"`` when it
  writes those files);
* an image that could not be read or processed: ``{"path": ..., "error": "one line"}``.

``path`` is the item exactly as given (``str(item)``).

    for record, labels, image, error in predict(model, paths, top_k=5, batch_size=16):
        ...   # labels: the (H, W) label map (segmentation), image: the decoded RGB array,
              # error: the exception of a failed image (its message is record["error"])
"""
from typing import Any, NamedTuple

from .batching import decode_ahead

__all__ = ["Prediction", "classification_record", "segmentation_record", "error_record",
           "predict_batch", "predict"]


class Prediction(NamedTuple):
    """What the pipeline gives for one input."""
    record: dict              # the JSONL record (with "error" if the image failed)
    labels: Any = None        # segmentation: the (H, W) int64 label map; else None
    image: Any = None         # the decoded (H, W, 3) uint8 RGB image (None if it could not
    #                           be decoded), e.g. for an overlay without decoding it again
    error: Exception = None   # why the image failed (a TinyMViTError or OSError), else None


def classification_record(path, predictions):
    """``{"path", "predictions"}`` from ``model.classify``'s list of dicts."""
    return {"path": str(path), "predictions": predictions}


def segmentation_record(path, labels, id2label):
    """``{"path", "width", "height", "fractions"}`` of an (H, W) label map."""
    from .visualize import class_fractions      # drawing code: imported by segmentation only
    fractions = {c["label"]: c["fraction"] for c in class_fractions(labels, id2label)}
    return {"path": str(path), "width": int(labels.shape[1]), "height": int(labels.shape[0]),
            "fractions": fractions}


def error_record(path, error):
    """``{"path", "error"}``: the error's one-line message."""
    text = " ".join(str(error).split()) or type(error).__name__
    return {"path": str(path), "error": text}


def predict_batch(model, batch, *, top_k=5, size=None):
    """Records of a list of :class:`tinymvit.batching.Decoded`, in order.

    Returns a list of :class:`Prediction` (record, labels, image, error).  The decoded images go
    through
    ``model.iter_classify`` / ``model.iter_segment`` as one batch (an image that fails there
    gets its own error record, naming its path; the others are unaffected).
    """
    good = [d for d in batch if d.error is None]
    images = [d.image for d in good]
    if model.task == "segmentation":
        outputs = model.iter_segment(images, size=size, batch_size=max(1, len(good)))
    else:
        outputs = model.iter_classify(images, top_k=top_k, batch_size=max(1, len(good)))
    outputs = (result for _, result in outputs)          # one per good image, in order
    results, position = [], -1                           # position: index in ``images``
    for d in batch:
        position += d.error is None
        result = d.error if d.error is not None else next(outputs)
        if isinstance(result, Exception):
            if d.error is None:              # failed in the model stage, named as an array
                result = _named_by_path(result, position, d.image, d.item)
            results.append(Prediction(error_record(d.item, result), None, d.image, result))
        elif model.task == "segmentation":
            results.append(Prediction(segmentation_record(d.item, result, model.id2label),
                                      result, d.image))
        else:
            results.append(Prediction(classification_record(d.item, result), None, d.image))
    return results


def _named_by_path(error, position, image, path):
    """``model.iter_*`` names a failing decoded image "image 3 (array of shape ...)": name it by
    its path instead, as an error of the same type."""
    from .api import _image_name
    prefix = f"{_image_name(position, image)}: "
    text = str(error)
    text = text[len(prefix):] if text.startswith(prefix) else text
    return type(error)(text if text.startswith(f"{path}: ") else f"{path}: {text}")


def predict(model, items, *, top_k=5, size=None, batch_size=16, workers=None, ahead=2):
    """Yield a :class:`Prediction` (record, labels, image, error) for every item (path), in
    input order, decoding ahead on ``workers`` threads in batches of ``batch_size`` (at most
    ``batch_size * (ahead + 1)`` decoded images in memory; see
    :func:`tinymvit.batching.decode_ahead`).  Unreadable images yield an error record; the run
    goes on."""
    for batch in decode_ahead(items, batch_size=batch_size, workers=workers, ahead=ahead):
        yield from predict_batch(model, batch, top_k=top_k, size=size)

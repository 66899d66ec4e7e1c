"""Accuracy of a checkpoint on the user's labelled images: the engine of ``tinymvit eval``.

    from tinymvit.evaluate import evaluate
    result = evaluate("path/or/org-name", "data/val")      # a loaded Model works too
    result["top1"], result["top5"]          # classification, fractions in 0..1
    result["miou"], result["per_class"]     # segmentation

What ``data`` may be (see :func:`find_dataset`):

* an **ImageFolder** tree: one subfolder per class, its images anywhere below it.  A folder is
  named by the checkpoint's label (``"tabby, tabby cat"``; also any one of a label's
  comma-separated synonyms when that is unambiguous, case and ``_``/space insensitive), by the
  checkpoint's class index (``"281"``), or by an ImageNet WordNet id (``"n02123045"``);
* a **CSV** file of ``path,label`` rows (header optional; label as above; relative paths are
  relative to the CSV's folder);
* a **PASCAL VOC**-style folder: ``JPEGImages/`` + ``SegmentationClass/``, matched by file stem
  (images without a mask are left out; ``split="val"`` keeps the stems listed in
  ``ImageSets/Segmentation/val.txt``).  Masks are class-index images (L / I;16 PNG), VOC palette
  PNGs (mode P: the palette indices are the classes) or RGB images in the VOC colours; 255 is
  "ignore".

**WordNet ids.**  The standard ImageNet-1k order is the sorted list of its 1000 wnids.
tinymvit does not ship that list (and nothing in its dependencies does), so a wnid is mapped
through one of: a synset file passed as ``synsets=`` or found in the data folder or its parent
(``LOC_synset_mapping.txt`` or ``synset_words.txt`` as in the ImageNet downloads: lines of
``n01440764 tench, Tinca tinca``; or a plain list of 1000 wnids); or, when the data folder has
all 1000 wnid subfolders, their own sorted order.  A wnid whose synset text is one of the
checkpoint's labels gets that label's index; otherwise its position in the list (plus one for
MobileNetV2's 1001-class heads, whose index 0 is "background").  A subset of wnid folders with no
synset file is an error that says so.

**Metrics.**  Classification: top-1 and top-5 accuracy (argmax / top 5 over all the model's
logits, background included, as transformers' model + processor give them), images/s and the
classes with the lowest top-1.  Segmentation: the standard mIoU: one confusion matrix summed over
every pixel of every image (ignore pixels left out), IoU = TP / (TP + FP + FN) for each class that
occurs in the labels or the predictions, their mean; pixel accuracy = correct / counted pixels;
``mode="whole"`` labels each image with ``model.segment()`` (the whole image, at its own size),
``mode="processor"`` as transformers does (processor resize + center crop, model,
``post_process_semantic_segmentation`` to the mask's size).  Images are decoded on a few threads
ahead of the model (:func:`tinymvit.batching.decode_ahead`); an unreadable image or mask is
listed under ``errors`` and left out.
"""
import csv
from collections import Counter
import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from .batching import IMAGE_SUFFIXES, decode_ahead, find_images
from .errors import InputError, TinyMViTError
from .images import ImageError, load_image
from .postprocess import label_name
from .predict import error_record
from .visualize import palette

__all__ = ["evaluate", "find_dataset", "ClassificationData", "SegmentationData",
           "LabelResolver", "read_synsets", "read_mask", "confusion_matrix",
           "segmentation_scores", "class_keys", "MODES"]

MODES = ("whole", "processor")
WNID = re.compile(r"^n\d{8}$")
SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "imagenet_synsets.txt")
IGNORE_INDEX = 255


# -- datasets ------------------------------------------------------------------------------------
@dataclass
class ClassificationData:
    """Labelled images: ``samples`` = [(image path, class index of the checkpoint)]."""
    kind: str                 # "imagefolder" or "csv"
    source: Path
    samples: list
    names: dict               # class index -> the name the dataset gave it (folder or CSV label)


@dataclass
class SegmentationData:
    """``pairs`` = [(image path, mask path)] of a VOC-style folder."""
    source: Path
    pairs: list
    unmatched_masks: list     # masks with no image of the same stem


def _norm(text):
    return " ".join(str(text).replace("_", " ").casefold().split())


class LabelResolver:
    """Dataset class name -> the checkpoint's class index (see the module docstring)."""

    def __init__(self, id2label, num_labels, wnids=None, wnid_text=None):
        self.num_labels = num_labels
        self.labels = [label_name(id2label, i) for i in range(num_labels)]
        self.exact, self.normal, self.synonym = {}, {}, {}
        for i, label in enumerate(self.labels):
            self.exact.setdefault(label, []).append(i)
            self.normal.setdefault(_norm(label), []).append(i)
            for word in {_norm(w) for w in label.split(",") if w.strip()}:
                self.synonym.setdefault(word, []).append(i)
        self.wnids = list(wnids) if wnids else None
        self.wnid_text = wnid_text or {}

    def _by_label(self, name):
        """(index or None, ambiguity note)."""
        for table, key in ((self.exact, name), (self.normal, _norm(name)),
                           (self.synonym, _norm(name))):
            hits = table.get(key, [])
            if len(hits) == 1:
                return hits[0], ""
            if len(hits) > 1:
                return None, (f"{name!r} names several classes of the checkpoint "
                              f"({', '.join(map(str, hits[:5]))}); name the folder by index")
        return None, ""

    def __call__(self, name):
        name = str(name).strip()
        index, ambiguous = self._by_label(name)
        if index is not None:
            return index
        if re.fullmatch(r"\d+", name) and int(name) < self.num_labels:
            return int(name)
        if WNID.match(name):
            return self._wnid(name)
        raise InputError(ambiguous or (
            f"class {name!r} is not a label of this checkpoint (e.g. {self.labels[-1]!r}), a "
            f"class index 0..{self.num_labels - 1}, or an ImageNet WordNet id (n01440764)"))

    def _wnid(self, wnid):
        if self.wnids is None:
            raise InputError(
                f"class {wnid!r} looks like an ImageNet WordNet id, but tinymvit does not ship the "
                f"list of the 1000 ImageNet-1k wnids: put LOC_synset_mapping.txt or "
                f"synset_words.txt (from the ImageNet download) in the data folder, or pass "
                f"synsets=FILE (--synsets FILE)")
        if wnid in self.wnid_text:                       # the synset's words are a label?
            index, _ = self._by_label(self.wnid_text[wnid])
            if index is not None:
                return index
        if wnid not in self.wnids:
            raise InputError(f"WordNet id {wnid!r} is not in the synset list "
                             f"({len(self.wnids)} wnids)")
        n = len(self.wnids)
        if self.num_labels == n + 1 and _norm(self.labels[0]) == "background":
            return self.wnids.index(wnid) + 1            # MobileNetV2's 1001 classes
        if self.num_labels == n:
            return self.wnids.index(wnid)
        raise InputError(f"WordNet ids index a {n}-class list, but this checkpoint has "
                         f"{self.num_labels} classes (expected {n}, or {n + 1} with background "
                         f"at 0)")


def read_synsets(path):
    """(wnids in file order, {wnid: synset words}) of a synset file (see the module docstring)."""
    wnids, text = [], {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the synset file ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if not WNID.match(wnid):
            raise InputError(f"{path}:{number}: expected a WordNet id such as n01440764 at the "
                             f"start of the line, got {line.strip()[:40]!r}")
        wnids.append(wnid)
        if words.strip():
            text[wnid] = words.strip()
    if len(set(wnids)) != len(wnids) or not wnids:
        raise InputError(f"{path}: expected a list of distinct WordNet ids, one per line")
    return wnids, text


def _resolver(model, folder, class_names, synsets):
    wnids = text = None
    if any(WNID.match(n) for n in class_names):
        found = Path(synsets) if synsets is not None else next(
            (d / f for d in (folder, folder.parent) for f in SYNSET_FILES if (d / f).is_file()),
            None)
        if found is not None:
            wnids, text = read_synsets(found)
        elif len([n for n in class_names if WNID.match(n)]) == 1000:
            wnids = sorted(n for n in class_names if WNID.match(n))      # the full ImageNet-1k
    return LabelResolver(model.id2label, model.config.num_labels, wnids, text)


def find_dataset(data, model, synsets=None, split=None):
    """Discover the dataset at ``data`` for ``model``: ClassificationData or SegmentationData.

    Every class name is resolved up front, so a misnamed folder or label fails before any image
    is run (InputError naming it)."""
    path = Path(data).expanduser()
    if path.is_file():
        return _read_csv(path, model, synsets)
    if not path.is_dir():
        raise InputError(f"{path}: no such dataset (expected an ImageFolder tree, a CSV of "
                         f"path,label, or a VOC folder with JPEGImages/ and SegmentationClass/)")
    if (path / "JPEGImages").is_dir() and (path / "SegmentationClass").is_dir():
        return _voc(path, split)
    return _image_folder(path, model, synsets)


def _image_folder(root, model, synsets):
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InputError(f"{root}: no class subfolders (expected an ImageFolder tree: "
                         f"DATA/<class>/<image>, a CSV of path,label, or a VOC folder)")
    resolve = _resolver(model, root, [d.name for d in classes], synsets)
    samples, names, bad = [], {}, []
    for d in classes:
        try:
            index = resolve(d.name)
        except InputError as exc:
            bad.append(str(exc))
            continue
        names[index] = d.name
        samples.extend((p, index) for p in find_images(d))
    if bad:
        raise InputError(f"{root}: {len(bad)} class folder(s) not understood; first: {bad[0]}")
    if not samples:
        raise InputError(f"{root}: the class folders hold no images (suffixes "
                         f"{', '.join(IMAGE_SUFFIXES)})")
    return ClassificationData("imagefolder", root, samples, names)


def _read_csv(path, model, synsets):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(n, r) for n, r in enumerate(csv.reader(f), 1) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the CSV ({exc})") from None
    short = [n for n, r in rows if len(r) < 2]
    if short:
        raise InputError(f"{path}:{short[0]}: expected 'path,label' rows")
    resolve = _resolver(model, path.parent, [r[1].strip() for _, r in rows], synsets)
    samples, names = [], {}
    for i, (number, row) in enumerate(rows):
        image, label = row[0].strip(), row[1].strip()
        try:
            index = resolve(label)
        except InputError as exc:
            if i == 0 and not (path.parent / image).is_file():
                continue                                   # a header row: path,label
            raise InputError(f"{path}:{number}: {exc}") from None
        names.setdefault(index, label)
        samples.append((path.parent / Path(image).expanduser(), index))
    if not samples:
        raise InputError(f"{path}: no 'path,label' rows")
    return ClassificationData("csv", path, samples, names)


def _voc(root, split):
    def by_stem(folder):
        return {p.stem: p for p in sorted(folder.iterdir())
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}

    images, masks = by_stem(root / "JPEGImages"), by_stem(root / "SegmentationClass")
    stems = sorted(masks)
    if split is not None:
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise InputError(f"{root}: split {split!r} needs {listing}")
        wanted = [s.strip() for s in listing.read_text(encoding="utf-8").split() if s.strip()]
        stems = [s for s in wanted if s in masks]
    pairs = [(images[s], masks[s]) for s in stems if s in images]
    if not pairs:
        raise InputError(f"{root}: no image in JPEGImages/ has a mask of the same name in "
                         f"SegmentationClass/")
    return SegmentationData(root, pairs, [masks[s] for s in stems if s not in images])


# -- masks and metrics ---------------------------------------------------------------------------
_VOC_COLOURS = {tuple(c): i for i, c in enumerate(palette(256))}     # (224, 224, 192) -> 255


def read_mask(path):
    """A segmentation mask as an (H, W) int64 class map (255 = ignore); ImageError if unusable."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L"):
                return np.asarray(im).astype(np.int64)      # P: the palette indices
            if mode not in ("RGB", "RGBA"):
                raise ImageError(f"{path}: mask mode {mode} is not supported (expected a "
                                 f"class-index L/I;16 image, a palette P image or VOC colours)")
            rgb = np.asarray(im.convert("RGB"))
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: unreadable mask ({type(exc).__name__}: {exc})") from None
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    found, inverse = np.unique(codes, return_inverse=True)
    lut = np.array([_VOC_COLOURS.get(((c >> 16) & 255, (c >> 8) & 255, c & 255), -1)
                    for c in found.tolist()], dtype=np.int64)
    if (lut < 0).any():
        c = int(found[np.argmax(lut < 0)])
        raise ImageError(f"{path}: RGB mask colour {((c >> 16) & 255, (c >> 8) & 255, c & 255)} "
                         f"is not a PASCAL VOC class colour (save masks as class-index or "
                         f"palette PNGs)")
    return lut[inverse.reshape(codes.shape)]


def class_keys(id2label, indices):
    """Per-class result keys: each class's label, with `` [i]`` appended where two classes of
    the checkpoint share a label (ImageNet has two "crane"s)."""
    counts = Counter(str(v) for v in (id2label or {}).values())
    names = {int(i): label_name(id2label, i) for i in indices}
    return {i: f"{name} [{i}]" if counts[name] > 1 else name for i, name in names.items()}


def confusion_matrix(truth, pred, num_classes, ignore_index=IGNORE_INDEX):
    """(num_classes, num_classes) int64 counts, rows = truth, columns = prediction; pixels whose
    truth is ``ignore_index`` are left out; any other truth outside 0..num_classes-1 is an
    InputError."""
    truth, pred = np.asarray(truth).ravel(), np.asarray(pred).ravel()
    keep = truth != ignore_index
    truth, pred = truth[keep], pred[keep]
    if truth.size and (truth.min() < 0 or truth.max() >= num_classes):
        bad = int(truth[(truth < 0) | (truth >= num_classes)][0])
        raise InputError(f"mask holds class {bad}, but the checkpoint has {num_classes} classes "
                         f"(0..{num_classes - 1}; {ignore_index} = ignore)")
    return np.bincount(truth * num_classes + pred, minlength=num_classes ** 2) \
        .reshape(num_classes, num_classes)


def segmentation_scores(confusion, id2label=None):
    """mIoU, pixel accuracy, mean class accuracy and per-class IoU from a summed confusion matrix.

    IoU is computed for the classes that occur in the labels or the predictions (row + column
    sum > 0); the mean is over those.  Returns a dict of floats (per_class: {label: IoU})."""
    conf = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(conf)
    truth, predicted = conf.sum(1), conf.sum(0)
    union = truth + predicted - tp
    present = np.flatnonzero(union > 0)
    iou = tp[present] / union[present]
    in_truth = np.flatnonzero(truth > 0)
    total = conf.sum()
    return {"miou": float(iou.mean()) if present.size else 0.0,
            "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
            "mean_accuracy": float((tp[in_truth] / truth[in_truth]).mean()) if in_truth.size
            else 0.0,
            "per_class": {key: float(v) for key, v in zip(class_keys(id2label, present).values(),
                                                          iou)}}


# -- the evaluation loops ------------------------------------------------------------------------
def evaluate(model, data, *, mode="whole", batch_size=16, workers=None, synsets=None,
             split=None, worst=10, progress=None, ignore_index=IGNORE_INDEX):
    """Evaluate ``model`` (a Model, or anything ``tinymvit.load`` takes) on ``data`` (a path, or
    what :func:`find_dataset` returned for it).

    Returns the result dict (``task``, ``images``, ``top1``/``top5`` or ``miou``/
    ``pixel_accuracy``/``per_class``, ``images_per_second``, ``errors``, ...).
    mode: "whole" or "processor" (segmentation only, see the module docstring).
    progress: called with the number of images finished after every batch (e.g. tqdm's update).
    """
    from .api import Model, load
    if not isinstance(model, Model):
        model = load(model)
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    dataset = data if isinstance(data, (ClassificationData, SegmentationData)) else \
        find_dataset(data, model, synsets=synsets, split=split)
    if isinstance(dataset, SegmentationData):
        if model.task != "segmentation":
            raise InputError(f"{dataset.source} is a segmentation dataset (VOC layout) but the "
                             f"checkpoint is a {model.task} model")
        return _evaluate_segmentation(model, dataset, mode, batch_size, workers, progress,
                                      ignore_index)
    if model.task != "classification":
        raise InputError(f"{dataset.source} is a classification dataset ({dataset.kind}) but the "
                         f"checkpoint is a {model.task} model")
    return _evaluate_classification(model, dataset, batch_size, workers, progress, worst)


def _evaluate_classification(model, dataset, batch_size, workers, progress, worst):
    k = min(5, model.config.num_labels)
    per_class = {}                                   # index -> [images, top1 hits, top5 hits]
    errors = []
    start = time.perf_counter()
    for batch in decode_ahead(dataset.samples, lambda s: load_image(s[0]),
                              batch_size=batch_size, workers=workers):
        good = [d for d in batch if d.error is None]
        errors.extend(error_record(d.item[0], d.error) for d in batch if d.error is not None)
        outputs = model.iter_classify([d.image for d in good], top_k=k,
                                      batch_size=max(1, len(good)))
        for d, (_, predictions) in zip(good, outputs):
            path, target = d.item
            if isinstance(predictions, Exception):
                errors.append(error_record(path, predictions))
                continue
            ranked = [p["index"] for p in predictions]
            counts = per_class.setdefault(target, [0, 0, 0])
            counts[0] += 1
            counts[1] += ranked[0] == target
            counts[2] += target in ranked
        if progress is not None:
            progress(len(batch))
    seconds = time.perf_counter() - start
    n = sum(c[0] for c in per_class.values())
    keys = class_keys(model.id2label, per_class)
    classes = {i: {"label": keys[i], "index": i,
                   "name": dataset.names.get(i), "images": c[0], "top1": c[1] / c[0],
                   "top5": c[2] / c[0]} for i, c in sorted(per_class.items())}
    lowest = sorted(classes.values(), key=lambda c: (c["top1"], -c["images"], c["index"]))
    return {"task": "classification", "images": n,
            "top1": sum(c[1] for c in per_class.values()) / n if n else 0.0,
            "top5": sum(c[2] for c in per_class.values()) / n if n else 0.0,
            "top_k": k, "classes": len(classes), "failed": len(errors),
            "seconds": seconds, "images_per_second": n / seconds if seconds > 0 else 0.0,
            "worst_classes": lowest[:worst],
            "per_class": {c["label"]: {"images": c["images"], "top1": c["top1"],
                                       "top5": c["top5"]} for c in classes.values()},
            "errors": errors, "dataset": {"kind": dataset.kind, "path": str(dataset.source)}}


def _image_and_mask(pair, num_classes, ignore_index):
    """Decode an (image, mask) pair on a worker thread; a mismatch is this pair's ImageError."""
    image_path, mask_path = pair
    rgb, mask = load_image(image_path), read_mask(mask_path)
    if rgb.shape[:2] != mask.shape:
        raise ImageError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but the image "
                         f"{image_path} is {rgb.shape[1]}x{rgb.shape[0]}")
    bad = (mask != ignore_index) & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        raise ImageError(f"{mask_path}: mask holds class {int(mask[bad][0])}, but the checkpoint "
                         f"has {num_classes} classes (0..{num_classes - 1}; {ignore_index} = "
                         f"ignore)")
    return rgb, mask


def _processor_labels(model, rgb, mask_shape):
    """transformers' path: processor (resize + crop), model, bilinear resize to the mask, argmax;
    the TinyMViTError instead if it fails."""
    try:
        logits = model(model.preprocess(rgb)).logits                     # (1, L, h, w)
        return model.post_process_semantic_segmentation(logits, target_sizes=[mask_shape])[0]
    except TinyMViTError as exc:
        return exc


def _evaluate_segmentation(model, dataset, mode, batch_size, workers, progress, ignore_index):
    num_classes = model.config.num_labels
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    errors, n = [], 0
    decode = partial(_image_and_mask, num_classes=num_classes, ignore_index=ignore_index)
    start = time.perf_counter()
    for batch in decode_ahead(dataset.pairs, decode, batch_size=batch_size, workers=workers):
        good = [d for d in batch if d.error is None]
        errors.extend(error_record(d.item[0], d.error) for d in batch if d.error is not None)
        if mode == "whole":                                  # (image, labels or error) pairs
            results = [r for _, r in model.iter_segment([d.image[0] for d in good],
                                                        batch_size=max(1, len(good)))]
        else:
            results = [_processor_labels(model, d.image[0], d.image[1].shape) for d in good]
        for d, labels in zip(good, results):
            if isinstance(labels, Exception):
                errors.append(error_record(d.item[0], labels))
                continue
            confusion += confusion_matrix(d.image[1], labels, num_classes, ignore_index)
            n += 1
        if progress is not None:
            progress(len(batch))
    seconds = time.perf_counter() - start
    return {"task": "segmentation", "images": n, **segmentation_scores(confusion, model.id2label),
            "mode": mode, "ignore_index": ignore_index, "failed": len(errors),
            "seconds": seconds, "images_per_second": n / seconds if seconds > 0 else 0.0,
            "errors": errors + [error_record(m, "no image of the same name in JPEGImages/")
                                for m in dataset.unmatched_masks],
            "dataset": {"kind": "voc", "path": str(dataset.source)}}

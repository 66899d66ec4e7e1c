"""Decoding images on a few threads ahead of the model, in batches, with flat memory.

    for batch in decode_ahead(paths, batch_size=16, workers=2):
        good = [d for d in batch if d.error is None]
        ...model on [d.image for d in good]...; report [d for d in batch if d.error]

Pillow releases the GIL while it decodes and resizes, so a small thread pool decodes the next
batches while the model (Numba, also GIL-free) runs on the current one.  At most
``batch_size * (ahead + 1)`` items are in flight, however long ``items`` is (a generator is
read lazily), so memory stays flat.  Batches come out in input order.  An item that cannot be
decoded does not stop the run: it comes out with its error (a :class:`tinymvit.TinyMViTError`
such as ``ImageError``, or an ``OSError``) instead of an image.
"""
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

from .errors import InputError, TinyMViTError
from .images import load_image

__all__ = ["Decoded", "decode_ahead", "decode_one", "default_workers", "find_images",
           "IMAGE_SUFFIXES"]

#: File suffixes taken as images when a folder is searched (compared in lower case), as
#: torchvision's ImageFolder (plus GIF).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff",
                  ".webp")


class Decoded(NamedTuple):
    """One input after decoding: exactly one of ``image`` and ``error`` is None."""
    item: Any                 # the input as given (a path, usually)
    image: Any                # what ``decode(item)`` returned, e.g. an (H, W, 3) uint8 array
    error: Exception = None   # why it could not be decoded


def find_images(folder, recursive=True):
    """Image files (by suffix) in ``folder`` (and its subfolders, following links, when
    ``recursive``), sorted; hidden files and folders (``.name``) are skipped."""
    folder = Path(folder)
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found.extend(Path(root) / f for f in files
                     if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES))
    return sorted(found)


def default_workers():
    """Decoding threads: 2, or 4 where the process may use 8+ cores (decoding is cheap next to
    a model)."""
    from .kernels.workers import default_threads
    return 4 if default_threads() >= 8 else 2


_ITEM = object()


def decode_one(decode, item, value=_ITEM):
    """``Decoded(item, decode(value))`` (``value`` defaults to ``item``); a TinyMViTError or
    OSError is captured in ``Decoded.error``, anything else propagates."""
    try:
        return Decoded(item, decode(item if value is _ITEM else value))
    except (TinyMViTError, OSError) as exc:
        return Decoded(item, None, exc)


def _positive(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what} must be a positive int, got {value!r}")
    return value


def decode_ahead(items, decode=load_image, *, batch_size=16, workers=None, ahead=2):
    """Yield lists of :class:`Decoded` of up to ``batch_size`` items, in input order.

    items:      any iterable (read lazily), e.g. paths.
    decode:     item -> decoded value, run on the worker threads (default: ``load_image``, an
                RGB uint8 array; e.g. ``lambda p: model.preprocess(p)[0]`` to resize there too).
                TinyMViTError and OSError become ``Decoded.error``; other exceptions propagate.
    workers:    decoding threads (default :func:`default_workers`); ``ahead``: how many batches
                are decoded ahead of the one being consumed.
    Stopping early (``break``, an exception) cancels the pending work and joins the threads.
    """
    _positive(batch_size, "batch_size")
    _positive(ahead, "ahead")
    workers = _positive(workers, "workers") if workers is not None else default_workers()
    iterator = iter(items)
    pending = deque()                        # futures, in input order
    limit = batch_size * (ahead + 1)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tinymvit-decode")
    try:
        while True:
            for item in islice(iterator, max(0, limit - len(pending))):
                pending.append(pool.submit(decode_one, decode, item))
            if not pending:
                return
            batch = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

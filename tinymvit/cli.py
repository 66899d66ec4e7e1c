"""The ``tinymvit`` command line.

    tinymvit classify INPUT... --model M [--top-k K] [--json | --jsonl FILE [--resume]]
    tinymvit segment INPUT... --model M [--out MASK.png] [--overlay OVERLAY.png]
                              [--out-dir DIR] [--overlay-dir DIR] [--size N|native] [--alpha A]
                              [--json | --jsonl FILE [--resume]]
        INPUT: image files, folders (--recursive: with subfolders), glob patterns ('photos/*.jpg',
        'photos/**/*.png'), '-' (paths on stdin, one per line).  Both also take
        [--batch-size N] [--workers N] [--threads N] [--strict] [--quiet] [--ray [ADDRESS]]
    tinymvit eval DATA --model M [--json] [--mode whole|processor] [--batch-size N]
                       [--synsets FILE] [--split NAME] [--worst N]
    tinymvit bench --model M [--batch-size B] [--threads T] [--size N] [--seconds S] [--json]
    tinymvit convert SRC DST
    tinymvit info M
    tinymvit compile [--model M]
    tinymvit summary M [--size N] [--time] [--threads N]
    tinymvit attention IMAGE --model M --out ATTN.png
        M: a checkpoint folder, a tinymvit .safetensors file, or a Hugging Face Hub repo id
        org/name[@revision] (pip install 'tinymvit[hub]'); --allow-pickle lets a Hub repo's
        pytorch_model.bin be fetched.

Every expected failure is ONE line on stderr, ``tinymvit <command>: error: ...``, and exit
status 1: bad arguments, unreadable checkpoints or images, outputs that would overwrite an
input, full disks, out of memory.  With several images, each image gets its own result
or its own error (``--strict``: the run stops at the first) and the exit status is 1 if any
failed; 130 after Ctrl-C, 143 after SIGTERM (a ``--jsonl`` run then goes on with ``--resume``).
An unexpected internal error prints one line too, and its traceback with ``--debug`` (or
``TINYMVIT_DEBUG=1``).
"""
import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
import warnings
from collections import deque
from pathlib import Path

from . import limits
from .errors import InputError, OutputError, TinyMViTError
from .outputs import check_output_paths, printable

#: overlay file name extensions -> Pillow format (formats that take any RGB image)
OVERLAY_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
                   ".bmp": "BMP", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF"}
#: --batch-size defaults; at most 2x as many decoded images are held at once
BATCH_SIZES = {"classify": 16, "segment": 4, "eval": 16, "bench": 1}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 1, like every other error."""

    def error(self, message):
        self.exit(1, f"{self.prog}: error: {printable(message)} (see '{self.prog} --help')\n")


# -- argument types: checked before anything is loaded ------------------------------------
def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1e6:                          # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _alpha(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:                      # NaN fails too
        raise argparse.ArgumentTypeError(f"expected an opacity from 0 to 1, got {text!r}")
    return value


def _side(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= limits.MAX_SIDE:
        raise argparse.ArgumentTypeError(
            f"expected an integer from 1 to {limits.MAX_SIDE}, got {text!r}")
    return value


def _size(text):
    if text == "native":
        return text
    try:
        return _side(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'native' or an integer from 1 to {limits.MAX_SIDE}, got {text!r}") from None


def _template(text):
    if not text or Path(text).name in ("", ".", ".."):
        raise argparse.ArgumentTypeError(f"expected a file name, got {text!r}")
    return text


def _ray_address(text):
    if text in ("", "auto", "local") or "://" in text or re.fullmatch(r"[\w.-]+:\d+", text):
        return text
    raise argparse.ArgumentTypeError(
        f"expected a Ray address (auto, ray://HEAD:10001, HEAD:6379), got {text!r}; write "
        f"--ray after the images, or --ray=ADDRESS")


def _model_option(parser, what="checkpoint"):
    parser.add_argument("--model", required=True, metavar="PATH",
                        help=f"{what}: folder, tinymvit .safetensors file, or Hugging Face Hub "
                             f"repo id org/name[@revision]")
    _allow_pickle(parser)


def _allow_pickle(parser):
    parser.add_argument("--allow-pickle", action="store_true",
                        help="let a Hub repo's pytorch_model.bin (a pickle) be fetched; read with "
                             "torch.load(weights_only=True), needs PyTorch")


def _threads(parser, extra=""):
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help=f"kernel threads (default: every core){extra}")


def _batch_size(parser, command, what="images per forward pass"):
    default = BATCH_SIZES[command]
    parser.add_argument("--batch-size", type=_positive_int, default=default, metavar="N",
                        help=f"{what} (default {default})")


def _workers(parser):
    parser.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                        help="threads decoding images ahead of the model (default 2, 4 on 8+ "
                             "cores)")


def _quiet(parser):
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar or summary (errors are still printed)")


def _debug(parser, default=False):
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the traceback of an unexpected error (or TINYMVIT_DEBUG=1)")


INPUT_HELP = ("image files, folders (their images; --recursive: and their subfolders'), glob "
              "patterns such as 'photos/**/*.jpg', or '-' for paths on stdin, one per line")


def _batch_options(parser, command):
    """Options shared by classify and segment: inputs, output records, the run."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=INPUT_HELP)
    parser.add_argument("-r", "--recursive", action="store_true",
                        help="take the images of the folders' subfolders too")
    records = parser.add_mutually_exclusive_group()
    records.add_argument("--json", action="store_true",
                         help="print one JSON array of every image's result at the end")
    records.add_argument("--jsonl", metavar="FILE",
                         help="write one JSON object per image to FILE as each is done ('-': "
                              "stdout); see --resume")
    parser.add_argument("--resume", action="store_true",
                        help="skip the images already recorded in the --jsonl FILE and add the "
                             "others (a half-written last line is redone)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first image that fails (it is not recorded)")
    _quiet(parser)
    _batch_size(parser, command, "images per forward pass; at most twice as many decoded "
                                 "images are in memory")
    _workers(parser)
    _threads(parser, "; with --ray: per actor (default 1)")
    parser.add_argument("--ray", nargs="?", const="", default=None, type=_ray_address,
                        metavar="ADDRESS",
                        help="run on Ray (pip install 'tinymvit[ray]'): a local Ray instance, "
                             "or the cluster at ADDRESS / $RAY_ADDRESS; images and model must "
                             "be readable on every node")
    _debug(parser, argparse.SUPPRESS)


def _parser():
    p = _Parser(
        prog="tinymvit",
        description="CPU inference for MobileViTV2, MobileViT and MobileNetV2 "
                    "(classification and DeepLabV3 segmentation), no PyTorch needed.")
    _debug(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("classify", help="top classes of images, folders, lists",
                       description="Print the top-K classes of each image, as 'label (score%)', "
                                   "or write them as JSON / JSONL.")
    _model_option(c)
    c.add_argument("--top-k", type=_positive_int, default=5, metavar="K",
                   help="how many classes (default 5)")
    _batch_options(c, "classify")

    s = sub.add_parser("segment", help="label every pixel of images; write mask/overlay PNGs",
                       description="Segment each image (whole image, original size). Prints the "
                                   "fraction of pixels per class; writes a palette PNG label map "
                                   "and/or an overlay. With several images, '{stem}' in --out/"
                                   "--overlay is replaced by each image's name (it is appended "
                                   "otherwise); --out-dir/--overlay-dir mirror the input tree. "
                                   "No output may overwrite an input or another output.")
    _model_option(s, "segmentation checkpoint")
    s.add_argument("--out", type=_template, metavar="MASK.png",
                   help="write the label map as a palette PNG")
    s.add_argument("--overlay", type=_template, metavar="OVERLAY.png",
                   help="write the image with the classes blended over it and a legend "
                        f"({', '.join(sorted(OVERLAY_FORMATS))})")
    s.add_argument("--out-dir", metavar="DIR",
                   help="write each label map to DIR/<path below its input folder>.png")
    s.add_argument("--overlay-dir", metavar="DIR",
                   help="write each overlay to DIR/<path below its input folder> (same format "
                        "as the image when Pillow can write it, else .png)")
    s.add_argument("--alpha", type=_alpha, default=0.5,
                   help="overlay opacity, 0 to 1 (default 0.5)")
    s.add_argument("--size", type=_size, default=None, metavar="N|native",
                   help="longer side the image is resized to before the model runs "
                        "(default: the checkpoint's crop size; 'native' keeps the original)")
    _batch_options(s, "segment")

    e = sub.add_parser("eval", help="accuracy / mIoU of a checkpoint on labelled images",
                       description="Evaluate a checkpoint on an ImageFolder tree (DATA/<class>/"
                                   "<image>), a CSV of path,label, or a PASCAL-VOC-style folder "
                                   "(JPEGImages/ + SegmentationClass/).")
    e.add_argument("data", metavar="DATA")
    _model_option(e)
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--mode", choices=("whole", "processor"), default="whole",
                   help="segmentation: 'whole' labels the whole image as segment() does "
                        "(default); 'processor' as transformers' processor + "
                        "post_process_semantic_segmentation")
    e.add_argument("--synsets", metavar="FILE",
                   help="ImageNet synset file (LOC_synset_mapping.txt, synset_words.txt) for "
                        "WordNet-id class folders")
    e.add_argument("--split", metavar="NAME",
                   help="VOC: only the images of ImageSets/Segmentation/NAME.txt")
    e.add_argument("--worst", type=_positive_int, default=10, metavar="N",
                   help="how many of the worst classes to list (default 10)")
    _batch_size(e, "eval")
    _workers(e)
    _threads(e)
    _quiet(e)
    _debug(e, argparse.SUPPRESS)

    b = sub.add_parser("bench", help="latency, throughput and memory of a checkpoint here",
                       description="Time the forward pass of a checkpoint on this machine: first "
                                   "call, then back-to-back calls for a few seconds (median); "
                                   "peak memory of the process.")
    _model_option(b)
    _batch_size(b, "bench", "images per call")
    _threads(b)
    b.add_argument("--size", type=_side, default=None, metavar="N",
                   help="input side (default: the checkpoint's crop size; segmentation: longer "
                        "side, rounded as segment() does)")
    b.add_argument("--seconds", type=_positive_float, default=3.0, metavar="S",
                   help="how long to time back-to-back calls (default 3)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    _debug(b, argparse.SUPPRESS)

    v = sub.add_parser("convert", help="convert a checkpoint into one tinymvit .safetensors file",
                       description="Convert a transformers checkpoint (folder with "
                                   "model.safetensors or pytorch_model.bin + config.json "
                                   "[+ preprocessor_config.json], or a Hub repo id) into a single "
                                   ".safetensors file with the configs embedded.")
    v.add_argument("src", metavar="SRC")
    v.add_argument("dst", metavar="DST")
    _allow_pickle(v)
    _debug(v, argparse.SUPPRESS)

    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("model", metavar="PATH")
    _allow_pickle(i)
    _debug(i, argparse.SUPPRESS)

    k = sub.add_parser("compile", help="compile the kernels for this CPU ahead of time",
                       description="Compile tinymvit's kernels for this CPU into the kernel "
                                   "cache now (a Docker build, an install script), so that no "
                                   "later run pays the one-time compilation.  Without --model: "
                                   "every kernel; with it: what that checkpoint needs (it runs "
                                   "once on a blank image).  Also writes the bytecode of "
                                   "tinymvit's Python modules, which Python itself does not "
                                   "under PYTHONDONTWRITEBYTECODE=1.")
    k.add_argument("--model", default=None, metavar="PATH",
                   help="only the kernels of this checkpoint: folder, tinymvit .safetensors "
                        "file, or Hugging Face Hub repo id org/name[@revision]")
    _allow_pickle(k)
    _debug(k, argparse.SUPPRESS)

    m = sub.add_parser("summary", help="the network layer by layer: shapes, parameters, MACs",
                       description="One row per layer in execution order: checkpoint name, "
                                   "operation, output shape, parameters, multiply-adds of one "
                                   "image; with totals.")
    m.add_argument("model", metavar="PATH")
    m.add_argument("--size", type=_side, default=None, metavar="N",
                   help="input side, an NxN image (default: the size the model sees in use)")
    m.add_argument("--time", action="store_true",
                   help="add each layer's measured time (median of 5 runs) and its share")
    _threads(m)
    _allow_pickle(m)
    _debug(m, argparse.SUPPRESS)

    a = sub.add_parser("attention", help="attention maps of an image, drawn over it (PNG)",
                       description="Draw the attention maps of every attention block of a "
                                   "MobileViT or MobileViTV2 checkpoint over the image, as a "
                                   "grid (one row per stage).")
    a.add_argument("image", metavar="IMAGE")
    _model_option(a, "MobileViT or MobileViTV2 checkpoint")
    a.add_argument("--out", required=True, type=_template, metavar="ATTN.png",
                   help=f"the picture to write ({', '.join(sorted(OVERLAY_FORMATS))})")
    _debug(a, argparse.SUPPRESS)
    return p


# -- output paths: all resolved and checked before anything runs --------------------------
def _output_path(template, image, several):
    if template is None:
        return None
    stem = Path(image).stem if isinstance(image, (str, Path)) else "image"
    if "{stem}" in template:
        return Path(template.replace("{stem}", stem))
    path = Path(template)
    return path.with_name(f"{path.stem}-{stem}{path.suffix}") if several else path


def overlay_format(path, flag="--overlay"):
    """The Pillow format an overlay named ``path`` is written in; OutputError if unknown."""
    fmt = OVERLAY_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise OutputError(f"{flag} {printable(path)}: unknown image extension "
                          f"{printable(Path(path).suffix or '(none)')}; use one of "
                          f"{', '.join(sorted(OVERLAY_FORMATS))}")
    return fmt


def _mirrored(folder, rel, kind):
    """``folder/rel`` as a mask (.png) or an overlay (the image's format if Pillow writes it)."""
    suffix = rel.suffix.lower()
    if kind == "mask" or suffix not in OVERLAY_FORMATS:
        suffix = ".png"
    return Path(folder) / rel.with_suffix(suffix)


def plan_outputs(inputs, templates, model_files=(), dirs=None, several=None, extra=()):
    """Every output path of a run, checked before any model runs.

    inputs: image paths, or :class:`tinymvit.jobs.Input` (whose ``rel`` --out-dir mirrors).
    templates: {"mask": --out, "overlay": --overlay}; dirs: {"mask": --out-dir, "overlay":
    --overlay-dir} (None = not written).  extra: other outputs, [(path, description)].
    Returns one {kind: Path} dict per image.  Raises OutputError for a mask not named
    .png, an overlay of an unknown format, a folder, an output that is an input (image
    or model file) or that two images would both write.
    """
    from .jobs import Input
    inputs = [i if isinstance(i, Input) else Input(str(i), Path(Path(i).name)) for i in inputs]
    several = len(inputs) > 1 if several is None else several
    dirs = dirs or {}
    flags = {"mask": ("--out", "--out-dir"), "overlay": ("--overlay", "--overlay-dir")}
    plans, outputs = [], list(extra)
    for item in inputs:
        plan = {}
        for kind in ("mask", "overlay"):
            path = _output_path(templates.get(kind), item.path, several)
            flag = flags[kind][0]
            if path is None and dirs.get(kind) is not None:
                path, flag = _mirrored(dirs[kind], item.rel, kind), flags[kind][1]
            if path is None:
                continue
            if kind == "mask" and path.suffix.lower() != ".png":
                raise OutputError(f"--out {printable(path)}: the mask is a PNG label map (pixel "
                                  f"values are class indices); give a name ending in .png")
            if kind == "overlay":
                overlay_format(path)
            plan[kind] = path
            outputs.append((path, f"{flag} for {item.path}"))
        plans.append(plan)
    ins = [(item.path, "the input image") for item in inputs]
    ins += [(path, "the model file") for path in model_files]
    check_output_paths(outputs, ins)
    return plans


# -- progress and messages ----------------------------------------------------------------
class _Progress:
    """A tqdm bar on stderr (count, images/s, ETA) when stderr is a terminal and not --quiet;
    ``say`` prints a line without breaking the bar."""

    def __init__(self, args, total, unit="img"):
        stderr = sys.stderr
        self.bar = None          # no bar: tqdm is not even imported (it costs ~25 ms)
        if not args.quiet and total > 1 and hasattr(stderr, "isatty") and stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit=unit, file=stderr, dynamic_ncols=True,
                            smoothing=0.05)

    def update(self, n=1):
        if self.bar is not None:
            self.bar.update(n)

    def say(self, text, file=None):
        file = file or sys.stderr
        if self.bar is None:
            print(text, file=file)
        else:
            self.bar.write(text, file=file)
        file.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _dump_json(data, out):
    json.dump(data, out, indent=2, allow_nan=False)   # strict RFC 8259: never a bare NaN
    print(file=out)


# -- classify / segment: images, folders, lists -> text, JSON or JSONL ---------------------
class _StopRun(Exception):
    """--strict: the first failure ends the run."""


class _Run:
    """What a classify/segment run does with each image's result."""

    def __init__(self, args, out, model, log, several, progress):
        self.args, self.out, self.model, self.log = args, out, model, log
        self.several, self.progress = several, progress
        self.segment = args.command == "segment"
        self.records = []                  # for --json
        self.done = self.failed = 0

    def handle(self, prediction, plan):
        """Write the outputs of one image, record it, print it."""
        record, error = dict(prediction.record), prediction.error
        if "error" not in record and self.segment and plan:
            try:
                self._write_files(prediction, plan, record)
            except OutputError:
                raise                      # cannot write outputs at all: the run stops
            except TinyMViTError as exc:
                record, error = self._error_record(record["path"], exc), exc
        self.progress.update()
        if "error" in record:
            self.failed += 1
            self.progress.say(f"tinymvit {self.args.command}: error: {printable(record['error'])}")
            if self.args.strict:
                raise _StopRun()
        self.done += 1
        if self.log is not None:
            if self.segment and "error" not in record:      # the JSONL shape: always both keys
                record = {**{k: v for k, v in record.items() if k not in ("mask", "overlay")},
                          "mask": record.get("mask"), "overlay": record.get("overlay")}
            self.log.write(record)
        elif self.args.json:
            self.records.append(self._json_record(record, error))
        elif "error" not in record:
            self._print(record)

    @staticmethod
    def _error_record(path, exc):
        from .predict import error_record
        return error_record(path, exc)

    def _write_files(self, prediction, plan, record):
        import numpy as np

        from .images import load_image
        from .outputs import atomic_write
        from .visualize import overlay, save_label_png
        labels = prediction.labels
        if "mask" in plan:
            save_label_png(labels.astype(np.int64), plan["mask"], self.model.config.num_labels)
            record["mask"] = str(plan["mask"])
        if "overlay" in plan:
            image = prediction.image if prediction.image is not None else \
                load_image(record["path"])
            picture = overlay(image, labels, self.model.id2label, alpha=self.args.alpha)
            fmt = overlay_format(plan["overlay"])
            atomic_write(plan["overlay"], lambda tmp: picture.save(tmp, format=fmt))
            record["overlay"] = str(plan["overlay"])

    def _json_record(self, record, error):
        """--json keeps its own record shape: "image", and "classes" for segment."""
        if "error" in record:
            entry = {"image": record["path"], "error": record["error"]}
            if error is not None:
                entry["error_type"] = type(error).__name__
            return entry
        if not self.segment:
            return {"image": record["path"], "predictions": record["predictions"]}
        entry = {"image": record["path"], "height": record["height"], "width": record["width"],
                 "classes": [{"label": label, "fraction": f}
                             for label, f in record["fractions"].items()]}
        entry.update({k: record[k] for k in ("mask", "overlay") if k in record})
        return entry

    def _print(self, record):
        lines = []
        if not self.segment:
            if self.several:
                lines.append(printable(record["path"]))
            lines += [f"{'  ' if self.several else ''}{printable(p['label'])} "
                      f"({100 * p['score']:.1f}%)" for p in record["predictions"]]
        else:
            lines.append(f"{printable(record['path'])} ({record['width']}x{record['height']})")
            lines += [f"  {printable(label)} {100 * f:.1f}%"
                      for label, f in record["fractions"].items()]
            lines += [f"  {key}: {printable(record[key])}" for key in ("mask", "overlay")
                      if key in record]
        self.progress.say("\n".join(lines), self.out)


def _serial(args, model, inputs, todo, plans):
    """(input index, Prediction) in input order: decoded ahead on threads, in batches."""
    from .predict import predict
    paths = (inputs[i].path for i in todo)
    results = predict(model, paths, top_k=getattr(args, "top_k", 5),
                      size=getattr(args, "size", None), batch_size=args.batch_size,
                      workers=args.workers, ahead=1)
    with contextlib.closing(results):
        yield from zip(todo, results)


def _on_ray(args, model, inputs, todo, plans):
    """(input index, Prediction) in completion order, from tinymvit.ray's pipeline."""
    import tinymvit.ray as tray

    from .hub import is_repo_id
    from .predict import Prediction
    waiting = {}                                   # path -> indices (a path may repeat)
    for i in todo:
        waiting.setdefault(inputs[i].path, deque()).append(i)
    spec = args.model if is_repo_id(args.model) else os.path.abspath(args.model)
    options = dict(address=args.ray or None, cpus_per_actor=args.threads or 1,
                   batch_size=args.batch_size, quiet=True, allow_pickle=args.allow_pickle,
                   check_model=False)
    paths = [inputs[i].path for i in todo]
    if args.command == "segment":
        results = tray.segment(spec, paths, size=args.size,
                               return_masks=any(plans[i] for i in todo), **options)
    else:
        results = ((record, None) for record in tray.classify(spec, paths, top_k=args.top_k,
                                                              **options))
    with contextlib.closing(results):
        for record, mask in results:
            yield waiting[record["path"]].popleft(), Prediction(record, mask)


def _predict_command(args, out):
    from .api import load
    from .jobs import JsonlLog, expand_inputs

    command = args.command
    if args.resume and not args.jsonl:
        raise InputError("--resume needs --jsonl FILE (the records to resume)")
    inputs, problems = expand_inputs(args.inputs, recursive=args.recursive)
    for kind, message in problems:
        print(f"tinymvit {command}: {kind}: {message}", file=sys.stderr)
    failed = sum(kind == "error" for kind, _ in problems)
    if failed and args.strict:
        return 1
    model = load(args.model, num_threads=None if args.ray is not None else args.threads,
                 allow_pickle=args.allow_pickle)
    model._check_task("segmentation" if command == "segment" else "classification", command)
    several = len(inputs) != 1 or len(args.inputs) != 1 or inputs[0].path != args.inputs[0]
    to_file = args.jsonl not in (None, "-")
    extra = [(Path(args.jsonl), "--jsonl")] if to_file else []
    if command == "segment":
        plans = plan_outputs(inputs, {"mask": args.out, "overlay": args.overlay}, model.files,
                             {"mask": args.out_dir, "overlay": args.overlay_dir}, several, extra)
    else:
        plans = plan_outputs(inputs, {}, model.files, several=several, extra=extra)
    expect = "fractions" if command == "segment" else "predictions"
    log = JsonlLog(args.jsonl, resume=args.resume, expect=expect, stdout=out) \
        if args.jsonl else None
    with log if log is not None else contextlib.nullcontext():
        todo = list(range(len(inputs)))
        if log is not None:
            todo = log.skip(todo, key=lambda i: inputs[i].path)
            _resume_notes(args, log, len(inputs) - len(todo), len(todo))
        progress = _Progress(args, len(todo))
        run = _Run(args, out, model, log, several, progress)
        source = (_on_ray if args.ray is not None else _serial)(args, model, inputs, todo, plans)
        start = time.perf_counter()
        try:
            with contextlib.closing(source):        # stopping early stops the decoding threads
                for index, prediction in source:
                    run.handle(prediction, plans[index])
        except _StopRun:
            return 1
        except KeyboardInterrupt:
            if to_file:
                args.interrupt_hint = (f" after {run.done} of {len(todo)} images; "
                                       f"{printable(args.jsonl)} "
                                       f"holds every finished one: run the same command with "
                                       f"--resume to go on")
            raise
        finally:
            progress.close()
        seconds = time.perf_counter() - start
    if args.json:
        _dump_json(run.records, out)
    if to_file and not args.quiet:
        skipped = len(inputs) - len(todo)
        print(f"tinymvit {command}: {run.done} images in {seconds:.1f} s "
              f"({run.done / seconds if seconds > 0 else 0:.1f} images/s), {run.failed} failed; "
              f"records in {printable(args.jsonl)}"
              + (f" ({skipped} more were already there)" if skipped else ""), file=sys.stderr)
    return 1 if failed or run.failed else 0


def _resume_notes(args, log, skipped, todo):
    if log.dropped:
        print(f"tinymvit {args.command}: {printable(log.path)}: removed a half-written last line "
              f"({log.dropped} bytes); its image is done again", file=sys.stderr)
    if args.resume and not args.quiet:
        print(f"tinymvit {args.command}: resuming {printable(log.path)}: {skipped} images already "
              f"recorded, {todo} to do", file=sys.stderr)


cmd_classify = cmd_segment = _predict_command


# -- eval, bench, convert, info -----------------------------------------------------------
def cmd_eval(args, out):
    from .api import load
    from .evaluate import SegmentationData, evaluate, find_dataset

    model = load(args.model, num_threads=args.threads, allow_pickle=args.allow_pickle)
    dataset = find_dataset(args.data, model, synsets=args.synsets, split=args.split)
    total = len(dataset.pairs if isinstance(dataset, SegmentationData) else dataset.samples)
    progress = _Progress(args, total)
    try:
        result = evaluate(model, dataset, mode=args.mode, batch_size=args.batch_size,
                          workers=args.workers, worst=args.worst, progress=progress.update)
    finally:
        progress.close()
    for n, error in enumerate(result["errors"]):       # images first, then masks left over
        kind = "error" if n < result["failed"] else "warning"
        text = error["error"] if error["path"] in error["error"] else \
            f"{error['path']}: {error['error']}"
        print(f"tinymvit eval: {kind}: {printable(text)}", file=sys.stderr)
    if args.json:
        _dump_json(result, out)
    else:
        _print_evaluation(result, out)
    return 1 if result["failed"] else 0


def _percent(value):
    return f"{100 * value:5.1f}%"


def _print_evaluation(r, out):
    data = r["dataset"]
    kind = {"imagefolder": "ImageFolder", "csv": "CSV", "voc": "VOC"}[data["kind"]]
    lines = [f"{r['task']} on {printable(data['path'])} ({kind}): {r['images']} "
             f"image{'' if r['images'] == 1 else 's'}, {r['failed']} failed, "
             f"{r['images_per_second']:.1f} images/s"]
    if r["task"] == "classification":
        lines += [f"  top-1  {_percent(r['top1'])}",
                  f"  top-{r['top_k']}  {_percent(r['top5'])}",
                  f"  worst classes of {r['classes']} (top-1, top-{r['top_k']}, images):"]
        lines += [f"    {_percent(c['top1'])} {_percent(c['top5'])} {c['images']:6d}  "
                  f"{printable(c['label'])}"
                  + (f"  (folder {printable(c['name'])})" if c["name"] not in (None, c["label"])
                     else "") for c in r["worst_classes"]]
    else:
        lines += [f"  mIoU            {_percent(r['miou'])}  (mode {r['mode']})",
                  f"  pixel accuracy  {_percent(r['pixel_accuracy'])}",
                  f"  mean accuracy   {_percent(r['mean_accuracy'])}",
                  "  per-class IoU:"]
        lines += [f"    {_percent(iou)}  {printable(label)}"
                  for label, iou in r["per_class"].items()]
    print("\n".join(lines), file=out)


def cmd_bench(args, out):
    from .api import load
    from .benchmark import benchmark

    start = time.perf_counter()
    model = load(args.model, num_threads=args.threads, allow_pickle=args.allow_pickle)
    load_seconds = time.perf_counter() - start
    result = benchmark(model, batch_size=args.batch_size, size=args.size, seconds=args.seconds)
    result = {"load_seconds": load_seconds, **result}
    if args.json:
        _dump_json(result, out)
        return
    latency, memory = result["latency_ms"], result["peak_memory_bytes"]
    print("\n".join([
        f"{printable(result['model'])}: {result['family']} {result['task']}",
        f"  input        {'x'.join(map(str, result['input_shape']))}, "
        f"{result['threads']} thread{'s' if result['threads'] > 1 else ''}",
        f"  load         {load_seconds:.2f} s",
        f"  first call   {result['first_call_seconds']:.2f} s (planning buffers and loading the "
        f"cached kernels, where load did not; compiling them on the very first run)",
        f"  latency      {latency['median']:.1f} ms median of {result['calls']} calls "
        f"(p10 {latency['p10']:.1f}, p90 {latency['p90']:.1f})",
        f"  throughput   {result['images_per_second']:.1f} images/s",
        "  peak memory  " + (f"{memory / 2 ** 20:.0f} MiB ({result['peak_memory_source']})"
                              if memory else "unknown on this system")]), file=out)


def cmd_convert(args, out):
    from .api import convert
    dst = convert(args.src, args.dst, allow_pickle=args.allow_pickle)
    print(f"wrote {printable(dst)}", file=out)


def cmd_info(args, out):
    from .api import load
    model = load(args.model, allow_pickle=args.allow_pickle)
    cfg = model.config
    print(f"{printable(model.source)}", file=out)
    print(f"  family:         {model.family}", file=out)
    print(f"  task:           {model.task}", file=out)
    print(f"  labels:         {cfg.num_labels}", file=out)
    print(f"  image_size:     {cfg.image_size}", file=out)
    print(f"  output_stride:  {cfg.output_stride}", file=out)
    print(f"  min input size: {model.min_input_size()} px", file=out)


def cmd_compile(args, out):
    from .kernels import program
    from .kernels.native import byte_compile_modules
    from .kernels.policy import CACHE_DIR
    from .kernels.simd import ISA
    if CACHE_DIR is None:
        raise OutputError("there is no kernel cache to compile into (see the line above, or "
                          "TINYMVIT_NUMBA_CACHE / TINYMVIT_ISA are set): set NUMBA_CACHE_DIR to "
                          "a writable folder")
    t0 = time.perf_counter()
    before = program.cached_kernels()
    if args.model:
        from PIL import Image

        from .api import load
        model = load(args.model, allow_pickle=args.allow_pickle)
        side = max(model.min_input_size(), 64)
        blank = Image.new("RGB", (side, side))
        if model.task == "segmentation":
            model.segment(blank)
        else:
            model.classify(blank)
        what = f"the kernels of {printable(model.source)}"
    else:
        program.compile_kernels()
        what = "every kernel"
    byte_compile_modules()
    used = {name for name, state in program.kernel_status().items() if state != "unused"}
    print(f"{what} ready for this CPU ({ISA}): {len(used - before)} compiled now, "
          f"{len(used & before)} were in the cache ({time.perf_counter() - t0:.1f} s)", file=out)
    print(f"cache: {printable(CACHE_DIR)}", file=out)
def cmd_summary(args, out):
    from .api import load
    model = load(args.model, num_threads=args.threads, allow_pickle=args.allow_pickle)
    table = str(model.summary(args.size, time=args.time))
    print("\n".join(printable(line) for line in table.splitlines()), file=out)


def cmd_attention(args, out):
    from .api import load
    from .images import load_image
    from .outputs import atomic_write, check_output_paths
    from .visualize import attention_grid

    fmt = overlay_format(args.out, "--out")
    model = load(args.model, allow_pickle=args.allow_pickle)
    check_output_paths([(Path(args.out), "--out")], [(args.image, "the input image")]
                       + [(path, "the model file") for path in model.files])
    maps = model.attention_maps(args.image)
    picture = attention_grid(load_image(args.image), maps)
    atomic_write(args.out, lambda tmp: picture.save(tmp, format=fmt))
    for m in maps:
        print(f"{m['name']}  scores {tuple(m['scores'].shape)}", file=out)
    print(f"wrote {printable(args.out)} ({len(maps)} attention blocks)", file=out)


COMMANDS = {"classify": cmd_classify, "segment": cmd_segment, "eval": cmd_eval,
            "bench": cmd_bench, "convert": cmd_convert, "info": cmd_info,
            "compile": cmd_compile, "summary": cmd_summary, "attention": cmd_attention}


def main(argv=None, out=None):
    """Run the command line; returns the exit status (0 ok, 1 error, 130 Ctrl-C, 143 SIGTERM)."""
    for stream in (sys.stdout, sys.stderr):        # a label the terminal cannot encode is
        if hasattr(stream, "reconfigure"):         # escaped, never a UnicodeEncodeError
            stream.reconfigure(errors="backslashreplace")
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    debug = args.debug or os.environ.get("TINYMVIT_DEBUG", "") not in ("", "0")
    with warnings.catch_warnings(), _sigterm_interrupts(), _quiet_hub_logs(debug):
        _one_line_warnings(args.command, debug)
        return _run(args, out, debug)


@contextlib.contextmanager
def _quiet_hub_logs(debug):
    """huggingface_hub logs every retry of an unreachable Hub (five, over 23 s) as a warning:
    noise before our one-line error, so only errors are logged (all with --debug, or when
    HF_HUB_VERBOSITY is set)."""
    if debug or "HF_HUB_VERBOSITY" in os.environ:
        yield
        return
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    os.environ["HF_HUB_VERBOSITY"] = "error"          # read when huggingface_hub is imported
    logger.setLevel(logging.ERROR)                    # if it already was
    try:
        yield
    finally:
        os.environ.pop("HF_HUB_VERBOSITY", None)
        logger.setLevel(level)


def _one_line_warnings(command, debug):
    """Library warnings (e.g. Pillow's) print as one escaped line, without source lines."""
    from PIL import Image
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # our own error
    if not debug:
        warnings.showwarning = lambda message, category, *args, **kwargs: print(
            f"tinymvit {command}: warning: {printable(message)}", file=sys.stderr)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``), handled like Ctrl-C: files are closed, temporary files removed."""


@contextlib.contextmanager
def _sigterm_interrupts():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise _Terminated()
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args, out, debug):
    """Run the command; every failure becomes one line on stderr and exit status 1."""
    def fail(message):
        if debug:
            traceback.print_exc()
        print(f"tinymvit {args.command}: error: {printable(message)}", file=sys.stderr)
        return 1

    try:
        return COMMANDS[args.command](args, out) or 0
    except TinyMViTError as exc:
        return fail(exc)
    except MemoryError:
        return fail("out of memory; use smaller images (--size) or a smaller --batch-size"
                    if args.command in ("classify", "segment") else "out of memory")
    except BrokenPipeError:                        # e.g. `tinymvit classify ... | head -1`
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:                         # a file system error not already named
        return fail(f"{str(exc.filename) + ': ' if exc.filename else ''}{exc.strerror or exc}")
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated)
        print(f"tinymvit {args.command}: {'terminated' if terminated else 'interrupted'}"
              f"{getattr(args, 'interrupt_hint', '')}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as exc:  # noqa: BLE001  a bug: one line, the traceback on request
        return fail(f"internal error ({type(exc).__name__}: {exc}); this is a bug in tinymvit - "
                    f"run again with --debug (or TINYMVIT_DEBUG=1) to see the traceback, and "
                    f"please report it")


if __name__ == "__main__":
    sys.exit(main())

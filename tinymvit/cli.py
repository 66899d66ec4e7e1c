"""The ``tinymvit`` command line.

    tinymvit classify IMAGE... --model PATH [--top-k K] [--json] [--batch-size N]
    tinymvit segment IMAGE... --model PATH [--out mask.png] [--overlay overlay.png] [--json]
    tinymvit convert SRC DST
    tinymvit info PATH

Every expected failure is ONE line on stderr, ``tinymvit <command>: error: ...``, and exit
status 1: bad arguments, unreadable checkpoints or images, outputs that would overwrite an
input, full disks, out of memory.  With several images, each image gets its own result
or its own error and the exit status is 1 if any failed.  An unexpected internal error
prints one line too, and its traceback with ``--debug`` (or ``TINYMVIT_DEBUG=1``).
"""
import argparse
import json
import os
import sys
import traceback
import warnings
from pathlib import Path

from . import limits
from .errors import InputError, OutputError, TinyMViTError
from .outputs import check_output_paths, printable

#: overlay file name extensions -> Pillow format (formats that take any RGB image)
OVERLAY_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
                   ".bmp": "BMP", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF"}


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


def _alpha(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:                      # NaN fails too
        raise argparse.ArgumentTypeError(f"expected an opacity from 0 to 1, got {text!r}")
    return value


def _size(text):
    if text == "native":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= limits.MAX_SIDE:
        raise argparse.ArgumentTypeError(
            f"expected 'native' or an integer from 1 to {limits.MAX_SIDE}, got {text!r}")
    return value


def _template(text):
    if not text or Path(text).name in ("", ".", ".."):
        raise argparse.ArgumentTypeError(f"expected a file name, got {text!r}")
    return text


def _common(parser, batch_size=None):
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="kernel threads (default: every core)")
    if batch_size:
        parser.add_argument("--batch-size", type=_positive_int, default=batch_size, metavar="N",
                            help=f"images per forward pass (default {batch_size}); memory "
                                 f"grows with it, not with the number of images")
    _debug(parser, argparse.SUPPRESS)


def _debug(parser, default=False):
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the traceback of an unexpected error (or TINYMVIT_DEBUG=1)")


def _parser():
    p = _Parser(
        prog="tinymvit",
        description="CPU inference for MobileViTV2, MobileViT and MobileNetV2 "
                    "(classification and DeepLabV3 segmentation), no PyTorch needed.")
    _debug(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("classify", help="print the top classes of images",
                       description="Print the top-K classes of each image, as 'label (score%%)'.")
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument("--model", required=True, metavar="PATH",
                   help="checkpoint folder or tinymvit .safetensors file")
    c.add_argument("--top-k", type=_positive_int, default=5, metavar="K",
                   help="how many classes (default 5)")
    c.add_argument("--json", action="store_true", help="print JSON instead of text")
    _common(c, batch_size=32)

    s = sub.add_parser("segment", help="label every pixel of images; write mask/overlay PNGs",
                       description="Segment each image (whole image, original size). Prints the "
                                   "fraction of pixels per class; writes a palette PNG label map "
                                   "and/or an overlay. With several images, '{stem}' in --out/"
                                   "--overlay is replaced by each image's name (it is appended "
                                   "otherwise). No output may overwrite an input or another "
                                   "output.")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--model", required=True, metavar="PATH",
                   help="segmentation checkpoint folder or tinymvit .safetensors file")
    s.add_argument("--out", type=_template, metavar="MASK.png",
                   help="write the label map as a palette PNG")
    s.add_argument("--overlay", type=_template, metavar="OVERLAY.png",
                   help="write the image with the classes blended over it and a legend "
                        f"({', '.join(sorted(OVERLAY_FORMATS))})")
    s.add_argument("--alpha", type=_alpha, default=0.5,
                   help="overlay opacity, 0 to 1 (default 0.5)")
    s.add_argument("--size", type=_size, default=None, metavar="N|native",
                   help="longer side the image is resized to before the model runs "
                        "(default: the checkpoint's crop size; 'native' keeps the original)")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    _common(s, batch_size=8)

    v = sub.add_parser("convert", help="convert a checkpoint into one tinymvit .safetensors file",
                       description="Convert a transformers checkpoint folder (model.safetensors or "
                                   "pytorch_model.bin + config.json [+ preprocessor_config.json]) "
                                   "into a single .safetensors file with the configs embedded.")
    v.add_argument("src", metavar="SRC")
    v.add_argument("dst", metavar="DST")
    _debug(v, argparse.SUPPRESS)

    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("model", metavar="PATH")
    _debug(i, argparse.SUPPRESS)
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


def overlay_format(path):
    """The Pillow format an overlay named ``path`` is written in; OutputError if unknown."""
    fmt = OVERLAY_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise OutputError(f"--overlay {printable(path)}: unknown image extension "
                          f"{printable(Path(path).suffix or '(none)')}; use one of "
                          f"{', '.join(sorted(OVERLAY_FORMATS))}")
    return fmt


def plan_outputs(images, templates, model_files=()):
    """Every output path of a run, checked before any model runs.

    templates: {"mask": --out, "overlay": --overlay} (None = not written).
    Returns one {kind: Path} dict per image.  Raises OutputError for a mask not named
    .png, an overlay of an unknown format, a folder, an output that is an input (image
    or model file) or that two images would both write.
    """
    several = len(images) > 1
    plans, outputs = [], []
    for image in images:
        plan = {}
        for kind, template in templates.items():
            path = _output_path(template, image, several)
            if path is None:
                continue
            flag = "--out" if kind == "mask" else "--overlay"
            if kind == "mask" and path.suffix.lower() != ".png":
                raise OutputError(f"--out {printable(path)}: the mask is a PNG label map (pixel "
                                  f"values are class indices); give a name ending in .png")
            if kind == "overlay":
                overlay_format(path)
            plan[kind] = path
            outputs.append((path, f"{flag} for {image}"))
        plans.append(plan)
    inputs = [(image, "the input image") for image in images]
    inputs += [(path, "the model file") for path in model_files]
    check_output_paths(outputs, inputs)
    return plans


# -- commands -----------------------------------------------------------------------------
def _failed(args, image, exc, records):
    """Report one image's error (one line on stderr) and record it for --json."""
    records.append({"image": image, "error": str(exc), "error_type": type(exc).__name__})
    print(f"tinymvit {args.command}: error: {printable(exc)}", file=sys.stderr)


def _dump_json(records, out):
    json.dump(records, out, indent=2, allow_nan=False)   # strict RFC 8259: never a bare NaN
    print(file=out)


def cmd_classify(args, out):
    from .api import load
    model = load(args.model, num_threads=args.threads)
    several = len(args.images) > 1
    records, failures = [], 0
    for image, result in model.iter_classify(args.images, top_k=args.top_k,
                                             batch_size=args.batch_size):
        if isinstance(result, TinyMViTError):
            failures += 1
            _failed(args, image, result, records)
            continue
        records.append({"image": image, "predictions": result})
        if not args.json:
            if several:
                print(printable(image), file=out)
            for p in result:
                print(f"{'  ' if several else ''}{printable(p['label'])} "
                      f"({100 * p['score']:.1f}%)", file=out)
            out.flush()
    if args.json:
        _dump_json(records, out)
    return 1 if failures else 0


def cmd_segment(args, out):
    import numpy as np

    from .api import load
    from .images import load_image
    from .outputs import atomic_write
    from .visualize import class_fractions, overlay, save_label_png

    model = load(args.model, num_threads=args.threads)
    model._check_task("segmentation", "segment")    # before any output path is planned
    plans = plan_outputs(args.images, {"mask": args.out, "overlay": args.overlay}, model.files)
    records, failures = [], 0
    results = model.iter_segment(args.images, size=args.size, batch_size=args.batch_size)
    for (image, labels), plan in zip(results, plans):
        try:
            if isinstance(labels, TinyMViTError):
                raise labels
            record = {"image": image, "height": int(labels.shape[0]),
                      "width": int(labels.shape[1]),
                      "classes": class_fractions(labels, model.id2label)}
            if "mask" in plan:
                save_label_png(labels.astype(np.int64), plan["mask"], model.config.num_labels)
                record["mask"] = str(plan["mask"])
            if "overlay" in plan:
                picture = overlay(load_image(image), labels, model.id2label, alpha=args.alpha)
                fmt = overlay_format(plan["overlay"])
                atomic_write(plan["overlay"], lambda tmp: picture.save(tmp, format=fmt))
                record["overlay"] = str(plan["overlay"])
        except TinyMViTError as exc:
            failures += 1
            _failed(args, image, exc, records)
            continue
        records.append(record)
        if not args.json:
            print(f"{printable(image)} ({record['width']}x{record['height']})", file=out)
            for c in record["classes"]:
                print(f"  {printable(c['label'])} {100 * c['fraction']:.1f}%", file=out)
            for key in ("mask", "overlay"):
                if key in record:
                    print(f"  {key}: {printable(record[key])}", file=out)
            out.flush()
    if args.json:
        _dump_json(records, out)
    return 1 if failures else 0


def cmd_convert(args, out):
    from .api import convert
    dst = convert(args.src, args.dst)
    print(f"wrote {printable(dst)}", file=out)


def cmd_info(args, out):
    from .api import load
    model = load(args.model)
    cfg = model.config
    print(f"{printable(model.source)}", file=out)
    print(f"  family:         {model.family}", file=out)
    print(f"  task:           {model.task}", file=out)
    print(f"  labels:         {cfg.num_labels}", file=out)
    print(f"  image_size:     {cfg.image_size}", file=out)
    print(f"  output_stride:  {cfg.output_stride}", file=out)
    print(f"  min input size: {model.min_input_size()} px", file=out)


COMMANDS = {"classify": cmd_classify, "segment": cmd_segment, "convert": cmd_convert,
            "info": cmd_info}


def main(argv=None, out=None):
    """Run the command line; returns the exit status (0 ok, 1 error, 130 interrupted)."""
    for stream in (sys.stdout, sys.stderr):        # a label the terminal cannot encode is
        if hasattr(stream, "reconfigure"):         # escaped, never a UnicodeEncodeError
            stream.reconfigure(errors="backslashreplace")
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    debug = args.debug or os.environ.get("TINYMVIT_DEBUG", "") not in ("", "0")
    with warnings.catch_warnings():
        _one_line_warnings(args.command, debug)
        return _run(args, out, debug)


def _one_line_warnings(command, debug):
    """Library warnings (e.g. Pillow's) print as one escaped line, without source lines."""
    from PIL import Image
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # our own error
    if not debug:
        warnings.showwarning = lambda message, category, *args, **kwargs: print(
            f"tinymvit {command}: warning: {printable(message)}", file=sys.stderr)


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
    except KeyboardInterrupt:
        print(f"tinymvit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  a bug: one line, the traceback on request
        return fail(f"internal error ({type(exc).__name__}: {exc}); this is a bug in tinymvit - "
                    f"run again with --debug (or TINYMVIT_DEBUG=1) to see the traceback, and "
                    f"please report it")


if __name__ == "__main__":
    sys.exit(main())

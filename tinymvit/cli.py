"""The ``tinymvit`` command line.

    tinymvit classify IMAGE... --model PATH [--top-k K] [--json]
    tinymvit segment IMAGE... --model PATH [--out mask.png] [--overlay overlay.png] [--json]
    tinymvit convert SRC DST
    tinymvit info PATH
"""
import argparse
import json
import sys
from pathlib import Path

from .errors import TinyMViTError


def _threads_arg(parser):
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="kernel threads (default: every core)")


def _parser():
    p = argparse.ArgumentParser(
        prog="tinymvit",
        description="CPU inference for MobileViTV2, MobileViT and MobileNetV2 "
                    "(classification and DeepLabV3 segmentation), no PyTorch needed.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("classify", help="print the top classes of images",
                       description="Print the top-K classes of each image, as 'label (score%%)'.")
    c.add_argument("images", nargs="+", metavar="IMAGE")
    c.add_argument("--model", required=True, metavar="PATH",
                   help="checkpoint folder or tinymvit .safetensors file")
    c.add_argument("--top-k", type=int, default=5, metavar="K", help="how many classes (default 5)")
    c.add_argument("--json", action="store_true", help="print JSON instead of text")
    _threads_arg(c)

    s = sub.add_parser("segment", help="label every pixel of images; write mask/overlay PNGs",
                       description="Segment each image (whole image, original size). Prints the "
                                   "fraction of pixels per class; writes a palette PNG label map "
                                   "and/or an overlay. With several images, '{stem}' in --out/"
                                   "--overlay is replaced by each image's name (it is appended "
                                   "otherwise).")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--model", required=True, metavar="PATH",
                   help="segmentation checkpoint folder or tinymvit .safetensors file")
    s.add_argument("--out", metavar="MASK.png", help="write the label map as a palette PNG")
    s.add_argument("--overlay", metavar="OVERLAY.png",
                   help="write the image with the classes blended over it and a legend")
    s.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    s.add_argument("--size", default=None, metavar="N|native",
                   help="longer side the image is resized to before the model runs "
                        "(default: the checkpoint's crop size; 'native' keeps the original)")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    _threads_arg(s)

    v = sub.add_parser("convert", help="convert a checkpoint into one tinymvit .safetensors file",
                       description="Convert a transformers checkpoint folder (model.safetensors or "
                                   "pytorch_model.bin + config.json [+ preprocessor_config.json]) "
                                   "into a single .safetensors file with the configs embedded.")
    v.add_argument("src", metavar="SRC")
    v.add_argument("dst", metavar="DST")

    i = sub.add_parser("info", help="describe a checkpoint")
    i.add_argument("model", metavar="PATH")
    return p


def _output_path(template, image, several):
    if template is None:
        return None
    stem = Path(image).stem if isinstance(image, (str, Path)) else "image"
    if "{stem}" in template:
        return Path(template.replace("{stem}", stem))
    path = Path(template)
    return path.with_name(f"{path.stem}-{stem}{path.suffix}") if several else path


def cmd_classify(args, out):
    from .api import load
    model = load(args.model, num_threads=args.threads)
    results = []
    for image in args.images:
        preds = model.classify(image, top_k=args.top_k)
        results.append({"image": image, "predictions": preds})
        if not args.json:
            if len(args.images) > 1:
                print(image, file=out)
            for p in preds:
                print(f"{'  ' if len(args.images) > 1 else ''}{p['label']} ({100 * p['score']:.1f}%)",
                      file=out)
    if args.json:
        json.dump(results, out, indent=2)
        print(file=out)


def cmd_segment(args, out):
    import numpy as np
    from PIL import Image  # noqa: F401  (Pillow is a runtime dependency)

    from .api import load
    from .images import load_image
    from .visualize import class_fractions, overlay, save_label_png

    model = load(args.model, num_threads=args.threads)
    size = args.size
    if size is not None and size != "native":
        try:
            size = int(size)
        except ValueError:
            raise TinyMViTError(f"--size must be an integer or 'native', got {size!r}") from None
    several = len(args.images) > 1
    results = []
    for image in args.images:
        rgb = load_image(image)
        labels = model.segment(rgb, size=size)
        record = {"image": image, "height": int(labels.shape[0]), "width": int(labels.shape[1]),
                  "classes": class_fractions(labels, model.id2label)}
        mask_path = _output_path(args.out, image, several)
        if mask_path is not None:
            save_label_png(labels.astype(np.int64), mask_path, model.config.num_labels)
            record["mask"] = str(mask_path)
        overlay_path = _output_path(args.overlay, image, several)
        if overlay_path is not None:
            overlay_path.parent.mkdir(parents=True, exist_ok=True)
            overlay(rgb, labels, model.id2label, alpha=args.alpha).save(overlay_path)
            record["overlay"] = str(overlay_path)
        results.append(record)
        if not args.json:
            print(f"{image} ({record['width']}x{record['height']})", file=out)
            for c in record["classes"]:
                print(f"  {c['label']} {100 * c['fraction']:.1f}%", file=out)
            for key in ("mask", "overlay"):
                if key in record:
                    print(f"  {key}: {record[key]}", file=out)
    if args.json:
        json.dump(results, out, indent=2)
        print(file=out)


def cmd_convert(args, out):
    from .api import convert
    dst = convert(args.src, args.dst)
    print(f"wrote {dst}", file=out)


def cmd_info(args, out):
    from .api import load
    model = load(args.model)
    cfg = model.config
    print(f"{model.source}", file=out)
    print(f"  family:         {model.family}", file=out)
    print(f"  task:           {model.task}", file=out)
    print(f"  labels:         {cfg.num_labels}", file=out)
    print(f"  image_size:     {cfg.image_size}", file=out)
    print(f"  output_stride:  {cfg.output_stride}", file=out)
    print(f"  min input size: {model.min_input_size()} px", file=out)


COMMANDS = {"classify": cmd_classify, "segment": cmd_segment, "convert": cmd_convert,
            "info": cmd_info}


def main(argv=None, out=None):
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args, out)
    except (TinyMViTError, OSError) as exc:
        # every tinymvit error carries a readable message; OSError: an output file can't be written
        print(f"tinymvit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write docs/tour.md and docs/tour-attention.png: one image through MobileViTV2.

    python docs/make_tour.py           # (re)write both
    python docs/make_tour.py --check   # exit 1 if docs/tour.md is not what the code gives

Every table and number of the tour comes from running the code here (the stage table
from ``tinymvit.models.mobilevitv2.stages``, shapes/parameters/MACs from
``model.summary()``, the figure from ``model.attention_maps()``), so the tour cannot
drift from the code: tests/test_tour.py runs ``--check``.

No trained MobileViTV2 weights are available here, so the model has random weights (the
recording store of tests/fake_checkpoints.py: every tensor the builder asks for, at a
realistic scale) in the configuration of apple/mobilevitv2-1.0-imagenet1k-256.  The
photo is read from ../shared/images (never copied into the repository).
"""
import argparse
import difflib
import os
import sys
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO / "tests"))                      # fake_checkpoints.random_model

from fake_checkpoints import random_model  # noqa: E402

from tinymvit.debug import first_divergence  # noqa: E402
from tinymvit.images import load_image  # noqa: E402
from tinymvit.models.blocks import stride_schedule  # noqa: E402
from tinymvit.models.mobilevitv2 import stages  # noqa: E402
from tinymvit.summary import human  # noqa: E402
from tinymvit.visualize import attention_grid  # noqa: E402

PHOTO = "skimage_chelsea.png"
# apple/mobilevitv2-1.0-imagenet1k-256: transformers' MobileViTV2Config defaults, 1000 classes,
# and its preprocessor_config.json
CONFIG = dict(width_multiplier=1.0, num_labels=1000, image_size=256)
PREPROCESSOR = {"do_resize": True, "size": {"shortest_edge": 288}, "resample": 2,
                "do_center_crop": True, "crop_size": {"height": 256, "width": 256},
                "do_rescale": True, "rescale_factor": 1 / 255, "do_flip_channel_order": True}
FIGURE = "tour-attention.png"


def shared_images():
    folder = Path(os.environ.get("TINYMVIT_SHARED", REPO.parent / "shared")) / "images"
    if not (folder / PHOTO).is_file():
        sys.exit(f"make_tour: {folder / PHOTO} not found (the ../shared data folder)")
    return folder


def table(head, rows, right=()):
    """A Markdown table; columns whose index is in ``right`` are right-aligned."""
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(head))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def stage_of(name):
    """'mobilevitv2.encoder.layer.2.transformer...' -> 'encoder.layer.2'."""
    parts = name.removeprefix("mobilevitv2.").split(".")
    return ".".join(parts[:3]) if parts[0] == "encoder" else parts[0]


def nchw(shape):
    return "(" + ", ".join(map(str, (shape[0], shape[-1]) + tuple(shape[1:-1]))) + ")"


def tour(figure_path):
    """The Markdown text of the tour; writes the figure to ``figure_path``."""
    model = random_model("mobilevitv2", "classification", seed=0, preprocessor=PREPROCESSOR,
                         **CONFIG)
    cfg = model.config
    photo_path = shared_images() / PHOTO
    rgb = load_image(photo_path)                                         # (H, W, 3) uint8
    pixel_values = model.preprocess(rgb)                                 # (1, 3, 256, 256)
    proc = model.processor
    resized = proc.resize_size(*rgb.shape[:2])
    summary = model.summary()
    rows = summary.rows
    out = model(pixel_values, output_hidden_states=True)
    numpy_out = model(pixel_values, backend="numpy")
    agree = "yes" if first_divergence(model, pixel_values) is None else "NO"
    maps = model.attention_maps(rgb)
    attention_grid(rgb, maps, panel=160).save(figure_path)

    # the architecture table, from the builder's own stage table
    table_rows = [["conv_stem", "3x3 conv, BN, SiLU", rows[0]["output_shape"][-1], "-", 1, 2,
                   "2, 1"]]
    schedule = stride_schedule([s.stride for s in stages(cfg)], cfg.output_stride)
    for i, (stage, (s, d)) in enumerate(zip(stages(cfg), schedule)):
        table_rows.append([f"encoder.layer.{i}", stage.block, stage.width, stage.dim or "-",
                           stage.repeats, stage.stride, f"{s}, {d}"])
    arch = table(["stage", "block", "width", "d", "n", "stride", "stride, dilation here"],
                 table_rows, right=(2, 3, 4, 5))

    # per stage: output shape, parameters, MACs
    groups = {}
    for r in rows:
        groups.setdefault(stage_of(r["names"][0]), []).append(r)
    stage_rows = []
    for name, rs in groups.items():
        work = sum(r["macs"] for r in rs)
        stage_rows.append([f"`{name}`", len(rs), nchw(rs[-1]["output_shape"])
                           if len(rs[-1]["output_shape"]) == 4 else str(rs[-1]["output_shape"]),
                           f"{sum(r['params'] for r in rs):,}", human(work),
                           f"{100 * work / summary.total_macs:.1f}%"])
    stage_rows.append(["**total**", len(rows), "", f"**{summary.total_params:,}**",
                       f"**{human(summary.total_macs)}**", "100%"])
    per_stage = table(["stage", "nodes", "output (transformers' NCHW)", "parameters", "MACs",
                       "share"], stage_rows, right=(1, 3, 4, 5))

    # inside encoder.layer.2, node by node
    inside = table(["#", "node", "op", "output (tinymvit's layout)", "parameters", "MACs"],
                   [[i, "`" + r["name"].removeprefix("mobilevitv2.encoder.layer.2.") + "`",
                     r["op"], r["output_shape"], f"{r['params']:,}", human(r["macs"])]
                    for i, r in enumerate(rows) if stage_of(r["names"][0]) == "encoder.layer.2"],
                   right=(0, 4, 5))
    unfold = next(r for r in rows if r["name"].endswith("encoder.layer.2.unfolding"))
    _, P, N, d = unfold["output_shape"]
    hidden = ", ".join(str(h.shape) for h in out.hidden_states)
    blocks = ", ".join(f"`{m['title']}`" for m in maps[:3])
    return TEMPLATE.format(arch=arch, per_stage=per_stage, inside=inside, hidden=hidden,
                           blocks=blocks, agree=agree, P=P, N=N, d=d,
                           H=rgb.shape[0], W=rgb.shape[1], rh=resized[0],
                           rw=resized[1], ch=proc.crop_size["height"], cw=proc.crop_size["width"],
                           logits=out.logits.shape, pooled=out.pooler_output.shape,
                           n_maps=len(maps), n_nodes=len(rows), macs=human(summary.total_macs),
                           params=f"{summary.total_params:,}", nl=numpy_out.logits.shape,
                           score_shape=maps[0]["scores"].shape, p=cfg.patch_size,
                           PHOTO=PHOTO, figure=FIGURE)


TEMPLATE = """\
# A guided tour: one image through MobileViTV2

This page follows one photo through MobileViTV2-1.0 (the configuration of
`apple/mobilevitv2-1.0-imagenet1k-256`), from pixels to logits, pointing at the code that does
each step. **Every table and number below is produced by the code itself** —
[`docs/make_tour.py`](make_tour.py) runs the model and writes this page, and
`tests/test_tour.py` fails if the page and the code disagree — so nothing here can drift.

> **No trained MobileViTV2 weights are available where this page is built**, so the model has
> *random* weights (at a realistic scale, see `tests/fake_checkpoints.py`). Shapes, parameter
> counts and multiply-adds do not depend on the weights and are exactly those of the real model;
> the attention maps show *how* they are computed and laid over the image, not what a trained
> network looks at. To see real ones:
> `tinymvit attention photo.jpg --model apple/mobilevitv2-1.0-imagenet1k-256 --out attn.png`.

The photo is `{PHOTO}` from `../shared/images` (scikit-image's "chelsea", CC0 / public domain),
{W}x{H} pixels.

## 1. Pixels in: the image processor

[`tinymvit/preprocess.py`](../tinymvit/preprocess.py) reproduces transformers'
`MobileViTImageProcessor` bit for bit (`model.preprocess(image)`):

1. resize the shortest edge to {rh} (Pillow, bilinear): {W}x{H} -> {rw}x{rh};
2. center-crop {cw}x{ch};
3. rescale to 0..1 (no mean/std normalisation for MobileViT models);
4. flip RGB to BGR (the original models were trained on OpenCV's BGR images).

The result is `pixel_values` of shape (1, 3, {ch}, {cw}), float32, values in 0..1.
From here on tinymvit works channels-last: maps are (N, H, W, C), and the stem convolution
reads the NCHW input directly.

## 2. The architecture table

The builder [`tinymvit/models/mobilevitv2.py`](../tinymvit/models/mobilevitv2.py) holds this
table as data (`stages(config)`) and walks it with one loop
([`blocks.encoder`](../tinymvit/models/blocks.py)); the last column is the output-stride rule
(`blocks.stride_schedule`: at `output_stride` 16 or 8 the late strides become dilations):

{arch}

*d*: attention dimension of the stage's transformer, *n*: inverted residuals, or transformer
layers. The widths follow `width_multiplier` through `make_divisible` (spec §2.1).

## 3. Stage by stage

`model.summary()` ([`tinymvit/summary.py`](../tinymvit/summary.py)) lists the {n_nodes} nodes of
the graph; grouped by stage (shapes as transformers' `hidden_states` report them: {hidden}):

{per_stage}

Parameters are counted as PyTorch counts `model.parameters()` — {params}, with BatchNorm
folded into the convolutions at load time but counted as the checkpoint holds it; MACs are the
multiply-adds of one {ch}x{cw} image ({macs}), counting every conv tap and linear layer. Both
are tested against PyTorch and the published numbers (`tests/test_summary.py`). The same
table node by node: `tinymvit summary CHECKPOINT` (`--time` adds where the time goes).

Most of the work is in the inverted residuals of the first stages (large maps), not in the
attention: MobileViTV2's attention is *linear* in the number of patches.

## 4. Inside a MobileViTV2 layer: `encoder.layer.2`

{inside}

Read it with [`mobilevitv2_layer`](../tinymvit/models/mobilevitv2.py):

* **Downsampling inverted residual**: 1x1 expand -> depthwise 3x3 stride 2 -> 1x1 reduce
  ([`blocks.inverted_residual`](../tinymvit/models/blocks.py)). tinymvit runs the three convs as
  one *fused* node: the wide expanded tensor never goes to memory
  ([`kernels/depthwise.py`](../kernels/depthwise.py)).
* **Local representation**: a depthwise `conv_kxk` and a 1x1 `conv_1x1` down to d = {d}.
* **Unfold** into {p}x{p} patches ([`kernels/patches.py`](../kernels/patches.py)): the map
  becomes tokens (N, P, T, C) = (1, {P}, {N}, {d}): token (q, n) is the pixel at position q of
  patch n, so attention runs between the pixels that sit at the same place in every patch.
* **Transformer layers**, pre-norm: `x + out_proj(SepAttn(GN(x)))`, then `x + FFN(GN(x))`.
  GroupNorm(1) normalises all of a sample's values at once
  ([`kernels/norm.py`](../kernels/norm.py), `group_norm1_reference`).
* **Separable attention** ([`kernels/attention_separable.py`](../kernels/attention_separable.py),
  `separable_attention_reference`): `qkv_proj` gives one query channel q, d keys K and d values
  V per token; for each position q, `s = softmax over the {N} patches of q`,
  `context = sum_n K[n] * s[n]` (one d-vector), `y = relu(V) * context`. No N x N matrix: the
  cost grows linearly with the number of patches.
* **Fold** the tokens back into the map (leftover rows/columns of odd sizes become 0) and
  project back to the stage's width.

## 5. What the attention computes

`model.attention_maps(image)` ([`tinymvit/attention.py`](../tinymvit/attention.py)) returns,
for each of the {n_maps} attention blocks ({blocks}, ...), the context
scores transformers computes — shape {score_shape}: for each of the {P} positions, a softmax over the {N} patches —
and a map of them placed back at their pixels and aligned with the photo. The darkened border
is the part of the photo the center crop cut away:

![attention maps of MobileViTV2-1.0 (random weights) on the photo]({figure})

(Random weights: these patterns say nothing about the cat.)

## 6. Logits out

The last stage's map is averaged over its pixels (`pooler_output`, shape {pooled}) and a linear
`classifier` gives the logits, shape {logits}; `model.classify(image)` applies the softmax and
names the top classes.

## Step through it yourself

Every node of the graph also has a plain NumPy version: the *reference backend* runs the same
graph with the kernels' NumPy references (`Node.reference` in
[`tinymvit/graph.py`](../tinymvit/graph.py); `Graph.run_reference` is the loop to put a
breakpoint in):

```python
import tinymvit
from tinymvit.debug import first_divergence

model = tinymvit.load("path/to/checkpoint", backend="numpy")   # no compiled code at all
pixel_values = model.preprocess("photo.jpg")
out = model(pixel_values)                                      # slow, and readable
first_divergence(model, pixel_values)     # None: both backends agree on every node
```

On this page's model the two backends give logits of shape {nl} and agree on every node within
1e-5: {agree}. Each kernel file reads maths -> NumPy reference -> fast kernel, with the SIMD
and register-tile machinery in [`kernels/simd.py`](../kernels/simd.py).
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/tour.md differs from what the code gives")
    args = parser.parse_args()
    page = DOCS / "tour.md"
    if args.check:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            text = tour(Path(tmp) / FIGURE)
        old = page.read_text() if page.exists() else ""
        if text != old:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                       "docs/tour.md", "generated"))
            sys.exit("make_tour: docs/tour.md is out of date: run python docs/make_tour.py")
        print("docs/tour.md is up to date")
        return
    text = tour(DOCS / FIGURE)
    page.write_text(text)
    print(f"wrote {page} and {DOCS / FIGURE}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()

"""Looking at segmentation results: colour palette, label PNGs, overlays, class areas.

The PASCAL VOC colour map gives class ``i`` a colour by spreading the bits of ``i``
over the three channels, most significant colour bit first::

    for j in 0..7:
        R |= bit(i, 3j + 0) << (7 - j)
        G |= bit(i, 3j + 1) << (7 - j)
        B |= bit(i, 3j + 2) << (7 - j)

so 0 = black, 1 = (128,0,0), 2 = (0,128,0), 3 = (128,128,0), 4 = (0,0,128), ...  The
same rule gives distinct colours for any index below 2**24, so it also serves models
with more than 256 classes.

An overlay blends each pixel of class ``k`` as ``(1 - alpha) * photo + alpha * palette[k]``
(rounded to uint8); a class named "background" at index 0 is left un-tinted.
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError
from .images import load_image
from .outputs import atomic_write, printable
from .postprocess import label_name

__all__ = ["palette", "save_label_png", "overlay", "class_fractions"]


def palette(num_classes=256):
    """The PASCAL VOC colour map: (num_classes, 3) uint8, row i = colour of class i."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 0:
        raise InputError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    c = np.arange(num_classes, dtype=np.int64)          # (n,) remaining bits of each index
    pal = np.zeros((num_classes, 3), dtype=np.int64)     # (n, 3)
    for j in range(8):
        for ch in range(3):
            pal[:, ch] |= ((c >> ch) & 1) << (7 - j)
        c = c >> 3
    return pal.astype(np.uint8)


def _check_labels(labels, what="labels"):
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{what} must be a 2-D integer array (H, W), got shape {labels.shape} "
                         f"dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise InputError(f"{what} must be >= 0, found {labels.min()}")
    return labels


def save_label_png(labels, path, num_classes):
    """Save a label map as a PNG whose pixel values ARE the label indices.

    labels: (H, W) integer array with values in [0, num_classes).
    With num_classes <= 256 the PNG is palette ("P") mode with the VOC colours, so it
    looks coloured in any viewer; with more classes it is 16-bit grey ("I;16").
    Either way ``np.array(Image.open(path)) == labels`` (the round trip is exact).
    The file is written atomically (see :func:`tinymvit.outputs.atomic_write`).
    """
    labels = _check_labels(labels)
    if labels.size and labels.max() >= num_classes:
        raise InputError(f"labels contain {labels.max()}, which is not below "
                         f"num_classes={num_classes}")
    if num_classes <= 256:
        im = Image.fromarray(labels.astype(np.uint8))                # (H, W) indices, mode L
        im.putpalette(palette(256).ravel().tolist())                  # L + palette -> P
    elif num_classes <= 65536:
        im = Image.fromarray(labels.astype(np.uint16))               # mode I;16
    else:
        raise InputError(f"num_classes={num_classes}: a PNG label map holds at most 65536 classes")
    atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))
    return path


def class_fractions(labels, id2label=None):
    """Share of the pixels each present class covers, largest first (ties: lower index).

    Returns ``[{"index": int, "label": str, "fraction": float}, ...]``; fractions sum to 1.
    """
    labels = _check_labels(labels)
    if labels.size == 0:
        return []
    counts = np.bincount(labels.ravel())                              # (max+1,)
    present = np.flatnonzero(counts)
    order = present[np.argsort(-counts[present], kind="stable")]
    total = labels.size
    return [{"index": int(i), "label": label_name(id2label, i),
             "fraction": float(counts[i] / total)}
            for i in order]


def _text(font, text):
    """``text`` if the font can draw it, else an ASCII stand-in."""
    try:
        font.getbbox(text)
        return text
    except (UnicodeEncodeError, UnicodeError, ValueError):
        return text.encode("ascii", "replace").decode("ascii")


def overlay(image_rgb, labels, id2label=None, alpha=0.5):
    """Photo with the label map blended over it, plus a legend of the classes present.

    image_rgb: (H, W, 3) uint8 RGB (or anything ``load_image`` accepts).
    labels: (H, W) integer label map of the same size.
    Each pixel of class k becomes ``round((1 - alpha) * photo + alpha * palette[k])``;
    class 0 is left as the photo when its name is "background".  The legend (colour
    swatch + name per tinted class present, largest area first, Pillow's default font)
    is drawn in the top-left corner when it fits inside the image, else appended as a
    strip below the image.  Returns a PIL RGB image; ``im.info["legend"]`` lists the
    legend entries (dicts with index, label, color) and ``im.info["legend_position"]``
    is "inside", "below" or None (nothing to list).
    """
    photo = load_image(image_rgb)                                     # (H, W, 3) uint8
    labels = _check_labels(labels)
    if labels.shape != photo.shape[:2]:
        raise InputError(f"labels shape {labels.shape} does not match the image "
                         f"{photo.shape[:2]}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    n = int(labels.max()) + 1 if labels.size else 1
    pal = palette(n)                                                  # (n, 3)
    untinted_background = label_name(id2label, 0).strip().lower() == "background"
    weight = np.full(n, alpha)                                        # (n,) tint per class
    if untinted_background:
        weight[0] = 0.0
    colour = pal * weight[:, None]                                    # (n, 3) alpha * palette
    blended = np.empty_like(photo)                                    # (H, W, 3) uint8
    rows = max(1, (1 << 20) // max(1, photo.shape[1]))                # row chunks: small temps
    for r0 in range(0, photo.shape[0], rows):
        lab = labels[r0:r0 + rows]                                    # (r, W)
        mix = photo[r0:r0 + rows] * (1.0 - weight[lab])[..., None] + colour[lab]  # float64
        blended[r0:r0 + rows] = np.clip(np.rint(mix), 0, 255)
    out = Image.fromarray(blended)

    entries = [dict(index=f["index"], label=f["label"],
                    color=tuple(int(v) for v in pal[f["index"]]))
               for f in class_fractions(labels, id2label)
               if not (untinted_background and f["index"] == 0)]
    out.info["legend"] = entries
    out.info["legend_position"] = None
    if entries:
        out = _draw_legend(out, entries)
    return out


def _default_font(short_side):
    """Pillow's default font, a little larger on large images when FreeType allows it."""
    try:
        return ImageFont.load_default(size=max(10, round(short_side / 45)))
    except (TypeError, ImportError, OSError):      # Pillow < 10.1 or no FreeType: bitmap font
        return ImageFont.load_default()


def _draw_legend(im, entries, margin=6, pad=4, gap=4):
    """Draw the legend box inside ``im`` if it fits, else on a strip below it."""
    font = _default_font(min(im.size))
    texts = [_text(font, printable(e["label"])) for e in entries]
    measure = ImageDraw.Draw(im)
    boxes = [measure.textbbox((0, 0), t, font=font) for t in texts]
    line_h = max(12, max(b[3] for b in boxes) + 2)                    # row height (px)
    sw = line_h - 2                                                   # swatch side (px)
    widths = [pad + sw + gap + (b[2] - b[0]) + pad for b in boxes]    # one entry, padded
    box_w, box_h = max(widths), 2 * pad + len(entries) * line_h
    W, H = im.size
    info = dict(im.info)

    if box_w + 2 * margin <= W and box_h + 2 * margin <= H:
        draw = ImageDraw.Draw(im)
        x0, y0 = margin, margin
        draw.rectangle([x0, y0, x0 + box_w - 1, y0 + box_h - 1], fill=(255, 255, 255),
                       outline=(0, 0, 0))
        positions = [(x0 + pad, y0 + pad + i * line_h) for i in range(len(entries))]
        info["legend_position"] = "inside"
    else:
        # flow the entries left to right in rows across a strip under the image
        canvas_w = max(W, max(widths) + 2 * pad)
        positions, x, y = [], pad, pad
        for w in widths:
            if x > pad and x + w > canvas_w - pad:
                x, y = pad, y + line_h
            positions.append((x, y))
            x += w + gap
        strip_h = y + line_h + pad
        canvas = Image.new("RGB", (canvas_w, H + strip_h), (255, 255, 255))
        canvas.paste(im, (0, 0))
        positions = [(px, H + py) for px, py in positions]
        im, draw = canvas, ImageDraw.Draw(canvas)
        info["legend_position"] = "below"

    for (px, py), e, t in zip(positions, entries, texts):
        draw.rectangle([px, py + 1, px + sw - 1, py + sw], fill=e["color"], outline=(0, 0, 0))
        draw.text((px + sw + gap, py), t, fill=(0, 0, 0), font=font)
    im.info.update(info)
    return im


# A dark-to-bright colour ramp (black, purple, orange, pale yellow, like matplotlib's "magma"):
# (position 0..1, R, G, B) anchors, linearly interpolated.
HEAT = np.array([[0.00, 0, 0, 4], [0.25, 80, 18, 123], [0.50, 183, 55, 121],
                 [0.75, 252, 137, 97], [1.00, 252, 253, 191]], dtype=np.float64)


def heat_overlay(image_rgb, values, alpha=0.6):
    """The photo with ``values`` (H, W) blended over it as a heat map (per-image min-max
    scaled; NaN: the photo, darkened).  Returns an (H, W, 3) uint8 array."""
    photo = load_image(image_rgb).astype(np.float64)                  # (H, W, 3)
    v = np.asarray(values, np.float64)                                # (H, W)
    seen = np.isfinite(v)
    lo, hi = (v[seen].min(), v[seen].max()) if seen.any() else (0.0, 1.0)
    t = np.where(seen, (v - lo) / (hi - lo if hi > lo else 1.0), 0.0)  # (H, W) in 0..1
    heat = np.stack([np.interp(t, HEAT[:, 0], HEAT[:, c]) for c in (1, 2, 3)], -1)  # (H, W, 3)
    mix = np.where(seen[..., None], (1 - alpha) * photo + alpha * heat, 0.35 * photo)
    return np.clip(np.rint(mix), 0, 255).astype(np.uint8)


def attention_grid(image_rgb, maps, panel=256, margin=6):
    """A grid of attention maps over the photo: one row per stage, one panel per block,
    each titled with its ``title`` (``maps``: what ``Model.attention_maps`` returns).
    Panels are the photo scaled to ``panel`` pixels on its longer side.  Returns a PIL
    RGB image."""
    photo = load_image(image_rgb)                                     # (H, W, 3) uint8
    H, W = photo.shape[:2]
    scale = panel / max(H, W)
    size = (max(1, round(W * scale)), max(1, round(H * scale)))      # (w, h) of a panel
    stages = {}
    for m in maps:
        stages.setdefault(m["title"].split(",")[0], []).append(m)
    font = _default_font(panel)
    line_h = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "Ag", font=font)[3] + 4
    cols, rows = max(len(v) for v in stages.values()), len(stages)
    grid = Image.new("RGB", (margin + cols * (size[0] + margin),
                             margin + rows * (size[1] + line_h + margin)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, blocks in enumerate(stages.values()):
        for c, m in enumerate(blocks):
            x0, y0 = margin + c * (size[0] + margin), margin + r * (size[1] + line_h + margin)
            tile = Image.fromarray(heat_overlay(photo, m["map"])).resize(size, Image.BILINEAR)
            grid.paste(tile, (x0, y0 + line_h))
            draw.text((x0, y0), _text(font, printable(m["title"])), fill=(0, 0, 0), font=font)
    return grid

"""Image preprocessing: RGB uint8 pixels -> the float32 ``pixel_values`` a model eats.

This reproduces, bit for bit, transformers' PIL image processors
(``MobileViTImageProcessorPil`` for MobileViT and MobileViTV2,
``MobileNetV2ImageProcessorPil`` for MobileNetV2) driven by a checkpoint's
``preprocessor_config.json``:

1. **Resize** so the shortest edge is ``S`` (``size={"shortest_edge": S}``): the
   long edge becomes ``int(S * long / short)`` (truncated, not rounded).  The uint8
   image is resized by Pillow itself (``Image.resize(..., reducing_gap=None)``),
   because Pillow's antialiased 8-bit filters cannot be bit-matched any other way.
2. **Center crop** to ``crop_size``: ``top = (H - ch) // 2``, ``left = (W - cw) // 2``;
   an image smaller than the crop is first zero-padded, centred (ceil on top/left).
3. **Rescale**: ``float32(float64(x) * rescale_factor)`` (rescale_factor = 1/255).
4. MobileNetV2 only: **normalize** ``(x - mean) / std`` in float32 (mean = std = 0.5,
   so the values land in [-1, 1]).  MobileViT never normalizes (values in [0, 1]).
5. MobileViT/V2 only: **flip RGB -> BGR** (``do_flip_channel_order``, default True).
6. HWC -> CHW, stack to (N, 3, crop_h, crop_w).

transformers' MobileViT order is resize -> rescale -> crop -> flip, MobileNetV2's is
resize -> crop -> rescale -> normalize.  Cropping and padding commute with the
element-wise rescale (rescale(0) = 0), so one pipeline (crop first, on the smaller
uint8 image) gives identical bits for both; in MobileNetV2 the padded zeros are
then normalized to -1, exactly as in transformers.

:meth:`ImageProcessor.prepare_for_segmentation` does the same resize/rescale/
normalize/flip on the WHOLE image (no crop) at a size chosen so that the network's
stride grid lines up exactly with the input pixels; see its docstring and
``tinymvit.postprocess.logits_to_image_labels`` for the way back.
"""
import math
from dataclasses import dataclass

import numpy as np

from . import limits
from .config import FAMILIES
from .errors import ConfigError, InputError
from .images import ImageError, check_pixel_count, load_image

__all__ = ["ImageProcessor", "SegmentationMeta", "FAMILIES", "RESAMPLE_NAMES"]

RESAMPLE_NAMES = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}
IMAGENET_STANDARD = [0.5, 0.5, 0.5]

# transformers' class defaults, used for every key a preprocessor_config.json leaves out.
_CLASS_DEFAULTS = {
    "mobilevit": dict(  # MobileViTImageProcessorPil (v5): note BICUBIC and shortest_edge 224
        do_resize=True, size={"shortest_edge": 224}, resample=3,
        do_center_crop=True, crop_size={"height": 256, "width": 256},
        do_rescale=True, rescale_factor=1 / 255,
        do_normalize=False, image_mean=IMAGENET_STANDARD, image_std=IMAGENET_STANDARD,
        do_flip_channel_order=True),
    "mobilenet_v2": dict(  # MobileNetV2ImageProcessorPil
        do_resize=True, size={"shortest_edge": 256}, resample=2,
        do_center_crop=True, crop_size={"height": 224, "width": 224},
        do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=IMAGENET_STANDARD, image_std=IMAGENET_STANDARD),
}
_PROCESSOR_TYPE = {"mobilevit": "MobileViTImageProcessor",
                   "mobilenet_v2": "MobileNetV2ImageProcessor"}
_BOOL_KEYS = ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_flip_channel_order")
_SIZE_KEYSETS = ({"shortest_edge"}, {"shortest_edge", "longest_edge"}, {"height", "width"},
                 {"max_height", "max_width"})


@dataclass(frozen=True)
class SegmentationMeta:
    """Where a segmentation input came from.

    original_size: (H, W) of the image as loaded (after EXIF rotation).
    input_size:    (h, w) of the model input made from it (the whole image, resized).
    output_stride: the network's output stride the size was chosen for.
    """
    original_size: tuple
    input_size: tuple
    output_stride: int


def _processor_kind(family):
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    return "mobilenet_v2" if family == "mobilenet_v2" else "mobilevit"


def _show(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + "...)"


def _side(value, what, source):
    """An image side from the config: a positive int no larger than limits.MAX_SIDE."""
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
            or not 1 <= value <= limits.MAX_SIDE):
        raise ConfigError(f"{source}: {what} must be a positive integer no larger than "
                          f"{limits.MAX_SIDE} (tinymvit.limits.MAX_SIDE), got {_show(value)}")
    return int(value)


def _parse_size(value, default_to_square, what, source):
    """transformers' get_size_dict: int / [h, w] / dict -> a dict with a supported key set."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"height": value[0], "width": value[1]}
    if not isinstance(value, dict) or set(value) not in _SIZE_KEYSETS:
        raise ConfigError(f"{source}: {what} must be an int, [height, width], or a dict with keys "
                          f"{{'shortest_edge'}}, {{'shortest_edge', 'longest_edge'}}, "
                          f"{{'height', 'width'}} or {{'max_height', 'max_width'}}; "
                          f"got {_show(value)}")
    return {k: _side(v, f"{what}[{k!r}]", source) for k, v in value.items()}


def _finite_number(value, what, source, positive=False):
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or (positive and value <= 0)):
        raise ConfigError(f"{source}: {what} must be a finite number{' > 0' if positive else ''}, "
                          f"got {_show(value)}")
    return float(value)


def _parse_mean_std(value, what, source):
    values = list(value) if isinstance(value, (list, tuple)) else [value] * 3
    if len(values) != 3:
        raise ConfigError(f"{source}: {what} must be a number or a list of 3 numbers, "
                          f"got {_show(value)}")
    return [_finite_number(v, f"{what}[{i}]", source, positive=what == "image_std")
            for i, v in enumerate(values)]


def _shortest_edge_size(height, width, short_target):
    """transformers' get_resize_output_image_size(default_to_square=False) -> (new_h, new_w)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = short_target, int(short_target * long / short)   # truncation
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _size_with_aspect_ratio(height, width, size, max_size):
    """transformers' get_size_with_aspect_ratio (shortest_edge + longest_edge) -> (new_h, new_w)."""
    raw_size = None
    min_original, max_original = float(min(height, width)), float(max(height, width))
    if max_original / min_original * size > max_size:
        raw_size = max_size * min_original / max_original
        size = int(round(raw_size))
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    if width < height:
        oh = int(raw_size * height / width) if raw_size is not None else int(size * height / width)
        return oh, size
    ow = int(raw_size * width / height) if raw_size is not None else int(size * width / height)
    return size, ow


def _center_crop(image, crop_h, crop_w):
    """transformers' center_crop on an (H, W, C) array, zero-padding a too-small image."""
    H, W = image.shape[:2]
    top, left = (H - crop_h) // 2, (W - crop_w) // 2
    if top >= 0 and left >= 0 and top + crop_h <= H and left + crop_w <= W:
        return image[top:top + crop_h, left:left + crop_w]
    new_h, new_w = max(crop_h, H), max(crop_w, W)
    padded = np.zeros((new_h, new_w) + image.shape[2:], dtype=image.dtype)
    top_pad, left_pad = math.ceil((new_h - H) / 2), math.ceil((new_w - W) / 2)
    padded[top_pad:top_pad + H, left_pad:left_pad + W] = image
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top):min(new_h, top + crop_h), max(0, left):min(new_w, left + crop_w)]


class ImageProcessor:
    """Turns images into ``pixel_values`` exactly like the checkpoint's transformers processor.

    Build it with :meth:`from_config`.  ``processor(images)`` returns float32
    (N, 3, crop_h, crop_w); :meth:`prepare_for_segmentation` returns the whole image.
    Attributes (parsed, canonical): ``family``, ``do_resize``, ``size`` (dict),
    ``resample`` (PIL int), ``do_center_crop``, ``crop_size`` (dict), ``do_rescale``,
    ``rescale_factor``, ``do_normalize``, ``image_mean``, ``image_std``,
    ``do_flip_channel_order``.
    """

    def __init__(self, family, settings):
        self.family = family
        self._kind = _processor_kind(family)
        self._settings = dict(settings)
        for key, value in settings.items():
            setattr(self, key, value)
        if self._kind == "mobilevit":
            self.do_normalize_effective = False          # MobileViT's processor never normalizes
            self.do_flip_effective = self.do_flip_channel_order
        else:
            self.do_normalize_effective = self.do_normalize
            self.do_flip_effective = False               # MobileNetV2 stays RGB

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, preprocessor_config, family, image_size,
                    source="preprocessor config"):
        """Parse a ``preprocessor_config.json`` dict (current or legacy form) for ``family``.

        preprocessor_config: the JSON dict, or None for the hub convention
            (shortest_edge = image_size + 32, crop = image_size, BILINEAR).
        family: config.json ``model_type``: "mobilevit", "mobilevitv2" or "mobilenet_v2".
        image_size: config.json ``image_size`` (only used when the dict is None).
        source: the file the dict came from, named in error messages.
        Keys left out (or null) take transformers' class defaults.  The legacy key
        ``do_flip_channels`` is ignored (as transformers does); ``size``/``crop_size``
        may be ints (legacy) or dicts.
        """
        kind = _processor_kind(family)
        settings = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                    for k, v in _CLASS_DEFAULTS[kind].items()}
        if preprocessor_config is None:
            s = _side(image_size, "image_size", source)
            settings.update(size={"shortest_edge": s + 32}, crop_size={"height": s, "width": s},
                            resample=2)
            return cls(family, settings)
        if not isinstance(preprocessor_config, dict):
            raise ConfigError(f"{source}: must be a JSON object (dict), got "
                              f"{type(preprocessor_config).__name__}")
        cfg = {k: v for k, v in preprocessor_config.items() if v is not None}
        default_to_square = bool(cfg.get("default_to_square", False))
        for key in _BOOL_KEYS:
            if key in cfg and key in settings:
                if not isinstance(cfg[key], bool):
                    raise ConfigError(f"{source}: {key} must be true/false, "
                                      f"got {_show(cfg[key])}")
                settings[key] = cfg[key]
        if "size" in cfg:
            settings["size"] = _parse_size(cfg["size"], default_to_square, "size", source)
        if "crop_size" in cfg:
            crop = _parse_size(cfg["crop_size"], True, "crop_size", source)
            if set(crop) != {"height", "width"}:
                raise ConfigError(f"{source}: crop_size needs 'height' and 'width', "
                                  f"got {_show(cfg['crop_size'])}")
            settings["crop_size"] = crop
        if "resample" in cfg:
            r = cfg["resample"]
            if (isinstance(r, bool) or not isinstance(r, (int, np.integer))
                    or int(r) not in RESAMPLE_NAMES):
                raise ConfigError(f"{source}: resample must be a PIL filter number "
                                  f"{RESAMPLE_NAMES}, got {_show(r)}")
            settings["resample"] = int(r)
        if "rescale_factor" in cfg:
            settings["rescale_factor"] = _finite_number(cfg["rescale_factor"], "rescale_factor",
                                                        source, positive=True)
        for key in ("image_mean", "image_std"):
            if key in cfg:
                settings[key] = _parse_mean_std(cfg[key], key, source)
        processor = cls(family, settings)
        lut = processor._value_table()
        if not np.isfinite(lut).all():
            raise ConfigError(f"{source}: rescale_factor={settings['rescale_factor']!r}, "
                              f"image_mean={settings['image_mean']!r} and "
                              f"image_std={settings['image_std']!r} map some pixel values "
                              f"outside the float32 range")
        return processor

    def to_dict(self):
        """The parsed settings as a current-format ``preprocessor_config.json`` dict."""
        d = {"image_processor_type": _PROCESSOR_TYPE[self._kind]}
        for key, value in self._settings.items():
            d[key] = dict(value) if isinstance(value, dict) else list(value) \
                if isinstance(value, list) else value
        return d

    def __repr__(self):
        return (f"ImageProcessor(family={self.family!r}, size={self.size}, "
                f"crop_size={self.crop_size if self.do_center_crop else None}, "
                f"resample={RESAMPLE_NAMES[self.resample]}, "
                f"normalize={self.do_normalize_effective}, "
                f"bgr={self.do_flip_effective})")

    # ------------------------------------------------------------------ pieces
    def output_size(self):
        """(height, width) of every image :meth:`preprocess` makes, where that does not
        depend on the image (a center crop, or a resize to a fixed height and width);
        None otherwise."""
        if self.do_center_crop:
            return self.crop_size["height"], self.crop_size["width"]
        if self.do_resize and "height" in self.size:
            return self.size["height"], self.size["width"]
        return None

    def resize_size(self, height, width):
        """(new_h, new_w) the resize step gives an image of (height, width) pixels."""
        s = self.size
        if "longest_edge" in s:
            return _size_with_aspect_ratio(height, width, s["shortest_edge"], s["longest_edge"])
        if "shortest_edge" in s:
            return _shortest_edge_size(height, width, s["shortest_edge"])
        if "max_height" in s:
            scale = min(s["max_height"] / height, s["max_width"] / width)
            return int(height * scale), int(width * scale)
        return s["height"], s["width"]

    def _pil_resize(self, rgb, new_h, new_w, why=None):
        """Pillow resize of an (H, W, 3) uint8 array -> (new_h, new_w, 3) uint8.

        The target size is checked against ``limits.MAX_IMAGE_PIXELS`` first, so a thin
        strip cannot make the shortest-edge rule allocate gigabytes.
        """
        why = why or f"size={self.size}"
        if new_h <= 0 or new_w <= 0:
            raise ImageError(f"image of {rgb.shape[1]}x{rgb.shape[0]} pixels would be resized to "
                             f"{new_w}x{new_h} ({why}); it is too thin")
        check_pixel_count(new_h, new_w, f"image of {rgb.shape[1]}x{rgb.shape[0]} pixels",
                          f"would be resized ({why}) to")
        from PIL import Image
        im = Image.fromarray(rgb).resize((new_w, new_h), resample=self.resample, reducing_gap=None)
        return np.asarray(im)                                        # (new_h, new_w, 3) uint8

    def _value_table(self):
        """(3, 256) float32: the value each uint8 level of each INPUT (RGB) channel becomes.

        Rescale is float32(float64(v) * rescale_factor), normalize (v - mean) / std in
        float32, exactly as transformers computes them element by element, so looking
        the 256 levels up is bit-identical to computing on the image, and needs no
        float64 copy of it.
        """
        with np.errstate(all="ignore"):           # overflow is checked for at load time
            x = np.arange(256, dtype=np.float64)
            x = (x * self.rescale_factor if self.do_rescale else x).astype(np.float32)  # (256,)
            table = np.repeat(x[None], 3, axis=0)                                       # (3, 256)
            if self.do_normalize_effective:
                mean = np.array(self.image_mean, dtype=np.float32)[:, None]             # (3, 1)
                std = np.array(self.image_std, dtype=np.float32)[:, None]
                table = (table - mean) / std                                            # float32
        return table

    def _to_values(self, hwc):
        """Rescale / normalize / flip an (h, w, 3) uint8 image -> (3, h, w) float32."""
        table = self._value_table()                                                  # (3, 256)
        order = (2, 1, 0) if self.do_flip_effective else (0, 1, 2)                   # BGR flip
        out = np.empty((3,) + hwc.shape[:2], dtype=np.float32)                       # (3, h, w)
        for c, src in enumerate(order):
            np.take(table[src], hwc[:, :, src], out=out[c])
        return out

    # ------------------------------------------------------------------ classification
    def preprocess(self, images):
        """One image or a list of images -> float32 pixel_values (N, 3, crop_h, crop_w).

        Each image is anything :func:`tinymvit.images.load_image` accepts.
        """
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            raise InputError("preprocess() got an empty list of images")
        out = []
        for image in batch:
            x = load_image(image)                                          # (H, W, 3) uint8
            if self.do_resize:
                x = self._pil_resize(x, *self.resize_size(*x.shape[:2]))   # (h, w, 3) uint8
            if self.do_center_crop:
                x = _center_crop(x, self.crop_size["height"], self.crop_size["width"])
            out.append(self._to_values(x))                                 # (3, ch, cw) float32
        shapes = {a.shape for a in out}
        if len(shapes) > 1:
            raise InputError(f"images have different sizes after preprocessing {sorted(shapes)}; "
                             f"enable do_center_crop or pass the images one at a time")
        return np.stack(out)                                               # (N, 3, ch, cw)

    __call__ = preprocess

    # ------------------------------------------------------------------ segmentation
    def segmentation_input_size(self, height, width, size=None, *, output_stride):
        """Model-input (h, w) for a whole (height, width) image; see prepare_for_segmentation."""
        if size is None:
            size = max(self.crop_size["height"], self.crop_size["width"])
        if isinstance(size, str):
            if size != "native":
                raise InputError(f"size must be a positive int, None or 'native', got {size!r}")
            scale = 1.0
        else:
            size = _positive_int_input(size, "size")
            if size > limits.MAX_SIDE:
                raise InputError(f"size must be at most {limits.MAX_SIDE} "
                                 f"(tinymvit.limits.MAX_SIDE), got {size}")
            scale = size / max(height, width)
        os_ = _positive_int_input(output_stride, "output_stride")
        if self.family == "mobilenet_v2":
            # OS*k + 1: every stride-2 TF-SAME conv sees an odd size, so output i sits on input OS*i
            def fit(n):
                return os_ * max(1, round((n * scale - 1) / os_)) + 1
        else:
            # multiples of 32: even sizes at every stride-2 conv and every 2x2 unfold, no internal
            # resize; MobileViTV2 needs at least 2x2 at stride 32
            min_k = 2 if self.family == "mobilevitv2" else 1

            def fit(n):
                return 32 * max(min_k, round(n * scale / 32))
        return fit(height), fit(width)

    def prepare_for_segmentation(self, image, size=None, *, output_stride):
        """The WHOLE image (no crop) as model input for semantic segmentation.

        image: anything :func:`tinymvit.images.load_image` accepts.
        size:  target length of the LONGER edge (default: the crop size, e.g. 512 or 513,
               the scale these models were trained and evaluated at), or "native" to keep
               the original scale.  Aspect ratio is kept, each side rounded to the
               family's grid: MobileNetV2 -> a multiple of ``output_stride`` plus 1
               (513 = 32*16 + 1), MobileViT/V2 -> a multiple of 32.
        output_stride: the segmentation model's output stride (8 or 16).
        Returns (pixel_values (1, 3, h, w) float32, SegmentationMeta); the resize is the
        processor's Pillow resize, then the same rescale / normalize / flip.
        """
        rgb = load_image(image)                                                  # (H, W, 3)
        H, W = rgb.shape[:2]
        h, w = self.segmentation_input_size(H, W, size, output_stride=output_stride)
        if (h, w) != (H, W):
            rgb = self._pil_resize(rgb, h, w, f"segmentation size={size}")          # (h, w, 3)
        pixel_values = self._to_values(rgb)[None]                                # (1, 3, h, w)
        return pixel_values, SegmentationMeta((H, W), (h, w), int(output_stride))


def _positive_int_input(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)

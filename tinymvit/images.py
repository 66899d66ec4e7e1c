"""Loading images into RGB uint8 arrays, the way transformers' pipelines do.

transformers' ``load_image`` opens a file with Pillow, applies the EXIF orientation
tag (``ImageOps.exif_transpose``: a phone photo stored sideways comes out upright)
and converts to RGB with ``Image.convert("RGB")``.  Pillow's conversion rules
therefore apply to every mode:

* L / 1 / I / I;16 / F: the grey value is copied to R, G and B (for I, I;16 and F it is
  clipped to 0..255, not rescaled);
* P: the palette is looked up;  CMYK / YCbCr / LAB / HSV: converted to RGB;
* RGBA / LA / PA / a transparent P: the alpha channel is DROPPED (not composited on
  white).

We do exactly that, so our pixels are the pixels transformers would see.  NumPy
arrays are taken as already decoded: (H,W,3) RGB as is, (H,W) or (H,W,1) grey
repeated to three channels, and (H,W,4) RGBA with alpha dropped (what
``convert("RGB")`` does to the same data as a PIL image).
"""
import sys
from pathlib import Path

import numpy as np

from . import limits
from .errors import TinyMViTError

__all__ = ["ImageError", "load_image", "check_pixel_count"]


class ImageError(TinyMViTError, ValueError):
    """An image input is missing, unreadable, not an image, or has the wrong type/shape/size."""


def check_pixel_count(height, width, what, verb="has"):
    """Raise ImageError if a (height, width) image would exceed ``limits.MAX_IMAGE_PIXELS``.

    Called before the pixels are decoded or allocated (``what`` names the image).
    """
    if height * width > limits.MAX_IMAGE_PIXELS:
        raise ImageError(f"{what} {verb} {width}x{height} = {height * width / 1e6:.1f} "
                         f"megapixels, above the limit of {limits.MAX_IMAGE_PIXELS / 1e6:.1f} "
                         f"megapixels (tinymvit.limits.MAX_IMAGE_PIXELS); downscale it first")


def is_pil_image(x):
    """Whether ``x`` is a ``PIL.Image.Image`` -- without importing Pillow (~12 ms of a
    start-up that a model fed arrays never needs): until Pillow's Image class exists (another
    thread may be importing it right now), nothing is an instance of it."""
    image_class = getattr(sys.modules.get("PIL.Image"), "Image", None)
    return image_class is not None and isinstance(x, image_class)


def describe_image(image):
    if isinstance(image, np.ndarray):
        return f"array of shape {image.shape} and dtype {image.dtype}"
    if is_pil_image(image):
        return f"PIL image (mode {image.mode}, size {image.size[0]}x{image.size[1]})"
    return f"{type(image).__name__} {image!r}"[:200]


def _open_path(path):
    """Open, fully decode and EXIF-orient an image file; errors become ImageError."""
    try:
        exists, is_file = path.exists(), path.is_file()
    except (OSError, ValueError) as e:          # e.g. a name too long, or holding a NUL byte
        raise ImageError(f"{path}: cannot access this path ({e})") from None
    if not exists:
        raise ImageError(f"{path}: image file not found")
    if not is_file:
        raise ImageError(f"{path}: not a file (expected an image file such as .jpg or .png)")
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            check_pixel_count(im.height, im.width, str(path))   # from the header: nothing decoded
            im.load()                       # decode now, so truncated files fail here
            return _to_rgb(im, str(path))
    except (ImageError, MemoryError):
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: {e}; tinymvit reads at most "
                         f"{limits.MAX_IMAGE_PIXELS / 1e6:.1f} megapixels") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file Pillow can read (expected JPEG, PNG, BMP, "
                         f"GIF, TIFF, WebP, ...)") from None
    except Exception as e:  # noqa: BLE001  Pillow's decoders raise many types on damaged files
        raise ImageError(f"{path}: unreadable or corrupt image file ({type(e).__name__}: {e})") \
            from None


def _to_rgb(im, name):
    """EXIF transpose + convert("RGB") of a PIL image -> (H, W, 3) uint8 C-contiguous."""
    from PIL import ImageOps
    try:
        im = ImageOps.exif_transpose(im)
        rgb = im.convert("RGB")
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001  damaged EXIF / palette data raise many types
        raise ImageError(f"{name}: cannot convert this image (mode {im.mode}) to RGB "
                         f"({type(e).__name__}: {e})") from None
    if rgb.width == 0 or rgb.height == 0:
        raise ImageError(f"{name}: zero-sized image ({rgb.width}x{rgb.height}); expected at "
                         f"least 1x1 pixels")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _from_array(a):
    what = describe_image(a)
    if a.dtype != np.uint8:
        raise ImageError(f"image {what}: expected dtype uint8 (0..255 RGB values); convert "
                         f"floats with (x * 255).round().astype(np.uint8)")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ImageError(f"image {what}: expected shape (H, W, 3) RGB, (H, W) grey or "
                         f"(H, W, 4) RGBA")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"image {what}: zero-sized image; expected at least 1x1 pixels")
    check_pixel_count(a.shape[0], a.shape[1], f"image {what}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)             # grey -> R = G = B
    elif a.shape[2] == 4:
        a = a[:, :, :3]                         # RGBA -> RGB: alpha dropped, like convert("RGB")
    return np.ascontiguousarray(a)


def load_image(image):
    """Return the image as an RGB uint8 array of shape (H, W, 3), C-contiguous.

    ``image`` is a file path (str or Path), a ``PIL.Image.Image``, or a uint8 NumPy
    array of shape (H, W, 3), (H, W), (H, W, 1) or (H, W, 4).  Files and PIL images
    get ``ImageOps.exif_transpose`` then ``.convert("RGB")``, as transformers'
    ``load_image`` does.  Raises :class:`ImageError` for anything else.
    """
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if is_pil_image(image):
        if image.width == 0 or image.height == 0:
            raise ImageError(f"image {describe_image(image)}: zero-sized image; expected at least "
                             f"1x1 pixels")
        check_pixel_count(image.height, image.width, f"image {describe_image(image)}")
        return _to_rgb(image, f"image {describe_image(image)}")
    if isinstance(image, (str, Path)):
        if isinstance(image, str) and not image:
            raise ImageError("image path is an empty string")
        if isinstance(image, str) and image.startswith(("http://", "https://")):
            raise ImageError(f"{image}: URLs are not supported; download the image and pass "
                             f"the local file path")
        return _open_path(Path(image))
    raise ImageError(f"unsupported image input {describe_image(image)}: expected a file path, a "
                     f"PIL.Image.Image, or a uint8 NumPy array (H, W, 3)")

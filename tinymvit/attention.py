"""What the attention layers attend to: ``model.attention_maps(image)``.

The transformer of a MobileViT stage works on patch tokens: the stage's feature map
(h, w) is cut into p x p patches, ``N = nh * nw`` of them, and token (q, n) is the
pixel at position q inside patch n (``P = p * p`` positions; see
``kernels/patches.py``).  Attention runs along N, between the pixels that sit at the
same place in every patch.

* **MobileViTV2** (separable attention): for each position q, one query channel gives
  every patch a score, a softmax over the patches,
  ``scores[0, 0, q, n] = softmax_n(query[q, n])``, shape (1, 1, P, N): the weights of
  the context vector, i.e. how much each patch contributes.
* **MobileViT** (multi-head attention): for each position q, ordinary attention
  between the N patches, ``probs[q, head, i, j] = softmax_j(Q_i . K_j / sqrt(hd))``,
  shape (P, heads, N, N).  The map shows the attention each patch j *receives*,
  averaged over the heads and the queries i.

Either way one value per token; placed back at its pixel (the fold of
``kernels/patches.py``) this is a map at the stage's resolution, which is then sampled
at every pixel of the original image through the preprocessing (resize, center crop)
and the network's strides (feature pixel i is centred on input pixel S*i).  Pixels the
model did not see (outside the center crop, or MobileViTV2's leftover rows and
columns) are NaN.

The scores are computed from the planned qkv tensors with NumPy, exactly as
transformers computes them (float64 softmax, returned as float32).
"""
import math
import re

import numpy as np

from .errors import InputError
from .graph import MultiHeadAttention, SeparableAttention, Unfold
from .images import load_image
from .kernels.patches import fold_patches_reference
from .postprocess import softmax


def attention_maps(model, image):
    """One dict per attention block of ``model``, in execution order (see the module doc):

    name    the block's attention module in the checkpoint, e.g.
            ``mobilevitv2.encoder.layer.2.transformer.layer.0.attention``
    title   "layer 2, block 0" (its stage and block)
    scores  the tensor transformers computes there, float32: MobileViTV2's context scores
            (1, 1, P, N), MobileViT's attention probabilities (P, heads, N, N)
    map     (H, W) float32 aligned with the original image (NaN where the model did not
            look)

    ``image``: a path, PIL image or uint8 array, preprocessed by the checkpoint's
    processor as transformers would; or float32 ``pixel_values`` of one image
    (1, C, h, w), whose map is then (h, w).
    """
    if model.family == "mobilenet_v2":
        raise InputError("MobileNetV2 has no attention layers: attention maps need a MobileViT "
                         "or MobileViTV2 checkpoint")
    if isinstance(image, np.ndarray) and image.dtype == np.float32:
        pixel_values = image
        if pixel_values.ndim != 4 or pixel_values.shape[0] != 1:
            raise InputError(f"pixel_values for attention maps must be one image (1, C, h, w), "
                             f"got shape {pixel_values.shape}")
        rows, cols = (np.arange(n, dtype=np.float64) for n in pixel_values.shape[2:])
    else:
        rgb = load_image(image)                                             # (H, W, 3) uint8
        pixel_values = model.preprocess(rgb)                                # (1, 3, h, w)
        rows, cols = _input_coordinates(model.processor, rgb.shape[:2])
    graph = model.graph
    blocks = [n for n in graph.nodes if isinstance(n, (SeparableAttention, MultiHeadAttention))]
    qkv = model._run(pixel_values, keep=[n.inputs[0] for n in blocks])    # checks the input
    shapes, args = graph.infer(pixel_values.shape)
    h_in, w_in = pixel_values.shape[2:]
    maps, unfold = [], None
    for node, node_args in zip(graph.nodes, args):
        if isinstance(node, Unfold):
            unfold = (node, shapes[node.inputs[0]], node_args)
        if node not in blocks:
            continue
        x = qkv[node.inputs[0]][0]                                          # (P, N, C)
        if isinstance(node, SeparableAttention):
            scores = softmax(x[None, None, :, :, 0], axis=-1)               # (1, 1, P, N)
            received = scores[0, 0]                                         # (P, N)
        else:
            heads = node.num_heads
            P, N, c3 = x.shape
            q, k = (x[..., i * c3 // 3:(i + 1) * c3 // 3].astype(np.float64)
                    .reshape(P, N, heads, -1) for i in range(2))            # (P, N, heads, hd)
            logits = np.einsum("pihd,pjhd->phij", q, k) / math.sqrt(q.shape[-1])
            scores = softmax(logits, axis=-1)                               # (P, heads, N, N)
            received = scores.mean(axis=(1, 2))                             # (P, N)
        maps.append({"name": node.name, "title": _title(node.name), "scores": scores,
                     "map": _to_image(received, unfold, (h_in, w_in), rows, cols)})
    return maps


def _title(name):
    found = re.search(r"encoder\.layer\.(\d+)\.transformer\.layer\.(\d+)", name)
    return f"layer {found[1]}, block {found[2]}" if found else name


def _input_coordinates(processor, size):
    """Model-input (row, column) coordinates of the centres of the original pixels, through
    the processor's resize (half-pixel centres) and center crop (NaN: cropped away)."""
    coords = []
    for n, axis in zip(size, ("height", "width")):
        r = processor.resize_size(*size)[0 if axis == "height" else 1] if processor.do_resize \
            else n
        y = (np.arange(n) + 0.5) * r / n - 0.5                               # resized image
        if processor.do_center_crop:
            c = processor.crop_size[axis]
            pad = math.ceil((max(c, r) - r) / 2)                             # as _center_crop
            y = y - (max(0, (r - c) // 2 + pad) - pad)                       # crop coordinates
            y[(y < -0.5) | (y >= c - 0.5)] = np.nan
        coords.append(y)
    return coords


def _to_image(values, unfold, input_size, rows, cols):
    """Token values (P, N) -> the map at the original pixels (nearest token)."""
    node, (_, h, w, _), (nh, nw, resized) = unfold
    p = node.p
    grid = fold_patches_reference(values[None, :, :, None].astype(np.float32), p, nh, nw,
                                  nh * p, nw * p)[0, :, :, 0]               # (nh*p, nw*p)
    index = []
    for coords, n_in, n_feat, n_grid in ((rows, input_size[0], h, nh * p),
                                         (cols, input_size[1], w, nw * p)):
        stride = 2 ** round(math.log2(n_in / n_feat))                       # feature i ~ S*i
        y = np.clip(coords / stride, 0, n_feat - 1)                         # feature map
        if resized is not None:                                             # MobileViT: the
            y = (y + 0.5) * n_grid / n_feat - 0.5                           # map was resized
        i = np.floor(y + 0.5)
        i[np.isnan(coords)] = -1
        i[(i >= n_grid) & (resized is None)] = -1                           # V2 leftovers
        index.append(np.clip(i, -1, n_grid - 1).astype(np.int64))
    r, c = index
    out = grid[np.maximum(r, 0)[:, None], np.maximum(c, 0)[None, :]]       # (H, W)
    out[(r < 0)[:, None] | (c < 0)[None, :]] = np.nan
    return out.astype(np.float32)

"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks"),
as transformers' ``MobileNetV2Model`` (spec §4), ported from TF-slim.

The paper's Table 2, for a 224x224 input (t: expansion, c: output channels,
n: repeats, s: stride of the first repeat):

    input      operator      t   c     n  s      transformers modules
    224² x 3   conv2d 3x3    -   32    1  2      conv_stem.first_conv
    112² x 32  bottleneck    1   16    1  1      conv_stem.{expand_1x1, conv_3x3, reduce_1x1}
    112² x 16  bottleneck    6   24    2  2      layer.0 - layer.1
     56² x 24  bottleneck    6   32    3  2      layer.2 - layer.4
     28² x 32  bottleneck    6   64    4  2      layer.5 - layer.8
     14² x 64  bottleneck    6   96    3  1      layer.9 - layer.11
     14² x 96  bottleneck    6   160   3  2      layer.12 - layer.14
      7² x 160 bottleneck    6   320   1  1      layer.15
      7² x 320 conv2d 1x1    -   1280  1  1      conv_1x1
      7² x 1280 avgpool 7x7  -   -     1  -      pooler
    1 x 1280   conv2d 1x1    -   k     -         classifier (a Linear)

Every width c goes through ``depth_multiplier`` and is rounded to
``depth_divisible_by`` (``adm``); t = 6 is ``expand_ratio``; the stem bottleneck has
no expand conv when ``first_layer_is_expansion``.  BatchNorm eps is ``layer_norm_eps``
(1e-3 on the hub).  With ``tf_padding`` every conv uses TF "SAME" padding computed
from the actual input size.  ``output_stride`` 8/16 replaces late strides by dilation.
"""
from ..config import make_divisible
from .blocks import heads, inverted_residual, mobilenet_v2_deeplab_head, stride_schedule

EXPAND = "expand_ratio"   # t of the table's bottlenecks after the first: config.expand_ratio
BOTTLENECKS = [
    # t       c    n  s
    (1,      16,  1, 1),
    (EXPAND, 24,  2, 2),
    (EXPAND, 32,  3, 2),
    (EXPAND, 64,  4, 2),
    (EXPAND, 96,  3, 1),
    (EXPAND, 160, 3, 2),
    (EXPAND, 320, 1, 1),
]


def build(g, config, head):
    """Append the whole model to ``g``; returns the graph's output names."""
    adm = lambda c: make_divisible(int(round(c * config.depth_multiplier)),  # noqa: E731
                                   config.depth_divisible_by, config.min_depth)
    act, eps = config.hidden_act, config.layer_norm_eps
    pad = "tf_same" if config.tf_padding else "symmetric"

    x = g.to_nhwc(g.input)                                      # (N, 3, H, W) -> (N, H, W, 3)
    x = g.conv(x, "conv_stem.first_conv", adm(32), k=3, stride=2, bn_eps=eps, act=act,
               padding=pad)                                     # -> (N, H/2, W/2, adm(32))
    blocks = [(t, c, s if j == 0 else 1) for t, c, n, s in BOTTLENECKS for j in range(n)]
    schedule = stride_schedule([s for _, _, s in blocks], config.output_stride)
    hidden = []
    for i, ((t, c, _), (stride, dilation)) in enumerate(zip(blocks, schedule)):
        stem = i == 0
        x = inverted_residual(g, x, "conv_stem" if stem else f"layer.{i - 1}", adm(c),
                              stride=stride, dilation=dilation,
                              expand_ratio=config.expand_ratio if t == EXPAND else t, act=act,
                              bn_eps=eps, padding=pad, divisor=config.depth_divisible_by,
                              min_value=config.min_depth,
                              expand=not (stem and config.first_layer_is_expansion),
                              residual=not stem)           # (N, h, w, C) -> (N, h/s, w/s, adm(c))
        if not stem:
            hidden.append(x)                                    # hidden states: layer.0..15

    last = 1280 if (config.finegrained_output and config.depth_multiplier < 1.0) else adm(1280)
    # The segmentation head reads block 15; transformers still computes conv_1x1 there.
    return heads(g, x, hidden, head, config, mobilenet_v2_deeplab_head,
                 final=("conv_1x1", last, eps), unused_final=True)  # -> (N, labels[, h, w])

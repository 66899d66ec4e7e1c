"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks"),
as transformers' ``MobileNetV2Model`` (spec §4), ported from TF-slim.

    stage        block                                         out width      stride
    conv_stem    3x3 conv (E), [1x1 expand], depthwise 3x3, 1x1  adm(16)      2
    layer.0..15  inverted residuals, expand_ratio              adm(CHANNELS)  STRIDES
    conv_1x1     1x1 conv, BN, act                             1280 / adm(1280)

adm(c) applies ``depth_multiplier`` then rounds to ``depth_divisible_by``.  BatchNorm
eps is ``layer_norm_eps`` (1e-3 on the hub).  With ``tf_padding`` every conv uses TF
"SAME" padding computed from the actual input size.  ``output_stride`` 8/16 replaces
late strides by dilation, TF-slim style.
"""
from ..config import make_divisible
from .blocks import classifier_head, inverted_residual, mobilenet_v2_deeplab_head

CHANNELS = [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
STRIDES = [2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]


def dilation_schedule(output_stride):
    """(stride, dilation) of blocks 0..15 (TF-slim rule, spec §4.4)."""
    current, dilation, out = 2, 1, []
    for s in STRIDES:
        if current == output_stride:
            out.append((1, dilation))
            dilation *= s                                       # larger dilation from next block
        else:
            out.append((s, 1))
            current *= s
    return out


def build(g, config, head):
    """Append the whole model to ``g``; returns the graph's output names."""
    adm = lambda c: make_divisible(int(round(c * config.depth_multiplier)),  # noqa: E731
                                   config.depth_divisible_by, config.min_depth)
    ch = [adm(c) for c in CHANNELS]
    act, eps = config.hidden_act, config.layer_norm_eps
    pad = "tf_same" if config.tf_padding else "symmetric"
    stem = adm(32)

    x = g.to_nhwc(g.input)                                      # (N, 3, H, W) -> (N, H, W, 3)
    x = g.conv(x, "conv_stem.first_conv", stem, k=3, stride=2, bn_eps=eps, act=act,
               padding=pad)                                     # -> (N, H/2, W/2, E)
    if not config.first_layer_is_expansion:
        x = g.conv(x, "conv_stem.expand_1x1", stem, bn_eps=eps, act=act)  # -> (N, H/2, W/2, E)
    x = g.conv(x, "conv_stem.conv_3x3", stem, k=3, groups=stem, bn_eps=eps, act=act,
               padding=pad)                                     # depthwise, -> (N, H/2, W/2, E)
    x = g.conv(x, "conv_stem.reduce_1x1", ch[0], bn_eps=eps)   # -> (N, H/2, W/2, ch0)

    hidden = []
    for i, (stride, dilation) in enumerate(dilation_schedule(config.output_stride)):
        x = inverted_residual(g, x, f"layer.{i}", ch[i + 1], stride=stride, dilation=dilation,
                              expand_ratio=config.expand_ratio, act=act, bn_eps=eps, padding=pad,
                              divisor=config.depth_divisible_by,
                              min_value=config.min_depth)  # (N, h, w, ch[i]) -> (N, h/s, w/s, ch[i+1])
        hidden.append(x)

    outputs = {"hidden_states": hidden, "last_hidden_state": None, "pooler_output": None,
               "logits": None}
    last = 1280 if (config.finegrained_output and config.depth_multiplier < 1.0) else adm(1280)
    if head == "segmentation":
        # The head reads block 15.  transformers still builds conv_1x1 but never uses its
        # output here, so we skip the compute; its weights are optional (checkpoints exported
        # from TF DeepLab graphs lack them) and shape-checked when present.
        if g.store.has("conv_1x1.convolution.weight"):
            g.store.get("conv_1x1.convolution.weight", (last, ch[-1], 1, 1))
            for name in ("weight", "bias", "running_mean", "running_var"):
                g.store.get(f"conv_1x1.normalization.{name}", (last,))
        outputs["logits"] = mobilenet_v2_deeplab_head(g, x, config)  # -> (N, H/OS, W/OS, labels)
        return outputs
    x = g.conv(x, "conv_1x1", last, bn_eps=eps, act=act)        # -> (N, H/32, W/32, last)
    pooled = g.global_pool(x)                                   # -> (N, last)
    outputs.update(last_hidden_state=x, pooler_output=pooled)
    if head == "classification":
        outputs["logits"] = classifier_head(g, pooled, config.num_labels)  # -> (N, labels)
    return outputs

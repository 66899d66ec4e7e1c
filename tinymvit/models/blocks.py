"""Building blocks shared by the three families: the inverted residual and the heads.

Every function appends nodes to a :class:`~tinymvit.graph.GraphBuilder` and returns
the name of the tensor it produced.  Shapes are NHWC.
"""
from ..config import make_divisible

MOBILEVIT_BN_EPS = 1e-5   # hard-coded in transformers' MobileViT/MobileViTV2 ConvLayer
HEAD_BN_EPS = 1e-5        # every segmentation head (the MobileNetV2 one too)


def inverted_residual(g, x, prefix, cout, *, stride, dilation, expand_ratio, act, bn_eps,
                      padding="symmetric", divisor=8, min_value=None):
    """MobileNetV2 block: expand 1x1 -> depthwise 3x3 -> linear 1x1, residual if shapes allow."""
    cin = g.channels[x]
    hidden = make_divisible(int(round(cin * expand_ratio)), divisor, min_value)
    h = g.conv(x, f"{prefix}.expand_1x1", hidden, bn_eps=bn_eps, act=act,
               padding=padding)                                 # (N, H, W, cin) -> (N, H, W, hidden)
    h = g.conv(h, f"{prefix}.conv_3x3", hidden, k=3, stride=stride, dilation=dilation,
               groups=hidden, bn_eps=bn_eps, act=act,
               padding=padding)                                 # -> (N, H/s, W/s, hidden)
    residual = x if (stride == 1 and cin == cout) else None
    return g.conv(h, f"{prefix}.reduce_1x1", cout, bn_eps=bn_eps, residual=residual,
                  padding=padding)                              # -> (N, H/s, W/s, cout) (+ x)


def classifier_head(g, pooled, num_labels):
    """``classifier``: Linear(C -> num_labels) on the pooled features."""
    return g.linear(pooled, "classifier", num_labels, backbone=False)  # (N, C) -> (N, labels)


def deeplabv3_aspp_head(g, x, config):
    """MobileViT / MobileViTV2 ``segmentation_head``: DeepLabV3 ASPP + 1x1 classifier.

    Branches (all ReLU, BN eps 1e-5): 1x1; three 3x3 convs dilated by ``atrous_rates``
    (padding = rate, so large rates on small maps read zeros); image pooling.
    Concatenated in that order, projected back to ``aspp_out_channels``.
    """
    out = config.aspp_out_channels
    p = "segmentation_head.aspp"
    branches = [g.conv(x, f"{p}.convs.0", out, bn_eps=HEAD_BN_EPS, act="relu",
                       backbone=False)]                         # (N, h, w, C) -> (N, h, w, out)
    for i, rate in enumerate(config.atrous_rates, start=1):
        branches.append(g.conv(x, f"{p}.convs.{i}", out, k=3, dilation=rate, bn_eps=HEAD_BN_EPS,
                               act="relu", backbone=False))    # (N, h, w, C) -> (N, h, w, out)
    pooled = g.global_pool(x)                                   # (N, h, w, C) -> (N, C)
    pooled = g.conv(pooled, f"{p}.convs.4.conv_1x1", out, bn_eps=HEAD_BN_EPS, act="relu",
                    backbone=False)                             # (N, C) -> (N, out)
    branches.append(g.broadcast(pooled, x))                     # (N, out) -> (N, h, w, out)
    y = g.concat(branches)                                      # -> (N, h, w, 5*out)
    y = g.conv(y, f"{p}.project", out, bn_eps=HEAD_BN_EPS, act="relu",
               backbone=False)                                  # -> (N, h, w, out)
    return g.conv(y, "segmentation_head.classifier",
                  config.num_labels, bias=True, backbone=False)  # -> (N, h, w, num_labels)


def mobilenet_v2_deeplab_head(g, x, config):
    """MobileNetV2 ``segmentation_head`` (transformers' ``MobileNetV2DeepLabV3Plus``).

    Not DeepLabV3+: image pooling branch + one 1x1 branch (pool first), projection,
    classifier; ReLU and BN eps 1e-5.  Reads the block-15 output.
    """
    p = "segmentation_head"
    pooled = g.global_pool(x)                                   # (N, h, w, 320) -> (N, 320)
    pooled = g.conv(pooled, f"{p}.conv_pool", 256, bn_eps=HEAD_BN_EPS, act="relu",
                    backbone=False)                             # (N, 320) -> (N, 256)
    pooled = g.broadcast(pooled, x)                             # -> (N, h, w, 256)
    aspp = g.conv(x, f"{p}.conv_aspp", 256, bn_eps=HEAD_BN_EPS, act="relu",
                  backbone=False)                               # (N, h, w, 320) -> (N, h, w, 256)
    y = g.concat([pooled, aspp])                                # -> (N, h, w, 512)
    y = g.conv(y, f"{p}.conv_projection", 256, bn_eps=HEAD_BN_EPS, act="relu",
               backbone=False)                                  # -> (N, h, w, 256)
    return g.conv(y, f"{p}.classifier", config.num_labels, bias=True,
                  backbone=False)                               # -> (N, h, w, num_labels)

"""What the three families share: the inverted residual, the output-stride rule, the heads.

Every function appends nodes to a :class:`~tinymvit.graph.GraphBuilder` and returns
the name of the tensor it produced.  Shapes are NHWC.
"""
from collections import namedtuple

from ..config import make_divisible

MOBILEVIT_BN_EPS = 1e-5   # hard-coded in transformers' MobileViT/MobileViTV2 ConvLayer
HEAD_BN_EPS = 1e-5        # every segmentation head (the MobileNetV2 one too)

Stage = namedtuple("Stage", "block width dim repeats stride")
Stage.__doc__ = """One row of a MobileViT / MobileViTV2 stage table: ``block`` ("inverted residual"
or "mobilevit"), output ``width``, attention ``dim`` (None for inverted residuals), ``repeats``
(blocks, or transformer layers) and the ``stride`` of the stage."""


def stride_schedule(strides, output_stride, current=2):
    """(stride, dilation) of each block whose nominal stride is in ``strides``.

    The DeepLab rule (TF-slim, spec §4.4): once the input has been downsampled
    ``output_stride`` times, a further stride s becomes stride 1 and every later
    block is dilated s times more, so the map keeps its size while the receptive
    field grows as if it had been downsampled.  ``current``: the stem's stride.
    """
    dilation, schedule = 1, []
    for s in strides:
        if current == output_stride:
            schedule.append((1, dilation))
            dilation *= s                                       # larger dilation from next block
        else:
            schedule.append((s, 1))
            current *= s
    return schedule


def inverted_residual(g, x, prefix, cout, *, stride, dilation, expand_ratio, act, bn_eps,
                      padding="symmetric", divisor=8, min_value=None, expand=True, residual=True):
    """MobileNetV2 block: expand 1x1 -> depthwise 3x3 -> linear 1x1, residual if shapes allow.

    MobileNetV2's stem is this block without the residual (``residual=False``), and without
    the expand conv when ``first_layer_is_expansion`` (``expand=False``).
    """
    cin = g.channels[x]
    hidden = make_divisible(int(round(cin * expand_ratio)), divisor, min_value)
    h = x
    if expand:
        h = g.conv(x, f"{prefix}.expand_1x1", hidden, bn_eps=bn_eps, act=act,
                   padding=padding)                        # (N, H, W, cin) -> (N, H, W, hidden)
    h = g.conv(h, f"{prefix}.conv_3x3", g.channels[h], k=3, stride=stride, dilation=dilation,
               groups=g.channels[h], bn_eps=bn_eps, act=act,
               padding=padding)                                 # -> (N, H/s, W/s, hidden)
    residual = x if (residual and stride == 1 and cin == cout) else None
    return g.conv(h, f"{prefix}.reduce_1x1", cout, bn_eps=bn_eps, residual=residual,
                  padding=padding, output_of=prefix)            # -> (N, H/s, W/s, cout) (+ x)


def inverted_residual_stage(g, x, prefix, stage, stride, dilation, config):
    """``<prefix>.layer.{j}``: ``stage.repeats`` inverted residuals, the first with ``stride``
    (MobileViT's and MobileViTV2's MobileNetLayer)."""
    for j in range(stage.repeats):
        x = inverted_residual(g, x, f"{prefix}.layer.{j}", stage.width,
                              stride=stride if j == 0 else 1, dilation=dilation,
                              expand_ratio=config.expand_ratio, act=config.hidden_act,
                              bn_eps=MOBILEVIT_BN_EPS)  # (N, H, W, C) -> (N, H/s, W/s, width)
    return x


def encoder(g, x, table, layer, config):
    """``encoder.layer.{i}`` for each row of a MobileViT / MobileViTV2 stage ``table``, with
    the output-stride rule applied; ``layer`` builds the rows that are not inverted residuals.
    Returns (the last map, the stage outputs: transformers' hidden states)."""
    schedule = stride_schedule([stage.stride for stage in table], config.output_stride)
    hidden = []
    for i, (stage, (stride, dilation)) in enumerate(zip(table, schedule)):
        block = inverted_residual_stage if stage.block == "inverted residual" else layer
        x = block(g, x, f"encoder.layer.{i}", stage, stride, dilation,
                  config)                                       # -> (N, h/s, w/s, width)
        hidden.append(x)
    return x, hidden


def heads(g, x, hidden, head, config, segmentation_head, final=None, unused_final=False):
    """The graph's outputs, from the backbone's last map ``x`` (N, h, w, C).

    segmentation: ``segmentation_head(g, x, config)`` gives the logits (N, h, w, labels);
    otherwise [``final`` 1x1 conv ->] global average pooling (``pooler_output``)
    [-> ``classifier``].  ``final``: (prefix, width, bn_eps) of that conv (BN, activation).
    ``unused_final``: transformers' segmentation model still computes ``final`` but never
    reads it (MobileNetV2): its weights are checked and counted, it is not run.
    """
    outputs = {"hidden_states": hidden, "last_hidden_state": None, "pooler_output": None,
               "logits": None}
    if head == "segmentation":
        if final is not None and unused_final:
            g.unused_conv(x, *final, act=config.hidden_act)     # (N, h, w, C): not run
        outputs["logits"] = segmentation_head(g, x, config)     # -> (N, h, w, labels)
        return outputs
    if final is not None:
        prefix, width, bn_eps = final
        x = g.conv(x, prefix, width, bn_eps=bn_eps, act=config.hidden_act)  # -> (N, h, w, width)
    pooled = g.global_pool(x, "pooler")                         # -> (N, C)
    outputs.update(last_hidden_state=x, pooler_output=pooled)
    if head == "classification":
        outputs["logits"] = g.linear(pooled, "classifier", config.num_labels,
                                     backbone=False)            # (N, C) -> (N, labels)
    return outputs


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
    pooled = g.global_pool(x, f"{p}.convs.4.global_pool", backbone=False)  # -> (N, C)
    pooled = g.conv(pooled, f"{p}.convs.4.conv_1x1", out, bn_eps=HEAD_BN_EPS, act="relu",
                    backbone=False)                             # (N, C) -> (N, out)
    branches.append(g.broadcast(pooled, x, f"{p}.convs.4",
                                backbone=False))                # (N, out) -> (N, h, w, out)
    y = g.concat(branches, f"{p}.concat", backbone=False)       # -> (N, h, w, 5*out)
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
    pooled = g.global_pool(x, f"{p}.avg_pool", backbone=False)  # (N, h, w, 320) -> (N, 320)
    pooled = g.conv(pooled, f"{p}.conv_pool", 256, bn_eps=HEAD_BN_EPS, act="relu",
                    backbone=False)                             # (N, 320) -> (N, 256)
    pooled = g.broadcast(pooled, x, f"{p}.upsample", backbone=False)  # -> (N, h, w, 256)
    aspp = g.conv(x, f"{p}.conv_aspp", 256, bn_eps=HEAD_BN_EPS, act="relu",
                  backbone=False)                               # (N, h, w, 320) -> (N, h, w, 256)
    y = g.concat([pooled, aspp], f"{p}.concat", backbone=False)  # -> (N, h, w, 512)
    y = g.conv(y, f"{p}.conv_projection", 256, bn_eps=HEAD_BN_EPS, act="relu",
               backbone=False)                                  # -> (N, h, w, 256)
    return g.conv(y, f"{p}.classifier", config.num_labels, bias=True,
                  backbone=False)                               # -> (N, h, w, num_labels)

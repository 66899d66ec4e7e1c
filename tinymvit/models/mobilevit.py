"""MobileViT v1 (Mehta & Rastegari, "MobileViT: Light-weight, General-purpose, and
Mobile-friendly Vision Transformer"), as transformers' ``MobileViTModel`` (spec §3).

``n0..n6`` are ``neck_hidden_sizes``, ``h0..h2`` ``hidden_sizes``:

    stage            block                   width   h     n   stride
    conv_stem        3x3 conv, BN, act       n0      -     1   2
    encoder.layer.0  inverted residual       n1      -     1   1
    encoder.layer.1  inverted residual       n2      -     3   2
    encoder.layer.2  MobileViT layer         n3      h0    2   2
    encoder.layer.3  MobileViT layer         n4      h1    4   2
    encoder.layer.4  MobileViT layer         n5      h2    3   2
    conv_1x1_exp     1x1 conv, BN, act       n6 (classification and bare backbone)

(n: inverted residuals, or the transformer layers of a MobileViT layer: 2, 4, 3,
hard-coded in transformers.)  A MobileViT layer: downsampling IR -> full kxk conv ->
1x1 to h -> unfold (resizing odd maps) -> pre-LN transformer (multi-head attention,
MLP) -> LN -> fold -> 1x1 back to the width (BN, act) -> concat with the IR output ->
kxk fusion conv.
"""
from .blocks import MOBILEVIT_BN_EPS as BN_EPS
from .blocks import Stage, deeplabv3_aspp_head, encoder, heads, inverted_residual


def stages(config):
    """The table above for ``config``: one :class:`~.blocks.Stage` per ``encoder.layer``."""
    n, h = config.neck_hidden_sizes, config.hidden_sizes
    return [
        #     block                 width  h     n  stride
        Stage("inverted residual", n[1],  None, 1, 1),
        Stage("inverted residual", n[2],  None, 3, 2),
        Stage("mobilevit",         n[3],  h[0], 2, 2),
        Stage("mobilevit",         n[4],  h[1], 4, 2),
        Stage("mobilevit",         n[5],  h[2], 3, 2),
    ]


def mobilevit_layer(g, x, prefix, stage, stride, dilation, config):
    """encoder.layer.{2,3,4}: (N, H, W, cin) -> (N, H/s, W/s, width)."""
    act, k, p = config.hidden_act, config.conv_kernel_size, config.patch_size
    eps, c, hid = config.layer_norm_eps, stage.width, stage.dim
    mlp = int(hid * config.mlp_ratio)
    residual = inverted_residual(g, x, f"{prefix}.downsampling_layer", c, stride=stride,
                                 dilation=dilation, expand_ratio=config.expand_ratio, act=act,
                                 bn_eps=BN_EPS)                 # (N, H, W, cin) -> (N, h, w, c)
    x = g.conv(residual, f"{prefix}.conv_kxk", c, k=k, bn_eps=BN_EPS,
               act=act)                                         # full conv, never dilated
    fm = g.conv(x, f"{prefix}.conv_1x1", hid)                   # (N, h, w, c) -> (N, h, w, hid)
    t = g.unfold(fm, p, "resize", f"{prefix}.unfolding")        # -> (N, p*p, T, hid), T = ceil
    for j in range(stage.repeats):
        lp = f"{prefix}.transformer.layer.{j}"
        y = g.layer_norm(t, f"{lp}.layernorm_before", eps)      # (N, P, T, hid)
        qkv = g.fused_linear(y, f"{lp}.attention.attention", ["query", "key", "value"], hid,
                             bias=config.qkv_bias)              # -> (N, P, T, 3*hid)
        a = g.multi_head_attention(qkv, f"{lp}.attention",
                                   config.num_attention_heads)  # -> (N, P, T, hid)
        t = g.linear(a, f"{lp}.attention.output.dense", hid, residual=t)  # t + attn
        y = g.layer_norm(t, f"{lp}.layernorm_after", eps)       # (N, P, T, hid)
        m = g.linear(y, f"{lp}.intermediate.dense", mlp, act=act,
                     output_of=f"{lp}.intermediate")            # -> (N, P, T, mlp)
        t = g.linear(m, f"{lp}.output.dense", hid, residual=t,
                     output_of=lp)                              # t + mlp
    t = g.layer_norm(t, f"{prefix}.layernorm", eps)             # (N, P, T, hid)
    fm = g.fold(t, fm, p, "resize", f"{prefix}.folding")        # -> (N, h, w, hid)
    x = g.conv(fm, f"{prefix}.conv_projection", c, bn_eps=BN_EPS,
               act=act)                                         # -> (N, h, w, c)
    x = g.concat([residual, x], f"{prefix}.concat")             # -> (N, h, w, 2c), residual first
    return g.conv(x, f"{prefix}.fusion", c, k=k, bn_eps=BN_EPS, act=act,
                  output_of=prefix)                             # -> (N, h, w, c)


def build(g, config, head):
    """Append the whole model to ``g``; returns the graph's output names."""
    x = g.to_nhwc(g.input)                                      # (N, 3, H, W) -> (N, H, W, 3)
    x = g.conv(x, "conv_stem", config.neck_hidden_sizes[0], k=3, stride=2, bn_eps=BN_EPS,
               act=config.hidden_act)                           # -> (N, H/2, W/2, n0)
    x, hidden = encoder(g, x, stages(config), mobilevit_layer,
                        config)                                 # -> (N, H/OS, W/OS, width)
    # transformers' segmentation model has no conv_1x1_exp
    return heads(g, x, hidden, head, config, deeplabv3_aspp_head,
                 final=("conv_1x1_exp", config.neck_hidden_sizes[6], BN_EPS))  # -> logits

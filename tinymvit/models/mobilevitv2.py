"""MobileViTV2 (Mehta & Rastegari, "Separable Self-attention for Mobile Vision Transformers").

Reads like the architecture table of transformers' ``MobileViTV2Model`` (spec §2),
``wm`` being ``width_multiplier``:

    stage            block                          width           d       n     stride
    conv_stem        3x3 conv, BN, act              clip(32 wm)     -       1     2
    encoder.layer.0  inverted residual              64 wm           -       1     1
    encoder.layer.1  inverted residual              128 wm          -       2     2
    encoder.layer.2  MobileViTV2 layer              256 wm          128 wm  n0    2
    encoder.layer.3  MobileViTV2 layer              384 wm          192 wm  n1    2
    encoder.layer.4  MobileViTV2 layer              512 wm          256 wm  n2    2

(d: attention dim, ``base_attn_unit_dims`` x wm; n: inverted residuals, or the
transformer layers ``n_attn_blocks`` of a MobileViTV2 layer.)  A MobileViTV2 layer:
downsampling IR -> depthwise kxk -> 1x1 to d -> unfold to patches -> n x [x +
SepAttn(GN(x)); x + FFN(GN(x))] -> GN -> fold -> 1x1 (BN, no act).  All GroupNorms have
one group.  BatchNorm eps is 1e-5 (hard-coded in transformers).
"""
from ..config import make_divisible
from .blocks import MOBILEVIT_BN_EPS as BN_EPS
from .blocks import Stage, deeplabv3_aspp_head, encoder, heads, inverted_residual


def stages(config):
    """The table above for ``config``: one :class:`~.blocks.Stage` per ``encoder.layer``."""
    wm = config.width_multiplier
    width = lambda c: make_divisible(c * wm, 8)                 # noqa: E731
    d = [make_divisible(b * wm, 8) for b in config.base_attn_unit_dims]
    n = config.n_attn_blocks
    return [
        #     block                 width                         d     n     stride
        Stage("inverted residual", make_divisible(64 * wm, 16), None, 1,    1),
        Stage("inverted residual", width(128),                  None, 2,    2),
        Stage("mobilevitv2",       width(256),                  d[0], n[0], 2),
        Stage("mobilevitv2",       width(384),                  d[1], n[1], 2),
        Stage("mobilevitv2",       width(512),                  d[2], n[2], 2),
    ]


def mobilevitv2_layer(g, x, prefix, stage, stride, dilation, config):
    """encoder.layer.{2,3,4}: (N, H, W, cin) -> (N, H/s, W/s, width)."""
    act, p, eps = config.hidden_act, config.patch_size, config.layer_norm_eps
    c, d = stage.width, stage.dim
    ffn = int(config.ffn_multiplier * d) // 16 * 16
    x = inverted_residual(g, x, f"{prefix}.downsampling_layer", c, stride=stride,
                          dilation=dilation, expand_ratio=config.expand_ratio, act=act,
                          bn_eps=BN_EPS)                        # (N, H, W, cin) -> (N, h, w, c)
    x = g.conv(x, f"{prefix}.conv_kxk", c, k=config.conv_kernel_size, groups=c,
               bn_eps=BN_EPS, act=act)                          # depthwise, never dilated
    fm = g.conv(x, f"{prefix}.conv_1x1", d)                     # (N, h, w, c) -> (N, h, w, d)
    t = g.unfold(fm, p, "floor", f"{prefix}.unfolding")         # -> (N, p*p, h//p * w//p, d)
    for j in range(stage.repeats):
        lp = f"{prefix}.transformer.layer.{j}"
        y = g.group_norm(t, f"{lp}.layernorm_before", eps)      # (N, P, T, d)
        qkv = g.conv(y, f"{lp}.attention.qkv_proj", 1 + 2 * d, bias=True)  # -> (N, P, T, 1+2d)
        a = g.separable_attention(qkv, f"{lp}.attention")       # -> (N, P, T, d)
        t = g.conv(a, f"{lp}.attention.out_proj", d, bias=True, residual=t)  # t + out_proj(a)
        y = g.group_norm(t, f"{lp}.layernorm_after", eps)       # (N, P, T, d)
        h = g.conv(y, f"{lp}.ffn.conv1", ffn, bias=True, act=act)   # -> (N, P, T, ffn)
        t = g.conv(h, f"{lp}.ffn.conv2", d, bias=True, residual=t,
                   output_of=lp)                                # -> (N, P, T, d), t + ffn
    t = g.group_norm(t, f"{prefix}.layernorm", eps)             # (N, P, T, d)
    fm = g.fold(t, fm, p, "floor", f"{prefix}.folding")         # -> (N, h, w, d), leftovers = 0
    return g.conv(fm, f"{prefix}.conv_projection", c, bn_eps=BN_EPS,
                  output_of=prefix)                             # -> (N, h, w, c), no act


def build(g, config, head):
    """Append the whole model to ``g``; returns the graph's output names."""
    wm = config.width_multiplier
    c0 = make_divisible(min(max(32 * wm, 16), 64), 8, min_value=16)
    x = g.to_nhwc(g.input)                                      # (N, 3, H, W) -> (N, H, W, 3)
    x = g.conv(x, "conv_stem", c0, k=3, stride=2, bn_eps=BN_EPS,
               act=config.hidden_act)                           # -> (N, H/2, W/2, c0)
    x, hidden = encoder(g, x, stages(config), mobilevitv2_layer,
                        config)                                 # -> (N, H/OS, W/OS, width)
    return heads(g, x, hidden, head, config, deeplabv3_aspp_head)  # -> (N, labels[, h, w])

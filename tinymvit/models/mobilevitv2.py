"""MobileViTV2 (Mehta & Rastegari, "Separable Self-attention for Mobile Vision Transformers").

Reads like the architecture table of transformers' ``MobileViTV2Model`` (spec §2):

    stage            block                         out width          stride
    conv_stem        3x3 conv, BN, act             c0                 2
    encoder.layer.0  1 inverted residual           c1                 1
    encoder.layer.1  2 inverted residuals          c2                 2
    encoder.layer.2  MobileViTV2 layer, d0, n0     c3                 2
    encoder.layer.3  MobileViTV2 layer, d1, n1     c4                 2 (dilated at OS 8)
    encoder.layer.4  MobileViTV2 layer, d2, n2     c5                 2 (dilated at OS 8, 16)

A MobileViTV2 layer: downsampling IR -> depthwise kxk -> 1x1 to d -> unfold to
patches -> n x [x + SepAttn(GN(x)); x + FFN(GN(x))] -> GN -> fold -> 1x1 (BN, no act).
All GroupNorms have one group.  BatchNorm eps is 1e-5 (hard-coded in transformers).
"""
from ..config import make_divisible
from .blocks import MOBILEVIT_BN_EPS as BN_EPS
from .blocks import classifier_head, deeplabv3_aspp_head, inverted_residual


def widths(config):
    """(c0..c5, attention dims d0..d2) from ``width_multiplier`` (spec §2.1)."""
    wm = config.width_multiplier
    c0 = make_divisible(min(max(32 * wm, 16), 64), 8, min_value=16)
    c1 = make_divisible(64 * wm, 16)
    c2, c3, c4, c5 = (make_divisible(c * wm, 8) for c in (128, 256, 384, 512))
    dims = [make_divisible(d * wm, 8) for d in config.base_attn_unit_dims]
    return (c0, c1, c2, c3, c4, c5), dims


def mobilevitv2_layer(g, x, prefix, cout, d, n_blocks, dilation, config):
    """encoder.layer.{2,3,4}: (N, H, W, cin) -> (N, H/2, W/2, cout) (stride 1 when dilated)."""
    act, p = config.hidden_act, config.patch_size
    ffn = int(config.ffn_multiplier * d) // 16 * 16
    x = inverted_residual(g, x, f"{prefix}.downsampling_layer", cout,
                          stride=1 if dilation > 1 else 2, dilation=max(dilation // 2, 1),
                          expand_ratio=config.expand_ratio, act=act,
                          bn_eps=BN_EPS)                        # (N, H, W, cin) -> (N, h, w, cout)
    x = g.conv(x, f"{prefix}.conv_kxk", cout, k=config.conv_kernel_size, groups=cout,
               bn_eps=BN_EPS, act=act)                          # depthwise, never dilated
    fm = g.conv(x, f"{prefix}.conv_1x1", d)                     # (N, h, w, cout) -> (N, h, w, d)
    t = g.unfold(fm, p, mode="floor")                           # -> (N, p*p, h//p * w//p, d)
    for j in range(n_blocks):
        lp = f"{prefix}.transformer.layer.{j}"
        y = g.group_norm(t, f"{lp}.layernorm_before", config.layer_norm_eps)  # (N, P, T, d)
        qkv = g.conv(y, f"{lp}.attention.qkv_proj", 1 + 2 * d, bias=True)  # -> (N, P, T, 1+2d)
        a = g.separable_attention(qkv, f"{lp}.attention")       # -> (N, P, T, d)
        t = g.conv(a, f"{lp}.attention.out_proj", d, bias=True, residual=t)  # t + out_proj(a)
        y = g.group_norm(t, f"{lp}.layernorm_after", config.layer_norm_eps)   # (N, P, T, d)
        h = g.conv(y, f"{lp}.ffn.conv1", ffn, bias=True, act=act)   # -> (N, P, T, ffn)
        t = g.conv(h, f"{lp}.ffn.conv2", d, bias=True, residual=t)  # -> (N, P, T, d), t + ffn
    t = g.group_norm(t, f"{prefix}.layernorm", config.layer_norm_eps)      # (N, P, T, d)
    fm = g.fold(t, fm, p, mode="floor")                         # -> (N, h, w, d), leftovers = 0
    return g.conv(fm, f"{prefix}.conv_projection", cout,
                  bn_eps=BN_EPS)                                # -> (N, h, w, cout), no act


def build(g, config, head):
    """Append the whole model to ``g``; returns the graph's output names."""
    (c0, c1, c2, c3, c4, c5), dims = widths(config)
    act, er = config.hidden_act, config.expand_ratio
    dil3 = 2 if config.output_stride == 8 else 1                # dilation of encoder.layer.3
    dil4 = dil3 * 2 if config.output_stride in (8, 16) else 1   # dilation of encoder.layer.4

    x = g.to_nhwc(g.input)                                      # (N, 3, H, W) -> (N, H, W, 3)
    x = g.conv(x, "conv_stem", c0, k=3, stride=2, bn_eps=BN_EPS,
               act=act)                                         # -> (N, H/2, W/2, c0)
    hidden = []
    x = inverted_residual(g, x, "encoder.layer.0.layer.0", c1, stride=1, dilation=1,
                          expand_ratio=er, act=act, bn_eps=BN_EPS)  # -> (N, H/2, W/2, c1)
    hidden.append(x)
    x = inverted_residual(g, x, "encoder.layer.1.layer.0", c2, stride=2, dilation=1,
                          expand_ratio=er, act=act, bn_eps=BN_EPS)  # -> (N, H/4, W/4, c2)
    x = inverted_residual(g, x, "encoder.layer.1.layer.1", c2, stride=1, dilation=1,
                          expand_ratio=er, act=act, bn_eps=BN_EPS)  # residual
    hidden.append(x)
    x = mobilevitv2_layer(g, x, "encoder.layer.2", c3, dims[0], config.n_attn_blocks[0], 1,
                          config)                               # -> (N, H/8, W/8, c3)
    hidden.append(x)
    x = mobilevitv2_layer(g, x, "encoder.layer.3", c4, dims[1], config.n_attn_blocks[1], dil3,
                          config)                               # -> (N, H/16, W/16, c4) at OS32
    hidden.append(x)
    x = mobilevitv2_layer(g, x, "encoder.layer.4", c5, dims[2], config.n_attn_blocks[2], dil4,
                          config)                               # -> (N, H/32, W/32, c5) at OS32
    hidden.append(x)

    outputs = {"hidden_states": hidden, "last_hidden_state": None, "pooler_output": None,
               "logits": None}
    if head == "segmentation":
        outputs["logits"] = deeplabv3_aspp_head(g, x, config)   # -> (N, H/OS, W/OS, labels)
        return outputs
    pooled = g.global_pool(x)                                   # -> (N, c5)
    outputs.update(last_hidden_state=x, pooler_output=pooled)
    if head == "classification":
        outputs["logits"] = classifier_head(g, pooled, config.num_labels)  # -> (N, labels)
    return outputs

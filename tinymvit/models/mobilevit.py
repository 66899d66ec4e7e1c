"""MobileViT v1 (Mehta & Rastegari, "MobileViT: Light-weight, General-purpose, and
Mobile-friendly Vision Transformer"), as transformers' ``MobileViTModel`` (spec §3).

    stage            block                               out width   stride
    conv_stem        3x3 conv, BN, act                   n0          2
    encoder.layer.0  1 inverted residual                 n1          1
    encoder.layer.1  3 inverted residuals                n2          2
    encoder.layer.2  MobileViT layer, h0, 2 transformers n3          2
    encoder.layer.3  MobileViT layer, h1, 4 transformers n4          2 (dilated at OS 8)
    encoder.layer.4  MobileViT layer, h2, 3 transformers n5          2 (dilated at OS 8, 16)
    conv_1x1_exp     1x1 conv, BN, act (classification)  n6

A MobileViT layer: downsampling IR -> full kxk conv -> 1x1 to h -> unfold (resizing
odd maps) -> pre-LN transformer (multi-head attention, MLP) -> LN -> fold ->
1x1 back to C (BN, act) -> concat with the IR output -> kxk fusion conv.
"""
from .blocks import MOBILEVIT_BN_EPS as BN_EPS
from .blocks import classifier_head, deeplabv3_aspp_head, inverted_residual

TRANSFORMER_DEPTHS = (2, 4, 3)   # hard-coded in transformers, not config fields
IR_COUNTS = (1, 3)               # encoder.layer.0 and encoder.layer.1


def mobilevit_layer(g, x, prefix, cout, hidden, depth, dilation, config):
    """encoder.layer.{2,3,4}: (N, H, W, cin) -> (N, H/2, W/2, cout) (stride 1 when dilated)."""
    act, k, p = config.hidden_act, config.conv_kernel_size, config.patch_size
    eps = config.layer_norm_eps
    mlp = int(hidden * config.mlp_ratio)
    residual = inverted_residual(g, x, f"{prefix}.downsampling_layer", cout,
                                 stride=1 if dilation > 1 else 2, dilation=max(dilation // 2, 1),
                                 expand_ratio=config.expand_ratio, act=act,
                                 bn_eps=BN_EPS)                 # (N, H, W, cin) -> (N, h, w, C)
    x = g.conv(residual, f"{prefix}.conv_kxk", cout, k=k, bn_eps=BN_EPS,
               act=act)                                         # full conv, never dilated
    fm = g.conv(x, f"{prefix}.conv_1x1", hidden)                # (N, h, w, C) -> (N, h, w, hid)
    t = g.unfold(fm, p, mode="resize")                          # -> (N, p*p, T, hid), T = ceil
    for j in range(depth):
        lp = f"{prefix}.transformer.layer.{j}"
        y = g.layer_norm(t, f"{lp}.layernorm_before", eps)      # (N, P, T, hid)
        qkv = g.fused_linear(y, f"{lp}.attention.attention", ["query", "key", "value"], hidden,
                             bias=config.qkv_bias)              # -> (N, P, T, 3*hid)
        a = g.multi_head_attention(qkv, f"{lp}.attention",
                                   config.num_attention_heads)  # -> (N, P, T, hid)
        t = g.linear(a, f"{lp}.attention.output.dense", hidden, residual=t)  # t + attn
        y = g.layer_norm(t, f"{lp}.layernorm_after", eps)       # (N, P, T, hid)
        m = g.linear(y, f"{lp}.intermediate.dense", mlp, act=act)  # -> (N, P, T, mlp)
        t = g.linear(m, f"{lp}.output.dense", hidden, residual=t)  # t + mlp
    t = g.layer_norm(t, f"{prefix}.layernorm", eps)             # (N, P, T, hid)
    fm = g.fold(t, fm, p, mode="resize")                        # -> (N, h, w, hid)
    x = g.conv(fm, f"{prefix}.conv_projection", cout, bn_eps=BN_EPS,
               act=act)                                         # -> (N, h, w, C)
    x = g.concat([residual, x])                                 # -> (N, h, w, 2C), residual first
    return g.conv(x, f"{prefix}.fusion", cout, k=k, bn_eps=BN_EPS,
                  act=act)                                      # -> (N, h, w, C)


def build(g, config, head):
    """Append the whole model to ``g``; returns the graph's output names."""
    n = config.neck_hidden_sizes
    act, er = config.hidden_act, config.expand_ratio
    dil3 = 2 if config.output_stride == 8 else 1
    dil4 = dil3 * 2 if config.output_stride in (8, 16) else 1
    ir = dict(expand_ratio=er, act=act, bn_eps=BN_EPS, dilation=1)

    x = g.to_nhwc(g.input)                                      # (N, 3, H, W) -> (N, H, W, 3)
    x = g.conv(x, "conv_stem", n[0], k=3, stride=2, bn_eps=BN_EPS,
               act=act)                                         # -> (N, H/2, W/2, n0)
    hidden = []
    x = inverted_residual(g, x, "encoder.layer.0.layer.0", n[1], stride=1,
                          **ir)                                 # -> (N, H/2, W/2, n1)
    hidden.append(x)
    for i in range(IR_COUNTS[1]):
        x = inverted_residual(g, x, f"encoder.layer.1.layer.{i}", n[2], stride=2 if i == 0 else 1,
                              **ir)                             # -> (N, H/4, W/4, n2)
    hidden.append(x)
    for stage, dil in ((2, 1), (3, dil3), (4, dil4)):
        x = mobilevit_layer(g, x, f"encoder.layer.{stage}", n[stage + 1],
                            config.hidden_sizes[stage - 2], TRANSFORMER_DEPTHS[stage - 2], dil,
                            config)                             # -> (N, H/2^(stage+1), .., n[stage+1])
        hidden.append(x)

    outputs = {"hidden_states": hidden, "last_hidden_state": None, "pooler_output": None,
               "logits": None}
    if head == "segmentation":                                  # no conv_1x1_exp in this model
        outputs["logits"] = deeplabv3_aspp_head(g, x, config)   # -> (N, H/OS, W/OS, labels)
        return outputs
    x = g.conv(x, "conv_1x1_exp", n[6], bn_eps=BN_EPS, act=act)  # -> (N, H/32, W/32, n6)
    pooled = g.global_pool(x)                                   # -> (N, n6)
    outputs.update(last_hidden_state=x, pooler_output=pooled)
    if head == "classification":
        outputs["logits"] = classifier_head(g, pooled, config.num_labels)  # -> (N, labels)
    return outputs

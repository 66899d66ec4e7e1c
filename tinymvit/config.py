"""Model configs: the Hugging Face ``config.json`` fields, with transformers' defaults.

``Config`` keeps the exact HF field names (``model.config.width_multiplier``,
``model.config.output_stride``...) so code written against transformers reads the
same here.  Only the three supported ``model_type`` values are accepted.
"""
import copy
import math

from . import limits
from .errors import ConfigError

# transformers' defaults (configuration_*.py), field for field.
_COMMON = dict(num_channels=3, patch_size=2, output_stride=32, classifier_dropout_prob=0.1,
               initializer_range=0.02, layer_norm_eps=1e-5, semantic_loss_ignore_index=255)
DEFAULTS = {
    "mobilevitv2": dict(_COMMON, image_size=256, expand_ratio=2.0, hidden_act="swish",
                        conv_kernel_size=3, aspp_out_channels=512, atrous_rates=[6, 12, 18],
                        aspp_dropout_prob=0.1, n_attn_blocks=[2, 4, 3],
                        base_attn_unit_dims=[128, 192, 256], width_multiplier=1.0,
                        ffn_multiplier=2, attn_dropout=0.0, ffn_dropout=0.0),
    "mobilevit": dict(_COMMON, image_size=256, hidden_sizes=[144, 192, 240],
                      neck_hidden_sizes=[16, 32, 64, 96, 128, 160, 640], num_attention_heads=4,
                      mlp_ratio=2.0, expand_ratio=4.0, hidden_act="silu", conv_kernel_size=3,
                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0, qkv_bias=True,
                      aspp_out_channels=256, atrous_rates=[6, 12, 18], aspp_dropout_prob=0.1),
    "mobilenet_v2": dict(num_channels=3, image_size=224, depth_multiplier=1.0,
                         depth_divisible_by=8, min_depth=8, expand_ratio=6.0, output_stride=32,
                         first_layer_is_expansion=True, finegrained_output=True,
                         hidden_act="relu6", tf_padding=True, classifier_dropout_prob=0.8,
                         initializer_range=0.02, layer_norm_eps=0.001,
                         semantic_loss_ignore_index=255),
}
FAMILIES = tuple(DEFAULTS)


class Config:
    """Attribute access to a model config, HF field names, HF defaults filled in.

    ``Config.from_dict(d)`` checks every field the engine reads (type, sign, range,
    consistency) before anything is built: see :data:`FIELDS` and :func:`validate`.
    """

    def __init__(self, fields):
        self.__dict__.update(fields)

    @classmethod
    def from_dict(cls, raw, source="config"):
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        model_type = raw.get("model_type")
        if not isinstance(model_type, str) or model_type not in DEFAULTS:
            raise ConfigError(
                f"{source}: unsupported architecture model_type={_show(model_type)}; tinymvit "
                f"runs 'mobilevitv2' (MobileViTV2), 'mobilevit' (MobileViT v1) and "
                f"'mobilenet_v2' (MobileNetV2)")
        fields = copy.deepcopy(DEFAULTS[model_type])      # lists are not shared between configs
        fields.update(raw)
        fields["model_type"] = model_type
        fields["id2label"] = _id2label(raw, source)
        fields["num_labels"] = len(fields["id2label"])
        fields.setdefault("architectures", None)
        cfg = cls(fields)
        validate(cfg, source)
        return cfg

    def __repr__(self):
        return f"Config(model_type={self.model_type!r}, ...)"


# ----------------------------------------------------------------------------------------
# What every field the engine reads may hold.  transformers' configs are @strict
# dataclasses: int fields must be ints (2.0 is refused), float fields take floats (ints are
# accepted here too), bools must be bools.  Ranges are at least as strict as what the
# PyTorch models can run, and caps (tinymvit.limits) keep every size bounded.
# ----------------------------------------------------------------------------------------
def _show(value, limit=80):
    """repr of ``value`` for an error message, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + "...)"


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class _Int:
    def __init__(self, lo, hi, odd=False):
        self.lo, self.hi, self.odd = lo, hi, odd
        self.allowed = f"{'an odd' if odd else 'an'} integer from {lo} to {hi}"

    def ok(self, v):
        return _is_int(v) and self.lo <= v <= self.hi and (not self.odd or v % 2 == 1)


class _Number:
    """A finite int or float > lo (and <= hi when given)."""

    def __init__(self, lo, hi=None):
        self.lo, self.hi = lo, hi
        self.allowed = (f"a finite number > {lo}" if hi is None
                        else f"a number > {lo} and <= {hi}")

    def ok(self, v):
        return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and v > self.lo and (self.hi is None or v <= self.hi))


class _Bool:
    allowed = "true or false"

    @staticmethod
    def ok(v):
        return isinstance(v, bool)


class _OneOf:
    def __init__(self, *values):
        self.values = values
        self.allowed = ", ".join(map(repr, values[:-1])) + f" or {values[-1]!r}"

    def ok(self, v):
        return any(type(v) is type(x) and v == x for x in self.values)


class _List:
    """A list of exactly ``n`` items, each allowed by ``item``."""

    def __init__(self, n, item):
        self.n, self.item = n, item
        self.allowed = f"a list of {n} values, each {item.allowed}"


_SIDE = _Int(1, limits.MAX_SIDE)
_WIDTH = _Int(1, limits.MAX_CHANNELS)
_RATIO = _Number(0, limits.MAX_RATIO)
_COMMON_FIELDS = dict(num_channels=_WIDTH, output_stride=_OneOf(8, 16, 32),
                      layer_norm_eps=_Number(0), image_size=_SIDE)
_MOBILEVIT_FIELDS = dict(_COMMON_FIELDS, patch_size=_SIDE, expand_ratio=_RATIO,
                         conv_kernel_size=_Int(1, limits.MAX_KERNEL, odd=True),
                         aspp_out_channels=_WIDTH, atrous_rates=_List(3, _SIDE))
FIELDS = {
    "mobilevitv2": dict(_MOBILEVIT_FIELDS, n_attn_blocks=_List(3, _Int(0, limits.MAX_BLOCKS)),
                        base_attn_unit_dims=_List(3, _WIDTH), width_multiplier=_RATIO,
                        ffn_multiplier=_Int(1, limits.MAX_RATIO)),
    "mobilevit": dict(_MOBILEVIT_FIELDS, hidden_sizes=_List(3, _WIDTH),
                      neck_hidden_sizes=_List(7, _WIDTH), num_attention_heads=_WIDTH,
                      mlp_ratio=_RATIO, qkv_bias=_Bool),
    "mobilenet_v2": dict(_COMMON_FIELDS, depth_multiplier=_RATIO, depth_divisible_by=_WIDTH,
                         min_depth=_WIDTH, expand_ratio=_RATIO, first_layer_is_expansion=_Bool,
                         finegrained_output=_Bool, tf_padding=_Bool),
}


def validate(cfg, source):
    """Raise ConfigError naming ``source``, the field, the value and what is allowed for the
    first field of ``cfg`` the engine cannot run safely."""
    def fail(name, value, allowed):
        raise ConfigError(f"{source}: {name} must be {allowed}, got {_show(value)}")

    for name, rule in FIELDS[cfg.model_type].items():
        value = getattr(cfg, name)
        if name == "image_size" and isinstance(value, (list, tuple)):
            rule = _List(2, _SIDE)                  # [height, width] is allowed too
        if isinstance(rule, _List):
            if not isinstance(value, (list, tuple)) or len(value) != rule.n:
                fail(name, value, rule.allowed)
            for i, item in enumerate(value):
                if not rule.item.ok(item):
                    fail(f"{name}[{i}]", item, rule.item.allowed)
        elif not rule.ok(value):
            fail(name, value, rule.allowed)

    from .kernels.activations import SUPPORTED
    if not isinstance(cfg.hidden_act, str) or cfg.hidden_act.lower() not in SUPPORTED:
        fail("hidden_act", cfg.hidden_act, f"one of {', '.join(SUPPORTED)}")

    if cfg.model_type == "mobilenet_v2":
        return
    # A patch must fit the smallest feature map at the config's own image size (MobileViTV2
    # cannot run at all otherwise; MobileViT would upsample maps many times over).
    side = min(cfg.image_size) if isinstance(cfg.image_size, (list, tuple)) else cfg.image_size
    smallest = -(-side // cfg.output_stride)        # ceil: every stride-2 conv rounds up
    if cfg.patch_size > smallest:
        fail("patch_size", cfg.patch_size,
             f"at most {smallest} (the smallest feature map at image_size={side} and "
             f"output_stride={cfg.output_stride} is {smallest}x{smallest})")
    if cfg.model_type == "mobilevit":
        for i, h in enumerate(cfg.hidden_sizes):
            if h % cfg.num_attention_heads:
                fail("num_attention_heads", cfg.num_attention_heads,
                     f"a divisor of every hidden size (hidden_sizes[{i}] is {h})")
            if int(h * cfg.mlp_ratio) < 1:
                fail("mlp_ratio", cfg.mlp_ratio,
                     f"large enough that hidden_sizes[{i}] * mlp_ratio >= 1 ({h})")
    else:
        for i, base in enumerate(cfg.base_attn_unit_dims):
            d = make_divisible(base * cfg.width_multiplier, 8)
            if int(cfg.ffn_multiplier * d) // 16 * 16 < 1:
                fail("ffn_multiplier", cfg.ffn_multiplier,
                     f"large enough that ffn_multiplier * {d} (the attention width of stage "
                     f"{i + 2}) >= 16")


def _label_count(value, source, what):
    if not _is_int(value) or not 1 <= value <= limits.MAX_LABELS:
        raise ConfigError(f"{source}: {what} must be an integer from 1 to {limits.MAX_LABELS}, "
                          f"got {_show(value)}")
    return value


def _id2label(raw, source):
    """{index: name} as transformers derives it from ``id2label`` / ``num_labels``."""
    n = _label_count(raw["num_labels"], source, "num_labels") if "num_labels" in raw else None
    id2label = raw.get("id2label")
    if id2label is None:
        n = 2 if n is None else n             # PretrainedConfig's default is 2 labels
        return {i: f"LABEL_{i}" for i in range(n)}
    if not isinstance(id2label, dict):
        raise ConfigError(f"{source}: id2label must map class indices to names, got "
                          f"{_show(id2label)}")
    _label_count(len(id2label), source, "the number of id2label entries")
    out = {}
    for key, name in id2label.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < limits.MAX_LABELS:
            raise ConfigError(f"{source}: id2label keys must be class indices from 0 to "
                              f"{limits.MAX_LABELS - 1}, got {_show(key)}")
        out[index] = str(name)
    if n is not None and n != len(out):
        # transformers lets num_labels win when the two disagree
        out = {i: out.get(i, f"LABEL_{i}") for i in range(n)}
    return dict(sorted(out.items()))


def make_divisible(value, divisor=8, min_value=None):
    """transformers' ``make_divisible`` (spec §1.1), bit for bit."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


__all__ = ["Config", "FAMILIES", "FIELDS", "validate", "make_divisible"]

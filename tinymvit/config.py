"""Model configs: the Hugging Face ``config.json`` fields, with transformers' defaults.

``Config`` keeps the exact HF field names (``model.config.width_multiplier``,
``model.config.output_stride``...) so code written against transformers reads the
same here.  Only the three supported ``model_type`` values are accepted.
"""
import json
from pathlib import Path

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

    ``Config.from_dict(d)`` validates ``model_type`` and the values the engine
    depends on.
    """

    def __init__(self, fields):
        self.__dict__.update(fields)

    @classmethod
    def from_dict(cls, raw, source="config"):
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        model_type = raw.get("model_type")
        if model_type not in DEFAULTS:
            raise ConfigError(
                f"{source}: unsupported architecture model_type={model_type!r}; tinymvit runs "
                f"'mobilevitv2' (MobileViTV2), 'mobilevit' (MobileViT v1) and 'mobilenet_v2' "
                f"(MobileNetV2)")
        fields = dict(DEFAULTS[model_type])
        fields.update(raw)
        fields["model_type"] = model_type
        fields["id2label"] = _id2label(raw, source)
        fields["num_labels"] = len(fields["id2label"])
        fields.setdefault("architectures", None)
        cfg = cls(fields)
        cfg._validate(source)
        return cfg

    @classmethod
    def from_json_file(cls, path):
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"could not read {path} as JSON: {exc}") from None
        return cls.from_dict(raw, source=str(path))

    def __repr__(self):
        return f"Config(model_type={self.model_type!r}, ...)"

    def _validate(self, source):
        def fail(msg):
            raise ConfigError(f"{source}: {msg}")

        if self.output_stride not in (8, 16, 32):
            fail(f"output_stride must be 8, 16 or 32, got {self.output_stride!r}")
        if self.num_channels < 1:
            fail(f"num_channels must be >= 1, got {self.num_channels!r}")
        if self.model_type in ("mobilevitv2", "mobilevit"):
            if not isinstance(self.patch_size, int) or self.patch_size < 1:
                fail(f"patch_size must be a positive int (a [h, w] list is not supported by "
                     f"transformers either), got {self.patch_size!r}")
            if len(self.atrous_rates) != 3:
                fail(f"atrous_rates must hold 3 values, got {self.atrous_rates!r}")
        if self.model_type == "mobilevitv2":
            for name in ("n_attn_blocks", "base_attn_unit_dims"):
                if len(getattr(self, name)) != 3:
                    fail(f"{name} must hold 3 values (encoder layers 2, 3, 4), "
                         f"got {getattr(self, name)!r}")
        if self.model_type == "mobilevit":
            if len(self.hidden_sizes) != 3:
                fail(f"hidden_sizes must hold 3 values, got {self.hidden_sizes!r}")
            if len(self.neck_hidden_sizes) != 7:
                fail(f"neck_hidden_sizes must hold 7 values, got {self.neck_hidden_sizes!r}")
            for h in self.hidden_sizes:
                if h % self.num_attention_heads:
                    fail(f"hidden size {h} is not a multiple of num_attention_heads="
                         f"{self.num_attention_heads}")
        from .kernels.activations import SUPPORTED
        if not isinstance(self.hidden_act, str) or self.hidden_act.lower() not in SUPPORTED:
            fail(f"hidden_act {self.hidden_act!r} is not supported; expected one of "
                 f"{', '.join(SUPPORTED)}")


def _id2label(raw, source):
    id2label = raw.get("id2label")
    if id2label is None:
        n = int(raw.get("num_labels", 2))  # PretrainedConfig's default is 2 labels
        return {i: f"LABEL_{i}" for i in range(n)}
    try:
        out = {int(k): str(v) for k, v in id2label.items()}
    except (AttributeError, ValueError, TypeError):
        raise ConfigError(f"{source}: id2label must map class indices to names") from None
    if "num_labels" in raw and int(raw["num_labels"]) != len(out):
        # transformers lets num_labels win when the two disagree
        n = int(raw["num_labels"])
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


__all__ = ["Config", "FAMILIES", "make_divisible"]

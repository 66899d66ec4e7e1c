"""Random-weight transformers models for golden tests and bench.py (imports torch).

Weights are re-drawn at a realistic scale (variance ~ 1/fan_in, so activations stay
O(1) through the network instead of vanishing as with HF's std=0.02 init) and every
BatchNorm / GroupNorm / LayerNorm gets random affine parameters and running
statistics, so that a wrong eps, a missed fold or a swapped order shows up.
"""
import math


try:
    import torch
    import transformers
except ImportError:  # the golden tests need the [test] extra; bench.py needs [bench]
    import pytest
    pytest.skip("needs torch and transformers: pip install -e '.[test]'", allow_module_level=True)

FAMILY_CLASSES = {
    "mobilevitv2": ("MobileViTV2Config", "MobileViTV2Model", "MobileViTV2ForImageClassification",
                    "MobileViTV2ForSemanticSegmentation"),
    "mobilevit": ("MobileViTConfig", "MobileViTModel", "MobileViTForImageClassification",
                  "MobileViTForSemanticSegmentation"),
    "mobilenet_v2": ("MobileNetV2Config", "MobileNetV2Model", "MobileNetV2ForImageClassification",
                     "MobileNetV2ForSemanticSegmentation"),
}
TASK_INDEX = {"base": 1, "classification": 2, "segmentation": 3}


def randomize_(model, seed):
    """Re-draw every parameter and normalisation statistic of ``model`` in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                w = module.weight
                fan_in = w[0].numel()
                w.copy_(torch.randn(w.shape, generator=g) * math.sqrt(1.0 / fan_in))
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
            elif isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=g))
                module.bias.copy_(torch.randn(c, generator=g) * 0.2)
                module.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                module.running_var.copy_(0.3 + 1.5 * torch.rand(c, generator=g))
            elif isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                c = module.weight.shape[0]
                module.weight.copy_(0.5 + torch.rand(c, generator=g))
                module.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return model


def make_model(family, task, seed=0, **config_kwargs):
    """A random-weight transformers model (eval mode) of ``family`` with a ``task`` head."""
    names = FAMILY_CLASSES[family]
    config = getattr(transformers, names[0])(**config_kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, names[TASK_INDEX[task]])(config)
    return randomize_(model, seed).eval()


def save(model, folder, safe=True):
    """save_pretrained (model.safetensors), or config.json + a torch.save'd pytorch_model.bin."""
    if safe:
        model.save_pretrained(str(folder))
    else:  # transformers 5 always writes safetensors; make the legacy layout by hand
        folder.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(str(folder))
        torch.save(model.state_dict(), str(folder / "pytorch_model.bin"))
    return folder


def run_torch(model, pixel_values):
    with torch.inference_mode():
        out = model(torch.from_numpy(pixel_values), output_hidden_states=True)
    result = {}
    for name in ("logits", "pooler_output", "last_hidden_state"):
        v = getattr(out, name, None)
        if v is not None:
            result[name] = v.numpy()
    result["hidden_states"] = [h.numpy() for h in out.hidden_states]
    return result


def model_pairs(tmp_path_factory):
    """``get(family, task, config, seed)`` -> (transformers model, tinymvit model loaded from its
    saved checkpoint), each pair made once (for a module-scoped fixture)."""
    import tinymvit
    cache = {}

    def get(family, task, config, seed=0):
        key = (family, task, repr(sorted(config.items())), seed)
        if key not in cache:
            hf = make_model(family, task, seed=seed, **config)
            cache[key] = (hf, tinymvit.load(save(hf, tmp_path_factory.mktemp("ckpt"))))
        return cache[key]
    return get

"""Random checkpoints written WITHOUT PyTorch, for tests of loading, errors and the CLI.

The model builders ask the weight store for every tensor by name and shape; a
recording store answers with random arrays (positive running variances) and so
produces a complete, valid transformers-layout checkpoint for any config.
"""
import json

import numpy as np
from safetensors.numpy import save_file

from tinymvit.api import Model
from tinymvit.config import Config
from tinymvit.graph import GraphBuilder
from tinymvit.models import BUILDERS, backbone_prefix
from tinymvit.weights import Checkpoint
from tinymvit.weightstore import WeightStore


class RecordingStore(WeightStore):
    def __init__(self, prefix, seed):
        super().__init__({}, prefix, "recording")
        self.rng = np.random.default_rng(seed)

    def get(self, name, shape, backbone=True):
        key = (self.prefix + name) if backbone else name
        if key not in self.tensors:
            if key.endswith("running_var"):
                t = self.rng.uniform(0.5, 1.5, shape)
            elif key.endswith(("normalization.weight", "norm.weight", "layernorm.weight",
                               "layernorm_before.weight", "layernorm_after.weight")):
                t = self.rng.uniform(0.5, 1.5, shape)
            else:
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 10
                t = self.rng.standard_normal(shape) / np.sqrt(fan_in)
            self.tensors[key] = t.astype(np.float32)
        return self.tensors[key]

    def check_all_used(self):
        pass


def random_tensors(model_type, task="classification", seed=0, **config):
    """(config dict, {tensor name: random float32 array}) of a complete checkpoint."""
    cfg = dict(model_type=model_type, **config)
    arch = {"mobilevitv2": "MobileViTV2", "mobilevit": "MobileViT",
            "mobilenet_v2": "MobileNetV2"}[model_type]
    cfg["architectures"] = [arch + {"classification": "ForImageClassification",
                                    "segmentation": "ForSemanticSegmentation",
                                    "base": "Model"}[task]]
    store = RecordingStore("" if task == "base" else backbone_prefix(model_type), seed)
    BUILDERS[model_type](GraphBuilder(store, 3), Config.from_dict(cfg), task)
    return cfg, store.tensors


def random_model(model_type, task="classification", seed=0, preprocessor=None, **config):
    """A tinymvit.Model with random weights, built in memory (nothing written)."""
    cfg, tensors = random_tensors(model_type, task, seed, **config)
    return Model(Checkpoint(tensors, cfg, preprocessor, f"random {model_type} {task}"))


def random_checkpoint(folder, model_type, task="classification", seed=0, preprocessor=None,
                      **config):
    """Write config.json (+ preprocessor_config.json) + model.safetensors into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg, tensors = random_tensors(model_type, task, seed, **config)
    (folder / "config.json").write_text(json.dumps(cfg))
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder

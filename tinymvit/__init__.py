"""tinymvit: CPU inference for MobileViTV2, MobileViT and MobileNetV2 in NumPy + Numba.

    import tinymvit
    model = tinymvit.load("checkpoint-folder-or-file.safetensors")
    model.classify("cat.jpg")            # [{"label": ..., "score": ..., "index": ...}, ...]
    model.segment("street.jpg")          # (H, W) label map
    out = model(pixel_values)            # same logits/hidden states as transformers

No PyTorch needed: numpy, numba, pillow and safetensors only.
"""
from .api import Model, ModelOutput, convert, get_num_threads, load, set_num_threads
from .config import Config
from .errors import (CheckpointError, ConfigError, InputError, NumericalError, OutputError,
                     ThreadingError, TinyMViTError)
from .images import ImageError, load_image

__version__ = "0.1.0"
__all__ = ["load", "convert", "Model", "ModelOutput", "Config", "set_num_threads",
           "get_num_threads", "load_image", "TinyMViTError", "CheckpointError", "ConfigError",
           "InputError", "ImageError", "ThreadingError", "NumericalError", "OutputError",
           "__version__"]

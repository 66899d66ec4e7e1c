"""tinymvit.weights: reading Hugging Face checkpoints and converting them to tinymvit files.

A tinymvit file is one ``.safetensors`` file holding the checkpoint's tensors under
their original transformers names and values, with the model config, the image
processor config, id2label and a format version in the safetensors metadata.
"""
from .checkpoint import FORMAT_NAME, FORMAT_VERSION, Checkpoint, read_checkpoint  # noqa: F401
from .convert import save_tinymvit_file  # noqa: F401

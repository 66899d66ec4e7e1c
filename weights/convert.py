"""Write the single-file tinymvit form of a checkpoint.

The file keeps every tensor under its original transformers name with its original
values (nothing is folded or re-laid out on disk, so the file stays a faithful,
inspectable copy of the checkpoint); the safetensors metadata holds:

    format               "tinymvit"
    format_version       "1"
    config               config.json, as JSON text
    preprocessor_config  preprocessor_config.json as JSON text (absent if the source had none)
    id2label             the class names, as JSON text
"""
import json
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..outputs import atomic_write, check_output_paths
from .checkpoint import FORMAT_NAME, FORMAT_VERSION


def save_tinymvit_file(checkpoint, dst):
    """Write ``checkpoint`` (a :class:`Checkpoint`) to ``dst`` atomically.

    ``dst`` may not be one of the files the checkpoint was read from; an existing ``dst``
    is only replaced once the new file is completely written.
    """
    from safetensors.numpy import save_file

    dst = Path(dst).expanduser()
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the output file name must end in .safetensors")
    check_output_paths([(dst, "the converted file")],
                       [(f, "the checkpoint file") for f in checkpoint.files])
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(checkpoint.config, sort_keys=True),
        "id2label": json.dumps(checkpoint.config.get("id2label") or {}, sort_keys=True),
    }
    if checkpoint.preprocessor_config is not None:
        metadata["preprocessor_config"] = json.dumps(checkpoint.preprocessor_config,
                                                     sort_keys=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in checkpoint.tensors.items()}
    return atomic_write(dst, lambda tmp: save_file(tensors, tmp, metadata=metadata))

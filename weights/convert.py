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
import os
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .checkpoint import FORMAT_NAME, FORMAT_VERSION


def save_tinymvit_file(checkpoint, dst):
    """Write ``checkpoint`` (a :class:`Checkpoint`) to ``dst`` atomically."""
    from safetensors.numpy import save_file

    dst = Path(dst).expanduser()
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the output file name must end in .safetensors")
    if dst.is_dir():
        raise CheckpointError(f"{dst}: is a folder; give a file name ending in .safetensors")
    dst.parent.mkdir(parents=True, exist_ok=True)
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
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, dst)
    except OSError as exc:
        raise CheckpointError(f"could not write {dst}: {exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst

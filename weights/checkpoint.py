"""Read a checkpoint into NumPy: a transformers folder or a tinymvit ``.safetensors`` file.

Accepted inputs:

* a folder with ``config.json`` and ``model.safetensors`` (or a sharded
  ``model.safetensors.index.json``, or ``pytorch_model.bin`` — the latter only with
  PyTorch installed, read with ``torch.load(weights_only=True)``), and optionally
  ``preprocessor_config.json``;
* a single tinymvit ``.safetensors`` file written by ``tinymvit convert`` (config in
  its metadata);
* a plain transformers ``model.safetensors`` with a ``config.json`` beside it.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

FORMAT_NAME = "tinymvit"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    tensors: dict             # name -> np.ndarray, transformers names
    config: dict              # config.json contents
    preprocessor_config: dict  # preprocessor_config.json contents, or None
    source: str               # what was read, for error messages


def read_checkpoint(path):
    """Read ``path`` (folder or file) into a :class:`Checkpoint`; clear errors otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"no such checkpoint: {path} (expected a transformers checkpoint folder with "
            f"config.json + model.safetensors, or a tinymvit .safetensors file)")
    if path.is_dir():
        return _read_folder(path)
    if path.suffix == ".safetensors":
        return _read_safetensors_file(path)
    if path.suffix == ".bin":
        return Checkpoint(read_pytorch_bin(path), _read_json(path.parent / "config.json",
                                                              required=True),
                          _read_json(path.parent / "preprocessor_config.json"), str(path))
    raise CheckpointError(
        f"{path}: not a checkpoint (expected a folder, a .safetensors file or a "
        f"pytorch_model.bin)")


def _read_folder(folder):
    config = _read_json(folder / "config.json", required=True)
    pre = _read_json(folder / "preprocessor_config.json")
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    binary = folder / "pytorch_model.bin"
    if single.is_file():
        tensors, _ = read_safetensors(single)
    elif index.is_file():
        tensors = {}
        shards = sorted(set(_read_json(index, required=True).get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(f"{index}: no weight_map entries")
        for shard in shards:
            tensors.update(read_safetensors(folder / shard)[0])
    elif binary.is_file():
        tensors = read_pytorch_bin(binary)
    else:
        raise CheckpointError(
            f"{folder}: no weights found (looked for model.safetensors, "
            f"model.safetensors.index.json and pytorch_model.bin)")
    return Checkpoint(tensors, config, pre, str(folder))


def _read_safetensors_file(path):
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") == FORMAT_NAME:
        version = metadata.get("format_version", "?")
        if str(version) != str(FORMAT_VERSION):
            raise CheckpointError(
                f"{path}: tinymvit file format version {version} is not supported by this "
                f"tinymvit (it reads version {FORMAT_VERSION}); re-convert the checkpoint")
        try:
            config = json.loads(metadata["config"])
            pre = json.loads(metadata["preprocessor_config"]) \
                if metadata.get("preprocessor_config") else None
        except (KeyError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: damaged tinymvit metadata ({exc})") from None
        if metadata.get("id2label"):
            config = dict(config, id2label=json.loads(metadata["id2label"]))
        return Checkpoint(tensors, config, pre, str(path))
    # A plain transformers model.safetensors: its config must sit beside it.
    config_path = path.parent / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{path}: this .safetensors file has no tinymvit metadata and there is no "
            f"config.json beside it; pass the checkpoint folder, or convert it with "
            f"`tinymvit convert FOLDER {path.stem}-tinymvit.safetensors`")
    return Checkpoint(tensors, _read_json(config_path, required=True),
                      _read_json(path.parent / "preprocessor_config.json"), str(path))


def read_safetensors(path):
    """(tensors, metadata) of a .safetensors file; corrupt or truncated files raise clearly."""
    from safetensors import SafetensorError, safe_open

    try:
        tensors = {}
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); the file is corrupt or "
            f"truncated — download or convert it again") from None
    return tensors, metadata


def read_pytorch_bin(path):
    """Read a ``pytorch_model.bin`` state dict (needs PyTorch; weights_only=True, no pickled code)."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading pytorch_model.bin needs PyTorch, which tinymvit does not need "
            f"otherwise. Install it (pip install 'tinymvit[convert]') or convert the checkpoint "
            f"on a machine that has it: tinymvit convert {path.parent} model.safetensors") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt pickles
        raise CheckpointError(f"{path}: could not read the PyTorch checkpoint ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    out = {}
    for k, v in state.items():
        if not hasattr(v, "detach"):
            raise CheckpointError(f"{path}: entry '{k}' is not a tensor")
        out[k] = np.ascontiguousarray(v.detach().cpu().numpy())
    return out


def _read_json(path, required=False):
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path.parent}: missing {path.name} (every transformers "
                                  f"checkpoint folder has one)")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None

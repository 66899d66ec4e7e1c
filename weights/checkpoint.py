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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import limits
from ..errors import CheckpointError

FORMAT_NAME = "tinymvit"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    tensors: Mapping          # name -> np.ndarray, transformers names (read from
    #                           a safetensors file when asked for: SafetensorsTensors)
    config: dict              # config.json contents
    preprocessor_config: dict  # preprocessor_config.json contents, or None
    source: str               # what was read, for error messages
    files: tuple = ()         # every file read (convert never writes over one of them)
    config_source: str = None        # where the config came from, for error messages
    preprocessor_source: str = None  # where the preprocessor config came from

    def __post_init__(self):
        self.config_source = self.config_source or f"{self.source} (config)"
        self.preprocessor_source = (self.preprocessor_source
                                    or f"{self.source} (preprocessor config)")


def read_checkpoint(path):
    """Read ``path`` (folder or file) into a :class:`Checkpoint`; clear errors otherwise."""
    path = Path(path).expanduser()
    try:
        path.exists()
    except (OSError, ValueError) as exc:        # a name too long, or holding a NUL byte
        raise CheckpointError(f"{path}: cannot access this path ({exc})") from None
    if not path.exists():
        raise CheckpointError(
            f"no such checkpoint: {path} (expected a transformers checkpoint folder with "
            f"config.json + model.safetensors, or a tinymvit .safetensors file)")
    if path.is_dir():
        return _read_folder(path)
    if path.suffix == ".safetensors":
        return _read_safetensors_file(path)
    if path.suffix == ".bin":
        return _with_json_beside(read_pytorch_bin(path), path.parent, (path,), path)
    raise CheckpointError(
        f"{path}: not a checkpoint (expected a folder, a .safetensors file or a "
        f"pytorch_model.bin)")


def _with_json_beside(tensors, folder, weight_files, source, config=None):
    """A Checkpoint of ``tensors`` with ``folder``'s config.json / preprocessor_config.json."""
    config_path, pre_path = folder / "config.json", folder / "preprocessor_config.json"
    if config is None:
        config = _read_json(config_path, required=True)
    pre = _read_json(pre_path)
    files = tuple(weight_files) + (config_path,) + ((pre_path,) if pre is not None else ())
    return Checkpoint(tensors, config, pre, str(source), files=files,
                      config_source=str(config_path), preprocessor_source=str(pre_path))


def _read_folder(folder):
    config = _read_json(folder / "config.json", required=True)   # a missing config comes first
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    binary = folder / "pytorch_model.bin"
    if single.is_file():
        tensors, files = read_safetensors(single)[0], (single,)
    elif index.is_file():
        tensors, files = SafetensorsTensors({}), [index]
        for shard in _shard_files(index):
            tensors = tensors.merged(read_safetensors(shard)[0])
            files.append(shard)
    elif binary.is_file():
        tensors, files = read_pytorch_bin(binary), (binary,)
    else:
        raise CheckpointError(
            f"{folder}: no weights found (looked for model.safetensors, "
            f"model.safetensors.index.json and pytorch_model.bin)")
    return _with_json_beside(tensors, folder, files, folder, config)


def _shard_files(index):
    """The shard paths a ``model.safetensors.index.json`` names: plain file names in its own
    folder (a path leading elsewhere, e.g. '../x' or '/etc/x', is refused)."""
    data = _read_json(index, required=True)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: expected a JSON object with a non-empty \"weight_map\" "
                              f"object (tensor name -> shard file name)")
    for name in weight_map.values():
        if (not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..")
                or not name.endswith(".safetensors")):
            raise CheckpointError(f"{index}: weight_map names the shard {name!r}; expected a "
                                  f"file name ending in .safetensors in the same folder")
    return [index.parent / name for name in sorted(set(weight_map.values()))]


def _read_safetensors_file(path):
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") == FORMAT_NAME:
        version = metadata.get("format_version", "?")
        if str(version) != str(FORMAT_VERSION):
            raise CheckpointError(
                f"{path}: tinymvit file format version {version} is not supported by this "
                f"tinymvit (it reads version {FORMAT_VERSION}); re-convert the checkpoint")
        config = _metadata_json(path, metadata, "config", required=True)
        pre = _metadata_json(path, metadata, "preprocessor_config")
        id2label = _metadata_json(path, metadata, "id2label")
        if id2label:
            config = dict(config, id2label=id2label)
        return Checkpoint(tensors, config, pre, str(path), files=(path,),
                          config_source=f"{path} (metadata 'config')",
                          preprocessor_source=f"{path} (metadata 'preprocessor_config')")
    # A plain transformers model.safetensors: its config must sit beside it.
    config_path = path.parent / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{path}: this .safetensors file has no tinymvit metadata and there is no "
            f"config.json beside it; pass the checkpoint folder, or convert it with "
            f"`tinymvit convert FOLDER {path.stem}-tinymvit.safetensors`")
    return _with_json_beside(tensors, path.parent, (path,), path)


def _metadata_json(path, metadata, key, required=False):
    """A JSON object stored as text under ``key`` in a tinymvit file's metadata (or None)."""
    text = metadata.get(key)
    if not text:
        if required:
            raise CheckpointError(f"{path}: damaged tinymvit metadata: no '{key}' entry; "
                                  f"re-convert the checkpoint")
        return None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: damaged tinymvit metadata: '{key}' is not valid JSON "
                              f"({exc}); re-convert the checkpoint") from None
    if value is not None and not isinstance(value, dict):
        raise CheckpointError(f"{path}: damaged tinymvit metadata: '{key}' must be a JSON "
                              f"object, got {type(value).__name__}; re-convert the checkpoint")
    return value


def read_safetensors(path):
    """(tensors, metadata) of a .safetensors file; corrupt or truncated files raise clearly.

    ``tensors`` is a :class:`SafetensorsTensors`: the file is checked now, each tensor is
    read when it is asked for."""
    entries, metadata = _safetensors_entries(path)
    return SafetensorsTensors(entries), metadata


def _safetensors_entries(path):
    """({name: (path, data offset, dtype, shape, bytes)}, metadata) of a .safetensors file.
    safetensors checks the header first (that it parses, and that every tensor's bytes lie
    in the file); only the header is read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
        with open(path, "rb") as f:                      # the layout safetensors just checked:
            header_size = int.from_bytes(f.read(8), "little")      # u64 size, JSON header,
            header = json.loads(f.read(header_size))               # then the tensors' bytes
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); the file is corrupt or "
            f"truncated — download or convert it again") from None
    data = 8 + header_size
    entries = {name: (path, data + int(info["data_offsets"][0]), info["dtype"],
                      tuple(int(d) for d in info["shape"]),
                      int(info["data_offsets"][1]) - int(info["data_offsets"][0]))
               for name, info in header.items() if name != "__metadata__"}
    return entries, metadata


# safetensors dtype -> NumPy dtype (the file is little-endian)
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
           "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}


class SafetensorsTensors(Mapping):
    """The tensors of one or more .safetensors files by name, each read from its file when
    it is asked for (a new array each time).

    A model keeps its weights folded and packed in one arena (``graph.Graph``): holding every
    raw tensor in memory while the model is built would make loading need about twice the
    memory the loaded model does.  Read one at a time, each raw tensor is dropped as soon
    as its layer has made its own copy."""

    def __init__(self, entries):
        self._entries = entries      # name -> (path, offset, dtype, shape, bytes)

    def __getitem__(self, name):
        path, offset, dtype, shape, size = self._entries[name]
        if dtype not in _DTYPES:                 # e.g. BF16, which NumPy has no type for
            return self._read_with_safetensors(path, name)
        out = np.empty(shape, _DTYPES[dtype])
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                got = f.readinto(memoryview(out.reshape(-1)).cast("B")) if size else 0
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read tensor '{name}' ({exc})") from None
        if got != size or out.nbytes != size:
            raise CheckpointError(
                f"{path}: tensor '{name}' is cut short ({got} of {size} bytes); the file "
                f"changed while it was being read, or is truncated — download or convert it "
                f"again")
        return out if out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))

    @staticmethod
    def _read_with_safetensors(path, name):
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="np") as f:
                return f.get_tensor(name)
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{path}: cannot read tensor '{name}' ({exc})") from None

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def merged(self, other):
        """These tensors and ``other``'s (a later file's tensor of the same name wins)."""
        return SafetensorsTensors({**self._entries, **other._entries})


def read_pytorch_bin(path):
    """Read a ``pytorch_model.bin`` state dict (needs PyTorch; weights_only=True: no pickled
    code)."""
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
        size = path.stat().st_size
        if size > limits.MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: {size} bytes is too large for a JSON config file "
                                  f"(limit {limits.MAX_JSON_BYTES} bytes, "
                                  f"tinymvit.limits.MAX_JSON_BYTES)")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None

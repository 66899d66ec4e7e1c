"""Checked access to a checkpoint's tensors while a model graph is built.

The model builders ask for every tensor by its transformers name and the shape
the config implies; the store checks presence, dtype and shape, and remembers
what was used so that tensors nobody asked for are reported too.  Errors name the
tensor and the expected shape.
"""
import numpy as np

from .errors import CheckpointError

IGNORED_SUFFIXES = ("num_batches_tracked",)  # BatchNorm's int64 step counter: not a weight


class WeightStore:
    def __init__(self, tensors, prefix="", source="checkpoint"):
        self.tensors = tensors
        self.prefix = prefix          # e.g. "mobilevitv2." for models with a head
        self.source = source
        self.used = set()

    def get(self, name, shape, backbone=True):
        """The float32 tensor ``name`` (relative to the backbone prefix when ``backbone``)."""
        key = (self.prefix + name) if backbone else name
        if key not in self.tensors:
            raise CheckpointError(
                f"{self.source}: missing tensor '{key}' (expected float32 of shape "
                f"{tuple(shape)}); the checkpoint does not match its config")
        t = self.tensors[key]
        if t.dtype != np.float32:
            raise CheckpointError(
                f"{self.source}: tensor '{key}' has dtype {t.dtype}, expected float32 of shape "
                f"{tuple(shape)}")
        if tuple(t.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.source}: tensor '{key}' has shape {tuple(t.shape)}, expected "
                f"{tuple(shape)} from the config")
        self.used.add(key)
        return t

    def has(self, name, backbone=True):
        return ((self.prefix + name) if backbone else name) in self.tensors

    def check_all_used(self):
        """Raise if the checkpoint holds tensors the architecture does not have."""
        unexpected = sorted(k for k in self.tensors
                            if k not in self.used and not k.endswith(IGNORED_SUFFIXES))
        if unexpected:
            shown = ", ".join(f"'{k}' {tuple(self.tensors[k].shape)}" for k in unexpected[:8])
            more = f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""
            raise CheckpointError(
                f"{self.source}: unexpected tensor(s) not part of the architecture described by "
                f"its config: {shown}{more}")

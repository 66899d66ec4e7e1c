"""Checked access to a checkpoint's tensors while a model graph is built.

The model builders ask for every tensor by its transformers name and the shape
the config implies; the store checks presence, dtype and shape, and remembers
what was used so that tensors nobody asked for are reported too.  Errors name the
tensor and the expected shape.  Values are checked too: NaN/Inf weights and negative
BatchNorm variances are refused, naming the tensor and how many values are bad.
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
        self.last_key = None          # the tensor asked for last (names a layer in errors)

    def get(self, name, shape, backbone=True):
        """The float32 tensor ``name`` (relative to the backbone prefix when ``backbone``)."""
        key = (self.prefix + name) if backbone else name
        self.last_key = key
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
        if key not in self.used:
            self._check_values(key, t)
        self.used.add(key)
        return t

    def _check_values(self, key, t):
        """NaN/Inf anywhere, or a negative BatchNorm variance, would silently turn every
        output into NaN: refuse them, naming the tensor and how many values are bad."""
        finite = np.isfinite(t)
        if not finite.all():
            nan = int(np.count_nonzero(np.isnan(t)))
            inf = t.size - int(np.count_nonzero(finite)) - nan
            raise CheckpointError(
                f"{self.source}: tensor '{key}' holds {nan} NaN and {inf} infinite value(s) "
                f"(of {t.size}); every weight must be finite - the checkpoint is damaged")
        if key.endswith("running_var"):
            negative = int(np.count_nonzero(t < 0))
            if negative:
                raise CheckpointError(
                    f"{self.source}: tensor '{key}' holds {negative} negative value(s) (of "
                    f"{t.size}, smallest {float(t.min()):g}); a BatchNorm running variance "
                    f"must be >= 0 - the checkpoint is damaged")

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

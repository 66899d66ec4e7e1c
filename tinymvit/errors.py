"""The exceptions tinymvit raises.  Every one names what was wrong and what was expected."""


class TinyMViTError(Exception):
    """Base class of every error tinymvit raises on bad input."""


class CheckpointError(TinyMViTError, ValueError):
    """A checkpoint folder or file is missing, unreadable, corrupt, or does not match its config."""


class ConfigError(TinyMViTError, ValueError):
    """A config.json is unreadable, names an unknown architecture, or holds an unsupported value."""


class InputError(TinyMViTError, ValueError):
    """``pixel_values`` (or another call argument) has the wrong type, dtype, shape or size."""


class ThreadingError(TinyMViTError, RuntimeError):
    """Kept only so that code which catches it keeps working: nothing raises it any more.

    It reported a process forked after OpenMP had started; the kernels now run on
    tinymvit's own worker threads (``kernels/workers.py``), which a forked child restarts.
    """


class NumericalError(TinyMViTError, ArithmeticError):
    """A forward pass produced NaN or infinite values (e.g. float32 overflow on extreme inputs
    or weights), so there is no meaningful answer to report."""


class OutputError(TinyMViTError, OSError):
    """An output file (mask, overlay, converted checkpoint) cannot be written, or would
    overwrite an input or another output of the same run."""

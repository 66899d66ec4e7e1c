"""Small helpers shared by the tests (no PyTorch needed)."""
import io
import json
import shutil
import sys

import numpy as np

from tinymvit.cli import main

COMPILING = "tinymvit: compiling kernels"   # the once-per-machine notice of a first run


def rel_err(ours, ref):
    """max |ours - ref| relative to the reference tensor's scale (max |ref|)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def randn(rng, shape, scale=1.0, shift=0.0):
    """Random normal float32 values of ``shape``."""
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


def cli(argv, capsys, stdin=None, monkeypatch=None):
    """Run the CLI in-process: (exit status, stdout, stderr lines without the compile notice);
    ``stdin``: text for '-' inputs (needs ``monkeypatch``)."""
    out = io.StringIO()
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([str(a) for a in argv], out=out)
    err = capsys.readouterr().err.splitlines()
    return code, out.getvalue(), [line for line in err if not line.startswith(COMPILING)]


def copy_checkpoint(folder, tmp_path, name="ckpt"):
    """A copy of checkpoint ``folder`` in ``tmp_path`` to damage."""
    dst = tmp_path / name
    shutil.copytree(folder, dst)
    return dst


def edit_json(path, **changes):
    """Set keys of the JSON object in ``path`` (created if missing)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(changes)
    path.write_text(json.dumps(data))

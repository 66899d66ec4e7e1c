"""Writing results safely: output paths checked up front, files written atomically, text
escaped.

* :func:`check_output_paths` - before anything runs, refuse an output that is an input file
  (same path after resolving symlinks and ``..``, or the same file through a hard link) or
  that another output of the same run would also write; refuse folders.
* :func:`atomic_write` - a file is written to a temporary file in its own folder, flushed
  to disk, then renamed over the target: an interrupted or failed write (full disk,
  Ctrl-C) leaves the old file, or nothing, never a truncated file.
* :func:`printable` - labels and file names come from untrusted files: print them with
  control characters escaped, so they cannot move the cursor, clear the terminal or
  break a line.
"""
import os
import tempfile
from pathlib import Path

from .errors import OutputError

__all__ = ["atomic_write", "check_output_paths", "printable"]

_UMASK = os.umask(0o022)
os.umask(_UMASK)                                  # read once: new files get 0o666 & ~umask


def printable(text):
    """``str(text)`` with every non-printable character (C0/C1 controls, DEL, bidi and other
    format characters, line separators, lone surrogates) written as a Python escape."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def _real(path):
    return os.path.normcase(os.path.realpath(path))


def _file_id(path):
    """(device, inode) of an existing file (following links), else None."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def check_output_paths(outputs, inputs=()):
    """Refuse output paths that would overwrite an input or each other.

    outputs: ``[(path, description), ...]``, e.g. ``(Path("m.png"), "--out for cat.jpg")``.
    inputs:  ``[(path, description), ...]`` of every file the run reads, e.g.
             ``(Path("cat.jpg"), "the input image")``.
    Raises :class:`OutputError` naming both paths; returns nothing.  Checked: an output
    that is an existing folder, an output that is an input (resolved path or same file),
    two outputs that are the same file.  Linear in the number of paths (one ``realpath``
    and one ``stat`` each), so a run over 100 000 images is checked in seconds.
    """
    by_real, by_id = {}, {}                      # inputs by resolved path / by (dev, inode)
    for in_path, in_what in inputs:
        entry = (Path(in_path), in_what)
        by_real.setdefault(_real(in_path), entry)
        file_id = _file_id(in_path)
        if file_id is not None:
            by_id.setdefault(file_id, entry)
    seen, seen_ids = {}, {}                      # outputs so far, the same two ways
    for path, what in outputs:
        path = Path(path)
        if path.is_dir():
            raise OutputError(f"{printable(what)}: {printable(path)} is a folder; give a file name")
        real, file_id = _real(path), _file_id(path)
        hit = by_real.get(real) or (by_id.get(file_id) if file_id is not None else None)
        if hit is not None:
            in_path, in_what = hit
            raise OutputError(
                f"{printable(what)} would write {printable(path)}, which is "
                f"{printable(in_what)} {printable(in_path)}; refusing to overwrite an input")
        if real in seen:
            other_path, other_what = seen[real]
            raise OutputError(
                f"{printable(what)} and {printable(other_what)} would both write "
                f"{printable(path)}; give each output its own name")
        if file_id is not None and file_id in seen_ids:
            other_path, other_what = seen_ids[file_id]
            raise OutputError(
                f"{printable(what)} ({printable(path)}) and {printable(other_what)} "
                f"({printable(other_path)}) are the same file")
        seen[real] = (path, what)
        if file_id is not None:
            seen_ids[file_id] = (path, what)


def atomic_write(path, write):
    """Create or replace ``path`` atomically; ``write(tmp_path)`` writes the content.

    Missing parent folders are created.  The content goes to a temporary file beside
    ``path`` (same file system), is flushed to disk, and is renamed over ``path`` only
    when complete; on any failure the temporary file is removed and ``path`` is left as it
    was.  A file system error is raised as :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode & 0o7777 if path.is_file() else 0o666 & ~_UMASK
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot write {printable(path)}: {_reason(exc)}") from None
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())                      # the data is on disk before the rename
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"cannot write {printable(path)}: {_reason(exc)}") from None
        raise
    return path


def _reason(exc):
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)

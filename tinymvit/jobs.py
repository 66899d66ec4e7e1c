"""Batch jobs of the command line: which images a run takes, and a JSONL file that survives
being stopped.

* :func:`expand_inputs` - command-line arguments (files, folders, glob patterns, ``-`` for a
  list of paths on stdin) -> the images of the run, each with the path it is reported under
  (exactly as given, or as found below a folder) and its place in the input tree (what
  ``--out-dir`` mirrors).
* :class:`JsonlLog` - the ``--jsonl`` file: one JSON object per line, each flushed as soon as
  its image is done; with ``resume`` the images already recorded are skipped, a half-written
  last line (a run killed mid-write) is cut off and its image redone, and nothing else in the
  file is ever changed.  Only one run may write a file at a time (an advisory lock).
"""
import glob
import json
import os
import sys
from collections import Counter
from pathlib import Path, PurePath
from typing import NamedTuple

from .batching import IMAGE_SUFFIXES, find_images
from .errors import InputError, OutputError
from .outputs import printable

try:
    import fcntl
except ImportError:                                     # Windows: no advisory lock
    fcntl = None

__all__ = ["Input", "expand_inputs", "JsonlLog"]

_GLOB_CHARS = ("*", "?", "[")


class Input(NamedTuple):
    """One image of a run."""
    path: str                 # as given, or as found below a folder (the record's "path")
    rel: PurePath             # its place below the root of its argument, for --out-dir


def _relative_to_common_folder(paths):
    """Explicit files: their place below their deepest common folder (a single file: its name)."""
    if not paths:
        return []
    parents = [os.path.dirname(os.path.abspath(p)) for p in paths]
    try:
        base = os.path.commonpath(parents)
    except ValueError:                                  # different drives (Windows)
        return [PurePath(os.path.basename(p)) for p in paths]
    return [PurePath(os.path.relpath(os.path.abspath(p), base)) for p in paths]


def _glob_root(pattern):
    """The folder a pattern's matches are mirrored below: its leading part without wildcards."""
    parts = PurePath(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if any(c in part for c in _GLOB_CHARS):
            break
        fixed.append(part)
    return os.path.join(*fixed) if fixed else "."


def _below(folder, found):
    """``found`` (a Path under ``folder``) spelled from the folder as the user wrote it."""
    rel = Path(found).relative_to(Path(folder))
    return os.path.join(folder, str(rel)), PurePath(rel)


def expand_inputs(specs, recursive=False, stdin=None):
    """The images named by ``specs`` (command-line arguments), in order.

    * an existing folder: its image files (by suffix, see ``batching.IMAGE_SUFFIXES``; hidden
      ones skipped), sorted; with ``recursive`` its subfolders too;
    * ``-``: one path per line read from ``stdin`` (default ``sys.stdin``), taken as files;
    * a glob pattern (``*``, ``?``, ``[``; ``**`` spans folders) that is not an existing file:
      the image files it matches, sorted (a matched folder is taken as a folder);
    * anything else: a file, as given (a missing one fails later as that image's error).

    Returns ``(inputs, problems)``: a list of :class:`Input` and a list of ``(kind, message)``,
    kind "error" (a pattern that matches no image) or "warning" (a folder holding none).
    Duplicates are kept (each is an image of the run).
    """
    entries, files, problems = [], [], []       # entries: Input, or an index into ``files``
    read_stdin = False

    def add_folder(folder, root):
        found = find_images(folder, recursive=recursive)
        for path in found:
            shown, _ = _below(folder, path)
            entries.append(Input(shown, PurePath(os.path.relpath(path, root))))
        return len(found)

    def add_file(path):
        entries.append(len(files))
        files.append(path)

    for spec in specs:
        if spec == "-":
            if read_stdin:
                raise InputError("'-' (paths on stdin) may be given only once")
            read_stdin = True
            for line in (stdin or sys.stdin):
                line = line.rstrip("\r\n")
                if line.strip():
                    add_file(line)
        elif os.path.isdir(spec):
            if not add_folder(spec, spec):
                problems.append(("warning", f"{printable(spec)}: no images in this folder"
                                 f"{'' if recursive else ' (--recursive to search subfolders)'} "
                                 f"(looked for {' '.join(IMAGE_SUFFIXES)})"))
        elif any(c in spec for c in _GLOB_CHARS) and not os.path.lexists(spec):
            root, count = _glob_root(spec), 0
            for match in sorted(glob.glob(spec, recursive=True)):
                if os.path.isdir(match):
                    count += add_folder(match, root)
                elif match.lower().endswith(IMAGE_SUFFIXES):
                    entries.append(Input(match, PurePath(os.path.relpath(match, root))))
                    count += 1
            if not count:
                problems.append(("error", f"{printable(spec)}: no image file matches this "
                                 f"pattern"))
        else:
            add_file(spec)
    rels = _relative_to_common_folder(files)
    inputs = [Input(files[e], rels[e]) if isinstance(e, int) else e for e in entries]
    return inputs, problems


class JsonlLog:
    """The ``--jsonl`` file of a run (``-``: stdout, no resume).

        log = JsonlLog(path, resume=True, expect="predictions")
        with log:                      # reads what is recorded, cuts a half-written last line
            todo = log.skip(inputs, key=lambda i: i.path)    # not recorded yet
            log.write(record)          # one line, flushed

    Without ``resume`` an existing non-empty file is refused (nothing is ever overwritten).
    ``expect``: the key of this command's records ("predictions" or "fractions"); resuming a
    file whose records are another command's is refused.  Records are strict JSON (no NaN),
    ASCII-escaped (so any file name round-trips).  ``stdout``: the stream of ``-``.
    """

    def __init__(self, path, resume=False, expect=None, stdout=None):
        self.path, self.resume, self.expect = path, resume, expect
        self.stdout = stdout
        self.recorded = Counter()             # path -> number of records
        self.dropped = 0                      # bytes of a half-written last line cut off
        self.file = None

    @property
    def to_stdout(self):
        return self.path == "-"

    def __enter__(self):
        if self.to_stdout:
            if self.resume:
                raise InputError("--resume needs --jsonl FILE (a file, not '-')")
            self.file = self.stdout or sys.stdout
            return self
        path = Path(self.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a+b")             # created if missing; never truncated
        except OSError as exc:
            raise OutputError(f"cannot write {printable(path)}: {exc.strerror or exc}") from None
        try:
            self._lock()
            self.file.seek(0)
            data = self.file.read()
            if data and not self.resume:
                raise OutputError(
                    f"--jsonl {printable(path)} already exists and holds records; pass --resume "
                    f"to skip the images it records and add the others, or remove it first")
            self._read(data)
        except BaseException:
            self.file.close()
            raise
        return self

    def _lock(self):
        if fcntl is None:
            return
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputError(f"--jsonl {printable(self.path)} is being written by another "
                              f"running job; wait for it or use another file") from None

    def _read(self, data):
        """Count the recorded paths; cut a half-written last line (no final newline)."""
        end = data.rfind(b"\n") + 1
        if end < len(data):                           # killed in the middle of a line
            self.dropped = len(data) - end
            self.file.truncate(end)
            self.file.flush()
            os.fsync(self.file.fileno())
        for number, line in enumerate(data[:end].split(b"\n")[:-1], 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:                 # UnicodeDecodeError is a ValueError
                record, reason = None, f"not JSON ({exc})"
            else:
                reason = "expected an object with a \"path\""
            if not (isinstance(record, dict) and isinstance(record.get("path"), str)):
                raise OutputError(
                    f"--jsonl {printable(self.path)}:{number}: {reason}; refusing to resume a "
                    f"file that is not a tinymvit JSONL log (fix or remove that line)")
            if self.expect and "error" not in record and self.expect not in record:
                raise OutputError(
                    f"--jsonl {printable(self.path)}:{number}: this record has no "
                    f"\"{self.expect}\": the file was written by another tinymvit command; "
                    f"use another file")
            self.recorded[record["path"]] += 1

    def skip(self, items, key=str):
        """``items`` whose ``key`` (the path) is not recorded yet, in order (a path recorded n
        times skips its first n occurrences)."""
        left = Counter(self.recorded)
        todo = []
        for item in items:
            path = key(item)
            if left[path] > 0:
                left[path] -= 1
            else:
                todo.append(item)
        return todo

    def write(self, record):
        line = json.dumps(record, allow_nan=False) + "\n"    # strict JSON, ASCII
        if self.to_stdout:
            self.file.write(line)
        else:
            self.file.write(line.encode("ascii"))
        self.file.flush()

    def __exit__(self, *exc):
        if self.file is not None and not self.to_stdout:
            try:
                os.fsync(self.file.fileno())
            except OSError:
                pass
            self.file.close()                         # also releases the lock
        self.file = None
        return False

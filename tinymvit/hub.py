"""Checkpoints from the Hugging Face Hub: ``tinymvit.load("org/name[@revision]")``.

A model argument is a **local path** when it is a ``pathlib.Path``, exists on disk, or looks like
a path (starts with ``/``, ``./``, ``../`` or ``~``, holds a backslash, or ends in a checkpoint
suffix such as ``.safetensors``); a local path always wins.  Otherwise a string of the form
``org/name`` or ``org/name@revision`` (a branch, tag or commit hash; ``refs/pr/3`` works too) is a
**Hub repo id**, resolved through ``huggingface_hub`` (``pip install 'tinymvit[hub]'``) with its
usual behaviour: the cache (``HF_HUB_CACHE`` / ``HF_HOME``, by default
``~/.cache/huggingface/hub``), ``HF_HUB_OFFLINE=1`` (cache only), tokens (``HF_TOKEN`` or the
stored ``hf auth login``) for private and gated repos, and revisions.

Only what tinymvit reads is fetched, file by file, the way transformers does it:
``config.json``, ``preprocessor_config.json`` (if the repo has one), then ``model.safetensors``, or
else ``model.safetensors.index.json`` and the shards it lists.  A ``pytorch_model.bin`` is a
pickle: it is fetched only with ``allow_pickle=True`` (and then read with
``torch.load(weights_only=True)``, which needs PyTorch).  Every file after ``config.json`` is
fetched at the commit ``config.json`` came from, so a push in between cannot mix two versions.
"""
import re
from pathlib import Path

from .errors import CheckpointError, InputError
from .weights import read_checkpoint

__all__ = ["is_repo_id", "parse_repo_id", "resolve", "open_checkpoint", "download"]

CONFIG, PREPROCESSOR = "config.json", "preprocessor_config.json"
SAFETENSORS, SAFETENSORS_INDEX, PICKLE = ("model.safetensors", "model.safetensors.index.json",
                                          "pytorch_model.bin")
# A string ending in one of these is a file path, never a repo id ("google/mobilenet_v2_1.0_224"
# has the pathlib suffix ".0_224", so the test is on these suffixes only).
PATH_SUFFIXES = (".safetensors", ".bin", ".json", ".pt", ".pth", ".ckpt")
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[^\s@]+))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
INSTALL_HINT = "pip install 'tinymvit[hub]' (or pip install huggingface_hub)"


def _looks_like_path(text):
    if text.startswith(("/", "./", "../", "~", ".\\")) or text in (".", "..") or "\\" in text:
        return True
    if text.lower().endswith(PATH_SUFFIXES):
        return True
    return Path(text).expanduser().exists()


def parse_repo_id(spec):
    """``(repo_id, revision)`` when ``spec`` is a Hub repo id (revision None if not given), else
    None.  Paths, existing files and folders and path-like strings are never repo ids."""
    if not isinstance(spec, str) or _looks_like_path(spec):
        return None
    match = _REPO_ID.match(spec)
    if match is None or ".." in match["repo"] or "--" in match["repo"]:
        return None
    return match["repo"], match["revision"]


def is_repo_id(spec):
    """True when ``tinymvit.load(spec)`` would go to the Hugging Face Hub."""
    return parse_repo_id(spec) is not None


def _import_hub(spec):
    try:
        import huggingface_hub
        import huggingface_hub.constants  # noqa: F401  (the package loads its submodules lazily)
        import huggingface_hub.errors  # noqa: F401  (huggingface_hub >= 0.24)
    except ImportError:
        raise CheckpointError(
            f"{spec!r} is not a local file or folder, so it was taken as a Hugging Face Hub repo "
            f"id; loading from the Hub needs huggingface_hub: {INSTALL_HINT}") from None
    return huggingface_hub


def _offline(hf):
    return bool(getattr(hf.constants, "HF_HUB_OFFLINE", False))


class _Fetcher:
    """Fetches single files of one repo at one revision; Hub errors become CheckpointErrors."""

    def __init__(self, hf, repo_id, revision, token, cache_dir):
        self.hf, self.repo_id, self.revision = hf, repo_id, revision
        self.token, self.cache_dir = token, cache_dir
        self.name = repo_id + (f"@{revision}" if revision else "")
        self.not_cached = []          # files that were wanted but are neither cached nor reachable

    def _cache(self):
        return self.cache_dir or self.hf.constants.HF_HUB_CACHE

    def __call__(self, filename, required=False, unknown_ok=True):
        """Local path of ``filename`` (downloaded if needed), or None if the repo has no such file.

        Offline (or with the Hub unreachable) a file that is not cached is an error if
        ``required``; otherwise it counts as absent when the cache knows it does not exist, or
        when ``unknown_ok`` (it is then listed in ``not_cached`` for the error messages).
        """
        errors = self.hf.errors
        from . import __version__
        try:
            return Path(self.hf.hf_hub_download(
                self.repo_id, filename, revision=self.revision, token=self.token,
                cache_dir=self.cache_dir, library_name="tinymvit", library_version=__version__))
        except errors.LocalEntryNotFoundError as exc:   # before EntryNotFoundError, its parent
            if not required and self._known_absent(filename):
                return None
            if required or not unknown_ok:
                raise CheckpointError(self._not_cached_message(filename, exc)) from None
            self.not_cached.append(filename)
            return None
        except errors.EntryNotFoundError:
            if required:
                raise CheckpointError(
                    f"{self.name}: the Hub repo has no {filename}, so it is not a transformers "
                    f"checkpoint tinymvit can read") from None
            return None
        except errors.GatedRepoError:
            raise CheckpointError(
                f"{self.name}: this Hub repo is gated: accept its terms on "
                f"https://huggingface.co/{self.repo_id} and log in (hf auth login, or set "
                f"HF_TOKEN)") from None
        except errors.RepositoryNotFoundError:
            raise CheckpointError(
                f"{self.name}: no such local checkpoint, and no model repo {self.repo_id!r} on "
                f"the Hugging Face Hub (check the spelling; for a private repo log in with "
                f"hf auth login or set HF_TOKEN)") from None
        except errors.RevisionNotFoundError:
            raise CheckpointError(
                f"{self.name}: the Hub repo {self.repo_id!r} has no revision "
                f"{self.revision!r} (expected a branch, tag or commit hash)") from None
        except errors.HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            hint = (" (unauthorized: log in with hf auth login or set HF_TOKEN)"
                    if status in (401, 403) else "")
            raise CheckpointError(f"{self.name}: the Hub refused {filename}{hint}: "
                                  f"{_first_line(exc)}") from None
        except (OSError, ValueError) as exc:    # no token file, invalid repo id, disk full, ...
            raise CheckpointError(f"{self.name}: cannot fetch {filename} from the Hugging Face "
                                  f"Hub: {_first_line(exc)}") from None

    def _not_cached_message(self, filename, exc):
        where = f"the local Hub cache ({self._cache()})"
        if _offline(self.hf):
            return (f"{self.name}: {filename} is not in {where} and HF_HUB_OFFLINE is set; "
                    f"fetch the checkpoint once online, or unset HF_HUB_OFFLINE")
        cause = exc.__cause__ or exc
        return (f"{self.name}: cannot reach the Hugging Face Hub ({_first_line(cause)}) and "
                f"{filename} is not in {where}")

    def _known_absent(self, filename):
        cached = self.hf.try_to_load_from_cache(self.repo_id, filename, cache_dir=self.cache_dir,
                                                revision=self.revision)
        return cached is not None and not isinstance(cached, str)    # _CACHED_NO_EXIST

    def pin_to(self, folder):
        """Fetch every further file at the commit of the snapshot ``folder`` (its name)."""
        if _COMMIT.match(folder.name):
            self.revision = folder.name

    def has_cached_or_remote(self, filename):
        """Whether the repo has ``filename`` (cache first; online, a metadata request)."""
        try:
            cached = self.hf.try_to_load_from_cache(self.repo_id, filename,
                                                    cache_dir=self.cache_dir,
                                                    revision=self.revision)
            if isinstance(cached, str):
                return True
            if _offline(self.hf):
                return False
            return bool(self.hf.HfApi(token=self.token).file_exists(
                self.repo_id, filename, revision=self.revision))
        except Exception:  # only to word an error message better; never fatal
            return False


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def download(repo_id, revision=None, *, allow_pickle=False, token=None, cache_dir=None):
    """Fetch a checkpoint from the Hub into its cache; return the local snapshot folder.

    Fetches config.json, preprocessor_config.json (if present) and model.safetensors, or the
    sharded model.safetensors.index.json and its shards, or — only with ``allow_pickle`` —
    pytorch_model.bin.  Raises CheckpointError with one line for every Hub failure.
    """
    hf = _import_hub(repo_id)
    fetch = _Fetcher(hf, repo_id, revision, token, cache_dir)
    folder = fetch(CONFIG, required=True).parent      # snapshots/<commit>
    fetch.pin_to(folder)
    fetch(PREPROCESSOR, unknown_ok=False)    # it decides the preprocessing: never guess
    if fetch(SAFETENSORS):
        return folder
    index = fetch(SAFETENSORS_INDEX)
    if index is not None:
        for shard in _shards(index, fetch.name):
            fetch(shard, required=True)
        return folder
    if allow_pickle and fetch(PICKLE):
        return folder
    if not allow_pickle and fetch.has_cached_or_remote(PICKLE):
        raise CheckpointError(
            f"{fetch.name}: this Hub repo has weights only as pytorch_model.bin, a pickle, which "
            f"tinymvit does not fetch unless asked: pass allow_pickle=True (--allow-pickle; "
            f"needs PyTorch, read with torch.load(weights_only=True)), or use a revision with "
            f"model.safetensors")
    if fetch.not_cached:
        raise _not_cached_error(fetch)
    raise CheckpointError(
        f"{fetch.name}: the Hub repo has no model.safetensors or model.safetensors.index.json"
        + ("" if allow_pickle else " (and pytorch_model.bin, a pickle, was not asked for: "
                                   "allow_pickle=True / --allow-pickle)"))


def _not_cached_error(fetch):
    names = " / ".join(fetch.not_cached)
    if _offline(fetch.hf):
        return CheckpointError(f"{fetch.name}: no weights ({names}) in the local Hub cache "
                               f"({fetch._cache()}) and HF_HUB_OFFLINE is set")
    return CheckpointError(f"{fetch.name}: cannot reach the Hugging Face Hub and no weights "
                           f"({names}) are in the local Hub cache ({fetch._cache()})")


def _shards(index_path, name):
    import json
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{name}: {index_path.name} is not valid JSON ({exc})") from None
    shards = sorted(set(map(str, weight_map.values()))) if isinstance(weight_map, dict) else []
    # shard names come from the repo: plain file names in the same folder, nothing else
    if not shards or not all(re.fullmatch(r"[\w.-]+\.safetensors", s) and not s.startswith(".")
                             for s in shards):
        shown = repr(weight_map)[:200]
        raise CheckpointError(f"{name}: {index_path.name} must map tensor names to .safetensors "
                              f"files beside it, got {shown}")
    return shards


def resolve(spec, *, revision=None, allow_pickle=False, token=None, cache_dir=None):
    """Local path for ``spec``: the path itself, or for a Hub repo id the cached snapshot folder
    (fetched if needed).  ``revision`` is the same as ``spec@revision``."""
    parsed = parse_repo_id(spec)
    if parsed is None:
        if revision is not None:
            raise InputError(f"revision={revision!r} only applies to Hugging Face Hub repo ids "
                             f"(org/name), but {spec!r} is a local path")
        return Path(spec).expanduser()
    repo_id, at = parsed
    if revision is not None and at is not None and revision != at:
        raise InputError(f"{spec!r} names revision {at!r} but revision={revision!r} was passed")
    return download(repo_id, revision or at, allow_pickle=allow_pickle, token=token,
                    cache_dir=cache_dir)


def open_checkpoint(spec, *, revision=None, allow_pickle=False, token=None, cache_dir=None):
    """Read a local checkpoint or a Hub repo id into a :class:`tinymvit.weights.Checkpoint`.

    Local paths are read exactly as before (a local folder's pytorch_model.bin included); for a
    repo id, ``checkpoint.source`` is the repo id as given.
    """
    local = resolve(spec, revision=revision, allow_pickle=allow_pickle, token=token,
                    cache_dir=cache_dir)
    checkpoint = read_checkpoint(local)
    if is_repo_id(spec):
        checkpoint.source = spec + (f"@{revision}" if revision and "@" not in spec else "")
    return checkpoint

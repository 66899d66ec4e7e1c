"""Compiled kernels on disk, and loading them back without Numba.

The first time a job function is needed, Numba compiles it into machine code
(``policy.Job``).  That code is saved here as an object file, and every later
process loads the object file straight into an LLVM JIT engine (``llvmlite``, a
small part of Numba's install) and calls it through a C function pointer: Numba
itself is never imported then, which takes a process from ``import tinymvit`` to
its first result several times faster.

Where the files live: a folder whose name is a hash of every kernel source
file, of Numba's and LLVM's versions, of the compile options and of the host CPU
(``cache_key``) -- so code can never be served stale, or to another CPU.  It is
created under ``NUMBA_CACHE_DIR`` if set, else beside the kernels
(``__pycache__``), else in the user's cache folder, else in a private folder in
the temp dir, else nowhere (one line on stderr says so, and every process
compiles).  ``TINYMVIT_NUMBA_CACHE=0`` turns the cache off; so does
``TINYMVIT_ISA`` (forced tile sizes must not land in the real CPU's cache).  A
damaged file is deleted and its kernel recompiled, with one line on stderr.
"""
import glob
import hashlib
import importlib.machinery
import importlib.util
import os
import stat
import sys
import tempfile
import threading

KERNELS_DIR = os.path.dirname(os.path.realpath(__file__))
_LOCK = threading.RLock()


def say(message):
    """One line on stderr."""
    sys.stderr.write(f"tinymvit: {message}\n")


def flag(name, default):
    """An on/off environment variable."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    return default


# ---------------------------------------------------------------- the cache folder
def cache_key(options):
    """A short hash of everything compiled code depends on (``options``: a string naming
    the compile options and tile sizes)."""
    import llvmlite.binding as ll
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(KERNELS_DIR, "*.py"))):
        with open(path, "rb") as f:
            h.update(f.read())
    numba_version = "?"
    spec = importlib.util.find_spec("numba")
    if spec is not None:          # numba/_version.py, read without importing Numba
        version_file = os.path.join(spec.submodule_search_locations[0], "_version.py")
        if os.path.isfile(version_file):
            with open(version_file, "rb") as f:
                numba_version = hashlib.sha256(f.read()).hexdigest()
    import llvmlite
    h.update(repr((numba_version, llvmlite.__version__, sys.version_info[:2], options,
                   ll.get_host_cpu_name(), ll.get_host_cpu_features().flatten())).encode())
    return h.hexdigest()[:16]


def _writable_dir(path, private=False):
    """``path`` (created if missing) if we can write there; private: ours alone (0700)."""
    try:
        os.makedirs(path, mode=0o700 if private else 0o777, exist_ok=True)
        if private:
            info = os.lstat(path)
            uid = os.getuid() if hasattr(os, "getuid") else None
            if (not stat.S_ISDIR(info.st_mode) or info.st_mode & 0o022
                    or (uid is not None and info.st_uid != uid)):
                return None
        tempfile.TemporaryFile(dir=path).close()
        return path
    except (OSError, ValueError):
        return None


def cache_root(options, forced_isa=False):
    """Where compiled kernels are cached, or None (not cached)."""
    if not flag("TINYMVIT_NUMBA_CACHE", True) or forced_isa:
        return None
    name = f"tinymvit-{cache_key(options)}"
    if os.environ.get("NUMBA_CACHE_DIR"):
        candidates = [os.path.join(os.environ["NUMBA_CACHE_DIR"], name)]
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        candidates = [os.path.join(KERNELS_DIR, "__pycache__", name),
                      os.path.join(xdg, "tinymvit", name)]
    for path in candidates:
        if _writable_dir(path):
            return path
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    private = _writable_dir(os.path.join(tempfile.gettempdir(), f"tinymvit-numba-{uid}"), True)
    tried = " and ".join(candidates)
    if private and _writable_dir(os.path.join(private, name)):
        say(f"cannot write the kernel cache to {tried}: caching compiled kernels in "
            f"{os.path.join(private, name)} (set NUMBA_CACHE_DIR to choose)")
        return os.path.join(private, name)
    say(f"no writable folder for the kernel cache ({tried}, the temp folder): kernels are "
        f"compiled in every process; set NUMBA_CACHE_DIR to a writable folder to cache them")
    return None


# ---------------------------------------------------------------- object files
def save(folder, key, symbol, code):
    """Store the machine code of function ``symbol`` as ``<folder>/<key>.o``, and in
    ``<key>.sym`` the symbol and a hash of the code (LLVM would crash on a damaged file)."""
    if folder is None:
        return
    stamp = f"{symbol} {hashlib.sha256(code).hexdigest()}".encode()
    try:
        for suffix, data in ((".o", code), (".sym", stamp)):
            path = os.path.join(folder, key + suffix)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
    except OSError as exc:                      # a full disk costs a recompile, no more
        say(f"could not save a compiled kernel in {folder} ({exc.strerror})")


def load(folder, key):
    """The address of the cached function ``key``, or None (not cached, or damaged)."""
    if folder is None:
        return None
    obj, sym = (os.path.join(folder, key + s) for s in (".o", ".sym"))
    if not (os.path.isfile(obj) and os.path.isfile(sym)):
        return None
    with _LOCK:
        address, problem = None, "its code does not match its hash"
        try:
            with open(obj, "rb") as f:
                code = f.read()
            with open(sym, "rb") as f:
                symbol, _, digest = f.read().decode().partition(" ")
            if digest == hashlib.sha256(code).hexdigest():
                address = _Engine.get().add(code, symbol)
                problem = f"no function {symbol}"
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes LLVM raise
            problem = type(exc).__name__
        if address:
            return address
        for path in (obj, sym):
            try:
                os.unlink(path)
            except OSError:
                pass
        say(f"dropped a damaged kernel cache entry ({key}: {problem}) in {folder}; recompiling")
        return None


class _Engine:
    """One LLVM JIT engine holding the cached object files of this process."""

    _instance = None

    # the two Numba runtime functions compiled code refers to on its error paths (jobs raise
    # nothing and allocate nothing, so they are never called), as Numba's runtime defines them
    STUBS = """
    declare void @free(ptr)
    define void @NRT_MemInfo_call_dtor(ptr %m) { ret void }
    define void @NRT_Free(ptr %p) { call void @free(ptr %p) ret void }
    """

    @classmethod
    def get(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        import llvmlite.binding as ll
        ll.initialize_native_target()
        ll.initialize_native_asmprinter()
        self.ll = ll
        _register_numba_symbols(ll)
        target = ll.Target.from_default_triple()
        tm = target.create_target_machine(cpu=ll.get_host_cpu_name(),
                                          features=ll.get_host_cpu_features().flatten(),
                                          jit=True)
        stubs = ll.parse_assembly(self.STUBS)
        self.engine = ll.create_mcjit_compiler(stubs, tm)
        self.engine.finalize_object()

    def add(self, code, symbol):
        self.engine.add_object_file(self.ll.ObjectFileRef.from_data(code))
        self.engine.finalize_object()
        return self.engine.get_function_address(symbol)


def _register_numba_symbols(ll):
    """Tell LLVM where Numba's C helper functions are, reading the two C extension modules
    that hold them directly (importing the ``numba`` package itself would cost ~0.2 s)."""
    root = importlib.util.find_spec("numba").submodule_search_locations[0]
    for name, pattern, prefix in (("numba._helperlib", "_helperlib*", "numba_"),
                                  ("numba._dynfunc", "_dynfunc*", "numba_")):
        module = sys.modules.get(name)
        if module is None:
            path = [p for p in glob.glob(os.path.join(root, pattern))
                    if p.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))][0]
            loader = importlib.machinery.ExtensionFileLoader(name, path)
            module = importlib.util.module_from_spec(
                importlib.util.spec_from_file_location(name, path, loader=loader))
            loader.exec_module(module)
        for py_name, address in module.c_helpers.items():
            ll.add_symbol(prefix + py_name, address)
    ll.add_symbol("_Py_NoneStruct", id(None))
    import builtins
    for obj in vars(builtins).values():
        if isinstance(obj, type) and issubclass(obj, BaseException):
            ll.add_symbol(f"PyExc_{obj.__name__}", id(obj))

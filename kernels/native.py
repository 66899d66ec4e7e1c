"""Compiled kernels on disk, and loading them back without Numba.

The first time a job function is needed, Numba compiles it into machine code
(``policy.Job``).  That code is saved here as an object file, and every later
process loads the object file itself (``elf.py``, on Linux x86-64; elsewhere
into an LLVM JIT engine from ``llvmlite``, a small part of Numba's install) and
calls it through a C function pointer: neither Numba nor LLVM is loaded then,
which takes a process from ``import tinymvit`` to its first result several
times faster, in a fraction of the memory.

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

from . import elf

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


def byte_compile_modules():
    """Write the bytecode (``.pyc``) of tinymvit's own modules where Python looks for it, as
    ``python -m compileall`` does (``compileall.compile_file``: a file whose ``.pyc`` is up
    to date is left alone; one that cannot be written is skipped silently).

    Python writes it itself when it imports a module, unless PYTHONDONTWRITEBYTECODE is set
    (as in many Docker images): then every process compiles tinymvit's ~9000 lines of source
    again, ~0.1 s of a 0.25 s start.  Called with the first compilation of the kernels (kept
    in a cache for the same reason) and by ``tinymvit compile``."""
    import compileall
    from .. import weights
    folders = [os.path.dirname(os.path.realpath(m.__file__))
               for m in (sys.modules["tinymvit"], weights)] + [KERNELS_DIR]
    sources = {path for folder in folders     # an installed package holds kernels/, weights/
               for path in glob.glob(os.path.join(folder, "**", "*.py"), recursive=True)}
    for source in sorted(sources):
        compileall.compile_file(source, quiet=2)


# ---------------------------------------------------------------- the cache folder
def host_cpu():
    """(name, features) of this CPU: /proc/cpuinfo's model name and flags on Linux (no LLVM
    needed), else LLVM's host CPU name and features."""
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines()
                        if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        if "flags" in info:
            return info.get("model name", "?"), frozenset(info["flags"].split())
    except (OSError, ValueError):
        pass
    import llvmlite.binding as ll
    features = ll.get_host_cpu_features()
    return ll.get_host_cpu_name(), frozenset(k for k, on in features.items() if on)


def cache_key(options):
    """A short hash of everything compiled code depends on (``options``: a string naming
    the compile options and tile sizes)."""
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
    name, features = host_cpu()
    h.update(repr((numba_version, llvmlite.__version__, sys.version_info[:2], options,
                   name, sorted(features))).encode())
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


def is_cached(folder, key):
    """Whether ``key``'s files are in the cache (not whether they are sound: see load)."""
    return folder is not None and all(os.path.isfile(os.path.join(folder, key + suffix))
                                      for suffix in (".o", ".sym"))


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
                address = load_code(code, symbol)
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


def load_code(code, symbol, engine=None):
    """The address of function ``symbol`` in object file ``code``, loaded by ``elf.py``
    or, where it cannot, by LLVM (``engine="llvm"`` forces LLVM)."""
    if engine != "llvm":
        try:
            return elf.load_function(code, symbol, runtime_symbols().get)
        except elf.Unsupported:
            pass
    return _Engine.get().add(code, symbol)


class _Engine:
    """One LLVM JIT engine holding the cached object files of this process."""

    _instance = None

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
        for name, address in runtime_symbols().items():
            ll.add_symbol(name, address)
        target = ll.Target.from_default_triple()
        tm = target.create_target_machine(cpu=ll.get_host_cpu_name(),
                                          features=ll.get_host_cpu_features().flatten(),
                                          jit=True)
        self.engine = ll.create_mcjit_compiler(ll.parse_assembly(""), tm)
        self.engine.finalize_object()

    def add(self, code, symbol):
        self.engine.add_object_file(self.ll.ObjectFileRef.from_data(code))
        self.engine.finalize_object()
        return self.engine.get_function_address(symbol)


_SYMBOLS = {}


class _Resolver(dict):
    """name -> address of what compiled code refers to; names not listed are looked up in
    the process (the C library, Python's C API)."""

    def get(self, name, default=None):
        if name in self:
            return self[name]
        import ctypes
        try:
            return ctypes.cast(getattr(process_library(), name), ctypes.c_void_p).value
        except AttributeError:
            return default


def process_library():
    """The running process's own symbols as a ctypes library (the C library's among them)."""
    import ctypes
    if "process" not in _SYMBOLS:
        _SYMBOLS["process"] = ctypes.CDLL(None) if os.name == "posix" else ctypes.pythonapi
    return _SYMBOLS["process"]


def runtime_symbols():
    """Addresses of the Numba runtime functions and Python objects compiled code refers to.

    Numba's C helpers are read from the two small C extension modules that hold them
    (importing the ``numba`` package itself would cost ~0.2 s).  Jobs raise nothing and
    allocate nothing, so these are only ever reached on error paths that never run; the
    two NRT functions are stand-ins as Numba's runtime defines them (a no-op destructor
    call, and free)."""
    if "table" in _SYMBOLS:
        return _SYMBOLS["table"]
    import builtins
    import ctypes
    table = _Resolver()
    root = importlib.util.find_spec("numba").submodule_search_locations[0]
    for name, pattern in (("numba._helperlib", "_helperlib*"), ("numba._dynfunc", "_dynfunc*")):
        module = sys.modules.get(name)
        if module is None:
            path = [p for p in glob.glob(os.path.join(root, pattern))
                    if p.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))][0]
            loader = importlib.machinery.ExtensionFileLoader(name, path)
            module = importlib.util.module_from_spec(
                importlib.util.spec_from_file_location(name, path, loader=loader))
            loader.exec_module(module)
        for py_name, address in module.c_helpers.items():
            table["numba_" + py_name] = address
    table["_Py_NoneStruct"] = id(None)
    for obj in vars(builtins).values():
        if isinstance(obj, type) and issubclass(obj, BaseException):
            table[f"PyExc_{obj.__name__}"] = id(obj)
    no_op = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda meminfo: None)
    _SYMBOLS["no_op"] = no_op                              # kept alive
    table["NRT_MemInfo_call_dtor"] = ctypes.cast(no_op, ctypes.c_void_p).value
    table["NRT_Free"] = ctypes.cast(process_library().free, ctypes.c_void_p).value
    _SYMBOLS["table"] = table
    return table

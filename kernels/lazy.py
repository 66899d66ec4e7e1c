"""Numba on demand: the kernel modules import without it, and get it to compile.

A process whose kernels are all in the machine-code cache (``native.py``) never
imports Numba (about 0.2 s).  So the kernel modules only *record* their compiled
functions at import -- :func:`helper` and :func:`intrinsic` return a stand-in, and
``numba`` / ``llvmlite.ir`` are :class:`LazyModule` names -- and :func:`materialize`,
run the first time something must be compiled, imports Numba and replaces every
stand-in in every kernel module by the real Numba object, so that Numba compiling a
function finds real dispatchers, intrinsics and modules among its globals.
"""
import importlib
import sys
import threading

_HELPERS, _INTRINSICS, _HOOKS = [], [], []
_LOCK = threading.RLock()
_DONE = False


class LazyModule:
    """A module imported on first attribute access (and by :func:`materialize`)."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)


class Intrinsic:
    """An LLVM-IR function (``numba.extending.intrinsic``) waiting for Numba."""

    def __init__(self, definer):
        self.definer = definer
        self.__name__, self.__doc__ = definer.__name__, definer.__doc__


def register_helper(fn, options):
    """Record ``fn`` to become ``numba.njit(**options)(fn)``; returns fn."""
    _HELPERS.append((fn, options))
    return fn


def intrinsic(definer):
    """Decorator of a Numba intrinsic (a typing function returning (signature, codegen))."""
    placeholder = Intrinsic(definer)
    _INTRINSICS.append(placeholder)
    return placeholder


def on_numba(hook):
    """Decorator of a function run once Numba is imported, before anything is compiled
    (``simd.py`` defines its vector type there)."""
    _HOOKS.append(hook)
    return hook


def _one_copy(dispatcher, options):
    """A helper that is not inlined is compiled once per argument *types*: a call passing
    the constant 0 or False compiles the same code as one passing a variable (Numba would
    otherwise compile a copy for each literal value, each costing compile time)."""
    if options.get("inline") == "always":       # inlined into the caller: typed there
        return dispatcher
    from numba.core.types import unliteral
    typed = dispatcher.get_call_template

    def get_call_template(args, kws):
        return typed(tuple(unliteral(a) for a in args), {k: unliteral(v) for k, v in kws.items()})
    dispatcher.get_call_template = get_call_template
    return dispatcher


def materialize():
    """Import Numba and replace every recorded stand-in in the kernel modules (once)."""
    global _DONE
    with _LOCK:
        if _DONE:
            return
        import numba
        from numba.extending import intrinsic as numba_intrinsic
        for hook in _HOOKS:
            hook()
        real = {}
        for placeholder in _INTRINSICS:
            real[id(placeholder)] = (placeholder, numba_intrinsic(placeholder.definer))
        for fn, options in _HELPERS:
            real[id(fn)] = (fn, _one_copy(numba.njit(**options)(fn), options))
        package = __name__.rsplit(".", 1)[0]
        for name, module in list(sys.modules.items()):
            if module is None or not name.startswith(package + "."):
                continue
            for key, value in list(vars(module).items()):
                if isinstance(value, LazyModule):
                    setattr(module, key, importlib.import_module(value._name))
                elif id(value) in real and real[id(value)][0] is value:
                    setattr(module, key, real[id(value)][1])
        _DONE = True

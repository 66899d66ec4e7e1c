"""The kernels' on-disk cache in hostile environments (issue 7): a read-only install run by
a user without a home folder, no writable folder at all, and damaged cache files.

Each case runs in a fresh process on a copy of the package, so the cache location is
decided from scratch.  "Unwritable" is made so that it holds for root too: the kernels'
``__pycache__`` is a regular file and HOME / XDG_CACHE_HOME lie under /dev/null.
"""
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import tinymvit

REPO = Path(__file__).resolve().parents[1]
KERNEL_RUN = (
    "import numpy as np\n"
    "from tinymvit.kernels import pooling\n"
    "x = np.arange(48, dtype=np.float32).reshape(1, 4, 4, 3)\n"
    "out = np.empty((1, 3), np.float32)\n"
    "pooling.global_avg_pool(x, out)\n"
    "print(out.tolist())\n")
EXPECTED = "[[22.5, 23.5, 24.5]]"


def _copy_package(root):
    """The package laid out under ``root`` as an install would (no bytecode); its folder."""
    package = root / "tinymvit"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "tinymvit", package, ignore=ignore)
    shutil.copytree(REPO / "kernels", package / "kernels", ignore=ignore)
    shutil.copytree(REPO / "weights", package / "weights", ignore=ignore)
    return package


@pytest.fixture(scope="module")
def read_only_install(tmp_path_factory):
    """A copy of the package laid out as installed, which nobody can write."""
    root = tmp_path_factory.mktemp("install")
    package = _copy_package(root)
    (package / "kernels" / "__pycache__").write_text("not a folder")
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield root
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


COMPILING = "tinymvit: compiling kernels"   # a first run's notice


def _run(code, env_changes, pythonpath=None, cwd=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NUMBA_CACHE") and k not in ("TINYMVIT_DEBUG", "PYTHONPATH")}
    env.update(env_changes)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=600, cwd=str(pythonpath or cwd))
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines(), [line for line in res.stderr.strip().splitlines()
                                             if not line.startswith(COMPILING)]


def _cache_name():
    from tinymvit.kernels.policy import CACHE_DIR
    return os.path.basename(CACHE_DIR)


def test_read_only_install_caches_under_the_temp_folder(read_only_install, tmp_path):
    env = {"HOME": "/dev/null/home", "XDG_CACHE_HOME": "/dev/null/cache", "TMPDIR": str(tmp_path)}
    code = "import tinymvit\nprint(tinymvit.__file__)\n" + KERNEL_RUN
    private = tmp_path / f"tinymvit-numba-{os.getuid()}"
    cache = private / _cache_name()
    kernels = read_only_install / "tinymvit" / "kernels"
    for _ in range(2):                                       # compiles, then loads the cache
        out, err = _run(code, env, read_only_install)
        assert out == [str(read_only_install / "tinymvit" / "__init__.py"), EXPECTED]
        assert err == [f"tinymvit: cannot write the kernel cache to "
                       f"{kernels / '__pycache__' / cache.name} and "
                       f"/dev/null/cache/tinymvit/{cache.name}: caching compiled kernels in "
                       f"{cache} (set NUMBA_CACHE_DIR to choose)"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert (cache / "pooling.pool_job.o").is_file()


def test_a_temp_folder_of_another_user_is_never_used(read_only_install, tmp_path):
    planted = tmp_path / f"tinymvit-numba-{os.getuid()}"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)                                     # anyone could have put code here
    env = {"HOME": "/dev/null/home", "XDG_CACHE_HOME": "/dev/null/cache", "TMPDIR": str(tmp_path)}
    out, err = _run("import tinymvit\n" + KERNEL_RUN, env, read_only_install)
    assert out == [EXPECTED] and len(err) == 1 and "kernels are compiled in every process" in err[0]
    assert list(planted.iterdir()) == []


def test_nothing_writable_runs_uncached(read_only_install):
    env = {"HOME": "/dev/null/home", "XDG_CACHE_HOME": "/dev/null/cache"}
    code = "import tempfile\ntempfile.tempdir = '/dev/null/tmp'\nimport tinymvit\n" + KERNEL_RUN
    out, err = _run(code, env, read_only_install)
    assert out == [EXPECTED]
    assert len(err) == 1 and err[0].startswith("tinymvit: no writable folder for the kernel cache")
    assert err[0].endswith("the temp folder): kernels are compiled in every process; set "
                           "NUMBA_CACHE_DIR to a writable folder to cache them")


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A NUMBA_CACHE_DIR holding the compiled pooling kernel."""
    folder = tmp_path_factory.mktemp("warm") / "cache"
    out, err = _run(KERNEL_RUN, {"NUMBA_CACHE_DIR": str(folder)}, cwd=folder.parent)
    assert out == [EXPECTED] and err == []
    return folder


@pytest.mark.parametrize("damage", ["wrong-symbol", "truncate-code", "garbage-code"])
def test_a_damaged_cache_file_is_dropped_and_rebuilt(warm_cache, tmp_path, damage):
    shutil.copytree(warm_cache, tmp_path / "cache")
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    run = lambda: _run(KERNEL_RUN, env, cwd=tmp_path)  # noqa: E731
    symbol = next(tmp_path.glob("cache/*/pooling.pool_job.sym"))
    code = next(tmp_path.glob("cache/*/pooling.pool_job.o"))
    if damage == "wrong-symbol":
        symbol.write_text("no_such_function")
    elif damage == "truncate-code":
        code.write_bytes(code.read_bytes()[:100])
    else:
        code.write_bytes(os.urandom(3000))
    out, err = run()
    assert out == [EXPECTED]
    assert len(err) == 1 and err[0].startswith("tinymvit: dropped a damaged kernel cache entry")
    assert str(code.parent) in err[0]
    out, err = run()                                         # rebuilt: silent again
    assert out == [EXPECTED] and err == []


def test_the_kernels_cache_folder_is_reported():
    assert tinymvit.kernels.CACHE_DIR is None or os.path.isdir(tinymvit.kernels.CACHE_DIR)


def test_a_warm_process_loads_neither_numba_nor_llvm(warm_cache):
    """Start-up with a warm cache: the kernels' machine code is linked by kernels/elf.py, so
    neither Numba (~0.2 s) nor, on Linux x86-64, the LLVM library (~50 ms, ~48 MB) loads;
    nor Pillow (~12 ms), which only image inputs need."""
    from tinymvit.kernels import elf
    code = KERNEL_RUN + ("import sys\n"
                         "print(sorted(m for m in ('numba', 'llvmlite.binding', 'PIL') "
                         "if m in sys.modules))\n")
    out, err = _run(code, {"NUMBA_CACHE_DIR": str(warm_cache)}, cwd=warm_cache.parent)
    assert err == [] and out[0] == EXPECTED
    assert out[1] == ("[]" if elf.supported() else "['llvmlite.binding']")


@pytest.mark.parametrize("helper", ["works", "fails", "off"])
def test_a_first_run_compiles_in_two_processes(tmp_path, helper):
    """Kernels missing from the cache are shared between this process and a helper process
    (policy.compile_all): each takes the next unit nobody has claimed.  Here this process
    claims only the first unit (the executor: execute, serve, copy_checked), so the other
    (pool) is the helper's -- or, if the helper fails, compiled here after all."""
    code = ("import subprocess, sys\nfrom tinymvit.kernels import policy\n"
            "policy.claim = lambda claims, i, claim=policy.claim: i == 0 and claim(claims, i)\n")
    if helper == "fails":
        code += ("policy._start_helper = lambda claims, units: subprocess.Popen(["
                 "sys.executable, '-c', 'raise SystemExit(1)'])\n")
    code += KERNEL_RUN + ("from tinymvit.kernels import program\n"
                          "print(sorted(program.kernel_status().items()))\n")
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache"), "TINYMVIT_PARALLEL_COMPILE":
           "0" if helper == "off" else "1"}
    out, err = _run(code, env, cwd=tmp_path)
    assert out[0] == EXPECTED and err == []
    status = dict(eval(out[1]))
    used = {k: v for k, v in status.items() if v != "unused"}
    calls = {"execute", "serve", "copy_checked"}      # the unit every model call needs
    assert set(used) == calls | {"pool"}
    from tinymvit.kernels.policy import _cores
    if helper == "works" and _cores() >= 2:             # one compiled here, one by the helper
        assert used["pool"] == "cached" and {used[k] for k in calls} == {"compiled"}
    else:
        assert set(used.values()) == {"compiled"}
    assert len(list(tmp_path.glob("cache/*/*.o"))) == 4
    assert [p.name for p in tmp_path.glob("cache/*/*") if p.is_dir()] == []    # claims: gone


def _stale_bytecode(package):
    """The sources under ``package`` without a .pyc that Python would use (checked as its
    import system does: magic number, then the source's mtime and size, or a hash)."""
    stale = []
    for source in sorted(package.rglob("*.py")):
        pyc = Path(importlib.util.cache_from_source(str(source)))
        head = pyc.read_bytes()[:16] if pyc.exists() else b""
        st = source.stat()
        fresh = head[:4] == importlib.util.MAGIC_NUMBER and (
            int.from_bytes(head[4:8], "little") & 1 or               # hash-based
            (int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
             and int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF))
        if not fresh:
            stale.append(source.relative_to(package))
    return stale


def test_a_first_run_writes_the_modules_bytecode_too(tmp_path):
    """Under PYTHONDONTWRITEBYTECODE=1 (many Docker images) Python writes no .pyc, and every
    process would compile tinymvit's source again (~0.1 s of a 0.25 s start): the first run
    writes it, with the kernels."""
    package = _copy_package(tmp_path / "install")
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    assert len(_stale_bytecode(package)) > 40
    out, err = _run(KERNEL_RUN, env, pythonpath=package.parent)
    assert out == [EXPECTED] and err == []
    assert _stale_bytecode(package) == []


def test_tinymvit_compile_writes_kernels_and_bytecode(tmp_path):
    """`tinymvit compile --model M` (a Docker build): M's kernels in the cache, and the
    modules' bytecode; a later process then starts without compiling anything."""
    from fake_checkpoints import random_checkpoint
    model = random_checkpoint(tmp_path / "m", "mobilenet_v2", depth_multiplier=0.35,
                              num_labels=3, image_size=64)
    package = _copy_package(tmp_path / "install")
    cache = tmp_path / "cache"
    env = {"NUMBA_CACHE_DIR": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
    compile_cli = "import sys\nfrom tinymvit.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    res = subprocess.run([sys.executable, "-c", compile_cli, "compile", "--model", str(model)],
                         capture_output=True, text=True, timeout=600, cwd=str(package.parent),
                         env={**{k: v for k, v in os.environ.items()
                                 if not k.startswith("NUMBA_CACHE") and k != "PYTHONPATH"},
                              **env, "PYTHONPATH": str(package.parent)})
    assert res.returncode == 0, res.stderr
    assert f"the kernels of {model} ready for this CPU" in res.stdout
    assert {"program.execute.o", "depthwise.separable_job.o", "pointwise.gemm_job.o"} <= {
        p.name for p in cache.glob("*/*.o")}
    assert _stale_bytecode(package) == []
    code = ("import numpy as np, tinymvit, sys\n"
            f"m = tinymvit.load({str(model)!r})\n"
            "m(np.zeros((1, 3, 64, 64), np.float32))\n"
            "from tinymvit.kernels import program\n"
            "print(sorted(set(program.kernel_status().values())))\n")
    out, err = _run(code, env, pythonpath=package.parent)
    assert out == ["['cached', 'unused']"] and err == []


def test_load_never_compiles(tmp_path):
    """load() readies a classifier for its first call only from the kernel cache: with an
    empty cache it compiles nothing (and says nothing); the first call does, saying so."""
    from fake_checkpoints import random_checkpoint
    model = random_checkpoint(tmp_path / "m", "mobilenet_v2", depth_multiplier=0.35,
                              num_labels=3, image_size=64)
    code = ("import sys, tinymvit\n"
            f"m = tinymvit.load({str(model)!r})\n"
            "from tinymvit.kernels import program\n"
            "print(sorted(set(program.kernel_status().values())), len(m.graph._pool))\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NUMBA_CACHE") and k != "PYTHONPATH"}
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "cache")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=600, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[0] == "['unused'] 0" and res.stderr == ""

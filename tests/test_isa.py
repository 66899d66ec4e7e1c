"""The register tiles of the other instruction sets (kernels/simd.py), checked on this CPU.

The tile sizes follow the CPU found at import: AVX-512 (16 lanes, 12 x 32 tiles), AVX2
(8 lanes, 6 x 16) or anything else (4 x 16 of 4-lane vectors).  Every other test runs the
ones of this machine; here ``TINYMVIT_ISA`` forces the others in a fresh process (LLVM
splits vectors wider than the CPU's), which runs the kernel tests against their NumPy
references and whole models against this process's results.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinymvit
from tinymvit.kernels import simd

from fake_checkpoints import random_checkpoint

REPO = Path(__file__).resolve().parents[1]
OTHER = [isa for isa in ("avx512", "avx2", "generic") if isa != simd.ISA]
KERNEL_TESTS = ["tests/test_kernels_conv.py", "tests/test_kernels_misc.py",
                "tests/test_kernels_activations.py", "tests/test_resize.py"]
MODELS = {
    "mobilevitv2": dict(width_multiplier=0.5, image_size=64, num_labels=7),
    "mobilevit": dict(hidden_sizes=[32, 40, 48], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
                      image_size=64, num_labels=7, num_attention_heads=2),
    "mobilenet_v2": dict(depth_multiplier=0.35, image_size=64, num_labels=7),
}


def _env(isa):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TINYMVIT_ISA"] = isa
    return env


@pytest.mark.parametrize("isa", OTHER)
def test_the_kernels_with_the_tiles_of(isa):
    probe = subprocess.run([sys.executable, "-c", "from tinymvit.kernels import simd, policy\n"
                            "print(simd.ISA, simd.VEC, simd.MR, simd.NR, policy.CACHE_DIR)"],
                           capture_output=True, text=True, env=_env(isa), cwd=REPO)
    vec, mr, nv = simd.TILES[isa]
    assert probe.stdout.split() == [isa, str(vec), str(mr), str(vec * nv), "None"], probe.stderr
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          *KERNEL_TESTS], capture_output=True, text=True, env=_env(isa),
                         cwd=REPO, timeout=1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("isa-models")
    return {name: random_checkpoint(root / name, name, seed=3, **cfg)
            for name, cfg in MODELS.items()}


@pytest.mark.parametrize("isa", OTHER)
def test_models_give_the_same_logits_with_the_tiles_of(isa, small_models, tmp_path):
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 64), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np, tinymvit\n"
            "x = np.load(sys.argv[1])\n"
            "for i, folder in enumerate(sys.argv[3:]):\n"
            "    for t in (1, 2):\n"
            "        m = tinymvit.load(folder, num_threads=t)\n"
            "        np.save(f'{sys.argv[2]}/{i}-{t}.npy', m(x)['logits'])\n")
    folders = [str(small_models[name]) for name in MODELS]
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy"), str(tmp_path),
                          *folders], capture_output=True, text=True, env=_env(isa), cwd=REPO,
                         timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    for i, name in enumerate(MODELS):
        want = tinymvit.load(small_models[name])(x)["logits"]
        for t in (1, 2):
            got = np.load(tmp_path / f"{i}-{t}.npy")
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err < 1e-5, (name, t, err)

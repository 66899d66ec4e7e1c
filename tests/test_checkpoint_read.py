"""Reading checkpoints: tensors come from the safetensors file one at a time, when asked for,
so loading a model needs little more memory than the loaded model keeps."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fake_checkpoints import random_checkpoint
from tinymvit import CheckpointError
from tinymvit.kernels.program import Arena
from tinymvit.weights.checkpoint import read_safetensors


def test_tensors_read_when_asked_for_equal_the_file(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"w": rng.standard_normal((7, 5, 3, 3)).astype(np.float32),
               "b": rng.standard_normal(7).astype(np.float32),
               "steps": np.array(12345678901, np.int64),          # BatchNorm's counter
               "half": rng.standard_normal((4, 3)).astype(np.float16),
               "mask": np.array([True, False, True]),
               "empty": np.zeros((0, 4), np.float32)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    got, metadata = read_safetensors(path)
    assert metadata == {"k": "v"}
    assert len(got) == len(tensors) and set(got) == set(tensors)
    assert "w" in got and "nope" not in got
    for name, want in tensors.items():
        have = got[name]
        assert have.dtype == want.dtype and have.shape == want.shape, name
        np.testing.assert_array_equal(have, want)
        assert have.flags.c_contiguous and have.flags.writeable
    assert got["w"] is not got["w"]                        # read anew, kept by nobody
    with pytest.raises(KeyError):
        got["nope"]


def test_sharded_folder_reads_every_shard(tmp_path):
    folder = random_checkpoint(tmp_path / "one", "mobilenet_v2", depth_multiplier=0.35,
                               num_labels=3)
    tensors = load_file(str(folder / "model.safetensors"))
    names = sorted(tensors)
    shards = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((folder / "config.json").read_text())
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(sharded / shard))
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: s for s, ks in shards.items() for k in ks}}))
    from tinymvit.weights import read_checkpoint
    got = read_checkpoint(sharded).tensors
    assert set(got) == set(tensors)
    for name in names:
        np.testing.assert_array_equal(got[name], tensors[name])


def test_a_file_cut_short_after_it_was_opened_is_a_clear_error(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": np.ones(1000, np.float32), "b": np.ones(1000, np.float32)}, str(path))
    got, _ = read_safetensors(path)
    np.testing.assert_array_equal(got["a"], 1.0)
    data = path.read_bytes()
    path.write_bytes(data[:-2000])                         # e.g. replaced while loading
    with pytest.raises(CheckpointError, match=r"tensor 'b' is cut short \(\d+ of 4000 bytes\)"):
        got["b"]
    path.unlink()
    with pytest.raises(CheckpointError, match="cannot read tensor 'a'"):
        got["a"]


def test_arena_filled_piece_by_piece_equals_built_at_once():
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in (5, 16, 33, 1, 64)]
    whole, pieces = Arena(), Arena()
    offsets = [(whole.add(a), pieces.add(a)) for a in arrays]
    whole.add(size=40)
    pieces.add(size=40)
    built = whole.build()
    flat = pieces.allocate()
    for count in (2, 2, 4, 6):                  # repeated and growing counts
        pieces.fill(flat, count)
    np.testing.assert_array_equal(flat, built)
    assert all(a is None for _, a in pieces.parts)         # the arena let go of every array
    for (o, p), a in zip(offsets, arrays):
        assert o == p
        np.testing.assert_array_equal(flat[o:o + a.size], a)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_loading_peaks_near_the_loaded_models_size(tmp_path):
    """Loading used to hold every raw tensor, the folded and packed copies and the weight
    arena at once (about 3.2x the weights' bytes above the imported baseline for
    MobileViTV2-2.0); now about 1.3x."""
    folder = random_checkpoint(tmp_path / "big", "mobilevitv2", width_multiplier=2.0,
                               num_labels=1000)
    size = (folder / "model.safetensors").stat().st_size
    code = ("import sys, tinymvit\n"
            "def kb(key):\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith(key):\n"
            "            return int(line.split()[1])\n"
            "before = kb('VmRSS:')\n"
            "m = tinymvit.load(sys.argv[1])\n"
            "print(kb('VmHWM:') - before, kb('VmRSS:') - before)\n")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    peak_kb, kept_kb = map(int, out.split())
    assert size > 60e6
    assert peak_kb * 1024 < 1.6 * size, (peak_kb, size)
    assert kept_kb * 1024 < 1.3 * size, (kept_kb, size)

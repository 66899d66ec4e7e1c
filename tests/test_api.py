"""The Python API beyond single forward passes: outputs, threads, concurrency, conversion."""
import threading

import numpy as np
import pytest

import tinymvit
from fake_checkpoints import random_checkpoint
from tinymvit.kernels import workers


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    folder = random_checkpoint(tmp_path_factory.mktemp("v1"), "mobilevit", num_labels=6,
                               hidden_sizes=[64, 80, 96],
                               neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], expand_ratio=2.0)
    return tinymvit.load(folder)


def test_outputs_are_float32_nchw_and_consistent(v1):
    x = np.random.default_rng(0).standard_normal((2, 3, 70, 90)).astype(np.float32)
    out = v1(x, output_hidden_states=True)
    assert out.logits.dtype == np.float32 and out.logits.shape == (2, 6)
    assert out.pooler_output.shape == (2, 320)
    assert out.last_hidden_state.shape == (2, 320, 3, 3)
    assert [h.shape[1:] for h in out.hidden_states] == [
        (16, 35, 45), (24, 18, 23), (48, 9, 12), (64, 5, 6), (80, 3, 3)]
    # pooler = spatial mean of the last hidden state, and hidden states do not change logits
    np.testing.assert_allclose(out.pooler_output, out.last_hidden_state.mean((2, 3)),
                               rtol=1e-5, atol=1e-6)
    plain = v1(x)
    assert plain.hidden_states is None
    np.testing.assert_array_equal(plain.logits, out.logits)
    assert out["logits"] is out.logits and "hidden_states" in out.keys()


def test_batch_equals_single(v1):
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype(np.float32)
    batch = v1(x).logits
    for i in range(3):
        np.testing.assert_allclose(v1(x[i:i + 1]).logits[0], batch[i], rtol=1e-5, atol=1e-5)


def test_thread_counts_agree(v1):
    x = np.random.default_rng(2).standard_normal((1, 3, 96, 96)).astype(np.float32)
    v1.num_threads = 1
    one = v1(x).logits
    v1.num_threads = 2
    two = v1(x).logits
    v1.num_threads = None
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-5)
    with pytest.raises(tinymvit.InputError, match="positive int"):
        v1.num_threads = 0
    tinymvit.set_num_threads(1)
    assert tinymvit.get_num_threads() == 1
    tinymvit.set_num_threads(2)


def _cgroups(tmp_path, proc, files):
    tmp_path.mkdir()
    (tmp_path / "proc").write_text(proc)
    for name, text in files.items():
        path = tmp_path / "fs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "fs").mkdir(exist_ok=True)
    return workers.cgroup_cpu_limit(str(tmp_path / "proc"), str(tmp_path / "fs"))


def test_cgroup_cpu_quota_is_read(tmp_path):
    """In a container with a CPU limit the affinity mask still lists every host CPU: the
    default thread count comes from the quota (cgroup v2 cpu.max, v1 cfs quota / period)."""
    v2 = "0::/\n"
    assert _cgroups(tmp_path / "a", v2, {"cpu.max": "200000 100000\n"}) == 2
    assert _cgroups(tmp_path / "b", v2, {"cpu.max": "150000 100000"}) == 2    # 1.5: rounded up
    assert _cgroups(tmp_path / "c", v2, {"cpu.max": "50000 100000"}) == 1
    assert _cgroups(tmp_path / "d", v2, {"cpu.max": "max 100000"}) is None    # no quota
    # the process's own cgroup below a limited parent: the smallest limit on the way up
    nested = {"kubepods/pod1/cpu.max": "max 100000", "kubepods/cpu.max": "300000 100000",
              "cpu.max": "max 100000"}
    assert _cgroups(tmp_path / "e", "0::/kubepods/pod1\n", nested) == 3
    # a host path the container cannot see: its own limit is at the mount itself
    assert _cgroups(tmp_path / "f", "0::/docker/abc\n", {"cpu.max": "400000 100000"}) == 4
    v1 = "12:memory:/x\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    assert _cgroups(tmp_path / "g", v1, {"cpu,cpuacct/cpu.cfs_quota_us": "100000\n",
                                         "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}) == 1
    assert _cgroups(tmp_path / "h", v1, {"cpu,cpuacct/cpu.cfs_quota_us": "-1",
                                         "cpu,cpuacct/cpu.cfs_period_us": "100000"}) is None
    assert _cgroups(tmp_path / "i", v1, {}) is None                           # no files
    assert _cgroups(tmp_path / "j", "garbage\n", {"cpu.max": "zz yy"}) is None
    assert workers.cgroup_cpu_limit(str(tmp_path / "missing"), str(tmp_path)) is None


def test_default_threads_follow_the_cpu_quota(monkeypatch):
    cpus = workers.default_threads()
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda: 1)
    assert workers.default_threads() == 1
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda: cpus + 5)      # above the CPUs
    assert workers.default_threads() == cpus
    monkeypatch.setattr(workers, "cgroup_cpu_limit", lambda: None)
    assert workers.default_threads() == cpus


def test_concurrent_calls_from_threads(v1):
    """An app may call one model from several threads at once (thread-safe layer + plan pool)."""
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((1, 3, 64 + 8 * (i % 2), 64)).astype(np.float32)
              for i in range(6)]
    expected = [v1(x).logits for x in inputs]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(3):
            results[i] = v1(inputs[i]).logits

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_convert_round_trip_keeps_tensors_and_metadata(v1, tmp_path):
    from safetensors import safe_open
    folder = random_checkpoint(tmp_path / "src", "mobilenet_v2", depth_multiplier=0.35,
                               num_labels=3, id2label={"0": "bg", "1": "cat", "2": "dog"},
                               preprocessor={"crop_size": {"height": 96, "width": 96},
                                             "size": {"shortest_edge": 128},
                                             "do_normalize": True,
                                             "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    dst = tinymvit.convert(folder, tmp_path / "out" / "m.safetensors")
    with safe_open(str(dst), "np") as f:
        meta = f.metadata()
        names = set(f.keys())
    assert meta["format"] == "tinymvit" and meta["format_version"] == "1"
    assert '"shortest_edge": 128' in meta["preprocessor_config"]
    assert '"1": "cat"' in meta["id2label"]
    from safetensors.numpy import load_file
    original = load_file(str(folder / "model.safetensors"))
    assert names == set(original)
    with safe_open(str(dst), "np") as f:
        for k in original:
            np.testing.assert_array_equal(f.get_tensor(k), original[k])
    a, b = tinymvit.load(folder), tinymvit.load(dst)
    assert b.id2label == {0: "bg", 1: "cat", 2: "dog"}
    x = np.random.default_rng(4).standard_normal((1, 3, 96, 96)).astype(np.float32)
    np.testing.assert_array_equal(a(x).logits, b(x).logits)
    assert b.preprocess(np.zeros((100, 140, 3), np.uint8)).shape == (1, 3, 96, 96)


_INHERITED = {}  # a forked child sees the parent's loaded model here


def _child_logits(source, x, threads=2):
    model = _INHERITED["model"] if source is None else tinymvit.load(source)
    model.num_threads = threads
    return model(x).logits


def test_forked_child_runs_the_inherited_model(v1):
    """tinymvit's worker threads are its own (no OpenMP): a child forked after the parent ran
    a model on two threads starts new ones and gets the same answer, never a hang."""
    import multiprocessing as mp

    x = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)
    v1.num_threads = 2
    expected = v1(x).logits                              # the parent starts its worker threads
    _INHERITED["model"] = v1
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_child_logits, (None, x)).get(timeout=120)
    np.testing.assert_array_equal(got, expected)


def test_spawned_child_runs(v1):
    """The recommended start method for apps that use processes works."""
    import multiprocessing as mp
    x = np.random.default_rng(6).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with mp.get_context("spawn").Pool(1) as pool:
        got = pool.apply_async(_child_logits, (v1.source, x)).get(timeout=300)
    assert not isinstance(got, str), got
    np.testing.assert_allclose(got, v1(x).logits, rtol=1e-5, atol=1e-5)


def test_plans_are_bounded_for_many_input_sizes(v1):
    """An app feeding photos of many sizes must not keep one set of buffers per size."""
    for i in range(10):
        v1(np.zeros((1, 3, 40 + 8 * i, 48), np.float32))
    assert len(v1.graph._pool) <= v1.graph.MAX_CACHED_SHAPES


def test_arenas_start_on_a_cache_line(v1):
    """Arena offsets are multiples of 64 bytes, so the arenas themselves must start on a
    64-byte boundary (NumPy only promises 16): else vectors straddle cache lines."""
    from tinymvit.kernels import program
    for n in (1, 7, 1000, 300_000):
        for zero in (False, True):
            a = program.aligned_floats(n, zero=zero)
            assert a.dtype == np.float32 and a.shape == (n,) and a.flags.c_contiguous
            assert a.ctypes.data % 64 == 0
            if zero:
                assert not a.any()
    v1(np.zeros((1, 3, 64, 64), np.float32))
    plans = [p for ps in v1.graph._pool.values() for p in ps]
    assert plans and all(p.arena.ctypes.data % 64 == 0 for p in plans)
    assert v1.graph.weights.ctypes.data % 64 == 0


# -- warm-up: the first call as fast as the next ---------------------------------------------
@pytest.fixture(scope="module")
def v2_folder(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("v2"), "mobilevitv2", num_labels=5,
                             width_multiplier=0.5, image_size=64)


def _planned(model):
    """The input shapes the model's graph holds a ready plan for (each with the default
    outputs and the model's thread count)."""
    kept = tuple(model.graph._kept(False))
    return sorted(key[0] for key, plans in model.graph._pool.items()
                  if plans and key[1:] == (kept, model._threads()))


def test_load_plans_one_image_when_the_kernels_are_cached(v2_folder):
    first = tinymvit.load(v2_folder)                  # compiles (or loads) its kernels
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
    want = first(x).logits
    m = tinymvit.load(v2_folder)
    assert m.processor.output_size() == (64, 64)
    assert _planned(m) == [(1, 3, 64, 64)]            # ready before its first call...
    np.testing.assert_array_equal(m(x).logits, want)
    assert _planned(m) == [(1, 3, 64, 64)]            # ...which used that plan
    assert tinymvit.load(v2_folder, backend="numpy").graph._pool == {}


def test_warm_up_plans_the_shapes_asked_for(v2_folder):
    m = tinymvit.load(v2_folder)
    assert m.warm_up(batch_size=3) is m
    assert m.warm_up(size=(48, 40)).warm_up(batch_size=2, size=56) is m
    assert _planned(m) == [(1, 3, 48, 40), (1, 3, 64, 64), (2, 3, 56, 56), (3, 3, 64, 64)]
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64), dtype=np.float32)
    got = m(x).logits
    for i in range(3):
        np.testing.assert_allclose(got[i:i + 1], m(x[i:i + 1]).logits, rtol=1e-5, atol=1e-6)
    m.warm_up(batch_size=3)                           # already there: nothing new
    assert len(_planned(m)) == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(size="big"), "size must be an integer or a (height, width) pair of integers"),
    (dict(size=(0, 64)), "size must be an integer or a (height, width) pair of integers"),
    (dict(size=(64, 64, 3)), "size must be an integer or a (height, width) pair of integers"),
    (dict(size=(64, 10**6)), "pair of integers from 1 to 8192"),
    (dict(size=8), "input 8x8 is too small"),
])
def test_warm_up_refuses_bad_arguments(v2_folder, kwargs, message):
    m = tinymvit.load(v2_folder)
    with pytest.raises(tinymvit.InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        m.warm_up(**kwargs)
    assert _planned(m) == [(1, 3, 64, 64)]


def test_segmentation_models_are_not_planned_at_load(tmp_path):
    folder = random_checkpoint(tmp_path / "seg", "mobilevitv2", task="segmentation",
                               num_labels=4, width_multiplier=0.5, image_size=64)
    m = tinymvit.load(folder)
    assert m.graph._pool == {}                        # segment() sizes inputs per image
    m.warm_up(size=(64, 96))
    assert _planned(m) == [(1, 3, 64, 96)]


def test_numpy_backend_warm_up_does_nothing(v2_folder):
    m = tinymvit.load(v2_folder, backend="numpy")
    assert m.warm_up(batch_size=2) is m and m.graph._pool == {}


def test_warm_up_needs_a_size_where_the_processor_keeps_aspect_ratios(tmp_path):
    folder = random_checkpoint(tmp_path / "m", "mobilevitv2", num_labels=5, width_multiplier=0.5,
                               image_size=64, preprocessor={"do_center_crop": False,
                                                            "size": {"shortest_edge": 64}})
    m = tinymvit.load(folder)
    assert m.processor.output_size() is None and m.graph._pool == {}
    with pytest.raises(tinymvit.InputError, match=r"give warm_up\(\) a size=\(height, width\)"):
        m.warm_up()
    m.warm_up(size=64)
    assert _planned(m) == [(1, 3, 64, 64)]

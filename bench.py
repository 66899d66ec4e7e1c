#!/usr/bin/env python
"""Benchmark tinymvit against ONNX Runtime and PyTorch eager (transformers), in separate processes.

    python bench.py                        # everything, the issue-6 protocol (see below)
    python bench.py --quick                # batch 1, fewer calls/processes (verdicts indicative)
    python bench.py --models v2-1.0,mnv2 --threads 2 --runtimes tinymvit,ort --only speed
    python bench.py --only gemm            # tinymvit's GEMM core vs NumPy sgemm and the peak
    python bench.py --only startup --cold-cache
    python bench.py --mode interleaved     # the "server with idle gaps" mode (see below)
    python bench.py --json results.json    # everything, machine-readable

Needs the venv with the ``bench`` extra (``pip install -e '.[bench]'``: torch, transformers,
onnxruntime, onnx, onnxscript).  Nothing is downloaded.  The first run builds the random-weight
checkpoints and ONNX exports (a few minutes); later runs reuse them (``--cache-dir``).  On a
2-core machine a full run takes about 13 minutes when the machine is quiet (20-25 when other
work shares its cores), ``--quick`` about 3 (4-5); ``--runtimes tinymvit,ort`` saves a third.

Models (``--models``, comma separated; ``v2`` = ``v2-1.0`` and ``v1`` = ``v1-s`` also work)
---------------------------------------------------------------------------------------------
    v2-0.5 v2-1.0 v2-2.0   MobileViTV2 classifiers (width_multiplier 0.5/1.0/2.0), 256x256
    v1-xxs v1-xs v1-s      MobileViT classifiers (apple/mobilevit-{xx-small,x-small,small}
                           configs), 256x256
    mnv2                   MobileNetV2-1.0 classifier, 224x224 (1001 classes)
    v2-seg                 DeepLabV3 MobileViTV2-1.0, 512x512, the VOC config (output stride 16,
                           21 labels, ASPP 512 channels, rates 6/12/18)
    mnv2-seg               DeepLabV3 MobileNetV2-1.0, 513x513, output stride 16 (the config of
                           the real checkpoint in ../shared)

MobileNetV2 uses the real Google checkpoints in ``../shared/checkpoints`` (or
``$TINYMVIT_SHARED/checkpoints``) when present; every other model gets random weights at a
realistic scale (tests/hf_models.randomize_: variance 1/fan_in, random norm statistics, so no
activation decays into slow denormal floats), saved with ``save_pretrained``; a random folder
whose reference exists is checked against the tensor names and shapes of
``../shared/reference/keys-*.txt``.  Every runtime runs the same checkpoint folder; ORT runs an
ONNX export of it (dynamic batch axis; TorchScript exporter, else dynamo), re-exported when the
folder changes.

What is measured (default mode, ``--mode separate``)
----------------------------------------------------
1. Speed.  Each runtime runs in its own fresh process with its own default settings:
   tinymvit ``tinymvit.load(folder, num_threads=n)``; ONNX Runtime default ``SessionOptions``
   with only ``intra_op_num_threads = n`` (default spin-waiting, default graph optimisation);
   PyTorch ``torch.set_num_threads(n)``, under ``torch.inference_mode()``.  A tinymvit or ORT
   process runs one model (so its peak RSS is that model's); a PyTorch process runs all the
   models of its thread count and gets half the calls and budget (importing torch +
   transformers costs seconds, its calls are the slowest, and PyTorch is a reference, not a
   target).  In a process, per batch size: warm-up calls, then back-to-back
   calls (``--calls``, at least ``--min-calls``, stopping once ``--budget`` seconds are spent);
   the process reports the median.  The table shows, per runtime, the median over ``--procs``
   processes (default 1 for 1 thread, 3 for more), run interleaved in time (runtime order
   rotating), then the ratios tinymvit/ORT and tinymvit/PyTorch (below 1: tinymvit faster), the
   issue's target and PASS/FAIL.  "noise" is the largest relative spread among the runtimes:
   (max - min) / median of the process medians with several processes, else the inter-quartile
   range of the calls / median; a verdict marked "*" is closer to its target than that noise.
   The logits of every runtime on one input are compared with PyTorch's (first process of each).
   Peak RSS: VmHWM of the 1-thread process of each model right after its batch-1 calls.
2. GEMM core.  tinymvit's pointwise (1x1 conv) kernel on the models' layer shapes (M pixels x K
   input channels -> N output channels, the shapes of ../shared/tools/sgemm_peak.py plus
   MobileViT-S attention/MLP shapes) and its implicit-GEMM kxk conv kernel (a MobileViT-S 3x3
   conv_kxk, a DeepLab ASPP 3x3 dilated conv), at 1 and 2 threads, against NumPy's sgemm on the
   same GEMM shapes and the machine's sgemm peak (best median of NumPy on 1024^2 / 2048^2
   squares), each thread count in a fresh process with OPENBLAS/OMP/MKL_NUM_THREADS set, as
   sgemm_peak.py does.  GFLOP/s = 2 * multiply-adds / median time, best of ``--gemm-reps``
   processes (default 2) for both libraries; for convs, only the taps that fall inside the
   input count (tinymvit skips the padding; NumPy's column is the dense im2col GEMM).  Every
   tinymvit result is checked against a float64 NumPy product (WRONG if it differs), and the
   kernels' signatures are checked before they are called.
3. Start-up, fresh processes, batch 1, default threads: ``import numpy, tinymvit`` + load +
   first logits with a warm Numba cache, against ``import numpy, onnxruntime`` + session +
   first run; the whole ``tinymvit classify IMAGE --model M`` process (wall time, as a shell
   sees it); with ``--cold-cache`` the first-ever run with an empty NUMBA_CACHE_DIR.  Peak RSS
   of a child is its own (VmHWM from /proc/self/status at exit).

The targets printed are those of issue 6: tinymvit/ORT <= 1.0 for the MobileViTV2 (0.5, 1.0,
2.0) and MobileViT (XXS, S) classifiers, batches 1 and 8, 1 and 2 threads (v1-xs is reported
without a target); <= 1.1 for MobileNetV2-1.0 (batches 1 and 8); <= 1.0 for both DeepLabV3
models at batch 1; GEMM >= 75 % of the 1-thread sgemm peak and >= 1.8x from 1 to 2 threads;
start-up <= 0.3 s (MobileNetV2) / 0.4 s (MobileViTV2-1.0), classify <= 0.5 s, cold <= 10 s;
peak RSS at batch 1 <= ORT's.  ``--quick`` (classifiers at batch 1 only, fewer calls, one
process per runtime and thread count, shorter GEMM and start-up parts): verdicts indicative.

Interleaved mode (``--mode interleaved``): a model of a server with idle gaps, NOT the issue's
protocol.  One process holds all three runtimes; calls are interleaved (order rotating every
round) with a 10 ms pause after each (``--gap-ms``) and ORT's spin-waiting turned off
(``inter_op_num_threads=1``, ``session.intra_op.allow_spinning=0``), so that no runtime's idle
worker threads steal the next one's cores.  It measures latency after idle gaps, not steady
throughput, and it can flatter tinymvit (ORT loses its spin-waiting), so its ratios are
labelled and get no verdict.

The machines are shared and noisy: trust same-run ratios, not absolute milliseconds, and check
the load average printed at the top and the bottom.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Only the standard library at module level: every child imports just its own runtime.

REPO = Path(__file__).resolve().parent
CACHE_VERSION = "v3"  # bump to rebuild cached random-weight folders and ONNX files
PROGRESS, RESULT = "@@progress ", "@@result "  # how children talk to the parent (stdout)


# ----------------------------------------------------------------------------------------
# The models and the issue's targets
# ----------------------------------------------------------------------------------------

def _v1(hidden, neck, **extra):
    return dict(hidden_sizes=hidden, neck_hidden_sizes=neck, num_labels=1000, **extra)


# name -> label, transformers family, task, input side, config kwargs for random weights,
# shared real checkpoint used instead when present, keys file (tensor names and shapes the
# random folder must have), target ratio tinymvit/ORT and the batches it applies to.
MODELS = {
    "v2-0.5": dict(label="MobileViTV2-0.5", family="MobileViTV2", size=256,
                   kwargs=dict(width_multiplier=0.5, num_labels=1000), target=1.0),
    "v2-1.0": dict(label="MobileViTV2-1.0", family="MobileViTV2", size=256,
                   kwargs=dict(width_multiplier=1.0, num_labels=1000), target=1.0,
                   keys="keys-mobilevitv2-1.0-cls.txt"),
    "v2-2.0": dict(label="MobileViTV2-2.0", family="MobileViTV2", size=256,
                   kwargs=dict(width_multiplier=2.0, num_labels=1000), target=1.0),
    "v1-xxs": dict(label="MobileViT-XXS", family="MobileViT", size=256,
                   kwargs=_v1([64, 80, 96], [16, 16, 24, 48, 64, 80, 320], expand_ratio=2.0,
                              hidden_dropout_prob=0.05),
                   target=1.0, keys="keys-mobilevit-xx-small-cls.txt"),
    "v1-xs": dict(label="MobileViT-XS", family="MobileViT", size=256,
                  kwargs=_v1([96, 120, 144], [16, 32, 48, 64, 80, 96, 384]),
                  target=None, keys="keys-mobilevit-x-small-cls.txt"),
    "v1-s": dict(label="MobileViT-S", family="MobileViT", size=256,
                 kwargs=_v1([144, 192, 240], [16, 32, 64, 96, 128, 160, 640]),
                 target=1.0, keys="keys-mobilevit-small-cls.txt"),
    "mnv2": dict(label="MobileNetV2-1.0", family="MobileNetV2", size=224,
                 kwargs=dict(num_labels=1001), target=1.1,
                 real="mobilenet_v2_1.0_224-coral-qat", keys="keys-mobilenetv2-1.0-224-cls.txt"),
    "v2-seg": dict(label="DeepLabV3-MobileViTV2-1.0", family="MobileViTV2", size=512, seg=True,
                   kwargs=dict(width_multiplier=1.0, output_stride=16, num_labels=21,
                               aspp_out_channels=512, atrous_rates=[6, 12, 18]),
                   target=1.0, keys="keys-mobilevitv2-1.0-deeplabv3-voc.txt"),
    "mnv2-seg": dict(label="DeepLabV3-MobileNetV2-1.0", family="MobileNetV2", size=513, seg=True,
                     kwargs=dict(output_stride=16, num_labels=21), target=1.0,
                     real="deeplabv3_mobilenet_v2_1.0_513-coral-os16",
                     keys="keys-mobilenetv2-deeplabv3-1.0-513.txt"),
}
ALIASES = {"v2": "v2-1.0", "v1": "v1-s"}
RUNTIMES = ("tinymvit", "ort", "torch")
NAMES = {"tinymvit": "tinymvit", "ort": "ORT", "torch": "PyTorch"}
# What a runtime's process must never have imported (checked when it exits).
FORBIDDEN = {"tinymvit": ("torch", "transformers", "onnxruntime"),
             "ort": ("torch", "transformers", "tinymvit"),
             "torch": ("tinymvit", "onnxruntime")}
# Issue 6, point 2 and point 4.
GEMM_PEAK_SHARE, GEMM_SCALING = 0.75, 1.8
STARTUP_TARGETS = {"mnv2": 0.3, "v2-1.0": 0.4}
CLASSIFY_TARGET, COLD_TARGET = 0.5, 10.0


def hf_class(name):
    spec = MODELS[name]
    suffix = "ForSemanticSegmentation" if spec.get("seg") else "ForImageClassification"
    return spec["family"] + suffix


def target_of(name, batch, threads):
    """The issue's bound on tinymvit/ORT for this configuration, or None."""
    spec = MODELS[name]
    batches = (1,) if spec.get("seg") else (1, 8)
    if spec["target"] is None or batch not in batches or threads not in (1, 2):
        return None
    return spec["target"]


def shared_dir():
    """The shared data folder: $TINYMVIT_SHARED, else ``../shared`` next to the repo."""
    return Path(os.environ.get("TINYMVIT_SHARED", REPO.parent / "shared"))


def real_checkpoint(name):
    real = MODELS[name].get("real")
    folder = shared_dir() / "checkpoints" / real if real else None
    ok = folder and (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    return folder if ok else None


def model_paths(name, cache_dir):
    """(checkpoint folder, ONNX path, description of the weights) of model ``name``."""
    base = cache_dir / f"{name}-{CACHE_VERSION}"
    real = real_checkpoint(name)
    if real:
        return real, base / "model.onnx", f"real checkpoint {real.name}"
    desc = ", ".join(f"{k}={v}" for k, v in MODELS[name]["kwargs"].items())
    return base / "hf", base / "model.onnx", f"random weights ({desc})"


def safetensors_shapes(path):
    """{tensor name: shape} from a .safetensors header (standard library only)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def check_keys(name, folder):
    """Compare a checkpoint's tensors with ../shared/reference/<keys file>: (ok, message),
    (None, None) without a reference."""
    keys = MODELS[name].get("keys")
    ref_path = shared_dir() / "reference" / keys if keys else None
    if not ref_path or not ref_path.is_file():
        return None, None
    ref = {}
    for line in ref_path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")[:2]
            if not key.endswith("num_batches_tracked"):   # bookkeeping, not a weight
                ref[key] = json.loads(shape)
    ours = {k: v for k, v in safetensors_shapes(Path(folder) / "model.safetensors").items()
            if not k.endswith("num_batches_tracked")}
    bad = sorted(k for k in ref.keys() | ours.keys() if ref.get(k) != ours.get(k))
    if bad:
        return False, (f"{name}: {len(bad)} tensors differ from {keys}, e.g. {bad[0]}: ours "
                       f"{ours.get(bad[0])}, reference {ref.get(bad[0])}")
    return True, f"{name}: {len(ours)} tensors, names and shapes equal to {keys}"


# ----------------------------------------------------------------------------------------
# Child processes: plumbing
# ----------------------------------------------------------------------------------------

def progress(line):
    """A child's progress line, shown live by the parent."""
    print(PROGRESS + line, flush=True)


def emit(result):
    print(RESULT + json.dumps(result), flush=True)


def peak_rss_mb():
    """Peak resident memory of this process in MB (VmHWM: this program's own, unlike
    ``ru_maxrss``, which Linux keeps across ``execve`` from the parent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def forbidden_imports(runtime):
    return [m for m in FORBIDDEN[runtime] if m in sys.modules]


def run_child(kind, spec, log=None, env=None, timeout=1800, keep_stderr=False):
    """Run ``bench.py --child kind --spec JSON`` in a fresh interpreter; its result dict.

    ``env``: variables to set (None: to remove).  Progress lines are passed to ``log``;
    stderr goes to a temporary file whose last line is reported if the child fails (then the
    result is ``{"error": ...}``).  ``wall_s`` is the child's whole lifetime as the parent
    sees it.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
           "--spec", json.dumps(spec)]
    full_env = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    result = None
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                env=full_env, cwd=str(REPO))
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                if line.startswith(RESULT):
                    result = json.loads(line[len(RESULT):])
                elif line.startswith(PROGRESS) and log:
                    log(line[len(PROGRESS):].rstrip())
            proc.wait()
        finally:                         # interrupted (Ctrl-C, SIGTERM): no orphan child
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0 or result is None:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        why = "killed after timeout" if wall >= timeout else (lines or ["?"])[-1][:300]
        result = dict(error=f"{kind} child exit {proc.returncode}: {why}")
    result["wall_s"] = wall
    if keep_stderr:
        result["stderr"] = stderr[-4000:]
    return result


# ----------------------------------------------------------------------------------------
# Child: prepare the checkpoints and ONNX exports (the only place that builds with torch)
# ----------------------------------------------------------------------------------------

def _quiet_transformers(transformers):
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class _QuietFds:
    """Send the process's stdout/stderr file descriptors to a log file (exporter chatter)."""

    def __init__(self, log_path):
        self.log_path = log_path

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.log = open(self.log_path, "a")
        self.saved = [os.dup(1), os.dup(2)]
        os.dup2(self.log.fileno(), 1)
        os.dup2(self.log.fileno(), 2)

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        self.log.close()


def _source_stamp(folder):
    st = (Path(folder) / "model.safetensors").stat()
    return dict(folder=str(folder), size=st.st_size, mtime_ns=st.st_mtime_ns)


def is_prepared(name, cache_dir, need_onnx):
    """Whether model ``name``'s folder exists and its ONNX file was exported from it."""
    folder, onnx, _ = model_paths(name, cache_dir)
    if not (folder / "model.safetensors").is_file():
        return False
    stamp = onnx.with_suffix(".source.json")
    return not need_onnx or (onnx.is_file() and stamp.is_file()
                             and json.loads(stamp.read_text()) == _source_stamp(folder))


def build_random_folder(name, folder):
    import transformers
    sys.path.insert(0, str(REPO / "tests"))
    from hf_models import randomize_

    spec = MODELS[name]
    config = getattr(transformers, spec["family"] + "Config")(**spec["kwargs"])
    model = randomize_(getattr(transformers, hf_class(name))(config), 0).eval()
    tmp = folder.with_name(f"hf.tmp{os.getpid()}")   # then renamed: never half-written
    model.save_pretrained(str(tmp))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def export_onnx(name, folder, path):
    """Export the transformers model in ``folder`` to ``path`` with a dynamic batch axis.

    The TorchScript exporter is tried first (fast); it cannot translate MobileViTV2's fold
    (``col2im``), so the dynamo exporter (needs onnxscript) is the fallback.  Returns an error
    text or None.
    """
    import torch
    import transformers

    model = getattr(transformers, hf_class(name)).from_pretrained(str(folder)).eval()
    side = MODELS[name]["size"]
    x = torch.randn(2, 3, side, side)
    log = path.with_suffix(".export.log")
    tmp = path.with_name(f"model.tmp{os.getpid()}.onnx")
    errors = []
    for dynamo in (False, True):
        try:
            with _QuietFds(log), torch.no_grad():
                if dynamo:
                    batch = torch.export.Dim("batch", min=1, max=256)
                    torch.onnx.export(model, (), str(tmp), kwargs={"pixel_values": x},
                                      dynamo=True, opset_version=18, external_data=False,
                                      input_names=["pixel_values"], output_names=["logits"],
                                      dynamic_shapes={"pixel_values": {0: batch}})
                else:
                    torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=18,
                                      input_names=["pixel_values"], output_names=["logits"],
                                      dynamic_axes={"pixel_values": {0: "batch"},
                                                    "logits": {0: "batch"}})
            os.replace(tmp, path)
            return None
        except Exception as exc:  # noqa: BLE001 - any exporter failure means "try the next"
            last = (str(exc).strip().splitlines() or [""])[-1][:120]
            errors.append(f"{'dynamo' if dynamo else 'legacy'}: {type(exc).__name__}: {last}")
    return "; ".join(errors) + f" (log: {log})"


def child_prepare(spec):
    """Build missing random-weight folders and (re-)export stale ONNX files."""
    import transformers
    _quiet_transformers(transformers)
    out = {}
    for name in spec["models"]:
        folder, onnx, _ = model_paths(name, Path(spec["cache_dir"]))
        note = None
        if not (folder / "model.safetensors").is_file():
            progress(f"building {name}: random weights -> {folder}")
            build_random_folder(name, folder)
        if not is_prepared(name, Path(spec["cache_dir"]), spec["onnx"]):
            progress(f"exporting {name} to ONNX -> {onnx}")
            onnx.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            note = export_onnx(name, folder, onnx)
            if note is None:
                onnx.with_suffix(".source.json").write_text(json.dumps(_source_stamp(folder)))
                progress(f"  {name}: exported in {time.perf_counter() - t0:.0f} s")
        out[name] = dict(onnx_error=note)
    emit(out)


# ----------------------------------------------------------------------------------------
# Child: steady-state speed of ONE runtime (it imports only that runtime)
# ----------------------------------------------------------------------------------------

def load_runtime(runtime, model, threads):
    """A function pixel_values (N, 3, H, W) float32 -> logits (NumPy) for one runtime."""
    if runtime == "tinymvit":
        import tinymvit
        net = tinymvit.load(model["folder"], num_threads=threads)
        return lambda x: net(x).logits
    if runtime == "ort":
        import onnxruntime as ort
        so = ort.SessionOptions()              # ORT's defaults, but for the thread count
        if threads:
            so.intra_op_num_threads = threads
        sess = ort.InferenceSession(model["onnx"], so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]
    import torch
    import transformers
    _quiet_transformers(transformers)
    if threads:
        torch.set_num_threads(threads)
    net = getattr(transformers, model["cls"]).from_pretrained(model["folder"]).eval()

    def call(x):
        with torch.inference_mode():
            return net(pixel_values=torch.from_numpy(x)).logits.numpy()
    return call


def check_input(side):
    """The batch-1 input on which every runtime's logits are compared."""
    import numpy as np
    return np.random.default_rng(12345).standard_normal((1, 3, side, side), dtype=np.float32)


def time_calls(call, x, spec):
    """Warm-up, then back-to-back timed calls; stats in ms.

    Timed calls stop at ``calls``, or once ``budget`` seconds are spent and ``min_calls`` made;
    calls so long that 3 of them take 3 budgets stop after 3.
    """
    t0 = time.perf_counter()
    call(x)
    first = time.perf_counter() - t0
    n_warm = 1
    while n_warm < spec["warmup"] and (n_warm < 2 or time.perf_counter() - t0 < 1.0):
        call(x)
        n_warm += 1
    times = []
    start = time.perf_counter()
    while len(times) < spec["calls"]:
        t = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - t)
        spent = time.perf_counter() - start
        if spent > spec["budget"] and (len(times) >= spec["min_calls"]
                                       or (len(times) >= 3 and spent > 3 * spec["budget"])):
            break
    return dict(summarize(times), first_ms=first * 1e3, warmup=n_warm,
                times_ms=[round(t * 1e3, 3) for t in times], rss_mb=peak_rss_mb())


def summarize(times):
    """Median, inter-quartile range and min (ms) of a list of seconds."""
    ms = sorted(t * 1e3 for t in times)
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return dict(median=statistics.median(ms), iqr=q[2] - q[0], min=ms[0], n=len(ms))


def child_speed(spec):
    import numpy as np

    rt, threads = spec["runtime"], spec["threads"]
    out = {}
    for model in spec["models"]:
        res = out[model["name"]] = {}
        try:
            t0 = time.perf_counter()
            call = load_runtime(rt, model, threads)
            res["load_s"] = time.perf_counter() - t0
            if spec.get("logits_dir"):
                logits = np.asarray(call(check_input(model["size"])))
                np.save(Path(spec["logits_dir"]) / f"{rt}-{model['name']}.npy", logits)
            for batch in model["batches"]:
                x = np.random.default_rng(batch).standard_normal(
                    (batch, 3, model["size"], model["size"]), dtype=np.float32)
                res[str(batch)] = time_calls(call, x, spec)
        except Exception as exc:  # noqa: BLE001 - report it, go on with the next model
            res["error"] = f"{type(exc).__name__}: {exc}"[:300]
    bad = forbidden_imports(rt)
    emit(dict(models=out, error=f"the {rt} process imported {bad}" if bad else None))


# ----------------------------------------------------------------------------------------
# Child: start-up (import + load + first logits), one runtime, default threads
# ----------------------------------------------------------------------------------------

def child_startup(spec):
    """import numpy + the runtime, load, first logits; times in s, peak RSS (one JSON line)."""
    rt = spec["runtime"]
    t0 = time.perf_counter()
    import numpy as np
    if rt == "tinymvit":
        import tinymvit
    else:
        import onnxruntime as ort
    t1 = time.perf_counter()
    x = np.random.default_rng(0).standard_normal((1, 3, spec["size"], spec["size"]),
                                                 dtype=np.float32)   # not counted
    t2 = time.perf_counter()
    if rt == "tinymvit":
        model = tinymvit.load(spec["folder"])
        t3 = time.perf_counter()
        model(x).logits
    else:
        sess = ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
        t3 = time.perf_counter()
        sess.run(None, {sess.get_inputs()[0].name: x})
    t4 = time.perf_counter()
    bad = forbidden_imports(rt)
    emit(dict(import_s=t1 - t0, load_s=t3 - t2, first_s=t4 - t3,
              total_s=(t1 - t0) + (t4 - t2), rss_mb=peak_rss_mb(),
              error=f"the {rt} process imported {bad}" if bad else None))


# ----------------------------------------------------------------------------------------
# Children: GEMM (tinymvit's kernels; NumPy's sgemm)
# ----------------------------------------------------------------------------------------

def _mm(name, m, k, n):
    return dict(name=name, m=m, k=k, n=n)


def _conv(name, side, cin, cout, ksize, dilation):
    return dict(name=name, side=side, cin=cin, cout=cout, ksize=ksize, dilation=dilation,
                m=side * side, k=ksize * ksize * cin, n=cout)


# The first seven are ../shared/tools/sgemm_peak.py's SHAPES (batch 1, M = pixels, K = input
# channels, N = output channels); then MobileViT-S transformer layers (1024 tokens = 4 pixels
# per 2x2 patch x 256 patches in layer 3, 256 in layer 4) and two full 3x3 convs.
GEMM_SHAPES = [
    _mm("mvv2 layer1.0 expand 128x128: 64->128", 128 * 128, 64, 128),
    _mm("mvv2 layer1.1 expand 64x64: 128->256", 64 * 64, 128, 256),
    _mm("mvv2 layer1.1 reduce 64x64: 256->128", 64 * 64, 256, 128),
    _mm("mvv2 layer3 expand 32x32: 256->512", 32 * 32, 256, 512),
    _mm("mvv2 attn qkv 16x16 tokens: 256->513", 16 * 16 * 4, 256, 513),
    _mm("mnv2 layer0 expand 112x112: 16->96", 112 * 112, 16, 96),
    _mm("mnv2 conv_1x1 7x7: 320->1280", 7 * 7, 320, 1280),
    _mm("mvit-S l3 attn qkv 1024 tok: 144->432", 1024, 144, 432),
    _mm("mvit-S l3 attn out 1024 tok: 144->144", 1024, 144, 144),
    _mm("mvit-S l3 MLP fc1 1024 tok: 144->288", 1024, 144, 288),
    _mm("mvit-S l3 MLP fc2 1024 tok: 288->144", 1024, 288, 144),
    _mm("mvit-S l4 attn qkv 256 tok: 192->576", 256, 192, 576),
    _conv("mvit-S l3 conv_kxk 3x3 32x32: 96->96", 32, 96, 96, 3, 1),
    _conv("v2-seg ASPP 3x3 dil 6 32x32: 512->512", 32, 512, 512, 3, 6),
]
SGEMM_SQUARES = [1024, 2048]
# The kernels the GEMM benchmark calls, with the leading parameters it passes (positionally):
# each shape becomes one planned op on arenas, run the way a model runs it (no copies).
GEMM_API = {
    "tinymvit.kernels.pointwise.prepare_pointwise_weight": ["w"],
    "tinymvit.kernels.pointwise.gemm_op": ["a_off", "m", "k", "w_off", "b_off", "n", "act",
                                           "o_off", "r_off", "threads"],
    "tinymvit.kernels.conv.prepare_conv_weight": ["w"],
    "tinymvit.kernels.conv.conv_op": ["x_off", "x_shape", "o_off", "out_shape", "wp", "w_off",
                                      "b_off", "stride", "dilation", "pad_top", "pad_left",
                                      "act", "threads"],
    "tinymvit.kernels.program.bind_ops": ["ops", "A", "W", "threads"],
}
GEMM_THREADS = "tinymvit's own worker threads"


def useful_macs(shape):
    """Multiply-adds that do work: for a conv, only taps inside the input count."""
    if "ksize" not in shape:
        return shape["m"] * shape["k"] * shape["n"]
    side, k, d = shape["side"], shape["ksize"], shape["dilation"]
    half = k // 2
    inside = sum(sum(0 <= i + (a - half) * d < side for a in range(k)) for i in range(side))
    return inside * inside * shape["cin"] * shape["cout"]   # rows x columns of valid taps


def median_rate(fn, flops, budget):
    """GFLOP/s of ``fn`` from the median of calls made for ``budget`` seconds (>= 5 calls)."""
    for _ in range(3):
        fn()
    times, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < budget or len(times) < 5:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return flops / statistics.median(times) / 1e9


def gemm_api():
    """The tinymvit kernels GEMM_API names, checked against the parameters bench.py passes."""
    import importlib
    import inspect

    fns = {}
    for qual, expected in GEMM_API.items():
        mod, _, attr = qual.rpartition(".")
        fn = getattr(importlib.import_module(mod), attr, None)
        if fn is None:
            raise SystemExit(f"bench.py GEMM: {qual} does not exist any more; update "
                             f"gemm_api()/child_gemm() in bench.py")
        params = list(inspect.signature(fn).parameters.values())
        names = [p.name for p in params[:len(expected)]]
        extra = [p.name for p in params[len(expected):] if p.default is inspect.Parameter.empty]
        if names != expected or extra:
            raise SystemExit(f"bench.py GEMM: {qual}{inspect.signature(fn)} changed; bench.py "
                             f"calls it as ({', '.join(expected)}): update child_gemm()")
        fns[attr] = fn
    from tinymvit.kernels import activations
    if getattr(activations, "ACT_NONE", 0) != 0:
        raise SystemExit("bench.py GEMM: activations.ACT_NONE is no longer 0; update child_gemm()")
    return fns


GEMM_REPEATS = 4    # runs of one GEMM op per timed program call


def child_gemm(spec):
    """tinymvit's pointwise / conv ops on GEMM_SHAPES at spec['threads'] threads."""
    import numpy as np

    from tinymvit.kernels.program import Arena

    api = gemm_api()
    t = spec["threads"]
    rng = np.random.default_rng(0)
    out = {}
    for shape in GEMM_SHAPES:
        m, k, n = shape["m"], shape["k"], shape["n"]
        bias = rng.standard_normal(n, dtype=np.float32)
        A, W = Arena(), Arena()
        if "ksize" in shape:
            s, cin, kk, d = shape["side"], shape["cin"], shape["ksize"], shape["dilation"]
            x = rng.standard_normal((1, s, s, cin), dtype=np.float32)
            w = (rng.standard_normal((n, cin, kk, kk)) / np.sqrt(k)).astype(np.float32)
            wp = api["prepare_conv_weight"](w)
            xo, oo = A.add(x), A.add(size=s * s * n)
            wo, bo = W.add(wp.panels), W.add(bias)
            pad = (kk // 2) * d
            op = api["conv_op"](xo, x.shape, oo, (1, s, s, n), wp, wo, bo, 1, d, pad, pad, 0, t)
            y_shape = (1, s, s, n)
        else:
            x = rng.standard_normal((m, k), dtype=np.float32)
            w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
            wp = api["prepare_pointwise_weight"](w)
            xo, oo = A.add(x), A.add(size=m * n)
            wo, bo = W.add(wp.panels), W.add(bias)
            op = api["gemm_op"](xo, m, k, wo, bo, n, 0, oo, None, t)
            y_shape = (m, n)
        # GEMM_REPEATS runs of the op in one program, as ops run in a forward pass: the worker
        # threads are woken once per call, not once per op
        arena, fn = api["bind_ops"]([op] * GEMM_REPEATS, A.build(), W.build(), t)
        rate = median_rate(fn, 2 * useful_macs(shape) * GEMM_REPEATS, spec["budget"])
        y = arena[oo:oo + int(np.prod(y_shape))].reshape(y_shape)
        err = gemm_error(x, w, bias, y, shape)
        out[shape["name"]] = dict(gflops=rate, rel_err=err)
        progress(f"  tinymvit {t}t {shape['name']:<40} {rate:7.1f} GFLOP/s")
    emit(dict(shapes=out, threading_layer=GEMM_THREADS))


def gemm_error(x, w, bias, y, shape):
    """max |y - reference| / max |reference|, reference in float64."""
    import numpy as np

    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    if "ksize" not in shape:
        ref = x64 @ w64.T + bias
    else:
        s, kk, d = shape["side"], shape["ksize"], shape["dilation"]
        pad = (kk // 2) * d
        xp = np.zeros((s + 2 * pad, s + 2 * pad, x.shape[-1]))
        xp[pad:pad + s, pad:pad + s] = x64[0]
        ref = np.zeros((s, s, w.shape[0])) + bias
        for a in range(kk):
            for b in range(kk):
                ref += xp[a * d:a * d + s, b * d:b * d + s] @ w64[:, :, a, b].T
        ref = ref.reshape(1, s, s, -1)
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def child_sgemm(spec):
    """NumPy's sgemm (BLAS) on the squares and on the GEMM shapes' (M, K, N)."""
    import numpy as np

    def rate(m, k, n, budget):
        a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        return median_rate(lambda: np.matmul(a, b, out=c), 2 * m * k * n, budget)

    squares = {str(s): rate(s, s, s, 2 * spec["budget"]) for s in SGEMM_SQUARES}
    progress(f"  NumPy {spec['threads']}t sgemm peak {max(squares.values()):.1f} GFLOP/s")
    shapes = {s["name"]: rate(s["m"], s["k"], s["n"], spec["budget"]) for s in GEMM_SHAPES}
    emit(dict(squares=squares, shapes=shapes))


# ----------------------------------------------------------------------------------------
# Child: the interleaved "server with idle gaps" mode (all three runtimes in one process)
# ----------------------------------------------------------------------------------------

def child_interleaved(spec):
    import numpy as np
    import onnxruntime as ort
    import torch

    torch.set_num_interop_threads(1)
    out = []
    for model in spec["models"]:
        name = model["name"]
        progress(f"{name}: loading the three runtimes")
        tm = load_runtime("torch", model, None)
        tiny = None
        try:
            import tinymvit
            tiny = tinymvit.load(model["folder"])
        except Exception as exc:  # noqa: BLE001 - report it and time the others
            progress(f"  tinymvit n/a: {type(exc).__name__}: {exc}"[:200])
        sessions = {}

        def session(n):
            if n not in sessions and model.get("onnx"):
                so = ort.SessionOptions()
                so.intra_op_num_threads = n
                so.inter_op_num_threads = 1
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                sessions[n] = ort.InferenceSession(model["onnx"], so,
                                                   providers=["CPUExecutionProvider"])
            return sessions.get(n)

        x1 = check_input(model["size"])
        ref = tm(x1)
        errs = {"torch": 0.0}
        if tiny is not None:
            errs["tinymvit"] = rel_err(tiny(x1).logits, ref)
        if session(1) is not None:
            errs["ort"] = rel_err(session(1).run(None, {"pixel_values": x1})[0], ref)
        for batch in model["batches"]:
            x = np.random.default_rng(batch).standard_normal(
                (batch, 3, model["size"], model["size"]), dtype=np.float32)
            for n in spec["threads"]:
                torch.set_num_threads(n)
                runners = {"torch": lambda: tm(x)}
                if tiny is not None:
                    tiny.num_threads = n
                    runners["tinymvit"] = lambda: tiny(x).logits
                if session(n) is not None:
                    sess = session(n)
                    runners["ort"] = lambda: sess.run(None, {"pixel_values": x})[0]
                times = interleave(runners, spec)
                stats = {rt: summarize(t) for rt, t in times.items()}
                runtimes = {rt: dict(s, noise=s["iqr"] / s["median"],
                                     times_ms=[round(t * 1e3, 3) for t in times[rt]])
                            for rt, s in stats.items()}
                out.append(dict(model=name, batch=batch, threads=n, rel_err=errs,
                                runtimes=runtimes))
                progress(f"  {name} b{batch} t{n}: " + "  ".join(
                    f"{NAMES[rt]} {s['median']:.1f} ms" for rt, s in stats.items()))

    emit(dict(rows=out))


def interleave(runners, spec):
    """Rounds of one call per runner, order rotating, ``gap`` seconds of sleep after each call
    (so that no runtime's spinning worker threads slow the next); warm-up rounds excluded."""
    names, gap = list(runners), spec["gap_ms"] / 1e3
    for _ in range(spec["warmup"]):
        t0 = time.perf_counter()
        for n in names:
            runners[n]()
            time.sleep(gap)
        if time.perf_counter() - t0 > 1.0:
            break
    times = {n: [] for n in names}
    start = time.perf_counter()
    for r in range(spec["calls"]):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            runners[n]()
            times[n].append(time.perf_counter() - t0)
            time.sleep(gap)
        if r + 1 >= spec["min_calls"] and time.perf_counter() - start > spec["budget"]:
            break
    return times


def rel_err(ours, ref):
    """max |ours - ref| / max |ref| (inf if the shapes differ)."""
    import numpy as np
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return float("inf")
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


CHILDREN = dict(prepare=child_prepare, speed=child_speed, startup=child_startup,
                gemm=child_gemm, sgemm=child_sgemm, interleaved=child_interleaved)


# ----------------------------------------------------------------------------------------
# Parent: environment
# ----------------------------------------------------------------------------------------

def cpu_info():
    """(model name, vector extensions) from /proc/cpuinfo (lscpu's source)."""
    import platform
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = sorted(f for f in flags if f.startswith(("avx", "fma", "amx", "asimd", "sve", "neon")))
    return model or platform.processor() or platform.machine(), isa


def environment():
    import importlib.metadata
    import platform

    cpu, isa = cpu_info()
    try:                 # the cores tinymvit's threads use (affinity, a container's CPU quota)
        from tinymvit.kernels.workers import cgroup_cpu_limit, default_threads
        quota, usable = cgroup_cpu_limit(), default_threads()
    except ImportError:
        quota = None
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count()
    env = dict(cpu=cpu, isa=isa, logical_cpus=os.cpu_count(), usable_cpus=usable,
               cpu_quota=quota, python=platform.python_version())
    for pkg in ("tinymvit", "numpy", "numba", "onnxruntime", "torch", "transformers"):
        try:
            env[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            env[pkg] = None
    try:
        git = ["git", "-C", str(REPO)]
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        env["commit"] = head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        env["commit"] = None
    return env


def print_header(env, args, log):
    quota = f", a CPU quota of {env['cpu_quota']}" if env.get("cpu_quota") else ""
    log(f"CPU: {env['cpu']}  ({env['logical_cpus']} logical CPUs, {env['usable_cpus']} usable"
        f"{quota})")
    log(f"vector extensions: {' '.join(env['isa']) or 'none found'}")
    versions = ", ".join(f"{k} {env[k]}" for k in ("tinymvit", "numpy", "numba", "onnxruntime",
                                                   "torch", "transformers") if env[k])
    log(f"python {env['python']}, {versions}; repo at {env['commit']}")
    load = os.getloadavg()
    log(f"load average {load[0]:.2f} at the start" + (
        f"  (WARNING: other work is using the {env['usable_cpus']} CPUs; timings will suffer)"
        if load[0] > env["usable_cpus"] - 0.5 else ""))
    if max(args.threads) > env["usable_cpus"]:
        log(f"WARNING: {max(args.threads)} threads on {env['usable_cpus']} usable CPUs")


# ----------------------------------------------------------------------------------------
# Parent: preparing the models
# ----------------------------------------------------------------------------------------

def prepare(names, args, log):
    """Build/refresh checkpoints and ONNX files (in a child: the parent never imports torch).

    Returns {name: dict(folder, onnx or None, weights, onnx_error)}.
    """
    need_onnx = "ort" in args.runtimes or "startup" in args.parts or args.mode == "interleaved"
    res = {name: dict(onnx_error=None) for name in names}
    if not all(is_prepared(name, args.cache_dir, need_onnx) for name in names):
        log(f"\nPreparing the checkpoints and ONNX exports (cached in {args.cache_dir})")
        res = run_child("prepare", dict(models=names, cache_dir=str(args.cache_dir),
                                        onnx=need_onnx),
                        log=lambda line: log("  " + line), timeout=7200)
        if res.get("error"):
            raise SystemExit(f"bench.py: preparing the models failed: {res['error']}")
    out, matching = {}, []
    for name in names:
        folder, onnx, weights = model_paths(name, args.cache_dir)
        err = res[name]["onnx_error"] if need_onnx else "not needed"
        if need_onnx and not err and not onnx.is_file():
            err = f"{onnx} missing"
        out[name] = dict(folder=str(folder), onnx=None if err else str(onnx), weights=weights,
                         onnx_error=err, label=MODELS[name]["label"])
        if need_onnx and err:
            log(f"! {name}: no ONNX model, ORT n/a ({err})")
        ok, msg = check_keys(name, folder) if not real_checkpoint(name) else (None, None)
        out[name]["keys_check"] = msg
        if ok is False:
            log(f"! keys check {msg}")
        elif ok:
            matching.append(name)
    if matching:
        log(f"\nRandom-weight checkpoints {', '.join(matching)}: tensor names and shapes equal "
            f"to ../shared/reference/keys-*.txt")
    return out


def model_spec(name, info, batches):
    return dict(name=name, folder=info["folder"], onnx=info["onnx"], size=MODELS[name]["size"],
                cls=hf_class(name), batches=batches)


def batches_of(name, args):
    return args.seg_batches if MODELS[name].get("seg") else args.batches


# ----------------------------------------------------------------------------------------
# Parent: steady-state speed, each runtime in its own processes
# ----------------------------------------------------------------------------------------

def warm_kernel_cache(log):
    """Compile tinymvit's kernels first (``tinymvit compile``), so that no timed process -- or
    its peak RSS -- includes the one-time compilation (e.g. after the kernels changed)."""
    p = subprocess.run([sys.executable, "-m", "tinymvit", "compile"], capture_output=True,
                       text=True, cwd=str(REPO))
    last = (p.stdout.strip().splitlines() or p.stderr.strip().splitlines() or ["?"])
    log(f"\nKernel cache: {last[0] if p.returncode == 0 else 'compile failed: ' + last[-1]}")


def procs_for(threads, args):
    return args.procs or (1 if threads == 1 or args.quick else 3)


def bench_separate(names, info, args, log):
    """The speed part: returns the table rows, the logits check and the peak-RSS rows."""
    runtimes = [rt for rt in RUNTIMES if rt in args.runtimes]
    if "tinymvit" in runtimes:
        warm_kernel_cache(log)
    log(f"\nSpeed: each runtime in its own process, back-to-back calls (<= {args.calls} per "
        f"batch, >= {args.min_calls}, ~{args.budget:g} s), median per process")
    with tempfile.TemporaryDirectory(prefix="logits-", dir=str(args.cache_dir)) as logits_dir:
        procs = run_speed_processes(names, info, args, runtimes, logits_dir, log)
        checks = check_logits(names, runtimes, logits_dir)
    rows = [make_row(name, batch, threads, procs, runtimes, info)
            for name in names for batch in batches_of(name, args) for threads in args.threads]
    return rows, checks, rss_rows(names, procs, args)


def run_speed_processes(names, info, args, runtimes, logits_dir, log):
    """Every speed child, repetitions interleaved in time and the runtime order alternating;
    returns {(runtime, model, threads): [one result per process]}."""
    solo = [rt for rt in runtimes if rt != "torch"]       # one model per process
    timing = dict(calls=args.calls, min_calls=args.min_calls, budget=args.budget,
                  warmup=args.warmup)
    # PyTorch is a reference without a target, and the slowest: half the calls and budget
    torch_timing = dict(timing, calls=max(3, args.calls // 2), budget=args.budget / 2,
                        min_calls=min(3, args.min_calls))
    procs, t0 = {}, time.perf_counter()
    for threads in args.threads:
        n_procs = procs_for(threads, args)
        for rep in range(n_procs):
            check = threads == args.threads[0] and rep == 0   # the logits check, once
            jobs = []
            for i, name in enumerate(names):
                jobs += [(rt, [name]) for rt in (solo if (rep + i) % 2 == 0 else solo[::-1])
                         if rt != "ort" or info[name]["onnx"]]       # no export: ORT n/a
            if "torch" in runtimes:            # one process for all models, first or last
                jobs = [("torch", names)] + jobs if rep % 2 else jobs + [("torch", names)]
            line = {}
            for rt, models in jobs:
                spec = dict(torch_timing if rt == "torch" else timing, runtime=rt,
                            threads=threads, logits_dir=logits_dir if check else None,
                            models=[model_spec(n, info[n], batches_of(n, args)) for n in models])
                res = run_child("speed", spec)
                for n in models:   # a failed process (or a forbidden import) voids its times
                    r = ({"error": res["error"]} if res.get("error")
                         else res["models"].get(n) or {"error": "no result"})
                    procs.setdefault((rt, n, threads), []).append(r)
                elapsed = time.perf_counter() - t0
                where = (f"  [{elapsed // 60:02.0f}:{elapsed % 60:02.0f}] t{threads} "
                         f"process {rep + 1}/{n_procs}  ")
                if rt == "torch":
                    log(f"{where}PyTorch, all models: {res['wall_s']:.0f} s" + _err_note(res))
                    continue
                name = models[0]
                line.setdefault(name, []).append(_short(rt, procs[rt, name, threads][-1]))
                if len(line[name]) == len(solo) - (not info[name]["onnx"] and "ort" in solo):
                    log(f"{where}{name:<9}" + "".join(line[name]))
    return procs


def _err_note(res):
    return f"  ERROR {res['error']}" if res.get("error") else ""


def _short(rt, r):
    if r.get("error"):
        return f"  {NAMES[rt]} ERROR {r['error'][:120]}"
    return f"  {NAMES[rt]} " + " ".join(f"b{b}:{v['median']:.1f}" for b, v in r.items()
                                        if isinstance(v, dict)) + " ms"


def make_row(name, batch, threads, procs, runtimes, info):
    """Aggregate the processes of one (model, batch, threads) into a table row."""
    row = dict(model=name, label=info[name]["label"], input=f"{MODELS[name]['size']}",
               batch=batch, threads=threads, runtimes={}, errors={})
    for rt in runtimes:
        results = procs.get((rt, name, threads), [])
        meds = [r[str(batch)]["median"] for r in results if str(batch) in r]
        errs = [r["error"] for r in results if r.get("error")]
        if errs:
            row["errors"][rt] = errs[0]
        if meds:
            within = statistics.median(r[str(batch)]["iqr"] / r[str(batch)]["median"]
                                       for r in results if str(batch) in r)
            spread = (max(meds) - min(meds)) / statistics.median(meds) if len(meds) > 1 else within
            row["runtimes"][rt] = dict(median=statistics.median(meds), procs=meds, noise=spread,
                                       calls=[r[str(batch)]["n"] for r in results
                                              if str(batch) in r])
    return finish_row(row)


def finish_row(row):
    """Ratios, target and verdict of a row whose runtimes' medians are known."""
    med = {rt: v["median"] for rt, v in row["runtimes"].items()}
    tiny = med.get("tinymvit")
    row["tiny_over_ort"] = tiny / med["ort"] if tiny and med.get("ort") else None
    row["tiny_over_torch"] = tiny / med["torch"] if tiny and med.get("torch") else None
    row["noise"] = max((v["noise"] for v in row["runtimes"].values()), default=None)
    row["target"] = target_of(row["model"], row["batch"], row["threads"])
    row["verdict"] = None
    if row["target"] is not None and row["tiny_over_ort"] is not None:
        ok = row["tiny_over_ort"] <= row["target"]
        row["verdict"] = "PASS" if ok else "FAIL"
        margin = abs(row["tiny_over_ort"] - row["target"]) / row["target"]
        row["close"] = bool(row["noise"] and margin < row["noise"])
    return row


def check_logits(names, runtimes, logits_dir):
    """{name: {runtime: logits' rel err vs PyTorch's (or ORT's without PyTorch)}}."""
    import numpy as np

    out = {}
    ref_rt = "torch" if "torch" in runtimes else "ort"
    for name in names:
        ref_path = Path(logits_dir) / f"{ref_rt}-{name}.npy"
        if not ref_path.is_file():
            continue
        ref = np.load(ref_path).astype(np.float64)
        out[name] = {"reference": ref_rt}
        for rt in runtimes:
            path = Path(logits_dir) / f"{rt}-{name}.npy"
            if rt != ref_rt and path.is_file():
                ours = np.load(path).astype(np.float64)
                out[name][rt] = (float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))
                                 if ours.shape == ref.shape else float("inf"))
    return out


def rss_rows(names, procs, args):
    """Peak RSS after the batch-1 calls, 1-thread (or fewest-thread) processes."""
    threads = min(args.threads)
    rows = []
    for name in names:
        row = dict(model=name, threads=threads)
        for rt in ("tinymvit", "ort"):
            vals = [r["1"]["rss_mb"] for r in procs.get((rt, name, threads), []) if "1" in r]
            row[rt] = statistics.median(vals) if vals else None
        if row["tinymvit"] and row["ort"]:
            row["ratio"] = row["tinymvit"] / row["ort"]
            row["verdict"] = "PASS" if row["ratio"] <= 1.0 else "FAIL"
        rows.append(row)
    return rows


def bench_interleaved(names, info, args, log):
    """The server-with-idle-gaps mode: one process, all runtimes, interleaved calls."""
    log(f"\nSpeed, INTERLEAVED mode (server with idle gaps: {args.gap_ms:g} ms pause after each "
        f"call, ORT spin-waiting off; NOT the issue's protocol)")
    spec = dict(models=[model_spec(n, info[n], batches_of(n, args)) for n in names],
                threads=args.threads, calls=args.calls, min_calls=args.min_calls,
                budget=args.budget * 2, warmup=args.warmup, gap_ms=args.gap_ms)
    res = run_child("interleaved", spec, log=lambda line: log("  " + line), timeout=7200)
    if res.get("error"):
        raise SystemExit(f"bench.py: the interleaved run failed: {res['error']}")
    rows, checks = [], {}
    for r in res["rows"]:
        row = finish_row(dict(r, label=info[r["model"]]["label"],
                              input=f"{MODELS[r['model']]['size']}", errors={}))
        row["verdict"] = row["verdict"] and f"({row['verdict']})"   # for reference only
        checks[r["model"]] = dict(r["rel_err"], reference="torch")
        rows.append(row)
    return rows, checks


# ----------------------------------------------------------------------------------------
# Parent: GEMM and start-up
# ----------------------------------------------------------------------------------------

BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def bench_gemm(args, log):
    """tinymvit's GEMM kernels and NumPy's sgemm, a fresh process per thread count each.

    Repeated ``--gemm-reps`` times (alternating); every rate is the best of the repetitions'
    medians, for both: a capability shows best in the least disturbed process of a shared machine.
    """
    threads = sorted(set(args.threads) | {1})
    log(f"\nGEMM core: fresh processes per thread count ({', '.join(map(str, threads))}), "
        f"median of calls for {args.gemm_budget:g} s per shape, best of {args.gemm_reps} "
        f"process(es)")
    res = {t: dict(sgemm={}, tinymvit={}) for t in threads}
    errors = []
    for _ in range(args.gemm_reps):
        for t in threads:
            env = {k: str(t) for k in BLAS_THREAD_VARS}
            env.update(OPENBLAS_CORETYPE=None, OPENBLAS_L2_SIZE=None)
            runs = (("sgemm", "NumPy sgemm", env),
                    ("gemm", "tinymvit GEMM", dict(OPENBLAS_NUM_THREADS="1")))  # (its check)
            for kind, what, child_env in runs:
                r = run_child(kind, dict(threads=t, budget=args.gemm_budget), env=child_env,
                              log=lambda line: log(line) if "peak" in line else None)
                if r.get("error"):
                    errors.append(f"{what} at {t} thread(s) failed: {r['error']}")
                    log("  " + errors[-1])
                    continue
                best = res[t]["sgemm" if kind == "sgemm" else "tinymvit"]
                best["threading_layer"] = r.get("threading_layer")
                for part in ("squares", "shapes"):
                    for key, v in r.get(part, {}).items():
                        if isinstance(v, dict):          # tinymvit: rate and error
                            errs = best.setdefault("rel_err", {})
                            errs[key] = max(errs.get(key, 0.0), v["rel_err"])
                            v = v["gflops"]
                        rates = best.setdefault(part, {})
                        rates[key] = max(v, rates.get(key, 0.0))
    peak = {t: max(r["sgemm"]["squares"].values()) for t, r in res.items()
            if r["sgemm"].get("squares")}
    top = max(threads)
    rows = []
    for shape in GEMM_SHAPES:
        name = shape["name"]
        row = dict(name=name, m=shape["m"], k=shape["k"], n=shape["n"],
                   useful_share=useful_macs(shape) / (shape["m"] * shape["k"] * shape["n"]))
        for t in threads:
            row[f"tiny_{t}"] = res[t]["tinymvit"].get("shapes", {}).get(name)
            row[f"rel_err_{t}"] = res[t]["tinymvit"].get("rel_err", {}).get(name)
            row[f"numpy_{t}"] = res[t]["sgemm"].get("shapes", {}).get(name)
            if row[f"tiny_{t}"] and peak.get(t):
                row[f"peak_share_{t}"] = row[f"tiny_{t}"] / peak[t]
        if top > 1 and row.get("tiny_1") and row.get(f"tiny_{top}"):
            row["scaling"] = row[f"tiny_{top}"] / row["tiny_1"]
        if any((row.get(f"rel_err_{t}") or 0) > 1e-4 for t in threads):
            row["verdict"] = "WRONG"
        elif row.get("peak_share_1") is not None and top == 2 and row.get("scaling"):
            ok = row["peak_share_1"] >= GEMM_PEAK_SHARE and row["scaling"] >= GEMM_SCALING
            row["verdict"] = "PASS" if ok else "FAIL"
        rows.append(row)
    return dict(threads=threads, peak=peak, rows=rows, errors=errors,
                squares={t: r["sgemm"].get("squares") for t, r in res.items()},
                threading_layer=res[1]["tinymvit"].get("threading_layer"))


def tinymvit_command():
    """How a user starts the CLI: the console script beside this Python, else ``-m``."""
    script = Path(sys.executable).with_name("tinymvit")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tinymvit"]


def classify_image(args):
    """A real photo from ../shared/images, else a small generated PPM (no imports needed)."""
    img = shared_dir() / "images" / "coral_bird.bmp"
    if img.is_file():
        return img
    img = args.cache_dir / "bench-image.ppm"
    if not img.is_file():
        w = h = 320
        pixels = bytes((x * 255 // w) if c == 0 else (y * 255 // h) if c == 1 else 128
                       for y in range(h) for x in range(w) for c in range(3))
        img.write_bytes(f"P6 {w} {h} 255\n".encode() + pixels)
    return img


# Start-up is measured with Python's byte-code cache on, as a user has it after ``pip install``
# (which writes the .pyc files): a PYTHONDONTWRITEBYTECODE=1 environment (some sandboxes set
# it) would recompile every tinymvit module from source at each start, ~0.1 s, while the
# runtimes installed as wheels have their .pyc files.  The first (warm-up) process writes them.
STARTUP_ENV = dict(PYTHONDONTWRITEBYTECODE=None)


def bench_startup(info, args, log):
    """Start-up and peak RSS in fresh processes; classify process; optional cold cache."""
    names = [n for n in args.startup_models if n in info]
    out = dict(runs=[], classify=[], cold=[])
    reps = args.startup_reps
    log(f"\nStart-up: fresh processes, batch 1, default threads, warm kernel and byte-code caches, "
        f"median of {reps}")
    for name in names:
        m = info[name]
        base = dict(folder=m["folder"], onnx=m["onnx"], size=MODELS[name]["size"])
        warm = run_child("startup", dict(base, runtime="tinymvit"),   # fill the caches if cold
                         env=STARTUP_ENV)
        if warm.get("error"):
            log(f"  {name} tinymvit: {warm['error']}")
        runs = {"tinymvit": [], "ort": []}
        for rep in range(reps):
            for rt in (("tinymvit", "ort") if rep % 2 == 0 else ("ort", "tinymvit")):
                if rt == "ort" and not m["onnx"]:
                    continue
                runs[rt].append(run_child("startup", dict(base, runtime=rt), env=STARTUP_ENV))
        for rt, rs in runs.items():
            good = [r for r in rs if not r.get("error")]
            row = dict(model=name, runtime=rt, reps=len(good),
                       errors=[r["error"] for r in rs if r.get("error")])
            for key in ("import_s", "load_s", "first_s", "total_s", "rss_mb", "wall_s"):
                if good:
                    row[key] = statistics.median(r[key] for r in good)
            if rt == "tinymvit" and "total_s" in row:
                row["target"] = STARTUP_TARGETS.get(name)
                if row["target"]:
                    row["verdict"] = "PASS" if row["total_s"] <= row["target"] else "FAIL"
            out["runs"].append(row)
        # the whole CLI process, as a shell user sees it
        image = classify_image(args)
        cmd = tinymvit_command() + ["classify", str(image), "--model", m["folder"]]
        walls, err = [], None
        for _ in range(reps):
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(args.cache_dir),
                               env={k: v for k, v in os.environ.items()
                                    if k not in STARTUP_ENV})
            walls.append(time.perf_counter() - t0)
            if p.returncode != 0:
                err = (p.stderr.strip().splitlines() or ["?"])[-1][:200]
                break
        row = dict(model=name, command=" ".join(cmd), error=err,
                   top1=None if err else (p.stdout.strip().splitlines() or [""])[0],
                   stderr=None if err else (p.stderr.strip().splitlines() or [None])[0])
        if not err:
            row.update(wall_s=statistics.median(walls), target=CLASSIFY_TARGET)
            row["verdict"] = "PASS" if row["wall_s"] <= CLASSIFY_TARGET else "FAIL"
        out["classify"].append(row)
    if args.cold_cache:
        for name in names:
            m = info[name]
            cache = tempfile.mkdtemp(prefix=f"numba-cold-{name}-", dir=str(args.cache_dir))
            log(f"  {name}: first-ever run, empty NUMBA_CACHE_DIR (compiles)...")
            r = run_child("startup", dict(folder=m["folder"], onnx=None, runtime="tinymvit",
                                          size=MODELS[name]["size"]),
                          env=dict(NUMBA_CACHE_DIR=cache), keep_stderr=True)
            row = dict(model=name, error=r.get("error"), wall_s=r.get("wall_s"),
                       first_s=r.get("first_s"), load_s=r.get("load_s"),
                       stderr_first_line=(r.get("stderr", "").strip().splitlines() or [""])[0],
                       target=COLD_TARGET)
            if not row["error"]:
                row["verdict"] = "PASS" if row["wall_s"] <= COLD_TARGET else "FAIL"
            out["cold"].append(row)
            shutil.rmtree(cache, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------------
# Parent: tables
# ----------------------------------------------------------------------------------------

def _f(v, fmt, none="n/a"):
    return none if v is None else format(v, fmt)


SPEED_COLS = (f"{'model':<9} {'input':>5} {'batch':>5} {'thr':>3} {'tinymvit ms':>11} "
              f"{'ORT ms':>9} {'PyTorch ms':>10} {'tiny/ORT':>8} {'tiny/PT':>7} {'noise':>5} "
              f"{'target':>6}  verdict")


def format_speed_row(row):
    rt = row["runtimes"]
    ms = {k: _f(rt.get(k, {}).get("median"), ".1f", "ERR" if k in row["errors"] else "n/a")
          for k in RUNTIMES}
    target = "-" if row["target"] is None else f"<={row['target']:.1f}"
    verdict = (row["verdict"] or ("n/a" if row["target"] is not None else "-")
               ) + ("*" if row.get("close") else "")
    noise = "-" if row["noise"] is None else f"{100 * row['noise']:.0f}%"
    return (f"{row['model']:<9} {row['input']:>5} {row['batch']:>5} {row['threads']:>3} "
            f"{ms['tinymvit']:>11} {ms['ort']:>9} {ms['torch']:>10} "
            f"{_f(row['tiny_over_ort'], '.2f'):>8} {_f(row['tiny_over_torch'], '.2f'):>7} "
            f"{noise:>5} {target:>6}  {verdict}")


def print_speed(rows, checks, info, args, log, interleaved=False):
    if interleaved:
        log("\nSpeed (INTERLEAVED server-with-gaps mode, one process, median ms per call; verdicts "
            "in parentheses are for reference only: the issue's targets are judged in the default "
            "mode)")
    else:
        procs = ", ".join(f"{procs_for(t, args)} process(es) at {t} thread(s)"
                          for t in args.threads)
        log(f"\nSpeed: median ms per call (median over {procs}); ratio < 1: tinymvit faster")
    log(SPEED_COLS)
    log("-" * len(SPEED_COLS))
    for row in rows:
        log(format_speed_row(row))
    if any(r.get("close") for r in rows):
        log("* closer to the target than the measurement noise: rerun (more --procs) to be sure")
    for name in dict.fromkeys(r["model"] for r in rows):
        errs = {rt: e for r in rows if r["model"] == name for rt, e in r["errors"].items()}
        for rt, e in errs.items():
            log(f"! {name}: {NAMES[rt]} failed: {e}")
        c = checks.get(name)
        if c:
            ref = NAMES[c["reference"]]
            parts = [f"{NAMES[rt]} {err:.1e}" + ("  <-- MISMATCH" if err > 1e-3 else "")
                     for rt, err in c.items() if rt not in ("reference", c["reference"])]
            log(f"  {name}: {info[name]['label']}, {info[name]['weights']}; logits vs {ref}: "
                f"max rel err " + ", ".join(parts))
        else:
            log(f"  {name}: {info[name]['label']}, {info[name]['weights']}")


def print_rss(rows, log):
    log(f"\nPeak RSS after the batch-1 calls ({rows[0]['threads']}-thread processes, VmHWM), MB")
    log(f"{'model':<9} {'tinymvit':>9} {'ORT':>7} {'tiny/ORT':>8}  target  verdict")
    for r in rows:
        log(f"{r['model']:<9} {_f(r['tinymvit'], '.0f'):>9} {_f(r['ort'], '.0f'):>7} "
            f"{_f(r.get('ratio'), '.2f'):>8}  <=1.0   {r.get('verdict', 'n/a')}")


def print_gemm(g, log):
    """The GEMM table: 1 thread and the most threads measured."""
    top = max(g["threads"])
    shown = [1] + ([top] if top > 1 else [])

    def squares(t):
        return ", ".join(f"{n}^2 {v:.1f}" for n, v in (g["squares"].get(t) or {}).items())

    log(f"\nGEMM GFLOP/s, median (tinymvit: one planned gemm / conv op, run {GEMM_REPEATS} times "
        f"per call as ops run in a forward pass, {g['threading_layer']}; NumPy: np.matmul sgemm "
        f"on the same M x K x N)")
    shape_cols = f"{'shape':<41} {'M':>5} {'K':>5} {'N':>5} | "
    log(" " * len(shape_cols) + "".join(f"{f'{t} thread(s)':^19} | " for t in shown))
    head = shape_cols + f"{'tiny':>6} {'%peak':>5} {'NumPy':>6} | " * len(shown) + "scale  verdict"
    log(head)
    log("-" * len(head))
    for r in g["rows"]:
        name = r["name"] + ("" if r["useful_share"] > 0.999 else " +")
        cols = ""
        for t in shown:
            share = r.get(f"peak_share_{t}")
            cols += (f"{_f(r.get(f'tiny_{t}'), '6.1f'):>6} {_f(share and 100 * share, '4.0f'):>4}% "
                     f"{_f(r.get(f'numpy_{t}'), '6.1f'):>6} | ")
        log(f"{name:<41} {r['m']:>5} {r['k']:>5} {r['n']:>5} | {cols}"
            f"{_f(r.get('scaling'), '4.2f') + 'x' if r.get('scaling') else '-':>5}  "
            f"{r.get('verdict', 'n/a')}")
    log("sgemm peak (NumPy, best median of squares): "
        + "; ".join(f"{_f(g['peak'].get(t), '.1f')} GFLOP/s at {t} thread(s) ({squares(t)})"
                    for t in g["threads"]))
    for e in g["errors"]:
        log("! " + e)
    if any((r.get(f"peak_share_{t}") or 0) > 1.0 for r in g["rows"] for t in shown):
        log("! above 100 % of the peak: other load disturbed the peak measurement; rerun")
    log(f"+ conv: GFLOP/s count only the taps inside the input (tinymvit skips padding taps); "
        f"NumPy's is the dense im2col GEMM.  Targets: >= {GEMM_PEAK_SHARE:.0%} of the 1-thread "
        f"peak, >= {GEMM_SCALING}x from 1 to 2 threads")


def print_startup(s, log):
    log(f"\n{'start-up (s)':<18} {'runtime':<9} {'import':>6} {'load':>6} {'1st call':>8} "
        f"{'total':>6} {'process':>7} {'RSS MB':>6}  target  verdict")
    for r in s["runs"]:
        if not r.get("reps"):                  # every process failed, or none ran (no ONNX)
            log(f"{r['model']:<18} {NAMES[r['runtime']]:<9} "
                + (f"ERROR {r['errors'][0]}" if r.get("errors") else "n/a"))
            continue
        log(f"{r['model']:<18} {NAMES[r['runtime']]:<9} {r['import_s']:6.3f} {r['load_s']:6.3f} "
            f"{r['first_s']:8.3f} {r['total_s']:6.3f} {r['wall_s']:7.3f} {r['rss_mb']:6.0f}  "
            + (f"<={r['target']:.1f}   {r['verdict']}" if r.get("target") else ""))
    log("  (total = import numpy + runtime, load/session, first logits, in the process; "
        "process = its whole lifetime as the parent sees it)")
    for r in s["classify"]:
        if r["error"]:
            log(f"classify {r['model']}: ERROR {r['error']}  ({r['command']})")
        else:
            log(f"whole `tinymvit classify` process, {r['model']}: {r['wall_s']:.3f} s  "
                f"(target <= {CLASSIFY_TARGET} s: {r['verdict']}; top-1 '{r['top1']}')"
                + (f"; stderr: {r['stderr'][:100]!r}" if r["stderr"] else ""))
    for r in s["cold"]:
        if r["error"]:
            log(f"cold cache {r['model']}: ERROR {r['error']}")
        else:
            log(f"first-ever run (empty Numba cache), {r['model']}: {r['wall_s']:.1f} s "
                f"(load {r['load_s']:.1f} s, first call {r['first_s']:.1f} s; target <= "
                f"{COLD_TARGET:.0f} s: {r['verdict']}); its stderr began: "
                f"{r['stderr_first_line'][:150]!r}")


def verdicts(report):
    """[(part, 'PASS'/'FAIL', what, value)] for the issue's targets measured in this run."""
    out = []
    for r in report.get("speed", []):
        if r["verdict"] in ("PASS", "FAIL"):
            out.append(("speed", r["verdict"], f"{r['model']} b{r['batch']} t{r['threads']}",
                        f"{r['tiny_over_ort']:.2f}"))
    for r in report.get("rss", []):
        if r.get("verdict"):
            out.append(("peak RSS", r["verdict"], r["model"], f"{r['ratio']:.2f}"))
    for r in (report.get("gemm") or {}).get("rows", []):
        if r.get("verdict"):
            value = (f"{_f(r.get('peak_share_1') and 100 * r['peak_share_1'], '.0f')}%/"
                     f"{_f(r.get('scaling'), '.2f')}x")
            out.append(("GEMM", "FAIL" if r["verdict"] == "WRONG" else r["verdict"],
                        r["name"].split(":")[0],
                        value + (" WRONG RESULT" if r["verdict"] == "WRONG" else "")))
    s = report.get("startup") or {}
    for part, rows, key in (("start-up", s.get("runs", []), "total_s"),
                            ("classify", s.get("classify", []), "wall_s"),
                            ("cold start", s.get("cold", []), "wall_s")):
        for r in rows:
            if r.get("verdict"):
                out.append((part, r["verdict"], r["model"], f"{r[key]:.2f} s"))
    return out


def print_summary(report, args, log):
    import textwrap

    v = verdicts(report)
    log("\nIssue 6 targets measured in this run (speed: tinymvit/ORT; GEMM: % of peak / "
        "scaling; RSS: tinymvit/ORT):")
    if not v:
        log("  none (nothing with a target was measured)")
    for part in dict.fromkeys(p for p, *_ in v):
        mine = [x for x in v if x[0] == part]
        fails = [f"{what} {value}" for _, ok, what, value in mine if ok == "FAIL"]
        log(f"  {part:<10} {len(mine) - len(fails)}/{len(mine)} PASS")
        if fails:
            log(textwrap.fill("FAIL: " + "; ".join(fails), width=100, initial_indent=" " * 13,
                              subsequent_indent=" " * 19))
    few = [t for t in args.threads if t > 1 and procs_for(t, args) < 3]
    if "speed" in args.parts and args.mode == "interleaved":
        log("  (speed measured in the INTERLEAVED mode: no speed verdicts)")
    elif "speed" in args.parts and (args.quick or few):
        log("  (speed: fewer calls or fewer than 3 processes per multi-thread configuration, "
            "indicative only; run without --quick/--procs for the issue's protocol)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (head bench.py) for what is "
                                       "measured and how.")
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    names = lambda s: [v.strip() for v in s.split(",") if v.strip()]  # noqa: E731
    p.add_argument("--mode", choices=["separate", "interleaved"], default="separate",
                   help="separate (default): each runtime in its own processes, back-to-back "
                        "calls; interleaved: one process, interleaved calls with pauses, ORT "
                        "spin-waiting off (a server with idle gaps; no verdicts)")
    p.add_argument("--models", type=names, default=list(MODELS),
                   help="comma list of: " + ", ".join(MODELS) + " (default: all)")
    p.add_argument("--runtimes", type=names, default=list(RUNTIMES),
                   help="comma list of: tinymvit, ort, torch (default: all)")
    p.add_argument("--batches", type=ints, default=None,
                   help="classifier batch sizes (default 1,8; 1 with --quick)")
    p.add_argument("--seg-batches", type=ints, default=[1],
                   help="segmentation batch sizes (default 1)")
    p.add_argument("--threads", type=ints, default=[1, 2], help="thread counts (default 1,2)")
    p.add_argument("--procs", type=int, default=None,
                   help="processes per runtime and thread count (default: 1 at 1 thread, 3 at "
                        "more; 1 with --quick)")
    p.add_argument("--calls", type=int, default=None,
                   help="max timed calls per process and batch (default 20; 8 with --quick)")
    p.add_argument("--min-calls", type=int, default=None,
                   help="timed calls made even over the budget (default 5; 3 with --quick)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timed calls per process and batch before stopping early "
                        "(default 2; 0.6 with --quick)")
    p.add_argument("--warmup", type=int, default=3,
                   help="warm-up calls (default 3; 2 once they took over a second)")
    p.add_argument("--gap-ms", type=float, default=10.0,
                   help="interleaved mode: pause after each call (default 10 ms)")
    p.add_argument("--only", type=names, default=None,
                   help="comma list of parts to run: speed, gemm, startup (default: all)")
    p.add_argument("--skip", type=names, default=[], help="comma list of parts to skip")
    p.add_argument("--gemm-budget", type=float, default=None,
                   help="seconds per GEMM shape (default 0.5; 0.15 with --quick)")
    p.add_argument("--gemm-reps", type=int, default=None,
                   help="GEMM processes per thread count and library; the best median counts "
                        "(default 2; 1 with --quick)")
    p.add_argument("--startup-models", type=names, default=["mnv2", "v2-1.0"],
                   help="models of the start-up part (default mnv2,v2-1.0)")
    p.add_argument("--startup-reps", type=int, default=None,
                   help="start-up processes per runtime and model (default 3; 1 with --quick)")
    p.add_argument("--cold-cache", action="store_true",
                   help="also time the first-ever run with an empty NUMBA_CACHE_DIR (compiles "
                        "every kernel: tens of seconds)")
    p.add_argument("--quick", action="store_true",
                   help="classifiers at batch 1 only, fewer calls, one process per "
                        "configuration, short GEMM and start-up parts (~3-4 min; verdicts "
                        "indicative)")
    p.add_argument("--cache-dir", type=Path,
                   default=Path(tempfile.gettempdir()) / "tinymvit-bench",
                   help="random-weight checkpoints and ONNX files (default $TMPDIR/tinymvit-bench)")
    p.add_argument("--json", type=Path, help="also write every result to this JSON file")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    q = args.quick
    args.batches = args.batches or ([1] if q else [1, 8])
    args.calls = args.calls or (8 if q else 20)
    args.min_calls = min(args.min_calls or (3 if q else 5), args.calls)
    args.budget = args.budget if args.budget is not None else (0.6 if q else 2.0)
    args.gemm_budget = args.gemm_budget or (0.15 if q else 0.5)
    args.startup_reps = args.startup_reps or (1 if q else 3)
    args.gemm_reps = args.gemm_reps or (1 if q else 2)
    args.models = [ALIASES.get(m, m) for m in args.models]
    args.startup_models = [ALIASES.get(m, m) for m in args.startup_models]
    for what, given, known in (("model", args.models + args.startup_models, MODELS),
                               ("runtime", args.runtimes, RUNTIMES),
                               ("part", (args.only or []) + args.skip, ("speed", "gemm",
                                                                        "startup"))):
        bad = [g for g in given if g not in known]
        if bad:
            p.error(f"unknown {what}(s) {bad}; choose from {', '.join(known)}")
    args.parts = [x for x in (args.only or ["speed", "gemm", "startup"]) if x not in args.skip]
    if "tinymvit" not in args.runtimes:
        p.error("--runtimes must include tinymvit (every ratio is tinymvit / another runtime)")
    if args.mode == "interleaved" and set(args.runtimes) != set(RUNTIMES):
        p.error("--mode interleaved always runs all three runtimes")
    if any(t < 1 for t in args.threads) or (args.procs is not None and args.procs < 1):
        p.error("--threads and --procs must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return CHILDREN[args.child](json.loads(args.spec))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run finally: blocks, end children

    def log(line=""):
        print(line, flush=True)

    t_start = time.perf_counter()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    print_header(env, args, log)
    report = dict(environment=env, args={k: str(v) for k, v in vars(args).items()})

    names = args.models if "speed" in args.parts else []
    startup_names = args.startup_models if "startup" in args.parts else []
    all_names = list(dict.fromkeys(names + startup_names))
    info = {}
    if all_names:
        info = prepare(all_names, args, log)
        report["models"] = info

    if names:
        if args.mode == "interleaved":
            rows, checks = bench_interleaved(names, info, args, log)
            report["speed_interleaved"] = rows
            print_speed(rows, checks, info, args, log, interleaved=True)
        else:
            rows, checks, rss = bench_separate(names, info, args, log)
            report.update(speed=rows, rss=rss)
            print_speed(rows, checks, info, args, log)
            print_rss(rss, log)
        report["logits_check"] = checks
    if "gemm" in args.parts:
        report["gemm"] = bench_gemm(args, log)
        print_gemm(report["gemm"], log)
    if startup_names:
        report["startup"] = bench_startup(info, args, log)
        print_startup(report["startup"], log)

    print_summary(report, args, log)
    report["verdicts"] = verdicts(report)
    load = os.getloadavg()
    busy = load[0] > env["usable_cpus"] - 0.5
    log(f"\n(total {time.perf_counter() - t_start:.0f} s; load average {load[0]:.2f} at the end"
        + (" - WARNING: other work was using the CPUs, rerun on a quiet machine" if busy else "")
        + "; shared noisy machines: trust same-run ratios, not absolute ms)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
        log(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

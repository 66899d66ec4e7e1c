"""Bounded fuzz test (issue 7): hostile configs, preprocessor configs, weights and images.

With a fixed seed, cases are made by mutating small random checkpoints (written without
PyTorch) and valid images: config fields (wrong types, signs, zero, huge, NaN, missing),
preprocessor fields, weight tensors (NaN, Inf, overflow, negative variances, wrong
shape/dtype, missing, extra) and image files (truncated, bit flips, extreme aspect
ratios, odd modes, bogus headers).  Every case runs in a child process under a memory
limit (RLIMIT_AS) and a timeout: the child runs a batch of cases and prints one status
line per case before starting the next, and a batch that crashes, hangs or dies is re-run
one case per process, so a segfault or an out-of-memory kill is pinned on its case.
Each case must end with a finite result or a TinyMViTError (through the API), or with
exit status 1 and one error line (through the CLI) - nothing else.
"""
import json
import random
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

import tinymvit
from fake_checkpoints import random_checkpoint
from tinymvit.config import FIELDS

SEED = 20240607
MEMORY_LIMIT = 4 * 2**30            # address space: Numba/LLVM and the thread pool need ~1 GiB
BATCH = 40                           # cases per child process
CHILD = Path(__file__).with_name("fuzz_child.py")

SMALL = {"image_size": 64}
BASES = {   # tiny widths: each case runs in well under a second
    "v2-cls": ("mobilevitv2", "classification",
               dict(SMALL, width_multiplier=0.25, base_attn_unit_dims=[16, 16, 16],
                    n_attn_blocks=[1, 1, 1], num_labels=5)),
    "v2-seg": ("mobilevitv2", "segmentation",
               dict(SMALL, width_multiplier=0.25, base_attn_unit_dims=[16, 16, 16],
                    n_attn_blocks=[1, 1, 1], aspp_out_channels=8, output_stride=16,
                    num_labels=3)),
    "v1-cls": ("mobilevit", "classification",
               dict(SMALL, hidden_sizes=[16, 16, 16], num_attention_heads=2, expand_ratio=2.0,
                    neck_hidden_sizes=[8, 8, 8, 16, 16, 16, 32], num_labels=4)),
    "v1-seg": ("mobilevit", "segmentation",
               dict(SMALL, hidden_sizes=[16, 16, 16], num_attention_heads=2, expand_ratio=2.0,
                    neck_hidden_sizes=[8, 8, 8, 16, 16, 16, 32], aspp_out_channels=8,
                    output_stride=8, num_labels=3)),
    "mn-cls": ("mobilenet_v2", "classification",
               dict(SMALL, depth_multiplier=0.35, num_labels=6)),
    "mn-seg": ("mobilenet_v2", "segmentation",
               dict(SMALL, depth_multiplier=0.35, output_stride=16, num_labels=3)),
}

MISSING = object()
SCALARS = [MISSING, None, True, False, -1, 0, 1, 2, 3, 7, 16, 10**6, 2**63, -2**31, 0.5, 1.5,
           2.0, 1e-300, 1e308, float("nan"), float("inf"), -float("inf"), "8", "x", [], {}]
VALUES = SCALARS + [[v] * 3 for v in SCALARS[1:]] + [[1, 2], [6, 12, 18, 24], [[6], [12], [18]],
                                                     [0, 0, 0], [-5, -5, -5], [1] * 7]
PRE_FIELDS = ["size", "crop_size", "image_mean", "image_std", "rescale_factor", "resample",
              "do_resize", "do_center_crop", "do_rescale", "do_normalize",
              "do_flip_channel_order", "default_to_square"]
PRE_VALUES = SCALARS + [{"shortest_edge": 50000}, {"shortest_edge": 1}, {"height": 1, "width": 1},
                        {"height": 0, "width": 5}, {"longest_edge": 9}, [0, 5], [100000] * 2,
                        {"shortest_edge": 40, "longest_edge": 20},
                        {"max_height": 3, "max_width": 100000}, [1e-30] * 3, [0.5] * 3]


def _png_bomb_header(width, height):
    """A tiny PNG whose header claims a huge image (no pixel data)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                                0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _images(folder, rng):
    """Valid and hostile image files; returns their paths."""
    folder.mkdir()
    pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    rgb = Image.fromarray(pixels)
    made = []

    def save(name, im, **kw):
        path = folder / name
        im.save(path, **kw)
        made.append(path)
        return path

    good = [save("rgb.png", rgb), save("rgb.jpg", rgb), save("rgb.gif", rgb),
            save("rgb.tif", rgb), save("rgb.webp", rgb), save("rgb.bmp", rgb)]
    for mode in ("1", "L", "LA", "P", "I", "CMYK", "YCbCr", "RGBA"):
        ext = {"CMYK": "jpg", "YCbCr": "jpg", "I": "tif"}.get(mode, "png")
        save(f"mode-{mode}.{ext}", rgb.convert(mode))
    save("mode-I16.png", Image.fromarray((pixels[..., 0].astype(np.uint16) * 257)))
    save("mode-F.tif", Image.fromarray(pixels[..., 0].astype(np.float32) * 1e30))
    save("transparent-P.png", rgb.convert("P"), transparency=3)
    for w, h in ((1, 1), (2, 3), (1, 5000), (5000, 1), (60000, 1), (1, 60000), (3, 2000)):
        save(f"shape-{w}x{h}.png", Image.new("RGB", (w, h), (200, 10, 10)))
    exif = Image.Exif()
    exif[0x0112] = 77                                        # a nonsense orientation
    save("exif-orientation.jpg", rgb, exif=exif)
    for path in good:                                        # damaged copies of valid files
        data = path.read_bytes()
        for i, cut in enumerate((0.1, 0.5, 0.9)):
            (folder / f"cut{i}-{path.name}").write_bytes(data[:int(len(data) * cut)])
            made.append(folder / f"cut{i}-{path.name}")
        flipped = bytearray(data)
        for pos in rng.integers(0, len(data), 12):
            flipped[pos] ^= 1 << int(rng.integers(0, 8))
        (folder / f"flip-{path.name}").write_bytes(bytes(flipped))
        made.append(folder / f"flip-{path.name}")
    for name, data in (("empty.png", b""), ("text.jpg", b"hello" * 100),
                       ("random.png", rng.bytes(3000)), ("bomb.png", _png_bomb_header(50000, 50000)),
                       ("bomb-below-pillow.png", _png_bomb_header(9000, 9000)),
                       ("bomb-pillow-warns.png", _png_bomb_header(9500, 9500)),
                       ("wide.png", _png_bomb_header(2**31 - 1, 1))):
        (folder / name).write_bytes(data)
        made.append(folder / name)
    made.append(folder / "missing.png")
    made.append(folder)                                      # a folder is not an image
    return made


def _nearby(rng, value):
    """A value of the same type as ``value`` but off: zero, negative, halved, huge..."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([0, -value, value + 1, value - 1, value * 2, value * 1000, 2**40])
    if isinstance(value, float):
        return rng.choice([0.0, -value, value / 1000, value * 1000, 1e-45, 3e38])
    return value


def _mutate_value(rng, value):
    if isinstance(value, list) and value and rng.random() < 0.5:   # mutate one item of a list
        items = list(value)
        i = rng.randrange(len(items))
        items[i] = (_nearby(rng, items[i]) if rng.random() < 0.6
                    else SCALARS[1 + rng.randrange(len(SCALARS) - 1)])
        return items
    if isinstance(value, (int, float)) and rng.random() < 0.5:
        return _nearby(rng, value)
    return VALUES[rng.randrange(len(VALUES))]


def _write_json(path, data):
    path.write_text(json.dumps(data))       # NaN / Infinity are written as the bare tokens


def _cases(root, bases, images, rng):
    cases = []

    def add(op, base, folder, image, kind):
        if op == "cli":
            op = "cli-segment" if base.endswith("seg") else "cli-classify"
        cases.append({"id": f"{len(cases):03d}-{kind}", "op": op, "checkpoint": str(folder),
                      "image": str(image), "dst": str(root / "out" / f"{len(cases):03d}")})

    def variant(base, kind):
        folder = root / f"{len(cases):03d}-{kind}"
        shutil.copytree(bases[base], folder)
        return folder

    names = sorted(bases)
    good_images = [p for p in images if p.name in ("rgb.png", "rgb.jpg", "mode-L.png")]
    for _ in range(110):                                     # config.json fields
        base = rng.choice(names)
        folder = variant(base, "config")
        config = json.loads((folder / "config.json").read_text())
        fields = list(FIELDS[config["model_type"]]) + ["num_labels", "id2label", "model_type",
                                                       "hidden_act"]
        for _ in range(rng.choice((1, 1, 2))):
            field = rng.choice(fields)
            value = _mutate_value(rng, config.get(field))
            if value is MISSING:
                config.pop(field, None)
            else:
                config[field] = value
        _write_json(folder / "config.json", config)
        add(rng.choice(("api", "api", "convert", "cli")), base, folder, rng.choice(good_images),
            "config")
    for _ in range(35):                                      # preprocessor_config.json fields
        base = rng.choice(names)
        folder = variant(base, "preprocessor")
        pre = {"size": {"shortest_edge": 72}, "crop_size": {"height": 64, "width": 64},
               "do_normalize": True}
        field = rng.choice(PRE_FIELDS)
        value = PRE_VALUES[rng.randrange(len(PRE_VALUES))]
        if value is not MISSING:
            pre[field] = value
        _write_json(folder / "preprocessor_config.json", pre)
        add(rng.choice(("api", "cli")), base, folder, rng.choice(good_images), "preprocessor")
    for _ in range(55):                                      # weight tensors
        base = rng.choice(names)
        folder = variant(base, "weights")
        tensors = load_file(str(folder / "model.safetensors"))
        name = rng.choice(sorted(tensors))
        t = tensors[name]
        how = rng.choice(("nan", "inf", "-inf", "huge", "negvar", "float16", "float64", "int32",
                          "shape", "transpose", "scalar", "empty", "delete", "extra"))
        if how in ("nan", "inf", "-inf"):
            t.reshape(-1)[rng.randrange(t.size)] = float(how)
        elif how == "huge":
            t[...] = 3e38
        elif how == "negvar":
            var = [k for k in tensors if k.endswith("running_var")]
            name = rng.choice(var)
            tensors[name].reshape(-1)[0] = -1.0
        elif how in ("float16", "float64", "int32"):
            tensors[name] = t.astype(how)
        elif how == "shape":
            tensors[name] = np.zeros(t.shape + (2,), np.float32)
        elif how == "transpose":
            tensors[name] = np.ascontiguousarray(t.T)
        elif how == "scalar":
            tensors[name] = np.zeros((), np.float32)
        elif how == "empty":
            tensors[name] = np.zeros((0,) + t.shape[1:], np.float32)
        elif how == "delete":
            del tensors[name]
        else:
            tensors[name + ".extra"] = np.ones(3, np.float32)
        save_file(tensors, str(folder / "model.safetensors"))
        add(rng.choice(("api", "convert", "cli")), base, folder, rng.choice(good_images),
            f"weights-{how}")
    for image in images:                                     # image files
        base = rng.choice(names)
        add(rng.choice(("api", "api", "cli")), base, bases[base], image, f"image-{image.name}")
    return cases


def _limit_memory():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run_children(cases, folder, timeout):
    """{case id: status dict}; cases without a status line crashed, hung or were killed."""
    spec = folder / f"cases-{cases[0]['id']}.json"
    spec.write_text(json.dumps(cases))
    try:
        res = subprocess.run([sys.executable, str(CHILD), str(spec)], capture_output=True,
                             text=True, timeout=timeout, preexec_fn=_limit_memory)
        stdout, died = res.stdout, res.returncode != 0
        reason = f"exit status {res.returncode}: {res.stderr.strip()[-400:]}"
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        died, reason = True, f"no answer within {timeout} s"
    statuses = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            statuses[record["id"]] = record
    return statuses, (reason if died else None)


@pytest.fixture(scope="module")
def fuzz_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "out").mkdir()
    rng = random.Random(SEED)
    bases = {}
    for name, (family, task, config) in sorted(BASES.items()):
        bases[name] = random_checkpoint(root / f"base-{name}", family, task=task, seed=1,
                                        **config)
        model = tinymvit.load(bases[name])                  # warm Numba's cache for the children
        image = np.zeros((48, 64, 3), np.uint8)
        model.classify(image) if task == "classification" else model.segment(image)
    images = _images(root / "images", np.random.default_rng(SEED))
    return root, _cases(root, bases, images, rng)


def test_fuzz_every_case_ends_in_a_result_or_a_tinymvit_error(fuzz_cases):
    root, cases = fuzz_cases
    results = {}
    for start in range(0, len(cases), BATCH):
        batch = cases[start:start + BATCH]
        statuses, died = _run_children(batch, root, timeout=120 + 10 * len(batch))
        results.update(statuses)
        if died:                                   # pin the crash: one process per case left
            for case in batch:
                if case["id"] not in statuses:
                    status, reason = _run_children([case], root, timeout=180)
                    results[case["id"]] = status.get(case["id"]) or {
                        "id": case["id"], "status": "crash", "detail": reason}
    by_id = {c["id"]: c for c in cases}
    bad = [(r, by_id[r["id"]]) for r in results.values() if r["status"] not in ("ok", "error")]
    assert len(results) == len(cases)
    counts = {s: sum(r["status"] == s for r in results.values()) for s in ("ok", "error")}
    assert counts["ok"] >= 20 and counts["error"] >= 100, counts    # both paths exercised
    assert not bad, "\n".join(f"{r['id']} {r['status']}: {r['detail']}\n    case: {case}"
                              for r, case in bad)

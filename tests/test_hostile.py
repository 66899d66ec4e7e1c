"""Hostile inputs (issue 7): one test per class of problem.

Inputs are never written over and every write is atomic; every config and preprocessor
value is checked before anything is built; non-finite values never pass silently;
memory stays bounded whatever a file asks for; the CLI reports every failure as one line.
(Read-only installs and damaged Numba caches: test_numba_cache.py; the randomised
version of all this, one subprocess per case: test_fuzz.py.)
"""
import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

import tinymvit
from fake_checkpoints import random_checkpoint
from helpers import cli, copy_checkpoint, edit_json
from tinymvit.cli import main
from tinymvit import (CheckpointError, ConfigError, ImageError, InputError, NumericalError,
                      OutputError, limits)
from tinymvit.outputs import atomic_write, printable

SEG_LABELS = {"0": "background", "1": "cat\x1b[2J\x1b[31m", "2": "dog\nfake line"}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "cls": random_checkpoint(root / "cls", "mobilenet_v2", depth_multiplier=0.35,
                                 num_labels=3, id2label=SEG_LABELS),
        "seg": random_checkpoint(root / "seg", "mobilevitv2", task="segmentation",
                                 width_multiplier=0.5, aspp_out_channels=16, output_stride=16,
                                 num_labels=3, id2label=SEG_LABELS),
        "v1": random_checkpoint(root / "v1", "mobilevit", num_labels=3,
                                hidden_sizes=[32, 32, 32], num_attention_heads=2,
                                neck_hidden_sizes=[16, 16, 24, 32, 40, 48, 64]),
    }


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.jpg", "sub/a.png"):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _digest(paths):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def assert_one_line_error(code, err, command, *fragments):
    assert code == 1, err
    assert len(err) == 1, err
    assert err[0].startswith(f"tinymvit {command}: error: "), err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])


# ------------------------------------------------------------------ 1. no input written over
@pytest.mark.parametrize("extra, fragments", [
    (["--out", "{stem}.png"], ["--out for", "which is the input image", "a.png"]),
    (["--overlay", "{stem}.jpg"], ["--overlay for", "b.jpg", "refusing to overwrite"]),
    (["--out", "m-{stem}.png"], ["would both write", "m-a.png"]),           # a.png, sub/a.png
    (["--out", "same.png", "--overlay", "same.png"], ["would both write", "same-a.png"]),
    (["--overlay", "o.xyz"], ["unknown image extension .xyz", ".png"]),
    (["--out", "mask.jpg"], ["ending in .png"]),
])
def test_outputs_never_overwrite_inputs_or_each_other(ckpts, photos, tmp_path, capsys,
                                                      monkeypatch, extra, fragments):
    monkeypatch.chdir(tmp_path)
    before = _digest(photos)
    code, out, err = cli(["segment", "a.png", "b.jpg", "sub/a.png", "--model", ckpts["seg"],
                          *extra], capsys)
    assert_one_line_error(code, err, "segment", *fragments)
    assert out == ""                                    # refused before any model ran
    assert _digest(photos) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.jpg", "sub"]


def test_output_through_a_link_to_an_input_or_a_folder_is_refused(ckpts, photos, tmp_path,
                                                                  capsys):
    os.link(photos[0], tmp_path / "hard.png")
    os.symlink(photos[1], tmp_path / "soft.jpg")
    (tmp_path / "folder.png").mkdir()
    before = _digest(photos)
    for image, flag, name, message in (
            (photos[0], "--out", "hard.png", "refusing to overwrite an input"),
            (photos[1], "--overlay", "soft.jpg", "refusing to overwrite an input"),
            (photos[0], "--out", "folder.png", "is a folder")):
        code, _, err = cli(["segment", image, "--model", ckpts["seg"], flag, tmp_path / name],
                           capsys)
        assert_one_line_error(code, err, "segment", message)
    assert _digest(photos) == before


def test_out_creates_folders_and_writes_are_atomic(ckpts, photos, tmp_path, capsys,
                                                   monkeypatch):
    mask = tmp_path / "new" / "deeper" / "mask.png"
    code, out, err = cli(["segment", photos[0], "--model", ckpts["seg"], "--out", mask], capsys)
    with Image.open(mask) as png:
        assert code == 0 and err == [] and png.size == (90, 70)
    good = mask.read_bytes()

    def full_disk(self, fp, format=None, **kw):        # writes half a file, then ENOSPC
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    code, out, err = cli(["segment", photos[0], "--model", ckpts["seg"], "--out", mask], capsys)
    assert_one_line_error(code, err, "segment", f"cannot write {mask}: No space left on device")
    assert mask.read_bytes() == good                                # the old file, untouched
    assert sorted(p.name for p in mask.parent.iterdir()) == ["mask.png"]   # no temp file left
    with pytest.raises(OutputError, match="No space left"):
        atomic_write(tmp_path / "fresh.png", lambda tmp: Image.new("L", (2, 2)).save(tmp))
    assert not (tmp_path / "fresh.png").exists()


def test_atomic_write_keeps_old_file_on_interrupt_and_keeps_its_mode(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)

    def interrupted(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) == 0o640


def test_convert_never_overwrites_its_source_and_reports_unwritable_places(ckpts, tmp_path,
                                                                           capsys):
    folder = copy_checkpoint(ckpts["cls"], tmp_path)
    before = _digest(sorted(folder.iterdir()))
    src_file = tinymvit.convert(folder, tmp_path / "m.safetensors")
    for src, dst in ((folder, folder / "model.safetensors"), (src_file, src_file)):
        code, _, err = cli(["convert", src, dst], capsys)
        assert_one_line_error(code, err, "convert", "refusing to overwrite an input")
    assert _digest(sorted(folder.iterdir())) == before
    code, _, err = cli(["convert", folder, "/dev/null/x/m.safetensors"], capsys)
    assert_one_line_error(code, err, "convert", "cannot write /dev/null/x/m.safetensors")
    code, _, err = cli(["convert", folder, tmp_path], capsys)
    assert_one_line_error(code, err, "convert", "must end in .safetensors")


# -------------------------------------------------------- 2. every config value checked first
BAD_CONFIGS = [
    ("seg", dict(atrous_rates=[-100000] * 3), "atrous_rates[0] must be an integer from 1"),
    ("seg", dict(atrous_rates=[6, 0, 18]), "atrous_rates[1] must be an integer from 1"),
    ("seg", dict(atrous_rates=[6.0, 12, 18]), "atrous_rates[0] must be an integer"),
    ("seg", dict(atrous_rates=[6, 12]), "atrous_rates must be a list of 3 values"),
    ("seg", dict(model_type=["mobilevitv2"]), "unsupported architecture model_type=['mobilevitv2']"),
    ("seg", dict(expand_ratio=None), "expand_ratio must be a number > 0 and <= 1000, got None"),
    ("seg", dict(layer_norm_eps="x"), "layer_norm_eps must be a finite number > 0, got 'x'"),
    ("seg", dict(layer_norm_eps=0.0), "layer_norm_eps must be a finite number > 0, got 0.0"),
    ("seg", dict(layer_norm_eps=float("nan")), "layer_norm_eps must be a finite number > 0"),
    ("seg", dict(patch_size=100), "patch_size must be at most 16 (the smallest feature map"),
    ("seg", dict(output_stride=32.0), "output_stride must be 8, 16 or 32, got 32.0"),
    ("seg", dict(width_multiplier=float("inf")), "width_multiplier must be a number > 0"),
    ("seg", dict(n_attn_blocks=[2, -1, 3]), "n_attn_blocks[1] must be an integer from 0"),
    ("seg", dict(ffn_multiplier=2.5), "ffn_multiplier must be an integer from 1"),
    ("seg", dict(conv_kernel_size=4), "conv_kernel_size must be an odd integer"),
    ("seg", dict(image_size=10**6), "image_size must be an integer from 1 to 8192"),
    ("seg", dict(num_labels=10**9), "num_labels must be an integer from 1 to 100000"),
    ("seg", dict(id2label={"x": "cat"}), "id2label keys must be class indices"),
    ("seg", dict(hidden_act=["relu"]), "hidden_act must be one of"),
    ("v1", dict(num_attention_heads=0), "num_attention_heads must be an integer from 1"),
    ("v1", dict(num_attention_heads=-2), "num_attention_heads must be an integer from 1"),
    ("v1", dict(num_attention_heads=3), "a divisor of every hidden size"),
    ("v1", dict(hidden_sizes=[32, 32]), "hidden_sizes must be a list of 3 values"),
    ("v1", dict(qkv_bias="yes"), "qkv_bias must be true or false"),
    ("v1", dict(mlp_ratio=0.001), "hidden_sizes[0] * mlp_ratio >= 1"),
    ("cls", dict(depth_divisible_by=0), "depth_divisible_by must be an integer from 1"),
    ("cls", dict(min_depth=0), "min_depth must be an integer from 1"),
    ("cls", dict(depth_multiplier=-1.0), "depth_multiplier must be a number > 0"),
    ("cls", dict(tf_padding=1), "tf_padding must be true or false, got 1"),
]


@pytest.mark.parametrize("name, change, message", BAD_CONFIGS,
                         ids=[f"{n}-{next(iter(c))}" for n, c, _ in BAD_CONFIGS])
def test_bad_config_values_name_file_field_value_and_rule(ckpts, tmp_path, name, change,
                                                           message):
    folder = copy_checkpoint(ckpts[name], tmp_path)
    edit_json(folder / "config.json", **change)
    with pytest.raises(ConfigError) as info:
        tinymvit.load(folder)
    assert str(info.value).startswith(f"{folder / 'config.json'}: "), info.value
    assert message in str(info.value)
    with pytest.raises(ConfigError):                    # convert checks the same way
        tinymvit.convert(folder, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


BAD_PREPROCESSOR = [
    (dict(size={"shortest_edge": 50000}), "size['shortest_edge'] must be a positive integer no "
                                          "larger than 8192"),
    (dict(crop_size=100000), "crop_size['height'] must be a positive integer no larger than"),
    (dict(image_mean=[0.5, float("nan"), 0.5]), "image_mean[1] must be a finite number, got nan"),
    (dict(image_std=[0.5, 0.5, 0.0]), "image_std[2] must be a finite number > 0, got 0.0"),
    (dict(image_std=-1), "image_std[0] must be a finite number > 0"),
    (dict(rescale_factor=float("inf")), "rescale_factor must be a finite number > 0"),
    (dict(rescale_factor=1e300), "outside the float32 range"),
    (dict(image_std=[1e-300] * 3), "outside the float32 range"),
]


@pytest.mark.parametrize("change, message", BAD_PREPROCESSOR)
def test_bad_preprocessor_values_name_file_field_value_and_rule(ckpts, tmp_path, change,
                                                                 message):
    folder = copy_checkpoint(ckpts["cls"], tmp_path)
    edit_json(folder / "preprocessor_config.json", do_normalize=True, **change)
    with pytest.raises(ConfigError) as info:
        tinymvit.load(folder)
    assert str(info.value).startswith(f"{folder / 'preprocessor_config.json'}: "), info.value
    assert message in str(info.value)


def test_a_hostile_config_never_reaches_a_kernel_even_without_asserts(ckpts, tmp_path):
    """The issue's SIGSEGV: negative atrous rates, run under ``python -O`` (no asserts)."""
    folder = copy_checkpoint(ckpts["seg"], tmp_path)
    edit_json(folder / "config.json", atrous_rates=[-100000] * 3)
    code = ("import sys, numpy as np, tinymvit\n"
            "try:\n"
            "    tinymvit.load(sys.argv[1]).segment(np.zeros((64, 64, 3), np.uint8))\n"
            "except tinymvit.ConfigError as e:\n"
            "    print('ConfigError', e)\n")
    res = subprocess.run([sys.executable, "-O", "-c", code, str(folder)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ConfigError") and "atrous_rates[0]" in res.stdout


def test_min_input_size_is_known_for_every_valid_patch_size(ckpts, tmp_path):
    """A patch as large as the config allows: the error names the real minimum (not None)."""
    folder = random_checkpoint(tmp_path / "p", "mobilevitv2", width_multiplier=0.5,
                               patch_size=8, num_labels=3)
    model = tinymvit.load(folder)
    assert model.min_input_size() == 225          # 8x8 patches on the stride-32 map
    with pytest.raises(InputError, match="at least 225 pixels"):
        model(np.zeros((1, 3, 224, 300), np.float32))


# ----------------------------------------------------------- 3. non-finite never passes silently
@pytest.mark.parametrize("tensor, value, message", [
    ("mobilenet_v2.layer.3.conv_3x3.convolution.weight", np.nan, r"holds 1 NaN and 0 infinite"),
    ("classifier.weight", np.inf, r"holds 0 NaN and 1 infinite"),
    ("mobilenet_v2.conv_stem.first_conv.normalization.running_var", -0.5,
     r"holds 1 negative value\(s\).*BatchNorm running variance must be >= 0"),
])
def test_non_finite_weights_and_negative_variances_are_refused(ckpts, tmp_path, capsys,
                                                               tensor, value, message):
    folder = copy_checkpoint(ckpts["cls"], tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors[tensor].reshape(-1)[1] = value
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"tensor '{tensor}' {message}"):
        tinymvit.load(folder)
    code, _, err = cli(["convert", folder, tmp_path / "out.safetensors"], capsys)
    assert_one_line_error(code, err, "convert", tensor)
    assert not (tmp_path / "out.safetensors").exists()


def test_float32_overflow_raises_instead_of_printing_nan(ckpts, tmp_path, capsys):
    folder = copy_checkpoint(ckpts["cls"], tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["classifier.weight"][:] = 3e38                  # finite, but the logits overflow
    save_file(tensors, str(folder / "model.safetensors"))
    model = tinymvit.load(folder)
    image = np.full((40, 40, 3), 200, np.uint8)
    with pytest.raises(NumericalError, match="NaN or infinite"):
        model.classify(image)
    good = tmp_path / "ok.png"
    Image.fromarray(image).save(good)
    code, out, err = cli(["classify", good, good, "--model", folder, "--json"], capsys)
    records = json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert code == 1 and len(records) == 2
    assert all(r["error_type"] == "NumericalError" for r in records)
    assert len(err) == 2 and all(e.startswith("tinymvit classify: error: ") for e in err)


def test_segment_overflow_raises_too(ckpts, tmp_path):
    folder = copy_checkpoint(ckpts["seg"], tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["segmentation_head.classifier.convolution.weight"][:] = 3e38
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(NumericalError, match="NaN or infinite"):
        tinymvit.load(folder).segment(np.full((40, 50, 3), 90, np.uint8))


# ------------------------------------------------------------------------ 4. bounded memory
def test_a_thin_strip_is_refused_before_the_resize_allocates(ckpts, tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (100000, 1)).save(strip)
    assert strip.stat().st_size < 1000
    with pytest.raises(ImageError, match=r"strip.png: image of 100000x1 pixels would be resized "
                                         r".* to 25600000x256 = 6553.6 megapixels, above the limit"):
        tinymvit.load(ckpts["cls"]).classify(str(strip))


def test_images_above_the_pixel_cap_are_refused_before_decoding(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("L", (300, 200)).save(big)
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 300 * 200 - 1)
    for image in (big, np.zeros((200, 300, 3), np.uint8), Image.new("RGB", (300, 200))):
        with pytest.raises(ImageError, match=r"300x200 = 0.1 megapixels, above the limit"):
            tinymvit.load_image(image)


def test_forward_passes_above_the_activation_cap_are_refused(ckpts, monkeypatch):
    model = tinymvit.load(ckpts["cls"])
    need = model.activation_bytes((2, 3, 64, 64))
    monkeypatch.setattr(limits, "MAX_ACTIVATION_BYTES", need - 1)
    with pytest.raises(InputError, match=r"input of 2 image\(s\) of 64x64 is too large"):
        model(np.zeros((2, 3, 64, 64), np.float32))
    assert model(np.zeros((1, 3, 64, 64), np.float32)).logits.shape == (1, 3)


def test_long_lists_run_in_bounded_batches(ckpts, monkeypatch):
    model = tinymvit.load(ckpts["cls"])
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40 + i % 3, 50, 3), dtype=np.uint8) for i in range(23)]
    batches = []
    call = type(model).__call__
    monkeypatch.setattr(type(model), "__call__",
                        lambda self, x, **kw: batches.append(len(x)) or call(self, x, **kw))
    results = model.classify(images, top_k=2, batch_size=5)
    assert batches == [5, 5, 5, 5, 3] and len(results) == 23
    batches.clear()
    one_by_one = [model.classify(im, top_k=2) for im in images[:4]]
    assert [r[0]["index"] for r in results[:4]] == [r[0]["index"] for r in one_by_one]
    # the activation cap makes batches smaller on its own
    monkeypatch.setattr(limits, "MAX_ACTIVATION_BYTES", 2 * model.activation_bytes((1, 3, 224, 224)))
    batches.clear()
    model.classify(images[:5])
    assert batches == [2, 2, 1]
    with pytest.raises(InputError, match="batch_size must be a positive int"):
        model.classify(images, batch_size=0)


def test_segment_lists_and_lazy_iteration_report_each_image(ckpts, tmp_path):
    model = tinymvit.load(ckpts["seg"])
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), str(tmp_path / "missing.png"),
              rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)]
    results = list(model.iter_segment(images))
    assert [type(r).__name__ for _, r in results] == ["ndarray", "ImageError", "ndarray"]
    np.testing.assert_array_equal(results[0][1], model.segment(images[0]))
    assert results[0][1].shape == (60, 80)
    with pytest.raises(ImageError, match="missing.png: image file not found"):
        model.segment(images)
    with pytest.raises(InputError, match=r"iter_segment\(\) takes an iterable.*use segment\(\)"):
        model.iter_segment(str(tmp_path / "one.png"))
    taken = []
    lazy = model.iter_segment(taken.append(i) or images[0] for i in range(100))
    next(lazy)
    assert len(taken) <= 8                              # read one batch at a time


# --------------------------------------------------------------------- 6. one line, always
def _write(path, text):
    path.write_text(text)
    return path


HOSTILE_FILES = {
    "index as a list": lambda f: (f / "model.safetensors").rename(f / "w.safetensors") or _write(
        f / "model.safetensors.index.json", "[1, 2]"),
    "index leading elsewhere": lambda f: (f / "model.safetensors").rename(
        f / "w.safetensors") or _write(f / "model.safetensors.index.json",
                                       json.dumps({"weight_map": {"a": "../../etc/passwd"}})),
    "config not an object": lambda f: _write(f / "config.json", "[]"),
    "deeply nested config": lambda f: _write(f / "config.json", "[" * 100000 + "]" * 100000),
    "NaN image_mean": lambda f: _write(f / "preprocessor_config.json",
                                       '{"image_mean": [NaN, 0.5, 0.5], "do_normalize": true}'),
}


@pytest.mark.parametrize("what", sorted(HOSTILE_FILES))
def test_damaged_checkpoint_files_are_one_line_errors(ckpts, tmp_path, capsys, what):
    folder = copy_checkpoint(ckpts["cls"], tmp_path)
    HOSTILE_FILES[what](folder)
    image = tmp_path / "x.png"
    Image.new("RGB", (30, 30)).save(image)
    code, out, err = cli(["classify", image, "--model", folder], capsys)
    assert_one_line_error(code, err, "classify", str(folder))
    assert out == "" and "Traceback" not in err[0]


def test_damaged_converted_file_metadata_is_a_one_line_error(ckpts, tmp_path, capsys):
    dst = tinymvit.convert(ckpts["cls"], tmp_path / "m.safetensors")
    tensors = load_file(str(dst))
    for key, text in (("config", "{broken"), ("id2label", "[1]"), ("preprocessor_config", "7")):
        from safetensors import safe_open
        with safe_open(str(dst), "np") as f:
            meta = dict(f.metadata())
        meta[key] = text
        bad = tmp_path / f"bad-{key}.safetensors"
        save_file(tensors, str(bad), metadata=meta)
        code, _, err = cli(["info", bad], capsys)
        assert_one_line_error(code, err, "info", f"damaged tinymvit metadata: '{key}'")


@pytest.mark.parametrize("argv, fragment", [
    (["segment", "x.png", "--model", "M", "--alpha", "5"], "--alpha: expected an opacity"),
    (["segment", "x.png", "--model", "M", "--alpha", "nan"], "--alpha: expected an opacity"),
    (["segment", "x.png", "--model", "M", "--size", "99999"], "--size: expected 'native' or"),
    (["classify", "x.png", "--model", "M", "--top-k", "0"], "--top-k: expected a positive"),
    (["classify", "x.png", "--model", "M", "--batch-size", "-3"], "--batch-size: expected"),
    (["classify", "x.png", "--model", "M", "--threads", "zero"], "--threads: expected"),
    (["classify", "x.png"], "the following arguments are required: --model"),
    (["segment", "x.png", "--model", "M", "--out", ""], "--out: expected a file name"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_are_one_line_errors_with_status_1(capsys, argv, fragment):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.splitlines()
    assert info.value.code == 1 and len(err) == 1, err
    assert err[0].startswith("tinymvit") and ": error: " in err[0] and fragment in err[0]


def test_labels_and_paths_print_with_control_characters_escaped(ckpts, tmp_path, capsys):
    image = tmp_path / "evil\x1b[2J.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 40, 3), np.uint8)).save(image)
    code, out, err = cli(["classify", image, image, "--model", ckpts["cls"], "--top-k", "3"],
                         capsys)
    assert code == 0 and err == []
    assert "\x1b" not in out and "\\x1b[2J" in out and "\\x1b[31m" in out
    assert "dog\\nfake line" in out and len(out.splitlines()) == 2 * 4
    code, out, _ = cli(["classify", image, "--model", ckpts["cls"], "--json"], capsys)
    assert json.loads(out)[0]["image"] == str(image)        # JSON escapes on its own
    assert printable("a\u202eb\udcff\x7f") == "a\\u202eb\\udcff\\x7f"


def test_several_images_each_get_a_result_or_an_error(ckpts, photos, tmp_path, capsys):
    code, out, err = cli(["classify", photos[0], tmp_path / "missing.jpg", photos[1],
                          "--model", ckpts["cls"], "--json"], capsys)
    records = json.loads(out)
    assert code == 1 and [("error" in r) for r in records] == [False, True, False]
    assert records[1] == {"image": str(tmp_path / "missing.jpg"), "error_type": "ImageError",
                          "error": f"{tmp_path / 'missing.jpg'}: image file not found"}
    assert err == [f"tinymvit classify: error: {tmp_path / 'missing.jpg'}: image file not found"]
    code, out, err = cli(["segment", photos[0], tmp_path / "missing.jpg", "--model", ckpts["seg"],
                          "--out", tmp_path / "m-{stem}.png"], capsys)
    assert code == 1 and len(err) == 1 and (tmp_path / "m-a.png").exists()
    assert out.startswith(f"{photos[0]} (90x70)")


def test_internal_errors_are_one_line_and_debug_shows_the_traceback(ckpts, photos, capsys,
                                                                    monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(tinymvit.Model, "iter_classify", broken)
    code, _, err = cli(["classify", photos[0], "--model", ckpts["cls"]], capsys)
    assert_one_line_error(code, err, "classify", "internal error (KeyError: 'boom')",
                          "--debug", "TINYMVIT_DEBUG=1")
    code, _, err = cli(["--debug", "classify", photos[0], "--model", ckpts["cls"]], capsys)
    assert code == 1 and err[0] == "Traceback (most recent call last):"
    assert err[-1].startswith("tinymvit classify: error: internal error")
    monkeypatch.setenv("TINYMVIT_DEBUG", "1")
    code, _, err = cli(["classify", photos[0], "--model", ckpts["cls"]], capsys)
    assert "Traceback (most recent call last):" in err


def test_memory_errors_are_one_line(ckpts, photos, capsys, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(tinymvit.api, "read_checkpoint", no_memory, raising=False)
    monkeypatch.setattr(tinymvit.api, "open_checkpoint", no_memory, raising=False)
    code, _, err = cli(["classify", photos[0], "--model", ckpts["cls"]], capsys)
    assert_one_line_error(code, err, "classify", "out of memory")


def test_one_line_from_a_real_process(ckpts, tmp_path):
    """The console script as a user runs it: stderr is exactly one line, exit status 1."""
    folder = copy_checkpoint(ckpts["seg"], tmp_path)
    edit_json(folder / "config.json", atrous_rates=[6, 12.5, 18])
    res = subprocess.run([sys.executable, "-m", "tinymvit", "segment", "x.png", "--model",
                          str(folder)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines() == [
        f"tinymvit segment: error: {folder / 'config.json'}: atrous_rates[1] must be an integer "
        f"from 1 to 8192, got 12.5"]

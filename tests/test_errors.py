"""Every bad input gets a clear error naming what is wrong and what was expected."""
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import tinymvit
from fake_checkpoints import random_checkpoint
from helpers import copy_checkpoint, edit_json
from tinymvit import CheckpointError, ConfigError, InputError


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("good"), "mobilevitv2", width_multiplier=0.5,
                             num_labels=4)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        tinymvit.load(tmp_path / "nope")


def test_folder_without_config(good, tmp_path):
    folder = copy_checkpoint(good, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing config.json"):
        tinymvit.load(folder)


def test_folder_without_weights(good, tmp_path):
    folder = copy_checkpoint(good, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found.*model.safetensors"):
        tinymvit.load(folder)


def test_corrupt_safetensors(good, tmp_path):
    folder = copy_checkpoint(good, tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        tinymvit.load(folder)


def test_truncated_safetensors(good, tmp_path):
    folder = copy_checkpoint(good, tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        tinymvit.load(folder)


def _edit_tensors(folder, edit):
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def test_missing_tensor_named_with_expected_shape(good, tmp_path):
    folder = copy_checkpoint(good, tmp_path)
    name = "mobilevitv2.encoder.layer.3.transformer.layer.1.ffn.conv1.convolution.weight"
    _edit_tensors(folder, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"missing tensor '{name}'.*\(192, 96, 1, 1\)"):
        tinymvit.load(folder)


def test_unexpected_tensor_named(good, tmp_path):
    folder = copy_checkpoint(good, tmp_path)
    _edit_tensors(folder, lambda t: t.update({"mobilevitv2.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*'mobilevitv2.extra.weight' \(3,\)"):
        tinymvit.load(folder)


def test_wrong_shape_named(good, tmp_path):
    folder = copy_checkpoint(good, tmp_path)
    name = "classifier.weight"
    _edit_tensors(folder, lambda t: t.update({name: np.zeros((5, 256), np.float32)}))
    with pytest.raises(CheckpointError, match=r"'classifier.weight' has shape \(5, 256\), "
                                              r"expected \(4, 256\)"):
        tinymvit.load(folder)


def test_wrong_dtype_named(good, tmp_path):
    folder = copy_checkpoint(good, tmp_path)
    name = "mobilevitv2.conv_stem.convolution.weight"
    _edit_tensors(folder, lambda t: t.update({name: t[name].astype(np.float16)}))
    with pytest.raises(CheckpointError, match=rf"'{name}' has dtype float16, expected float32"):
        tinymvit.load(folder)


def test_config_does_not_match_weights(good, tmp_path):
    folder = copy_checkpoint(good, tmp_path)
    edit_json(folder / "config.json", width_multiplier=1.0)
    with pytest.raises(CheckpointError, match="conv_stem.convolution.weight' has shape"):
        tinymvit.load(folder)


def test_unknown_architecture(good, tmp_path):
    folder = copy_checkpoint(good, tmp_path)
    edit_json(folder / "config.json", model_type="resnet")
    with pytest.raises(ConfigError, match="unsupported architecture model_type='resnet'.*mobilevitv2"):
        tinymvit.load(folder)


def test_invalid_config_json(good, tmp_path):
    folder = copy_checkpoint(good, tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        tinymvit.load(folder)


def test_bad_output_stride(good, tmp_path):
    folder = copy_checkpoint(good, tmp_path)
    edit_json(folder / "config.json", output_stride=4)
    with pytest.raises(ConfigError, match="output_stride must be 8, 16 or 32, got 4"):
        tinymvit.load(folder)


def test_future_format_version(good, tmp_path):
    dst = tinymvit.convert(good, tmp_path / "m.safetensors")
    tensors = load_file(str(dst))
    from safetensors import safe_open
    with safe_open(str(dst), "np") as f:
        meta = dict(f.metadata())
    meta["format_version"] = "99"
    save_file(tensors, str(dst), metadata=meta)
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        tinymvit.load(dst)


def test_convert_requires_safetensors_name(good, tmp_path):
    with pytest.raises(CheckpointError, match=r"must end in \.safetensors"):
        tinymvit.convert(good, tmp_path / "model.bin")


def test_bare_safetensors_without_config(good, tmp_path):
    lone = tmp_path / "lone" / "model.safetensors"
    lone.parent.mkdir()
    shutil.copy(good / "model.safetensors", lone)
    with pytest.raises(CheckpointError, match="no tinymvit metadata and there is no config.json"):
        tinymvit.load(lone)


@pytest.mark.parametrize("bad, message", [
    ([[1.0]], "must be a NumPy array"),
    (np.zeros((1, 3, 64, 64), np.uint8), "must be float32, got uint8.*preprocess"),
    (np.zeros((1, 3, 64, 64), np.float64), "must be float32, got float64"),
    (np.zeros((3, 64, 64), np.float32), r"shape \(N, 3, H, W\).*add a batch axis"),
    (np.zeros((1, 64, 64, 3), np.float32), "channels-last"),
    (np.full((1, 3, 64, 64), np.nan, np.float32), "NaN"),
])
def test_bad_pixel_values(good, bad, message):
    model = tinymvit.load(good)
    with pytest.raises(InputError, match=message):
        model(bad)


def test_too_small_input(good):
    model = tinymvit.load(good)
    assert model.min_input_size() == 33
    with pytest.raises(InputError, match="32x40 is too small.*at least 33 pixels"):
        model(np.zeros((1, 3, 32, 40), np.float32))
    assert model(np.zeros((1, 3, 33, 33), np.float32)).logits.shape == (1, 4)


def test_unreadable_image(good, tmp_path):
    model = tinymvit.load(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="broken.jpg"):
        model.classify(str(bad))
    with pytest.raises(ValueError, match="missing.png"):
        model.classify(str(tmp_path / "missing.png"))


def test_wrong_task(good, tmp_path):
    model = tinymvit.load(good)
    with pytest.raises(InputError, match="segment\\(\\) needs a semantic-segmentation"):
        model.segment(np.zeros((40, 40, 3), np.uint8))
    seg = tinymvit.load(random_checkpoint(tmp_path / "seg", "mobilenet_v2", task="segmentation",
                                          depth_multiplier=0.35, num_labels=3))
    with pytest.raises(InputError, match="classify\\(\\) needs an image-classification"):
        seg.classify(np.zeros((40, 40, 3), np.uint8))


def test_bad_preprocessor_config_fails_at_load(tmp_path):
    folder = random_checkpoint(tmp_path / "pp", "mobilenet_v2", depth_multiplier=0.35,
                               preprocessor={"resample": 99})
    with pytest.raises(ConfigError, match="resample must be a PIL filter number.*got 99"):
        tinymvit.load(folder)


def test_unsupported_hidden_act(good, tmp_path):
    folder = copy_checkpoint(good, tmp_path)
    edit_json(folder / "config.json", hidden_act="swiglu")
    with pytest.raises(ConfigError, match="config.json: hidden_act must be one of .*relu6.*got 'swiglu'"):
        tinymvit.load(folder)

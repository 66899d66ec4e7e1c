"""The ``tinymvit`` command line, run in-process (and once as a real console script)."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tinymvit
from tinymvit.cli import main

CLS = "mobilenet_v2_1.0_224-coral-qat"
SEG = "deeplabv3_mobilenet_v2_1.0_513-coral-os16"


def run(argv):
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue()


def test_classify_text_and_json(shared_checkpoint, shared_dir):
    model = str(shared_checkpoint(CLS))
    bird = str(shared_dir / "images" / "coral_bird.bmp")
    code, text = run(["classify", bird, "--model", model, "--top-k", "3"])
    assert code == 0
    lines = text.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("chickadee (") and lines[0].endswith("%)")
    code, text = run(["classify", bird, str(shared_dir / "images" / "coral_parrot.jpg"),
                      "--model", model, "--json"])
    data = json.loads(text)
    assert [d["image"] for d in data] == [bird, str(shared_dir / "images" / "coral_parrot.jpg")]
    assert data[0]["predictions"][0]["label"] == "chickadee"
    assert len(data[1]["predictions"]) == 5
    scores = [p["score"] for p in data[1]["predictions"]]
    assert scores == sorted(scores, reverse=True) and 0.5 < scores[0] <= 1


def test_convert_then_classify(shared_checkpoint, shared_dir, tmp_path):
    dst = tmp_path / "mnv2.safetensors"
    code, text = run(["convert", str(shared_checkpoint(CLS)), str(dst)])
    assert code == 0 and dst.exists()
    code, text = run(["classify", str(shared_dir / "images" / "coral_bird.bmp"), "--model",
                      str(dst), "--top-k", "1"])
    assert text.startswith("chickadee (")


def test_segment_writes_mask_and_overlay(shared_checkpoint, shared_dir, tmp_path):
    image = shared_dir / "images" / "coral_bird_segmentation.bmp"
    mask, over = tmp_path / "mask.png", tmp_path / "overlay.png"
    code, text = run(["segment", str(image), "--model", str(shared_checkpoint(SEG)),
                      "--out", str(mask), "--overlay", str(over), "--json"])
    assert code == 0
    record = json.loads(text)[0]
    labels = tinymvit.load(shared_checkpoint(SEG)).segment(str(image))
    png = Image.open(mask)
    assert png.mode == "P" and png.size == Image.open(image).size
    np.testing.assert_array_equal(np.array(png), labels)
    assert Image.open(over).size[0] == png.size[0]
    names = {c["label"]: c["fraction"] for c in record["classes"]}
    assert "bird" in names and abs(sum(names.values()) - 1) < 1e-6
    assert abs(names["bird"] - (labels == 3).mean()) < 1e-9


def test_segment_several_images_names_outputs(shared_checkpoint, shared_dir, tmp_path):
    images = [shared_dir / "images" / "coral_bird_segmentation.bmp",
              shared_dir / "images" / "coral_dog_segmentation.bmp"]
    code, text = run(["segment", *map(str, images), "--model", str(shared_checkpoint(SEG)),
                      "--out", str(tmp_path / "m.png")])
    assert code == 0
    assert (tmp_path / "m-coral_bird_segmentation.png").exists()
    assert (tmp_path / "m-coral_dog_segmentation.png").exists()
    assert "bird" in text and "%" in text


def test_errors_are_one_line_messages(tmp_path, capsys):
    code, _ = run(["classify", "x.jpg", "--model", str(tmp_path / "nothing")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("tinymvit classify: error: no such checkpoint") and "Traceback" not in err


def test_console_script_and_module(shared_checkpoint, shared_dir):
    exe = Path(sys.executable).with_name("tinymvit")
    bird = str(shared_dir / "images" / "coral_bird.bmp")
    env = dict(os.environ)
    for cmd in ([str(exe)], [sys.executable, "-m", "tinymvit"]):
        if cmd[0] == str(exe) and not exe.exists():
            pytest.fail("console script 'tinymvit' not installed next to the interpreter")
        res = subprocess.run(cmd + ["classify", bird, "--model", str(shared_checkpoint(CLS)),
                                    "--top-k", "1"], capture_output=True, text=True, env=env,
                             timeout=600)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("chickadee (")

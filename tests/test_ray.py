"""tinymvit.ray: the map_batches callables on Ray's batch formats (no Ray needed), and the
whole pipeline on a local Ray instance (ray.init(num_cpus=2)): every record equals the serial one.

One module-scoped Ray instance serves the Ray tests (starting one takes 6-10 s here).
"""
import json
import os

import numpy as np
import pytest

import tinymvit
import tinymvit.ray as tray
from fake_checkpoints import random_checkpoint
from tinymvit.predict import predict

try:
    import ray
    import ray.data
except ImportError:
    ray = None

CLS = "mobilenet_v2_1.0_224-coral-qat"
SEG = "deeplabv3_mobilenet_v2_1.0_513-coral-os16"


@pytest.fixture(scope="module")
def local_ray():
    if ray is None:
        if os.environ.get("CI", "").lower() == "true":      # the test extra installs ray[data]
            pytest.fail("ray[data] is not installed (CI=true: pip install -e '.[test]' installs "
                        "it)", pytrace=False)
        pytest.skip("Ray Data is not installed (pip install 'tinymvit[ray]')")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(shared_images, tmp_path_factory):
    """The shared images, plus a corrupt file and a missing one (reported, not fatal)."""
    bad = tmp_path_factory.mktemp("bad") / "truncated.jpg"
    bad.write_bytes(shared_images[0].read_bytes()[:0] + b"\xff\xd8\xff\xe0 not really")
    return [str(p) for p in shared_images] + [str(bad), str(bad.parent / "missing.png")]


def _column(values):
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def test_classifier_callable_without_ray(shared_checkpoint, shared_images):
    """The three batch formats, a corrupt image among them, called directly."""
    folder = str(shared_checkpoint(CLS))
    model = tinymvit.load(folder)
    classifier = tray.Classifier(folder, top_k=2, num_threads=1)
    assert tray.actor_cpus() is None and classifier.model.num_threads == 1
    paths = [str(p) for p in shared_images[:3]]
    data = [open(p, "rb").read() for p in paths]
    batches = {"bytes": {"bytes": _column(data + [b"junk"]), "path": np.array(paths + ["x.jpg"])},
               "image": {"image": _column([tinymvit.load_image(p) for p in paths]),
                         "path": np.array(paths)},
               "path": {"path": np.array(paths)}}
    for kind, batch in batches.items():
        out = classifier(batch)
        for i, path in enumerate(paths):
            want = model.classify(path, top_k=2)
            assert out["path"][i] == path and out["error"][i] == "", kind
            assert json.loads(out["record"][i]) == {"path": path, "predictions": want}
            assert out["labels"][i] == [p["label"] for p in want]
            assert out["indices"][i].tolist() == [p["index"] for p in want]
            assert out["scores"][i].tolist() == [p["score"] for p in want]
            assert (out["label"][i], out["index"][i]) == (want[0]["label"], want[0]["index"])
    out = classifier(batches["bytes"])
    assert "x.jpg: not an image file" in out["error"][3] and out["index"][3] == -1
    assert np.isnan(out["score"][3]) and out["labels"][3] == ["", ""]
    with pytest.raises(tinymvit.InputError, match="expected 'image'"):
        classifier({"text": np.array(["a"])})
    with pytest.raises(tinymvit.InputError, match="classification checkpoint; expected a segm"):
        tray.Segmenter(folder)


def test_segmenter_callable_without_ray(tmp_path, shared_images):
    folder = random_checkpoint(tmp_path / "seg", "mobilenet_v2", task="segmentation",
                               depth_multiplier=0.35, num_labels=4)
    model = tinymvit.load(folder)
    paths = [str(p) for p in shared_images[:2]]
    out = tray.Segmenter(str(folder), return_masks=True)({"path": np.array(paths)})
    for i, path in enumerate(paths):
        labels = model.segment(path)
        np.testing.assert_array_equal(out["mask"][i], labels)
        assert (out["height"][i], out["width"][i]) == labels.shape
        np.testing.assert_array_equal(out["fractions"][i],
                                      np.bincount(labels.ravel(), minlength=4) / labels.size)
        assert json.loads(out["record"][i])["fractions"] == pytest.approx(
            {model.id2label[c]: f for c, f in enumerate(out["fractions"][i]) if f})


def test_classify_on_ray_equals_serial(local_ray, shared_checkpoint, inputs):
    folder = shared_checkpoint(CLS)
    records = list(tray.classify(str(folder), inputs, top_k=5, quiet=True))
    assert sorted(r["path"] for r in records) == sorted(inputs)      # each exactly once
    model = tinymvit.load(folder)
    serial = {r.record["path"]: r.record for r in predict(model, inputs, top_k=5, batch_size=4)}
    by_path = {r["path"]: r for r in records}
    assert by_path == serial
    for path in inputs[:-2]:
        assert by_path[path] == {"path": path, "predictions": model.classify(path, top_k=5)}
    assert "error" in by_path[inputs[-2]] and "error" in by_path[inputs[-1]]
    assert "not found" in by_path[inputs[-1]]["error"]


def test_classifier_columns_for_ray_batch_formats(local_ray, shared_checkpoint, shared_images):
    """read_images (decoded arrays + paths) and read_binary_files (bytes + paths) both work."""
    folder = str(shared_checkpoint(CLS))
    model = tinymvit.load(folder)
    paths = [str(p) for p in shared_images[:4]]
    datasets = {"bytes": ray.data.read_binary_files(paths, include_paths=True),
                "image": ray.data.read_images(paths, include_paths=True, mode="RGB")}
    for column, ds in datasets.items():
        rows = ds.map_batches(tray.Classifier, fn_constructor_kwargs={"model": folder, "top_k": 3},
                              batch_size=1, num_cpus=1, batch_format="numpy",
                              compute=ray.data.ActorPoolStrategy(size=1)).take_all()
        assert len(rows) == len(paths), column
        for row in rows:
            want = model.classify(row["path"], top_k=3)
            assert row["error"] == "" and list(row["indices"]) == [p["index"] for p in want]
            assert list(row["labels"]) == [p["label"] for p in want], column
            np.testing.assert_array_equal(row["scores"], [p["score"] for p in want])
            assert (row["label"], int(row["index"])) == (want[0]["label"], want[0]["index"])
            assert json.loads(row["record"]) == {"path": row["path"], "predictions": want}


def test_segment_on_ray_equals_serial(local_ray, shared_checkpoint, shared_dir):
    folder = shared_checkpoint(SEG)
    paths = [str(shared_dir / "images" / n) for n in ("coral_dog_segmentation.bmp",
                                                      "skimage_horse.png")]
    model = tinymvit.load(folder)
    got = {r["path"]: (r, m) for r, m in tray.segment(str(folder), paths, return_masks=True,
                                                       quiet=True)}
    assert sorted(got) == sorted(paths)
    for record, labels, *_ in predict(model, paths):
        ray_record, mask = got[record["path"]]
        assert ray_record == record
        np.testing.assert_array_equal(mask, labels)
        assert sum(record["fractions"].values()) == pytest.approx(1.0)


def test_bad_model_fails_before_the_job(local_ray, shared_checkpoint, tmp_path):
    paths = [str(tmp_path / "a.jpg")]
    with pytest.raises(tinymvit.CheckpointError, match="no such checkpoint"):
        list(tray.classify(str(tmp_path / "nope"), paths, quiet=True))
    with pytest.raises(tinymvit.InputError, match="classification checkpoint; expected a segm"):
        list(tray.segment(str(shared_checkpoint(CLS)), paths, quiet=True))


def test_cli_ray_jsonl_equals_the_serial_cli_and_resumes(local_ray, shared_checkpoint, inputs,
                                                         tmp_path, capsys):
    """`tinymvit classify ... --ray` writes the serial command's JSONL records (in completion
    order), and --resume on Ray adds exactly the missing ones."""
    from tinymvit.cli import main
    argv = ["classify", *inputs, "--model", str(shared_checkpoint(CLS)), "--top-k", "3", "-q"]
    serial, on_ray, resumed = (tmp_path / f"{n}.jsonl" for n in ("serial", "ray", "resumed"))
    assert main(argv + ["--jsonl", str(serial)]) == 1            # the corrupt and missing files
    assert main(argv + ["--jsonl", str(on_ray), "--ray"]) == 1
    lines = serial.read_text().splitlines(keepends=True)
    assert sorted(on_ray.read_text().splitlines(keepends=True)) == sorted(lines)
    resumed.write_text("".join(lines[:7]) + lines[7][:20])        # stopped mid-line
    assert main(argv + ["--jsonl", str(resumed), "--ray", "--resume"]) == 1
    assert sorted(resumed.read_text().splitlines(keepends=True)) == sorted(lines)
    err = capsys.readouterr().err
    assert f"{resumed}: removed a half-written last line (20 bytes)" in err

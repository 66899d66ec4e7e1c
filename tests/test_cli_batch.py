"""Batch jobs on the command line (issue 8): folders, globs and stdin in; text, JSON or a JSONL
log that survives SIGKILL / Ctrl-C / a half-written line and resumes with every image exactly
once; --strict; exit statuses; segment --out-dir mirroring; eval and bench wiring.

Random small checkpoints (tests/fake_checkpoints.py) keep most of it fast; the real MobileNetV2
checkpoint checks that JSONL records equal single-image ``classify``.
"""
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path, PurePath

import numpy as np
import pytest
from PIL import Image

import tinymvit
from fake_checkpoints import random_checkpoint
from helpers import cli
from tinymvit.cli import main
from tinymvit.jobs import expand_inputs

CLS = "mobilenet_v2_1.0_224-coral-qat"
LABELS = {str(i): name for i, name in enumerate(["sky", "tree", "road", "cat", "car"])}
SMALL = dict(depth_multiplier=0.35, num_labels=5, image_size=64, id2label=LABELS)
PRE = {"crop_size": {"height": 64, "width": 64}, "size": {"shortest_edge": 72}}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {"cls": random_checkpoint(root / "cls", "mobilenet_v2", preprocessor=PRE, **SMALL),
            "seg": random_checkpoint(root / "seg", "mobilenet_v2", task="segmentation",
                                     preprocessor=PRE, output_stride=16, **SMALL)}


def _photo(path, seed, size=(50, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """photos/{a.png, b.jpg, broken.jpg, notes.txt, sub/c.png, sub/deeper/d.bmp, .hidden.png,
    empty/}"""
    monkeypatch.chdir(tmp_path)
    root = Path("photos")
    for seed, name in enumerate(["a.png", "b.jpg", "sub/c.png", "sub/deeper/d.bmp",
                                 ".hidden.png"]):
        _photo(root / name, seed)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    return root


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ------------------------------------------------------------------------------- inputs
def test_folders_globs_and_stdin(tree, monkeypatch):
    flat = ["photos/a.png", "photos/b.jpg", "photos/broken.jpg"]
    deep = flat + ["photos/sub/c.png", "photos/sub/deeper/d.bmp"]
    paths = lambda specs, **kw: [i.path for i in expand_inputs(specs, **kw)[0]]   # noqa: E731
    assert paths(["photos"]) == flat                         # images only, no hidden files
    assert paths(["photos/"], recursive=True) == deep
    assert paths(["./photos"])[0] == "./photos/a.png"        # spelled as the user wrote it
    assert paths(["photos/**/*.png"]) == ["photos/a.png", "photos/sub/c.png"]
    assert paths(["photos/s*"]) == ["photos/sub/c.png"]      # a matched folder is a folder
    assert paths(["-", "photos/b.jpg"], stdin=io.StringIO("photos/a.png\n\nx y.jpg\r\n")) == [
        "photos/a.png", "x y.jpg", "photos/b.jpg"]           # a missing file fails later
    inputs, problems = expand_inputs(["nothing/*.jpg", "photos/empty", "photos/a.png"])
    assert problems == [("error", "nothing/*.jpg: no image file matches this pattern"),
                        ("warning", "photos/empty: no images in this folder (--recursive to "
                                    "search subfolders) (looked for .jpg .jpeg .png .bmp .gif "
                                    ".ppm .pgm .tif .tiff .webp)")]
    # where --out-dir puts each one: below the folder given, below the pattern's fixed part,
    # below the common folder of files given one by one
    rels = {i.path: i.rel for i in expand_inputs(["photos", "photos/sub/**/*.bmp"],
                                                 recursive=True)[0]}
    assert rels["photos/sub/deeper/d.bmp"] in (PurePath("sub/deeper/d.bmp"),
                                               PurePath("deeper/d.bmp"))
    assert rels["photos/sub/c.png"] == PurePath("sub/c.png")
    files = expand_inputs(["photos/sub/c.png", "photos/sub/deeper/d.bmp"])[0]
    assert [i.rel for i in files] == [PurePath("c.png"), PurePath("deeper/d.bmp")]



def test_folder_runs_print_text_json_and_exit_statuses(tree, ckpts, capsys, monkeypatch):
    model = tinymvit.load(ckpts["cls"])
    code, out, err = cli(["classify", "photos", "--model", ckpts["cls"], "--top-k", "2"], capsys)
    assert code == 1                                         # broken.jpg failed, others ran
    assert err == ["tinymvit classify: error: photos/broken.jpg: not an image file Pillow can "
                   "read (expected JPEG, PNG, BMP, GIF, TIFF, WebP, ...)"]
    a = model.classify("photos/a.png", top_k=2)
    assert out.splitlines()[:3] == ["photos/a.png"] + [
        f"  {p['label']} ({100 * p['score']:.1f}%)" for p in a]
    code, out, err = cli(["classify", "-", "--model", ckpts["cls"], "--json"], capsys,
                         stdin="photos/a.png\nphotos/sub/c.png\n", monkeypatch=monkeypatch)
    assert code == 0 and err == []
    assert json.loads(out) == [{"image": p, "predictions": model.classify(p)}
                               for p in ("photos/a.png", "photos/sub/c.png")]
    code, out, err = cli(["classify", "photos/empty", "--model", ckpts["cls"]], capsys)
    assert code == 0 and out == "" and err[0].startswith("tinymvit classify: warning: photos/em")
    code, out, err = cli(["classify", "photos/a.png", "x/*.png", "--model", ckpts["cls"]],
                         capsys)
    assert code == 1 and err == ["tinymvit classify: error: x/*.png: no image file matches this "
                                 "pattern"]
    assert out.splitlines()[0] == "photos/a.png"


# ------------------------------------------------------------------------ JSONL records
def test_jsonl_records_equal_single_image_classify(shared_checkpoint, shared_images, tmp_path,
                                                   capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, image in enumerate(shared_images):
        link = Path("data") / ("sub" if i % 3 else ".") / image.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(image)
    Path("data/sub/truncated.png").write_bytes(shared_images[0].read_bytes()[:300])
    model_dir = shared_checkpoint(CLS)
    code, out, err = cli(["classify", "data", "-r", "--model", model_dir, "--jsonl", "out.jsonl",
                          "--batch-size", "4"], capsys)
    assert code == 1 and out == ""
    records = _lines("out.jsonl")
    paths = [str(p) for p in tinymvit.batching.find_images("data")]
    assert [r["path"] for r in records] == paths             # every image once, in order
    model = tinymvit.load(model_dir)
    for record in records:
        if record["path"].endswith("truncated.png"):
            assert set(record) == {"path", "error"}
            assert record["error"].startswith("data/sub/truncated.png: ")
            assert f"tinymvit classify: error: {record['error']}" in err
            continue
        assert record == {"path": record["path"],
                          "predictions": model.classify(record["path"], top_k=5)}
    assert err[-1].startswith(f"tinymvit classify: {len(paths)} images in ")
    assert err[-1].endswith("1 failed; records in out.jsonl")
    single = records[1]["path"]                         # = the single-image command's JSON
    code, out, _ = cli(["classify", single, "--model", model_dir, "--json"], capsys)
    assert json.loads(out)[0]["predictions"] == records[1]["predictions"]


def test_jsonl_is_never_written_over_and_refuses_foreign_files(tree, ckpts, capsys):
    log = Path("out.jsonl")
    log.write_text('{"path": "photos/a.png", "predictions": []}\n')
    before = log.read_bytes()
    for extra, message in (
            ([], "already exists and holds records; pass --resume"),
            (["--resume", "--jsonl", "photos/a.png"], "--jsonl would write photos/a.png, which "
                                                      "is the input image photos/a.png"),
            (["--resume", "--jsonl", "-"], "--resume needs --jsonl FILE")):
        argv = ["classify", "photos", "--model", ckpts["cls"], "--jsonl", log, *extra]
        code, out, err = cli(argv, capsys)
        assert code == 1 and len(err) == 1 and message in err[0], err
    assert log.read_bytes() == before
    for text, message in (('{"path": "x", "error": "e"}\nnot json\n', "out.jsonl:2: not JSON"),
                          ('{"path": "x", "fractions": {}}\n', "written by another tinymvit "
                                                               "command")):
        log.write_text(text)
        code, _, err = cli(["classify", "photos", "--model", ckpts["cls"], "--jsonl", log,
                            "--resume"], capsys)
        assert code == 1 and message in err[0] and log.read_text() == text


def test_half_written_last_line_is_redone(tree, ckpts, capsys):
    argv = ["classify", "photos", "-r", "--model", ckpts["cls"]]
    cli(argv + ["--jsonl", "full.jsonl"], capsys)
    full = Path("full.jsonl").read_text()
    lines = full.splitlines(keepends=True)
    Path("part.jsonl").write_text("".join(lines[:2]) + lines[2][:25])     # killed mid-write
    code, _, err = cli(argv + ["--jsonl", "part.jsonl", "--resume"], capsys)
    assert code == 1                                          # broken.jpg, again
    assert err[0] == ("tinymvit classify: part.jsonl: removed a half-written last line (25 "
                      "bytes); its image is done again")
    assert err[1] == "tinymvit classify: resuming part.jsonl: 2 images already recorded, 3 to do"
    assert Path("part.jsonl").read_text() == full
    code, _, err = cli(argv + ["--jsonl", "part.jsonl", "--resume", "-q"], capsys)
    assert code == 0 and err == [] and Path("part.jsonl").read_text() == full   # nothing to do


def test_strict_stops_at_the_first_failure(tree, ckpts, capsys):
    argv = ["classify", "photos", "--model", ckpts["cls"], "--jsonl", "s.jsonl", "--batch-size",
            "1", "--strict"]
    code, out, err = cli(argv, capsys)
    assert code == 1 and err == ["tinymvit classify: error: photos/broken.jpg: not an image file "
                                 "Pillow can read (expected JPEG, PNG, BMP, GIF, TIFF, WebP, ...)"]
    assert [r["path"] for r in _lines("s.jsonl")] == ["photos/a.png", "photos/b.jpg"]
    _photo(Path("photos/broken.jpg"), 9)                      # fixed: --resume goes on from it
    code, _, err = cli(argv + ["--resume", "-q"], capsys)
    assert code == 0 and err == []
    assert [r["path"] for r in _lines("s.jsonl")] == ["photos/a.png", "photos/b.jpg",
                                                      "photos/broken.jpg"]
    code, _, err = cli(["classify", "x/*.png", "photos/a.png", "--model", ckpts["cls"],
                        "--strict"], capsys)
    assert code == 1 and len(err) == 1                        # stopped before any image ran


# ------------------------------------------------------------- killed part-way, resumed
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal
    import tinymvit.predict as predict
    real = predict.predict_batch
    def slow(*args, **kwargs):                                 # one image every 0.15 s
        time.sleep(0.15)
        return real(*args, **kwargs)
    predict.predict_batch = slow
    from tinymvit.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _start_and_stop(argv, log, lines, how):
    """Run the CLI in a child process; send ``how`` once ``log`` has ``lines`` lines."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, *map(str, argv)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if log.exists() and log.read_text().count("\n") >= lines:
            break
        time.sleep(0.01)
    assert child.poll() is None, child.communicate()
    child.send_signal(how)
    _, err = child.communicate(timeout=120)
    return child.returncode, err.splitlines()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_a_run_stopped_part_way_resumes_with_every_image_once(tmp_path, ckpts, capsys,
                                                              monkeypatch, how):
    monkeypatch.chdir(tmp_path)
    for i in range(12):
        _photo(Path("in") / f"{i:02d}.png", i, size=(40 + i, 30))
    (Path("in") / "05.png").write_bytes(b"\x89PNG broken")
    argv = ["classify", "in", "--model", ckpts["cls"], "--batch-size", "1", "--top-k", "3"]
    cli(argv + ["--jsonl", "whole.jsonl"], capsys)                 # never stopped
    log = tmp_path / "stopped.jsonl"
    code, err = _start_and_stop(argv + ["--jsonl", log], log, 4, how)
    done = log.read_text().count("\n")
    assert 4 <= done < 12
    if how == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == (130 if how == signal.SIGINT else 143)
        word = "interrupted" if how == signal.SIGINT else "terminated"
        assert err[-1].startswith(f"tinymvit classify: {word} after ")
        assert err[-1].endswith(f"{log} holds every finished one: run the same command with "
                                f"--resume to go on")
    code, _, err = cli(argv + ["--jsonl", log, "--resume"], capsys)
    assert code == 1                                                # 05.png is broken
    assert f"resuming {log}: {done} images already recorded, {12 - done} to do" in err[0]
    assert log.read_text() == Path("whole.jsonl").read_text()      # each once, same records
    paths = [r["path"] for r in _lines(log)]
    assert sorted(paths) == sorted(set(paths)) and len(paths) == 12


# ------------------------------------------------------------------------------ segment
def test_segment_out_dir_mirrors_the_input_tree(tree, ckpts, capsys):
    model = tinymvit.load(ckpts["seg"])
    code, out, err = cli(["segment", "photos", "-r", "--model", ckpts["seg"], "--out-dir",
                          "masks", "--overlay-dir", "over", "--jsonl", "seg.jsonl", "-q"], capsys)
    assert code == 1 and len(err) == 1 and "broken.jpg" in err[0]
    records = {r["path"]: r for r in _lines("seg.jsonl")}
    for path, mask, over in (("photos/a.png", "masks/a.png", "over/a.png"),
                             ("photos/b.jpg", "masks/b.png", "over/b.jpg"),
                             ("photos/sub/deeper/d.bmp", "masks/sub/deeper/d.png",
                              "over/sub/deeper/d.bmp")):
        labels = model.segment(path)
        np.testing.assert_array_equal(np.array(Image.open(mask)), labels)
        assert Image.open(over).size == Image.open(path).size
        counts = np.bincount(labels.ravel(), minlength=5) / labels.size
        assert records[path] == {"path": path, "width": 50, "height": 40,
                                 "fractions": {LABELS[str(i)]: counts[i] for i in
                                               sorted(np.flatnonzero(counts),
                                                      key=lambda i: -counts[i])},
                                 "mask": mask, "overlay": over}
    assert records["photos/broken.jpg"].keys() == {"path", "error"}
    code, out, err = cli(["segment", "photos/a.png", "--model", ckpts["seg"], "--jsonl", "-"],
                         capsys)
    assert code == 0 and json.loads(out)["mask"] is None and err == []
    before = Path("photos/sub/c.png").read_bytes()
    code, _, err = cli(["segment", "photos/sub", "--model", ckpts["seg"], "--overlay-dir",
                        "photos"], capsys)                         # c.png -> photos/c.png: ok
    assert code == 0
    code, _, err = cli(["segment", "photos/sub", "--model", ckpts["seg"], "--out-dir",
                        "photos/sub"], capsys)
    assert code == 1 and err == ["tinymvit segment: error: --out-dir for photos/sub/c.png would "
                                 "write photos/sub/c.png, which is the input image "
                                 "photos/sub/c.png; refusing to overwrite an input"]
    assert Path("photos/sub/c.png").read_bytes() == before


# -------------------------------------------------------------------------- eval, bench
def test_eval_prints_the_numbers_of_evaluate(tmp_path, ckpts, capsys):
    from tinymvit.evaluate import evaluate
    for i, label in enumerate(["sky", "tree", "3", "cat"]):
        for j in range(2):
            _photo(tmp_path / "val" / label / f"{j}.png", 10 * i + j)
    want = evaluate(tinymvit.load(ckpts["cls"]), tmp_path / "val")
    code, out, err = cli(["eval", tmp_path / "val", "--model", ckpts["cls"], "--json"], capsys)
    got = json.loads(out)
    assert code == 0 and err == []
    for key in ("task", "images", "top1", "top5", "classes", "worst_classes", "per_class"):
        assert got[key] == want[key], key
    assert got["images"] == 8 and got["images_per_second"] > 0
    code, out, err = cli(["eval", tmp_path / "val", "--model", ckpts["cls"], "--worst", "2"],
                         capsys)
    lines = out.splitlines()
    assert lines[0].startswith(f"classification on {tmp_path / 'val'} (ImageFolder): 8 images, "
                               f"0 failed, ")
    assert lines[1] == f"  top-1  {100 * want['top1']:5.1f}%"
    assert lines[2] == f"  top-5  {100 * want['top5']:5.1f}%"
    assert len(lines) == 4 + 2
    worst = want["worst_classes"][0]
    assert lines[4].split() == [f"{100 * worst['top1']:.1f}%", f"{100 * worst['top5']:.1f}%",
                                "2", *worst["label"].split()] + (
        ["(folder", f"{worst['name']})"] if worst["name"] != worst["label"] else [])

    voc = tmp_path / "voc"
    _photo(voc / "JPEGImages" / "x.jpg", 1, size=(60, 45))
    mask = np.zeros((45, 60), np.uint8)
    mask[10:30, 20:50], mask[0, :] = 3, 255
    (voc / "SegmentationClass").mkdir()
    Image.fromarray(mask).save(voc / "SegmentationClass" / "x.png")
    (voc / "SegmentationClass" / "orphan.png").write_bytes(b"")
    seg = tinymvit.load(ckpts["seg"])
    for mode in ("whole", "processor"):
        want = evaluate(seg, voc, mode=mode)
        code, out, err = cli(["eval", voc, "--model", ckpts["seg"], "--mode", mode, "--json"],
                             capsys)
        got = json.loads(out)
        assert code == 0 and err == [f"tinymvit eval: warning: {voc / 'SegmentationClass'}"
                                     f"/orphan.png: no image of the same name in JPEGImages/"]
        for key in ("miou", "pixel_accuracy", "mean_accuracy", "per_class", "mode", "images"):
            assert got[key] == want[key], key
    code, out, _ = cli(["eval", voc, "--model", ckpts["seg"]], capsys)
    assert f"  mIoU            {100 * evaluate(seg, voc)['miou']:5.1f}%  (mode whole)" in out
    code, _, err = cli(["eval", voc, "--model", ckpts["cls"]], capsys)
    assert code == 1 and "is a segmentation dataset (VOC layout) but the checkpoint is a " \
                         "classification model" in err[0]


def test_bench_reports_latency_throughput_first_call_and_memory(ckpts, capsys):
    code, out, err = cli(["bench", "--model", ckpts["cls"], "--batch-size", "2", "--threads",
                          "1", "--seconds", "0.2", "--json"], capsys)
    r = json.loads(out)
    assert code == 0 and err == []
    assert r["input_shape"] == [2, 3, 64, 64] and r["threads"] == 1 and r["calls"] >= 5
    lat = r["latency_ms"]
    assert 0 < lat["min"] <= lat["p10"] <= lat["median"] <= lat["p90"]
    assert r["images_per_second"] == pytest.approx(2000 / lat["median"])
    assert r["first_call_seconds"] > 0 and r["load_seconds"] > 0
    assert r["peak_memory_bytes"] > 50 * 2 ** 20 and r["peak_memory_source"] == "VmHWM"
    code, out, _ = cli(["bench", "--model", ckpts["seg"], "--size", "100", "--seconds", "0.1"],
                       capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].endswith(": mobilenet_v2 segmentation")
    assert lines[1].startswith("  input        1x3x97x97, ")          # 16k+1, as segment()
    assert [line.split()[0] for line in lines[2:]] == ["load", "first", "latency", "throughput",
                                                       "peak"]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal_and_not_with_quiet(tree, ckpts, monkeypatch):
    argv = ["classify", "photos", "-r", "--model", str(ckpts["cls"]), "--jsonl"]
    for n, (extra, bar) in enumerate([([], True), (["--quiet"], False)]):
        monkeypatch.setattr(sys, "stderr", _Terminal())
        main(argv + [f"p{n}.jsonl", *extra], out=io.StringIO())
        err = sys.stderr.getvalue()
        assert ("5/5 [" in err and "img/s]" in err) == bar, err      # count, rate (and ETA)
        assert "photos/broken.jpg: not an image file" in err             # errors always
        assert ("records in" in err) == (not extra)                     # the summary line
    monkeypatch.setattr(sys, "stderr", io.StringIO())                     # a log file: no bar
    main(argv + ["p2.jsonl"], out=io.StringIO())
    assert "img/s" not in sys.stderr.getvalue()


def test_two_runs_cannot_write_one_jsonl(tree, ckpts, capsys):
    from tinymvit.jobs import JsonlLog
    with JsonlLog("busy.jsonl", resume=True):                   # another job holds it
        code, _, err = cli(["classify", "photos", "--model", ckpts["cls"], "--jsonl",
                            "busy.jsonl", "--resume"], capsys)
    assert code == 1 and err == ["tinymvit classify: error: --jsonl busy.jsonl is being written "
                                 "by another running job; wait for it or use another file"]
    assert Path("busy.jsonl").read_text() == ""

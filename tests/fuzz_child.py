"""Child process of test_fuzz.py: runs fuzz cases one after another.

    python fuzz_child.py CASES.json

CASES.json is a list of {"id", "op", "checkpoint", "image", "dst"}.  For every case one
JSON line is printed (and flushed) BEFORE the next case starts, so the parent can tell
which case a crash belongs to:

    {"id": ..., "status": "ok" | "error" | "bad", "detail": ...}

"ok": a finite result; "error": a tinymvit.TinyMViTError (the CLI: exit 1 and one line
"tinymvit <cmd>: error: ..."); "bad": anything else (another exception type, NaN in a
result, invalid JSON, a multi-line or internal error from the CLI).
"""
import contextlib
import io
import json
import math
import os
import sys
import traceback

import numpy as np

import tinymvit
from tinymvit.cli import main as cli_main
from tinymvit.jobs import expand_inputs


def _check_predictions(preds):
    scores = [p["score"] for p in preds]
    if not preds or not all(math.isfinite(s) and 0 <= s <= 1 for s in scores):
        raise AssertionError(f"bad scores {scores}")
    return f"top {preds[0]['index']} {scores[0]:.3f}"


def _run_api(case):
    model = tinymvit.load(case["checkpoint"])
    if case["op"] == "convert":
        model = tinymvit.load(tinymvit.convert(case["checkpoint"], case["dst"] + ".safetensors"))
    if model.task == "classification":
        return _check_predictions(model.classify(case["image"], top_k=3))
    if model.task == "segmentation":
        labels = model.segment(case["image"])
        if labels.ndim != 2 or labels.min() < 0 or labels.max() >= model.config.num_labels:
            raise AssertionError(f"bad label map {labels.shape} {labels.min()} {labels.max()}")
        return f"labels {labels.shape}"
    out = model(model.preprocess(case["image"]))
    if not np.isfinite(out.last_hidden_state).all():
        return "non-finite features of a bare backbone (no head to check)"
    return "features"


def _run_cli(case):
    command = "segment" if case["op"] == "cli-segment" else "classify"
    twin = case["dst"] + "-twin" + os.path.splitext(case["image"])[1]   # same file, other name
    os.symlink(case["image"], twin)
    argv = [command, case["image"], twin, "--model", case["checkpoint"], "--json"]
    if command == "segment":
        argv += ["--out", case["dst"] + "-{stem}.png", "--overlay", case["dst"] + "-{stem}.jpg"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli_main(argv, out=out)
    lines = [line for line in err.getvalue().splitlines()
             if not line.startswith((f"tinymvit {command}: warning: ",
                                     "tinymvit: compiling kernels"))]
    if any(("internal error" in line or not line.startswith(f"tinymvit {command}: error: "))
           for line in lines):
        return "bad", f"stderr {lines!r}"
    if code == 1 and out.getvalue() == "" and len(lines) == 1:
        return "error", lines[0]                       # failed before any image ran
    records = json.loads(out.getvalue(), parse_constant=lambda c: 1 / 0)   # no bare NaN
    failed = [r for r in records if "error" in r]
    expected = len(expand_inputs([case["image"], twin])[0])      # a folder: its images
    if len(records) != expected or code != (1 if failed else 0) or len(lines) != len(failed):
        return "bad", f"exit {code}, {len(records)} records, stderr {lines!r}"
    for r in records:
        if "predictions" in r:
            _check_predictions(r["predictions"])
    return ("error" if failed else "ok"), (lines[0] if lines else "2 results")


def run(case):
    try:
        if case["op"].startswith("cli-"):
            status, detail = _run_cli(case)
        else:
            status, detail = "ok", _run_api(case)
    except tinymvit.TinyMViTError as exc:
        status, detail = "error", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001  exactly what the fuzz test looks for
        status = "bad"
        detail = f"{type(exc).__name__}: {exc} | " + " / ".join(
            traceback.format_exc().strip().splitlines()[-6:])
    return {"id": case["id"], "status": status, "detail": detail[:600]}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    for case in cases:
        print(json.dumps(run(case)), flush=True)

"""Hub repo ids (tinymvit.hub), offline, against a Hugging Face cache laid out by the test.

The cache is the layout huggingface_hub's ``hf_hub_download`` writes and reads
(``models--org--name/{blobs/<hash>, refs/<revision> (a commit hash), snapshots/<commit>/<file>
-> ../../blobs/<hash>}``, ``.no_exist/<commit>/<file>`` for files known to be absent), built
from small random checkpoints; ``HF_HUB_OFFLINE`` is on, so nothing touches the network.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinymvit
from fake_checkpoints import random_checkpoint
from tinymvit import hub

hf = pytest.importorskip("huggingface_hub")

REPO = "tinyorg/tiny-mnv2"
SMALL = dict(depth_multiplier=0.35, num_labels=5, image_size=64)
PRE = {"crop_size": {"height": 64, "width": 64}, "size": {"shortest_edge": 72}}
ALLOWED = {"config.json", "preprocessor_config.json", "model.safetensors",
           "model.safetensors.index.json"}


def _commit(text):
    return hashlib.sha1(text.encode()).hexdigest()


def add_snapshot(cache, repo_id, files, ref="main", no_exist=()):
    """Lay out one snapshot of ``repo_id`` in the cache: ``files`` maps repo file names to
    local files; ``ref`` (a branch or tag) points to the new commit.  Returns the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = _commit(f"{repo_id}:{ref}:{sorted(files)}")
    for name, source in files.items():
        data = Path(source).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for name in no_exist:
        marker = repo / ".no_exist" / commit / name
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)            # no newline, as huggingface_hub writes it
    return commit


def folder_files(folder):
    return {p.name: p for p in Path(folder).iterdir() if p.is_file()}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Hub cache, offline; the env vars for subprocesses, the constants in-process
    (huggingface_hub reads the env once, at import)."""
    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", True)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two random checkpoints of one architecture (different weights) as local folders."""
    base = tmp_path_factory.mktemp("ckpts")
    return [random_checkpoint(base / f"seed{s}", "mobilenet_v2", seed=s, preprocessor=PRE,
                              **SMALL) for s in (0, 1)]


@pytest.fixture
def spy(monkeypatch):
    """Records every file name tinymvit asks huggingface_hub for."""
    asked = []
    real = hf.hf_hub_download

    def download(repo_id, filename, **kwargs):
        asked.append(filename)
        return real(repo_id, filename, **kwargs)
    monkeypatch.setattr(hf, "hf_hub_download", download)
    return asked


def _logits(model, seed=0):
    x = np.random.default_rng(seed).standard_normal((1, 3, 64, 64)).astype(np.float32)
    return model(x).logits


def test_load_by_repo_id_and_revision(cache, checkpoints, spy):
    main, v2 = checkpoints
    add_snapshot(cache, REPO, folder_files(main))
    commit2 = add_snapshot(cache, REPO, folder_files(v2), ref="v2")

    model = tinymvit.load(REPO)
    assert model.source == REPO
    np.testing.assert_array_equal(_logits(model), _logits(tinymvit.load(main)))
    assert set(spy) <= ALLOWED and "model.safetensors" in spy

    want = _logits(tinymvit.load(v2))
    assert not np.allclose(want, _logits(model))
    for spec, kwargs in [(f"{REPO}@v2", {}), (REPO, {"revision": "v2"}), (f"{REPO}@{commit2}", {})]:
        got = tinymvit.load(spec, **kwargs)
        np.testing.assert_array_equal(_logits(got), want, err_msg=f"{spec} {kwargs}")
    assert tinymvit.load(f"{REPO}@v2").source == f"{REPO}@v2"
    with pytest.raises(tinymvit.InputError, match="names revision 'v2'"):
        tinymvit.load(f"{REPO}@v2", revision="main")


def test_convert_from_repo_id(cache, checkpoints, tmp_path):
    add_snapshot(cache, REPO, folder_files(checkpoints[0]))
    out = tinymvit.convert(REPO, tmp_path / "tiny.safetensors")
    np.testing.assert_array_equal(_logits(tinymvit.load(out)), _logits(tinymvit.load(REPO)))


def test_sharded_safetensors(cache, checkpoints, tmp_path):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(checkpoints[0] / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    files = {k: v for k, v in folder_files(checkpoints[0]).items() if k != "model.safetensors"}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / shard))
        files[shard] = tmp_path / shard
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {k: s for s, ks in shards.items() for k in ks}}))
    files[index.name] = index
    add_snapshot(cache, REPO, files)
    np.testing.assert_array_equal(_logits(tinymvit.load(REPO)),
                                  _logits(tinymvit.load(checkpoints[0])))
    # an index naming a file outside the snapshot is refused before anything is fetched
    index.write_text(json.dumps({"weight_map": {names[0]: "../../blobs/x.safetensors"}}))
    files[index.name] = index
    add_snapshot(cache, "tinyorg/hostile", files)
    with pytest.raises(tinymvit.CheckpointError, match="must map tensor names to .safetensors"):
        tinymvit.load("tinyorg/hostile")


def test_only_needed_files_are_fetched(cache, checkpoints, tmp_path, spy):
    """A repo with every format: only the config, preprocessor and safetensors are asked for."""
    (tmp_path / "pytorch_model.bin").write_bytes(b"not fetched")
    (tmp_path / "tf_model.h5").write_bytes(b"not fetched")
    files = folder_files(checkpoints[0])
    files.update({"pytorch_model.bin": tmp_path / "pytorch_model.bin",
                  "tf_model.h5": tmp_path / "tf_model.h5"})
    add_snapshot(cache, REPO, files)
    tinymvit.load(REPO, allow_pickle=True)        # safetensors present: the pickle is not needed
    assert spy == ["config.json", "preprocessor_config.json", "model.safetensors"]


def test_pickle_only_repo_needs_opt_in(cache, checkpoints, tmp_path, spy):
    files = {k: v for k, v in folder_files(checkpoints[0]).items() if k != "model.safetensors"}
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file
    state = {k: torch.from_numpy(v) for k, v in
             load_file(str(checkpoints[0] / "model.safetensors")).items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    files["pytorch_model.bin"] = tmp_path / "pytorch_model.bin"
    add_snapshot(cache, REPO, files)

    with pytest.raises(tinymvit.CheckpointError, match="only as pytorch_model.bin.*allow_pickle"):
        tinymvit.load(REPO)
    assert "pytorch_model.bin" not in spy
    model = tinymvit.load(REPO, allow_pickle=True)
    np.testing.assert_array_equal(_logits(model), _logits(tinymvit.load(checkpoints[0])))


@pytest.mark.parametrize("spec", [
    "./tinyorg/tiny-mnv2", "../x/y", "/abs/x", "~/x/y", "org/model.safetensors", "org/x.json",
    "a/b/c", "C:\\models\\x", "plainname", "org/bad..name", "org/name@", ""])
def test_path_like_strings_are_not_repo_ids(spec):
    assert not hub.is_repo_id(spec)


def test_repo_id_forms():
    assert hub.parse_repo_id("google/mobilenet_v2_1.0_224") == ("google/mobilenet_v2_1.0_224",
                                                                 None)
    assert hub.parse_repo_id("apple/mobilevitv2-1.0-imagenet1k-256@refs/pr/3") == (
        "apple/mobilevitv2-1.0-imagenet1k-256", "refs/pr/3")
    assert not hub.is_repo_id(Path("org/name"))          # a Path is always a path


def test_local_path_wins(cache, checkpoints, tmp_path, monkeypatch):
    """A folder that exists under the repo id's name is loaded, not the Hub snapshot."""
    add_snapshot(cache, REPO, folder_files(checkpoints[0]))
    monkeypatch.chdir(tmp_path)
    local = tmp_path / REPO
    local.parent.mkdir()
    local.symlink_to(checkpoints[1], target_is_directory=True)
    model = tinymvit.load(REPO)
    assert model.source == REPO and not hub.is_repo_id(REPO)
    np.testing.assert_array_equal(_logits(model), _logits(tinymvit.load(checkpoints[1])))
    with pytest.raises(tinymvit.InputError, match="only applies to Hugging Face Hub repo ids"):
        tinymvit.load(REPO, revision="v2")


def test_without_huggingface_hub(monkeypatch, checkpoints):
    for name in list(sys.modules):
        if name == "huggingface_hub" or name.startswith("huggingface_hub."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)       # import fails
    with pytest.raises(tinymvit.CheckpointError) as info:
        tinymvit.load("apple/mobilevitv2-1.0-imagenet1k-256")
    message = str(info.value)
    assert "\n" not in message and "pip install 'tinymvit[hub]'" in message
    assert "apple/mobilevitv2-1.0-imagenet1k-256" in message
    tinymvit.load(checkpoints[0])                                     # local paths still work


def test_offline_and_not_cached(cache, checkpoints):
    with pytest.raises(tinymvit.CheckpointError,
                       match="not in the local Hub cache.*HF_HUB_OFFLINE"):
        tinymvit.load("someone/not-cached")
    add_snapshot(cache, REPO, folder_files(checkpoints[0]))
    with pytest.raises(tinymvit.CheckpointError, match=r"@v9: config.json is not in the local"):
        tinymvit.load(f"{REPO}@v9")
    # weights missing from the cache: named, with the reason
    add_snapshot(cache, "tinyorg/no-weights",
                 {k: v for k, v in folder_files(checkpoints[0]).items()
                  if k != "model.safetensors"})
    with pytest.raises(tinymvit.CheckpointError,
                       match="no weights .*model.safetensors.* in the local Hub cache"):
        tinymvit.load("tinyorg/no-weights")


def test_preprocessor_config_absent_or_unknown(cache, checkpoints):
    """Known absent (.no_exist): the processor's defaults; merely not cached: an error, since
    guessing the preprocessing would silently change the results."""
    files = {k: v for k, v in folder_files(checkpoints[0]).items()
             if k != "preprocessor_config.json"}
    add_snapshot(cache, "tinyorg/known", files, no_exist=["preprocessor_config.json"])
    assert tinymvit.load("tinyorg/known").preprocessor_config is None
    add_snapshot(cache, "tinyorg/unknown", files)
    with pytest.raises(tinymvit.CheckpointError, match="preprocessor_config.json is not in"):
        tinymvit.load("tinyorg/unknown")


def _http_error(cls, status, message):
    import httpx2
    response = httpx2.Response(status, request=httpx2.Request("GET", "https://hf.invalid/x"))
    return cls(message, response=response)


@pytest.mark.parametrize("error, expected", [
    (lambda e: _http_error(e.GatedRepoError, 403, "gated"), "gated: accept its terms"),
    (lambda e: _http_error(e.RepositoryNotFoundError, 404, "nope"),
     "no model repo 'tinyorg/tiny-mnv2' on the Hugging Face Hub"),
    (lambda e: _http_error(e.RevisionNotFoundError, 404, "no rev"), "has no revision 'v7'"),
    (lambda e: _http_error(e.HfHubHTTPError, 401, "401 Client Error\nmore"), "unauthorized"),
    (lambda e: e.LocalEntryNotFoundError("offline"), "not in the local Hub cache"),
])
def test_hub_errors_are_one_line(monkeypatch, cache, error, expected):
    def fail(*args, **kwargs):
        raise error(hf.errors)
    monkeypatch.setattr(hf, "hf_hub_download", fail)
    with pytest.raises(tinymvit.CheckpointError, match=expected) as info:
        tinymvit.load(f"{REPO}@v7")
    assert "\n" not in str(info.value)


def test_environment_variables_in_a_fresh_process(tmp_path, checkpoints):
    """HF_HOME and HF_HUB_OFFLINE as a user sets them, read by a new interpreter."""
    home = tmp_path / "hf-home"
    add_snapshot(home / "hub", REPO, folder_files(checkpoints[0]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    code = ("import numpy as np, tinymvit; m = tinymvit.load(%r); "
            "x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32); "
            "print(m.source); print(repr(m(x).logits.tolist()))" % REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    source, logits = out.stdout.strip().splitlines()
    assert source == REPO
    np.testing.assert_array_equal(np.array(eval(logits), dtype=np.float32),
                                  _logits(tinymvit.load(checkpoints[0])))


def test_cli_model_option_takes_repo_ids(cache, checkpoints, tmp_path, capsys):
    """--model org/name[@revision] and --allow-pickle on the command line."""
    import io

    from PIL import Image

    from tinymvit.cli import main
    add_snapshot(cache, REPO, folder_files(checkpoints[0]))
    add_snapshot(cache, REPO, folder_files(checkpoints[1]), ref="v2")
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60, 3), np.uint8)).save(image)
    for spec, folder in ((REPO, checkpoints[0]), (f"{REPO}@v2", checkpoints[1])):
        out = io.StringIO()
        assert main(["classify", str(image), "--model", spec, "--json"], out=out) == 0
        want = tinymvit.load(folder).classify(str(image))
        assert json.loads(out.getvalue())[0]["predictions"] == want
    out = io.StringIO()
    assert main(["info", f"{REPO}@v2"], out=out) == 0 and out.getvalue().startswith(f"{REPO}@v2")

    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file
    files = {k: v for k, v in folder_files(checkpoints[0]).items() if k != "model.safetensors"}
    torch.save({k: torch.from_numpy(v) for k, v in
                load_file(str(checkpoints[0] / "model.safetensors")).items()},
               tmp_path / "pytorch_model.bin")
    add_snapshot(cache, "tinyorg/pickled", {**files, "pytorch_model.bin":
                                            tmp_path / "pytorch_model.bin"})
    capsys.readouterr()
    assert main(["bench", "--model", "tinyorg/pickled", "--seconds", "0.1"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--allow-pickle" in err[0]
    assert main(["convert", "tinyorg/pickled", str(tmp_path / "p.safetensors"),
                 "--allow-pickle"]) == 0
    np.testing.assert_array_equal(_logits(tinymvit.load(tmp_path / "p.safetensors")),
                                  _logits(tinymvit.load(checkpoints[0])))

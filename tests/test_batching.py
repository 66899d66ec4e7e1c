"""Decoding ahead on threads (tinymvit.batching) and the JSONL records (tinymvit.predict)."""
import threading
import time

import numpy as np
import pytest

import tinymvit
from fake_checkpoints import random_checkpoint
from tinymvit.batching import decode_ahead, find_images
from tinymvit.predict import error_record, predict

CLS = "mobilenet_v2_1.0_224-coral-qat"


def _decode_threads():
    return [t for t in threading.enumerate() if t.name.startswith("tinymvit-decode")]


def test_order_errors_and_batches():
    def decode(i):
        if i % 5 == 3:
            raise tinymvit.ImageError(f"item {i} is bad")
        time.sleep(0.001 * (i % 3))          # finish out of order
        return i * 10

    batches = list(decode_ahead(range(23), decode, batch_size=4, workers=3))
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 3]
    flat = [d for b in batches for d in b]
    assert [d.item for d in flat] == list(range(23))
    for d in flat:
        if d.item % 5 == 3:
            assert d.image is None and "is bad" in str(d.error)
        else:
            assert d.image == d.item * 10 and d.error is None
    assert not _decode_threads()


def test_reads_ahead_boundedly_and_stops_early():
    """A lazy input is read at most batch_size * (ahead + 1) items ahead of the consumer, and
    leaving the loop early cancels the rest and joins the threads."""
    pulled = []

    def items():
        for i in range(10_000):
            pulled.append(i)
            yield i

    gen = decode_ahead(items(), lambda i: i, batch_size=8, workers=2, ahead=2)
    first = next(gen)
    assert [d.item for d in first] == list(range(8))
    assert len(pulled) <= 8 * 3 + 8
    for _, batch in zip(range(3), gen):
        pass
    gen.close()
    assert len(pulled) <= 8 * 7 and not _decode_threads()


def test_unexpected_exceptions_propagate():
    def decode(i):
        raise RuntimeError("a bug, not a bad image")
    with pytest.raises(RuntimeError, match="a bug"):
        list(decode_ahead([1, 2], decode))
    with pytest.raises(tinymvit.InputError, match="batch_size must be a positive int"):
        list(decode_ahead([1], batch_size=0))


def test_find_images(tmp_path):
    for name in ("a.JPG", "b.png", "notes.txt", ".hidden.png", "sub/c.jpeg", ".git/d.png",
                 "sub/deeper/e.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.JPG", "b.png", "sub/c.jpeg", "sub/deeper/e.webp"]
    assert [p.name for p in find_images(tmp_path, recursive=False)] == ["a.JPG", "b.png"]


def test_predict_records_equal_classify(shared_checkpoint, shared_images, tmp_path):
    model = tinymvit.load(shared_checkpoint(CLS))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG nope")
    paths = [str(p) for p in shared_images[:5]] + [str(broken), str(tmp_path / "missing.jpg")]
    results = list(predict(model, paths, top_k=3, batch_size=2, workers=2))
    records = [r.record for r in results]
    np.testing.assert_array_equal(results[0].image, tinymvit.load_image(paths[0]))
    assert results[5].image is None and results[0].labels is None
    assert [r["path"] for r in records] == paths
    for path, record in zip(paths[:5], records):
        assert record == {"path": path, "predictions": model.classify(path, top_k=3)}
    assert set(records[5]) == {"path", "error"} and "not an image file" in records[5]["error"]
    assert "image file not found" in records[6]["error"]


def test_predict_segmentation_records(tmp_path, shared_images):
    model = tinymvit.load(random_checkpoint(tmp_path / "seg", "mobilenet_v2", task="segmentation",
                                            depth_multiplier=0.35, num_labels=4))
    paths = [str(p) for p in shared_images[:2]]
    for path, (record, labels, *_) in zip(paths, predict(model, paths, batch_size=2)):
        expected = model.segment(path)
        np.testing.assert_array_equal(labels, expected)
        assert record["path"] == path and (record["height"], record["width"]) == expected.shape
        counts = np.bincount(expected.ravel(), minlength=4) / expected.size
        assert record["fractions"] == {model.id2label[i]: counts[i] for i in
                                       sorted(np.flatnonzero(counts), key=lambda i: -counts[i])}
        assert list(record["fractions"].values()) == sorted(record["fractions"].values(),
                                                            reverse=True)


def test_error_record_is_one_line():
    assert error_record("x.jpg", ValueError("a\n  b")) == {"path": "x.jpg", "error": "a b"}

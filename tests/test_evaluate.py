"""tinymvit.evaluate on small datasets built from ../shared, checked against transformers.

Classification: an ImageFolder tree and a CSV over the shared photos, with classes named by
label, synonym, index and WordNet id; top-1/top-5 and per-class numbers must equal those of
transformers' MobileNetV2ForImageClassification + its image processor on the same images.
Segmentation: a VOC folder (palette, class-index and VOC-colour masks, 255 = ignore) built from
the real bird mask and from synthetic ground truth; mIoU / pixel accuracy / per-class IoU of
``mode="processor"`` must match transformers' processor + post-processing scored by an
independent confusion computation written here; ``mode="whole"`` is scored the same way from
``model.segment``.
"""
import numpy as np
import pytest
from PIL import Image

import tinymvit
from tinymvit.evaluate import (LabelResolver, confusion_matrix, evaluate, find_dataset,
                               read_mask, segmentation_scores)
from tinymvit.visualize import palette

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from test_real_weights import CLS, SEG, _hf_processor, _rgb  # noqa: E402

# (shared image, how its class folder is named) -- the names are resolved through id2label of
# the 1001-class checkpoint, so "282" is ITS index 282 (tabby), not ImageNet-1k's 282.
CLASS_OF = {
    "coral_bird.bmp": "chickadee",                 # exact label
    "coco_000000039769.png": "tabby, tabby cat",  # exact label, with a comma
    "skimage_chelsea.png": "282",                 # the checkpoint's index (tabby; top-1 differs)
    "coral_cat.bmp": "Egyptian_cat",              # case / underscore-insensitive label
    "coral_parrot.jpg": "macaw",                  # exact
    "skimage_coffee.png": "espresso",
    "coral_hot_dog.jpg": "hot dog",               # a synonym of "hotdog, hot dog, red hot"
    "coral_owl.jpg": "great grey owl",            # synonym
    "coral_dragonfly.bmp": "282",                 # deliberately wrong classes below
    "skimage_rocket.jpg": "espresso",
    "coral_grace_hopper.bmp": "macaw",
}


def _link(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)
    return dst


@pytest.fixture(scope="module")
def cls_model(shared_checkpoint):
    return tinymvit.load(shared_checkpoint(CLS))


@pytest.fixture(scope="module")
def hf_cls(shared_checkpoint):
    folder = shared_checkpoint(CLS)
    model = transformers.MobileNetV2ForImageClassification.from_pretrained(str(folder)).eval()
    return model, _hf_processor(folder, "mobilenet_v2")


def _reference_classification(hf_cls, samples):
    """top-1 / top-5 hits per sample, with transformers (model + PIL image processor)."""
    model, processor = hf_cls
    hits = []
    for path, target in samples:
        pixels = processor(images=[_rgb(path)], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            top5 = torch.topk(model(pixels).logits[0], 5).indices.tolist()
        hits.append((top5[0] == target, target in top5))
    return hits


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("imagefolder")
    for name, folder in CLASS_OF.items():
        _link(shared_dir / "images" / name, root / folder / "sub" / name)    # nested: found too
    (root / "espresso" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (root / "espresso" / "notes.txt").write_text("not an image: ignored")
    return root


def test_image_folder_matches_transformers(image_folder, cls_model, hf_cls):
    data = find_dataset(image_folder, cls_model)
    assert data.kind == "imagefolder" and len(data.samples) == len(CLASS_OF) + 1   # + broken
    result = evaluate(cls_model, image_folder, batch_size=4, workers=2)
    samples = [s for s in data.samples if s[0].name != "broken.jpg"]
    hits = _reference_classification(hf_cls, samples)
    n = len(samples)
    assert result["task"] == "classification" and result["images"] == n
    assert result["top1"] == sum(h[0] for h in hits) / n
    assert result["top5"] == sum(h[1] for h in hits) / n
    assert 0 < result["top1"] < result["top5"] <= 1          # the data has misses of both kinds
    assert result["failed"] == 1 and result["errors"][0]["path"].endswith("broken.jpg")
    # per class and the worst classes, from the same reference
    per_target = {}
    for (_, target), (h1, _) in zip(samples, hits):
        per_target.setdefault(target, []).append(h1)
    labels = cls_model.id2label
    for target, class_hits in per_target.items():
        entry = result["per_class"][labels[target]]
        assert entry["images"] == len(class_hits) and entry["top1"] == np.mean(class_hits)
    worst = result["worst_classes"]
    assert [w["top1"] for w in worst] == sorted(w["top1"] for w in worst)
    assert worst[0]["top1"] == min(np.mean(h) for h in per_target.values())
    assert result["images_per_second"] > 0


def test_csv_gives_the_same_numbers(image_folder, tmp_path, cls_model, shared_dir):
    """A CSV (header, relative and absolute paths, names/indices) over the same images."""
    csv = tmp_path / "labels.csv"
    (tmp_path / "img").mkdir()
    lines = ["path,label"]
    for i, (name, folder) in enumerate(CLASS_OF.items()):
        src = shared_dir / "images" / name
        if i % 2:
            _link(src, tmp_path / "img" / name)
            lines.append(f'img/{name},"{folder}"')
        else:
            lines.append(f'{src},"{folder}"')
    csv.write_text("\n".join(lines) + "\n\n")
    from_csv = evaluate(cls_model, csv, batch_size=3)
    from_folder = evaluate(cls_model, image_folder, batch_size=5)
    assert from_csv["dataset"]["kind"] == "csv" and from_csv["failed"] == 0
    for key in ("images", "top1", "top5", "per_class"):
        assert from_csv[key] == from_folder[key], key
    csv.write_text(f"{shared_dir / 'images' / 'coral_bird.bmp'},chickadee\n")   # no header
    assert evaluate(cls_model, csv)["top1"] == 1.0
    csv.write_text("path,label\nx.jpg,not a class at all\n")
    with pytest.raises(tinymvit.InputError, match=r"labels.csv:2: class 'not a class at all'"):
        evaluate(cls_model, csv)


def _fake_wnids(n=1000):
    return [f"n{10000000 + 7 * i:08d}" for i in range(n)]        # sorted, like ImageNet's


def test_wordnet_ids(tmp_path, cls_model):
    """wnid -> index through a synset file (its text when it is a label, else its position,
    +1 for the 1001-class head), or through 1000 wnid folders; without either: a clear error."""
    labels = [cls_model.id2label[i] for i in range(1001)]
    wnids = _fake_wnids()
    root = tmp_path / "data"
    picks = [0, 133, 516, 999]        # 134 and 517 in the checkpoint are both "crane"
    for i in picks:
        (root / wnids[i]).mkdir(parents=True)
        (root / wnids[i] / "x.png").write_bytes(b"")
    with pytest.raises(tinymvit.InputError, match="does not ship the list"):
        find_dataset(root, cls_model)

    (tmp_path / "synset_words.txt").write_text(                          # beside the data
        "".join(f"{w} {labels[i + 1]}\n" for i, w in enumerate(wnids)))
    data = find_dataset(root, cls_model)
    assert sorted(t for _, t in data.samples) == [i + 1 for i in picks]

    plain = tmp_path / "wnids.txt"
    plain.write_text("\n".join(wnids))
    assert sorted(t for _, t in find_dataset(root, cls_model, synsets=plain).samples) == \
        [i + 1 for i in picks]

    full = tmp_path / "full"
    for w in wnids:
        (full / w).mkdir(parents=True)
    (full / wnids[516] / "x.png").write_bytes(b"")
    assert [t for _, t in find_dataset(full, cls_model).samples] == [517]

    resolve = LabelResolver({0: "a", 1: "b"}, 2, wnids=wnids)
    with pytest.raises(tinymvit.InputError, match="1000-class list, but this checkpoint has 2"):
        resolve(wnids[0])


def test_label_resolver_rules(cls_model):
    resolve = LabelResolver(cls_model.id2label, 1001)
    assert resolve("tabby, tabby cat") == resolve("TABBY_CAT") == resolve("tabby") == 282
    assert resolve("281") == 281 and resolve("background") == 0
    with pytest.raises(tinymvit.InputError, match="names several classes"):
        resolve("crane")
    with pytest.raises(tinymvit.InputError, match="index 0..1000"):
        resolve("1001")


def test_dataset_errors(tmp_path, cls_model, shared_dir):
    with pytest.raises(tinymvit.InputError, match="no such dataset"):
        evaluate(cls_model, tmp_path / "nope")
    with pytest.raises(tinymvit.InputError, match="no class subfolders"):
        evaluate(cls_model, tmp_path)
    (tmp_path / "chickadee").mkdir()
    with pytest.raises(tinymvit.InputError, match="hold no images"):
        evaluate(cls_model, tmp_path)
    (tmp_path / "no such class").mkdir()
    with pytest.raises(tinymvit.InputError, match="'no such class' is not a label"):
        evaluate(cls_model, tmp_path)
    voc = tmp_path / "voc"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    _link(shared_dir / "images" / "skimage_horse.png", voc / "JPEGImages" / "a.png")
    _link(shared_dir / "images" / "skimage_horse.png", voc / "SegmentationClass" / "a.png")
    with pytest.raises(tinymvit.InputError, match="segmentation dataset .* classification"):
        evaluate(cls_model, voc)
    with pytest.raises(tinymvit.InputError, match="mode must be one of"):
        evaluate(cls_model, voc, mode="fast")


# -- segmentation ---------------------------------------------------------------------------------
def test_scores_by_hand():
    truth = np.array([[0, 0, 1, 255], [2, 2, 1, 1]])
    pred = np.array([[0, 1, 1, 3], [2, 0, 1, 3]])
    conf = confusion_matrix(truth, pred, 4)
    assert conf.sum() == 7 and conf[0, 0] == 1 and conf[1, 3] == 1
    s = segmentation_scores(conf, {0: "a", 1: "b", 2: "c", 3: "d"})
    # IoU: a 1/3, b 2/4, c 1/2, d 0/1 (only predicted: still counts); ignore pixel left out
    assert s["per_class"] == pytest.approx({"a": 1 / 3, "b": 0.5, "c": 0.5, "d": 0.0})
    assert s["miou"] == pytest.approx((1 / 3 + 0.5 + 0.5 + 0) / 4)
    assert s["pixel_accuracy"] == pytest.approx(4 / 7)
    assert s["mean_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    with pytest.raises(tinymvit.InputError, match="mask holds class 7"):
        confusion_matrix(np.array([7]), np.array([0]), 4)


def test_read_mask_formats(tmp_path):
    labels = np.array([[0, 1, 15], [255, 3, 20]], dtype=np.uint8)
    p = Image.fromarray(labels)
    p.putpalette(palette(256).ravel().tolist())
    p.save(tmp_path / "p.png")
    Image.fromarray(labels).save(tmp_path / "l.png")
    Image.fromarray(palette(256)[labels]).save(tmp_path / "rgb.png")
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "i16.png")
    for name in ("p.png", "l.png", "rgb.png", "i16.png"):
        np.testing.assert_array_equal(read_mask(tmp_path / name), labels, err_msg=name)
    Image.fromarray(np.full((2, 2, 3), 7, np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(tinymvit.ImageError, match="not a PASCAL VOC class colour"):
        read_mask(tmp_path / "odd.png")


def _with_ignore_border(mask):
    """Set class boundaries to 255, as VOC masks have them."""
    edge = np.zeros(mask.shape, bool)
    edge[1:] |= mask[1:] != mask[:-1]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    return np.where(edge, 255, mask).astype(np.uint8)


@pytest.fixture(scope="module")
def voc(tmp_path_factory, shared_dir, shared_checkpoint):
    """bird (real mask, palette PNG, 255 borders), horse (class-index PNG) and motorcycle (VOC
    colours) with synthetic ground truth, one corrupt image, one mask without an image and one
    image without a mask."""
    root = tmp_path_factory.mktemp("voc")
    images, masks = root / "JPEGImages", root / "SegmentationClass"
    images.mkdir()
    masks.mkdir()
    images_dir = shared_dir / "images"
    _link(images_dir / "coral_bird_segmentation.bmp", images / "bird.bmp")
    bird = _with_ignore_border(np.array(Image.open(images_dir /
                                                   "coral_bird_segmentation_mask.bmp")))
    p = Image.fromarray(bird)
    p.putpalette(palette(256).ravel().tolist())
    p.save(masks / "bird.png")
    for stem, name, cls in (("horse", "skimage_horse.png", 13),
                            ("motorbike", "skimage_motorcycle_left.png", 14)):
        _link(images_dir / name, images / f"{stem}.png")
        w, h = Image.open(images_dir / name).size
        truth = np.zeros((h, w), np.uint8)
        truth[h // 4: 3 * h // 4, w // 5: 4 * w // 5] = cls
        truth[: h // 10, : w // 10] = 15                  # a person nobody will predict
        truth[-5:] = 255
        if stem == "horse":
            Image.fromarray(truth).save(masks / f"{stem}.png")
        else:
            Image.fromarray(palette(256)[truth]).save(masks / f"{stem}.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(masks / "broken.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(masks / "orphan.png")
    _link(images_dir / "coral_cat.bmp", images / "unlabelled.bmp")
    return root


def _independent_miou(pairs, num_classes):
    """mIoU etc. computed directly, class by class (no shared code with tinymvit.evaluate)."""
    tp = np.zeros(num_classes)
    fp = np.zeros(num_classes)
    fn = np.zeros(num_classes)
    correct = counted = 0
    for truth, pred in pairs:
        valid = truth != 255
        correct += int(((truth == pred) & valid).sum())
        counted += int(valid.sum())
        for c in range(num_classes):
            t, p = (truth == c) & valid, (pred == c) & valid
            tp[c] += (t & p).sum()
            fp[c] += (~t & p).sum()
            fn[c] += (t & ~p).sum()
    union = tp + fp + fn
    iou = {c: tp[c] / union[c] for c in range(num_classes) if union[c] > 0}
    return np.mean(list(iou.values())), correct / counted, iou


def _truths(voc_root):
    return {stem: read_mask(voc_root / "SegmentationClass" / f"{stem}.png")
            for stem in ("bird", "horse", "motorbike")}


@pytest.fixture(scope="module")
def seg_model(shared_checkpoint):
    return tinymvit.load(shared_checkpoint(SEG))


def test_voc_processor_mode_matches_transformers(voc, seg_model, shared_checkpoint):
    folder = shared_checkpoint(SEG)
    hf = transformers.MobileNetV2ForSemanticSegmentation.from_pretrained(str(folder)).eval()
    processor = _hf_processor(folder, "mobilenet_v2")
    pairs = []
    for stem, truth in _truths(voc).items():
        image = next((voc / "JPEGImages").glob(f"{stem}.*"))
        inputs = processor(images=[_rgb(image)], return_tensors="pt")
        with torch.inference_mode():
            out = hf(**inputs)
        pred = processor.post_process_semantic_segmentation(out, target_sizes=[truth.shape])[0]
        pairs.append((truth, pred.numpy()))
    miou, pixel_accuracy, iou = _independent_miou(pairs, 21)

    result = evaluate(seg_model, voc, mode="processor", batch_size=2)
    assert result["task"] == "segmentation" and result["images"] == 3
    # the label maps are identical here; 1e-6 leaves room for summation order only
    assert result["miou"] == pytest.approx(miou, abs=1e-6)
    assert result["pixel_accuracy"] == pytest.approx(pixel_accuracy, abs=1e-6)
    names = seg_model.id2label
    assert result["per_class"] == pytest.approx({names[c]: v for c, v in iou.items()}, abs=1e-6)
    assert "person" in result["per_class"] and result["per_class"]["bird"] > 0.8
    failed = sorted(e["path"].rsplit("/", 1)[-1] for e in result["errors"])
    assert failed == ["broken.jpg", "orphan.png"] and result["failed"] == 1


def test_voc_whole_mode(voc, seg_model):
    pairs = []
    for stem, truth in _truths(voc).items():
        image = next((voc / "JPEGImages").glob(f"{stem}.*"))
        pairs.append((truth, seg_model.segment(str(image))))
    miou, pixel_accuracy, iou = _independent_miou(pairs, 21)
    result = evaluate(seg_model, voc, batch_size=8, workers=1)
    assert result["mode"] == "whole" and result["images"] == 3
    assert result["miou"] == pytest.approx(miou, rel=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(pixel_accuracy, rel=1e-12)
    assert result["per_class"] == pytest.approx({seg_model.id2label[c]: v
                                                 for c, v in iou.items()}, rel=1e-12)


def test_voc_split_and_bad_masks(voc, seg_model, tmp_path):
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("horse\nnot-there\n")
    data = find_dataset(voc, seg_model, split="val")
    assert [p[0].stem for p in data.pairs] == ["horse"]
    with pytest.raises(tinymvit.InputError, match="split 'test' needs"):
        find_dataset(voc, seg_model, split="test")
    bad = tmp_path / "bad"
    (bad / "JPEGImages").mkdir(parents=True)
    (bad / "SegmentationClass").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(bad / "JPEGImages" / "a.png")
    Image.fromarray(np.full((40, 40), 37, np.uint8)).save(bad / "SegmentationClass" / "a.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(bad / "JPEGImages" / "b.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(bad / "SegmentationClass" / "b.png")
    result = evaluate(seg_model, bad)
    assert result["images"] == 0 and result["failed"] == 2
    errors = sorted(e["error"] for e in result["errors"])
    assert "mask holds class 37, but the checkpoint has 21 classes" in errors[0]
    assert "mask is 40x30 but the image" in errors[1]

"""Real pretrained weights (../shared/checkpoints) on real photos (../shared/images).

* MobileNetV2 1.0/224 (Coral QAT weights): every image gives the same top-5 as
  transformers and logits within 1e-4 relative.
* DeepLabV3 MobileNetV2 (Coral, OS16): the transformers path (processor, model,
  post-processing) gives the same label maps (>= 99.99 % of pixels); ``segment()``
  on the whole bird image reaches bird IoU >= 0.85 against its ground-truth mask.
"""
import numpy as np
import pytest
from PIL import Image

import tinymvit
from helpers import rel_err

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CLS = "mobilenet_v2_1.0_224-coral-qat"
SEG = "deeplabv3_mobilenet_v2_1.0_513-coral-os16"


def _hf_processor(folder, family):
    import json
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    cfg.pop("image_processor_type", None)
    cls = (transformers.MobileNetV2ImageProcessorPil if family == "mobilenet_v2"
           else transformers.MobileViTImageProcessorPil)
    return cls(**cfg)


def _rgb(path):
    from PIL import ImageOps
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def _load_both(folder, hf_class):
    """(folder, transformers model, tinymvit model) of one checkpoint folder."""
    return folder, hf_class.from_pretrained(str(folder)).eval(), tinymvit.load(folder)


@pytest.fixture(scope="module")
def cls_models(shared_checkpoint):
    return _load_both(shared_checkpoint(CLS), transformers.MobileNetV2ForImageClassification)


def test_classification_matches_transformers_on_every_image(cls_models, shared_images):
    folder, hf, ours = cls_models
    proc = _hf_processor(folder, "mobilenet_v2")
    assert len(shared_images) >= 10
    for path in shared_images:
        ref_pixels = proc(images=[_rgb(path)], return_tensors="np")["pixel_values"]
        pixels = ours.preprocess(str(path))
        assert np.array_equal(pixels, ref_pixels), f"{path.name}: preprocessing differs"
        with torch.inference_mode():
            ref = hf(torch.from_numpy(pixels)).logits.numpy()
        got = ours(pixels).logits
        err = rel_err(got, ref)
        assert err <= 1e-4, f"{path.name}: logits relative error {err:.2e}"
        ref_top5 = list(np.argsort(-ref[0], kind="stable")[:5])
        top5 = ours.classify(str(path), top_k=5)
        assert [p["index"] for p in top5] == ref_top5, path.name
        probs = torch.softmax(torch.from_numpy(ref[0]).double(), -1).numpy()
        for p in top5:
            assert abs(p["score"] - probs[p["index"]]) < 1e-5
            assert p["label"] == hf.config.id2label[p["index"]]


def test_known_predictions(cls_models, shared_dir):
    """Sanity on content (checkpoint README): the bird is a chickadee, the parrot a macaw."""
    _, _, ours = cls_models
    assert ours.classify(str(shared_dir / "images" / "coral_bird.bmp"), top_k=1)[0]["label"] \
        == "chickadee"
    assert ours.classify(str(shared_dir / "images" / "coral_parrot.jpg"), top_k=1)[0]["label"] \
        .startswith("macaw")


@pytest.fixture(scope="module")
def seg_models(shared_checkpoint):
    return _load_both(shared_checkpoint(SEG), transformers.MobileNetV2ForSemanticSegmentation)


def test_segmentation_matches_transformers_on_every_image(seg_models, shared_images):
    folder, hf, ours = seg_models
    proc = _hf_processor(folder, "mobilenet_v2")
    for path in shared_images:
        image = _rgb(path)
        pixels = ours.preprocess(str(path))
        assert np.array_equal(pixels, proc(images=[image], return_tensors="np")["pixel_values"])
        with torch.inference_mode():
            ref_out = hf(torch.from_numpy(pixels))
        got = ours(pixels).logits
        ref = ref_out.logits.numpy()
        assert rel_err(got, ref) <= 1e-4, path.name
        size = [(image.height, image.width)]
        ref_map = proc.post_process_semantic_segmentation(ref_out, target_sizes=size)[0].numpy()
        our_map = ours.post_process_semantic_segmentation(got, target_sizes=size)[0]
        agree = (our_map == ref_map).mean()
        assert agree >= 0.9999, f"{path.name}: only {agree:.5%} of pixels agree"


def test_segment_bird_iou(seg_models, shared_dir):
    _, _, ours = seg_models
    image = shared_dir / "images" / "coral_bird_segmentation.bmp"
    mask = np.array(Image.open(shared_dir / "images" / "coral_bird_segmentation_mask.bmp"))
    labels = ours.segment(str(image))
    assert labels.shape == mask.shape
    pred, truth = labels == 3, mask == 3          # VOC index 3 = bird
    iou = (pred & truth).sum() / (pred | truth).sum()
    assert iou >= 0.85, f"bird IoU {iou:.3f}"

"""Bad files, bad inputs, numerical guards and offline behaviour (issue: reliability and safety)."""

import json
import shutil
import socket

import numpy as np
import pytest
import torch
from conftest import TINY_TEXT, TINY_VISION, make_tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor
from weclip_hf.cam import box_mask, box_threshold_mask, gradcam, minmax_normalize


@pytest.fixture
def saved(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_truncated_safetensors_gives_clear_error(saved, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        WeCLIPForSemanticSegmentation.from_pretrained(broken)


def test_config_of_another_model_type_is_refused(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    CLIPModel(CLIPConfig(vision_config=TINY_VISION, text_config=TINY_TEXT)).save_pretrained(tmp_path / "clip")
    with pytest.raises(ValueError, match="'clip'.*from_clip"):
        WeCLIPForSemanticSegmentation.from_pretrained(tmp_path / "clip")


def test_class_count_mismatch_is_refused(saved):
    config = json.loads((saved / "config.json").read_text())
    config["class_names"].append("boat")
    config["label_names"].append("boat")
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match its config"):
        WeCLIPForSemanticSegmentation.from_pretrained(saved)


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model folder"):
        WeCLIPForSemanticSegmentation.from_pretrained(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        WeCLIPForSemanticSegmentation.from_pretrained(str(tmp_path / "empty"))


def test_saved_folder_is_safetensors_only(saved):
    assert {p.name for p in saved.iterdir()} == {"config.json", "model.safetensors"}


def test_nothing_touches_the_network_offline(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    model = WeCLIPForSemanticSegmentation.from_pretrained(saved)
    WeCLIPImageProcessor(patch_size=8).save_pretrained(saved)
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=str(saved))
    from PIL import Image

    assert segmenter(Image.fromarray(np.zeros((40, 40, 3), np.uint8)))
    assert model(torch.randn(1, 3, 32, 32)).logits.shape[1] == 5


def test_cam_normalization_never_divides_by_zero():
    constant = torch.full((2, 4, 4), 3.0)
    assert torch.isfinite(minmax_normalize(constant)).all()
    zero_grad = gradcam(torch.randn(1, 16, 8), torch.zeros(1, 16, 8), (4, 4))  # a class with zero gradient
    assert torch.isfinite(zero_grad).all() and (zero_grad == 0).all()
    assert box_mask(box_threshold_mask(zero_grad, 0.4)).sum() == 0


def test_constant_image_and_zero_text_embeddings_stay_finite(tiny_model):
    tiny_model.class_text_embeds.zero_()  # all classes equally likely: GradCAM is flat
    out = tiny_model(torch.zeros(2, 3, 32, 32), class_labels=torch.tensor([[1.0, 0, 0, 0], [0, 1, 1, 0]]))
    assert torch.isfinite(out.loss) and torch.isfinite(out.cams).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    layout=st.sampled_from(["hwc", "chw", "hw"]),
    channels=st.sampled_from([1, 3, 4]),
    dtype=st.sampled_from(["uint8", "uint16", "float32", "float64", "bool"]),
)
def test_processor_accepts_any_size_dtype_and_layout(height, width, layout, channels, dtype):
    rng = np.random.default_rng(height * 71 + width)
    if dtype == "bool":
        array = rng.random((height, width, channels)) > 0.5
    elif dtype.startswith("float"):
        array = rng.random((height, width, channels)).astype(dtype)
    else:
        array = rng.integers(0, np.iinfo(dtype).max, (height, width, channels)).astype(dtype)
    if layout == "chw":
        if width <= 4:  # ambiguous with HWC; the documented rule reads it as HWC
            return
        array = np.moveaxis(array, -1, 0)
    elif layout == "hw":
        array = array[..., 0]
    out = WeCLIPImageProcessor(size={"longest_edge": 64})(array).pixel_values
    assert out.shape[0] == 1 and out.shape[1] == 3 and max(out.shape[-2:]) == 64
    assert torch.isfinite(out).all()


@settings(max_examples=15, deadline=None)
@given(height=st.integers(8, 60), width=st.integers(8, 60), classes=st.lists(st.booleans(), min_size=4, max_size=4))
def test_model_handles_any_patchable_size_and_label_set(height, width, classes):
    torch.manual_seed(0)
    model = _shared_model()
    labels = torch.tensor([classes], dtype=torch.float32)
    out = model(torch.randn(1, 3, height, width), class_labels=labels)
    assert out.pseudo_labels.shape == (1, height, width) and torch.isfinite(out.loss)
    allowed = {0} | {i + 1 for i, c in enumerate(classes) if c}
    assert set(out.pseudo_labels.unique().tolist()) <= allowed


_MODEL = []


def _shared_model():
    if not _MODEL:
        torch.manual_seed(0)
        _MODEL.append(WeCLIPForSemanticSegmentation(make_tiny_config()).eval())
    return _MODEL[0]

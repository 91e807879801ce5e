"""WeCLIPImageProcessor: normalization, resize, input modes, labels, post-processing, errors."""

import numpy as np
import pytest
import torch
from conftest import SHARED
from PIL import Image

from weclip_hf import WeCLIPImageProcessor
from weclip_hf.image_processing_weclip import CLIP_MEAN, CLIP_STD
from weclip_hf.inference import longest_edge_size, resize_longest_edge


def _image(h=30, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_official_normalization_and_long_side_resize():
    array = _image(375 // 5, 500 // 5)
    proc = WeCLIPImageProcessor(size={"longest_edge": 512})
    pixels = proc(Image.fromarray(array)).pixel_values
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    normalized = (torch.from_numpy(array).permute(2, 0, 1).float() - mean) / std
    expected = resize_longest_edge(normalized[None], 512)
    assert pixels.shape == (1, 3, 384, 512) == expected.shape
    torch.testing.assert_close(pixels, expected, rtol=1e-5, atol=1e-5)
    assert longest_edge_size(375, 500, 512) == (384, 512)


def test_fixed_size_and_clip_statistics():
    proc = WeCLIPImageProcessor(size={"height": 32, "width": 48}, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    out = proc([_image(), _image(seed=1)])
    assert out.pixel_values.shape == (2, 3, 32, 48) and out.pixel_values.dtype == torch.float32


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_pil_modes_are_converted(mode):
    base = Image.fromarray(_image())
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    out = WeCLIPImageProcessor(size={"longest_edge": 40})(image).pixel_values
    assert out.shape == (1, 3, 30, 40) and torch.isfinite(out).all()


def test_sixteen_bit_matches_eight_bit():
    gray = np.asarray(Image.fromarray(_image()).convert("L"))
    proc = WeCLIPImageProcessor(size={"longest_edge": 40})
    a = proc(Image.fromarray(gray)).pixel_values
    b = proc(Image.fromarray(gray.astype(np.uint16) * 257)).pixel_values
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_exif_orientation_is_applied():
    image = Image.fromarray(_image(20, 40))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    rotated = Image.open(io.BytesIO(buffer.getvalue()))
    out = WeCLIPImageProcessor(do_resize=False)(rotated).pixel_values
    assert out.shape[-2:] == (40, 20)


def test_numpy_layouts_tensors_and_floats_agree():
    array = _image()
    proc = WeCLIPImageProcessor(size={"longest_edge": 40})
    ref = proc(array).pixel_values
    torch.testing.assert_close(proc(np.moveaxis(array, -1, 0)).pixel_values, ref)
    torch.testing.assert_close(proc(torch.from_numpy(array)).pixel_values, ref)
    torch.testing.assert_close(proc(array.astype(np.float32) / 255).pixel_values, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 5, 3), np.uint8), "Empty"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.zeros((4, 4, 2), np.uint8), "channels"),
        (np.zeros((2, 4, 4, 3), np.uint8), "2-D or 3-D"),
        (np.full((4, 4, 3), -3.0, np.float32), r"\[0, 255\]"),
    ],
)
def test_bad_images_raise(image, message):
    with pytest.raises(ValueError, match=message):
        WeCLIPImageProcessor()(image)


def test_labels_resized_nearest_and_padding():
    proc = WeCLIPImageProcessor(size={"longest_edge": 20}, do_pad=True, patch_size=8)
    label = np.zeros((30, 40), np.uint8)
    label[:, 20:] = 3
    label[0] = 255
    out = proc(_image(), segmentation_maps=label)
    assert out.pixel_values.shape == (1, 3, 16, 24) and out.labels.shape == (1, 16, 24)
    assert set(out.labels.unique().tolist()) == {0, 3, 255} and out.labels.dtype == torch.long
    assert (out.labels[0, 15:] == 255).all() and (out.pixel_values[0, :, 15:] == 0).all()  # 15 -> 16 rows


def test_mixed_sizes_in_one_batch_raise():
    with pytest.raises(ValueError, match="different sizes"):
        WeCLIPImageProcessor()([_image(30, 40), _image(40, 30)])


def test_post_process_semantic_segmentation():
    proc = WeCLIPImageProcessor()
    logits = torch.zeros(2, 3, 4, 5)
    logits[0, 2] = 1
    logits[1, 1, :, :2] = 5
    maps = proc.post_process_semantic_segmentation(type("O", (), {"logits": logits})(), [(8, 10), (4, 5)])
    assert maps[0].shape == (8, 10) and (maps[0] == 2).all()
    assert maps[1].shape == (4, 5) and (maps[1][:, :2] == 1).all()
    with pytest.raises(ValueError, match="target sizes"):
        proc.post_process_semantic_segmentation({"logits": logits}, [(8, 10)])


def test_save_load_roundtrip(tmp_path):
    proc = WeCLIPImageProcessor(size={"height": 64, "width": 64}, do_pad=True)
    proc.save_pretrained(tmp_path)
    loaded = WeCLIPImageProcessor.from_pretrained(tmp_path)
    assert loaded.size == {"height": 64, "width": 64} and loaded.do_pad and loaded.image_mean == proc.image_mean


def test_voc_mini_real_photo_and_palette_mask():
    root = SHARED / "data" / "voc-mini"
    if not root.exists():
        pytest.skip("../shared/data/voc-mini is absent")
    image = Image.open(root / "JPEGImages" / "vainf_0000.jpg")
    mask = Image.open(root / "SegmentationClass" / "vainf_0000.png")
    out = WeCLIPImageProcessor(size={"longest_edge": 320})(image, segmentation_maps=mask)
    ids = set(out.labels.unique().tolist())
    assert 0 in ids and ids <= set(range(21)) | {255}

import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from weclip_hf import inference
from weclip_hf.inference import (
    image_logits,
    image_pseudo_labels,
    longest_edge_size,
    multiscale_flip_logits,
    pad_to_multiple,
    pad_to_patch,
    resize_label_maps,
    resized_size,
    upsample_cropping_padding,
    upsampled_labels,
    upsampling_size,
)
from weclip_hf.presets import get_preset


@torch.no_grad()
def test_image_pseudo_labels_match_the_model_and_crop_padded_tiny_images(tiny_model):
    torch.manual_seed(0)
    class_labels = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    pixel_values = torch.randn(1, 3, 32, 24)
    labels, cams = image_pseudo_labels(tiny_model, pixel_values, class_labels, use_rfm=True)
    out = tiny_model(pixel_values=pixel_values, class_labels=class_labels, use_rfm=True)
    assert torch.equal(labels, out.pseudo_labels) and torch.equal(cams, out.cams)
    tiny = torch.randn(1, 3, 5, 6)  # below one 8 px patch: padded, then cropped back
    labels, cams = image_pseudo_labels(tiny_model, tiny, class_labels, use_rfm=False)
    padded = tiny_model(pixel_values=pad_to_patch(tiny, 8), class_labels=class_labels, use_rfm=False)
    assert labels.shape == (1, 5, 6) and torch.equal(labels, padded.pseudo_labels[:, :5, :6])
    assert torch.equal(cams, padded.cams)


class RecordingModel(torch.nn.Module):
    """Logits: a 2 x 2 average pool of the first two channels (varying in space); records the input sizes."""

    def __init__(self, patch_size: int = 4, preset: str = "voc"):
        super().__init__()
        self.config = SimpleNamespace(
            vision_config=SimpleNamespace(patch_size=patch_size), training_preset=preset
        )
        self.sizes, self.inputs = [], []

    def forward(self, pixel_values):
        self.sizes.append(tuple(pixel_values.shape[-2:]))
        self.inputs.append(pixel_values)
        return SimpleNamespace(logits=F.avg_pool2d(pixel_values[:, :2], 2))


@pytest.mark.parametrize("preset", ["voc", "voc-plus", "toy"])
def test_multiscale_flip_runs_the_models_evaluation_scales_by_default(preset):
    """The default was WeCLIP's VOC scales (1.0, 0.75) for every model: a WeCLIP+ model's are 1.0 and 1.5, the toy
    world's 1.0 and 1.125, as examples/evaluate.py and segment.py run them."""
    model = RecordingModel(preset=preset)
    multiscale_flip_logits(model, torch.rand(1, 3, 32, 40), flip=False)
    scales = get_preset(preset).evaluation.msf_scales
    assert scales == {"voc": (1.0, 0.75), "voc-plus": (1.0, 1.5), "toy": (1.0, 1.125)}[preset]
    assert model.sizes == [(int(32 * s), int(40 * s)) for s in scales]


def test_multiscale_flip_refuses_impossible_scales_and_names_the_input_as_given():
    """Scales of -2 or 0 ran the model on a one-pixel image (logits constant in space), [] and 1.0 failed with
    Python's TypeErrors; a channels-last input was named by its shape after the flip and padding."""
    model, image = RecordingModel(), torch.rand(1, 3, 32, 40)
    for scales in ([-2.0], [0.0], [], [1.0, float("nan")], [1.0, "0.5"]):
        with pytest.raises(
            ValueError, match=re.escape(f"scales must be one or more finite numbers > 0, got {scales}")
        ):
            multiscale_flip_logits(model, image, scales=scales)
    with pytest.raises(
        TypeError, match=r"scales must be a sequence of numbers, e\.g\. \(1\.0, 0\.75\), got 1\.0\."
    ):
        multiscale_flip_logits(model, image, scales=1.0)
    with pytest.raises(
        ValueError, match=r"pixel_values must have shape \[B, 3, H, W\], got \(1, 32, 40, 3\) \(channels last"
    ):
        multiscale_flip_logits(model, image.permute(0, 2, 3, 1))
    with pytest.raises(TypeError, match="pixel_values must be a torch.Tensor, got ndarray"):
        multiscale_flip_logits(model, image.numpy())
    assert model.sizes == []


def test_multiscale_resizes_by_scale_factor_as_the_official_code():
    """A 375 x 500 image at 0.75 (281.25 x 375): resized by ``scale_factor`` (samples 1/0.75 apart, as the official
    `validate()` calls F.interpolate), not to the size (samples 375/281 apart), whose pixels differ."""
    model, image = RecordingModel(), torch.rand(1, 3, 375, 500, generator=torch.Generator().manual_seed(0))
    multiscale_flip_logits(model, image, scales=(1.0, 0.75), flip=False)
    official = F.interpolate(image, scale_factor=0.75, mode="bilinear", align_corners=False)
    by_size = F.interpolate(image, size=(281, 375), mode="bilinear", align_corners=False)
    assert model.sizes == [(375, 500), (281, 375)] and torch.equal(model.inputs[1], official)
    assert not torch.allclose(by_size, official, atol=1e-3)


@pytest.mark.parametrize("flip", [True, False])
def test_multiscale_flip_is_the_mean_over_scales_of_each_scales_flip_averaged_logits(flip):
    """Against a loop over scales and flips of `image_logits` (logits that vary in space and are not mirror
    symmetric: a random image's pooled pixels): per scale the flipped view's logits are flipped back and averaged
    with the plain view's, resized to the scale-1 logit grid, and the three scales averaged (not summed, nor
    halved as for two)."""
    model = RecordingModel(patch_size=2)  # logits on the patch grid: 2 x 2 pools
    image = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    scales = (1.0, 0.75, 0.5)
    expected = []
    for scale in scales:
        scaled = F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=False)
        views = [image_logits(model, scaled)]
        if flip:
            views.append(image_logits(model, scaled.flip(-1)).flip(-1))
        per_scale = torch.stack(views).mean(0)
        expected.append(F.interpolate(per_scale, size=(16, 20), mode="bilinear", align_corners=False))
    ours = multiscale_flip_logits(model, image, scales=scales, flip=flip)
    torch.testing.assert_close(ours, torch.stack(expected).mean(0), rtol=1e-6, atol=1e-6)


def test_longest_edge_size_truncates_the_short_side():
    assert longest_edge_size(333, 500, 512) == (340, 512)  # 333 * 512 / 500 = 340.99
    assert longest_edge_size(500, 333, 512) == (512, 340)
    # multiplied before dividing: exact where the official ratio 512 / 103 falls short (103 * 4.97... = 511.99...)
    assert longest_edge_size(103, 103, 512) == (512, 512) and longest_edge_size(103, 50, 512) == (512, 248)


def test_pad_to_multiple_zero_pads_the_bottom_and_right_up_to_the_next_multiple():
    """30 x 41 to a multiple of 16: 32 x 48, the image at the top left and zeros around it; a multiple stays."""
    image = torch.rand(1, 3, 30, 41) + 1
    padded = pad_to_multiple(image, 16)
    assert padded.shape[-2:] == (32, 48) and torch.equal(padded[..., :30, :41], image)
    assert not padded[..., 30:, :].any() and not padded[..., :, 41:].any()
    assert pad_to_multiple(padded, 16).shape == padded.shape


def test_upsampling_size_is_the_nearest_pixel_of_the_padded_extent():
    """43 rows resized to 20 and padded to 24 span 43 * 24 / 20 = 51.6 rows at the original scale: 52, the nearest
    (51 would shrink the cropped image part); without padding, the size itself."""
    assert upsampling_size((43, 12), (20, 12), (24, 16)) == (52, 16)
    assert upsampling_size((43, 12)) == (43, 12)


def test_resize_label_maps_keeps_the_labels_dtype():
    """Label maps resized by nearest neighbour keep their integer dtype (they were float32 after the resize)."""
    labels = torch.tensor([[[0, 1], [2, 255]]])
    resized = resize_label_maps(labels, (4, 4))
    assert resized.dtype == torch.int64
    assert torch.equal(resized, labels.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2))
    assert resize_label_maps(labels.to(torch.uint8), (4, 4)).dtype == torch.uint8


def test_resized_size_refuses_a_size_below_one_pixel():
    """A side of 0 (or less) is refused, naming the size, in every form: it resized to one pixel."""
    for size in (0, {"longest_edge": 0}, {"shortest_edge": -1}, {"height": 0, "width": 8}):
        with pytest.raises(ValueError, match="size to resize to must be given in positive integers"):
            resized_size(30, 40, size)


def test_image_logits_of_an_image_below_one_patch_are_the_top_left_crop():
    model = RecordingModel(patch_size=4)
    ramp = torch.arange(15, dtype=torch.float32).reshape(1, 1, 3, 5).repeat(1, 3, 1, 1)
    padded = F.pad(ramp, (0, 0, 0, 1))  # 3 rows -> one 4 px patch, at the bottom
    expected = F.interpolate(
        F.avg_pool2d(padded[:, :2], 2), size=(4, 5), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(image_logits(model, ramp), expected[..., :3, :5])


def tied_logits(non_finite: bool = False) -> torch.Tensor:
    """Logits [2, 7, 5, 6] with exact ties across any chunking: small integers, and classes 5 and 6 copies of
    classes 1 and 2 (the first must keep the pixel); ``non_finite``: NaNs (also tied) and infinities."""
    logits = torch.randint(0, 3, (2, 7, 5, 6), generator=torch.Generator().manual_seed(0)).float()
    logits[:, 5:] = logits[:, 1:3]
    if non_finite:
        logits[0, [1, 5], 2, 2] = float("nan")  # NaN ranks first in the argmax; the first NaN wins
        logits[0, 4, 0, 0] = logits[1, 6, 4, 5] = float("inf")  # bilinear weights of 0 times inf give NaN
        logits[1, 0, 3, 3] = float("-inf")
    return logits


@pytest.mark.parametrize("non_finite", [False, True])
@pytest.mark.parametrize("padding", [(None, None), ((20, 22), (24, 24))])
def test_upsampled_labels_are_exactly_the_argmax_of_the_whole_upsampling(padding, non_finite):
    """Any chunking of the classes gives the labels of upsampling all classes then the argmax, bit for bit:
    ties (the first class), NaN and the padding crop included; int64 as the argmax (and SegFormer's labels)."""
    logits, size = tied_logits(non_finite), (23, 29)
    expected = upsample_cropping_padding(logits, size, *padding).argmax(dim=1)
    plane_bytes = 4 * 2 * math.prod(upsampling_size(size, *padding))  # one class of the batch, float32
    for chunk in range(1, 8):
        labels = upsampled_labels(logits, size, *padding, budget=chunk * plane_bytes)
        assert labels.dtype == torch.int64 and torch.equal(labels, expected), chunk
    assert upsampled_labels(logits.half(), size, *padding, budget=3 * plane_bytes).equal(expected)


def test_upsampled_labels_hold_at_most_the_budget_of_class_planes(monkeypatch):
    """The classes are upsampled in chunks whose float32 planes fit ``budget`` (at least one class); all classes
    at once when they fit (small images: one upsampling and argmax, as before)."""
    logits, size = tied_logits(), (23, 29)
    plane_bytes = 4 * 2 * 23 * 29
    chunks = []
    upsample = inference.upsample_cropping_padding

    def recording(x, *args):
        out = upsample(x, *args)
        chunks.append((x.shape[1], out.numel() * out.element_size()))
        return out

    monkeypatch.setattr(inference, "upsample_cropping_padding", recording)
    for budget, expected in [(3 * plane_bytes + 5, [3, 3, 1]), (plane_bytes - 1, [1] * 7), (10**9, [7])]:
        chunks.clear()
        upsampled_labels(logits, size, budget=budget)
        assert [c for c, _ in chunks] == expected
        assert all(b <= max(budget, plane_bytes) for _, b in chunks)
    chunks.clear()
    monkeypatch.setattr(inference, "LABELS_CHUNK_BYTES", 2 * plane_bytes)  # the default budget
    upsampled_labels(logits, size)
    assert [c for c, _ in chunks] == [2, 2, 2, 1]


def test_image_logits_of_an_image_of_one_patch_are_the_models_own():
    """A side of exactly one patch is no side below one: the logits stay the model's, on its grid (not padded and
    upsampled to the pixels), as `image_logits`' docstring says."""
    model = RecordingModel(patch_size=4)
    image = torch.randn(1, 3, 4, 9)
    assert torch.equal(image_logits(model, image), model(image).logits)


class RampLabelsModel(torch.nn.Module):
    """Pseudo labels that differ at every pixel of its input (a ramp), no CAMs; 8 px patches."""

    config = SimpleNamespace(vision_config=SimpleNamespace(patch_size=8))

    def forward(self, pixel_values, **_):
        batch, _, height, width = pixel_values.shape
        labels = torch.arange(height * width).reshape(1, height, width).expand(batch, -1, -1)
        return SimpleNamespace(pseudo_labels=labels, cams=None)


def test_image_pseudo_labels_of_an_image_smaller_than_max_size_are_not_resized():
    """``max_size`` only shrinks: an image below it (padded to one patch here) gets the labels it gets without
    ``max_size``, its padding cropped (not the padded labels resized onto it)."""
    model, tiny = RampLabelsModel(), torch.randn(1, 3, 40, 5)
    expected = model(pad_to_patch(tiny, 8)).pseudo_labels[..., :40, :5]
    for max_size in (None, 512):
        labels = image_pseudo_labels(model, tiny, torch.ones(1, 4), use_rfm=False, max_size=max_size)[0]
        assert torch.equal(labels, expected), max_size

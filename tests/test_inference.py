from types import SimpleNamespace

import torch
import torch.nn.functional as F

from weclip_hf.inference import (
    image_logits,
    image_pseudo_labels,
    longest_edge_size,
    multiscale_flip_logits,
    pad_to_patch,
)
from weclip_hf.presets import EvaluationSettings


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

    def __init__(self, patch_size: int = 4):
        super().__init__()
        self.config = SimpleNamespace(vision_config=SimpleNamespace(patch_size=patch_size))
        self.sizes = []

    def forward(self, pixel_values):
        self.sizes.append(tuple(pixel_values.shape[-2:]))
        return SimpleNamespace(logits=F.avg_pool2d(pixel_values[:, :2], 2))


def test_multiscale_flip_runs_the_evaluation_scales_by_default():
    model = RecordingModel()
    multiscale_flip_logits(model, torch.rand(1, 3, 32, 40))
    expected = [(round(32 * s), round(40 * s)) for s in EvaluationSettings.msf_scales]
    assert EvaluationSettings.msf_scales == (1.0, 0.75) and model.sizes == expected


def test_longest_edge_size_truncates_the_short_side():
    assert longest_edge_size(333, 500, 512) == (340, 512)  # 333 * 512 / 500 = 340.99
    assert longest_edge_size(500, 333, 512) == (512, 340)


def test_image_logits_of_an_image_below_one_patch_are_the_top_left_crop():
    model = RecordingModel(patch_size=4)
    ramp = torch.arange(15, dtype=torch.float32).reshape(1, 1, 3, 5).repeat(1, 3, 1, 1)
    padded = F.pad(ramp, (0, 0, 0, 1))  # 3 rows -> one 4 px patch, at the bottom
    expected = F.interpolate(
        F.avg_pool2d(padded[:, :2], 2), size=(4, 5), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(image_logits(model, ramp), expected[..., :3, :5])

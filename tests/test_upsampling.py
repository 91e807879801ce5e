"""Bilinear resizing as matrix products (`weclip_hf.upsampling`) is `F.interpolate(..., "bilinear",
align_corners=False)`, forward and backward; the Dice loss's class sums (masked on CUDA) are ``scatter_add_``'s."""

import pytest
import torch
import torch.nn.functional as F

from weclip_hf.branch_losses import _class_sums_masked, _class_sums_scattered, dice_loss
from weclip_hf.upsampling import (
    upsample_bilinear,
    upsample_bilinear_channels_last,
    upsample_bilinear_channels_last_adjoint,
)

# (input grid, output size): the losses' 16x from the patch grid (square and VOC-shaped), odd ratios, identity,
# downsampling, a single pixel
SIZES = [
    ((20, 20), (320, 320)),
    ((24, 32), (384, 512)),
    ((7, 5), (50, 33)),
    ((13, 13), (13, 13)),
    ((9, 12), (4, 5)),
    ((1, 1), (5, 3)),
]


@pytest.mark.parametrize("grid,size", SIZES)
def test_matches_interpolate_forward_and_backward(grid, size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *grid, generator=g, dtype=torch.float64, requires_grad=True)
    expected = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    ours = upsample_bilinear(x, size)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        upsample_bilinear_channels_last(x, size), expected.permute(0, 2, 3, 1), rtol=0, atol=1e-12
    )
    grad = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    torch.testing.assert_close(torch.autograd.grad(ours, x, grad)[0], expected_grad, rtol=0, atol=1e-12)
    adjoint = upsample_bilinear_channels_last_adjoint(grad.permute(0, 2, 3, 1).contiguous(), grid)
    torch.testing.assert_close(adjoint, expected_grad, rtol=0, atol=1e-12)


def test_weights_made_under_inference_mode_serve_a_later_backward():
    """The weight matrices are kept across calls: one first made under `torch.inference_mode` (evaluation) must
    not be an inference tensor when a training step saves it for its backward."""
    x = torch.randn(1, 2, 11, 13)
    with torch.inference_mode():
        upsample_bilinear(x, (37, 41))
    x.requires_grad_(True)
    upsample_bilinear(x, (37, 41)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_float32_and_autocast_stay_float32():
    """float32 within float32 rounding of `F.interpolate`; an ambient bf16 autocast does not round the products."""
    x = torch.randn(2, 21, 20, 20, generator=torch.Generator().manual_seed(1))
    expected = F.interpolate(x, size=(320, 320), mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample_bilinear(x, (320, 320)), expected, rtol=0, atol=2e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = upsample_bilinear(x, (320, 320))
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, rtol=0, atol=2e-6)


def test_class_sums_masked_equal_scattered_with_their_gradients():
    """The Dice loss's class sums: the CUDA formulation (masked sums) equals the CPU one (``scatter_add_``)."""
    g = torch.Generator().manual_seed(2)
    probs = torch.rand(2, 7, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (2, 9, 11), generator=g)
    labels[labels == 3] = 4  # a class with no pixel sums to 0
    labels[0, :2] = 255
    valid = labels != 255
    masked, scattered = _class_sums_masked(probs, labels, valid), _class_sums_scattered(probs, labels, valid)
    for ours, theirs in zip(masked, scattered):
        torch.testing.assert_close(ours, theirs)
    assert masked[0][3] == 0 and masked[1][3] == 0
    weights = torch.rand(7, generator=g, dtype=torch.float64)
    grads = [torch.autograd.grad((sums[0] * weights).sum(), probs)[0] for sums in (masked, scattered)]
    torch.testing.assert_close(grads[0], grads[1])


def test_class_sums_leave_out_invalid_pixels_whatever_their_label():
    """Both formulations sum over the ``valid`` pixels only, also where an invalid pixel holds a class id (a
    `dice_loss` ignore index inside 0..K-1): against a direct sum over the valid pixels."""
    g = torch.Generator().manual_seed(4)
    probs = torch.rand(2, 4, 5, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 5, 6), generator=g)
    valid = torch.rand(2, 5, 6, generator=g) > 0.3
    one_hot = (labels[:, None] == torch.arange(4).view(1, 4, 1, 1)) & valid[:, None]
    expected = (probs * one_hot).sum((0, 2, 3)), one_hot.sum((0, 2, 3)).double()
    for sums in (_class_sums_masked(probs, labels, valid), _class_sums_scattered(probs, labels, valid)):
        for ours, theirs in zip(sums, expected):
            torch.testing.assert_close(ours, theirs)


def test_dice_gradient_matches_a_one_hot_formulation():
    """`dice_loss` (float32) against the same Dice written with a one-hot mask, value and
    gradient."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 9, 11, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (2, 9, 11), generator=g)
    labels[0, :2] = 255
    probs = logits.softmax(dim=1)
    one_hot = labels[:, None] == torch.arange(5).view(1, 5, 1, 1)  # ignored pixels match no class
    valid = (labels != 255)[:, None]
    union = (probs * valid).sum((0, 2, 3)) + one_hot.sum((0, 2, 3))
    expected = 1 - (2 * (probs * one_hot).sum((0, 2, 3)) / (union + 1e-7)).mean()
    ours = dice_loss(logits, labels)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(expected, logits)[0])

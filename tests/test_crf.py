"""Tests of `weclip_hf.crf`: the pure PyTorch dense CRF against an exact O(N^2) mean-field reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weclip_hf.crf import _PermutohedralLattice, _spatial_filter, crf_refine_labels, dense_crf

SIZE = 24


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread avoids thread-pool contention on shared CPUs (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def square_image(
    size: int = SIZE, ramp: float = 1.0, noise: float = 2.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`[3, H, W]` float image (dark colour ramp + a red square + noise) and the `[H, W]` bool square mask."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = torch.stack([30 + 4 * ramp * xs, 40 + 3 * ramp * ys, 50 + 2 * ramp * (xs + ys)]).float()
    mask = (ys >= size // 4) & (ys < 2 * size // 3) & (xs >= size // 3) & (xs < 5 * size // 6)
    image[:, mask] = torch.tensor([200.0, 40.0, 90.0])[:, None]
    image = image + noise * torch.randn(image.shape, generator=generator)
    return image.clamp(0, 255), mask


def blurred_probs(mask: torch.Tensor, shift: int = 2, blur: int = 7) -> torch.Tensor:
    """`[2, H, W]` background/foreground probabilities of a shifted, box-blurred mask."""
    fg = torch.roll(mask.float(), shifts=(shift, shift), dims=(0, 1))[None, None]
    fg = F.avg_pool2d(fg, blur, stride=1, padding=blur // 2, count_include_pad=False)[0, 0]
    fg = 0.05 + 0.9 * fg
    return torch.stack([1 - fg, fg])


def exact_dense_crf(
    image: torch.Tensor, probs: torch.Tensor, num_iters: int = 10, **params: float
) -> torch.Tensor:
    """The same mean-field model with exact all-pairs Gaussian kernels (float64, O(N^2))."""
    p = dict(pos_w=3.0, pos_xy_std=1.0, bi_w=4.0, bi_xy_std=67.0, bi_rgb_std=3.0) | params
    num_classes, height, width = probs.shape
    ys, xs = torch.meshgrid(torch.arange(height).double(), torch.arange(width).double(), indexing="ij")
    position = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    colour = image.double().reshape(3, -1).T
    k_pos = torch.exp(-0.5 * torch.cdist(position, position) ** 2 / p["pos_xy_std"] ** 2)
    bi_features = torch.cat([position / p["bi_xy_std"], colour / p["bi_rgb_std"]], dim=1)
    k_bi = torch.exp(-0.5 * torch.cdist(bi_features, bi_features) ** 2)
    n_pos, n_bi = k_pos.sum(1, keepdim=True).rsqrt(), k_bi.sum(1, keepdim=True).rsqrt()
    log_unary = probs.double().clamp_min(1e-5).log().reshape(num_classes, -1).T
    q = log_unary.softmax(dim=1)
    for _ in range(num_iters):
        messages = p["pos_w"] * n_pos * (k_pos @ (n_pos * q)) + p["bi_w"] * n_bi * (k_bi @ (n_bi * q))
        q = (log_unary + messages).softmax(dim=1)
    return q.T.reshape(num_classes, height, width)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a & b).sum() / (a | b).sum()).item()


def test_shapes_dtypes_and_distribution():
    image, mask = square_image(16)
    images = torch.stack([image, image.flip(-1)]).to(torch.uint8)  # [2, 3, H, W] uint8
    probs = torch.stack([blurred_probs(mask), blurred_probs(mask.flip(-1))])
    probs = torch.cat([probs, torch.full_like(probs[:, :1], 0.1)], dim=1).softmax(dim=1)  # 3 classes
    refined = dense_crf(images, probs)
    assert refined.shape == probs.shape and refined.dtype == probs.dtype
    assert torch.isfinite(refined).all() and (refined >= 0).all()
    torch.testing.assert_close(refined.sum(dim=1), torch.ones(2, 16, 16))
    # batch entries are independent: the unbatched call gives the same result
    torch.testing.assert_close(dense_crf(images[1], probs[1]), refined[1], atol=1e-5, rtol=0)
    labels = crf_refine_labels(images, probs, num_iters=3)
    assert labels.shape == (2, 16, 16) and labels.dtype == torch.long
    torch.testing.assert_close(dense_crf(images, probs, num_iters=0), probs)


def test_deterministic():
    image, mask = square_image()
    probs = blurred_probs(mask)
    assert torch.equal(dense_crf(image, probs), dense_crf(image, probs))


def test_sharpens_blurred_shifted_mask_towards_image_edges():
    image, mask = square_image(ramp=0.0)
    probs = blurred_probs(mask)
    before = iou(probs.argmax(0) == 1, mask)
    after = iou(crf_refine_labels(image, probs) == 1, mask)
    assert after > before + 0.3 and after > 0.9, (before, after)


def test_spatial_filter_matches_exact_gaussian():
    values = torch.rand(1, 2, 12, 10, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij")
    position = torch.stack([xs, ys], dim=-1).reshape(-1, 2).double()
    kernel = torch.exp(-0.5 * torch.cdist(position, position) ** 2 / 1.5**2)
    exact = (kernel @ values.reshape(2, -1).T).T.reshape(1, 2, 12, 10)
    torch.testing.assert_close(_spatial_filter(values, 1.5), exact, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("params", [{}, {"bi_xy_std": 5.0, "bi_rgb_std": 20.0}], ids=["deeplab", "small_xy"])
def test_bilateral_message_close_to_exact(params: dict):
    """Normalised appearance message N k_bi N Q: lattice vs exact all-pairs kernel."""
    xy_std, rgb_std = params.get("bi_xy_std", 67.0), params.get("bi_rgb_std", 3.0)
    image, mask = square_image()
    q = blurred_probs(mask).reshape(2, -1).T.double()  # [N, 2]
    ys, xs = torch.meshgrid(torch.arange(SIZE).double(), torch.arange(SIZE).double(), indexing="ij")
    position = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    features = torch.cat([position / xy_std, image.double().reshape(3, -1).T / rgb_std], dim=1)
    kernel = torch.exp(-0.5 * torch.cdist(features, features) ** 2)
    norm = kernel.sum(1, keepdim=True).rsqrt()
    exact = norm * (kernel @ (norm * q))
    lattice = _PermutohedralLattice(features[None])
    lattice_norm = lattice(torch.ones(SIZE * SIZE, 1, dtype=torch.float64)).rsqrt()
    approx = lattice_norm * lattice(lattice_norm * q)
    error = (approx - exact).abs()
    assert error.mean() < 0.02 and error.max() < 0.15, (error.mean().item(), error.max().item())


@pytest.mark.parametrize("params", [{}, {"bi_xy_std": 5.0, "bi_rgb_std": 20.0}], ids=["deeplab", "small_xy"])
def test_dense_crf_close_to_exact_mean_field(params: dict):
    image, mask = square_image()
    probs = blurred_probs(mask)
    approx = dense_crf(image, probs, **params).double()
    exact = exact_dense_crf(image, probs, **params)
    error = (approx - exact).abs()
    agreement = (approx.argmax(0) == exact.argmax(0)).double().mean().item()
    assert error.mean() < 0.01 and agreement > 0.99, (error.mean().item(), error.max().item(), agreement)


def test_rejects_inconsistent_inputs():
    image, mask = square_image(8)
    probs = blurred_probs(mask)
    with pytest.raises(ValueError, match="spatial"):
        dense_crf(image, probs[:, :4])
    with pytest.raises(ValueError, match="3 \\(RGB\\)"):
        dense_crf(image[:2], probs)
    with pytest.raises(ValueError, match="unbatched"):
        dense_crf(image[None], probs)
    with pytest.raises(TypeError, match="floating"):
        dense_crf(image, probs.long())

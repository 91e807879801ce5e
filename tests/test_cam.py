"""Device-side CAM pieces (connected components, box masks, GradCAM, affinity, PAR) against straightforward CPU
references (SciPy connected components, loops)."""

import numpy as np
import pytest
import torch
from reference_weclip import reference_box_mask, reference_normalize, reference_par, reference_transition
from scipy import ndimage
from torch.overrides import TorchFunctionMode

import weclip_hf.cam as weclip_cam
from weclip_hf import WeCLIPConfig
from weclip_hf.affinity import mean_attention_affinity, rfm_affinity, rfm_keep_rule, transition_matrix
from weclip_hf.cam import box_mask, box_threshold_mask, gradcam, minmax_normalize, refine_cams
from weclip_hf.connected_components import components_by_closure, components_by_propagation
from weclip_hf.par import par_refine
from weclip_hf.patch_grid import grid_neighbourhood


def _spiral(n: int) -> np.ndarray:
    """A one-cell-wide spiral: the worst case for label propagation (long geodesic path)."""
    grid = np.zeros((n, n), dtype=bool)
    top, left, bottom, right = 0, 0, n - 1, n - 1
    while top <= bottom and left <= right:
        grid[top, left : right + 1] = True
        grid[top : bottom + 1, right] = True
        grid[bottom, left : right + 1] = True
        grid[top + 2 : bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        if top <= bottom:
            grid[top - 1, left] = True
    return grid


@pytest.mark.parametrize("components", [components_by_propagation, components_by_closure])
def test_connected_components_match_scipy_8_connectivity(components):
    rng = np.random.default_rng(0)
    maps = [rng.random((13, 17)) > p for p in (0.3, 0.5, 0.7, 0.9)] + [
        np.zeros((13, 17), bool),
        _spiral(13)[:, :13],
    ]
    maps = [np.pad(m, ((0, 13 - m.shape[0]), (0, 17 - m.shape[1]))) for m in maps]
    binary = torch.from_numpy(np.stack(maps))
    labels = components(binary).numpy()
    for ours, m in zip(labels, maps):
        ref, n = ndimage.label(m, structure=np.ones((3, 3)))
        assert (ours >= 0).sum() == m.sum()
        # same partition: a bijection between our labels and SciPy's
        pairs = {(a, b) for a, b in zip(ours[m], ref[m])}
        assert len(pairs) == n == len({a for a, _ in pairs})


@pytest.mark.parametrize("components", [components_by_propagation, components_by_closure])
def test_connected_components_follow_a_snake_filling_the_grid(components):
    """A one-cell-wide snake over a 16 x 16 grid is one component whose far end lies 120 steps from its first
    cell: the closure's ceil(log2(h * w)) squarings reach it (two squarings fewer reach 64 steps only)."""
    snake = torch.zeros(1, 16, 16, dtype=torch.bool)
    snake[0, ::2] = True
    snake[0, 1::4, -1] = True  # the turns, right then left
    snake[0, 3::4, 0] = True
    labels = components(snake)
    assert torch.equal(labels, torch.where(snake, 0, -1))


@pytest.mark.parametrize("components", [components_by_propagation, components_by_closure])
@pytest.mark.parametrize("seed", range(5))
def test_box_mask_matches_cpu_reference(seed, components, monkeypatch):
    monkeypatch.setattr(weclip_cam, "connected_components", components)  # the accelerator path on the CPU too
    rng = np.random.default_rng(seed)
    # smooth random CAMs give blob-like regions, several per map, some touching the border
    cams = np.stack([ndimage.gaussian_filter(rng.random((20, 20)), 1.5) for _ in range(8)]).astype(np.float32)
    cams = np.stack([reference_normalize(reference_normalize(c)) for c in cams])
    ours = box_mask(box_threshold_mask(torch.from_numpy(cams), 0.4)).numpy()
    ref = np.stack([reference_box_mask(c, 0.4) for c in cams])
    np.testing.assert_array_equal(ours, ref)


def test_minmax_normalize_takes_each_map_whole():
    """The minimum and maximum are those of each [h, w] map (DESIGN Part 1, CAM step 2), not of each row."""
    maps = torch.tensor([[[1.0, 2.0], [3.0, 5.0]], [[-2.0, 0.0], [2.0, 6.0]]])
    expected = torch.tensor([[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.25], [0.5, 1.0]]])
    torch.testing.assert_close(minmax_normalize(maps), expected)


def test_refined_cams_are_normalized_then_upsampled_bilinearly_without_aligned_corners():
    """DESIGN Part 1, CAM step 6: per-pair min-max normalization, then bilinear (align_corners=False) upsampling."""
    refined = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(0)) * 5
    expected = torch.nn.functional.interpolate(
        minmax_normalize(refined)[:, None], size=(12, 16), mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(weclip_cam.upsample_normalized(refined, (12, 16)), expected, rtol=0, atol=0)


def test_box_mask_edge_quirk_and_empty_cam():
    cam = torch.zeros(2, 6, 6)
    cam[0, 4:, 4:] = 1.0  # region touching the bottom-right corner: loses its last row/column
    mask = box_mask(box_threshold_mask(cam, 0.4))
    expected = torch.zeros(6, 6)
    expected[4:5, 4:5] = 1
    assert torch.equal(mask[0], expected)
    assert mask[1].sum() == 0  # an all-zero CAM gives an empty mask


def test_box_threshold_uses_truncated_uint8_peak():
    cam = torch.tensor([[[0.0, 0.40, 0.398, 0.997]]])  # peak 254 -> threshold int(0.4 * 254) = 101
    assert box_threshold_mask(cam, 0.4).tolist() == [[[False, True, False, True]]]  # 102 > 101, 101 !> 101


class _NoFloat64(TorchFunctionMode):
    """Fails on any float64 tensor made (Apple's MPS has no float64)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        assert not (isinstance(out, torch.Tensor) and out.dtype == torch.float64), func
        return out


def test_box_threshold_mask_needs_no_float64_and_thresholds_as_the_official_float64_product():
    """The threshold was computed as peak.double() * threshold on the CAMs' device, which fails on Apple's MPS."""
    cams = torch.rand(64, 5, 7, generator=torch.Generator().manual_seed(0))
    for threshold in (0.4, 0.35, 0.7, 0.9):
        with _NoFloat64():
            ours = box_threshold_mask(cams, threshold)
        cam_u8 = (cams * 255).floor()
        peaks = cam_u8.amax(dim=(-2, -1)).long().tolist()
        expected = cam_u8 > torch.tensor([int(threshold * p) for p in peaks], dtype=cams.dtype)[:, None, None]
        assert torch.equal(ours, expected), threshold
    # a diverged run's CAMs: a NaN (or inf) peak gives no box, as the float64 product's NaN threshold did (the
    # table lookup indexed out of its range: an IndexError on the CPU, a device-side assert on CUDA)
    diverged = cams[:3].clone()
    diverged[0, 0, 0], diverged[1, 0, 0] = float("nan"), float("inf")
    assert not box_threshold_mask(diverged, 0.4)[:2].any() and torch.equal(
        box_threshold_mask(diverged, 0.4)[2], box_threshold_mask(cams[2:3], 0.4)[0]
    )


def test_gradcam_and_normalization():
    g = torch.Generator().manual_seed(0)
    acts, grads = torch.randn(3, 12, 8, generator=g), torch.randn(3, 12, 8, generator=g)
    cams = gradcam(acts, grads, (3, 4))
    for p in range(3):
        w = grads[p].mean(0)
        ref = torch.relu(acts[p] @ w).reshape(3, 4).numpy()
        np.testing.assert_allclose(cams[p].numpy(), reference_normalize(reference_normalize(ref)), atol=1e-6)
    assert torch.isfinite(minmax_normalize(torch.zeros(2, 3, 3))).all()  # constant CAM: no division by zero


def test_gradcam_normalizes_twice_as_the_official_code():
    """A hand-computed CAM [0, 1.6078432, 4] (channel weight 1): 4 + 1e-7 rounds to 4 in float32, so the first
    min-max pass gives a peak of exactly 1 and the second 1 / float32(1 + 1e-7) = 1 / (1 + 2^-23) = 1 - 2^-23. Its
    uint8 peak is then 254, not 255: the box threshold is int(0.4 * 254) = 101 and the middle cell (uint8 102) is in
    the mask; after one pass the threshold would be int(0.4 * 255) = 102 and the cell out."""
    activations = torch.tensor([[[0.0], [1.6078432], [4.0]]])  # [P=1, N=3, D=1]
    cams = gradcam(activations, torch.ones(1, 3, 1), (1, 3))
    assert float(cams[0, 0, 2]) == 1 - 2**-23
    assert (cams * 255).floor().tolist() == [[[0.0, 102.0, 254.0]]]
    assert box_threshold_mask(cams, 0.4).tolist() == [[[False, True, True]]]


def test_transition_matrix_matches_reference():
    aff = torch.rand(2, 30, 30, generator=torch.Generator().manual_seed(0))
    ours = transition_matrix(aff)
    for b in range(2):
        torch.testing.assert_close(ours[b], reference_transition(aff[b]), rtol=1e-5, atol=1e-7)


def test_par_matches_conv_reference():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 20, 18, generator=g)
    scores = torch.rand(2, 3, 20, 18, generator=g)
    ours = par_refine(image, scores, [1, 2, 4], num_iter=4)
    for b in range(2):
        ref = reference_par(image[b : b + 1], scores[b : b + 1], [1, 2, 4], 4)
        torch.testing.assert_close(ours[b : b + 1], ref, rtol=1e-5, atol=1e-6)


def test_par_of_an_image_with_a_flat_region_stays_finite_and_matches_the_reference():
    """Where all ring neighbours share one colour (zero padding, a uniform background) their std is 0: the 1e-8 in
    ``|I_n - I| / (sd + 1e-8)`` makes the colour term 0 there (uniform weights), where 0 / 0 would spread NaN."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 24, 24, generator=g)
    image[..., 8:, 8:] = 0.5
    scores = torch.rand(1, 2, 24, 24, generator=g)
    ours = par_refine(image, scores, [1, 2], num_iter=3)
    assert ours.isfinite().all()
    torch.testing.assert_close(ours, reference_par(image, scores, [1, 2], 3), rtol=1e-5, atol=1e-6)


def test_par_takes_dilations_in_any_order():
    """The config takes PAR dilations in any order (`check_dilations`): the padding covers the largest wherever it
    stands in the list, and PAR refines as the reference's dilated convolutions do."""
    g = torch.Generator().manual_seed(0)
    image, scores = torch.randn(1, 3, 20, 18, generator=g), torch.rand(1, 2, 20, 18, generator=g)
    torch.testing.assert_close(
        par_refine(image, scores, [4, 1, 2], num_iter=3),
        reference_par(image, scores, [4, 1, 2], 3),
        rtol=1e-5,
        atol=1e-6,
    )


def test_par_defaults_are_the_configs():
    """`par_refine` called without settings refines as a default `WeCLIPConfig` (20 iterations, w1 0.3, w2 0.01)."""
    config = WeCLIPConfig()
    g = torch.Generator().manual_seed(0)
    image, scores = torch.randn(1, 3, 12, 12, generator=g), torch.rand(1, 2, 12, 12, generator=g)
    settings = dict(
        num_iter=config.par_num_iter, temperature=config.par_temperature, pos_weight=config.par_pos_weight
    )
    torch.testing.assert_close(
        par_refine(image, scores, [1, 2]), par_refine(image, scores, [1, 2], **settings), rtol=0, atol=0
    )


def test_par_refines_half_precision_inputs_in_float32():
    """Images and scores in bfloat16 (a model run in half precision) are refined in float32: as their float32 copies."""
    g = torch.Generator().manual_seed(0)
    image, scores = torch.randn(1, 3, 12, 12, generator=g), torch.rand(1, 2, 12, 12, generator=g)
    image, scores = image.bfloat16(), scores.bfloat16()
    refined = par_refine(image, scores, [1, 2], num_iter=3)
    assert refined.dtype == torch.float32
    torch.testing.assert_close(
        refined, par_refine(image.float(), scores.float(), [1, 2], num_iter=3), rtol=0, atol=0
    )


def test_rfm_keeps_layers_with_mass_above_mean():
    maps = torch.rand(1, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    maps[0, 1] += 1.0  # largest patch-to-patch mass -> smallest d -> kept
    a_dec = torch.rand(1, 5, 5)
    out = rfm_affinity(torch.cat([torch.rand(1, 2, 5, 5) + 9.0, maps], dim=1), 4, a_dec)  # last 4 maps only
    expected_d = torch.stack([(a_dec[0] - maps[0, i]).sum() for i in range(4)])
    torch.testing.assert_close(out.rfm_distance[0], expected_d)
    assert out.rfm_keep[0].tolist() == (expected_d <= expected_d.mean()).tolist() and out.rfm_keep[0, 1]
    kept = maps[0, out.rfm_keep[0]]
    torch.testing.assert_close(out.affinity[0], kept.sum(0) / (len(kept) + 1e-5) * a_dec[0])


def test_rfm_always_keeps_the_closest_map_where_the_float32_mean_rounds_below_every_d():
    """Six nearly equal d (measured in a benchmark run with a saturated decoder affinity): their float32 mean
    rounds below all of them, so the official rule keeps no map (zero affinity, NaN CAMs); ours keeps the
    smallest d, and gives the official choice wherever that keeps one."""
    d = torch.tensor([[152760.28125, 152760.296875, 152760.28125, 152760.28125, 152760.296875, 152760.28125]])
    assert not (d <= d.mean(dim=1, keepdim=True)).any()  # the official rule alone
    assert rfm_keep_rule(d).tolist() == [[True, False, True, True, False, True]]
    g = torch.Generator().manual_seed(0)
    spread = torch.rand(50, 6, generator=g) * 100
    torch.testing.assert_close(
        rfm_keep_rule(spread), spread <= spread.mean(dim=1, keepdim=True), rtol=0, atol=0
    )


def test_attention_mean_uses_the_last_maps_and_refuses_a_count_it_lacks():
    maps = torch.rand(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    out = mean_attention_affinity(maps, 3)
    torch.testing.assert_close(out.affinity, maps[:, 1:].mean(dim=1))
    assert out.rfm_keep is None and out.rfm_distance is None
    for num_maps in (0, 5):
        with pytest.raises(ValueError, match="num_maps must be between 1 and the 4 attention maps"):
            mean_attention_affinity(maps, num_maps)
    with pytest.raises(ValueError, match="num_maps"):
        rfm_affinity(maps, 5, torch.rand(2, 6, 6))


def test_refine_cams_propagates_masked_cams_per_image():
    g = torch.Generator().manual_seed(0)
    cams, masks = torch.rand(3, 2, 3, generator=g), (torch.rand(3, 2, 3, generator=g) > 0.5).float()
    transition = torch.rand(2, 6, 6, generator=g)
    pair_image = torch.tensor([1, 0, 1])
    refined = refine_cams(cams, transition, pair_image, masks)
    for p, b in enumerate(pair_image.tolist()):
        expected = (transition[b] * masks[p].reshape(1, -1)) @ cams[p].reshape(-1)
        torch.testing.assert_close(refined[p], expected.reshape(2, 3))
    # no mask = a mask of ones (WeCLIP+ on VOC propagates without box masks)
    torch.testing.assert_close(
        refine_cams(cams, transition, pair_image),
        refine_cams(cams, transition, pair_image, torch.ones_like(cams)),
    )


def test_grid_neighbourhood_is_the_chebyshev_ball():
    h, w, radius = 4, 5, 2
    near = grid_neighbourhood(h, w, radius)
    for i in range(h * w):
        for j in range(h * w):
            assert bool(near[i, j]) == (max(abs(i // w - j // w), abs(i % w - j % w)) <= radius)


def test_rfm_keeps_a_layer_whose_distance_equals_the_mean():
    """The RFM keeps the layers with d <= mean(d): a tie with the mean is kept."""
    assert rfm_keep_rule(torch.tensor([[1.0, 2.0, 3.0]])).tolist() == [[True, True, False]]


def test_par_refine_resizes_smaller_scores_with_aligned_corners():
    """Scores smaller than the image are resized bilinearly with align_corners=True (as the official PAR)."""
    from weclip_hf.par import par_refine

    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 32, 32, generator=g)
    small = torch.rand(1, 2, 8, 8, generator=g)
    resized = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=True)
    torch.testing.assert_close(par_refine(image, small, [1, 2], 3), par_refine(image, resized, [1, 2], 3))


def test_rfm_affinity_runs_in_float32_on_a_detached_decoder_affinity():
    """The RFM statistic and average are float32 whatever the maps' dtype (bfloat16 maps: as their float32 copies),
    and the decoder affinity is detached: the pseudo labels send no gradient into the decoder through the RFM."""
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 3, 6, 6, generator=g).bfloat16()
    a_dec = torch.rand(2, 6, 6, generator=g).requires_grad_()
    out = rfm_affinity(maps, 3, a_dec)
    assert out.affinity.dtype == torch.float32 and not out.affinity.requires_grad
    torch.testing.assert_close(out.affinity, rfm_affinity(maps.float(), 3, a_dec).affinity, rtol=0, atol=0)


def test_par_of_an_image_with_a_nearly_flat_region_adds_1e_8_to_the_std():
    """Where the neighbours' colours differ by ~1e-7 (around 0, where float32 resolves such steps), the official
    ``sd + 1e-8`` shapes the colour weights: another epsilon (1e-6 or 1e-9) refines to other scores."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 16, 16, generator=g)
    image[..., 4:, 4:] = 1e-7 * torch.randn(1, 3, 12, 12, generator=g)
    scores = torch.rand(1, 2, 16, 16, generator=g)
    ours = par_refine(image, scores, [1, 2], num_iter=3)
    torch.testing.assert_close(ours, reference_par(image, scores, [1, 2], 3), rtol=1e-5, atol=1e-6)

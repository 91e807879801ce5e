"""Tests of `weclip_hf.crf`: parameters and presets, the mean-field CRF against an exact O(N^2) reference,
and against `pydensecrf` (the C++ implementation WeCLIP evaluates with) where `pydensecrf2` is installed."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weclip_hf import crf
from weclip_hf.crf import (
    CRF_PRESETS,
    DEEPLAB,
    WECLIP,
    CRFParams,
    _class_chunks,
    _MeanFieldEnergy,
    _spatial_filter,
    crf_refine_labels,
    dense_crf,
)
from weclip_hf.permutohedral_lattice import build_lattice

ROOT = Path(__file__).resolve().parents[1]
VOC_MINI = ROOT.parent / "shared" / "data" / "voc-mini"
SIZE = 24
SMALL_XY = CRFParams(bi_xy_std=5.0, bi_rgb_std=20.0)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Small tensors: one intra-op thread avoids thread-pool contention on shared CPUs (restored after)."""
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


def exact_dense_crf(image: torch.Tensor, probs: torch.Tensor, params: CRFParams = WECLIP) -> torch.Tensor:
    """The same mean-field model with exact all-pairs Gaussian kernels (float64, O(N^2))."""
    num_classes, height, width = probs.shape
    ys, xs = torch.meshgrid(torch.arange(height).double(), torch.arange(width).double(), indexing="ij")
    position = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    colour = image.double().reshape(3, -1).T
    k_pos = torch.exp(-0.5 * torch.cdist(position, position) ** 2 / params.pos_xy_std**2)
    bi_features = torch.cat([position / params.bi_xy_std, colour / params.bi_rgb_std], dim=1)
    k_bi = torch.exp(-0.5 * torch.cdist(bi_features, bi_features) ** 2)
    n_pos, n_bi = k_pos.sum(1, keepdim=True).rsqrt(), k_bi.sum(1, keepdim=True).rsqrt()
    log_unary = probs.double().clamp_min(1e-5).log().reshape(num_classes, -1).T
    q = log_unary.softmax(dim=1)
    for _ in range(params.num_iters):
        messages = params.pos_w * n_pos * (k_pos @ (n_pos * q)) + params.bi_w * n_bi * (k_bi @ (n_bi * q))
        q = (log_unary + messages).softmax(dim=1)
    return q.T.reshape(num_classes, height, width)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a & b).sum() / (a | b).sum()).item()


# --------------------------------------------------------------------------------------------------
# Parameters


def test_presets_are_weclip_and_deeplab_evaluation_settings():
    assert dataclasses.astuple(WECLIP) == (10, 3.0, 3.0, 4.0, 64.0, 5.0, "lattice")
    assert dataclasses.astuple(DEEPLAB) == (10, 3.0, 1.0, 4.0, 67.0, 3.0, "lattice")
    assert CRFParams() == WECLIP and CRF_PRESETS == {"weclip": WECLIP, "deeplab": DEEPLAB}
    with pytest.raises(dataclasses.FrozenInstanceError):
        WECLIP.bi_xy_std = 1.0  # type: ignore[misc]


def test_defaults_and_overrides_are_the_params():
    image, mask = square_image(12)
    probs = blurred_probs(mask)
    default = dense_crf(image, probs)
    torch.testing.assert_close(default, dense_crf(image, probs, WECLIP), rtol=0, atol=0)
    deeplab = dense_crf(image, probs, DEEPLAB)
    torch.testing.assert_close(
        deeplab, dense_crf(image, probs, bi_xy_std=67.0, bi_rgb_std=3.0, pos_xy_std=1.0)
    )
    assert not torch.equal(default, deeplab)
    torch.testing.assert_close(
        crf_refine_labels(image, probs, DEEPLAB, num_iters=2),
        dense_crf(image, probs, dataclasses.replace(DEEPLAB, num_iters=2)).argmax(0),
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_iters": -1}, "num_iters"),
        ({"num_iters": 2.5}, "num_iters"),
        ({"num_iters": True}, "num_iters"),  # a bool is no iteration count
        ({"pos_xy_std": 0.0}, "pos_xy_std"),
        ({"bi_rgb_std": float("nan")}, "bi_rgb_std"),
        ({"bi_w": float("inf")}, "bi_w"),
        ({"pos_filter": "exact"}, "pos_filter"),
    ],
)
def test_invalid_params_name_the_field(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        CRFParams(**kwargs)


def test_unknown_override_and_wrong_params_type_raise():
    image, mask = square_image(8)
    probs = blurred_probs(mask)
    with pytest.raises(TypeError, match="sxy"):
        dense_crf(image, probs, sxy=3.0)
    with pytest.raises(TypeError, match="CRFParams"):
        dense_crf(image, probs, {"num_iters": 3})  # type: ignore[arg-type]


@pytest.mark.parametrize("script_of", ["evaluate", "segment"])
def test_script_flags_cover_every_param(script_of, capsys):
    """evaluate.py and segment.py take the same CRF flags (segment.py took only --crf_preset, so parameters tuned
    with evaluate.py could not segment a folder)."""
    from conftest import evaluate_module, example_module

    script = evaluate_module() if script_of == "evaluate" else example_module("segment")
    model = ["--model_name_or_path", "m"] + (
        ["--images", "x", "--output_dir", "o"] if script_of == "segment" else []
    )
    args = script.parse_args(model)
    assert args.crf_params == WECLIP
    flags = [
        "--crf",
        "--crf_preset",
        "deeplab",
        "--crf_num_iters",
        "5",
        "--crf_pos_w",
        "2",
        "--crf_pos_xy_std",
        "2",
        "--crf_bi_w",
        "5",
        "--crf_bi_xy_std",
        "50",
        "--crf_bi_rgb_std",
        "4",
        "--crf_pos_filter",
        "gaussian",
    ]
    args = script.parse_args([*model, *flags])
    assert args.crf_params == CRFParams(5, 2.0, 2.0, 5.0, 50.0, 4.0, "gaussian")
    assert script.parse_args([*model, "--crf", "--crf_preset", "deeplab"]).crf_params == DEEPLAB
    with pytest.raises(SystemExit):
        script.parse_args([*model, "--crf_bi_rgb_std", "4"])
    assert "--crf_bi_rgb_std acts only with --crf" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args([*model, "--crf", "--crf_bi_rgb_std", "0"])
    assert "`bi_rgb_std` must be a finite number > 0, got 0.0" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# The mean-field model


@pytest.mark.parametrize("params", [WECLIP, CRFParams(pos_filter="gaussian")], ids=["lattice", "gaussian"])
def test_shapes_dtypes_and_distribution(params: CRFParams):
    image, mask = square_image(16)
    images = torch.stack([image, image.flip(-1)]).to(torch.uint8)  # [2, 3, H, W] uint8
    probs = torch.stack([blurred_probs(mask), blurred_probs(mask.flip(-1))])
    probs = torch.cat([probs, torch.full_like(probs[:, :1], 0.1)], dim=1).softmax(dim=1)  # 3 classes
    refined = dense_crf(images, probs, params)
    assert refined.shape == probs.shape and refined.dtype == probs.dtype and refined.is_contiguous()
    assert torch.isfinite(refined).all() and (refined >= 0).all()
    torch.testing.assert_close(refined.sum(dim=1), torch.ones(2, 16, 16))
    labels = crf_refine_labels(images, probs, params, num_iters=3)
    assert labels.shape == (2, 16, 16) and labels.dtype == torch.long
    torch.testing.assert_close(dense_crf(images, probs, num_iters=0), probs.clamp(1e-5, 1).log().softmax(1))
    refined64 = dense_crf(images, probs.double(), params)
    assert refined64.dtype == torch.float64
    torch.testing.assert_close(refined64.float(), refined, atol=1e-4, rtol=0)


def test_batched_is_the_per_image_result():
    """Images of a batch get their own lattice blocks: the batched result is the per-image one."""
    image, mask = square_image(20)
    images = torch.stack([image, image.flip(-1), image.roll(5, -2)])
    probs = torch.stack(
        [blurred_probs(mask), blurred_probs(mask.flip(-1), shift=-3), blurred_probs(mask, blur=3)]
    )
    batched = dense_crf(images, probs)
    for i in range(3):
        torch.testing.assert_close(batched[i], dense_crf(images[i], probs[i]), atol=1e-6, rtol=0)


def test_deterministic():
    image, mask = square_image()
    probs = blurred_probs(mask)
    assert torch.equal(dense_crf(image, probs), dense_crf(image, probs))


def test_class_chunks_are_the_fewest_of_at_most_the_chunk_size(monkeypatch):
    """A VOC model's 21 classes are filtered in one pass, a COCO model's 81 in three of 27."""
    assert [(c.start, c.stop) for c in _class_chunks(21)] == [(0, 21)]
    assert [(c.start, c.stop) for c in _class_chunks(81)] == [(0, 27), (27, 54), (54, 81)]
    # exactly the chunk size is one pass, one class more two
    assert [(c.start, c.stop) for c in _class_chunks(32)] == [(0, 32)]
    assert [(c.start, c.stop) for c in _class_chunks(33)] == [(0, 16), (16, 33)]
    assert [(c.start, c.stop) for c in _class_chunks(64)] == [(0, 32), (32, 64)]
    monkeypatch.setattr(crf, "_CLASS_CHUNK", 3)
    assert [(c.start, c.stop) for c in _class_chunks(7)] == [(0, 2), (2, 4), (4, 7)]
    assert [(c.start, c.stop) for c in _class_chunks(1)] == [(0, 1)]


@pytest.mark.parametrize("params", [WECLIP, DEEPLAB, CRFParams(pos_filter="gaussian", pos_w=2.0)])
def test_one_pixel_follows_the_mean_field_update(params: CRFParams):
    """On one pixel each normalised kernel N k N is 1 (the kernels include the pixel itself), so the module's
    update is Q <- softmax(log P + (pos_w + bi_w) Q) from Q = softmax(log P), P clipped to [1e-5, 1]; float64
    probabilities are refined in float64."""
    probs = torch.tensor([0.7, 0.3 - 1e-7, 1e-7, 0.0], dtype=torch.float64)
    log_unary = probs.clamp(1e-5, 1).log()
    expected = log_unary.softmax(dim=0)
    for _ in range(params.num_iters):
        expected = (log_unary + (params.pos_w + params.bi_w) * expected).softmax(dim=0)
    image = torch.tensor([200, 40, 90], dtype=torch.uint8).view(3, 1, 1)
    refined = dense_crf(image, probs.view(4, 1, 1), params)
    torch.testing.assert_close(refined.view(4), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("params", [WECLIP, CRFParams(pos_filter="gaussian")], ids=["lattice", "gaussian"])
def test_classes_filtered_in_chunks_give_the_unchunked_result(monkeypatch, params: CRFParams, dtype):
    """Chunks of at most `_CLASS_CHUNK` classes are filtered (what bounds the memory), bit for bit as one."""
    image, mask = square_image()
    extra = torch.rand(5, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    probs = torch.cat([blurred_probs(mask), extra]).mul(4).softmax(dim=0).to(dtype)  # 7 classes
    unchunked = dense_crf(image, probs, params)
    monkeypatch.setattr(crf, "_CLASS_CHUNK", 3)
    widths, filter_values = [], F.embedding_bag  # the classes (columns) of every splat, blur and slice

    def embedding_bag(input: torch.Tensor, weight: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        widths.append(weight.shape[1])
        return filter_values(input, weight, *args, **kwargs)

    monkeypatch.setattr(F, "embedding_bag", embedding_bag)
    chunked = dense_crf(image, probs, params)
    assert max(widths) == 3, sorted(set(widths))
    assert torch.equal(chunked, unchunked)


@pytest.mark.parametrize("params", [WECLIP, DEEPLAB], ids=["weclip", "deeplab"])
def test_sharpens_blurred_shifted_mask_towards_image_edges(params: CRFParams):
    image, mask = square_image(ramp=0.0)
    probs = blurred_probs(mask)
    before = iou(probs.argmax(0) == 1, mask)
    after = iou(crf_refine_labels(image, probs, params) == 1, mask)
    assert after > before + 0.3 and after > 0.9, (before, after)


def test_spatial_filter_matches_exact_gaussian():
    values = torch.rand(1, 2, 12, 10, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij")
    position = torch.stack([xs, ys], dim=-1).reshape(-1, 2).double()
    kernel = torch.exp(-0.5 * torch.cdist(position, position) ** 2 / 1.5**2)
    exact = (kernel @ values.reshape(2, -1).T).T.reshape(1, 2, 12, 10)
    torch.testing.assert_close(_spatial_filter(values, 1.5), exact, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("params", [WECLIP, DEEPLAB, SMALL_XY], ids=["weclip", "deeplab", "small_xy"])
def test_lattice_message_close_to_exact(params: CRFParams):
    """Normalised appearance message N k_bi N Q: lattice vs exact all-pairs kernel."""
    image, mask = square_image()
    probs = blurred_probs(mask).double()
    q = probs.reshape(2, -1).T  # [N, 2]
    ys, xs = torch.meshgrid(torch.arange(SIZE).double(), torch.arange(SIZE).double(), indexing="ij")
    position = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    features = torch.cat(
        [position / params.bi_xy_std, image.double().reshape(3, -1).T / params.bi_rgb_std], 1
    )
    kernel = torch.exp(-0.5 * torch.cdist(features, features) ** 2)
    norm = kernel.sum(1, keepdim=True).rsqrt()
    exact = norm * (kernel @ (norm * q))
    energy = _MeanFieldEnergy([build_lattice(features[None])], [1.0], probs[None])
    approx = energy(q) - energy.log_unary
    error = (approx - exact).abs()
    assert error.mean() < 0.02 and error.max() < 0.15, (error.mean().item(), error.max().item())


@pytest.mark.parametrize(
    "params",
    [WECLIP, DEEPLAB, SMALL_XY, CRFParams(pos_filter="gaussian")],
    ids=["weclip", "deeplab", "small_xy", "weclip_gaussian"],
)
def test_dense_crf_close_to_exact_mean_field(params: CRFParams):
    image, mask = square_image()
    probs = blurred_probs(mask)
    approx = dense_crf(image, probs, params).double()
    exact = exact_dense_crf(image, probs, params)
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
    with pytest.raises(ValueError, match="too fine"):
        dense_crf(image, probs, bi_xy_std=1e-3, bi_rgb_std=1e-4)


# --------------------------------------------------------------------------------------------------
# Against pydensecrf (Krähenbühl & Koltun's C++ permutohedral lattice)


@pytest.fixture(scope="module")
def dcrf():
    """`pydensecrf.densecrf`, or a skip saying how to get it."""
    return pytest.importorskip(
        "pydensecrf.densecrf",
        reason="pydensecrf cannot be imported (`pip install pydensecrf2`, in the `dev` extra; it builds "
        "a C++ extension): the comparison with the reference CRF is skipped",
        exc_type=ImportError,  # also a build that does not load
    )


def pydensecrf_probs(
    dcrf, image: np.ndarray, probs: torch.Tensor, params: CRFParams = WECLIP
) -> torch.Tensor:
    """`[C, H, W]` pydensecrf probabilities for a `[H, W, 3]` uint8 image, called as WeCLIP's `crf_proc`."""
    num_classes, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    unary = -np.log(np.clip(probs.numpy(), 1e-5, 1.0)).reshape(num_classes, -1)  # unary_from_softmax
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    crf.addPairwiseBilateral(
        sxy=params.bi_xy_std, srgb=params.bi_rgb_std, rgbim=np.ascontiguousarray(image), compat=params.bi_w
    )
    return torch.from_numpy(np.array(crf.inference(params.num_iters))).reshape(num_classes, height, width)


def soft_inputs(labels: torch.Tensor, num_classes: int, hard: bool, seed: int = 0) -> torch.Tensor:
    """`[C, H, W]` probabilities of a label map: blurred (easy) or shifted by 10 px, blurred, noisy (hard)."""
    onehot = F.one_hot(labels.long(), num_classes).permute(2, 0, 1).float()[None]
    generator = torch.Generator().manual_seed(seed)
    if hard:
        onehot = torch.roll(onehot, shifts=(10, -10), dims=(2, 3))
        logits = 4 * F.avg_pool2d(onehot, 21, 1, 10, count_include_pad=False)
        logits = logits + 1.5 * torch.randn(logits.shape, generator=generator)
    else:
        logits = 6 * F.avg_pool2d(onehot, 15, 1, 7, count_include_pad=False)
        logits = logits + 0.5 * torch.randn(logits.shape, generator=generator)
    return logits.softmax(dim=1)[0]


@pytest.mark.parametrize("params", [WECLIP, DEEPLAB], ids=["weclip", "deeplab"])
def test_matches_pydensecrf_on_a_synthetic_image(dcrf, params: CRFParams):
    """Same lattice, same model: one iteration agrees to float32 rounding (measured <= 3e-6), ten to 1e-5
    on average (mean-field iterations amplify rounding where classes are close: max 3e-4 measured)."""
    image, mask = square_image(48, noise=6.0)
    image = image.round().to(torch.uint8)
    labels = mask.long() + (torch.arange(48)[None, :] > 40).long() * 2  # 3 classes
    for hard in (False, True):
        probs = soft_inputs(labels, 3, hard)
        one = dataclasses.replace(params, num_iters=1)
        reference = pydensecrf_probs(dcrf, image.permute(1, 2, 0).numpy(), probs, one)
        assert (dense_crf(image, probs, one) - reference).abs().max() < 1e-5
        reference = pydensecrf_probs(dcrf, image.permute(1, 2, 0).numpy(), probs, params)
        ours = dense_crf(image, probs, params)
        assert (ours - reference).abs().mean() < 1e-5 and (ours - reference).abs().max() < 2e-3
        assert torch.equal(ours.argmax(0), reference.argmax(0))


VOC_PHOTOS = ["vainf_0000", "vainf_0120", "vainf_0293", "vainf_0582"]


def test_matches_pydensecrf_on_voc_photos_batched(dcrf):
    """Four real photos (192x192 crops, 21 classes, WeCLIP's parameters), refined in one batch, against
    pydensecrf image by image: >= 99.95% equal labels for easy and hard inputs (all 14 photos at 513x513:
    BENCHMARKS.md)."""
    from conftest import require_data
    from PIL import Image

    require_data(VOC_MINI, "the voc-mini photos")

    crop = slice(160, 352)
    images, labels = [], []
    for name in VOC_PHOTOS:
        images.append(
            np.array(Image.open(VOC_MINI / "JPEGImages" / f"{name}.jpg").convert("RGB"))[crop, crop]
        )
        mask = np.array(Image.open(VOC_MINI / "SegmentationClass" / f"{name}.png"))[crop, crop]
        labels.append(torch.from_numpy(mask.astype(np.int64)))
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    for hard in (False, True):
        probs = torch.stack(
            [soft_inputs(torch.where(lab == 255, 0, lab), 21, hard, seed) for seed, lab in enumerate(labels)]
        )
        ours = dense_crf(batch, probs)
        for i, image in enumerate(images):
            reference = pydensecrf_probs(dcrf, image, probs[i])
            equal = (ours[i].argmax(0) == reference.argmax(0)).double().mean().item()
            assert equal >= 0.9995, (VOC_PHOTOS[i], hard, equal)
            assert (ours[i] - reference).abs().mean() < 1e-5


def test_benchmark_crf_mode_runs(tmp_path):
    """`examples/benchmark_crf.py` (ours vs pydensecrf, side by side) runs end to end on tiny inputs."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "crf.json"
    command = [
        sys.executable,
        str(ROOT / "examples" / "benchmark_crf.py"),
        "--device",
        "cpu",
        "--num_threads",
        "1",
        "--crf_size",
        "40",
        "--crf_count",
        "1",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--output_json",
        str(out),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "| input | size, classes | ours | pydensecrf |" in proc.stdout
    assert "| lattice, bilateral kernel (5-D) |" in proc.stdout
    result = json.loads(out.read_text())["crf"]
    rows = result["rows"]
    assert [row["input"] for row in rows] == ["synthetic_0 easy", "synthetic_0 hard", "first 2 as one batch"]
    if result["pydensecrf"]:  # installed: side by side, the same labels
        assert all(row["equal_labels"] == 1.0 and row["reference_seconds"] > 0 for row in rows[:2])


def test_benchmark_crf_leaves_out_photos_smaller_than_its_size(tmp_path, capsys):
    """A 375 x 300 photo at --crf_size 513 was timed as a 513 x 513 input with 213 black rows (PIL pads a crop
    larger than the image); its help said centre-cropped."""
    from conftest import example_module
    from PIL import Image

    benchmark_crf = example_module("benchmark_crf")
    for folder in ("JPEGImages", "SegmentationClass"):
        (tmp_path / folder).mkdir()
    for name, (width, height) in {"a_small": (30, 20), "b_large": (50, 40)}.items():
        Image.new("RGB", (width, height), (200, 10, 10)).save(tmp_path / "JPEGImages" / f"{name}.jpg")
        Image.new("L", (width, height), 1).save(tmp_path / "SegmentationClass" / f"{name}.png")
    args = benchmark_crf.parse_args(["--crf_images", str(tmp_path), "--crf_size", "32", "--crf_count", "2"])
    inputs = benchmark_crf.crf_inputs(args)
    assert [name for name, _, _ in inputs] == ["b_large easy", "b_large hard"]
    assert all(image.shape == (32, 32, 3) and image.min() > 0 for _, image, _ in inputs)  # no black padding
    assert "Note: a_small.jpg (30 x 20) is smaller than --crf_size 32: left out" in capsys.readouterr().out
    with pytest.raises(
        ValueError, match=r"No photo of .*JPEGImages is at least --crf_size 64 on each side\."
    ):
        benchmark_crf.crf_inputs(
            benchmark_crf.parse_args(["--crf_images", str(tmp_path), "--crf_size", "64"])
        )


def test_unary_clips_probabilities_at_1e_5():
    """The unary is -log(max(p, 1e-5)), as pydensecrf's unary_from_softmax (clip 1e-5)."""
    from weclip_hf.crf import dense_crf

    probs = torch.tensor([1 - 1e-7, 1e-7]).view(2, 1, 1).expand(2, 4, 4).clone()
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    expected = torch.tensor([1.0, 1e-5]).log().softmax(0).view(2, 1, 1).expand(2, 4, 4)
    # rtol only: the default tolerance would hide a clip at 1e-8
    torch.testing.assert_close(dense_crf(image, probs, num_iters=0), expected, rtol=1e-4, atol=0)


def test_logits_are_refused_and_a_unit_range_image_warned():
    """Logits in place of probabilities and a 0-1 image were refined without a word (another result)."""
    from weclip_hf.crf import dense_crf

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 8, generator=g) * 4
    image = torch.randint(0, 256, (3, 6, 8), generator=g, dtype=torch.uint8)
    with pytest.raises(
        ValueError, match=r"`probs` must be probabilities .* logits need `.softmax\(dim=-3\)` first"
    ):
        dense_crf(image, logits)
    probs = logits.softmax(dim=0)
    with pytest.warns(UserWarning, match=r"`image` holds values in \[0, 1\]: the CRF reads 0-255 RGB"):
        dense_crf(image.float() / 255, probs)
    assert dense_crf(image, probs).shape == probs.shape


def test_non_finite_values_and_images_of_another_scale_are_refused():
    """One NaN probability passed every check and the lattice spread it: the whole image came out class 0; a
    normalized image (values about -2..2.6) or a 16-bit one was refined on another colour scale without a word (a
    16-bit one failed "lattice is too fine"); a bfloat16 softmax (sums within ~3e-3 of 1) was refused as logits."""
    from weclip_hf.crf import dense_crf
    from weclip_hf.normalization import IMAGENET_NORMALIZATION

    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(4, 20, 30, generator=g) * 3).softmax(dim=0)
    image = torch.randint(0, 256, (3, 20, 30), generator=g, dtype=torch.uint8)
    nan = probs.clone()
    nan[:, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"^`probs` holds 4 NaN or infinite value\(s\) of 2400\.$"):
        dense_crf(image, nan)
    with pytest.raises(ValueError, match=r"^`image` holds 1 NaN or infinite value\(s\) of 1800\.$"):
        dense_crf(image.float().index_put_((torch.tensor([0]),) * 3, torch.tensor(float("inf"))), probs)
    for other, shown in (
        (IMAGENET_NORMALIZATION.normalize(image), r"\[-2\.\d+, 2\.\d+\]"),
        (image.float() * 257, r"\[0, 65535\]"),
    ):
        with pytest.raises(ValueError, match=r"`image` must hold RGB values in 0-255 \(uint8, or floats of that "
                           rf"range\), got values in {shown}: a normalized image goes back with "
                           r"`PixelNormalization\.denormalize`, a 16-bit one is divided by 257\."):  # fmt: skip
            dense_crf(other, probs)
    # the bounds: 255 is white, anything above it another scale
    assert dense_crf(torch.full((3, 20, 30), 255.0), probs, num_iters=0).shape == probs.shape
    # the values are shown as they are: 255.5 was "[256, 256]", probabilities up to 1.0002 "[0, 1]" (3 digits)
    with pytest.raises(
        ValueError, match=r"must hold RGB values in 0-255 .* got values in \[255\.5, 255\.5\]"
    ):
        dense_crf(torch.full((3, 20, 30), 255.5), probs, num_iters=0)
    above_one = probs.double().clone()
    above_one[:, 0, 0] = torch.tensor([1.0002, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"got values in \[0, 1\.0002\]: logits need"):
        dense_crf(image, above_one, num_iters=0)
    bf16 = (torch.randn(21, 40, 50, generator=g) * 3).bfloat16().softmax(dim=0)
    assert float((bf16.float().sum(0) - 1).abs().max()) > 1e-3  # beyond float32's tolerance
    black = torch.zeros(3, 40, 50, dtype=torch.uint8)
    assert dense_crf(black, bf16).shape == bf16.shape
    # a bfloat16 model's softmax cast up afterwards keeps its rounding (it was refused as "do not sum to 1")
    for upcast in (bf16.float(), bf16.half()):
        torch.testing.assert_close(
            dense_crf(black, upcast), dense_crf(black, bf16).to(upcast.dtype), atol=1e-2, rtol=0
        )
    with pytest.raises(ValueError, match=r"got values in \[.*\]: they do not sum to 1\.$"):
        dense_crf(image, probs / 2)


def test_image_and_probs_on_two_devices_are_refused():
    """`image` and `probs` must share a device ("meta" stands in for an accelerator)."""
    from weclip_hf.crf import dense_crf

    probs = torch.full((2, 4, 5), 0.5)
    with pytest.raises(ValueError, match=r"`image` is on meta and `probs` on cpu; use one device\."):
        dense_crf(torch.zeros(3, 4, 5, device="meta"), probs)


def test_exact_smoothness_kernel_is_truncated_at_four_stds():
    """`pos_filter="gaussian"` filters with the Gaussian truncated at 4 std (module docstring): an impulse's
    response is exp(-k^2 / (2 std^2)) out to 4 std and zero past it."""
    from weclip_hf.crf import _spatial_filter

    impulse = torch.zeros(1, 1, 1, 21, dtype=torch.float64)
    impulse[..., 10] = 1.0
    response = _spatial_filter(impulse, 2.0)[0, 0, 0]
    offsets = torch.arange(-10, 11, dtype=torch.float64)
    expected = torch.where(offsets.abs() <= 8, torch.exp(-(offsets**2) / 8), 0.0)
    torch.testing.assert_close(response, expected, rtol=1e-12, atol=0)


def test_probabilities_that_need_gradients_refine_without_a_warning():
    """``dense_crf(image, logits.softmax(0))`` with logits that need gradients made torch warn about converting
    such a tensor to a Python number (the input checks); the result is the detached one's, without gradients."""
    from weclip_hf.crf import crf_refine_labels, dense_crf

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 12, 16, generator=g) * 3).requires_grad_()
    image = torch.randint(0, 256, (3, 12, 16), generator=g, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refined = dense_crf(image, logits.softmax(0))
        labels = crf_refine_labels(image, logits.softmax(0))
    assert not refined.requires_grad
    torch.testing.assert_close(refined, dense_crf(image, logits.detach().softmax(0)), rtol=0, atol=0)
    assert torch.equal(labels, refined.argmax(0))

"""Cache blocking on CPUs (weclip_hf.chunking): the chunked pseudo-label work equals the whole-batch work."""

import dataclasses
from unittest import mock

import pytest
import torch
from conftest import make_tiny_config

import weclip_hf.chunking as chunking
import weclip_hf.par as par
import weclip_hf.pseudo_labels as pseudo_labels
from weclip_hf import WeCLIPForSemanticSegmentation
from weclip_hf.chunking import (
    CPU_ATTENTION_CHUNK_BYTES,
    CPU_CHUNK_BYTES,
    batch_chunks,
    concat_chunks,
    images_per_chunk,
)
from weclip_hf.pseudo_labels import plan_pairs

LABELS = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 1], [0, 1, 0, 0]])


def test_images_per_chunk_fits_the_budget_on_cpus_only():
    assert images_per_chunk(16, 8, "cpu", budget=32) == 4
    assert images_per_chunk(16, 100, "cpu", budget=32) == 1  # at least one image
    assert images_per_chunk(3, 1, "cpu", budget=32) == 3  # never more than the batch
    assert images_per_chunk(3, 0, "cpu", budget=32) == 3  # nothing per image (no classes): the whole batch
    assert images_per_chunk(16, 100, "meta", budget=32) == 16  # an accelerator gets the whole batch
    assert images_per_chunk(16, 100, torch.device("cuda"), budget=32) == 16  # any device but the CPU


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the int() of the traced batch size
def test_images_per_chunk_is_the_whole_batch_while_a_graph_is_captured():
    """A chunk count computed from the batch size would fix the traced graph's batch: `torch.jit.trace` for
    real, torch.compile and torch.export through the flags `is_capturing_graph` reads."""
    seen = []

    def record(x: torch.Tensor) -> torch.Tensor:
        # traced, the batch size (and so the whole batch's count) is a 0-d tensor
        seen.append(int(images_per_chunk(x.shape[0], 100, "cpu", budget=32)))
        return x * 2

    torch.jit.trace(record, torch.ones(16), check_trace=False)
    for flag in ("is_compiling", "is_exporting"):
        with mock.patch.object(torch.compiler, flag, return_value=True):
            seen.append(images_per_chunk(16, 100, "cpu", budget=32))
    assert seen == [16, 16, 16]
    assert images_per_chunk(16, 100, "cpu", budget=32) == 1  # eager: chunked


def test_batch_chunks_and_concat_chunks_pass_a_single_chunk_through():
    """One chunk holding the batch is the batch itself, in and out (no split, no copy); no chunks concatenate to
    None."""
    x = torch.arange(12.0).reshape(4, 3)
    assert batch_chunks(x, 4)[0] is x and batch_chunks(x, 5)[0] is x
    assert [len(c) for c in batch_chunks(x, 3)] == [3, 1]
    assert concat_chunks([x]) is x
    assert torch.equal(concat_chunks(batch_chunks(x, 3)), x)
    assert concat_chunks([]) is None


@pytest.fixture
def model():
    torch.manual_seed(0)
    return WeCLIPForSemanticSegmentation(make_tiny_config(attention_num_maps=2, rfm_num_maps=3)).eval()


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_clip_features_and_gradcams_equal_the_whole_batch(model, chunk, monkeypatch):
    pixel_values = torch.randn(5, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    plan = plan_pairs(LABELS, "cpu")
    whole = model.forward_clip_features(pixel_values, 2, output_attentions=True)
    whole_cams = model.pair_gradcams(whole.hidden[-1], plan, whole.grid)
    monkeypatch.setattr(chunking, "images_per_chunk", lambda num_images, *args, **kwargs: chunk)
    chunked = model.forward_clip_features(pixel_values, 2, output_attentions=True)
    chunked_cams = model.pair_gradcams(whole.hidden[-1], plan, whole.grid)
    for ours, expected in zip(
        (*chunked.hidden, *chunked.attention, *chunked.head_attentions),
        (*whole.hidden, *whole.attention, *whole.head_attentions),
    ):
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked_cams.cams, whole_cams.cams, rtol=0, atol=1e-6)
    # as test_pseudo_labels' per-pair comparison: float32 sums in another order, amplified by the logit scale
    torch.testing.assert_close(chunked_cams.text_probs, whole_cams.text_probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked_cams.last_attention, whole_cams.last_attention, rtol=0, atol=1e-7)


def test_chunked_par_equals_the_whole_batch(monkeypatch):
    g = torch.Generator().manual_seed(0)
    image, scores = torch.randn(5, 3, 20, 18, generator=g), torch.rand(5, 3, 20, 18, generator=g)
    whole = par.par_refine(image, scores, [1, 2, 4], num_iter=4)
    asked = []

    def two_images(num_images, bytes_per_image, device, **kwargs):
        asked.append(bytes_per_image)
        return 2

    monkeypatch.setattr(par, "images_per_chunk", two_images)
    torch.testing.assert_close(par.par_refine(image, scores, [1, 2, 4], num_iter=4), whole, rtol=0, atol=1e-6)
    assert asked == [3 * 8 * 20 * 18 * 4]  # sized by the neighbour weights: 8 per dilation, float32


def test_the_model_sizes_its_chunks_by_the_attention_maps(model, monkeypatch):
    """The model asks for chunks of [heads, T, T] float32 maps per image within its attention budget; ViT-B/16
    at a 320 crop (T = 401, 12 heads, 7.7 MB per image): 4 images per chunk on a CPU, the whole batch elsewhere."""
    assert images_per_chunk(16, 12 * 401 * 401 * 4, "cpu", CPU_ATTENTION_CHUNK_BYTES) == 4
    assert images_per_chunk(16, 12 * 401 * 401 * 4, "meta", CPU_ATTENTION_CHUNK_BYTES) == 16
    asked = []

    def recording(num_images, bytes_per_image, device, budget=CPU_CHUNK_BYTES):
        asked.append((num_images, bytes_per_image, budget))
        return images_per_chunk(num_images, bytes_per_image, device, budget)

    monkeypatch.setattr(chunking, "images_per_chunk", recording)
    pixel_values = torch.randn(5, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    features = model.forward_clip_features(pixel_values, 2)
    model.pair_gradcams(features.hidden[-1], plan_pairs(LABELS, "cpu"), features.grid)
    heads, tokens = model.config.vision_config.num_attention_heads, 1 + 3 * 4
    assert asked == [(5, heads * tokens * tokens * 4, CPU_ATTENTION_CHUNK_BYTES)] * 2


@pytest.mark.parametrize("use_rfm", [False, True])
@pytest.mark.parametrize("method", ["weclip", "weclip_plus"])
def test_chunked_pseudo_labels_agree_with_the_whole_batch(method, use_rfm, monkeypatch):
    """End to end (CLIP features, GradCAM, affinity, PAR, labels) one image per chunk against the whole batch:
    refined CAMs equal up to float32 summation order, pseudo labels except at near-ties (measured here: 100% for
    WeCLIP, 99.95% / 99.97% for WeCLIP+ with RFM on / off; a wrong split would change whole images)."""
    from conftest import make_tiny_plus_config

    from weclip_hf import WeCLIPPlusForSemanticSegmentation

    torch.manual_seed(0)
    if method == "weclip":
        model = WeCLIPForSemanticSegmentation(make_tiny_config(attention_num_maps=2, rfm_num_maps=3)).eval()
    else:
        model = WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config()).eval()
    pixel_values = torch.randn(5, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(pixel_values=pixel_values, class_labels=LABELS, use_rfm=use_rfm)
        monkeypatch.setattr(chunking, "images_per_chunk", lambda num_images, *args, **kwargs: 1)
        monkeypatch.setattr(par, "images_per_chunk", lambda num_images, *args, **kwargs: 1)  # PAR too
        chunked = model(pixel_values=pixel_values, class_labels=LABELS, use_rfm=use_rfm)
    # the GradCAMs agree to ~1e-6 (above); the min-max normalisations of the nearly flat CAMs of random weights
    # amplify that (measured: at most 9.4e-4 of a [0, 1] range)
    torch.testing.assert_close(chunked.cams, whole.cams, rtol=0, atol=2e-3)
    agreement = (chunked.pseudo_labels == whole.pseudo_labels).float().mean().item()
    assert agreement >= 0.995, agreement


def test_chunked_gradcams_need_pairs_ordered_by_image(model):
    plan = plan_pairs(LABELS, "cpu")
    shuffled = dataclasses.replace(plan, image=plan.image.flip(0))
    tokens = torch.randn(5, 13, model.config.vision_config.hidden_size)
    with pytest.raises(ValueError, match="plan.image must be sorted"):
        pseudo_labels.pair_gradcams(
            model.last_block_pair_embeddings,
            tokens,
            model.class_text_embeds,
            model.background_text_embeds,
            model.logit_scale,
            shuffled,
            (3, 4),
            chunk_size=2,
        )


@pytest.mark.parametrize("chunk_size", [0, -2])
def test_pair_gradcams_refuse_a_chunk_size_below_one(model, chunk_size):
    """0 or a negative chunk size is refused (None runs the whole batch at once), not run one image at a time."""
    tokens = torch.randn(5, 13, model.config.vision_config.hidden_size)
    text = (model.class_text_embeds, model.background_text_embeds, model.logit_scale)
    with pytest.raises(ValueError, match=rf"chunk_size must be at least 1 \(got {chunk_size}\); None runs"):
        pseudo_labels.pair_gradcams(
            model.last_block_pair_embeddings,
            tokens,
            *text,
            plan_pairs(LABELS, "cpu"),
            (3, 4),
            chunk_size=chunk_size,
        )


@pytest.mark.parametrize("chunk_size", [1, 2])
def test_pair_gradcams_run_the_last_block_on_chunk_size_images_with_their_own_most_classes(model, chunk_size):
    """``chunk_size`` images per call of the last block, each call told the most classes of one of its own images
    (`LastBlockPairs`: the most pairs of one image), not the batch's."""
    plan = plan_pairs(LABELS, "cpu")
    calls = []

    def recording(tokens, pair_image, slots):
        calls.append((tokens.shape[0], slots[1]))
        return model.last_block_pair_embeddings(tokens, pair_image, slots)

    tokens = torch.randn(
        5, 13, model.config.vision_config.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    text = (model.class_text_embeds, model.background_text_embeds, model.logit_scale)
    pseudo_labels.pair_gradcams(recording, tokens, *text, plan, (3, 4), chunk_size=chunk_size)
    counts = LABELS.sum(1).tolist()  # 2, 1, 0, 3, 1 classes
    chunks = [counts[start : start + chunk_size] for start in range(0, 5, chunk_size)]
    assert calls == [(len(chunk), max(chunk)) for chunk in chunks]


def _reference_segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The balanced CE written with autograd's own ops (the full-resolution scores kept for the backward)."""
    up = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    ce = torch.nn.functional.cross_entropy(up, labels, ignore_index=255, reduction="none")
    bg, fg = labels == 0, (labels != 0) & (labels != 255)
    return 0.5 * ce[bg].mean() + 0.5 * ce[fg].mean()


@pytest.mark.parametrize("chunk", [None, 1, 2])
def test_segmentation_loss_and_gradient_in_chunks_equal_autograd(chunk, monkeypatch):
    """The CE remakes the upsampled scores in its backward, a chunk of images at a time: its value and gradient
    equal autograd's through the kept scores (float64), whatever the chunking."""
    import weclip_hf.losses as losses

    if chunk is not None:
        monkeypatch.setattr(losses, "images_per_chunk", lambda num_images, *args, **kwargs: chunk)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (5, 24, 20), generator=g)
    labels[1, :6] = 255
    labels[3] = 0
    ours = losses.segmentation_loss(logits, labels)
    expected = _reference_segmentation_loss(logits, labels)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        torch.autograd.grad(ours, logits)[0], torch.autograd.grad(expected, logits)[0], rtol=1e-10, atol=1e-14
    )


def test_upsampled_cross_entropy_passes_gradcheck():
    from weclip_hf.losses import _UpsampledCrossEntropy

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 12, 15), generator=g)
    weights = torch.rand(2, 12, 15, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: _UpsampledCrossEntropy.apply(z, target, weights), (logits,))


@pytest.mark.parametrize("images_per_chunk", [1, 2])
def test_par_refines_only_the_maps_in_use(images_per_chunk, monkeypatch):
    """Maps past an image's ``num_maps`` are zero and stay zero under PAR: skipping them (one image per chunk, or
    two whose counts differ: the chunk refines as many maps as its image with the most) gives the result of
    refining every map exactly."""
    g = torch.Generator().manual_seed(2)
    image, scores = torch.randn(3, 3, 20, 18, generator=g), torch.rand(3, 4, 20, 18, generator=g)
    num_maps = torch.tensor([2, 4, 1])
    scores[0, 2:] = 0
    scores[2, 1:] = 0
    monkeypatch.setattr(par, "images_per_chunk", lambda num_images, *args, **kwargs: images_per_chunk)
    every_map = par.par_refine(image, scores, [1, 2, 4], num_iter=4)
    skipped = par.par_refine(image, scores, [1, 2, 4], num_iter=4, num_maps=num_maps)
    torch.testing.assert_close(skipped, every_map, rtol=0, atol=0)
    assert (skipped[0, 2:] == 0).all() and (skipped[2, 1:] == 0).all()


def test_par_computes_no_weights_for_a_chunk_without_maps(monkeypatch):
    """An image with no map in use (no class: its margins are all 0) is returned as is, its weights never made."""
    g = torch.Generator().manual_seed(3)
    image, scores = torch.randn(3, 3, 12, 10, generator=g), torch.rand(3, 2, 12, 10, generator=g)
    scores[1] = 0
    made = []
    affinity = par.par_affinity
    monkeypatch.setattr(par, "images_per_chunk", lambda num_images, *args, **kwargs: 1)
    monkeypatch.setattr(
        par, "par_affinity", lambda image, *args: made.append(len(image)) or affinity(image, *args)
    )
    refined = par.par_refine(image, scores, [1, 2], num_iter=3, num_maps=torch.tensor([2, 0, 1]))
    assert made == [1, 1]  # images 0 and 2 only
    assert (refined[1] == 0).all() and torch.equal(refined[2, 1], scores[2, 1])
    torch.testing.assert_close(refined[0], par.par_refine(image[:1], scores[:1], [1, 2], num_iter=3)[0])

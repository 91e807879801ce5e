"""The pseudo-label stages (weclip_hf.pseudo_labels): pair plan, map count, GradCAM batching, candidate maps,
scores and labels. The whole chain against the per-image reference is in test_modeling.py."""

import pytest
import torch
from conftest import make_tiny_config
from reference_weclip import last_block_image_embedding

from weclip_hf import WeCLIPForSemanticSegmentation, par
from weclip_hf.cam import gradcam, minmax_normalize
from weclip_hf.par import par_refine
from weclip_hf.pseudo_labels import (
    attention_maps_needed,
    background_margins,
    cam_affinity,
    class_scores,
    dense_class_cams,
    labels_from_margins,
    labels_from_scores,
    pair_gradcams,
    patch_attention_maps,
    plan_pairs,
)

LABELS = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 1]])


@pytest.fixture
def model():
    torch.manual_seed(0)
    return WeCLIPForSemanticSegmentation(make_tiny_config(attention_num_maps=2, rfm_num_maps=3)).eval()


def _gradcams(model, block_input, plan, grid):
    return pair_gradcams(
        model.last_block_pair_embeddings,
        block_input,
        model.class_text_embeds,
        model.background_text_embeds,
        model.logit_scale,
        plan,
        grid,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.long, torch.bool])
def test_plan_pairs_orders_by_image_then_class(dtype):
    plan = plan_pairs(LABELS.to(dtype), "cpu")
    assert plan.image.tolist() == [0, 0, 1, 3, 3, 3]
    assert plan.class_index.tolist() == [0, 2, 3, 0, 1, 3]
    assert plan.slot.tolist() == [0, 1, 0, 0, 1, 2]  # rank among the image's classes
    assert plan.max_classes == 3 and plan.num_pairs == 6
    assert (plan.num_images, plan.num_classes) == (4, 4)
    assert torch.equal(plan.present, LABELS.bool())


def test_plan_pairs_thresholds_at_one_half_and_handles_no_class():
    plan = plan_pairs(torch.tensor([[0.4, 0.6], [0.0, 0.5]]), "cpu")
    assert plan.image.tolist() == [0] and plan.class_index.tolist() == [1] and plan.max_classes == 1
    empty = plan_pairs(torch.zeros(3, 4), "cpu")
    assert empty.num_pairs == 0 and empty.max_classes == 0 and empty.image.dtype == torch.long


@pytest.mark.parametrize("use_rfm", [False, True])
def test_attention_maps_needed_gives_the_affinity_exactly_its_maps(model, use_rfm, monkeypatch):
    cfg = model.config
    wanted = cfg.rfm_num_maps if use_rfm else cfg.attention_num_maps
    pixel_values = torch.randn(4, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    plan = plan_pairs(LABELS, "cpu")
    features = model.forward_clip_features(pixel_values, attention_maps_needed(cfg, use_rfm))
    gradcams = _gradcams(model, features.hidden[-1], plan, features.grid)
    maps = patch_attention_maps(features.attention, gradcams.last_attention)
    assert maps.shape == (4, wanted, 12, 12)  # the collected blocks' maps plus the last block's
    a_dec = torch.rand(4, 12, 12)
    cam_affinity(maps, cfg, use_rfm, a_dec)
    with pytest.raises(ValueError, match="attention_maps_needed"):  # one map short: refused, not truncated
        cam_affinity(maps[:, 1:], cfg, use_rfm, a_dec)
    # the model's forward asks for the same count
    asked = []
    collect = model.forward_clip_features
    monkeypatch.setattr(
        model, "forward_clip_features", lambda px, n, **kw: asked.append(n) or collect(px, n, **kw)
    )
    model(pixel_values, class_labels=LABELS, use_rfm=use_rfm)
    model(pixel_values)
    assert asked == [attention_maps_needed(cfg, use_rfm), 0]


def test_rfm_affinity_needs_the_decoder_affinity(model):
    with pytest.raises(ValueError, match="decoder_affinity"):
        cam_affinity(torch.rand(1, 3, 4, 4), model.config, True)


def test_pair_gradcams_of_a_batch_equal_those_of_each_image_alone(model):
    """One backward for all pairs: each pair's GradCAM is its own (no gradient leaks between pairs)."""
    pixel_values = torch.randn(4, 3, 24, 32, generator=torch.Generator().manual_seed(1))
    features = model.forward_clip_features(pixel_values, 0)
    tokens, grid = features.hidden[-1], features.grid
    plan = plan_pairs(LABELS, "cpu")
    batched = _gradcams(model, tokens, plan, grid)
    start = 0
    for b in range(4):
        alone = _gradcams(model, tokens[b : b + 1], plan_pairs(LABELS[b : b + 1], "cpu"), grid)
        end = start + len(alone.cams)
        torch.testing.assert_close(batched.cams[start:end], alone.cams, rtol=0, atol=1e-6)
        torch.testing.assert_close(batched.text_probs[start:end], alone.text_probs)
        start = end
    # the text set of a pair: its image's present classes and the background words (absent classes: 0)
    probs = batched.text_probs
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    assert (probs[:, :4][~plan.present[plan.image]] == 0).all()


def test_pair_gradcams_equal_a_block_copy_per_pair(model):
    """The last block once per image with the shift gradients (`last_block_pair_embeddings`) against autograd
    through one copy of the block per pair (`reference_weclip.last_block_image_embedding`, as the per-pair reference
    runs it):
    the same GradCAMs, text probabilities and last-block maps."""
    pixel_values = torch.randn(4, 3, 24, 32, generator=torch.Generator().manual_seed(2))
    features = model.forward_clip_features(pixel_values, 0)
    tokens, grid = features.hidden[-1], features.grid
    plan = plan_pairs(LABELS, "cpu")
    ours = _gradcams(model, tokens, plan, grid)

    allowed = torch.cat([plan.present[plan.image], torch.ones(6, 3, dtype=torch.bool)], dim=1)
    with torch.enable_grad():
        target, image_embeds, attention = last_block_image_embedding(model, tokens[plan.image])
        text = torch.cat([model.class_text_embeds, model.background_text_embeds])
        logits = model.logit_scale.exp() * image_embeds @ text.t()
        probs = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        (grads,) = torch.autograd.grad(probs.gather(1, plan.class_index[:, None]).sum(), target)
    # float32 sums in another order, amplified by the logit scale: GradCAMs within 1e-5 (issue 22's bound for the
    # batched path), probabilities within 1e-6 (they were equal to 1e-7 only while the tiny tokenizer's prompts, cut
    # at 16 tokens, gave every class one embedding and so uniform probabilities)
    torch.testing.assert_close(
        ours.cams, gradcam(target[:, 1:].detach(), grads[:, 1:], grid), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(ours.text_probs, probs.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.last_attention[plan.image], attention, rtol=0, atol=1e-7)
    assert ours.last_attention.shape == (4, 13, 13)  # per image, the image without a pair included


def test_patch_attention_maps_put_the_last_block_map_last():
    block = [torch.rand(4, 5, 5) for _ in range(2)]
    last = torch.rand(4, 5, 5)
    maps = patch_attention_maps(block, last)
    assert maps.shape == (4, 3, 4, 4) and maps.dtype == torch.float32
    for i in range(2):
        assert torch.equal(maps[:, i], block[i][:, 1:, 1:])
    assert torch.equal(maps[:, -1], last[:, 1:, 1:])


def test_class_scores_background_and_labels_use_only_present_classes():
    plan = plan_pairs(LABELS, "cpu")
    refined = torch.rand(6, 3, 2, generator=torch.Generator().manual_seed(0))
    scores = class_scores(refined, plan, bg_exponent=2.0)
    assert scores.shape == (4, 4, 3, 2)
    assert torch.equal(scores[3, 1:], refined[3:])  # image 3: its classes 0, 1, 3 in ascending order
    assert (scores[1, 2:] == 0).all()  # image 1 has one class: the other slots stay 0
    torch.testing.assert_close(scores[0, 0], (1 - refined[:2].amax(0)) ** 2)
    assert (scores[2, 0] == 1).all() and (scores[2, 1:] == 0).all()  # no class: all background
    # no class in the whole batch: the background slot alone, all ones
    no_class = plan_pairs(torch.zeros(2, 4), "cpu")
    assert torch.equal(class_scores(refined[:0], no_class, bg_exponent=2.0), torch.ones(2, 1, 3, 2))

    scores[1, 2:] = 5.0  # unused slots never win, whatever their score
    labels = labels_from_scores(scores, plan)
    keys = {0: [0, 1, 3], 1: [0, 4], 2: [0], 3: [0, 1, 2, 4]}
    for b, allowed in keys.items():
        assert set(labels[b].unique().tolist()) <= set(allowed)
    expected = torch.tensor([0, 1, 3])[scores[0, :3].argmax(0)]
    assert torch.equal(labels[0], expected)
    # image 1: its background or its class 3 (label 4), as if the unused slots were not there
    assert torch.equal(labels[1], torch.tensor([0, 4])[scores[1, :2].argmax(0)])
    assert (labels[2] == 0).all()


def test_background_margins_are_zero_in_unused_slots_and_label_like_the_scores():
    plan = plan_pairs(LABELS, "cpu")
    scores = class_scores(torch.rand(6, 5, 4, generator=torch.Generator().manual_seed(3)), plan)
    margins = background_margins(scores, plan)
    assert margins.shape == (4, 3, 5, 4)
    torch.testing.assert_close(margins[3], scores[3, 1:] - scores[3, :1], rtol=0, atol=0)
    assert (margins[1, 1:] == 0).all() and (margins[2] == 0).all()  # slots image 1 and image 2 do not use
    assert torch.equal(labels_from_margins(margins, plan), labels_from_scores(scores, plan))

    margins[1, 1:] = 5.0  # unused slots never win; a pixel where no margin is above 0 is background
    margins[0, :, 0, 0] = torch.tensor([0.0, -1.0, 0.0])
    # any margin above 0 wins: here image 0's second class (label 3)
    margins[0, :, 0, 1] = torch.tensor([-1.0, 1e-30, 0.0])
    labels = labels_from_margins(margins, plan)
    assert torch.equal(labels[1], torch.where(margins[1, 0] > 0, 4, 0)) and (labels[2] == 0).all()
    assert labels[0, 0, 0] == 0 and labels[0, 0, 1] == 3


@pytest.mark.parametrize("images_per_chunk", [None, 1])
def test_par_on_the_margins_labels_as_par_on_the_scores(images_per_chunk, monkeypatch):
    """PAR is linear in its maps: refining each class's margin over the background (one map fewer per image) gives
    the labels of refining all the scores, but at pixels whose two best refined scores are tied to rounding; also
    one image per chunk, as on a CPU at a real crop (each chunk then refines only its own maps in use)."""
    if images_per_chunk:
        monkeypatch.setattr(par, "images_per_chunk", lambda num_images, *args, **kwargs: images_per_chunk)
    plan = plan_pairs(LABELS, "cpu")
    g = torch.Generator().manual_seed(4)
    image, refined = torch.randn(4, 3, 24, 20, generator=g), torch.rand(6, 24, 20, generator=g)
    scores = class_scores(refined, plan)
    dilations = [1, 2, 4]
    every_map = par_refine(image, scores, dilations, num_iter=6, num_maps=1 + plan.present.sum(1))
    margins = par_refine(
        image, background_margins(scores, plan), dilations, num_iter=6, num_maps=plan.present.sum(1)
    )
    valid = torch.arange(scores.shape[1]) < 1 + plan.present.sum(1, keepdim=True)  # [B, 1 + K]: bg + classes
    difference = (every_map[:, 1:] - every_map[:, :1]) * valid[:, 1:, None, None]
    torch.testing.assert_close(margins, difference, rtol=0, atol=1e-6)
    top2 = every_map.masked_fill(~valid[:, :, None, None], -1.0).topk(2, dim=1).values
    decided = top2[:, 0] - top2[:, 1] > 1e-5  # every pixel but near-ties of two refined scores
    labels, expected = labels_from_margins(margins, plan), labels_from_scores(every_map, plan)
    assert decided.float().mean() > 0.99 and torch.equal(labels[decided], expected[decided])


def test_a_batch_without_classes_has_no_margin_and_is_all_background():
    """K = 0: no margin map to refine (none made, whatever the scores' size), every pixel background."""
    plan = plan_pairs(torch.zeros(2, 4), "cpu")
    margins = background_margins(class_scores(torch.zeros(0, 6, 5), plan), plan)
    assert margins.shape == (2, 0, 6, 5)
    refined = par_refine(torch.randn(2, 3, 12, 10), margins, [1, 2])  # resized to the image: still no map
    assert refined.shape == (2, 0, 12, 10)
    labels = labels_from_margins(refined, plan)
    assert labels.shape == (2, 12, 10) and (labels == 0).all()


def test_dense_class_cams_are_zero_for_absent_classes():
    plan = plan_pairs(LABELS, "cpu")
    refined_grid = torch.rand(6, 2, 3)
    dense = dense_class_cams(refined_grid, plan)
    assert dense.shape == (4, 4, 2, 3)
    assert (dense[~LABELS.bool()] == 0).all()
    torch.testing.assert_close(dense[plan.image, plan.class_index], minmax_normalize(refined_grid))


def test_patch_attention_maps_are_float32_whatever_the_maps_dtype():
    """Maps collected in bfloat16 (a model run in half precision) are returned in float32, as their float32 copies."""
    block = [torch.rand(2, 5, 5).bfloat16()]
    last = torch.rand(2, 5, 5).bfloat16()
    maps = patch_attention_maps(block, last)
    assert maps.dtype == torch.float32
    assert torch.equal(maps, patch_attention_maps([block[0].float()], last.float()))

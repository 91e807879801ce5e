"""Cache blocking on CPUs (weclip_hf.chunking): the chunked pseudo-label work equals the whole-batch work."""

import pytest
import torch
from conftest import make_tiny_config

import weclip_hf.modeling_weclip as modeling
import weclip_hf.par as par
from weclip_hf import WeCLIPForSemanticSegmentation
from weclip_hf.chunking import images_per_chunk
from weclip_hf.pseudo_labels import plan_pairs

LABELS = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 1], [0, 1, 0, 0]])


def test_images_per_chunk_fits_the_budget_on_cpus_only():
    assert images_per_chunk(16, 8, "cpu", budget=32) == 4
    assert images_per_chunk(16, 100, "cpu", budget=32) == 1  # at least one image
    assert images_per_chunk(3, 1, "cpu", budget=32) == 3  # never more than the batch
    assert images_per_chunk(16, 100, "meta", budget=32) == 16  # an accelerator gets the whole batch


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
    monkeypatch.setattr(modeling, "images_per_chunk", lambda num_images, *args, **kwargs: chunk)
    chunked = model.forward_clip_features(pixel_values, 2, output_attentions=True)
    chunked_cams = model.pair_gradcams(whole.hidden[-1], plan, whole.grid)
    for ours, expected in zip(
        (*chunked.hidden, *chunked.attention, *chunked.head_attentions),
        (*whole.hidden, *whole.attention, *whole.head_attentions),
    ):
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked_cams.cams, whole_cams.cams, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked_cams.text_probs, whole_cams.text_probs, rtol=0, atol=1e-7)
    torch.testing.assert_close(chunked_cams.last_attention, whole_cams.last_attention, rtol=0, atol=1e-7)


def test_chunked_par_equals_the_whole_batch(monkeypatch):
    g = torch.Generator().manual_seed(0)
    image, scores = torch.randn(5, 3, 20, 18, generator=g), torch.rand(5, 3, 20, 18, generator=g)
    whole = par.par_refine(image, scores, [1, 2, 4], num_iter=4)
    monkeypatch.setattr(par, "_CPU_STEP_BYTES", 2 * 7 * 20 * 18 * 4)  # two images per chunk
    torch.testing.assert_close(par.par_refine(image, scores, [1, 2, 4], num_iter=4), whole, rtol=0, atol=1e-6)

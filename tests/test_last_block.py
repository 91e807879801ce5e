"""The last CLIP block run once per image (weclip_hf.last_block): its outputs and the per-pair shift gradients
against autograd through a copy of the block per pair."""

import pytest
import torch
from conftest import example_module, make_tiny_config

from weclip_hf import WeCLIPForSemanticSegmentation
from weclip_hf.clip_layers import eager_clip_layer
from weclip_hf.last_block import pair_block_outputs, run_last_block

PAIR_IMAGE = torch.tensor([0, 0, 1, 3, 3, 3])  # image 2 has no pair
SLOTS = (torch.tensor([0, 1, 0, 0, 1, 2]), 3)  # each pair's rank in its image, the most pairs of one image


def _layer(hidden_act: str) -> torch.nn.Module:
    """The tiny model's last CLIP block, its LayerNorms' affine parts drawn away from the identity (a trained CLIP's
    are: the backward must apply them)."""
    torch.manual_seed(0)
    config = make_tiny_config()
    config.vision_config.hidden_act = hidden_act
    layer = WeCLIPForSemanticSegmentation(config).vision_model.encoder.layers[-1].eval()
    with torch.no_grad():
        for norm in (layer.layer_norm1, layer.layer_norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.1)
    return layer


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_run_last_block_is_the_clip_layer(hidden_act):
    layer = _layer(hidden_act)
    x = torch.randn(4, 13, 32, generator=torch.Generator().manual_seed(0))
    block = run_last_block(layer, x)
    expected, probs = eager_clip_layer(layer, x)
    torch.testing.assert_close(block.output, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(block.attention, probs.mean(dim=1), rtol=0, atol=1e-7)
    torch.testing.assert_close(block.normed_input, layer.layer_norm1(x))
    shift, outputs = pair_block_outputs(block, PAIR_IMAGE, SLOTS)
    assert torch.equal(outputs, block.output[PAIR_IMAGE]) and shift.requires_grad and not shift.any()


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_shift_gradient_is_the_patch_sum_of_the_ln1_gradient(hidden_act):
    """Any cotangent on the block output (the class token's row included): the shift's gradient equals the sum
    over patch tokens of autograd's gradient w.r.t. layer_norm1's output, one block copy per pair."""
    layer = _layer(hidden_act)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 13, 32, generator=g)
    cotangent = torch.randn(len(PAIR_IMAGE), 13, 32, generator=g)
    shift, outputs = pair_block_outputs(run_last_block(layer, x), PAIR_IMAGE, SLOTS)
    (ours,) = torch.autograd.grad(outputs, shift, cotangent)

    h = layer.layer_norm1(x[PAIR_IMAGE]).detach().requires_grad_(True)
    attn = layer.self_attn
    b, t, c = h.shape
    shape = (b, t, attn.num_heads, attn.head_dim)
    q, k, v = (p(h).view(shape).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    probs = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
    y = x[PAIR_IMAGE] + attn.out_proj((probs @ v).transpose(1, 2).reshape(b, t, c))
    y = y + layer.mlp(layer.layer_norm2(y))
    (expected,) = torch.autograd.grad(y, h, cotangent)
    torch.testing.assert_close(ours, expected[:, 1:].sum(dim=1), rtol=1e-5, atol=1e-6)


def test_no_pairs():
    layer = _layer("quick_gelu")
    shift, outputs = pair_block_outputs(
        run_last_block(layer, torch.randn(2, 13, 32)),
        torch.zeros(0, dtype=torch.long),
        (torch.zeros(0, dtype=torch.long), 0),
    )
    (grad,) = torch.autograd.grad(outputs.sum(), shift)
    assert outputs.shape == (0, 13, 32) and grad.shape == (0, 32)


def test_the_pair_plan_holds_each_pairs_rank_in_its_image():
    from weclip_hf.pseudo_labels import plan_pairs

    labels = torch.zeros(4, 5)
    labels[0, [1, 3]] = labels[1, 0] = labels[3, [0, 2, 4]] = 1
    plan = plan_pairs(labels, "cpu")
    assert plan.image.tolist() == PAIR_IMAGE.tolist()
    assert plan.slot.tolist() == SLOTS[0].tolist() and plan.max_classes == SLOTS[1]


def test_gradcams_of_a_planned_batch_read_nothing_on_the_host():
    """After `plan_pairs` (the pseudo labels' one host read), the GradCAMs of an unchunked batch (an
    accelerator's case) never wait for the device (the benchmark's `HostSyncFinder`: scalar reads,
    data-dependent shapes, host copies): the packing of the pairs comes from the plan."""
    HostSyncFinder = example_module("benchmarking.instruments").HostSyncFinder
    from weclip_hf.pseudo_labels import plan_pairs

    torch.manual_seed(0)
    model = WeCLIPForSemanticSegmentation(make_tiny_config()).eval()
    labels = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 1]])
    features = model.forward_clip_features(torch.randn(4, 3, 32, 32), 1)
    plan = plan_pairs(labels, "cpu")
    with HostSyncFinder() as syncs:
        cams = model.pair_gradcams(features.hidden[-1], plan, features.grid).cams
    assert cams.shape[0] == plan.num_pairs == 6 and not syncs.sites, syncs.sites

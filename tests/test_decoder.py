"""WeCLIP's decoder (weclip_hf.decoder) and its feature head (weclip_hf.feature_head, also WeCLIP+'s DINO head)
against the explicit one-image, one-head references of `reference_weclip`, written from DESIGN Part 1: the
architecture pinned without the parity data of ../shared."""

import pytest
import torch
from conftest import make_tiny_config
from reference_weclip import (
    reference_decoder,
    reference_decoder_block,
    reference_feature_head,
    reference_grid_map,
)

from weclip_hf.decoder import WeCLIPDecoder, WeCLIPDecoderAttention
from weclip_hf.feature_head import WeCLIPFeatureHead


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``module`` in float64 and eval mode with every parameter drawn normal(0, 0.5): large enough that the
    attention is far from uniform and the biases matter (the models' own small draw makes the logits almost
    constant)."""
    generator = torch.Generator().manual_seed(seed)
    module = module.double().eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return module


def random_tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    """Standard normal float64 tokens of ``shape``, drawn from ``seed``."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("num_heads", [1, 4, 8])
def test_decoder_logits_match_the_explicit_reference(num_heads):
    """Feature head -> pre-LN blocks (LN -> MHA -> residual, LN -> QuickGELU MLP -> residual) -> 1x1 classifier,
    per image on a 3 x 5 grid (rows and columns told apart): the residuals, the 1/sqrt(head_dim) scale, the q/k/v
    packing of in_proj and every token <-> channel transpose show in the logits."""
    config = make_tiny_config(decoder_num_heads=num_heads, decoder_num_layers=2)
    decoder = randomized(WeCLIPDecoder(config))
    grid = (3, 5)
    layer_tokens = [random_tokens(2, 15, 32, seed=i) for i in range(config.num_feature_layers)]
    with torch.no_grad():
        logits, _ = decoder(layer_tokens, grid)
    assert logits.shape == (2, 5, 3, 5)  # background + 4 classes
    for image in range(2):
        expected = reference_decoder([t[image] for t in layer_tokens], grid, decoder, num_heads)
        torch.testing.assert_close(logits[image], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("num_heads", [1, 4])
def test_decoder_block_matches_the_explicit_reference(num_heads):
    """One block on its own: the reference of each image's tokens, batched."""
    config = make_tiny_config(decoder_num_heads=num_heads, decoder_num_layers=1)
    block = randomized(WeCLIPDecoder(config).blocks[0])
    tokens = random_tokens(3, 7, 32)
    with torch.no_grad():
        out = block(tokens)
    expected = torch.stack([reference_decoder_block(x, block.state_dict(), num_heads) for x in tokens])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_decoder_attention_is_torchs_multihead_attention_with_the_same_packed_weights():
    """The official decoder's attention is torch's ``nn.MultiheadAttention``, whose ``in_proj_weight`` /
    ``in_proj_bias`` the converter copies unchanged into ``in_proj``: the same tensors give the same output."""
    ours = randomized(WeCLIPDecoderAttention(32, 4))
    official = torch.nn.MultiheadAttention(32, 4, batch_first=True, dtype=torch.float64).eval()
    with torch.no_grad():
        official.in_proj_weight.copy_(ours.in_proj.weight)
        official.in_proj_bias.copy_(ours.in_proj.bias)
        official.out_proj.weight.copy_(ours.out_proj.weight)
        official.out_proj.bias.copy_(ours.out_proj.bias)
        tokens = random_tokens(2, 9, 32)
        expected, _ = official(tokens, tokens, tokens, need_weights=False)
        torch.testing.assert_close(ours(tokens), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("num_inputs", [1, 3])
def test_feature_head_matches_the_explicit_reference(num_inputs, fused):
    """WeCLIP+'s DINO head (one input of width 24) and a decoder head (three inputs) on a 6 x 7 grid, by the fused
    product of the second Linears and the fuse conv, and module by module (a hook on the fuse conv)."""
    head = randomized(WeCLIPFeatureHead(24, 32, num_inputs, 0.1))
    if not fused:
        head.fuse.register_forward_hook(lambda *args: None)
    assert head._foldable() == fused
    tokens = [random_tokens(2, 42, 24, seed=i) for i in range(num_inputs)]
    with torch.no_grad():
        features = head(tokens, (6, 7))
    for image in range(2):
        expected = reference_feature_head([t[image] for t in tokens], head.state_dict())  # [N, dim]
        torch.testing.assert_close(
            features[image], reference_grid_map(expected, (6, 7)), rtol=1e-6, atol=1e-6
        )

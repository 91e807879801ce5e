"""The frozen CLIP layers as WeCLIP runs them (weclip_hf.clip_layers) against transformers' own modules."""

import pytest
import torch
from conftest import make_tiny_config

from weclip_hf import WeCLIPForSemanticSegmentation
from weclip_hf.clip_layers import _fusable_mlp, clip_layer, clip_mlp, eager_clip_layer


def _layer(hidden_act: str = "quick_gelu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    config = make_tiny_config()
    config.vision_config.hidden_act = hidden_act
    model = WeCLIPForSemanticSegmentation(config).eval()
    return model.vision_model.encoder.layers[0].to(dtype)


def _tokens(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(3, 13, 32, generator=torch.Generator().manual_seed(0)).to(dtype)


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_clip_layer_is_the_module(hidden_act):
    layer = _layer(hidden_act)
    assert _fusable_mlp(layer.mlp) == (hidden_act == "quick_gelu")
    x = _tokens()
    with torch.no_grad():
        expected = layer(x, None)
        torch.testing.assert_close(clip_layer(layer, x), expected, rtol=0, atol=1e-6)
        out, probs = eager_clip_layer(layer, x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert probs.shape == (3, layer.self_attn.num_heads, 13, 13) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, layer.self_attn.num_heads, 13))


def test_fused_mlp_has_the_module_gradients():
    """With autograd the SiLU is not in place: the same gradients for the input and every weight."""
    layer = _layer().requires_grad_(True)  # frozen in the model; trained here to compare the weight gradients
    h = _tokens().requires_grad_(True)
    ours = torch.autograd.grad(clip_mlp(layer.mlp, h).square().sum(), [h, *layer.mlp.parameters()])
    expected = torch.autograd.grad(layer.mlp(h).square().sum(), [h, *layer.mlp.parameters()])
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_mlp_in_half_precision():
    layer = _layer(dtype=torch.bfloat16)
    x = _tokens(torch.bfloat16)
    with torch.no_grad():
        out, expected = clip_mlp(layer.mlp, x), layer.mlp(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=0.02, atol=0.02)


def test_hooks_and_wrappers_run_the_modules_themselves():
    """A hook on the layer, on a Linear or on the activation fires; an adapter-wrapped Linear is applied."""
    layer = _layer()
    x = _tokens()
    fired = []
    for module in (layer, layer.mlp.fc1, layer.mlp.activation_fn):
        handle = module.register_forward_hook(lambda *args: fired.append(1))
        with torch.no_grad():
            clip_layer(layer, x)
        handle.remove()
    assert fired == [1, 1, 1]

    class Doubled(torch.nn.Module):  # an adapter's shape: wraps the Linear, changes its output
        def __init__(self, base):
            super().__init__()
            self.base, self.weight, self.bias = base, base.weight, base.bias

        def forward(self, h):
            return 2 * self.base(h)

    layer.mlp.fc2 = Doubled(layer.mlp.fc2)
    assert not _fusable_mlp(layer.mlp)
    with torch.no_grad():
        torch.testing.assert_close(clip_layer(layer, x), layer(x, None))

"""The frozen CLIP layers as WeCLIP runs them (weclip_hf.clip_layers) against transformers' own modules."""

import pytest
import torch
from conftest import make_tiny_config

from weclip_hf import WeCLIPForSemanticSegmentation
from weclip_hf.clip_layers import _fusable_mlp, clip_layer, clip_mlp, eager_clip_layer, quick_gelu_mlp


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


def test_pre_hooks_subclasses_and_unbiased_linears_run_the_modules_themselves():
    """A forward pre-hook fires too; a subclass of nn.Linear or of QuickGELUActivation (its own forward) and a Linear
    without bias are not fused (the fused path applied their parameters as a plain biased Linear's, or failed on
    the missing bias). Checking forward hooks only, isinstance for the type, or no bias check passed every test."""
    from transformers.activations import QuickGELUActivation

    layer = _layer()
    x = _tokens()
    fired = []
    for module in (layer, layer.mlp.fc1):
        handle = module.register_forward_pre_hook(lambda *args: fired.append(1))
        with torch.no_grad():
            clip_layer(layer, x)
        handle.remove()
    assert fired == [1, 1]

    class DoubledLinear(torch.nn.Linear):  # a subclass with its own forward (an adapter's shape)
        def forward(self, h):
            return 2 * super().forward(h)

    class SteeperQuickGELU(QuickGELUActivation):
        def forward(self, h):
            return h * torch.sigmoid(2.0 * h)

    def doubled(linear: torch.nn.Linear) -> torch.nn.Linear:
        copy = DoubledLinear(linear.in_features, linear.out_features)
        copy.load_state_dict(linear.state_dict())
        return copy

    def unbiased(linear: torch.nn.Linear) -> torch.nn.Linear:
        copy = torch.nn.Linear(linear.in_features, linear.out_features, bias=False)
        copy.weight.data.copy_(linear.weight)
        return copy

    for name, change in (
        ("fc1", doubled),
        ("fc2", unbiased),
        ("activation_fn", lambda _: SteeperQuickGELU()),
    ):
        layer = _layer()
        setattr(layer.mlp, name, change(getattr(layer.mlp, name)))
        assert not _fusable_mlp(layer.mlp), name
        with torch.no_grad():
            torch.testing.assert_close(clip_layer(layer, x), layer(x, None), rtol=0, atol=1e-6, msg=name)


def test_quick_gelu_mlp_of_wrapped_linears_is_quick_gelu():
    """`quick_gelu_mlp` with Linears that are not plain (the decoder's blocks under an adapter) runs them as modules
    with quick_gelu(z) = z * sigmoid(1.702 z) written out (a plain sigmoid passed every test)."""
    from transformers.activations import QuickGELUActivation

    layer = _layer()
    h = _tokens()

    class Wrapped(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, h):
            return self.base(h)

    with torch.no_grad():
        ours = quick_gelu_mlp(Wrapped(layer.mlp.fc1), Wrapped(layer.mlp.fc2), h)
        expected = layer.mlp.fc2(QuickGELUActivation()(layer.mlp.fc1(h)))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_attention_probabilities_are_float32_for_bfloat16_weights():
    """The attention maps feed normalisations: float32 whatever the weights' dtype, as the docstring says (a softmax
    in the weights' dtype passed every test: only float32 layers were tried)."""
    layer = _layer(dtype=torch.bfloat16)
    x = _tokens(torch.bfloat16)
    with torch.no_grad():
        out, probs = eager_clip_layer(layer, x)
    assert out.dtype == torch.bfloat16 and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(*probs.shape[:-1]))

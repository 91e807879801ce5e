"""The frozen CLIP's encoder layers as WeCLIP runs them (transformers' `CLIPEncoderLayer` modules, unchanged).

- `clip_layer`: the layer's own computation (its configured attention, SDPA by default), with `clip_mlp`;
- `eager_clip_layer`: the same with explicit attention, also returning the attention probabilities (the blocks
  whose maps the CAM or the RFM read, and ``output_attentions``);
- `clip_mlp` / `quick_gelu_mlp` (also the decoder's blocks): ``fc2(quick_gelu(fc1(h)))`` with
  ``quick_gelu(z) = z * sigmoid(1.702 z) = silu(1.702 z) / 1.702``: the two factors ride in the products'
  ``alpha`` and the activation is one SiLU pass (in place without autograd), where
  transformers' QuickGELU makes three new [T, 3072] tensors per image (a product, a sigmoid, a product). The
  result equals the module's up to float rounding (~1e-7 relative, `tests/test_clip_layers.py`).

A layer, MLP or projection that is not what transformers builds (other activations, adapter-wrapped Linears,
modules with hooks) runs as its own module, so that every hook fires and every wrapper applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import QuickGELUActivation

QUICK_GELU_SLOPE = 1.702  # quick_gelu(z) = z * sigmoid(1.702 z)


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def is_plain_module(module: nn.Module | None, kind: type[nn.Module]) -> bool:
    """Whether ``module`` is a ``kind`` itself (not a subclass or an adapter's wrapper) without forward hooks: its
    parameters are all that its forward applies, so a fused path may use them directly."""
    return type(module) is kind and not _has_hooks(module)


def is_plain_biased(module: nn.Module | None, kind: type[nn.Module]) -> bool:
    """A plain ``kind`` (`is_plain_module`) with a bias: its weight and bias are all that its forward applies."""
    return is_plain_module(module, kind) and module.bias is not None


def _fusable_mlp(mlp: nn.Module) -> bool:
    """Whether ``mlp`` is transformers' CLIP MLP computing ``fc2(quick_gelu(fc1(h)))``, without hooks."""
    activation = getattr(mlp, "activation_fn", None)
    return (
        type(activation) is QuickGELUActivation
        and not (_has_hooks(mlp) or _has_hooks(activation))
        and is_plain_biased(getattr(mlp, "fc1", None), nn.Linear)
        and is_plain_biased(getattr(mlp, "fc2", None), nn.Linear)
    )


def quick_gelu_mlp(fc1: nn.Module, fc2: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``fc2(quick_gelu(fc1(h)))`` on ``h`` [..., D], as ``fc2(silu(1.702 fc1(h)) / 1.702)`` with the factors in
    the products' ``alpha``: one SiLU pass (in place unless autograd needs its input). Linears that are not
    plain (`is_plain_biased`) run as modules, with the activation written out."""
    if not (is_plain_biased(fc1, nn.Linear) and is_plain_biased(fc2, nn.Linear)):
        z = fc1(h)
        return fc2(z * torch.sigmoid(QUICK_GELU_SLOPE * z))
    flat = h.reshape(-1, h.shape[-1])
    z = torch.addmm(fc1.bias * QUICK_GELU_SLOPE, flat, fc1.weight.t(), alpha=QUICK_GELU_SLOPE)
    activated = F.silu(z, inplace=not (torch.is_grad_enabled() and z.requires_grad))  # 1.702 * quick_gelu
    out = torch.addmm(fc2.bias, activated, fc2.weight.t(), alpha=1 / QUICK_GELU_SLOPE)
    return out.view(*h.shape[:-1], out.shape[-1])


def clip_mlp(mlp: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """A CLIP MLP on normalized tokens ``h`` [..., D]: ``mlp(h)``, as `quick_gelu_mlp` where it is
    transformers' QuickGELU MLP without hooks."""
    return quick_gelu_mlp(mlp.fc1, mlp.fc2, h) if _fusable_mlp(mlp) else mlp(h)


def clip_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A CLIP encoder layer on tokens ``x`` [B, T, D] without an attention mask: its own attention, then
    `clip_mlp`; the module itself where it has hooks."""
    if _has_hooks(layer):
        return layer(x, None)
    x = x + layer.self_attn(layer.layer_norm1(x), None)[0]
    return x + clip_mlp(layer.mlp, layer.layer_norm2(x))


def eager_clip_layer(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A CLIP encoder layer with explicit attention: (output [B, T, D], float32 probabilities [B, heads, T, T])."""
    out, probs = eager_attention(layer.self_attn, layer.layer_norm1(x))
    x = x + out
    return x + clip_mlp(layer.mlp, layer.layer_norm2(x)), probs


def attention_heads(attn: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CLIP self-attention's query, key and value of normalized tokens ``h`` [B, T, C]: each [B, heads, T, d]."""
    shape = (*h.shape[:2], attn.num_heads, attn.head_dim)
    return tuple(proj(h).view(shape).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))


def attention_probabilities(attn: nn.Module, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The attention probabilities [B, heads, T, T] of `attention_heads`' query and key, float32 whatever the
    weights' dtype (the maps feed normalisations)."""
    # scaling q rather than the [T, T] scores saves a pass over them (and is what the official CLIP does; the
    # two orders round differently unless the scale is a power of two, as it is for head size 64)
    return torch.softmax((query * attn.scale) @ key.transpose(-1, -2), dim=-1, dtype=torch.float32)


def eager_attention(attn: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit (eager) CLIP self-attention on normalized tokens: (output [B, T, C], float32 probabilities
    [B, heads, T, T])."""
    q, k, v = attention_heads(attn, h)
    probs = attention_probabilities(attn, q, k)
    out = (probs.to(v.dtype) @ v).transpose(1, 2).flatten(2)
    return attn.out_proj(out), probs


__all__ = [
    "QUICK_GELU_SLOPE",
    "attention_heads",
    "attention_probabilities",
    "clip_layer",
    "clip_mlp",
    "eager_attention",
    "eager_clip_layer",
    "is_plain_biased",
    "is_plain_module",
    "quick_gelu_mlp",
]

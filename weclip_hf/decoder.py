"""WeCLIP's trainable decoder: `WeCLIPFeatureHead` on the frozen CLIP's layers, a small transformer and a 1x1
classifier, and the affinity of its fused features (the RFM's and the affinity loss's)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from .clip_layers import quick_gelu_mlp
from .configuration_weclip import WeCLIPConfig
from .feature_head import WeCLIPFeatureHead


def init_trained_layer(layer: nn.Linear | nn.Conv2d, initializer_range: float | None) -> None:
    """Initialise a trained layer (`WeCLIPConfig.initializer_range`): None, as the official code's, PyTorch's
    defaults (Kaiming-uniform weights with a = sqrt(5), biases uniform in +-1/sqrt(fan_in)); a float,
    normal(std=initializer_range) weights and zero biases. Through `transformers.initialization`, which leaves
    loaded tensors alone."""
    if initializer_range is None:
        init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
        if layer.bias is not None:
            fan_in = layer.weight[0].numel()  # input features x kernel size
            init.uniform_(layer.bias, -(fan_in**-0.5), fan_in**-0.5)
    else:
        init.normal_(layer.weight, std=initializer_range)
        if layer.bias is not None:
            init.zeros_(layer.bias)


def init_official_attention(attention: WeCLIPDecoderAttention) -> None:
    """The official decoder attention's own rule (torch's ``nn.MultiheadAttention``): the packed q/k/v projection
    Xavier-uniform over its [3 dim, dim] weight, both projections' biases zero (the output projection's weight keeps
    the Linear default)."""
    init.xavier_uniform_(attention.in_proj.weight)
    init.zeros_(attention.in_proj.bias)
    init.zeros_(attention.out_proj.bias)


class WeCLIPDecoderAttention(nn.Module):
    """Multi-head self-attention with packed q/k/v (SDPA)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.in_proj(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class WeCLIPDecoderBlock(GradientCheckpointingLayer):
    """Pre-LN transformer block: LN -> MHA -> residual, LN -> MLP (QuickGELU) -> residual. Under transformers'
    gradient checkpointing (``model.activation_checkpointing_enable()``) a training forward keeps only its input and
    recomputes the rest in the backward."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim)
        self.self_attn = WeCLIPDecoderAttention(dim, num_heads)
        self.layer_norm2 = nn.LayerNorm(dim)
        self.mlp = nn.ModuleDict(
            {"fc1": nn.Linear(dim, mlp_ratio * dim), "fc2": nn.Linear(mlp_ratio * dim, dim)}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + quick_gelu_mlp(self.mlp["fc1"], self.mlp["fc2"], self.layer_norm2(x))


class WeCLIPDecoder(WeCLIPFeatureHead):
    """`WeCLIPFeatureHead` on the CLIP layers (per-layer MLPs -> concat -> 1x1 fuse -> Dropout2d) -> 3-layer
    transformer -> 1x1 classifier."""

    def __init__(self, config: WeCLIPConfig):
        dim = config.decoder_hidden_size
        width = config.vision_config.hidden_size
        super().__init__(width, dim, config.num_feature_layers, config.decoder_dropout)
        self.blocks = nn.ModuleList(
            WeCLIPDecoderBlock(dim, config.decoder_num_heads, config.decoder_mlp_ratio)
            for _ in range(config.decoder_num_layers)
        )
        self.classifier = nn.Conv2d(dim, config.num_labels, kernel_size=1)

    def forward(
        self, layer_tokens: list[torch.Tensor], grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: layer_tokens: per feature layer [B, N, D] patch tokens. Returns (logits [B, K, h, w],
        fused features [B, dim, h, w] after dropout). Runs in the dtype of its weights (under autocast: the
        autocast dtype)."""
        features = super().forward(layer_tokens, grid)
        return self.decode(features), features

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """The transformer and the classifier on fused features [B, dim, h, w]: logits [B, K, h, w]."""
        b, _, h, w = features.shape
        x = features.flatten(2).transpose(1, 2)  # [B, N, dim]
        for block in self.blocks:
            x = block(x)
        return self.classifier(x.transpose(1, 2).reshape(b, -1, h, w))


def feature_affinity(features: torch.Tensor) -> torch.Tensor:
    """``sigmoid(F^T F)`` per image of decoder features [B, C, h, w]: [B, N, N], in float32 whatever the
    caller's autocast."""
    flat = features.flatten(2).float()
    with torch.autocast(features.device.type, enabled=False):
        return torch.sigmoid(flat.transpose(1, 2) @ flat)


__all__ = ["WeCLIPDecoder", "WeCLIPDecoderAttention", "WeCLIPDecoderBlock", "feature_affinity"]

"""The feature head turning backbone patch tokens into decoder input: the first layers of WeCLIP's decoder,
WeCLIP+'s DINO head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeCLIPLayerMLP(nn.Module):
    """Per-layer projection of patch tokens: Linear -> ReLU -> Linear."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(tokens)))


class WeCLIPFeatureHead(nn.Module):
    """Per-input MLP (Linear -> ReLU -> Linear) -> channel concat -> 1x1 conv -> Dropout2d.

    The official SegFormer-style head (``SegFormerHead(index=n)``): WeCLIP's decoder is one on its 11 CLIP
    inputs followed by a transformer; WeCLIP+ adds one on the DINOv2 tokens.
    """

    def __init__(self, in_dim: int, dim: int, num_inputs: int, dropout: float):
        super().__init__()
        self.layer_mlps = nn.ModuleList(WeCLIPLayerMLP(in_dim, dim) for _ in range(num_inputs))
        self.fuse = nn.Conv2d(dim * num_inputs, dim, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, layer_tokens: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """Args: layer_tokens: per input [B, h*w, in_dim] patch tokens (row-major); grid: (h, w).
        Returns: [B, dim, h, w] fused features (after dropout), in the dtype of the weights."""
        b = layer_tokens[0].shape[0]
        dtype = self.fuse.weight.dtype
        projected = [mlp(t.to(dtype)) for mlp, t in zip(self.layer_mlps, layer_tokens)]  # [B, N, dim] each
        x = torch.cat(projected, dim=-1).transpose(1, 2).reshape(b, -1, *grid)
        return self.dropout(self.fuse(x))


__all__ = ["WeCLIPFeatureHead", "WeCLIPLayerMLP"]

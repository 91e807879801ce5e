"""WeCLIP+'s DINO branch: a frozen DINOv2 whose final patch tokens feed a trainable feature head.

(DESIGN-weclip-plus §3, §5.) The official code loads DINOv2 from torch.hub. Its models without registers
resize the 37 x 37 position embeddings with ``scale_factor = (n + 0.1) / 37``, where transformers'
`Dinov2Model` uses ``size = n``: the final tokens then differ by up to ~1. `dinov2_backbone` gives a
`Dinov2Model` whose embeddings follow the hub rule (same weights, same checkpoint keys); the register models
of both libraries agree already. Official torch.hub weights are renamed by
`weclip_hf.conversion.convert_hub_dinov2_state_dict` (this file ships with saved models and imports no converter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

from .chunking import is_capturing_graph
from .clip_features import frozen_tower_grad_mode
from .configuration_weclip_plus import WeCLIPPlusConfig
from .feature_head import WeCLIPFeatureHead

HUB_INTERPOLATE_OFFSET = 0.1  # `interpolate_offset` of the torch.hub DINOv2 models without registers


def hub_position_embeddings(
    position_embeddings: torch.Tensor, grid: tuple[int, int], offset: float = HUB_INTERPOLATE_OFFSET
) -> torch.Tensor:
    """Resize DINOv2 position embeddings to a patch grid by the torch.hub rule (no registers).

    Args:
        position_embeddings: [1, 1 + M*M, D] (class entry first, then an M x M grid).
        grid: (h, w) patch grid.
    Returns:
        [1, 1 + h*w, D]: the grid resampled bicubically (float32, align_corners=False, no antialias) with
        ``scale_factor = ((h + offset) / M, (w + offset) / M)``: the output has h x w cells, but the sampling
        positions follow the offset scale.
    """
    cls_pos, patch_pos = position_embeddings[:, :1], position_embeddings[:, 1:]
    m = math.isqrt(int(patch_pos.shape[1]))  # int(): `torch.jit.trace` gives shapes as tensors
    grid = (int(grid[0]), int(grid[1]))
    d = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, m, m, d).permute(0, 3, 1, 2).float()
    scale = ((grid[0] + offset) / m, (grid[1] + offset) / m)
    patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(patch_pos.shape[-2:]) != tuple(grid):  # the offset keeps floor(M * scale) == n
        raise RuntimeError(
            f"hub position interpolation gave a {tuple(patch_pos.shape[-2:])} grid, not {grid}"
        )
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, d).to(position_embeddings.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


class Dinov2EmbeddingsWithHubPositions(Dinov2Embeddings):
    """`Dinov2Embeddings` that resize the position embeddings by the torch.hub rule.

    The frozen DINO's resized embeddings are kept for the next forward of the same grid (a bicubic resize of a
    [D, 37, 37] grid per step is a slow small kernel on CUDA): the kept copy is remade when the grid, the
    embeddings' tensor, storage, dtype, device or version (any in-place change through the tensor, e.g.
    `load_state_dict`) or the inference mode differs; the entry holds the embeddings it was made from, so their
    storage cannot be reused by another tensor while it is kept. Not kept while the embeddings take gradients or
    while a graph is captured (`torch.compile`, `torch.export`, `torch.jit.trace`: the resize is traced), nor for
    embeddings that are inference tensors (a model built under `torch.inference_mode`: they have no version). Edits
    through ``.data`` bypass the version: call `interpolate_pos_encoding` after such an edit only with a new grid,
    or delete ``_resized_positions``."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        position = self.position_embeddings
        num_positions = position.shape[1] - 1
        if embeddings.shape[1] - 1 == num_positions and height == width:  # the native grid (both libraries)
            return position
        patch_h, patch_w = self.patch_embeddings.patch_size
        grid = (height // patch_h, width // patch_w)
        # inference tensors (a model built under inference mode) keep no version: an in-place change would not show
        if (
            (torch.is_grad_enabled() and position.requires_grad)
            or is_capturing_graph()
            or position.is_inference()
        ):
            return hub_position_embeddings(position, grid)
        key = (
            grid,
            id(position),
            position.data_ptr(),
            position.dtype,
            position.device,
            position._version,
            torch.is_inference_mode_enabled(),
        )
        kept = getattr(self, "_resized_positions", None)
        if kept is None or kept[0] != key:
            source = position.detach()  # held in the entry: its storage stays this tensor's
            kept = (key, hub_position_embeddings(source, grid), source)
            self._resized_positions = kept  # a plain attribute: not a buffer, not in the state dict
        return kept[1]


def with_hub_positions(embeddings: Dinov2Embeddings) -> Dinov2EmbeddingsWithHubPositions:
    """The same embeddings (the very same parameters) with the torch.hub position rule."""
    hub = Dinov2EmbeddingsWithHubPositions(embeddings.config)
    hub.load_state_dict(embeddings.state_dict(keep_vars=True), assign=True)
    return hub


def dinov2_backbone(
    config: Dinov2Config | Dinov2WithRegistersConfig, position_interpolation: str = "hub"
) -> Dinov2Model | Dinov2WithRegistersModel:
    """A randomly initialized DINOv2 for ``config``; ``position_interpolation="hub"`` reproduces the torch.hub
    models (see `WeCLIPPlusConfig.dino_position_interpolation`).

    The result is a plain `Dinov2Model` / `Dinov2WithRegistersModel` (so transformers' checkpoint key
    conversions apply to it); only the embeddings module of a hub-rule `Dinov2Model` is swapped.
    """
    if isinstance(config, Dinov2WithRegistersConfig):
        return Dinov2WithRegistersModel._from_config(config)  # transformers' rule is the hub rule here
    model = Dinov2Model._from_config(config)
    if position_interpolation == "hub":
        model.embeddings = with_hub_positions(model.embeddings)
    return model


def resize_to_patch_multiple(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 3, floor(H/p)*p, floor(W/p)*p]: bilinear, align_corners=False, no antialias (the
    official DINO input); unchanged when H and W are multiples already. A side below one patch is stretched to one
    (p): the inference helpers pad images to one CLIP patch, which may be smaller than the DINOv2's (a patch-8 CLIP
    beside a patch-14 DINOv2)."""
    h, w = (max(patch_size, s // patch_size * patch_size) for s in pixel_values.shape[-2:])
    if (h, w) == tuple(pixel_values.shape[-2:]):
        return pixel_values
    return F.interpolate(pixel_values, size=(h, w), mode="bilinear", align_corners=False)


@dataclass
class DinoBranchOutput:
    """What the DINO branch computes for one batch."""

    features: torch.Tensor  # [B, dim, h, w] head output resized to the CLIP grid: the decoder's DINO input
    patch_tokens: torch.Tensor  # [B, gh*gw, C] final LayerNorm-ed patch tokens (no class / register tokens)
    grid: tuple[int, int]  # (gh, gw) the DINO patch grid


class WeCLIPPlusDinoBranch(nn.Module):
    """Frozen DINOv2 (no gradient, always in eval mode) -> final patch tokens -> trainable `WeCLIPFeatureHead`
    on the DINO grid -> bilinear resize to the CLIP grid."""

    def __init__(self, config: WeCLIPPlusConfig):
        super().__init__()
        dino = config.dino_config
        self.num_register_tokens = config.dino_num_register_tokens
        self.backbone = dinov2_backbone(dino, config.dino_position_interpolation)
        self.head = WeCLIPFeatureHead(dino.hidden_size, config.decoder_hidden_size, 1, config.decoder_dropout)
        self.freeze()

    def freeze(self) -> None:
        """No gradient and eval mode for the DINOv2 (called after construction and after loading weights)."""
        self.backbone.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def patch_tokens(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Final LayerNorm-ed patch tokens of the frozen DINOv2 on the image resized to a patch multiple.

        Args: pixel_values: [B, 3, H, W] normalized images (ImageNet statistics, as for CLIP).
        Returns: ([B, gh*gw, C] row-major tokens, (gh, gw)).
        """
        patch = self.backbone.config.patch_size
        image = resize_to_patch_multiple(pixel_values, patch)
        with frozen_tower_grad_mode(pixel_values):
            hidden = self.backbone(pixel_values=image).last_hidden_state  # [B, 1 + R + gh*gw, C]
        return hidden[:, 1 + self.num_register_tokens :], (image.shape[-2] // patch, image.shape[-1] // patch)

    def forward(self, pixel_values: torch.Tensor, grid: tuple[int, int]) -> DinoBranchOutput:
        """Args: pixel_values: [B, 3, H, W]; grid: (h, w) the CLIP patch grid the features are resized to."""
        tokens, dino_grid = self.patch_tokens(pixel_values)
        features = self.head([tokens], dino_grid)  # [B, dim, gh, gw]
        features = F.interpolate(features, size=grid, mode="bilinear", align_corners=False)
        return DinoBranchOutput(features=features, patch_tokens=tokens, grid=dino_grid)


__all__ = [
    "WeCLIPPlusDinoBranch",
    "DinoBranchOutput",
    "with_hub_positions",
    "Dinov2EmbeddingsWithHubPositions",
    "hub_position_embeddings",
    "dinov2_backbone",
    "resize_to_patch_multiple",
]

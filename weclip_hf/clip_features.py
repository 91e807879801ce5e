"""The frozen CLIP vision tower as WeCLIP runs it: the features its decoder and pseudo labels read.

- `embed_patches`: patch and class embeddings with bilinearly resized position embeddings (as the official code),
  then the pre-LayerNorm;
- `clip_features`: the first L-1 blocks (`weclip_hf.clip_layers`), eager only where an attention map is needed,
  a few images at a time on a CPU (`weclip_hf.chunking`), as a `CLIPVisionFeatures`;
- `vision_outputs`: the ``hidden_states`` / ``attentions`` that the output flags ask for (the last block run
  once more for them);
- `in_float32`: a float32 version of a module, for the last block's precision-critical CAM path
  (`weclip_hf.last_block`) in a model loaded in half precision.

The functions take the `CLIPVisionModel` (and its modules) rather than the WeCLIP model, so WeCLIP and WeCLIP+
run the same tower.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .chunking import batch_chunks, concat_chunks, images_per_attention_chunk
from .clip_layers import clip_layer, eager_clip_layer


@dataclass
class CLIPVisionFeatures:
    """The frozen vision tower up to (not including) its last block, on one batch of images."""

    embeddings: torch.Tensor  # [B, 1+N, D] input of the first block (after the pre-LayerNorm)
    hidden: list[torch.Tensor]  # outputs of the first L-1 blocks, [B, 1+N, D] each
    attention: list[torch.Tensor]  # head-averaged float32 maps [B, 1+N, 1+N] of the last blocks asked for
    grid: tuple[int, int]  # (h, w) of the patch grid
    head_attentions: list[torch.Tensor] | None = None  # per-head maps [B, heads, 1+N, 1+N] of all L-1 blocks

    @classmethod
    def concat(cls, chunks: list[CLIPVisionFeatures]) -> CLIPVisionFeatures:
        """The features of consecutive chunks of one batch of images, joined along the batch."""
        first = chunks[0]

        def joined(field: str) -> list[torch.Tensor]:
            return [concat_chunks(list(parts)) for parts in zip(*(getattr(c, field) for c in chunks))]

        return cls(
            concat_chunks([c.embeddings for c in chunks]),
            joined("hidden"),
            joined("attention"),
            first.grid,
            None if first.head_attentions is None else joined("head_attentions"),
        )


def embed_patches(
    vision_model: nn.Module, pixel_values: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch + class embeddings with BILINEARLY resized position embeddings (always, as the official
    code; HF's own `interpolate_pos_encoding` is bicubic), then the pre-LayerNorm: [B, 1+N, D]."""
    emb = vision_model.embeddings
    dtype = emb.patch_embedding.weight.dtype
    patches = emb.patch_embedding(pixel_values.to(dtype))  # [B, D, h, w]
    b, d, h, w = patches.shape
    pos = emb.position_embedding.weight
    side = int((pos.shape[0] - 1) ** 0.5)
    grid_pos = pos[1:].reshape(1, side, side, d).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos.float(), size=(h, w), mode="bilinear", align_corners=False)
    pos = torch.cat([pos[:1].float(), grid_pos.flatten(2).transpose(1, 2)[0]], dim=0).to(dtype)
    tokens = torch.cat([emb.class_embedding.expand(b, 1, d), patches.flatten(2).transpose(1, 2)], dim=1)
    return vision_model.pre_layrnorm(tokens + pos), (h, w)


def frozen_tower_grad_mode(inputs: torch.Tensor) -> torch.set_grad_enabled:
    """The grad mode a frozen tower runs in: off, unless its ``inputs`` require a gradient (saliency maps and
    other gradients w.r.t. the pixels); the towers' own weights never get one (`freeze_backbones`). Off whatever
    the tower's ``requires_grad``: a tower a user unfreezes is not fine-tuned by a training step."""
    return torch.set_grad_enabled(torch.is_grad_enabled() and inputs.requires_grad)


def clip_features(
    vision_model: nn.Module,
    pixel_values: torch.Tensor,
    num_attention_maps: int = 0,
    output_attentions: bool = False,
) -> CLIPVisionFeatures:
    """The frozen tower on ``pixel_values`` [B, 3, H, W] up to (not including) the last block: the block outputs,
    the head-averaged attention maps of the last ``num_attention_maps`` of those L-1 blocks (the other blocks run
    the configured attention, SDPA by default) and, with ``output_attentions``, every block's per-head maps (all
    blocks then run eagerly).

    On a CPU a few images at a time go through all the blocks (`weclip_hf.chunking`: their [heads, T, T]
    attention maps within the budget), so that each chunk's activations stay in the cache from block to
    block and the temporaries are reused memory; the results are those of the whole batch."""
    with frozen_tower_grad_mode(pixel_values):
        x, grid = embed_patches(vision_model, pixel_values)
        heads = vision_model.config.num_attention_heads
        chunk = images_per_attention_chunk(x.shape[0], x.shape[1], heads, x.device)
        layers = vision_model.encoder.layers
        return CLIPVisionFeatures.concat(
            [
                _clip_blocks(layers, part, grid, num_attention_maps, output_attentions)
                for part in batch_chunks(x, chunk)
            ]
        )


def _clip_blocks(
    layers: nn.ModuleList,
    x: torch.Tensor,
    grid: tuple[int, int],
    num_attention_maps: int,
    output_attentions: bool,
) -> CLIPVisionFeatures:
    """`clip_features` of one chunk of embedded images ``x`` [b, 1+N, D] through all ``layers`` but the last."""
    embeddings = x
    first_map = len(layers) - 1 - num_attention_maps
    hidden, attention, head_attentions = [], [], []
    for i, layer in enumerate(layers[:-1]):
        if i >= first_map or output_attentions:
            x, probs = eager_clip_layer(layer, x)
            if output_attentions:
                head_attentions.append(probs)
            if i >= first_map:
                attention.append(probs.mean(dim=1))
        else:
            x = clip_layer(layer, x)
        hidden.append(x)
    return CLIPVisionFeatures(
        embeddings, hidden, attention, grid, head_attentions if output_attentions else None
    )


def _last_block(
    vision_model: nn.Module, x: torch.Tensor, output_attentions: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The last CLIP block on [B, 1+N, D] tokens: (output, per-head maps or None) for the output flags."""
    layer = vision_model.encoder.layers[-1]
    with frozen_tower_grad_mode(x):
        return eager_clip_layer(layer, x) if output_attentions else (clip_layer(layer, x), None)


def vision_outputs(
    vision_model: nn.Module,
    clip: CLIPVisionFeatures,
    output_hidden_states: bool | list[int],
    output_attentions: bool,
) -> tuple[tuple | None, tuple | None]:
    """``(hidden_states, attentions)`` for the output flags (None when not asked): the last block is run
    once more for them."""
    if not (output_hidden_states or output_attentions):
        return None, None
    last, last_attention = _last_block(vision_model, clip.hidden[-1], output_attentions)
    hidden_states = None
    if output_hidden_states:
        hidden_states = select_layers((clip.embeddings, *clip.hidden, last), output_hidden_states)
    attentions = (*clip.head_attentions, last_attention) if output_attentions else None
    return hidden_states, attentions


def select_layers(
    states: tuple[torch.Tensor, ...], which: bool | list[int]
) -> tuple[torch.Tensor | None, ...]:
    """All of ``states`` (``which=True``) or only those at the indices ``which`` (negative from the end),
    None elsewhere, as transformers' ``output_hidden_states=[...]``."""
    if which is True:
        return states
    n = len(states)
    if not isinstance(which, (list, tuple)) or not all(type(i) is int and -n <= i < n for i in which):
        raise ValueError(
            f"output_hidden_states must be True, False or a list of indices in [-{n}, {n - 1}] (the embeddings, then "
            f"every block's output), got {which!r}."
        )
    kept = {i % n for i in which}
    return tuple(s if i in kept else None for i, s in enumerate(states))


# the float32 copies `in_float32` made, by module: (the weights' identity when copied, the copy)
_FLOAT32_COPIES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]] = weakref.WeakKeyDictionary()


def in_float32(module: nn.Module) -> nn.Module:
    """``module`` itself when its weights are float32, else a float32 copy (for the precision-critical CAM
    path of a model loaded in half precision). The copy is made once and kept while the frozen weights it copies
    stay the same tensors, unchanged in place (their storage and version counter: loading, ``.to()`` or an
    in-place write makes a new copy); it was made again at every forward."""
    parameters = list(module.parameters())
    if all(p.dtype == torch.float32 for p in parameters):
        return module
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in parameters)
    cached = _FLOAT32_COPIES.get(module)
    if cached is None or cached[0] != key:
        cached = _FLOAT32_COPIES[module] = (key, copy.deepcopy(module).float())
    return cached[1]


__all__ = [
    "CLIPVisionFeatures",
    "clip_features",
    "embed_patches",
    "frozen_tower_grad_mode",
    "in_float32",
    "select_layers",
    "vision_outputs",
]

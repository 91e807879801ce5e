"""Key tables of official WeCLIP+ checkpoints: the DINOv2 in torch.hub naming and the DINO feature head.

An official WeCLIP+ checkpoint (``torch.save(model.state_dict())`` of its ``WeCLIP_Plus`` module) holds what a
WeCLIP checkpoint holds (`weclip_keys`: ``encoder.*``, ``decoder_fts_fuse.*`` with one CLIP layer here,
``decoder.*``, ``par.kernel``) and:

- ``dino_encoder.*``: the frozen DINOv2 as torch.hub builds it: ``cls_token``, ``pos_embed``, ``mask_token``,
  ``register_tokens`` (the ``*_reg`` variants), ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj,
  ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``; each ``attn.qkv`` packs q, k, v along its rows;
- ``dino_decoder_fts_fuse.*``: the DINO feature head, laid out as WeCLIP's CLIP head (one input).

`DINOV2_HUB_KEYS` maps the hub names to transformers `Dinov2Model` / `Dinov2WithRegistersModel` names (both bare,
as the two libraries' ``state_dict()`` have them); ours sit under ``dino_branch.backbone.``. `DINO_HEAD_KEYS`
maps the head to ``dino_branch.head.*``. SwiGLU (ViT-g) and chunked-block hub checkpoints are not supported: their
keys are named as unknown.
"""

from __future__ import annotations

import torch

from .key_renaming import KeyTable, Rename
from .report import ConversionReport, count_dtypes, raise_for_keys
from .weclip_keys import feature_fusion_rules

DINO_PREFIX = "dino_encoder."  # official
DINO_HEAD_PREFIX = "dino_decoder_fts_fuse."
DINO_PREFIXES = (DINO_PREFIX, DINO_HEAD_PREFIX)
BACKBONE = "dino_branch.backbone."  # ours
HEAD = "dino_branch.head."
DINO_BLOCKS = "blocks."  # the official block stem (`Rename.block_stem`)


def _hub_block_rules() -> tuple[Rename, ...]:
    """The rules of a torch.hub DINOv2 block (``blocks.{i}.*``) -> transformers ``encoder.layer.{i}.*``, the
    packed q/k/v projection split in three."""
    o, h = DINO_BLOCKS + "{i}.", "encoder.layer.{i}."
    return (
        Rename(o + "norm1.{p}", h + "norm1.{p}"),
        Rename(o + "attn.qkv.{p}", tuple(f"{h}attention.{x}_proj.{{p}}" for x in "qkv")),
        Rename(o + "attn.proj.{p}", h + "attention.o_proj.{p}"),
        Rename(o + "ls1.gamma", h + "layer_scale1.lambda1"),
        Rename(o + "norm2.{p}", h + "norm2.{p}"),
        Rename(o + "mlp.fc1.{p}", h + "mlp.fc1.{p}"),
        Rename(o + "mlp.fc2.{p}", h + "mlp.fc2.{p}"),
        Rename(o + "ls2.gamma", h + "layer_scale2.lambda1"),
    )


DINOV2_HUB_KEYS = KeyTable(
    (
        Rename("cls_token", "embeddings.cls_token"),
        Rename("mask_token", "embeddings.mask_token"),
        Rename("pos_embed", "embeddings.position_embeddings"),
        Rename("register_tokens", "embeddings.register_tokens"),
        Rename("patch_embed.proj.{p}", "embeddings.patch_embeddings.projection.{p}"),
        *_hub_block_rules(),
        Rename("norm.{p}", "layernorm.{p}"),
    )
)
DINO_HEAD_KEYS = KeyTable(feature_fusion_rules(DINO_HEAD_PREFIX, HEAD))


def is_weclip_plus_checkpoint(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether an official state dict holds a DINO branch (``dino_encoder.*`` or ``dino_decoder_fts_fuse.*``)."""
    return any(k.startswith(DINO_PREFIXES) for k in state_dict)


def without_dino(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The WeCLIP part of an official state dict: every key but the DINO branch's."""
    return {k: v for k, v in state_dict.items() if not k.startswith(DINO_PREFIXES)}


def convert_hub_dinov2_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch.hub DINOv2 weights (bare keys: ``blocks.N.attn.qkv``, ``ls1.gamma``, ``norm``, ...) -> `Dinov2Model`
    / `Dinov2WithRegistersModel` keys, float32; ``attn.qkv`` rows are split into q, k, v thirds.

    Raises:
        ValueError: naming every key with no transformers name.
    """
    out, _, unknown = DINOV2_HUB_KEYS.to_ours(state_dict)
    raise_for_keys("Unknown torch.hub DINOv2 weights (no transformers name for them)", unknown)
    return out


def official_to_dino(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map the official DINO keys (``dino_encoder.*``, ``dino_decoder_fts_fuse.*``) to ``dino_branch.*`` of ours.

    Other keys are not looked at. Tensors come out float32.
    Raises:
        ValueError: naming every unknown DINO key, or a packed ``attn.qkv`` that does not split in three.
    """
    backbone = {k: v for k, v in state_dict.items() if k.startswith(DINO_PREFIX)}
    head = {k: v for k, v in state_dict.items() if k.startswith(DINO_HEAD_PREFIX)}
    backbone_out, backbone_mapped, unknown = DINOV2_HUB_KEYS.to_ours(backbone, DINO_PREFIX)
    head_out, head_mapped, head_unknown = DINO_HEAD_KEYS.to_ours(head)
    raise_for_keys("Unknown DINO keys in the checkpoint (no mapping for them)", unknown + head_unknown)
    report = ConversionReport(source_dtypes=count_dtypes({**backbone, **head}))
    report.mapped = {k: [BACKBONE + name for name in names] for k, names in backbone_mapped.items()}
    report.mapped.update(head_mapped)
    return {**{BACKBONE + k: v for k, v in backbone_out.items()}, **head_out}, report


def dino_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `official_to_dino`: ``dino_branch.*`` of ours -> official names (float32); other keys are
    ignored.

    Raises:
        ValueError: naming a ``dino_branch`` key with no official name, or a q/k/v projection without its
            siblings.
    """
    backbone = {k[len(BACKBONE) :]: v for k, v in state_dict.items() if k.startswith(BACKBONE)}
    head = {k: v for k, v in state_dict.items() if k.startswith(HEAD)}
    out, unknown = DINOV2_HUB_KEYS.to_official(backbone, DINO_PREFIX)
    head_out, head_unknown = DINO_HEAD_KEYS.to_official(head)
    raise_for_keys(
        "Unknown DINO keys (no official name for them)", [BACKBONE + k for k in unknown] + head_unknown
    )
    return {**out, **head_out}

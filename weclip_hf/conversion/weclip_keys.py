"""Key tables of official WeCLIP checkpoints: OpenAI CLIP and the WeCLIP decoder, both directions.

The official code saves ``torch.save(model.state_dict())`` of its ``WeCLIP`` module:

- ``encoder.*``: the whole OpenAI CLIP (``visual.*`` image tower, text tower, ``text_projection``,
  ``logit_scale``), some tensors possibly in fp16; OpenAI's ``ViT-B-16.pt`` holds the same keys without
  ``encoder.`` (plus hyper-parameters, `CLIP_METADATA_KEYS`);
- ``decoder_fts_fuse.*`` and ``decoder.*``: the trained decoder;
- ``par.kernel``: a constant buffer (the 8 one-hot 3x3 neighbour kernels of PAR), checked and dropped;
- ``encoder.visual.positional_embedding_new``: in every checkpoint the official training scripts save (its CLIP
  forward registers the position embedding resized to the last input as a parameter), dropped
  (`CLIP_FORWARD_CACHE_KEYS`).

`CLIP_KEYS` maps the OpenAI CLIP names to transformers ``CLIPModel`` names (``visual.proj`` and
``text_projection`` are ``x @ proj``, hence transposed; each block's ``attn.in_proj_*`` packs q, k, v), and
`DECODER_KEYS` the decoder names to ours. Every key is accounted for: an unknown or missing key raises a
``ValueError`` that names it. Output tensors are float32 whatever the input dtype.
"""

from __future__ import annotations

import torch

from .key_renaming import KeyTable, Rename
from .report import ConversionReport, count_dtypes, raise_for_keys

# Keys of the OpenAI TorchScript archive that are model hyper-parameters, not weights.
CLIP_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
# What the official CLIP's forward registers on the model (`self.positional_embedding_new = upsample_pos_emb(...)`,
# an nn.Parameter): the position embedding resized to the grid of the last input, recomputed from
# visual.positional_embedding at every forward.
CLIP_FORWARD_CACHE_KEYS = ("visual.positional_embedding_new",)
PAR_KERNEL_KEY = "par.kernel"
_PAR_NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))
VISION_BLOCKS = "visual.transformer.resblocks."  # official block stems (`Rename.block_stem`)
TEXT_BLOCKS = "transformer.resblocks."


def residual_block_rules(official: str, ours: str) -> tuple[Rename, ...]:
    """The rules of an OpenAI CLIP residual block (``{official}{i}.*``) -> transformers ``CLIPEncoderLayer``
    (``{ours}{i}.*``), the packed q/k/v projection split in three."""
    o, h = official + "{i}.", ours + "{i}."
    return (
        Rename(o + "attn.in_proj_{p}", tuple(f"{h}self_attn.{x}_proj.{{p}}" for x in "qkv")),
        Rename(o + "attn.out_proj.{p}", h + "self_attn.out_proj.{p}"),
        Rename(o + "ln_1.{p}", h + "layer_norm1.{p}"),
        Rename(o + "ln_2.{p}", h + "layer_norm2.{p}"),
        Rename(o + "mlp.c_fc.{p}", h + "mlp.fc1.{p}"),
        Rename(o + "mlp.c_proj.{p}", h + "mlp.fc2.{p}"),
    )


CLIP_KEYS = KeyTable(
    (
        Rename("visual.class_embedding", "vision_model.embeddings.class_embedding"),
        Rename("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
        Rename("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight"),
        Rename("visual.ln_pre.{p}", "vision_model.pre_layrnorm.{p}"),
        Rename("visual.ln_post.{p}", "vision_model.post_layernorm.{p}"),
        Rename("visual.proj", "visual_projection.weight", transpose=True),
        Rename("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
        Rename("positional_embedding", "text_model.embeddings.position_embedding.weight"),
        Rename("ln_final.{p}", "text_model.final_layer_norm.{p}"),
        Rename("text_projection", "text_projection.weight", transpose=True),
        Rename("logit_scale", "logit_scale"),
        *residual_block_rules(VISION_BLOCKS, "vision_model.encoder.layers."),
        *residual_block_rules(TEXT_BLOCKS, "text_model.encoder.layers."),
    )
)


def feature_fusion_rules(official: str, ours: str) -> tuple[Rename, ...]:
    """The rules of an official feature-fusion head (``{official}linears_modulelist.{i}.proj`` / ``.proj_2``
    per CLIP layer, ``{official}linear_fuse``) -> ours (``{ours}layer_mlps.{i}.fc1`` / ``.fc2``, ``{ours}fuse``)."""
    return (
        Rename(official + "linears_modulelist.{i}.proj.{p}", ours + "layer_mlps.{i}.fc1.{p}"),
        Rename(official + "linears_modulelist.{i}.proj_2.{p}", ours + "layer_mlps.{i}.fc2.{p}"),
        Rename(official + "linear_fuse.{p}", ours + "fuse.{p}"),
    )


def _decoder_block_rules(official: str, ours: str) -> tuple[Rename, ...]:
    o, h = official + "{i}.", ours + "{i}."
    return (
        Rename(o + "ln_1.{p}", h + "layer_norm1.{p}"),
        Rename(o + "attn.in_proj_{p}", h + "self_attn.in_proj.{p}"),  # kept packed: one in_proj of ours
        Rename(o + "attn.out_proj.{p}", h + "self_attn.out_proj.{p}"),
        Rename(o + "ln_2.{p}", h + "layer_norm2.{p}"),
        Rename(o + "mlp.c_fc.{p}", h + "mlp.fc1.{p}"),
        Rename(o + "mlp.c_proj.{p}", h + "mlp.fc2.{p}"),
    )


DECODER_KEYS = KeyTable(
    (
        *feature_fusion_rules("decoder_fts_fuse.", "decoder."),
        *_decoder_block_rules("decoder.transformer.resblocks.", "decoder.blocks."),
        Rename("decoder.linear_pred.{p}", "decoder.classifier.{p}"),
    )
)
DECODER_PREFIXES = ("decoder.", "decoder_fts_fuse.")  # official


# ---- CLIP --------------------------------------------------------------------------------------------


def find_clip_prefix(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The prefix of an official state dict's CLIP keys: ``"encoder."`` (official WeCLIP checkpoint), ``""``
    (OpenAI CLIP), or None when it holds no CLIP image tower."""
    if any(k.startswith("encoder.visual.") for k in state_dict):
        return "encoder."
    if any(k.startswith("visual.") for k in state_dict):
        return ""
    return None


def clip_prefix(state_dict: dict[str, torch.Tensor]) -> str:
    """``find_clip_prefix``, refusing a state dict without a CLIP image tower."""
    prefix = find_clip_prefix(state_dict)
    if prefix is None:
        raise ValueError(
            "No CLIP image tower found: expected keys 'visual.*' (OpenAI CLIP) or 'encoder.visual.*' (official "
            f"WeCLIP checkpoint); got e.g. {sorted(state_dict)[:5]}. For a checkpoint without CLIP weights, pass "
            "clip= (--clip), a transformers CLIP folder or Hub id."
        )
    return prefix


def dropped_clip_key(name: str) -> str | None:
    """Why the conversion drops an official CLIP name (without prefix): archive metadata, the official forward's
    cache; None for any other name."""
    if name in CLIP_METADATA_KEYS:
        return "CLIP hyper-parameter stored in the archive, not a weight"
    if name in CLIP_FORWARD_CACHE_KEYS:
        return "the position embedding the official forward resized to its last input, recomputed at every forward"
    return None


def dropped_clip_keys(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, str]:
    """The official CLIP keys under ``prefix`` of ``state_dict`` that the conversion drops, each with why
    (`dropped_clip_key`): the report's ``ignored``, never counted among the tensors read."""
    names = {k: k[len(prefix) :] for k in state_dict if k.startswith(prefix)}
    return {k: why for k, name in names.items() if (why := dropped_clip_key(name))}


def is_known_clip_key(key: str, prefix: str) -> bool:
    """Whether ``key`` is an official CLIP key under ``prefix`` that the conversion maps or drops."""
    name = key[len(prefix) :]
    return key.startswith(prefix) and (dropped_clip_key(name) is not None or CLIP_KEYS.owns_official(name))


def is_clip_key(key: str, prefix: str = "") -> bool:
    """Whether an official key belongs to the CLIP part: everything under ``prefix`` but the decoder and
    ``par`` (so an unknown key there is reported as an unknown CLIP key, never skipped)."""
    return key.startswith(prefix) and not key[len(prefix) :].startswith((*DECODER_PREFIXES, "par."))


def official_to_hf_clip(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], ConversionReport]:
    """Map an OpenAI-layout CLIP state dict to transformers ``CLIPModel`` names.

    Args:
        state_dict: the CLIP keys, bare (OpenAI ``ViT-B-16.pt``) or under ``encoder.`` (official WeCLIP
            checkpoint; non-CLIP keys of such a checkpoint are not looked at), fp16 or fp32.
    Returns:
        ``(vision_sd, text_sd, proj_sd, report)``: ``vision_model.*``, ``text_model.*`` and
        ``{visual_projection.weight, text_projection.weight, logit_scale}`` float32 tensors (their union
        loads into ``CLIPModel`` with ``strict=True``; strip ``vision_model.`` for a bare
        ``CLIPVisionModel``), and the report.
    Raises:
        ValueError: naming every unknown or missing CLIP key, or a packed projection of the wrong size.
    """
    prefix = clip_prefix(state_dict)
    clip = {k: v for k, v in state_dict.items() if is_clip_key(k, prefix)}
    report = ConversionReport(prefix=prefix, ignored=dropped_clip_keys(clip, prefix))
    weights = {k: v for k, v in clip.items() if k not in report.ignored}
    report.source_dtypes = count_dtypes(weights)
    out, report.mapped, unknown = CLIP_KEYS.to_ours(weights, prefix)
    raise_for_keys("Unknown CLIP keys in the checkpoint (no mapping for them)", unknown)
    blocks = CLIP_KEYS.block_counts(weights, prefix)
    expected = CLIP_KEYS.official_keys(blocks, prefix)
    raise_for_keys("Missing CLIP keys in the checkpoint", [k for k in expected if k not in weights])
    if not blocks.get(TEXT_BLOCKS):
        raise_for_keys("Missing CLIP keys in the checkpoint", [f"{prefix}{TEXT_BLOCKS}0.*"])
    vision = {k: v for k, v in out.items() if k.startswith("vision_model.")}
    text = {k: v for k, v in out.items() if k.startswith("text_model.")}
    proj = {k: v for k, v in out.items() if not k.startswith(("vision_model.", "text_model."))}
    return vision, text, proj, report


def hf_to_official_clip(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Inverse of `official_to_hf_clip`: ``CLIPModel``-named tensors -> OpenAI CLIP names (float32).

    Args:
        state_dict: ``vision_model.*``, ``text_model.*``, ``visual_projection.weight``,
            ``text_projection.weight``, ``logit_scale`` (other keys, e.g. a WeCLIP decoder, are ignored).
        prefix: put in front of every official key (``"encoder."`` for the WeCLIP layout).
    Raises:
        ValueError: naming an unknown CLIP key or a q/k/v projection without its siblings.
    """
    clip = {
        k: v
        for k, v in state_dict.items()
        if not k.endswith("position_ids")
        and (k.startswith(("vision_model.", "text_model.")) or CLIP_KEYS.owns_ours(k))
    }
    out, unknown = CLIP_KEYS.to_official(clip, prefix)
    raise_for_keys("Unknown CLIP keys (no official name for them)", unknown)
    return out


# ---- decoder -----------------------------------------------------------------------------------------


def _par_kernel() -> torch.Tensor:
    """The official ``par.kernel`` constant: 8 one-hot 3x3 kernels, one per ring neighbour [8, 1, 3, 3]."""
    kernel = torch.zeros(len(_PAR_NEIGHBOURS), 1, 3, 3)
    for n, (r, c) in enumerate(_PAR_NEIGHBOURS):
        kernel[n, 0, r, c] = 1.0
    return kernel


def check_par_kernel(kernel: torch.Tensor) -> None:
    """Check that ``par.kernel`` is the constant PAR expects: the 8 one-hot 3x3 neighbour kernels."""
    expected = _par_kernel()
    if tuple(kernel.shape) != tuple(expected.shape) or not torch.equal(kernel.float(), expected):
        raise ValueError(
            f"{PAR_KERNEL_KEY} is not the 8 one-hot 3x3 neighbour kernels PAR uses (shape "
            f"{tuple(kernel.shape)}): this checkpoint was not written by the official WeCLIP code."
        )


def official_to_decoder(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map the official decoder keys (``decoder_fts_fuse.*``, ``decoder.*``) to ``decoder.*`` of ours.

    Other keys are not looked at, except ``par.kernel``, which is checked and reported as ignored.
    """
    report = ConversionReport()
    if PAR_KERNEL_KEY in state_dict:
        check_par_kernel(state_dict[PAR_KERNEL_KEY])
        report.ignored[PAR_KERNEL_KEY] = "constant PAR neighbour kernels (checked, rebuilt by the model)"
    decoder = {k: v for k, v in state_dict.items() if k.startswith(DECODER_PREFIXES)}
    out, report.mapped, unknown = DECODER_KEYS.to_ours(decoder)
    report.source_dtypes = count_dtypes({k: state_dict[k] for k in report.mapped})
    raise_for_keys("Unknown decoder keys in the checkpoint (no mapping for them)", unknown)
    return out, report


def decoder_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `official_to_decoder` (``decoder.*`` of ours -> official names), plus ``par.kernel``."""
    out, unknown = DECODER_KEYS.to_official({k: v for k, v in state_dict.items() if k.startswith("decoder.")})
    raise_for_keys("Unknown decoder keys (no official name for them)", unknown)
    out[PAR_KERNEL_KEY] = _par_kernel()
    return out

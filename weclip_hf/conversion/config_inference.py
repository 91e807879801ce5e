"""A `WeCLIPConfig` for an official checkpoint: sizes read from its tensor shapes, the rest from a preset."""

from __future__ import annotations

import re
from typing import Any

import torch

from ..configuration_weclip import WeCLIPConfig
from ..presets import preset_config_kwargs
from .report import raise_for_keys
from .weclip_keys import TEXT_BLOCKS, VISION_BLOCKS, clip_prefix


def _count_blocks(keys: list[str], stem: str) -> int:
    pattern = re.compile(re.escape(stem) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_clip_configs(
    state_dict: dict[str, torch.Tensor], vision_heads: int | None = None, text_heads: int | None = None
) -> tuple[dict, dict, int]:
    """CLIP vision/text config kwargs and the projection dim from the shapes of an OpenAI-layout state dict.

    Heads are ``width // 64`` as OpenAI CLIP builds them, unless given.
    """
    prefix = clip_prefix(state_dict)
    sd = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    keys = list(sd)
    needed = [
        "visual.conv1.weight",
        "visual.positional_embedding",
        "visual.proj",
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        f"{VISION_BLOCKS}0.mlp.c_fc.weight",
        f"{TEXT_BLOCKS}0.mlp.c_fc.weight",
    ]
    raise_for_keys("Cannot infer the CLIP sizes; missing keys", [prefix + k for k in needed if k not in sd])
    width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    if grid * grid + 1 != sd["visual.positional_embedding"].shape[0]:
        raise ValueError(
            f"{prefix}visual.positional_embedding has {sd['visual.positional_embedding'].shape[0]} "
            "rows, not 1 + a square number of patches."
        )
    text_width = sd["ln_final.weight"].shape[0]
    vocab = sd["token_embedding.weight"].shape[0]
    vision = dict(
        hidden_size=int(width),
        intermediate_size=int(sd[f"{VISION_BLOCKS}0.mlp.c_fc.weight"].shape[0]),
        num_hidden_layers=_count_blocks(keys, VISION_BLOCKS),
        num_attention_heads=vision_heads or max(1, int(width) // 64),
        image_size=int(patch * grid),
        patch_size=int(patch),
        projection_dim=int(sd["visual.proj"].shape[1]),
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = dict(
        vocab_size=int(vocab),
        hidden_size=int(text_width),
        intermediate_size=int(sd[f"{TEXT_BLOCKS}0.mlp.c_fc.weight"].shape[0]),
        num_hidden_layers=_count_blocks(keys, TEXT_BLOCKS),
        num_attention_heads=text_heads or max(1, int(text_width) // 64),
        max_position_embeddings=int(sd["positional_embedding"].shape[0]),
        projection_dim=int(sd["visual.proj"].shape[1]),
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        # OpenAI's BPE puts <|startoftext|>, <|endoftext|> last; EOT pooling looks for eos_token_id.
        bos_token_id=int(vocab) - 2,
        eos_token_id=int(vocab) - 1,
        pad_token_id=1,
    )
    return vision, text, int(sd["visual.proj"].shape[1])


def infer_decoder_kwargs(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Decoder sizes from the official decoder keys (heads cannot be read from shapes: default 8)."""
    need = [
        "decoder_fts_fuse.linear_fuse.weight",
        "decoder.linear_pred.weight",
        "decoder.transformer.resblocks.0.mlp.c_fc.weight",
    ]
    raise_for_keys("Cannot infer the decoder sizes; missing keys", [k for k in need if k not in state_dict])
    keys = list(state_dict)
    dim = int(state_dict["decoder_fts_fuse.linear_fuse.weight"].shape[0])
    return dict(
        decoder_hidden_size=dim,
        decoder_num_layers=_count_blocks(keys, "decoder.transformer.resblocks."),
        decoder_mlp_ratio=int(state_dict["decoder.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]) // dim,
        num_feature_layers=_count_blocks(keys, "decoder_fts_fuse.linears_modulelist."),
        num_labels=int(state_dict["decoder.linear_pred.weight"].shape[0]),
    )


def build_config(
    vision: dict,
    text: dict,
    projection_dim: int,
    state_dict: dict[str, torch.Tensor],
    preset: str,
    overrides: dict[str, Any],
) -> WeCLIPConfig:
    """The config of an official checkpoint for given CLIP configs: decoder sizes from ``state_dict``, class
    names and method constants from ``preset``, then ``overrides``.

    Raises:
        ValueError: when the checkpoint's classifier does not predict the preset's classes + background.
    """
    kwargs = preset_config_kwargs(preset)
    decoder = infer_decoder_kwargs(state_dict)
    num_labels = decoder.pop("num_labels")
    if decoder["num_feature_layers"] == vision["num_hidden_layers"] - 1:
        decoder["num_feature_layers"] = None  # the default: all blocks but the last
    kwargs.update(decoder)
    kwargs.update(overrides)
    preset_labels = len(kwargs["class_names"]) + 1  # checked first: the preset's other counts may not fit
    if preset_labels != num_labels:
        raise ValueError(
            f"decoder.linear_pred predicts {num_labels} classes but preset {preset!r} has {preset_labels} "
            "(background + foreground): pass the matching --preset (voc: 21, coco: 81)."
        )
    return WeCLIPConfig(vision_config=vision, text_config=text, projection_dim=projection_dim, **kwargs)


def infer_config_from_official(
    state_dict: dict[str, torch.Tensor], preset: str = "voc", **overrides: Any
) -> WeCLIPConfig:
    """A `WeCLIPConfig` for an official checkpoint: CLIP and decoder sizes from the tensor shapes, class
    names and method constants from the dataset ``preset`` (``"voc"`` or ``"coco"``).

    ``overrides`` are passed to the config last (e.g. ``decoder_num_heads``, which shapes cannot tell;
    ``vision_heads`` / ``text_heads`` set the CLIP head counts, default ``width // 64``).
    """
    vision_heads, text_heads = overrides.pop("vision_heads", None), overrides.pop("text_heads", None)
    vision, text, projection_dim = infer_clip_configs(state_dict, vision_heads, text_heads)
    return build_config(vision, text, projection_dim, state_dict, preset, overrides)

"""The config of an official checkpoint: sizes read from its tensor shapes, the rest from a preset.

A WeCLIP preset (``voc``, ``coco``) gives a `WeCLIPConfig`, a WeCLIP+ one (``voc-plus``, ``coco-plus``) a
`WeCLIPPlusConfig`, whose DINOv2 is read from the ``dino_encoder.*`` shapes too; a checkpoint of the other method
is refused with the presets that fit it."""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import Dinov2Config, Dinov2WithRegistersConfig

from ..configuration_weclip import WeCLIPConfig
from ..configuration_weclip_plus import WeCLIPPlusConfig
from ..presets import CLIP_MODEL, METHOD_NAMES, get_preset, with_class_names
from .report import raise_for_keys
from .weclip_keys import DECODER_PREFIXES, TEXT_BLOCKS, VISION_BLOCKS, clip_prefix, find_clip_prefix
from .weclip_plus_keys import DINO_BLOCKS, DINO_PREFIX, DINO_PREFIXES, is_weclip_plus_checkpoint

# the presets an official checkpoint converts with, by the `model_type` they build
OFFICIAL_PRESETS = {"weclip": ("voc", "coco"), "weclip_plus": ("voc-plus", "coco-plus")}
_FUSE_LAYERS = "decoder_fts_fuse.linears_modulelist."  # one projection per CLIP layer the decoder fuses
_FUSE_PROJ = _FUSE_LAYERS + "0.proj.weight"  # [decoder width, CLIP width]


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


# the sizes that one tensor of a checkpoint's own CLIP tells (OpenAI's names): how a refusal names each -> (the
# tensor, its dimension that gives it, its tower and that tower's config field; the projection size is the CLIP's)
_TENSOR_SIZES = {
    "width": ("visual.conv1.weight", 0, "vision", "hidden_size"),
    "patch size": ("visual.conv1.weight", 2, "vision", "patch_size"),
    "MLP width": (f"{VISION_BLOCKS}0.mlp.c_fc.weight", 0, "vision", "intermediate_size"),
    "projection size": ("visual.proj", 1, "vision", "projection_dim"),
    "text width": ("ln_final.weight", 0, "text", "hidden_size"),
    "text MLP width": (f"{TEXT_BLOCKS}0.mlp.c_fc.weight", 0, "text", "intermediate_size"),
    "context length": ("positional_embedding", 0, "text", "max_position_embeddings"),
    "vocabulary": ("token_embedding.weight", 0, "text", "vocab_size"),
    "text projection size": ("text_projection", 1, "text", "projection_dim"),
}


def _own_clip_sizes(
    state_dict: dict[str, torch.Tensor], prefix: str, vision: dict, text: dict, projection_dim: int
) -> dict[str, tuple[int, int]]:
    """Each size of the checkpoint's own CLIP (under ``prefix``) with that of the given CLIP (``vision``, ``text``:
    its towers' configs as dicts; ``projection_dim``: its projection size), tower by tower: the layers, then each
    size of `_TENSOR_SIZES` (width, patch size, MLP width, projection, context length, vocabulary) where the
    checkpoint holds the tensor that tells it; a text tower without blocks is not counted."""
    keys = list(state_dict)
    # a tower config's own projection_dim is not the CLIP's (transformers keeps CLIPConfig's apart)
    towers = {
        "vision": ("layers", VISION_BLOCKS, {**vision, "projection_dim": projection_dim}),
        "text": ("text layers", TEXT_BLOCKS, {**text, "projection_dim": projection_dim}),
    }
    sizes = {}
    for tower, (layers_name, blocks, config) in towers.items():
        layers = _count_blocks(keys, prefix + blocks)
        # a checkpoint without text blocks tells nothing of the text tower's depth
        if layers or tower == "vision":
            sizes[layers_name] = (layers, config["num_hidden_layers"])
        sizes.update(
            {
                name: (int(state_dict[prefix + key].shape[dim]), config[field])
                for name, (key, dim, of, field) in _TENSOR_SIZES.items()
                if of == tower and prefix + key in state_dict
            }
        )
    return sizes


def check_clip_matches(
    state_dict: dict[str, torch.Tensor], vision: dict, text: dict, projection_dim: int, clip_name: str
) -> None:
    """Refuse a CLIP whose towers (``vision``, ``text``: its vision and text configs as dicts; ``projection_dim``:
    its projection size) are not the checkpoint's: the image tower's layer count, width, patch size and MLP width,
    the text tower's layer count, width, MLP width, context length and vocabulary, and the projection size of the
    checkpoint's own CLIP (``encoder.*``, or OpenAI's bare names) or, without one, the width and more layers than
    its decoder fuses (``decoder_fts_fuse.*``: the blocks before the last; the text tower cannot be read there).

    Raises:
        ValueError: naming each size that differs, with the checkpoint's value and ``clip_name``'s.
    """
    keys = list(state_dict)
    prefix = next((p for p in ("encoder.", "") if f"{p}visual.conv1.weight" in state_dict), None)
    differ = []
    if prefix is not None:
        sizes = _own_clip_sizes(state_dict, prefix, vision, text, projection_dim)
        source = f"its {prefix}visual.* and text tower tensors"
        differ = [f"{name} {ours} vs {theirs}" for name, (ours, theirs) in sizes.items() if ours != theirs]
    elif _FUSE_PROJ in state_dict:
        width = int(state_dict[_FUSE_PROJ].shape[1])
        read = _count_blocks(keys, _FUSE_LAYERS)
        source = f"what its {_FUSE_LAYERS}* reads"
        if width != vision["hidden_size"]:
            differ.append(f"width {width} vs {vision['hidden_size']}")
        if read >= vision["num_hidden_layers"]:
            differ.append(f"layers: at least {read + 1} (it fuses {read}) vs {vision['num_hidden_layers']}")
    if differ:
        raise ValueError(
            f"The CLIP {clip_name!r} (--clip / clip=) does not match the CLIP of the checkpoint ({source}): "
            f"{'; '.join(differ)} (checkpoint vs --clip). Pass the CLIP the checkpoint was trained with "
            "(the official WeCLIP checkpoints: openai/clip-vit-base-patch16)."
        )


def infer_decoder_kwargs(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Decoder sizes from the official decoder keys (heads cannot be read from shapes: default 8)."""
    need = [
        "decoder_fts_fuse.linear_fuse.weight",
        "decoder.linear_pred.weight",
        "decoder.transformer.resblocks.0.mlp.c_fc.weight",
    ]
    if find_clip_prefix(state_dict) is not None and not any(
        k.startswith(DECODER_PREFIXES) for k in state_dict
    ):
        raise ValueError(
            "The checkpoint holds a CLIP (visual.* tensors) and no WeCLIP decoder (decoder.*, decoder_fts_fuse.*): "
            "a CLIP checkpoint (e.g. OpenAI's ViT-B-16.pt), not a trained WeCLIP. Convert a checkpoint the official "
            "training saved (--checkpoint; its CLIP, or one given with --clip); a WeCLIP to train starts from a CLIP "
            "in transformers' layout: examples/train.py --clip_model_name_or_path openai/clip-vit-base-patch16."
        )
    raise_for_keys("Cannot infer the decoder sizes; missing keys", [k for k in need if k not in state_dict])
    keys = list(state_dict)
    dim = int(state_dict["decoder_fts_fuse.linear_fuse.weight"].shape[0])
    return dict(
        decoder_hidden_size=dim,
        decoder_num_layers=_count_blocks(keys, "decoder.transformer.resblocks."),
        decoder_mlp_ratio=int(state_dict["decoder.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]) // dim,
        num_feature_layers=_count_blocks(keys, _FUSE_LAYERS),
        num_labels=int(state_dict["decoder.linear_pred.weight"].shape[0]),
    )


def infer_dino_config(
    state_dict: dict[str, torch.Tensor], num_attention_heads: int | None = None
) -> Dinov2Config | Dinov2WithRegistersConfig:
    """The DINOv2 config of an official WeCLIP+ checkpoint's ``dino_encoder.*`` tensors (torch.hub naming).

    Width, depth, MLP ratio, patch size, position grid (the image size) and register tokens come from the shapes;
    heads, which shapes cannot tell, are ``width // 64`` (as in all six official variants) unless given; LayerNorm
    eps 1e-6 and LayerScale as the hub models.

    Raises:
        ValueError: naming the missing keys, a position embedding of no square grid, or an MLP whose width is no
            whole multiple of the model's (transformers' DINOv2 takes a whole ``mlp_ratio``).
    """
    p = DINO_PREFIX
    need = [
        p + k for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", f"{DINO_BLOCKS}0.mlp.fc1.weight")
    ]
    raise_for_keys("Cannot infer the DINOv2 sizes; missing keys", [k for k in need if k not in state_dict])
    width = int(state_dict[p + "cls_token"].shape[-1])
    patch = int(state_dict[p + "patch_embed.proj.weight"].shape[-1])
    positions = int(state_dict[p + "pos_embed"].shape[1]) - 1  # [1, 1 + M*M, D]
    grid = round(positions**0.5)
    if grid * grid != positions:
        raise ValueError(f"{p}pos_embed has {positions + 1} rows, not 1 + a square number of patches.")
    fc1 = f"{p}{DINO_BLOCKS}0.mlp.fc1.weight"
    hidden = int(state_dict[fc1].shape[0])
    # transformers' DINOv2 builds its MLP from a whole ratio (Dinov2Config.mlp_ratio: int)
    if hidden % width:
        raise ValueError(
            f"{fc1} has {hidden} rows, not a whole multiple of the width {width}: transformers' DINOv2 takes a "
            "whole MLP ratio (Dinov2Config.mlp_ratio), so this DINOv2 cannot be converted."
        )
    kwargs = dict(
        hidden_size=width,
        num_hidden_layers=_count_blocks(list(state_dict), p + DINO_BLOCKS),
        num_attention_heads=num_attention_heads or max(1, width // 64),
        mlp_ratio=hidden // width,
        patch_size=patch,
        image_size=patch * grid,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )
    if p + "register_tokens" in state_dict:  # [1, R, D]
        registers = int(state_dict[p + "register_tokens"].shape[1])
        return Dinov2WithRegistersConfig(**kwargs, num_register_tokens=registers)
    return Dinov2Config(**kwargs)


# the image tower of `CLIP_MODEL` (OpenAI's ViT-B/16), which the official checkpoints hold
OFFICIAL_CLIP_VISION = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, patch_size=16, image_size=224
)

# the text tower and the projection size of `CLIP_MODEL`, which compute the official class embeddings
# (transformers' CLIPTextConfig and CLIPConfig defaults: OpenAI's ViT-B/32 and ViT-B/16 share them)
OFFICIAL_CLIP_TEXT = dict(
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    max_position_embeddings=77,
    vocab_size=49408,
)
OFFICIAL_CLIP_PROJECTION_DIM = 512


def is_official_clip(clip_config) -> bool:
    """Whether a CLIP config (a CLIPConfig or a WeCLIP config: its towers and projection size) has the sizes of
    `CLIP_MODEL`'s, image tower, text tower and projection (a checkpoint's own CLIP of another shape is not that
    model, whatever its training)."""
    return not _official_differences(clip_config)


def _official_differences(clip_config) -> list[str]:
    """Each size of ``clip_config`` (a CLIP config: its towers and projection size) that is not `CLIP_MODEL`'s, as
    ``"<field> <its value> vs <official>"`` (the text tower's fields named ``text <field>``)."""
    parts = (
        ("", clip_config.vision_config, OFFICIAL_CLIP_VISION),
        ("text ", clip_config.text_config, OFFICIAL_CLIP_TEXT),
        ("", clip_config, {"projection_dim": OFFICIAL_CLIP_PROJECTION_DIM}),
    )
    return [
        f"{label}{k} {getattr(config, k)} vs {v}"
        for label, config, sizes in parts
        for k, v in sizes.items()
        if getattr(config, k) != v
    ]


def check_clip_is_official(state_dict: dict[str, torch.Tensor], clip_config, clip_name: str) -> None:
    """Refuse, for a checkpoint that holds no CLIP of its own, a CLIP (``clip_config``: its config) of other sizes
    than `CLIP_MODEL`'s, image tower, text tower or projection: the decoder tells the width and the layers it reads
    (`check_clip_matches`), not the patch size, so a ViT-B/32 would pass for the official ViT-B/16 and the model run
    on features its decoder was never trained on; nothing tells the text tower, which computes the class
    embeddings (the official ones: ViT-B/16's)."""
    if find_clip_prefix(state_dict) is not None or not (differ := _official_differences(clip_config)):
        return
    raise ValueError(
        f"The checkpoint holds no CLIP of its own (no encoder.visual.* tensors): the CLIP {clip_name!r} "
        "(--clip / clip=) has the width and the layers its decoder reads, but the patch size, the text tower "
        "and the weights of the CLIP it was trained with cannot be read from it, and this one is not the official "
        f"{CLIP_MODEL} ({', '.join(differ)}; "
        f"--clip vs official). Pass --clip {CLIP_MODEL} (the CLIP of the official checkpoints), or, if the "
        "checkpoint was trained with this CLIP, --no_check_clip (check_clip=False) to use it."
    )


def official_preset(state_dict: dict[str, torch.Tensor]) -> str:
    """The preset an official checkpoint converts with when none is named: of its method (WeCLIP+ where it holds
    a DINOv2 branch) and of the dataset whose classes + background its classifier predicts (COCO's 81, else VOC's
    21: `build_config` then names a count that fits neither)."""
    presets = OFFICIAL_PRESETS["weclip_plus" if is_weclip_plus_checkpoint(state_dict) else "weclip"]
    num_labels = (
        int(state_dict["decoder.linear_pred.weight"].shape[0])
        if "decoder.linear_pred.weight" in state_dict
        else None
    )
    fitting = [name for name in presets if len(get_preset(name).config["class_names"]) + 1 == num_labels]
    return fitting[0] if fitting else presets[0]


def check_checkpoint_method(state_dict: dict[str, torch.Tensor], model_type: str, chosen_by: str) -> None:
    """Refuse an official checkpoint of another method than ``model_type`` (``"weclip"`` / ``"weclip_plus"``),
    naming the presets that fit it; ``chosen_by`` says what asked for ``model_type`` (e.g. ``"preset 'voc'"``).

    A WeCLIP+ checkpoint holds a DINO branch (``dino_encoder.*``, ``dino_decoder_fts_fuse.*``), a WeCLIP one not.
    """
    found = "weclip_plus" if is_weclip_plus_checkpoint(state_dict) else "weclip"
    if found == model_type:
        return
    holds = (
        f"holds a DINOv2 branch ({', '.join(k + '*' for k in DINO_PREFIXES)})"
        if found == "weclip_plus"
        else f"holds no DINOv2 branch (no {' / '.join(k + '*' for k in DINO_PREFIXES)} keys)"
    )
    presets = " or ".join(repr(name) for name in OFFICIAL_PRESETS[found])
    raise ValueError(
        f"The checkpoint {holds}: it is an official {METHOD_NAMES[found]} checkpoint, but {chosen_by} builds "
        f"{METHOD_NAMES[model_type]}. Convert it with a {METHOD_NAMES[found]} preset (--preset / preset=): "
        f"{presets}."
    )


def build_config(
    vision: dict,
    text: dict,
    projection_dim: int,
    state_dict: dict[str, torch.Tensor],
    preset: str,
    overrides: dict[str, Any],
) -> WeCLIPConfig:
    """The config of an official checkpoint for given CLIP configs: decoder sizes (and for a WeCLIP+ preset the
    DINOv2) from ``state_dict``, class names and method constants from ``preset``, then ``overrides``
    (``dino_heads`` sets the DINOv2 head count).

    Raises:
        ValueError: when the checkpoint is of the other method than the preset's, or its classifier does not
            predict the preset's classes + background.
    """
    chosen = get_preset(preset)
    check_checkpoint_method(state_dict, chosen.model_type, f"preset {preset!r}")
    plus = chosen.model_type == "weclip_plus"
    overrides = dict(overrides)
    dino_heads = overrides.pop("dino_heads", None)
    kwargs = chosen.config_kwargs()
    decoder = infer_decoder_kwargs(state_dict)
    num_labels = decoder.pop("num_labels")
    if plus:
        kwargs["dino_config"] = infer_dino_config(state_dict, dino_heads)
    elif decoder["num_feature_layers"] == vision["num_hidden_layers"] - 1:
        decoder["num_feature_layers"] = None  # the default: all blocks but the last
    kwargs.update(decoder)
    # the checkpoint's own classes: the preset's display names are VOC's / COCO's
    kwargs = {**with_class_names(kwargs, overrides.get("class_names")), **overrides}
    preset_labels = len(kwargs["class_names"]) + 1  # checked first: the preset's other counts may not fit
    if preset_labels != num_labels:
        counts = ", ".join(
            f"{name}: {len(get_preset(name).config['class_names']) + 1}"
            for name in OFFICIAL_PRESETS[chosen.model_type]
        )
        given = "the class names given have" if "class_names" in overrides else f"preset {preset!r} has"
        raise ValueError(
            f"decoder.linear_pred predicts {num_labels} classes but {given} {preset_labels} (background + "
            f"foreground): pass the matching --preset ({counts}), or the checkpoint's own foreground classes in "
            "the order of its classifier (--class_names; class_names=[...])."
        )
    config_class = WeCLIPPlusConfig if plus else WeCLIPConfig
    return config_class(vision_config=vision, text_config=text, projection_dim=projection_dim, **kwargs)


def infer_config_from_official(
    state_dict: dict[str, torch.Tensor], preset: str = "voc", **overrides: Any
) -> WeCLIPConfig:
    """The config of an official checkpoint: CLIP, decoder (and DINOv2) sizes from the tensor shapes, class
    names and method constants from the dataset ``preset``: a `WeCLIPConfig` for ``"voc"`` / ``"coco"``, a
    `WeCLIPPlusConfig` for ``"voc-plus"`` / ``"coco-plus"``.

    ``overrides`` are passed to the config last (e.g. ``decoder_num_heads``, which shapes cannot tell;
    ``vision_heads`` / ``text_heads`` / ``dino_heads`` set the head counts, default ``width // 64``).
    """
    vision_heads, text_heads = overrides.pop("vision_heads", None), overrides.pop("text_heads", None)
    vision, text, projection_dim = infer_clip_configs(state_dict, vision_heads, text_heads)
    return build_config(vision, text, projection_dim, state_dict, preset, overrides)

"""Official WeCLIP / WeCLIP+ checkpoints <-> `WeCLIPForSemanticSegmentation` /
`WeCLIPPlusForSemanticSegmentation`: the whole state dict, checked against a config (whose type says the method),
and the end-to-end conversion (safe loading, config inference, text embeddings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from ..configuration_weclip import WeCLIPConfig
from ..configuration_weclip_plus import WeCLIPPlusConfig
from ..model_loading import (
    check_backbone_source,
    load_clip_tokenizer,
    naming_the_checkpoint,
    public_source_name,
)
from ..presets import CLIP_MODEL
from .checkpoint_file import check_finite, load_official_checkpoint, model_state_dict
from .config_inference import (
    build_config,
    check_checkpoint_method,
    check_clip_is_official,
    check_clip_matches,
    infer_config_from_official,
    official_preset,
)
from .report import ConversionReport, count_dtypes, raise_for_keys
from .weclip_keys import (
    PAR_KERNEL_KEY,
    decoder_to_official,
    dropped_clip_keys,
    find_clip_prefix,
    hf_to_official_clip,
    is_known_clip_key,
    official_to_decoder,
    official_to_hf_clip,
)
from .weclip_plus_keys import dino_to_official, official_to_dino, without_dino

# Our buffers that no official checkpoint holds: the text embeddings are computed after loading.
COMPUTED_KEYS = ("class_text_embeds", "background_text_embeds")
_PROJECTION_KEYS = ("visual_projection.weight", "text_projection.weight", "logit_scale")
logger = hf_logging.get_logger(__name__)


def model_class(config: WeCLIPConfig) -> type:
    """`WeCLIPPlusForSemanticSegmentation` for a `WeCLIPPlusConfig`, else `WeCLIPForSemanticSegmentation`."""
    if isinstance(config, WeCLIPPlusConfig):
        from ..modeling_weclip_plus import WeCLIPPlusForSemanticSegmentation

        return WeCLIPPlusForSemanticSegmentation
    from ..modeling_weclip import WeCLIPForSemanticSegmentation

    return WeCLIPForSemanticSegmentation


def _expected_state_dict(config: WeCLIPConfig) -> dict[str, torch.Tensor]:
    """Our state dict for ``config`` on the meta device (names and shapes only, no memory)."""
    with torch.device("meta"):
        model = model_class(config)(config)
    return model.state_dict()


def _official_names(ours: dict[str, torch.Tensor], prefix: str) -> list[str]:
    """The official names of our keys ``ours`` (the ones with no official name as they are)."""
    names = list(hf_to_official_clip(ours, prefix=prefix))
    names += [k for k in decoder_to_official(ours) if k != PAR_KERNEL_KEY]
    names += list(dino_to_official(ours))
    names += [
        k
        for k in ours
        if not k.startswith(("vision_model.", "text_model.", "decoder.", "dino_branch."))
        and k not in _PROJECTION_KEYS
    ]
    return names


def official_to_weclip(
    state_dict: dict[str, torch.Tensor],
    config: WeCLIPConfig,
    clip_state_dict: dict[str, torch.Tensor] | None = None,
    clip_source: str | None = None,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map a whole official WeCLIP or WeCLIP+ state dict to ours, checked against ``config``.

    Args:
        state_dict: the official checkpoint (``encoder.*``, ``decoder_fts_fuse.*``, ``decoder.*``,
            ``par.kernel``; WeCLIP+: also ``dino_encoder.*``, ``dino_decoder_fts_fuse.*``), fp16 or fp32.
        config: the target config (e.g. from `infer_config_from_official`): a `WeCLIPPlusConfig` for a
            WeCLIP+ checkpoint, a `WeCLIPConfig` for a WeCLIP one.
        clip_state_dict: CLIP weights in our names (``CLIPModel`` layout) to use instead of the
            checkpoint's CLIP (``encoder.*``, or OpenAI's bare names); then it may be absent, and if present its
            keys are read but not used (``report.replaced``; `convert_official_checkpoint` compares them first;
            a key no CLIP table knows is still refused).
        clip_source: how the report names the CLIP model of ``clip_state_dict`` (default "the given CLIP model").
    Returns:
        ``(our_state_dict, report)``: every key of the config's model except the text embeddings
        (``report.computed``), with ``training_step`` = 0; float32.
    Raises:
        ValueError: for a checkpoint of the other method than the config's; naming unknown keys, missing keys
            (by their official name) and shape mismatches.
    """
    check_checkpoint_method(state_dict, config.model_type, f"a {type(config).__name__}")
    weclip_part = without_dino(state_dict)  # what WeCLIP's tables read; the DINO branch below
    if clip_state_dict is None:
        vision, text, proj, report = official_to_hf_clip(weclip_part)
        clip_part = {**vision, **text, **proj}
    else:
        clip_part = {
            k: v.detach().to(torch.float32)
            for k, v in clip_state_dict.items()
            if not k.endswith("position_ids")
        }
        # the checkpoint's own CLIP (read, not used); bare OpenAI names or under encoder.
        prefix = found if (found := find_clip_prefix(weclip_part)) is not None else "encoder."
        dropped = dropped_clip_keys(weclip_part, prefix)
        replaced = {k: v for k, v in weclip_part.items() if is_known_clip_key(k, prefix) and k not in dropped}
        report = ConversionReport(
            prefix=prefix,
            ignored=dropped,
            source_dtypes=count_dtypes(replaced),
            replaced=list(replaced),
            clip_keys=list(clip_part),
            clip_source=clip_source or "the given CLIP model",
        )
    decoder, decoder_report = official_to_decoder(weclip_part)
    report.merge(decoder_report)
    dino: dict[str, torch.Tensor] = {}
    if isinstance(config, WeCLIPPlusConfig):
        dino, dino_report = official_to_dino(state_dict)
        report.merge(dino_report)
    handled = {*report.mapped, *report.ignored, *report.replaced}
    raise_for_keys(
        "Unknown keys in the checkpoint (no mapping for them)", [k for k in state_dict if k not in handled]
    )

    ours = {**clip_part, **decoder, **dino, "training_step": torch.zeros((), dtype=torch.long)}
    expected = _expected_state_dict(config)
    report.computed = [k for k in COMPUTED_KEYS if k in expected]
    wanted = {k: v for k, v in expected.items() if k not in COMPUTED_KEYS}
    missing = sorted(set(wanted) - set(ours))
    if missing:
        raise_for_keys(
            "Missing keys in the checkpoint for this config (official names)",
            sorted(set(_official_names({k: expected[k] for k in missing}, report.prefix))) or missing,
            "Check the preset and the decoder/CLIP sizes.",
        )
    raise_for_keys(
        "Keys with no place in the model for this config (our names)",
        sorted(set(ours) - set(wanted)),
        "The checkpoint has more layers than the config.",
    )
    bad = [
        f"{k} {tuple(v.shape)} (expected {tuple(wanted[k].shape)})"
        for k, v in ours.items()
        if tuple(v.shape) != tuple(wanted[k].shape)
    ]
    raise_for_keys("Shape mismatches (our names)", bad)
    return ours, report


def weclip_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `official_to_weclip`: our WeCLIP or WeCLIP+ state dict -> the official layout (float32, with
    ``par.kernel``; the DINO branch when ``state_dict`` has ``dino_branch.*`` keys)."""
    out = hf_to_official_clip(state_dict, prefix="encoder.")
    out.update(dino_to_official(state_dict))
    out.update(decoder_to_official(state_dict))
    return out


def _compare_clip(
    ckpt: dict[str, torch.Tensor], given: dict[str, torch.Tensor], rtol: float = 2e-3
) -> list[str]:
    """Keys (our names) where the checkpoint's CLIP differs from the given CLIP beyond fp16 rounding."""
    bad = []
    for key, value in ckpt.items():
        other = given.get(key)
        if other is None or other.shape != value.shape:
            bad.append(
                f"{key} (shape {tuple(value.shape)} vs {None if other is None else tuple(other.shape)})"
            )
        elif not torch.allclose(value, other.float(), rtol=rtol, atol=1e-6):
            bad.append(f"{key} (max |diff| {float((value - other.float()).abs().max()):.3g})")
    return bad


def check_clip_source(clip: str) -> None:
    """Refuse, before the checkpoint is read, a ``clip`` that is no transformers CLIP folder or Hub id: a file
    (OpenAI's ``ViT-B-16.pt``), a path to no folder, a folder without config.json, a saved WeCLIP model, a folder of
    another model type or without safetensors weights (`check_backbone_source`), each error saying what --clip
    takes."""
    takes = f"--clip / clip= takes a transformers CLIP folder (save_pretrained) or Hub id, e.g. {CLIP_MODEL}."
    try:
        check_backbone_source(clip, "CLIP")
    except (OSError, ValueError) as err:
        # a file: most likely OpenAI's own checkpoint
        openai = (
            f" (OpenAI's ViT-B-16.pt holds the weights of {CLIP_MODEL}.)"
            if isinstance(err, NotADirectoryError)
            else ""
        )
        raise type(err)(f"{err} {takes}{openai}") from err


def converter_tokenizer(tokenizer: str | Path | None, clip: str | None) -> PreTrainedTokenizerBase:
    """The converter's CLIP tokenizer: that of the folder or Hub id ``tokenizer`` (--tokenizer), default ``clip``'s
    (--clip), loaded by `load_clip_tokenizer` naming that argument."""
    if tokenizer is not None:
        return load_clip_tokenizer(tokenizer, "--tokenizer / tokenizer=")
    return load_clip_tokenizer(str(clip), "--clip / clip=")


def convert_official_checkpoint(
    checkpoint: str | Path | dict[str, torch.Tensor],
    clip: str | None = None,
    preset: str | None = None,
    tokenizer: Any = None,
    check_clip: bool = True,
    **config_overrides: Any,
):
    """Build a `WeCLIPForSemanticSegmentation` (WeCLIP preset) or a `WeCLIPPlusForSemanticSegmentation` (WeCLIP+
    preset) from an official checkpoint of that method.

    Args:
        checkpoint: path of the official ``.pth`` (read by `load_official_checkpoint`) or its contents (a
            training checkpoint's weights entry and a DDP ``module.`` prefix taken as from a file:
            `model_state_dict`); a NaN or infinite value in it is refused.
        clip: optional transformers CLIP folder or Hub id for the CLIP part (e.g. when the checkpoint holds
            only the decoder). Its layer count, width, patch size and MLP width, its text tower's layer count,
            width, MLP width, context length and vocabulary, and its projection size must be those of the
            checkpoint's own CLIP, or, without one, its width and more layers than the decoder fuses (the last
            block, which the CAMs run, follows them: `check_clip_matches`).
            If the checkpoint also holds ``encoder.*``, it is compared with this CLIP (up to fp16 rounding) and a
            difference raises, unless ``check_clip=False``; its ``encoder.*`` tensors are then not used.
        check_clip: with ``clip``: compare the checkpoint's own CLIP with it, or, for a checkpoint without one
            (whose patch size, text tower and CLIP weights cannot be read from it), refuse a CLIP of other
            sizes (either tower's, or the projection's) than the official ``openai/clip-vit-base-patch16``
            (`check_clip_is_official`). False: use ``clip`` as it is.
        preset: ``"voc"`` or ``"coco"`` for a WeCLIP checkpoint, ``"voc-plus"`` or ``"coco-plus"`` for a WeCLIP+
            one (class names, background words, thresholds; a checkpoint of the other method is refused). The
            DINOv2 of a WeCLIP+ checkpoint always comes from its ``dino_encoder.*`` tensors. Default: the
            checkpoint's own (`official_preset`: its method, and COCO's or VOC's classes by its classifier);
            ``model.conversion_report.preset`` says which.
        tokenizer: a CLIP tokenizer or its folder or Hub id; default the tokenizer of ``clip``. Needed to
            compute the class text embeddings; loaded (and ``clip`` checked: `check_clip_source`) before the
            checkpoint is read.
        config_overrides: passed to the config (e.g. ``decoder_num_heads``; ``dino_heads``).
    Returns:
        The model in eval mode, CLIP (and DINOv2) frozen, text embeddings computed;
        ``model.conversion_report`` holds the `ConversionReport`.
    """
    if tokenizer is None and clip is None:
        raise ValueError(
            "A CLIP tokenizer is needed to compute the class text embeddings: pass tokenizer= (--tokenizer "
            "PATH_OR_HF_ID, e.g. openai/clip-vit-base-patch16) or clip= (--clip), whose tokenizer is used."
        )
    if clip is not None:
        check_clip_source(clip)
    # before the checkpoint is read and converted: a tokenizer that cannot be loaded fails first
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = converter_tokenizer(tokenizer, clip)
    if isinstance(checkpoint, dict):
        state = model_state_dict(checkpoint, "the checkpoint's state dict")
        check_finite(state, "the checkpoint's state dict")
    else:
        state = load_official_checkpoint(checkpoint)  # refuses NaN / inf itself
    preset = preset or official_preset(state)
    clip_sd = None
    if clip is not None:
        from transformers import CLIPConfig, CLIPModel

        with naming_the_checkpoint(clip, "CLIP (--clip / clip=)"):
            clip_config = CLIPConfig.from_pretrained(clip)
        vision = clip_config.vision_config.to_dict()
        text = clip_config.text_config.to_dict()
        check_clip_matches(state, vision, text, clip_config.projection_dim, clip)
        if check_clip:
            check_clip_is_official(state, clip_config, clip)
        with naming_the_checkpoint(clip, "CLIP (--clip / clip=)"):
            clip_sd = CLIPModel.from_pretrained(clip).state_dict()
        config = build_config(vision, text, clip_config.projection_dim, state, preset, config_overrides)
        if (
            check_clip and find_clip_prefix(state) is not None
        ):  # (the DINO branch's keys are dino_encoder.*: never a CLIP's)
            v, t, p, _ = official_to_hf_clip(without_dino(state))
            raise_for_keys(
                f"The checkpoint's CLIP differs from {clip!r} for",
                _compare_clip({**v, **t, **p}, clip_sd),
                "Pass check_clip=False (--no_check_clip) to use the given CLIP anyway.",
            )
    else:
        config = infer_config_from_official(state, preset, **config_overrides)
    if config.model_type == "weclip_plus" and config.vision_config.num_hidden_layers == 24:
        logger.warning(
            "A WeCLIP+ checkpoint with a 24-block CLIP (ViT-L/14): the official code's path for it (clip_flag 14, "
            "unused by its configs) divides the CLIP logit scale by 4 in the GradCAM scores; this package does not, "
            "so the pseudo labels of further training differ from the official code's (the predictions, from the "
            "decoder, do not)."
        )
    clip_source = f"the CLIP `{public_source_name(str(clip))}`" if clip is not None else None
    ours, report = official_to_weclip(state, config, clip_state_dict=clip_sd, clip_source=clip_source)
    model = model_class(config)(config)
    result = model.load_state_dict(ours, strict=False)
    raise_for_keys(
        "Model keys not filled by the conversion", [k for k in result.missing_keys if k not in COMPUTED_KEYS]
    )
    raise_for_keys("Converted keys the model does not have", list(result.unexpected_keys))
    model.update_class_embeddings(tokenizer)
    model.freeze_backbones()
    model.eval()
    report.preset = model.config.training_preset = preset  # the official recipe: its evaluation settings
    model.conversion_report = report
    return model

"""WeCLIP+ configuration: WeCLIP's config, a frozen DINOv2 and what WeCLIP+ changes (DESIGN-weclip-plus)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoConfig, Dinov2Config, Dinov2WithRegistersConfig

from .config_checks import check_int, check_number, check_transformer_shape
from .configuration_weclip import WECLIP_FIELD_CHECKS, WeCLIPConfig, _depth


@dataclass(frozen=True)
class DinoVariant:
    """One DINOv2 backbone of the official configs (`dino_model`) and the decoder depth paired with it."""

    hub_id: str  # the transformers checkpoint on the Hub
    registers: bool  # 4 register tokens (`Dinov2WithRegistersConfig`) or none (`Dinov2Config`)
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    decoder_num_layers: int  # the official config's `decoder_layer`: 5 for ViT-L, 3 otherwise


DINO_VARIANTS: dict[str, DinoVariant] = {
    "dinov2_vits14": DinoVariant("facebook/dinov2-small", False, 384, 12, 6, 3),
    "dinov2_vitb14": DinoVariant("facebook/dinov2-base", False, 768, 12, 12, 3),
    "dinov2_vitl14": DinoVariant("facebook/dinov2-large", False, 1024, 24, 16, 5),
    "dinov2_vits14_reg": DinoVariant("facebook/dinov2-with-registers-small", True, 384, 12, 6, 3),
    "dinov2_vitb14_reg": DinoVariant("facebook/dinov2-with-registers-base", True, 768, 12, 12, 3),
    "dinov2_vitl14_reg": DinoVariant("facebook/dinov2-with-registers-large", True, 1024, 24, 16, 5),
}

DINO_CONFIG_CLASSES = {"dinov2": Dinov2Config, "dinov2_with_registers": Dinov2WithRegistersConfig}
POSITION_INTERPOLATIONS = ("hub", "hf")
MAX_REGISTER_TOKENS = 1024


def dino_variant_config(name: str, **overrides) -> Dinov2Config | Dinov2WithRegistersConfig:
    """The DINOv2 config of an official variant (e.g. ``"dinov2_vits14"``) as its Hub checkpoint has it: patch
    14, 518 px (the 37 x 37 position grid), LayerScale 1.0, LayerNorm eps 1e-6, 4 registers for ``*_reg``."""
    if name not in DINO_VARIANTS:
        raise ValueError(f"Unknown DINOv2 variant {name!r}; expected one of {sorted(DINO_VARIANTS)}.")
    variant = DINO_VARIANTS[name]
    kwargs = dict(
        hidden_size=variant.hidden_size,
        num_hidden_layers=variant.num_hidden_layers,
        num_attention_heads=variant.num_attention_heads,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )
    if variant.registers:
        return Dinov2WithRegistersConfig(**{**kwargs, "num_register_tokens": 4, **overrides})
    return Dinov2Config(**{**kwargs, **overrides})


def dino_variant_name(dino_config: Dinov2Config | Dinov2WithRegistersConfig) -> str | None:
    """The official DINOv2 variant (a `DINO_VARIANTS` key, e.g. ``"dinov2_vits14"``) of these sizes, else None."""
    fields = ("hidden_size", "num_hidden_layers", "patch_size", "image_size")
    for name in DINO_VARIANTS:
        variant = dino_variant_config(name)
        if type(variant) is type(dino_config) and all(
            getattr(variant, f) == getattr(dino_config, f) for f in fields
        ):
            return name
    return None


def official_decoder_depth(dino_config: Dinov2Config | Dinov2WithRegistersConfig) -> int | None:
    """The decoder depth the official configs pair with this DINOv2 (5 for ViT-L, 3 for ViT-S/B); None for a
    DINOv2 of other sizes."""
    name = dino_variant_name(dino_config)
    return DINO_VARIANTS[name].decoder_num_layers if name else None


def _check_dino_tower(name: str, config) -> None:
    """Refuse DINOv2 sizes that are not positive or would build an absurdly large model, naming the field."""
    check_transformer_shape(name, config)
    check_number(f"{name}.mlp_ratio", config.mlp_ratio, 0.0, 64.0, low_open=True)
    check_int(f"{name}.image_size", config.image_size, 1, 8192)
    check_int(f"{name}.patch_size", config.patch_size, 1, config.image_size)
    check_int(f"{name}.num_channels", config.num_channels, 3, 3)
    check_int(
        f"{name}.num_register_tokens", getattr(config, "num_register_tokens", 0), 0, MAX_REGISTER_TOKENS
    )


def _as_dino_config(dino_config) -> Dinov2Config | Dinov2WithRegistersConfig:
    """A `Dinov2Config` / `Dinov2WithRegistersConfig` from a config, a dict (``model_type`` picks the family,
    default ``"dinov2"``) or None (ViT-S/14, the official default)."""
    if dino_config is None:
        return dino_variant_config("dinov2_vits14")
    if isinstance(dino_config, dict):
        kwargs = dict(dino_config)
        model_type = kwargs.pop("model_type", "dinov2")
        if model_type not in DINO_CONFIG_CLASSES:
            raise ValueError(
                f"dino_config.model_type must be one of {sorted(DINO_CONFIG_CLASSES)}, got {model_type!r}."
            )
        return DINO_CONFIG_CLASSES[model_type](**kwargs)
    if not isinstance(dino_config, tuple(DINO_CONFIG_CLASSES.values())):
        raise TypeError(
            "dino_config must be a Dinov2Config, Dinov2WithRegistersConfig or dict, got "
            f"{type(dino_config).__name__}."
        )
    return dino_config


def _check_position_interpolation(name: str, value) -> None:
    """Refuse a DINOv2 position-embedding rule other than `POSITION_INTERPOLATIONS`."""
    if value not in POSITION_INTERPOLATIONS:
        raise ValueError(f"{name} must be one of {POSITION_INTERPOLATIONS}, got {value!r}.")


def _check_bool(name: str, value) -> None:
    """Refuse anything but True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}.")


def _check_branch_weights(name: str, weights) -> None:
    """Refuse branch weights unless two non-negative numbers [clip, dino], not both 0."""
    if not isinstance(weights, (list, tuple)) or len(weights) != 2:
        raise ValueError(f"{name} must be two numbers [clip, dino], got {weights!r}.")
    for weight in weights:
        check_number(f"{name}[...]", weight, 0.0, 1e6)
    if sum(weights) <= 0:
        raise ValueError(f"{name} must not both be 0, got {list(weights)}.")


def _check_optional_step(name: str, step) -> None:
    """Refuse a step unless None (never) or a non-negative integer."""
    if step is not None:
        check_int(name, step, 0, 10**12)


# WeCLIP's fields and WeCLIP+'s own, each checked alone (see `WECLIP_FIELD_CHECKS`)
WECLIP_PLUS_FIELD_CHECKS = {
    **WECLIP_FIELD_CHECKS,
    "dino_position_interpolation": lambda c, n, v: _check_position_interpolation(n, v),
    "cam_feature_block": lambda c, n, v: check_int(n, v, -(_depth(c) - 1), -1),
    "rfm_use_box_mask": lambda c, n, v: _check_bool(n, v),
    "branch_logit_weights": lambda c, n, v: _check_branch_weights(n, v),
    "dice_loss_weight": lambda c, n, v: check_number(n, v, 0.0, 1e6),
    "cross_branch_loss_weight": lambda c, n, v: check_number(n, v, 0.0, 1e6),
    "self_training_start_step": lambda c, n, v: _check_optional_step(n, v),
    "self_training_threshold": lambda c, n, v: check_number(n, v, 0.0, 1.0),
}


class WeCLIPPlusConfig(WeCLIPConfig):
    r"""Configuration of [`WeCLIPPlusForSemanticSegmentation`]: every [`WeCLIPConfig`] field, with the
    WeCLIP+ defaults of the official VOC config where they differ, plus the DINOv2 branch and the new losses.

    Args:
        dino_config (`Dinov2Config`, `Dinov2WithRegistersConfig` or `dict`, *optional*): the frozen DINOv2.
            Default: ViT-S/14 without registers (`dinov2_vits14`, the official default); see
            `dino_variant_config`.
        dino_position_interpolation (`str`): how the DINOv2 position embeddings are resized to the grid.
            ``"hub"`` (default): as the torch.hub models of the official code (no registers: bicubic with
            scale factor (n + 0.1) / 37, no antialias; with registers: transformers' own rule, the same).
            ``"hf"``: transformers' rule for both families (the tokens of models without registers then
            differ from the official ones by up to ~1).
        num_feature_layers (`int`): how many of the last collected CLIP block outputs feed the CLIP head
            (1: the output of the block before the last, block 11 of ViT-B/16).
        attention_num_maps (`int`, *optional*): attention maps averaged for the CAM affinity before
            `rfm_start_step` (6 for VOC, 8 for COCO; at most the CLIP depth).
        rfm_num_maps (`int`, *optional*): the last attention maps the RFM+ chooses from (6 VOC, 8 COCO).
        rfm_start_step (`int`): training step from which RFM+ runs (0: always, as the official code).
        cam_feature_block (`int`): the collected CLIP block output (negative index: -1 = the block before
            the last) that the last block is applied to for GradCAM, the image embedding and the last
            attention map. -2 (block 10 of ViT-B/16) is the official VOC setting, -1 the COCO one (and
            WeCLIP's).
        rfm_use_box_mask (`bool`): mask the transition matrix with the GradCAM boxes (False for VOC: the
            official code computes them and throws them away; True for COCO).
        branch_logit_weights (`list[float]`): the prediction is ``w_clip * logits_clip + w_dino *
            logits_dino`` ([0.5, 0.5]); used by the losses, the RFM+ re-weighting and inference.
        dice_loss_weight (`float`): weight of the Dice loss on the prediction (1).
        cross_branch_loss_weight (`float`): weight of each of the two cross-branch balanced CE terms, each
            branch against the other's argmax (0.1).
        self_training_start_step (`int`, *optional*): first 0-based training step at which the pixels the
            prediction is confident about overwrite the pseudo labels (18001 VOC, 40001 COCO: the official
            ``n_iter > 18000`` / ``> 40000``); None: never.
        self_training_threshold (`float`): confidence (max softmax probability) above which a pixel is
            overwritten (0.75).
        kwargs: the other [`WeCLIPConfig`] fields (CLIP towers, class names, decoder, PAR, affinity loss);
            ``decoder_num_layers`` defaults to the official depth for the DINOv2 (`official_decoder_depth`: 5 for
            ViT-L, 3 for ViT-S/B and other sizes).
    """

    model_type = "weclip_plus"
    sub_configs = {**WeCLIPConfig.sub_configs, "dino_config": AutoConfig}
    # and the branches' logits (`logits` is their weighted sum), WeCLIP+'s loss terms and self-training mask
    keys_to_ignore_at_inference = [
        *WeCLIPConfig.keys_to_ignore_at_inference, "logits_clip", "logits_dino", "dice_loss", "clip_from_dino_loss",
        "dino_from_clip_loss", "self_training_mask",
    ]  # fmt: skip
    field_checks = WECLIP_PLUS_FIELD_CHECKS
    architecture_fields = (*WeCLIPConfig.architecture_fields, "dino_position_interpolation")

    def __init__(
        self,
        dino_config: dict | Dinov2Config | Dinov2WithRegistersConfig | None = None,
        dino_position_interpolation: str = "hub",
        num_feature_layers: int = 1,
        attention_num_maps: int | None = None,
        rfm_num_maps: int | None = None,
        rfm_start_step: int = 0,
        cam_feature_block: int = -2,
        rfm_use_box_mask: bool = False,
        branch_logit_weights: list[float] | tuple[float, float] = (0.5, 0.5),
        dice_loss_weight: float = 1.0,
        cross_branch_loss_weight: float = 0.1,
        self_training_start_step: int | None = 18001,
        self_training_threshold: float = 0.75,
        **kwargs,
    ):
        dino_config = _as_dino_config(dino_config)
        _check_dino_tower("dino_config", dino_config)
        if "decoder_num_layers" not in kwargs:  # a saved config gives its own
            # the official configs' `decoder_layer` for the DINOv2 (ViT-L: 5); other sizes: WeCLIP's default
            depth = official_decoder_depth(dino_config)
            if depth is not None:
                kwargs["decoder_num_layers"] = depth
        # set before WeCLIP's constructor, which checks every field of `field_checks` once the CLIP is known
        self.dino_config = dino_config
        self.dino_position_interpolation = dino_position_interpolation
        self.cam_feature_block = cam_feature_block
        self.rfm_use_box_mask = rfm_use_box_mask
        self.branch_logit_weights = branch_logit_weights
        self.dice_loss_weight = dice_loss_weight
        self.cross_branch_loss_weight = cross_branch_loss_weight
        self.self_training_start_step = self_training_start_step
        self.self_training_threshold = self_training_threshold
        super().__init__(
            num_feature_layers=num_feature_layers,
            attention_num_maps=attention_num_maps,
            rfm_num_maps=rfm_num_maps,
            rfm_start_step=rfm_start_step,
            **kwargs,
        )
        self.branch_logit_weights = [float(w) for w in branch_logit_weights]
        # WeCLIP+ averages / chooses from the last 6 maps by default (WeCLIP: 8 / 6), at most the CLIP depth
        if attention_num_maps is None and "cam_attention_layers" not in kwargs:
            self.attention_num_maps = min(6, self.vision_config.num_hidden_layers)

    def _check_fields(self) -> None:
        """WeCLIP's checks (with WeCLIP+'s fields, `field_checks`) and the DINOv2's sizes."""
        _check_dino_tower("dino_config", self.dino_config)
        super()._check_fields()

    @property
    def dino_num_register_tokens(self) -> int:
        """Register tokens of the DINOv2 (0 or 4 for the official variants)."""
        return getattr(self.dino_config, "num_register_tokens", 0)


__all__ = [
    "WeCLIPPlusConfig",
    "DINO_VARIANTS",
    "DinoVariant",
    "dino_variant_config",
    "dino_variant_name",
    "official_decoder_depth",
]

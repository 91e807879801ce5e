"""WeCLIP+ (TPAMI 2025): WeCLIP with a frozen DINOv2 beside the frozen CLIP (DESIGN-weclip-plus).

`WeCLIPPlusForSemanticSegmentation` is a `WeCLIPForSemanticSegmentation` (CLIP towers, text embeddings,
loading and freezing, the pseudo-label stages, PAR, the losses) with what WeCLIP+ adds as named pieces:

- the DINO branch (`WeCLIPPlusDinoBranch`: frozen DINOv2 -> its own feature head -> the CLIP grid);
- the decoder run on both branches: WeCLIP's decoder, whose one-input head is the CLIP head, and its
  transformer (`WeCLIPDecoder.decode`) on the DINO features; the prediction is the weighted sum of the two;
- the decoder affinity of the concatenated [CLIP; DINO] features;
- RFM+ (`prediction_weighted_cams`): each GradCAM weighted by the prediction before propagation, the box mask
  optional, GradCAM on the tokens of block `cam_feature_block`;
- the WeCLIP+ losses (`weclip_plus_losses`: Dice, cross-branch CE, confident-pixel self-training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModel

from .branch_losses import weclip_plus_losses
from .cam import cam_box_masks
from .configuration_weclip_plus import WeCLIPPlusConfig
from .decoder import feature_affinity
from .dino_branch import WeCLIPPlusDinoBranch
from .input_checks import check_features_of
from .model_loading import (
    CLIP_CHECKPOINT_FIELDS,
    HUB_OPTIONS,
    backbone_config,
    check_backbone_source,
    hub_id_or_none,
    naming_the_checkpoint,
    split_backbone_keywords,
)
from .modeling_weclip import (
    CLIPVisionFeatures,
    WeCLIPCAMOutput,
    WeCLIPForSemanticSegmentation,
    WeCLIPSemanticSegmenterOutput,
    _outside_inference_mode,
    _pseudo_label_stage,
)
from .presets import DINO_MODEL
from .pseudo_labels import (
    PairPlan,
    plan_pairs,
)

# --------------------------------------------------------------------------------------------------
# Outputs


@dataclass
class WeCLIPPlusCAMOutput(WeCLIPCAMOutput):
    """`WeCLIPCAMOutput` plus what RFM+ propagates (``box_masks`` is None when the box mask is off)."""

    weighted_gradcams: torch.Tensor | None = None  # [P, h, w] GradCAM x the prediction's class probability


@dataclass
class WeCLIPPlusSemanticSegmenterOutput(WeCLIPSemanticSegmenterOutput):
    """Output of [`WeCLIPPlusForSemanticSegmentation`]: `WeCLIPSemanticSegmenterOutput` (``logits`` is the
    prediction, ``w_clip * logits_clip + w_dino * logits_dino``) plus the branches and the WeCLIP+ losses.

    Args:
        logits_clip, logits_dino: [B, num_labels, h, w] the decoder on the CLIP and on the DINO features.
        dice_loss: Dice loss of the prediction.
        clip_from_dino_loss, dino_from_clip_loss: each branch's balanced CE against the other's argmax.
        self_training_mask: [B, H, W] bool, the pixels whose pseudo label the prediction overwrote for the
            losses (None before ``config.self_training_start_step`` and with pixel ``labels``);
            ``pseudo_labels`` are the labels before the overwrite.
    """

    logits_clip: torch.FloatTensor | None = None
    logits_dino: torch.FloatTensor | None = None
    dice_loss: torch.FloatTensor | None = None
    clip_from_dino_loss: torch.FloatTensor | None = None
    dino_from_clip_loss: torch.FloatTensor | None = None
    self_training_mask: torch.BoolTensor | None = None


# --------------------------------------------------------------------------------------------------
# RFM+


def prediction_weighted_cams(
    cams: torch.Tensor, class_probabilities: torch.Tensor, plan: PairPlan
) -> torch.Tensor:
    """RFM+'s re-weighting: each pair's GradCAM times the prediction's probability of the pair's class,
    cell by cell.

    Args:
        cams: [P, h, w] GradCAMs. class_probabilities: [B, 1 + C, h, w] softmax of the (detached) prediction,
            background first. plan: the pairs.
    Returns: [P, h, w], what RFM+ propagates with the transition matrix.
    """
    return cams * class_probabilities[plan.image, plan.class_index + 1]


# --------------------------------------------------------------------------------------------------
# Task model


class WeCLIPPlusForSemanticSegmentation(WeCLIPForSemanticSegmentation):
    """WeCLIP+ for semantic segmentation trained from image-level labels.

    Frozen: the CLIP towers (as in WeCLIP) and the DINOv2 (`dino_branch.backbone`: no gradient, eval mode even
    under ``.train()``, frozen again after loading). Trained: the decoder (its head is the CLIP head) and the
    DINO head (`dino_branch.head`). Build one from pretrained backbones with `from_clip_and_dino`.
    """

    config: WeCLIPPlusConfig
    config_class = WeCLIPPlusConfig
    _TRAINED = ("decoder", "dino_branch")
    _from_backbones = "from_clip_and_dino"
    _no_split_modules = [
        *WeCLIPForSemanticSegmentation._no_split_modules,
        "Dinov2Layer",
        "Dinov2Embeddings",
        "Dinov2EmbeddingsWithHubPositions",
        "Dinov2WithRegistersLayer",
        "Dinov2WithRegistersEmbeddings",
    ]

    def __init__(self, config: WeCLIPPlusConfig):
        super().__init__(config)  # CLIP towers, text embeddings, step counter, decoder with the CLIP head
        self.dino_branch = WeCLIPPlusDinoBranch(config)
        self.post_init()  # initializes the DINO branch (the rest is initialized already)

    def freeze_backbones(self) -> None:
        """Freeze the CLIP towers and the DINOv2 (no gradient, eval mode). Called after construction, loading and
        every `train`."""
        super().freeze_backbones()
        if "dino_branch" in self._modules:  # absent while WeCLIP's constructor runs
            self.dino_branch.freeze()

    @classmethod
    def from_clip(cls, *args, **kwargs):
        """Not available: WeCLIP+ needs a DINOv2 checkpoint too (`from_clip_and_dino`)."""
        raise TypeError(
            "WeCLIP+ needs a DINOv2 checkpoint besides CLIP: use "
            "WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(clip_name_or_path, dino_name_or_path, ...)."
        )

    @classmethod
    def from_clip_and_dino(
        cls,
        clip_name_or_path: str,
        dino_name_or_path: str,
        class_names: list[str] | None = None,
        background_names: list[str] | None = None,
        tokenizer=None,
        **kwargs,
    ) -> WeCLIPPlusForSemanticSegmentation:
        """Build WeCLIP+ from any CLIP checkpoint and any DINOv2 checkpoint (`Dinov2Model` or
        `Dinov2WithRegistersModel`; Hub ids or local folders, safetensors only): both backbones' weights, a
        fresh decoder and DINO head, class embeddings from the CLIP checkpoint's tokenizer (or ``tokenizer``).
        ``kwargs`` set the other `WeCLIPPlusConfig` fields (the decoder depth defaults to the official one for
        the DINOv2: 5 for ViT-L, 3 for ViT-S/B) and the
        loading options of `from_clip` (``token``, ``cache_dir``, ``local_files_only``, ... fetch both checkpoints;
        ``revision`` is the CLIP's)."""
        split_backbone_keywords(
            kwargs,
            cls.config_class.field_names(),
            f"{cls.__name__}.from_clip_and_dino",
            {**CLIP_CHECKPOINT_FIELDS, "dino_config": "dino_name_or_path"},
        )
        hub = {k: v for k, v in kwargs.items() if k in HUB_OPTIONS and k != "revision"}
        check_backbone_source(clip_name_or_path, "CLIP")  # before the DINOv2 is loaded
        check_backbone_source(dino_name_or_path, "DINOv2")
        # a Hub checkpoint's config.json and model type are checked before its weights are fetched
        dino_config = backbone_config(dino_name_or_path, "DINOv2", hub)
        with naming_the_checkpoint(dino_name_or_path, "DINOv2"):
            dino = AutoModel.from_pretrained(
                dino_name_or_path, config=dino_config, use_safetensors=True, **hub
            )
        # the config.json written names the DINOv2 by its Hub id, never by a local path
        dino.config._name_or_path = hub_id_or_none(str(dino_name_or_path)) or ""
        model = super().from_clip(
            clip_name_or_path,
            class_names,
            background_names,
            tokenizer,
            dino_config=dino.config,
            **kwargs,
        )
        model.dino_branch.backbone.load_state_dict(dino.state_dict())
        model.freeze_backbones()
        return model

    # ---- pseudo labels ---------------------------------------------------------------------------

    @_outside_inference_mode
    @_pseudo_label_stage
    def generate_pseudo_labels(
        self,
        pixel_values: torch.Tensor,
        class_labels: torch.Tensor,
        features: CLIPVisionFeatures,
        decoder_affinity: torch.Tensor | None = None,
        use_rfm: bool = False,
        class_probabilities: torch.Tensor | None = None,
    ) -> WeCLIPPlusCAMOutput:
        """RFM+: batched GradCAM (the last block on block ``config.cam_feature_block``'s tokens) ->
        weighted by the prediction -> propagated by the RFM (or mean-attention) affinity, box mask if
        ``config.rfm_use_box_mask`` -> PAR -> labels.

        Args:
            pixel_values: [B, 3, H, W] normalized images. class_labels: [B, C] multi-hot.
            features: `forward_clip_features` of the images, with `attention_maps_needed(config, use_rfm)`
                maps.
            decoder_affinity: [B, N, N] the affinity of the concatenated decoder features (RFM only).
            class_probabilities: [B, 1 + C, h, w] softmax of the detached prediction (required).
        Returns: a `WeCLIPPlusCAMOutput`. Runs in float32 whatever the caller's autocast.
        """
        if class_probabilities is None:
            raise ValueError("RFM+ needs class_probabilities: [B, 1 + C, h, w] softmax of the prediction.")
        cfg = self.config
        self._check_inputs(pixel_values, class_labels, None)
        check_features_of(pixel_values, features, self.config.vision_config.patch_size, decoder_affinity)
        plan = plan_pairs(class_labels, pixel_values.device)
        gradcams = self.pair_gradcams(features.hidden[cfg.cam_feature_block], plan, features.grid)
        masks = cam_box_masks(gradcams.cams, cfg.cam_box_threshold) if cfg.rfm_use_box_mask else None
        weighted = prediction_weighted_cams(gradcams.cams, class_probabilities.float(), plan)
        out = self.refine_and_label(
            pixel_values, features, plan, gradcams, weighted, masks, decoder_affinity, use_rfm
        )
        return WeCLIPPlusCAMOutput(**out, weighted_gradcams=weighted)

    # ---- forward ---------------------------------------------------------------------------------

    def _self_training(self) -> bool:
        """Whether this step overwrites confident pseudo-label pixels (``self_training_start_step``)."""
        start = self.config.self_training_start_step
        return start is not None and self._current_step() >= start

    @_outside_inference_mode
    def forward(
        self,
        pixel_values: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_rfm: bool | None = None,
        pixel_mask: torch.Tensor | None = None,
        output_cam_details: bool = False,
        output_hidden_states: bool | list[int] | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        return_loss: bool | None = None,
    ) -> WeCLIPPlusSemanticSegmenterOutput | tuple:
        r"""
        Args: as [`WeCLIPForSemanticSegmentation.forward`] (``output_hidden_states`` and
            ``output_attentions`` concern the CLIP vision tower).

        The loss is ``seg + affinity_loss_weight * affinity + cross_branch_loss_weight * (clip_from_dino +
        dino_from_clip) + dice_loss_weight * dice``. From ``config.self_training_start_step`` on (the
        training-step counter), the pixels the prediction is confident about overwrite the pseudo labels of
        the segmentation and Dice terms (not those of the affinity term). With pixel ``labels`` the same
        losses use them, without the overwrite.
        """
        cfg = self.config
        return_dict = cfg.return_dict if return_dict is None else return_dict
        # 1. Frozen CLIP: the first L-1 blocks, with the attention maps this step's pseudo labels need.
        start = self._frozen_clip_pass(
            pixel_values,
            class_labels,
            labels,
            pixel_mask,
            use_rfm,
            output_hidden_states,
            output_attentions,
            return_loss,
        )
        clip, rfm = start.clip, start.rfm

        # 2. Frozen DINOv2 and its head, resized to the CLIP grid.
        dino = self.dino_branch(pixel_values, clip.grid)

        # 3. The shared decoder on both branches; the prediction is their weighted sum. The affinity is that
        # of the concatenated branch features (both after their heads' dropout).
        logits_clip, clip_head_features = self.decoder(start.tokens, clip.grid)
        logits_dino = self.decoder.decode(dino.features)
        weight_clip, weight_dino = cfg.branch_logit_weights
        logits = weight_clip * logits_clip + weight_dino * logits_dino
        decoder_affinity = None
        if start.needs_affinity:
            head_features = torch.cat([clip_head_features, dino.features], dim=1)
            decoder_affinity = feature_affinity(head_features)  # [B, N, N]

        # 4. Pseudo labels from the frozen CLIP with RFM+ (weak supervision).
        details = pseudo = cams = None
        if start.weak:
            probabilities = logits.detach().float().softmax(dim=1)  # [B, 1 + C, h, w]
            details = self.generate_pseudo_labels(
                pixel_values, start.class_labels, clip, decoder_affinity, rfm, probabilities
            )
            pseudo, cams = self._ignore_padding(details, pixel_mask), details.cams

        # 5. Losses on the pseudo labels (or on the given pixel labels).
        terms = None
        target = labels if labels is not None else pseudo
        if start.has_loss:
            terms = weclip_plus_losses(
                cfg,
                logits,
                logits_clip,
                logits_dino,
                decoder_affinity,
                target,
                self_training=labels is None and self._self_training(),
                across_processes=self.training and torch.is_grad_enabled(),
            )

        self._count_training_forward(start.labelled)

        output = WeCLIPPlusSemanticSegmenterOutput(
            loss=terms.loss if terms else None,
            logits=logits,
            logits_clip=logits_clip,
            logits_dino=logits_dino,
            seg_loss=terms.seg_loss if terms else None,
            affinity_loss=terms.affinity_loss if terms else None,
            dice_loss=terms.dice_loss if terms else None,
            clip_from_dino_loss=terms.clip_from_dino_loss if terms else None,
            dino_from_clip_loss=terms.dino_from_clip_loss if terms else None,
            self_training_mask=terms.self_training_mask if terms else None,
            pseudo_labels=pseudo,
            cams=cams,
            decoder_affinity=decoder_affinity,
            used_rfm=rfm,
            cam_details=details if output_cam_details else None,
            hidden_states=start.hidden_states,
            attentions=start.attentions,
        )
        return output if return_dict else output.to_tuple()


def model_from_backbones(
    clip_name_or_path: str, dino_name_or_path: str | None = None, plus: bool = False, **config_kwargs
) -> WeCLIPForSemanticSegmentation:
    """A fresh model on pretrained backbones: WeCLIP+ when a DINOv2 is given or ``plus`` asks for one (then
    `DINO_MODEL`, facebook/dinov2-small), else WeCLIP (`from_clip_and_dino` / `from_clip`, with ``config_kwargs``)."""
    if plus or dino_name_or_path:
        dino = dino_name_or_path or DINO_MODEL
        return WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(clip_name_or_path, dino, **config_kwargs)
    return WeCLIPForSemanticSegmentation.from_clip(clip_name_or_path, **config_kwargs)


__all__ = [
    "model_from_backbones",
    "WeCLIPPlusForSemanticSegmentation",
    "WeCLIPPlusSemanticSegmenterOutput",
    "WeCLIPPlusCAMOutput",
    "prediction_weighted_cams",
]

"""WeCLIP: a frozen CLIP, a small trainable decoder, and online pseudo labels from GradCAM + RFM.

Reading order: outputs, the pretrained-model base, then the task model, whose forward reads as numbered steps
(frozen CLIP, decoder, pseudo labels, losses). The frozen CLIP tower runs in `clip_features`, the decoder is in
`decoder`, the pseudo-label stages in `pseudo_labels`, the loading checks in `model_loading`, the Hub upload in
`hub`; the model's text embeddings are `class_embeddings`', its step counter `training_step`'s, its input checks
`input_checks`'.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import CLIPTextModel, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.utils import ModelOutput
from transformers.utils import logging as hf_logging

from .affinity import transition_matrix
from .cam import cam_box_masks, refine_cams, upsample_normalized
from .chunking import images_per_attention_chunk
from .class_embeddings import ClassEmbeddingsMixin, placeholder_text_embeds
from .clip_features import CLIPVisionFeatures, clip_features, in_float32, vision_outputs
from .configuration_weclip import WeCLIPConfig
from .decoder import (
    WeCLIPDecoder,
    WeCLIPDecoderAttention,
    feature_affinity,
    init_official_attention,
    init_trained_layer,
)
from .input_checks import check_features_of, check_inputs
from .last_block import pair_block_outputs, run_last_block
from .losses import weclip_loss
from .model_loading import (
    CLIP_CHECKPOINT_FIELDS,
    HUB_OPTIONS,
    backbone_config,
    check_backbone_source,
    check_model_folder,
    hub_id_or_none,
    in_aligned_memory,
    load_clip_tokenizer,
    loading_errors,
    refuse_missing_weights,
    refuse_split_placement,
    refuse_unused_weights,
    safetensors_only,
    shape_overrides,
    split_backbone_keywords,
    weights_readable_as,
)
from .par import par_refine
from .pseudo_labels import (
    PairGradCAMs,
    PairPlan,
    attention_maps_needed,
    background_margins,
    cam_affinity,
    class_scores,
    dense_class_cams,
    labels_from_margins,
    pair_gradcams,
    patch_attention_maps,
    plan_pairs,
)
from .training_step import TrainingStepMixin

logger = hf_logging.get_logger(__name__)

# --------------------------------------------------------------------------------------------------
# Outputs


@dataclass
class WeCLIPCAMOutput(ModelOutput):
    """Pseudo labels and every intermediate of their computation, per (image, class) pair.

    Pairs are ordered by image, then by ascending class (0-based foreground index).
    """

    pseudo_labels: torch.LongTensor | None = None  # [B, H, W] 0 = background, k = class k
    cams: torch.Tensor | None = None  # [B, C, h, w] normalized refined CAM per class (0 if absent)
    pair_image_index: torch.LongTensor | None = None  # [P]
    pair_class_index: torch.LongTensor | None = None  # [P]
    # [P, C + Nb] per pair: softmax over the image's present classes + background words
    text_probs: torch.Tensor | None = None
    gradcams: torch.Tensor | None = None  # [P, h, w] after the double min-max normalization
    box_masks: torch.Tensor | None = None  # [P, h, w]
    refined_cams_grid: torch.Tensor | None = None  # [P, h, w] before normalization
    refined_cams: torch.Tensor | None = None  # [P, H, W] normalized, upsampled
    affinity_before_norm: torch.Tensor | None = None  # [B, N, N] input of the transition matrix
    rfm_keep: torch.Tensor | None = None  # [B, L] layers kept by the RFM
    rfm_distance: torch.Tensor | None = None  # [B, L] the RFM statistic d_l


@dataclass
class WeCLIPSemanticSegmenterOutput(SemanticSegmenterOutput):
    """Output of [`WeCLIPForSemanticSegmentation`].

    Args:
        loss: total loss (segmentation + weighted affinity) when ``class_labels`` or ``labels`` are given.
        logits: [B, num_labels, h, w] on the patch grid; upsample to the image size for predictions.
        seg_loss, affinity_loss: the two loss terms.
        pseudo_labels: [B, H, W] int64 pseudo labels (0 = background, k = class k) from the frozen CLIP.
        cams: [B, C, h, w] refined, normalized CAM per foreground class (0 for absent classes).
        decoder_affinity: [B, N, N] decoder affinity ``sigmoid(F^T F)``.
        used_rfm: whether the RFM affinity produced the pseudo labels.
        cam_details: every intermediate per pair (``output_cam_details=True``).
    """

    seg_loss: torch.FloatTensor | None = None
    affinity_loss: torch.FloatTensor | None = None
    pseudo_labels: torch.LongTensor | None = None
    cams: torch.FloatTensor | None = None
    decoder_affinity: torch.FloatTensor | None = None
    used_rfm: bool | None = None
    cam_details: WeCLIPCAMOutput | None = None


# --------------------------------------------------------------------------------------------------
# Pretrained-model base


def _outside_inference_mode(forward):
    """Run ``forward`` under `torch.no_grad` instead of `torch.inference_mode`: the pseudo labels' GradCAM takes
    gradients within the forward, which no tensor made in inference mode can carry (outside it, the same forward)."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        if not torch.is_inference_mode_enabled():
            return forward(self, *args, **kwargs)
        with torch.inference_mode(False), torch.no_grad():
            return forward(self, *args, **kwargs)

    return wrapper


def _pseudo_label_stage(method):
    """Run ``method(self, pixel_values, ...)`` as the pseudo-label pipeline needs: with autocast off on
    ``pixel_values``' device and the pixels in float32, whatever mixed precision the caller runs under, and
    eagerly under `torch.compile` (``torch.compile(model)`` compiles the CLIP forward, the decoder and the
    losses around it). The pipeline cannot be traced: it reads the image labels on the host, its shapes follow
    each batch's (image, class) pairs, and its GradCAM takes `torch.autograd.grad` w.r.t. a tensor it creates."""

    @functools.wraps(method)
    def wrapper(self, pixel_values: torch.Tensor, *args, **kwargs):
        with torch.autocast(pixel_values.device.type, enabled=False):  # labels: no gradient w.r.t. the pixels
            return method(self, pixel_values.detach().float(), *args, **kwargs)

    return torch.compiler.disable(wrapper)


class WeCLIPPreTrainedModel(PreTrainedModel):
    config: WeCLIPConfig
    config_class = WeCLIPConfig
    base_model_prefix = "weclip"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # transformers' gradient checkpointing applies where activations are kept: the decoder's transformer blocks
    # (35% of the tensors a step saves for backward: ViT-B/16, crop 320). The frozen towers keep none (they run
    # without autograd; their layers are in eval mode, which checkpointing skips)
    supports_gradient_checkpointing = True
    # the attention implementations of the frozen towers, which dispatch through transformers' attention interface
    # (CLIP's and DINOv2's declare all three; tests/test_weclip_plus.py checks that they still do); the explicit
    # blocks (`_can_set_attn_implementation`) and the decoder's SDPA do not depend on the choice
    _supports_sdpa = True
    _supports_flex_attn = True  # runs and matches SDPA on a CPU (torch 2.13; compiled by inductor)
    _supports_flash_attn = True  # FlashAttention 2/3: GPU only, left to transformers' checks (not run here)
    # device_map="auto" needs these to place the model; a placement split over devices is refused after loading
    # (`model_loading.refuse_split_placement`: the forward reads the frozen weights directly)
    _no_split_modules = ["CLIPEncoderLayer", "CLIPVisionEmbeddings", "CLIPTextEmbeddings"]

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func=checkpoint, every_n_layers: int = 1
    ) -> None:
        """transformers' setting, with ``every_n_layers`` counted over the trained modules' blocks (`_TRAINED`: the
        decoder's), from their first: transformers counts every layer of the model, the frozen towers' first, which
        never checkpoint (eval mode), so the decoder blocks picked followed the towers' depths."""
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func, every_n_layers=1)
        trained = [getattr(self, name) for name in getattr(self, "_TRAINED", ())]
        blocks = [
            m for module in trained for m in module.modules() if isinstance(m, GradientCheckpointingLayer)
        ]
        for index, block in enumerate(blocks):
            block.gradient_checkpointing = enable and index % every_n_layers == 0

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """`set_attn_implementation` applies: the frozen towers' attention dispatches on their configs at every call
        (the blocks whose maps the CAM and RFM read run explicitly, whatever the setting), and the decoder's
        attention, which no probabilities are read from, is SDPA under every setting. transformers' guess from the
        source (an ``*Attention(nn.Module)`` class not using its attention interface: the decoder's) says no."""
        return True

    def _init_weights(self, module: nn.Module) -> None:
        """The trained modules (`_TRAINED`: the decoder, and WeCLIP+'s DINO head): as the official code's
        (`config.initializer_range` None: PyTorch's module defaults, the decoder attention's own rule) or
        normal(std=initializer_range) weights and zero biases (`init_trained_layer`), unit LayerNorms. The CLIP
        towers (and WeCLIP+'s DINOv2) are initialised by their own scheme (transformers dispatches them to
        `CLIPPreTrainedModel`, `Dinov2PreTrainedModel`), the projections as `CLIPModel` does; the text-embedding
        buffers get fixed unit vectors (seeded, so independent of the global RNG) until `update_class_embeddings`
        computes the real ones."""
        cfg = self.config
        # transformers visits every module, containers too (`is_custom_code` is False; custom code skips them)
        trained = [getattr(self, name, None) for name in getattr(self, "_TRAINED", ())]
        if any(m is not None and any(module is layer for layer in m.modules()) for m in trained):
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                init_trained_layer(module, cfg.initializer_range)
            # after its two Linears (transformers visits a module's children first, as nn.Module.apply)
            elif isinstance(module, WeCLIPDecoderAttention) and cfg.initializer_range is None:
                init_official_attention(module)
            elif isinstance(module, nn.LayerNorm):
                init.ones_(module.weight)
                init.zeros_(module.bias)
        elif isinstance(module, WeCLIPForSemanticSegmentation):
            factor = cfg.vision_config.initializer_factor
            init.normal_(module.visual_projection.weight, std=cfg.vision_config.hidden_size**-0.5 * factor)
            init.normal_(module.text_projection.weight, std=cfg.text_config.hidden_size**-0.5 * factor)
            init.constant_(module.logit_scale, cfg.logit_scale_init_value)
            class_embeds, background_embeds = placeholder_text_embeds(cfg)
            init.copy_(module.class_text_embeds, class_embeds)
            init.copy_(module.background_text_embeds, background_embeds)
            init.zeros_(module.training_step)

    @classmethod
    def is_custom_code(cls) -> bool:
        """False: `_init_weights` writes through `transformers.initialization`, which honours the per-tensor
        "already loaded" flags, so transformers may visit every module (custom code gets only the modules that
        own tensors, which would send CLIP's attention and MLP layers to the generic Linear rule). This holds too
        when ``is_remote_code()`` is True: registered for the Auto classes (so that saving copies the code files)
        or loaded with ``trust_remote_code`` from such a copy of this file."""
        return False


# --------------------------------------------------------------------------------------------------
# Task model


@dataclass
class FrozenCLIPPass:
    """What a forward starts from (`WeCLIPForSemanticSegmentation._frozen_clip_pass`)."""

    class_labels: torch.Tensor | None  # [B, C] 0./1. weak labels, None without
    has_pixel_labels: bool  # pixel labels were given (full supervision)
    rfm: bool | None  # whether this step's pseudo labels use the RFM; None without weak labels
    clip: CLIPVisionFeatures  # the frozen tower's first L-1 blocks
    tokens: list[torch.Tensor]  # the decoder's input: [B, N, D] patch tokens of its feature layers
    hidden_states: tuple | None  # the vision outputs the flags ask for
    attentions: tuple | None
    return_loss: bool = True  # compute the loss when there are labels (weak or pixel ones)

    @property
    def weak(self) -> bool:
        """Weak supervision: image-level labels were given, pseudo labels are made."""
        return self.class_labels is not None

    @property
    def labelled(self) -> bool:
        """Labels were given (weak or pixel ones): a training forward counts as a step."""
        return self.weak or self.has_pixel_labels

    @property
    def has_loss(self) -> bool:
        """A loss will be computed: labels (weak or pixel ones) were given and ``return_loss`` is on."""
        return self.return_loss and self.labelled

    @property
    def needs_affinity(self) -> bool:
        """The decoder affinity is needed: by the loss, or by the RFM of this step's pseudo labels."""
        return self.has_loss or bool(self.rfm)


def _check_config_type(model_class: type, config) -> None:
    """Refuse a config of another model type than ``model_class``'s: WeCLIP+'s config subclasses WeCLIP's, so a
    WeCLIP built from it would silently lack the DINO branch, and a WeCLIP+ from WeCLIP's fail deep inside."""
    expected = model_class.config_class
    given = getattr(config, "model_type", None)
    if given != expected.model_type:
        raise ValueError(
            f"{model_class.__name__} is built from a {expected.__name__} (model_type {expected.model_type!r}), got "
            f"a {type(config).__name__} (model_type {given!r}). Build the model its config names with "
            "AutoModelForSemanticSegmentation.from_config(config) (or load a folder with "
            "AutoModelForSemanticSegmentation.from_pretrained)."
        )


class WeCLIPForSemanticSegmentation(ClassEmbeddingsMixin, TrainingStepMixin, WeCLIPPreTrainedModel):
    """WeCLIP for semantic segmentation trained from image-level labels.

    The CLIP towers (`vision_model`, `text_model`, `visual_projection`, `text_projection`, `logit_scale`,
    named as in `CLIPModel` so CLIP checkpoints load by name) are frozen: no gradient, always in eval mode.
    Class and background text embeddings are computed once (`update_class_embeddings`) and stored as
    buffers, so inference never tokenizes. `training_step` (a saved buffer) counts training forwards (train
    mode, gradients enabled, labels given) and switches the RFM on at `config.rfm_start_step`.
    """

    _FROZEN = ("vision_model", "text_model", "visual_projection", "text_projection")
    _TRAINED = ("decoder",)  # modules `_init_weights` initializes with the decoder rule
    _from_backbones = "from_clip"  # the constructor from pretrained backbones (named in errors)

    def __init__(self, config: WeCLIPConfig):
        _check_config_type(type(self), config)
        super().__init__(config)
        self.vision_model = CLIPVisionModel._from_config(config.vision_config)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.visual_projection = nn.Linear(
            config.vision_config.hidden_size, config.projection_dim, bias=False
        )
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value), requires_grad=False)
        self._init_class_embeddings(config)
        self._init_training_step()
        self.decoder = WeCLIPDecoder(config)
        self._built_architecture = config.architecture()  # what `_check_architecture` holds the config to
        self.post_init()
        self.freeze_backbones()

    def _check_architecture(self) -> None:
        """Refuse a config whose architecture (`WeCLIPConfig.architecture`: the layers, widths, dropout the modules
        are built from) was changed under the built model (``model.config.num_feature_layers = 2``): the model
        would still run the one it was built with, or save weights its config.json does not describe."""
        built, now = self._built_architecture, self.config.architecture()
        changed = [
            f"model.config.{name} is {now.get(name)!r}, built with {value!r}"
            for name, value in built.items()
            if now.get(name) != value
        ]
        if changed:
            raise ValueError(
                f"{'; '.join(changed)}: a field the modules are built from was changed under the built model, which "
                "still runs (and would save) what it was built with. Set it back; for another value load the model "
                "anew with it where its weights fit (from_pretrained(folder, decoder_dropout=...)), else build a new "
                f"model from the changed config ({type(self).__name__}(config)) and train it."
            )

    # ---- frozen CLIP ---------------------------------------------------------------------------

    def freeze_backbones(self) -> None:
        """Freeze the frozen backbones (WeCLIP: the CLIP towers; no gradient, eval mode). Called after construction,
        loading and every `train`."""
        for name in self._FROZEN:
            getattr(self, name).requires_grad_(False).eval()
        self.logit_scale.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.freeze_backbones()
        return self

    def save_pretrained(
        self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False, **kwargs
    ) -> None:
        """`PreTrainedModel.save_pretrained`, with the weight files as readable as the folder's config.json
        (`weights_readable_as`: safetensors writes them 0600). A config that would not load again is refused
        before anything is written (`WeCLIPConfig.validate`). The config records the prompts of the text
        embeddings (``encoded_prompts``; ``{}`` for placeholders, with a warning), which loading checks.
        ``push_to_hub=True`` then uploads the model as `push_to_hub` does (with an image processor and the WeCLIP
        card; ``repo_id``, default the folder's name, and the upload keywords of `push_to_hub`)."""
        # push_to_hub's keywords (its repo_id too) go to the upload, the others to the save (and the upload's save)
        upload = inspect.signature(type(self).push_to_hub).parameters.keys() - {"self", "kwargs"}
        hub = {key: kwargs.pop(key) for key in upload & kwargs.keys()}
        self.config.validate()
        self._check_architecture()
        self._record_encoded_prompts()
        super().save_pretrained(save_directory, *args, **kwargs)
        folder = Path(save_directory)
        if (folder / "config.json").is_file():  # the main process's folder (others save nothing)
            weights_readable_as(folder, folder / "config.json")
        if push_to_hub:
            self.push_to_hub(hub.pop("repo_id", None) or folder.resolve().name, **hub, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, reading safetensors only, with clear errors for a missing folder,
        a checkpoint of another model type, pickle-only weights, a corrupted weights file, weights missing from
        the file (they would otherwise be left random) or a class count that does not match the weights; CLIP
        is frozen again after loading. Hub kernels (transformers' ``use_kernels``) are off unless
        ``use_kernels=True`` is given."""
        check_model_folder(cls, pretrained_model_name_or_path, kwargs)
        loaded = cls._load_checked(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # where its image processor was saved beside it (push_to_hub ships that one; never the token)
        where = {key: kwargs[key] for key in ("subfolder", "revision", "cache_dir") if kwargs.get(key)}
        model._loaded_from = {"pretrained_model_name_or_path": str(pretrained_model_name_or_path), **where}
        return loaded

    @classmethod
    def _load_checked(
        cls, pretrained_model_name_or_path, *args, allowed_missing: re.Pattern | None = None, **kwargs
    ):
        """`PreTrainedModel.from_pretrained` on safetensors only; every weight of the model must be in the file
        except those matching ``allowed_missing`` (used by `from_clip`: a CLIP checkpoint has no decoder)."""
        path = str(pretrained_model_name_or_path)
        safetensors_only(path, kwargs)
        want_info = kwargs.pop("output_loading_info", False)
        overrides = shape_overrides(cls.config_class, kwargs)
        # no Hub kernels unless asked for: with transformers' default (use_kernels=True) a model on CUDA whose
        # train/eval mode changes fetches `kernels-community/activation` to replace CLIP's QuickGELU (offline: a
        # ValueError at model.eval(); online: code from the Hub in the frozen CLIP the port is checked against)
        kwargs.setdefault("use_kernels", False)
        with loading_errors(path, overrides):
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        allowed = [p.pattern for p in (allowed_missing, cls._added_by_subclass()) if p is not None]
        allowed_pattern = re.compile("|".join(allowed)) if allowed else None
        refuse_missing_weights(cls, path, info["missing_keys"], allowed_pattern, overrides)
        refuse_split_placement(path, model, kwargs)
        if allowed_missing is None:  # a saved model (from_clip logs a CLIP checkpoint's other tensors)
            refuse_unused_weights(path, info["unexpected_keys"], overrides)
            model._took_stored_text_embeds(path)
        in_aligned_memory(model)
        model.freeze_backbones()
        return (model, info) if want_info else model

    @classmethod
    def _fresh_in_clip_checkpoint(cls) -> re.Pattern:
        """The weights a CLIP checkpoint cannot hold, which `from_clip` initializes (any other load must find
        them): the trained modules' (`_TRAINED`), the text embeddings and the training step counter."""
        trained = "|".join(map(re.escape, cls._TRAINED))
        return re.compile(rf"^({trained})\.|_text_embeds$|^training_step$")

    @classmethod
    def _added_by_subclass(cls) -> re.Pattern | None:
        """The weights of the trained modules a user's subclass adds (the names in its ``_TRAINED`` beyond those
        of the weclip-hf class it derives from): no saved WeCLIP folder or backbone checkpoint holds them, so they
        may be missing at loading and start from the decoder's initialisation (`_init_weights`)."""
        # the package's class (also as remote code, under another module name): each names its backbone constructor
        base = next(k for k in cls.__mro__ if "_from_backbones" in vars(k))
        added = [name for name in cls._TRAINED if name not in base._TRAINED]
        return re.compile("^(" + "|".join(map(re.escape, added)) + r")\.") if added else None

    @classmethod
    def from_clip(
        cls,
        clip_name_or_path: str,
        class_names: list[str] | None = None,
        background_names: list[str] | None = None,
        tokenizer=None,
        **kwargs,
    ) -> WeCLIPForSemanticSegmentation:
        """Build WeCLIP from any CLIP checkpoint (Hub id or local folder): CLIP weights by name, a fresh
        decoder, class embeddings computed with the checkpoint's tokenizer (or ``tokenizer``). ``kwargs``: config
        fields, and the loading options of `from_pretrained` (``token``, ``revision``, ``cache_dir``,
        ``local_files_only``, ``dtype``, ...), which fetch the checkpoint and are not stored; others are refused."""
        kwargs, loading = split_backbone_keywords(
            kwargs, cls.config_class.field_names(), f"{cls.__name__}.from_clip", CLIP_CHECKPOINT_FIELDS
        )
        check_backbone_source(clip_name_or_path, "CLIP")
        hub = {k: v for k, v in loading.items() if k in HUB_OPTIONS}
        clip_config = backbone_config(clip_name_or_path, "CLIP", hub)
        if class_names is not None:
            kwargs["class_names"] = class_names
        if background_names is not None:
            kwargs["background_names"] = background_names
        config = cls.config_class(
            vision_config=clip_config.vision_config.to_dict(),
            text_config=clip_config.text_config.to_dict(),
            projection_dim=clip_config.projection_dim,
            **kwargs,
        )
        # the CLIP's Hub id (never a local path), which model cards name as the base model
        config.vision_config._name_or_path = hub_id_or_none(str(clip_name_or_path)) or ""
        # transformers would print every decoder tensor as MISSING: they are new by design, so its report is
        # silenced and only what would be a real problem (tensors of the checkpoint we did not use) is logged
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model, info = cls._load_checked(
                clip_name_or_path,
                config=config,
                allowed_missing=cls._fresh_in_clip_checkpoint(),
                output_loading_info=True,
                **loading,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        if info["unexpected_keys"]:
            logger.warning(
                f"{clip_name_or_path!r}: tensors not used by WeCLIP: {sorted(info['unexpected_keys'])}"
            )
        if tokenizer is None:
            tokenizer = load_clip_tokenizer(clip_name_or_path, "clip_name_or_path", hub)
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_clip_tokenizer(tokenizer, "tokenizer=", hub)
        model.update_class_embeddings(tokenizer)
        return model

    def forward_clip_features(
        self, pixel_values: torch.Tensor, num_attention_maps: int = 0, output_attentions: bool = False
    ) -> CLIPVisionFeatures:
        """The frozen tower up to (not including) the last block (`weclip_hf.clip_features.clip_features`): the
        block outputs, the head-averaged attention maps of the last ``num_attention_maps`` of those L-1 blocks and,
        with ``output_attentions``, every block's per-head maps."""
        return clip_features(self.vision_model, pixel_values, num_attention_maps, output_attentions)

    def last_block_pair_embeddings(
        self, x: torch.Tensor, pair_image: torch.Tensor, slots: tuple[torch.Tensor, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The last CLIP block run once per image in float32 (half-precision weights are upcast), and each
        (image, class) pair's image embedding as a function of a shift of the patch tokens after the block's
        first LayerNorm (`weclip_hf.last_block`): what `pair_gradcams` needs, without a block copy per pair.

        Args: x: [B, 1+N, D] input tokens of the last block (detached). pair_image: [P] image of each pair.
            slots: each pair's rank within its image and the most pairs of one image (a `PairPlan`'s ``slot``
            and ``max_classes``).
        Returns: (ln1 output [B, 1+N, D] — the GradCAM activations, zero shift [P, D] requiring grad,
        L2-normalized image embedding [P, E] of each pair's image, differentiable w.r.t. the shift,
        head-averaged attention [B, 1+N, 1+N]). The gradient of a pair's target w.r.t. its shift is the sum
        over patch tokens of its gradient w.r.t. the ln1 output (the per-pair autograd path of
        `tests/reference_weclip.last_block_image_embedding`).
        """
        block = run_last_block(in_float32(self.vision_model.encoder.layers[-1]), x.float())
        post_layernorm, projection = (
            in_float32(self.vision_model.post_layernorm),
            in_float32(self.visual_projection),
        )
        shift, outputs = pair_block_outputs(block, pair_image, slots)
        pooled = post_layernorm(outputs)[:, 1:].mean(dim=1)
        return block.normed_input, shift, F.normalize(projection(pooled), dim=-1), block.attention

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
    ) -> WeCLIPCAMOutput:
        """Batched GradCAM -> attention (or RFM) affinity refinement with box masks -> PAR -> labels, as the
        stages of `weclip_hf.pseudo_labels`.

        Args:
            pixel_values: [B, 3, H, W] normalized images. class_labels: [B, C] multi-hot.
            features: `forward_clip_features` of the images, with at least
                `attention_maps_needed(config, use_rfm)` attention maps.
            decoder_affinity: [B, N, N] (RFM only).
        Returns: a `WeCLIPCAMOutput` with the pseudo labels [B, H, W], the dense CAMs and every
            per-pair intermediate.

        An image without any class gets all-background pseudo labels. Runs in float32 whatever the
        caller's autocast (mixed precision): bf16 here moves the CAMs and boxes visibly.
        """
        self._check_inputs(pixel_values, class_labels, None)
        check_features_of(pixel_values, features, self.config.vision_config.patch_size, decoder_affinity)
        plan = plan_pairs(class_labels, pixel_values.device)
        gradcams = self.pair_gradcams(features.hidden[-1], plan, features.grid)
        masks = cam_box_masks(gradcams.cams, self.config.cam_box_threshold)
        return self.refine_and_label(
            pixel_values, features, plan, gradcams, gradcams.cams, masks, decoder_affinity, use_rfm
        )

    def pair_gradcams(self, tokens: torch.Tensor, plan: PairPlan, grid: tuple[int, int]) -> PairGradCAMs:
        """Every pair's GradCAM from the last CLIP block applied to ``tokens`` [B, 1+N, D] (`pair_gradcams`), a
        few images at a time on a CPU (`weclip_hf.chunking`: their [heads, T, T] attention maps within budget)."""
        heads = self.vision_model.encoder.layers[-1].self_attn.num_heads
        try:
            return pair_gradcams(
                self.last_block_pair_embeddings,
                # the class scores' gradients w.r.t. the block's own input; a tensor made in inference mode copied
                tokens.clone() if tokens.is_inference() else tokens.detach(),
                self.class_text_embeds,
                self.background_text_embeds,
                self.logit_scale,
                plan,
                grid,
                chunk_size=images_per_attention_chunk(tokens.shape[0], tokens.shape[1], heads, tokens.device),
            )
        except RuntimeError as error:
            # checked on failure only: torch's message would have the caller use no_grad, which changes nothing
            if not self.logit_scale.is_inference():
                raise
            raise RuntimeError(
                f"{type(self).__name__}'s parameters are inference tensors (it was built or loaded under "
                "torch.inference_mode()): the pseudo labels' GradCAM takes gradients through the last CLIP block, "
                "which they cannot carry. Build or load the model outside torch.inference_mode() (its forward may "
                "run under it); its predictions (no class_labels) need no gradient."
            ) from error

    def refine_and_label(
        self,
        pixel_values: torch.Tensor,
        features: CLIPVisionFeatures,
        plan: PairPlan,
        gradcams: PairGradCAMs,
        cams: torch.Tensor,
        masks: torch.Tensor | None,
        decoder_affinity: torch.Tensor | None,
        use_rfm: bool,
    ) -> WeCLIPCAMOutput:
        """The stages after GradCAM: affinity (mean of the last maps or RFM) -> transition -> ``cams`` [P, h, w]
        propagated (within the box ``masks``, None: everywhere) -> upsampling -> PAR -> labels."""
        cfg = self.config
        maps = patch_attention_maps(features.attention, gradcams.last_attention)
        affinity = cam_affinity(maps, cfg, use_rfm, decoder_affinity)
        transition = transition_matrix(affinity.affinity)
        refined_grid = refine_cams(cams, transition, plan.image, masks)
        refined = upsample_normalized(refined_grid, pixel_values.shape[-2:])  # [P, H, W]
        margins = par_refine(  # PAR on each class score less the background: one map fewer per image
            pixel_values,
            background_margins(class_scores(refined, plan, cfg.cam_bg_exponent), plan),
            cfg.par_dilations,
            cfg.par_num_iter,
            cfg.par_temperature,
            cfg.par_pos_weight,
            num_maps=plan.present.sum(1),  # the image's classes: the other slots are 0
        )
        return WeCLIPCAMOutput(
            pseudo_labels=labels_from_margins(margins, plan),
            cams=dense_class_cams(refined_grid, plan),
            pair_image_index=plan.image,
            pair_class_index=plan.class_index,
            text_probs=gradcams.text_probs,
            gradcams=gradcams.cams,
            box_masks=masks,
            refined_cams_grid=refined_grid,
            refined_cams=refined,
            affinity_before_norm=affinity.affinity,
            rfm_keep=affinity.rfm_keep,
            rfm_distance=affinity.rfm_distance,
        )

    # ---- forward ---------------------------------------------------------------------------------

    def _check_inputs(
        self,
        pixel_values: torch.Tensor,
        class_labels: torch.Tensor | None,
        labels: torch.Tensor | None,
        pixel_mask: torch.Tensor | None = None,
    ) -> None:
        """Refuse an architecture or classes changed under the built model (`_check_architecture`,
        `_check_classes`), then bad inputs (`check_inputs`)."""
        self._check_architecture()
        self._check_classes(weak_labels=class_labels is not None)
        check_inputs(self.config, pixel_values, class_labels, labels, pixel_mask)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        image_processor=None,
        model_card=None,
        metrics: dict[str, float] | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        tags: list[str] | None = None,
        commit_description: str | None = None,
        **kwargs,
    ):
        """Upload safetensors weights, config, an image processor, the CLIP tokenizer of the text embeddings (the one
        `update_class_embeddings` last computed them with, else the one saved where the model was loaded from, if
        any) and a WeCLIP model card in one commit.

        Unlike the generic `PreTrainedModel.push_to_hub` (weights and a placeholder card), the repository
        works with ``pipeline("image-segmentation", model=repo_id)`` right away.

        Args:
            repo_id: ``"name"`` or ``"user/name"`` (created if missing).
            image_processor: the processor to ship; default: the one saved in the folder the model was loaded
                from, else `WeCLIPImageProcessor` for this patch size (ImageNet statistics, long side 512, as the
                official evaluation).
            model_card: a `huggingface_hub.ModelCard`; default `weclip_hf.model_card.make_model_card` with ``metrics``
                and the extra Hub ``tags``.
            commit_message: default "Upload <the model's class name>".
            commit_description, private, token, revision, create_pr: as for `huggingface_hub`'s upload; other
                keywords go to `save_pretrained` (e.g. ``max_shard_size``).

        The upload is `weclip_hf.hub.push_model_to_hub`.
        """
        from .hub import push_model_to_hub  # lazily: huggingface_hub's upload machinery

        return push_model_to_hub(
            self,
            repo_id,
            image_processor=image_processor,
            model_card=model_card,
            metrics=metrics,
            commit_message=commit_message,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
            tags=tags or (),
            commit_description=commit_description,
            **kwargs,
        )

    def get_input_embeddings(self) -> nn.Module:
        """The vision tower's patch embedding (as transformers' vision models return)."""
        return self.vision_model.embeddings.patch_embedding

    def _frozen_clip_pass(
        self,
        pixel_values: torch.Tensor,
        class_labels: torch.Tensor | None,
        labels: torch.Tensor | None,
        pixel_mask: torch.Tensor | None,
        use_rfm: bool | None,
        output_hidden_states: bool | list[int] | None,
        output_attentions: bool | None,
        return_loss: bool | None = None,
    ) -> FrozenCLIPPass:
        """The start of a forward (this model's and WeCLIP+'s): the inputs checked, the weak labels as floats,
        this step's RFM decision, and the frozen CLIP's first L-1 blocks with the attention maps the pseudo labels
        need (the other blocks run the configured attention, SDPA by default), plus the vision outputs the flags
        (None: the config's) ask for."""
        cfg = self.config
        if output_hidden_states is None:
            output_hidden_states = cfg.output_hidden_states
        if output_attentions is None:
            output_attentions = cfg.output_attentions
        self._check_inputs(pixel_values, class_labels, labels, pixel_mask)
        rfm = None
        if class_labels is not None:
            if not class_labels.is_floating_point():
                class_labels = class_labels.to(pixel_values.dtype)  # bool or integer multi-hot -> 0./1.
            rfm = self._current_step() >= cfg.rfm_start_step if use_rfm is None else bool(use_rfm)
        n_maps = attention_maps_needed(cfg, rfm) if class_labels is not None else 0
        clip = self.forward_clip_features(pixel_values, n_maps, output_attentions=output_attentions)
        tokens = [t[:, 1:] for t in clip.hidden[len(clip.hidden) - cfg.num_feature_layers :]]
        hidden_states, attentions = vision_outputs(
            self.vision_model, clip, output_hidden_states, output_attentions
        )
        wants_loss = return_loss is not False  # None (the forward's default): the loss where there are labels
        return FrozenCLIPPass(
            class_labels, labels is not None, rfm, clip, tokens, hidden_states, attentions, wants_loss
        )

    def _ignore_padding(self, details: WeCLIPCAMOutput, pixel_mask: torch.Tensor | None) -> torch.Tensor:
        """The pseudo labels of ``details`` with the crop padding (``pixel_mask`` 0) set to the ignore index, also
        written back to ``details``."""
        if pixel_mask is not None:
            details.pseudo_labels = details.pseudo_labels.masked_fill(
                pixel_mask == 0, self.config.semantic_loss_ignore_index
            )
        return details.pseudo_labels

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
    ) -> WeCLIPSemanticSegmenterOutput | tuple:
        r"""
        Args:
            pixel_values: [B, 3, H, W] normalized images (any size of at least one patch; the grid is
                floor(H/patch) x floor(W/patch)).
            class_labels: [B, C] multi-hot image-level labels (weak supervision; float, integer or bool
                tensor). Gives `pseudo_labels` and the WeCLIP loss. A row of zeros yields all-background
                pseudo labels.
            labels: [B, H, W] integer pixel labels, ``config.semantic_loss_ignore_index`` (default 255) ignored
                (full supervision: the same losses on these labels).
                When both are given, the loss uses `labels` and the pseudo labels are still returned.
            use_rfm: force the RFM on/off; `None` decides from `training_step >= config.rfm_start_step`.
            pixel_mask: [B, H, W] 1 for real pixels, 0 for crop padding. Where given, padded pixels get the
                ignore index in the pseudo labels (the official code lets CAMs, PAR and losses see the
                padding; that stays the default when no mask is passed).
            output_cam_details: also return every per-pair intermediate in `cam_details`.
            output_hidden_states: return the vision tower's hidden states (the embeddings after the
                pre-LayerNorm, then every block's output; WeCLIP's bilinear position embeddings) in
                `hidden_states`; a list of indices keeps only those (None elsewhere). Default:
                `config.output_hidden_states`.
            output_attentions: return every vision block's per-head attention probabilities [B, heads,
                1+N, 1+N] in `attentions` (the blocks then run eager attention instead of SDPA). Default:
                `config.output_attentions`.
            return_dict: return a `WeCLIPSemanticSegmenterOutput` (default: `config.return_dict`, True); False: its
                ``to_tuple()``, the fields that are not None in the dataclass order (``logits`` first unless a
                loss was computed, which then comes first), as every transformers model does.
            return_loss: False: no loss (nor its decoder affinity, unless the RFM needs it), for callers that
                want the pseudo labels or CAMs only (as CLIPModel's ``return_loss``); None (default) or True: the
                loss whenever there are labels. (A default of None keeps transformers' Trainer from asking every
                batch for a loss, as it would with ``True``: `transformers.utils.can_return_loss`.)

        Returns:
            `WeCLIPSemanticSegmenterOutput`: ``logits`` [B, num_labels, h, w] on the patch grid; with labels
            ``loss`` (``seg_loss`` + the affinity loss weight x ``affinity_loss``) and ``decoder_affinity``; with
            ``class_labels`` also ``pseudo_labels`` [B, H, W], ``cams`` and ``used_rfm``; ``hidden_states`` /
            ``attentions`` / ``cam_details`` when asked for.
        """
        cfg = self.config
        return_dict = cfg.return_dict if return_dict is None else return_dict
        # 1. Frozen CLIP: the first L-1 blocks, with attention maps only where this step's CAM (attention
        # refinement) or RFM needs them; the other blocks run the configured attention (SDPA by default).
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
        clip, rfm, grid = start.clip, start.rfm, start.clip.grid

        # 2. Decoder: logits on the patch grid and the affinity of its fused features (after dropout).
        logits, features = self.decoder(start.tokens, grid)
        # Under autocast (mixed precision) only the first L-1 CLIP blocks and the decoder run in low
        # precision: the affinity and the pseudo labels (GradCAM block, CAM normalisations, RFM, PAR) stay
        # float32.
        decoder_affinity = feature_affinity(features) if start.needs_affinity else None  # [B, N, N]

        # 3. Pseudo labels from the frozen CLIP (weak supervision).
        details = pseudo = cams = None
        if start.weak:
            details = self.generate_pseudo_labels(
                pixel_values, start.class_labels, clip, decoder_affinity, rfm
            )
            pseudo, cams = self._ignore_padding(details, pixel_mask), details.cams

        # 4. Losses on the pseudo labels (or on the given pixel labels).
        loss = seg = aff = None
        target = labels if labels is not None else pseudo
        if start.has_loss:
            # training under DDP: normalise by the global batch's counts, so N processes of B images
            # give the gradient of one process of N x B images
            synced = self.training and torch.is_grad_enabled()
            loss, seg, aff = weclip_loss(cfg, logits, decoder_affinity, target, across_processes=synced)

        self._count_training_forward(start.labelled)

        output = WeCLIPSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            seg_loss=seg,
            affinity_loss=aff,
            pseudo_labels=pseudo,
            cams=cams,
            decoder_affinity=decoder_affinity,
            used_rfm=rfm,
            cam_details=details if output_cam_details else None,
            hidden_states=start.hidden_states,
            attentions=start.attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "WeCLIPForSemanticSegmentation",
    "WeCLIPPreTrainedModel",
    "WeCLIPSemanticSegmenterOutput",
    "WeCLIPCAMOutput",
    "CLIPVisionFeatures",
]

"""WeCLIP configuration: the frozen CLIP towers plus every constant of the method (DESIGN Part 1)."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable
from typing import Any

from transformers import CLIPTextConfig, CLIPVisionConfig, PreTrainedConfig
from transformers.utils import logging

from .config_checks import (
    MAX_LAYERS,
    MAX_PAR_ITERATIONS,
    MAX_WIDTH,
    check_clip_towers,
    check_dilations,
    check_ignore_index,
    check_int,
    check_label_names,
    check_number,
    check_optional_name,
    check_prompt_template,
    name_key,
    name_list,
)
from .json_files import read_json
from .presets import VOC_BACKGROUND_NAMES, VOC_LABELS, VOC_PROMPT_NAMES, get_preset, with_class_names

logger = logging.get_logger(__name__)


class RefusedOverrides(ValueError):
    """A saved config refused with the keyword arguments given to load it (`WeCLIPConfig.from_dict`)."""


# how a loaded model's classes change (the transformers way, num_labels / id2label, cannot: the labels follow the
# class names, whose text embeddings the model computes)
RELABEL_HINT = (
    " To change the classes of a model: load it, then call model.update_class_embeddings(tokenizer, class_names=[...])"
    " (their text embeddings; another number of classes starts a new classifier, to be trained)."
)


def _label_list(id2label: dict, num_classes: int) -> list[str]:
    """The names of ``id2label`` (keys int or, as read from JSON, str) in id order, checked to be background + one
    name per class: ids 0..num_classes."""
    try:
        by_id = {int(key): name for key, name in id2label.items()}
    except (AttributeError, TypeError, ValueError):
        raise ValueError(
            f"id2label must map label ids 0..{num_classes} to names, got {id2label!r}."
        ) from None
    if sorted(by_id) != list(range(num_classes + 1)) or not all(isinstance(n, str) for n in by_id.values()):
        raise ValueError(
            f"id2label must name ids 0..{num_classes} (background + the {num_classes} class_names), got ids "
            f"{sorted(by_id)}: the number of labels follows class_names.{RELABEL_HINT}"
        )
    return [by_id[i] for i in range(num_classes + 1)]


def _clip_towers(
    vision_config: dict | CLIPVisionConfig | None,
    text_config: dict | CLIPTextConfig | None,
    projection_dim: int,
) -> tuple[CLIPVisionConfig, CLIPTextConfig]:
    """The CLIP vision and text tower configs (default: ViT-B/16 and CLIP's text tower), checked."""
    if vision_config is None:
        vision_config = CLIPVisionConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=16,
            projection_dim=projection_dim,
        )
    elif isinstance(vision_config, dict):
        vision_config = CLIPVisionConfig(**vision_config)
    if text_config is None:
        text_config = CLIPTextConfig(projection_dim=projection_dim)
    elif isinstance(text_config, dict):
        text_config = CLIPTextConfig(**text_config)
    if not isinstance(vision_config, CLIPVisionConfig):
        raise TypeError(f"vision_config must be a CLIPVisionConfig or dict, got {type(vision_config)}")
    if not isinstance(text_config, CLIPTextConfig):
        raise TypeError(f"text_config must be a CLIPTextConfig or dict, got {type(text_config)}")
    check_clip_towers(vision_config, text_config)
    return vision_config, text_config


def _default_label_names(class_names: list[str]) -> list[str]:
    """The display names of ``class_names`` when none are given: VOC's labels for VOC's prompt names, else the
    names themselves."""
    return list(VOC_LABELS) if class_names == VOC_PROMPT_NAMES else list(class_names)


def class_name_lists(
    class_names: list[str] | None,
    label_names: list[str] | None,
    background_names: list[str] | None,
    id2label: dict | None,
) -> tuple[list[str], list[str], list[str]]:
    """(class prompt names, background words, display names of ids 0..C), defaulting to VOC's and checked; the
    display names come from ``id2label`` (as transformers' configs carry them), else ``label_names``."""
    for field, names in (("class_names", class_names), ("background_names", background_names),
                         ("label_names", label_names)):  # fmt: skip
        if isinstance(names, str):  # list("cat") would be three classes
            raise ValueError(f"{field} must be a list of names, got the string {names!r}: write [{names!r}].")
        # a number, or a dict (whose keys would be taken as names)
        if names is not None and not isinstance(names, (list, tuple)):
            raise ValueError(f"{field} must be a list of names, got {names!r}.")
    class_names = list(VOC_PROMPT_NAMES if class_names is None else class_names)
    background_label = "background"
    if label_names is not None and not all(isinstance(n, str) for n in label_names):
        raise ValueError(f"label_names must be strings, got {list(label_names)!r}.")
    if id2label is not None:
        names = _label_list(id2label, len(class_names))
        if label_names is not None and list(label_names) != names[1:]:
            raise ValueError(
                f"label_names {list(label_names)} and id2label {names} name the classes differently: give one "
                "of them."
            )
        background_label, label_names = names[0], names[1:]
    labels_given = "id2label" if id2label is not None else "label_names" if label_names is not None else None
    if label_names is None:
        label_names = _default_label_names(class_names)
    class_names = name_list("class_names", class_names, "class")
    background_names = name_list(
        "background_names",
        VOC_BACKGROUND_NAMES if background_names is None else background_names,
        "background word",
    )
    shared = sorted({name_key(n) for n in class_names} & {name_key(n) for n in background_names})
    if shared:  # a warning: saved models of before hold such names, and their embeddings fix the word count
        logger.warning_once(
            f"class_names and background_names share {shared} (compared as CLIP's tokenizer reads them): such a "
            "class competes with its own prompt as background in the CAM. For a new model give background_names "
            "without it (--background_names)."
        )
    if len(label_names) != len(class_names):
        raise ValueError(
            f"label_names has {len(label_names)} entries but class_names has {len(class_names)}."
        )
    labels = [background_label, *label_names]
    check_label_names(labels_given or "id2label (the class_names by default)", labels)
    return class_names, background_names, labels


def text_prompts(class_names: list[str], background_names: list[str], template: str) -> dict[str, list[str]]:
    """The CLIP prompts of the class and background text embeddings, ``{"class": [...], "background": [...]}``:
    each name filled into the prompt ``template``."""
    return {
        "class": [template.format(name) for name in class_names],
        "background": [template.format(name) for name in background_names],
    }


def _renamed(kwargs: dict, old: str, new: str, value: int | None, depth: int) -> int | None:
    """The value of a count renamed from ``old``, still read from older config.json files with a warning.

    Under the old name a count larger than the CLIP depth meant "all of them"; it keeps that meaning.
    """
    if old not in kwargs:
        return value
    old_value = kwargs.pop(old)
    if value is not None:
        raise ValueError(
            f"Give {new} only; {old} is its deprecated name (got both: {old_value!r} and {value!r})."
        )
    warnings.warn(f"WeCLIPConfig: {old!r} is deprecated, use {new!r}.", FutureWarning, stacklevel=3)
    check_int(old, old_value, 1, MAX_LAYERS)
    return min(old_value, depth)


def _depth(config: WeCLIPConfig) -> int:
    """The number of layers of the config's CLIP vision tower."""
    return config.vision_config.num_hidden_layers


def check_layer_count(config: WeCLIPConfig, name: str, value, spare: int = 0) -> None:
    """`check_int` of a number of the CLIP vision tower's layers (1 to its depth less ``spare``); the refusal names
    the depth: a preset's value, set for ViT-B/16's 12 layers, exceeds a smaller CLIP's."""
    try:
        check_int(name, value, 1, _depth(config) - spare)
    except ValueError as err:
        if isinstance(value, bool) or not isinstance(value, int):
            raise
        raise ValueError(
            f"{str(err).removesuffix('.')}: a number of the layers of the CLIP vision tower, which has "
            f"{_depth(config)} (vision_config.num_hidden_layers). A preset's value fits ViT-B/16's 12: set {name} "
            "(a config keyword) to fit a smaller CLIP."
        ) from None


FieldCheck = Callable[[Any, str, Any], None]

# Every field checked alone, by the constructor and when set on a built config (``model.config.x = v``, as
# transformers users change a threshold), so that the forward never reads a value the constructor refuses.
# Checks of fields against each other (decoder width and heads; class and background names) run in the
# constructor and `validate` only, as one of them may be set before the other.
WECLIP_FIELD_CHECKS: dict[str, FieldCheck] = {
    "projection_dim": lambda c, n, v: check_int(n, v, 1, MAX_WIDTH),
    "logit_scale_init_value": lambda c, n, v: check_number(n, v, -100.0, 100.0),
    "decoder_hidden_size": lambda c, n, v: check_int(n, v, 1, MAX_WIDTH),
    "decoder_num_layers": lambda c, n, v: check_int(n, v, 0, MAX_LAYERS),
    "decoder_num_heads": lambda c, n, v: check_int(n, v, 1, MAX_WIDTH),
    "decoder_mlp_ratio": lambda c, n, v: check_int(n, v, 1, 64),
    "decoder_dropout": lambda c, n, v: check_number(n, v, 0.0, 1.0, high_open=True),
    "cam_bg_exponent": lambda c, n, v: check_number(n, v, 0.0, 100.0, low_open=True),
    "par_num_iter": lambda c, n, v: check_int(n, v, 0, MAX_PAR_ITERATIONS),
    "par_dilations": lambda c, n, v: check_dilations(n, v),
    "par_temperature": lambda c, n, v: check_number(n, v, 0.0, 1e6, low_open=True),
    "par_pos_weight": lambda c, n, v: check_number(n, v, 0.0, 1e6),
    "affinity_radius": lambda c, n, v: check_int(n, v, 1, 1024),
    "affinity_loss_weight": lambda c, n, v: check_number(n, v, 0.0, 1e6),
    "rfm_start_step": lambda c, n, v: check_int(n, v, 0, 10**12),
    "training_preset": lambda c, n, v: check_optional_name(n, v),
    "semantic_loss_ignore_index": lambda c, n, v: check_ignore_index(v, len(c.class_names)),
    "initializer_range": lambda c, n, v: v is None or check_number(n, v, 0.0, 10.0),
    "prompt_template": lambda c, n, v: check_prompt_template(v),
    "cam_box_threshold": lambda c, n, v: check_number(n, v, 0.0, 1.0, low_open=True, high_open=True),
    "num_feature_layers": lambda c, n, v: check_layer_count(c, n, v, spare=1),
    "attention_num_maps": lambda c, n, v: check_layer_count(c, n, v),
    "rfm_num_maps": lambda c, n, v: check_layer_count(c, n, v),
    "background_names": lambda c, n, v: name_list(n, v, "background word"),
}


# the fields of a tower's config (CLIP's, DINOv2's) its modules are built from: its weights' shapes and the layers'
# settings (None where a tower has no such field)
TOWER_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "mlp_ratio", "patch_size",
    "image_size", "num_channels", "vocab_size", "max_position_embeddings", "num_register_tokens", "qkv_bias",
    "use_swiglu_ffn", "use_mask_token", "hidden_act", "layer_norm_eps",
)  # fmt: skip


class WeCLIPConfig(PreTrainedConfig):
    r"""Configuration of [`WeCLIPForSemanticSegmentation`].

    Args:
        vision_config (`CLIPVisionConfig` or `dict`, *optional*): the frozen CLIP image tower. Default:
            ViT-B/16 (width 768, 12 layers, 12 heads, patch 16, 224 px).
        text_config (`CLIPTextConfig` or `dict`, *optional*): the frozen CLIP text tower (CLIP defaults).
        projection_dim (`int`): dimension of the joint image-text embedding space (512 for ViT-B/16).
        logit_scale_init_value (`float`): initial log of the CLIP logit scale (loaded from the checkpoint).
        class_names (`list[str]`): foreground class names as written in the text prompts, in label-id order
            (id 1 = first name). Default: the 20 VOC prompt names of the official code. The number of labels
            (`num_labels`, `num_foreground_classes`) follows them: names assigned to a built config
            (``config.class_names = [...]``) also replace `id2label`, `label2id` and `label_names` as given
            here without `label_names` (set `label_names` or `id2label` after them for other display names). A
            built model needs `WeCLIPForSemanticSegmentation.update_class_embeddings` instead, which also encodes
            the new prompts and resizes the classifier.
        label_names (`list[str]`, *optional*): display names for `id2label` (default: `class_names`).
        background_names (`list[str]`): background words, each encoded as its own prompt (VOC: 25 words).
        prompt_template (`str`): the single prompt template, `"a clean origami {}."`.
        decoder_hidden_size (`int`): width of the decoder (256).
        decoder_num_layers (`int`): transformer layers of the decoder (3).
        decoder_num_heads (`int`): attention heads of the decoder (8).
        decoder_mlp_ratio (`int`): MLP expansion of the decoder transformer (4).
        decoder_dropout (`float`): Dropout2d after the feature fusion (0.1).
        num_feature_layers (`int`, *optional*): how many of the last CLIP blocks before the final one feed the
            decoder; default all of them (11 for ViT-B/16). The final block is run separately for GradCAM.
        attention_num_maps (`int`, *optional*): how many of the last attention maps are averaged for the CAM
            affinity without RFM; default 8 (ViT-B/16), or the CLIP depth when it is smaller.
        rfm_num_maps (`int`, *optional*): how many of the last attention maps the RFM chooses from; default 6
            (VOC; COCO: 10), or the CLIP depth when it is smaller.
        cam_box_threshold (`float`): box threshold on the uint8 GradCAM (0.4 VOC, 0.7 COCO).
        cam_bg_exponent (`float`): background score = (1 - max CAM) ** exponent (1).
        par_num_iter (`int`): PAR iterations (20).
        par_dilations (`list[int]`): PAR neighbour dilations ([1, 2, 4, 8, 12, 24]).
        par_temperature (`float`): PAR affinity temperature w1 (0.3), colour and position terms.
        par_pos_weight (`float`): weight w2 of the positional PAR affinity (0.01).
        affinity_radius (`int`): Chebyshev radius of the pairs used by the affinity loss (8).
        affinity_loss_weight (`float`): weight of the affinity loss in the total loss (0.1).
        rfm_start_step (`int`): training step (0-based count of training forwards: train mode, gradients on,
            labels given) from which the RFM is used (paper: 15,000; the official VOC run effectively used 9,144,
            see the `voc` preset).
        semantic_loss_ignore_index (`int`): ignored label value (255).
        initializer_range (`float`, *optional*): how the trained modules (the decoder; WeCLIP+'s DINO head) start.
            None (default): as the official code's, PyTorch's module defaults (Kaiming-uniform weights and uniform
            biases in +-1/sqrt(fan_in); the decoder attention's packed q/k/v projection Xavier-uniform, its biases
            zero: `weclip_hf.decoder.init_trained_layer`). A float: normal(std=initializer_range) weights and zero
            biases, transformers' usual rule.
        training_preset (`str`, *optional*): the `weclip_hf.presets` preset whose recipe trained the model
            (examples/train.py records it), or that it was built from (`from_preset`): its evaluation settings are
            the model's (`evaluation_of_config`: evaluate.py, segment.py) and a run continuing it follows its recipe.
            None: not recorded (the preset is then found by the class names, else the model type's VOC preset).
        encoded_prompts (`dict`, *optional*): the prompts the model's stored text embeddings encode (``{"class":
            [...], "background": [...]}``), written by the model when it encodes them
            (`WeCLIPForSemanticSegmentation.update_class_embeddings`) or loads them. A saved model whose
            `class_names`, `background_names` or `prompt_template` no longer give these prompts (config.json edited
            by hand) is refused at loading. ``{}``: placeholders, never computed; None: not recorded (a config of
            before, or not encoded yet).
    """

    model_type = "weclip"
    sub_configs = {"vision_config": CLIPVisionConfig, "text_config": CLIPTextConfig}
    # the output fields Trainer's evaluation and predict leave out (it gathers the rest): the logits are the
    # predictions; the losses' terms, the pseudo labels and CAMs, the [B, N, N] affinity and the Python bool
    # `used_rfm` (which Trainer cannot gather) are training's
    keys_to_ignore_at_inference = [
        "seg_loss", "affinity_loss", "pseudo_labels", "cams", "decoder_affinity", "used_rfm", "cam_details",
    ]  # fmt: skip
    field_checks = WECLIP_FIELD_CHECKS  # the fields checked alone (`__setattr__`), with their checks
    # the fields the model's modules are built from (besides the towers' `TOWER_FIELDS`: `architecture`)
    architecture_fields = (
        "projection_dim", "decoder_hidden_size", "decoder_num_layers", "decoder_num_heads", "decoder_mlp_ratio",
        "decoder_dropout", "num_feature_layers",
    )  # fmt: skip

    def __init__(
        self,
        vision_config: dict | CLIPVisionConfig | None = None,
        text_config: dict | CLIPTextConfig | None = None,
        projection_dim: int = 512,
        logit_scale_init_value: float = 4.605170185988092,
        class_names: list[str] | None = None,
        label_names: list[str] | None = None,
        background_names: list[str] | None = None,
        prompt_template: str = "a clean origami {}.",
        decoder_hidden_size: int = 256,
        decoder_num_layers: int = 3,
        decoder_num_heads: int = 8,
        decoder_mlp_ratio: int = 4,
        decoder_dropout: float = 0.1,
        num_feature_layers: int | None = None,
        attention_num_maps: int | None = None,
        rfm_num_maps: int | None = None,
        cam_box_threshold: float = 0.4,
        cam_bg_exponent: float = 1.0,
        par_num_iter: int = 20,
        par_dilations: list[int] | tuple[int, ...] = (1, 2, 4, 8, 12, 24),
        par_temperature: float = 0.3,
        par_pos_weight: float = 0.01,
        affinity_radius: int = 8,
        affinity_loss_weight: float = 0.1,
        rfm_start_step: int = 15000,
        semantic_loss_ignore_index: int = 255,
        initializer_range: float | None = None,
        encoded_prompts: dict[str, list[str]] | None = None,
        training_preset: str | None = None,
        **kwargs,
    ):
        if "num_labels" in kwargs and kwargs["num_labels"] != len(class_names or VOC_PROMPT_NAMES) + 1:
            raise ValueError(
                f"num_labels ({kwargs['num_labels']!r}) must equal the number of class_names + 1 (background) = "
                f"{len(class_names or VOC_PROMPT_NAMES) + 1}; it is derived from class_names, leave it out."
                + RELABEL_HINT
            )
        kwargs.pop("num_labels", None)
        kwargs.pop("label2id", None)  # derived from id2label
        self.vision_config, self.text_config = _clip_towers(vision_config, text_config, projection_dim)
        class_names, background_names, labels = class_name_lists(
            class_names, label_names, background_names, kwargs.pop("id2label", None)
        )
        num_layers = self.vision_config.num_hidden_layers
        attention_num_maps = _renamed(
            kwargs, "cam_attention_layers", "attention_num_maps", attention_num_maps, num_layers
        )
        rfm_num_maps = _renamed(kwargs, "rfm_num_layers", "rfm_num_maps", rfm_num_maps, num_layers)

        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.class_names = class_names
        self.background_names = background_names
        self.prompt_template = prompt_template
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_layers = decoder_num_layers
        self.decoder_num_heads = decoder_num_heads
        self.decoder_mlp_ratio = decoder_mlp_ratio
        self.decoder_dropout = decoder_dropout
        self.num_feature_layers = num_layers - 1 if num_feature_layers is None else num_feature_layers
        self.attention_num_maps = min(8, num_layers) if attention_num_maps is None else attention_num_maps
        self.rfm_num_maps = min(6, num_layers) if rfm_num_maps is None else rfm_num_maps
        self.cam_box_threshold = cam_box_threshold
        self.cam_bg_exponent = cam_bg_exponent
        self.par_num_iter = par_num_iter
        self.par_dilations = list(par_dilations) if isinstance(par_dilations, tuple) else par_dilations
        self.par_temperature = par_temperature
        self.par_pos_weight = par_pos_weight
        self.affinity_radius = affinity_radius
        self.affinity_loss_weight = affinity_loss_weight
        self.rfm_start_step = rfm_start_step
        self.semantic_loss_ignore_index = semantic_loss_ignore_index
        self.initializer_range = initializer_range
        self.encoded_prompts = encoded_prompts
        self.training_preset = training_preset
        self._check_fields()

        kwargs["id2label"] = dict(enumerate(labels))
        super().__init__(**kwargs)

    def _check_fields(self) -> None:
        """Refuse a field outside its range or fields that do not fit each other, naming them: the CLIP towers,
        each field alone (`field_checks`) and the decoder's width against its heads (the class and background
        names are checked as the constructor reads them)."""
        check_clip_towers(self.vision_config, self.text_config)
        for name, check in self.field_checks.items():
            check(self, name, getattr(self, name))
        if self.decoder_hidden_size % self.decoder_num_heads:
            raise ValueError(
                f"decoder_hidden_size ({self.decoder_hidden_size}) must be divisible by decoder_num_heads "
                f"({self.decoder_num_heads})."
            )

    def validate(self) -> None:
        """transformers' save-time check, extended: refuse to write a config.json that would not load again, i.e.
        one holding a value set out of range after the config was built (``config.rfm_start_step = -5``),
        naming the field."""
        super().validate()
        try:
            type(self).from_dict(self.to_dict())
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{type(self).__name__} not saved: {err} A value set on the built config is out of range; "
                "its config.json would not load."
            ) from err

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """`PreTrainedConfig.save_pretrained`, validated before anything is written (transformers validates after
        copying the remote-code files into the folder)."""
        self.validate()
        super().save_pretrained(save_directory, *args, **kwargs)

    def __setattr__(self, key, value):
        """Checks a field set on a built config as the constructor checks it (`field_checks`: fields checked
        alone; see `validate` for those checked together), and keeps the label fields in step, as transformers'
        ``num_labels`` follows ``id2label``: an ``id2label`` is checked against ``class_names`` and sets
        ``label2id`` (and `label_names`); new ``class_names`` give ``id2label``, ``label2id`` and `label_names` as
        the constructor would (the background's display name kept)."""
        built = "id2label" in self.__dict__
        if built and key in self.field_checks:
            self.field_checks[key](self, key, value)
        if key == "class_names" and built and value != self.class_names:
            value = name_list(key, value, "class")
            check_ignore_index(self.semantic_loss_ignore_index, len(value))
            labels = dict(enumerate([self.id2label[0], *_default_label_names(value)]))
            check_label_names("id2label (the new class_names)", list(labels.values()))
            super().__setattr__(key, value)
            self.id2label = labels
            return
        if key == "id2label" and value is not None and "class_names" in self.__dict__:
            value = dict(enumerate(_label_list(value, len(self.class_names))))
            check_label_names(key, list(value.values()))
            super().__setattr__("label2id", {name: i for i, name in value.items()})
        super().__setattr__(key, value)

    def architecture(self) -> dict[str, object]:
        """What the model's modules are built from: the `architecture_fields` and the `TOWER_FIELDS` of the
        sub-configs' towers (``"vision_config.hidden_size"``, ...). A built model refuses to run or save once its
        config's differ from those it was built with (`WeCLIPForSemanticSegmentation._check_architecture`)."""
        values = {name: getattr(self, name) for name in self.architecture_fields}
        for tower in self.sub_configs:
            sub = getattr(self, tower)
            values.update({f"{tower}.{field}": getattr(sub, field, None) for field in TOWER_FIELDS})
        return values

    @property
    def label_names(self) -> list[str]:
        """Display names of the foreground classes: ``id2label``'s names of ids 1..C (one per ``class_names``)."""
        return [self.id2label[i] for i in range(1, len(self.id2label))]

    @label_names.setter
    def label_names(self, names: list[str]) -> None:
        background = self.id2label[0] if self.id2label else "background"
        self.id2label = dict(enumerate([background, *names]))

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """`PreTrainedConfig.from_dict` with this config's own keyword arguments (e.g. ``from_pretrained(folder,
        rfm_start_step=0)``) given to the constructor, so that they are validated and the labels follow them.

        The label names come from ``id2label`` (the field transformers users edit), or from ``label_names`` in a
        config.json written before, where that field named the labels and ``id2label`` followed it; names passed
        here (``class_names``, ``label_names`` or ``id2label``) replace the file's. transformers merges a partial
        sub-config (``vision_config={"num_hidden_layers": 2}``) into the built config afterwards, so the result
        is checked again as a whole (`_check_fields`)."""
        config_dict = dict(config_dict)
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in cls._constructor_arguments()}
        if not isinstance(config_dict.get("id2label") or {}, dict):  # a config.json's list, say
            raise ValueError(f"id2label must map label ids to names, got {config_dict['id2label']!r}.")
        stored = {str(k): v for k, v in (config_dict.get("id2label") or {}).items()}
        renamed_only = set(own) & {"label_names", "class_names", "id2label"} == {"label_names"}
        if renamed_only and len(stored) == 1 + len(own["label_names"]):  # keep the file's background name
            own["id2label"] = dict(enumerate([stored.get("0", "background"), *own["label_names"]]))
        if own.keys() & {"class_names", "label_names", "id2label"}:
            stale = ("id2label", "label2id", "label_names")
        else:
            stale = ("id2label", "label2id") if "label_names" in config_dict else ("label2id",)
        config_dict = {k: v for k, v in config_dict.items() if k not in stale}
        overrides = sorted(own.keys() | (kwargs.keys() & (cls.field_names() | set(cls.sub_configs))))
        try:
            loaded = super().from_dict({**config_dict, **own}, **kwargs)
            # (config, unused kwargs) when asked for
            config = loaded[0] if isinstance(loaded, tuple) else loaded
            config._check_fields()
        except (ValueError, TypeError) as err:
            if not overrides:
                raise
            # AutoConfig and the Auto model classes call from_dict directly: the refusal names the keywords too
            raise RefusedOverrides(
                f"The keyword arguments ({', '.join(overrides)}) do not fit the saved config: {err}"
            ) from err
        return loaded

    @classmethod
    def field_names(cls) -> set[str]:
        """Every name the config takes as a keyword: its constructors' arguments and transformers' common fields
        (``output_hidden_states``, ``id2label``, ``num_labels``, ...)."""
        return cls._constructor_arguments() | set(cls().to_dict()) | {"num_labels"}

    @classmethod
    def constructor_defaults(cls) -> dict:
        """The keyword arguments of this config's constructors (its own and its WeCLIP bases') with their defaults,
        its own over its bases' (WeCLIP+'s ``rfm_start_step`` 0 over WeCLIP's 15000). A default None stands for a
        value the constructor derives (from the CLIP's depth, VOC's names)."""
        defaults = {}
        # the bases first, so that a subclass's default replaces its base's
        for klass in reversed(cls.__mro__[: cls.__mro__.index(WeCLIPConfig) + 1]):
            parameters = inspect.signature(klass.__init__).parameters.values()
            defaults.update(
                {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
            )
        return defaults

    @classmethod
    def _constructor_arguments(cls) -> set[str]:
        """The keyword arguments of this config's constructors (its own and its WeCLIP bases'), without the
        sub-configs (transformers merges a partial sub-config dict into the loaded one); ``self`` and ``kwargs``
        have no default."""
        return {"id2label", "label2id", *cls.constructor_defaults()} - set(cls.sub_configs)

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict:
        """transformers' reading of a config.json (local or downloaded), by `read_json`: a file nesting past
        Python's parser, holding a key twice, NaN, an over-long integer or no JSON object is refused naming it
        (transformers' ``json.loads`` raised a RecursionError or took the last of two values)."""
        return cls._decode_special_floats(read_json(json_file, expect=dict))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`PreTrainedConfig.from_pretrained`; a value refused by validation names its source: the keyword
        arguments given (when the saved config alone loads) or the folder's config.json. A local folder without a
        config.json is refused (transformers returned the default config, VOC's classes, without a word)."""
        folder = os.path.join(
            os.path.expanduser(str(pretrained_model_name_or_path)), kwargs.get("subfolder") or ""
        )
        config_file = os.path.join(folder, "config.json")
        if os.path.isdir(folder) and not os.path.isfile(config_file):
            if os.path.lexists(config_file):  # a folder, FIFO or link loop, which transformers took for none
                read_json(config_file)
            raise FileNotFoundError(f"{folder!r} has no config.json: not a saved model folder.")
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (ValueError, TypeError) as err:
            # from_dict's refusal, told again here with the folder
            cause = err.__cause__ if isinstance(err, RefusedOverrides) else err
            raise cls._loading_error(str(pretrained_model_name_or_path), kwargs, cause) from err

    @classmethod
    def _loading_error(cls, path: str, kwargs: dict, err: Exception) -> ValueError:
        """The error of a refused config, blaming the keyword arguments when the saved config alone loads, else
        the folder's config.json (with its own error)."""
        fields = cls.field_names()
        overrides = sorted(k for k in kwargs if k in fields)
        if overrides:
            try:
                super().from_pretrained(path, **{k: v for k, v in kwargs.items() if k not in overrides})
            except (ValueError, TypeError) as saved_err:
                return ValueError(f"Invalid config.json in {path!r}: {saved_err}")
            return ValueError(
                f"The keyword arguments ({', '.join(overrides)}) do not fit the config of {path!r}: {err}"
            )
        return ValueError(f"Invalid config.json in {path!r}: {err}")

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> WeCLIPConfig:
        """The config of a preset of `weclip_hf.presets` (e.g. ``"voc"``, ``"toy"``), ``kwargs`` applied. It records
        the preset as its ``training_preset`` (unless ``kwargs`` give one), so that the model is evaluated with the
        preset's settings (`evaluation_of_config`) whatever its classes."""
        preset = get_preset(name)
        if preset.model_type != cls.model_type:
            raise ValueError(
                f"Preset {name!r} configures a {preset.model_type!r} model, not a {cls.model_type!r} one: use the "
                f"config class of {preset.model_type!r}."
            )
        config_kwargs = with_class_names(preset.config_kwargs(), kwargs.get("class_names"))
        return cls(**{**config_kwargs, "training_preset": name, **kwargs})

    @property
    def num_foreground_classes(self) -> int:
        """Number of foreground classes (``num_labels - 1``)."""
        return len(self.class_names)


__all__ = ["WeCLIPConfig"]

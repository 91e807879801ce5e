"""WeCLIP configuration: the frozen CLIP towers plus every constant of the method (DESIGN Part 1)."""

from __future__ import annotations

from transformers import CLIPTextConfig, CLIPVisionConfig, PreTrainedConfig

from .presets import VOC_BACKGROUND_NAMES, VOC_LABELS, VOC_PROMPT_NAMES


class WeCLIPConfig(PreTrainedConfig):
    r"""Configuration of [`WeCLIPForSemanticSegmentation`].

    Args:
        vision_config (`CLIPVisionConfig` or `dict`, *optional*): the frozen CLIP image tower. Default:
            ViT-B/16 (width 768, 12 layers, 12 heads, patch 16, 224 px).
        text_config (`CLIPTextConfig` or `dict`, *optional*): the frozen CLIP text tower (CLIP defaults).
        projection_dim (`int`): dimension of the joint image-text embedding space (512 for ViT-B/16).
        logit_scale_init_value (`float`): initial log of the CLIP logit scale (loaded from the checkpoint).
        class_names (`list[str]`): foreground class names as written in the text prompts, in label-id order
            (id 1 = first name). Default: the 20 VOC prompt names of the official code.
        label_names (`list[str]`, *optional*): display names for `id2label` (default: `class_names`).
        background_names (`list[str]`): background words, each encoded as its own prompt (VOC: 25 words).
        prompt_template (`str`): the single prompt template, `"a clean origami {}."`.
        decoder_hidden_size (`int`): width of the decoder (256).
        decoder_num_layers (`int`): transformer layers of the decoder (3).
        decoder_num_heads (`int`): attention heads of the decoder (8).
        decoder_mlp_ratio (`int`): MLP expansion of the decoder transformer (4).
        decoder_dropout (`float`): Dropout2d after the feature fusion (0.1).
        num_feature_layers (`int`, *optional*): how many CLIP blocks feed the decoder; default all but the
            last (11 for ViT-B/16). The last block is run separately for GradCAM.
        cam_attention_layers (`int`): how many of the last attention maps are averaged for the CAM
            affinity (8; clipped to the number of CLIP layers).
        rfm_num_layers (`int`): how many of the last attention maps the RFM chooses from (6 for VOC,
            10 for COCO; clipped to the number of CLIP layers).
        cam_box_threshold (`float`): box threshold on the uint8 GradCAM (0.4 VOC, 0.7 COCO).
        cam_bg_exponent (`float`): background score = (1 - max CAM) ** exponent (1).
        par_num_iter (`int`): PAR iterations (20).
        par_dilations (`list[int]`): PAR neighbour dilations ([1, 2, 4, 8, 12, 24]).
        par_temperature (`float`): PAR affinity temperature w1 (0.3), colour and position terms.
        par_pos_weight (`float`): weight w2 of the positional PAR affinity (0.01).
        affinity_radius (`int`): Chebyshev radius of the pairs used by the affinity loss (8).
        affinity_loss_weight (`float`): weight of the affinity loss in the total loss (0.1).
        rfm_start_step (`int`): training step (0-based count of training forwards) from which the RFM
            is used (paper: 15,000; the official VOC run effectively used 9,145, see the `voc` preset).
        semantic_loss_ignore_index (`int`): ignored label value (255).
        initializer_range (`float`): std of the decoder's normal initialisation.
    """

    model_type = "weclip"
    sub_configs = {"vision_config": CLIPVisionConfig, "text_config": CLIPTextConfig}

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
        cam_attention_layers: int = 8,
        rfm_num_layers: int = 6,
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
        initializer_range: float = 0.02,
        **kwargs,
    ):
        if vision_config is None:
            vision_config = CLIPVisionConfig(
                hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                image_size=224, patch_size=16, projection_dim=projection_dim,
            )  # fmt: skip
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
        self.vision_config = vision_config
        self.text_config = text_config

        class_names = list(VOC_PROMPT_NAMES if class_names is None else class_names)
        if label_names is None:
            label_names = list(VOC_LABELS) if class_names == VOC_PROMPT_NAMES else list(class_names)
        background_names = list(VOC_BACKGROUND_NAMES if background_names is None else background_names)
        if not class_names:
            raise ValueError("class_names must hold at least one foreground class name.")
        if len(label_names) != len(class_names):
            raise ValueError(
                f"label_names has {len(label_names)} entries but class_names has {len(class_names)}."
            )
        if "{}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{}}', got {prompt_template!r}.")
        if not 0.0 < cam_box_threshold < 1.0:
            raise ValueError(f"cam_box_threshold must be in (0, 1), got {cam_box_threshold}.")
        if decoder_hidden_size % decoder_num_heads:
            raise ValueError(
                f"decoder_hidden_size ({decoder_hidden_size}) must be divisible by decoder_num_heads "
                f"({decoder_num_heads})."
            )
        num_layers = vision_config.num_hidden_layers
        if num_feature_layers is not None and not 1 <= num_feature_layers <= num_layers - 1:
            raise ValueError(
                f"num_feature_layers must be in [1, {num_layers - 1}] for a {num_layers}-layer CLIP, "
                f"got {num_feature_layers}."
            )
        if num_layers < 2:
            raise ValueError("WeCLIP needs a CLIP vision tower with at least 2 layers.")

        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.class_names = class_names
        self.label_names = list(label_names)
        self.background_names = background_names
        self.prompt_template = prompt_template
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_layers = decoder_num_layers
        self.decoder_num_heads = decoder_num_heads
        self.decoder_mlp_ratio = decoder_mlp_ratio
        self.decoder_dropout = decoder_dropout
        self.num_feature_layers = num_feature_layers
        self.cam_attention_layers = cam_attention_layers
        self.rfm_num_layers = rfm_num_layers
        self.cam_box_threshold = cam_box_threshold
        self.cam_bg_exponent = cam_bg_exponent
        self.par_num_iter = par_num_iter
        self.par_dilations = list(par_dilations)
        self.par_temperature = par_temperature
        self.par_pos_weight = par_pos_weight
        self.affinity_radius = affinity_radius
        self.affinity_loss_weight = affinity_loss_weight
        self.rfm_start_step = rfm_start_step
        self.semantic_loss_ignore_index = semantic_loss_ignore_index
        self.initializer_range = initializer_range

        names = ["background", *self.label_names]
        kwargs["id2label"] = dict(enumerate(names))
        kwargs["label2id"] = {n: i for i, n in enumerate(names)}
        super().__init__(**kwargs)

    @property
    def num_foreground_classes(self) -> int:
        """Number of foreground classes (``num_labels - 1``)."""
        return len(self.class_names)

    @property
    def feature_layers(self) -> int:
        """Number of CLIP blocks whose outputs feed the decoder (all but the last by default)."""
        n = self.vision_config.num_hidden_layers
        return n - 1 if self.num_feature_layers is None else self.num_feature_layers

    @property
    def cam_layers(self) -> int:
        """Attention maps averaged for the CAM affinity, adapted to the CLIP depth."""
        return min(self.cam_attention_layers, self.vision_config.num_hidden_layers)

    @property
    def rfm_layers(self) -> int:
        """Attention maps the RFM chooses from, adapted to the CLIP depth."""
        return min(self.rfm_num_layers, self.vision_config.num_hidden_layers)


__all__ = ["WeCLIPConfig"]

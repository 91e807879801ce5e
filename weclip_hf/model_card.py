"""The model card: the one builder (`make_model_card`) that the model's ``push_to_hub``, the training scripts and the
converter share. What a card says about the method (paper, official code, citation) comes from `METHODS`, keyed by
the config's ``model_type``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import PreTrainedConfig

from .model_loading import hub_id_or_none


@dataclass(frozen=True)
class Method:
    """What a model card says about the method a model type implements.

    Attributes:
        name: the method's name (``"WeCLIP"``).
        paper: the paper's title and venue, as the card quotes them.
        code: the URL of the official code (where official checkpoints come from).
        citation: the BibTeX entry to cite.
        backbones: what provides the features, as the card's sentence names it.
        tags: the Hub tags of its backbones.
    """

    name: str
    paper: str
    code: str
    citation: str
    backbones: str = "A frozen CLIP ({base_model}) provides features"
    tags: tuple[str, ...] = ("clip",)


# One entry per model type (``config.model_type``).
METHODS = {
    "weclip": Method(
        name="WeCLIP",
        paper='"Frozen CLIP: A Strong Backbone for Weakly Supervised Semantic Segmentation", CVPR 2024',
        code="https://github.com/zbf1991/WeCLIP",
        citation="""@inproceedings{zhang2024frozen,
  title     = {Frozen CLIP: A Strong Backbone for Weakly Supervised Semantic Segmentation},
  author    = {Zhang, Bingfeng and Yu, Siyue and Wei, Yunchao and Zhao, Yao and Xiao, Jimin},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}""",
    ),
    "weclip_plus": Method(
        name="WeCLIP+",
        paper='"Frozen CLIP-DINO: A Strong Backbone for Weakly Supervised Semantic Segmentation", TPAMI 2025',
        code="https://github.com/zbf1991/WeCLIP",
        citation="""@article{zhang2025frozen,
  title   = {Frozen CLIP-DINO: A Strong Backbone for Weakly Supervised Semantic Segmentation},
  author  = {Zhang, Bingfeng and Yu, Siyue and Xiao, Jimin and Wei, Yunchao and Zhao, Yao},
  journal = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
  volume  = {47},
  number  = {5},
  pages   = {4198--4214},
  year    = {2025},
  doi     = {10.1109/TPAMI.2025.3543191}
}""",
        backbones="A frozen CLIP ({base_model}) and a frozen DINOv2 provide features",
        tags=("clip", "dinov2"),
    ),
}

DATASET_MASKS = "the dataset's pixel masks"  # what a fully supervised run trains on, unless told otherwise
CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ method }} semantic segmentation model ({{ paper }}; official code: {{ code }}), packaged with the
`weclip-hf` library.
{{ backbones }}; a small decoder trained {{ supervision }} predicts
{{ num_labels }} classes (background + {{ num_foreground }} object classes).

## Source
{{ source }}

## Results
{{ results_table }}

## Usage
With the weclip-hf package installed (from its source), importing it registers the "{{ model_type }}" model type:
```python
import weclip_hf
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{{ repo_id }}")
masks = segmenter("image.jpg")  # [{"label": ..., "mask": PIL.Image, "score": None}, ...]
```

Without it, transformers runs the model code shipped in this repository (`{{ model_file }}` and the files it
imports; read them first):
```python
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

segmenter = pipeline("image-segmentation", model="{{ repo_id }}", trust_remote_code=True)
model = AutoModelForSemanticSegmentation.from_pretrained("{{ repo_id }}", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("{{ repo_id }}", trust_remote_code=True)
```

{% if training_args %}## Training arguments
{{ training_args }}

{% endif %}## Intended use and limitations
Research on weakly supervised semantic segmentation: the classes are fixed to the label set below and
the model was trained from image-level labels{{ weak_note }}. Predictions follow object extents coarsely
(the patch grid, {{ patch_size }} x {{ patch_size }} pixels a cell, upsampled); expect errors on thin structures,
small objects and classes that co-occur with their context (e.g. boats and water). Not for safety-critical use.

Labels: {{ labels }}

## Citation
```bibtex
{{ citation }}
```
"""


# the figures that are a model's own segmentation results (the decoder: single scale, multi-scale + flip, with the
# CRF; trained on pseudo or pixel labels): the card's model-index; the others (CAM and pseudo-label mIoU, the toy
# world's baselines) are only listed
MODEL_METRICS = (
    "miou",
    "miou_msf",
    "miou_crf",
    "miou_msf_crf",
    "fully_supervised_miou",
    "fully_supervised_miou_msf",
)


def split_model_metrics(figures: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """``figures`` as `make_model_card` takes them: (the model's own results, `MODEL_METRICS`; the others)."""
    own = {k: v for k, v in figures.items() if k in MODEL_METRICS}
    return own, {k: v for k, v in figures.items() if k not in MODEL_METRICS}


def backbone_hub_ids(config: PreTrainedConfig) -> list[str | None]:
    """The Hub ids of the backbones a model was built from, CLIP's first: `from_clip` and `from_clip_and_dino`
    record them in the sub-configs (``_name_or_path``; never a local folder); None where none is recorded."""
    dino = getattr(config, "dino_config", None)
    return [config.vision_config._name_or_path or None, getattr(dino, "_name_or_path", None) or None]


def card_repo_id(hub_model_id: str | None, output_dir: str | Path) -> str:
    """What a script's model card calls the model and its usage snippets load: the Hub repository id, else the
    output folder's name (never its path, which tells the machine's layout and the user's name)."""
    return hub_model_id or Path(output_dir).resolve().name


def describe_dataset(dataset_name: str | None, local: str | Path | None) -> str:
    """What a run trained on, as its model card names it: the Hub id ``dataset_name``, the name of the ``local``
    folder (--data_dir, --dataset_path), else the toy world."""
    if dataset_name:
        return dataset_name
    if local:
        return f"{Path(local).resolve().name} (a local dataset)"
    return "the toy world of weclip-hf (generated offline)"


def make_model_card(
    config,
    model_name: str,
    source: str,
    metrics: dict[str, float] | None = None,
    dataset_name: str | None = None,
    base_model: str | Sequence[str | None] | None = None,
    training_args: dict | None = None,
    weakly_supervised: bool = True,
    mask_source: str | None = None,
    repo_id: str | None = None,
    tags: Sequence[str] = (),
    license: str | None = "mit",
    other_metrics: dict[str, float] | None = None,
    dataset_description: str | None = None,
    dataset_split: str | None = None,
) -> ModelCard:
    """The model card of a weclip-hf model: metadata (model-index when metrics are given), the method (from
    `METHODS`, by ``config.model_type``), source, results, usage, limitations, labels and citation.

    Args:
        config: the model's config (``model_type``, ``num_labels``, ``id2label``).
        model_name: the card's title and model-index name.
        source: Markdown saying where the weights come from (training run, converted checkpoint, upload).
        metrics: the model's own segmentation results (metric name -> mean IoU), shown as a table and in the
            model-index.
        dataset_name: the Hub dataset the model was trained on, if any (the card's ``datasets``).
        base_model: the backbones' Hub ids, CLIP's first (WeCLIP+: then DINOv2's); local folders and None are left
            out (the metadata names Hub models only); default: those ``config`` records (`backbone_hub_ids`).
        training_args: run arguments to list (the section is left out without them).
        weakly_supervised: False for a fully supervised run (on the masks of its data).
        mask_source: what those masks are, for a fully supervised run (default: `DATASET_MASKS`, "the dataset's
            pixel masks"; a two-stage run: the pseudo masks of a first stage).
        repo_id: the repository id the usage snippets load (default ``model_name``).
        tags: extra Hub tags (e.g. the dataset preset).
        license: the card's license; None for weights whose license is not this package's.
        other_metrics: figures listed in the table only, not claimed as the model's results (pseudo-label and
            CAM mIoU, trivial baselines).
        dataset_description: how the results table names the data, for data that is not a Hub dataset (a local
            folder, the toy world); default ``dataset_name``.
        dataset_split: the split the ``metrics`` were measured on (the model-index's, and the table's title).
    Raises:
        ValueError: when ``config.model_type`` has no entry in `METHODS`.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in METHODS:
        raise ValueError(
            f"config.model_type must be one of {sorted(METHODS)} to write a model card, got {model_type!r}."
        )
    method = METHODS[model_type]
    metrics = metrics or {}
    if base_model is None:
        base_model = backbone_hub_ids(config)
    given = [base_model] if isinstance(base_model, str) else list(base_model)
    base_models = [name for name in map(hub_id_or_none, given) if name]
    clip = hub_id_or_none(given[0]) if given else None
    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            dataset_type=dataset_name or "custom",
            dataset_name=dataset_description or dataset_name or "custom",
            dataset_split=dataset_split,
            metric_type="mean_iou",
            metric_name=key,
            metric_value=float(value),
        )
        for key, value in metrics.items()
        if isinstance(value, (int, float))
    ] or None
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=license,
        tags=[
            model_type,
            "weakly-supervised-semantic-segmentation",
            *method.tags,
            "semantic-segmentation",
            *tags,
        ],
        base_model=base_models[0] if len(base_models) == 1 else base_models or None,
        datasets=[dataset_name] if dataset_name else None,
        metrics=["mean_iou"] if eval_results else None,
        model_name=model_name,
        eval_results=eval_results,
    )
    listed = {**metrics, **(other_metrics or {})}
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in listed.items() if isinstance(v, (int, float)))
    table = f"| metric | value |\n|---|---|\n{rows}" if rows else "No evaluation was run."
    if rows and dataset_description:
        split = f", split {dataset_split!r}" if dataset_split else ""
        table = f"On {dataset_description}{split}:\n\n{table}"
    args = "\n".join(f"- `{k}`: `{v}`" for k, v in (training_args or {}).items())
    return ModelCard.from_template(
        data,
        template_str=CARD_TEMPLATE,
        model_name=model_name,
        model_type=model_type,
        method=method.name,
        paper=method.paper,
        code=method.code,
        backbones=method.backbones.format(base_model=clip or "a CLIP ViT"),
        supervision=(
            "from image-level labels"
            if weakly_supervised
            else f"on {mask_source or DATASET_MASKS} (fully supervised)"
        ),
        num_labels=config.num_labels,
        num_foreground=config.num_labels - 1,
        source=source,
        results_table=table,
        repo_id=repo_id or model_name,
        training_args=args,
        weak_note="" if weakly_supervised else f" (here: {mask_source or DATASET_MASKS} instead)",
        patch_size=config.vision_config.patch_size,
        model_file=f"modeling_{config.model_type}.py",
        labels=", ".join(config.id2label[i] for i in range(config.num_labels)),
        citation=method.citation,
    )


def save_model_card(card: ModelCard, output_dir: str | Path) -> Path:
    """Write README.md into ``output_dir``."""
    path = Path(output_dir) / "README.md"
    card.save(path)
    return path

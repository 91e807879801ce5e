"""Publishing to the Hub: the one model card builder (`make_model_card`) and the one upload path (an explicit
allow-list of files, `publish_folder`) that the model's ``push_to_hub``, the training script and the converter
share. What a card says about the method (paper, official code, citation) comes from `METHODS`, keyed by
the config's ``model_type``."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import logging as hf_logging
from transformers.utils.hub import cached_files

from .image_processing_weclip import WeCLIPImageProcessor, processor_settings
from .model_loading import hub_id_or_none

logger = hf_logging.get_logger(__name__)

# What a model repository may hold (the figures: train.py's metrics.json, train_with_trainer.py's
# train_results.json, eval_results.json and all_results.json). Everything else in a folder (checkpoints, logs,
# tracker folders with the run's arguments, Trainer's training_args.bin, hidden temporary files of an interrupted
# save) is never uploaded by `publish_folder` (`Trainer`'s own step commits upload what it uploads).
# the CLIP tokenizer of a model's text embeddings, as transformers' tokenizers save themselves: the converter and the
# training scripts save it with the model (new class names, `update_class_embeddings`, need it)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
PUBLISHED_FILES = (
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "README.md",
    "metrics.json",
    # examples/train_with_trainer.py's, as transformers' example scripts write them (its log, trainer_state.json, stays)
    "train_results.json",
    "eval_results.json",
    "all_results.json",
    *TOKENIZER_FILES,
)
# the weight shards and train.py's overlays (`write_overlays`'s names); the code files are those the configs' auto_map
# needs (`shipped_code_files`), never any other .py of the folder
PUBLISHED_PATTERNS = ("model-*-of-*.safetensors", "overlays/val_*.png")


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


def publishable_files(folder: str | Path) -> list[str]:
    """The files of ``folder`` (paths relative to it) that `publish_folder` uploads: `PUBLISHED_FILES`,
    `PUBLISHED_PATTERNS` and `shipped_code_files`; never hidden files, nor links or files behind a linked folder
    (the upload would read what they point to, outside the folder)."""
    folder = Path(folder)
    found = {name for name in PUBLISHED_FILES if (folder / name).is_file()} | shipped_code_files(folder)
    for pattern in PUBLISHED_PATTERNS:
        found.update(str(p.relative_to(folder)) for p in folder.glob(pattern) if p.is_file())
    return sorted(f for f in found if not _hidden_or_linked(folder, f))


def shipped_code_files(folder: str | Path) -> set[str]:
    """The code files the model of ``folder`` loads with ``trust_remote_code``: the modules its configs'
    ``auto_map`` names and, transitively, what they import relatively (what `save_pretrained` copied)."""
    folder = Path(folder)
    modules = set()
    for name in ("config.json", "preprocessor_config.json"):
        path = folder / name
        if path.is_file() and not path.is_symlink():
            auto_map = json.loads(path.read_text(encoding="utf-8")).get("auto_map") or {}
            refs = [
                ref for value in auto_map.values() for ref in (value if isinstance(value, list) else [value])
            ]
            modules |= {ref.split("--")[-1].split(".")[0] for ref in refs if isinstance(ref, str)}
    files = set()
    for module in modules:
        path = folder / f"{module}.py"
        if path.is_file():
            files |= {path.name, *(Path(f).name for f in get_relative_import_files(path))}
    return files


def _hidden_or_linked(folder: Path, relative: str) -> bool:
    """Whether ``folder / relative`` is hidden (a dot in its path), a link, or under a linked folder."""
    parts = Path(relative).parts
    return any(
        part.startswith(".") or folder.joinpath(*parts[: i + 1]).is_symlink() for i, part in enumerate(parts)
    )


def create_hub_repo(
    repo_id: str, *, token: str | None = None, private: bool | None = None, repo_type: str | None = None
) -> str:
    """Create the repository ``repo_id`` (a model, or ``repo_type="dataset"``) if it does not exist, as
    transformers' Trainer does when a run that will push starts, and return its full id; a clear error when the
    Hub cannot be reached or the token may not create it, so that a run fails before its work rather than after."""
    api = HfApi(token=token)
    try:
        return api.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=True).repo_id
    # offline mode, no network, no or a read-only token: Hub, OSError and HTTP errors alike
    except Exception as err:
        quoted, cause = _without_token(err, token)
        raise RuntimeError(
            f"Cannot create or reach the Hub repository {repo_id!r} ({quoted}). "
            f"{_hub_remedy(err, token)}, or run without pushing and publish the saved folder later with "
            "weclip_hf.hub.publish_folder(folder, repo_id)."
        ) from cause


# what stands for a Hub token in the errors this module raises
REDACTED_TOKEN = "<hub token>"


def has_stray_characters(token: str | None) -> bool:
    """Whether a Hub token holds whitespace or control characters (a line end copied from a file, say): an HTTP
    library refuses it in a header, and its error quotes the header, token and all."""
    return token is not None and any(c.isspace() or not c.isprintable() for c in token)


def _without_token(err: Exception, token: str | None) -> tuple[str, Exception | None]:
    """``err`` as the errors of this module quote it ("Type: message"), with ``token`` replaced by `REDACTED_TOKEN`,
    and the cause to chain to them: ``err``, or None where its chain quotes the token (a traceback prints the cause's
    message too). The token is replaced as it is, as Python quotes it as text or as bytes (httpx refuses one with
    `has_stray_characters`: ``Illegal header value b'Bearer hf_...\\r'``), and then each run of 4 or more printable
    characters of it, whatever else quotes them."""
    quoted = f"{type(err).__name__}: {err}"
    # the characters of `has_stray_characters` cut the token into runs
    cut = "".join(c if c.isprintable() and not c.isspace() else " " for c in token or "")
    runs = [run for run in cut.split() if len(run) >= 4]
    if not runs:
        return quoted, err
    forms = [token, repr(token)[1:-1], repr(token.encode())[2:-1], *sorted(runs, key=len, reverse=True)]
    for form in forms:
        quoted = quoted.replace(form, REDACTED_TOKEN)
    chain, seen = err, set()
    while chain is not None and id(chain) not in seen:
        if any(run in str(chain) for run in runs):
            return quoted, None
        seen.add(id(chain))
        chain = chain.__cause__ or chain.__context__
    return quoted, err


def _hub_remedy(err: Exception, token: str | None = None) -> str:
    """What to do about ``err``, raised by a Hub call with ``token``: a token with stray characters, offline mode, a
    refused token, an error of the Hub, no connection."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if has_stray_characters(token):
        return (
            "The Hub token holds whitespace or control characters (a line end copied from a file?): strip it"
        )
    if isinstance(err, OfflineModeIsEnabled):
        return "Offline mode is on (HF_HUB_OFFLINE=1): unset it where the Hub can be reached"
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        return "Log in (`hf auth login`) or pass a token with write access"
    if isinstance(err, HfHubHTTPError):
        return "The Hub answered with an error: try again later"
    return "The Hub cannot be reached from here: check the network connection"


def publish_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload WeCLIP model",
    revision: str | None = None,
    create_pr: bool = False,
    commit_description: str | None = None,
):
    """Create ``repo_id`` if needed and upload `publishable_files` of ``folder`` in one commit."""
    files = publishable_files(folder)
    if "model.safetensors" not in files and "model.safetensors.index.json" not in files:
        raise FileNotFoundError(f"{folder} holds no model.safetensors: nothing to publish.")
    repo_id = create_hub_repo(repo_id, token=token, private=private)
    try:
        return HfApi(token=token).upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
            # exact paths: no wildcard reaches step_*/ or .tmp*
            allow_patterns=[glob.escape(f) for f in files],
        )
    except Exception as err:  # as in create_hub_repo: the network, the Hub or the token
        quoted, cause = _without_token(err, token)
        raise RuntimeError(
            f"Uploading {folder} to {repo_id!r} failed ({quoted}); the folder is intact: publish "
            f"it again with weclip_hf.hub.publish_folder({str(folder)!r}, {repo_id!r})."
        ) from cause


def loaded_from(model: PreTrainedModel) -> dict | None:
    """Where ``model`` was loaded from, as `from_pretrained`'s keywords (``model._loaded_from``: the folder or Hub
    id, its subfolder, revision and cache), else its config's ``_name_or_path``; None for a model built in memory."""
    source = getattr(model, "_loaded_from", None) or {
        "pretrained_model_name_or_path": model.config._name_or_path
    }
    return source if source["pretrained_model_name_or_path"] else None


def saved_tokenizer_files(model: PreTrainedModel, token: str | None = None) -> list[str]:
    """The local paths of the CLIP tokenizer files (`TOKENIZER_FILES`) saved where ``model`` was loaded from (a
    folder, its subfolder or a Hub repository through the cache), which computed its text embeddings; none where
    ``tokenizer.json`` is missing (``tokenizer_config.json`` alone holds no vocabulary) or cannot be fetched."""
    source = loaded_from(model)
    if source is None:
        return []
    try:
        where = dict(source)
        paths = cached_files(
            where.pop("pretrained_model_name_or_path"),
            list(TOKENIZER_FILES),
            token=token,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **where,
        )
    except OSError:  # the Hub cannot be reached, or no such repository
        return []
    # cached_files answers only the files it found (None: none of them)
    found = {Path(path).name: path for path in paths or []}
    return list(found.values()) if "tokenizer.json" in found else []


def save_embeddings_tokenizer(model: PreTrainedModel, folder: str, token: str | None = None) -> None:
    """Write into ``folder`` the CLIP tokenizer files (`TOKENIZER_FILES`) of ``model``'s text embeddings: those of
    the tokenizer that computed them in memory (``update_class_embeddings``, ``from_clip``), else those saved where
    the model was loaded from (`saved_tokenizer_files`), whose embeddings it holds. A tokenizer that computed them
    but saves no tokenizer.json (a callable without ``save_pretrained``, a Python-only tokenizer) is warned of and
    none written: the tokenizer of the folder it was loaded from would encode the prompts otherwise."""
    tokenizer = getattr(model, "_text_embeds_tokenizer", None)
    if tokenizer is None:
        for path in saved_tokenizer_files(model, token):
            shutil.copyfile(path, os.path.join(folder, Path(path).name))
        return
    with tempfile.TemporaryDirectory() as saved:
        if hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(saved)
        written = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(saved, name))]
        if "tokenizer.json" not in written:  # tokenizer_config.json alone holds no vocabulary
            logger.warning(
                f"push_to_hub: the tokenizer that computed the text embeddings ({type(tokenizer).__name__}) saves no "
                "tokenizer.json, so no tokenizer is uploaded (the one saved where the model was loaded from did not "
                "make its embeddings). Upload that tokenizer's files to the repository yourself, or compute the "
                "embeddings with a transformers tokenizer (AutoTokenizer) before pushing."
            )
            return
        for name in written:
            shutil.copyfile(os.path.join(saved, name), os.path.join(folder, name))


def saved_image_processor(model: PreTrainedModel, token: str | None = None) -> WeCLIPImageProcessor | None:
    """The image processor saved where ``model`` was loaded from (its training's normalization and sizes): its folder,
    or its Hub repository (through the cache, the load's subfolder and revision: `from_pretrained` records them in
    ``model._loaded_from``); None for a model built in memory, a source without a WeCLIP preprocessor_config.json
    (that of a CLIP checkpoint a model was built from with `from_clip` is CLIP's) or one that cannot be read."""
    source = loaded_from(model)
    if source is None:
        return None
    try:
        saved, _ = WeCLIPImageProcessor.get_image_processor_dict(**source, token=token)
    except OSError:  # none saved there, or the Hub cannot be reached
        return None
    if saved.get("image_processor_type") != WeCLIPImageProcessor.__name__:
        return None
    return WeCLIPImageProcessor.from_dict(saved)


def push_model_to_hub(
    model: PreTrainedModel,
    repo_id: str,
    *,
    image_processor: WeCLIPImageProcessor | None = None,
    model_card: ModelCard | None = None,
    metrics: dict[str, float] | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    tags: Sequence[str] = (),
    commit_description: str | None = None,
    **save_kwargs,
):
    """Upload ``model``'s safetensors weights and config, an image processor, the CLIP tokenizer of its text
    embeddings (`save_embeddings_tokenizer`) and a model card in one commit
    (`WeCLIPForSemanticSegmentation.push_to_hub`, whose docstring says what each argument defaults to). The folder
    is written before the repository is created: a model that cannot be saved leaves no empty repository."""
    if image_processor is None:
        image_processor = saved_image_processor(model, token)
    if image_processor is None:
        image_processor = WeCLIPImageProcessor(**processor_settings(model.config))
        logger.warning(
            "push_to_hub: no image_processor given and no WeCLIP image processor saved where the model was loaded "
            f"from: uploading the default one ({image_processor.size}, {image_processor.image_mean} / "
            f"{image_processor.image_std}). Pass the processor the model was trained with (image_processor=...) if it "
            "was trained at another size or with other statistics."
        )
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, **save_kwargs)
        image_processor.save_pretrained(folder)
        # the CLIP tokenizer of its text embeddings, so that the repository takes new classes offline
        save_embeddings_tokenizer(model, folder, token)
        repo_id = create_hub_repo(repo_id, token=token, private=private)  # "user/name"
        if model_card is None:
            model_card = make_model_card(
                model.config,
                model_name=repo_id.split("/")[-1],
                repo_id=repo_id,
                metrics=metrics,
                source=f"Uploaded with `{type(model).__name__}.push_to_hub`.",
                tags=[tags] if isinstance(tags, str) else tags,
            )
        model_card.save(os.path.join(folder, "README.md"))
        return publish_folder(
            folder,
            repo_id,
            token=token,
            private=private,
            commit_message=commit_message or f"Upload {type(model).__name__}",
            revision=revision,
            create_pr=create_pr,
            commit_description=commit_description,
        )

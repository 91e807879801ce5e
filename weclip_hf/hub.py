"""Publishing to the Hub: the one upload path (an explicit allow-list of files, `publish_folder`) that the model's
``push_to_hub``, the training script and the converter share, with the model card of `weclip_hf.model_card`."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi, ModelCard
from transformers import PreTrainedModel
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import logging as hf_logging
from transformers.utils.hub import cached_files

from .image_processing_weclip import WeCLIPImageProcessor, processor_settings
from .json_files import read_json
from .model_card import make_model_card

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
            auto_map = read_json(path, expect=dict).get("auto_map") or {}
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

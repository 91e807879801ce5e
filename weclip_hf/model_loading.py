"""The checks around `WeCLIPForSemanticSegmentation.from_pretrained`: what a folder must hold before loading and what
the loaded weights must cover, each refused with an error that says what to do.

- before loading: a folder of this model type (`check_model_folder`), without new text-embedding names
  (`refuse_new_text_names`), with safetensors weights only (`safetensors_only`);
- while loading: a truncated file or weights that do not fit the config become `ValueError`s (`loading_errors`);
- after loading: no weight of the model left random (`refuse_missing_weights`), the whole model on one device
  (`refuse_split_placement`), the tensors in 64-byte aligned memory (`in_aligned_memory`);
- when saving: the weight files as readable as the rest of the folder (`weights_readable_as`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from torch import nn
from transformers import CONFIG_MAPPING, AutoConfig, AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from .json_files import read_json
from .presets import CLIP_MODEL
from .wording import folder_contents

logger = hf_logging.get_logger(__name__)

WECLIP_MODEL_TYPES = ("weclip", "weclip_plus")  # the model types of this package's saved folders
# keywords of `from_clip` / `from_clip_and_dino` that say how to fetch a checkpoint (as for `from_pretrained`), not
# what the model is: never stored in its config (a token in config.json would be uploaded with it)
HUB_OPTIONS = ("token", "revision", "cache_dir", "local_files_only", "force_download", "proxies")
MODEL_LOADING_OPTIONS = (*HUB_OPTIONS, "dtype", "device_map", "attn_implementation")


def hub_id_or_none(name: str | None) -> str | None:
    """``name`` when it can be a Hub repository id, None for a local path (a folder that exists here, or a name no
    Hub id can have): the card's metadata names Hub repositories only."""
    if name is None or Path(name).expanduser().exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def public_source_name(name: str | None) -> str | None:
    """How a model card names a checkpoint or dataset source: a Hub id (or None) as it is, a local path by its
    folder's name (never the path: it tells the machine's layout and the user's name)."""
    if name is None or hub_id_or_none(name):
        return name
    return f"{Path(name).expanduser().resolve().name} (a local folder)"


# the model types of the backbone checkpoints WeCLIP (CLIP) and WeCLIP+ (also DINOv2) are built from
BACKBONE_MODEL_TYPES = {"CLIP": ("clip",), "DINOv2": ("dinov2", "dinov2_with_registers")}


def names_a_missing_folder(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` is a local path to no folder rather than a Hub id: absolute, starting with ``.`` or
    ``~``, of more than two parts (a Hub id is ``name`` or ``namespace/name``), or in a folder that exists
    (``outputs/run-that-does-not-exist``). transformers tries a Hub id there and, offline, names neither."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        return False
    return (
        path.is_absolute()
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or (path.parent != Path(".") and path.parent.is_dir())
    )


def is_path_to_no_folder(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` is written as a local path (starting with ``.``, ``/`` or ``~``, as no Hub id does)
    and names no folder: refused before transformers reads anything. A relative path into a folder that exists
    (``outputs/nope``) may still be a Hub id there; `names_a_missing_folder` takes it for a path once the Hub failed."""
    name = str(name_or_path)
    return name.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(name))


def check_backbone_source(name_or_path: str, what: str) -> None:
    """Refuse, before any download is tried, a backbone ``name_or_path`` (``what``: "CLIP" / "DINOv2") that is a
    file, a path to no folder, a local folder without config.json (transformers would build the config's defaults),
    the folder of a saved WeCLIP model (which `from_pretrained` loads), a local folder of another model type (the
    other backbone: its weights were reported missing) or without safetensors weights. Missing files raise OSErrors
    (as transformers' own), the wrong model a ValueError."""
    path = os.path.expanduser(str(name_or_path))
    folder = f"a {what} checkpoint folder written by save_pretrained"
    remedy = f"give {folder} (config.json and model.safetensors) or a Hub id."
    if os.path.isfile(path):
        raise NotADirectoryError(f"{str(name_or_path)!r} is a file, not a {what} checkpoint folder: {remedy}")
    if is_path_to_no_folder(name_or_path):
        raise FileNotFoundError(f"No {what} checkpoint folder at {str(name_or_path)!r}: {remedy}")
    if not os.path.isdir(path):
        return  # a Hub id: checked by transformers, and after loading
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"{str(name_or_path)!r} has no config.json: not {folder} (config.json and model.safetensors)."
        )
    model_type = saved_config_dict(path).get("model_type")
    if model_type in WECLIP_MODEL_TYPES:
        raise ValueError(
            f"{str(name_or_path)!r} is a saved WeCLIP model, not a {what} checkpoint: load it with "
            "AutoModelForSemanticSegmentation.from_pretrained."
        )
    check_backbone_type(name_or_path, model_type, what)
    require_safetensors(path)


@contextlib.contextmanager
def naming_the_checkpoint(name_or_path: str, what: str) -> Iterator[None]:
    """Re-raise a failure to fetch a backbone checkpoint of the Hub (``what``: "CLIP" / "DINOv2") naming it:
    transformers' error for a checkpoint it cannot reach (offline, or not in the cache) names neither the id nor
    what it was for."""
    try:
        yield
    except OSError as error:
        if os.path.isdir(os.path.expanduser(str(name_or_path))):
            raise
        raise OSError(
            f"Could not load the {what} checkpoint {str(name_or_path)!r}: {error}\nWhere the Hub cannot be reached, "
            f"give a local folder of a {what} model written by save_pretrained (or run once where it can, to cache it)."
        ) from error


def load_clip_tokenizer(
    name_or_path: str | os.PathLike, argument: str, hub: dict | None = None
) -> PreTrainedTokenizerBase:
    """The CLIP tokenizer of the folder or Hub id ``name_or_path`` (with the loading options ``hub``), which
    computes a model's text embeddings. Refused, naming it and ``argument`` (the flag or keyword that gave it): a
    path to no folder, one that cannot be fetched (`naming_the_checkpoint`) and one without tokenizer files, of
    which transformers builds a tokenizer of its special tokens alone from a CLIP config (every word one id)."""
    name = str(name_or_path)
    if is_path_to_no_folder(name):
        raise FileNotFoundError(
            f"No CLIP tokenizer folder at {name!r} ({argument}): give a CLIP tokenizer folder or Hub id, "
            f"e.g. {CLIP_MODEL}."
        )
    with naming_the_checkpoint(name, f"CLIP tokenizer ({argument})"):
        tokenizer = AutoTokenizer.from_pretrained(name, **(hub or {}))
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        folder = Path(name).expanduser()
        holds = f"; it holds {folder_contents(folder)}" if folder.is_dir() else ""
        raise FileNotFoundError(
            f"{name!r} ({argument}) holds no CLIP tokenizer (tokenizer.json, or vocab.json and merges.txt{holds}): "
            "transformers built one of its special tokens alone, with which every class name would get the same "
            "text embedding. Save the tokenizer of the CLIP it was saved from in its folder: "
            f"AutoTokenizer.from_pretrained(that CLIP's id, e.g. {CLIP_MODEL!r}).save_pretrained(folder)."
        )
    return tokenizer


def backbone_config(name_or_path: str, what: str, hub: dict) -> PreTrainedConfig:
    """The config of the backbone checkpoint ``name_or_path`` (``what``: "CLIP" / "DINOv2"), as its
    ``from_pretrained`` reads it with the loading options ``hub``, before any weight is fetched. Refused: a
    checkpoint without config.json (for a Hub id transformers would build a class's defaults, CLIP's a ViT-B/32,
    whose shapes the weights do not fit or, worse, do; AutoModel's error names a ``model_type`` key of a file that
    is not there) and one of another model type (`check_backbone_type`; a local folder's are refused first, by
    `check_backbone_source`)."""
    with naming_the_checkpoint(name_or_path, what):  # its first download
        config_dict, unused = PreTrainedConfig.get_config_dict(name_or_path, **hub)
    if not config_dict:
        raise FileNotFoundError(
            f"{str(name_or_path)!r} has no config.json: not a {what} checkpoint that can be loaded (transformers "
            f"cannot tell its model nor its shapes). Give a {what} checkpoint with its config.json: a Hub id or a "
            "folder written by save_pretrained."
        )
    check_backbone_type(name_or_path, config_dict.get("model_type"), what)
    return CONFIG_MAPPING[config_dict["model_type"]].from_dict(config_dict, **unused)


def check_backbone_type(name_or_path: str, model_type: str | None, what: str) -> None:
    """Refuse a backbone checkpoint whose ``model_type`` is not one of ``what``'s (`BACKBONE_MODEL_TYPES`): a
    local folder's before loading, a Hub checkpoint's once its config is read."""
    if model_type not in BACKBONE_MODEL_TYPES[what]:
        raise ValueError(
            f"{str(name_or_path)!r} holds a {model_type!r} model, not a {what} checkpoint "
            f"({' or '.join(map(repr, BACKBONE_MODEL_TYPES[what]))})."
        )


# the config fields that `from_clip` reads from the CLIP checkpoint, with the argument naming it
CLIP_CHECKPOINT_FIELDS = dict.fromkeys(
    ("vision_config", "text_config", "projection_dim", "logit_scale_init_value"), "clip_name_or_path"
)


def split_backbone_keywords(
    kwargs: dict, config_fields: set[str], constructor: str, from_checkpoints: dict[str, str]
) -> tuple[dict, dict]:
    """(config fields, loading options) of the keywords given to a constructor from pretrained backbones
    (``constructor``: its name, for the error): the fields it reads from the checkpoints (``from_checkpoints``:
    field -> the argument naming the checkpoint) and anything else are refused, naming them. ``torch_dtype`` is
    read as ``dtype`` (a ``dtype`` given too wins), as `from_pretrained` reads transformers' deprecated name."""
    if "torch_dtype" in kwargs:
        logger.warning_once("`torch_dtype` is deprecated! Use `dtype` instead!")
        kwargs = {"dtype": kwargs["torch_dtype"], **{k: v for k, v in kwargs.items() if k != "torch_dtype"}}
    unknown = sorted(k for k in kwargs if k not in config_fields and k not in MODEL_LOADING_OPTIONS)
    if unknown:
        raise TypeError(
            f"{constructor} got unknown keyword argument(s) {unknown}: it takes config fields (those of the "
            f"model's config class) and the loading options {list(MODEL_LOADING_OPTIONS)}. A preset's fields: "
            "weclip_hf.presets.preset_config_kwargs(name)."
        )
    taken = [f"{k} (from {from_checkpoints[k]})" for k in sorted(kwargs) if k in from_checkpoints]
    if taken:
        raise TypeError(
            f"{constructor} reads {', '.join(taken)} from the checkpoint: leave "
            f"{'it' if len(taken) == 1 else 'them'} out (for another backbone, save one with that config and pass "
            "its folder)."
        )
    loading = {k: v for k, v in kwargs.items() if k in MODEL_LOADING_OPTIONS}
    return {k: v for k, v in kwargs.items() if k not in loading}, loading


# the config fields the stored text embeddings were computed from
TEXT_EMBEDDING_NAMES = ("class_names", "background_names", "prompt_template")


def refuse_new_text_names(changed: set[str]) -> None:
    """Refuse loading a model with other ``changed`` text-embedding names than it was saved with (they would
    disagree with its stored embeddings), saying how to compute new ones."""
    if changed:
        raise ValueError(
            f"{sorted(changed)} cannot be changed when loading: the text embeddings of the saved names are stored "
            "with the weights. Load the model, then call model.update_class_embeddings(tokenizer, class_names=..., "
            "...) to compute new ones (label_names or id2label rename the labels only)."
        )


def saved_config_dict(folder: str) -> dict:
    """The config.json of a saved model ``folder`` as a dict, with clear errors where there is none or it is not a
    JSON object."""
    config_file = os.path.join(folder, "config.json")
    if not os.path.lexists(config_file):
        raise FileNotFoundError(f"{folder!r} has no config.json: not a saved model folder.")
    try:
        return read_json(config_file, expect=dict)
    except ValueError as err:  # not JSON, nested past the parser, a key twice, NaN, a folder or FIFO, ...
        raise ValueError(f"{err} Save the model again.") from None


def check_model_folder(
    model_class: type, pretrained_model_name_or_path: str | os.PathLike, kwargs: dict
) -> None:
    """Refuse, before transformers reads anything, a missing local folder, a folder of another model type and
    text-embedding names (in ``kwargs`` or a given config) other than the saved ones."""
    path = str(pretrained_model_name_or_path)
    if is_path_to_no_folder(path):
        raise FileNotFoundError(f"No model folder at {path!r}.")
    refuse_new_text_names(kwargs.keys() & set(TEXT_EMBEDDING_NAMES))
    folder = os.path.join(os.path.expanduser(path), kwargs.get("subfolder") or "")
    given = kwargs.get("config")
    model_type = model_class.config_class.model_type
    if given is None and os.path.isdir(folder):
        saved_type = saved_config_dict(folder).get("model_type")
        if saved_type is None:
            raise ValueError(
                f"{folder!r}'s config.json names no model_type: not a saved {model_class.__name__} folder."
            )
        if saved_type != model_type:
            start = f"{folder!r} holds a {saved_type!r} checkpoint, not a {model_type!r} one"
            if saved_type in WECLIP_MODEL_TYPES:
                raise ValueError(
                    f"{start}: load it with AutoModelForSemanticSegmentation.from_pretrained, which picks the class "
                    f"of its model_type. A new {model_class.__name__} starts from pretrained backbones: "
                    f"{model_class.__name__}.{model_class._from_backbones}(...)."
                )
            raise ValueError(
                f"{start}. For a CLIP checkpoint use {model_class.__name__}.{model_class._from_backbones}(...); for "
                "official weights use examples/convert_official_checkpoint.py."
            )
    elif given is not None and os.path.isfile(os.path.join(folder, "config.json")):
        if isinstance(given, (str, os.PathLike)):  # a config's folder or Hub id, as from_pretrained takes it
            given = AutoConfig.from_pretrained(given, **{k: kwargs[k] for k in HUB_OPTIONS if k in kwargs})
        saved_dict = saved_config_dict(folder)
        saved_type = saved_dict.get("model_type")
        if getattr(given, "model_type", None) != saved_type:
            raise ValueError(
                f"config= is a {getattr(given, 'model_type', type(given).__name__)!r} config, and {folder!r} holds a "
                f"{saved_type!r} checkpoint: give a config of its type (AutoConfig.from_pretrained of the folder, "
                "changed) or leave config= out."
            )
        # the Auto classes read the config (and its overrides) first; config.json leaves out default values
        saved = {**model_class.config_class().to_dict(), **saved_dict}
        refuse_new_text_names({k for k in TEXT_EMBEDDING_NAMES if getattr(given, k) != saved[k]})


def require_safetensors(folder: str) -> None:
    """Refuse a local model folder that holds no safetensors weights (e.g. only a pickle ``pytorch_model.bin``).

    Hub ids (no such local folder) are left to `from_pretrained` with ``use_safetensors=True``.
    """
    if not os.path.isdir(folder):
        return
    names = os.listdir(folder)
    if any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names):
        return
    pickles = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
    if not pickles:
        raise FileNotFoundError(
            f"{folder!r} has no model.safetensors, no weights file: a save that did not finish (config.json is "
            "written first)? Save the model again, or download it again."
        )
    raise FileNotFoundError(
        f"{folder!r} has no model.safetensors, only pickle weights ({', '.join(pickles)}). WeCLIP loads safetensors "
        "only, because pickle files can run arbitrary code when loaded. If you trust the file, convert it: "
        "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')."
    )


def safetensors_only(pretrained_model_name_or_path: str | os.PathLike, kwargs: dict) -> None:
    """Make the `from_pretrained` keyword arguments ``kwargs`` read safetensors only (``use_safetensors=False`` is
    refused) and refuse a local folder without safetensors weights."""
    if kwargs.get("use_safetensors") is False:
        raise ValueError(
            "use_safetensors=False is not supported: WeCLIP loads safetensors only (pickle weight files can "
            "run arbitrary code when loaded)."
        )
    kwargs["use_safetensors"] = True
    folder = os.path.expanduser(str(pretrained_model_name_or_path))
    require_safetensors(os.path.join(folder, kwargs["subfolder"]) if kwargs.get("subfolder") else folder)


def shape_overrides(config_class: type, kwargs: dict) -> str:
    """The keyword arguments of a `from_pretrained` call that set config fields (``"decoder_num_layers=1"``), for
    the messages of weights that do not fit: they may have changed the model's shape; "" when none."""
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k in config_class.field_names())


def _fix(overrides: str, otherwise: str) -> str:
    """The fix a message of weights that do not fit the model names: loading without the ``overrides`` given."""
    if overrides:
        return f"The keyword arguments ({overrides}) change the model's shape: load without them."
    return otherwise


def safetensors_problem(file: Path) -> str | None:
    """Why ``file`` does not open as safetensors weights (its header does not read, or not cover the whole file:
    a save or download cut short), as the reader says it; None when it opens."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, "pt"):
            return None
    except (SafetensorError, OSError) as error:
        return f"{type(error).__name__}: {error}"


def unreadable_weight_files(path: str) -> list[str]:
    """The names of the safetensors files of the local folder ``path`` that cannot be opened (truncated or
    corrupted: a save or download cut short); [] for a Hub id."""
    folder = Path(path).expanduser()
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return [file.name for file in files if safetensors_problem(file) is not None]


@contextlib.contextmanager
def loading_errors(path: str, overrides: str = "") -> Iterator[None]:
    """Turn transformers' errors for a truncated weights file and for weights that do not match the config into
    `ValueError`s that name ``path`` and the fix (``overrides``: `shape_overrides`), and its error for a Hub id
    it could not load where ``path`` looks like a missing local folder (`names_a_missing_folder`) into a
    `FileNotFoundError` naming it."""
    from safetensors import SafetensorError

    try:
        yield
    except OSError as err:
        if not names_a_missing_folder(path):
            raise
        raise FileNotFoundError(
            f"No model folder at {path!r} (nor a Hub model of that id that could be loaded: {err})"
        ) from err
    except SafetensorError as err:
        named = "".join(f"{name} " for name in unreadable_weight_files(path))
        raise ValueError(
            f"The weights file {named}of {path!r} is truncated or corrupted ({err}); save or download it again."
        ) from err
    except RuntimeError as err:
        if "mismatched" not in str(err):
            raise
        fix = _fix(overrides, "(E.g. the number of classes in class_names vs the decoder classifier.)")
        raise ValueError(f"The weights of {path!r} do not match the model's config: {err} {fix}") from err


def _listed(keys: list[str]) -> str:
    """The first 8 of ``keys``, and how many more."""
    return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


def refuse_missing_weights(
    model_class: type,
    path: str,
    missing_keys: list[str],
    allowed_missing: re.Pattern | None,
    overrides: str = "",
) -> None:
    """Refuse weights of ``path`` that lack tensors of the model (they would be left random), except those
    matching ``allowed_missing`` (``overrides``: `shape_overrides`)."""
    missing = sorted(k for k in missing_keys if allowed_missing is None or not allowed_missing.search(k))
    if missing:
        name = model_class.__name__
        # a user's subclass (each class of the package names its backbone constructor): maybe its new modules
        if "_from_backbones" not in vars(model_class):
            otherwise = (
                f"If they are modules {name} adds, name them in {name}._TRAINED (e.g. _TRAINED = "
                f"(*{model_class.__mro__[1].__name__}._TRAINED, 'head')): they then start from the decoder's "
                "initialisation when a folder or backbone checkpoint lacks them."
            )
        else:
            otherwise = (
                f"Save the model again with save_pretrained; to start from pretrained backbones use "
                f"{name}.{model_class._from_backbones}(...)."
            )
        fix = _fix(overrides, otherwise)
        raise ValueError(
            f"The weights of {path!r} lack {len(missing)} tensor(s) of the model, which would be left random: "
            f"{_listed(missing)}. {fix}"
        )


def refuse_unused_weights(path: str, unexpected_keys: list[str], overrides: str = "") -> None:
    """Refuse a saved model's weights (``path``) that hold tensors the model has no place for: trained weights
    that would be dropped, e.g. decoder blocks beyond a ``decoder_num_layers`` given at loading (transformers
    only logs them)."""
    if unexpected_keys:
        fix = _fix(
            overrides, "Load it with the class its config.json names (AutoModelForSemanticSegmentation)."
        )
        raise ValueError(
            f"The weights of {path!r} hold {len(unexpected_keys)} tensor(s) the model has no place for, which "
            f"would be dropped: {_listed(sorted(unexpected_keys))}. {fix}"
        )


def _device_name(device: int | str | torch.device) -> str:
    """A ``device_map`` value as one name per device ("cuda:0" for 0 and "cuda:0"; "disk", "meta" as given)."""
    if device in ("disk", "meta"):
        return str(device)
    try:
        return str(torch.device(device))
    except RuntimeError:  # an accelerator index where torch sees no accelerator
        return str(device)


def _one_device(placed: dict[str, list[str]]) -> bool:
    """Whether `_placed_devices` found the model on one device, neither "disk" nor "meta"."""
    return len(placed) <= 1 and not placed.keys() & {"disk", "meta"}


def _placed_devices(model: nn.Module) -> dict[str, list[str]]:
    """The devices that accelerate's ``hf_device_map`` (or, without one, the tensors) put ``model`` on, each with
    the modules there: ``{"cpu": ["decoder", ...], "disk": ["vision_model"]}``."""
    device_map = getattr(model, "hf_device_map", None) or {}
    placed: dict[str, list[str]] = {}
    for module, device in device_map.items():
        placed.setdefault(_device_name(device), []).append(module or "(whole model)")
    if _one_device(placed):  # one device by the map: meta tensors still
        tensors = (*model.named_parameters(), *model.named_buffers())
        meta = [name for name, tensor in tensors if tensor.device.type == "meta"]
        if meta:
            placed["meta"] = meta
    return placed


def refuse_split_placement(path: str, model: nn.Module, kwargs: dict) -> None:
    """Refuse a model that `from_pretrained`'s ``device_map`` spread over several devices, offloaded to "disk" or
    left on the meta device: WeCLIP reads the weights of its frozen towers and decoder directly (fused
    projections, the GradCAM block's own backward, float32 copies), which accelerate's offload hooks never
    materialize, so its forward would fail deep in torch ("Tensor on device cpu is not on the expected device
    meta")."""
    placed = _placed_devices(model)
    if _one_device(placed):
        return
    asked = ", ".join(f"{k}={kwargs[k]!r}" for k in ("device_map", "max_memory") if kwargs.get(k) is not None)
    where = "; ".join(
        f"{device}: {', '.join(modules[:4])}{' ...' if len(modules) > 4 else ''}"
        for device, modules in placed.items()
    )
    raise ValueError(
        f"{path!r} was loaded with {asked or 'a device_map'}, which placed the model on several devices or "
        f"offloaded it ({where}). WeCLIP runs on one device only: its forward reads the weights of the CLIP towers "
        "and the decoder directly, which accelerate's offloading does not provide. Load it with "
        "device_map='cpu' or a single device (device_map='cuda:0' or {'': 0}; 'auto' spreads a model over every "
        "visible GPU, so only with one visible device and no max_memory below the model's size), or without "
        "device_map and then model.to(device)."
    )


def in_aligned_memory(module: nn.Module) -> None:
    """Copy every CPU parameter and buffer that does not start on a 64-byte boundary into fresh memory.

    Tensors read from a safetensors file start wherever the file's layout puts them (8-byte steps); the CPU
    kernels take other vectorized and GEMM-packing paths on such data and round differently in the last bit
    (measured: logits 1.2e-7 apart, CAM pseudo labels flipped at near-ties, between a trained model and the
    same weights loaded back). Fresh allocations are 64-byte aligned, so a model loaded with `from_pretrained`
    computes bit for bit what the saved model computed (`tests/test_modeling.py`)."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()


def weights_readable_as(folder: Path, reference: Path) -> None:
    """Give the safetensors files in ``folder`` the permission bits of ``reference`` (a file written beside them
    with the process's umask): safetensors (>= 0.8) writes them with mode 0600 whatever the umask, so that another
    user or a container could not load them (safetensors issue 782)."""
    mode = reference.stat().st_mode & 0o777
    # a link among them was planted: chmod would open up the file it points to (a private key made readable)
    for weights in (path for path in folder.glob("*.safetensors") if not path.is_symlink()):
        weights.chmod(mode)


__all__ = [
    "TEXT_EMBEDDING_NAMES",
    "check_model_folder",
    "in_aligned_memory",
    "is_path_to_no_folder",
    "load_clip_tokenizer",
    "loading_errors",
    "names_a_missing_folder",
    "naming_the_checkpoint",
    "refuse_missing_weights",
    "refuse_unused_weights",
    "shape_overrides",
    "refuse_new_text_names",
    "refuse_split_placement",
    "require_safetensors",
    "safetensors_only",
    "safetensors_problem",
    "saved_config_dict",
    "weights_readable_as",
]

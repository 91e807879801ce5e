"""The model flags: the saved model of --model_name_or_path (`check_model_argument`, `check_saved_model_flag`,
its config read once: `saved_config`; a Hub id it cannot fetch named with its flag: `naming_the_model_flag`)
and the backbones of a fresh model (`check_backbone_flags`)."""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager
from pathlib import Path

from transformers import PretrainedConfig

from ..checkpointing import TRAINING_STATE_NAME
from ..model_loading import (
    WECLIP_MODEL_TYPES,
    check_backbone_source,
    names_a_missing_folder,
    naming_the_checkpoint,
    saved_config_dict,
)

# the backbone flags of a fresh model (train.py, train_with_trainer.py), with the backbone each names
BACKBONE_FLAGS = {"clip_model_name_or_path": "CLIP", "dino_model_name_or_path": "DINOv2"}


def check_backbone_flags(parser: argparse.ArgumentParser, args) -> None:
    """Refuse a backbone flag (`BACKBONE_FLAGS`) whose local path holds no checkpoint of its backbone
    (`check_backbone_source`: a path to no folder, a file, a folder without config.json, a saved WeCLIP model, the
    other backbone, no safetensors weights), naming the flag: the model is built after the data load, and failed
    there in a traceback. A Hub id passes unread (the model's building fetches it, or names it offline)."""
    for flag, backbone in BACKBONE_FLAGS.items():
        name_or_path = getattr(args, flag, None)
        if not name_or_path:
            continue
        try:
            check_backbone_source(name_or_path, backbone)
        except (OSError, ValueError) as err:
            parser.error(f"--{flag}: {err}")


# the attribute of an arguments namespace where `saved_config` keeps what it read: a leading underscore, so that the
# recorded arguments leave it out (`weclip_hf.trajectory.public_args`)
SAVED_CONFIG_CACHE = "_saved_config"


def naming_the_model_flag(name_or_path: str, flag: str = "--model_name_or_path") -> AbstractContextManager:
    """`naming_the_checkpoint` for the saved WeCLIP model a script loads from ``flag``: a Hub id it cannot fetch
    (offline and not in the cache) is named with the flag that gave it."""
    return naming_the_checkpoint(name_or_path, f"WeCLIP ({flag})")


def saved_config(args: argparse.Namespace) -> dict:
    """The config.json of ``--model_name_or_path`` (checked by `check_model_argument`; a Hub id's fetched) as a dict,
    read once: kept on ``args`` (`SAVED_CONFIG_CACHE`) for the run's later questions; ``{}`` without one."""
    source = getattr(args, "model_name_or_path", None)
    if not source:
        return {}
    cached = vars(args).get(SAVED_CONFIG_CACHE)
    if cached is None or cached[0] != source:
        local = check_model_argument(source)
        if local is None:
            with naming_the_model_flag(source):
                local = PretrainedConfig.get_config_dict(source)[0]
        cached = (source, local)
        setattr(args, SAVED_CONFIG_CACHE, cached)
    return cached[1]


def check_saved_model_flag(parser: argparse.ArgumentParser, args, dest: str = "model_name_or_path") -> None:
    """Refuse the saved-model flag ``--dest`` where `check_model_argument` refuses it (a path to no folder, a file, a
    training checkpoint, a folder without config.json or of another model type), as the parser's error: the
    scripts refused it after parsing, in a traceback, some after the accelerate state or the data. A Hub id passes
    unread (loading it names an offline failure: `naming_the_model_flag`); a folder's config is kept for
    `saved_config`, which reads it once."""
    name_or_path = getattr(args, dest, None)
    if not name_or_path:
        return
    try:
        local = check_model_argument(name_or_path, f"--{dest}")
    except (OSError, ValueError) as err:
        parser.error(str(err))
    # the flag that `saved_config` reads
    if local is not None and dest == "model_name_or_path":
        setattr(args, SAVED_CONFIG_CACHE, (name_or_path, local))


def check_model_argument(name_or_path: str, flag: str = "--model_name_or_path") -> dict | None:
    """Refuse, with a message naming ``flag`` and saying what to give instead, a ``name_or_path`` that is a path to no
    folder (`names_a_missing_folder`), a file, a training checkpoint (``step_N`` of examples/train.py) rather than a
    saved model, a folder without config.json or one of another model type (a CLIP's). Return the folder's
    config.json as a dict; None for a Hub id, which passes unread."""
    path = Path(name_or_path).expanduser()
    if (path / TRAINING_STATE_NAME).is_file():
        raise ValueError(
            f"{flag} {name_or_path} is a training checkpoint of examples/train.py (optimizer and training state), "
            "not a saved model. Give the run's --output_dir, where train.py saves the final model (config.json, "
            "model.safetensors) at the end of training; to finish an interrupted run, rerun train.py with "
            "--resume_from_checkpoint latest."
        )
    if names_a_missing_folder(name_or_path):
        raise FileNotFoundError(f"{flag} {name_or_path}: no such folder.")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{flag} {name_or_path} is a file; give the folder of a saved model.")
    if not path.is_dir():
        return None
    # transformers' errors say "Unrecognized model" and list a hundred model types
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{flag} {name_or_path} has no config.json: not a saved model folder (train.py's --output_dir "
            "holds one: config.json, model.safetensors, preprocessor_config.json)."
        )
    saved = saved_config_dict(str(path))
    model_type = saved.get("model_type")
    if model_type not in WECLIP_MODEL_TYPES:
        raise ValueError(
            f"{flag} {name_or_path} holds a {model_type!r} model, not a WeCLIP one. A WeCLIP is trained on a CLIP "
            "(examples/train.py --clip_model_name_or_path FOLDER_OR_HUB_ID) or converted from official weights "
            "(examples/convert_official_checkpoint.py)."
        )
    return saved

"""--preset and the recipe a run follows: a preset refused where it does not fit the data or the model
(`check_preset_fits_data`, `check_preset_fits_model`), the model type of a run (`model_type_of_args`), the
preset a saved model was trained with (`saved_training_preset`) and the recipe's preset (`recipe_name`)."""

from __future__ import annotations

import argparse

from ..data.sources import names_no_dataset
from ..presets import METHOD_NAMES, PRESETS, VOC_PRESET_OF_MODEL_TYPE, get_preset
from .model_flags import saved_config


def check_preset_fits_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a ``--preset`` of a real dataset (its classes) without a dataset: the toy world would be read."""
    if args.preset and args.preset != "toy" and names_no_dataset(args):
        parser.error(
            f"--preset {args.preset} is of its dataset's classes, but no dataset is given (--dataset_name, "
            "--data_dir or --dataset_path; see the README's 'Reproducing VOC and COCO'); leave out --preset for "
            "the toy world."
        )


def check_preset_fits_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a ``--preset`` of another model type than the run's model: ``--dino_model_name_or_path`` builds
    WeCLIP+, a ``--model_name_or_path`` folder is of its saved type (the other method's recipe or evaluation
    would run silently: WeCLIP's learning rate is 10x WeCLIP+'s, its scales 1.0 0.75 where WeCLIP+'s are 1.0
    1.5); the toy preset fits a saved model of either type. A model folder that cannot be read is a usage error."""
    if not args.preset:
        return
    saved = not getattr(args, "dino_model_name_or_path", None)
    if not saved:
        model_type, source = "weclip_plus", "--dino_model_name_or_path builds WeCLIP+"
    elif getattr(args, "model_name_or_path", None):
        if get_preset(args.preset).dataset.toy_sizes is not None:
            return  # the toy world's settings serve both methods (WeCLIP+ trains and is scored there with them)
        try:
            model_type = model_type_of_args(args)
        except (OSError, ValueError) as err:
            parser.error(str(err))
        method = METHOD_NAMES.get(model_type, model_type)
        source = f"--model_name_or_path {args.model_name_or_path} is a {method} model"
    else:
        return
    preset_type = get_preset(args.preset).model_type
    if model_type != preset_type:
        fitting = sorted(
            name
            for name, preset in PRESETS.items()
            if preset.model_type == model_type or (saved and preset.dataset.toy_sizes is not None)
        )
        parser.error(
            f"{source}, but --preset {args.preset} is a {METHOD_NAMES[preset_type]} preset: use a "
            f"{METHOD_NAMES.get(model_type, model_type)} preset ({', '.join(fitting)}), or leave out --preset."
        )


def model_type_of_args(args: argparse.Namespace) -> str:
    """The type of the model a run trains or scores: WeCLIP+ with ``--dino_model_name_or_path``, the saved config's
    with ``--model_name_or_path`` (read before any data: it picks the recipe), else the ``--preset``'s (WeCLIP
    without one)."""
    if getattr(args, "dino_model_name_or_path", None):
        return "weclip_plus"
    if getattr(args, "model_name_or_path", None):
        return saved_config(args).get("model_type", "weclip")
    preset = getattr(args, "preset", None)
    return get_preset(preset).model_type if preset else "weclip"


def saved_training_preset(args: argparse.Namespace) -> str | None:
    """The preset whose recipe trained the model of ``--model_name_or_path`` (its config's ``training_preset``),
    where recorded and known; None without one."""
    if getattr(args, "dino_model_name_or_path", None):
        return None
    recorded = saved_config(args).get("training_preset")
    return recorded if recorded in PRESETS else None


def recipe_name(args: argparse.Namespace) -> str:
    """The preset whose training recipe a run follows: ``--preset``; without one the toy world's on no dataset,
    else the one a ``--model_name_or_path`` was trained with (`saved_training_preset`), else the VOC preset of the
    model type (`VOC_PRESET_OF_MODEL_TYPE`: WeCLIP+'s for a WeCLIP+ model)."""
    if args.preset:
        return args.preset
    if names_no_dataset(args):
        return "toy"
    # another model type: WeCLIP's; loading the model then names the folder's type
    return saved_training_preset(args) or VOC_PRESET_OF_MODEL_TYPE.get(model_type_of_args(args), "voc")

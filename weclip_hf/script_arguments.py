"""Argument parsing shared by the example scripts: argparse types that refuse bad values at parse time, the
mutually exclusive data-source flags, and the check that --model_name_or_path names a saved model."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import math
import re
from contextlib import AbstractContextManager
from pathlib import Path

from transformers import PretrainedConfig

from .checkpointing import TRAINING_STATE_NAME
from .configuration_weclip import WeCLIPConfig
from .crf import CRF_PRESETS, CRFParams
from .data.columns import FROM_MASKS, IMAGE_COLUMNS, MASK_COLUMNS
from .data.sources import DATA_SOURCE_FLAGS, names_no_dataset
from .hub import has_stray_characters
from .model_loading import (
    WECLIP_MODEL_TYPES,
    check_backbone_source,
    names_a_missing_folder,
    naming_the_checkpoint,
    saved_config_dict,
)
from .presets import METHOD_NAMES, PRESETS, VOC_PRESET_OF_MODEL_TYPE, evaluation_of_config, get_preset
from .wording import counted

# --help texts of flags several scripts share
DATA_SOURCE_HELP = {
    "dataset_name": "Hub dataset id",
    "data_dir": "local imagefolder dataset (images + masks + metadata.jsonl)",
    "dataset_path": "a dataset saved with DatasetDict.save_to_disk",
}
DATASET_CONFIG_HELP = "configuration of the --dataset_name dataset (load_dataset's name; default: none)"
IMAGE_COLUMN_HELP = f"the image column (default: the first of {', '.join(IMAGE_COLUMNS)} the dataset has)"
MASK_COLUMN_HELP = f"the mask column (default: the first of {', '.join(MASK_COLUMNS)} the dataset has)"
LABELS_COLUMN_HELP = (
    "image-level labels: ids 1..C (0..C-1 with --labels_zero_based), multi-hot rows, or class names; a field of a "
    f"struct column as objects.category; '{FROM_MASKS}': the labels from the masks (default: a label column found by "
    "name, else the masks)"
)
CLASS_NAMES_HELP = (
    "the foreground classes, one CLIP prompt name each; they are also the display names (config.id2label), "
    "replacing a preset's (edit id2label in the saved config.json to show others)"
)


CONFIG_OVERRIDES_HELP = (
    "config fields of the fresh model that no flag sets, as transformers' example scripts take them: "
    "'attention_num_maps=5,dice_loss_weight=0.5' (JSON values: numbers, true/false, null, [1,2,4], also Python's "
    "True/False/None; a bare word is a string, a value holding a comma in double quotes); applied after --preset's "
    "and the other flags' values"
)


def config_fields(config_class: type[WeCLIPConfig]) -> set[str]:
    """The keyword arguments of ``config_class`` and of the WeCLIP configs it extends (WeCLIPPlusConfig passes
    WeCLIPConfig's through ``**kwargs``)."""
    classes = [cls for cls in config_class.__mro__ if isinstance(cls, type) and issubclass(cls, WeCLIPConfig)]
    names = {name for cls in classes for name in inspect.signature(cls).parameters}
    return names - {"self", "kwargs"}


_PYTHON_WORDS = {"True": True, "False": False, "None": None}  # as transformers' update_from_string reads them


def parse_config_overrides(text: str, config_class: type[WeCLIPConfig]) -> dict:
    """``--config_overrides`` ('field=value,...', as transformers' run_clm.py takes it) as keyword arguments of
    ``config_class``: each field one of its fields (a misspelt one is refused, with the closest names), each
    value read as JSON (True / False / None too; a bare word: a string; a string holding a comma in double quotes).
    The config checks the values when the model is built."""
    fields = config_fields(config_class)
    overrides = {}
    # a comma inside [...] or "..." belongs to the value
    for item in re.findall(r'(?:[^,\["]|\[[^\]]*\]|"[^"]*")+', text) or [text]:
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not key:
            raise ValueError(
                f"--config_overrides {text!r}: expected field=value pairs separated by commas, got {item!r}."
            )
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"--config_overrides: {config_class.__name__} has no field {key!r}{hint}.")
        if value in _PYTHON_WORDS:
            overrides[key] = _PYTHON_WORDS[value]
            continue
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = _number_or_text(value)
    return overrides


# a decimal number JSON does not read (".5", "5.", "+1"); not "nan", "inf" or "1_0", which float() also takes
_PYTHON_NUMBER = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def _number_or_text(value: str) -> float | str:
    """A value JSON does not read: a decimal number as Python writes it (``.5``, ``5.``, as transformers'
    update_from_string reads it), else the text itself."""
    return float(value) if _PYTHON_NUMBER.fullmatch(value) else value


def _integer(text: str) -> int:
    """``text`` as an int, with an argparse error saying a whole number was expected."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def at_least_one(text: str) -> int:
    """argparse type of a count that must be >= 1 (0 would silently mean "no limit" or "nothing")."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative(text: str) -> int:
    """argparse type of a count that may be 0 (e.g. "never") but not negative."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type of a finite float that must be > 0 (a learning rate, a scale)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type of a fraction strictly between 0 and 1 (--train_val_split)."""
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1 (e.g. 0.15), got {text}")
    return value


TRAIN_VAL_SPLIT_HELP = (
    "a dataset without the validation split: hold this fraction of the training split out for validation (e.g. "
    "0.15, transformers' --train_val_split; default: none held out, no evaluation). The rows are drawn by --seed: "
    "the same on every run and resume of that seed"
)


def check_hub_token(parser: argparse.ArgumentParser, token: str | None) -> None:
    """Refuse a --hub_token that holds whitespace or control characters (`weclip_hf.hub.has_stray_characters`; say
    ``--hub_token "$(cat token.txt)"`` of a file with Windows line ends): the HTTP library would refuse it at the
    upload, after the run's work, in an error quoting it. The message never shows the token."""
    if has_stray_characters(token):
        parser.error(
            "--hub_token holds whitespace or control characters (a line end copied from a file?): strip it."
        )


def check_output_path(parser: argparse.ArgumentParser, flag: str, path: str, folder: bool = True) -> None:
    """Refuse an output ``path`` (given as ``flag``: a ``folder``, else a file) that is an existing file, or lies
    inside one: the script would fail as it first writes there, after loading its model, in a traceback
    (NotADirectoryError, FileExistsError)."""
    path = Path(path)
    existing = next((p for p in ((path,) if folder else ()) + tuple(path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is" if existing == path else f"is inside {str(existing)!r}, which is"
        parser.error(f"{flag} {str(path)!r} {where} an existing file, not a folder.")


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


def add_device_flag(parser) -> None:
    """``--device``: the torch device a benchmark runs its model on (default: cuda where available, else cpu)."""
    import torch

    parser.add_argument(
        "--device",
        type=device_name,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda where available, else cpu)",
    )


PROCESS_DEVICE_HELP = (
    "torch device of the model: cpu, cuda, cuda:N, mps, xpu (default: accelerate's: under `accelerate launch` each "
    "process's own GPU, else a GPU where there is one, else the CPU; the environment's ACCELERATE_USE_CPU=1, as "
    "`accelerate launch --cpu` sets it, the CPU). With several processes: cpu, or a device type without an index "
    "(each process takes its own; choose the GPUs with CUDA_VISIBLE_DEVICES)"
)


def add_process_device_flag(parser) -> None:
    """``--device`` of a script that runs its model in each process of a launch (segment.py,
    generate_pseudo_labels.py, evaluate.py): default None, accelerate's device (`process_device`)."""
    parser.add_argument("--device", type=device_name, help=PROCESS_DEVICE_HELP)


def device_count(device_type: str) -> int:
    """The devices of ``device_type`` that torch can use here (cpu: 1; a type without a torch module, as meta: 0)."""
    import torch

    if device_type == "cpu":
        return 1
    try:
        module = torch.get_device_module(device_type)
    except RuntimeError:
        return 0
    return module.device_count() if module.is_available() else 0


def device_name(text: str) -> str:
    """argparse type of --device: a torch device string whose device is here (`device_count`), else an error naming
    the devices there are."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        hint = " (a GPU is cuda)" if text.split(":")[0].lower() == "gpu" else ""
        raise argparse.ArgumentTypeError(
            f"{text!r} is no torch device{hint}: give cpu, cuda, cuda:N, mps or xpu."
        ) from None
    count = device_count(device.type)
    if count == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: torch finds no {device.type} device here (torch.{device.type}.is_available() is False: no "
            f"such device, or a torch built without {device.type} support); devices here: {', '.join(devices_here())}."
        )
    if device.index is not None and device.index >= count and device.type != "cpu":
        raise argparse.ArgumentTypeError(
            f"{text!r}: torch finds {counted(count, device.type + ' device')} here, "
            f"{device.type}:0..{device.type}:{count - 1}."
        )
    return text


def devices_here() -> list[str]:
    """The device types torch can use here, cpu first."""
    return ["cpu", *(kind for kind in ("cuda", "mps", "xpu") if device_count(kind))]


def launched_processes() -> int:
    """The processes of the launch this process belongs to, as accelerate counts them from the environment
    (`accelerate launch`, torchrun, MPI); 1 run alone."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(["PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "WORLD_SIZE"], 1)


def check_device_fits_launch(parser: argparse.ArgumentParser, device: str | None) -> None:
    """Refuse a --device the launch contradicts, before any model is loaded: another than the CPU with
    ACCELERATE_USE_CPU=1 (`accelerate launch --cpu`), and one device by its index (cuda:1) for several processes,
    which would all run on it (each process takes its own GPU, `process_device`)."""
    import torch
    from accelerate.utils import parse_flag_from_env

    if device is None:
        return
    chosen = torch.device(device)
    if chosen.type != "cpu" and parse_flag_from_env("ACCELERATE_USE_CPU"):
        parser.error(
            f"--device {device} asks for a {chosen.type} device, and ACCELERATE_USE_CPU=1 (`accelerate launch "
            "--cpu`) for the CPU: drop one of them."
        )
    processes = launched_processes()
    if chosen.type != "cpu" and chosen.index is not None and processes > 1:
        parser.error(
            f"--device {device} would put all {processes} processes of the launch on one device: give --device "
            f"{chosen.type} (each process takes its own, {chosen.type}:LOCAL_RANK) or leave it out; choose the "
            "GPUs with CUDA_VISIBLE_DEVICES."
        )


def process_state(device: str | None):
    """accelerate's `PartialState` of this process, on the CPU with ``--device cpu`` or ACCELERATE_USE_CPU=1."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU"))


def process_device(device: str | None, state):
    """The torch device this process runs its model on: accelerate's (``state.device``, the process's own GPU under
    a launch) without ``device`` (--device) or for its type without an index, else ``device`` itself."""
    import torch

    if device is None:
        return state.device
    chosen = torch.device(device)
    return state.device if chosen.index is None and chosen.type == state.device.type else chosen


def add_data_source_flags(group, **help_texts: str) -> None:
    """Add --dataset_name, --data_dir and --dataset_path to ``group`` as mutually exclusive flags (argparse
    then refuses two of them, naming both); ``help_texts``: the help of each, by flag name (default:
    `DATA_SOURCE_HELP`'s)."""
    exclusive = group.add_mutually_exclusive_group()
    for flag in DATA_SOURCE_FLAGS:
        exclusive.add_argument(f"--{flag}", help=help_texts.get(flag, DATA_SOURCE_HELP[flag]))


def check_one_data_source(parser: argparse.ArgumentParser, args) -> None:
    """Refuse two data-source flags, as `add_data_source_flags`' exclusive group does, for a script whose flags come
    from a dataclass (`HfArgumentParser`)."""
    given = [f"--{flag}" for flag in DATA_SOURCE_FLAGS if getattr(args, flag, None)]
    if len(given) > 1:
        parser.error(f"{' and '.join(given)} each name a dataset: give one of them.")


TOY_FLAGS = ("toy_train_images", "toy_val_images")  # the toy world's sizes (train.py, train_with_trainer.py)


def add_toy_size_flags(group, images_of: str = "training images", aliases: tuple[str, ...] = ()) -> None:
    """Add --toy_train_images (also named ``aliases``) and --toy_val_images to ``group``: the toy world's sizes,
    by default the toy preset's (`check_source_flags` refuses them with a dataset)."""
    train, val = get_preset("toy").dataset.toy_sizes
    group.add_argument(
        "--toy_train_images", *aliases, type=at_least_one, help=f"toy world: {images_of} ({train})"
    )
    group.add_argument("--toy_val_images", type=at_least_one, help=f"toy world: validation images ({val})")


def check_source_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the flags that the data source named would leave unread: a toy world's size below 1, or given with a
    dataset (which replaces the toy world), and --dataset_config_name without --dataset_name (a folder, a saved
    dataset, image files and the toy world have no configurations)."""
    given = [flag for flag in TOY_FLAGS if getattr(args, flag, None) is not None]
    for flag in given:
        if getattr(args, flag) < 1:
            parser.error(f"argument --{flag}: must be >= 1, got {getattr(args, flag)}")  # as `at_least_one`
    source = next((f"--{flag}" for flag in (*DATA_SOURCE_FLAGS, "images") if getattr(args, flag, None)), None)
    if given and not names_no_dataset(args):
        parser.error(f"--{given[0]} sizes the toy world, which {source} replaces: leave it out.")
    if getattr(args, "dataset_config_name", None) and not getattr(args, "dataset_name", None):
        read = f"{source} is read" if source else "the offline toy world is used"
        parser.error(
            f"--dataset_config_name chooses a configuration of a --dataset_name dataset, and {read} without one: "
            "leave it out."
        )


# where the multi-scale scales come from without --scales (or a preset's), once the model is loaded
# the weight dtypes the scripts offer (segment.py's --dtype, benchmark_half_precision.py's --dtypes): torch's names
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")
MODEL_SCALES_HELP = (
    "those of the model's preset (its config's training_preset, else found by its classes: toy 1.0 1.125), else of "
    "its model type's VOC preset (WeCLIP 1.0 0.75, WeCLIP+ 1.0 1.5)"
)


def add_multiscale_flags(
    parser, scales_default: str = MODEL_SCALES_HELP, evaluated_in_training: bool = False
) -> None:
    """Add the multi-scale + flip switch and its scales, in every script under the same words: --msf turns it on,
    --no_msf off (one of them, as the script's default says: off for evaluate.py and segment.py, on for the
    evaluations of train.py, ``evaluated_in_training``), --scales or --msf_scales give its scales
    (``scales_default`` says their default; `scales_in_effect` resolves it). The values keep each script's names:
    ``msf`` and ``scales``, train.py's ``no_msf`` and ``msf_scales`` (its trajectory records them)."""
    switch = parser.add_mutually_exclusive_group()
    if evaluated_in_training:
        switch.add_argument(
            "--no_msf", action="store_true", help="skip the multi-scale + flip evaluation (default: it runs)"
        )
        # (store_false's own default would be True)
        switch.add_argument(
            "--msf",
            dest="no_msf",
            action="store_false",
            default=False,
            help="run the multi-scale + flip evaluation (the default)",
        )
        names, what = ("--msf_scales", "--scales"), "multi-scale evaluation scales"
    else:
        switch.add_argument("--msf", action="store_true", help="multi-scale + flip (--scales; default: off)")
        switch.add_argument(
            "--no_msf",
            dest="msf",
            action="store_false",
            default=False,
            help="single scale, no flip (the default)",
        )
        names, what = ("--scales", "--msf_scales"), "multi-scale scales"
    parser.add_argument(*names, type=positive_float, nargs="+", help=f"{what} (default: {scales_default})")


def one_flag_note(parser: argparse.ArgumentParser, dest: str) -> str:
    """For a message naming the flag of ``dest``: where ``parser`` gives it several names, a note saying they are one
    flag (" (--scales and --msf_scales are one flag)"; the user may have typed either), else nothing."""
    names = next(action.option_strings for action in parser._actions if action.dest == dest)
    return f" ({' and '.join(names)} are one flag)" if len(names) > 1 else ""


def scales_in_effect(scales: list[float] | None, config) -> list[float]:
    """``scales`` (--scales, or a preset's), else the evaluation scales of the model's preset of ``config``
    (`evaluation_of_config`: the one it was trained with, else that of its classes, else its model type's VOC
    preset's), as `weclip_hf.inference.multiscale_flip_logits` defaults them."""
    return list(scales or evaluation_of_config(config).msf_scales)


# the flags of the CRF's parameters (`add_crf_parameter_flags`), which act only with the CRF on
CRF_PARAMETER_FLAGS = ("crf_preset", *(f"crf_{field.name}" for field in dataclasses.fields(CRFParams)))


def add_crf_parameter_flags(parser, preset_help: str) -> None:
    """Add --crf_preset (``preset_help``) and a --crf_<field> flag per `CRFParams` field, each overriding the
    preset's value (evaluate.py, segment.py; `resolve_crf_flags` reads them)."""
    parser.add_argument("--crf_preset", choices=sorted(CRF_PRESETS), help=preset_help)
    for field in dataclasses.fields(CRFParams):
        values = ", ".join(
            f"{name} {getattr(preset, field.name)}" for name, preset in sorted(CRF_PRESETS.items())
        )
        kind = {"num_iters": int, "pos_filter": str}.get(field.name, float)
        choices = ["lattice", "gaussian"] if field.name == "pos_filter" else None
        parser.add_argument(
            f"--crf_{field.name}",
            type=kind,
            choices=choices,
            help=f"CRFParams.{field.name} (default: the preset's; {values})",
        )


def crf_overrides(args: argparse.Namespace) -> dict:
    """The `CRFParams` fields given as --crf_<field> flags, by field name."""
    fields = (field.name for field in dataclasses.fields(CRFParams))
    return {name: getattr(args, f"crf_{name}") for name in fields if getattr(args, f"crf_{name}") is not None}


def resolve_crf_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set ``args.crf_preset`` (WeCLIP's evaluation, "weclip", when not given) and ``args.crf_params``: its
    parameters with every --crf_<field> flag applied; a value `CRFParams` refuses is a parser error naming it."""
    args.crf_preset = args.crf_preset or "weclip"
    try:
        args.crf_params = dataclasses.replace(CRF_PRESETS[args.crf_preset], **crf_overrides(args))
    except ValueError as err:
        parser.error(str(err))


def check_switched_flags(
    parser: argparse.ArgumentParser, args: argparse.Namespace, switches: dict[str, str]
) -> None:
    """Refuse a flag given without the switch of the step it sets (``{"scales": "msf"}``: --scales without --msf):
    that step does not run, so the flag would change nothing, yet read as a setting of the results."""
    for flag, switch in switches.items():
        if getattr(args, flag) is not None and not getattr(args, switch):
            note = one_flag_note(parser, flag)
            parser.error(f"--{flag} acts only with --{switch}: add --{switch}, or drop --{flag}{note}.")


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


def _shown(value) -> str:
    """A value as a flag takes it, for --help: lists space-separated, strings quoted, None as "none"."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    if isinstance(value, str):
        return repr(value)
    return "none" if value is None else str(value)


def values_by_preset(values: dict[str, object]) -> str:
    """``{preset: value}`` for --help, the presets of one value together ("voc/voc-plus 30000, toy 500"; one
    value shared by every preset alone)."""
    groups: dict[str, list[str]] = {}
    for name, value in values.items():
        groups.setdefault(_shown(value), []).append(name)
    if len(groups) == 1 and len(values) == len(PRESETS):
        return next(iter(groups))
    return ", ".join(f"{'/'.join(names)} {value}" for value, names in groups.items())


def recipe_values(field: str) -> str:
    """The value of a recipe field (`Preset.recipe`: training and in-training evaluation) in each preset."""
    return values_by_preset({name: preset.recipe()[field] for name, preset in PRESETS.items()})


def config_values(field: str, default: str | None = None) -> str:
    """The value of a config field in each preset that sets it, then the config's ``default`` (WeCLIPConfig's
    keyword default unless given), for --help: "toy 128, else 256"."""
    if default is None:
        default = _shown(WeCLIPConfig.constructor_defaults()[field])
    given = {name: preset.config[field] for name, preset in PRESETS.items() if field in preset.config}
    return f"{values_by_preset(given)}, else {default}"


def first_paragraph(doc: str) -> str:
    """The first paragraph of a script's docstring: its ``--help`` description."""
    return doc.strip().split("\n\n")[0]


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

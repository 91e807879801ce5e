"""The flags of the inference steps, in every script under the same words: multi-scale + flip and its scales
(`add_multiscale_flags`, `scales_in_effect`), the CRF's parameters (`add_crf_parameter_flags`,
`resolve_crf_flags`), the weight dtypes; a step's flag given without its switch is refused
(`check_switched_flags`, naming a flag's other names: `one_flag_note`)."""

from __future__ import annotations

import argparse
import dataclasses

from ..crf import CRF_PRESETS, CRFParams
from ..presets import evaluation_of_config
from .value_types import positive_float

# the weight dtypes the scripts offer (segment.py's --dtype, benchmark_half_precision.py's --dtypes): torch's names
WEIGHT_DTYPES = ("float32", "bfloat16", "float16")
# where the multi-scale scales come from without --scales (or a preset's), once the model is loaded
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

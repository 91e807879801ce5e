#!/usr/bin/env python
"""Convert an official WeCLIP or WeCLIP+ checkpoint into a transformers folder.

The folder holds `config.json` + `model.safetensors` (`AutoModelForSemanticSegmentation.from_pretrained`
and `pipeline("image-segmentation")` load it after `import weclip_hf`), the image processor and a model
card (README.md) that says where the weights came from, and the CLIP tokenizer of the text embeddings
(``model.update_class_embeddings(AutoTokenizer.from_pretrained(folder), class_names=[...])`` gives new
classes). The preset says the method: ``voc`` / ``coco`` for WeCLIP, ``voc-plus`` / ``coco-plus`` for WeCLIP+
(whose checkpoint also holds its DINOv2, ``dino_encoder.*``); without --preset the checkpoint's own is taken (its
method, and COCO's or VOC's classes by its classifier).

Examples:
    # the official checkpoint holds CLIP (encoder.*) and the decoder; the tokenizer gives the text embeddings
    python examples/convert_official_checkpoint.py --checkpoint WeCLIP_model_iter_30000.pth \
        --tokenizer openai/clip-vit-base-patch16 --preset voc --output_dir weclip-voc
    # CLIP from a transformers CLIP folder / Hub id (its tokenizer is used; the checkpoint's encoder.*
    # tensors, if any, are compared with it; without them, a CLIP of other sizes than ViT-B/16 needs
    # --no_check_clip: the patch size and the text tower cannot be read from the decoder)
    python examples/convert_official_checkpoint.py --checkpoint WeCLIP_model_iter_80000.pth \
        --clip openai/clip-vit-base-patch16 --preset coco --output_dir weclip-coco --push_to_hub \
        --hub_model_id me/weclip-coco
    # WeCLIP+ (frozen CLIP + frozen DINOv2): the DINOv2 comes from the checkpoint
    python examples/convert_official_checkpoint.py --checkpoint WeCLIP_Plus_iter_30000.pth \
        --tokenizer openai/clip-vit-base-patch16 --preset voc-plus --output_dir weclip-plus-voc

The --output_dir must be new or empty: one that holds files (a trained model, its metrics, logs, overlays and
step_N checkpoints) is refused before converting, as the converted model would be written beside what it does not
describe. The model is written into a fresh hidden folder inside it (``.converting-XXXXXXXX``, private to the run)
and moved into place when complete, config.json last, so that a conversion killed on the way leaves no half-written
model that `from_pretrained` would load (the next run removes the hidden folder; a link by that name is refused).
--overwrite_output_dir removes what the folder holds once the new model is complete, except its version control
(.git, .gitattributes, ...: a `git clone` of a Hub repository stays one, the old model's files shown as replaced).

Checkpoints are read safely (`torch.load(weights_only=True)`; a pickle that needs code is refused). An
OpenAI TorchScript `ViT-B-16.pt` is read without running its code; see `weclip_hf.safe_loading`.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import ModelCard

from weclip_hf import WeCLIPImageProcessor
from weclip_hf.batch_jobs import sha256_of
from weclip_hf.configuration_weclip_plus import DINO_VARIANTS
from weclip_hf.conversion import (
    OFFICIAL_PRESETS,
    check_clip_source,
    convert_official_checkpoint,
    dino_variant_name,
    is_official_clip,
)
from weclip_hf.conversion.convert_weclip import converter_tokenizer
from weclip_hf.hub import create_hub_repo, publish_folder
from weclip_hf.image_processing_weclip import processor_settings
from weclip_hf.model_card import METHODS, card_repo_id, make_model_card, save_model_card
from weclip_hf.model_loading import public_source_name
from weclip_hf.presets import CLIP_MODEL, get_preset
from weclip_hf.run_folder import remove_entry
from weclip_hf.script_arguments import check_hub_token, check_output_path
from weclip_hf.wording import folder_contents

logger = logging.getLogger("convert_official_checkpoint")
DEFAULT_TOKENIZER = CLIP_MODEL
# the name of the hidden folders in --output_dir the converted model is written to until it is complete: each run
# makes its own, STAGING-XXXXXXXX (`write_whole_folder`)
STAGING = ".converting"
# the entries of a version-controlled --output_dir (a `git clone` of a Hub repository) that are its repository, not
# a model's files: --overwrite_output_dir keeps them, and a folder holding nothing else counts as empty
VERSION_CONTROL = (".git", ".gitattributes", ".gitignore", ".gitmodules", ".hg", ".hgignore", ".svn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", required=True, help="official WeCLIP or WeCLIP+ .pth (torch.save of the state dict)"
    )
    parser.add_argument(
        "--clip",
        default=None,
        help="transformers CLIP folder or Hub id for the CLIP part (default: none, the checkpoint's own encoder.* "
        "tensors; needed for a checkpoint of the decoder only)",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help=f"CLIP tokenizer folder or Hub id (default: --clip's, else {DEFAULT_TOKENIZER}; offline: a folder)",
    )
    parser.add_argument(
        "--preset",
        choices=[name for names in OFFICIAL_PRESETS.values() for name in names],
        default=None,
        help="dataset preset and method: voc / coco (WeCLIP), voc-plus / coco-plus (WeCLIP+); default: the "
        "checkpoint's (WeCLIP+ where it holds a DINOv2 branch; COCO where its classifier predicts 81 classes, else "
        "VOC)",
    )
    parser.add_argument(
        "--class_names",
        nargs="+",
        default=None,
        help="the foreground classes of a checkpoint trained on other classes than the preset's, in the order of "
        "its classifier (the preset still gives the method's constants); default: the preset's",
    )
    parser.add_argument(
        "--output_dir", required=True, help="where to write the converted model: a new or empty folder"
    )
    parser.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="convert into an --output_dir that holds files (e.g. a trained model): they are removed once the "
        "conversion has succeeded (a failed one leaves the folder as it was); its version control (.git, "
        ".gitattributes, ...) is kept",
    )
    parser.add_argument(
        "--no_check_clip",
        action="store_true",
        help="with --clip: use it as it is: do not compare the checkpoint's own CLIP tensors with it, nor, "
        f"for a checkpoint without them (whose patch size and text tower cannot be read from it), require "
        f"{CLIP_MODEL}'s sizes",
    )
    parser.add_argument("--push_to_hub", action="store_true", help="upload the folder to the Hub")
    parser.add_argument("--hub_model_id", default=None, help="repository id for --push_to_hub (user/name)")
    parser.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in one)")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    args = parser.parse_args(argv)
    check_hub_token(parser, args.hub_token)
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    check_output_path(parser, "--output_dir", args.output_dir)  # before converting
    check_output_dir_contents(parser, args)
    if args.clip is not None:
        # before the checkpoint is read (and a --push_to_hub repository created)
        try:
            check_clip_source(args.clip)
        except (OSError, ValueError) as err:
            parser.error(str(err))
    if args.clip is None and args.tokenizer is None:
        args.tokenizer = DEFAULT_TOKENIZER  # the tokenizer of the OpenAI ViT-B/16 the official code used
    return args


def check_output_dir_contents(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse an --output_dir that holds files (the converted model would be written beside them) unless
    --overwrite_output_dir; with it, refuse one that holds the inputs or the working directory, which removing its
    contents would delete. A killed conversion's hidden staging folder and the folder's version control
    (`VERSION_CONTROL`, which --overwrite_output_dir keeps) do not count."""
    output_dir = Path(args.output_dir)
    if not output_dir.is_dir():
        return
    # no run makes a link or a file by a hidden folder's name: it was planted, and the model would be written into
    # what it points to
    planted = [p for p in output_dir.iterdir() if is_staging(p) and (p.is_symlink() or not p.is_dir())]
    if planted:
        parser.error(
            f"--output_dir {args.output_dir!r} holds {planted[0].name!r}, which is not the hidden folder a killed "
            "conversion leaves but a link or a file: remove it, or choose another --output_dir."
        )
    if not [p for p in output_dir.iterdir() if not is_staging(p) and not is_version_control(p)]:
        return
    if not args.overwrite_output_dir:
        kept = folder_contents(output_dir, only=is_version_control)
        parser.error(
            f"--output_dir {args.output_dir!r} is not empty ({folder_contents(output_dir)}): the converted model "
            "would be written beside files it does not describe. Choose a new or empty folder, or give "
            "--overwrite_output_dir to remove what it holds once the conversion has succeeded"
            + (f" (its version control ({kept}) is kept)." if kept else ".")
        )
    inputs = {"--checkpoint": args.checkpoint, "--clip": args.clip, "--tokenizer": args.tokenizer}
    inputs["the working directory"] = os.getcwd()
    folder = output_dir.resolve()
    for name, path in inputs.items():
        if path is not None and Path(path).exists() and Path(path).resolve().is_relative_to(folder):
            parser.error(
                f"--overwrite_output_dir would delete {name} ({path}), which is inside --output_dir "
                f"{args.output_dir!r}: choose another --output_dir."
            )


def is_staging(path: Path) -> bool:
    """Whether ``path`` is named as the hidden folder of a conversion (`STAGING`, or a run's own
    ``STAGING-XXXXXXXX``)."""
    return path.name == STAGING or path.name.startswith(f"{STAGING}-")


def is_version_control(path: Path) -> bool:
    """Whether ``path`` is an entry of the folder's version control (`VERSION_CONTROL`), which is kept."""
    return path.name in VERSION_CONTROL


def remove_leftover_staging(output_dir: Path) -> None:
    """Remove the hidden folders killed conversions left in ``output_dir`` (`is_staging`): a link or a file by its
    name is unlinked, never followed (a planted ``.converting`` link to another folder would have had the model
    written into that folder, and its files moved into ``output_dir``); a folder is removed with what it holds (links
    in it are unlinked, not followed)."""
    for leftover in [p for p in output_dir.iterdir() if is_staging(p)]:
        remove_entry(leftover)


def write_whole_folder(output_dir: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(folder)`` on a fresh hidden folder inside ``output_dir`` (``STAGING-XXXXXXXX``, made by
    `tempfile.mkdtemp`: private to this run, so no one can have planted it; on the disk of ``output_dir``, and the
    folder itself stays, be it a mount point or the working directory), then, once it is complete, remove what
    ``output_dir`` held but its version control (--overwrite_output_dir; checked by `check_output_dir_contents`;
    `is_version_control`) and move the names this run wrote in, config.json last: a conversion killed on the way
    leaves the old model whole, or a folder without config.json that `from_pretrained` refuses, never a
    half-written model that it loads. Killed runs' hidden folders are removed first (`remove_leftover_staging`: a
    link is unlinked, never followed)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_leftover_staging(output_dir)
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=f"{STAGING}-"))
    write(staging)
    written = sorted((p.name for p in staging.iterdir()), key=lambda name: name == "config.json")
    for old in output_dir.iterdir():
        if old.name != staging.name and not is_version_control(old):
            remove_entry(old)
    for name in written:
        os.replace(staging / name, output_dir / name)
    staging.rmdir()


def dino_description(config) -> str:
    """Where a converted WeCLIP+'s DINOv2 comes from and what it is, for the model card."""
    dino = config.dino_config
    variant = dino_variant_name(dino)
    return (
        "the checkpoint's own `dino_encoder.*` tensors (torch.hub naming"
        + (f"; `{variant}`" if variant else "")
        + f"; {dino.num_hidden_layers} blocks of width {dino.hidden_size}, "
        + f"{config.dino_num_register_tokens} register tokens)"
    )


def dino_hub_id(config) -> str | None:
    """The Hub checkpoint of a converted WeCLIP+'s official DINOv2 variant; None for WeCLIP or other sizes."""
    variant = dino_variant_name(config.dino_config) if config.model_type == "weclip_plus" else None
    return DINO_VARIANTS[variant].hub_id if variant else None


def clip_hub_id(args: argparse.Namespace, config) -> str | None:
    """The CLIP a card names as base model: --clip as given (a local folder too: `make_model_card` leaves it out of
    the metadata, which names Hub models only), else the official one when the checkpoint's own CLIP has its sizes;
    None for a CLIP of another shape."""
    if args.clip:
        return args.clip
    return CLIP_MODEL if is_official_clip(config) else None


def build_model_card(args: argparse.Namespace, model, checkpoint_sha256: str) -> ModelCard:
    """The model card (`weclip_hf.model_card.make_model_card`), its source section saying where the weights came
    from: the checkpoint and its hash, the CLIP weights, the text embeddings, the preset and the conversion."""
    clip_source = (
        f"`{public_source_name(args.clip)}` (transformers CLIP)"
        if args.clip
        else "the checkpoint's own `encoder.*` tensors"
    )
    dino_source = (
        f"\n- DINOv2 weights from: {dino_description(model.config)}"
        if model.config.model_type == "weclip_plus"
        else ""
    )
    own_classes = (
        f"; its method constants with the checkpoint's own classes: {', '.join(model.config.class_names)}"
        if args.class_names
        else ""
    )
    source = f"""Converted from an official checkpoint (trained with the official code) to the `weclip_hf`
transformers format with `examples/convert_official_checkpoint.py`.

- Source checkpoint: `{Path(args.checkpoint).name}` (sha256 `{checkpoint_sha256}`)
- CLIP weights from: {clip_source}{dino_source}
- Text embeddings: computed at conversion with the CLIP tokenizer `{public_source_name(args.tokenizer or args.clip)}`,
  prompt `{model.config.prompt_template}`
- Preset: `{args.preset}` ({get_preset(args.preset).description}){own_classes}
- Conversion: {model.conversion_report.summary()}"""
    repo_id = card_repo_id(args.hub_model_id, args.output_dir)
    return make_model_card(
        model.config,
        model_name=repo_id.split("/")[-1],
        source=source,
        base_model=[clip_hub_id(args, model.config), dino_hub_id(model.config)],
        repo_id=repo_id,
        tags=[args.preset],
        license=None,  # the official weights' license, not this package's
    )


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output_dir = Path(args.output_dir)
    # the CLIP tokenizer of the text embeddings, loaded once (after --clip's checks, before the checkpoint is read) and
    # saved with the model: new class names (model.update_class_embeddings) then need nothing but the folder, offline
    tokenizer = converter_tokenizer(args.tokenizer, args.clip)
    if args.push_to_hub:  # fail now, not after the conversion; the full id (user/name) is what the card loads
        args.hub_model_id = create_hub_repo(args.hub_model_id, token=args.hub_token, private=args.private)

    model = convert_official_checkpoint(
        args.checkpoint,
        clip=args.clip,
        preset=args.preset,
        tokenizer=tokenizer,
        check_clip=not args.no_check_clip,
        **({"class_names": args.class_names} if args.class_names else {}),
    )
    if args.preset is None:
        args.preset = model.conversion_report.preset
        logger.info("Preset %s: the checkpoint's method and classes (--preset names another)", args.preset)
    logger.info(model.conversion_report.summary())
    checkpoint_sha256 = sha256_of(Path(args.checkpoint))
    card = build_model_card(args, model, checkpoint_sha256)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        WeCLIPImageProcessor(**processor_settings(model.config)).save_pretrained(folder)
        save_model_card(card, folder)

    # after a successful conversion, and whole: a failed or killed one leaves the folder as it was
    write_whole_folder(output_dir, write)
    logger.info("Wrote %s%s", output_dir, " (replacing what it held)" if args.overwrite_output_dir else "")

    if args.push_to_hub:
        publish_folder(
            output_dir,
            args.hub_model_id,
            token=args.hub_token,
            private=args.private,
            commit_message=f"Convert an official {METHODS[model.config.model_type].name} checkpoint",
        )
        logger.info("Pushed to https://huggingface.co/%s", args.hub_model_id)
    return output_dir


if __name__ == "__main__":
    main()

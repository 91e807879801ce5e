"""The model card (README.md) that examples/train.py writes beside the trained model: its figures, data and
training arguments.
"""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator

from weclip_hf.data.folders import holds_pseudo_masks
from weclip_hf.data.sources import names_no_dataset
from weclip_hf.model_card import (
    card_repo_id,
    describe_dataset,
    make_model_card,
    save_model_card,
    split_model_metrics,
)
from weclip_hf.model_loading import public_source_name
from weclip_hf.trajectory import LAUNCH_FACTS, PATH_ARGS, public_args

# arguments of this machine's run, not of the model: left off its card (values derived from the flags, paths)
NOT_ON_CARD = frozenset(
    {
        "given_model_flags", "rfm_start_source", "resolved",
        "output_dir", "overwrite_output_dir", "resume_from_checkpoint",
    }
)  # fmt: skip


def dataset_description(args) -> str:
    """What the run trained on, as the model card names it (`describe_dataset`, as train_with_trainer.py's card)."""
    return describe_dataset(args.dataset_name, args.data_dir or args.dataset_path)


def card_args(args, accelerator: Accelerator | None = None) -> dict:
    """The arguments the model card lists: those given or filled by the recipe, without this machine's
    (`NOT_ON_CARD`), the toy world's sizes only where the toy world was trained on, local folders by their names;
    with ``accelerator``, how it launched the run (`LAUNCH_FACTS`: the processes, whose number times the per-device
    batch is the global one, and the mixed precision)."""
    unused = NOT_ON_CARD if names_no_dataset(args) else NOT_ON_CARD | {"toy_train_images", "toy_val_images"}
    listed = {k: v for k, v in public_args(args).items() if v is not None and k not in unused}
    launch = {key: getattr(accelerator, key) for key in LAUNCH_FACTS} if accelerator is not None else {}
    return {**{k: public_source_name(str(v)) if k in PATH_ARGS else v for k, v in listed.items()}, **launch}


def write_card(
    args,
    cfg,
    output_dir: Path,
    summary: dict,
    split: str | None = None,
    accelerator: Accelerator | None = None,
) -> None:
    """The model card (README.md) of the trained model in ``output_dir``, with its mIoU figures on ``split`` and the
    launch of ``accelerator`` among its training arguments."""
    figures = {k: v for k, v in summary.items() if "miou" in k}
    metrics, other_metrics = split_model_metrics(figures)
    repo_id = card_repo_id(args.hub_model_id, output_dir)
    card = make_model_card(
        cfg,
        repo_id.split("/")[-1],
        "Trained with `examples/train.py` of weclip-hf.",
        repo_id=repo_id,
        metrics=metrics,
        other_metrics=other_metrics,
        dataset_name=args.dataset_name,
        dataset_description=dataset_description(args),
        dataset_split=split,
        weakly_supervised=not args.fully_supervised,
        mask_source=(
            "the pseudo masks of a first stage (examples/generate_pseudo_labels.py)"
            if holds_pseudo_masks(args.data_dir)
            else None
        ),
        training_args=card_args(args, accelerator),
    )
    save_model_card(card, output_dir)

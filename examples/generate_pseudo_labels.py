#!/usr/bin/env python
"""Pseudo masks from the frozen CLIP for a dataset with image-level labels, written as a dataset to train on.

    python examples/generate_pseudo_labels.py --output_dir outputs/toy-pseudo --validation_split validation
    python examples/generate_pseudo_labels.py --model outputs/weclip-toy --output_dir outputs/toy-pseudo-rfm
    accelerate launch examples/generate_pseudo_labels.py --preset voc --dataset_name jxie/pascal-voc-2012 \\
        --output_dir voc-pseudo                                    # the processes split the images
    python examples/train.py --preset toy --data_dir outputs/toy-pseudo --fully_supervised \\
        --output_dir outputs/toy-two-stage                         # stage two: train on the pseudo masks

The input is any dataset `examples/train.py` accepts (the toy world by default, a Hub dataset, an imagefolder or
a saved dataset; image-level labels as ids, multi-hot rows or class names, or taken from masks). The pseudo
masks come from the CAMs of the frozen CLIP: with --model (a trained WeCLIP folder) refined with its RFM, else
from a bare CLIP (--clip_model_name_or_path, through `WeCLIPForSemanticSegmentation.from_clip`; WeCLIP presets
only) without it. A trained WeCLIP+'s CAMs (--mode cam too) are weighted by its decoder's prediction (RFM+'s
re-weighting), so they are not the frozen CLIP's alone.

Output (--output_dir), an imagefolder that `datasets.load_dataset("imagefolder", data_dir=...)` and `train.py
--data_dir` read (each split's folder keeps its name, read back by `datasets`' rules: `check_split_names`):
``<split>/images/`` (the images, copied), ``<split>/masks/`` (palette PNGs whose values are the ids of
``config.id2label``), ``<split>/metadata.jsonl`` (``file_name``, ``mask_file_name``, ``image_labels`` by class
name, ``source``);
with --validation_split, that split copied with its ground-truth masks. Where the input has masks,
``pseudo_label_report.json`` scores the pseudo masks (per-class IoU; CAM, and with --model RFM). Optional:
``overlays/`` (--num_overlays; a re-run draws those that done rows lack), --save_to_disk, --push_to_hub. Re-running
the same command after an interruption continues where it stopped (every file is written atomically; an image is
done when its record in ``.state/`` exists and names the same input: the size and SHA-256 of the row's image and
mask bytes, and its image-level labels). Rows of another input under the same row numbers (another dataset, toy
seed or labels column) are refused, or with --overwrite_output_dir replaced; so are rows this run does not have (an
earlier run of more images, or a row whose image is unreadable now), or with it dropped, so that the dataset
written is this run's. Until a run is done, its folder is marked unfinished and holds no metadata.jsonl (nor
report), so that an interrupted run is not read as the earlier dataset with some of this run's masks; `train.py
--data_dir` refuses it. A re-run with other settings, or with another model saved at the same --model or
--clip_model_name_or_path folder (its weights and config.json are recorded by their SHA-256, its image processor by
its settings; a Hub id's of the revision it resolves to), is refused, or with --overwrite_output_dir starts over:
it removes the earlier run's dataset (the files of its split folders, its records and report, the overlays its
records list as written: other files of overlays/ stay). A run deletes the files of its split folders it has no
record of, so --output_dir must not be, hold or lie inside the input dataset (--data_dir, --dataset_path), a
non-empty folder this script did not write (no ``.state/``) is refused unless --overwrite_output_dir, and a link
among its outputs (split folders, ``.state/``, ``overlays/``, or inside them) always: it would write and delete
through it.

The device: accelerate's (each process's own GPU under `accelerate launch`, else a GPU where there is one), or
--device (cpu, cuda, cuda:N, mps; one that torch does not find here is refused before the model loads). Several
processes take every n-th image each (on CPUs: ``accelerate launch --multi_gpu --num_processes N
examples/generate_pseudo_labels.py --device cpu``, as ``accelerate launch --cpu`` starts one process).

Phases: arguments -> data -> model -> pseudo masks (each process its share) -> metadata, report (main process).

The run's concepts live in `examples/pseudo_labelling/`, a module each (arguments, data, model, resuming, writing,
finishing, starting_over; output_folder: the layout of the folder written); this script holds the run's outline:
`main`.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pseudo_labelling.arguments import parse_args
from pseudo_labelling.data import LabelledImages, load_splits
from pseudo_labelling.finishing import finish
from pseudo_labelling.model import load_model
from pseudo_labelling.output_folder import REPORT, WRITER, example_name, finished_outputs
from pseudo_labelling.resuming import missing_overlays, rows_to_do
from pseudo_labelling.starting_over import start_over
from pseudo_labelling.writing import write_example, write_pseudo_masks
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from weclip_hf.batch_jobs import (
    STATE_DIR,
    check_no_links,
    check_run_settings_or_start_over,
    decoding_workers,
    group_by_size,
    image_processor_setting,
    mark_unfinished,
    run_resumable,
)
from weclip_hf.evaluation import processor_input_size
from weclip_hf.hub import create_hub_repo
from weclip_hf.normalization import PixelNormalization
from weclip_hf.script_arguments import first_paragraph, process_device, process_state


def main(argv=None) -> dict | None:
    """Generate the pseudo-labelled dataset as the command line ``argv`` says; the main process returns the
    report."""
    # every process checks --output_dir (`check_output_dir`); the main process then makes its state folder first
    args = parse_args(argv, first_paragraph(__doc__))
    state = process_state(args.device)
    device = process_device(args.device, state)
    for note in args.split_notes:
        state.print(note)
    out = Path(args.output_dir)
    splits = [split for split in (args.split, args.validation_split) if split]
    check_no_links(out, [*splits, STATE_DIR, "overlays", REPORT])
    # 1. model and data, before anything is written: a run that fails there (a --split the dataset lacks, a
    # mistyped class name) leaves nothing
    model, processor = load_model(args, state, device)
    normalization = PixelNormalization.from_image_processor(processor)
    args.max_size = processor_input_size(processor)  # a larger photo's pseudo masks are computed at that size
    cfg = model.config
    class_names = list(zip(cfg.label_names, cfg.class_names))
    splits = load_splits(args, cfg.num_foreground_classes, cfg.semantic_loss_ignore_index, class_names, state)
    settings = {k: getattr(args, k) for k in ("model", "clip_model_name_or_path", "preset", "mode", "split")}
    settings.update(class_names=args.class_names, background_names=args.background_names)
    settings["image_processor"] = image_processor_setting(processor)
    models = ("model", "clip_model_name_or_path")
    check_run_settings_or_start_over(
        out,
        settings,
        state.is_main_process,
        state.wait_for_everyone,
        models,
        start_over=functools.partial(start_over, out) if args.overwrite_output_dir else None,
        removes="that run's dataset: its split folders' files, its records, report and the overlays they list",
        writer=WRITER,
    )
    if args.push_to_hub and state.is_main_process:  # fail now, not after labelling everything
        args.hub_dataset_id = create_hub_repo(
            args.hub_dataset_id or out.resolve().name, token=args.hub_token, repo_type="dataset"
        )

    num_workers = decoding_workers(args.num_workers, device.type)

    # 2. pseudo masks of --split, ground-truth masks of --validation_split: this process's share, without those
    # an earlier run did from the same input
    todo = {
        split: rows_to_do(out, split, dataset, columns, unreadable, args, state)
        for split, (dataset, columns, unreadable, _) in splits.items()
    }
    # and the overlays asked for of done rows of --split that an earlier run did not draw
    overlay_only = {
        split: missing_overlays(out, dataset, todo[split], args, state) if is_pseudo else set()
        for split, (dataset, _, _, is_pseudo) in splits.items()
    }
    # until `finish`, the folder is no dataset: neither the old one nor a mix of two runs
    if state.is_main_process:
        mark_unfinished(out, WRITER, finished_outputs(out, splits))
    state.wait_for_everyone()
    for split, (dataset, columns, _, is_pseudo) in splits.items():
        loader = DataLoader(
            LabelledImages(
                dataset,
                columns,
                cfg.num_foreground_classes,
                cfg.semantic_loss_ignore_index,
                sorted([*todo[split], *overlay_only[split]]),
                split,
                normalization,
            ),
            batch_size=args.batch_size,
            num_workers=num_workers,
            collate_fn=list,
        )
        for batch in tqdm(loader, desc=split, disable=not state.is_local_main_process):
            for group in group_by_size(batch):
                if is_pseudo:
                    write_pseudo_masks(model, group, args, out, split, overlay_only[split])
                else:
                    for item in group:
                        name = example_name(item["row"])
                        write_example(out, split, item, item["mask"], name, None, cfg.num_labels)

    # 3. metadata and report (main process), the dataset saved or pushed
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return finish(args, out, splits, cfg.id2label)


if __name__ == "__main__":
    run_resumable(main)

#!/usr/bin/env python
"""Segment images with a trained WeCLIP or WeCLIP+: one palette PNG label map per image, optional overlays,
per-class fractions.

    python examples/segment.py --model_name_or_path outputs/weclip-toy --images photos/ --output_dir seg
    python examples/segment.py --model_name_or_path weclip-voc --images "photos/**/*.jpg" --msf --crf \\
        --num_overlays 20 --output_dir seg
    accelerate launch examples/segment.py --model_name_or_path weclip-voc --dataset_name jxie/pascal-voc-2012 \\
        --split validation --dtype bfloat16 --output_dir seg-voc      # the processes split the images

The device: accelerate's (each process's own GPU under `accelerate launch`, else a GPU where there is one), or
--device (cpu, cuda, cuda:N, mps; one that torch does not find here is refused before the model loads). Several
processes take every n-th input each (`accelerate launch`; on CPUs: ``accelerate launch --multi_gpu
--num_processes N examples/segment.py --device cpu``, as ``accelerate launch --cpu`` starts one process).

Inputs: folders (searched recursively, linked folders too; hidden files and folders, and the output folders of
earlier runs (of one into the folder itself its labels/ and overlays/), left out; a file is named by its path
there, links not followed), files and glob patterns (``--images``), or a split of a Hub dataset, imagefolder
or saved dataset. Images are read as the "image-segmentation" pipeline reads them (EXIF orientation,
grayscale, CMYK, 16-bit, images below one patch); a file that cannot be read (a broken link too) is skipped
and listed by its path, never fatal (one an earlier run did is refused, its outputs kept, or with
--overwrite_output_dir dropped and skipped). What this script writes in --output_dir (labels/, overlays/,
.state/) is never an input: --output_dir may lie inside an --images folder, or be it. The script writes no
links there: a link among its outputs (those folders or what they hold, class_fractions.json) is refused, as
it would write into another folder.

Outputs in --output_dir: ``labels/<name>.png`` (palette PNG whose pixel values are the ids of the model's
``config.id2label``; ``<name>``: the path relative to the inputs' common folder without its suffix, with it where
two inputs would share a name, whatever its letter case or Unicode normalization (``a.jpg``, ``a.png``,
``a.png.png``; ``Photo.jpg``, ``photo.png``, or café with é composed or not: one file on macOS and Windows), or the
row number of a dataset; paths that differ in case or normalization only are refused), ``overlays/<name>.png``
for the first --num_overlays inputs (a re-run draws those that done inputs lack), and ``class_fractions.json`` (per image and overall: the fraction of pixels of each class; the skipped inputs with
the reason). Re-running the same command after an interruption continues: images whose label map exists are skipped
(every file is written atomically, flushed to disk first; one that cannot be read, empty or cut short by a power
loss, is redone), provided the label map was made from the same image: ``.state/inputs/<name>.json`` records each
one's input by its content (size and SHA-256 of its bytes). A label map of another input of the same name (a
changed file, another folder) is refused, or with --overwrite_output_dir replaced. A re-run with other settings, or
with another model saved at the same --model_name_or_path folder (its weights and config.json are recorded by their
SHA-256, its image processor by its settings; a Hub id's of the revision it resolves to), is refused, or with
--overwrite_output_dir starts over: it removes the earlier run's label maps, overlays, records and report, the files
each input's record lists as written for it (before it wrote them), never other files of the folder.

Phases: arguments -> inputs -> model -> segmentation loop (each process its share) -> report (main process).

The run's concepts live in `examples/segmenting/`, a module each (arguments, output_layout, image_files, naming,
inputs, starting_over, segmentation, report); this script holds the run's outline: `main` (the phases above) and
its checks of what --output_dir holds (`check_foreign_overlays`, `other_inputs`).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from segmenting.arguments import parse_args
from segmenting.inputs import ImageInputs, input_record, load_inputs
from segmenting.output_layout import IMAGE_FOLDERS, OUTPUT_FOLDERS, REPORT
from segmenting.report import exit_status, read_label_map, write_report
from segmenting.segmentation import load_model, overlay, segment
from segmenting.starting_over import start_over
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from weclip_hf.batch_jobs import (
    OUTPUTS,
    STATE_DIR,
    check_no_links,
    check_recorded_inputs,
    check_run_settings_or_start_over,
    decoding_workers,
    group_by_size,
    image_processor_setting,
    is_whole_image,
    process_share,
    read_input_record,
    recorded_outputs,
    remove_file,
    run_resumable,
    save_image,
    save_json,
    save_overlay,
    wants_overlay,
    write_skipped,
)
from weclip_hf.script_arguments import (
    crf_overrides,
    first_paragraph,
    process_device,
    process_state,
    scales_in_effect,
)
from weclip_hf.visualization import label_map_image
from weclip_hf.wording import counted, some_of

MODEL_SETTINGS = ("model_name_or_path",)  # the settings that name a model: its weights are recorded too


def main(argv=None) -> dict | None:
    """Segment the inputs as the command line ``argv`` says; the main process returns the report."""
    args = parse_args(argv, first_paragraph(__doc__))
    state = process_state(args.device)
    device = process_device(args.device, state)
    out = Path(args.output_dir)
    check_no_links(out, [*OUTPUT_FOLDERS, REPORT])
    model, processor = load_model(args, state, device)
    args.scales = scales_in_effect(args.scales, model.config)
    settings = {k: getattr(args, k) for k in ("model_name_or_path", "dtype", "msf", "crf", "crf_preset")}
    # the CRF's overrides recorded only when given, so that a folder of an earlier version goes on
    if overrides := crf_overrides(args):
        settings["crf_overrides"] = overrides
    settings["scales"] = args.scales if args.msf else None
    settings["image_processor"] = image_processor_setting(processor)
    # the inputs before anything is written: a run without inputs leaves nothing
    values, names, where = load_inputs(args, state.print)
    check_run_settings_or_start_over(
        out,
        settings,
        state.is_main_process,
        state.wait_for_everyone,
        MODEL_SETTINGS,
        start_over=functools.partial(start_over, out) if args.overwrite_output_dir else None,
        removes="that run's label maps, overlays and report (the files its records list; other files stay)",
        writer="examples/segment.py",
    )

    # 1. inputs: this process's share, without those an earlier run did from the same input (one that cannot be
    # read now is refused, or with --overwrite_output_dir redone: its earlier outputs go, and it is listed as skipped)
    label_path = {name: out / "labels" / f"{name}.png" for name in names}
    record_path = {name: out / STATE_DIR / "inputs" / f"{name}.json" for name in names}
    position = {name: i for i, name in enumerate(names)}
    done, _ = check_recorded_inputs(
        out,
        {name: read_input_record(record_path[name]) for name in names if label_path[name].exists()},
        lambda name: input_record(values, where, position[name]),
        args.overwrite_output_dir,
    )
    overlay_path = {name: out / "overlays" / f"{name}.png" for name in names}
    check_foreign_overlays(out, names, done, args, overlay_path, record_path)
    share = process_share(len(names), state.process_index, state.num_processes)
    # a label map that cannot be read (empty or cut short: a power loss) is redone
    todo = [i for i in share if names[i] not in done or not is_whole_image(label_path[names[i]])]
    # a done input whose overlay is asked for and missing (an earlier run without --num_overlays): its overlay, of
    # the label map written
    overlay_only = {
        i
        for i in share
        if i not in todo
        and wants_overlay(i, args.num_overlays)
        and not is_whole_image(overlay_path[names[i]])
    }
    # an input redone: what an earlier record of its name lists goes before the new record is written (another
    # input's outputs, --overwrite_output_dir; an earlier attempt's, which this run may not write again); without
    # a list (no record, an earlier version's) its label map only: an overlay of that name may be a user's file
    for name in (names[i] for i in todo):
        listed = recorded_outputs(record_path[name], out, IMAGE_FOLDERS)
        for path in listed if listed is not None else [label_path[name]]:
            remove_file(path, out)
    state.print(
        f"{counted(len(names), 'input')}; this process segments {len(todo)} and draws "
        f"{counted(len(overlay_only), 'overlay')} of done "
        "ones (the others: done or another process's)"
    )
    num_workers = decoding_workers(args.num_workers, device.type)
    loader = DataLoader(
        ImageInputs(values, where, sorted([*todo, *overlay_only]), processor),
        batch_size=args.batch_size,
        num_workers=num_workers,
        collate_fn=list,
    )

    # 2. segmentation: the record of the input first (with the files written for it), then the overlay, the
    # label map last (an input is done when its label map exists and its record names the same input)
    skipped = []
    for batch in tqdm(loader, desc="segmenting", disable=not state.is_local_main_process):
        skipped += [{"input": names[b["position"]], "reason": b["error"]} for b in batch if "error" in b]
        for group in group_by_size([b for b in batch if "error" not in b]):
            redone = [item for item in group if item["position"] not in overlay_only]
            predicted = iter(segment(model, processor, redone, args) if redone else [])
            for item in group:
                name = names[item["position"]]
                # an input of overlay_only has its label map: its overlay shows that one
                drawn_only = item["position"] in overlay_only
                labels = read_label_map(label_path[name]) if drawn_only else next(predicted)
                with_overlay = wants_overlay(item["position"], args.num_overlays)
                outputs = [overlay_path[name]] * with_overlay + [label_path[name]]
                save_json(
                    {**item["record"], OUTPUTS: [p.relative_to(out).as_posix() for p in outputs]},
                    record_path[name],
                )
                if with_overlay:
                    save_overlay(overlay(model, item, labels), overlay_path[name])
                if not drawn_only:
                    save_image(label_map_image(labels, model.config.num_labels), label_path[name])
    for entry in skipped:
        print(f"skipped {entry['input']}: {entry['reason']}")
    write_skipped(out, state.process_index, skipped)

    # 3. report: read back every label map (all processes' and earlier runs')
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    if others := other_inputs(out, names):
        print(
            f"Note: {out} also holds the outputs of {counted(len(others), 'input')} this run does not have "
            f"({some_of(others)}): "
            "an earlier run's, of other inputs or named from another common folder; class_fractions.json lists this "
            "run's."
        )
    return write_report(
        out, names, label_path, model.config.id2label, args.model_name_or_path, state.num_processes
    )


def check_foreign_overlays(
    out: Path,
    names: list[str],
    done: dict,
    args: argparse.Namespace,
    overlay_path: dict[str, Path],
    record_path: dict[str, Path],
) -> None:
    """Refuse, unless --overwrite_output_dir, to draw the overlay of an input that is not ``done`` over a file of its
    name in overlays/ (``overlay_path``) that no record of that input (``record_path``) lists as written: this script
    did not write it (train.py's overlays/ of a model folder, a user's file). Every process checks every input,
    before any image is written."""
    foreign = [
        f"overlays/{name}.png"
        for i, name in enumerate(names)
        if name not in done
        and wants_overlay(i, args.num_overlays)
        and overlay_path[name].exists()
        and overlay_path[name] not in (recorded_outputs(record_path[name], out, IMAGE_FOLDERS) or [])
    ]
    if foreign and not args.overwrite_output_dir:
        raise ValueError(
            f"{out} holds files not written by this script where it would draw this run's overlays "
            f"({some_of(foreign)}; train.py's overlays/ of a model folder, or your own): they would be replaced. "
            "Choose another --output_dir, or give --overwrite_output_dir to replace them."
        )


def other_inputs(out: Path, names: list[str]) -> list[str]:
    """The names of the inputs whose outputs ``out`` holds (their records) that are none of this run's ``names``:
    an earlier run's over other inputs, or over the same ones named from another common folder (an input from
    another folder added renames them all)."""
    records = (out / STATE_DIR / "inputs").rglob("*.json")
    recorded = {p.relative_to(out / STATE_DIR / "inputs").with_suffix("").as_posix() for p in records}
    return sorted(recorded - set(names))


if __name__ == "__main__":
    run_resumable(main, exit_status)

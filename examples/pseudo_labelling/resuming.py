"""A re-run of examples/generate_pseudo_labels.py in the folder of an earlier one: the rows it still has to do
(those an earlier run did from the same input are done), the overlays of done rows that it draws, and the records
of other inputs or of rows this run does not have (refused, or with --overwrite_output_dir dropped).
"""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState

from pseudo_labelling.data import row_record
from pseudo_labelling.output_folder import example_name, overlay_path, record_path, split_folders
from weclip_hf.batch_jobs import (
    STATE_DIR,
    check_recorded_inputs,
    is_whole_image,
    process_share,
    read_input_record,
    recorded_outputs,
    remove_file,
    wants_overlay,
)
from weclip_hf.wording import counted, some_of


def missing_overlays(out: Path, dataset, todo: list[int], args, state: PartialState) -> set[int]:
    """The positions in ``dataset`` of this process's share that are done (not in ``todo``) and whose overlay is
    asked for (--num_overlays) but missing: an earlier run drew none."""
    rows = list(dataset["source_row"])  # one column read, not the images
    share = process_share(len(dataset), state.process_index, state.num_processes)
    return {
        i
        for i in set(share) - set(todo)
        if wants_overlay(rows[i], args.num_overlays)
        and not is_whole_image(overlay_path(out, example_name(rows[i])))
    }


def rows_to_do(
    out: Path, split: str, dataset, columns, unreadable: dict[str, str], args, state: PartialState
) -> list[int]:
    """The positions in ``dataset`` of this process's share that an earlier run did not do from the same input;
    with --overwrite_output_dir, the records of the others, and of rows this run does not have (``unreadable``
    among them: `unreadable_rows`), dropped first (refused without it: `check_recorded_inputs`,
    `check_no_other_rows`)."""
    rows = list(dataset["source_row"])  # one column read, not the images
    position = {example_name(row): i for i, row in enumerate(rows)}
    recorded = {p.stem: read_input_record(p) for p in (out / STATE_DIR / split).glob("*.json")}
    done, changed = check_recorded_inputs(
        out,
        {name: record for name, record in recorded.items() if name in position},
        lambda name: row_record(dataset[position[name]], columns, split),
        args.overwrite_output_dir,
    )
    check_no_other_rows(out, split, recorded.keys() - position.keys(), unreadable, args.overwrite_output_dir)
    share = process_share(len(dataset), state.process_index, state.num_processes)
    if args.overwrite_output_dir:
        drop_records(out, split, args, changed & {example_name(rows[i]) for i in share})
        if state.is_main_process:  # rows this run does not have: their files go in finish_split
            drop_records(out, split, args, recorded.keys() - position.keys())
    return [i for i in share if example_name(rows[i]) not in done]


def check_no_other_rows(
    out: Path, split: str, others: set[str], unreadable: dict[str, str], overwrite: bool
) -> None:
    """Refuse, unless ``overwrite`` (--overwrite_output_dir: their records are dropped), the records in ``out`` of
    rows of ``split`` that this run does not have: rows it skipped as unreadable (``unreadable``: their image or
    mask changed since an earlier run did them), or rows of an earlier run of more rows. The dataset written would
    list them as this run's."""
    if not others or overwrite:
        return
    if now_unreadable := sorted(others & unreadable.keys()):
        shown = some_of([f"{name!r}: {unreadable[name]}" for name in now_unreadable])
        raise ValueError(
            f"{out} holds the outputs of {counted(len(now_unreadable), 'row')} of split {split!r} that an earlier "
            f"run did and whose image or mask this run could not read ({shown}). Fix the files and re-run, or give "
            "--overwrite_output_dir to drop their outputs."
        )
    raise ValueError(
        f"{out} holds the outputs of {counted(len(others), 'row')} of split {split!r} that this run does not have "
        f"({some_of([repr(name) for name in sorted(others)])}: an earlier run's, of more rows: another "
        "--max_samples or toy size), which the dataset written would list as this run's. Re-run with the earlier "
        "inputs, choose another --output_dir, or give --overwrite_output_dir to drop them."
    )


def drop_records(out: Path, split: str, args, names: set[str]) -> None:
    """--overwrite_output_dir: the records of examples to redo or drop and the files they list, before any is
    rewritten (a record of a version that listed none: its overlay by name, which that version wrote there)."""
    for name in names:
        listed = recorded_outputs(record_path(out, split, name), out, split_folders(split))
        if listed is None:
            listed = [out / "overlays" / f"{name}.png"] if split == args.split else []
        for path in [*listed, record_path(out, split, name)]:
            remove_file(path, out)

"""Starting over (--overwrite_output_dir over a run of examples/generate_pseudo_labels.py with other settings):
the earlier run's dataset, as its records list it, removed so that an interrupted start-over is finished by the
same command.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from pseudo_labelling.output_folder import WRITER, finished_outputs, split_folders
from weclip_hf.batch_jobs import (
    SETTINGS,
    STATE_DIR,
    check_no_links,
    mark_unfinished,
    recorded_outputs,
    remove_file,
)


def earlier_run(out: Path) -> dict[str, dict[Path, list[Path]]]:
    """The example records of the run in ``out``, by split, each with the files it lists as written for its
    example. Raises ValueError where a record lists none (written by a version before records listed them, or
    damaged): which overlays that run wrote cannot be told from a user's own."""
    splits = sorted(p.name for p in (out / STATE_DIR).iterdir() if p.is_dir())
    check_no_links(out, splits)  # this run's outputs were checked; the earlier run's split folders may differ
    listed = {
        split: {
            path: recorded_outputs(path, out, split_folders(split))
            for path in sorted((out / STATE_DIR / split).glob("*.json"))
        }
        for split in splits
    }
    if unlisted := [path for records in listed.values() for path, files in records.items() if files is None]:
        raise ValueError(
            f"{out} holds a dataset of a run with other settings whose records do not list the files it wrote "
            f"({unlisted[0]}; written by an earlier version, or damaged): starting over there could delete "
            "overlays of your own. Choose another --output_dir."
        )
    return listed


def remove_earlier_run(out: Path, listed: dict[str, dict[Path, list[Path]]]) -> None:
    """Remove the earlier run ``listed`` (`earlier_run`): the folder marked unfinished and its metadata and report
    removed first (`mark_unfinished`); each example's files, then its record; the other files of its split
    folders (an interrupted run's: the run deletes them as its own); its settings last, so that an interrupted
    start-over leaves a folder the same command finishes. Other files in ``out`` stay, in overlays/ too."""
    num_examples = sum(len(records) for records in listed.values())
    print(f"--overwrite_output_dir: removing the {num_examples} examples of the earlier run in {out}")
    mark_unfinished(out, WRITER, finished_outputs(out, listed))
    for records in listed.values():
        for record, outputs in records.items():
            for path in [*outputs, record]:
                remove_file(path, out)
    for split in listed:
        for path in [*(out / split).glob("images/*"), *(out / split).glob("masks/*")]:
            remove_file(path, out)
    remove_file(out / STATE_DIR / SETTINGS, out)


def start_over(out: Path) -> Callable[[], None]:
    """The removal of the earlier run in ``out`` (`check_run_settings_or_start_over`'s ``start_over``)."""
    return functools.partial(remove_earlier_run, out, earlier_run(out))

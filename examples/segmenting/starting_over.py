"""Starting over (--overwrite_output_dir over a run with other settings): the earlier run's files, as its records
list them, removed."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from segmenting.output_layout import IMAGE_FOLDERS, REPORT
from weclip_hf.batch_jobs import SETTINGS, STATE_DIR, recorded_outputs, remove_file
from weclip_hf.wording import counted


def earlier_run(out: Path) -> dict[Path, list[Path]]:
    """The input records of the run in ``out``, each with the files it lists as written for its input. Raises
    ValueError where a record lists none (written by a version before records listed them, or damaged): which files
    that run wrote cannot be told from a user's own."""
    records = sorted((out / STATE_DIR / "inputs").rglob("*.json"))
    listed = {path: recorded_outputs(path, out, IMAGE_FOLDERS) for path in records}
    if unlisted := [path for path, outputs in listed.items() if outputs is None]:
        raise ValueError(
            f"{out} holds outputs of a run with other settings whose records do not list the files it wrote "
            f"({unlisted[0]}; written by an earlier version, or damaged): starting over there could delete files of "
            "your own. Choose another --output_dir."
        )
    return listed


def remove_earlier_run(out: Path, listed: dict[Path, list[Path]]) -> None:
    """Remove the earlier run ``listed`` (`earlier_run`): each input's files, then its record; the report and the
    lists of skipped inputs; its settings last, so that an interrupted start-over leaves a folder the same command
    finishes. Other files in ``out`` stay, in labels/ and overlays/ too."""
    print(
        f"--overwrite_output_dir: removing the outputs of {counted(len(listed), 'input')} of the earlier run in "
        f"{out}"
    )
    for record, outputs in listed.items():
        for path in [*outputs, record]:
            remove_file(path, out)
    state = out / STATE_DIR
    for path in [out / REPORT, *sorted(state.glob("skipped-*.json")), state / SETTINGS]:
        remove_file(path, out)


def start_over(out: Path) -> Callable[[], None]:
    """The removal of the earlier run in ``out`` (`check_run_settings_or_start_over`'s ``start_over``)."""
    return functools.partial(remove_earlier_run, out, earlier_run(out))

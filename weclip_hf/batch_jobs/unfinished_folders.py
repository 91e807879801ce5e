"""A folder marked unfinished while a run rewrites the outputs read as a whole (`mark_unfinished`, until
`mark_finished`), which readers refuse (`check_finished`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .atomic_writes import save_json
from .input_records import read_record
from .link_safety import remove_file
from .state_folder import STATE_DIR

UNFINISHED = "unfinished.json"  # in STATE_DIR from `mark_unfinished` to `mark_finished`


def mark_unfinished(output_dir: str | Path, writer: str, finished_outputs: Iterable[str | Path]) -> None:
    """Mark ``output_dir`` as being rewritten by ``writer`` (the script, named by `check_finished`), then remove
    ``finished_outputs`` (the files a finished run writes last, which make the folder readable as a result), so
    that a run killed before `mark_finished` leaves no folder read as the old result mixed with new files."""
    save_json({"writer": writer}, Path(output_dir) / STATE_DIR / UNFINISHED)
    for path in finished_outputs:
        remove_file(path, output_dir)


def mark_finished(output_dir: str | Path) -> None:
    """Lift `mark_unfinished`'s mark: every output of the run is written."""
    remove_file(Path(output_dir) / STATE_DIR / UNFINISHED, output_dir)


def check_finished(folder: str | Path, flag: str) -> None:
    """Refuse a ``folder`` (given as ``flag``) that a run marked unfinished (`mark_unfinished`): killed or still
    running, it may hold files of two runs."""
    record = read_record(Path(folder) / STATE_DIR / UNFINISHED)
    if record is not None:
        raise ValueError(
            f"{flag} {folder} holds the outputs of an unfinished run of {record['writer']} (interrupted, or still "
            "running): some of its files may be an earlier run's. Re-run the command that wrote it (it continues "
            f"where it stopped), or choose another {flag}."
        )

"""The inputs a job could not read: each process lists its own (`write_skipped`), the main process merges this
run's (`read_skipped`) once every process is done.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

from ..json_files import read_json
from .atomic_writes import save_json
from .link_safety import remove_file
from .state_folder import STATE_DIR


def write_skipped(output_dir: str | Path, rank: int, skipped: list[dict]) -> Path:
    """List the inputs process ``rank`` could not read (each ``{"input", "reason"}``) in its state file."""
    return save_json(skipped, Path(output_dir) / STATE_DIR / f"skipped-{rank}.json")


def read_skipped(output_dir: str | Path, num_processes: int, done: Callable[[str], bool]) -> list[dict]:
    """The skipped inputs of the state files of this run's ``num_processes`` processes, once each, sorted, except
    those now ``done`` (an input fixed and processed by a later run). The files of other processes (an earlier run's
    with more processes, whose inputs this run tried again: their reasons are stale) are removed; a damaged state
    file (edited, or cut short) is left out with a warning naming it."""
    found: dict[str, dict] = {}
    state = Path(output_dir) / STATE_DIR
    ours = [state / f"skipped-{rank}.json" for rank in range(num_processes)]
    for stale in set(state.glob("skipped-*.json")) - set(ours):
        remove_file(stale, output_dir)
    for path in (path for path in ours if os.path.lexists(path)):
        try:
            entries = read_json(path, expect=list)
            names = [entry["input"] for entry in entries]
            if not all(isinstance(name, str) for name in names):
                raise ValueError(f"inputs named by other values than strings: {names[:3]}")
        except (ValueError, TypeError, KeyError) as err:
            warnings.warn(
                f"{path}: not a list of skipped inputs ({err!r}); left out of the report.", stacklevel=2
            )
            continue
        for name, entry in zip(names, entries):
            if not done(name):
                found[name] = entry
    return [found[k] for k in sorted(found)]

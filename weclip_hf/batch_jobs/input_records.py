"""The records of a job's inputs: each output's record names the input it was made from, by content
(`content_fingerprint`), so that a re-run keeps an output only if this run's input of that name is the same
(`check_recorded_inputs`); a record may list the outputs written for its input (`recorded_outputs`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..json_files import open_regular_file, read_json_if_present
from ..wording import counted, some_of

OUTPUTS = "outputs"  # in an input's record: the files written for it, relative to the output folder


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks (`open_regular_file`: a FIFO is refused, an
    OSError, not waited on)."""
    digest = hashlib.sha256()
    with open_regular_file(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_fingerprint(value: Any) -> dict[str, int | str] | None:
    """What an input is, by content: ``{"size", "sha256"}`` of its bytes: a file's (a path, or a ``{"bytes":
    None, "path"}`` dict as ``datasets`` stores images), stored bytes, or an array's (a PIL image's) values with
    its dtype and shape; None for None. Cheap next to running a model on it."""
    if value is None:
        return None
    if isinstance(value, dict) and value.get("bytes") is None:
        value = value.get("path")
    if isinstance(value, (str, os.PathLike)):
        return {"size": os.path.getsize(value), "sha256": sha256_of(value)}
    if isinstance(value, dict):
        data = value["bytes"]
    else:
        array = np.ascontiguousarray(np.asarray(value))
        data = f"{array.dtype.str}{array.shape}".encode() + array.tobytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_record(path: str | Path) -> dict | None:
    """The JSON record at ``path``, or None where there is none. Raises ValueError naming a file that holds no
    record (edited or damaged: the writers write records whole)."""
    try:
        return read_json_if_present(path, expect=dict)
    except ValueError as err:  # `read_json`'s refusals: no JSON object, or no file (a folder, a FIFO)
        problem = str(err).removeprefix(f"{path}: ").rstrip(".")
        raise ValueError(
            f"{path} holds no record ({problem}): a file of an earlier run's state, edited or damaged. Choose "
            "another --output_dir."
        ) from None


def read_input_record(path: str | Path) -> dict | None:
    """The record of one input's outputs at ``path`` (`read_record`), or None where there is none or it is damaged
    (edited, or cut short): that input's outputs are then of an input that cannot be told, refused or redone as
    those without a record (`check_recorded_inputs`), rather than stopping every run over the folder."""
    try:
        return read_record(path)
    except ValueError:  # the file holds no record
        return None


def recorded_outputs(path: str | Path, output_dir: str | Path, folders: Iterable[str]) -> list[Path] | None:
    """The files the input record at ``path`` lists as written for its input (``"outputs"``: paths relative to
    ``output_dir``), or None where it lists none (no record, a damaged one, or one of a version that did not list
    them). Raises ValueError for a list that is not one of files inside ``folders`` (the writer's output folders,
    relative to ``output_dir``): a record names only files its run wrote there."""
    record = read_input_record(path)
    if record is None or OUTPUTS not in record:
        return None
    listed, output_dir = record[OUTPUTS], Path(output_dir)
    if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
        raise ValueError(
            f"{path} lists its outputs as {listed!r}, not as a list of paths: edited or damaged."
        )
    paths = [output_dir / name for name in listed]
    inside = [output_dir / folder for folder in folders]
    if outside := [
        p for p in paths if ".." in p.parts or not any(p.parent.is_relative_to(f) for f in inside)
    ]:
        raise ValueError(f"{path} lists outputs outside {sorted(folders)}: {outside[:3]}: edited or damaged.")
    return paths


def check_recorded_inputs(
    output_dir: str | Path,
    recorded: dict[str, dict | None],
    current: Callable[[str], dict | None],
    overwrite: bool,
) -> tuple[set[str], set[str]]:
    """(done, changed): the outputs an earlier run finished (``recorded``: output name -> the record of the input
    it was made from, ``{"source", "input"}``; None where it has none) split into those made from this run's input
    of that name (``current(name)``, a record of the same form; compared by ``input``) and the others, among them
    those whose input cannot be read now (``current(name)`` None: a broken link, a file not readable).

    Raises ValueError naming the changed ones, or else the unreadable ones, unless ``overwrite``
    (--overwrite_output_dir: the caller redoes them, and lists an unreadable one as skipped): an output of another
    input is neither kept as this one's nor replaced without a word, and one whose input cannot be read now (a drive
    not mounted, say) is not removed without a word."""
    done, changed, unreadable = set(), {}, []
    for name in sorted(recorded):
        record, now = recorded[name], json.loads(json.dumps(current(name)))  # tuples -> lists, as read back
        if now is None:
            unreadable.append(name)
            continue
        if record is not None and record.get("input") == now["input"]:
            done.add(name)
        else:
            changed[name] = (record, now)
    if changed and not overwrite:
        shown = [
            f"{name!r} made from {record['source']}, not from this run's {now['source']} (their contents differ)"
            if record is not None and "input" in record
            else f"{name!r} without a record of its input (written by a version before inputs were recorded, or "
            "not by this script; or its record damaged)"
            for name, (record, now) in changed.items()
        ]
        raise ValueError(
            f"{output_dir} holds {counted(len(changed), 'output')} of other inputs under the names of this run's "
            f"inputs, which a re-run would take as done: {some_of(shown, separator='; ')}. Choose another "
            "--output_dir, or give --overwrite_output_dir to replace them with this run's."
        )
    if unreadable and not overwrite:
        raise ValueError(
            f"{output_dir} holds the outputs of {counted(len(unreadable), 'input')} that an earlier run did and this "
            f"run cannot read ({some_of(list(map(repr, unreadable)))}: a broken link, a file not readable). Fix them "
            "and re-run, or give --overwrite_output_dir to drop their outputs (they are then listed as skipped)."
        )
    return done, {*changed, *unreadable}

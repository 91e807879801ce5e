"""A job writes no links: `check_no_links` refuses one planted among its outputs before anything is written, and
the removal helpers (`remove_file`, `remove_temporary_files`) never follow one, so that no file of another folder
is written or deleted through it.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..wording import some_of
from .atomic_writes import TEMPORARY_PATTERNS


def walk_entries(folder: str | Path) -> Iterator[os.DirEntry]:
    """Every entry under ``folder``, recursively; links are listed, never followed (nothing for a missing
    ``folder``)."""
    try:
        with os.scandir(folder) as scan:
            entries = list(scan)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        yield entry
        if entry.is_dir(follow_symlinks=False):
            yield from walk_entries(entry.path)


def check_no_links(output_dir: str | Path, names: Iterable[str]) -> None:
    """Refuse links among a script's outputs ``names`` (paths relative to ``output_dir``: its files, and its
    folders with everything in them): the script writes none, so a link there was planted, and files written or
    deleted through it would be another folder's. ``output_dir`` itself may be a link (to a larger disk, say)."""
    output_dir = Path(output_dir)
    links = []
    for path in (output_dir / name for name in names):
        links += [path] if path.is_symlink() else [Path(e.path) for e in walk_entries(path) if e.is_symlink()]
    if links:
        shown = some_of([f"{link} -> {os.readlink(link)}" for link in links])
        raise ValueError(
            f"--output_dir {output_dir} holds links where this script writes its outputs ({shown}): the "
            "files it writes or deletes there would be another folder's. Remove the links, or choose another "
            "--output_dir."
        )


def remove_file(path: str | Path, root: str | Path) -> None:
    """Delete the file ``path`` under the folder ``root`` if it exists (a link: the link, never its target).
    Raises ValueError where a folder between ``root`` and ``path`` is a link: the file would be another folder's."""
    path, root = Path(path), Path(root)
    linked = [f for f in path.parents if f.is_relative_to(root) and f != root and f.is_symlink()]
    if linked:
        raise ValueError(
            f"{linked[-1]} is a link (to {os.readlink(linked[-1])}): removing {path} would delete a file of "
            "another folder. Remove the link, or choose another --output_dir."
        )
    path.unlink(missing_ok=True)


def remove_temporary_files(folders: Iterable[str | Path]) -> None:
    """Delete the temporary files that interrupted atomic writes left in ``folders`` (recursively; links are not
    followed)."""
    for folder in folders:
        for entry in walk_entries(folder):
            temporary = any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in TEMPORARY_PATTERNS)
            if temporary and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)

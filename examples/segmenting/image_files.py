"""The image files of --images: files, folders (recursive, linked folders too) and glob patterns, each file once,
without what this run and earlier runs wrote (their label maps and overlays are no photos)."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from segmenting.output_layout import IMAGE_FOLDERS, OUTPUT_FOLDERS
from weclip_hf.batch_jobs import SETTINGS, STATE_DIR


def find_image_files(
    patterns: list[str], output_dir: Path, note: Callable[[str], None] = print
) -> list[Path]:
    """Files of ``--images``, sorted, once each (a file reached by several paths, through links: by `link_last`'s
    first), by their paths as given (made absolute; links not followed, so that a linked file is named as it is in
    the folder): files named as they are; in folders (recursive, linked folders too: `folder_files`) and glob
    matches, the files with an image suffix PIL knows. What this script writes in ``output_dir``
    (`OUTPUT_FOLDERS`) is left out, so that an --output_dir inside an --images folder is not segmented by the next
    run, and so are the label maps and overlays of other runs (`without_earlier_outputs`); broken links are kept,
    to be listed as unreadable. ``note`` prints the folders left out."""
    suffixes = set(Image.registered_extensions())
    written = [(output_dir / folder).resolve() for folder in OUTPUT_FOLDERS]
    found: dict[Path, Path] = {}  # the file (links followed) -> the path it is named by
    for pattern in patterns:
        if Path(pattern).is_file():  # named as it is, whatever its suffix
            images = [Path(pattern)]
        else:
            matches = (
                [Path(pattern)]
                if Path(pattern).is_dir()
                else [Path(m) for m in glob.glob(pattern, recursive=True)]
            )
            files = [f for m in matches for f in (folder_files(m, output_dir, note) if m.is_dir() else [m])]
            images = [f for f in files if is_file_or_broken_link(f) and f.suffix.lower() in suffixes]
            images = without_earlier_outputs(images, output_dir, note)
        images = [f for f in images if not any(resolved(f).is_relative_to(folder) for folder in written)]
        if not images and not os.path.lexists(pattern) and not glob.has_magic(pattern):
            raise FileNotFoundError(f"--images {pattern!r}: no such file or folder.")
        if not images:
            raise FileNotFoundError(
                f"--images {pattern!r}: no image file there (the outputs in --output_dir {str(output_dir)!r} "
                "are left out)."
            )
        for image in map(Path, map(os.path.abspath, images)):
            found[resolved(image)] = min(found.get(resolved(image), image), image, key=link_last)
    return sorted(found.values())


def without_earlier_outputs(
    files: list[Path], output_dir: Path, note: Callable[[str], None] = print
) -> list[Path]:
    """``files`` but the label maps and overlays of the runs they are in (`earlier_run_of`): a folder or glob
    pattern over a folder that was a run's --output_dir, or over a run folder (``photos/**/*.png``), would segment
    them as photos. ``note`` names each run folder left out but ``output_dir`` (`find_image_files` leaves out this
    run's outputs)."""
    this_run = output_dir.resolve()
    runs = {f: run for f in files if (run := earlier_run_of(f)) is not None and run.resolve() != this_run}
    for run in sorted(set(runs.values())):
        note(
            f"Note: left out the labels/ and overlays/ of {run}: the outputs of a run ({STATE_DIR}/{SETTINGS})."
        )
    return [f for f in files if f not in runs]


def earlier_run_of(path: Path) -> Path | None:
    """The folder of the run (its ``.state/settings.json``) whose labels/ or overlays/ hold ``path``, else None."""
    for folder in path.parents:
        if folder.name in IMAGE_FOLDERS and (folder.parent / STATE_DIR / SETTINGS).is_file():
            return folder.parent
    return None


def link_last(path: Path) -> tuple[bool, Path]:
    """The order in which the paths of one file name it: a path without links first, then in sorted order."""
    return path != resolved(path), path


def folder_files(
    folder: Path, output_dir: Path, note: Callable[[str], None] = print, above: frozenset[Path] = frozenset()
) -> list[Path]:
    """The files under ``folder``, recursively, as glob patterns find them: hidden files and folders (``.name``)
    left out, and so are the folders that hold an earlier run of this script or generate_pseudo_labels.py (their
    ``.state/settings.json``: label maps, overlays, masks), named in a note; this run's ``output_dir`` is scanned
    whatever its state (its outputs are left out by `find_image_files`), so that every process, and every run, finds
    the same files while the main process writes its state; ``note`` prints the folders left out. Linked folders are
    followed, except a link to a folder it is in (``above``: the folders it is in, links followed), so that the scan
    ends."""
    if folder.resolve() in above:
        return []
    above = above | {folder.resolve()}
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():  # a file, a link to one, or a broken link
            files.append(entry)
        elif (entry / STATE_DIR / SETTINGS).is_file() and entry.resolve() != output_dir.resolve():
            note(f"Note: left out {entry}: the output folder of a run ({STATE_DIR}/{SETTINGS}), not photos.")
        else:
            files += folder_files(entry, output_dir, note, above)
    return files


def is_file_or_broken_link(path: Path) -> bool:
    """A file, or a link to nothing (unreadable: listed as skipped, not dropped silently)."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def resolved(path: Path) -> Path:
    """The absolute path of a file, links followed (a broken link: itself, in its resolved folder)."""
    return path.resolve() if path.exists() else path.parent.resolve() / path.name

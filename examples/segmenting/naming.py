"""The output names of the image files: their paths relative to their common folder, distinct also where a file
system ignores letter case and Unicode normalization (macOS's, Windows')."""

from __future__ import annotations

import collections
import os
import unicodedata
from pathlib import Path, PurePosixPath

from segmenting.output_layout import OUTPUT_SUFFIXES


def output_names(paths: list[Path]) -> list[str]:
    """Distinct output names, also to a file system that ignores letter case and Unicode normalization (macOS's,
    Windows'): paths relative to the files' common folder without suffix (``sub/a``); where that name is another
    file's too, whatever the case or normalization (`folded`: a.jpg, a.png; Photo.jpg, photo.png; café.jpg with é
    composed, café.png with e and an accent), or another file's name with suffix (a.png, a.png.png), or where its
    outputs would be the folder of another's (scan.jpg beside scan.png/page1.png: labels/scan.png), the file keeps
    its suffix (``a.jpg``, ``a.png``, ``a.png.png``; ``scan.jpg``); where they would be one all the same, refused.
    Paths that differ in letter case or normalization only (A.jpg, a.jpg, which only a file system that keeps them
    apart holds) are refused: their outputs would be one file on the other kind."""
    root = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path()
    relative = [p.relative_to(root).as_posix() for p in paths]
    same_case = collections.defaultdict(list)
    for path in relative:
        same_case[folded(path)].append(path)
    if clashes := [sorted(group) for group in same_case.values() if len(group) > 1]:
        raise ValueError(
            f"Input paths that differ in letter case or Unicode normalization only: {clashes[:5]}. Their outputs "
            "would be one file where those are ignored (macOS, Windows): rename one, or segment them in separate "
            "runs."
        )
    stems = [p.relative_to(root).with_suffix("").as_posix() for p in paths]
    counts = collections.Counter(map(folded, stems))
    with_suffix = {i for i, stem in enumerate(stems) if counts[folded(stem)] > 1}
    # a stem equal to a relative path kept, or whose output files are another name's folder (scan.jpg and
    # scan.png/page1.png: labels/scan.png): that file keeps its suffix too (grows, so it ends)
    while True:
        names = [relative[i] if i in with_suffix else stem for i, stem in enumerate(stems)]
        taken, folders = {folded(relative[i]) for i in with_suffix}, output_folders(names)
        clashing = {
            i
            for i, stem in enumerate(stems)
            if i not in with_suffix and (folded(stem) in taken or clashes_with_folder(stem, folders))
        }
        if not clashing:
            break
        with_suffix |= clashing
    if len(set(map(folded, names))) != len(names):  # never: one output would overwrite another's
        raise RuntimeError(f"output names not unique: {sorted(n for n in names if names.count(n) > 1)}")
    if clashes := [relative[i] for i, name in enumerate(names) if clashes_with_folder(name, folders)]:
        raise ValueError(
            "Inputs whose outputs would be the folders of other inputs' outputs, with their suffixes too: "
            f"{clashes[:5]} (a.png, a.jpg and a folder a.png.png/). Rename one, or segment them in separate runs."
        )
    return names


def folded(name: str) -> str:
    """``name`` as a file system that ignores letter case and Unicode normalization compares it (macOS's, Windows'):
    composed (NFC), then in lower case as `str.lower` makes it, character by character (``casefold`` would also
    equate ß and ss, which those file systems keep apart)."""
    return unicodedata.normalize("NFC", name).lower()


def output_folders(names: list[str]) -> set[str]:
    """The folders of the outputs of ``names`` (``sub`` of ``sub/a``), `folded`."""
    return {folded(str(parent)) for name in names for parent in PurePosixPath(name).parents}


def clashes_with_folder(name: str, folders: set[str]) -> bool:
    """Whether an output file of ``name`` (``<name>.png``, its record ``<name>.json``) would be one of the
    ``folders`` of other outputs (`output_folders`), whatever the letter case or normalization."""
    return any(folded(f"{name}{suffix}") in folders for suffix in OUTPUT_SUFFIXES)

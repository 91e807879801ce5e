"""The layout of the folder examples/generate_pseudo_labels.py writes: the name of a row's outputs, where its
record (the mark that it is done) and overlay lie, the folders of a split's files, the files that make the folder a
dataset, the report, and the writer recorded in its settings.
"""

from __future__ import annotations

from pathlib import Path

from weclip_hf.batch_jobs import STATE_DIR
from weclip_hf.data.folders import PSEUDO_LABEL_REPORT

REPORT = PSEUDO_LABEL_REPORT
# the writer recorded in the settings, which `check_finished` names to the readers of an unfinished folder
WRITER = "examples/generate_pseudo_labels.py"


def example_name(row: int) -> str:
    """The file name (without suffix) of the outputs of the dataset's row ``row``: ``000042``."""
    return f"{row:06d}"


def record_path(out: Path, split: str, name: str) -> Path:
    """The record of an example, the mark that it is done."""
    return out / STATE_DIR / split / f"{name}.json"


def overlay_path(out: Path, name: str) -> Path:
    """The overlay of the example named ``name`` (`example_name`)."""
    return out / "overlays" / f"{name}.png"


def split_folders(split: str) -> tuple[str, ...]:
    """The folders (relative to --output_dir) that hold the files written for the examples of ``split``."""
    return f"{split}/images", f"{split}/masks", "overlays"


def finished_outputs(out: Path, splits) -> list[Path]:
    """The files a finished run writes last, which make ``out`` a dataset: the splits' metadata, the report."""
    return [*(out / split / "metadata.jsonl" for split in splits), out / REPORT]

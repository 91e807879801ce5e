"""Datasets in local folders and folder-based datasets: the checks of a local folder (a directory; a saved
DatasetDict without an empty split; an imagefolder whose metadata lists rows, not PASCAL VOC's own release layout), a
folder of pseudo masks, the split a folder is read as, and a folder-based dataset loaded split by split where
`datasets` refuses one load of its splits."""

from __future__ import annotations

from pathlib import Path

from ..json_files import read_json, read_regular_file, utf8_text


def check_local_dataset(path: str, flag: str) -> None:
    """Refuse a local dataset ``path`` (given as ``flag``) that is not an existing directory."""
    if not Path(path).expanduser().exists():
        raise FileNotFoundError(f"{flag} {path}: the directory does not exist.")
    if not Path(path).expanduser().is_dir():
        raise NotADirectoryError(f"{flag} {path} is a file, not a dataset directory.")


def check_saved_splits(dataset_path: str) -> None:
    """Refuse a ``save_to_disk`` dataset with a split that holds no examples (``datasets`` fails to load it with
    an IndexError)."""
    root = Path(dataset_path).expanduser()
    for state in sorted([root / "state.json", *root.glob("*/state.json")]):
        if state.is_file() and not read_json(state, expect=dict).get("_data_files", [None]):
            split = state.parent.name if state.parent != root else "the dataset"
            raise ValueError(
                f"Split {split!r} of --dataset_path {dataset_path} is empty: it has no examples."
            )


# the largest metadata file read whole to count its rows (COCO's 118k images: ~10 MB)
MAX_IMAGEFOLDER_METADATA_BYTES = 2**30
# the metadata files of an imagefolder (`datasets`' folder-based builder)
METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
# the report beside the splits of an imagefolder of pseudo masks that examples/generate_pseudo_labels.py wrote
PSEUDO_LABEL_REPORT = "pseudo_label_report.json"


def holds_pseudo_masks(data_dir: str | None) -> bool:
    """Whether ``data_dir`` is a folder of pseudo masks written by examples/generate_pseudo_labels.py."""
    return data_dir is not None and (Path(data_dir) / PSEUDO_LABEL_REPORT).is_file()


# the folders of PASCAL VOC's own release (VOCdevkit/VOC2012), which is not an imagefolder
VOC_RELEASE_FOLDERS = ("JPEGImages", "SegmentationClass", "ImageSets")


def check_imagefolder_metadata(data_dir: str, flag: str = "--data_dir") -> None:
    """Refuse PASCAL VOC's own folder layout (``datasets`` would guess splits from ImageSets/, e.g. a 'validation'
    split of val.txt's lines, and fail far from the cause) and an imagefolder whose metadata file lists no row
    (``datasets`` fails on it with an IndexError); ``flag``: how the folder was given (--data_dir, or --dataset_name
    for a local folder)."""
    root = Path(data_dir).expanduser()
    found = sorted(root.rglob("metadata.*"))  # one walk of the folder, which may hold 100,000s of images
    if all((root / name).is_dir() for name in VOC_RELEASE_FOLDERS) and not found:
        raise ValueError(
            f"{flag} {data_dir} is laid out as PASCAL VOC's own release (JPEGImages/, SegmentationClass/, "
            "ImageSets/), not as an imagefolder: use the Hub dataset (--dataset_name, README 'Reproducing VOC "
            "and COCO') or build an imagefolder (train/ and validation/ with a metadata.jsonl naming each image and "
            "its mask: docs/training.md, 'The data')."
        )
    for path in (p for p in found if p.name in METADATA_NAMES):
        text = utf8_text(read_regular_file(path, max_bytes=MAX_IMAGEFOLDER_METADATA_BYTES), str(path))
        lines = [line for line in text.splitlines() if line.strip()]
        header = 1 if path.suffix == ".csv" else 0
        if len(lines) <= header:
            raise ValueError(
                f"{flag} {data_dir}: {path} lists no images (it has no rows); an imagefolder needs one row "
                "per image (file_name and its labels or mask)."
            )


def load_folder_dataset(
    path: str, streaming: bool = False, *, data_dir: str | None = None, name: str | None = None
):
    """The splits of a folder-based dataset: ``path`` "imagefolder" with ``data_dir`` (--data_dir), or a local folder
    or Hub repository (--dataset_name, its config ``name``). Where its splits' metadata files hold different fields
    (image-level labels in train/, masks in validation/: docs/training.md, "The data") or formats, or its Parquet
    splits different columns, which `datasets` refuses in one load (`_splits_load_apart`), or where some split
    folders hold a metadata file and others none (a folder per class in train/: `datasets` would read those with
    the other split's columns), each split is loaded on its own (its files found by `datasets`' own split
    patterns), its columns of nothing but nulls dropped."""
    import datasets
    from datasets.data_files import get_data_patterns
    from datasets.exceptions import DatasetGenerationError

    local = Path(data_dir or path).expanduser()
    if not _split_folders_differ_in_metadata(local):
        try:
            ds = datasets.load_dataset(path, name, data_dir=data_dir, streaming=streaming)
            # a stream's columns are those of the first file: a split of other columns fails when first read
            # (undecoded: an unreadable first image is for the reader, --skip_unreadable_images, to meet)
            for split in ds.values() if streaming else ():
                next(iter(split.decode(False)), None)
            return ds
        except (ValueError, DatasetGenerationError) as err:
            if not _splits_load_apart(err):
                raise
    # a Hub repository: its files, as `datasets` reads them
    base = str(local) if local.is_dir() else f"hf://datasets/{path}"
    splits = {}
    for split, patterns in get_data_patterns(base).items():
        ds = datasets.load_dataset(
            path, name, data_dir=data_dir, data_files={split: patterns}, split=split, streaming=streaming
        )
        features = ds.features or {}
        nulls = [k for k, v in features.items() if isinstance(v, datasets.Value) and v.dtype == "null"]
        splits[str(split)] = ds.remove_columns(nulls) if nulls else ds
    return (datasets.IterableDatasetDict if streaming else datasets.DatasetDict)(splits)


def _splits_load_apart(error: BaseException) -> bool:
    """Whether `datasets` refused a load because its splits differ, which a load of each split on its own reads:
    metadata files of other fields ("have different features") or formats (metadata.csv in one, .jsonl in another:
    "different extensions"), Parquet files of other columns (a ``DatasetGenerationError`` caused by "column names
    don't match")."""
    causes = []
    while error is not None and len(causes) < 10:
        causes.append(str(error))
        error = error.__cause__ or error.__context__
    refusals = (
        "have different features",
        "metadata files with different extensions",
        "column names don't match",
    )
    return any(refusal in text for text in causes for refusal in refusals)


def imagefolder_split_name(name: str) -> str | None:
    """The split as which `datasets`' imagefolder reads a folder ``name`` back (`get_data_patterns`, the rule
    `load_folder_dataset` and ``load_dataset("imagefolder", data_dir=...)`` follow): ``name`` itself for train,
    validation and test; another name for one it takes as a spelling of those (val, dev: validation; training,
    train_aug: train); None for a name it reads as no split (unlabeled, trainaug: beside other splits left out,
    alone read with every file of the folder as one train split)."""
    import tempfile

    from datasets.data_files import get_data_patterns

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / name).mkdir()
        (Path(folder) / name / "metadata.jsonl").touch()
        patterns = get_data_patterns(folder)
    found = [str(split) for split, globs in patterns.items() if globs != ["**"]]
    return found[0] if found else None


def _split_folders_differ_in_metadata(folder: Path) -> bool:
    """Whether some of a local ``folder``'s split folders hold an imagefolder metadata file and others none."""
    if not folder.is_dir():
        return False
    held = {
        any(p.name in METADATA_NAMES for p in split.rglob("metadata.*"))
        for split in folder.iterdir()
        if split.is_dir() and not split.name.startswith(".")
    }
    return len(held) > 1

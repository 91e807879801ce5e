"""The data of examples/generate_pseudo_labels.py: the splits read (image-level labels added, unreadable rows
dropped and listed), what a row's outputs are made from (its record of the input), the images as the model reads
them.
"""

from __future__ import annotations

from accelerate import PartialState
from torch.utils.data import Dataset

from pseudo_labelling.output_folder import example_name
from weclip_hf.batch_jobs import content_fingerprint
from weclip_hf.data.batches import read_example
from weclip_hf.data.columns import resolve_columns
from weclip_hf.data.decoding import file_path, row_name
from weclip_hf.data.image_labels import add_image_labels
from weclip_hf.data.sources import DataSource, load_dataset_splits
from weclip_hf.data.transforms import multi_hot, normalize


def load_splits(args, num_classes: int, ignore_index: int, class_names, state: PartialState) -> dict:
    """{split: (dataset with image_labels and a ``source_row`` column, its columns, its unreadable rows, whether
    it is pseudo-labelled)}: --split and, if asked, --validation_split (which needs masks). Unreadable images are
    dropped and listed (the LabelSummary; `unreadable_rows`)."""
    source = DataSource.from_args(args, toy_sizes=(args.toy_train_images, args.toy_val_images))
    # a --validation_split the dataset lacks is refused by load_dataset_splits; without one, "none" asks for none
    # (and for no note on how train.py would find one)
    train, val, _ = load_dataset_splits(
        source,
        train_split=args.split,
        validation_split=args.validation_split or "none",
        preset=args.preset,
        dataset_classes=False,  # the model's classes
    )
    if args.max_samples:
        train = train.select(range(min(args.max_samples, len(train))))
    splits = {}
    for name, dataset, is_pseudo in ((args.split, train, True), (args.validation_split, val, False)):
        if dataset is None or not name:
            continue
        columns = resolve_columns(
            dataset.column_names,
            args.image_column,
            args.mask_column,
            args.labels_column if is_pseudo else None,
            require_mask=not is_pseudo,
            features=dataset.features,
            class_names=class_names,
            example=lambda dataset=dataset: dataset[0],
        )
        num_rows = len(dataset)
        dataset = dataset.add_column("source_row", list(range(num_rows)))  # names stay when rows are dropped
        with state.main_process_first():
            dataset, summary = add_image_labels(
                dataset,
                columns,
                num_classes,
                ignore_index,
                args.labels_zero_based,
                class_names=class_names,
                skip_unreadable=True,
            )
        state.print(f"{name}: {summary}")
        unreadable = unreadable_rows(num_rows, dataset["source_row"], summary.unreadable)
        splits[name] = (dataset, columns, unreadable, is_pseudo)
    return splits


def unreadable_rows(num_rows: int, kept: list[int], sources: list[str]) -> dict[str, str]:
    """The rows of a split of ``num_rows`` that were dropped as unreadable (those not ``kept``), by `example_name`,
    each with its file or row as ``sources`` (the LabelSummary's, in row order) names it."""
    dropped = sorted(set(range(num_rows)) - set(kept))
    return {example_name(row): source for row, source in zip(dropped, sources, strict=True)}


def row_record(example: dict, columns, split: str) -> dict:
    """What a row's outputs are made from: ``{"source": its image file or row, "input": the content_fingerprint
    of its image and mask and its image-level labels}``."""
    mask = example.get(columns.mask) if columns.mask else None
    return {
        "source": file_path(example[columns.image]) or row_name(example["source_row"], split),
        "input": {
            "image": content_fingerprint(example[columns.image]),
            "mask": content_fingerprint(mask),
            "image_labels": list(example["image_labels"]),
        },
    }


class LabelledImages(Dataset):
    """Rows of a split (image-level labels added), at ``positions``: the image normalized with ``normalization``
    [3, H, W], the RGB image, the mask if any (checked as it is read: `read_example`), multi-hot labels [C], the
    stored image value (copied to the output), the row's `row_record` and its position."""

    def __init__(
        self,
        dataset,
        columns,
        num_classes: int,
        ignore_index: int,
        positions: list[int],
        split: str,
        normalization,
    ):
        self.dataset, self.columns, self.num_classes, self.ignore_index = (
            dataset,
            columns,
            num_classes,
            ignore_index,
        )
        self.positions, self.split, self.normalization = positions, split, normalization

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict:
        example = self.dataset[self.positions[i]]
        row = row_name(example["source_row"], self.split)
        image, mask = read_example(
            example, self.columns, row, self.dataset.features, self.num_classes, self.ignore_index
        )
        return {
            "position": self.positions[i],
            "row": example["source_row"],
            "record": row_record(example, self.columns, self.split),
            "stored": example[self.columns.image],
            "rgb": image,
            "mask": mask,
            "pixel_values": normalize(image, self.normalization),
            "image_labels": example["image_labels"],
            "class_labels": multi_hot(example["image_labels"], self.num_classes),
        }

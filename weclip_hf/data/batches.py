"""PyTorch datasets of WeCLIP batches: training examples (augmented crops, from a split read whole or streamed)
and evaluation examples at their own size, each image and mask read and checked as it is met; the epoch sampler, the
collate functions, a streamed split read into memory (`materialize`) and a process's share of an evaluation set."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, Subset, get_worker_info

from ..batch_jobs import group_by_size, process_share
from ..image_reading import to_rgb_uint8
from ..normalization import PixelNormalization
from .columns import Columns, is_streaming
from .decoding import UnreadableImageError, decode_image, describe, split_name, undecoded
from .masks import checked_mask, mask_array
from .transforms import TrainAugmentation, mask_dtype, multi_hot, normalize


def read_example(
    example: dict,
    columns: Columns,
    row: str,
    features=None,
    num_classes: int | None = None,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The image (uint8 [H, W, 3]) and mask ([H, W] array of ids, or None) of an example; an unreadable file
    raises `UnreadableImageError` naming it (``row`` where it has no path). ``features``: the dataset's (modes).
    With ``num_classes``, the mask is refused unless it has ids 0..C or ``ignore_index`` and its image's size
    (`checked_mask`, as `add_image_labels` checks a split ahead: here also a stream's, whose images are not read
    ahead; the `mask_dtype` cast of training masks relies on it)."""
    features = features or {}
    image = decode_image(example[columns.image], columns.image, row, features.get(columns.image))
    mask = None
    if columns.mask is not None and example.get(columns.mask) is not None:
        mask = decode_image(example[columns.mask], columns.mask, row, features.get(columns.mask))
        if num_classes is None:
            mask = mask_array(mask, describe(example[columns.mask], columns.mask, row))
        else:
            mask = checked_mask(example, columns, image, mask, row, num_classes, ignore_index)
    return to_rgb_uint8(image), mask


def train_item(
    example: dict,
    columns: Columns,
    num_classes: int,
    augment: TrainAugmentation,
    rng: np.random.Generator,
    row: str = "an example",
    features=None,
) -> dict[str, torch.Tensor]:
    """One training example: augmented image, multi-hot image labels, pixel mask, (mask labels if any)."""
    image, mask = read_example(example, columns, row, features, num_classes, augment.ignore_index)
    if mask is not None:  # checked ids (0..C, ignore): the cast keeps them
        mask = mask.astype(mask_dtype(num_classes, augment.ignore_index), copy=False)
    image, mask, valid = augment(image, mask, rng)
    item = {
        "pixel_values": normalize(image, augment.normalization),
        "class_labels": multi_hot(example["image_labels"], num_classes),
        "pixel_mask": torch.from_numpy(valid.astype(np.uint8)),
    }
    if mask is not None:
        item["labels"] = torch.from_numpy(mask.astype(np.int64))
    return item


class SharedEpoch:
    """The epoch that seeds a training set's crops and flips, held in shared memory (a 0-dim int64 tensor, which
    torch's DataLoader workers share, forked or spawned): set as a plain attribute in the main process, it never
    reached the workers of ``persistent_workers=True``, which drew every epoch's crops as the first epoch's."""

    def __init__(self):
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch of the crops and flips drawn now."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops and flips of ``epoch``, in this process and in the DataLoader's workers."""
        self._epoch.fill_(epoch)


class WeakSegmentationDataset(SharedEpoch, Dataset):
    """Training examples: augmented image, multi-hot image labels, pixel mask, (mask labels if any).

    Augmentation randomness is a function of (seed, epoch, index), so a resumed run sees exactly the
    same crops as an uninterrupted one, with any number of DataLoader workers. Images and masks are decoded
    here (`decode_image`): an unreadable file raises an error naming it (`add_image_labels` has checked them
    all before training).
    """

    def __init__(
        self, dataset, columns: Columns, num_classes: int, augment: TrainAugmentation, seed: int = 0
    ):
        self.dataset = undecoded(dataset, [columns.image, columns.mask])
        self.columns, self.num_classes, self.split = columns, num_classes, split_name(dataset)
        self.augment, self.seed = augment, seed
        super().__init__()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        row = f"training example {index}" + (f" of split {self.split!r}" if self.split else "")
        return train_item(
            self.dataset[index],
            self.columns,
            self.num_classes,
            self.augment,
            rng,
            row,
            getattr(self.dataset, "features", None),
        )


class StreamingWeakSegmentationDataset(SharedEpoch, IterableDataset):
    """Training examples from a streamed ``datasets.IterableDataset`` (no length, no random access).

    Order: a shuffle buffer of ``shuffle_buffer_size`` examples (and shuffled shards) seeded by
    (seed, epoch) (``datasets`` uses seed + epoch); augmentation randomness is a function of (seed,
    epoch, DataLoader worker, position in the stream). A pass is therefore the same every time, which
    is what resuming relies on: it replays the interrupted pass and skips the batches already trained
    on. With DataLoader workers, ``datasets`` splits the shards among them.

    A stream cannot be checked ahead: an unreadable image or mask raises an error naming its file when it
    is met, or, with ``skip_unreadable=True``, is skipped with a warning naming it (and listed in
    ``skipped``, in the process that met it). The other examples keep their crops, so resuming still
    replays a pass exactly.
    """

    def __init__(
        self,
        dataset,
        columns: Columns,
        num_classes: int,
        augment: TrainAugmentation,
        seed: int = 0,
        shuffle_buffer_size: int = 1000,
        skip_unreadable: bool = False,
    ):
        self.split = split_name(dataset)
        dataset = undecoded(dataset, [columns.image, columns.mask])
        if shuffle_buffer_size > 0:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        self.dataset, self.columns, self.num_classes = dataset, columns, num_classes
        self.augment, self.seed = augment, seed
        self.skip_unreadable, self.skipped = skip_unreadable, []
        super().__init__()

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops and flips, and the shuffle (``datasets``'), of pass ``epoch``."""
        super().set_epoch(epoch)
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        worker = get_worker_info()
        worker_id = worker.id if worker is not None else 0
        where = f"streamed split {self.split!r}" if self.split else "the stream"
        for position, example in enumerate(self.dataset):
            rng = np.random.default_rng([self.seed, self.epoch, worker_id, position])
            row = f"example {position} of pass {self.epoch} over {where}" + (
                f" (DataLoader worker {worker_id})" if worker is not None else ""
            )
            try:
                item = train_item(
                    example,
                    self.columns,
                    self.num_classes,
                    self.augment,
                    rng,
                    row,
                    getattr(self.dataset, "features", None),
                )
            except UnreadableImageError as err:
                if not self.skip_unreadable:
                    raise
                if err.source not in self.skipped:
                    self.skipped.append(err.source)
                warnings.warn(f"Skipped unreadable {err.source}: {err.reason}", stacklevel=1)
                continue
            yield item


class EvalSegmentationDataset(Dataset):
    """Evaluation examples at the original size: normalized image, mask labels, multi-hot labels.
    ``normalization``: the statistics of the model's image processor (`PixelNormalization.from_image_processor`);
    masks are checked against ``num_classes`` and ``ignore_index`` as they are read (`read_example`)."""

    def __init__(
        self,
        dataset,
        columns: Columns,
        num_classes: int,
        normalization: PixelNormalization,
        ignore_index: int = 255,
    ):
        if columns.mask is None:
            raise ValueError("Evaluation needs a mask column (pixel ground truth).")
        self.dataset = undecoded(dataset, [columns.image, columns.mask])
        self.columns, self.num_classes, self.split = columns, num_classes, split_name(dataset)
        self.normalization, self.ignore_index = normalization, ignore_index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.dataset[index]
        row = f"evaluation example {index}" + (f" of split {self.split!r}" if self.split else "")
        features = getattr(self.dataset, "features", None)
        image, mask = read_example(example, self.columns, row, features, self.num_classes, self.ignore_index)
        if mask is None:
            raise ValueError(f"{row.capitalize()} has no mask (column {self.columns.mask!r} is empty).")
        return {
            "pixel_values": normalize(image, self.normalization),
            "labels": torch.from_numpy(mask.astype(np.int64)),
            "class_labels": multi_hot(example["image_labels"], self.num_classes),
        }


class EpochShuffleSampler(Sampler[int]):
    """A permutation per epoch from (seed, epoch): reproducible, and resumable at any position."""

    def __init__(self, length: int, seed: int = 0):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())


def collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack the tensors of a list of examples (all examples must have the same keys and sizes)."""
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


def collate_by_size(examples: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """`collate` of evaluation examples whose images may differ in size (a validation set keeps each image's own
    size): one stacked batch per image size, in the order the sizes first appear."""
    return [collate(group) for group in group_by_size(examples)]


def materialize(dataset, limit: int | None = None, skip_unreadable: bool = False):
    """A random-access ``datasets.Dataset`` of (the first ``limit`` examples of) a dataset; a streamed
    one is read once into memory (meant for a validation split: evaluation and overlays index it).

    A streamed image that cannot be read raises an error naming its file, or with ``skip_unreadable=True``
    is left out with a warning naming it (random-access data is checked later, by `add_image_labels`).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit (--max_eval_samples) must be >= 1, got {limit}.")
    if not is_streaming(dataset):
        return dataset.select(range(min(limit, len(dataset)))) if limit else dataset
    import datasets

    features = dataset.features
    images = [c for c, f in (features or {}).items() if isinstance(f, datasets.Image) and f.decode]
    split = split_name(dataset)
    where = f"streamed split {split!r}" if split else "the stream"
    stream = undecoded(dataset, images)
    rows, skipped = [], 0
    for position, row in enumerate(stream.take(limit) if limit else stream):
        try:  # decoded here, as `datasets` would have, but naming the file that fails
            for column in images:
                row[column] = decode_image(
                    row[column], column, f"example {position} of {where}", features[column]
                )
        except UnreadableImageError as err:
            if not skip_unreadable:
                raise
            warnings.warn(f"Skipped unreadable {err.source}: {err.reason}", stacklevel=1)
            skipped += 1
            continue
        rows.append(row)
    if not rows:
        raise ValueError(
            "The streamed validation split is empty"
            + (f" ({skipped} unreadable examples skipped)." if skipped else ".")
        )
    return datasets.Dataset.from_list(
        rows, features=features, split=datasets.NamedSplit(split) if split else None
    )


def process_subset(dataset: Dataset, process_index: int, num_processes: int) -> Subset:
    """One process's share of an evaluation set (`process_share`'s examples; the shares' confusion matrices are
    summed; a share may be empty)."""
    return Subset(dataset, process_share(len(dataset), process_index, num_processes))

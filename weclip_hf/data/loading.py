"""From a dataset (Hub, local folder, or the toy world) to PyTorch datasets of WeCLIP batches."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from ..presets import preset_config_kwargs
from .adapters import DATASET_PRESETS, Columns, is_streaming
from .transforms import TrainAugmentation, load_rgb_uint8, multi_hot, normalize


def train_item(
    example: dict, columns: Columns, num_classes: int, augment: TrainAugmentation, rng: np.random.Generator
) -> dict[str, torch.Tensor]:
    """One training example: augmented image, multi-hot image labels, pixel mask, (mask labels if any)."""
    image = load_rgb_uint8(example[columns.image])
    mask = None
    if columns.mask is not None and example.get(columns.mask) is not None:
        mask = np.asarray(example[columns.mask], dtype=np.uint8)
    image, mask, valid = augment(image, mask, rng)
    item = {
        "pixel_values": normalize(image),
        "class_labels": multi_hot(example["image_labels"], num_classes),
        "pixel_mask": torch.from_numpy(valid.astype(np.uint8)),
    }
    if mask is not None:
        item["labels"] = torch.from_numpy(mask.astype(np.int64))
    return item


class WeakSegmentationDataset(Dataset):
    """Training examples: augmented image, multi-hot image labels, pixel mask, (mask labels if any).

    Augmentation randomness is a function of (seed, epoch, index), so a resumed run sees exactly the
    same crops as an uninterrupted one, with any number of DataLoader workers.
    """

    def __init__(
        self, dataset, columns: Columns, num_classes: int, augment: TrainAugmentation, seed: int = 0
    ):
        self.dataset, self.columns, self.num_classes = dataset, columns, num_classes
        self.augment, self.seed, self.epoch = augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return train_item(self.dataset[index], self.columns, self.num_classes, self.augment, rng)


class StreamingWeakSegmentationDataset(IterableDataset):
    """Training examples from a streamed ``datasets.IterableDataset`` (no length, no random access).

    Order: a shuffle buffer of ``shuffle_buffer_size`` examples (and shuffled shards) seeded by
    (seed, epoch) (``datasets`` uses seed + epoch); augmentation randomness is a function of (seed,
    epoch, DataLoader worker, position in the stream). A pass is therefore the same every time, which
    is what resuming relies on: it replays the interrupted pass and skips the batches already trained
    on. With DataLoader workers, ``datasets`` splits the shards among them.
    """

    def __init__(
        self,
        dataset,
        columns: Columns,
        num_classes: int,
        augment: TrainAugmentation,
        seed: int = 0,
        shuffle_buffer_size: int = 1000,
    ):
        if shuffle_buffer_size > 0:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        self.dataset, self.columns, self.num_classes = dataset, columns, num_classes
        self.augment, self.seed, self.epoch = augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        worker = get_worker_info()
        worker_id = worker.id if worker is not None else 0
        for position, example in enumerate(self.dataset):
            rng = np.random.default_rng([self.seed, self.epoch, worker_id, position])
            yield train_item(example, self.columns, self.num_classes, self.augment, rng)


class EvalSegmentationDataset(Dataset):
    """Evaluation examples at the original size: normalized image, mask labels, multi-hot labels."""

    def __init__(self, dataset, columns: Columns, num_classes: int):
        if columns.mask is None:
            raise ValueError("Evaluation needs a mask column (pixel ground truth).")
        self.dataset, self.columns, self.num_classes = dataset, columns, num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.dataset[index]
        return {
            "pixel_values": normalize(load_rgb_uint8(example[self.columns.image])),
            "labels": torch.from_numpy(np.asarray(example[self.columns.mask], dtype=np.int64)),
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


def materialize(dataset, limit: int | None = None):
    """A random-access ``datasets.Dataset`` of (the first ``limit`` examples of) a dataset; a streamed
    one is read once into memory (meant for a validation split: evaluation and overlays index it)."""
    if not is_streaming(dataset):
        return dataset.select(range(min(limit, len(dataset)))) if limit else dataset
    import datasets

    rows = list(dataset.take(limit) if limit else dataset)
    if not rows:
        raise ValueError("The streamed validation split is empty.")
    return datasets.Dataset.from_list(rows, features=dataset.features)


def load_dataset_splits(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    data_dir: str | None = None,
    dataset_path: str | None = None,
    train_split: str | None = None,
    validation_split: str | None = None,
    preset: str | None = None,
    streaming: bool = False,
    toy: bool = False,
    toy_sizes: tuple[int, int] = (2000, 200),
    seed: int = 0,
    need_train: bool = True,
    log: Callable[[str], None] = print,
):
    """(train, validation or None, names) from the toy world, a Hub dataset, an imagefolder or a saved
    DatasetDict; ``names`` holds the class/background names (and prompt template) they imply.

    Without ``train_split`` the preset's preferred splits are tried in order (VOC: "train_aug", then
    "train", with a note through ``log``). ``streaming=True`` streams Hub datasets and imagefolders, and
    turns the training split of a saved DatasetDict into a ``datasets.IterableDataset``. With
    ``need_train=False`` (evaluation) a missing training split gives ``train=None``.
    """
    if toy:
        from .toy import TOY_BACKGROUND_NAMES, TOY_CLASS_NAMES, TOY_PROMPT_TEMPLATE, make_toy_dataset

        train = make_toy_dataset(toy_sizes[0], seed=seed)
        val = make_toy_dataset(toy_sizes[1], seed=seed + 1_000_003)
        names = dict(class_names=TOY_CLASS_NAMES, background_names=TOY_BACKGROUND_NAMES,
                     prompt_template=TOY_PROMPT_TEMPLATE)  # fmt: skip
        return (train.to_iterable_dataset(num_shards=min(len(train), 64)) if streaming else train), val, names
    import datasets

    if dataset_path:
        ds = datasets.load_from_disk(dataset_path)
    elif data_dir:
        ds = datasets.load_dataset("imagefolder", data_dir=data_dir, streaming=streaming)
    elif dataset_name:
        ds = datasets.load_dataset(dataset_name, dataset_config_name, streaming=streaming)
    else:
        raise ValueError("Give a dataset_name, data_dir or dataset_path (or toy=True).")
    layout = DATASET_PRESETS.get(preset or "voc", {})
    if train_split is None:
        preferred = layout.get("train_splits", ["train"])
        train_split = next((s for s in preferred if s in ds), preferred[-1])
        if preset and train_split != preferred[0] and train_split in ds:
            size = f"{len(ds[train_split])} images" if not is_streaming(ds[train_split]) else "streamed"
            log(f"Note: the dataset has no {preferred[0]!r} split (the --preset {preset} recipe trains on it; VOC: "
                f"the SBD-augmented 10,582 images); training on {train_split!r} ({size}; VOC 2012 'train' alone "
                "has 1,464). Pass --train_split to choose another.")  # fmt: skip
    validation_split = validation_split or layout.get("validation_split", "validation")
    if train_split not in ds and need_train:
        raise ValueError(f"Split {train_split!r} not found; available splits: {list(ds)}.")
    names = preset_config_kwargs(preset) if preset else {}
    names = {k: names[k] for k in ("class_names", "label_names", "background_names") if k in names}
    train = ds[train_split] if train_split in ds else None
    if streaming and train is not None and not is_streaming(train):
        train = train.to_iterable_dataset(num_shards=min(len(train), 64))
    return train, ds[validation_split] if validation_split in ds else None, names

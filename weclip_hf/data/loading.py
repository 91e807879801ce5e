"""From a dataset (Hub, local folder, or the toy world) to PyTorch datasets of WeCLIP batches."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..presets import preset_config_kwargs
from .adapters import DATASET_PRESETS, Columns
from .transforms import TrainAugmentation, load_rgb_uint8, multi_hot, normalize


class WeakSegmentationDataset(Dataset):
    """Training examples: augmented image, multi-hot image labels, pixel mask, (mask labels if any).

    Augmentation randomness is a function of (seed, epoch, index), so a resumed run sees exactly the
    same crops as an uninterrupted one, with any number of DataLoader workers.
    """

    def __init__(self, dataset, columns: Columns, num_classes: int, augment: TrainAugmentation, seed: int = 0):
        self.dataset, self.columns, self.num_classes = dataset, columns, num_classes
        self.augment, self.seed, self.epoch = augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.dataset[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = load_rgb_uint8(example[self.columns.image])
        mask = None
        if self.columns.mask is not None and example.get(self.columns.mask) is not None:
            mask = np.asarray(example[self.columns.mask], dtype=np.uint8)
        image, mask, valid = self.augment(image, mask, rng)
        item = {
            "pixel_values": normalize(image),
            "class_labels": multi_hot(example["image_labels"], self.num_classes),
            "pixel_mask": torch.from_numpy(valid.astype(np.uint8)),
        }
        if mask is not None:
            item["labels"] = torch.from_numpy(mask.astype(np.int64))
        return item


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
):
    """(train, validation or None, names) from the toy world, a Hub dataset, an imagefolder or a saved
    DatasetDict; ``names`` holds the class/background names (and prompt template) they imply."""
    if toy:
        from .toy import TOY_BACKGROUND_NAMES, TOY_CLASS_NAMES, TOY_PROMPT_TEMPLATE, make_toy_dataset

        train = make_toy_dataset(toy_sizes[0], seed=seed)
        val = make_toy_dataset(toy_sizes[1], seed=seed + 1_000_003)
        names = dict(class_names=TOY_CLASS_NAMES, background_names=TOY_BACKGROUND_NAMES,
                     prompt_template=TOY_PROMPT_TEMPLATE)  # fmt: skip
        return train, val, names
    import datasets

    if dataset_path:
        ds = datasets.load_from_disk(dataset_path)
    elif data_dir:
        ds = datasets.load_dataset("imagefolder", data_dir=data_dir)
    elif dataset_name:
        ds = datasets.load_dataset(dataset_name, dataset_config_name, streaming=streaming)
    else:
        raise ValueError("Give a dataset_name, data_dir or dataset_path (or toy=True).")
    layout = DATASET_PRESETS.get(preset or "voc", {})
    train_split = train_split or layout.get("train_split", "train")
    validation_split = validation_split or layout.get("validation_split", "validation")
    if train_split not in ds:
        raise ValueError(f"Split {train_split!r} not found; available splits: {list(ds)}.")
    names = preset_config_kwargs(preset) if preset else {}
    names = {k: names[k] for k in ("class_names", "label_names", "background_names") if k in names}
    return ds[train_split], ds[validation_split] if validation_split in ds else None, names

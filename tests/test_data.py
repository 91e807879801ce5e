"""Dataset adapters and training transforms: column resolution, label checks, augmentation."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from weclip_hf.data.adapters import (
    Columns,
    add_image_labels,
    labels_from_mask,
    normalize_label_row,
    resolve_columns,
)
from weclip_hf.data.transforms import TrainAugmentation, multi_hot, normalize


def test_resolve_columns_finds_common_names_and_lists_available():
    assert resolve_columns(["image", "mask"]) == Columns("image", "mask", None)
    assert resolve_columns(["pixel_values", "annotation", "image_labels"]) == Columns(
        "pixel_values", "annotation", "image_labels"
    )
    with pytest.raises(ValueError, match=r"available columns: \['photo', 'mask'\]"):
        resolve_columns(["photo", "mask"])
    with pytest.raises(ValueError, match="mask column or an image-level label column"):
        resolve_columns(["image", "caption"])
    with pytest.raises(ValueError, match="'seg' not found"):
        resolve_columns(["image", "mask"], mask_column="seg")


def test_labels_from_mask_names_image_and_bad_id():
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0], mask[1, 1], mask[2, 2] = 3, 255, 1
    assert labels_from_mask(mask, 3) == [1, 3]
    mask[3, 3] = 9
    with pytest.raises(ValueError, match=r"img_7.*\[9\] outside 0..3"):
        labels_from_mask(mask, 3, name="img_7")


def test_label_rows_ids_multi_hot_and_errors():
    assert normalize_label_row([3, 1, 3], 4) == [1, 3]
    assert normalize_label_row([0, 2], 4, zero_based=True) == [1, 3]
    assert normalize_label_row([0.0, 1.0, 1.0, 0.0], 4) == [2, 3]
    with pytest.raises(ValueError, match="width 3, expected 4"):
        normalize_label_row([0.0, 1.0, 1.0], 4)
    with pytest.raises(ValueError, match=r"\[5\] outside 1..4"):
        normalize_label_row([5], 4)
    with pytest.raises(ValueError, match="must be 0/1"):
        normalize_label_row([0.5, 0.0, 0.0, 0.0], 4)


def _dataset(masks, images=None):
    images = images or [Image.fromarray(np.zeros(m.shape + (3,), np.uint8)) for m in masks]
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    return datasets.Dataset.from_dict(
        {"image": images, "mask": [Image.fromarray(m) for m in masks]}, features=features
    )


def test_add_image_labels_summarises_and_applies_empty_policy():
    full = np.zeros((8, 8), np.uint8)
    full[2:4, 2:4] = 2
    empty = np.zeros((8, 8), np.uint8)
    ds, summary = add_image_labels(_dataset([full, empty]), Columns("image", "mask"), num_classes=2)
    assert ds["image_labels"] == [[2], []]
    assert (
        summary.total == 2
        and summary.empty == 1
        and summary.skipped == 0
        and "1 with an empty" in str(summary)
    )
    ds, summary = add_image_labels(_dataset([full, empty]), Columns("image", "mask"), 2, skip_empty=True)
    assert len(ds) == 1 and summary.skipped == 1


def test_add_image_labels_rejects_mismatched_image_and_mask_sizes():
    masks = [np.zeros((8, 8), np.uint8)]
    images = [Image.fromarray(np.zeros((9, 8, 3), np.uint8))]
    with pytest.raises(ValueError, match=r"#0 has size \(8, 9\) but its mask has size \(8, 8\)"):
        add_image_labels(_dataset(masks, images), Columns("image", "mask"), 2)


def test_train_augmentation_crops_pads_and_flips_deterministically():
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    mask = np.ones((20, 30), np.uint8)
    aug = TrainAugmentation(crop_size=64, scale_range=(1.0, 1.0), flip_prob=0.0)
    out_image, out_mask, valid = aug(image, mask, np.random.default_rng(0))
    assert out_image.shape == (64, 64, 3) and out_mask.shape == (64, 64) and valid.sum() == 20 * 30
    assert (out_image[~valid] == 0).all() and (out_mask[~valid] == 255).all() and (out_mask[valid] == 1).all()
    again = aug(image, mask, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip((out_image, out_mask, valid), again))
    big = TrainAugmentation(crop_size=16, scale_range=(0.5, 2.0))
    for seed in range(5):
        crop, _, valid = big(image, None, np.random.default_rng(seed))
        assert crop.shape == (16, 16, 3)


def test_normalize_and_multi_hot():
    black = normalize(np.zeros((2, 2, 3), np.uint8))
    np.testing.assert_allclose(
        black[:, 0, 0].numpy(), [-123.675 / 58.395, -116.28 / 57.12, -103.53 / 57.375], rtol=1e-5
    )
    assert multi_hot([1, 3], 4).tolist() == [1.0, 0.0, 1.0, 0.0] and multi_hot([], 2).tolist() == [0.0, 0.0]


def test_add_image_labels_on_a_stream_is_lazy_and_applies_empty_policy():
    full = np.zeros((8, 8), np.uint8)
    full[2:4, 2:4] = 2
    empty = np.zeros((8, 8), np.uint8)
    stream = _dataset([full, empty, full]).to_iterable_dataset()
    ds, summary = add_image_labels(stream, Columns("image", "mask"), num_classes=2)
    assert isinstance(ds, datasets.IterableDataset) and summary.streamed and "on the fly" in str(summary)
    assert [ex["image_labels"] for ex in ds] == [[2], [], [2]]
    assert isinstance(next(iter(ds))["image"], Image.Image)  # images still decode after the map
    ds, summary = add_image_labels(stream, Columns("image", "mask"), 2, skip_empty=True)
    assert [ex["image_labels"] for ex in ds] == [[2], [2]] and "dropped" in str(summary)
    with_ids = _dataset([full, empty]).add_column("image_labels", [[2, 1], []]).to_iterable_dataset()
    ds, _ = add_image_labels(with_ids, Columns("image", "mask", "image_labels"), 2)
    assert [sorted(ex) for ex in ds] == [["image", "image_labels", "mask"]] * 2  # no column lost
    assert [ex["image_labels"] for ex in ds] == [[1, 2], []]
    bad = np.full((8, 8), 7, np.uint8)
    ds, _ = add_image_labels(_dataset([full, bad]).to_iterable_dataset(), Columns("image", "mask"), 2)
    with pytest.raises(ValueError, match=r"#1 contains class id\(s\) \[7\]"):  # raised when read
        list(ds)


def _labelled_stream(count=8, size=12):
    images = [Image.fromarray(np.full((size, size, 3), 20 * i, np.uint8)) for i in range(count)]
    masks = [np.full((size, size), 1 + i % 2, np.uint8) for i in range(count)]
    ds = _dataset(masks, images).to_iterable_dataset(num_shards=2)
    return add_image_labels(ds, Columns("image", "mask"), 2)[0]


def _same_items(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_streaming_training_dataset_is_seeded_by_epoch_and_reproducible():
    from weclip_hf.data.loading import StreamingWeakSegmentationDataset

    aug = TrainAugmentation(crop_size=8, scale_range=(0.75, 1.5))
    train = StreamingWeakSegmentationDataset(_labelled_stream(), Columns("image", "mask"), 2, aug, seed=3,
                                             shuffle_buffer_size=4)  # fmt: skip

    def one_pass(epoch):
        train.set_epoch(epoch)
        items = list(train)
        assert len(items) == 8 and items[0]["pixel_values"].shape == (3, 8, 8)
        return items

    first, again, second = one_pass(0), one_pass(0), one_pass(1)
    assert all(_same_items(a, b) for a, b in zip(first, again))  # same epoch: same order and crops
    order = [int(round(float(item["pixel_values"][0].max() * 58.395 + 123.675))) for item in first]
    assert sorted(order) != order  # shuffled (the buffer of 4 mixes the image values 0, 20, ..., 140)
    assert not all(_same_items(a, b) for a, b in zip(first, second))  # a new epoch reshuffles
    assert {k for k in first[0]} == {"pixel_values", "class_labels", "pixel_mask", "labels"}


def _save_splits(root, splits: dict[str, int]):
    rows = {name: _dataset([np.full((4, 4), 1, np.uint8)] * n) for name, n in splits.items()}
    datasets.DatasetDict(rows).save_to_disk(root)
    return str(root)


def test_voc_preset_trains_on_train_aug_when_the_dataset_has_it(tmp_path):
    from weclip_hf.data.loading import load_dataset_splits

    notes = []
    path = _save_splits(tmp_path / "aug", {"train": 2, "train_aug": 5, "validation": 1})
    train, val, names = load_dataset_splits(dataset_path=path, preset="voc", log=notes.append)
    assert len(train) == 5 and len(val) == 1 and not notes and len(names["class_names"]) == 20
    train, _, _ = load_dataset_splits(dataset_path=path, preset="voc", train_split="train", log=notes.append)
    assert len(train) == 2 and not notes  # an explicit --train_split wins
    train, _, _ = load_dataset_splits(dataset_path=path, preset="voc", streaming=True, log=notes.append)
    assert isinstance(train, datasets.IterableDataset) and sum(1 for _ in train) == 5

    path = _save_splits(tmp_path / "plain", {"train": 3, "validation": 1})
    train, _, _ = load_dataset_splits(dataset_path=path, preset="voc", log=notes.append)
    assert len(train) == 3 and len(notes) == 1
    assert "no 'train_aug' split" in notes[0] and "training on 'train' (3 images" in notes[0]


def test_evaluation_loading_needs_no_train_split_and_materializes_streams(tmp_path):
    from weclip_hf.data.loading import load_dataset_splits, materialize

    path = _save_splits(tmp_path / "val_only", {"validation": 3})
    with pytest.raises(ValueError, match=r"Split 'train' not found; available splits: \['validation'\]"):
        load_dataset_splits(dataset_path=path)
    train, val, _ = load_dataset_splits(dataset_path=path, need_train=False)
    assert train is None and len(val) == 3
    stream = val.to_iterable_dataset()
    assert len(materialize(stream)) == 3 and len(materialize(stream, limit=2)) == 2
    assert len(materialize(val, limit=2)) == 2
    assert isinstance(materialize(stream)[0]["image"], Image.Image)

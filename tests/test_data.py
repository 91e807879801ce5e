"""Dataset adapters and training transforms: column resolution, label checks, augmentation."""

import datasets
import numpy as np
import pytest
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
    return datasets.Dataset.from_dict({"image": images, "mask": [Image.fromarray(m) for m in masks]}, features=features)


def test_add_image_labels_summarises_and_applies_empty_policy():
    full = np.zeros((8, 8), np.uint8)
    full[2:4, 2:4] = 2
    empty = np.zeros((8, 8), np.uint8)
    ds, summary = add_image_labels(_dataset([full, empty]), Columns("image", "mask"), num_classes=2)
    assert ds["image_labels"] == [[2], []]
    assert summary.total == 2 and summary.empty == 1 and summary.skipped == 0 and "1 with an empty" in str(summary)
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
    np.testing.assert_allclose(black[:, 0, 0].numpy(), [-123.675 / 58.395, -116.28 / 57.12, -103.53 / 57.375], rtol=1e-5)
    assert multi_hot([1, 3], 4).tolist() == [1.0, 0.0, 1.0, 0.0] and multi_hot([], 2).tolist() == [0.0, 0.0]

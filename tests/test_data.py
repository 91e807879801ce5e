"""Dataset columns, image-level labels, mask checks and training transforms: column resolution, label checks,
augmentation."""

import functools
import json
import os
import re
import subprocess
import sys
import warnings
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from weclip_hf.data.columns import Columns, is_streaming, resolve_columns
from weclip_hf.data.decoding import decode_image
from weclip_hf.data.image_labels import add_image_labels
from weclip_hf.data.label_rows import normalize_label_row
from weclip_hf.data.masks import check_mask_ids, present_classes
from weclip_hf.data.transforms import TrainAugmentation, multi_hot, normalize
from weclip_hf.normalization import IMAGENET_NORMALIZATION


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


def test_mask_classes_and_bad_ids_name_the_image():
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0], mask[1, 1], mask[2, 2] = 3, 255, 1
    check_mask_ids(mask, 3)
    assert present_classes(mask, 3) == [1, 3]
    mask[3, 3] = 9
    with pytest.raises(ValueError, match=r"img_7.*\[9\] outside 0..3 .*check --class_names"):
        check_mask_ids(mask, 3, name="img_7")
    with pytest.raises(
        ValueError, match=r"JPEG is lossy .*: save masks as PNG"
    ):  # the likely cause, not the names
        check_mask_ids(mask, 3, name="file 'masks/7.jpg'")
    signed = np.zeros((4, 4), np.int16)
    signed[0, 0], signed[1, 1] = -100, -1  # the ignore index of -100 is no class; -1 is outside 0..C
    with pytest.raises(ValueError, match=r"\[-1\] outside 0..3 \(ignore index -100\)"):
        check_mask_ids(signed, 3, ignore_index=-100)


def test_label_rows_ids_multi_hot_and_errors():
    assert normalize_label_row([3, 1, 3], 4) == [1, 3]
    assert normalize_label_row([0, 2], 4, zero_based=True) == [1, 3]
    assert normalize_label_row([0.0, 1.0, 1.0, 0.0], 4) == [2, 3]
    assert normalize_label_row([True, False, False, True], 4) == [1, 4]  # booleans are multi-hot too
    assert normalize_label_row(np.array([True, False, True, True]), 4) == [1, 3, 4]
    with pytest.raises(ValueError, match="width 3, expected 4"):
        normalize_label_row([0.0, 1.0, 1.0], 4)
    with pytest.raises(ValueError, match=r"\[5\] outside 1..4\.$"):
        normalize_label_row([5], 4)
    with pytest.raises(ValueError, match="must be 0/1"):
        normalize_label_row([0.5, 0.0, 0.0, 0.0], 4)


def test_class_ids_written_as_floats_are_named_as_such():
    """Rows such as [5.0] (as pandas writes ids) failed on "Multi-hot labels of row 0 have width 1, expected 8",
    which did not say that float rows are read as multi-hot vectors."""
    hint = r"Float rows are read as multi-hot vectors .* store them as integers"
    with pytest.raises(ValueError, match=rf"width 1, expected 4\. {hint} \(\[3\], not \[3\.0\]\)"):
        normalize_label_row([3.0], 4)
    with pytest.raises(ValueError, match=rf"must be 0/1, got \[1\.0, 2\.0, 3\.0, 4\.0\]\. {hint}"):
        normalize_label_row([1.0, 2.0, 3.0, 4.0], 4)  # ids of every class, as wide as a multi-hot row
    with pytest.raises(ValueError, match=r"width 2, expected 4\.$"):
        normalize_label_row([0.5, 1.0], 4)  # no ids: no hint


def test_integer_multi_hot_rows_are_read_as_multi_hot_or_refused_never_as_ids():
    """Multi-hot rows of 0/1 integers (as JSON writes them) were read as class ids: [1, 0, 0, 1] failed on "id(s)
    [0, 0] outside 1..4", gave classes [1, 2] with zero_based, and [1, 1, 1, 1] (every class) gave class 1."""
    assert normalize_label_row([1, 0, 0, 1], 4) == [1, 4]
    assert normalize_label_row(np.array([0, 1, 1, 0], np.int32), 4) == [2, 3]
    assert normalize_label_row([1], 1) == [1]  # both readings agree
    with pytest.raises(ValueError, match=r"multi-hot row \(classes \[1, 4\]\) or as zero-based class ids "
                       r"\(classes \[1, 2\]\)\..* booleans or floats.* drop --labels_zero_based"):  # fmt: skip
        normalize_label_row([1, 0, 0, 1], 4, zero_based=True)
    with pytest.raises(ValueError, match=r"row 3, \[1, 1, 1, 1\], read two ways.*\(classes \[1\]\)"):
        normalize_label_row([1, 1, 1, 1], 4, name="row 3")  # one row cannot tell: a column can
    with pytest.raises(ValueError, match=r"\[0, 1\], read two ways"):  # zero-based ids or one-hot: refused
        normalize_label_row([0, 1], 2, zero_based=True)
    with pytest.raises(
        ValueError, match=r"\[1, 0\], read two ways.*or as zero-based class ids \(classes \[1, 2\]"
    ):
        normalize_label_row([1, 0], 2)  # zero-based ids with --labels_zero_based forgotten, or one-hot
    assert normalize_label_row([0, 1], 2, zero_based=True, multi_hot=False) == [1, 2]


def test_a_label_column_decides_multi_hot_as_a_whole():
    """The column tells what one row cannot: every row of C integers 0/1, one of them holding a 0 and repeating a
    value, is multi-hot ([1, 1, 1, 1]: every class); a column with rows of other lengths holds ids."""
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    features = datasets.Features(
        {"image": datasets.Image(), "labels": datasets.List(datasets.Value("int64"))}
    )

    def read(rows, num_classes, zero_based=False):
        data = datasets.Dataset.from_dict({"image": [image] * len(rows), "labels": rows}, features=features)
        labelled, _ = add_image_labels(
            data, Columns("image", None, "labels"), num_classes, zero_based=zero_based
        )
        return labelled["image_labels"]

    assert read([[1, 1, 1, 1], [1, 0, 0, 1], [0, 0, 1, 0]], 4) == [[1, 2, 3, 4], [1, 4], [3]]
    assert read([[1, 1, 1, 1], [2], [1, 3]], 4) == [[1], [2], [1, 3]]  # ids (one image's objects' classes)
    assert read([[1, 0], [0, 1], [1, 1]], 2) == [[1], [2], [1, 2]]
    assert read([[0, 1], [1]], 2, zero_based=True) == [[1, 2], [2]]
    with pytest.raises(ValueError, match=r"row 0, \[1, 0\], read two ways"):
        read([[1, 0], [0, 1]], 2, zero_based=True)
    with pytest.raises(ValueError, match=r"drop --labels_zero_based"):
        read([[1, 1, 1, 1], [1, 0, 0, 1]], 4, zero_based=True)


def test_evaluation_set_reads_a_label_column_as_the_training_set():
    """The validation split's label column was read with the defaults: zero-based ids as 1-based ones (the CAMs
    scored for the wrong classes) and class names refused for want of the class names."""
    from weclip_hf.data.labelled_sets import LabelReading, evaluation_set

    masks = [np.full((8, 8), i, np.uint8) for i in (1, 2)] + [np.tile(np.array([1, 2], np.uint8), (8, 4))]
    val = _dataset(masks).add_column("image_labels", [[0], [1], [0, 1]])
    val = val.add_column("tags", [["cat"], ["dog"], ["dog", "cat"]])

    def labels(**reading):
        dataset, _ = evaluation_set(val, 2, 255, IMAGENET_NORMALIZATION, LabelReading(**reading))
        return dataset.dataset["image_labels"]

    assert labels(labels_column="absent") == [[1], [2], [1, 2]]  # the masks'
    assert labels(labels_zero_based=True) == [[1], [2], [1, 2]]  # the column found by name
    assert labels(labels_column="tags", class_names=["cat", "dog"]) == [[1], [2], [1, 2]]


@pytest.mark.parametrize("column", ["labels", "image_labels"])
def test_class_ids_in_the_other_numbering_than_their_masks_are_refused(column):
    """Zero-based ids of a set where class 0 never occurs read as 1-based ones without --labels_zero_based (and
    1-based ids with it, where class C never occurs): every class shifted by one, silently, though the masks beside
    them showed the right classes. A column named ``image_labels`` (renamed while read) escaped the check, and was
    named '_image_labels' in the messages."""
    masks = [np.full((8, 8), c, np.uint8) for c in (2, 3, 2)] + [np.tile(np.array([2, 3], np.uint8), (8, 4))]

    def read(rows, zero_based=False, num_classes=3):
        labelled, _ = add_image_labels(
            _dataset(masks).add_column(column, rows), Columns("image", "mask", column), num_classes,
            zero_based=zero_based,
        )  # fmt: skip
        return labelled["image_labels"]

    zero_based = [[1], [2], [1], [1, 2]]  # classes 2, 3, 2, {2, 3}
    with pytest.raises(ValueError, match=r"read as 1-based class ids, disagree with its masks: 4 of the 4 rows .* "
                       r"0 as read \(e.g. row 0: ids \[1\], mask classes \[2\] of 1..3\).* pass --labels_zero_based"):  # fmt: skip
        read(zero_based)
    assert read(zero_based, zero_based=True) == [[2], [3], [2], [2, 3]]
    one_based = [[2], [3], [2], [2, 3]]
    with pytest.raises(ValueError, match=r"read as zero-based class ids, disagree .* ids \[2\], mask classes "
                       r"\[2\] of 1..4\).* drop --labels_zero_based"):  # fmt: skip
        read(one_based, zero_based=True, num_classes=4)  # read as classes 3, 4, 3, {3, 4}
    assert read(one_based) == one_based
    # labels that differ from the masks otherwise (image tags, a few errors) are the user's: kept as read
    assert read([[2], [2], [2], [2, 3]]) == [[2], [2], [2], [2, 3]]
    assert read([[1], [3], [2], [2, 3]]) == [[1], [3], [2], [2, 3]]  # one shifted row of four
    # two of four: no numbering (as many rows agree), but too many rows name none of their masks' classes
    with pytest.raises(
        ValueError, match=rf"column '{column}'\) and its masks .* disagree: on 2 of the 4 rows"
    ):
        read([[1], [2], [2], [2, 3]])


def test_a_validation_split_without_masks_says_how_to_train_without_evaluation():
    from weclip_hf.data.labelled_sets import evaluation_set
    from weclip_hf.data.sources import with_split_name

    val = with_split_name(_dataset([np.ones((8, 8), np.uint8)]).remove_columns("mask"), "validation")
    with pytest.raises(ValueError, match=r"Pass --mask_column\. Evaluating split 'validation' needs its pixel "
                       r"ground truth \(train.py: --validation_split none trains without evaluation\)"):  # fmt: skip
        evaluation_set(val.add_column("image_labels", [[1]]), 1, 255, IMAGENET_NORMALIZATION)


def _dataset(masks, images=None):
    images = images or [Image.fromarray(np.zeros(m.shape + (3,), np.uint8)) for m in masks]
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    return datasets.Dataset.from_dict(
        {"image": images, "mask": [Image.fromarray(m) for m in masks]}, features=features
    )


def test_masks_with_channels_are_refused_by_the_check_and_the_reading():
    """A grey mask saved as RGB passed the data check and failed at the first training step ("could not broadcast
    input array from shape (H, W, 3)"); colour masks were blamed on --class_names."""
    from weclip_hf.data.batches import read_example

    grey = np.zeros((8, 8), np.uint8)
    grey[2:4, 2:4] = 2
    rgb = Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    message = r"Mask .* has shape \(8, 8, 3\): masks are single-channel images of class ids"
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    with pytest.raises(ValueError, match=message):
        add_image_labels(datasets.Dataset.from_dict({"image": [rgb], "mask": [rgb]}, features=features),
                         Columns("image", "mask"), num_classes=2)  # fmt: skip
    with pytest.raises(ValueError, match=message):
        read_example({"image": rgb, "mask": rgb}, Columns("image", "mask"), "row 0")
    assert read_example({"image": rgb, "mask": Image.fromarray(grey)}, Columns("image", "mask"), "row 0")[
        1
    ].shape == (8, 8)


def _labelled(masks):
    """`_dataset` of ``masks`` and black 8 x 8 images, with an image-level label column."""
    images = [Image.fromarray(np.zeros((8, 8, 3), np.uint8)) for _ in masks]
    return _dataset(masks, images).add_column("image_labels", [[1]] * len(masks))


_GOOD = np.ones((8, 8), np.uint8)
_BAD_MASKS = {  # a second mask (row 1) beside a good one, and the error that names it
    "id_out_of_range": (
        np.where(_GOOD > 0, 12, 0).astype(np.uint8),
        r"row 1 .* class id\(s\) \[12\] outside 0..2",
    ),
    "mode_i_261": (
        np.full((8, 8), 261, np.int32),
        r"row 1 .* class id\(s\) \[261\] outside 0..2",
    ),  # uint8: 5
    "other_size": (np.ones((8, 4), np.uint8), r"row 1 differ in size .* \(8, 8\), mask .* \(4, 8\)"),
    "fractional_float": (
        np.full((8, 8), 0.99, np.float32),
        r"row 1 .* float map with fractional values .*\[0\.99",
    ),
}


@pytest.mark.parametrize("bad", sorted(_BAD_MASKS))
def test_masks_are_checked_whatever_the_columns(bad):
    """With an image-level label column, masks were never checked: a validation mask of another size was stretched
    to its image, ids outside 0..C left the scores silently, and --fully_supervised cast a mode-I 261 to class 5."""
    from weclip_hf.data.labelled_sets import evaluation_set, training_set

    mask, message = _BAD_MASKS[bad]
    data = _labelled([_GOOD, mask])
    augment = TrainAugmentation(8, (1.0, 1.0), normalization=IMAGENET_NORMALIZATION)
    with pytest.raises(ValueError, match=message):
        evaluation_set(data, 2, 255, IMAGENET_NORMALIZATION)
    with pytest.raises(ValueError, match=message):
        training_set(data, 2, augment, require_mask=True)


@pytest.mark.parametrize("bad", sorted(_BAD_MASKS))
def test_masks_are_checked_as_they_are_read(bad):
    """A stream with a label column is not read ahead, and a datasets cache may hold labels computed before the
    check: the readers check each mask too (before the uint8 cast of training)."""
    from weclip_hf.data.batches import EvalSegmentationDataset
    from weclip_hf.data.labelled_sets import training_set

    mask, message = _BAD_MASKS[bad]
    data = _labelled([_GOOD, mask])
    augment = TrainAugmentation(8, (1.0, 1.0), normalization=IMAGENET_NORMALIZATION)
    stream, _ = training_set(data.to_iterable_dataset(), 2, augment, require_mask=True, shuffle_buffer_size=0)
    with pytest.raises(ValueError, match=message.replace("row 1", "example 1 of pass 0 over the stream")):
        list(stream)
    evaluation = EvalSegmentationDataset(data, Columns("image", "mask"), 2, IMAGENET_NORMALIZATION)
    assert evaluation[0]["labels"].unique().tolist() == [1]
    with pytest.raises(ValueError, match=message.replace("row 1", "evaluation example 1")):
        evaluation[1]


@pytest.mark.parametrize("layout", ["hwc", "chw", "unit_float"])
def test_array_columns_are_read_as_the_image_processor_reads_arrays(layout):
    """A `datasets.Array3D` image column (given as nested lists) passed the data check, then training failed at
    step 1: "Unsupported image type list". It reads as its PIL images do (HWC, CHW, floats in [0, 1])."""
    from weclip_hf.data.labelled_sets import evaluation_set, training_set

    image = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    mask = np.zeros((8, 6), np.uint8)
    mask[2:5, 1:4] = 2
    stored = {"hwc": image, "chw": image.transpose(2, 0, 1), "unit_float": image.astype(np.float32) / 255}[
        layout
    ]
    features = datasets.Features(
        {
            "image": datasets.Array3D(stored.shape, str(stored.dtype)),
            "mask": datasets.Array2D(mask.shape, "uint8"),
            "image_labels": datasets.List(datasets.Value("int64")),
        }
    )
    arrays = datasets.Dataset.from_dict({"image": [stored], "mask": [mask], "image_labels": [[2]]}, features)
    pictures = _dataset([mask], [Image.fromarray(image)]).add_column("image_labels", [[2]])
    augment = TrainAugmentation(8, (0.5, 2.0), normalization=IMAGENET_NORMALIZATION)
    trained = [training_set(d, 2, augment, seed=1)[0][0] for d in (arrays, pictures)]
    assert _same_items(*trained) and 2 in trained[0]["labels"]
    scored = [evaluation_set(d, 2, 255, IMAGENET_NORMALIZATION)[0][0] for d in (arrays, pictures)]
    assert _same_items(*scored)


def test_a_folder_of_class_subfolders_gives_each_image_its_folders_class(tmp_path):
    """An imagefolder laid out as ``train/<class>/*.png`` (a classification dataset: a ClassLabel ``label`` column)
    gives each image its folder's class, matched by name (it was taken for a mask column and crashed)."""
    from weclip_hf.data.labelled_sets import LabelReading, training_set
    from weclip_hf.data.sources import DataSource, load_dataset_splits
    from weclip_hf.data.transforms import TrainAugmentation
    from weclip_hf.normalization import CLIP_NORMALIZATION

    for i, name in enumerate(["cat", "dog", "cat"]):
        (tmp_path / "train" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "train" / name / f"{i}.png")
    train, _, _ = load_dataset_splits(DataSource(data_dir=str(tmp_path)), validation_split="none")
    augment = TrainAugmentation(16, (1.0, 1.0), normalization=CLIP_NORMALIZATION)
    # another order, another case
    dataset, summary = training_set(train, 2, augment, LabelReading(class_names=["Dog", "cat"]))
    by_class = sorted(dataset[i]["class_labels"].tolist() for i in range(len(dataset)))
    assert by_class == [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]] and summary.class_counts == {1: 1, 2: 2}
    one_id = datasets.Dataset.from_dict(  # a plain integer column: one class id per image
        {"image": [Image.fromarray(np.zeros((8, 8, 3), np.uint8))] * 2, "labels": [0, 1]},
        features=datasets.Features({"image": datasets.Image(), "labels": datasets.Value("int64")}),
    )
    ids, _ = add_image_labels(one_id, Columns("image", None, "labels"), num_classes=2, zero_based=True)
    assert ids["image_labels"] == [[1], [2]]


@pytest.mark.parametrize("column", ["labels", "image_labels"])
def test_a_classlabel_column_is_read_by_its_names_whatever_its_name(column):
    """A ClassLabel column named ``image_labels`` (the first name the columns are looked for under) lost its names
    (looked up under its internal name) and its indices were read as 1-based ids: cat trained as dog."""
    image = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    labels = datasets.Sequence(datasets.ClassLabel(names=["cat", "dog", "bird"]))
    dataset = datasets.Dataset.from_dict(
        {"image": [image, image], column: [[1], [2]]},
        features=datasets.Features({"image": datasets.Image(), column: labels}),
    )
    read, _ = add_image_labels(dataset, Columns("image", None, column), 3, class_names=["cat", "dog", "bird"])
    assert read["image_labels"] == [[2], [3]]


def test_a_row_with_a_mask_and_a_null_label_cell_takes_its_labels_from_the_mask():
    """Tagged rows beside fully annotated ones (metadata.jsonl rows with labels only, others with masks only): the
    annotated rows' null label cells were read as empty label sets, and trained as background. A row with a mask
    and no labels takes the mask's classes; an explicit ``[]`` stays an empty set, a tagged row keeps its tags."""
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 2
    both = mask.copy()
    both[5:7, 5:7] = 1
    dataset = _dataset([mask, mask, both]).add_column("labels", [None, [], [1]])
    read, summary = add_image_labels(dataset, Columns("image", "mask", "labels"), num_classes=2)
    assert read["image_labels"] == [[2], [], [1]] and summary.empty == 1
    # a null label cell without a mask is an empty label set (no mask to read: not an error)
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "labels": datasets.List(datasets.Value("int64")),
        }
    )
    neither = datasets.Dataset.from_dict(
        {"image": [image, image], "mask": [Image.fromarray(mask), None], "labels": [None, None]},
        features=features,
    )
    read, summary = add_image_labels(neither, Columns("image", "mask", "labels"), num_classes=2)
    assert read["image_labels"] == [[2], []] and summary.empty == 1


def test_the_numbering_check_refuses_only_a_shift_on_half_the_rows_with_masks():
    """`check_label_numbering` refuses ids that name their masks' classes only shifted by one on more rows than
    name them as read and on at least half of the rows with masks; rows of other classes (a few wrong ones, image
    tags) count against a shift."""
    from weclip_hf.data.image_labels import check_label_numbering

    shifted, agree, other = ([1], [2]), ([2], [2]), ([3], [1])  # (ids read 1-based, mask classes)

    def check(*rows, zero_based=False):
        labels, masks = zip(*rows)
        check_label_numbering(list(labels), list(masks), 3, zero_based)

    check(shifted, shifted, agree, other, other)  # 2 of 5: under half
    with pytest.raises(ValueError, match=r"3 of the 5 rows with masks .*, 1 as read"):
        check(shifted, shifted, shifted, agree, other)
    check(([2], [1]), ([3], [2]), agree, other, other, zero_based=True)  # zero-based ids read one higher
    with pytest.raises(ValueError, match=r"2 of the 4 rows with masks .*, 0 as read"):
        check(([2], [1]), ([3], [2]), other, other, zero_based=True)


def test_the_label_cache_key_covers_every_module_that_reads_and_checks_rows(tmp_path, monkeypatch):
    """`datasets` caches the label map under `_code_digest`: a change to any module that reads or checks the
    rows, images or masks must change it, or labels cached under the old rules are reused unchecked."""
    from weclip_hf import image_reading
    from weclip_hf.data import columns, decoding, image_labels, label_rows, masks

    before = image_labels._code_digest()
    for module in (image_labels, columns, label_rows, masks, decoding, image_reading):
        edited = tmp_path / f"{module.__name__}.py"
        edited.write_bytes(open(module.__file__, "rb").read() + b"# edited")
        with monkeypatch.context() as patch:
            patch.setattr(module, "__file__", str(edited))
            assert image_labels._code_digest() != before, module.__name__
    assert image_labels._code_digest() == before


def test_an_integer_multi_hot_column_is_never_refused_for_its_numbering():
    """Multi-hot rows have no numbering: rows naming their masks' classes shifted by one are refused as labels
    that disagree with the masks, never with "pass --labels_zero_based"."""
    masks = [np.full((8, 8), 2, np.uint8)] * 3
    dataset = _dataset(masks).add_column("labels", [[1, 0, 0]] * 3)  # class 1, the masks' class 2
    with pytest.raises(ValueError, match=r"disagree: on 3 of the 3 rows") as refused:
        add_image_labels(dataset, Columns("image", "mask", "labels"), num_classes=3)
    assert "labels_zero_based" not in str(refused.value)


def test_no_class_cause_is_none_for_a_split_without_images():
    from weclip_hf.data.image_labels import LabelSummary, no_class_cause

    for columns in (Columns("image", "mask"), Columns("image", None, "labels")):
        assert no_class_cause(LabelSummary(total=0), columns, 2, 255, "train") is None
        assert "No image of split 'train' has a class" in no_class_cause(
            LabelSummary(total=3), columns, 2, 255, "train"
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


def test_evaluation_set_leaves_out_images_without_a_class_when_asked():
    """COCO's official validation list leaves out the images without any annotation: ``skip_empty`` (the coco
    presets' default) drops them from the scored set, named in the summary; without it every image is scored."""
    from weclip_hf.data.labelled_sets import LabelReading, evaluation_set

    full = np.zeros((8, 8), np.uint8)
    full[2:4, 2:4] = 2
    empty = np.zeros((8, 8), np.uint8)
    kept, summary = evaluation_set(_dataset([empty, full, empty]), 2, 255, IMAGENET_NORMALIZATION)
    assert len(kept) == 3 and summary.skipped == 0
    dropped, summary = evaluation_set(
        _dataset([empty, full, empty]), 2, 255, IMAGENET_NORMALIZATION, LabelReading(skip_empty=True)
    )
    assert len(dropped) == 1 and (summary.total, summary.empty, summary.skipped) == (3, 2, 2)
    assert "3 images, 2 with an empty label set (2 skipped)" in str(summary)
    assert dropped[0]["labels"].tolist() == full.tolist()


def test_add_image_labels_in_several_processes_matches_one():
    masks = [np.full((8, 8), i % 3, np.uint8) for i in range(4)]
    one, summary = add_image_labels(_dataset(masks), Columns("image", "mask"), num_classes=2)
    two, summary_two = add_image_labels(_dataset(masks), Columns("image", "mask"), 2, num_proc=2)
    assert two["image_labels"] == one["image_labels"] == [[], [1], [2], []]
    assert str(summary_two) == str(summary)


def test_add_image_labels_rejects_mismatched_image_and_mask_sizes():
    masks = [np.zeros((8, 8), np.uint8)]
    images = [Image.fromarray(np.zeros((9, 8, 3), np.uint8))]
    with pytest.raises(
        ValueError,
        match=r"of row 0 differ in size .*image in column 'image' \(8, 9\), mask in column 'mask' \(8, 8\)",
    ):
        add_image_labels(_dataset(masks, images), Columns("image", "mask"), 2)


@pytest.mark.parametrize("labels", [None, "image_labels"])
def test_add_image_labels_names_a_photo_turned_by_its_exif_orientation(tmp_path, labels):
    """With a label column the masks went unchecked: the turned photo's mask was stretched (mIoU 12.8 for 48.9)."""
    import datasets

    photo = Image.fromarray(np.zeros((6, 10, 3), np.uint8))  # stored 10 wide, 6 high
    exif = photo.getexif()
    exif[0x0112] = 6  # EXIF orientation: turned 90 degrees, read upright as 6 wide, 10 high
    photo.save(tmp_path / "photo.jpg", exif=exif)
    Image.fromarray(np.ones((6, 10), np.uint8)).save(tmp_path / "mask.png")  # drawn on the stored pixels
    ds = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / "photo.jpg")], "mask": [str(tmp_path / "mask.png")]}
    )
    ds = ds.cast_column("image", datasets.Image()).cast_column("mask", datasets.Image())
    ds = ds.add_column("image_labels", [[1]]) if labels else ds
    # the files named (not their columns), the sizes as (width, height)
    swapped = r"image file '.*photo\.jpg' \(6, 10\), mask file '.*mask\.png' \(10, 6\)\. The sizes are swapped: .*EXIF"
    with pytest.raises(ValueError, match=swapped):
        add_image_labels(ds, Columns("image", "mask", labels), 2)


def test_train_augmentation_crops_pads_and_flips_deterministically():
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    mask = np.ones((20, 30), np.uint8)
    aug = TrainAugmentation(
        crop_size=64, scale_range=(1.0, 1.0), flip_prob=0.0, normalization=IMAGENET_NORMALIZATION
    )
    out_image, out_mask, valid = aug(image, mask, np.random.default_rng(0))
    assert out_image.shape == (64, 64, 3) and out_mask.shape == (64, 64) and valid.sum() == 20 * 30
    assert (out_image[~valid] == 0).all() and (out_mask[~valid] == 255).all() and (out_mask[valid] == 1).all()
    again = aug(image, mask, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip((out_image, out_mask, valid), again))
    big = TrainAugmentation(crop_size=16, scale_range=(0.5, 2.0), normalization=IMAGENET_NORMALIZATION)
    for seed in range(5):
        crop, _, valid = big(image, None, np.random.default_rng(seed))
        assert crop.shape == (16, 16, 3)


def _valid_box(valid: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the one rectangle of True pixels in a crop's ``valid``."""
    rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
    top, left, height, width = rows[0], cols[0], len(rows), len(cols)
    assert valid.sum() == height * width, "the valid pixels are not one rectangle"
    return int(top), int(left), height, width


def _photo_and_mask(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A random uint8 photo [height, width, 3] and a mask of ids 0, 1, 2 and 255."""
    g = np.random.default_rng(7)
    image = g.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return image, g.choice(np.uint8([0, 1, 2, 255]), (height, width))


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_train_augmentation_rescales_as_pil_then_flips_horizontally(flip_prob):
    """DESIGN: rescale by PIL bilinear on uint8 (the mask by nearest: no ids between classes), a horizontal flip
    of image and mask together, raw 0 pixels and the ignore index as padding."""
    image, mask = _photo_and_mask(6, 10)
    augment = TrainAugmentation(24, (2.0, 2.0), flip_prob=flip_prob, normalization=IMAGENET_NORMALIZATION)
    crop, crop_mask, valid = augment(image, mask, np.random.default_rng(0))
    top, left, height, width = _valid_box(valid)
    assert (height, width) == (12, 20)
    expected = np.asarray(Image.fromarray(image).resize((20, 12), Image.BILINEAR))
    expected_mask = np.asarray(Image.fromarray(mask).resize((20, 12), Image.NEAREST))
    if flip_prob:
        expected, expected_mask = expected[:, ::-1], expected_mask[:, ::-1]
    window = (slice(top, top + height), slice(left, left + width))
    assert np.array_equal(crop[window], expected) and np.array_equal(crop_mask[window], expected_mask)
    assert (crop[~valid] == 0).all() and (crop_mask[~valid] == 255).all()


def test_train_augmentation_draws_one_scale_per_image_within_its_range():
    """Height and width are rescaled by one factor drawn from ``scale_range`` (PIL's size is (width, height))."""
    image, mask = _photo_and_mask(6, 10)
    augment = TrainAugmentation(24, (1.0, 2.0), flip_prob=0.0, normalization=IMAGENET_NORMALIZATION)
    sizes = set()
    for seed in range(8):
        _, _, height, width = _valid_box(augment(image, mask, np.random.default_rng(seed))[2])
        # some factor in [1, 2] gives both sizes (int() of the scaled side)
        low, high = max(1.0, height / 6, width / 10), min(2.0, (height + 1) / 6, (width + 1) / 10)
        assert low < high, (height, width)
        sizes.add((height, width))
    assert len(sizes) > 2


def test_train_augmentation_crops_every_window_and_pads_at_every_offset():
    """The random crop takes any window of a larger image (offsets 0..H-c), and a smaller image lands at any
    offset of the padded crop (0..c-H), with equal odds."""
    image = np.zeros((10, 10, 3), np.uint8)
    image[..., 0] = np.arange(100).reshape(10, 10)  # each pixel's value gives its position
    augment = TrainAugmentation(9, (1.0, 1.0), flip_prob=0.0, normalization=IMAGENET_NORMALIZATION)
    windows = set()
    for seed in range(40):
        crop, _, valid = augment(image, None, np.random.default_rng(seed))
        y0, x0 = divmod(int(crop[0, 0, 0]), 10)
        assert valid.all() and np.array_equal(crop, image[y0 : y0 + 9, x0 : x0 + 9])
        windows.add((y0, x0))
    assert windows == {(0, 0), (0, 1), (1, 0), (1, 1)}
    image, mask = _photo_and_mask(6, 7)
    padded = TrainAugmentation(8, (1.0, 1.0), flip_prob=0.0, normalization=IMAGENET_NORMALIZATION)
    offsets = {_valid_box(padded(image, mask, np.random.default_rng(seed))[2])[:2] for seed in range(40)}
    assert offsets == {(top, left) for top in range(3) for left in range(2)}


def test_train_augmentation_defaults_are_the_official_recipe():
    """DESIGN's recipe: crop 320, rescale in [0.5, 2.0], flip with p = 0.5 (the training scripts pass no flip
    probability), VOC's ignore index 255."""
    official = TrainAugmentation(320, (0.5, 2.0), 0.5, 255, normalization=IMAGENET_NORMALIZATION)
    assert TrainAugmentation(normalization=IMAGENET_NORMALIZATION) == official


def test_train_augmentation_keeps_the_mask_dtype():
    """An int16 mask (ignore index -100) comes back int16, padded with -100: PIL reads it as int32."""
    image = np.zeros((6, 5, 3), np.uint8)
    mask = np.full((6, 5), 3, np.int16)
    mask[0] = -100
    augment = TrainAugmentation(8, (1.0, 1.0), ignore_index=-100, normalization=IMAGENET_NORMALIZATION)
    _, crop_mask, valid = augment(image, mask, np.random.default_rng(0))
    assert crop_mask.dtype == np.int16 and set(np.unique(crop_mask)) == {-100, 3}
    assert (crop_mask[~valid] == -100).all()


@pytest.mark.parametrize(
    ("num_classes", "ignore_index", "dtype"),
    [(20, 255, np.uint8), (20, -100, np.int16), (300, -100, np.int32), (300, 65535, np.uint16)],
)
def test_training_masks_hold_every_class_id_and_the_ignore_index(num_classes, ignore_index, dtype):
    """A model of semantic_loss_ignore_index -100 (what the config asks for beyond 254 classes) crashed on every
    mask ("Python integer -100 out of bounds for uint8"); class ids above 255 would have wrapped. VOC keeps uint8."""
    from weclip_hf.data.labelled_sets import training_set
    from weclip_hf.data.transforms import mask_dtype

    assert mask_dtype(num_classes, ignore_index) == dtype
    mask = np.zeros((8, 8), np.int32)
    mask[:4], mask[4:, :4] = num_classes, ignore_index  # the last class, ignored pixels
    labelled = _labelled([mask]).remove_columns("image_labels").add_column("image_labels", [[num_classes]])
    data = labelled if ignore_index >= 0 else datasets.Dataset.from_dict(
        {"image": [np.zeros((8, 8, 3), np.uint8).tolist()], "mask": [mask.tolist()], "image_labels": [[num_classes]]}
    )  # fmt: skip
    augment = TrainAugmentation(
        12, (1.0, 1.0), ignore_index=ignore_index, normalization=IMAGENET_NORMALIZATION
    )
    train, _ = training_set(data, num_classes, augment, require_mask=True)
    item = train[0]
    padding = ~item["pixel_mask"].bool()
    assert padding.any() and (item["labels"][padding] == ignore_index).all()
    assert item["labels"].unique().tolist() == sorted({0, num_classes, ignore_index})


def test_normalize_and_multi_hot():
    black = normalize(np.zeros((2, 2, 3), np.uint8), IMAGENET_NORMALIZATION)
    official = np.float32([-123.675 / 58.395, -116.28 / 57.12, -103.53 / 57.375])  # float64, rounded once
    assert black.dtype == torch.float32 and np.array_equal(black[:, 0, 0].numpy(), official)
    assert multi_hot([1, 3], 4).tolist() == [1.0, 0.0, 1.0, 0.0] and multi_hot([], 2).tolist() == [0.0, 0.0]


def test_add_image_labels_on_a_stream_is_lazy_and_applies_empty_policy():
    full = np.zeros((8, 8), np.uint8)
    full[2:4, 2:4] = 2
    empty = np.zeros((8, 8), np.uint8)
    stream = _dataset([full, empty, full]).to_iterable_dataset()
    ds, summary = add_image_labels(stream, Columns("image", "mask"), num_classes=2)
    assert isinstance(ds, datasets.IterableDataset) and summary.streamed and "on the fly" in str(summary)
    assert [ex["image_labels"] for ex in ds] == [[2], [], [2]]
    # images come back typed but undecoded ({"bytes", "path"}): the WeCLIP datasets decode them, naming files
    stored = next(iter(ds))["image"]
    assert ds.features["image"] == datasets.Image(decode=False) and set(stored) == {"bytes", "path"}
    assert isinstance(decode_image(stored, "image", "row 0"), Image.Image)
    ds, summary = add_image_labels(stream, Columns("image", "mask"), 2, skip_empty=True)
    assert [ex["image_labels"] for ex in ds] == [[2], [2]] and "dropped" in str(summary)
    with_ids = _dataset([full, empty]).add_column("image_labels", [[2, 1], []]).to_iterable_dataset()
    ds, _ = add_image_labels(with_ids, Columns("image", "mask", "image_labels"), 2)
    assert [sorted(ex) for ex in ds] == [["image", "image_labels", "mask"]] * 2  # no column lost
    assert [ex["image_labels"] for ex in ds] == [[1, 2], []]
    bad = np.full((8, 8), 7, np.uint8)
    ds, _ = add_image_labels(_dataset([full, bad]).to_iterable_dataset(), Columns("image", "mask"), 2)
    with pytest.raises(
        ValueError, match=r"Mask column 'mask' of an example of the stream .*class id\(s\) \[7\]"
    ):
        list(ds)


def _labelled_stream(count=8, size=12):
    images = [Image.fromarray(np.full((size, size, 3), 20 * i, np.uint8)) for i in range(count)]
    masks = [np.full((size, size), 1 + i % 2, np.uint8) for i in range(count)]
    ds = _dataset(masks, images).to_iterable_dataset(num_shards=2)
    return add_image_labels(ds, Columns("image", "mask"), 2)[0]


def _same_items(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_streaming_training_dataset_is_seeded_by_epoch_and_reproducible():
    from weclip_hf.data.batches import StreamingWeakSegmentationDataset

    aug = TrainAugmentation(crop_size=8, scale_range=(0.75, 1.5), normalization=IMAGENET_NORMALIZATION)
    train = StreamingWeakSegmentationDataset(
        _labelled_stream(), Columns("image", "mask"), 2, aug, seed=3, shuffle_buffer_size=4
    )

    def one_pass(epoch):
        train.set_epoch(epoch)
        items = list(train)
        assert len(items) == 8 and items[0]["pixel_values"].shape == (3, 8, 8)
        return items

    first, again, second = one_pass(0), one_pass(0), one_pass(1)
    assert all(_same_items(a, b) for a, b in zip(first, again))  # same epoch: same order and crops
    order = [int(IMAGENET_NORMALIZATION.denormalize(item["pixel_values"])[0].max()) for item in first]
    assert sorted(order) != order  # shuffled (the buffer of 4 mixes the image values 0, 20, ..., 140)
    assert not all(_same_items(a, b) for a, b in zip(first, second))  # a new epoch reshuffles
    assert {k for k in first[0]} == {"pixel_values", "class_labels", "pixel_mask", "labels"}


def _save_splits(root, splits: dict[str, int]):
    rows = {name: _dataset([np.full((4, 4), 1, np.uint8)] * n) for name, n in splits.items()}
    datasets.DatasetDict(rows).save_to_disk(root)
    return str(root)


def test_voc_preset_trains_on_train_aug_when_the_dataset_has_it(tmp_path):
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    notes = []
    path = _save_splits(tmp_path / "aug", {"train": 2, "train_aug": 5, "validation": 1})
    train, val, names = load_dataset_splits(DataSource(dataset_path=path), preset="voc", log=notes.append)
    assert len(train) == 5 and len(val) == 1 and not notes and len(names["class_names"]) == 20
    train, _, _ = load_dataset_splits(
        DataSource(dataset_path=path), preset="voc", train_split="train", log=notes.append
    )
    assert len(train) == 2 and not notes  # an explicit --train_split wins
    train, _, _ = load_dataset_splits(
        DataSource(dataset_path=path, streaming=True), preset="voc", log=notes.append
    )
    assert isinstance(train, datasets.IterableDataset) and sum(1 for _ in train) == 5

    path = _save_splits(tmp_path / "plain", {"train": 3, "validation": 1})
    train, _, _ = load_dataset_splits(DataSource(dataset_path=path), preset="voc", log=notes.append)
    assert len(train) == 3 and len(notes) == 1
    assert "no 'train_aug' split" in notes[0] and "training on 'train' (3 images" in notes[0]


def test_evaluation_loading_needs_no_train_split_and_materializes_streams(tmp_path):
    from weclip_hf.data.batches import materialize
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    path = _save_splits(tmp_path / "val_only", {"validation": 3})
    with pytest.raises(ValueError, match=r"Split 'train' not found; available splits: \['validation'\]"):
        load_dataset_splits(DataSource(dataset_path=path))
    train, val, _ = load_dataset_splits(DataSource(dataset_path=path), need_train=False)
    assert train is None and len(val) == 3
    stream = val.to_iterable_dataset()
    assert len(materialize(stream)) == 3 and len(materialize(stream, limit=2)) == 2
    assert len(materialize(val, limit=2)) == 2
    assert isinstance(materialize(stream)[0]["image"], Image.Image)


def test_a_validation_split_that_is_not_there_is_refused_unless_none(tmp_path):
    """A misspelt --validation_split trained without any evaluation and said nothing (metrics.json without mIoU)."""
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    path = _save_splits(tmp_path / "both", {"train": 2, "validation": 2})
    message = r"Validation split 'val' not found; available splits: \['train', 'validation'\] \('none': no evaluation\)"
    with pytest.raises(ValueError, match=message):
        load_dataset_splits(DataSource(dataset_path=path), validation_split="val")
    assert load_dataset_splits(DataSource(dataset_path=path), validation_split="none")[1] is None
    assert len(load_dataset_splits(DataSource(dataset_path=path))[1]) == 2  # the preset's, when there
    train_only = _save_splits(tmp_path / "train_only", {"train": 2})
    assert load_dataset_splits(DataSource(dataset_path=train_only))[1] is None
    # the toy world ignored both split flags ('none' evaluated all the same; a misspelt name was taken)
    toy = DataSource(toy=True, toy_sizes=(2, 2))
    with pytest.raises(ValueError, match=message):
        load_dataset_splits(toy, validation_split="val")
    with pytest.raises(
        ValueError, match=r"Split 'bogus' not found; available splits: \['train', 'validation'\]"
    ):
        load_dataset_splits(toy, train_split="bogus")
    assert load_dataset_splits(toy, validation_split="none")[1] is None
    assert len(load_dataset_splits(toy, validation_split="validation")[1]) == 2
    # "train" scored the validation images under that name: it is the first training images
    train, scored, _ = load_dataset_splits(DataSource(toy=True, toy_sizes=(3, 2)), validation_split="train")
    assert scored.split == "train" and scored["image_labels"] == train["image_labels"][:2]
    assert scored["image"][1].tobytes() == train["image"][1].tobytes()


def test_train_val_split_holds_out_seeded_rows_of_a_dataset_without_a_validation_split(tmp_path):
    """A dataset with only a train split got no evaluation: --train_val_split (transformers') holds out a fraction
    of it, the same rows for the same seed (a resume), none unless asked, and not of a split that exists."""
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    rows = {
        "train": datasets.Dataset.from_dict(
            {"image": [[[[i, 0, 0]]] for i in range(20)], "image_labels": [[1]] * 20}
        )
    }
    path = str(tmp_path / "train_only")
    datasets.DatasetDict(rows).save_to_disk(path)
    notes = []

    def held_out(seed: int, **kwargs) -> tuple[list[int], list[int]]:
        train, val, _ = load_dataset_splits(
            DataSource(dataset_path=path, seed=seed), log=notes.append, **kwargs
        )
        return [r["image"][0][0][0] for r in train], val and [r["image"][0][0][0] for r in val]

    train, val = held_out(3, train_val_split=0.25)
    assert len(val) == 5 and sorted(train + val) == list(range(20))
    assert held_out(3, train_val_split=0.25) == (train, val) and held_out(4, train_val_split=0.25)[1] != val
    assert "no 'validation' split: --train_val_split 0.25 holds out 5 of the 20 images of 'train'" in notes[0]
    assert held_out(3) == (list(range(20)), None)  # off unless asked, which a note says
    assert (
        notes[-1]
        == "Note: the dataset has no 'validation' split; --train_val_split holds out a share of 'train' for one."
    )
    test_split = _save_splits(tmp_path / "test_split", {"train": 2, "test": 2})  # the split to score named
    load_dataset_splits(DataSource(dataset_path=test_split), log=notes.append)
    assert (
        notes[-1]
        == "Note: the dataset has no 'validation' split; its other splits ('test') can be scored: --validation_split NAME."
    )
    assert held_out(3, train_val_split=0.25, validation_split="none")[1] is None
    with pytest.raises(ValueError, match="Validation split 'valid' not found"):  # a typo is not held out
        held_out(3, train_val_split=0.25, validation_split="valid")
    _, val, _ = load_dataset_splits(DataSource(dataset_path=path), train_val_split=0.25)
    with pytest.raises(ValueError, match="Image labels of row 0 of split 'validation'"):  # named as the split
        add_image_labels(val.map(lambda r: {"image_labels": [9]}), Columns("image", None, "image_labels"), 2)
    both = _save_splits(tmp_path / "both", {"train": 4, "validation": 2})
    assert (
        len(load_dataset_splits(DataSource(dataset_path=both), train_val_split=0.5, log=notes.append)[1]) == 2
    )  # the dataset's, which a note says (the flag was ignored without a word)
    assert notes[-1] == (
        "Note: --train_val_split 0.5 holds out nothing: the dataset has its own 'validation' split, which is scored."
    )
    streamed, val, _ = load_dataset_splits(
        DataSource(dataset_path=path, streaming=True), train_val_split=0.25
    )
    assert is_streaming(streamed) and len(val) == 5  # a saved dataset is divided before it is streamed
    (tmp_path / "folder" / "train").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (4, 4)).save(tmp_path / "folder" / "train" / f"{i}.png")
    folder = DataSource(data_dir=str(tmp_path / "folder"), streaming=True)
    with pytest.raises(ValueError, match="--train_val_split holds out rows of a training split read whole"):
        load_dataset_splits(folder, train_val_split=0.25)


# ---- unreadable files, class-name labels (issue 25.4) -----------------------------------------------------


def _write_pairs(root, count=4, damage=None, jpeg=False):
    """``count`` image / mask files (random 32 x 32 images, masks with class 1 or 2) and a Dataset of their
    paths as split 'train'; ``damage``: {index: ("image" | "mask", "truncate" | "garbage")}."""
    from weclip_hf.data.sources import with_split_name

    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(count):
        image = root / f"img_{i}.{'jpg' if jpeg else 'png'}"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
        mask = root / f"mask_{i}.png"
        Image.fromarray(np.full((32, 32), 1 + i % 2, np.uint8)).save(mask)
        images.append(str(image))
        masks.append(str(mask))
    for i, (column, how) in (damage or {}).items():
        path = root / ((images if column == "image" else masks)[i])
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if how == "truncate" else b"not an image at all")
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    ds = datasets.Dataset.from_dict({"image": images, "mask": masks}, features=features)
    return with_split_name(ds, "train")


@pytest.mark.parametrize(
    "damage, jpeg, name",
    [({2: ("image", "garbage")}, False, "img_2.png"), ({2: ("image", "truncate")}, True, "img_2.jpg"),
     ({2: ("mask", "garbage")}, False, "mask_2.png")],
    ids=["corrupt_image", "truncated_jpeg", "corrupt_mask"],
)  # fmt: skip
@pytest.mark.parametrize("labels", ["from_masks", "label_column"])
def test_unreadable_files_fail_at_preparation_naming_file_and_row(tmp_path, damage, jpeg, name, labels):
    from weclip_hf.data.decoding import UnreadableImageError

    ds = _write_pairs(tmp_path, damage=damage, jpeg=jpeg)
    columns = Columns("image", "mask")
    if labels == "label_column":  # datasets decoded no image here before: the run failed mid-training
        ds, columns = ds.add_column("classes", [[1]] * 4), Columns("image", "mask", "classes")
    with pytest.raises(
        UnreadableImageError, match=rf"Cannot read file '.*{name}' \(column '\w+', row 2 of split 'train'\)"
    ):
        add_image_labels(ds, columns, num_classes=2)


def test_bytes_only_rows_are_named_by_row_and_split():
    from weclip_hf.data.decoding import UnreadableImageError
    from weclip_hf.data.sources import with_split_name

    good = np.zeros((4, 4), np.uint8)
    ds = with_split_name(_dataset([good, good]), "validation")  # PIL images: stored as bytes, no path
    bad = ds.cast_column("image", datasets.Image(decode=False)).to_list()
    bad[1]["image"] = {"bytes": b"\x89PNG broken", "path": None}
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    ds = with_split_name(datasets.Dataset.from_list(bad, features=features), "validation")
    message = r"Cannot read column 'image' of row 1 of split 'validation' \(stored as bytes, no file path\)"
    with pytest.raises(
        UnreadableImageError, match=message + r": UnidentifiedImageError.*skip_unreadable=True"
    ):
        add_image_labels(ds, Columns("image", "mask"), 2)


def test_skip_unreadable_drops_and_lists_the_files(tmp_path):
    ds = _write_pairs(tmp_path, damage={1: ("image", "truncate"), 3: ("mask", "garbage")})
    out, summary = add_image_labels(ds, Columns("image", "mask"), 2, skip_unreadable=True)
    assert len(out) == 2 and summary.total == 2 and out["image_labels"] == [[1], [1]]
    assert [s.split("'")[1].rsplit("/", 1)[-1] for s in summary.unreadable] == ["img_1.png", "mask_3.png"]
    text = str(summary)
    assert "2 unreadable skipped" in text and "img_1.png' (column 'image', row 1 of split 'train')" in text
    assert "mask_3.png' (column 'mask', row 3 of split 'train')" in text


def test_training_and_evaluation_datasets_name_a_file_damaged_after_preparation(tmp_path):
    from weclip_hf.data.batches import EvalSegmentationDataset, WeakSegmentationDataset
    from weclip_hf.data.decoding import UnreadableImageError

    ds, _ = add_image_labels(_write_pairs(tmp_path), Columns("image", "mask"), 2)
    (tmp_path / "img_3.png").write_bytes(b"gone bad")
    train = WeakSegmentationDataset(
        ds, Columns("image", "mask"), 2, TrainAugmentation(crop_size=16, normalization=IMAGENET_NORMALIZATION)
    )
    assert train[0]["pixel_values"].shape == (3, 16, 16) and train[0]["labels"].shape == (16, 16)
    with pytest.raises(
        UnreadableImageError, match=r"img_3.png' \(column 'image', training example 3 of split 'train'\)"
    ):
        train[3]
    evaluation = EvalSegmentationDataset(ds, Columns("image", "mask"), 2, IMAGENET_NORMALIZATION)
    assert evaluation[0]["labels"].shape == (32, 32)
    with pytest.raises(UnreadableImageError, match=r"img_3.png' \(column 'image', evaluation example 3"):
        evaluation[3]


def test_streams_fail_or_skip_unreadable_files_when_met(tmp_path):
    from weclip_hf.data.batches import StreamingWeakSegmentationDataset
    from weclip_hf.data.decoding import UnreadableImageError

    ds = _write_pairs(tmp_path, damage={2: ("image", "garbage")}).add_column("classes", [[1]] * 4)
    columns = Columns("image", "mask", "classes")
    stream, summary = add_image_labels(ds.to_iterable_dataset(), columns, 2, skip_unreadable=True)
    assert "skipped when met" in str(summary)
    aug = TrainAugmentation(crop_size=16, normalization=IMAGENET_NORMALIZATION)
    strict = StreamingWeakSegmentationDataset(stream, columns, 2, aug, shuffle_buffer_size=0)
    with pytest.raises(UnreadableImageError, match=r"img_2.png' \(column 'image', example 2 of pass 0 over"):
        list(strict)
    lenient = StreamingWeakSegmentationDataset(
        stream, columns, 2, aug, shuffle_buffer_size=0, skip_unreadable=True
    )
    with pytest.warns(UserWarning, match=r"Skipped unreadable file '.*img_2.png'"):
        items = list(lenient)
    assert len(items) == 3 and [s.split("'")[1].rsplit("/", 1)[-1] for s in lenient.skipped] == ["img_2.png"]
    # labels from masks: the lazy map reads the mask, so the stream drops the example there
    (tmp_path / "m").mkdir()
    masked = _write_pairs(tmp_path / "m", damage={0: ("mask", "truncate")})
    stream, _ = add_image_labels(
        masked.to_iterable_dataset(), Columns("image", "mask"), 2, skip_unreadable=True
    )
    with pytest.warns(
        UserWarning, match=r"Skipped unreadable file '.*mask_0.png' \(column 'mask', an example of"
    ):
        assert [ex["image_labels"] for ex in stream] == [[2], [1], [2]]


def test_materialize_names_or_skips_unreadable_streamed_images(tmp_path):
    from weclip_hf.data.batches import materialize
    from weclip_hf.data.decoding import UnreadableImageError
    from weclip_hf.data.sources import with_split_name

    stream = with_split_name(
        _write_pairs(tmp_path, damage={1: ("mask", "garbage")}).to_iterable_dataset(), "val"
    )
    with pytest.raises(
        UnreadableImageError, match=r"mask_1.png' \(column 'mask', example 1 of streamed split 'val'\)"
    ):
        materialize(stream)
    with pytest.warns(UserWarning, match="Skipped unreadable file"):
        kept = materialize(stream, skip_unreadable=True)
    assert len(kept) == 3 and isinstance(kept[0]["image"], Image.Image) and kept.split == "val"
    with pytest.raises(ValueError, match=r"limit \(--max_eval_samples\) must be >= 1, got 0"):
        materialize(stream, limit=0)


def test_class_name_labels_map_through_the_class_names_or_name_the_unknown(tmp_path):
    names = [("cat", "cat"), ("dog", "dog"), ("person", "person with clothes,people,human")]
    assert normalize_label_row(["dog", "Cat "], 3, class_names=names) == [1, 2]
    assert normalize_label_row("people", 3, class_names=names) == [3]  # a prompt synonym; a single name
    with pytest.raises(
        ValueError,
        match=r"row 4 contain unknown class name\(s\) \['bird'\]; expected .* \['cat', 'dog', 'person'\]",
    ):
        normalize_label_row(["cat", "bird"], 3, name="row 4", class_names=names)
    with pytest.raises(ValueError, match=r"are class names \['cat'\], but no class names were given"):
        normalize_label_row(["cat"], 3, name="row 0")

    ds = _write_pairs(tmp_path).add_column("classes", [["cat"], ["dog", "cat"], [], ["person"]])
    columns = Columns("image", None, "classes")
    out, summary = add_image_labels(ds, columns, 3, class_names=names)
    assert out["image_labels"] == [[1], [1, 2], [], [3]] and summary.empty == 1
    bad = _write_pairs(tmp_path).add_column("classes", [["cat"], ["cat"], ["cta"], ["dog"]])
    with pytest.raises(
        ValueError,
        match=r"Image labels of row 2 of split 'train' \(image file '.*img_2.png'\) contain unknown class name\(s\) \['cta'\]",
    ):
        add_image_labels(bad, columns, 3, class_names=names)


def _train_script():
    from conftest import train_module

    return train_module()


def test_train_rejects_max_train_samples_zero(capsys):
    with pytest.raises(SystemExit):
        _train_script().parse_args(["--max_train_samples", "0"])
    assert "argument --max_train_samples: must be >= 1, got 0" in capsys.readouterr().err


def test_train_skip_unreadable_images_flag(tmp_path, tiny_clip, capsys):
    """Without the flag the damaged file stops the run before its first step; with it, it is listed and skipped."""
    from weclip_hf.data.decoding import UnreadableImageError

    data = tmp_path / "data"
    files = tmp_path / "files"
    files.mkdir()
    train = _write_pairs(files, count=5, damage={3: ("image", "truncate")})
    datasets.DatasetDict({"train": train}).save_to_disk(data)  # the files' bytes and names are embedded
    args = [
        "--dataset_path",
        str(data),
        "--validation_split",
        "none",
        "--clip_model_name_or_path",
        tiny_clip,
        "--class_names",
        "a",
        "b",
        "--background_names",
        "sky",
        "--max_train_steps",
        "1",
        "--crop_size",
        "24",
        "--per_device_train_batch_size",
        "2",
        "--num_threads",
        "2",
        "--num_overlays",
        "0",
    ]
    script = _train_script()
    with pytest.raises(
        UnreadableImageError, match=r"Cannot read file 'img_3.png' \(column 'image', row 3 of split 'train'\)"
    ):
        script.main([*args, "--output_dir", str(tmp_path / "strict")])
    assert not (tmp_path / "strict" / "train_log.jsonl").exists()  # before any training step
    capsys.readouterr()
    script.main([*args, "--output_dir", str(tmp_path / "skip"), "--skip_unreadable_images"])
    out = capsys.readouterr().out
    assert "train: 4 images" in out and "1 unreadable skipped (not counted above): file 'img_3.png'" in out
    assert (tmp_path / "skip" / "model.safetensors").exists()


def test_class_names_come_from_a_classlabel_column_unless_given(tmp_path, tiny_clip, capsys):
    """Without --class_names and --preset, a dataset whose label column is a ClassLabel (or a list of them) trained
    on VOC's 20 classes and failed ("unknown class name(s) ['heart']"): its names are the classes now, as
    transformers' example scripts take id2label from it; --class_names and --preset still win."""
    from weclip_hf.data.sources import DataSource, class_label_names, load_dataset_splits

    names = ["sky dog", "heart", "cat"]
    image = Image.new("RGB", (24, 24))
    single = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    listed = datasets.Features(
        {"image": datasets.Image(), "tags": datasets.Sequence(datasets.ClassLabel(names=names))}
    )
    rows = {"image": [image] * 2, "label": [1, 2]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=single)}).save_to_disk(
        tmp_path / "d"
    )
    source = DataSource(dataset_path=str(tmp_path / "d"))
    assert load_dataset_splits(source)[2] == {"class_names": names}
    assert load_dataset_splits(source, preset="toy")[2]["class_names"] != names
    tags = datasets.Dataset.from_dict({"image": [image], "tags": [[0, 2]]}, features=listed)
    assert class_label_names(tags) == names and class_label_names(tags, labels_column="image") is None
    assert class_label_names(tags.add_column("labels", [[1]])) is None  # the label column picked is not one
    scene = datasets.Features(
        {"image": datasets.Image(), "annotation": datasets.Image(), "scene": datasets.ClassLabel(names=names)}
    )
    beside_masks = datasets.Dataset.from_dict(
        {"image": [image], "annotation": [image], "scene": [0]}, features=scene
    )
    assert class_label_names(beside_masks) is None  # scene_parse_150's scene_category is no image's classes
    assert class_label_names(beside_masks, labels_column="scene") == names  # unless named as the labels
    flags = ["--dataset_path", str(tmp_path / "d"), "--validation_split", "none", "--clip_model_name_or_path",
             tiny_clip, "--max_train_steps", "1", "--crop_size", "24", "--per_device_train_batch_size", "2",
             "--num_threads", "2", "--num_overlays", "0"]  # fmt: skip
    script = _train_script()
    script.main([*flags, "--output_dir", str(tmp_path / "from_data")])
    assert "Note: the classes are the names of the dataset's label column" in capsys.readouterr().out
    assert json.loads((tmp_path / "from_data" / "config.json").read_text())["class_names"] == names
    script.main([*flags, "--output_dir", str(tmp_path / "given"), "--class_names", "cat", "heart", "sky dog"])
    assert "Note: the classes are" not in capsys.readouterr().out
    assert json.loads((tmp_path / "given" / "config.json").read_text())["class_names"] == [
        "cat",
        "heart",
        "sky dog",
    ]
    # a model continued on the dataset keeps its own classes (its text embeddings' order), not the ClassLabel's
    script.main(
        [
            *flags[:4],
            *flags[6:],
            "--output_dir",
            str(tmp_path / "continued"),
            "--model_name_or_path",
            str(tmp_path / "given"),
        ]
    )
    assert "Note: the classes are" not in capsys.readouterr().out
    continued = json.loads((tmp_path / "continued" / "config.json").read_text())["class_names"]
    assert continued == ["cat", "heart", "sky dog"]


@pytest.mark.parametrize("statistics", ["imagenet", "clip"])
def test_training_and_evaluation_items_are_the_image_processors_pixel_values(tmp_path, statistics):
    """The datasets normalize with the model's processor's statistics, by its arithmetic: a training crop and an
    evaluation image (after the evaluation's long-side resize) are bit for bit what the processor gives."""
    from weclip_hf import WeCLIPImageProcessor
    from weclip_hf.data.batches import EvalSegmentationDataset, train_item
    from weclip_hf.image_reading import to_rgb_uint8
    from weclip_hf.inference import resize_longest_edge
    from weclip_hf.normalization import CLIP_MEAN, CLIP_STD, PixelNormalization

    kwargs = {"image_mean": CLIP_MEAN, "image_std": CLIP_STD} if statistics == "clip" else {}
    processor = WeCLIPImageProcessor(size={"longest_edge": 40}, **kwargs)
    normalization = PixelNormalization.from_image_processor(processor)
    columns = Columns("image", "mask")
    ds, _ = add_image_labels(_write_pairs(tmp_path, count=2), columns, 2)
    image = to_rgb_uint8(tmp_path / "img_1.png")

    evaluation = EvalSegmentationDataset(ds, columns, 2, normalization)[1]["pixel_values"]
    served = processor(image).pixel_values
    assert served.shape == (1, 3, 40, 40) and torch.equal(resize_longest_edge(evaluation[None], 40), served)

    augment = TrainAugmentation(crop_size=24, normalization=normalization)
    trained = train_item(ds[1], columns, 2, augment, np.random.default_rng(7))["pixel_values"]
    crop, _, _ = augment(image, None, np.random.default_rng(7))
    assert torch.equal(trained, processor(crop, do_resize=False).pixel_values[0])
    default = WeCLIPImageProcessor(size={"longest_edge": 40})(image).pixel_values
    assert torch.equal(served, default) == (statistics == "imagenet")  # the statistics are the processor's


def test_a_model_trained_with_clip_statistics_is_saved_evaluated_and_served_with_them(
    tmp_path, tiny_clip, monkeypatch
):
    """train.py takes the statistics of --image_processor_name_or_path for its data, saves that processor with
    the model (what the pipeline and evaluate.py load) and draws its overlays with it (the image panel is the
    validation image, exactly)."""
    import json

    from conftest import FAST, run_train

    from weclip_hf import WeCLIPImageProcessor
    from weclip_hf.data.labelled_sets import evaluation_set
    from weclip_hf.data.sources import DataSource, load_dataset_splits
    from weclip_hf.normalization import CLIP_MEAN, CLIP_NORMALIZATION, CLIP_STD
    from weclip_hf.visualization import TITLE_HEIGHT, display_size, resize_rgb

    WeCLIPImageProcessor(image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(
        tmp_path / "clip_processor"
    )
    out = tmp_path / "run"
    run_train(
        "--clip_model_name_or_path", tiny_clip, "--output_dir", out, "--max_train_steps", 1,
        "--image_processor_name_or_path", tmp_path / "clip_processor", *FAST,
    )  # fmt: skip
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert (saved["image_mean"], saved["image_std"]) == (list(CLIP_MEAN), list(CLIP_STD))
    _, val, _ = load_dataset_splits(DataSource(toy=True, toy_sizes=(24, 4), seed=0))
    image = np.asarray(val[0]["image"].convert("RGB"))
    overlay = np.asarray(Image.open(out / json.loads((out / "metrics.json").read_text())["overlays"][0]))
    size = display_size(*image.shape[:2])  # the image panel: the image upscaled, below its title strip
    panel = overlay[TITLE_HEIGHT : TITLE_HEIGHT + size[0], : size[1]]
    assert np.array_equal(panel, resize_rgb(image, size))

    from conftest import evaluate_module

    script = evaluate_module()
    used = []
    monkeypatch.setattr(
        script, "evaluation_set", lambda *a, **k: used.append(a[3]) or evaluation_set(*a, **k)
    )  # its 4th argument: the normalization of the validation set
    script.main(["--model_name_or_path", str(out), "--toy_val_images", "4", "--max_eval_samples", "1"])
    assert used == [CLIP_NORMALIZATION]


def test_the_training_and_validation_data_are_normalized_with_the_runs_processor(
    tmp_path, tiny_clip, monkeypatch
):
    """`load_data_and_model` hands the data the statistics of the processor it saves with the model (here
    --image_processor_name_or_path's CLIP statistics), not a default processor's."""
    from types import SimpleNamespace

    from conftest import train_module, train_phase

    from weclip_hf import WeCLIPImageProcessor
    from weclip_hf.normalization import CLIP_MEAN, CLIP_NORMALIZATION, CLIP_STD

    WeCLIPImageProcessor(image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(tmp_path)
    phase, used = train_phase("data_and_model"), []
    monkeypatch.setattr(phase, "prepare_data", lambda *a, **k: used.append(a[6]) or (None, None))
    args = train_module().parse_args(
        ["--clip_model_name_or_path", tiny_clip, "--image_processor_name_or_path", str(tmp_path)]
        + ["--toy_train_images", "4", "--toy_val_images", "1"]
    )
    accelerator = SimpleNamespace(print=lambda *a: None, num_processes=1, device=torch.device("cpu"))
    _, processor, _, _ = phase.load_data_and_model(args, accelerator, False)
    assert used == [CLIP_NORMALIZATION] and list(processor.image_mean) == list(CLIP_MEAN)


def test_zero_based_label_errors_show_the_users_own_ids_and_range():
    with pytest.raises(ValueError, match=r"id\(s\) \[4\] outside 0..3 \(--labels_zero_based\)"):
        normalize_label_row([0, 4], 4, zero_based=True)
    # an id 0 where every id fits 0..C-1: the zero-based numbering, named (the flag was not)
    with pytest.raises(
        ValueError,
        match=r"id\(s\) \[0\] outside 1..4\. Ids 0..3 number the classes from 0: give --labels_zero_based; if 0 "
        r"is the background \(as in a mask's ids\), leave it out: image-level labels name the classes 1..4\.$",
    ):
        normalize_label_row([0, 2], 4)
    with pytest.raises(ValueError, match=r"id\(s\) \[0, 4\] outside 1..3\.$"):  # 4 fits no numbering: no hint
        normalize_label_row([0, 4], 3)


def test_a_missing_data_dir_or_dataset_path_is_named(tmp_path):
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    with pytest.raises(FileNotFoundError, match=r"--data_dir .*nope: the directory does not exist"):
        load_dataset_splits(DataSource(data_dir=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match=r"--dataset_path .*nope: the directory does not exist"):
        load_dataset_splits(DataSource(dataset_path=str(tmp_path / "nope")))


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("nulls", [False, True])
@pytest.mark.parametrize("flag", ["data_dir", "dataset_name"])
def test_an_imagefolder_with_labels_in_train_and_masks_in_validation_loads(tmp_path, streaming, nulls, flag):
    """README's own layout (image-level labels only for training, masks to score the validation split) failed in
    `datasets` ("Metadata files ... have different features"), also with the other split's field written null; the
    same folder as --dataset_name failed after --data_dir was fixed."""
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    for split in ("train", "validation"):
        (tmp_path / split).mkdir()
        rows = []
        for i in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / split / f"{i}.png")
            if split == "train":
                rows.append(
                    {"file_name": f"{i}.png", "image_labels": [i + 1]}
                    | ({"label_file_name": None} if nulls else {})
                )
            else:
                Image.fromarray(np.full((8, 8), i + 1, np.uint8)).save(tmp_path / split / f"{i}_mask.png")
                rows.append(
                    {"file_name": f"{i}.png", "label_file_name": f"{i}_mask.png"}
                    | ({"image_labels": None} if nulls else {})
                )
        (tmp_path / split / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, val, _ = load_dataset_splits(DataSource(**{flag: str(tmp_path)}, streaming=streaming))
    assert sorted(train.features) == ["image", "image_labels"] and sorted(val.features) == ["image", "label"]
    assert [row["image_labels"] for row in train] == [[1], [2]]
    assert [np.asarray(row["label"]).max() for row in val] == [1, 2]


def test_a_folder_per_class_train_split_beside_a_validation_split_with_masks_loads(tmp_path):
    """train/<class>/*.png next to validation/ with a metadata.jsonl of masks (two layouts docs/training.md names):
    `datasets` read train/ with validation/'s columns, its class folders' names as mask files ("Cannot read file
    'airplane'"); each split is now read as its own layout."""
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    for name in ("cat", "dog"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / name / "0.png")
    (tmp_path / "validation").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "validation" / "0.png")
    Image.fromarray(np.full((8, 8), 2, np.uint8)).save(tmp_path / "validation" / "0_mask.png")
    (tmp_path / "validation" / "metadata.jsonl").write_text(
        '{"file_name": "0.png", "label_file_name": "0_mask.png"}\n'
    )
    train, val, names = load_dataset_splits(DataSource(data_dir=str(tmp_path)))
    assert names == {"class_names": ["cat", "dog"]} and train["label"] == [0, 1]
    assert np.asarray(val[0]["label"]).max() == 2


def test_an_imagefolder_whose_metadata_has_no_rows_is_named(tmp_path):
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    (tmp_path / "train").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a.png")
    (tmp_path / "train" / "metadata.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"train/metadata.jsonl lists no images \(it has no rows\)"):
        load_dataset_splits(DataSource(data_dir=str(tmp_path)))


def test_metadata_is_read_as_utf_8_whatever_the_locale(tmp_path):
    """`datasets` reads metadata.jsonl as UTF-8; the check before it read it in the locale's encoding, so a dataset
    with non-ASCII file names failed under LC_ALL=C (and cp1252 on Windows) with a UnicodeDecodeError."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "metadata.jsonl").write_text(
        '{"file_name": "сосна_Á.png", "image_labels": [1]}\n', "utf-8"
    )
    check = f"from weclip_hf.data.folders import check_imagefolder_metadata; check_imagefolder_metadata({str(tmp_path)!r})"
    ascii_locale = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    run = subprocess.run([sys.executable, "-c", check], env=ascii_locale, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_pascal_vocs_own_folder_layout_is_named(tmp_path):
    """VOC's release (VOCdevkit/VOC2012: JPEGImages/, SegmentationClass/, ImageSets/) is not an imagefolder. Given
    as --dataset_name, `datasets` read its ImageSets/Segmentation/val.txt as a 'validation' split of text lines:
    "Split 'train' not found; available splits: ['validation']", and evaluate.py "No image column found ...
    available columns: ['text']"."""
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    for name in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / name).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "JPEGImages" / "a.jpg")
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    with pytest.raises(ValueError, match="--data_dir .* laid out as PASCAL VOC's own release"):
        load_dataset_splits(DataSource(data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="--dataset_name .* laid out as PASCAL VOC's own release"):
        load_dataset_splits(DataSource(dataset_name=str(tmp_path)), need_train=False)


def test_an_empty_split_of_a_saved_dataset_is_named(tmp_path):
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    image = Image.new("RGB", (8, 8))
    splits = {
        "train": datasets.Dataset.from_dict(
            {"image": [image], "mask": [image.convert("L")]}, features=features
        ),
        "validation": datasets.Dataset.from_dict({"image": [], "mask": []}, features=features),
    }
    datasets.DatasetDict(splits).save_to_disk(tmp_path / "ds")
    with pytest.raises(
        ValueError, match=r"Split 'validation' of --dataset_path .*ds is empty: it has no examples"
    ):
        load_dataset_splits(DataSource(dataset_path=str(tmp_path / "ds")))


def test_a_saved_datasets_state_json_that_is_no_object_is_named(tmp_path):
    """A state.json of a save_to_disk folder holding a JSON array or nesting 100,000 arrays ended in an
    AttributeError or a RecursionError from the empty-split check; now one ValueError naming the file."""
    from weclip_hf.data.folders import check_saved_splits

    state = tmp_path / "state.json"
    for content, problem in (("[1]", "holds a JSON array"), ("[" * 100_000 + "]" * 100_000, "nest too deep")):
        state.write_text(content)
        with pytest.raises(ValueError, match=f"^{state}: .*{problem}"):
            check_saved_splits(str(tmp_path))


def test_an_imagefolder_metadata_file_that_is_a_fifo_or_not_utf8_is_named(tmp_path):
    """A metadata.jsonl that is a FIFO blocked the check of an imagefolder's rows forever (here a writer opens it
    after 2 s, so that the old code ends), one of Latin-1 bytes raised a bare UnicodeDecodeError; each is now a
    ValueError naming the file."""
    import os

    from conftest import release_fifo_later

    from weclip_hf.data.folders import check_imagefolder_metadata

    metadata = tmp_path / "train" / "metadata.jsonl"
    metadata.parent.mkdir()
    metadata.write_bytes(b'{"file_name": "\xe9.png"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{metadata}: not UTF-8 text (byte 15 is b'\\xe9')")):
        check_imagefolder_metadata(str(tmp_path))
    metadata.unlink()
    os.mkfifo(metadata)
    release_fifo_later(metadata)
    with pytest.raises(ValueError, match=re.escape(f"{metadata}: it is a FIFO")):
        check_imagefolder_metadata(str(tmp_path))


def test_an_empty_loaded_split_is_named():
    from weclip_hf.data.sources import check_not_empty, with_split_name

    empty = with_split_name(datasets.Dataset.from_dict({"image": []}), "train")
    with pytest.raises(ValueError, match=r"Split 'train' of org/data is empty"):
        check_not_empty(empty, "org/data")
    check_not_empty(None, "org/data")  # an absent split is not an empty one


def test_evaluation_set_limits_labels_and_normalizes_the_validation_split():
    from weclip_hf.data.batches import EvalSegmentationDataset
    from weclip_hf.data.labelled_sets import evaluation_set
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    _, val, _ = load_dataset_splits(DataSource(toy=True, toy_sizes=(1, 3), seed=0))
    entered = []

    class Labelling:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    dataset, summary = evaluation_set(val, 8, 255, IMAGENET_NORMALIZATION, max_samples=2, labelling=Labelling)
    assert isinstance(dataset, EvalSegmentationDataset) and len(dataset) == 2 and entered == [True]
    item = dataset[1]
    assert item["pixel_values"].shape[-2:] == item["labels"].shape and item["class_labels"].shape == (8,)
    assert summary.total == 2


def test_data_source_from_args_names_the_toy_world_when_no_dataset_is_named():
    import argparse

    from weclip_hf.data.sources import DataSource

    bare = argparse.Namespace(dataset_name=None, data_dir=None, dataset_path=None)
    assert DataSource.from_args(bare, toy_sizes=(2, 3)) == DataSource(toy=True, toy_sizes=(2, 3))
    hub = argparse.Namespace(
        dataset_name="org/ds",
        dataset_config_name="c",
        data_dir=None,
        dataset_path=None,
        streaming=True,
        seed=4,
    )
    source = DataSource.from_args(hub)
    assert source == DataSource("org/ds", "c", streaming=True, seed=4) and source.name == "org/ds"


def test_label_reading_from_args_maps_the_scripts_flags():
    """The scripts' reading flags map onto one `LabelReading` (train.py's and evaluate.py's skip flags; the
    trainer script has none: its skips are the defaults)."""
    import argparse

    from weclip_hf.data.labelled_sets import LabelReading

    flags = argparse.Namespace(
        image_column="img",
        mask_column="seg",
        labels_column="tags",
        labels_zero_based=True,
        skip_empty_images=True,
        skip_unreadable_images=True,
    )
    assert LabelReading.from_args(flags, ["cat"]) == LabelReading(
        "img", "seg", "tags", True, ["cat"], True, True
    )
    columns_only = argparse.Namespace(
        image_column=None, mask_column=None, labels_column=None, labels_zero_based=False
    )
    assert LabelReading.from_args(columns_only) == LabelReading()


def test_an_explicit_validation_split_wins_over_the_presets(tmp_path):
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    path = _save_splits(tmp_path / "two_vals", {"train": 2, "validation": 1, "val2": 3})
    _, val, _ = load_dataset_splits(DataSource(dataset_path=path), preset="voc")
    assert len(val) == 1  # the preset's "validation"
    for preset in ("voc", None):
        _, val, _ = load_dataset_splits(DataSource(dataset_path=path), validation_split="val2", preset=preset)
        assert len(val) == 3, preset


def test_width_height_is_pils_order_for_images_and_arrays():
    from weclip_hf.data.masks import width_height

    assert width_height(Image.new("RGB", (7, 5))) == (7, 5)
    assert width_height(np.zeros((5, 7), np.uint8)) == (7, 5)
    assert width_height(np.zeros((5, 7, 3), np.uint8)) == (7, 5)
    assert width_height(np.zeros((3, 5, 7), np.uint8)) == (7, 5)  # CHW, as the image processor reads it
    assert width_height(None) is None


def _one_label(example: dict, idx: int) -> dict:
    return {"image_labels": [1], "_unreadable": None}


def test_labels_cached_under_other_checking_code_are_recomputed(tmp_path, monkeypatch):
    """`datasets` keyed the label map by the function's name: labels cached before a change of the checks were
    reused (a mask the new checks refuse went through). The map is cached under a key that holds the code that
    reads and checks the rows."""
    from weclip_hf.data import image_labels

    datasets.Dataset.from_dict({"x": [1, 2, 3]}).save_to_disk(tmp_path / "d")
    dataset = datasets.load_from_disk(tmp_path / "d")  # on disk: map results are cached
    label_row = functools.partial(_one_label)
    mapped = image_labels._map_label_rows(dataset, label_row, None, with_mask=False)
    assert mapped._fingerprint == image_labels.label_map_fingerprint(dataset, label_row)
    assert (
        image_labels._map_label_rows(dataset, label_row, None, with_mask=False).cache_files
        == mapped.cache_files
    )
    monkeypatch.setattr(image_labels, "_code_digest", lambda: "other checking code")
    remapped = image_labels._map_label_rows(dataset, label_row, None, with_mask=False)
    assert remapped.cache_files != mapped.cache_files and remapped["image_labels"] == [[1], [1], [1]]


def _classified(labels, feature, masks=None):
    """A split 'train' of black 8 x 8 images with a label column ``label`` of ``feature`` (and ``masks``)."""
    from weclip_hf.data.sources import with_split_name

    columns = {"image": [Image.fromarray(np.zeros((8, 8, 3), np.uint8))] * len(labels), "label": labels}
    features = {"image": datasets.Image(), "label": feature}
    if masks is not None:
        columns["mask"], features["mask"] = [Image.fromarray(m) for m in masks], datasets.Image()
    return with_split_name(datasets.Dataset.from_dict(columns, features=datasets.Features(features)), "train")


def test_whole_class_names_win_over_comma_synonyms():
    """ImageNet-1k's ClassLabel names "Cardigan, Cardigan Welsh corgi" (264) and "cardigan" (474): the synonym
    "cardigan" of the first captured the name of the second, and every cardigan trained as the corgi."""
    from weclip_hf.data.label_rows import class_name_ids

    names = ["Cardigan, Cardigan Welsh corgi", "cardigan"]
    assert class_name_ids(names) == {
        "cardigan, cardigan welsh corgi": 1,
        "cardigan": 2,
        "cardigan welsh corgi": 1,
    }
    labelled, summary = add_image_labels(
        _classified([0, 1, 1], datasets.ClassLabel(names=names)), Columns("image", None, "label"), 2,
        class_names=names,
    )  # fmt: skip
    assert labelled["image_labels"] == [[1], [2], [2]] and summary.class_counts == {1: 1, 2: 2}
    shared = ["sea lion, seal", "harbor seal, seal"]  # a synonym of two classes names neither
    assert "seal" not in class_name_ids(shared) and class_name_ids(shared)["harbor seal"] == 2
    with pytest.raises(ValueError, match=r"unknown class name\(s\) \['seal'\]"):
        normalize_label_row(["seal"], 2, class_names=shared)
    # a whole name of two classes maps to the first (its docstring)
    assert class_name_ids(["dog", ("hound", "dog")])["dog"] == 1


def test_class_names_past_the_run_s_classes_are_refused():
    """A lookup that knows more names than the model has classes (the run's first C) refuses a row naming a
    later one: its id would be past 1..C."""
    names = ["cat", "dog", "bird"]
    assert normalize_label_row(["dog", "cat"], 2, class_names=names) == [1, 2]
    past = r"unknown class name\(s\) \['bird'\]; .* 2 classes: \['cat', 'dog'\]"
    with pytest.raises(ValueError, match=past):
        normalize_label_row(["bird", "cat"], 2, class_names=names)


_TRIMAP = np.array([[1, 2], [3, 2]], np.uint8).repeat(4, 0).repeat(4, 1)  # pet / background / border, 8 x 8


@pytest.mark.parametrize(
    "feature, breeds",
    [
        (datasets.ClassLabel(names=list("abcdefgh")), [6, 4, 0, 7]),
        (datasets.List(datasets.Value("string")), [["g"], ["e"], ["a"], ["h"]]),
        (datasets.List(datasets.Value("float32")), [np.eye(8)[i].tolist() for i in (6, 4, 0, 7)]),
    ],
    ids=["class_label", "class_names", "multi_hot"],
)
def test_a_label_column_that_disagrees_with_its_masks_is_refused(feature, breeds):
    """Oxford-IIIT-Pet's layout (a breed ClassLabel beside a trimap: 1 pet, 2 background, 3 border) was read without
    a word: the CAMs made for the breed, the trimap scored as classes 1..3. Only integer ids met their masks."""
    from weclip_hf.data.labelled_sets import LabelReading, evaluation_set

    pets = _classified(breeds, feature, [_TRIMAP] * 4)
    breed_labels = LabelReading(labels_column="label", class_names=list("abcdefgh"))
    with pytest.raises(ValueError, match=r"split 'train' \(column 'label'\) and its masks \(column 'mask'\) "
                       r"disagree: on 3 of the 4 rows .* \(e.g. row 0: label classes \[7\], mask classes \[1, 2, 3\] "
                       r"of 1..8\)\. If the masks are not maps .* --mask_column .* --labels_column none"):  # fmt: skip
        evaluation_set(pets, 8, 255, IMAGENET_NORMALIZATION, breed_labels)
    masks = [np.where(_TRIMAP == 1, c, 0).astype(np.uint8) for c in (7, 5, 1, 2)]  # one row of four wrong
    dataset, _ = evaluation_set(
        _classified(breeds, feature, masks), 8, 255, IMAGENET_NORMALIZATION, breed_labels
    )
    assert dataset.dataset["image_labels"] == [[7], [5], [1], [8]]  # a few errors stay the user's


def test_columns_that_cannot_hold_masks_are_not_taken_for_masks():
    """An imagefolder's ``"label": 5`` given as --labels_column label was also taken as the mask column ("has shape
    ()"), and a string column of class names ``label`` found by name was read as mask files ("Cannot read file
    'heart'")."""
    from weclip_hf.data.labelled_sets import LabelReading, training_set

    ints = {"image": datasets.Image(), "label": datasets.Value("int64")}
    assert resolve_columns(["image", "label"], labels_column="label", features=ints) == Columns(
        "image", None, "label"
    )
    strings = {"image": datasets.Image(), "label": datasets.Value("string")}
    with pytest.raises(ValueError, match="needs a mask column or an image-level label column"):
        resolve_columns(["image", "label"], features=strings, example=lambda: {"label": "heart"})
    paths = resolve_columns(["image", "label"], features=strings, example=lambda: {"label": "masks/0.PNG"})
    assert paths == Columns("image", "label", None)  # mask files given by path are read as before
    polygons = {  # COCO's segmentation column: float coordinates, no mask
        "image": datasets.Image(),
        "segmentation": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
        "image_labels": datasets.Sequence(datasets.Value("int64")),
    }
    assert resolve_columns(list(polygons), features=polygons) == Columns("image", None, "image_labels")
    arrays = {
        "image": datasets.Image(),
        "mask": datasets.Sequence(datasets.Sequence(datasets.Value("uint8"))),
    }
    assert resolve_columns(list(arrays), features=arrays) == Columns("image", "mask", None)
    named = _classified(["heart", "cat"], datasets.Value("string"))
    augment = TrainAugmentation(8, (1.0, 1.0), normalization=IMAGENET_NORMALIZATION)
    dataset, _ = training_set(
        named, 2, augment, LabelReading(labels_column="label", class_names=["cat", "heart"])
    )
    assert dataset.dataset["image_labels"] == [[2], [1]]


def test_a_classification_column_of_other_classes_leaves_the_labels_to_the_masks():
    """scene_parse_150 (image, annotation, scene_category ClassLabel): the scene was taken as the image-level labels
    ("unknown class name(s) ['airport_terminal']"), and --labels_column none was refused."""
    from weclip_hf.data.labelled_sets import LabelReading, evaluation_set

    scenes = _classified(
        [0, 1], datasets.ClassLabel(names=["airport_terminal", "art_gallery"]), [_TRIMAP] * 2
    )
    features, available = scenes.features, scenes.column_names
    assert resolve_columns(available, features=features, class_names=list("abc")).labels is None
    assert resolve_columns(available, features=features).labels == "label"  # without class names: as before
    assert (
        resolve_columns(available, features=features, mask_column="mask", labels_column="none").labels is None
    )
    with pytest.raises(
        ValueError, match="--labels_column none takes the image-level labels from the masks, but"
    ):
        resolve_columns(["image", "label"], features=features, labels_column="none")
    dataset, _ = evaluation_set(scenes, 3, 255, IMAGENET_NORMALIZATION, LabelReading(class_names=list("abc")))
    assert dataset.dataset["image_labels"] == [[1, 2, 3]] * 2
    tags = scenes.add_column(
        "classes", [["c"], ["c"]]
    )  # a label column found by name: "none" still says masks
    from_masks = LabelReading(labels_column="none", class_names=list("abc"))
    dataset, _ = evaluation_set(tags, 3, 255, IMAGENET_NORMALIZATION, from_masks)
    assert dataset.dataset["image_labels"] == [[1, 2, 3]] * 2


@pytest.mark.parametrize(
    "feature, rows, test",
    [
        (datasets.ClassLabel(names=["cat", "dog"]), [1, -1], "r['label'] != -1"),
        (datasets.List(datasets.ClassLabel(names=["cat", "dog"])), [[1], [0, -1]], "-1 not in r['label']"),
    ],
    ids=["class_label", "list_of_class_labels"],
)
def test_an_unlabelled_class_label_row_is_named_with_the_filter_that_leaves_it_out(feature, rows, test):
    """datasets' -1 (an unlabelled row, common on the Hub) failed with its bare "Invalid integer class label -1"."""
    with pytest.raises(ValueError, match=r"\(column 'label'\) of row 1 of split 'train' hold the class index -1, "
                       rf"datasets' mark of an unlabelled row: .*dataset\.filter\(lambda r: {re.escape(test)}\)"):  # fmt: skip
        add_image_labels(
            _classified(rows, feature), Columns("image", None, "label"), 2, class_names=["cat", "dog"]
        )


@pytest.mark.parametrize("streamed", [False, True])
def test_a_field_of_a_detection_column_is_a_label_column(streamed):
    """A detection column ``objects: {category, bbox}`` failed "must be a flat list, got shape ()": its field is
    named with a dot, as datasets' flatten() names it."""
    from weclip_hf.data.sources import with_split_name

    category = datasets.List(datasets.ClassLabel(names=["cat", "dog"]))
    features = datasets.Features({"image": datasets.Image(), "objects": {"category": category,
                                  "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4))}})  # fmt: skip
    objects = [{"category": [1], "bbox": [[0, 0, 2, 2]]}, {"category": [0, 1], "bbox": [[0, 0, 2, 2]] * 2}]
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    detection = with_split_name(datasets.Dataset.from_dict({"image": [image] * 2, "objects": objects}, features),
                                "train")  # fmt: skip
    with pytest.raises(ValueError, match=r"available columns: \['image', 'objects'\]\. Pass --mask_column or "
                       r"--labels_column \(a struct column's field is named with a dot: 'objects\.category'\)"):  # fmt: skip
        resolve_columns(detection.column_names, features=features)
    columns = resolve_columns(detection.column_names, labels_column="objects.category", features=features)
    source = detection.to_iterable_dataset() if streamed else detection
    labelled, _ = add_image_labels(source, columns, 2, class_names=["cat", "dog"])
    assert [row["image_labels"] for row in labelled] == [[2], [1, 2]]
    with pytest.raises(ValueError, match=r"\(column 'objects'\) of row 0 of split 'train' are a struct with fields "
                       r"\['category', 'bbox'\], not classes: .* --labels_column objects\.category"):  # fmt: skip
        add_image_labels(detection, Columns("image", None, "objects"), 2, class_names=["cat", "dog"])


def test_label_lists_of_a_metadata_csv_are_json_lists(tmp_path):
    """An imagefolder's metadata.csv holds one string per cell: "[5]" was read as the class name '[5]'."""
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    (tmp_path / "train").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / f"{i}.png")
    cells = ['"[2, 1]"', '"[""dog""]"', "dog"]  # ids, names (quoted as CSV quotes them), one name as it is
    (tmp_path / "train" / "metadata.csv").write_text(
        "file_name,image_labels\n" + "".join(f"{i}.png,{cell}\n" for i, cell in enumerate(cells))
    )
    train, _, _ = load_dataset_splits(DataSource(data_dir=str(tmp_path)), validation_split="none")
    labelled, _ = add_image_labels(
        train, Columns("image", None, "image_labels"), 2, class_names=["cat", "dog"]
    )
    assert labelled["image_labels"] == [[1, 2], [2], [2]]
    with pytest.raises(
        ValueError,
        match=r"column 'image_labels'\) of row 0 .*, '\[2, 1', read as a JSON list but are not one .* \[3, 7\]",
    ):
        add_image_labels(
            train.map(lambda r: {"image_labels": "[2, 1"}), Columns("image", None, "image_labels"), 2
        )


def _png_bytes(array: np.ndarray, format: str = "PNG") -> bytes:
    """``array`` encoded as an image file's bytes (PNG unless ``format``)."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


def test_image_and_mask_columns_of_raw_bytes_are_decoded():
    """A `datasets.Value("binary")` column (raw bytes, no {bytes, path} dict) passed the label pass, then the first
    training item failed "Unsupported image type bytes"; a mask column of bytes failed "has shape ()"."""
    from weclip_hf.data.decoding import UnreadableImageError
    from weclip_hf.data.labelled_sets import LabelReading, training_set

    images = [_png_bytes(np.full((8, 8, 3), i, np.uint8)) for i in (0, 1)]
    masks = [_png_bytes(np.full((8, 8), c, np.uint8)) for c in (1, 2)]
    augment = TrainAugmentation(8, (1.0, 1.0), normalization=IMAGENET_NORMALIZATION)
    labelled = datasets.Dataset.from_dict({"image": images, "labels": [[1], [2]]})
    dataset, _ = training_set(labelled, 2, augment, LabelReading(class_names=["cat", "dog"]))
    assert dataset[0]["pixel_values"].shape == (3, 8, 8) and dataset[1]["class_labels"].tolist() == [0, 1]
    masked = datasets.Dataset.from_dict({"image": images, "mask": masks})
    dataset, summary = training_set(masked, 2, augment, require_mask=True)
    assert summary.class_counts == {1: 1, 2: 1} and dataset[1]["labels"].unique().tolist() == [2]
    broken = datasets.Dataset.from_dict({"image": [images[0], b"\x89PNG broken"], "labels": [[1], [2]]})
    with pytest.raises(
        UnreadableImageError, match=r"column 'image' of row 1 \(stored as bytes, no file path\)"
    ):
        training_set(broken, 2, augment)


def _pandas_parquet(root, **columns) -> None:
    """Splits train and validation of two rows of ``columns`` written by pandas (images as {bytes, path} structs,
    no datasets feature metadata), with an image column of black 8 x 8 PNGs."""
    import pandas as pd

    (root / "data").mkdir()
    image = {"bytes": _png_bytes(np.zeros((8, 8, 3), np.uint8)), "path": None}
    for split in ("train", "validation"):
        frame = pd.DataFrame({"image": [image] * 2, **columns})
        frame.to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")


def test_parquet_of_pandas_image_structs_gives_masks_and_struct_labels(tmp_path):
    """pandas writes images as {bytes, path} structs without datasets' feature metadata: a struct column ``mask`` was
    no mask column (and left out of the columns looked for), and --labels_column objects.category flattened the
    image column too ("KeyError: 'image'")."""
    from weclip_hf.data.labelled_sets import LabelReading, evaluation_set, training_set
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    mask = {"bytes": _png_bytes(np.ones((8, 8), np.uint8)), "path": None}
    objects = {"category": [1], "bbox": [[0.0, 0.0, 1.0, 1.0]]}
    _pandas_parquet(tmp_path, mask=[mask] * 2, objects=[objects] * 2)
    train, val, _ = load_dataset_splits(DataSource(dataset_name=str(tmp_path)), log=lambda _: None)
    assert resolve_columns(val.column_names, features=val.features).mask == "mask"
    dataset, _ = evaluation_set(val, 2, 255, IMAGENET_NORMALIZATION, LabelReading(class_names=["cat", "dog"]))
    assert dataset[0]["labels"].unique().tolist() == [1]
    augment = TrainAugmentation(8, (1.0, 1.0), normalization=IMAGENET_NORMALIZATION)
    train = train.remove_columns("mask")
    categories = LabelReading(labels_column="objects.category", class_names=["cat", "dog"])
    dataset, _ = training_set(train, 2, augment, categories)
    assert dataset[0]["class_labels"].tolist() == [1, 0] and dataset[1]["pixel_values"].shape == (3, 8, 8)
    stream, _ = training_set(
        train.to_iterable_dataset(), 2, augment, LabelReading(labels_column="objects.category")
    )
    assert [item["class_labels"].tolist() for item in stream] == [[1, 0]] * 2
    with pytest.raises(ValueError, match=r"a struct column's field is named with a dot: 'objects\.category'"):
        resolve_columns(train.column_names, features=train.features)
    numbers = {"image": datasets.Image(), "mask": datasets.Value("int64")}
    passed = r"Passed over: 'mask' \(Value\('int64'\)\), which cannot hold masks\."
    with pytest.raises(ValueError, match=r"\['annotation', 'label', .*\]\); available columns: \['image', 'mask'\]\. "
                       r"Pass --mask_column\. " + passed):  # fmt: skip
        resolve_columns(list(numbers), features=numbers, require_mask=True)


@pytest.mark.parametrize("streaming", [False, True])
def test_splits_of_different_columns_or_metadata_formats_load_each_on_its_own(tmp_path, streaming):
    """Labels in train/, masks in validation/ as Parquet: `datasets` failed the load ("column names don't match"),
    streamed when the validation split was first read, with the training split's columns; metadata.csv in one
    split and metadata.jsonl in another failed ("different extensions")."""
    import pandas as pd

    from weclip_hf.data.folders import load_folder_dataset

    (tmp_path / "data").mkdir()
    image = {"bytes": _png_bytes(np.zeros((8, 8, 3), np.uint8)), "path": None}
    mask = {"bytes": _png_bytes(np.ones((8, 8), np.uint8)), "path": None}
    pd.DataFrame({"image": [image] * 2, "image_labels": [[1], [2]]}).to_parquet(
        tmp_path / "data" / "train.parquet"
    )
    pd.DataFrame({"image": [image] * 2, "mask": [mask] * 2}).to_parquet(
        tmp_path / "data" / "validation.parquet"
    )
    splits = load_folder_dataset(str(tmp_path), streaming)
    assert sorted(next(iter(splits["train"]))) == ["image", "image_labels"]
    assert sorted(next(iter(splits["validation"]))) == ["image", "mask"]
    # an imagefolder with metadata.csv in train/ and metadata.jsonl in validation/: "different extensions"
    for split, metadata in (("train", 'file_name,image_labels\n0.png,"[2]"\n'), ("validation", None)):
        (tmp_path / "folder" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "folder" / split / "0.png")
        if metadata:
            (tmp_path / "folder" / split / "metadata.csv").write_text(metadata)
    (tmp_path / "folder" / "validation" / "metadata.jsonl").write_text(
        '{"file_name": "0.png", "image_labels": [1]}\n'
    )
    splits = load_folder_dataset("imagefolder", streaming, data_dir=str(tmp_path / "folder"))
    assert [next(iter(splits[s]))["image_labels"] for s in ("train", "validation")] == ["[2]", [1]]
    # the first image of a stream unreadable: loaded (the split's reader meets it, --skip_unreadable_images)
    (tmp_path / "broken" / "train").mkdir(parents=True)
    (tmp_path / "broken" / "train" / "0.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "broken" / "train" / "1.png")
    splits = load_folder_dataset("imagefolder", streaming, data_dir=str(tmp_path / "broken"))
    assert list(splits) == ["train"]


def test_class_names_come_from_a_class_label_field_of_a_struct_column(tmp_path):
    """A ``List(ClassLabel)`` field named with a dot (--labels_column objects.category) gave no class names: a run
    without --class_names trained VOC's 20 classes, cat and dog read as ids 8 and 12."""
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    category = datasets.List(datasets.ClassLabel(names=["cat", "dog"]))
    features = datasets.Features({"image": datasets.Image(), "objects": {"category": category}})
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    rows = {"image": [image] * 2, "objects": [{"category": [1]}, {"category": [0]}]}
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": split}).save_to_disk(tmp_path / "saved")
    source = DataSource(dataset_path=str(tmp_path / "saved"))
    _, _, names = load_dataset_splits(source, labels_column="objects.category", log=lambda _: None)
    assert names == {"class_names": ["cat", "dog"]}


@pytest.mark.parametrize(
    "stored", ["jpg_file", "jpeg_bytes", "jpeg_named_png", "tiff_jpeg", "avif", "jpeg2000"]
)
def test_masks_stored_lossy_are_refused(tmp_path, stored):
    """A JPEG mask of class 5 read as classes 1..7 (its edges' artefacts) and was taken when they stayed within 0..C:
    phantom image-level labels and ground truth. Refused by the file's suffix, the bytes or the format PIL read; so
    are the other lossy storages (a TIFF with JPEG compression gave every image all 8 classes)."""
    from weclip_hf.data.labelled_sets import training_set

    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 5
    image = Image.fromarray(np.zeros((16, 16, 3), np.uint8))
    if stored == "jpeg_bytes":
        masks = [{"bytes": _png_bytes(mask, "JPEG"), "path": None}]
    elif stored in ("tiff_jpeg", "avif", "jpeg2000"):
        path = tmp_path / {"tiff_jpeg": "mask.tif", "avif": "mask.avif", "jpeg2000": "mask.jp2"}[stored]
        options = {"compression": "jpeg"} if stored == "tiff_jpeg" else {}
        Image.fromarray(mask).save(path, **options)
        masks = [str(path)]
    else:
        path = tmp_path / ("mask.jpg" if stored == "jpg_file" else "mask.png")
        Image.fromarray(mask).save(path, format="JPEG")
        masks = [str(path)]
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    data = datasets.Dataset.from_dict({"image": [image], "mask": masks}, features=features)
    augment = TrainAugmentation(8, (1.0, 1.0), normalization=IMAGENET_NORMALIZATION)
    lossy = {"tiff_jpeg": "TIFF with JPEG compression", "avif": "AVIF", "jpeg2000": "JPEG 2000"}.get(
        stored, "JPEG"
    )
    with pytest.raises(
        ValueError, match=rf"Mask .* is stored as {lossy}, which is lossy .* re-save the masks as PNG"
    ):
        training_set(data, 20, augment, require_mask=True)
    for lossless in ("PNG", "BMP", "TIFF"):  # read as they were
        data = datasets.Dataset.from_dict(
            {"image": [image], "mask": [{"bytes": _png_bytes(mask, lossless), "path": None}]},
            features=features,
        )
        assert training_set(data, 20, augment, require_mask=True)[1].class_counts == {5: 1}


def test_a_training_set_in_which_no_image_has_a_class_is_refused():
    """Binary 0/255 masks (255: the ignore index) gave a run where no training image had a class; it trained, and
    scored cam_miou and pseudo_label_miou 1.0 on a background that was all there was to score."""
    from weclip_hf.data.labelled_sets import evaluation_set, training_set

    binary = np.zeros((8, 8), np.uint8)
    binary[2:6, 2:6] = 255
    augment = TrainAugmentation(8, (1.0, 1.0), normalization=IMAGENET_NORMALIZATION)
    cause = r"No image of the dataset has a class: its masks \(column 'mask'\) hold no class id 1\.\.2, only 0 .*255"
    with pytest.raises(ValueError, match=cause + r".* binary mask's foreground .* mask // 255.*ignore_index"):
        training_set(_dataset([binary, binary]), 2, augment)
    with pytest.raises(ValueError, match=r"every row of its label column 'image_labels' is empty"):
        training_set(_dataset([binary, binary]).add_column("image_labels", [[], []]), 2, augment)
    with pytest.warns(UserWarning, match=cause):
        evaluation_set(_dataset([binary, binary]), 2, 255, IMAGENET_NORMALIZATION)
    # a stream's labels are not counted: its first images are read, and a warning names the cause (it trained)
    streamed = (
        r"None of the first 2 images of the dataset has a class: its masks \(column 'mask'\) hold no class"
    )
    with pytest.warns(
        UserWarning, match=streamed + r".* If no image of the stream has one, training learns nothing"
    ):
        stream, summary = training_set(_dataset([binary, binary]).to_iterable_dataset(), 2, augment)
    assert summary.streamed and len(list(stream)) == 2  # the stream still reads from its start
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an image with a class among the first: no warning
        training_set(_dataset([binary, binary, binary // 255]).to_iterable_dataset(), 2, augment)
    _, summary = training_set(
        _dataset([binary, binary // 255]), 2, augment
    )  # one image with a class is enough
    assert summary.class_counts == {1: 1}


def test_a_null_label_row_is_an_empty_label_set():
    """``"image_labels": null`` in metadata.jsonl (an empty metadata.csv cell) failed "must be a flat list, got
    shape ()", while ``[]`` was read as no labels."""
    assert normalize_label_row(None, 4) == []
    features = datasets.Features(
        {"image": datasets.Image(), "image_labels": datasets.List(datasets.Value("int64"))}
    )
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    data = datasets.Dataset.from_dict({"image": [image] * 2, "image_labels": [[2], None]}, features=features)
    labelled, summary = add_image_labels(data, Columns("image", None, "image_labels"), 2)
    assert labelled["image_labels"] == [[2], []] and summary.empty == 1


def test_masks_in_a_label_column_are_named_as_masks():
    """Segmentation masks in an Image column named ``labels`` were read as image-level labels: "Image labels of row 0
    must be a flat list, got shape (8, 8)" named neither the column nor --mask_column."""
    features = {"image": datasets.Image(), "labels": datasets.Image()}
    hint = r"Column 'labels', taken as the image-level labels, holds Image\(.*\): it looks like masks"
    hint += r".*--mask_column labels"
    with pytest.raises(ValueError, match=hint + r".*--labels_column"):
        resolve_columns(list(features), features=features)
    arrays = {"image": datasets.Image(), "masks": datasets.List(datasets.List(datasets.Value("uint8")))}
    with pytest.raises(
        ValueError, match=r"Column 'masks', taken as the image-level labels, holds List\(List"
    ):
        resolve_columns(list(arrays), labels_column="masks", features=arrays)
    with pytest.raises(ValueError, match=r"got shape \(8, 8\): a mask\? .*--mask_column"):  # undeclared
        normalize_label_row(np.zeros((8, 8), np.uint8), 2, name="row 0")


def test_class_label_names_holding_the_background_are_refused_naming_the_column(tmp_path):
    """A ``List(ClassLabel)`` column naming ``background`` (common in segmentation datasets) gave the run's classes,
    then WeCLIPConfig failed "id2label ... 'background' more than once", naming no column."""
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    classes = datasets.List(datasets.ClassLabel(names=["background", "cat", "dog"]))
    features = datasets.Features({"image": datasets.Image(), "labels": classes})
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    split = datasets.Dataset.from_dict({"image": [image], "labels": [[0, 1]]}, features=features)
    datasets.DatasetDict({"train": split}).save_to_disk(tmp_path / "saved")
    source = DataSource(dataset_path=str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"column 'labels' name 'background'.* background prompts.*--class_names "
                       r"without it.*--labels_column none"):  # fmt: skip
        load_dataset_splits(source, log=lambda _: None)
    assert (
        load_dataset_splits(source, dataset_classes=False, log=lambda _: None)[2] == {}
    )  # --class_names given


def test_a_model_continued_on_masks_beside_a_classlabel_naming_the_background_trains(
    tmp_path, tiny_clip, capsys
):
    """A continued model's classes are its own (--model_name_or_path: the dataset's ClassLabel names are not read),
    so a segmentation dataset whose label column also names the background trains it, its image-level labels
    taken from the masks, as a fresh model given --class_names does; reading the ClassLabel would refuse the run
    and advise --class_names, which a continued model does not take."""
    from safetensors.torch import load_file

    classes = datasets.List(datasets.ClassLabel(names=["background", "cat", "dog"]))
    features = datasets.Features(
        {"image": datasets.Image(), "annotation": datasets.Image(), "labels": classes}
    )
    mask = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8).repeat(12, 0).repeat(12, 1))
    rows = {"image": [Image.new("RGB", (24, 24))] * 2, "annotation": [mask] * 2, "labels": [[0, 1, 2]] * 2}
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": split}).save_to_disk(tmp_path / "d")
    flags = ["--dataset_path", str(tmp_path / "d"), "--validation_split", "none", "--max_train_steps", "1",
             "--crop_size", "24", "--per_device_train_batch_size", "2", "--num_threads", "2", "--num_overlays", "0"]  # fmt: skip
    script = _train_script()
    fresh = ["--clip_model_name_or_path", tiny_clip, "--class_names", "cat", "dog"]
    script.main([*flags, *fresh, "--output_dir", str(tmp_path / "fresh")])
    script.main(
        [*flags, "--model_name_or_path", str(tmp_path / "fresh"), "--output_dir", str(tmp_path / "continued")]
    )
    assert "Note: the classes are" not in capsys.readouterr().out
    assert json.loads((tmp_path / "continued" / "config.json").read_text())["class_names"] == ["cat", "dog"]
    # trained on: one step after the fresh run's
    assert int(load_file(tmp_path / "continued" / "model.safetensors")["training_step"]) == 2


@pytest.mark.parametrize(
    "value, decoded",
    [
        ({"bytes": None, "path": "masks/a.JPG"}, None),  # the suffix in any case
        ("masks/a.jpeg", None),
        ({"bytes": b"\xff\xd8\xff\xe0 rest of a JPEG", "path": None}, None),  # the magic number, no file
        ({"bytes": b"", "path": "a.png"}, SimpleNamespace(format="MPO", info={})),  # a multi-picture JPEG
    ],
)
def test_lossy_storage_finds_a_jpeg_by_each_sign(value, decoded):
    """`lossy_storage` finds a JPEG by any one of its suffix (.jpg or .jpeg, any case), its bytes' magic number or
    the format PIL read it as (MPO: JPEG), without decoding it again; a PNG's bytes are not lossy."""
    from weclip_hf.data.decoding import lossy_storage

    assert lossy_storage(value, decoded) == "JPEG"
    assert lossy_storage({"bytes": _png_bytes(np.zeros((2, 2), np.uint8)), "path": None}) is None


def test_decode_image_reads_in_the_features_mode_and_passes_decoded_values_through():
    """A column's declared mode (datasets.Image(mode="RGB")) is applied, as datasets decodes, and kept by
    `undecoded`; PIL images and arrays (a stream's decoded values) come back as they are; an empty path is none."""
    from weclip_hf.data.decoding import file_path, undecoded

    stored = {"bytes": _png_bytes(np.zeros((4, 4, 4), np.uint8)), "path": None}  # RGBA
    assert decode_image(stored, "image", "row 0").mode == "RGBA"
    assert decode_image(stored, "image", "row 0", datasets.Image(mode="RGB")).mode == "RGB"
    ds = datasets.Dataset.from_dict(
        {"image": [stored]}, features=datasets.Features({"image": datasets.Image("RGB")})
    )
    assert undecoded(ds, ["image"]).features["image"] == datasets.Image(mode="RGB", decode=False)
    image, array = Image.new("RGB", (3, 2)), np.zeros((2, 3, 3), np.uint8)
    assert decode_image(image, "image", "row 0") is image and decode_image(array, "image", "row 0") is array
    assert file_path({"bytes": b"", "path": ""}) is None


def test_resolve_columns_edge_names():
    """A mask column given by a label column's name is not also the labels; a classification column with any class
    outside the run's is passed over (all its classes must be the run's); --labels_column none names a column
    called "none" when there is one."""
    assert resolve_columns(["image", "labels"], mask_column="labels") == Columns("image", "labels", None)
    features = {"image": datasets.Image(), "mask": datasets.Image()}
    features["label"] = datasets.ClassLabel(names=["a", "airport"])
    assert resolve_columns(list(features), features=features, class_names=list("abc")).labels is None
    assert resolve_columns(["image", "mask", "none"], labels_column="none").labels == "none"


def test_column_features_of_structs_and_dotted_names():
    """Fields of nested structs are named by their whole dotted path; a column whose own name holds a dot is that
    column (not a struct's field); a struct is an image only when it is exactly {bytes, path}."""
    from weclip_hf.data.columns import column_feature, holds_images, struct_fields, with_struct_field

    number, text = datasets.Value("int64"), datasets.Value("string")
    assert struct_fields({"o": {"p": {"q": number}, "r": number}}) == ["o.p", "o.r", "o.p.q"]
    assert column_feature({"a.b": number, "a": {"b": text}}, "a.b") == number
    dotted = datasets.Dataset.from_dict({"image": [1], "a.b": [2]})
    assert with_struct_field(dotted, "a.b") is dotted
    captioned = {"bytes": datasets.Value("binary"), "path": text, "caption": text}
    assert not holds_images(captioned) and struct_fields({"photo": captioned}) == [
        f"photo.{f}" for f in captioned
    ]


@pytest.mark.parametrize(
    "feature, first_value, expected",
    [
        (datasets.Value("large_binary"), None, True),  # a file's bytes
        (datasets.Value("large_string"), lambda: "masks/0.png", True),  # a path
        (datasets.Value("string"), None, True),  # no first row to read: strings may be paths
        (datasets.Value("string"), lambda: "heart", False),  # a class name
    ],
)
def test_may_hold_masks_reads_large_types_and_strings(feature, first_value, expected):
    from weclip_hf.data.columns import may_hold_masks

    assert may_hold_masks(feature, first_value) is expected


def test_training_crops_change_with_the_epoch_and_the_dataloader_worker(monkeypatch):
    """Crops and flips are a function of (seed, epoch, index) for a split read whole, and of (seed, epoch, worker,
    position) for a stream: the same again for the same epoch, other ones for another epoch or another worker (two
    workers at the same position of their shards drew the same crops)."""
    from weclip_hf.data import batches

    aug = TrainAugmentation(crop_size=8, scale_range=(0.75, 1.5), normalization=IMAGENET_NORMALIZATION)
    images = [
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (12, 12, 3), np.uint8)) for i in range(4)
    ]
    split, _ = add_image_labels(
        _dataset([np.full((12, 12), 1, np.uint8)] * 4, images), Columns("image", "mask"), 2
    )
    train = batches.WeakSegmentationDataset(split, Columns("image", "mask"), 2, aug, seed=3)

    def epoch_items(dataset, epoch):
        dataset.set_epoch(epoch)
        return (
            list(dataset)
            if isinstance(dataset, torch.utils.data.IterableDataset)
            else [*map(dataset.__getitem__, range(4))]
        )

    first = epoch_items(train, 0)
    assert all(map(_same_items, first, epoch_items(train, 0)))
    assert not all(map(_same_items, first, epoch_items(train, 1)))
    stream = batches.StreamingWeakSegmentationDataset(
        split.to_iterable_dataset(), Columns("image", "mask"), 2, aug, seed=3, shuffle_buffer_size=0
    )
    worker_0 = epoch_items(stream, 0)
    monkeypatch.setattr(batches, "get_worker_info", lambda: SimpleNamespace(id=1))
    assert not all(map(_same_items, worker_0, epoch_items(stream, 0)))


def test_a_stream_shuffles_its_shards_even_with_a_buffer_of_one():
    """A shuffle buffer of 1 example still shuffles the order of the shards (``datasets``' shuffle); 0 reads the
    stream in order."""
    from weclip_hf.data.batches import StreamingWeakSegmentationDataset

    aug = TrainAugmentation(crop_size=4, scale_range=(1.0, 1.0), normalization=IMAGENET_NORMALIZATION)
    images = [Image.fromarray(np.full((4, 4, 3), 10 * i, np.uint8)) for i in range(8)]
    split, _ = add_image_labels(
        _dataset([np.full((4, 4), 1, np.uint8)] * 8, images), Columns("image", "mask"), 2
    )

    def order(buffer):
        stream = StreamingWeakSegmentationDataset(
            split.to_iterable_dataset(num_shards=8),
            Columns("image", "mask"),
            2,
            aug,
            shuffle_buffer_size=buffer,
        )
        return [
            round(float(IMAGENET_NORMALIZATION.denormalize(i["pixel_values"]).float().mean())) for i in stream
        ]

    assert order(0) == [10 * i for i in range(8)]
    assert sorted(order(1)) == order(0) != order(1)


def test_epoch_shuffles_of_neighbouring_seeds_differ():
    """The permutation of (seed, epoch) is not another seed's of another epoch: runs of seeds 0 and 1 would see the
    same orders one epoch apart."""
    from weclip_hf.data.batches import EpochShuffleSampler

    zero, one = EpochShuffleSampler(50, seed=0), EpochShuffleSampler(50, seed=1)
    zero.set_epoch(1)
    assert list(zero) != list(one)


def test_a_metadata_csv_with_only_its_header_lists_no_images(tmp_path):
    from weclip_hf.data.folders import check_imagefolder_metadata

    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "metadata.csv").write_text("file_name,labels\n")
    with pytest.raises(ValueError, match=r"train/metadata.csv lists no images \(it has no rows\)"):
        check_imagefolder_metadata(str(tmp_path))


@pytest.mark.parametrize("background", ["Background", "_background_", "background_"])
def test_class_label_names_holding_the_background_in_any_spelling_are_refused(background):
    from weclip_hf.data.sources import class_label_names

    features = datasets.Features(
        {"image": datasets.Image(), "labels": datasets.ClassLabel(names=[background, "cat"])}
    )
    split = datasets.Dataset.from_dict({"image": [], "labels": []}, features=features)
    with pytest.raises(ValueError, match=rf"column 'labels' name '{background}'"):
        class_label_names(split)


def test_an_evaluation_example_without_its_mask_is_named():
    """A validation row whose mask is empty (None) is refused naming the row and column, not read as a mask."""
    from weclip_hf.data.batches import EvalSegmentationDataset, read_example
    from weclip_hf.data.sources import with_split_name

    image = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "image_labels": datasets.List(datasets.Value("int64")),
        }
    )
    split = with_split_name(
        datasets.Dataset.from_dict({"image": [image], "mask": [None], "image_labels": [[1]]}, features),
        "validation",
    )
    assert read_example(split[0], Columns("image", "mask"), "row 0", num_classes=2)[1] is None
    dataset = EvalSegmentationDataset(split, Columns("image", "mask"), 2, IMAGENET_NORMALIZATION)
    with pytest.raises(
        ValueError, match=r"Evaluation example 0 of split 'validation' has no mask \(column 'mask' is empty\)"
    ):
        dataset[0]


def test_with_split_name_keeps_a_recorded_name_unless_told_to_replace_it():
    from weclip_hf.data.sources import with_split_name

    split = with_split_name(_dataset([np.zeros((2, 2), np.uint8)]), "validation")
    assert str(with_split_name(split, "train").split) == "validation"
    assert str(with_split_name(split, "held_out", replace=True).split) == "held_out"


def _label_column(
    rows: list, num_classes: int, zero_based: bool = False, streamed: bool = False
) -> list[list[int]]:
    """The ``image_labels`` of a dataset of blank images whose ``labels`` column holds integer ``rows`` (``streamed``:
    read as a stream)."""
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    features = datasets.Features(
        {"image": datasets.Image(), "labels": datasets.List(datasets.Value("int64"))}
    )
    data = datasets.Dataset.from_dict({"image": [image] * len(rows), "labels": rows}, features=features)
    data = data.to_iterable_dataset() if streamed else data
    labelled, _ = add_image_labels(data, Columns("image", None, "labels"), num_classes, zero_based=zero_based)
    return [row["image_labels"] for row in labelled] if streamed else labelled["image_labels"]


def test_ids_that_count_the_background_0_are_not_read_as_zero_based_ids():
    """Rows of a mask's ids (np.unique: the background 0 beside classes 1..C) failed on "id(s) [0] outside 1..4. Ids
    0..3 number the classes from 0: give --labels_zero_based"; with the flag every class was shifted by one and
    class 1 given to every image, silently."""
    with pytest.raises(ValueError, match=r"--labels_zero_based; if 0 is the background .*leave it out"):
        normalize_label_row([0, 2], 4)
    with pytest.raises(
        ValueError,
        match=r"every one of the 3 rows of column 'labels' with labels holds id 0: read zero-based, class 1 is in "
        r"every image\. If 0 is the background .*remove it from the rows and drop --labels_zero_based",
    ):
        _label_column([[0, 2], [0, 3], [0], []], 4, zero_based=True)
    # zero-based ids where some image lacks class 0 read as they are
    assert _label_column([[0, 2], [1], [0]], 4, zero_based=True) == [[1, 3], [2], [1]]


def test_multi_hot_rows_of_another_width_are_not_read_as_ids():
    """Integer multi-hot rows of C + 1 values (a background value first) failed on "id(s) [0, 0, ...] outside 1..4.
    Ids 0..3 number the classes from 0: give --labels_zero_based"; with the flag every image got classes [1, 2]."""
    background = r"5 = 4 classes \+ 1: a value for the background\? Drop it"
    with pytest.raises(ValueError, match=rf"look like a multi-hot row .* of width 5, not 4\. {background}"):
        normalize_label_row([1, 0, 1, 0, 0], 4)
    with pytest.raises(ValueError, match=rf"width 5, expected 4\. {background}"):
        normalize_label_row([1.0, 0.0, 1.0, 0.0, 0.0], 4)
    for zero_based in (False, True):
        with pytest.raises(
            ValueError,
            match=rf"column 'labels' of the dataset holds multi-hot rows of width 5, not 4.*{background}",
        ):
            _label_column([[1, 0, 1, 0, 0], [1, 0, 0, 0, 1]], 4, zero_based=zero_based)
    assert _label_column([[0, 0, 1], [2]], 4, zero_based=True) == [[1, 2], [3]]  # ids of objects


def test_a_streamed_label_column_is_checked_on_its_first_rows():
    """A stream's labels are read row by row: zero-based rows holding the background 0 and integer multi-hot rows of
    C + 1 values read zero-based trained on shifted classes, silently; its first rows are now checked as a column."""
    with pytest.raises(
        ValueError, match=r"every one of the first 2 rows of column 'labels' with labels holds id 0"
    ):
        _label_column([[0, 2], [0, 3]], 4, zero_based=True, streamed=True)
    with pytest.raises(
        ValueError, match=r"column 'labels' of the dataset holds multi-hot rows of width 5, not 4"
    ):
        _label_column([[1, 0, 1, 0, 0], [1, 0, 0, 0, 1]], 4, zero_based=True, streamed=True)
    assert _label_column([[0, 2], [1]], 4, zero_based=True, streamed=True) == [[1, 3], [2]]


def test_masks_numbered_in_their_class_labels_order_are_named_so():
    """A dataset whose masks number its classes in the order of its ClassLabel label column, other than the run's
    (--preset, or a model's classes), was refused as labels and masks describing different things (a trimap, a scene
    category): the remedies named did not fit."""
    masks = [np.full((8, 8), i, np.uint8) for i in (1, 2, 1)]  # the dataset's ids: 1 dog, 2 cat
    features = datasets.Features({"labels": datasets.Sequence(datasets.ClassLabel(names=["dog", "cat"]))})
    data = _dataset(masks).add_column("labels", [[0], [1], [0]], feature=features["labels"])
    with pytest.raises(
        ValueError,
        match=r"The masks agree with the labels read with their ids in the order of the ClassLabel names of column "
        r"'labels' \['dog', 'cat'\], not in the run's: remap their ids .*or give the dataset's classes",
    ):
        add_image_labels(data, Columns("image", "mask", "labels"), 2, class_names=["cat", "dog"])
    labelled, _ = add_image_labels(data, Columns("image", "mask", "labels"), 2, class_names=["dog", "cat"])
    assert labelled["image_labels"] == [[1], [2], [1]]


def test_a_label_row_of_one_string_of_ids_or_joined_names_says_what_to_store():
    """A row "3,5", "1" or "cat,dog" was an unknown class name with "Check --class_names / --preset"; now the error
    names the string and the list to store; a misspelt name keeps the class-name remedy."""
    names = ["cat", "dog", "bird", "fish", "cow"]
    for row, hint in (
        (
            "3,5",
            r"'3,5' is a string of class ids: the label column must hold a list of integer ids, \[3, 5\]",
        ),
        ("1", r"'1' is a string of class ids: .* integer ids, \[1\]"),
        (["cat", "4"], r"'4' is a string of class ids: .* integer ids, \[4\]"),
        ("Cat, dog", r"'Cat, dog' is one string of class names joined by commas: .* names, \['Cat', 'dog'\]"),
    ):
        with pytest.raises(
            ValueError, match=rf"unknown class name\(s\) .*; expected .* 5 classes: .*\. {hint}"
        ):
            normalize_label_row(row, 5, name="row 0", class_names=names)
    with pytest.raises(ValueError, match=r"\['cat,kat'\]; .*\. Check --class_names / --preset\.$"):
        normalize_label_row("cat,kat", 5, name="row 0", class_names=names)
    with pytest.raises(ValueError, match=r"run's 1 class: \['cat'\]\. Check"):
        normalize_label_row("dog", 1, name="row 0", class_names=["cat"])

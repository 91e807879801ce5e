"""examples/generate_pseudo_labels.py on the toy world and on an imagefolder of awkward files (tiny CLIP, CPU, in
process): the written dataset loads back and trains, the masks and scores are the model's, an interrupted run
loses nothing."""

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    ROOT,
    RecordingHub,
    example_module,
    interrupted_after,
    labelling_part,
    loading_on_a_gpu_machine,
    save_another_model_at,
    train_in_process,
)
from PIL import Image

from weclip_hf.data.toy import TOY_VALIDATION_SEED_OFFSET, generate_toy_images, make_toy_dataset
from weclip_hf.presets import TOY_CLASS_NAMES

EXIF_ORIENTATION = 0x0112
TOY = ["--toy_train_images", "6", "--toy_val_images", "2", "--batch_size", "4"]


generate = example_module("generate_pseudo_labels")


@pytest.fixture(scope="module")
def cam_run(tiny_clip, tmp_path_factory) -> tuple[Path, dict]:
    """CAM pseudo masks of 6 toy training images from the bare tiny CLIP, the 2 validation images copied, overlays
    of 2 images, saved to disk too and pushed to the Hub (mocked): (output folder, report)."""
    import datasets

    out = tmp_path_factory.mktemp("pseudo") / "toy"
    argv = ["--output_dir", str(out), "--clip_model_name_or_path", tiny_clip, *TOY, "--num_overlays", "2"]
    argv += ["--validation_split", "validation", "--save_to_disk", str(out.parent / "saved")]
    pushed = {}

    def push_to_hub(dataset, repo_id, token=None):
        pushed.update(repo_id=repo_id, splits={s: len(d) for s, d in dataset.items()})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.DatasetDict, "push_to_hub", push_to_hub)
        hub = RecordingHub(patch, out.parent / "uploaded")
        report = generate.main([*argv, "--push_to_hub", "--hub_dataset_id", "me/toy-pseudo"])
    assert [(c["repo_id"], c["repo_type"]) for c in hub.created] == [("me/toy-pseudo", "dataset")]
    assert pushed == {
        "repo_id": "me/toy-pseudo",
        "splits": {"train": 6, "validation": 2},
    }
    return out, report


def test_push_to_hub_fails_before_labelling_when_the_hub_cannot_be_reached(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    out = tmp_path / "offline"
    argv = ["--output_dir", str(out), "--clip_model_name_or_path", tiny_clip, *TOY, "--push_to_hub"]
    with pytest.raises(RuntimeError, match="Cannot create or reach the Hub repository 'offline'"):
        generate.main(argv)
    assert not list(out.rglob("*.png"))


def read_mask(path: Path) -> np.ndarray:
    image = Image.open(path)
    assert image.mode == "P"
    return np.asarray(image)


def test_round_trip_load_as_a_dataset_and_train(cam_run, tiny_clip, capsys):
    """The output loads with `datasets` (imagefolder and save_to_disk) and `train.py --data_dir` trains on it."""
    import datasets

    out, report = cam_run
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out))
    assert {s: len(d) for s, d in loaded.items()} == {"train": 6, "validation": 2}
    assert report["splits"] == {
        s: {"num_images": n, "skipped_unreadable": []} for s, n in (("train", 6), ("validation", 2))
    }
    toy = make_toy_dataset(6, seed=0)  # the toy world's training images (train.py's --seed 0)
    for i, row in enumerate(loaded["train"]):
        assert np.array_equal(np.asarray(row["image"]), np.asarray(toy[i]["image"]))
        # by class name: a second stage in another class order is told from one in this order
        assert row["image_labels"] == [TOY_CLASS_NAMES[c - 1] for c in toy[i]["image_labels"]]
        assert np.array_equal(np.asarray(row["mask"]), read_mask(out / "train" / "masks" / f"{i:06d}.png"))
    val = make_toy_dataset(2, seed=TOY_VALIDATION_SEED_OFFSET)  # copied with its ground truth
    assert np.array_equal(np.asarray(loaded["validation"][1]["mask"]), np.asarray(val[1]["annotation"]))
    saved = datasets.load_from_disk(str(out.parent / "saved"))
    assert saved["train"]["image_labels"] == loaded["train"]["image_labels"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["000000.png", "000001.png"]
    # stage two: the fully supervised baseline on the pseudo masks (the toy preset's classes), from the folder
    capsys.readouterr()
    run = ["--preset", "toy", "--data_dir", out, "--fully_supervised", "--clip_model_name_or_path", tiny_clip]
    run += [
        "--output_dir",
        out.parent / "two_stage",
        "--max_train_steps",
        2,
        "--per_device_train_batch_size",
        2,
    ]
    metrics = train_in_process(*run, "--no_msf", "--num_overlays", 1)
    assert (
        "train: 6 images" in capsys.readouterr().out
    )  # the generated split, not the toy world's 4,000 images
    assert metrics["train_steps"] == 2 and 0.0 <= metrics["fully_supervised_miou"] <= 1.0
    card = (
        out.parent / "two_stage" / "README.md"
    ).read_text()  # says what the masks were, not "pixel labels"
    assert "trained on the pseudo masks of a first stage (examples/generate_pseudo_labels.py)" in card
    assert "(here: the pseudo masks of a first stage" in card and "pixel masks" not in card
    # a second stage in another class order: the masks' ids are the first stage's, the labels name their classes,
    # which then disagree with the masks (it trained mask id 1, circle, as its first class without a word)
    reordered = ["--class_names", *reversed(TOY_CLASS_NAMES), "--output_dir", out.parent / "reordered"]
    with pytest.raises(ValueError, match=r"The image-level labels of split 'train' \(column 'image_labels'\) and "
                       r"its masks \(column 'mask'\) disagree"):  # fmt: skip
        train_in_process(*run[:-2], *reordered, "--no_msf")


def iou_values(report: dict, mode: str) -> list[float]:
    """mIoU and per-class IoU (NaN for a class without pixels) of a report's ``mode``."""
    scores = report["scores"][mode]
    return [scores["mean_iou"], *(np.nan if v is None else v for v in scores["per_class_iou"].values())]


def test_masks_and_scores_are_the_models(cam_run, tiny_clip):
    """The written masks are the model's CAM pseudo labels; the report's per-class IoU is theirs against the toy
    ground truth."""
    from weclip_hf import WeCLIPForSemanticSegmentation
    from weclip_hf.metrics import confusion_matrix, scores_from_confusion
    from weclip_hf.normalization import IMAGENET_NORMALIZATION
    from weclip_hf.presets import preset_config_kwargs

    out, report = cam_run
    model = WeCLIPForSemanticSegmentation.from_clip(tiny_clip, **preset_config_kwargs("toy")).eval()
    images, masks, labels = generate_toy_images(6, seed=0)
    class_labels = torch.zeros(6, len(TOY_CLASS_NAMES))
    for i, present in enumerate(labels):
        class_labels[i, [c - 1 for c in present]] = 1
    pixel_values = IMAGENET_NORMALIZATION.normalize(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, class_labels=class_labels, use_rfm=False).pseudo_labels
    written = np.stack([read_mask(out / "train" / "masks" / f"{i:06d}.png") for i in range(6)])
    assert np.mean(written == expected.numpy()) > 0.999  # batches of 4 vs 6: a near-tie pixel could flip
    scores = scores_from_confusion(confusion_matrix(torch.from_numpy(written), torch.from_numpy(masks), 9))
    assert report["mode"] == "cam" and set(report["scores"]) == {"cam"}
    assert list(report["scores"]["cam"]["per_class_iou"]) == ["background", *TOY_CLASS_NAMES]
    expected_scores = [scores["mean_iou"], *scores["per_category_iou"]]
    assert iou_values(report, "cam") == pytest.approx(expected_scores, abs=1e-3, nan_ok=True)


def test_toy_world_sizes_are_train_pys_flags(capsys):
    """The toy world's sizes are named as train.py names them (--toy_images stays an alias), refused below 1 (0
    labelled the whole default world) and with a dataset (ignored without a word). A --validation_split that is
    the --split is refused: both write one folder, and its copies with ground truth replaced the pseudo masks. So
    is a split name that `datasets` reads back as another split or as none (the dataset written lost it)."""
    args = generate.parse_args(["--output_dir", "o", "--toy_images", "3", "--toy_val_images", "2"])
    assert (args.toy_train_images, args.toy_val_images) == (3, 2)
    for flags, message in (
        (["--validation_split", "train"], "--validation_split 'train' is the --split pseudo-labelled"),
        (["--toy_val_images", "0"], "toy_val_images: must be >= 1, got 0"),
        (
            ["--data_dir", "d", "--toy_train_images", "3"],
            "--toy_train_images sizes the toy world, which --data_dir",
        ),
        # the output keeps the split's name, which `datasets` reads back as none, or as the other split's
        (
            ["--split", "unlabeled"],
            "reads a folder 'unlabeled' as no split (beside the other splits it is left",
        ),
        (
            ["--split", "val", "--validation_split", "validation"],
            "--validation_split 'validation': `datasets`' imagefolder (train.py --data_dir, load_dataset('imagefolder', "
            "data_dir=...)) reads it back as split 'validation', as the other split written",
        ),
    ):
        with pytest.raises(SystemExit):
            generate.parse_args(["--output_dir", "o", *flags])
        assert message in " ".join(capsys.readouterr().err.split())
    # VOC's train_aug is read back as train (train.py's voc preset takes it there): noted (by the main process,
    # once: every process parses the arguments), not refused
    args = generate.parse_args(["--output_dir", "o", "--split", "train_aug", "--validation_split", "val"])
    assert (args.split, args.validation_split) == ("train_aug", "val")
    out = " ".join(args.split_notes)
    assert (
        "--split 'train_aug' is written as a folder 'train_aug', which" in out and "as split 'train'" in out
    )
    assert "--validation_split 'val' is written as a folder 'val'" in out and "as split 'validation'" in out


def test_a_model_of_other_classes_does_not_label_the_toy_world(tmp_path):
    """Without a dataset the script reads the toy world: a model of other classes would count its mask ids as its own
    classes (the report said "aeroplane 100.0")."""
    from conftest import make_tiny_config

    from weclip_hf import WeCLIPForSemanticSegmentation

    WeCLIPForSemanticSegmentation(make_tiny_config()).save_pretrained(tmp_path / "model")
    with pytest.raises(
        ValueError, match=r"segments other classes \(cat, dog, car, tree\) than the toy world"
    ):
        generate.main(["--model", str(tmp_path / "model"), *TOY, "--output_dir", str(tmp_path / "out")])


def test_interrupted_rfm_run_loses_nothing(toy_weclip_dir, tmp_path, monkeypatch):
    """A trained WeCLIP folder: RFM masks, CAM and RFM scores. Killed after 3 images' records and run again, it
    writes the report and dataset of an uninterrupted run."""
    argv = ["--model", str(toy_weclip_dir), *TOY, "--batch_size", "2"]
    whole = generate.main([*argv, "--output_dir", str(tmp_path / "whole")])
    assert whole["mode"] == "rfm" and set(whole["scores"]) == {"cam", "rfm"}
    records = []
    writing = labelling_part("writing")
    monkeypatch.setattr(writing, "save_json", interrupted_after(writing.save_json, 3, records))
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        generate.main([*argv, "--output_dir", str(out)])
    monkeypatch.undo()
    assert (
        len(list((out / "train" / "masks").glob("*.png"))) == 4
    )  # the 4th image's mask is written, not its record
    before = {Path(p): Path(p).stat().st_mtime_ns for _, p in records}  # save_json(data, path)
    resumed = generate.main([*argv, "--output_dir", str(out)])
    assert all(
        Path(p).stat().st_mtime_ns == t for p, t in before.items()
    )  # the 3 done images were not redone
    assert {k: v for k, v in resumed.items() if k != "scores"} == {
        k: v for k, v in whole.items() if k != "scores"
    }
    for mode in ("cam", "rfm"):  # the resumed run batches other images together: a near-tie pixel could flip
        assert iou_values(resumed, mode) == pytest.approx(iou_values(whole, mode), abs=1e-3, nan_ok=True)
    lines = [(tmp_path / run / "train" / "metadata.jsonl").read_text() for run in ("whole", "resumed")]
    assert lines[0] == lines[1] and len(lines[0].splitlines()) == 6
    for name in [f"{i:06d}.png" for i in range(6)]:
        a, b = (read_mask(tmp_path / run / "train" / "masks" / name) for run in ("whole", "resumed"))
        assert np.mean(a == b) > 0.999


def test_another_model_saved_at_the_same_folder_is_refused(toy_weclip_dir, tiny_clip, tmp_path):
    """A finished run, then a retrained model (--model) or another CLIP (--clip_model_name_or_path) saved at the
    same folder: the re-run is refused (it would keep the old model's masks as done), nothing is rewritten."""
    model, clip = (
        Path(shutil.copytree(p, tmp_path / n)) for p, n in ((toy_weclip_dir, "m"), (tiny_clip, "c"))
    )
    small = ["--toy_train_images", "2", "--batch_size", "2"]
    for flag, folder in (("--model", model), ("--clip_model_name_or_path", clip)):
        argv = [flag, str(folder), *small, "--output_dir", str(tmp_path / f"out{flag}")]
        generate.main(argv)
        before = {p: p.stat().st_mtime_ns for p in (tmp_path / f"out{flag}").rglob("*")}
        save_another_model_at(folder)
        key = flag.lstrip("-") + "_weights_sha256"
        with pytest.raises(ValueError, match=f"other settings \\({key}: .* is not the one that wrote them"):
            generate.main(argv)
        assert {p: p.stat().st_mtime_ns for p in (tmp_path / f"out{flag}").rglob("*")} == before


def test_another_image_processor_in_the_model_folder_is_refused(toy_weclip_dir, tmp_path):
    """Another preprocessor_config.json saved in the --model folder (another input size: other pseudo masks): the
    re-run kept the old masks as done. Now it is refused, naming the setting."""
    model = Path(shutil.copytree(toy_weclip_dir, tmp_path / "m"))
    argv = ["--model", str(model), "--toy_train_images", "2", "--output_dir", str(tmp_path / "out")]
    generate.main(argv)
    processor = model / "preprocessor_config.json"
    processor.write_text(json.dumps({**json.loads(processor.read_text()), "size": {"longest_edge": 48}}))
    with pytest.raises(ValueError, match=r"other settings \(image_processor: .*'longest_edge': 96.* -> .*48"):
        generate.main(argv)


def test_rows_of_another_dataset_under_the_same_numbers_are_refused_or_replaced(tiny_clip, tmp_path):
    """The toy world of seed 0, then of seed 1 into the same --output_dir: the second run is refused, naming the
    rows (it kept seed 0's images and masks as seed 1's), and rewrites nothing; with --overwrite_output_dir and
    1 image, row 0 is seed 1's and row 1 (seed 0's, not this run's) is dropped from the dataset written."""
    import datasets

    out = tmp_path / "out"
    argv = ["--clip_model_name_or_path", tiny_clip, "--batch_size", "2", "--output_dir", str(out)]
    generate.main([*argv, "--toy_train_images", "2"])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(ValueError, match=r"2 outputs of other inputs.*'000000' made from row 0 of split 'train', "
                       r"not from this run's row 0 .*--overwrite_output_dir"):  # fmt: skip
        generate.main([*argv, "--toy_train_images", "2", "--seed", "1"])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    reseeded = [*argv, "--toy_train_images", "1", "--seed", "1"]
    assert generate.main([*reseeded, "--overwrite_output_dir"])["splits"]["train"]["num_images"] == 1
    [image] = (out / "train" / "images").iterdir()
    toy = make_toy_dataset(1, seed=1).cast_column("image", datasets.Image(decode=False))
    assert image.read_bytes() == toy[0]["image"]["bytes"]
    assert [p.name for p in (out / ".state" / "train").iterdir()] == ["000000.json"]
    assert len((out / "train" / "metadata.jsonl").read_text().splitlines()) == 1
    done = {p: p.stat().st_mtime_ns for p in (out / "train").rglob("*.*") if p.suffix != ".jsonl"}
    generate.main(reseeded)  # the same input: done
    assert {p: p.stat().st_mtime_ns for p in done} == done
    record = out / ".state" / "train" / "000000.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "input"}))
    with pytest.raises(
        ValueError, match="'000000' without a record of its input"
    ):  # an older version's record
        generate.main(reseeded)


def test_an_interrupted_overwriting_run_leaves_no_dataset_and_its_rerun_finishes_it(
    tiny_clip, tmp_path, monkeypatch
):
    """The toy world of seed 0, then seed 1 with --overwrite_output_dir killed after one image's record: the folder
    keeps no metadata.jsonl of the old run (which `datasets` would read with the new masks) and --data_dir refuses
    it; the same command run again writes seed 1's dataset."""
    import datasets

    from weclip_hf.data.sources import DataSource, load_dataset_splits

    out = tmp_path / "out"
    argv = ["--clip_model_name_or_path", tiny_clip, "--toy_train_images", "2", "--output_dir", str(out)]
    generate.main(argv)
    writing = labelling_part("writing")
    save_json, records = writing.save_json, []

    def interrupted_save(data, path):
        if Path(path).parent.name == "train":  # an image's record
            if records:
                raise KeyboardInterrupt
            records.append(path)
        return save_json(data, path)

    monkeypatch.setattr(writing, "save_json", interrupted_save)
    reseeded = [*argv, "--seed", "1", "--overwrite_output_dir"]
    with pytest.raises(KeyboardInterrupt):
        generate.main(reseeded)
    monkeypatch.undo()
    assert not (out / "train" / "metadata.jsonl").exists() and not (out / "pseudo_label_report.json").exists()
    source = DataSource(data_dir=str(out))
    with pytest.raises(
        ValueError, match="--data_dir .* unfinished run of examples/generate_pseudo_labels.py"
    ):
        load_dataset_splits(source, train_split="train", validation_split="none")
    generate.main(reseeded)
    train, _, _ = load_dataset_splits(source, train_split="train", validation_split="none")
    toy = make_toy_dataset(2, seed=1).cast_column("image", datasets.Image(decode=False))
    assert train["image_labels"] == [[TOY_CLASS_NAMES[c - 1] for c in row] for row in toy["image_labels"]]
    stored = train.cast_column("image", datasets.Image(decode=False))["image"]
    assert [Path(image["path"]).read_bytes() for image in stored] == [
        image["bytes"] for image in toy["image"]
    ]


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_overwrite_output_dir_starts_over_a_run_with_other_settings(tiny_clip, tmp_path, monkeypatch):
    """A run of 3 toy images with a validation split and an overlay of row 0, then one with other background
    names, 2 images, no validation split, no overlays: refused, naming --overwrite_output_dir, nothing touched;
    with it (interrupted once during the start-over, which leaves an unfinished folder the same command finishes)
    the folder holds what a fresh run writes, the earlier validation split and overlay gone, and a user's own
    files kept: an overlay named after row 1 (the earlier run wrote none for it) and a file beside them. A folder
    whose records do not list their files (an earlier version's) is refused."""
    from weclip_hf.data.sources import DataSource, load_dataset_splits

    out = tmp_path / "out"
    clip = ["--clip_model_name_or_path", tiny_clip, "--batch_size", "2"]
    first = [*clip, "--toy_train_images", "3", "--toy_val_images", "1", "--validation_split", "validation"]
    generate.main([*first, "--num_overlays", "1", "--output_dir", str(out)])
    own = {"overlays/000001.png": b"my overlay", "notes.txt": b"x"}
    for name, data in own.items():
        (out / name).write_bytes(data)
    again = [*clip, "--toy_train_images", "2", "--background_names", "ground", "sky"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(
        ValueError,
        match=r"other settings \(background_names: None -> \['ground', 'sky'\]\).*--overwrite_output_dir "
        "to start over",
    ):
        generate.main([*again, "--output_dir", str(out)])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    starting_over = labelling_part("starting_over")
    monkeypatch.setattr(starting_over, "remove_file", interrupted_after(starting_over.remove_file, 3))
    with pytest.raises(KeyboardInterrupt):
        generate.main([*again, "--output_dir", str(out), "--overwrite_output_dir"])
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unfinished run of examples/generate_pseudo_labels.py"):
        load_dataset_splits(DataSource(data_dir=str(out)), train_split="train", validation_split="none")
    report = generate.main([*again, "--output_dir", str(out), "--overwrite_output_dir"])
    assert report == generate.main([*again, "--output_dir", str(tmp_path / "fresh")])
    fresh = folder_files(tmp_path / "fresh")
    assert folder_files(out) == {**fresh, **own}
    assert not (out / "validation").exists() or not any((out / "validation").rglob("*.*"))
    record = out / ".state" / "train" / "000000.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "outputs"}))
    with pytest.raises(ValueError, match=r"records do not list the files it wrote \(.*000000.json"):
        generate.main([*first, "--output_dir", str(out), "--overwrite_output_dir"])
    assert (out / "train" / "masks" / "000000.png").exists()


def test_a_row_redone_takes_only_the_overlay_its_record_lists(tiny_clip, tmp_path):
    """Rows of another toy seed with --overwrite_output_dir: the earlier overlay of row 0 goes with its record, a
    user's overlay named after row 1 (for which the earlier run wrote none) stays."""
    out = tmp_path / "out"
    argv = ["--clip_model_name_or_path", tiny_clip, "--toy_train_images", "2", "--output_dir", str(out)]
    generate.main([*argv, "--num_overlays", "1"])
    assert json.loads((out / ".state" / "train" / "000000.json").read_text())["outputs"] == [
        "train/images/000000.bmp", "train/masks/000000.png", "overlays/000000.png"
    ]  # fmt: skip
    (out / "overlays" / "000001.png").write_bytes(b"my overlay")
    generate.main([*argv, "--seed", "1", "--overwrite_output_dir"])
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["000001.png"]
    assert (out / "overlays" / "000001.png").read_bytes() == b"my overlay"


def test_a_damaged_row_record_is_taken_as_none(tiny_clip, tmp_path):
    """An emptied row record (.state/train/000000.json) stopped every run over the folder, also with
    --overwrite_output_dir, with "holds no record ... Choose another --output_dir". Now it is taken as no record:
    the row's outputs are refused as those of an input that cannot be told, naming --overwrite_output_dir, which
    redoes the row."""
    out = tmp_path / "out"
    argv = ["--clip_model_name_or_path", tiny_clip, "--toy_train_images", "2", "--output_dir", str(out)]
    generate.main(argv)
    record = out / ".state" / "train" / "000000.json"
    whole = json.loads(record.read_text())
    record.write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"'000000' without a record of its input \(.*or its record damaged\)"
    ):
        generate.main(argv)
    assert generate.main([*argv, "--overwrite_output_dir"])["splits"]["train"]["num_images"] == 2
    assert json.loads(record.read_text())["input"] == whole["input"]


def test_overlays_asked_for_in_a_rerun_of_a_finished_run_are_drawn_of_its_masks(tiny_clip, tmp_path):
    """A finished run without overlays, run again with --num_overlays 1: it drew none (its rows were done). Now row
    0's overlay is drawn, of the mask written, which stays as it was; its record lists it."""
    out = tmp_path / "out"
    argv = ["--clip_model_name_or_path", tiny_clip, "--toy_train_images", "2", "--output_dir", str(out)]
    generate.main(argv)
    masks = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "train" / "masks").iterdir()}
    metadata = (out / "train" / "metadata.jsonl").read_text()
    generate.main([*argv, "--num_overlays", "1"])
    assert [p.name for p in (out / "overlays").iterdir()] == ["000000.png"]
    assert Image.open(out / "overlays" / "000000.png").width > 2 * 3 * 96  # image, mask, legend and CAMs
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in masks} == masks
    assert (out / "train" / "metadata.jsonl").read_text() == metadata
    assert json.loads((out / ".state" / "train" / "000000.json").read_text())["outputs"] == [
        "train/images/000000.bmp", "train/masks/000000.png", "overlays/000000.png"
    ]  # fmt: skip


def test_an_output_dir_of_the_input_data_of_other_files_or_with_links_is_refused(tiny_clip, tmp_path, capsys):
    """The run deleted every file of ``<output_dir>/<split>/images`` and ``masks`` it had no record of: the input
    dataset's images given as --output_dir too (and its metadata.jsonl replaced), and the files of a folder
    behind a link. Now an --output_dir that is, lies inside or holds the input data is refused, also with
    --overwrite_output_dir; a non-empty one this script did not write (no .state/) without it; a
    link among the outputs always, naming it. Nothing is written or deleted."""
    data = tmp_path / "mydata"
    (data / "train" / "images").mkdir(parents=True)
    toy, _, _ = generate_toy_images(2, seed=0)
    for name, image in zip(("cat1", "dog2"), toy):
        Image.fromarray(image).save(data / "train" / "images" / f"{name}.jpg")
    rows = [
        {"file_name": f"images/{n}.jpg", "image_labels": [c]}
        for n, c in (("cat1", "circle"), ("dog2", "square"))
    ]
    (data / "train" / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "precious.txt").write_text("keep")
    (tmp_path / "pl1" / "train").mkdir(parents=True)
    (tmp_path / "pl1" / "train" / "images").symlink_to(decoy)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    model = ["--clip_model_name_or_path", tiny_clip, "--preset", "toy"]
    for flag, out, where in (
        ("--data_dir", data, "is"),
        ("--dataset_path", data, "is"),
        ("--data_dir", data / "train" / "pseudo", "lies inside"),
        ("--data_dir", tmp_path, "holds"),
    ):
        with pytest.raises(SystemExit):
            generate.main([flag, str(data), "--output_dir", str(out), *model, "--overwrite_output_dir"])
        assert f"{where} the input dataset ({flag} {str(data)!r})" in capsys.readouterr().err
    argv = ["--output_dir", str(tmp_path / "pl1"), "--toy_train_images", "3", *model]
    with pytest.raises(SystemExit):
        generate.main(argv)
    assert "is not empty (train/) and was not written by this script" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"holds links .*pl1/train/images -> .*decoy\)"):
        generate.main([*argv, "--overwrite_output_dir"])
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "pl1" / ".state").exists()


@pytest.fixture
def awkward_folder(tmp_path) -> Path:
    """An imagefolder "train" split with image-level labels as class names: toy images, a grayscale one, a CMYK
    JPEG, a JPEG stored 64 x 40 whose EXIF orientation (6) shows it 40 x 64, a 1x1 image and a truncated PNG."""
    root = tmp_path / "folder" / "train"
    root.mkdir(parents=True)
    toy, _, labels = generate_toy_images(3, seed=4)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    files = {
        "toy.png": lambda p: Image.fromarray(toy[0]).save(p),
        "gray.png": lambda p: Image.fromarray(toy[1]).convert("L").save(p),
        "cmyk.jpg": lambda p: Image.fromarray(toy[2]).convert("CMYK").save(p),
        "rotated.jpg": lambda p: Image.fromarray(toy[0][:40, :64]).save(p, exif=exif),
        "one_pixel.png": lambda p: Image.fromarray(toy[1][:1, :1]).save(p),
    }
    for name, write in files.items():
        write(root / name)
    buffer = io.BytesIO()
    Image.fromarray(toy[2]).save(buffer, format="PNG")
    (root / "truncated.png").write_bytes(buffer.getvalue()[:300])
    names = [*files, "truncated.png"]
    with open(root / "metadata.jsonl", "w") as f:
        for i, name in enumerate(names):
            classes = [TOY_CLASS_NAMES[c - 1] for c in labels[i % 3]]
            f.write(json.dumps({"file_name": name, "classes": classes}) + "\n")
    return root.parent


def test_awkward_files_are_read_or_skipped_and_named(awkward_folder, tiny_clip, tmp_path):
    import datasets

    out = tmp_path / "out"
    argv = ["--data_dir", str(awkward_folder), "--preset", "toy", "--clip_model_name_or_path", tiny_clip]
    report = generate.main([*argv, "--labels_column", "classes", "--output_dir", str(out)])
    [skipped] = report["splits"]["train"]["skipped_unreadable"]
    assert "truncated.png" in skipped and "scores" not in report  # no masks: nothing to score
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    sources = [Path(s).name for s in loaded["source"]]
    assert sorted(sources) == ["cmyk.jpg", "gray.png", "one_pixel.png", "rotated.jpg", "toy.png"]
    for row, source in zip(loaded, sources):  # masks of the image as shown (EXIF orientation applied)
        assert row["mask"].size == row["image"].size, source
    assert loaded[sources.index("rotated.jpg")]["mask"].size == (40, 64)
    assert loaded[sources.index("one_pixel.png")]["mask"].size == (1, 1)


def save_labelled_dataset(path: Path, split: str = "train", labels: tuple[int, int] = (0, 1)) -> None:
    """A saved dataset of 2 toy images in a ``split`` split, labelled by a ClassLabel column (heart, cat:
    ``labels``)."""
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["heart", "cat"])}
    )
    rows = {"image": [Image.fromarray(t) for t in generate_toy_images(2, seed=1)[0]], "label": list(labels)}
    datasets.DatasetDict({split: datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(path)


def test_rows_of_the_same_images_with_other_image_level_labels_are_refused(tiny_clip, tmp_path):
    """A row is recorded by its image-level labels too: the same images labelled otherwise are another input (their
    CAM masks are of other classes), refused as such."""
    out = tmp_path / "out"
    argv = ["--clip_model_name_or_path", tiny_clip, "--split", "train", "--output_dir", str(out)]
    save_labelled_dataset(tmp_path / "d")
    save_labelled_dataset(tmp_path / "swapped", labels=(1, 0))
    generate.main([*argv, "--dataset_path", str(tmp_path / "d")])
    with pytest.raises(ValueError, match=r"2 outputs of other inputs.*'000000'"):
        generate.main([*argv, "--dataset_path", str(tmp_path / "swapped")])


def test_a_bare_clip_takes_the_classes_of_a_classlabel_column(tmp_path, tiny_clip, capsys):
    """Without --class_names and --preset, a dataset labelled by a ClassLabel got VOC's 20 classes and failed
    ("unknown class name(s)"): its names are the classes, as in train.py."""
    save_labelled_dataset(tmp_path / "d")
    argv = ["--clip_model_name_or_path", tiny_clip, "--dataset_path", str(tmp_path / "d"), "--split", "train"]
    report = generate.main([*argv, "--output_dir", str(tmp_path / "out"), "--num_overlays", "0"])
    printed = capsys.readouterr().out
    assert "Note: the classes are the names of the dataset's label column" in printed
    # train.py's note on a dataset without a validation split named a flag this script does not have
    assert "no 'validation' split" not in printed and "--train_val_split" not in printed
    assert report["splits"]["train"]["num_images"] == 2


def test_the_note_on_a_split_read_back_under_another_name_is_printed_by_the_run(tmp_path, tiny_clip, capsys):
    """The note moved from the argument parsing (every process printed it) to the main process of the run."""
    save_labelled_dataset(tmp_path / "d", split="train_aug")
    argv = [
        "--clip_model_name_or_path",
        tiny_clip,
        "--dataset_path",
        str(tmp_path / "d"),
        "--split",
        "train_aug",
    ]
    generate.main([*argv, "--output_dir", str(tmp_path / "out"), "--num_overlays", "0"])
    printed = " ".join(capsys.readouterr().out.split())
    assert printed.count("--split 'train_aug' is written as a folder 'train_aug', which") == 1


def test_a_run_that_fails_before_writing_leaves_no_settings_to_refuse_the_corrected_command(
    tmp_path, tiny_clip
):
    """A --split the dataset lacks or a mistyped --class_names fails while the data is read: it recorded its
    settings first, so the corrected command was refused as "a run with other settings". Now the failed run leaves
    no folder."""
    save_labelled_dataset(tmp_path / "d")
    out = tmp_path / "out"
    argv = ["--clip_model_name_or_path", tiny_clip, "--dataset_path", str(tmp_path / "d")]
    argv += ["--output_dir", str(out)]
    for mistake, message in (
        (["--split", "test"], "Split 'test' not found"),
        (["--split", "train", "--class_names", "heart", "kat"], r"unknown class name\(s\) \['cat'\]"),
    ):
        with pytest.raises(ValueError, match=message):
            generate.main([*argv, *mistake])
        assert not out.exists()
    assert generate.main([*argv, "--split", "train"])["splits"]["train"]["num_images"] == 2


def test_rows_an_earlier_run_had_and_this_run_does_not_are_refused_or_dropped(tiny_clip, tmp_path):
    """3 toy images, then 2 into the same --output_dir: the dataset and report of the second run listed the third
    row as its own. Now it is refused, naming the row, nothing rewritten; with --overwrite_output_dir the third
    row is dropped; --max_samples too."""
    out = tmp_path / "out"
    argv = ["--clip_model_name_or_path", tiny_clip, "--batch_size", "3", "--output_dir", str(out)]
    generate.main([*argv, "--toy_train_images", "3"])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    for fewer in (["--toy_train_images", "2"], ["--toy_train_images", "3", "--max_samples", "2"]):
        with pytest.raises(
            ValueError, match=r"1 row of split 'train' that this run does not have \('000002'"
        ):
            generate.main([*argv, *fewer])
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    report = generate.main([*argv, "--toy_train_images", "2", "--overwrite_output_dir"])
    assert report["splits"]["train"]["num_images"] == 2
    assert len((out / "train" / "metadata.jsonl").read_text().splitlines()) == 2


def test_a_row_done_earlier_whose_image_is_now_unreadable_is_named_as_such(tiny_clip, tmp_path):
    """A row done by an earlier run whose image was cut short since: the re-run, which skips it as unreadable, was
    refused as if the folder held a row of an earlier run of more rows ("another --max_samples or toy size"). Now
    the refusal names the row as done earlier with its image now unreadable, nothing rewritten; with
    --overwrite_output_dir its outputs are dropped and it is listed as skipped."""
    folder = tmp_path / "folder" / "train"
    folder.mkdir(parents=True)
    toy, _, labels = generate_toy_images(2, seed=4)
    with open(folder / "metadata.jsonl", "w") as f:
        for i, name in enumerate(("a.png", "b.png")):
            Image.fromarray(toy[i]).save(folder / name)
            f.write(
                json.dumps({"file_name": name, "classes": [TOY_CLASS_NAMES[c - 1] for c in labels[i]]}) + "\n"
            )
    out = tmp_path / "out"
    argv = ["--data_dir", str(folder.parent), "--preset", "toy", "--clip_model_name_or_path", tiny_clip]
    argv += ["--labels_column", "classes", "--output_dir", str(out)]
    assert generate.main(argv)["splits"]["train"]["num_images"] == 2
    (folder / "a.png").write_bytes((folder / "a.png").read_bytes()[:300])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    out_dir, image = re.escape(str(out)), re.escape(str(folder / "a.png"))
    with pytest.raises(
        ValueError,
        match=rf"^{out_dir} holds the outputs of 1 row of split 'train' that an earlier run did and whose image "
        rf"or mask this run could not read \('000000': file '{image}'.*\)\. Fix the files and re-run, or give "
        r"--overwrite_output_dir to drop their outputs\.$",
    ):
        generate.main(argv)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    report = generate.main([*argv, "--overwrite_output_dir"])
    assert report["splits"]["train"]["num_images"] == 1
    [skipped] = report["splits"]["train"]["skipped_unreadable"]
    assert skipped.startswith(f"file '{folder / 'a.png'}'")


@pytest.mark.parametrize("script", ["generate_pseudo_labels.py", "segment.py"])
def test_ctrl_c_says_how_to_continue_and_exits_130(script, monkeypatch, capsys):
    """Ctrl-C ended generate_pseudo_labels.py with a KeyboardInterrupt traceback; both scripts now say that the same
    command continues and exit with 130."""
    import argparse
    import runpy

    def interrupted(parser, argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", interrupted)
    # as when run: the script's folder first on sys.path, for its own modules (segment.py's segmenting/)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    assert exited.value.code == 130
    assert "Interrupted: run the same command again to continue." in capsys.readouterr().out


def test_device_cpu_runs_the_model_on_the_cpu_of_a_gpu_machine(tiny_clip, tmp_path, monkeypatch):
    """generate_pseudo_labels.py had no --device: on a GPU machine the CPU took ACCELERATE_USE_CPU=1. --device cpu
    builds the bare CLIP on the CPU where accelerate's device is a GPU, and labels the images."""
    devices = loading_on_a_gpu_machine(generate, monkeypatch)
    argv = ["--clip_model_name_or_path", tiny_clip, "--toy_train_images", "2", "--device", "cpu"]
    report = generate.main([*argv, "--output_dir", str(tmp_path / "out")])
    assert devices == [torch.device("cpu")] and report["splits"]["train"]["num_images"] == 2


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            ["cat,dog", "dog"],
            r"unknown class name\(s\) \['cat,dog'\]; expected names of the run's 3 classes: \['cat', 'dog', 'bird'\]. "
            r"'cat,dog' is one string of class names joined by commas: the label column must hold a list of names, "
            r"\['cat', 'dog'\] \(a metadata.csv cell: the JSON list \[\"cat\", \"dog\"\]\), or a list of integer ids.",
        ),
        (
            ["3,1", "2"],
            r"unknown class name\(s\) \['3,1'\]; .*'3,1' is a string of class ids: the label column must hold a list "
            r"of integer ids, \[3, 1\] \(a metadata.csv cell: the JSON list \[3, 1\]\), or a list of class names.",
        ),
        (
            ["2", "1"],
            r"unknown class name\(s\) \['2'\]; .*'2' is a string of class ids: .* integer ids, \[2\]",
        ),
    ],
)
def test_label_rows_of_one_string_say_what_the_column_must_hold(tiny_clip, tmp_path, rows, message):
    """Image-level labels stored as one string per row, of comma-joined names ("cat,dog") or of ids ("3,1", "2"),
    were refused as "unknown class name(s) ['cat,dog']" with "Check --class_names / --preset", as if a class were
    misspelt. The error now says what the string is and the list the label column must hold."""
    import datasets

    path = tmp_path / "d"
    images = [Image.fromarray(t) for t in generate_toy_images(2, seed=1)[0]]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"image": images, "labels": rows})}
    ).save_to_disk(path)
    argv = ["--clip_model_name_or_path", tiny_clip, "--dataset_path", str(path), "--split", "train"]
    argv += ["--class_names", "cat", "dog", "bird", "--labels_column", "labels"]
    with pytest.raises(ValueError, match=rf"Image labels of row 0 of split 'train' contain {message}"):
        generate.main([*argv, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_sparse_confusion_lists_reference_prediction_and_count_without_ignored_pixels():
    """One image's confusion entries ``[reference, prediction, count]``; the mask's ignored pixels are left out."""
    import torch

    pred = torch.tensor([[0, 1], [1, 1]])
    mask = np.array([[0, 2], [255, 1]], dtype=np.uint8)
    sparse_confusion = labelling_part("writing").sparse_confusion
    assert sorted(sparse_confusion(pred, mask, 3, 255)) == [[0, 0, 1], [1, 1, 1], [2, 1, 1]]


def test_a_re_run_deletes_split_files_without_a_record_and_rewrites_nothing(tiny_clip, tmp_path):
    """A finished run with overlays, re-run: a file in its split folders that no record lists (an interrupted run's
    image or mask) is deleted, so that the dataset holds the recorded rows only; the done rows' masks, overlays
    and records are neither redrawn nor rewritten."""
    out = tmp_path / "out"
    argv = ["--clip_model_name_or_path", tiny_clip, "--toy_train_images", "2", "--output_dir", str(out)]
    argv += ["--num_overlays", "-1"]
    generate.main(argv)
    written = {p: p.stat().st_mtime_ns for p in [*(out / ".state" / "train").iterdir(), *out.rglob("*.png")]}
    stray = [out / "train" / "images" / "000009.png", out / "train" / "masks" / "000009.png"]
    for path in stray:
        shutil.copyfile(out / "train" / "masks" / "000000.png", path)
    assert generate.main(argv)["splits"]["train"]["num_images"] == 2
    assert not any(path.exists() for path in stray)
    assert {p: p.stat().st_mtime_ns for p in written} == written and len(written) == 6


def test_another_mode_in_the_same_folder_is_refused(toy_weclip_dir, tmp_path):
    """--mode cam over a folder of RFM masks is another run's settings, refused as such."""
    argv = ["--model", str(toy_weclip_dir), "--toy_train_images", "1", "--output_dir", str(tmp_path / "out")]
    generate.main(argv)
    with pytest.raises(ValueError, match=r"other settings \(mode: 'rfm' -> 'cam'"):
        generate.main([*argv, "--mode", "cam"])


def test_pseudo_masks_are_computed_at_most_at_the_processors_input_size(
    toy_weclip_dir, tmp_path, monkeypatch
):
    """A photo larger than the model's image processor's input size has its pseudo masks computed at that size
    (`image_pseudo_labels`'s ``max_size``), not at its own."""
    from weclip_hf import WeCLIPImageProcessor
    from weclip_hf.evaluation import processor_input_size

    labelling_model = labelling_part("model")
    sizes, computed = [], labelling_model.image_pseudo_labels

    def recording(*args, max_size, **kwargs):
        sizes.append(max_size)
        return computed(*args, max_size=max_size, **kwargs)

    monkeypatch.setattr(labelling_model, "image_pseudo_labels", recording)
    argv = ["--model", str(toy_weclip_dir), "--toy_train_images", "1", "--output_dir", str(tmp_path / "out")]
    generate.main(argv)
    expected = processor_input_size(WeCLIPImageProcessor.from_pretrained(toy_weclip_dir))
    assert expected is not None and sizes == [expected] * len(sizes) and sizes


def test_a_pathological_example_record_is_named_when_the_split_is_finished(tmp_path, monkeypatch):
    """An example's record in .state/ nesting 100,000 arrays, or cut short, ended the run's end (metadata.jsonl
    from the records) in a RecursionError or a bare JSONDecodeError; now in the ValueError of a record file that
    "holds no record", naming it."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    from pseudo_labelling.finishing import finish_split

    record = tmp_path / ".state" / "train" / "a.json"
    record.parent.mkdir(parents=True)
    for content, problem in (
        ("[" * 100_000 + "]" * 100_000, "nest too deep"),
        ('{"file_name"', "not valid JSON"),
    ):
        record.write_text(content)
        with pytest.raises(ValueError, match=f"^{record} holds no record \\(.*{problem}"):
            finish_split(tmp_path, "train", {0: "background"})

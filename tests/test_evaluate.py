"""examples/evaluate.py on a saved tiny model and a local dataset, and `evaluate_segmentation` against a
hand-computed confusion matrix."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    evaluate_module,
    make_tiny_config,
    torchrun,
    train_module,
    train_phase,
    with_varied_decoder,
)
from PIL import Image

from weclip_hf.crf import WECLIP
from weclip_hf.evaluation import MIOU_NAMES, evaluate_segmentation, predict_labels
from weclip_hf.script_arguments import scales_in_effect

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "evaluate.py"
CLASSES = ["background", "cat", "dog", "car", "tree"]


load_script = evaluate_module  # examples/evaluate.py as a module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random WeCLIP whose labels vary across an image (`with_varied_decoder`: the tests compare the labels of
    two routes) and its image processor, saved with save_pretrained."""
    from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor

    # seed 0's multi-scale labels scored 0 on every class, with the CRF too: scores alike, a mix-up unseen
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("model")
    with_varied_decoder(WeCLIPForSemanticSegmentation(make_tiny_config())).save_pretrained(path)
    WeCLIPImageProcessor(size={"longest_edge": 48}, patch_size=8).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    """A saved DatasetDict with only a validation split: images 40x48, masks with ids 0..4 and 255."""
    import datasets

    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(3):
        images.append(Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)))
        mask = np.zeros((40, 48), np.uint8)
        mask[8:30, 10:34] = 1 + i
        mask[0] = 255
        masks.append(Image.fromarray(mask))
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    path = tmp_path_factory.mktemp("data") / "ds"
    val = datasets.Dataset.from_dict({"image": images, "mask": masks}, features=features)
    datasets.DatasetDict({"validation": val}).save_to_disk(path)
    return path


def test_processes_of_a_launch_score_their_shares_of_the_images(model_dir, data_path, tmp_path):
    """Under torchrun each process read and scored every image (the table printed and the JSON written by each):
    now every process scores its share (2 + 1 of the 3 images, one batch each) and the main process reports the
    figures of one process."""
    flags = [
        "--model_name_or_path",
        model_dir,
        "--dataset_path",
        data_path,
        "--pseudo_labels",
        "--device",
        "cpu",
    ]
    flags = [*map(str, flags), "--batch_size", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*torchrun(2), str(SCRIPT), *flags, "--output_json", str(tmp_path / "two.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("validation: ") == 1 and proc.stdout.count("mIoU") == 1
    shares = sorted(
        int(n) for n in re.findall(r"evaluating:\s+0%\|[^|]*\| 0/(\d)", proc.stderr)
    )  # progress bars
    assert shares == [1, 2]  # images per process, not 3 each
    two = json.loads((tmp_path / "two.json").read_text())
    one = load_script().main([*flags, "--output_json", str(tmp_path / "one.json")])
    assert _classes_predicted(one["per_class_iou"]["pred"].values()) > 1  # labels that a mix-up would change
    for name in ("miou", "cam_miou", "pseudo_label_miou"):
        assert two[name] == pytest.approx(one[name], abs=1e-6), name
    assert two["num_images"] == one["num_images"] == 3  # the images scored, not the main process's share
    for mode, ious in one["per_class_iou"].items():
        assert {k: v for k, v in two["per_class_iou"][mode].items() if v is not None} == pytest.approx(
            {k: v for k, v in ious.items() if v is not None}, abs=1e-6
        )


def test_rows_held_out_by_train_val_split_are_scored_as_the_training_run_scored_them(model_dir, tmp_path):
    """A run of train.py with --train_val_split on a dataset with only a train split had no evaluate.py command
    (the split 'validation' does not exist): evaluate.py holds out the same rows, and train.py's command says so."""
    import datasets

    rng = np.random.default_rng(0)
    rows = {
        "image": [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(8)],
        "mask": [Image.fromarray(np.full((16, 16), 1 + i % 3, np.uint8)) for i in range(8)],
    }
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    path = str(tmp_path / "train_only")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(path)
    flags = ["--model_name_or_path", str(model_dir), "--dataset_path", path, "--device", "cpu"]
    with pytest.raises(ValueError, match="'validation' not found"):
        load_script().main(flags)
    held_out = ["--train_val_split", "0.25", "--seed", "3"]
    report = load_script().main([*flags, *held_out])
    assert report["num_images"] == 2  # the JSON says which rows: another --seed draws others (it did not say)
    assert report["data"] == {
        "dataset_path": path,
        "validation_split": "validation",
        "train_val_split": 0.25,
        "seed": 3,
    }
    script = load_script()
    default_seed = script.data_report(script.parse_args([*flags, "--train_val_split", "0.25"]))
    assert default_seed["seed"] == 0  # the default seed is recorded too (a 0 was taken for a flag left out)
    train, evaluate_command = train_module(), train_phase("run_end").evaluate_command
    command = evaluate_command(train.parse_args(["--dataset_path", path, *held_out]))
    assert "--train_val_split 0.25" in command and "--seed 3" in command
    assert "skip_empty_images" not in command  # evaluate.py's default without --preset: every image scored
    skipping = evaluate_command(train.parse_args(["--dataset_path", path, "--skip_empty_images"]))
    assert "--skip_empty_images" in skipping.split()  # the images of the run's evaluation


def test_single_scale_cli_writes_json_and_per_class_table(model_dir, data_path, tmp_path, capsys):
    out = (
        tmp_path / "reports" / "val.json"
    )  # its folder is made (the JSON was lost after the whole evaluation)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--model_name_or_path",
            str(model_dir),
            "--dataset_path",
            str(data_path),
            "--output_json",
            str(out),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["split"] == "validation" and report["num_images"] == 3
    assert 0.0 <= report["miou"] <= 1.0  # train.py's metrics.json names (MIOU_NAMES)
    assert set(report) == {
        "model",
        "split",
        "num_images",
        "data",
        "preset",
        "evaluation",
        "miou",
        "per_class_iou",
    }
    # which images were scored: two datasets gave JSON alike but for the scores
    assert report["data"] == {"dataset_path": str(data_path), "validation_split": "validation"}
    assert report["preset"] is None
    with pytest.raises(SystemExit):
        load_script().parse_args(["--model_name_or_path", str(model_dir), "--output_json", str(tmp_path)])
    assert "is a folder: give a file name" in capsys.readouterr().err
    # no --preset on a local dataset: the long side of the model's saved processor (48), single scale, no CRF
    assert report["evaluation"] == {
        "input_size": {"longest_edge": 48},
        "msf_scales": None,
        "flip": False,
        "crf": False,
        "ignore_index": 255,
        "skip_empty_images": False,
    }
    assert list(report["per_class_iou"]["pred"]) == CLASSES
    table = proc.stdout
    assert "| class | pred |" in table and "**mIoU**" in table
    assert all(f"| {name} |" in table for name in CLASSES)
    assert "3 images, 0 with an empty label set" in table  # the label summary of the split


def _per_class_iou(pred: torch.Tensor, ref: torch.Tensor, num_labels: int, ignore: int = 255) -> list:
    """IoU of each class over all pixels of ``pred`` / ``ref`` [N, H, W] (None where the class is absent)."""
    pred, ref = pred.numpy(), ref.numpy()
    valid = ref != ignore
    ious = []
    for c in range(num_labels):
        union = (((pred == c) | (ref == c)) & valid).sum()
        ious.append(None if union == 0 else float(((pred == c) & (ref == c) & valid).sum() / union))
    return ious


def _classes_predicted(ious) -> int:
    """How many classes a prediction holds at least somewhere right (IoU above 0), from its per-class IoUs."""
    return sum(iou is not None and iou > 0 for iou in ious)


def test_multiscale_flip_crf_and_pseudo_labels(model_dir, data_path, tmp_path, capsys, monkeypatch):
    """Each mode scores the labels it names: ``pred`` the model's argmax, ``pred_msf`` / ``pred_crf`` labels that
    multi-scale + flip / the CRF change on some pixels, ``cam`` / ``pseudo`` the model's pseudo labels without /
    with the RFM (which differ); the JSON records the CRF parameters."""
    script = load_script()
    seen = {}

    def spy(model, batches, modes, **kwargs):  # the script's own evaluation, its inputs kept
        seen.update(model=model, batches=list(batches), kwargs=kwargs)
        return evaluate_segmentation(model, seen["batches"], modes, **kwargs)

    monkeypatch.setattr(script, "evaluate_segmentation", spy)
    out = tmp_path / "val.json"
    report = script.main(
        [
            "--model_name_or_path",
            str(model_dir),
            "--dataset_path",
            str(data_path),
            "--msf",
            "--crf",
            "--pseudo_labels",
            "--device",
            "cpu",
            "--output_json",
            str(out),
        ]
    )
    modes = ["pred", "pred_msf", "pred_crf", "pred_msf_crf", "cam", "pseudo"]
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["crf"] == {"preset": "weclip", **dataclasses.asdict(WECLIP)}  # the parameters used
    assert list(report["per_class_iou"]) == modes

    # the labels of every mode, from the model called directly on the batches the script evaluated
    model, kwargs = seen["model"], dict(seen["kwargs"])
    assert kwargs.pop("accelerator") is None  # one process: nothing to sum across processes
    labels = {mode: [] for mode in ["reference", *modes]}
    with torch.no_grad():
        for i, batch in enumerate(batch for loaded in seen["batches"] for batch in loaded):  # collate_by_size
            pixel_values, size = batch["pixel_values"], tuple(batch["labels"].shape[-2:])
            torch.testing.assert_close(
                batch["class_labels"], F.one_hot(torch.tensor([i]), 4).float()
            )  # 1 + i
            labels["reference"].append(batch["labels"])
            logits = F.interpolate(model(pixel_values=pixel_values).logits, size, mode="bilinear")
            labels["pred"].append(logits.argmax(dim=1))
            for mode in ("pred_msf", "pred_crf", "pred_msf_crf"):
                msf, crf = "msf" in mode, "crf" in mode
                labels[mode].append(predict_labels(model, pixel_values, size, msf=msf, crf=crf, **kwargs))
            for mode, use_rfm in (("cam", False), ("pseudo", True)):
                output = model(pixel_values=pixel_values, class_labels=batch["class_labels"], use_rfm=use_rfm)
                labels[mode].append(output.pseudo_labels)
    labels = {mode: torch.cat(maps) for mode, maps in labels.items()}
    assert all(len(labels[mode].unique()) > 1 for mode in modes)  # maps that a mix-up of pixels would change
    # multi-scale + flip and the CRF each change the labels, and the RFM changes the pseudo labels
    for a, b in (("pred", "pred_msf"), ("pred", "pred_crf"), ("pred_msf", "pred_msf_crf"), ("cam", "pseudo")):
        assert (labels[a] != labels[b]).any(), (a, b)
        assert report["per_class_iou"][a] != report["per_class_iou"][b], (a, b)  # so a mix-up would show
    for mode in modes:
        expected = _per_class_iou(labels[mode], labels["reference"], len(CLASSES))
        reported = list(report["per_class_iou"][mode].values())
        assert [v is None for v in reported] == [v is None for v in expected], mode
        assert [v for v in reported if v is not None] == pytest.approx(
            [v for v in expected if v is not None]
        ), mode
        assert report[MIOU_NAMES[mode]] == pytest.approx(np.mean([v for v in expected if v is not None])), (
            mode
        )

    table = capsys.readouterr().out
    assert "| class | " + " | ".join(modes) + " |" in table
    mean_row = next(line for line in table.splitlines() if line.startswith("| **mIoU**"))
    assert mean_row.count("**") == 2 * (len(modes) + 1)
    # the mean row shows the JSON's numbers (in percent)
    assert f"**{100 * report['miou_msf_crf']:.2f}**" in mean_row


def test_scales_and_max_eval_samples(model_dir, data_path):
    report = load_script().main(
        [
            "--model_name_or_path",
            str(model_dir),
            "--dataset_path",
            str(data_path),
            "--msf",
            "--scales",
            "1.0",
            "0.5",
            "--max_eval_samples",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert report["num_images"] == 1 and 0.0 <= report["miou_msf"] <= 1.0


def test_pseudo_labels_read_the_label_column_as_told(model_dir, data_path, tmp_path):
    """--pseudo_labels made the CAMs for the classes of a label column read with the defaults (zero-based ids as
    1-based ones; class names refused); --labels_zero_based and --labels_column did not exist."""
    import datasets

    val = datasets.load_from_disk(str(data_path))["validation"]  # image i: class 1 + i
    val = val.add_column("image_labels", [[0], [1], [2]]).add_column("tags", [["cat"], ["dog"], ["car"]])
    labelled = tmp_path / "labelled"
    datasets.DatasetDict({"validation": val}).save_to_disk(labelled)

    def run(data, *flags) -> dict:
        argv = ["--model_name_or_path", str(model_dir), "--dataset_path", str(data), "--device", "cpu"]
        return load_script().main([*argv, "--pseudo_labels", *flags])

    reference = run(data_path)  # the labels of the masks
    for flags in (["--labels_zero_based"], ["--labels_column", "tags"]):
        report = run(labelled, *flags)
        assert (report["cam_miou"], report["pseudo_label_miou"]) == (
            reference["cam_miou"],
            reference["pseudo_label_miou"],
        )


class EncodedPrediction(torch.nn.Module):
    """A stub segmentation model: the predicted class of a pixel is its value in channel 0."""

    def __init__(self, num_labels: int = 3):
        super().__init__()
        # one pixel per "patch": its logits are at the image's resolution
        self.config = SimpleNamespace(
            num_labels=num_labels, semantic_loss_ignore_index=255, vision_config=SimpleNamespace(patch_size=1)
        )

    def forward(self, pixel_values, **kwargs):
        pred = pixel_values[:, 0].long()
        return SimpleNamespace(logits=F.one_hot(pred, self.config.num_labels).permute(0, 3, 1, 2).float())


def test_evaluate_segmentation_matches_a_hand_computed_confusion():
    # two one-image batches; per pixel (reference, prediction):
    # batch 1: (0,0) (0,1) (1,1) / (1,2) (2,2) (255,0: ignored); batch 2: (2,2) (2,1)
    refs = [torch.tensor([[[0, 0, 1], [1, 2, 255]]]), torch.tensor([[[2, 2]]])]
    preds = [torch.tensor([[[0, 1, 1], [2, 2, 0]]]), torch.tensor([[[2, 1]]])]
    batches = [
        {"pixel_values": p[:, None].float().repeat(1, 3, 1, 1), "labels": r} for p, r in zip(preds, refs)
    ]
    scores = evaluate_segmentation(EncodedPrediction(), batches, ["pred"], progress=False)["pred"]
    # confusion (rows reference, columns prediction): [[1, 1, 0], [0, 1, 1], [0, 1, 2]]
    # IoU = diag / (row + column - diag): 1/(2+1-1), 1/(2+3-1), 2/(3+3-2)
    expected_iou = [1 / 2, 1 / 4, 2 / 4]
    np.testing.assert_allclose(scores["per_category_iou"], expected_iou)
    assert scores["mean_iou"] == pytest.approx(sum(expected_iou) / 3)
    np.testing.assert_allclose(scores["per_category_accuracy"], [1 / 2, 1 / 2, 2 / 3])
    assert scores["overall_accuracy"] == pytest.approx(4 / 7)


def test_the_argmax_modes_upsample_a_chunk_of_classes_at_a_time(tiny_model, monkeypatch):
    """``pred`` (evaluate_segmentation, predict_labels) takes the argmax class chunk by chunk within the budget
    (`upsampled_labels`), never all classes at the full size, with the labels of the whole upsampling: on the tiny
    model as drawn (argmax margins down to 4e-7: a running maximum that let a later chunk win a near tie moved
    pixels) and on one whose labels vary (`with_varied_decoder`: a chunk of classes left out moved pixels)."""
    from weclip_hf import evaluation, inference

    patch = tiny_model.config.vision_config.patch_size
    pixel_values = torch.randn(1, 3, 30, 53, generator=torch.Generator().manual_seed(0))
    input_size = {"longest_edge": 40, "size_divisor": patch}  # a padding processor's
    chunks = []
    upsample = inference.upsample_cropping_padding

    def recording(x, *args):
        chunks.append(x.shape[1])
        return upsample(x, *args)

    monkeypatch.setattr(inference, "LABELS_CHUNK_BYTES", 1)  # one class at a time
    monkeypatch.setattr(inference, "upsample_cropping_padding", recording)
    for varied in (False, True):  # the model as drawn first: with_varied_decoder redraws it in place
        model = with_varied_decoder(tiny_model) if varied else tiny_model
        with torch.no_grad():
            grid, resized, padded = evaluation._grid_logits(model, pixel_values, False, None, input_size)
        logits = upsample(grid.float(), (30, 53), resized, padded)
        chunks.clear()
        labels = predict_labels(model, pixel_values, (30, 53), input_size=input_size)
        assert chunks == [1] * logits.shape[1] and torch.equal(labels, logits.argmax(dim=1))
        assert len(labels.unique()) > 1
    chunks.clear()
    ref = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = ref.clamp(max=2)[:, None].float().repeat(1, 3, 1, 1)  # EncodedPrediction: channel 0 is the class
    batches = [{"pixel_values": pred, "labels": ref}]
    scores = evaluate_segmentation(EncodedPrediction(), batches, ["pred"], progress=False)["pred"]
    assert chunks == [1, 1, 1] and scores["overall_accuracy"] == 1


def test_evaluate_segmentation_leaves_absent_classes_out_of_the_mean():
    ref = torch.tensor([[[0, 0], [1, 1]]])
    batches = [{"pixel_values": ref[:, None].float().repeat(1, 3, 1, 1), "labels": ref}]
    scores = evaluate_segmentation(EncodedPrediction(num_labels=3), batches, ["pred"], progress=False)["pred"]
    assert scores["mean_iou"] == 1.0 and np.isnan(scores["per_category_iou"][2])
    with pytest.raises(ValueError, match="Unknown evaluation modes"):
        evaluate_segmentation(EncodedPrediction(), batches, ["bogus"])


@pytest.mark.parametrize("bad", [12, -1])
def test_labels_outside_the_classes_are_refused_not_dropped(bad):
    """Reference ids outside 0..C other than the ignore index left the confusion matrix without a word."""
    ref = torch.tensor([[[0, 1], [bad, 255]]])
    batches = [{"pixel_values": torch.zeros(1, 3, 2, 2), "labels": ref}]
    with pytest.raises(ValueError, match=rf"class id\(s\) \[{bad}\] outside 0..2 \(ignore index 255\)"):
        evaluate_segmentation(EncodedPrediction(), batches, ["pred"], progress=False)


def test_no_valid_pixel_gives_none_means_and_a_warning():
    ref = torch.full((1, 2, 2), 255)  # every pixel ignored
    batches = [{"pixel_values": torch.zeros(1, 3, 2, 2), "labels": ref}]
    with pytest.warns(
        RuntimeWarning, match=r"'pred'.*no valid pixel.*ignore index 255 \(e.g. all-255 masks\)"
    ):
        scores = evaluate_segmentation(EncodedPrediction(), batches, ["pred"], progress=False)["pred"]
    assert (
        scores["mean_iou"] is None and scores["mean_accuracy"] is None and scores["overall_accuracy"] is None
    )
    assert np.isnan(scores["per_category_iou"]).all()


def test_all_ignored_masks_write_null_not_nan_json(model_dir, tmp_path):
    import datasets

    image = Image.fromarray(np.zeros((40, 48, 3), np.uint8))
    void = Image.fromarray(np.full((40, 48), 255, np.uint8))
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    val = datasets.Dataset.from_dict({"image": [image] * 2, "mask": [void] * 2}, features=features)
    datasets.DatasetDict({"validation": val}).save_to_disk(tmp_path / "void")
    out = tmp_path / "void.json"
    with pytest.warns(RuntimeWarning, match="no valid pixel"):
        report = load_script().main(
            [
                "--model_name_or_path",
                str(model_dir),
                "--dataset_path",
                str(tmp_path / "void"),
                "--device",
                "cpu",
                "--output_json",
                str(out),
            ]
        )
    text = out.read_text()
    assert "NaN" not in text and json.loads(text)["miou"] is None and report["miou"] is None
    assert set(json.loads(text)["per_class_iou"]["pred"].values()) == {None}


def test_evaluate_rejects_max_eval_samples_zero(capsys):
    with pytest.raises(SystemExit):
        load_script().parse_args(["--model_name_or_path", "m", "--max_eval_samples", "0"])
    assert "argument --max_eval_samples: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("size", [(1, 1), (6000, 100), (8, 40)])
def test_images_below_one_patch_after_the_resize_are_predicted_not_refused(tiny_model, size):
    """A 6000 x 100 validation image resized to a 64 px long side is 1 px wide, under one 8 px patch of the tiny
    model (VOC: 512 px -> 8 px, under 16): it is zero-padded to one patch and predicted at its own size (single
    scale and multi-scale + flip), where the final evaluation used to crash."""
    pixel_values = torch.randn(1, 3, *size)
    for msf in (False, True):
        labels = predict_labels(
            tiny_model, pixel_values, size, msf=msf, input_size=64 if max(size) > 64 else None
        )
        assert labels.shape == (1, *size)


def test_pseudo_label_modes_evaluate_images_below_one_patch(tiny_model):
    """The cam / pseudo modes run the model at the image's own size: a 1 x 1 or 5 x 30 image is padded."""
    batches = [
        {
            "pixel_values": torch.randn(1, 3, *size),
            "labels": torch.zeros(1, *size, dtype=torch.long),
            "class_labels": torch.tensor([[1.0, 0, 0, 0]]),
        }
        for size in ((1, 1), (5, 30))
    ]
    results = evaluate_segmentation(tiny_model, batches, ("pred", "cam", "pseudo"), progress=False)
    assert set(results) == {"pred", "cam", "pseudo"}
    assert all(results[mode]["mean_iou"] is not None for mode in results)  # the 151 pixels were scored


def test_the_default_input_size_is_the_saved_processors_unless_given_or_preset(tmp_path):
    """Without --preset or --eval_long_side, data is predicted as the pipeline would: resized as the saved
    processor resizes (a long side, a short side or a fixed size; the fixed size was ignored: images were scored
    at their own size); a processor that does not resize keeps the image size."""
    from weclip_hf import WeCLIPImageProcessor

    script = load_script()
    processor = WeCLIPImageProcessor(size={"longest_edge": 48}, patch_size=8)
    make_tiny_config().save_pretrained(tmp_path)  # --preset is checked against the model's type
    local = ["--model_name_or_path", str(tmp_path), "--data_dir", "d"]
    assert script.input_size(script.parse_args(local), processor) == {"longest_edge": 48}
    assert script.input_size(script.parse_args([*local, "--eval_long_side", "64"]), processor) == 64
    assert script.input_size(script.parse_args([*local, "--preset", "voc"]), processor) == 512
    # the flag overrides the preset's value
    for preset in ("voc", "toy"):
        given = [*local, "--preset", preset, "--eval_long_side", "64"]
        assert script.input_size(script.parse_args(given), processor) == 64, preset
    # the toy preset's: its training crop, as train.py scores (the images were kept at their own size)
    assert script.input_size(script.parse_args([*local, "--preset", "toy"]), processor) == {
        "height": 96,
        "width": 96,
    }
    toy = script.parse_args(["--model_name_or_path", "m"])
    for size in ({"height": 96, "width": 80}, {"shortest_edge": 32}):
        resizing = WeCLIPImageProcessor(size=size, patch_size=8)
        assert (
            script.input_size(script.parse_args(local), resizing) == script.input_size(toy, resizing) == size
        )
    keeping = WeCLIPImageProcessor(size={"height": 96, "width": 96}, do_resize=False, patch_size=8)
    assert script.input_size(script.parse_args(local), keeping) is None


def test_a_preset_of_other_classes_than_the_models_is_named_in_a_note(tmp_path):
    """--preset coco or toy on a model of VOC's classes (or of its own): the preset's evaluation settings apply,
    which was said nowhere; --preset voc on a VOC model gives no note."""
    from weclip_hf.presets import preset_config_kwargs

    script = load_script()
    config = make_tiny_config(**{k: v for k, v in preset_config_kwargs("voc").items() if "names" in k})
    config.save_pretrained(tmp_path)
    local = ["--model_name_or_path", str(tmp_path), "--data_dir", "d"]

    def note(*flags):
        args = script.parse_args([*local, *flags])
        args.input_size, args.scales = script.input_size(args, None), scales_in_effect(args.scales, config)
        return script.other_classes_note(args, config)

    assert note("--preset", "voc") is None and note() is None
    assert note("--preset", "coco", "--msf") == (
        "Note: --preset coco's classes (80: person, ...) are not the model's (20: aeroplane, ...); its evaluation "
        "settings apply all the same (input size 512, multi-scale 1.0 0.75, CRF off). Leave out --preset for the "
        "model's own."
    )
    assert "--preset toy's classes (8: circle, ...)" in note("--preset", "toy")


def test_evaluation_predicts_on_the_images_the_processor_gives_the_pipeline(tiny_model):
    """`evaluate_segmentation(input_size=processor.size)` runs the model on images of the size the processor gives
    the pipeline, for each kind of processor size (an int: the long side), and scores at the masks' size."""
    from weclip_hf import WeCLIPImageProcessor
    from weclip_hf.evaluation import evaluate_segmentation

    image = np.random.default_rng(0).integers(0, 256, (30, 52, 3), dtype=np.uint8)
    batch = {"pixel_values": torch.randn(1, 3, 30, 52), "labels": torch.zeros(1, 30, 52, dtype=torch.long)}
    seen = []
    hook = tiny_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["pixel_values"].shape[-2:])), with_kwargs=True
    )
    try:
        sizes = [{"height": 24, "width": 24}, {"shortest_edge": 20}, {"longest_edge": 40}]
        for size, processor_size in [*zip(sizes, sizes), (40, {"longest_edge": 40}), (None, None)]:
            processor = WeCLIPImageProcessor(
                size=processor_size, do_resize=size is not None, do_pad=False, patch_size=8
            )
            expected = tuple(processor(image, return_tensors="pt")["pixel_values"].shape[-2:])
            seen.clear()
            scores = evaluate_segmentation(tiny_model, [batch], ["pred"], input_size=size, progress=False)
            assert seen == [expected] and scores["pred"]["mean_iou"] is not None, size
    finally:
        hook.remove()


def test_pseudo_label_modes_run_at_most_at_the_input_size(tiny_model):
    """The CAM modes ran CLIP at each image's own size: a 3 MP photo asked for 35 GB (its attention over 47k
    patches). An image larger than the input size is scored at that size, its labels upsampled to the mask's; a
    smaller one keeps its size (VOC's images under the official protocol)."""
    from weclip_hf.evaluation import evaluate_segmentation

    seen = []
    hook = tiny_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["pixel_values"].shape[-2:])), with_kwargs=True
    )
    try:
        for size in ((60, 100), (20, 30)):
            batch = {
                "pixel_values": torch.randn(1, 3, *size),
                "labels": torch.zeros(1, *size, dtype=torch.long),
                "class_labels": torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
            }
            seen.clear()
            scores = evaluate_segmentation(
                tiny_model, [batch], ["cam", "pseudo"], input_size=40, progress=False
            )
            assert scores["cam"]["mean_iou"] is not None
            assert seen == [(24, 40) if size == (60, 100) else size] * 2, seen
    finally:
        hook.remove()


def test_evaluation_input_size_is_the_padding_processors(tiny_model):
    """With ``do_pad`` the evaluation predicts on the image padded to a multiple of the patch size, as the pipeline
    does (`processor_input_size`: the size divisor beside any resize); that it then crops the padding as the
    pipeline does is `test_evaluation_crops_the_padding_as_the_pipeline_does_on_labels_that_vary`'s (this tiny
    random model predicts one class everywhere; on the toy model up to 14% of an image's pixels differed)."""
    from weclip_hf import WeCLIPImageProcessor
    from weclip_hf.evaluation import processor_input_size

    patch = tiny_model.config.vision_config.patch_size
    processor = WeCLIPImageProcessor(do_resize=False, do_pad=True, patch_size=patch)
    assert processor_input_size(processor) == {"size_divisor": patch}
    resizing = WeCLIPImageProcessor(size={"longest_edge": 40}, do_pad=True, patch_size=patch)
    assert processor_input_size(resizing) == {"longest_edge": 40, "size_divisor": patch}
    image = np.random.default_rng(0).integers(0, 256, (30, 53, 3), dtype=np.uint8)  # no side a multiple
    inputs = processor(image, return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (-(-30 // patch) * patch, -(-53 // patch) * patch)


def test_crf_reads_the_image_at_its_size_not_the_long_side_resized_one(monkeypatch):
    from types import SimpleNamespace

    import torch.nn.functional as F

    from weclip_hf import evaluation
    from weclip_hf.normalization import IMAGENET_NORMALIZATION

    class PoolingModel(torch.nn.Module):
        config = SimpleNamespace(vision_config=SimpleNamespace(patch_size=4))

        def forward(self, pixel_values):
            return SimpleNamespace(logits=F.avg_pool2d(pixel_values[:, :2], 2))

    seen = {}

    def recording_crf(image, probs, params):
        seen["image"] = image
        return probs.argmax(1)

    monkeypatch.setattr(evaluation, "crf_refine_labels", recording_crf)
    x = torch.randn(1, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    evaluation.predict_labels(
        PoolingModel(), x, (30, 30), input_size=16, crf=True, normalization=IMAGENET_NORMALIZATION
    )
    assert torch.equal(seen["image"], IMAGENET_NORMALIZATION.denormalize(x))


def test_evaluate_segmentation_gives_the_model_its_images_on_its_device():
    """A DataLoader yields host tensors; a model on an accelerator gets its images there (the scripts' in-training
    and final evaluations pass the loader as it is). A meta-device buffer stands in for the accelerator here."""

    class DeviceRecorder(EncodedPrediction):
        def __init__(self):
            super().__init__()
            self.register_buffer("anchor", torch.empty(0, device="meta"))
            self.seen = []

        def forward(self, pixel_values, **kwargs):
            self.seen.append(pixel_values.device)
            return super().forward(torch.zeros(pixel_values.shape))  # host logits, class 0

    ref = torch.tensor([[[0, 0], [1, 1]]])
    batches = [{"pixel_values": torch.zeros(1, 3, 2, 2), "labels": ref}]
    model = DeviceRecorder()
    scores = evaluate_segmentation(model, batches, ["pred"], progress=False)["pred"]
    assert model.seen == [torch.device("meta")] and scores["per_category_iou"][0] == 0.5


def test_a_crf_mode_refines_the_logits_of_its_mode_without_a_second_forward(varied_tiny_model):
    """pred_crf / pred_msf_crf refine the logits pred / pred_msf computed for the batch: the CRF modes add no
    forward, and each mode scores as predict_labels scores it alone."""
    from weclip_hf.normalization import CLIP_NORMALIZATION

    tiny_model = varied_tiny_model
    pixel_values = torch.randn(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 5, (2, 24, 32), generator=torch.Generator().manual_seed(1))
    forwards = []
    tiny_model.decoder.register_forward_pre_hook(lambda module, args: forwards.append(1))
    modes = ("pred", "pred_crf", "pred_msf", "pred_msf_crf")
    kwargs = dict(progress=False, normalization=CLIP_NORMALIZATION)
    results = evaluate_segmentation(
        tiny_model, [{"pixel_values": pixel_values, "labels": labels}], modes, **kwargs
    )
    counted = len(forwards)
    evaluate_segmentation(
        tiny_model, [{"pixel_values": pixel_values, "labels": labels}], modes[::2], **kwargs
    )
    assert counted == len(forwards) - counted  # the CRF modes ran no forward of their own
    for mode in modes:
        alone = evaluate_segmentation(
            tiny_model, [{"pixel_values": pixel_values, "labels": labels}], [mode], **kwargs
        )
        np.testing.assert_array_equal(alone[mode]["per_category_iou"], results[mode]["per_category_iou"])
        assert _classes_predicted(results[mode]["per_category_iou"]) > 1, mode


def test_images_of_several_sizes_evaluate_in_one_loader_batch(varied_tiny_model):
    """A validation set keeps each image's size: `collate_by_size` gives one batch per size, and the scores are those
    of one image at a time (stacking them raised "stack expects each tensor to be equal size" after training)."""
    from torch.utils.data import DataLoader

    from weclip_hf.data.batches import collate_by_size

    g = torch.Generator().manual_seed(0)
    examples = [
        {
            "pixel_values": torch.randn(3, *size, generator=g),
            "labels": torch.randint(0, 5, size, generator=g),
            "class_labels": torch.eye(4)[i % 4],
        }
        for i, size in enumerate([(24, 32), (32, 24), (24, 32), (16, 40)])
    ]
    batches = list(DataLoader(examples, batch_size=4, collate_fn=collate_by_size))
    assert [[tuple(b["pixel_values"].shape) for b in loaded] for loaded in batches] == [
        [(2, 3, 24, 32), (1, 3, 32, 24), (1, 3, 16, 40)]
    ]
    modes = ("pred", "pseudo")
    together = evaluate_segmentation(varied_tiny_model, batches, modes, progress=False)
    one_by_one = evaluate_segmentation(
        varied_tiny_model, DataLoader(examples, collate_fn=collate_by_size), modes, progress=False
    )
    for mode in modes:
        np.testing.assert_allclose(
            together[mode]["per_category_iou"], one_by_one[mode]["per_category_iou"], atol=1e-12
        )
        assert _classes_predicted(together[mode]["per_category_iou"]) > 1, mode


def test_the_toy_world_is_scored_only_for_a_model_of_its_classes(model_dir, tmp_path):
    """Without a dataset evaluate.py reads the toy world: a model of other classes scored its mask ids as its own
    classes (a VOC model got an mIoU on triangles counted as birds)."""
    with pytest.raises(
        ValueError, match=r"segments other classes \(cat, dog, car, tree\) than the toy world"
    ):
        load_script().main(["--model_name_or_path", str(model_dir), "--toy_val_images", "2"])


def test_prediction_runs_in_eval_mode_and_modes_are_named(tiny_model):
    """predict_labels on a model in train mode ran its dropout (two calls, two answers) and advanced the step counter
    that starts the RFM; a string of modes was read letter by letter; a pseudo-label mode without class_labels
    raised a bare KeyError."""
    tiny_model.train()
    pixel_values = torch.randn(1, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    step = int(tiny_model.training_step)
    first, second = (predict_labels(tiny_model, pixel_values, (32, 40)) for _ in range(2))
    assert torch.equal(first, second) and int(tiny_model.training_step) == step and tiny_model.training
    batch = {"pixel_values": pixel_values, "labels": torch.zeros(1, 32, 40, dtype=torch.long)}
    with pytest.raises(TypeError, match=r"modes must be a list of mode names, got the string 'pred'"):
        evaluate_segmentation(tiny_model, [batch], "pred", progress=False)
    with pytest.raises(ValueError, match=r"Mode 'cam' scores pseudo labels: the batches need 'class_labels'"):
        evaluate_segmentation(tiny_model, [batch], ["cam"], progress=False)
    assert tiny_model.training  # back in its mode after the error


def test_a_model_folder_without_its_processor_is_scored_at_the_default_size_with_a_note(
    model_dir, data_path, tmp_path, capsys
):
    """A folder saved with `model.save_pretrained` alone: the note says the images are read at the default
    processor's long side (512, not the 48 of the processor the model was saved with; a user got a far lower mIoU
    told only about the normalization), and the report records that size."""
    folder = Path(shutil.copytree(model_dir, tmp_path / "model-only"))
    (folder / "preprocessor_config.json").unlink()
    argv = ["--model_name_or_path", str(folder), "--dataset_path", str(data_path), "--device", "cpu"]
    report = load_script().main(argv)
    out = capsys.readouterr().out
    assert "holds no image processor (preprocessor_config.json)" in out and "long side 512" in out, out
    assert report["evaluation"]["input_size"] == {"longest_edge": 512}
    assert load_script().main([*argv, "--eval_long_side", "48"])["evaluation"]["input_size"] == 48


def test_an_evaluation_without_a_split_is_refused_without_suggesting_none(model_dir, data_path):
    """'none' (no evaluation) is a training option: evaluate.py's message for a missing split does not offer it,
    and --validation_split none is refused as a split the dataset lacks."""
    argv = ["--model_name_or_path", str(model_dir), "--dataset_path", str(data_path), "--device", "cpu"]
    for split in ("val", "none"):
        with pytest.raises(ValueError, match=rf"Validation split '{split}' not found") as error:
            load_script().main([*argv, "--validation_split", split])
        assert "'none'" not in str(error.value).replace(f"'{split}' not found", ""), error.value


def test_masks_of_another_ignore_value_are_scored_with_semantic_loss_ignore_index(
    model_dir, data_path, tmp_path
):
    """The dataset's masks with void 254 instead of 255: refused, naming the flag (there was no way to say it but
    editing the model's config); with --semantic_loss_ignore_index 254 scored as the 255 masks are. A class id is
    refused as the ignore value."""
    import datasets

    val = datasets.load_from_disk(str(data_path))["validation"]
    masks = [
        Image.fromarray(np.where(np.asarray(m) == 255, 254, np.asarray(m)).astype(np.uint8))
        for m in val["mask"]
    ]
    path = tmp_path / "void254"
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    void254 = datasets.Dataset.from_dict({"image": val["image"], "mask": masks}, features=features)
    datasets.DatasetDict({"validation": void254}).save_to_disk(str(path))
    argv = ["--model_name_or_path", str(model_dir), "--device", "cpu"]
    with pytest.raises(
        ValueError, match=r"class id\(s\) \[254\] outside 0..4 .*--semantic_loss_ignore_index"
    ):
        load_script().main([*argv, "--dataset_path", str(path)])
    report = load_script().main([*argv, "--dataset_path", str(path), "--semantic_loss_ignore_index", "254"])
    reference = load_script().main([*argv, "--dataset_path", str(data_path)])
    assert report["evaluation"]["ignore_index"] == 254 and report["miou"] == reference["miou"]
    assert report["per_class_iou"] == reference["per_class_iou"]
    with pytest.raises(ValueError, match=r"semantic_loss_ignore_index \(3\) is a label id"):
        load_script().main([*argv, "--dataset_path", str(data_path), "--semantic_loss_ignore_index", "3"])


class PatchMeans(torch.nn.Module):
    """A stub segmentation model on 8-pixel patches: class k's logit of a patch is its mean of channel k, so the
    labels change from patch to patch (the tiny random model predicts one class everywhere)."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(
            num_labels=3, semantic_loss_ignore_index=255, vision_config=SimpleNamespace(patch_size=8)
        )

    def forward(self, pixel_values, **kwargs):
        return SimpleNamespace(logits=F.avg_pool2d(pixel_values, 8))


def test_evaluation_crops_the_padding_as_the_pipeline_does_on_labels_that_vary():
    """The labels of an image padded to a multiple of the patch size are the pipeline's, which crops the padding
    after upsampling: upsampling the padded grid onto the image (stretching it) moved the patches' borders."""
    from weclip_hf import WeCLIPImageProcessor
    from weclip_hf.evaluation import processor_input_size

    model = PatchMeans()
    processor = WeCLIPImageProcessor(do_resize=False, do_pad=True, patch_size=8)
    image = np.random.default_rng(0).integers(0, 256, (30, 53, 3), dtype=np.uint8)
    logits = model(pixel_values=processor(image, return_tensors="pt")["pixel_values"]).logits
    pipeline_labels = processor.post_process_semantic_segmentation(
        SimpleNamespace(logits=logits), target_sizes=[(30, 53)]
    )[0]
    assert len(pipeline_labels.unique()) == 3
    unpadded = processor(image, do_pad=False, return_tensors="pt")["pixel_values"]
    scored = predict_labels(model, unpadded, (30, 53), input_size=processor_input_size(processor))[0]
    assert torch.equal(scored, pipeline_labels)


def test_max_batches_scores_that_many_batches():
    """``max_batches=1`` scores the first batch alone (the second, all wrong, would lower the mIoU)."""
    labels = torch.tensor([[[0, 1, 2]]])
    right = {"pixel_values": labels[:, None].float().repeat(1, 3, 1, 1), "labels": labels}
    wrong = {"pixel_values": (2 - labels)[:, None].float().repeat(1, 3, 1, 1), "labels": labels}
    scores = evaluate_segmentation(EncodedPrediction(), [right, wrong], max_batches=1, progress=False)
    assert scores["pred"]["mean_iou"] == 1.0


def test_write_overlays_of_zero_examples_writes_none(tmp_path):
    """``count`` 0 writes no figure (only -1 means every example)."""
    from weclip_hf.evaluation import write_overlays

    examples = type("Examples", (list,), {"normalization": None})([{}, {}])  # no example is read
    assert write_overlays(EncodedPrediction(), examples, tmp_path, 0) == []
    assert not (tmp_path / "overlays").exists()

"""examples/train.py end to end (tiny CLIP, CPU): toy default, Hub-schema datasets, exact resume, signals, full
supervision, push to the Hub (mocked), evaluation during training.

The command line runs as a subprocess where the test needs one (the toy default, signals); the other runs call
its ``main`` in this process (`conftest.train_in_process`), which spares an interpreter start-up each, and the
runs that must repeat an uninterrupted one compare with the shared `conftest.reference_run`."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import (
    FAST,
    FAST_ON_DATA,
    ROOT,
    TRAIN,
    assert_holds_the_tokenizer_of_its_text_embeddings,
    example_module,
    read_log,
    resumable_args,
    run_train,
    save_another_model_at,
    train_in_process,
    train_module,
    train_phase,
    train_stopped_at,
)
from PIL import Image

from weclip_hf.hub import TOKENIZER_FILES
from weclip_hf.local_cores import cores_per_local_process
from weclip_hf.run_signals import exit_status


@pytest.fixture(scope="module")
def toy_run(tiny_clip, tmp_path_factory) -> tuple[Path, str]:
    """A shortened default run of the command (toy world, 3 steps, multi-scale final evaluation), evaluated at
    step 2 and tracked with TensorBoard: (output folder, printed output)."""
    out = tmp_path_factory.mktemp("toy") / "run"
    tracking = ["--eval_steps", 2, "--with_tracking", "--report_to", "tensorboard"]
    steps = ["--max_train_steps", 3, *FAST[:-1], *tracking]
    proc = run_train("--clip_model_name_or_path", tiny_clip, "--output_dir", out, *steps)
    return out, proc.stdout


def test_toy_default_writes_model_metrics_overlays_and_card(toy_run):
    out, printed = toy_run
    # the last line names the folder and what it holds (the main job ended on its metrics, the folder unnamed)
    assert printed.rstrip().endswith(
        f"Saved to {out}: the model (from_pretrained and the pipeline load the folder), the CLIP tokenizer of its "
        "text embeddings, metrics.json, its card, overlays/, the checkpoints step_N/."
    )
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "cam_miou",
        "pseudo_label_miou",
        "miou",
        "miou_msf",
        "baseline_bg_miou",
        "baseline_disk_miou",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["train_steps"] == 3
    # the recipe is the model's: evaluate.py and segment.py take its evaluation settings, a continuing run its recipe
    assert json.loads((out / "config.json").read_text())["training_preset"] == "toy"
    assert metrics["overlays"][0] == "overlays/val_000.png"  # relative to the folder: valid where it moves
    overlay = Image.open(out / metrics["overlays"][0])
    # image | ground truth | CAM and RFM pseudo labels | prediction, each upscaled 3x, the legend to their right
    assert overlay.width > 5 * 3 * 96 and overlay.height > 3 * 96
    card = (out / "README.md").read_text()
    assert "weclip" in card and "mean_iou" in card and "Zhang" in card and "limitations" in card
    assert (
        "On the toy world of weclip-hf (generated offline), split 'validation':" in card
    )  # the split scored
    from transformers import pipeline

    import weclip_hf  # noqa: F401  (registers the Auto classes)

    segmenter = pipeline("image-segmentation", model=str(out))
    results = segmenter(Image.fromarray(np.zeros((96, 96, 3), np.uint8)))
    assert results and results[0]["mask"].size == (96, 96)


def test_the_model_folder_holds_the_tokenizer_of_its_text_embeddings(toy_run):
    """train.py's folders held no tokenizer: new class names (update_class_embeddings) needed the CLIP the model was
    built from, which a folder of the toy world (or of a local CLIP) does not record. The CLIP's tokenizer is saved
    with the model; the checkpoints, which resume the run and hold no backbone, stay without it."""
    out, _ = toy_run
    assert_holds_the_tokenizer_of_its_text_embeddings(out)
    assert {p.name for p in out.glob("step_*/tokenizer*")} == set()


def test_a_trained_folder_without_a_tokenizer_gives_the_recorded_clips_from_the_cache_else_says_so(
    tmp_path, toy_weclip_dir, tiny_clip, monkeypatch
):
    """--model_name_or_path of a folder without a tokenizer (an earlier version's): the tokenizer of the Hub CLIP its
    config records, from the local Hub cache only (the run fetches nothing it did not); where neither gives one, a
    line says so and the run goes on without (it fails nowhere, and the folder it writes holds none)."""
    import huggingface_hub
    from transformers import AutoTokenizer

    from weclip_hf.data.toy import toy_clip_path

    train = train_module()
    folder = tmp_path / "trained"
    shutil.copytree(toy_weclip_dir, folder)  # built from a local CLIP: its config records none
    args = train.parse_args(["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "out")])
    printed = []
    assert train.embeddings_tokenizer(args, printed.append) is None
    assert printed == [
        f"Note: --model_name_or_path {folder} holds no tokenizer, and its config records no Hub CLIP: the model will "
        "be saved without one (new class names need the tokenizer of the CLIP it was built from: save it in the "
        "folder, AutoTokenizer.from_pretrained(clip).save_pretrained(folder))."
    ]
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["_name_or_path"] = "org/clip"
    (folder / "config.json").write_text(json.dumps(config))
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    printed.clear()
    args = train.parse_args(["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "out")])
    assert train.embeddings_tokenizer(args, printed.append) is None
    assert "and the tokenizer of the CLIP its config records (org/clip) is not in the local Hub" in printed[0]
    # the Hub cache records that the CLIP has no tokenizer (a marker of its absence): the same note, no failed load
    (cache / "models--org--clip" / "refs").mkdir(parents=True)
    (cache / "models--org--clip" / "refs" / "main").write_text("0" * 40)
    absent = cache / "models--org--clip" / ".no_exist" / ("0" * 40)
    absent.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        (absent / name).touch()
    printed.clear()
    assert train.embeddings_tokenizer(args, printed.append) is None
    assert "and the tokenizer of the CLIP its config records (org/clip) is not in the local Hub" in printed[0]
    shutil.rmtree(absent.parent)
    # the Hub cache holds that CLIP's tokenizer (the run that built the model fetched it)
    shutil.copytree(toy_clip_path(), cache / "models--org--clip" / "snapshots" / ("0" * 40))
    printed.clear()
    tokenizer = train.embeddings_tokenizer(args, printed.append)
    assert printed == []
    assert tokenizer("a cat").input_ids == AutoTokenizer.from_pretrained(tiny_clip)("a cat").input_ids


def test_a_model_saved_without_a_tokenizer_leaves_none_of_a_replaced_runs(tmp_path):
    """`save_tokenizer`: the tokenizer of the text embeddings is saved beside the model; without one, the tokenizer
    files a replaced run (--overwrite_output_dir) left are removed (they need not be this model's)."""
    from transformers import AutoTokenizer

    from weclip_hf.data.toy import toy_clip_path

    save_tokenizer = train_phase("run_end").save_tokenizer
    save_tokenizer(AutoTokenizer.from_pretrained(toy_clip_path()), tmp_path)
    assert all((tmp_path / name).is_file() for name in TOKENIZER_FILES)
    save_tokenizer(None, tmp_path)
    assert not [name for name in TOKENIZER_FILES if (tmp_path / name).exists()]


def test_a_trained_folder_with_a_tokenizer_config_alone_is_refused_naming_the_flag(tmp_path, toy_run):
    """A --model_name_or_path whose tokenizer lost its vocabulary (tokenizer_config.json alone): transformers builds a
    tokenizer of the special tokens from it, which the run would save with the model (every new class name one
    embedding); it is refused as the CLIP flags' are (`load_clip_tokenizer`), naming the flag."""
    out, _ = toy_run
    folder = tmp_path / "trained"
    shutil.copytree(
        out, folder, ignore=shutil.ignore_patterns("step_*", "tokenizer.json", "vocab.json", "merges.txt")
    )
    train = train_module()
    args = train.parse_args(["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match=r"\(--model_name_or_path\) holds no CLIP tokenizer"):
        train.embeddings_tokenizer(args, print)


def test_fully_supervised_flag(tmp_path, tiny_clip, capsys):
    out = tmp_path / "full"
    run = ["--clip_model_name_or_path", tiny_clip, "--output_dir", out, *FAST]
    train_in_process(*run, "--max_train_steps", 2, "--fully_supervised", "--eval_steps", 2)
    # no note on when the RFM starts ("the pseudo labels are the CAMs' throughout"): the masks are the targets;
    # the configuration line says so where it said "RFM from step 150"
    printed = capsys.readouterr().out
    assert "the RFM acts after" not in printed and "RFM after" not in printed
    assert "lr 0.002, fully supervised (no pseudo labels), on cpu" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert "fully_supervised_miou" in metrics and "miou" not in metrics
    card = (out / "README.md").read_text()
    assert "trained on the dataset's pixel masks (fully supervised)" in card
    assert "(here: the dataset's pixel masks instead)" in card
    # the evaluation during training names the decoder's figure as metrics.json does
    (evaluation,) = [record for record in read_log(out) if "eval_fully_supervised_miou" in record]
    assert "eval_miou" not in evaluation
    # a fresh run into the same folder would mix its checkpoints and log with this one's: refused ...
    again = [*run, "--max_train_steps", 1]
    # (its training is done: no --resume_from_checkpoint is offered, which would find nothing left to train)
    finished = (
        r"holds a finished run: its trained model \(model.safetensors, metrics.json, train_log.jsonl\) and "
    )
    with pytest.raises(FileExistsError, match=finished + r"checkpoints \(step_2\)\. [^-]*--overwrite_output_dir, or "
                       r"choose another --output_dir\.$"):  # fmt: skip
        train_in_process(*again)
    # ... unless asked, and only once the new run is set up: a missing dataset leaves the old run whole ...
    with pytest.raises(FileNotFoundError, match="--data_dir"):
        train_in_process(*run[:4], *FAST_ON_DATA, "--overwrite_output_dir", "--data_dir", tmp_path / "typo")
    assert [r["step"] for r in read_log(out) if "loss" in r] == [1, 2] and (out / "metrics.json").exists()
    assert sorted(p.name for p in out.glob("step_*")) == ["step_2"]
    # ... and a run that starts replaces it: the previous run's checkpoints and log are gone, the new run's there
    train_in_process(*again, "--overwrite_output_dir")
    assert [r["step"] for r in read_log(out)] == [1]
    assert sorted(p.name for p in out.glob("step_*")) == ["step_1"]


def test_a_finished_run_without_checkpoints_is_not_replaced_silently(tmp_path, tiny_clip, toy_weclip_dir):
    """A finished run is refused without --overwrite_output_dir, and replaced whole with it: the run replacing it
    here continues a model without a tokenizer (`embeddings_tokenizer`), and the old run's tokenizer, which may
    not be that model's, went on beside it."""
    out = tmp_path / "done"
    run = ["--clip_model_name_or_path", tiny_clip, "--output_dir", out, *FAST, "--checkpointing_steps", 0]
    train_in_process(*run, "--max_train_steps", 2)
    assert not list(out.glob("step_*")) and (out / "model.safetensors").exists()
    weights = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match=r"holds a previous run's results \(model.safetensors, metrics.json, "
                       r"train_log.jsonl\). Start over with --overwrite_output_dir"):  # fmt: skip
        train_in_process(*run, "--max_train_steps", 1, "--seed", 3)
    assert (out / "model.safetensors").read_bytes() == weights  # untouched
    assert {p.name for p in out.glob("tokenizer*")} == set(TOKENIZER_FILES)
    replacing = ["--model_name_or_path", toy_weclip_dir, *run[2:], "--max_train_steps", 1, "--seed", 3]
    train_in_process(*replacing, "--overwrite_output_dir")
    assert [r["step"] for r in read_log(out)] == [1]  # one run's log, not two mixed
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 1
    assert not list(out.glob("tokenizer*"))  # the model of toy_weclip_dir has none


def test_resume_repeats_uninterrupted_run_exactly(tmp_path, tiny_clip, reference_run, capsys, monkeypatch):
    """A run stopped (Ctrl-C) at step 3, resumed (``latest``) to step 6 in its folder, repeats the uninterrupted run
    bit for bit: log (losses, learning rates, the RFM from step 4, after the resume) and weights."""
    args, out = [*resumable_args(tiny_clip), "--output_dir", tmp_path / "b"], tmp_path / "b"
    stopped = train_stopped_at(3, *args, monkeypatch=monkeypatch)
    assert stopped == {"stopped_at": 3, "stopped_by_signal": signal.SIGINT}
    assert exit_status(stopped) == 130
    assert not (out / "model.safetensors").exists()
    from weclip_hf.checkpointing import FrozenWeights

    hashed, of = [], FrozenWeights.of.__func__
    monkeypatch.setattr(
        FrozenWeights, "of", classmethod(lambda cls, model: hashed.append(1) or of(cls, model))
    )
    train_in_process(*args, "--resume_from_checkpoint", "latest")
    # the frozen backbones are hashed once: checked against the checkpoint, then recorded
    assert len(hashed) == 1
    assert f"resumed from {out / 'step_3'} at step 3" in capsys.readouterr().out
    assert read_log(out) == read_log(reference_run)
    assert [r["rfm"] for r in read_log(out)] == [False] * 3 + [True] * 3
    from safetensors.torch import load_file

    a, b = load_file(reference_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) and int(b["training_step"]) == 6
    # the checkpoint resumed from held the decoder, buffers and text embeddings, not the frozen CLIP towers
    held = load_file(out / "step_3" / "model.safetensors").keys()
    assert held == {k for k in a if k.startswith("decoder.") or "_text_embeds" in k or k == "training_step"}
    # the run's times count the segment before the stop too (they counted the resumed segment only)
    before = json.loads((out / "step_3" / "training_state.json").read_text())["seconds"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < before <= metrics["train_seconds"] <= metrics["total_seconds"]


def test_a_run_stopped_at_an_evaluation_step_evaluates_it_when_resumed(
    tmp_path, tiny_clip, monkeypatch, capsys
):
    """Ctrl-C at a step of --eval_steps saves the checkpoint and skips the evaluation: the resumed run starts after
    that step, so its log lacked the step's evaluation. The resumed run evaluates it first: the log (and the
    weights) repeat the uninterrupted run's; resumed again from that step, it is not evaluated twice."""
    run = [*resumable_args(tiny_clip), "--max_train_steps", 4, "--eval_steps", 3, "--num_overlays", 0]
    train_in_process(*run, "--output_dir", tmp_path / "a")
    # the last line lists what the folder holds: no overlays/ where --num_overlays 0 drew none
    (saved,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Saved to")]
    assert "metrics.json" in saved and "overlays/" not in saved
    out = tmp_path / "b"
    train_stopped_at(3, *run, "--output_dir", out, monkeypatch=monkeypatch)
    assert not [r for r in read_log(out) if "eval_miou" in r]
    train_stopped_at(
        4, *run, "--output_dir", out, "--resume_from_checkpoint", "latest", monkeypatch=monkeypatch
    )
    train_in_process(*run, "--output_dir", out, "--resume_from_checkpoint", out / "step_3")
    assert read_log(out) == read_log(tmp_path / "a")
    assert [r["step"] for r in read_log(out) if "eval_miou" in r] == [3]


def test_a_checkpoint_of_an_earlier_version_records_the_backbones_it_held(tmp_path, tiny_clip, monkeypatch):
    """A checkpoint written before checkpoints left the frozen backbones out holds them, and resuming it reads them
    back over those loaded from --clip_model_name_or_path: the resumed run's checkpoints recorded the digest of the
    backbones loaded before (those of the CLIP folder now), so a later resume took that CLIP's backbones for the
    run's without a word. They record those the run trains with."""
    import json

    from safetensors.torch import load_file, save_file

    clip = tmp_path / "clip"
    shutil.copytree(tiny_clip, clip)
    run = [*resumable_args(clip), "--output_dir", tmp_path / "a"]
    train_stopped_at(1, *run, monkeypatch=monkeypatch)
    step_1 = tmp_path / "a" / "step_1"
    trained_with = json.loads((step_1 / "frozen_weights.json").read_text())["sha256"]
    # as an earlier version wrote it: every weight, the backbones of the run's CLIP among them
    model = train_phase("data_and_model").build_model(
        train_module().parse_args([*map(str, resumable_args(clip))]), {}
    )
    full = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file({**full, **load_file(step_1 / "model.safetensors")}, step_1 / "model.safetensors")
    (step_1 / "frozen_weights.json").unlink()
    save_another_model_at(clip)  # the CLIP folder now holds other weights
    train_stopped_at(2, *run, "--resume_from_checkpoint", "latest", monkeypatch=monkeypatch)
    assert (
        json.loads((tmp_path / "a" / "step_2" / "frozen_weights.json").read_text())["sha256"] == trained_with
    )


def test_resuming_another_runs_checkpoint_into_a_finished_run_is_refused(tmp_path, tiny_clip, reference_run):
    """A checkpoint of another run resumed into a folder that holds a finished run replaced its model, metrics and
    card and mixed both runs' logs and checkpoints without a word: refused as a fresh run there is, unless
    --overwrite_output_dir, which then leaves the resumed run alone in the folder."""
    out = tmp_path / "finished"
    shutil.copytree(reference_run, out)

    def results() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}

    before = results()
    resume = [
        *resumable_args(tiny_clip),
        "--output_dir",
        out,
        "--resume_from_checkpoint",
        reference_run / "step_3",
    ]
    with pytest.raises(FileExistsError, match=r"holds checkpoints of a previous run .*step_3 is a checkpoint of "
                       r"another folder: resume it into a new --output_dir, or .*--overwrite_output_dir"):  # fmt: skip
        train_in_process(*resume)
    assert results() == before
    train_in_process(*resume, "--overwrite_output_dir")
    assert [r["step"] for r in read_log(out)] == [4, 5, 6]
    assert [r["loss"] for r in read_log(out)] == [r["loss"] for r in read_log(reference_run)[3:]]
    assert sorted(p.name for p in out.glob("step_*")) == ["step_4", "step_5", "step_6"]


def test_the_log_gives_the_learning_rate_of_each_steps_update(tiny_clip, reference_run):
    """Step s updates with the rate of schedule step s - 1 (the scheduler steps after the optimizer): the log gave
    the next step's (step 1: the warm-up's full first increment instead of ~1e-6 x the rate)."""
    from weclip_hf.training import warmup_poly_factor

    args = train_module().parse_args([*map(str, resumable_args(tiny_clip))])
    factor = warmup_poly_factor(args.num_warmup_steps, args.max_train_steps)
    used = [args.learning_rate * factor(t) for t in range(args.max_train_steps)]
    assert [r["lr"] for r in read_log(reference_run)] == pytest.approx(used, rel=1e-9)


def test_dataloader_workers_give_the_same_batches(tmp_path, tiny_clip, reference_run):
    """Augmentation is keyed on (seed, epoch, index): 2 workers train exactly as the main process (the reference
    run), also after the epoch boundary (16 images, batch 4: the second epoch starts at step 5)."""
    train_in_process(*resumable_args(tiny_clip), "--output_dir", tmp_path / "workers", "--num_workers", 2)
    log = read_log(tmp_path / "workers")
    assert len(log) == 6 and [r["loss"] for r in log] == [r["loss"] for r in read_log(reference_run)]


def test_sigterm_saves_a_checkpoint_and_exits_with_143(tmp_path, tiny_clip):
    """A run stopped by SIGTERM saves a checkpoint, then exits with 128 + 15 as a killed process would: no final
    model, so `train.py && evaluate.py` stops there."""
    out = tmp_path / "sig"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(TRAIN),
            "--clip_model_name_or_path",
            tiny_clip,
            "--output_dir",
            str(out),
            "--max_train_steps",
            "100000",
            *FAST,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "train_log.jsonl").exists():
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]
    checkpoints = [p for p in out.glob("step_*") if not p.name.endswith(".tmp")]
    assert checkpoints and "stopped by signal 15" in output
    assert not (out / "model.safetensors").exists()
    assert not list(out.glob("*.tmp"))


def _write_mask_dataset(root: Path, with_masks: bool = True):
    """A DatasetDict in the Hub layout: image, mask (VOC style) and multi-label ``classes`` columns; the train split
    without its masks when not ``with_masks``, the validation split (its first 4 rows) always with them."""
    import datasets

    rng = np.random.default_rng(0)
    rows = {"image": [], "mask": [], "classes": []}
    for _ in range(12):
        image = rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)
        mask = np.zeros((80, 90), np.uint8)
        c = int(rng.integers(1, 4))
        mask[20:60, 10:50] = c
        mask[0] = 255
        rows["image"].append(Image.fromarray(image))
        rows["mask"].append(Image.fromarray(mask))
        rows["classes"].append([float(i == c - 1) for i in range(3)])
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "mask": datasets.Image(),
            "classes": datasets.List(datasets.Value("float32")),
        }
    )
    full = datasets.Dataset.from_dict(rows, features=features)
    train = full if with_masks else full.remove_columns("mask")
    datasets.DatasetDict({"train": train, "validation": full.select(range(4))}).save_to_disk(root)


def test_the_validation_label_column_is_read_as_the_training_one():
    """--labels_zero_based and the class names served the training split only: the validation split's label column
    was read as 1-based ids (the CAMs scored for other classes) and one of class names was refused."""
    import contextlib
    import types

    import datasets

    from weclip_hf.normalization import CLIP_NORMALIZATION

    masks = [Image.fromarray(np.full((8, 8), c, np.uint8)) for c in (2, 3)]
    accelerator = types.SimpleNamespace(main_process_first=contextlib.nullcontext, print=print)
    train = train_module()
    for labels, flags in (([[1], [2]], ["--labels_zero_based"]), ([["dog"], ["bird"]], [])):
        split = datasets.Dataset.from_dict(
            {"image": [Image.new("RGB", (8, 8))] * 2, "mask": masks, "image_labels": labels}
        )
        args = train.parse_args(["--labels_column", "image_labels", *flags, "--crop_size", "8"])
        _, val_set = train_phase("data_and_model").prepare_data(
            args, split, split, 3, 255, accelerator, CLIP_NORMALIZATION, class_names=["cat", "dog", "bird"]
        )
        assert val_set.dataset["image_labels"] == [[2], [3]], flags  # the masks' classes


def test_fully_supervised_data_without_masks_is_refused_at_loading():
    """--fully_supervised trains on the masks: a training split of images and image-level labels alone is refused
    when it loads, naming the missing mask column (as the weakly supervised run would train on its labels)."""
    import contextlib
    import types

    import datasets

    split = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))] * 2, "labels": [[1], [2]]})
    accelerator = types.SimpleNamespace(main_process_first=contextlib.nullcontext, print=lambda *a: None)
    prepare = train_phase("data_and_model").prepare_data
    prepare(
        train_module().parse_args([]), split, None, 3, 255, accelerator, None
    )  # weak supervision: its labels
    with pytest.raises(ValueError, match=r"No mask column found .* available columns: \[.image., .labels.\]"):
        prepare(train_module().parse_args(["--fully_supervised"]), split, None, 3, 255, accelerator, None)


def test_prepare_data_applies_the_sample_limits_and_the_augmentation_flags():
    """--max_train_samples: the first N training examples (all of them where the split holds fewer);
    --max_eval_samples: the first N validation images; the training augmentation of the flags."""
    import contextlib
    import types

    import datasets

    from weclip_hf.normalization import CLIP_NORMALIZATION

    masks = [Image.fromarray(np.full((8, 8), c, np.uint8)) for c in (1, 2, 3)]
    split = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))] * 3, "mask": masks})
    accelerator = types.SimpleNamespace(main_process_first=contextlib.nullcontext, print=lambda *a: None)
    for limit, kept in ((2, 2), (5, 3)):
        args = train_module().parse_args(["--max_train_samples", str(limit), "--max_eval_samples", "1"])
        train_set, val_set = train_phase("data_and_model").prepare_data(
            args, split, split, 3, 255, accelerator, CLIP_NORMALIZATION
        )
        assert (len(train_set), len(val_set)) == (kept, 1)
    # the training images are augmented as the flags say: rescaled within [--scale_min, --scale_max], cropped
    args = train_module().parse_args(["--scale_min", "0.5", "--scale_max", "1.5", "--crop_size", "8"])
    train_set, _ = train_phase("data_and_model").prepare_data(args, split, None, 3, 255, accelerator, None)
    augment = train_set.augment
    assert (augment.scale_range, augment.crop_size, augment.ignore_index) == ((0.5, 1.5), 8, 255)


def test_local_multi_label_dataset(tmp_path, tiny_clip):
    """Training images with a multi-hot label column and no masks (the mask column: the resume test below)."""
    data = tmp_path / "data"
    _write_mask_dataset(data, with_masks=False)
    out = tmp_path / "out"
    names = [
        "--class_names",
        "a",
        "b",
        "c",
        "--background_names",
        "sky",
        "grass",
        "--labels_column",
        "classes",
    ]
    train_in_process(
        "--dataset_path",
        data,
        "--clip_model_name_or_path",
        tiny_clip,
        *names,
        "--output_dir",
        out,
        "--max_train_steps",
        2,
        "--crop_size",
        64,
        "--per_device_train_batch_size",
        2,
        "--no_msf",
        "--num_overlays",
        1,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class_iou"]) == {"background", "a", "b", "c"}


def test_imagefolder_dataset(tmp_path, tiny_clip, capsys):
    root = tmp_path / "folder" / "train"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                root / "images" / f"{i}.png"
            )
            mask = np.zeros((64, 64), np.uint8)
            mask[10:40, 10:40] = 1 + i % 2
            Image.fromarray(mask).save(root / "masks" / f"{i}.png")
            f.write(json.dumps({"file_name": f"images/{i}.png", "label_file_name": f"masks/{i}.png"}) + "\n")
    out = tmp_path / "out"
    train_in_process(
        "--data_dir",
        tmp_path / "folder",
        "--clip_model_name_or_path",
        tiny_clip,
        "--class_names",
        "a",
        "b",
        "--background_names",
        "sky",
        "--output_dir",
        out,
        "--max_train_steps",
        2,
        "--crop_size",
        48,
        "--per_device_train_batch_size",
        2,
        "--validation_split",
        "none",
    )
    assert (out / "model.safetensors").exists()
    printed = " ".join(capsys.readouterr().out.split())
    assert "Note: --validation_split none: no evaluation" in printed
    assert (
        "Note: the RFM acts after 15000 steps, and this run ends after 2 steps" in printed
    )  # no preset: the paper's


def test_a_run_from_a_trained_model_notes_when_its_counter_switches_the_rfm_on(
    tmp_path, reference_run, capsys
):
    """The model of --model_name_or_path brings its step counter (6 steps of `reference_run`): with --rfm_start_step
    8, this run's steps 3 and 4 use the RFM, and the printed note says so (it said "after this run's 4 steps")."""
    out = tmp_path / "continued"
    run = ["--model_name_or_path", reference_run, "--output_dir", out, *FAST]
    train_in_process(*run, "--rfm_start_step", 8, "--max_train_steps", 4, "--validation_split", "none")
    assert [r["rfm"] for r in read_log(out)] == [False, False, True, True]
    printed = " ".join(capsys.readouterr().out.split())
    assert "Note: the RFM acts in this run from its step 3: after 8 model steps" in printed
    assert "has trained 6 steps" in printed
    # the tokenizer saved with the continued model is the trained folder's own
    assert (out / "tokenizer.json").read_bytes() == (reference_run / "tokenizer.json").read_bytes()
    assert_holds_the_tokenizer_of_its_text_embeddings(out)


def test_the_card_lists_the_toy_worlds_sizes_only_for_the_toy_world(tmp_path):
    train, card_args = train_module(), train_phase("model_card").card_args
    toy = card_args(train.parse_args([]))
    assert toy["toy_train_images"] == 4000 and "output_dir" not in toy
    own_data = card_args(train.parse_args(["--preset", "toy", "--data_dir", str(tmp_path)]))
    assert "toy_train_images" not in own_data and "toy_val_images" not in own_data
    assert own_data["data_dir"] == f"{tmp_path.name} (a local folder)"  # never the path
    # the launch: with the per-device batch alone the card did not give the global one, nor bf16 figures as such
    from types import SimpleNamespace

    launched = card_args(train.parse_args([]), SimpleNamespace(num_processes=2, mixed_precision="bf16"))
    assert (launched["num_processes"], launched["mixed_precision"]) == (2, "bf16")


def test_the_toy_baselines_predict_each_images_lowest_present_class():
    """metrics.json's ``baseline_*_miou`` (`toy_baselines_of`): the whole-image baseline predicts an image's lowest
    present class id (its image-level label's index + 1), background for an image without one; on masks that
    each hold one class, exactly those, it scores 1."""
    labels = [torch.full((4, 4), 2), torch.full((4, 4), 3), torch.zeros(4, 4, dtype=torch.long)]
    class_labels = [torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 1.0]), torch.zeros(3)]
    val_set = [{"labels": m, "class_labels": c} for m, c in zip(labels, class_labels)]
    scores = train_phase("evaluation").toy_baselines_of(val_set, num_labels=4)
    assert set(scores) == {"baseline_bg_miou", "baseline_whole_miou", "baseline_disk_miou"}
    assert scores["baseline_whole_miou"] == 1.0 and scores["baseline_disk_miou"] < 1.0
    # all background: 16 of its 48 pixels right, classes 2 and 3 none
    assert scores["baseline_bg_miou"] == pytest.approx(16 / 48 / 3)


def _recorded_evaluations(monkeypatch) -> list[dict]:
    """`evaluate_segmentation` of examples/training/evaluation.py replaced: each call's modes and keywords recorded
    (returned), mode i scoring mean IoU (i + 1) / 10 with per-category IoUs [(i + 1) / 10, NaN]; overlays named."""
    evaluation, calls = train_phase("evaluation"), []

    def recorded(model, loader, modes, **kwargs):
        calls.append({"modes": list(modes), **{k: kwargs.get(k) for k in ("scales", "input_size")}})
        scores = [(i + 1) / 10 for i in range(len(modes))]
        return {m: {"mean_iou": v, "per_category_iou": np.array([v, np.nan])} for m, v in zip(modes, scores)}

    monkeypatch.setattr(evaluation, "evaluate_segmentation", recorded)
    monkeypatch.setattr(
        evaluation, "write_overlays", lambda model, val_set, out, count: [f"{count} overlays"]
    )
    return calls


_ONE_PROCESS = SimpleNamespace(
    process_index=0,
    num_processes=1,
    is_main_process=True,
    is_local_main_process=True,
    print=print,
    log=lambda scores, step: None,
)


@pytest.mark.parametrize("flags, recipe", [(["--msf_scales", "0.5", "1.5"], "toy"), (["--no_msf"], "voc")])
def test_the_final_evaluation_scores_each_mode_at_the_runs_scales_and_size(
    monkeypatch, tmp_path, flags, recipe
):
    """`final_evaluation`: the decoder, the CAMs and the RFM pseudo labels, and the multi-scale decoder at
    --msf_scales unless --no_msf, each on the images resized to ``input_size``; per_class_iou is the decoder's
    (the figures of ``miou``), the overlays --num_overlays; the toy world's baselines only for the toy recipe."""
    calls = _recorded_evaluations(monkeypatch)
    args = train_module().parse_args([*flags, "--num_overlays", "3"])
    args.recipe = recipe  # the recipe of a dataset's preset
    model = SimpleNamespace(config=SimpleNamespace(id2label={0: "background", 1: "disk"}, num_labels=2))
    val_set = [{"labels": torch.ones(4, 4, dtype=torch.long), "class_labels": torch.tensor([1.0])}]
    size = {"height": 48, "width": 64}
    metrics = train_phase("evaluation").final_evaluation(args, _ONE_PROCESS, model, val_set, tmp_path, size)
    modes = ["pred", "cam", "pseudo"] + ([] if args.no_msf else ["pred_msf"])
    assert calls == [{"modes": modes, "scales": args.msf_scales, "input_size": size}]
    figures = {"miou": 0.1, "cam_miou": 0.2, "pseudo_label_miou": 0.3}
    figures |= {} if args.no_msf else {"miou_msf": 0.4, "msf_scales": [0.5, 1.5]}
    assert {k: metrics[k] for k in metrics if "baseline" not in k} == {
        **figures,
        "per_class_iou": {"background": 0.1, "disk": None},
        "overlays": ["3 overlays"],
    }
    assert any("baseline" in k for k in metrics) == (args.recipe == "toy")


def test_the_evaluation_during_training_scores_decoder_and_pseudo_labels_at_the_processors_size(
    monkeypatch, tmp_path
):
    """`evaluate_in_training` (--eval_steps): decoder and pseudo-label mIoU on the images resized to
    ``input_size``, logged under the evaluation names of the run (fully supervised: the decoder's apart)."""
    calls = _recorded_evaluations(monkeypatch)
    for flags in ([], ["--fully_supervised"]):
        args = train_module().parse_args(flags)
        size = {"height": 48, "width": 64}
        train_phase("evaluation").evaluate_in_training(
            args, _ONE_PROCESS, None, [], 4, tmp_path / "log", size
        )
    assert calls == [{"modes": ["pred", "pseudo"], "scales": None, "input_size": size}] * 2
    logged = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert logged == [
        {"step": 4, "eval_miou": 0.1, "eval_pseudo_label_miou": 0.2},
        {"step": 4, "eval_fully_supervised_miou": 0.1, "eval_pseudo_label_miou": 0.2},
    ]


def test_schedule_notes_count_from_the_models_step_counter(tiny_config):
    from weclip_hf.training import schedule_notes as notes

    tiny_config.rfm_start_step = 10
    assert notes(tiny_config, 0, 20) == []  # a fresh run that reaches the RFM: nothing to note
    assert (
        "the RFM acts after 10 steps, and this run ends after 10 steps: the pseudo labels are the CAMs' throughout"
        in notes(tiny_config, 0, 10)[0]
    )
    assert notes(tiny_config, 0, 10)[0].endswith("throughout (--rfm_start_step, or --preset, sets it).")
    assert notes(tiny_config, 0, 10, rfm_aside=" Scored all the same.")[0].endswith(
        "sets it). Scored all the same."
    )
    assert "from its first step" in notes(tiny_config, 30, 5)[0]  # a counter past the start
    assert "from its first step" in notes(tiny_config, 10, 5)[0]  # a counter at the start: its step 1 has it
    assert "from its step 2" in notes(tiny_config, 9, 5)[0]
    tiny_config.rfm_start_step = 9
    assert notes(tiny_config, 0, 10) == []  # acts after 9 steps: in the run's last step
    tiny_config.rfm_start_step = 10
    assert (
        "the RFM acts after 10 model steps, and this run ends after 9 model steps (the model of "
        "--model_name_or_path has trained 4 steps)" in notes(tiny_config, 4, 5)[0]
    )


def test_a_weclip_plus_rfm_note_names_its_prediction_weighted_cams():
    """Without RFM+, WeCLIP+'s pseudo labels are its GradCAMs weighted by the prediction (not the plain CAMs)."""
    from conftest import make_tiny_plus_config

    from weclip_hf.training import schedule_notes as notes

    config = make_tiny_plus_config(rfm_start_step=10)
    assert "the pseudo labels are the prediction-weighted CAMs' throughout" in notes(config, 0, 10)[0]


def test_the_rfm_note_promises_its_pseudo_label_figure_where_there_is_an_evaluation(toy_run):
    """The toy recipe's RFM starts at step 150, after the run's 3 steps: its note says metrics.json scores the RFM
    all the same (a run without a validation split does not say so: test_each_checkpoint_is_written_once)."""
    out, printed = toy_run
    assert "the RFM acts after 150 steps, and this run ends after 3 steps" in printed
    assert "pseudo_label_miou applies the RFM" in printed and "pseudo_label_miou" in json.loads(
        (out / "metrics.json").read_text()
    )


def test_the_process_group_waits_ddp_timeout_seconds(tmp_path, capsys):
    """--ddp_timeout (default 1800 s, transformers' TrainingArguments.ddp_timeout) is the process group's timeout:
    torch's NCCL default of 600 s failed runs whose main process labels a large dataset first."""
    train = train_module()
    for flags, seconds in (([], 1800), (["--ddp_timeout", "7200"], 7200)):
        args = train.parse_args(["--output_dir", str(tmp_path / "o"), *flags])
        assert train.make_accelerator(args).init_handler.timeout.total_seconds() == seconds
    with pytest.raises(SystemExit):
        train.parse_args(["--output_dir", str(tmp_path / "o"), "--ddp_timeout", "0"])
    assert "error: argument --ddp_timeout: must be >= 1, got 0" in capsys.readouterr().err


def test_accelerates_gradient_accumulation_is_refused_not_ignored(tmp_path, monkeypatch):
    """An accelerate configured for accumulation (this variable; `accelerate launch --gradient_accumulation_steps 2`
    sets it for DeepSpeed only) is refused: train.py stepped every batch."""
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    with pytest.raises(ValueError, match="gradient accumulation over 2 batches, which train.py does not do"):
        train_in_process("--output_dir", tmp_path / "o", *FAST, "--max_train_steps", 1)
    assert not (tmp_path / "o").exists()


def test_msf_scales_without_the_multiscale_evaluation_are_refused(capsys):
    with pytest.raises(SystemExit):
        train_module().parse_args(["--no_msf", "--msf_scales", "1.0", "0.5"])
    assert (
        "--msf_scales are the scales of the multi-scale evaluation, which --no_msf turns off"
        in capsys.readouterr().err
    )


def test_resume_compares_values_in_effect_so_restating_a_default_is_no_change(
    tmp_path, tiny_clip, monkeypatch
):
    """Restating what the run used by default (the toy recipe's RFM start and classes, the training set's size) is
    accepted on resume (it was refused as "None -> 150"); a value that differs in effect is refused, naming it. A
    resumed run may change --checkpoints_total_limit (3 steps, one checkpoint each, 2 kept: step_2 and step_3)."""
    from weclip_hf.presets import preset_config_kwargs

    toy = preset_config_kwargs("toy")
    run = [
        "--clip_model_name_or_path",
        tiny_clip,
        "--output_dir",
        tmp_path / "o",
        *FAST,
        "--toy_train_images",
        16,
    ]
    run += ["--max_train_steps", 3, "--checkpointing_steps", 1, "--validation_split", "none"]
    train_stopped_at(1, *run, monkeypatch=monkeypatch)
    resume = [*run, "--resume_from_checkpoint", "latest"]
    with pytest.raises(ValueError, match=r"values in effect differ.*--rfm_start_step 150 -> 2\."):
        train_in_process(*resume, "--rfm_start_step", 2)
    restated = ["--rfm_start_step", toy["rfm_start_step"], "--class_names", *toy["class_names"]]
    restated += ["--semantic_loss_ignore_index", 255]  # compared as given before: "None -> 255"
    # a resumed run may keep fewer checkpoints than its first segment (which kept all): the two newest stay
    limit = ["--checkpoints_total_limit", 2]
    metrics = train_in_process(*resume, *restated, "--max_train_samples", 16, *limit)
    assert metrics["train_steps"] == 3
    assert sorted(p.name for p in (tmp_path / "o").glob("step_*")) == ["step_2", "step_3"]


def test_a_resolved_flag_left_out_is_refused_before_the_data_and_model_load(tmp_path, tiny_clip, monkeypatch):
    """A resume whose only change is a model flag the run gave and now leaves out (--rfm_start_step 2, which then
    resolves to the toy recipe's 150) was refused only once the data and model were loaded (the arguments listed it
    only with another refusal): the arguments and the checkpoint's record fix that value, so it is refused first,
    naming what to restate; so is such a flag given otherwise. Restated, the run resumes."""
    run = ["--clip_model_name_or_path", tiny_clip, "--output_dir", tmp_path / "o", *FAST]
    run += ["--toy_train_images", 8, "--max_train_steps", 2]
    run += ["--checkpointing_steps", 1, "--validation_split", "none"]
    train_stopped_at(1, *run, "--rfm_start_step", 2, monkeypatch=monkeypatch)
    resume = [*run, "--resume_from_checkpoint", "latest"]
    train = train_module()
    loaded = []
    load = train.load_data_and_model
    monkeypatch.setattr(train, "load_data_and_model", lambda *a: loaded.append(a) or load(*a))
    with pytest.raises(
        ValueError,
        match=r"values in effect differ .*: --rfm_start_step 2 -> 150\. Restate what the run gave: "
        r"--rfm_start_step 2 \(not given now\), or start a new run",
    ):
        train_in_process(*resume)
    with pytest.raises(
        ValueError, match=r"--rfm_start_step 2 -> 3\. Restate .*: --rfm_start_step 2 \(now 3\),"
    ):
        train_in_process(*resume, "--rfm_start_step", 3)
    assert loaded == []
    assert train_in_process(*resume, "--rfm_start_step", 2)["train_steps"] == 2
    assert len(loaded) == 1


def test_checkpoints_record_the_threads_and_a_resume_with_others_is_warned(
    tmp_path, tiny_clip, capsys, monkeypatch
):
    """A CPU run's checkpoints record its torch threads; resumed with others (1, then 2), it goes on, warned that its
    weights then equal the uninterrupted run's up to float rounding only (it said nothing, and could not)."""
    out = tmp_path / "o"
    run = ["--clip_model_name_or_path", tiny_clip, "--output_dir", out, *FAST, "--toy_train_images", 8]
    run += ["--max_train_steps", 2, "--checkpointing_steps", 1, "--validation_split", "none"]
    train_stopped_at(1, *run, monkeypatch=monkeypatch)
    assert recorded_computation(out / "step_1")["threads"] == 1
    capsys.readouterr()
    assert train_in_process(*run, "--resume_from_checkpoint", "latest", threads=2)["train_steps"] == 2
    assert (
        f"Warning: {out / 'step_1'} was trained computing otherwise than this run: torch threads per process "
        "(--num_threads, by default the cores available) 1 -> 2. " in capsys.readouterr().out
    )
    assert recorded_computation(out / "step_2")["threads"] == 2


def recorded_computation(checkpoint: Path) -> dict:
    """How the run of ``checkpoint`` computed, as its training_state.json records it."""
    return json.loads((checkpoint / "training_state.json").read_text())["computation"]


def test_checkpoints_record_the_device_and_compilation_and_a_resume_otherwise_is_warned(
    tmp_path, tiny_clip, capsys, monkeypatch
):
    """A checkpoint records the device type and torch.compile of its run beside the threads; one of a compiled GPU run
    (its record planted: no GPU, and no compilation, in the test) resumed on the CPU eagerly goes on, warned that
    its weights then equal the uninterrupted run's up to float rounding only, naming both changes and what to pass
    (the device was not recorded, torch.compile not compared: it resumed without a word)."""
    out = tmp_path / "o"
    run = ["--clip_model_name_or_path", tiny_clip, "--output_dir", out, *FAST, "--toy_train_images", 8]
    run += ["--max_train_steps", 2, "--checkpointing_steps", 1, "--validation_split", "none"]
    train_stopped_at(1, *run, monkeypatch=monkeypatch)
    state_file = out / "step_1" / "training_state.json"
    state = json.loads(state_file.read_text())
    assert state["computation"] == {
        "device": "cpu", "torch_compile": False, "torch_compile_backend": None, "torch_compile_mode": None,
        "threads": 1,
    }  # fmt: skip
    # as a GPU run's compiled training forward with the default mode there (its threads not recorded)
    compiled = {
        "torch_compile": True,
        "torch_compile_backend": "inductor",
        "torch_compile_mode": "reduce-overhead",
    }
    state_file.write_text(
        json.dumps({**state, "computation": {"device": "cuda", **compiled, "threads": None}})
    )
    capsys.readouterr()
    assert train_in_process(*run, "--resume_from_checkpoint", "latest")["train_steps"] == 2
    printed = capsys.readouterr().out
    assert (
        f"Warning: {out / 'step_1'} was trained computing otherwise than this run: device type cuda -> cpu; "
        "--torch_compile on (inductor, mode reduce-overhead) -> off. " in printed
    )
    assert (
        "For an exact resume, resume on a cuda device (without accelerate's --cpu), with --torch_compile "
        "--torch_compile_backend inductor --torch_compile_mode reduce-overhead.\n" in printed
    )


def test_a_backends_default_mode_is_recorded_as_no_mode():
    """torch.compile passes a backend other than inductor no mode for --torch_compile_mode default, the compile
    without the flag: both record no mode (recorded "default" and None, a resume from one to the other was warned
    as another compile); inductor's modes are recorded as in effect."""
    train = train_module()
    cpu = torch.device("cpu")

    def recorded(*flags: str):
        return train.run_computation(train.parse_args(["--torch_compile", *flags]), cpu, 1)

    eager = recorded("--torch_compile_backend", "eager")
    assert eager.torch_compile_mode is None
    assert recorded("--torch_compile_backend", "eager", "--torch_compile_mode", "default") == eager
    assert recorded("--torch_compile_backend", "eager", "--torch_compile_mode", "max-autotune") != eager
    assert recorded().torch_compile_mode == "default"  # inductor's on the CPU
    assert recorded("--torch_compile_mode", "default") == recorded()


def test_resume_on_data_of_another_size_is_refused(tmp_path, tiny_clip, monkeypatch):
    """The same flags on a dataset that changed (12 training images, then 8): the resumed batches would not be the
    run's; refused, naming both sizes (it resumed without a word)."""
    import datasets

    data, out = tmp_path / "data", tmp_path / "o"
    _write_mask_dataset(data)
    run = ["--dataset_path", data, "--clip_model_name_or_path", tiny_clip, "--output_dir", out, *FAST_ON_DATA]
    run += ["--class_names", "a", "b", "c", "--background_names", "sky", "--crop_size", 64]
    run += ["--max_train_steps", 4, "--checkpointing_steps", 1, "--validation_split", "none"]
    train_stopped_at(1, *run, monkeypatch=monkeypatch)
    smaller = datasets.load_from_disk(str(data))
    smaller["train"] = smaller["train"].select(range(8))
    smaller.save_to_disk(str(tmp_path / "data2"))
    shutil.rmtree(data)
    (tmp_path / "data2").rename(data)
    with pytest.raises(ValueError, match="training set size 12 -> 8"):
        train_in_process(*run, "--resume_from_checkpoint", "latest")


def test_bad_dataset_errors_name_the_problem(tmp_path, tiny_clip):
    data = tmp_path / "data"
    _write_mask_dataset(data)
    common = ["--dataset_path", data, "--clip_model_name_or_path", tiny_clip, "--output_dir", tmp_path / "o"]
    with pytest.raises(
        ValueError, match=r"Multi-hot labels of row 0 of split 'train' have width 3, expected 1"
    ):
        train_in_process(
            *common,
            "--class_names",
            "a",
            "--background_names",
            "sky",
            "--max_train_steps",
            1,
            "--crop_size",
            64,
        )
    with pytest.raises(ValueError, match=r"available columns.*'image'"):
        train_in_process(*common, "--image_column", "photo", "--max_train_steps", 1)


def test_push_to_hub_uploads_the_output_folder(tmp_path, tiny_clip, fake_hub):
    """The folder is uploaded to the repository create_repo returns (the user's, for a name without one), and
    its card's usage code loads that repository (it named the bare --hub_model_id, which does not exist)."""
    out = tmp_path / "push"
    train_in_process(
        "--clip_model_name_or_path",
        tiny_clip,
        "--output_dir",
        out,
        "--max_train_steps",
        1,
        "--push_to_hub",
        "--hub_model_id",
        "weclip-toy-test",
        *FAST,
    )
    (upload,) = fake_hub.uploaded
    assert upload["repo_id"] == "me/weclip-toy-test" and upload["folder_path"] == str(out)
    published = ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "metrics.json")
    for name in (*published, *TOKENIZER_FILES):
        assert name in upload["files"], name
    assert not [f for f in upload["allow_patterns"] if f.startswith("step_")]  # checkpoints stay local
    card = (out / "README.md").read_text()
    assert 'segmenter = pipeline("image-segmentation", model="me/weclip-toy-test")\n' in card
    assert 'from_pretrained("me/weclip-toy-test", trust_remote_code=True)\n' in card
    assert "\n# weclip-toy-test\n" in card  # the repository's name, as the converter's cards title it


def run_inference_notebook(working_dir: Path) -> list[dict]:
    """The outputs of examples/inference.ipynb's code cells, run offline in ``working_dir``."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "examples" / "inference.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(working_dir)}}
    ).execute()
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def test_inference_notebook_runs_headless(toy_run, monkeypatch):
    monkeypatch.setenv("WECLIP_MODEL_DIR", str(toy_run[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    outputs = run_inference_notebook(ROOT)
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the masks were shown as a picture
    assert not any(o.get("output_type") == "error" for o in outputs)


def test_inference_notebook_finds_the_main_jobs_model_from_the_examples_folder(
    toy_weclip_dir, tmp_path, monkeypatch
):
    """Opened in Jupyter, the notebook runs in examples/, where its default outputs/weclip-toy (the main job's, at
    the repository root) is no folder: it was taken for a Hub id ("We couldn't connect to 'https://huggingface.co'"
    offline). Now the folder above is looked in too; where neither holds it, the error says what to do."""
    monkeypatch.delenv("WECLIP_MODEL_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "examples").mkdir()
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "weclip-toy").symlink_to(toy_weclip_dir)
    outputs = run_inference_notebook(tmp_path / "examples")
    assert not any(o.get("output_type") == "error" for o in outputs)
    (tmp_path / "outputs" / "weclip-toy").unlink()
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError) as failure:
        run_inference_notebook(tmp_path / "examples")
    assert failure.value.ename == "FileNotFoundError"
    assert failure.value.evalue.startswith(
        f"No outputs/weclip-toy in {tmp_path / 'examples'} nor in the folder above"
    )


# ---- streaming, resume across a pass, evaluation during training, RFM start ---------------------------


def _write_parquet_dataset(root: Path) -> Path:
    """The dataset of `_write_mask_dataset` as parquet files in the Hub layout (``data/<split>-*.parquet``)."""
    import datasets

    _write_mask_dataset(root / "disk")
    splits = datasets.load_from_disk(str(root / "disk"))
    for name, split in splits.items():
        split.to_parquet(str(root / "hub" / "data" / f"{name}-00000-of-00001.parquet"))
    return root / "hub"


@pytest.mark.parametrize("streaming", [True, False], ids=["streamed", "map_style"])
def test_resume_into_a_new_folder_across_a_pass_boundary(tmp_path, tiny_clip, streaming, capsys):
    """6 images (--max_train_samples) in batches of 2 make 3 steps a pass. A run resumed from step 2 must
    repeat the uninterrupted run's steps 3-4, across the start of the second (reshuffled) pass. Streamed:
    the Hub parquet layout loaded with ``load_dataset(..., streaming=True)``, offline; map-style: a saved
    DatasetDict with a mask column."""
    if streaming:
        data = ["--dataset_name", _write_parquet_dataset(tmp_path), "--streaming", "--shuffle_buffer_size", 4]
    else:
        _write_mask_dataset(tmp_path / "disk")
        data = ["--dataset_path", tmp_path / "disk"]
    common = [
        *data,
        "--clip_model_name_or_path",
        tiny_clip,
        "--class_names",
        "a",
        "b",
        "c",
        "--background_names",
        "sky",
        "grass",
        "--max_train_samples",
        6,
        "--max_train_steps",
        4,
        "--checkpointing_steps",
        2,
        "--crop_size",
        64,
        "--per_device_train_batch_size",
        2,
        "--logging_steps",
        1,
        "--no_msf",
        "--num_overlays",
        0,
        "--max_eval_samples",
        2,
    ]
    train_in_process(*common, "--output_dir", tmp_path / "a")
    output = capsys.readouterr().out
    assert ("train: streamed" in output) == streaming
    assert "RFM after 15000 steps (config default = the paper's 15000, as no --preset was given" in output
    checkpoint = tmp_path / "a" / "step_2"
    train_in_process(*common, "--output_dir", tmp_path / "b", "--resume_from_checkpoint", checkpoint)
    assert f"resumed from {checkpoint} at step 2" in capsys.readouterr().out
    log_a, log_b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["step"] for r in log_b] == [3, 4]
    assert [r["loss"] for r in log_a[2:]] == [r["loss"] for r in log_b]
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["train_steps"] == 4 and 0.0 <= metrics["miou"] <= 1.0
    assert set(metrics["per_class_iou"]) == {"background", "a", "b", "c"}


def test_eval_steps_prints_and_logs_eval_miou(toy_run):
    import re

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, stdout = toy_run  # 3 steps, evaluated at step 2
    printed = [line for line in stdout.splitlines() if re.match(r"step \d+: \{'eval_miou': ", line)]
    assert [line.split(":")[0] for line in printed] == ["step 2"]
    evals = [r for r in read_log(out) if "eval_miou" in r]
    assert [r["step"] for r in evals] == [2]
    for record, line in zip(evals, printed):
        assert set(record) == {"step", "eval_miou", "eval_pseudo_label_miou"}
        assert 0.0 <= record["eval_miou"] <= 1.0 and 0.0 <= record["eval_pseudo_label_miou"] <= 1.0
        assert repr(record["eval_miou"]) in line and repr(record["eval_pseudo_label_miou"]) in line
    assert [r["step"] for r in read_log(out) if "loss" in r] == [1, 2, 3]
    # the tracker received the same figures as the log
    scalars = EventAccumulator(str(out / "weclip")).Reload()  # the run's scalars (hparams in a subfolder)
    logged = {}
    for record in read_log(out):  # a step may have a training and an evaluation record
        logged.setdefault(record["step"], {}).update(record)
    for tag in ("loss", "seg_loss", "affinity_loss", "eval_miou", "eval_pseudo_label_miou"):
        values = {e.step: e.value for e in scalars.Scalars(tag)}
        assert values and all(
            values[step] == pytest.approx(logged[step][tag], rel=1e-6) for step in values
        ), tag
    assert sorted(e.step for e in scalars.Scalars("loss")) == [1, 2, 3]


def test_help_and_parsed_args_name_the_rfm_start(capsys):
    train_script = train_module()
    with pytest.raises(SystemExit):
        train_script.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert (
        "else the config default 15000 (the paper's; WeCLIP+'s 0) -- also for --dataset_name without"
        in help_text
    )
    args = train_script.parse_args(["--dataset_name", "some/voc-like"])
    assert args.recipe == "voc" and args.rfm_start_step is None
    assert args.rfm_start_source.startswith("config default = the paper's 15000, as no --preset was given")
    with_preset = train_script.parse_args(["--dataset_name", "d", "--preset", "voc"])
    assert with_preset.rfm_start_source == "--preset voc"
    assert train_script.parse_args(["--rfm_start_step", "7"]).rfm_start_source == "--rfm_start_step"


def test_model_push_to_hub_uploads_weights_processor_and_card(tiny_model, fake_hub):
    """`model.push_to_hub` (no network: HfApi stubbed) ships a folder the pipeline can load."""
    from transformers import pipeline

    import weclip_hf  # noqa: F401  (registers the Auto classes)

    # the Hub resolves a bare name to the token's namespace
    assert tiny_model.push_to_hub("weclip-test", metrics={"miou": 0.5}) == "https://hub/me/weclip-test"
    (upload,) = fake_hub.uploaded
    assert upload["left_out"] == [] and len(upload["allow_patterns"]) == len(upload["files"])
    pushed = upload["copy"]
    files = sorted(p.name for p in pushed.iterdir() if p.suffix != ".py")
    assert files == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    code = {p.name for p in pushed.glob("*.py")}  # the model's code, for trust_remote_code
    assert {"configuration_weclip.py", "modeling_weclip.py", "image_processing_weclip.py", "hub.py"} <= code
    assert "auto_map" in json.loads((pushed / "config.json").read_text())
    card = (pushed / "README.md").read_text()
    assert "me/weclip-test" in card and "| miou | 0.5000 |" in card and "zhang2024frozen" in card
    assert "limitations" in card.lower()
    masks = pipeline("image-segmentation", model=str(pushed))(Image.new("RGB", (40, 32), (120, 30, 60)))
    assert masks and masks[0]["mask"].size == (40, 32)


def test_cpu_threads_share_the_cores_among_local_processes(monkeypatch):
    """`accelerate launch` sets OMP_NUM_THREADS=1 on a CPU; the script spreads the cores itself."""
    computation = train_phase("computation")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cores_per_local_process(1) == 8
    assert cores_per_local_process(2) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # torchrun's local process count wins
    assert cores_per_local_process(3) == cores_per_local_process(1) == cores_per_local_process() == 2
    monkeypatch.setenv("WORLD_SIZE", "6")  # the processes of every machine share no cores
    assert cores_per_local_process(1) == 2
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert cores_per_local_process() == 8  # one process by default
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert cores_per_local_process(16) == 1
    assert computation.default_num_workers("cpu", 16) == 0  # workers would take the training threads' cores
    assert computation.default_num_workers("cuda", 16) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert computation.default_num_workers("cuda", 1) == 4


def test_every_step_of_every_process_has_its_own_seed():
    """The per-step seed was (seed * 1_000_003 + step) * 64 + process: beyond 64 processes, process 64's step s drew
    process 0's dropout of step s + 1. Processes 0-63 keep their seeds (a resumed run of an earlier version repeats
    it exactly)."""
    step_seed = train_phase("loop").step_seed
    seeds = [step_seed(3, step, rank) for step in range(50) for rank in [*range(200), 256, 320, 4096]]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**64 for s in seeds)
    assert step_seed(3, 7, 5) == (3 * 1_000_003 + 7) * 64 + 5
    assert step_seed(-1, 0, 0) == (-1_000_003 * 64) % 2**64  # a negative --seed is in torch's range too
    torch.manual_seed(step_seed(-1, 0, 0))


def test_torch_compile_trains_as_the_eager_run(tmp_path, tiny_clip, reference_run):
    """``--torch_compile`` (backend aot_eager: Dynamo's graphs and AOTAutograd, no code generation) trains as the
    eager run does: the same losses at every step, RFM off then on, within float32 summation order; the module
    saved is the plain one (same keys as the eager run's weights); its checkpoints record the compilation (backend
    aot_eager, which has no mode), which a resume compares."""
    from torch._dynamo.utils import counters

    counters.clear()
    out = tmp_path / "compiled"
    train_in_process(
        *resumable_args(tiny_clip),
        "--output_dir",
        out,
        "--torch_compile",
        "--torch_compile_backend",
        "aot_eager",
    )
    assert counters["stats"]["unique_graphs"] > 0  # the training forward ran compiled
    assert recorded_computation(out / "step_6") == {
        "device": "cpu", "torch_compile": True, "torch_compile_backend": "aot_eager", "torch_compile_mode": None,
        "threads": 1,
    }  # fmt: skip
    eager, compiled = read_log(reference_run), read_log(out)
    assert [r["step"] for r in compiled] == [r["step"] for r in eager]
    rfm = [r["rfm"] for r in eager]
    assert [r["rfm"] for r in compiled] == rfm and set(rfm) == {False, True}
    for mine, theirs in zip(compiled, eager):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4), (mine, theirs)
    from safetensors.torch import load_file

    assert (
        load_file(out / "model.safetensors").keys() == load_file(reference_run / "model.safetensors").keys()
    )


def test_push_to_hub_fails_before_training_when_the_hub_cannot_be_reached(tmp_path, tiny_clip, monkeypatch):
    """HF_HUB_OFFLINE (or no network, or a token that may not write): the repository is created when the run
    starts, so the run stops there with a clear error instead of after its training."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    out = tmp_path / "offline"
    with pytest.raises(RuntimeError, match="Cannot create or reach the Hub repository 'weclip-toy-test'"):
        train_in_process(
            "--clip_model_name_or_path", tiny_clip, "--output_dir", out, "--max_train_steps", 1,
            "--push_to_hub", "--hub_model_id", "weclip-toy-test", *FAST,
        )  # fmt: skip
    assert not (out / "train_log.jsonl").exists() and not list(out.glob("step_*"))


def test_tracked_runs_log_the_final_metrics(tmp_path, tiny_clip):
    """--with_tracking: the final evaluation's figures reach the trackers (also without --eval_steps); --report_to
    alone tracks too, and --overwrite_output_dir removes the previous run's event files (TensorBoard showed both
    runs as one curve)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tracked"
    run = ["--clip_model_name_or_path", tiny_clip, "--output_dir", out, "--max_train_steps", 1, *FAST]
    metrics = train_in_process(*run, "--with_tracking", "--report_to", "tensorboard")
    folders = {p.parent for p in out.rglob("events.out.tfevents*")}
    scalars = {tag for f in folders for tag in EventAccumulator(str(f)).Reload().Tags()["scalars"]}
    assert "final_miou" in scalars and metrics["miou"] >= 0
    train_in_process(*run, "--report_to", "tensorboard", "--overwrite_output_dir", "--max_train_steps", 2)
    (events,) = (out / "weclip").glob("events.out.tfevents*")  # the second run's only
    assert [e.step for e in EventAccumulator(str(events)).Reload().Scalars("loss")] == [1, 2]


def test_naming_a_tracker_turns_tracking_on(capsys):
    """--report_to without --with_tracking was accepted and ignored; as transformers', it asks for tracking."""
    parse = train_module().parse_args
    assert [(a.with_tracking, a.report_to) for a in (parse([]), parse(["--with_tracking"]))] == [
        (False, None),
        (True, "all"),
    ]
    assert parse(["--report_to", "tensorboard"]).with_tracking
    assert not parse(["--report_to", "none"]).with_tracking
    with pytest.raises(SystemExit):
        parse(["--with_tracking", "--report_to", "none"])
    assert "--with_tracking logs to trackers and --report_to none to none" in capsys.readouterr().err


def test_train_val_split_is_a_fraction_and_needs_a_validation_split(capsys):
    """--train_val_split (transformers'): a fraction in (0, 1), off by default, refused beside --validation_split
    none; train_with_trainer.py takes it too."""
    train = train_module()
    assert train.parse_args(["--dataset_name", "d"]).train_val_split is None
    assert train.parse_args(["--dataset_name", "d", "--train_val_split", "0.15"]).train_val_split == 0.15
    for argv, message in (
        (
            ["--train_val_split", "1.5"],
            "argument --train_val_split: must be a fraction between 0 and 1 (e.g. 0.15), got 1.5",
        ),
        (
            ["--train_val_split", "0.1", "--validation_split", "none"],
            "--train_val_split holds out a validation split, and --validation_split none asks for none: give one.",
        ),
    ):
        with pytest.raises(SystemExit):
            train.parse_args(["--dataset_name", "d", *argv])
        assert f"error: {message}" in capsys.readouterr().err
    train_with_trainer = example_module("train_with_trainer")
    assert train_with_trainer.parse_args(["--train_val_split", "0.2"])[0].train_val_split == 0.2
    with pytest.raises(SystemExit):
        train_with_trainer.parse_args(["--train_val_split", "1.5"])
    error = capsys.readouterr().err
    assert "error: --train_val_split must be a fraction between 0 and 1 (e.g. 0.15), got 1.5" in error


def test_class_names_also_name_the_labels_of_a_fresh_model(tiny_clip):
    """--class_names replace a preset's classes and its display names, also when as many are given (as
    generate_pseudo_labels.py builds its fresh models)."""
    train = train_module()
    names = [
        f"thing {i}" for i in range(20)
    ]  # as many as VOC's classes, whose display names the preset holds
    fits = ["--rfm_num_maps", "2"]  # the tiny CLIP has 3 layers
    argv = ["--dataset_name", "d", "--preset", "voc", "--clip_model_name_or_path", tiny_clip, *fits]
    model = train_phase("data_and_model").build_model(train.parse_args([*argv, "--class_names", *names]), {})
    assert model.config.class_names == names and model.config.label_names == names


def test_the_processor_saved_with_a_model_pads_labels_with_its_ignore_index(tmp_path):
    """(was: the processor padded labels with 255 whatever the model's semantic_loss_ignore_index)"""
    from conftest import make_tiny_config

    from weclip_hf import WeCLIPImageProcessor

    train = train_module()
    config = make_tiny_config(semantic_loss_ignore_index=100)
    WeCLIPImageProcessor().save_pretrained(tmp_path)  # a processor of 255, e.g. one saved before
    for extra in ([], ["--image_processor_name_or_path", str(tmp_path)]):
        processor = train_phase("data_and_model").build_image_processor(
            train.parse_args(["--dataset_name", "d", *extra]), config
        )
        assert processor.ignore_index == 100 and processor.patch_size == config.vision_config.patch_size


def test_the_processor_saved_with_a_model_has_the_runs_evaluation_size():
    """`build_image_processor`: the saved processor's size is the run's evaluation size, --eval_long_side's long
    side, else the training crop (`processor_size`)."""
    from conftest import make_tiny_config

    build = train_phase("data_and_model").build_image_processor
    for flags, size in (
        (["--dataset_name", "d", "--eval_long_side", "64"], {"longest_edge": 64}),
        (["--crop_size", "48"], {"height": 48, "width": 48}),  # the toy recipe evaluates at its crop
    ):
        processor = build(train_module().parse_args(flags), make_tiny_config())
        assert dict(processor.size) == size


# ---- training_step and make_train_loader, called directly (no model, no run) ------------------------------


class _FakeAccelerator:
    """The parts of `accelerate.Accelerator` that `training_step` and `make_train_loader` use: one CPU process."""

    device = torch.device("cpu")
    num_processes = 1
    optimizer_step_was_skipped = False

    def __init__(self, process_index: int = 0):
        self.process_index = process_index

    def backward(self, loss):
        loss.backward()

    def prepare_data_loader(self, loader, device_placement=True):
        return loader


def _training_steps(
    steps=1, process_index=0, seed=0, **flags
) -> tuple[list[dict], torch.optim.Optimizer, object]:
    """`training_step` ``steps`` times on a forward that records, per call, its keyword arguments, the learning
    rate it runs under and a draw of torch's global generator; returns (records, optimizer, scheduler)."""
    from weclip_hf.modeling_weclip import WeCLIPSemanticSegmenterOutput

    train = train_module()
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 / (t + 1))
    records = []

    def forward(**kwargs):
        records.append({**kwargs, "lr": optimizer.param_groups[0]["lr"], "draw": torch.rand(4)})
        loss = weight.sum()
        return WeCLIPSemanticSegmenterOutput(loss=loss, seg_loss=loss)

    args = argparse.Namespace(**{"seed": seed, "fully_supervised": False, "ignore_padding": False, **flags})
    batch = {
        "pixel_values": torch.zeros(2, 3, 8, 8),
        "class_labels": torch.ones(2, 4),
        "labels": torch.ones(2, 8, 8, dtype=torch.long),
        "pixel_mask": torch.ones(2, 8, 8, dtype=torch.bool),
    }
    accelerator = _FakeAccelerator(process_index)
    for step in range(steps):
        train.training_step(args, accelerator, forward, optimizer, scheduler, batch, step)
    return records, optimizer, scheduler


def test_a_step_the_gradient_scaler_skipped_leaves_the_schedule(monkeypatch):
    """fp16: a step whose update the gradient scaler skipped (inf/NaN gradients) does not advance the learning-rate
    schedule (as transformers' Trainer); a step that updated does."""
    monkeypatch.setattr(_FakeAccelerator, "optimizer_step_was_skipped", True)
    _, _, skipped = _training_steps(steps=2)  # lr 0.1 / (step + 1)
    monkeypatch.setattr(_FakeAccelerator, "optimizer_step_was_skipped", False)
    _, _, stepped = _training_steps(steps=2)
    assert (skipped.last_epoch, stepped.last_epoch) == (0, 2)


def test_fewer_images_than_one_global_batch_are_named(monkeypatch):
    """With several processes the prepared loader may hold no batch although one process's would: the message names
    the global batch (it was a ZeroDivisionError at the first step)."""

    class _TwoProcesses(_FakeAccelerator):
        num_processes = 2

        def prepare_data_loader(self, loader, device_placement=True):
            return []  # 6 images, batches of 4: one batch, sharded over two processes, none each

    with pytest.raises(
        ValueError, match=r"6 training images are fewer than one global batch of 4 x 2 processes = 8"
    ):
        _loader(6, 4, accelerator=_TwoProcesses())


def test_a_non_finite_loss_stops_the_step_before_any_update():
    """The step's losses are checked before the backward pass and the optimizer step, as the error promises
    ("weights were not updated"): the weights, their gradients and the schedule stay as they were."""
    from weclip_hf.modeling_weclip import WeCLIPSemanticSegmenterOutput

    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 / (t + 1))

    def exploding(**batch):
        loss = weight.sum() * float("inf")
        return WeCLIPSemanticSegmenterOutput(loss=loss, seg_loss=loss)

    batch = {"pixel_values": torch.zeros(1, 3, 8, 8), "class_labels": torch.ones(1, 4)}
    args = argparse.Namespace(seed=0)
    with pytest.raises(
        FloatingPointError, match=r"segmentation loss \(inf\) at step 5; weights were not updated"
    ):
        train_module().training_step(args, _FakeAccelerator(), exploding, optimizer, scheduler, batch, 5)
    assert torch.equal(weight, torch.ones(2)) and weight.grad is None and scheduler.last_epoch == 0


def test_training_step_gives_the_model_the_batch_as_collated():
    (call,), _, _ = _training_steps()
    assert set(call) - {"lr", "draw"} == {"pixel_values", "class_labels", "labels", "pixel_mask"}
    assert call["pixel_values"].shape == (2, 3, 8, 8) and call["labels"].shape == (2, 8, 8)


def test_training_step_randomness_is_keyed_on_the_process():
    """Each process of a run draws its own dropout masks, and the same ones again for the same (seed, step)."""
    first = _training_steps(process_index=0)[0][0]["draw"]
    again = _training_steps(process_index=0)[0][0]["draw"]
    other = _training_steps(process_index=1)[0][0]["draw"]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_training_step_advances_the_learning_rate_schedule():
    records, optimizer, scheduler = _training_steps(steps=3)  # lr 0.1 / (step + 1)
    assert [r["lr"] for r in records] == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert scheduler.last_epoch == 3 and optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


class _TwoProcessLog:
    """The parts of `accelerate.Accelerator` that `log_losses` uses, for a process beside another whose losses are
    3 times its own: reductions over both, the tracker's records kept."""

    def __init__(self, is_main_process: bool):
        self.is_main_process, self.tracked = is_main_process, []

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        return {"sum": tensor * 4, "mean": tensor * 2}[reduction]

    def log(self, record: dict, step: int) -> None:
        self.tracked.append((record, step))


def test_the_log_records_each_losses_mean_over_processes_on_the_main_process(tmp_path):
    """`log_losses`: the step's total and its terms (mean over the processes, each process's loss being scaled so
    that their mean is the global batch's), its learning rate and RFM flag, to the trackers, and to the log by
    the main process only."""
    from weclip_hf.modeling_weclip import WeCLIPSemanticSegmenterOutput

    loop = train_phase("loop")
    out = WeCLIPSemanticSegmenterOutput(
        loss=torch.tensor(1.5), seg_loss=torch.tensor(1.0), affinity_loss=torch.tensor(0.5), used_rfm=True
    )
    expected = {"step": 7, "loss": 3.0, "seg_loss": 2.0, "affinity_loss": 1.0, "lr": 0.01, "rfm": True}
    log = tmp_path / "log.jsonl"
    for main in (False, True):
        accelerator = _TwoProcessLog(main)
        assert loop.log_losses(accelerator, out, 7, 0.01, log) == expected
        assert accelerator.tracked == [(expected, 7)]
        written = log.read_text().splitlines() if log.exists() else []
        assert [json.loads(line) for line in written] == ([expected] if main else [])


class _Indices(torch.utils.data.Dataset):
    """Training examples whose image is filled with their index."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {
            "pixel_values": torch.full((3, 2, 2), float(i)),
            "class_labels": torch.ones(4),
            "labels": torch.zeros(2, 2, dtype=torch.long),
            "pixel_mask": torch.ones(2, 2, dtype=torch.uint8),
        }


def _loader(length=10, batch_size=4, seed=1, accelerator=None, **flags):
    args = argparse.Namespace(
        seed=seed,
        num_workers=0,
        per_device_train_batch_size=batch_size,
        fully_supervised=False,
        ignore_padding=False,
    )
    return train_module().make_train_loader(
        argparse.Namespace(**{**vars(args), **flags}), _Indices(length), accelerator or _FakeAccelerator()
    )


def _loader_order(length=10, batch_size=4, seed=1) -> list[list[int]]:
    loader, sampler = _loader(length, batch_size, seed)
    assert sampler is not None and len(loader) == length // batch_size
    return [batch["pixel_values"][:, 0, 0, 0].long().tolist() for batch in loader]


@pytest.mark.parametrize("fully_supervised", [False, True])
@pytest.mark.parametrize("ignore_padding", [False, True])
def test_train_loader_gives_the_masks_and_padding_only_when_asked(fully_supervised, ignore_padding):
    loader, _ = _loader(fully_supervised=fully_supervised, ignore_padding=ignore_padding)
    batch = next(iter(loader))
    expected = {"pixel_values", "class_labels"} | ({"labels"} if fully_supervised else set())
    assert set(batch) == expected | ({"pixel_mask"} if ignore_padding else set())


def test_train_loader_gives_whole_batches_in_a_seeded_order():
    batches = _loader_order(seed=1)
    assert [len(b) for b in batches] == [4, 4]  # the last 2 of the 10 images wait for the next pass
    assert len(set(sum(batches, []))) == 8
    assert _loader_order(seed=1) == batches and _loader_order(seed=2) != batches


def test_train_loader_has_the_workers_of_num_workers_else_the_devices_default():
    """--num_workers given is taken as it is (0 too); left out, a CPU run loads in its own process
    (`default_num_workers`)."""
    assert [_loader(num_workers=workers)[0].num_workers for workers in (2, 0, None)] == [2, 0, 0]


def test_train_loader_refuses_a_dataset_smaller_than_one_batch():
    with pytest.raises(ValueError, match="3 training images are fewer than one batch of 4"):
        _loader(length=3, batch_size=4)

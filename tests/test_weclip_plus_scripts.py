"""WeCLIP+ through the example scripts end to end (tiny random CLIP and DINOv2, toy world, CPU): train.py with
``--dino_model_name_or_path``, an exact resume, evaluate.py on the output folder, the image-segmentation pipeline
on it; and train.py's WeCLIP+ argument plumbing.

The training runs call train.py's ``main`` in this process (`conftest.train_in_process`, one thread), as do the
evaluation and the pipeline, so that the numbers they compare come from the same arithmetic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    FAST,
    evaluate_module,
    example_module,
    read_log,
    resolved_known_and_built,
    train_in_process,
    train_module,
    train_phase,
    train_stopped_at,
)
from safetensors.torch import load_file

from weclip_hf.script_arguments import scales_in_effect

NUM_TOY_VAL = 4  # FAST's --toy_val_images


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory) -> Path:
    """A tiny random DINOv2 (2 blocks of width 24, patch 8, an 8 x 8 position grid: resized by the hub rule to the
    toy crops' 12 x 12) saved like a Hub checkpoint, LayerScale away from 1 so that a mix-up would show."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=8,
        image_size=64,
        layerscale_value=0.5,
    )
    path = tmp_path_factory.mktemp("tinydino")
    Dinov2Model(config).save_pretrained(path)
    return path


def plus_args(clip: str, dino: Path) -> list:
    """6 steps over 16 toy images in batches of 4 (two epochs), a checkpoint every step, RFM+ from step 4."""
    steps = ["--max_train_steps", 6, "--checkpointing_steps", 1, "--rfm_start_step", 3]
    return ["--clip_model_name_or_path", clip, "--dino_model_name_or_path", dino, *steps, *FAST[:-1]]


@pytest.fixture(scope="module")
def plus_run(tiny_clip, tiny_dino, tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted run with the final evaluation multi-scale + flip: (output folder, metrics). Read only."""
    out = tmp_path_factory.mktemp("plus") / "run"
    metrics = train_in_process(
        *plus_args(tiny_clip, tiny_dino), "--toy_train_images", 16, "--output_dir", out
    )
    return out, metrics


def test_training_writes_a_weclip_plus_with_a_frozen_dinov2(plus_run, tiny_dino):
    from transformers import AutoConfig, Dinov2Model

    out, metrics = plus_run
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "weclip_plus" and config.dino_config.hidden_size == 24
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(1, 7)) and [r["rfm"] for r in log] == [False] * 3 + [
        True
    ] * 3
    for record in log:  # the WeCLIP+ terms are logged, and they make up the total with WeCLIP's
        parts = record["seg_loss"] + config.dice_loss_weight * record["dice_loss"]
        parts += config.affinity_loss_weight * record["affinity_loss"]
        parts += config.cross_branch_loss_weight * (
            record["clip_from_dino_loss"] + record["dino_from_clip_loss"]
        )
        assert record["loss"] == pytest.approx(parts, rel=1e-5)
    saved = load_file(out / "model.safetensors")
    dino = Dinov2Model.from_pretrained(tiny_dino).state_dict()
    assert all(torch.equal(saved[f"dino_branch.backbone.{k}"], v) for k, v in dino.items())  # frozen
    first = load_file(out / "step_1" / "model.safetensors")  # a checkpoint: the frozen backbones left out
    assert not any(k.startswith(("dino_branch.backbone.", "vision_model.", "text_model.")) for k in first)
    for prefix in ("dino_branch.head.", "decoder."):  # trained
        assert any(not torch.equal(first[k], saved[k]) for k in saved if k.startswith(prefix)), prefix
    card = (out / "README.md").read_text()
    assert "WeCLIP+" in card and "Frozen CLIP-DINO" in card and "and a frozen DINOv2 provide features" in card
    assert 0.0 <= metrics["miou_msf"] <= 1.0 and metrics["train_steps"] == 6


def test_resume_repeats_the_uninterrupted_run_exactly(
    tmp_path, tiny_clip, tiny_dino, plus_run, capsys, monkeypatch
):
    """A run stopped (Ctrl-C) at step 3, resumed (``latest``) to step 6, repeats the uninterrupted run bit for bit:
    log (every loss, the learning rates, RFM+ from step 4, after the resume) and weights. The resume restates the
    WeCLIP+ and loss flags' defaults, which were refused as changes ("--dice_loss_weight None -> 1.0"): they are
    compared by their values in effect, as the other model flags; a value that differs in effect is refused."""
    from transformers import AutoConfig

    reference, _ = plus_run
    out = tmp_path / "run"
    args = [*plus_args(tiny_clip, tiny_dino), "--toy_train_images", 16, "--output_dir", out, "--no_msf"]
    assert train_stopped_at(3, *args, monkeypatch=monkeypatch)["stopped_at"] == 3
    assert len(read_log(out)) == 3
    config = AutoConfig.from_pretrained(reference)
    resume = [*args, "--resume_from_checkpoint", "latest"]
    with pytest.raises(ValueError, match=r"values in effect differ.*--dice_loss_weight 1\.0 -> 0\.5\."):
        train_in_process(*resume, "--dice_loss_weight", 0.5)
    restated = ["--dice_loss_weight", config.dice_loss_weight, "--no-rfm_use_box_mask"]
    train_in_process(*resume, *restated, "--semantic_loss_ignore_index", config.semantic_loss_ignore_index)
    assert f"resumed from {out / 'step_3'} at step 3" in capsys.readouterr().out
    assert read_log(out) == read_log(reference)
    a, b = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# voc-plus with maps the tiny CLIP's 3 blocks hold
VOC_PLUS = ["--preset", "voc-plus", "--dataset_name", "u/voc", "--rfm_num_maps", 3, "--attention_num_maps", 3]


# a dataset without a preset: the WeCLIP+ config's own defaults, no preset's values over them
@pytest.mark.parametrize("flags", [[], VOC_PLUS, ["--dataset_name", "u/voc"]])
def test_the_values_in_effect_the_arguments_fix_are_the_weclip_plus_models(tiny_clip, tiny_dino, flags):
    """WeCLIP+'s fields left out, known before the data and model load (a resume compares them there), are the built
    model's: WeCLIP+'s defaults (RFM+ from step 0) or the WeCLIP+ preset's, not WeCLIP's."""
    backbones = ["--clip_model_name_or_path", tiny_clip, "--dino_model_name_or_path", tiny_dino]
    known, built = resolved_known_and_built(*backbones, *flags)
    plus = {"rfm_start_step", "dice_loss_weight", "branch_logit_weights", "self_training_start_step"}
    assert plus <= known.keys()
    assert known == {key: built[key] for key in known}


def load_evaluate_script():
    """examples/evaluate.py as a module (not named `evaluate`: that is the Hugging Face library)."""
    return evaluate_module()


def load_script(name: str):
    """examples/<name>.py as a module, examples/evaluate.py not as ``evaluate`` (`conftest.example_module`)."""
    return evaluate_module() if name == "evaluate" else example_module(name)


def test_evaluate_script_scores_the_saved_model_as_training_did(plus_run, tmp_path):
    """evaluate.py loads the folder (Auto class), reads the toy validation split of the run and scores every mode
    as train.py's final evaluation did on the model in memory: the save / load round trip loses nothing."""
    out, metrics = plus_run
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the training's arithmetic
    try:
        report = load_evaluate_script().main(
            ["--model_name_or_path", str(out), "--preset", "toy", "--toy_val_images", str(NUM_TOY_VAL)]
            + ["--msf", "--pseudo_labels", "--batch_size", "4", "--device", "cpu"]
            + ["--output_json", str(tmp_path / "eval.json")]
        )
    finally:
        torch.set_num_threads(before)
    assert report["num_images"] == NUM_TOY_VAL and list(report["per_class_iou"]) == [
        "pred",
        "pred_msf",
        "cam",
        "pseudo",
    ]
    for key in ("miou", "miou_msf", "cam_miou", "pseudo_label_miou"):  # the same names and figures
        assert report[key] == metrics[key], key
    assert report["per_class_iou"]["pred"] == metrics["per_class_iou"]


def pipeline_labels(folder: Path, image) -> np.ndarray:
    """The label map of pipeline("image-segmentation") on ``folder``, checked to be a partition of the image
    equal to the processor's own post-processing of the model's logits. [H, W]"""
    from transformers import AutoImageProcessor, pipeline

    from weclip_hf import WeCLIPPlusForSemanticSegmentation

    segmenter = pipeline("image-segmentation", model=str(folder))
    assert isinstance(segmenter.model, WeCLIPPlusForSemanticSegmentation)
    segments = segmenter(image)
    masks = np.stack([np.asarray(s["mask"]) > 0 for s in segments])  # [S, H, W]
    assert masks.shape[1:] == (image.height, image.width) and (masks.sum(0) == 1).all()
    label2id = segmenter.model.config.label2id
    labels = (masks * np.array([label2id[s["label"]] for s in segments])[:, None, None]).sum(0)
    processor = AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        outputs = segmenter.model(**processor(image, return_tensors="pt"))
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[labels.shape])[0]
    assert np.array_equal(labels, expected.numpy())
    return labels


def test_pipeline_segments_like_the_model(plus_run, tmp_path):
    """pipeline("image-segmentation") on the run's folder, and on a copy whose decoder and DINO head weights are
    drawn with std 0.3 and biases zeroed (6 steps leave the prediction one class everywhere; these predict several
    classes)."""
    from PIL import Image
    from transformers import AutoImageProcessor

    import weclip_hf  # noqa: F401  (registers the Auto classes and the pipeline)
    from weclip_hf import WeCLIPPlusForSemanticSegmentation
    from weclip_hf.data.toy import generate_toy_images

    out, _ = plus_run
    images, _, _ = generate_toy_images(1, seed=5)
    image = Image.fromarray(images[0][:80, :90])  # not the training size, not square
    pipeline_labels(out, image)
    model = WeCLIPPlusForSemanticSegmentation.from_pretrained(out)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.startswith(("decoder.", "dino_branch.head.")) and weight.ndim > 1:
                weight.normal_(0, 0.3)
            elif name.startswith(("decoder.", "dino_branch.head.")) and name.endswith(".bias"):
                weight.zero_()
    model.save_pretrained(tmp_path)
    AutoImageProcessor.from_pretrained(out).save_pretrained(tmp_path)
    assert len(np.unique(pipeline_labels(tmp_path, image))) > 1


# ---- argument plumbing ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_script():
    return train_module()


def test_voc_plus_preset_sets_the_weclip_plus_recipe(train_script):
    args = train_script.parse_args(["--dataset_name", "d", "--preset", "voc-plus"])
    assert args.learning_rate == 2e-4 and args.msf_scales == [1.0, 1.5]
    assert args.recipe == "voc-plus" and args.rfm_start_source == "--preset voc-plus"
    voc = train_script.parse_args(["--dataset_name", "d", "--preset", "voc"])
    assert voc.learning_rate == 2e-3 and voc.msf_scales == [1.0, 0.75]


def saved_config(folder: Path, model_type: str) -> str:
    """A folder whose config.json names ``model_type`` (all train.py's parse_args reads of a saved model)."""
    folder.mkdir()
    (folder / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
    return str(folder)


def test_weclip_plus_without_a_preset_trains_with_the_weclip_plus_voc_recipe(train_script, tmp_path):
    """A WeCLIP+ on a dataset without --preset trained with WeCLIP's VOC recipe (lr 2e-3, 10x WeCLIP+'s; scales
    1.0 0.75) and printed "RFM from step 0 (config default = the paper's 15000 ...)"."""
    plus = saved_config(tmp_path / "plus", "weclip_plus")
    for model, config in (
        (["--dino_model_name_or_path", "x"], "the config defaults"),
        # a continued model keeps its config
        (["--model_name_or_path", plus], "the config of --model_name_or_path"),
    ):
        args = train_script.parse_args(["--data_dir", "d", *model])
        assert args.recipe == "voc-plus" and (args.learning_rate, args.msf_scales) == (2e-4, [1.0, 1.5])
        assert (
            train_phase("arguments").recipe_source(args)
            == f"no --preset: the VOC recipe of a WeCLIP+ model, with {config}"
        )
    dino = train_script.parse_args(["--data_dir", "d", "--dino_model_name_or_path", "x"])
    assert dino.rfm_start_source.startswith("WeCLIP+'s config default: RFM+ from the first step")
    weclip = saved_config(tmp_path / "weclip", "weclip")
    for model in ([], ["--model_name_or_path", weclip]):
        args = train_script.parse_args(["--data_dir", "d", *model])
        assert args.recipe == "voc" and (args.learning_rate, args.msf_scales) == (2e-3, [1.0, 0.75])
    assert "the paper's 15000" in train_script.parse_args(["--data_dir", "d"]).rfm_start_source
    toy = train_script.parse_args(["--dino_model_name_or_path", "x"])  # no dataset: the toy world's
    assert toy.recipe == "toy"


PLUS_FLAGS = {
    "cam_feature_block": -1,
    "rfm_use_box_mask": True,
    "self_training_start_step": 100,
    "self_training_threshold": 0.9,
    "branch_logit_weights": [0.25, 0.75],
    "dice_loss_weight": 0.5,
    "cross_branch_loss_weight": 0.2,
}


def test_weclip_plus_config_flags_set_the_config_and_are_refused_for_weclip(
    train_script, tmp_path, monkeypatch, capsys
):
    from conftest import make_tiny_plus_config

    flags = [
        "--cam_feature_block",
        "-1",
        "--rfm_use_box_mask",
        "--self_training_start_step",
        "100",
        "--self_training_threshold",
        "0.9",
        "--branch_logit_weights",
    ]
    flags += ["0.25", "0.75", "--dice_loss_weight", "0.5", "--cross_branch_loss_weight", "0.2"]
    built = {}
    monkeypatch.setattr(
        train_phase("data_and_model"), "model_from_backbones", lambda clip, dino, plus, **kw: built.update(kw)
    )
    train_phase("data_and_model").build_model(
        train_script.parse_args(["--data_dir", "d", "--dino_model_name_or_path", "x", *flags]), {}
    )
    assert {k: built[k] for k in PLUS_FLAGS} == PLUS_FLAGS
    config = make_tiny_plus_config(**PLUS_FLAGS)  # values the config takes
    assert {k: getattr(config, k) for k in PLUS_FLAGS} == PLUS_FLAGS

    class Saved:  # the saved WeCLIP+ of --model_name_or_path: the flags are config overrides, as the others
        @staticmethod
        def from_pretrained(path, **overrides):
            return overrides

    monkeypatch.setattr(train_phase("data_and_model"), "AutoModelForSemanticSegmentation", Saved)
    plus = saved_config(tmp_path / "plus", "weclip_plus")
    args = train_script.parse_args(["--data_dir", "d", "--model_name_or_path", plus, *flags])
    assert train_phase("data_and_model").build_model(args, {}) == PLUS_FLAGS
    weclip = saved_config(tmp_path / "weclip", "weclip")
    for model in ([], ["--preset", "voc"], ["--model_name_or_path", weclip]):
        with pytest.raises(SystemExit):
            train_script.parse_args(["--data_dir", "d", *model, "--dice_loss_weight", "0.5"])
        error = " ".join(capsys.readouterr().err.split())
        assert "--dice_loss_weight sets a WeCLIP+ config field, but this run trains WeCLIP" in error
    assert (
        train_script.parse_args(["--data_dir", "d", "--preset", "voc-plus", *flags]).dice_loss_weight == 0.5
    )


def test_train_reads_the_saved_config_once(train_script, tmp_path, monkeypatch):
    """parse_args, the run's description (`recipe_source`) and `build_model` each asked the saved model of
    --model_name_or_path something (its type, its recipe, is it WeCLIP+?) and read its config.json again: ten
    times a run. It is read once; a Hub id's is fetched once."""
    import builtins
    from unittest import mock

    from transformers import PretrainedConfig

    class Saved:  # loading is transformers' (it reads config.json itself): only the script's own reads count
        @staticmethod
        def from_pretrained(path, **overrides):
            return overrides

    monkeypatch.setattr(train_phase("data_and_model"), "AutoModelForSemanticSegmentation", Saved)
    real_open, real_os_open = builtins.open, os.open
    opened = []

    def counting_open(file, *args, **kwargs):
        if str(file).endswith("config.json"):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def counting_os_open(file, *args, **kwargs):  # weclip_hf.json_files.read_json opens files by os.open
        if str(file).endswith("config.json"):
            opened.append(str(file))
        return real_os_open(file, *args, **kwargs)

    plus = saved_config(tmp_path / "plus", "weclip_plus")
    # without --preset the recipe asks the type and recorded preset; with one, the preset is checked against it
    for preset in ([], ["--preset", "voc-plus"]):
        argv = ["--data_dir", "d", "--model_name_or_path", plus, *preset, "--dice_loss_weight", "0.5"]
        opened.clear()
        with mock.patch("builtins.open", counting_open), mock.patch("os.open", counting_os_open):
            args = train_script.parse_args(argv)
            train_phase("arguments").recipe_source(args)
            train_phase("data_and_model").build_model(args, {})
        assert opened == [str(Path(plus) / "config.json")]
    hub_config = ({"model_type": "weclip_plus"}, {})
    with mock.patch.object(PretrainedConfig, "get_config_dict", return_value=hub_config) as fetch:
        args = train_script.parse_args(
            ["--data_dir", "d", "--model_name_or_path", "org/weclip", "--dice_loss_weight", "0.5"]
        )
        assert args.recipe == "voc-plus"
        train_phase("arguments").recipe_source(args)
        train_phase("data_and_model").build_model(args, {})
    fetch.assert_called_once_with("org/weclip")
    card_args = train_phase("model_card").card_args(args)
    assert not any(key.startswith("_") for key in card_args)  # the cache is no argument


def test_weclip_plus_without_a_preset_takes_the_weclip_plus_voc_recipe_in_train_with_trainer():
    parse_args = example_module("train_with_trainer").parse_args
    _, plus = parse_args(["--data_dir", "d", "--dino_model_name_or_path", "x", "--output_dir", "o"])
    _, weclip = parse_args(["--data_dir", "d", "--output_dir", "o"])
    assert (plus.learning_rate, weclip.learning_rate) == (2e-4, 2e-3)


def test_evaluate_without_a_preset_takes_the_scales_of_segment_py(tmp_path):
    """evaluate.py --msf without --preset scored a WeCLIP+ model at WeCLIP's scales 1.0 0.75, segment.py at 1.0 1.5."""
    from conftest import make_tiny_config, make_tiny_plus_config

    evaluate = load_evaluate_script()
    args = evaluate.parse_args(["--model_name_or_path", "m", "--data_dir", "d", "--msf"])
    plus, weclip = make_tiny_plus_config(), make_tiny_config()  # classes of no preset
    # evaluate.py and segment.py resolve the scales with scales_in_effect
    assert scales_in_effect(args.scales, plus) == [1.0, 1.5]
    assert scales_in_effect(args.scales, weclip) == [1.0, 0.75]
    given = evaluate.parse_args(
        ["--model_name_or_path", "m", "--data_dir", "d", "--msf", "--scales", "1", "2"]
    )
    assert scales_in_effect(given.scales, plus) == [1.0, 2.0]
    weclip.save_pretrained(
        tmp_path
    )  # a preset must fit the model's type (test_a_saved_model_with_a_preset_...)
    toy = evaluate.parse_args(["--model_name_or_path", str(tmp_path), "--data_dir", "d", "--preset", "toy"])
    assert scales_in_effect(toy.scales, weclip) == [1.0, 1.125]  # the preset named wins


def test_a_weclip_plus_preset_for_a_bare_clip_is_refused(capsys):
    """generate_pseudo_labels.py --preset voc-plus without --model failed in from_clip with a TypeError."""
    script = example_module("generate_pseudo_labels")
    with pytest.raises(SystemExit):
        script.parse_args(["--output_dir", "o", "--data_dir", "d", "--preset", "voc-plus"])
    error = " ".join(capsys.readouterr().err.split())
    assert (
        "--preset voc-plus is a WeCLIP+ preset, whose CAMs are weighted by a trained decoder (RFM+)" in error
    )
    assert "give --model (a trained WeCLIP+ folder), or a WeCLIP preset (coco, toy, voc)" in error
    assert script.parse_args(["--output_dir", "o", "--data_dir", "d", "--preset", "voc"]).preset == "voc"
    with_model = ["--output_dir", "o", "--data_dir", "d", "--preset", "voc-plus", "--model", "m"]
    assert script.parse_args(with_model).preset == "voc-plus"


@pytest.mark.parametrize("script", ["train", "evaluate"])
def test_a_saved_model_with_a_preset_of_the_other_method_is_refused(script, tmp_path, capsys):
    """A WeCLIP+ --model_name_or_path with --preset voc trained on WeCLIP's recipe (learning rate 10x) and
    evaluate.py scored it with WeCLIP's scales (1.0 0.75), silently; a WeCLIP folder with voc-plus likewise."""
    from conftest import make_tiny_config, make_tiny_plus_config

    parse_args = load_script(script).parse_args
    make_tiny_plus_config().save_pretrained(tmp_path / "plus")
    make_tiny_config().save_pretrained(tmp_path / "weclip")
    for model, preset, method, fitting in (
        ("plus", "voc", "WeCLIP+", "coco-plus, toy, voc-plus"),
        ("weclip", "voc-plus", "WeCLIP", "coco, toy, voc"),
    ):
        with pytest.raises(SystemExit):
            parse_args(
                ["--model_name_or_path", str(tmp_path / model), "--dataset_name", "d", "--preset", preset]
            )
        error = " ".join(capsys.readouterr().err.split())
        assert f"{tmp_path / model} is a {method} model, but --preset {preset} is a" in error
        assert f"use a {method} preset ({fitting}), or leave out --preset" in error
    args = parse_args(
        ["--model_name_or_path", str(tmp_path / "plus"), "--dataset_name", "d", "--preset", "voc-plus"]
    )
    assert args.preset == "voc-plus"
    with pytest.raises(SystemExit):  # a usage error, not a traceback
        parse_args(["--model_name_or_path", str(tmp_path / "nope"), "--dataset_name", "d", "--preset", "voc"])
    assert f"error: --model_name_or_path {tmp_path / 'nope'}: no such folder" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["train", "train_with_trainer"])
def test_the_toy_worlds_sizes_are_refused_with_a_dataset(script, capsys):
    """--toy_train_images with --data_dir was ignored without a word (train_with_trainer.py had no such flag)."""
    parse_args = load_script(script).parse_args
    for flags, message in (
        (
            ["--data_dir", "d", "--toy_val_images", "3"],
            "--toy_val_images sizes the toy world, which --data_dir",
        ),
        (["--toy_train_images", "0"], "toy_train_images: must be >= 1, got 0"),
    ):
        with pytest.raises(SystemExit):
            parse_args(flags)
        assert message in " ".join(capsys.readouterr().err.split())
    args = parse_args(["--toy_train_images", "12"])
    assert (args[0] if isinstance(args, tuple) else args).toy_train_images == 12


@pytest.mark.parametrize("script", ["train", "train_with_trainer"])
def test_dino_with_a_weclip_preset_is_refused_before_loading_data(script, capsys):
    parse_args = load_script(script).parse_args
    with pytest.raises(SystemExit):
        parse_args(["--dataset_name", "d", "--preset", "voc", "--dino_model_name_or_path", "x"])
    error = " ".join(capsys.readouterr().err.split())
    assert "--dino_model_name_or_path builds WeCLIP+, but --preset voc is a WeCLIP preset" in error
    assert "coco-plus, voc-plus" in error
    args = parse_args(["--dataset_name", "d", "--preset", "coco-plus", "--dino_model_name_or_path", "x"])
    args = args[0] if isinstance(args, tuple) else args  # train_with_trainer.py: (its own, TrainingArguments)
    assert args.dino_model_name_or_path == "x"


@pytest.mark.parametrize("script", ["train", "train_with_trainer"])
def test_a_dataset_preset_without_a_dataset_is_refused(script, capsys):
    """--preset voc without data read the toy world and failed on the class names, leaving a locked folder."""
    parse_args = load_script(script).parse_args
    with pytest.raises(SystemExit):
        parse_args(["--preset", "voc"])
    error = " ".join(capsys.readouterr().err.split())
    assert "--preset voc is of its dataset's classes, but no dataset is given" in error
    args = parse_args(["--preset", "toy"])
    assert (args[0] if isinstance(args, tuple) else args).preset == "toy"


def test_a_fresh_model_is_weclip_plus_when_a_dino_is_given(tiny_clip, tiny_dino, monkeypatch):
    from weclip_hf import (
        WeCLIPForSemanticSegmentation,
        WeCLIPPlusForSemanticSegmentation,
        modeling_weclip_plus,
    )
    from weclip_hf.modeling_weclip_plus import model_from_backbones

    names = dict(class_names=["cat", "dog"], background_names=["sky"])
    plus = model_from_backbones(tiny_clip, str(tiny_dino), **names)
    assert isinstance(plus, WeCLIPPlusForSemanticSegmentation) and plus.config.dino_config.hidden_size == 24
    plain = model_from_backbones(tiny_clip, None, decoder_num_layers=2, **names)
    assert type(plain) is WeCLIPForSemanticSegmentation and plain.config.decoder_num_layers == 2
    assert plain.config.class_names == ["cat", "dog"]
    monkeypatch.setattr(modeling_weclip_plus, "DINO_MODEL", str(tiny_dino))  # the default DINOv2, offline
    default = model_from_backbones(tiny_clip, None, plus=True, **names)
    assert isinstance(default, WeCLIPPlusForSemanticSegmentation)
    assert torch.equal(
        default.dino_branch.backbone.state_dict()["embeddings.cls_token"],
        plus.dino_branch.backbone.state_dict()["embeddings.cls_token"],
    )


def test_weclip_trainer_logs_weclip_plus_loss_terms_that_add_up_to_the_total(tiny_clip, tiny_dino, tmp_path):
    """The Trainer's logs give WeCLIP+'s Dice and cross-branch terms beside WeCLIP's, from the first step with
    self-training on, and with gradient accumulation their weighted sum is the logged total."""
    from test_trainer import weclip_trainer

    from weclip_hf.modeling_weclip_plus import model_from_backbones
    from weclip_hf.presets import PRESETS

    torch.manual_seed(0)
    names = {k: PRESETS["toy"].config[k] for k in ("class_names", "background_names")}
    small = dict(decoder_hidden_size=32, decoder_num_layers=1, decoder_num_heads=2, par_num_iter=2)
    model = model_from_backbones(
        tiny_clip, str(tiny_dino), **names, **small, self_training_start_step=0, dice_loss_weight=0.5
    )
    trainer = weclip_trainer(model, tmp_path, max_steps=2, gradient_accumulation_steps=2, max_grad_norm=0.0)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2
    cfg = model.config
    for record in logged:
        expected = (
            record["seg_loss"]
            + cfg.affinity_loss_weight * record["affinity_loss"]
            + cfg.cross_branch_loss_weight * (record["clip_from_dino_loss"] + record["dino_from_clip_loss"])
            + cfg.dice_loss_weight * record["dice_loss"]
        )
        assert record["dice_loss"] > 0 and record["clip_from_dino_loss"] > 0
        assert record["loss"] == pytest.approx(expected, rel=1e-5)


def test_a_box_threshold_that_a_weclip_plus_without_box_mask_never_reads_is_noted(train_script):
    from conftest import make_tiny_plus_config

    args = train_script.parse_args(["--data_dir", "d", "--preset", "voc-plus", "--cam_box_threshold", "0.9"])
    (note,) = train_phase("data_and_model").unread_flags(args, make_tiny_plus_config(rfm_use_box_mask=False))
    assert note.startswith("--cam_box_threshold has no effect")
    assert (
        train_phase("data_and_model").unread_flags(args, make_tiny_plus_config(rfm_use_box_mask=True)) == []
    )
    unset = train_script.parse_args(
        ["--data_dir", "d", "--preset", "voc-plus"]
    )  # the preset's value: no note
    assert (
        train_phase("data_and_model").unread_flags(unset, make_tiny_plus_config(rfm_use_box_mask=False)) == []
    )
    # WeCLIP's CAMs read the threshold (its config has no box-mask switch): no note
    from conftest import make_tiny_config

    weclip = train_script.parse_args(["--data_dir", "d", "--preset", "voc", "--cam_box_threshold", "0.9"])
    assert train_phase("data_and_model").unread_flags(weclip, make_tiny_config()) == []

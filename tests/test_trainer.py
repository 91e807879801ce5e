"""Training with transformers' `Trainer`: the collator, the official optimizer and schedule, the training set, and
examples/train_with_trainer.py on the toy world (the package's toy CLIP, CPU)."""

import dataclasses
import json
import math
import os
import shutil
import signal
import sys
from unittest.mock import Mock

import pytest
import torch
from conftest import ROOT, assert_holds_the_tokenizer_of_its_text_embeddings, torchrun, trainer_phase
from transformers import Trainer, TrainingArguments

from weclip_hf import WeCLIPConfig, WeCLIPForSemanticSegmentation, WeCLIPImageProcessor
from weclip_hf.data import toy
from weclip_hf.data.batches import StreamingWeakSegmentationDataset, WeakSegmentationDataset, collate
from weclip_hf.data.labelled_sets import training_set
from weclip_hf.data.toy import make_toy_dataset, toy_clip_path
from weclip_hf.data.transforms import TrainAugmentation
from weclip_hf.normalization import PixelNormalization
from weclip_hf.presets import PRESETS, TrainingRecipe
from weclip_hf.training import WeCLIPDataCollator, create_optimizer_and_scheduler, warmup_poly_factor

TOY = PRESETS["toy"]


def speed_metrics(prefix: str) -> set[str]:
    """The names of Trainer's speed metrics of an evaluation."""
    return {f"{prefix}_runtime", f"{prefix}_samples_per_second", f"{prefix}_steps_per_second"}


def toy_augmentation() -> TrainAugmentation:
    normalization = PixelNormalization.from_image_processor(WeCLIPImageProcessor())
    return TrainAugmentation(96, (0.8, 1.2), normalization=normalization)


def toy_model(**overrides) -> WeCLIPForSemanticSegmentation:
    torch.manual_seed(0)
    return WeCLIPForSemanticSegmentation.from_clip(
        str(toy_clip_path()), **{**TOY.config_kwargs(), **overrides}
    )


def example(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(3, 8, 8, generator=g),
        "class_labels": torch.tensor([1.0, 0.0, 1.0]),
        "pixel_mask": torch.ones(8, 8, dtype=torch.uint8),
        "labels": torch.randint(0, 4, (8, 8), generator=g),
    }


@pytest.mark.parametrize("fully_supervised", [False, True])
@pytest.mark.parametrize("ignore_padding", [False, True])
def test_collator_gives_the_model_what_its_flags_ask_for(fully_supervised, ignore_padding):
    examples = [example(0), example(1)]
    batch = WeCLIPDataCollator(fully_supervised, ignore_padding)(examples)
    expected = {"pixel_values", "class_labels"} | ({"labels"} if fully_supervised else set())
    expected |= {"pixel_mask"} if ignore_padding else set()
    assert set(batch) == expected  # the masks of a weakly supervised run never reach the model
    for key in expected:
        assert torch.equal(batch[key], torch.stack([examples[0][key], examples[1][key]]))


def test_collator_refuses_full_supervision_without_masks():
    examples = [{k: v for k, v in example(0).items() if k != "labels"}]
    with pytest.raises(ValueError, match="fully_supervised=True .* no.*mask column"):
        WeCLIPDataCollator(fully_supervised=True)(examples)


def test_collator_names_the_sizes_of_images_that_do_not_stack():
    """An evaluation set of VOC-like sizes under plain Trainer with per_device_eval_batch_size > 1 failed with torch's
    bare "stack expects each tensor to be equal size"; the error names the sizes and what to do."""
    other = example(1)
    other["pixel_values"] = torch.zeros(3, 6, 10)
    with pytest.raises(ValueError) as refused:
        WeCLIPDataCollator()([example(0), other])
    assert str(refused.value) == (
        "WeCLIPDataCollator stacks a batch's images, and these differ in size (height, width): [(6, 10), (8, 8)]. "
        "Evaluate images of different sizes with per_device_eval_batch_size=1, or with "
        "weclip_hf.trainer.WeCLIPTrainer, which batches them by size."
    )


def test_warmup_poly_factor_is_the_official_schedule():
    factor = warmup_poly_factor(4, 20)
    assert factor(0) == pytest.approx(1e-6)  # warm-up from 1e-6 of the base rate
    assert factor(2) == pytest.approx(1 - 0.5 * (1 - 1e-6))
    assert factor(4) == pytest.approx(1 - 4 / 20)  # then the poly decay of the whole schedule, not from 1
    assert factor(15) == pytest.approx(0.25)
    assert factor(20) == 0.0 and factor(25) == 0.0  # floored at 0 past the end


def test_optimizer_takes_the_decoder_with_the_recipe():
    model = toy_model()
    recipe = TrainingRecipe(learning_rate=3e-3, weight_decay=0.05, num_warmup_steps=2, max_train_steps=10)
    optimizer, scheduler = create_optimizer_and_scheduler(model, recipe)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable and {id(p) for p in optimizer.param_groups[0]["params"]} == trainable
    assert not any(p.requires_grad for p in model.vision_model.parameters())
    group = optimizer.param_groups[0]
    assert (group["weight_decay"], group["initial_lr"], group["betas"], group["eps"]) == (
        0.05,
        3e-3,
        (0.9, 0.999),
        1e-8,
    )
    for step in range(4):
        assert scheduler.get_last_lr()[0] == pytest.approx(3e-3 * warmup_poly_factor(2, 10)(step))
        optimizer.step()
        scheduler.step()


def test_optimizer_refuses_a_model_without_trainable_parameters():
    model = toy_model()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        create_optimizer_and_scheduler(model, TOY.training)


def test_training_set_of_a_dataset_and_of_a_stream():
    raw = make_toy_dataset(4, seed=0)
    dataset, summary = training_set(raw, 8, toy_augmentation(), seed=3)
    assert isinstance(dataset, WeakSegmentationDataset) and len(dataset) == 4 and dataset.seed == 3
    item = dataset[0]
    assert item["pixel_values"].shape == (3, 96, 96) and item["labels"].shape == (96, 96)
    # the image-level labels come from the masks: the classes present in the first mask
    present = sorted(int(c) for c in item["labels"].unique() if 0 < int(c) < 255)
    assert torch.nonzero(item["class_labels"]).flatten().add(1).tolist() == sorted(raw[0]["image_labels"])
    assert set(present) <= set(raw[0]["image_labels"])
    assert "4 images" in str(summary)
    stream, _ = training_set(raw.to_iterable_dataset(), 8, toy_augmentation(), shuffle_buffer_size=2)
    assert isinstance(stream, StreamingWeakSegmentationDataset)
    assert len(list(stream)) == 4


def test_training_set_requires_masks_when_asked():
    raw = make_toy_dataset(2, seed=0).remove_columns("annotation")
    with pytest.raises(ValueError, match="No mask column found"):
        training_set(raw, 8, toy_augmentation(), require_mask=True)


def trainer_for(model, train_set, output_dir, recipe) -> Trainer:
    args = TrainingArguments(
        output_dir,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        max_steps=recipe.max_train_steps,
        max_grad_norm=0.0,
        logging_steps=1,
        save_steps=3,
        seed=0,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    optimizers = create_optimizer_and_scheduler(model, recipe)
    return Trainer(
        model, args, train_dataset=train_set, data_collator=WeCLIPDataCollator(), optimizers=optimizers
    )


@pytest.mark.parametrize("fully_supervised", [False, True])
def test_plain_trainer_evaluates_the_loss_and_predicts_the_logits_given_the_label_names(
    tmp_path, fully_supervised
):
    """Trainer takes every forward argument whose name holds "label" (class_labels, labels) as the labels and scores
    a loss only for batches that hold all of them: ``label_names`` names the one the collator gives (docs/training.md).
    Its evaluation and predict gather the output fields but `keys_to_ignore_at_inference` (a Python bool among them
    crashed the gathering): the predictions are the logits, whatever compute_metrics receives."""
    recipe = dataclasses.replace(TOY.training, per_device_train_batch_size=2, max_train_steps=1)
    data, _ = training_set(make_toy_dataset(4, seed=0), 8, toy_augmentation())
    model = toy_model()
    trainer = trainer_for(model, data, tmp_path, recipe)
    trainer.data_collator = WeCLIPDataCollator(fully_supervised=fully_supervised)
    trainer.args.label_names = ["labels" if fully_supervised else "class_labels"]
    trainer.label_names = trainer.args.label_names  # Trainer reads them at construction
    seen = []
    trainer.compute_metrics = lambda prediction: (
        seen.append(prediction) or {"pixels": prediction.predictions.size}
    )
    metrics = trainer.evaluate(data)
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_pixels"] == 4 * 9 * 12 * 12
    (prediction,) = seen
    assert prediction.predictions.shape == (4, 9, 12, 12)  # [images, background + 8 classes, grid]
    expected_labels = (4, 96, 96) if fully_supervised else (4, 8)
    assert prediction.label_ids.shape == expected_labels
    predicted = trainer.predict(data)
    assert predicted.predictions.shape == (4, 9, 12, 12) and math.isfinite(predicted.metrics["test_loss"])


def test_the_configs_leave_every_output_field_but_the_predictions_out_of_trainers_gathering():
    from weclip_hf import WeCLIPPlusConfig
    from weclip_hf.modeling_weclip import WeCLIPSemanticSegmenterOutput
    from weclip_hf.modeling_weclip_plus import WeCLIPPlusSemanticSegmenterOutput

    kept = {
        "loss",
        "logits",
        "hidden_states",
        "attentions",
    }  # hidden states and attentions only when asked for
    for config, output in (
        (WeCLIPConfig, WeCLIPSemanticSegmenterOutput),
        (WeCLIPPlusConfig, WeCLIPPlusSemanticSegmenterOutput),
    ):
        fields = {field.name for field in dataclasses.fields(output)}
        assert set(config.keys_to_ignore_at_inference) == fields - kept, config
        assert "keys_to_ignore_at_inference" not in config().to_dict()  # a class attribute, not saved


def test_trainer_trains_the_decoder_with_the_recipe_and_resumes_exactly(tmp_path):
    recipe = dataclasses.replace(
        TOY.training, per_device_train_batch_size=4, num_warmup_steps=2, max_train_steps=6
    )
    train_set, _ = training_set(make_toy_dataset(12, seed=0), 8, toy_augmentation())
    model = toy_model(rfm_start_step=3)  # the RFM joins at step 3: the resumed half runs with it
    clip_before = {k: v.clone() for k, v in model.vision_model.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    trainer = trainer_for(model, train_set, tmp_path, recipe)
    trainer.train()

    assert int(model.training_step) == 6
    assert all(torch.equal(v, model.vision_model.state_dict()[k]) for k, v in clip_before.items())
    assert any(not torch.equal(v, model.decoder.state_dict()[k]) for k, v in decoder_before.items())
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 6 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logged)
    # Trainer logs the rate of the step it just took: the official warm-up + poly schedule
    factor = warmup_poly_factor(recipe.num_warmup_steps, recipe.max_train_steps)
    assert [h["learning_rate"] for h in logged] == pytest.approx(
        [recipe.learning_rate * factor(t) for t in range(6)]
    )

    resumed = toy_model(rfm_start_step=3)
    trainer_for(resumed, train_set, tmp_path, recipe).train(
        resume_from_checkpoint=str(tmp_path / "checkpoint-3")
    )
    assert int(resumed.training_step) == 6  # the RFM's step counter comes back with the weights
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def trainer_script(monkeypatch):
    """examples/train_with_trainer.py, freshly imported, on a toy world of 16 + 4 images."""
    real = toy.make_toy_dataset
    monkeypatch.setattr(
        toy, "make_toy_dataset", lambda n, seed=0: real(min(n, 16) if n > 4 else n, seed=seed)
    )
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    sys.modules.pop("train_with_trainer", None)
    import train_with_trainer

    return train_with_trainer


def run_script(script, *argv) -> dict:
    """``script.main(argv)``, restoring torch's thread count (Trainer sets it)."""
    before = torch.get_num_threads()
    try:
        return script.main([str(a) for a in argv])
    finally:
        torch.set_num_threads(before)


def test_train_with_trainer_script_on_the_toy_world(tmp_path, monkeypatch, capsys):
    """examples/train_with_trainer.py end to end, on a toy world of 12 + 3 images (--toy_train_images /
    --toy_val_images): a model the pipeline loads; the TrainingArguments flags given reach Trainer; a run too short
    for the RFM says so (it never acted, silently)."""
    script = trainer_script(monkeypatch)
    flags = ["--max_steps", 2, "--learning_rate", 1e-3, "--logging_steps", 1, "--save_total_limit", 1]
    flags += ["--toy_train_images", 12, "--toy_val_images", 3]
    results = run_script(script, "--output_dir", tmp_path, *flags)
    batch = TOY.training.per_device_train_batch_size
    assert results["epoch"] == pytest.approx(2 / (12 // batch))  # 12 training images (16 without the flag)
    assert "Note: the RFM acts after 150 steps, and this run ends after 2 steps" in capsys.readouterr().out
    scores = ("eval_miou", "eval_cam_miou", "eval_pseudo_label_miou")
    assert set(results) == {*scores, *speed_metrics("eval"), "epoch", "train_seconds"}
    assert all(0.0 <= results[k] <= 1.0 for k in scores)
    assert json.loads((tmp_path / "eval_results.json").read_text()) == results
    assert f"| miou | {results['eval_miou']:.4f} |" in (tmp_path / "README.md").read_text()
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    image = make_toy_dataset(1, seed=5)[0]["image"]
    masks = segmenter(image)
    assert masks and {m["label"] for m in masks} <= set(TOY.config["class_names"]) | {"background"}
    assert all(m["mask"].size == image.size for m in masks)
    # the toy recipe checkpoints at half the run (step 1 of 2); --save_total_limit 1 kept the last one
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (tmp_path / "checkpoint-2" / "model.safetensors").is_file()
    # the processor is saved in every checkpoint too: the pipeline loads one as it loads the model
    assert (tmp_path / "checkpoint-2" / "preprocessor_config.json").is_file()
    # --learning_rate and --logging_steps replaced the recipe's 2e-3 and 50: the warm-up's rates of 1e-3, each step
    history = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    factor = warmup_poly_factor(TOY.training.num_warmup_steps, 2)
    assert [h["learning_rate"] for h in history if "loss" in h] == pytest.approx(
        [1e-3 * factor(t) for t in (0, 1)]
    )
    recorded = json.loads((tmp_path / "checkpoint-2" / "training_args.json").read_text())
    assert recorded["learning_rate"] == 1e-3 and recorded["max_steps"] == 2 and recorded["seed"] == 0
    # a second run into the folder would replace the model and keep the old checkpoints beside its own: refused
    again = ["--output_dir", tmp_path, "--max_steps", 1, "--seed", 5]
    finished = (
        r"holds a finished run: its trained model \(model.safetensors, train_results.json, eval_results.json, "
        r"all_results.json, trainer_state.json\) and checkpoints"
    )
    with pytest.raises(FileExistsError, match=finished + r" \(checkpoint-2\)\. It is complete"):
        run_script(script, *again)
    shutil.copytree(tmp_path, tmp_path.parent / "resumed")  # for the resume below
    run_script(script, *again, "--overwrite_output_dir")
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]

    # a resume that changes what shapes the training (the toy world and crops of another seed, another schedule)
    # is refused before anything loads, naming each change; a new --logging_steps is taken (Trainer keeps the
    # checkpoint's)
    resumed = tmp_path.parent / "resumed"
    resume = ["--output_dir", resumed, *flags, "--resume_from_checkpoint", "latest"]
    with pytest.raises(
        ValueError, match=r"Cannot resume from .*checkpoint-2: these arguments differ"
    ) as refused:
        run_script(script, *resume, "--max_steps", 6, "--seed", 3)
    assert "--max_steps 2 -> 6; --seed 0 -> 3." in str(refused.value)
    run_script(script, *resume, "--logging_steps", 7, "--toy_val_images", 2)  # as train.py's resume allows
    capsys.readouterr()
    run_script(script, "--output_dir", tmp_path.parent / "rfm", *flags, "--rfm_start_step", 1)
    assert "the RFM acts after" not in capsys.readouterr().out  # it acts from the run's second step
    assert json.loads((tmp_path.parent / "rfm" / "config.json").read_text())["rfm_start_step"] == 1


def test_train_with_trainer_help_is_printed_whatever_model_is_given(monkeypatch, capsys):
    """--help prints the help (exit 0) with a --model_name_or_path that cannot be read (no such folder; a Hub id
    offline and not cached), as with any other flag: the saved model only picks the recipe whose defaults it shows,
    and without it the help shows those the other flags pick. Without --help the same model is refused as before."""
    script = trainer_script(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for model in ("./no-such-model", "nobody/no-such-weclip"):
        with pytest.raises(SystemExit) as shown:
            script.parse_args(["--model_name_or_path", model, "--dataset_name", "x", "--help"])
        out, err = capsys.readouterr()
        assert shown.value.code == 0 and "--model_name_or_path" in out and "error" not in err, (model, err)
    with pytest.raises(SystemExit) as refused:
        script.parse_args(["--model_name_or_path", "./no-such-model", "--dataset_name", "x"])
    assert refused.value.code == 2 and "./no-such-model: no such folder" in capsys.readouterr().err


def test_train_with_trainer_flags_replace_the_recipe_defaults(monkeypatch, capsys):
    """Every TrainingArguments flag is the script's; the recipe (the preset's) fills those left out, its evaluations
    and checkpoints at its points of the schedule however long the run."""
    script = trainer_script(monkeypatch)
    _, toy_args = script.parse_args([])
    recipe = TOY.training
    assert (toy_args.learning_rate, toy_args.per_device_train_batch_size) == (recipe.learning_rate, 8)
    assert (toy_args.warmup_steps, toy_args.max_steps, toy_args.weight_decay) == (20, 500, 0.01)
    assert (toy_args.max_grad_norm, toy_args.save_steps, toy_args.eval_strategy, toy_args.seed) == (
        0,
        250,
        "no",
        0,
    )
    voc = ["--preset", "voc", "--dataset_name", "d"]
    _, voc_args = script.parse_args(voc)
    assert (voc_args.max_steps, voc_args.per_device_train_batch_size, voc_args.warmup_steps) == (30000, 4, 50)
    assert (voc_args.eval_strategy, voc_args.eval_steps, voc_args.save_steps) == ("steps", 2000, 2000)
    args, given = script.parse_args(
        [
            *voc, "--max_steps", "600", "--learning_rate", "1e-3", "--gradient_accumulation_steps", "2",
            "--save_total_limit", "2", "--load_best_model_at_end", "--metric_for_best_model", "miou",
            "--report_to", "tensorboard", "--logging_steps", "5", "--bf16", "--use_cpu", "--weight_decay", "0",
            "--validation_split", "val", "--labels_column", "tags", "--class_names", "cat", "dog",
        ]
    )  # fmt: skip
    assert (given.max_steps, given.eval_steps, given.save_steps) == (600, 40, 40)  # every 1/15 of the run
    assert (given.learning_rate, given.weight_decay, given.warmup_steps) == (1e-3, 0.0, 50)
    assert (given.gradient_accumulation_steps, given.save_total_limit, given.logging_steps) == (2, 2, 5)
    assert given.load_best_model_at_end and given.metric_for_best_model == "miou" and given.bf16
    assert given.report_to == ["tensorboard"]
    assert (args.validation_split, args.labels_column, args.class_names) == ("val", "tags", ["cat", "dog"])
    _, unscored = script.parse_args([*voc, "--validation_split", "none"])
    assert unscored.eval_strategy == "no"
    # epochs count where no --max_steps is given (the recipe's max_steps overrode them silently)
    _, by_epochs = script.parse_args(["--num_train_epochs", "2"])
    assert (by_epochs.max_steps, by_epochs.num_train_epochs) == (-1, 2)
    assert script.parse_args(["--num_train_epochs=2", "--max_steps", "7"])[1].max_steps == 7
    # a run of epochs: the recipe's points of the schedule as ratios of the run (they were the steps of 500)
    assert (by_epochs.save_steps, by_epochs.eval_steps) == (0.5, 0.5)
    # the toy recipe evaluates nowhere: asked to, at its checkpoints (at 50 logging steps the run's ratios and
    # steps were mixed, refused with load_best_model_at_end)
    _, best = script.parse_args(
        ["--num_train_epochs", "2", "--eval_strategy", "steps", "--load_best_model_at_end"]
    )
    assert best.eval_steps == best.save_steps == 0.5
    _, voc_epochs = script.parse_args([*voc, "--num_train_epochs", "1"])
    assert voc_epochs.eval_steps == voc_epochs.save_steps == pytest.approx(1 / 15)
    # the flag was found by its spelling: --help's alias and an abbreviation trained the recipe's 500 steps
    for spelling in ("--num-train-epochs", "--num_train_ep"):
        assert script.parse_args([spelling, "2"])[1].max_steps == -1, spelling
    capsys.readouterr()
    with pytest.raises(SystemExit):  # train.py's flag: a one-line error naming Trainer's
        script.parse_args(["--max_train_steps", "10"])
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.endswith(
        "error: --max_train_steps is examples/train.py's flag: give Trainer's --max_steps (or --num_train_epochs)."
    )


def test_train_with_trainer_checkpoints_a_run_of_epochs_at_the_recipes_points(tmp_path, monkeypatch):
    """With --num_train_epochs the recipe's points stayed steps of its 500-step run (toy: a checkpoint every 250
    steps, none within a 2-step run; VOC: 2,000 of a ~2,645-step epoch): they are ratios of the run Trainer counts;
    a point at the end of the recipe's run falls on the run's last step (Trainer reads a ratio of 1 as step 1)."""
    script = trainer_script(monkeypatch)
    # 16 images in batches of 8: one epoch is 2 steps, the toy recipe checkpoints at half of it
    flags = ["--num_train_epochs", 1, "--validation_split", "none", "--toy_train_images", 16]
    run_script(script, "--output_dir", tmp_path, *flags)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    once = dataclasses.replace(TOY.training, checkpointing_steps=None)
    whole_run = trainer_phase("arguments").recipe_defaults(once, -1, evaluate=False)["save_steps"]
    assert whole_run < 1 and all(math.ceil(steps * whole_run) == steps for steps in (1, 7, 2645, 10**7))


def test_train_with_trainer_sets_config_fields_and_the_crop_that_no_other_flag_sets(
    tmp_path, monkeypatch, capsys
):
    """--config_overrides (transformers' example scripts' flag) sets any config field, --crop_size the training
    crops (and the saved processor's size on the toy world); a misspelt field is refused at parsing. The training
    masks follow an ignore index set so (they were padded, and checked, with 255 whatever the model's)."""
    script = trainer_script(monkeypatch)
    augments = []
    real_training_set = script.training_set
    monkeypatch.setattr(
        script, "training_set", lambda *a, **k: augments.append(a[2]) or real_training_set(*a, **k)
    )
    overrides = "attention_num_maps=3,par_dilations=[1,2],decoder_dropout=0.0,semantic_loss_ignore_index=-100"
    flags = ["--max_steps", 1, "--save_strategy", "no", "--validation_split", "none", "--eval_strategy", "no"]
    run_script(script, "--output_dir", tmp_path, *flags, "--config_overrides", overrides, "--crop_size", 64)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["attention_num_maps"], config["par_dilations"], config["decoder_dropout"]) == (
        3,
        [1, 2],
        0.0,
    )
    assert config["semantic_loss_ignore_index"] == -100 and augments[0].ignore_index == -100
    assert WeCLIPImageProcessor.from_pretrained(tmp_path).size == {"height": 64, "width": 64}
    capsys.readouterr()
    with pytest.raises(SystemExit):
        script.parse_args(["--config_overrides", "atention_num_maps=3"])
    assert (
        "WeCLIPConfig has no field 'atention_num_maps' (did you mean attention_num_maps"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        script.parse_args(["--config_overrides", "attention_num_maps"])
    assert "expected field=value pairs" in capsys.readouterr().err
    plus = script.parse_args(
        ["--dino_model_name_or_path", "d", "--config_overrides", "dice_loss_weight=0.5"]
    )[0]
    assert script.parse_config_overrides(plus.config_overrides, script.config_class(plus)) == {
        "dice_loss_weight": 0.5
    }
    assert script.parse_config_overrides("rfm_use_box_mask=True", script.config_class(plus)) == {
        "rfm_use_box_mask": True  # Python's spelling, as transformers' update_from_string reads it
    }
    quoted = 'prompt_template="a photo of a {}, in the wild",rfm_start_step=None,decoder_dropout=0'
    assert script.parse_config_overrides(quoted, WeCLIPConfig) == {
        "prompt_template": "a photo of a {}, in the wild",  # a comma in double quotes belongs to the value
        "rfm_start_step": None,
        "decoder_dropout": 0,
    }
    # numbers as Python writes them, which JSON does not read (".5" was kept as a string); words stay words
    assert script.parse_config_overrides("cam_box_threshold=.5,prompt_template=a {}", WeCLIPConfig) == {
        "cam_box_threshold": 0.5,
        "prompt_template": "a {}",
    }
    # words float() would take stay words (the config refuses them by name)
    assert script.parse_config_overrides("prompt_template=nan", WeCLIPConfig) == {"prompt_template": "nan"}
    capsys.readouterr()
    with pytest.raises(SystemExit):  # a WeCLIP+ field for a WeCLIP run
        script.parse_args(["--config_overrides", "dice_loss_weight=0.5"])
    assert (
        "error: --config_overrides: WeCLIPConfig has no field 'dice_loss_weight'" in capsys.readouterr().err
    )
    # the configs' catch-all **kwargs is no field (keeping it in config_fields passed)
    with pytest.raises(SystemExit):
        script.parse_args(["--config_overrides", "kwargs=1"])
    assert "error: --config_overrides: WeCLIPConfig has no field 'kwargs'" in capsys.readouterr().err


def test_train_with_trainer_refuses_evaluation_without_a_validation_split(tmp_path, monkeypatch):
    script = trainer_script(monkeypatch)
    argv = [
        "--output_dir",
        tmp_path,
        "--max_steps",
        1,
        "--validation_split",
        "none",
        "--eval_strategy",
        "steps",
    ]
    with pytest.raises(
        ValueError, match="the dataset has no validation split: name one .*--eval_strategy no"
    ):
        run_script(script, *argv, "--eval_steps", 1)


def test_train_with_trainer_refuses_a_training_set_smaller_than_one_batch(tmp_path, monkeypatch):
    """With whole batches only (the recipe's --dataloader_drop_last), 4 toy images in batches of 8 trained 0 steps,
    and the run then saved, scored and carded its untrained model as a finished one; it is refused before training,
    as examples/train.py refuses it."""
    script = trainer_script(monkeypatch)
    monkeypatch.setattr(script.WeCLIPTrainer, "train", lambda *a, **k: pytest.fail("the run trained"))
    argv = ["--output_dir", tmp_path, "--max_steps", 3, "--toy_train_images", 4, "--toy_val_images", 2]
    with pytest.raises(ValueError) as refused:
        run_script(script, *argv)
    assert str(refused.value) == (
        "4 training images are fewer than one batch of 8 images: train on more images, or give a smaller "
        "--per_device_train_batch_size (or fewer processes)."
    )
    assert not (tmp_path / "model.safetensors").exists()


def test_train_with_trainer_refuses_a_checkpoint_folder_that_does_not_exist_at_once(
    tmp_path, monkeypatch, capsys
):
    """A mistyped --resume_from_checkpoint said the checkpoint "records no training arguments", loaded the data
    and the model, and then failed in Trainer ("Can't find a valid checkpoint"); it is refused before anything
    loads, as examples/train.py refuses it."""
    from weclip_hf.checkpointing import CheckpointError

    script = trainer_script(monkeypatch)
    monkeypatch.setattr(script, "load_dataset_splits", lambda *a, **k: pytest.fail("the data was loaded"))
    missing = tmp_path / "checkpoint-7"
    with pytest.raises(CheckpointError) as refused:
        run_script(script, "--output_dir", tmp_path, "--resume_from_checkpoint", missing)
    assert str(refused.value) == f"Checkpoint folder {missing} does not exist."
    not_one = tmp_path / "step_3"  # a folder, but no Trainer checkpoint (e.g. one of examples/train.py)
    not_one.mkdir()
    with pytest.raises(CheckpointError) as refused:
        run_script(script, "--output_dir", tmp_path / "o", "--resume_from_checkpoint", not_one)
    assert str(refused.value) == (
        f"{not_one} is no Trainer checkpoint (it holds no trainer_state.json): give a checkpoint-N folder of a "
        "train_with_trainer.py run, or 'latest'."
    )
    assert capsys.readouterr().out == ""


def test_train_with_trainer_saves_a_checkpoint_when_stopped_by_a_signal(tmp_path, monkeypatch, capsys):
    """Ctrl-C / SIGTERM during the training killed the run at once, losing every step since the last checkpoint
    (Trainer saves none). The step under way ends, a checkpoint of it is saved (also off --save_steps) and the run
    stops there, with 128 + the signal's number as its exit status and no final model; --resume_from_checkpoint
    latest then continues it to its end. Signals act at once again once the training is over. With
    --save_total_limit 1 and --load_best_model_at_end, Trainer's end of training removed it (not the best one)."""
    script = trainer_script(monkeypatch)

    class SignalAtStep3(script.RecordRunCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3 and not args.resume_from_checkpoint:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(script, "RecordRunCallback", SignalAtStep3)
    before = signal.getsignal(signal.SIGTERM)
    flags = ["--output_dir", tmp_path, "--max_steps", 8, "--toy_train_images", 8, "--toy_val_images", 2]
    flags += ["--eval_strategy", "steps", "--eval_steps", 2, "--save_steps", 2, "--save_total_limit", 1]
    flags += ["--load_best_model_at_end", "--metric_for_best_model", "miou"]
    stopped = run_script(script, *flags)
    assert stopped == {"stopped_at": 3, "stopped_by_signal": signal.SIGTERM}
    assert script.exit_status(stopped) == 143
    assert signal.getsignal(signal.SIGTERM) == before
    # the best (evaluated) and the signal's
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert {"optimizer.pt", "scheduler.pt", "training_args.json"} <= {
        p.name for p in (tmp_path / "checkpoint-3").iterdir()
    }
    assert not (tmp_path / "model.safetensors").exists() and not (tmp_path / "eval_results.json").exists()
    assert (
        f"stopped by signal 15 at step 3; checkpoint saved to {tmp_path / 'checkpoint-3'}"
        in capsys.readouterr().out
    )
    results = run_script(script, *flags, "--resume_from_checkpoint", "latest")
    assert results.get("epoch") == 8 and (tmp_path / "model.safetensors").is_file(), results


def test_train_with_trainer_runs_the_phases_do_train_and_do_eval_ask_for(tmp_path, monkeypatch, capsys):
    """--do_train / --do_eval / --do_predict were accepted and ignored (--do_eval alone trained a new model). As in
    transformers' example scripts: --do_eval alone scores the saved model of --model_name_or_path (the figures of the
    run that saved it) without training; --do_train alone trains without a final evaluation; neither given, the run
    trains and scores as before; --do_predict, and flags the phases asked for would ignore, are refused."""
    script = trainer_script(monkeypatch)
    flags = ["--max_steps", 1, "--toy_train_images", 8, "--toy_val_images", 2, "--save_strategy", "no"]
    trained = run_script(
        script, "--output_dir", tmp_path / "trained", *flags
    )  # neither flag: train and score
    assert "eval_miou" in trained and (tmp_path / "trained" / "eval_results.json").is_file()
    untested = tmp_path / "untested"
    assert run_script(script, "--output_dir", untested, *flags, "--do_train") == {}
    assert (untested / "model.safetensors").is_file() and not (untested / "eval_results.json").exists()

    monkeypatch.setattr(script.WeCLIPTrainer, "train", lambda *a, **k: pytest.fail("the run trained"))
    scored = tmp_path / "scored"
    saved = ["--model_name_or_path", tmp_path / "trained", "--toy_val_images", 2]
    results = run_script(script, "--output_dir", scored, "--do_eval", *saved)
    miou = ("eval_miou", "eval_cam_miou", "eval_pseudo_label_miou")
    assert {k: results[k] for k in miou} == {k: trained[k] for k in miou}
    assert json.loads((scored / "eval_results.json").read_text()) == results
    assert not (scored / "model.safetensors").exists()

    refusals = {
        ("--do_eval", "--do_predict", *saved): "--do_predict: this script predicts no test split",
        ("--do_eval",): "--do_eval without --do_train scores a saved model: give --model_name_or_path",
        ("--do_train", "--do_eval", *saved): "--model_name_or_path is the saved model that --do_eval without",
        ("--do_eval", *saved, "--crop_size", 64): "--crop_size acts on a run that trains",
        ("--do_eval", *saved, "--resume_from_checkpoint", "latest"): "--resume_from_checkpoint acts on a run",
        ("--do_train", "False"): "--do_train and --do_eval are both off: nothing to do",
        # (was: "Validation split 'none' not found" after loading the model)
        (
            "--do_eval",
            *saved,
            "--validation_split",
            "none",
        ): "--do_eval scores the model on --validation_split",
        (
            "--do_train",
            "--do_eval",
            "--validation_split",
            "none",
        ): "--do_eval scores the model on --validation_split",
    }
    capsys.readouterr()
    for argv, error in refusals.items():
        with pytest.raises(SystemExit):
            script.parse_args(["--output_dir", str(tmp_path / "o"), *map(str, argv)])
        assert error in capsys.readouterr().err, argv
    # a run asked to score its model on data without a validation split (neither flag given: where there is one)
    monkeypatch.setattr(script, "load_dataset_splits", lambda *a, **k: ("train", None, {}))
    with pytest.raises(
        ValueError, match="--do_eval scores the model, but the dataset has no validation split"
    ):
        run_script(
            script, "--output_dir", tmp_path / "none", "--do_train", "--do_eval", "--eval_strategy", "no"
        )


def test_train_with_trainer_phase_checks_refuse_what_a_saved_models_scoring_ignores(
    tmp_path, monkeypatch, capsys
):
    """--do_eval without --do_train refuses every flag that only builds or publishes a trained model
    (--clip_model_name_or_path and --push_to_hub too, not only --crop_size and --resume_from_checkpoint);
    --crop_size 0 is refused; only --do_train / --do_eval given and asking for a final evaluation make a dataset
    without a validation split an error (neither given, the run scores where the data has one)."""
    script = trainer_script(monkeypatch)
    # a saved model's folder (its config suffices: parsing reads nothing else), which parsing accepts
    WeCLIPConfig(class_names=["cat", "dog"]).save_pretrained(tmp_path / "model")
    saved = ["--output_dir", str(tmp_path), "--do_eval", "--model_name_or_path", str(tmp_path / "model")]
    refusals = {
        (*saved, "--clip_model_name_or_path", "c"): "--clip_model_name_or_path acts on a run that trains",
        (*saved, "--push_to_hub"): "--push_to_hub acts on a run that trains",
        ("--crop_size", "0"): "--crop_size must be >= 1, got 0.",
    }
    for argv, error in refusals.items():
        capsys.readouterr()
        with pytest.raises(SystemExit):
            script.parse_args(list(argv))
        assert error in capsys.readouterr().err, argv
    asked = {
        (): False,
        ("--do_train",): False,
        ("--do_train", "--do_eval"): True,
        ("--eval_strategy", "steps"): False,
    }
    for argv, evaluation in asked.items():
        assert script.parse_args(list(argv))[0].evaluation_asked is evaluation, argv


def test_train_with_trainer_recipe_checkpoints_a_run_shorter_than_its_checkpoint_interval():
    """A run shorter than half the recipe's checkpoint interval (toy: 1 step of 500, one checkpoint at step 250)
    still checkpoints and evaluates at a step (Trainer refuses 0): its last."""
    recipe = trainer_phase("arguments").recipe_defaults
    defaults = recipe(TOY.training, 1, evaluate=True)
    assert defaults["save_steps"] == defaults["eval_steps"] == 1


def test_train_with_trainer_trajectory_leaves_out_the_phase_flags_and_resolves_local_paths(
    tmp_path, monkeypatch
):
    """A resume may add --do_train / --do_eval (they shape no training) and name the data folder otherwise (its
    recorded path is the resolved one): neither changes what a checkpoint records."""
    script = trainer_script(monkeypatch)
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    runs = (["--data_dir", "data"], ["--data_dir", str(tmp_path / "data") + "/", "--do_train", "--do_eval"])
    first, again = (trainer_phase("resume").trajectory(*script.parse_args(argv)) for argv in runs)
    assert first == again and first["data_dir"] == str(tmp_path / "data")


def test_train_with_trainer_data_is_seeded_by_seed_and_skips_empty_images_as_its_preset_says(monkeypatch):
    """The toy world is drawn with --seed, and the label reading skips the images without a class where the preset
    says so (COCO's)."""
    script = trainer_script(monkeypatch)
    data = trainer_phase("data")
    args, training_args = script.parse_args(["--seed", "5"])
    assert data.data_source(args, training_args).seed == 5
    cfg = WeCLIPConfig(class_names=["cat", "dog"])
    assert [data.label_reading(args, cfg, skip).skip_empty for skip in (True, False)] == [True, False]


def test_train_with_trainer_evaluation_of_a_saved_model_refuses_data_without_a_validation_split(
    tmp_path, monkeypatch
):
    """--do_eval alone on data without a validation split is refused, naming the remedy, before any scoring."""
    script = trainer_script(monkeypatch)
    toy_model().save_pretrained(tmp_path / "model")
    # a dataset of a training split only
    monkeypatch.setattr(
        trainer_phase("evaluation"), "load_dataset_splits", lambda *a, **k: ("train", None, {})
    )
    argv = ["--output_dir", tmp_path / "o", "--do_eval", "--model_name_or_path", tmp_path / "model"]
    with pytest.raises(
        ValueError, match="--do_eval scores the model, but the dataset has no validation split"
    ):
        run_script(script, *argv)


def test_train_with_trainer_scores_a_saved_model_with_its_classes_and_its_presets_settings(
    tmp_path, monkeypatch
):
    """--do_eval alone scores the saved model with its own classes, with the evaluation settings of the preset it
    was trained with: a dataset whose label column (a ClassLabel) names the background, which a run taking the
    dataset's classes refuses, is scored; the images at VOC's and COCO's long side (512), not the saved processor's
    96; an image without any class kept by VOC's preset, left out by COCO's (as its official validation list)."""
    import datasets
    import numpy as np
    from PIL import Image

    script = trainer_script(monkeypatch)
    model = toy_model()
    names = ["background", *model.config.class_names[:2]]
    labels = datasets.List(datasets.ClassLabel(names=names))
    features = datasets.Features(
        {"image": datasets.Image(), "annotation": datasets.Image(), "labels": labels}
    )
    mask = np.array([[0, 1], [2, 1]], np.uint8).repeat(12, 0).repeat(12, 1)
    masks = [Image.fromarray(m) for m in (mask, mask, np.zeros_like(mask))]
    rows = {
        "image": [Image.new("RGB", (24, 24))] * 3,
        "annotation": masks,
        "labels": [[0, 1, 2], [0, 1, 2], [0]],
    }
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"validation": split}).save_to_disk(tmp_path / "data")
    evaluation, scored = trainer_phase("evaluation"), []

    class RecordingTrainer(evaluation.WeCLIPTrainer):
        def evaluate(self, *args, **kwargs) -> dict:
            scored.append((len(self.eval_dataset), self._evaluation_input_size()))
            return {"eval_miou": 0.5}

    monkeypatch.setattr(evaluation, "WeCLIPTrainer", RecordingTrainer)
    for preset in ("voc", "coco"):
        model.config.training_preset = preset
        model.save_pretrained(tmp_path / preset)
        WeCLIPImageProcessor(size={"longest_edge": 96}).save_pretrained(tmp_path / preset)
        saved = ["--model_name_or_path", tmp_path / preset, "--dataset_path", tmp_path / "data"]
        results = run_script(script, "--output_dir", tmp_path / f"scored-{preset}", "--do_eval", *saved)
        assert results == {"eval_miou": 0.5}
    assert scored == [(3, 512), (2, 512)]


def test_train_with_trainer_run_end_message_says_what_a_resume_trains_again_and_how_to_score(tmp_path):
    """A signal in the end of a 5-step run: a resume from checkpoint-3 trains steps 4-5 again; the saved model's
    scoring is suggested once it is saved and its final evaluation is not done; without a checkpoint or anything
    saved, only a new run trains it again. The parts of a run without a final evaluation leave it out; a pushed run's
    end with the push to its repository."""
    run_end = trainer_phase("run_end")
    training_args = TrainingArguments(output_dir=str(tmp_path))
    parts = run_end.run_end_parts(training_args, evaluate=True)
    unscored = run_end.run_end_parts(training_args, evaluate=False)
    assert [part for part in parts if part not in unscored] == [
        "the final evaluation (eval_results.json, all_results.json)"
    ]
    pushed = TrainingArguments(output_dir=str(tmp_path), push_to_hub=True, hub_model_id="me/toy")
    assert run_end.run_end_parts(pushed, evaluate=False) == [*unscored, "the push to me/toy"]
    score = "Score the saved model"
    end = run_end.RunEnd(tmp_path, 5, overwrite=False, parts=parts)
    assert "No checkpoint was saved (--save_strategy no)" in end.message(2) and score not in end.message(2)
    (tmp_path / "checkpoint-3").mkdir()
    said = end.message(15)
    assert "from checkpoint-3 it trains steps 4-5 again" in said and "No checkpoint" not in said
    assert score not in said  # nothing is saved yet
    end.done = 3  # the model, its figures, its tokenizer
    assert f"{score}: the same data flags with --do_eval --model_name_or_path {tmp_path}" in end.message(15)


@pytest.mark.parametrize("when", ["final evaluation", "final save", "last checkpoint"])
def test_train_with_trainer_says_what_is_saved_when_a_signal_stops_the_end_of_the_run(
    tmp_path, monkeypatch, capsys, when
):
    """A Ctrl-C in the final evaluation or the final save of the model (or one that came in Trainer's save of the last
    step, then re-raised after the training) stopped the run at once without a word on what was saved. It still stops
    at once, saying what is saved, what is not, and how to finish: resume the last checkpoint, or score the saved
    model."""
    script = trainer_script(monkeypatch)
    flags = ["--max_steps", 2, "--toy_train_images", 8, "--toy_val_images", 2]
    sent = []  # once: the resumed run below ends undisturbed

    def interrupt() -> None:
        if not sent:
            sent.append(signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    if when == "final evaluation":
        evaluate = script.WeCLIPTrainer.evaluate

        def interrupted(trainer, *args, **kwargs):
            if not trainer.is_in_train:
                interrupt()
            return evaluate(trainer, *args, **kwargs)

        monkeypatch.setattr(script.WeCLIPTrainer, "evaluate", interrupted)
    elif when == "final save":
        save_model = script.WeCLIPTrainer.save_model

        def interrupted_save(trainer, *args, **kwargs):
            if not trainer.is_in_train:  # not a checkpoint's
                interrupt()
            return save_model(trainer, *args, **kwargs)

        monkeypatch.setattr(script.WeCLIPTrainer, "save_model", interrupted_save)
    else:

        class SignalInTheLastSave(script.RecordRunCallback):
            def on_save(self, args, state, control, **kwargs):
                super().on_save(args, state, control, **kwargs)
                if state.global_step == 2:
                    interrupt()

        monkeypatch.setattr(script, "RecordRunCallback", SignalInTheLastSave)
    with pytest.raises(KeyboardInterrupt):
        run_script(script, "--output_dir", tmp_path, *flags)
    said = capsys.readouterr().out.splitlines()[-1]
    assert said.startswith("stopped by signal 2 after the training (step 2): ")
    resume = (
        "Finish it: the same command with --resume_from_checkpoint latest (from checkpoint-2 it trains no step "
        "again, then runs this end whole)."
    )
    assert resume in said
    if when == "final evaluation":
        assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "eval_results.json").exists()
        assert f"saved in {tmp_path}: the trained model (model.safetensors, " in said
        assert "not done: the final evaluation (eval_results.json, all_results.json), the model card" in said
        assert f"--do_eval --model_name_or_path {tmp_path} --output_dir {tmp_path}." in said
    else:
        assert not (tmp_path / "model.safetensors").exists()
        assert "nothing of its end is saved; not done: the trained model (" in said
    results = run_script(script, "--output_dir", tmp_path, *flags, "--resume_from_checkpoint", "latest")
    assert "eval_miou" in results and (tmp_path / "README.md").is_file()


def test_train_with_trainer_says_which_parts_of_the_end_a_signal_left_undone(tmp_path, monkeypatch, capsys):
    """A signal in the model card's writing: the final evaluation is among what is saved, and the run that started
    over (--overwrite_output_dir) is finished without it; in the final save of a --do_train run (no final
    evaluation), the final evaluation is named nowhere."""
    script = trainer_script(monkeypatch)
    flags = ["--max_steps", 1, "--toy_train_images", 8, "--toy_val_images", 2]
    for method, phase in (("create_model_card", ["--overwrite_output_dir"]), ("save_model", ["--do_train"])):
        real = getattr(script.WeCLIPTrainer, method)

        def interrupted(trainer, *args, real=real, **kwargs):
            if not trainer.is_in_train:  # not a checkpoint's
                os.kill(os.getpid(), signal.SIGINT)
            return real(trainer, *args, **kwargs)

        monkeypatch.setattr(script.WeCLIPTrainer, method, interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_script(script, "--output_dir", tmp_path / method, *flags, *phase)
        said = capsys.readouterr().out.splitlines()[-1]
        monkeypatch.setattr(script.WeCLIPTrainer, method, real)
        if method == "create_model_card":
            done = "the final evaluation (eval_results.json, all_results.json); not done: the model card"
            resume = "the same command without --overwrite_output_dir with --resume_from_checkpoint latest"
            assert done in said and resume in said
        else:
            assert "not done: the trained model (" in said and "final evaluation" not in said


def test_train_with_trainer_reads_resume_from_checkpoint_true_as_trainer_does(tmp_path, monkeypatch):
    """--resume_from_checkpoint True, which `Trainer.train(resume_from_checkpoint=True)` reads as the newest
    checkpoint of output_dir, was refused as "Checkpoint folder True does not exist."; it is 'latest' (any case),
    and False is no resume."""
    script = trainer_script(monkeypatch)
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt"):
        (folder / name).write_text("{}")
    for spelling, spec in (("True", "latest"), ("true", "latest"), ("False", None), ("latest", "latest")):
        _, args = script.parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", spelling])
        assert args.resume_from_checkpoint == spec
        assert script.checkpoint_to_resume(args) == (str(folder) if spec else None)


def test_train_with_trainer_refuses_a_checkpoint_saved_without_optimizer_and_schedule(tmp_path, monkeypatch):
    """A checkpoint of --save_only_model (no optimizer.pt, scheduler.pt, rng_state.pth) was resumed, restarting the
    warm-up and AdamW's moments where the script promises an exact continuation; it is refused before anything
    loads, given by name or as 'latest'; a checkpoint of Trainer's usual files is taken."""
    from weclip_hf.checkpointing import CheckpointError

    script = trainer_script(monkeypatch)
    monkeypatch.setattr(script, "load_dataset_splits", lambda *a, **k: pytest.fail("the data was loaded"))
    # the files Trainer writes into a checkpoint of --save_only_model on a CPU (besides the model's code)
    model_only = ("config.json", "model.safetensors", "trainer_state.json", "training_args.bin")
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    for name in model_only:
        (folder / name).write_text("{}")
    for spec in (folder, "latest"):
        with pytest.raises(CheckpointError) as refused:
            run_script(script, "--output_dir", tmp_path, "--resume_from_checkpoint", spec)
        assert str(refused.value) == (
            f"{folder} holds no optimizer or scheduler state (optimizer.pt, scheduler.pt): it was saved with "
            "--save_only_model, and a run cannot be resumed from it exactly (its warm-up and AdamW's moments would "
            "start over). Resume from a checkpoint of a run without --save_only_model, or leave "
            "--resume_from_checkpoint out to start a new run."
        )
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / name).write_text("")
    given = TrainingArguments(tmp_path, resume_from_checkpoint="latest", report_to="none", use_cpu=True)
    assert script.checkpoint_to_resume(given) == str(folder)


class DataLoading(Exception):
    """Raised by a stub of the data loading: a resumed run passed its checks, which run before anything loads."""


def test_train_with_trainer_records_how_its_run_computed_and_warns_a_resume_that_computes_otherwise(
    tmp_path, monkeypatch, capsys
):
    """A Trainer run resumed on another device type (--use_cpu, CUDA_VISIBLE_DEVICES), with torch.compile on or off
    or with another backend or mode, or with other torch threads (OMP_NUM_THREADS) sums floats in another order: it
    ends within float32 rounding of the uninterrupted run only. It resumed without a word (its checkpoints recorded
    nothing of it); each checkpoint records its run's `Computation` (computation.json), and such a resume is warned,
    not refused, before anything loads, by examples/train.py's warning naming the Trainer's flags. The same
    computation resumes without a word, and so does a checkpoint written before the record."""
    script = trainer_script(monkeypatch)
    out = tmp_path / "o"
    run = ["--output_dir", out, "--max_steps", 1, "--save_steps", 1, "--toy_train_images", 8]
    run_script(script, *run, "--validation_split", "none")
    checkpoint = out / "checkpoint-1"
    record_file = checkpoint / "computation.json"
    threads = torch.get_num_threads()
    eager_cpu = {
        "device": "cpu",
        "torch_compile": False,
        "torch_compile_backend": None,
        "torch_compile_mode": None,
    }
    assert json.loads(record_file.read_text()) == {**eager_cpu, "threads": threads}
    monkeypatch.setattr(script, "load_dataset_splits", Mock(side_effect=DataLoading))

    def printed(*flags) -> str:
        capsys.readouterr()
        with pytest.raises(DataLoading):
            run_script(
                script, *run, "--validation_split", "none", "--resume_from_checkpoint", "latest", *flags
            )
        return capsys.readouterr().out

    def warning(changes: str, remedy: str) -> str:
        return (
            f"Warning: {checkpoint} was trained computing otherwise than this run: {changes}. Float sums then run in "
            "another order, so the weights and eval_results.json equal the uninterrupted run's only up to "
            f"float32 rounding (~1e-5), not bit for bit. For an exact resume, resume {remedy}.\n"
        )

    assert printed() == ""
    # the run's compiled training forward on a GPU (the record planted: no GPU here), resumed eagerly on the CPU
    compiled = {"torch_compile": True, "torch_compile_backend": "inductor", "torch_compile_mode": "default"}
    record_file.write_text(json.dumps({"device": "cuda", **compiled, "threads": None}))
    assert printed() == warning(
        "device type cuda -> cpu; --torch_compile on (inductor, mode default) -> off",
        "on a cuda device (without --use_cpu), with --torch_compile --torch_compile_backend inductor "
        "--torch_compile_mode default",
    )
    # other threads (the Trainer has no flag for them)
    record_file.write_text(json.dumps({**eager_cpu, "threads": threads + 1}))
    assert printed() == warning(
        f"torch threads per process (OMP_NUM_THREADS, by default the cores available) {threads + 1} -> {threads}",
        f"with OMP_NUM_THREADS={threads + 1}",
    )
    # torch.compile turned on by its flag, or by a backend (nothing compiles before the data and model load)
    record_file.write_text(json.dumps({**eager_cpu, "threads": threads}))
    off = "without --torch_compile (nor --torch_compile_backend or --torch_compile_mode, which turn it on)"
    assert printed("--torch_compile") == warning("--torch_compile off -> on (inductor, mode default)", off)
    assert printed("--torch_compile_backend", "eager") == warning("--torch_compile off -> on (eager)", off)
    # a checkpoint written before the record
    record_file.unlink()
    assert printed("--torch_compile") == ""


def test_trajectory_arguments_record_the_number_of_processes_and_leave_the_free_arguments_out(tmp_path):
    """`trajectory_arguments`, which a resume of examples/train_with_trainer.py compares: the `TRAJECTORY_ARGUMENTS`
    and the number of processes (the global batch is per_device_train_batch_size x world_size: a checkpoint of a
    two-process run resumed on one draws other batches); how often the run logs is free. Without world_size every
    test passed."""
    from weclip_hf.trainer import TRAJECTORY_ARGUMENTS, trajectory_arguments

    args = TrainingArguments(
        tmp_path, use_cpu=True, report_to="none", logging_steps=3, per_device_train_batch_size=2, seed=4
    )
    recorded = trajectory_arguments(args)
    assert recorded["world_size"] == args.world_size == 1
    assert recorded["per_device_train_batch_size"] == 2 and recorded["seed"] == 4
    assert set(recorded) == {*(name for name in TRAJECTORY_ARGUMENTS if name in args.to_dict()), "world_size"}


def test_trainer_computation_is_what_the_trainer_computes_with(tmp_path):
    """`trainer_computation` records the torch.compile that `Trainer` runs: with no backend given, the one
    `TrainingArguments` picks (inductor on a CPU or GPU); with no mode given, accelerate's "default", which is
    inductor's default mode on every device (examples/train.py picks reduce-overhead on a GPU), and no mode of
    another backend's (torch passes it none: None, as train.py records a backend's default). A change of any is
    warned naming the Trainer's flags."""
    from weclip_hf.checkpointing import Computation
    from weclip_hf.trainer import TRAINER_TERMS, trainer_computation
    from weclip_hf.trajectory import computation_change_warning

    def computation(**arguments) -> Computation:
        return trainer_computation(TrainingArguments(tmp_path, use_cpu=True, report_to="none", **arguments))

    threads = torch.get_num_threads()
    eager = Computation("cpu", False, None, None, threads)
    assert computation() == eager
    inductor = Computation("cpu", True, "inductor", "default", threads)
    assert computation(torch_compile=True) == inductor
    assert computation(torch_compile_mode="max-autotune") == Computation(
        "cpu", True, "inductor", "max-autotune", threads
    )
    assert computation(torch_compile_backend="eager") == Computation("cpu", True, "eager", None, threads)
    assert computation(torch_compile_backend="eager", torch_compile_mode="default") == computation(
        torch_compile_backend="eager"
    )

    def remedy(recorded: Computation, current: Computation) -> str:
        warning = computation_change_warning(tmp_path, recorded, current, TRAINER_TERMS)
        return warning.split("For an exact resume, resume ")[1]

    gpu = dataclasses.replace(inductor, device="cuda", torch_compile_mode="max-autotune", threads=None)
    assert remedy(inductor, gpu) == (
        "on the CPU (--use_cpu), with --torch_compile --torch_compile_backend inductor --torch_compile_mode default."
    )
    assert remedy(gpu, inductor) == (
        "on a cuda device (without --use_cpu), with --torch_compile --torch_compile_backend inductor "
        "--torch_compile_mode max-autotune."
    )
    assert remedy(computation(torch_compile_backend="eager"), inductor) == (
        "with --torch_compile --torch_compile_backend eager."
    )
    assert computation_change_warning(tmp_path, inductor, inductor, TRAINER_TERMS) is None
    # a backend accelerate does not know is refused naming the flag (accelerate: "'FOO' is not a valid DynamoBackend")
    with pytest.raises(ValueError, match=r"--torch_compile_backend .foo. is no torch.compile backend"):
        computation(torch_compile_backend="foo")


def test_train_with_trainer_keeps_the_results_and_log_history_of_transformers_example_scripts(
    tmp_path, monkeypatch
):
    """The final folder held eval_results.json alone: no train_results.json (train_loss, train_runtime), no
    all_results.json and no trainer_state.json, so that with --save_strategy no the log history (each logged loss)
    was lost. It holds what transformers' run_semantic_segmentation.py writes, and a second run calls it finished,
    also without an evaluation."""
    script = trainer_script(monkeypatch)
    flags = ["--max_steps", 2, "--logging_steps", 1, "--save_strategy", "no"]
    flags += ["--toy_train_images", 8, "--toy_val_images", 2]
    results = run_script(script, "--output_dir", tmp_path, *flags)
    train = json.loads((tmp_path / "train_results.json").read_text())
    assert {"train_loss", "train_runtime", "epoch"} <= set(train)
    assert json.loads((tmp_path / "eval_results.json").read_text()) == results
    assert json.loads((tmp_path / "all_results.json").read_text()) == {**train, **results}
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2]
    assert history[-1]["train_loss"] == train["train_loss"]
    # the card names the data as train.py's does
    card = (tmp_path / "README.md").read_text()
    assert "On the toy world of weclip-hf (generated offline), split 'validation':" in card
    # a run without evaluation is finished too: its train_results.json says so
    untested = tmp_path.parent / "untested"
    run_script(
        script, "--output_dir", untested, *flags, "--validation_split", "none", "--save_strategy", "steps"
    )
    assert not (untested / "eval_results.json").exists() and (untested / "trainer_state.json").is_file()
    with pytest.raises(FileExistsError, match=r"holds a finished run: .*train_results.json.*It is complete"):
        run_script(script, "--output_dir", untested, *flags, "--validation_split", "none")


def test_train_with_trainer_pushes_the_final_model_card_and_figures_in_one_commit(
    tmp_path, monkeypatch, fake_hub
):
    """save_model pushed a "Model save" commit before the final evaluation: the published card said "No
    evaluation was run." and eval_results.json was never published. One commit after the evaluation holds the
    model, the card with its figures and eval_results.json (and all_results.json, train_results.json), and none of
    the folder's other files (training_args.bin, trainer_state.json)."""
    script = trainer_script(monkeypatch)
    flags = ["--max_steps", 1, "--save_strategy", "no", "--toy_train_images", 8, "--toy_val_images", 2]
    results = run_script(
        script, "--output_dir", tmp_path, *flags, "--push_to_hub", "--hub_model_id", "me/toy"
    )
    assert [(c["repo_id"], c["commit_message"]) for c in fake_hub.uploaded] == [("me/toy", "End of training")]
    files, copy = fake_hub.uploaded[0]["files"], fake_hub.uploaded[0]["copy"]
    assert sorted(f for f in files if not f.endswith(".py")) == [
        "README.md",
        "all_results.json",
        "config.json",
        "eval_results.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",  # the CLIP's, of the text embeddings: new class names need nothing but the folder
        "tokenizer_config.json",
        "train_results.json",
    ]
    assert_holds_the_tokenizer_of_its_text_embeddings(tmp_path)
    assert {"configuration_weclip.py", "modeling_weclip.py"} <= set(files)  # the code auto_map loads
    # saved, not published: the pickled arguments, the log
    assert (tmp_path / "training_args.bin").is_file() and (tmp_path / "trainer_state.json").is_file()
    assert json.loads((copy / "eval_results.json").read_text()) == results
    card = (copy / "README.md").read_text()
    assert f"| miou | {results['eval_miou']:.4f} |" in card and card == (tmp_path / "README.md").read_text()


def test_train_with_trainer_pushes_checkpoints_with_the_records_a_resume_checks(
    tmp_path, monkeypatch, fake_hub
):
    """With --hub_strategy checkpoint, Trainer pushes each checkpoint before the callbacks' on_save, so that the
    pushed last-checkpoint/ lacked training_args.json and computation.json (written on save): a run resumed from it
    skipped the checks of its arguments and computation ("records no training arguments"). They are pushed."""
    script = trainer_script(monkeypatch)
    flags = ["--max_steps", 2, "--toy_train_images", 8, "--toy_val_images", 2, "--push_to_hub"]
    run_script(
        script, "--output_dir", tmp_path, *flags, "--hub_model_id", "me/toy", "--hub_strategy", "checkpoint"
    )
    pushed = [c for c in fake_hub.uploaded if c.get("path_in_repo") == "last-checkpoint"]
    assert [c["commit_message"] for c in pushed] == [
        f"Training in progress, step {s}, checkpoint" for s in (1, 2)
    ]
    for commit in pushed:
        step = commit["commit_message"].split(", ")[1].removeprefix("step ")
        recorded = json.loads((commit["copy"] / "training_args.json").read_text())
        assert recorded == json.loads((tmp_path / f"checkpoint-{step}" / "training_args.json").read_text())
        assert (commit["copy"] / "computation.json").is_file()


def test_weclip_trainer_cards_load_the_repository_the_trainer_created(tmp_path, fake_hub):
    """With ``hub_model_id`` a name without a user, the cards' usage code loaded that name (`push_to_hub`
    passes the last part of hub_model_id as model_name), a repository that does not exist: it loads the full
    id the Hub gave the repository, in the pushed card and in the one the script writes
    (create_model_card())."""
    trainer = weclip_trainer(toy_model(), tmp_path, push_to_hub=True, hub_model_id="weclip", max_steps=1)
    trainer.push_to_hub()
    trainer.create_model_card()
    pushed = fake_hub.uploaded[0]["copy"] / "README.md"
    for card in (pushed.read_text(), (tmp_path / "README.md").read_text()):
        assert 'segmenter = pipeline("image-segmentation", model="me/weclip")\n' in card
        assert 'processor = AutoImageProcessor.from_pretrained("me/weclip", trust_remote_code=True)\n' in card
        assert "\n# weclip\n" in card


def test_trainer_trains_weclip_plus_heads_and_keeps_both_backbones_frozen(tmp_path):
    from conftest import make_tiny_plus_config

    from weclip_hf import WeCLIPPlusForSemanticSegmentation

    torch.manual_seed(0)
    model = WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config())
    g = torch.Generator().manual_seed(0)
    examples = [
        {"pixel_values": torch.randn(3, 48, 64, generator=g), "class_labels": torch.eye(4)[i % 4]}
        for i in range(8)
    ]
    frozen = {
        name: p.clone()
        for name, p in model.named_parameters()
        if name.startswith(("vision_model.", "dino_branch.backbone."))
    }
    trained = {name: p.clone() for name, p in model.named_parameters() if p.requires_grad}
    recipe = TrainingRecipe(per_device_train_batch_size=4, num_warmup_steps=1, max_train_steps=3)
    trainer_for(model, examples, tmp_path, recipe).train()

    assert int(model.training_step) == 3
    params = dict(model.named_parameters())
    assert frozen and all(torch.equal(p, params[name]) for name, p in frozen.items())
    assert not set(trained) & set(frozen)
    assert any(
        not torch.equal(p, params[name]) for name, p in trained.items() if name.startswith("dino_branch.head")
    )
    assert any(not torch.equal(p, params[name]) for name, p in trained.items() if name.startswith("decoder."))


# ---- WeCLIPTrainer ---------------------------------------------------------------------------------------------


def weclip_trainer(model, output_dir, **arguments):
    from weclip_hf.trainer import WeCLIPTrainer

    eval_dataset = arguments.pop("eval_dataset", None)
    eval_modes = arguments.pop("eval_modes", ("pred", "pseudo"))
    trainer_kwargs = arguments.pop("trainer_kwargs", {})
    defaults = dict(
        per_device_train_batch_size=4, logging_steps=1, report_to="none", disable_tqdm=True, use_cpu=True
    )
    args = TrainingArguments(output_dir, **{**defaults, **arguments})
    train_set, _ = training_set(make_toy_dataset(12, seed=0), 8, toy_augmentation())
    return WeCLIPTrainer(
        model,
        args,
        train_dataset=train_set,
        eval_dataset=eval_dataset,
        eval_modes=eval_modes,
        **trainer_kwargs,
    )


@pytest.mark.parametrize("step", [4, 5])
def test_weclip_trainer_resumes_exactly_in_the_middle_of_a_later_epoch(tmp_path, step):
    """12 images in batches of 4: epoch 1 is steps 4-6. Resumed from step 4 the run drew epoch 0's crops (the
    skipping loader does not set the training set's epoch) and ended with other weights. Resumed from step 5 (epoch
    1.67 done) the set's epoch is the one begun, 1, not the nearest (rounding gave 2: that epoch's crops)."""
    arguments = dict(max_steps=6, save_steps=step, max_grad_norm=0.0, seed=0)
    whole = toy_model()
    weclip_trainer(whole, tmp_path / "whole", **arguments).train()
    resumed = toy_model()
    weclip_trainer(resumed, tmp_path / "whole", **arguments).train(
        resume_from_checkpoint=str(tmp_path / "whole" / f"checkpoint-{step}")
    )
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_weclip_trainer_gives_persistent_loader_workers_each_epochs_crops(tmp_path):
    """The training set's epoch (which seeds its crops and flips) was a plain attribute set in the main process, which
    never reached persistent DataLoader workers: with them every epoch drew epoch 0's crops. 12 images in batches of
    4: steps 4-6 are epoch 1, and a persistent worker gives the batches the main process gives."""

    def batches(output_dir, **loading) -> list[torch.Tensor]:
        trainer = weclip_trainer(toy_model(), output_dir, max_steps=6, max_grad_norm=0.0, seed=0, **loading)
        seen, compute_loss = [], trainer.compute_loss
        trainer.compute_loss = lambda model, inputs, *a, **k: (
            seen.append(inputs["pixel_values"].clone()) or compute_loss(model, inputs, *a, **k)
        )
        trainer.train()
        return seen

    main = batches(tmp_path / "main")
    workers = batches(tmp_path / "workers", dataloader_num_workers=1, dataloader_persistent_workers=True)
    assert len(main) == len(workers) == 6
    for step, (a, b) in enumerate(zip(main, workers), 1):
        assert torch.equal(a, b), f"step {step}"


def test_weclip_trainer_builds_the_official_optimizer_and_schedule_from_the_arguments(tmp_path):
    model = toy_model()
    trainer = weclip_trainer(
        model, tmp_path, learning_rate=3e-3, weight_decay=0.05, warmup_steps=2, max_steps=5, max_grad_norm=0.0
    )
    trainer.train()
    (group,) = trainer.optimizer.param_groups  # one group: the decay also on biases and LayerNorms
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in group["params"]} == trainable and group["weight_decay"] == 0.05
    assert any(p.ndim == 1 for p in group["params"])  # biases and norms among them
    logged = [h["learning_rate"] for h in trainer.state.log_history if "loss" in h]
    factor = warmup_poly_factor(2, 5)
    assert logged == pytest.approx([3e-3 * factor(t) for t in range(5)])
    # batches from the default collator: the toy masks never reached the model (a supervised loss would differ)
    assert trainer.data_collator == WeCLIPDataCollator()


def test_weclip_trainer_logs_each_loss_term_beside_the_total(tmp_path):
    """The Trainer's logs held the total loss only (train.py's log every term): each term's mean since the last
    log is given, and with gradient accumulation they add up to the logged total as the loss weights say."""
    model = toy_model()
    trainer = weclip_trainer(model, tmp_path, max_steps=2, gradient_accumulation_steps=2, max_grad_norm=0.0)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2
    weight = model.config.affinity_loss_weight
    for record in logged:
        assert record["loss"] == pytest.approx(
            record["seg_loss"] + weight * record["affinity_loss"], rel=1e-5
        )


def test_weclip_trainer_keeps_the_optimizer_and_schedule_that_are_asked_for(tmp_path):
    trainer = weclip_trainer(
        toy_model(), tmp_path, learning_rate=1e-3, max_steps=3, optim="sgd", lr_scheduler_type="constant"
    )
    trainer.train()
    assert isinstance(
        trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer,
        torch.optim.SGD,
    )
    assert [h["learning_rate"] for h in trainer.state.log_history if "loss" in h] == pytest.approx([1e-3] * 3)


def toy_evaluation_set(count: int = 4):
    from weclip_hf.data.labelled_sets import evaluation_set

    normalization = PixelNormalization.from_image_processor(WeCLIPImageProcessor())
    return evaluation_set(make_toy_dataset(count, seed=1_000_000), 8, 255, normalization)[0]


def test_weclip_trainer_evaluates_images_of_several_sizes_in_batches_as_one_by_one(tmp_path):
    """Evaluation batches group images by size (`collate_by_size`): VOC-like sets of mixed sizes need no batch of
    one (train_with_trainer.py evaluated VOC one image at a time for that)."""
    import datasets
    from PIL import Image

    from weclip_hf.data.labelled_sets import evaluation_set

    toy = make_toy_dataset(4, seed=1_000_000)
    rows = [toy[i] for i in range(4)]
    for row in rows[1::2]:  # two of the four at another size
        row["image"] = row["image"].resize((80, 64))
        row["annotation"] = row["annotation"].resize((80, 64), Image.NEAREST)
    mixed = datasets.Dataset.from_list(rows, features=toy.features)
    normalization = PixelNormalization.from_image_processor(WeCLIPImageProcessor())
    eval_set = evaluation_set(mixed, 8, 255, normalization)[0]
    model = toy_model()
    results = [
        weclip_trainer(
            model, tmp_path / str(size), eval_dataset=eval_set, per_device_eval_batch_size=size
        ).evaluate()
        for size in (4, 1)
    ]
    for key in ("eval_miou", "eval_pseudo_label_miou"):
        assert results[0][key] == pytest.approx(results[1][key], abs=1e-12), key


def test_weclip_trainer_scores_the_validation_set_during_training_and_keeps_the_best(tmp_path):
    from weclip_hf.evaluation import evaluate_segmentation

    val_set = toy_evaluation_set()
    model = toy_model()
    trainer = weclip_trainer(
        model,
        tmp_path,
        eval_dataset=val_set,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="miou",
    )
    trainer.train()
    evaluations = [h for h in trainer.state.log_history if "eval_miou" in h]
    assert [h["step"] for h in evaluations] == [2, 4]
    assert all(0.0 <= h[k] <= 1.0 for h in evaluations for k in ("eval_miou", "eval_pseudo_label_miou"))
    best = max(evaluations, key=lambda h: h["eval_miou"])
    assert trainer.state.best_metric == best["eval_miou"]
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best['step']}")
    trainer.create_model_card()  # the card gives the figures of the model it describes: the best one
    from huggingface_hub import ModelCard

    (result,) = ModelCard.load(tmp_path / "README.md").data.eval_results
    assert result.metric_value == pytest.approx(best["eval_miou"])
    # the numbers are evaluate_segmentation's on the model as it is now (the best one, reloaded)
    loader = torch.utils.data.DataLoader(val_set, batch_size=8, collate_fn=collate)
    direct = evaluate_segmentation(model, loader, ["pred"], progress=False)["pred"]["mean_iou"]
    assert trainer.evaluate()["eval_miou"] == pytest.approx(direct) == pytest.approx(best["eval_miou"])


def test_weclip_trainer_evaluates_named_sets_and_refuses_none(tmp_path):
    trainer = weclip_trainer(toy_model(), tmp_path, max_steps=1, eval_modes=("pred",))
    with pytest.raises(ValueError, match="needs an eval_dataset"):
        trainer.evaluate()
    metrics = trainer.evaluate({"a": toy_evaluation_set(2), "b": toy_evaluation_set(3)})
    # Trainer.log adds the epoch, as to Trainer.evaluate's metrics
    speed = {*speed_metrics("eval_a"), *speed_metrics("eval_b")}
    assert set(metrics) == {"eval_a_miou", "eval_b_miou", *speed, "epoch"}
    assert metrics["eval_b_samples_per_second"] > 0


def test_weclip_trainer_is_exported_lazily():
    import subprocess

    import weclip_hf
    from weclip_hf.trainer import WeCLIPTrainer

    assert weclip_hf.WeCLIPTrainer is WeCLIPTrainer and "WeCLIPTrainer" in weclip_hf.__all__
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        weclip_hf.NoSuchThing  # noqa: B018
    code = "import sys, weclip_hf; print('transformers.trainer' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )


def test_weclip_trainer_refuses_unknown_evaluation_modes_at_once(tmp_path):
    with pytest.raises(ValueError, match=r"eval_modes \['bogus'\]: choose one or more of"):
        weclip_trainer(toy_model(), tmp_path, max_steps=1, eval_modes=("bogus",))
    # none at all: an evaluation that scores nothing (its figures only the speed metrics)
    with pytest.raises(ValueError, match=r"eval_modes \[\]: choose one or more of"):
        weclip_trainer(toy_model(), tmp_path, max_steps=1, eval_modes=())


def test_weclip_trainer_keeps_a_given_optimizer_class_or_optimizer_with_trainers_schedule(tmp_path):
    trainer = weclip_trainer(toy_model(), tmp_path / "a", max_steps=1)
    trainer.optimizer_cls_and_kwargs = (torch.optim.SGD, {"lr": 0.5})
    assert isinstance(trainer.create_optimizer(), torch.optim.SGD)
    # optimizers=(optimizer, None): Trainer's linear decay from the warm-up's end, not the official one
    from weclip_hf.trainer import WeCLIPTrainer

    model = toy_model()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    args = TrainingArguments(
        tmp_path / "b",
        max_steps=4,
        warmup_steps=2,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    train_set, _ = training_set(make_toy_dataset(8, seed=0), 8, toy_augmentation())
    given = WeCLIPTrainer(model, args, train_dataset=train_set, optimizers=(optimizer, None))
    given.train()
    assert [h["learning_rate"] for h in given.state.log_history if "loss" in h] == pytest.approx(
        [0.0, 5e-4, 1e-3, 5e-4]
    )


def test_weclip_trainer_uses_the_fused_adamw_it_is_asked_for(tmp_path):
    fused = weclip_trainer(toy_model(), tmp_path, max_steps=1, optim="adamw_torch_fused").create_optimizer()
    plain = weclip_trainer(toy_model(), tmp_path, max_steps=1, optim="adamw_torch").create_optimizer()
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    assert len(fused.param_groups) == 1 and len(plain.param_groups) == 1


def test_weclip_trainer_evaluates_a_named_set_and_scores_nothing_as_nan(tmp_path):
    sets = {"a": toy_evaluation_set(2), "b": toy_evaluation_set(3)}
    trainer = weclip_trainer(toy_model(), tmp_path, max_steps=1, eval_modes=("pred",), eval_dataset=sets)
    assert set(trainer.evaluate("b")) == {"eval_miou", *speed_metrics("eval"), "epoch"}
    with pytest.raises(ValueError, match=r"No evaluation set named 'c'; the trainer's are \['a', 'b'\]"):
        trainer.evaluate("c")
    ignored = [{**item, "labels": torch.full_like(item["labels"], 255)} for item in toy_evaluation_set(2)]
    with pytest.warns(RuntimeWarning, match="no valid pixel"):
        metrics = trainer.evaluate(ignored)
    assert math.isnan(metrics["eval_miou"])  # comparable by metric_for_best_model, unlike None


def test_weclip_trainer_evaluates_under_the_runs_mixed_precision(tmp_path):
    model = toy_model()
    autocast = []
    model.decoder.register_forward_pre_hook(
        lambda module, args: autocast.append(torch.is_autocast_enabled("cpu"))
    )
    trainer = weclip_trainer(model, tmp_path, max_steps=1, bf16=True, eval_modes=("pred",))
    trainer.evaluate(toy_evaluation_set(1))  # before train(), as within it
    assert autocast == [True]


@pytest.mark.parametrize("name", ["compute_metrics", "preprocess_logits_for_metrics"])
def test_weclip_trainer_refuses_metric_functions_it_would_never_call(tmp_path, name):
    with pytest.raises(ValueError, match=f"WeCLIPTrainer does not call {name}: its evaluate"):
        weclip_trainer(toy_model(), tmp_path, max_steps=1, trainer_kwargs={name: lambda *a: {}})


def test_weclip_trainer_pushes_no_token_and_loadable_step_commits(tmp_path, fake_hub):
    """`Trainer` pickles its arguments (with ``hub_token``) as training_args.bin into the output folder, each
    checkpoint and every commit it pushes; the step commits lacked the model's code files (``auto_map``), so they did
    not load with ``trust_remote_code``. Neither any more: the commits are recorded with a fake Hub."""
    token = "hf_NOT_A_REAL_TOKEN_123"
    out = tmp_path / "run"
    trainer = weclip_trainer(
        toy_model(),
        out,
        push_to_hub=True,
        hub_model_id="me/weclip",
        hub_token=token,
        max_steps=2,
        save_steps=1,
    )
    trainer.train()
    trainer.push_to_hub()
    commits = [c["copy"] for c in fake_hub.uploaded]
    assert len(commits) >= 2  # a step commit and the final one
    for folder in (out, *commits):
        for file in (f for f in folder.rglob("*") if f.is_file()):
            assert token.encode() not in file.read_bytes(), file
    step_commit = commits[0]
    assert {"configuration_weclip.py", "modeling_weclip.py"} <= {f.name for f in step_commit.glob("*.py")}
    assert torch.load(out / "training_args.bin", weights_only=False).hub_token is None
    assert trainer.args.hub_token == token  # the running trainer still pushes with it


def test_weclip_trainer_refuses_a_config_its_checkpoints_could_not_save(tmp_path):
    """A config edited after the model was built so that its fields disagree (each is checked alone as it is
    set) fails at the trainer's construction, not at its first checkpoint save (steps in)."""
    model = toy_model()
    model.config.decoder_num_heads = 7
    with pytest.raises(ValueError, match=r"not saved: decoder_hidden_size \(\d+\) must be divisible"):
        weclip_trainer(model, tmp_path)


def test_weclip_trainer_evaluates_within_train_in_the_runs_precision_with_bf16_full_eval(tmp_path):
    """bf16_full_eval casts the model only for an evaluation outside train(), as `Trainer` does: within train() the
    run's mixed precision applies, and the training goes on in float32 (casting there, every test passed)."""
    model = toy_model()
    trainer = weclip_trainer(
        model,
        tmp_path,
        max_steps=2,
        eval_strategy="steps",
        eval_steps=1,
        eval_modes=("pred",),
        bf16_full_eval=True,
        eval_dataset=toy_evaluation_set(1),
    )
    trainer.train()
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_weclip_trainer_card_leaves_out_the_figures_that_scored_nothing(tmp_path):
    """An evaluation that scored no pixel of a mode logs NaN (so that metric_for_best_model compares), and the card
    reports the finite figures only, as its docstring says (without the check it claimed an mIoU of nan)."""
    from huggingface_hub import ModelCard

    trainer = weclip_trainer(toy_model(), tmp_path, max_steps=1)
    trainer.state.log_history = [{"eval_miou": math.nan, "eval_pseudo_label_miou": 0.25, "step": 1}]
    trainer.create_model_card()
    card = ModelCard.load(tmp_path / "README.md")
    assert not card.data.eval_results and "| miou |" not in card.text
    assert "| pseudo_label_miou | 0.2500 |" in card.text


def test_weclip_trainer_card_reports_the_best_models_evaluation_and_the_license_given(tmp_path):
    """With load_best_model_at_end the model is the best checkpoint's, and so are the card's figures (the last
    evaluation's passed every test); a license given is the card's (always "mit" passed)."""
    from huggingface_hub import ModelCard

    steps = dict(eval_strategy="steps", save_strategy="steps", eval_steps=1, save_steps=1)
    trainer = weclip_trainer(
        toy_model(),
        tmp_path,
        max_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="miou",
        eval_dataset=toy_evaluation_set(1),
        **steps,
    )
    trainer.state.log_history = [{"eval_miou": 0.5, "step": 1}, {"eval_miou": 0.25, "step": 2}]
    trainer.state.best_model_checkpoint = str(tmp_path / "checkpoint-1")
    trainer.create_model_card(license="apache-2.0")
    card = ModelCard.load(tmp_path / "README.md")
    (result,) = card.data.eval_results
    assert result.metric_value == 0.5 and card.data.license == "apache-2.0"


def test_weclip_trainer_evaluation_speed_counts_the_images_and_batches(tmp_path):
    """`Trainer`'s speed metrics of an evaluation: 3 images in batches of 2 are 3 samples and 2 steps (counting
    the batches as samples passed every test)."""
    trainer = weclip_trainer(
        toy_model(), tmp_path, max_steps=1, eval_modes=("pred",), per_device_eval_batch_size=2
    )
    metrics = trainer.evaluate(toy_evaluation_set(3))
    assert metrics["eval_samples_per_second"] * metrics["eval_runtime"] == pytest.approx(3, rel=0.05)
    assert metrics["eval_steps_per_second"] * metrics["eval_runtime"] == pytest.approx(2, rel=0.05)


def test_weclip_trainer_full_bf16_evaluation_with_memory_metrics(tmp_path):
    from weclip_hf.evaluation import evaluate_segmentation

    val_set = toy_evaluation_set(2)
    model = toy_model()
    trainer = weclip_trainer(
        model, tmp_path, max_steps=1, eval_modes=("pred",), bf16_full_eval=True, skip_memory_metrics=False
    )
    metrics = trainer.evaluate(val_set)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # cast as Trainer casts, outside train()
    loader = torch.utils.data.DataLoader(val_set, batch_size=8, collate_fn=collate)
    direct = evaluate_segmentation(model, loader, ["pred"], progress=False)["pred"]["mean_iou"]
    assert metrics["eval_miou"] == pytest.approx(direct)
    assert {"eval_mem_cpu_alloc_delta", "eval_mem_cpu_peaked_delta"} <= set(metrics)


def test_weclip_trainer_loads_the_evaluation_with_the_arguments_workers(tmp_path):
    val_set = toy_evaluation_set(3)
    plain = weclip_trainer(toy_model(), tmp_path / "a", max_steps=1, eval_modes=("pred",))
    workers = weclip_trainer(
        toy_model(), tmp_path / "b", max_steps=1, eval_modes=("pred",), dataloader_num_workers=1,
        dataloader_prefetch_factor=3,
    )  # fmt: skip
    loader = workers._evaluation_loader(val_set)
    assert (loader.num_workers, loader.prefetch_factor, len(loader.dataset)) == (1, 3, 3)
    assert workers.evaluate(val_set)["eval_miou"] == plain.evaluate(val_set)["eval_miou"]


def test_weclip_trainer_refuses_label_smoothing_and_a_best_model_metric_it_does_not_report(tmp_path):
    with pytest.raises(ValueError, match=r"label_smoothing_factor=0.1: WeCLIP's .* take no label smoothing"):
        weclip_trainer(toy_model(), tmp_path, max_steps=1, label_smoothing_factor=0.1)
    best = dict(max_steps=2, eval_strategy="steps", eval_steps=1, save_steps=1, load_best_model_at_end=True)
    best["eval_dataset"] = toy_evaluation_set(1)
    # None: Trainer's "loss"; "cam" is not among the eval_modes; pred_miou: the mode's name, not the figure's
    for metric in (None, "cam_miou", "pred_miou", "eval_a_miou"):
        with pytest.raises(
            ValueError,
            match=r"metric_for_best_model='(loss|cam_miou|pred_miou|eval_a_miou)', which .* set metric_for_best",
        ):
            weclip_trainer(toy_model(), tmp_path, metric_for_best_model=metric, **best)
    for metric in ("miou", "eval_miou", "eval_pseudo_label_miou"):
        weclip_trainer(toy_model(), tmp_path, metric_for_best_model=metric, **best)
    best["eval_dataset"] = {"a": toy_evaluation_set(1), "b": toy_evaluation_set(1)}
    for metric in ("miou", "eval_c_miou", "a_cam_miou"):  # a dict: the set's name comes first
        with pytest.raises(ValueError, match=r"set metric_for_best_model to one of \['eval_a_miou'"):
            weclip_trainer(toy_model(), tmp_path, metric_for_best_model=metric, **best)
    for metric in ("a_miou", "eval_b_pseudo_label_miou"):
        weclip_trainer(toy_model(), tmp_path, metric_for_best_model=metric, **best)


def test_weclip_trainer_refuses_a_best_model_metric_it_does_not_report_without_load_best_model_at_end(
    tmp_path,
):
    """Trainer looks metric_for_best_model up at every evaluation, also for save_strategy="best", a metric given
    alone, and reduce_lr_on_plateau (which defaults it to "loss"): only load_best_model_at_end was checked, and the
    others crashed with a KeyError at the first evaluation."""
    steps = dict(max_steps=2, eval_strategy="steps", eval_steps=1, eval_dataset=toy_evaluation_set(1))
    for arguments, used_by in (
        (dict(save_strategy="best", metric_for_best_model="loss"), r'\(save_strategy="best"\)'),
        (dict(metric_for_best_model="cam_miou"), r"\(the record of the best model, state.best_metric\)"),
        (dict(lr_scheduler_type="reduce_lr_on_plateau"), r"\(lr_scheduler_type='reduce_lr_on_plateau'\)"),
    ):
        with pytest.raises(
            ValueError, match=used_by + r": set metric_for_best_model to one of \['eval_miou'"
        ):
            weclip_trainer(toy_model(), tmp_path, **arguments, **steps)
    trainer = weclip_trainer(
        toy_model(), tmp_path, lr_scheduler_type="reduce_lr_on_plateau", metric_for_best_model="miou", **steps
    )
    trainer.train()  # the plateau schedule steps on the mIoU
    assert [h["step"] for h in trainer.state.log_history if "eval_miou" in h] == [1, 2]
    # no evaluation during training: nothing looks the metric up
    weclip_trainer(toy_model(), tmp_path, max_steps=1, metric_for_best_model="loss")


def test_weclip_trainer_card_reports_a_named_evaluation_set(tmp_path):
    """With a dict eval_dataset the figures are logged as eval_<name>_miou: the card said "No evaluation"."""
    from huggingface_hub import ModelCard

    sets = {"a": toy_evaluation_set(2), "b": toy_evaluation_set(3)}
    trainer = weclip_trainer(
        toy_model(), tmp_path, max_steps=1, eval_dataset=sets, metric_for_best_model="eval_b_miou"
    )
    metrics = trainer.evaluate()
    trainer.create_model_card()
    (result,) = ModelCard.load(tmp_path / "README.md").data.eval_results
    assert result.metric_value == pytest.approx(metrics["eval_b_miou"])  # the set the best model is chosen by


def test_weclip_trainer_evaluates_a_subset_with_the_crf_and_names_a_raw_split(tmp_path):
    """A Subset hid the set's pixel statistics (the CRF modes failed on "normalization ... None"); a raw split
    raised a bare KeyError 'pixel_values'."""
    val_set = toy_evaluation_set(3)
    trainer = weclip_trainer(toy_model(), tmp_path, max_steps=1, eval_modes=("pred", "pred_crf"))
    metrics = trainer.evaluate(torch.utils.data.Subset(val_set, [0, 2]))
    assert 0.0 <= metrics["eval_miou_crf"] <= 1.0
    with pytest.raises(
        ValueError, match=r"eval_dataset items hold \['image', 'label'\], not the 'pixel_values'"
    ):
        trainer.evaluate([{"image": None, "label": None}])


def test_weclip_trainer_predict_says_what_to_use_instead(tmp_path):
    trainer = weclip_trainer(toy_model(), tmp_path, max_steps=1)
    with pytest.raises(NotImplementedError, match=r"score a dataset with masks with evaluate\(\)"):
        trainer.predict(toy_evaluation_set(1))


def test_collator_names_a_missing_pixel_mask():
    examples = [{k: v for k, v in example(0).items() if k != "pixel_mask"}]
    with pytest.raises(ValueError, match="ignore_padding=True needs each example's pixel_mask"):
        WeCLIPDataCollator(ignore_padding=True)(examples)


EVALUATE_ON_EACH_PROCESS = """
import json, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from test_trainer import toy_evaluation_set, toy_model, weclip_trainer
sets = {"one": toy_evaluation_set(1), "three": toy_evaluation_set(3)}  # an empty shard; uneven shards
trainer = weclip_trainer(toy_model(), sys.argv[1], max_steps=1, per_device_eval_batch_size=1, eval_dataset=sets)
metrics = trainer.evaluate()
rank = trainer.accelerator.process_index
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
    json.dump({"processes": trainer.accelerator.num_processes, **metrics}, f)
trainer.accelerator.wait_for_everyone()
trainer.accelerator.end_training()  # the process group left to the interpreter's exit aborted a process (gloo)
"""


def test_weclip_trainer_evaluation_sums_every_processs_share(tmp_path):
    """Two CPU processes (torchrun, gloo): each scores every 2nd image, the confusion matrices are summed, and both
    report the single process's figures, also where one process has no image."""
    import subprocess

    from conftest import train_env

    script = tmp_path / "evaluate_each.py"
    script.write_text(EVALUATE_ON_EACH_PROCESS)
    command = [*torchrun(2), str(script), str(tmp_path), str(ROOT / "tests")]
    proc = subprocess.run(command, env=train_env(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sets = {"one": toy_evaluation_set(1), "three": toy_evaluation_set(3)}
        trainer = weclip_trainer(
            toy_model(), tmp_path / "single", max_steps=1, per_device_eval_batch_size=1, eval_dataset=sets
        )
        single = trainer.evaluate()
    finally:
        torch.set_num_threads(before)
    scores = [k for k in single if k.endswith("_miou")]
    assert len(scores) == 4 and all(r["processes"] == 2 for r in ranks)
    for r in ranks:
        assert {k: r[k] for k in scores} == {k: single[k] for k in scores}


def test_weclip_trainer_starts_the_rfm_at_an_optimizer_step_with_gradient_accumulation(tmp_path):
    model = toy_model(rfm_start_step=2)
    used = []
    model.register_forward_hook(
        lambda module, args, out: used.append(out.used_rfm) if module.training else None
    )
    trainer = weclip_trainer(
        model, tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3
    )
    trainer.train()
    assert used == [False, False, False, False, True, True]  # steps 0 and 1 without the RFM, step 2 with it
    assert int(model.training_step) == 3  # steps done, as examples/train.py leaves it


def test_weclip_trainer_writes_the_weclip_model_card_with_its_evaluation(tmp_path):
    from huggingface_hub import ModelCard

    trainer = weclip_trainer(
        toy_model(),
        tmp_path,
        max_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        eval_dataset=toy_evaluation_set(2),
    )
    trainer.train()
    evaluation = next(h for h in trainer.state.log_history if "eval_miou" in h)
    trainer.create_model_card(dataset="someone/pets", tags="toy")
    card = ModelCard.load(tmp_path / "README.md")
    (result,) = (
        card.data.eval_results
    )  # the decoder's mIoU is the model's result; the pseudo labels only listed
    assert (result.metric_name, result.dataset_type) == ("miou", "someone/pets")
    assert result.metric_value == pytest.approx(evaluation["eval_miou"])
    assert f"| pseudo_label_miou | {evaluation['eval_pseudo_label_miou']:.4f} |" in card.text
    assert "WeCLIPTrainer" in card.text and {"weclip", "toy"} <= set(card.data.tags)


def test_weclip_trainer_card_names_the_data_and_split_it_was_scored_on(tmp_path):
    """The card of a Trainer run named its data "custom" with no split (train.py's names the toy world, a local
    folder or the Hub dataset, and the split): create_model_card takes ``dataset_description`` and
    ``dataset_split``, the split by default the evaluation set's."""
    from huggingface_hub import ModelCard

    val_set = toy_evaluation_set(2)
    val_set.split = "validation"  # as evaluation_set records a split loaded by name
    trainer = weclip_trainer(
        toy_model(), tmp_path, max_steps=1, eval_strategy="steps", eval_steps=1, eval_dataset=val_set
    )
    trainer.train()
    trainer.create_model_card(dataset_description="pets (a local dataset)")
    card = ModelCard.load(tmp_path / "README.md")
    (result,) = card.data.eval_results
    assert (result.dataset_name, result.dataset_split) == ("pets (a local dataset)", "validation")
    assert "On pets (a local dataset), split 'validation':" in card.text


def test_weclip_trainer_evaluates_at_eval_long_side_else_as_its_processor_resizes(tmp_path):
    """Without eval_long_side the images were scored at their own size whatever the trainer's processor does:
    the figures were not those of the pipeline's predictions."""
    val_set = toy_evaluation_set(1)  # 96 x 96 images
    cases = [
        (dict(trainer_kwargs={"processing_class": WeCLIPImageProcessor(), "eval_long_side": 48}), (48, 48)),
        (
            dict(trainer_kwargs={"processing_class": WeCLIPImageProcessor(size={"height": 64, "width": 80})}),
            (64, 80),
        ),
        (
            dict(trainer_kwargs={"processing_class": WeCLIPImageProcessor(size={"shortest_edge": 32})}),
            (32, 32),
        ),
        (dict(), (96, 96)),  # no processor: the images' own size
    ]
    for arguments, expected in cases:
        model = toy_model()
        seen = []
        model.register_forward_pre_hook(
            lambda module, args, kwargs, seen=seen: seen.append(tuple(kwargs["pixel_values"].shape[-2:])),
            with_kwargs=True,
        )
        weclip_trainer(model, tmp_path, max_steps=1, eval_modes=("pred",), **arguments).evaluate(val_set)
        assert seen == [expected], arguments

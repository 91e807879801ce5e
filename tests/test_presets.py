"""Presets: one place fixes a setting's config, dataset layout, training recipe and evaluation, and every reader
(config, data loading, train.py, evaluate.py) takes its values from there."""

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import train_phase

from weclip_hf import WeCLIPConfig
from weclip_hf.configuration_weclip_plus import WeCLIPPlusConfig
from weclip_hf.data.sources import DataSource, load_dataset_splits
from weclip_hf.presets import PRESETS, get_preset

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script_for_presets", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    saved = sys.path[:]
    sys.path.insert(0, str(EXAMPLES))  # as when run: its sibling modules (train.py's training/)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


CONFIG_CLASSES = {"weclip": WeCLIPConfig, "weclip_plus": WeCLIPPlusConfig}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_a_valid_config(name):
    preset = get_preset(name)
    config = CONFIG_CLASSES[preset.model_type].from_preset(name)
    for key, value in preset.config.items():
        assert getattr(config, key) == (list(value) if isinstance(value, tuple) else value), key
    assert config.num_labels == len(preset.config["class_names"]) + 1
    # the config gets copies: editing them leaves the preset alone
    config.class_names.append("extra")
    assert "extra" not in get_preset(name).config["class_names"]


def test_from_preset_applies_overrides_and_names_unknown_presets():
    assert WeCLIPConfig.from_preset("coco", rfm_start_step=7).rfm_start_step == 7
    with pytest.raises(ValueError, match="Unknown preset 'cityscapes'.*coco"):
        WeCLIPConfig.from_preset("cityscapes")
    with pytest.raises(ValueError, match="'voc-plus' configures a 'weclip_plus' model"):
        WeCLIPConfig.from_preset("voc-plus")


@pytest.mark.parametrize("name, argv", [("toy", []), ("coco", ["--dataset_name", "d", "--preset", "coco"])])
def test_train_script_takes_its_recipe_from_the_preset(name, argv):
    args = _script("train").parse_args(argv)
    preset = get_preset(name)
    for field in dataclasses.fields(preset.training):
        assert getattr(args, field.name) == getattr(preset.training, field.name), field.name
    assert args.msf_scales == list(preset.evaluation.msf_scales)
    assert args.eval_long_side == preset.evaluation.eval_long_side
    if preset.dataset.toy_sizes:
        assert (args.toy_train_images, args.toy_val_images) == preset.dataset.toy_sizes
    # COCO's official lists leave out the unannotated images; the toy world keeps every image
    assert args.skip_empty_images is preset.dataset.skip_empty_images is (name == "coco")
    # a flag given on the command line wins over the preset
    assert _script("train").parse_args([*argv, "--max_train_steps", "3"]).max_train_steps == 3
    given = "--no-skip_empty_images" if name == "coco" else "--skip_empty_images"
    assert _script("train").parse_args([*argv, given]).skip_empty_images is (name != "coco")


def test_train_script_builds_the_toy_model_from_the_toy_preset(tmp_path):
    train = _script("train")
    args = train.parse_args(["--output_dir", str(tmp_path)])
    _, _, names = load_dataset_splits(DataSource(toy=True, toy_sizes=(2, 2)))
    config = train_phase("data_and_model").build_model(args, names).config
    for key, value in get_preset("toy").config.items():
        assert getattr(config, key) == value, key


def test_a_model_records_its_training_preset_whose_settings_it_keeps(tmp_path):
    """A model trained with the toy recipe on a dataset of its own classes was scored by evaluate.py and
    segment.py at VOC's scales (its preset was found by class names only) and, continued by train.py without
    --preset, trained with VOC's recipe (crop 320, its processor saved at long side 512): its config records the
    recipe (`training_preset`), whose evaluation settings and recipe follow it; without a record, as before."""
    from conftest import make_tiny_config

    from weclip_hf.presets import evaluation_of_config

    own = make_tiny_config(training_preset="toy")  # cat, dog, car, tree: no preset's classes
    assert evaluation_of_config(own).msf_scales == get_preset("toy").evaluation.msf_scales == (1.0, 1.125)
    assert evaluation_of_config(make_tiny_config()).msf_scales == (1.0, 0.75)  # not recorded: VOC's
    own.save_pretrained(tmp_path / "own")
    train = _script("train")
    args = train.parse_args(["--data_dir", "d", "--model_name_or_path", str(tmp_path / "own")])
    assert args.recipe == "toy" and args.crop_size == get_preset("toy").training.crop_size
    assert (
        train_phase("arguments").recipe_source(args)
        == "no --preset: the one --model_name_or_path records (its config's training_preset)"
    )
    given = train.parse_args(
        ["--data_dir", "d", "--model_name_or_path", str(tmp_path / "own"), "--preset", "voc"]
    )
    assert given.recipe == "voc"
    # a continued model without a record keeps its config, which the printout said were the config defaults
    make_tiny_config().save_pretrained(tmp_path / "unrecorded")
    args = train.parse_args(["--data_dir", "d", "--model_name_or_path", str(tmp_path / "unrecorded")])
    assert train_phase("arguments").recipe_source(args) == (
        "no --preset: the VOC recipe of a WeCLIP model, with the config of --model_name_or_path"
    )
    for bad in (3, ""):  # an empty name records no preset either
        with pytest.raises(ValueError, match="training_preset must be a non-empty string or None"):
            make_tiny_config(training_preset=bad)


def test_evaluate_script_takes_its_settings_from_the_preset(tmp_path, capsys):
    from conftest import make_tiny_config

    evaluate = _script("evaluate")
    make_tiny_config().save_pretrained(tmp_path)  # --preset is checked against the model's type
    base = ["--model_name_or_path", str(tmp_path)]
    voc = evaluate.parse_args([*base, "--preset", "voc"])
    settings = get_preset("voc").evaluation
    assert (voc.crf, voc.eval_long_side, voc.scales) == (settings.crf, settings.eval_long_side, [1.0, 0.75])
    assert evaluate.parse_args([*base, "--preset", "voc", "--no-crf"]).crf is False
    coco = evaluate.parse_args([*base, "--preset", "coco"])
    assert coco.crf is False and coco.skip_empty_images is True and voc.skip_empty_images is False
    assert (
        evaluate.parse_args([*base, "--preset", "coco", "--no-skip_empty_images"]).skip_empty_images is False
    )
    plain = evaluate.parse_args(base)  # no preset: no resize, no CRF, every image scored unless asked
    assert (plain.crf, plain.eval_long_side, plain.skip_empty_images) == (False, None, False)
    assert evaluate.parse_args([*base, "--crf", "--msf", "--scales", "1.0", "1.5"]).scales == [1.0, 1.5]
    # a flag of a step that does not run is refused, as segment.py refuses it; the preset's CRF counts as on
    assert evaluate.parse_args([*base, "--preset", "voc", "--crf_bi_w", "5"]).crf_params.bi_w == 5
    for flags, refused in (
        (["--scales", "1.0", "0.5"], "--scales acts only with --msf"),
        (["--crf_bi_w", "5"], "--crf_bi_w acts only with --crf"),
        (["--preset", "voc", "--no-crf", "--crf_preset", "deeplab"], "--crf_preset acts only with --crf"),
        (["--data_dir", str(tmp_path), "--toy_val_images", "2"], "--toy_val_images sizes the toy world"),
    ):
        with pytest.raises(SystemExit):
            evaluate.parse_args([*base, *flags])
        assert refused in capsys.readouterr().err


def test_checkpointing_steps_are_whole_numbers_and_the_toy_world_defaults_are_the_presets(monkeypatch):
    import weclip_hf.data.toy as toy

    assert all(isinstance(p.training.checkpointing_steps, int) for p in PRESETS.values())
    made, real = [], toy.make_toy_dataset
    monkeypatch.setattr(toy, "make_toy_dataset", lambda n, seed: made.append((n, seed)) or real(1, seed=seed))
    load_dataset_splits(DataSource(toy=True, seed=3))
    train_size, val_size = get_preset("toy").dataset.toy_sizes
    assert made == [(train_size, 3), (val_size, 3 + toy.TOY_VALIDATION_SEED_OFFSET)]
    made.clear()  # one size given (--toy_val_images alone): the other is the preset's
    load_dataset_splits(DataSource(toy=True, toy_sizes=(None, 5), seed=3))
    assert made == [(train_size, 3), (5, 3 + toy.TOY_VALIDATION_SEED_OFFSET)]


def test_fresh_model_defaults_preset_kwargs_and_clip():
    from weclip_hf.data.toy import default_clip_model, toy_clip_path
    from weclip_hf.presets import CLIP_MODEL, preset_config_kwargs

    assert preset_config_kwargs(None) == {}
    kwargs = preset_config_kwargs("voc")
    kwargs["class_names"].append("extra")  # a fresh copy
    assert preset_config_kwargs("voc")["class_names"] == get_preset("voc").config["class_names"]
    assert (
        default_clip_model(toy=True) == str(toy_clip_path()) and (toy_clip_path() / "config.json").is_file()
    )
    assert default_clip_model(toy=False) == CLIP_MODEL == "openai/clip-vit-base-patch16"


def first_official_rfm_step(
    max_steps: int, threshold: int, validate_every: int | None, validation_size: int
) -> int:
    """The 0-based training step at which the official code first refines with the RFM: its counter grows by one
    at the start of every forward, validation forwards included, and the RFM is on when it exceeds ``threshold``."""
    counter = 0
    for step in range(max_steps):
        counter += 1
        if counter > threshold:
            return step
        if validate_every and (step + 1) % validate_every == 0:
            counter += validation_size
    raise AssertionError("the RFM never starts")


@pytest.mark.parametrize(
    "name, official",
    [
        ("voc", dict(max_steps=30000, threshold=15000, validate_every=2000, validation_size=1464)),
        ("coco", dict(max_steps=80000, threshold=40000, validate_every=None, validation_size=0)),
    ],
)
def test_the_rfm_starts_at_the_step_the_official_run_started_it(name, official):
    """The official VOC run validates 1,464 train images every 2,000 iterations and its counter counts them: its
    RFM started at 0-based step 9,144 (the preset said 9,145, one step late); COCO's run never validates."""
    assert PRESETS[name].config["rfm_start_step"] == first_official_rfm_step(**official)


@pytest.mark.parametrize("name, official_bound", [("voc-plus", 18000), ("coco-plus", 40000)])
def test_weclip_plus_self_training_starts_after_the_official_bound(name, official_bound):
    """The official WeCLIP+ overwrites pseudo labels where ``n_iter > 18000`` (VOC) / ``> 40000`` (COCO), n_iter the
    0-based iteration (DESIGN-weclip-plus, self-training overwrite): the first step is the bound + 1."""
    config = WeCLIPPlusConfig(**PRESETS[name].config_kwargs())
    assert config.self_training_start_step == official_bound + 1


@pytest.mark.parametrize(
    "name, maps, box_mask, block, batch",
    [("voc-plus", 6, False, -2, 4), ("coco-plus", 8, True, -1, 8)],
)
def test_weclip_plus_presets_hold_the_official_method_settings(name, maps, box_mask, block, batch):
    """DESIGN-weclip-plus (what WeCLIP+ changes, 5-8) and WeCLIPPlusConfig: the last 6 (VOC) / 8 (COCO) attention
    maps, RFM+ from the first step, the box mask dropped on VOC and kept on COCO, GradCAM on the block-10 output on
    VOC (-2) and on the block-11 one on COCO (-1), decoder lr 2e-4, COCO batch 8, scales 1.0 and 1.5 with flip, CRF
    on VOC only."""
    preset = PRESETS[name]
    config = WeCLIPPlusConfig(**preset.config_kwargs())
    assert (config.rfm_start_step, config.rfm_use_box_mask, config.cam_feature_block) == (0, box_mask, block)
    assert (config.attention_num_maps, config.rfm_num_maps) == (maps, maps)  # CAM affinity maps, RFM's choice
    assert (preset.training.learning_rate, preset.training.per_device_train_batch_size) == (2e-4, batch)
    assert preset.evaluation.msf_scales == (1.0, 1.5) and preset.evaluation.crf == (name == "voc-plus")
    # COCO's official lists (82,081 training images) leave out the images without any annotation, as for WeCLIP
    assert preset.dataset.skip_empty_images == (name == "coco-plus")


def test_evaluation_settings_follow_the_recorded_preset_then_the_model_type_and_classes():
    """`evaluation_of_config`: the recorded ``training_preset`` first, else the preset of the model's type and
    classes: a WeCLIP+ of VOC's classes is voc-plus's (scales 1.0 and 1.5), not WeCLIP's voc (1.0 and 0.75)."""
    from weclip_hf.presets import evaluation_of_config

    plus = WeCLIPPlusConfig(**get_preset("voc-plus").config_kwargs())
    assert evaluation_of_config(plus) == get_preset("voc-plus").evaluation
    recorded = WeCLIPConfig(**get_preset("voc").config_kwargs(), training_preset="coco")
    assert evaluation_of_config(recorded) == get_preset("coco").evaluation


def test_a_datasets_class_names_replace_the_presets_with_their_display_names():
    """`with_class_names`: the preset's display names (``label_names``) named its own classes, so they go with them."""
    from weclip_hf.presets import with_class_names

    kwargs = with_class_names(get_preset("voc").config_kwargs(), ["cat", "dog"])
    assert kwargs["class_names"] == ["cat", "dog"] and "label_names" not in kwargs
    assert kwargs["background_names"] == get_preset("voc").config["background_names"]
    assert with_class_names(kwargs, None) is kwargs


def test_a_fresh_weclip_plus_starts_from_the_official_default_dinov2():
    """WeCLIP+'s default DINOv2 is ViT-S/14 without registers (the official configs'), on the Hub as WeCLIPPlusConfig's
    default variant is."""
    from weclip_hf.configuration_weclip_plus import DINO_VARIANTS
    from weclip_hf.presets import DINO_MODEL

    assert DINO_MODEL == DINO_VARIANTS["dinov2_vits14"].hub_id == "facebook/dinov2-small"


def test_a_model_is_matched_to_a_preset_by_its_classes_in_order():
    """A model without a recorded preset follows the preset of its class names, in their order (the label ids): COCO's
    classes in another order are another model's labels, which get the VOC default (a match as a set passed)."""
    from weclip_hf.presets import evaluation_of_config, preset_of_config

    coco = get_preset("coco").config["class_names"]
    assert preset_of_config(WeCLIPConfig(class_names=coco)) is PRESETS["coco"]
    shuffled = WeCLIPConfig(class_names=coco[::-1])
    assert preset_of_config(shuffled) is None
    assert evaluation_of_config(shuffled) == get_preset("voc").evaluation != get_preset("coco").evaluation

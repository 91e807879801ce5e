"""The example scripts' arguments (issue: script audit): bad values refused at parse time naming the flag, one data
source, evaluation settings that follow the recipe, resume checks, exit status and --help texts."""

import argparse
import importlib.util
import json
import re
import shutil
import signal
import sys

import pytest
from conftest import (
    FAST,
    IN_PROCESS,
    TRAIN,
    example_module,
    make_tiny_config,
    read_log,
    resolved_known_and_built,
    train_in_process,
    train_module,
    train_phase,
)

from weclip_hf.checkpointing import TRAINING_ARGS_NAME, differences
from weclip_hf.presets import get_preset
from weclip_hf.run_signals import exit_status
from weclip_hf.script_arguments import check_model_argument, first_paragraph, scales_in_effect
from weclip_hf.trajectory import trajectory_args, trajectory_label

generate_pseudo_labels = example_module("generate_pseudo_labels")
segment = example_module("segment")
train = train_module()


def load_script(name: str):
    """examples/<name>.py as a module of another name (examples/evaluate.py is not the Hugging Face `evaluate`)."""
    spec = importlib.util.spec_from_file_location(f"weclip_{name}_script", TRAIN.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # importlib's recipe: dataclasses look their module up there
    saved = sys.path[:]
    sys.path.insert(0, str(TRAIN.parent))  # as when run: its sibling modules (benchmark.py's benchmarking/)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


evaluate_script = load_script("evaluate")


def parse_error(parse, argv, capsys) -> str:
    """The argparse error message of ``parse(argv)`` (which must exit)."""
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--logging_steps", "0"], "argument --logging_steps: must be >= 1, got 0"),
        (["--checkpointing_steps", "-1"], "argument --checkpointing_steps: must be >= 0, got -1"),
        (
            ["--checkpointing_steps", "epoch"],
            "argument --checkpointing_steps: expected a whole number, got 'epoch'",
        ),
        (["--checkpoints_total_limit", "0"], "argument --checkpoints_total_limit: must be >= 1, got 0"),
        (["--max_train_steps", "0"], "argument --max_train_steps: must be >= 1, got 0"),
        (["--toy_train_images", "0"], "argument --toy_train_images: must be >= 1, got 0"),
        (["--learning_rate", "0"], "argument --learning_rate: must be a finite number > 0, got 0"),
        (["--learning_rate", "inf"], "argument --learning_rate: must be a finite number > 0, got inf"),
        (["--msf_scales", "1", "-1"], "argument --msf_scales/--scales: must be a finite number > 0, got -1"),
        (["--num_threads", "0"], "argument --num_threads: must be >= 1, got 0"),
        (["--eval_long_side", "0"], "argument --eval_long_side: must be >= 1, got 0"),
        (["--num_workers", "-1"], "argument --num_workers: must be >= 0, got -1"),
        (  # a fraction strictly below 1: all the rows held out leave no training split
            ["--train_val_split", "1"],
            "argument --train_val_split: must be a fraction between 0 and 1 (e.g. 0.15), got 1",
        ),
        (["--scale_min", "2", "--scale_max", "1"], "--scale_min 2.0 is larger than --scale_max 1.0"),
        (
            ["--data_dir", "x", "--dataset_path", "y"],
            "argument --dataset_path: not allowed with argument --data_dir",
        ),
        (
            ["--dataset_name", "x", "--data_dir", "y"],
            "argument --data_dir: not allowed with argument --dataset_name",
        ),
        (
            ["--overwrite_output_dir", "--resume_from_checkpoint", "latest"],
            "--overwrite_output_dir starts a fresh run and --resume_from_checkpoint continues one",
        ),
        (  # the backbone flags were ignored without a word
            ["--model_name_or_path", "m", "--dino_model_name_or_path", "d"],
            "--dino_model_name_or_path builds a fresh model from a backbone, and --model_name_or_path continues",
        ),
        (
            ["--model_name_or_path", "m", "--clip_model_name_or_path", "c"],
            "--clip_model_name_or_path builds a fresh model from a backbone",
        ),
    ],
)
def test_train_refuses_bad_arguments_at_parse_time(argv, message, capsys):
    assert message in parse_error(train.parse_args, argv, capsys)


def test_generate_pseudo_labels_takes_one_data_source(capsys):
    argv = ["--output_dir", "o", "--data_dir", "x", "--dataset_path", "y"]
    message = parse_error(generate_pseudo_labels.parse_args, argv, capsys)
    assert "argument --dataset_path: not allowed with argument --data_dir" in message


def test_generate_pseudo_labels_refuses_a_dataset_preset_without_a_dataset(capsys):
    """--preset voc without a dataset read the toy world: a bare CLIP then gave VOC's class names to the toy images
    (the toy CLIP failed in a traceback, 'rfm_num_maps must be an integer in [1, 3], got 6'); refused, as by
    train.py."""
    message = parse_error(generate_pseudo_labels.parse_args, ["--output_dir", "o", "--preset", "voc"], capsys)
    assert "error: --preset voc is of its dataset's classes, but no dataset is given" in message
    assert generate_pseudo_labels.parse_args(["--output_dir", "o", "--preset", "toy"]).preset == "toy"


def test_two_data_sources_from_dataclass_flags_are_refused(capsys):
    """`check_one_data_source` (train_with_trainer.py, whose flags come from a dataclass) refuses two of the
    data-source flags as argparse's exclusive group does, naming both."""
    from weclip_hf.script_arguments import check_one_data_source

    parser = argparse.ArgumentParser()
    check_one_data_source(parser, argparse.Namespace(dataset_name="x", data_dir=None, dataset_path=None))
    with pytest.raises(SystemExit):
        check_one_data_source(parser, argparse.Namespace(dataset_name="x", data_dir="y", dataset_path=None))
    assert "--dataset_name and --data_dir each name a dataset: give one of them." in capsys.readouterr().err


def test_what_a_saved_config_says_of_the_preset(tmp_path, capsys):
    """A saved config read for ``--model_name_or_path`` is read again for another folder (the cache is of one
    source); a recorded ``training_preset`` no preset has is none; the toy preset fits a saved model of either
    type, a dataset preset only one of its own type."""
    from weclip_hf.script_arguments import check_preset_fits_model, saved_config, saved_training_preset

    folders = {}
    for model_type, preset in (("weclip", "my-own"), ("weclip_plus", "voc-plus")):
        folders[model_type] = tmp_path / model_type
        folders[model_type].mkdir()
        config = {"model_type": model_type, "training_preset": preset}
        (folders[model_type] / "config.json").write_text(json.dumps(config))
    args = argparse.Namespace(model_name_or_path=str(folders["weclip"]), preset=None)
    assert saved_config(args)["model_type"] == "weclip" and saved_training_preset(args) is None
    args.model_name_or_path = str(folders["weclip_plus"])
    assert saved_config(args)["model_type"] == "weclip_plus" and saved_training_preset(args) == "voc-plus"
    parser = argparse.ArgumentParser()
    check_preset_fits_model(
        parser, argparse.Namespace(model_name_or_path=str(folders["weclip_plus"]), preset="toy")
    )
    with pytest.raises(SystemExit):
        check_preset_fits_model(
            parser, argparse.Namespace(model_name_or_path=str(folders["weclip_plus"]), preset="voc")
        )
    assert "is a WeCLIP+ model, but --preset voc is a WeCLIP preset" in capsys.readouterr().err


def test_checkpointing_steps_is_a_number_of_steps_or_zero_for_never():
    assert train.parse_args(["--checkpointing_steps", "0"]).checkpointing_steps == 0
    assert train.parse_args(["--checkpointing_steps", "7"]).checkpointing_steps == 7


def test_evaluate_and_segment_take_one_data_source(capsys):
    message = parse_error(
        evaluate_script.parse_args,
        ["--model_name_or_path", "m", "--data_dir", "a", "--dataset_path", "b"],
        capsys,
    )
    assert "argument --dataset_path: not allowed with argument --data_dir" in message
    argv = ["--model_name_or_path", "m", "--output_dir", "o", "--dataset_name", "a", "--dataset_path", "b"]
    assert "argument --dataset_path: not allowed with argument --dataset_name" in parse_error(
        segment.parse_args, argv, capsys
    )


@pytest.mark.parametrize(
    "name", ["segment", "evaluate", "generate_pseudo_labels", "convert_official_checkpoint"]
)
def test_the_inference_scripts_show_each_flags_default_in_help(name, monkeypatch):
    """A flag that has a default value says it in its help (generate_pseudo_labels.py's --batch_size,
    --num_overlays and --seed did not: 8, 0 and 0)."""
    assert flags_without_their_default_in_help(script_parser(name, monkeypatch)) == []


def flags_without_their_default_in_help(parser: argparse.ArgumentParser) -> list[str]:
    """The flags of ``parser`` with a default value that their help does not state (nor word as "default")."""
    # by identity: a default of 0 equals False, but is a value
    unset = (None, False, argparse.SUPPRESS)
    valued = [a for a in parser._actions if a.option_strings and not any(a.default is u for u in unset)]
    return [a.option_strings[0] for a in valued if not re.search(rf"default|\b{a.default}\b", a.help)]


def test_train_evaluates_in_the_batches_its_help_states(tmp_path):
    """The evaluation batch is the training batch on the toy world, else 1 (a local dataset too: it is no toy
    world)."""
    assert train.parse_args(["--per_device_train_batch_size", "3"]).per_device_eval_batch_size == 3
    for source in ("--dataset_path", "--data_dir"):
        local = train.parse_args([source, str(tmp_path), "--per_device_train_batch_size", "3"])
        assert local.per_device_eval_batch_size == 1, source


def test_a_model_flag_given_as_zero_is_given(capsys):
    """A config flag given 0 is given as any other value (it overrides a continued model's saved config): a
    WeCLIP+ field so given to a WeCLIP run is refused."""
    with pytest.raises(SystemExit):
        train.parse_args(["--self_training_start_step", "0"])
    error = " ".join(capsys.readouterr().err.split())
    assert "--self_training_start_step sets a WeCLIP+ config field, but this run trains WeCLIP" in error


def test_the_rfm_start_given_to_a_continued_model_is_named_as_the_flag(toy_weclip_dir):
    """--rfm_start_step overrides the saved config of --model_name_or_path: the run names the flag as its source."""
    given = train.parse_args(["--model_name_or_path", str(toy_weclip_dir), "--rfm_start_step", "5"])
    assert given.rfm_start_source == "--rfm_start_step"
    saved = train.parse_args(["--model_name_or_path", str(toy_weclip_dir)])
    assert saved.rfm_start_source == "the config of --model_name_or_path"


def test_train_flags_left_out_take_the_defaults_their_help_states(tmp_path, monkeypatch):
    """examples/train.py's flags with a default state it in their help and the run takes it: --ddp_timeout
    transformers' 1800 (its help also names NCCL's 600), --hub_model_id the --output_dir folder's name when
    --push_to_hub publishes it."""
    args = train.parse_args(["--push_to_hub", "--output_dir", str(tmp_path / "my-run")])
    assert args.ddp_timeout == 1800 and args.hub_model_id == "my-run"
    assert flags_without_their_default_in_help(script_parser("train", monkeypatch)) == []


@pytest.mark.parametrize(
    "script, required",
    [
        ("train", []),
        ("train_with_trainer", []),
        ("evaluate", ["--model_name_or_path", "m"]),
        ("generate_pseudo_labels", ["--output_dir", "o"]),
        ("segment", ["--model_name_or_path", "m", "--output_dir", "o"]),
    ],
)
def test_a_dataset_configuration_without_a_hub_dataset_is_refused(script, required, tmp_path, capsys):
    """--dataset_config_name with --data_dir / --dataset_path / --images / the toy world was ignored without a
    word."""
    parse = load_script(script).parse_args
    sources = [["--data_dir", str(tmp_path)], ["--dataset_path", str(tmp_path)]]
    sources += [["--images", "a.png"]] if script == "segment" else [[]]
    for source in sources:
        message = parse_error(parse, [*required, *source, "--dataset_config_name", "full"], capsys)
        read = f"{source[0]} is read" if source else "the offline toy world is used"
        assert message.endswith(
            f"error: --dataset_config_name chooses a configuration of a --dataset_name dataset, and {read} "
            "without one: leave it out."
        )
    if script == "train":  # the configuration of a Hub dataset stays accepted
        assert parse(["--dataset_name", "d", "--dataset_config_name", "full"]).dataset_config_name == "full"


@pytest.mark.parametrize(
    "script, required, flag",
    [
        ("segment", ["--model_name_or_path", "m", "--images", "a.png"], "--output_dir"),
        ("generate_pseudo_labels", [], "--output_dir"),
        ("evaluate", ["--model_name_or_path", "m"], "--output_json"),
        ("train", [], "--output_dir"),
    ],
)
def test_an_output_path_in_an_existing_file_is_refused_at_parsing(script, required, flag, tmp_path, capsys):
    """An --output_dir that is a file (or inside one), an --output_json inside one: segment.py and
    generate_pseudo_labels.py loaded the model and then failed with NotADirectoryError's traceback ('.../.state'),
    evaluate.py with FileExistsError's, train.py with "--output_dir ... is not writable: File exists"'s; now refused at
    parsing, naming the flag and the file."""
    parse = load_script(script).parse_args
    afile = tmp_path / "afile"
    afile.write_text("x")
    paths = {afile / "sub" / "x.json": f"is inside {str(afile)!r}, which is"}
    if flag == "--output_dir":
        paths = {afile: "is", afile / "sub": f"is inside {str(afile)!r}, which is"}
    for path, where in paths.items():
        message = parse_error(parse, [*required, flag, str(path)], capsys)
        assert message.endswith(f"error: {flag} {str(path)!r} {where} an existing file, not a folder.")


def test_evaluate_on_the_toy_world_without_preset_uses_the_toy_recipe(tmp_path):
    toy = get_preset("toy").evaluation
    args = evaluate_script.parse_args(["--model_name_or_path", "m", "--msf"])
    assert args.scales == list(toy.msf_scales) == [1.0, 1.125]
    assert (args.eval_long_side, args.crf) == (toy.eval_long_side, toy.crf)
    from weclip_hf import WeCLIPImageProcessor

    # the toy model's processor (96 x 96, the toy world's size): the images are predicted as the pipeline would
    args.input_size = evaluate_script.input_size(args, WeCLIPImageProcessor(size={"height": 96, "width": 96}))
    assert evaluate_script.settings_report(args, 255) == {
        "input_size": {"height": 96, "width": 96},
        "msf_scales": [1.0, 1.125],
        "flip": True,
        "crf": False,
        "ignore_index": 255,
        "skip_empty_images": False,
    }
    local = evaluate_script.parse_args(["--model_name_or_path", "m", "--data_dir", "d"])
    assert local.crf is False  # a local dataset: as before
    assert scales_in_effect(local.scales, make_tiny_config()) == [1.0, 0.75]  # the model's
    make_tiny_config().save_pretrained(tmp_path)  # --preset is checked against the model's type
    voc = evaluate_script.parse_args(["--model_name_or_path", str(tmp_path), "--preset", "voc"])
    assert (voc.eval_long_side, voc.scales, voc.crf) == (512, [1.0, 0.75], True)


def test_segment_takes_the_scales_of_the_models_preset():
    toy = make_tiny_config(**get_preset("toy").config_kwargs())
    assert scales_in_effect(None, toy) == [1.0, 1.125]
    assert scales_in_effect(None, make_tiny_config()) == [1.0, 0.75]  # classes of no preset
    args = ["--model_name_or_path", "m", "--output_dir", "o", "--images", "x"]
    assert segment.parse_args(args).scales is None  # resolved from the model once it is loaded
    assert segment.parse_args([*args, "--msf", "--scales", "1", "2"]).scales == [1.0, 2.0]


# each script's parse_args, its required flags, and whether the multi-scale + flip step is on by default
MULTISCALE_SCRIPTS = {
    "evaluate": (evaluate_script.parse_args, ["--model_name_or_path", "m"], False),
    "segment": (
        segment.parse_args,
        ["--model_name_or_path", "m", "--output_dir", "o", "--images", "x"],
        False,
    ),
    "train": (train.parse_args, [], True),
}


def multiscale_switch(script: str, argv: list[str]) -> tuple[bool, list[float] | None]:
    """Whether the multi-scale + flip step runs and its scales (given, else the preset's or None), as ``script``
    parses ``argv``."""
    parse, required, in_training = MULTISCALE_SCRIPTS[script]
    args = parse([*required, *argv])
    if in_training:  # train.py's names, which its trajectory records
        return not args.no_msf, args.msf_scales
    return args.msf, args.scales


@pytest.mark.parametrize("script", sorted(MULTISCALE_SCRIPTS))
def test_the_multiscale_flags_are_the_same_words_in_every_script(script, capsys):
    """train.py took --no_msf and --msf_scales, evaluate.py and segment.py --msf and --scales: a train.py command's
    evaluation flags given to evaluate.py failed ("unrecognized arguments: --no_msf"), and train.py --msf was read
    as an abbreviation of --msf_scales ("expected at least one argument"). Each script takes both spellings of the
    switch and both names of the scales, keeping its own default (off for inference, on for train.py's
    evaluations) and the names its values are recorded under."""
    parse, required, in_training = MULTISCALE_SCRIPTS[script]
    assert [multiscale_switch(script, flags)[0] for flags in ([], ["--no_msf"], ["--msf"])] == [
        in_training,
        False,
        True,
    ]
    for name in ("--scales", "--msf_scales"):
        assert multiscale_switch(script, ["--msf", name, "1", "0.5"]) == (True, [1.0, 0.5])
    # the same words, the same values: a re-run or resume of an earlier folder sees the same settings
    assert vars(parse([*required, "--msf", "--scales", "2"])) == vars(
        parse([*required, "--msf", "--msf_scales", "2"])
    )
    message = parse_error(parse, [*required, "--msf", "--no_msf"], capsys)
    assert message.endswith("argument --no_msf: not allowed with argument --msf")
    refused = (
        "which --no_msf turns off: give one (--msf_scales and --scales are one flag)."
        if in_training
        else "--scales acts only with --msf: add --msf, or drop --scales (--scales and --msf_scales are one flag)."
    )
    for name in ("--scales", "--msf_scales"):
        assert refused in parse_error(parse, [*required, "--no_msf", name, "1"], capsys)


@pytest.mark.parametrize("script", sorted(MULTISCALE_SCRIPTS))
def test_the_multiscale_flags_say_each_scripts_default_in_help(script, monkeypatch):
    helps = {
        flag: action.help
        for action in script_parser(script, monkeypatch)._actions
        for flag in action.option_strings
    }
    on_by_default = MULTISCALE_SCRIPTS[script][2]
    assert "(the default)" in helps["--msf" if on_by_default else "--no_msf"]
    assert "default:" in helps["--no_msf" if on_by_default else "--msf"]
    assert helps["--scales"] is helps["--msf_scales"]


def test_help_texts(capsys):
    with pytest.raises(SystemExit):
        evaluate_script.parse_args(["--help"])
    assert "pseudo labels (CAM without / with RFM); prints a per-class IoU table and writes JSON" in " ".join(
        capsys.readouterr().out.split()
    )
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "multi-hot rows, or class names" in text
    assert "toy 500" in text and "toy 250" in text  # --max_train_steps, --checkpointing_steps
    assert "default: all" in text  # --report_to
    # the defaults of the flags left out, as the presets set them (the toy preset's differ from VOC's)
    assert "box threshold on the GradCAM (voc/voc-plus 0.4, coco/coco-plus 0.7, toy 0.8, else 0.4;" in text
    assert "decoder width (toy 128, else 256)" in text
    assert "PAR neighbour dilations (toy 1 2 4 8, else 1 2 4 8 12 24)" in text
    assert "(voc/coco/voc-plus 4, toy/coco-plus 8)" in text  # --per_device_train_batch_size
    assert "(voc/coco/toy 0.002, voc-plus/coco-plus 0.0002)" in text  # --learning_rate
    assert "default: outputs/weclip-toy, also with a --preset or a dataset" in text
    assert (
        "the toy recipe's without a dataset, else the --preset's (without one voc, voc-plus for a WeCLIP+ model)"
        in text
    )
    assert first_paragraph("One\nline.\n\nMore.") == "One\nline."


class ParserBuilt(Exception):
    """Raised with the parser a script's parse_args built, in place of parsing."""


def script_parser(name: str, monkeypatch) -> argparse.ArgumentParser:
    """The ArgumentParser of examples/<name>.py, caught when its parse_args is about to parse."""
    script = load_script(name)

    def catch(parser, *args, **kwargs):
        raise ParserBuilt(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)  # HfArgumentParser's
    with pytest.raises(ParserBuilt) as built:
        script.parse_args([])
    return built.value.args[0]


@pytest.mark.parametrize(
    "script, required",
    [
        ("train", []),
        ("train_with_trainer", []),
        ("generate_pseudo_labels", ["--output_dir", "o"]),
        ("convert_official_checkpoint", ["--checkpoint", "c.pth", "--output_dir", "o"]),
    ],
)
def test_a_hub_token_with_whitespace_or_control_characters_is_refused_unshown(script, required, capsys):
    """A --hub_token read from a file with its line end (``--hub_token "$(cat token.txt)"`` of a CRLF file:
    ``hf_SeCrEt\\r``) was taken: the HTTP library refused it at the upload, after the run's work, with an error that
    quoted it (``Illegal header value b'Bearer hf_SeCrEt\\r'``), which the scripts printed, with "check the network
    connection". Now each script refuses it at parse time, saying what to do and never showing the token."""
    parse = load_script(script).parse_args
    for token in ("hf_SeCrEt\r", "hf_SeCrEt\n", " hf_SeCrEt", "hf_Se CrEt", "hf_SeC\trEt", "hf_SeCrEt\x00"):
        with pytest.raises(SystemExit) as exit_info:
            parse([*required, "--hub_token", token])
        assert exit_info.value.code == 2
        shown = capsys.readouterr()
        assert (
            shown.err.strip()
            .splitlines()[-1]
            .endswith(
                "error: --hub_token holds whitespace or control characters (a line end copied from a file?): strip it."
            )
        )
        assert "CrEt" not in shown.out + shown.err
    parsed = parse([*required, "--hub_token", "hf_SeCrEt"])
    assert (parsed[1] if isinstance(parsed, tuple) else parsed).hub_token == "hf_SeCrEt"


@pytest.mark.parametrize("name", sorted(path.stem for path in TRAIN.parent.glob("*.py")))
def test_every_flag_says_what_it_does_in_help(name, monkeypatch):
    """Each flag of each script has a help text (argparse.SUPPRESS: a flag hidden on purpose)."""
    parser = script_parser(name, monkeypatch)
    flags = [action for action in parser._actions if action.option_strings]
    assert len(flags) > 1
    assert [action.option_strings[0] for action in flags if not (action.help or "").strip()] == []


@pytest.mark.parametrize("script", ["train", "train_with_trainer"])
def test_a_backbone_that_is_no_local_checkpoint_is_refused_at_parsing(script, tiny_clip, tmp_path, capsys):
    """--dino_model_name_or_path ./no-such-dino was refused only when the model was built, after the data loaded
    (37 s into a toy run), in a traceback; --clip_model_name_or_path ./no-such-clip by the tokenizer's loading, in
    a traceback too. Each backbone flag naming a local path that holds no checkpoint of its backbone is refused at
    parsing, naming the flag, what is wrong and what to give; a Hub id passes unread (offline and not cached too),
    and so does a CLIP folder."""
    parse = load_script(script).parse_args
    weclip = tmp_path / "weclip"
    make_tiny_config().save_pretrained(weclip)
    refused = {
        (
            "--dino_model_name_or_path",
            "./no-such-dino",
        ): "No DINOv2 checkpoint folder at './no-such-dino': give a "
        "DINOv2 checkpoint folder written by save_pretrained (config.json and model.safetensors) or a Hub id.",
        ("--clip_model_name_or_path", str(tmp_path / "no-such-clip")): "No CLIP checkpoint folder at",
        ("--clip_model_name_or_path", str(weclip / "config.json")): "is a file, not a CLIP checkpoint folder",
        ("--dino_model_name_or_path", str(weclip)): "is a saved WeCLIP model, not a DINOv2 checkpoint",
        ("--dino_model_name_or_path", tiny_clip): "holds a 'clip' model, not a DINOv2 checkpoint",
    }
    for (flag, value), message in refused.items():
        shown = parse_error(parse, [flag, value], capsys).split("error: ", 1)[1]
        assert shown.startswith(f"{flag}: ") and message in shown, shown
    for flags in (
        ["--dino_model_name_or_path", "facebook/dinov2-base"],
        ["--clip_model_name_or_path", "nobody/no-such-clip"],
        ["--clip_model_name_or_path", tiny_clip],
    ):
        parsed = parse(flags)
        args = parsed[0] if isinstance(parsed, tuple) else parsed
        assert getattr(args, flags[0][2:]) == flags[1]


def test_train_with_trainer_refuses_an_unknown_preset(capsys):
    trainer_script = load_script("train_with_trainer")
    message = parse_error(trainer_script.parse_args, ["--preset", "vocx"], capsys)
    assert "argument --preset: invalid choice: 'vocx'" in message


def test_diagnose_toy_cams_sweeps_attention_num_maps_under_both_names():
    diagnose = load_script("diagnose_toy_cams")
    assert diagnose.parse_args(["--attention_num_maps", "1", "2"]).attention_num_maps == [1, 2]
    assert diagnose.parse_args(["--attention_layers", "3"]).attention_num_maps == [3]  # its former name


def test_model_folder_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="--model_name_or_path /tmp/nope-weclip: no such folder"):
        check_model_argument("/tmp/nope-weclip")
    checkpoint = tmp_path / "step_4"
    checkpoint.mkdir()
    (checkpoint / "training_state.json").write_text("{}")
    with pytest.raises(ValueError, match="is a training checkpoint.*Give the run's --output_dir"):
        check_model_argument(str(checkpoint))
    check_model_argument("openai/clip-vit-base-patch16")  # a Hub id passes
    weights = tmp_path / "model.safetensors"  # a file is no folder, nor a Hub id to look up
    weights.write_bytes(b"")
    with pytest.raises(
        NotADirectoryError, match="model.safetensors is a file; give the folder of a saved model"
    ):
        check_model_argument(str(weights))


def test_model_folder_checks_name_a_folder_that_is_no_weclip_model(
    tmp_path, tiny_clip, toy_weclip_dir, capsys
):
    """The scripts load with the Auto classes, whose errors for these say "Unrecognized model" and list a hundred
    model types: a folder without config.json, and a CLIP's folder, are named with what to give instead."""
    with pytest.raises(FileNotFoundError, match=r"has no config.json: not a saved model folder"):
        check_model_argument(str(tmp_path))
    with pytest.raises(
        ValueError, match=r"holds a 'clip' model, not a WeCLIP one.*--clip_model_name_or_path"
    ):
        check_model_argument(str(tiny_clip))
    check_model_argument(str(toy_weclip_dir))  # a WeCLIP folder passes
    # each script that loads a saved model refuses it at parsing (`check_saved_model_flag`), a usage error
    clip_refused = f"{tiny_clip} holds a 'clip' model, not a WeCLIP one"
    run = tmp_path / "run"
    train_argv = ["--model_name_or_path", tiny_clip, "--output_dir", run, *FAST]
    error = parse_error(lambda argv: train_in_process(*argv), train_argv, capsys)
    assert f"error: --model_name_or_path {clip_refused}" in error
    assert not run.exists()  # refused before the run claims its folder
    out = tmp_path / "pseudo"
    error = parse_error(
        generate_pseudo_labels.main, ["--model", str(tiny_clip), "--output_dir", str(out)], capsys
    )
    assert f"error: --model {clip_refused}" in error
    assert not out.exists()  # refused before its output folder is made
    for script, more in (
        (segment, ["--images", str(tmp_path), "--output_dir", str(out)]),
        (evaluate_script, []),
    ):
        error = parse_error(script.main, ["--model_name_or_path", str(tiny_clip), *more], capsys)
        assert f"error: --model_name_or_path {clip_refused}" in error


def test_evaluate_refuses_a_missing_model_folder_before_loading_anything(capsys):
    error = parse_error(evaluate_script.main, ["--model_name_or_path", "/tmp/nope-weclip"], capsys)
    assert error.endswith("error: --model_name_or_path /tmp/nope-weclip: no such folder.")


# each script's flag of the saved model it loads, with the other flags it needs
SAVED_MODEL_FLAGS = {
    "evaluate": ("--model_name_or_path", []),
    "segment": ("--model_name_or_path", ["--images", "in", "--output_dir", "seg"]),
    "generate_pseudo_labels": ("--model", ["--output_dir", "pseudo"]),
    "train": ("--model_name_or_path", ["--output_dir", "run"]),
    "train_with_trainer": ("--model_name_or_path", ["--output_dir", "run", "--do_eval"]),
}


@pytest.mark.parametrize("script", sorted(SAVED_MODEL_FLAGS))
def test_a_saved_model_flag_naming_no_saved_model_is_refused_at_parsing(
    script, tmp_path, tiny_clip, toy_weclip_dir, monkeypatch, capsys
):
    """evaluate.py --model_name_or_path ./nope stopped in a FileNotFoundError traceback after parsing (segment.py and
    generate_pseudo_labels.py --model too), train.py's in a traceback of the tokenizer's loading after the run
    claimed its folder, train_with_trainer.py --do_eval's in the model's loading. Each refuses what
    `check_model_argument` refuses at parsing, as a usage error naming the flag; a WeCLIP folder and a Hub id pass."""
    flag, more = SAVED_MODEL_FLAGS[script]
    monkeypatch.chdir(tmp_path)
    parse = load_script(script).parse_args
    checkpoint = tmp_path / "step_4"
    checkpoint.mkdir()
    (checkpoint / "training_state.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    refused = {
        "./nope": "./nope: no such folder.",
        str(checkpoint): f"{checkpoint} is a training checkpoint of examples/train.py",
        "empty": "empty has no config.json: not a saved model folder",
        str(tiny_clip): f"{tiny_clip} holds a 'clip' model, not a WeCLIP one",
        f"{toy_weclip_dir}/config.json": f"{toy_weclip_dir}/config.json is a file; give the folder",
    }
    for value, message in refused.items():
        assert f"error: {flag} {message}" in parse_error(parse, [flag, value, *more], capsys), value
    for value in (str(toy_weclip_dir), "someone/weclip-voc"):
        parsed = parse([flag, value, *more])
        args = parsed[0] if isinstance(parsed, tuple) else parsed
        assert getattr(args, flag[2:]) == value


# ---- resume -----------------------------------------------------------------------------------------


def changed_trajectory_args(saved: dict, args, accelerator=None) -> list[str]:
    """``--flag old -> new`` for each trajectory argument (launch fact) that a resume of ``saved`` would refuse."""
    return differences(saved, trajectory_args(args, accelerator), trajectory_label)


def test_changed_trajectory_arguments_are_listed_and_free_ones_ignored():
    saved = trajectory_args(train.parse_args(["--learning_rate", "0.002", "--seed", "1"]))
    changed = train.parse_args(
        [
            "--learning_rate",
            "0.001",
            "--seed",
            "1",
            "--logging_steps",
            "3",
            "--num_threads",
            "2",
            "--eval_steps",
            "9",
        ]
    )
    assert changed_trajectory_args(saved, changed) == ["--learning_rate 0.002 -> 0.001"]
    same = train.parse_args(["--learning_rate", "0.002", "--seed", "1", "--output_dir", "elsewhere"])
    assert changed_trajectory_args(saved, same) == []
    assert "hub_token" not in saved and "output_dir" not in saved


def test_num_workers_is_part_of_a_streamed_trajectory_only():
    assert "num_workers" not in trajectory_args(train.parse_args(["--num_workers", "2"]))
    assert trajectory_args(train.parse_args(["--streaming", "--num_workers", "2"]))["num_workers"] == 2


def test_the_shuffle_buffer_is_part_of_a_streamed_trajectory_only():
    assert "shuffle_buffer_size" not in trajectory_args(train.parse_args(["--shuffle_buffer_size", "5"]))
    streamed = trajectory_args(train.parse_args(["--streaming", "--shuffle_buffer_size", "5"]))
    assert streamed["shuffle_buffer_size"] == 5


def test_local_folders_are_compared_by_where_they_are(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    saved = trajectory_args(train.parse_args(["--data_dir", "data"]))
    assert saved["data_dir"] == str(tmp_path / "data")
    assert changed_trajectory_args(saved, train.parse_args(["--data_dir", "./data/"])) == []
    assert changed_trajectory_args(saved, train.parse_args(["--data_dir", str(tmp_path / "data")])) == []


def test_the_shipped_toy_clip_is_recorded_by_its_place_in_the_package(tmp_path):
    """A toy run's checkpoint recorded the package's toy CLIP by its absolute path: resuming it from a moved clone or
    a new virtualenv (the same weights, which frozen_weights.json checks) was refused. Checkpoints of earlier
    versions, which recorded that path, resume too; another CLIP folder is still compared by where it is."""
    import json

    from weclip_hf.data.toy import toy_clip_path
    from weclip_hf.trajectory import RESOLVED_ARGS_NAME, SHIPPED_TOY_CLIP, check_resolved, recorded_clip

    assert recorded_clip(str(toy_clip_path())) == SHIPPED_TOY_CLIP == "weclip_hf/toy_clip"
    assert recorded_clip("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"
    (tmp_path / "clip").mkdir()
    assert recorded_clip(str(tmp_path / "." / "clip")) == str(tmp_path / "clip")
    # a folder of the same name outside a weclip_hf folder is another CLIP
    (tmp_path / "toy_clip").mkdir()
    assert recorded_clip(str(tmp_path / "toy_clip")) == str(tmp_path / "toy_clip")
    checkpoint = tmp_path / "step_3"
    checkpoint.mkdir()
    for recorded in ("/old/venv/lib/python3.11/site-packages/weclip_hf/toy_clip", SHIPPED_TOY_CLIP):
        (checkpoint / RESOLVED_ARGS_NAME).write_text(json.dumps({"clip_model_name_or_path": recorded}))
        check_resolved(checkpoint, {"clip_model_name_or_path": recorded_clip(str(toy_clip_path()))})
    with pytest.raises(
        ValueError, match=r"--clip_model_name_or_path 'weclip_hf/toy_clip' -> 'openai/clip-vit-"
    ):
        check_resolved(checkpoint, {"clip_model_name_or_path": "openai/clip-vit-base-patch16"})


def test_an_earlier_checkpoint_compares_the_later_resolved_flags_as_given(tmp_path):
    """The WeCLIP+ and loss flags are compared by their values in effect since their checkpoints record them; one of
    an earlier version (resolved_args.json without them) compares them as given, as it did, not as None."""
    import argparse
    import json

    from weclip_hf.trajectory import RESOLVED_ARGS_NAME, check_resolved, check_resume

    checkpoint = tmp_path / "step_3"
    checkpoint.mkdir()
    state = {"step": 3, "scheduler": {}, "position": {"epoch": 0, "batch": 0}}
    (checkpoint / "training_state.json").write_text(json.dumps(state))
    (checkpoint / "training_args.json").write_text(
        json.dumps(
            {"max_train_steps": 6, "streaming": False, "dice_loss_weight": None, "rfm_start_step": None}
        )
    )
    (checkpoint / RESOLVED_ARGS_NAME).write_text(json.dumps({"rfm_start_step": 150}))
    check_resolved(
        checkpoint, {"rfm_start_step": 150, "dice_loss_weight": 1.0, "semantic_loss_ignore_index": 255}
    )
    args = argparse.Namespace(
        output_dir=str(tmp_path), max_train_steps=6, streaming=False, rfm_start_step=150
    )
    check_resume(argparse.Namespace(**vars(args), dice_loss_weight=None), checkpoint, log=lambda _: None)
    with pytest.raises(ValueError, match=r"--dice_loss_weight None -> 1\.0"):
        check_resume(argparse.Namespace(**vars(args), dice_loss_weight=1.0), checkpoint, log=lambda _: None)
    # recorded by a checkpoint of this version: compared in effect, whatever the flag
    (checkpoint / RESOLVED_ARGS_NAME).write_text(json.dumps({"rfm_start_step": 150, "dice_loss_weight": 1.0}))
    check_resume(argparse.Namespace(**vars(args), dice_loss_weight=1.0), checkpoint, log=lambda _: None)
    with pytest.raises(ValueError, match=r"--dice_loss_weight 1\.0 -> 0\.5"):
        check_resolved(checkpoint, {"rfm_start_step": 150, "dice_loss_weight": 0.5})


def test_one_refusal_names_the_resolved_flags_the_run_gave_too(tmp_path):
    """A resume that did not restate the run's flags was refused for --max_train_steps, and once that was restated,
    the data and model loaded, refused again for --rfm_start_step (compared by its value in effect): the first
    refusal names it too. Alone, a flag the run gave and the resume leaves out is left to the values in effect."""
    import argparse
    import json

    from weclip_hf.trajectory import RESOLVED_ARGS_NAME, check_resume

    checkpoint = tmp_path / "step_2"
    checkpoint.mkdir()
    state = {"step": 2, "scheduler": {}, "position": {"epoch": 0, "batch": 0}}
    (checkpoint / "training_state.json").write_text(json.dumps(state))
    saved = {"max_train_steps": 8, "streaming": False, "rfm_start_step": 4, "cam_box_threshold": None}
    (checkpoint / "training_args.json").write_text(json.dumps(saved))
    (checkpoint / RESOLVED_ARGS_NAME).write_text(json.dumps({"rfm_start_step": 4, "cam_box_threshold": 0.8}))
    args = dict(output_dir=str(tmp_path), streaming=False, rfm_start_step=None, cam_box_threshold=None)
    with pytest.raises(
        ValueError,
        match=r"--max_train_steps 8 -> 6.* Restate too .*: --rfm_start_step 4 \(not given now\)\.$",
    ):
        check_resume(argparse.Namespace(**args, max_train_steps=6), checkpoint, log=lambda _: None)
    check_resume(argparse.Namespace(**args, max_train_steps=8), checkpoint, log=lambda _: None)


def test_a_resume_that_computes_otherwise_is_warned_not_refused(tmp_path):
    """A resume on another device type, with torch.compile otherwise (on or off, another backend or mode) or with
    other CPU threads (--num_threads, whose default follows the cores available) sums floats in another order: it
    ends within float32 rounding of the uninterrupted run, not bit for bit. Checkpoints record how their run computed
    (`Computation`) and such a resume is warned, in one message naming each change and what to pass for an exact
    resume (only the threads were recorded, and a change of them warned). The same computation resumes without a
    word, and so does an item either side does not record: a GPU run's threads, or what a checkpoint of an earlier
    version left out (it recorded the threads only, or nothing)."""
    import argparse
    import json
    from dataclasses import asdict, replace

    from weclip_hf.checkpointing import Computation
    from weclip_hf.trajectory import check_resume

    checkpoint = tmp_path / "step_2"
    checkpoint.mkdir()
    state = {"step": 2, "scheduler": {}, "position": {"epoch": 0, "batch": 0}}
    (checkpoint / "training_args.json").write_text(json.dumps({"max_train_steps": 8, "streaming": False}))
    args = argparse.Namespace(output_dir=str(tmp_path), streaming=False, max_train_steps=8)

    def printed(recorded: dict | Computation, current: Computation | None) -> list[str]:
        record = {"computation": asdict(recorded)} if isinstance(recorded, Computation) else recorded
        (checkpoint / "training_state.json").write_text(json.dumps({**state, **record}))
        lines = []
        check_resume(args, checkpoint, log=lines.append, computation=current)
        return lines

    def warning(changes: str, remedy: str) -> list[str]:
        return [
            f"Warning: {checkpoint} was trained computing otherwise than this run: {changes}. Float sums then run in "
            "another order, so the weights and metrics.json equal the uninterrupted run's only up to float32 "
            f"rounding (~1e-5), not bit for bit. For an exact resume, resume {remedy}."
        ]

    cpu = Computation(device="cpu", torch_compile=False, threads=4)
    compiled = replace(
        cpu, torch_compile=True, torch_compile_backend="inductor", torch_compile_mode="default"
    )
    gpu = Computation("cuda", True, "inductor", "reduce-overhead", threads=None)
    threads = "torch threads per process (--num_threads, by default the cores available) 4 -> 2"
    assert printed(cpu, replace(cpu, threads=2)) == warning(threads, "with --num_threads 4")
    assert printed(cpu, compiled) == warning(
        "--torch_compile off -> on (inductor, mode default)", "without --torch_compile"
    )
    assert printed(compiled, replace(compiled, torch_compile_mode="max-autotune", threads=2)) == warning(
        f"--torch_compile on (inductor, mode default) -> on (inductor, mode max-autotune); {threads}",
        "with --torch_compile --torch_compile_backend inductor --torch_compile_mode default, with --num_threads 4",
    )
    # a backend with no mode of its own (--torch_compile_mode left out)
    eager = replace(compiled, torch_compile_backend="eager", torch_compile_mode=None)
    assert printed(eager, cpu) == warning(
        "--torch_compile on (eager) -> off", "with --torch_compile --torch_compile_backend eager"
    )
    # a GPU run resumed on the CPU (accelerate's --cpu, CUDA_VISIBLE_DEVICES empty): its threads are not compared
    assert printed(gpu, compiled) == warning(
        "device type cuda -> cpu; --torch_compile on (inductor, mode reduce-overhead) -> on (inductor, mode default)",
        "on a cuda device (without accelerate's --cpu), with --torch_compile --torch_compile_backend inductor "
        "--torch_compile_mode reduce-overhead",
    )
    assert printed(compiled, Computation("cuda", torch_compile=False)) == warning(
        "device type cpu -> cuda; --torch_compile on (inductor, mode default) -> off",
        "on the CPU (accelerate launch --cpu), with --torch_compile --torch_compile_backend inductor "
        "--torch_compile_mode default",
    )
    assert printed(cpu, cpu) == printed(gpu, gpu) == printed(cpu, None) == []
    # a checkpoint written before devices and torch.compile were recorded: its threads only, or nothing
    assert printed({"threads": 4}, replace(cpu, threads=2)) == warning(threads, "with --num_threads 4")
    assert printed({"threads": 4}, compiled) == printed({"threads": None}, gpu) == printed({}, gpu) == []


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--rfm_start_step", 7, "--decoder_dropout", 0.2, "--par_dilations", 1, 2],
        ["--rfm_start_step", 0, "--decoder_dropout", 0.0],  # given as 0: given, not the recipe's
        ["--preset", "voc", "--dataset_name", "user/voc", "--rfm_num_maps", 3, "--attention_num_maps", 3],
        ["--dataset_name", "user/data", "--class_names", "a", "b", "--semantic_loss_ignore_index", 254],
    ],
)
def test_the_values_in_effect_the_arguments_fix_are_those_of_the_model_built(tiny_clip, flags):
    """A resume compares the values in effect that its arguments fix before the data and model load (a flag left
    out, so refused at once): each must be the built model's, or a resume that would go on exactly is refused. The
    toy recipe, flags given, a preset, no preset; the names a dataset may set are left to the built model."""
    known, built = resolved_known_and_built("--clip_model_name_or_path", tiny_clip, *flags)
    assert {"rfm_start_step", "decoder_hidden_size", "clip_model_name_or_path"} <= known.keys()
    assert known == {key: built[key] for key in known}
    assert "prompt_template" not in known and ("class_names" in known) == ("--class_names" in flags)


def test_the_values_in_effect_the_arguments_fix_for_a_saved_model_are_its_configs(toy_weclip_dir):
    """--model_name_or_path: a flag left out takes the saved config's value, known before the model loads."""
    known, built = resolved_known_and_built("--model_name_or_path", toy_weclip_dir, "--decoder_dropout", 0.3)
    assert {"rfm_start_step", "class_names", "prompt_template", "decoder_dropout"} <= known.keys()
    assert known == {key: built[key] for key in known}
    assert known["decoder_dropout"] == 0.3 and known["clip_model_name_or_path"] is None


def test_the_launch_is_part_of_the_trajectory():
    """The number of processes (global batch, data shards) and accelerate's mixed precision are recorded with
    the flags: resuming a 2-process run in 1 process is refused, naming them."""

    class Launch:
        num_processes, mixed_precision = 2, "no"

    args = train.parse_args([])
    saved = trajectory_args(args, Launch())
    assert {saved["num_processes"], saved["mixed_precision"]} == {"2", "no"}
    Launch.num_processes = 1
    assert changed_trajectory_args(saved, args, Launch()) == ["accelerate launch: num_processes '2' -> '1'"]


def test_resume_refuses_changed_arguments_and_a_finished_checkpoint(tmp_path, tiny_clip):
    out = tmp_path / "run"
    common = ["--clip_model_name_or_path", tiny_clip, "--output_dir", out, *FAST, "--num_overlays", 0]
    train_in_process(*common, "--max_train_steps", 2, "--checkpointing_steps", 1)
    saved = json.loads((out / "step_1" / TRAINING_ARGS_NAME).read_text())
    assert saved["learning_rate"] == 0.002 and saved["max_train_steps"] == 2
    resume = [*common, "--max_train_steps", 2, "--resume_from_checkpoint"]
    with pytest.raises(
        ValueError, match=r"Cannot resume .*--learning_rate 0\.002 -> 0\.001; --seed 0 -> 3\."
    ):
        train_in_process(*resume, out / "step_1", "--learning_rate", "0.001", "--seed", 3)
    with pytest.raises(
        ValueError, match="at step 2, and --max_train_steps is 2: the run is complete .* nothing left to do"
    ):
        train_in_process(*resume, "latest")
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 2  # untouched


def test_a_resumed_run_may_change_how_often_it_logs(tmp_path, tiny_clip):
    """... and its last step is logged also where it is not a multiple of --logging_steps (the final losses)."""
    out = tmp_path / "run"
    common = ["--clip_model_name_or_path", tiny_clip, "--output_dir", out, *FAST, "--num_overlays", 0]
    common += ["--max_train_steps", 2, "--toy_train_images", 8]
    train_in_process(*common, "--checkpointing_steps", 1)
    shutil.rmtree(out / "step_2")  # as if stopped after step 1
    metrics = train_in_process(*common, "--resume_from_checkpoint", out / "step_1", "--logging_steps", 3)
    assert metrics["train_steps"] == 2
    assert [record["step"] for record in read_log(out)] == [1, 2]


def test_exit_status_of_a_stopped_run():
    assert exit_status({"stopped_at": 3, "stopped_by_signal": int(signal.SIGINT)}) == 130
    assert exit_status({"stopped_at": 3, "stopped_by_signal": int(signal.SIGTERM)}) == 143
    assert exit_status({"train_steps": 3}) == 0


def test_local_data_is_not_called_the_toy_world():
    description = train_phase("model_card").dataset_description
    assert description(train.parse_args(["--data_dir", "/data/my_shapes"])) == "my_shapes (a local dataset)"
    assert description(train.parse_args(["--dataset_name", "org/voc"])) == "org/voc"
    assert "toy world" in description(train.parse_args([]))


def test_the_card_claims_only_the_models_own_results_on_its_dataset(tiny_clip, tmp_path):
    from huggingface_hub import ModelCard

    # a local CLIP checkpoint (a folder that holds none is refused at parsing)
    args = train.parse_args(
        ["--data_dir", str(tmp_path / "my_shapes"), "--clip_model_name_or_path", tiny_clip]
    )
    summary = {
        "miou": 0.5,
        "cam_miou": 0.4,
        "pseudo_label_miou": 0.45,
        "miou_msf": 0.52,
        "baseline_bg_miou": 0.1,
        "train_seconds": 77.0,  # metrics.json's timings and counts are the run's, not the model's
        "total_seconds": 90.0,
        "train_images": 4000,
    }
    train_phase("model_card").write_card(args, make_tiny_config(), tmp_path, summary, "validation")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.datasets is None and card.data.base_model is None  # no Hub dataset, a local CLIP
    results = card.data.eval_results
    assert {r.metric_name for r in results} == {"miou", "miou_msf"}
    assert {r.dataset_name for r in results} == {"my_shapes (a local dataset)"}
    # the split scored, named (the card said "On my_shapes (a local dataset)" only)
    assert {r.dataset_split for r in results} == {"validation"}
    assert "On my_shapes (a local dataset), split 'validation':" in card.content
    assert "toy" not in card.content.split("## Training arguments")[0].lower()
    assert "| cam_miou | 0.4000 |" in card.content and "| baseline_bg_miou | 0.1000 |" in card.content
    assert not any(word in card.content for word in ("train_seconds", "total_seconds", "train_images"))


@pytest.mark.parametrize(
    "script, argv",
    [
        ("evaluate", ["--model_name_or_path", "{model}"]),
        ("segment", ["--model_name_or_path", "{model}", "--images", "{tmp}", "--output_dir", "{tmp}/out"]),
        ("generate_pseudo_labels", ["--model", "{model}", "--output_dir", "{tmp}/out"]),
        ("train", ["--model_name_or_path", "{model}", "--output_dir", "{tmp}/out", *FAST, *IN_PROCESS]),
    ],
)
def test_a_saved_model_the_hub_cannot_give_is_named_with_its_flag(script, argv, tmp_path):
    """Offline, a --model_name_or_path (--model) Hub id not in the cache: each script stopped with transformers'
    "couldn't connect" error alone, naming neither the id nor the flag that gave it."""
    nowhere = "weclip-hf-tests/not-a-model"
    flag = "--model" if script == "generate_pseudo_labels" else "--model_name_or_path"
    argv = [arg.format(model=nowhere, tmp=tmp_path) for arg in argv]
    with pytest.raises(
        OSError, match=rf"Could not load the WeCLIP \({flag}\) checkpoint '{nowhere}': (?s:.*)local"
    ):
        load_script(script).main(argv)


# the scripts that run a model in each process of a launch, with the arguments each requires
DEVICE_SCRIPTS = {
    "segment": ["--model_name_or_path", "{model}", "--images", "{tmp}", "--output_dir", "{tmp}/out"],
    "generate_pseudo_labels": ["--model", "{model}", "--output_dir", "{tmp}/out"],
    "evaluate": ["--model_name_or_path", "{model}"],
}


def device_argv(script: str, tmp_path, *device: str) -> list[str]:
    """The required arguments of ``script`` (`DEVICE_SCRIPTS`; a model folder of a config.json alone, which parsing
    accepts and no model loads from) and ``device``."""
    make_tiny_config().save_pretrained(tmp_path / "model")
    argv = [arg.format(model=tmp_path / "model", tmp=tmp_path) for arg in DEVICE_SCRIPTS[script]]
    return [*argv, *device]


def only_the_cpu_and_two(device_type: str | None):
    """A `script_arguments.devices.device_count` of a machine of the CPU and, where given, two devices of
    ``device_type``."""
    return lambda kind: {"cpu": 1, device_type: 2}.get(kind, 0)


@pytest.mark.parametrize("script", sorted(DEVICE_SCRIPTS))
@pytest.mark.parametrize(
    "device, message",
    [
        (
            "gpu",
            "argument --device: 'gpu' is no torch device (a GPU is cuda): give cpu, cuda, cuda:N, mps or xpu.",
        ),
        (
            "cuda",
            "argument --device: 'cuda': torch finds no cuda device here (torch.cuda.is_available() is False: no such "
            "device, or a torch built without cuda support); devices here: cpu.",
        ),
        ("meta", "argument --device: 'meta': torch finds no meta device here"),
    ],
)
def test_a_device_that_is_not_here_is_refused_before_any_model_loads(
    script, device, message, tmp_path, capsys, monkeypatch
):
    """segment.py and generate_pseudo_labels.py had no --device (a CPU run on a GPU machine needed
    ACCELERATE_USE_CPU=1); evaluate.py's took any string and failed after loading the model ("Torch not compiled
    with CUDA enabled", or torch's list of twenty device types for 'gpu'). Now --device is refused at parse time,
    saying what there is, before any model is read (the model folder given holds no weights)."""
    from weclip_hf.script_arguments import devices

    monkeypatch.setattr(devices, "device_count", only_the_cpu_and_two(None))
    assert message in parse_error(
        load_script(script).main, device_argv(script, tmp_path, "--device", device), capsys
    )


def test_a_device_index_beyond_the_devices_here_is_refused(monkeypatch):
    from weclip_hf.script_arguments import devices

    monkeypatch.setattr(devices, "device_count", only_the_cpu_and_two("cuda"))
    assert devices.device_name("cuda:1") == "cuda:1"
    with pytest.raises(
        argparse.ArgumentTypeError, match=r"'cuda:2': torch finds 2 cuda devices here, cuda:0..cuda:1"
    ):
        devices.device_name("cuda:2")
    monkeypatch.setattr(devices, "device_count", lambda kind: 1)
    with pytest.raises(
        argparse.ArgumentTypeError, match=r"'cuda:1': torch finds 1 cuda device here, cuda:0..cuda:0"
    ):
        devices.device_name("cuda:1")


@pytest.mark.parametrize("script", sorted(DEVICE_SCRIPTS))
@pytest.mark.parametrize(
    "env, device, message",
    [
        (
            {"ACCELERATE_USE_CPU": "1"},
            "cuda",
            "--device cuda asks for a cuda device, and ACCELERATE_USE_CPU=1 (`accelerate launch --cpu`) for the "
            "CPU: drop one of them.",
        ),
        (
            {"WORLD_SIZE": "2"},
            "cuda:1",
            "--device cuda:1 would put all 2 processes of the launch on one device: give --device cuda (each process "
            "takes its own, cuda:LOCAL_RANK) or leave it out; choose the GPUs with CUDA_VISIBLE_DEVICES.",
        ),
        ({"WORLD_SIZE": "2"}, "cuda", None),  # each process its own GPU
        ({"WORLD_SIZE": "2"}, "cpu", None),  # several CPU processes
        ({"ACCELERATE_USE_CPU": "1"}, "cpu", None),
    ],
)
def test_a_device_the_launch_contradicts_is_refused(
    script, env, device, message, tmp_path, capsys, monkeypatch
):
    """On a machine of two GPUs (`device_count` says so): a GPU asked for where ACCELERATE_USE_CPU=1 puts the
    processes on the CPU, and one GPU by its index for several processes, are refused at parse time."""
    from weclip_hf.script_arguments import devices

    monkeypatch.setattr(devices, "device_count", only_the_cpu_and_two("cuda"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parse = load_script(script).parse_args
    argv = device_argv(script, tmp_path, "--device", device)
    if message is None:
        assert parse(argv).device == device
    else:
        assert parse_error(parse, argv, capsys).endswith(f"error: {message}")


def test_process_device_is_the_device_given_else_accelerates():
    """--device cpu on a GPU process is the CPU; a device type without an index is the process's own device of
    that type (cuda:LOCAL_RANK under a launch); an index, that device; none, accelerate's."""
    import torch

    from weclip_hf.script_arguments import process_device

    on_gpu = argparse.Namespace(device=torch.device("cuda:1"))
    assert process_device(None, on_gpu) == torch.device("cuda:1")
    assert process_device("cpu", on_gpu) == torch.device("cpu")
    assert process_device("cuda", on_gpu) == torch.device("cuda:1")
    assert process_device("cuda:0", on_gpu) == torch.device("cuda:0")
    assert process_device("cuda", argparse.Namespace(device=torch.device("cpu"))) == torch.device("cuda")


@pytest.mark.parametrize("script", sorted(DEVICE_SCRIPTS))
def test_the_device_flag_is_one_and_the_same_in_each_script(script, monkeypatch):
    """--device: one help text, no default (accelerate's device), the same check in segment.py,
    generate_pseudo_labels.py and evaluate.py."""
    from weclip_hf.script_arguments import PROCESS_DEVICE_HELP, device_name

    (flag,) = [a for a in script_parser(script, monkeypatch)._actions if "--device" in a.option_strings]
    assert (flag.help, flag.default, flag.type) == (PROCESS_DEVICE_HELP, None, device_name)
    assert "ACCELERATE_USE_CPU=1" in flag.help and "CUDA_VISIBLE_DEVICES" in flag.help


def test_counted_says_a_count_of_one_in_the_singular():
    from weclip_hf.wording import counted

    assert [counted(n, "input") for n in (0, 1, 2)] == ["0 inputs", "1 input", "2 inputs"]
    assert [counted(n, "class", "classes") for n in (1, 3)] == ["1 class", "3 classes"]


def test_pathological_config_overrides_are_refused_naming_the_flag():
    """--config_overrides: a value nesting 100,000 lists ended in a RecursionError, a 5,000-digit integer in a bare
    "Exceeds the limit" error; a field given twice took its last value; 500,000 unclosed '[' took a quadratic split
    (2 min) that dropped them, reading the field as ''. Each is now refused naming the flag (and the field), in one
    linear pass; nested lists split right ([[1, 2], [3]] was cut at its inner comma)."""
    import time

    from weclip_hf import WeCLIPConfig
    from weclip_hf.script_arguments.config_overrides import parse_config_overrides

    for text, problem in [
        ("attention_num_maps=" + "[" * 100_000 + "]" * 100_000, " attention_num_maps: its arrays or objects nest"),
        ("attention_num_maps=1" + "0" * 5000, " attention_num_maps: holds an integer too long to read"),
        ("attention_num_maps=2,attention_num_maps=5", ": attention_num_maps is given twice"),
        ("cam_box_threshold=NaN", " cam_box_threshold: holds NaN"),
        ("attention_num_maps=" + "[" * 500_000, f" {'attention_num_maps=' + '[' * 41!r}... (500019 characters): "
         "500000 '[' left open"),
    ]:  # fmt: skip
        start = time.perf_counter()
        with pytest.raises(ValueError, match=re.escape(f"--config_overrides{problem}")):
            parse_config_overrides(text, WeCLIPConfig)
        assert time.perf_counter() - start < 2
    assert parse_config_overrides("par_dilations=[[1,2],[3]],decoder_dropout=0", WeCLIPConfig) == {
        "par_dilations": [[1, 2], [3]],
        "decoder_dropout": 0,
    }

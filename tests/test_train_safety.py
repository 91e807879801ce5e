"""examples/train.py loses no finished work (issue 25, items 5 and 7): the output folder is locked and probed
at start, the model is saved before the final evaluation, Ctrl-C works after the training loop, and
--model_name_or_path applies the model flags it is given (or refuses those it cannot)."""

import json
import os
import shlex
import signal
import sys
import time
import types

import pytest
from conftest import FAST, evaluate_module, read_log, train_in_process, train_module, train_phase

from weclip_hf.run_folder import lock_output_dir
from weclip_hf.run_signals import explain_signals

SHORT = [
    *FAST,
    "--num_overlays",
    "0",
    "--toy_train_images",
    "8",
    "--toy_val_images",
    "2",
    "--max_train_steps",
    "1",
]


@pytest.fixture
def train():
    return train_module()


@pytest.fixture
def python_sigint_handler():
    """Ctrl-C raising KeyboardInterrupt (Python's own handler) for the test, however pytest was started: Python
    leaves SIGINT ignored when it starts so (``nohup python -m pytest ... &`` from a script), and train.py gives
    back the handler it found; the one before is restored after."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_second_run_on_a_locked_output_dir_is_refused_at_start(tmp_path, tiny_clip, train):
    out = tmp_path / "run"
    held = lock_output_dir(out)  # another run holds the folder
    try:
        with pytest.raises(
            RuntimeError, match=f"{out}.*in use by another training run \\(pid {os.getpid()}\\)"
        ):
            train_in_process("--clip_model_name_or_path", tiny_clip, "--output_dir", str(out), *SHORT)
        assert not (out / "train_log.jsonl").exists()
    finally:
        held.close()
    train_in_process(
        "--clip_model_name_or_path", tiny_clip, "--output_dir", str(out), *SHORT
    )  # released: runs
    assert (out / "model.safetensors").exists()


def test_the_output_dir_lock_works_without_fcntl_as_on_windows(tmp_path, monkeypatch):
    """train.py could not start on Windows: the lock imported fcntl, which Windows lacks. There msvcrt locks the lock
    file's first byte (a stand-in here records the locks as Windows would hold them: per file, refused when held)."""
    held = set()

    def locking(fd, mode, nbytes):
        key = os.path.realpath(f"/proc/self/fd/{fd}")
        if key in held:
            raise PermissionError(13, "Permission denied")
        held.add(key)

    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError
    monkeypatch.setitem(sys.modules, "msvcrt", types.SimpleNamespace(locking=locking, LK_NBLCK=2))
    first = lock_output_dir(tmp_path / "run")
    try:
        with pytest.raises(RuntimeError, match=r"in use by another training run \(pid \d+\)"):
            lock_output_dir(tmp_path / "run")
    finally:
        first.close()
    assert len(held) == 1 and (tmp_path / "run" / ".lock").read_text() == f"pid {os.getpid()}"


def test_a_run_refused_after_locking_its_new_output_dir_leaves_no_folder(tmp_path, tiny_clip):
    out = tmp_path / "run"
    with pytest.raises(Exception, match="checkpoint"):
        train_in_process(
            "--clip_model_name_or_path",
            tiny_clip,
            "--output_dir",
            str(out),
            "--resume_from_checkpoint",
            "latest",
        )
    assert not out.exists()
    kept = tmp_path / "kept"  # a folder of the user's own is never removed, however empty
    kept.mkdir()
    with pytest.raises(Exception, match="checkpoint"):
        train_in_process(
            "--clip_model_name_or_path",
            tiny_clip,
            "--output_dir",
            str(kept),
            "--resume_from_checkpoint",
            "latest",
        )
    assert kept.is_dir()


def test_an_unwritable_output_dir_is_found_before_training(tmp_path, tiny_clip, train, capsys):
    """An --output_dir inside a file is refused as the arguments are parsed; a folder that cannot be written for
    another reason (the lock's probe: a read-only disk, permissions) is named before anything trains."""
    from weclip_hf.run_folder import lock_output_dir

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit):
        train_in_process("--clip_model_name_or_path", tiny_clip, "--output_dir", str(blocker / "run"), *SHORT)
    assert f"is inside {str(blocker)!r}, which is an existing file, not a folder." in capsys.readouterr().err
    # the lock's own check (run as root here, permissions cannot be taken away: the same file stands in)
    with pytest.raises(PermissionError, match="--output_dir .*a_file/run is not writable"):
        lock_output_dir(blocker / "run")


def test_the_model_is_saved_before_a_failing_final_evaluation(tmp_path, tiny_clip, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("a validation image the model cannot take")

    monkeypatch.setattr(train_phase("evaluation"), "evaluate_segmentation", broken)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="cannot take"):
        train_in_process("--clip_model_name_or_path", tiny_clip, "--output_dir", str(out), *SHORT)
    for name in ("model.safetensors", "config.json", "preprocessor_config.json"):
        assert (out / name).exists(), name
    from weclip_hf import WeCLIPForSemanticSegmentation

    assert WeCLIPForSemanticSegmentation.from_pretrained(out).training_step.item() == 1


def test_ctrl_c_during_the_final_evaluation_interrupts_it(
    tmp_path, tiny_clip, monkeypatch, capsys, python_sigint_handler
):
    """... saying what is saved, what is not and how to finish (it exited without a word, leaving a folder that
    neither a resume nor a plain rerun would take); the handler it found (Python's) is back afterwards."""
    evaluated = []

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        evaluated.append("went on after Ctrl-C")
        return {}

    monkeypatch.setattr(train_phase("evaluation"), "evaluate_segmentation", interrupted)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_in_process("--clip_model_name_or_path", tiny_clip, "--output_dir", str(out), *SHORT)
    assert evaluated == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    message = capsys.readouterr().out
    assert (
        f"stopped by signal 2 after the training: the trained model (step 1) is saved in {out} (model.safetensors, "
        "config.json, preprocessor_config.json, tokenizer.json, tokenizer_config.json), but not" in message
    )
    assert "but not metrics.json and README.md; score it with: python examples/evaluate.py" in message
    assert not (out / "metrics.json").exists()
    # a command evaluate.py takes, on the run's model and validation data
    command = shlex.split(message.split("score it with: ")[1].split(" (or train again")[0])
    args = evaluate_module().parse_args(command[2:])
    assert args.model_name_or_path == str(out) and args.toy_val_images == 2 and args.pseudo_labels
    # ... or the run finishes from its last checkpoint (step_1): the model saved again as it was, evaluated, carded,
    # without a step trained or checkpoint written twice (a resume of the last step was refused: "nothing left")
    assert message.rstrip().endswith(
        "the same command with --resume_from_checkpoint latest (its last checkpoint)."
    )
    monkeypatch.undo()
    weights = (out / "model.safetensors").read_bytes()
    checkpoint = (out / "step_1" / "model.safetensors").stat().st_mtime_ns
    resume = ["--clip_model_name_or_path", tiny_clip, "--output_dir", str(out), *SHORT]
    metrics = train_in_process(*resume, "--resume_from_checkpoint", "latest")
    assert metrics["train_steps"] == 1 and "miou" in metrics and (out / "README.md").is_file()
    assert (out / "model.safetensors").read_bytes() == weights
    assert (out / "step_1" / "model.safetensors").stat().st_mtime_ns == checkpoint
    assert [r["step"] for r in read_log(out) if "loss" in r] == [1]
    assert "is the run's last step: its training is done" in capsys.readouterr().out
    with pytest.raises(
        ValueError, match=r"the run is complete \(.* holds its model.safetensors, metrics.json, README"
    ):
        train_in_process(*resume, "--resume_from_checkpoint", "latest")


def test_each_checkpoint_is_written_once(tmp_path, tiny_clip, train, monkeypatch, capsys):
    """The last step fell on --checkpointing_steps and was written twice (twice its disk space at the end, and a
    window in which neither copy was step_N). Without a validation split the RFM note promised "metrics.json's
    pseudo_label_miou" all the same, and no such figure was written."""
    saved = []
    save = train.save_training_checkpoint
    monkeypatch.setattr(train, "save_training_checkpoint", lambda *a: saved.append(a[2].step) or save(*a))
    run = ["--clip_model_name_or_path", tiny_clip, "--output_dir", tmp_path / "run", *SHORT]
    metrics = train_in_process(
        *run, "--max_train_steps", 2, "--checkpointing_steps", 1, "--validation_split", "none"
    )
    assert saved == [1, 2]
    printed = capsys.readouterr().out
    assert (
        "the RFM acts after 150 steps, and this run ends after 2 steps" in printed
        and "pseudo_label_miou" not in printed
    )
    assert "pseudo_label_miou" not in metrics


def test_sigterm_after_the_training_says_what_is_saved_and_exits_with_143(train, capsys):
    """SIGTERM in the final evaluation (``explain_signals``) stops at once, as a killed process (143), after the
    message; the handlers before it are back afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        with explain_signals(lambda signum: f"stopped by signal {signum}: the model is saved"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted by the handler
    assert stopped.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().out == "stopped by signal 15: the model is saved\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_semantic_loss_ignore_index_is_a_flag_and_an_ignore_index_of_minus_100_trains(tmp_path, tiny_clip):
    """More than 254 classes need an ignore index outside 0..C (the config says "Use -100"), which train.py had no
    flag for; and a model of -100 crashed on every mask ("Python integer -100 out of bounds for uint8"), the crop
    padding of --fully_supervised included. Fresh and saved models take the flag; the overlays draw -100."""
    run = [*SHORT, "--fully_supervised", "--num_overlays", "1"]
    first, second = tmp_path / "first", tmp_path / "second"
    train_in_process("--clip_model_name_or_path", tiny_clip, "--output_dir", first, *run,
                     "--semantic_loss_ignore_index", -100)  # fmt: skip
    assert json.loads((first / "config.json").read_text())["semantic_loss_ignore_index"] == -100
    assert json.loads((first / "preprocessor_config.json").read_text())["ignore_index"] == -100
    assert (first / "overlays" / "val_000.png").is_file()
    train_in_process(
        "--model_name_or_path", first, "--output_dir", second, *run, "--semantic_loss_ignore_index", 300
    )
    assert json.loads((second / "config.json").read_text())["semantic_loss_ignore_index"] == 300


def test_model_name_or_path_applies_the_model_flags_it_is_given(tmp_path, tiny_clip, train, capsys):
    first = tmp_path / "first"
    train_in_process("--clip_model_name_or_path", tiny_clip, "--output_dir", str(first), *SHORT)
    again = ["--model_name_or_path", str(first), *SHORT, "--max_train_steps", "2"]
    train_in_process(
        *again, "--output_dir", tmp_path / "second", "--rfm_start_step", 7, "--decoder_dropout", 0.3
    )
    assert "RFM after 7 steps (--rfm_start_step)" in capsys.readouterr().out
    config = json.loads((tmp_path / "second" / "config.json").read_text())
    assert config["rfm_start_step"] == 7 and config["decoder_dropout"] == 0.3
    # the toy recipe's own values (e.g. RFM from 150) do not override the saved model's config
    train_in_process(*again, "--output_dir", tmp_path / "third")
    assert (
        json.loads((tmp_path / "third" / "config.json").read_text())["rfm_start_step"]
        == json.loads((first / "config.json").read_text())["rfm_start_step"]
    )
    saved = json.loads((first / "config.json").read_text())
    with pytest.raises(
        ValueError,
        match=rf"--decoder_hidden_size 64 cannot be applied to the trained model of --model_name_or_path \(its "
        rf"decoder_hidden_size: {saved['decoder_hidden_size']}\)",
    ):
        train_in_process(*again, "--output_dir", tmp_path / "fourth", "--decoder_hidden_size", 64)
    # restating the trained model's own values changes nothing (it was refused as a change of its weights)
    restated = ["--decoder_hidden_size", saved["decoder_hidden_size"], "--class_names", *saved["class_names"]]
    train_in_process(*again, "--output_dir", tmp_path / "fifth", *restated)
    assert json.loads((tmp_path / "fifth" / "config.json").read_text())["class_names"] == saved["class_names"]


@pytest.mark.parametrize(
    "flags",
    [[], ["--no_msf", "--seed", "3", "--per_device_eval_batch_size", "2"], ["--msf_scales", "0.75", "1.25"]],
)
def test_the_evaluate_command_of_an_unfinished_run_scores_as_its_final_evaluation(train, flags):
    """`evaluate_command`, which a run stopped after its training prints: evaluate.py scores the run's model on the
    run's validation images (the toy world of its seed), with the pseudo labels, the run's multi-scale evaluation
    (its scales) unless --no_msf, and its evaluation batch."""
    args = train.parse_args(["--output_dir", "out", "--toy_val_images", "5", *flags])
    command = shlex.split(train_phase("run_end").evaluate_command(args))
    assert command[:2] == ["python", "examples/evaluate.py"]
    parsed = evaluate_module().parse_args(command[2:])
    assert (parsed.model_name_or_path, parsed.toy_val_images, parsed.seed) == ("out", 5, args.seed)
    assert parsed.pseudo_labels and parsed.batch_size == args.per_device_eval_batch_size
    assert parsed.msf == (not args.no_msf)
    if parsed.msf:
        assert parsed.scales == args.msf_scales

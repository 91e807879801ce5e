"""examples/train.py killed with SIGKILL mid-step and mid-checkpoint-write, then resumed, repeats an uninterrupted
run exactly.

A real training subprocess (tiny random CLIP, CPU) is killed at a random point of its third step, resumed with
``--resume_from_checkpoint latest``, killed again while it writes its next checkpoint, resumed, and run to the
end. The second kill provably lands mid-write: that run hangs inside ``accelerator.save_state`` right after the
checkpoint's first file is written (a test hook in the launcher), and is killed once the test has seen the
partial checkpoint folder. The final loss curve (``train_log.jsonl``) and weights (``model.safetensors``) must be
bit-identical to those of the uninterrupted `reference_run`, and every ``step_N`` checkpoint a resume could pick
must be complete (checkpoints are written to ``step_N.tmp`` and renamed). A run killed in the evaluation of a step
of --eval_steps, once that step's checkpoint is written (``HANG_IN_EVALUATION``), is resumed with that evaluation.
"""

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import read_log, resumable_args, run_train, train_command, train_env

STEPS = (
    6  # resumable_args: 16 toy images in batches of 4, two epochs: resumes land mid-epoch and across epochs
)
TIMEOUT_S = 180

# Runs examples/train.py (argv[1:]) with accelerate's checkpoint writer hanging after the first file it writes for
# the checkpoint $WECLIP_TEST_HANG_AT (``step_N``: into ``step_N`` or ``step_N.tmp``), once it has written that
# file's path to $WECLIP_TEST_HUNG.
HANG_MID_WRITE = """
import os, runpy, sys, time
import accelerate.checkpointing as checkpointing

write = checkpointing.save

def write_then_hang(obj, f, *args, **kwargs):
    write(obj, f, *args, **kwargs)
    path = os.path.abspath(f)
    if os.path.basename(os.path.dirname(path)).partition(".")[0] == os.environ["WECLIP_TEST_HANG_AT"]:
        with open(os.environ["WECLIP_TEST_HUNG"], "w") as marker:
            marker.write(path)
        time.sleep(600)

checkpointing.save = write_then_hang
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# Runs examples/train.py (argv[1:]) with its first evaluation (the first of --eval_steps) hanging, once it has
# written $WECLIP_TEST_HUNG.
HANG_IN_EVALUATION = """
import os, runpy, sys, time
import weclip_hf.evaluation as evaluation

def hang(*args, **kwargs):
    with open(os.environ["WECLIP_TEST_HUNG"], "w") as marker:
        marker.write("evaluating")
    time.sleep(600)

evaluation.evaluate_segmentation = hang
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _start(
    args: list,
    log_file: Path,
    hang_at: str | None = None,
    hung: Path | None = None,
    hook: str = HANG_MID_WRITE,
) -> subprocess.Popen:
    """Start examples/train.py (one CPU thread) with stdout and stderr going to ``log_file``; with ``hung``, run by
    the launcher ``hook``: by default its checkpoint writer hangs after the first file it writes for checkpoint
    ``hang_at`` (``step_N``), whose path it writes to ``hung`` (see ``HANG_MID_WRITE``)."""
    launcher, env = (sys.executable,), {**train_env(threads=1), "PYTHONUNBUFFERED": "1"}
    if hung is not None:
        launcher = (sys.executable, "-c", hook)
        env.update(WECLIP_TEST_HANG_AT=str(hang_at), WECLIP_TEST_HUNG=str(hung))
    with open(log_file, "w") as log:
        command = train_command(*args, threads=1, launcher=launcher)
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _checkpoint_steps(output_dir: Path) -> list[int]:
    """Steps of the resumable ``step_N`` folders of a run (``step_N.tmp`` is a write in progress)."""
    names = (p.name.removeprefix("step_") for p in output_dir.glob("step_*"))
    return [int(n) for n in names if n.isdigit()]


def _files(folder: Path) -> dict[str, int | None]:
    """{file name: size} of the files in ``folder`` (training_state.json: None when it parses, as its size varies
    with the wall-clock seconds it records)."""
    return {f.name: _parsed_size(f) for f in folder.iterdir()}


def _parsed_size(file: Path) -> int | None:
    """The size of ``file``; for a training_state.json that parses (a whole one), None."""
    if file.name == "training_state.json":
        try:
            json.loads(file.read_text())
            return None
        except ValueError:
            pass
    return file.stat().st_size


def _checkpoints(output_dir: Path) -> dict[int, dict[str, int]]:
    """The resumable ``step_N`` folders of a stopped run: step -> {file name: size}."""
    return {s: _files(output_dir / f"step_{s}") for s in _checkpoint_steps(output_dir)}


def _wait_for(proc: subprocess.Popen, done, what: str) -> None:
    """Poll until ``done()``; fail if the run exits or TIMEOUT_S passes first."""
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited (code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {TIMEOUT_S} s")
        time.sleep(0.01)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, f"the run ended (code {proc.returncode}) before the kill"


def _finish(proc: subprocess.Popen, log_file: Path) -> str:
    """Wait for a run that must succeed; return its output."""
    proc.wait(timeout=TIMEOUT_S)
    output = log_file.read_text()
    assert proc.returncode == 0, f"train.py failed:\n{output[-5000:]}"
    return output


def _resumed_from(log_file: Path) -> tuple[str, int]:
    """(checkpoint path, step) of the 'resumed from' line of the run logged in ``log_file``."""
    match = re.search(r"resumed from (\S+) at step (\d+)", log_file.read_text())
    assert match, f"no 'resumed from' line in {log_file.name}"
    return match[1], int(match[2])


def test_sigkill_mid_step_and_mid_checkpoint_write_then_resume_repeats_the_run(
    tmp_path, tiny_clip, reference_run
):
    common, out = resumable_args(tiny_clip), tmp_path / "killed"
    complete = _checkpoints(reference_run)  # every step_N an uninterrupted run writes
    resume = ["--resume_from_checkpoint", "latest"]
    procs = []
    try:
        # 1. killed at a random point of step 3 (training or checkpoint): after a random part of the time step 2
        # took, from step 2's checkpoint on
        procs.append(_start([*common, "--output_dir", out], tmp_path / "first.log"))
        _wait_for(procs[-1], lambda: 1 in _checkpoint_steps(out), "the checkpoint of step 1")
        started = time.monotonic()
        _wait_for(procs[-1], lambda: 2 in _checkpoint_steps(out), "the checkpoint of step 2")
        time.sleep(random.Random(0).uniform(0.0, time.monotonic() - started))
        _kill(procs[-1])
        after_first = _checkpoints(out)
        step = max(after_first)
        assert step < STEPS, "the first run was killed after its last checkpoint"

        # 2. resumed, and killed while writing its first checkpoint: one file written, the others not yet
        hung, second = tmp_path / "hung", [*common, "--output_dir", out, *resume]
        procs.append(_start(second, tmp_path / "second.log", f"step_{step + 1}", hung))
        _wait_for(
            procs[-1], lambda: hung.exists() and hung.read_text(), f"a hang in the write of step {step + 1}"
        )
        writing = Path(hung.read_text()).parent
        partial = _files(writing)
        _kill(procs[-1])
        assert _resumed_from(tmp_path / "second.log") == (str(out / f"step_{step}"), step)
        assert set(partial) < set(complete[step + 1]), f"not a partial checkpoint: {partial}"
        assert _files(writing) == partial  # the kill left the write half done
        after_second = _checkpoints(out)
        assert max(after_second) == step, f"the half-written {writing.name} can be resumed from"

        # 3. resumed from the last complete checkpoint, not the partial one, and run to the end
        procs.append(_start([*common, "--output_dir", out, *resume], tmp_path / "third.log"))
        _finish(procs[-1], tmp_path / "third.log")
        assert _resumed_from(tmp_path / "third.log") == (str(out / f"step_{step}"), step)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()

    print(f"killed after step {step}, then in the write of {writing.name} holding {sorted(partial)}")
    # every step_N folder present after a kill (so one a resume could pick) was complete
    for kill, found in enumerate((after_first, after_second), start=1):
        for n, files in found.items():
            assert files == complete[n], f"incomplete step_{n} after kill {kill}"
    assert not list(out.glob("*.tmp")), "a stale step_N.tmp was left behind"

    assert read_log(out) == read_log(reference_run), f"loss curves differ (killed after step {step})"
    assert [r["step"] for r in read_log(out)] == list(range(1, STEPS + 1))
    from safetensors.torch import load_file

    killed, uninterrupted = (
        load_file(out / "model.safetensors"),
        load_file(reference_run / "model.safetensors"),
    )
    assert killed.keys() == uninterrupted.keys()
    different = [k for k in killed if not torch.equal(killed[k], uninterrupted[k])]
    assert not different, f"weights differ (killed after step {step}): {different[:5]}"
    assert int(killed["training_step"]) == STEPS


def test_sigkill_in_the_evaluation_of_a_checkpoint_step_then_resume_repeats_the_log(tmp_path, tiny_clip):
    """A run killed in the evaluation of a step of --eval_steps that is also a checkpoint step (every one with the
    VOC preset) had written the checkpoint first: the resumed run started after that step, and its log never got the
    step's evaluation. It evaluates it first: the log repeats the uninterrupted run's, that evaluation included."""
    common = [*resumable_args(tiny_clip), "--max_train_steps", 4, "--eval_steps", 3, "--num_overlays", 0]
    reference, out, hung = tmp_path / "reference", tmp_path / "killed", tmp_path / "hung"
    run_train(*common, "--output_dir", reference, threads=1)
    proc = _start([*common, "--output_dir", out], tmp_path / "first.log", hung=hung, hook=HANG_IN_EVALUATION)
    try:
        _wait_for(proc, lambda: hung.exists() and hung.read_text(), "a hang in the evaluation of step 3")
        _kill(proc)
    finally:
        proc.kill()
        proc.wait()
    assert max(_checkpoint_steps(out)) == 3
    resumed = _start(
        [*common, "--output_dir", out, "--resume_from_checkpoint", "latest"], tmp_path / "second.log"
    )
    _finish(resumed, tmp_path / "second.log")
    assert _resumed_from(tmp_path / "second.log") == (str(out / "step_3"), 3)
    assert read_log(out) == read_log(reference)
    assert [r["step"] for r in read_log(out) if "eval_miou" in r] == [3]

"""examples/train.py killed with SIGKILL at random points and resumed repeats an uninterrupted run exactly.

A real training subprocess (tiny random CLIP, CPU) is killed after a random delay once it has written a new
checkpoint, resumed with ``--resume_from_checkpoint latest``, killed again after a random delay once it has
started writing a new checkpoint (``step_N.tmp``), resumed, and finally run to the end. Its
loss curve (``train_log.jsonl``) and final weights (``model.safetensors``) must be bit-identical to those of
an uninterrupted run with the same seed, and every ``step_N`` checkpoint it could resume from must be
complete (checkpoints are written to ``step_N.tmp`` and renamed).
"""

import random
import re
import signal
import subprocess
import time
from pathlib import Path

import torch
from conftest import FAST, read_log, train_command, train_env

STEPS = 6  # 16 toy images in batches of 4: two epochs, so a resume lands mid-epoch and across epochs
KILLS = 2
MAX_DELAY_S = 1.5  # about one training step + checkpoint on a loaded 2-core CPU
MAX_WRITE_DELAY_S = 0.03  # shorter than writing a checkpoint (~40 MB), so the kill often lands mid-write
TIMEOUT_S = 180


def _start(args: list, log_file: Path) -> subprocess.Popen:
    """Start examples/train.py (one CPU thread) with stdout and stderr going to ``log_file``."""
    with open(log_file, "w") as log:
        return subprocess.Popen(
            train_command(*args, threads=1),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**train_env(threads=1), "PYTHONUNBUFFERED": "1"},
        )


def _checkpoint_steps(output_dir: Path) -> list[int]:
    """Steps of the resumable ``step_N`` folders of a run (``step_N.tmp`` is a write in progress)."""
    names = (p.name.removeprefix("step_") for p in output_dir.glob("step_*"))
    return [int(n) for n in names if n.isdigit()]


def _checkpoints(output_dir: Path) -> dict[int, dict[str, int]]:
    """The resumable ``step_N`` folders of a stopped run: step -> {file name: size}."""
    return {
        s: {f.name: f.stat().st_size for f in (output_dir / f"step_{s}").iterdir()}
        for s in _checkpoint_steps(output_dir)
    }


def _wait(proc: subprocess.Popen, output_dir: Path, after: int, writing: bool) -> None:
    """Wait until the run has written a checkpoint beyond step ``after`` (``writing``: has started writing one,
    as ``step_N.tmp``; one left over by an earlier kill does not count), or has exited."""
    pattern = re.compile(r"step_(\d+)\.tmp" if writing else r"step_(\d+)")
    started = time.time()
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None:
        if any(_is_new(p, pattern, after, started if writing else 0.0) for p in output_dir.glob("step_*")):
            return
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint after step {after} within {TIMEOUT_S} s")
        time.sleep(0.01)


def _is_new(path: Path, pattern: re.Pattern, after: int, since: float) -> bool:
    """``path`` matches ``pattern`` with a step beyond ``after`` and was created after ``since``."""
    match = pattern.fullmatch(path.name)
    try:
        return bool(match) and int(match[1]) > after and path.stat().st_mtime >= since
    except FileNotFoundError:  # renamed or removed meanwhile
        return False


def _finish(proc: subprocess.Popen, log_file: Path) -> str:
    """Wait for a run that must succeed; return its output."""
    proc.wait(timeout=TIMEOUT_S)
    output = log_file.read_text()
    assert proc.returncode == 0, f"train.py failed:\n{output[-5000:]}"
    return output


def test_sigkill_at_random_points_then_resume_repeats_the_uninterrupted_run(tmp_path, tiny_clip):
    common = [
        "--clip_model_name_or_path",
        tiny_clip,
        "--max_train_steps",
        STEPS,
        "--checkpointing_steps",
        1,
        "--rfm_start_step",
        3,
        *FAST,
        "--toy_train_images",
        16,
    ]
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    procs = [_start([*common, "--output_dir", reference_dir], tmp_path / "reference.log")]
    try:
        kill_points, seen, resumed_step, output = _kill_and_resume(common, killed_dir, tmp_path, procs)
        _finish(procs[0], tmp_path / "reference.log")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()

    print(f"kills (latest checkpoint, leftover .tmp folders): {kill_points}")
    assert kill_points, "the run was never killed"
    assert f"resumed from {killed_dir / f'step_{resumed_step}'} at step {resumed_step}" in output
    # every step_N folder present after a kill (so one a resume could pick) was complete
    complete = _checkpoints(reference_dir)
    for (attempt, step), files in seen.items():
        assert files == complete[step], f"incomplete step_{step} after kill {attempt} (kills: {kill_points})"
    assert not list(killed_dir.glob("*.tmp")), "a stale step_N.tmp was left behind"

    assert read_log(killed_dir) == read_log(reference_dir), f"loss curves differ; kills: {kill_points}"
    assert [r["step"] for r in read_log(killed_dir)] == list(range(1, STEPS + 1))
    from safetensors.torch import load_file

    killed = load_file(killed_dir / "model.safetensors")
    uninterrupted = load_file(reference_dir / "model.safetensors")
    assert killed.keys() == uninterrupted.keys()
    different = [k for k in killed if not torch.equal(killed[k], uninterrupted[k])]
    assert not different, f"weights differ after kills {kill_points}: {different[:5]}"
    assert int(killed["training_step"]) == STEPS


def _kill_and_resume(common: list, output_dir: Path, tmp_path: Path, procs: list) -> tuple:
    """Run, SIGKILL after a random delay once a new checkpoint exists (or is being written), resume; KILLS
    times, then to the end.

    Returns (kill points [(latest checkpoint step, leftover .tmp folders)], the checkpoint listings seen after
    each kill {(attempt, step): {file: size}}, the step of the last resume, the final run's output).
    """
    rng = random.Random(0)
    kill_points, seen, resumed_step = [], {}, 0
    for attempt in range(KILLS + 1):
        log_file = tmp_path / f"attempt{attempt}.log"
        resume = ["--resume_from_checkpoint", "latest"] if attempt else []
        proc = _start([*common, "--output_dir", output_dir, *resume], log_file)
        procs.append(proc)
        if attempt == KILLS:
            break
        # odd attempts are killed while a checkpoint is being written, even ones anywhere in a step
        writing = attempt % 2 == 1
        _wait(proc, output_dir, after=resumed_step, writing=writing)
        time.sleep(rng.uniform(0.0, MAX_WRITE_DELAY_S if writing else MAX_DELAY_S))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT_S)
        if proc.returncode != -signal.SIGKILL:  # the run ended before the kill
            break
        if attempt:
            _assert_resumed_from(log_file, output_dir, resumed_step)
        after_kill = _checkpoints(output_dir)
        kill_points.append((max(after_kill), sorted(p.name for p in output_dir.glob("*.tmp"))))
        seen.update({(attempt, step): files for step, files in after_kill.items()})
        resumed_step = max(after_kill)
    return kill_points, seen, resumed_step, _finish(proc, log_file)


def _assert_resumed_from(log_file: Path, output_dir: Path, step: int) -> None:
    """The run logged in ``log_file`` resumed from ``step_{step}``, the newest complete checkpoint it had."""
    match = re.search(r"resumed from (\S+) at step (\d+)", log_file.read_text())
    assert match, f"no 'resumed from' line in {log_file.name}"
    assert (match[1], int(match[2])) == (str(output_dir / f"step_{step}"), step)

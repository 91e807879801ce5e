"""The output folder of a training run: held by one run at a time (`lock_output_dir`, `output_dir_held`), kept from
mixing a fresh run with an old one's checkpoints and results (`claim_output_dir`, `remove_previous_run`), and its
log cut back to the step a resumed run starts from (`truncate_log`). The messages name examples/train.py's flags
(``--output_dir``, ``--overwrite_output_dir``, ``--resume_from_checkpoint``); train_with_trainer.py shares them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .batch_jobs import check_no_links, write_atomic
from .checkpointing import CHECKPOINT_ENTRY
from .hub import TOKENIZER_FILES
from .json_files import parse_json, read_regular_file


def lock_output_dir(output_dir: Path):
    """Create ``output_dir``, check that it is writable and hold an exclusive lock on it for this run (released
    by the OS when the process ends, even when killed): a second run on the same folder is refused at start
    instead of interleaving its logs and checkpoints with this one's. Returns the open lock file."""
    check_no_links(output_dir, (".lock",))  # opening a linked one would truncate the file it points to
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        # a new file of a name no one can have planted a link at (a fixed name's link was emptied through)
        descriptor, probe = tempfile.mkstemp(prefix=".write_probe_", dir=output_dir)
        os.close(descriptor)
        os.unlink(probe)
        lock = open(output_dir / ".lock", "a+", encoding="utf-8")  # held open for the whole run
    except OSError as error:
        raise PermissionError(f"--output_dir {output_dir} is not writable: {error}") from error
    if not _try_lock(lock):
        try:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
        except OSError:  # Windows: the holder's locked byte cannot be read
            holder = "another process"
        lock.close()
        raise RuntimeError(
            f"--output_dir {output_dir} is in use by another training run ({holder}); wait for it to finish or "
            "choose another --output_dir."
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}")
    lock.flush()
    return lock


def _try_lock(handle) -> bool:
    """Take an exclusive lock on the open file ``handle`` without waiting; whether it was free. POSIX: ``flock``;
    Windows (no fcntl): msvcrt's lock of the file's first byte. The OS releases either when the process ends."""
    try:
        import fcntl
    except ImportError:
        import msvcrt

        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def output_dir_held(output_dir: Path):
    """`lock_output_dir` for the block; a folder the block created and left holding nothing but its lock (a
    run refused by a later check, or failing before it wrote anything) is removed on leaving, so that a
    mistyped flag leaves no empty run folder behind."""
    created = not output_dir.exists()
    lock = lock_output_dir(output_dir)
    try:
        yield
    finally:
        lock.close()
        if created and [p.name for p in output_dir.iterdir()] == [".lock"]:
            shutil.rmtree(output_dir, ignore_errors=True)


# what a finished run of examples/train.py leaves in its output folder besides its model (model.safetensors) and its
# step_N checkpoints: its results (`claim_output_dir`'s ``results``)
RUN_RESULTS = ("metrics.json", "train_log.jsonl")
# the folders a `Trainer` run's checkpoints occupy: checkpoint-N (tmp-checkpoint-N while it is written); train.py's:
# `CHECKPOINT_ENTRY`
TRAINER_CHECKPOINTS = re.compile(r"(tmp-)?checkpoint-\d+")
# what else a run writes there, replacing what the folder holds under those names (a user's own notes included; the
# first three are refused without --overwrite_output_dir); the tokenizer of the model's text embeddings is replaced
# with the model, or removed where the run has none (examples/training/run_end.py's `save_tokenizer`)
RUN_WRITES = ("README.md", "config.json", "preprocessor_config.json", "overlays", ".lock", *TOKENIZER_FILES)
OVERWRITE_AND_RESUME = (
    "--overwrite_output_dir starts a fresh run and --resume_from_checkpoint continues one of this --output_dir "
    "(whose checkpoints --overwrite_output_dir would remove): give one of them."
)


def resumes_in_place(output_dir: Path, resume_from: str | None) -> bool:
    """Whether checkpoint ``resume_from`` (``latest``: the newest in ``output_dir``) is one of the run in
    ``output_dir``, which resuming it continues; None: a fresh run."""
    if resume_from is None:
        return False
    return resume_from == "latest" or Path(resume_from).resolve().parent == output_dir.resolve()


def claim_output_dir(
    output_dir: Path,
    resume_from: str | None,
    overwrite: bool,
    checkpoints: re.Pattern = CHECKPOINT_ENTRY,
    tracker_dirs: tuple[str, ...] = (),
    results: tuple[str, ...] = RUN_RESULTS,
) -> list[Path]:
    """Check that ``output_dir`` may take this run (examples/train.py: created and locked by `lock_output_dir`);
    returns what `remove_previous_run` removes once the run is set up. A run that is not continued from a
    checkpoint of this folder (``resume_from``, ``--resume_from_checkpoint``: see `resumes_in_place`; a fresh run,
    or one resumed from another folder's checkpoint) refuses a folder that holds a previous run's checkpoints (the
    folders whose names match ``checkpoints``: `CHECKPOINT_ENTRY`, `TRAINER_CHECKPOINTS`) or results (its model and
    ``results``, e.g. metrics and log: they would be replaced without a word and the logs mixed) unless
    ``overwrite`` (``--overwrite_output_dir``): then the checkpoints, results, overlays, card and the folders its
    trackers wrote (``tracker_dirs``, e.g. TensorBoard's event files: two runs would show as one curve) are to be
    removed (the model files and its tokenizer are replaced at the end; ``--model_name_or_path`` may be this
    folder's model)."""
    in_place = resumes_in_place(output_dir, resume_from)
    if in_place and overwrite:
        raise ValueError(OVERWRITE_AND_RESUME)
    entries = list(output_dir.iterdir()) if output_dir.is_dir() else []
    named = [p for p in entries if checkpoints.fullmatch(p.name)]
    finished_files = ("model.safetensors", *results)
    # a run writes into the folder by more names than it can list (the model's code files, Trainer's
    # training_args.bin, a log's temporary file): a link at its top was planted, as one among its outputs
    top_links = [p.name for p in entries if p.is_symlink()]
    outputs = dict.fromkeys(
        (*finished_files, *RUN_WRITES, *tracker_dirs, *(p.name for p in named), *top_links)
    )
    check_no_links(output_dir, outputs)
    old = sorted((p for p in named if p.is_dir()), key=lambda p: (len(p.name), p.name))
    finished = [name for name in finished_files if (output_dir / name).exists()]
    replaced = [name for name in RUN_WRITES[:3] if (output_dir / name).exists()]
    if in_place or not (old or finished or replaced):
        return []
    if not overwrite:
        names = ", ".join(p.name for p in old[-3:])
        held = f"checkpoints of a previous run ({names})" if old else ""
        held = held or (f"a previous run's results ({', '.join(finished)})" if finished else "")
        held = held or f"files that a run writes, which it would replace ({', '.join(replaced)})"
        # the model and the results (train.py's metrics): written once the training is done and evaluated
        trained = old and {"model.safetensors", results[0]} <= set(finished)
        if resume_from is not None:
            hint = (
                f"--resume_from_checkpoint {resume_from} is a checkpoint of another folder: resume it into a new "
                "--output_dir, or replace that run with --overwrite_output_dir."
            )
        elif trained:
            held = f"a finished run: its trained model ({', '.join(finished)}) and checkpoints ({names})"
            hint = (
                "It is complete (resuming it would leave nothing to do): start over with --overwrite_output_dir, "
                "or choose another --output_dir."
            )
        elif old:
            hint = (
                "Continue it with --resume_from_checkpoint latest, start over with --overwrite_output_dir, or "
                "choose another --output_dir."
            )
        else:
            hint = "Start over with --overwrite_output_dir, or choose another --output_dir."
        raise FileExistsError(f"{output_dir} holds {held}. {hint}")
    trackers = [output_dir / name for name in tracker_dirs]
    return [
        *old,
        output_dir / "overlays",
        *(output_dir / name for name in results),
        # the old run's card: with it, a run cut off before writing its own would look complete
        output_dir / "README.md",
        *trackers,
    ]


def remove_previous_run(paths: list[Path]) -> None:
    """Remove what `claim_output_dir` found of the run ``--overwrite_output_dir`` replaces: called once the new run
    has loaded its data and model, so that a mistyped flag or a missing dataset leaves the old run whole."""
    for path in paths:
        remove_entry(path, ignore_errors=True)


def remove_entry(path: Path, ignore_errors: bool = False) -> None:
    """Remove ``path``: a folder with what it holds (links in it are unlinked), a file or a link by its name (a
    link itself, never what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=ignore_errors)
    else:
        path.unlink(missing_ok=ignore_errors)


# the largest training log read back (a line of ~300 bytes per logged step: a million steps)
MAX_LOG_BYTES = 2**30


def _log_records(log_path: Path) -> Iterator[tuple[str, dict]]:
    """The lines of the log that parse, each with its record (a line a kill cut short is left out); none without a
    log."""
    if not log_path.exists():
        return
    text = read_regular_file(log_path, max_bytes=MAX_LOG_BYTES).decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        try:  # a diverged run logs NaN losses
            record = parse_json(line, f"{log_path} line {number}", allow_nan=True)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield line, record


def truncate_log(log_path: Path, step: int) -> None:
    """Drop the log records after ``step``: a run killed between checkpoints logged steps that the resumed
    run repeats, and a line the kill cut short (the rewrite is atomic)."""
    if not log_path.exists():
        return
    kept = [
        line + "\n"
        for line, record in _log_records(log_path)
        if type(record.get("step")) is int and record["step"] <= step
    ]
    write_atomic(log_path, lambda tmp: tmp.write_text("".join(kept), encoding="utf-8"))


def logged_evaluation(log_path: Path, step: int) -> bool:
    """Whether the log holds an evaluation record (``eval_*`` figures) of ``step``: a run stopped or killed at an
    evaluation step saved its checkpoint before evaluating, so the resumed run has that evaluation to do."""
    return any(
        record.get("step") == step and any(key.startswith("eval_") for key in record)
        for _, record in _log_records(log_path)
    )

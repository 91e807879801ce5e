"""Training checkpoints that hold only tensors and plain data, so that resuming one can never run code.

A checkpoint folder ``step_N`` holds what ``Accelerator.save_state`` writes for the model, optimizer and
random states (safetensors, and tensor-only files that accelerate reads back with
``torch.load(weights_only=True)``) plus ``training_state.json``: the step, the LR scheduler, where a
streamed run is in its data and how the run computed (`Computation`: the device type, torch.compile, a CPU run's
threads, which order its float sums). Objects registered with ``accelerator.register_for_checkpointing`` are
restored with ``torch.load(weights_only=False)``, i.e. by unpickling arbitrary code, so nothing is
registered: a pickle planted in a shared or downloaded checkpoint is never executed.

A training run's checkpoints leave out the frozen parameters (`FrozenWeights`: the CLIP towers, WeCLIP+'s
DINOv2; a ViT-B/16 checkpoint is 24 MB with the toy decoder, 69 MB with VOC's, instead of 595 MB and more), which
the resumed run loads from its backbones as the first run did; ``frozen_weights.json`` records their SHA-256, and a
resume whose backbones differ is refused.

Checkpoints are written to ``step_N.tmp`` and renamed, so a crash never leaves an incomplete ``step_N``;
``latest`` still checks each candidate and falls back past a damaged one, naming it. `prune_checkpoints` keeps the
newest ones (``--checkpoints_total_limit``).

The folder a run writes to, its lock and what a fresh run replaces: `run_folder`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .batch_jobs import walk_entries
from .json_files import read_json, read_json_if_present
from .model_loading import safetensors_problem, weights_readable_as

TRAINING_STATE_NAME = "training_state.json"
# the arguments that shape a run's training, which each of its checkpoints records and a resumed run must repeat
TRAINING_ARGS_NAME = "training_args.json"
# written by earlier weclip-hf versions through register_for_checkpointing: read tensor-only, never unpickled
LEGACY_SCHEDULER_NAME = "custom_checkpoint_0.pkl"
LEGACY_POSITION_NAME = "custom_checkpoint_1.pkl"
# the SHA-256 of the frozen parameters a checkpoint leaves out (absent: the checkpoint holds every weight)
FROZEN_WEIGHTS_NAME = "frozen_weights.json"


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or cannot be read safely."""


@dataclass
class StreamPosition:
    """Where a streamed run is in its data: the pass (epoch) and the batches trained on in it."""

    epoch: int = 0
    batch: int = 0


@dataclass(frozen=True)
class Computation:
    """How a training run computes, which orders its float sums (a run resumed computing otherwise ends within
    float32 rounding of the uninterrupted one, not bit for bit): the device type ("cpu", "cuda", "mps", "xpu"),
    whether its training forward runs through torch.compile, with which backend and mode in effect (None: the
    backend's default; both None when not compiled), and the torch threads per process of a CPU run (None on an
    accelerator). None where a checkpoint does not record an item: one of an earlier version recorded the threads
    only (``threads`` in its training_state.json), or nothing."""

    device: str | None = None
    torch_compile: bool | None = None
    torch_compile_backend: str | None = None
    torch_compile_mode: str | None = None
    threads: int | None = None

    @classmethod
    def from_record(cls, raw: dict) -> Computation:
        """The computation a ``training_state.json`` (parsed: ``raw``) records: its ``computation``, or the
        ``threads`` alone that checkpoints recorded before."""
        if "computation" in raw:
            return cls(**raw["computation"])
        return cls(threads=None if raw.get("threads") is None else int(raw["threads"]))


def compile_mode_in_effect(backend: str, mode: str | None) -> str | None:
    """The torch.compile mode ``backend`` runs with when given ``mode``, as a `Computation` records it: None (the
    backend's own default) for "default" with a backend other than inductor, to which torch then passes no mode."""
    return None if backend != "inductor" and mode == "default" else mode


@dataclass
class TrainingState:
    """What a checkpoint holds besides tensors: the step, the scheduler's state, the stream position, the run's
    wall-clock seconds so far, over all its resumed segments (None in a checkpoint of an earlier version), and how
    it computed (`Computation`)."""

    step: int
    scheduler: dict
    position: StreamPosition
    seconds: float | None = None
    computation: Computation = Computation()


@dataclass(frozen=True)
class FrozenWeights:
    """A model's frozen parameters (``requires_grad=False``: the backbones) by name, and the SHA-256 of their names,
    dtypes, shapes and values, which tells whether a resumed run loaded the same backbones."""

    names: frozenset[str]
    sha256: str

    @classmethod
    def of(cls, model) -> FrozenWeights:
        """The frozen parameters of ``model`` (unwrapped) and their digest (~0.3 s for ViT-B/16's on a CPU core)."""
        import torch

        # every name of a tied parameter too: each is a key of the state dict
        named = sorted(
            (name, p) for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad
        )
        digest = hashlib.sha256()
        for name, parameter in named:
            values = parameter.detach().reshape(-1).contiguous().cpu()
            digest.update(f"{name} {values.dtype} {tuple(parameter.shape)};".encode())
            digest.update(values.view(torch.uint8).numpy())
        return cls(frozenset(name for name, _ in named), digest.hexdigest())

    def record(self) -> dict:
        """What ``frozen_weights.json`` holds."""
        return {"parameters_left_out": len(self.names), "sha256": self.sha256}


def save_checkpoint(
    accelerator,
    output_dir: Path,
    state: TrainingState,
    extra_json: dict[str, dict] | None = None,
    frozen: FrozenWeights | None = None,
) -> Path:
    """Write ``step_N`` (``accelerator.save_state`` + ``training_state.json`` + the ``extra_json`` files, by file
    name) via ``step_N.tmp`` and an atomic rename; an existing ``step_N`` is first renamed to ``step_N.old``, never
    deleted in place. With ``frozen``, its parameters are left out of the weights and recorded in
    ``frozen_weights.json`` (`load_checkpoint` checks the resumed model's against it)."""
    final = output_dir / f"step_{state.step}"
    tmp = output_dir / f"step_{state.step}.tmp"
    if frozen is not None:
        extra_json = {**(extra_json or {}), FROZEN_WEIGHTS_NAME: frozen.record()}
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    hook = None if frozen is None else accelerator.register_save_state_pre_hook(_leave_out(frozen.names))
    try:
        accelerator.save_state(str(tmp))
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as "unexpected pos ..."
        raise _write_failed(output_dir, final.name, tmp, error) from error
    finally:
        if hook is not None:
            hook.remove()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            for name, content in {TRAINING_STATE_NAME: asdict(state), **(extra_json or {})}.items():
                (tmp / name).write_text(json.dumps(content, indent=1), encoding="utf-8")
        except OSError as error:
            raise _write_failed(output_dir, final.name, tmp, error) from error
    if accelerator.is_main_process:
        weights_readable_as(tmp, tmp / TRAINING_STATE_NAME)  # save_state's safetensors files are 0600
        old = output_dir / f"step_{state.step}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _leave_out(names: frozenset[str]):
    """A save_state pre-hook that removes ``names`` (unwrapped model names; under DDP the state dict may name them
    ``module.<name>``) from the state dicts it saves."""

    def hook(models, weights, output_dir) -> None:
        for state_dict in weights:
            for name in names:
                key = name if name in state_dict else f"module.{name}"
                state_dict.pop(key, None)

    return hook


def _write_failed(output_dir: Path, name: str, tmp: Path, error: Exception) -> CheckpointError:
    """The error of a checkpoint ``name`` that could not be written (its partial ``tmp`` removed): the cause, the
    space left on the disk (a full disk is the usual one, which torch.save reports as "unexpected pos"), and that the
    checkpoints written before are intact."""
    shutil.rmtree(tmp, ignore_errors=True)
    free = shutil.disk_usage(output_dir).free / 2**20
    intact = checkpoint_folders(output_dir)
    before = (
        f"the checkpoints before it ({', '.join(p.name for p in intact[-3:])}) are intact"
        if intact
        else "no checkpoint was written before it"
    )
    return CheckpointError(
        f"Writing checkpoint {name} in {output_dir} failed ({type(error).__name__}: {error}); {free:.0f} MiB are "
        f"left on its disk. The partial {tmp.name} was removed and {before}: free space and resume with "
        "--resume_from_checkpoint latest."
    )


# what a save (`save_checkpoint`: step_N.tmp, step_N.old) or a removal (`prune_checkpoints`: step_N.removing) of a
# checkpoint cut short leaves beside it
LEFTOVER_SUFFIXES = ("tmp", "old", "removing")
# the name of a checkpoint folder or of such a leftover (a user's step_notes/ is neither)
CHECKPOINT_ENTRY = re.compile(rf"step_\d+(\.({'|'.join(LEFTOVER_SUFFIXES)}))?")


def checkpoint_step(path: Path) -> int | None:
    """N of a folder named ``step_N``, else None."""
    prefix, _, number = path.name.partition("_")
    return int(number) if prefix == "step" and number.isdigit() else None


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The ``step_N`` entries of ``output_dir`` (not ``.tmp`` / ``.old`` / ``.removing``), by increasing N."""
    return sorted(
        (p for p in output_dir.glob("step_*") if checkpoint_step(p) is not None), key=checkpoint_step
    )


def _count(value, what: str) -> int:
    """``value`` of a training state's record, checked to be a whole number >= 0 (not a bool, a string or a float)."""
    if type(value) is not int or value < 0:
        raise ValueError(f"{what} must be a whole number >= 0, got {value!r}")
    return value


def read_training_state(path: Path) -> TrainingState:
    """The plain-data state of checkpoint ``path`` (JSON, `read_json`, each item of the type written; a legacy
    pickle is read tensor-only)."""
    json_path = path / TRAINING_STATE_NAME
    raw = read_json_if_present(json_path, expect=dict, error=CheckpointError)
    if raw is None:
        return _read_legacy_training_state(path)
    try:
        position = raw["position"]
        if not isinstance(position, dict) or not isinstance(raw["scheduler"], dict):
            raise ValueError("its position and scheduler must be JSON objects")
        seconds = raw.get("seconds")
        if seconds is not None and (type(seconds) not in (int, float) or seconds < 0):
            raise ValueError(f"seconds must be a number >= 0 or null, got {seconds!r}")
        return TrainingState(
            step=_count(raw["step"], "step"),
            scheduler=raw["scheduler"],
            position=StreamPosition(**{key: _count(value, key) for key, value in position.items()}),
            seconds=None if seconds is None else float(seconds),
            computation=Computation.from_record(raw),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{json_path} is not a valid training state: {error}") from error


def _read_legacy_training_state(path: Path) -> TrainingState:
    """A checkpoint of an earlier version: scheduler (and position) pickles, loaded tensor-only."""
    legacy, step = path / LEGACY_SCHEDULER_NAME, checkpoint_step(path)
    if not legacy.exists() or step is None:
        raise CheckpointError(f"{path} has no {TRAINING_STATE_NAME}: not a complete weclip-hf checkpoint.")
    scheduler = _read(legacy, _tensor_only_load)
    position = {"epoch": 0, "batch": 0}
    if (path / LEGACY_POSITION_NAME).exists():
        position = _read(path / LEGACY_POSITION_NAME, _tensor_only_load)
    try:
        return TrainingState(step=step, scheduler=dict(scheduler), position=StreamPosition(**position))
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{legacy} does not hold a scheduler / stream state: {error}") from error


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint folder ``path`` cannot be resumed from (None when it looks complete)."""
    try:
        state = read_training_state(path)
    except CheckpointError as error:
        return str(error)
    if not (path / "model.safetensors").exists() and not (path / "pytorch_model.bin").exists():
        return f"{path} has no model.safetensors"
    if not (path / "optimizer.bin").exists():
        return f"{path} has no optimizer.bin"
    if checkpoint_step(path) not in (None, state.step):
        return f"{path} holds step {state.step}, not the step its name says"
    return damaged_file(path)


def _starts_with(file: Path, magic: bytes) -> bool:
    """Whether ``file``'s first bytes are ``magic`` (read without the rest of the file)."""
    with open(file, "rb") as stream:
        return stream.read(len(magic)) == magic


def damaged_file(path: Path) -> str | None:
    """What is wrong with the first damaged file of checkpoint folder ``path`` (None when none is): a torch zip
    archive (``optimizer.bin``, the random states, ...) that is cut short or fails its CRCs, safetensors weights
    whose header or length do not hold, or a JSON file (the recorded arguments, the frozen weights' digest) that does
    not parse. Reads the files once, without unpickling anything."""
    for file in sorted(f for f in path.iterdir() if f.is_file()):
        # an empty archive: the check of a torch archive below starts at its first bytes
        if file.suffix in (".bin", ".pkl", ".pt", ".safetensors") and file.stat().st_size == 0:
            return f"{file} is damaged (it is empty)"
        try:
            if file.suffix == ".safetensors":
                if problem := safetensors_problem(file):
                    return f"{file} is damaged ({problem})"
            elif file.suffix == ".json":
                read_json(file)
            elif _starts_with(file, b"PK\x03\x04"):  # torch.save's zip archive
                with zipfile.ZipFile(file) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    return f"{file} is damaged (its member {bad} fails its CRC)"
        except Exception as error:  # a truncated or corrupted file, whatever the reader says
            return f"{file} is damaged ({type(error).__name__}: {error})"
    return None


def existing_checkpoint_folder(spec: str | Path) -> Path:
    """The checkpoint folder ``spec`` names; a CheckpointError when there is no such folder (a mistyped path),
    before a resumed run loads anything. Shared by examples/train.py and train_with_trainer.py."""
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"Checkpoint folder {path} does not exist.")
    return path


def find_checkpoint(output_dir: Path, spec: str, log=print) -> Path:
    """The folder to resume from: ``spec`` itself, or for ``latest`` the newest complete ``step_N`` in
    ``output_dir`` (damaged or incomplete newer ones are skipped with a message naming them)."""
    if spec != "latest":
        path = existing_checkpoint_folder(spec)
        problem = checkpoint_problem(path)
        if problem:
            raise CheckpointError(f"Cannot resume from {path}: {problem}.")
        return path
    _restore_replaced(output_dir, log)
    steps = [p for p in reversed(checkpoint_folders(output_dir)) if p.is_dir()]
    if not steps:
        raise CheckpointError(f"No step_N checkpoint in {output_dir} to resume from.")
    for path in steps:
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log(f"skipping checkpoint {path.name}: {problem}")
    raise CheckpointError(
        f"No complete checkpoint in {output_dir} ({', '.join(p.name for p in steps)} are damaged)."
    )


def prune_checkpoints(output_dir: Path, limit: int, written: Path, log=print) -> list[str]:
    """Remove the oldest ``step_N`` of ``output_dir`` beyond the ``limit`` newest (by N), as
    ``--checkpoints_total_limit`` asks, and return their names.

    ``written``, the checkpoint just saved (where the run stands: what ``latest`` and finishing the run resume from),
    is always kept and counts as one. Only this run's complete checkpoints count and are removed: a link, a folder
    holding links (planted: deleting through it would delete another folder's files) and a damaged one (``latest``
    skips it) are left, named in a note (``.tmp`` / ``.old`` folders are no ``step_N``: never touched). Each removed
    one is first renamed ``step_N.removing``, so that a kill midway leaves no partial ``step_N`` (the next pruning
    finishes its removal); a failed removal is a note, not the end of the run."""
    if limit < 1:
        raise ValueError(
            f"--checkpoints_total_limit must be at least 1 (the checkpoint just written), got {limit}; leave it out "
            "to keep every checkpoint."
        )
    for leftover in output_dir.glob("step_*.removing"):  # a removal a kill cut short (step_N.removing only)
        if leftover.is_dir() and not leftover.is_symlink() and CHECKPOINT_ENTRY.fullmatch(leftover.name):
            shutil.rmtree(leftover, ignore_errors=True)
    others = [p for p in reversed(checkpoint_folders(output_dir)) if p.name != written.name]
    kept, removed = 1, []
    for path in others:
        problem = _not_prunable(path)
        if problem:
            log(f"Note: {path.name} is left, not counted in --checkpoints_total_limit {limit}: {problem}")
        elif kept < limit:
            kept += 1
        else:
            aside = path.with_name(f"{path.name}.removing")
            try:
                os.replace(path, aside)
                shutil.rmtree(aside)  # never follows the links it finds (there are none: checked)
            except OSError as error:
                log(
                    f"Note: could not remove checkpoint {path.name} (--checkpoints_total_limit {limit}): {error}"
                )
                continue
            removed.append(path.name)
    if removed:
        log(
            f"removed checkpoint{'s' * (len(removed) > 1)} {', '.join(removed)} (--checkpoints_total_limit {limit})"
        )
    return removed


def _not_prunable(path: Path) -> str | None:
    """Why `prune_checkpoints` leaves ``step_N`` folder ``path`` (None: a complete checkpoint without links)."""
    if path.is_symlink() or not path.is_dir():
        return "it is a link or not a folder, not a checkpoint this run wrote"
    links = [entry.name for entry in walk_entries(path) if entry.is_symlink()]
    if links:
        return f"it holds links ({', '.join(links[:3])}), which this run never writes"
    problem = checkpoint_problem(path)
    return f"it is not a complete checkpoint ({problem})" if problem else None


def _restore_replaced(output_dir: Path, log=print) -> None:
    """Rename back each ``step_N.old`` that has no ``step_N``: `save_checkpoint` moved that complete checkpoint
    aside to write ``step_N`` again and was cut off before the new one took its name."""
    for old in output_dir.glob("step_*.old"):
        final = old.with_suffix("")
        if old.is_dir() and checkpoint_step(final) is not None and not final.exists():
            try:
                os.replace(old, final)
            except FileNotFoundError:  # another process of the run restored it first
                continue
            log(f"restored checkpoint {final.name} from {old.name} (a later write of that step was cut off)")


def load_checkpoint(
    accelerator, model, optimizer, path: Path, frozen: FrozenWeights | None = None
) -> TrainingState:
    """Restore ``model`` (safetensors; a checkpoint that leaves the frozen parameters out restores the rest, once
    ``model``'s frozen ones, ``frozen`` where the caller has them, are found to be its run's), ``optimizer``, the
    grad scaler and this process's random states from checkpoint ``path`` (tensor-only loads) and return its
    plain-data state. Only these named files are read, never a pickle of an object registered with accelerate; a
    file that cannot be read is named in the error."""
    import random

    import numpy as np
    import torch
    from safetensors.torch import load_model

    state = read_training_state(path)
    unwrapped = accelerator.unwrap_model(model)
    # a checkpoint of an earlier version holds every weight: nothing to check (its backbones are read back)
    held = holds_frozen_weights(path)
    left_out = frozenset() if held else _check_frozen_weights(frozen or FrozenWeights.of(unwrapped), path)
    # read on the host and copied into the parameters where they live: safetensors refuses the "cpu:0" that
    # accelerate names each process's device in a multi-process CPU run
    missing, unexpected = _read(
        path / "model.safetensors", lambda f: load_model(unwrapped, f, strict=False, device="cpu")
    )
    absent = sorted(set(missing) - left_out)  # a frozen weight it holds anyway is read back (the same values)
    if absent or unexpected:
        raise CheckpointError(
            f"Cannot resume from {path / 'model.safetensors'}: it does not hold this model's weights ("
            + "; ".join(
                f"{what}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                for what, names in (("missing", absent), ("not in the model", sorted(unexpected)))
                if names
            )
            + ")."
        )
    optimizer.load_state_dict(_read(path / "optimizer.bin", _tensor_only_load))
    if accelerator.scaler is not None and (path / "scaler.pt").exists():
        accelerator.scaler.load_state_dict(_read(path / "scaler.pt", _tensor_only_load))
    random_states = path / f"random_states_{accelerator.process_index}.pkl"
    if random_states.exists():
        rng = _read(random_states, _tensor_only_load)
        random.setstate(rng["random_state"])
        np.random.set_state(rng["numpy_random_seed"])
        torch.set_rng_state(rng["torch_manual_seed"])
        if "torch_cuda_manual_seed" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["torch_cuda_manual_seed"])
    return state


def holds_frozen_weights(path: Path) -> bool:
    """Whether checkpoint ``path`` holds the frozen backbones too (written by a version before they were left out,
    without ``frozen_weights.json``): resuming it reads them back from it."""
    return not (path / FROZEN_WEIGHTS_NAME).exists()


def _check_frozen_weights(frozen: FrozenWeights, path: Path) -> frozenset[str]:
    """The parameters checkpoint ``path`` leaves out, after checking that the model's ``frozen`` ones are the ones
    its run trained with (its ``frozen_weights.json``)."""
    record_path = path / FROZEN_WEIGHTS_NAME
    record = read_json_if_present(record_path, expect=dict, error=CheckpointError)
    if record is None:
        raise CheckpointError(f"Cannot resume: {record_path} is missing.")
    if record.get("sha256") != frozen.sha256:
        raise CheckpointError(
            f"Cannot resume from {path}: the frozen backbones loaded now are not the ones its run trained with "
            f"(SHA-256 of their parameters {frozen.sha256[:12]}..., the checkpoint's {str(record.get('sha256'))[:12]}"
            "...; its checkpoints leave them out). Resume with the CLIP (and DINOv2) weights of that run."
        )
    return frozen.names


def differences(
    saved: dict, current: dict, label=lambda key: f"--{key}", skip: frozenset = frozenset()
) -> list[str]:
    """``<label(key)> old -> new`` for each key of ``saved`` or ``current`` (but ``skip``) whose values differ."""
    return [
        f"{label(key)} {saved.get(key)!r} -> {current.get(key)!r}"
        for key in sorted((saved.keys() | current.keys()) - skip)
        if saved.get(key) != current.get(key)
    ]


def check_unchanged(
    path: Path,
    current: dict,
    file_name: str = TRAINING_ARGS_NAME,
    *,
    label=lambda key: f"--{key}",
    skip: frozenset = frozenset(),
    what: str = "these arguments",
    fix: str = "Resume with the checkpoint's values",
    saved_as: Callable[[dict], dict] | None = None,
) -> bool:
    """Refuse (a ValueError listing each ``label(key) old -> new``) to resume from checkpoint ``path`` when a value
    of ``current`` (JSON values) differs from what its run recorded in ``file_name``: the resumed run would go on
    training another run than the one it continues. False when the checkpoint records nothing (written by an
    earlier version), True when every value matches; ``saved_as``: the recorded values as ``current`` states them
    (an earlier version's way of recording one). Shared by examples/train.py and train_with_trainer.py."""
    saved = read_json_if_present(path / file_name, expect=dict, error=CheckpointError)
    if saved is None:
        return False
    changed = differences(saved_as(saved) if saved_as else saved, current, label, skip)
    if changed:
        raise ValueError(
            f"Cannot resume from {path}: {what} differ from the run that wrote it, and would change its training: "
            + "; ".join(changed)
            + f". {fix}, or start a new run (another --output_dir, or --overwrite_output_dir)."
        )
    return True


def _tensor_only_load(file: Path):
    """``torch.load(weights_only=True)`` with the numpy types of accelerate's random states allowed."""
    from accelerate.utils import load

    return load(file, map_location="cpu")


def _read(file: Path, reader):
    """``reader(file)``, with any failure turned into a `CheckpointError` that names ``file``."""
    if not file.exists():
        raise CheckpointError(f"Cannot resume: {file} is missing.")
    try:
        return reader(file)
    except Exception as error:  # unpickling refusals, truncated files, shape mismatches: name the file
        raise CheckpointError(f"Cannot resume from {file}: {type(error).__name__}: {error}") from error

"""Which arguments of examples/train.py define a training run's trajectory, what a checkpoint records of them, and
the checks a resumed run passes (`check_resume` before the data and model load, with the values in effect the
arguments fix already; `check_resolved` after, with all of them).

A resumed run must produce the weights the uninterrupted run would have: every argument that changes them (data,
model, optimization, schedule, seed, how accelerate launched the run) is recorded in the checkpoint
(``training_args.json``) and compared, and so are the values in effect of the flags whose defaults come from a
preset, a dataset or a saved model (``resolved_args.json``). The other arguments (`RESUMABLE_CHANGES`) are free.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from .batch_jobs import comparable_path
from .checkpointing import (
    TRAINING_ARGS_NAME,
    CheckpointError,
    Computation,
    FrozenWeights,
    TrainingState,
    check_unchanged,
    read_training_state,
    save_checkpoint,
)
from .json_files import read_json, read_json_if_present

# arguments never written to disk (trackers, logs, checkpoints, model cards)
SECRET_ARGS = ("hub_token",)

# flags that set config fields of the model; the first four fix its weights or text embeddings
MODEL_FLAGS = (
    "class_names",
    "background_names",
    "prompt_template",
    "decoder_hidden_size",
    "rfm_start_step",
    "cam_box_threshold",
    "attention_num_maps",
    "rfm_num_maps",
    "par_dilations",
    "decoder_dropout",
)
WEIGHT_FLAGS = MODEL_FLAGS[:4]
# flags that set WeCLIPPlusConfig fields (refused for a WeCLIP model)
PLUS_MODEL_FLAGS = (
    "cam_feature_block",
    "rfm_use_box_mask",
    "self_training_start_step",
    "self_training_threshold",
    "branch_logit_weights",
    "dice_loss_weight",
    "cross_branch_loss_weight",
)
# flags that set other config fields: the ignore index (`mask_dtype` of the training masks follows it)
LOSS_FLAGS = ("semantic_loss_ignore_index",)
CONFIG_FLAGS = (*MODEL_FLAGS, *PLUS_MODEL_FLAGS, *LOSS_FLAGS)


def public_args(args: argparse.Namespace) -> dict:
    """The run's arguments without secrets, nor what a script keeps on the namespace under a leading underscore (the
    saved config read: `script_arguments.saved_config`): what trackers, logs and the model card may record."""
    return {k: v for k, v in vars(args).items() if k not in SECRET_ARGS and not k.startswith("_")}


# Arguments a resumed run may change: they cannot change which weights the training steps produce. Each step's
# randomness is a function of (seed, step, process) and a map-style dataset's batches of (seed, epoch, index),
# so how often the run logs, checkpoints and evaluates, how many checkpoints it keeps, how the evaluation is done
# (only its figures change), where the output goes, what is reported or published, and how the host computes
# (threads, allocator, torch.compile, the device: the same operations) are free; a change of threads, of
# torch.compile or of the device type changes the order of float sums, so the weights are then equal up to
# float32 rounding (~1e-5), not bit for bit (the default --num_threads follows the cores available, the device
# accelerate's --cpu and the GPUs visible; checkpoints record how their run computed, `Computation`, and a resume
# that computes otherwise is warned: `computation_change_warning`). Everything else (data, model, optimization,
# schedule, seed) defines the trajectory, and a resume that changes it is refused. Derived values (recipe,
# given_model_flags, rfm_start_source, resolved) follow the flags and are not compared themselves (`RESOLVED_ARGS`:
# by their values in effect, those the arguments fix before the data and model load, the others once loaded).
RESUMABLE_CHANGES = frozenset(
    {
        "output_dir", "overwrite_output_dir", "resume_from_checkpoint",
        "logging_steps", "checkpointing_steps", "checkpoints_total_limit", "with_tracking", "report_to",
        "eval_steps", "eval_long_side", "no_msf", "msf_scales", "num_overlays", "per_device_eval_batch_size",
        "max_eval_samples", "validation_split", "toy_val_images",
        "num_workers", "num_threads", "release_host_memory", "ddp_timeout",
        "torch_compile", "torch_compile_backend", "torch_compile_mode",
        "push_to_hub", "hub_model_id",
        "recipe", "given_model_flags", "rfm_start_source", "resolved",
    }
)  # fmt: skip
# a streamed training split is divided among the DataLoader workers by shard: their number orders the batches;
# the shuffle buffer only exists for a stream
STREAMING_TRAJECTORY_ARGS = frozenset({"num_workers"})
STREAMING_ONLY_ARGS = frozenset({"shuffle_buffer_size"})
# local folders, compared by where they are (``data`` and ``./data`` are the same); Hub ids as given
PATH_ARGS = (
    "data_dir", "dataset_path", "clip_model_name_or_path", "dino_model_name_or_path", "model_name_or_path",
    "image_processor_name_or_path",
)  # fmt: skip
# how accelerate runs the training (the global batch, the data shards, the arithmetic): recorded beside the flags
LAUNCH_FACTS = ("num_processes", "mixed_precision")
# flags whose value in effect is known once the data and model are loaded (None: the preset's, the dataset's, the
# saved model's or the package's; max_train_samples: the training set's size): a checkpoint records those values
# (`resolved_trajectory`, resolved_args.json), which a resumed run compares (`check_resolved`: those the arguments
# fix before the data and model load, the others once loaded), so that restating a default changes nothing and a
# dataset changed under the same flags is found
RESOLVED_ARGS = frozenset({*CONFIG_FLAGS, "clip_model_name_or_path", "max_train_samples"})
# of them, those a checkpoint of an earlier version did not record (compared as given there)
LATER_RESOLVED_ARGS = frozenset({*PLUS_MODEL_FLAGS, *LOSS_FLAGS})
RESOLVED_ARGS_NAME = "resolved_args.json"
# what a run writes in its --output_dir once its training is done (the model) and evaluated (metrics.json), the model
# card last: a run whose folder holds them all is complete
COMPLETED_RUN_FILES = ("model.safetensors", "metrics.json", "README.md")


def trajectory_args(args: argparse.Namespace, accelerator: Accelerator | None = None) -> dict:
    """The arguments that define this run's training trajectory (as JSON values), and with ``accelerator`` its
    `LAUNCH_FACTS`: what a checkpoint records and a resumed run must repeat."""
    free = (
        RESUMABLE_CHANGES - STREAMING_TRAJECTORY_ARGS
        if args.streaming
        else RESUMABLE_CHANGES | STREAMING_ONLY_ARGS
    )
    values = {k: v for k, v in public_args(args).items() if k not in free}
    values.update({key: comparable_path(values[key]) for key in PATH_ARGS if values.get(key)})
    if accelerator is not None:
        values.update({key: str(getattr(accelerator, key)) for key in LAUNCH_FACTS})
    return json.loads(json.dumps(values))


def trajectory_label(key: str) -> str:
    """How messages name a trajectory argument: its flag, or a launch fact as accelerate's."""
    return f"accelerate launch: {key}" if key in LAUNCH_FACTS else f"--{key}"


def resolved_trajectory(
    args: argparse.Namespace, model, clip_source: str | None, train_examples: int | None
) -> dict:
    """The values in effect of `RESOLVED_ARGS` (as JSON values): the model config's fields of the model flags, the
    CLIP a fresh model was built from (``clip_source``; None for a saved model continued), and the training set's
    size (a stream's: its --max_train_samples)."""
    # the WeCLIP+ fields of a WeCLIP+ model only (a WeCLIP config has none, and refuses their flags)
    values = {key: getattr(model.config, key) for key in CONFIG_FLAGS if hasattr(model.config, key)}
    values["clip_model_name_or_path"] = recorded_clip(clip_source)
    values["train_examples"] = train_examples
    if train_examples is None:
        values["max_train_samples"] = args.max_train_samples
    return json.loads(json.dumps(values))


# how a checkpoint names the toy CLIP shipped in the package: the same weights wherever the package is installed (a
# clone moved, a new virtualenv), as the checkpoint's frozen_weights.json hashes check
SHIPPED_TOY_CLIP = "weclip_hf/toy_clip"


def recorded_clip(source: str | None) -> str | None:
    """How a checkpoint records the CLIP a fresh model was built from: the package's toy CLIP (a ``.../weclip_hf/
    toy_clip`` folder, also as a checkpoint of an earlier version recorded it) as `SHIPPED_TOY_CLIP`, another local
    folder by where it is (`comparable_path`), a Hub id as given."""
    if source and Path(source).parts[-2:] == tuple(SHIPPED_TOY_CLIP.split("/")):
        return SHIPPED_TOY_CLIP
    return comparable_path(source)


def recorded_resolved(path: Path) -> frozenset[str]:
    """The values in effect checkpoint ``path`` records (the keys of its resolved_args.json; none for an earlier
    version's), which `check_resolved` compares instead of the flags as given."""
    return frozenset(
        read_json_if_present(path / RESOLVED_ARGS_NAME, expect=dict, error=CheckpointError) or ()
    )


def check_resolved(
    path: Path,
    resolved: dict,
    *,
    known_only: bool = False,
    fix: str = "Resume on the run's data and settings (values once the defaults are resolved and the data loaded)",
) -> None:
    """Refuse to resume from checkpoint ``path`` when a value in effect differs from its run's (`resolved_trajectory`):
    a changed model setting or CLIP, or a training set of another size (its data changed under the same flags). A
    checkpoint of an earlier version records none, or not those of `LATER_RESOLVED_ARGS`: they were compared as
    given (`check_resume`). ``known_only``: ``resolved`` holds the values known before the data and model load, and
    the keys it leaves out are compared later; ``fix``: the remedy the refusal names."""
    recorded = recorded_resolved(path)
    unknown = recorded - resolved.keys() if known_only else frozenset()
    check_unchanged(
        path,
        resolved,
        RESOLVED_ARGS_NAME,
        skip=frozenset(LATER_RESOLVED_ARGS - recorded) | unknown,
        label=lambda key: "training set size" if key == "train_examples" else f"--{key}",
        what="these values in effect",
        fix=fix,
        saved_as=lambda saved: {
            **saved,
            "clip_model_name_or_path": recorded_clip(saved.get("clip_model_name_or_path")),
        },
    )


def check_resume(
    args: argparse.Namespace,
    path: Path,
    accelerator: Accelerator | None = None,
    log=print,
    known: dict | None = None,
    computation: Computation | None = None,
) -> None:
    """Refuse to resume from checkpoint ``path`` a run whose trajectory arguments differ from the checkpoint's
    (listing each), one whose values in effect ``known`` already (those the arguments fix, as `resolved_trajectory`
    states them) differ from its run's, one past its --max_train_steps, or a complete one (its --output_dir holds
    `COMPLETED_RUN_FILES`). The run's last checkpoint resumes to what follows the training: saving the model, the
    final evaluation, the card (a run cut off there, or by a full disk, is finished so). A run computing otherwise
    than the checkpoint's (``computation``: another device type, torch.compile, CPU threads) is warned
    (`computation_change_warning`), not refused."""
    state = read_training_state(path)
    step = state.step
    output_dir = Path(args.output_dir)
    if step > args.max_train_steps:
        raise ValueError(
            f"Checkpoint {path} is at step {step}, past --max_train_steps {args.max_train_steps}: a resumed run "
            "only continues its run. For a model trained for fewer steps, start a new run."
        )
    if step == args.max_train_steps and all((output_dir / name).is_file() for name in COMPLETED_RUN_FILES):
        raise ValueError(
            f"Checkpoint {path} is at step {step}, and --max_train_steps is {args.max_train_steps}: the run is "
            f"complete ({output_dir} holds its {', '.join(COMPLETED_RUN_FILES)}), there is nothing left to do. To "
            f"train longer, start a new run from its model: --model_name_or_path {output_dir} with another "
            "--output_dir and the --max_train_steps to add."
        )
    recorded = recorded_resolved(path)
    resolved_later = RESOLVED_ARGS - (LATER_RESOLVED_ARGS - recorded) if recorded else frozenset()
    current = trajectory_args(args, accelerator)
    try:
        unchanged = check_unchanged(path, current, label=trajectory_label, skip=resolved_later)
    except ValueError as error:  # one refusal names every flag to restate
        given = given_resolved_changes(path, current, resolved_later)
        if not given:
            raise
        raise ValueError(
            f"{error} Restate too what the run gave (checked by the values in effect, once the data and model are "
            f"loaded): {'; '.join(given)}."
        ) from None
    if not unchanged:  # a checkpoint of an earlier version
        log(f"Note: {path} records no training arguments ({TRAINING_ARGS_NAME}): they cannot be checked.")
    elif known:
        # a flag the run gave and this one leaves out (or gives otherwise): refused before anything loads
        given = given_resolved_changes(path, current, frozenset(known))
        restate = (
            f"Restate what the run gave: {'; '.join(given)}" if given else "Resume with the run's settings"
        )
        check_resolved(path, known, known_only=True, fix=restate)
    warning = (
        None if computation is None else computation_change_warning(path, state.computation, computation)
    )
    if warning:
        log(warning)
    if step == args.max_train_steps:
        log(
            f"Note: {path} is the run's last step: its training is done; the model is saved and evaluated now."
        )


@dataclass(frozen=True)
class ScriptTerms:
    """How a training script is told to compute as a `Computation` records, which a resume warning names as the way
    back: ``cpu`` (how to run on the CPU), ``device`` (on a device of type ``{device}``), ``compile_off`` (without
    torch.compile; the backend and mode are --torch_compile_backend and --torch_compile_mode in both scripts),
    ``threads`` (how the warning names the torch threads), ``set_threads`` (how to run with ``{threads}``); and
    ``figures``, the file of the run's final evaluation."""

    cpu: str
    device: str
    compile_off: str
    threads: str
    set_threads: str
    figures: str


# examples/train.py's (train_with_trainer.py's: `weclip_hf.trainer.TRAINER_TERMS`)
TRAIN_TERMS = ScriptTerms(
    cpu="on the CPU (accelerate launch --cpu)",
    device="on a {device} device (without accelerate's --cpu)",
    compile_off="without --torch_compile",
    threads="torch threads per process (--num_threads, by default the cores available)",
    set_threads="with --num_threads {threads}",
    figures="metrics.json",
)


def computation_terms(
    computation: Computation, script: ScriptTerms = TRAIN_TERMS
) -> dict[str, tuple[str, str]]:
    """How a resume warning states each item ``computation`` records, by label: (its value, what to pass to compute
    so, in the ``script``'s terms); the items it does not record are left out."""
    terms = {}
    if computation.device is not None:
        terms["device type"] = device_terms(computation.device, script)
    if computation.torch_compile is not None:
        terms["--torch_compile"] = compile_terms(computation, script)
    if computation.threads is not None:
        terms[script.threads] = (
            str(computation.threads),
            script.set_threads.format(threads=computation.threads),
        )
    return terms


def device_terms(device: str, script: ScriptTerms = TRAIN_TERMS) -> tuple[str, str]:
    """(How a resume warning names the device type ``device``, how to run on one by the ``script``'s flags)."""
    return device, script.cpu if device == "cpu" else script.device.format(device=device)


def compile_terms(computation: Computation, script: ScriptTerms = TRAIN_TERMS) -> tuple[str, str]:
    """(How a resume warning names the torch.compile of ``computation``, the ``script``'s flags that compile so)."""
    if not computation.torch_compile:
        return "off", script.compile_off
    backend, mode = computation.torch_compile_backend, computation.torch_compile_mode
    if mode is None:  # the backend's default
        return f"on ({backend})", f"with --torch_compile --torch_compile_backend {backend}"
    return (
        f"on ({backend}, mode {mode})",
        f"with --torch_compile --torch_compile_backend {backend} --torch_compile_mode {mode}",
    )


def computation_change_warning(
    path: Path, recorded: Computation, current: Computation, script: ScriptTerms = TRAIN_TERMS
) -> str | None:
    """The warning of a run resumed from checkpoint ``path``, whose run computed as ``recorded``, computing as
    ``current`` (None when no item both record differs): its float sums run in another order (`RESUMABLE_CHANGES`).
    It names each change and what to pass for an exact resume, in the ``script``'s terms (examples/train.py's by
    default; train_with_trainer.py's: `weclip_hf.trainer.TRAINER_TERMS`)."""
    was, now = computation_terms(recorded, script), computation_terms(current, script)
    changed = [label for label in was if label in now and was[label][0] != now[label][0]]
    if not changed:
        return None
    return (
        f"Warning: {path} was trained computing otherwise than this run: "
        + "; ".join(f"{label} {was[label][0]} -> {now[label][0]}" for label in changed)
        + f". Float sums then run in another order, so the weights and {script.figures} equal the uninterrupted "
        "run's only up to float32 rounding (~1e-5), not bit for bit. For an exact resume, resume "
        + ", ".join(was[label][1] for label in changed)
        + "."
    )


def given_resolved_changes(path: Path, current: dict, keys: frozenset[str]) -> list[str]:
    """``--key value (now ... / not given now)`` for each of ``keys`` (flags compared by their values in effect,
    `check_resolved`) that the run of checkpoint ``path`` gave and the resumed run gives otherwise or leaves out:
    named with a refusal of the flags as given, or of the values in effect the arguments fix, as what to restate (a
    default may still resolve to the run's value: alone, a flag left out is not refused)."""
    saved = read_json(path / TRAINING_ARGS_NAME, expect=dict, error=CheckpointError)
    return [
        f"--{key} {saved[key]!r} ({'not given now' if current.get(key) is None else f'now {current[key]!r}'})"
        for key in sorted(keys)
        if saved.get(key) is not None and saved[key] != current.get(key)
    ]


def save_training_checkpoint(
    accelerator, output_dir: Path, state: TrainingState, args, frozen: FrozenWeights
) -> Path:
    """`save_checkpoint` with the run's `trajectory_args` (``training_args.json``, for `check_resume`) and its
    `resolved_trajectory` (``resolved_args.json``, for `check_resolved`) in it, without the ``frozen`` weights."""
    return save_checkpoint(
        accelerator,
        output_dir,
        state,
        {TRAINING_ARGS_NAME: trajectory_args(args, accelerator), RESOLVED_ARGS_NAME: args.resolved},
        frozen,
    )

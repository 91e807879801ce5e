"""Hostile checkpoints and secrets (issue 25, items 1-2): resuming never runs code planted in a checkpoint
folder, and the Hub token never reaches a file under --output_dir or the Hub."""

import json
import os
import pickle
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import FAST, release_fifo_later, train_in_process

from weclip_hf.checkpointing import (
    CheckpointError,
    Computation,
    FrozenWeights,
    StreamPosition,
    TrainingState,
    find_checkpoint,
    holds_frozen_weights,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from weclip_hf.run_folder import (
    TRAINER_CHECKPOINTS,
    claim_output_dir,
    lock_output_dir,
    logged_evaluation,
    output_dir_held,
    remove_previous_run,
    truncate_log,
)


class Payload:
    """Unpickling it runs a shell command that creates ``marker`` (what an attacker would plant)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _accelerated(seed: int = 0):
    """A fresh CPU accelerator with a small prepared model and optimizer (one optimizer step taken)."""
    from accelerate import Accelerator

    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 / (t + 1))
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return accelerator, model, optimizer, scheduler


# how the run of the `checkpoint` fixture computed: every item recorded, read back as written
COMPUTED = Computation("cuda", True, "inductor", "reduce-overhead", threads=None)


@pytest.fixture
def checkpoint(tmp_path):
    accelerator, model, optimizer, scheduler = _accelerated()
    state = TrainingState(
        step=1, scheduler=scheduler.state_dict(), position=StreamPosition(2, 5), computation=COMPUTED
    )
    path = save_checkpoint(accelerator, tmp_path / "run", state)
    return path, model, scheduler


def test_checkpoint_round_trip_restores_weights_scheduler_and_position(checkpoint):
    path, model, scheduler = checkpoint
    assert sorted(p.name for p in path.glob("*.pkl")) == ["random_states_0.pkl"]  # no custom_checkpoint_*.pkl
    accelerator, fresh, fresh_optimizer, fresh_scheduler = _accelerated(seed=1)
    state = load_checkpoint(accelerator, fresh, fresh_optimizer, path)
    fresh_scheduler.load_state_dict(state.scheduler)
    assert state.step == 1 and state.position == StreamPosition(2, 5) and state.computation == COMPUTED
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()


def _with_frozen_backbone(seed: int, backbone_seed: int = 0):
    """A prepared CPU model whose first layer is frozen (a stand-in for the CLIP towers), one step trained."""
    from accelerate import Accelerator

    torch.manual_seed(backbone_seed)
    backbone = torch.nn.Linear(4, 4).requires_grad_(False)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(4, 3))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return accelerator, model, optimizer


def test_checkpoints_leave_out_the_frozen_backbone_and_resume_only_with_the_same_one(tmp_path):
    """A training checkpoint holds what trains (ViT-B/16: the decoder, not the ~600 MB frozen CLIP); resuming
    restores it beside the backbone the resumed run loaded, which must be the one its run trained with."""
    from safetensors.torch import load_file

    accelerator, model, optimizer = _with_frozen_backbone(seed=0)
    frozen = FrozenWeights.of(model)
    assert frozen.names == {"0.weight", "0.bias"}
    state = TrainingState(step=1, scheduler={}, position=StreamPosition())
    path = save_checkpoint(accelerator, tmp_path / "run", state, frozen=frozen)
    assert load_file(path / "model.safetensors").keys() == {"1.weight", "1.bias"}
    assert json.loads((path / "frozen_weights.json").read_text()) == {
        "parameters_left_out": 2,
        "sha256": frozen.sha256,
    }

    accelerator, fresh, fresh_optimizer = _with_frozen_backbone(seed=1)  # same backbone, other head
    assert not torch.equal(fresh[1].weight, model[1].weight)
    load_checkpoint(accelerator, fresh, fresh_optimizer, path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert fresh_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()

    accelerator, other, other_optimizer = _with_frozen_backbone(seed=0, backbone_seed=1)
    with pytest.raises(
        CheckpointError, match="the frozen backbones loaded now are not the ones its run trained"
    ):
        load_checkpoint(accelerator, other, other_optimizer, path)
    # a checkpoint of an earlier version holds every weight (no frozen_weights.json): it restores them all
    accelerator, model, optimizer = _with_frozen_backbone(seed=0, backbone_seed=1)
    earlier = save_checkpoint(accelerator, tmp_path / "earlier", state)
    assert load_file(earlier / "model.safetensors").keys() == {"0.weight", "0.bias", "1.weight", "1.bias"}
    accelerator, fresh, fresh_optimizer = _with_frozen_backbone(seed=1)
    load_checkpoint(accelerator, fresh, fresh_optimizer, earlier)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    # its backbones replaced the loaded ones: train.py records those (their digest taken before was another)
    assert holds_frozen_weights(earlier) and not holds_frozen_weights(path)
    assert FrozenWeights.of(fresh).sha256 != frozen.sha256
    # a checkpoint that lacks a weight which trains (or holds one the model lacks) is refused, naming it
    accelerator, fresh, fresh_optimizer = _with_frozen_backbone(seed=1)
    from safetensors.torch import save_file

    save_file(
        {"1.weight": model[1].weight.detach(), "2.bias": model[1].bias.detach()}, path / "model.safetensors"
    )
    with pytest.raises(CheckpointError, match=r"does not hold this model's weights \(missing: 1\.bias; not in the "
                       r"model: 2\.bias\)"):  # fmt: skip
        load_checkpoint(accelerator, fresh, fresh_optimizer, path)


def test_checkpoints_leave_out_every_name_of_a_frozen_parameter(tmp_path):
    """A frozen parameter under two names (tied) and a submodule named ``module`` (DDP's prefix): every key of a
    frozen parameter is left out, and the checkpoint resumes."""
    from accelerate import Accelerator
    from safetensors.torch import load_file

    def build(seed: int):
        torch.manual_seed(0)
        model = torch.nn.ModuleDict({"module": torch.nn.Linear(4, 4), "tied": torch.nn.Linear(4, 4)})
        model["tied"].weight = model["module"].weight
        model.requires_grad_(False)
        torch.manual_seed(seed)
        model["head"] = torch.nn.Linear(4, 3)
        optimizer = torch.optim.AdamW(model["head"].parameters(), lr=1e-2)
        accelerator = Accelerator(cpu=True)
        return (accelerator, *accelerator.prepare(model, optimizer))

    accelerator, model, optimizer = build(seed=0)
    frozen = FrozenWeights.of(model)
    assert frozen.names == {"module.weight", "module.bias", "tied.weight", "tied.bias"}
    state = TrainingState(step=1, scheduler={}, position=StreamPosition())
    path = save_checkpoint(accelerator, tmp_path / "run", state, frozen=frozen)
    assert load_file(path / "model.safetensors").keys() == {"head.weight", "head.bias"}
    accelerator, fresh, fresh_optimizer = build(seed=1)
    load_checkpoint(accelerator, fresh, fresh_optimizer, path)
    assert torch.equal(fresh["head"].weight, model["head"].weight)


def test_a_checkpoint_that_cannot_be_written_says_why_and_leaves_the_previous_one(checkpoint, monkeypatch):
    """A full disk made torch.save fail with "unexpected pos 2133568 vs 2133456" and left the partial step_N.tmp on
    it: the error now says what failed, the space left and that step_1 is intact, and the partial folder is gone."""
    path, model, scheduler = checkpoint
    accelerator = _accelerated()[0]

    def disk_full(folder):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "optimizer.bin").write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2133568 vs 2133456")

    monkeypatch.setattr(accelerator, "save_state", disk_full)
    state = TrainingState(step=2, scheduler=scheduler.state_dict(), position=StreamPosition())
    with pytest.raises(CheckpointError, match=r"Writing checkpoint step_2 in .* failed \(RuntimeError: .*unexpected "
                       r"pos.*\); \d+ MiB are left on its disk\. The partial step_2\.tmp was removed and the "
                       r"checkpoints before it \(step_1\) are intact"):  # fmt: skip
        save_checkpoint(accelerator, path.parent, state)
    assert sorted(p.name for p in path.parent.iterdir()) == ["step_1"]
    assert find_checkpoint(path.parent, "latest") == path


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


def test_checkpoint_files_are_as_readable_as_the_rest_of_the_folder(tmp_path):
    """save_state's model.safetensors was 0600 (safetensors' mode whatever the umask) beside 0644 files: another
    user or a container could resume from or evaluate the checkpoint's other files but not its weights."""
    accelerator, _, _, scheduler = _accelerated()
    state = TrainingState(step=1, scheduler=scheduler.state_dict(), position=StreamPosition())
    previous = os.umask(0o022)
    try:
        path = save_checkpoint(accelerator, tmp_path / "run", state)
    finally:
        os.umask(previous)
    modes = _modes(path)
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes


@pytest.mark.parametrize("form", ["raw_pickle", "torch_save"])
@pytest.mark.parametrize(
    "name", ["model.safetensors", "optimizer.bin", "random_states_0.pkl", "training_state.json"]
)
def test_a_payload_in_any_checkpoint_file_is_refused_and_named(checkpoint, tmp_path, name, form):
    path, _, _ = checkpoint
    marker = tmp_path / "pwned"
    if form == "raw_pickle":
        (path / name).write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save(Payload(marker), path / name)
    accelerator, model, optimizer, _ = _accelerated()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(accelerator, model, optimizer, path)
    assert not marker.exists()


def test_planted_pickles_beside_a_checkpoint_are_never_loaded(checkpoint, tmp_path):
    """What accelerate would unpickle with weights_only=False for registered objects, and more."""
    path, model, _ = checkpoint
    marker = tmp_path / "pwned"
    for name in (
        "custom_checkpoint_0.pkl",
        "custom_checkpoint_1.pkl",
        "scheduler.bin",
        "sampler.bin",
        "scaler.pt",
        "dl_state_dict.bin",
    ):
        torch.save(Payload(marker), path / name)
    accelerator, fresh, optimizer, _ = _accelerated(seed=1)
    assert load_checkpoint(accelerator, fresh, optimizer, path).step == 1
    assert torch.equal(fresh.weight, model.weight) and not marker.exists()


def test_legacy_checkpoint_pickles_are_read_tensor_only(checkpoint, tmp_path):
    """A checkpoint of an earlier version (scheduler in custom_checkpoint_0.pkl) still resumes; a payload
    planted in its place is refused, named, and never run."""
    path, _, scheduler = checkpoint
    (path / "training_state.json").unlink()
    torch.save(scheduler.state_dict(), path / "custom_checkpoint_0.pkl")
    accelerator, model, optimizer, _ = _accelerated()
    assert load_checkpoint(accelerator, model, optimizer, path).scheduler == scheduler.state_dict()
    marker = tmp_path / "pwned"
    torch.save(Payload(marker), path / "custom_checkpoint_0.pkl")
    with pytest.raises(CheckpointError, match="custom_checkpoint_0.pkl"):
        load_checkpoint(accelerator, model, optimizer, path)
    assert not marker.exists()


def test_latest_skips_a_damaged_newer_checkpoint_and_names_it(checkpoint):
    path, _, _ = checkpoint
    run = path.parent
    damaged = run / "step_7"
    damaged.mkdir()
    (damaged / "optimizer.bin").write_bytes(b"")
    messages = []
    assert find_checkpoint(run, "latest", log=messages.append) == path
    assert messages and "step_7" in messages[0] and "training_state.json" in messages[0]
    with pytest.raises(CheckpointError, match="step_7"):
        find_checkpoint(run, str(damaged))
    # a complete newer checkpoint whose optimizer state was cut short (a full disk, a copy interrupted): its files
    # were only checked to exist, and the resume failed on it instead of taking the one before
    shutil.copytree(path, run / "step_8")
    state = json.loads((run / "step_8" / "training_state.json").read_text())
    (run / "step_8" / "training_state.json").write_text(json.dumps({**state, "step": 8}))
    optimizer_state = (run / "step_8" / "optimizer.bin").read_bytes()
    (run / "step_8" / "optimizer.bin").write_bytes(optimizer_state[:100])
    assert find_checkpoint(run, "latest", log=messages.append) == path
    assert any("step_8" in m and "optimizer.bin is damaged" in m for m in messages)
    (run / "step_8" / "optimizer.bin").write_bytes(b"")  # empty (a disk full at its first write): as damaged
    assert find_checkpoint(run, "latest", log=messages.append) == path
    assert any("step_8" in m and "optimizer.bin is damaged (it is empty)" in m for m in messages)
    (run / "step_8" / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes()[:-8])
    (run / "step_8" / "optimizer.bin").write_bytes(optimizer_state)
    messages.clear()
    assert find_checkpoint(run, "latest", log=messages.append) == path
    assert any("step_8" in m and "model.safetensors is damaged" in m for m in messages)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="No complete checkpoint"):
        find_checkpoint(run, "latest", log=messages.append)
    assert "model.safetensors" in messages[-1]


@pytest.mark.parametrize("name", ["training_args.json", "resolved_args.json", "frozen_weights.json"])
def test_latest_skips_a_checkpoint_whose_json_file_is_damaged(checkpoint, name):
    """A newer checkpoint whose recorded arguments or frozen-weights digest were cut short stopped the resume with a
    bare JSONDecodeError naming no file (or, for frozen_weights.json, once data and model were loaded), and
    ``latest`` did not fall back to the one before. Every JSON file of a checkpoint is checked with the others."""
    path, _, _ = checkpoint
    run = path.parent
    newer = run / "step_8"
    shutil.copytree(path, newer)
    state = json.loads((newer / "training_state.json").read_text())
    (newer / "training_state.json").write_text(json.dumps({**state, "step": 8}))
    (newer / name).write_text('{"seed": 4')  # cut short
    messages = []
    assert find_checkpoint(run, "latest", log=messages.append) == path
    assert any("step_8" in m and f"{name} is damaged" in m for m in messages)
    with pytest.raises(CheckpointError, match=f"step_8.{name} is damaged"):
        find_checkpoint(run, str(newer))


def test_latest_restores_a_checkpoint_moved_aside_by_a_cut_off_rewrite(checkpoint):
    """Writing step_N again renames the old one step_N.old first; a kill between the renames left step_N.old and
    step_N.tmp, both ignored: latest resumed from an earlier checkpoint."""
    path, _, _ = checkpoint
    shutil.copytree(path, path.parent / "step_1.tmp")  # the new write, maybe incomplete
    os.replace(path, path.parent / "step_1.old")
    messages = []
    assert find_checkpoint(path.parent, "latest", log=messages.append) == path
    assert messages == ["restored checkpoint step_1 from step_1.old (a later write of that step was cut off)"]


def test_rewriting_a_step_replaces_it_whole_and_atomically(checkpoint, monkeypatch):
    """A second write of step_N leaves no step_N.old and none of a cut-off write's step_N.tmp files; a write cut
    off between its renames keeps the previous step_N (as step_N.old, which `latest` restores), never deleted in
    place."""
    path, _, scheduler = checkpoint
    run = path.parent
    (run / "step_1.tmp").mkdir()
    (run / "step_1.tmp" / "stale.bin").write_bytes(b"from a cut-off write")
    state = TrainingState(step=1, scheduler=scheduler.state_dict(), position=StreamPosition(3, 0))
    save_checkpoint(_accelerated()[0], run, state)
    assert sorted(p.name for p in run.iterdir()) == ["step_1"] and not (path / "stale.bin").exists()
    assert json.loads((path / "training_state.json").read_text())["position"] == {"epoch": 3, "batch": 0}
    replace = os.replace

    def cut_off(source, target):
        if Path(source).name == "step_1.tmp":
            raise KeyboardInterrupt  # killed between moving step_1 aside and renaming the new one
        replace(source, target)

    monkeypatch.setattr(os, "replace", cut_off)
    again = TrainingState(step=1, scheduler={}, position=StreamPosition())
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_accelerated()[0], run, again)
    monkeypatch.setattr(os, "replace", replace)
    assert find_checkpoint(run, "latest", log=lambda _: None) == path
    assert json.loads((path / "training_state.json").read_text())["position"] == {"epoch": 3, "batch": 0}


def test_a_checkpoint_without_its_optimizer_or_of_another_step_is_skipped(checkpoint):
    """`latest` skips a newer step_N without optimizer.bin, and one whose training state holds another step than
    its name (a folder copied or renamed by hand), naming each."""
    path, _, _ = checkpoint
    run = path.parent
    (_copy_checkpoint(path, 8) / "optimizer.bin").unlink()
    shutil.copytree(path, run / "step_9")  # holds step 1
    messages = []
    assert find_checkpoint(run, "latest", log=messages.append) == path
    assert [m.split(":")[0] for m in messages] == ["skipping checkpoint step_9", "skipping checkpoint step_8"]
    assert "holds step 1, not the step its name says" in messages[0] and "has no optimizer.bin" in messages[1]


def test_an_archive_whose_data_fails_its_crc_is_damaged(checkpoint):
    """A torch archive (optimizer.bin) with a byte changed inside a member, its length and headers intact, is
    damaged: `latest` falls back past it."""
    path, _, _ = checkpoint
    newer = _copy_checkpoint(path, 8)
    data = bytearray((newer / "optimizer.bin").read_bytes())
    with zipfile.ZipFile(newer / "optimizer.bin") as archive:
        member = max(archive.infolist(), key=lambda info: info.compress_size)
    with open(newer / "optimizer.bin", "rb") as stream:  # the member's data follow its local header
        stream.seek(member.header_offset + 26)
        name_length, extra_length = (int.from_bytes(stream.read(2), "little") for _ in range(2))
    start = member.header_offset + 30 + name_length + extra_length
    data[start + member.compress_size // 2] ^= 0xFF
    (newer / "optimizer.bin").write_bytes(bytes(data))
    messages = []
    assert find_checkpoint(path.parent, "latest", log=messages.append) == path
    assert any("step_8" in m and "fails its CRC" in m for m in messages)


def test_the_frozen_weights_hook_leaves_out_names_under_ddp_too():
    """Under DDP the state dict names a parameter ``module.<name>``: left out all the same."""
    from weclip_hf.checkpointing import _leave_out

    weights = [{"module.backbone.weight": 1, "module.head.weight": 2}, {"backbone.weight": 3, "head.bias": 4}]
    _leave_out(frozenset({"backbone.weight"}))(None, weights, None)
    assert weights == [{"module.head.weight": 2}, {"head.bias": 4}]


def test_a_checkpoint_missing_a_trained_weight_is_refused(checkpoint):
    """model.safetensors without one of the model's trained weights is refused, naming it (only the frozen ones
    may be left out)."""
    from safetensors.torch import load_file, save_file

    path, _, _ = checkpoint
    weights = load_file(path / "model.safetensors")
    save_file({"weight": weights["weight"]}, path / "model.safetensors")
    accelerator, fresh, fresh_optimizer, _ = _accelerated(seed=1)
    with pytest.raises(CheckpointError, match=r"does not hold this model's weights \(missing: bias\)"):
        load_checkpoint(accelerator, fresh, fresh_optimizer, path)


def test_resuming_restores_the_random_states(checkpoint):
    """torch's, numpy's and Python's random generators continue from the checkpoint, whatever was drawn since."""
    import random

    import numpy as np

    path, _, _ = checkpoint

    def draws():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    accelerator, fresh, fresh_optimizer, _ = _accelerated(seed=1)
    load_checkpoint(accelerator, fresh, fresh_optimizer, path)
    first = draws()
    assert draws() != first
    load_checkpoint(accelerator, fresh, fresh_optimizer, path)
    assert draws() == first


def test_differences_name_a_value_added_as_well_as_changed():
    """Keys of either side count: an argument the checkpoint did not record is a difference too."""
    from weclip_hf.checkpointing import differences

    assert differences({"lr": 1, "seed": 0}, {"lr": 1, "seed": 2, "crop": 320}, skip=frozenset({"lr"})) == [
        "--crop None -> 320",
        "--seed 0 -> 2",
    ]


def test_check_unchanged_tells_an_unrecorded_checkpoint_from_a_matching_one(tmp_path):
    """False when the checkpoint records no arguments (an earlier version's: its caller says so), True when they
    match, a ValueError naming each change otherwise."""
    from weclip_hf.checkpointing import TRAINING_ARGS_NAME, check_unchanged

    assert check_unchanged(tmp_path, {"seed": 0}) is False
    (tmp_path / TRAINING_ARGS_NAME).write_text(json.dumps({"seed": 0}))
    assert check_unchanged(tmp_path, {"seed": 0}) is True
    with pytest.raises(ValueError, match=r"these arguments differ .*: --seed 0 -> 1\. "):
        check_unchanged(tmp_path, {"seed": 1})


def _copy_checkpoint(path: Path, step: int) -> Path:
    """A complete copy of checkpoint ``path`` as ``step_<step>`` beside it."""
    copy = shutil.copytree(path, path.parent / f"step_{step}")
    state = json.loads((copy / "training_state.json").read_text())
    (copy / "training_state.json").write_text(json.dumps({**state, "step": step}))
    return copy


def test_prune_keeps_the_newest_and_the_one_just_written_and_never_touches_what_is_not_a_checkpoint(
    checkpoint, tmp_path
):
    """--checkpoints_total_limit 2 after step_4 is written (the run resumed from step_1, a step_5 of its earlier
    segment is there): step_4 and step_5 stay, the older complete ones go; a link (its target intact), a folder
    holding a link, a damaged and a .tmp one are left and not counted."""
    path, _, _ = checkpoint
    run = path.parent
    for step in (2, 3, 4, 5):
        _copy_checkpoint(path, step)
    elsewhere = _copy_checkpoint(path, 9).rename(tmp_path / "elsewhere")
    (run / "step_9").symlink_to(elsewhere, target_is_directory=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("keep")
    (_copy_checkpoint(path, 8) / "notes.txt").symlink_to(secret)
    (_copy_checkpoint(path, 0) / "optimizer.bin").write_bytes((path / "optimizer.bin").read_bytes()[:100])
    shutil.copytree(path, run / "step_6.tmp")
    shutil.copytree(path, run / "step_7.removing")  # a removal a kill cut short: finished now
    (run / "step_notes.removing").mkdir()  # a user's folder of that shape: no checkpoint, kept
    messages = []
    removed = prune_checkpoints(run, 2, run / "step_4", log=messages.append)
    assert removed == ["step_3", "step_2", "step_1"]
    left = sorted(p.name for p in run.iterdir())
    assert left == ["step_0", "step_4", "step_5", "step_6.tmp", "step_8", "step_9", "step_notes.removing"]
    assert (elsewhere / "model.safetensors").is_file() and secret.read_text() == "keep"
    assert messages[-1] == "removed checkpoints step_3, step_2, step_1 (--checkpoints_total_limit 2)"
    assert any(m.startswith("Note: step_0 is left") and "optimizer.bin" in m for m in messages)
    assert any(m.startswith("Note: step_8 is left") and "notes.txt" in m for m in messages)
    # the one just written stays even where a newer one (of the run's earlier segment) is counted first
    assert prune_checkpoints(run, 1, run / "step_4", log=messages.append) == ["step_5"]
    assert (run / "step_4").is_dir() and not (run / "step_5").exists()
    with pytest.raises(ValueError, match="--checkpoints_total_limit must be at least 1"):
        prune_checkpoints(run, 0, run / "step_4")


# ---- the training script ------------------------------------------------------------------------------


def test_train_resume_ignores_a_planted_custom_checkpoint(tmp_path, tiny_clip):
    """The attack of issue 25: a pickle placed as custom_checkpoint_0.pkl ran on --resume_from_checkpoint."""
    out = tmp_path / "run"
    common = [
        "--clip_model_name_or_path",
        tiny_clip,
        "--output_dir",
        str(out),
        *FAST,
        "--num_overlays",
        "0",
        "--toy_train_images",
        "8",
        "--toy_val_images",
        "2",
    ]
    common += ["--max_train_steps", 2, "--checkpointing_steps", 1]
    train_in_process(*common)
    shutil.rmtree(out / "step_2")  # as if stopped after step 1
    marker = tmp_path / "pwned"
    torch.save(Payload(marker), out / "step_1" / "custom_checkpoint_0.pkl")
    metrics = train_in_process(*common, "--resume_from_checkpoint", "latest")
    assert metrics["train_steps"] == 2 and not marker.exists()
    modes = _modes(out / "step_2")  # the weights as readable as the checkpoint's other files
    assert modes["model.safetensors"] == modes["training_state.json"] == modes["optimizer.bin"], modes
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]


def test_hub_token_never_reaches_disk_or_the_hub(tmp_path, tiny_clip, fake_hub):
    """Tracker files, model card, logs, metrics and checkpoints are scanned for the token; the upload is
    an explicit allow-list (no checkpoints, tracker folders, logs or hidden temporary folders)."""
    token = "hf_SeCrEt0123456789abcdefXYZ"
    out = tmp_path / "run"
    (out / ".tmp_interrupted_save").mkdir(parents=True)  # what a killed save_pretrained leaves behind
    (out / ".tmp_interrupted_save" / "model.safetensors").write_bytes(b"partial")
    train_in_process(
        "--clip_model_name_or_path",
        tiny_clip,
        "--output_dir",
        out,
        "--max_train_steps",
        1,
        "--checkpointing_steps",
        1,
        "--with_tracking",
        "--report_to",
        "tensorboard",
        "--push_to_hub",
        "--hub_model_id",
        "weclip-toy-test",
        "--hub_token",
        token,
        *FAST,
    )
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any("events.out.tfevents" in p.name for p in written)  # the tracker did write its files
    assert [str(p) for p in written if token.encode() in p.read_bytes()] == []
    (upload,) = fake_hub.uploaded
    assert upload["repo_id"] == "me/weclip-toy-test" and upload["token"] == token
    files = upload["files"]
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "metrics.json"):
        assert name in files, name
    assert any(f.startswith("overlays/") for f in files)
    assert not [f for f in files if f.startswith(("step_", "weclip", ".")) or f.endswith(".jsonl")], files


def test_claim_output_dir_refuses_old_checkpoints_unless_resumed_or_overwritten(tmp_path):
    (tmp_path / "step_5").mkdir()
    (tmp_path / "train_log.jsonl").write_text('{"step": 5}\n')
    assert (
        claim_output_dir(tmp_path, resume_from="latest", overwrite=False) == []
    )  # a resumed run continues them
    with pytest.raises(FileExistsError, match="step_5.*--resume_from_checkpoint latest"):
        claim_output_dir(tmp_path, resume_from=None, overwrite=False)
    previous = claim_output_dir(tmp_path, resume_from=None, overwrite=True)
    assert (tmp_path / "step_5").is_dir()  # removed only once the run is set up
    remove_previous_run(previous)
    assert not (tmp_path / "step_5").exists() and not (tmp_path / "train_log.jsonl").exists()


def test_claim_output_dir_refuses_links_and_a_users_files_it_would_replace(tmp_path):
    """A folder with the user's own README.md and config.json was taken and both replaced without a word; links
    planted where a run writes (overlays/, step_N, the tracker folder, README.md, .lock) were written through,
    outside the folder, and --overwrite_output_dir left linked folders in place."""
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (run / "README.md").write_text("# my notes\n")
    (run / "config.json").write_text('{"mine": 1}')
    with pytest.raises(FileExistsError, match=r"holds files that a run writes, which it would replace \(README.md, "
                       r"config.json\)\. Start over with --overwrite_output_dir"):  # fmt: skip
        claim_output_dir(run, resume_from=None, overwrite=False)
    assert claim_output_dir(run, resume_from=None, overwrite=True)  # replaced when asked
    for name in ("overlays", "step_3", "weclip", "README.md", ".lock"):
        link = run / name
        link.unlink(missing_ok=True)
        link.symlink_to(outside)
        for overwrite in (False, True):
            with pytest.raises(
                ValueError,
                match=f"holds links where this script writes its outputs \\({run / name} -> {outside}\\)",
            ):
                if name == ".lock":
                    lock_output_dir(run)
                else:
                    claim_output_dir(run, resume_from=None, overwrite=overwrite, tracker_dirs=("weclip",))
        link.unlink()
    (run / "overlays").symlink_to(outside)
    (outside / "keep.png").write_bytes(b"png")
    remove_previous_run([run / "overlays"])  # a link is removed itself, never what it points to
    assert not (run / "overlays").exists() and (outside / "keep.png").exists()


def test_links_planted_at_names_a_run_writes_but_cannot_list_are_refused(tmp_path):
    """Links planted at the names of the model's code files (modeling_weclip.py), Trainer's training_args.bin or the
    log's temporary file were written through (a victim file outside got the source, the arguments, the log); a
    *.safetensors link had its target's mode opened (a private key made readable); the write probe's fixed name
    emptied the file its link pointed to. A link at the folder's top is refused, whatever its name; the probe and the
    log's rewrite use fresh random names; the weights' modes never follow a link."""
    from weclip_hf.model_loading import weights_readable_as

    run, victim = tmp_path / "run", tmp_path / "victim"
    run.mkdir()
    victim.write_text("precious")
    victim.chmod(0o600)
    for name in ("modeling_weclip.py", "training_args.bin", "train_log.tmp", "notes.safetensors"):
        (run / name).symlink_to(victim)
        with pytest.raises(
            ValueError, match=f"holds links where this script writes its outputs \\({run / name} -> "
        ):
            claim_output_dir(run, resume_from=None, overwrite=False)
        (run / name).unlink()
    (run / "notes.safetensors").symlink_to(victim)
    (run / "config.json").write_text("{}")
    (run / "config.json").chmod(0o644)
    weights_readable_as(run, run / "config.json")
    assert victim.stat().st_mode & 0o777 == 0o600
    (run / "notes.safetensors").unlink()
    for pid in range(os.getpid() - 2, os.getpid() + 3):
        (run / f".write_probe_{pid}").symlink_to(victim)
    lock_output_dir(run).close()
    assert victim.read_text() == "precious"
    (run / "train_log.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    truncate_log(run / "train_log.jsonl", 1)
    assert victim.read_text() == "precious" and (run / "train_log.jsonl").read_text() == '{"step": 1}\n'


def test_claim_output_dir_refuses_a_finished_run_to_a_checkpoint_of_another_folder(tmp_path):
    """Resuming another run's checkpoint into a folder replaced its model, metrics and card and mixed the two logs
    (every check was skipped for a resumed run); only a checkpoint of the folder itself continues its run."""
    run, other = tmp_path / "run", tmp_path / "other"
    for folder in (run / "step_2", run / "weclip", other / "step_4"):
        folder.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"")
    (run / "metrics.json").write_text("{}")
    with pytest.raises(FileExistsError, match=f"holds checkpoints .*step_2.*{other / 'step_4'} is a checkpoint "
                       "of another folder.*--overwrite_output_dir"):  # fmt: skip
        claim_output_dir(run, resume_from=str(other / "step_4"), overwrite=False)
    in_place = str(run / ".." / "run" / "step_2")  # the folder's own checkpoint, however it is spelled
    assert claim_output_dir(run, resume_from=in_place, overwrite=False) == []
    with pytest.raises(ValueError, match="--overwrite_output_dir .* would remove"):  # step_2 itself
        claim_output_dir(run, resume_from=in_place, overwrite=True)
    assert claim_output_dir(tmp_path / "new", resume_from=str(other / "step_4"), overwrite=False) == []
    # replaced on request: the checkpoints, metrics and the trackers' folder go (TensorBoard: one curve per run)
    previous = claim_output_dir(run, str(other / "step_4"), overwrite=True, tracker_dirs=("weclip",))
    remove_previous_run(previous)
    assert sorted(p.name for p in run.iterdir()) == ["model.safetensors"]


def test_overwriting_a_run_removes_its_checkpoints_and_results_only(tmp_path):
    """--overwrite_output_dir removed every folder named step_* (a user's step_by_step_notes/ included), and the
    Trainer script's left the old run's eval_results.json and TensorBoard events beside the new model."""
    run = tmp_path / "run"
    for name in (
        "step_2",
        "step_4.tmp",
        "step_3.old",
        "step_1.removing",
        "step_by_step_notes",
        "checkpoint-3",
    ):
        (run / name).mkdir(parents=True)
    (run / "step_notes.txt").write_text("mine")
    (run / "train_log.jsonl").write_text('{"step": 4}\n')
    with pytest.raises(FileExistsError, match=r"holds checkpoints of a previous run \(step_3.old, step_4.tmp, "
                       r"step_1.removing\)\."):  # fmt: skip
        claim_output_dir(run, resume_from=None, overwrite=False)
    remove_previous_run(claim_output_dir(run, resume_from=None, overwrite=True))
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-3", "step_by_step_notes", "step_notes.txt"]

    trainer_run = tmp_path / "trainer_run"
    for name in ("checkpoint-3", "tmp-checkpoint-5", "checkpoint_notes", "runs/Dec06_20-33-44_vm", "step_2"):
        (trainer_run / name).mkdir(parents=True)
    for name in ("model.safetensors", "eval_results.json", "README.md"):
        (trainer_run / name).write_text("{}")
    trainer = {
        "checkpoints": TRAINER_CHECKPOINTS,
        "tracker_dirs": ("runs",),
        "results": ("eval_results.json",),
    }
    with pytest.raises(FileExistsError, match=r"holds a finished run: its trained model \(model.safetensors, "
                       r"eval_results.json\) and checkpoints \(checkpoint-3, tmp-checkpoint-5\)"):  # fmt: skip
        claim_output_dir(trainer_run, resume_from=None, overwrite=False, **trainer)
    remove_previous_run(claim_output_dir(trainer_run, resume_from=None, overwrite=True, **trainer))
    assert sorted(p.name for p in trainer_run.iterdir()) == [
        "checkpoint_notes",
        "model.safetensors",
        "step_2",
    ]


def test_truncate_log_keeps_the_steps_up_to_the_checkpoint_and_drops_a_cut_line(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 10}\n{"step": 20, "eval": 1}\n{"step": 30}\n{"step": 4')
    truncate_log(log, 20)
    assert log.read_text() == '{"step": 10}\n{"step": 20, "eval": 1}\n'
    truncate_log(tmp_path / "missing.jsonl", 20)  # no log yet: nothing to do


def test_truncate_log_drops_lines_that_are_no_step_record_instead_of_failing(tmp_path):
    """Lines of the log that parse but are no record of a step (a string, a step given as a string) ended the
    resume in a TypeError, one nesting 100,000 arrays in a RecursionError; they are dropped as a cut line is, and a
    diverged run's NaN loss is kept as logged."""
    log = tmp_path / "train_log.jsonl"
    odd = ['"step"', '{"step": "7"}', "[" * 100_000 + "]" * 100_000, '{"step": true}']
    log.write_text("\n".join(['{"step": 10, "loss": NaN}', *odd, '{"step": 30}']) + "\n")
    truncate_log(log, 20)
    assert log.read_text() == '{"step": 10, "loss": NaN}\n'
    assert not logged_evaluation(log, 10)


def test_a_run_folder_that_holds_more_than_its_lock_is_kept(tmp_path):
    """`output_dir_held` removes a folder it created only while the lock is all it holds: a run that failed after
    writing (a checkpoint, a log) keeps them."""
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="failed"), output_dir_held(run):
        (run / "train_log.jsonl").write_text('{"step": 1}\n')
        raise RuntimeError("failed")
    assert (run / "train_log.jsonl").read_text() == '{"step": 1}\n'
    with pytest.raises(RuntimeError, match="failed"), output_dir_held(tmp_path / "empty"):
        raise RuntimeError("failed")
    assert not (tmp_path / "empty").exists()


def test_the_write_probe_never_writes_through_a_planted_link(tmp_path):
    run, victim = tmp_path / "run", tmp_path / "victim"
    run.mkdir()
    victim.write_text("precious")
    for name in (".write_probe", ".write_probe_", ".probe"):
        (run / name).symlink_to(victim)
    lock_output_dir(run).close()
    assert victim.read_text() == "precious"


def test_overwriting_a_run_removes_its_overlays(tmp_path):
    """The old run's overlays (train.py's val_*.png, published with the model) would be shown as the new run's."""
    run = tmp_path / "run"
    (run / "step_2").mkdir(parents=True)
    (run / "overlays").mkdir()
    (run / "overlays" / "val_000.png").write_bytes(b"png")
    remove_previous_run(claim_output_dir(run, resume_from=None, overwrite=True))
    assert not (run / "overlays").exists()


def test_a_log_rewrite_cut_short_leaves_the_log_whole(tmp_path, monkeypatch):
    """truncate_log writes the kept records to a temporary file and renames it: a failure while writing (a full disk,
    a kill) leaves the old log as it was."""
    log = tmp_path / "train_log.jsonl"
    records = '{"step": 1}\n{"step": 2}\n{"step": 3}\n'
    log.write_text(records)
    write_text = Path.write_text

    def cut_short(self, data, *args, **kwargs):
        write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", cut_short)
    with pytest.raises(OSError, match="No space left"):
        truncate_log(log, 2)
    assert log.read_text() == records
    assert [p.name for p in tmp_path.iterdir()] == ["train_log.jsonl"]  # no temporary file left


def test_an_evaluation_is_logged_only_for_its_own_step(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 2, "eval_miou": 0.5}\n{"step": 4, "loss": 1.0}\n{"step": 6, "eval_miou": 0.6')
    assert logged_evaluation(log, 2)
    assert not logged_evaluation(log, 4)  # a record of step 4, without eval_* figures
    assert not logged_evaluation(log, 6)  # the line a kill cut short
    assert not logged_evaluation(tmp_path / "missing.jsonl", 2)


_STATE = '{"step": 3, "scheduler": {}, "position": {"epoch": 0, "batch": 0}'


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[" * 100_000 + "]" * 100_000, "nest too deep for Python's JSON parser"),  # was a RecursionError
        (_STATE.replace("3", "1e999") + "}", "1e999 is out of the range of a float"),  # an OverflowError
        (_STATE + ', "step": 5}', "the key 'step' is given twice"),  # was step 5, silently
        (_STATE + ', "seconds": NaN}', "holds NaN"),  # was seconds=nan
        (_STATE.replace("3", "true") + "}", "step must be a whole number >= 0, got True"),  # was step 1
        (_STATE.replace('"epoch": 0', '"epoch": "x"') + "}", "epoch must be a whole number >= 0, got 'x'"),
        (b'{"step": "\xe9"}', "not UTF-8 text (byte 10 is b'\\xe9')"),
    ],
    ids=["deep", "1e999", "key twice", "NaN", "bool step", "string epoch", "latin-1"],
)
def test_a_pathological_training_state_is_refused_naming_it(tmp_path, content, problem):
    """A training_state.json nesting 100,000 arrays, holding 1e999, a key twice, NaN, a bool or string count: a
    RecursionError or OverflowError, or a state read silently wrong (step 5 of two, True as step 1); now one
    CheckpointError naming the file and the problem (`weclip_hf.json_files.read_json`)."""
    from weclip_hf.checkpointing import read_training_state

    file = tmp_path / "training_state.json"
    file.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CheckpointError) as caught:
        read_training_state(tmp_path)
    assert str(file) in str(caught.value) and problem in str(caught.value)


@pytest.mark.parametrize("kind", ["folder", "fifo", "link loop"])
def test_a_checkpoint_record_that_is_no_file_is_refused_naming_it(tmp_path, kind):
    """A folder, a FIFO or a link loop at a checkpoint's JSON records: reading training_state.json raised
    IsADirectoryError, or blocked forever on the FIFO (here a writer opens it after 2 s, so that the old code
    ends), and training_args.json / resolved_args.json / computation.json so placed were taken for absent; now
    one CheckpointError naming the file and what it is."""
    from weclip_hf.checkpointing import check_unchanged, read_training_state
    from weclip_hf.trainer import recorded_computation
    from weclip_hf.trajectory import recorded_resolved

    expected = {
        "folder": "is a folder",
        "fifo": "is a FIFO",
        "link loop": "Too many levels of symbolic links",
    }
    readers = {
        "training_state.json": read_training_state,
        "training_args.json": lambda path: check_unchanged(path, {"seed": 1}),
        "resolved_args.json": recorded_resolved,
        "computation.json": recorded_computation,
    }
    for name, read in readers.items():
        folder = tmp_path / name.replace(".", "_")
        file = folder / name
        folder.mkdir()
        if kind == "folder":
            file.mkdir()
        elif kind == "link loop":
            file.symlink_to(file.name)
        else:
            os.mkfifo(file)
            release_fifo_later(file)
        with pytest.raises(CheckpointError, match=f"^{file}: .*{expected[kind]}"):
            read(folder)

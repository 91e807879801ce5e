"""Bad files, bad inputs, numerical guards and offline behaviour (issue: reliability and safety)."""

import json
import re
import shutil
import signal
import socket

import numpy as np
import pytest
import torch
from conftest import (
    FAST,
    TINY_TEXT,
    TINY_VISION,
    make_tiny_config,
    read_log,
    run_train,
    train_in_process,
    train_phase,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor
from weclip_hf.cam import box_mask, box_threshold_mask, gradcam, minmax_normalize
from weclip_hf.inference import longest_edge_size


@pytest.fixture
def saved(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_truncated_safetensors_gives_clear_error(saved, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        WeCLIPForSemanticSegmentation.from_pretrained(broken)


def test_a_truncated_weight_shard_is_named(tiny_model, tmp_path):
    """A save cut short in one shard of several was reported as "the weights file of" the folder: the file is named
    (the others are whole)."""
    tiny_model.save_pretrained(tmp_path, max_shard_size="100KB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2
    shards[1].write_bytes(shards[1].read_bytes()[:-1])
    with pytest.raises(ValueError, match=rf"weights file {shards[1].name} of '.*' is truncated or corrupted"):
        WeCLIPForSemanticSegmentation.from_pretrained(tmp_path)


def test_a_folder_of_a_save_cut_before_its_weights_says_so(saved):
    """config.json is written before the weights: a folder without any weights file was told to convert "the file"
    from pickle; it is told to save the model again."""
    (saved / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no model.safetensors, no weights file: a save that did not "
                       r"finish \(config.json is written first\)\? Save the model again") as refused:  # fmt: skip
        WeCLIPForSemanticSegmentation.from_pretrained(saved)
    assert "pickle" not in str(refused.value)


def test_config_of_another_model_type_is_refused(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    CLIPModel(CLIPConfig(vision_config=TINY_VISION, text_config=TINY_TEXT)).save_pretrained(tmp_path / "clip")
    with pytest.raises(ValueError, match="'clip'.*from_clip"):
        WeCLIPForSemanticSegmentation.from_pretrained(tmp_path / "clip")


def test_text_embedding_names_other_than_the_saved_ones_are_refused_at_loading(saved):
    """The stored text embeddings were computed from the saved names: other names, as keywords or in a config given
    with config=, would disagree with them; the error says how to compute new ones."""
    from transformers import AutoConfig

    remedy = r"cannot be changed when loading.*update_class_embeddings"
    with pytest.raises(ValueError, match=r"\['class_names'\] " + remedy):
        WeCLIPForSemanticSegmentation.from_pretrained(saved, class_names=["cat", "dog"])
    config = AutoConfig.from_pretrained(saved)
    config.prompt_template = "a sketch of a {}."
    with pytest.raises(ValueError, match=r"\['prompt_template'\] " + remedy):
        WeCLIPForSemanticSegmentation.from_pretrained(saved, config=config)


def test_a_config_json_without_a_model_type_is_refused(saved):
    config = json.loads((saved / "config.json").read_text())
    del config["model_type"]
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match="config.json names no model_type: not a saved WeCLIPForSemanticSegmentation"
    ):
        WeCLIPForSemanticSegmentation.from_pretrained(saved)


def test_backbone_folders_that_are_no_clip_checkpoint_are_refused_before_loading(saved, tiny_clip, tmp_path):
    """from_clip refuses a path to no folder (before trying it as a Hub id), a saved WeCLIP model (naming the loader
    that takes it) and a CLIP folder holding pickle weights only."""
    from safetensors.torch import load_file

    with pytest.raises(FileNotFoundError, match="No CLIP checkpoint folder at './no-such-clip'"):
        WeCLIPForSemanticSegmentation.from_clip("./no-such-clip")
    with pytest.raises(ValueError, match="is a saved WeCLIP model, not a CLIP checkpoint: load it with Auto"):
        WeCLIPForSemanticSegmentation.from_clip(str(saved))
    pickled = shutil.copytree(tiny_clip, tmp_path / "pickled-clip")
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"no model.safetensors, only pickle weights \(pytorch_model.bin\)"
    ):
        WeCLIPForSemanticSegmentation.from_clip(str(pickled))


def test_a_mistyped_keyword_of_from_clip_is_refused_not_stored(tiny_clip):
    """A keyword that is no config field nor loading option (a typo) would be kept as a stray config attribute."""
    with pytest.raises(
        TypeError, match=r"from_clip got unknown keyword argument\(s\) \['decoder_num_layer'\]"
    ):
        WeCLIPForSemanticSegmentation.from_clip(tiny_clip, decoder_num_layer=1)


def test_a_missing_folder_three_levels_deep_is_named(tmp_path, monkeypatch):
    """No Hub id has three parts: a missing runs/weclip/nope is a missing local folder, named as one."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="No model folder at 'runs/weclip/nope'"):
        WeCLIPForSemanticSegmentation.from_pretrained("runs/weclip/nope")


def test_class_count_mismatch_is_refused(saved):
    config = json.loads((saved / "config.json").read_text())
    config["class_names"].append("boat")
    config["id2label"][str(len(config["class_names"]))] = "boat"
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match the model's config.*E.g. the number of classes"):
        WeCLIPForSemanticSegmentation.from_pretrained(saved)


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model folder"):
        WeCLIPForSemanticSegmentation.from_pretrained(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        WeCLIPForSemanticSegmentation.from_pretrained(str(tmp_path / "empty"))


@pytest.mark.parametrize(
    "dropped", ["decoder.", "class_text_embeds", "background_text_embeds", "training_step"]
)
def test_weights_missing_from_the_file_are_refused(saved, dropped):
    from safetensors.torch import load_file, save_file

    weights = load_file(saved / "model.safetensors")
    kept = {k: v for k, v in weights.items() if not k.startswith(dropped)}
    assert len(kept) < len(weights)
    save_file(kept, saved / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"lack {len(weights) - len(kept)} tensor.*left random: {dropped}"):
        WeCLIPForSemanticSegmentation.from_pretrained(saved)


@pytest.mark.parametrize(
    "override, problem",
    [
        (
            {"decoder_num_layers": 1},
            r"hold \d+ tensor\(s\) the model has no place for, which would be dropped",
        ),
        ({"decoder_num_layers": 5}, r"lack \d+ tensor\(s\) of the model, which would be left random"),
        ({"decoder_hidden_size": 128}, r"do not match the model's config"),
    ],
)
def test_keyword_arguments_that_change_the_shape_are_named(saved, override, problem):
    """``from_pretrained(folder, decoder_num_layers=1)`` dropped trained decoder blocks with transformers' log
    table only (the logits moved by 0.14 of 0.21); more layers or another width were blamed on the folder."""
    ((name, value),) = override.items()
    with pytest.raises(
        ValueError, match=rf"{problem}.*keyword arguments \({name}={value}\) change the model's shape"
    ):
        WeCLIPForSemanticSegmentation.from_pretrained(saved, **override)


def test_tensors_a_saved_model_has_no_place_for_are_refused(saved):
    from safetensors.torch import load_file, save_file

    weights = load_file(saved / "model.safetensors")
    save_file(
        {**weights, "decoder.extra.weight": torch.zeros(2)},
        saved / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(
        ValueError, match=r"hold 1 tensor\(s\) .* dropped: decoder.extra.weight. Load it with the class"
    ):
        WeCLIPForSemanticSegmentation.from_pretrained(saved)


def test_loading_info_is_still_available(saved):
    model, info = WeCLIPForSemanticSegmentation.from_pretrained(saved, output_loading_info=True)
    assert isinstance(model, WeCLIPForSemanticSegmentation) and not info["missing_keys"]


def test_pickle_weights_are_refused(saved, tiny_model):
    (saved / "model.safetensors").unlink()
    torch.save(tiny_model.state_dict(), saved / "pytorch_model.bin")
    with pytest.raises(
        FileNotFoundError, match=r"no model.safetensors, only pickle weights \(pytorch_model.bin\)"
    ):
        WeCLIPForSemanticSegmentation.from_pretrained(saved)
    with pytest.raises(ValueError, match="safetensors only"):
        WeCLIPForSemanticSegmentation.from_pretrained(saved, use_safetensors=False)


def test_pickle_weights_in_a_subfolder_are_refused_there(saved, tiny_model):
    """With ``subfolder=`` the folder whose weights are read is checked, not the one above it (which holds another
    model's safetensors here)."""
    sub = saved / "sub"
    sub.mkdir()
    shutil.copy(saved / "config.json", sub / "config.json")
    torch.save(tiny_model.state_dict(), sub / "pytorch_model.bin")
    with pytest.raises(
        FileNotFoundError, match=r"sub' has no model.safetensors, only pickle weights \(pytorch_model"
    ):
        WeCLIPForSemanticSegmentation.from_pretrained(saved, subfolder="sub")


def test_a_token_given_to_from_clip_fetches_the_checkpoint_and_is_never_stored(tiny_clip, tmp_path):
    token = "hf_SeCrEt0123456789"
    model = WeCLIPForSemanticSegmentation.from_clip(tiny_clip, token=token, revision="main")
    model.save_pretrained(tmp_path / "model")
    assert token not in (tmp_path / "model" / "config.json").read_text()


def test_saved_folder_is_safetensors_only(saved):
    # besides the model's code (.py files, for trust_remote_code: tests/test_remote_code.py), no pickle weights
    assert {p.name for p in saved.iterdir() if p.suffix != ".py"} == {"config.json", "model.safetensors"}


def test_nothing_touches_the_network_offline(saved, monkeypatch):
    """Every connection or name lookup is recorded (and refused): transformers swallows exceptions on some paths
    (a revision's resolution, a pipeline component's loading), so the refusal alone could pass unseen."""
    attempts = []

    def refuser(name):
        def refuse(*args, **kwargs):
            attempts.append((name, args[1:] if name == "socket.connect" else args))
            raise OSError(f"network access attempted: {name}")

        return refuse

    monkeypatch.setattr(socket, "create_connection", refuser("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuser("getaddrinfo"))
    monkeypatch.setattr(socket.socket, "connect", refuser("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuser("socket.connect_ex"))
    model = WeCLIPForSemanticSegmentation.from_pretrained(saved)
    WeCLIPImageProcessor(patch_size=8).save_pretrained(saved)
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=str(saved))
    from PIL import Image

    assert segmenter(Image.fromarray(np.zeros((40, 40, 3), np.uint8)))
    assert model(torch.randn(1, 3, 32, 32)).logits.shape[1] == 5
    assert attempts == []


def test_cam_normalization_never_divides_by_zero():
    constant = torch.full((2, 4, 4), 3.0)
    assert torch.isfinite(minmax_normalize(constant)).all()
    zero_grad = gradcam(torch.randn(1, 16, 8), torch.zeros(1, 16, 8), (4, 4))  # a class with zero gradient
    assert torch.isfinite(zero_grad).all() and (zero_grad == 0).all()
    assert box_mask(box_threshold_mask(zero_grad, 0.4)).sum() == 0


def test_constant_image_and_zero_text_embeddings_stay_finite(tiny_model):
    tiny_model.class_text_embeds.zero_()  # all classes equally likely: GradCAM is flat
    out = tiny_model(torch.zeros(2, 3, 32, 32), class_labels=torch.tensor([[1.0, 0, 0, 0], [0, 1, 1, 0]]))
    assert torch.isfinite(out.loss) and torch.isfinite(out.cams).all()


def _assert_checkpoints_finite(output_dir) -> None:
    """No final model was written and every checkpoint holds finite weights."""
    from safetensors.torch import load_file

    assert not (output_dir / "model.safetensors").exists()
    for weights in output_dir.glob("step_*/model.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(weights).values()), weights


def test_exploding_training_stops_at_the_non_finite_segmentation_loss(tmp_path, tiny_clip):
    out = tmp_path / "nan"
    proc = run_train(
        "--clip_model_name_or_path",
        tiny_clip,
        "--output_dir",
        out,
        "--max_train_steps",
        4,
        "--learning_rate",
        "1e30",
        "--num_warmup_steps",
        0,
        "--checkpointing_steps",
        1,
        *FAST,
        check=False,
    )
    assert proc.returncode != 0
    match = re.search(
        r"Non-finite (segmentation|affinity) loss \((nan|inf|-inf)\) at step (\d+); weights were not "
        r"updated",
        proc.stderr,
    )
    assert match, proc.stderr[-3000:]
    step = int(match[3])
    assert match[1] == "segmentation" and 0 < step < 4
    assert [r["step"] for r in read_log(out)] == list(range(1, step + 1))  # it stopped at the first bad step
    assert sorted(p.name for p in out.glob("step_*")) == [f"step_{s}" for s in range(1, step + 1)]
    _assert_checkpoints_finite(out)


def test_non_finite_affinity_loss_is_named(tmp_path, tiny_clip, monkeypatch):
    import weclip_hf.losses as losses

    real_affinity_loss, calls = losses.affinity_loss, []

    def affinity_loss_nan_at_step_2(*args, **kwargs):
        loss, *rest = real_affinity_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss), *rest

    monkeypatch.setattr(losses, "affinity_loss", affinity_loss_nan_at_step_2)  # as `weclip_loss` calls it
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    out = tmp_path / "nan"
    try:
        with pytest.raises(
            FloatingPointError, match=r"Non-finite affinity loss \(nan\) at step 2; weights were not"
        ):
            train_in_process(
                "--clip_model_name_or_path",
                tiny_clip,
                "--output_dir",
                out,
                "--max_train_steps",
                4,
                "--checkpointing_steps",
                1,
                *FAST,
            )
    finally:
        for sig, handler in handlers.items():  # train.py installs its own SIGINT/SIGTERM handlers
            signal.signal(sig, handler)
    assert [r["step"] for r in read_log(out)] == [1, 2]
    _assert_checkpoints_finite(out)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    layout=st.sampled_from(["hwc", "chw", "hw"]),
    channels=st.sampled_from([1, 3, 4]),
    dtype=st.sampled_from(["uint8", "uint16", "float32", "float64", "bool"]),
)
def test_processor_accepts_any_size_dtype_and_layout(height, width, layout, channels, dtype):
    rng = np.random.default_rng(height * 71 + width)
    if dtype == "bool":
        array = rng.random((height, width, channels)) > 0.5
    elif dtype.startswith("float"):
        array = rng.random((height, width, channels)).astype(dtype)
    else:
        array = rng.integers(0, np.iinfo(dtype).max, (height, width, channels)).astype(dtype)
    if layout == "chw":
        if width in (1, 3, 4):  # ambiguous with HWC; the documented rule reads a NumPy array as HWC
            return
        array = np.moveaxis(array, -1, 0)
    elif layout == "hw":
        array = array[..., 0]
    processor = WeCLIPImageProcessor(size={"longest_edge": 64})
    out = processor(array).pixel_values
    # e.g. 1 x 65: the short side rounds to 1 px, then the image is zero-padded to one 16 x 16 patch
    resized = tuple(max(1, s) for s in longest_edge_size(height, width, 64))
    assert out.shape == (1, 3, *(max(16, s) for s in resized)) and max(out.shape[-2:]) == 64
    assert torch.isfinite(out).all()


@settings(max_examples=15, deadline=None)
@given(
    height=st.integers(8, 60),
    width=st.integers(8, 60),
    classes=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_model_handles_any_patchable_size_and_label_set(height, width, classes):
    torch.manual_seed(0)
    model = _shared_model()
    labels = torch.tensor([classes], dtype=torch.float32)
    out = model(torch.randn(1, 3, height, width), class_labels=labels)
    assert out.pseudo_labels.shape == (1, height, width) and torch.isfinite(out.loss)
    allowed = {0} | {i + 1 for i, c in enumerate(classes) if c}
    assert set(out.pseudo_labels.unique().tolist()) <= allowed


_MODEL = []


def _shared_model():
    if not _MODEL:
        torch.manual_seed(0)
        _MODEL.append(WeCLIPForSemanticSegmentation(make_tiny_config()).eval())
    return _MODEL[0]


@pytest.mark.parametrize(
    "term, shown",
    [
        ("seg_loss", "segmentation"),
        ("affinity_loss", "affinity"),
        ("dice_loss", "Dice"),
        ("clip_from_dino_loss", "CLIP-from-DINO cross-branch"),
        ("dino_from_clip_loss", "DINO-from-CLIP cross-branch"),
    ],
)
def test_every_loss_term_is_checked_for_non_finite_values(term, shown):
    """WeCLIP's two terms and WeCLIP+'s three: a non-finite one stops the step, named; absent terms are skipped."""
    from types import SimpleNamespace

    loop = train_phase("loop")
    finite = dict(seg_loss=torch.tensor(1.0), affinity_loss=torch.tensor(0.5), dice_loss=None)
    plus = dict(finite, dice_loss=torch.tensor(0.2), clip_from_dino_loss=torch.tensor(0.3))
    loop.check_losses_finite(SimpleNamespace(**finite), 7)  # WeCLIP+ terms absent: nothing raised
    loop.check_losses_finite(SimpleNamespace(**plus, dino_from_clip_loss=torch.tensor(0.4)), 7)
    bad = SimpleNamespace(
        **{**plus, "dino_from_clip_loss": torch.tensor(0.4), term: torch.tensor(float("inf"))}
    )
    with pytest.raises(
        FloatingPointError, match=rf"Non-finite {shown} loss \(inf\) at step 7; weights were not"
    ):
        loop.check_losses_finite(bad, 7)

    # under DDP every process stops, also those whose own losses are finite
    def another_process_non_finite(flags):
        return torch.cat([flags, torch.zeros_like(flags)])

    with pytest.raises(FloatingPointError, match=r"Non-finite loss in another process at step 7"):
        loop.check_losses_finite(SimpleNamespace(**finite), 7, another_process_non_finite)
    loop.check_losses_finite(SimpleNamespace(**finite), 7, lambda flags: torch.cat([flags, flags]))
    with pytest.raises(ValueError, match="none of the loss terms"):
        loop.check_losses_finite(SimpleNamespace(seg_loss=None), 7)


def test_a_stop_signal_is_agreed_by_every_process_in_the_step_check():
    """A Ctrl-C / SIGTERM that one process got travels in the step's one gather with the loss flags: every process
    learns it (its number) after the same step (one process stopping alone left the others waiting in the next
    collective)."""
    import signal
    from types import SimpleNamespace

    loop = train_phase("loop")
    out = SimpleNamespace(seg_loss=torch.tensor(1.0), affinity_loss=torch.tensor(0.5))
    assert loop.check_losses_finite(out, 3) == 0
    assert loop.check_losses_finite(out, 3, stop_signal=signal.SIGINT) == signal.SIGINT

    def another_process(signum: int):
        return lambda flags: torch.cat([flags, torch.tensor([[1, signum]], dtype=flags.dtype)])

    assert loop.check_losses_finite(out, 3, another_process(signal.SIGINT)) == signal.SIGINT
    assert loop.check_losses_finite(out, 3, another_process(0), stop_signal=signal.SIGTERM) == 15
    assert loop.check_losses_finite(out, 3, another_process(0)) == 0


class _WithHead(WeCLIPForSemanticSegmentation):
    """A user's subclass with a trained head of its own, named in ``_TRAINED``."""

    _TRAINED = (*WeCLIPForSemanticSegmentation._TRAINED, "aux")

    def __init__(self, config):
        super().__init__(config)
        self.aux = torch.nn.Linear(config.decoder_hidden_size, 2)
        self.post_init()


class _WithUnnamedHead(WeCLIPForSemanticSegmentation):
    def __init__(self, config):
        super().__init__(config)
        self.aux = torch.nn.Linear(config.decoder_hidden_size, 2)


def test_a_subclass_with_a_new_trained_head_starts_from_a_saved_model_or_a_clip(saved, tiny_clip):
    """A subclass adding a head could neither load a WeCLIP folder nor use from_clip ("lack 2 tensor(s) ...
    use from_clip(...)", said to from_clip itself): the modules it names in ``_TRAINED`` beyond its base's may be
    missing (initialised as the decoder); one it does not name is refused, saying how to name it."""
    torch.manual_seed(0)
    model = _WithHead.from_pretrained(saved)
    base = WeCLIPForSemanticSegmentation.from_pretrained(saved)
    assert torch.equal(model.decoder.classifier.weight, base.decoder.classifier.weight)
    assert 0 < model.aux.weight.std() < 0.05 and not model.aux.bias.any()  # the decoder's rule (std 0.02)
    assert (
        model.aux.weight.requires_grad
        and not model.vision_model.embeddings.patch_embedding.weight.requires_grad
    )
    _WithHead.from_clip(str(tiny_clip), class_names=["cat", "dog"])
    with pytest.raises(
        ValueError, match=r"lack 2 tensor\(s\).*aux.bias, aux.weight.*_WithUnnamedHead._TRAINED"
    ):
        _WithUnnamedHead.from_pretrained(saved)
    with pytest.raises(
        ValueError, match=r"lack 2 tensor\(s\).*aux.bias, aux.weight.*_WithUnnamedHead._TRAINED"
    ):
        _WithUnnamedHead.from_clip(str(tiny_clip), class_names=["cat", "dog"])


@pytest.mark.parametrize("missing", ["CLIP", "DINOv2"])
def test_a_backbone_the_hub_cannot_give_is_named(tiny_clip, missing):
    """Offline, a Hub id that is not in the cache: transformers' "couldn't connect" error named neither the
    checkpoint nor what it was for (a train.py run without --clip_model_name_or_path fetched the default CLIP)."""
    from weclip_hf import WeCLIPPlusForSemanticSegmentation

    nowhere = "weclip-hf-tests/not-a-model"
    with pytest.raises(
        OSError, match=rf"Could not load the {missing} checkpoint '{nowhere}': (?s:.*)local folder"
    ):
        if missing == "CLIP":
            WeCLIPForSemanticSegmentation.from_clip(nowhere)
        else:
            WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(tiny_clip, nowhere)


def test_a_relative_path_to_no_folder_is_named(tmp_path, monkeypatch):
    """``from_pretrained("outputs/nope")`` where outputs/ exists but nope does not: transformers took it for a Hub
    id and, offline, said "couldn't connect" without naming it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No model folder at 'outputs/nope' \(nor a Hub model"):
        WeCLIPForSemanticSegmentation.from_pretrained("outputs/nope")


_DEEP_JSON = "[" * 100_000 + "]" * 100_000


def test_a_pathological_config_json_is_refused_naming_it(saved):
    """config.json nesting 100,000 arrays (or one field so nested) or holding a 5,000-digit integer or Latin-1
    bytes ended from_pretrained in a RecursionError or a bare ValueError / UnicodeDecodeError naming no file; a key
    given twice was read as its last value (a model of another depth, refused later for its weights); id2label as a
    list ended in an AttributeError, class_names as a number in "'int' object is not iterable". Each is now a
    ValueError naming config.json and the problem, WeCLIPConfig's too (AutoConfig reads the file by
    transformers' own reader, before it knows the class)."""
    from weclip_hf import WeCLIPConfig

    text = (saved / "config.json").read_text()
    config = json.loads(text)
    for content, problem in [
        (_DEEP_JSON, "config.json: its arrays or objects nest too deep"),
        (text[:-2] + ', "extra": ' + _DEEP_JSON + "}", "config.json: its arrays or objects nest too deep"),
        (text[:-2] + ', "extra": 1' + "0" * 5000 + "}", "config.json: holds an integer too long to read"),
        (
            text[:-2] + ', "decoder_num_layers": 1}',
            "config.json: the key 'decoder_num_layers' is given twice",
        ),
        (
            json.dumps({**config, "id2label": ["a", "b"]}),
            "id2label must map label ids to names, got ['a', 'b']",
        ),
        (json.dumps({**config, "class_names": 5}), "class_names must be a list of names, got 5"),
    ]:
        (saved / "config.json").write_text(content)
        for load in (WeCLIPForSemanticSegmentation.from_pretrained, WeCLIPConfig.from_pretrained):
            with pytest.raises(ValueError, match=re.escape(problem)):
                load(saved)
    (saved / "config.json").write_bytes(text[:-2].encode() + b', "extra": "\xe9"}')
    with pytest.raises(ValueError, match=re.escape("config.json: not UTF-8 text")):
        WeCLIPForSemanticSegmentation.from_pretrained(saved)


def test_a_pathological_preprocessor_config_is_refused_naming_it(tmp_path):
    """preprocessor_config.json nesting 100,000 arrays ended from_pretrained in a RecursionError, one holding an
    array in an AttributeError; a key given twice was read as its last value, a FIFO in its place was taken for
    no processor (the default one used, with a warning), and a size of 10**9 pixels was kept, to allocate terabytes
    per image. Each is now a ValueError naming the file or the size."""
    import os

    WeCLIPImageProcessor(patch_size=12).save_pretrained(tmp_path)
    file = tmp_path / "preprocessor_config.json"
    text = file.read_text()
    for content, problem in [
        (_DEEP_JSON, f"{file}: its arrays or objects nest too deep"),
        ("[1]", f"{file}: holds a JSON array, expected a JSON object"),
        (text[:-2] + ', "patch_size": 16}', f"{file}: the key 'patch_size' is given twice"),
        (
            json.dumps({**json.loads(text), "size": {"longest_edge": 10**9}}),
            "size values must be at most 16384",
        ),
    ]:
        file.write_text(content)
        with pytest.raises(ValueError, match=re.escape(problem)):
            WeCLIPImageProcessor.from_pretrained(tmp_path)
    file.write_text("[1]")
    with pytest.raises(ValueError, match=re.escape(f"{file}: holds a JSON array")):
        WeCLIPImageProcessor.from_json_file(file)
    file.unlink()
    os.mkfifo(file)
    with pytest.raises(ValueError, match=re.escape(f"{file}: it is a FIFO")):
        WeCLIPImageProcessor.from_saved_or_default(tmp_path, patch_size=12)


def test_a_config_of_a_folder_without_a_config_json_is_refused(tmp_path):
    """WeCLIPConfig.from_pretrained of a folder without config.json, or with a FIFO or folder at its name, returned
    the default config (VOC's 20 classes) without a word; now a FileNotFoundError, or the ValueError naming what
    is there instead."""
    import os

    from weclip_hf import WeCLIPConfig

    with pytest.raises(FileNotFoundError, match="has no config.json: not a saved model folder"):
        WeCLIPConfig.from_pretrained(tmp_path)
    os.mkfifo(tmp_path / "config.json")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'config.json'}: it is a FIFO")):
        WeCLIPConfig.from_pretrained(tmp_path)

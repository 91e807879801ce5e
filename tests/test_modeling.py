"""WeCLIPForSemanticSegmentation: shapes, frozen CLIP, batched == per-image reference, save/load, Auto."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_TEXT, TINY_VISION, CharTokenizer, make_tiny_config
from reference_weclip import reference_affinity_loss, reference_pseudo_labels

from weclip_hf import (
    WeCLIPConfig,
    WeCLIPForSemanticSegmentation,
    WeCLIPImageProcessor,
    WeCLIPPlusConfig,
    processor_settings,
)
from weclip_hf.losses import affinity_loss, affinity_targets, segmentation_loss


def _inputs(batch=3, height=48, width=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 3, height, width, generator=g)
    class_labels = torch.zeros(batch, 4)
    class_labels[0, [0, 2]] = 1
    class_labels[1, 3] = 1
    if batch > 2:
        class_labels[2, [0, 1, 3]] = 1
    return pixel_values, class_labels


def test_config_defaults_and_roundtrip(tmp_path):
    config = WeCLIPConfig()
    assert config.num_labels == 21 and config.id2label[0] == "background" and config.id2label[15] == "person"
    assert config.class_names[14] == "person with clothes,people,human"
    assert len(config.background_names) == 25 and config.prompt_template == "a clean origami {}."
    assert (config.attention_num_maps, config.rfm_num_maps, config.num_feature_layers) == (8, 6, 11)
    assert config.rfm_start_step == 15000 and config.cam_box_threshold == 0.4
    assert config.vision_config.patch_size == 16 and config.vision_config.hidden_size == 768
    config.save_pretrained(tmp_path)
    loaded = WeCLIPConfig.from_pretrained(tmp_path)
    a, b = config.to_dict(), loaded.to_dict()
    for d in (a, b):
        d.pop("transformers_version", None)
        d.pop("_name_or_path", None)
    assert a == b


def test_config_adapts_layer_counts_to_tiny_clip():
    config = make_tiny_config()
    assert (config.attention_num_maps, config.rfm_num_maps, config.num_feature_layers) == (3, 3, 2)


def test_config_reads_deprecated_names(tmp_path):
    """config.json files written before the rename still load, with a warning, and keep their meaning."""
    config = make_tiny_config(attention_num_maps=2)
    config.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["cam_attention_layers"] = data.pop("attention_num_maps")
    data["rfm_num_layers"] = 8  # the old name meant "at most the CLIP depth"
    del data["rfm_num_maps"]
    path.write_text(json.dumps(data))
    with pytest.warns(FutureWarning, match="cam_attention_layers"):
        loaded = WeCLIPConfig.from_pretrained(tmp_path)
    assert (loaded.attention_num_maps, loaded.rfm_num_maps) == (2, 3)
    assert "cam_attention_layers" not in loaded.to_dict() and "rfm_num_layers" not in loaded.to_dict()
    with pytest.raises(ValueError, match="attention_num_maps only"):
        make_tiny_config(attention_num_maps=2, cam_attention_layers=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(class_names=[]), "at least one"),
        (dict(label_names=["x"]), "label_names"),
        (dict(prompt_template="no slot"), "prompt_template"),
        (dict(prompt_template=3), "prompt_template must be a string holding '{}', got 3"),
        (dict(class_names=["cat", 3]), r"class_names must be a list of strings, got \['cat', 3\]"),
        (dict(cam_box_threshold=1.5), "cam_box_threshold"),
        (dict(cam_box_threshold="0.5"), r"cam_box_threshold must be a number in \(0.0, 1.0\), got '0.5'"),
        (dict(num_feature_layers=2.0), r"num_feature_layers must be an integer in \[1, 2\], got 2.0"),
        (dict(num_feature_layers=True), r"num_feature_layers must be an integer in \[1, 2\], got True"),
        (dict(decoder_num_heads=5), "divisible"),
        (dict(num_feature_layers=3), "num_feature_layers"),
        (dict(attention_num_maps=0), "attention_num_maps"),
        (dict(attention_num_maps=-2), "attention_num_maps"),
        (dict(attention_num_maps=4), "attention_num_maps"),
        (dict(rfm_num_maps=0), "rfm_num_maps"),
        (dict(cam_attention_layers=0), "cam_attention_layers"),
        (dict(affinity_radius=-1), "affinity_radius"),
        (dict(par_dilations=[]), "par_dilations"),
        (dict(par_dilations=[1, 0]), "par_dilations"),
        (dict(par_num_iter=10**9), "par_num_iter"),
        (dict(num_labels=10**9), "num_labels"),
        (dict(background_names=[]), "background_names"),
        (dict(decoder_hidden_size=-32), "decoder_hidden_size"),
        (dict(decoder_dropout=1.0), "decoder_dropout"),
        # (1 - max CAM) ** 0 would be a background score of 1 everywhere, whatever the CAM
        (dict(cam_bg_exponent=0.0), r"cam_bg_exponent must be a number in \(0.0, 100.0\]"),
        (dict(vision_config={**TINY_VISION, "patch_size": 0}), "vision_config.patch_size"),
        (dict(vision_config={**TINY_VISION, "num_hidden_layers": 10**5}), "vision_config.num_hidden_layers"),
        (dict(vision_config={**TINY_VISION, "hidden_size": -32}), "vision_config.hidden_size"),
        (dict(vision_config={**TINY_VISION, "intermediate_size": 0}), "vision_config.intermediate_size"),
        (dict(text_config={**TINY_TEXT, "vocab_size": 10**9}), "text_config.vocab_size"),
        (
            dict(text_config={**TINY_TEXT, "max_position_embeddings": 10**6}),
            "text_config.max_position_embeddings",
        ),
        (dict(par_num_iter=2.5), "par_num_iter"),
        (
            dict(semantic_loss_ignore_index=1),
            r"semantic_loss_ignore_index \(1\) is a label id",
        ),  # class 1 unlearned
        (dict(semantic_loss_ignore_index=0), r"semantic_loss_ignore_index \(0\) is a label id .*Use 255"),
        (dict(semantic_loss_ignore_index=255.5), r"semantic_loss_ignore_index must be an integer"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_tiny_config(**kwargs)


def test_a_layer_count_beyond_the_clips_depth_says_what_it_counts():
    """rfm_num_maps 6 (the VOC preset's, for ViT-B/16's 12 layers) on a 3-layer CLIP said only 'must be an integer
    in [1, 3], got 6' (generate_pseudo_labels.py --preset voc on a small CLIP, a converted small checkpoint)."""
    for field in ("rfm_num_maps", "attention_num_maps"):
        with pytest.raises(
            ValueError,
            match=rf"^{field} must be an integer in \[1, 3\], got 6: a number of the "
            r"layers of the CLIP vision tower, which has 3 \(vision_config.num_hidden_layers\)",
        ):
            make_tiny_config(**{field: 6})


def test_fresh_model_is_finite_and_clip_frozen(tiny_model):
    for name, p in tiny_model.named_parameters():
        assert torch.isfinite(p).all(), name
    frozen = [n for n, p in tiny_model.named_parameters() if not n.startswith("decoder.")]
    assert frozen and all(not dict(tiny_model.named_parameters())[n].requires_grad for n in frozen)
    assert all(p.requires_grad for n, p in tiny_model.named_parameters() if n.startswith("decoder."))
    tiny_model.train()
    assert tiny_model.training and tiny_model.decoder.training
    assert not tiny_model.vision_model.training and not tiny_model.text_model.training


def test_inference_shapes(tiny_model):
    pixel_values, _ = _inputs(height=50, width=35)  # grid floor(50/8) x floor(35/8) = 6 x 4
    out = tiny_model(pixel_values)
    assert out.logits.shape == (3, 5, 6, 4)
    assert out.loss is None and out.pseudo_labels is None


def test_weak_supervision_outputs_and_gradients(tiny_model):
    pixel_values, class_labels = _inputs()
    tiny_model.train()
    out = tiny_model(pixel_values, class_labels=class_labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss > 0
    assert out.pseudo_labels.shape == (3, 48, 40) and out.pseudo_labels.dtype == torch.long
    for b in range(3):
        allowed = {0} | {c + 1 for c in range(4) if class_labels[b, c]}
        assert set(out.pseudo_labels[b].unique().tolist()) <= allowed
    assert out.cams.shape == (3, 4, 6, 5)
    assert (out.cams[class_labels == 0] == 0).all()
    assert out.decoder_affinity.shape == (3, 30, 30)
    out.loss.backward()
    for name, p in tiny_model.named_parameters():
        if name.startswith("decoder."):
            assert p.grad is not None, name
        else:
            assert p.grad is None, name


def test_image_without_classes_gets_background(tiny_model):
    pixel_values, class_labels = _inputs()
    class_labels[1] = 0
    out = tiny_model(pixel_values, class_labels=class_labels)
    assert (out.pseudo_labels[1] == 0).all()
    out = tiny_model(pixel_values[1:2], class_labels=class_labels[1:2])
    assert (out.pseudo_labels == 0).all() and torch.isfinite(out.loss)


@pytest.mark.parametrize("use_rfm", [False, True])
def test_batched_pseudo_labels_equal_per_image_reference(tiny_model, use_rfm):
    pixel_values, class_labels = _inputs(height=56, width=48)
    out = tiny_model(pixel_values, class_labels=class_labels, use_rfm=use_rfm, output_cam_details=True)
    ref = reference_pseudo_labels(tiny_model, pixel_values, class_labels, use_rfm, out.decoder_affinity)
    details = out.cam_details
    assert details.pair_image_index.tolist() == [0, 0, 1, 2, 2, 2]
    assert details.pair_class_index.tolist() == [0, 2, 3, 0, 1, 3]
    np.testing.assert_allclose(details.gradcams.numpy(), np.stack(ref["gradcams"]), atol=1e-5)
    np.testing.assert_array_equal(details.box_masks.numpy(), np.stack(ref["box_masks"]))
    np.testing.assert_allclose(
        details.refined_cams_grid.numpy(), np.stack(ref["refined_grid"]), rtol=1e-4, atol=1e-6
    )
    # float32 summation order differs (bmm vs per-pair matmul, ~1e-7); the min-max normalization of a
    # nearly flat refined CAM of a random tiny model amplifies it to ~1e-4: labels may differ only at
    # near-ties of the PAR scores (values in [0, 1]).
    differ = out.pseudo_labels != ref["pseudo_labels"]
    assert differ.float().mean() < 1e-3
    assert (ref["top2_gaps"][differ] < 1e-3).all()
    assert out.used_rfm is use_rfm


def test_losses_match_loop_reference():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (2, 24, 16), generator=g)
    labels[0, :4] = 255
    affinity = torch.rand(2, 24, 24, generator=g)
    targets = affinity_targets(labels, (6, 4), radius=2)
    loss, _, _ = affinity_loss(affinity, targets)
    expected = reference_affinity_loss(affinity, labels, (6, 4), radius=2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    logits = torch.randn(2, 3, 6, 4, generator=g)
    up = torch.nn.functional.interpolate(logits, size=(24, 16), mode="bilinear", align_corners=False)
    ce = torch.nn.functional.cross_entropy(up, labels, ignore_index=255, reduction="none")
    bg, fg = labels == 0, (labels != 0) & (labels != 255)
    expected_seg = 0.5 * ce[bg].mean() + 0.5 * ce[fg].mean()
    assert segmentation_loss(logits, labels).item() == pytest.approx(expected_seg.item(), rel=1e-5)
    # no foreground (or no background) pixel in the batch: that half is exactly 0, not NaN
    only_bg = torch.zeros(2, 24, 16, dtype=torch.long)
    ce_all = torch.nn.functional.cross_entropy(up, only_bg, reduction="none")
    assert segmentation_loss(logits, only_bg).item() == pytest.approx(0.5 * ce_all.mean().item(), rel=1e-5)
    only_fg = torch.full((2, 24, 16), 2, dtype=torch.long)
    ce_all = torch.nn.functional.cross_entropy(up, only_fg, reduction="none")
    assert segmentation_loss(logits, only_fg).item() == pytest.approx(0.5 * ce_all.mean().item(), rel=1e-5)
    all_ignored = torch.full((2, 24, 16), 255, dtype=torch.long)
    assert segmentation_loss(logits, all_ignored).item() == 0.0


def test_a_step_counter_made_under_inference_mode_schedules_the_rfm(tiny_config):
    """A counter made under `torch.inference_mode` (``model.training_step = ...`` there, as a state loaded in a
    pipeline's context) is an inference tensor, which keeps no write counter: it is read as it is, after every
    write too, and the RFM schedule follows it."""
    tiny_config.rfm_start_step = 2
    model = WeCLIPForSemanticSegmentation(tiny_config).eval()
    pixel_values, class_labels = _inputs(batch=2, height=16, width=16)
    with torch.inference_mode():
        model.training_step = torch.tensor(1)
    assert model.training_step.is_inference()
    for step, rfm in ((1, False), (2, True)):
        with torch.inference_mode():
            model.training_step.fill_(step)
        with torch.no_grad():
            assert model(pixel_values, class_labels=class_labels).used_rfm is rfm


def test_a_replaced_counter_is_read_even_with_the_write_count_of_the_old_one(tiny_config):
    """A new ``training_step`` tensor is read whatever its write counter, even one written as often as the old one
    (the mirror's counter alone would keep the old value); a negative step is refused."""
    tiny_config.rfm_start_step = 5
    model = WeCLIPForSemanticSegmentation(tiny_config).eval()
    pixel_values, class_labels = _inputs(batch=2, height=16, width=16)
    with torch.no_grad():
        assert model(pixel_values, class_labels=class_labels).used_rfm is False  # mirrors step 0
        new = torch.tensor(5)
        for _ in range(model.training_step._version):
            new.add_(0)  # written in place as often as the old counter
        assert new._version == model.training_step._version
        model.training_step = new
        assert model(pixel_values, class_labels=class_labels).used_rfm is True
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        model.set_training_step(-1)
    assert int(model.training_step) == 5


def test_rfm_switches_on_from_step_counter(tiny_config):
    tiny_config.rfm_start_step = 2
    model = WeCLIPForSemanticSegmentation(tiny_config).train()
    pixel_values, class_labels = _inputs(batch=2)
    used = [model(pixel_values, class_labels=class_labels).used_rfm for _ in range(3)]
    assert used == [False, False, True]
    assert int(model.training_step) == 3
    model.eval()
    assert model(pixel_values, class_labels=class_labels).used_rfm is True
    assert int(model.training_step) == 3  # eval forwards do not count
    assert model(pixel_values, class_labels=class_labels, use_rfm=False).used_rfm is False


@pytest.mark.parametrize("plus", [False, True], ids=["weclip", "weclip_plus"])
def test_only_training_steps_advance_the_step_counter(plus):
    """A forward in train mode counts only where it can be a training step (gradients on, labels given): an
    inference call on a model left in train mode (a pipeline, a look between steps in a notebook) advanced the
    saved counter that starts the RFM, shifting the schedule."""
    from conftest import make_tiny_plus_config

    from weclip_hf import WeCLIPPlusForSemanticSegmentation

    torch.manual_seed(0)
    if plus:
        model = WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config()).train()
    else:
        model = WeCLIPForSemanticSegmentation(make_tiny_config()).train()
    pixel_values, class_labels = _inputs(batch=2, height=16, width=16)
    class_labels = class_labels[:, : model.config.num_labels - 1]
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    model(pixel_values)
    with torch.no_grad():
        model(pixel_values, class_labels=class_labels)
        model(pixel_values, labels=labels)
    assert int(model.training_step) == 0
    model(pixel_values, class_labels=class_labels)
    model(pixel_values, labels=labels, return_loss=False)  # a loss of the user's own: still a training step
    assert int(model.training_step) == 2


@pytest.mark.parametrize("plus", [False, True], ids=["weclip", "weclip_plus"])
def test_return_loss_false_gives_the_same_pseudo_labels_without_the_loss(plus):
    """``return_loss=False`` (CLIPModel's flag; the evaluation's and segment.py's CAMs) computes no loss, and the
    decoder affinity only for the RFM: the logits, pseudo labels and CAMs are the same."""
    from conftest import make_tiny_plus_config

    from weclip_hf import WeCLIPPlusForSemanticSegmentation

    torch.manual_seed(0)
    if plus:
        model = WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config()).eval()
    else:
        model = WeCLIPForSemanticSegmentation(make_tiny_config()).eval()
    from transformers.utils import can_return_loss

    # None by default (not True): transformers' Trainer would ask every batch for a loss, also unlabelled ones
    assert not can_return_loss(type(model))
    pixel_values, class_labels = _inputs(batch=2)
    class_labels = class_labels[:, : model.config.num_labels - 1]
    for use_rfm in (False, True):
        with torch.no_grad():
            full = model(pixel_values, class_labels=class_labels, use_rfm=use_rfm)
            lean = model(pixel_values, class_labels=class_labels, use_rfm=use_rfm, return_loss=False)
        assert full.loss is not None and lean.loss is None and lean.seg_loss is None
        assert (lean.decoder_affinity is not None) == use_rfm
        for name in ("logits", "pseudo_labels", "cams"):
            assert torch.equal(getattr(lean, name), getattr(full, name)), (use_rfm, name)


def _replace_step(model, step):
    model.training_step = torch.tensor(step)


def _load_step(model, step):
    model.load_state_dict({**model.state_dict(), "training_step": torch.tensor(step)})


@pytest.mark.parametrize(
    "write",
    [
        lambda model, step: model.training_step.fill_(step),
        lambda model, step: model.training_step.copy_(torch.tensor(step)),
        _replace_step,
        _load_step,
    ],
    ids=["fill_", "copy_", "replace", "load_state_dict"],
)
def test_outside_writes_to_the_step_counter_decide_the_next_rfm(tiny_config, write, monkeypatch):
    """The host mirror of `training_step` follows a write made outside the model (it kept its old value: the RFM
    stayed off and the write was undone), yet is read from the buffer only after such a write."""
    tiny_config.rfm_start_step = 5
    model = WeCLIPForSemanticSegmentation(tiny_config).train()
    pixel_values, class_labels = _inputs(batch=2, height=16, width=16)
    assert model(pixel_values, class_labels=class_labels).used_rfm is False
    reads = []
    to_int = torch.Tensor.__int__
    monkeypatch.setattr(
        torch.Tensor, "__int__", lambda t: (t is model.training_step and reads.append(t)) or to_int(t)
    )
    assert [model(pixel_values, class_labels=class_labels).used_rfm for _ in range(2)] == [False, False]
    assert reads == []  # no device sync on the steps nobody else wrote
    write(model, 100)
    assert model(pixel_values, class_labels=class_labels).used_rfm is True
    assert len(reads) == 1 and int(model.training_step) == 101
    write(model, 0)
    assert model(pixel_values, class_labels=class_labels).used_rfm is False
    assert int(model.training_step) == 1


def test_labels_of_a_processor_with_the_models_settings_are_taken():
    """A processor built with `processor_settings` pads labels with the model's ignore index (100 here); one of
    255 is refused, naming the fix."""
    model = WeCLIPForSemanticSegmentation(make_tiny_config(semantic_loss_ignore_index=100)).eval()
    image = np.random.default_rng(0).integers(0, 255, (33, 33, 3), dtype=np.uint8)
    mask = np.zeros((33, 33), np.uint8)
    mask[5:10, 5:10], mask[0, 0] = 2, 100
    fit = WeCLIPImageProcessor(**processor_settings(model.config), size=33, do_pad=True)
    inputs = fit(image, segmentation_maps=mask)
    assert inputs.labels.unique().tolist() == [0, 2, 100]
    assert torch.isfinite(model(inputs.pixel_values, labels=inputs.labels).loss)
    other = WeCLIPImageProcessor(patch_size=8, size=33, do_pad=True)(image, segmentation_maps=mask)
    with pytest.raises(ValueError, match=r"\[255\]; .*ignore_index=100 .*processor_settings\(model.config\)"):
        model(other.pixel_values, labels=other.labels)


def test_full_supervision_with_pixel_labels(tiny_model):
    pixel_values, _ = _inputs()
    labels = torch.randint(0, 5, (3, 48, 40))
    labels[:, :3] = 255
    out = tiny_model(pixel_values, labels=labels)
    assert torch.isfinite(out.loss) and out.pseudo_labels is None
    # every training forward advances the step counter, fully supervised ones too (one schedule for both)
    tiny_model.train()
    before = int(tiny_model.training_step)
    tiny_model(pixel_values, labels=labels).loss.backward()
    assert int(tiny_model.training_step) == before + 1


def test_the_loss_takes_the_configs_affinity_radius_and_weight():
    """The output's loss terms are the loss functions' on its own logits and affinity, with the config's
    affinity_radius and affinity_loss_weight (a radius of 1 on the 6 x 5 grid: the default 8 spans it whole)."""
    torch.manual_seed(0)
    model = WeCLIPForSemanticSegmentation(
        make_tiny_config(affinity_radius=1, affinity_loss_weight=0.3)
    ).eval()
    pixel_values, _ = _inputs()
    labels = torch.randint(0, 5, (3, 48, 40), generator=torch.Generator().manual_seed(2))
    labels[:, :3] = 255
    out = model(pixel_values, labels=labels)
    targets = affinity_targets(labels, (6, 5), radius=1)
    expected_aff, _, _ = affinity_loss(out.decoder_affinity, targets)
    expected_seg = segmentation_loss(out.logits, labels)
    assert out.affinity_loss.item() == pytest.approx(expected_aff.item(), rel=1e-6)
    assert out.seg_loss.item() == pytest.approx(expected_seg.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(expected_seg.item() + 0.3 * expected_aff.item(), rel=1e-6)


def unaligned_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers whose data does not start on a 64-byte boundary."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, tensor in named if tensor.data_ptr() % 64]


def test_save_load_roundtrip_keeps_everything(tmp_path, tiny_model):
    tiny_model.set_training_step(11)
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = WeCLIPForSemanticSegmentation.from_pretrained(tmp_path)
    a, b = tiny_model.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert int(loaded.training_step) == 11
    assert not loaded.vision_model.embeddings.patch_embedding.weight.requires_grad
    # every tensor in fresh 64-byte-aligned memory, as a model built in memory: the CPU kernels round the same
    assert unaligned_tensors(loaded) == []
    pixel_values, _ = _inputs()
    torch.testing.assert_close(loaded(pixel_values).logits, tiny_model(pixel_values).logits, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:The following device_map keys do not match")
@pytest.mark.parametrize("placement", ["vision tower on disk", "too little memory for auto"])
def test_offloaded_or_split_loading_is_refused(tmp_path, tiny_model, placement):
    """accelerate's offload hooks never materialize the weights WeCLIP reads directly (fused paths, the GradCAM
    block): such a model crashed in its forward ('Tensor on device cpu is not on the expected device meta'), so
    loading refuses it and names what works; one device, or "auto" where everything fits, loads and predicts."""
    if placement == "vision tower on disk":
        device_map = {name.split(".")[0]: "cpu" for name in tiny_model.state_dict()} | {
            "vision_model": "disk"
        }
        placement = {"device_map": device_map}
    else:  # accelerate offloads what does not fit
        placement = {"device_map": "auto", "max_memory": {"cpu": 20_000}}
    tiny_model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"device_map=.*disk: .*device_map='cpu'.*model\.to\(device\)"):
        WeCLIPForSemanticSegmentation.from_pretrained(
            tmp_path, offload_folder=tmp_path / "offload", **placement
        )
    pixel_values, _ = _inputs()
    expected = tiny_model(pixel_values).logits
    for device_map in ("cpu", {"": "cpu"}, "auto"):  # "auto" puts everything on this machine's one device
        loaded = WeCLIPForSemanticSegmentation.from_pretrained(tmp_path, device_map=device_map)
        torch.testing.assert_close(loaded(pixel_values).logits, expected, rtol=0, atol=0)


def test_a_model_split_over_accelerators_is_refused_and_one_accelerator_is_not():
    """The device maps accelerate gives several GPUs (indices), checked without GPUs on a stand-in module. An index
    is named as torch names it where it can ("cuda:0" from torch 2.14's CUDA build even with no GPU visible) and as
    given where torch raises (2.13's CPU build, 2.6's CUDA build with no GPU)."""
    from weclip_hf.model_loading import refuse_split_placement

    module = torch.nn.Linear(2, 2)
    module.hf_device_map = {"vision_model": 0, "decoder": 0}
    refuse_split_placement("folder", module, {"device_map": "auto"})
    module.hf_device_map = {"vision_model": 0, "decoder": 1}
    where = r"\((\w+:)?0: vision_model; (\w+:)?1: decoder\)"
    with pytest.raises(ValueError, match=r"device_map='auto'.*several devices.*" + where):
        refuse_split_placement("folder", module, {"device_map": "auto"})


def test_a_model_wholly_offloaded_or_left_on_meta_is_refused():
    """One device by the map is not enough: all of it on "disk", or tensors left on the meta device (a one-device map
    accelerate did not fill), are refused as an offload is (stand-in modules)."""
    from weclip_hf.model_loading import refuse_split_placement

    module = torch.nn.Linear(2, 2)
    module.hf_device_map = {"": "disk"}
    with pytest.raises(ValueError, match=r"offloaded it \(disk: \(whole model\)\)"):
        refuse_split_placement("folder", module, {"device_map": {"": "disk"}})
    with torch.device("meta"):
        module = torch.nn.Linear(2, 2)
    module.hf_device_map = {"": "cpu"}
    with pytest.raises(ValueError, match=r"cpu: \(whole model\); meta: weight, bias"):
        refuse_split_placement("folder", module, {"device_map": "cpu"})


def test_a_whole_model_pickles_and_torch_saves(tmp_path, tiny_model):
    """`torch.save(model)`, `pickle` and spawned workers need a picklable model (a lambda load hook was not)."""
    tiny_model.set_training_step(5)
    torch.save(tiny_model, tmp_path / "whole.pt")
    loaded = torch.load(tmp_path / "whole.pt", weights_only=False)
    pixel_values, _ = _inputs()
    torch.testing.assert_close(loaded(pixel_values).logits, tiny_model(pixel_values).logits, rtol=0, atol=0)
    assert loaded._current_step() == 5
    # the host mirror of training_step follows a state loaded into the unpickled model
    state = {**loaded.state_dict(), "training_step": torch.tensor(9)}
    loaded.load_state_dict(state)
    assert loaded._current_step() == 9


def test_auto_classes_and_pipeline(tmp_path, varied_tiny_model):
    """The Auto classes load a saved folder, and its pipeline's masks partition the image (several masks: one
    mask, as the tiny random model's one class gave, partitions any image)."""
    from PIL import Image
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

    tiny_model = varied_tiny_model
    tiny_model.save_pretrained(tmp_path)
    WeCLIPImageProcessor(size={"longest_edge": 64}, patch_size=8).save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), WeCLIPConfig)
    assert isinstance(
        AutoModelForSemanticSegmentation.from_pretrained(tmp_path), WeCLIPForSemanticSegmentation
    )
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), WeCLIPImageProcessor)
    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8))
    results = segmenter(image)
    assert len(results) > 1 and all(r["mask"].size == (70, 45) for r in results)
    assert {r["label"] for r in results} <= set(tiny_model.config.id2label.values())
    union = sum(np.asarray(r["mask"], dtype=np.int64) // 255 for r in results)
    assert (union == 1).all()  # masks partition the image


@pytest.mark.parametrize("plus", [False, True], ids=["weclip", "weclip_plus"])
def test_auto_model_and_auto_processor_load_a_saved_folder(plus, tmp_path):
    """AutoModel gives the model (it said "Unrecognized configuration class"), AutoProcessor its
    WeCLIPImageProcessor, as for other vision models; a keyword the processor refuses is refused with its
    TypeError (AutoProcessor swallowed it, asked "Do you wish to run the custom code? [y/N]" and said the folder
    held no processor)."""
    from conftest import make_tiny_plus_config
    from transformers import AutoModel, AutoProcessor

    from weclip_hf import WeCLIPPlusForSemanticSegmentation

    model = (
        WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config())
        if plus
        else WeCLIPForSemanticSegmentation(make_tiny_config())
    )
    model.save_pretrained(tmp_path)
    WeCLIPImageProcessor(patch_size=model.config.vision_config.patch_size, do_pad=True).save_pretrained(
        tmp_path
    )
    assert type(AutoModel.from_pretrained(tmp_path)) is type(model)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is WeCLIPImageProcessor and loaded.do_pad
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['do_reduce_labels'\]"):
        AutoProcessor.from_pretrained(tmp_path, do_reduce_labels=True)


def test_update_class_embeddings_with_new_classes(tiny_model):
    tiny_model.update_class_embeddings(CharTokenizer(), class_names=["boat", "bird"])
    assert tiny_model.config.num_labels == 3 and tiny_model.config.id2label[2] == "bird"
    assert tiny_model.class_text_embeds.shape == (2, 16)
    torch.testing.assert_close(tiny_model.class_text_embeds.norm(dim=-1), torch.ones(2))
    assert tiny_model(torch.randn(1, 3, 32, 32)).logits.shape[1] == 3


def test_update_class_embeddings_names_a_tokenizer_given_as_a_folder_or_id(tiny_model):
    """A folder or Hub id given for the tokenizer failed inside the text encoding with "'str' object is not
    callable"; it is named, with where a CLIP tokenizer comes from, and nothing changes."""
    with pytest.raises(TypeError, match=r"tokenizer must be a tokenizer object, got the str 'weclip-voc'.*"
                       r"AutoTokenizer.from_pretrained.*openai/clip-vit-base-patch16"):  # fmt: skip
        tiny_model.update_class_embeddings("weclip-voc", class_names=["boat", "bird"])
    assert tiny_model.config.class_names == ["cat", "dog", "car", "tree"]


def test_new_classes_in_half_precision_and_names_that_are_not_lists_of_names(tiny_model):
    """A new class count in a bf16 model gave a float32 classifier (the forward failed); a string was read as one
    class per letter, an empty list kept the old names, a repeated name collapsed label2id; a preset's display
    names stayed with other classes."""
    from weclip_hf import WeCLIPConfig

    model = tiny_model.to(torch.bfloat16)
    model.update_class_embeddings(CharTokenizer(), class_names=["boat", "bird"])
    assert model.decoder.classifier.weight.dtype == torch.bfloat16
    assert model(torch.randn(1, 3, 32, 32)).logits.shape[1] == 3
    for names, message in (("cow", r"class_names must be a list of names, got the string 'cow': write \['cow'\]"),
                           ([], "class_names must hold at least one"),
                           (["cow", "cow"], r"must name each class once, got 'cow' more than once")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            model.update_class_embeddings(CharTokenizer(), class_names=names)
        with pytest.raises(ValueError, match=message):
            WeCLIPConfig(class_names=names)
    assert model.config.class_names == ["boat", "bird"]  # the refused calls changed nothing
    config = WeCLIPConfig.from_preset("voc", class_names=["a", "b"])
    assert config.id2label == {0: "background", 1: "a", 2: "b"}


def test_renaming_the_classes_of_a_trained_decoder_warns(tiny_model, caplog):
    """The same number of new classes keeps the trained classifier: its predictions would carry the new names."""
    import logging

    tiny_model.update_class_embeddings(CharTokenizer(), class_names=["a", "b", "c", "d"])  # untrained: quiet
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    tiny_model.set_training_step(10)
    with caplog.at_level(logging.WARNING):
        tiny_model.update_class_embeddings(CharTokenizer(), class_names=["w", "x", "y", "z"])
    assert "the decoder was trained (10 steps) for the old ones and keeps its classifier" in caplog.text
    # one step trained it already
    tiny_model.set_training_step(1)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tiny_model.update_class_embeddings(CharTokenizer(), class_names=["a", "b", "c", "d"])
    assert "the decoder was trained (1 steps) for the old ones" in caplog.text


def test_update_class_embeddings_names_voc_prompts_as_the_config_does(tiny_model):
    """VOC's prompt names ("bird avian", ...) get VOC's display names, as `WeCLIPConfig(class_names=...)` gives."""
    from weclip_hf import WeCLIPConfig
    from weclip_hf.presets import VOC_LABELS, VOC_PROMPT_NAMES

    tiny_model.update_class_embeddings(CharTokenizer(), class_names=VOC_PROMPT_NAMES)
    assert (
        tiny_model.config.label_names == VOC_LABELS == WeCLIPConfig(class_names=VOC_PROMPT_NAMES).label_names
    )


_ONE, _TWO = torch.randn(1, 3, 32, 32), torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize(
    "pixel_values, class_labels, labels, error, message",
    [
        (torch.randn(3, 32, 32), None, None, ValueError, "shape"),
        (torch.randn(1, 4, 32, 32), None, None, ValueError, "shape"),
        (torch.randn(1, 3, 4, 32), None, None, ValueError, "smaller than one"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), None, None, TypeError, "float"),
        (torch.randn(2, 3, 32, 32), torch.ones(2, 3), None, ValueError, "class_labels"),
        (torch.randn(2, 3, 32, 32), torch.full((2, 4), 0.5), None, ValueError, "only 0 and 1"),
        (torch.randn(1, 3, 32, 32), None, torch.full((1, 32, 32), 7), ValueError, "outside"),
        (_ONE, None, torch.full((1, 32, 32), 5), ValueError, r"outside \[0, 4\]"),  # num_labels itself
        (_ONE, None, torch.full((1, 32, 32), -1), ValueError, r"outside \[0, 4\]"),
        (_TWO, torch.tensor([[1, 0, 0.5, 0], [0, 1, 1, 0]]), None, ValueError, "only 0 and 1"),
        (_ONE, None, torch.zeros(1, 16, 16, dtype=torch.long), ValueError, "labels must"),
        (_TWO, [[1, 0, 0, 0]] * 2, None, TypeError, "class_labels must be a torch.Tensor, got list"),
        (_TWO, np.eye(2, 4), None, TypeError, "class_labels must be a torch.Tensor, got ndarray"),
        (_ONE, None, np.zeros((1, 32, 32), int), TypeError, "labels must be a torch.Tensor, got ndarray"),
        (_ONE, None, [[[0] * 32] * 32], TypeError, "labels must be a torch.Tensor, got list"),
        (_ONE, None, torch.zeros(1, 32, 32), TypeError, "labels must be an integer tensor"),
        (_ONE, None, torch.zeros(1, 32, 32, dtype=torch.bool), TypeError, "labels must be an integer tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_model, pixel_values, class_labels, labels, error, message):
    with pytest.raises(error, match=message):
        tiny_model(pixel_values, class_labels=class_labels, labels=labels)


@pytest.mark.parametrize(
    "labels, remedy",
    [
        # masks at the photo's own size (SegFormer's loss upsamples its logits to them): the processor resizes them
        (torch.zeros(1, 48, 40, dtype=torch.long), r"processor\(images, segmentation_maps=masks\)"),
        (torch.zeros(1, 1, 32, 32, dtype=torch.long), r"labels\.squeeze\(1\)"),  # a channel axis
        # three channels (RGB colour masks) are no channel axis to drop: the processor makes id maps
        (torch.zeros(1, 3, 32, 32, dtype=torch.long), r"processor\(images, segmentation_maps=masks\)"),
        (torch.zeros(2, 32, 32, dtype=torch.long), "one label map per image"),
    ],
)
def test_labels_of_another_shape_are_refused_with_the_remedy(tiny_model, labels, remedy):
    """labels of another shape than pixel_values' [B, H, W] name the expected shape and what to do: a mask at the
    original image size is what a SegFormer user passes (its loss upsamples the logits to any label size)."""
    with pytest.raises(ValueError, match=r"labels must have shape \[B, H, W\] = \(1, 32, 32\).*" + remedy):
        tiny_model(_ONE, labels=labels)


def test_an_image_of_exactly_one_patch_is_accepted(tiny_model):
    """The smallest image a forward takes is one patch (8 px here): a 1 x 1 logit grid, not a refusal."""
    patch = tiny_model.config.vision_config.patch_size
    assert tiny_model(torch.randn(1, 3, patch, patch)).logits.shape[-2:] == (1, 1)


@pytest.mark.parametrize("dtype", [torch.bool, torch.long, torch.uint8])
def test_bool_and_integer_class_labels_equal_float_ones(tiny_model, dtype):
    pixel_values = torch.randn(2, 3, 32, 32)
    multi_hot = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]])
    torch.manual_seed(0)
    expected = tiny_model(pixel_values, class_labels=multi_hot)
    torch.manual_seed(0)
    out = tiny_model(pixel_values, class_labels=multi_hot.to(dtype))
    assert torch.equal(out.pseudo_labels, expected.pseudo_labels)
    assert torch.equal(out.loss, expected.loss)


def test_from_clip_loads_clip_weights_and_tokenizer(tmp_path):
    from conftest import TINY_VISION, tiny_text_config
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from weclip_hf.data.toy import toy_clip_path

    tokenizer = CLIPTokenizer.from_pretrained(toy_clip_path(), model_max_length=77)
    text = tiny_text_config(tokenizer)
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(vision_config=TINY_VISION, text_config=text, projection_dim=16))
    clip.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = WeCLIPForSemanticSegmentation.from_clip(
        str(tmp_path), class_names=["cat", "dog"], background_names=["sky", "grass", "road"]
    )
    clip_sd = clip.state_dict()
    for key, value in model.state_dict().items():
        if key in clip_sd:
            assert torch.equal(value, clip_sd[key]), key
    assert not model.vision_model.embeddings.patch_embedding.weight.requires_grad
    assert unaligned_tensors(model) == []
    with torch.no_grad():
        ids = tokenizer(["a clean origami cat.", "a clean origami dog."], padding=True, return_tensors="pt")
        expected = torch.nn.functional.normalize(clip.get_text_features(**ids).pooler_output, dim=-1)
    torch.testing.assert_close(model.class_text_embeds, expected, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name


def test_multiscale_flip_logits_match_a_loop_over_scales_and_flips(tiny_model):
    from weclip_hf.inference import multiscale_flip_logits

    pixel_values, _ = _inputs(batch=2, height=48, width=40)
    ours = multiscale_flip_logits(tiny_model, pixel_values, scales=(1.0, 0.75), flip=True)
    expected = []
    for scale in (1.0, 0.75):
        image = torch.nn.functional.interpolate(
            pixel_values, size=(int(48 * scale), int(40 * scale)), mode="bilinear", align_corners=False
        )
        with torch.no_grad():
            plain = tiny_model(image).logits
            flipped = tiny_model(image.flip(-1)).logits.flip(-1)
        mean = (plain + flipped) / 2
        expected.append(
            torch.nn.functional.interpolate(mean, size=(6, 5), mode="bilinear", align_corners=False)
        )
    torch.testing.assert_close(ours, torch.stack(expected).mean(0), rtol=1e-5, atol=1e-5)
    single = multiscale_flip_logits(tiny_model, pixel_values, scales=(1.0,), flip=False)
    with torch.no_grad():
        torch.testing.assert_close(single, tiny_model(pixel_values).logits)


def test_pixel_mask_marks_padding_ignored_and_leaves_the_rest(tiny_model):
    pixel_values, class_labels = _inputs()
    pixel_mask = torch.ones(3, 48, 40, dtype=torch.long)
    pixel_mask[0, 40:] = 0  # bottom padding
    pixel_mask[2, :, 32:] = 0  # right padding
    with torch.no_grad():
        plain = tiny_model(pixel_values, class_labels=class_labels, use_rfm=False)
        masked = tiny_model(pixel_values, class_labels=class_labels, use_rfm=False, pixel_mask=pixel_mask)
    padded = pixel_mask == 0
    assert (masked.pseudo_labels[padded] == 255).all()
    assert torch.equal(masked.pseudo_labels[~padded], plain.pseudo_labels[~padded])
    torch.testing.assert_close(masked.logits, plain.logits)


def test_a_pixel_mask_of_another_shape_is_named(tiny_model):
    pixel_values, class_labels = _inputs()
    with pytest.raises(
        ValueError, match=r"pixel_mask must have shape \[B, H, W\] = \(3, 48, 40\) .* got \(3, 3, 3\)"
    ):
        tiny_model(pixel_values, class_labels=class_labels, pixel_mask=torch.ones(3, 3, 3))


def test_output_hidden_states_keeps_the_listed_layers_and_names_others(tiny_model):
    pixel_values, _ = _inputs()
    with torch.no_grad():
        every = tiny_model(pixel_values, output_hidden_states=True).hidden_states  # embeddings + 3 blocks
        listed = tiny_model(pixel_values, output_hidden_states=[0, -1]).hidden_states
        first_from_the_end = tiny_model(pixel_values, output_hidden_states=[-4]).hidden_states
    assert len(every) == len(listed) == 4
    assert (
        torch.equal(listed[0], every[0])
        and torch.equal(listed[3], every[3])
        and listed[1] is listed[2] is None
    )
    assert torch.equal(first_from_the_end[0], every[0]) and first_from_the_end[1:] == (None, None, None)
    for wrong in ([4], [-5], "yes", [True], [0.5]):
        with pytest.raises(
            ValueError, match=r"output_hidden_states must be True, False or a list of indices in \[-4, 3\]"
        ):
            tiny_model(pixel_values, output_hidden_states=wrong)


def test_bf16_autocast_keeps_the_cam_path_in_float32(tiny_model):
    """Under autocast only the first L-1 CLIP blocks and the decoder run in bf16: the GradCAM block, maps,
    normalisations and PAR stay float32, so CAMs move little. (How many labels flip depends on the near-ties of
    a random model: 95-99.9% equal over seeds 0-5; the >= 99% agreement is checked on the trained toy model in
    test_half_precision.py.)"""
    pixel_values, class_labels = _inputs()
    with torch.no_grad():
        ref = tiny_model(pixel_values, class_labels=class_labels, use_rfm=False, output_cam_details=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tiny_model(pixel_values, class_labels=class_labels, use_rfm=False, output_cam_details=True)
    details = out.cam_details
    assert (
        details.gradcams.dtype
        == details.refined_cams.dtype
        == details.affinity_before_norm.dtype
        == torch.float32
    )
    assert (
        details.gradcams - ref.cam_details.gradcams
    ).abs().max() < 0.05  # measured 3e-3 to 2e-2 (seeds 0-5)


def test_generate_pseudo_labels_ignores_the_callers_autocast(tiny_model):
    """Called directly (as the benchmark and the diagnostics do), the pseudo-label path runs in float32
    under autocast too: the same inputs give exactly the same labels and CAMs."""
    pixel_values, class_labels = _inputs()
    tiny_model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        clip = tiny_model.forward_clip_features(pixel_values, 2)
    inputs = (class_labels, clip, None, False)
    with torch.no_grad():
        ref = tiny_model.generate_pseudo_labels(pixel_values, *inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tiny_model.generate_pseudo_labels(pixel_values, *inputs)
    assert out.gradcams.dtype == out.cams.dtype == torch.float32
    torch.testing.assert_close(out.cams, ref.cams, rtol=0, atol=0)
    assert torch.equal(out.pseudo_labels, ref.pseudo_labels)


@pytest.mark.parametrize(
    "key, value",
    [("num_labels", 10**9), ("par_num_iter", 10**9), ("patch_size", 0), ("num_hidden_layers", 10**5)],
)
def test_hostile_config_json_is_refused_before_any_module_is_built(
    tmp_path, tiny_model, monkeypatch, key, value
):
    """A config.json planted in a model folder: one clear error naming the file and the key, raised while reading
    the config, before any module of the model it describes is built (no ``nn.Module`` constructed)."""
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    if key in ("patch_size", "num_hidden_layers"):
        config["vision_config"][key] = value
    else:
        config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    built = []
    module_init = torch.nn.Module.__init__

    def counting_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        module_init(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__init__", counting_init)
    with pytest.raises(ValueError, match=rf"config\.json.*{key}"):
        WeCLIPForSemanticSegmentation.from_pretrained(tmp_path)
    monkeypatch.undo()
    assert built == []
    # the counter sees the modules of a model that is built
    monkeypatch.setattr(torch.nn.Module, "__init__", counting_init)
    torch.nn.Linear(2, 2)
    assert built == ["Linear"]


@pytest.mark.parametrize(
    "field, value",
    [("cam_box_threshold", 1.5), ("cam_box_threshold", "x"), ("cam_bg_exponent", -1.0), ("par_temperature", 0.0),
     ("par_num_iter", -3), ("attention_num_maps", 0), ("attention_num_maps", 99), ("rfm_num_maps", 99),
     ("affinity_radius", 0), ("num_feature_layers", 0), ("rfm_start_step", -5), ("decoder_dropout", 1.5),
     ("par_dilations", "abc"), ("prompt_template", "a {} of {}"), ("background_names", ["sky", ""])],
)  # fmt: skip
def test_a_value_set_on_a_built_config_is_refused_as_the_constructor_refuses_it(tiny_model, field, value):
    """`model.config.cam_box_threshold = 1.5`, transformers' way to change a threshold, was used by the forward
    (all-background pseudo labels; ``num_feature_layers = 0``: a bare IndexError) and refused only by
    save_pretrained. An assignment or `update` now gets the constructor's error and changes nothing."""
    with pytest.raises(ValueError) as constructed:
        make_tiny_config(**{field: value})
    before = getattr(tiny_model.config, field)
    for assign in (lambda: setattr(tiny_model.config, field, value),
                   lambda: tiny_model.config.update({field: value})):  # fmt: skip
        with pytest.raises(ValueError) as assigned:
            assign()
        assert str(assigned.value) == str(constructed.value)
    assert getattr(tiny_model.config, field) == before


def test_fields_checked_together_may_be_set_one_after_the_other(tiny_model):
    """The decoder's heads must divide its width: either may be set first (transformers' `update` and from_dict
    set fields one at a time), and the pair is checked when the config is saved or loaded."""
    config = tiny_model.config
    config.update({"decoder_num_heads": 64, "decoder_hidden_size": 128})  # 64 heads of a width of 32 first
    config.validate()
    config.cam_box_threshold = 0.7  # a value in range is taken as before
    assert (config.decoder_num_heads, config.decoder_hidden_size, config.cam_box_threshold) == (64, 128, 0.7)


@pytest.mark.parametrize(
    "field, value, message",
    [("decoder_num_heads", 5, r"decoder_hidden_size \(32\) must be divisible by decoder_num_heads \(5\)")],
)  # fmt: skip
def test_fields_that_do_not_fit_each_other_are_refused_before_saving(
    tmp_path, tiny_model, field, value, message
):
    """A config edited after construction so that two fields disagree is checked when saved: a folder whose
    config.json would not load again is never written, by the model or the config."""
    tiny_model.config.validate()  # the built config passes
    tiny_model.config.update({field: value})  # each value alone is in range
    for owner in (tiny_model, tiny_model.config):
        with pytest.raises(ValueError, match=f"not saved: {message}"):
            owner.save_pretrained(tmp_path / "saved")
        assert not (tmp_path / "saved").exists()


def test_a_sub_config_given_at_loading_is_checked_with_the_rest(tmp_path, tiny_model):
    """transformers merges a partial sub-config given at loading after the constructor's checks: a 2-layer CLIP
    under num_feature_layers=2 loaded, and its forward failed on a shape."""
    tiny_model.save_pretrained(tmp_path)
    for load in (WeCLIPConfig.from_pretrained, WeCLIPForSemanticSegmentation.from_pretrained):
        with pytest.raises(
            ValueError,
            match=r"^The keyword arguments \(vision_config\) do not fit the config of .*: num_feature_layers must "
            r"be an integer in \[1, 1\], got 2: a number of the layers of the CLIP vision tower, which has 2",
        ):
            load(tmp_path, vision_config={"num_hidden_layers": 2})
    with pytest.raises(ValueError, match=r"\(vision_config\) do not fit.*at least 2 layers"):
        WeCLIPConfig.from_pretrained(tmp_path, vision_config={"num_hidden_layers": 1})
    # the Auto classes read the config with from_dict: the refusal names the keywords there too
    from transformers import AutoConfig, AutoModelForSemanticSegmentation

    for load in (AutoConfig.from_pretrained, AutoModelForSemanticSegmentation.from_pretrained):
        with pytest.raises(
            ValueError, match=r"^The keyword arguments \(vision_config\) do not fit the saved config: "
        ):
            load(tmp_path, vision_config={"num_hidden_layers": 2})
    loaded = WeCLIPConfig.from_pretrained(tmp_path, vision_config={"layer_norm_eps": 1e-6})  # one that fits
    assert loaded.vision_config.layer_norm_eps == 1e-6 and loaded.vision_config.num_hidden_layers == 3


@pytest.mark.parametrize(
    "template, problem",
    [("a {{}} photo", r"it has no replacement field \('\{\{\}\}' is a literal '\{\}'\)"),
     ("a {} of {}", r"its replacement fields are \['\{\}', '\{\}'\]"),
     ("a {} {x}", r"its replacement fields are \['\{\}', '\{x\}'\]"),
     ("a {0} photo", r"its replacement fields are \['\{0\}'\]"),
     ("a {} photo}", "it is not a format string")],
)  # fmt: skip
def test_a_prompt_template_must_take_the_class_name_exactly_once(tiny_model, template, problem):
    """'a {{}} photo' passed ("{}" in it) and gave every class the same prompt; 'a {} of {}' and 'a {} {x}' passed
    the config and failed later with a bare IndexError / KeyError."""
    message = (
        rf"prompt_template must hold exactly one '\{{\}}', which the class name fills, got .*: {problem}"
    )
    for refuse in (lambda: make_tiny_config(prompt_template=template),
                   lambda: setattr(tiny_model.config, "prompt_template", template),
                   lambda: tiny_model.update_class_embeddings(CharTokenizer(), prompt_template=template)):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            refuse()
    assert make_tiny_config(prompt_template="a {{}} {}").prompt_template.format("cat") == "a {} cat"


def test_a_refused_value_names_its_source_the_keywords_or_the_file(tmp_path, tiny_model):
    import json

    tiny_model.save_pretrained(tmp_path / "good")
    for keywords, name in (
        ({"num_labels": 3}, "num_labels"),
        ({"cam_box_threshold": 2.0}, "cam_box_threshold"),
    ):
        with pytest.raises(
            ValueError, match=rf"^The keyword arguments \({name}\) do not fit the config of .*good"
        ):
            WeCLIPForSemanticSegmentation.from_pretrained(tmp_path / "good", **keywords)
    # the transformers way of relabelling says the WeCLIP way
    for keywords in ({"num_labels": 3}, {"id2label": {0: "background", 1: "cat"}}):
        with pytest.raises(
            ValueError, match=r"To change the classes .*update_class_embeddings\(tokenizer, class_names"
        ):
            WeCLIPForSemanticSegmentation.from_pretrained(tmp_path / "good", **keywords)
    # a config of another model type: named as such (it was refused for text-embedding names, or a size mismatch)
    with pytest.raises(
        ValueError, match=r"^config= is a 'weclip_plus' config, and .*good.* holds a 'weclip' checkpoint"
    ):
        WeCLIPForSemanticSegmentation.from_pretrained(tmp_path / "good", config=WeCLIPPlusConfig())
    tiny_model.save_pretrained(tmp_path / "bad")
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**config, "cam_box_threshold": 3.0}))
    for keywords in ({}, {"num_labels": 3}):  # the file's own error, also when a keyword is wrong too
        with pytest.raises(
            ValueError,
            match=r"^Invalid config.json in .*bad.*cam_box_threshold must be a number in \(0.0, 1.0\), got 3",
        ):
            WeCLIPForSemanticSegmentation.from_pretrained(tmp_path / "bad", **keywords)


@pytest.mark.parametrize("num_inputs", [1, 3])
def test_feature_head_folds_second_linears_into_the_fuse_exactly(num_inputs):
    """The head applies each MLP's second Linear and the 1x1 fuse conv as one product: the same output and the
    same gradient for every weight as running them one after the other (float64)."""
    from weclip_hf.feature_head import WeCLIPFeatureHead

    torch.manual_seed(0)
    head = WeCLIPFeatureHead(12, 8, num_inputs, dropout=0.0).double()
    tokens = [torch.randn(2, 6, 12, dtype=torch.float64) for _ in range(num_inputs)]
    grad = torch.randn(2, 8, 2, 3, dtype=torch.float64)

    def unfolded():
        projected = [mlp(t) for mlp, t in zip(head.layer_mlps, tokens)]  # fc2(relu(fc1(t)))
        x = torch.cat(projected, dim=-1).transpose(1, 2).reshape(2, -1, 2, 3)
        return head.fuse(x)

    outputs, grads = [], []
    for run in (lambda: head(tokens, (2, 3)), unfolded):
        head.zero_grad()
        out = run()
        out.backward(grad)
        outputs.append(out.detach())
        grads.append({name: p.grad.clone() for name, p in head.named_parameters()})
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-12, atol=1e-12)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 4 * num_inputs + 2
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-10, atol=1e-12, msg=name)


def test_feature_head_runs_wrapped_or_hooked_layers_as_modules():
    """A second Linear replaced by another module (as an adapter library does) or a hook on the fuse conv is
    honoured: the head then runs each layer as its own module instead of the folded product."""
    from weclip_hf.feature_head import WeCLIPFeatureHead

    class ShiftedLinear(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) + 1.0

    torch.manual_seed(0)
    head = WeCLIPFeatureHead(12, 8, 2, dropout=0.0).double()
    tokens = [torch.randn(2, 6, 12, dtype=torch.float64) for _ in range(2)]
    folded = head(tokens, (2, 3))
    shifted = ShiftedLinear(8, 8).double()
    shifted.load_state_dict(head.layer_mlps[0].fc2.state_dict())
    head.layer_mlps[0].fc2 = shifted
    # the shift enters the fuse conv through input 0's block of its weight
    expected = folded + head.fuse.weight[:, :8, 0, 0].sum(1).view(1, 8, 1, 1)
    torch.testing.assert_close(head(tokens, (2, 3)), expected, rtol=1e-12, atol=1e-12)
    head.fuse.register_forward_hook(lambda module, args, out: 2 * out)
    torch.testing.assert_close(head(tokens, (2, 3)), 2 * expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", ["fc2", "fuse"])
def test_feature_head_runs_layers_without_bias_as_modules(layer):
    """A second Linear or a fuse conv without bias (a module replaced by the user, e.g. an ablation) runs as its
    own module: the folded product has no bias of it to add."""
    from weclip_hf.feature_head import WeCLIPFeatureHead

    torch.manual_seed(0)
    head = WeCLIPFeatureHead(12, 8, 2, dropout=0.0).double()
    if layer == "fc2":
        head.layer_mlps[0].fc2 = torch.nn.Linear(8, 8, bias=False).double()
    else:
        head.fuse = torch.nn.Conv2d(16, 8, kernel_size=1, bias=False).double()
    tokens = [torch.randn(2, 6, 12, dtype=torch.float64) for _ in range(2)]
    projected = [mlp(t) for mlp, t in zip(head.layer_mlps, tokens)]
    expected = head.fuse(torch.cat(projected, dim=-1).transpose(1, 2).reshape(2, -1, 2, 3))
    torch.testing.assert_close(head(tokens, (2, 3)), expected, rtol=1e-12, atol=1e-12)


def test_feature_head_drops_whole_feature_maps_after_the_fuse():
    """The head ends in Dropout2d (the official SegFormer head's): in training each [h, w] map of the fused
    features is zeroed or kept whole (scaled by 1 / (1 - p))."""
    from weclip_hf.feature_head import WeCLIPFeatureHead

    torch.manual_seed(0)
    head = WeCLIPFeatureHead(12, 8, 2, dropout=0.5).double()
    tokens = [torch.randn(2, 6, 12, dtype=torch.float64) for _ in range(2)]
    kept = 2 * head.eval()(tokens, (2, 3))
    dropped = head.train()(tokens, (2, 3))
    zeroed = (dropped == 0).all(dim=(2, 3))
    assert zeroed.any() and not zeroed.all()  # 16 maps, each dropped with probability 1/2
    torch.testing.assert_close(dropped[~zeroed], kept[~zeroed], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["bf16 weights", "bf16 autocast"])
def test_feature_head_fold_in_half_precision_stays_within_its_rounding(mode):
    """In bf16 (weights or autocast) the folded product and the layer-by-layer head differ by bf16 rounding only."""
    from weclip_hf.feature_head import WeCLIPFeatureHead

    torch.manual_seed(0)
    head = WeCLIPFeatureHead(64, 32, 3, dropout=0.0)
    tokens = [torch.randn(2, 12, 64) for _ in range(3)]
    reference = head(tokens, (3, 4))  # float32
    if mode == "bf16 weights":
        head = head.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16 autocast"):
        folded = head(tokens, (3, 4))
        hook = head.fuse.register_forward_hook(lambda module, args, out: None)  # a hook: layer by layer
        layered = head(tokens, (3, 4))
        hook.remove()
    assert folded.dtype == layered.dtype == torch.bfloat16
    scale = reference.abs().max()
    for out in (folded, layered):
        assert (out.float() - reference).abs().max() < 0.02 * scale
    assert (folded.float() - layered.float()).abs().max() < 0.02 * scale


def test_a_decoder_without_transformer_layers_is_allowed():
    """``decoder_num_layers=0``: the fused features go straight to the classifier."""
    config = make_tiny_config(decoder_num_layers=0)
    assert config.decoder_num_layers == 0
    torch.manual_seed(0)
    model = WeCLIPForSemanticSegmentation(config).train()
    assert len(model.decoder.blocks) == 0
    pixel_values, class_labels = _inputs()
    out = model(pixel_values, class_labels=class_labels)
    assert out.logits.shape == (3, 5, 6, 5) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.decoder.classifier.weight.grad is not None


def test_from_pretrained_asks_transformers_for_safetensors_only(tmp_path, tiny_model, monkeypatch):
    """Local folders and Hub ids alike reach `PreTrainedModel.from_pretrained` with ``use_safetensors=True`` (for
    a Hub id no local check can refuse pickle weights: transformers must)."""
    from transformers import PreTrainedModel

    real = PreTrainedModel.from_pretrained.__func__
    asked = []

    def spy(cls, *args, **kwargs):
        asked.append(kwargs.get("use_safetensors"))
        if args[0] == "org/not-downloaded":
            raise OSError("spy: not fetched")
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(spy))
    tiny_model.save_pretrained(tmp_path)
    assert isinstance(WeCLIPForSemanticSegmentation.from_pretrained(tmp_path), WeCLIPForSemanticSegmentation)
    with pytest.raises(OSError, match="spy: not fetched"):
        WeCLIPForSemanticSegmentation.from_pretrained("org/not-downloaded")
    assert asked == [True, True]


def test_saved_weights_are_as_readable_as_the_config(tmp_path, tiny_model):
    """safetensors writes its files 0600 whatever the umask: another user or a container could not load the model."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        tiny_model.save_pretrained(tmp_path)
    finally:
        os.umask(previous)
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in tmp_path.iterdir()
        if p.suffix in (".json", ".safetensors")
    }
    assert modes["model.safetensors"] == modes["config.json"] == 0o644


def test_gradient_checkpointing_recomputes_the_decoder_blocks_with_the_same_gradients():
    """``gradient_checkpointing_enable()`` (what ``TrainingArguments(gradient_checkpointing=True)`` calls) was
    refused as unsupported; it checkpoints the decoder's transformer blocks, where a step keeps activations (the
    frozen towers keep none): the same loss and gradients, fewer tensors saved for backward."""
    torch.manual_seed(0)
    model = WeCLIPForSemanticSegmentation(make_tiny_config(decoder_hidden_size=64)).train()
    pixel_values, class_labels = _inputs()

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        model.zero_grad()
        torch.manual_seed(1)  # the decoder's dropout
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.nbytes) or t, lambda t: t):
            out = model(pixel_values, class_labels=class_labels)
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        return out.loss.detach(), grads, sum(saved)

    loss, grads, saved_bytes = step()
    with pytest.warns(FutureWarning):  # transformers' alias of activation_checkpointing_enable
        model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and all(b.gradient_checkpointing for b in model.decoder.blocks)
    checkpointed_loss, checkpointed_grads, checkpointed_bytes = step()
    assert torch.equal(checkpointed_loss, loss) and checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=0, atol=1e-6, msg=name)
    assert checkpointed_bytes < 0.6 * saved_bytes
    model.gradient_checkpointing_disable()
    assert step()[2] == saved_bytes


@pytest.mark.parametrize("every_n_layers, checkpointed", [(1, [0, 1, 2]), (2, [0, 2]), (3, [0])])
def test_every_n_layers_counts_the_decoder_blocks(tiny_model, every_n_layers, checkpointed):
    """transformers' ``every_n_layers`` checkpoints every n-th block counted from the decoder's first: its count
    over all the model's layers started at the frozen towers' (3 vision + 2 text here, which never checkpoint: they
    run in eval mode without autograd), so n = 2 checkpointed the decoder's block 1 alone."""
    tiny_model.train().activation_checkpointing_enable(every_n_layers=every_n_layers)
    blocks = [i for i, block in enumerate(tiny_model.decoder.blocks) if block.gradient_checkpointing]
    assert blocks == checkpointed
    tiny_model.activation_checkpointing_disable()
    assert not any(block.gradient_checkpointing for block in tiny_model.decoder.blocks)


def test_an_ignore_index_that_is_a_label_id_is_refused_however_it_arrives(tiny_config):
    """``semantic_loss_ignore_index`` 0..C leaves the background or a class out of the loss and the scores: refused
    when built, set (the label-id rule was checked at saving only) and when class_names grow to reach it; with
    255 classes or more, 255 is a class and the message names a value that works."""
    config = tiny_config  # 4 classes, ignore index 255
    for assign in (
        lambda: setattr(config, "semantic_loss_ignore_index", 0),
        lambda: config.update({"semantic_loss_ignore_index": 4}),
    ):
        with pytest.raises(ValueError, match=r"semantic_loss_ignore_index \(\d\) is a label id .*Use 255"):
            assign()
    config.semantic_loss_ignore_index = 5  # outside 0..4
    with pytest.raises(ValueError, match=r"\(5\) is a label id \(0: the background, 1..5"):
        config.class_names = ["a", "b", "c", "d", "e"]
    assert config.semantic_loss_ignore_index == 5 and len(config.class_names) == 4
    many = [f"thing {i}" for i in range(300)]
    with pytest.raises(ValueError, match=r"\(255\) is a label id .*Use -100 \(any value outside 0..300\)"):
        make_tiny_config(class_names=many)
    assert make_tiny_config(class_names=many, semantic_loss_ignore_index=-100).num_labels == 301


def test_decoder_affinity_is_float32_for_half_precision_features_and_under_autocast():
    """``sigmoid(F^T F)`` of the decoder's features is computed in float32: bfloat16 features (a half-precision
    model) give their float32 copy's affinity, and a bfloat16 autocast leaves the product alone."""
    from weclip_hf.decoder import feature_affinity

    features = torch.randn(2, 8, 3, 4, generator=torch.Generator().manual_seed(0)) / 2
    half = features.bfloat16()
    expected = torch.sigmoid(half.float().flatten(2).transpose(1, 2) @ half.float().flatten(2))
    ours = feature_affinity(half)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = feature_affinity(features)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, feature_affinity(features), rtol=0, atol=1e-6)


def test_the_decoder_starts_as_the_official_codes_or_by_initializer_range():
    """The trained modules start as the official code's (PyTorch's defaults: Linear / Conv2d Kaiming-uniform
    weights and uniform biases in +-1/sqrt(fan_in); the attention's packed q/k/v Xavier-uniform over [3 dim, dim],
    its biases zero), or with ``initializer_range`` as transformers' usual normal(std) and zero biases; a new
    classifier of other classes follows the same rule."""
    import math

    assert WeCLIPConfig().initializer_range is None  # the default (the tiny test configs set 0.02)
    torch.manual_seed(0)
    model = WeCLIPForSemanticSegmentation(make_tiny_config(initializer_range=None))
    attention, fc1 = model.decoder.blocks[0].self_attn, model.decoder.blocks[0].mlp["fc1"]
    dim = attention.out_proj.weight.shape[0]
    assert float(attention.in_proj.weight.abs().max()) <= math.sqrt(6 / (4 * dim))
    assert float(attention.in_proj.weight.std()) == pytest.approx(math.sqrt(2 / (4 * dim)), rel=0.15)
    assert not attention.in_proj.bias.any() and not attention.out_proj.bias.any()
    for layer in (fc1, attention.out_proj, model.decoder.fuse, model.decoder.classifier):
        bound = layer.weight[0].numel() ** -0.5
        assert float(layer.weight.abs().max()) <= bound and float(
            layer.weight.std()
        ) > 0.8 * bound / math.sqrt(3)
    assert float(fc1.bias.abs().max()) <= fc1.in_features**-0.5 and fc1.bias.any()
    # uniform over the whole +-bound: both signs, out to half the bound
    for layer in (fc1, model.decoder.fuse):
        bound = layer.weight[0].numel() ** -0.5
        assert float(layer.bias.min()) < -bound / 2 and float(layer.bias.max()) > bound / 2
    model.update_class_embeddings(CharTokenizer(), class_names=["a", "b"])
    bound = model.decoder.classifier.weight[0].numel() ** -0.5
    assert float(model.decoder.classifier.weight.abs().max()) <= bound and model.decoder.classifier.bias.any()

    from conftest import make_tiny_plus_config

    from weclip_hf import WeCLIPPlusForSemanticSegmentation

    plus = WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config(initializer_range=None))
    for layer in (plus.dino_branch.head.layer_mlps[0].fc1, plus.dino_branch.head.fuse):  # WeCLIP+'s DINO head
        bound = layer.weight[0].numel() ** -0.5
        assert float(layer.weight.abs().max()) <= bound and float(layer.bias.abs().max()) <= bound
        assert layer.bias.any()

    normal = WeCLIPForSemanticSegmentation(make_tiny_config())
    fc1 = normal.decoder.blocks[0].mlp["fc1"]
    assert float(fc1.weight.std()) == pytest.approx(0.02, rel=0.15) and not fc1.bias.any()
    assert float(normal.decoder.blocks[0].self_attn.in_proj.weight.std()) == pytest.approx(0.02, rel=0.15)
    # a classifier resized for new classes: normal(std=initializer_range), zero biases (21 x 32 weights)
    normal.update_class_embeddings(CharTokenizer(), class_names=[f"class {i}" for i in range(20)])
    classifier = normal.decoder.classifier
    assert classifier.out_channels == 21 and not classifier.bias.any()
    assert float(classifier.weight.std()) == pytest.approx(0.02, rel=0.15)


# ---- the public API's edges (an outside review as a transformers user) -----------------------------------------


def test_from_pretrained_takes_a_config_given_by_its_path(tmp_path):
    """``config=`` may be a config's folder (transformers: a config, a path or an id); it was refused as a 'str'
    config, and a folder of another model type is still refused naming both."""
    model = WeCLIPForSemanticSegmentation(make_tiny_config()).eval()
    model.update_class_embeddings(CharTokenizer())
    model.save_pretrained(tmp_path / "m")
    make_tiny_config(par_num_iter=5).save_pretrained(tmp_path / "c")
    loaded = WeCLIPForSemanticSegmentation.from_pretrained(tmp_path / "m", config=str(tmp_path / "c"))
    assert loaded.config.par_num_iter == 5
    from conftest import make_tiny_plus_config

    make_tiny_plus_config().save_pretrained(tmp_path / "plus")
    with pytest.raises(ValueError, match="'weclip_plus' config, and .* holds a 'weclip' checkpoint"):
        WeCLIPForSemanticSegmentation.from_pretrained(tmp_path / "m", config=tmp_path / "plus")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_feature_layers", 1),
        ("decoder_num_layers", 0),
        ("decoder_hidden_size", 16),
        ("decoder_dropout", 0.5),
    ],
)
def test_an_architecture_changed_under_the_built_model_is_refused(tmp_path, field, value):
    """The fields the modules are built from, set on a built model's config: num_feature_layers changed the
    output without a word (the feature head zipped fewer layers), the others saved a folder that did not load
    (or changed nothing): the forward and save_pretrained refuse them, naming the field; set back, all runs."""
    model = WeCLIPForSemanticSegmentation(make_tiny_config()).eval()
    model.update_class_embeddings(CharTokenizer())
    pixel_values, _ = _inputs(batch=2)
    before = model(pixel_values).logits
    built = getattr(model.config, field)
    setattr(model.config, field, value)
    match = rf"model\.config\.{field} is {value!r}, built with {built!r}"
    with pytest.raises(ValueError, match=match):
        model(pixel_values)
    with pytest.raises(ValueError, match=match):
        model.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()
    setattr(model.config, field, built)
    torch.testing.assert_close(model(pixel_values).logits, before)


def test_a_tower_size_changed_under_the_built_model_is_refused():
    model = WeCLIPForSemanticSegmentation(make_tiny_config()).eval()
    model.config.vision_config.num_hidden_layers = 2
    model.config.decoder_dropout = 0.5
    # every field named; the remedy of a field the weights fit (dropout) is loading anew with it
    with pytest.raises(
        ValueError,
        match=r"model\.config\.decoder_dropout is 0\.5, built with 0\.1; model\.config\.vision_config\."
        r"num_hidden_layers is 2, built with 3: .*from_pretrained\(folder, decoder_dropout=\.\.\.\)",
    ):
        model(_inputs(batch=2)[0])


def test_a_config_of_another_type_put_under_the_built_model_is_refused():
    """A WeCLIP config put under a built WeCLIP+ (no DINOv2 fields) failed with a bare KeyError."""
    from conftest import make_tiny_plus_config

    from weclip_hf import WeCLIPPlusForSemanticSegmentation

    model = WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config()).eval()
    model.config = make_tiny_config()
    with pytest.raises(
        ValueError, match=r"model\.config\.dino_position_interpolation is None, built with 'hub'"
    ):
        model(_inputs(batch=2)[0])


@pytest.mark.parametrize("value", ["x", float("nan"), float("inf"), True])
def test_config_refuses_a_bad_logit_scale(value):
    """logit_scale_init_value was never checked: a string saved and loaded, then failed deep in torch; NaN made
    every CAM NaN and labelled the whole image as its first class."""
    with pytest.raises(ValueError, match="logit_scale_init_value must be a number"):
        make_tiny_config(logit_scale_init_value=value)
    config = make_tiny_config()
    with pytest.raises(ValueError, match="logit_scale_init_value must be a number"):
        config.logit_scale_init_value = value


def test_config_refuses_a_clip_tower_of_other_than_three_channels():
    """A 1-channel CLIP was accepted and could never run (the inputs are checked for RGB, its patch conv wants 1)."""
    with pytest.raises(
        ValueError, match=r"vision_config\.num_channels must be an integer in \[3, 3\], got 1"
    ):
        make_tiny_config(vision_config=dict(TINY_VISION, num_channels=1))


def test_generate_pseudo_labels_refuses_features_of_other_images():
    """generate_pseudo_labels with another batch's features labelled each image with another image's CAMs."""
    from weclip_hf.pseudo_labels import attention_maps_needed

    model = WeCLIPForSemanticSegmentation(make_tiny_config()).eval()
    model.update_class_embeddings(CharTokenizer())
    pixel_values, class_labels = _inputs(batch=2)
    features = model.forward_clip_features(pixel_values, attention_maps_needed(model.config, False))
    with pytest.raises(
        ValueError, match=r"features are those of 2 image\(s\) of a \(6, 5\) patch grid, and "
    ):
        model.generate_pseudo_labels(pixel_values[1:], class_labels[1:], features)
    with pytest.raises(ValueError, match=r"and pixel_values are 2 image\(s\) of a \(5, 5\) grid"):
        model.generate_pseudo_labels(pixel_values[..., :40, :], class_labels, features)
    with pytest.raises(ValueError, match=r"decoder_affinity must be \[B, N, N\] = \[2, 30, 30\]"):
        model.generate_pseudo_labels(
            pixel_values, class_labels, features, torch.zeros(1, 30, 30), use_rfm=True
        )
    assert model.generate_pseudo_labels(pixel_values, class_labels, features).pseudo_labels.shape == (
        2,
        48,
        40,
    )


def test_from_clip_reads_torch_dtype_as_dtype(tiny_clip):
    """from_pretrained takes transformers' deprecated ``torch_dtype``; from_clip refused it as unknown."""
    model = WeCLIPForSemanticSegmentation.from_clip(tiny_clip, class_names=["cat"], torch_dtype=torch.float16)
    assert model.dtype == torch.float16


def test_from_preset_records_the_preset_whatever_the_classes():
    """A preset's config with other classes lost the preset's evaluation settings (COCO's no-CRF became VOC's
    CRF), as its preset was then found by the classes only."""
    from weclip_hf.presets import evaluation_of_config, get_preset

    for name in ("coco", "toy"):
        config = WeCLIPConfig.from_preset(name, class_names=["a", "b"])
        assert config.training_preset == name
        assert evaluation_of_config(config) == get_preset(name).evaluation
    assert WeCLIPConfig.from_preset("coco", training_preset="voc").training_preset == "voc"


@pytest.mark.parametrize("size", [0, -5, 2.5, True, {"longest_edge": 0}, {"height": 4, "width": -1}])
def test_resizing_refuses_sizes_that_are_not_positive_integers(size):
    """resize_longest_edge(x, 0) gave a 1 x 1 image (sizes were clamped to 1 px); the processor refuses them."""
    from weclip_hf import resize_longest_edge
    from weclip_hf.inference import resize_images

    with pytest.raises(ValueError, match="positive integers"):
        resize_images(torch.zeros(1, 3, 40, 60), size)
    if not isinstance(size, dict):
        with pytest.raises(ValueError, match="positive integers"):
            resize_longest_edge(torch.zeros(1, 3, 40, 60), size)


def test_value_checks_off_the_cpu_give_the_device_a_message_it_accepts(monkeypatch):
    """CUDA's device assertion refuses a message of 255 characters or more on every call (good values too): off
    the CPU, `check_values` gives the device the message cut below that."""
    from weclip_hf.input_checks import DEVICE_MESSAGE_LIMIT, check_values

    given = []
    monkeypatch.setattr(torch, "_assert_async", lambda ok, message: given.append((ok.device.type, message)))
    long_message = "labels contain ids outside [0, 20]; " * 10
    check_values(torch.ones((), dtype=torch.bool, device="meta"), long_message)
    assert given == [("meta", long_message[: DEVICE_MESSAGE_LIMIT - 1])]
    with pytest.raises(ValueError, match=r"^(labels contain ids outside \[0, 20\]; ){10}$"):
        check_values(torch.zeros((), dtype=torch.bool), long_message)


# ---- the forward's flags and the fresh model's start (pinned by the mutation review of modeling_weclip) ---------


def test_pixel_labels_given_with_class_labels_make_the_loss_and_the_pseudo_labels_stay(varied_tiny_model):
    """With both, the loss is that of the pixel ``labels`` (the forward's docstring) and the pseudo labels of the
    ``class_labels`` are still returned: a loss on the pseudo labels passed every other test."""
    pixel_values, class_labels = _inputs()
    labels = torch.randint(0, 5, (3, 48, 40), generator=torch.Generator().manual_seed(1))
    model = varied_tiny_model  # logits that vary: a loss that depends on its labels
    both = model(pixel_values, class_labels=class_labels, labels=labels)
    full = model(pixel_values, labels=labels)
    weak = model(pixel_values, class_labels=class_labels)
    torch.testing.assert_close(both.loss, full.loss)
    torch.testing.assert_close(both.seg_loss, full.seg_loss)
    assert not torch.allclose(both.loss, weak.loss)  # the pseudo labels' loss is another
    assert torch.equal(both.pseudo_labels, weak.pseudo_labels)


def test_cam_details_come_only_when_asked_for(tiny_model):
    """``cam_details`` is None unless ``output_cam_details=True``, which gives the intermediates of the same
    pseudo labels (every other output field is None when not asked for, as in transformers)."""
    pixel_values, class_labels = _inputs(batch=2)
    assert tiny_model(pixel_values, class_labels=class_labels).cam_details is None
    out = tiny_model(pixel_values, class_labels=class_labels, output_cam_details=True)
    assert torch.equal(out.cam_details.pseudo_labels, out.pseudo_labels)


def test_a_config_without_return_dict_gives_tuples(tiny_model):
    """``return_dict=None`` reads ``config.return_dict`` (transformers' rule; ``from_pretrained(folder,
    return_dict=False)`` sets it): False gives ``to_tuple()``, an explicit ``return_dict=True`` still the output."""
    pixel_values = _inputs(batch=2)[0]
    tiny_model.config.return_dict = False
    as_tuple = tiny_model(pixel_values)
    assert isinstance(as_tuple, tuple) and torch.equal(
        as_tuple[0], tiny_model(pixel_values, return_dict=True).logits
    )


def test_a_fresh_model_has_unit_decoder_layer_norms_and_the_configs_logit_scale():
    """`_init_weights`: the decoder's LayerNorms start at weight 1, bias 0 (whatever ``initializer_range``), and
    ``logit_scale`` at ``config.logit_scale_init_value``, as `CLIPModel` initialises it."""
    for initializer_range in (None, 0.02):
        config = make_tiny_config(initializer_range=initializer_range, logit_scale_init_value=2.5)
        model = WeCLIPForSemanticSegmentation(config)
        norms = [m for m in model.decoder.modules() if isinstance(m, torch.nn.LayerNorm)]
        assert norms and all(bool((m.weight == 1).all()) and not m.bias.any() for m in norms)
        assert float(model.logit_scale) == 2.5


def test_pseudo_labels_from_features_made_under_inference_mode(tiny_model):
    """`generate_pseudo_labels` takes `forward_clip_features` computed under `torch.inference_mode` (an evaluation
    loop's) and labels as from features made outside it (its GradCAM takes gradients through those tokens)."""
    from weclip_hf.pseudo_labels import attention_maps_needed

    pixel_values, class_labels = _inputs(batch=2)
    count = attention_maps_needed(tiny_model.config, False)
    expected = tiny_model.generate_pseudo_labels(
        pixel_values, class_labels, tiny_model.forward_clip_features(pixel_values, count)
    )
    with torch.inference_mode():
        features = tiny_model.forward_clip_features(pixel_values, count)
    out = tiny_model.generate_pseudo_labels(pixel_values, class_labels, features)
    assert torch.equal(out.pseudo_labels, expected.pseudo_labels)
    torch.testing.assert_close(out.cams, expected.cams)

"""Native half precision, output flags and initialisation (issue 19, items 2-4).

The half-precision checks run on a briefly trained toy model (40 steps of the toy recipe on 320 images, in process,
~10 s on a 2-core CPU): a random model has near-ties that any rounding flips, a trained one does not.
"""

import pytest
import torch
from conftest import make_tiny_config, train_in_process

from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor
from weclip_hf.data.toy import generate_toy_images

NUM_VAL = 50


@pytest.fixture(scope="session")
def trained_toy(tmp_path_factory):
    """A toy-world WeCLIP trained for 40 steps and 50 validation images of its world."""
    out = tmp_path_factory.mktemp("toy") / "model"
    train_in_process(
        "--output_dir",
        out,
        "--max_train_steps",
        40,
        "--toy_train_images",
        320,
        "--toy_val_images",
        8,
        "--no_msf",
        "--num_overlays",
        0,
        "--checkpointing_steps",
        0,
        threads=None,  # the script's own choice, as before
    )
    images, _, labels = generate_toy_images(NUM_VAL, seed=12345)
    pixel_values = WeCLIPImageProcessor.from_pretrained(out)(list(images))["pixel_values"]
    class_labels = torch.zeros(NUM_VAL, 8)
    for i, present in enumerate(labels):
        class_labels[i, [c - 1 for c in present]] = 1
    return out, pixel_values, class_labels


def _predict(model, pixel_values, class_labels, use_rfm):
    """(upsampled argmax predictions, pseudo labels) of one forward in the model's dtype."""
    with torch.no_grad():
        out = model(pixel_values.to(model.dtype), class_labels=class_labels, use_rfm=use_rfm)
    size = pixel_values.shape[-2:]
    pred = torch.nn.functional.interpolate(out.logits.float(), size=size, mode="bilinear").argmax(1)
    return pred, out.pseudo_labels


@pytest.fixture(scope="module")
def float32_predictions(trained_toy) -> dict[bool, tuple[torch.Tensor, torch.Tensor]]:
    """The float32 model's (predictions, pseudo labels) of `trained_toy`'s images, RFM off (False) and on (True):
    the reference every half-precision dtype is compared with, computed once (outputs only: nothing mutates it)."""
    folder, pixel_values, class_labels = trained_toy
    reference = WeCLIPForSemanticSegmentation.from_pretrained(folder).eval()
    return {use_rfm: _predict(reference, pixel_values, class_labels, use_rfm) for use_rfm in (False, True)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_agree_with_float32(trained_toy, float32_predictions, dtype):
    """bf16 / fp16 weights (from_pretrained(dtype=...)): predictions and pseudo labels (RFM off and on) equal
    to float32 on >= 99% of the pixels of 50 toy images (measured: bf16 99.90%, fp16 99.99%)."""
    folder, pixel_values, class_labels = trained_toy
    half = WeCLIPForSemanticSegmentation.from_pretrained(folder, dtype=dtype).eval()
    assert (
        half.decoder.fuse.weight.dtype == half.vision_model.embeddings.patch_embedding.weight.dtype == dtype
    )
    for use_rfm in (False, True):
        pred, pseudo = _predict(half, pixel_values, class_labels, use_rfm)
        ref_pred, ref_pseudo = float32_predictions[use_rfm]
        agree, agree_pseudo = (pred == ref_pred).float().mean(), (pseudo == ref_pseudo).float().mean()
        print(
            f"{dtype}, rfm {use_rfm}: predictions {agree:.2%}, pseudo labels {agree_pseudo:.2%} equal to float32"
        )
        assert agree >= 0.99 and agree_pseudo >= 0.99


def test_model_to_bfloat16_and_the_pipeline(trained_toy):
    """`model.to(torch.bfloat16)` runs; `pipeline(..., dtype=torch.bfloat16)` returns masks at the input size."""
    from PIL import Image
    from transformers import pipeline

    folder, pixel_values, class_labels = trained_toy
    model = WeCLIPForSemanticSegmentation.from_pretrained(folder).eval().to(torch.bfloat16)
    with torch.no_grad():
        assert model(pixel_values[:2]).logits.dtype == torch.bfloat16
    segmenter = pipeline("image-segmentation", model=str(folder), dtype=torch.bfloat16)
    assert segmenter.model.dtype == torch.bfloat16
    image = Image.fromarray(generate_toy_images(1, seed=5)[0][0])
    masks = segmenter(image)
    assert masks and all(m["mask"].size == image.size for m in masks)


def test_bfloat16_training_steps_lower_the_loss():
    """Weakly supervised training with bf16 weights: finite float32 losses that go down on a fixed batch. (fp16
    weights need mixed precision's loss scaling and float32 master weights to train — AdamW's eps=1e-8 is 0 in
    fp16 — so fp16 training is `accelerate launch --mixed_precision fp16`, with float32 weights.)"""
    torch.manual_seed(0)
    model = WeCLIPForSemanticSegmentation(make_tiny_config(decoder_dropout=0.0)).to(torch.bfloat16).train()
    pixel_values = torch.randn(2, 3, 32, 32).to(torch.bfloat16)
    class_labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        out = model(pixel_values, class_labels=class_labels, use_rfm=False)
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]


# ---- output flags ---------------------------------------------------------------------------------------


def test_hidden_states_and_attentions_equal_clip_vision_model(tiny_model):
    """At the tower's native size WeCLIP's bilinear position embeddings are CLIP's own, so the returned hidden
    states and per-head attention maps equal `CLIPVisionModel`'s (eager attention); the logits do not change."""
    from transformers import CLIPVisionModel

    cfg = tiny_model.config.vision_config
    pixel_values = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    clip = CLIPVisionModel._from_config(cfg, attn_implementation="eager").eval()
    clip.load_state_dict(tiny_model.vision_model.state_dict())
    with torch.no_grad():
        plain = tiny_model(pixel_values)
        out = tiny_model(pixel_values, output_hidden_states=True, output_attentions=True)
        expected = clip(pixel_values, output_hidden_states=True, output_attentions=True)
    assert plain.hidden_states is None and plain.attentions is None
    torch.testing.assert_close(
        out.logits, plain.logits, rtol=0, atol=1e-6
    )  # eager vs SDPA blocks: float noise
    assert (
        len(out.hidden_states) == cfg.num_hidden_layers + 1 and len(out.attentions) == cfg.num_hidden_layers
    )
    for ours, theirs in zip(out.hidden_states, expected.hidden_states):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(out.attentions, expected.attentions):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_attention_maps_are_the_head_mean_of_clip_vision_models(tiny_model):
    """The attention maps the CAM refinement and the RFM read (`CLIPVisionFeatures.attention`, of the last blocks
    before the final one) are the mean over heads of `CLIPVisionModel`'s eager per-head maps of those blocks."""
    from transformers import CLIPVisionModel

    cfg = tiny_model.config.vision_config
    pixel_values = torch.randn(
        2, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0)
    )
    clip = CLIPVisionModel._from_config(cfg, attn_implementation="eager").eval()
    clip.load_state_dict(tiny_model.vision_model.state_dict())
    count = cfg.num_hidden_layers - 1  # every block before the last
    with torch.no_grad():
        features = tiny_model.forward_clip_features(pixel_values, count)
        expected = clip(pixel_values, output_attentions=True).attentions[:-1]
    assert len(features.attention) == count and cfg.num_attention_heads > 1
    for ours, theirs in zip(features.attention, expected):
        torch.testing.assert_close(ours, theirs.mean(dim=1), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(
            ours, theirs[:, 0], atol=1e-4
        )  # the heads differ: the mean is no one head's


def test_position_embeddings_are_resized_bilinearly_at_other_sizes(tiny_model):
    """Off the tower's native size the patch position embeddings are resized bilinearly (align_corners=False) as
    the official code does (DESIGN Part 1), not bicubically as transformers' `interpolate_pos_encoding`; the class
    token keeps its own: the embeddings (hidden_states[0]) of a 48 x 40 image (a 6 x 5 grid, from 4 x 4)."""
    vision = tiny_model.vision_model
    emb = vision.embeddings
    pixel_values = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = tiny_model(pixel_values, output_hidden_states=[0])
        pos = emb.position_embedding.weight
        grid = pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        grid = torch.nn.functional.interpolate(grid, size=(6, 5), mode="bilinear", align_corners=False)
        patches = emb.patch_embedding(pixel_values) + grid
        tokens = torch.cat(
            [(emb.class_embedding + pos[0]).expand(2, 1, -1), patches.flatten(2).transpose(1, 2)], 1
        )
        expected = vision.pre_layrnorm(tokens)
    torch.testing.assert_close(out.hidden_states[0], expected, rtol=1e-6, atol=1e-6)


def test_output_flags_from_config_and_tuple_outputs(tiny_config):
    tiny_config.output_hidden_states = True
    model = WeCLIPForSemanticSegmentation(tiny_config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 40, 48))
        as_tuple = model(torch.randn(1, 3, 40, 48), return_dict=False)
    assert len(out.hidden_states) == 4 and out.attentions is None
    assert out.hidden_states[0].shape == (1, 1 + 5 * 6, 32)
    assert isinstance(as_tuple, tuple) and any(isinstance(t, tuple) for t in as_tuple)


def test_default_forward_runs_eager_attention_only_where_maps_are_needed(tiny_model, monkeypatch):
    """Asking for no attentions keeps SDPA in every block whose map neither the CAM nor the RFM needs."""
    import weclip_hf.clip_features as clip_features

    calls = []
    original = clip_features.eager_clip_layer
    monkeypatch.setattr(
        clip_features, "eager_clip_layer", lambda layer, x: calls.append(1) or original(layer, x)
    )
    with torch.no_grad():
        tiny_model(torch.randn(1, 3, 32, 32))
        assert calls == []
        tiny_model(torch.randn(1, 3, 32, 32), output_attentions=True)
    assert len(calls) == tiny_model.config.vision_config.num_hidden_layers


def test_the_last_clip_block_runs_in_inference_only_for_the_output_flags(tiny_model):
    """The decoder reads the first L-1 blocks: the last one runs only to give ``hidden_states`` / ``attentions``
    (`vision_outputs`: once more for them, None when not asked)."""
    runs = []
    tiny_model.vision_model.encoder.layers[-1].register_forward_hook(lambda *args: runs.append(1))
    with torch.no_grad():
        out = tiny_model(torch.randn(1, 3, 32, 32))
        assert runs == [] and out.hidden_states is None and out.attentions is None
        tiny_model(torch.randn(1, 3, 32, 32), output_hidden_states=[-1])
    assert runs == [1]


def test_unknown_keyword_argument_is_an_error_naming_it(tiny_model):
    with pytest.raises(TypeError, match="output_hiden_states"):
        tiny_model(torch.randn(1, 3, 32, 32), output_hiden_states=True)


# ---- initialisation -------------------------------------------------------------------------------------


def test_initialisation_follows_clip_for_the_towers_and_is_seed_independent_for_buffers():
    config = make_tiny_config(num_feature_layers=2)
    torch.manual_seed(0)
    first = WeCLIPForSemanticSegmentation(config)
    torch.manual_seed(1)
    second = WeCLIPForSemanticSegmentation(config)
    vision, text = config.vision_config, config.text_config
    # CLIP's scheme: attention projections std = width^-0.5 * (2 * layers)^-0.5, the image/text projections
    # width^-0.5; the decoder's rule (std 0.02) never reaches them
    q_proj = first.vision_model.encoder.layers[0].self_attn.q_proj.weight
    expected_q = vision.hidden_size**-0.5 * (2 * vision.num_hidden_layers) ** -0.5
    assert q_proj.std().item() == pytest.approx(expected_q, rel=0.15)
    assert first.visual_projection.weight.std().item() == pytest.approx(vision.hidden_size**-0.5, rel=0.15)
    assert first.text_projection.weight.std().item() == pytest.approx(text.hidden_size**-0.5, rel=0.15)
    assert first.decoder.layer_mlps[0].fc1.weight.std().item() == pytest.approx(
        config.initializer_range, rel=0.15
    )
    assert torch.all(first.decoder.blocks[0].layer_norm1.weight == 1)
    # text-embedding buffers: unit vectors, the same whatever the global seed
    torch.testing.assert_close(first.class_text_embeds, second.class_text_embeds, rtol=0, atol=0)
    torch.testing.assert_close(first.class_text_embeds.norm(dim=-1), torch.ones(4))
    assert not torch.equal(first.decoder.fuse.weight, second.decoder.fuse.weight)


def test_get_input_embeddings_is_the_patch_embedding(tiny_model):
    assert tiny_model.get_input_embeddings() is tiny_model.vision_model.embeddings.patch_embedding


def test_the_float32_copy_of_a_half_precision_block_is_made_once_per_weights(tiny_config):
    """The CAM path's float32 copies of the last block (and post-LayerNorm, projection) of a half-precision model
    were made again at every forward: one copy now while the weights stay the same; a write into them (loading) or
    a move makes a new one, whose values are the new weights'; float32 modules are used as they are."""
    from weclip_hf import WeCLIPForSemanticSegmentation
    from weclip_hf.clip_features import in_float32

    model = WeCLIPForSemanticSegmentation(tiny_config).to(torch.bfloat16)
    block = model.vision_model.encoder.layers[-1]
    first = in_float32(block)
    assert in_float32(block) is first and next(first.parameters()).dtype == torch.float32
    weight = block.mlp.fc1.weight
    with torch.no_grad():
        weight.add_(1.0)  # as load_state_dict writes the loaded values
    again = in_float32(block)
    assert again is not first and torch.equal(again.mlp.fc1.weight, weight.float())
    model.float()
    assert in_float32(block) is block
    block.mlp.fc1.weight.data = (
        block.mlp.fc1.weight.data.bfloat16()
    )  # one half-precision weight among float32 ones
    mixed = in_float32(block)
    assert mixed is not block and next(mixed.mlp.fc1.parameters()).dtype == torch.float32

"""`torch.compile` of the models: the whole model (`model.compile()`: the CLIP forward, the decoder and the losses
compiled, the pseudo-label pipeline eager) trains as the eager model does and is not recompiled from step to
step; the decoder compiles as one graph. Backend ``aot_eager`` (Dynamo's tracing and AOTAutograd, no code
generation): what these tests check is ours, the graphs and their guards; Inductor's code generation is
PyTorch's (`examples/benchmark_gpu.sh` runs the compiled model with it on a GPU: BENCHMARKS.md)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_config, make_tiny_plus_config

from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPPlusForSemanticSegmentation
from weclip_hf.losses import segmentation_loss

RFM_START = 2  # steps 0-1 without the RFM, 2 on with it: both variants of the step are compiled
STEPS = 5


def _model(method: str):
    torch.manual_seed(0)
    if method == "weclip_plus":
        return WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config(rfm_start_step=RFM_START))
    return WeCLIPForSemanticSegmentation(make_tiny_config(rfm_start_step=RFM_START))


def _batch(model) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 64, 64, generator=g)
    labels = torch.zeros(2, model.config.num_foreground_classes)
    labels[0, 0] = labels[1, 1] = labels[1, 2] = 1.0
    return pixels, labels


def _pixel_labels(pixels: torch.Tensor) -> torch.Tensor:
    """Fixed pixel labels of `_batch`'s images, of its image-level classes: image 0 class 1 on its left half, image 1
    class 2 top left and class 3 bottom right, background elsewhere, the top 4 rows ignored (255)."""
    b, _, h, w = pixels.shape
    labels = torch.zeros(b, h, w, dtype=torch.long)
    labels[0, :, : w // 2] = 1
    labels[1, : h // 2, : w // 2] = 2
    labels[1, h // 2 :, w // 2 :] = 3
    labels[:, :4] = 255
    return labels


def _train(
    model, steps: int
) -> tuple[list[torch.Tensor], list[bool], list[torch.Tensor], dict[str, torch.Tensor]]:
    """``steps`` SGD steps on one batch (the RFM from step `RFM_START`): losses, RFM flags, pseudo labels, each
    trained weight's change.
    The forward takes the class labels (the pseudo labels, RFM+ and its decoder affinity are computed as in weak
    training) and fixed pixel labels, which the losses use: a tiny random model's propagated CAMs are nearly flat
    (their range ~1e-3 of their values), and their min-max normalization amplifies float32 rounding ~1000 times,
    so that eager and compiled pseudo labels differ at a few near-tied pixels (up to 15 of 8192 per step; torch
    2.11 and 2.13): trained on them, WeCLIP+'s updates differed by 0.8% of the largest (torch 2.11; 0.18% on
    2.13), where on the same labels they differ by 1.4e-5.
    From the step after the RFM's first, any recompilation raises. (SGD: an update proportional to the gradient;
    AdamW's first steps move every weight by ~lr whatever its gradient's size, the sign of near-zero gradients
    being float noise.)"""
    pixels, class_labels = _batch(model)
    labels = _pixel_labels(pixels)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    initial = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    model.train()
    losses, rfm, pseudo = [], [], []
    for step in range(steps):
        torch.manual_seed(100 + step)  # the decoder's dropout draws alike in both runs
        with torch._dynamo.config.patch(error_on_recompile=step > RFM_START):
            out = model(pixels, class_labels=class_labels, labels=labels)
            out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.detach())
        rfm.append(out.used_rfm)
        pseudo.append(out.pseudo_labels)
    updates = {k: v.detach() - initial[k] for k, v in model.named_parameters() if v.requires_grad}
    return losses, rfm, pseudo, updates


@pytest.mark.parametrize("method", ["weclip", "weclip_plus"])
def test_compiled_model_trains_as_eager_without_recompiling(method):
    torch._dynamo.reset()
    eager_losses, eager_rfm, eager_pseudo, eager_updates = _train(_model(method), STEPS)
    compiled = _model(method)
    compiled.compile(backend="aot_eager")
    losses, rfm, pseudo, updates = _train(compiled, STEPS)
    assert rfm == eager_rfm == [False] * RFM_START + [True] * (STEPS - RFM_START)
    # float32 summation orders differ (AOTAutograd's decompositions): the losses were bit-equal and the updates within
    # 1.4e-5 of the largest, 7.5e-9 at most (torch 2.11 and 2.13); the absolute term allows two ulps of a weight near 1
    torch.testing.assert_close(torch.stack(losses), torch.stack(eager_losses), rtol=1e-5, atol=1e-7)
    assert updates.keys() == eager_updates.keys()
    for name, update in updates.items():
        expected = eager_updates[name]
        scale = expected.abs().max().item()
        assert scale > 0, name  # every trainable weight moved
        torch.testing.assert_close(update, expected, rtol=0, atol=1e-4 * scale + 2.5e-7, msg=name)
    # the pseudo labels flip at near-tied pixels only (at most 0.2% measured)
    for step, (labels, expected) in enumerate(zip(pseudo, eager_pseudo)):
        assert (labels != expected).float().mean() < 0.01, step
    # the step counter stays the model's: compiled forwards count as eager ones do
    assert int(compiled.training_step) == STEPS


def test_compiled_segmentation_loss_has_the_eager_gradient():
    """The segmentation loss's autograd Function (`weclip_hf.losses`' upsampled cross-entropy) traced by Dynamo
    gives the logits the eager gradient: under torch 2.11 it gave them zero while the Function summed its output in
    place (a compiled model then trained its decoder through the affinity loss only)."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g, requires_grad=True)
    labels = torch.randint(0, 4, (2, 20, 24), generator=g)
    labels[0, :2] = 255  # ignored pixels
    (expected,) = torch.autograd.grad(segmentation_loss(logits, labels), logits)
    compiled = torch.compile(segmentation_loss, backend="aot_eager")
    (grad,) = torch.autograd.grad(compiled(logits, labels), logits)
    assert expected.abs().max() > 0
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["weclip", "weclip_plus"])
def test_compiled_inference_matches_eager(method):
    torch._dynamo.reset()
    model = _model(method).eval()
    pixels, _ = _batch(model)
    with torch.no_grad():
        expected = model(pixels).logits
        model.compile(backend="aot_eager")
        torch.testing.assert_close(model(pixels).logits, expected, rtol=1e-5, atol=1e-6)


def test_decoder_compiles_as_one_graph():
    """``fullgraph=True``: the decoder (feature head, transformer, classifier) has no graph break; forward and
    weight gradients equal the eager ones."""
    torch._dynamo.reset()
    model = _model("weclip")
    cfg = model.config
    g = torch.Generator().manual_seed(2)
    tokens = [
        torch.randn(2, 16, cfg.vision_config.hidden_size, generator=g) for _ in range(cfg.num_feature_layers)
    ]
    decoder = model.decoder.eval()

    def run():
        decoder.zero_grad(set_to_none=True)
        logits, features = decoder(tokens, (4, 4))
        (logits.square().mean() + features.mean()).backward()
        return logits.detach(), {k: p.grad.clone() for k, p in decoder.named_parameters()}

    logits, grads = run()
    decoder.compile(fullgraph=True, backend="aot_eager")
    compiled_logits, compiled_grads = run()
    torch.testing.assert_close(compiled_logits, logits, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_compiled_model_refuses_bad_labels_by_name():
    """The input checks are traced into the graph (no graph break): bad image-level labels still fail, naming the
    problem."""
    torch._dynamo.reset()
    model = _model("weclip")
    model.compile(backend="aot_eager")
    pixels, labels = _batch(model)
    labels[0, 0] = 2.0
    with pytest.raises((RuntimeError, ValueError), match="class_labels must contain only 0 and 1"):
        model(pixels, class_labels=labels)


def test_compiled_model_saves_and_loads_as_the_plain_model(tmp_path):
    """`model.compile()` compiles in place: `save_pretrained` writes the plain checkpoint (no ``_orig_mod.`` key
    prefix), which `from_pretrained` loads back whole."""
    model = _model("weclip")
    model.compile(backend="aot_eager")
    model.save_pretrained(tmp_path)
    loaded = WeCLIPForSemanticSegmentation.from_pretrained(tmp_path)
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert not any("_orig_mod" in key for key in expected)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("method", ["weclip", "weclip_plus"])
def test_exported_with_a_dynamic_batch_the_model_predicts_any_batch_as_eager(method):
    """`torch.export` with a dynamic batch failed ("Constraints violated (batch)"): the CPU's chunk count, computed
    from the batch size, fixed it; a `torch.jit.trace` at batch 2 failed at batch 4. While a graph is captured the
    batch is one chunk."""
    model = _model(method).eval()
    pixels = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    batch = torch.export.Dim("batch", min=1, max=8)
    exported = torch.export.export(model, (pixels[:2],), dynamic_shapes=({0: batch},), strict=False).module()
    model.config.return_dict = False
    traced = torch.jit.trace(model, (pixels[:2],), check_trace=False)
    model.config.return_dict = True
    with torch.no_grad():
        for n in (1, 3, 5):
            expected = model(pixels[:n]).logits
            torch.testing.assert_close(exported(pixels[:n])["logits"], expected, rtol=0, atol=1e-5)
            torch.testing.assert_close(traced(pixels[:n])[0], expected, rtol=0, atol=1e-5)

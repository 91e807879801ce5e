"""The package on a simulated CUDA device (`simulated_cuda`: tensors that report ``cuda:0`` and compute on the CPU),
so that a device bug (a tensor made on the CPU meeting a CUDA one, ``.numpy()`` of a CUDA tensor, a CUDA-only
branch) fails here rather than on the first GPU: the models' forward and training step, the inference helpers, the
processor's post-processing and the pipeline compute on "cuda" what they compute on the CPU."""

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import FAST, make_tiny_config, make_tiny_plus_config, train_in_process, with_varied_decoder
from PIL import Image
from simulated_cuda import CudaTensor, SimulatedDeviceError, simulated_cuda, to_cpu
from test_trainer import run_script, trainer_script
from transformers import pipeline

from weclip_hf import (
    WeCLIPForSemanticSegmentation,
    WeCLIPImageProcessor,
    WeCLIPPlusForSemanticSegmentation,
    create_optimizer_and_scheduler,
    multiscale_flip_logits,
    processor_settings,
)
from weclip_hf.connected_components import components_by_propagation, connected_components
from weclip_hf.crf import dense_crf
from weclip_hf.evaluation import predict_labels
from weclip_hf.inference import image_pseudo_labels
from weclip_hf.normalization import PixelNormalization
from weclip_hf.presets import TrainingRecipe

MODELS = {
    "weclip": (WeCLIPForSemanticSegmentation, make_tiny_config),
    "weclip_plus": (WeCLIPPlusForSemanticSegmentation, make_tiny_plus_config),
}


def tiny(kind: str) -> torch.nn.Module:
    """A tiny random model of ``kind`` (`MODELS`) in eval mode, its predictions varied across an image."""
    model_class, config = MODELS[kind]
    torch.manual_seed(0)
    return with_varied_decoder(model_class(config()).eval())


def on_cuda(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` moved to the simulated device (call within `simulated_cuda`)."""
    return copy.deepcopy(model).to("cuda")


def batch() -> dict[str, torch.Tensor]:
    """Two 64 x 48 images with image-level labels, pixel labels (an ignored band) and a pixel mask (padding)."""
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (2, 64, 48), generator=g)
    labels[0, :5] = 255
    mask = torch.ones(2, 64, 48)
    mask[1, :, 40:] = 0
    return {
        "pixel_values": torch.randn(2, 3, 64, 48, generator=g),
        "class_labels": torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]]),
        "labels": labels,
        "pixel_mask": mask,
    }


def moved(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``inputs`` on the simulated device."""
    return {key: value.to("cuda") for key, value in inputs.items()}


def assert_same(cpu, cuda, atol: float = 0.0, rtol: float = 0.0) -> None:
    """``cuda`` (tensors on the simulated device, in any structure) equals ``cpu`` within ``atol`` + ``rtol``."""
    cpu, cuda = to_cpu(cpu), to_cpu(cuda)
    if isinstance(cpu, dict):
        assert cpu.keys() == cuda.keys()
        for key in cpu:
            assert_same(cpu[key], cuda[key], atol, rtol)
    elif isinstance(cpu, (list, tuple)):
        assert len(cpu) == len(cuda)
        for a, b in zip(cpu, cuda):
            assert_same(a, b, atol, rtol)
    elif isinstance(cpu, torch.Tensor):
        assert isinstance(cuda, torch.Tensor) and cuda.dtype == cpu.dtype and cuda.shape == cpu.shape
        torch.testing.assert_close(cuda, cpu, atol=atol, rtol=rtol)
    else:
        assert cuda == cpu


# ---- the harness -------------------------------------------------------------------------------------------


def test_tensors_asked_for_on_cuda_report_it_and_hold_the_cpu_values():
    values = torch.arange(6.0).reshape(2, 3)
    with simulated_cuda():
        assert torch.cuda.is_available()
        made = [
            values.to("cuda"),
            values.cuda(),
            torch.tensor(values.tolist(), device="cuda"),
            torch.arange(6.0, device=torch.device("cuda", 0)).reshape(2, 3),
            torch.zeros(2, 3, device="cuda") + values.to("cuda"),
        ]
        for tensor in made:
            assert type(tensor) is CudaTensor and tensor.is_cuda and tensor.device == torch.device("cuda", 0)
            assert tensor.new_zeros(1).is_cuda and torch.zeros_like(tensor).is_cuda and tensor[0, 1:].is_cuda
            assert torch.equal(tensor.cpu(), values) and tensor.tolist() == values.tolist()
        assert float(made[0].sum()) == 15.0 and made[0][1, 2].item() == 5.0
    assert not torch.cuda.is_available()  # the stubs are gone after the block


def test_a_cuda_tensor_meeting_a_cpu_tensor_or_numpy_raises_as_on_cuda():
    with simulated_cuda():
        x = torch.ones(3, device="cuda")
        with pytest.raises(SimulatedDeviceError, match=r"met CPU tensor\(s\) of shape \(3,\)"):
            x + torch.ones(3)
        with pytest.raises(SimulatedDeviceError, match="met CPU tensor"):
            torch.where(x > 0, x, torch.zeros(3))
        with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
            x.numpy()
        with pytest.raises(TypeError, match="can't convert cuda:0"):
            np.asarray(x)
        with pytest.raises(SimulatedDeviceError, match="CPU generator"):
            torch.randn(3, device="cuda", generator=torch.Generator())
        # allowed on CUDA: a 0-dim CPU tensor (a scalar), CPU indices, copies across devices
        assert torch.equal((x * torch.tensor(2.0)).cpu(), torch.full((3,), 2.0))
        assert x[torch.tensor([0, 2])].is_cuda and x[torch.tensor([True, False, True])].shape == (2,)
        host = x.cpu()
        host += 1  # a copy: the device tensor keeps its values
        assert type(host) is torch.Tensor and torch.equal(x.cpu(), torch.ones(3))


def test_autograd_a_module_on_cuda_and_its_optimizer_step_compute_as_on_the_cpu():
    torch.manual_seed(0)
    layer, inputs = torch.nn.Linear(3, 2), torch.randn(4, 3)

    def step(module: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        optimizer = torch.optim.AdamW(module.parameters(), lr=0.1)
        module(x).tanh().square().sum().backward()
        optimizer.step()
        return [p.detach() for p in module.parameters()] + [p.grad for p in module.parameters()]

    expected = step(copy.deepcopy(layer), inputs)
    with simulated_cuda():
        ours = step(copy.deepcopy(layer).to("cuda"), inputs.to("cuda"))
        assert all(t.is_cuda for t in ours)
    assert_same(expected, ours)


def test_an_autograd_function_sees_the_cuda_tensors_forward_and_backward():
    seen = []

    class Triple(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            seen.append(x.device.type)
            return x * 3

        @staticmethod
        def backward(ctx, grad):
            seen.append(grad.device.type)
            return grad * 3

    with simulated_cuda():
        x = torch.ones(2, device="cuda", requires_grad=True)
        Triple.apply(x).sum().backward()
        assert torch.equal(x.grad.cpu(), torch.full((2,), 3.0)) and seen == ["cuda", "cuda"]


# ---- the package on "cuda" ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODELS)
def test_eval_logits_on_cuda_are_the_cpu_logits(kind):
    model, inputs = tiny(kind), batch()
    with torch.no_grad():
        expected = model(inputs["pixel_values"], output_hidden_states=True, output_attentions=True)
    with simulated_cuda(), torch.no_grad():
        ours = on_cuda(model)(
            inputs["pixel_values"].to("cuda"), output_hidden_states=True, output_attentions=True
        )
        assert ours.logits.is_cuda
    assert_same(expected, ours)


@pytest.mark.parametrize("kind", MODELS)
def test_a_training_step_on_cuda_is_the_cpu_step(kind):
    """Pseudo labels (RFM on), the loss with pixel labels and a padding mask, its backward and two AdamW steps with
    the official schedule; WeCLIP+'s Dice takes masked class sums on CUDA (scattered ones on a CPU: float noise in
    the gradients, which Adam's first steps magnify on near-zero gradients)."""
    model, inputs = tiny(kind).train(), batch()
    recipe = TrainingRecipe(num_warmup_steps=1, max_train_steps=10)

    def train(module: torch.nn.Module, given: dict) -> list:
        optimizer, schedule = create_optimizer_and_scheduler(module, recipe)
        first = module(**given, use_rfm=True, output_cam_details=True)
        first.loss.backward()
        grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
        optimizer.step(), schedule.step(), optimizer.zero_grad()
        module(**given).loss.backward()
        optimizer.step()
        return [first, grads, [p.detach() for p in module.parameters()]]

    torch.manual_seed(3)
    expected = train(copy.deepcopy(model), inputs)
    with simulated_cuda():
        torch.manual_seed(3)
        ours = train(on_cuda(model), moved(inputs))
    if kind == "weclip":
        assert_same(expected, ours)
    else:
        assert_same(expected[:2], ours[:2], atol=1e-6, rtol=1e-5)
        assert_same(expected[2], ours[2], atol=5e-3)


@pytest.mark.parametrize("kind", MODELS)
def test_inference_helpers_on_cuda_are_the_cpu_ones(kind):
    """Multi-scale + flip logits (an image below one patch too), pseudo labels of a reduced image, predictions with
    the dense CRF, and the processor's post-processing of cuda logits (labels and scores)."""
    model, inputs = tiny(kind), batch()
    images, class_labels = inputs["pixel_values"], inputs["class_labels"]
    processor = WeCLIPImageProcessor(**processor_settings(model.config))
    normalization = PixelNormalization.from_image_processor(processor)

    def run(module, x: torch.Tensor, labels: torch.Tensor) -> list:
        logits = multiscale_flip_logits(module, x)
        sizes = [(64, 48), (30, 33)]
        return [
            logits,
            multiscale_flip_logits(module, x[..., :6, :7], scales=(1.0, 0.5)),
            image_pseudo_labels(module, x, labels, use_rfm=True, max_size=32),
            predict_labels(
                module, x, (70, 50), msf=True, crf=True, normalization=normalization, input_size=40
            ),
            processor.post_process_semantic_segmentation({"logits": logits}, target_sizes=sizes),
            [
                out["segmentation_scores"]
                for out in processor.post_process_semantic_segmentation(
                    {"logits": logits}, target_sizes=sizes, return_segmentation_scores=True
                )
            ],
        ]

    expected = run(model, images, class_labels)
    with simulated_cuda():
        ours = run(on_cuda(model), images.to("cuda"), class_labels.to("cuda"))
    assert_same(expected, ours)


def test_dense_crf_and_connected_components_on_cuda_are_the_cpu_ones():
    """The CRF of cuda tensors, and the components by closure (what CUDA runs) against the CPU's propagation."""
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (2, 3, 20, 24), dtype=torch.uint8, generator=g)
    probs = torch.rand(2, 5, 20, 24, generator=g).softmax(dim=1)
    binary = torch.rand(3, 9, 11, generator=g) > 0.5
    with simulated_cuda():
        ours = [dense_crf(image.to("cuda"), probs.to("cuda")), connected_components(binary.to("cuda"))]
    assert_same([dense_crf(image, probs), components_by_propagation(binary)], ours)


def test_the_pipeline_on_cuda_gives_the_cpu_masks():
    """WeCLIP's (the pipeline code is the same for WeCLIP+, whose tiny DINOv2 of 2 px patches takes minutes over a
    pipeline's images on a CPU)."""
    model = tiny("weclip")
    processor = WeCLIPImageProcessor(**processor_settings(model.config))
    images = [
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8))
        for i, (h, w) in enumerate([(40, 50), (33, 20), (40, 50)])
    ]
    expected = pipeline("image-segmentation", model=model, image_processor=processor)(images, batch_size=2)
    with simulated_cuda():
        segmenter = pipeline(
            "image-segmentation", model=copy.deepcopy(model), image_processor=processor, device="cuda"
        )
        assert next(segmenter.model.parameters()).is_cuda
        ours = segmenter(images, batch_size=2)
    assert [[s["label"] for s in image] for image in ours] == [
        [s["label"] for s in image] for image in expected
    ]
    for mine, theirs in zip(ours, expected):
        assert all(np.array_equal(np.asarray(a["mask"]), np.asarray(b["mask"])) for a, b in zip(mine, theirs))


@pytest.mark.parametrize("kind", MODELS)
def test_a_loaded_model_switched_to_eval_on_cuda_keeps_its_own_clip_activation(kind, tmp_path):
    """transformers (5.x) loads models with ``use_kernels=True`` by default, and re-kernelizes a model whose
    train/eval mode changes: on CUDA it then fetches ``kernels-community/activation`` from the Hub to replace CLIP's
    QuickGELU (offline: a ValueError at ``model.eval()``, e.g. examples/train.py's first evaluation; online:
    downloaded code in the frozen CLIP). A loaded WeCLIP keeps the activation it was checked against."""
    model_class, _ = MODELS[kind]
    tiny(kind).save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path)
    assert not loaded.use_kernels
    inputs = batch()["pixel_values"]
    with torch.no_grad():
        expected = loaded(inputs).logits
    with simulated_cuda():
        model = loaded.to("cuda").train()
        model.eval()  # a new kernels mode: transformers kernelizes a model that uses kernels again, on cuda now
        with torch.no_grad():
            assert_same(expected, model(inputs.to("cuda")).logits)


def on_simulated_cuda(run: Callable[[], dict]) -> dict:
    """``run()`` (a script's ``main``) on the simulated device, with accelerate's process state made afresh before
    (accelerate keeps a process's first device: the CPU's of an earlier run) and after (the next test's, the CPU)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        with simulated_cuda():
            return run()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_examples_train_on_cuda_trains_evaluates_and_saves_as_on_the_cpu(tmp_path, capsys):
    """examples/train.py on the simulated device (accelerate's device: cuda): 2 steps with a checkpoint, the
    in-training evaluation (the model's first switch to eval mode on cuda) and the final one, as on the CPU."""
    args = [*FAST, "--max_train_steps", 2, "--eval_steps", 2, "--checkpointing_steps", 1, "--num_workers", 0]
    expected = train_in_process("--output_dir", tmp_path / "cpu", *args)
    ours = on_simulated_cuda(lambda: train_in_process("--output_dir", tmp_path / "cuda", *args))
    assert "2 steps of 4 x 1 images, lr 0.002, RFM after 150 steps (the toy recipe), on cuda\n" in (
        capsys.readouterr().out
    )
    scores = ("miou", "cam_miou", "pseudo_label_miou", "per_class_iou")
    assert {k: ours[k] for k in scores} == {k: expected[k] for k in scores}
    assert (tmp_path / "cuda" / "step_2").is_dir() and (tmp_path / "cuda" / "model.safetensors").is_file()


def test_examples_train_with_trainer_on_cuda_scores_as_on_the_cpu(tmp_path, monkeypatch):
    """examples/train_with_trainer.py (transformers' Trainer: its device, evaluation, checkpoint with the CUDA RNG
    states) on the simulated device: the CPU's scores."""
    script = trainer_script(monkeypatch)
    flags = ["--max_steps", 2, "--toy_train_images", 12, "--toy_val_images", 3, "--dataloader_num_workers", 0]
    expected = run_script(script, "--output_dir", tmp_path / "cpu", *flags)
    ours = on_simulated_cuda(lambda: run_script(script, "--output_dir", tmp_path / "cuda", *flags))
    scores = ("eval_miou", "eval_cam_miou", "eval_pseudo_label_miou")
    assert {k: ours[k] for k in scores} == {k: expected[k] for k in scores}
    assert (tmp_path / "cuda" / "checkpoint-2" / "rng_state.pth").is_file()

"""What the benchmark runs: the random model of a method (`build_model`, `compiled`), its optimizer, synthetic
VOC-like inputs, and the training step and the plain CLIP forward as functions of no arguments."""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from tiny_configs import make_tiny_config, make_tiny_plus_config  # tests/, on sys.path (`__init__.py`)

from weclip_hf import (
    WeCLIPConfig,
    WeCLIPForSemanticSegmentation,
    WeCLIPPlusConfig,
    WeCLIPPlusForSemanticSegmentation,
)


def int_list(text: str | int) -> list[int]:
    """A comma-separated list of counts or sizes on the command line ("4,16") as integers."""
    return [int(item) for item in str(text).split(",") if item]


def rfm_settings(text: str) -> list[bool]:
    """The RFM settings to measure from the command line: "off", "on" or "off,on"."""
    return [{"off": False, "on": True}[item.strip()] for item in text.split(",") if item.strip()]


def build_model(tiny: bool, device: torch.device, seed: int, method: str = "weclip"):
    """A random model of ``method``: real size (CLIP ViT-B/16, VOC classes; WeCLIP+: + DINOv2 ViT-S/14, the
    official default) or the tiny test config."""
    torch.manual_seed(seed)
    if method == "weclip_plus":
        config = make_tiny_plus_config() if tiny else WeCLIPPlusConfig()
        return WeCLIPPlusForSemanticSegmentation(config).to(device)
    config = make_tiny_config() if tiny else WeCLIPConfig()
    return WeCLIPForSemanticSegmentation(config).to(device)


def compiled(args: argparse.Namespace, model):
    """``model`` with `--compile`'s part compiled in place (`nn.Module.compile`: same module, same weights). Static
    shapes: each setting (batch size, RFM, training / inference size) gets its own graphs, as in a training run of
    one batch size; the recompilation limit leaves room for all of them."""
    if args.compile != "none":
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        part = model.decoder if args.compile == "decoder" else model
        part.compile(backend=args.compile_backend, mode=args.compile_mode, dynamic=False)
    return model


def trainable_optimizer(model) -> torch.optim.Optimizer:
    """AdamW on the trainable weights (WeCLIP: the decoder; WeCLIP+: also the DINO head), the toy recipe's."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def synthetic_batch(batch: int, height: int, width: int, num_classes: int, device: torch.device, seed: int):
    """Smooth random normalized images and VOC-like labels (1 or 2 classes per image, 1.5 on average)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 3, max(height // 32, 2), max(width // 32, 2), generator=g)
    images = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    images = images + 0.3 * torch.randn(batch, 3, height, width, generator=g)
    labels = torch.zeros(batch, num_classes)
    for i in range(batch):
        labels[i, torch.randperm(num_classes, generator=g)[: min(1 + i % 2, num_classes)]] = 1.0
    return images.to(device), labels.to(device)


def autocast_context(args: argparse.Namespace, device: torch.device):
    if args.autocast == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if args.autocast == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def clip_forward_fn(args, model, pixel_values):
    """A plain forward of the frozen CLIP vision tower on ``pixel_values`` (all L blocks, SDPA, no gradient,
    no attention maps; transformers' own `CLIPVisionModel` forward): the work any use of the frozen CLIP
    pays, against which the step's and inference's overhead is measured."""
    vision_model = model.vision_model

    def forward():
        with torch.no_grad(), autocast_context(args, pixel_values.device):
            return vision_model(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state

    return forward


def training_step(args, bench, model, optimizer, batch: int, use_rfm: bool):
    """One training step on a synthetic batch (forward with class_labels + backward + AdamW on the decoder) as a
    function of no arguments, and the batch's pixel values."""
    device = bench.device
    pixel_values, class_labels = synthetic_batch(
        batch, args.crop, args.crop, model.config.num_foreground_classes, device, args.seed
    )
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(args, device):
            out = model(pixel_values, class_labels=class_labels, use_rfm=use_rfm)
        out.loss.backward()
        optimizer.step()

    return step, pixel_values

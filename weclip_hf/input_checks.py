"""The checks of a forward's public inputs (shapes, dtypes, label values), with errors that name the problem.

On an accelerator, value checks do not sync the host (`check_values`).
"""

from __future__ import annotations

import torch

from .configuration_weclip import WeCLIPConfig

# CUDA's device assertion refuses a message this long or longer on every call, good values too
DEVICE_MESSAGE_LIMIT = 255


def check_values(ok: torch.Tensor, message: str) -> None:
    """Refuse bad input values without a host sync on accelerators (reading the flag back would stall the step).

    On the CPU: a `ValueError` right away; in a graph `torch.compile` traces there (where reading the flag would
    break the graph), a `RuntimeError` with ``message`` when the graph runs. Elsewhere an assertion on the device
    (`torch._assert_async`): on CUDA a failed one prints ``message`` in the device's assertion line on the
    process's output, not in the error: Python raises ``CUDA error: device-side assert triggered`` at a later
    synchronising call, at whatever line comes next (``CUDA_LAUNCH_BLOCKING=1``: here), and the process's CUDA
    context is unusable after it (a notebook's kernel must restart). To find the bad value, run the batch on the
    CPU, or check it before the forward (docs/troubleshooting.md). The device gets ``message`` cut below
    `DEVICE_MESSAGE_LIMIT` characters (CUDA refuses a longer one on every call, good values too).
    """
    if ok.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message[: DEVICE_MESSAGE_LIMIT - 1])


def check_image_batch(pixel_values) -> None:
    """Refuse ``pixel_values`` that are no float tensor of shape [B, 3, H, W] (of any size: the inference helpers
    pad images smaller than a patch), naming what they are."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}; convert it with "
            "torch.as_tensor."
        )
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        channels_last = pixel_values.ndim == 4 and pixel_values.shape[-1] == 3
        raise ValueError(
            f"pixel_values must have shape [B, 3, H, W], got {tuple(pixel_values.shape)}"
            + (
                " (channels last: call the image processor without data_format='channels_last', or "
                "permute(0, 3, 1, 2) them)."
                if channels_last
                else "."
            )
        )
    if not pixel_values.is_floating_point():
        raise TypeError(f"pixel_values must be a float tensor, got {pixel_values.dtype}.")


def check_features_of(
    pixel_values: torch.Tensor, features, patch_size: int, decoder_affinity: torch.Tensor | None = None
) -> None:
    """Refuse CLIP features (`forward_clip_features`, a `CLIPVisionFeatures`) or a decoder affinity [B, N, N] made
    from other images than ``pixel_values`` [B, 3, H, W]: another batch size or patch grid (one batch's features
    given with another's images would label each image with another's CAMs)."""
    batch, grid = (
        pixel_values.shape[0],
        (pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size),
    )
    given = (features.hidden[-1].shape[0], tuple(features.grid))
    if given != (batch, grid):
        raise ValueError(
            f"features are those of {given[0]} image(s) of a {given[1]} patch grid, and pixel_values are {batch} "
            f"image(s) of a {grid} grid: give the forward_clip_features of these pixel_values."
        )
    tokens = grid[0] * grid[1]
    if decoder_affinity is not None and tuple(decoder_affinity.shape) != (batch, tokens, tokens):
        raise ValueError(
            f"decoder_affinity must be [B, N, N] = {[batch, tokens, tokens]} for these pixel_values, got "
            f"{list(decoder_affinity.shape)}."
        )


def labels_shape_remedy(shape: tuple[int, ...], expected: tuple[int, int, int]) -> str:
    """What to do about ``labels`` of ``shape`` where a forward needs ``expected`` = pixel_values' [B, H, W]."""
    if len(shape) == 4 and shape[1] == 1 and (shape[0], *shape[2:]) == expected:
        return "drop their channel axis, labels.squeeze(1)."
    if len(shape) == 3 and shape[1:] == expected[1:]:
        return "give one label map per image of pixel_values."
    # masks at the photos' own size (SegFormer's loss upsamples its logits to any label size; here labels take the
    # place of the pseudo labels, which are on pixel_values' pixels)
    return (
        "make them with the images, processor(images, segmentation_maps=masks), which resizes and pads the masks "
        "as it does the images (nearest neighbour, padding with its ignore_index)."
    )


def check_inputs(
    config: WeCLIPConfig,
    pixel_values: torch.Tensor,
    class_labels: torch.Tensor | None,
    labels: torch.Tensor | None,
    pixel_mask: torch.Tensor | None = None,
) -> None:
    """Validate the public inputs of a forward against ``config`` with errors that name the problem."""
    check_image_batch(pixel_values)
    for name, value in (("class_labels", class_labels), ("labels", labels), ("pixel_mask", pixel_mask)):
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor, got {type(value).__name__}; convert it with torch.as_tensor."
            )
    patch = config.vision_config.patch_size
    if min(pixel_values.shape[-2:]) < patch:
        raise ValueError(
            f"Images of {tuple(pixel_values.shape[-2:])} pixels are smaller than one {patch}x{patch} "
            "patch; resize them (the image processor does)."
        )
    b = pixel_values.shape[0]
    if class_labels is not None:
        c = config.num_foreground_classes
        if class_labels.ndim != 2 or class_labels.shape != (b, c):
            raise ValueError(
                f"class_labels must be multi-hot of shape [batch, num_foreground_classes] = [{b}, {c}], "
                f"got {tuple(class_labels.shape)}."
            )
        binary = (class_labels == 0) | (class_labels == 1)  # bool, integer and float labels alike
        check_values(binary.all(), "class_labels must contain only 0 and 1 (multi-hot image-level labels).")
    if labels is not None:
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(
                f"labels must be an integer tensor of class ids (e.g. torch.long), got {labels.dtype}; "
                "pixel masks are ids, not probabilities."
            )
        expected = (b, *pixel_values.shape[-2:])
        if labels.shape != expected:
            raise ValueError(
                f"labels must have shape [B, H, W] = {expected}, one class id per pixel of pixel_values, got "
                f"{tuple(labels.shape)}: {labels_shape_remedy(tuple(labels.shape), expected)}"
            )
        ignore = config.semantic_loss_ignore_index
        bad = (labels != ignore) & ((labels < 0) | (labels >= config.num_labels))
        message = f"labels contain ids outside [0, {config.num_labels - 1}] (ignore index {ignore})"
        hint = (  # e.g. the padding of a processor built without this config
            f"a WeCLIPImageProcessor pads labels with its ignore_index: build it with ignore_index={ignore} "
            "(WeCLIPImageProcessor(**weclip_hf.processor_settings(model.config)))."
        )
        if labels.device.type != "cpu":
            check_values(~bad.any(), f"{message}; {hint}")
        elif bad.any():
            raise ValueError(f"{message}: {sorted(labels[bad].unique().tolist())[:10]}; {hint}")
    if pixel_mask is not None and pixel_mask.shape != (b, *pixel_values.shape[-2:]):
        raise ValueError(
            f"pixel_mask must have shape [B, H, W] = {(b, *pixel_values.shape[-2:])} (1 for image pixels, 0 for "
            f"padding), got {tuple(pixel_mask.shape)}."
        )

"""Evaluation: mIoU of predictions (single-scale, multi-scale + flip) and of CAM / RFM pseudo labels, and overlay
figures of evaluation examples (`write_overlays`).

Confusion matrices are accumulated on the device and summed across processes; labels keep their
original size (logits are upsampled bilinearly to it).
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .batch_jobs import save_overlay
from .crf import WECLIP, CRFParams, crf_refine_labels
from .data.masks import check_mask_ids
from .inference import (
    image_logits,
    image_pseudo_labels,
    multiscale_flip_logits,
    pad_to_multiple,
    resize_images,
    resize_label_maps,
    upsample_cropping_padding,
    upsampled_labels,
)
from .metrics import confusion_matrix, scores_from_confusion
from .normalization import PixelNormalization
from .visualization import overlay_figure, present_class_cams

MODES = ("pred", "pred_msf", "pred_crf", "pred_msf_crf", "cam", "pseudo")
# each mode's mIoU as the scripts report it (train.py's metrics.json, evaluate.py's JSON, the model cards)
MIOU_NAMES = {
    "pred": "miou",
    "pred_msf": "miou_msf",
    "pred_crf": "miou_crf",
    "pred_msf_crf": "miou_msf_crf",
    "cam": "cam_miou",
    "pseudo": "pseudo_label_miou",
}


def processor_input_size(image_processor) -> dict[str, int] | None:
    """The ``input_size`` of `evaluate_segmentation` that scores what the pipeline predicts with
    ``image_processor``: its ``size`` when it resizes, and its patch size as ``size_divisor`` when it pads
    (``do_pad``); None (images kept as they are) when it does neither, or for anything but an image processor."""
    geometry = {}
    if getattr(image_processor, "do_resize", False) and isinstance(
        getattr(image_processor, "size", None), dict
    ):
        geometry.update(image_processor.size)
    if getattr(image_processor, "do_pad", False) and getattr(image_processor, "patch_size", None):
        geometry["size_divisor"] = int(image_processor.patch_size)
    return geometry or None


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model without any)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


@contextlib.contextmanager
def in_eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout; its training forwards would also advance the step counter that starts the
    RFM) for the block, then back in the mode it was in, also after an error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _require_normalization(normalization: PixelNormalization | None) -> PixelNormalization:
    """The CRF needs the image back: ``normalization`` must say how ``pixel_values`` were normalized."""
    if not isinstance(normalization, PixelNormalization):
        raise ValueError(
            "The CRF modes need `normalization`, the statistics the pixel values were normalized with "
            "(`PixelNormalization.from_image_processor(image_processor)`, the model's processor), to recover "
            f"the image; got {normalization!r}."
        )
    return normalization


def _grid_logits(
    model, pixel_values: torch.Tensor, msf: bool, scales: Sequence[float],
    input_size: int | Mapping[str, int] | None,
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:  # fmt: skip
    """(multi-scale + flip) logits [B, K, h, w] on the logit grid of the images resized to ``input_size``
    (`resize_images`: an int is the long side, a mapping an image processor's ``size``; None: kept at their size)
    and, with its ``size_divisor`` (`processor_input_size` of a processor that pads), zero-padded to a multiple of
    it, with the resized and the padded size."""
    if input_size is not None:
        pixel_values = resize_images(pixel_values, input_size)
    resized = tuple(pixel_values.shape[-2:])
    divisor = input_size.get("size_divisor") if isinstance(input_size, Mapping) else None
    if divisor:
        pixel_values = pad_to_multiple(pixel_values, divisor)
    if msf:
        logits = multiscale_flip_logits(model, pixel_values, scales=scales)
    else:
        logits = image_logits(model, pixel_values)  # images below one patch are padded, not refused
    return logits, resized, tuple(pixel_values.shape[-2:])


def _crf_labels(
    logits: torch.Tensor, pixel_values: torch.Tensor, crf_params: CRFParams,
    normalization: PixelNormalization | None,
) -> torch.Tensor:  # fmt: skip
    """Label maps [B, H, W] of ``logits`` [B, K, H, W]: the dense CRF's (``crf_params``) on the images
    ``pixel_values`` resized to the logits' size and recovered with ``normalization``."""
    resized = F.interpolate(pixel_values, size=logits.shape[-2:], mode="bilinear", align_corners=False)
    image = _require_normalization(normalization).denormalize(resized)  # uint8 [B, 3, H, W]
    return crf_refine_labels(image, logits.softmax(dim=1), crf_params)


def _grid_labels(
    grid: tuple[torch.Tensor, tuple[int, int], tuple[int, int]], pixel_values: torch.Tensor,
    size: tuple[int, int], crf: bool, crf_params: CRFParams, normalization: PixelNormalization | None,
) -> torch.Tensor:  # fmt: skip
    """Label maps [B, H, W] at ``size`` of `_grid_logits`' ``grid``: the argmax of their upsampling, a chunk of
    classes at a time (`upsampled_labels`: never all classes at the full size), or `_crf_labels`' CRF."""
    logits, resized, padded = grid
    if not crf:
        return upsampled_labels(logits, size, resized, padded)
    upsampled = upsample_cropping_padding(logits.float(), size, resized, padded)
    return _crf_labels(upsampled, pixel_values, crf_params, normalization)


def predict_labels(
    model, pixel_values: torch.Tensor, size: tuple[int, int], msf: bool = False,
    scales: Sequence[float] | None = None, input_size: int | Mapping[str, int] | None = None,
    crf: bool = False,
    crf_params: CRFParams = WECLIP, normalization: PixelNormalization | None = None,
) -> torch.Tensor:  # fmt: skip
    """Predicted label maps [B, H, W] at ``size``: `_grid_logits` (the resize to ``input_size``, (multi-scale +
    flip) logits on the logit grid), then `_grid_labels` (the argmax of their bilinear upsampling, a chunk of classes
    at a time (`upsampled_labels`), or the dense CRF with ``crf_params`` on the image at ``size``, recovered with
    ``normalization``, required with ``crf``; default WeCLIP's evaluation setting, see `weclip_hf.crf`)."""
    if crf:
        _require_normalization(normalization)
    with in_eval_mode(model), torch.no_grad():
        grid = _grid_logits(model, pixel_values, msf, scales, input_size)
    return _grid_labels(grid, pixel_values, size, crf, crf_params, normalization)


def _score_batch(
    model, batch: dict, modes: Sequence[str], matrices: dict, scales: Sequence[float],
    input_size: int | Mapping[str, int] | None,
    crf_params: CRFParams, normalization: PixelNormalization | None,
) -> None:  # fmt: skip
    """Add one batch's confusion matrix per mode to ``matrices``."""
    num_labels, ignore = model.config.num_labels, model.config.semantic_loss_ignore_index
    # the images go to the model (batches come from a DataLoader on the host); `class_labels` stay on the host,
    # where the model plans its (image, class) pairs
    pixel_values, labels = batch["pixel_values"].to(model_device(model)), batch["labels"]
    # ids outside 0..C would silently leave the confusion matrix (the data pipeline checks its masks, naming files)
    check_mask_ids(torch.as_tensor(labels).cpu(), num_labels - 1, ignore, "'labels' of an evaluation batch")
    size = tuple(labels.shape[-2:])
    grids = {}  # per `msf`: shared by a mode and its CRF mode
    for mode in modes:
        if mode.startswith("pred"):
            msf = "msf" in mode
            if msf not in grids:
                grids[msf] = _grid_logits(model, pixel_values, msf, scales, input_size)
            pred = _grid_labels(grids[msf], pixel_values, size, "crf" in mode, crf_params, normalization)
        else:
            if "class_labels" not in batch:
                raise ValueError(
                    f"Mode {mode!r} scores pseudo labels: the batches need 'class_labels' [B, C]."
                )
            # at the image's size, at most the model's input size (a large photo's CAMs would not fit in memory)
            pred, _ = image_pseudo_labels(
                model, pixel_values, batch["class_labels"], mode == "pseudo", max_size=input_size
            )
            if pred.shape[-2:] != size:
                pred = resize_label_maps(pred, size)
        cm = confusion_matrix(pred, labels, num_labels, ignore_index=ignore)
        matrices[mode] = cm if matrices[mode] is None else matrices[mode] + cm


@torch.no_grad()
def evaluate_segmentation(
    model,
    batches: Iterable[dict | list[dict]],
    modes: Sequence[str] = ("pred",),
    scales: Sequence[float] | None = None,
    input_size: int | Mapping[str, int] | None = None,
    accelerator=None,
    progress: bool = True,
    max_batches: int | None = None,
    crf_params: CRFParams = WECLIP,
    normalization: PixelNormalization | None = None,
) -> dict[str, dict]:
    """mIoU per mode over ``batches`` of ``pixel_values`` [B, 3, H, W], ``labels`` [B, H, W] and (for the
    pseudo-label modes) ``class_labels`` [B, C] (``labels``: ids 0..C or the ignore index, else a ValueError names
    the others); an item may be a list of such batches (images of several sizes:
    `weclip_hf.data.batches.collate_by_size`). The decoder's modes predict on the images resized to ``input_size``
    (an int: the long side, VOC's 512; a mapping: an image processor's ``size`` and, where it pads, its
    ``size_divisor`` (`processor_input_size`), so that the figures are those of the pipeline with that processor;
    None: kept at their size), upsampled back to the masks' size.

    Modes: ``pred`` (decoder, single scale), ``pred_msf`` (multi-scale + flip), ``pred_crf`` /
    ``pred_msf_crf`` (the same followed by the dense CRF of `weclip_hf.crf` with ``crf_params``, default
    WeCLIP's evaluation setting, on the images recovered with ``normalization``, which these modes need:
    `PixelNormalization.from_image_processor` of the model's processor), ``cam`` (pseudo labels from the
    frozen CLIP CAMs without RFM), ``pseudo`` (pseudo labels with RFM), both at the image's size, at most
    ``input_size`` (a larger image is reduced to it, its labels upsampled). Returns
    ``{mode: scores}`` as `scores_from_confusion` gives them (``mean_iou``, ``per_category_iou``, ...),
    except that when no pixel could be scored (every ground-truth pixel ignored) the means are None, not
    NaN, with a warning saying so.
    """
    if isinstance(modes, str):  # set("pred") would be four unknown letters
        raise TypeError(f"modes must be a list of mode names, got the string {modes!r}: write [{modes!r}].")
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"Unknown evaluation modes {sorted(unknown)}; choose from {MODES}.")
    if any("crf" in mode for mode in modes):
        _require_normalization(normalization)
    num_labels = model.config.num_labels
    ignore = model.config.semantic_loss_ignore_index
    matrices = {m: None for m in modes}
    bar = tqdm(batches, desc="evaluating", disable=not progress, leave=False)
    with in_eval_mode(model):
        for i, loaded in enumerate(bar):
            if max_batches is not None and i >= max_batches:
                break
            for batch in loaded if isinstance(loaded, list) else [loaded]:  # `collate_by_size`: one per size
                _score_batch(model, batch, modes, matrices, scales, input_size, crf_params, normalization)
    results = {}
    for mode, cm in matrices.items():
        if cm is None:
            cm = torch.zeros(num_labels, num_labels, dtype=torch.long)
        if accelerator is not None:
            cm = accelerator.reduce(cm.to(accelerator.device), reduction="sum")
        results[mode] = scores_from_confusion(cm.cpu())
        if int(cm.sum()) == 0:  # every mean would be NaN, which JSON cannot hold
            warnings.warn(
                f"Evaluation ({mode!r}): no valid pixel was scored -- every ground-truth pixel is the ignore "
                f"index {ignore} (e.g. all-{ignore} masks), or there was no "
                "image; mean_iou, mean_accuracy and overall_accuracy are None (null in JSON).",
                RuntimeWarning,
                stacklevel=2,
            )
            results[mode].update(mean_iou=None, mean_accuracy=None, overall_accuracy=None)
    return results


@torch.no_grad()
def write_overlays(model, dataset, output_dir: str | Path, count: int, normalization=None) -> list[str]:
    """Overlay figures of the first ``count`` evaluation examples (``pixel_values`` [3, H, W], ``labels`` [H, W],
    ``class_labels`` [C]): ground truth, the pseudo labels of the frozen CLIP's CAMs and of their RFM refinement
    with the decoder's affinity, and the prediction over the image, the legend, a CAM heat map per present
    class; saved as ``output_dir/overlays/val_<i>.png`` (``count`` -1: every example). Returns their paths
    relative to ``output_dir`` (they stay valid when the folder moves or is uploaded). ``normalization``: the
    `weclip_hf.normalization.PixelNormalization` the images were normalized with (default: the dataset's
    ``normalization``, as `EvalSegmentationDataset` has it)."""
    normalization = normalization or dataset.normalization
    with in_eval_mode(model):
        count = len(dataset) if count < 0 else min(count, len(dataset))
        return [
            _write_overlay(model, dataset[i], Path(output_dir), f"val_{i:03d}.png", normalization)
            for i in range(count)
        ]


def _write_overlay(model, item: dict, output_dir: Path, name: str, normalization: PixelNormalization) -> str:
    """`write_overlays` of one example ``item``, saved as ``output_dir/overlays/name``: its path relative to
    ``output_dir``."""
    device = model_device(model)
    id2label = model.config.id2label
    pixel_values = item["pixel_values"][None].to(device)
    class_labels = item["class_labels"][None].to(device)
    cam_labels, cams = image_pseudo_labels(model, pixel_values, class_labels, use_rfm=False)
    rfm_labels, _ = image_pseudo_labels(model, pixel_values, class_labels, use_rfm=True)
    pred = predict_labels(model, pixel_values, tuple(item["labels"].shape))
    image = normalization.denormalize(item["pixel_values"]).permute(1, 2, 0).cpu().numpy()
    figure = overlay_figure(
        image,
        {
            "ground truth": item["labels"],
            "CAM pseudo labels": cam_labels[0],
            "RFM pseudo labels": rfm_labels[0],
            "prediction": pred[0],
        },
        id2label,
        cams=present_class_cams(cams[0], item["class_labels"], id2label),
        ignore_index=model.config.semantic_loss_ignore_index,
    )
    return save_overlay(figure, output_dir / "overlays" / name).relative_to(output_dir).as_posix()

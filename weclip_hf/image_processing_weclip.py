"""WeCLIP image processor: normalization, long-side resize, padding, post-processing.

Order of operations (the official evaluation's): read the pixels as float 0-255 values -> rescale and
normalize with `weclip_hf.normalization.PixelNormalization` (``(x - mean / f) / (std / f)`` with ``f =
rescale_factor``, in float64, rounded once to float32: the official formula and constants with the ImageNet
statistics on 0-255 pixels when ``f = 1/255``; the training and evaluation datasets use the same) -> bilinear
resize of the normalized tensor (align_corners=False, no antialiasing: see below) so the long side is
``size["longest_edge"]`` (int truncation of the other side, at least 1 px), or the short side
``size["shortest_edge"]`` (transformers' short-side resize), or to a fixed ``{"height", "width"}`` (an int
``size`` n is n x n, as transformers reads it) -> zero padding (after normalization) at the bottom/right up to
one patch in each dimension, and with ``do_pad`` to a multiple of the patch size.
``post_process_semantic_segmentation`` crops that padding away again, so masks always have the input size (given
the call's ``do_resize``/``size``/``do_pad`` when they differ from the instance's).

The resize is `F.interpolate`'s bilinear without antialiasing, as the official evaluation's: each output pixel
reads the 4 input pixels around it, so a photo much larger than the target aliases fine texture, where
transformers' processors antialias (PIL's filters; torchvision's antialias=True). To antialias, shrink
the photo first, e.g. ``PIL.ImageOps.contain(image, (512, 512), PIL.Image.Resampling.BICUBIC)``, at the cost
of the official numbers.

Inputs are read by `weclip_hf.image_reading` (PIL images in any mode, NumPy arrays and torch tensors HWC or
CHW, file paths, URLs and base64 strings -> 0-255 RGB values; the rules are in its docstring). The processor takes
one image, a list of images (a list of lists flattened one level, as transformers' processors), or a 4-D array or
tensor as a batch ([B, C, H, W] or [B, H, W, C]: each image read by those rules).

``do_rescale=False`` means the input is already rescaled (transformers' meaning): the values are used as
given (no 0-255 reading, no [0, 1] guess, no range check) and normalized with ``image_mean``/``image_std``
directly. ``do_convert_rgb=False`` keeps the channels as given (no gray -> RGB, no alpha dropping); then
``image_mean``/``image_std`` need one value per channel.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature, get_size_dict
from transformers.image_utils import ChannelDimension
from transformers.utils import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME

from .image_reading import (
    UnreadableImageError,
    channel_format,
    image_list,
    image_size,
    label_tensor,
    open_image,
    to_rgb_array,
)
from .inference import resized_size, upsample_cropping_padding, upsampled_labels
from .json_files import read_json, read_json_if_present
from .normalization import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, PixelNormalization


class WeCLIPImageProcessorKwargs(TypedDict, total=False):
    """The options of `WeCLIPImageProcessor`: constructor settings, all but `patch_size` overridable per call."""

    do_resize: bool
    size: dict[str, int]
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: float | Sequence[float]
    image_std: float | Sequence[float]
    do_convert_rgb: bool
    input_data_format: str | ChannelDimension | None
    data_format: str | ChannelDimension | None
    return_tensors: str | None
    do_pad: bool
    ignore_index: int
    patch_size: int
    device: str | torch.device | None


_CALL_OPTIONS = tuple(k for k in WeCLIPImageProcessorKwargs.__annotations__ if k != "patch_size")
# per call only: data_format (the saved settings feed the model, pipeline and Trainer, which take channels first) and
# device (where the returned tensors go; `from_dict` takes none)
_INIT_OPTIONS = tuple(
    k for k in WeCLIPImageProcessorKwargs.__annotations__ if k not in ("data_format", "device")
)
# The largest side a size may give an image (official evaluation: 512; a 16384 x 16384 float image is 3 GB)
MAX_SIZE = 16384
_SIZE_FORMS = ({"longest_edge"}, {"shortest_edge"}, {"height", "width"})
# keys transformers writes into preprocessor_config.json next to the settings (or older versions wrote), which
# loading passes back to the constructor
_CONFIG_METADATA = ("image_processor_type", "processor_class", "feature_extractor_type", "auto_map")
# keys of other processors' configs that change the class ids of segmentation maps, which WeCLIP does not apply
_LABEL_REDUCTION_KEYS = ("do_reduce_labels", "reduce_labels")


def processor_settings(config) -> dict[str, int]:
    """The settings a model's processor takes from the model's config (a `WeCLIPConfig`): the CLIP patch size and
    the ignored label id (``semantic_loss_ignore_index``, what ``labels`` are padded with), so that a processor
    built or saved with a model matches it: ``WeCLIPImageProcessor(**processor_settings(model.config))``."""
    return {"patch_size": config.vision_config.patch_size, "ignore_index": config.semantic_loss_ignore_index}


# keywords of transformers' loaders that reach `from_dict` without being processor options: dropped, as transformers
# drops them (``trust_remote_code=True`` given to the class itself, ``use_fast`` / ``backend`` of the fast processors)
_LOADER_KEYWORDS = frozenset({"trust_remote_code", "use_fast", "backend"})


def _public(kwargs: dict) -> dict:
    """``kwargs`` without transformers' internal loading markers (``_from_auto``, ...) and loader keywords."""
    return {k: v for k, v in kwargs.items() if not k.startswith("_") and k not in _LOADER_KEYWORDS}


def _refuse_unknown(where: str, given, valid: Sequence[str]) -> None:
    """TypeError naming the keywords of ``given`` that are not in ``valid`` (for typos such as ``image_means``)."""
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise TypeError(f"{where} got unknown argument(s) {unknown}; valid: {list(valid)}.")


def _refuse_cropping_size(own_type: str, config: dict, overrides: dict) -> None:
    """ValueError for a loaded config of another processor type that center-crops (``do_center_crop``; without
    that key, a ``crop_size``) when no ``size`` override is given (see `WeCLIPImageProcessor.from_dict`)."""
    other = config.get("image_processor_type") not in (None, own_type)
    crops = config.get("do_center_crop", "crop_size" in config)
    if other and crops and "size" in config and overrides.get("size") is None:
        raise ValueError(
            f"This preprocessor config is {config['image_processor_type']}'s: its size {config['size']!r} goes "
            f"with its center crop to {config.get('crop_size')!r}, which WeCLIP does not do (another processor's "
            "size: loading its config, give size={'longest_edge': 512}, or the size to use, to from_pretrained; "
            "its statistics are kept)."
        )


def _refuse_label_reduction(processor: BaseImageProcessor) -> None:
    """ValueError when ``processor`` carries another processor's label reduction (``do_reduce_labels``, formerly
    ``reduce_labels``: kept from a loaded ADE20k config), which it does not apply to segmentation maps."""
    for key in _LABEL_REDUCTION_KEYS:
        if getattr(processor, key, False):
            raise ValueError(
                f"This processor has {key}=True (from another processor's config): that maps label 0 to 255 and "
                "the other class ids down by one, which WeCLIP does not do, so these segmentation maps would be "
                f"used unreduced. Reduce the labels yourself and set processor.{key} = False (or load with "
                f"{key}=False)."
            )


def _output_logits(outputs) -> torch.Tensor:
    """The logits of a model output: a `ModelOutput` or dict (``logits``), the tuple of ``return_dict=False``
    without a loss (logits first), or [B, num_labels, h, w] logits themselves (`weclip_hf.inference`'s)."""
    if isinstance(outputs, torch.Tensor):
        if outputs.ndim != 4:
            raise ValueError(
                f"Expected [B, num_labels, h, w] logits, got a tensor of shape {tuple(outputs.shape)}."
            )
        return outputs
    if hasattr(outputs, "logits"):
        return outputs.logits
    if isinstance(outputs, dict):
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        if outputs[0].ndim != 4:
            raise ValueError(
                "The first item of this output tuple is not [B, num_labels, h, w] logits (a loss comes first when "
                "one was computed): pass the model output itself (return_dict=True) or its logits."
            )
        return outputs[0]
    raise TypeError(
        f"Expected a model output, a dict with 'logits', a tuple or logits, got {type(outputs).__name__}."
    )


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}.")
    return bool(value)


def _statistics(name: str, value) -> list[float]:
    """image_mean / image_std: a number or a sequence of numbers -> list of floats."""
    try:
        values = [value] if isinstance(value, numbers.Real) else list(value)
    except TypeError:
        values = []
    if not values or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be a number or a sequence of finite numbers, got {value!r}.")
    if name == "image_std" and any(v <= 0 for v in values):
        raise ValueError(f"image_std values must be positive, got {value!r}.")
    return [float(v) for v in values]


def _check_statistics_fit(image_mean: list[float], image_std: list[float], channels: int) -> None:
    """ValueError naming ``image_mean`` / ``image_std`` as given when they do not fit images of ``channels``
    channels (one value, or one per channel)."""
    if len(image_mean) not in (1, channels) or len(image_std) not in (1, channels):
        raise ValueError(
            f"image_mean {image_mean} and image_std {image_std} do not fit images of {channels} channel(s): give "
            "one value, or one per channel. The processor's do_convert_rgb (on by default) makes every image "
            "3-channel RGB."
        )


def _target_sizes(target_sizes) -> list[tuple[int, int]]:
    """``target_sizes`` of post-processing (a list of (height, width), or a [B, 2] tensor) -> (height, width) pairs
    of positive ints; a single pair for a whole batch, or anything else, is refused with what to pass."""
    if isinstance(target_sizes, (torch.Tensor, np.ndarray)):
        target_sizes = target_sizes.tolist()
    hint = "target_sizes holds one (height, width) per image, e.g. [(480, 640)] for one image"
    entries = list(target_sizes) if isinstance(target_sizes, (list, tuple)) else None
    if entries and all(isinstance(v, numbers.Number) for v in entries):
        raise ValueError(f"{hint}; got the single pair {tuple(entries)!r}: wrap it in a list.")
    sizes = []
    for entry in entries if entries is not None else [target_sizes]:
        pair = tuple(entry) if isinstance(entry, (list, tuple, torch.Size)) else ()
        if len(pair) != 2 or not all(isinstance(v, numbers.Number) and int(v) == v and v >= 1 for v in pair):
            raise ValueError(f"{hint}; got {entry!r}.")
        sizes.append((int(pair[0]), int(pair[1])))
    return sizes


def _label_maps(segmentation_maps, image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """``segmentation_maps`` of a call (one map: an image, a path, a 2-D array or an [H, W, 1] one; several: a list
    or a 3-D [B, H, W] array, whose first axis counts the images) -> one int64 [H, W] map per image, each of its
    image's size ``image_sizes``."""
    array = isinstance(segmentation_maps, (np.ndarray, torch.Tensor))
    shape = tuple(segmentation_maps.shape) if array else ()
    if len(shape) == 3 and shape[-1] == 1 and shape[0] != len(image_sizes):
        # one map with a channel axis, not a batch of H maps
        segmentation_maps = segmentation_maps[..., 0]
    several = isinstance(segmentation_maps, (list, tuple)) or (array and segmentation_maps.ndim == 3)
    maps = [label_tensor(m) for m in (segmentation_maps if several else [segmentation_maps])]
    if len(maps) != len(image_sizes):
        raise ValueError(f"Got {len(image_sizes)} images but {len(maps)} segmentation maps (one per image).")
    for i, (label, size) in enumerate(zip(maps, image_sizes)):
        if tuple(label.shape) != tuple(size):
            raise ValueError(
                f"Segmentation map {i} is {tuple(label.shape)} (height, width) but its image is {tuple(size)}: a "
                "map gives the class of each pixel of its image, at the image's size."
            )
    return maps


class WeCLIPImageProcessor(BaseImageProcessor):
    r"""Image processor for WeCLIP.

    Every argument is a constructor setting (saved with ``save_pretrained``) and, except ``patch_size``, can be
    overridden per call of ``preprocess``/``__call__`` (give ``do_resize``, ``size`` and ``do_pad`` overridden there
    to ``post_process_semantic_segmentation`` too); an unknown keyword raises a TypeError, in the constructor and
    per call. Loading (``from_pretrained``, ``from_dict``, ``from_json_file``) keeps the keys of other processors'
    configs as attributes instead, as transformers does.

    Args:
        do_resize (`bool`): resize (default True).
        size (`dict` or `int`): ``{"longest_edge": 512}`` (official evaluation: the long side, aspect kept),
            ``{"shortest_edge": s}`` (the short side, aspect kept, as CLIP's and other transformers processors) or
            ``{"height": h, "width": w}``. An int n means ``{"height": n, "width": n}`` and a pair (h, w) means
            ``{"height": h, "width": w}``, as transformers' ``get_size_dict`` reads them for processors that keep
            ``default_to_square=True`` (SegFormer's, DPT's, SAM's): a fixed n x n resize that changes the aspect
            ratio, not a long-side one; give ``{"longest_edge": n}`` for that.
        do_rescale (`bool`): read the pixels as 0-255 values and multiply them by ``rescale_factor`` (default
            True); False: the input is already rescaled and used as given (see the module docstring).
        rescale_factor (`float`): 1/255 (default): 0-255 pixels -> [0, 1], where ``image_mean``/``image_std`` apply.
        do_normalize (`bool`): normalize with ``image_mean``/``image_std`` (on rescaled values).
        image_mean, image_std: ImageNet statistics by default (the official code's, on 0-255 pixels);
            pass ``CLIP_MEAN``/``CLIP_STD`` for CLIP's own. `PixelNormalization.from_image_processor` gives
            the same normalization for the training and evaluation datasets (`weclip_hf.normalization`).
        do_convert_rgb (`bool`): convert every image to 3-channel RGB (default True); False keeps the channels.
        input_data_format (`str`): "channels_first" / "channels_last" for arrays and tensors; None guesses
            (see `weclip_hf.image_reading`).
        data_format (`str`): the layout of the returned ``pixel_values``: "channels_first" [B, C, H, W] (default,
            what the model takes) or "channels_last" [B, H, W, C] (for NumPy or other frameworks); ``labels`` are
            [B, H, W] either way. Per call only, not a constructor setting: the saved settings feed the model.
        return_tensors (`str`): None (default) or "pt" give torch tensors, "np" NumPy arrays; per call as a rule
            (the default is not saved, as transformers' processors leave it out).
        do_pad (`bool`): zero-pad (after normalization) at the bottom/right to a multiple of ``patch_size``
            (default False: the model floors the patch grid like the official code). Images smaller than one
            patch are always padded up to one patch.
        ignore_index (`int`): the label id of the ``labels``' padding (default 255), which the loss ignores: the
            model config's ``semantic_loss_ignore_index`` (`processor_settings` gives it), as
            Mask2FormerImageProcessor's ``ignore_index``.
        patch_size (`int`): the CLIP patch size (16); constructor only.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = WeCLIPImageProcessorKwargs
    _valid_processor_keys = ["images", "segmentation_maps", *_CALL_OPTIONS]

    do_resize = True
    size = {"longest_edge": 512}
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = list(IMAGENET_MEAN)
    image_std = list(IMAGENET_STD)
    do_convert_rgb = True
    input_data_format = None
    return_tensors = None
    do_pad = False
    ignore_index = 255
    patch_size = 16

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] = IMAGENET_MEAN,
        image_std: float | Sequence[float] = IMAGENET_STD,
        do_convert_rgb: bool = True,
        input_data_format: str | ChannelDimension | None = None,
        return_tensors: str | None = None,
        do_pad: bool = False,
        ignore_index: int = 255,
        patch_size: int = 16,
        **kwargs,
    ):
        if "data_format" in kwargs:
            raise TypeError(
                "data_format is a per-call option (processor(images, data_format='channels_last')), not a "
                "constructor setting: the saved settings feed the model, which takes channels first."
            )
        _refuse_unknown(f"{type(self).__name__}.__init__", kwargs, [*_INIT_OPTIONS, *_CONFIG_METADATA])
        super().__init__(**kwargs)
        options = self._resolve(
            do_resize=do_resize,
            size=size if size is not None else {"longest_edge": 512},
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
            do_convert_rgb=do_convert_rgb,
            input_data_format=input_data_format,
            return_tensors=return_tensors,
            do_pad=do_pad,
            ignore_index=ignore_index,
        )
        if isinstance(options["input_data_format"], ChannelDimension):
            options["input_data_format"] = options["input_data_format"].value  # JSON-serialisable
        for name in _INIT_OPTIONS:
            if name in options:  # all but patch_size, checked below
                setattr(self, name, options[name])
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}.")
        self.patch_size = patch_size

    @classmethod
    def from_dict(cls, image_processor_dict: dict, **kwargs):
        """transformers' ``from_dict``, but keys of other processors' configs (a CLIP checkpoint's ``crop_size``,
        ``resample``, ...: examples/train.py loads one with ``--image_processor_name_or_path``) are kept as
        attributes, as transformers keeps them, rather than refused like unknown constructor keywords. The size of
        a processor that center-crops (CLIP's short side 224, then a 224 x 224 crop) is refused unless ``size`` is
        given: WeCLIP does not crop, and that size alone would shrink its inputs far below the 512 px it is
        evaluated at. A config that reduces labels (``do_reduce_labels``: SegFormer's and BEiT's ADE20k ones) loads,
        but ``segmentation_maps`` are then refused: WeCLIP would leave them unreduced."""
        if not isinstance(image_processor_dict, dict):
            raise ValueError(
                f"An image processor's config must be a dict, got {image_processor_dict!r:.100}."
            )
        _refuse_cropping_size(cls.__name__, image_processor_dict, kwargs)
        # a per-call option: the pipeline passes its own, which it applies
        device = kwargs.pop("device", None)
        if device is not None and "_from_pipeline" not in kwargs:
            raise TypeError(
                f"{cls.__name__}.from_pretrained got device={device!r}: the processor keeps no device; give it per "
                "call, processor(images, return_tensors='pt', device=...)."
            )
        known = (*_INIT_OPTIONS, *_CONFIG_METADATA)
        foreign = {k: v for k, v in image_processor_dict.items() if k not in known}
        foreign.update({k: kwargs.pop(k) for k in list(kwargs) if k in foreign})  # overrides of those keys
        own = {k: v for k, v in image_processor_dict.items() if k in known}
        return_unused = kwargs.pop("return_unused_kwargs", False)
        processor, unused = super().from_dict(own, **kwargs, return_unused_kwargs=True)
        if not return_unused and "_from_pipeline" not in unused:  # a pipeline passes its model's kwargs too
            # transformers drops unknown keywords (a typo such as do_pading=True) without a word
            _refuse_unknown(
                f"{cls.__name__}.from_pretrained", _public(unused), _INIT_OPTIONS
            )  # the settings (data_format is a per-call option, refused by the constructor)
        for name, value in foreign.items():
            setattr(processor, name, value)
        return (processor, unused) if return_unused else processor

    @classmethod
    def from_saved_or_default(
        cls,
        source: str | Path | None,
        patch_size: int = 16,
        on_missing: Callable[[], None] | None = None,
        **overrides,
    ) -> WeCLIPImageProcessor:
        """The processor saved with a model (``source``: its folder or Hub id), else (no ``source``, or none saved
        there: ``on_missing`` is called, by default a warning, since the model may have been trained with other sizes
        or statistics, e.g. a `Trainer` checkpoint without ``processing_class``) the default one; either with the
        model's ``patch_size`` and ``overrides``."""
        if source:
            try:
                return cls.from_pretrained(source, patch_size=patch_size, **overrides)
            except OSError:  # no preprocessor_config.json
                if on_missing is not None:
                    on_missing()
                else:
                    warnings.warn(
                        f"{source} holds no image processor (preprocessor_config.json): using the default "
                        "WeCLIPImageProcessor (ImageNet statistics, long side 512); if the model was trained with "
                        "other sizes or statistics, save its processor in the folder.",
                        stacklevel=2,
                    )
        return cls(patch_size=patch_size, **overrides)

    @classmethod
    def from_json_file(cls, json_file: str | Path):
        """A processor from a preprocessor_config.json file (`read_json`), through `from_dict` (so other processors'
        keys load)."""
        return cls.from_dict(read_json(json_file, expect=dict))

    @classmethod
    def get_image_processor_dict(cls, pretrained_model_name_or_path: str | Path, **kwargs):
        """transformers' ``get_image_processor_dict``, the processor configs of a local folder (or the file given)
        read by `read_json` first: one nesting past Python's parser, holding a key twice, NaN or no JSON object, or
        a folder or FIFO in its place, is refused naming it (transformers raised a RecursionError, took the last
        of two values, or said there was no processor)."""
        given = Path(pretrained_model_name_or_path)
        folder = given / (kwargs.get("subfolder") or "")
        if given.is_file():
            read_json(given, expect=dict)
        elif folder.is_dir():
            for name in (kwargs.get("image_processor_filename") or IMAGE_PROCESSOR_NAME, PROCESSOR_NAME):
                read_json_if_present(folder / name, expect=dict)
        return super().get_image_processor_dict(pretrained_model_name_or_path, **kwargs)

    def _resolve(self, **overrides) -> dict:
        """Call-time options (None = the instance's setting) -> validated values of all `_CALL_OPTIONS`."""
        _refuse_unknown(f"{type(self).__name__}.preprocess", overrides, _CALL_OPTIONS)
        opts = {
            name: getattr(self, name, None) if overrides.get(name) is None else overrides[name]
            for name in _CALL_OPTIONS
        }
        opts["data_format"] = overrides.get("data_format") or ChannelDimension.FIRST  # per call only
        opts["device"] = overrides.get("device")
        if opts["device"] is not None and opts["return_tensors"] == "np":
            raise ValueError(
                f"device={opts['device']!r} moves the returned torch tensors: give return_tensors='pt' with it "
                f"(got return_tensors={opts['return_tensors']!r})."
            )
        for name in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb", "do_pad"):
            opts[name] = _check_bool(name, opts[name])
        opts["size"] = self._check_size(opts["size"])
        index = opts["ignore_index"]
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ValueError(
                f"ignore_index must be an integer label id (the model config's semantic_loss_ignore_index), got "
                f"{index!r}."
            )
        opts["ignore_index"] = int(index)
        factor = opts["rescale_factor"]
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 0 < factor < math.inf:
            raise ValueError(f"rescale_factor must be a positive number, got {factor!r}.")
        opts["image_mean"] = _statistics("image_mean", opts["image_mean"])
        opts["image_std"] = _statistics("image_std", opts["image_std"])
        channel_format(opts["input_data_format"])
        if opts["data_format"] not in (ChannelDimension.FIRST, ChannelDimension.LAST):
            raise ValueError(
                f"data_format must be 'channels_first' or 'channels_last', got {opts['data_format']!r}."
            )
        opts["data_format"] = ChannelDimension(opts["data_format"])
        if opts["return_tensors"] not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {opts['return_tensors']!r}.")
        return opts

    @classmethod
    def _check_size(cls, size) -> dict[str, int]:
        """``size`` -> one of the `_SIZE_FORMS` dicts; an int or a (height, width) pair is read by transformers'
        ``get_size_dict`` with this class's ``default_to_square`` (True, transformers' default: n -> n x n)."""
        given = size
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            size = get_size_dict(int(size), default_to_square=cls.default_to_square)
        elif isinstance(size, (tuple, list)) and len(size) == 2:
            size = get_size_dict(tuple(size))
        if not isinstance(size, dict) or set(size) not in _SIZE_FORMS:
            raise ValueError(
                "size must be an int n (n x n), {'longest_edge': L}, {'shortest_edge': S} or {'height': h, "
                f"'width': w}}, got {size!r}."
            )
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in size.values()):
            raise ValueError(f"size values must be positive integers, got {given!r}.")
        if max(size.values()) > MAX_SIZE:  # a config's 10**9 would allocate terabytes per image
            raise ValueError(f"size values must be at most {MAX_SIZE} pixels, got {given!r}.")
        return {k: int(v) for k, v in size.items()}

    def _padded_size(self, height: int, width: int, do_pad: bool) -> tuple[int, int]:
        """The size after padding: at least one patch, with ``do_pad`` a multiple of ``patch_size``."""
        p = self.patch_size
        height, width = max(height, p), max(width, p)
        if do_pad:
            height, width = -(-height // p) * p, -(-width // p) * p
        return height, width

    def preprocess(
        self,
        images,
        segmentation_maps=None,
        do_resize: bool | None = None,
        size: dict[str, int] | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        do_normalize: bool | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        data_format: str | ChannelDimension | None = None,
        return_tensors: str | None = None,
        do_pad: bool | None = None,
        ignore_index: int | None = None,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Images (one, a list or a list of lists, or a 4-D array/tensor batch; paths, URLs or base64 strings
        among them opened by `open_image`) and optional ``segmentation_maps`` (integer class-id maps, one per
        image; ``ignore_index`` ignored) ->
        ``pixel_values`` [B, C, H', W'] float32 ([B, H', W', C] with ``data_format="channels_last"``; and
        ``labels`` [B, H', W'] int64, resized with nearest neighbour, padding
        ``ignore_index``). Options default to the instance's settings; all images of a batch must end up the same
        size. ``device`` (with ``return_tensors="pt"``): where the returned tensors go."""
        opts = self._resolve(
            do_resize=do_resize,
            size=size,
            do_rescale=do_rescale,
            rescale_factor=rescale_factor,
            do_normalize=do_normalize,
            image_mean=image_mean,
            image_std=image_std,
            do_convert_rgb=do_convert_rgb,
            input_data_format=input_data_format,
            data_format=data_format,
            return_tensors=return_tensors,
            do_pad=do_pad,
            ignore_index=ignore_index,
            device=device,
            **kwargs,
        )
        if segmentation_maps is not None:
            _refuse_label_reduction(self)
        images, single = image_list(images)
        if not images:
            raise ValueError("No images given.")
        normalization = PixelNormalization.from_settings(
            opts["do_rescale"],
            opts["rescale_factor"],
            opts["do_normalize"],
            opts["image_mean"],
            opts["image_std"],
        )
        pixels, original_sizes = [], []
        for index, image in enumerate(images):
            try:
                array = to_rgb_array(
                    open_image(image), opts["input_data_format"], opts["do_rescale"], opts["do_convert_rgb"]
                )
            except UnreadableImageError as err:  # name the file's place in the list too
                raise (err if single else err.within(f"images[{index}]")) from err.__cause__
            original_sizes.append(array.shape[:2])
            if opts["do_normalize"]:
                _check_statistics_fit(opts["image_mean"], opts["image_std"], array.shape[-1])
            x = normalization.normalize(torch.from_numpy(array).permute(2, 0, 1))
            if opts["do_resize"]:
                target = resized_size(*x.shape[-2:], opts["size"])
                if target != tuple(x.shape[-2:]):
                    x = F.interpolate(x[None], size=target, mode="bilinear", align_corners=False)[0]
            pixels.append(x)
        shapes = {tuple(p.shape) for p in pixels}
        if len(shapes) > 1:
            raise ValueError(
                f"Images of one batch end up with different sizes {sorted(shapes)}; process them one by one "
                "or use a fixed size={'height': h, 'width': w} (padding them to one size would change their "
                "logits: every CLIP token attends to the padding). The 'image-segmentation' pipeline takes "
                "images of mixed sizes, batching those of one size."
            )
        size_hw = tuple(pixels[0].shape[-2:])
        padded = self._padded_size(*size_hw, opts["do_pad"])
        pad = (0, padded[1] - size_hw[1], 0, padded[0] - size_hw[0])
        data = {"pixel_values": F.pad(torch.stack(pixels), pad, value=0.0)}
        if opts["data_format"] == ChannelDimension.LAST:
            data["pixel_values"] = data["pixel_values"].permute(0, 2, 3, 1).contiguous()
        if segmentation_maps is not None:
            labels = torch.stack(
                [self._resize_label(m, size_hw) for m in _label_maps(segmentation_maps, original_sizes)]
            )
            data["labels"] = F.pad(labels, pad, value=opts["ignore_index"])
        if opts["return_tensors"] == "np":
            data = {k: v.numpy() for k, v in data.items()}
        batch = BatchFeature(data=data, tensor_type=opts["return_tensors"])
        return batch if opts["device"] is None else batch.to(opts["device"])

    @staticmethod
    def _resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """int64 [H, W] -> [size] (nearest)."""
        if tuple(label.shape) != tuple(size):
            label = F.interpolate(label[None, None].float(), size=tuple(size), mode="nearest")[0, 0].long()
        return label

    def _geometry(self, height: int, width: int, opts: dict) -> tuple[tuple[int, int], tuple[int, int]]:
        """(resized, padded) sizes of an image of (height, width) processed with the geometry options ``opts``
        (do_resize, size, do_pad)."""
        resized = resized_size(height, width, opts["size"]) if opts["do_resize"] else (height, width)
        return resized, self._padded_size(*resized, opts["do_pad"])

    def _logit_grid(self, height: int, width: int, opts: dict) -> tuple[int, int]:
        """The patch grid of an image of (height, width) processed with the geometry options ``opts``."""
        return self._grid_of(self._geometry(height, width, opts)[1])

    def _grid_of(self, padded: tuple[int, int]) -> tuple[int, int]:
        """The patch grid of a padded (height, width)."""
        return padded[0] // self.patch_size, padded[1] // self.patch_size

    def _warn_transposed_target(
        self, index: int, grid: tuple[int, int], target: tuple[int, int], opts: dict
    ) -> None:
        """Warn when the logit ``grid`` of image ``index`` is not that of its ``target`` size but of the transposed
        size: the stored size of an EXIF-turned photo (PIL's ``image.size``), which the processor reads upright."""
        height, width = target
        if grid != self._logit_grid(height, width, opts) and grid == self._logit_grid(width, height, opts):
            warnings.warn(
                f"target_sizes[{index}] {target} looks transposed: the logits ({grid[0]} x {grid[1]}) are those of "
                f"a {width} x {height} (height x width) image. An EXIF-turned photo is read upright, while PIL's "
                "image.size is that of its stored pixels: pass PIL.ImageOps.exif_transpose(image).size[::-1] (or "
                "weclip_hf.image_processing_weclip.image_size(image)), else the mask is stretched to the stored shape.",
                stacklevel=3,
            )

    def _padding(
        self, logits: torch.Tensor, target: tuple[int, int], opts: dict
    ) -> tuple[tuple[int, int], tuple[int, int]] | tuple[None, None]:
        """(resized, padded) sizes of the image whose [K, h, w] ``logits`` are upsampled to ``target`` = its
        original (H, W), when the geometry options ``opts`` (do_resize, size, do_pad) imply padding that the logits
        cover (to crop after upsampling: `upsample_cropping_padding`); else (None, None), a plain upsampling."""
        resized, padded = self._geometry(*target, opts)
        if padded != resized and tuple(logits.shape[-2:]) == self._grid_of(padded):
            return resized, padded
        return None, None

    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes: list[tuple[int, int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
        *,
        do_resize: bool | None = None,
        size: dict[str, int] | None = None,
        do_pad: bool | None = None,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """Logits -> per-image label maps [H, W] (bilinear upsampling to ``target_sizes[i]``, argmax).

        ``target_sizes`` are the original image sizes (what the pipeline passes): padding the processor added
        (to one patch, or with ``do_pad``) is found by replaying the resize and pad of the call that made the
        inputs and cropped away before the upsampling, when the logit grid matches. ``do_resize``, ``size`` and
        ``do_pad`` are that call's options and default to the instance's settings: pass the same ones given to
        the call (``processor(images, size=..., do_pad=True)``), or the padding stays and the mask comes out
        stretched. That mismatch raises no error: the logits cannot tell which options made them, and any
        ``target_sizes`` may be asked for (as in transformers); a target size whose transpose the logit grid fits
        and itself does not is warned of (the ``image.size[::-1]`` of an EXIF-turned PIL photo, which the
        processor reads upright: take it of ``PIL.ImageOps.exif_transpose(image)``). Without ``target_sizes`` the
        maps stay on the logit grid. With ``return_segmentation_scores`` each item is a
        `SemanticSegmentationPostProcessorOutput` with ``segmentation`` [H, W] and ``segmentation_scores``
        [num_labels, H, W] (float32: the logits upsampled in float32, without ``target_sizes`` the logits as they are,
        cast), as SegFormer's processor returns. Without them the label maps (int64, as SegFormer's) are the argmax
        of the same upsampling, exactly, computed a chunk of classes at a time
        (`weclip_hf.inference.upsampled_labels`): a large image never holds all its classes at the full size (81
        classes at 24 MP: 7.8 GB of float32).
        """
        opts = self._resolve(do_resize=do_resize, size=size, do_pad=do_pad)
        logits = _output_logits(outputs)
        if target_sizes is None:  # float32 scores, as those upsampled
            scores = list(logits.float())
        else:
            sizes = _target_sizes(target_sizes)
            if len(sizes) != len(logits):
                raise ValueError(f"Got {len(sizes)} target sizes for a batch of {len(logits)} logits.")
            for index, (x, size) in enumerate(zip(logits, sizes)):
                self._warn_transposed_target(index, tuple(x.shape[-2:]), size, opts)
            padding = [self._padding(x, size, opts) for x, size in zip(logits, sizes)]
            if not return_segmentation_scores:  # class chunk by chunk: never all classes at the full size
                return [
                    upsampled_labels(x[None], size, *pad)[0] for x, size, pad in zip(logits, sizes, padding)
                ]
            scores = [
                upsample_cropping_padding(x[None].float(), size, *pad)[0]
                for x, size, pad in zip(logits, sizes, padding)
            ]
        if not return_segmentation_scores:
            return [s.argmax(dim=0) for s in scores]
        return [
            SemanticSegmentationPostProcessorOutput(
                data={"segmentation": s.argmax(dim=0), "segmentation_scores": s}
            )
            for s in scores
        ]


__all__ = [
    "WeCLIPImageProcessor",
    "WeCLIPImageProcessorKwargs",
    "processor_settings",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CLIP_MEAN",
    "CLIP_STD",
    "image_size",
    "to_rgb_array",
]

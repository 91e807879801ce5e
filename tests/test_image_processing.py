"""WeCLIPImageProcessor: normalization, resize, input modes, labels, post-processing, errors."""

import base64
import io
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED, require_data
from huggingface_hub.utils import httpx
from PIL import Image
from transformers import AutoImageProcessor
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput

from weclip_hf import WeCLIPImageProcessor
from weclip_hf.image_processing_weclip import CLIP_MEAN, CLIP_STD, image_size
from weclip_hf.image_reading import to_rgb_array, to_rgb_uint8
from weclip_hf.inference import longest_edge_size, resize_longest_edge
from weclip_hf.normalization import CLIP_NORMALIZATION, IMAGENET_NORMALIZATION, PixelNormalization

OFFICIAL_MEAN = np.array([123.675, 116.28, 103.53])  # DESIGN.md: the official code's, on 0-255 pixels
OFFICIAL_STD = np.array([58.395, 57.12, 57.375])


def _image(h=30, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _official(array: np.ndarray, mean=OFFICIAL_MEAN, std=OFFICIAL_STD) -> torch.Tensor:
    """uint8 [H, W, 3] -> [3, H, W] as the official pipeline computes it: NumPy float64, rounded once to float32."""
    return torch.from_numpy(((array - mean) / std).astype(np.float32)).permute(2, 0, 1)


def test_official_normalization_and_long_side_resize():
    array = _image(375 // 5, 500 // 5)
    proc = WeCLIPImageProcessor(size={"longest_edge": 512})
    pixels = proc(Image.fromarray(array)).pixel_values
    expected = resize_longest_edge(_official(array)[None], 512)
    assert pixels.shape == (1, 3, 384, 512) == expected.shape
    torch.testing.assert_close(pixels, expected, rtol=0, atol=0)
    assert longest_edge_size(375, 500, 512) == (384, 512)


def test_a_large_photo_is_downscaled_without_antialiasing_as_the_official_evaluation():
    """The official evaluation shrinks a photo to the 512 px long side with F.interpolate's bilinear, which does not
    antialias (transformers' processors do: PIL's filters, torchvision's antialias=True): pinned, as documented."""
    array = _image(900, 1200)
    pixels = WeCLIPImageProcessor()(Image.fromarray(array)).pixel_values
    normalized = _official(array)[None]
    official = F.interpolate(normalized, size=(384, 512), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pixels, official, rtol=0, atol=1e-6)
    antialiased = F.interpolate(
        normalized, size=(384, 512), mode="bilinear", align_corners=False, antialias=True
    )
    assert (pixels - antialiased).abs().max() > 0.5


def test_fixed_size_and_clip_statistics(tmp_path):
    proc = WeCLIPImageProcessor(size={"height": 32, "width": 48}, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    images = [_image(), _image(seed=1)]
    out = proc(images).pixel_values
    assert out.shape == (2, 3, 32, 48) and out.dtype == torch.float32
    # the statistics are CLIP's (x 255 on 0-255 pixels), not the default ImageNet ones
    clip = torch.stack([_official(a, np.array(CLIP_MEAN) * 255, np.array(CLIP_STD) * 255) for a in images])
    torch.testing.assert_close(out, F.interpolate(clip, size=(32, 48), mode="bilinear"), rtol=0, atol=1e-6)
    assert not torch.allclose(
        out, WeCLIPImageProcessor(size={"height": 32, "width": 48})(images).pixel_values
    )
    assert PixelNormalization.from_image_processor(proc) == CLIP_NORMALIZATION
    # and they are what a saved processor (a model folder's) gives back
    proc.save_pretrained(tmp_path)
    loaded = WeCLIPImageProcessor.from_pretrained(tmp_path)
    assert (loaded.image_mean, loaded.image_std) == (list(CLIP_MEAN), list(CLIP_STD))
    assert torch.equal(loaded(images).pixel_values, out)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_pil_modes_are_converted(mode):
    base = Image.fromarray(_image())
    image = (
        base.convert(mode)
        if mode != "I;16"
        else Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    )
    out = WeCLIPImageProcessor(size={"longest_edge": 40})(image).pixel_values
    assert out.shape == (1, 3, 30, 40) and torch.isfinite(out).all()
    # the datasets' and segment.py's uint8 reading (PIL's conversion for 8-bit modes) gives the same values
    uint8 = to_rgb_uint8(image)
    assert uint8.dtype == np.uint8 and uint8.flags.writeable
    assert np.array_equal(uint8, np.clip(to_rgb_array(image) + 0.5, 0, 255).astype(np.uint8))


def test_sixteen_bit_matches_eight_bit():
    gray = np.asarray(Image.fromarray(_image()).convert("L"))
    proc = WeCLIPImageProcessor(size={"longest_edge": 40})
    a = proc(Image.fromarray(gray)).pixel_values
    b = proc(Image.fromarray(gray.astype(np.uint16) * 257)).pixel_values
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode, byte_order", [("I;16", "<"), ("I;16L", "<"), ("I;16B", ">"), ("I;16N", "=")])
def test_every_sixteen_bit_mode_is_read_on_the_sixteen_bit_scale(mode, byte_order):
    """Pillow's 16-bit modes of every byte order ("I;16N": the machine's own) are read as the uint16 array: an
    unlisted one went through PIL's RGB conversion, which clips every value to 255 (50% grey read as white)."""
    gray = np.asarray(Image.fromarray(_image()).convert("L")).astype(np.uint16) * 257
    image = Image.frombytes(mode, (40, 30), gray.astype(f"{byte_order}u2").tobytes())
    assert image.mode == mode
    proc = WeCLIPImageProcessor(size={"longest_edge": 40})
    torch.testing.assert_close(proc(image).pixel_values, proc(gray).pixel_values, rtol=0, atol=1e-5)
    assert np.array_equal(to_rgb_uint8(image), to_rgb_uint8(gray))


@pytest.mark.parametrize("mode, byte_order", [("I;16", "<"), ("I;16L", "<"), ("I;16B", ">"), ("I;16N", "=")])
def test_every_sixteen_bit_label_map_mode_is_read_as_its_ids(mode, byte_order):
    """A 16-bit mask (ids past 255, as COCO-stuff's) opens in any of Pillow's 16-bit modes (a big-endian TIFF as
    "I;16B"): each is read as its ids, where all but "I;16" were refused as not single-channel."""
    ids = np.random.default_rng(1).integers(0, 1200, (30, 40)).astype(np.uint16)
    ids[0, :3] = [255, 256, 65535]
    label = Image.frombytes(mode, (40, 30), ids.astype(f"{byte_order}u2").tobytes())
    assert label.mode == mode
    out = WeCLIPImageProcessor(size={"longest_edge": 40})(_image(), segmentation_maps=label).labels
    assert out.dtype == torch.long and torch.equal(out[0], torch.from_numpy(ids.astype(np.int64)))


def test_a_float_label_map_image_is_read_as_a_float_array_is():
    """A mask in PIL's float mode "F" (a float TIFF) is read as the same float array: whole ids kept, a fractional
    value refused (it was refused as not single-channel whatever its values)."""
    ids = np.random.default_rng(2).integers(0, 300, (30, 40)).astype(np.float32)
    proc = WeCLIPImageProcessor(size={"longest_edge": 40})
    out = proc(_image(), segmentation_maps=Image.fromarray(ids, mode="F")).labels
    assert torch.equal(out[0], torch.from_numpy(ids.astype(np.int64)))
    ids[3, 4] = 0.5
    with pytest.raises(ValueError, match=r"fractional values such as \[0\.5\]"):
        proc(_image(), segmentation_maps=Image.fromarray(ids, mode="F"))


def test_a_label_map_with_channels_is_refused_naming_its_mode():
    with pytest.raises(ValueError, match=r"Label maps must be single-channel .*got mode RGB"):
        WeCLIPImageProcessor()(_image(), segmentation_maps=Image.fromarray(_image()))


def test_a_dark_sixteen_bit_image_is_read_on_the_sixteen_bit_scale():
    """A 16-bit image whose values all lie below 256 is a dark image (as the same uint16 array is), not an 8-bit one:
    one brighter pixel must not change how the rest is read."""
    proc = WeCLIPImageProcessor(size={"longest_edge": 40})
    dark = np.asarray(Image.fromarray(_image()).convert("L")).astype(np.uint16)  # 0-255 of 65535
    brighter = dark.copy()
    brighter[0, 0] = 256
    read = proc(Image.fromarray(dark)).pixel_values
    torch.testing.assert_close(
        read, proc(dark).pixel_values, rtol=0, atol=0.02
    )  # as the uint16 array (8-bit steps)
    assert (read - proc(Image.fromarray(brighter)).pixel_values).abs()[..., 1:, 1:].max() < 0.05
    # 32-bit "I" images carry no range: 0-255 values read as 8-bit
    gray = np.asarray(Image.fromarray(_image()).convert("L"))
    eight = proc(Image.fromarray(gray)).pixel_values
    torch.testing.assert_close(
        proc(Image.fromarray(gray.astype(np.int32))).pixel_values, eight, rtol=0, atol=1e-5
    )


def test_exif_orientation_is_applied():
    image = Image.fromarray(_image(20, 40))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    rotated = Image.open(io.BytesIO(buffer.getvalue()))
    out = WeCLIPImageProcessor(do_resize=False)(rotated).pixel_values
    assert out.shape[-2:] == (40, 20)


def test_post_processing_warns_of_a_target_size_transposed_by_exif(tmp_path):
    """An EXIF-turned photo is read upright, but PIL's ``image.size`` is that of its stored pixels: the usual
    ``target_sizes=[image.size[::-1]]`` without ``exif_transpose`` gave a silently stretched mask of the stored
    shape. The logit grid is that of the transposed size: a warning names the remedy. The upright size, or a
    square image's, warns of nothing."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_image(60, 120)).save(tmp_path / "photo.png", exif=exif)
    photo = Image.open(tmp_path / "photo.png")
    proc = WeCLIPImageProcessor(size={"longest_edge": 64}, patch_size=8)
    logits = torch.zeros(1, 3, *(s // 8 for s in proc(photo).pixel_values.shape[-2:]))  # 8 x 4: upright
    with pytest.warns(UserWarning, match=r"target_sizes\[0\] \(60, 120\) .*transposed.*exif_transpose"):
        assert proc.post_process_semantic_segmentation(logits, [photo.size[::-1]])[0].shape == (60, 120)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert proc.post_process_semantic_segmentation(logits, [image_size(photo)])[0].shape == (120, 60)
        proc.post_process_semantic_segmentation(torch.zeros(1, 3, 8, 8), [(100, 100)])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_gives_the_size_and_pixels_as_read(orientation, tmp_path):
    """image_size (the pipeline's mask size) is the shape the processor reads, EXIF orientation applied, for each
    of the 8 orientations (5-8: transposed or turned a quarter, so height and width swap); to_rgb_uint8 (the
    datasets' and segment.py's reading) turns the image as to_rgb_array does."""
    stored = _image(20, 40)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "photo.png", exif=exif)
    photo = Image.open(tmp_path / "photo.png")
    read = to_rgb_array(photo)
    assert read.shape[:2] == ((40, 20) if orientation >= 5 else (20, 40))
    assert image_size(photo) == image_size(tmp_path / "photo.png") == read.shape[:2]
    assert np.array_equal(to_rgb_uint8(photo), read.astype(np.uint8))


def test_numpy_layouts_tensors_and_floats_agree():
    array = _image()
    proc = WeCLIPImageProcessor(size={"longest_edge": 40})
    ref = proc(array).pixel_values
    torch.testing.assert_close(proc(np.moveaxis(array, -1, 0)).pixel_values, ref)
    torch.testing.assert_close(proc(torch.from_numpy(array)).pixel_values, ref)
    torch.testing.assert_close(proc(array.astype(np.float32) / 255).pixel_values, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 5, 3), np.uint8), "Empty"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.zeros((5, 4, 2), np.uint8), "channels"),  # neither end is a channel count (1, 3, 4)
        (np.zeros((1, 2, 4, 4, 3), np.uint8), "2-D or 3-D"),  # a 4-D array is a batch
        (np.full((4, 4, 3), -3.0, np.float32), r"\[0, 255\]"),
    ],
)
def test_bad_images_raise(image, message):
    with pytest.raises(ValueError, match=message):
        WeCLIPImageProcessor()(image)


@pytest.mark.parametrize(
    "image, kwargs, message",
    [
        # five channels named channels-last: not cut to the first three
        (
            np.zeros((4, 4, 5), np.uint8),
            {"input_data_format": "channels_last"},
            "need 1, 3 or 4 channels, got 5",
        ),
        # already rescaled values are used as given, but never NaN or inf
        (np.full((4, 4, 3), np.inf, np.float32), {"do_rescale": False}, "NaN or infinite"),
    ],
)
def test_bad_images_raise_whatever_the_settings(image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeCLIPImageProcessor()(image, **kwargs)


def test_a_list_mixing_images_and_lists_is_refused():
    """Only a list of lists is flattened (transformers' one level): an image beside a list is not, so the list is
    refused, not the image's rows taken for images."""
    with pytest.raises(TypeError, match="Unsupported image type list"):
        WeCLIPImageProcessor()([_image(), [_image()]])


def test_a_label_map_with_three_axes_is_refused():
    """A mask with channels is refused as not 2-D, not read as a stack of maps."""
    with pytest.raises(ValueError, match=r"Label maps must be 2-D \[H, W\], got shape \(30, 40, 2\)"):
        WeCLIPImageProcessor()([_image()], segmentation_maps=[np.zeros((30, 40, 2), np.uint8)])


@pytest.mark.parametrize("to_tensor", [np.asarray, torch.from_numpy])
def test_boolean_images_are_read_as_0_and_255(to_tensor):
    """The module docstring: bool as 0/255 (a mask shown as an image is black and white, not black and 1/255)."""
    mask = np.zeros((6, 8), bool)
    mask[2:4, 3:7] = True
    read = to_rgb_array(to_tensor(mask))
    assert np.array_equal(read, np.repeat(mask[:, :, None] * 255.0, 3, axis=-1).astype(np.float32))


def test_a_32_bit_image_peaking_at_255_is_read_as_8_bit():
    """32-bit "I" values that fit in 0-255 (255 included) are read as 0-255, not as a dark 0-65535 image."""
    gray = np.arange(256, dtype=np.int32).reshape(16, 16)
    assert np.array_equal(to_rgb_array(Image.fromarray(gray))[..., 0], gray.astype(np.float32))


def test_sixteen_bit_images_round_to_the_nearest_eight_bit_step():
    """A 16-bit PIL image (read through 8 bits) lies within half a step of its uint16 array's reading, for each of
    the 65536 values: truncating would read 32895 (127.996 of 255) as 127."""
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    difference = to_rgb_array(Image.fromarray(values)) - to_rgb_array(values)
    assert np.abs(difference).max() <= 0.5 + 1e-4


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_urls_base64_strings_and_nested_lists_are_read_as_transformers_processors_read_them(monkeypatch):
    """transformers' processors take URLs and base64 strings (``fetch_images``) and nested lists of images
    (``make_flat_list_of_images``, one level): every string was read as a path ("Cannot read file 'iVBORw0KGgo..."),
    a nested list refused ("Unsupported image type list")."""
    array = _image()
    png = _png_bytes(array)
    monkeypatch.setattr(
        httpx,
        "get",
        lambda url, **kwargs: httpx.Response(200, content=png, request=httpx.Request("GET", url)),
    )
    proc = WeCLIPImageProcessor(size={"longest_edge": 40})
    expected = proc(array).pixel_values
    encoded = base64.b64encode(png).decode()
    for image in (encoded, f"data:image/png;base64,{encoded}", "https://example.com/photo.png"):
        torch.testing.assert_close(proc(image).pixel_values, expected, rtol=0, atol=0)
    nested = proc([[array], [Image.fromarray(array), encoded]]).pixel_values
    torch.testing.assert_close(nested, expected.expand(3, -1, -1, -1), rtol=0, atol=0)


def test_labels_resized_nearest_and_padding():
    proc = WeCLIPImageProcessor(size={"longest_edge": 20}, do_pad=True, patch_size=8)
    label = np.zeros((30, 40), np.uint8)
    label[:, 20:] = 3
    label[0] = 255
    out = proc(_image(), segmentation_maps=label)
    assert out.pixel_values.shape == (1, 3, 16, 24) and out.labels.shape == (1, 16, 24)
    assert set(out.labels.unique().tolist()) == {0, 3, 255} and out.labels.dtype == torch.long
    assert (out.labels[0, 15:] == 255).all() and (out.pixel_values[0, :, 15:] == 0).all()  # 15 -> 16 rows


def _truncated_png(folder, name: str = "trunc.png"):
    """A PNG cut after 300 bytes (header intact: it opens, then fails to decode) and an intact one."""
    Image.fromarray(_image(64, 64)).save(folder / "ok.png")
    (folder / name).write_bytes((folder / "ok.png").read_bytes()[:300])
    return str(folder / "ok.png"), str(folder / name)


def test_an_unreadable_file_is_named_with_its_place_in_the_list(tmp_path):
    """PIL's 'image file is truncated' names no file: a service could not tell which input to drop."""
    ok, truncated = _truncated_png(tmp_path)
    proc = WeCLIPImageProcessor()
    with pytest.raises(OSError, match=r"Cannot read file '.*trunc\.png' \(images\[1\]\): OSError: "):
        proc([ok, truncated])
    with pytest.raises(OSError, match=r"Cannot read file '.*trunc\.png': .*truncated") as single:
        proc(truncated)  # an OSError as PIL's (a ValueError as the training data's), the original chained
    assert isinstance(single.value, ValueError) and str(single.value.__cause__) == "image file is truncated"
    with pytest.raises(OSError, match=r"'.*missing\.png' \(images\[0\]\): FileNotFoundError"):
        proc([str(tmp_path / "missing.png"), ok])
    with pytest.raises(OSError, match=r"Cannot read file '.*trunc\.png'"):
        proc(ok, segmentation_maps=truncated)
    assert proc([ok, ok])["pixel_values"].shape[0] == 2


def test_labels_are_padded_with_the_ignore_index(tmp_path):
    """(was: always 255, which a model of another ``semantic_loss_ignore_index`` refused as a class id)"""
    proc = WeCLIPImageProcessor(size={"height": 12, "width": 12}, do_pad=True, patch_size=8, ignore_index=100)
    label = np.zeros((30, 40), np.uint8)
    assert proc(_image(), segmentation_maps=label).labels[0, 12:].unique().tolist() == [100]
    assert proc(_image(), segmentation_maps=label, ignore_index=-1).labels[0, 12:].unique().tolist() == [-1]
    assert WeCLIPImageProcessor(patch_size=8, size=12, do_pad=True)(_image(), segmentation_maps=label).labels[
        0, 12:
    ].unique().tolist() == [255]  # the default
    proc.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["ignore_index"] == 100
    assert WeCLIPImageProcessor.from_pretrained(tmp_path).ignore_index == 100
    with pytest.raises(ValueError, match="ignore_index must be an integer"):
        WeCLIPImageProcessor(ignore_index=True)


def test_mixed_sizes_in_one_batch_raise():
    with pytest.raises(ValueError, match="different sizes"):
        WeCLIPImageProcessor()([_image(30, 40), _image(40, 30)])


def test_post_process_semantic_segmentation():
    proc = WeCLIPImageProcessor()
    logits = torch.zeros(2, 3, 4, 5)
    logits[0, 2] = 1
    logits[1, 1, :, :2] = 5
    maps = proc.post_process_semantic_segmentation(type("O", (), {"logits": logits})(), [(8, 10), (4, 5)])
    assert maps[0].shape == (8, 10) and (maps[0] == 2).all()
    assert maps[1].shape == (4, 5) and (maps[1][:, :2] == 1).all()
    with pytest.raises(ValueError, match="target sizes"):
        proc.post_process_semantic_segmentation({"logits": logits}, [(8, 10)])


def test_save_load_roundtrip(tmp_path):
    proc = WeCLIPImageProcessor(size={"height": 64, "width": 64}, do_pad=True)
    proc.save_pretrained(tmp_path)
    loaded = WeCLIPImageProcessor.from_pretrained(tmp_path)
    assert (
        loaded.size == {"height": 64, "width": 64} and loaded.do_pad and loaded.image_mean == proc.image_mean
    )


def test_voc_mini_real_photo_and_palette_mask():
    root = require_data(SHARED / "data" / "voc-mini", "the voc-mini photos")
    image = Image.open(root / "JPEGImages" / "vainf_0000.jpg")
    mask = Image.open(root / "SegmentationClass" / "vainf_0000.png")
    out = WeCLIPImageProcessor(size={"longest_edge": 320})(image, segmentation_maps=mask)
    ids = set(out.labels.unique().tolist())
    assert 0 in ids and ids <= set(range(21)) | {255}


# ---- the transformers image-processor contract: options, errors, post-processing, padding, layouts ---------------

_RGBA = np.random.default_rng(2).integers(0, 256, (30, 40, 4), dtype=np.uint8)
# HWC 3 x 20 RGBA or CHW 20 x 4 RGB
_AMBIGUOUS = np.random.default_rng(3).integers(0, 256, (3, 20, 4), dtype=np.uint8)


@pytest.mark.parametrize(
    "name, value, image",
    [
        ("do_resize", False, _image()),
        ("size", {"height": 16, "width": 24}, _image()),
        ("size", {"longest_edge": 20}, _image()),
        ("size", {"shortest_edge": 20}, _image()),
        ("size", 24, _image()),
        ("do_rescale", False, _image()),  # 0-255 values taken as already rescaled
        ("rescale_factor", 2 / 255, _image()),
        ("do_normalize", False, _image()),
        ("image_mean", CLIP_MEAN, _image()),
        ("image_std", CLIP_STD, _image()),
        ("do_convert_rgb", False, _image()[..., :1]),
        ("input_data_format", "channels_first", _AMBIGUOUS),
        ("return_tensors", "np", _image()),
        ("do_pad", True, _image(30, 41)),
    ],
)
def test_every_option_can_be_set_at_call_time_or_construction(name, value, image):
    default = WeCLIPImageProcessor(patch_size=8)
    options = {name: value}
    if name == "do_convert_rgb":
        options.update(image_mean=[0.5], image_std=[0.25])  # one statistic per channel of a 1-channel image
    at_call = default(image, **options).pixel_values
    constructed = WeCLIPImageProcessor(patch_size=8, **options)(image).pixel_values
    plain = default(image).pixel_values
    if name == "return_tensors":
        assert isinstance(at_call, np.ndarray) and isinstance(constructed, np.ndarray)
        at_call, constructed = torch.from_numpy(at_call), torch.from_numpy(constructed)
        torch.testing.assert_close(at_call, plain, rtol=0, atol=0)
    else:
        assert plain.shape != at_call.shape or not torch.equal(plain, at_call)  # the option changed something
    torch.testing.assert_close(at_call, constructed, rtol=0, atol=0)
    assert default.to_dict() == WeCLIPImageProcessor(patch_size=8).to_dict()  # the call left no trace


def test_unknown_or_misspelled_options_raise_naming_them():
    proc = WeCLIPImageProcessor()
    for bad in ({"do_center_crop": True}, {"do_normalise": False}, {"patch_size": 8}):
        with pytest.raises(TypeError, match=next(iter(bad))):
            proc(_image(), **bad)
    with pytest.raises(TypeError, match="do_resize"):
        proc(_image(), do_resize="yes")
    for bad, name in [
        ({"size": {"width": 8}}, "size"),
        ({"size": {"longest_edge": 0}}, "size"),
        ({"size": 0}, "size"),
        ({"data_format": "hwc"}, "data_format"),
        ({"rescale_factor": 0}, "rescale_factor"),
        ({"image_mean": [0.5, "a", 0.5]}, "image_mean"),
        ({"image_std": [0.2, 0.0, 0.2]}, "image_std"),
        ({"image_mean": [0.5, 0.5]}, "image_mean"),  # 2 values for 3 channels
        ({"input_data_format": "hwc"}, "input_data_format"),
        ({"return_tensors": "tf"}, "return_tensors"),
    ]:
        with pytest.raises(ValueError, match=name):
            proc(_image(), **bad)
    with pytest.raises(ValueError, match="rescale_factor"):
        WeCLIPImageProcessor(rescale_factor=-1.0)
    # a size of 0 is refused as the processor is built (not only when a resize to it fails)
    for size in ({"longest_edge": 0}, {"height": 0, "width": 8}):
        with pytest.raises(ValueError, match="size values must be positive integers"):
            WeCLIPImageProcessor(size=size)


def test_device_moves_the_returned_tensors_per_call(tmp_path):
    """transformers' processors take ``device`` per call (``processor(images, return_tensors="pt", device="cuda")``):
    it was refused as unknown. It moves pixel_values and labels; it is no setting (given at loading, it was dropped
    without a word: refused, naming the per-call option; the pipeline's own is its business)."""
    proc = WeCLIPImageProcessor(patch_size=8)
    plain = proc(_image(), segmentation_maps=np.zeros((30, 40), np.int64))
    moved = proc(_image(), segmentation_maps=np.zeros((30, 40), np.int64), return_tensors="pt", device="meta")
    assert {moved.pixel_values.device.type, moved.labels.device.type} == {"meta"}
    assert (moved.pixel_values.shape, moved.labels.shape) == (plain.pixel_values.shape, plain.labels.shape)
    with pytest.raises(ValueError, match=r"device='cpu' moves the returned torch tensors: give return_tensors='pt' "
                       r"with it \(got return_tensors='np'\)\."):  # fmt: skip
        proc(_image(), return_tensors="np", device="cpu")
    with pytest.raises(
        TypeError, match=r"WeCLIPImageProcessor.__init__ got unknown argument\(s\) \['device'\]"
    ):
        WeCLIPImageProcessor(device="cpu")
    proc.save_pretrained(tmp_path)
    assert "device" not in json.loads((tmp_path / "preprocessor_config.json").read_text())
    with pytest.raises(TypeError, match=r"from_pretrained got device='cpu': the processor keeps no device; give it "
                       r"per call, processor\(images, return_tensors='pt', device=...\)\."):  # fmt: skip
        AutoImageProcessor.from_pretrained(tmp_path, device="cpu")


def test_the_default_return_tensors_is_not_saved(tmp_path):
    """(was: ``"return_tensors": "pt"`` in every preprocessor_config.json, a per-call option transformers' processors
    leave out of theirs) The default gives torch tensors, takes ``device``, and is not written; a set "np" is, and a
    file of an older version holding "pt" still loads."""
    proc = WeCLIPImageProcessor(patch_size=8)
    assert isinstance(proc(_image()).pixel_values, torch.Tensor)
    assert proc(_image(), device="meta").pixel_values.device.type == "meta"
    proc.save_pretrained(tmp_path)
    assert "return_tensors" not in json.loads((tmp_path / "preprocessor_config.json").read_text())
    WeCLIPImageProcessor(patch_size=8, return_tensors="np").save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["return_tensors"] == "np"
    assert isinstance(WeCLIPImageProcessor.from_pretrained(tmp_path)(_image()).pixel_values, np.ndarray)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**saved, "return_tensors": "pt"}))
    assert isinstance(WeCLIPImageProcessor.from_pretrained(tmp_path)(_image()).pixel_values, torch.Tensor)


def test_every_option_survives_save_and_load(tmp_path):
    options = dict(
        do_resize=True,
        size={"height": 24, "width": 32},
        do_rescale=True,
        rescale_factor=1 / 510,
        do_normalize=True,
        image_mean=[0.4, 0.5, 0.6],
        image_std=[0.2, 0.3, 0.4],
        do_convert_rgb=True,
        input_data_format="channels_last",
        return_tensors="np",
        do_pad=True,
        patch_size=8,
    )
    proc = WeCLIPImageProcessor(**options)
    proc.save_pretrained(tmp_path)
    loaded = WeCLIPImageProcessor.from_pretrained(tmp_path)
    assert {k: getattr(loaded, k) for k in options} == options
    np.testing.assert_array_equal(loaded(_image()).pixel_values, proc(_image()).pixel_values)
    overridden = WeCLIPImageProcessor.from_pretrained(tmp_path, do_pad=False, patch_size=16)
    assert overridden.do_pad is False and overridden.patch_size == 16
    # a misspelt keyword at loading was dropped by transformers without a word (the processor kept padding)
    with pytest.raises(TypeError, match=r"from_pretrained got unknown argument\(s\) \['do_pading'\]") as typo:
        AutoImageProcessor.from_pretrained(tmp_path, do_pading=False)
    assert "'do_pad'" in str(typo.value) and "data_format" not in str(typo.value).replace(
        "input_data_format", ""
    )
    assert WeCLIPImageProcessor.from_pretrained(tmp_path, foo=1, return_unused_kwargs=True)[1] == {"foo": 1}
    # loader keywords that are no processor options pass, as transformers lets them (use_fast: with its notice)
    assert WeCLIPImageProcessor.from_pretrained(tmp_path, trust_remote_code=True, use_fast=False).do_pad


def test_rescale_options_follow_transformers():
    array = _image()
    proc = WeCLIPImageProcessor(do_resize=False)
    unit = array.astype(np.float32) / 255
    # do_rescale=False: the input is already rescaled; normalizing it gives the default result
    torch.testing.assert_close(proc(unit, do_rescale=False).pixel_values, proc(array).pixel_values)
    as_given = proc(array, do_rescale=False, do_normalize=False).pixel_values[0]
    torch.testing.assert_close(as_given, torch.from_numpy(array).permute(2, 0, 1).float())
    rescaled = proc(array, do_normalize=False).pixel_values[0]
    torch.testing.assert_close(rescaled, torch.from_numpy(unit).permute(2, 0, 1))
    doubled = proc(array, rescale_factor=2 / 255, do_normalize=False).pixel_values[0]
    torch.testing.assert_close(doubled, 2 * rescaled)


def test_float_images_just_above_one_count_as_unit_range():
    array = _image()
    proc = WeCLIPImageProcessor(size={"longest_edge": 40})
    ref = proc(array).pixel_values
    unit = array.astype(np.float32) / 255
    unit[0, 0, 0] = np.float32(1.0000001)  # rounding noise of a [0, 1] image
    torch.testing.assert_close(proc(unit).pixel_values[..., 1:, 1:], ref[..., 1:, 1:], rtol=1e-5, atol=1e-5)
    white = proc(np.full((30, 40, 3), 255, np.uint8)).pixel_values
    assert proc(np.full((30, 40, 3), 1.0005, np.float32)).pixel_values.allclose(white)
    dark = np.full((30, 40, 3), 2.0, np.float32)  # 0-255 values
    assert proc(dark).pixel_values.allclose(proc(dark.astype(np.uint8)).pixel_values)


@pytest.mark.parametrize("high", [1.002, 1.068, 1.9])
def test_float_images_between_one_and_two_are_refused_as_ambiguous(high):
    """A [0, 1] image that overshoots 1 a little (bicubic resizing) was read as 0-255 values, almost black, and
    segmented as background without a word; no rule tells it from a black 0-255 image."""
    unit = _image().astype(np.float32) / 255
    unit[0, 0, 0] = high
    with pytest.raises(ValueError, match=f"Float pixel values up to {high:.4g} are ambiguous.*np.clip"):
        WeCLIPImageProcessor()(unit)


def test_channel_axis_rule_and_input_data_format():
    proc = WeCLIPImageProcessor(do_resize=False, patch_size=2)
    hwc = np.moveaxis(_AMBIGUOUS, 0, -1)  # [20, 4, 3]: unambiguous
    ref = proc(hwc).pixel_values
    assert ref.shape == (1, 3, 20, 4)
    torch.testing.assert_close(proc(torch.from_numpy(_AMBIGUOUS)).pixel_values, ref)  # tensors: CHW first
    assert proc(_AMBIGUOUS).pixel_values.shape == (1, 3, 3, 20)  # arrays: channels last (RGBA, alpha dropped)
    torch.testing.assert_close(proc(_AMBIGUOUS, input_data_format="channels_first").pixel_values, ref)
    as_hwc = proc(torch.from_numpy(_AMBIGUOUS), input_data_format="channels_last").pixel_values
    torch.testing.assert_close(as_hwc, proc(_AMBIGUOUS).pixel_values)
    assert proc(np.zeros((3, 20, 2), np.uint8)).pixel_values.shape == (1, 3, 20, 2)  # only the first end fits
    assert image_size(torch.from_numpy(_AMBIGUOUS)) == (20, 4) and image_size(_AMBIGUOUS) == (3, 20)


def test_do_convert_rgb_false_keeps_the_channels():
    proc = WeCLIPImageProcessor(do_resize=False)
    out = proc(_RGBA, do_convert_rgb=False, image_mean=[0.0] * 4, image_std=[1.0] * 4).pixel_values
    torch.testing.assert_close(out[0], torch.from_numpy(_RGBA).permute(2, 0, 1).float() / 255)
    gray = proc(_image()[..., 0], do_convert_rgb=False, image_mean=0.5, image_std=0.5).pixel_values
    assert gray.shape == (1, 1, 30, 40)
    pil = proc(Image.fromarray(_RGBA), do_convert_rgb=False, image_mean=[0.5] * 4, image_std=[0.5] * 4)
    assert pil.pixel_values.shape == (1, 4, 30, 40)
    # the default 3-value statistics do not fit a 1-channel image: the error says so and how RGB is kept
    with pytest.raises(
        ValueError, match=r"do not fit images of 1 channel\(s\).*do_convert_rgb \(on by default\)"
    ):
        proc(_image()[..., 0], do_convert_rgb=False)


@pytest.mark.parametrize("height, width", [(1500, 20), (20, 1500), (1, 65), (1, 1), (1, 2000), (7, 9)])
def test_images_smaller_than_a_patch_are_padded_to_one(height, width):
    proc = WeCLIPImageProcessor(size={"longest_edge": 64}, patch_size=16)
    resized = tuple(max(1, s) for s in longest_edge_size(height, width, 64))
    label = np.ones((height, width), np.uint8)
    out = proc(np.full((height, width, 3), 255, np.uint8), segmentation_maps=label)
    expected = tuple(max(16, s) for s in resized)
    assert out.pixel_values.shape == (1, 3, *expected) and out.labels.shape == (1, *expected)
    h, w = resized
    assert (out.pixel_values[0, :, :h, :w] > 1).all() and (out.pixel_values[0, :, h:] == 0).all()
    assert (out.pixel_values[0, :, :, w:] == 0).all()
    assert (out.labels[0, :h, :w] == 1).all()
    assert (out.labels[0, h:] == 255).all() and (out.labels[0, :, w:] == 255).all()


def test_post_process_crops_the_padding_before_upsampling():
    proc = WeCLIPImageProcessor(size={"longest_edge": 40}, do_pad=True, patch_size=8)
    assert proc(_image(40, 12)).pixel_values.shape[-2:] == (40, 16)  # 12 columns of image, 4 of padding
    logits = torch.zeros(1, 3, 5, 2)
    logits[:, 1, :, 0] = 1  # the first patch column (pixels 0-7) is class 1, the second (8-15) class 2
    logits[:, 2, :, 1] = 1
    (labels,) = proc.post_process_semantic_segmentation({"logits": logits}, target_sizes=[(40, 12)])
    assert labels.shape == (40, 12)
    assert (labels[:, :8] == 1).all() and (labels[:, 8:] == 2).all()  # not 6 / 6 over the 12 columns
    # the same logits from an unpadded processor are stretched over the image
    unpadded = WeCLIPImageProcessor(size={"longest_edge": 40}, patch_size=8)
    (stretched,) = unpadded.post_process_semantic_segmentation({"logits": logits}, target_sizes=[(40, 12)])
    assert (stretched[:, :6] == 1).all() and (stretched[:, 6:] == 2).all()
    # logits of another grid than the padded input's (5 x 2) cover no padding: upsampled plainly, not cropped
    other = torch.randn(1, 3, 5, 3, generator=torch.Generator().manual_seed(0))
    for scores in (False, True):
        plain, cropped = (
            p.post_process_semantic_segmentation(
                {"logits": other}, [(40, 12)], return_segmentation_scores=scores
            )[0]
            for p in (unpadded, proc)
        )
        if scores:
            plain, cropped = plain.segmentation_scores, cropped.segmentation_scores
        assert torch.equal(plain, cropped)


def test_labels_only_upsample_a_chunk_of_classes_at_a_time(monkeypatch):
    """Without the scores, the labels come from upsampling a few classes at a time within the budget (81 classes
    of a 24 MP image held 7.8 GB of float32 at once), sized per image, and equal the scores' argmax exactly
    (padding cropped, ties to the first class); int64, as SegFormer's."""
    from weclip_hf import inference

    proc = WeCLIPImageProcessor(size={"longest_edge": 40}, do_pad=True, patch_size=8)
    logits = torch.randint(0, 3, (2, 7, 5, 2), generator=torch.Generator().manual_seed(0)).float()
    logits[:, 5:] = logits[:, 1:3]  # ties across chunks
    sizes = [(40, 12), (20, 6)]  # both padded to a 16 px wide extent: upsampled to (40, 16), (20, 8)
    scores = proc.post_process_semantic_segmentation(
        {"logits": logits}, sizes, return_segmentation_scores=True
    )
    chunks = []
    upsample = inference.upsample_cropping_padding

    def recording(x, *args):
        chunks.append((x.shape[1], tuple(args[1:])))
        return upsample(x, *args)

    budget = 2 * 4 * 40 * 16  # two classes of the first image, all of the second
    monkeypatch.setattr(inference, "LABELS_CHUNK_BYTES", budget)
    monkeypatch.setattr(inference, "upsample_cropping_padding", recording)
    labels = proc.post_process_semantic_segmentation({"logits": logits}, sizes)
    assert [c for c, _ in chunks] == [2, 2, 2, 1, 7]
    assert all(padding == ((40, 12), (40, 16)) for _, padding in chunks)
    for got, out in zip(labels, scores):
        assert got.dtype == torch.int64 and torch.equal(got, out.segmentation)


def test_segmentation_scores_match_segformer():
    from transformers import SegformerImageProcessorPil
    from transformers.modeling_outputs import SemanticSegmenterOutput

    outputs = SemanticSegmenterOutput(logits=torch.randn(2, 5, 4, 6))
    ours, theirs = WeCLIPImageProcessor(), SegformerImageProcessorPil()
    for target_sizes in (None, [(8, 12), (5, 7)]):
        a = ours.post_process_semantic_segmentation(outputs, target_sizes, return_segmentation_scores=True)
        b = theirs.post_process_semantic_segmentation(outputs, target_sizes, return_segmentation_scores=True)
        maps = ours.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
        for x, y, m in zip(a, b, maps):
            assert isinstance(x, SemanticSegmentationPostProcessorOutput)
            torch.testing.assert_close(x.segmentation_scores, y.segmentation_scores)
            assert torch.equal(x.segmentation, y.segmentation) and torch.equal(x.segmentation, m)
            assert x.segmentation_scores.shape == (5, *m.shape)
    as_tensor = ours.post_process_semantic_segmentation(outputs, torch.tensor([[8, 12], [5, 7]]))
    assert all(torch.equal(x, y) for x, y in zip(as_tensor, maps))


def test_segmentation_scores_of_half_precision_logits_are_float32():
    """bfloat16 logits (a model run in half precision) are upsampled in float32, as the labels are: the scores are
    those of the logits' float32 copy and their argmax is the labels; without target sizes, the logits cast."""
    logits = torch.randn(1, 4, 3, 5, generator=torch.Generator().manual_seed(0)).bfloat16()
    proc = WeCLIPImageProcessor()
    (out,) = proc.post_process_semantic_segmentation(
        {"logits": logits}, [(37, 61)], return_segmentation_scores=True
    )
    (expected,) = proc.post_process_semantic_segmentation(
        {"logits": logits.float()}, [(37, 61)], return_segmentation_scores=True
    )
    assert out.segmentation_scores.dtype == torch.float32
    torch.testing.assert_close(out.segmentation_scores, expected.segmentation_scores, rtol=0, atol=0)
    (labels,) = proc.post_process_semantic_segmentation({"logits": logits}, [(37, 61)])
    assert torch.equal(out.segmentation, labels)
    # (was: bfloat16 without target sizes, float32 with them) the logit grid's scores are float32 too
    (grid,) = proc.post_process_semantic_segmentation({"logits": logits}, return_segmentation_scores=True)
    assert grid.segmentation_scores.dtype == torch.float32
    torch.testing.assert_close(grid.segmentation_scores, logits[0].float(), rtol=0, atol=0)
    assert torch.equal(grid.segmentation, logits[0].float().argmax(dim=0))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64, torch.float32])
def test_label_tensors_raise_no_warnings(dtype):
    label = torch.zeros(30, 40, dtype=dtype)
    label[:, 20:] = 3
    proc = WeCLIPImageProcessor(size={"longest_edge": 32})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = proc(_image(), segmentation_maps=label)
    assert out.labels.dtype == torch.long and set(out.labels.unique().tolist()) == {0, 3}


@pytest.mark.parametrize(
    "value, message",
    [(0.99, r"fractional values such as \[0\.99"), (np.nan, "NaN or infinite"), (np.inf, "NaN or infinite")],
)
@pytest.mark.parametrize("kind", [np.asarray, torch.from_numpy])
def test_float_label_maps_must_hold_whole_numbers(value, message, kind):
    """A float map was cast to ids silently: 0.99 became 0, NaN -9.2e18."""
    label = np.full((30, 40), 3.0, np.float32)
    proc = WeCLIPImageProcessor(size={"longest_edge": 32})
    assert proc(_image(), segmentation_maps=kind(label)).labels.unique().tolist() == [3]
    label[0, :5] = value
    with pytest.raises(
        ValueError, match=rf"Label map is a float map with {message}.*: label maps hold integer class ids"
    ):
        proc(_image(), segmentation_maps=kind(label))


# ---- normalization, defined once (weclip_hf.normalization): the processor's, the datasets', the CRF's ---------------


def test_default_statistics_are_the_official_constants_bit_for_bit():
    """The processor's ImageNet statistics ([0, 1] units) are the official 0-255 constants (57.12, not
    0.224 x 255 = 57.120000000000005), and every uint8 value normalizes as the official code does it."""
    normalization = PixelNormalization.from_image_processor(WeCLIPImageProcessor())
    assert normalization == IMAGENET_NORMALIZATION
    assert normalization.mean == tuple(OFFICIAL_MEAN) and normalization.std == tuple(OFFICIAL_STD)
    every = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=-1)
    pixels = WeCLIPImageProcessor(do_resize=False)(every).pixel_values[0]
    assert torch.equal(pixels, _official(every))


def test_processor_reproduces_the_official_pixel_values_of_the_parity_data():
    """The parity set stores the official pipeline's normalized images next to the uint8 ones."""
    path = require_data(SHARED / "data" / "parity" / "reference.npz", "the official-code parity data")
    with np.load(path) as ref:
        proc = WeCLIPImageProcessor(do_resize=False)
        np.testing.assert_array_equal(
            proc(list(ref["images_uint8"])).pixel_values.numpy(), ref["pixel_values"]
        )
        np.testing.assert_array_equal(
            proc(ref["ns_image_uint8"]).pixel_values.numpy(), ref["ns_pixel_values"]
        )


@pytest.mark.parametrize(
    "normalization", [IMAGENET_NORMALIZATION, CLIP_NORMALIZATION], ids=["imagenet", "clip"]
)
def test_denormalize_gives_back_every_uint8_value(normalization):
    every = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).expand(2, 3, 16, 16)
    normalized = normalization.normalize(every)
    assert normalized.dtype == torch.float32 and torch.equal(normalization.denormalize(normalized), every)
    other = CLIP_NORMALIZATION if normalization is IMAGENET_NORMALIZATION else IMAGENET_NORMALIZATION
    assert not torch.equal(other.denormalize(normalized), every)


@pytest.mark.parametrize("block_values", [1, 100, 10**9], ids=["row-by-row", "uneven-blocks", "one-block"])
def test_normalize_in_blocks_of_rows_is_the_official_arithmetic(block_values, monkeypatch):
    """The float64 temporaries are bounded by computing a block of rows at a time: bit-identical to the
    one-shot official formula, batched or not, whatever the input's strides (HWC arrays read as CHW)."""
    import weclip_hf.normalization as normalization

    monkeypatch.setattr(normalization, "NORMALIZE_BLOCK_VALUES", block_values)
    images = np.stack([_image(13, 7), _image(13, 7, seed=1)])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)  # channels-last strides, as the processor reads them
    out = IMAGENET_NORMALIZATION.normalize(batch)
    expected = torch.stack([_official(a) for a in images])
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert torch.equal(IMAGENET_NORMALIZATION.normalize(batch[1].float()), expected[1])
    # a float64 input (whose float64 rows are views of it) is left as it was, and gradients still reach it
    given = batch[0].double().requires_grad_()
    assert torch.equal(IMAGENET_NORMALIZATION.normalize(given), expected[0])
    assert torch.equal(given.detach(), batch[0].double())
    IMAGENET_NORMALIZATION.normalize(given).sum().backward()
    assert given.grad is not None and torch.isfinite(given.grad).all()


def test_pixel_normalization_checks_its_statistics():
    with pytest.raises(ValueError, match="std positive"):
        PixelNormalization(mean=(0.0,), std=(0.0,))
    with pytest.raises(ValueError, match="image_mean / image_std"):
        PixelNormalization(mean=(1.0, 2.0), std=(1.0,)).normalize(torch.zeros(3, 2, 2))
    rescale_only = PixelNormalization.from_settings(True, 1 / 255, False, CLIP_MEAN, CLIP_STD)
    assert rescale_only == PixelNormalization((0.0,), (255.0,))
    # no statistics at all: refused at construction, not at the first image
    for mean, std in (((), (1.0,)), ((0.0,), ())):
        with pytest.raises(ValueError, match="at least one value"):
            PixelNormalization(mean=mean, std=std)
    # one number for all channels, as transformers' processors take it
    assert PixelNormalization.from_settings(True, 1 / 255, True, 0.5, 0.25) == PixelNormalization(
        (127.5,), (63.75,)
    )
    # denormalize clips to 0-255 (a uint8 cast would wrap around)
    beyond = IMAGENET_NORMALIZATION.normalize(torch.tensor([-40.0, 300.0]).view(1, 2, 1).expand(3, 2, 1))
    assert IMAGENET_NORMALIZATION.denormalize(beyond).view(3, 2).tolist() == [[0, 255]] * 3


def test_crf_predictions_recover_the_image_with_the_processors_statistics(tiny_model, monkeypatch):
    """The CRF sees the original uint8 image when given the normalization the pixels were made with; without
    one, the CRF modes refuse to guess."""
    import weclip_hf.evaluation as evaluation

    image = _image(16, 24)
    pixel_values = CLIP_NORMALIZATION.normalize(torch.from_numpy(image).permute(2, 0, 1))[None]
    seen = {}

    def fake_crf(crf_image, probs, params):
        seen["image"] = crf_image
        return probs.argmax(dim=1)

    monkeypatch.setattr(evaluation, "crf_refine_labels", fake_crf)
    evaluation.predict_labels(tiny_model, pixel_values, (16, 24), crf=True, normalization=CLIP_NORMALIZATION)
    assert torch.equal(seen["image"][0], torch.from_numpy(image).permute(2, 0, 1))
    # labels at another size than the image: the CRF sees the image resized to them as the official code does
    evaluation.predict_labels(tiny_model, pixel_values, (11, 31), crf=True, normalization=CLIP_NORMALIZATION)
    resized = F.interpolate(pixel_values, size=(11, 31), mode="bilinear", align_corners=False)
    assert torch.equal(seen["image"], CLIP_NORMALIZATION.denormalize(resized))
    with pytest.raises(ValueError, match="normalization"):
        evaluation.predict_labels(tiny_model, pixel_values, (16, 24), crf=True)
    with pytest.raises(ValueError, match="normalization"):
        evaluation.evaluate_segmentation(tiny_model, [], ["pred", "pred_crf"], progress=False)


# ---- call-time geometry in post-processing, bfloat16, 4-D batches, error ranges, constructor typos -----------------


def test_bfloat16_tensors_are_read_as_float32():
    image = torch.rand(3, 40, 30)
    proc = WeCLIPImageProcessor(size={"longest_edge": 32})
    expected = proc(image.bfloat16().float()).pixel_values
    torch.testing.assert_close(proc(image.bfloat16()).pixel_values, expected, rtol=0, atol=0)
    assert image_size(image.bfloat16()) == (40, 30)


def test_range_errors_report_the_input_values():
    proc = WeCLIPImageProcessor()
    with pytest.raises(ValueError, match=r"\[-0\.5, -0\.5\]"):
        proc(np.full((8, 8, 3), -0.5, np.float32))
    with pytest.raises(ValueError, match=r"\[-0\.25, 0\.5\]"):
        proc(torch.tensor([[-0.25, 0.5]]))
    with pytest.raises(ValueError, match=r"\[0\.0, 300\.0\]"):
        proc(np.array([[0, 300]], np.int64))


@pytest.mark.parametrize("layout", ["tensor_chw", "tensor_hwc", "numpy_hwc", "numpy_chw"])
def test_four_dimensional_arrays_are_batches(layout):
    images = [_image(40, 30, seed) for seed in range(2)]
    batch = np.stack(images)  # [B, H, W, C]
    if layout.endswith("chw"):
        batch = batch.transpose(0, 3, 1, 2)
    if layout.startswith("tensor"):
        batch = torch.from_numpy(np.ascontiguousarray(batch))
    proc = WeCLIPImageProcessor(size={"longest_edge": 32})
    out = proc(batch, segmentation_maps=np.zeros((2, 40, 30), np.uint8))
    assert torch.equal(out.pixel_values, proc(images).pixel_values)
    assert out.labels.shape == (2, 32, 24)
    gray = torch.rand(2, 1, 40, 30)
    assert torch.equal(proc(gray).pixel_values, proc(list(gray)).pixel_values)
    with pytest.raises(ValueError, match="whole `images` argument"):
        proc([batch])


def test_post_process_takes_the_geometry_options_of_the_call(tiny_model):
    """Options given to the call and to post_process_semantic_segmentation give the mask of an instance built
    with them (the padding cropped, not stretched over the image)."""
    image = _image(100, 70)
    options = {"size": {"longest_edge": 60}, "do_pad": True}
    built = WeCLIPImageProcessor(patch_size=8, **options)
    plain = WeCLIPImageProcessor(patch_size=8)
    with torch.no_grad():
        outputs = tiny_model(**plain(image, **options))
    expected = built.post_process_semantic_segmentation(outputs, target_sizes=[(100, 70)])[0]
    got = plain.post_process_semantic_segmentation(outputs, target_sizes=[(100, 70)], **options)[0]
    assert torch.equal(got, expected)
    # without them the instance's settings apply: the padding is not cropped (the audit's 96.6% agreement)
    stretched = plain.post_process_semantic_segmentation(outputs, target_sizes=[(100, 70)])[0]
    assert (stretched != expected).any()
    # and the instance's own settings stay the default ones
    assert plain.size == {"longest_edge": 512} and plain.do_pad is False
    fixed = {"size": {"height": 20, "width": 13}, "do_pad": True}
    with torch.no_grad():
        outputs = tiny_model(**plain(image, **fixed))
    expected = WeCLIPImageProcessor(patch_size=8, **fixed).post_process_semantic_segmentation(
        outputs, target_sizes=[(100, 70)]
    )[0]
    assert torch.equal(plain.post_process_semantic_segmentation(outputs, [(100, 70)], **fixed)[0], expected)
    no_resize = WeCLIPImageProcessor(patch_size=8, size={"longest_edge": 60}, do_pad=True)
    logits = {"logits": torch.randn(1, 3, 5, 2)}  # a 37 x 12 image unresized, padded to 40 x 16
    expected = WeCLIPImageProcessor(
        patch_size=8, do_resize=False, do_pad=True
    ).post_process_semantic_segmentation(logits, [(37, 12)])[0]
    assert torch.equal(
        no_resize.post_process_semantic_segmentation(logits, [(37, 12)], do_resize=False)[0], expected
    )


def test_post_process_checks_its_geometry_options():
    proc = WeCLIPImageProcessor()
    logits = {"logits": torch.zeros(1, 3, 2, 2)}
    with pytest.raises(ValueError, match="size"):
        proc.post_process_semantic_segmentation(logits, [(8, 8)], size={"shortest_edge": 8, "width": 8})
    with pytest.raises(TypeError, match="do_pad"):
        proc.post_process_semantic_segmentation(logits, [(8, 8)], do_pad="yes")


def test_unknown_constructor_arguments_raise_naming_them():
    with pytest.raises(TypeError, match=r"\['foo', 'image_means'\]"):
        WeCLIPImageProcessor(image_means=[0, 0, 0], foo=3)
    # the keys transformers itself writes into preprocessor_config.json (and older versions wrote) still load
    meta = dict(image_processor_type="WeCLIPImageProcessor", processor_class="X", feature_extractor_type="Y")
    assert WeCLIPImageProcessor(**meta, auto_map={}).image_processor_type == "WeCLIPImageProcessor"


def test_configs_of_other_processors_still_load(tmp_path):
    """A CLIP checkpoint's preprocessor_config.json (crop_size, resample, ...) loads with the size overridden, as
    examples/train.py loads --image_processor_name_or_path; its foreign keys are kept as before."""
    from transformers import CLIPImageProcessor

    CLIPImageProcessor().save_pretrained(tmp_path)
    proc = WeCLIPImageProcessor.from_pretrained(tmp_path, size={"longest_edge": 64}, patch_size=8)
    assert proc.size == {"longest_edge": 64} and proc.crop_size == {"height": 224, "width": 224}
    saved = proc.save_pretrained(tmp_path / "trained")[0]  # what train.py saves with the model
    for loaded in (
        WeCLIPImageProcessor.from_pretrained(tmp_path / "trained"),
        WeCLIPImageProcessor.from_json_file(saved),
    ):
        assert loaded.to_dict() == proc.to_dict()


def test_post_processing_takes_the_tuple_of_return_dict_false(varied_tiny_model):
    """``model(..., return_dict=False)`` gives ``(logits,)`` without labels: post-processing reads it as the
    output; a tuple that starts with a loss is named, not misread. (On labels that vary: a black image gave the
    tiny random model's one class everywhere, which any reading of the tuple matched.)"""
    tiny_model = varied_tiny_model
    processor = WeCLIPImageProcessor(
        size={"longest_edge": 40}, patch_size=tiny_model.config.vision_config.patch_size
    )
    inputs = processor(_image(30, 40))
    with torch.no_grad():
        as_dict = processor.post_process_semantic_segmentation(tiny_model(**inputs), target_sizes=[(30, 40)])
        as_tuple = processor.post_process_semantic_segmentation(
            tiny_model(**inputs, return_dict=False), target_sizes=[(30, 40)]
        )
    assert len(as_dict[0].unique()) > 1
    assert torch.equal(as_dict[0], as_tuple[0])
    with pytest.raises(ValueError, match="a loss comes first"):
        processor.post_process_semantic_segmentation((torch.tensor(1.0), torch.zeros(1, 3, 4, 5)))
    # the logits themselves (weclip_hf.inference.multiscale_flip_logits' result, whose docstring says to pass it)
    logits = tiny_model(**inputs).logits.detach()
    as_logits = processor.post_process_semantic_segmentation(logits, target_sizes=[(30, 40)])
    assert torch.equal(as_dict[0], as_logits[0])
    with pytest.raises(
        ValueError, match=r"Expected \[B, num_labels, h, w\] logits, got a tensor of shape \(3, 4, 5\)"
    ):
        processor.post_process_semantic_segmentation(torch.zeros(3, 4, 5))


def test_from_saved_or_default_loads_the_saved_processor_else_the_default(tmp_path):
    WeCLIPImageProcessor(size={"longest_edge": 48}, image_mean=CLIP_MEAN, patch_size=16).save_pretrained(
        tmp_path
    )
    saved = WeCLIPImageProcessor.from_saved_or_default(tmp_path, 8, do_pad=True)
    assert saved.size == {"longest_edge": 48} and saved.image_mean == list(CLIP_MEAN)
    assert saved.patch_size == 8 and saved.do_pad  # the model's patch size and the overrides win
    missing = []
    empty = tmp_path / "empty"
    empty.mkdir()
    default = WeCLIPImageProcessor.from_saved_or_default(empty, 8, on_missing=lambda: missing.append(1))
    assert missing == [1] and default.patch_size == 8 and default.size == {"longest_edge": 512}
    with pytest.warns(
        UserWarning, match=r"holds no image processor .*: using the default WeCLIPImageProcessor"
    ):
        WeCLIPImageProcessor.from_saved_or_default(empty, 8)  # segment.py read such a folder without a word
    assert WeCLIPImageProcessor.from_saved_or_default(
        None, 14, size={"height": 32, "width": 32}
    ).to_dict() == (WeCLIPImageProcessor(patch_size=14, size={"height": 32, "width": 32}).to_dict())


def test_segmentation_maps_are_resized_by_floor_nearest():
    """Label pixel i of the output reads input pixel floor(i * in / out) ("nearest", as the official code)."""
    label = torch.arange(16).reshape(4, 4)
    out = WeCLIPImageProcessor(size={"longest_edge": 2})(torch.zeros(3, 4, 4), segmentation_maps=label)
    assert out["labels"][0, :2, :2].tolist() == label[::2, ::2].tolist()


def test_one_segmentation_map_for_a_list_of_one_image_and_maps_of_another_size_named():
    proc = WeCLIPImageProcessor(size={"longest_edge": 40})
    image, label = _image(), np.random.default_rng(1).integers(0, 5, (30, 40)).astype(np.uint8)
    expected = proc(image, segmentation_maps=label).labels
    for maps in (label, [label], torch.from_numpy(label)[None]):  # one map, a list, a [1, H, W] batch
        assert torch.equal(proc([image], segmentation_maps=maps).labels, expected)
    with pytest.raises(ValueError, match=r"Got 2 images but 1 segmentation maps \(one per image\)"):
        proc([image, image], segmentation_maps=label)
    with pytest.raises(ValueError, match=r"Segmentation map 1 is \(10, 10\) .* but its image is \(30, 40\)"):
        proc([image, image], segmentation_maps=[label, label[:10, :10]])


def test_one_segmentation_map_with_a_channel_axis_is_one_map():
    """A single [H, W, 1] map (a channel axis, as transformers' processors take it) was read as a batch of H maps:
    "Got 1 images but 30 segmentation maps"."""
    proc = WeCLIPImageProcessor(size={"longest_edge": 40})
    image, label = _image(), np.random.default_rng(1).integers(0, 5, (30, 40)).astype(np.uint8)
    expected = proc(image, segmentation_maps=label).labels
    for one in (label[..., None], torch.from_numpy(label)[..., None]):
        assert torch.equal(proc(image, segmentation_maps=one).labels, expected)
    # a [B, H, W] batch of maps one pixel wide is still a batch: its first axis counts the images
    thin = [_image(30, 1, seed) for seed in range(2)]
    maps = np.stack([label[:, :1], label[:, 1:2]])
    assert proc(thin, segmentation_maps=maps, do_resize=False).labels[:, :30, :1].tolist() == maps.tolist()


def test_statistics_that_do_not_fit_the_channels_are_named_as_given():
    """The error named the statistics in 0-255 pixel units ("mean (127.5, 127.5)"), not the values given."""
    with pytest.raises(
        ValueError, match=r"image_mean \[0\.5, 0\.5\] and image_std \[0\.25, 0\.25\] do not fit images of 3 "
    ):
        WeCLIPImageProcessor(image_mean=[0.5, 0.5], image_std=[0.25, 0.25])(_image())


def test_target_sizes_of_another_form_are_named():
    proc = WeCLIPImageProcessor(size={"longest_edge": 40}, patch_size=8)
    outputs = {"logits": torch.randn(2, 5, 3, 5)}
    assert [
        m.shape for m in proc.post_process_semantic_segmentation(outputs, torch.tensor([[30, 40], [7, 9]]))
    ] == [
        (30, 40),
        (7, 9),
    ]
    for wrong, shown in (((90, 200), r"the single pair \(90, 200\): wrap it in a list"), ([(30, 40), 7], "got 7"),
                         ([(30, 40), (0, 5)], r"got \(0, 5\)"), ([(30, 40), (2.5, 5)], r"got \(2.5, 5\)")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"target_sizes holds one \(height, width\) per image.*{shown}"):
            proc.post_process_semantic_segmentation(outputs, target_sizes=wrong)


def test_a_clip_processor_config_says_which_size_to_give(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224},
                    "crop_size": {"height": 224, "width": 224}, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)})
    )  # fmt: skip
    # its short-side size goes with its center crop, which WeCLIP does not do: that size alone is refused
    with pytest.raises(
        ValueError,
        match=r"CLIPImageProcessor's: its size \{'shortest_edge': 224\} goes with its center crop .*size=",
    ):
        WeCLIPImageProcessor.from_pretrained(tmp_path)
    loaded = WeCLIPImageProcessor.from_pretrained(tmp_path, size={"longest_edge": 512})
    assert loaded.size == {"longest_edge": 512} and loaded.image_mean == list(CLIP_MEAN)


def test_another_processors_label_reduction_is_refused_and_its_crop_size_only_when_it_crops(tmp_path):
    """A SegFormer or BEiT ADE20k config (do_reduce_labels: true) loaded and its labels were silently left
    unreduced; a BEiT config that does not crop (do_center_crop: false, crop_size present) was refused for a center
    crop."""
    ade = {"image_processor_type": "SegformerImageProcessor", "size": {"height": 64, "width": 64},
           "do_reduce_labels": True}  # fmt: skip
    image, label = _image(), np.random.default_rng(1).integers(0, 5, (30, 40)).astype(np.uint8)
    proc = WeCLIPImageProcessor.from_dict(ade)
    # images alone: nothing to reduce
    assert proc(image).pixel_values.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"do_reduce_labels=True .*set processor\.do_reduce_labels = False"):
        proc(image, segmentation_maps=label)
    proc.do_reduce_labels = False
    expected = WeCLIPImageProcessor(size={"height": 64, "width": 64})(image, segmentation_maps=label).labels
    assert torch.equal(proc(image, segmentation_maps=label).labels, expected)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(ade))
    loaded = WeCLIPImageProcessor.from_pretrained(tmp_path, do_reduce_labels=False)
    assert torch.equal(loaded(image, segmentation_maps=label).labels, expected)
    beit = {"image_processor_type": "BeitImageProcessor", "size": {"height": 64, "width": 64},
            "do_center_crop": False, "crop_size": {"height": 32, "width": 32}}  # fmt: skip
    assert WeCLIPImageProcessor.from_dict(beit).size == {"height": 64, "width": 64}
    with pytest.raises(ValueError, match=r"its size .* goes with its center crop to \{'height': 32"):
        WeCLIPImageProcessor.from_dict({**beit, "do_center_crop": True})


def test_an_int_or_pair_size_is_a_fixed_size_as_transformers_reads_it():
    """``size=n`` is n x n and ``size=(h, w)`` is h x w (transformers' ``get_size_dict`` with
    ``default_to_square=True``, as SegFormer's processor reads it), in the constructor and per call."""
    from transformers import SegformerImageProcessor

    image = _image(30, 40)
    proc = WeCLIPImageProcessor(patch_size=8)
    square = proc(image, size={"height": 24, "width": 24}).pixel_values
    assert torch.equal(proc(image, size=24).pixel_values, square)
    assert torch.equal(WeCLIPImageProcessor(size=24, patch_size=8)(image).pixel_values, square)
    assert WeCLIPImageProcessor(size=24).size == {"height": 24, "width": 24}  # saved as a dict
    assert proc(image, size=(16, 40)).pixel_values.shape == (1, 3, 16, 40)
    segformer = SegformerImageProcessor(size=24)
    assert tuple(segformer(image, return_tensors="pt").pixel_values.shape) == tuple(square.shape)


def test_shortest_edge_resizes_the_short_side_as_transformers_does():
    """``{"shortest_edge": s}``: the short side s, the other int-truncated (transformers' short-side resize, e.g.
    SegFormer's given that size); post-processing replays it to crop the padding."""
    from transformers import SegformerImageProcessor

    proc = WeCLIPImageProcessor(size={"shortest_edge": 20}, do_pad=True, patch_size=8)
    for h, w in ((30, 40), (41, 17)):
        image = _image(h, w)
        theirs = SegformerImageProcessor(size={"shortest_edge": 20})(image, return_tensors="pt").pixel_values
        resized = proc(image, do_pad=False).pixel_values
        assert resized.shape == theirs.shape and min(resized.shape[-2:]) == 20
    out = proc(_image(30, 41)).pixel_values
    assert out.shape == (1, 3, 24, 32)  # 20 x 27 padded to multiples of 8
    logits = torch.zeros(1, 2, 3, 4)
    logits[:, 1, :, :3] = 1.0  # class 1 on the image part of the padded 32-px-wide grid
    (mask,) = proc.post_process_semantic_segmentation({"logits": logits}, target_sizes=[(30, 41)])
    assert mask.shape == (30, 41) and (mask[:, :35] == 1).all()


def test_data_format_channels_last_returns_channels_last_pixel_values():
    image = _image(30, 40)
    proc = WeCLIPImageProcessor(size={"longest_edge": 40})
    first = proc(image, segmentation_maps=np.zeros((30, 40), np.uint8))
    last = proc(image, segmentation_maps=np.zeros((30, 40), np.uint8), data_format="channels_last")
    assert last.pixel_values.shape == (1, 30, 40, 3) and last.pixel_values.is_contiguous()
    assert torch.equal(last.pixel_values, first.pixel_values.permute(0, 2, 3, 1))
    assert torch.equal(last.labels, first.labels)  # [B, H, W] either way
    as_numpy = proc(image, data_format="channels_last", return_tensors="np").pixel_values
    np.testing.assert_array_equal(as_numpy, last.pixel_values.numpy())
    assert torch.equal(proc(image, data_format="channels_first").pixel_values, first.pixel_values)
    with pytest.raises(TypeError, match="data_format is a per-call option"):
        WeCLIPImageProcessor(
            data_format="channels_last"
        )  # a saved setting would feed the model channels last
    assert "data_format" not in proc.to_dict()


def test_the_model_names_channels_last_pixel_values(tiny_model):
    pixels = WeCLIPImageProcessor(size={"longest_edge": 32})(
        _image(), data_format="channels_last"
    ).pixel_values
    with pytest.raises(ValueError, match=r"channels last: call the image processor without data_format"):
        tiny_model(pixels)


def test_post_process_crops_the_padding_of_an_unresized_image():
    """With ``do_resize=False`` (the call's or the instance's) the padding replayed is that of the image at its own
    size: a 37 x 12 image padded to 40 x 16 at patch 8 has its second patch column over pixels 8-15, of which 8-11
    are the image's (replaying the instance's resize to a long side of 60 found no padding on this grid, and the
    mask came out stretched, 6 / 6 columns)."""
    logits = torch.zeros(1, 3, 5, 2)
    logits[:, 1, :, 0] = 1  # the first patch column (pixels 0-7) is class 1, the second (8-15) class 2
    logits[:, 2, :, 1] = 1
    resizing = WeCLIPImageProcessor(size={"longest_edge": 60}, do_pad=True, patch_size=8)
    unresized = WeCLIPImageProcessor(do_resize=False, do_pad=True, patch_size=8)
    assert resizing(_image(37, 12), do_resize=False).pixel_values.shape[-2:] == (
        40,
        16,
    )  # the logits' 5 x 2 grid
    for labels in (
        resizing.post_process_semantic_segmentation({"logits": logits}, [(37, 12)], do_resize=False)[0],
        unresized.post_process_semantic_segmentation({"logits": logits}, [(37, 12)])[0],
    ):
        assert labels.shape == (37, 12)
        assert (labels[:, :8] == 1).all() and (labels[:, 8:] == 2).all()


def test_one_mean_and_std_value_normalize_every_channel():
    """``image_mean``/``image_std`` of one value (a number, or a sequence of one) apply to every channel of an RGB
    image, in the constructor and per call (the statistics need one value, or one per channel)."""
    array = _image()
    expected = _official(array, np.full(3, 0.5 * 255), np.full(3, 0.25 * 255))[None]
    proc = WeCLIPImageProcessor(do_resize=False, patch_size=8)
    for got in (
        WeCLIPImageProcessor(do_resize=False, image_mean=0.5, image_std=0.25, patch_size=8)(
            array
        ).pixel_values,
        proc(array, image_mean=0.5, image_std=0.25).pixel_values,
        proc(array, image_mean=[0.5], image_std=(0.25,)).pixel_values,
    ):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_numpy_bools_are_bools_for_the_switches():
    """The switches take NumPy's bools as bools (``(mask > 0).any()`` gives one), not only Python's."""
    proc = WeCLIPImageProcessor(patch_size=8)
    image = _image(30, 41)
    for value in (True, False):
        assert torch.equal(
            proc(image, do_pad=np.bool_(value)).pixel_values, proc(image, do_pad=value).pixel_values
        )
    assert WeCLIPImageProcessor(do_pad=np.bool_(True)).do_pad is True


@pytest.mark.parametrize(
    "options, message",
    [
        ({"rescale_factor": float("inf")}, "rescale_factor must be a positive number"),
        (
            {"image_mean": [0.5, float("nan"), 0.5]},
            "image_mean must be a number or a sequence of finite numbers",
        ),
        ({"image_std": float("inf")}, "image_std must be a number or a sequence of finite numbers"),
        ({"size": {"longest_edge": True}}, "size values must be positive integers"),
        ({"size": {"height": 16, "width": True}}, "size values must be positive integers"),
        ({"patch_size": 0}, "patch_size must be a positive int"),
    ],
)
def test_settings_outside_their_range_are_refused_by_the_constructor(options, message):
    """An infinite rescale_factor (a zero pixel unit), non-finite statistics (NaN pixels), bools as sizes and a
    patch size of 0 are refused as the processor is built, naming the setting."""
    with pytest.raises(ValueError, match=message):
        WeCLIPImageProcessor(**options)


def test_the_former_reduce_labels_key_is_refused_as_do_reduce_labels_is():
    """Older SegFormer/BEiT ADE20k configs name the label reduction ``reduce_labels``: loaded, their segmentation
    maps are refused too (checking only ``do_reduce_labels`` left them unreduced)."""
    old = {"image_processor_type": "SegformerImageProcessor", "size": {"height": 64, "width": 64},
           "reduce_labels": True}  # fmt: skip
    proc = WeCLIPImageProcessor.from_dict(old)
    with pytest.raises(ValueError, match=r"reduce_labels=True .*set processor\.reduce_labels = False"):
        proc(_image(), segmentation_maps=np.zeros((30, 40), np.uint8))


def test_statistics_play_no_part_without_do_normalize():
    """Without ``do_normalize`` the 3-value default statistics do not have to fit a 1-channel image kept as it is
    (``do_convert_rgb=False``): the pixels are only rescaled."""
    gray = _image()[..., :1]
    pixels = WeCLIPImageProcessor(do_resize=False, patch_size=8)(
        gray, do_convert_rgb=False, do_normalize=False
    ).pixel_values
    expected = torch.from_numpy(gray.astype(np.float64) / 255).permute(2, 0, 1)[None].float()
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-7)

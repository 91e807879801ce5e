"""pipeline("image-segmentation") on a saved tiny WeCLIP: any image size, the processor's input conversions, no
"not supported" error, batches of mixed image sizes (WeCLIP and WeCLIP+), and transformers' behaviour unchanged
for other models."""

import base64
import io
import json
import logging
import pickle
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import make_tiny_config, make_tiny_plus_config, with_varied_decoder
from huggingface_hub.utils import httpx
from PIL import Image
from transformers import PretrainedConfig, PreTrainedModel, pipeline
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.pipelines.image_segmentation import ImageSegmentationPipeline
from transformers.utils import logging as hf_logging

from weclip_hf import (
    WeCLIPForSemanticSegmentation,
    WeCLIPImageProcessor,
    WeCLIPImageSegmentationPipeline,
    WeCLIPPlusForSemanticSegmentation,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random WeCLIP (patch 8) whose labels vary across an image (`with_varied_decoder`) and its processor
    (long side 64), saved with save_pretrained."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weclip")
    with_varied_decoder(WeCLIPForSemanticSegmentation(make_tiny_config())).save_pretrained(path)
    WeCLIPImageProcessor(size={"longest_edge": 64}, patch_size=8).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def segmenter(model_dir):
    return pipeline("image-segmentation", model=str(model_dir))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def transformers_logs():
    """Every record transformers logs meanwhile (its loggers do not propagate to pytest's caplog)."""
    handler, root, verbosity = _Records(), hf_logging.get_logger("transformers"), hf_logging.get_verbosity()
    root.addHandler(handler)
    hf_logging.set_verbosity_info()
    yield handler.records
    root.removeHandler(handler)
    hf_logging.set_verbosity(verbosity)


@pytest.mark.parametrize("height, width", [(1500, 20), (20, 1500), (1, 65), (1, 1), (30, 40)])
def test_masks_have_the_input_size_for_any_image(segmenter, height, width):
    array = np.random.default_rng(height + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    for image in (Image.fromarray(array), array, torch.from_numpy(array).permute(2, 0, 1)):
        segments = segmenter(image)
        assert segments and all(s["mask"].size == (width, height) for s in segments)
        union = sum(np.asarray(s["mask"], dtype=np.int64) // 255 for s in segments)
        assert (union == 1).all()  # every pixel in exactly one mask


def _sixteen_bit(gray: np.ndarray, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(gray.astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(gray.astype(np.int32) * 257)
    return Image.fromarray(gray.astype(np.float32) / 255)  # mode "F"


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_pipeline_reads_16_bit_and_float_images_like_the_processor(segmenter, model_dir, mode, tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    image = _sixteen_bit(gray, mode)
    assert image.mode == mode
    processor = WeCLIPImageProcessor.from_pretrained(model_dir)
    expected = processor(Image.fromarray(gray)).pixel_values  # the same picture as 8-bit grayscale
    torch.testing.assert_close(processor(image).pixel_values, expected, rtol=0, atol=1e-5)
    inputs = segmenter.preprocess(image)
    torch.testing.assert_close(inputs["pixel_values"], expected, rtol=0, atol=1e-5)
    assert inputs["target_size"] == [(30, 40)]
    # transformers' own preprocess converts to RGB first: 16-bit images saturate, float ones go black
    stock = ImageSegmentationPipeline.preprocess(segmenter, image)["pixel_values"]
    assert not torch.allclose(stock, expected, atol=1e-3)
    image.save(tmp_path / "image.tif")  # TIFF keeps all three modes
    from_path = segmenter.preprocess(str(tmp_path / "image.tif"))["pixel_values"]
    torch.testing.assert_close(from_path, expected, rtol=0, atol=1e-5)


def test_pipeline_takes_arrays_and_tensors_as_the_processor_does(segmenter, model_dir):
    processor = WeCLIPImageProcessor.from_pretrained(model_dir)
    chw = torch.rand(3, 20, 4)  # ambiguous shape: tensors are read channels-first
    for image in (chw, chw.numpy().transpose(1, 2, 0), np.random.default_rng(1).random((30, 40), np.float32)):
        inputs = segmenter.preprocess(image)
        torch.testing.assert_close(inputs["pixel_values"], processor(image).pixel_values, rtol=0, atol=0)
    assert segmenter.preprocess(chw)["target_size"] == [(20, 4)]
    assert all(s["mask"].size == (4, 20) for s in segmenter(chw))


def test_pipeline_takes_bfloat16_tensors(segmenter):
    image = torch.rand(3, 20, 30)
    expected = segmenter(image.bfloat16().float())
    _assert_same_segments([segmenter(image.bfloat16())], [expected])


def test_an_unreadable_file_is_named(segmenter, tmp_path):
    """A truncated file among a batch's paths raises an error naming it (PIL's names no file)."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8)).save(
        tmp_path / "ok.png"
    )
    (tmp_path / "trunc.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    paths = [str(tmp_path / name) for name in ("ok.png", "trunc.png", "ok.png")]
    with pytest.raises(OSError, match=r"Cannot read file '.*trunc\.png': .*Fix or remove it"):
        segmenter(paths, batch_size=4)
    # a missing file: named as by the processor (it was "neither a URL, an existing file nor a base64 image")
    for missing in (str(tmp_path / "nope.png"), "nope.jpg"):
        with pytest.raises(OSError, match=r"Cannot read file '.*nope\.(png|jpg)': FileNotFoundError"):
            segmenter(missing)
    with pytest.raises(ValueError, match="neither a URL, an existing file nor a base64"):
        segmenter("not an image")


def test_line_wrapped_base64_is_read_and_long_strings_are_named_briefly(segmenter):
    """base64 wrapped at 76 columns (the base64 tool, base64.encodebytes) or ending in a newline was refused and,
    containing '/', read as a missing file, its error quoting the whole string twice (2 million characters for a
    400 x 600 PNG)."""
    array = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    png = buffer.getvalue()
    expected = segmenter.preprocess(Image.fromarray(array))["pixel_values"]
    wrapped, plain = base64.encodebytes(png).decode(), base64.b64encode(png).decode()
    for text in (wrapped, f"{plain}\n", f"data:image/png;base64,{wrapped}"):
        assert torch.equal(segmenter.preprocess(text)["pixel_values"], expected)
    truncated = base64.encodebytes(png[: len(png) // 2]).decode()
    with pytest.raises(
        OSError, match=r"Cannot read base64 image 'iVBOR.{55}'\.\.\. \(\d+ characters\) \(not a URL"
    ) as err:
        segmenter(truncated)
    assert len(str(err.value)) < 400 and "truncated" in str(err.value)
    with pytest.raises(ValueError, match=r"neither a URL, an existing file nor a base64") as err:
        # not base64 (a character short), and no path
        segmenter(plain[:-1])
    assert len(str(err.value)) < 400


def test_a_url_that_cannot_be_read_is_named(segmenter, monkeypatch):
    """Offline, a URL raised httpx's "[Errno -2] Name or service not known" and a 404 page PIL's "cannot identify
    image file <_io.BytesIO ...>", neither naming the URL (httpx mocked: no network)."""
    url = "https://example.invalid/photo_17.jpg"

    def offline(address, **kwargs):
        raise httpx.ConnectError("[Errno -2] Name or service not known")

    def not_found(address, **kwargs):
        return httpx.Response(404, text="<html>Not Found</html>", request=httpx.Request("GET", address))

    def html_page(address, **kwargs):
        return httpx.Response(
            200, text="<html>a page, not an image</html>", request=httpx.Request("GET", address)
        )

    for get, reason in ((offline, "ConnectError: .*Name or service"), (not_found, "HTTPStatusError: .*404"),
                        (html_page, "UnidentifiedImageError")):  # fmt: skip
        monkeypatch.setattr(httpx, "get", get)
        with pytest.raises(OSError, match=rf"Cannot read URL '{url}': {reason}"):
            segmenter([url])
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, "PNG")
    monkeypatch.setattr(httpx, "get", lambda address, **kwargs: httpx.Response(
        200, content=buffer.getvalue(), request=httpx.Request("GET", address)))  # fmt: skip
    assert all(s["mask"].size == (40, 30) for s in segmenter(url))


def test_no_error_is_logged_for_a_weclip_model(model_dir, transformers_logs):
    segmenter = pipeline("image-segmentation", model=str(model_dir))
    assert isinstance(segmenter, WeCLIPImageSegmentationPipeline)
    segmenter(Image.new("RGB", (40, 30), (10, 200, 30)))
    errors = [r.getMessage() for r in transformers_logs if r.levelno >= logging.WARNING]
    assert errors == []
    # control: transformers' own class logs the error this replaces
    pipeline("image-segmentation", model=str(model_dir), pipeline_class=ImageSegmentationPipeline)
    assert any("is not supported for image-segmentation" in r.getMessage() for r in transformers_logs)


def test_building_the_pipeline_looks_for_no_video_processor(model_dir, monkeypatch):
    """A saved folder's preprocessor_config.json names remote code (its auto_map): a look for a video processor
    there would ask on stdin whether to trust it (under pytest the question fails silently). None is looked for."""
    import builtins

    import transformers.pipelines as pipelines

    assert "auto_map" in json.loads((model_dir / "preprocessor_config.json").read_text())
    asked = []

    def refuse(*args, **kwargs):
        asked.append(args)
        raise AssertionError("asked for a video processor")

    monkeypatch.setattr(pipelines.AutoVideoProcessor, "from_pretrained", refuse)
    monkeypatch.setattr(builtins, "input", refuse)
    pipeline("image-segmentation", model=str(model_dir))
    assert asked == []


def test_masks_have_the_size_the_processor_reads_with_its_input_data_format(model_dir):
    """An array whose layout is ambiguous ([3, 40, 3]) is read by the processor's input_data_format: here channels
    first, a 40 x 3 image, and its masks are 40 x 3 (a guess would read 3 x 40 and stretch them)."""
    processor = WeCLIPImageProcessor(
        size={"longest_edge": 64}, patch_size=8, input_data_format="channels_first"
    )
    segmenter = pipeline("image-segmentation", model=str(model_dir), image_processor=processor)
    masks = segmenter(np.random.default_rng(0).integers(0, 256, (3, 40, 3), dtype=np.uint8))
    assert masks and all(m["mask"].size == (3, 40) for m in masks)  # PIL: (width, height)


def test_saved_pipeline_needs_no_remote_code(segmenter, tmp_path):
    segmenter.save_pretrained(tmp_path)
    assert "custom_pipelines" not in json.loads((tmp_path / "config.json").read_text())
    # only the model's code (for trust_remote_code, tests/test_remote_code.py), not the pipeline's
    assert "segmentation_pipeline.py" not in {p.name for p in tmp_path.glob("*.py")}
    assert pipeline("image-segmentation", model=str(tmp_path))(Image.new("RGB", (12, 9)))


TINY_MODELS = {
    "weclip": (WeCLIPForSemanticSegmentation, make_tiny_config),
    "weclip_plus": (WeCLIPPlusForSemanticSegmentation, make_tiny_plus_config),
}


@pytest.fixture(scope="module", params=list(TINY_MODELS))
def any_segmenter(request, tmp_path_factory):
    """The pipeline on a saved tiny random WeCLIP, then WeCLIP+ (processor: long side 64, patch 8), their labels
    varying across an image (`with_varied_decoder`: the freshly drawn WeCLIP+ predicted one class everywhere)."""
    model_class, make_config = TINY_MODELS[request.param]
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(request.param)
    with_varied_decoder(model_class(make_config())).save_pretrained(path)
    WeCLIPImageProcessor(size={"longest_edge": 64}, patch_size=8).save_pretrained(path)
    return pipeline("image-segmentation", model=str(path))


def test_the_padding_of_a_padding_processor_is_cropped_from_the_masks(model_dir):
    """A processor saved with do_pad pads 45 x 61 to 48 x 64 (patch 8): the pipeline's masks are the label map of
    the padded logits upsampled to the padded size and cropped to the image, not stretched over it (docs/usage.md)."""
    model = WeCLIPForSemanticSegmentation.from_pretrained(model_dir).eval()
    processor = WeCLIPImageProcessor(patch_size=8, do_resize=False, do_pad=True)
    image = np.asarray(_noise(45, 61, seed=3))
    segments = pipeline("image-segmentation", model=model, image_processor=processor)(image)
    ids = [model.config.label2id[s["label"]] for s in segments]
    labels = sum(np.asarray(s["mask"], dtype=np.int64) // 255 * i for s, i in zip(segments, ids))
    inputs = processor(image)
    assert inputs["pixel_values"].shape[-2:] == (48, 64)
    with torch.no_grad():
        logits = model(**inputs).logits
    resize = torch.nn.functional.interpolate
    cropped = resize(logits, size=(48, 64), mode="bilinear")[0, :, :45, :61].argmax(0)
    stretched = resize(logits, size=(45, 61), mode="bilinear")[0].argmax(0)
    assert len(segments) > 1 and not torch.equal(cropped, stretched)  # the two readings differ on this image
    np.testing.assert_array_equal(labels, cropped.numpy())


def _noise(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@contextmanager
def _forward_inputs(model):
    """Records the ``pixel_values`` shape of every model forward meanwhile."""
    shapes = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["pixel_values"].shape)), with_kwargs=True
    )
    try:
        yield shapes
    finally:
        handle.remove()


def _assert_same_segments(outputs, expected) -> None:
    """Per image: the same labels, in order, with identical masks; the expected images each of several segments
    (two routes' single-class results agree whatever either route did)."""
    assert len(outputs) == len(expected)
    assert all(len(segments) > 1 for segments in expected), [len(segments) for segments in expected]
    for segments, reference in zip(outputs, expected):
        assert [s["label"] for s in segments] == [s["label"] for s in reference]
        for segment, ref in zip(segments, reference):
            np.testing.assert_array_equal(np.asarray(segment["mask"]), np.asarray(ref["mask"]))


# images 0 and 2 (24 x 40) and 1 and 4 (40 x 24) share their processed size; image 3 (33 x 33) has its own
MIXED_SIZES = [(24, 40), (40, 24), (24, 40), (33, 33), (40, 24)]
# the images each model forward sees: one forward per distinct size within each batch
FORWARDS = {2: [[0], [1], [2], [3], [4]], 3: [[0, 2], [1], [3], [4]]}


@pytest.mark.parametrize("batch_size", [2, 3])
def test_batches_of_mixed_sizes_give_every_image_its_own_result(any_segmenter, batch_size):
    images = [_noise(h, w, seed) for seed, (h, w) in enumerate(MIXED_SIZES)]
    sizes = [tuple(any_segmenter.preprocess(image)["pixel_values"].shape[-2:]) for image in images]
    assert len(set(sizes)) == 3  # the processor keeps the aspect ratios: three different input sizes
    alone = any_segmenter(images, batch_size=1)
    with _forward_inputs(any_segmenter.model) as shapes:
        batched = any_segmenter(images, batch_size=batch_size)
    _assert_same_segments(batched, alone)
    # the model never sees a padded image: each forward gets the images of one size, unpadded
    assert shapes == [(len(group), 3, *sizes[group[0]]) for group in FORWARDS[batch_size]]


def test_batches_of_one_size_run_as_one_forward(any_segmenter):
    images = [_noise(24, 40, seed) for seed in range(4)]
    alone = any_segmenter(images, batch_size=1)
    with _forward_inputs(any_segmenter.model) as shapes:
        batched = any_segmenter(images, batch_size=4)
    _assert_same_segments(batched, alone)
    assert shapes == [(4, 3, 38, 64)]


def test_a_model_loaded_with_return_dict_false_gives_the_same_segments(model_dir, segmenter):
    """``from_pretrained(folder, return_dict=False)`` (tuple outputs): the pipeline's postprocess read the outputs
    by name and failed ("'tuple' object does not support item assignment"), one image or a batch of mixed sizes."""
    model = WeCLIPForSemanticSegmentation.from_pretrained(model_dir, return_dict=False)
    tuples = pipeline("image-segmentation", model=model, image_processor=segmenter.image_processor)
    images = [_noise(h, w, seed) for seed, (h, w) in enumerate(MIXED_SIZES[:2])]
    for batch_size in (1, 2):
        _assert_same_segments(tuples(images, batch_size=batch_size), segmenter(images, batch_size=1))


def test_the_batch_collation_pickles_for_spawned_workers_and_collates_as_transformers(segmenter):
    """DataLoader workers started with 'spawn' (macOS, Windows) pickle the collate function; transformers' is a
    closure ("Can't pickle local object 'pad_collate_fn.<locals>.inner'"): pipeline(images, num_workers=2,
    batch_size=2) failed there."""
    from transformers.pipelines.base import pad_collate_fn

    images = [_noise(24, 40, seed) for seed in range(2)]
    iterator = segmenter.get_iterator(images, 1, 2, {}, {}, {})
    collate = pickle.loads(pickle.dumps(iterator.loader.loader.collate_fn))
    items = [segmenter.preprocess(image) for image in images]
    ours, theirs = collate(items), pad_collate_fn(None, segmenter.image_processor)(items)
    assert ours.keys() == theirs.keys() and ours["target_size"] == theirs["target_size"]
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])


def test_other_models_get_transformers_behaviour(transformers_logs):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessorPil

    config = SegformerConfig(
        num_encoder_blocks=1,
        depths=[1],
        sr_ratios=[1],
        hidden_sizes=[8],
        num_attention_heads=[1],
        patch_sizes=[3],
        strides=[2],
        mlp_ratios=[2],
        decoder_hidden_size=8,
        num_labels=3,
    )
    processor = SegformerImageProcessorPil(size={"height": 32, "width": 32})
    model = SegformerForSemanticSegmentation(config)
    segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
    assert isinstance(segmenter, WeCLIPImageSegmentationPipeline)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8))  # mode "L"
    ours, stock = segmenter.preprocess(image), ImageSegmentationPipeline.preprocess(segmenter, image)
    torch.testing.assert_close(ours["pixel_values"], stock["pixel_values"], rtol=0, atol=0)
    assert ours["target_size"] == stock["target_size"] == [(30, 40)]
    assert all(s["mask"].size == (40, 30) for s in segmenter(image))
    assert not [r for r in transformers_logs if r.levelno >= logging.ERROR]
    with pytest.raises(TypeError, match="Incorrect format"):  # transformers' input rules, not WeCLIP's
        segmenter(np.zeros((30, 40, 3), np.uint8))


class _PixelsOnlySegmenter(PreTrainedModel):
    """A custom (remote-code style) model whose forward takes ``pixel_values`` only, as many do."""

    config_class = PretrainedConfig

    def __init__(self, config):
        super().__init__(config)
        self.conv = torch.nn.Conv2d(3, config.num_labels, 1)
        self.post_init()

    def forward(self, pixel_values):
        return SemanticSegmenterOutput(logits=self.conv(pixel_values))


def test_a_model_whose_forward_takes_only_pixel_values_runs_as_with_transformers():
    """The pipeline is the task's class for every model: it passed ``return_dict=True`` to any model's forward,
    which failed for one without that keyword ("forward() got an unexpected keyword argument 'return_dict'")."""
    from transformers import SegformerImageProcessorPil

    torch.manual_seed(0)
    model = _PixelsOnlySegmenter(PretrainedConfig(num_labels=3))
    processor = SegformerImageProcessorPil(size={"height": 32, "width": 32})
    segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
    stock = pipeline(
        "image-segmentation", model=model, image_processor=processor, pipeline_class=ImageSegmentationPipeline
    )
    assert isinstance(segmenter, WeCLIPImageSegmentationPipeline)
    images = [_noise(30, 40, 0), _noise(20, 20, 1)]
    _assert_same_segments(segmenter(images, batch_size=2), stock(images, batch_size=2))


def test_an_unexpected_pipeline_iterator_layout_is_named(any_segmenter, monkeypatch):
    """Should transformers nest its pipeline iterators differently, mixed-size batching says so instead of
    failing on an attribute deep inside."""
    from transformers.pipelines.image_segmentation import ImageSegmentationPipeline

    monkeypatch.setattr(ImageSegmentationPipeline, "get_iterator", lambda self, *args, **kwargs: iter(()))
    with pytest.raises(RuntimeError, match="pipeline iterator is not laid out as"):
        any_segmenter.get_iterator([], 0, 2, {}, {}, {})


def test_a_processor_of_another_patch_size_is_refused(tiny_model):
    """The processor's padding follows its patch size; one that differs from the model's would leave the padding
    in the masks, so the pipeline refuses the pair."""
    patch = tiny_model.config.vision_config.patch_size
    with pytest.raises(ValueError, match=f"{patch + 1}-px patches but the model's CLIP uses {patch}-px"):
        pipeline(
            "image-segmentation", model=tiny_model, image_processor=WeCLIPImageProcessor(patch_size=patch + 1)
        )
    segmenter = pipeline(
        "image-segmentation", model=tiny_model, image_processor=WeCLIPImageProcessor(patch_size=patch)
    )
    assert segmenter.image_processor.patch_size == patch

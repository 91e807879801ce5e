"""transformers' own PipelineTesterMixin run on WeCLIP and WeCLIP+, offline.

The mixin (from the installed version's sdist, see `transformers_suite.load_pipeline_mixin`) loads each
architecture of ``pipeline_model_mapping`` from ``TRANSFORMERS_TINY_MODEL_PATH/<model_type>/<architecture>``
with ``from_pretrained``, its image processor by the class name of the tiny model summary, builds the task's
pipeline with the task's test class, runs that class's checks and then a batched run of 10 examples in
batches of 4. Here the tiny models are random tiny configs saved into a temporary folder (nothing is
downloaded), and the task's test class, `ImageSegmentationPipelineTests`, is ours: transformers' own one lives
in ``tests/pipelines``, which the sdist does not ship.

Every task but "image-segmentation" is skipped by the mixin itself ("not in `self.pipeline_model_mapping`").
The two image-segmentation tests are redefined here: the mixin gates them on timm (needed by transformers'
DETR / MaskFormer tiny models, not by WeCLIP), and they must not end in a skip: when the mixin skips (a tiny
model or processor that does not load, ...) they fail with the reason; they also fail unless every architecture
went through the checks in the requested dtype.
"""

import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
from conftest import make_tiny_config, make_tiny_plus_config
from huggingface_hub import ImageSegmentationOutputElement
from PIL import Image
from transformers import pipeline
from transformers.pipelines.image_segmentation import ImageSegmentationPipeline
from transformers.testing_utils import compare_pipeline_output_to_hub_spec
from transformers_suite import load_pipeline_mixin

import weclip_hf
from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor, WeCLIPPlusForSemanticSegmentation

TASK = "image-segmentation"
ARCHITECTURES = (WeCLIPForSemanticSegmentation, WeCLIPPlusForSemanticSegmentation)
TINY_CONFIGS = {
    WeCLIPForSemanticSegmentation: make_tiny_config,
    WeCLIPPlusForSemanticSegmentation: make_tiny_plus_config,
}
LONGEST_EDGE = 32  # the tiny processors' resize: 4 x 4 patches of the tiny CLIP at most

_WORKDIR = tempfile.TemporaryDirectory(prefix="weclip-pipeline-tests-")  # removed when the session ends
TINY_MODELS = Path(_WORKDIR.name) / "tiny_models"
IMAGES = Path(_WORKDIR.name) / "images"


def random_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A uniform-noise RGB image of ``height`` x ``width`` converted to ``mode``."""
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


class ImageSegmentationPipelineTests(unittest.TestCase):
    """Our stand-in for transformers' ``tests/pipelines/test_pipelines_image_segmentation.py`` test class.

    It checks what transformers' one checks on every tiny segmentation model (each output a list of
    ``{"score": float | None, "label": str, "mask": PIL image}`` matching the Hub's output spec; a path, RGBA,
    LA and L images; a list of images in batches of 2 giving as many segments per image) and, for a semantic
    segmentation model, that the masks are binary, have the input's size, partition the image and carry the
    model's labels. The mixin creates it and calls `get_test_pipeline`, then `run_pipeline_test`.
    """

    # (architecture, dtype) of each pipeline that passed the checks
    tested: list[tuple[str, torch.dtype]] = []

    def get_test_pipeline(
        self,
        model,
        tokenizer=None,
        image_processor=None,
        feature_extractor=None,
        processor=None,
        dtype: str = "float32",
    ) -> tuple[ImageSegmentationPipeline, list]:
        """The task's pipeline (the class ``pipeline(TASK)`` picks) on ``model`` cast to ``dtype``, and two
        same-size examples (a path and a PIL image) for the mixin's batched run."""
        IMAGES.mkdir(parents=True, exist_ok=True)
        path = IMAGES / "noise_24x40.png"
        random_image(24, 40, seed=1).save(path)
        # a pipeline leaves the dtype of a model instance as it is: cast it, so that "float16" runs in float16
        model = model.to(getattr(torch, dtype))
        segmenter = pipeline(TASK, model=model, tokenizer=tokenizer, image_processor=image_processor)
        return segmenter, [str(path), random_image(24, 40, seed=2)]

    def check_segments(self, segments, image_size: tuple[int, int], labels: set[str]) -> None:
        """One image's segments: the Hub's output spec, binary masks of ``image_size`` (W, H) that partition
        the image, distinct labels of the model."""
        self.assertIsInstance(segments, list)
        self.assertGreaterEqual(len(segments), 1)
        for segment in segments:
            compare_pipeline_output_to_hub_spec(segment, ImageSegmentationOutputElement)
            self.assertEqual(set(segment), {"score", "label", "mask"})
            self.assertIsInstance(segment["score"], (float, type(None)))
            self.assertIsInstance(segment["label"], str)
            self.assertIsInstance(segment["mask"], Image.Image)
            self.assertEqual(segment["mask"].size, image_size)
        self.assertLessEqual({segment["label"] for segment in segments}, labels)
        self.assertEqual(len({segment["label"] for segment in segments}), len(segments))
        masks = np.stack([np.asarray(segment["mask"]) for segment in segments])
        self.assertTrue(np.isin(masks, (0, 255)).all(), "masks must be binary (0 / 255)")
        np.testing.assert_array_equal((masks == 255).sum(0), 1, err_msg="the masks must partition the image")

    def run_pipeline_test(self, segmenter: ImageSegmentationPipeline, examples: list) -> None:
        labels = set(segmenter.model.config.id2label.values())
        thresholds = dict(threshold=0.0, mask_threshold=0, overlap_mask_area_threshold=0)
        path = examples[0]
        size = Image.open(path).size
        segments = segmenter(path, **thresholds)
        self.check_segments(segments, size, labels)
        # other modes and sizes: single images, then a list of them
        images = [
            random_image(30, 17, "RGBA", seed=3),
            random_image(9, 50, "LA", seed=4),
            random_image(41, 41, "L", seed=5),
            random_image(1, 1, seed=6),
        ]
        for image in images:
            self.check_segments(segmenter(image, **thresholds), image.size, labels)
        for image, segments in zip(images, segmenter(images, **thresholds), strict=True):
            self.check_segments(segments, image.size, labels)
        # the same image 5 times in batches of 2 (an incomplete last batch): as many segments as alone
        outputs = segmenter([path] * 5, batch_size=2, **thresholds)
        self.assertEqual(len(outputs), 5)
        self.assertEqual([len(item) for item in outputs], [len(segments)] * 5)
        for item in outputs:
            self.check_segments(item, size, labels)
        type(self).tested.append((type(segmenter.model).__name__, segmenter.model.dtype))


mixin = load_pipeline_mixin(
    TINY_MODELS,
    {
        architecture.__name__: {"tokenizer_classes": [], "processor_classes": [WeCLIPImageProcessor.__name__]}
        for architecture in ARCHITECTURES
    },
    class_modules=[weclip_hf],
    task_tests={TASK: ImageSegmentationPipelineTests},
)


class WeCLIPPipelineTest(mixin.PipelineTesterMixin, unittest.TestCase):
    pipeline_model_mapping = {TASK: ARCHITECTURES}

    @classmethod
    def setUpClass(cls):
        """Save each architecture's tiny random model and a tiny image processor where the mixin looks."""
        super().setUpClass()
        for architecture in ARCHITECTURES:
            config = TINY_CONFIGS[architecture]()
            folder = TINY_MODELS / config.model_type / architecture.__name__
            torch.manual_seed(0)
            architecture(config).save_pretrained(folder)
            WeCLIPImageProcessor(size={"longest_edge": LONGEST_EDGE}, patch_size=8).save_pretrained(folder)

    def run_segmentation_tests(self, dtype: str) -> None:
        """The mixin's "image-segmentation" tests in ``dtype``, failing where it would skip."""
        ImageSegmentationPipelineTests.tested.clear()
        try:
            self.run_task_tests(task=TASK, dtype=dtype)
        except unittest.SkipTest as skip:
            raise AssertionError(f"transformers' pipeline tests skipped {TASK} in {dtype}: {skip}") from skip
        expected = [(architecture.__name__, getattr(torch, dtype)) for architecture in ARCHITECTURES]
        self.assertEqual(ImageSegmentationPipelineTests.tested, expected)

    def test_pipeline_image_segmentation(self):
        self.run_segmentation_tests("float32")

    def test_pipeline_image_segmentation_fp16(self):
        self.run_segmentation_tests("float16")

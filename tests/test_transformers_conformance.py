"""transformers' own generic tests run on WeCLIP: ModelTesterMixin on the model, ConfigTester on the config,
ImageProcessingTestMixin (+ its semantic-segmentation post-processing mixin) on the image processor.

Written after transformers' SegFormer and CLIP tests. The mixins come from the sdist of the installed transformers
version (see `transformers_suite`); without network on the first run the module is skipped. A generic test that
does not apply to WeCLIP is skipped with its reason, here or by the mixin itself (no accelerator, no MoE, ...).
PipelineTesterMixin runs in tests/test_pipeline_conformance.py, on local tiny models and our stand-in for its
image-segmentation test class (the sdist ships neither tests/pipelines nor the Hub tiny model summary);
tests/test_segmentation_pipeline.py covers the rest of ``pipeline("image-segmentation")``.
"""

import unittest
from unittest import mock

import numpy as np
import torch
from conftest import TINY_TEXT, TINY_VISION, make_tiny_config
from torch import nn
from transformers import PreTrainedModel
from transformers_suite import load

from weclip_hf import WeCLIPConfig, WeCLIPForSemanticSegmentation, WeCLIPImageProcessor
from weclip_hf.decoder import WeCLIPDecoderBlock

suite = load()
ModelTesterMixin = suite.modeling.ModelTesterMixin
floats_tensor, ids_tensor = suite.modeling.floats_tensor, suite.modeling.ids_tensor
ConfigTester = suite.configuration.ConfigTester
ImageProcessingTester = suite.image_processing.ImageProcessingTester
ImageProcessingTestMixin = suite.image_processing.ImageProcessingTestMixin
PostProcessSemanticSegmentationTestMixin = suite.image_processing.PostProcessSemanticSegmentationTestMixin


def _plain_from_pretrained():
    """`PreTrainedModel.from_pretrained` in place of WeCLIP's checked one (no refusal of missing tensors)."""
    return mock.patch.object(
        WeCLIPForSemanticSegmentation,
        "from_pretrained",
        classmethod(PreTrainedModel.from_pretrained.__func__),
    )


class WeCLIPModelTester:
    """Tiny WeCLIP (2-layer CLIP towers, 4 foreground classes) and its inputs, as transformers' model testers."""

    def __init__(self, parent, batch_size: int = 4, image_size: int = 32, is_training: bool = True):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.is_training = is_training
        self.vision_config = dict(TINY_VISION, num_hidden_layers=2, image_size=image_size)
        self.text_config = dict(TINY_TEXT)
        self.patch_size = self.vision_config["patch_size"]
        self.num_channels = 3
        # what the generic output tests read: the vision tower's layers, width, heads and sequence (CLS + patches)
        self.num_hidden_layers = self.vision_config["num_hidden_layers"]
        self.hidden_size = self.vision_config["hidden_size"]
        self.num_attention_heads = self.vision_config["num_attention_heads"]
        self.seq_length = (image_size // self.patch_size) ** 2 + 1
        self.num_labels = len(make_tiny_config().id2label)  # background + 4 classes

    def get_config(self) -> WeCLIPConfig:
        return make_tiny_config(vision_config=dict(self.vision_config), text_config=dict(self.text_config))

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size, self.image_size, self.image_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}

    def create_and_check_for_semantic_segmentation(self, config, pixel_values, labels):
        model = WeCLIPForSemanticSegmentation(config).eval()
        grid = self.image_size // self.patch_size
        expected = (self.batch_size, self.num_labels, grid, grid)
        with torch.no_grad():
            self.parent.assertEqual(model(pixel_values).logits.shape, expected)
            result = model(pixel_values, labels=labels)
        self.parent.assertEqual(result.logits.shape, expected)
        self.parent.assertGreater(result.loss, 0.0)

    def create_and_check_weak_supervision(self, config, pixel_values, labels):
        model = WeCLIPForSemanticSegmentation(config).train()
        class_labels = torch.zeros(self.batch_size, config.num_foreground_classes)
        class_labels[:, 0] = 1
        result = model(pixel_values, class_labels=class_labels)
        self.parent.assertEqual(
            result.pseudo_labels.shape, (self.batch_size, self.image_size, self.image_size)
        )
        result.loss.backward()
        self.parent.assertIsNotNone(model.decoder.classifier.weight.grad)


class WeCLIPModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (WeCLIPForSemanticSegmentation,)
    test_resize_embeddings = False  # no token embeddings: the CLIP text tower only runs at setup time
    # the label count follows class_names (the text embeddings): config.num_labels cannot be set, and the mixin's
    # mismatched-shape tests re-head classification models only (they set num_labels = 3 first)
    test_mismatched_shapes = False
    _is_composite = True  # a vision and a text sub-config, as CLIPModel
    # the mixin skips this for models whose config file carries no copyright year >= 2023; WeCLIP is new
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = WeCLIPModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=WeCLIPConfig,
            has_text_modality=False,
            common_properties=["projection_dim", "logit_scale_init_value", "class_names", "background_names"],
            class_names=["cat", "dog"],
            background_names=["sky"],
            decoder_hidden_size=64,
        )

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # transformers adds [B, H, W] `labels` for the semantic-segmentation classes it knows by name; WeCLIP is
        # registered with AutoModelForSemanticSegmentation at run time, so add them the same way here
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            b, _, h, w = inputs_dict["pixel_values"].shape
            inputs_dict["labels"] = torch.zeros(b, h, w, dtype=torch.long)
        return inputs_dict

    def test_config(self):
        # ConfigTester.run_common_tests but `create_and_test_config_with_num_labels`, which builds a config with
        # num_labels=5 for 2 class names: WeCLIP's labels are background + class_names (the text prompts), and a
        # num_labels that disagrees is refused (a config.json with num_labels 1e9 once built a billion-entry
        # label map), which is checked instead
        tester = self.config_tester
        tester.create_and_test_config_common_properties()
        tester.create_and_test_config_to_json_string()
        tester.create_and_test_config_to_json_file()
        tester.create_and_test_config_from_and_save_pretrained()
        tester.create_and_test_config_from_and_save_pretrained_subfolder()
        tester.create_and_test_config_from_and_save_pretrained_composite()
        tester.check_config_arguments_init()
        tester.create_and_test_config_from_pretrained_custom_kwargs()
        tester.check_config_can_be_init_without_params()
        self.assertEqual(WeCLIPConfig(**tester.inputs_dict, num_labels=3).num_labels, 3)
        with self.assertRaisesRegex(ValueError, "num_labels"):
            WeCLIPConfig(**tester.inputs_dict, num_labels=5)

    def test_for_semantic_segmentation(self):
        self.model_tester.create_and_check_for_semantic_segmentation(
            *self.model_tester.prepare_config_and_inputs()
        )

    def test_weak_supervision(self):
        self.model_tester.create_and_check_weak_supervision(*self.model_tester.prepare_config_and_inputs())

    def test_model_get_set_embeddings(self):
        # as transformers' CLIP vision test: the input embedding of a vision model is its patch embedding, not an
        # nn.Embedding, and there is no output embedding to tie
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        model = WeCLIPForSemanticSegmentation(config)
        self.assertIsInstance(model.get_input_embeddings(), nn.Module)
        output_embeddings = model.get_output_embeddings()
        self.assertTrue(output_embeddings is None or isinstance(output_embeddings, nn.Linear))

    # These two load a folder with none (or not all) of the model's tensors and expect transformers to fill the
    # gaps with fresh weights. WeCLIPForSemanticSegmentation.from_pretrained deliberately refuses such a folder
    # (tests/test_reliability.py checks that), so they run through transformers' own loader: what they check (every
    # tensor is initialised by `_init_weights`, `missing_keys` names exactly the model's tensors) is what the
    # refusal relies on.
    def test_can_init_all_missing_weights(self):
        with _plain_from_pretrained():
            super().test_can_init_all_missing_weights()

    def test_model_weights_reload_no_missing_tied_weights(self):
        with _plain_from_pretrained():
            super().test_model_weights_reload_no_missing_tied_weights()

    def check_training_gradient_checkpointing(self, gradient_checkpointing_kwargs=None):
        # the mixin watches the model's first GradientCheckpointingLayer, a layer of the frozen CLIP tower, which
        # runs in eval mode without autograd and is never checkpointed: watch the decoder's first block instead,
        # where checkpointing applies
        with mock.patch.object(suite.modeling, "GradientCheckpointingLayer", WeCLIPDecoderBlock):
            super().check_training_gradient_checkpointing(gradient_checkpointing_kwargs)

    @unittest.skip(
        reason="the CLIP towers are frozen by design (requires_grad=False, WeCLIP trains only the decoder), so "
        "their hidden states and attention maps carry no gradient to retain"
    )
    def test_retain_grad_hidden_states_attentions(self):
        pass

    @unittest.skip(reason="WeCLIP is a vision model: it takes pixel_values, not inputs_embeds")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(
        reason="the mixin loads the model classes other than AutoModel's through AutoModel's, and WeCLIP's only "
        "class is AutoModel's (registered so that AutoModel loads a WeCLIP folder): it would pass without a check"
    )
    def test_torch_save_load(self):
        pass

    @unittest.skip(reason="WeCLIP is a vision model: it takes pixel_values, not input_ids or inputs_embeds")
    def test_inputs_embeds_matches_input_ids(self):
        pass


class WeCLIPImageProcessingTester(ImageProcessingTester):
    """Random images of 30-400 px resized to a fixed 18 x 20 (the generic shape checks need a fixed size)."""

    def __init__(self, parent, **kwargs):
        kwargs.setdefault("size", {"height": 18, "width": 20})
        kwargs.setdefault("do_resize", True)
        kwargs.setdefault("do_normalize", True)
        kwargs.setdefault("image_mean", [0.5, 0.5, 0.5])
        kwargs.setdefault("image_std", [0.5, 0.5, 0.5])
        kwargs.setdefault("num_labels", 5)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        # transformers finds the processor from the test file's folder name; WeCLIP's is registered at run time
        return {"pil": WeCLIPImageProcessor}


class WeCLIPImageProcessingTest(
    ImageProcessingTestMixin, PostProcessSemanticSegmentationTestMixin, unittest.TestCase
):
    image_processor_tester_class = WeCLIPImageProcessingTester

    @unittest.skip(
        reason="transformers' rule for image processors added to the transformers repository after its cutoff date "
        "(a torchvision backend); weclip-hf ships outside transformers and does not depend on torchvision (a "
        "multi-GB install): its processor computes with torch directly"
    )
    def test_new_models_require_torchvision_backend(self):
        pass

    def test_image_processor_properties(self):
        processor = WeCLIPImageProcessor(**self.image_processor_dict)
        for name in ("do_resize", "size", "do_normalize", "image_mean", "image_std", "do_pad", "patch_size"):
            self.assertTrue(hasattr(processor, name), name)

    def test_call_segmentation_maps(self):
        processor = WeCLIPImageProcessor(**self.image_processor_dict)
        images = self.image_processor_tester.prepare_image_inputs(equal_resolution=False, numpify=True)
        maps = [np.random.randint(0, 5, image.shape[:2]).astype(np.uint8) for image in images]
        encoding = processor(images, segmentation_maps=maps, return_tensors="pt")
        self.assertEqual(tuple(encoding["pixel_values"].shape), (len(images), 3, 18, 20))
        self.assertEqual(tuple(encoding["labels"].shape), (len(images), 18, 20))
        self.assertEqual(encoding["labels"].dtype, torch.long)

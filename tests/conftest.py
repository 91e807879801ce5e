"""Shared test setup: offline Hub, tiny random WeCLIP configs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

TINY_VISION = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8
)
TINY_TEXT = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=99,
    max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)  # fmt: skip


def make_tiny_config(**overrides):
    """A tiny random WeCLIP config: 3-layer CLIP, 4 classes, 3 background words, fast PAR."""
    from weclip_hf import WeCLIPConfig

    kwargs = dict(
        vision_config=dict(TINY_VISION),
        text_config=dict(TINY_TEXT),
        projection_dim=16,
        class_names=["cat", "dog", "car", "tree"],
        background_names=["sky", "grass", "road"],
        decoder_hidden_size=32,
        decoder_num_heads=4,
        par_num_iter=3,
        par_dilations=[1, 2],
    )
    kwargs.update(overrides)
    return WeCLIPConfig(**kwargs)


@pytest.fixture
def tiny_config():
    return make_tiny_config()


@pytest.fixture
def tiny_model(tiny_config):
    from weclip_hf import WeCLIPForSemanticSegmentation

    torch.manual_seed(0)
    return WeCLIPForSemanticSegmentation(tiny_config).eval()

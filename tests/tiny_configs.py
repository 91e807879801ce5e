"""The tiny random configs of the tests (3-layer CLIP, 4 classes; WeCLIP+ with a 2-layer DINOv2), in a module of their
own so that examples/benchmark.py (`--tiny`, its `benchmarking.workloads`) builds them without the tests' own
dependencies (`conftest` imports pytest and hypothesis); the tests import them from `conftest`."""

TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)
TINY_TEXT = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=99,
    max_position_embeddings=64, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)  # fmt: skip


def tiny_config_kwargs() -> dict:
    """The tiny configs' shared values: 3-layer CLIP (patch 8), 4 classes, 3 background words, fast PAR."""
    return dict(
        vision_config=dict(TINY_VISION),
        text_config=dict(TINY_TEXT),
        projection_dim=16,
        class_names=["cat", "dog", "car", "tree"],
        background_names=["sky", "grass", "road"],
        decoder_hidden_size=32,
        decoder_num_heads=4,
        par_num_iter=3,
        par_dilations=[1, 2],
        # the decoder drawn small (normal, std 0.02) so that a random tiny model's prediction varies across the
        # pixels instead of following its classifier's biases, which PyTorch's default draw (the official
        # initialisation, the config's default: tests/test_modeling.py) makes the same class everywhere
        initializer_range=0.02,
    )


def make_tiny_config(**overrides):
    """A tiny random WeCLIP config: 3-layer CLIP, 4 classes, 3 background words, fast PAR."""
    from weclip_hf import WeCLIPConfig

    return WeCLIPConfig(**{**tiny_config_kwargs(), **overrides})


TINY_DINO = dict(
    hidden_size=24, num_hidden_layers=2, num_attention_heads=6, patch_size=2, image_size=74
)  # 37x37


def make_tiny_plus_config(dino_config=None, **overrides):
    """A tiny WeCLIP+ config: the tiny WeCLIP one plus a 2-layer DINOv2 (patch 2, 37 x 37 grid)."""
    from transformers import Dinov2Config

    from weclip_hf import WeCLIPPlusConfig

    dino_config = dino_config if dino_config is not None else Dinov2Config(**TINY_DINO)
    return WeCLIPPlusConfig(**{**tiny_config_kwargs(), "dino_config": dino_config, **overrides})

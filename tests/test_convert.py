"""Tests of the official-checkpoint converter (`weclip_hf.conversion`) and its example script.

Official-layout state dicts are synthesised here at tiny sizes (and once at ViT-B/16 sizes on the meta
device); the reference computations below run CLIP and the decoder directly from the official layout
(packed q/k/v, ``x @ proj``), independently of transformers.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections import OrderedDict
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_holds_the_tokenizer_of_its_text_embeddings, example_module, require_data
from torch import nn

from weclip_hf import WeCLIPConfig, WeCLIPForSemanticSegmentation
from weclip_hf.conversion import (
    KeyTable,
    Rename,
    convert_official_checkpoint,
    hf_to_official_clip,
    infer_config_from_official,
    load_official_checkpoint,
    official_to_decoder,
    official_to_hf_clip,
    official_to_weclip,
    weclip_to_official,
)

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO.parent / "shared" / "data" / "clip-tokenizer"
VOC_CLASSES = 20

# Tiny official model: vision width 128 (2 heads of 64, as OpenAI CLIP builds them), 6 blocks (the VOC
# preset's 6 RFM attention maps), patch 8 on a 4x4 grid; text width 64 (1 head), 2 blocks; decoder width 32,
# 2 blocks.
TINY = dict(
    vision_width=128,
    vision_layers=6,
    patch=8,
    grid=4,
    text_width=64,
    text_layers=2,
    context=16,
    vocab=99,
    embed_dim=32,
    decoder_dim=32,
    decoder_blocks=2,
    num_classes=VOC_CLASSES + 1,
)


# ---- synthetic official checkpoints ------------------------------------------------------------------


def _block_shapes(stem: str, width: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{stem}.attn.in_proj_weight": (3 * width, width),
        f"{stem}.attn.in_proj_bias": (3 * width,),
        f"{stem}.attn.out_proj.weight": (width, width),
        f"{stem}.attn.out_proj.bias": (width,),
        f"{stem}.ln_1.weight": (width,),
        f"{stem}.ln_1.bias": (width,),
        f"{stem}.mlp.c_fc.weight": (4 * width, width),
        f"{stem}.mlp.c_fc.bias": (4 * width,),
        f"{stem}.mlp.c_proj.weight": (width, 4 * width),
        f"{stem}.mlp.c_proj.bias": (width,),
        f"{stem}.ln_2.weight": (width,),
        f"{stem}.ln_2.bias": (width,),
    }


def official_clip_shapes(
    vision_width, vision_layers, patch, grid, text_width, text_layers, context, vocab, embed_dim, **_
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an OpenAI CLIP ViT state dict (the official order)."""
    shapes = {
        "positional_embedding": (context, text_width),
        "text_projection": (text_width, embed_dim),
        "logit_scale": (),
        "visual.class_embedding": (vision_width,),
        "visual.positional_embedding": (grid * grid + 1, vision_width),
        "visual.proj": (vision_width, embed_dim),
        "visual.conv1.weight": (vision_width, 3, patch, patch),
        "visual.ln_pre.weight": (vision_width,),
        "visual.ln_pre.bias": (vision_width,),
    }
    for i in range(vision_layers):
        shapes.update(_block_shapes(f"visual.transformer.resblocks.{i}", vision_width))
    shapes.update({"visual.ln_post.weight": (vision_width,), "visual.ln_post.bias": (vision_width,)})
    for i in range(text_layers):
        shapes.update(_block_shapes(f"transformer.resblocks.{i}", text_width))
    shapes.update(
        {
            "token_embedding.weight": (vocab, text_width),
            "ln_final.weight": (text_width,),
            "ln_final.bias": (text_width,),
        }
    )
    return shapes


def official_head_shapes(stem: str, width: int, decoder_dim: int, layers: int) -> dict[str, tuple[int, ...]]:
    """An official feature-fusion head (``{stem}.linears_modulelist.{i}.proj`` / ``proj_2``, ``linear_fuse``)."""
    shapes = {}
    for i in range(layers):
        shapes.update(
            {
                f"{stem}.linears_modulelist.{i}.proj.weight": (decoder_dim, width),
                f"{stem}.linears_modulelist.{i}.proj.bias": (decoder_dim,),
                f"{stem}.linears_modulelist.{i}.proj_2.weight": (decoder_dim, decoder_dim),
                f"{stem}.linears_modulelist.{i}.proj_2.bias": (decoder_dim,),
            }
        )
    shapes[f"{stem}.linear_fuse.weight"] = (decoder_dim, decoder_dim * layers, 1, 1)
    shapes[f"{stem}.linear_fuse.bias"] = (decoder_dim,)
    return shapes


def official_decoder_shapes(
    vision_width, vision_layers, decoder_dim, decoder_blocks, num_classes, feature_layers=None, **_
) -> dict[str, tuple[int, ...]]:
    """WeCLIP's CLIP head (all CLIP blocks but the last, or ``feature_layers``), decoder and ``par.kernel``."""
    layers = vision_layers - 1 if feature_layers is None else feature_layers
    shapes = official_head_shapes("decoder_fts_fuse", vision_width, decoder_dim, layers)
    for j in range(decoder_blocks):
        shapes.update(_block_shapes(f"decoder.transformer.resblocks.{j}", decoder_dim))
    shapes["decoder.linear_pred.weight"] = (num_classes, decoder_dim, 1, 1)
    shapes["decoder.linear_pred.bias"] = (num_classes,)
    shapes["par.kernel"] = (8, 1, 3, 3)
    return shapes


def _par_kernel() -> torch.Tensor:
    kernel = torch.zeros(8, 1, 3, 3)
    for n, (r, c) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]):
        kernel[n, 0, r, c] = 1.0
    return kernel


def _random(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if key == "logit_scale" or key.endswith(".logit_scale"):
        return torch.tensor(math.log(100.0))
    if key.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
        return 1 + 0.1 * torch.randn(shape, generator=gen)
    fan_in = shape[-1] if len(shape) == 2 else (math.prod(shape[1:]) if len(shape) > 2 else 16)
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def make_official_state_dict(
    prefix: str = "encoder.", with_decoder: bool = True, dtype=torch.float32, seed: int = 0, **sizes
) -> OrderedDict:
    """A random official-layout state dict (CLIP under ``prefix``, then the decoder and ``par.kernel``)."""
    sizes = {**TINY, **sizes}
    gen = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for key, shape in official_clip_shapes(**sizes).items():
        sd[prefix + key] = _random(key, shape, gen).to(dtype)
    if with_decoder:
        for key, shape in official_decoder_shapes(**sizes).items():
            sd[key] = _par_kernel() if key == "par.kernel" else _random(key, shape, gen)
    return sd


def _clip_only(sd: dict, prefix: str = "encoder.") -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _without_clip(sd: dict) -> dict:
    """``sd`` without its own CLIP (``encoder.*``): a decoder-only checkpoint."""
    return {k: v for k, v in sd.items() if not k.startswith("encoder.")}


class FakeCLIPTokenizer:
    """Deterministic stand-in for a CLIP tokenizer (ids < vocab - 2, SOT = vocab - 2, EOT = vocab - 1)."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __call__(self, prompts, padding=None, truncation=None, return_tensors=None, max_length=16, **_):
        ids = torch.full((len(prompts), max_length), self.vocab - 1, dtype=torch.long)
        mask = torch.zeros(len(prompts), max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = [3 + sum(map(ord, w)) % (self.vocab - 5) for w in prompt.split()][: max_length - 2]
            seq = [self.vocab - 2, *words, self.vocab - 1]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return {"input_ids": ids, "attention_mask": mask}


# ---- reference computations from the official layout -------------------------------------------------


def clip_model_sized_as(
    config, vision: dict | None = None, text: dict | None = None, projection_dim: int | None = None
) -> nn.Module:
    """A random transformers CLIPModel of the CLIP sizes of ``config`` (a WeCLIP config), those given in
    ``vision``, ``text`` and ``projection_dim`` changed."""
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(
        CLIPConfig(
            vision_config={**config.vision_config.to_dict(), **(vision or {})},
            text_config={**config.text_config.to_dict(), **(text or {})},
            projection_dim=projection_dim or config.projection_dim,
        )
    )


def transformers_clip_of(sd: dict, config) -> nn.Module:
    """transformers' CLIPModel holding the CLIP of the official state dict ``sd`` (``config``: a WeCLIP config of
    its sizes, `infer_config_from_official`)."""
    clip = clip_model_sized_as(config)
    vision, text, proj, _ = official_to_hf_clip(sd)
    clip.load_state_dict({**vision, **text, **proj}, strict=True)
    return clip


def ref_block(x: torch.Tensor, sd: dict, stem: str, heads: int, causal: bool = False) -> torch.Tensor:
    """One CLIP residual block from the OpenAI weights: packed in_proj, QuickGELU MLP. x: [B, T, D]."""
    b, t, d = x.shape

    def ln(v, name):
        return F.layer_norm(
            v, (d,), sd[f"{stem}.{name}.weight"].float(), sd[f"{stem}.{name}.bias"].float(), 1e-5
        )

    h = ln(x, "ln_1")
    qkv = h @ sd[f"{stem}.attn.in_proj_weight"].float().t() + sd[f"{stem}.attn.in_proj_bias"].float()
    q, k, v = (part.reshape(b, t, heads, d // heads).transpose(1, 2) for part in qkv.split(d, dim=-1))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if causal:
        scores = scores + torch.full((t, t), float("-inf")).triu(1)
    attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
    x = x + attn @ sd[f"{stem}.attn.out_proj.weight"].float().t() + sd[f"{stem}.attn.out_proj.bias"].float()
    h = ln(x, "ln_2") @ sd[f"{stem}.mlp.c_fc.weight"].float().t() + sd[f"{stem}.mlp.c_fc.bias"].float()
    h = h * torch.sigmoid(1.702 * h)
    return x + h @ sd[f"{stem}.mlp.c_proj.weight"].float().t() + sd[f"{stem}.mlp.c_proj.bias"].float()


def ref_vision(sd: dict, pixel_values: torch.Tensor, heads: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """OpenAI ViT: (block outputs [B, 1+N, D] each, class-token image embedding ``ln_post(x[:, 0]) @ proj``)."""
    w = sd["visual.conv1.weight"].float()
    x = F.conv2d(pixel_values, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].float().expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"].float()
    d = x.shape[-1]
    x = F.layer_norm(x, (d,), sd["visual.ln_pre.weight"].float(), sd["visual.ln_pre.bias"].float(), 1e-5)
    outputs = []
    n_layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
    for i in range(n_layers):
        x = ref_block(x, sd, f"visual.transformer.resblocks.{i}", heads)
        outputs.append(x)
    pooled = F.layer_norm(
        x[:, 0], (d,), sd["visual.ln_post.weight"].float(), sd["visual.ln_post.bias"].float()
    )
    return outputs, pooled @ sd["visual.proj"].float()


def ref_text(sd: dict, ids: torch.Tensor, heads: int) -> torch.Tensor:
    """OpenAI text tower: causal blocks, ``ln_final``, EOT token (argmax id) ``@ text_projection``."""
    x = sd["token_embedding.weight"].float()[ids] + sd["positional_embedding"].float()
    n_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    for i in range(n_layers):
        x = ref_block(x, sd, f"transformer.resblocks.{i}", heads, causal=True)
    d = x.shape[-1]
    x = F.layer_norm(x, (d,), sd["ln_final.weight"].float(), sd["ln_final.bias"].float(), 1e-5)
    return x[torch.arange(len(ids)), ids.argmax(-1)] @ sd["text_projection"].float()


def ref_decoder(
    sd: dict, layer_outputs: list[torch.Tensor], grid: tuple[int, int], heads: int
) -> torch.Tensor:
    """Official decoder from its own keys: per-layer MLPs, 1x1 fuse, transformer with torch's packed
    ``nn.MultiheadAttention`` (sequence-first), 1x1 classifier. Returns logits [B, K, h, w]."""
    b = layer_outputs[0].shape[0]
    feats = []
    for i, x in enumerate(layer_outputs):
        stem = f"decoder_fts_fuse.linears_modulelist.{i}"
        h = F.relu(F.linear(x[:, 1:], sd[f"{stem}.proj.weight"], sd[f"{stem}.proj.bias"]))
        feats.append(F.linear(h, sd[f"{stem}.proj_2.weight"], sd[f"{stem}.proj_2.bias"]))
    x = torch.cat(feats, dim=-1).transpose(1, 2).reshape(b, -1, *grid)
    x = F.conv2d(x, sd["decoder_fts_fuse.linear_fuse.weight"], sd["decoder_fts_fuse.linear_fuse.bias"])
    x = x.flatten(2).permute(2, 0, 1)  # [N, B, C]
    dim = x.shape[-1]
    j = 0
    while f"decoder.transformer.resblocks.{j}.ln_1.weight" in sd:
        stem = f"decoder.transformer.resblocks.{j}"
        mha = nn.MultiheadAttention(dim, heads)
        mha.load_state_dict(
            {
                "in_proj_weight": sd[f"{stem}.attn.in_proj_weight"],
                "in_proj_bias": sd[f"{stem}.attn.in_proj_bias"],
                "out_proj.weight": sd[f"{stem}.attn.out_proj.weight"],
                "out_proj.bias": sd[f"{stem}.attn.out_proj.bias"],
            }
        )
        h = F.layer_norm(x, (dim,), sd[f"{stem}.ln_1.weight"], sd[f"{stem}.ln_1.bias"])
        x = x + mha(h, h, h, need_weights=False)[0]
        h = F.layer_norm(x, (dim,), sd[f"{stem}.ln_2.weight"], sd[f"{stem}.ln_2.bias"])
        h = F.linear(h, sd[f"{stem}.mlp.c_fc.weight"], sd[f"{stem}.mlp.c_fc.bias"])
        x = x + F.linear(
            h * torch.sigmoid(1.702 * h), sd[f"{stem}.mlp.c_proj.weight"], sd[f"{stem}.mlp.c_proj.bias"]
        )
        j += 1
    x = x.permute(1, 2, 0).reshape(b, dim, *grid)
    return F.conv2d(x, sd["decoder.linear_pred.weight"], sd["decoder.linear_pred.bias"])


# ---- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official():
    return make_official_state_dict()


@pytest.fixture(scope="module")
def tiny_official_config(official):
    return infer_config_from_official(official, "voc", decoder_num_heads=4)


# ---- CLIP mapping ------------------------------------------------------------------------------------


def test_clip_mapping_consumes_every_key_and_loads_into_clipmodel(official):

    vision, text, proj, report = official_to_hf_clip(official)
    clip_keys = [k for k in official if k.startswith("encoder.")]
    assert sorted(report.mapped) == sorted(clip_keys)
    assert report.prefix == "encoder." and not report.ignored
    assert set(proj) == {"visual_projection.weight", "text_projection.weight", "logit_scale"}
    config = infer_config_from_official(official, "voc", decoder_num_heads=4)
    clip = clip_model_sized_as(config)
    expected = {k: v.shape for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
    got = {**vision, **text, **proj}
    assert {k: v.shape for k, v in got.items()} == expected
    clip.load_state_dict(got, strict=True)
    assert all(v.dtype == torch.float32 for v in got.values())
    # the packed projection is split q, k, v in that order; proj and text_projection are transposed
    w = official["encoder.visual.transformer.resblocks.1.attn.in_proj_weight"]
    d = TINY["vision_width"]
    assert torch.equal(got["vision_model.encoder.layers.1.self_attn.q_proj.weight"], w[:d])
    assert torch.equal(got["vision_model.encoder.layers.1.self_attn.k_proj.weight"], w[d : 2 * d])
    assert torch.equal(got["vision_model.encoder.layers.1.self_attn.v_proj.weight"], w[2 * d :])
    assert torch.equal(got["visual_projection.weight"], official["encoder.visual.proj"].t())
    assert torch.equal(got["text_projection.weight"], official["encoder.text_projection"].t())


def test_clip_mapping_with_and_without_prefix(official):
    bare = _clip_only(official)
    with_prefix = official_to_hf_clip(official)
    without = official_to_hf_clip(bare)
    assert without[3].prefix == ""
    for a, b in zip(with_prefix[:3], without[:3], strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_clip_mapping_fp16_input_gives_fp32(official):
    half = make_official_state_dict(dtype=torch.float16, with_decoder=False)
    vision, text, proj, report = official_to_hf_clip(half)
    assert report.source_dtypes == {"float16": len(half)}
    for part in (vision, text, proj):
        assert all(v.dtype == torch.float32 for v in part.values())
    assert torch.equal(
        vision["vision_model.embeddings.class_embedding"], half["encoder.visual.class_embedding"].float()
    )


def test_openai_archive_metadata_keys_are_reported_not_mapped(official):
    bare = _clip_only(official)
    bare.update(
        input_resolution=torch.tensor(32), context_length=torch.tensor(16), vocab_size=torch.tensor(99)
    )
    _, _, _, report = official_to_hf_clip(bare)
    assert set(report.ignored) == {"input_resolution", "context_length", "vocab_size"}


def test_clip_inverse_round_trip_is_exact(official):
    bare = _clip_only(official)
    vision, text, proj, _ = official_to_hf_clip(bare)
    back = hf_to_official_clip({**vision, **text, **proj})
    assert back.keys() == bare.keys()
    assert all(torch.equal(back[k], bare[k]) for k in bare)


@pytest.mark.parametrize(
    "key", ["encoder.visual.transformer.resblocks.2.ln_2.bias", "encoder.transformer.resblocks.0.attn.in_proj_weight",
            "encoder.visual.proj", "encoder.logit_scale"],
)  # fmt: skip
def test_missing_clip_key_is_named(official, key):
    broken = {k: v for k, v in official.items() if k != key}
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        official_to_hf_clip(broken)


def test_unexpected_clip_key_is_named(official):
    broken = {**official, "encoder.visual.transformer.resblocks.0.attn.extra": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"resblocks\.0\.attn\.extra"):
        official_to_hf_clip(broken)


def test_a_clip_without_one_of_its_towers_is_named(official):
    """A CLIP lacking its whole text transformer names its first block as missing (no block of a stem is counted
    as none missing otherwise); one without an image tower under encoder. is no CLIP image tower at all, even
    where its text tower is there."""
    no_text_blocks = {k: v for k, v in official.items() if not k.startswith("encoder.transformer.resblocks.")}
    with pytest.raises(ValueError, match=r"Missing CLIP keys.*encoder\.transformer\.resblocks\.0\.\*"):
        official_to_hf_clip(no_text_blocks)
    no_image_tower = {k: v for k, v in official.items() if not k.startswith("encoder.visual.")}
    with pytest.raises(ValueError, match="No CLIP image tower found"):
        official_to_hf_clip(no_image_tower)


def test_position_ids_are_no_weights_of_the_official_clip(official):
    """transformers' older CLIP state dicts hold ``*.embeddings.position_ids`` buffers: the official layout has no
    such tensor, so `hf_to_official_clip` leaves them out rather than refusing them as unknown."""
    vision, text, proj, _ = official_to_hf_clip(official)
    ids = {
        f"{tower}.embeddings.position_ids": torch.arange(4)[None] for tower in ("vision_model", "text_model")
    }
    back = hf_to_official_clip({**vision, **text, **proj, **ids}, prefix="encoder.")
    assert back.keys() == {k for k in official if k.startswith("encoder.")}


def test_clip_sizes_refuse_a_position_embedding_of_no_square_grid(official):
    """The image size is the patch times the side of the square position grid: 1 + a non-square row count has
    none, and is refused naming the tensor."""
    from weclip_hf.conversion import infer_clip_configs

    rows = official["encoder.visual.positional_embedding"]
    wrong = {**official, "encoder.visual.positional_embedding": torch.cat([rows, rows[:1]])}
    with pytest.raises(ValueError, match=r"encoder\.visual\.positional_embedding has 18 rows"):
        infer_clip_configs(wrong)


# ---- key tables ------------------------------------------------------------------------------------


def test_a_new_layout_is_a_new_key_table():
    """A DINOv2-like hub layout (fused qkv, layer scales) round-trips through a table of its own."""
    table = KeyTable(
        (
            Rename("cls_token", "embeddings.cls_token"),
            Rename(
                "blocks.{i}.attn.qkv.{p}", tuple(f"layer.{{i}}.{x}.{{p}}" for x in ("query", "key", "value"))
            ),
            Rename("blocks.{i}.ls1.gamma", "layer.{i}.layer_scale1.lambda1"),
            Rename("head.weight", "classifier.weight", transpose=True),
        )
    )
    torch.manual_seed(0)
    official = {"dino.cls_token": torch.randn(1, 1, 4), "dino.head.weight": torch.randn(4, 3)}
    for i in range(2):
        official[f"dino.blocks.{i}.attn.qkv.weight"] = torch.randn(12, 4).half()
        official[f"dino.blocks.{i}.attn.qkv.bias"] = torch.randn(12)
        official[f"dino.blocks.{i}.ls1.gamma"] = torch.randn(4)
    ours, mapped, unknown = table.to_ours({**official, "dino.blocks.0.extra": torch.zeros(1)}, prefix="dino.")
    assert unknown == ["dino.blocks.0.extra"]
    assert mapped["dino.blocks.1.attn.qkv.bias"] == [f"layer.1.{x}.bias" for x in ("query", "key", "value")]
    assert torch.equal(ours["layer.1.key.weight"], official["dino.blocks.1.attn.qkv.weight"][4:8].float())
    assert torch.equal(ours["classifier.weight"], official["dino.head.weight"].t())
    assert all(v.dtype == torch.float32 for v in ours.values())
    back, unknown = table.to_official(ours, prefix="dino.")
    assert not unknown and back.keys() == official.keys()
    assert all(torch.equal(back[k], official[k].float()) for k in official)
    assert sorted(table.official_keys(table.block_counts(official, "dino."), "dino.")) == sorted(official)
    with pytest.raises(ValueError, match=r"layer\.0\.value\.weight"):
        table.to_official({k: v for k, v in ours.items() if k != "layer.0.value.weight"})
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight.*3 equal parts"):
        table.to_ours({"blocks.0.attn.qkv.weight": torch.zeros(10, 4)})
    with pytest.raises(ValueError, match="placeholders"):
        Rename("blocks.{i}.norm.{p}", "layer.norm.{p}")  # the block index would be lost
    # to_ours splits a packed tensor along dim 0 and never transposes it: such a rule is refused, not ignored
    with pytest.raises(ValueError, match="packed tensor cannot also be transposed"):
        Rename("blocks.{i}.qkv", tuple(f"layer.{{i}}.{x}" for x in "qkv"), transpose=True)


@pytest.mark.parametrize(
    ("template", "ours"),
    [
        ("blocks.{i}.mlp.{i}.{p}", "layer.{i}.mlp.{i}.{p}"),  # a placeholder twice
        ("blocks.{j}.norm.{p}", "layer.{j}.norm.{p}"),  # no such placeholder
        ("blocks.{i}.norm.{p}", ()),  # no name of ours
    ],
)
def test_a_rename_that_no_table_could_apply_is_refused_when_made(template, ours):
    """`Rename` refuses, with a ValueError naming the rule, what no `KeyTable` could build or apply: each
    placeholder once and among ``{i}`` / ``{p}``, and at least one name of ours."""
    with pytest.raises(ValueError, match=re.escape(f"Rename {template!r}")):
        Rename(template, ours)


def test_block_counts_read_only_the_keys_under_the_prefix():
    """`KeyTable.block_counts` counts the blocks of the keys under ``prefix`` alone: an official checkpoint's
    ``decoder.transformer.resblocks.*`` (as long a prefix as ``encoder.``) are no CLIP text blocks."""
    from weclip_hf.conversion import CLIP_KEYS

    keys = ["encoder.transformer.resblocks.0.ln_1.weight", "decoder.transformer.resblocks.5.ln_1.weight"]
    assert CLIP_KEYS.block_counts(keys, "encoder.") == {"transformer.resblocks.": 1}


def test_a_name_that_only_begins_with_a_known_one_is_an_unknown_key(official):
    """A rule's name is the whole key: ``ln_final.weight_ema`` or ``visual.proj_old`` is not ``ln_final.weight`` /
    ``visual.proj`` (it would be loaded in their place), but a key no rule maps, named."""
    from weclip_hf.conversion import CLIP_KEYS

    assert CLIP_KEYS.owns_official("ln_final.weight") and not CLIP_KEYS.owns_official("ln_final.weight_ema")
    assert not CLIP_KEYS.owns_official("visual.proj_old")
    for extra in ("encoder.visual.proj_old", "encoder.ln_final.weight_ema"):
        with pytest.raises(ValueError, match=re.escape(extra)):
            official_to_hf_clip({**official, extra: torch.zeros(1)})


def test_block_counts_are_one_more_than_the_largest_index_in_any_key_order(official):
    """`KeyTable.block_counts` is 1 + the largest block index whatever the order of the keys (a safetensors file
    lists them sorted as text, block 11 before block 2), so that a missing key of a late block is named."""
    from weclip_hf.conversion import CLIP_KEYS

    sorted_as_text = sorted(f"visual.transformer.resblocks.{i}.ln_1.weight" for i in range(12))
    assert CLIP_KEYS.block_counts(sorted_as_text) == {"visual.transformer.resblocks.": 12}
    key = "encoder.visual.transformer.resblocks.4.ln_2.bias"
    reordered = {k: official[k] for k in reversed(official) if k != key}
    with pytest.raises(ValueError, match=r"Missing CLIP keys.*" + re.escape(key)):
        official_to_hf_clip(reordered)


# ---- whole model -------------------------------------------------------------------------------------


def test_infer_config_from_tiny_shapes(tiny_official_config):
    c = tiny_official_config
    v, t = c.vision_config, c.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (128, 6, 2)
    assert (v.patch_size, v.image_size) == (8, 32)
    assert (v.intermediate_size, v.hidden_act) == (512, "quick_gelu")
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads) == (64, 2, 1)
    assert t.max_position_embeddings == 16
    assert (t.vocab_size, t.eos_token_id, t.bos_token_id) == (99, 98, 97)
    sizes = (c.projection_dim, c.decoder_hidden_size, c.decoder_num_layers, c.num_feature_layers)
    assert sizes == (32, 32, 2, 5)
    assert c.num_labels == 21 and c.class_names[2] == "bird avian"


def test_official_to_weclip_consumes_every_key(official, tiny_official_config):
    ours, report = official_to_weclip(official, tiny_official_config)
    assert sorted([*report.mapped, *report.ignored]) == sorted(official)
    assert set(report.ignored) == {"par.kernel"}
    assert report.computed == ["class_text_embeds", "background_text_embeds"]
    model = WeCLIPForSemanticSegmentation(tiny_official_config)
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in report.computed}
    assert {k: v.shape for k, v in ours.items()} == expected
    result = model.load_state_dict(ours, strict=False)
    assert sorted(result.missing_keys) == sorted(report.computed) and not result.unexpected_keys


def test_a_whole_checkpoint_with_bare_clip_names_converts_as_with_encoder(official, tiny_official_config):
    """A whole checkpoint whose CLIP keys carry no ``encoder.`` converts to what the ``encoder.`` one does: its
    decoder and ``par.kernel`` are no CLIP keys (`is_clip_key`), whatever the prefix."""
    bare = {k.removeprefix("encoder."): v for k, v in official.items()}
    assert "par.kernel" in bare
    ours, report = official_to_weclip(bare, tiny_official_config)
    reference, _ = official_to_weclip(official, tiny_official_config)
    assert report.prefix == "" and ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def test_round_trip_ours_official_ours_is_exact(official, tiny_official_config):
    ours, _ = official_to_weclip(official, tiny_official_config)
    back_official = weclip_to_official(ours)
    assert back_official.keys() == official.keys()
    assert all(torch.equal(back_official[k], official[k].float()) for k in official)
    again, _ = official_to_weclip(back_official, tiny_official_config)
    assert again.keys() == ours.keys()
    assert all(torch.equal(again[k], ours[k]) for k in ours)


def test_missing_decoder_key_is_named(official, tiny_official_config):
    key = "decoder.transformer.resblocks.1.mlp.c_proj.bias"
    broken = {k: v for k, v in official.items() if k != key}
    with pytest.raises(
        ValueError, match=r"Missing keys.*decoder\.transformer\.resblocks\.1\.mlp\.c_proj\.bias"
    ):
        official_to_weclip(broken, tiny_official_config)


def test_unexpected_key_is_named(official, tiny_official_config):
    for key in ("decoder.transformer.resblocks.0.attn.bias_k", "decoder_fts_fuse.extra.weight", "foo.bar"):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            official_to_weclip({**official, key: torch.zeros(3)}, tiny_official_config)
    # the decoder's table alone names the decoder keys it cannot map (`weclip_keys`: every key accounted for)
    for key in ("decoder.transformer.resblocks.0.attn.bias_k", "decoder_fts_fuse.extra.weight"):
        with pytest.raises(ValueError, match=r"Unknown decoder keys.*" + re.escape(key)):
            official_to_decoder({**official, key: torch.zeros(3)})


def test_extra_layers_and_wrong_shapes_are_named(official, tiny_official_config):
    extra = dict(official)
    extra["decoder.transformer.resblocks.5.ln_1.weight"] = torch.ones(TINY["decoder_dim"])
    with pytest.raises(ValueError, match=r"decoder\.blocks\.5\.layer_norm1\.weight"):
        official_to_weclip(extra, tiny_official_config)
    wrong = dict(official)
    wrong["decoder.linear_pred.weight"] = torch.zeros(11, TINY["decoder_dim"], 1, 1)
    with pytest.raises(ValueError, match=r"decoder\.classifier\.weight \(11, 32, 1, 1\)"):
        official_to_weclip(wrong, tiny_official_config)
    with pytest.raises(ValueError, match="preset"):
        infer_config_from_official(wrong, "coco")


def test_par_kernel_must_be_the_constant(official, tiny_official_config):
    broken = {**official, "par.kernel": torch.ones(8, 1, 3, 3)}
    with pytest.raises(ValueError, match=r"par\.kernel"):
        official_to_weclip(broken, tiny_official_config)


def test_the_par_kernel_is_each_neighbour_in_the_official_order(official, tiny_official_config):
    """``par.kernel`` must be the official constant itself: the same 8 one-hot kernels in another order are not
    what the official code writes."""
    from weclip_hf.conversion import check_par_kernel

    kernel = official["par.kernel"]
    check_par_kernel(kernel)
    with pytest.raises(ValueError, match=r"par\.kernel is not the 8 one-hot"):
        check_par_kernel(kernel[[1, 0, *range(2, 8)]])


def test_a_decoder_fusing_fewer_clip_layers_converts_with_that_count(official):
    """``num_feature_layers`` is read from the decoder's ``linears_modulelist``: one fusing 3 of the 6 blocks'
    outputs gets 3 (only all blocks but the last is the config's default, None), and converts."""
    for layers in (3, 4):  # 4: all blocks but the last two
        fewer = make_official_state_dict(feature_layers=layers)
        config = infer_config_from_official(fewer, "voc", decoder_num_heads=4)
        assert config.num_feature_layers == layers
        ours, _ = official_to_weclip(fewer, config)
        assert f"decoder.layer_mlps.{layers - 1}.fc1.weight" in ours
        assert f"decoder.layer_mlps.{layers}.fc1.weight" not in ours
    assert infer_config_from_official(official, "voc", decoder_num_heads=4).num_feature_layers == 5


def test_a_decoder_of_another_mlp_ratio_converts_with_that_ratio(official):
    """``decoder_mlp_ratio`` is read from the decoder's ``mlp.c_fc`` rows (`infer_decoder_kwargs`): a decoder
    whose MLPs are twice its width (not the official 4) gets 2, and converts."""
    dim, gen = TINY["decoder_dim"], torch.Generator().manual_seed(0)
    shapes = {
        "mlp.c_fc.weight": (2 * dim, dim),
        "mlp.c_fc.bias": (2 * dim,),
        "mlp.c_proj.weight": (dim, 2 * dim),
    }
    narrow = dict(official)
    for j in range(TINY["decoder_blocks"]):
        narrow.update(
            {f"decoder.transformer.resblocks.{j}.{k}": _random(k, v, gen) for k, v in shapes.items()}
        )
    config = infer_config_from_official(narrow, "voc", decoder_num_heads=4)
    assert config.decoder_mlp_ratio == 2
    ours, _ = official_to_weclip(narrow, config)
    assert ours["decoder.blocks.1.mlp.fc1.weight"].shape == (2 * dim, dim)


def test_the_clip_towers_mlp_widths_come_from_their_shapes_and_their_head_counts_from_the_overrides(official):
    """`infer_clip_configs` reads each tower's MLP width from its ``mlp.c_fc`` rows (a CLIP whose MLPs are twice its
    width, not OpenAI's 4, converts) and both towers' projection dim from ``visual.proj``; ``vision_heads`` /
    ``text_heads`` set each tower's head count (`infer_config_from_official`)."""
    narrow, gen = dict(official), torch.Generator().manual_seed(0)
    towers = (("visual.transformer.resblocks", TINY["vision_width"], 6), ("transformer.resblocks", 64, 2))
    for stem, width, layers in towers:
        shapes = {"mlp.c_fc.weight": (2 * width, width), "mlp.c_fc.bias": (2 * width,)}
        shapes["mlp.c_proj.weight"] = (width, 2 * width)
        for i in range(layers):
            narrow.update({f"encoder.{stem}.{i}.{k}": _random(k, s, gen) for k, s in shapes.items()})
    config = infer_config_from_official(narrow, "voc", decoder_num_heads=4, vision_heads=4, text_heads=2)
    vision, text = config.vision_config, config.text_config
    assert (vision.intermediate_size, text.intermediate_size) == (256, 128)
    assert (vision.num_attention_heads, text.num_attention_heads) == (4, 2)
    assert vision.projection_dim == text.projection_dim == config.projection_dim == TINY["embed_dim"]
    ours, _ = official_to_weclip(narrow, config)
    assert ours["vision_model.encoder.layers.5.mlp.fc1.weight"].shape == (256, 128)
    assert ours["text_model.encoder.layers.1.mlp.fc2.weight"].shape == (64, 128)


def test_a_checkpoint_without_a_middle_block_is_as_deep_as_its_last_block(official):
    """Depths are 1 + the largest block index (`config_inference._count_blocks`), not the number of blocks found:
    a checkpoint missing one middle block of its CLIP or of its DINOv2 gets the depth of the model it was saved
    from, and the conversion names that block's keys as missing (it was taken for a shallower model)."""
    plus = make_official_plus_state_dict(dino_layers=3)
    cases = (
        (official, "encoder.visual.transformer.resblocks.2.", "voc", dict(decoder_num_heads=4)),
        (plus, "dino_encoder.blocks.1.", "voc-plus", PLUS_KWARGS),
    )
    for state, block, preset, kwargs in cases:
        holed = {k: v for k, v in state.items() if not k.startswith(block)}
        config = infer_config_from_official(holed, preset, **kwargs)
        depth = config.dino_config if preset == "voc-plus" else config.vision_config
        assert depth.num_hidden_layers == (3 if preset == "voc-plus" else 6)
        with pytest.raises(ValueError, match=r"Missing (CLIP )?keys.*" + re.escape(block)):
            official_to_weclip(holed, config)


def test_real_vit_b16_sizes_on_meta_device():
    sizes = dict(
        vision_width=768,
        vision_layers=12,
        patch=16,
        grid=14,
        text_width=512,
        text_layers=12,
        context=77,
        vocab=49408,
        embed_dim=512,
        decoder_dim=256,
        decoder_blocks=3,
        num_classes=21,
    )
    shapes = {"encoder." + k: s for k, s in official_clip_shapes(**sizes).items()}
    shapes.update(official_decoder_shapes(**sizes))
    sd = {
        k: torch.empty(s, device="meta", dtype=torch.float16 if k.endswith("c_fc.weight") else torch.float32)
        for k, s in shapes.items()
    }
    sd["par.kernel"] = _par_kernel()
    assert len(sd) == 387  # as the official WeCLIP.state_dict()
    config = infer_config_from_official(sd, "voc")
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.intermediate_size) == (768, 3072)
    assert (v.num_hidden_layers, v.num_attention_heads) == (12, 12)
    assert (v.patch_size, v.image_size) == (16, 224)
    assert (t.hidden_size, t.intermediate_size) == (512, 2048)
    assert (t.num_hidden_layers, t.num_attention_heads) == (12, 8)
    assert (t.vocab_size, t.max_position_embeddings) == (49408, 77)
    assert (t.eos_token_id, t.bos_token_id) == (49407, 49406)
    assert (config.projection_dim, config.decoder_hidden_size, config.decoder_num_layers) == (512, 256, 3)
    assert (config.decoder_mlp_ratio, config.num_feature_layers) == (4, 11)
    # the official sizes that a --clip for a checkpoint without its own CLIP is held to are these, both towers'
    from weclip_hf.conversion.config_inference import check_clip_is_official

    check_clip_is_official(_without_clip(sd), config, "ViT-B/16")
    ours, report = official_to_weclip(sd, config)
    assert len(report.mapped) == 386 and len(ours) == 483
    assert ours["vision_model.encoder.layers.11.self_attn.v_proj.weight"].shape == (768, 768)
    assert ours["visual_projection.weight"].shape == (512, 768)
    assert ours["decoder.fuse.weight"].shape == (256, 2816, 1, 1)


# ---- numerical equivalence with the official layout --------------------------------------------------


@pytest.fixture(scope="module")
def converted_tiny(official, tiny_official_config):
    torch.manual_seed(0)
    tokenizer = FakeCLIPTokenizer(TINY["vocab"])
    model = convert_official_checkpoint(
        dict(official), preset="voc", tokenizer=tokenizer, decoder_num_heads=4
    )
    return model, tokenizer


def test_converted_clip_towers_match_the_official_layout(official, converted_tiny):
    model, _ = converted_tiny
    sd = _clip_only(official)
    torch.manual_seed(1)
    pixel_values = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, TINY["vocab"] - 2, (3, TINY["context"]))
    ids[:, 0] = TINY["vocab"] - 2
    ids[torch.arange(3), torch.tensor([4, 9, 15])] = TINY["vocab"] - 1  # EOT, then arbitrary padding ids
    ids[0, 5:] = 0
    ref_layers, ref_image = ref_vision(sd, pixel_values, heads=2)
    ref_txt = ref_text(sd, ids, heads=1)
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values).pooler_output)
        text = model.text_projection(model.text_model(input_ids=ids).pooler_output)
        clip = model.forward_clip_features(pixel_values, 0)
        hidden, grid = clip.hidden, clip.grid
    torch.testing.assert_close(image, ref_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(text, ref_txt, rtol=1e-5, atol=1e-5)
    assert grid == (4, 4) and len(hidden) == TINY["vision_layers"] - 1
    for ours, ref in zip(hidden, ref_layers[:-1], strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_converted_model_logits_match_the_official_layout(official, converted_tiny):
    model, _ = converted_tiny
    torch.manual_seed(2)
    pixel_values = torch.randn(2, 3, 32, 32)
    ref_layers, _ = ref_vision(_clip_only(official), pixel_values, heads=2)
    expected = ref_decoder(official, ref_layers[:-1], (4, 4), heads=4)
    with torch.no_grad():
        logits = model(pixel_values).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_converted_model_is_frozen_with_text_embeddings(official, converted_tiny):
    model, tokenizer = converted_tiny
    assert not model.training and not model.vision_model.training
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("decoder."))
    assert all(p.requires_grad for p in model.decoder.parameters())
    prompts = [model.config.prompt_template.format(c) for c in model.config.class_names]
    batch = tokenizer(prompts, max_length=TINY["context"])
    expected = F.normalize(ref_text(_clip_only(official), batch["input_ids"], heads=1), dim=-1)
    torch.testing.assert_close(model.class_text_embeds, expected, rtol=1e-5, atol=1e-5)
    assert model.background_text_embeds.shape == (25, TINY["embed_dim"])


def test_convert_needs_a_tokenizer(official):
    with pytest.raises(ValueError, match="tokenizer"):
        convert_official_checkpoint(dict(official), preset="voc")


# ---- safe loading ------------------------------------------------------------------------------------


class _Payload:
    """A pickle that would run code (create a file) when loaded."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_pickle_that_needs_code_is_refused_not_run(tmp_path):
    target = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(target)}, path)
    with pytest.raises(ValueError, match="needs code"):
        load_official_checkpoint(path)
    assert not target.exists()


def test_load_plain_checkpoint_and_wrappers(tmp_path, official):
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in official.items()}}, path)
    loaded = load_official_checkpoint(path)
    assert loaded.keys() == official.keys()
    assert all(torch.equal(loaded[k], official[k]) for k in official)
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "absent.pth")
    torch.save({"a": torch.zeros(1), "step": 3}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="step"):
        load_official_checkpoint(tmp_path / "mixed.pth")
    # a DDP prefix is one on every key: a state dict with some keys under module. keeps its names (no key
    # loses its first seven characters)
    torch.save({"module.a": torch.zeros(1), "decoder.b": torch.zeros(1)}, tmp_path / "some.pth")
    assert load_official_checkpoint(tmp_path / "some.pth").keys() == {"module.a", "decoder.b"}


class _Tree(nn.Module):
    """Modules nested after dotted parameter names, so a scripted copy has the OpenAI key layout."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        children: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            head, _, rest = key.partition(".")
            if rest:
                children.setdefault(head, {})[rest] = value
            else:
                self.register_parameter(head, nn.Parameter(value.clone(), requires_grad=False))
        for name, sub in children.items():
            self.add_module(name, _Tree(sub))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_torchscript_archive_is_read_without_running_code(tmp_path, official):
    bare = {k: v.half() for k, v in _clip_only(official).items()}  # OpenAI's archive is fp16
    path = tmp_path / "ViT-tiny.pt"
    tree = _Tree(bare)
    tree.transformer.resblocks.get_submodule("0").attn_mask = torch.zeros(4, 4)  # an attribute, not a weight
    tree.visual.register_buffer("running_thing", torch.ones(3))  # a buffer is part of the state dict
    torch.jit.script(tree).save(str(path))
    with mock.patch.object(torch.jit, "load", side_effect=AssertionError("torch.jit.load must not be used")):
        loaded = load_official_checkpoint(path)
    assert torch.equal(loaded.pop("visual.running_thing"), torch.ones(3))
    assert loaded.keys() == bare.keys()
    assert all(loaded[k].dtype == torch.float16 and torch.equal(loaded[k], bare[k]) for k in bare)
    vision, _, _, report = official_to_hf_clip(loaded)
    assert report.prefix == "" and len(report.mapped) == len(bare)


def test_torchscript_archive_with_foreign_globals_is_refused(tmp_path):
    import zipfile

    path = tmp_path / "odd.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("odd/data.pkl", b"\x80\x02cos\nsystem\nq\x00.")
        archive.writestr("odd/constants.pkl", b"")
    with pytest.raises(ValueError, match="--clip"):
        load_official_checkpoint(path)


# ---- the example script ------------------------------------------------------------------------------


def _script():
    return example_module("convert_official_checkpoint")


@pytest.fixture(scope="module")
def real_vocab_checkpoint(tmp_path_factory):
    require_data(TOKENIZER, "the CLIP tokenizer (49,408 tokens, as the official checkpoints)")
    path = tmp_path_factory.mktemp("ckpt") / "WeCLIP_tiny.pth"
    sd = make_official_state_dict(vocab=49408, context=77, decoder_dim=64)
    torch.save({k: (v.half() if k.startswith("encoder.") else v) for k, v in sd.items()}, path)
    return path, sd


def test_script_writes_a_loadable_folder(tmp_path, real_vocab_checkpoint):
    """The folder loads as the model the official code builds from the checkpoint: its logits on a noise image are
    those of the official layout computed from the checkpoint's own tensors (fp16 CLIP, OpenAI's head counts, the
    official decoder's 8 heads), and the pipeline's labels vary over it."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    checkpoint, sd = real_vocab_checkpoint
    out = tmp_path / "converted"
    _script().main(
        [
            "--checkpoint",
            str(checkpoint),
            "--tokenizer",
            str(TOKENIZER),
            "--preset",
            "voc",
            "--output_dir",
            str(out),
        ]
    )
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "README.md",
        "preprocessor_config.json",
    }
    model = AutoModelForSemanticSegmentation.from_pretrained(out)
    assert isinstance(model, WeCLIPForSemanticSegmentation)
    assert not any(p.requires_grad for p in model.vision_model.parameters())
    expected, _ = official_to_weclip(sd, model.config)
    state = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(
            state[key],
            value.half().float() if key.startswith(("vision_", "text_", "visual_", "logit")) else value,
        ), key
    assert torch.allclose(model.class_text_embeds.norm(dim=-1), torch.ones(20))
    # the official forward on the checkpoint as saved: not through `official_to_weclip`, nor the folder's config
    saved = torch.load(checkpoint, weights_only=True)
    pixel_values = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref_layers, _ = ref_vision(_clip_only(saved), pixel_values, heads=128 // 64)
    expected = ref_decoder(saved, ref_layers[:-1], (4, 4), heads=8)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, expected, rtol=1e-5, atol=1e-5)
    AutoImageProcessor.from_pretrained(out)
    from PIL import Image
    from transformers import pipeline

    noise = torch.randint(0, 256, (37, 50, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    segments = pipeline("image-segmentation", model=str(out))(Image.fromarray(noise.numpy()))
    assert len(segments) > 1 and all(s["mask"].size == (50, 37) for s in segments)
    assert {s["label"] for s in segments} <= set(model.config.id2label.values())
    # new classes from the folder alone (offline): it holds the CLIP tokenizer the text embeddings were made with
    assert_holds_the_tokenizer_of_its_text_embeddings(out)
    from transformers import AutoTokenizer

    model.update_class_embeddings(AutoTokenizer.from_pretrained(out), class_names=["cat", "dog"])
    assert model.config.id2label == {0: "background", 1: "cat", 2: "dog"}
    card = (out / "README.md").read_text()
    assert (
        "WeCLIP_tiny.pth" in card
        and "Frozen CLIP" in card
        and "`voc`" in card
        and "image-segmentation" in card
    )
    import hashlib

    assert f"(sha256 `{hashlib.sha256(checkpoint.read_bytes()).hexdigest()}`)" in card
    from huggingface_hub import ModelCard

    assert "voc" in ModelCard.load(out / "README.md").data.tags  # the preset, a tag of the card
    # the text embeddings' tokenizer (--tokenizer) named; the preset's classes, not the checkpoint's own
    assert "CLIP tokenizer `clip-tokenizer (a local folder)`" in card and "own classes" not in card
    # the checkpoint's own CLIP is tiny: not the official ViT-B/16, which the card named as its base model
    assert "openai/clip-vit-base-patch16" not in card and "base_model" not in card


@pytest.mark.parametrize("hub_model_id", ["me/weclip-test", "weclip-test"])
def test_script_push_to_hub_uses_the_hub_api(tmp_path, real_vocab_checkpoint, hub_model_id, fake_hub):
    """A --hub_model_id without the user gave a card that loads the bare name, not the repository created."""
    checkpoint, _ = real_vocab_checkpoint
    out = tmp_path / "pushed"
    argv = ["--checkpoint", str(checkpoint), "--tokenizer", str(TOKENIZER), "--preset", "voc"]
    push = ["--push_to_hub", "--hub_model_id", hub_model_id, "--private", "--hub_token", "hf_test"]
    _script().main([*argv, "--output_dir", str(out), *push])
    assert [c["repo_id"] for c in fake_hub.created] == [hub_model_id, "me/weclip-test"]
    # --private and --hub_token reach the repository's creation and the upload
    assert all(c["private"] is True and c["token"] == "hf_test" for c in fake_hub.created), fake_hub.created
    card = (out / "README.md").read_text()
    assert 'from_pretrained("me/weclip-test", trust_remote_code=True)' in card
    assert 'model="me/weclip-test"' in card
    (upload,) = fake_hub.uploaded
    assert upload["folder_path"] == str(out) and upload["repo_id"] == "me/weclip-test"
    assert upload["token"] == "hf_test"
    assert sorted(upload["allow_patterns"]) == sorted(p.name for p in out.iterdir())


def test_script_argument_errors(capsys):
    script = _script()
    # the issue's minimal command: no --tokenizer nor --clip -> the OpenAI ViT-B/16 tokenizer (Hub id)
    args = script.parse_args(["--checkpoint", "x.pth", "--preset", "voc", "--output_dir", "o"])
    assert args.tokenizer == "openai/clip-vit-base-patch16"
    assert script.parse_args(["--checkpoint", "x.pth", "--output_dir", "o", "--clip", "c"]).tokenizer is None
    with pytest.raises(SystemExit):
        script.parse_args(["--checkpoint", "x.pth", "--output_dir", "o", "--tokenizer", "t", "--push_to_hub"])
    assert "error: --push_to_hub needs --hub_model_id" in capsys.readouterr().err


def test_script_checks_clip_at_parsing_and_passes_no_check_clip_to_the_converter(
    tmp_path, clip_folder, capsys
):
    """A --clip that is no transformers CLIP folder (OpenAI's .pt file) is refused at parsing, before a --push_to_hub
    repository is created; --no_check_clip is ``check_clip=False`` of `convert_official_checkpoint` (use --clip as
    it is); without it the CLIP is checked."""
    script = _script()
    (tmp_path / "ViT-B-16.pt").write_bytes(b"x")
    with pytest.raises(SystemExit):
        script.parse_args(
            ["--checkpoint", "x.pth", "--clip", str(tmp_path / "ViT-B-16.pt"), "--output_dir", "o"]
        )
    assert "--clip / clip= takes a transformers CLIP folder" in capsys.readouterr().err
    argv = ["--checkpoint", "x.pth", "--clip", str(clip_folder), "--tokenizer", str(TOKENIZER)]
    argv += ["--output_dir", str(tmp_path / "o")]
    require_data(TOKENIZER, "the CLIP tokenizer")
    for extra, checked in (([], True), (["--no_check_clip"], False)):
        with mock.patch.object(
            script, "convert_official_checkpoint", side_effect=KeyboardInterrupt
        ) as convert:
            with pytest.raises(KeyboardInterrupt):
                script.main([*argv, *extra])
        assert convert.call_args.kwargs["check_clip"] is checked
    # the card's base model: --clip as given (a Hub id of another CLIP than the official one too)
    from transformers import CLIPVisionConfig

    b32 = WeCLIPConfig(vision_config=CLIPVisionConfig())
    assert script.clip_hub_id(argparse.Namespace(clip="me/clip-b32"), b32) == "me/clip-b32"
    assert script.clip_hub_id(argparse.Namespace(clip=None), b32) is None
    # the official image tower with a text tower of other sizes (the checkpoint's own CLIP): not the official CLIP
    other_text = WeCLIPConfig(
        vision_config=CLIPVisionConfig(patch_size=16), text_config=dict(num_hidden_layers=6)
    )
    assert script.clip_hub_id(argparse.Namespace(clip=None), other_text) is None
    official = WeCLIPConfig(vision_config=CLIPVisionConfig(patch_size=16))
    assert script.clip_hub_id(argparse.Namespace(clip=None), official) == "openai/clip-vit-base-patch16"


def test_script_names_a_local_clip_folder_on_the_card_by_its_name_and_as_no_base_model(
    tmp_path, real_vocab_checkpoint
):
    """With --clip, the card's "CLIP weights from" line names that CLIP, a local folder by its name (never its path,
    which tells the machine's layout and the user's name), and the metadata names no base model: a local folder is
    no Hub model (`clip_hub_id` gives --clip as it is, `make_model_card` leaves the folder out)."""
    from huggingface_hub import ModelCard

    checkpoint, sd = real_vocab_checkpoint
    # the checkpoint's own CLIP: the comparison with it passes
    clip = transformers_clip_of(sd, infer_config_from_official(sd, "voc"))
    folder, out = tmp_path / "my-clip", tmp_path / "converted"
    clip.save_pretrained(folder)
    argv = ["--checkpoint", str(checkpoint), "--clip", str(folder), "--tokenizer", str(TOKENIZER)]
    _script().main([*argv, "--preset", "voc", "--output_dir", str(out)])
    card = (out / "README.md").read_text()
    assert "\n- CLIP weights from: `my-clip (a local folder)` (transformers CLIP)\n" in card, card
    assert str(tmp_path) not in card and ModelCard.load(out / "README.md").data.base_model is None


def test_script_refuses_an_output_dir_that_is_a_file_before_converting(tmp_path, capsys):
    script = _script()
    afile = tmp_path / "afile"
    afile.write_text("x")
    for output_dir, expected in ((afile, "is an existing file"), (afile / "sub", f"inside {str(afile)!r}")):
        with (
            mock.patch.object(script, "convert_official_checkpoint") as convert,
            pytest.raises(SystemExit),
        ):
            script.main(["--checkpoint", "x.pth", "--tokenizer", "t", "--output_dir", str(output_dir)])
        convert.assert_not_called()
        assert expected in capsys.readouterr().err


def trained_run_folder(path: Path) -> Path:
    """A folder as examples/train.py leaves it: the model, its metrics and log, overlays and step_N checkpoints."""
    for name in ("config.json", "model.safetensors", "metrics.json", "train_log.jsonl"):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text("{}")
    for name in ("overlays/0.png", "step_250/model.safetensors", "step_500/model.safetensors"):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(b"old run")
    return path


def test_script_refuses_an_output_dir_that_is_not_empty_before_converting(tmp_path, capsys):
    """A folder that holds a trained model is refused, its contents named, before converting; a new or empty
    folder is accepted; with --overwrite_output_dir, one that holds an input (which removing would delete) is
    refused."""
    script = _script()
    out = trained_run_folder(tmp_path / "weclip-toy")
    before = sorted(out.rglob("*"))
    argv = ["--checkpoint", "x.pth", "--tokenizer", "t", "--output_dir", str(out)]
    with mock.patch.object(script, "convert_official_checkpoint") as convert, pytest.raises(SystemExit):
        script.main(argv)
    convert.assert_not_called()
    error = capsys.readouterr().err
    for text in ("is not empty", "metrics.json", "step_250/", "train_log.jsonl", "--overwrite_output_dir"):
        assert text in error, text
    # the folder is cleared after a successful conversion, not before (a failed one leaves it whole): the
    # refusal and --help say so
    assert "to remove what it holds once the conversion has succeeded" in error
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    assert "removed once the conversion has succeeded (a failed one leaves" in " ".join(
        capsys.readouterr().out.split()
    )
    assert sorted(out.rglob("*")) == before
    (tmp_path / "empty").mkdir()
    for folder in ("empty", "new"):
        assert script.parse_args([*argv[:-1], str(tmp_path / folder)]).output_dir == str(tmp_path / folder)
    with pytest.raises(SystemExit):
        script.parse_args(["--checkpoint", str(out / "metrics.json"), *argv[2:], "--overwrite_output_dir"])
    assert "would delete --checkpoint" in capsys.readouterr().err
    # nor one that holds --tokenizer, or the working directory
    with pytest.raises(SystemExit):
        script.parse_args([*argv, "--tokenizer", str(out / "step_250"), "--overwrite_output_dir"])
    assert "would delete --tokenizer" in capsys.readouterr().err
    with (
        mock.patch.object(script.os, "getcwd", return_value=str(out / "overlays")),
        pytest.raises(SystemExit),
    ):
        script.parse_args([*argv, "--overwrite_output_dir"])
    assert "would delete the working directory" in capsys.readouterr().err


def test_script_loads_the_tokenizer_once_and_saves_the_one_the_embeddings_were_computed_with(
    tmp_path, real_vocab_checkpoint
):
    """The script loaded the tokenizer twice, inside the conversion and again to save it: once now, passed to the
    conversion, and that same tokenizer is saved."""
    from transformers import AutoTokenizer

    checkpoint, _ = real_vocab_checkpoint
    load = AutoTokenizer.from_pretrained
    argv = ["--checkpoint", str(checkpoint), "--tokenizer", str(TOKENIZER), "--preset", "voc"]
    with mock.patch.object(AutoTokenizer, "from_pretrained", side_effect=load) as loads:
        out = _script().main([*argv, "--output_dir", str(tmp_path / "out")])
    assert [call.args[0] for call in loads.call_args_list] == [str(TOKENIZER)]
    assert (out / "tokenizer_config.json").is_file()


def test_script_overwrite_output_dir_replaces_a_trained_model(tmp_path, real_vocab_checkpoint, monkeypatch):
    """--overwrite_output_dir: a failed conversion, or one killed after the weights are saved (before the
    processor and the card), leaves the folder as it was, and a killed one into a new folder leaves no config.json (it
    left a half-written folder that `from_pretrained` loaded and a re-run refused as "not empty"); a successful one
    removes what the folder held (the old run's metrics, log, overlays, checkpoints) and the killed run's hidden
    folder, and writes the converted model alone."""
    checkpoint, _ = real_vocab_checkpoint
    script = _script()
    out = trained_run_folder(tmp_path / "weclip-toy")
    before = sorted(out.rglob("*"))
    argv = ["--checkpoint", str(checkpoint), "--tokenizer", str(TOKENIZER), "--output_dir", str(out)]
    with pytest.raises(ValueError, match="classes but preset 'coco' has 81"):
        script.main([*argv, "--preset", "coco", "--overwrite_output_dir"])
    assert sorted(out.rglob("*")) == before

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(script.WeCLIPImageProcessor, "save_pretrained", killed)
        for folder in (out, tmp_path / "new"):
            with pytest.raises(KeyboardInterrupt):
                script.main([*argv[:-1], str(folder), "--preset", "voc", "--overwrite_output_dir"])
    # the half-written model, hidden in the run's own folder
    (staging,) = out.glob(".converting-*")
    assert (staging / "model.safetensors").is_file()
    assert (
        sorted(p for p in out.rglob("*") if not p.relative_to(out).parts[0].startswith(".converting"))
        == before
    )
    # no config.json: not loadable
    assert [p.name[: len(".converting-")] for p in (tmp_path / "new").iterdir()] == [".converting-"]
    script.main([*argv, "--preset", "voc", "--overwrite_output_dir"])
    names = {p.name for p in out.iterdir()}
    assert names >= {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"}
    assert not names & {"metrics.json", "train_log.jsonl", "overlays", "step_250", "step_500", ".converting"}
    assert isinstance(WeCLIPForSemanticSegmentation.from_pretrained(out), WeCLIPForSemanticSegmentation)
    # an empty working directory is a fine --output_dir, and the folder itself stays (a mount point, say): the
    # model is moved into it, config.json last
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert script.parse_args([*argv[:-1], "."]).output_dir == "."
    inode, moved = cwd.stat().st_ino, []
    monkeypatch.setattr(script.os, "replace", lambda a, b: moved.append(Path(b).name) or os.rename(a, b))
    script.write_whole_folder(
        Path("."),
        lambda folder: [(folder / n).write_text("{}") for n in ("config.json", "a")],
    )
    assert cwd.stat().st_ino == inode and moved == ["a", "config.json"] and sorted(os.listdir(cwd)) == moved


def test_script_overwrite_output_dir_keeps_a_clones_version_control(tmp_path, real_vocab_checkpoint, capsys):
    """--overwrite_output_dir into a `git clone` of a Hub repository removed its .git (history, unpushed commits)
    and .gitattributes (which sends *.safetensors to LFS): the folder was no repository any more. Version control
    entries are now kept, said so in the refusal, and a clone that holds nothing else counts as empty."""
    checkpoint, _ = real_vocab_checkpoint
    script = _script()
    out = trained_run_folder(tmp_path / "hub-clone")
    vcs = {
        ".git/HEAD": "ref: refs/heads/main\n",
        ".gitattributes": "*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        ".gitignore": "*.tmp\n",
    }
    for name, text in vcs.items():
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text(text)
    argv = ["--checkpoint", str(checkpoint), "--tokenizer", str(TOKENIZER), "--preset", "voc"]
    with pytest.raises(SystemExit):
        script.main([*argv, "--output_dir", str(out)])
    assert "its version control (.git/, .gitattributes, .gitignore) is kept" in capsys.readouterr().err
    script.main([*argv, "--output_dir", str(out), "--overwrite_output_dir"])
    assert {name: (out / name).read_text() for name in vcs} == vcs
    names = {p.name for p in out.iterdir()}
    assert names >= {"config.json", "model.safetensors", "README.md", *(name.split("/")[0] for name in vcs)}
    assert not names & {"metrics.json", "train_log.jsonl", "overlays", "step_250", "step_500"}
    assert isinstance(WeCLIPForSemanticSegmentation.from_pretrained(out), WeCLIPForSemanticSegmentation)
    # a fresh clone (its version control alone) takes a conversion without --overwrite_output_dir
    fresh = tmp_path / "fresh-clone"
    (fresh / ".git").mkdir(parents=True)
    (fresh / ".gitattributes").write_text(vcs[".gitattributes"])
    assert script.parse_args([*argv, "--output_dir", str(fresh)]).output_dir == str(fresh)


def test_script_never_follows_a_planted_converting_link(tmp_path, real_vocab_checkpoint, capsys):
    """A `.converting` link planted in --output_dir (to another folder, say a victim's) was followed: the model was
    written into the victim's folder (its config.json and README.md overwritten), then every file there moved into
    --output_dir, leaving it empty. Now the link is refused before converting, and the run writes into a fresh
    folder of its own (`tempfile.mkdtemp`); called directly, `write_whole_folder` unlinks such a link, never
    following it, and moves only the names it wrote."""
    checkpoint, _ = real_vocab_checkpoint
    script = _script()
    victim, out = tmp_path / "victim", tmp_path / "out"
    victim.mkdir()
    out.mkdir()
    held = {"my_thesis.tex": "precious", "config.json": "x"}
    for name, text in held.items():
        (victim / name).write_text(text)
    (out / ".converting").symlink_to(victim)
    argv = ["--checkpoint", str(checkpoint), "--tokenizer", str(TOKENIZER), "--preset", "voc"]
    for extra in ([], ["--overwrite_output_dir"]):
        with pytest.raises(SystemExit):
            script.main([*argv, "--output_dir", str(out), *extra])
        assert "holds '.converting', which is not the hidden folder" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in victim.iterdir()} == held
    assert [p.name for p in out.iterdir()] == [".converting"] and (out / ".converting").is_symlink()
    # the write itself never follows it, nor a link named as a run's own hidden folder
    (out / ".converting-planted").symlink_to(victim)
    staged = []
    script.write_whole_folder(
        out, lambda folder: staged.append(folder) or (folder / "config.json").write_text("{}")
    )
    assert staged[0].parent == out and staged[0].name.startswith(".converting-") and not staged[0].exists()
    assert {p.name: p.read_text() for p in victim.iterdir()} == held
    assert [p.name for p in out.iterdir()] == ["config.json"]


# ---- CLIP from a transformers folder -----------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory, official, tiny_official_config):

    clip = transformers_clip_of(official, tiny_official_config)
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    clip.save_pretrained(folder)
    return folder


def test_clip_from_a_transformers_folder(official, clip_folder, converted_tiny):
    reference, tokenizer = converted_tiny
    kwargs = dict(clip=str(clip_folder), preset="voc", tokenizer=tokenizer, decoder_num_heads=4)
    decoder_only = _without_clip(official)
    # without encoder.* tensors (a CLIP of other sizes than the official one, taken on the user's word), then
    # with them (checked)
    for checkpoint, check_clip in ((decoder_only, False), (dict(official), True)):
        model = convert_official_checkpoint(checkpoint, check_clip=check_clip, **kwargs)
        state, expected = model.state_dict(), reference.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected)
        assert set(model.conversion_report.ignored) == {"par.kernel"}


def test_clip_from_a_folder_is_one_line_of_the_report_and_every_tensor_read_is_counted(
    official, clip_folder, converted_tiny
):
    """With --clip, the report counts the checkpoint's CLIP tensors it read (as the --tokenizer route does) and
    names the given CLIP in one sentence (it listed every encoder.* tensor, and counted the decoder's only)."""
    reference, tokenizer = converted_tiny
    model = convert_official_checkpoint(
        dict(official), clip=str(clip_folder), preset="voc", tokenizer=tokenizer, decoder_num_heads=4
    )
    report, encoder = model.conversion_report, [k for k in official if k.startswith("encoder.")]
    summary, counts = report.summary(), reference.conversion_report.summary().split(". ")[0]
    assert (
        sorted(report.replaced) == sorted(encoder) and sum(report.source_dtypes.values()) == len(official) - 1
    )
    assert summary.startswith(f"{len(official) - 1} official tensors") and summary.split(". ")[0] == counts
    clip_parts = ("vision_model.", "text_model.", "visual_projection.", "text_projection.", "logit_scale")
    n_clip = sum(k.startswith(clip_parts) and not k.endswith("position_ids") for k in model.state_dict())
    assert (
        f"CLIP: {n_clip} tensors from the CLIP `tiny-clip (a local folder)`, instead of the checkpoint's "
        in summary
    )
    assert f"{len(encoder)} CLIP tensors (encoder.*" in summary and "encoder.visual" not in summary
    assert str(clip_folder) not in summary  # a local folder by its name only (the summary goes on the card)


def test_clip_folder_that_differs_from_the_checkpoint_is_named(official, clip_folder, converted_tiny):
    _, tokenizer = converted_tiny
    changed = dict(official)
    changed["encoder.visual.ln_post.bias"] = changed["encoder.visual.ln_post.bias"] + 1
    kwargs = dict(clip=str(clip_folder), preset="voc", tokenizer=tokenizer, decoder_num_heads=4)
    with pytest.raises(ValueError, match=r"vision_model\.post_layernorm\.bias"):
        convert_official_checkpoint(changed, **kwargs)
    # 5% off is beyond fp16 rounding (about 0.05%): named too
    scaled = {**official, "encoder.visual.ln_post.weight": official["encoder.visual.ln_post.weight"] * 1.05}
    with pytest.raises(ValueError, match=r"vision_model\.post_layernorm\.weight"):
        convert_official_checkpoint(scaled, **kwargs)
    model = convert_official_checkpoint(changed, check_clip=False, **kwargs)  # the folder's CLIP is used
    assert torch.equal(model.vision_model.post_layernorm.bias, official["encoder.visual.ln_post.bias"])


TOY_CLIP = REPO / "weclip_hf" / "toy_clip"  # a 3-layer CLIP of width 128, patch 8


@pytest.mark.parametrize(
    "sizes, with_clip, expected",
    [
        ({}, True, "layers 6 vs 3"),  # TINY: 6 layers, width 128, patch 8
        (dict(vision_width=64, patch=16), True, "layers 6 vs 3; width 64 vs 128; patch size 16 vs 8"),
        # a CLIP under OpenAI's bare names is the checkpoint's own CLIP too
        (dict(vision_width=64, patch=16), "bare", "layers 6 vs 3; width 64 vs 128; patch size 16 vs 8"),
        ({}, False, "layers: at least 6 (it fuses 5) vs 3"),
        (dict(vision_layers=4), False, "layers: at least 4 (it fuses 3) vs 3"),  # fusing every layer
        (dict(vision_width=64, vision_layers=3), False, "width 64 vs 128"),
    ],
)
def test_clip_that_does_not_match_the_checkpoint_is_named(sizes, with_clip, expected):
    checkpoint = make_official_state_dict(**sizes)
    if not with_clip:
        checkpoint = _without_clip(checkpoint)
    elif with_clip == "bare":
        checkpoint = {k.removeprefix("encoder."): v for k, v in checkpoint.items()}
    for check_clip in (True, False):  # another architecture is refused even without the weight comparison
        with pytest.raises(ValueError) as caught:
            convert_official_checkpoint(
                checkpoint, clip=str(TOY_CLIP), preset="voc", tokenizer=object(), check_clip=check_clip
            )
        message = str(caught.value)
        assert "does not match the CLIP of the checkpoint" in message and str(TOY_CLIP) in message, message
        assert expected in message and "(checkpoint vs --clip)" in message, message


def clip_folder_of_other_sizes(
    official: dict,
    config,
    folder: Path,
    vision: dict | None = None,
    text: dict | None = None,
    projection_dim: int | None = None,
) -> Path:
    """A transformers CLIP saved in ``folder``: the towers of ``config`` (a WeCLIP config of the official state dict
    ``official``'s sizes) with the sizes ``vision``, ``text`` and ``projection_dim`` changed, holding the checkpoint's
    own CLIP tensors wherever their shapes fit."""
    clip = clip_model_sized_as(config, vision, text, projection_dim)
    vision_weights, text_weights, proj, _ = official_to_hf_clip(official)
    own = clip.state_dict()
    fitting = {k: v for k, v in {**vision_weights, **text_weights, **proj}.items() if v.shape == own[k].shape}
    clip.load_state_dict(fitting, strict=False)
    clip.save_pretrained(folder)
    return folder


def assert_each_check_names_the_sizes(official: dict, folder: Path, expected: str) -> None:
    """Converting ``official`` (with its CLIP under encoder. or OpenAI's bare names, with the weight comparison or
    without it) with the CLIP of ``folder`` is refused, naming the sizes ``expected`` that differ."""
    bare = {k.removeprefix("encoder."): v for k, v in official.items()}  # OpenAI's names: its own CLIP too
    for checkpoint, check_clip in ((official, True), (official, False), (bare, True)):
        with pytest.raises(ValueError) as caught:
            convert_official_checkpoint(
                dict(checkpoint),
                clip=str(folder),
                preset="voc",
                tokenizer=FakeCLIPTokenizer(TINY["vocab"]),
                decoder_num_heads=4,
                check_clip=check_clip,
            )
        message = str(caught.value)
        assert "does not match the CLIP of the checkpoint" in message and str(folder) in message, message
        assert f"{expected} (checkpoint vs --clip)" in message, message


@pytest.mark.parametrize(
    "text, expected",
    [
        # the checkpoint's own CLIP with one more text block: every tensor of the checkpoint equals the CLIP's
        (dict(num_hidden_layers=3), "text layers 2 vs 3"),
        (
            dict(hidden_size=128, num_attention_heads=2, max_position_embeddings=20, vocab_size=120),
            "text width 64 vs 128; context length 16 vs 20; vocabulary 99 vs 120",
        ),
    ],
)
def test_a_clip_whose_text_tower_is_not_the_checkpoints_is_named(
    official, tiny_official_config, tmp_path, text, expected
):
    """Only the image tower of --clip was checked against the checkpoint's own CLIP: a text tower of another width,
    context or vocabulary was named key by key among the weights that differ (or taken with --no_check_clip), and
    one of more blocks whose first ones were the checkpoint's was taken even with the check (the comparison reads
    the checkpoint's tensors only), its extra block random. Now each differing size is named, as the image tower's
    are, with the check or without it, for a checkpoint's CLIP under encoder. or OpenAI's bare names."""
    folder = clip_folder_of_other_sizes(
        official, tiny_official_config, tmp_path / "other-text-clip", text=text
    )
    assert_each_check_names_the_sizes(official, folder, expected)


@pytest.mark.parametrize(
    "sizes, expected",
    [
        (dict(projection_dim=64), "projection size 32 vs 64; text projection size 32 vs 64"),
        (dict(vision=dict(intermediate_size=1024)), "MLP width 512 vs 1024"),
        (dict(text=dict(intermediate_size=512)), "text MLP width 256 vs 512"),
    ],
)
def test_a_clip_of_other_projection_or_mlp_sizes_than_the_checkpoints_is_named(
    official, tiny_official_config, tmp_path, sizes, expected
):
    """A --clip of the checkpoint's layers and widths but another projection size or MLP width of a tower was
    named key by key among the weights that differ, and with --no_check_clip taken as it was: a model of another
    CLIP than the checkpoint's (its class embeddings of another size), without a word. Now each is named as the
    other sizes are, with the check or without it."""
    folder = clip_folder_of_other_sizes(official, tiny_official_config, tmp_path / "other-clip", **sizes)
    assert_each_check_names_the_sizes(official, folder, expected)


def official_sized_as(config, monkeypatch) -> None:
    """Make the official CLIP's sizes (`config_inference`'s, which `check_clip_is_official` compares) those of
    ``config``'s CLIP (a WeCLIP config), for this test only."""
    from weclip_hf.conversion import config_inference

    for name, tower in (
        ("OFFICIAL_CLIP_VISION", config.vision_config),
        ("OFFICIAL_CLIP_TEXT", config.text_config),
    ):
        sizes = {k: getattr(tower, k) for k in getattr(config_inference, name)}
        monkeypatch.setattr(config_inference, name, sizes)
    monkeypatch.setattr(config_inference, "OFFICIAL_CLIP_PROJECTION_DIM", config.projection_dim)


def test_a_checkpoint_without_clip_takes_a_clip_of_other_sizes_than_the_official_one_only_when_told(
    official, tiny_official_config, clip_folder, tmp_path, monkeypatch
):
    """A checkpoint without its own CLIP tells the width and the layers its decoder reads, not the patch size:
    a --clip of its width and depth but another patch size (a ViT-B/32 for the official ViT-B/16) was taken
    without a word, and the model built on features its decoder was never trained on. Now a CLIP of other
    sizes than the official one is refused, naming --no_check_clip, which takes it; the official sizes are
    taken as before."""
    c = tiny_official_config
    folder = tmp_path / "other-patch-clip"
    clip_model_sized_as(c, vision=dict(patch_size=16, image_size=64)).save_pretrained(folder)  # TINY's: 8, 32
    decoder_only = _without_clip(official)
    kwargs = dict(
        clip=str(folder), preset="voc", tokenizer=FakeCLIPTokenizer(TINY["vocab"]), decoder_num_heads=4
    )
    with pytest.raises(ValueError) as caught:
        convert_official_checkpoint(decoder_only, **kwargs)
    message = str(caught.value)
    for text in ("holds no CLIP of its own", "patch size", str(folder), "openai/clip-vit-base-patch16"):
        assert text in message, text
    assert "--no_check_clip" in message and "patch_size 16 vs 16" not in message, message
    model = convert_official_checkpoint(decoder_only, check_clip=False, **kwargs)  # on the user's word
    assert model.config.vision_config.patch_size == 16
    # a CLIP of the official sizes (here made TINY's) is taken without the flag, the other one still refused
    official_sized_as(c, monkeypatch)
    taken = convert_official_checkpoint(decoder_only, **{**kwargs, "clip": str(clip_folder)})
    assert taken.config.vision_config.patch_size == TINY["patch"]
    with pytest.raises(ValueError, match="--no_check_clip"):
        convert_official_checkpoint(decoder_only, **kwargs)


@pytest.mark.parametrize(
    "sizes, expected",
    [
        (dict(text=dict(num_hidden_layers=3)), "text num_hidden_layers 3 vs 2"),
        (
            dict(text=dict(vocab_size=120, max_position_embeddings=20)),
            "text max_position_embeddings 20 vs 16, text vocab_size 120 vs 99",
        ),
        (dict(projection_dim=64), "projection_dim 64 vs 32"),
    ],
)
def test_a_checkpoint_without_clip_takes_a_clip_of_another_text_tower_than_the_official_one_only_when_told(
    official, tiny_official_config, tmp_path, monkeypatch, sizes, expected
):
    """For a checkpoint without its own CLIP only the image tower of --clip was compared with the official CLIP's:
    one of the official image tower and another text tower or projection size (not the class embeddings the
    official model computes with OpenAI's ViT-B/16) was taken without --no_check_clip. Now its text tower and
    projection size are compared too, each difference named; --no_check_clip takes it."""
    official_sized_as(tiny_official_config, monkeypatch)
    folder = clip_folder_of_other_sizes(official, tiny_official_config, tmp_path / "other-text-clip", **sizes)
    decoder_only = _without_clip(official)
    kwargs = dict(
        clip=str(folder), preset="voc", tokenizer=FakeCLIPTokenizer(TINY["vocab"]), decoder_num_heads=4
    )
    with pytest.raises(ValueError) as caught:
        convert_official_checkpoint(decoder_only, **kwargs)
    message = str(caught.value)
    assert "holds no CLIP of its own" in message and f"({expected}; --clip vs official)" in message, message
    assert "--no_check_clip" in message and str(folder) in message, message
    model = convert_official_checkpoint(decoder_only, check_clip=False, **kwargs)  # on the user's word
    assert model.config.projection_dim == sizes.get("projection_dim", tiny_official_config.projection_dim)


def test_a_clip_or_tokenizer_that_cannot_be_loaded_is_named_before_the_checkpoint_is_read(
    tmp_path, capsys, official
):
    """--clip and --tokenizer were loaded by transformers as they were: a path to no folder gave "Repo id must
    be in the form 'repo_name'", a file (OpenAI's ViT-B-16.pt) "the config file ... is not a valid JSON file",
    a saved WeCLIP model was taken as a CLIP (its decoder tensors listed as unexpected), and an id the Hub
    could not serve (offline) an error naming neither the id nor the flag, the tokenizer's only after the
    whole checkpoint was read and converted. Now each is named with its flag and what to pass, --clip at
    parsing and the tokenizer before the checkpoint is read."""
    script = _script()
    openai_file = tmp_path / "ViT-B-16.pt"
    openai_file.write_bytes(b"PK")
    saved = tmp_path / "weclip-voc"
    saved.mkdir()
    (saved / "config.json").write_text('{"model_type": "weclip"}')
    empty = tmp_path / "empty"  # passed at parsing, then read as a CLIP of CLIPConfig's defaults
    empty.mkdir()
    refusals = {
        "/missing/clip": "No CLIP checkpoint folder at '/missing/clip'",
        str(openai_file): "is a file, not a CLIP checkpoint folder",
        str(saved): "is a saved WeCLIP model, not a CLIP checkpoint",
        str(empty): "has no config.json: not a CLIP checkpoint folder",
    }
    argv = ["--checkpoint", "x.pth", "--output_dir", str(tmp_path / "out")]
    for clip, expected in refusals.items():
        with mock.patch.object(script, "convert_official_checkpoint") as convert, pytest.raises(SystemExit):
            script.main([*argv, "--clip", clip])
        convert.assert_not_called()
        error = capsys.readouterr().err
        assert expected in error and "--clip" in error and "openai/clip-vit-base-patch16" in error, error
        with pytest.raises((OSError, ValueError), match=expected):
            convert_official_checkpoint(dict(official), clip=clip, tokenizer=FakeCLIPTokenizer(TINY["vocab"]))
    unreachable = [
        (
            dict(clip="nobody/no-such-clip"),
            "CLIP tokenizer (--clip / clip=) checkpoint 'nobody/no-such-clip'",
        ),
        (dict(tokenizer="nobody/none"), "CLIP tokenizer (--tokenizer / tokenizer=) checkpoint 'nobody/none'"),
        (
            dict(tokenizer="/missing/tokenizer"),
            "No CLIP tokenizer folder at '/missing/tokenizer' (--tokenizer",
        ),
    ]
    for kwargs, expected in unreachable:
        with (
            mock.patch("weclip_hf.conversion.convert_weclip.load_official_checkpoint") as load,
            pytest.raises(OSError, match=re.escape(expected)),
        ):
            convert_official_checkpoint("x.pth", preset="voc", **kwargs)
        load.assert_not_called()
    # the CLIP itself, its tokenizer given: the id and the flag
    with pytest.raises(
        OSError, match=re.escape("the CLIP (--clip / clip=) checkpoint 'nobody/no-such-clip'")
    ):
        convert_official_checkpoint(
            dict(official), clip="nobody/no-such-clip", tokenizer=FakeCLIPTokenizer(TINY["vocab"])
        )


def test_checkpoint_without_clip_needs_clip(official):
    decoder_only = _without_clip(official)
    with pytest.raises(ValueError, match="--clip"):
        convert_official_checkpoint(decoder_only, preset="voc", tokenizer=FakeCLIPTokenizer(99))


# ---- WeCLIP+ (frozen CLIP + frozen DINOv2) -----------------------------------------------------------

# Tiny torch.hub DINOv2: width 24 (2 heads of 12), 2 blocks, patch 8 on a 4x4 grid (the CLIP's 32 px image, so
# both run at their native grid); the DINO head and the CLIP head (one CLIP layer) as WeCLIP+ has them.
TINY_DINO = dict(dino_width=24, dino_layers=2, dino_patch=8, dino_grid=4)
PLUS_KWARGS = dict(decoder_num_heads=4, dino_heads=2)


def official_dino_shapes(
    dino_width, dino_layers, dino_patch, dino_grid, registers=0, **_
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a torch.hub DINOv2 under ``dino_encoder.`` (the official order)."""
    w, p = dino_width, "dino_encoder."
    shapes = {p + "cls_token": (1, 1, w), p + "pos_embed": (1, 1 + dino_grid**2, w)}
    if registers:
        shapes[p + "register_tokens"] = (1, registers, w)
    shapes.update({p + "mask_token": (1, w), p + "patch_embed.proj.weight": (w, 3, dino_patch, dino_patch)})
    shapes[p + "patch_embed.proj.bias"] = (w,)
    for i in range(dino_layers):
        b = f"{p}blocks.{i}."
        shapes.update({b + "norm1.weight": (w,), b + "norm1.bias": (w,)})
        shapes.update({b + "attn.qkv.weight": (3 * w, w), b + "attn.qkv.bias": (3 * w,)})
        shapes.update({b + "attn.proj.weight": (w, w), b + "attn.proj.bias": (w,), b + "ls1.gamma": (w,)})
        shapes.update({b + "norm2.weight": (w,), b + "norm2.bias": (w,)})
        shapes.update({b + "mlp.fc1.weight": (4 * w, w), b + "mlp.fc1.bias": (4 * w,)})
        shapes.update({b + "mlp.fc2.weight": (w, 4 * w), b + "mlp.fc2.bias": (w,), b + "ls2.gamma": (w,)})
    shapes.update({p + "norm.weight": (w,), p + "norm.bias": (w,)})
    return shapes


def make_official_plus_state_dict(registers: int = 0, seed: int = 0, **sizes) -> OrderedDict:
    """A random official WeCLIP+ state dict in the official order: ``encoder.*`` (CLIP, fp16 as the official
    GPU checkpoint), ``dino_encoder.*``, ``decoder_fts_fuse.*`` (one CLIP layer), ``dino_decoder_fts_fuse.*``,
    ``decoder.*``, ``par.kernel``."""
    sizes = {**TINY, **TINY_DINO, **sizes}
    gen = torch.Generator().manual_seed(seed)
    shapes = {"encoder." + k: v for k, v in official_clip_shapes(**sizes).items()}
    shapes.update(official_dino_shapes(registers=registers, **sizes))
    decoder = official_decoder_shapes(**sizes, feature_layers=1)
    head = official_head_shapes("dino_decoder_fts_fuse", sizes["dino_width"], sizes["decoder_dim"], 1)
    shapes.update({k: v for k, v in decoder.items() if k.startswith("decoder_fts_fuse.")})
    shapes.update(head)
    shapes.update({k: v for k, v in decoder.items() if not k.startswith("decoder_fts_fuse.")})
    sd = OrderedDict()
    for key, shape in shapes.items():
        value = _par_kernel() if key == "par.kernel" else _random(key.removeprefix("encoder."), shape, gen)
        sd[key] = value.half() if key.startswith("encoder.") else value
    return sd


def ref_dino(sd: dict, pixel_values: torch.Tensor, heads: int) -> torch.Tensor:
    """The torch.hub DINOv2 from its own keys (packed qkv, LayerScale, registers after the class token) at its
    native grid: the final LayerNorm-ed patch tokens [B, N, D]."""
    p = "dino_encoder."
    w = sd[p + "patch_embed.proj.weight"]
    x = (
        F.conv2d(pixel_values, w, sd[p + "patch_embed.proj.bias"], stride=w.shape[-1])
        .flatten(2)
        .transpose(1, 2)
    )
    x = torch.cat([sd[p + "cls_token"].expand(len(x), -1, -1), x], dim=1) + sd[p + "pos_embed"]
    registers = sd.get(p + "register_tokens")
    if registers is not None:
        x = torch.cat([x[:, :1], registers.expand(len(x), -1, -1), x[:, 1:]], dim=1)
    d = x.shape[-1]

    def ln(v, name):
        return F.layer_norm(v, (d,), sd[name + ".weight"], sd[name + ".bias"], 1e-6)

    i = 0
    while f"{p}blocks.{i}.norm1.weight" in sd:
        b = f"{p}blocks.{i}."
        qkv = F.linear(ln(x, b + "norm1"), sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        q, k, v = qkv.unflatten(-1, (3, heads, d // heads)).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        x = x + sd[b + "ls1.gamma"] * F.linear(attn, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = F.gelu(F.linear(ln(x, b + "norm2"), sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]))
        x = x + sd[b + "ls2.gamma"] * F.linear(h, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        i += 1
    return ln(x, p + "norm")[:, 1 + (0 if registers is None else registers.shape[1]) :]


@pytest.fixture(scope="module", params=[0, 4], ids=["no-registers", "4-registers"])
def official_plus(request):
    return make_official_plus_state_dict(registers=request.param)


@pytest.fixture(scope="module")
def plus_config(official_plus):
    return infer_config_from_official(official_plus, "voc-plus", **PLUS_KWARGS)


def test_infer_weclip_plus_config_from_tiny_shapes(official_plus, plus_config):
    from transformers import Dinov2WithRegistersConfig

    from weclip_hf import WeCLIPPlusConfig

    c, registers = plus_config, "dino_encoder.register_tokens" in official_plus
    assert isinstance(c, WeCLIPPlusConfig) and c.model_type == "weclip_plus"
    assert isinstance(c.dino_config, Dinov2WithRegistersConfig) == registers
    assert c.dino_num_register_tokens == (4 if registers else 0)
    dino = c.dino_config
    assert (dino.hidden_size, dino.num_hidden_layers, dino.num_attention_heads, dino.mlp_ratio) == (
        24,
        2,
        2,
        4,
    )
    assert (dino.patch_size, dino.image_size, dino.layer_norm_eps) == (8, 32, 1e-6)
    assert (c.num_feature_layers, c.decoder_num_layers, c.decoder_hidden_size) == (1, 2, 32)
    assert (c.cam_feature_block, c.rfm_use_box_mask, c.rfm_start_step) == (
        -2,
        False,
        0,
    )  # the voc-plus preset
    assert (
        infer_config_from_official(official_plus, "voc-plus").dino_config.num_attention_heads == 1
    )  # 24 // 64


def test_dino_heads_sets_the_dinov2_head_count_and_is_no_field_of_the_config(plus_config):
    """``dino_heads`` (an override of `infer_config_from_official`) is the DINOv2's head count, taken out of the
    overrides: it was a stray ``dino_heads`` field of the converted config.json too."""
    assert plus_config.dino_config.num_attention_heads == PLUS_KWARGS["dino_heads"]
    assert "dino_heads" not in plus_config.to_dict() and not hasattr(plus_config, "dino_heads")


def test_real_dinov2_sizes_give_the_official_variants():
    from weclip_hf.configuration_weclip_plus import DINO_VARIANTS
    from weclip_hf.conversion import dino_variant_name, infer_dino_config

    for registers, name in ((0, "dinov2_vitb14"), (4, "dinov2_vitb14_reg")):
        shapes = official_dino_shapes(768, 12, 14, 37, registers=registers)
        config = infer_dino_config({k: torch.empty(s, device="meta") for k, s in shapes.items()})
        assert (config.hidden_size, config.num_attention_heads, config.image_size) == (768, 12, 518)
        assert dino_variant_name(config) == name
        # the converted model card's base model: the variant's Hub checkpoint
        weclip_plus = mock.Mock(model_type="weclip_plus", dino_config=config)
        assert _script().dino_hub_id(weclip_plus) == DINO_VARIANTS[name].hub_id


def test_weclip_plus_round_trip_official_ours_official(official_plus, plus_config):
    from weclip_hf import WeCLIPPlusForSemanticSegmentation

    ours, report = official_to_weclip(official_plus, plus_config)
    assert sorted([*report.mapped, *report.ignored]) == sorted(official_plus)
    assert set(report.ignored) == {"par.kernel"}
    # the dtype breakdown counts every tensor read: the DINO backbone's and its head's too
    assert sum(report.source_dtypes.values()) == len(report.mapped)
    # and the report names each by the key of ours it became (the DINO backbone's under dino_branch.backbone.)
    assert {name for names in report.mapped.values() for name in names} == set(ours) - {"training_step"}
    # CLIP keys without encoder. (OpenAI's names): the DINO head is no CLIP key either (`without_dino`)
    bare = {k.removeprefix("encoder."): v for k, v in official_plus.items()}
    from_bare, bare_report = official_to_weclip(bare, plus_config)
    assert bare_report.prefix == "" and from_bare.keys() == ours.keys()
    assert all(torch.equal(from_bare[k], ours[k]) for k in ours)
    model = WeCLIPPlusForSemanticSegmentation(plus_config)
    result = model.load_state_dict(ours, strict=False)
    assert sorted(result.missing_keys) == sorted(report.computed) and not result.unexpected_keys
    # the packed qkv is split q, k, v in that order; the DINO head is the head of the DINO branch
    w, qkv = TINY_DINO["dino_width"], official_plus["dino_encoder.blocks.1.attn.qkv.weight"]
    assert torch.equal(ours["dino_branch.backbone.encoder.layer.1.attention.k_proj.weight"], qkv[w : 2 * w])
    fuse = official_plus["dino_decoder_fts_fuse.linear_fuse.weight"]
    assert torch.equal(ours["dino_branch.head.fuse.weight"], fuse)
    back = weclip_to_official(ours)
    assert back.keys() == official_plus.keys()
    assert all(torch.equal(back[k], official_plus[k].float()) for k in official_plus)
    again, _ = official_to_weclip(back, plus_config)
    assert again.keys() == ours.keys() and all(torch.equal(again[k], ours[k]) for k in ours)


def test_weclip_plus_round_trip_ours_official_ours(plus_config):
    from weclip_hf import WeCLIPPlusForSemanticSegmentation

    torch.manual_seed(3)
    state = WeCLIPPlusForSemanticSegmentation(plus_config).state_dict()
    official = weclip_to_official(state)
    assert (
        sum(k.startswith("dino_encoder.") for k in official)
        == len([k for k in state if k.startswith("dino_branch.backbone.")]) - 2 * 2 * TINY_DINO["dino_layers"]
    )  # each block's q, k, v (weight, bias) packed in one qkv
    ours, report = official_to_weclip(official, plus_config)
    assert ours.keys() == {k for k in state if k not in report.computed}
    assert all(torch.equal(ours[k], state[k]) for k in ours)


def test_converted_weclip_plus_matches_the_official_layout(official_plus):
    """DINOv2 tokens, both branches' logits and the prediction of the converted model equal the reference
    computations from the official keys (the DINO and CLIP grids are both 4 x 4: no resize between them)."""
    from weclip_hf import WeCLIPPlusForSemanticSegmentation

    model = convert_official_checkpoint(
        dict(official_plus), preset="voc-plus", tokenizer=FakeCLIPTokenizer(TINY["vocab"]), **PLUS_KWARGS
    )
    assert isinstance(model, WeCLIPPlusForSemanticSegmentation) and not model.training
    assert not any(p.requires_grad for p in model.dino_branch.backbone.parameters())
    assert all(p.requires_grad for p in model.dino_branch.head.parameters())
    torch.manual_seed(4)
    pixel_values = torch.randn(2, 3, 32, 32)
    sd = {k: v.float() for k, v in official_plus.items()}
    tokens = ref_dino(sd, pixel_values, heads=2)
    ref_layers, _ = ref_vision(_clip_only(sd), pixel_values, heads=2)
    logits_clip = ref_decoder(sd, ref_layers[-2:-1], (4, 4), heads=4)  # WeCLIP+: the block before the last
    head = {
        k.replace("dino_decoder_fts_fuse.", "decoder_fts_fuse."): v for k, v in sd.items() if "fts_fuse" in k
    }
    with_cls = torch.cat([tokens[:, :1], tokens], dim=1)  # ref_decoder drops the first (class) token
    logits_dino = ref_decoder({**sd, **head}, [with_cls], (4, 4), heads=4)
    with torch.no_grad():
        ours_tokens, grid = model.dino_branch.patch_tokens(pixel_values)
        out = model(pixel_values)
    assert grid == (4, 4)
    torch.testing.assert_close(ours_tokens, tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits_clip, logits_clip, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits_dino, logits_dino, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits, (logits_clip + logits_dino) / 2, rtol=1e-5, atol=1e-5)


def test_method_mismatch_is_a_clear_error(official, official_plus, plus_config, tiny_official_config):
    tokenizer = FakeCLIPTokenizer(TINY["vocab"])
    with pytest.raises(
        ValueError, match=r"official WeCLIP\+ checkpoint, but preset 'voc' builds WeCLIP\. .*'voc-plus'"
    ):
        convert_official_checkpoint(dict(official_plus), preset="voc", tokenizer=tokenizer)
    with pytest.raises(
        ValueError, match=r"no DINOv2 branch .*official WeCLIP checkpoint, but preset 'coco-plus'"
    ):
        convert_official_checkpoint(dict(official), preset="coco-plus", tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"dino_encoder\.\*.*a WeCLIPConfig builds WeCLIP\."):
        official_to_weclip(official_plus, tiny_official_config)
    with pytest.raises(ValueError, match=r"a WeCLIPPlusConfig builds WeCLIP\+.*'voc' or 'coco'"):
        official_to_weclip(official, plus_config)


def test_the_default_preset_is_the_checkpoints_method_and_dataset(official, official_plus):
    """Without a preset a checkpoint converts with its own: WeCLIP+ where it holds a DINOv2 branch, COCO where its
    classifier predicts 81 classes; another count gets the VOC preset, whose count check names it."""
    from weclip_hf.conversion import official_preset

    def predicting(state, num_labels):
        weight = state["decoder.linear_pred.weight"]
        return {**state, "decoder.linear_pred.weight": weight.new_zeros(num_labels, *weight.shape[1:])}

    assert [official_preset(predicting(official, n)) for n in (21, 81, 5)] == ["voc", "coco", "voc"]
    assert [official_preset(predicting(official_plus, n)) for n in (21, 81)] == ["voc-plus", "coco-plus"]


def test_broken_weclip_plus_checkpoints_are_named(official_plus, plus_config):
    for key in ("dino_encoder.blocks.1.ls2.gamma", "dino_decoder_fts_fuse.linear_fuse.bias"):
        with pytest.raises(ValueError, match=r"Missing keys.*" + key.replace(".", r"\.")):
            official_to_weclip({k: v for k, v in official_plus.items() if k != key}, plus_config)
    for key in ("dino_encoder.blocks.0.mlp.w12.weight", "dino_encoder.head.weight"):  # SwiGLU, a hub head
        with pytest.raises(ValueError, match=r"Unknown DINO keys.*" + key.replace(".", r"\.")):
            official_to_weclip({**official_plus, key: torch.zeros(2)}, plus_config)
    wrong = {**official_plus, "dino_encoder.blocks.0.attn.qkv.bias": torch.zeros(70)}
    with pytest.raises(ValueError, match=r"qkv\.bias.*3 equal parts"):
        official_to_weclip(wrong, plus_config)
    extra = {**official_plus, "dino_encoder.blocks.2.ls1.gamma": torch.ones(TINY_DINO["dino_width"])}
    with pytest.raises(ValueError, match=r"dino_branch\.backbone\.encoder\.layer\.2\.layer_scale1\.lambda1"):
        official_to_weclip(extra, plus_config)


def test_the_dino_key_tables_name_every_key_they_cannot_map(official_plus, plus_config):
    """`official_to_dino` and `dino_to_official`, on their own, name an unknown key of the backbone and of the
    head (not only the whole conversion, which also checks every key against the config)."""
    from weclip_hf.conversion import convert_hub_dinov2_state_dict, dino_to_official, official_to_dino

    # a SwiGLU (ViT-g) hub block is not supported: its key is named, not dropped
    hub = {
        k.removeprefix("dino_encoder."): v for k, v in official_plus.items() if k.startswith("dino_encoder.")
    }
    with pytest.raises(ValueError, match=r"Unknown torch.hub DINOv2 weights.*blocks\.0\.mlp\.w12\.weight"):
        convert_hub_dinov2_state_dict({**hub, "blocks.0.mlp.w12.weight": torch.zeros(2)})
    for key in ("dino_encoder.blocks.0.mlp.w12.weight", "dino_decoder_fts_fuse.linear_extra.weight"):
        with pytest.raises(ValueError, match=r"Unknown DINO keys.*" + re.escape(key)):
            official_to_dino({**official_plus, key: torch.zeros(2)})
    ours, _ = official_to_weclip(official_plus, plus_config)
    for key in ("dino_branch.backbone.encoder.layer.0.extra.weight", "dino_branch.head.extra.weight"):
        with pytest.raises(ValueError, match=r"Unknown DINO keys.*" + re.escape(key)):
            dino_to_official({**ours, key: torch.zeros(2)})


def test_a_dinov2_mlp_ratio_that_is_no_whole_number_is_named():
    """transformers' DINOv2 takes a whole MLP ratio (``Dinov2Config.mlp_ratio: int``): fc1's 60 rows over a width of
    24 (2.5) are refused naming the tensor and its sizes; a float ratio was refused by the config's own validation,
    naming neither."""
    from weclip_hf.conversion import infer_dino_config

    shapes = official_dino_shapes(24, 1, 8, 4)
    shapes["dino_encoder.blocks.0.mlp.fc1.weight"] = (60, 24)
    with pytest.raises(ValueError, match=r"dino_encoder\.blocks\.0\.mlp\.fc1\.weight has 60 rows.*width 24"):
        infer_dino_config({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    shapes["dino_encoder.blocks.0.mlp.fc1.weight"] = (72, 24)
    assert infer_dino_config({k: torch.empty(s, device="meta") for k, s in shapes.items()}).mlp_ratio == 3


def test_a_dino_head_alone_makes_a_weclip_plus_checkpoint(official):
    """A DINO branch is ``dino_encoder.*`` or ``dino_decoder_fts_fuse.*``: a checkpoint with the head alone is a
    WeCLIP+ one (refused by a WeCLIP preset as such), not a WeCLIP one with stray keys."""
    from weclip_hf.conversion.config_inference import check_checkpoint_method

    head_only = {**official, "dino_decoder_fts_fuse.linear_fuse.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"official WeCLIP\+ checkpoint, but preset 'voc' builds WeCLIP\."):
        check_checkpoint_method(head_only, "weclip", "preset 'voc'")


def test_hostile_weclip_plus_files_are_refused(tmp_path, official_plus):
    """The WeCLIP+ conversion reads its file with the same safe loader: code is never run, sizes are checked."""
    from test_convert_hostile import _declare_size

    tokenizer = FakeCLIPTokenizer(TINY["vocab"])
    target = tmp_path / "executed"
    torch.save({**official_plus, "payload": _Payload(target)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="needs code"):
        convert_official_checkpoint(tmp_path / "evil.pth", preset="voc-plus", tokenizer=tokenizer)
    assert not target.exists()
    path = tmp_path / "huge.pth"
    torch.save(official_plus, path)  # one storage per tensor, numbered in order
    member = f"huge/data/{list(official_plus).index('dino_encoder.pos_embed')}"
    _declare_size(path, member, 0xF0000000)  # 3.75 GiB declared
    with pytest.raises(ValueError, match=f"'{member}'.*max_member_bytes"):
        convert_official_checkpoint(path, preset="voc-plus", tokenizer=tokenizer)


def test_script_converts_a_weclip_plus_checkpoint(tmp_path):
    from transformers import AutoModelForSemanticSegmentation

    from weclip_hf import WeCLIPPlusForSemanticSegmentation

    require_data(TOKENIZER, "the CLIP tokenizer (49,408 tokens, as the official checkpoints)")
    sd = make_official_plus_state_dict(registers=4, vocab=49408, context=77)
    checkpoint, out = tmp_path / "WeCLIP_Plus_tiny.pth", tmp_path / "converted"
    torch.save(sd, checkpoint)
    argv = [
        "--checkpoint",
        checkpoint,
        "--tokenizer",
        TOKENIZER,
        "--preset",
        "coco-plus",
        "--output_dir",
        out,
    ]
    with pytest.raises(ValueError, match="classes but preset 'coco-plus' has 81"):
        _script().main([str(a) for a in argv])
    del argv[4:6]  # no --preset: the checkpoint's (it was refused as "preset 'voc' builds WeCLIP")
    _script().main([str(a) for a in argv])
    model = AutoModelForSemanticSegmentation.from_pretrained(out)
    assert isinstance(model, WeCLIPPlusForSemanticSegmentation) and model.config.dino_num_register_tokens == 4
    expected, _ = official_to_weclip(sd, model.config)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    card = (out / "README.md").read_text()
    dino = "2 blocks of width 24, 4 register tokens"  # TINY_DINO's
    for text in ("WeCLIP+", "Frozen CLIP-DINO", "`voc-plus`", "`dino_encoder.*`", dino):
        assert text in card, text


def test_weclip_plus_with_clip_from_a_transformers_folder(official_plus, clip_folder, plus_config):
    """The CLIP of a WeCLIP+ conversion may come from a transformers folder (the checkpoint's own, fp16 here, is
    compared with it); the DINOv2 always comes from the checkpoint."""
    from transformers import CLIPModel

    kwargs = dict(clip=str(clip_folder), preset="voc-plus", tokenizer=FakeCLIPTokenizer(TINY["vocab"]))
    without_clip = _without_clip(official_plus)
    expected, _ = official_to_weclip(official_plus, plus_config)
    folder = CLIPModel.from_pretrained(clip_folder).state_dict()
    # a CLIP of other sizes than the official one is taken for a checkpoint without its own on the user's word
    for checkpoint, check_clip in ((without_clip, False), (dict(official_plus), True)):
        state = convert_official_checkpoint(
            checkpoint, check_clip=check_clip, **kwargs, **PLUS_KWARGS
        ).state_dict()
        assert all(torch.equal(state[k], v) for k, v in folder.items() if not k.endswith("position_ids"))
        assert all(
            torch.equal(state[k], v) for k, v in expected.items() if k.startswith(("dino_", "decoder."))
        )


def test_only_a_clip_of_the_official_sizes_is_named_as_the_official_clip():
    from transformers import CLIPConfig

    from weclip_hf.conversion import is_official_clip

    def clip(vision: dict, text: dict | None = None, projection_dim: int = 512) -> CLIPConfig:
        return CLIPConfig(vision_config=vision, text_config=text or {}, projection_dim=projection_dim)

    assert is_official_clip(clip(dict(patch_size=16)))  # OpenAI's ViT-B/16
    assert not is_official_clip(clip({}))  # ViT-B/32
    # ViT-B/16 at 384 px: another position grid, another model
    assert not is_official_clip(clip(dict(patch_size=16, image_size=384)))
    assert not is_official_clip(clip(dict(patch_size=16, intermediate_size=2048)))  # another MLP
    assert not is_official_clip(
        clip(dict(patch_size=16, hidden_size=1024, num_attention_heads=16, num_hidden_layers=24))
    )
    # the official image tower beside another text tower or projection (other class embeddings): another model
    assert not is_official_clip(clip(dict(patch_size=16), dict(num_hidden_layers=13)))
    assert not is_official_clip(clip(dict(patch_size=16), dict(hidden_size=768, num_attention_heads=12)))
    assert not is_official_clip(clip(dict(patch_size=16), projection_dim=768))
    # a WeCLIP config (its CLIP's towers and projection) is read the same way
    assert is_official_clip(WeCLIPConfig(vision_config=dict(patch_size=16)))
    assert not is_official_clip(
        WeCLIPConfig(vision_config=dict(patch_size=16), text_config=dict(vocab_size=100))
    )


# ---- checkpoints as the official training scripts (and forks of them) save them ----------------------


def with_forward_cache(state: dict, grid: int = 3) -> OrderedDict:
    """``state`` as the official training scripts save it: the official CLIP forward registers the position
    embedding resized to its last input's grid (``encoder.visual.positional_embedding_new``, fp16, after the
    CLIP keys) on the model, so every trained checkpoint holds it."""
    width = state["encoder.visual.positional_embedding"].shape[-1]
    keys = list(state)
    cut = max(i for i, k in enumerate(keys) if k.startswith("encoder.")) + 1
    cache = {"encoder.visual.positional_embedding_new": torch.randn(1 + grid * grid, width).half()}
    return OrderedDict([*list(state.items())[:cut], *cache.items(), *list(state.items())[cut:]])


def test_the_resized_position_embedding_of_trained_checkpoints_is_dropped(
    official, official_plus, converted_tiny, clip_folder
):
    """Every checkpoint the official scripts save holds ``encoder.visual.positional_embedding_new`` (a cache of the
    official forward): WeCLIP's and WeCLIP+'s convert as without it, also with a given CLIP; it was refused as an
    unknown CLIP key."""
    reference, tokenizer = converted_tiny
    for clip in (None, str(clip_folder)):
        model = convert_official_checkpoint(
            with_forward_cache(official), clip=clip, preset="voc", tokenizer=tokenizer, decoder_num_heads=4
        )
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())
    report = convert_official_checkpoint(
        with_forward_cache(official), preset="voc", tokenizer=tokenizer, decoder_num_heads=4
    ).conversion_report
    assert "resized to its last input" in report.ignored["encoder.visual.positional_embedding_new"]
    plus_kwargs = dict(preset="voc-plus", tokenizer=FakeCLIPTokenizer(TINY["vocab"]), **PLUS_KWARGS)
    plain = convert_official_checkpoint(dict(official_plus), **plus_kwargs).state_dict()
    trained = convert_official_checkpoint(with_forward_cache(official_plus), **plus_kwargs).state_dict()
    assert all(torch.equal(trained[k], v) for k, v in plain.items())


def test_the_report_breaks_down_by_dtype_the_tensors_it_counts_and_names_the_dropped_ones(
    official, converted_tiny, clip_folder
):
    """The dropped ``encoder.visual.positional_embedding_new`` was in the dtype breakdown and not in the count
    ("158 official tensors (1 float16, 158 float32)"; the real WeCLIP's "386 official tensors (148 float16,
    239 float32)"), and with --clip counted among the checkpoint's CLIP tensors read, not used, and missing
    from "Ignored:". Now the breakdown sums to the count, and the key is under "Ignored:" either way."""
    _, tokenizer = converted_tiny
    cached = with_forward_cache(official)
    dropped = "encoder.visual.positional_embedding_new"
    for clip in (None, str(clip_folder)):
        report = convert_official_checkpoint(
            cached, clip=clip, preset="voc", tokenizer=tokenizer, decoder_num_heads=4
        ).conversion_report
        counted = len(report.mapped) + len(report.replaced)
        assert sum(report.source_dtypes.values()) == counted == len(cached) - 2, report.source_dtypes
        assert set(report.ignored) == {"par.kernel", dropped} and dropped not in report.replaced
        summary = report.summary()
        assert summary.startswith(f"{counted} official tensors (") and f"Ignored: {dropped} (" in summary
    assert f"instead of the checkpoint's {len(_clip_only(official))} CLIP tensors" in summary


def test_merging_reports_adds_every_list():
    """`ConversionReport.merge` adds the other report's keys: its replaced CLIP tensors and CLIP keys after this
    one's, its computed keys to this one's."""
    from weclip_hf.conversion import ConversionReport

    report = ConversionReport(replaced=["encoder.a"], clip_keys=["x"], computed=["class_text_embeds"])
    other = ConversionReport(replaced=["encoder.b"], clip_keys=["y"], computed=["background_text_embeds"])
    report.merge(other)
    assert (report.replaced, report.clip_keys) == (["encoder.a", "encoder.b"], ["x", "y"])
    assert report.computed == ["background_text_embeds", "class_text_embeds"]


def test_the_report_summary_says_what_each_part_holds_and_nothing_it_does_not():
    """`ConversionReport.summary`: the tensors read and written, a given CLIP in one sentence naming it (the
    checkpoint's own CLIP tensors replaced only where it had them: none read, none said), the keys computed after
    loading; `raise_for_keys` names the count, every key sorted, then the hint."""
    from weclip_hf.conversion import ConversionReport
    from weclip_hf.conversion.report import raise_for_keys

    report = ConversionReport(
        mapped={"decoder.linear_pred.weight": ["decoder.classifier.weight"]},
        source_dtypes={"float32": 1},
        clip_keys=["vision_model.a", "text_model.b"],
        clip_source="the CLIP `c`",
        computed=["class_text_embeds"],
    )
    assert report.summary() == (
        "1 official tensors (1 float32) -> 3 tensors (float32). CLIP: 2 tensors from the CLIP `c`. "
        "Computed after loading: class_text_embeds."
    )
    with pytest.raises(ValueError) as raised:
        raise_for_keys("Missing keys", ["b.weight", "a.bias"], "Check the preset.")
    assert str(raised.value) == "Missing keys (2): a.bias, b.weight. Check the preset."
    raise_for_keys("Missing keys", [])  # nothing to name: no error


def test_a_given_clip_of_another_tensor_shape_is_named_not_compared():
    """`_compare_clip` names a tensor of the checkpoint's CLIP whose shape the given CLIP's differs from (its text
    tower's sizes are not checked before: a --clip of another context length or vocabulary reaches it), with both
    shapes; comparing the values raised torch's own error, naming no key."""
    from weclip_hf.conversion.convert_weclip import _compare_clip

    ckpt = {
        "text_model.embeddings.position_embedding.weight": torch.zeros(16, 4),
        "logit_scale": torch.ones(()),
    }
    given = {
        "text_model.embeddings.position_embedding.weight": torch.zeros(77, 4),
        "logit_scale": torch.ones(()),
    }
    assert _compare_clip(ckpt, given) == [
        "text_model.embeddings.position_embedding.weight (shape (16, 4) vs (77, 4))"
    ]


def test_a_checkpoint_converts_with_its_own_preset_which_the_model_records(official_plus):
    """Without a preset a WeCLIP+ checkpoint converts with its own (`official_preset`: 'voc-plus'), which the report
    names and the config records as the preset it was trained with (whose evaluation settings it follows)."""
    model = convert_official_checkpoint(
        dict(official_plus), tokenizer=FakeCLIPTokenizer(TINY["vocab"]), **PLUS_KWARGS
    )
    assert model.conversion_report.preset == model.config.training_preset == "voc-plus"


def test_training_checkpoint_entries_beside_the_weights(tmp_path, official, caplog):
    """The weights under "model" / "state_dict" / "model_state_dict" of a training checkpoint are taken, the other
    entries (optimizer state, iteration) named in a warning; several state dicts or none are refused by name."""
    import logging

    optimizer = {"state": {0: {"exp_avg": torch.zeros(3), "step": torch.tensor(5.0)}}, "param_groups": []}
    for entry in ("model", "state_dict", "model_state_dict"):
        path = tmp_path / f"{entry}.pth"
        torch.save({entry: dict(official), "optimizer": optimizer, "iter": 30000}, path)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            loaded = load_official_checkpoint(path)
        assert loaded.keys() == official.keys()
        assert f"converting the weights under '{entry}'; left out: iter, optimizer" in caplog.text
    torch.save({"model": dict(official), "state_dict": dict(official)}, tmp_path / "two.pth")
    with pytest.raises(ValueError, match="several state dicts \\('state_dict', 'model'\\)"):
        load_official_checkpoint(tmp_path / "two.pth")
    torch.save({"weights": dict(official), "iter": 3}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not tensors: \\['iter', 'weights'\\].*may be under 'weights'"):
        load_official_checkpoint(tmp_path / "other.pth")
    metadata = {"model": {"arch": "ViT-B/16", "layers": 12}, "state_dict": dict(official)}
    torch.save(metadata, tmp_path / "metadata.pth")  # a "model" entry of settings is no second state dict
    assert load_official_checkpoint(tmp_path / "metadata.pth").keys() == official.keys()
    looped = {"x": torch.zeros(2), "iter": 3}
    looped["model"] = looped  # a pickle may hold a dict inside itself
    torch.save(looped, tmp_path / "looped.pth")
    with pytest.raises(ValueError, match="its entries hold themselves"):
        load_official_checkpoint(tmp_path / "looped.pth")
    # weights nested one entry deeper, with no tensor beside them (the docstring's "nested ones too")
    for nesting in (
        {"state_dict": {"model": dict(official), "epoch": 1}},
        {"model": {"state_dict": dict(official)}},
    ):
        torch.save(nesting, tmp_path / "nested.pth")
        assert load_official_checkpoint(tmp_path / "nested.pth").keys() == official.keys()
    empty_loop = {"iter": 3}
    empty_loop["model"] = empty_loop  # holding itself and no tensor: refused, not read forever
    torch.save(empty_loop, tmp_path / "empty_loop.pth")
    with pytest.raises(ValueError, match="not tensors"):
        load_official_checkpoint(tmp_path / "empty_loop.pth")
    given = convert_official_checkpoint(  # a dict given is read as a file's contents
        {"model": {"module." + k: v for k, v in official.items()}, "iter": 3},
        preset="voc",
        tokenizer=FakeCLIPTokenizer(TINY["vocab"]),
        decoder_num_heads=4,
    )
    assert given.conversion_report.mapped.keys() >= {"decoder.linear_pred.weight", "encoder.visual.proj"}
    torch.save({0: torch.zeros(2)}, tmp_path / "ints.pth")
    with pytest.raises(ValueError, match="parameter names as keys, got 1 key\\(s\\) of other types: \\[0\\]"):
        load_official_checkpoint(tmp_path / "ints.pth")
    with pytest.raises(ValueError, match="parameter names as keys"):
        convert_official_checkpoint({0: torch.zeros(2)}, tokenizer=FakeCLIPTokenizer(TINY["vocab"]))


def test_bare_openai_clip_names_with_a_given_clip(official, clip_folder, converted_tiny):
    """A checkpoint whose CLIP keys carry no ``encoder.`` (OpenAI's names) converts with a given CLIP too (its
    CLIP tensors read, compared, not used); a key no table maps is still named."""
    reference, tokenizer = converted_tiny
    bare = {k.removeprefix("encoder."): v for k, v in official.items()}
    for check_clip in (True, False):
        model = convert_official_checkpoint(
            bare,
            clip=str(clip_folder),
            check_clip=check_clip,
            preset="voc",
            tokenizer=tokenizer,
            decoder_num_heads=4,
        )
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())
        assert len(model.conversion_report.replaced) == len(_clip_only(official))
    with pytest.raises(ValueError, match=r"Unknown keys in the checkpoint .*encoder\.visual\.extra"):
        convert_official_checkpoint(
            {**official, "encoder.visual.extra": torch.zeros(2)},
            clip=str(clip_folder),
            check_clip=False,
            preset="voc",
            tokenizer=tokenizer,
            decoder_num_heads=4,
        )


def test_a_checkpoint_of_other_classes_converts_with_its_class_names(tmp_path, official_plus):
    """A classifier of another count names the method's presets and --class_names; with the checkpoint's own class
    names it converts (the preset's method constants, the given classes as labels) and the card says so."""
    from transformers import AutoModelForSemanticSegmentation

    from weclip_hf.presets import get_preset

    require_data(TOKENIZER, "the CLIP tokenizer (49,408 tokens, as the official checkpoints)")
    with pytest.raises(
        ValueError, match=r"pass the matching --preset \(voc-plus: 21, coco-plus: 81\).*--class_names"
    ):
        infer_config_from_official(official_plus, "coco-plus", **PLUS_KWARGS)
    sd = make_official_state_dict(vocab=49408, context=77, num_classes=4)
    checkpoint, out = tmp_path / "three_classes.pth", tmp_path / "converted"
    torch.save(sd, checkpoint)
    argv = ["--checkpoint", checkpoint, "--tokenizer", TOKENIZER, "--output_dir", out]
    with pytest.raises(
        ValueError, match=r"predicts 4 classes but preset 'voc' has 21 .*\(voc: 21, coco: 81\)"
    ):
        _script().main([str(a) for a in argv])
    with pytest.raises(ValueError, match="predicts 4 classes but the class names given have 3"):
        _script().main([str(a) for a in [*argv, "--class_names", "cat", "dog"]])
    _script().main([str(a) for a in [*argv, "--class_names", "cat", "dog", "bird"]])
    model = AutoModelForSemanticSegmentation.from_pretrained(out)
    assert model.config.id2label == {0: "background", 1: "cat", 2: "dog", 3: "bird"}
    assert model.config.rfm_num_maps == get_preset("voc").config["rfm_num_maps"]
    assert "with the checkpoint's own classes: cat, dog, bird" in (out / "README.md").read_text()


def test_a_weclip_plus_checkpoint_with_a_24_block_clip_warns(caplog):
    """The official WeCLIP+ code divides the CLIP logit scale by 4 for a 24-block CLIP (its unused ViT-L/14 path),
    which this package does not: the conversion says so."""
    import logging

    sd = make_official_plus_state_dict(vision_layers=24, vision_width=64)
    with caplog.at_level(logging.WARNING):
        convert_official_checkpoint(
            sd, preset="voc-plus", tokenizer=FakeCLIPTokenizer(TINY["vocab"]), **PLUS_KWARGS
        )
    assert "24-block CLIP (ViT-L/14)" in caplog.text and "divides the CLIP logit scale by 4" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        convert_official_checkpoint(
            make_official_plus_state_dict(),
            preset="voc-plus",
            tokenizer=FakeCLIPTokenizer(TINY["vocab"]),
            **PLUS_KWARGS,
        )
    assert "24-block" not in caplog.text
    # WeCLIP's own code has no such path: a WeCLIP checkpoint with a 24-block CLIP converts without the warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        convert_official_checkpoint(
            make_official_state_dict(vision_layers=24, vision_width=64),
            preset="voc",
            tokenizer=FakeCLIPTokenizer(TINY["vocab"]),
            decoder_num_heads=4,
        )
    assert "24-block" not in caplog.text


@pytest.mark.parametrize("prefix", ["", "encoder."])
def test_a_clip_checkpoint_given_as_a_weclip_checkpoint_is_named_for_what_it_is(prefix):
    """A CLIP alone (OpenAI's ViT-B-16.pt layout, or the encoder.* of a WeCLIP checkpoint without its decoder) was
    refused as "missing keys" of the decoder: it is named as a CLIP checkpoint, with the way to use it."""
    clip_only = make_official_state_dict(prefix=prefix, with_decoder=False)
    with pytest.raises(
        ValueError, match=r"holds a CLIP .* and no WeCLIP decoder .*--clip_model_name_or_path"
    ):
        infer_config_from_official(clip_only, "voc")

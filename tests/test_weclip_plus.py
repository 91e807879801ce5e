"""WeCLIP+: config, DINO branch (hub position rule, the six DINOv2 variants), the new losses, and parity of
those pieces with the official code on `../shared/data/parity-plus` (fp32 variant)."""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    SHARED,
    TINY_DINO,
    TINY_VISION,
    make_tiny_config,
    make_tiny_plus_config,
    require_data,
    with_varied_decoder,
)
from transformers import (
    AutoModel,
    AutoModelForSemanticSegmentation,
    CLIPVisionConfig,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
)

from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPPlusForSemanticSegmentation
from weclip_hf.affinity import rfm_affinity, transition_matrix
from weclip_hf.branch_losses import (
    branch_predictions,
    cross_branch_losses,
    dice_loss,
    self_training_labels,
    weclip_plus_losses,
)
from weclip_hf.cam import cam_box_masks, refine_cams
from weclip_hf.configuration_weclip_plus import (
    DINO_VARIANTS,
    WeCLIPPlusConfig,
    dino_variant_config,
    dino_variant_name,
)
from weclip_hf.conversion import convert_hub_dinov2_state_dict
from weclip_hf.dino_branch import (
    Dinov2EmbeddingsWithHubPositions,
    WeCLIPPlusDinoBranch,
    hub_position_embeddings,
    resize_to_patch_multiple,
)
from weclip_hf.feature_head import WeCLIPFeatureHead
from weclip_hf.losses import affinity_loss, affinity_targets, segmentation_loss
from weclip_hf.modeling_weclip_plus import prediction_weighted_cams
from weclip_hf.pseudo_labels import attention_maps_needed, pair_gradcams, patch_attention_maps, plan_pairs

PARITY_PLUS = SHARED / "data" / "parity-plus"


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn at random (LayerNorms around 1, LayerScale around 0.5): no trivial identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith("lambda1"):
                p.copy_(0.5 + 0.1 * noise)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]) if p.ndim > 1 else 0.2 * noise)
    return module


# ---- config ------------------------------------------------------------------------------------------


def test_config_defaults_are_the_official_voc_values(tmp_path):
    config = WeCLIPPlusConfig()
    assert config.model_type == "weclip_plus" and config.num_labels == 21
    assert isinstance(config.dino_config, Dinov2Config) and config.dino_config.hidden_size == 384
    assert (
        config.dino_config.patch_size,
        config.dino_config.image_size,
        config.dino_num_register_tokens,
    ) == (
        14,
        518,
        0,
    )
    assert (config.num_feature_layers, config.attention_num_maps, config.rfm_num_maps) == (1, 6, 6)
    assert (config.rfm_start_step, config.cam_feature_block, config.rfm_use_box_mask) == (0, -2, False)
    assert config.branch_logit_weights == [0.5, 0.5] and config.dino_position_interpolation == "hub"
    assert (config.dice_loss_weight, config.cross_branch_loss_weight, config.affinity_loss_weight) == (
        1.0,
        0.1,
        0.1,
    )
    assert (config.self_training_start_step, config.self_training_threshold) == (18001, 0.75)

    config.save_pretrained(tmp_path)
    loaded = WeCLIPPlusConfig.from_pretrained(tmp_path)
    a, b = config.to_dict(), loaded.to_dict()
    for d in (a, b):
        d.pop("transformers_version", None)
        d.pop("_name_or_path", None)
    assert a == b


def test_a_config_json_of_the_deprecated_attention_name_keeps_its_value(tmp_path):
    """A WeCLIP+ config.json written before ``cam_attention_layers`` became ``attention_num_maps`` keeps its count
    (not WeCLIP+'s default of the last 6 maps, here the tiny CLIP's 3)."""
    make_tiny_plus_config(attention_num_maps=2).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["cam_attention_layers"] = data.pop("attention_num_maps")
    path.write_text(json.dumps(data))
    with pytest.warns(FutureWarning, match="cam_attention_layers"):
        assert WeCLIPPlusConfig.from_pretrained(tmp_path).attention_num_maps == 2


def test_config_round_trips_a_register_dino(tmp_path):
    config = make_tiny_plus_config(Dinov2WithRegistersConfig(**TINY_DINO, num_register_tokens=4))
    config.save_pretrained(tmp_path)
    loaded = WeCLIPPlusConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.dino_config, Dinov2WithRegistersConfig) and loaded.dino_num_register_tokens == 4


@pytest.mark.parametrize("name", sorted(DINO_VARIANTS))
def test_variant_configs_match_the_official_table(name):
    config = dino_variant_config(name)
    width = {"s": 384, "b": 768, "l": 1024}[name[len("dinov2_vit")]]
    assert config.hidden_size == width and config.patch_size == 14 and config.image_size == 518
    assert getattr(config, "num_register_tokens", 0) == (4 if name.endswith("_reg") else 0)
    assert isinstance(config, Dinov2WithRegistersConfig) == name.endswith("_reg")
    assert DINO_VARIANTS[name].decoder_num_layers == (5 if width == 1024 else 3)
    # the Hub checkpoints' (and torch.hub's) architecture: heads of 64 channels, MLP x4, LayerScale 1, LN eps 1e-6
    assert config.num_attention_heads == width // 64 and config.mlp_ratio == 4
    assert (config.layerscale_value, config.layer_norm_eps) == (1.0, 1e-6)
    # each variant is named back; the same sizes at another image size (position grid) are no official variant
    assert dino_variant_name(config) == name
    assert dino_variant_name(dino_variant_config(name, image_size=224)) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dino_position_interpolation="nearest"), "dino_position_interpolation"),
        (dict(cam_feature_block=0), "cam_feature_block"),
        (dict(cam_feature_block=-3), "cam_feature_block"),  # a 3-layer CLIP collects 2 block outputs
        (dict(rfm_use_box_mask="yes"), "rfm_use_box_mask"),
        (dict(branch_logit_weights=[1.0]), "branch_logit_weights"),
        (dict(branch_logit_weights=[0.0, 0.0]), "branch_logit_weights"),
        (dict(branch_logit_weights=[-1.0, 1.0]), "branch_logit_weights"),
        (dict(dice_loss_weight=-1.0), "dice_loss_weight"),
        (dict(cross_branch_loss_weight=float("nan")), "cross_branch_loss_weight"),
        (dict(self_training_start_step=-1), "self_training_start_step"),
        (dict(self_training_threshold=1.5), "self_training_threshold"),
        (dict(dino_config={**TINY_DINO, "num_attention_heads": 5}), "dino_config.hidden_size"),
        (dict(dino_config={**TINY_DINO, "patch_size": 0}), "dino_config.patch_size"),
        (dict(dino_config={**TINY_DINO, "patch_size": 75}), "dino_config.patch_size"),  # above image_size 74
        (dict(dino_config={**TINY_DINO, "mlp_ratio": 0}), "dino_config.mlp_ratio"),
        (dict(dino_config={**TINY_DINO, "num_channels": 1}), "dino_config.num_channels"),
        (dict(dino_config={**TINY_DINO, "num_hidden_layers": 10**5}), "dino_config.num_hidden_layers"),
        (dict(dino_config={**TINY_DINO, "model_type": "vit"}), "dino_config.model_type"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    """WeCLIP+'s own fields and its DINOv2 (WeCLIPConfig's fields: tests/test_modeling.py)."""
    with pytest.raises(ValueError, match=message):
        make_tiny_plus_config(**kwargs)


@pytest.mark.parametrize(
    "field, value",
    [("dino_position_interpolation", "nearest"), ("cam_feature_block", -3), ("rfm_use_box_mask", "yes"),
     ("branch_logit_weights", [0.0, 0.0]), ("dice_loss_weight", -1.0), ("self_training_start_step", -1),
     ("self_training_threshold", 1.5), ("rfm_num_maps", 4), ("cam_box_threshold", 1.5)],
)  # fmt: skip
def test_a_value_set_on_a_built_config_is_refused_as_the_constructor_refuses_it(field, value):
    """WeCLIP+'s fields set on a built config are checked as WeCLIP's are (the forward read them unchecked)."""
    with pytest.raises(ValueError) as constructed:
        make_tiny_plus_config(**{field: value})
    config = make_tiny_plus_config()
    before = getattr(config, field)
    with pytest.raises(ValueError) as assigned:
        setattr(config, field, value)
    assert str(assigned.value) == str(constructed.value) and getattr(config, field) == before
    config.self_training_start_step = None  # in range: taken
    assert config.self_training_start_step is None


def test_a_dino_config_given_at_loading_is_checked(tmp_path):
    make_tiny_plus_config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"\(dino_config\) do not fit the config .*dino_config.patch_size"):
        WeCLIPPlusConfig.from_pretrained(tmp_path, dino_config={"patch_size": 0})
    assert (
        WeCLIPPlusConfig.from_pretrained(
            tmp_path, dino_config={"layer_norm_eps": 1e-5}
        ).dino_config.patch_size
        == 2
    )


def test_a_dino_config_dict_without_model_type_is_a_dinov2_without_registers():
    config = make_tiny_plus_config(dict(TINY_DINO))
    assert type(config.dino_config) is Dinov2Config and config.dino_num_register_tokens == 0


def test_config_rejects_a_dino_config_of_another_kind():
    with pytest.raises(TypeError, match="dino_config"):
        make_tiny_plus_config(dino_config=CLIPVisionConfig(**TINY_VISION))


# ---- DINO branch: the torch.hub position rule ---------------------------------------------------------


def reference_dinov2_patch_tokens(
    model, pixel_values: torch.Tensor, offset: float, antialias: bool, registers: int = 0
) -> torch.Tensor:
    """The torch.hub DINOv2 forward written out from its definition (patch conv, class token, position
    embeddings resized with ``scale_factor = (n + offset) / M`` or ``size = n``, registers after the class
    token, pre-LN blocks with LayerScale, final LayerNorm), reading the weights of an HF model."""
    emb, cfg = model.embeddings, model.config
    x = emb.patch_embeddings.projection(pixel_values)  # [B, D, h, w]
    b, d, h, w = x.shape
    pos = emb.position_embeddings[0]
    m = int(math.sqrt(pos.shape[0] - 1))
    grid_pos = pos[1:].reshape(1, m, m, d).permute(0, 3, 1, 2)
    if (h, w) != (m, m):
        resize = dict(scale_factor=((h + offset) / m, (w + offset) / m)) if offset else dict(size=(h, w))
        grid_pos = F.interpolate(grid_pos, mode="bicubic", antialias=antialias, **resize)
    pos = torch.cat([pos[:1], grid_pos.flatten(2).transpose(1, 2)[0]])
    x = torch.cat([emb.cls_token.expand(b, 1, d), x.flatten(2).transpose(1, 2)], dim=1) + pos
    if registers:
        x = torch.cat([x[:, :1], emb.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)
    heads = cfg.num_attention_heads
    for layer in model.encoder.layer:
        att = layer.attention
        y = layer.norm1(x)
        q, k, v = (
            p(y).view(b, -1, heads, d // heads).transpose(1, 2) for p in (att.q_proj, att.k_proj, att.v_proj)
        )
        probs = ((q @ k.transpose(-1, -2)) / math.sqrt(d // heads)).softmax(dim=-1)
        x = x + layer.layer_scale1.lambda1 * att.o_proj((probs @ v).transpose(1, 2).reshape(b, -1, d))
        y = layer.norm2(x)
        x = x + layer.layer_scale2.lambda1 * layer.mlp.fc2(F.gelu(layer.mlp.fc1(y)))
    return model.layernorm(x)[:, 1 + registers :]


def test_a_model_class_refuses_the_config_of_the_other_method(tmp_path):
    """WeCLIP+'s config subclasses WeCLIP's: a WeCLIP built from it lacked the DINO branch yet saved itself as
    'weclip_plus' (a folder that no longer loaded), and a WeCLIP+ from WeCLIP's failed on a missing attribute."""
    from transformers import AutoConfig

    plus, weclip = make_tiny_plus_config(), make_tiny_config()
    with pytest.raises(
        ValueError, match="WeCLIPForSemanticSegmentation is built from a WeCLIPConfig .* got a "
    ):
        WeCLIPForSemanticSegmentation(plus)
    with pytest.raises(
        ValueError, match="WeCLIPPlusForSemanticSegmentation is built from a WeCLIPPlusConfig"
    ):
        WeCLIPPlusForSemanticSegmentation(weclip)
    WeCLIPForSemanticSegmentation(weclip).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="AutoModelForSemanticSegmentation"):
        WeCLIPPlusForSemanticSegmentation.from_pretrained(
            tmp_path, config=AutoConfig.from_pretrained(tmp_path)
        )
    assert type(AutoModelForSemanticSegmentation.from_config(plus)) is WeCLIPPlusForSemanticSegmentation


# 22 x 22, a non-square 27 x 36 grid and the native 37 x 37 one (the hub takes the embeddings as they are: a resize
# to 37 x 37 by the (n + 0.1) / 37 rule moves them)
@pytest.mark.parametrize("size", [(44, 44), (54, 72), (74, 74)])
def test_hub_position_rule_matches_the_hub_model(size):
    torch.manual_seed(0)
    config = make_tiny_plus_config()
    branch = WeCLIPPlusDinoBranch(config)
    assert type(branch.backbone) is Dinov2Model
    assert isinstance(branch.backbone.embeddings, Dinov2EmbeddingsWithHubPositions)
    randomize_(branch.backbone)
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        tokens, grid = branch.patch_tokens(pixel_values)
        expected = reference_dinov2_patch_tokens(branch.backbone, pixel_values, offset=0.1, antialias=False)
        plain = Dinov2Model(config.dino_config).eval()
        plain.load_state_dict(branch.backbone.state_dict())
        hf_rule = plain(pixel_values).last_hidden_state[:, 1:]
    assert grid == (size[0] // 2, size[1] // 2)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
    # transformers' own rule gives other tokens off the native grid: the override is what makes the two agree
    if size == (74, 74):
        torch.testing.assert_close(hf_rule, expected, atol=1e-5, rtol=1e-5)
    else:
        assert (hf_rule - expected).abs().max() > 1e-2


def test_hub_positions_are_kept_per_grid_and_remade_when_the_embeddings_change():
    embeddings = WeCLIPPlusDinoBranch(make_tiny_plus_config()).backbone.embeddings
    position = embeddings.position_embeddings
    patch = embeddings.patch_embeddings.patch_size[0]

    def resized(grid):
        tokens = torch.zeros(1, 1 + grid[0] * grid[1], position.shape[-1])
        return embeddings.interpolate_pos_encoding(tokens, grid[0] * patch, grid[1] * patch)

    with torch.no_grad():
        first = resized((5, 7))
        assert resized((5, 7)) is first  # kept
        torch.testing.assert_close(first, hub_position_embeddings(position, (5, 7)), rtol=0, atol=0)
        other = resized((6, 6))
        torch.testing.assert_close(other, hub_position_embeddings(position, (6, 6)), rtol=0, atol=0)
        position.mul_(2.0)  # in place: a new version
        torch.testing.assert_close(resized((6, 6)), hub_position_embeddings(position, (6, 6)), rtol=0, atol=0)
        embeddings.load_state_dict(
            {**embeddings.state_dict(), "position_embeddings": torch.ones_like(position)}
        )
        torch.testing.assert_close(resized((6, 6)), hub_position_embeddings(position, (6, 6)), rtol=0, atol=0)
        assert torch.allclose(resized((6, 6))[0, 1:], torch.ones(()))  # the loaded values
    position.requires_grad_(True)  # a trained DINO: never a kept copy, the gradient flows
    assert resized((6, 6)).requires_grad
    position.requires_grad_(False)
    with torch.no_grad(), mock.patch.object(torch.compiler, "is_compiling", return_value=True):
        assert resized((6, 6)) is not resized((6, 6))  # traced by torch.compile: never a kept copy


def test_hub_positions_keep_the_embeddings_dtype_and_their_grid():
    """The resize runs in float32 and returns the embeddings' dtype (a bfloat16 DINOv2 adds them to bfloat16
    tokens); an offset whose scale does not give the asked grid is refused, naming both grids."""
    pos = torch.randn(1, 1 + 37 * 37, 8)
    half = hub_position_embeddings(pos.bfloat16(), (22, 30))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half, hub_position_embeddings(pos.bfloat16().float(), (22, 30)).bfloat16())
    # offset 0: floor(37 * (39 / 37)) is 38 in floating point (the hub's 0.1 keeps floor(M * scale) == n)
    with pytest.raises(RuntimeError, match=r"gave a \(38, 38\) grid, not \(39, 39\)"):
        hub_position_embeddings(pos, (39, 39), offset=0.0)


def test_position_rules_agree_on_the_native_grid():
    pos = torch.randn(1, 1 + 37 * 37, 8)
    assert torch.equal(hub_position_embeddings(pos, (37, 37), offset=0.0)[:, 1:], pos[:, 1:])
    hub = hub_position_embeddings(pos, (22, 22))
    hf = hub_position_embeddings(pos, (22, 22), offset=0.0)  # size=(22, 22) sampling, as transformers
    assert hub.shape == (1, 1 + 22 * 22, 8) and torch.equal(hub[:, :1], pos[:, :1])
    assert (hub - hf).abs().max() > 1e-2


def test_hf_position_rule_is_transformers_own():
    config = make_tiny_plus_config(dino_position_interpolation="hf")
    branch = WeCLIPPlusDinoBranch(config)
    assert not isinstance(branch.backbone.embeddings, Dinov2EmbeddingsWithHubPositions)
    randomize_(branch.backbone)
    pixel_values = torch.randn(1, 3, 54, 72)
    with torch.no_grad():
        tokens, _ = branch.patch_tokens(pixel_values)
        expected = reference_dinov2_patch_tokens(branch.backbone, pixel_values, offset=0.0, antialias=False)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


def test_register_model_matches_the_hub_register_model():
    config = make_tiny_plus_config(Dinov2WithRegistersConfig(**TINY_DINO, num_register_tokens=4))
    branch = WeCLIPPlusDinoBranch(config)
    randomize_(branch.backbone)
    pixel_values = torch.randn(2, 3, 54, 72)
    with torch.no_grad():
        tokens, grid = branch.patch_tokens(pixel_values)
        expected = reference_dinov2_patch_tokens(
            branch.backbone, pixel_values, offset=0.0, antialias=True, registers=4
        )
    assert tokens.shape == (2, 27 * 36, 24) and grid == (27, 36)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


def test_dino_input_is_resized_down_to_a_patch_multiple():
    pixel_values = torch.randn(1, 3, 45, 59)
    resized = resize_to_patch_multiple(pixel_values, 14)
    expected = F.interpolate(pixel_values, size=(42, 56), mode="bilinear", align_corners=False)
    assert torch.equal(resized, expected)
    assert resize_to_patch_multiple(resized, 14) is resized


def test_images_below_one_dino_patch_are_stretched_to_one():
    """A DINOv2 patch (14) larger than the CLIP's (8): the inference helpers pad thin images to one CLIP patch
    only, and the DINO branch refused them ('smaller than one 14x14 DINOv2 patch'); a side below one DINO patch is
    stretched to one now."""
    from conftest import CharTokenizer

    from weclip_hf.inference import image_logits, image_pseudo_labels, multiscale_flip_logits

    assert resize_to_patch_multiple(torch.randn(1, 3, 13, 40), 14).shape[-2:] == (14, 28)
    config = make_tiny_plus_config(dino_config={**TINY_DINO, "patch_size": 14})
    model = WeCLIPPlusForSemanticSegmentation(config).eval()
    model.update_class_embeddings(CharTokenizer())
    thin = torch.randn(1, 3, 6, 40)  # below a CLIP patch: padded to 8 rows
    with torch.no_grad():
        assert image_logits(model, thin).shape == (1, 5, 6, 40)
        assert image_logits(model, torch.randn(1, 3, 10, 40)).shape == (1, 5, 1, 5)  # the CLIP patch grid
        assert multiscale_flip_logits(model, torch.randn(1, 3, 12, 60)).shape[0] == 1
    labels, _ = image_pseudo_labels(model, thin, torch.tensor([[1.0, 0, 0, 0]]), use_rfm=False)
    assert labels.shape == (1, 6, 40)


def test_dino_branch_is_batch_independent():
    branch = WeCLIPPlusDinoBranch(make_tiny_plus_config()).eval()
    randomize_(branch.backbone)
    pixel_values = torch.randn(3, 3, 40, 56)
    with torch.no_grad():
        batched = branch(pixel_values, grid=(5, 7)).features
        single = torch.cat([branch(x[None], grid=(5, 7)).features for x in pixel_values])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_dino_features_are_the_head_at_dino_resolution_resized_to_the_clip_grid():
    """(DESIGN-weclip-plus §5.) The head runs on the 22 x 22 DINO grid, then its output is resized bilinearly
    (align_corners=False) to the 20 x 20 CLIP grid; in training the head's Dropout2d is the decoder's
    (``decoder_dropout``): whole channels of an image are zeroed, and two steps drop different ones."""
    torch.manual_seed(0)
    branch = WeCLIPPlusDinoBranch(make_tiny_plus_config(decoder_dropout=0.5)).eval()
    randomize_(branch.head)
    pixel_values = torch.randn(2, 3, 44, 44)
    with torch.no_grad():
        out = branch(pixel_values, grid=(20, 20))
        head = branch.head([out.patch_tokens], out.grid)
    assert out.grid == (22, 22) and head.shape[-2:] == (22, 22)
    expected = F.interpolate(head, size=(20, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.features, expected, rtol=0, atol=0)
    branch.train()
    with torch.no_grad():
        first, second = (branch(pixel_values, grid=(20, 20)).features for _ in range(2))
    dropped = first.abs().amax(dim=(-2, -1)) == 0  # [B, dim]: channels zeroed whole
    assert 0 < dropped.float().mean() < 1 and not torch.equal(first, second)


def test_hub_weight_conversion_names_unknown_keys():
    hub = {"blocks.0.attn.qkv.weight": torch.arange(6.0).view(6, 1), "norm.bias": torch.zeros(2)}
    converted = convert_hub_dinov2_state_dict(hub)
    assert converted["encoder.layer.0.attention.k_proj.weight"].flatten().tolist() == [2.0, 3.0]
    assert set(converted) == {f"encoder.layer.0.attention.{x}_proj.weight" for x in "qkv"} | {
        "layernorm.bias"
    }
    with pytest.raises(ValueError, match="blocks.0.mlp.w12.weight"):
        convert_hub_dinov2_state_dict({"blocks.0.mlp.w12.weight": torch.zeros(1)})


# ---- DINO branch: the six variants --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DINO_VARIANTS))
def test_every_variant_builds_runs_and_stays_frozen(name):
    """Each official DINOv2 variant, shrunk (2 layers, width 4 x its head count, 37 x 37 position grid)."""
    heads = DINO_VARIANTS[name].num_attention_heads
    dino = dino_variant_config(name, hidden_size=4 * heads, num_hidden_layers=2, patch_size=2, image_size=74)
    config = make_tiny_plus_config(dino, decoder_num_layers=DINO_VARIANTS[name].decoder_num_layers)
    torch.manual_seed(0)
    branch = WeCLIPPlusDinoBranch(config).train()
    assert not branch.backbone.training and branch.head.training
    assert not any(p.requires_grad for p in branch.backbone.parameters())
    out = branch(torch.randn(2, 3, 40, 56), grid=(5, 7))
    assert out.features.shape == (2, 32, 5, 7) and out.grid == (20, 28)
    assert out.patch_tokens.shape == (2, 20 * 28, 4 * heads) and not out.patch_tokens.requires_grad
    out.features.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.head.parameters())
    assert torch.isfinite(out.features).all()


# under `.train()`, and as built (a module starts in train mode)
@pytest.mark.parametrize("train", [True, False])
def test_train_mode_keeps_dino_in_eval_mode_with_active_dropout(train):
    """Dropout in the DINO config changes nothing: the backbone is in eval mode from construction and stays so
    under `.train()`."""
    dino = Dinov2Config(**TINY_DINO, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    branch = WeCLIPPlusDinoBranch(make_tiny_plus_config(dino))
    branch = branch.train() if train else branch
    assert branch.head.training and not branch.backbone.training
    pixel_values = torch.randn(1, 3, 44, 44)
    first, _ = branch.patch_tokens(pixel_values)
    second, _ = branch.patch_tokens(pixel_values)
    assert torch.equal(first, second)


# ---- losses -------------------------------------------------------------------------------------------


def reference_dice(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The official formula with an explicit one-hot over all K classes."""
    probs = logits.softmax(dim=1)
    one_hot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * one_hot).sum(dim=(0, 2, 3))
    union = probs.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    return 1 - (2 * inter / (union + 1e-7)).mean()


def test_dice_loss_counts_absent_classes_as_zero():
    labels = torch.tensor([[[0, 0, 2], [2, 2, 0]]])  # classes 1 and 3 absent
    logits = 50.0 * F.one_hot(labels, 4).permute(0, 3, 1, 2).float()  # a perfect prediction
    loss = dice_loss(logits, labels)
    assert torch.isfinite(loss) and abs(float(loss) - 0.5) < 1e-6  # 2 classes with dice 1, 2 with dice 0
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 6, 7, generator=generator)
    labels = torch.randint(0, 3, (2, 6, 7), generator=generator)
    torch.testing.assert_close(dice_loss(logits, labels), reference_dice(logits, labels))


def test_dice_loss_adds_1e_7_to_each_union_and_an_empty_class_gives_zero():
    """DESIGN-weclip-plus §11: ``2 * inter_k / (union_k + 1e-7)``. One pixel of class 0 at probability 1/2 (the
    1e-7 shows in float32 at this tiny union) and a class 2 whose probability underflows to 0 (0 / 1e-7, not
    NaN)."""
    logits = torch.tensor([0.0, 0.0, -200.0]).view(1, 3, 1, 1)
    loss = dice_loss(logits, torch.zeros(1, 1, 1, dtype=torch.long))
    expected = 1 - (2 * 0.5 / (0.5 + 1 + 1e-7) + 2 * 0 / (0.5 + 1e-7) + 0) / 3
    assert abs(float(loss) - expected) < 1e-7


def test_dice_loss_leaves_ignored_pixels_out():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 5, 6, generator=generator)
    labels = torch.randint(0, 4, (1, 5, 6), generator=generator)
    ignored = labels.clone()
    ignored[:, :, :2] = 255
    torch.testing.assert_close(dice_loss(logits, ignored), reference_dice(logits[..., 2:], labels[..., 2:]))
    everything_ignored = dice_loss(logits, torch.full_like(labels, 255))
    assert float(everything_ignored) == 1.0


def test_cross_branch_loss_with_an_empty_half_is_finite():
    """The DINO branch predicts foreground everywhere: the CLIP term's background half is empty, gives 0."""
    logits_clip = torch.randn(2, 3, 4, 5, requires_grad=True)
    logits_dino = torch.zeros(2, 3, 4, 5)
    logits_dino[:, 2] = 5.0  # class 2 everywhere: no background target
    clip_from_dino, dino_from_clip = cross_branch_losses(logits_clip, logits_dino)
    ce = F.cross_entropy(logits_clip, torch.full((2, 4, 5), 2), reduction="none")
    torch.testing.assert_close(clip_from_dino, 0.5 * ce.mean())
    assert torch.isfinite(dino_from_clip)
    clip_from_dino.backward()
    assert torch.isfinite(logits_clip.grad).all()
    # every pixel ignored: both halves empty, 0 (not NaN)
    zero, _ = cross_branch_losses(logits_clip, logits_dino, ignore=torch.ones(2, 4, 5, dtype=torch.bool))
    assert float(zero.detach()) == 0.0


def test_cross_branch_targets_are_the_other_branch_argmax():
    generator = torch.Generator().manual_seed(2)
    logits_clip, logits_dino = torch.randn(2, 2, 4, 3, 3, generator=generator)
    clip_from_dino, dino_from_clip = cross_branch_losses(logits_clip, logits_dino)
    torch.testing.assert_close(clip_from_dino, segmentation_loss(logits_clip, logits_dino.argmax(1)))
    torch.testing.assert_close(dino_from_clip, segmentation_loss(logits_dino, logits_clip.argmax(1)))


def test_self_training_overwrites_confident_pixels_only():
    labels = torch.tensor([[[0, 1, 255], [2, 0, 1]]])
    logits = torch.zeros(1, 3, 2, 3)
    logits[0, 2, 0, :] = 5.0  # top row: confident class 2 (p = 0.987)
    logits[0, 1, 1, 0] = 0.5  # weak preference: p = 0.45, kept
    logits[0, 0, 1, 1] = 1.0  # a logit above the threshold, its probability (0.58) below it: kept
    new, overwritten = self_training_labels(labels, logits, threshold=0.75)
    assert new.tolist() == [[[2, 2, 255], [2, 0, 1]]]  # the ignored pixel stays ignored
    assert overwritten.tolist() == [[[True, True, False], [False, False, False]]]


def test_affinity_loss_uses_the_labels_before_self_training():
    """Also: each term weighted by the config's weight, the affinity targets of its affinity_radius (1: the default 8
    spans the 4 x 4 grid whole), the Dice loss on the labels after the overwrite."""
    weights = dict(affinity_loss_weight=0.3, cross_branch_loss_weight=0.2, dice_loss_weight=0.7)
    config = make_tiny_plus_config(self_training_threshold=0.5, affinity_radius=1, **weights)
    generator = torch.Generator().manual_seed(3)
    logits_clip, logits_dino = 3 * torch.randn(2, 2, 5, 4, 4, generator=generator)
    logits = 0.5 * logits_clip + 0.5 * logits_dino
    affinity = torch.rand(2, 16, 16, generator=generator)
    labels = torch.randint(0, 5, (2, 32, 32), generator=generator)
    plain = weclip_plus_losses(config, logits, logits_clip, logits_dino, affinity, labels)
    trained = weclip_plus_losses(
        config, logits, logits_clip, logits_dino, affinity, labels, self_training=True
    )
    assert trained.self_training_mask.any() and not torch.equal(trained.labels, labels)
    targets = affinity_targets(labels, (4, 4), config.affinity_radius)
    expected_aff = affinity_loss(affinity, targets)[0]
    torch.testing.assert_close(trained.affinity_loss, expected_aff)
    torch.testing.assert_close(plain.affinity_loss, expected_aff)
    full = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(trained.seg_loss, segmentation_loss(full, trained.labels))
    torch.testing.assert_close(trained.dice_loss, dice_loss(full, trained.labels))
    assert not torch.isclose(trained.seg_loss, plain.seg_loss)
    total = (
        trained.seg_loss
        + 0.3 * trained.affinity_loss
        + 0.2 * (trained.clip_from_dino_loss + trained.dino_from_clip_loss)
        + 0.7 * trained.dice_loss
    )
    torch.testing.assert_close(trained.loss, total)


def test_ignored_label_pixels_are_left_out_of_the_cross_branch_terms():
    """Pixels whose label is ignored (crop padding) count in neither cross-branch term: each branch against the
    other's argmax upsampled to the label size, with those pixels set to the ignore index."""
    config = make_tiny_plus_config()
    generator = torch.Generator().manual_seed(4)
    logits_clip, logits_dino = 3 * torch.randn(2, 2, 5, 4, 4, generator=generator)
    logits = 0.5 * logits_clip + 0.5 * logits_dino
    affinity = torch.rand(2, 16, 16, generator=generator)
    labels = torch.randint(0, 5, (2, 32, 32), generator=generator)
    labels[:, 20:] = 255
    labels[1, :, 24:] = 255
    out = weclip_plus_losses(config, logits, logits_clip, logits_dino, affinity, labels)
    targets = [
        F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        .argmax(1)
        .masked_fill(labels == 255, 255)
        for x in (logits_dino, logits_clip)
    ]
    torch.testing.assert_close(out.clip_from_dino_loss, segmentation_loss(logits_clip, targets[0]))
    torch.testing.assert_close(out.dino_from_clip_loss, segmentation_loss(logits_dino, targets[1]))


# ---- parity with the official code (parity-plus, fp32 variant) -----------------------------------------


@pytest.fixture(scope="module")
def plus_ref() -> dict[str, np.ndarray]:
    require_data(PARITY_PLUS / "reference.npz", "the official WeCLIP+ parity data")
    with np.load(PARITY_PLUS / "reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def plus_weights(plus_ref) -> dict[str, torch.Tensor]:
    """The official-layout DINO, head weights of the parity set, regenerated from its spec (CLIP left out)."""
    spec_loader = importlib.util.spec_from_file_location(
        "weclip_plus_regenerate", PARITY_PLUS / "regenerate.py"
    )
    regenerate = importlib.util.module_from_spec(spec_loader)
    spec_loader.loader.exec_module(regenerate)
    spec = regenerate.load_spec()
    prefixes = ("dino_encoder.", "decoder_fts_fuse.", "dino_decoder_fts_fuse.")
    return {
        e["key"]: torch.from_numpy(regenerate._one(e, i, spec["seed"])).float()
        for i, e in enumerate(spec["entries"])
        if e["key"].startswith(prefixes)
    }


def official_head_state(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``SegFormerHead(index=1)`` weights -> `WeCLIPFeatureHead` names."""
    return {
        "layer_mlps.0.fc1.weight": weights[f"{prefix}.linears_modulelist.0.proj.weight"],
        "layer_mlps.0.fc1.bias": weights[f"{prefix}.linears_modulelist.0.proj.bias"],
        "layer_mlps.0.fc2.weight": weights[f"{prefix}.linears_modulelist.0.proj_2.weight"],
        "layer_mlps.0.fc2.bias": weights[f"{prefix}.linears_modulelist.0.proj_2.bias"],
        "fuse.weight": weights[f"{prefix}.linear_fuse.weight"],
        "fuse.bias": weights[f"{prefix}.linear_fuse.bias"],
    }


@pytest.fixture(scope="module")
def parity_dino_branch(plus_weights) -> WeCLIPPlusDinoBranch:
    branch = WeCLIPPlusDinoBranch(WeCLIPPlusConfig()).eval()  # ViT-S/14, the hub rule
    hub = {k[len("dino_encoder.") :]: v for k, v in plus_weights.items() if k.startswith("dino_encoder.")}
    branch.backbone.load_state_dict(convert_hub_dinov2_state_dict(hub), strict=True)
    branch.head.load_state_dict(official_head_state(plus_weights, "dino_decoder_fts_fuse"), strict=True)
    return branch


def test_parity_dino_tokens_and_head(parity_dino_branch, plus_ref):
    pixel_values = torch.from_numpy(plus_ref["pixel_values"])
    with torch.no_grad():
        out = parity_dino_branch(pixel_values, grid=(20, 20))
    assert tuple(d * 14 for d in out.grid) == tuple(plus_ref["dino_input_hw"])
    tokens = plus_ref["dino_x_norm_patchtokens"]
    assert float((out.patch_tokens - torch.from_numpy(tokens)).abs().max()) <= 1e-5 * max(
        1, np.abs(tokens).max()
    )
    head = plus_ref["dino_head_features_resized"]
    assert float((out.features - torch.from_numpy(head)).abs().max()) <= 1e-5 * max(1, np.abs(head).max())


def test_parity_clip_head(plus_weights, plus_ref):
    head = WeCLIPFeatureHead(768, 256, 1, 0.1).eval()
    head.load_state_dict(official_head_state(plus_weights, "decoder_fts_fuse"), strict=True)
    tokens = torch.from_numpy(plus_ref["fp32_clip_block11_tokens"])[:, 1:]  # block-11 output, CLS dropped
    with torch.no_grad():
        features = head([tokens], (20, 20))
    ref = plus_ref["fp32_clip_head_features"]
    assert float((features - torch.from_numpy(ref)).abs().max()) <= 1e-5 * max(1, np.abs(ref).max())


@pytest.mark.parametrize("regime", ["st0", "st1"])
def test_parity_losses_from_the_official_logits(plus_ref, regime):
    """The loss module on the official logits, affinity and pseudo labels gives the official loss values."""
    ref = {k[len("fp32_") :]: torch.from_numpy(v) for k, v in plus_ref.items() if k.startswith("fp32_")}
    out = weclip_plus_losses(
        WeCLIPPlusConfig(),
        ref["seg_logits"],
        ref["seg_clip_logits"],
        ref["seg_dino_logits"],
        ref["decoder_affinity"],
        ref["pseudo_labels"].long(),
        self_training=regime == "st1",
    )
    names = dict(
        seg_loss="seg_loss",
        dice_loss="dice_loss",
        affinity_loss="aff_loss",
        clip_from_dino_loss="seg_clip_loss2",
        dino_from_clip_loss="seg_dino_loss2",
        loss="total_loss",
    )
    rel = 1e-4 if regime == "st0" else 1e-3
    for ours, theirs in names.items():
        expected = float(ref[f"{regime}_{theirs}"])
        assert abs(float(getattr(out, ours)) - expected) <= rel * abs(expected), ours
    if regime == "st1":
        agree = (out.labels.numpy() == plus_ref["fp32_st1_pseudo_labels"]).mean()
        assert agree >= 0.999
        assert int(out.self_training_mask.sum()) == int(ref["st1_overwrite_count"])
    for branch, name in (
        (ref["seg_clip_logits"], "clip"),
        (ref["seg_dino_logits"], "dino"),
        (ref["seg_logits"], "seg"),
    ):
        full = F.interpolate(branch, size=(320, 320), mode="bilinear", align_corners=False)
        agree = (branch_predictions(full)[1].numpy() == plus_ref[f"fp32_pred_label_{name}_320"]).mean()
        assert agree >= 0.999, name


# ---- the task model (tiny random configs) -------------------------------------------------------------


def tiny_plus_inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of 48 x 64 px (CLIP grid 6 x 8, DINO grid 24 x 32), multi-hot labels (image 0: 2 classes)."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 3, 48, 64, generator=generator)
    class_labels = torch.zeros(batch, 4)
    class_labels[0, [0, 2]] = 1
    class_labels[1:, 1] = 1
    return pixel_values, class_labels


@pytest.fixture
def plus_model():
    torch.manual_seed(0)
    return WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config()).eval()


def test_model_outputs_the_weighted_sum_of_both_branches(plus_model):
    plus_model.config.branch_logit_weights = [0.25, 0.75]
    pixel_values, _ = tiny_plus_inputs()
    with torch.no_grad():
        out = plus_model(pixel_values)
        clip = plus_model.forward_clip_features(pixel_values)
        logits_clip, _ = plus_model.decoder([clip.hidden[-1][:, 1:]], clip.grid)
        logits_dino = plus_model.decoder.decode(plus_model.dino_branch(pixel_values, clip.grid).features)
    assert out.logits.shape == (2, 5, 6, 8) and out.loss is None and out.pseudo_labels is None
    torch.testing.assert_close(out.logits_clip, logits_clip)
    torch.testing.assert_close(out.logits_dino, logits_dino)
    torch.testing.assert_close(out.logits, 0.25 * logits_clip + 0.75 * logits_dino)


def test_a_whole_plus_model_pickles(plus_model):
    """The DINO branch adds no unpicklable state: `pickle` round-trips the model with equal outputs."""
    loaded = pickle.loads(pickle.dumps(plus_model))
    pixel_values, _ = tiny_plus_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(pixel_values).logits, plus_model(pixel_values).logits, rtol=0, atol=0
        )


def test_training_step_trains_the_heads_and_decoder_only(plus_model):
    plus_model.train()
    assert not plus_model.dino_branch.backbone.training and not plus_model.vision_model.training
    assert plus_model.decoder.training and plus_model.dino_branch.head.training
    pixel_values, class_labels = tiny_plus_inputs()
    out = plus_model(pixel_values, class_labels=class_labels)
    assert out.pseudo_labels.shape == (2, 48, 64) and out.used_rfm is True
    for name in (
        "loss",
        "seg_loss",
        "dice_loss",
        "affinity_loss",
        "clip_from_dino_loss",
        "dino_from_clip_loss",
    ):
        assert torch.isfinite(getattr(out, name)), name
    out.loss.backward()
    trained = {n for n, p in plus_model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("decoder.", "dino_branch.head.")) for n in trained)
    assert all(plus_model.get_parameter(n).grad is not None for n in trained)
    assert int(plus_model.training_step) == 1


def test_model_is_batch_independent(plus_model):
    """Batched images give each image's own results, up to float32 noise (a few PAR near-ties may flip)."""
    pixel_values, class_labels = tiny_plus_inputs(batch=3)
    with torch.no_grad():
        batched = plus_model(pixel_values, class_labels=class_labels, output_cam_details=True)
        singles = [
            plus_model(pixel_values[i : i + 1], class_labels=class_labels[i : i + 1], output_cam_details=True)
            for i in range(3)
        ]
    torch.testing.assert_close(batched.logits, torch.cat([s.logits for s in singles]), atol=1e-5, rtol=1e-5)
    grid_cams = torch.cat([s.cam_details.refined_cams_grid for s in singles])
    torch.testing.assert_close(batched.cam_details.refined_cams_grid, grid_cams, atol=1e-6, rtol=1e-5)
    equal = (batched.pseudo_labels == torch.cat([s.pseudo_labels for s in singles])).float().mean()
    assert equal >= 0.999


def test_rfm_plus_weights_gradcams_by_the_prediction():
    plan = plan_pairs(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), "cpu")
    cams = torch.rand(3, 2, 2)
    probabilities = torch.rand(2, 4, 2, 2)
    weighted = prediction_weighted_cams(cams, probabilities, plan)
    expected = torch.stack(
        [cams[0] * probabilities[0, 1], cams[1] * probabilities[0, 3], cams[2] * probabilities[1, 2]]
    )
    torch.testing.assert_close(weighted, expected)


@pytest.mark.parametrize("use_box_mask", [False, True])
def test_rfm_plus_pseudo_label_path(use_box_mask):
    """GradCAM on block `cam_feature_block`'s tokens, weighted by the prediction, propagated with or without
    the box mask, by the RFM affinity of the concatenated decoder features."""
    torch.manual_seed(0)
    model = WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config(rfm_use_box_mask=use_box_mask)).eval()
    pixel_values, class_labels = tiny_plus_inputs()
    with torch.no_grad():
        out = model(pixel_values, class_labels=class_labels, output_cam_details=True)
    details = out.cam_details
    clip = model.forward_clip_features(pixel_values, attention_maps_needed(model.config, True))
    plan = plan_pairs(class_labels, "cpu")
    expected = pair_gradcams(
        model.last_block_pair_embeddings,
        clip.hidden[-2],  # cam_feature_block = -2
        model.class_text_embeds,
        model.background_text_embeds,
        model.logit_scale,
        plan,
        clip.grid,
    )
    torch.testing.assert_close(details.gradcams, expected.cams)
    probabilities = out.logits.softmax(dim=1)
    torch.testing.assert_close(
        details.weighted_gradcams, prediction_weighted_cams(expected.cams, probabilities, plan)
    )
    maps = patch_attention_maps(clip.attention, expected.last_attention)
    affinity = rfm_affinity(maps, model.config.rfm_num_maps, out.decoder_affinity)
    masks = cam_box_masks(expected.cams, model.config.cam_box_threshold) if use_box_mask else None
    refined = refine_cams(details.weighted_gradcams, transition_matrix(affinity.affinity), plan.image, masks)
    torch.testing.assert_close(details.refined_cams_grid, refined)
    assert (details.box_masks is None) == (not use_box_mask)


def test_rfm_plus_without_the_prediction_is_refused_naming_it(plus_model):
    """RFM+ weights each GradCAM by the prediction: a call without ``class_probabilities`` is a ValueError naming
    them (an AttributeError of None before the check)."""
    pixel_values, class_labels = tiny_plus_inputs()
    clip = plus_model.forward_clip_features(pixel_values, attention_maps_needed(plus_model.config, False))
    with pytest.raises(ValueError, match="RFM\\+ needs class_probabilities"):
        plus_model.generate_pseudo_labels(pixel_values, class_labels, clip)


def test_pixel_mask_marks_the_padding_of_the_pseudo_labels_ignored(plus_model):
    """As WeCLIP's forward: crop padding (``pixel_mask`` 0) is the ignore index in the pseudo labels the losses
    read, the other pixels and the logits as without a mask."""
    pixel_values, class_labels = tiny_plus_inputs()
    pixel_mask = torch.ones(2, 48, 64, dtype=torch.long)
    pixel_mask[0, 40:] = 0  # bottom padding
    pixel_mask[1, :, 48:] = 0  # right padding
    with torch.no_grad():
        plain = plus_model(pixel_values, class_labels=class_labels)
        masked = plus_model(pixel_values, class_labels=class_labels, pixel_mask=pixel_mask)
    padded = pixel_mask == 0
    assert (masked.pseudo_labels[padded] == plus_model.config.semantic_loss_ignore_index).all()
    assert torch.equal(masked.pseudo_labels[~padded], plain.pseudo_labels[~padded])
    torch.testing.assert_close(masked.logits, plain.logits)


def test_decoder_affinity_is_that_of_both_branches(plus_model):
    pixel_values, class_labels = tiny_plus_inputs()
    with torch.no_grad():
        out = plus_model(pixel_values, class_labels=class_labels)
        clip = plus_model.forward_clip_features(pixel_values)
        _, clip_features = plus_model.decoder([clip.hidden[-1][:, 1:]], clip.grid)
        features = torch.cat([clip_features, plus_model.dino_branch(pixel_values, clip.grid).features], dim=1)
    flat = features.flatten(2)
    torch.testing.assert_close(out.decoder_affinity, torch.sigmoid(flat.transpose(1, 2) @ flat))


def test_the_affinity_loss_reaches_the_dino_head_through_the_decoder_affinity(plus_model):
    """The affinity of the concatenated [CLIP; DINO] features carries the gradient of both halves: the affinity
    loss trains the DINO head as the same loss written on the branches' features does."""
    # a random DINO head: fresh heads give features so small that the affinity is 0.5 and its gradient ~1e-7
    randomize_(plus_model.dino_branch.head, seed=1)
    pixel_values, _ = tiny_plus_inputs()
    labels = torch.randint(0, 5, (2, 48, 64), generator=torch.Generator().manual_seed(5))
    weight = plus_model.dino_branch.head.fuse.weight
    loss = plus_model(pixel_values, labels=labels).affinity_loss
    # a detached DINO half leaves the head out of the graph: a zero gradient
    (ours,) = torch.autograd.grad(loss, weight, allow_unused=True, materialize_grads=True)
    clip = plus_model.forward_clip_features(pixel_values)
    _, clip_features = plus_model.decoder([clip.hidden[-1][:, 1:]], clip.grid)
    features = torch.cat([clip_features, plus_model.dino_branch(pixel_values, clip.grid).features], dim=1)
    flat = features.flatten(2)
    targets = affinity_targets(labels, clip.grid, plus_model.config.affinity_radius)
    (expected,) = torch.autograd.grad(
        affinity_loss(torch.sigmoid(flat.transpose(1, 2) @ flat), targets)[0], weight
    )
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(ours, expected)


def test_self_training_starts_at_its_step(plus_model):
    plus_model.config.self_training_start_step = 5
    plus_model.config.self_training_threshold = 0.0  # every pixel is confident
    pixel_values, class_labels = tiny_plus_inputs()
    plus_model.set_training_step(4)
    with torch.no_grad():
        before = plus_model(pixel_values, class_labels=class_labels)
        plus_model.set_training_step(5)
        after = plus_model(pixel_values, class_labels=class_labels)
        labels = plus_model(pixel_values, labels=before.pseudo_labels)
    assert before.self_training_mask is None and labels.self_training_mask is None
    assert after.self_training_mask.all() and torch.equal(after.pseudo_labels, before.pseudo_labels)
    torch.testing.assert_close(after.affinity_loss, before.affinity_loss)


def test_save_load_round_trip_refreezes_the_backbones(plus_model, tmp_path):
    plus_model.save_pretrained(tmp_path)
    assert {"modeling_weclip_plus.py", "dino_branch.py", "configuration_weclip_plus.py"} <= {
        p.name for p in tmp_path.iterdir()
    }
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    assert type(loaded) is WeCLIPPlusForSemanticSegmentation
    assert isinstance(loaded.dino_branch.backbone.embeddings, Dinov2EmbeddingsWithHubPositions)
    assert not any(p.requires_grad for p in loaded.dino_branch.backbone.parameters())
    assert not any(p.requires_grad for p in loaded.vision_model.parameters())
    for key, value in plus_model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    pixel_values, _ = tiny_plus_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixel_values).logits, plus_model(pixel_values).logits)


def test_a_clip_folder_is_pointed_to_the_backbone_constructor(tiny_clip):
    with pytest.raises(ValueError, match=r"'clip' checkpoint, not a 'weclip' one. For a CLIP checkpoint use "
                       r"WeCLIPForSemanticSegmentation.from_clip\(\.\.\.\)"):  # fmt: skip
        WeCLIPForSemanticSegmentation.from_pretrained(tiny_clip)


def test_weclip_and_weclip_plus_folders_are_told_apart(plus_model, tmp_path):
    from conftest import make_tiny_config

    plus_model.save_pretrained(tmp_path / "plus")
    WeCLIPForSemanticSegmentation(make_tiny_config()).save_pretrained(tmp_path / "weclip")
    with pytest.raises(
        ValueError, match="'weclip_plus' checkpoint, not a 'weclip' one: load it with AutoModelFor"
    ):
        WeCLIPForSemanticSegmentation.from_pretrained(tmp_path / "plus")
    with pytest.raises(
        ValueError, match="'weclip' checkpoint, not a 'weclip_plus' one: load .*from_clip_and_dino"
    ):
        WeCLIPPlusForSemanticSegmentation.from_pretrained(tmp_path / "weclip")
    assert type(AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "weclip")) is (
        WeCLIPForSemanticSegmentation
    )


def test_pipeline_segments_with_the_averaged_logits(plus_model, tmp_path):
    """The pipeline's masks of a saved WeCLIP+ are the labels of its output logits (both branches' weighted sum),
    post-processed to the image's size; its decoder redrawn so that they vary (a fresh one predicts one class)."""
    from PIL import Image
    from transformers import pipeline

    from weclip_hf import WeCLIPImageProcessor

    with_varied_decoder(plus_model).save_pretrained(tmp_path)
    processor = WeCLIPImageProcessor(size={"longest_edge": 64}, patch_size=8)
    processor.save_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    segments = pipeline("image-segmentation", model=str(tmp_path))(image)
    with torch.no_grad():
        outputs = plus_model(**processor(image, return_tensors="pt"))
    labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[(40, 50)])[0].numpy()
    present = np.unique(labels)
    assert len(present) > 1 and len(segments) == len(present)
    names = plus_model.config.id2label
    for segment, label in zip(segments, present):
        assert segment["label"] == names[int(label)]
        assert np.array_equal(np.array(segment["mask"]) > 0, labels == label)


@pytest.mark.parametrize("registers", [False, True])
def test_from_clip_and_dino(tiny_clip, tmp_path, registers):
    config_class = Dinov2WithRegistersConfig if registers else Dinov2Config
    extra = {"num_register_tokens": 4} if registers else {}
    torch.manual_seed(1)
    dino = randomize_(AutoModel.from_config(config_class(**TINY_DINO, **extra)))
    dino.save_pretrained(tmp_path)
    model = WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(
        tiny_clip, str(tmp_path), class_names=["cat", "dog"], background_names=["sky", "road"]
    )
    assert model.config.dino_num_register_tokens == (4 if registers else 0)
    model.save_pretrained(tmp_path / "saved")  # names no local path (uploaded with push_to_hub)
    assert str(tmp_path) not in (tmp_path / "saved" / "config.json").read_text()
    for key, value in dino.state_dict().items():
        assert torch.equal(model.dino_branch.backbone.state_dict()[key], value), key
    assert not any(p.requires_grad for p in model.dino_branch.backbone.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    out = model(torch.randn(1, 3, 48, 60), class_labels=torch.tensor([[1, 0]]))
    assert torch.isfinite(out.loss)
    with pytest.raises(TypeError, match="from_clip_and_dino"):
        WeCLIPPlusForSemanticSegmentation.from_clip(tiny_clip)


def test_backbone_loading_options_fetch_the_checkpoints_and_never_reach_the_config(tiny_clip, tmp_path):
    """A token (or revision, cache_dir, ...) given to from_clip / from_clip_and_dino was stored in config.json, which
    push_to_hub then uploaded; unknown keywords (e.g. preset=) were stored and ignored."""
    torch.manual_seed(1)
    randomize_(AutoModel.from_config(Dinov2Config(**TINY_DINO))).save_pretrained(tmp_path / "dino")
    secret = "hf_" + "S3CRET" * 4
    options = dict(
        token=secret, cache_dir=str(tmp_path / "cache"), local_files_only=True, dtype=torch.bfloat16
    )
    names = dict(class_names=["cat", "dog"], background_names=["sky"])
    plain = WeCLIPForSemanticSegmentation.from_clip(
        tiny_clip, revision="main", decoder_num_layers=2, **names, **options
    )
    plus = WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(
        tiny_clip, str(tmp_path / "dino"), **names, **options
    )
    for name, model in (("plain", plain), ("plus", plus)):
        model.save_pretrained(tmp_path / name)
        saved = (tmp_path / name / "config.json").read_text()
        assert secret not in saved and '"cache_dir"' not in saved and '"revision"' not in saved
        assert model.dtype == torch.bfloat16  # a loading option that applies
    assert plain.config.decoder_num_layers == 2  # a config field that applies
    for build in (lambda: WeCLIPForSemanticSegmentation.from_clip(tiny_clip, preset="toy", **names),
                  lambda: WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(tiny_clip, "x", preset="toy")):  # fmt: skip
        with pytest.raises(
            TypeError, match=r"got unknown keyword argument\(s\) \['preset'\].*preset_config_kwargs"
        ):
            build()


def test_the_revision_is_the_clips_and_the_dinov2_is_fetched_at_its_default(tiny_clip, tmp_path):
    """``revision`` names a commit of the CLIP's repository (from_clip_and_dino's docstring): passed on to the
    DINOv2's loading too, a CLIP commit would be looked up in the DINOv2's repository."""
    AutoModel.from_config(Dinov2Config(**TINY_DINO)).save_pretrained(tmp_path / "dino")
    with mock.patch.object(AutoModel, "from_pretrained", wraps=AutoModel.from_pretrained) as load:
        WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(
            tiny_clip, str(tmp_path / "dino"), ["cat"], ["sky"], revision="main", local_files_only=True
        )
    (dino_call,) = [c for c in load.call_args_list if c.args[0] == str(tmp_path / "dino")]
    assert "revision" not in dino_call.kwargs and dino_call.kwargs["local_files_only"] is True


def test_a_backbone_that_is_no_folder_or_a_saved_weclip_is_named(tiny_clip, tmp_path):
    """A missing folder was taken for a Hub id ("Repo id must be in the form ..." or a connection error), and then
    named without a remedy; a saved WeCLIP given as the CLIP failed on its weights."""
    WeCLIPForSemanticSegmentation(make_tiny_config()).save_pretrained(tmp_path / "weclip")
    with pytest.raises(FileNotFoundError, match=r"No CLIP checkpoint folder at '/nonexistent/clip'"):
        WeCLIPForSemanticSegmentation.from_clip("/nonexistent/clip")
    # with the remedy (train.py's --dino_model_name_or_path ends with this message)
    no_dino = r"No DINOv2 checkpoint folder at './no-dino': give a DINOv2 checkpoint folder written by save_pretrained"
    with pytest.raises(
        FileNotFoundError, match=no_dino + r" \(config.json and model.safetensors\) or a Hub id\."
    ):
        WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(tiny_clip, "./no-dino")
    with pytest.raises(
        ValueError, match=r"is a saved WeCLIP model, not a CLIP checkpoint: load it with AutoModel"
    ):
        WeCLIPForSemanticSegmentation.from_clip(str(tmp_path / "weclip"))
    # the backbones swapped: a DINOv2 as the CLIP was reported as 398 missing tensors
    dino = tmp_path / "dino"
    AutoModel.from_config(Dinov2Config(**TINY_DINO)).save_pretrained(dino)
    for build in (lambda: WeCLIPForSemanticSegmentation.from_clip(str(dino)),
                  lambda: WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(str(dino), str(dino))):  # fmt: skip
        with pytest.raises(ValueError, match=r"holds a 'dinov2' model, not a CLIP checkpoint \('clip'\)"):
            build()
    with pytest.raises(ValueError, match=r"holds a 'clip' model, not a DINOv2 checkpoint"):
        WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(tiny_clip, tiny_clip)
    # a DINOv2 of pickle weights only got transformers' bare "no file named model.safetensors"
    (dino / "model.safetensors").rename(dino / "pytorch_model.bin")
    with pytest.raises(
        FileNotFoundError, match=r"has no model.safetensors, only pickle weights \(pytorch_model"
    ):
        WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(tiny_clip, str(dino))
    with pytest.raises(
        TypeError, match=r"reads dino_config \(from dino_name_or_path\) from the checkpoint: leave it"
    ):
        WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(tiny_clip, str(dino), dino_config={})


def test_a_backbone_that_is_a_file_or_a_folder_without_config_json_is_named(tiny_clip, tmp_path):
    """A file (OpenAI's ViT-B-16.pt) was refused as "No CLIP checkpoint folder at" its path, which exists; a folder
    without config.json was built with CLIPConfig's defaults (transformers reads no config there), its weights then
    refused as not matching the config or missing. Each now names the path and what it lacks, as transformers'
    OSErrors for missing files do."""
    openai_file = tmp_path / "ViT-B-16.pt"
    openai_file.write_bytes(b"PK")
    with pytest.raises(NotADirectoryError, match=r"ViT-B-16.pt' is a file, not a CLIP checkpoint folder"):
        WeCLIPForSemanticSegmentation.from_clip(str(openai_file))
    with pytest.raises(NotADirectoryError, match=r"ViT-B-16.pt' is a file, not a DINOv2 checkpoint folder"):
        WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(tiny_clip, str(openai_file))
    without_config = tmp_path / "clip-without-config"
    shutil.copytree(tiny_clip, without_config, ignore=shutil.ignore_patterns("config.json"))
    message = (
        r"clip-without-config' has no config.json: not a {} checkpoint folder written by save_pretrained"
    )
    with pytest.raises(FileNotFoundError, match=message.format("CLIP")):
        WeCLIPForSemanticSegmentation.from_clip(str(without_config))
    with pytest.raises(FileNotFoundError, match=message.format("DINOv2")):
        WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(tiny_clip, str(without_config))


def cached_hub_repository(cache: Path, repo_id: str, folder: str | Path, without: str | None = None) -> None:
    """``folder`` in the Hub cache ``cache`` as the Hub repository ``repo_id`` (offline: ``local_files_only``),
    less the file ``without``, which the cache records as absent (the Hub's 404)."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    ignore = shutil.ignore_patterns(without) if without else None
    shutil.copytree(folder, repo / "snapshots" / commit, ignore=ignore)
    if without:
        (repo / ".no_exist" / commit).mkdir(parents=True)
        (repo / ".no_exist" / commit / without).touch()


def test_a_hub_clip_without_config_json_is_named(tiny_clip, tmp_path):
    """A Hub repository without config.json (offline: the Hub cache's record of its 404) gave transformers' default
    CLIPConfig, a ViT-B/32, whose shapes the weights then did not fit: the error blamed the number of classes and
    pointed to a report that from_clip silences. Now the id and the missing config.json are named."""
    cached_hub_repository(tmp_path, "someone/clip-without-config", tiny_clip, without="config.json")
    with pytest.raises(
        FileNotFoundError, match=r"'someone/clip-without-config' has no config.json: not a CLIP"
    ):
        WeCLIPForSemanticSegmentation.from_clip(
            "someone/clip-without-config", cache_dir=str(tmp_path), local_files_only=True
        )


def test_a_hub_dinov2_without_config_json_or_of_another_type_is_named_before_its_weights_load(
    tiny_clip, tmp_path
):
    """A Hub DINOv2 without config.json met AutoModel's "Unrecognized model in ... Should have a `model_type` key in
    its config.json" (of a file it lacks): refused as a Hub CLIP without one is. A Hub repository of another model
    type is refused from its config, before its weights are read (a Hub DINOv2 given as the CLIP was read with
    CLIPConfig's defaults)."""
    AutoModel.from_config(Dinov2Config(**TINY_DINO)).save_pretrained(tmp_path / "dino")
    cached_hub_repository(tmp_path / "cache", "someone/dino-without-config", tmp_path / "dino", "config.json")
    with pytest.raises(
        FileNotFoundError, match=r"'someone/dino-without-config' has no config.json: not a DINOv2"
    ):
        WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(
            tiny_clip, "someone/dino-without-config", cache_dir=str(tmp_path / "cache"), local_files_only=True
        )
    cached_hub_repository(tmp_path / "cache", "someone/a-dino", tmp_path / "dino")
    with pytest.raises(ValueError, match=r"'someone/a-dino' holds a 'dinov2' model, not a CLIP checkpoint"):
        WeCLIPForSemanticSegmentation.from_clip(
            "someone/a-dino", cache_dir=str(tmp_path / "cache"), local_files_only=True
        )
    cached_hub_repository(tmp_path / "cache", "someone/a-clip", tiny_clip)
    with mock.patch.object(AutoModel, "from_pretrained", side_effect=AssertionError("weights read")):
        with pytest.raises(
            ValueError, match=r"'someone/a-clip' holds a 'clip' model, not a DINOv2 checkpoint"
        ):
            WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(
                tiny_clip, "someone/a-clip", cache_dir=str(tmp_path / "cache"), local_files_only=True
            )


def test_a_clip_folder_without_tokenizer_files_is_refused_naming_them(tiny_clip, tmp_path):
    """A CLIP saved without its tokenizer (CLIPModel.save_pretrained alone): transformers built an empty tokenizer
    from its config (every word the same id), and with the legacy end-of-text id 2 of OpenAI's configs every class
    got the same text embedding, silently. The one loader of CLIP tokenizers refuses it, naming the folder, the
    files it lacks and the remedy, for from_clip and the training scripts' flag."""
    from weclip_hf.model_loading import load_clip_tokenizer

    config = json.loads((Path(tiny_clip) / "config.json").read_text())
    config["text_config"]["eos_token_id"] = 2  # as openai/clip-vit-base-patch16's config.json
    folder = tmp_path / "clip-without-tokenizer"
    folder.mkdir()
    shutil.copy(Path(tiny_clip) / "model.safetensors", folder)
    (folder / "config.json").write_text(json.dumps(config))
    message = (
        r"'.*clip-without-tokenizer' \({}\) holds no CLIP tokenizer \(tokenizer.json, or vocab.json and "
        r"merges.txt; it holds config.json, model.safetensors\).*every class name would get the same text "
        r"embedding.*AutoTokenizer.from_pretrained\(.*\).save_pretrained\("
    )
    with pytest.raises(FileNotFoundError, match=message.format("clip_name_or_path")):
        WeCLIPForSemanticSegmentation.from_clip(str(folder))
    with pytest.raises(FileNotFoundError, match=message.format("--clip_model_name_or_path")):
        load_clip_tokenizer(str(folder), "--clip_model_name_or_path")


@pytest.mark.parametrize(
    "field", ["vision_config", "text_config", "projection_dim", "logit_scale_init_value"]
)
def test_backbone_constructors_refuse_the_fields_they_read_from_the_clip(tiny_clip, field):
    """(was: "WeCLIPConfig() got multiple values for keyword argument 'vision_config'"; a logit_scale_init_value
    was stored and the checkpoint's scale used)"""
    message = (
        rf"\.from_clip(_and_dino)? reads {field} \(from clip_name_or_path\) from the checkpoint: leave it out"
    )
    for build in (lambda: WeCLIPForSemanticSegmentation.from_clip(tiny_clip, **{field: {}}),
                  lambda: WeCLIPPlusForSemanticSegmentation.from_clip_and_dino(tiny_clip, "x", **{field: {}})):  # fmt: skip
        with pytest.raises(TypeError, match=message):
            build()


def test_fresh_dino_head_gets_the_decoder_initialization(plus_model):
    std = plus_model.config.initializer_range
    for layer in (plus_model.dino_branch.head.layer_mlps[0].fc1, plus_model.dino_branch.head.fuse):
        assert abs(float(layer.weight.detach().std()) - std) < 0.2 * std and not layer.bias.any()


def test_image_without_classes_gets_background(plus_model):
    pixel_values, class_labels = tiny_plus_inputs()
    class_labels[1] = 0
    with torch.no_grad():
        out = plus_model(pixel_values, class_labels=class_labels)
        alone = plus_model(pixel_values[1:], class_labels=class_labels[1:])  # no pair in the whole batch
    assert (out.pseudo_labels[1] == 0).all() and torch.isfinite(out.loss)
    assert (alone.pseudo_labels == 0).all() and torch.isfinite(alone.loss)


def test_remote_code_loads_weclip_plus_without_the_package(plus_model, tmp_path):
    """The saved folder carries its code: in a fresh process where ``import weclip_hf`` fails, the Auto classes
    load it with ``trust_remote_code=True`` and give the package's logits."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image
    from test_remote_code import REMOTE_SCRIPT

    from weclip_hf import WeCLIPImageProcessor

    folder, image_path = tmp_path / "model", tmp_path / "image.png"
    plus_model.save_pretrained(folder)
    processor = WeCLIPImageProcessor(size={"longest_edge": 64}, patch_size=8)
    processor.save_pretrained(folder)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image_path)
    assert json.loads((folder / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_weclip_plus.WeCLIPPlusConfig",
        "AutoModelForSemanticSegmentation": "modeling_weclip_plus.WeCLIPPlusForSemanticSegmentation",
    }
    script, out = tmp_path / "load_remote.py", tmp_path / "remote.pt"
    script.write_text(REMOTE_SCRIPT)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),
        HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        TRANSFORMERS_VERBOSITY="error",
    )
    command = [sys.executable, str(script), str(folder), str(image_path), str(out)]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    remote = torch.load(out)
    assert remote["weclip_modules"] == [] and all(
        m.startswith("transformers_modules.") for m in remote["classes"]
    )
    pixel_values = processor(Image.open(image_path), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = plus_model(pixel_values).logits
    torch.testing.assert_close(remote["logits"], logits, rtol=0, atol=1e-6)


def test_push_to_hub_uploads_a_loadable_folder(plus_model, fake_hub):
    """`push_to_hub` (Hub API replaced by a local copy) uploads weights, config, processor, code and a WeCLIP+
    card; the uploaded folder loads back."""
    assert plus_model.push_to_hub("tiny-weclip-plus") == "https://hub/me/tiny-weclip-plus"
    uploaded = fake_hub.uploaded[0]["copy"]
    names = {p.name for p in uploaded.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= names
    assert "Frozen CLIP-DINO" in (uploaded / "README.md").read_text()
    loaded = AutoModelForSemanticSegmentation.from_pretrained(uploaded)
    assert type(loaded) is WeCLIPPlusForSemanticSegmentation


def test_self_training_overwrites_only_above_the_threshold():
    """A pixel whose confidence equals the threshold exactly keeps its pseudo label."""
    from weclip_hf.branch_losses import self_training_labels

    labels = torch.zeros(1, 1, 2, dtype=torch.long)
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 10.0]]]])  # pixel 0: max probability exactly 0.5
    new, overwritten = self_training_labels(labels, logits, threshold=0.5)
    assert overwritten.tolist() == [[[False, True]]] and new.tolist() == [[[0, 1]]]


def tiny_model(plus: bool) -> WeCLIPForSemanticSegmentation:
    """A tiny random WeCLIP+ (``plus``) or WeCLIP in eval mode."""
    torch.manual_seed(0)
    if plus:
        return WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config()).eval()
    return WeCLIPForSemanticSegmentation(make_tiny_config()).eval()


def test_a_weclip_plus_built_under_inference_mode_predicts():
    """Its DINOv2 position embeddings are inference tensors, which keep no version counter: the kept resize read it
    and every forward off the native grid raised "Inference tensors do not track version counter". They are
    resized at each forward instead (never kept: an in-place change could not be seen)."""
    reference = tiny_model(plus=True)
    with torch.inference_mode():
        model = tiny_model(plus=True)
    pixel_values, _ = tiny_plus_inputs()
    with torch.no_grad():
        expected = reference(pixel_values).logits
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            torch.testing.assert_close(model(pixel_values).logits, expected, rtol=0, atol=0)
    assert getattr(model.dino_branch.backbone.embeddings, "_resized_positions", None) is None


@pytest.mark.parametrize("plus", [False, True])
def test_a_model_built_under_inference_mode_is_told_to_be_built_outside_it_for_pseudo_labels(plus):
    """A model built (or loaded) under `torch.inference_mode` has inference tensors for parameters, through which
    the GradCAM cannot take gradients: torch's "Inference tensors cannot be saved for backward ... use
    torch.no_grad() instead of torch.inference_mode()" (under no_grad too) now names the cause and the remedy. Its
    predictions are unaffected."""
    with torch.inference_mode():
        model = tiny_model(plus)
    pixel_values, class_labels = tiny_plus_inputs()
    message = (
        r"parameters are inference tensors \(it was built or loaded under torch.inference_mode\(\)\): the "
        r"pseudo labels' GradCAM .* Build or load the model outside torch.inference_mode\(\)"
    )
    for mode in (torch.no_grad, torch.inference_mode):
        with mode(), pytest.raises(RuntimeError, match=message):
            model(pixel_values, class_labels=class_labels)
        with mode():
            assert model(pixel_values).logits.shape[0] == 2


@pytest.mark.parametrize("plus", [False, True])
def test_pseudo_labels_under_inference_mode_as_under_no_grad(plus):
    """`torch.inference_mode` forbids the gradients GradCAM takes within the forward: the forward leaves it for
    `no_grad` and gives the same outputs (it raised "element 0 of tensors does not require grad")."""
    model = tiny_model(plus)
    pixel_values, class_labels = tiny_plus_inputs()
    with torch.no_grad():
        expected = model(pixel_values, class_labels=class_labels)
    with torch.inference_mode():
        inputs = pixel_values.clone(), class_labels.clone()  # inference tensors, as a user's would be
        out = model(*inputs)
        assert torch.is_inference_mode_enabled()  # left as it was
    assert torch.equal(out.pseudo_labels, expected.pseudo_labels) and torch.equal(out.logits, expected.logits)
    assert torch.equal(out.loss, expected.loss) and not out.logits.requires_grad
    # the public pseudo-label stage alone, on features made in inference mode, and its input check
    with torch.no_grad():
        features = model.forward_clip_features(pixel_values, model.config.attention_num_maps)
        probabilities = {"class_probabilities": expected.logits.softmax(1)} if plus else {}
        stage = model.generate_pseudo_labels(pixel_values, class_labels, features, **probabilities)
    with torch.inference_mode():
        inputs = pixel_values.clone(), class_labels.clone()
        features = model.forward_clip_features(inputs[0], model.config.attention_num_maps)
        assert torch.equal(
            model.generate_pseudo_labels(*inputs, features, **probabilities).pseudo_labels,
            stage.pseudo_labels,
        )
    with pytest.raises(
        ValueError, match=r"class_labels must be multi-hot of shape \[batch, num_foreground_classes\]"
    ):
        model.generate_pseudo_labels(pixel_values, class_labels[:, :3], features, **probabilities)


@pytest.mark.parametrize("plus", [False, True])
def test_attention_implementation_switches_in_every_tower(plus):
    """`set_attn_implementation` after loading reaches the CLIP (and DINOv2) layers, where transformers' guess from
    WeCLIP's source refused (the decoder's attention class does not use its attention interface), and the model
    computes the same either way."""
    model = tiny_model(plus)
    pixel_values, class_labels = tiny_plus_inputs()
    with torch.no_grad():
        before = model(pixel_values, class_labels=class_labels)
    other = (
        model.dino_branch.backbone.encoder.layer[0].attention if plus else model.text_model.encoder.layers[0]
    )
    layers = [model.vision_model.encoder.layers[0].self_attn, getattr(other, "self_attn", other)]

    def implementations() -> list[str]:
        return [model.config._attn_implementation] + [layer.config._attn_implementation for layer in layers]

    assert implementations() == ["sdpa"] * 3
    model.set_attn_implementation("eager")
    assert implementations() == ["eager"] * 3
    with torch.no_grad():
        after = model(pixel_values, class_labels=class_labels)
    torch.testing.assert_close(after.logits, before.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(after.pseudo_labels, before.pseudo_labels)


def test_flex_attention_loads_and_runs_every_tower_as_sdpa(tmp_path, monkeypatch):
    """``from_pretrained(folder, attn_implementation="flex_attention")`` loads (it was refused: only SDPA was
    declared) and WeCLIP+'s CLIP and DINOv2 layers run through torch's flex_attention (on a CPU compiled by
    inductor: the ~10 s of this test) with SDPA's logits and pseudo labels. One CAM map (``attention_num_maps``),
    so that CLIP's first layers dispatch (the blocks whose maps are read run explicitly under every setting)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    torch.manual_seed(0)
    WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config(attention_num_maps=1)).save_pretrained(tmp_path)
    pixel_values, class_labels = tiny_plus_inputs()
    calls = []
    flex = ALL_ATTENTION_FUNCTIONS["flex_attention"]
    monkeypatch.setitem(
        ALL_ATTENTION_FUNCTIONS,
        "flex_attention",
        lambda module, *a, **k: calls.append(module) or flex(module, *a, **k),
    )
    outputs = {}
    for implementation in ("sdpa", "flex_attention"):
        model = WeCLIPPlusForSemanticSegmentation.from_pretrained(
            tmp_path, attn_implementation=implementation
        )
        with torch.no_grad():  # inference, and weak supervision (pseudo labels)
            outputs[implementation] = (
                model.eval()(pixel_values),
                model(pixel_values, class_labels=class_labels),
            )
    assert {type(module).__name__ for module in calls} == {"CLIPAttention", "Dinov2Attention"}
    for flex_output, sdpa_output in zip(outputs["flex_attention"], outputs["sdpa"]):
        torch.testing.assert_close(flex_output.logits, sdpa_output.logits, atol=1e-6, rtol=1e-5)
    assert torch.equal(outputs["flex_attention"][1].pseudo_labels, outputs["sdpa"][1].pseudo_labels)


def test_flash_attention_is_declared_and_left_to_transformers_checks(tmp_path):
    """FlashAttention is declared as the towers declare it (CLIP's and both DINOv2s'; the explicit blocks and the
    decoder's SDPA do not use it): loading with it reaches transformers' own check, here (no flash_attn, no GPU)
    its "not installed" error rather than WeCLIP's refusal. GPU runs with it were not tested."""
    from transformers import CLIPPreTrainedModel, Dinov2PreTrainedModel, Dinov2WithRegistersPreTrainedModel

    towers = (CLIPPreTrainedModel, Dinov2PreTrainedModel, Dinov2WithRegistersPreTrainedModel)
    assert all(tower._supports_flash_attn and tower._supports_flex_attn for tower in towers)
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed: transformers' 'not installed' error cannot be seen")
    WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config()).save_pretrained(tmp_path)
    with pytest.raises(ImportError, match="FlashAttention2 has been toggled on.* seem to be installed"):
        WeCLIPPlusForSemanticSegmentation.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


@pytest.mark.parametrize("plus", [False, True])
def test_gradients_reach_the_pixels_when_asked_for_and_never_the_frozen_towers(plus):
    """Pixels that require a gradient (saliency maps, attacks) get d logits / d pixels through the frozen towers
    (checked against finite differences in float64); the towers' weights get none, and images that do not require
    one run the towers without autograd, as in training."""
    model = tiny_model(plus).double()
    pixel_values = torch.randn(1, 3, 16, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.autograd.gradcheck(
        lambda x: model(x).logits, pixel_values.requires_grad_(), atol=1e-9, rtol=1e-4, fast_mode=True
    )
    _, class_labels = tiny_plus_inputs(batch=1)
    out = model(pixel_values, class_labels=class_labels)
    out.loss.backward()
    assert pixel_values.grad.abs().sum() > 0
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    with torch.no_grad():
        reference = model(pixel_values.detach(), class_labels=class_labels)
    assert torch.equal(out.pseudo_labels, reference.pseudo_labels) and torch.allclose(
        out.loss, reference.loss
    )
    assert not model.forward_clip_features(pixel_values.detach()).hidden[-1].requires_grad


@pytest.mark.parametrize("plus", [False, True])
def test_a_training_step_gives_towers_a_user_unfroze_no_gradient_and_train_refreezes_them(plus):
    """The frozen towers run without autograd whatever their ``requires_grad`` (unless the pixels require a
    gradient): a user who unfreezes them after ``train()`` gets no gradient in them (they cannot be fine-tuned
    through the model), and the next ``train()`` freezes them again."""
    model = tiny_model(plus).train()
    towers = [name for name, p in model.named_parameters() if not p.requires_grad]
    model.requires_grad_(True)  # every tower too
    out = model(*tiny_plus_inputs(batch=2))
    out.loss.backward()
    params = dict(model.named_parameters())
    assert towers and all(params[name].grad is None for name in towers)
    assert not model.forward_clip_features(tiny_plus_inputs(batch=1)[0]).hidden[-1].requires_grad
    model.train()
    assert not any(params[name].requires_grad for name in towers)


@pytest.mark.parametrize("variant", sorted(DINO_VARIANTS))
def test_the_decoder_depth_defaults_to_the_official_one_for_the_dinov2(variant):
    """The official configs pair ViT-L DINOv2s with a 5-layer decoder: a WeCLIP+ on one built a 3-layer decoder
    (the voc-plus preset, train.py) unless the user knew to ask; a depth given or saved is kept."""
    dino = dino_variant_config(variant)
    assert WeCLIPPlusConfig.from_preset("voc-plus", dino_config=dino).decoder_num_layers == (
        DINO_VARIANTS[variant].decoder_num_layers
    )
    assert WeCLIPPlusConfig(dino_config=dino, decoder_num_layers=2).decoder_num_layers == 2
    saved = WeCLIPPlusConfig(dino_config=dino, decoder_num_layers=4).to_dict()
    assert WeCLIPPlusConfig.from_dict(saved).decoder_num_layers == 4


# trainable parameters of the official modules at full size (DESIGN-weclip-plus §5: the official SegFormerHead and
# DecoderTransformer instantiated): the decoder with its one-layer CLIP head, and the DINO head of each width
OFFICIAL_TRAINABLE = {"dinov2_vits14": 2_933_269, "dinov2_vitb14": 3_031_573, "dinov2_vitl14": 4_676_629}


@pytest.mark.parametrize("variant", sorted(DINO_VARIANTS))
def test_the_trained_modules_have_the_official_parameter_counts(variant):
    """CLIP ViT-B/16 + each DINOv2 at full size (on the meta device): only the decoder (CLIP head 328,448) and the
    DINO head (230,144 / 328,448 / 393,984 for ViT-S / B / L) are trained, as many parameters as the official
    modules; the register variants' as their plain ones'."""
    with torch.device("meta"):
        model = WeCLIPPlusForSemanticSegmentation(WeCLIPPlusConfig(dino_config=dino_variant_config(variant)))
    trained = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trained.values()) == OFFICIAL_TRAINABLE[variant.removesuffix("_reg")]
    assert all(n.startswith(("decoder.", "dino_branch.head.")) for n in trained)


def test_a_dinov2_of_other_sizes_gets_weclips_decoder_depth():
    assert WeCLIPPlusConfig(dino_config=dict(TINY_DINO)).decoder_num_layers == 3


@pytest.mark.parametrize(
    ("field", "value"), [("use_swiglu_ffn", True), ("qkv_bias", False), ("use_mask_token", False)]
)
def test_a_dino_field_changed_under_the_built_model_is_refused(tmp_path, field, value):
    """DINOv2 fields that shape its weights, set on a built WeCLIP+'s config, saved a folder that did not load
    (the architecture check looked at the sizes only)."""
    model = WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config()).eval()
    setattr(model.config.dino_config, field, value)
    with pytest.raises(
        ValueError, match=rf"model\.config\.dino_config\.{field} is {value}, built with {not value}"
    ):
        model.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_the_position_rule_changed_under_the_built_model_is_refused(tmp_path):
    """The DINOv2's embeddings module is built for ``dino_position_interpolation`` (the hub rule's subclass or
    transformers' own): set to the other rule on a built model, saving is refused, naming the field."""
    model = WeCLIPPlusForSemanticSegmentation(make_tiny_plus_config()).eval()
    model.config.dino_position_interpolation = "hf"
    with pytest.raises(
        ValueError, match=r"model\.config\.dino_position_interpolation is 'hf', built with 'hub'"
    ):
        model.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()

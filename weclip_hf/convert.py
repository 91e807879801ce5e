"""Convert official WeCLIP checkpoints (and OpenAI CLIP weights) to this package's format.

The official code saves ``torch.save(model.state_dict())`` of its ``WeCLIP`` module:

- ``encoder.*``: the whole OpenAI CLIP (``visual.*`` image tower, text tower, ``text_projection``,
  ``logit_scale``), some tensors possibly in fp16;
- ``decoder_fts_fuse.*`` and ``decoder.*``: the trained decoder;
- ``par.kernel``: a constant buffer (the 8 one-hot 3x3 neighbour kernels of PAR), checked and dropped.

The OpenAI ``ViT-B-16.pt`` file is a TorchScript archive holding the same CLIP keys without ``encoder.``.

Name mapping (OpenAI CLIP -> transformers ``CLIPModel``; ``{b}`` = ``visual.transformer.resblocks.{i}`` ->
``vision_model.encoder.layers.{i}`` or ``transformer.resblocks.{i}`` -> ``text_model.encoder.layers.{i}``):

==========================================  ===========================================================
official                                    ours
==========================================  ===========================================================
``visual.class_embedding``                  ``vision_model.embeddings.class_embedding``
``visual.positional_embedding``             ``vision_model.embeddings.position_embedding.weight``
``visual.conv1.weight``                     ``vision_model.embeddings.patch_embedding.weight``
``visual.ln_pre.*`` / ``visual.ln_post.*``  ``vision_model.pre_layrnorm.*`` / ``vision_model.post_layernorm.*``
``visual.proj`` [D, E] (``x @ proj``)       ``visual_projection.weight`` [E, D] (transposed)
``token_embedding.weight``                  ``text_model.embeddings.token_embedding.weight``
``positional_embedding``                    ``text_model.embeddings.position_embedding.weight``
``ln_final.*``                              ``text_model.final_layer_norm.*``
``text_projection`` (``x @ text_proj``)     ``text_projection.weight`` (transposed)
``logit_scale``                             ``logit_scale``
``{b}.attn.in_proj_weight`` / ``_bias``     ``{b}.self_attn.{q,k,v}_proj.weight`` / ``.bias`` (split in 3)
``{b}.attn.out_proj.*``                     ``{b}.self_attn.out_proj.*``
``{b}.ln_1.*`` / ``{b}.ln_2.*``             ``{b}.layer_norm1.*`` / ``{b}.layer_norm2.*``
``{b}.mlp.c_fc.*`` / ``{b}.mlp.c_proj.*``   ``{b}.mlp.fc1.*`` / ``{b}.mlp.fc2.*``
==========================================  ===========================================================

Decoder: ``decoder_fts_fuse.linears_modulelist.{i}.proj`` / ``.proj_2`` -> ``decoder.layer_mlps.{i}.fc1`` /
``.fc2``; ``decoder_fts_fuse.linear_fuse`` -> ``decoder.fuse``; ``decoder.transformer.resblocks.{j}.ln_1``,
``.attn.in_proj_weight`` / ``in_proj_bias``, ``.attn.out_proj``, ``.ln_2``, ``.mlp.c_fc``, ``.mlp.c_proj`` ->
``decoder.blocks.{j}.layer_norm1``, ``.self_attn.in_proj.weight`` / ``.bias``, ``.self_attn.out_proj``,
``.layer_norm2``, ``.mlp.fc1``, ``.mlp.fc2``; ``decoder.linear_pred`` -> ``decoder.classifier``.

Every key is accounted for: an unknown key, a missing key or a wrong shape raises a ``ValueError`` that
names it. Output tensors are float32 whatever the input dtype.

Loading is safe (`weclip_hf.safe_loading`): before any member is read, the sizes the zip archive declares are
checked (each member at most ``max_member_bytes``, all at most ``max_total_bytes``, no zip-bomb compression
ratio) and ``data.pkl`` is unpickled by a restricted unpickler that rebuilds no tensor, so every tensor's
storage is checked against its member and every view (offset, shape, stride) against its storage: a small
hostile file ends in one ``ValueError`` naming the file and the member or tensor key, not in gigabytes of
memory. Then ``torch.save`` checkpoints are read by ``torch.load(..., weights_only=True)`` (a pickle that
needs code is refused, never executed) and TorchScript archives (the OpenAI ``ViT-B-16.pt``) by the
restricted unpickler, which rebuilds tensors from the archive's storage records and reads the
parameter/buffer names as text from the class declarations in the archive's ``code/`` folder: no TorchScript
or Python code of the archive is compiled or run (``torch.jit.load``, which compiles the archive's
TorchScript and may run its ``__setstate__`` methods, is not used). If an archive cannot be read this way,
the error tells the user to pass a transformers CLIP folder / Hub id with ``--clip`` instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .configuration_weclip import WeCLIPConfig
from .presets import preset_config_kwargs
from .safe_loading import (
    MAX_ARCHIVE_BYTES,
    MAX_MEMBER_BYTES,
    check_tensor_views,
    is_torchscript_archive,
    load_torch_archive,
    read_torchscript_archive,
)

# Keys of the OpenAI TorchScript archive that are model hyper-parameters, not weights.
CLIP_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Our buffers that no official checkpoint holds: the text embeddings are computed after loading.
COMPUTED_KEYS = ("class_text_embeds", "background_text_embeds")
PAR_KERNEL_KEY = "par.kernel"
_PAR_NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))

# ---- name tables -------------------------------------------------------------------------------------

_CLIP_TOP = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "visual.proj": "visual_projection.weight",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "text_projection": "text_projection.weight",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = ("visual.proj", "text_projection")
# Per residual block, packed q/k/v excepted (official suffix -> ours).
_BLOCK = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_PACKED = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}
_TOWERS = (
    ("visual.transformer.resblocks.", "vision_model.encoder.layers."),
    ("transformer.resblocks.", "text_model.encoder.layers."),
)
_BLOCK_RE = re.compile(r"^(visual\.transformer\.resblocks\.|transformer\.resblocks\.)(\d+)\.(.+)$")
_HF_BLOCK_RE = re.compile(r"^(vision_model\.encoder\.layers\.|text_model\.encoder\.layers\.)(\d+)\.(.+)$")

_DECODER_BLOCK = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "attn.in_proj_weight": "self_attn.in_proj.weight",
    "attn.in_proj_bias": "self_attn.in_proj.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_DECODER_RULES = (  # (official template, our template); {0} = index, {1} = weight/bias
    ("decoder_fts_fuse.linears_modulelist.{0}.proj.{1}", "decoder.layer_mlps.{0}.fc1.{1}"),
    ("decoder_fts_fuse.linears_modulelist.{0}.proj_2.{1}", "decoder.layer_mlps.{0}.fc2.{1}"),
    ("decoder_fts_fuse.linear_fuse.{1}", "decoder.fuse.{1}"),
    ("decoder.linear_pred.{1}", "decoder.classifier.{1}"),
    *(
        ("decoder.transformer.resblocks.{0}." + o, "decoder.blocks.{0}." + h)
        for o, h in _DECODER_BLOCK.items()
    ),
)


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{0\}", r"(?P<i>\d+)").replace(r"\{1\}", r"(?P<p>weight|bias)")
    return re.compile(f"^{pattern}$")


def _apply_rules(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.format(match.groupdict().get("i"), match.groupdict().get("p"))
    return None


# ---- report ------------------------------------------------------------------------------------------


@dataclass
class ConversionReport:
    """What a conversion did with every key.

    Attributes:
        mapped: official key -> the key(s) of ours it became.
        ignored: official key -> why it was dropped (constant buffer, archive metadata, CLIP taken
            from elsewhere).
        computed: keys of ours that no checkpoint holds and are computed after loading.
        prefix: the prefix found in front of the CLIP keys (``"encoder."`` or ``""``).
        source_dtypes: dtype name -> number of official tensors stored in it.
    """

    mapped: dict[str, list[str]] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)
    prefix: str = ""
    source_dtypes: dict[str, int] = field(default_factory=dict)

    def merge(self, other: ConversionReport) -> ConversionReport:
        self.mapped.update(other.mapped)
        self.ignored.update(other.ignored)
        self.computed = sorted(set(self.computed) | set(other.computed))
        for k, v in other.source_dtypes.items():
            self.source_dtypes[k] = self.source_dtypes.get(k, 0) + v
        return self

    def summary(self) -> str:
        """One paragraph for logs and model cards."""
        n_out = sum(len(v) for v in self.mapped.values())
        dtypes = ", ".join(f"{n} {d}" for d, n in sorted(self.source_dtypes.items()))
        lines = [f"{len(self.mapped)} official tensors ({dtypes}) -> {n_out} tensors (float32)."]
        if self.ignored:
            lines.append("Ignored: " + "; ".join(f"{k} ({why})" for k, why in self.ignored.items()) + ".")
        if self.computed:
            lines.append("Computed after loading: " + ", ".join(self.computed) + ".")
        return " ".join(lines)


def _fail(what: str, keys: list[str], hint: str = "") -> None:
    if keys:
        raise ValueError(f"{what} ({len(keys)}): {', '.join(sorted(keys))}.{(' ' + hint) if hint else ''}")


def _count_dtypes(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in state_dict.values():
        name = str(t.dtype).replace("torch.", "")
        counts[name] = counts.get(name, 0) + 1
    return counts


# ---- CLIP --------------------------------------------------------------------------------------------


def _split_prefix(state_dict: dict[str, torch.Tensor]) -> str:
    """``"encoder."`` when the CLIP keys carry the official WeCLIP prefix, else ``""``."""
    if any(k.startswith("encoder.visual.") for k in state_dict):
        return "encoder."
    if any(k.startswith("visual.") for k in state_dict):
        return ""
    raise ValueError(
        "No CLIP image tower found: expected keys 'visual.*' (OpenAI CLIP) or 'encoder.visual.*' (official "
        f"WeCLIP checkpoint); got e.g. {sorted(state_dict)[:5]}. For a checkpoint without CLIP weights, pass "
        "clip= (--clip), a transformers CLIP folder or Hub id."
    )


def is_clip_key(key: str, prefix: str = "") -> bool:
    """Whether an official key belongs to the CLIP part: everything under ``prefix`` but the decoder and
    ``par`` (so an unknown key there is reported as an unknown CLIP key, never skipped)."""
    return key.startswith(prefix) and not key[len(prefix) :].startswith(
        ("decoder.", "decoder_fts_fuse.", "par.")
    )


def official_to_hf_clip(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], ConversionReport]:
    """Map an OpenAI-layout CLIP state dict to transformers ``CLIPModel`` names.

    Args:
        state_dict: the CLIP keys, bare (OpenAI ``ViT-B-16.pt``) or under ``encoder.`` (official WeCLIP
            checkpoint; non-CLIP keys of such a checkpoint are not looked at), fp16 or fp32.
    Returns:
        ``(vision_sd, text_sd, proj_sd, report)``: ``vision_model.*``, ``text_model.*`` and
        ``{visual_projection.weight, text_projection.weight, logit_scale}`` float32 tensors (their union
        loads into ``CLIPModel`` with ``strict=True``; strip ``vision_model.`` for a bare
        ``CLIPVisionModel``), and the report.
    Raises:
        ValueError: naming every unknown or missing CLIP key, or a packed projection of the wrong size.
    """
    prefix = _split_prefix(state_dict)
    clip = {k[len(prefix) :]: v for k, v in state_dict.items() if is_clip_key(k, prefix)}
    report = ConversionReport(prefix=prefix, source_dtypes=_count_dtypes(clip))
    out: dict[str, torch.Tensor] = {}
    unknown, layers = [], {"visual.transformer.resblocks.": set(), "transformer.resblocks.": set()}
    for key, tensor in clip.items():
        name = prefix + key
        if key in CLIP_METADATA_KEYS:
            report.ignored[name] = "CLIP hyper-parameter stored in the archive, not a weight"
            continue
        value = tensor.detach().to(torch.float32)
        if key in _CLIP_TOP:
            new = _CLIP_TOP[key]
            out[new] = value.t().contiguous() if key in _TRANSPOSED else value.clone()
            report.mapped[name] = [new]
            continue
        match = _BLOCK_RE.match(key)
        if match is None:
            unknown.append(name)
            continue
        tower, index, suffix = match.groups()
        layers[tower].add(int(index))
        base = dict(_TOWERS)[tower] + index + "."
        if suffix in _PACKED:
            if value.shape[0] % 3:
                raise ValueError(
                    f"{name}: packed q/k/v projection of shape {tuple(value.shape)} is not 3 x D."
                )
            kind = _PACKED[suffix]
            news = [f"{base}self_attn.{p}_proj.{kind}" for p in "qkv"]
            for new, part in zip(news, value.chunk(3, dim=0), strict=True):
                out[new] = part.clone().contiguous()
            report.mapped[name] = news
        elif suffix in _BLOCK:
            out[base + _BLOCK[suffix]] = value.clone()
            report.mapped[name] = [base + _BLOCK[suffix]]
        else:
            unknown.append(name)
    _fail("Unknown CLIP keys in the checkpoint (no mapping for them)", unknown)
    expected = [prefix + k for k in _CLIP_TOP]
    for tower, indices in layers.items():
        for i in range(max(indices) + 1 if indices else 0):
            expected += [f"{prefix}{tower}{i}.{s}" for s in (*_BLOCK, *_PACKED)]
    _fail("Missing CLIP keys in the checkpoint", [k for k in expected if k[len(prefix) :] not in clip])
    if not layers["transformer.resblocks."]:
        _fail("Missing CLIP keys in the checkpoint", [f"{prefix}transformer.resblocks.0.*"])
    vision = {k: v for k, v in out.items() if k.startswith("vision_model.")}
    text = {k: v for k, v in out.items() if k.startswith("text_model.")}
    proj = {k: v for k, v in out.items() if not k.startswith(("vision_model.", "text_model."))}
    return vision, text, proj, report


def hf_to_official_clip(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Inverse of `official_to_hf_clip`: ``CLIPModel``-named tensors -> OpenAI CLIP names (float32).

    Args:
        state_dict: ``vision_model.*``, ``text_model.*``, ``visual_projection.weight``,
            ``text_projection.weight``, ``logit_scale`` (other keys, e.g. a WeCLIP decoder, are ignored).
        prefix: put in front of every official key (``"encoder."`` for the WeCLIP layout).
    Raises:
        ValueError: naming an unknown CLIP key or a q/k/v projection without its siblings.
    """
    inverse_top = {v: k for k, v in _CLIP_TOP.items()}
    inverse_block = {v: k for k, v in _BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    packed: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state_dict.items():
        if key.endswith("position_ids"):
            continue
        value = tensor.detach().to(torch.float32)
        if key in inverse_top:
            old = inverse_top[key]
            out[prefix + old] = value.t().contiguous() if old in _TRANSPOSED else value.clone()
            continue
        match = _HF_BLOCK_RE.match(key)
        if match is None:
            if key.startswith(("vision_model.", "text_model.")):
                unknown.append(key)
            continue
        tower, index, suffix = match.groups()
        base = {v: k for k, v in _TOWERS}[tower] + index + "."
        proj = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", suffix)
        if proj:
            packed.setdefault((base, proj.group(2)), {})[proj.group(1)] = value
        elif suffix in inverse_block:
            out[prefix + base + inverse_block[suffix]] = value.clone()
        else:
            unknown.append(key)
    _fail("Unknown CLIP keys (no official name for them)", unknown)
    for (base, kind), parts in packed.items():
        missing = [f"{base}self_attn.{p}_proj.{kind}" for p in "qkv" if p not in parts]
        _fail("Incomplete q/k/v projections", missing)
        name = "attn.in_proj_weight" if kind == "weight" else "attn.in_proj_bias"
        out[prefix + base + name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# ---- decoder -----------------------------------------------------------------------------------------


def _par_kernel() -> torch.Tensor:
    """The official ``par.kernel`` constant: 8 one-hot 3x3 kernels, one per ring neighbour [8, 1, 3, 3]."""
    kernel = torch.zeros(len(_PAR_NEIGHBOURS), 1, 3, 3)
    for n, (r, c) in enumerate(_PAR_NEIGHBOURS):
        kernel[n, 0, r, c] = 1.0
    return kernel


def check_par_kernel(kernel: torch.Tensor) -> None:
    """Check that ``par.kernel`` is the constant PAR expects: the 8 one-hot 3x3 neighbour kernels."""
    expected = _par_kernel()
    if tuple(kernel.shape) != tuple(expected.shape) or not torch.equal(kernel.float(), expected):
        raise ValueError(
            f"{PAR_KERNEL_KEY} is not the 8 one-hot 3x3 neighbour kernels PAR uses (shape "
            f"{tuple(kernel.shape)}): this checkpoint was not written by the official WeCLIP code."
        )


def official_to_decoder(
    state_dict: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map the official decoder keys (``decoder_fts_fuse.*``, ``decoder.*``) to ``decoder.*`` of ours.

    Other keys are not looked at, except ``par.kernel``, which is checked and reported as ignored.
    """
    report = ConversionReport()
    out: dict[str, torch.Tensor] = {}
    unknown = []
    rules = [(_template_regex(official), ours) for official, ours in _DECODER_RULES]
    for key, tensor in state_dict.items():
        if key == PAR_KERNEL_KEY:
            check_par_kernel(tensor)
            report.ignored[key] = "constant PAR neighbour kernels (checked, rebuilt by the model)"
            continue
        if not key.startswith(("decoder.", "decoder_fts_fuse.")):
            continue
        new = _apply_rules(key, rules)
        if new is None:
            unknown.append(key)
            continue
        out[new] = tensor.detach().to(torch.float32).clone()
        report.mapped[key] = [new]
    report.source_dtypes = _count_dtypes({k: state_dict[k] for k in report.mapped})
    _fail("Unknown decoder keys in the checkpoint (no mapping for them)", unknown)
    return out, report


def decoder_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `official_to_decoder` (``decoder.*`` of ours -> official names), plus ``par.kernel``."""
    rules = [(_template_regex(ours), official) for official, ours in _DECODER_RULES]
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        if not key.startswith("decoder."):
            continue
        name = _apply_rules(key, rules)
        if name is None:
            unknown.append(key)
        else:
            out[name] = tensor.detach().to(torch.float32).clone()
    _fail("Unknown decoder keys (no official name for them)", unknown)
    out[PAR_KERNEL_KEY] = _par_kernel()
    return out


# ---- whole model -------------------------------------------------------------------------------------


def _expected_state_dict(config: WeCLIPConfig) -> dict[str, torch.Tensor]:
    """Our state dict for ``config`` on the meta device (names and shapes only, no memory)."""
    from .modeling_weclip import WeCLIPForSemanticSegmentation

    with torch.device("meta"):
        model = WeCLIPForSemanticSegmentation(config)
    return model.state_dict()


def official_to_weclip(
    state_dict: dict[str, torch.Tensor],
    config: WeCLIPConfig,
    clip_state_dict: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map a whole official WeCLIP state dict to ours, checked against ``config``.

    Args:
        state_dict: the official checkpoint (``encoder.*``, ``decoder_fts_fuse.*``, ``decoder.*``,
            ``par.kernel``), fp16 or fp32.
        config: the target config (e.g. from `infer_config_from_official`).
        clip_state_dict: CLIP weights in our names (``CLIPModel`` layout) to use instead of the
            checkpoint's ``encoder.*``; then ``encoder.*`` may be absent, and if present it is ignored
            here (`convert_official_checkpoint` compares it first).
    Returns:
        ``(our_state_dict, report)``: every key of `WeCLIPForSemanticSegmentation` except the text
        embeddings (``report.computed``), with ``training_step`` = 0; float32.
    Raises:
        ValueError: naming unknown keys, missing keys (by their official name) and shape mismatches.
    """
    if clip_state_dict is None:
        vision, text, proj, report = official_to_hf_clip(state_dict)
        clip_part = {**vision, **text, **proj}
    else:
        report = ConversionReport(prefix="encoder.")
        clip_part = {
            k: v.detach().to(torch.float32)
            for k, v in clip_state_dict.items()
            if not k.endswith("position_ids")
        }
        for key in state_dict:
            if key.startswith("encoder."):
                report.ignored[key] = "CLIP taken from the given CLIP model instead"
    prefix = report.prefix
    decoder, decoder_report = official_to_decoder(state_dict)
    report.merge(decoder_report)
    handled = set(report.mapped) | set(report.ignored)
    _fail("Unknown keys in the checkpoint (no mapping for them)", [k for k in state_dict if k not in handled])

    ours = {**clip_part, **decoder, "training_step": torch.zeros((), dtype=torch.long)}
    expected = _expected_state_dict(config)
    report.computed = [k for k in COMPUTED_KEYS if k in expected]
    wanted = {k: v for k, v in expected.items() if k not in COMPUTED_KEYS}
    missing = sorted(set(wanted) - set(ours))
    if missing:
        official = hf_to_official_clip({k: expected[k] for k in missing}, prefix=prefix)
        names = list(official) + [
            k for k in decoder_to_official({k: expected[k] for k in missing}) if k != PAR_KERNEL_KEY
        ]
        names += [
            k
            for k in missing
            if not k.startswith(("vision_model.", "text_model.", "decoder."))
            and k not in ("visual_projection.weight", "text_projection.weight", "logit_scale")
        ]
        _fail(
            "Missing keys in the checkpoint for this config (official names)",
            sorted(set(names)) or missing,
            "Check the preset and the decoder/CLIP sizes.",
        )
    _fail(
        "Keys with no place in the model for this config (our names)",
        sorted(set(ours) - set(wanted)),
        "The checkpoint has more layers than the config.",
    )
    bad = [
        f"{k} {tuple(v.shape)} (expected {tuple(wanted[k].shape)})"
        for k, v in ours.items()
        if tuple(v.shape) != tuple(wanted[k].shape)
    ]
    _fail("Shape mismatches (our names)", bad)
    return ours, report


def weclip_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `official_to_weclip`: our state dict -> the official layout (float32, with ``par.kernel``)."""
    out = hf_to_official_clip(state_dict, prefix="encoder.")
    out.update(decoder_to_official(state_dict))
    return out


# ---- config inference --------------------------------------------------------------------------------


def _count_blocks(keys: list[str], stem: str) -> int:
    pattern = re.compile(re.escape(stem) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_clip_configs(
    state_dict: dict[str, torch.Tensor], vision_heads: int | None = None, text_heads: int | None = None
) -> tuple[dict, dict, int]:
    """CLIP vision/text config kwargs and the projection dim from the shapes of an OpenAI-layout state dict.

    Heads are ``width // 64`` as OpenAI CLIP builds them, unless given.
    """
    prefix = _split_prefix(state_dict)
    sd = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    keys = list(sd)
    needed = [
        "visual.conv1.weight",
        "visual.positional_embedding",
        "visual.proj",
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        "visual.transformer.resblocks.0.mlp.c_fc.weight",
        "transformer.resblocks.0.mlp.c_fc.weight",
    ]
    _fail("Cannot infer the CLIP sizes; missing keys", [prefix + k for k in needed if k not in sd])
    width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    if grid * grid + 1 != sd["visual.positional_embedding"].shape[0]:
        raise ValueError(
            f"{prefix}visual.positional_embedding has {sd['visual.positional_embedding'].shape[0]} "
            "rows, not 1 + a square number of patches."
        )
    text_width = sd["ln_final.weight"].shape[0]
    vocab = sd["token_embedding.weight"].shape[0]
    vision = dict(
        hidden_size=int(width),
        intermediate_size=int(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        num_hidden_layers=_count_blocks(keys, "visual.transformer.resblocks."),
        num_attention_heads=vision_heads or max(1, int(width) // 64),
        image_size=int(patch * grid),
        patch_size=int(patch),
        projection_dim=int(sd["visual.proj"].shape[1]),
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = dict(
        vocab_size=int(vocab),
        hidden_size=int(text_width),
        intermediate_size=int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        num_hidden_layers=_count_blocks(keys, "transformer.resblocks."),
        num_attention_heads=text_heads or max(1, int(text_width) // 64),
        max_position_embeddings=int(sd["positional_embedding"].shape[0]),
        projection_dim=int(sd["visual.proj"].shape[1]),
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        # OpenAI's BPE puts <|startoftext|>, <|endoftext|> last; EOT pooling looks for eos_token_id.
        bos_token_id=int(vocab) - 2,
        eos_token_id=int(vocab) - 1,
        pad_token_id=1,
    )
    return vision, text, int(sd["visual.proj"].shape[1])


def infer_decoder_kwargs(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Decoder sizes from the official decoder keys (heads cannot be read from shapes: default 8)."""
    need = [
        "decoder_fts_fuse.linear_fuse.weight",
        "decoder.linear_pred.weight",
        "decoder.transformer.resblocks.0.mlp.c_fc.weight",
    ]
    _fail("Cannot infer the decoder sizes; missing keys", [k for k in need if k not in state_dict])
    keys = list(state_dict)
    dim = int(state_dict["decoder_fts_fuse.linear_fuse.weight"].shape[0])
    return dict(
        decoder_hidden_size=dim,
        decoder_num_layers=_count_blocks(keys, "decoder.transformer.resblocks."),
        decoder_mlp_ratio=int(state_dict["decoder.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]) // dim,
        num_feature_layers=_count_blocks(keys, "decoder_fts_fuse.linears_modulelist."),
        num_labels=int(state_dict["decoder.linear_pred.weight"].shape[0]),
    )


def _build_config(
    vision: dict, text: dict, projection_dim: int, state_dict: dict, preset: str, overrides: dict
) -> WeCLIPConfig:
    kwargs = preset_config_kwargs(preset)
    decoder = infer_decoder_kwargs(state_dict)
    num_labels = decoder.pop("num_labels")
    if decoder["num_feature_layers"] == vision["num_hidden_layers"] - 1:
        decoder["num_feature_layers"] = None  # the default: all blocks but the last
    kwargs.update(decoder)
    kwargs.update(overrides)
    config = WeCLIPConfig(vision_config=vision, text_config=text, projection_dim=projection_dim, **kwargs)
    if config.num_labels != num_labels:
        raise ValueError(
            f"decoder.linear_pred predicts {num_labels} classes but preset {preset!r} has {config.num_labels} "
            "(background + foreground): pass the matching --preset (voc: 21, coco: 81)."
        )
    return config


def infer_config_from_official(
    state_dict: dict[str, torch.Tensor], preset: str = "voc", **overrides: Any
) -> WeCLIPConfig:
    """A `WeCLIPConfig` for an official checkpoint: CLIP and decoder sizes from the tensor shapes, class
    names and method constants from the dataset ``preset`` (``"voc"`` or ``"coco"``).

    ``overrides`` are passed to the config last (e.g. ``decoder_num_heads``, which shapes cannot tell;
    ``vision_heads`` / ``text_heads`` set the CLIP head counts, default ``width // 64``).
    """
    vision_heads, text_heads = overrides.pop("vision_heads", None), overrides.pop("text_heads", None)
    vision, text, projection_dim = infer_clip_configs(state_dict, vision_heads, text_heads)
    return _build_config(vision, text, projection_dim, state_dict, preset, overrides)


# ---- safe loading ------------------------------------------------------------------------------------


def load_official_checkpoint(
    path: str | Path, *, max_total_bytes: int = MAX_ARCHIVE_BYTES, max_member_bytes: int = MAX_MEMBER_BYTES
) -> dict[str, torch.Tensor]:
    """Read an official checkpoint safely: a ``torch.save`` state dict (``weights_only=True``, CPU) or an
    OpenAI TorchScript CLIP archive (read by a restricted unpickler; no code runs).

    Before anything is inflated, the sizes the archive declares are checked (`weclip_hf.safe_loading`):
    members against ``max_member_bytes`` each and ``max_total_bytes`` in all (defaults 2 GiB / 4 GiB; the
    official ViT-B/16 checkpoint is ~600 MB), zip-bomb compression ratios, and every tensor view against its
    storage (no negative, out-of-bounds, broadcast or overlapping view with more elements than its storage).
    A ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper and a DDP ``module.`` prefix are removed.
    Raises:
        FileNotFoundError, or ValueError naming the file and the member or tensor key: a check failed, the
        file needs code to unpickle (it is never executed), or it is a legacy (non-zip) pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if is_torchscript_archive(path):
        state = read_torchscript_archive(path, max_total_bytes, max_member_bytes)
    else:
        state = load_torch_archive(path, max_total_bytes, max_member_bytes)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and set(state) == {wrapper} and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        bad = (
            type(state).__name__
            if not isinstance(state, dict)
            else sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))[:10]
        )
        raise ValueError(f"{path}: expected a state dict of tensors, got {bad}.")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    check_tensor_views(state, path, max_total_bytes)  # again, on what torch.load built
    return dict(state)


# ---- end to end --------------------------------------------------------------------------------------


def _compare_clip(
    ckpt: dict[str, torch.Tensor], given: dict[str, torch.Tensor], rtol: float = 2e-3
) -> list[str]:
    """Keys (our names) where the checkpoint's CLIP differs from the given CLIP beyond fp16 rounding."""
    bad = []
    for key, value in ckpt.items():
        other = given.get(key)
        if other is None or other.shape != value.shape:
            bad.append(
                f"{key} (shape {tuple(value.shape)} vs {None if other is None else tuple(other.shape)})"
            )
        elif not torch.allclose(value, other.float(), rtol=rtol, atol=1e-6):
            bad.append(f"{key} (max |diff| {float((value - other.float()).abs().max()):.3g})")
    return bad


def convert_official_checkpoint(
    checkpoint: str | Path | dict[str, torch.Tensor],
    clip: str | None = None,
    preset: str = "voc",
    tokenizer: Any = None,
    check_clip: bool = True,
    **config_overrides: Any,
):
    """Build a `WeCLIPForSemanticSegmentation` from an official checkpoint.

    Args:
        checkpoint: path of the official ``.pth`` (or its state dict).
        clip: optional transformers CLIP folder or Hub id for the CLIP part (e.g. when the checkpoint holds
            only the decoder). If the checkpoint also holds ``encoder.*``, it is compared with this CLIP
            (up to fp16 rounding) and a difference raises, unless ``check_clip=False``; its ``encoder.*``
            tensors are then ignored.
        preset: ``"voc"`` or ``"coco"`` (class names, background words, thresholds).
        tokenizer: a CLIP tokenizer or its path; default the tokenizer of ``clip``. Needed to compute the
            class text embeddings.
        config_overrides: passed to the config (e.g. ``decoder_num_heads``).
    Returns:
        The model in eval mode, CLIP frozen, text embeddings computed; ``model.conversion_report`` holds
        the `ConversionReport`.
    """
    from transformers import AutoTokenizer

    from .modeling_weclip import WeCLIPForSemanticSegmentation

    if tokenizer is None and clip is None:
        raise ValueError(
            "A CLIP tokenizer is needed to compute the class text embeddings: pass tokenizer= (--tokenizer "
            "PATH_OR_HF_ID, e.g. openai/clip-vit-base-patch16) or clip= (--clip), whose tokenizer is used."
        )
    state = checkpoint if isinstance(checkpoint, dict) else load_official_checkpoint(checkpoint)
    clip_sd = None
    if clip is not None:
        from transformers import CLIPConfig, CLIPModel

        clip_config = CLIPConfig.from_pretrained(clip)
        clip_sd = CLIPModel.from_pretrained(clip).state_dict()
        vision = clip_config.vision_config.to_dict()
        text = clip_config.text_config.to_dict()
        config = _build_config(vision, text, clip_config.projection_dim, state, preset, config_overrides)
        if check_clip and any(k.startswith(("encoder.", "visual.")) for k in state):
            v, t, p, _ = official_to_hf_clip(state)
            _fail(
                f"The checkpoint's CLIP differs from {clip!r} for",
                _compare_clip({**v, **t, **p}, clip_sd),
                "Pass check_clip=False (--no_check_clip) to use the given CLIP anyway.",
            )
    else:
        config = infer_config_from_official(state, preset, **config_overrides)
    ours, report = official_to_weclip(state, config, clip_state_dict=clip_sd)
    model = WeCLIPForSemanticSegmentation(config)
    result = model.load_state_dict(ours, strict=False)
    _fail(
        "Model keys not filled by the conversion", [k for k in result.missing_keys if k not in COMPUTED_KEYS]
    )
    _fail("Converted keys the model does not have", list(result.unexpected_keys))
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer or clip))
    model.update_class_embeddings(tokenizer)
    model.freeze_clip()
    model.eval()
    model.conversion_report = report
    return model


__all__ = [
    "ConversionReport",
    "check_par_kernel",
    "convert_official_checkpoint",
    "decoder_to_official",
    "hf_to_official_clip",
    "infer_clip_configs",
    "infer_config_from_official",
    "infer_decoder_kwargs",
    "load_official_checkpoint",
    "official_to_decoder",
    "official_to_hf_clip",
    "official_to_weclip",
    "weclip_to_official",
]

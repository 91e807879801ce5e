"""The checks of configuration values, shared by `WeCLIPConfig` and `WeCLIPPlusConfig`: numbers within bounds,
transformer tower sizes, class and background names, the ignore index and the prompt template. Each refusal is a
``ValueError`` naming the field and what it got."""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import TYPE_CHECKING

from transformers.utils import logging

if TYPE_CHECKING:
    from transformers import CLIPTextConfig, CLIPVisionConfig

logger = logging.get_logger(__name__)

# Sane bounds for a config read from an untrusted config.json: each is far above any real model (ViT-bigG: 48
# layers, width 1664; the VOC/COCO label sets: 20/80 classes) and far below what would exhaust memory or time.
MAX_CLASSES = 10_000
MAX_LAYERS = 256
MAX_WIDTH = 16_384
MAX_PAR_ITERATIONS = 1_000


def check_int(name: str, value, low: int, high: int) -> None:
    """Refuse ``value`` unless it is an integer in [low, high], naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}.")


def check_number(
    name: str, value, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    """Refuse ``value`` unless it is a finite number in the interval, naming the field."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if ok and ((low_open and value == low) or (high_open and value == high)):
        ok = False
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}.")


def check_transformer_shape(name: str, config) -> None:
    """Refuse a transformer tower (CLIP's, DINOv2's) whose depth, width or heads are not positive, absurdly large
    or do not divide the width, naming the field."""
    check_int(f"{name}.num_hidden_layers", config.num_hidden_layers, 1, MAX_LAYERS)
    check_int(f"{name}.hidden_size", config.hidden_size, 1, MAX_WIDTH)
    check_int(f"{name}.num_attention_heads", config.num_attention_heads, 1, config.hidden_size)
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"{name}.hidden_size ({config.hidden_size}) must be divisible by num_attention_heads "
            f"({config.num_attention_heads})."
        )


def check_tower(name: str, config) -> None:
    """Refuse CLIP tower sizes that are not positive or would build an absurdly large model."""
    check_transformer_shape(name, config)
    check_int(f"{name}.intermediate_size", config.intermediate_size, 1, 4 * MAX_WIDTH)
    if hasattr(config, "image_size"):
        check_int(f"{name}.image_size", config.image_size, 1, 8192)
    if hasattr(config, "vocab_size"):
        check_int(f"{name}.vocab_size", config.vocab_size, 1, 1_000_000)
        check_int(f"{name}.max_position_embeddings", config.max_position_embeddings, 1, 8192)


def check_clip_towers(vision_config: CLIPVisionConfig, text_config: CLIPTextConfig) -> None:
    """Refuse CLIP towers of impossible or absurd sizes, or a vision tower too shallow for WeCLIP."""
    check_tower("vision_config", vision_config)
    check_tower("text_config", text_config)
    check_int("vision_config.patch_size", vision_config.patch_size, 1, vision_config.image_size)
    # the images are RGB (`check_inputs`); a tower of other channels could never run
    check_int("vision_config.num_channels", vision_config.num_channels, 3, 3)
    if vision_config.num_hidden_layers < 2:
        raise ValueError("WeCLIP needs a CLIP vision tower with at least 2 layers.")


def name_key(name: str) -> str:
    """A name as CLIP's tokenizer reads it (lower case, runs of spaces as one, none around it): names of one key
    are one prompt."""
    return " ".join(name.split()).lower()


def _repeated(names: list[str], key: Callable[[str], str]) -> list[str]:
    """The names of ``names`` that read as one under ``key``, each group as "'Cat' / 'cat'"."""
    spellings: dict[str, list[str]] = {}
    for name in names:
        spellings.setdefault(key(name), []).append(name)
    return [" / ".join(map(repr, sorted(set(s)))) for s in spellings.values() if len(s) > 1]


def _check_distinct(
    field: str, names: list[str], noun: str, where: str = "", prompts: bool = True, warn_repeats: bool = False
) -> None:
    """Refuse an empty name or names that read as one, naming them: as CLIP's tokenizer reads them (`name_key`:
    'Cat' and 'cat' are one prompt) for prompt names, exactly for display names (``prompts=False``: label2id's
    keys). ``warn_repeats``: repeats only warn (background words: one prompt twice is harmless, and saved models
    hold such lists)."""
    if not all(name_key(n) for n in names):
        raise ValueError(f"{field} must not hold an empty name, got {names!r}.")
    repeated = _repeated(names, name_key if prompts else str)
    if repeated and warn_repeats:
        logger.warning_once(f"{field} repeats {', '.join(repeated)}: each is one prompt.")
    elif repeated:
        how = (
            " (names are compared as CLIP's tokenizer reads them: case and extra spaces ignored)"
            if prompts
            else ""
        )
        raise ValueError(
            f"{field} must name each {noun} once, got {', '.join(repeated)} more than once{where}{how}."
        )


def check_optional_name(name: str, value) -> None:
    """A field holding a name or None."""
    if value is not None and not (isinstance(value, str) and value):
        raise ValueError(f"{name} must be a non-empty string or None, got {value!r}.")


def name_list(field: str, names, noun: str) -> list[str]:
    """``names`` (class names or background words) as a list, checked alone: 1 to MAX_CLASSES strings, none empty
    and no two read as one by the tokenizer (one prompt embedding: the second name could never win a pixel)."""
    if isinstance(names, str):  # list("cat") would be three classes
        raise ValueError(f"{field} must be a list of names, got the string {names!r}: write [{names!r}].")
    names = list(names)
    if not names:
        raise ValueError(f"{field} must hold at least one {noun}.")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"{field} must hold at most {MAX_CLASSES} names, got {len(names)}.")
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"{field} must be a list of strings, got {names!r}.")
    _check_distinct(field, names, noun, warn_repeats=field == "background_names")
    return names


def check_label_names(field: str, labels: list[str]) -> None:
    """Refuse display names of ids 0..C (background first) of which two read as one: `label2id` would keep one."""
    _check_distinct(
        field, labels, "label", f" in the labels of ids 0..{len(labels) - 1} {labels}", prompts=False
    )


def check_ignore_index(ignore_index: int, num_classes: int) -> None:
    """Refuse an ignore index that is no int32 or is a label id (0: the background, 1..C: the classes): those
    pixels would be left out of the loss and the scores."""
    check_int("semantic_loss_ignore_index", ignore_index, -(2**31), 2**31 - 1)
    if 0 <= ignore_index <= num_classes:
        fix = "255" if num_classes < 255 else "-100"
        raise ValueError(
            f"semantic_loss_ignore_index ({ignore_index}) is a label id (0: the background, 1..{num_classes}: the "
            f"classes): its pixels would be left out of the loss and the scores. Use {fix} (any value outside "
            f"0..{num_classes})."
        )


def check_prompt_template(template: str) -> None:
    """Refuse a prompt template that ``template.format(name)`` does not fill with the class name exactly once: it
    needs one empty replacement field ``{}`` and no other (``{{`` and ``}}`` are literal braces)."""
    if not isinstance(template, str):
        raise ValueError(f"prompt_template must be a string holding '{{}}', got {template!r}.")
    try:
        fields = [
            "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as err:  # a lone brace
        problem = f"it is not a format string ({err}; write a literal brace as '{{{{' or '}}}}')"
    else:
        if fields == ["{}"]:
            return
        problem = f"its replacement fields are {fields}" if fields else "it has no replacement field"
        if "{{" in template and not fields:
            problem += " ('{{}}' is a literal '{}')"
    raise ValueError(
        f"prompt_template must hold exactly one '{{}}', which the class name fills, got {template!r}: {problem}."
    )


def check_dilations(name: str, dilations) -> None:
    """Refuse PAR dilations unless a non-empty list of positive integers."""
    if not isinstance(dilations, (list, tuple)) or not dilations:
        raise ValueError(f"{name} must be a list of at least one dilation, got {dilations!r}.")
    for dilation in dilations:
        check_int(f"{name}[...]", dilation, 1, 4096)


# A check of one field: (config, field name, value). The bounds read nothing of the config but the CLIP depth
# (fixed under a built model) and the class count (whose setter checks the ignore index again), so each field is
# checked when set on a built config as in its constructor.

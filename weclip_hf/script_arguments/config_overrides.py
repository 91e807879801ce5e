"""--config_overrides ('field=value,...', as transformers' example scripts take it): the fields a WeCLIP config
takes (`config_fields`) and the values read from the text (`parse_config_overrides`)."""

from __future__ import annotations

import difflib
import inspect
import re

from ..configuration_weclip import WeCLIPConfig
from ..image_reading import quoted
from ..json_files import NotJSONError, parse_json

CONFIG_OVERRIDES_HELP = (
    "config fields of the fresh model that no flag sets, as transformers' example scripts take them: "
    "'attention_num_maps=5,dice_loss_weight=0.5' (JSON values: numbers, true/false, null, [1,2,4], also Python's "
    "True/False/None; a bare word is a string, a value holding a comma in double quotes); applied after --preset's "
    "and the other flags' values"
)


def config_fields(config_class: type[WeCLIPConfig]) -> set[str]:
    """The keyword arguments of ``config_class`` and of the WeCLIP configs it extends (WeCLIPPlusConfig passes
    WeCLIPConfig's through ``**kwargs``)."""
    classes = [cls for cls in config_class.__mro__ if isinstance(cls, type) and issubclass(cls, WeCLIPConfig)]
    names = {name for cls in classes for name in inspect.signature(cls).parameters}
    return names - {"self", "kwargs"}


_PYTHON_WORDS = {"True": True, "False": False, "None": None}  # as transformers' update_from_string reads them


def parse_config_overrides(text: str, config_class: type[WeCLIPConfig]) -> dict:
    """``--config_overrides`` ('field=value,...', as transformers' run_clm.py takes it) as keyword arguments of
    ``config_class``: each field one of its fields (a misspelt one is refused, with the closest names), each
    value read as JSON (True / False / None too; a bare word: a string; a string holding a comma in double quotes).
    The config checks the values when the model is built."""
    fields = config_fields(config_class)
    overrides = {}
    for item in _items(text):
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not key:
            raise ValueError(
                f"--config_overrides {text!r}: expected field=value pairs separated by commas, got {item!r}."
            )
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"--config_overrides: {config_class.__name__} has no field {key!r}{hint}.")
        if key in overrides:
            raise ValueError(f"--config_overrides: {key} is given twice: give each field once.")
        if value in _PYTHON_WORDS:
            overrides[key] = _PYTHON_WORDS[value]
            continue
        try:  # `parse_json`: NaN, 1e999, a key twice or nesting past the parser refused, naming the field
            overrides[key] = parse_json(value, f"--config_overrides {key}")
        except NotJSONError:
            overrides[key] = _number_or_text(value)
    return overrides


def _items(text: str) -> list[str]:
    """The ``field=value`` items of ``text``: split at the commas outside ``[...]`` (nested too) and ``"..."``, in
    one pass; empty ones left out. A ``[`` or ``"`` left open (or a ``]`` never opened) is refused: the items it
    would end cannot be told."""
    items, start, depth, in_string = [], 0, 0, False
    for i, char in enumerate(text):
        if char == '"':
            in_string = not in_string
        elif not in_string and char in "[]":
            depth += 1 if char == "[" else -1
            if depth < 0:
                raise ValueError(
                    f"--config_overrides {quoted(text)}: a ']' at character {i + 1} closes no '['."
                )
        elif not in_string and depth == 0 and char == ",":
            items.append(text[start:i])
            start = i + 1
    if in_string or depth:
        left_open = "a double quote" if in_string else f"{depth} '['"
        raise ValueError(f"--config_overrides {quoted(text)}: {left_open} left open.")
    items.append(text[start:])
    return [item for item in items if item.strip()] or [text]


# a decimal number JSON does not read (".5", "5.", "+1"); not "nan", "inf" or "1_0", which float() also takes
_PYTHON_NUMBER = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def _number_or_text(value: str) -> float | str:
    """A value JSON does not read: a decimal number as Python writes it (``.5``, ``5.``, as transformers'
    update_from_string reads it), else the text itself."""
    return float(value) if _PYTHON_NUMBER.fullmatch(value) else value

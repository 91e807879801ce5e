"""--config_overrides ('field=value,...', as transformers' example scripts take it): the fields a WeCLIP config
takes (`config_fields`) and the values read from the text (`parse_config_overrides`)."""

from __future__ import annotations

import difflib
import inspect
import json
import re

from ..configuration_weclip import WeCLIPConfig

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
    # a comma inside [...] or "..." belongs to the value
    for item in re.findall(r'(?:[^,\["]|\[[^\]]*\]|"[^"]*")+', text) or [text]:
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not key:
            raise ValueError(
                f"--config_overrides {text!r}: expected field=value pairs separated by commas, got {item!r}."
            )
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"--config_overrides: {config_class.__name__} has no field {key!r}{hint}.")
        if value in _PYTHON_WORDS:
            overrides[key] = _PYTHON_WORDS[value]
            continue
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = _number_or_text(value)
    return overrides


# a decimal number JSON does not read (".5", "5.", "+1"); not "nan", "inf" or "1_0", which float() also takes
_PYTHON_NUMBER = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")


def _number_or_text(value: str) -> float | str:
    """A value JSON does not read: a decimal number as Python writes it (``.5``, ``5.``, as transformers'
    update_from_string reads it), else the text itself."""
    return float(value) if _PYTHON_NUMBER.fullmatch(value) else value

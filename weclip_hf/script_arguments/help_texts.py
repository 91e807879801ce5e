"""What --help shows that is computed: a script's description (`first_paragraph`) and each preset's value of a
recipe or config field (`values_by_preset`, `recipe_values`, `config_values`)."""

from __future__ import annotations

from ..configuration_weclip import WeCLIPConfig
from ..presets import PRESETS


def _shown(value) -> str:
    """A value as a flag takes it, for --help: lists space-separated, strings quoted, None as "none"."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    if isinstance(value, str):
        return repr(value)
    return "none" if value is None else str(value)


def values_by_preset(values: dict[str, object]) -> str:
    """``{preset: value}`` for --help, the presets of one value together ("voc/voc-plus 30000, toy 500"; one
    value shared by every preset alone)."""
    groups: dict[str, list[str]] = {}
    for name, value in values.items():
        groups.setdefault(_shown(value), []).append(name)
    if len(groups) == 1 and len(values) == len(PRESETS):
        return next(iter(groups))
    return ", ".join(f"{'/'.join(names)} {value}" for value, names in groups.items())


def recipe_values(field: str) -> str:
    """The value of a recipe field (`Preset.recipe`: training and in-training evaluation) in each preset."""
    return values_by_preset({name: preset.recipe()[field] for name, preset in PRESETS.items()})


def config_values(field: str, default: str | None = None) -> str:
    """The value of a config field in each preset that sets it, then the config's ``default`` (WeCLIPConfig's
    keyword default unless given), for --help: "toy 128, else 256"."""
    if default is None:
        default = _shown(WeCLIPConfig.constructor_defaults()[field])
    given = {name: preset.config[field] for name, preset in PRESETS.items() if field in preset.config}
    return f"{values_by_preset(given)}, else {default}"


def first_paragraph(doc: str) -> str:
    """The first paragraph of a script's docstring: its ``--help`` description."""
    return doc.strip().split("\n\n")[0]

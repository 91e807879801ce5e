"""Renaming rules between an official checkpoint layout and ours, applied in both directions.

A `Rename` maps one official name to one of ours, or to several when the official tensor packs them along
its first dimension (a fused q/k/v projection), and may say that the two are transposes of each other
(``x @ proj`` against ``nn.Linear``). A `KeyTable` is a tuple of them: it renames a state dict either way and
lists the official keys a complete checkpoint holds. A new checkpoint layout is a new table.

Names are templates: ``{i}`` stands for a block index (digits) and ``{p}`` for ``weight`` or ``bias``; an
official name and its names of ours hold the same placeholders.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .report import raise_for_keys

PLACEHOLDERS = {"i": r"\d+", "p": r"weight|bias"}
_PLACEHOLDER_RE = re.compile(r"\{(\w+)\}")


def _placeholders(template: str) -> list[str]:
    return _PLACEHOLDER_RE.findall(template)


def _template_regex(template: str) -> re.Pattern:
    """``template`` as an anchored regex with one named group per placeholder."""
    parts = _PLACEHOLDER_RE.split(template)  # literal, placeholder, literal, ...
    pattern = "".join(
        re.escape(part) if n % 2 == 0 else f"(?P<{part}>{PLACEHOLDERS[part]})" for n, part in enumerate(parts)
    )
    return re.compile(f"^{pattern}$")


@dataclass(frozen=True)
class Rename:
    """One official name and the name(s) of ours it becomes.

    Attributes:
        official: the official name (a template).
        ours: our name, or several: the official tensor then holds them concatenated along dim 0 in this
            order, in equal parts (e.g. q, k, v).
        transpose: the official tensor is the transpose of ours (e.g. ``x @ proj`` for a ``nn.Linear``).
    """

    official: str
    ours: str | tuple[str, ...]
    transpose: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.ours, str):
            object.__setattr__(self, "ours", (self.ours,))
        names = _placeholders(self.official)
        if len(set(names)) != len(names) or not set(names) <= set(PLACEHOLDERS):
            raise ValueError(
                f"Rename {self.official!r}: placeholders must be among {sorted(PLACEHOLDERS)}, each once; "
                f"got {names}."
            )
        bad = [name for name in self.ours if sorted(_placeholders(name)) != sorted(names)]
        if bad or not self.ours:
            raise ValueError(f"Rename {self.official!r}: our names {bad} must hold the placeholders {names}.")
        if self.transpose and len(self.ours) > 1:
            raise ValueError(f"Rename {self.official!r}: a packed tensor cannot also be transposed.")

    @property
    def block_stem(self) -> str | None:
        """The official name before ``{i}`` (e.g. ``"transformer.resblocks."``), or None without ``{i}``."""
        return self.official.split("{i}")[0] if "{i}" in self.official else None


def _official_names(rule: Rename, index: int | None) -> list[str]:
    kinds = ("weight", "bias") if "{p}" in rule.official else (None,)
    return [rule.official.format(i=index, p=kind) for kind in kinds]


class KeyTable:
    """Renames state dicts between an official layout and ours with a tuple of `Rename` rules.

    Keys may carry a ``prefix`` (e.g. ``"encoder."``) that the official templates leave out.
    """

    def __init__(self, rules: Iterable[Rename]):
        self.rules = tuple(rules)
        self._official = [(_template_regex(rule.official), rule) for rule in self.rules]
        self._ours = [
            (_template_regex(name), rule, part) for rule in self.rules for part, name in enumerate(rule.ours)
        ]

    def _match_official(self, name: str) -> tuple[Rename, dict[str, str]] | None:
        for pattern, rule in self._official:
            if match := pattern.match(name):
                return rule, match.groupdict()
        return None

    def _match_ours(self, name: str) -> tuple[Rename, int, dict[str, str]] | None:
        for pattern, rule, part in self._ours:
            if match := pattern.match(name):
                return rule, part, match.groupdict()
        return None

    def owns_official(self, name: str) -> bool:
        """Whether ``name`` (without prefix) is an official name that a rule of this table renames."""
        return self._match_official(name) is not None

    def owns_ours(self, key: str) -> bool:
        """Whether ``key`` is one of our names that a rule of this table produces."""
        return self._match_ours(key) is not None

    def to_ours(
        self, state_dict: dict[str, torch.Tensor], prefix: str = ""
    ) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], list[str]]:
        """Rename official tensors to ours, as float32 copies (packed tensors split, transposes undone).

        Args:
            state_dict: official tensors, every key starting with ``prefix``.
        Returns:
            ``(tensors, mapped, unknown)``: our tensors, official key -> our key(s), and the official keys
            that no rule matches (for the caller to name in its own error).
        Raises:
            ValueError: naming a packed tensor whose first dimension does not split into its parts.
        """
        out: dict[str, torch.Tensor] = {}
        mapped: dict[str, list[str]] = {}
        unknown = []
        for key, tensor in state_dict.items():
            found = self._match_official(key[len(prefix) :])
            if found is None:
                unknown.append(key)
                continue
            rule, fields = found
            names = [name.format(**fields) for name in rule.ours]
            value = tensor.detach().to(torch.float32)
            if len(names) > 1:
                if value.ndim == 0 or value.shape[0] % len(names):
                    raise ValueError(
                        f"{key}: packed projection of shape {tuple(value.shape)} does not split into "
                        f"{len(names)} equal parts along dim 0 ({', '.join(names)})."
                    )
                for name, part in zip(names, value.chunk(len(names), dim=0), strict=True):
                    out[name] = part.clone().contiguous()
            else:
                out[names[0]] = value.t().contiguous() if rule.transpose else value.clone()
            mapped[key] = names
        return out, mapped, unknown

    def to_official(
        self, state_dict: dict[str, torch.Tensor], prefix: str = ""
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Inverse of `to_ours`: our tensors -> official names with ``prefix`` in front (float32 copies).

        Returns:
            ``(tensors, unknown)``: the official tensors and our keys that no rule matches.
        Raises:
            ValueError: naming the missing parts of a packed tensor (e.g. a ``k_proj`` without its ``q_proj``).
        """
        out: dict[str, torch.Tensor] = {}
        packed: dict[str, tuple[Rename, dict[str, str], dict[int, torch.Tensor]]] = {}
        unknown = []
        for key, tensor in state_dict.items():
            found = self._match_ours(key)
            if found is None:
                unknown.append(key)
                continue
            rule, part, fields = found
            name = prefix + rule.official.format(**fields)
            value = tensor.detach().to(torch.float32)
            if len(rule.ours) > 1:
                packed.setdefault(name, (rule, fields, {}))[2][part] = value
            else:
                out[name] = value.t().contiguous() if rule.transpose else value.clone()
        missing = [
            rule.ours[part].format(**fields)
            for rule, fields, parts in packed.values()
            for part in range(len(rule.ours))
            if part not in parts
        ]
        raise_for_keys("Incomplete packed projections; missing", missing)
        for name, (rule, _, parts) in packed.items():
            out[name] = torch.cat([parts[part] for part in range(len(rule.ours))], dim=0)
        return out, unknown

    def block_counts(self, keys: Iterable[str], prefix: str = "") -> dict[str, int]:
        """Block stem (`Rename.block_stem`) -> 1 + the largest block index among the official ``keys``."""
        counts: dict[str, int] = {}
        for key in keys:
            found = self._match_official(key[len(prefix) :]) if key.startswith(prefix) else None
            if found is not None and found[0].block_stem is not None:
                stem, index = found[0].block_stem, int(found[1]["i"])
                counts[stem] = max(counts.get(stem, 0), index + 1)
        return counts

    def official_keys(self, block_counts: dict[str, int], prefix: str = "") -> list[str]:
        """Every official key of a complete checkpoint with these block counts: each rule without ``{i}``
        once, each rule with ``{i}`` once per block of its stem."""
        keys = []
        for rule in self.rules:
            if rule.block_stem is None:
                keys += [prefix + name for name in _official_names(rule, None)]
            else:
                for index in range(block_counts.get(rule.block_stem, 0)):
                    keys += [prefix + name for name in _official_names(rule, index)]
        return keys

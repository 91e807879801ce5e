"""What a conversion did with every key, and the one way it names the keys it refuses."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ConversionReport:
    """What a conversion did with every key.

    Attributes:
        mapped: official key -> the key(s) of ours it became.
        ignored: official key -> why it was dropped (constant buffer, archive metadata, the official forward's
            cache); not counted among the tensors read.
        computed: keys of ours that no checkpoint holds and are computed after loading.
        prefix: the prefix found in front of the CLIP keys (``"encoder."`` or ``""``).
        source_dtypes: dtype name -> number of official tensors stored in it: those of ``mapped`` and
            ``replaced``, which the summary counts.
        replaced: official keys read but not used: a given CLIP model (``clip_source``) holds their weights.
        clip_keys: our keys filled from the given CLIP model instead of the checkpoint; none without one.
        clip_source: how the summary names the given CLIP model.
        preset: the preset the model was converted with (its class names and method constants).
    """

    mapped: dict[str, list[str]] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)
    prefix: str = ""
    source_dtypes: dict[str, int] = field(default_factory=dict)
    replaced: list[str] = field(default_factory=list)
    clip_keys: list[str] = field(default_factory=list)
    clip_source: str = "the given CLIP model"
    preset: str | None = None

    def merge(self, other: ConversionReport) -> ConversionReport:
        """Add ``other``'s keys and dtype counts to this report (in place) and return it."""
        self.mapped.update(other.mapped)
        self.ignored.update(other.ignored)
        self.computed = sorted(set(self.computed) | set(other.computed))
        self.replaced += other.replaced
        self.clip_keys += other.clip_keys
        for k, v in other.source_dtypes.items():
            self.source_dtypes[k] = self.source_dtypes.get(k, 0) + v
        return self

    def summary(self) -> str:
        """One paragraph for logs and model cards: the tensors read and written, and one line for a given CLIP
        model (not one entry per tensor it replaced)."""
        n_in = len(self.mapped) + len(self.replaced)
        n_out = sum(len(v) for v in self.mapped.values()) + len(self.clip_keys)
        dtypes = ", ".join(f"{n} {d}" for d, n in sorted(self.source_dtypes.items()))
        lines = [f"{n_in} official tensors ({dtypes}) -> {n_out} tensors (float32)."]
        if self.clip_keys:
            instead = (
                f", instead of the checkpoint's {len(self.replaced)} CLIP tensors ({self.prefix}*; read, not used)"
                if self.replaced
                else ""
            )
            lines.append(f"CLIP: {len(self.clip_keys)} tensors from {self.clip_source}{instead}.")
        if self.ignored:
            lines.append("Ignored: " + "; ".join(f"{k} ({why})" for k, why in self.ignored.items()) + ".")
        if self.computed:
            lines.append("Computed after loading: " + ", ".join(self.computed) + ".")
        return " ".join(lines)


def raise_for_keys(what: str, keys: list[str], hint: str = "") -> None:
    """Raise one ``ValueError`` naming every key of ``keys`` (sorted) after ``what``; nothing if empty."""
    if keys:
        raise ValueError(f"{what} ({len(keys)}): {', '.join(sorted(keys))}.{(' ' + hint) if hint else ''}")


def count_dtypes(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """dtype name (``"float16"``) -> number of tensors of ``state_dict`` stored in it."""
    counts: dict[str, int] = {}
    for t in state_dict.values():
        name = str(t.dtype).replace("torch.", "")
        counts[name] = counts.get(name, 0) + 1
    return counts

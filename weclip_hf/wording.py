"""Wording of messages: a count with its noun in the number it takes (`counted`), the first entries of a list and
how many more (`some_of`), the names in a folder (`folder_contents`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, plural unless the count is 1: ``counted(1, "input")`` is "1 input",
    ``counted(3, "input")`` "3 inputs" (``plural``: another plural than ``noun`` + s, as ``counted(2, "class",
    "classes")``)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def some_of(entries: list[str], most: int = 5, separator: str = ", ") -> str:
    """The first ``most`` of ``entries`` joined by ``separator``, and how many more (what messages list)."""
    more = f"{separator}and {len(entries) - most} more" if len(entries) > most else ""
    return separator.join(entries[:most]) + more


def folder_contents(folder: Path, most: int = 10, only: Callable[[Path], bool] | None = None) -> str:
    """The names in ``folder`` (those ``only`` takes, when given), folders with a trailing ``/``: the first ``most``
    and how many more, sorted with code (``.py``) and hidden files last (a saved model's copies of its code say
    little)."""
    names = sorted(
        (p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if only is None or only(p)),
        key=lambda name: (name.endswith(".py") or name.startswith("."), name),
    )
    return some_of(names, most)

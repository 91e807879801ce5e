"""Wording of messages: a count with its noun in the number it takes."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, plural unless the count is 1: ``counted(1, "input")`` is "1 input",
    ``counted(3, "input")`` "3 inputs" (``plural``: another plural than ``noun`` + s, as ``counted(2, "class",
    "classes")``)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"

"""argparse types that refuse a bad value at parse time, naming what was expected: counts (`at_least_one`,
`non_negative`), a positive number (`positive_float`), a fraction (`fraction`)."""

from __future__ import annotations

import argparse
import math


def _integer(text: str) -> int:
    """``text`` as an int, with an argparse error saying a whole number was expected."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def at_least_one(text: str) -> int:
    """argparse type of a count that must be >= 1 (0 would silently mean "no limit" or "nothing")."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative(text: str) -> int:
    """argparse type of a count that may be 0 (e.g. "never") but not negative."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type of a finite float that must be > 0 (a learning rate, a scale)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type of a fraction strictly between 0 and 1 (--train_val_split)."""
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1 (e.g. 0.15), got {text}")
    return value

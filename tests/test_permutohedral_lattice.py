"""Tests of `weclip_hf.permutohedral_lattice` on its own (the filtering it approximates, and the CRF built on it,
are tested in `tests/test_crf.py`)."""

from __future__ import annotations

import numpy as np
import torch

from weclip_hf.permutohedral_lattice import _sort_by


def test_sort_by_orders_keys_too_wide_for_one_int64_as_one_key():
    """`_sort_by` is a stable lexicographic order whether the columns fit one int64 key or not (a lattice of
    many large images: one sort per column, last column first)."""
    generator = torch.Generator().manual_seed(0)
    columns = [torch.randint(0, 3, (200,), generator=generator) for _ in range(3)]  # many equal rows
    expected = torch.from_numpy(np.lexsort([column.numpy() for column in columns[::-1]], axis=0))
    torch.testing.assert_close(_sort_by(columns, [3, 3, 3]), expected, rtol=0, atol=0)  # one key
    torch.testing.assert_close(_sort_by(columns, [2**40, 2**20, 2**10]), expected, rtol=0, atol=0)

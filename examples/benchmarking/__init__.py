"""The pieces of `examples/benchmark.py`, one concept a module: `instruments` (timing, memory, FLOPs, host syncs,
page faults, operator profiles), `workloads` (the model, its optimizer, synthetic inputs, the step and the CLIP
forward as functions of nothing), `breakdown` (the step's stages timed one by one), `par_measurements` (PAR's
compiled forms and Triton kernels against eager), `reference_comparison` (the batched pseudo labels against the
per-image/per-class reference) and `report` (the tables).

The tiny test configs (`tests/tiny_configs.py`, which needs neither pytest nor hypothesis) and the reference
(`tests/reference_weclip.py`) live in tests/, which goes on sys.path here.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

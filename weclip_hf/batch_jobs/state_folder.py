"""The hidden folder of a job's state in its output folder (``.state``): the run's settings (`run_settings`),
the unfinished mark (`unfinished_folders`), the skipped inputs of each process (`skipped_inputs`); the scripts keep
their inputs' records there too.
"""

from __future__ import annotations

STATE_DIR = ".state"  # hidden: `datasets` and globs skip it

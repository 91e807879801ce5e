"""What examples/segment.py writes in --output_dir: its folders, its report, the suffixes of an input's files."""

from __future__ import annotations

from weclip_hf.batch_jobs import STATE_DIR

IMAGE_FOLDERS = ("labels", "overlays")  # the images this script writes in --output_dir
OUTPUT_FOLDERS = (*IMAGE_FOLDERS, STATE_DIR)  # all it writes there, with class_fractions.json
REPORT = "class_fractions.json"
OUTPUT_SUFFIXES = (".png", ".json")  # of an input's files: its label map and overlay, its record

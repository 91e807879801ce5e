"""The concepts of examples/segment.py, a module each, in the order the script runs them: `arguments` (the command
line), `output_layout` (what it writes in --output_dir), `image_files` (the files of --images, without earlier
runs' outputs), `naming` (their output names), `inputs` (the inputs as read: files or a dataset split, their
records), `starting_over` (--overwrite_output_dir over a run with other settings), `segmentation` (the model, its
label maps and overlays) and `report` (class_fractions.json, the exit status). The script imports them from its own
folder, which Python puts first on sys.path (as train.py its `training`); the weclip_hf package, installed without
examples/, does not need them.
"""

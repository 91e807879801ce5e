"""Datasets for WeCLIP: a dataset's columns, image-level labels and mask checks, decoding, training transforms, where
the splits come from (sources: Hub, saved or toy; folders: local and folder-based datasets), a split's labelled
training and evaluation sets (labelled_sets), the PyTorch datasets of their batches (batches) and the procedural toy
world."""

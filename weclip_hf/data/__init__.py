"""Datasets for WeCLIP: a dataset's columns, image-level labels and mask checks, decoding, training transforms,
loading and the procedural toy world."""

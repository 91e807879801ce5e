"""Datasets for WeCLIP: Hub dataset adapters, training transforms and the procedural toy world."""

"""Data stage: image sources, the built-in pool, training batches and the one Preprocess."""

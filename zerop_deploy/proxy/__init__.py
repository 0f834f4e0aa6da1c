"""Proxy-data stage: BN statistics, distances to the stored ones, ranking, quantize's selection."""

"""Synthesis stage: images optimised to match the BN statistics, and quantize's use of them."""

"""Quantization engine: pure primitives, quantized layers, calibration and the fine-tuning loop."""

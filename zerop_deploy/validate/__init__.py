"""Validation stage: onnxruntime runs of exported files, comparisons, the quantize report."""

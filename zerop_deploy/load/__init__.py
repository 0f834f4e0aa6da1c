"""Load stage: read and check an ONNX file, convert it to PyTorch, check parity, describe it."""

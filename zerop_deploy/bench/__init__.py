"""Bench stage: latency tables of fp32, QDQ, MatMulNBits and the native int4 kernels."""

"""Acceleration: kernels, quantization formats, speculative decoding."""

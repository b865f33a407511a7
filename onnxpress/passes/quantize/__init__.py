"""Quantization passes: Q/DQ placement for static, dynamic and weight-only int8."""

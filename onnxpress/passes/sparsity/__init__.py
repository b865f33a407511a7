"""Sparsity passes: zero or remove weights, then (optionally) recover accuracy.

- `magnitude`: unstructured magnitude pruning (``prune-magnitude``).
- `semi_structured`: 2:4 sparsity along the reduction axis for TensorRT's sparse tensor cores
  (``sparsify-2to4``) and `check_2to4`, its verifier.
- `weights`: the constant weights of Conv / Gemm / MatMul and their reduction axes, shared by
  the weight passes (the low-rank pass, `onnxpress.passes.lowrank`, included).
"""

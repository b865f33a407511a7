"""Running models: onnxruntime sessions, data sources, benchmarks and comparisons."""

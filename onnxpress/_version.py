"""The onnxpress version, recorded in the metadata of every model it writes."""

__version__ = "0.1.0"

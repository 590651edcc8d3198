"""quantcli: FP32 ONNX models to fast, accurate INT8 / FP16 / BF16 models for ONNX Runtime on CPU."""

__version__ = "0.1.0"

"""export stage: ONNX and TensorRT encoders, gallery files, Triton configuration (see docs/architecture.md)."""

"""inferd: one model server for PyTorch, TensorFlow and ONNX models."""

from inferd.errors import ErrorCode, InferdError
from inferd.types import InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec

__version__ = "0.1.0"

__all__ = [
    "ErrorCode",
    "InferRequest",
    "InferResponse",
    "InferdError",
    "ModelMetadata",
    "Tensor",
    "TensorSpec",
    "__version__",
]

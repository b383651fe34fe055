"""Built-in adapters, one file per op family (affine, activations, pooling, wiring)."""

from .base import Adapter, Converted, MultiOutput, Unsupported, call_first, call_method, op_name

__all__ = ["Adapter", "Converted", "MultiOutput", "Unsupported", "call_first", "call_method",
           "op_name"]

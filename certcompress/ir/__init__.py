"""The typed ReLU-DAG intermediate representation."""

from .graph import ForwardInterpreter, Graph, GraphInterpreter, IRNode
from .ops import (
    ActQuantOp,
    AffineOp,
    AffineParams,
    CatOp,
    ChannelAffineOp,
    ClampOp,
    ConvOp,
    FixedLinearOp,
    IndexOp,
    IROp,
    LeakyReLUOp,
    LinearCombinationOp,
    LinearOp,
    MaxPoolOp,
    NodeKind,
    ReLUOp,
)
from .passes import fold_batchnorm

__all__ = ["ActQuantOp", "AffineOp", "AffineParams", "CatOp", "ChannelAffineOp", "ClampOp", "ConvOp",
           "FixedLinearOp", "ForwardInterpreter", "Graph", "GraphInterpreter", "IRNode",
           "IROp", "IndexOp", "LeakyReLUOp", "LinearCombinationOp", "LinearOp", "MaxPoolOp",
           "NodeKind", "ReLUOp", "fold_batchnorm"]

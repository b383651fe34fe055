"""The traced ReLU-DAG: a typed, frozen graph of IR ops with float64 parameters."""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Generic, TypeVar

import torch
from torch import Tensor

from ..errors import CertcompressError, GraphMismatchError
from .ops import AffineOp, AffineParams, IROp, NodeKind

__all__ = ["IRNode", "Graph", "GraphInterpreter"]


@dataclass(frozen=True)
class IRNode:
    """One node of the graph.

    ``name`` is unique (the torch.fx node name it came from); ``inputs`` name earlier
    nodes; ``shape`` is the output shape for the traced input shape; ``source`` says
    where it came from (module path and type, or function), for messages; ``module``
    and ``param_names`` name the model parameters that define a parametric node
    (after BatchNorm folding, those of both modules).
    """

    name: str
    op: IROp | None
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    source: str
    module: str | None = None
    param_names: tuple[str, ...] = ()

    @property
    def kind(self) -> NodeKind:
        return NodeKind.INPUT if self.op is None else self.op.kind


@dataclass(frozen=True)
class Graph:
    """A traced network in ReLU-DAG form (docs/path-metrics.md, section 1).

    ``nodes`` are in topological order and ``nodes[0]`` is the single input; the
    network's output is the concatenation, per batch element, of the flattened
    ``outputs``. ``params`` maps each parametric node to its float64 weight and bias
    (BatchNorm already folded; a traced float32 model's weights are held in float32 and
    widened where read, the same values: :class:`~.ops.AffineParams`). The path set depends on ``input_shape``, so every bound
    computed on a graph is about that shape.
    """

    nodes: tuple[IRNode, ...]
    outputs: tuple[str, ...]
    params: Mapping[str, AffineParams]
    input_shape: tuple[int, ...]
    model_name: str = "model"
    capture: str = "torch.fx"
    notes: tuple[str, ...] = ()
    _index: Mapping[str, IRNode] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "_index", MappingProxyType({n.name: n for n in self.nodes}))

    # ------------------------------------------------------------------ access
    @property
    def working_dtype(self) -> str:
        """The dtype of the parameters every pass on this graph computes in ("float64"
        unless a graph was built with others; the first parameter's, as certificates
        record it)."""
        for p in self.params.values():
            return str(p.dtype).removeprefix("torch.")
        return "float64"

    @property
    def input(self) -> IRNode:
        return self.nodes[0]

    def node(self, name: str) -> IRNode:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"no node '{name}' in the graph of {self.model_name}") from None

    def __iter__(self) -> Iterator[IRNode]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def affine_nodes(self) -> tuple[IRNode, ...]:
        return tuple(n for n in self.nodes if n.kind is NodeKind.AFFINE)

    @property
    def num_parameters(self) -> int:
        """Parameters of the DAG (weights and biases after BatchNorm folding)."""
        return sum(p.numel() for p in self.params.values())

    @property
    def output_size(self) -> int:
        """Number of output coordinates per batch element."""
        total = 0
        for name in self.outputs:
            shape = self.node(name).shape
            n = 1
            for s in shape[1:]:
                n *= s
            total += n
        return total

    def is_layered(self) -> bool:
        """True when the DAG is a chain (every node has one input and one user)."""
        users: collections.Counter[str] = collections.Counter()
        for n in self.nodes:
            users.update(n.inputs)
            if len(n.inputs) > 1:
                return False
        return len(self.outputs) == 1 and all(users[n.name] <= 1 for n in self.nodes)

    def with_params(self, params: Mapping[str, AffineParams]) -> Graph:
        """The same graph with other parameters (same keys and shapes required)."""
        if set(params) != set(self.params):
            raise GraphMismatchError(
                f"parameter sets differ: {sorted(set(params) ^ set(self.params))[:5]}"
            )
        for k, p in params.items():
            q = self.params[k]
            if p.weight_shape != q.weight_shape or (p.bias is None) != (q.bias is None):
                raise GraphMismatchError(f"parameters of node '{k}' differ in shape")
        return replace(self, params=params)

    def structure(self) -> tuple[tuple[object, ...], ...]:
        """What must agree between two graphs for a path-metric between them."""
        rows = []
        for n in self.nodes:
            p = self.params.get(n.name)
            pshape = None if p is None else (tuple(p.weight_shape), p.bias is not None)
            rows.append((n.name, n.kind.value, None if n.op is None else n.op.describe(),
                         n.inputs, n.shape, pshape))
        return tuple(rows)

    def check_same_structure(self, other: Graph, what: str = "compressed model") -> None:
        """Raise :class:`GraphMismatchError` naming the first differing node."""
        if self.input_shape != other.input_shape:
            raise GraphMismatchError(
                f"input shapes differ: {self.input_shape} vs {other.input_shape}"
            )
        a, b = self.structure(), other.structure()
        for ra, rb in zip(a, b):
            if ra != rb:
                where = f"node '{ra[0]}'" if ra[0] == rb[0] else f"nodes '{ra[0]}'/'{rb[0]}'"
                raise GraphMismatchError(
                    f"the {what} does not have the original's architecture at {where}: the "
                    f"original has {ra[2]} with output shape {ra[4]} and parameter shapes "
                    f"{ra[5]}, the {what} has {rb[2]} with output shape {rb[4]} and parameter "
                    f"shapes {rb[5]}. Certify a zeroed-equivalent model (same shapes) instead "
                    "of a physically smaller one."
                )
        if len(a) != len(b) or self.outputs != other.outputs:
            raise GraphMismatchError(
                f"the {what} has {len(b)} graph nodes, the original {len(a)}"
            )

    # ------------------------------------------------------------------ running
    def run(self, x: Tensor) -> Tensor:
        """Evaluate the graph's real function; returns ``(batch, output_size)``."""
        return ForwardInterpreter(self).run(x)

    def flatten_outputs(self, values: Sequence[Tensor]) -> Tensor:
        return torch.cat([v.reshape(v.shape[0], -1) for v in values], dim=1)

    # ------------------------------------------------------------------ display
    def summary(self) -> str:
        counts = collections.Counter(n.kind.value for n in self.nodes)
        head = (
            f"Graph of {self.model_name}: input {self.input_shape}, "
            f"{len(self.nodes)} nodes ("
            + ", ".join(f"{counts[k.value]} {k.value}" for k in NodeKind if counts[k.value])
            + f"), {self.num_parameters:,} parameters (BatchNorm folded), "
            f"{self.output_size} outputs; captured with {self.capture}"
        )
        rows = [("node", "kind", "op", "output shape", "inputs", "params")]
        for n in self.nodes:
            desc = "input" if n.op is None else n.op.describe()
            if len(desc) > 60:
                desc = desc[:57] + "..."
            p = self.params.get(n.name)
            rows.append((n.name, n.kind.value, desc, "x".join(map(str, n.shape)),
                         ", ".join(n.inputs), f"{p.numel():,}" if p is not None else ""))
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = [head]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


T = TypeVar("T")


class GraphInterpreter(Generic[T]):
    """Runs a pass over a graph in topological order (the torch.fx ``Interpreter`` idea).

    Subclasses implement ``run_node``; ``run`` feeds the input value, frees values after
    their last use, wraps unexpected errors with the failing node, and returns the
    values of the output nodes.
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        last_use: dict[str, int] = {}
        for i, n in enumerate(graph.nodes):
            for inp in n.inputs:
                last_use[inp] = i
        keep = set(graph.outputs)
        self._free_after: dict[int, list[str]] = collections.defaultdict(list)
        for name, i in last_use.items():
            if name not in keep:
                self._free_after[i].append(name)

    def run_node(self, node: IRNode, inputs: list[T]) -> T:
        raise NotImplementedError

    def run_values(self, value: T) -> list[T]:
        env: dict[str, T] = {self.graph.input.name: value}
        for i, node in enumerate(self.graph.nodes[1:], start=1):
            try:
                env[node.name] = self.run_node(node, [env[n] for n in node.inputs])
            except CertcompressError:
                raise
            except Exception as exc:
                raise RuntimeError(
                    f"{type(self).__name__} failed at node '{node.name}' ({node.source}): {exc}"
                ) from exc
            for name in self._free_after.get(i, ()):
                env.pop(name, None)
        return [env[name] for name in self.graph.outputs]


class ForwardInterpreter(GraphInterpreter[Tensor]):
    """The real function of the graph, in the dtype of its input."""

    def run_node(self, node: IRNode, inputs: list[Tensor]) -> Tensor:
        assert node.op is not None
        params = self.graph.params.get(node.name)
        if params is not None:
            params = params.map(lambda t: t.to(inputs[0].dtype))
        return node.op.forward(inputs, params)

    def run(self, x: Tensor) -> Tensor:
        return self.graph.flatten_outputs(self.run_values(x))


def parametric_nodes(graph: Graph) -> list[tuple[IRNode, AffineOp]]:
    """The parametric nodes with their ops, typed."""
    out = []
    for n in graph.nodes:
        if isinstance(n.op, AffineOp):
            out.append((n, n.op))
    return out

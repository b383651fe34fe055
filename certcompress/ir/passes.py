"""Graph-to-graph passes on the IR."""

from __future__ import annotations

import collections
from dataclasses import replace

from .graph import Graph, IRNode
from .ops import AffineOp, AffineParams, ChannelAffineOp, LinearOp

__all__ = ["fold_batchnorm"]


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold every per-channel affine node (eval-mode BatchNorm) into the parametric op
    that feeds it, when that op feeds nothing else and its channels are on dimension 1.

    ``W' = W * a`` per output channel and ``b' = a*b + c``: the bias is one path start
    with value ``|a*b + c|`` (not ``|a*b| + |c|``), as docs/path-metrics.md (section 1) requires. Folding
    changes neither the function nor the sign pattern between an original and a
    compressed model (both fold with the same ``a``), and it can only tighten bounds.
    A BatchNorm that cannot be folded stays a per-channel identity-neuron layer.
    """
    users: collections.Counter[str] = collections.Counter()
    for n in graph.nodes:
        users.update(n.inputs)
    for name in graph.outputs:
        users[name] += 1
    params = dict(graph.params)
    rename: dict[str, str] = {}
    replaced: dict[str, IRNode] = {}
    dropped: set[str] = set()
    for n in graph.nodes:
        if not isinstance(n.op, ChannelAffineOp) or len(n.inputs) != 1:
            continue
        prev_name = rename.get(n.inputs[0], n.inputs[0])
        prev = replaced.get(prev_name) or graph.node(prev_name)
        if not isinstance(prev.op, AffineOp) or users[n.inputs[0]] != 1:
            continue
        if isinstance(prev.op, LinearOp) and len(prev.shape) != 2:
            continue  # Linear acts on the last dim; BatchNorm on dim 1
        p_prev, p_bn = params[prev.name], params[n.name]
        if prev.op.out_channels(p_prev) != p_bn.weight.numel():
            continue
        params[prev.name] = prev.op.fold_channel_affine(p_prev, p_bn.weight, p_bn.bias
                                                        if p_bn.bias is not None
                                                        else p_bn.weight * 0)
        del params[n.name]
        replaced[prev.name] = replace(
            prev, source=f"{prev.source} + {n.source}",
            param_names=prev.param_names + n.param_names)
        rename[n.name] = prev.name
        dropped.add(n.name)
    if not dropped:
        return graph
    nodes = []
    for n in graph.nodes:
        if n.name in dropped:
            continue
        n = replaced.get(n.name, n)
        nodes.append(replace(n, inputs=tuple(rename.get(i, i) for i in n.inputs)))
    outputs = tuple(rename.get(o, o) for o in graph.outputs)
    return replace(graph, nodes=tuple(nodes), outputs=outputs,
                   params={k: v for k, v in params.items() if isinstance(v, AffineParams)})

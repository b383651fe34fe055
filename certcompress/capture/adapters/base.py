"""The adapter contract: how one family of PyTorch ops becomes IR ops.

An adapter is looked up in the :class:`~certcompress.capture.registry.AdapterRegistry`
by module type (along the MRO), by function or aten overload, or by method name. Its
public :meth:`Adapter.convert` is a template method: it calls the protected
:meth:`Adapter._convert` hook, validates what the hook returned, and turns an
unexpected exception into an :class:`Unsupported` verdict that names the node, so no
adapter can return an ill-formed op or crash the trace with an anonymous error.

Writing one (the whole contract)::

    from certcompress.capture import Adapter, Converted, Unsupported
    from certcompress.ir import ReLUOp

    class MyReLUAdapter(Adapter):
        name = "my-relu"
        def _convert(self, node, ctx):
            return Converted(op=ReLUOp(), inputs=(ctx.tensor_arg(node.args[0]),))

    registry.register_module(MyReLU, MyReLUAdapter(), source="my-plugin")

See docs/adding-an-adapter.md and plugins/certcompress-example for a complete plugin.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import fx

from ...errors import CertcompressError, RefusalKind
from ...ir.ops import AffineOp, AffineParams, IROp

if TYPE_CHECKING:
    from ..tracer import ConvertContext

__all__ = ["Adapter", "Converted", "MultiOutput", "Unsupported", "call_first", "call_method"]


class Unsupported(CertcompressError, TypeError):
    """Raised by an adapter hook: this node cannot be expressed as a ReLU-DAG op."""

    def __init__(self, reason: str, kind: RefusalKind = RefusalKind.NO_ADAPTER) -> None:
        self.reason = reason
        self.kind = kind  # OUTSIDE_CLASS when no adapter could express the node
        super().__init__(reason)


@dataclass(frozen=True)
class Converted:
    """What an adapter returns for one node.

    ``inputs`` are the fx nodes whose tensors the op consumes, in order; ``params`` the
    float64 parameters of a parametric op (None otherwise); ``module`` and
    ``param_names`` the model parameters they came from (for messages, masks and
    digests).
    """

    op: IROp
    inputs: tuple[fx.Node, ...]
    params: AffineParams | None = None
    module: str | None = None
    param_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class MultiOutput:
    """A node returning a tuple of tensors (split, chunk, a fused batch-norm op): each
    ``operator.getitem(node, i)`` becomes ``select(i)``."""

    select: Callable[[int], Converted] = field(compare=False)


class Adapter(ABC):
    """Converts one op family. Override ``_convert``; never override ``convert``."""

    name: ClassVar[str] = "adapter"
    #: Subclasses of a registered module type that override ``forward`` and that this
    #: adapter still converts correctly (it reads what their ``forward`` computes). Any
    #: other subclass with its own ``forward`` is traced through instead.
    subclasses: ClassVar[tuple[type, ...]] = ()
    #: True when, for an in-place target this adapter is registered for (``relu_``,
    #: ``add_``, ``operator.iadd``, ``nn.ReLU(inplace=True)``), the op it builds is the
    #: value the in-place op writes. The tracer still refuses an in-place op whose
    #: mutated tensor is read afterwards under another name (docs/architecture.md).
    inplace_safe: ClassVar[bool] = False

    def convert(self, node: fx.Node, ctx: ConvertContext) -> Converted | MultiOutput:
        try:
            result = self._convert(node, ctx)
        except Unsupported:
            raise
        except CertcompressError:
            raise
        except Exception as exc:  # an adapter bug or an unexpected argument form
            raise Unsupported(
                f"adapter '{self.name}' failed: {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(result, MultiOutput):
            return result
        self._validate(result)
        return result

    def _validate(self, result: Converted) -> None:
        if not isinstance(result, Converted) or not isinstance(result.op, IROp):
            raise Unsupported(f"adapter '{self.name}' returned {type(result).__name__}, "
                              "expected Converted(op=IROp, ...)")
        op = result.op
        if isinstance(op, AffineOp):
            p = result.params
            if p is None or p.dtype != torch.float64:
                raise Unsupported(f"adapter '{self.name}' returned a parametric op without "
                                  "float64 parameters")
        elif result.params is not None:
            raise Unsupported(f"adapter '{self.name}' attached parameters to a fixed op")
        if op.arity is not None and len(result.inputs) != op.arity:
            raise Unsupported(f"adapter '{self.name}': op takes {op.arity} input(s), "
                              f"got {len(result.inputs)}")
        if not result.inputs:
            raise Unsupported(f"adapter '{self.name}' returned an op with no tensor input")

    @abstractmethod
    def _convert(self, node: fx.Node, ctx: ConvertContext) -> Converted | MultiOutput:
        """Build the IR op for ``node``; raise :class:`Unsupported` with a reason."""


def _call_first(target: Callable[..., Any], rest: tuple[Any, ...], kwargs: dict[str, Any],
                x: torch.Tensor) -> torch.Tensor:
    return target(x, *rest, **kwargs)


def _call_method(name: str, rest: tuple[Any, ...], kwargs: dict[str, Any],
                 x: torch.Tensor) -> torch.Tensor:
    return getattr(x, name)(*rest, **kwargs)


def call_first(target: Callable[..., Any], rest: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> target(x, *rest, **kwargs)`` as a picklable callable."""
    return functools.partial(_call_first, target, tuple(rest), dict(kwargs))


def call_method(name: str, rest: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> x.name(*rest, **kwargs)`` as a picklable callable."""
    return functools.partial(_call_method, name, tuple(rest), dict(kwargs))


_ALIASES = {"iadd": "add", "radd": "add", "isub": "sub", "subtract": "sub", "imul": "mul",
            "rmul": "mul", "multiply": "mul", "itruediv": "truediv", "div": "truediv",
            "divide": "truediv", "true_divide": "truediv", "negative": "neg"}


def op_name(target: object) -> str:
    """A plain name for a call target: ``operator.iadd``, ``Tensor.add_``, ``'__add__'``
    and ``aten.add.Tensor`` all give ``'add'``."""
    if isinstance(target, str):
        name = target
    elif isinstance(target, torch._ops.OpOverload):
        name = target._overloadpacket.__name__
    else:
        name = getattr(target, "__name__", str(target))
    name = name.strip("_")
    return _ALIASES.get(name, name)

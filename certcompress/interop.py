"""Other toolchains' models, as certcompress certifies them.

* ``torch.nn.utils.prune``: a pruned layer carries ``weight_orig`` and ``weight_mask``
  and a forward pre-hook that computes ``weight = weight_orig * weight_mask``.
  :func:`plain_module` returns a copy with the reparametrization made permanent
  (``prune.remove``): the same function, with plain parameters the tracer reads.
* ``torch.export`` programs: :func:`as_module` gives the ``nn.Module`` that runs one,
  wherever eager evaluation is needed (measurements, attacks).
* torch.ao-quantized models (``quantize_dynamic`` or eager ``convert``): their kernels
  are quantized ops the IR cannot express. :func:`dequantized_copy` rebuilds the float
  modules with the dequantized weights; a certificate on it covers weight rounding
  only (activation quantization of a statically quantized model is not included, and
  the result says so). :func:`plain_module` refuses them with that recipe.
* Torch-Pruning's physically pruned models: :func:`zeroed_equivalent` puts the pruned
  model's weights back into the original architecture, with zeros where channels were
  removed, and checks that both compute the same function.

This module sits below the API: it imports only torch and the base modules."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from .errors import ConfigurationError, UnsupportedModelError

__all__ = ["plain_module", "as_module", "dequantized_copy", "zeroed_equivalent",
           "torch_pruned_parameters", "quantized_modules"]


def torch_pruned_parameters(model: nn.Module) -> list[tuple[str, str]]:
    """``(module path, parameter name)`` of every ``torch.nn.utils.prune``
    reparametrization in ``model``."""
    found: list[tuple[str, str]] = []
    for path, m in model.named_modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                names = ([h._tensor_name for h in hook._pruning_methods]
                         if isinstance(hook, prune.PruningContainer) else [hook._tensor_name])
                found.extend((path, n) for n in dict.fromkeys(names))
    return found


def quantized_modules(model: nn.Module) -> list[tuple[str, str]]:
    """``(module path, type name)`` of every torch.ao quantized module in ``model``."""
    return [(p, type(m).__name__) for p, m in model.named_modules()
            if type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized",
                                              "torch.ao.nn.intrinsic.quantized"))]


_AO_RECIPE = ("certify the float model against cc.dequantized_copy(quantized) (weight "
              "rounding only), or certify the float model before torch.ao's convert() and "
              "quantize it with certcompress (cc.quantize), whose certificate covers the "
              "rounding it applies")


def plain_module(model: Any) -> Any:
    """``model`` as the tracer should see it: unchanged, except that a model with
    ``torch.nn.utils.prune`` reparametrizations becomes a copy with them made permanent
    (the same function). A torch.ao-quantized model is refused with the recipe."""
    if not isinstance(model, nn.Module):
        return model
    q = quantized_modules(model)
    if q:
        shown = ", ".join(f"{p} ({t})" for p, t in q[:4]) + (" ..." if len(q) > 4 else "")
        raise UnsupportedModelError(
            f"the model holds {len(q)} torch.ao quantized module(s): {shown}. Quantized "
            f"kernels are outside the IR; {_AO_RECIPE}")
    pruned = torch_pruned_parameters(model)
    if not pruned:
        return model
    # the cached ``weight`` the pre-hook computed is not a graph leaf and cannot be
    # deep-copied: copy it detached (the hook recomputes it from weight_orig anyway)
    src = dict(model.named_modules())
    memo: dict[int, Any] = {}
    for path, name in pruned:
        t = getattr(src[path], name, None)
        if isinstance(t, Tensor):
            memo[id(t)] = t.detach().clone()
    out = copy.deepcopy(model, memo)
    modules = dict(out.named_modules())
    for path, name in pruned:
        prune.remove(modules[path], name)
    return out


def as_module(model: Any) -> nn.Module:
    """An ``nn.Module`` that computes ``model`` (an ExportedProgram's ``.module()``)."""
    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"expected an nn.Module or ExportedProgram, got "
                                 f"{type(model).__name__}")
    return model


def _float_of(m: Any) -> nn.Module | None:
    """The float module a torch.ao quantized module stands for (None: not one)."""
    name = type(m).__name__
    mod = type(m).__module__
    if not mod.startswith(("torch.ao.nn.", "torch.nn.quantized", "torch.nn.intrinsic")):
        return None
    if name in ("Quantize", "DeQuantize", "QuantStub", "DeQuantStub"):
        return nn.Identity()
    weight_fn = getattr(m, "weight", None)
    if not callable(weight_fn):
        return None
    w = weight_fn().dequantize().to(torch.float32)
    b = m.bias() if callable(getattr(m, "bias", None)) else None
    relu = name.endswith("ReLU2d") or name.endswith("ReLU1d") or name == "LinearReLU"
    layer: nn.Module
    if w.dim() == 2:
        layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    elif w.dim() in (3, 4, 5):
        cls = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[w.dim()]
        layer = cls(w.shape[1] * m.groups, w.shape[0], w.shape[2:], stride=m.stride,
                    padding=m.padding, dilation=m.dilation, groups=m.groups,
                    bias=b is not None, padding_mode=getattr(m, "padding_mode", "zeros"))
    else:
        return None
    with torch.no_grad():
        layer.weight.copy_(w)
        if b is not None:
            layer.bias.copy_(b.detach().to(torch.float32))  # type: ignore[union-attr]
    layer.eval()
    return nn.Sequential(layer, nn.ReLU()) if relu else layer


def dequantized_copy(model: nn.Module) -> nn.Module:
    """A float copy of a torch.ao-quantized ``model``: every quantized Linear/Conv (and
    fused Linear/Conv+ReLU) becomes its float module with the dequantized weights, and
    quantize/dequantize stubs become identities. Raises
    :class:`~certcompress.errors.UnsupportedModelError` naming any quantized module it
    cannot rebuild. The copy computes the model with its weight rounding and without
    activation quantization (for ``quantize_dynamic`` models that is exact up to the
    dynamic activation rounding)."""
    out = copy.deepcopy(model).eval()
    failed = []
    replaced: list[str] = []
    for path, m in list(out.named_modules()):
        if not path or any(path.startswith(r + ".") for r in replaced):
            continue
        if not type(m).__module__.startswith(("torch.ao.nn.", "torch.nn.quantized")):
            continue
        f = _float_of(m)
        if f is None:
            if quantized_modules(m) and not list(m.children()):
                failed.append(f"{path} ({type(m).__name__})")
            continue
        parent_path, _, attr = path.rpartition(".")
        parent = out.get_submodule(parent_path) if parent_path else out
        setattr(parent, attr, f)
        replaced.append(path)
    if failed:
        raise UnsupportedModelError(f"cannot rebuild these quantized modules as float "
                                    f"modules: {', '.join(failed)}")
    return out


# ------------------------------------------------------------------ Torch-Pruning


def _encode(model: nn.Module) -> None:
    """Give every weight entry a value that names its (output, input) channel, every bias
    and BatchNorm entry its channel: after physical pruning the kept indices can be read
    back from the values (exact in float64 up to 2^26 channels)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                w = m.weight
                o = torch.arange(w.shape[0], dtype=torch.float64).reshape(
                    (-1,) + (1,) * (w.dim() - 1))
                i = torch.arange(w.shape[1], dtype=torch.float64).reshape(
                    (1, -1) + (1,) * (w.dim() - 2))
                m.weight.data = (o * 2.0**26 + i).expand_as(w).clone()
                if m.bias is not None:
                    m.bias.data = torch.arange(m.bias.shape[0], dtype=torch.float64)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.data = torch.arange(m.num_features, dtype=torch.float64)


def _kept(encoded: nn.Module) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Per layer path: (kept output channels, kept input channels or None)."""
    out: dict[str, tuple[Tensor, Tensor | None]] = {}
    for path, m in encoded.named_modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            w = m.weight.detach().reshape(m.weight.shape[0], m.weight.shape[1], -1)[..., 0]
            out[path] = ((w[:, 0] / 2.0**26).floor().long(), (w[0] % 2.0**26).long())
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            out[path] = (m.running_mean.detach().long(), None)
    return out


def zeroed_equivalent(original: nn.Module, pruned: nn.Module, history: Sequence[Any],
                      example_input: Tensor, *, atol: float = 1e-5) -> nn.Module:
    """``original``'s architecture with ``pruned``'s weights where Torch-Pruning kept
    channels and zeros where it removed them: the zeroed-equivalent model certcompress
    certifies against ``original``.

    ``history`` is Torch-Pruning's record of what it removed
    (``pruner.pruning_history()`` or ``DependencyGraph.pruning_history()``): it is
    replayed on a copy of ``original`` whose weights encode their channel indices, which
    gives, for every layer, the original indices of the kept channels. The result is
    checked against ``pruned`` on ``example_input`` (float64, ``atol``): a mismatch
    raises :class:`~certcompress.errors.ConfigurationError` (wrong history or models)."""
    try:
        import torch_pruning as tp  # a core dependency, imported when used: it is slow
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise ConfigurationError(f"zeroed_equivalent needs torch-pruning: {exc}") from None
    if not history:
        raise ConfigurationError("history is empty: pass pruner.pruning_history() from the "
                                 "Torch-Pruning run that produced the pruned model")
    shadow = copy.deepcopy(original).double().eval()
    _encode(shadow)
    dg = tp.DependencyGraph().build_dependency(shadow, example_inputs=example_input.double())
    try:
        dg.load_pruning_history([tuple(h) for h in history])
    except Exception as exc:
        raise ConfigurationError(f"the pruning history does not apply to the original "
                                 f"model ({type(exc).__name__}: {exc})") from None
    kept = _kept(shadow)
    out = copy.deepcopy(original).eval()
    try:
        _scatter(out, dict(pruned.named_modules()), kept)
    except RuntimeError as exc:  # shapes that do not match the history
        raise ConfigurationError(f"the pruning history does not apply to the pruned model "
                                 f"({str(exc).splitlines()[0]})") from None
    with torch.no_grad():
        a = out.double()(example_input.double())
        b = copy.deepcopy(pruned).double().eval()(example_input.double())
    out.to(next(original.parameters()).dtype)
    if a.shape != b.shape or not torch.allclose(a, b, atol=atol, rtol=0):
        err = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
        raise ConfigurationError(
            f"the zeroed-equivalent model does not reproduce the pruned model (largest "
            f"difference {err:.3g} on the example input, shapes {tuple(a.shape)} vs "
            f"{tuple(b.shape)}): the history does not belong to these models")
    return out


def _scatter(out: nn.Module, pruned_mods: dict[str, Any],
             kept: dict[str, tuple[Tensor, Tensor | None]]) -> None:
    """Write the pruned model's weights into ``out`` at the kept indices, zeros elsewhere."""
    with torch.no_grad():
        modules: dict[str, Any] = dict(out.named_modules())
        for path, m in modules.items():
            if path not in kept:
                continue
            src = pruned_mods.get(path)
            if src is None or type(src) is not type(m):
                raise ConfigurationError(f"the pruned model has no {type(m).__name__} at "
                                         f"'{path}': pass the model Torch-Pruning pruned")
            ko, ki = kept[path]
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    t = getattr(m, name)
                    if t is None:
                        continue
                    new = torch.zeros_like(t) if name != "running_var" else torch.ones_like(t)
                    new[ko] = getattr(src, name).detach().to(t.dtype)
                    t.copy_(new)
                continue
            assert ki is not None
            w = torch.zeros_like(m.weight)
            idx = ko[:, None], ki[None, :]
            w[idx] = src.weight.detach().to(w.dtype)
            m.weight.copy_(w)
            if m.bias is not None:
                b = torch.zeros_like(m.bias)
                b[ko] = src.bias.detach().to(b.dtype)
                m.bias.copy_(b)

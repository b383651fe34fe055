"""Registry-driven conformance for function and method adapters, aten overloads
included: every function, method and aten overload registered in the default adapter
registry is called inside a tiny model, traced, and checked:

* the captured graph really calls the registered target (so the case exercises it);
* the traced forward equals the eager model in float64;
* the IR's magnitude map is non-negative.

A registered function or method without an entry in CASES fails: a new adapter is
covered by adding a line here. Module adapters are covered in
tests/test_adapters_conformance.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

import certcompress as cc
from certcompress.capture import default_registry
from certcompress.measure import float64_function

aten = torch.ops.aten
Fn = Callable[[Tensor], Tensor]
SIG, IMG, VOL = (1, 2, 6), (1, 2, 4, 4), (1, 1, 2, 4, 4)
W2 = torch.linspace(-1.0, 1.0, 8 * 3).reshape(3, 8)  # a (3, 8) weight for linear
K1 = torch.linspace(-1.0, 1.0, 3 * 2 * 3).reshape(3, 2, 3)
K2 = torch.linspace(-1.0, 1.0, 3 * 2 * 9).reshape(3, 2, 3, 3)
K3 = torch.linspace(-1.0, 1.0, 2 * 8).reshape(2, 1, 2, 2, 2)
T1 = torch.linspace(-1.0, 1.0, 2 * 3 * 3).reshape(2, 3, 3)
T2 = torch.linspace(-1.0, 1.0, 2 * 3 * 9).reshape(2, 3, 3, 3)
T3 = torch.linspace(-1.0, 1.0, 1 * 2 * 8).reshape(1, 2, 2, 2, 2)
BN = (torch.tensor([0.1, -0.2]), torch.tensor([1.5, 0.5]), torch.tensor([0.7, 1.2]),
      torch.tensor([0.3, -0.1]))


def _split_sum(parts: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
    return parts[0] - 2 * parts[1]


class _Consts(nn.Module):
    """Calls ``case(self, x)``; holds the constant weights as buffers (traced as
    attributes, converted with the module)."""

    def __init__(self, case: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.case = case
        for name, t in {"W2": W2, "K1": K1, "K2": K2, "K3": K3, "T1": T1, "T2": T2,
                        "T3": T3}.items():
            self.register_buffer(name, t.clone())
        for i, t in enumerate(BN):
            self.register_buffer(f"bn{i}", t.clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.case(self, x)


# case: (forward using x and the module m, input shape)
Case = tuple[Callable[[nn.Module, Tensor], Tensor], tuple[int, ...]]


def _bn(m: nn.Module) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return m.bn0, m.bn1, m.bn2, m.bn3  # type: ignore[return-value]


CASES: dict[str, list[Case]] = {
    # ------------------------------------------------------------------ operators
    "_operator.add": [(lambda m, x: x + 0.5, IMG), (lambda m, x: x + 2 * x, IMG)],
    "_operator.sub": [(lambda m, x: x - 0.5, IMG)],
    "_operator.mul": [(lambda m, x: x * 3.0, IMG)],
    "_operator.truediv": [(lambda m, x: x / 4.0, IMG)],
    "_operator.neg": [(lambda m, x: -x, IMG)],
    "_operator.getitem": [(lambda m, x: x[:, 1:, ::2], IMG)],
    # ------------------------------------------------------------- torch.* functions
    "torch._C._nn.linear": [(lambda m, x: torch._C._nn.linear(x, m.W2), (1, 8))],
    "torch._C._nn.avg_pool2d": [(lambda m, x: torch._C._nn.avg_pool2d(x, 2), IMG)],
    "torch._C._nn.avg_pool3d": [(lambda m, x: torch._C._nn.avg_pool3d(x, 2), VOL)],
    "torch._C._nn.hardtanh_": [(lambda m, x: torch._C._nn.hardtanh_(x * 1.0, -0.5, 0.5), IMG)],
    "torch._C._nn.leaky_relu_": [(lambda m, x: torch._C._nn.leaky_relu_(x * 1.0, 0.1), IMG)],
    "torch._VariableFunctionsClass.adaptive_avg_pool1d": [
        (lambda m, x: torch.adaptive_avg_pool1d(x, 3), SIG)],
    "torch._VariableFunctionsClass.add": [(lambda m, x: torch.add(x, x, alpha=2.0), IMG)],
    "torch._VariableFunctionsClass.avg_pool1d": [(lambda m, x: torch.avg_pool1d(x, 2), SIG)],
    "torch._VariableFunctionsClass.cat": [(lambda m, x: torch.cat([x, -x], 1), IMG)],
    "torch._VariableFunctionsClass.chunk": [(lambda m, x: _split_sum(torch.chunk(x, 2, 1)), IMG)],
    "torch._VariableFunctionsClass.clamp": [(lambda m, x: torch.clamp(x, -0.5, 0.5), IMG)],
    "torch._VariableFunctionsClass.clip": [(lambda m, x: torch.clip(x, 0.0, 0.5), IMG)],
    "torch._VariableFunctionsClass.clone": [(lambda m, x: torch.clone(x), IMG)],
    "torch._VariableFunctionsClass.concat": [(lambda m, x: torch.concat([x, x], 2), IMG)],
    "torch._VariableFunctionsClass.concatenate": [
        (lambda m, x: torch.concatenate([x, x], 3), IMG)],
    "torch._VariableFunctionsClass.conv1d": [(lambda m, x: torch.conv1d(x, m.K1), SIG)],
    "torch._VariableFunctionsClass.conv2d": [(lambda m, x: torch.conv2d(x, m.K2, padding=1), IMG)],
    "torch._VariableFunctionsClass.conv3d": [(lambda m, x: torch.conv3d(x, m.K3), VOL)],
    "torch._VariableFunctionsClass.conv_transpose1d": [
        (lambda m, x: torch.conv_transpose1d(x, m.T1), SIG)],
    "torch._VariableFunctionsClass.conv_transpose2d": [
        (lambda m, x: torch.conv_transpose2d(x, m.T2, stride=2), IMG)],
    "torch._VariableFunctionsClass.conv_transpose3d": [
        (lambda m, x: torch.conv_transpose3d(x, m.T3), VOL)],
    "torch._VariableFunctionsClass.div": [(lambda m, x: torch.div(x, 2.0), IMG)],
    "torch._VariableFunctionsClass.divide": [(lambda m, x: torch.divide(x, -2.0), IMG)],
    "torch._VariableFunctionsClass.flatten": [(lambda m, x: torch.flatten(x, 1), IMG)],
    "torch._VariableFunctionsClass.max_pool1d": [(lambda m, x: torch.max_pool1d(x, 2), SIG)],
    "torch._VariableFunctionsClass.max_pool2d": [(lambda m, x: torch.max_pool2d(x, 2), IMG)],
    "torch._VariableFunctionsClass.max_pool3d": [(lambda m, x: torch.max_pool3d(x, 2), VOL)],
    "torch._VariableFunctionsClass.mean": [(lambda m, x: torch.mean(x, (2, 3)), IMG)],
    "torch._VariableFunctionsClass.movedim": [(lambda m, x: torch.movedim(x, 1, 3), IMG)],
    "torch._VariableFunctionsClass.mul": [(lambda m, x: torch.mul(x, 1.5), IMG)],
    "torch._VariableFunctionsClass.multiply": [(lambda m, x: torch.multiply(x, -1.5), IMG)],
    "torch._VariableFunctionsClass.narrow": [(lambda m, x: torch.narrow(x, 2, 1, 2), IMG)],
    "torch._VariableFunctionsClass.neg": [(lambda m, x: torch.neg(x), IMG)],
    "torch._VariableFunctionsClass.negative": [(lambda m, x: torch.negative(x), IMG)],
    "torch._VariableFunctionsClass.permute": [(lambda m, x: torch.permute(x, (0, 2, 3, 1)), IMG)],
    "torch._VariableFunctionsClass.relu": [(lambda m, x: torch.relu(x), IMG)],
    "torch._VariableFunctionsClass.relu_": [(lambda m, x: torch.relu_(x * 1.0), IMG)],
    "torch._VariableFunctionsClass.reshape": [(lambda m, x: torch.reshape(x, (1, 8, 4)), IMG)],
    "torch._VariableFunctionsClass.rsub": [(lambda m, x: torch.rsub(x, 1.0), IMG)],
    "torch._VariableFunctionsClass.select": [(lambda m, x: torch.select(x, 1, 1), IMG)],
    "torch._VariableFunctionsClass.squeeze": [(lambda m, x: torch.squeeze(x, 2), (1, 3, 1, 2))],
    "torch._VariableFunctionsClass.sub": [(lambda m, x: torch.sub(x, x, alpha=0.5), IMG)],
    "torch._VariableFunctionsClass.subtract": [(lambda m, x: torch.subtract(x, 0.25), IMG)],
    "torch._VariableFunctionsClass.sum": [(lambda m, x: torch.sum(x, 1), IMG)],
    "torch._VariableFunctionsClass.swapaxes": [(lambda m, x: torch.swapaxes(x, 1, 2), IMG)],
    "torch._VariableFunctionsClass.t": [(lambda m, x: torch.t(x), (1, 5))],
    "torch._VariableFunctionsClass.transpose": [(lambda m, x: torch.transpose(x, 2, 3), IMG)],
    "torch._VariableFunctionsClass.true_divide": [(lambda m, x: torch.true_divide(x, 8.0), IMG)],
    "torch._VariableFunctionsClass.unbind": [(lambda m, x: _split_sum(torch.unbind(x, 1)), IMG)],
    "torch._VariableFunctionsClass.unsqueeze": [(lambda m, x: torch.unsqueeze(x, 1), IMG)],
    "torch.functional.split": [(lambda m, x: _split_sum(torch.split(x, 1, 1)), IMG)],
    # ------------------------------------------------------- torch.nn.functional
    "torch.nn.functional.adaptive_avg_pool2d": [(lambda m, x: F.adaptive_avg_pool2d(x, 3), IMG)],
    "torch.nn.functional.adaptive_avg_pool3d": [(lambda m, x: F.adaptive_avg_pool3d(x, 1), VOL)],
    "torch.nn.functional.alpha_dropout": [(lambda m, x: F.alpha_dropout(x, 0.5), IMG)],
    "torch.nn.functional.batch_norm": [
        (lambda m, x: F.batch_norm(x, *_bn(m)[:2], *_bn(m)[2:]), IMG)],
    "torch.nn.functional.boolean_dispatch.<locals>.fn": [
        (lambda m, x: F.max_pool1d(x, 2), SIG), (lambda m, x: F.max_pool2d(x, 2), IMG),
        (lambda m, x: F.max_pool3d(x, 2), VOL)],
    "torch.nn.functional.dropout": [(lambda m, x: F.dropout(x, 0.5, training=False), IMG)],
    "torch.nn.functional.dropout1d": [(lambda m, x: F.dropout1d(x, 0.5, training=False), SIG)],
    "torch.nn.functional.dropout2d": [(lambda m, x: F.dropout2d(x, 0.5, training=False), IMG)],
    "torch.nn.functional.dropout3d": [(lambda m, x: F.dropout3d(x, 0.5, training=False), VOL)],
    "torch.nn.functional.feature_alpha_dropout": [
        (lambda m, x: F.feature_alpha_dropout(x, 0.5, training=False), IMG)],
    "torch.nn.functional.hardtanh": [(lambda m, x: F.hardtanh(x, -0.3, 0.8), IMG)],
    "torch.nn.functional.interpolate": [
        (lambda m, x: F.interpolate(x, scale_factor=2, mode="nearest"), IMG),
        (lambda m, x: F.interpolate(x, size=(5, 3), mode="bilinear"), IMG)],
    "torch.nn.functional.leaky_relu": [(lambda m, x: F.leaky_relu(x, 0.2), IMG)],
    "torch.nn.functional.pad": [(lambda m, x: F.pad(x, (1, 0, 2, 1)), IMG),
                                (lambda m, x: F.pad(x, (1, 1), mode="reflect"), SIG)],
    "torch.nn.functional.relu": [(lambda m, x: F.relu(x), IMG)],
    "torch.nn.functional.relu6": [(lambda m, x: F.relu6(x * 8.0), IMG)],
    # ------------------------------------------------------------------- methods
    "Tensor.add": [(lambda m, x: x.add(x, alpha=-0.5), IMG)],
    "Tensor.add_": [(lambda m, x: (x * 1.0).add_(0.5), IMG)],
    "Tensor.chunk": [(lambda m, x: _split_sum(x.chunk(2, 3)), IMG)],
    "Tensor.clamp": [(lambda m, x: x.clamp(min=0.1), IMG)],
    "Tensor.clamp_": [(lambda m, x: (x * 1.0).clamp_(-0.2, 0.3), IMG)],
    "Tensor.clip": [(lambda m, x: x.clip(max=0.4), IMG)],
    "Tensor.clip_": [(lambda m, x: (x * 1.0).clip_(-0.4, 0.4), IMG)],
    "Tensor.clone": [(lambda m, x: x.clone(), IMG)],
    "Tensor.contiguous": [(lambda m, x: x.transpose(2, 3).contiguous(), IMG)],
    "Tensor.detach": [(lambda m, x: x.detach(), IMG)],
    "Tensor.div": [(lambda m, x: x.div(3.0), IMG)],
    "Tensor.div_": [(lambda m, x: (x * 1.0).div_(3.0), IMG)],
    "Tensor.expand": [(lambda m, x: x.expand(1, 2, 4, 4), (1, 2, 1, 4))],
    "Tensor.expand_as": [(lambda m, x: x[:, :, :1].expand_as(x), IMG)],
    "Tensor.flatten": [(lambda m, x: x.flatten(2), IMG)],
    "Tensor.mean": [(lambda m, x: x.mean(1, keepdim=True), IMG)],
    "Tensor.movedim": [(lambda m, x: x.movedim(3, 1), IMG)],
    "Tensor.mul": [(lambda m, x: x.mul(-2.0), IMG)],
    "Tensor.mul_": [(lambda m, x: (x * 1.0).mul_(-2.0), IMG)],
    "Tensor.narrow": [(lambda m, x: x.narrow(3, 0, 3), IMG)],
    "Tensor.neg": [(lambda m, x: x.neg(), IMG)],
    "Tensor.permute": [(lambda m, x: x.permute(0, 3, 1, 2), IMG)],
    "Tensor.relu": [(lambda m, x: x.relu(), IMG)],
    "Tensor.relu_": [(lambda m, x: (x * 1.0).relu_(), IMG)],
    "Tensor.repeat": [(lambda m, x: x.repeat(1, 2, 1, 1), IMG)],
    "Tensor.reshape": [(lambda m, x: x.reshape(1, -1), IMG)],
    "Tensor.reshape_as": [(lambda m, x: x.reshape(1, 32).reshape_as(x), IMG)],
    "Tensor.select": [(lambda m, x: x.select(2, 0), IMG)],
    "Tensor.split": [(lambda m, x: _split_sum(x.split(2, 2)), IMG)],
    "Tensor.squeeze": [(lambda m, x: x.squeeze(2), (1, 3, 1, 2))],
    "Tensor.sub": [(lambda m, x: x.sub(0.3), IMG)],
    "Tensor.sub_": [(lambda m, x: (x * 1.0).sub_(0.3), IMG)],
    "Tensor.sum": [(lambda m, x: x.sum((2, 3)), IMG)],
    "Tensor.t": [(lambda m, x: x.t(), (1, 5))],
    "Tensor.transpose": [(lambda m, x: x.transpose(1, 3), IMG)],
    "Tensor.unbind": [(lambda m, x: _split_sum(x.unbind(2)), IMG)],
    "Tensor.unsqueeze": [(lambda m, x: x.unsqueeze(0), IMG)],
    "Tensor.view": [(lambda m, x: x.view(1, 2, 16), IMG)],
    "Tensor.view_as": [(lambda m, x: x.reshape(1, 32).view_as(x), IMG)],
}

# aten overloads, called directly (what a torch.export capture contains)
ATEN: dict[str, list[Case]] = {
    "aten::_adaptive_avg_pool2d": [(lambda m, x: aten._adaptive_avg_pool2d.default(x, [2, 2]), IMG)],
    "aten::_native_batch_norm_legit_no_training": [
        (lambda m, x: aten._native_batch_norm_legit_no_training.default(
            x, _bn(m)[2], _bn(m)[3], _bn(m)[0], _bn(m)[1], 0.1, 1e-5)[0], IMG)],
    "aten::_unsafe_view": [(lambda m, x: aten._unsafe_view.default(x, [1, 32]), IMG)],
    "aten::adaptive_avg_pool1d": [(lambda m, x: aten.adaptive_avg_pool1d.default(x, [3]), SIG)],
    "aten::adaptive_avg_pool2d": [(lambda m, x: aten.adaptive_avg_pool2d.default(x, [1, 1]), IMG)],
    "aten::adaptive_avg_pool3d": [(lambda m, x: aten.adaptive_avg_pool3d.default(x, [1, 2, 2]), VOL)],
    "aten::add.Scalar": [(lambda m, x: aten.add.Scalar(x, 0.5), IMG)],
    "aten::add.Tensor": [(lambda m, x: aten.add.Tensor(x, x, alpha=2), IMG)],
    "aten::add_.Tensor": [(lambda m, x: aten.add_.Tensor(x * 1.0, x), IMG)],
    "aten::alias": [(lambda m, x: aten.alias.default(x), IMG)],
    "aten::alpha_dropout": [(lambda m, x: aten.alpha_dropout.default(x, 0.5, False), IMG)],
    "aten::avg_pool1d": [(lambda m, x: aten.avg_pool1d.default(x, [2]), SIG)],
    "aten::avg_pool2d": [(lambda m, x: aten.avg_pool2d.default(x, [2, 2]), IMG)],
    "aten::avg_pool3d": [(lambda m, x: aten.avg_pool3d.default(x, [2, 2, 2]), VOL)],
    "aten::batch_norm": [(lambda m, x: aten.batch_norm.default(
        x, _bn(m)[2], _bn(m)[3], _bn(m)[0], _bn(m)[1], False, 0.1, 1e-5, False), IMG)],
    "aten::cat": [(lambda m, x: aten.cat.default([x, x], 1), IMG)],
    "aten::chunk": [(lambda m, x: _split_sum(aten.chunk.default(x, 2, 1)), IMG)],
    "aten::clamp": [(lambda m, x: aten.clamp.default(x, -0.5, 0.5), IMG)],
    "aten::clamp_": [(lambda m, x: aten.clamp_.default(x * 1.0, 0.0, 0.5), IMG)],
    "aten::clone": [(lambda m, x: aten.clone.default(x), IMG)],
    "aten::constant_pad_nd": [(lambda m, x: aten.constant_pad_nd.default(x, [1, 1]), IMG)],
    "aten::contiguous": [(lambda m, x: aten.contiguous.default(x), IMG)],
    "aten::conv1d": [(lambda m, x: aten.conv1d.default(x, m.K1), SIG)],
    "aten::conv2d": [(lambda m, x: aten.conv2d.default(x, m.K2), IMG)],
    "aten::conv3d": [(lambda m, x: aten.conv3d.default(x, m.K3), VOL)],
    "aten::conv_transpose1d": [(lambda m, x: aten.conv_transpose1d.default(x, m.T1), SIG)],
    "aten::conv_transpose2d.input": [(lambda m, x: aten.conv_transpose2d.input(x, m.T2), IMG)],
    "aten::conv_transpose3d.input": [(lambda m, x: aten.conv_transpose3d.input(x, m.T3), VOL)],
    "aten::convolution": [(lambda m, x: aten.convolution.default(
        x, m.K2, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1), IMG)],
    "aten::div.Scalar": [(lambda m, x: aten.div.Scalar(x, 4.0), IMG)],
    "aten::div.Tensor": [(lambda m, x: aten.div.Tensor(x, 4.0), IMG)],
    "aten::div_.Tensor": [(lambda m, x: aten.div_.Tensor(x * 1.0, 4.0), IMG)],
    "aten::dropout": [(lambda m, x: aten.dropout.default(x, 0.5, False), IMG)],
    "aten::expand": [(lambda m, x: aten.expand.default(x, [1, 2, 4, 4]), (1, 2, 1, 4))],
    "aten::feature_alpha_dropout": [
        (lambda m, x: aten.feature_alpha_dropout.default(x, 0.5, False), IMG)],
    "aten::feature_dropout": [(lambda m, x: aten.feature_dropout.default(x, 0.5, False), IMG)],
    "aten::flatten.using_ints": [(lambda m, x: aten.flatten.using_ints(x, 1), IMG)],
    "aten::hardtanh": [(lambda m, x: aten.hardtanh.default(x, -0.5, 0.5), IMG)],
    "aten::hardtanh_": [(lambda m, x: aten.hardtanh_.default(x * 1.0, -0.5, 0.5), IMG)],
    "aten::leaky_relu": [(lambda m, x: aten.leaky_relu.default(x, 0.1), IMG)],
    "aten::leaky_relu_": [(lambda m, x: aten.leaky_relu_.default(x * 1.0, 0.1), IMG)],
    "aten::linear": [(lambda m, x: aten.linear.default(x, m.W2), (1, 8))],
    "aten::max_pool1d": [(lambda m, x: aten.max_pool1d.default(x, [2]), SIG)],
    "aten::max_pool2d": [(lambda m, x: aten.max_pool2d.default(x, [2, 2]), IMG)],
    "aten::max_pool3d": [(lambda m, x: aten.max_pool3d.default(x, [2, 2, 2]), VOL)],
    "aten::mean": [(lambda m, x: aten.mean.default(x).reshape(1, 1), IMG)],
    "aten::mean.dim": [(lambda m, x: aten.mean.dim(x, [2, 3]), IMG)],
    "aten::mul.Scalar": [(lambda m, x: aten.mul.Scalar(x, 3.0), IMG)],
    "aten::mul.Tensor": [(lambda m, x: aten.mul.Tensor(x, 3.0), IMG)],
    "aten::mul_.Tensor": [(lambda m, x: aten.mul_.Tensor(x * 1.0, 3.0), IMG)],
    "aten::neg": [(lambda m, x: aten.neg.default(x), IMG)],
    "aten::pad": [(lambda m, x: aten.pad.default(x, [1, 1, 0, 1]), IMG)],
    "aten::permute": [(lambda m, x: aten.permute.default(x, [0, 2, 3, 1]), IMG)],
    "aten::reflection_pad1d": [(lambda m, x: aten.reflection_pad1d.default(x, [1, 2]), SIG)],
    "aten::reflection_pad2d": [(lambda m, x: aten.reflection_pad2d.default(x, [1, 1, 1, 0]), IMG)],
    "aten::relu": [(lambda m, x: aten.relu.default(x), IMG)],
    "aten::relu6": [(lambda m, x: aten.relu6.default(x), IMG)],
    "aten::relu_": [(lambda m, x: aten.relu_.default(x * 1.0), IMG)],
    "aten::replication_pad1d": [(lambda m, x: aten.replication_pad1d.default(x, [2, 0]), SIG)],
    "aten::replication_pad2d": [
        (lambda m, x: aten.replication_pad2d.default(x, [0, 1, 1, 1]), IMG)],
    "aten::reshape": [(lambda m, x: aten.reshape.default(x, [1, 4, 8]), IMG)],
    "aten::rsub.Scalar": [(lambda m, x: aten.rsub.Scalar(x, 1.0), IMG)],
    "aten::rsub.Tensor": [(lambda m, x: aten.rsub.Tensor(x, x * 2.0), IMG)],
    "aten::select.int": [(lambda m, x: aten.select.int(x, 1, 0), IMG)],
    "aten::slice.Tensor": [(lambda m, x: aten.slice.Tensor(x, 2, 1, 3), IMG)],
    "aten::split.Tensor": [(lambda m, x: _split_sum(aten.split.Tensor(x, 1, 1)), IMG)],
    "aten::split_with_sizes": [
        (lambda m, x: _split_sum(aten.split_with_sizes.default(x, [1, 1], 1)), IMG)],
    "aten::squeeze.dim": [(lambda m, x: aten.squeeze.dim(x, 2), (1, 3, 1, 2))],
    "aten::squeeze.dims": [(lambda m, x: aten.squeeze.dims(x, [2]), (1, 3, 1, 2))],
    "aten::sub.Scalar": [(lambda m, x: aten.sub.Scalar(x, 0.5), IMG)],
    "aten::sub.Tensor": [(lambda m, x: aten.sub.Tensor(x, x, alpha=0.5), IMG)],
    "aten::sub_.Tensor": [(lambda m, x: aten.sub_.Tensor(x * 1.0, 0.5), IMG)],
    "aten::sum.dim_IntList": [(lambda m, x: aten.sum.dim_IntList(x, [1]), IMG)],
    "aten::t": [(lambda m, x: aten.t.default(x), (1, 5))],
    "aten::transpose.int": [(lambda m, x: aten.transpose.int(x, 1, 2), IMG)],
    "aten::unbind.int": [(lambda m, x: _split_sum(aten.unbind.int(x, 1)), IMG)],
    "aten::unsqueeze": [(lambda m, x: aten.unsqueeze.default(x, 0), IMG)],
    "aten::upsample_bilinear2d": [
        (lambda m, x: aten.upsample_bilinear2d.default(x, [6, 5], False), IMG)],
    "aten::upsample_bilinear2d.vec": [
        (lambda m, x: aten.upsample_bilinear2d.vec(x, None, False, [2.0, 2.0]), IMG)],
    "aten::upsample_linear1d.vec": [
        (lambda m, x: aten.upsample_linear1d.vec(x, None, False, [2.0]), SIG)],
    "aten::upsample_nearest1d.vec": [(lambda m, x: aten.upsample_nearest1d.vec(x, [9], None), SIG)],
    "aten::upsample_nearest2d": [(lambda m, x: aten.upsample_nearest2d.default(x, [8, 8]), IMG)],
    "aten::upsample_nearest2d.vec": [
        (lambda m, x: aten.upsample_nearest2d.vec(x, None, [2.0, 2.0]), IMG)],
    "aten::upsample_nearest3d.vec": [
        (lambda m, x: aten.upsample_nearest3d.vec(x, None, [2.0, 1.0, 2.0]), VOL)],
    "aten::upsample_trilinear3d.vec": [
        (lambda m, x: aten.upsample_trilinear3d.vec(x, None, False, [2.0, 2.0, 1.0]), VOL)],
    "aten::view": [(lambda m, x: aten.view.default(x, [1, 32]), IMG)],
}
CASES.update({f"torch._ops.aten.{k}": v for k, v in ATEN.items()})

# Registered targets that no capture path produces, each with the reason. Symbolic
# tracing turns ``h += y`` into ``operator.add`` (a tensor Proxy has no ``__iadd__``),
# and torch.export emits aten overloads, so the in-place operator functions are kept
# only for graphs made by other front ends.
UNREACHABLE: dict[str, str] = {
    f"_operator.{op}": "symbolic tracing records the out-of-place operator"
    for op in ("iadd", "isub", "imul", "itruediv")
} | {
    f"Tensor.{m}": "symbolic tracing records Python operators as operator functions"
    for m in ("__add__", "__radd__", "__sub__", "__mul__", "__rmul__", "__truediv__",
              "__getitem__")
} | {
    f"torch.nn.functional.{f}": "a Python wrapper: symbolic tracing records the "
    "F.interpolate it calls" for f in ("upsample", "upsample_bilinear", "upsample_nearest")
} | {
    "torch._ops.aten.aten::squeeze": "squeezes every size-1 dimension, the batch "
    "dimension of a batch-1 input included, so it never appears in a batch-1 capture "
    "that keeps the batch dimension (the .dim and .dims overloads are covered)",
    "torchvision.ops.stochastic_depth.stochastic_depth": "torch.fx.wrap applies to calls "
    "from torchvision's own module only (StochasticDepth, covered as a module adapter); "
    "elsewhere tracing sees through it",
}

REGISTERED = sorted({key for kind, key, _, _ in default_registry().entries()
                     if kind in ("function", "method")})


def _key_name(target: object) -> str:
    if isinstance(target, str):
        return f"Tensor.{target}"
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    mod = getattr(target, "__module__", None)
    return f"{mod}.{name}" if name and mod else str(target)


def test_every_registered_function_and_method_has_a_case() -> None:
    missing = [k for k in REGISTERED if k not in CASES and k not in UNREACHABLE]
    assert not missing, (
        f"registered functions/methods without a conformance case: {missing}; add one to "
        "CASES in tests/test_adapters_functions.py")
    stale = sorted(set(CASES) - set(REGISTERED))
    assert not stale, f"cases for targets no longer registered: {stale}"


@pytest.mark.parametrize("key", [k for k in REGISTERED if k in CASES])
def test_registered_function_conforms(key: str) -> None:
    gen = torch.Generator().manual_seed(len(key))
    for fn, shape in CASES[key]:
        model = _Consts(fn).eval()
        targets = {_key_name(n.target) for n in fx.symbolic_trace(model).graph.nodes
                   if n.op in ("call_function", "call_method")}
        assert key in targets, f"the case for {key} captures only {sorted(targets)}"
        g = cc.trace(model, shape)
        x = 2 * torch.randn(shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            want = float64_function(model)(x)
            got = g.run(x)
        want = want.reshape(want.shape[0], -1)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10,
                                   atol=1e-10 * max(1.0, float(want.abs().max())),
                                   err_msg=f"{key}: traced forward")
        xm = torch.rand(shape, generator=gen, dtype=torch.float64)
        env = {g.input.name: xm}
        for n in g.nodes[1:]:
            assert n.op is not None
            p = g.params.get(n.name)
            out = n.op.magnitude([env[i] for i in n.inputs],
                                 None if p is None else p.map(torch.abs), True)
            assert bool((out >= 0).all()), f"{key}: negative magnitude at {n.name}"
            env[n.name] = out

"""``certcompress quantize MODEL (--bits B | --budget EPS | --avg-bits A)``: a thin layer
over :func:`quantize` and :func:`choose_bitwidths`.

Prints the per-layer bit table, the model size in bytes, the certified bound and the
deviation measured on reference data (``--reference-data``; otherwise on random inputs
of the domain, said so), and writes ``--out`` as one set, after all the work succeeded
(written into a temporary folder beside it, then swapped into place in one step: a
reader, or a run killed at any point, sees the old complete set or the new one):
``quantized_state_dict.pt`` (tensors only), ``quant_grid.json`` (scales; codes are
recovered bit-exactly from the state dict), ``quant_config.json``, ``certificate.json``
and ``bits.csv``. Whether ``--out`` can be written is checked before any work.
``--export FILE.onnx`` also writes the model as ONNX (:func:`export_onnx`: the
certificate embedded; the weights and, with ``--activations``, the activations in the
QDQ layout onnxruntime runs with int8 kernels), verified against onnxruntime before it is
kept.

The certificate covers ``--radius`` or the box ``--domain LO:HI`` with the tiers of
``--method`` (the shared option groups of :mod:`certcompress.cli.options`). With
``--budget``, the allocation certifies each candidate with the bounds tier too when the
certificate does (``--domain`` alone, or ``--method bounds``); ``--avg-bits`` allocates
with the path-metric bound, and the final certificate then adds the asked tiers.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_dir, check_outputs, check_replaceable_dir, model_input_files
from ..api import certify
from ..compress.quantization.activations import fold_batchnorm, quantizers_of
from ..compress.quantization.allocate import choose_bitwidths
from ..compress.quantization.apply import quantize
from ..compress.quantization.config import QuantConfig
from ..compress.quantization.grid import quantization_grid
from ..compress.quantization.quantizers import GRANULARITIES, WEIGHT_BITS
from ..compress.quantization.report import bits_table
from ..domain import InputDomain
from ..errors import ConfigurationError
from ..export.onnx_export import export_onnx
from ..loading import load_model, load_reference_inputs
from ..resolve import resolve_domain
from .domain_options import default_methods
from .options import (
    add_domain_group,
    add_input_shape,
    add_method_group,
    add_model,
    add_output,
    add_plugin,
    add_search,
    certify_domain,
    input_shape,
    load_plugins,
)

__all__ = ["register"]

#: What ``quantize --out DIR`` writes (an existing DIR may hold only these).
OUTPUT_FILES = ("quantized_state_dict.pt", "quant_grid.json", "quant_config.json",
                "certificate.json", "bits.csv")


def register(subparsers: Any) -> None:
    """Add the ``quantize`` sub-command (``func``: Namespace -> exit code)."""
    p = subparsers.add_parser(
        "quantize", help="quantize a model's weights with a certified output-deviation bound",
        description="Quantize the weights of MODEL (uniform --bits, or a per-layer allocation "
                    "under a certified --budget or an --avg-bits size), certify the result "
                    "and write the quantized weights, grid and certificate.")
    add_model(p, help="model spec (model.py:make, pkg.mod:make, PREFIX:NAME)")
    add_plugin(p)
    add_input_shape(p)
    add_domain_group(p)
    add_method_group(p)
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--bits", type=int, metavar="B", help=f"uniform width {list(WEIGHT_BITS)}")
    goal.add_argument("--budget", type=float, metavar="EPS",
                      help="certified bound to stay under, minimizing total weight bits")
    goal.add_argument("--avg-bits", type=float, metavar="A",
                      help="average bits per weight, minimizing the certified bound")
    p.add_argument("--candidates", nargs="+", type=int, default=[2, 3, 4, 5, 6, 8],
                   metavar="B", help="candidate widths for --budget/--avg-bits "
                                     "(default 2 3 4 5 6 8)")
    p.add_argument("--granularity", choices=GRANULARITIES, default="per-channel")
    p.add_argument("--bias-bits", type=int, metavar="B",
                   help="also quantize biases (per tensor) to B bits; default: float biases")
    p.add_argument("--activations", type=int, metavar="B",
                   help="also quantize activations to B bits (2-8, per tensor, unsigned; "
                        "with --bits; with --budget each activation's width in B-4..B is "
                        "chosen too; ranges from --reference-data, else from the bounds "
                        "tier over the domain); the model is BatchNorm-folded first and the "
                        "certificate covers weight and activation rounding")
    p.add_argument("--export", metavar="FILE.onnx",
                   help="also write the quantized model as ONNX with the certificate embedded "
                        "(cc.export_onnx: int8 weights in QDQ form; with --activations the "
                        "activations too, which onnxruntime runs with int8 kernels), "
                        "verified against onnxruntime before it is kept")
    add_search(p)
    add_output(p, "out/quantize", "output directory (default out/quantize)", metavar="DIR")
    p.set_defaults(func=run)


def _load(args: argparse.Namespace) -> tuple[nn.Module, tuple[int, ...]]:
    load_plugins(args.plugin)
    model = load_model(args.model, args.weights)
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"quantize needs an nn.Module; '{args.model}' is a torch.export "
                                 "archive (quantize the model from its factory instead)")
    return model.eval(), input_shape(model, args.input_shape, args.model)


def run(args: argparse.Namespace) -> int:
    """The command's handler."""
    if args.search_steps < 0 or args.search_restarts < 1:
        raise ConfigurationError("--search-steps must be >= 0 and --search-restarts >= 1")
    out = Path(args.out)
    check_outputs([args.export], model_input_files(args.model, args.weights,
                                                   args.reference_data),
                  directories=[out], create_dirs=True)
    if args.export is not None and Path(args.export).resolve().parent == out.resolve():
        raise ConfigurationError(f"--export '{args.export}' is inside --out '{out}', which "
                                 f"holds only {', '.join(OUTPUT_FILES)}; write it elsewhere")
    check_replaceable_dir(out, OUTPUT_FILES)
    model, shape = _load(args)
    given = load_reference_inputs(args.reference_data, shape) if args.reference_data else None
    tiers = certify_domain(args, model, shape, given, args.model)
    domain: InputDomain | None = tiers["domain"]
    # the box, or the ball of --radius or of the plugin's radius (certify_domain checked
    # that one of them is known)
    certified = resolve_domain(model, shape, tiers["input_radius"], domain, label=args.model)
    radius = certified.radius
    if given is not None:
        ref = given
        where = f"{len(ref)} reference inputs from {args.reference_data}"
    else:
        gen = torch.Generator().manual_seed(args.seed)
        ref = (domain.sample(256, gen).to(torch.float32) if domain is not None else
               (torch.rand((256,) + shape[1:], generator=gen) * 2 - 1) * radius)
        where = "256 random inputs of the domain (no --reference-data given)"
    search = {"search_steps": args.search_steps, "search_restarts": args.search_restarts,
              "seed": args.seed}
    if domain is None:  # the ball of the plugin's radius or --radius, stated explicitly
        tiers["input_radius"] = radius
    if args.activations is not None and args.budget is not None:
        if args.arithmetic != "exact":
            raise ConfigurationError("--activations certifies exact arithmetic plus the "
                                     "quantizers' stated slack; drop --arithmetic")
        model = fold_batchnorm(model)
        al = choose_bitwidths(model, args.budget, domain=certified, activations=args.activations,
                              candidates=args.candidates, granularity=args.granularity,
                              bias_bits=args.bias_bits, reference_inputs=ref,
                              calibration=ref if args.reference_data else None,
                              certifier="bounds", **search)
        qcfg, qmodel, cert, sens = al.config, al.model, al.certificate, al.sensitivity
        print(al.summary().splitlines()[0])
        print("activation widths: " + ", ".join(f"{n} {b} bits"
                                                for n, b in al.activation_bits.items()))
        print(f"{len(quantizers_of(qmodel))} activation quantizers (at most "
              f"{args.activations} bits)")
    elif args.activations is not None:
        if args.bits is None:
            raise ConfigurationError("--activations needs --bits (a uniform weight width) or "
                                     "--budget (weight and activation widths chosen)")
        if args.arithmetic != "exact":
            raise ConfigurationError("--activations certifies exact arithmetic plus the "
                                     "quantizers' stated slack; drop --arithmetic")
        model = fold_batchnorm(model)
        qcfg = QuantConfig.uniform(model, args.bits, args.granularity, bias_bits=args.bias_bits)
        qmodel, cert = quantize(model, qcfg, reference_inputs=ref, search_steps=args.search_steps,
                                search_restarts=args.search_restarts, seed=args.seed,
                                domain=certified, methods=tiers["methods"],
                                propagation=tiers["propagation"], activations=args.activations,
                                calibration=ref if args.reference_data else None)
        grids = "; ".join(f"{n}: scale {q.op.scale:.6g} zero point {q.op.zero_point}"
                          for n, q in quantizers_of(qmodel).items())
        cert = replace(cert, notes=tuple(cert.notes) + (f"activation grids: {grids}",))
        print(f"{len(quantizers_of(qmodel))} activation quantizers ({args.activations} bits)")
        sens = None
    elif args.bits is not None:
        qcfg = QuantConfig.uniform(model, args.bits, args.granularity, bias_bits=args.bias_bits)
        qmodel, cert = quantize(model, qcfg, shape, reference_inputs=ref, **search, **tiers)
        sens = None
    else:
        methods = tiers["methods"] or default_methods(domain)
        with_bounds = "bounds" in methods and args.budget is not None
        al = choose_bitwidths(model, args.budget, avg_bits=args.avg_bits,
                              candidates=args.candidates,
                              input_shape=None if with_bounds else shape,
                              input_radius=None if with_bounds else radius,
                              granularity=args.granularity, bias_bits=args.bias_bits,
                              reference_inputs=ref, certifier="bounds" if with_bounds
                              else "path-metric", domain=certified if with_bounds else None,
                              **search)
        qcfg, qmodel, cert, sens = al.config, al.model, al.certificate, al.sensitivity
        print(al.summary().splitlines()[0])
        if (args.arithmetic != "exact" or tiers["propagation"].intermediate != "crown"
                or tiers["propagation"].slope_steps > 0
                or set(methods) != set(cert.by_method)
                or (domain is not None and not with_bounds)):
            # the allocation certified other tiers, another domain (the ball of the box's
            # radius) or in exact arithmetic: restate the certificate as asked
            if with_bounds and tiers["methods"] is not None:  # keep the tiers it used
                tiers["methods"] = tuple(dict.fromkeys(("path-metric", *tiers["methods"])))
            cert = certify(model, qmodel, shape, reference_inputs=ref, **search, **tiers)
    grid = quantization_grid(model, qcfg)
    grid.check(qmodel)
    table = bits_table(model, qcfg, sens)
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    float_bytes = sum(t.numel() * t.element_size() for t in
                      {id(t): t for t in [*model.parameters(), *model.buffers()]}.values())
    print(f"\npacked size at these widths: {qcfg.size_bytes(model):,} bytes "
          f"({qcfg.average_bits(model):.3f} bits/weight on average) vs {float_bytes:,} bytes "
          f"in float (what an integer format stores; `certcompress export` writes int8)")
    m = cert.measurements
    over = domain.describe() if domain is not None else f"||x||_inf <= {radius:g}"
    print(f"certified bound: {cert.bound:.6g}  (max over {over} of "
          f"||f(x) - f_q(x)||_1){'  VACUOUS' if cert.vacuous else ''}")
    print(f"measured deviation on {where}: max {m.deviation_max:.6g}, mean "
          f"{m.deviation_mean:.6g} (output scale {m.output_scale:.6g})")
    if m.adversarial_max is not None:
        print(f"adversarial search: {m.adversarial_max:.6g}")
    with atomic_dir(out, OUTPUT_FILES) as tmp:
        torch.save({k: v.detach().clone() for k, v in qmodel.state_dict().items()},
                   tmp / "quantized_state_dict.pt")
        grid.save(tmp / "quant_grid.json")
        qcfg.save(tmp / "quant_config.json")
        cert.save(tmp / "certificate.json")
        (tmp / "bits.csv").write_text(table.to_csv(), encoding="utf-8")
    print(f"wrote to {out.resolve()}: " + ", ".join(
        f"{n} ({(out / n).stat().st_size:,} bytes)" for n in OUTPUT_FILES))
    print("quantized_state_dict.pt holds float tensors whose values lie on the quantization "
          "grid, so its size on disk is the float size")
    if args.export is not None:
        report = export_onnx(qmodel, args.export, certificate=cert, grids=grid, original=model,
                             reference_inputs=ref[:64], **search)
        print(f"wrote {args.export} ({Path(args.export).stat().st_size:,} bytes): "
              f"{'weights and activations' if args.activations else 'weights'} in QDQ form, "
              f"certificate embedded; verified against onnxruntime ("
              f"{sum(c.status == 'passed' for c in report.checks)} checks passed)")
    return 0

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
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..._io import atomic_dir, check_outputs, check_replaceable_dir, model_input_files
from ...api import certify, input_spec_for
from ...bounds.cli import add_arithmetic_argument
from ...capture import plugin_manager
from ...errors import ConfigurationError
from .allocate import choose_bitwidths
from .apply import quantize
from .config import QuantConfig
from .grid import quantization_grid
from .quantizers import GRANULARITIES, WEIGHT_BITS
from .report import bits_table

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
    p.add_argument("model", metavar="MODEL", help="model spec (model.py:make, pkg.mod:make, "
                                                   "PREFIX:NAME)")
    p.add_argument("--weights", metavar="STATE_DICT", help="state dict file to load")
    p.add_argument("--plugin", action="append", default=[], metavar="PKG.MOD:ATTR",
                   help="load a plugin by name first (repeatable)")
    p.add_argument("--input-shape", nargs="+", type=int, metavar="N",
                   help="input shape, batch first; default: the plugin's")
    p.add_argument("--radius", type=float, metavar="R",
                   help="input domain ||x||_inf <= R (after normalization); default: the plugin's")
    add_arithmetic_argument(p)
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
                        "needs --bits; ranges from --reference-data, else from the bounds "
                        "tier over the domain); the model is BatchNorm-folded first and the "
                        "certificate covers weight and activation rounding")
    p.add_argument("--reference-data", metavar="FILE",
                   help="reference inputs: .npz (array 'x'), .npy or .pt, batch first")
    p.add_argument("--search-steps", type=int, default=20, metavar="N",
                   help="PGD steps of the adversarial search (0: skip; default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/quantize", metavar="DIR",
                   help="output directory (default out/quantize)")
    p.set_defaults(func=run)


def _load(args: argparse.Namespace) -> tuple[nn.Module, tuple[int, ...], float]:
    from ...loading import load_model

    pm = plugin_manager()
    for spec in args.plugin:
        if not any(lp.source == f"explicit: {spec}" for lp in pm.plugins):
            pm.load_path(spec)
    model = load_model(args.model, args.weights)
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"quantize needs an nn.Module; '{args.model}' is a torch.export "
                                 "archive (quantize the model from its factory instead)")
    spec = input_spec_for(model)
    if args.input_shape:
        shape = tuple(args.input_shape)
        if any(s <= 0 for s in shape):
            raise ConfigurationError("--input-shape must be positive integers")
    elif spec is not None:
        shape = spec.input_shape
    else:
        raise ConfigurationError(f"--input-shape is required for '{args.model}' (no installed "
                                 "plugin knows its input), e.g. --input-shape 1 3 32 32")
    if args.radius is not None:
        radius = float(args.radius)
    elif spec is not None:
        radius = spec.radius
    else:
        raise ConfigurationError(f"--radius is required for '{args.model}': the certificate "
                                 "covers inputs with ||x||_inf <= R")
    return model.eval(), shape, radius


def run(args: argparse.Namespace) -> int:
    """The command's handler."""
    if args.search_steps < 0:
        raise ConfigurationError("--search-steps must be >= 0")
    out = Path(args.out)
    check_outputs([], model_input_files(args.model, args.weights, args.reference_data),
                  directories=[out], create_dirs=True)
    check_replaceable_dir(out, OUTPUT_FILES)
    model, shape, radius = _load(args)
    if args.reference_data:
        from ...loading import load_reference_inputs

        ref = load_reference_inputs(args.reference_data, shape)
        where = f"{len(ref)} reference inputs from {args.reference_data}"
    else:
        gen = torch.Generator().manual_seed(args.seed)
        ref = (torch.rand((256,) + shape[1:], generator=gen) * 2 - 1) * radius
        where = "256 random inputs of the domain (no --reference-data given)"
    if args.activations is not None:
        if args.bits is None:
            raise ConfigurationError("--activations needs --bits (a uniform weight width)")
        if args.arithmetic != "exact":
            raise ConfigurationError("--activations certifies exact arithmetic plus the "
                                     "quantizers' stated slack; drop --arithmetic")
        from ...domain import InputDomain
        from .activations import fold_batchnorm, quantizers_of

        model = fold_batchnorm(model)
        qcfg = QuantConfig.uniform(model, args.bits, args.granularity, bias_bits=args.bias_bits)
        dom = InputDomain.box(-radius, radius, shape=shape)
        qmodel, cert = quantize(model, qcfg, reference_inputs=ref, search_steps=args.search_steps,
                                seed=args.seed, domain=dom, activations=args.activations,
                                calibration=ref if args.reference_data else None)
        grids = "; ".join(f"{n}: scale {q.op.scale:.6g} zero point {q.op.zero_point}"
                          for n, q in quantizers_of(qmodel).items())
        cert = replace(cert, notes=tuple(cert.notes) + (f"activation grids: {grids}",))
        print(f"{len(quantizers_of(qmodel))} activation quantizers ({args.activations} bits)")
        sens = None
    elif args.bits is not None:
        qcfg = QuantConfig.uniform(model, args.bits, args.granularity, bias_bits=args.bias_bits)
        qmodel, cert = quantize(model, qcfg, shape, radius, ref, search_steps=args.search_steps,
                                seed=args.seed, arithmetic=args.arithmetic)
        sens = None
    else:
        al = choose_bitwidths(model, args.budget, avg_bits=args.avg_bits,
                              candidates=args.candidates, input_shape=shape, input_radius=radius,
                              granularity=args.granularity, bias_bits=args.bias_bits,
                              reference_inputs=ref, search_steps=args.search_steps,
                              seed=args.seed)
        qcfg, qmodel, cert, sens = al.config, al.model, al.certificate, al.sensitivity
        print(al.summary().splitlines()[0])
        if args.arithmetic != "exact":  # the allocation used exact bounds; restate it
            cert = certify(model, qmodel, shape, radius, reference_inputs=ref,
                           search_steps=args.search_steps, seed=args.seed,
                           arithmetic=args.arithmetic)
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
    print(f"certified bound: {cert.bound:.6g}  (max over ||x||_inf <= {radius:g} of "
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
    return 0

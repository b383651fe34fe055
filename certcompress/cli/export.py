"""``certcompress export`` and ``certcompress verify``: ONNX files with the certificate.

::

    certcompress export COMPRESSED --certificate cert.json --out model.onnx
                        [--weights W] [--reference-data FILE] [--original MODEL]
                        [--original-weights W] [--certified MODEL --certified-weights W]
                        [--grid GRID.json] [--opset 18] [--search-steps N] [--rtol R]
                        [--signing-key KEY]
    certcompress verify model.onnx [--original MODEL] [--original-weights W] [--recertify]
                        [--compressed MODEL] [--compressed-weights W] [--inputs data.npz]
                        [--public-key KEY.pub] [--report report.json] [--search-steps N]
                        [--rtol R] [--atol A]
    certcompress keygen KEY        (writes KEY, mode 0600, and KEY.pub)

Models are specs for :func:`certcompress.loading.load_model`. ``verify`` exits 0 only
when every check it runs passes; a failed check, an unreadable, truncated or non-ONNX
file, a file without a certificate and a missing path are one line on stderr
(``certcompress: error: ...``, from :func:`certcompress.cli.main`) and exit code 2.
Handlers take the parsed ``Namespace`` and return the exit code.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import nn

from .._io import check_outputs, model_input_files
from ..certificate import Certificate
from ..compress.quantization.grid import QuantGrid
from ..errors import ConfigurationError
from ..export._files import load_onnx_file
from ..export.metadata import read_embedded
from ..export.onnx_export import MIN_OPSET, export_onnx
from ..export.signing import PublicKey, generate_signing_key
from ..export.verify import Tolerance, VerificationFailed, verify_onnx
from ..loading import load_module, load_reference_inputs
from .options import add_model, add_output, add_plugin, add_search, add_weights
from .options import load_plugins as _load_plugins

__all__ = ["register", "cmd_export", "cmd_verify", "cmd_keygen"]

EXIT_OK = 0


def _shared(p: argparse.ArgumentParser) -> None:
    add_plugin(p)
    add_search(p, steps=10, restarts=2, reference=False)
    p.add_argument("--rtol", type=float, default=Tolerance.rtol, metavar="R",
                   help=f"float32 tolerance relative to the output scale (default "
                        f"{Tolerance.rtol:g})")
    p.add_argument("--atol", type=float, default=Tolerance.atol, metavar="A",
                   help=f"float32 tolerance per output (default {Tolerance.atol:g})")


def register(subparsers: Any) -> None:
    """Add the ``export`` and ``verify`` sub-commands (each once: calling ``register``
    again on the same sub-parsers adds nothing)."""
    if "export" not in subparsers.choices:
        _register_export(subparsers)
    if "verify" not in subparsers.choices:
        _register_verify(subparsers)
    if "keygen" not in subparsers.choices:
        _register_keygen(subparsers)


def _register_export(subparsers: Any) -> None:
    e = subparsers.add_parser(
        "export", help="export a certified compressed model to ONNX, verified",
        description="Export COMPRESSED to one ONNX file with the certificate embedded, "
                    "verify it with onnxruntime, and keep the file only if every check "
                    "passes.")
    add_model(e, "compressed", "COMPRESSED", "model spec of the compressed model",
              weights_help="state dict of COMPRESSED")
    e.add_argument("--certificate", required=True, metavar="CERT.json",
                   help="the certificate (certcompress certify --out)")
    add_output(e, None, "ONNX file to write", metavar="MODEL.onnx", required=True)
    e.add_argument("--reference-data", metavar="FILE",
                   help="reference inputs: .npz (array 'x'), .npy or .pt, batch first")
    e.add_argument("--original", metavar="MODEL", help="model spec of the original model "
                                                       "(enables the bound check)")
    add_weights(e, "--original-weights", "state dict of --original")
    e.add_argument("--certified", metavar="MODEL",
                   help="the model the certificate is about, when COMPRESSED is a physically "
                        "smaller equivalent of it (structured pruning)")
    add_weights(e, "--certified-weights", "state dict of --certified")
    e.add_argument("--grid", metavar="GRID.json",
                   help="quantization grid of COMPRESSED (QuantGrid.save): its weights are "
                        "exported as integer codes + DequantizeLinear (QDQ)")
    e.add_argument("--opset", type=int, default=MIN_OPSET,
                   help=f"ONNX opset (>= {MIN_OPSET}; default {MIN_OPSET})")
    e.add_argument("--signing-key", metavar="KEY",
                   help="sign the file with this Ed25519 private key (certcompress keygen; "
                        "needs the cryptography package)")
    _shared(e)
    e.set_defaults(func=cmd_export)


def _register_verify(subparsers: Any) -> None:
    v = subparsers.add_parser(
        "verify", help="verify an exported ONNX file against its embedded certificate",
        description="Check the file's digests and certificate, run it with onnxruntime and, "
                    "given the torch models, check its outputs against them. Exit 0 only "
                    "when every check passes.")
    v.add_argument("onnx", metavar="MODEL.onnx", help="the ONNX file")
    v.add_argument("--original", metavar="MODEL", help="model spec of the original model "
                                                       "(enables the bound check)")
    add_weights(v, "--original-weights", "state dict of --original")
    v.add_argument("--compressed", metavar="MODEL", help="model spec of the compressed model "
                                                         "(enables the equivalence check)")
    add_weights(v, "--compressed-weights", "state dict of --compressed")
    v.add_argument("--inputs", metavar="FILE", help="inputs: .npz (array 'x'), .npy or .pt, "
                                                    "batch first (default: random, in the "
                                                    "certificate's domain)")
    v.add_argument("--report", metavar="FILE", help="also write the report as JSON")
    v.add_argument("--public-key", metavar="KEY.pub",
                   help="authenticate the file's Ed25519 signature with this public key "
                        "(without one, a PASS means integrity only, not authenticity)")
    v.add_argument("--recertify", action="store_true",
                   help="recompute the certificate's tiers from --original and the file's "
                        "own weights (catches forged bounds and weights even when every "
                        "digest was recomputed)")
    _shared(v)
    v.set_defaults(func=cmd_verify)


def _register_keygen(subparsers: Any) -> None:
    k = subparsers.add_parser(
        "keygen", help="write an Ed25519 key pair for signing exported files",
        description="Write a new Ed25519 private key to KEY (PEM, mode 0600) and its public "
                    "key to KEY.pub. Sign with 'export --signing-key KEY', authenticate with "
                    "'verify --public-key KEY.pub'. Needs the cryptography package.")
    k.add_argument("key", metavar="KEY", help="private key file to write (never overwritten)")
    k.set_defaults(func=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    """``certcompress keygen``: 0 when both files are written."""
    private, public = generate_signing_key(args.key)
    print(f"private key written to {private} (mode 0600: keep it secret)")
    print(f"public key written to {public} (give it to whoever verifies: "
          f"certcompress verify FILE --public-key {public})")
    return EXIT_OK


def _module(spec: str | None, weights: str | None, flag: str) -> nn.Module | None:
    if spec is None:
        if weights is not None:
            raise ConfigurationError(f"{flag}-weights given without {flag}")
        return None
    return load_module(spec, weights, needed_by=flag)


def _options(args: argparse.Namespace) -> Tolerance:
    if args.search_steps < 0 or args.search_restarts < 1:
        raise ConfigurationError("--search-steps must be >= 0 and --search-restarts >= 1")
    return Tolerance(rtol=args.rtol, atol=args.atol)


def _writable(path: Path, *inputs: str | None) -> None:
    """Fail before any work if ``path`` cannot be written or is one of ``inputs``."""
    check_outputs([path], model_input_files(*inputs))


def cmd_export(args: argparse.Namespace) -> int:
    """``certcompress export``: returns 0 (any failure raises a CertcompressError)."""
    out = Path(args.out)
    _writable(out, args.certificate, args.compressed, args.weights, args.reference_data,
              args.original, args.original_weights, args.certified, args.certified_weights,
              args.grid, args.signing_key)
    tol = _options(args)
    cert = Certificate.load(args.certificate)
    _load_plugins(args.plugin)
    compressed = _module(args.compressed, args.weights, "COMPRESSED")
    original = _module(args.original, args.original_weights, "--original")
    certified = _module(args.certified, args.certified_weights, "--certified")
    if compressed is None:
        raise ConfigurationError("COMPRESSED (a model spec) is required")
    reference = (load_reference_inputs(args.reference_data, cert.input_shape)
                 if args.reference_data else None)
    grid = None
    if args.grid:
        grid = QuantGrid.load(args.grid, compressed)
    report = export_onnx(compressed, out, certificate=cert, reference_inputs=reference,
                         original=original, opset=args.opset, grids=grid, certified=certified, tolerance=tol, search_steps=args.search_steps,
                         search_restarts=args.search_restarts, seed=args.seed,
                         signing_key=args.signing_key)
    print(report.summary())
    print(f"ONNX model written to {out.resolve()} ({report.file_bytes:,} bytes)")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """``certcompress verify``: 0 when every check passes; a failed check raises
    :class:`VerificationFailed` after the report is printed (and written)."""
    tol = _options(args)
    report_path = Path(args.report) if args.report else None
    if report_path is not None:
        _writable(report_path, args.onnx, args.original, args.original_weights,
                  args.compressed, args.compressed_weights, args.inputs, args.public_key)
    cert = read_embedded(load_onnx_file(args.onnx), f"'{args.onnx}'").certificate
    if args.public_key is not None:
        PublicKey(args.public_key)  # a bad key fails before any model is built
    _load_plugins(args.plugin)
    original = _module(args.original, args.original_weights, "--original")
    compressed = _module(args.compressed, args.compressed_weights, "--compressed")
    inputs = load_reference_inputs(args.inputs, cert.input_shape) if args.inputs else None
    if args.recertify and original is None:
        raise ConfigurationError("--recertify needs --original: the certificate is "
                                 "recomputed from the original and the file's weights")
    try:
        report = verify_onnx(args.onnx, original=original, inputs=inputs,
                             compressed=compressed, tolerance=tol,
                             search_steps=args.search_steps,
                             search_restarts=args.search_restarts, seed=args.seed,
                             public_key=args.public_key, recertify=args.recertify)
    except VerificationFailed as exc:
        print(exc.report.summary())
        if report_path is not None:
            exc.report.save(report_path)
        raise
    print(report.summary())
    if report_path is not None:
        print(f"report written to {report.save(report_path)}")
    return EXIT_OK

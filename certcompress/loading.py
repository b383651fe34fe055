"""Load a model named by a string: what the command line (and scripts) pass around.

Model specifications, tried in this order:

``PREFIX:NAME``
    A model an installed plugin builds (``torchvision:resnet18`` with the
    certcompress-torchvision plugin); the prefixes of loaded plugins are in
    ``plugin_manager().prefixes()``.
``FILE.py:FACTORY``
    The file is imported by path and ``FACTORY()`` is called with no arguments; it must
    return an ``nn.Module``. Such a spec *is* code (as are ``package.module:FACTORY``
    and plugins): it runs, so name only code you trust.
``package.module:FACTORY``
    The same for an importable module (``FACTORY`` may be dotted: ``mod:Class.build``).
``FILE.pt2``
    A ``torch.export`` archive (``torch.export.save``); it carries its own weights. It
    is inspected first (:func:`check_export_archive`) and loaded only when it holds
    nothing that ``torch.export.load`` would unpickle unsafely: model files never run
    code.
``FILE.onnx``
    An ONNX model, read as data and converted to standard torch modules
    (:func:`certcompress.capture.onnx.load_onnx`); it carries its own weights.
``FILE.nnet``
    A NNet file (Reluplex/ReluVal/ReluDiff format, e.g. the ACAS-Xu networks), read as
    data (:func:`certcompress.capture.nnet.load_nnet`): a float64 ``nn.Sequential`` of
    ``nn.Linear``/``nn.ReLU`` computing the network on *normalized* inputs and outputs
    (the units of the VNN-LIB boxes of these networks); it carries its own weights.

Weights are read only from state dicts, with ``torch.load(weights_only=True)``: a file
that needs arbitrary unpickling (a whole pickled model) is refused, never executed.
Every failure is a :class:`~certcompress.errors.ModelLoadError` whose one-line message
names the spec or file and says what to do. :func:`load_reference_inputs` reads reference
inputs (``.npz``/``.npy``/``.pt``) the same way, raising ConfigurationError.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import logging
import operator
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from .capture import plugin_manager
from .capture.nnet import is_nnet_spec, load_nnet
from .capture.onnx import is_onnx_spec, load_onnx
from .errors import ConfigurationError, ModelLoadError

__all__ = ["check_export_archive", "is_archive_spec", "load_model", "load_module", "load_state_dict_file", "load_reference_inputs", "exported_input_shape",
           "spec_for_executor", "module_without_executor", "SPEC_FORMS"]

Model = nn.Module | torch.export.ExportedProgram

SPEC_FORMS = ("PREFIX:NAME (a plugin's model, e.g. torchvision:resnet18)",
              "FILE.py:FACTORY", "package.module:FACTORY", "FILE.pt2 (a torch.export archive)",
              "FILE.onnx (an ONNX model)", "FILE.nnet (a NNet model)")

# Plugins certcompress knows by name, for the message when one is not installed.
_KNOWN_PLUGINS = {"torchvision": "certcompress-torchvision", "smp": "certcompress-smp"}
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar")
_SAVE_HINT = "save one with torch.save(model.state_dict(), path)"


def spec_for_executor(model: object) -> Any:
    """``model`` as workers receive it: a spec (a string or a ``scale.ModelRef``), never a
    module object."""
    if isinstance(model, nn.Module):
        raise ConfigurationError(
            "executor= runs the rows on workers, which receive model specs (e.g. "
            "'torchvision:resnet18', or 'file.py:factory' with weights), never module "
            f"objects: pass the model's spec string (got {type(model).__name__})")
    return model


def module_without_executor(model: object, what: str) -> nn.Module:
    """``model`` for an in-process run: the module itself; a spec string needs an
    executor. ``what`` names the run ("the report") in the error."""
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"model {model!r} is a spec: pass executor='local' (or 'ray') "
                                 f"to run {what} on workers, or pass the nn.Module")
    return model


def load_model(spec: str, weights: str | None = None) -> Model:
    """Build the model named by ``spec`` (forms in the module docstring), load the state
    dict in ``weights`` into it (strictly: every key, every shape), and return it in
    eval mode (``model.eval()``, so BatchNorm uses running statistics and Dropout is off).

    An ``ExportedProgram`` (``FILE.pt2``) is returned as loaded; it takes no ``weights``.
    Raises :class:`ModelLoadError` for every failure, naming the spec or file.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"empty model spec; expected one of: {'; '.join(SPEC_FORMS)}")
    spec = spec.strip()
    if is_onnx_spec(spec) and ":" not in spec:
        if weights is not None:
            raise ModelLoadError(f"weights '{weights}' cannot be loaded into the ONNX model "
                                 f"'{spec}': an ONNX file carries its own weights")
        return load_onnx(spec)
    if is_nnet_spec(spec) and ":" not in spec:
        if weights is not None:
            raise ModelLoadError(f"weights '{weights}' cannot be loaded into the NNet model "
                                 f"'{spec}': a .nnet file carries its own weights")
        return load_nnet(spec)
    model = _resolve(spec)
    if isinstance(model, torch.export.ExportedProgram):
        if weights is not None:
            raise ModelLoadError(
                f"weights '{weights}' cannot be loaded into the torch.export archive "
                f"'{spec}': an archive carries its own weights; load the weights into the "
                "nn.Module before exporting it")
        return model
    if weights is not None:
        load_state_dict_file(model, weights, spec=spec)
    return model.eval()


def is_archive_spec(spec: object) -> bool:
    """Whether ``spec`` names a ``torch.export`` archive (``FILE.pt2``, no factory)."""
    return isinstance(spec, str) and ":" not in spec.strip() and \
        Path(spec.strip()).suffix.lower() == ".pt2"


def load_module(spec: str, weights: str | None = None, *, needed_by: str) -> nn.Module:
    """:func:`load_model` for callers that need an ``nn.Module`` (``needed_by`` says
    which, e.g. "certify"). A ``.pt2`` archive is inspected
    (:func:`check_export_archive`: an unsafe one is refused naming its entry) and then
    refused without being loaded, so nothing in it runs."""
    if is_archive_spec(spec):
        check_export_archive(spec.strip())
        raise ConfigurationError(
            f"{needed_by} needs nn.Module models; '{spec}' is a torch.export archive (use "
            "'inspect' on it, and name the model's factory instead: FILE.py:FACTORY or "
            "package.module:FACTORY)")
    model = load_model(spec, weights)
    if not isinstance(model, nn.Module):  # pragma: no cover - only archives load otherwise
        raise ConfigurationError(f"{needed_by} needs an nn.Module; '{spec}' is not one")
    return model


def exported_input_shape(program: torch.export.ExportedProgram) -> tuple[int, ...] | None:
    """The static shape of the single user input of ``program`` (None if it has several
    inputs or a dynamic dimension)."""
    users = list(program.graph_signature.user_inputs)
    if len(users) != 1:
        return None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == users[0]:
            val = node.meta.get("val")
            if isinstance(val, Tensor) and all(isinstance(s, int) for s in val.shape):
                return tuple(int(s) for s in val.shape)
    return None


# ------------------------------------------------------------------ spec resolution
def _resolve(spec: str) -> Model:
    left, sep, attr = spec.rpartition(":")
    if not sep:
        return _resolve_plain(spec)
    prefix = spec.split(":", 1)[0]
    pm = plugin_manager()
    if prefix in pm.prefixes():
        return _from_plugin(spec, prefix)
    if not left or not attr:
        raise ModelLoadError(f"malformed model spec '{spec}': expected one of: "
                             f"{'; '.join(SPEC_FORMS)}")
    if left.endswith(".py"):
        return _from_file(Path(left), attr, spec)
    if prefix in _KNOWN_PLUGINS:
        dist = _KNOWN_PLUGINS[prefix]
        raise ModelLoadError(
            f"model spec '{spec}' needs the {dist} plugin, which is not installed: install "
            f"it (pip install -e plugins/{dist} in the certcompress source tree, or make "
            "install) or load a plugin by name (--plugin package.module:Attr, "
            f"certcompress.load_plugin); installed prefixes: {_prefixes(pm.prefixes())}")
    if left.endswith(".pt2"):
        raise ModelLoadError(f"malformed model spec '{spec}': a .pt2 archive is named "
                             f"alone ('{left}'), without ':{attr}'")
    if all(part.isidentifier() for part in left.split(".")):
        return _from_module(left, attr, spec, pm.prefixes())
    raise ModelLoadError(
        f"malformed model spec '{spec}': '{left}' is neither a .py file, an importable "
        f"module nor a plugin prefix (installed: {_prefixes(pm.prefixes())}); expected one "
        f"of: {'; '.join(SPEC_FORMS)}")


def _prefixes(prefixes: list[str]) -> str:
    return ", ".join(prefixes) if prefixes else "none"


def _resolve_plain(spec: str) -> Model:
    suffix = Path(spec).suffix.lower()
    if suffix == ".pt2":
        return _load_exported(Path(spec))
    if suffix == ".py":
        raise ModelLoadError(f"model spec '{spec}' names a Python file but no factory: use "
                             f"'{spec}:FACTORY', where FACTORY() returns the nn.Module")
    if suffix in _WEIGHT_SUFFIXES:
        raise ModelLoadError(
            f"'{spec}' is a weights file, not a model: name the architecture as the model "
            "(FILE.py:FACTORY, package.module:FACTORY or a plugin's PREFIX:NAME) and pass the "
            "file with --weights")
    raise ModelLoadError(f"malformed model spec '{spec}': expected one of: "
                         f"{'; '.join(SPEC_FORMS)}")


def _from_plugin(spec: str, prefix: str) -> nn.Module:
    pm = plugin_manager()
    name = next((lp.plugin.name for lp in pm.plugins if prefix in lp.plugin.model_prefixes),
                prefix)
    try:
        model = pm.resolve_model(spec)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"plugin '{name}' failed to build '{spec}': "
                             f"{type(exc).__name__}: {_first_line(exc)}") from exc
    if model is None:
        raise ModelLoadError(f"plugin '{name}' does not know the model '{spec}'")
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"plugin '{name}' returned {type(model).__name__} for '{spec}', "
                             "expected a torch.nn.Module")
    return model


# Files imported by path, keyed by (resolved path, mtime, size): loading the original and
# the compressed model from the same file gives both the same classes.
_FILE_MODULES: dict[tuple[str, int, int], ModuleType] = {}


@contextlib.contextmanager
def _on_sys_path(directory: Path) -> Iterator[None]:
    """Let a user's file import its sibling modules while it is imported and called."""
    entry = str(directory)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def _import_file(path: Path) -> ModuleType:
    if not path.exists():
        raise ModelLoadError(f"model file '{path}' does not exist")
    if not path.is_file():
        raise ModelLoadError(f"model file '{path}' is not a file")
    resolved = path.resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    digest = hashlib.sha1(f"{key}".encode()).hexdigest()[:12]
    name = f"_certcompress_user_{re.sub(r'[^0-9a-zA-Z_]', '_', resolved.stem)}_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise ModelLoadError(f"cannot import '{path}' as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        with _on_sys_path(resolved.parent):
            module_spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise ModelLoadError(f"cannot import model file '{path}': SyntaxError at line "
                             f"{exc.lineno}: {exc.msg}") from None
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelLoadError(f"importing model file '{path}' raised {type(exc).__name__}: "
                             f"{_first_line(exc)}") from exc
    _FILE_MODULES[key] = module
    return module


def _from_file(path: Path, attr: str, spec: str) -> nn.Module:
    module = _import_file(path)
    factory = _attribute(module, attr)
    if factory is None:
        found = sorted(n for n, v in vars(module).items()
                       if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise ModelLoadError(f"model file '{path}' defines no '{attr}'; it defines: "
                             f"{', '.join(found) or 'no functions or classes'}")
    with _on_sys_path(path.resolve().parent):
        return _call_factory(factory, spec)


def _from_module(module_name: str, attr: str, spec: str, prefixes: list[str]) -> nn.Module:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name
                                       or module_name.startswith(exc.name + ".")):
            plugin = ("" if "." in module_name else
                      f", nor a plugin prefix (installed: {_prefixes(prefixes)})")
            raise ModelLoadError(
                f"model spec '{spec}': no module named '{exc.name}'{plugin}; install the "
                "package or add its directory to PYTHONPATH (or use FILE.py:FACTORY)") from None
        raise ModelLoadError(f"importing '{module_name}' for '{spec}' raised "
                             f"ModuleNotFoundError: {exc}") from exc
    except Exception as exc:
        raise ModelLoadError(f"importing '{module_name}' for '{spec}' raised "
                             f"{type(exc).__name__}: {_first_line(exc)}") from exc
    factory = _attribute(module, attr)
    if factory is None:
        raise ModelLoadError(f"model spec '{spec}': module '{module_name}' has no "
                             f"attribute '{attr}'")
    return _call_factory(factory, spec)


def _attribute(module: ModuleType, attr: str) -> Any:
    if not all(part.isidentifier() for part in attr.split(".")):
        raise ModelLoadError(f"'{attr}' is not a valid factory name (expected a Python "
                             "identifier, e.g. make_model)")
    try:
        return operator.attrgetter(attr)(module)
    except AttributeError:
        return None


def _call_factory(factory: Any, spec: str) -> nn.Module:
    if not callable(factory):
        raise ModelLoadError(f"'{spec}' names a {type(factory).__name__}, not a callable "
                             "factory; the factory is called with no arguments and returns "
                             "the nn.Module")
    try:
        model = factory()
    except Exception as exc:
        hint = (" (the factory is called with no arguments)"
                if isinstance(exc, TypeError) and "argument" in str(exc) else "")
        raise ModelLoadError(f"the factory '{spec}' raised {type(exc).__name__}: "
                             f"{_first_line(exc)}{hint}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"the factory '{spec}' returned {type(model).__name__}, "
                             "expected a torch.nn.Module")
    return model


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """torch logs a traceback before re-raising some load errors; the error we raise
    says everything."""
    logger = logging.getLogger(logger_name)
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


_PT2_HOW = "create one with torch.export.save(torch.export.export(model, (example,)), path)"


def _read_archive(path: Path) -> bytes:
    if not path.exists():
        raise ModelLoadError(f"torch.export archive '{path}' does not exist")
    if not path.is_file():
        raise ModelLoadError(f"torch.export archive '{path}' is not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"torch.export archive '{path}' cannot be read: "
                             f"{exc.strerror or exc}") from None
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ModelLoadError(f"'{path}' is not a torch.export archive (not a zip file; "
                             f"corrupt or truncated?); {_PT2_HOW}")
    return data


def check_export_archive(path: str | Path) -> bytes:
    """Inspect the ``torch.export`` archive at ``path`` without unpickling anything, and
    return its bytes (what :func:`load_model` then loads, so the file checked is the
    file loaded).

    ``torch.export.load`` unpickles with ``weights_only=False`` every weight or constant
    its configuration marks ``use_pickle``, opaque constants, legacy ``.pt`` state dicts,
    and sample inputs that the restricted unpickler refuses; it also loads compiled
    AOTInductor code. Any of these can run arbitrary code, so an archive holding one is
    refused with a :class:`ModelLoadError` naming the entry. Allowed: the archive's
    markers, ``models/NAME.json``, raw tensor payloads listed with ``use_pickle: false``,
    ``extra/`` text, and sample inputs that ``torch.load(weights_only=True)`` reads.
    """
    p = Path(path)
    data = _read_archive(p)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            _check_archive_entries(zf, p)
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(f"'{p}' is not a readable torch.export archive ({exc}); "
                             f"{_PT2_HOW}") from None
    return data


_PT2_REFUSED = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")


def _unsafe(p: Path, entry: str, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"refusing torch.export archive '{p}': entry '{entry}' {why}; torch.export.load "
        "would run it as code (pickle), and certcompress never runs code from a model file. "
        "Re-save the model with torch.export.save from a trusted source (tensors only), or "
        "name its Python factory explicitly (FILE.py:FACTORY, which is code you trust)")


def _check_archive_entries(zf: zipfile.ZipFile, p: Path) -> None:
    names = [i.filename for i in zf.infolist()]
    if not names:
        raise ModelLoadError(f"'{p}' is an empty zip file, not a torch.export archive; "
                             f"{_PT2_HOW}")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise _unsafe(p, dup, "occurs more than once (readers may disagree on which copy "
                              "counts)")
    root = names[0].split("/", 1)[0] + "/"
    rel: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = info.filename
        if not name.startswith(root) or "\\" in name or ".." in name.split("/"):
            raise _unsafe(p, name, f"lies outside the archive's folder '{root}'")
        rel[name[len(root):]] = info
    fmt = rel.get("archive_format")
    if fmt is None or zf.read(fmt).strip() != b"pt2":
        raise ModelLoadError(f"'{p}' is not a torch.export archive (no '{root}archive_format' "
                             f"saying pt2); {_PT2_HOW}")
    models = sorted(n[len("models/"):-len(".json")] for n in rel
                    if n.startswith("models/") and n.endswith(".json"))
    allowed = {"archive_format", "archive_version", "byteorder"}
    for model in models:
        allowed |= {f"models/{model}.json", f"data/sample_inputs/{model}.pt"}
        for kind, conf, prefix in (("weights", f"data/weights/{model}_weights_config.json",
                                    "weight_"),
                                   ("constants",
                                    f"data/constants/{model}_constants_config.json",
                                    "tensor_")):
            legacy = f"data/{kind}/{model}.pt"
            if legacy in rel:
                raise _unsafe(p, root + legacy, f"is a pickled legacy {kind} file")
            if conf not in rel:
                raise ModelLoadError(f"torch.export archive '{p}' lacks '{root}{conf}' "
                                     f"(corrupt, or written by another torch); {_PT2_HOW}")
            allowed.add(conf)
            allowed |= _check_payload_config(zf, rel, root, conf, f"data/{kind}/", prefix, p)
        sample = rel.get(f"data/sample_inputs/{model}.pt")
        if sample is not None and sample.file_size:
            _check_sample_inputs(zf.read(sample), root + sample.filename[len(root):], p)
    for name in rel:
        if name in allowed or name.startswith((".data/", "extra/")):
            continue
        if name.startswith(_PT2_REFUSED):
            raise _unsafe(p, root + name, "holds compiled or foreign code "
                                          "(AOTInductor/ExecuTorch payload)")
        raise _unsafe(p, root + name, "is not part of a torch.export archive of tensors")


def _check_payload_config(zf: zipfile.ZipFile, rel: Mapping[str, zipfile.ZipInfo], root: str,
                          conf: str, folder: str, prefix: str, p: Path) -> set[str]:
    """The payload files a weights/constants configuration lists (all raw tensors)."""
    try:
        config = json.loads(zf.read(rel[conf]).decode("utf-8"))
        entries = config["config"]
        if not isinstance(entries, dict):
            raise TypeError("'config' is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"torch.export archive '{p}': '{root}{conf}' is not a valid "
                             f"payload configuration ({exc}); {_PT2_HOW}") from None
    files: set[str] = set()
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            raise ModelLoadError(f"torch.export archive '{p}': '{root}{conf}' entry '{fqn}' "
                                 f"is not an object; {_PT2_HOW}")
        path_name = str(meta.get("path_name", ""))
        entry = f"{root}{folder}{path_name}"
        if meta.get("use_pickle") is not False:
            raise _unsafe(p, entry, f"(for '{fqn}') is stored as a pickle (use_pickle)")
        if not path_name.startswith(prefix) or "/" in path_name or \
                meta.get("tensor_meta") is None:
            raise _unsafe(p, entry, f"(for '{fqn}') is not a raw tensor payload (a pickled "
                                    "or opaque object)")
        files.add(folder + path_name)
    return files


def _check_sample_inputs(data: bytes, entry: str, p: Path) -> None:
    """torch.export.load retries sample inputs with ``weights_only=False`` when the
    restricted unpickler refuses them; refuse them here instead."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _unsafe(p, entry, f"holds pickled Python objects beyond tensors "
                                f"({type(exc).__name__}: {_first_line(exc)[:120]})") from None


def _load_exported(path: Path) -> torch.export.ExportedProgram:
    data = check_export_archive(path)
    how = _PT2_HOW
    try:
        with _quiet("torch.export"):
            program = torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise ModelLoadError(f"cannot load torch.export archive '{path}' ({type(exc).__name__}: "
                             f"{_first_line(exc)}): corrupt, truncated or written by an "
                             f"incompatible torch version; {how}") from exc
    if not isinstance(program, torch.export.ExportedProgram):
        raise ModelLoadError(f"'{path}' holds {type(program).__name__}, not an ExportedProgram")
    return program


# ------------------------------------------------------------------ state dicts
def load_state_dict_file(model: nn.Module, path: str, *, spec: str = "the model") -> None:
    """Load the state dict stored at ``path`` into ``model`` with ``strict=True``.

    The file is read with ``torch.load(map_location="cpu", weights_only=True)``. Raises
    :class:`ModelLoadError` for a missing, corrupt or truncated file, a file that is not
    a state dict, and for keys or shapes that do not fit ``model`` (all listed).
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"weights file '{p}' does not exist")
    if not p.is_file():
        raise ModelLoadError(f"weights file '{p}' is not a file")
    try:
        with warnings.catch_warnings():  # a raw pickle: reported as corrupt below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            what = f" (it contains {found.group(1)})"
            raise ModelLoadError(
                f"weights file '{p}' is not a state dict: it holds pickled Python objects"
                f"{what}, e.g. a whole model saved with torch.save(model, path). certcompress "
                f"only loads state dicts (never arbitrary pickles, which can run code); "
                f"{_SAVE_HINT}") from None
        raise _corrupt(p, exc) from None
    except Exception as exc:
        raise _corrupt(p, exc) from None
    state = _as_state_dict(obj, p)
    _check_fit(model, state, p, spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ModelLoadError(f"weights file '{p}' does not fit '{spec}': {detail}") from None


def _corrupt(p: Path, exc: BaseException) -> ModelLoadError:
    detail = _first_line(exc) or "unexpected end of file"
    if isinstance(exc, pickle.UnpicklingError):
        detail = "not a file written by torch.save"
    return ModelLoadError(f"cannot read weights file '{p}': corrupt or truncated "
                          f"({type(exc).__name__}: {detail}); re-create it: {_SAVE_HINT}")


def _as_state_dict(obj: object, p: Path) -> Mapping[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise ModelLoadError(f"weights file '{p}' holds a {type(obj).__name__}, not a state "
                             f"dict (a mapping of parameter names to tensors); {_SAVE_HINT}")
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        nested = [str(k) for k, v in obj.items() if isinstance(v, Mapping) and v
                  and all(isinstance(t, Tensor) for t in v.values())]
        hint = (f"; it looks like a training checkpoint whose entry '{nested[0]}' is a state "
                f"dict: save that one with torch.save(checkpoint['{nested[0]}'], path)"
                if nested else f"; {_SAVE_HINT}")
        raise ModelLoadError(f"weights file '{p}' is not a state dict: entries "
                             f"{_listing(bad)} are not tensors{hint}")
    return obj


def _check_fit(model: nn.Module, state: Mapping[str, Tensor], p: Path, spec: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
              for k, v in expected.items()
              if k in state and isinstance(v, Tensor) and state[k].shape != v.shape]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) ({_listing(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) ({_listing(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) ({_listing(shapes)})")
    hint = "check that the model spec names the architecture the weights were saved from"
    if unexpected and all(k.startswith("module.") for k in unexpected) and \
            {k[len("module."):] for k in unexpected} >= set(missing):
        hint = ("the keys carry a 'module.' prefix (saved from DataParallel or "
                "DistributedDataParallel): save model.module.state_dict() instead")
    raise ModelLoadError(f"weights file '{p}' does not fit '{spec}': {'; '.join(parts)}; "
                         f"{hint}")


def _listing(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else ""


# ------------------------------------------------------------------ reference data
def load_reference_inputs(path: str, input_shape: tuple[int, ...]) -> Tensor:
    """Reference inputs for ``input_shape`` (batch first) as a float64 tensor ``(n, ...)``.

    ``.npz``: the array named ``x`` (or the only array); ``.npy``: the array; ``.pt``/
    ``.pth``: a tensor, or a dict with one (or one named ``x``), read with
    ``weights_only=True``. The data must have shape ``(n,) + input_shape[1:]`` (or
    ``input_shape[1:]`` for one input) and finite values. Raises ConfigurationError.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigurationError(f"reference data file '{p}' does not exist"
                                 if not p.exists() else f"reference data '{p}' is not a file")
    suffix = p.suffix.lower()
    if suffix in (".npz", ".npy"):
        data = _read_numpy(p)
    elif suffix in (".pt", ".pth"):
        data = _read_tensor(p)
    else:
        raise ConfigurationError(f"reference data '{p}': unknown format '{suffix}'; use .npz "
                                 "(an array named x), .npy or .pt (a tensor)")
    per = tuple(input_shape[1:])
    shape = tuple(data.shape)
    if shape == per and len(input_shape) > 1:
        data = data.unsqueeze(0)
    elif len(shape) != len(input_shape) or shape[1:] != per or shape[0] == 0:
        raise ConfigurationError(
            f"reference data '{p}' has shape {shape}; expected (n, {', '.join(map(str, per))}) "
            f"for the model's input shape {tuple(input_shape)}")
    if not (data.is_floating_point() or data.dtype in _INT_DTYPES):
        raise ConfigurationError(f"reference data '{p}' has dtype {data.dtype}; expected "
                                 "numbers")
    data = data.to(torch.float64)
    if not bool(torch.isfinite(data).all()):
        raise ConfigurationError(f"reference data '{p}' contains NaN or infinite values")
    return data


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _read_numpy(p: Path) -> Tensor:
    import numpy as np

    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise ConfigurationError(f"cannot read reference data '{p}': {type(exc).__name__}: "
                                 f"{_first_line(exc)} (corrupt, truncated, or object arrays, "
                                 "which are never unpickled)") from None
    if isinstance(loaded, np.ndarray):
        array = loaded
    else:
        with loaded:
            try:
                names = list(loaded.files)
                if "x" in names:
                    array = loaded["x"]
                elif len(names) == 1:
                    array = loaded[names[0]]
                else:
                    raise ConfigurationError(
                        f"reference data '{p}' holds arrays {', '.join(names) or '(none)'}; "
                        "name the inputs 'x' (np.savez(path, x=inputs))")
            except ConfigurationError:
                raise
            except Exception as exc:
                raise ConfigurationError(f"cannot read reference data '{p}': "
                                         f"{type(exc).__name__}: {_first_line(exc)}") from None
    if array.dtype.kind not in "fiu":
        raise ConfigurationError(f"reference data '{p}' has dtype {array.dtype}; expected "
                                 "numbers")
    return torch.from_numpy(np.ascontiguousarray(array))


def _read_tensor(p: Path) -> Tensor:
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigurationError(f"cannot read reference data '{p}': {type(exc).__name__}: "
                                 f"{_first_line(exc)} (corrupt or truncated, or not a plain "
                                 "tensor: save one with torch.save(x, path))") from None
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        obj = tensors.get("x", next(iter(tensors.values())) if len(tensors) == 1 else obj)
    if not isinstance(obj, Tensor):
        raise ConfigurationError(f"reference data '{p}' holds a {type(obj).__name__}; expected "
                                 "a tensor (torch.save(x, path)) or a dict with a tensor 'x'")
    return obj.detach()

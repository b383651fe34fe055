"""Tasks: one certification, pruning, quantization or mean-field configuration each.

A task is a pure, frozen value that serializes to JSON (:meth:`Task.to_json`): models
and data files travel by spec and path (:class:`~certcompress.scale.refs.ModelRef`,
:class:`~certcompress.scale.refs.DataRef`), never as pickled objects. Its
:attr:`Task.key` is the SHA-256 of its identity: the kind, the model digest(s), the plan
and every setting (not the label, not file paths), so the same configuration on the same
weights has the same key on every machine, and a results store can skip it.

:meth:`Task.run` runs it where it lands (a worker process) and returns one flat row
(column -> scalar). The kinds, registered in :data:`TASK_KINDS`:

``certify`` (:class:`CertifyTask`)
    A model and its compressed version (another model spec, or a pruning plan or a
    quantization config applied on the worker), over the ball of ``radius`` or a
    ``domain`` box, with the tiers ``methods`` (names from the tier registry):
    :func:`certcompress.certify`'s columns.
``prune`` (:class:`PruneTask`)
    One (criterion, sparsity) point of
    :func:`~certcompress.compress.pruning.pruning_report`: exactly its row.
``quantize`` (:class:`QuantizeTask`)
    A quantization config, or a certified bit allocation for a bound budget or an
    average bit width (:func:`~certcompress.compress.quantization.choose_bitwidths`).
``meanfield`` (:class:`MeanFieldTask`)
    One configuration of :func:`certcompress.meanfield.sweep`: exactly its row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property
from typing import Any, ClassVar

from ..errors import ConfigurationError
from . import _check, _plans
from .refs import DataRef, ModelRef

__all__ = ["Task", "CertifyTask", "PruneTask", "QuantizeTask", "MeanFieldTask", "TASK_KINDS",
           "task_from_dict", "task_from_json", "KEY_VERSION"]

KEY_VERSION = 1  # bump when the meaning of a task's fields changes (invalidates stored keys)
_JSON = {"json": True}  # field metadata: canonical JSON text, a mapping in to_dict()
_REFS: dict[str, type[ModelRef] | type[DataRef]] = {
    "model": ModelRef, "compressed": ModelRef, "reference": DataRef, "data_file": DataRef}


@dataclass(frozen=True, kw_only=True)
class Task:
    """Base of the task kinds. Override map: ``kind`` (the registry name),
    ``_validate()`` (normalize and check fields, called on construction), ``_run()`` (the
    work, on the worker: returns a mapping of column to scalar) and ``describe()``."""

    kind: ClassVar[str] = ""
    label: str = ""

    def __post_init__(self) -> None:
        _check.text(self.label, f"{self.kind} task: label")
        self._validate()

    def _validate(self) -> None:
        raise NotImplementedError

    def _run(self) -> Mapping[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ running
    def run(self) -> dict[str, Any]:
        """Do the work here and return the row (column -> None/bool/int/float/str)."""
        return _check.scalar_row(self._run(), f"{self.kind} task '{self.display}'")

    @property
    def display(self) -> str:
        """The label, or a description of the task."""
        return self.label or self.describe()

    # ------------------------------------------------------------------ identity
    @cached_property
    def key(self) -> str:
        """Hex SHA-256 of the identity (kind, model digests, plan, settings)."""
        ident = {"key_version": KEY_VERSION, "kind": self.kind, **self._identity()}
        return hashlib.sha256(_plans.canonical(ident).encode()).hexdigest()

    def _identity(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "label":
                continue
            v = getattr(self, f.name)
            if isinstance(v, ModelRef):
                out[f.name] = v.identity()
            elif isinstance(v, DataRef):
                out[f.name] = v.digest
            else:
                out[f.name] = _plain(v, f.metadata)
        return out

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.to_dict() if isinstance(v, (ModelRef, DataRef)) else _plain(
                v, f.metadata)
        return d

    def to_json(self) -> str:
        """Canonical JSON (what travels to a worker)."""
        return _plans.canonical(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        what = f"{cls.kind} task"
        known = {f.name: f for f in fields(cls)}
        unknown = [k for k in data if k != "kind" and k not in known]
        if unknown:
            raise ConfigurationError(f"{what}: field {unknown[0]!r} is unknown; fields are "
                                     f"{', '.join(known)}")
        missing = [n for n, f in known.items() if n not in data and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise ConfigurationError(f"{what}: field {missing[0]!r} is missing")
        kwargs: dict[str, Any] = {}
        for name, v in data.items():
            if name == "kind":
                continue
            ref = _REFS.get(name)
            kwargs[name] = ref.from_dict(v, f"{what}: {name}") if ref and v is not None else v
        return cls(**kwargs)

    # ------------------------------------------------------------------ files
    def files(self) -> list[str]:
        """Every local file the task reads (to ship them where paths are not shared)."""
        out: list[str] = []
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (ModelRef, DataRef)):
                out.extend(v.files())
        return out

    def relocated(self, paths: Mapping[str, str]) -> Task:
        """A copy reading its files from ``paths`` (old -> new; same bytes, same key)."""
        data = self.to_dict()
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (ModelRef, DataRef)):
                data[f.name] = v.relocated(paths).to_dict()
        return type(self).from_dict(data)


def _plain(v: Any, metadata: Mapping[str, Any]) -> Any:
    if metadata.get("json") and isinstance(v, str):
        return json.loads(v)
    if isinstance(v, tuple):
        return [_plain(x, {}) for x in v]
    return v


# ---------------------------------------------------------------------- model tasks
@dataclass(frozen=True, kw_only=True)
class _ModelTask(Task):
    """Fields shared by the tasks on one model: the certified domain (inputs of
    ``input_shape``, batch first, with ``||x||_inf <= radius``; None: the plugin's
    default), reference inputs and the adversarial search."""

    model: ModelRef
    input_shape: tuple[int, ...]
    radius: float | None = None
    reference: DataRef | None = None
    search_steps: int = 20
    search_restarts: int = 4
    seed: int = 0

    def _validate(self) -> None:
        what = f"{self.kind} task"
        if not isinstance(self.model, ModelRef):
            raise ConfigurationError(f"{what}: model must be a ModelRef, got "
                                     f"{type(self.model).__name__}")
        if self.reference is not None and not isinstance(self.reference, DataRef):
            raise ConfigurationError(f"{what}: reference must be a DataRef or None")
        self._set("input_shape", _check.shape(self.input_shape, f"{what}: input_shape"))
        self._set("radius", _check.radius(self.radius, f"{what}: radius"))
        _check.nonneg_int(self.search_steps, f"{what}: search_steps")
        _check.integer(self.search_restarts, f"{what}: search_restarts", 1)
        _check.integer(self.seed, f"{what}: seed")

    def _inputs(self) -> Any:
        return None if self.reference is None else self.reference.inputs(self.input_shape)

    def _module(self) -> Any:
        from torch import nn

        model = self.model.load()
        if not isinstance(model, nn.Module):
            raise ConfigurationError(f"'{self.model.display}' is a torch.export archive; "
                                     f"{self.kind} tasks need an nn.Module (a factory spec)")
        return model

    def _domain_columns(self, radius: float) -> dict[str, Any]:
        return {"model": self.model.display,
                "input_shape": "x".join(map(str, self.input_shape)), "radius": radius}


def _certificate_columns(cert: Any) -> dict[str, Any]:
    """The certificate's row (:meth:`Certificate.to_row`, the one vocabulary of every
    report)."""
    return dict(cert.to_row())


def _counts(model: Any) -> dict[str, int]:
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "nonzero_parameters": sum(int((p != 0).sum()) for p in model.parameters())}


@dataclass(frozen=True, kw_only=True)
class CertifyTask(_ModelTask):
    """Certify ``model`` against exactly one of: ``compressed`` (another model),
    ``pruning`` (a plan applied on the worker) or ``quantization`` (a config applied on
    the worker). Row: :func:`certcompress.certify`'s bound, path-metric, baseline and
    measurements, the digests of both models and parameter counts of the compressed one.

    ``domain`` (an :class:`~certcompress.InputDomain` of shape ``input_shape``, or its
    dict; replaces ``radius``), ``methods`` (the certification tiers) and ``arithmetic``
    are passed to :func:`certcompress.certify`; rows of tasks that set them also have the
    columns ``domain``, ``methods`` and ``arithmetic``. Left at their defaults they are
    not part of the key, so stores written before they existed are still resumed."""

    kind: ClassVar[str] = "certify"
    compressed: ModelRef | None = None
    pruning: Any = field(default=None, metadata=_JSON)  # canonical JSON text once built
    quantization: Any = field(default=None, metadata=_JSON)
    domain: Any = field(default=None, metadata=_JSON)
    methods: tuple[str, ...] | None = None
    arithmetic: str = "exact"

    def _validate(self) -> None:
        super()._validate()
        given = [n for n in ("compressed", "pruning", "quantization")
                 if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigurationError(
                "certify task: give exactly one of compressed (a model), pruning (a plan) or "
                f"quantization (a config); got {', '.join(given) or 'none'}")
        if self.compressed is not None and not isinstance(self.compressed, ModelRef):
            raise ConfigurationError("certify task: compressed must be a ModelRef")
        if self.pruning is not None:
            self._set("pruning", _plans.pruning_spec(self.pruning, "certify task: pruning"))
        if self.quantization is not None:
            self._set("quantization",
                      _plans.quant_spec(self.quantization, "certify task: quantization"))
        if self.domain is not None:
            if self.radius is not None:
                raise ConfigurationError("certify task: give either domain or radius, not both")
            self._set("domain", _plans.domain_spec(self.domain, self.input_shape,
                                                   "certify task: domain"))
        if self.methods is not None:
            self._set("methods", _plans.methods_spec(self.methods, "certify task: methods"))
        if self.arithmetic not in ("exact", "float32"):
            raise ConfigurationError(f"certify task: arithmetic must be 'exact' or 'float32', "
                                     f"got {self.arithmetic!r}")

    def _identity(self) -> dict[str, Any]:
        out = super()._identity()
        for name, default in (("domain", None), ("methods", None), ("arithmetic", "exact")):
            if out.get(name) == default:  # keys of tasks without them stay as they were
                del out[name]
        return out

    def _options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`certcompress.certify` for the domain and tiers."""
        from ..domain import InputDomain  # imports torch: on the worker only

        domain = (None if self.domain is None
                  else InputDomain.from_dict(json.loads(self.domain)))
        return {"input_radius": None if domain is not None else self.radius,
                "domain": domain, "methods": self.methods, "arithmetic": self.arithmetic}

    def _option_columns(self, cert: Any) -> dict[str, Any]:
        if self.domain is None and self.methods is None and self.arithmetic == "exact":
            return {}
        return {"domain": cert.input_domain.describe() if cert.input_domain is not None
                else f"||x||_inf <= {cert.radius:g}",
                "methods": ",".join(cert.by_method), "arithmetic": self.arithmetic}

    def compression(self) -> str:
        """What the compressed model is: another model, a pruning plan or a quantization."""
        if self.compressed is not None:
            return f"model {self.compressed.display}"
        if self.pruning is not None:
            return _plans.describe_pruning(self.pruning)
        assert self.quantization is not None
        return _plans.describe_quant(self.quantization)

    def describe(self) -> str:
        return f"{self.model.display}: {self.compression()}"

    def _run(self) -> Mapping[str, Any]:
        from ..api import certify

        model = self._module()
        if self.compressed is not None:
            compressed = self.compressed.load()
        elif self.pruning is not None:
            compressed = _plans.pruned(model, self.pruning, self.input_shape)
        else:
            assert self.quantization is not None
            compressed, _ = _plans.quantized(model, self.quantization)
        cert = certify(model, compressed, self.input_shape, reference_inputs=self._inputs(),
                       search_steps=self.search_steps, search_restarts=self.search_restarts,
                       seed=self.seed, **self._options())
        return {**self._domain_columns(cert.radius), "compression": self.compression(),
                **_certificate_columns(cert), **_counts(compressed),
                **self._option_columns(cert)}


@dataclass(frozen=True, kw_only=True)
class PruneTask(_ModelTask):
    """One (criterion, sparsity) point of the pruning report: the row
    :func:`~certcompress.compress.pruning.pruning_report` gives for it (same masks, same
    certificate), with the dense accuracy when ``reference`` has labels ``y``."""

    kind: ClassVar[str] = "prune"
    criterion: str
    sparsity: float
    scope: str = "global"
    exclude: tuple[str, ...] = ()

    def _validate(self) -> None:
        super()._validate()
        _plans.package("pruning", "a prune task")
        from ..compress.pruning.criteria import check_criterion

        self._set("criterion", check_criterion(self.criterion, "prune task: criterion"))
        self._set("sparsity", _check.fraction(self.sparsity, "prune task: sparsity"))
        if self.scope not in ("global", "per-layer"):
            raise ConfigurationError(f"prune task: scope must be 'global' or 'per-layer', got "
                                     f"{self.scope!r}")
        self._set("exclude", _check.names(self.exclude, "prune task: exclude"))

    def describe(self) -> str:
        return (f"{self.model.display}: {self.scope} {self.criterion} pruning at sparsity "
                f"{self.sparsity:g}")

    def _run(self) -> Mapping[str, Any]:
        pr = _plans.package("pruning", "a prune task")
        model = self._module()
        x = self._inputs()
        y = None if self.reference is None else self.reference.labels()
        df = pr.pruning_report(model, (self.criterion,), (self.sparsity,), data=x, labels=y,
                               input_shape=self.input_shape, input_radius=self.radius,
                               scope=self.scope, exclude=self.exclude,
                               search_steps=self.search_steps,
                               search_restarts=self.search_restarts, seed=self.seed,
                               progress=False)
        dense = df.attrs.get("dense_accuracy")
        return {**self._domain_columns(float(df.attrs["radius"])), **df.iloc[0].to_dict(),
                "dense_accuracy": float("nan") if dense is None else dense}


@dataclass(frozen=True, kw_only=True)
class QuantizeTask(_ModelTask):
    """Exactly one of: ``config`` (a quantization config: certify it), ``budget`` (the
    certified bound to stay under with the fewest weight bits) or ``avg_bits`` (the
    average bits not to exceed with the smallest bound); the latter two choose per-layer
    widths among ``candidates`` (:func:`~certcompress.compress.quantization.choose_bitwidths`,
    at ``granularity``, ``bias_bits``, ``method``)."""

    kind: ClassVar[str] = "quantize"
    config: Any = field(default=None, metadata=_JSON)  # canonical JSON text once built
    budget: float | None = None
    avg_bits: float | None = None
    candidates: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    granularity: str = "per-channel"
    bias_bits: int | None = None
    method: str = "auto"

    def _validate(self) -> None:
        super()._validate()
        given = [n for n in ("config", "budget", "avg_bits") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigurationError("quantize task: give exactly one of config, budget or "
                                     f"avg_bits; got {', '.join(given) or 'none'}")
        if self.config is not None:
            self._set("config", _plans.quant_spec(self.config, "quantize task: config"))
        for name in ("budget", "avg_bits"):
            v = getattr(self, name)
            if v is not None:
                self._set(name, _check.number(v, f"quantize task: {name}", positive=True))
        self._set("candidates", tuple(_check.integer(b, f"quantize task: candidates[{i}]", 1)
                                      for i, b in enumerate(self.candidates)))
        _check.text(self.granularity, "quantize task: granularity")
        if self.bias_bits is not None:
            _check.integer(self.bias_bits, "quantize task: bias_bits", 1)
        if self.method not in ("auto", "ilp", "greedy"):
            raise ConfigurationError(f"quantize task: method must be auto, ilp or greedy, got "
                                     f"{self.method!r}")

    def describe(self) -> str:
        if self.config is not None:
            return f"{self.model.display}: {_plans.describe_quant(self.config)}"
        goal = (f"bound budget {self.budget:g}" if self.budget is not None
                else f"average {self.avg_bits:g} bits")
        return f"{self.model.display}: bit allocation for {goal}"

    def _run(self) -> Mapping[str, Any]:
        q = _plans.package("quantization", "a quantize task")
        model = self._module()
        x = self._inputs()
        nan = float("nan")
        extra: dict[str, Any] = {"budget": nan if self.budget is None else self.budget,
                                 "avg_bits_budget": nan if self.avg_bits is None
                                 else self.avg_bits}
        if self.config is not None:
            qmodel, cert_cfg = _plans.quantized(model, self.config)
            from ..api import certify

            cert = certify(model, qmodel, self.input_shape, self.radius, reference_inputs=x,
                           search_steps=self.search_steps,
                           search_restarts=self.search_restarts, seed=self.seed)
            mode = "config"
            extra.update(locally_minimal=None, allocation_method="")
        else:
            alloc = q.choose_bitwidths(
                model, self.budget, avg_bits=self.avg_bits, candidates=self.candidates,
                input_shape=self.input_shape, input_radius=self.radius,
                granularity=self.granularity, bias_bits=self.bias_bits, reference_inputs=x,
                search_steps=self.search_steps, search_restarts=self.search_restarts,
                seed=self.seed, method=self.method)
            qmodel, cert_cfg, cert = alloc.model, alloc.config, alloc.certificate
            mode = "budget" if self.budget is not None else "avg_bits"
            extra.update(locally_minimal=alloc.locally_minimal,
                         allocation_method=alloc.method)
        bits = sorted(set(cert_cfg.bits.values()))
        float_bytes = sum(t.numel() * t.element_size()
                          for t in [*model.parameters(), *model.buffers()])
        return {**self._domain_columns(cert.radius), "mode": mode,
                "bits": bits[0] if len(bits) == 1 else nan,
                "bits_by_layer": json.dumps(cert_cfg.bits, sort_keys=True),
                "granularities": ",".join(sorted({s.granularity
                                                  for s in cert_cfg.layers.values()})),
                "average_bits": cert_cfg.average_bits(model),
                "total_weight_bits": cert_cfg.total_weight_bits(model),
                "size_bytes": cert_cfg.size_bytes(model), "float_size_bytes": float_bytes,
                **extra, **_certificate_columns(cert), **_counts(qmodel)}


# ---------------------------------------------------------------------- mean-field
_MF_DATA = "'digits', 'digits:<task>' (odd-even, a-vs-b, k-vs-rest)"


@dataclass(frozen=True, kw_only=True)
class MeanFieldTask(Task):
    """One configuration of :func:`certcompress.meanfield.sweep` (depth, scaling, alpha,
    width, training size ``n``, initialisation), with the sweep's ``options`` (a
    :class:`~certcompress.meanfield.SweepOptions` or its dict; ``inits`` is this task's
    ``init``) and ``seed``. ``n_max`` is the largest ``n`` of the whole sweep: the data
    split depends on it, so a task's row equals the sweep's row for that point. Data:
    ``data`` (``'digits'`` or ``'digits:<task>'``) or ``data_file`` (an ``.npz`` with
    ``X``, ``y`` or ``X_train``, ``y_train``, ``X_test``, ``y_test``; ``data`` is then
    only a name)."""

    kind: ClassVar[str] = "meanfield"
    depth: int
    scaling: str | float
    alpha: float = 1.0
    width: int = 128
    n: int | None = None
    n_max: int | None = None
    init: str = "mean-field"
    data: str = "digits"
    data_file: DataRef | None = None
    options: Any = field(default="{}", metadata=_JSON)  # canonical JSON text once built
    seed: int = 0

    def _validate(self) -> None:
        what = "meanfield task"
        _check.integer(self.depth, f"{what}: depth", 1)
        _check.integer(self.width, f"{what}: width", 1)
        if not isinstance(self.scaling, str):
            _check.number(self.scaling, f"{what}: scaling", positive=True)
        _check.number(self.alpha, f"{what}: alpha", positive=True)
        for name in ("n", "n_max"):
            if getattr(self, name) is not None:
                _check.integer(getattr(self, name), f"{what}: {name}", 1)
        if self.n is not None and self.n_max is not None and self.n > self.n_max:
            raise ConfigurationError(f"{what}: n ({self.n}) exceeds n_max ({self.n_max})")
        if self.init not in ("mean-field", "standard"):
            raise ConfigurationError(f"{what}: init must be 'mean-field' or 'standard', got "
                                     f"{self.init!r}")
        _check.text(self.data, f"{what}: data")
        if self.data_file is not None and not isinstance(self.data_file, DataRef):
            raise ConfigurationError(f"{what}: data_file must be a DataRef or None")
        if self.data_file is None and not (self.data == "digits"
                                           or self.data.startswith("digits:")):
            raise ConfigurationError(f"{what}: data must be {_MF_DATA}, or give data_file (an "
                                     f".npz file); got {self.data!r}")
        _check.integer(self.seed, f"{what}: seed")
        self._set("options", _plans.canonical(_mf_options(self.options)))

    def describe(self) -> str:
        return (f"meanfield L={self.depth} {self.scaling} a={self.alpha:g} M={self.width} "
                f"n={self.n if self.n is not None else 'all'} {self.init}")

    def _run(self) -> Mapping[str, Any]:
        import dataclasses

        import numpy as np

        from .. import meanfield as mf
        from ..meanfield._sweep import resolve_data

        opts = dataclasses.replace(_sweep_options(json.loads(self.options)), inits=(self.init,))
        data: Any = self.data
        if self.data_file is not None:
            self.data_file._check()
            with np.load(self.data_file.path, allow_pickle=False) as z:
                names = ("X_train", "y_train", "X_test", "y_test")
                data = tuple(z[k] for k in (names if all(k in z.files for k in names)
                                            else ("X", "y")))
        n_max = self.n_max if self.n_max is not None else self.n
        split = resolve_data(data, n_max, opts, self.seed)
        table = mf.sweep(depths=(self.depth,), scalings=(self.scaling,), alphas=(self.alpha,),
                         widths=(self.width,), ns=None if self.n is None else (self.n,),
                         data=split, options=opts, seed=self.seed, progress=False)
        return table.iloc[0].to_dict()


def _sweep_options(d: Mapping[str, Any]) -> Any:
    from ..meanfield import EstimateOptions, SweepOptions

    d = dict(d)
    est = d.pop("estimate", {})
    return SweepOptions(**d, estimate=EstimateOptions(**est))


def _mf_options(value: object) -> dict[str, Any]:
    """``options`` as a plain dict of SweepOptions fields (without ``inits``)."""
    import dataclasses

    if isinstance(value, str):
        value = json.loads(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"meanfield task: options must be a SweepOptions or a mapping, "
                                 f"got {type(value).__name__}")
    d = {k: v for k, v in value.items() if k != "inits"}
    try:
        opts = _sweep_options(d)
    except TypeError as exc:
        raise ConfigurationError(f"meanfield task: options: {exc}") from None
    out = dataclasses.asdict(opts)
    out.pop("inits")
    return out


# ---------------------------------------------------------------------- registry
TASK_KINDS: dict[str, type[Task]] = {
    "certify": CertifyTask, "prune": PruneTask, "quantize": QuantizeTask,
    "meanfield": MeanFieldTask,
}


def task_from_dict(data: Mapping[str, Any]) -> Task:
    """A task from :meth:`Task.to_dict` output (validated; errors name the field)."""
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"a task must be a mapping with 'kind', got "
                                 f"{type(data).__name__}")
    kind = data.get("kind")
    cls = TASK_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigurationError(f"task kind {kind!r} is unknown; kinds are "
                                 f"{', '.join(TASK_KINDS)}")
    return cls.from_dict(data)


def task_from_json(text: str) -> Task:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"a task is not valid JSON: {exc}") from None
    return task_from_dict(data)

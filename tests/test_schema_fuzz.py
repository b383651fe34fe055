"""The file formats and their schemas (issue 13, part 5).

- real files written by certify, prune, quantize, certify_local and certify_statistical
  match their shipped schemas and read back equal;
- the malformed certificates of the issue (wrong types, huge integers, deep nesting,
  ``vacuous: "maybe"``, ``changed_parameters: "many"``, a negative ``input_shape``, NaN)
  are refused with one line naming the field;
- hypothesis-generated JSON for each format, and mutations of real files, give a valid
  object or a clear error (CertcompressError, one line), never another exception;
- NaN or wrongly shaped reference inputs are refused, not measured or reshaped.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import certcompress as cc
from certcompress import _schema
from certcompress.bounds.local import LocalCertificate, certify_local
from certcompress.bounds.statistical import certify_statistical
from certcompress.certificate import Certificate
from certcompress.compress.pruning.apply import prune
from certcompress.compress.pruning.plan import PruningPlan
from certcompress.compress.quantization.apply import quantize
from certcompress.compress.quantization.config import QuantConfig
from certcompress.errors import CertcompressError, ConfigurationError
from certcompress.scale.manifest import parse_manifest


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@pytest.fixture(scope="module")
def files() -> dict[str, dict[str, Any]]:
    m = _net(0)
    c = _net(0)
    with torch.no_grad():
        c[0].weight[0, 0] += 0.01
    x = torch.rand(16, 4) * 2 - 1
    plan = PruningPlan.by_criterion(m, 0.5, "magnitude", input_shape=(1, 4))
    qcfg = QuantConfig.uniform(m, 4, "per-channel")
    return {
        "certify": cc.certify(m, c, (1, 4), 1.0, reference_inputs=x, search_steps=2).to_dict(),
        "certify_box": cc.certify(m, c, domain=cc.InputDomain.box(-1.0, 1.0, shape=(1, 4)),
                                  search_steps=0).to_dict(),
        "prune": prune(m, plan, (1, 4), 1.0, reference_inputs=x, search_steps=1)[1].to_dict(),
        "quantize": quantize(m, qcfg, (1, 4), 1.0, x, search_steps=1)[1].to_dict(),
        "local": certify_local(m, c, x[:2], 0.1, progress=False).to_dict(),
        "statistical": certify_statistical(m, c, x, delta=0.1).to_dict(),
        "plan": plan.to_dict(),
        "quantconfig": qcfg.to_dict(),
    }


FORMAT = {"certify": "certificate", "certify_box": "certificate", "prune": "certificate",
          "quantize": "certificate", "local": "local-certificate",
          "statistical": "statistical-certificate", "plan": "pruning-plan",
          "quantconfig": "quantconfig"}


def test_every_schema_is_valid_and_ships_in_the_package() -> None:
    for name in _schema.FORMATS:
        jsonschema.Draft202012Validator.check_schema(_schema.schema(name))


@pytest.mark.parametrize("kind", sorted(FORMAT))
def test_real_files_match_their_schema_and_read_back(files: dict[str, dict[str, Any]],
                                                     kind: str) -> None:
    data = json.loads(json.dumps(files[kind], allow_nan=False))
    _schema.validate(data, FORMAT[kind], kind, ConfigurationError)
    text = json.dumps(data)
    readers: dict[str, Any] = {"certificate": Certificate, "local-certificate": LocalCertificate,
                               "pruning-plan": PruningPlan, "quantconfig": QuantConfig}
    if FORMAT[kind] in readers:
        back = readers[FORMAT[kind]].from_json(text).to_dict()
        assert json.loads(json.dumps(back)) == data


def test_a_new_certificate_field_needs_one_schema_entry(files: dict[str, dict[str, Any]]
                                                        ) -> None:
    """A field the dataclass has but the schema does not describe yet is let through
    (``extra_fields``); an unknown one is refused."""
    data = dict(files["certify"], future_field="anything")
    _schema.validate(data, "certificate", "certificate", ConfigurationError,
                     extra_fields=["future_field"])
    with pytest.raises(ConfigurationError, match="unknown field.*future_field"):
        _schema.validate(data, "certificate", "certificate", ConfigurationError)
    # a described field is checked by the schema
    with pytest.raises(ConfigurationError, match="field 'arithmetic' must be one of"):
        _schema.validate(dict(files["certify"], arithmetic="float64"), "certificate",
                         "certificate", ConfigurationError)


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def _set(d: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(d)
    *head, last = path.split(".")
    node: Any = d
    for k in head:
        node = node[k]
    node[last] = value
    return d


def _nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize(("path", "value", "message"), [
    ("by_method.path-metric.details.changed_parameters", "many",
     "'by_method.path-metric.details.changed_parameters' must be an integer"),
    ("changed_parameters", 3, "keeps the path-metric numbers in by_method"),
    ("vacuous", "maybe", "'vacuous' must be true or false or null"),
    ("input_shape", [1, -4], r"'input_shape\[1\]' must be >= 1"),
    ("input_shape", ["1", 4], r"'input_shape\[0\]' must be an integer"),
    ("input_shape", {"a": 1}, "'input_shape' must be a list"),
    ("per_output", [0.1, "x", 0.2], r"'per_output\[1\]' must be a number"),
    ("original_digest", 12, "'original_digest' must be a string"),
    ("compressed_digest", None, "'compressed_digest' must be a string"),
    ("by_method.path-metric.details.sign_changes", 10 ** 400,
     "'by_method.path-metric.details.sign_changes' is an integer of 401 digits, too large"),
    ("by_method.path-metric.details.factor", "2", "details.factor' must be a number"),
    ("bound", 10 ** 30, "'bound' is an integer .*too large"),
    ("bound", float("nan"), "'bound' is nan"),
    ("radius", float("inf"), "'radius' is inf"),
    ("measurements.reference_count", True, "'measurements.reference_count' must be an"),
    ("measurements.adversarial_max", -1.0, "'measurements.adversarial_max' must be non-neg"),
    ("notes", [1], r"'notes\[0\]' must be a string"),
    ("versions", _nested(200), "nested deeper than 64 levels"),
    ("by_method.path-metric.exact", "yes", "'by_method.path-metric.exact' must be true"),
    ("input_domain.shape", [1, 0], r"'input_domain.shape\[1\]' must be >= 1"),
])
def test_malformed_certificates_are_refused_naming_the_field(
        files: dict[str, dict[str, Any]], path: str, value: Any, message: str) -> None:
    data = _set(files["certify"], path, value)
    with pytest.raises(CertcompressError, match=message) as info:
        Certificate.from_dict(data)
    _one_line(info.value)


def test_unparseable_certificate_text_gives_a_clear_error() -> None:
    for text in ["[" * 100_000, '{"bound": 1' + "0" * 5000 + "}", "{", '{"bound": NaN}']:
        with pytest.raises(CertcompressError) as info:
            Certificate.from_json(text)
        _one_line(info.value)


_scalars = (st.none() | st.booleans() | st.integers(min_value=-(10 ** 25), max_value=10 ** 25)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)


def _readers() -> dict[str, Callable[[Any], object]]:
    return {
        "certificate": Certificate.from_dict,
        "local-certificate": lambda d: LocalCertificate.from_json(json.dumps(d)),
        "quantconfig": QuantConfig.from_dict,
        "pruning-plan": PruningPlan.from_dict,
        "manifest": lambda d: parse_manifest(d, name="zoo.yaml"),
    }


def _read_or_refuse(name: str, data: Any) -> None:
    try:
        obj = _readers()[name](data)
    except CertcompressError as exc:
        _one_line(exc)
        return
    for show in ("summary", "describe"):  # what was accepted can also be printed
        if hasattr(obj, show):
            assert isinstance(getattr(obj, show)(), str)


_FUZZ = settings(max_examples=30, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@pytest.mark.parametrize("name", sorted(_readers()))
@_FUZZ
@given(data=_json)
def test_arbitrary_json_is_read_or_refused_clearly(name: str, data: Any) -> None:
    _read_or_refuse(name, data)


@pytest.mark.parametrize("kind", ["certify", "local", "plan", "quantconfig"])
@_FUZZ
@given(rnd=st.randoms(use_true_random=False), value=_json)
def test_mutated_real_files_are_read_or_refused_clearly(
        files: dict[str, dict[str, Any]], kind: str, rnd: Any, value: Any) -> None:
    """One field anywhere in a real file replaced by arbitrary JSON (or deleted)."""
    data = copy.deepcopy(files[kind])
    node: Any = data
    for _ in range(rnd.randint(1, 3)):  # walk down a few levels at random
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        k = rnd.choice(keys)
        if not isinstance(node[k], (dict, list)) or rnd.random() < 0.4:
            if isinstance(node, dict) and rnd.random() < 0.2:
                del node[k]
            else:
                node[k] = value
            break
        node = node[k]
    _read_or_refuse(FORMAT[kind], data)


def test_nan_and_wrongly_shaped_reference_inputs_are_refused() -> None:
    m, c = _net(0), _net(1)
    nan = torch.zeros(4, 4)
    nan[2, 1] = math.nan
    with pytest.raises(ConfigurationError, match=r"NaN or infinite values \(first in input 2"):
        cc.certify(m, c, (1, 4), 1.0, reference_inputs=nan, search_steps=0)
    with pytest.raises(ConfigurationError, match=r"has shape \(10, 8\); expected \(n, 4\) for "
                                                 r"the input shape \(1, 4\)"):
        cc.certify(m, c, (1, 4), 1.0, reference_inputs=torch.rand(10, 8), search_steps=0)
    with pytest.raises(ConfigurationError, match=r"has shape \(2, 2, 4\)"):
        cc.certify(m, c, (1, 4), 1.0, reference_inputs=torch.rand(2, 2, 4), search_steps=0)
    one = cc.certify(m, c, (1, 4), 1.0, reference_inputs=torch.rand(4), search_steps=0)
    assert one.measurements.reference_count == 1  # one input without its batch dimension


def test_a_shape_mismatch_is_an_input_shape_refusal_not_an_adapter_request() -> None:
    with pytest.raises(cc.UnsupportedModelError) as info:
        cc.trace(_net(0), (1, 5))
    msg = str(info.value)
    assert "input shape (1, 5) does not fit this layer" in msg
    assert "adapter" not in msg and "Traceback" not in msg


@pytest.mark.parametrize("key", ["\n", "a\tb\r", "k" * 500])
def test_a_field_name_with_control_characters_or_a_long_one_keeps_the_error_on_one_line(
        key: str) -> None:
    """Hypothesis found a key of one newline: the refusal named it raw, on two lines."""
    for value in (math.inf, 10 ** 400):
        _read_or_refuse("quantconfig", {key: value})

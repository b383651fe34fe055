"""Certificate schema 3: tier results are the single source (typed details), the
path-metric attributes of schemas 1 and 2 are derived from them, mappings are immutable,
``to_row`` is the one table vocabulary, and files written by the schema-1 and schema-2
code (tests/fixtures/certificates, never regenerated) still load."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from certcompress.certificate import (
    ROW_COLUMNS,
    SCHEMA,
    BoundsDetails,
    Certificate,
    MethodBound,
    PathMetricDetails,
)
from certcompress.errors import CertificateError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "certificates"
OLD = sorted(FIXTURES.glob("schema*.json"))
PM_FIELDS = ("factor", "path_metric", "path_metric_exact", "path_norm_original",
             "path_norm_compressed", "sign_changes", "changed_parameters", "float_slack_rel",
             "float_slack_abs")


def _raw(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_the_fixtures_are_old_files() -> None:
    versions = {_raw(p)["schema"] for p in OLD}
    assert versions == {"certcompress.certificate/1", "certcompress.certificate/2"}


@pytest.mark.parametrize("path", OLD, ids=lambda p: p.name)
def test_old_files_load_with_every_number_kept(path: Path) -> None:
    raw = _raw(path)
    cert = Certificate.load(path)
    assert cert.schema == SCHEMA
    assert cert.bound == raw["bound"] and cert.per_output == tuple(raw["per_output"])
    assert cert.original_digest == raw["original_digest"]
    assert cert.compressed_digest == raw["compressed_digest"]
    assert cert.factor == raw["factor"]
    ran_pm = raw["schema"].endswith("/1") or "path-metric" in raw["by_method"]
    if ran_pm:
        for name in PM_FIELDS:
            assert getattr(cert, name) == raw[name], name
        assert cert.method == raw["method"]
        assert isinstance(cert.by_method["path-metric"].details, PathMetricDetails)
        assert cert.by_method["path-metric"].bound == pytest.approx(
            raw["factor"] * raw["path_metric"] + (
                cert.by_method["path-metric"].details.get("float32_error") or 0.0), rel=1e-12)
    else:  # a schema-2 file whose tiers did not include the path-metric
        assert cert.path_metric is None and cert.method is None
        assert cert.changed_parameters is None
    for name, entry in raw.get("by_method", {}).items():
        got = cert.by_method[name]
        assert got.bound == entry["bound"] and got.per_output == tuple(entry["per_output"])
        for k, v in entry["details"].items():
            assert got.details[k] == v
    if "bounds" in cert.by_method:
        assert isinstance(cert.by_method["bounds"].details, BoundsDetails)
    # the upgraded certificate round-trips as schema 3, without the top-level fields
    text = cert.to_json()
    assert Certificate.from_json(text) == cert
    assert not set(PM_FIELDS) & set(json.loads(text))
    assert isinstance(cert.summary(), str)
    assert cert.bound_method in cert.by_method


@pytest.mark.parametrize("path", OLD, ids=lambda p: p.name)
def test_rows_have_one_vocabulary(path: Path) -> None:
    cert = Certificate.load(path)
    row = cert.to_row()
    assert list(row)[:len(ROW_COLUMNS)] == list(ROW_COLUMNS)
    assert set(row) - set(ROW_COLUMNS) == {f"bound_{k.replace('-', '_')}"
                                           for k in cert.by_method}
    assert row["certified_bound"] == cert.bound
    assert row["deviation_max"] == cert.measurements.deviation_max or (
        cert.measurements.deviation_max is None and row["deviation_max"] != row["deviation_max"])


def test_mappings_inside_the_record_are_immutable() -> None:
    cert = Certificate.load(FIXTURES / "schema2_domain.json")
    with pytest.raises(TypeError):
        cert.by_method["x"] = cert.by_method["bounds"]  # type: ignore[index]
    with pytest.raises(TypeError):
        cert.versions["torch"] = "0"  # type: ignore[index]
    with pytest.raises(TypeError):
        cert.by_method["bounds"].details["relu_nodes"] = 0  # type: ignore[index]
    with pytest.raises(AttributeError):
        cert.by_method["path-metric"].details.factor = 2.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cert.path_metric = 0.0  # type: ignore[misc]
    # an untyped tier's details are read-only too
    other = MethodBound("plugin-tier", 1.0, (1.0,), "somewhere", 0.0, False, details={"a": 1})
    with pytest.raises(TypeError):
        other.details["a"] = 2  # type: ignore[index]
    assert other.details == {"a": 1} and other.to_dict()["details"] == {"a": 1}
    # frozen records still pickle and copy (executors send them between processes)
    assert pickle.loads(pickle.dumps(cert)) == cert
    assert copy.deepcopy(cert) == cert


def test_schema_3_refuses_the_old_top_level_fields_and_bad_details() -> None:
    d = json.loads(Certificate.load(FIXTURES / "schema2_radius.json").to_json())
    assert d["schema"] == SCHEMA
    with pytest.raises(CertificateError, match="by_method.*not at the top level.*path_metric"):
        Certificate.from_dict({**d, "path_metric": 1.0})
    bad = copy.deepcopy(d)
    del bad["by_method"]["path-metric"]["details"]["sign_changes"]
    with pytest.raises(CertificateError, match="details is missing field.*sign_changes"):
        Certificate.from_dict(bad)
    bad = copy.deepcopy(d)
    bad["by_method"]["path-metric"]["details"]["surprise"] = 1
    with pytest.raises(CertificateError, match="unknown field.*surprise"):
        Certificate.from_dict(bad)
    # a schema-2 file must have its top-level path-metric fields
    old = _raw(FIXTURES / "schema2_radius.json")
    del old["sign_changes"]
    with pytest.raises(CertificateError, match="missing field.*sign_changes"):
        Certificate.from_dict(old)


def test_reports_and_the_store_take_their_certificate_columns_from_to_row() -> None:
    from certcompress.compress.pruning.report import REPORT_COLUMNS
    from certcompress.compress.quantization.report import _CERT_COLUMNS
    from certcompress.scale.tasks import _certificate_columns

    cert = Certificate.load(FIXTURES / "schema2_domain.json")
    assert _certificate_columns(cert) == cert.to_row()
    assert set(_CERT_COLUMNS) <= set(ROW_COLUMNS)
    own = {"criterion", "sparsity", "pruned_weights", "candidate_weights", "parameters",
           "nonzero_parameters", "accuracy"}
    assert set(REPORT_COLUMNS) - own <= set(ROW_COLUMNS)
    assert "measured_max" not in ROW_COLUMNS and "deviation_max" in ROW_COLUMNS


@pytest.mark.parametrize("path", OLD, ids=lambda p: p.name)
def test_path_metric_attributes_are_read_from_the_tier_details(path: Path) -> None:
    cert = Certificate.load(path)
    pm = cert.path_metric_details
    without = dataclasses.replace(cert, by_method={k: v for k, v in cert.by_method.items()
                                                   if k != "path-metric"})
    assert without.path_metric_details is None
    assert without.factor == max(cert.radius, 1.0) and isinstance(without.factor, float)
    for name in (*PM_FIELDS, "method"):
        if name != "factor":
            assert getattr(without, name) is None, name
        if pm is not None:
            key = "computation" if name == "method" else name
            assert getattr(cert, name) == pm[key] and type(getattr(cert, name)) is type(pm[key])
        # documented, and read-only even past the frozen dataclass's own guard
        assert getattr(Certificate, name).__doc__
        with pytest.raises(AttributeError, match=name):
            object.__setattr__(cert, name, 0)

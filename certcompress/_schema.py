"""One JSON Schema per file format, shipped in ``certcompress/schemas/`` and checked with
``jsonschema`` (documented in docs/formats.md).

:func:`validate` turns the first violation into a one-line error naming the field
(``field 'measurements.reference_count': must be an integer, got a string ('many')``).
Before the schema, :func:`check_plain_json` refuses what a schema cannot express: NaN
and infinity (never meaningful in these files: they are written with
``allow_nan=False``), JSON nested deeper than :data:`MAX_DEPTH`, and keys that are not
strings (YAML). A format gains a field by adding it to its ``schemas/NAME.json``; the
``extra_fields`` argument lets a dataclass field that the schema does not describe yet
through (its type is then checked by the reader alone), so a new optional field never
makes files written by the same version unreadable.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable
from importlib import resources
from typing import Any

import jsonschema

__all__ = ["FORMATS", "MAX_DEPTH", "check_plain_json", "describe_value", "field_name", "schema", "validate"]

#: file format name -> schema file (``certcompress/schemas/NAME.json``)
FORMATS = ("certificate", "local-certificate", "statistical-certificate", "quantconfig",
           "pruning-plan", "manifest")
MAX_DEPTH = 64
_MAX_INT = 2**64


@functools.cache
def _load(name: str) -> dict[str, Any]:
    if name not in FORMATS:
        raise KeyError(f"no schema named {name!r}; schemas: {', '.join(FORMATS)}")
    text = resources.files("certcompress").joinpath("schemas", f"{name}.json").read_text(
        encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(data)
    return data


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema of format ``name`` (a copy)."""
    return json.loads(json.dumps(_load(name)))


# a tuple is an array too: ``from_dict(obj.to_dict())`` works on the Python values
# (dataclasses turn lists into tuples) as well as on parsed JSON
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "array", lambda _checker, inst: isinstance(inst, (list, tuple))))


@functools.cache
def _validator(name: str, extra: tuple[str, ...]) -> Any:
    s = _load(name)
    if extra:
        s = schema(name)
        for field in extra:
            s["properties"].setdefault(field, {})
    return _Validator(s)


def describe_value(v: object) -> str:
    """A value as error messages name it: its JSON kind and a short view of it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    if isinstance(v, str):
        return f"a string ({v[:40]!r}{'...' if len(v) > 40 else ''})"
    if isinstance(v, int):
        text = str(v) if abs(v) < 10 ** 30 else f"an integer of {len(str(abs(v)))} digits"
        return f"an integer ({text})" if not text.startswith("an ") else text
    if isinstance(v, float):
        return f"a number ({v!r})"
    if isinstance(v, (list, tuple)):
        return f"a list of {len(v)}"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _key(p: Any) -> str:
    """A field name as an error message shows it: control characters escaped (a message
    stays one line) and at most 40 characters."""
    s = str(p)
    if not s.isprintable():
        s = s.encode("unicode_escape").decode("ascii")
    return s if len(s) <= 40 else s[:37] + "..."


def _where(path: Iterable[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{_key(p)}" if out else _key(p))
    return out or "(top level)"


def _plural(types: object) -> str:
    names = {"integer": "an integer", "number": "a number", "string": "a string",
             "boolean": "true or false", "null": "null", "array": "a list",
             "object": "an object"}
    ts = types if isinstance(types, list) else [types]
    return " or ".join(names.get(str(t), str(t)) for t in ts)


def field_name(key: object) -> str:
    """A key as it can be printed on one line: itself when plain, else its repr."""
    text = str(key)
    return text if text and text.isprintable() and text.strip() == text else repr(text)


def _message(err: jsonschema.ValidationError) -> str:
    v, inst = err.validator, err.instance
    if v == "required":  # handled by validate(): the missing field is named as the field
        missing = [n for n in err.validator_value if isinstance(inst, dict) and n not in inst]
        return f"is missing field(s): {', '.join(missing)}"
    if v == "additionalProperties":
        known = err.schema.get("properties", {})
        extra = sorted(field_name(k) for k in inst if k not in known) \
            if isinstance(inst, dict) else []
        return f"has unknown field(s): {', '.join(extra[:5])}"
    if v == "type":
        return f"must be {_plural(err.validator_value)}, got {describe_value(inst)}"
    if v == "minimum" and err.validator_value == 0:
        return f"must be non-negative (>= 0), got {describe_value(inst)}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">",
              "exclusiveMaximum": "<"}[str(v)]
        return f"must be {op} {err.validator_value}, got {describe_value(inst)}"
    if v in ("enum", "const"):
        allowed = err.validator_value if v == "enum" else [err.validator_value]
        return f"must be one of {', '.join(json.dumps(a) for a in allowed)}, got {describe_value(inst)}"
    if v in ("minItems", "maxItems", "minLength", "maxLength", "minProperties",
             "maxProperties"):
        what = {"Items": "entries", "Length": "characters", "Properties": "fields"}
        unit = next(u for k, u in what.items() if str(v).endswith(k))
        op = "at least" if str(v).startswith("min") else "at most"
        return f"must have {op} {err.validator_value} {unit}"
    if v in ("oneOf", "anyOf"):
        # the most specific reason among the alternatives
        # (the deepest; on a tie the last alternative: null comes first in the schemas)
        subs = sorted(err.context or [], key=lambda e: (len(e.path), list(e.schema_path)[:1]))
        if subs:
            return _message(subs[-1])
        return f"has an unexpected value ({describe_value(inst)})"
    msg = err.message
    return msg if len(msg) <= 160 else msg[:157] + "..."


def check_plain_json(data: object, what: str, error: type[Exception], *,
                     string_keys: bool = True) -> None:
    """Refuse NaN / infinity, integers beyond 2^64, nesting deeper than
    :data:`MAX_DEPTH` and (``string_keys``) keys that are not strings anywhere in
    ``data`` (raises ``error`` naming the field)."""
    stack: list[tuple[object, tuple[Any, ...]]] = [(data, ())]
    while stack:
        v, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise error(f"{what}: nested deeper than {MAX_DEPTH} levels at "
                        f"'{_where(path[:8])}...'; not a certcompress file")
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > _MAX_INT:
            raise error(f"{what}: field '{_where(path)}' is {describe_value(v)}, too large (at most "
                        "2^64 in magnitude)")
        if isinstance(v, float) and not math.isfinite(v):
            raise error(f"{what}: field '{_where(path)}' is {v!r}; NaN and infinity are not "
                        "allowed")
        if isinstance(v, dict):
            for k, item in v.items():
                if string_keys and not isinstance(k, str):
                    raise error(f"{what}: field '{_where(path)}' has a key that is not a "
                                f"string ({describe_value(k)})")
                stack.append((item, path + (k,)))
        elif isinstance(v, (list, tuple)):
            stack.extend((item, path + (i,)) for i, item in enumerate(v))


def _string_keys(v: object) -> object:
    if isinstance(v, dict):
        return {str(k): _string_keys(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_string_keys(x) for x in v]
    return v


def validate(data: object, name: str, what: str, error: type[Exception], *,
             extra_fields: Iterable[str] = (), yaml: bool = False) -> None:
    """Check ``data`` (parsed JSON / YAML) against schema ``name``; the first violation
    (the shallowest, ties by position) raises ``error`` with a one-line message
    ``"{what}: field 'a.b[2]' must be ..."``. ``extra_fields``: top-level names accepted
    (with any value) besides those the schema lists. ``yaml``: the data came from YAML,
    whose mapping keys may be numbers (layer ``0`` of a ``Sequential``): they are read as
    their text."""
    check_plain_json(data, what, error, string_keys=not yaml)
    if yaml:
        data = _string_keys(data)
    validator = _validator(name, tuple(sorted(set(extra_fields))))
    errors = list(validator.iter_errors(data))
    if not errors:
        return
    err = min(errors, key=lambda e: (len(e.absolute_path), str(list(e.absolute_path))))
    while err.validator in ("oneOf", "anyOf") and err.context:
        # the most specific reason among the alternatives: the deepest; on a tie the
        # last alternative (null comes first in the schemas)
        err = max(err.context, key=lambda e: (len(e.absolute_path), list(e.schema_path)[:1]))
    path = list(err.absolute_path)
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = [n for n in err.validator_value if n not in err.instance]
        raise error(f"{what}: field '{_where(path + missing[:1])}' is missing"
                    + (f" (and {', '.join(missing[1:])})" if len(missing) > 1 else ""))
    where = _where(path)
    if where == "(top level)":
        raise error(f"{what} {_message(err)}")
    raise error(f"{what}: field '{where}' {_message(err)}")

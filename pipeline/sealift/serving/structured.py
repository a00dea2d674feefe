"""Structured outputs: what a request asks its output to follow, as one Constraint.

    response_format {"type": "json_object"}                      -> Constraint("json", '{"type": "object"}')
    response_format {"type": "json_schema", "json_schema": {...}} -> Constraint("json", schema, strict=...)
    structured_outputs {"json" | "regex" | "choice" | "grammar" | "json_object"}  (vLLM's extra)

A Constraint is plain data (no xgrammar here): the backend compiles it (sealift.serving.grammar),
and a schema that does not compile is a 400 naming the request field, before any token is made.
JSON is compiled without free whitespace (vLLM's `disable_any_whitespace`): a weak model cannot
loop on spaces, newlines or tabs between tokens of JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Constraint", "ConstraintError", "choice_grammar", "from_response_format", "from_structured_outputs"]

KINDS = ("json", "regex", "grammar")


class ConstraintError(ValueError):
    """A constraint the request gave cannot be used: a 400 naming `param`."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Constraint:
    """What the output must follow: a JSON schema (text), a regex, or an EBNF grammar (xgrammar's dialect)."""

    kind: str  # one of KINDS
    value: str
    param: str  # the request field it came from, named in errors
    strict: bool = True  # JSON schema: no properties beyond the schema's unless it allows them


def _schema_text(schema: Any, param: str) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise ConstraintError(f"{param}: not valid JSON ({exc})", param) from None
    if not isinstance(schema, dict | bool):
        raise ConstraintError(f"{param}: a JSON schema must be an object, got {type(schema).__name__}", param)
    return json.dumps(schema)


def from_response_format(rf: dict[str, Any] | None) -> Constraint | None:
    """OpenAI's response_format; type "text" (or none) is free text."""
    if rf is None:
        return None
    kind = rf.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return Constraint("json", '{"type": "object"}', "response_format")
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict):
            raise ConstraintError("response_format.json_schema: required with type json_schema (an object with "
                                  "name and schema)", "response_format.json_schema")
        schema = spec.get("schema", spec.get("json_schema"))
        if schema is None:
            schema = {"type": "object"}  # OpenAI allows a schema-less json_schema: any object
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise ConstraintError("response_format.json_schema.strict: must be true or false",
                                  "response_format.json_schema.strict")
        return Constraint("json", _schema_text(schema, "response_format.json_schema.schema"),
                          "response_format.json_schema.schema", strict=bool(strict) if strict is not None else True)
    raise ConstraintError(f"response_format.type: {kind!r} is not one of text, json_object, json_schema",
                          "response_format.type")


#: vLLM's structured_outputs keys this server refuses rather than ignores (it compiles with xgrammar,
#: no free whitespace, and has no fallback backend).
_REFUSED_SO = ("structural_tag", "whitespace_pattern", "backend", "disable_fallback", "disable_any_whitespace",
               "disable_additional_properties")


def from_structured_outputs(so: dict[str, Any] | None) -> Constraint | None:
    """vLLM's structured_outputs extra: exactly one of json, regex, choice, grammar, json_object."""
    if not so:
        return None
    for key in _REFUSED_SO:
        if so.get(key) not in (None, False, "", "xgrammar", "auto"):
            raise ConstraintError(f"structured_outputs.{key} is not supported by this server", f"structured_outputs.{key}")
    given = [k for k in ("json", "regex", "choice", "grammar", "json_object") if so.get(k) not in (None, False)]
    unknown = sorted(set(so) - {"json", "regex", "choice", "grammar", "json_object", *_REFUSED_SO})
    if unknown:
        raise ConstraintError(f"structured_outputs.{unknown[0]}: not a structured_outputs field (json, regex, choice, "
                              "grammar, json_object)", f"structured_outputs.{unknown[0]}")
    if len(given) != 1:
        raise ConstraintError("structured_outputs: give exactly one of json, regex, choice, grammar, json_object"
                              + (f" (got {', '.join(given)})" if given else ""), "structured_outputs")
    key = given[0]
    param, value = f"structured_outputs.{key}", so[key]
    if key == "json":
        return Constraint("json", _schema_text(value, param), param)
    if key == "json_object":
        return Constraint("json", '{"type": "object"}', param)
    if key == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise ConstraintError(f"{param}: a non-empty list of strings", param)
        return Constraint("grammar", choice_grammar(value), param)
    if not isinstance(value, str) or not value:
        raise ConstraintError(f"{param}: a non-empty string", param)
    return Constraint(key, value, param)


def choice_grammar(choices: list[str]) -> str:
    """An EBNF grammar whose sentences are exactly `choices`."""
    return "root ::= " + " | ".join(_literal(c) for c in choices)


def _literal(text: str) -> str:
    """A string literal of xgrammar's EBNF (JSON's escapes; non-ASCII kept as is)."""
    return json.dumps(text, ensure_ascii=False)

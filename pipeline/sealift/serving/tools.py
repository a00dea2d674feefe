"""Tool calls: which parser a model's chat template asks for, the grammars that force a call, and
turning generated text into OpenAI `tool_calls` (whole, or as streamed deltas).

    detect_tool_parser(template)      -> "hermes" | "llama3_json" | "mistral" | None   (vLLM's parser names)
    detect_reasoning_parser(template) -> "qwen3" | "deepseek_r1" | None
    named_constraint(tool) / required_constraint(tools, parallel)  -> Constraint (the parameters' schema)
    ToolOutput(mode, parser, tools)   -> .feed(text) / .finish() deltas, .whole(text) (content, calls)

Modes (from tool_choice): "none" (plain text), "named" (the output is the named function's arguments,
grammar-constrained), "required" (a JSON array of {"name", "arguments"}, grammar-constrained),
"auto" (free text, parsed with the family's parser: Hermes `<tool_call>{...}</tool_call>`, Llama 3
JSON `{"name", "parameters"}`, Mistral `[TOOL_CALLS][...]` or `[TOOL_CALLS]name[ARGS]{...}`).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from sealift.serving.structured import Constraint

__all__ = [
    "REASONING_PARSERS",
    "TOOL_PARSERS",
    "ToolCall",
    "ToolOutput",
    "detect_reasoning_parser",
    "detect_tool_parser",
    "named_constraint",
    "required_constraint",
    "template_renders_tools",
]

TOOL_PARSERS = ("hermes", "llama3_json", "mistral")
REASONING_PARSERS = ("qwen3", "deepseek_r1")

_START = {"hermes": "<tool_call>", "mistral": "[TOOL_CALLS]", "llama3_json": "<|python_tag|>"}
_HERMES_END = "</tool_call>"


def template_renders_tools(template: str) -> bool:
    """Whether a chat template reads `tools` at all (else tools given to it would vanish from the prompt)."""
    return re.search(r"\btools\b", template) is not None


def detect_tool_parser(template: str | None) -> str | None:
    """The vLLM tool parser a chat template's own markers point to, or None (no tool support seen)."""
    if not template or not template_renders_tools(template):
        return None
    if "<tool_call>" in template:
        return "hermes"  # Qwen2.5, Qwen3, Hermes 2/3, QwQ
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|python_tag|>" in template or ("ipython" in template and '"parameters"' in template):
        return "llama3_json"
    return None


def detect_reasoning_parser(template: str | None) -> str | None:
    """The vLLM reasoning parser for a template that opens a `<think>` section, or None."""
    if not template or "<think>" not in template:
        return None
    return "qwen3" if "enable_thinking" in template else "deepseek_r1"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text
    id: str = field(default_factory=new_call_id)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def delta(self, index: int) -> dict[str, Any]:
        return {"index": index, **self.to_dict()}


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    params = tool["function"].get("parameters")
    return params if isinstance(params, dict) else {"type": "object", "properties": {}}


def named_constraint(tool: dict[str, Any], index: int) -> Constraint:
    """The output is this function's arguments: its parameters' JSON schema."""
    fn = tool["function"]
    return Constraint("json", json.dumps(_parameters(tool)), f"tools.{index}.function.parameters",
                      strict=fn.get("strict") is not False)


def required_constraint(tools: list[dict[str, Any]], parallel: bool) -> Constraint:
    """The output is a JSON array of calls, each {"name": one of the tools, "arguments": its parameters}."""
    options = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                  "arguments": _parameters(t)},
                "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    schema: dict[str, Any] = {"type": "array", "minItems": 1,
                              "items": options[0] if len(options) == 1 else {"anyOf": options}}
    if not parallel:
        schema["maxItems"] = 1
    return Constraint("json", json.dumps(schema), "tools")


# --------------------------------------------------------------------------- parsing


def _call_of(obj: Any, args_key: str = "arguments") -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(args_key, obj.get("parameters", obj.get("arguments", {})))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _json_calls(text: str, args_key: str) -> list[ToolCall] | None:
    """One JSON object or an array of them (or several objects separated by ';'), each a call; else None."""
    text = text.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        try:
            parsed = [json.loads(part) for part in text.split(";") if part.strip()]
        except ValueError:
            return None
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = [_call_of(obj, args_key) for obj in items]
    return None if not calls or any(c is None for c in calls) else calls  # type: ignore[return-value]


def _mistral_calls(text: str) -> list[ToolCall] | None:
    """After [TOOL_CALLS]: a JSON array (v3 tokenizers) or name[ARGS]{...} (v11 and later), repeated."""
    text = text.strip()
    if text.startswith(("[", "{")):
        return _json_calls(text, "arguments")
    calls = []
    for part in text.split(_START["mistral"]):
        if not part.strip():
            continue
        name, sep, args = part.partition("[ARGS]")
        if not sep:
            return None
        try:
            calls.append(ToolCall(name.strip(), json.dumps(json.loads(args), ensure_ascii=False)))
        except ValueError:
            return None
    return calls or None


def parse_section(parser: str, text: str) -> list[ToolCall] | None:
    """The calls in a tool section (the text after the start marker; Hermes: inside one <tool_call>)."""
    if parser == "mistral":
        return _mistral_calls(text)
    return _json_calls(text, "parameters" if parser == "llama3_json" else "arguments")


def _partial_marker(text: str, marker: str) -> int:
    """Length of the longest end of `text` that begins `marker` (held back: the marker may be coming)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolOutput:
    """One choice's text turned into content and tool calls, as it streams and when it is whole."""

    def __init__(self, mode: str, parser: str | None = None, name: str | None = None) -> None:
        self.mode = mode  # none, auto, named, required
        self.parser = parser
        self.name = name  # named mode: the function
        self.calls: list[ToolCall] = []
        self._buffer = ""  # text not yet handed out
        self._in_call = False  # auto: inside a tool section
        self._named: ToolCall | None = None

    @property
    def plain(self) -> bool:
        return self.mode == "none" or (self.mode == "auto" and self.parser is None)

    # -- whole --------------------------------------------------------------

    def whole(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, tool calls) of a finished choice."""
        if self.plain:
            return text, []
        if self.mode == "named":
            self.calls = [ToolCall(self.name or "", text)]
            return None, self.calls
        if self.mode == "required":
            self.calls = _json_calls(text, "arguments") or []
            return (None, self.calls) if self.calls else (text, [])
        deltas = self.feed(text) + self.finish()
        content = "".join(d.get("content", "") for d in deltas)
        return (content or None) if self.calls else content, self.calls

    # -- streamed -----------------------------------------------------------

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Deltas ({"content"} or {"tool_calls"}) for newly generated text."""
        if self.plain:
            return [{"content": text}] if text else []
        if self.mode == "named":
            out = []
            if self._named is None:
                self._named = ToolCall(self.name or "", "")
                self.calls = [self._named]
                out.append({"tool_calls": [{"index": 0, "id": self._named.id, "type": "function",
                                            "function": {"name": self._named.name, "arguments": ""}}]})
            if text:
                out.append({"tool_calls": [{"index": 0, "function": {"arguments": text}}]})
            return out
        self._buffer += text
        if self.mode == "required":
            return []  # the whole array is parsed at the end
        return self._auto()

    def finish(self) -> list[dict[str, Any]]:
        """Deltas for what was held back, at the end of the choice."""
        if self.plain or self.mode == "named":
            return []
        rest, self._buffer = self._buffer, ""
        if self.mode == "required":
            calls = _json_calls(rest, "arguments")
            if not calls:
                return [{"content": rest}] if rest else []
            return [self._emit(c) for c in calls]
        if self._in_call:
            calls = parse_section(self.parser or "", rest)
            if calls:
                return [self._emit(c) for c in calls]
            marker = _START.get(self.parser or "", "")
            rest = marker + rest  # not a call after all: it was text
        elif self.parser == "llama3_json" and not self.calls:
            calls = _json_calls(rest, "parameters")
            if calls:
                return [self._emit(c) for c in calls]
        return [{"content": rest}] if rest else []

    def _emit(self, call: ToolCall) -> dict[str, Any]:
        self.calls.append(call)
        return {"tool_calls": [call.delta(len(self.calls) - 1)]}

    def _auto(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        parser = self.parser or ""
        start = _START[parser]
        while True:
            if self._in_call:
                if parser != "hermes":
                    return out  # the rest of the output is the tool section: parsed at the end
                end = self._buffer.find(_HERMES_END)
                if end < 0:
                    return out
                section, self._buffer = self._buffer[:end], self._buffer[end + len(_HERMES_END):]
                self._in_call = False
                calls = parse_section(parser, section)
                if calls:
                    out += [self._emit(c) for c in calls]
                else:
                    out.append({"content": start + section + _HERMES_END})
                continue
            if parser == "llama3_json" and not self.calls and self._buffer.lstrip().startswith("{"):
                return out  # a bare JSON call: decided at the end
            at = self._buffer.find(start)
            if at >= 0:
                before, self._buffer = self._buffer[:at], self._buffer[at + len(start):]
                if before and not (self.calls and not before.strip()):
                    out.append({"content": before})
                self._in_call = True
                continue
            hold = _partial_marker(self._buffer, start)
            if parser == "llama3_json" and not self.calls and not self._buffer.strip():
                hold = len(self._buffer)  # leading whitespace: a JSON call may follow
            send, self._buffer = self._buffer[: len(self._buffer) - hold], self._buffer[len(self._buffer) - hold:]
            if send and not (self.calls and not send.strip()):
                out.append({"content": send})
            return out

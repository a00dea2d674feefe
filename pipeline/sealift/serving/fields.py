"""Every field of OpenAI's (and vLLM's) chat and completions requests: honoured, or refused with a 400.

FIELDS is the one table (README's "Request fields" table is `markdown_table()`). A refused field
is a 400 naming it unless its value is one that changes nothing (`store: false`, `n: 1`); a field
in no table is logged and the request answered, as vLLM does (clients send vendor fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sealift.serving.errors import APIError, bad_request

__all__ = ["FIELDS", "check_refused", "markdown_table", "unknown_fields"]

CHAT, COMPLETIONS, BOTH = "chat", "completions", "both"


@dataclass(frozen=True)
class Field:
    name: str
    where: str  # chat, completions or both
    transformers: str  # what the transformers backend does, in README's words
    vllm: str = "yes"
    #: refused on the transformers backend unless the value is one of these (None: honoured)
    harmless: tuple[Any, ...] | None = None
    hint: str = ""


def _refused(name: str, where: str, harmless: tuple[Any, ...], vllm: str = "yes", hint: str = "") -> Field:
    return Field(name, where, "400 unless " + " / ".join(_show(v) for v in harmless), vllm, harmless, hint)


def _show(v: Any) -> str:
    return "absent" if v is None else ("`" + (str(v).lower() if isinstance(v, bool) else repr(v) if isinstance(
        v, str) else str(v)) + "`")


FIELDS: tuple[Field, ...] = (
    Field("model", BOTH, "yes (served name or store name/tag)"),
    Field("messages", CHAT, "yes (text parts; tool calls and tool results)"),
    Field("prompt", COMPLETIONS, "yes (one text or token-id prompt)"),
    Field("max_tokens / max_completion_tokens", BOTH, "yes"),
    Field("temperature, top_p, seed, n, stop", BOTH, "yes"),
    Field("stream, stream_options.include_usage", BOTH, "yes"),
    Field("logprobs, top_logprobs", BOTH, "yes (of the raw logits, up to 20)"),
    Field("echo", COMPLETIONS, "yes"),
    Field("presence_penalty, frequency_penalty", BOTH, "yes (over the generated tokens)"),
    Field("logit_bias", BOTH, "yes (-100 to 100, token ids)"),
    Field("response_format", BOTH, "yes: text, json_object, json_schema (strict), xgrammar, no free whitespace",
          "yes (xgrammar, no free whitespace)"),
    Field("tools, tool_choice", CHAT, "yes: none, auto (the family's parser), required, named (grammar-constrained)",
          "yes (--enable-auto-tool-choice, --tool-call-parser)"),
    Field("parallel_tool_calls", CHAT, "yes (false: at most one call)"),
    Field("user, metadata, safety_identifier, prompt_cache_key", BOTH, "accepted (nothing stored, no prefix cache)"),
    Field("top_k, min_p, repetition_penalty", BOTH, "yes"),
    Field("ignore_eos, min_tokens, stop_token_ids", BOTH, "yes"),
    Field("allowed_token_ids", BOTH, "yes"),
    Field("skip_special_tokens", BOTH, "yes"),
    Field("structured_outputs", BOTH, "yes: json, regex, choice, grammar, json_object"),
    Field("chat_template_kwargs, add_generation_prompt, continue_final_message", CHAT, "yes"),
    Field("cache_salt, request_id", BOTH, "accepted (no prefix cache to salt)"),
    _refused("best_of", COMPLETIONS, (None, 1)),
    _refused("suffix", COMPLETIONS, (None, ""), vllm="400"),
    _refused("store", CHAT, (None, False), vllm="ignored"),
    _refused("service_tier", BOTH, (None, "auto", "default"), vllm="ignored"),
    _refused("audio", CHAT, (None,), vllm="400"),
    _refused("modalities", CHAT, (None, ["text"]), vllm="ignored"),
    _refused("prediction", CHAT, (None,), vllm="ignored"),
    _refused("reasoning_effort", CHAT, (None,), vllm="yes (reasoning models)"),
    _refused("verbosity", CHAT, (None,), vllm="ignored"),
    _refused("web_search_options", CHAT, (None,), vllm="ignored"),
    _refused("functions", CHAT, (None,), vllm="400", hint="use tools"),
    _refused("function_call", CHAT, (None,), vllm="400", hint="use tool_choice"),
    _refused("echo", CHAT, (None, False)),
    _refused("use_beam_search", BOTH, (None, False)),
    _refused("length_penalty", BOTH, (None, 1, 1.0)),
    _refused("include_stop_str_in_output", BOTH, (None, False)),
    _refused("spaces_between_special_tokens", BOTH, (None, True)),
    _refused("truncate_prompt_tokens", BOTH, (None,)),
    _refused("prompt_logprobs", BOTH, (None,), hint="completions: echo with logprobs scores the prompt"),
    _refused("bad_words", BOTH, (None, [])),
    _refused("logits_processors", BOTH, (None, [])),
    _refused("return_tokens_as_token_ids", BOTH, (None, False)),
    _refused("return_token_ids", BOTH, (None, False)),
    _refused("add_special_tokens", CHAT, (None, False)),
    _refused("documents", CHAT, (None,)),
    _refused("chat_template", CHAT, (None,)),
    _refused("mm_processor_kwargs", BOTH, (None,)),
    _refused("priority", BOTH, (None, 0)),
    _refused("kv_transfer_params", BOTH, (None,)),
    _refused("vllm_xargs", BOTH, (None,)),
    _refused("prompt_embeds", COMPLETIONS, (None,)),
    _refused("guided_json", BOTH, (None,), vllm="400 (removed)", hint="use response_format or structured_outputs"),
    _refused("guided_regex", BOTH, (None,), vllm="400 (removed)", hint="use structured_outputs.regex"),
    _refused("guided_choice", BOTH, (None,), vllm="400 (removed)", hint="use structured_outputs.choice"),
    _refused("guided_grammar", BOTH, (None,), vllm="400 (removed)", hint="use structured_outputs.grammar"),
)

_REFUSED = {(f.name, w): f for f in FIELDS if f.harmless is not None
            for w in ((CHAT, COMPLETIONS) if f.where == BOTH else (f.where,))}
_KNOWN = {n.strip() for f in FIELDS for part in f.name.split(",") for n in part.split("/")} | {
    "stream_options", "max_completion_tokens", "top_logprobs", "tool_choice", "min_p", "repetition_penalty",
    "min_tokens", "stop_token_ids"}


def check_refused(extra: Mapping[str, Any], endpoint: str) -> None:
    """400 for the first field this backend cannot honour that the request sets to a value that matters."""
    for name, value in extra.items():
        f = _REFUSED.get((name, endpoint))
        if f is None or f.harmless is None or value in f.harmless:
            continue
        hint = f" ({f.hint})" if f.hint else ""
        raise _refusal(name, f"{name} is not supported by this server's transformers backend{hint}")


def _refusal(name: str, message: str) -> APIError:
    return bad_request(message, param=name, code="unsupported_field")


def unknown_fields(extra: Mapping[str, Any], endpoint: str) -> list[str]:
    """Fields in no table (logged, then ignored, as vLLM does)."""
    return sorted(n for n in extra if (n, endpoint) not in _REFUSED and n not in _KNOWN)


def markdown_table() -> str:
    """README's table: field, transformers backend, vLLM backend."""
    rows = ["| field | endpoint | transformers backend | vLLM backend |", "|---|---|---|---|"]
    for f in FIELDS:
        names = ", ".join(f"`{n.strip()}`" for n in f.name.split(","))
        rows.append(f"| {names} | {f.where} | {f.transformers} | {f.vllm} |")
    return "\n".join(rows)

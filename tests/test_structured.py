"""Structured outputs, tool calls and the request fields, end to end on the transformers backend.

One real server (`python -m sealift.serving` over a random Qwen2-style model whose chat template
renders tools, Qwen2.5's trimmed) and the real `openai` client. A random model writes valid JSON,
a valid call or one of the choices only because the grammar forces it, so each answer is checked
against its schema. Units: the field table against README, the tool parsers, the sampler.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel

from test_serving import Served, base_env, free_port, serving

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "ok": {"type": "boolean"}},
    "required": ["unit", "ok"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 9}},
                   "required": ["city", "days"], "additionalProperties": False}}}]


class Weather(BaseModel):
    unit: Literal["celsius", "fahrenheit"]
    ok: bool


@pytest.fixture(scope="module")
def served(tiny_qwen_tools: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("structured")
    port = free_port()
    cmd = [sys.executable, "-m", "sealift.serving", str(tiny_qwen_tools), "--name", "tiny", "--port", str(port)]
    info = dict(url=f"http://127.0.0.1:{port}", name="tiny", model_dir=tiny_qwen_tools, trust_remote_code=False)
    with serving(cmd, cwd=ROOT, env=base_env(), tmp=tmp, api_key=None, **info) as s:
        yield s


def check_weather_args(arguments: str) -> None:
    args = json.loads(arguments)
    assert set(args) == {"city", "days"} and args["city"] in ("Paris", "Rome") and 1 <= args["days"] <= 9
    assert "  " not in arguments and "\n" not in arguments and "\t" not in arguments


# --------------------------------------------------------------------------- structured outputs


def test_json_schema_with_enums_and_booleans(served: Served) -> None:
    r = served.client().chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER_SCHEMA, "strict": True}})
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    Weather.model_validate_json(text)
    assert set(json.loads(text)) == {"unit", "ok"} and "  " not in text


def test_parse_with_a_pydantic_model(served: Served) -> None:
    r = served.client().chat.completions.parse(model="tiny", messages=MESSAGES, max_tokens=60, response_format=Weather)
    assert isinstance(r.choices[0].message.parsed, Weather)


def test_json_object_and_vllm_structured_outputs(served: Served) -> None:
    c = served.client()
    r = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0,
                                  extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}})
    assert r.choices[0].message.content in ("yes", "no", "maybe")
    r = c.completions.create(model="tiny", prompt="Code:", max_tokens=12,
                             extra_body={"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}})
    text = r.choices[0].text
    assert len(text) == 6 and text[:3].isdigit() and text[3] == "-" and text[4:].isalpha()
    r = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=20, n=2, seed=1, temperature=1.0,
                                  extra_body={"structured_outputs": {"grammar": 'root ::= "a" [0-9] "z"'}})
    assert all(len(ch.message.content) == 3 and ch.message.content[1].isdigit() for ch in r.choices)
    r = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=200, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":  # a random model may fill max_tokens inside the object
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.startswith("{")


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "strin"}}}}}}, "response_format.json_schema.schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"structured_outputs": {"regex": "(ab"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"grammar": "root ::= foo"}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs.regex"),
])
def test_a_bad_constraint_is_a_400_naming_it(served: Served, body: dict, param: str) -> None:
    r = served.post("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


# --------------------------------------------------------------------------- tools


def test_named_tool_call_follows_the_parameters(served: Served) -> None:
    r = served.client().chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=60, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    check_weather_args(call.function.arguments)


def test_required_tool_call(served: Served) -> None:
    r = served.client().chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=80, tools=TOOLS,
                                                tool_choice="required", parallel_tool_calls=False)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    check_weather_args(call.function.arguments)


def test_streamed_tool_calls_reassemble(served: Served) -> None:
    c = served.client()
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        calls: dict[int, dict] = {}
        finish = None
        with c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=80, tools=TOOLS,
                                       tool_choice=choice, parallel_tool_calls=False, stream=True) as stream:
            for chunk in stream:
                for d in chunk.choices[0].delta.tool_calls or []:
                    got = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                    got["id"] = got["id"] or d.id
                    got["name"] = got["name"] or (d.function.name if d.function else None)
                    got["arguments"] += (d.function.arguments or "") if d.function else ""
                finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls" and list(calls) == [0], (choice, calls)
        assert calls[0]["id"].startswith("call_") and calls[0]["name"] == "get_weather"
        check_weather_args(calls[0]["arguments"])


HERMES = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "(Paris|Rome)", "days": [1-9]\}\}\n</tool_call>'


def test_auto_is_parsed_with_the_hermes_parser(served: Served) -> None:
    """tool_choice auto: the template's own format (forced here by a regex: the model is random) is parsed
    into tool_calls by the parser the template points to, whole and streamed."""
    c = served.client()
    kwargs = dict(model="tiny", messages=MESSAGES, max_tokens=80, tools=TOOLS,
                  extra_body={"structured_outputs": {"regex": "Sure\\. " + HERMES}})
    r = c.chat.completions.create(**kwargs)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Sure. "
    check_weather_args(choice.message.tool_calls[0].function.arguments)
    content, args, finish = "", "", None
    for chunk in c.chat.completions.create(stream=True, **kwargs):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for d in delta.tool_calls or []:
            args += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert (content, finish) == ("Sure. ", "tool_calls")
    check_weather_args(args)


def test_auto_without_a_call_is_content_and_tools_reach_the_prompt(served: Served) -> None:
    c = served.client()
    plain = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, temperature=0)
    auto = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, temperature=0, tools=TOOLS)
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the tools are in the prompt
    assert auto.choices[0].message.tool_calls is None and auto.choices[0].message.content


def test_a_tool_round_trip_renders_and_serves(served: Served) -> None:
    c = served.client()
    first = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=60, tools=TOOLS,
                                      tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    messages = [*MESSAGES, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}]
    r = c.chat.completions.create(model="tiny", messages=messages, max_tokens=5, tools=TOOLS, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > first.usage.prompt_tokens


def test_tools_on_a_template_without_them_is_400(tiny_llama: Path, tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "sealift.serving", str(tiny_llama), "--name", "tiny", "--port", str(port)]
    info = dict(url=f"http://127.0.0.1:{port}", name="tiny", model_dir=tiny_llama, trust_remote_code=False)
    with serving(cmd, cwd=ROOT, env=base_env(), tmp=tmp_path, api_key=None, **info) as s:
        r = s.post("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "tools": TOOLS})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools", r.text


@pytest.mark.parametrize("body, param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
])
def test_bad_tool_requests_are_400(served: Served, body: dict, param: str) -> None:
    r = served.post("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


# --------------------------------------------------------------------------- fields


@pytest.mark.parametrize("path, field, value", [
    ("/v1/chat/completions", "store", True),
    ("/v1/chat/completions", "functions", [{"name": "f"}]),
    ("/v1/chat/completions", "use_beam_search", True),
    ("/v1/chat/completions", "prediction", {"type": "content", "content": "x"}),
    ("/v1/completions", "prompt_logprobs", 1),
    ("/v1/completions", "guided_json", {"type": "object"}),
])
def test_a_known_field_the_backend_cannot_honour_is_400(served: Served, path: str, field: str, value) -> None:
    body = {"model": "tiny", "max_tokens": 2, field: value}
    body |= {"messages": MESSAGES} if "chat" in path else {"prompt": "Hello"}
    r = served.post(path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"]
    body[field] = {"store": False, "use_beam_search": False, "functions": None, "prediction": None,
                   "prompt_logprobs": None, "guided_json": None}[field]
    assert served.post(path, body).status_code == 200


def test_an_unknown_field_is_logged_and_answered(served: Served) -> None:
    r = served.post("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "max_tokens": 2,
                                              "x_vendor_thing": {"a": 1}})
    assert r.status_code == 200
    assert "x_vendor_thing" in served.log_tail()


def test_sampling_fields_change_the_output(served: Served) -> None:
    c = served.client()
    base = dict(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    plain = c.chat.completions.create(**base).choices[0].message.content
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(served.model_dir)
    target = tok.convert_tokens_to_ids("Paris") if "Paris" in tok.get_vocab() else 100
    biased = c.chat.completions.create(**base, logit_bias={str(target): 100})
    assert biased.choices[0].message.content == tok.decode([target]) * 12
    for extra in ({"repetition_penalty": 1.8}, {"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        out = c.chat.completions.create(**base, extra_body=extra).choices[0].message.content
        # the penalties act on repeats: the greedy text of a random model repeats, the penalised one less
        assert out != plain or len(set(plain)) == len(plain), extra
    allowed = c.chat.completions.create(**base, extra_body={"allowed_token_ids": [target]})
    assert allowed.choices[0].message.content == tok.decode([target]) * 12
    stop = c.chat.completions.create(**base, logit_bias={str(target): 100}, extra_body={"stop_token_ids": [target]})
    assert stop.choices[0].finish_reason == "stop" and stop.usage.completion_tokens == 1
    sampled = dict(model="tiny", messages=MESSAGES, max_tokens=12, temperature=1.0, seed=7,
                   extra_body={"top_k": 3, "min_p": 0.05})
    a, b = (c.chat.completions.create(**sampled).choices[0].message.content for _ in range(2))
    assert a == b
    one = c.chat.completions.create(**{**sampled, "extra_body": {"top_k": 1}}).choices[0].message.content
    assert one == plain  # top_k 1 is greedy


def test_readme_carries_the_field_table() -> None:
    from sealift.serving.fields import markdown_table

    assert markdown_table() in (ROOT / "README.md").read_text()


# --------------------------------------------------------------------------- units


def test_tool_parsers_whole_and_streamed() -> None:
    from sealift.serving.tools import ToolOutput, detect_reasoning_parser, detect_tool_parser

    text = 'Sure. <tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>\n' \
           '{"name": "g", "arguments": {}}\n</tool_call>'
    out = ToolOutput("auto", "hermes")
    deltas = [d for ch in text for d in out.feed(ch)] + out.finish()
    assert "".join(d.get("content", "") for d in deltas) == "Sure. "
    assert [c.name for c in out.calls] == ["f", "g"] and json.loads(out.calls[0].arguments) == {"a": 1}
    assert ToolOutput("auto", "hermes").whole("no <tool call here") == ("no <tool call here", [])
    assert ToolOutput("auto", "hermes").whole("<tool_call>{broken")[1] == []
    content, calls = ToolOutput("auto", "llama3_json").whole('{"name": "f", "parameters": {"x": "y"}}')
    assert content is None and calls[0].name == "f" and json.loads(calls[0].arguments) == {"x": "y"}
    content, calls = ToolOutput("auto", "mistral").whole('[TOOL_CALLS][{"name": "f", "arguments": {"a": 2}}]')
    assert content is None and json.loads(calls[0].arguments) == {"a": 2}
    content, calls = ToolOutput("auto", "mistral").whole('[TOOL_CALLS]f[ARGS]{"a": 3}')
    assert calls[0].name == "f" and json.loads(calls[0].arguments) == {"a": 3}
    assert detect_tool_parser("{% for tool in tools %}<tool_call>{% endfor %}") == "hermes"
    assert detect_tool_parser("{{ tools }}[TOOL_CALLS]") == "mistral"
    assert detect_tool_parser("{{ tools }}<|python_tag|>") == "llama3_json"
    assert detect_tool_parser("{{ messages }}") is None
    assert detect_reasoning_parser("<think>{% if enable_thinking %}") == "qwen3"
    assert detect_reasoning_parser("<think>") == "deepseek_r1"


def test_sampler_penalties_match_their_definitions() -> None:
    import torch

    from sealift.serving.backend import SamplingParams
    from sealift.serving.sampling import RowSampler

    params = SamplingParams(max_tokens=4, presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=2.0,
                            logit_bias=((3, 5.0),))
    s = RowSampler(torch, params, [1], vocab=6, device="cpu")
    s.accept(2)
    s.accept(2)
    logits = torch.tensor([[1.0, 2.0, 4.0, -1.0, 0.5, 0.0]])
    out = s.prepare(logits.clone())[0].tolist()
    # token 1: in the prompt (repetition /2); token 2: generated twice (repetition /2, 2 x 0.25 + 0.5); token 3: +5
    assert out == pytest.approx([1.0, 1.0, 4.0 / 2 - 0.5 - 0.5, 4.0, 0.5, 0.0])


def test_build_records_the_tool_parser_from_the_template(tiny_qwen_tools: Path, host) -> None:
    host.sealift("import", tiny_qwen_tools, "--name", "toolsy", "--json", check=True)
    bad = host.sealift("build", "toolsy", "--target", "cpu", "--no-golden", "--tool-parser", "no way")
    assert bad.code == 2 and "--tool-parser" in bad.err
    built = host.sealift("build", "toolsy", "--target", "cpu", "--no-golden", "--json", check=True).json()
    (config,) = Path(built["path"]).rglob("sealift_bento.json")
    data = json.loads(config.read_text())
    assert data["tool_parser"] == "hermes" and "reasoning_parser" not in data
    assert any(r.startswith("xgrammar==") for r in built["requirements"]), built["requirements"]

"""What evaluators need from the API, end to end: completions echo + logprobs (max_tokens 0 scores the
prompt), chat logprobs + top_logprobs, n > 1, and their bad inputs.

One real server (`python -m sealift.serving` over the tiny Llama model, continuous batching on)
and the real `openai` client; logprobs are checked against a full forward pass of the source
model here (log-softmax of the raw logits). The generate fallback (a model the batcher cannot
take) is checked in process against the batcher: same tokens, same logprobs.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from test_serving import MESSAGES, PROMPT, Served, base_env, free_port, serving

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = 256  # the tiny models' max_position_embeddings


@pytest.fixture(scope="module")
def served(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("logprobs")
    port = free_port()
    cmd = [sys.executable, "-m", "sealift.serving", str(tiny_llama), "--name", "tiny", "--port", str(port)]
    info = dict(url=f"http://127.0.0.1:{port}", name="tiny", model_dir=tiny_llama, trust_remote_code=False)
    with serving(cmd, cwd=ROOT, env=base_env(), tmp=tmp, api_key=None, **info) as s:
        yield s


@pytest.fixture(scope="module")
def reference(tiny_llama: Path):
    return make_reference(tiny_llama)


def make_reference(model_dir: Path):
    """(tokenizer, logprobs(ids) -> [len, vocab] log-softmax of the raw logits) of the source model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()

    def logprobs(ids: list[int]):
        with torch.inference_mode():
            return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)

    return tok, logprobs


def distinct(tok, token: int) -> bool:
    """Whether the token's text names it alone: bytes that are half a character all read U+FFFD, and a
    completion's top_logprobs is keyed by text (as vLLM's), so such tokens share one key."""
    return not tok.decode([token]).endswith("\ufffd")


def check_shape(lp, k: int) -> None:
    """vLLM's completion logprobs: parallel lists, offsets counting token texts, k + 1 alternatives at most."""
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    for i, (token, value, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True)):
        if i:
            assert lp.text_offset[i] == lp.text_offset[i - 1] + len(lp.tokens[i - 1])
        if value is None:
            assert top is None
            continue
        assert 1 <= len(top) <= k + 1 and top[token] == value and value <= 0


def test_echo_with_max_tokens_0_scores_the_prompt(served: Served, reference) -> None:
    """What lm-eval's loglikelihood sends: the prompt back with each token's logprob given the ones before."""
    tok, logprobs = reference
    r = served.client().completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=3)
    (choice,) = r.choices
    ids = tok(PROMPT)["input_ids"]
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 0
    lp = choice.logprobs
    check_shape(lp, 3)
    assert "".join(lp.tokens) == PROMPT and lp.text_offset[0] == 0
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing comes before the first token
    ref = logprobs(ids)
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(float(ref[i - 1, ids[i]]), abs=1e-4)
        best = ref[i - 1].topk(3)
        for tid, value in zip(best.indices.tolist(), best.values.tolist(), strict=True):
            if distinct(tok, tid):
                assert lp.top_logprobs[i][tok.decode([tid])] == pytest.approx(value, abs=1e-4)


def test_echo_with_a_completion_and_token_ids(served: Served, reference) -> None:
    tok, logprobs = reference
    client = served.client()
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0)
    ids = tok(PROMPT)["input_ids"]
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0, echo=True, logprobs=1)
    (choice,) = r.choices
    assert choice.text == PROMPT + plain.choices[0].text
    lp = choice.logprobs
    check_shape(lp, 1)
    assert len(lp.tokens) == len(ids) + 5 and lp.token_logprobs[0] is None
    generated: list[int] = []
    for _ in range(5):  # greedy, with the source model
        generated.append(int(logprobs(ids + generated)[-1].argmax()))
    assert lp.tokens[len(ids):] == [tok.decode([t]) for t in generated]
    ref = logprobs(ids + generated)
    for i in range(1, len(ids) + 5):  # prompt and completion alike: the raw model's logprobs
        want = float(ref[i - 1, (ids + generated)[i]])
        assert lp.token_logprobs[i] == pytest.approx(want, abs=1e-4)
        if i >= len(ids):  # greedy: the chosen token is the most likely one
            assert lp.token_logprobs[i] == pytest.approx(float(ref[i - 1].max()), abs=1e-4)


def test_streamed_logprobs_are_the_whole_ones_in_pieces(served: Served) -> None:
    client = served.client()
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, echo=True, logprobs=2)
    whole = client.completions.create(**kwargs).choices[0]
    tokens, values, tops, text = [], [], [], ""
    for chunk in client.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            if c.logprobs:  # as vLLM: a chunk's offsets start at the length of the text streamed before it
                assert c.logprobs.text_offset[0] == len(text)
                tokens += c.logprobs.tokens
                values += c.logprobs.token_logprobs
                tops += c.logprobs.top_logprobs
            text += c.text
    assert text == whole.text
    assert tokens == whole.logprobs.tokens
    assert values[0] is None and values[1:] == pytest.approx(whole.logprobs.token_logprobs[1:], abs=1e-5)
    assert tops[1:] == whole.logprobs.top_logprobs[1:]
    scored = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in scored if c.choices) == PROMPT


def test_chat_logprobs_and_top_logprobs(served: Served, reference) -> None:
    client = served.client()
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(e.token for e in content).startswith(r.choices[0].message.content)
    for e in content:
        assert e.bytes == list(e.token.encode("utf-8", errors="replace"))
        assert len(e.top_logprobs) == 3
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob)  # greedy: the best one was chosen
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0,
                                            logprobs=True, top_logprobs=3, stream=True)
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.top_logprobs[1].token) for e in streamed] == [(e.token, e.top_logprobs[1].token)
                                                                       for e in content]
    bare = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, logprobs=True)
    assert all(e.top_logprobs == [] for e in bare.choices[0].logprobs.content)
    assert client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2).choices[0].logprobs is None


def test_logprobs_are_of_the_raw_logits_not_the_tempered_ones(served: Served, reference) -> None:
    """As vLLM's default: temperature changes what is sampled, not the reported logprobs."""
    tok, logprobs = reference
    ids = tok(PROMPT)["input_ids"]
    r = served.client().completions.create(model="tiny", prompt=ids, max_tokens=1, temperature=1.7, seed=3,
                                           logprobs=5)
    lp = r.choices[0].logprobs
    ref = logprobs(ids)[-1]
    best = ref.topk(5)
    top = lp.top_logprobs[0]
    for tid, value in zip(best.indices.tolist(), best.values.tolist(), strict=True):
        if distinct(tok, tid):
            assert top[tok.decode([tid])] == pytest.approx(value, abs=1e-4)
    assert math.isclose(sum(math.exp(v) for v in ref.tolist()), 1.0, rel_tol=1e-4)


def test_n_choices_with_a_seed_are_reproducible(served: Served) -> None:
    client = served.client()
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=6, temperature=1.0, seed=11, n=4,
                  extra_body={"ignore_eos": True})
    first, again = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2, 3]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len({c.text for c in first.choices}) > 1  # each choice samples with its own seed
    assert first.usage.completion_tokens == 4 * 6  # every choice counts
    one = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=1.0, seed=11,
                                    extra_body={"ignore_eos": True})
    assert one.choices[0].text == first.choices[0].text  # choice 0 is the request with n=1
    greedy = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, temperature=0, n=3)
    assert len({c.message.content for c in greedy.choices}) == 1 and len(greedy.choices) == 3
    texts: dict[int, str] = {}
    finished = set()
    for chunk in client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, temperature=1.0,
                                                seed=5, n=2, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finished.add(c.index)
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, temperature=1.0, seed=5, n=2)
    assert finished == {0, 1} and [texts[0], texts[1]] == [c.message.content for c in whole.choices]


BAD = [
    ("top_logprobs", "/v1/chat/completions", {"messages": MESSAGES, "top_logprobs": 2}),
    ("top_logprobs", "/v1/chat/completions", {"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}),
    ("top_logprobs", "/v1/chat/completions", {"messages": MESSAGES, "logprobs": True, "top_logprobs": -1}),
    ("logprobs", "/v1/chat/completions", {"messages": MESSAGES, "logprobs": 3}),
    ("logprobs", "/v1/completions", {"prompt": PROMPT, "logprobs": 21}),
    ("logprobs", "/v1/completions", {"prompt": PROMPT, "logprobs": -1}),
    ("logprobs", "/v1/completions", {"prompt": PROMPT, "logprobs": True}),
    ("n", "/v1/completions", {"prompt": PROMPT, "n": 17}),
    ("n", "/v1/chat/completions", {"messages": MESSAGES, "n": 17}),
    ("n", "/v1/chat/completions", {"messages": MESSAGES, "n": 0}),
    ("max_tokens", "/v1/completions", {"prompt": PROMPT, "max_tokens": 0}),
    ("max_tokens", "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 0}),
    ("prompt", "/v1/completions", {"prompt": "fox " * CONTEXT, "echo": True, "max_tokens": 0, "logprobs": 1}),
    ("prompt", "/v1/completions", {"prompt": list(range(CONTEXT + 1)), "echo": True, "max_tokens": 0}),
]


@pytest.mark.parametrize("param,path,body", BAD, ids=[f"{i}-{p}" for i, (p, _, _) in enumerate(BAD)])
def test_bad_evaluator_fields_are_400(served: Served, param: str, path: str, body: dict) -> None:
    r = served.post(path, {"model": "tiny", **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"].split(".")[0] == param, error
    assert error["message"]


def test_a_prompt_filling_the_context_can_be_scored(served: Served) -> None:
    r = served.post("/v1/completions", {"model": "tiny", "prompt": list(range(CONTEXT)), "echo": True,
                                        "max_tokens": 0, "logprobs": 0})
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"][0]["logprobs"]["tokens"]) == CONTEXT


# --------------------------------------------------------------------------- the generate fallback


def test_the_generate_fallback_gives_the_batchers_logprobs(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model the batcher cannot take is served by generate: same tokens, same logprobs, prompt scores and n."""
    import sealift.serving.batching as batching
    from sealift.serving.app import create_app
    from sealift.serving.config import ServeConfig
    from sealift.serving.transformers_backend import TransformersBackend

    bodies = [
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 0, "echo": True, "logprobs": 2}),
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 5, "echo": True, "logprobs": 2, "temperature": 0}),
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 5, "logprobs": 1, "temperature": 1, "seed": 4, "n": 2}),
        ("/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 5, "logprobs": True, "top_logprobs": 2}),
    ]

    def answers() -> list[dict]:
        backend = TransformersBackend(tiny_llama)
        backend.start()
        assert backend.wait_ready(120), backend.load_error
        app = create_app(ServeConfig(model_tag="tiny", served_model_name="tiny", backend="transformers"), backend)

        async def ask() -> list[dict]:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as c:
                out = []
                for path, body in bodies:
                    r = await c.post(path, json={"model": "tiny", **body})
                    assert r.status_code == 200, r.text
                    out.append(r.json()["choices"])
                return out

        try:
            return [backend.batching_off, *asyncio.run(ask())]
        finally:
            backend.close()

    batched = answers()
    monkeypatch.setattr(batching, "probe", lambda model: "forced off for this test")
    fallback = answers()
    assert batched[0] is None and fallback[0] == "forced off for this test"
    assert _close(fallback[1:], batched[1:]), (json.dumps(fallback[1:])[:2000], json.dumps(batched[1:])[:2000])


def _close(a, b) -> bool:
    """Equal but for float rounding (the fallback's forward passes have other shapes)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, abs_tol=1e-4)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_n_and_logprobs_pass_through_the_vllm_route(bento_vllm_standin: Served) -> None:
    """BentoML's proxy hands evaluators' fields to vLLM as they are (the stand-in serves sealift's app)."""
    s = bento_vllm_standin
    client = s.client()
    r = client.completions.create(model=s.name, prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    assert r.choices[0].text == PROMPT and r.choices[0].logprobs.token_logprobs[0] is None
    check_shape(r.choices[0].logprobs, 2)
    c = client.chat.completions.create(model=s.name, messages=MESSAGES, max_tokens=3, temperature=1, seed=3, n=2,
                                       logprobs=True, top_logprobs=2)
    assert [x.index for x in c.choices] == [0, 1]
    assert all(len(e.top_logprobs) == 2 for x in c.choices for e in x.logprobs.content)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=s.name, prompt=PROMPT, logprobs=21)


from test_serving import bento_store, bento_vllm_standin  # noqa: E402,F401  (the vLLM route's fixtures)

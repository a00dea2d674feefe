"""Bounded memory per request, the prefill budget, and one behaviour on both serving paths.

Over HTTP (`python -m sealift.serving`, the real openai client and httpx): the worst request the
model's context allows (the whole context echoed with 20 logprobs a token) is scored chunk by
chunk and the server stays up; a request whose KV cache can never fit SEALIFT_MEMORY_BUDGET is a
400 naming the budget, one that fits only once others finish is a 429. In-process: the
one-at-a-time path (`generate`) and the continuous batcher give the same tokens, logprobs and
finish reasons for the same seed, and say which path serves.
"""

from __future__ import annotations

import asyncio
import json
import sys

from pathlib import Path

import httpx
import pytest
import torch
from test_serving import ROOT, base_env, free_port, serving

from sealift.serving.backend import GenerationRequest, SamplingParams
from sealift.serving.batching import kv_bytes_per_token, scoring_rows
from sealift.serving.transformers_backend import TransformersBackend

CONTEXT = 256  # the tiny models' context (scripts/make_tiny_model.py)


def reference_prompt_logprobs(model_dir: Path, ids: list[int]) -> list[float]:
    """Each prompt token's logprob from one full forward pass in float32 (what the server chunks)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32).eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return logp.gather(1, torch.tensor(ids[1:]).view(-1, 1)).view(-1).tolist()


def _sizes(model_dir: Path) -> tuple[int, int]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    return kv_bytes_per_token(config, 4), int(config.vocab_size)


def budget_of(model_dir: Path) -> tuple[int, int]:
    """(the memory budget the server gets, one full context of KV cache): one prompt-scoring chunk plus 1.5
    full contexts, so the worst echo fits, and `budget // full + 1` full-context choices never do."""
    kv, vocab = _sizes(model_dir)
    score = 2 * 4 * vocab * min(CONTEXT, scoring_rows(vocab))
    return int(1.5 * kv * CONTEXT) + score, kv * CONTEXT


@pytest.fixture(scope="module")
def budget_server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model with a prefill budget of 7 tokens and a memory budget of budget_of()."""
    budget, _ = budget_of(tiny_llama)
    port = free_port()
    tmp = tmp_path_factory.mktemp("budget")
    cmd = [sys.executable, "-m", "sealift.serving", str(tiny_llama), "--name", "tiny", "--port", str(port),
           "--dtype", "float32"]
    env = base_env(SEALIFT_PREFILL_TOKENS="7", SEALIFT_MEMORY_BUDGET=str(budget))
    with serving(cmd, cwd=ROOT, env=env, tmp=tmp, api_key=None, url=f"http://127.0.0.1:{port}", name="tiny",
                 model_dir=tiny_llama, trust_remote_code=False) as served:
        yield served


def test_the_worst_prompt_the_context_allows_is_scored_in_chunks(budget_server, tiny_llama: Path) -> None:
    ids = [(37 * i + 11) % 300 + 3 for i in range(CONTEXT)]
    r = budget_server.post("/v1/completions", {"model": "tiny", "prompt": ids, "echo": True, "logprobs": 20,
                                               "max_tokens": 0})
    assert r.status_code == 200, r.text
    got = r.json()["choices"][0]["logprobs"]
    assert len(got["token_logprobs"]) == CONTEXT and got["token_logprobs"][0] is None
    assert all(2 <= len(top) <= 21 for top in got["top_logprobs"][1:])  # keyed by text: equal texts merge
    want = reference_prompt_logprobs(tiny_llama, ids)
    assert got["token_logprobs"][1:] == pytest.approx(want, abs=2e-4)
    # the server stays up and serves on
    assert httpx.get(f"{budget_server.url}/readyz", timeout=10).status_code == 200
    again = budget_server.client().completions.create(model="tiny", prompt="The quick brown fox", max_tokens=4,
                                                      temperature=0)
    assert again.choices[0].finish_reason in ("length", "stop")


def test_a_request_that_never_fits_is_a_400_naming_the_budget(budget_server, tiny_llama: Path) -> None:
    budget, full = budget_of(tiny_llama)
    r = budget_server.post("/v1/completions", {"model": "tiny", "prompt": [5], "n": budget // full + 1,
                                               "max_tokens": CONTEXT - 1})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "memory_budget_exceeded" and err["param"] == "prompt"
    assert "memory budget" in err["message"] and "SEALIFT_MEMORY_BUDGET" in err["message"]


def test_a_request_that_fits_only_later_is_a_429_then_served(budget_server, tiny_llama: Path) -> None:
    """While a request holding as many full contexts as the budget has runs, one more full context is a 429
    (it would fit alone); once that request is done, the same request is served."""
    import threading

    budget, full = budget_of(tiny_llama)
    eos = json.loads((tiny_llama / "generation_config.json").read_text())["eos_token_id"]
    held_body = {"model": "tiny", "prompt": [5], "max_tokens": CONTEXT - 1, "ignore_eos": True, "n": budget // full}
    # the same memory need, but done in one token (EOS made certain) when it is let in
    probe = {"model": "tiny", "prompt": [5], "max_tokens": CONTEXT - 1, "logit_bias": {str(eos): 100}}
    held: dict = {}
    worker = threading.Thread(target=lambda: held.update(r=budget_server.post("/v1/completions", held_body)))
    worker.start()
    while not budget_server.client().models.list().data[0].model_dump()["sealift"]["memory_held"]:
        assert worker.is_alive()  # it holds its memory from admission to its last token
    seen = []
    while worker.is_alive():
        r = budget_server.post("/v1/completions", probe)
        seen.append(r.status_code)
        if r.status_code == 429:
            err = r.json()["error"]
            assert err["code"] == "memory_busy" and "held by running requests" in err["message"], err
    worker.join()
    assert held["r"].status_code == 200, held["r"].text
    assert 429 in seen, seen
    after = budget_server.post("/v1/completions", probe)
    assert after.status_code == 200 and after.json()["choices"][0]["finish_reason"] == "stop", after.text


def test_the_card_says_which_path_serves_and_the_sizing(budget_server) -> None:
    card = budget_server.client().models.list().data[0].model_dump()
    info = card["sealift"]
    assert info["path"] == "continuous-batching" and info["prefill_tokens"] == 7
    assert info["threads"] >= 1 and info["max_batch"] >= 1 and info["memory_budget"] > 0


def test_long_prompts_under_a_prefill_budget_give_generates_answer(budget_server, tiny_llama: Path) -> None:
    """Prompts read 7 tokens a step beside running streams still continue as plain greedy generate does."""
    from concurrent.futures import ThreadPoolExecutor

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True, dtype=torch.float32).eval()
    prompts = [[(13 * i + 7 * k) % 300 + 3 for i in range(40 + 9 * k)] for k in range(4)]
    with torch.inference_mode():
        want = [model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=12, min_new_tokens=12)[0, len(p):]
                .tolist() for p in prompts]

    def ask(p: list[int]) -> list[int]:
        r = budget_server.post("/v1/completions", {"model": "tiny", "prompt": p, "max_tokens": 12, "ignore_eos": True,
                                                   "logprobs": 0, "temperature": 0})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["logprobs"]["tokens"]

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(ask, prompts))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True)
    assert got == [[tok.decode([t], skip_special_tokens=False) for t in w] for w in want]


# --------------------------------------------------------------------------- both paths


def _run_all(backend: TransformersBackend, requests: list[GenerationRequest]) -> list[tuple]:
    async def one(request: GenerationRequest) -> tuple:
        text, finish, tokens, lps = "", None, 0, []
        async for chunk in backend.generate(request):
            text += chunk.text
            lps += [(e.token, round(e.logprob, 4)) for e in chunk.logprobs]
            if chunk.finish_reason:
                finish, tokens = chunk.finish_reason, chunk.completion_tokens
        return text, finish, tokens, lps

    async def every() -> list[tuple]:
        return [await one(r) for r in requests]  # one after another: the fallback's order, the batcher alone

    return asyncio.run(every())


def test_one_at_a_time_and_batched_give_the_same_outputs_for_the_same_seed(tiny_llama: Path) -> None:
    batched, single = TransformersBackend(tiny_llama, dtype="float32"), TransformersBackend(
        tiny_llama, dtype="float32", batching=False)
    for b in (batched, single):
        b.start()
    try:
        assert batched.wait_ready(120) and single.wait_ready(120), (batched.load_error, single.load_error)
        assert batched.engine_info()["path"] == "continuous-batching"
        info = single.engine_info()
        assert info["path"] == "one-at-a-time" and "SEALIFT_BATCHING" in info["why"]
        eos = min(batched._eos_ids)
        prompt = batched.encode_prompt("The quick brown fox")
        sampled = dict(max_tokens=24, temperature=1.3, top_p=0.9, top_k=40, logprobs=2)
        requests = [
            GenerationRequest(prompt, SamplingParams(max_tokens=20, logprobs=1)),  # greedy
            GenerationRequest(prompt, SamplingParams(**sampled, seed=1234)),
            GenerationRequest(prompt, SamplingParams(**sampled, seed=1234)),  # the same seed again: the same text
            GenerationRequest(prompt, SamplingParams(**sampled, seed=99, presence_penalty=0.5)),
            # EOS made likely from the first step: it ends there ("stop"), and not before min_tokens
            GenerationRequest(prompt, SamplingParams(max_tokens=20, logit_bias=((eos, 50.0),))),
            GenerationRequest(prompt, SamplingParams(max_tokens=20, min_tokens=3, logit_bias=((eos, 50.0),))),
            GenerationRequest(prompt, SamplingParams(max_tokens=20, temperature=0.8, seed=7,
                                                     logit_bias=((eos, 4.0),))),
        ]
        a, b = _run_all(batched, requests), _run_all(single, requests)
    finally:
        batched.close()
        single.close()
    assert a == b
    assert a[1] == a[2] and a[1] != a[3]
    assert a[4][1:3] == ("stop", 1) and a[5][1:3] == ("stop", 4)
    assert a[0][1] == "length" and a[0][2] == 20

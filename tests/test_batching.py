"""Continuous batching in the transformers backend (sealift.serving.batching).

In-process, over the real tiny models: a request's greedy tokens are those of plain
`model.generate(do_sample=False)` whether it runs alone or joins a batch of prompts of
other lengths at any step; stop strings, max_tokens, cancellation and seeds keep their
meaning per request; rows leave and the cache shrinks. Over HTTP (`python -m
sealift.serving`): concurrent clients share forward passes under --max-batch and each
still gets generate's answer; a model whose code takes no cache is served one request
at a time, and the log says so.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from test_serving import ROOT, base_env, free_port, serving

from sealift.core.errors import UserError
from sealift.serving.backend import Chunk, GenerationRequest, SamplingParams
from sealift.serving.batching import Batcher, default_max_batch, probe
from sealift.serving.config import BentoConfig, ServeConfig, max_batch_from_env
from sealift.serving.transformers_backend import TransformersBackend


class Job:
    """What the backend hands the batcher: the request, a cancel flag, and where chunks go."""

    def __init__(self, ids: list[int], **params) -> None:
        self.request = GenerationRequest(list(ids), SamplingParams(**params))
        self.cancelled = threading.Event()
        self.chunks: list[Chunk | BaseException] = []

    def post(self, item: Chunk | BaseException) -> None:
        self.chunks.append(item)

    @property
    def done(self) -> Chunk | None:
        last = self.chunks[-1] if self.chunks else None
        return last if isinstance(last, Chunk) and last.finish_reason else None

    def tokens(self) -> list[int]:
        """The generated ids, read back from the text of `ids_decode`."""
        return [int(t) for t in "".join(c.text for c in self.chunks).split()]


def ids_decode(ids) -> str:
    """A decode that shows token ids ("12 7 "): exactly additive, so the text gives back the tokens."""
    return "".join(f"{i} " for i in ids)


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_qwen_sharded"])
def model(request: pytest.FixtureRequest):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    path = request.getfixturevalue(request.param)
    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()


def generate_greedy(model, ids: list[int], n: int, *, exactly: bool = True) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n,
                             **({"min_new_tokens": n} if exactly else {}))
    return out[0, len(ids):].tolist()


def prompts_of(model, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, model.config.vocab_size) for _ in range(n)] for n in lengths]


def batcher_for(model, max_batch: int = 16) -> Batcher:
    return Batcher(model, eos_ids={model.generation_config.eos_token_id}, decode=ids_decode,
                   max_batch=max_batch, interval=0.0)


def run(batcher: Batcher, jobs: list[Job], *, join_every: int = 0, seed: int = 0) -> None:
    """Admit the jobs (one every `join_every` steps, or at random steps when 0) and step until all are done."""
    rng = random.Random(seed)
    pending, steps = list(jobs), 0
    while pending or batcher.rows:
        while pending and batcher.free and (not batcher.rows or (
                steps % join_every == 0 if join_every else rng.random() < 0.3)):
            batcher.admit(pending.pop(0))
            if join_every != 1:
                break
        if batcher.rows:
            batcher.step()
            steps += 1


# --------------------------------------------------------------------------- exactness


def test_probe_accepts_the_tiny_models(model) -> None:
    assert probe(model) is None


@pytest.mark.parametrize("join_every", [0, 1, 3])
def test_greedy_tokens_alone_equal_in_a_batch(model, join_every: int) -> None:
    lengths = [1, 2, 3, 5, 7, 9, 12, 20, 33, 50]
    prompts = prompts_of(model, lengths, seed=join_every)
    n = 32
    expected = [generate_greedy(model, p, n) for p in prompts]
    jobs = [Job(p, max_tokens=n, min_tokens=n) for p in prompts]
    batcher = batcher_for(model)
    run(batcher, jobs, join_every=join_every, seed=join_every)
    assert batcher.peak_rows > 1
    for job, want, length in zip(jobs, expected, lengths, strict=True):
        assert job.tokens() == want, f"prompt of {length} tokens"
        assert (job.done.finish_reason, job.done.completion_tokens) == ("length", n)


def test_greedy_alone_equals_in_a_batch_with_end_of_sequence(model) -> None:
    """Without ignore_eos: a row that makes EOS leaves with "stop"; the rest carry on unchanged."""
    prompts = prompts_of(model, [4, 11, 6, 25, 3, 8], seed=7)
    n = 60
    expected = [generate_greedy(model, p, n, exactly=False) for p in prompts]
    jobs = [Job(p, max_tokens=n) for p in prompts]
    run(batcher_for(model, max_batch=4), jobs)
    eos = model.generation_config.eos_token_id
    for job, want in zip(jobs, expected, strict=True):
        assert job.tokens() == [t for t in want if t != eos]  # ids_decode shows EOS too: it is never sent
        assert job.done.completion_tokens == len(want)
        assert job.done.finish_reason == ("stop" if want[-1] == eos else "length")


# --------------------------------------------------------------------------- per-request behaviour


def test_max_tokens_stop_strings_and_cancellation_per_row(model) -> None:
    prompts = prompts_of(model, [6, 9, 14, 3], seed=3)
    full = [generate_greedy(model, p, 24) for p in prompts]
    stop = f"{full[1][5]} "  # the text of the 6th token
    short = Job(prompts[0], max_tokens=5, min_tokens=5)
    stopped = Job(prompts[1], max_tokens=24, min_tokens=24, stop=(stop,))
    cancelled = Job(prompts[2], max_tokens=24, min_tokens=24)
    other = Job(prompts[3], max_tokens=24, min_tokens=24)
    batcher = batcher_for(model)
    for job in (short, stopped, cancelled, other):
        batcher.admit(job)
    for step in range(30):
        if step == 3:
            cancelled.cancelled.set()
        if batcher.rows:
            batcher.step()
    assert not batcher.rows and batcher.cache is None and batcher.mask is None
    assert short.tokens() == full[0][:5] and short.done.finish_reason == "length"
    text = ids_decode(full[1])
    assert "".join(c.text for c in stopped.chunks) == text[: text.find(stop)]
    assert stopped.done.finish_reason == "stop"
    assert cancelled.done is None  # nothing more is sent to a client that went away
    assert other.tokens() == full[3] and other.done.completion_tokens == 24


def test_seeded_sampling_is_the_same_alone_or_in_a_batch(model) -> None:
    prompts = prompts_of(model, [5, 8, 13], seed=11)
    params = dict(max_tokens=20, min_tokens=20, temperature=1.3, top_p=0.9, top_k=50, seed=1234)
    alone = Job(prompts[0], **params)
    run(batcher_for(model), [alone])
    crowd = [Job(prompts[1], **{**params, "seed": 1}), Job(prompts[0], **params), Job(prompts[2], max_tokens=20)]
    run(batcher_for(model), crowd, join_every=1)
    assert crowd[1].tokens() == alone.tokens()
    other_seed = Job(prompts[0], **{**params, "seed": 99})
    run(batcher_for(model), [other_seed])
    assert other_seed.tokens() != alone.tokens()


def test_cache_shrinks_when_the_longest_row_leaves(model) -> None:
    long_prompt, short_prompt = prompts_of(model, [60, 4], seed=5)
    batcher = batcher_for(model)
    long_job = Job(long_prompt, max_tokens=2, min_tokens=2)
    short_job = Job(short_prompt, max_tokens=10, min_tokens=10)
    batcher.admit(long_job)
    batcher.admit(short_job)
    assert batcher.mask.shape == (2, 60)
    batcher.step()  # the long row makes its 2nd token and leaves
    assert long_job.done is not None and len(batcher.rows) == 1
    row = batcher.rows[0]
    assert batcher.mask.shape == (1, row.length) == (1, 5)
    assert all(layer.keys.shape[0] == 1 and layer.keys.shape[2] == row.length for layer in batcher.cache.layers)


# --------------------------------------------------------------------------- the backend


def test_backend_batches_concurrent_requests_and_keeps_generates_answers(tiny_llama: Path) -> None:
    backend = TransformersBackend(tiny_llama, max_batch=3)
    backend.start()
    try:
        assert backend.wait_ready(120), backend.load_error
        assert backend.batching_off is None and backend._batcher.max_batch == 3
        prompts = prompts_of(backend.model, [3, 17, 8, 30, 1, 12, 5], seed=21)
        expected = [backend.decode(generate_greedy(backend.model, p, 16)) for p in prompts]

        async def ask(ids: list[int]) -> str:
            pieces = [c.text async for c in backend.generate(GenerationRequest(ids, SamplingParams(max_tokens=16,
                                                                                                   min_tokens=16)))]
            return "".join(pieces)

        async def main() -> list[str]:
            return await asyncio.gather(*(ask(p) for p in prompts))

        assert asyncio.run(main()) == expected
        assert backend._batcher.peak_rows == 3  # shared passes, never more than max_batch
    finally:
        backend.close()


def test_the_models_eos_list_is_not_changed(tiny_llama: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama, model_dir)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    pad = gen["pad_token_id"]
    gen["eos_token_id"] = [pad]  # a list, without the tokenizer's EOS
    (model_dir / "generation_config.json").write_text(json.dumps(gen))
    backend = TransformersBackend(model_dir)
    backend.load()
    assert backend.model.generation_config.eos_token_id == [pad]
    assert backend._eos_ids == {pad, backend.tokenizer.eos_token_id}


def test_prompts_are_tokenized_off_the_event_loop(tiny_llama: Path) -> None:
    from starlette.testclient import TestClient

    from sealift.serving.app import create_app

    seen: list[bool] = []

    class Recording(TransformersBackend):
        def encode_chat(self, messages, **kwargs):
            seen.append(_in_event_loop())
            return super().encode_chat(messages, **kwargs)

        def encode_prompt(self, prompt):
            seen.append(_in_event_loop())
            return super().encode_prompt(prompt)

    backend = Recording(tiny_llama)
    backend.start()
    try:
        assert backend.wait_ready(120)
        config = ServeConfig(model_tag="tiny", served_model_name="tiny")
        with TestClient(create_app(config, backend)) as http:
            chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
            assert http.post("/v1/chat/completions", json=chat).status_code == 200
            assert http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3}).status_code == 200
        assert seen == [False, False]
    finally:
        backend.close()


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# --------------------------------------------------------------------------- sizing


def test_default_max_batch_follows_cores_and_memory(model) -> None:
    config = model.config
    assert default_max_batch(config, 256, cores=2, memory=64 << 30) == 16
    assert default_max_batch(config, 256, cores=1, memory=64 << 30) == 8
    per_row = 2 * config.num_hidden_layers * config.num_key_value_heads * (config.hidden_size //
                                                                           config.num_attention_heads) * 4 * 256
    assert default_max_batch(config, 256, cores=16, memory=per_row * 10) == 5  # half the memory, 5 rows
    assert default_max_batch(config, 256, cores=2, memory=0) == 1


def test_max_batch_comes_from_the_environment() -> None:
    assert max_batch_from_env({}) is None
    assert max_batch_from_env({"SEALIFT_MAX_BATCH": "12"}) == 12
    bento = BentoConfig(model_tag="t:1", served_model_name="t")
    assert ServeConfig.from_env(bento, {"SEALIFT_MAX_BATCH": "3"}).max_batch == 3
    for bad in ("0", "many", "-2"):
        with pytest.raises(UserError, match="SEALIFT_MAX_BATCH"):
            max_batch_from_env({"SEALIFT_MAX_BATCH": bad})


def test_bad_max_batch_is_one_line_and_exit_2(tiny_llama: Path) -> None:
    import subprocess

    for args, env in ((["--max-batch", "0"], {}), ([], {"SEALIFT_MAX_BATCH": "lots"})):
        p = subprocess.run([sys.executable, "-m", "sealift.serving", str(tiny_llama), *args],
                           env=base_env(**env), capture_output=True, text=True, timeout=60)
        assert p.returncode == 2
        assert ("--max-batch" in p.stderr or "SEALIFT_MAX_BATCH" in p.stderr) and "Traceback" not in p.stderr


# --------------------------------------------------------------------------- over HTTP


NO_CACHE_MODELING = '''\
"""A remote-code model that recomputes the whole sequence each step: it takes no cache."""
from transformers import LlamaForCausalLM

from .configuration_tiny import TinyConfig
from .tiny_layers import describe


class TinyForCausalLM(LlamaForCausalLM):
    config_class = TinyConfig

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        for key in ("cache", "past_key_values", "position_ids", "cache_position", "logits_to_keep"):
            kwargs.pop(key, None)
        kwargs["use_cache"] = False
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def sealift_describe(self) -> str:
        return describe(self.config)
'''


@pytest.fixture(scope="module")
def no_cache_model(tiny_custom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("no-cache") / "model"
    shutil.copytree(tiny_custom, out)
    (out / "modeling_tiny.py").write_text(NO_CACHE_MODELING)
    gen = json.loads((out / "generation_config.json").read_text())
    (out / "generation_config.json").write_text(json.dumps({**gen, "use_cache": False}))
    return out


def _greedy_texts(model_dir: Path, trust: bool, prompts: list[str], n: int, modules: Path) -> list[str]:
    """generate's greedy text for each prompt, in one subprocess (remote code loads with its own modules cache)."""
    import subprocess

    code = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "d, trust, prompts, n = sys.argv[1], sys.argv[2] == '1', json.loads(sys.argv[3]), int(sys.argv[4])\n"
        "tok = AutoTokenizer.from_pretrained(d, local_files_only=True, trust_remote_code=trust)\n"
        "m = AutoModelForCausalLM.from_pretrained(d, local_files_only=True, trust_remote_code=trust).eval()\n"
        "texts = []\n"
        "for prompt in prompts:\n"
        "    ids = tok(prompt)['input_ids']\n"
        "    out = m.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n)\n"
        "    texts.append(tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True))\n"
        "print(json.dumps(texts))\n"  # JSON: text mode would turn a \r into \n
    )
    p = subprocess.run([sys.executable, "-c", code, str(model_dir), "1" if trust else "0", json.dumps(prompts), str(n)],
                       env=base_env(HF_MODULES_CACHE=str(modules)), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


PROMPTS = ["The quick brown fox", "Hello", "An air-gapped server never reaches the internet. Every byte",
           "0 1 2 3 4 5 6 7 8 9 10 11 12", "What is the capital of", "sealift carries"]


def _ask_all(served, prompts: list[str], n: int) -> list[str]:
    client = served.client()

    def ask(i: int) -> str:
        kwargs = dict(model=served.name, prompt=prompts[i % len(prompts)], max_tokens=n, temperature=0)
        if i % 2:
            return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices)
        return client.completions.create(**kwargs).choices[0].text

    with ThreadPoolExecutor(12) as pool:
        return list(pool.map(ask, range(12)))


def test_http_concurrent_clients_share_passes_and_get_generates_answers(tiny_llama: Path, tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "sealift.serving", str(tiny_llama), "--name", "tiny", "--port", str(port),
           "--max-batch", "4"]
    info = dict(url=f"http://127.0.0.1:{port}", name="tiny", model_dir=tiny_llama, trust_remote_code=False)
    expected = _greedy_texts(tiny_llama, False, PROMPTS, 24, tmp_path / "mods")
    with serving(cmd, cwd=ROOT, env=base_env(), tmp=tmp_path, api_key=None, **info) as served:
        answers = _ask_all(served, PROMPTS, 24)
        log = served.log.read_text(errors="replace")
    assert answers == [expected[i % len(PROMPTS)] for i in range(12)]
    assert "continuous batching: up to 4 requests share each forward pass" in log


def test_http_model_without_cache_falls_back_and_says_so(no_cache_model: Path, tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "sealift.serving", str(no_cache_model), "--name", "nocache", "--port", str(port),
           "--trust-remote-code"]
    info = dict(url=f"http://127.0.0.1:{port}", name="nocache", model_dir=no_cache_model, trust_remote_code=True)
    modules = tmp_path / "mods"
    expected = _greedy_texts(no_cache_model, True, PROMPTS, 12, modules)
    env = base_env(HF_MODULES_CACHE=str(modules))
    with serving(cmd, cwd=ROOT, env=env, tmp=tmp_path, api_key=None, **info) as served:
        answers = _ask_all(served, PROMPTS, 12)
        log = served.log.read_text(errors="replace")
    assert answers == [expected[i % len(PROMPTS)] for i in range(12)]
    assert "continuous batching is off" in log and "one request at a time with generate" in log
    assert "does not fill the DynamicCache" in log

"""The acceptance rule of `sealift check` on synthetic recordings, and the golden-output memory plan.

No server, no model: `compare` is pure. The recording below is what sealift.bento.golden writes for one
prompt: per generated step the token, its cumulative text, the top-1/top-2 margin and the top-k.
"""

from __future__ import annotations

import json

import pytest

from sealift.host.check import MARGIN_NATS, Answer, compare
from sealift.bento.golden import OVERHEAD_BYTES, plan_recording

EOS = 0
# token id -> text piece; the recording's texts are the cumulative decodes
PIECES = {EOS: "", 1: "Paris", 2: " is", 3: " the", 4: " capital", 5: " London", 6: " a", 7: " city", 8: "."}


def recording(tokens: list[int], margins: list[float], alts: list[list[int]], *, finish: str = "length") -> dict:
    """A golden prompt whose step i chose tokens[i] with margin margins[i] over the candidates alts[i]."""
    steps, text = [], ""
    for token, margin, others in zip(tokens, margins, alts):
        top = [{"id": token, "logprob": -0.1, "text": text + PIECES[token]}]
        top += [{"id": o, "logprob": -0.1 - margin - j, "text": text + PIECES[o]} for j, o in enumerate(others)]
        text += PIECES[token]
        steps.append({"id": token, "logprob": -0.1, "margin": margin, "text": text, "top": top})
    return {"id": "chat-short", "kind": "chat", "messages": [{"role": "user", "content": "The capital of France?"}],
            "prompt_token_ids": [9, 9, 9], "max_tokens": len(tokens),
            "output_token_ids": tokens, "text": text, "finish_reason": finish, "steps": steps}


REC = recording([1, 2, 3, 4, 8], [3.0, 0.2, 2.5, 1.8, 0.1], [[5, 6], [8, 6], [6, 5], [7, 5], [EOS, 7]])


def test_identical_answer_matches_in_both_modes():
    for exact in (True, False):
        result = compare(REC, Answer("Paris is the capital.", "length", prompt_tokens=3), exact=exact)
        assert result.ok and result.verdict == "match" and result.divergence is None


def test_divergence_at_a_low_margin_step_passes_tolerant_and_fails_exact():
    # step 2 (" is", margin 0.2) went to the recorded runner-up "." instead; the rest is not compared
    answer = Answer("Paris. Whatever follows is not compared", "length", prompt_tokens=3)
    tolerant = compare(REC, answer, exact=False)
    assert tolerant.ok and tolerant.verdict == "tolerated"
    assert tolerant.divergence == 1 and tolerant.margin == pytest.approx(0.2)
    exact = compare(REC, answer, exact=True)
    assert not exact.ok and exact.verdict == "diverged" and exact.divergence == 1


def test_divergence_at_a_high_margin_step_fails():
    # step 1 ("Paris", margin 3.0 nats) answered " London": the model was sure, so this is another model
    result = compare(REC, Answer(" London is the capital.", "length", prompt_tokens=3), exact=False)
    assert not result.ok and result.verdict == "diverged"
    assert result.divergence == 0 and result.margin == pytest.approx(3.0)
    assert "3.000 nats" in result.reason


def test_low_margin_divergence_to_a_token_outside_the_top_k_fails():
    # step 2 has margin 0.2, but " city" was not among its recorded candidates (" is", ".", " a")
    result = compare(REC, Answer("Paris city city", "length", prompt_tokens=3), exact=False)
    assert not result.ok and result.divergence == 1
    assert "top 3" in result.reason


def test_early_end_of_sequence_is_a_candidate_only_where_recorded():
    # last step (margin 0.1) had end-of-sequence as runner-up: stopping there is tolerated
    stopped = compare(REC, Answer("Paris is the capital", "stop", prompt_tokens=3), exact=False)
    assert stopped.ok and stopped.verdict == "tolerated" and stopped.divergence == 4
    # stopping after "Paris" (step 2, whose candidates hold no end-of-sequence) is not
    early = compare(REC, Answer("Paris", "stop", prompt_tokens=3), exact=False)
    assert not early.ok and early.divergence == 1


def test_threshold_is_the_margin_option():
    answer = Answer("Paris. x", "length", prompt_tokens=3)
    assert compare(REC, answer, exact=False, margin_nats=0.3).ok
    assert not compare(REC, answer, exact=False, margin_nats=0.1).ok
    assert MARGIN_NATS == 0.5


def test_token_ids_are_compared_when_the_server_returns_them():
    assert compare(REC, Answer("ignored", "length", token_ids=[1, 2, 3, 4, 8]), exact=True).ok
    low = compare(REC, Answer("ignored", "length", token_ids=[1, 8, 7]), exact=False)
    assert low.ok and low.divergence == 1
    high = compare(REC, Answer("ignored", "length", token_ids=[5, 2]), exact=False)
    assert not high.ok and high.divergence == 0


def test_another_prompt_length_fails_before_any_token():
    result = compare(REC, Answer("Paris is the capital.", "length", prompt_tokens=4), exact=False)
    assert not result.ok and "4 tokens here, 3 when recorded" in result.reason


def test_a_refused_request_fails_with_the_servers_message():
    result = compare(REC, Answer(error="HTTP 400: This model's maximum context length is 128 tokens."), exact=False)
    assert not result.ok and result.verdict == "error" and "maximum context length" in result.reason


def test_half_a_character_at_a_step_end_is_not_a_divergence():
    rec = recording([1, 2], [3.0, 3.0], [[5], [6]])
    rec["steps"][0]["text"] = "Paris\ufffd"  # a byte-level token that ends mid-character
    assert compare(rec, Answer("Paris is", "length"), exact=True).ok


def test_the_result_is_json_serialisable():
    json.dumps(compare(REC, Answer("Paris. x", "length"), exact=False).__dict__)


def test_recording_plan_estimates_float32_against_available_memory():
    small = plan_recording(params=1_000_000, size_bytes=2_000_000, available=8 * 1024**3)
    assert small.fits and small.needed_bytes == 4_000_000 + OVERHEAD_BYTES
    seventy_b = plan_recording(params=70_000_000_000, size_bytes=140 * 10**9, available=24 * 1024**3)
    assert not seventy_b.fits and seventy_b.needed_bytes > 280 * 10**9
    # no parameter count (pickle weights): twice the stored bytes, as for 16-bit weights
    assert plan_recording(params=None, size_bytes=10**9, available=0).needed_bytes == 2 * 10**9 + OVERHEAD_BYTES


class PieceTokenizer:
    """Greedy longest match over PIECES plus ".x": enough to name the answer's first token."""

    VOCAB = {**{text: tid for tid, text in PIECES.items() if text}, ".x": 10}

    def encode(self, text: str) -> list[int]:
        ids = []
        while text:
            piece = max((p for p in self.VOCAB if text.startswith(p)), key=len, default=None)
            if piece is None:
                return ids + [-1]
            ids.append(self.VOCAB[piece])
            text = text[len(piece):]
        return ids


def test_with_the_tokenizer_the_answers_own_token_must_be_a_candidate():
    # "." (a candidate at the low-margin step 2) starts the answer, but the answer's token there is ".x"
    answer = Answer("Paris.x is", "length", prompt_tokens=3)
    assert compare(REC, answer, exact=False).ok  # by text alone, "." starts the answer
    strict = compare(REC, answer, exact=False, tokenizer=PieceTokenizer())
    assert not strict.ok and strict.divergence == 1
    assert compare(REC, Answer("Paris. is", "length"), exact=False, tokenizer=PieceTokenizer()).ok


def test_the_vllm_path_token_ids_from_a_vllm_shaped_server():
    """vLLM answers `return_token_ids` with ids per choice: `ask` reads them and `compare` judges by id.
    A stand-in HTTP server (no GPU here) answers as vLLM 0.10+ shapes its responses."""
    import http.server
    import threading

    from sealift.host.check import ask, server_card

    seen = []

    class VLLM(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send({"object": "list", "data": [{"id": "tiny", "object": "model", "owned_by": "vllm"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
            if self.path == "/v1/chat/completions":
                self._send({"prompt_token_ids": [9, 9, 9], "usage": usage, "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "length",
                     "token_ids": [1, 8, 7]}]})
            else:
                self._send({"usage": usage, "choices": [{"index": 0, "text": "Paris is", "finish_reason": "length",
                                                         "prompt_token_ids": [9, 9, 9], "token_ids": [1, 2]}]})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), VLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert server_card(url, "tiny", None)["owned_by"] == "vllm"
        chat = ask(url, "tiny", REC, None)
        assert chat.token_ids == [1, 8, 7] and chat.prompt_tokens == 3
        assert compare(REC, chat, exact=False).verdict == "tolerated"  # step 2's runner-up, margin 0.2
        raw = {**REC, "kind": "raw", "prompt": "The capital", "send": "text"}
        answer = ask(url, "tiny", raw, None)
        assert answer.text == "Paris is" and answer.token_ids == [1, 2]
        assert compare(raw, answer, exact=True).divergence == 2  # ended early: ids, not text, say where
    finally:
        server.shutdown()
    (chat_path, chat_body), (raw_path, raw_body) = seen
    assert chat_path == "/v1/chat/completions" and chat_body["messages"] == REC["messages"]
    assert chat_body["temperature"] == 0 and chat_body["max_tokens"] == 5 and chat_body["return_token_ids"] is True
    assert raw_path == "/v1/completions" and raw_body["prompt"] == "The capital"


def test_recording_uses_every_core_unless_told(monkeypatch):
    """The build's recording is the only work while it runs: all usable cores, SEALIFT_TORCH_THREADS overrides."""
    import os

    from sealift.bento.golden import recording_threads

    monkeypatch.delenv("SEALIFT_TORCH_THREADS", raising=False)
    assert recording_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("SEALIFT_TORCH_THREADS", "3")
    assert recording_threads() == 3
    monkeypatch.setenv("SEALIFT_TORCH_THREADS", "zero")
    assert recording_threads() == len(os.sched_getaffinity(0))


def test_recording_lengths_and_phases_on_a_tiny_model(tiny_llama):
    """record() honours its lengths (short prompts, long prompt, its new tokens) and reports its phases;
    the file itself holds no clock."""
    from sealift.bento.golden import LONG_NEW_TOKENS, MAX_NEW_TOKENS, PROMPTS, record

    phases: dict[str, float] = {}
    doc = record(tiny_llama, phases=phases, max_new_tokens=3, long_new_tokens=2, long_prompt_max=40)
    assert phases.pop("long_why") == "40 tokens (fixed at 40)"
    assert set(phases) == {"imports", "load", "short", "long"} and all(v >= 0 for v in phases.values())
    short = [p for p in doc["prompts"] if p["id"] != "raw-long"]
    long = next(p for p in doc["prompts"] if p["id"] == "raw-long")
    assert len(short) == len(PROMPTS) and all(p["max_tokens"] == 3 and len(p["steps"]) <= 3 for p in short)
    assert long["max_tokens"] == 2 and len(long["prompt_token_ids"]) == 40 and not long["near_context_limit"]
    assert "seconds" not in json.dumps(doc) and "phases" not in doc
    # the defaults: the long prompt near the tiny model's 256-token context, LONG_NEW_TOKENS after it
    doc = record(tiny_llama)
    long = next(p for p in doc["prompts"] if p["id"] == "raw-long")
    assert long["max_tokens"] == LONG_NEW_TOKENS and long["near_context_limit"]
    assert len(long["prompt_token_ids"]) + LONG_NEW_TOKENS == doc["context_length"] == 256
    assert all(p["max_tokens"] == MAX_NEW_TOKENS for p in doc["prompts"] if p["id"] != "raw-long")


def test_the_long_prompt_nears_the_context_as_far_as_the_host_affords():
    from sealift.bento.golden import LONG_PROMPT_FLOOR, long_prefill_seconds, long_prompt_length

    # a 7B model with 32k of context on a 16-core build host: about a minute of prefill is ~4k tokens
    tokens, why = long_prompt_length(context=32768, params=7_000_000_000, gflops=1000, memory=64 * 2**30,
                                     kv_bytes_per_token=114_688)
    assert tokens == 8192 // 2 and "cut to what this host affords" in why and "60 s prefill at 1000 GFLOP/s" in why
    # memory-bound: eager attention's scores (heads x context x 4 bytes a token) leave room for fewer
    tokens, why = long_prompt_length(context=32768, params=500_000_000, gflops=1000, memory=2**30,
                                     kv_bytes_per_token=12_288, score_bytes_per_token=14 * 32768 * 4)
    assert tokens == 512 == LONG_PROMPT_FLOOR and "GiB left for keys and values" in why
    # a small model on a fast host: the whole context less the tokens to generate
    tokens, why = long_prompt_length(context=4096, params=100_000_000, gflops=500, memory=2**34, kv_bytes_per_token=1)
    assert tokens == 4096 - 16 and "the model's context of 4096" in why
    # never below the floor, never beyond the context
    assert long_prompt_length(context=300, params=10**12, gflops=1, memory=1, kv_bytes_per_token=1)[0] == 284
    # the prefill's time grows with the checkpoint: a 1 GB model gets 15 s, not the minute a 15 GB 7B model gets
    tokens, why = long_prompt_length(context=4096, params=500_000_000, gflops=100, memory=2**34, kv_bytes_per_token=1,
                                     seconds=long_prefill_seconds(10**9))
    assert tokens == 1280 and "15 s prefill at 100 GFLOP/s" in why  # 15 s x 100 GFLOP/s / 1 GFLOP a token = 1500


def test_the_long_prompts_time_follows_the_checkpoint_size():
    from sealift.bento.golden import LONG_PREFILL_MIN_S, LONG_PREFILL_S, long_prefill_seconds

    assert long_prefill_seconds(0) == LONG_PREFILL_MIN_S == 10  # the tiny models of the tests
    assert long_prefill_seconds(10**9) == 15
    assert long_prefill_seconds(2 * 10**9) == 30
    assert long_prefill_seconds(15 * 10**9) == LONG_PREFILL_S == 60  # a 7B model in bf16 keeps the minute
    assert long_prefill_seconds(140 * 10**9) == 60


def test_old_recordings_with_longer_outputs_still_compare():
    """A recording made with the old lengths (16 tokens a prompt) is read as before: max_tokens is per prompt."""
    old = recording([1, 2, 3, 4, 8] * 3 + [1], [3.0] * 16, [[5, 6]] * 16)
    text = old["text"]
    assert old["max_tokens"] == 16
    assert compare(old, Answer(text, "length", prompt_tokens=3), exact=True).verdict == "match"
    assert not compare(old, Answer(text[:-5] + " London", "length", prompt_tokens=3), exact=True).ok

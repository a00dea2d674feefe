"""Token logprobs: computed from raw logits in the worker, shaped for the OpenAI API in the app.

Computing (torch, the worker thread):

    token_logprobs(torch, logits [rows, vocab], chosen, k) -> [TokenLogprob]   one generated token per row
    prompt_logprobs(torch, logits [len, vocab], ids, k)    -> [None, TokenLogprob, ...]   a whole prompt

Both take the log-softmax of the raw logits (before repetition penalty, temperature,
top-k and top-p), which is what vLLM returns by default (`--logprobs-mode raw_logprobs`).

Shaping (plain Python, the event loop):

    completion_logprobs(entries, ids, text, k, offset) -> {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    chat_logprobs(entries, text, k)                     -> {"content": [{"token", "logprob", "bytes", "top_logprobs"}]}

as vLLM's OpenAI server shapes them: a completion's `top_logprobs` maps the chosen token and
the k most likely (k + 1 entries at most) from their text to their logprob; the first prompt
token has no logprob (None); `text_offset` counts characters of the token texts from `offset`;
-inf becomes -9999.0, which JSON can carry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sealift.serving.backend import TokenLogprob

__all__ = [
    "FLOOR",
    "MAX_LOGPROBS",
    "chat_logprobs",
    "completion_logprobs",
    "prompt_logprobs",
    "token_logprobs",
]

#: The most alternatives a request may ask for per token (vLLM's default --max-logprobs, OpenAI's top_logprobs cap).
MAX_LOGPROBS = 20
#: What -inf (a token masked out) is reported as: OpenAI's and vLLM's value.
FLOOR = -9999.0


def token_logprobs(torch: Any, logits: Any, chosen: Sequence[int], k: int) -> list[TokenLogprob]:
    """One entry per row of `logits` [rows, vocab] (raw, float32): the chosen token's logprob and the top k."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(1, torch.tensor(list(chosen), dtype=torch.long, device=logp.device).view(-1, 1))
    picked_list = picked.view(-1).tolist()
    if k > 0:
        values, indices = logp.topk(min(k, logp.shape[-1]), dim=-1)
        tops = [tuple(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
    else:
        tops = [() for _ in picked_list]
    return [TokenLogprob(int(t), float(lp), top) for t, lp, top in zip(chosen, picked_list, tops, strict=True)]


def prompt_logprobs(torch: Any, logits: Any, ids: Sequence[int], k: int) -> list[TokenLogprob | None]:
    """Logprobs of each prompt token given the ones before it; `logits` [len(ids), vocab] from one forward pass.

    The first token has nothing before it: None, as vLLM's prompt_logprobs.
    """
    if len(ids) < 2:
        return [None] * len(ids)
    return [None, *token_logprobs(torch, logits[:-1], list(ids[1:]), k)]


def _clamp(value: float) -> float:
    return max(value, FLOOR)


def completion_logprobs(
    entries: Sequence[TokenLogprob | None],
    text_of: Callable[[int], str],
    k: int,
    offset: int = 0,
    ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The `logprobs` of a completion choice (or of one streamed chunk, `offset` its first character).

    `ids` names the tokens where an entry is None (the first prompt token); else the entries do.
    """
    tokens: list[str] = []
    token_logprobs_: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []
    for i, entry in enumerate(entries):
        token_id = entry.token if entry is not None else (ids[i] if ids is not None else 0)
        text = text_of(token_id)
        tokens.append(text)
        text_offset.append(offset)
        offset += len(text)
        if entry is None:
            token_logprobs_.append(None)
            top_logprobs.append(None)
            continue
        token_logprobs_.append(_clamp(entry.logprob))
        top: dict[str, float] = {text: _clamp(entry.logprob)}
        seen = {entry.token}
        for tid, lp in entry.top:  # the chosen token, then the k most likely: k + 1 entries at most
            if len(seen) > k:
                break
            if tid in seen:
                continue
            seen.add(tid)
            top.setdefault(text_of(tid), _clamp(lp))
        top_logprobs.append(top)
    return {"tokens": tokens, "token_logprobs": token_logprobs_, "top_logprobs": top_logprobs,
            "text_offset": text_offset}


def _chat_entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": _clamp(logprob), "bytes": list(text.encode("utf-8", errors="replace"))}


def chat_logprobs(entries: Sequence[TokenLogprob], text_of: Callable[[int], str], k: int) -> dict[str, Any]:
    """A chat choice's `logprobs`: per token its text, logprob, UTF-8 bytes and the k most likely, best first."""
    content = []
    for entry in entries:
        item = _chat_entry(text_of(entry.token), entry.logprob)
        item["top_logprobs"] = [_chat_entry(text_of(tid), lp) for tid, lp in entry.top[:k]]
        content.append(item)
    return {"content": content}

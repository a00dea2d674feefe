"""Acceptance: does the server answer like the model that left? `sealift check NAME [--url URL]`.

    check_model("qwen7b", url=None)  -> CheckReport (ok, mode, one PromptResult per golden prompt)
    compare(recorded, answer, exact=...) -> PromptResult   (pure: the rule below)

The golden outputs recorded at build (sealift.bento.golden, `src/sealift_golden.json`
in the bento) are replayed through the server's OpenAI API: chat prompts to
/v1/chat/completions, raw prompts to /v1/completions (the long one as token
ids), greedy (temperature 0), max_tokens = the recorded length. With no URL a
server is started offline from the store (sealift.host.start.background) and
stopped afterwards.

How answers are compared. Outputs are compared as text, step by step: the
recording holds, for every generated step, the text the output reads up to
and including that step's token, and the same for each of the top-k
candidates there. The answer follows the recording through step i while the
recorded text after step i is a prefix of the answer (a trailing U+FFFD, half
a multi-byte character, is ignored); the first step where it is not is the
divergence. Where the server returns token ids (vLLM with
`return_token_ids`), the ids are compared instead. Finding the divergence
needs no tokenizer, so a tokenizer that does not round-trip (decode then
encode giving other ids than the model generated) cannot fake a difference.

- exact mode (the server runs what the recording ran: transformers, float32,
  CPU): the answer must be the recorded text, token for token.
- tolerant mode (anything else: vLLM in bf16 on a GPU): the first
  divergence is accepted only if (a) the recorded margin between the best and
  the second-best candidate at that step is below MARGIN_NATS (the model was
  nearly undecided, so a different kernel or dtype may tip it), and (b) the
  answer continues with one of the recorded top-k candidates at that step
  (for an end-of-sequence candidate: the answer ends there). What follows an
  accepted divergence is not compared. Everywhere else the answer must follow
  the recording. Without token ids from the server, the answer's token at the
  divergence is found by tokenizing the rest of the answer with the model's
  tokenizer.json from the store; where that token is half a character
  (U+FFFD: bytes that are no UTF-8) it cannot be named, and the divergence is
  not tolerated. (Without a tokenizer.json: a candidate's text must start the
  rest of the answer, a weaker test.)

In both modes the prompt must have as many tokens as recorded (usage.prompt_tokens):
another tokenizer or chat template fails there. A server that answers like
another model fails with a per-prompt report (exit 1).
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sealift.core import console
from sealift.core.errors import Failure, UserError

__all__ = ["MARGIN_NATS", "Answer", "CheckReport", "PromptResult", "check_model", "compare"]

#: A divergence is tolerated only where the recorded top-1/top-2 log-probability margin was below this.
MARGIN_NATS = 0.5
MODES = ("auto", "exact", "tolerant")
REQUEST_TIMEOUT_S = 600.0

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Answer:
    """What the server said for one prompt (error set if it refused)."""

    text: str = ""
    finish_reason: str | None = None
    token_ids: list[int] | None = None
    prompt_tokens: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class PromptResult:
    """One golden prompt replayed: ok, where it diverged (step index) and why."""

    id: str
    kind: str
    ok: bool
    verdict: str  # "match", "tolerated", "diverged", "error"
    steps: int  # recorded generated tokens
    divergence: int | None = None
    margin: float | None = None
    reason: str = ""
    expected: str = ""
    got: str = ""


@dataclass(frozen=True)
class CheckReport:
    """`sealift check`: every golden prompt's result and the overall verdict."""

    ok: bool
    mode: str
    margin_nats: float
    model_tag: str
    bento_tag: str
    served_model_name: str
    url: str
    server: dict[str, Any]
    recorded: dict[str, Any]
    results: list[PromptResult] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def print_human(self) -> None:
        p = console.out.print
        where = self.server.get("owned_by") or "?"
        p(f"checking {self.served_model_name} at {self.url} (server: {where}) against the golden outputs of "
          f"{self.model_tag} ({self.recorded['backend']}, {self.recorded['dtype']}, {self.recorded['device']}); "
          f"{self.mode} mode" + (f", margin {self.margin_nats} nats" if self.mode == "tolerant" else ""),
          markup=False, soft_wrap=True)
        for r in self.results:
            mark = "ok  " if r.ok else "FAIL"
            if r.verdict == "match":
                what = f"{r.steps} tokens as recorded"
            elif r.verdict == "error":
                what = r.reason
            else:
                what = f"{r.reason}; expected {_show(r.expected)}, got {_show(r.got)}"
            p(f"  {mark} {r.id:<12} {what}", markup=False, soft_wrap=True)
        passed = sum(r.ok for r in self.results)
        verdict = "PASS: the server answers like the recorded model" if self.ok else \
            "FAIL: the server does not answer like the recorded model"
        p(f"{verdict} ({passed}/{len(self.results)} prompts, {self.seconds:.1f} s)", markup=False)


def _show(text: str, limit: int = 60) -> str:
    return json.dumps(text if len(text) <= limit else text[:limit] + "...", ensure_ascii=False)


# --------------------------------------------------------------------------- the rule


def _prefix(text: str, answer: str) -> bool:
    """The recorded text `text` starts the answer (half a multi-byte character at its end ignored)."""
    return answer.startswith(text.rstrip("\ufffd"))


def compare(recorded: dict[str, Any], answer: Answer, *, exact: bool, margin_nats: float = MARGIN_NATS,
            tokenizer: Any = None) -> PromptResult:
    """Judge one answer against one recorded prompt (see the module docstring for the rule).

    `tokenizer` (`encode(text) -> ids`, the model's) names the answer's token at a
    divergence when the server gave no token ids (see _continues_with_candidate).
    """
    steps: list[dict[str, Any]] = recorded["steps"]
    base = {"id": recorded["id"], "kind": recorded["kind"], "steps": len(steps), "expected": recorded["text"],
            "got": answer.text}
    if answer.error:
        return PromptResult(ok=False, verdict="error", reason=answer.error, **base)
    want_prompt = len(recorded["prompt_token_ids"])
    if answer.prompt_tokens is not None and answer.prompt_tokens != want_prompt:
        return PromptResult(ok=False, verdict="diverged", reason=(
            f"the prompt is {answer.prompt_tokens} tokens here, {want_prompt} when recorded "
            "(another tokenizer or chat template)"), **base)
    at = _divergence(steps, recorded, answer)
    if at is None:
        return PromptResult(ok=True, verdict="match", **base)
    margin = steps[at]["margin"] if at < len(steps) else None
    where = f"diverges at token {at + 1} of {len(steps)}"
    if at >= len(steps):
        where = f"goes on after the {len(steps)} recorded tokens"
    if exact:
        return PromptResult(ok=False, verdict="diverged", divergence=at, margin=margin,
                            reason=f"{where} (exact mode: every token must match)", **base)
    if at >= len(steps):  # every recorded token is there; what lies past the recording is not compared
        return PromptResult(ok=True, verdict="tolerated", divergence=at, reason=where, **base)
    if margin is None or margin >= margin_nats:
        told = "" if margin is None else f"; the recorded margin there was {margin:.3f} nats, not below {margin_nats}"
        return PromptResult(ok=False, verdict="diverged", divergence=at, margin=margin, reason=f"{where}{told}", **base)
    if not _continues_with_candidate(steps, at, answer, tokenizer):
        return PromptResult(ok=False, verdict="diverged", divergence=at, margin=margin, reason=(
            f"{where}, to a token that was not among the recorded top {len(steps[at]['top'])}"), **base)
    return PromptResult(ok=True, verdict="tolerated", divergence=at, margin=margin, reason=(
        f"{where}, where the recorded margin was {margin:.3f} nats (< {margin_nats}); the rest is not compared"),
        **base)


def _divergence(steps: list[dict[str, Any]], recorded: dict[str, Any], answer: Answer) -> int | None:
    """The first step where the answer leaves the recording; len(steps) if it only runs on past it; None if equal."""
    if answer.token_ids is not None:
        want = recorded["output_token_ids"]
        got = answer.token_ids
        for i, token in enumerate(got[: len(want)]):
            if token != want[i]:
                return i
        if len(got) == len(want):
            return None
        return len(got) if len(got) < len(want) else len(want)
    for i, step in enumerate(steps):
        if not _prefix(step["text"], answer.text):
            return i
    if answer.text == recorded["text"]:
        return None
    return len(steps) - 1 if recorded.get("finish_reason") == "stop" else len(steps)


def _continues_with_candidate(steps: list[dict[str, Any]], at: int, answer: Answer, tokenizer: Any) -> bool:
    """The answer's token at step `at` is one of the recorded top-k candidates there (not the recorded one).

    With token ids from the server: that id. Otherwise the answer's text after
    the common prefix is tokenized (`tokenizer.encode`, the model's own
    tokenizer.json) and its first token must be a candidate; without a
    tokenizer, a candidate's text must start the answer (weaker: a one-character
    candidate starts many answers).
    """
    others = [c for c in steps[at]["top"] if c["id"] != steps[at]["id"]]
    if answer.token_ids is not None:
        return at < len(answer.token_ids) and answer.token_ids[at] in {c["id"] for c in others}
    before = steps[at - 1]["text"] if at else ""
    if answer.text == before:  # the answer ends here: an end-of-sequence candidate (a token with no text)
        return any(c["text"] == before for c in others)
    if tokenizer is None:
        return any(c["text"] != before and _prefix(c["text"], answer.text) for c in others)
    rest = answer.text[len(before):] if answer.text.startswith(before) else ""
    if not rest or before.endswith("\ufffd") or rest.startswith("\ufffd"):
        # half a character (U+FFFD, bytes that are no UTF-8) cannot be told apart: no benefit of the doubt
        return False
    ids = tokenizer.encode(rest)
    return bool(ids) and ids[0] in {c["id"] for c in others}


class StoreTokenizer:
    """The model's tokenizer.json from the store, through `tokenizers` (no model code runs, no torch)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))

    @classmethod
    def for_model(cls, model_tag: str) -> "StoreTokenizer | None":
        """The stored model's tokenizer, or None (no tokenizer.json, or the model is not in the store)."""
        from sealift.model import store

        try:
            path = store.describe(model_tag).path / "tokenizer.json"
            return cls(path) if path.is_file() else None
        except Exception:  # not in the store, unreadable, or tokenizers refuses the file: judge by text alone
            return None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)


# --------------------------------------------------------------------------- the client


def _post(url: str, path: str, body: dict[str, Any], api_key: str | None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), headers=headers, method="POST")
    with _OPENER.open(req, timeout=REQUEST_TIMEOUT_S) as resp:
        return json.loads(resp.read())


def _get(url: str, path: str, api_key: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    req = urllib.request.Request(f"{url}{path}", headers=headers)
    with _OPENER.open(req, timeout=30) as resp:
        return json.loads(resp.read())


def _http_error(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        message = (body.get("error") or {}).get("message") or body.get("message") or str(body)
    except (ValueError, AttributeError, OSError):
        message = exc.reason
    return f"HTTP {exc.code}: {message}"


def ask(url: str, served: str, prompt: dict[str, Any], api_key: str | None, *, token_ids: bool = True) -> Answer:
    """Replay one golden prompt greedily; the answer (or the server's refusal). `token_ids` asks for vLLM's
    return_token_ids (sealift's own server refuses the field: it compares text there)."""
    body: dict[str, Any] = {"model": served, "temperature": 0, "max_tokens": prompt["max_tokens"]}
    if token_ids:
        body["return_token_ids"] = True
    if prompt["kind"] == "chat":
        path, body["messages"] = "/v1/chat/completions", prompt["messages"]
    else:
        path = "/v1/completions"
        body["prompt"] = prompt["prompt_token_ids"] if prompt.get("send") == "token_ids" else prompt["prompt"]
    try:
        resp = _post(url, path, body, api_key)
    except urllib.error.HTTPError as exc:
        return Answer(error=_http_error(exc))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return Answer(error=f"no answer from {url}{path}: {getattr(exc, 'reason', exc)}")
    choice = (resp.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") if prompt["kind"] == "chat" else choice.get("text")
    ids = choice.get("token_ids")
    return Answer(
        text=text or "",
        finish_reason=choice.get("finish_reason"),
        token_ids=[int(t) for t in ids] if isinstance(ids, list) else None,
        prompt_tokens=(resp.get("usage") or {}).get("prompt_tokens"),
    )


def server_card(url: str, served: str, api_key: str | None) -> dict[str, Any]:
    """The server's /v1/models entry for `served`; UserError if nothing answers, Failure if it serves another name."""
    try:
        listing = _get(url, "/v1/models", api_key)
    except urllib.error.HTTPError as exc:
        raise Failure(f"{url}/v1/models refused: {_http_error(exc)}",
                      hint="pass --api-key (or SEALIFT_API_KEY) if the server needs one") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UserError(f"no OpenAI server answers at {url}: {getattr(exc, 'reason', exc)}",
                        hint="start it (sealift start NAME) or leave --url out to start one") from None
    cards = [c for c in listing.get("data") or [] if isinstance(c, dict)]
    for card in cards:
        if card.get("id") == served:
            return card
    names = ", ".join(str(c.get("id")) for c in cards) or "nothing"
    raise Failure(f"the server at {url} serves {names}, not {served!r}",
                  hint="point --url at the server of this model, or pass --served-name")


# --------------------------------------------------------------------------- the command


def check_model(
    ref: str,
    *,
    url: str | None = None,
    api_key: str | None = None,
    mode: str = "auto",
    served_name: str | None = None,
    margin_nats: float = MARGIN_NATS,
) -> CheckReport:
    """Replay the golden outputs of `ref`'s newest bento through `url` (or a server started here); the report."""
    if mode not in MODES:
        raise UserError(f"unknown --mode {mode!r}", hint="use auto, exact or tolerant")
    if not margin_nats > 0:
        raise UserError(f"--margin must be above 0 nats, got {margin_nats}")
    if url is not None and not url.startswith(("http://", "https://")):
        raise UserError(f"--url {url!r} is not an http(s) URL", hint="e.g. --url http://127.0.0.1:3000")
    from sealift.model import _bentoml
    from sealift.bento import golden
    from sealift.host import start
    from sealift.core.offline import apply_offline_env
    from sealift.serving.config import BentoConfig
    from sealift.model.store import find_bento

    apply_offline_env()
    bento_tag = find_bento(ref, prefer_target=start.host_target())
    src = Path(_bentoml.get_bento(bento_tag).path) / "src"
    recorded = golden.load_golden(src)
    name = ref.split(":")[0]
    if recorded is None:
        raise UserError(
            f"bento {bento_tag} has no golden outputs (built with --no-golden, or the model did not fit in memory)",
            hint=f"on the build host, `sealift golden {name}` makes a new bento version holding them; then "
                 f"`sealift export {name} DEST` and `sealift install` that bundle here",
        )
    served = served_name or BentoConfig.load(src, environ={"SEALIFT_MODEL": bento_tag}).served_model_name
    started = time.monotonic()
    if url is not None:
        results, card, exact = _replay(url.rstrip("/"), served, recorded, api_key, mode == "exact", margin_nats)
        return _report(results, "exact" if exact else "tolerant", margin_nats, recorded, bento_tag, served, url, card,
                       started)

    # No URL: serve it here. On a CPU host the transformers backend in float32 runs what the recording ran.
    options: dict[str, Any] = {}
    like_recording = start.host_target() == "cpu" and recorded.get("device") == "cpu"
    if like_recording:
        options = {"backend": "transformers", "dtype": recorded.get("dtype", "float32")}
    if api_key:
        options["api_key"] = api_key
    log = Path(tempfile.gettempdir()) / f"sealift-check-{name}-{int(time.time())}.log"
    console.info(f"starting {bento_tag} to check it (log: {log})")
    # auto: exact if the server that answers is sealift's own transformers backend (not vLLM behind it)
    exact = {"exact": True, "tolerant": False}.get(mode, None if like_recording else False)
    with start.background(bento_tag, options=options, log=log) as base:
        results, card, exact = _replay(base, served, recorded, api_key, exact, margin_nats)
    return _report(results, "exact" if exact else "tolerant", margin_nats, recorded, bento_tag, served, base, card,
                   started)


def _replay(url: str, served: str, recorded: dict[str, Any], api_key: str | None, exact: bool | None,
            margin_nats: float) -> tuple[list[PromptResult], dict[str, Any], bool]:
    """Ask every golden prompt; exact None: decide from the server's card (sealift's transformers backend)."""
    card = server_card(url, served, api_key)
    if exact is None:
        exact = card.get("owned_by") == "sealift"
    if card.get("owned_by") == "vllm" and exact:
        console.warn("the server is vLLM, the recording transformers: exact mode will likely fail; try --mode tolerant")
    tokenizer = None if exact else StoreTokenizer.for_model(str(recorded.get("model_tag") or ""))
    results = []
    for prompt in recorded["prompts"]:
        answer = ask(url, served, prompt, api_key, token_ids=card.get("owned_by") != "sealift")
        results.append(compare(prompt, answer, exact=exact, margin_nats=margin_nats, tokenizer=tokenizer))
    return results, card, exact


def _report(results: list[PromptResult], mode: str, margin_nats: float, recorded: dict[str, Any], bento_tag: str,
            served: str, url: str, card: dict[str, Any], started: float) -> CheckReport:
    summary = {k: recorded.get(k) for k in ("backend", "dtype", "device", "versions", "context_length")}
    return CheckReport(
        ok=bool(results) and all(r.ok for r in results),
        mode=mode,
        margin_nats=margin_nats,
        model_tag=str(recorded.get("model_tag") or ""),
        bento_tag=bento_tag,
        served_model_name=served,
        url=url,
        server={"owned_by": card.get("owned_by"), "max_model_len": card.get("max_model_len")},
        recorded=summary,
        results=results,
        seconds=round(time.monotonic() - started, 2),
    )

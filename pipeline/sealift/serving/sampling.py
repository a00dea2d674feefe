"""One sequence's logits processing and token choice, for the batcher and the generate fallback.

    RowSampler(torch, params, prompt_ids, ...)   one per sequence, made when it is admitted
      .plain               True: nothing to do but argmax (the batch's one argmax serves it)
      .pick(logits, plain) the next token from this row's logits [1, vocab] (changed in place)
      .accept(token)       after each token: penalty counts, the grammar matcher
      .prepare(logits)     every step before sampling

    PickLogitsProcessor(torch, sampler, ...)   the generate fallback's last processor: the same pick

In vLLM's order: logit_bias and allowed_token_ids, stop_token_ids held back before min_tokens,
repetition (prompt and output), frequency and presence (output) penalties, the grammar's
bitmask; then argmax (greedy) or temperature, top_k, top_p, min_p and a draw from the row's
own generator, so a seed gives the same text whatever else is in the batch. A row with none
of these costs nothing: `plain` rows take the batch's argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sealift.serving.backend import SamplingParams

__all__ = ["RowSampler"]


class RowSampler:
    """The per-sequence state of sampling: generator, penalty counts, grammar matcher and its bitmask."""

    def __init__(
        self,
        torch: Any,
        params: SamplingParams,
        prompt_ids: Sequence[int],
        *,
        vocab: int,
        device: Any,
        model_repetition_penalty: float = 1.0,
        grammar: Any = None,
        eos_ids: Sequence[int] = (),
    ) -> None:
        self.torch = torch
        self.params = params
        self.vocab = vocab
        self.device = device
        self.generated = 0
        self.repetition = params.repetition_penalty if params.repetition_penalty is not None \
            else model_repetition_penalty
        self.generator = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            if params.seed is not None:
                self.generator.manual_seed(params.seed)
            else:
                self.generator.seed()
        self.seen = None  # bool [vocab]: tokens of the prompt and the output (repetition penalty)
        if self.repetition != 1.0:
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            ids = [t for t in prompt_ids if 0 <= t < vocab]
            if ids:
                self.seen[torch.tensor(ids, dtype=torch.long, device=device)] = True
        self.counts = None  # float [vocab]: times each token was generated (frequency, presence)
        if params.frequency_penalty or params.presence_penalty:
            self.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
        self.bias = None
        if params.logit_bias:
            self.bias = torch.zeros(vocab, dtype=torch.float32, device=device)
            for token, value in params.logit_bias:
                if 0 <= token < vocab:
                    self.bias[token] += value
        self.allowed = None  # additive mask: 0 for allowed tokens, -inf for the rest
        if params.allowed_token_ids:
            self.allowed = torch.full((vocab,), float("-inf"), device=device)
            self.allowed[torch.tensor([t for t in params.allowed_token_ids if 0 <= t < vocab], dtype=torch.long,
                                      device=device)] = 0.0
        self.stop_ids = None
        if params.stop_token_ids and params.min_tokens:
            self.stop_ids = torch.tensor([t for t in params.stop_token_ids if 0 <= t < vocab], dtype=torch.long,
                                         device=device)
        self.matcher = None
        self.bitmask = None
        if grammar is not None:
            import xgrammar as xgr

            from sealift.serving.grammar import new_matcher

            self.matcher = new_matcher(grammar)
            self.bitmask = xgr.allocate_token_bitmask(1, vocab)
            self._apply_bitmask = xgr.apply_token_bitmask_inplace
            # min_tokens under a grammar: no end of sequence while the grammar allows anything else
            self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device) if params.min_tokens \
                and eos_ids else None
        self.plain = params.greedy and not (
            self.seen is not None or self.counts is not None or self.bias is not None or self.allowed is not None
            or self.stop_ids is not None or self.matcher is not None)

    @property
    def grammar_done(self) -> bool:
        """The grammar took its end token: nothing more may follow."""
        return self.matcher is not None and self.matcher.is_terminated()

    def prepare(self, logits: Any) -> Any:
        """Everything before the choice, in place on this row's logits [1, vocab]; returns them."""
        if self.bias is not None:
            logits += self.bias
        if self.allowed is not None:
            logits += self.allowed
        if self.stop_ids is not None and self.generated < self.params.min_tokens:
            logits[:, self.stop_ids] = float("-inf")
        if self.seen is not None:
            picked = logits[:, self.seen]
            logits[:, self.seen] = self.torch.where(picked > 0, picked / self.repetition, picked * self.repetition)
        if self.counts is not None:
            logits -= self.counts * self.params.frequency_penalty + (self.counts > 0) * self.params.presence_penalty
        if self.matcher is not None:
            self.matcher.fill_next_token_bitmask(self.bitmask)
            self._apply_bitmask(logits, self.bitmask.to(logits.device))
            if self.eos is not None and self.generated < self.params.min_tokens:
                saved = logits[:, self.eos].clone()
                logits[:, self.eos] = float("-inf")
                if bool(self.torch.isinf(logits).all()):  # the grammar is complete: only the end may follow
                    logits[:, self.eos] = saved
        return logits

    def pick(self, logits: Any, plain: int | None = None) -> int:
        """The next token from this row's logits [1, vocab]; `plain` is the batch's argmax for this row."""
        if self.plain:
            return int(logits.argmax(dim=-1)) if plain is None else plain
        torch = self.torch
        scores = self.prepare(logits)
        if self.generator is None:
            return int(scores.argmax(dim=-1))
        p = self.params
        if p.temperature != 1.0:
            scores = scores / p.temperature
        if p.top_k and p.top_k < scores.shape[-1]:
            kth = torch.topk(scores, p.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if p.top_p < 1.0:  # the smallest set of likeliest tokens whose mass reaches top_p (the one crossing it kept)
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) > p.top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
        if p.min_p > 0.0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator))

    def accept(self, token: int) -> bool:
        """Record a generated token; False when the grammar refuses it (it cannot follow)."""
        self.generated += 1
        if self.seen is not None and 0 <= token < self.vocab:
            self.seen[token] = True
        if self.counts is not None and 0 <= token < self.vocab:
            self.counts[token] += 1
        if self.matcher is not None and not self.matcher.is_terminated():
            return bool(self.matcher.accept_token(token))
        return True


class PickLogitsProcessor:
    """generate's last logits processor on the one-at-a-time path: the token the batcher would pick.

    Accepts the token generate took last, masks every EOS id before min_tokens (as the batcher does,
    unless a grammar decides the end), lets the request's RowSampler pick (its own generator: no global
    seed), and returns scores where only that token is possible, so greedy generate takes it.
    """

    def __init__(self, torch: Any, sampler: Any, prompt_length: int, eos_ids: list[int]) -> None:
        self.torch, self.sampler, self.prompt_length, self.eos_ids = torch, sampler, prompt_length, eos_ids

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        made = input_ids.shape[-1] - self.prompt_length
        if made > self.sampler.generated:
            self.sampler.accept(int(input_ids[0, -1]))
        logits = scores[:1].to(copy=True, dtype=self.torch.float32)
        if made < self.sampler.params.min_tokens and self.eos_ids and self.sampler.matcher is None:
            logits[:, self.eos_ids] = float("-inf")
        token = self.sampler.pick(logits, None)
        only = self.torch.full_like(scores, float("-inf"))
        only[:, token] = 0.0
        return only

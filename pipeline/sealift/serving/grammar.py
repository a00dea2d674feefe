"""Compiling Constraints with xgrammar (the version vLLM pins, so both engines follow the same compiler).

    Grammars(tokenizer, vocab_size, stop_ids).compile(constraint) -> xgrammar.CompiledGrammar
    new_matcher(compiled)                                         -> a GrammarMatcher for one sequence

One compiler per model, built on first use (a model that never gets a constrained request never
pays for it), with xgrammar's cache: the same schema twice compiles once. xgrammar's errors
become ConstraintError naming the request field, with xgrammar's own words (less its log prefix).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

from sealift.serving.structured import Constraint, ConstraintError

__all__ = ["Grammars", "new_matcher", "xgrammar_missing"]

#: xgrammar's C++ errors start with "[hh:mm:ss] /path/file.cc:line: "
_LOG_PREFIX = re.compile(r"^\s*\[[\d:]+\]\s+\S+:\d+:\s*")


def xgrammar_missing() -> str | None:
    """Why constrained decoding is unavailable here (xgrammar not installed), or None."""
    import importlib.util

    return None if importlib.util.find_spec("xgrammar") else (
        "structured outputs need the xgrammar package, which this server's environment lacks "
        "(pip install xgrammar==0.2.8, or rebuild the bento with sealift from this version)")


class Grammars:
    """xgrammar's compiler over one tokenizer; thread-safe (requests compile off the event loop)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Iterable[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_ids = sorted(stop_ids)
        self._compiler: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._compiler is None:
                missing = xgrammar_missing()
                if missing:
                    raise ConstraintError(missing, "response_format")
                import xgrammar as xgr

                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids or None)
                self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True)
            return self._compiler

    def compile(self, constraint: Constraint) -> Any:
        compiler = self._get()
        try:
            if constraint.kind == "json":
                # any_whitespace=False: one fixed separator (", " and ": "), no runs a weak model can loop on
                return compiler.compile_json_schema(constraint.value, any_whitespace=False,
                                                    strict_mode=constraint.strict)
            if constraint.kind == "regex":
                return compiler.compile_regex(constraint.value)
            if constraint.kind == "grammar":
                return compiler.compile_grammar(constraint.value)
        except (RuntimeError, ValueError, TypeError) as exc:
            text = _LOG_PREFIX.sub("", str(exc)).strip().splitlines()
            detail = text[0] if text else type(exc).__name__
            raise ConstraintError(f"{constraint.param}: xgrammar cannot compile it: {detail}",
                                  constraint.param) from None
        raise ConstraintError(f"{constraint.param}: unknown constraint kind {constraint.kind!r}", constraint.param)


def new_matcher(compiled: Any) -> Any:
    import xgrammar as xgr

    return xgr.GrammarMatcher(compiled)

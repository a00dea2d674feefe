"""Evaluator configs that stay offline: `sealift eval-config NAME --for opencompass|lm-eval`.

    eval_config("qwen7b", tool="opencompass", url=...) -> EvalConfig (.text: the config to save, .values)

Offline, evaluation clients trip over the tokenizer: OpenCompass 0.5.4's
`OpenAISDK` looks the served name up on the Hugging Face hub as a tokenizer,
then falls back to tiktoken's gpt-4 encoding, which downloads; lm-eval's
`local-completions` loads a Hugging Face tokenizer named after the model. The
config names the tokenizer in the store (the stored model's directory holds
tokenizer.json / tokenizer_config.json), so neither ever reaches for the hub.

The API key is never written into the config: the OpenCompass config reads
it from the environment (SEALIFT_API_KEY, else "EMPTY"), lm-eval reads
OPENAI_API_KEY.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sealift.core.errors import UserError

__all__ = ["TOOLS", "EvalConfig", "eval_config"]

TOOLS = ("opencompass", "lm-eval")
DEFAULT_URL = "http://127.0.0.1:3000/v1"
#: Where the config reads the API key from (OpenCompass: this, else "EMPTY"; lm-eval: its own OPENAI_API_KEY).
KEY_ENV = "SEALIFT_API_KEY"
#: What evaluators should run under: no hub, no telemetry.
EVAL_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DO_NOT_TRACK": "1"}


@dataclass(frozen=True)
class EvalConfig:
    """A ready config for one evaluator: `text` to save and run, `values` for scripts (--json)."""

    tool: str
    served_model_name: str
    url: str
    tokenizer_path: str
    context_length: int | None
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_config(ref: str, *, tool: str, url: str | None = None) -> EvalConfig:
    """The config for `tool` against the server of stored model `ref` at `url` (default the local one)."""
    if tool not in TOOLS:
        raise UserError(f"unknown --for {tool!r}", hint="use opencompass or lm-eval")
    base = (url or DEFAULT_URL).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UserError(f"--url {url!r} is not an http(s) URL", hint=f"e.g. --url {DEFAULT_URL}")
    if not base.endswith("/v1"):
        base += "/v1"
    from sealift.model import store

    model = store.describe(ref)
    tokenizer = str(model.path)
    served = _served_name(ref, model.name)
    context = model.context_length
    make = _opencompass if tool == "opencompass" else _lm_eval
    return EvalConfig(tool, served, base, tokenizer, context, make(served, base, tokenizer, context))


def _served_name(ref: str, default: str) -> str:
    """The name the model's bento serves it under (its sealift_bento.json), else the model's name."""
    from sealift.model import _bentoml
    from sealift.serving.config import BentoConfig
    from sealift.model.store import find_bento

    try:
        tag = find_bento(ref)
        return BentoConfig.load(Path(_bentoml.get_bento(tag).path) / "src", environ={"SEALIFT_MODEL": tag}).served_model_name
    except UserError:
        return default


def _opencompass(served: str, base: str, tokenizer: str, context: int | None) -> str:
    env = " ".join(f"{k}={v}" for k, v in EVAL_ENV.items())
    return f'''\
# OpenCompass (0.5.x) model config for {served!r} served by sealift at {base}.
# Written by `sealift eval-config {served} --for opencompass`. tokenizer_path is the tokenizer
# in the store, so OpenAISDK never looks on the hub nor downloads tiktoken's encoding.
# Add your datasets below (local files), then:  {env} opencompass THIS_FILE
# OpenCompass 0.5.4 also needs pyarrow<20 beside its numpy pin.
# No top-level `import os`: OpenCompass dumps every top-level name of this file into its work
# dir and reads the dump back, and a module there is a syntax error.
from opencompass.models import OpenAISDK

api_meta_template = dict(round=[
    dict(role="HUMAN", api_role="HUMAN"),
    dict(role="BOT", api_role="BOT", generate=True),
])

models = [
    dict(
        abbr={served!r},
        type=OpenAISDK,
        path={served!r},
        openai_api_base={base!r},
        key=__import__("os").environ.get({KEY_ENV!r}, "EMPTY"),
        tokenizer_path={tokenizer!r},
        meta_template=api_meta_template,
        max_seq_len={context or 4096},
        max_out_len={max(16, min(512, (context or 4096) // 4))},
        query_per_second=1,
        batch_size=8,
        temperature=0,
        retry=2,
    ),
]

# A local jsonl of {{"question": ..., "answer": ...}} rows, scored as OpenCompass scores its custom QA datasets:
#
# from opencompass.datasets import CustomDataset
# from opencompass.openicl.icl_evaluator import AccEvaluator
# from opencompass.openicl.icl_inferencer import GenInferencer
# from opencompass.openicl.icl_prompt_template import PromptTemplate
# from opencompass.openicl.icl_retriever import ZeroRetriever
#
# datasets = [dict(
#     abbr="local_qa", type=CustomDataset, path="/data/local_qa.jsonl",
#     reader_cfg=dict(input_columns=["question"], output_column="answer"),
#     infer_cfg=dict(
#         prompt_template=dict(type=PromptTemplate, template=dict(round=[dict(role="HUMAN", prompt="{{question}}")])),
#         retriever=dict(type=ZeroRetriever), inferencer=dict(type=GenInferencer)),
#     eval_cfg=dict(evaluator=dict(type=AccEvaluator), pred_role="BOT"),
# )]
datasets = []
'''


def _lm_eval(served: str, base: str, tokenizer: str, context: int | None) -> str:
    import yaml

    def args(endpoint: str, **extra: Any) -> str:
        values = {"model": served, "base_url": f"{base}/{endpoint}", "tokenizer_backend": "huggingface",
                  "tokenizer": tokenizer, "tokenized_requests": False, **extra}
        if context:
            values["max_length"] = context
        return ",".join(f"{k}={v}" for k, v in values.items())

    chat_args = args("chat/completions")
    # token ids, not text: the server scores exactly the tokens lm-eval counted (no second tokenization)
    completion_args = args("completions", tokenized_requests=True)
    env = " ".join(f"{k}={v}" for k, v in EVAL_ENV.items())
    doc = {
        "served_model_name": served,
        "base_url": base,
        "tokenizer": tokenizer,
        "api_key_env": "OPENAI_API_KEY",
        "env": dict(EVAL_ENV),
        "generate_until": {
            "model": "local-chat-completions",
            "model_args": chat_args,
            "apply_chat_template": True,
            "command": f"{env} OPENAI_API_KEY=${{{KEY_ENV}:-EMPTY}} lm_eval --model local-chat-completions "
                       f"--model_args {shlex.quote(chat_args)} --apply_chat_template --tasks TASKS",
        },
        "loglikelihood": {
            "model": "local-completions",
            "model_args": completion_args,
            "needs": "/v1/completions with echo and logprobs (both sealift backends serve them)",
            "command": f"{env} OPENAI_API_KEY=${{{KEY_ENV}:-EMPTY}} lm_eval --model local-completions "
                       f"--model_args {shlex.quote(completion_args)} --tasks TASKS",
        },
    }
    head = (f"# lm-eval against {served!r} served by sealift at {base}.\n"
            f"# Written by `sealift eval-config {served} --for lm-eval`; `tokenizer` is the tokenizer in the store.\n"
            "# lm-eval needs its api extra and transformers (the huggingface tokenizer backend): "
            "lm-eval[api] transformers\n")
    return head + yaml.safe_dump(doc, sort_keys=False, width=1000)

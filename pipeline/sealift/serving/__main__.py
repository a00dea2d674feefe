"""Serve a model directory with the transformers backend, without BentoML.

    python -m sealift.serving MODEL_DIR [--name NAME] [--host 127.0.0.1] [--port 3000]
                               [--api-key KEY] [--max-concurrency N] [--trust-remote-code]
                               [--max-model-len N] [--dtype auto] [--max-batch N]

For tests, benchmarks and debugging: the same app BentoML mounts, under plain
uvicorn. The port opens at once; /readyz answers 200 once the model is loaded.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sealift.core.offline import apply_offline_env


def main(argv: list[str] | None = None) -> int:
    apply_offline_env()
    ap = argparse.ArgumentParser(prog="python -m sealift.serving", description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--name", help="served model name (default: the directory name)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=3000)
    ap.add_argument("--api-key")
    ap.add_argument("--max-concurrency", type=int)
    ap.add_argument("--trust-remote-code", action="store_true")
    ap.add_argument("--max-model-len", type=int)
    ap.add_argument("--dtype")
    ap.add_argument("--max-batch", type=int, help="requests per forward pass (default: SEALIFT_MAX_BATCH, "
                    "else from cores and memory)")
    ap.add_argument("--tool-parser", help="tool-call parser for tool_choice auto (hermes, llama3_json, mistral; "
                    "default: from the chat template)")
    a = ap.parse_args(argv)

    import uvicorn

    from sealift.serving.app import create_app
    from sealift.core.errors import UserError
    from sealift.serving.config import ServeConfig, max_batch_from_env
    from sealift.serving.transformers_backend import TransformersBackend

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.max_batch is not None and a.max_batch < 1:
        ap.error("--max-batch must be at least 1")
    name = a.name or a.model_dir.resolve().name
    config = ServeConfig(
        model_tag=name,
        served_model_name=name,
        backend="transformers",
        trust_remote_code=a.trust_remote_code,
        api_key=a.api_key,
        max_concurrency=a.max_concurrency,
        max_model_len=a.max_model_len,
        dtype=a.dtype,
        max_batch=a.max_batch,
        tool_parser=a.tool_parser,
    )
    if config.max_batch is None:  # the flag first, then the environment, as under BentoML
        try:
            config = config.with_overrides(max_batch=max_batch_from_env())
        except UserError as exc:
            ap.error(str(exc))
    backend = TransformersBackend(
        a.model_dir, trust_remote_code=a.trust_remote_code, dtype=a.dtype, max_model_len=a.max_model_len,
        max_batch=config.max_batch,
    )
    backend.start()
    try:
        uvicorn.run(create_app(config, backend), host=a.host, port=a.port, log_level="warning")
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

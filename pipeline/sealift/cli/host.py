"""The commands of the air-gapped host: `install`, `start` (and `serve`), `check`, `inventory`, `doctor`, `env`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from sealift.cli.app import JsonOpt, QuietOpt, emit_report
from sealift.core import console

__all__ = ["check", "doctor", "env", "install", "inventory", "start"]


def install(
    bundle_dir: list[Path] = typer.Argument(
        ..., metavar="BUNDLE...", help="A bundle directory written by `sealift export`; or each volume's folder "
        "(vol-N, or the folder holding them) of a bundle exported with --volume-size or several DEST."),
    venv: Optional[Path] = typer.Option(None, "--venv", help="Where to make the runtime venv (default under SEALIFT_HOME)."),
    no_venv: bool = typer.Option(False, "--no-venv", help="Do not create the runtime venv."),
    allowed_signers: Optional[Path] = typer.Option(
        None, "--allowed-signers", metavar="FILE",
        help="Require a signature by a key this OpenSSH allowed_signers file lists. Default: "
             "$SEALIFT_ALLOWED_SIGNERS, else $SEALIFT_HOME/allowed_signers, else /etc/sealift/allowed_signers, "
             "whichever exists first."),
    check_after: bool = typer.Option(False, "--check", help="Then start the server and run `sealift check` (exit 1 on a mismatch)."),
    skip_host_check: bool = typer.Option(
        False, "--skip-host-check", help="Install even where glibc, Python or the NVIDIA driver fall short."),
    json_output: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Verify a bundle byte for byte, import it, make the offline venv, register for openllm.

    Under a signing policy (--allowed-signers, $SEALIFT_ALLOWED_SIGNERS or a config file) the signature
    SHA256SUMS.sig is checked first, before any byte is hashed: an unsigned bundle, one signed by a key the
    file does not list, and one whose SHA256SUMS does not match its signature are refused (exit 2, nothing
    imported). The signer's identity is printed and recorded (`sealift list`). Allowed signers lines:
    `IDENTITY namespaces="sealift" ssh-ed25519 AAAA...` (man ssh-keygen, ALLOWED SIGNERS).

    Then, before any byte is hashed or imported, the host is held against the
    bundle's manifest.json: glibc and Python for its wheels, and for a gpu
    bundle the NVIDIA driver (nvidia-smi) against torch's CUDA line (refused,
    exit 2, with what to do), GPU count against SEALIFT_TENSOR_PARALLEL_SIZE and
    free GPU memory against weights plus KV cache (warnings).

    A delta bundle (`export --have`) takes the files it left out from this host's store and wheel
    pool, hashing each byte it takes, and checks the assembled model against its manifest before
    storing it; made from another store's inventory, or relying on a file missing or changed here,
    it is refused (exit 2, nothing imported): export a full bundle.

    Volumes (VOL1 VOL2 ...): of one bundle, all there, each once (else exit 2), then one install.
    """
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift.host import install as install_step

    result = install_step.install_bundle(bundle_dir, venv=venv, make_venv=not no_venv, allowed_signers=allowed_signers,
                                 host_check=not skip_host_check)
    if not check_after:
        console.emit(result.to_dict(), result.print_human, quiet_line=result.bento_tag)
        return
    from sealift.host import check as check_step

    report = check_step.check_model(result.bento_tag)
    console.emit({**result.to_dict(), "check": report.to_dict()}, lambda: (result.print_human(), report.print_human()))
    if not report.ok:
        raise typer.Exit(1)


def start(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]", help="A model (or bento) in the local store."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(3000, "--port", "-p", help="Port to listen on."),
    backend: Optional[str] = typer.Option(None, "--backend", help="auto, vllm or transformers (default: the bento's)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="SEALIFT_API_KEY", help="Require this bearer key."),
    max_concurrency: Optional[int] = typer.Option(
        None, "--max-concurrency", help="sealift's HTTP cap: requests past this many get 429 [env SEALIFT_MAX_CONCURRENCY]."),
    tensor_parallel_size: Optional[int] = typer.Option(
        None, "--tensor-parallel-size", help="vLLM: GPUs per model [env SEALIFT_TENSOR_PARALLEL_SIZE]."),
    max_model_len: Optional[int] = typer.Option(
        None, "--max-model-len", help="Context length to serve [env SEALIFT_MAX_MODEL_LEN]."),
    gpu_memory_utilization: Optional[float] = typer.Option(
        None, "--gpu-memory-utilization", help="vLLM: GPU memory fraction [env SEALIFT_GPU_MEMORY_UTILIZATION]."),
    max_num_seqs: Optional[int] = typer.Option(
        None, "--max-num-seqs", help="vLLM: sequences batched at once; more wait in vLLM's queue "
        "[env SEALIFT_MAX_NUM_SEQS]. Apart from --max-concurrency."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto, bfloat16, float16 or float32 (half and float are aliases)."),
    quantization: Optional[str] = typer.Option(None, "--quantization", help="vLLM: the checkpoint's quantization."),
    kv_cache_gib: Optional[int] = typer.Option(
        None, "--kv-cache-gib", help="vLLM on CPU: its KV cache in GiB (VLLM_CPU_KVCACHE_SPACE; default: half the "
                                     "memory left after the weights, said at start)."),
    prefill_tokens: Optional[int] = typer.Option(
        None, "--prefill-tokens", help="transformers on CPU: prompt tokens read per scheduler step, so running "
        "streams keep decoding while new prompts arrive; 0 for no budget [env SEALIFT_PREFILL_TOKENS, default 512]."),
) -> None:
    """Serve a model from the local store with an OpenAI-compatible API, offline.

    NAME is looked up in the model store first (as `openllm start` did), then
    as a bento. Ctrl-C stops the server.

    Engine knobs (vLLM; the transformers backend reads --max-model-len and
    --dtype) come from the options or, when an option is not given, from the
    environment: SEALIFT_TENSOR_PARALLEL_SIZE, SEALIFT_MAX_MODEL_LEN,
    SEALIFT_GPU_MEMORY_UTILIZATION, SEALIFT_MAX_NUM_SEQS, SEALIFT_DTYPE,
    SEALIFT_QUANTIZATION, SEALIFT_KV_CACHE_GIB. On CPU, vLLM's OpenMP threads
    are bound to the cores this process may use and --dtype defaults to the
    checkpoint's own (float32 stays float32). --max-num-seqs is vLLM's batch (requests past it
    queue inside vLLM); --max-concurrency is sealift's HTTP cap (requests past
    it get 429): two settings, set apart. Before the server starts, the
    threads, batch cap and memory budget it will use are printed with the
    limits they come from (affinity, the cgroup's CPU quota and memory limit).
    """
    from sealift.host import start as start_step

    options = {
        "backend": backend,
        "api_key": api_key,
        "max_concurrency": max_concurrency,
        "tensor_parallel_size": tensor_parallel_size,
        "max_model_len": max_model_len,
        "gpu_memory_utilization": gpu_memory_utilization,
        "max_num_seqs": max_num_seqs,
        "dtype": dtype,
        "quantization": quantization,
        "kv_cache_gib": kv_cache_gib,
        "prefill_tokens": prefill_tokens,
    }
    code = start_step.start(ref, host=host, port=port, options={k: v for k, v in options.items() if v is not None})
    raise typer.Exit(code)


def check(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]", help="A model (its newest bento) in the store."),
    url: Optional[str] = typer.Option(None, "--url", help="A running server (default: start one here, offline)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="SEALIFT_API_KEY", help="Bearer key for --url."),
    mode: str = typer.Option("auto", "--mode", help="exact, tolerant, or auto (exact only when this command starts "
                                                    "the transformers backend in float32 on a CPU host)."),
    margin: float = typer.Option(0.5, "--margin", help="Tolerant mode: divergence allowed below this top-2 margin (nats)."),
    served_name: Optional[str] = typer.Option(None, "--served-name", help="Model name the server answers to."),
    json_output: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Prove the server answers like the model that left: replay the golden outputs; exit 1 on a mismatch.

    Chat prompts go to /v1/chat/completions, raw ones to /v1/completions,
    greedy, as long as recorded. Exact mode wants every token; tolerant mode
    (another backend or dtype, e.g. vLLM in bf16) allows the first divergence
    only where the recorded model was nearly undecided (top-2 margin below
    --margin) and the server took one of the recorded top-5 there.
    """
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift.host import check as check_step

    report = check_step.check_model(ref, url=url, api_key=api_key, mode=mode, served_name=served_name,
                                    margin_nats=margin)
    emit_report(report)


def inventory(
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", metavar="FILE", help="Write the inventory (JSON) to FILE, to carry to the online host."),
    json_output: bool = typer.Option(False, "--json", help="Print the inventory itself as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or chatter."),
) -> None:
    """List what this host holds, by sha256: model files, bento files and kept wheels, with their tags.

    Carry the file to the online host and run `sealift export NAME DEST --have FILE`:
    the bundle then leaves out every file listed here, and `sealift install` takes
    those from this host's store and wheel pool, hashing each byte as it is taken.

    Model files are not re-hashed: their sha256 come from each model's recorded
    sealift manifest (checked against the digest recorded at import). Wheels come
    from $SEALIFT_HOME/wheels with the sha256 install recorded (a wheel with none is
    hashed now); bento files are hashed (they are small).

    The inventory names this store's id ($BENTOML_HOME/sealift-store-id, made on
    first use): a delta bundle made from it installs on this store only (exit 2
    elsewhere).
    """
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift.bundle.inventory import write_inventory
    from sealift.host import inventory as inventory_step

    inv = inventory_step.take_inventory()
    written = write_inventory(inv, output) if output is not None else None
    console.emit(inv.to_dict(), lambda: inv.print_human(written))


def doctor(
    name: Optional[str] = typer.Argument(None, metavar="NAME", help="A model to check (default: every model in the store)."),
    quick: bool = typer.Option(False, "--quick", help="Do not re-hash the weights against their manifest."),
    json_output: bool = JsonOpt,
) -> None:
    """Check this host for serving offline: env, store, bento, venv, openllm, GPU, disk; exit 1 on any failure."""
    console.set_mode(json_output=json_output)
    from sealift.host import doctor as doctor_step

    report = doctor_step.run_doctor(name, verify=not quick)
    emit_report(report)


def env(name: Optional[str] = typer.Argument(None, metavar="NAME", help="An installed model (default: all).")) -> None:
    """Print the environment for serving offline, for `eval "$(sealift env)"`."""
    from sealift.host import registry

    sys.stdout.write(registry.env_text(name))

"""The `sealift` command line: thin; every command calls one step module.

Expected errors (sealift.errors.SealiftError) become one line on stderr and
exit code 2 (bad input) or 1 (failure); nothing else prints a traceback unless
SEALIFT_DEBUG=1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from sealift import __version__
from sealift import console
from sealift.errors import SealiftError
from sealift.units import parse_size

HELP = """\
Carry a language model across an air gap, verified, and serve it offline.

[bold]THE PATH[/bold]

  online host
    sealift import SRC --name NAME  into the Bento store, sha256 manifest
    sealift build NAME              Bento: weights, tokenizer, code, service
    sealift export NAME DEST        bundle: bento tar, wheels, SHA256SUMS
  air-gapped host
    sealift install BUNDLE          verify every byte, import, offline venv
    sealift inventory -o FILE       what it holds; `export --have FILE`
                                    then carries only what it lacks
    sealift sbom BUNDLE             what the bundle carries, and its licenses
    sealift start NAME              OpenAI API on 127.0.0.1:3000
                                    (or openllm serve NAME, bentoml serve)
    sealift check NAME              answers like the model that left?
    sealift eval-config NAME --for opencompass|lm-eval

[bold]SOURCES[/bold]

  SRC is a model directory, a Hugging Face id in the local HF cache
  (HF_HOME, HF_HUB_CACHE) or a ModelScope id in MODELSCOPE_CACHE.
  Only `import --download` uses the network.

[bold]EXIT STATUS[/bold]

  0 success; 1 the work failed (a verification mismatch);
  2 bad input (missing shard, truncated file, corrupted bundle, unknown
    name); nothing is written.

[bold]ENVIRONMENT[/bold]

  BENTOML_HOME   the Bento store (default ~/bentoml)
  SEALIFT_HOME   venvs, openllm repo, env file (default ~/.sealift)
  SEALIFT_DEBUG  1 shows tracebacks
  SEALIFT_ALLOWED_SIGNERS  install requires a signature by a key listed
                 there (see `sealift install --help`)
"""


class _Interrupted(Exception):
    """Ctrl-C (or SIGTERM where a step maps it to Ctrl-C) during a command; `main` says so and exits 130."""

    def __init__(self, command: str | None) -> None:
        super().__init__(command)
        self.command = command


class _Group(TyperGroup):
    """typer turns KeyboardInterrupt into a silent exit 130; this hands it to `main` instead, which says so."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted(ctx.invoked_subcommand) from None


#: What an interrupted command leaves behind, said after "interrupted".
INTERRUPTED = {
    "import": "the partial copy was removed; nothing was added to the store",
    "export": "the bundle's .partial folder is kept; the same command resumes it",
}

app = typer.Typer(
    cls=_Group,
    name="sealift",
    help=HELP,
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout (implies --quiet).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars or chatter.")


#: What `sealift --version --verbose` reports beside sealift: the stack a bento is built and served with.
VERSION_DISTRIBUTIONS = ("bentoml", "transformers", "torch", "vllm")


def _versions() -> list[tuple[str, str]]:
    """(distribution, installed version or "not installed"), read from package metadata: nothing is imported."""
    import importlib.metadata

    found = []
    for dist in VERSION_DISTRIBUTIONS:
        try:
            found.append((dist, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            found.append((dist, "not installed"))
    return found


def _print_version(verbose: bool) -> None:
    typer.echo(f"sealift {__version__}")
    if verbose:
        for dist, version in _versions():
            typer.echo(f"{dist} {version}")
        typer.echo(f"python {sys.version.split()[0]} ({sys.executable})")


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print sealift's version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="With --version: also bentoml's, transformers', torch's and vllm's versions."),
) -> None:
    if version:
        _print_version(verbose)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:  # `sealift -v` alone: what `sealift` alone shows
        typer.echo(ctx.get_help())
        raise typer.Exit()


# --------------------------------------------------------------------------- import


@app.command("import")
def import_(
    src: str = typer.Argument(..., metavar="SRC", help="Model directory, Hugging Face id (from the local cache) or ModelScope id."),
    name: str = typer.Option(..., "--name", "-n", help="Name in the Bento model store."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit) in the cache."),
    hub: str = typer.Option("auto", "--hub", help="Where to resolve an id: auto, hf or modelscope."),
    download: bool = typer.Option(False, "--download", help="Fetch the id with snapshot_download first (network)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Accept the model's own Python code."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickle weights (*.bin, *.pt)."),
    to_safetensors: bool = typer.Option(False, "--to-safetensors", help="Convert pickle weights to safetensors."),
    link: bool = typer.Option(False, "--link", help="Hardlink/reflink files instead of copying (same filesystem)."),
    include: list[str] = typer.Option([], "--include", metavar="PATTERN", help=(
        "Keep files matching PATTERN that are left out by default (repeatable; fnmatch on the path, as "
        "`hf download --include`).")),
    exclude: list[str] = typer.Option([], "--exclude", metavar="PATTERN", help=(
        "Leave out files matching PATTERN (repeatable; wins over --include).")),
    json_output: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Import a downloaded model into the Bento model store, verified.

    The model is inspected first (config, every shard, safetensors headers,
    tokenizer, custom code); an incomplete one is refused with exit code 2 and
    nothing is written. Files are copied and hashed in one pass; the sha256
    manifest is stored with the model. Importing content already in the store
    returns the existing tag.

    What the server never reads is left out when a complete safetensors set
    (model.safetensors, or an index naming every tensor) covers the weights:
    original/ (Meta's reference checkpoint), safetensors no index names,
    pickle copies (*.bin, *.pt, *.pth), trainer state, Flax/TF copies. One
    line says what and how big; the manifest records it. Nothing is unpickled.
    """
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift import importer, sources

    source = sources.resolve(src, revision=revision, hub=hub, download=download)
    result = importer.import_model(
        source,
        name,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        to_safetensors=to_safetensors,
        link=link,
        include=include,
        exclude=exclude,
    )
    console.emit(result.to_dict(), result.print_human)


@app.command("list")
def list_(json_output: bool = JsonOpt) -> None:
    """List the models sealift imported: name, version, size, parameters, source, and who signed the bundle
    a model was installed from."""
    console.set_mode(json_output=json_output)
    from sealift import signing, store

    models = signing.with_signers(store.list_models())
    console.emit({"models": [m.to_dict() for m in models]}, lambda: store.print_table(models))


@app.command("verify")
def verify(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]", help="A model in the store."),
    json_output: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Re-hash a stored model against its manifest; exit 1 on any mismatch."""
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift import store

    report = store.verify_model(ref)
    console.emit(report.to_dict(), report.print_human)
    if not report.ok:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- build / start


@app.command("build")
def build(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]", help="A model imported with `sealift import`."),
    target: str = typer.Option("gpu", "--target", help="gpu (requirements include vllm) or cpu (transformers only)."),
    backend: str = typer.Option("auto", "--backend", help="Default backend: auto, vllm or transformers."),
    requirement: list[str] = typer.Option([], "--requirement", metavar="SPEC", help=(
        "A package the model's code needs (repeatable): a pip requirement, or IMPORT=REQUIREMENT when the "
        "import name differs (mymod=my-dist>=1.0).")),
    ignore_import: list[str] = typer.Option([], "--ignore-import", metavar="NAME", help=(
        "An import of the model's code that it runs without (repeatable); its package is left out.")),
    no_golden: bool = typer.Option(False, "--no-golden", help="Do not record golden outputs (see `sealift golden`)."),
    json_output: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Build a Bento that holds the model, its tokenizer and code, and the OpenAI service.

    The model's own packages (what its code and tokenizer import, recorded at
    import) join the bento's requirements, so `sealift export` carries their
    wheels. An import sealift cannot map to a package is refused (exit 2):
    name it with --requirement, or --ignore-import it. A quantized checkpoint
    that transformers cannot run on CPU is refused for --target cpu.

    Also records golden outputs (a few greedy answers in float32 on CPU, with
    their top-5 log-probabilities) into the bento for `sealift check`; skipped
    with a warning when the model does not fit in this host's memory.
    """
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift import build as build_step

    result = build_step.build_bento(ref, target=target, backend=backend, requirements=requirement,
                                    ignore_imports=ignore_import, golden=not no_golden)
    console.emit(result.to_dict(), result.print_human, quiet_line=result.bento_tag)


# --------------------------------------------------------------------------- acceptance


@app.command("golden")
def golden(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]", help="A model (its newest bento) in the store."),
    json_output: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Record golden outputs into the model's newest bento (what `sealift build` does unless --no-golden).

    For a model that did not fit in memory at build: run it on a host where
    its float32 weights fit, before `sealift export`. Exit 1 if it cannot record.
    """
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift import golden as golden_step

    outcome = golden_step.record_later(ref)
    console.emit(outcome.to_dict(), lambda: console.out.print(
        f"golden outputs {outcome.status}: {outcome.path or outcome.reason}", markup=False, soft_wrap=True))
    if outcome.status != "recorded":
        raise typer.Exit(1)


@app.command("check")
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
    from sealift import check as check_step

    report = check_step.check_model(ref, url=url, api_key=api_key, mode=mode, served_name=served_name,
                                    margin_nats=margin)
    console.emit(report.to_dict(), report.print_human)
    if not report.ok:
        raise typer.Exit(1)


@app.command("eval-config")
def eval_config(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]", help="A model in the store."),
    tool: str = typer.Option(..., "--for", help="opencompass (a Python config) or lm-eval (YAML with the commands)."),
    url: Optional[str] = typer.Option(None, "--url", help="The server's base URL (default http://127.0.0.1:3000/v1)."),
    json_output: bool = JsonOpt,
) -> None:
    """Print an evaluator config that stays offline: served name, URL, API key from the environment, and the
    tokenizer path in the store (so the evaluator never reaches for the hub or tiktoken)."""
    console.set_mode(json_output=json_output)
    from sealift import evalconfig

    config = evalconfig.eval_config(ref, tool=tool, url=url)
    console.emit(config.to_dict(), lambda: sys.stdout.write(config.text))


def _start(
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
) -> None:
    """Serve a model from the local store with an OpenAI-compatible API, offline.

    NAME is looked up in the model store first (as `openllm start` did), then
    as a bento. Ctrl-C stops the server.

    Engine knobs (vLLM; the transformers backend reads --max-model-len and
    --dtype) come from the options or, when an option is not given, from the
    environment: SEALIFT_TENSOR_PARALLEL_SIZE, SEALIFT_MAX_MODEL_LEN,
    SEALIFT_GPU_MEMORY_UTILIZATION, SEALIFT_MAX_NUM_SEQS, SEALIFT_DTYPE,
    SEALIFT_QUANTIZATION. --max-num-seqs is vLLM's batch (requests past it
    queue inside vLLM); --max-concurrency is sealift's HTTP cap (requests past
    it get 429): two settings, set apart.
    """
    from sealift import start as start_step

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
    }
    code = start_step.start(ref, host=host, port=port, options={k: v for k, v in options.items() if v is not None})
    raise typer.Exit(code)


app.command("start")(_start)
app.command("serve", help="Alias of `start`.")(_start)


# --------------------------------------------------------------------------- export / install


@app.command("export")
def export(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]", help="A model (its newest bento) or a bento tag."),
    dest: list[Path] = typer.Argument(
        ..., metavar="DEST...", help="Directory on the removable medium; several DEST: one volume on each."),
    max_file_size: Optional[int] = typer.Option(
        None, "--max-file-size", metavar="SIZE", parser=parse_size, help="No file over SIZE (K/M/G/T): the archive "
        "and big wheels become numbered parts NAME.part-0001, ... Default: 4G-1 when DEST is on FAT32 (vfat)."),
    volume_size: Optional[int] = typer.Option(
        None, "--volume-size", metavar="SIZE", parser=parse_size,
        help="Volumes of at most SIZE: DEST/<name>-<version>/vol-1/, vol-2/ (copy each to a medium), or vol-N on "
             "the N-th of several DEST (without --volume-size: each DEST's free space)."),
    platform: Optional[str] = typer.Option(
        None, "--platform", help="Target platform tag for wheels (default: manylinux_2_31_x86_64 for a gpu bento, "
        "the oldest vLLM's llguidance has wheels for, glibc >= 2.31; manylinux_2_28_x86_64 for cpu)."),
    cuda: Optional[str] = typer.Option(
        None, "--cuda", help="gpu: the CUDA line of torch: 13.0 (default: the registry's torch 2.13.0; driver >= "
        "580.65.06), 12.9 or 12.8 (PyTorch's cu129/cu128 index, plus vLLM's +cu12x wheel via --find-links or "
        "--wheels-from; driver >= 525.60.13)."),
    extra_index_url: Optional[list[str]] = typer.Option(
        None, "--extra-index-url", help="Another package index to resolve from (repeatable)."),
    find_links: Optional[list[str]] = typer.Option(
        None, "--find-links", help="A directory or page of wheels to resolve from too (repeatable)."),
    no_proof: bool = typer.Option(
        False, "--no-proof", help="Skip the proof (offline venv from the bundle's wheels, imports, vLLM's parser)."),
    python_version: Optional[str] = typer.Option(
        None, "--python-version", help="Target Python for wheels (default: the bento's, e.g. 3.11)."
    ),
    wheels_from: Optional[Path] = typer.Option(None, "--wheels-from", help="Take wheels from this directory."),
    no_wheels: bool = typer.Option(False, "--no-wheels", help="Leave the wheels (and sealift's own wheel) out."),
    with_openllm: bool = typer.Option(
        False, "--with-openllm", help="Also carry openllm 0.6.30 (click<8.2, typer<0.16) in wheels-openllm/."),
    sign: Optional[Path] = typer.Option(
        None, "--sign", metavar="KEY",
        help="Sign SHA256SUMS with this OpenSSH key (SHA256SUMS.sig, SSHSIG, namespace sealift): a private key "
             "file, or the .pub of a key held by ssh-agent."),
    have: Optional[Path] = typer.Option(None, "--have", metavar="INVENTORY", help="A delta bundle: leave out every "
        "file this inventory (`sealift inventory -o` on the target) lists; named NAME-VERSION-delta."),
    sbom: Optional[bool] = typer.Option(
        None, "--sbom/--no-sbom",
        help="Write sbom.cdx.json (CycloneDX: every wheel, sealift, the model). Default: when the bundle has wheels."),
    json_output: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Write a verified bundle: bento tar, wheels/ (with sealift itself), sbom.cdx.json, manifest.json,
    SHA256SUMS, INSTALL.txt; with --sign, SHA256SUMS.sig.

    Wheels are resolved with uv for the target platform and Python. A gpu
    bundle's come from the registry (and --cuda's index) only, never from this
    host's pip configuration, and must hold a CUDA torch that vllm and
    torchvision pin; anything else is refused (exit 2). Before a byte is
    written, the proof makes the runtime venv from exactly those wheels with no
    index and no network, imports torch, transformers, bentoml (gpu: vllm,
    torchvision, torch.version.cuda) and, for gpu, runs vLLM's own `serve`
    parser over the command lines the bento runs. manifest.json records what
    the target needs (platform, glibc, Python, CUDA, minimum driver, GPU memory).

    Anyone can check a signed bundle without sealift, in its directory:
    ssh-keygen -Y verify -f allowed_signers -I IDENTITY -n sealift -s SHA256SUMS.sig < SHA256SUMS

    Two USB disks: `sealift export NAME /media/usb1 /media/usb2 --volume-size 120G`;
    each volume has VOLUME.json and its own SHA256SUMS (README: Removable media).
    """
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift import export as export_step

    result = export_step.export_bundle(
        ref, dest[0], max_file_size=max_file_size, volume_size=volume_size, more_dests=tuple(dest[1:]),
        platform=platform, python_version=python_version, wheels_from=wheels_from, no_wheels=no_wheels,
        with_openllm=with_openllm, sign=sign, sbom=sbom, cuda=cuda, proof=not no_proof,
        extra_index_urls=tuple(extra_index_url or ()), find_links=tuple(find_links or ()), have=have,
    )
    console.emit(result.to_dict(), result.print_human, quiet_line=str(result.bundle))


@app.command("install")
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
    from sealift import volumes

    result = volumes.install_any(bundle_dir, venv=venv, make_venv=not no_venv, allowed_signers=allowed_signers,
                                 host_check=not skip_host_check)
    if not check_after:
        console.emit(result.to_dict(), result.print_human, quiet_line=result.bento_tag)
        return
    from sealift import check as check_step

    report = check_step.check_model(result.bento_tag)
    console.emit({**result.to_dict(), "check": report.to_dict()}, lambda: (result.print_human(), report.print_human()))
    if not report.ok:
        raise typer.Exit(1)


# What a host holds and needs: inventory, sbom, doctor, env (their own module: cli.py stays small).
from sealift.cli_host import doctor, env, inventory, sbom  # noqa: E402

app.command("inventory")(inventory)
app.command("sbom")(sbom)
app.command("doctor")(doctor)
app.command("env")(env)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("SEALIFT_NET_GUARD") == "1":  # refuse and count any non-loopback connection
        from sealift import offline

        offline.install_network_guard()
    try:
        # standalone_mode=False: click returns typer.Exit(code)'s code instead of raising it.
        code = app(args=argv, prog_name="sealift", standalone_mode=False)
    except SealiftError as exc:
        console.error(exc.one_line())
        return exc.exit_code
    except _Interrupted as exc:
        console.err.print(f"interrupted: {INTERRUPTED.get(exc.command or '', 'nothing half-done was kept')}")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:  # EOF on a prompt
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # click usage errors and the unexpected
        if _is_usage_error(exc):
            return _usage_error(exc)
        if os.environ.get("SEALIFT_DEBUG"):
            raise
        console.error(f"unexpected {type(exc).__name__}: {exc} (SEALIFT_DEBUG=1 shows the traceback)")
        return 1
    return code if isinstance(code, int) else 0


def _is_usage_error(exc: Exception) -> bool:
    """A click error (bad option, missing argument): newer typer vendors its own click, so check both families."""
    import click

    return isinstance(exc, (click.ClickException, getattr(typer, "TyperException", click.ClickException)))


def _usage_error(exc: Exception) -> int:
    """One line for a click usage error, pointing at the command's --help; its exit code (2 for usage)."""
    message = exc.format_message().strip()  # type: ignore[attr-defined]
    if message:  # empty for `sealift` alone: the help is already printed
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        console.error(f"{message}{hint}")
    return int(getattr(exc, "exit_code", 2))


if __name__ == "__main__":
    sys.exit(main())

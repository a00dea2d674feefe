"""The commands of the bundle stage: `export` (the bundle) and `sbom` (what a bundle carries)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sealift.cli.app import JsonOpt, QuietOpt
from sealift.core.units import parse_size
from sealift.core import console

__all__ = ["export", "k8s", "pull", "push", "sbom"]


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
    oci: bool = typer.Option(
        False, "--oci", help="Write one OCI image layout (DEST/<name>-<version>.oci/) instead of the folder: a "
        "KServe modelcar image, the CNCF ModelPack artifact (the same layers), the bento, the wheels and the SBOM; "
        "load it into a site registry with `sealift push`."),
    shell: Optional[Path] = typer.Option(
        None, "--shell", metavar="BUSYBOX", help="--oci: the static busybox the modelcar runs (default /bin/busybox, "
        "Debian's busybox-static)."),
    json_output: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Write a verified bundle: bento tar, wheels/ (with sealift itself), sbom.cdx.json, manifest.json,
    SHA256SUMS, INSTALL.txt; with --sign, SHA256SUMS.sig.

    Wheels are resolved with uv for the target platform and Python. A gpu
    bundle's come from the registry (and --cuda's index) only, never from this
    host's pip configuration, and must hold a CUDA torch that vllm and
    torchvision pin; anything else is refused (exit 2). The wheels are
    written first; then, while the model's archive is written, the proof makes
    the runtime venv from exactly those copies with no index and no network,
    imports torch, transformers, bentoml (gpu: vllm, torchvision,
    torch.version.cuda) and, for gpu, runs vLLM's own `serve` parser over the
    command lines the bento runs. The bundle gets its name only once the proof
    passed; a failed proof leaves NAME.partial, which the next export resumes.
    manifest.json records what the target needs (platform, glibc, Python,
    CUDA, minimum driver, GPU memory).

    Anyone can check a signed bundle without sealift, in its directory:
    ssh-keygen -Y verify -f allowed_signers -I IDENTITY -n sealift -s SHA256SUMS.sig < SHA256SUMS

    Two USB disks: `sealift export NAME /media/usb1 /media/usb2 --volume-size 120G`;
    each volume has VOLUME.json and its own SHA256SUMS (README: Removable media).
    """
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift.bundle import export as export_step

    result = export_step.export_bundle(
        ref, dest[0], max_file_size=max_file_size, volume_size=volume_size, more_dests=tuple(dest[1:]),
        platform=platform, python_version=python_version, wheels_from=wheels_from, no_wheels=no_wheels,
        with_openllm=with_openllm, sign=sign, sbom=sbom, cuda=cuda, proof=not no_proof,
        extra_index_urls=tuple(extra_index_url or ()), find_links=tuple(find_links or ()), have=have, oci=oci,
        shell=shell,
    )
    console.emit(result.to_dict(), result.print_human, quiet_line=str(getattr(result, "layout", None)
                                                                      or result.bundle))


def sbom(
    bundle_dir: Path = typer.Argument(..., metavar="BUNDLE", help="A bundle directory (or its sbom.cdx.json)."),
    json_output: bool = JsonOpt,
) -> None:
    """Summarize a bundle's SBOM (sbom.cdx.json, CycloneDX): packages, licenses, and what states no license.

    The SBOM is checked against its SHA256SUMS line first; a changed one is refused (exit 2).
    """
    console.set_mode(json_output=json_output)
    from sealift.bundle import sbom as sbom_step

    summary = sbom_step.summarize(bundle_dir)
    console.emit(summary.to_dict(), summary.print_human)


CaOpt = typer.Option(None, "--ca", metavar="PEM", help="The site CA that signed the registry's TLS certificate.")
UserOpt = typer.Option(None, "--username", "-u", help="Registry user (password: --password-stdin or "
                       "$SEALIFT_REGISTRY_PASSWORD). Default: skopeo's own credentials (skopeo login).")
PasswordStdinOpt = typer.Option(False, "--password-stdin", help="Read the registry password from stdin.")
PlainHttpOpt = typer.Option(False, "--plain-http", help="The registry has no TLS (a test registry on loopback).")


def _auth(username: Optional[str], password_stdin: bool, ca: Optional[Path], plain_http: bool):
    import os
    import sys

    from sealift.bundle.registry import PASSWORD_ENV, Auth

    password = sys.stdin.readline().rstrip("\n") if password_stdin else os.environ.get(PASSWORD_ENV)
    return Auth(username=username, password=password if username else None, ca=ca, plain_http=plain_http)


def push(
    layout: Path = typer.Argument(..., metavar="LAYOUT", help="The folder `sealift export NAME DEST --oci` wrote."),
    ref: str = typer.Argument(..., metavar="REGISTRY/REPO:TAG", help="Where: the modelcar is TAG, the rest TAG-ROLE."),
    username: Optional[str] = UserOpt, password_stdin: bool = PasswordStdinOpt, ca: Optional[Path] = CaOpt,
    plain_http: bool = PlainHttpOpt, json_output: bool = JsonOpt, quiet: bool = QuietOpt,
) -> None:
    """Push an OCI layout into the site registry with skopeo, digests unchanged: the modelcar as TAG (KServe's
    storageUri), the ModelPack artifact as TAG-model, then TAG-bento, TAG-wheels, TAG-sbom, and TAG-sealift (the
    signed index.json, SHA256SUMS and SHA256SUMS.sig that `sealift pull` checks)."""
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift.bundle import registry

    result = registry.push(layout, ref, auth=_auth(username, password_stdin, ca, plain_http))
    console.emit(result.to_dict(), result.print_human, quiet_line=result.images.get("modelcar", ref))


def pull(
    ref: str = typer.Argument(..., metavar="REGISTRY/REPO:TAG", help="What `sealift push` pushed."),
    dest: Path = typer.Argument(..., metavar="DIR", help="A new folder: the OCI layout, as export wrote it."),
    allowed_signers: Optional[Path] = typer.Option(
        None, "--allowed-signers", metavar="FILE", help="Require a signature by a key listed here (default: "
        "$SEALIFT_ALLOWED_SIGNERS, $SEALIFT_HOME/allowed_signers, /etc/sealift/allowed_signers)."),
    username: Optional[str] = UserOpt, password_stdin: bool = PasswordStdinOpt, ca: Optional[Path] = CaOpt,
    plain_http: bool = PlainHttpOpt, json_output: bool = JsonOpt, quiet: bool = QuietOpt,
) -> None:
    """Pull a layout back from a registry into DIR: its signed index first (checked as install checks a bundle),
    each manifest by the digest that index names, then every blob hashed. Nothing is left in DIR unless all of
    it checks (exit 2)."""
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift.bundle import registry

    result = registry.pull(ref, dest, auth=_auth(username, password_stdin, ca, plain_http),
                           allowed_signers=allowed_signers)
    console.emit(result.to_dict(), result.print_human, quiet_line=result.layout)


def k8s(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION]", help="A model (its newest bento) or a bento tag."),
    image: str = typer.Option(..., "--image", metavar="REGISTRY/REPO:TAG", help="The modelcar `sealift push` "
                              "pushed (TAG itself, not TAG-model)."),
    runtime_image: Optional[str] = typer.Option(
        None, "--runtime-image", metavar="IMAGE", help="The site's vLLM image (default vllm/vllm-openai:v<the "
        "vLLM the bento pins>; a site mirrors it into its registry)."),
    kind: Optional[list[str]] = typer.Option(None, "--kind", help="kserve (InferenceService) or deployment "
                                             "(Deployment + Service); repeatable. Default: both."),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", "--gpus", help="GPUs per replica "
                                             "(nvidia.com/gpu, vLLM --tensor-parallel-size)."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="Default: the model's own."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n"),
    name: Optional[str] = typer.Option(None, "--name", help="Object name (default: the model's name)."),
    image_volume: bool = typer.Option(False, "--image-volume", help="deployment: mount the modelcar as an image "
                                      "volume (Kubernetes >= 1.33) instead of copying it into an emptyDir."),
    json_output: bool = JsonOpt,
) -> None:
    """Print the manifests a cluster needs to serve NAME from the site registry (YAML; --json: a list).

    kubectl apply -f <(sealift k8s qwen7b --image registry.site/models/qwen7b:v1 --gpus 2)
    """
    console.set_mode(json_output=json_output)
    import json
    import sys

    from sealift.bundle import k8s as k8s_step

    docs = k8s_step.for_model(ref, image=image, runtime_image=runtime_image, kinds=tuple(kind or k8s_step.KINDS),
                              tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                              namespace=namespace, name=name, image_volume=image_volume)
    if json_output:
        sys.stdout.write(json.dumps(docs, indent=1) + "\n")
        return
    import yaml  # PyYAML: bentoml's dependency

    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False))

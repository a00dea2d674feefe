"""The commands of the bundle stage: `export` (the bundle) and `sbom` (what a bundle carries)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sealift.cli.app import JsonOpt, QuietOpt
from sealift.core.units import parse_size
from sealift.core import console

__all__ = ["export", "sbom"]


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
    from sealift.bundle import export as export_step

    result = export_step.export_bundle(
        ref, dest[0], max_file_size=max_file_size, volume_size=volume_size, more_dests=tuple(dest[1:]),
        platform=platform, python_version=python_version, wheels_from=wheels_from, no_wheels=no_wheels,
        with_openllm=with_openllm, sign=sign, sbom=sbom, cuda=cuda, proof=not no_proof,
        extra_index_urls=tuple(extra_index_url or ()), find_links=tuple(find_links or ()), have=have,
    )
    console.emit(result.to_dict(), result.print_human, quiet_line=str(result.bundle))


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

"""The commands of the model stage: `import` (a checkpoint into the store), `list`, `verify` (a stored model)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sealift.cli.app import JsonOpt, QuietOpt, emit_report
from sealift.core import console

__all__ = ["import_", "list_", "verify"]


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
    allow_missing_tensors: bool = typer.Option(False, "--allow-missing-tensors", help=(
        "Import a checkpoint that lacks tensors its architecture declares (or has them in another shape); "
        "recorded in the manifest and the build summary. transformers fills what is missing with random weights.")),
    json_output: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Import a downloaded model into the Bento model store, verified.

    The model is inspected first (config, every shard, safetensors headers,
    tokenizer, custom code); an incomplete one is refused with exit code 2 and
    nothing is written. The headers' tensors are held against what the
    architecture declares (the model class built on the meta device, no weight
    read): a tensor missing or in the wrong shape is refused the same way. Files are copied and hashed in one pass; the sha256
    manifest is stored with the model. Importing content already in the store
    returns the existing tag.

    What the server never reads is left out when a complete safetensors set
    (model.safetensors, or an index naming every tensor) covers the weights:
    original/ (Meta's reference checkpoint), safetensors no index names,
    pickle copies (*.bin, *.pt, *.pth), trainer state, Flax/TF copies. One
    line says what and how big; the manifest records it. Nothing is unpickled.
    """
    console.set_mode(quiet=quiet, json_output=json_output)
    from sealift.model import importer, sources

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
        allow_missing_tensors=allow_missing_tensors,
    )
    console.emit(result.to_dict(), result.print_human)


def list_(json_output: bool = JsonOpt) -> None:
    """List the models sealift imported: name, version, size, parameters, source, and who signed the bundle
    a model was installed from."""
    console.set_mode(json_output=json_output)
    from sealift.host import registry
    from sealift.model import store

    models = registry.with_signers(store.list_models())
    console.emit({"models": [m.to_dict() for m in models]}, lambda: store.print_table(models))


def verify(
    ref: str = typer.Argument(..., metavar="NAME[:VERSION] | BUNDLE...", help="A model in the store, or a bundle "
                              "folder (or the vol-N folders of one)."),
    more: list[Path] = typer.Argument(None, metavar="VOL", hidden=True),
    allowed_signers: Optional[Path] = typer.Option(
        None, "--allowed-signers", metavar="FILE", help="A bundle: require a signature by a key this file lists "
        "(default: the policy `sealift install` reads)."),
    json_output: bool = JsonOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Re-hash a stored model against its manifest, or check a bundle as `sealift install` would without
    installing it (signature, lists, every byte, every archive member); exit 1 on a model mismatch, 2 for a
    bundle that does not verify."""
    console.set_mode(quiet=quiet, json_output=json_output)
    if Path(ref).is_dir():
        from sealift.bundle import signing
        from sealift.host import verify as verify_step

        trusted = verify_step.check_bundle([Path(ref), *(more or [])], signing.policy(allowed_signers))
        who = trusted.signature.describe() if trusted.signature else "unsigned"
        doc = {"bundle": trusted.medium.recorded(), "bento_tag": trusted.doc["bento"]["tag"], "ok": True,
               "verified_bytes": trusted.total_bytes, "signature": trusted.signature.to_dict() if trusted.signature
               else None}
        console.emit(doc, lambda: console.out.print(
            f"bundle {doc['bundle']} ({doc['bento_tag']}): every byte matches SHA256SUMS and manifest.json, every "
            f"archive member is safe ({who})", markup=False, soft_wrap=True))
        return
    from sealift.model import store

    report = store.verify_model(ref)
    emit_report(report)

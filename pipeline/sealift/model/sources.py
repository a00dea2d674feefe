"""Resolve SRC to a model directory: a local directory, a cached hub id, or (only with --download) a download.

Hugging Face ids resolve through huggingface_hub's own cache API
(`snapshot_download(local_files_only=True)`, which honours HF_HOME /
HF_HUB_CACHE), never the network. ModelScope ids resolve from
$MODELSCOPE_CACHE (default ~/.cache/modelscope/hub) in both the current
`models/<org>/<name>` layout and the older `<org>/<name>` one, with '.' in
names stored as '___'. Only `download=True` touches the network.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from sealift.core.errors import UserError

SourceKind = Literal["local", "hf-cache", "modelscope-cache", "download"]
HUBS = ("auto", "hf", "modelscope")


@dataclass
class Source:
    """Where a model's files are: the directory to read, how it was found, and what was asked for."""

    path: Path
    kind: SourceKind
    ref: str
    revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d

    def describe(self) -> str:
        rev = f"@{self.revision[:12]}" if self.revision else ""
        return f"{self.ref}{rev} ({self.kind})"


def _looks_like_path(src: str) -> bool:
    return src.startswith(("/", "./", "../", "~")) or src in (".", "..")


def modelscope_cache() -> Path:
    """$MODELSCOPE_CACHE, default ~/.cache/modelscope/hub (modelscope's own default)."""
    return Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope" / "hub")


def _resolve_hf(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot directory of repo_id@revision, or None if it is not in the cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, ValueError):
        return None


def _hf_cached_revisions(repo_id: str) -> list[str]:
    """Refs and short commits of repo_id in the HF cache (for a helpful error), [] if none."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache dir at all, or one scan_cache_dir cannot read
        return []
    out: list[str] = []
    for repo in info.repos:
        if repo.repo_id == repo_id and repo.repo_type == "model":
            for rev in repo.revisions:
                out.extend(sorted(rev.refs) or [rev.commit_hash[:12]])
    return out


def _resolve_modelscope(model_id: str) -> Path | None:
    """The ModelScope cache directory for org/name (new layout first, then the old one)."""
    if model_id.count("/") != 1:
        return None
    org, name = model_id.split("/")
    root = modelscope_cache()
    for base in (root / "models", root):
        for o, n in ((org, name.replace(".", "___")), (org.replace(".", "___"), name.replace(".", "___")), (org, name)):
            cand = base / o / n
            if cand.is_dir() and (cand / "config.json").exists():
                return cand
    return None


def _download(src: str, revision: str | None, hub: str) -> Source:
    """Fetch src with the hub's snapshot_download (the one networked step sealift has)."""
    if hub == "modelscope":
        try:
            from modelscope import snapshot_download as ms_download  # type: ignore[import-not-found]
        except ImportError:
            raise UserError("--download --hub modelscope needs the modelscope package", hint="pip install 'sealift[modelscope]'") from None
        path = ms_download(src, revision=revision)
        return Source(Path(path), "download", src, revision)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise UserError("--download needs the network but HF_HUB_OFFLINE is set", hint="unset HF_HUB_OFFLINE for this command")
    try:
        path = Path(snapshot_download(src, revision=revision))
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise UserError(f"{src}: {str(exc).splitlines()[0]}", hint="check the id and --revision") from None
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(f"downloading {src} failed: {str(exc).splitlines()[0]}", hint="check the network and try again") from None
    return Source(path, "download", src, path.name if path.parent.name == "snapshots" else revision)


def resolve(src: str, *, revision: str | None = None, hub: str = "auto", download: bool = False) -> Source:
    """Find the model directory SRC names. UserError (exit 2) if it cannot be found offline.

    A path that exists is a local directory; anything else is an id looked up
    in the HF cache then the ModelScope cache (or only one with hub="hf"/"modelscope").
    """
    if hub not in HUBS:
        raise UserError(f"--hub {hub!r} is not one of {', '.join(HUBS)}")
    if download:
        return _download(src, revision, "modelscope" if hub == "modelscope" else "hf")

    p = Path(src).expanduser()
    if p.exists() or _looks_like_path(src):
        if not p.exists():
            raise UserError(f"{src}: no such directory")
        if not p.is_dir():
            raise UserError(f"{src} is a file", hint="give the model's directory")
        if revision:
            raise UserError(f"--revision applies to hub ids, but {src} is a local directory")
        return Source(p.resolve(), "local", str(p.resolve()), None)

    looked: list[str] = []
    if hub in ("auto", "hf"):
        from huggingface_hub.constants import HF_HUB_CACHE

        path = _resolve_hf(src, revision)
        if path is not None:
            return Source(path, "hf-cache", src, path.name)
        looked.append(f"the Hugging Face cache {HF_HUB_CACHE}")
        cached = _hf_cached_revisions(src)
        if cached and revision:
            raise UserError(
                f"{src} is in the Hugging Face cache but not at revision {revision!r} (cached: {', '.join(cached)})",
                hint="pick a cached revision or download that one",
            )
    if hub in ("auto", "modelscope"):
        path = _resolve_modelscope(src)
        if path is not None:
            if revision:
                raise UserError(
                    f"{src} is in the ModelScope cache, which keeps one revision; --revision cannot select one",
                    hint="leave out --revision",
                )
            return Source(path, "modelscope-cache", src, None)
        looked.append(f"the ModelScope cache {modelscope_cache()}")
    rev = f"@{revision}" if revision else ""
    raise UserError(
        f"{src}{rev} is not a directory and not in {' or '.join(looked)}",
        hint=f"download it first (`hf download {src}`), pass its directory, or add --download",
    )

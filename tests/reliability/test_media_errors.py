"""Media errors: every single-byte corruption of a bundle is caught by install, before anything is imported.

A bundle of the tiny cpu bento (its files: the bento tar, INSTALL.txt, manifest.json, SHA256SUMS) is
damaged one byte at a time, on a private copy, and restored after each check:
- the tar: the first byte, the size and checksum fields and the last byte of every member's header,
  the first and last byte of every member's data and of its padding, the end-of-archive blocks and
  the file's last byte, plus random positions;
- SHA256SUMS (the one file nothing else hashes): every byte, with several flip patterns (a case
  flip, the binary-mode `*`, a high bit that makes invalid UTF-8, ...);
- manifest.json and INSTALL.txt: the first and last byte and positions across them.
Each damaged bundle goes through `verify.check_bundle`, the very function `sealift install` runs
before it touches a store (it needs none): it must raise UserError (exit 2). A handful of the
positions also go through the real `sealift install`: exit 2, "nothing was imported", the store empty.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tarfile
from pathlib import Path

import pytest

from conftest import Env
from sealift.core import console
from sealift.host import verify
from sealift.core.errors import UserError

SEED = int(os.environ.get("SEALIFT_MEDIA_SEED", "5"))
SUMS_MASKS = (0x01, 0x0A, 0x20, 0x80, 0xFF)  # 0x0A turns the second space of "<hex>  <path>" into "*"


@pytest.fixture(scope="module")
def pristine(cpu_bento, tmp_path_factory) -> Path:
    usb = tmp_path_factory.mktemp("usb-media")
    run = cpu_bento.host.sealift("export", "tiny", usb, "--no-wheels", "--json", check=True)
    return Path(run.json()["bundle"])


@pytest.fixture
def damaged(pristine, tmp_path) -> Path:
    dst = tmp_path / "usb" / pristine.name
    shutil.copytree(pristine, dst)
    return dst


def flip(path: Path, pos: int, mask: int) -> int:
    """XOR the byte at pos with mask; returns the old byte."""
    with open(path, "r+b") as f:
        f.seek(pos)
        old = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([old ^ mask]))
    return old


def restore(path: Path, pos: int, old: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(bytes([old]))


def refusal(path: Path) -> str | None:
    """The UserError message check_bundle raises for this bundle, or None if it passes."""
    try:
        verify.check_bundle(path)
    except UserError as exc:
        assert exc.exit_code == 2
        return exc.one_line()
    return None


def tar_positions(archive: Path, rng: random.Random, extra: int) -> dict[int, str]:
    """Positions in the tar worth a flip, each with what it is."""
    size = archive.stat().st_size
    found: dict[int, str] = {}
    with tarfile.open(archive, "r:") as tf:
        members = tf.getmembers()
    for m in members:
        end = m.offset_data + m.size
        where = {
            m.offset: "header start",
            m.offset_data - 512 + 124: "size field",
            m.offset_data - 512 + 148: "checksum field",
            m.offset_data - 1: "header end",
        }
        if m.size:
            where |= {m.offset_data: "data start", end - 1: "data end"}
        if end % 512:
            where |= {end: "padding start", end + (-end % 512) - 1: "padding end"}
        for pos, what in where.items():
            found.setdefault(pos, f"{m.name}: {what}")
    last_end = max(m.offset_data + m.size + (-(m.offset_data + m.size) % 512) for m in members)
    found |= {last_end: "end-of-archive blocks", size - 1: "last byte of the archive"}
    for pos in rng.sample(range(size), extra):
        found.setdefault(pos, "random")
    return found


def test_every_sampled_single_byte_corruption_is_refused(damaged: Path) -> None:
    console.set_mode(quiet=True)
    rng = random.Random(SEED)
    assert refusal(damaged) is None  # the copy is intact to begin with
    doc = json.loads((damaged / "manifest.json").read_text())
    archive = damaged / doc["archive"]
    plan: list[tuple[Path, int, int, str]] = []
    for pos, what in tar_positions(archive, rng, 150).items():
        plan.append((archive, pos, rng.randrange(1, 256), what))
    sums = damaged / "SHA256SUMS"
    plan += [(sums, pos, mask, "SHA256SUMS") for pos in range(sums.stat().st_size) for mask in SUMS_MASKS]
    for name, step in (("manifest.json", 5), ("INSTALL.txt", 17)):
        path = damaged / name
        n = path.stat().st_size
        plan += [(path, pos, rng.randrange(1, 256), name) for pos in sorted({0, n - 1, *range(1, n - 1, step)})]

    missed = []
    for path, pos, mask, what in plan:
        old = flip(path, pos, mask)
        try:
            if refusal(damaged) is None:
                missed.append(f"{path.name}@{pos} ^0x{mask:02x} ({what})")
        finally:
            restore(path, pos, old)
    print(f"\n{len(plan)} single-byte corruptions over {len({p for p, *_ in plan})} files; missed: {len(missed)}")
    assert not missed, f"{len(missed)} corruptions were not caught: {missed[:10]}"
    assert refusal(damaged) is None  # every flip was undone
    assert len(plan) > 1000


def test_the_real_install_refuses_with_exit_2_and_imports_nothing(damaged: Path, tmp_path: Path) -> None:
    doc = json.loads((damaged / "manifest.json").read_text())
    archive = damaged / doc["archive"]
    with tarfile.open(archive, "r:") as tf:
        weights = next(m for m in tf.getmembers() if m.name.endswith("model.safetensors"))
        code = next(m for m in tf.getmembers() if m.name.endswith("/serving/app.py"))
    sums = damaged / "SHA256SUMS"
    second_space = sums.read_bytes().index(b"  ") + 1
    cases = [
        (archive, 0, 0x01),  # the first header byte
        (archive, weights.offset_data + weights.size // 3, 0x10),  # inside the weights
        (archive, code.offset_data + 10, 0x20),  # the service's own code
        (archive, archive.stat().st_size - 1, 0xFF),  # the last byte
        (damaged / "manifest.json", 20, 0x01),
        (sums, second_space, 0x0A),  # "  " -> " *": same meaning to sha256sum, not what export wrote
        (sums, 3, 0x80),  # not UTF-8 any more
    ]
    for i, (path, pos, mask) in enumerate(cases):
        host = Env(tmp_path / f"host{i}")
        old = flip(path, pos, mask)
        try:
            run = host.sealift("install", damaged, "--no-venv")
        finally:
            restore(path, pos, old)
        assert run.code == 2, f"{path.name}@{pos}: exit {run.code}\n{run.err}"
        lines = [ln for ln in run.err.strip().splitlines() if ln.strip()]
        assert lines[-1].startswith("error: ") and "Traceback" not in run.err, run.err
        assert "nothing was imported" in lines[-1], run.err
        for kind in ("models", "bentos"):
            d = host.bentoml_home / kind
            assert not (d.exists() and any(d.iterdir())), f"{path.name}@{pos}: something was imported into {d}"
        assert not (host.sealift_home / "env").exists()

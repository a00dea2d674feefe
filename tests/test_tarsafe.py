"""Which tar members are safe to extract, on any Python 3.10+: the stdlib `data` filter and sealift's fallback agree.

One corpus of crafted members, each written into a real tar archive and read
back with tarfile, runs through both implementations of sealift.core.tarsafe
(tarfile.data_filter where this Python has it, and the fallback forced), and
through verify.check_archive with each. A last test runs the fallback under
Debian 12's own /usr/bin/python3.11 (3.11.2, no tarfile.data_filter).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sealift.core import tarsafe
from sealift.core.errors import UserError
from sealift.host import verify

from conftest import ROOT

HAS_FILTER = hasattr(tarfile, "data_filter")
ROOT_NAME = "/sealift-test-extract-root"  # a name only: nothing is written there
SYSTEM_PYTHON = Path("/usr/bin/python3.11")


@dataclass
class Case:
    """The last member is the one judged; the ones before it are what it may link to."""

    name: str
    kind: bytes = tarfile.REGTYPE
    link: str = ""
    mode: int = 0o644
    pax_path: str | None = None  # a name only a PAX header can carry (a NUL)
    before: list[tuple[str, bytes]] = field(default_factory=list)
    refused: str | None = None  # words of member_problem's reason; None: it may be extracted
    #: verify.check_archive refuses the archive though the member alone is safe (a hardlink to no file)
    archive_refused: bool = False


CORPUS: dict[str, Case] = {
    "plain file": Case("./dir/file.txt"),
    "directory": Case("./dir", kind=tarfile.DIRTYPE, mode=0o755),
    "the root itself": Case(".", kind=tarfile.DIRTYPE, mode=0o755),
    "group-writable file (umask 002)": Case("./dir/shared.txt", mode=0o664),
    "setgid directory (a shared group folder)": Case("./dir", kind=tarfile.DIRTYPE, mode=0o2775),
    "symlink inside": Case("./dir/sym", kind=tarfile.SYMTYPE, link="file.txt", mode=0o777),
    "symlink up but inside": Case("./dir/sub/sym", kind=tarfile.SYMTYPE, link="../../other/file.txt"),
    "hardlink to an earlier file": Case("./other/hard", kind=tarfile.LNKTYPE, link="./dir/file.txt",
                                        before=[("./dir/file.txt", tarfile.REGTYPE)]),
    "hardlink to no file of the archive": Case("./hard", kind=tarfile.LNKTYPE, link="nothing-here",
                                               archive_refused=True),
    "absolute name": Case("/tmp/sealift-test-absolute.txt", refused="absolute path"),
    "dotdot": Case("../x", refused="`..`"),
    "dotdot deep": Case("./../../../escaped.txt", refused="`..`"),
    "dotdot that stays inside": Case("./a/../b.txt", refused="`..`"),
    "symlink escaping": Case("./src/escape", kind=tarfile.SYMTYPE, link="../../../../etc",
                             refused="would link to '/etc', which is outside the destination"),
    "symlink to an absolute path": Case("./src/passwd", kind=tarfile.SYMTYPE, link="/etc/passwd",
                                        refused="is a link to an absolute path"),
    "hardlink outside": Case("./src/hard", kind=tarfile.LNKTYPE, link="../../etc/passwd",
                             refused="which is outside the destination"),
    "hardlink to an absolute path": Case("./src/hard", kind=tarfile.LNKTYPE, link="/etc/passwd",
                                         refused="is a link to an absolute path"),
    "character device": Case("./src/null", kind=tarfile.CHRTYPE, refused="is a special file"),
    "block device": Case("./src/sda", kind=tarfile.BLKTYPE, refused="is a special file"),
    "fifo": Case("./src/fifo", kind=tarfile.FIFOTYPE, refused="is a special file"),
    "setuid file": Case("./bin/tool", mode=0o4755, refused="setuid"),
    "setgid file": Case("./bin/tool", mode=0o2755, refused="setuid, setgid or sticky"),
    "sticky file": Case("./bin/tool", mode=0o1644, refused="setuid, setgid or sticky"),
    "newline in the name": Case("./a\nb.txt", refused="line break"),
    "carriage return in the name": Case("./a\rb.txt", refused="line break"),
    "NUL in the name (PAX)": Case("./placeholder", pax_path="./a\0b.txt", refused="NUL"),
    "empty name": Case("", refused="empty name"),
    "symlink with no target": Case("./dir/sym", kind=tarfile.SYMTYPE, link="", refused="empty target"),
    "newline in a link target": Case("./dir/sym", kind=tarfile.SYMTYPE, link="a\nb", refused="line break"),
}


def _write(path: Path, case: Case) -> tarfile.TarInfo:
    """A real archive: the case's earlier members, then its own; the judged member as tarfile reads it back."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind in [("./bento.yaml", tarfile.REGTYPE), *case.before]:
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
        info = tarfile.TarInfo(case.name)
        info.type, info.linkname, info.mode = case.kind, case.link, case.mode
        if case.pax_path is not None:
            info.pax_headers = {"path": case.pax_path}
        data = b"x" if case.kind == tarfile.REGTYPE else b""
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data) if data else None)
    with tarfile.open(path) as tf:
        judged = tf.getmembers()[-1]
    assert judged.name == (case.pax_path if case.pax_path is not None else case.name).rstrip("/") or "."
    return judged


@pytest.fixture(params=sorted(CORPUS))
def case(request, tmp_path) -> tuple[Case, Path, tarfile.TarInfo]:
    c = CORPUS[request.param]
    archive = tmp_path / "case.tar"
    return c, archive, _write(archive, c)


IMPLEMENTATIONS = [pytest.param(True, id="stdlib", marks=pytest.mark.skipif(
                       not HAS_FILTER, reason=f"Python {sys.version.split()[0]} has no tarfile.data_filter")),
                   pytest.param(False, id="fallback")]


@pytest.mark.parametrize("stdlib", IMPLEMENTATIONS)
def test_each_member_gets_its_verdict(case, stdlib):
    c, _, member = case
    problem = tarsafe.member_problem(member, ROOT_NAME, stdlib=stdlib)
    if c.refused is None:
        assert problem is None
    else:
        assert problem is not None and c.refused in problem.replace(ROOT_NAME, ""), problem


@pytest.mark.skipif(not HAS_FILTER, reason=f"Python {sys.version.split()[0]} has no tarfile.data_filter")
def test_the_fallback_says_what_the_stdlib_filter_says(case):
    """Word for word: the data filter's own verdicts (which strip leading slashes and allow `a/../b`) and ours."""
    _, _, member = case
    assert tarsafe.data_filter_problem(member, ROOT_NAME, stdlib=False) == \
        tarsafe.data_filter_problem(member, ROOT_NAME, stdlib=True)
    assert tarsafe.member_problem(member, ROOT_NAME, stdlib=False) == \
        tarsafe.member_problem(member, ROOT_NAME, stdlib=True)


@pytest.mark.parametrize("stdlib", IMPLEMENTATIONS)
def test_check_archive_refuses_what_the_corpus_refuses(case, stdlib, monkeypatch):
    c, archive, _ = case
    monkeypatch.setattr(tarsafe, "STDLIB_FILTER", stdlib)
    links = c.kind in (tarfile.SYMTYPE, tarfile.LNKTYPE)  # sealift's archives hold folders and files only
    if c.refused is None and not c.archive_refused and not links:
        verify.check_archive(archive)
        return
    with pytest.raises(UserError, match="refusing member") as err:
        verify.check_archive(archive)
    assert "nothing was imported" in str(err.value) and ROOT_NAME not in str(err.value)
    assert "/sealift-extract-root" not in str(err.value)  # named "the extraction root"


def test_the_fallback_needs_nothing_from_a_newer_tarfile(tmp_path, monkeypatch):
    """A Python without the filter (3.11.2): the switch off, tarfile without data_filter or FilterError."""
    monkeypatch.setattr(tarsafe, "STDLIB_FILTER", False)
    for name in ("data_filter", "FilterError", "AbsolutePathError", "OutsideDestinationError",
                 "SpecialFileError", "AbsoluteLinkError", "LinkOutsideDestinationError"):
        monkeypatch.delattr(tarfile, name, raising=False)
    good = tmp_path / "good.tar"
    _write(good, CORPUS["plain file"])
    assert [m.name for m in verify.check_archive(good)] == ["./bento.yaml", "./dir/file.txt"]
    bad = tmp_path / "bad.tar"
    _write(bad, CORPUS["symlink escaping"])
    with pytest.raises(UserError, match="would link to '/etc', which is outside the destination"):
        verify.check_archive(bad)
    with pytest.raises(RuntimeError, match="no tarfile.data_filter"):
        tarsafe.data_filter_problem(tarfile.TarInfo("x"), ROOT_NAME, stdlib=True)


def test_an_outside_name_is_named_against_the_extraction_root(tmp_path, monkeypatch):
    """The filter's message names where the member would land; verify words the root for the user."""
    member = tarfile.TarInfo("./a/../../x")
    assert tarsafe.data_filter_problem(member, ROOT_NAME, stdlib=False) == \
        "'./a/../../x' would be extracted to '/x', which is outside the destination"
    monkeypatch.setattr(tarsafe, "STDLIB_FILTER", False)
    arc = tmp_path / "a.tar"
    _write(arc, Case("./src/escape", kind=tarfile.SYMTYPE, link="../../x"))
    with pytest.raises(UserError, match="would link to '/x'"):
        verify.check_archive(arc)
    _write(arc, Case("./src/up", kind=tarfile.SYMTYPE, link=".."))
    with pytest.raises(UserError, match="sealift bundles hold only folders and files"):
        verify.check_archive(arc)  # ./src/.. is the root: inside, yet no link is a sealift archive's


_CHILD = """
import io, sys, tarfile
from sealift.core import tarsafe
assert not hasattr(tarfile, "data_filter") and not tarsafe.STDLIB_FILTER, sys.version
path = sys.argv[1]
with tarfile.open(path, "w") as tf:
    for name in ("ok.txt", "../x"):
        info = tarfile.TarInfo(name)
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    info = tarfile.TarInfo("link")
    info.type, info.linkname = tarfile.SYMTYPE, "../../etc"
    tf.addfile(info)
with tarfile.open(path) as tf:
    for m in tf.getmembers():
        print(m.name, "->", tarsafe.member_problem(m, "/sealift-extract-root"), "|",
              tarsafe.data_filter_problem(m, "/sealift-extract-root"))
"""


def _system_python_version() -> tuple[int, ...] | None:
    if not SYSTEM_PYTHON.is_file():
        return None
    p = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(*sys.version_info[:3])"],
                       capture_output=True, text=True)
    return tuple(map(int, p.stdout.split())) if p.returncode == 0 else None


def test_the_fallback_runs_on_debian_12s_python(tmp_path):
    version = _system_python_version()
    if version is None:
        pytest.skip(f"{SYSTEM_PYTHON} is absent (Debian 12's python3.11, 3.11.2, has no tarfile.data_filter)")
    if version >= (3, 11, 4):
        pytest.skip(f"{SYSTEM_PYTHON} is {'.'.join(map(str, version))}, which has tarfile.data_filter")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(ROOT / "pipeline")
    p = subprocess.run([str(SYSTEM_PYTHON), "-c", _CHILD, str(tmp_path / "t.tar")],
                       env=env, capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "ok.txt -> None | None"
    assert lines[1] == ("../x -> `..` in the path | '../x' would be extracted to '/x', "
                        "which is outside the destination")
    assert lines[2].startswith("link -> 'link' would link to '/etc', which is outside the destination")

"""Who wrote a bundle: an OpenSSH SSHSIG signature over SHA256SUMS, made and checked by `ssh-keygen -Y`.

    check_key(key) -> KeyInfo                   export --sign: the key works, before anything is written
    sign_sums(sums, key) -> Signature           export --sign: writes SHA256SUMS.sig beside SHA256SUMS
    policy(flag) -> Policy | None               install: where the allowed signers come from, if anywhere
    verify_sums(label, policy, sums=, sig=) -> Checked   install: first, before a single weight is hashed

SHA256SUMS already covers manifest.json, INSTALL.txt, sbom.cdx.json, the
wheels and the archive, so one detached signature over it covers the bundle.
The format is OpenSSH's own (SSHSIG, namespace `sealift`), made by the
`ssh-keygen` of the openssh-client package; sealift writes no signature bytes
itself. Anyone can check a bundle by hand, without sealift:

    ssh-keygen -Y verify -f allowed_signers -I IDENTITY -n sealift -s SHA256SUMS.sig < SHA256SUMS

KEY is an OpenSSH private key file (ed25519 or any type ssh-keygen signs with),
or a public key file whose private half is in ssh-agent (SSH_AUTH_SOCK): that is
how `ssh-keygen -Y sign -f key.pub` signs, and the private key never leaves the
agent.

The install policy is an allowed_signers file (`man ssh-keygen`, ALLOWED
SIGNERS: `identity [namespaces="sealift"] ssh-ed25519 AAAA...`), the first of:

    --allowed-signers FILE
    $SEALIFT_ALLOWED_SIGNERS
    $SEALIFT_HOME/allowed_signers      (a user's policy)
    /etc/sealift/allowed_signers       (a site's policy)

Under a policy, install refuses (exit 2, nothing imported) a bundle with no
SHA256SUMS.sig, one whose SHA256SUMS does not match its signature, and one
signed by a key the file does not list. With no policy, a signature that is
there is still checked against SHA256SUMS (a bad one is refused), and the key's
fingerprint is reported, with no identity.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealift.core import console, paths
from sealift.core.errors import UserError

__all__ = [
    "NAMESPACE", "SIG_NAME", "ENV", "SYSTEM_ALLOWED_SIGNERS", "KeyInfo", "Signature", "Policy", "Checked",
    "check_key", "sign_sums", "already_signed", "policy", "verify_sums", "manual_check_command",
]

NAMESPACE = "sealift"
#: The detached signature beside SHA256SUMS.
SIG_NAME = "SHA256SUMS.sig"
ENV = "SEALIFT_ALLOWED_SIGNERS"
SYSTEM_ALLOWED_SIGNERS = Path("/etc/sealift/allowed_signers")
USER_ALLOWED_SIGNERS = "allowed_signers"  # under $SEALIFT_HOME

NO_SSH_KEYGEN_HINT = "install OpenSSH's client (Debian/Ubuntu: apt-get install openssh-client)"


@dataclass(frozen=True)
class KeyInfo:
    """A signing key as `ssh-keygen -l` sees it."""

    path: str
    fingerprint: str  # SHA256:...
    key_type: str  # ED25519, RSA, ...
    comment: str
    agent: bool  # a public key file: the private half must be (and was found) in ssh-agent


@dataclass(frozen=True)
class Signature:
    """Who signed a bundle's SHA256SUMS. `identity` is the allowed_signers principal; None when no policy vouched."""

    fingerprint: str
    key_type: str
    identity: str | None = None
    allowed_signers: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        key = f"{self.key_type} key {self.fingerprint}"
        if self.identity:
            return f"{self.identity} ({key}, listed in {self.allowed_signers})"
        return f"{key} (not checked against any allowed signers: give --allowed-signers to require it)"


@dataclass(frozen=True)
class Policy:
    """The allowed_signers file install holds a bundle to, and where that choice came from."""

    path: Path
    source: str  # "--allowed-signers", "$SEALIFT_ALLOWED_SIGNERS", or the config file's own path

    def describe(self) -> str:
        return str(self.path) if self.source == str(self.path) else f"{self.path} (from {self.source})"


@dataclass(frozen=True)
class Checked:
    """What verify_sums proved: the signature (None: unsigned, no policy) and the exact SHA256SUMS bytes it covers."""

    signature: Signature | None
    sums: bytes | None


# --------------------------------------------------------------------------- ssh-keygen


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if not found:
        raise UserError("ssh-keygen was not found on PATH: sealift signs and checks bundles with it",
                        hint=NO_SSH_KEYGEN_HINT)
    return found


def _run(args: list[str], *, data: bytes | None = None, tty: bool = False) -> subprocess.CompletedProcess[bytes]:
    """ssh-keygen ARGS; `data` on stdin, else stdin is the terminal (tty=True: a passphrase prompt) or nothing."""
    stdin = None if tty and sys.stdin is not None and sys.stdin.isatty() else subprocess.DEVNULL
    return subprocess.run([_ssh_keygen(), *args], input=data, stdin=None if data is not None else stdin,
                          capture_output=True, timeout=300)


def _said(p: subprocess.CompletedProcess[bytes]) -> str:
    """ssh-keygen's last words (stderr, else stdout), on one line."""
    text = (p.stderr or p.stdout or b"").decode(errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith(("Signing file", "Write sig"))]
    return lines[-1] if lines else f"exit status {p.returncode}"


#: `Good "sealift" signature [for IDENTITY] with ED25519 key SHA256:...`
_GOOD = re.compile(r'Good "[^"]*" signature (?:for (?P<who>.+?) )?with (?P<type>\S+) key (?P<fp>\S+)')


def _good(p: subprocess.CompletedProcess[bytes]) -> re.Match[str] | None:
    if p.returncode != 0:
        return None
    return _GOOD.search((p.stdout + p.stderr).decode(errors="replace"))


# --------------------------------------------------------------------------- export: sign


def _is_public_key_file(key: Path) -> bool:
    with open(key, "rb") as f:
        head = f.read(64).lstrip()
    return not head.startswith(b"-----BEGIN")


def check_key(key: Path) -> KeyInfo:
    """UserError (exit 2) unless KEY can sign: run before export writes a byte.

    A public key file signs through ssh-agent; that is tried here (on a few
    bytes), since nothing else could make it work. A private key file is
    checked with `ssh-keygen -l`; a passphrase is asked for once, when
    SHA256SUMS is signed.
    """
    key = Path(key).expanduser()
    if not key.is_file():
        raise UserError(f"--sign {key}: no such key file", hint="give an OpenSSH private key, or the .pub of a key in ssh-agent")
    p = _run(["-l", "-f", str(key)])
    m = re.match(r"\d+ (\S+) ?(.*) \((\S+)\)\s*$", p.stdout.decode(errors="replace").strip())
    if p.returncode != 0 or not m:
        raise UserError(f"--sign {key}: not an OpenSSH key ({_said(p)})",
                        hint="make one with `ssh-keygen -t ed25519 -f KEY`")
    agent = _is_public_key_file(key)
    if agent:
        with tempfile.TemporaryDirectory(prefix="sealift-sign-") as tmp:
            probe = Path(tmp) / "probe"
            probe.write_bytes(b"sealift: can this key sign?\n")
            t = _run(["-Y", "sign", "-f", str(key), "-n", NAMESPACE, str(probe)])
        if t.returncode != 0:
            where = "SSH_AUTH_SOCK is not set" if not os.environ.get("SSH_AUTH_SOCK") else "ssh-agent does not hold it"
            raise UserError(f"--sign {key} is a public key and {where}, so it cannot sign ({_said(t)})",
                            hint="`ssh-add` its private key first, or give the private key file; nothing was written")
    return KeyInfo(str(key), m.group(1), m.group(3), m.group(2), agent)


def sign_sums(sums: Path, key: Path) -> Signature:
    """Write SUMS.sig (SSHSIG, namespace sealift) with `ssh-keygen -Y sign`, check it, fsync it.

    A stale SHA256SUMS.sig (an interrupted earlier run) is removed first:
    ssh-keygen would stop to ask before overwriting it.
    """
    sig = sums.with_name(SIG_NAME)
    sig.unlink(missing_ok=True)
    p = _run(["-Y", "sign", "-f", str(Path(key).expanduser()), "-n", NAMESPACE, str(sums)], tty=True)
    if p.returncode != 0 or not sig.is_file():
        sig.unlink(missing_ok=True)
        raise UserError(f"signing {sums.name} with {key} failed: {_said(p)}",
                        hint="check the key (and its passphrase, or ssh-agent), then run the same export again: "
                             "it resumes")
    fd = os.open(sig, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    good = _good(_run(["-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(sig)], data=sums.read_bytes()))
    if not good:
        raise UserError(f"{sig}: ssh-keygen wrote a signature that does not check", hint="run the same export again")
    return Signature(fingerprint=good["fp"], key_type=good["type"])


def already_signed(bundle: Path, key: Path, doc: dict[str, Any]) -> Signature:
    """`export --sign KEY` of a bundle that is already complete: its signature, if KEY made it; else UserError.

    A finished bundle is never signed after the fact: what is on the medium now
    is not known to be what export wrote.
    """
    info = check_key(key)
    sig = bundle / SIG_NAME
    if not sig.is_file():
        raise UserError(f"{bundle} already exists, exported without --sign",
                        hint="remove it and export again with --sign, or choose another DEST")
    good = _good(_run(["-Y", "check-novalidate", "-n", NAMESPACE, "-s", str(sig)],
                      data=(bundle / "SHA256SUMS").read_bytes()))
    if not good or good["fp"] != info.fingerprint or (doc.get("signature") or {}).get("fingerprint") != info.fingerprint:
        raise UserError(f"{bundle} already exists, signed by another key or damaged (not by {info.fingerprint})",
                        hint="remove it and export again, or choose another DEST")
    return Signature(fingerprint=good["fp"], key_type=good["type"])


def manual_check_command(identity: str = "IDENTITY") -> str:
    """The command anyone can run in a bundle directory to check its signature without sealift."""
    return f"ssh-keygen -Y verify -f allowed_signers -I {identity} -n {NAMESPACE} -s {SIG_NAME} < SHA256SUMS"


# --------------------------------------------------------------------------- install: policy and check


def policy(flag: Path | None = None, *, system: Path = SYSTEM_ALLOWED_SIGNERS) -> Policy | None:
    """The allowed_signers install holds bundles to (see the module doc for the order); None: no policy.

    A file named by the flag or the environment must exist: a policy that
    points nowhere is an error, never a silent "no policy".
    """
    env = os.environ.get(ENV, "").strip()
    chosen = [(Path(flag).expanduser(), "--allowed-signers")] if flag is not None else []
    if not chosen and env:
        chosen = [(Path(env).expanduser(), f"${ENV}")]
    if chosen:
        path, source = chosen[0][0].absolute(), chosen[0][1]
        if not path.is_file():
            raise UserError(f"{source} {path}: no such file; nothing was imported",
                            hint="give an allowed_signers file (`man ssh-keygen`, ALLOWED SIGNERS)")
        return Policy(path, source)
    for path in (paths.sealift_home() / USER_ALLOWED_SIGNERS, Path(system)):
        if path.exists():
            return Policy(path, str(path))
    return None


def verify_sums(label: str, pol: Policy | None, *, sums: bytes, sig: bytes | None) -> Checked:
    """Check the signature `sig` (SHA256SUMS.sig's bytes; None: there is none) over the SHA256SUMS bytes `sums`
    against the policy; UserError (exit 2) for anything that does not hold. `label` names the bundle.

    Both are bytes install read once from the medium: what is checked is what install then uses. The
    signature reaches ssh-keygen through a pipe, so nothing is written. Costs three ssh-keygen runs over
    a few kB: no weight is read.
    """
    if sig is None:
        if pol is not None:
            raise UserError(f"bundle {label} is not signed (no {SIG_NAME}) and the allowed signers "
                            f"{pol.describe()} require a signature; nothing was imported",
                            hint="export it again with `sealift export NAME DEST --sign KEY`")
        return Checked(None, sums)
    if pol is None and not shutil.which("ssh-keygen"):
        console.warn(f"{SIG_NAME} of {label} was not checked: ssh-keygen is not installed ({NO_SSH_KEYGEN_HINT})")
        return Checked(None, sums)
    # 1. the signature covers these very bytes (any key): a changed SHA256SUMS fails here
    novalidate = _run_sig(["-Y", "check-novalidate", "-n", NAMESPACE], sig, sums)
    good = _good(novalidate)
    if not good:
        raise UserError(f"bundle {label}: SHA256SUMS does not match its signature {SIG_NAME} "
                        f"({_said(novalidate)}): it was changed after it was signed; nothing was imported",
                        hint="do not install this bundle; get it again from whoever signed it")
    if pol is None:
        return Checked(Signature(fingerprint=good["fp"], key_type=good["type"]), sums)
    # 2. the key is one the policy lists
    found = _run_sig(["-Y", "find-principals", "-f", str(pol.path)], sig, None)
    principals = [ln.strip() for ln in found.stdout.decode(errors="replace").splitlines() if ln.strip()]
    if found.returncode != 0 or not principals:
        raise UserError(f"bundle {label} is signed by {good['type']} key {good['fp']}, which the allowed signers "
                        f"{pol.describe()} do not list; nothing was imported",
                        hint="do not install it, or add the signer's public key to the allowed signers")
    # 3. and signed for sealift by that identity, now (namespaces=, valid-after/valid-before)
    said = ""
    for who in principals:
        ok = _run_sig(["-Y", "verify", "-f", str(pol.path), "-I", who, "-n", NAMESPACE], sig, sums)
        verified = _good(ok)
        if verified:
            return Checked(Signature(fingerprint=verified["fp"], key_type=verified["type"], identity=who,
                                     allowed_signers=str(pol.path)), sums)
        said = _said(ok)
    raise UserError(f"bundle {label}: key {good['fp']} is listed in {pol.describe()} as {', '.join(principals)} "
                    f"but not for namespace {NAMESPACE!r} or not at this time ({said}); nothing was imported",
                    hint="check that signer's line in the allowed signers")


def _run_sig(args: list[str], sig: bytes, data: bytes | None) -> subprocess.CompletedProcess[bytes]:
    """ssh-keygen ARGS -s /dev/fd/N, the signature bytes fed through a pipe (`data` on stdin)."""
    read_end, write_end = os.pipe()
    try:
        if len(sig) > 60_000:  # a pipe holds 64 KiB; an SSHSIG is a few hundred bytes
            raise UserError(f"{SIG_NAME} is {len(sig)} bytes, not a signature; nothing was imported",
                            hint="do not install this bundle")
        os.write(write_end, sig)
        os.close(write_end)
        write_end = -1
        return subprocess.run([_ssh_keygen(), *args, "-s", f"/dev/fd/{read_end}"], input=data,
                              stdin=None if data is not None else subprocess.DEVNULL, capture_output=True,
                              timeout=300, pass_fds=(read_end,))
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)

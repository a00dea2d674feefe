"""Refuse and count every network access that is not to loopback, in this process.

Standard library only: this file is imported by `sitecustomize.py` at interpreter
start in any guarded Python (the runtime venv, bentoml's workers, openllm's
venv), none of which has sealift installed.

What is refused (before the call reaches the kernel or the resolver, so no
packet ever leaves):

- `socket.socket.connect` / `connect_ex` / `sendto` / `sendmsg` on AF_INET and
  AF_INET6 sockets to anything but a loopback (or unspecified) address;
- `socket.create_connection` to such an address;
- name lookups that would ask DNS: `getaddrinfo`, `gethostbyname(_ex)` of a
  name that is not a loopback name, reverse lookups (`gethostbyaddr`,
  `getnameinfo`) of an address that is not loopback. Analytics and version
  checks start with such a lookup, so they are caught and counted there;
- the same through uvloop's Python-level loop methods, patched on import,
  because uvloop connects and resolves in C (libuv) without Python's socket.

asyncio's own loops resolve with `socket.getaddrinfo` and connect with
`sock.connect`, so they need no patch. Unix sockets, netlink and binding a
listening socket are untouched.

Each refusal is recorded: appended to `ATTEMPTS` in memory, one line on stderr,
and one JSON line (op, host, port, pid, argv, stack) appended with O_APPEND to
the file named by SEALIFT_NET_GUARD_LOG, so many processes can share one log.
"""

from __future__ import annotations

# Only cheap imports at module level: this runs at the start of every guarded
# Python. json, traceback and ipaddress are imported when first needed.
import errno
import os
import socket
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ipaddress
    from typing import Any

ENV_FLAG = "SEALIFT_NET_GUARD"
ENV_LOG = "SEALIFT_NET_GUARD_LOG"
ENV_TRACE = "SEALIFT_NET_GUARD_TRACE"  # 1: also log one {"op": "installed"} line per guarded process
GUARD_DIR = os.path.dirname(os.path.abspath(__file__))

ATTEMPTS: list[dict[str, Any]] = []

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_INET = (socket.AF_INET, socket.AF_INET6)
_MARK = "_sealift_net_guard_installed"


class NetworkGuardError(ConnectionRefusedError):
    """A connection to a non-loopback address, refused by the guard."""


class NetworkGuardLookupError(socket.gaierror):
    """A name lookup that would have asked DNS, refused by the guard."""


# --------------------------------------------------------------------------- what is local


def _hosts_file_loopback_names(path: str = "/etc/hosts") -> set[str]:
    """Names that /etc/hosts maps to a loopback address: resolving them never asks DNS."""
    names: set[str] = set()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and _is_loopback_ip(fields[0]):
                    names.update(n.lower() for n in fields[1:])
    except OSError:
        pass
    return names


def _as_text(host: Any) -> str | None:
    if host is None:
        return None
    if isinstance(host, (bytes, bytearray)):
        return bytes(host).decode("ascii", errors="replace")
    return str(host)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address if `host` is a numeric IP (IPv6 scope and brackets allowed), else None."""
    import ipaddress

    text = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_loopback_ip(host: str) -> bool:
    ip = _ip(host)
    if ip is None:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    # connect() to 0.0.0.0 or :: reaches this host on Linux.
    return ip.is_loopback or ip.is_unspecified


_NAMES: set[str] | None = None


def is_local_host(host: Any) -> bool:
    """True if talking to `host` cannot leave this machine (no packet, no DNS query)."""
    global _NAMES
    text = _as_text(host)
    if text is None or text == "":
        return True
    if _ip(text) is not None:
        return _is_loopback_ip(text)
    name = text.rstrip(".").lower()
    if _NAMES is None:
        _NAMES = _LOOPBACK_NAMES | _hosts_file_loopback_names()
    return name in _NAMES or name.endswith(".localhost")


def is_numeric_host(host: Any) -> bool:
    text = _as_text(host)
    return text is not None and _ip(text) is not None


# --------------------------------------------------------------------------- recording


def _stack() -> list[str]:
    import traceback

    frames = [f for f in traceback.extract_stack()[:-1] if os.path.abspath(f.filename) != os.path.abspath(__file__)]
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in frames[-12:]]


def _append_log(entry: dict[str, Any]) -> None:
    path = os.environ.get(ENV_LOG)
    if not path:
        return
    import json

    line = (json.dumps(entry, default=str) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write with O_APPEND: lines from many processes never interleave
        finally:
            os.close(fd)
    except OSError:
        pass


def record(op: str, host: Any, port: Any) -> dict[str, Any]:
    """Count one refused attempt: in memory, on stderr, and in $SEALIFT_NET_GUARD_LOG."""
    entry = {
        "ts": time.time(),
        "pid": os.getpid(),
        "argv": list(sys.argv[:4]) if hasattr(sys, "argv") else [],
        "op": op,
        "host": _as_text(host),
        "port": port if isinstance(port, (int, type(None))) else str(port),
        "stack": _stack(),
    }
    ATTEMPTS.append(entry)
    try:
        sys.stderr.write(f"sealift network guard: refused {op} {entry['host']}:{entry['port']} (pid {entry['pid']})\n")
    except Exception:
        pass
    _append_log(entry)
    return entry


def _refuse_connect(op: str, host: Any, port: Any) -> NetworkGuardError:
    record(op, host, port)
    return NetworkGuardError(
        errno.ECONNREFUSED, f"sealift network guard: {op} to {_as_text(host)}:{port} refused (offline; loopback only)"
    )


def _refuse_lookup(op: str, host: Any, port: Any = None) -> NetworkGuardLookupError:
    record(op, host, port)
    return NetworkGuardLookupError(
        socket.EAI_NONAME, f"sealift network guard: {op} of {_as_text(host)} refused (offline; no DNS)"
    )


def _split(address: Any) -> tuple[Any, Any]:
    if isinstance(address, tuple) and address:
        return address[0], address[1] if len(address) > 1 else None
    return address, None


# --------------------------------------------------------------------------- patches

_orig: dict[str, Any] = {}


def _guarded_socket_target(sock: socket.socket, address: Any) -> tuple[bool, Any, Any]:
    """(allowed, host, port) for a connect/sendto on `sock` to `address`."""
    if sock.family not in _INET:
        return True, None, None
    host, port = _split(address)
    return is_local_host(host), host, port


def _connect(self: socket.socket, address: Any) -> None:
    ok, host, port = _guarded_socket_target(self, address)
    if not ok:
        raise _refuse_connect("connect", host, port)
    return _orig["connect"](self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    ok, host, port = _guarded_socket_target(self, address)
    if not ok:
        _refuse_connect("connect", host, port)
        return errno.ECONNREFUSED
    return _orig["connect_ex"](self, address)


def _sendto(self: socket.socket, data: Any, *args: Any) -> int:
    address = args[-1] if args else None
    ok, host, port = _guarded_socket_target(self, address)
    if not ok:
        raise _refuse_connect("sendto", host, port)
    return _orig["sendto"](self, data, *args)


def _sendmsg(self: socket.socket, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
    if address is not None:
        ok, host, port = _guarded_socket_target(self, address)
        if not ok:
            raise _refuse_connect("sendmsg", host, port)
        return _orig["sendmsg"](self, buffers, ancdata, flags, address)
    return _orig["sendmsg"](self, buffers, ancdata, flags)


def _create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
    host, port = _split(address)
    if not is_local_host(host):
        raise _refuse_connect("create_connection", host, port)
    return _orig["create_connection"](address, *args, **kwargs)


def _lookup_allowed(host: Any) -> bool:
    return is_local_host(host) or is_numeric_host(host)


def _getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    if not _lookup_allowed(host):
        raise _refuse_lookup("getaddrinfo", host, port)
    return _orig["getaddrinfo"](host, port, *args, **kwargs)


def _gethostbyname(host: Any) -> str:
    if not _lookup_allowed(host):
        raise _refuse_lookup("gethostbyname", host)
    return _orig["gethostbyname"](host)


def _gethostbyname_ex(host: Any) -> Any:
    if not _lookup_allowed(host):
        raise _refuse_lookup("gethostbyname_ex", host)
    return _orig["gethostbyname_ex"](host)


def _gethostbyaddr(host: Any) -> Any:
    # A reverse lookup asks DNS for anything /etc/hosts does not answer.
    if not is_local_host(host):
        raise _refuse_lookup("gethostbyaddr", host)
    return _orig["gethostbyaddr"](host)


def _getnameinfo(sockaddr: Any, flags: int) -> Any:
    host, port = _split(sockaddr)
    if not (flags & socket.NI_NUMERICHOST) and not is_local_host(host):
        raise _refuse_lookup("getnameinfo", host, port)
    return _orig["getnameinfo"](sockaddr, flags)


# --------------------------------------------------------------------------- uvloop


def _patch_uvloop(module: Any) -> None:
    """Guard uvloop.Loop: it resolves and connects in libuv, never through Python's socket."""
    loop_cls = getattr(module, "Loop", None)
    if loop_cls is None or getattr(loop_cls, _MARK, False):
        return

    create_connection = getattr(loop_cls, "create_connection", None)
    if create_connection is not None:

        async def guarded_create_connection(self, protocol_factory, host=None, port=None, *args, **kwargs):  # type: ignore[no-untyped-def]
            if host is not None and not is_local_host(host):
                raise _refuse_connect("create_connection", host, port)
            return await create_connection(self, protocol_factory, host, port, *args, **kwargs)

        loop_cls.create_connection = guarded_create_connection

    getaddrinfo = getattr(loop_cls, "getaddrinfo", None)
    if getaddrinfo is not None:

        async def guarded_getaddrinfo(self, host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
            if not _lookup_allowed(host):
                raise _refuse_lookup("getaddrinfo", host, port)
            return await getaddrinfo(self, host, port, *args, **kwargs)

        loop_cls.getaddrinfo = guarded_getaddrinfo

    sock_connect = getattr(loop_cls, "sock_connect", None)
    if sock_connect is not None:

        async def guarded_sock_connect(self, sock, address):  # type: ignore[no-untyped-def]
            ok, host, port = _guarded_socket_target(sock, address)
            if not ok:
                raise _refuse_connect("connect", host, port)
            return await sock_connect(self, sock, address)

        loop_cls.sock_connect = guarded_sock_connect

    datagram = getattr(loop_cls, "create_datagram_endpoint", None)
    if datagram is not None:

        async def guarded_datagram(self, protocol_factory, local_addr=None, remote_addr=None, **kwargs):  # type: ignore[no-untyped-def]
            host, port = _split(remote_addr)
            if remote_addr is not None and not is_local_host(host):
                raise _refuse_connect("create_datagram_endpoint", host, port)
            return await datagram(self, protocol_factory, local_addr=local_addr, remote_addr=remote_addr, **kwargs)

        loop_cls.create_datagram_endpoint = guarded_datagram
    setattr(loop_cls, _MARK, True)


class _UvloopFinder:
    """A sys.meta_path finder that patches uvloop right after it is imported (uvicorn imports it late)."""

    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != "uvloop":
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):  # type: ignore[no-untyped-def]
            exec_module(module)
            _patch_uvloop(module)

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


# --------------------------------------------------------------------------- install


def installed() -> bool:
    return bool(getattr(socket, _MARK, False))


def install(log_path: str | None = None, *, propagate: bool = True) -> None:
    """Guard this process; with `propagate`, every child Python started from it is guarded too.

    Propagation sets SEALIFT_NET_GUARD=1 and puts this directory first on
    PYTHONPATH in os.environ, so children run `sitecustomize.py` from here.
    Idempotent.
    """
    if log_path:
        os.environ[ENV_LOG] = str(log_path)
    if propagate:
        os.environ[ENV_FLAG] = "1"
        parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if GUARD_DIR not in parts:
            os.environ["PYTHONPATH"] = os.pathsep.join([GUARD_DIR, *parts])
    if installed():
        return
    sock_cls = socket.socket
    for name, repl in (("connect", _connect), ("connect_ex", _connect_ex), ("sendto", _sendto), ("sendmsg", _sendmsg)):
        if hasattr(sock_cls, name):
            _orig[name] = getattr(sock_cls, name)
            setattr(sock_cls, name, repl)
    for name, repl in (
        ("create_connection", _create_connection),
        ("getaddrinfo", _getaddrinfo),
        ("gethostbyname", _gethostbyname),
        ("gethostbyname_ex", _gethostbyname_ex),
        ("gethostbyaddr", _gethostbyaddr),
        ("getnameinfo", _getnameinfo),
    ):
        _orig[name] = getattr(socket, name)
        setattr(socket, name, repl)
    if "uvloop" in sys.modules:
        _patch_uvloop(sys.modules["uvloop"])
    else:
        sys.meta_path.insert(0, _UvloopFinder())
    setattr(socket, _MARK, True)
    if os.environ.get(ENV_TRACE) == "1":
        # Proof that a process was guarded at all: tests check every server process has one.
        _append_log({"ts": time.time(), "pid": os.getpid(), "ppid": os.getppid(), "op": "installed",
                     "argv": list(getattr(sys, "argv", []))[:4], "executable": sys.executable})

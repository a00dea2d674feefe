"""Run by tests in a subprocess: try every kind of network access, print what happened as JSON.

    python net_probe.py [--spawn]
    python net_probe.py --run CMD ARGS...   run CMD; print its exit code, output tails and the counters

Loopback accesses must work; non-loopback ones (192.0.2.1 is TEST-NET-1, never
routed; example.com) must be refused. Also prints the kernel's per-namespace
IP/TCP/UDP counters before and after, so a test inside a fresh network
namespace can prove no packet was even attempted. With --spawn it also starts a
child Python with an inherited environment, to show the guard reaches it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

TEST_NET = "192.0.2.1"


def snmp() -> dict[str, int]:
    """Counters from /proc/net/snmp, as {"Ip:OutNoRoutes": n, ...} (per network namespace)."""
    try:
        lines = Path("/proc/net/snmp").read_text().splitlines()
    except OSError:
        return {}
    counters: dict[str, int] = {}
    for head, values in zip(lines[::2], lines[1::2]):
        keys = head.split()
        for key, value in zip(keys[1:], values.split()[1:]):
            counters[keys[0] + key] = int(value)
    return counters


def attempt(fn) -> str:
    try:
        fn()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def loopback_roundtrip() -> str:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        with socket.create_connection(("localhost", port), timeout=5) as c:
            conn, _ = srv.accept()
            c.sendall(b"ping")
            data = conn.recv(4)
            conn.close()
    return "ok" if data == b"ping" else f"bad {data!r}"


def connect_test_net() -> None:
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((TEST_NET, 80))
    finally:
        s.close()


def connect_ex_test_net() -> None:
    with socket.socket() as s:
        s.settimeout(3)
        code = s.connect_ex((TEST_NET, 443))
        if code:
            raise OSError(code, f"connect_ex returned {code}")


def udp_test_net() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", (TEST_NET, 53))


async def asyncio_test_net() -> None:
    await asyncio.wait_for(asyncio.open_connection(TEST_NET, 80), 3)


def main() -> None:
    before = snmp()
    results = {
        "loopback": attempt(loopback_roundtrip),
        "connect": attempt(connect_test_net),
        "connect_ex": attempt(connect_ex_test_net),
        "create_connection": attempt(lambda: socket.create_connection((TEST_NET, 80), timeout=3).close()),
        "udp_sendto": attempt(udp_test_net),
        "getaddrinfo": attempt(lambda: socket.getaddrinfo("example.com", 443)),
        "gethostbyname": attempt(lambda: socket.gethostbyname("example.com")),
        "asyncio": attempt(lambda: asyncio.run(asyncio_test_net())),
        "asyncio_dns": attempt(lambda: asyncio.run(asyncio.wait_for(asyncio.open_connection("example.com", 80), 3))),
    }
    after = snmp()
    out = {"results": results, "snmp_before": before, "snmp_after": after}
    if "--spawn" in sys.argv:
        child = subprocess.run(
            [sys.executable, "-c", f"import socket; socket.create_connection(({TEST_NET!r}, 8080), timeout=3)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out["child"] = {"code": child.returncode, "stderr_tail": child.stderr[-400:]}
    print(json.dumps(out))


def run_counted(cmd: list[str]) -> None:
    """Run `cmd` (inheriting the environment) between two readings of the kernel counters."""
    before = snmp()
    p = subprocess.run(cmd, capture_output=True, text=True)
    after = snmp()
    print(json.dumps({"code": p.returncode, "stdout": p.stdout[-20000:], "stderr": p.stderr[-4000:],
                      "snmp_before": before, "snmp_after": after}))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--run":
        run_counted(sys.argv[2:])
    else:
        main()

"""No network, proven: the guard refuses and counts every non-loopback access.

Unit part: a guarded Python (and the Pythons it starts) can use loopback, and
every connect, UDP send and DNS lookup to anything else is refused by the guard
and logged, before the kernel sees it (proved with the per-namespace kernel
counters inside a fresh network namespace). Nothing here sends a packet
anywhere but loopback: non-loopback targets are TEST-NET-1 (192.0.2.1) and the
unguarded control runs only inside a namespace that has no route out.

Integration part: `sealift start` serving a chat request, and `sealift install`
of an exported bundle, run under the guard (and inside a loopback-only network
namespace where the machine allows) with zero attempts logged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sealift.core import offline

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROBE = HERE / "net_probe.py"
TEST_NET = "192.0.2.1"

#: Every access net_probe.py makes to something other than loopback, as the guard logs it.
EXPECTED_ATTEMPTS = Counter(
    {
        ("connect", TEST_NET): 3,  # socket.connect, connect_ex, asyncio's sock_connect
        ("create_connection", TEST_NET): 1,
        ("sendto", TEST_NET): 1,
        ("getaddrinfo", "example.com"): 2,  # socket.getaddrinfo, asyncio's resolver
        ("gethostbyname", "example.com"): 1,
    }
)


def unguarded_env(**extra: str) -> dict[str, str]:
    """os.environ without any guard activation (the pytest process itself is never guarded)."""
    env = {k: v for k, v in os.environ.items() if k not in (offline.NET_GUARD_ENV, offline.NET_GUARD_LOG_ENV)}
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(offline.guard_dir())]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *parts])
    env.update(extra)
    return env


def run_probe(env: dict[str, str], *args: str, prefix: list[str] | None = None) -> dict:
    p = subprocess.run(
        [*(prefix or []), sys.executable, str(PROBE), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def guard_refused(outcome: str) -> bool:
    return "sealift network guard" in outcome


# --------------------------------------------------------------------------- unit


@pytest.mark.parametrize(
    "host,local",
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("api.localhost", True),
        (None, True),
        (b"127.0.0.1", True),
        (TEST_NET, False),
        ("10.0.0.1", False),
        ("169.254.169.254", False),  # cloud metadata endpoint
        ("::ffff:192.0.2.1", False),
        ("2001:db8::1", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("huggingface.co", False),
    ],
)
def test_what_counts_as_loopback(host, local):
    assert offline._guard_module().is_local_host(host) is local


def test_guard_refuses_and_logs_every_non_loopback_access(tmp_path):
    log = tmp_path / "guard.jsonl"
    out = run_probe(offline.guarded_env(unguarded_env(SEALIFT_NET_GUARD_TRACE="1"), log_path=log), "--spawn")
    results = out["results"]

    assert results["loopback"] == "ok"
    refused = {k: v for k, v in results.items() if k not in ("loopback", "connect_ex")}  # connect_ex: an errno
    assert all(guard_refused(v) for v in refused.values()), refused
    assert results["connect"].startswith("NetworkGuardError: [Errno 111]")  # a ConnectionRefusedError
    assert "Errno 111" in results["connect_ex"]  # connect_ex returns ECONNREFUSED, as the kernel would
    assert results["getaddrinfo"].startswith("NetworkGuardLookupError")  # a socket.gaierror

    entries = offline.read_guard_log(log)
    probe_pid = {e["pid"] for e in entries if e["port"] != 8080}
    child = [e for e in entries if e["port"] == 8080]
    got = Counter((e["op"], e["host"]) for e in entries if e["port"] != 8080)
    assert got == EXPECTED_ATTEMPTS
    assert len(probe_pid) == 1
    # The child Python, started with an inherited environment, was guarded too.
    assert out["child"]["code"] != 0 and "sealift network guard" in out["child"]["stderr_tail"]
    assert len(child) == 1 and child[0]["host"] == TEST_NET and child[0]["pid"] not in probe_pid
    installed = {e["pid"] for e in offline.read_guard_log(log, installs=True)}
    assert installed == probe_pid | {child[0]["pid"]}
    # Each record says who tried: a stack that leads back to the caller.
    for e in entries:
        assert e["stack"] and isinstance(e["ts"], float)
    assert any("net_probe.py" in frame for frame in entries[0]["stack"])


def test_guard_refuses_before_any_packet_leaves(tmp_path):
    """In a fresh loopback-only namespace the kernel counts attempted routes: the guard leaves them at zero."""
    prefix = offline.netns_prefix()
    if prefix is None:
        pytest.skip("no network namespaces here (unshare -n / -rn not permitted)")
    guarded = run_probe(offline.guarded_env(unguarded_env(), log_path=tmp_path / "g.jsonl"), prefix=prefix)
    # Control: the same accesses unguarded, in a namespace with no route out, do reach the kernel.
    control = run_probe(unguarded_env(), prefix=prefix)

    assert guarded["results"]["loopback"] == "ok" and control["results"]["loopback"] == "ok"
    g0, g1 = guarded["snmp_before"], guarded["snmp_after"]
    c0, c1 = control["snmp_before"], control["snmp_after"]
    assert c1["Ip:OutNoRoutes"] > c0["Ip:OutNoRoutes"], "the control should have tried to route packets"
    assert not any(guard_refused(v) for v in control["results"].values())
    for key in ("Ip:OutNoRoutes", "Udp:OutDatagrams", "Udp:SndbufErrors"):
        assert g1.get(key) == g0.get(key), f"{key}: {g0.get(key)} -> {g1.get(key)} under the guard"
    assert len(offline.read_guard_log(tmp_path / "g.jsonl")) == sum(EXPECTED_ATTEMPTS.values())


def test_cli_installs_guard_when_asked(tmp_path):
    """SEALIFT_NET_GUARD=1 alone (no PYTHONPATH hook) guards the sealift CLI and what it starts."""
    code = (
        "import os; from sealift import cli; from sealift.core import offline; cli.main(['--version']); "
        "print(offline.network_guard_installed(), str(offline.guard_dir()) in os.environ['PYTHONPATH'].split(os.pathsep))"
    )
    env = unguarded_env(SEALIFT_NET_GUARD="1")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[-2:] == ["True", "True"]
    p = subprocess.run([sys.executable, "-c", code], env=unguarded_env(), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.stdout.split()[-2:] == ["False", "False"]


def test_guard_keeps_a_shadowed_sitecustomize(tmp_path):
    """Putting the guard first on PYTHONPATH must not drop a sitecustomize the host already had."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITECUSTOMIZE_RAN'] = '1'\n")
    env = offline.guarded_env(unguarded_env(PYTHONPATH=str(other)))
    code = "import os, socket; print(os.environ.get('OTHER_SITECUSTOMIZE_RAN'), getattr(socket, '_sealift_net_guard_installed', False))"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1", "True"]


def test_guard_covers_uvloop(tmp_path):
    """uvloop (used by uvicorn when installed, e.g. in a vLLM venv) connects in C: its loop methods are guarded."""
    pytest.importorskip("uvloop")
    code = """
import asyncio, uvloop
async def main():
    srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    r, w = await asyncio.open_connection("localhost", srv.sockets[0].getsockname()[1]); w.close()
    out = []
    for host in ("192.0.2.1", "example.com"):
        try:
            await asyncio.wait_for(asyncio.open_connection(host, 80), 3)
            out.append("connected")
        except OSError as e:
            out.append(str(e))
    print(type(asyncio.get_running_loop()).__module__, all("sealift network guard" in o for o in out))
uvloop.run(main())
"""
    log = tmp_path / "uv.jsonl"
    p = subprocess.run(
        [sys.executable, "-c", code], env=offline.guarded_env(unguarded_env(), log_path=log),
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["uvloop", "True"]
    assert [(e["op"], e["host"]) for e in offline.read_guard_log(log)] == [
        ("create_connection", TEST_NET),
        ("create_connection", "example.com"),
    ]


# --------------------------------------------------------------------------- integration

DRIVER = HERE / "serve_and_chat.py"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_pids(tree: dict[str, list[str]]) -> set[int]:
    return {int(pid) for pid, argv in tree.items() if argv and Path(argv[0]).name.startswith("python")}


def test_start_and_chat_make_no_network_attempt(cpu_bento, tmp_path):
    """`sealift start` + a chat request over loopback: every process guarded, zero attempts, no packet routed.

    Runs inside a fresh loopback-only network namespace where the machine
    allows (server and client both), else on the host network under the guard.
    """
    log = tmp_path / "start-net.jsonl"
    prefix = offline.netns_prefix()
    env = offline.guarded_env(cpu_bento.host.environ(), log_path=log, SEALIFT_NET_GUARD_TRACE="1")
    p = subprocess.run(
        [*(prefix or []), sys.executable, str(DRIVER), "tiny", str(free_port())],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=420,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["ready"], out["output_tail"]
    assert isinstance(out["reply"], str) and out["finish_reason"] in ("stop", "length")
    assert out["start_code"] == 0, out["output_tail"]
    assert not out.get("leftovers"), "sealift start left server processes behind"

    attempts = offline.read_guard_log(log)
    assert attempts == [], "outbound attempts:\n" + "\n".join(
        f"{a['op']} {a['host']}:{a['port']} pid {a['pid']} {a['argv']}\n  " + "\n  ".join(a["stack"][-6:]) for a in attempts
    )
    # The empty log means something: the guard was active in the CLI, in bentoml serve and in its workers.
    guarded = {e["pid"] for e in offline.read_guard_log(log, installs=True)}
    server = python_pids(out["tree"])
    assert out["sealift_pid"] in guarded
    assert len(server) >= 2 and server <= guarded, (out["tree"], guarded)
    if prefix is not None:
        before, after = out["snmp_before"], out["snmp_after"]
        assert after["Ip:OutNoRoutes"] == before["Ip:OutNoRoutes"] == 0


def test_install_of_an_exported_bundle_makes_no_network_attempt(cpu_bento, tmp_path):
    """`sealift install` on a fresh host: verify, import, register, under the guard and in a loopback-only namespace.

    The bundle has no wheels (the test host has no wheelhouse to give it), so no
    runtime venv is made here; the venv step runs uv, a native binary the
    Python guard cannot see, which is why the namespace counters matter.
    """
    from conftest import Env

    exported = cpu_bento.host.sealift("export", "tiny", tmp_path / "usb", "--no-wheels", "--json", check=True).json()
    airgap = Env(tmp_path / "airgap")
    log = tmp_path / "install-net.jsonl"
    env = offline.guarded_env(airgap.environ(), log_path=log, SEALIFT_NET_GUARD_TRACE="1")
    prefix = offline.netns_prefix()
    p = subprocess.run(
        [*(prefix or []), sys.executable, str(PROBE), "--run",
         sys.executable, "-m", "sealift.cli", "install", exported["bundle"], "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["code"] == 0, out["stderr"]
    installed = json.loads(out["stdout"])
    assert installed["bento_tag"] == exported["bento_tag"]

    assert offline.read_guard_log(log) == []
    assert len(offline.read_guard_log(log, installs=True)) >= 1  # the guard was active in the install process
    if prefix is not None:
        assert out["snmp_after"]["Ip:OutNoRoutes"] == out["snmp_before"]["Ip:OutNoRoutes"] == 0
    # and the installed host is usable: doctor passes the store and bento rows, offline
    doctor = airgap.sealift("doctor", "tiny", "--json", CUDA_VISIBLE_DEVICES="", **offline.OFFLINE_ENV)
    checks = {c["check"]: c for c in doctor.json()["checks"]}
    for row in ("model", "verified tiny", "bento tiny", "openllm tiny"):
        assert checks[row]["status"] == "ok", checks[row]


def test_install_with_its_venv_made_no_network_attempt(installed_bundle):
    """The shared install with wheels (conftest `installed_bundle`: guarded, in a namespace where possible,
    runtime venv made by uv from the bundle's wheels): zero attempts logged, and the host it made is ready."""
    assert offline.read_guard_log(installed_bundle.guard_log) == []
    assert offline.read_guard_log(installed_bundle.guard_log, installs=True), "the guard was not active"
    host = installed_bundle.host
    doctor = host.sealift("doctor", "tiny", "--quick", "--json", CUDA_VISIBLE_DEVICES="", **offline.OFFLINE_ENV)
    checks = {c["check"]: c for c in doctor.json()["checks"]}
    venv = installed_bundle.install["venv"]
    assert venv and checks["venv tiny"]["status"] == "ok" and venv in checks["venv tiny"]["detail"]
    for row in ("model", "bento tiny", "openllm tiny", "offline env"):
        assert checks[row]["status"] == "ok", checks[row]
    assert doctor.code == 0, doctor.out

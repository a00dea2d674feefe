"""The limits a container sets (sealift.core.limits) and what the CPU server sizes from them (sealift.serving.sizing).

Fake cgroup trees (v2 and v1, nested, seen from a container without a cgroup namespace) laid
out under a root path; and, where this host lets us (root, cgroup v1 writable), a real run of a
child process inside a cgroup limited to 1 CPU and 512 MiB, as `systemd-run --scope -p
CPUQuota=100% -p MemoryMax=512M` would make it (this host has no systemd as PID 1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sealift.core.limits import UNLIMITED, cpu_limit, memory_limit, read_limits
from sealift.serving.sizing import MemoryBudget, cpu_sizing, torch_threads

GiB = 2**30
#: A Qwen2.5-7B-like config: 28 layers, 4 KV heads of 128: 57,344 bytes of bfloat16 keys and values a token.
CONFIG = {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584,
          "head_dim": 128}


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def meminfo(root: Path, available_gib: float) -> None:
    write(root, "proc/meminfo", f"MemTotal: 263000000 kB\nMemFree: 1000 kB\nMemAvailable: {int(available_gib * 2**20)} kB\n")


def v2_pod(root: Path, *, cpu: str = "200000 100000", memory: str = str(4 * GiB), current: int = GiB,
           inactive: int = GiB // 2, path: str = "/") -> Path:
    """A pod's cgroup v2 as the container sees it (its own namespace: the cgroup at the mount's root)."""
    base = root / "sys/fs/cgroup"
    write(root, "sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids\n")
    write(root, "proc/self/cgroup", f"0::{path}\n")
    own = base.joinpath(*[p for p in path.split("/") if p])
    write(own, "cpu.max", cpu + "\n")
    write(own, "memory.max", memory + "\n")
    write(own, "memory.current", f"{current}\n")
    write(own, "memory.stat", f"anon 100\nfile 200\ninactive_file {inactive}\nactive_file 5\n")
    return own


def test_v2_pod_limits_cut_the_nodes_cores_and_memory(tmp_path: Path) -> None:
    v2_pod(tmp_path)
    meminfo(tmp_path, 200)  # a big node
    limits = read_limits(tmp_path, affinity=64)
    assert (limits.cpus, limits.affinity_cores, limits.cpu_quota, limits.cgroup) == (2, 64, 2.0, "v2")
    assert limits.memory_limit == 4 * GiB and limits.memory_used == GiB // 2  # usage less inactive page cache
    assert limits.memory_budget == 4 * GiB - GiB // 2
    assert "cgroup v2 quota 2 CPUs" in limits.why and "limit 4.0 GiB" in limits.why
    assert cpu_limit(tmp_path) == 2.0 and memory_limit(tmp_path) == 4 * GiB


def test_v2_without_limits_and_fractional_quotas(tmp_path: Path) -> None:
    v2_pod(tmp_path, cpu="max 100000", memory="max")
    meminfo(tmp_path, 10)
    limits = read_limits(tmp_path, affinity=8)
    assert (limits.cpus, limits.cpu_quota, limits.memory_limit) == (8, None, None)
    assert limits.memory_budget == 10 * GiB and "no cgroup CPU quota" in limits.why
    v2_pod(tmp_path, cpu="150000 100000", memory=str(64 * GiB))
    limits = read_limits(tmp_path, affinity=8)
    assert (limits.cpus, limits.cpu_quota) == (1, 1.5)  # 1.5 CPUs of time: one thread's worth, rounded down
    assert limits.memory_budget == 10 * GiB  # the node has less free than the limit allows
    v2_pod(tmp_path, cpu="50000 100000")
    assert read_limits(tmp_path, affinity=8).cpus == 1  # never below one


def test_v2_the_tightest_cgroup_on_the_way_up_wins(tmp_path: Path) -> None:
    """The pod's limit sits one level above the container's (no cgroup namespace: the full path shows)."""
    pod = v2_pod(tmp_path, path="/kubepods/pod1", cpu="400000 100000", memory=str(2 * GiB), current=0, inactive=0)
    container = pod / "ctr"
    write(container, "cpu.max", "max 100000\n")
    write(container, "memory.max", "max\n")
    write(container, "memory.current", "0\n")
    write(tmp_path, "proc/self/cgroup", "0::/kubepods/pod1/ctr\n")
    meminfo(tmp_path, 100)
    limits = read_limits(tmp_path, affinity=32)
    assert (limits.cpus, limits.memory_limit, limits.memory_budget) == (4, 2 * GiB, 2 * GiB)


def v1_container(root: Path, *, quota: int, period: int = 100000, memory: int, usage: int, host_path: str) -> None:
    """cgroup v1 seen from a container without a cgroup namespace: /proc/self/cgroup shows the host's path,
    the container's own cgroup is mounted at the controller's root; cpu and cpuacct share one hierarchy."""
    write(root, "proc/self/cgroup", f"12:memory:{host_path}\n4:cpu,cpuacct:{host_path}\n1:name=systemd:{host_path}\n")
    cpu = root / "sys/fs/cgroup/cpu,cpuacct"
    write(cpu, "cpu.cfs_quota_us", f"{quota}\n")
    write(cpu, "cpu.cfs_period_us", f"{period}\n")
    mem = root / "sys/fs/cgroup/memory"
    write(mem, "memory.limit_in_bytes", f"{memory}\n")
    write(mem, "memory.usage_in_bytes", f"{usage}\n")
    write(mem, "memory.stat", "cache 10\ntotal_inactive_file 0\n")


def test_v1_quota_and_limit_from_a_container_without_a_cgroup_namespace(tmp_path: Path) -> None:
    v1_container(tmp_path, quota=300000, memory=6 * GiB, usage=2 * GiB, host_path="/docker/0123abcd")
    meminfo(tmp_path, 50)
    limits = read_limits(tmp_path, affinity=16)
    assert (limits.cgroup, limits.cpus, limits.cpu_quota) == ("v1", 3, 3.0)
    assert (limits.memory_limit, limits.memory_budget) == (6 * GiB, 4 * GiB)
    assert "cgroup v1 quota 3 CPUs" in limits.why


def test_v1_unlimited_is_no_limit(tmp_path: Path) -> None:
    v1_container(tmp_path, quota=-1, memory=9223372036854771712, usage=GiB, host_path="/")
    meminfo(tmp_path, 7)
    limits = read_limits(tmp_path, affinity=2)
    assert 9223372036854771712 >= UNLIMITED
    assert (limits.cpus, limits.cpu_quota, limits.memory_limit, limits.memory_budget) == (2, None, None, 7 * GiB)


def test_no_cgroups_at_all(tmp_path: Path) -> None:
    meminfo(tmp_path, 3)
    limits = read_limits(tmp_path, affinity=4)
    assert (limits.cgroup, limits.cpus, limits.memory_budget) == ("none", 4, 3 * GiB)


def test_this_hosts_limits_read_without_error() -> None:
    limits = read_limits()
    assert limits.cpus >= 1 and limits.memory_budget > 0 and limits.cgroup in ("v1", "v2", "none")
    assert limits.cpus <= len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------- what the server sizes


def test_sizing_follows_the_pod_not_the_node(tmp_path: Path) -> None:
    """A pod of 2 CPUs and 4 GiB on a 64-core, 200 GiB node: 1 torch thread, a batch cap from 2 CPUs and its memory."""
    v2_pod(tmp_path)
    meminfo(tmp_path, 200)
    limits = read_limits(tmp_path, affinity=64)
    sizing = cpu_sizing(CONFIG, 32768, 2, weights_bytes=GiB, limits=limits, environ={})
    assert sizing.threads == 1  # not 63
    assert sizing.memory_budget == int(2.5 * GiB)
    per_row = 2 * 28 * 4 * 128 * 2 * 32768  # 1.75 GiB of KV at the full context
    assert sizing.max_batch == max(1, min(16, int(2.5 * GiB * 0.5) // per_row)) == 1
    assert "1 torch threads" in sizing.why and "batch cap 1" in sizing.why and "memory budget 2.5 GiB" in sizing.why
    assert "cgroup v2 quota 2 CPUs" in sizing.why
    roomy = cpu_sizing(CONFIG, 1024, 2, limits=read_limits(tmp_path, affinity=64), environ={})
    assert roomy.max_batch == 16  # 8 rows a CPU, 2 CPUs
    unbounded = read_limits(tmp_path / "none", affinity=64)
    assert torch_threads(unbounded, {})[0] == 63


def test_sizing_takes_the_environment_first(tmp_path: Path) -> None:
    v2_pod(tmp_path)
    meminfo(tmp_path, 200)
    limits = read_limits(tmp_path, affinity=64)
    env = {"SEALIFT_TORCH_THREADS": "3", "SEALIFT_MAX_BATCH": "5", "SEALIFT_MEMORY_BUDGET": "1G",
           "SEALIFT_PREFILL_TOKENS": "0"}
    sizing = cpu_sizing(CONFIG, 4096, 2, limits=limits, environ=env)
    assert (sizing.threads, sizing.max_batch, sizing.memory_budget, sizing.prefill_tokens) == (3, 5, GiB, 0)
    assert "SEALIFT_MEMORY_BUDGET" in sizing.why and "prefill unbounded" in sizing.why


def test_memory_budget_refuses_what_never_fits_and_what_fits_only_later() -> None:
    budget = MemoryBudget(10_000, kv_per_token=10, vocab=100)
    first = budget.reserve(500, 100)  # 6,000 bytes held
    with pytest.raises(Exception) as busy:
        budget.reserve(400, 100)
    assert busy.value.busy and "held by running requests" in str(busy.value)
    with pytest.raises(Exception) as never:
        budget.reserve(900, 200)
    assert not never.value.busy and "memory budget is" in str(never.value)
    first.release()
    first.release()  # idempotent
    assert budget.held == 0
    budget.reserve(400, 100).release()
    assert budget.need(10, 0, score_prompt=True) == 10 * 10 + 2 * 4 * 100 * 10


# --------------------------------------------------------------------------- a real cgroup


def _v1_dir(controller: str) -> Path | None:
    """Where this process may make a child cgroup of `controller` (v1), or None."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            for mount in (Path("/sys/fs/cgroup") / names, Path("/sys/fs/cgroup") / controller):
                here = mount / path.lstrip("/")
                if here.is_dir() and os.access(here, os.W_OK):
                    return here
    return None


def test_a_real_cgroup_of_one_cpu_and_512_mib() -> None:
    """What `systemd-run --scope -p CPUQuota=100% -p MemoryMax=512M` makes, made by hand (cgroup v1 here)."""
    if shutil.which("systemd-run") and subprocess.run(
            ["systemd-run", "--scope", "-q", "-p", "CPUQuota=100%", "-p", "MemoryMax=512M", "true"],
            capture_output=True).returncode == 0:
        prefix = ["systemd-run", "--scope", "-q", "-p", "CPUQuota=100%", "-p", "MemoryMax=512M"]
        made: list[Path] = []
    else:
        cpu, mem = _v1_dir("cpu"), _v1_dir("memory")
        if os.geteuid() != 0 or cpu is None or mem is None:
            pytest.skip("neither systemd-run nor a writable cgroup v1 hierarchy on this host")
        name = f"sealift-test-{uuid.uuid4().hex[:8]}"
        made = [cpu / name, mem / name]
        for d in made:
            d.mkdir()
        (cpu / name / "cpu.cfs_period_us").write_text("100000")
        (cpu / name / "cpu.cfs_quota_us").write_text("100000")
        (mem / name / "memory.limit_in_bytes").write_text(str(512 * 2**20))
        procs = " ".join(str(d / "cgroup.procs") for d in made)
        prefix = ["sh", "-c", f'for f in {procs}; do echo $$ > "$f"; done; exec "$@"', "sh"]
    code = ("from sealift.core.limits import read_limits\n"
            "from sealift.serving.sizing import torch_threads\n"
            "l = read_limits(); print(l.cpus, l.cpu_quota, l.memory_limit, torch_threads(l, {})[0]); print(l.why)\n")
    try:
        p = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "pipeline")})
    finally:
        for d in made:
            d.rmdir()
    assert p.returncode == 0, p.stderr
    numbers, why = p.stdout.splitlines()[:2]
    assert numbers.split() == ["1", "1.0", str(512 * 2**20), "1"], p.stdout
    assert "quota 1 CPUs" in why and "limit 0.5 GiB" in why

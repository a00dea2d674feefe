"""The CPUs and memory this process may use, read the way a container sets them.

    read_limits()            -> Limits (cpus, memory budget, the numbers behind them, `why` in words)
    usable()                 -> (cpus usable, memory budget in bytes): what an engine sizes itself by
    cpu_limit() / memory_limit() -> the container's CPU quota (CPUs) and memory limit (bytes), or None

A pod limited to 2 CPUs on a 64-core node still sees 64 cores in its affinity and the
node's RAM in /proc/meminfo; its limits live in its cgroup:

- cgroup v2 (one hierarchy, `0::/path` in /proc/self/cgroup): `cpu.max` ("200000 100000"
  is 2 CPUs; "max 100000" none), `memory.max` ("max" none), `memory.current`, `memory.stat`;
- cgroup v1 (a hierarchy per controller, `N:cpu,cpuacct:/path`): `cpu.cfs_quota_us` /
  `cpu.cfs_period_us` (-1: none), `memory.limit_in_bytes` (a number near 2^63: none),
  `memory.usage_in_bytes`, `memory.stat`.

The process's own cgroup comes from /proc/self/cgroup; a container without its own cgroup
namespace shows the host's path there while its /sys/fs/cgroup is the container's own, so a
path that does not exist under the mount is cut from the front until one does. Every
cgroup from the process's own up to the mount's root counts (a pod's limit sits one level
above its container's): the smallest limit wins.

CPUs usable = the affinity's cores, cut to the quota rounded down (at least 1). The memory
budget = /proc/meminfo's MemAvailable, cut to the cgroup's limit less its working set
(usage less the inactive page cache, as the kubelet counts it). `root` (default "/") lets tests
lay out a fake /proc and /sys/fs/cgroup; `affinity` stands in for sched_getaffinity.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Limits", "cpu_limit", "memory_limit", "read_limits", "usable"]

#: cgroup v1 writes "no limit" as the largest page-aligned int64 (9223372036854771712); anything past this is none.
UNLIMITED = 1 << 60


@dataclass(frozen=True)
class Limits:
    """What this process may use, and where each number came from."""

    #: CPUs usable: the affinity's cores cut to the CPU quota (rounded down, at least 1)
    cpus: int
    #: cores in the process's affinity (sched_getaffinity)
    affinity_cores: int
    #: the cgroup's CPU quota in CPUs (1.5 for "150000 100000"), None when there is none
    cpu_quota: float | None
    #: bytes the process may still use: MemAvailable, cut to the cgroup's limit less its working set
    memory_budget: int
    #: /proc/meminfo's MemAvailable (the node's, in a container)
    memory_available: int
    #: the cgroup's memory limit in bytes, None when there is none
    memory_limit: int | None
    #: the cgroup's working set (usage less inactive page cache), when there is a limit
    memory_used: int | None
    #: "v2", "v1" or "none": which cgroup hierarchy the limits were read from
    cgroup: str
    #: one line in words: the numbers and where they came from
    why: str

    def to_dict(self) -> dict[str, object]:
        from dataclasses import asdict

        return asdict(self)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_cgroups(root: Path) -> dict[str, str]:
    """controller -> path from /proc/self/cgroup; v2's single hierarchy under the key ""."""
    text = _read(root / "proc" / "self" / "cgroup") or ""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[""] = path
        for name in controllers.split(","):
            if name:
                out[name] = path
    return out


def _chain(mount: Path, path: str) -> list[Path]:
    """The cgroup directories from the process's own up to the mount's root (those that exist).

    A path that does not exist under `mount` (the host's path, seen from a container without a
    cgroup namespace) is cut from the front until it does.
    """
    parts = [p for p in path.split("/") if p and p != ".."]
    start: Path | None = None
    for i in range(len(parts) + 1):
        candidate = mount.joinpath(*parts[i:])
        if candidate.is_dir():
            start = candidate
            break
    if start is None:
        return [mount] if mount.is_dir() else []
    chain = [start]
    while chain[-1] != mount and mount in chain[-1].parents:
        chain.append(chain[-1].parent)
    return chain


def _v1_mount(base: Path, controller: str) -> Path | None:
    """/sys/fs/cgroup/<dir> of a v1 controller: "cpu", or a joint "cpu,cpuacct"."""
    direct = base / controller
    if direct.is_dir():
        return direct
    for entry in sorted(base.iterdir()) if base.is_dir() else ():
        if controller in entry.name.split(",") and entry.is_dir():
            return entry
    return None


def _hierarchy(root: Path) -> str:
    base = root / "sys" / "fs" / "cgroup"
    own = _own_cgroups(root)
    if (base / "cgroup.controllers").is_file():
        return "v2"
    if "memory" in own or "cpu" in own:
        return "v1"
    return "v2" if "" in own and (base / "cgroup.controllers").exists() else "none"


def _dirs(root: Path, controller: str) -> tuple[str, list[Path]]:
    """(hierarchy, the cgroup directories to read `controller`'s files from, innermost first)."""
    base = root / "sys" / "fs" / "cgroup"
    own = _own_cgroups(root)
    kind = _hierarchy(root)
    if kind == "v2":
        return kind, _chain(base, own.get("", "/"))
    if kind == "v1":
        mount = _v1_mount(base, controller)
        return kind, _chain(mount, own.get(controller, "/")) if mount is not None else []
    return kind, []


def _quota_of(kind: str, directory: Path) -> float | None:
    if kind == "v2":
        text = _read(directory / "cpu.max")
        if not text:
            return None
        quota, _, period = text.partition(" ")
        if quota == "max":
            return None
        try:
            return int(quota) / int(period or 100000)
        except (ValueError, ZeroDivisionError):
            return None
    quota_text, period_text = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    try:
        quota, period = int(quota_text or "-1"), int(period_text or "100000")
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _smallest(values: Iterable[float | int | None]) -> float | int | None:
    found = [v for v in values if v is not None]
    return min(found) if found else None


def cpu_limit(root: str | Path = "/") -> float | None:
    """The container's CPU quota in CPUs (cgroup v2 cpu.max, v1 cfs quota/period), None when none is set."""
    kind, dirs = _dirs(Path(root), "cpu")
    return _smallest(_quota_of(kind, d) for d in dirs)  # type: ignore[return-value]


def _limit_of(kind: str, directory: Path) -> int | None:
    text = _read(directory / ("memory.max" if kind == "v2" else "memory.limit_in_bytes"))
    if not text or not text.isdigit():
        return None  # "max", missing, unreadable
    value = int(text)
    return value if value < UNLIMITED else None


def memory_limit(root: str | Path = "/") -> int | None:
    """The container's memory limit in bytes (cgroup v2 memory.max, v1 memory.limit_in_bytes), None when none."""
    kind, dirs = _dirs(Path(root), "memory")
    return _smallest(_limit_of(kind, d) for d in dirs)  # type: ignore[return-value]


def _working_set(kind: str, directory: Path) -> int | None:
    """Usage less inactive page cache (what the kubelet evicts by), of one cgroup."""
    usage = _read(directory / ("memory.current" if kind == "v2" else "memory.usage_in_bytes"))
    if not usage or not usage.isdigit():
        return None
    inactive = 0
    key = "inactive_file" if kind == "v2" else "total_inactive_file"
    for line in (_read(directory / "memory.stat") or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            inactive = int(value)
            break
    return max(0, int(usage) - inactive)


def _meminfo_available(root: Path) -> int:
    for line in (_read(root / "proc" / "meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            try:
                return int(line.split()[1]) * 1024
            except (IndexError, ValueError):
                break
    if Path(root) == Path("/"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return 0


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def read_limits(root: str | Path = "/", *, affinity: int | None = None) -> Limits:
    """CPUs and memory this process may use (see the module docstring); `affinity` overrides sched_getaffinity."""
    base = Path(root)
    cores = _affinity() if affinity is None else max(1, affinity)
    kind, cpu_dirs = _dirs(base, "cpu")
    quota = _smallest(_quota_of(kind, d) for d in cpu_dirs)
    cpus = max(1, min(cores, int(quota))) if quota else cores

    _, mem_dirs = _dirs(base, "memory")
    available = _meminfo_available(base)
    limit, used, room = None, None, None
    for d in mem_dirs:  # the tightest cgroup on the way up: the smallest limit less its own working set
        this = _limit_of(kind, d)
        if this is None:
            continue
        this_used = _working_set(kind, d) or 0
        if room is None or this - this_used < room:
            limit, used, room = this, this_used, max(0, this - this_used)
    budget = available if room is None else (min(available, room) if available else room)

    cpu_words = (f"{cpus} CPUs: cgroup {kind} quota {quota:g} CPUs" + (f", {cores} cores in the affinity" if quota
                 else "") if quota else f"{cpus} CPUs: the affinity's cores (no cgroup CPU quota)")
    if limit is not None:
        mem_words = (f"memory {_gib(budget)}: cgroup {kind} limit {_gib(limit)} less {_gib(used or 0)} in use"
                     f" ({_gib(available)} available on the host)")
    else:
        mem_words = f"memory {_gib(budget)}: MemAvailable (no cgroup memory limit)"
    return Limits(cpus, cores, quota, budget, available, limit, used, kind, f"{cpu_words}; {mem_words}")


def usable(root: str | Path = "/") -> tuple[int, int]:
    """(CPUs usable, memory budget in bytes): the two numbers an engine sizes its threads and caches by."""
    limits = read_limits(root)
    return limits.cpus, limits.memory_budget

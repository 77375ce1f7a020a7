#!/usr/bin/env python3
"""Write the fake node trees of tests/data/ps/ (``binfmt ps`` and ``metrics`` fixtures).

    python tests/tools/make_ps_trees.py

One tree per container runtime and cgroup layout, each a node as ``binfmt ps``
sees it: ``binfmt_misc/`` (entry files as the kernel prints them), ``proc/``
(per process ``exe``, ``cmdline``, ``stat``, ``status``, ``cgroup``, ``root``,
``cwd``; ``proc/stat`` with ``btime``), ``host/`` (the host's root: the
interpreter files and, for Kubernetes layouts, the kubelet's ``/var/log/pods``
and ``/var/log/containers``) and ``containers/`` (each container's root, with
the programs' ELF headers). The cgroup paths follow what each runtime and
cgroup driver creates (kubelet's ``cm/cgroup_manager_linux.go`` names for the
systemd and cgroupfs drivers, containerd's ``cri-containerd-ID.scope``,
CRI-O's ``crio-ID.scope``/``crio-ID``, Docker's ``docker-ID.scope`` and
``/docker/ID``). Symbolic links are relative where the tests match by inode,
and absolute (and dangling) where ``/proc/PID/exe`` names a file elsewhere:
a container's own interpreter, or a deleted one.

Every process of every tree is in the table below; the tests compare what
``ps`` finds with it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from binfmt import qemu  # noqa: E402

OUT = ROOT / "tests" / "data" / "ps"
BTIME = 1767225600  # 2026-01-01T00:00:00Z
TICKS = 100

# Pods: (namespace, name, uid, QoS class).
Pod = tuple[str, str, str, str]
WEB: Pod = ("shop", "web-7d9f8b6c4-x2kqp", "8d9c7f3e-2a4b-4c1d-9e8f-0123456789ab", "burstable")
BATCH: Pod = (
    "jobs",
    "nightly-report-29471520-5bq8d",
    "f47ac10b-58cc-4372-a567-0e02b2c3d479",
    "besteffort",
)
LEGACY: Pod = ("shop", "legacy-api-0", "3b241101-e2bb-4255-8caf-4136c566a962", "guaranteed")
CONTAINER_IDS = {
    "app": "4f2d" + "0a1b2c3d" * 7 + "9e8f",
    "sidecar": "7c41" + "1122aabb" * 7 + "ccdd",
    "report": "a9e3" + "deadbeef" * 7 + "0042",
    "api": "5be0" + "0123cafe" * 7 + "7777",
}

ENTRIES = [
    # name, target, interpreter, flags
    ("qemu-aarch64", "aarch64", "/usr/bin/qemu-aarch64-static", "F"),
    ("qemu-arm", "arm", "/usr/libexec/qemu-binfmt/arm-binfmt-P", "P"),
    ("qemu-s390x", "s390x", "/usr/bin/qemu-s390x-static", "F"),
]


def _uid_(uid: str) -> str:
    return uid.replace("-", "_")


def _systemd_pod(pod: Pod) -> str:
    qos, uid = pod[3], _uid_(pod[2])
    if qos == "guaranteed":
        return f"/kubepods.slice/kubepods-pod{uid}.slice"
    return f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid}.slice"


def _cgroupfs_pod(pod: Pod) -> str:
    qos, uid = pod[3], pod[2]
    return f"/kubepods/pod{uid}" if qos == "guaranteed" else f"/kubepods/{qos}/pod{uid}"


_V1_CONTROLLERS = [
    "12:pids",
    "11:memory",
    "10:cpu,cpuacct",
    "9:blkio",
    "8:devices",
    "7:freezer",
    "6:net_cls,net_prio",
    "5:perf_event",
    "4:hugetlb",
    "3:cpuset",
    "2:rdma",
    "1:name=systemd",
]


def v1(path: str) -> str:
    """A cgroup v1 (hybrid) file: every controller at ``path``, the unified one at ``/``."""
    return "".join(f"{c}:{path}\n" for c in _V1_CONTROLLERS) + "0::/\n"


def v2(path: str) -> str:
    return f"0::{path}\n"


# layout → (kubernetes?, how a container's cgroup file reads, a host service's)
LAYOUTS: dict[str, tuple[bool, Callable[[Pod, str], str], str]] = {
    "containerd-systemd-v2": (
        True,
        lambda pod, cid: v2(f"{_systemd_pod(pod)}/cri-containerd-{cid}.scope"),
        v2("/system.slice/legacy-agent.service"),
    ),
    "containerd-cgroupfs-v1": (
        True,
        lambda pod, cid: v1(f"{_cgroupfs_pod(pod)}/{cid}"),
        v1("/system.slice/legacy-agent.service"),
    ),
    "crio-systemd-v2": (
        True,
        lambda pod, cid: v2(f"{_systemd_pod(pod)}/crio-{cid}.scope"),
        v2("/system.slice/legacy-agent.service"),
    ),
    "crio-cgroupfs-v1": (
        True,
        lambda pod, cid: v1(f"{_cgroupfs_pod(pod)}/crio-{cid}"),
        v1("/system.slice/legacy-agent.service"),
    ),
    "docker-systemd-v2": (
        False,
        lambda pod, cid: v2(f"/system.slice/docker-{cid}.scope"),
        v2("/system.slice/legacy-agent.service"),
    ),
    "docker-cgroupfs-v1": (
        False,
        lambda pod, cid: v1(f"/docker/{cid}"),
        v1("/system.slice/legacy-agent.service"),
    ),
}

# pid, comm, (pod, container) or None for a host service, exe, cmdline, program
# target, utime, stime, start (ticks after boot), VmRSS kB. ``exe`` "host:PATH" is a
# relative link to the host's file (matched by inode), "ct:PATH" to the
# container's, anything else an absolute link.
Where = Optional[tuple[Pod, str]]
PROCESSES: list[tuple[int, str, Where, str, list[str], Optional[str], int, int, int, int]] = [
    (
        4242,
        "node",
        (WEB, "app"),
        "host:/usr/bin/qemu-aarch64-static",
        ["/usr/bin/qemu-aarch64-static", "/usr/local/bin/node", "/srv/server.js"],
        "aarch64",
        183_245,
        2_310,
        360_000,
        187_432,
    ),
    (
        4243,
        "sleep",
        (WEB, "sidecar"),
        "ct:/bin/sleep",
        ["sleep", "infinity"],
        None,
        1,
        0,
        360_100,
        812,
    ),
    (
        4301,
        "busybox",
        (LEGACY, "api"),
        "/usr/bin/qemu-arm-static",
        ["/usr/libexec/qemu-binfmt/arm-binfmt-P", "/bin/busybox", "httpd", "-f", "-p", "8080"],
        "arm",
        5_520,
        410,
        720_000,
        9_216,
    ),
    (
        4350,
        "entrypoint.sh",
        (BATCH, "report"),
        "host:/usr/bin/qemu-aarch64-static",
        ["/usr/bin/qemu-aarch64-static", "/bin/busybox", "sh", "/entrypoint.sh", "--day", "1"],
        "aarch64",
        12_000,
        900,
        1_080_000,
        24_576,
    ),
    (
        4400,
        "agent",
        None,
        "/usr/bin/qemu-s390x-static (deleted)",
        ["/usr/bin/qemu-s390x-static", "/opt/legacy/agent", "--serve"],
        "s390x",
        42_000,
        1_800,
        12_000,
        65_536,
    ),
    (
        4500,
        "python3",
        None,
        "host:/usr/bin/python3",
        ["/usr/bin/python3", "/usr/bin/qemu-aarch64-static", "-h"],
        None,
        30,
        5,
        1_440_000,
        10_240,
    ),
]


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def _file(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def build(name: str) -> None:
    kubernetes, container_cgroup, service_cgroup = LAYOUTS[name]
    top = OUT / name
    if top.exists():
        shutil.rmtree(top)
    host, proc, containers = top / "host", top / "proc", top / "containers"
    # binfmt_misc, as the kernel prints it, newest entry first in "register".
    misc = top / "binfmt_misc"
    misc.mkdir(parents=True)
    (misc / "status").write_bytes(b"enabled\n")
    for entry_name, target, interpreter, flags in ENTRIES:
        entry = qemu.get(target).to_entry(interpreter, flags, name=entry_name)
        (misc / entry_name).write_text(entry.to_status())
    (misc / "register").write_text("".join(f"{e[0]}\n" for e in reversed(ENTRIES)))
    # The host: its interpreters (the s390x one is the new file of an upgrade), python.
    x86 = qemu.get("x86_64").header(2)
    for path in (
        "/usr/bin/qemu-aarch64-static",
        "/usr/bin/qemu-arm-static",
        "/usr/bin/qemu-s390x-static",
        "/usr/bin/python3",
    ):
        _file(host / path.lstrip("/"), x86, 0o755)
    _link(host / "usr/libexec/qemu-binfmt/arm-binfmt-P", "../../bin/qemu-arm-static")
    _file(proc / "stat", f"cpu  1 2 3 4\nbtime {BTIME}\nprocesses 5000\n".encode())
    # A kernel thread: no exe, an empty command line.
    _file(proc / "2" / "stat", b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1\n")
    _file(proc / "2" / "cmdline", b"")
    for pid, comm, where, exe, cmdline, program_target, utime, stime, start, rss in PROCESSES:
        d = proc / str(pid)
        if where is None:
            cgroup, ct_root = service_cgroup, host
            root_link = os.path.relpath(host, d)
        else:
            pod, container = where
            cid = CONTAINER_IDS[container]
            cgroup = container_cgroup(pod, cid)
            ct_root = containers / container
            root_link = os.path.relpath(ct_root, d)
        if exe.startswith("host:"):
            _link(d / "exe", os.path.relpath(host / exe[5:].lstrip("/"), d))
        elif exe.startswith("ct:"):
            _file(ct_root / exe[3:].lstrip("/"), x86, 0o755)
            _link(d / "exe", os.path.relpath(ct_root / exe[3:].lstrip("/"), d))
        else:
            _link(d / "exe", exe)
        if program_target is not None:
            header = qemu.get(program_target).header(2)
            _file(ct_root / cmdline[1].lstrip("/"), header, 0o755)
        _link(d / "root", root_link)
        _link(d / "cwd", root_link)
        _file(d / "cmdline", b"".join(a.encode() + b"\0" for a in cmdline))
        _file(
            d / "stat",
            f"{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 1000 0 0 0 {utime} {stime} 0 0 "
            f"20 0 4 0 {start} 1000000 {rss // 4} 18446744073709551615\n".encode(),
        )
        _file(d / "status", f"Name:\t{comm}\nState:\tS (sleeping)\nVmRSS:\t{rss} kB\n".encode())
        _file(d / "cgroup", cgroup.encode())
    if kubernetes:
        for pod, container in {(p[2][0], p[2][1]) for p in PROCESSES if p[2] is not None}:
            namespace, pod_name, uid, _ = pod
            pod_dir = host / "var/log/pods" / f"{namespace}_{pod_name}_{uid}"
            _file(pod_dir / container / "0.log", b"")
            cid = CONTAINER_IDS[container]
            _link(
                host / "var/log/containers" / f"{pod_name}_{namespace}_{container}-{cid}.log",
                f"/var/log/pods/{namespace}_{pod_name}_{uid}/{container}/0.log",
            )


def main() -> None:
    for name in LAYOUTS:
        build(name)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()

"""``binfmt.processes()`` and ``binfmt ps``: real emulated processes, and fake nodes.

The kernel is the spec: the first tests start real emulated processes through
a private binfmt_misc instance (Debian's QEMU, Debian's busybox of each
architecture) and read them back from this machine's ``/proc``, which shows
the sandbox's processes too; ``ps`` is pointed at the sandbox's instance with
``procfs``. Only the processes a test started are asserted on: others on the
machine may run the same QEMU.

The fake node trees under ``tests/data/ps`` (``tests/tools/make_ps_trees.py``)
cover each container runtime and cgroup layout, and the kubelet's log layout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from binfmt import Host, qemu
from binfmt.doctor import diagnose
from binfmt.emulated import CgroupInfo, Process, parse_cgroup, processes, stale_findings
from binfmt.procfs import BinfmtMisc
from binfmt.sandbox import Sandbox
from binfmt.testing import require_or_skip
from tests.debian import debian_root

ROOT = Path(__file__).resolve().parent.parent
TREES = ROOT / "tests" / "data" / "ps"
LAYOUTS = sorted(p.name for p in TREES.iterdir() if p.is_dir())

# Python, to exec a program with an argv[0] of our choosing.
EXECV = "import os, sys; os.execv(sys.argv[1], sys.argv[2:])"


def _qemu(target: str) -> str:
    path = f"/usr/bin/qemu-{target}-static"
    if not os.path.exists(path):
        require_or_skip(f"{path} is missing: install Debian's qemu-user-static")
    return path


def _wait_for_exec(pids: list[int], interpreters: set[str], timeout: float = 20) -> None:
    """Until every pid runs an interpreter (the exec through binfmt_misc has happened)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while True:
            try:
                link = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
            except OSError:
                link = ""
            # Not before: the shell's fork, then python, run first under the same pid.
            if link in interpreters:
                break
            assert time.monotonic() < deadline, f"pid {pid} never exec'd its program"
            time.sleep(0.05)


@pytest.fixture
def emulated(binfmt_sandbox: Sandbox, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Real processes: arm64 (F), armhf (PF), s390x (F, interpreter deleted), a #! script
    into the emulated arm64 busybox, and a native sleep. Killed (by pid) afterwards."""
    arm64, armhf, s390x = (debian_root(a) / "bin" / "busybox" for a in ("arm64", "armhf", "s390x"))
    _qemu("aarch64")
    _qemu("arm")
    arm_p = "/usr/libexec/qemu-binfmt/arm-binfmt-P"
    if not os.path.exists(arm_p):
        require_or_skip(f"{arm_p} is missing: install Debian's qemu-user-static")
    old_s390x = tmp_path / "qemu-s390x-static"
    shutil.copy(_qemu("s390x"), old_s390x)
    misc = binfmt_sandbox.misc
    misc.register(qemu.get("aarch64").to_entry("/usr/bin/qemu-aarch64-static", "F"))
    misc.register(qemu.get("arm").to_entry(arm_p, "PF"))
    misc.register(qemu.get("s390x").to_entry(str(old_s390x), "F"))
    old_s390x.unlink()  # an upgrade removed it: the kernel still runs the file it opened
    script = tmp_path / "job.sh"
    script.write_text(f"#!{arm64} sh\n{arm64} sleep 60\n")
    script.chmod(0o755)
    quiet = "</dev/null >/dev/null 2>&1 & echo $!"
    commands = {
        # argv[0] "ignored" is dropped without P: busybox sees its path, then "sleep".
        "arm64": f"python3 -c '{EXECV}' {arm64} ignored sleep 61 {quiet}",
        # With P argv[0] reaches busybox, which runs the applet it names.
        "armhf": f"python3 -c '{EXECV}' {armhf} sleep 62 {quiet}",
        "s390x": f"{s390x} sleep 63 {quiet}",
        "script": f"python3 -c '{EXECV}' {script} job.sh --day 1 {quiet}",
        "native": f"sleep 64 {quiet}",
    }
    done = binfmt_sandbox.run(["/bin/sh", "-c", "; ".join(commands.values())])
    assert done.returncode == 0, done.stderr
    pids = dict(zip(commands, (int(p) for p in done.stdout.split())))
    try:
        _wait_for_exec(
            [pids[k] for k in ("arm64", "armhf", "s390x", "script")],
            {"/usr/bin/qemu-aarch64-static", "/usr/bin/qemu-arm-static", str(old_s390x)},
        )
        yield {
            "pids": pids,
            "misc": misc,
            "busybox": {"arm64": str(arm64), "armhf": str(armhf), "s390x": str(s390x)},
            "script": str(script),
            "old_s390x": str(old_s390x),
        }
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _by_pid(found: Any) -> dict[int, Process]:
    return {p.pid: p for p in found}


@pytest.mark.kernel
@pytest.mark.qemu
@pytest.mark.timeout(120)
def test_real_emulated_processes(emulated: dict[str, Any]) -> None:
    """Each real process is found with the entry, program, argv and platform the kernel gave it."""
    pids, busybox = emulated["pids"], emulated["busybox"]
    report = processes(emulated["misc"].state(), proc="/proc")
    found = _by_pid(report)
    arm64 = found[pids["arm64"]]
    assert (arm64.entry, arm64.target, arm64.platform) == ("qemu-aarch64", "aarch64", "linux/arm64")
    assert arm64.program == busybox["arm64"]
    assert arm64.argv == (busybox["arm64"], "sleep", "61")  # no P: argv[0] was dropped
    assert arm64.interpreter == "/usr/bin/qemu-aarch64-static"
    assert not arm64.interpreter_deleted
    armhf = found[pids["armhf"]]
    assert (armhf.entry, armhf.platform, armhf.flags) == ("qemu-arm", "linux/arm/v7", "PF")
    assert armhf.program == busybox["armhf"]
    assert armhf.argv == ("sleep", "62")  # P: the caller's argv[0] is kept
    assert armhf.interpreter == "/usr/libexec/qemu-binfmt/arm-binfmt-P"
    assert armhf.exe == "/usr/bin/qemu-arm-static"  # F opened the link's target
    assert not armhf.interpreter_deleted
    s390x = found[pids["s390x"]]
    assert (s390x.entry, s390x.platform) == ("qemu-s390x", "linux/s390x")
    assert s390x.interpreter_deleted
    assert s390x.exe == emulated["old_s390x"] + " (deleted)"
    script = found[pids["script"]]
    # The kernel ran the #! line's interpreter, which binfmt_misc sent to QEMU.
    assert (script.entry, script.program) == ("qemu-aarch64", busybox["arm64"])
    assert script.argv == (busybox["arm64"], "sh", emulated["script"], "--day", "1")
    assert pids["native"] not in found
    for p in (arm64, armhf, s390x, script):
        assert p.rss_bytes > 1 << 20  # QEMU itself is resident
        assert abs(p.started - time.time()) < 120
        assert p.cpu_seconds >= 0
        assert p.container_id is None and p.pod is None
    assert report.examined > len(found)
    assert [f.entry for f in stale_findings(report)] == ["qemu-s390x"]


@pytest.mark.kernel
@pytest.mark.qemu
@pytest.mark.timeout(120)
def test_real_processes_through_the_cli_and_doctor(emulated: dict[str, Any]) -> None:
    """``ps --json`` and ``doctor`` read the same processes from the host's /proc."""
    misc, pids = emulated["misc"], emulated["pids"]
    done = subprocess.run(
        [sys.executable, "-m", "binfmt", "ps", "--procfs", misc.path, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    listed = {p["pid"]: p for p in document["processes"]}
    assert {pids[k] for k in ("arm64", "armhf", "s390x", "script")} <= set(listed)
    assert pids["native"] not in listed
    assert listed[pids["s390x"]]["interpreter_deleted"] is True
    text = subprocess.run(
        [sys.executable, "-m", "binfmt", "ps", "--procfs", misc.path],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert f"{pids['s390x']}  linux/s390x" in text.replace("   ", "  ")
    report = diagnose(misc.state(), Host.detect(), probe=False)
    stale = [f for f in report.problems if f.code == "interpreter-deleted"]
    assert [f.entry for f in stale] == ["qemu-s390x"]
    assert str(pids["s390x"]) in stale[0].message


# -- fake nodes: every runtime and cgroup layout ------------------------------------------

RUNTIME = {
    "containerd-systemd-v2": "containerd",
    "containerd-cgroupfs-v1": None,  # the cgroupfs driver names containerd's like Docker's
    "crio-systemd-v2": "cri-o",
    "crio-cgroupfs-v1": "cri-o",
    "docker-systemd-v2": "docker",
    "docker-cgroupfs-v1": "docker",
}
CONTAINERS = {
    4242: ("shop", "web-7d9f8b6c4-x2kqp", "app", "8d9c7f3e-2a4b-4c1d-9e8f-0123456789ab"),
    4301: ("shop", "legacy-api-0", "api", "3b241101-e2bb-4255-8caf-4136c566a962"),
    4350: (
        "jobs",
        "nightly-report-29471520-5bq8d",
        "report",
        "f47ac10b-58cc-4372-a567-0e02b2c3d479",
    ),
}


def _tree(layout: str) -> dict[str, str]:
    top = TREES / layout
    return {
        "procfs": str(top / "binfmt_misc"),
        "proc": str(top / "proc"),
        "host": str(top / "host"),
    }


def _fake_report(layout: str) -> Any:
    tree = _tree(layout)
    state = BinfmtMisc(tree["procfs"]).state()
    return processes(state, proc=tree["proc"], host_root=tree["host"])


def test_every_layout_has_a_tree() -> None:
    assert set(LAYOUTS) == set(RUNTIME)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fake_node(layout: str) -> None:
    """Emulated processes found by inode and by path; pods named; native ones left out."""
    report = _fake_report(layout)
    found = _by_pid(report)
    # 4243 is a native sidecar, 4500 a native python whose argv names QEMU, 2 a kernel thread.
    assert sorted(found) == [4242, 4301, 4350, 4400]
    assert report.examined == 7 and report.unreadable == 0
    web = found[4242]
    assert (web.entry, web.platform, web.program) == (
        "qemu-aarch64",
        "linux/arm64",
        "/usr/local/bin/node",
    )
    assert web.argv == ("/usr/local/bin/node", "/srv/server.js")
    assert web.cpu_seconds == pytest.approx(1855.55)
    assert web.rss_bytes == 187_432 * 1024
    assert web.started == 1767225600 + 3600
    # Matched by path: the exe names the interpreter P's link resolves to on the host.
    api = found[4301]
    assert (api.entry, api.platform, api.flags, api.argv) == (
        "qemu-arm",
        "linux/arm/v7",
        "P",
        ("httpd", "-f", "-p", "8080"),
    )
    job = found[4350]
    assert job.argv == ("/bin/busybox", "sh", "/entrypoint.sh", "--day", "1")
    agent = found[4400]
    assert agent.interpreter_deleted and agent.exe.endswith(" (deleted)")
    assert agent.container_id is None and agent.pod is None
    assert agent.cgroup == "/system.slice/legacy-agent.service"
    assert [p.pid for p in report.stale] == [4400]
    kubernetes = not layout.startswith("docker")
    for pid, (namespace, pod, container, uid) in CONTAINERS.items():
        p = found[pid]
        assert p.runtime == RUNTIME[layout]
        assert p.container_id is not None and len(p.container_id) == 64
        if kubernetes:
            assert (p.namespace, p.pod, p.container, p.pod_uid) == (namespace, pod, container, uid)
        else:
            assert (p.namespace, p.pod, p.container, p.pod_uid) == (None, None, None, None)
    assert report.by_platform()[0] == ("linux/arm64", 2, pytest.approx(1984.55))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fake_node_json_schema(layout: str) -> None:
    """``ps --json``: the documented document, with exact values."""
    tree = _tree(layout)
    argv = ["ps", "--json", "--procfs", tree["procfs"], "--proc", tree["proc"]]
    done = subprocess.run(
        [sys.executable, "-m", "binfmt", *argv, "--host-root", tree["host"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert set(document) == {"proc", "procfs", "processes", "summary"}
    fields = {
        "pid", "program", "argv", "entry", "target", "platform", "interpreter", "flags",
        "interpreter_deleted", "exe", "cpu_seconds", "rss_bytes", "started", "container_id",
        "pod_uid", "namespace", "pod", "container", "runtime", "cgroup",
    }  # fmt: skip
    for p in document["processes"]:
        assert set(p) == fields
    summary = document["summary"]
    assert summary["processes"] == 4 and summary["interpreter_deleted"] == 1
    assert summary["examined"] == 7 and summary["unreadable"] == 0
    assert {r["platform"] for r in summary["by_platform"]} == {
        "linux/arm64",
        "linux/arm/v7",
        "linux/s390x",
    }
    assert sum(r["processes"] for r in summary["by_pod"]) == 4


def test_doctor_reports_stale_interpreters_in_use() -> None:
    tree = _tree("containerd-systemd-v2")
    state = BinfmtMisc(tree["procfs"]).state()
    report = diagnose(state, Host.detect(), host_root=tree["host"], probe=False, proc=tree["proc"])
    (stale,) = [f for f in report.problems if f.code == "interpreter-deleted"]
    assert stale.entry == "qemu-s390x" and stale.severity == "warning"
    assert "pid 4400" in stale.message
    assert "binfmt install s390x --refresh" in stale.fix


def test_vanished_and_unreadable_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that exits mid-read is skipped; one we may not inspect is counted."""
    top = tmp_path / "node"
    shutil.copytree(TREES / "containerd-systemd-v2", top, symlinks=True)
    (top / "proc" / "4350" / "cmdline").unlink()  # exited after its exe was read
    (top / "proc" / "4400" / "stat").write_bytes(b"4400 (agent) S 1\n")  # not the kernel's
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path).endswith("/4301/exe"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr("binfmt.emulated.os.stat", stat)
    state = BinfmtMisc(str(top / "binfmt_misc")).state()
    report = processes(state, proc=str(top / "proc"), host_root=str(top / "host"))
    assert sorted(_by_pid(report)) == [4242]
    assert report.unreadable == 2


def test_another_file_at_the_path_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With F, a process running another file than the one at the interpreter's path is stale.

    (The old file of an upgrade that kept it linked elsewhere on the same file
    system; ``/proc/PID/exe`` names the path it was opened by.) Without F, such a
    file is the container's own interpreter. A file on another device (a
    registrant's copy in another mount namespace) is not judged: see
    ``test_a_copy_on_another_device_is_not_stale``.
    """
    top = tmp_path / "node"
    shutil.copytree(TREES / "containerd-systemd-v2", top, symlinks=True)
    other = top / "containers" / "app" / "usr" / "bin" / "qemu-aarch64-static"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"another QEMU")
    exe = top / "proc" / "4242" / "exe"
    exe.unlink()
    exe.symlink_to(os.path.relpath(other, exe.parent))
    real_readlink = os.readlink

    def readlink(path: Any, *args: Any, **kwargs: Any) -> str:
        if str(path) == str(exe):
            return "/usr/bin/qemu-aarch64-static"  # the path it was opened by
        return str(real_readlink(path, *args, **kwargs))

    monkeypatch.setattr("binfmt.emulated.os.readlink", readlink)
    state = BinfmtMisc(str(top / "binfmt_misc")).state()
    found = _by_pid(processes(state, proc=str(top / "proc"), host_root=str(top / "host")))
    assert found[4242].entry == "qemu-aarch64" and found[4242].interpreter_deleted
    assert not found[4350].interpreter_deleted  # the file at the path, by inode
    without_f = [e for e in state.entries if e.name != "qemu-aarch64"]
    entry = qemu.get("aarch64").to_entry("/usr/bin/qemu-aarch64-static", "", name="qemu-aarch64")
    state = attrs.evolve(state, entries=(entry, *without_f))
    found = _by_pid(processes(state, proc=str(top / "proc"), host_root=str(top / "host")))
    assert found[4242].entry == "qemu-aarch64" and not found[4242].interpreter_deleted


def test_a_copy_on_another_device_is_not_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """An F interpreter pinned from another file system (a container image) is not stale."""
    tree = _tree("containerd-systemd-v2")
    exe = os.path.join(tree["proc"], "4242", "exe")
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        st = real_stat(path, *args, **kwargs)
        if str(path) == exe:  # the same path, another device and inode
            return os.stat_result((st.st_mode, st.st_ino + 1, st.st_dev + 1, *st[3:10]))
        return st

    monkeypatch.setattr("binfmt.emulated.os.stat", stat)
    real_readlink = os.readlink
    monkeypatch.setattr(
        "binfmt.emulated.os.readlink",
        lambda p: "/usr/bin/qemu-aarch64-static" if str(p) == exe else real_readlink(p),
    )
    state = BinfmtMisc(tree["procfs"]).state()
    found = _by_pid(processes(state, proc=tree["proc"], host_root=tree["host"]))
    assert found[4242].entry == "qemu-aarch64" and not found[4242].interpreter_deleted


# -- cgroup paths ------------------------------------------------------------------------

CID = "0123456789abcdef" * 4
UID = "8d9c7f3e-2a4b-4c1d-9e8f-0123456789ab"
U_ = UID.replace("-", "_")
STATIC_UID = "3f1c1b6a9e5d4c2b8a7f6e5d4c3b2a19"

CGROUPS = {
    "containerd, systemd, v2": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice/"
        f"cri-containerd-{CID}.scope\n",
        CgroupInfo(CID, UID, "containerd"),
    ),
    "containerd, systemd, guaranteed": (
        f"0::/kubepods.slice/kubepods-pod{U_}.slice/cri-containerd-{CID}.scope\n",
        CgroupInfo(CID, UID, "containerd"),
    ),
    "as a pod sees it (cgroup namespace)": (
        f"0::/../../kubepods-besteffort-pod{U_}.slice/cri-containerd-{CID}.scope\n",
        CgroupInfo(CID, UID, "containerd"),
    ),
    "static pod (config hash uid)": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/"
        f"cri-containerd-{CID}.scope\n",
        CgroupInfo(CID, STATIC_UID, "containerd"),
    ),
    "cri-o, systemd, v1": (
        f"11:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice/"
        f"crio-{CID}.scope\n1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{U_}.slice/crio-{CID}.scope\n0::/\n",
        CgroupInfo(CID, UID, "cri-o"),
    ),
    "cri-o's conmon is not the container": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice/"
        f"crio-conmon-{CID}.scope\n",
        CgroupInfo(None, UID, None),
    ),
    "cgroupfs, v1": (
        f"4:memory:/kubepods/burstable/pod{UID}/{CID}\n1:name=systemd:/kubepods/burstable/"
        f"pod{UID}/{CID}\n",
        CgroupInfo(CID, UID, None),
    ),
    "docker in docker": (
        f"0::/docker/{'f' * 64}/docker/{CID}\n",
        CgroupInfo(CID, None, "docker"),
    ),
    "podman, rootless": (
        f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope\n",
        CgroupInfo(CID, None, "podman"),
    ),
    "nerdctl": (f"0::/system.slice/nerdctl-{CID}.scope\n", CgroupInfo(CID, None, "containerd")),
    "a host service": ("0::/system.slice/ssh.service\n", CgroupInfo()),
    "not a cgroup file": ("garbage\n\n", CgroupInfo()),
}


@pytest.mark.parametrize("case", sorted(CGROUPS))
def test_parse_cgroup(case: str) -> None:
    text, expected = CGROUPS[case]
    got = parse_cgroup(text)
    assert (got.container_id, got.pod_uid, got.runtime) == (
        expected.container_id,
        expected.pod_uid,
        expected.runtime,
    )


def test_parse_cgroup_prefers_the_path_that_names_the_container() -> None:
    text = f"0::/\n1:name=systemd:/docker/{CID}\n"
    assert parse_cgroup(text).path == f"/docker/{CID}"
    assert parse_cgroup("0::/init.scope\n").path == "/init.scope"

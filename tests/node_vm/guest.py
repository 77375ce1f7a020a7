"""The test driver that runs inside the node VM, at every boot (node-vm-step.service).

It only *does* and *records*: every step's command, exit status and output
goes as one JSON line into ``results/steps.jsonl`` on the data disk (and a
summary line to the serial console); the host's pytest module asserts on
them after the VM has powered off. The data disk (``/dev/nvme0n2``, mounted
at ``/mnt/data``) holds ``in/``: the images, packages, wheels and scripts
the host prepared (see ``tests/node_vm/run.py``).

Boot 1 is the article's node before and after its user data; boot 2 is the
same node after a reboot, then the DaemonSet's containers, then the node
guide's boot script. Runs on the node's Python 3.11, with the standard
library only.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

DATA = Path(sys.argv[1] if len(sys.argv) > 1 else "/mnt/data")
IN = DATA / "in"
RESULTS = DATA / "results"
CONFIG: dict[str, Any] = json.loads((IN / "config.json").read_text()) if IN.exists() else {}
BINFMT_MISC = "/proc/sys/fs/binfmt_misc"
NS = ["ctr", "-n", "k8s.io"]
#: Before the user data, binfmt runs from its unpacked wheels (nothing installed).
PORTABLE = Path("/var/tmp/binfmt-portable")

_boot = 0


def record(step: str, **fields: Any) -> dict[str, Any]:
    """Append one result line (and print a short one on the console)."""
    line = {"boot": _boot, "step": step, "time": round(time.monotonic(), 1), **fields}
    with open(RESULTS / "steps.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())
    rc = fields.get("rc", "")
    print(f"\n@@node-vm boot {_boot} {step} rc={rc} {fields.get('seconds', '')}", flush=True)
    return line


def run(
    step: str,
    argv: Sequence[str],
    *,
    env: Optional[dict[str, str]] = None,
    timeout: float = 600,
) -> dict[str, Any]:
    """Run a command, record it, return its record (``rc`` None on a timeout)."""
    start = time.monotonic()
    full_env = {**os.environ, **(env or {})}
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            env=full_env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        rc: Optional[int] = done.returncode
        out, err = done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, _text(exc.stdout), _text(exc.stderr) + "\n[timed out]"
    except OSError as exc:
        rc, out, err = 127, "", str(exc)
    return record(
        step,
        argv=list(argv),
        env=env or {},
        rc=rc,
        out=out,
        err=err,
        seconds=round(time.monotonic() - start, 2),
    )


def _text(data: object) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data if isinstance(data, str) else ""


def fact(step: str, value: Any) -> None:
    record(step, value=value)


def sh(step: str, script: str, **kwargs: Any) -> dict[str, Any]:
    return run(step, ["sh", "-c", script], **kwargs)


def wait_for(step: str, predicate: Callable[[], bool], timeout: float) -> bool:
    start = time.monotonic()
    ok = predicate()
    while not ok and time.monotonic() - start < timeout:
        time.sleep(2)
        ok = predicate()
    record(step, value=ok, seconds=round(time.monotonic() - start, 1))
    return ok


# -- what the host sees, without touching binfmt_misc ------------------------------------


def mounts_at(path: str) -> list[str]:
    """Filesystem types mounted at ``path`` (from mountinfo: never triggers an automount)."""
    types = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == path:
            types.append(fields[fields.index("-") + 1])
    return types


def entry_names() -> list[str]:
    """The entries of the host's instance (triggers the automount if it is not mounted)."""
    try:
        return sorted(n for n in os.listdir(BINFMT_MISC) if n not in ("register", "status"))
    except OSError as exc:
        return [f"<{exc}>"]


def entry_text(name: str) -> str:
    try:
        return Path(BINFMT_MISC, name).read_text()
    except OSError as exc:
        return f"<{exc}>"


def binfmt_d() -> dict[str, str]:
    """/etc/binfmt.d: file name → contents."""
    d = Path("/etc/binfmt.d")
    return {p.name: p.read_text() for p in sorted(d.glob("*"))} if d.is_dir() else {}


# -- containers -----------------------------------------------------------------------------


def ctr_run(step: str, image: str, name: str, argv: Sequence[str], *flags: str) -> dict[str, Any]:
    return run(step, [*NS, "run", "--rm", *flags, image, name, *argv], timeout=900)


def arm64_uname(step: str) -> dict[str, Any]:
    """The article's proof: an arm64 container says what machine it runs on."""
    return ctr_run(step, CONFIG["arm64_image"], step, ["uname", "-m"], "--platform", "linux/arm64")


def pod_flags(container: dict[str, Any]) -> list[str]:
    """ctr options for a container of deploy/daemonset.yaml: its pod's security context.

    privileged → --privileged; hostPID → the host's PID namespace; hostPath
    volumes → bind mounts (DirectoryOrCreate: made first, as the kubelet does);
    limits.memory → the memory cgroup limit. CPU limits are not applied: under
    TCG they would measure the emulator, not the manifest.
    """
    flags = []
    if container["privileged"]:
        flags.append("--privileged")
    if container["host_pid"]:
        flags += ["--with-ns", "pid:/proc/1/ns/pid"]
    for mount in container["mounts"]:
        if mount["type"] == "DirectoryOrCreate":
            os.makedirs(mount["host"], exist_ok=True)
        flags += ["--mount", f"type=bind,src={mount['host']},dst={mount['path']},options=rbind:rw"]
    if container["memory_limit"]:
        flags += ["--memory-limit", str(container["memory_limit"])]
    return flags


def wait_for_containerd() -> None:
    wait_for(
        "containerd-ready",
        lambda: subprocess.run([*NS, "version"], capture_output=True).returncode == 0,
        120,
    )


# -- binfmt ---------------------------------------------------------------------------------


def portable_binfmt() -> list[str]:
    """``python3 -m binfmt`` from the unpacked wheels: binfmt before anything is installed."""
    if not PORTABLE.exists():
        for wheel in sorted((IN / "wheels").glob("*.whl")):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(PORTABLE)
    return ["env", f"PYTHONPATH={PORTABLE}", "python3", "-m", "binfmt"]


BINFMT = ["/usr/local/bin/binfmt"]


def binfmt(step: str, *args: str, command: Sequence[str] = BINFMT) -> dict[str, Any]:
    return run(step, [*command, *args], timeout=900)


def observe(prefix: str, *, command: Sequence[str] = BINFMT) -> None:
    """The node's state: entries, binfmt.d, status and doctor (JSON), the arm64 container."""
    fact(f"{prefix}-entries", {n: entry_text(n) for n in entry_names()})
    fact(f"{prefix}-binfmt.d", binfmt_d())
    binfmt(f"{prefix}-doctor", "doctor", "--json", "--platform", "linux/arm64", command=command)
    arm64_uname(f"{prefix}-arm64")


# -- the boots ------------------------------------------------------------------------------


def boot1() -> None:
    """The article's node: fails before its user data, runs arm64 after it."""
    fact("kernel", os.uname().release)
    fact("boot1-mounts", mounts_at(BINFMT_MISC))
    wait_for_containerd()
    run(
        "import-amd64",
        [*NS, "image", "import", str(IN / "oci" / "busybox-amd64.tar")],
        timeout=300,
    )
    run(
        "import-arm64",
        [
            *NS,
            "image",
            "import",
            "--platform",
            "linux/arm64",
            str(IN / "oci" / "busybox-arm64.tar"),
        ],
        timeout=300,
    )
    run("images", [*NS, "image", "ls"])

    # Before: what the node's kubelet would see.
    ctr_run("before-amd64", CONFIG["amd64_image"], "before-amd64", ["uname", "-m"])
    arm64_uname("before-arm64")
    portable = portable_binfmt()
    binfmt("before-doctor", "doctor", "--platform", "linux/arm64", command=portable)
    binfmt("before-doctor-json", "doctor", "--json", "--platform", "linux/arm64", command=portable)
    fact("before-entries", entry_names())

    # The user data, as it is, with its variables filled in by the host.
    run(
        "user-data",
        ["sh", str(IN / "eks-user-data.sh")],
        env={"PIP_INDEX_URL": CONFIG["pip_index_url"]},
        timeout=1200,
    )
    observe("after")
    binfmt("after-verify", "verify")


def boot2() -> None:
    """After the reboot: nothing run again; then restarts, removals, the DaemonSet, the guide."""
    fact("boot2-mounts", mounts_at(BINFMT_MISC))
    run(
        "boot2-systemd-binfmt",
        ["systemctl", "show", "systemd-binfmt", "-p", "ActiveState,Result,ExecMainStatus"],
    )
    wait_for_containerd()
    observe("boot2")

    # What Debian's dpkg trigger does whenever a package ships a binfmt.d file.
    run("restart-1", ["systemctl", "restart", "systemd-binfmt"])
    observe("restart-1")

    # An entry removed by hand: doctor says the platform is gone, load puts it back.
    sh("removed-entry", f"echo -1 > {BINFMT_MISC}/qemu-aarch64")
    arm64_uname("removed-entry-arm64")
    binfmt("removed-entry-doctor", "doctor", "--json", "--platform", "linux/arm64")
    binfmt("removed-entry-load", "load", "/etc/binfmt.d")
    observe("loaded")

    # A persisted file removed by hand: doctor says what is no longer persisted,
    # and its fix puts the file back.
    sh("removed-file", "rm /etc/binfmt.d/qemu-riscv64.conf")
    binfmt("removed-file-doctor", "doctor", "--json", "--platform", "linux/arm64")
    doctor = _last_json("removed-file-doctor")
    fixes = [f["fix"] for f in doctor.get("findings", []) if f.get("entry") == "qemu-riscv64"]
    fact("removed-file-fixes", fixes)
    if fixes and fixes[0].startswith("binfmt "):
        sh("removed-file-fix", fixes[0])
    observe("refiled")

    daemonset()
    guide()


def _last_json(step: str) -> dict[str, Any]:
    for line in reversed((RESULTS / "steps.jsonl").read_text().splitlines()):
        rec = json.loads(line)
        if rec["step"] == step:
            try:
                doc: dict[str, Any] = json.loads(rec.get("out") or "{}")
                return doc
            except ValueError:
                return {}
    return {}


def daemonset() -> None:
    """deploy/daemonset.yaml's containers on this node, with only the automount left."""
    containers = {c["name"]: c for c in CONFIG["daemonset"]}
    # The image's root tree, and its config's environment (see run.py).
    image = CONFIG["daemonset_rootfs"]
    flags = ["--rootfs", *(f"--env={e}" for e in CONFIG["daemonset_env"])]
    # A node without the user data: no binfmt.d files, no QEMU on the host, no
    # entries. The image brings its own QEMU. The entries go first: an F entry
    # whose file is gone cannot be put back, so uninstall refuses it without
    # --force.
    sh(
        "ds-prelude",
        "/usr/local/bin/binfmt uninstall --all-qemu"
        " && rm -f /etc/binfmt.d/qemu-*.conf /usr/bin/qemu-*-static",
    )
    # The Amazon Linux 2023 trap: an automount nothing has triggered.
    run("ds-stop-mount", ["systemctl", "stop", "proc-sys-fs-binfmt_misc.mount"])
    run("ds-automount-active", ["systemctl", "is-active", "proc-sys-fs-binfmt_misc.automount"])
    fact("ds-mounts-before", mounts_at(BINFMT_MISC))

    install = containers["install"]
    ctr_run("ds-install", image, "ds-install", install["command"], *flags, *pod_flags(install))
    fact("ds-mounts-after", mounts_at(BINFMT_MISC))
    fact("ds-entries-after-install", {n: entry_text(n) for n in entry_names()})
    binfmt("ds-host-doctor", "doctor", "--json")
    arm64_uname("ds-after-install-arm64")

    verify = containers["verify"]
    ctr_run("ds-verify", image, "ds-verify", verify["command"], *flags, *pod_flags(verify))

    loop = containers["keep-registered"]
    features = Path(loop["nfd_file"])
    if features.exists():
        features.unlink()
    log = "/var/log/ds-keep-registered.log"
    run(
        "ds-loop-start",
        [
            *NS,
            "run",
            "-d",
            "--log-uri",
            f"file://{log}",
            *flags,
            *pod_flags(loop),
            image,
            "ds-keep-registered",
            *loop["command"],
        ],
    )
    wait_for("ds-nfd-written", features.exists, 300)
    fact("ds-nfd-1", features.read_text() if features.exists() else None)

    restarted_at = time.time()
    run("ds-restart", ["systemctl", "restart", "systemd-binfmt"])
    fact("ds-entries-after-restart", entry_names())
    arm64_uname("ds-after-restart-arm64")
    # The loop sleeps 5 minutes between passes: end this sleep (as if the
    # minutes had passed) instead of waiting for it.
    killed: list[int] = []
    deadline = time.monotonic() + 60
    while not killed and time.monotonic() < deadline:
        for pid in _task_pids("ds-keep-registered"):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[:2] == [b"sleep", b"300"]:
                os.kill(pid, signal.SIGTERM)
                killed.append(pid)
        if not killed:
            time.sleep(2)
    fact("ds-fast-forward", killed)
    wait_for("ds-restored", lambda: "qemu-aarch64" in entry_names(), 300)
    # The loop's pass ends with the feature file; wait for its rewrite.
    wait_for(
        "ds-nfd-rewritten",
        lambda: features.exists() and features.stat().st_mtime > restarted_at,
        120,
    )
    fact("ds-entries-restored", {n: entry_text(n) for n in entry_names()})
    fact("ds-nfd-2", features.read_text() if features.exists() else None)
    arm64_uname("ds-restored-arm64")
    run("ds-loop-stop", [*NS, "task", "kill", "ds-keep-registered"])
    wait_for("ds-loop-stopped", lambda: not _task_pids("ds-keep-registered"), 60)
    run("ds-loop-delete", [*NS, "container", "delete", "ds-keep-registered"])
    fact("ds-loop-log", Path(log).read_text() if Path(log).exists() else None)


def _task_pids(task: str) -> list[int]:
    done = subprocess.run([*NS, "task", "ps", task], capture_output=True, text=True)
    pids = []
    for line in done.stdout.splitlines()[1:]:
        word = line.split()[0] if line.split() else ""
        if word.isdigit():
            pids.append(int(word))
    return pids


def guide() -> None:
    """docs/guides/node.rst's boot script on a node with a Debian package mirror."""
    # A fresh node again: nothing of the earlier stories left (the images stay).
    sh(
        "guide-prelude",
        # --force: the DaemonSet's F entries hold QEMU files of its image,
        # gone from here, so they cannot be put back (uninstall refuses that
        # by default); this node is being wiped on purpose.
        "/usr/local/bin/binfmt uninstall --all-qemu --force && "
        "rm -rf /opt/binfmt /usr/local/bin/binfmt /etc/binfmt.d/*",
    )
    # The node's package mirror: a local repository with qemu-user-static.
    Path("/etc/apt/sources.list.d").mkdir(exist_ok=True)
    for old in Path("/etc/apt/sources.list.d").iterdir():
        old.unlink()
    Path("/etc/apt/sources.list").write_text(f"deb [trusted=yes] file:{IN / 'repo'} ./\n")
    run("guide-apt-update", ["apt-get", "update"], timeout=300)
    run(
        "guide-script",
        ["sh", str(IN / "debian-node.sh")],
        env={"PIP_INDEX_URL": CONFIG["pip_index_url"], "DEBIAN_FRONTEND": "noninteractive"},
        timeout=1500,
    )
    observe("guide")
    run("guide-restart", ["systemctl", "restart", "systemd-binfmt"])
    observe("guide-restart")


def main() -> int:
    global _boot
    RESULTS.mkdir(exist_ok=True)
    boots = RESULTS / "boots"
    _boot = len(boots.read_text().splitlines()) + 1 if boots.exists() else 1
    with open(boots, "a") as f:
        f.write(f"{_boot}\n")
    record("boot-start")
    try:
        if _boot == 1:
            boot1()
        elif _boot == 2:
            boot2()
    except Exception as exc:
        record("driver-error", err=f"{type(exc).__name__}: {exc}")
    record("boot-end")
    os.sync()
    # Boot 1 ends with a reboot (the host starts the emulator again: a power
    # cycle), boot 2 with a power-off.
    action = "reboot" if _boot == 1 else "poweroff"
    subprocess.run(["systemctl", "--no-block", action])
    return 0


if __name__ == "__main__":
    print(shlex.join(sys.argv), flush=True)
    sys.exit(main())

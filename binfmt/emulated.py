"""Emulated processes: which processes of a node run under a binfmt_misc interpreter.

:func:`processes` (also ``binfmt.processes()``) walks ``/proc`` and keeps
every process whose executable is an entry's interpreter, matched by the file
itself: the device and inode of ``/proc/PID/exe`` (for an ``F`` entry the file
the kernel opened at registration, which ``stat`` still reaches when it was
deleted or lives in another mount namespace) against the file each entry
names, found under ``host_root``; failing that, by the path ``/proc/PID/exe``
names (without its ``" (deleted)"``), which is how a container's own
interpreter of an entry without ``F`` is recognised.

The emulated program and its arguments come from ``/proc/PID/cmdline``,
which the kernel built (``fs/binfmt_misc.c``, measured on real processes in
``tests/test_processes.py``)::

    without P:  interpreter  program  argv[1] argv[2] …    (argv[0] is dropped)
    with P:     interpreter  program  argv[0] argv[1] …

where ``interpreter`` is the entry's interpreter as registered and
``program`` the file name the exec was given (relative to the process's
working directory at the time, inside its root). A ``#!`` script whose
interpreter is emulated shows the script interpreter as ``program`` and
the script among the arguments.

Each process also gets what it costs (``utime + stime``, resident memory,
start time) and, from ``/proc/PID/cgroup``, the container it runs in
(:func:`parse_cgroup`: cgroup v1 and v2; containerd, CRI-O, Docker and
Podman; the systemd and cgroupfs drivers). Where the node keeps the kubelet's
standard log layout (``/var/log/pods/NAMESPACE_POD_UID/CONTAINER/`` and
``/var/log/containers/POD_NAMESPACE_CONTAINER-ID.log``) under ``host_root``,
the pod's namespace and name and the container's name are read from there:
no API server is needed, only ``hostPath`` mounts.

Processes that exit while they are read are skipped; those this process may
not inspect (another user's, without root) are counted in
:attr:`ProcessReport.unreadable`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any, Optional

import attrs

from . import qemu
from .entry import Entry, Flags
from .findings import Finding
from .procfs import State
from .text import decode

__all__ = [
    "DEFAULT_PROC",
    "CgroupInfo",
    "KubeletLogs",
    "Process",
    "ProcessReport",
    "parse_cgroup",
    "processes",
    "stale_findings",
]

#: Where the kernel's process file system is mounted.
DEFAULT_PROC = "/proc"

_DELETED = " (deleted)"
# How much of a program is read to tell its platform (MIPS compares e_flags at 36..40).
_HEAD = 64


# -- containers, from /proc/PID/cgroup ---------------------------------------------------


@attrs.frozen
class CgroupInfo:
    """The container a process runs in, as its cgroup path tells."""

    #: The container runtime's id (64 hex digits), or ``None``.
    container_id: Optional[str] = None
    #: The Kubernetes pod's UID (dashed), or ``None``.
    pod_uid: Optional[str] = None
    #: ``"containerd"``, ``"cri-o"``, ``"docker"``, ``"podman"``, or ``None`` when the path
    #: does not say (the cgroupfs driver names containerd's and Docker's cgroups alike).
    runtime: Optional[str] = None
    #: The cgroup path the facts were read from (the v2 one, else systemd's, else the first).
    path: str = ""


_HEX64 = "[0-9a-f]{64}"
_UUID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
# One component of a cgroup path that names a container, and the runtime it shows.
_SCOPE_PREFIXES = {
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
    "libpod": "podman",
    "nerdctl": "containerd",
}
_CONTAINER_SCOPE = re.compile(rf"^(cri-containerd|crio|docker|libpod|nerdctl)-({_HEX64})\.scope$")
_CRIO_CGROUPFS = re.compile(rf"^crio-({_HEX64})$")
_BARE_ID = re.compile(rf"^({_HEX64})$")
# kubepods-burstable-pod<uid with _>.slice (systemd) or pod<uid> (cgroupfs); static
# pods' UIDs are 32 hex digits (the config hash).
_POD = re.compile(rf"(?:^|-)pod({_UUID}|[0-9a-f]{{32}})(?:\.slice)?$")


def parse_cgroup(text: str) -> CgroupInfo:
    """The container and pod of a process, from the text of its ``/proc/PID/cgroup``.

    Lines are ``ID:CONTROLLERS:PATH``; the unified (v2, ``0::``) path is
    read first, then systemd's v1 hierarchy, then the others, and the first
    that names a container or pod wins. Within a path the innermost
    container is the process's (Docker in Docker nests them). Paths relative
    to a cgroup namespace (``/../../kubepods.slice/…``, as a container sees
    other processes) work too.
    """
    paths: list[tuple[int, str]] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        rank = (
            0
            if hierarchy == "0" and controllers == ""
            else 1
            if "name=systemd" in controllers
            else 2
        )
        paths.append((rank, path))
    paths.sort(key=lambda p: p[0])
    for _, path in paths:
        info = _parse_path(path)
        if info.container_id or info.pod_uid:
            return info
    # No container: the most telling path (on a hybrid system the unified one is "/").
    telling = [path for _, path in paths if path != "/"] or [path for _, path in paths]
    return CgroupInfo(path=telling[0] if telling else "")


def _parse_path(path: str) -> CgroupInfo:
    container_id = runtime = pod_uid = None
    parent = ""
    for component in path.split("/"):
        match = _CONTAINER_SCOPE.match(component)
        if match:
            runtime, container_id = _SCOPE_PREFIXES[match.group(1)], match.group(2)
        elif _CRIO_CGROUPFS.match(component):
            runtime, container_id = "cri-o", component[len("crio-") :]
        elif _BARE_ID.match(component):
            runtime = "docker" if parent == "docker" else None
            container_id = component
        else:
            pod = _POD.search(component)
            if pod:
                pod_uid = pod.group(1).replace("_", "-")
        parent = component
    return CgroupInfo(container_id, pod_uid, runtime, path)


# -- pods, from the kubelet's log directories ----------------------------------------------


class KubeletLogs:
    """Pod and container names from the kubelet's log layout under ``host_root``.

    ``/var/log/pods/NAMESPACE_POD_UID/`` names each pod,
    ``/var/log/containers/POD_NAMESPACE_CONTAINER-ID.log`` each container
    (namespaces, pod and container names cannot hold ``_``). The directories
    are listed once, on first use; a node without them gives no names.
    """

    def __init__(self, host_root: str = "/") -> None:
        self.host_root = host_root
        self._pods: Optional[dict[str, tuple[str, str]]] = None
        self._containers: Optional[dict[str, tuple[str, str, str]]] = None

    def _dir(self, path: str) -> str:
        return os.path.join(self.host_root, path.lstrip("/"))

    def pod(self, pod_uid: str) -> Optional[tuple[str, str]]:
        """``(namespace, pod)`` of the pod with that UID, or ``None``."""
        if self._pods is None:
            self._pods = {}
            for name in _listdir(self._dir("/var/log/pods")):
                parts = name.split("_")
                if len(parts) == 3 and all(parts):
                    self._pods[parts[2]] = (parts[0], parts[1])
        return self._pods.get(pod_uid)

    def container(self, container_id: str) -> Optional[tuple[str, str, str]]:
        """``(namespace, pod, container)`` of the container with that id, or ``None``."""
        if self._containers is None:
            self._containers = {}
            for name in _listdir(self._dir("/var/log/containers")):
                stem = name[: -len(".log")] if name.endswith(".log") else ""
                head, _, cid = stem.rpartition("-")
                parts = head.split("_")
                if len(cid) == 64 and len(parts) == 3 and all(parts):
                    self._containers[cid] = (parts[1], parts[0], parts[2])
        return self._containers.get(container_id)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


# -- the records -----------------------------------------------------------------------------


@attrs.frozen
class Process:
    """One process that runs under a binfmt_misc entry's interpreter."""

    pid: int
    #: The emulated program: the file name its exec was given (inside the process's root).
    program: str
    #: The program's own argument vector, as the emulator gives it to the program.
    argv: tuple[str, ...]
    #: The entry whose interpreter runs it.
    entry: str
    #: The QEMU target and OCI platform of the program's ELF header (as ``check`` names
    #: them), or of the entry when the program cannot be read.
    target: Optional[str]
    platform: Optional[str]
    #: The entry's interpreter, as registered.
    interpreter: str
    #: The entry's flags (``"PF"`` …).
    flags: str
    #: The file the process runs was deleted or replaced since it was opened (with ``F``:
    #: at registration): an upgraded interpreter is not in use until the entry is
    #: registered again and the process restarted.
    interpreter_deleted: bool
    #: CPU time used so far, user plus system (``utime + stime``).
    cpu_seconds: float
    #: Resident memory.
    rss_bytes: int
    #: When it started, in seconds since the epoch.
    started: float
    container_id: Optional[str] = None
    pod_uid: Optional[str] = None
    #: Pod namespace, pod and container names (from the kubelet's log layout).
    namespace: Optional[str] = None
    pod: Optional[str] = None
    container: Optional[str] = None
    #: The container runtime the cgroup path shows, if it does.
    runtime: Optional[str] = None
    #: The process's cgroup path.
    cgroup: str = ""
    #: The file it runs, as ``/proc/PID/exe`` names it (``" (deleted)"`` included).
    exe: str = ""

    def to_dict(self) -> dict[str, Any]:
        """One process of the ``ps --json`` document."""
        return {
            "pid": self.pid,
            "program": self.program,
            "argv": list(self.argv),
            "entry": self.entry,
            "target": self.target,
            "platform": self.platform,
            "interpreter": self.interpreter,
            "flags": self.flags,
            "interpreter_deleted": self.interpreter_deleted,
            "exe": self.exe,
            "cpu_seconds": self.cpu_seconds,
            "rss_bytes": self.rss_bytes,
            "started": self.started,
            "container_id": self.container_id,
            "pod_uid": self.pod_uid,
            "namespace": self.namespace,
            "pod": self.pod,
            "container": self.container,
            "runtime": self.runtime,
            "cgroup": self.cgroup,
        }


@attrs.frozen
class ProcessReport:
    """What :func:`processes` found: the emulated processes, and how many were looked at."""

    #: The process file system read.
    proc: str
    #: The binfmt_misc directory whose entries were matched.
    procfs: str
    #: The emulated processes, by PID.
    processes: tuple[Process, ...] = ()
    #: Processes looked at (kernel threads included).
    examined: int = 0
    #: Processes that could not be inspected (permission denied).
    unreadable: int = 0

    def __iter__(self) -> Iterator[Process]:
        return iter(self.processes)

    def __len__(self) -> int:
        return len(self.processes)

    @property
    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds for p in self.processes)

    @property
    def stale(self) -> tuple[Process, ...]:
        """The processes whose interpreter file was deleted or replaced."""
        return tuple(p for p in self.processes if p.interpreter_deleted)

    def by_platform(self) -> list[tuple[str, int, float]]:
        """``(platform, processes, CPU seconds)``, most CPU first (``"-"``: unknown platform)."""
        totals: dict[str, list[float]] = {}
        for p in self.processes:
            row = totals.setdefault(p.platform or "-", [0, 0.0])
            row[0] += 1
            row[1] += p.cpu_seconds
        return sorted(
            ((k, int(v[0]), round(v[1], 2)) for k, v in totals.items()), key=lambda r: (-r[2], r[0])
        )

    def by_pod(self) -> list[tuple[Optional[str], Optional[str], Optional[str], int, float]]:
        """``(namespace, pod, pod_uid, processes, CPU seconds)``, most CPU first.

        Processes outside any pod are one row of ``None`` names.
        """
        totals: dict[tuple[Optional[str], Optional[str], Optional[str]], list[float]] = {}
        for p in self.processes:
            row = totals.setdefault((p.namespace, p.pod, p.pod_uid), [0, 0.0])
            row[0] += 1
            row[1] += p.cpu_seconds
        rows = [(*key, int(v[0]), round(v[1], 2)) for key, v in totals.items()]
        return sorted(rows, key=lambda r: (-r[4], tuple(x or "" for x in r[:3])))

    def to_dict(self) -> dict[str, Any]:
        """The ``ps --json`` document (schema in ``docs/cli.rst``)."""
        return {
            "proc": self.proc,
            "procfs": self.procfs,
            "processes": [p.to_dict() for p in self.processes],
            "summary": {
                "processes": len(self.processes),
                "cpu_seconds": round(self.cpu_seconds, 2),
                "rss_bytes": sum(p.rss_bytes for p in self.processes),
                "interpreter_deleted": len(self.stale),
                "examined": self.examined,
                "unreadable": self.unreadable,
                "by_platform": [
                    {"platform": k, "processes": n, "cpu_seconds": s}
                    for k, n, s in self.by_platform()
                ],
                "by_pod": [
                    {"namespace": ns, "pod": pod, "pod_uid": uid, "processes": n, "cpu_seconds": s}
                    for ns, pod, uid, n, s in self.by_pod()
                ],
            },
        }


def stale_findings(report: ProcessReport) -> list[Finding]:
    """One ``interpreter-deleted`` finding per entry whose processes run a deleted interpreter."""
    by_entry: dict[str, list[Process]] = {}
    for p in report.stale:
        by_entry.setdefault(p.entry, []).append(p)
    found = []
    for name, procs in by_entry.items():
        first = procs[0]
        pids = ", ".join(str(p.pid) for p in procs[:5]) + (" …" if len(procs) > 5 else "")
        who = f"pid {pids} runs" if len(procs) == 1 else f"{len(procs)} processes (pid {pids}) run"
        if "F" in first.flags:
            message = (
                f"{who} the interpreter file {name} opened at registration, since deleted or "
                f"replaced (/proc shows {first.exe}): an upgraded interpreter is not in use "
                "until the entry is registered again"
            )
            again = f"binfmt install {first.target} --refresh" if first.target else "register it"
            fix = f"register {name} again ({again}), then restart those processes"
        else:
            message = (
                f"{who} an interpreter file deleted or replaced since it started "
                f"(/proc shows {first.exe})"
            )
            fix = "restart those processes to run the current interpreter"
        found.append(Finding("interpreter-deleted", message=message, fix=fix, entry=name))
    return found


# -- the walk --------------------------------------------------------------------------------


def processes(
    state: Optional[State] = None, *, proc: str = DEFAULT_PROC, host_root: str = "/"
) -> ProcessReport:
    """Every process under ``proc`` that runs an interpreter of one of ``state``'s entries.

    ``state`` defaults to the kernel's instance (:class:`~binfmt.procfs.BinfmtMisc`).
    ``host_root`` is where the host's files are seen (``/``, or ``/proc/1/root`` from
    a pod with ``hostPID``): the entries' interpreter files and the kubelet's
    ``/var/log/pods`` and ``/var/log/containers`` are read under it. Disabled
    entries count too (a process started before the entry was disabled still
    runs). Raises :class:`FileNotFoundError` if ``proc`` is not a directory.
    """
    if state is None:
        from .procfs import BinfmtMisc

        state = BinfmtMisc().state()
    return _Walk(state, proc, host_root).run()


class _Walk:
    def __init__(self, state: State, proc: str, host_root: str) -> None:
        self.state = state
        self.proc = proc
        self.host_root = host_root
        self.by_file: dict[tuple[int, int], list[Entry]] = {}
        self.by_path: dict[str, list[Entry]] = {}
        self.current: dict[str, Optional[tuple[int, int]]] = {}
        for entry in state.entries:
            host_path = _under(host_root, entry.interpreter)
            try:
                st = os.stat(host_path)
            except OSError:
                ident = None
            else:
                ident = (st.st_dev, st.st_ino)
                self.by_file.setdefault(ident, []).append(entry)
            self.current[entry.name] = ident
            for path in {entry.interpreter, _resolve(host_root, entry.interpreter)}:
                self.by_path.setdefault(path, []).append(entry)
        self.logs = KubeletLogs(host_root)
        self._boot: Optional[float] = None
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def run(self) -> ProcessReport:
        found: list[Process] = []
        examined = unreadable = 0
        proc = self.proc
        names = [n for n in os.listdir(proc) if n.isdigit()]
        if not self.state.entries:
            return ProcessReport(self.proc, self.state.path, examined=len(names))
        by_file, by_path = self.by_file, self.by_path
        for name in names:
            examined += 1
            exe = f"{proc}/{name}/exe"
            st: Optional[os.stat_result]
            try:
                st = os.stat(exe)
            except PermissionError:
                unreadable += 1
                continue
            except OSError:
                st = None  # a kernel thread, an exited process, or a file out of reach
            link: Optional[str] = None
            candidates = by_file.get((st.st_dev, st.st_ino)) if st is not None else None
            if candidates is None:
                try:
                    link = os.readlink(exe)
                except PermissionError:
                    unreadable += 1
                    continue
                except OSError:
                    continue
                candidates = by_path.get(
                    link[: -len(_DELETED)] if link.endswith(_DELETED) else link
                )
                if candidates is None:
                    continue
            try:
                record = self.read(int(name), candidates, st, link)
            except PermissionError:
                unreadable += 1
                continue
            except OSError:
                continue  # it exited while we read it (ENOENT, ESRCH)
            except (ValueError, IndexError):
                unreadable += 1  # not what the kernel writes: a broken tree
                continue
            if record is not None:
                found.append(record)
        found.sort(key=lambda p: p.pid)
        return ProcessReport(
            self.proc, self.state.path, tuple(found), examined=examined, unreadable=unreadable
        )

    # -- one process ---------------------------------------------------------------------

    def _file(self, pid: int, name: str) -> str:
        return f"{self.proc}/{pid}/{name}"

    def read(
        self, pid: int, candidates: list[Entry], st: Optional[os.stat_result], link: Optional[str]
    ) -> Optional[Process]:
        if link is None:
            link = os.readlink(self._file(pid, "exe"))
        with open(self._file(pid, "cmdline"), "rb") as f:
            raw = f.read()
        args = [decode(a) for a in raw.split(b"\0")]
        if args and args[-1] == "":
            args.pop()
        if not args:
            return None  # a zombie: its memory, command line included, is gone
        transparent = all(Flags.TRANSPARENT in e.flags for e in candidates)
        if transparent:
            # T (Linux 7.3) leaves argv alone and passes the program as AT_EXECFD.
            program, argv0 = args[0], ""
        elif len(args) < 2:
            return None  # not laid out by binfmt_misc: a process that rewrote it
        else:
            program, argv0 = args[1], args[0]
        head = self.head(pid, program)
        entry = self.choose(candidates, argv0, head)
        if Flags.TRANSPARENT in entry.flags:
            argv = tuple(args)
        elif Flags.PRESERVE_ARGV0 in entry.flags:
            argv = tuple(args[2:])
        else:
            argv = (program, *args[2:])
        sig = qemu.match_header(head) if head else None
        if sig is None:
            targets = qemu.identify(entry)
            sig = targets[0] if targets else None
        cpu, started = self.times(pid)
        cg = _read_text(self._file(pid, "cgroup"))
        info = parse_cgroup(cg) if cg is not None else CgroupInfo()
        namespace = pod = container = None
        if info.container_id:
            named = self.logs.container(info.container_id)
            if named:
                namespace, pod, container = named
        if pod is None and info.pod_uid:
            pod_named = self.logs.pod(info.pod_uid)
            if pod_named:
                namespace, pod = pod_named
        return Process(
            pid=pid,
            program=program,
            argv=argv,
            entry=entry.name,
            target=sig.name if sig is not None else None,
            platform=sig.platforms[0] if sig is not None and sig.platforms else None,
            interpreter=entry.interpreter,
            flags=entry.flags.letters,
            interpreter_deleted=self.deleted(entry, st, link),
            cpu_seconds=cpu,
            rss_bytes=self.rss(pid),
            started=started,
            container_id=info.container_id,
            pod_uid=info.pod_uid,
            namespace=namespace,
            pod=pod,
            container=container,
            runtime=info.runtime,
            cgroup=info.path,
            exe=link,
        )

    def choose(self, candidates: list[Entry], argv0: str, head: bytes) -> Entry:
        """Of the entries with this interpreter: the one named in argv[0], then the matching one."""
        if len(candidates) == 1:
            return candidates[0]
        named = [e for e in candidates if e.interpreter == argv0] or candidates
        if head:
            for entry in named:
                if entry.matches(head):
                    return entry
        return named[0]

    def deleted(self, entry: Entry, st: Optional[os.stat_result], link: str) -> bool:
        """The running file is gone from its path, or another file is there now."""
        if link.endswith(_DELETED) or (st is not None and st.st_nlink == 0):
            return True
        if Flags.FIX_BINARY not in entry.flags or st is None:
            return False
        # With F the kernel runs the file opened at registration: another file at
        # the interpreter's path, on the same file system, is a newer one (an
        # upgrade that kept the old one linked). A file on another device is the
        # registrant's own copy in another mount namespace (a container image's
        # QEMU): not stale, as far as anyone can tell.
        current = self.current.get(entry.name)
        return current is not None and current[0] == st.st_dev and current[1] != st.st_ino

    def head(self, pid: int, program: str) -> bytes:
        """The program's first bytes, read through the process's root (and cwd if relative)."""
        base = "root" if program.startswith("/") else "cwd"
        # normpath: no ".." may climb out of the process's root (a container's).
        inside = os.path.normpath("/" + program).lstrip("/")
        path = os.path.join(self._file(pid, base), inside)
        try:
            fd = os.open(
                os.fsencode(path), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            )
        except OSError:
            return b""
        try:
            return os.read(fd, _HEAD)
        except OSError:
            return b""
        finally:
            os.close(fd)

    def times(self, pid: int) -> tuple[float, float]:
        """``(utime + stime, start)`` in seconds, from ``/proc/PID/stat``."""
        with open(self._file(pid, "stat"), "rb") as f:
            text = f.read()
        # The command name (field 2) is in parentheses and may hold anything.
        fields = text[text.rfind(b")") + 2 :].split()
        utime, stime, starttime = int(fields[11]), int(fields[12]), int(fields[19])
        ticks = float(self._ticks)
        return round((utime + stime) / ticks, 2), round(self.boot() + starttime / ticks, 2)

    def boot(self) -> float:
        if self._boot is None:
            self._boot = 0.0
            for line in (_read_text(os.path.join(self.proc, "stat")) or "").splitlines():
                if line.startswith("btime "):
                    self._boot = float(line.split()[1])
        return self._boot

    def rss(self, pid: int) -> int:
        for line in (_read_text(self._file(pid, "status")) or "").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return decode(f.read())
    except (FileNotFoundError, ProcessLookupError):
        return None


def _under(root: str, path: str) -> str:
    return path if root == "/" else os.path.join(root, path.lstrip("/"))


def _resolve(root: str, path: str) -> str:
    """``path`` with its symbolic links followed as the host sees them (``root`` is ``/``)."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = "/" + "/".join([*done, part])
        try:
            target = os.readlink(_under(root, candidate))
        except OSError:
            done.append(part)
            continue
        hops += 1
        if hops > 40:
            return path
        if target.startswith("/"):
            done = []
        parts = [p for p in target.split("/") if p] + parts
    return "/" + "/".join(done)

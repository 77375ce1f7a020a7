"""Health checks for a multi-arch node: one finding per problem, each with its fix.

:func:`diagnose` looks at the binfmt_misc mount and switch, the kernel, the
user namespace, every enabled entry (its interpreter, its flags, what it
matches and what it shadows), whether the registrations survive a
``systemd-binfmt`` restart, and — for each ``platforms`` asked for —
whether the node can run that platform at all (by running the probe from
:mod:`binfmt.verify` where it can). The problems are the ones users of
``qemu-binfmt-conf.sh``, ``tonistiigi/binfmt`` and friends keep tripping over
(``docs/doctor.rst`` maps each code to those reports).

Every path the checks read (interpreters, ``/etc/binfmt.d``, the systemd
binary, ``/proc/self``) is taken under ``host_root`` (the host's root as this
process sees it: ``/``, or ``/proc/1/root`` from a pod with ``hostPID``), so
the whole diagnosis can also run against a fake tree.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import attrs

from . import qemu
from .binfmt_d import SYSTEMD_DIRS, effective_entries, read_binfmt_d
from .entry import Entry, EntryType, Flags
from .errors import BinfmtError
from .findings import CODES as ALL_CODES
from .findings import SEVERITIES, Finding, Severity, worst
from .health import inspect_interpreter, interpreter_findings
from .host import Host, read_proc_file
from .procfs import DEFAULT_PATH, State

__all__ = ["CODES", "DOCTOR_CODES", "DoctorReport", "diagnose"]

#: Every finding code doctor emits. Stable: scripts may match on them.
DOCTOR_CODES = (
    "not-mounted",
    "automount-not-triggered",
    "disabled",
    "kernel-without-f",
    "user-namespace",
    "interpreter-missing",
    "interpreter-gone",
    "interpreter-not-executable",
    "interpreter-not-elf",
    "interpreter-dynamic",
    "writable-credentials-interpreter",
    "writable-interpreter",
    "no-fix-binary",
    "hijacks-native",
    "native-unknown",
    "shadowed-entry",
    "duplicate-entry",
    "not-persisted",
    "boot-order-differs",
    "systemd-binfmt-flushes",
    "platform-unavailable",
    "platform-ok",
    "no-kernel-support",
    "no-credentials",
    "qemu-versions",
    "unreadable-entry",
    "invalid-config",
    "interpreter-deleted",
    "kernel-rules-unknown",
)
#: Doctor's codes with their severity (from :data:`binfmt.findings.CODES`).
CODES: dict[str, Severity] = {code: ALL_CODES[code][0] for code in DOCTOR_CODES}
SYSTEMD_BINFMT = ("/usr/lib/systemd/systemd-binfmt", "/lib/systemd/systemd-binfmt")


@attrs.frozen
class DoctorReport:
    """What :func:`diagnose` found: one :class:`~binfmt.findings.Finding` per problem."""

    procfs: str
    problems: tuple[Finding, ...]

    @property
    def worst(self) -> Severity:
        return worst(self.problems)

    @property
    def exit_status(self) -> int:
        """0 healthy (or only info), 1 warnings, 2 errors."""
        return SEVERITIES.index(self.worst)

    def codes(self) -> list[str]:
        return [p.code for p in self.problems]

    def to_dict(self, names: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
        """The ``doctor --json`` document (``names``: see :meth:`Finding.fix_text`)."""
        return {
            "procfs": self.procfs,
            "status": {0: "ok", 1: "warnings", 2: "errors"}[self.exit_status],
            "findings": [p.to_dict(names) for p in self.problems],
        }


def diagnose(
    state: State,
    host: Host,
    *,
    host_root: str = "/",
    binfmt_d_dirs: Sequence[str] = SYSTEMD_DIRS,
    platforms: Iterable[str] = (),
    probe: bool = True,
    proc: Optional[str] = None,
    this_machine: bool = True,
) -> DoctorReport:
    """Check a node; ``probe`` runs verify's programs for ``platforms`` (needs the real kernel).

    ``host_root`` is where the host's files are seen (probes and version
    checks run only when it is ``/``). ``proc`` is the process file system
    searched for processes that run a deleted interpreter (default: ``/proc``
    under ``host_root``).

    ``this_machine=False`` diagnoses another node from its ``state`` and
    ``host`` alone (a ``status --json`` document taken there): the checks
    that read that node's files, processes or mounts (interpreter files,
    binfmt.d, user namespace, probes) are left out, and nothing of this
    machine is read.
    """
    root = host_root
    doctor = _Doctor(state, host, root, binfmt_d_dirs, this_machine)
    doctor.check_mount()
    if state.mounted:
        doctor.check_kernel()
        for name in state.unreadable:
            reason = state.unreadable_reason(name) or "permission denied"
            denied = reason == "permission denied"
            doctor.add(
                "unreadable-entry",
                f"entry {name!r} cannot be read ({reason})",
                "run as root" if denied else "",
                name,
            )
        enabled = [e for e in state.entries if e.enabled]
        for entry in enabled:
            doctor.check_entry(entry)
        doctor.check_overlaps(enabled)
        if this_machine:
            doctor.check_persistence(enabled)
        doctor.check_credentials(enabled)
        if probe and root == "/" and this_machine:
            doctor.check_versions(enabled)
        if this_machine:
            doctor.check_processes(proc if proc is not None else doctor.path("/proc"))
    for platform in platforms:
        doctor.check_platform(platform, probe and this_machine)
    return DoctorReport(state.path, tuple(doctor.problems))


class _Doctor:
    def __init__(
        self,
        state: State,
        host: Host,
        root: str,
        binfmt_d_dirs: Sequence[str],
        this_machine: bool = True,
    ) -> None:
        self.this_machine = this_machine
        self.state = state
        self.host = host
        self.root = root
        self.binfmt_d_dirs = binfmt_d_dirs
        self.problems: list[Finding] = []

    def add(self, code: str, message: str, fix: str = "", entry: Optional[str] = None) -> None:
        self.problems.append(Finding(code, message=message, fix=fix, entry=entry))

    def path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/")) if self.root != "/" else path

    # -- the instance ---------------------------------------------------------------

    def check_mount(self) -> None:
        path = self.state.path
        if not self.state.mounted:
            if not self.this_machine:
                self.add(
                    "not-mounted",
                    f"binfmt_misc is not mounted at {path}: no foreign binary can run",
                    f"mount -t binfmt_misc binfmt_misc {path} (as root, on that node)",
                )
                return
            if _is_autofs(self.path("/proc/self/mountinfo"), path):
                self.add(
                    "automount-not-triggered",
                    f"{path} is an automount point that did not mount binfmt_misc "
                    "(seen on Amazon Linux 2023 / EKS nodes): registrations made in a "
                    "container land in the container's own mount and the host has none",
                    "on the host: systemctl restart proc-sys-fs-binfmt_misc.mount "
                    f"(or mount -t binfmt_misc binfmt_misc {path}), then register again",
                )
            elif not self.kernel_supports_binfmt_misc():
                self.add(
                    "no-kernel-support",
                    f"this kernel ({self.host.release}) has no binfmt_misc: it is not in "
                    "/proc/filesystems and there is no module to load (tonistiigi/binfmt#162: "
                    "'no such device')",
                    "use a kernel built with CONFIG_BINFMT_MISC (or install its modules)",
                )
            else:
                self.add(
                    "not-mounted",
                    f"binfmt_misc is not mounted at {path}: no foreign binary can run",
                    f"mount -t binfmt_misc binfmt_misc {path} (as root; the kernel needs "
                    "CONFIG_BINFMT_MISC)",
                )
            return
        if not self.state.enabled:
            self.add(
                "disabled",
                "binfmt_misc is switched off globally: no entry is used",
                f"echo 1 > {path}/status",
            )

    def kernel_supports_binfmt_misc(self) -> bool:
        """In /proc/filesystems, or a module the mount would load; unknown counts as yes."""
        filesystems = read_proc_file(self.path("/proc/filesystems"))
        if filesystems is None or "binfmt_misc" in filesystems.split():
            return True
        modules = self.path(f"/lib/modules/{self.host.release}/kernel/fs")
        try:
            return any(name.startswith("binfmt_misc.ko") for name in os.listdir(modules))
        except OSError:
            return False

    def check_credentials(self, enabled: list[Entry]) -> None:
        """Emulated setuid programs (sudo …) need C; say so once, as a trade-off."""
        without = [e.name for e in enabled if qemu.identify(e) and Flags.CREDENTIALS not in e.flags]
        if without:
            self.add(
                "no-credentials",
                f"without the C flag ({', '.join(without[:4])}{' …' if len(without) > 4 else ''}),"
                " setuid programs in emulated containers run without their privileges: sudo "
                "says 'effective uid is not 0' (multiarch/qemu-user-static#17)",
                "only if you need them: binfmt install … --credential --replace (it runs QEMU "
                "with the programs' privileges: a security trade-off)",
            )

    def check_versions(self, enabled: list[Entry]) -> None:
        """Which QEMU each entry runs: /proc does not show it (anchors, pain point 8)."""
        versions: dict[str, list[str]] = {}
        for entry in enabled:
            # Every QEMU, also Debian's wrappers for targets the table does not know.
            if not qemu.runs_qemu(entry) or not os.access(entry.interpreter, os.X_OK):
                continue
            version = _qemu_version(entry.interpreter)
            if version is not None:
                versions.setdefault(version, []).append(entry.name)
        if versions:
            shown = "; ".join(f"{v} ({len(names)} entries)" for v, names in versions.items())
            self.add(
                "qemu-versions",
                f"QEMU versions behind the entries: {shown}"
                + (
                    " — more than one: entries were registered from different installs"
                    if len(versions) > 1
                    else ""
                ),
                "with F, an upgraded QEMU runs only after: binfmt install … --refresh",
            )

    def check_kernel(self) -> None:
        rules = self.host.kernel
        if "F" not in rules.flag_letters:
            self.add(
                "kernel-without-f",
                f"kernel {self.host.release} predates the F flag (4.8): the interpreter must "
                "exist inside every container",
                "upgrade the kernel, or install QEMU inside the images",
            )
        for field in rules.unknown():
            self.add(
                "kernel-rules-unknown",
                f"kernel {self.host.release}: {rules.why_unknown(field)}; what depends on it is "
                "not predicted",
                "nothing to fix on the node; binfmt needs the kernel's patch level "
                "(Debian and Ubuntu give it in uname -v and /proc/version_signature)",
            )
        if not self.this_machine:
            return
        uid_map = read_proc_file(self.path("/proc/self/uid_map"))
        if uid_map is not None and uid_map.split() != ["0", "0", "4294967295"]:
            if rules.userns_instances:
                self.add(
                    "user-namespace",
                    "this runs in a user namespace: since Linux 6.7 a namespace that mounts "
                    "binfmt_misc gets its own instance, which hides the host's for good "
                    "(even after unmounting)",
                    "inspect and register from the host (or the namespace whose instance you mean)",
                )
            else:
                self.add(
                    "user-namespace",
                    "this runs in a user namespace: on this kernel (before 6.7) every namespace "
                    "shares the host's one binfmt_misc, and mounting it here is refused (EPERM)",
                    "register from the host, as real root",
                )

    # -- one entry ----------------------------------------------------------------------

    def check_entry(self, entry: Entry) -> None:
        captured = self.host.captured_by(entry)
        evidence = dict(self.host.evidence)
        if self.host.primary in captured:
            # First: it matters most, and whatever its interpreter, native programs break.
            self.add(
                "hijacks-native",
                f"{entry.name} matches this host's own {', '.join(captured)} binaries: "
                f"every such exec goes to {entry.interpreter} (or fails with ELOOP/ENOENT)",
                f"binfmt uninstall {shlex.quote(entry.name)}",
                entry.name,
            )
        elif captured:
            # A compat target the CPU runs itself (measured or read): emulated instead.
            how = "; ".join(evidence.get(t, "native") for t in captured)
            self.problems.append(
                Finding(
                    "hijacks-native",
                    severity="warning",
                    message=f"{entry.name} matches {', '.join(captured)} programs, which this "
                    f"host runs itself ({how}): every such exec goes to {entry.interpreter} "
                    "instead, emulated",
                    fix=f"binfmt uninstall {shlex.quote(entry.name)}",
                    entry=entry.name,
                )
            )
        unsure = [t for t in self.host.unknown if qemu.coverage(entry, qemu.get(t)) != "none"]
        if unsure:
            self.add(
                "native-unknown",
                f"{entry.name} matches {', '.join(unsure)} programs, and whether this host "
                f"runs them itself is unknown ({'; '.join(evidence.get(t, '') for t in unsure)})",
                f"if the CPU runs them, binfmt uninstall {shlex.quote(entry.name)}",
                entry.name,
            )
        if not self.this_machine:
            return  # its interpreter is a file of that node
        targets = qemu.identify(entry)
        hint = ""
        if targets and qemu.tests_same_bits(entry, targets[0]):
            hint = f"binfmt install {targets[0].name} --persistent --replace"
        facts = inspect_interpreter(entry.interpreter, self.root, elf=bool(targets))
        for finding in interpreter_findings(
            entry, facts, emulator=bool(targets), fix_binary_hint=hint
        ):
            if (
                finding.code == "interpreter-gone"
                and not self.host.kernel.releases_interpreter_on_remove
            ):
                # Writing a new QEMU over the pinned file fails (ETXTBSY) on such kernels.
                finding = attrs.evolve(
                    finding,
                    fix=finding.fix + "; install the new QEMU as a new file (renamed over "
                    "the old path), never by writing into the old one: this kernel keeps "
                    "it busy (ETXTBSY) until reboot",
                )
            self.problems.append(finding)

    # -- between entries ----------------------------------------------------------------

    def check_overlaps(self, enabled: list[Entry]) -> None:
        seen: dict[tuple[object, ...], str] = {}
        for i, newer in enumerate(enabled):
            key = _test_key(newer)
            if key in seen:
                self.add(
                    "duplicate-entry",
                    f"{newer.name} tests exactly what {seen[key]} tests: only {seen[key]} "
                    "(the newer) is ever used",
                    f"remove one of them (binfmt uninstall {newer.name})",
                    newer.name,
                )
                continue
            seen[key] = newer.name
            newer_targets = set(qemu.identify(newer))
            if not newer_targets:
                continue
            for older in enabled[i + 1 :]:
                if _test_key(older) == key:
                    continue
                lost = [t.name for t in qemu.identify(older) if t in newer_targets]
                if lost:
                    self.add(
                        "shadowed-entry",
                        f"{older.name} ({older.interpreter}) is never used for "
                        f"{', '.join(lost)} binaries: the newer {newer.name} "
                        f"({newer.interpreter}) matches them first",
                        f"if {older.name} should win, register it again so it is the newest, "
                        f"or remove {newer.name}",
                        older.name,
                    )

    def check_persistence(self, enabled: list[Entry]) -> None:
        systemd = any(os.path.exists(self.path(p)) for p in SYSTEMD_BINFMT)
        if not systemd or not enabled:
            return
        problems: list[BinfmtError] = []
        lines = effective_entries(read_binfmt_d(self.binfmt_d_dirs, self.root, errors=problems))
        for exc in problems:
            self.add("invalid-config", str(exc), "fix or remove that line (systemd skips it)")
        persisted = {line.entry.name: line.entry for line in lines}
        self.check_boot_order(enabled, lines)
        missing = []
        for entry in enabled:
            saved = persisted.get(entry.name)
            if saved is None or not saved.same_registration(entry):
                missing.append(entry.name)
        for name in missing:
            self.add(
                "not-persisted",
                f"{name} is not in any binfmt.d file: it is lost at reboot, and at the next "
                "systemd-binfmt restart (which also follows every package install or update "
                "that ships a binfmt.d file)",
                f"binfmt export --current --format systemd --dir /etc/binfmt.d {shlex.quote(name)}",
                name,
            )
        if missing:
            self.add(
                "systemd-binfmt-flushes",
                "systemd-binfmt is installed: every start or restart of it first removes ALL "
                "entries (also those of containers, WSL or Rosetta), then registers only its "
                "binfmt.d files; it runs at boot, and again at every package install or update "
                "that ships a binfmt.d file (Debian's dpkg trigger)",
                "persist what you need in /etc/binfmt.d (binfmt export)",
            )

    def check_boot_order(self, enabled: list[Entry], lines: list[Any]) -> None:
        """After a reboot, entries are registered in file order: the last one wins."""
        position = {line.entry.name: i for i, line in enumerate(lines)}
        for i, newer in enumerate(enabled):
            for older in enabled[i + 1 :]:
                if newer.name not in position or older.name not in position:
                    continue
                both = set(qemu.identify(newer)) & set(qemu.identify(older))
                same = _test_key(newer) == _test_key(older)
                if not (both or same) or position[newer.name] > position[older.name]:
                    continue
                self.add(
                    "boot-order-differs",
                    f"{newer.name} wins now, but systemd-binfmt registers "
                    f"{lines[position[older.name]].source} after "
                    f"{lines[position[newer.name]].source}, so {older.name} will win after "
                    "a reboot",
                    f"rename the files so that {newer.name}'s sorts last, or remove one",
                    older.name,
                )

    def check_processes(self, proc: str) -> None:
        """Processes that still run a deleted or replaced interpreter (issue 14)."""
        from .emulated import processes, stale_findings

        try:
            report = processes(self.state, proc=proc, host_root=self.root)
        except OSError:
            return  # no process file system to read there
        self.problems.extend(stale_findings(report))

    # -- platforms ----------------------------------------------------------------------

    def check_platform(self, platform: str, probe: bool) -> None:
        try:
            sig = qemu.lookup(platform)
        except BinfmtError as exc:
            self.add("platform-unavailable", str(exc), "name an OCI platform such as linux/arm64")
            return
        if self.host.runs_natively(sig.name):
            self.add("platform-ok", f"{platform} runs natively ({sig.name})")
            return
        if probe and self.state.path == DEFAULT_PATH and self.root == "/":
            from .verify import verify

            result = verify([sig.name], state=self.state, host=self.host).results[0]
            if result.ok:
                self.add("platform-ok", f"{platform}: {result.status} via {result.entry}")
            else:
                self.add(
                    "platform-unavailable",
                    f"{platform} cannot run: {result.status} ({result.detail})",
                    f"binfmt install {sig.name} --persistent",
                )
            return
        entries = [e for e in self.state.entries if e.enabled and sig in qemu.identify(e)]
        if self.state.enabled and entries:
            self.add("platform-ok", f"{platform}: emulated by {entries[0].name} (not probed)")
        else:
            self.add(
                "platform-unavailable",
                f"{platform} cannot run: not native, and no enabled entry matches {sig.name} "
                "binaries",
                f"binfmt install {sig.name} --persistent",
            )


def _qemu_version(interpreter: str) -> Optional[str]:
    """``qemu-aarch64 version 7.2.0 (Debian …)`` → ``7.2.0 (Debian …)``; None if it will not say."""
    import subprocess

    try:
        # Debian's qemu-binfmt/*-binfmt-P links refuse to run outside binfmt_misc;
        # the QEMU they point at answers.
        done = subprocess.run(
            [os.path.realpath(interpreter), "--version"],
            capture_output=True,
            text=True,
            timeout=5,
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    first = done.stdout.splitlines()[0] if done.stdout else ""
    marker = " version "
    return first.split(marker, 1)[1].strip() if marker in first else None


def _test_key(entry: Entry) -> tuple[object, ...]:
    """What an entry compares, normalised: two entries with the same key match the same files."""
    if entry.type is EntryType.EXTENSION:
        return ("E", entry.extension)
    mask = entry.mask if entry.mask is not None else b"\xff" * entry.size
    masked = bytes(a & b for a, b in zip(entry.magic, mask))
    return ("M", entry.offset, masked, mask)


def _is_autofs(mountinfo: str, path: str) -> bool:
    """Whether ``path`` is an autofs mount point in this mount namespace."""
    text = read_proc_file(mountinfo)
    if not text:
        return False
    for line in text.splitlines():
        fields = line.split(" - ", 1)
        if len(fields) != 2:
            continue
        left, right = fields[0].split(), fields[1].split()
        if len(left) > 4 and right and left[4] == path and right[0] == "autofs":
            return True
    return False

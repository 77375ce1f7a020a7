"""The machine we run on: its kernel and what it executes without emulation.

QEMU's script guesses by "family" (an x86_64 host never registers i386, an
aarch64 host never registers arm). The real answer is per kernel and per
CPU: i386 runs on x86_64 only with IA32 emulation (``CONFIG_IA32_EMULATION``,
and not switched off with ``ia32_emulation=0`` since 6.7); AArch32 runs on
arm64 only if the kernel has ``CONFIG_COMPAT`` and the CPU implements
32-bit EL0, which recent cores (Neoverse V2, Cortex-X2 and later, Apple
silicon, Fujitsu A64FX) do not. Nothing the kernel publishes says which:
``/sys/devices/system/cpu/aarch32_el0`` exists only on asymmetric systems
booted with ``allow_mismatched_32bit_el0``, and ``/proc/cpuinfo`` does not
list AArch32. So :meth:`Host.detect` *measures* it (:func:`measure_native`):
it runs a tiny 32-bit program (:func:`binfmt.probes.held_probe`) and looks
at ``/proc/<pid>/exe`` while the program waits, which is the program itself
only when the kernel's own ELF loader ran it (when a binfmt_misc entry takes
a program, its interpreter is the process's executable). The program carries
a mark in its ``e_ident`` padding that no entry of QEMU's table matches, so
even a registered ``qemu-arm`` (the state this check must see through) does
not take it. Where even that cannot tell (an entry matching every ELF file,
no executable temporary directory, no ``/proc``), :attr:`Host.unknown` says
so, with the reason in :attr:`Host.evidence`; callers never treat an
unknown target as foreign or native without saying so.

The other direction is read from ``uname -m``: ``armv7l`` (and ``i686``) are
32-bit kernels, which run nothing 64-bit; ``armv8l``/``armv8b`` are what an
arm64 kernel answers to a process in the 32-bit personality (``linux32``),
so the kernel is arm64 (``aarch64``/``aarch64_be``) and still runs its 64-bit
programs. A big-endian kernel runs programs of its own byte order only: an
``aarch64_be`` host may run ``armeb`` (BE8) programs itself, never ``arm``.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Callable, Optional, Union

import attrs

from . import qemu
from .entry import Entry

if TYPE_CHECKING:  # loaded on first use: `status` needs no kernel rules, and runs no probe
    from .kernel import KernelRules

__all__ = [
    "Host",
    "KernelConfig",
    "Measure",
    "measure_native",
    "primary_target",
    "read_proc_file",
]

#: How a compat target's support was measured: ``(verdict, evidence)``, the
#: verdict ``True``/``False``, or ``None`` when the measurement could not tell.
Measure = Callable[[str], tuple[Optional[bool], str]]

# uname -m → the QEMU target of the kernel's own binaries.
_MACHINE_TARGET = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "aarch64_be": "aarch64_be",
    "i386": "i386",
    "i486": "i386",
    "i586": "i386",
    "i686": "i386",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "ppc": "ppc",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "riscv32": "riscv32",
    "loongarch64": "loongarch64",
    "sparc64": "sparc64",
    "sparc": "sparc",
    "alpha": "alpha",
    "m68k": "m68k",
    "parisc": "hppa",
    "sh4": "sh4",
    "sh4a": "sh4",
    "xtensa": "xtensa",
    "or1k": "or1k",
    "microblaze": "microblaze",
    "hexagon": "hexagon",
}

# A QEMU target → the ``uname -m`` of a machine whose kernel runs it (where it differs).
_TARGET_MACHINE = {"arm": "armv7l", "armeb": "armv7b", "i386": "i686", "hppa": "parisc"}

# Compat modes: primary target → (targets it may also run, the kernel option).
_COMPAT = {
    "x86_64": (("i386", "i486"), "CONFIG_IA32_EMULATION"),
    "aarch64": (("arm",), "CONFIG_COMPAT"),
    "aarch64_be": (("armeb",), "CONFIG_COMPAT"),
    "ppc64": (("ppc",), "CONFIG_COMPAT"),
    "mips64": (("mips", "mipsn32"), "CONFIG_MIPS32_O32"),
    "mips64el": (("mipsel", "mipsn32el"), "CONFIG_MIPS32_O32"),
    "sparc64": (("sparc", "sparc32plus"), "CONFIG_COMPAT"),
    "riscv64": (("riscv32",), "CONFIG_COMPAT"),
}


# What an arm64 kernel answers to uname in the 32-bit personality (COMPAT_UTS_MACHINE).
_COMPAT_UTS = {"armv8l": "aarch64", "armv8b": "aarch64_be"}


def primary_target(machine: str, byteorder: str = sys.byteorder) -> Optional[str]:
    """The QEMU target of the kernel's own binaries for ``uname -m``, or ``None``.

    ``armv7l`` → ``arm`` (a 32-bit kernel); ``armv8l`` → ``aarch64``: only an
    arm64 kernel says ``armv8l``, to a process in the 32-bit personality.
    """
    if machine in _COMPAT_UTS:
        return _COMPAT_UTS[machine]
    if machine.startswith("armv") or machine == "arm":
        return "armeb" if machine.endswith("b") else "arm"
    if machine in ("mips", "mips64"):
        return machine + ("el" if byteorder == "little" else "")
    return _MACHINE_TARGET.get(machine)


@attrs.frozen
class Host:
    """A machine's kernel and the QEMU targets it runs natively (primary first)."""

    machine: str
    release: str
    #: QEMU targets whose binaries the kernel runs itself.
    native: tuple[str, ...]
    #: Compat targets whose support could not be determined: neither native nor
    #: foreign (install registers them with a warning; verify's probe settles them).
    unknown: tuple[str, ...] = ()
    #: How each compat decision was reached, for humans (``("i386", "CONFIG_IA32_EMULATION=y")``).
    evidence: tuple[tuple[str, str], ...] = ()
    #: ``uname -v`` (and Ubuntu's ``/proc/version_signature``), where distributions
    #: keep the real patch level that decides the stable-backport rules.
    version: str = ""

    @property
    def primary(self) -> Optional[str]:
        """The QEMU target of the kernel's own binaries."""
        return self.native[0] if self.native else None

    @property
    def kernel(self) -> KernelRules:
        """The rules of this host's kernel (release, and the patch level ``version`` gives)."""
        from .kernel import KernelRules

        return KernelRules.for_release_or_default(self.release, self.version or None)

    def runs_natively(self, target: str) -> bool:
        """Whether the kernel runs ``target``'s binaries itself."""
        return target in self.native

    def captured_by(self, entry: Entry) -> list[str]:
        """The native targets some of whose programs ``entry`` matches: they would go to it.

        Judged by :func:`binfmt.qemu.coverage` (static or PIE programs). An entry
        that captures the host's own binaries sends every such exec to its
        interpreter, which loops (ELOOP) if the interpreter is one of them.
        """
        return [t for t in self.native if qemu.coverage(entry, qemu.get(t)) != "none"]

    @classmethod
    def for_platform(
        cls,
        platform: str,
        *,
        release: str = "",
        version: str = "",
        aarch32: Optional[bool] = None,
        ia32: Optional[bool] = True,
    ) -> Host:
        """Another machine, described by its OCI platform (``linux/arm64``) or QEMU target.

        The capabilities that differ between machines of one platform are
        options: ``aarch32`` (an arm64 CPU and kernel that run 32-bit arm
        programs; default ``None``, unknown, so they count as foreign: recent
        cores such as Neoverse V2 and Apple silicon cannot) and ``ia32`` (an
        x86_64 kernel with IA32 emulation; default ``True``, as every
        distribution kernel has it). Other compat modes are unknown.
        ``release`` and ``version`` are that machine's ``uname -r`` and
        ``uname -v``, for its kernel rules (:attr:`kernel`; without them, the
        newest rules). Raises :class:`~binfmt.errors.UnknownTarget` for an
        unknown platform.
        """
        primary = qemu.lookup(platform).name
        native = [primary]
        unknown: list[str] = []
        evidence: list[tuple[str, str]] = []
        targets, _ = _COMPAT.get(primary, ((), ""))
        choice = {"x86_64": ("ia32", ia32), "aarch64": ("aarch32", aarch32)}.get(primary)
        for target in targets:
            if choice is None:
                unknown.append(target)
                evidence.append((target, "unknown for a platform alone"))
            elif choice[1] is None:
                unknown.append(target)
                evidence.append((target, f"unknown: the {choice[0]} option was not given"))
            else:
                evidence.append((target, f"{choice[0]}={'yes' if choice[1] else 'no'}, as given"))
                if choice[1]:
                    native.append(target)
        machine = _TARGET_MACHINE.get(primary, primary)
        return cls(machine, release, tuple(native), tuple(unknown), tuple(evidence), version)

    @classmethod
    def from_document(cls, doc: Mapping[str, object]) -> Host:
        """The host of a ``status --json`` document (its ``host`` block), as it was measured.

        Raises :class:`~binfmt.errors.InvalidValue` naming what is missing or wrong.
        """
        from .errors import InvalidValue

        def text(key: str, default: Optional[str] = None) -> str:
            value = doc.get(key, default)
            if not isinstance(value, str):
                raise InvalidValue(f"host {key}", value, "must be a string")
            return value

        def targets(key: str) -> tuple[str, ...]:
            value = doc.get(key, [])
            if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                raise InvalidValue(f"host {key}", value, "must be a list of QEMU target names")
            for target in value:
                qemu.get(target)  # UnknownTarget for a name this library does not know
            return tuple(value)

        evidence = doc.get("evidence", {})
        if not isinstance(evidence, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in evidence.items()
        ):
            raise InvalidValue("host evidence", evidence, "must map target names to text")
        return cls(
            text("machine"),
            text("kernel", ""),
            targets("native"),
            targets("unknown"),
            tuple(evidence.items()),
            text("version", ""),
        )

    @classmethod
    def detect(cls, host_root: str = "/", *, measure: bool = True) -> Host:
        """This machine: the running kernel, with its files read under ``host_root``.

        ``host_root`` is where this process sees the host's ``/proc``, ``/sys``
        and ``/boot`` (``/proc/1/root`` from a pod with ``hostPID``, or a fake
        tree in tests). Compat targets the kernel's files leave open (AArch32
        on arm64 always; i386 on x86_64 without a kernel config) are measured
        with :func:`measure_native`, here, on this kernel and CPU (the same
        whatever ``host_root`` is); ``measure=False`` leaves them unknown.
        """
        uname = os.uname()
        signature = read_proc_file(os.path.join(host_root, "proc/version_signature")) or ""
        return cls.from_facts(
            uname.machine,
            uname.release,
            config=_kernel_config(host_root, uname.release),
            cmdline=read_proc_file(os.path.join(host_root, "proc/cmdline")) or "",
            aarch32_el0=read_proc_file(
                os.path.join(host_root, "sys/devices/system/cpu/aarch32_el0")
            ),
            version="\n".join(v for v in (uname.version, signature.strip()) if v),
            measure=measure_native if measure else None,
        )

    @classmethod
    def from_facts(
        cls,
        machine: str,
        release: str,
        *,
        config: Union[Mapping[str, str], KernelConfig, None] = None,
        cmdline: str = "",
        aarch32_el0: Optional[str] = None,
        byteorder: str = sys.byteorder,
        version: str = "",
        measure: Optional[Measure] = None,
    ) -> Host:
        """Decide from what the kernel reports; ``config`` is the parsed kernel config.

        ``version`` is ``uname -v`` (and ``/proc/version_signature``), for the patch level.
        ``measure`` (:func:`measure_native` in :meth:`detect`) is asked about a
        compat target that has a held probe whenever the kernel's own files do
        not settle it; its verdict wins over ``aarch32_el0``.
        """
        primary = primary_target(machine, byteorder)
        if primary is None:
            return cls(machine, release, (), version=version)
        native = [primary]
        unknown: list[str] = []
        evidence: list[tuple[str, str]] = []
        if machine in _COMPAT_UTS:
            evidence.append(
                (primary, f"uname -m says {machine}: an arm64 kernel, to a 32-bit personality")
            )
        targets, option = _COMPAT.get(primary, ((), ""))
        for target in targets:
            verdict, why = _compat_verdict(
                primary, target, option, config, cmdline, aarch32_el0, measure
            )
            evidence.append((target, why))
            if verdict is None:
                unknown.append(target)
            elif verdict:
                native.append(target)
        return cls(machine, release, tuple(native), tuple(unknown), tuple(evidence), version)


def _compat_verdict(
    primary: str,
    target: str,
    option: str,
    config: Union[Mapping[str, str], KernelConfig, None],
    cmdline: str,
    aarch32_el0: Optional[str],
    measure: Optional[Measure],
) -> tuple[Optional[bool], str]:
    if primary == "x86_64" and "ia32_emulation=0" in cmdline.split():
        return False, "ia32_emulation=0 on the kernel command line"
    if config is not None:
        value = config.get(option, "n")
        if value != "y":
            return False, f"{option} is not set"
        if primary == "x86_64":
            off = config.get("CONFIG_IA32_EMULATION_DEFAULT_DISABLED") == "y"
            if off and "ia32_emulation=1" not in cmdline.split():
                return False, "CONFIG_IA32_EMULATION_DEFAULT_DISABLED=y"
            return True, f"{option}=y"
    arm64 = primary in ("aarch64", "aarch64_be")
    if not arm64 and config is not None:
        return True, f"{option}=y"
    # The kernel's files leave it open: the CPU decides (arm64), or there is no config.
    reasons = []
    from .probes import HELD_PROBE_TARGETS

    if measure is not None and target in HELD_PROBE_TARGETS:
        verdict, why = measure(target)
        if verdict is not None:
            return verdict, (f"{option}=y; " if config is not None else "") + why
        reasons.append(why)
    if arm64 and aarch32_el0 is not None:
        # Only on kernels booted with allow_mismatched_32bit_el0: the CPUs that can.
        can = aarch32_el0.strip() != ""
        return can, f"aarch32_el0 lists {aarch32_el0.strip() or 'no CPU'}"
    if measure is None:
        reasons.append("not measured")
    if config is not None:
        reasons.insert(0, f"{option}=y, but whether the CPU has 32-bit EL0 is unknown")
    else:
        reasons.insert(0, "no kernel config to read")
    return None, "; ".join(reasons)


def read_proc_file(path: str) -> Optional[str]:
    """The text of a small kernel-provided file (/proc, /sys), or None if unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


#: Where :func:`measure_native` tries to write its program, in order: the
#: temporary directory, then others that are often mounted without noexec.
_PROBE_DIRS = ("/dev/shm", "/run", "/var/tmp", "/tmp")


def measure_native(
    target: str, *, timeout: float = 10.0, dirs: Optional[Sequence[str]] = None
) -> tuple[Optional[bool], str]:
    """Whether this kernel and CPU run ``target``'s programs themselves: measured.

    Runs :func:`~binfmt.probes.held_probe` for ``target`` and, once the
    program has written its byte (it runs: the ``execve`` is over) and while
    it waits on its standard input, compares ``/proc/<pid>/exe`` with the
    program's file: the same file means the kernel's ELF loader ran it (a binfmt_misc
    entry would have made its interpreter the executable). Then it lets the
    program exit and checks its status. Returns ``(True, why)`` when it ran
    natively, ``(False, why)`` when the kernel refused it (``ENOEXEC``) or it
    did not run to its exit, and ``(None, why)`` when this could not be told.
    The program goes into a fresh directory under the first of ``dirs``
    (default: the temporary directory, ``/dev/shm``, ``/run``, ``/var/tmp``,
    ``/tmp``) where it can be written and executed; it is always removed.
    """
    import shutil
    import tempfile

    from .probes import HELD_PROBE_TARGETS, held_probe

    if target not in HELD_PROBE_TARGETS:
        return None, f"there is no held probe for {target}"
    data = held_probe(target)
    where = list(dict.fromkeys([tempfile.gettempdir(), *_PROBE_DIRS] if dirs is None else dirs))
    tried: list[str] = []
    for base in where:
        try:
            directory = tempfile.mkdtemp(prefix=".binfmt-host-", dir=base)
        except OSError:
            continue
        try:
            path = os.path.join(directory, f"probe-{target}")
            with open(path, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), 0o755)
            result = _run_held(path, target, timeout)
        except OSError as exc:
            result = None, f"cannot write a probe in {base}: {os.strerror(exc.errno or 0)}"
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        if result[0] is not None or not result[1].startswith("execve: EACCES"):
            return result
        tried.append(base)
    where_text = ", ".join(tried) or ", ".join(where)
    return None, f"no directory to run a probe in (tried {where_text}: noexec or not writable)"


def _run_held(path: str, target: str, timeout: float) -> tuple[Optional[bool], str]:
    """Start the held probe at ``path``, see who runs it once it runs, let it exit."""
    import contextlib
    import select
    import signal
    import subprocess

    from .probes import PROBE_STATUS

    try:
        proc = subprocess.Popen(
            [path],
            executable=path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={},
            cwd="/",
        )
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        if exc.errno == errno.ENOEXEC:
            return False, f"measured: the kernel refuses {target} programs (ENOEXEC)"
        return None, f"execve: {name}"
    assert proc.stdin is not None and proc.stdout is not None
    try:
        # The byte it writes means the program runs: the execve is over (when
        # Popen returns, the kernel may not have switched /proc/PID/exe yet).
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            return None, f"the {target} probe did not start running in {timeout:g} s"
        if not os.read(proc.stdout.fileno(), 1):
            return None, f"the {target} probe ended without running (exit {proc.wait(timeout)})"
        try:
            own = os.stat(path)
            exe = os.stat(f"/proc/{proc.pid}/exe")
        except OSError as exc:
            return None, f"cannot read /proc/{proc.pid}/exe: {os.strerror(exc.errno or 0)}"
        if (exe.st_dev, exe.st_ino) != (own.st_dev, own.st_ino):
            with contextlib.suppress(OSError):
                return None, (
                    f"a binfmt_misc entry took the {target} probe (its interpreter "
                    f"{os.readlink(f'/proc/{proc.pid}/exe')} ran it), despite the mark "
                    "that QEMU's entries do not match"
                )
            return None, f"a binfmt_misc entry took the {target} probe"
        proc.stdin.close()
        try:
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None, f"the {target} probe ran natively but did not exit in {timeout:g} s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
    if status == PROBE_STATUS:
        return True, f"measured: the {target} probe ran natively"
    if status < 0:
        what = signal.Signals(-status).name if -status in signal.valid_signals() else status
        return False, f"measured: the kernel loaded the {target} probe, but it was killed by {what}"
    return False, f"measured: the kernel loaded the {target} probe, but it exited {status}"


def _kernel_config(root: str, release: str) -> Optional[KernelConfig]:
    """The running kernel's config from /boot/config-RELEASE or /proc/config.gz."""
    text = read_proc_file(os.path.join(root, "boot", f"config-{release}"))
    if text is None:
        import zlib

        try:
            with open(os.path.join(root, "proc/config.gz"), "rb") as f:
                text = zlib.decompress(f.read(), 16 + zlib.MAX_WBITS).decode("utf-8", "replace")
        except (OSError, zlib.error):
            return None
    return KernelConfig(text)


class KernelConfig:
    """A kernel config (``CONFIG_X=value`` lines), read option by option.

    Host detection needs two or three of its ~8,000 options; looking each up
    costs less than parsing them all (a measurable part of every start).
    """

    def __init__(self, text: str) -> None:
        self._text = "\n" + text  # every line, the first too, starts after a newline

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of option ``key`` (``"y"``, ``"m"``, ``'"text"'``), or ``default``."""
        start = self._text.find(f"\n{key}=")
        if start < 0:
            return default
        start += len(key) + 2
        end = self._text.find("\n", start)
        return self._text[start : end if end >= 0 else None]

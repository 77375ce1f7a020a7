"""The machine we run on: its kernel and what it executes without emulation.

QEMU's script guesses by "family" (an x86_64 host never registers i386, an
aarch64 host never registers arm). The real answer is per kernel and per
CPU: i386 runs on x86_64 only with IA32 emulation (``CONFIG_IA32_EMULATION``,
and not switched off with ``ia32_emulation=0`` since 6.7); AArch32 runs on
arm64 only if the kernel has ``CONFIG_COMPAT`` and the CPU implements
32-bit EL0, which recent cores (Neoverse V2, Cortex-X2 and later, Apple
silicon) do not. :meth:`Host.detect` reads what the kernel tells about this;
where it cannot know, :attr:`Host.unknown` says so and callers treat the
target as foreign (registering an emulator for it is safe; skipping one that
was needed is not).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Optional, Union

import attrs

from . import qemu
from .entry import Entry

if TYPE_CHECKING:  # loaded on first use: `status` needs no kernel rules
    from .kernel import KernelRules

__all__ = ["Host", "KernelConfig", "primary_target", "read_proc_file"]

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
    "ppc64": (("ppc",), "CONFIG_COMPAT"),
    "mips64": (("mips", "mipsn32"), "CONFIG_MIPS32_O32"),
    "mips64el": (("mipsel", "mipsn32el"), "CONFIG_MIPS32_O32"),
    "sparc64": (("sparc", "sparc32plus"), "CONFIG_COMPAT"),
    "riscv64": (("riscv32",), "CONFIG_COMPAT"),
}


def primary_target(machine: str, byteorder: str = sys.byteorder) -> Optional[str]:
    """The QEMU target of ``uname -m``'s binaries (``armv7l`` → ``arm``), or ``None``."""
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
    #: Compat targets whose support could not be determined (treated as foreign).
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
            if choice is None or choice[1] is None:
                unknown.append(target)
                evidence.append((target, "not given"))
            else:
                evidence.append((target, f"given: {choice[0]}={'yes' if choice[1] else 'no'}"))
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

        return cls(
            text("machine"),
            text("kernel", ""),
            targets("native"),
            targets("unknown"),
            version=text("version", ""),
        )

    @classmethod
    def detect(cls, host_root: str = "/") -> Host:
        """This machine: the running kernel, with its files read under ``host_root``.

        ``host_root`` is where this process sees the host's ``/proc``, ``/sys``
        and ``/boot`` (``/proc/1/root`` from a pod with ``hostPID``, or a fake
        tree in tests).
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
    ) -> Host:
        """Decide from what the kernel reports; ``config`` is the parsed kernel config.

        ``version`` is ``uname -v`` (and ``/proc/version_signature``), for the patch level.
        """
        primary = primary_target(machine, byteorder)
        if primary is None:
            return cls(machine, release, (), version=version)
        native = [primary]
        unknown: list[str] = []
        evidence: list[tuple[str, str]] = []
        targets, option = _COMPAT.get(primary, ((), ""))
        for target in targets:
            verdict, why = _compat_verdict(primary, option, config, cmdline, aarch32_el0)
            evidence.append((target, why))
            if verdict is None:
                unknown.append(target)
            elif verdict:
                native.append(target)
        return cls(machine, release, tuple(native), tuple(unknown), tuple(evidence), version)


def _compat_verdict(
    primary: str,
    option: str,
    config: Union[Mapping[str, str], KernelConfig, None],
    cmdline: str,
    aarch32_el0: Optional[str],
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
    if primary == "aarch64":
        # Present on kernels that support mismatched 32-bit EL0: the CPUs that can.
        if aarch32_el0 is not None:
            can = aarch32_el0.strip() != ""
            return can, f"aarch32_el0 lists {aarch32_el0.strip() or 'no CPU'}"
        if config is not None:
            return None, f"{option}=y, but whether the CPU has 32-bit EL0 is unknown"
        return None, "no kernel config to read, and no aarch32_el0 file"
    if config is None:
        if primary == "x86_64":
            # Every distro kernel enables IA32 emulation; say it is an assumption.
            return True, "assumed (no kernel config to read)"
        return None, "no kernel config to read"
    return True, f"{option}=y"


def read_proc_file(path: str) -> Optional[str]:
    """The text of a small kernel-provided file (/proc, /sys), or None if unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


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

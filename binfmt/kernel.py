"""The binfmt_misc rules that differ between kernel versions.

Each difference that was measured is one field of :class:`KernelRules`, so a
distro kernel that carries a stable backport can be described exactly
(``attrs.evolve(rules, rejects_flag_delimiter=True)``) instead of being
guessed from its version number. :meth:`KernelRules.for_release` picks the
rules for a ``uname -r`` string and, optionally, the ``uname -v`` text
(or ``/proc/version``, or Ubuntu's ``/proc/version_signature``), which is
where Debian and Ubuntu keep the real patch level;
:meth:`KernelRules.running` reads all of them for the running kernel.

Two kinds of rule:

- **mainline rules** follow the ``major.minor`` version: the change went
  into one release and was never backported (``P`` setting ``AT_FLAGS``,
  one instance per user namespace …);
- **stable-backport rules** (:data:`BACKPORTS`) reached older stable lines
  at some patch level. Each names, per stable line, the last release
  measured without the change and the first measured with it. Where the
  patch level is unknown (a release such as ``5.10.0-32-cloud-amd64`` with
  no ``uname -v``, or a vendor kernel that backports without saying so) or
  falls between two measurements, the rule is ``None``: *unknown*, and a
  caller must say so instead of guessing.

The measurements: Debian's cloud kernels booted under QEMU by the kernel
matrix layer (``tests/vm``, fixtures in ``tests/data/kernels``), and the
CI machine's own 6.18.44 (``docs/kernel.rst`` has the table).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any, Optional

import attrs

__all__ = ["BACKPORTS", "Backport", "KernelRules", "parse_release", "patch_level"]

_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")
# "6.7", "6.7.0", "6.7.0-rc3": a mainline .0 whose patch level is real.
_MAINLINE_ZERO = re.compile(r"^\d+\.\d+(?:\.0)?(?:-rc\d+\S*)?$")
# Debian's uname -v / /proc/version: "#1 SMP Debian 5.10.223-1 (2024-08-10)".
_DEBIAN = re.compile(r"\bDebian (\d+)\.(\d+)\.(\d+)")
# Ubuntu's /proc/version_signature: "Ubuntu 5.15.0-91.101-generic 5.15.131".
_UBUNTU = re.compile(r"\bUbuntu \S+ (\d+)\.(\d+)\.(\d+)")

Version = tuple[int, int, int]


def parse_release(release: str) -> tuple[int, int, int]:
    """``"6.18.44-fc-v657"`` → ``(6, 18, 44)``; raises ``ValueError`` if unreadable."""
    m = _RELEASE.match(release)
    if not m:
        raise ValueError(f"invalid kernel release {release!r}: expected MAJOR.MINOR[.PATCH]")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def patch_level(release: str, version: Optional[str] = None) -> Optional[Version]:
    """The real ``(major, minor, patch)`` of a kernel, or ``None`` if no source gives it.

    Sources, in order: Debian's ``uname -v`` (``Debian 6.1.192-3``) or
    Ubuntu's version signature (``… 5.15.131``) in ``version``, when their
    ``major.minor`` agree with the release; else the release itself when
    its patch is non-zero or it is a plain mainline ``X.Y[.0][-rcN]``. A
    distro release ending in ``.0-N…`` (Debian before 13, Ubuntu, RHEL)
    counts its own ABI, not upstream patches: ``None``.
    """
    base = parse_release(release)
    for pattern in (_DEBIAN, _UBUNTU):
        m = pattern.search(version or "")
        if m:
            found = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
            if found[:2] == base[:2]:
                return found
    if base[2] or _MAINLINE_ZERO.match(release):
        return base
    return None


@attrs.frozen
class Backport:
    """A change that reached stable lines at different patch levels, as measured."""

    #: The :class:`KernelRules` field it decides.
    field: str
    #: The first mainline ``(major, minor)`` that has it.
    mainline: tuple[int, int]
    #: Stable line ``(major, minor)`` → (last patch measured *without* it,
    #: first patch measured *with* it); ``None`` where none was measured.
    measured: Mapping[tuple[int, int], tuple[Optional[int], Optional[int]]]
    #: Lines older than this were end-of-life before the change: never have it.
    oldest_line: tuple[int, int]
    #: The upstream change, for humans.
    change: str

    def decide(self, version: Version, patch_known: bool) -> Optional[bool]:
        """``True``/``False`` where measured or implied; ``None`` where unknown."""
        line = version[:2]
        if line >= self.mainline:
            return True
        if line < self.oldest_line:
            return False
        if not patch_known:
            return None
        if version[2] == 0:
            return False  # the line's own release: stable backports come after it
        without, with_ = self.measured.get(line, (None, None))
        if with_ is not None and version[2] >= with_:
            return True
        if without is not None and version[2] <= without:
            return False
        return None


#: The stable-backport rules with the Debian builds measured (see docs/kernel.rst).
BACKPORTS: tuple[Backport, ...] = (
    Backport(
        "rejects_flag_delimiter",
        mainline=(7, 3),
        # 5.10.218 and .223 accept; 6.1.170 and .176 accept, 6.1.187, .190,
        # .192 refuse; 6.12.107 and .117 refuse; 6.18.44 (CI host) refuses.
        measured={
            (5, 10): (223, None),
            (6, 1): (176, 187),
            (6, 12): (None, 107),
            (6, 18): (None, 44),
        },
        oldest_line=(5, 10),
        change="binfmt_misc: refuse flag letters as the delimiter (vfs-7.3, stable)",
    ),
    Backport(
        "opens_interpreter_first",
        mainline=(5, 12),
        # 5.10.218 and .223: a taken name with a missing F interpreter → ENOENT.
        measured={(5, 10): (None, 218)},
        oldest_line=(4, 4),
        change="e7850f4d844e binfmt_misc: fix possible deadlock in bm_register_write",
    ),
    Backport(
        "umount_removes_entries",
        mainline=(6, 7),
        # 5.10.218 and .223 keep the entries; 6.1.170 … .192 remove them.
        measured={(5, 10): (223, None), (6, 1): (None, 170)},
        oldest_line=(5, 10),
        change="1c5976ef0f7a binfmt_misc: cleanup on filesystem umount",
    ),
    Backport(
        "releases_interpreter_on_remove",
        mainline=(7, 3),
        # Writing an F interpreter after its entry was removed: ETXTBSY on
        # 5.10.218/.223 and 6.1.170/.176; writable on 6.1.187 … .192,
        # 6.12.107/.117 and 6.18.44.
        measured={
            (5, 10): (223, None),
            (6, 1): (176, 187),
            (6, 12): (None, 107),
            (6, 18): (None, 44),
        },
        oldest_line=(5, 10),
        change="binfmt_misc: restore write access when removing an entry (vfs-7.3, stable)",
    ),
    Backport(
        "releases_interpreter_on_failed_register",
        mainline=(6, 19),
        # After an F registration refused with EEXIST: ETXTBSY on 5.10.218/.223;
        # writable on 6.1.170 … .192, 6.12.107/.117 and 6.18.44.
        measured={
            (5, 10): (223, None),
            (6, 1): (None, 170),
            (6, 12): (None, 107),
            (6, 18): (None, 44),
        },
        oldest_line=(5, 10),
        change="90f601b497d7 binfmt_misc: restore write access before closing files",
    ),
)


@attrs.frozen
class KernelRules:
    """What one kernel accepts, prints and does, as the model needs it.

    A field that is ``None`` is *unknown* for this kernel: it depends on a
    stable backport and the kernel's patch level is not known, or lies
    between two measurements (:data:`BACKPORTS`).
    """

    #: ``(major, minor, patch)`` the rules came from (patch 0 when unknown),
    #: or ``None`` if hand-made.
    version: Optional[tuple[int, int, int]] = None
    #: Whether ``version``'s patch level is the real one (see :func:`patch_level`).
    patch_known: bool = True
    #: Longest register write accepted (1920 since 3.18, 256 before).
    max_register_length: int = 1920
    #: ``BINPRM_BUF_SIZE``: the bytes of a file that magic can see (256 since 5.1).
    buffer_size: int = 256
    #: Flag letters accepted after the interpreter (``F`` since 4.8; ``T L D`` in 7.3).
    flag_letters: str = "POCF"
    #: Refuse a flag letter as the delimiter (7.3; stable 6.1.187, 6.12.107, 6.18.44).
    rejects_flag_delimiter: Optional[bool] = True
    #: Offset parsed by ``kstrtoint`` (sign, one ``\n``, no wrap; since 4.18).
    strict_offset: bool = True
    #: Register errors come back as EEXIST/ENAMETOOLONG/ENOENT… (4.8+), not all EINVAL.
    precise_errors: bool = True
    #: With ``F``, the interpreter is opened before the name lookup (5.12; stable 5.10.218).
    opens_interpreter_first: Optional[bool] = True
    #: At most this many interpreter rewrites; one more gives ELOOP.
    max_rewrites: int = 5
    #: An O/C entry whose interpreter needs a further rewrite fails ENOEXEC (5.8+).
    open_binary_no_rewrite: bool = True
    #: ``P`` also sets AT_FLAGS_PRESERVE_ARGV0 in the auxiliary vector (5.12+; not 5.10.223).
    preserve_argv0_auxv: bool = True
    #: Each user namespace may mount its own instance (6.7+; EPERM on 5.10 and 6.1).
    userns_instances: bool = True
    #: ``C`` or ``L`` without ``F`` need an absolute interpreter path (7.3+).
    requires_absolute_credentials_interpreter: bool = False
    #: Unmounting the last mount removes every entry (6.7; stable 6.1.170).
    #: Before, entries survive umount and reappear on the next mount.
    umount_removes_entries: Optional[bool] = True
    #: The next mount after that starts enabled (6.7+, a new instance); the
    #: 6.1 backport keeps a ``disabled`` global switch across umount.
    umount_resets_enabled: bool = True
    #: An ``F`` interpreter may be written again once its entry is removed
    #: (7.3; stable 6.1.187, 6.12.107, 6.18.44); before, ETXTBSY until the
    #: inode is evicted (in practice: until reboot).
    releases_interpreter_on_remove: Optional[bool] = True
    #: … and after an ``F`` registration that failed (EEXIST …) (6.19; stable
    #: 6.1.170, 6.12.107, 6.18.44; not 5.10.223).
    releases_interpreter_on_failed_register: Optional[bool] = True

    @classmethod
    def for_release(cls, release: str, version: Optional[str] = None) -> KernelRules:
        """The rules for a ``uname -r`` release and, optionally, its ``uname -v`` text.

        ``version`` may be ``uname -v``, ``/proc/version`` or Ubuntu's
        ``/proc/version_signature`` (or several joined): whichever gives
        the real patch level (:func:`patch_level`). Without one, the
        stable-backport rules of a distro release such as
        ``6.1.0-57-cloud-amd64`` are ``None`` (unknown). Raises
        ``ValueError`` for an unreadable release.
        """
        base = parse_release(release)
        real = patch_level(release, version)
        if real is None:
            return cls.for_version(base, patch_known=False)
        return cls.for_version(real)

    @classmethod
    def for_release_or_default(cls, release: str, version: Optional[str] = None) -> KernelRules:
        """:meth:`for_release`, or the newest kernel's rules if the release is unreadable."""
        try:
            return cls.for_release(release, version)
        except ValueError:
            return cls()

    @classmethod
    def for_version(cls, version: tuple[int, int, int], patch_known: bool = True) -> KernelRules:
        """The rules for ``(major, minor, patch)`` (mainline, plus the measured backports)."""
        v = version[:2]
        flags = "P O C"
        if v >= (4, 8):
            flags += " F"
        if v >= (7, 3):
            flags += " T L D"
        # Any: the fields differ in name only; each decides an Optional[bool].
        backported: dict[str, Any] = {bp.field: bp.decide(version, patch_known) for bp in BACKPORTS}
        rules = cls(
            version=version,
            patch_known=patch_known,
            max_register_length=1920 if v >= (3, 18) else 256,
            buffer_size=256 if v >= (5, 1) else 128,
            flag_letters=flags.replace(" ", ""),
            strict_offset=v >= (4, 18),
            precise_errors=v >= (4, 8),
            open_binary_no_rewrite=v >= (5, 8),
            preserve_argv0_auxv=v >= (5, 12),
            userns_instances=v >= (6, 7),
            requires_absolute_credentials_interpreter=v >= (7, 3),
            umount_resets_enabled=v >= (6, 7),
        )
        return attrs.evolve(rules, **backported)

    def unknown(self) -> tuple[str, ...]:
        """The fields this kernel's version cannot decide (``None``), in table order."""
        return tuple(bp.field for bp in BACKPORTS if getattr(self, bp.field) is None)

    def why_unknown(self, field: str) -> Optional[str]:
        """A sentence saying why ``field`` is unknown, or ``None`` if it is known."""
        if getattr(self, field) is not None:
            return None
        bp = next(b for b in BACKPORTS if b.field == field)
        shown = ".".join(map(str, self.version[:2])) if self.version else "this kernel"
        if not self.patch_known:
            return (
                f"{field} depends on a stable backport ({bp.change}) and the patch level of "
                f"{shown} is unknown (no Debian uname -v or Ubuntu version signature)"
            )
        without, with_ = bp.measured.get(self.version[:2] if self.version else (0, 0), (None, None))
        known = [f"without it up to .{without}"] if without is not None else []
        known += [f"with it from .{with_}"] if with_ is not None else []
        return (
            f"{field} depends on a stable backport ({bp.change}) not measured for "
            f"{'.'.join(map(str, self.version or ()))}"
            + (f" (measured on {shown}: {', '.join(known)})" if known else "")
        )

    @staticmethod
    def running() -> KernelRules:
        """Rules for the kernel this process runs on (read once, then cached)."""
        return _running()


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def _running() -> KernelRules:
    uname = os.uname()
    # uname -v (Debian keeps the patch level there), Ubuntu's signature file.
    version = "\n".join([uname.version, _read("/proc/version_signature")])
    return KernelRules.for_release_or_default(uname.release, version)

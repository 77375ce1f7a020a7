"""The binfmt_misc rules that differ between kernel versions.

Each difference the spec measured is one field of :class:`KernelRules`, so a
distro kernel that carries a stable backport can be described exactly
(``attrs.evolve(rules, rejects_flag_delimiter=True)``) instead of being
guessed from its version number. :func:`KernelRules.for_release` picks the
defaults for a ``uname -r`` string; :func:`KernelRules.running` for the
running kernel.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Optional

import attrs

__all__ = ["KernelRules", "parse_release"]

_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def parse_release(release: str) -> tuple[int, int, int]:
    """``"6.18.44-fc-v657"`` → ``(6, 18, 44)``; raises ``ValueError`` if unreadable."""
    m = _RELEASE.match(release)
    if not m:
        raise ValueError(f"invalid kernel release {release!r}: expected MAJOR.MINOR[.PATCH]")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


@attrs.frozen
class KernelRules:
    """What one kernel accepts, prints and does, as the model needs it."""

    #: ``(major, minor, patch)`` the defaults came from, or ``None`` if hand-made.
    version: Optional[tuple[int, int, int]] = None
    #: Longest register write accepted (1920 since 3.18, 256 before).
    max_register_length: int = 1920
    #: ``BINPRM_BUF_SIZE``: the bytes of a file that magic can see (256 since 5.1).
    buffer_size: int = 256
    #: Flag letters accepted after the interpreter (``F`` since 4.8; ``T L D`` in 7.3).
    flag_letters: str = "POCF"
    #: Refuse a flag letter as the delimiter (7.3 and its stable backports).
    rejects_flag_delimiter: bool = True
    #: Offset parsed by ``kstrtoint`` (sign, one ``\n``, no wrap; since 4.18).
    strict_offset: bool = True
    #: Register errors come back as EEXIST/ENAMETOOLONG/ENOENT… (4.8+), not all EINVAL.
    precise_errors: bool = True
    #: With ``F``, the interpreter is opened before the name lookup (5.12+).
    opens_interpreter_first: bool = True
    #: At most this many interpreter rewrites; one more gives ELOOP.
    max_rewrites: int = 5
    #: An O/C entry whose interpreter needs a further rewrite fails ENOEXEC (5.8+).
    open_binary_no_rewrite: bool = True
    #: ``P`` also sets AT_FLAGS_PRESERVE_ARGV0 in the auxiliary vector (5.12+).
    preserve_argv0_auxv: bool = True
    #: Each user namespace may mount its own instance (6.7+).
    userns_instances: bool = True
    #: ``C`` or ``L`` without ``F`` need an absolute interpreter path (7.3+).
    requires_absolute_credentials_interpreter: bool = False

    @classmethod
    def for_release(cls, release: str) -> KernelRules:
        """The mainline defaults for a kernel release string such as ``uname -r``.

        Stable backports are not visible in a version number; adjust the
        result with :func:`attrs.evolve` when a kernel is known to carry one.
        """
        return cls.for_version(parse_release(release))

    @classmethod
    def for_release_or_default(cls, release: str) -> KernelRules:
        """:meth:`for_release`, or the newest kernel's rules if the release is unreadable."""
        try:
            return cls.for_release(release)
        except ValueError:
            return cls()

    @classmethod
    def for_version(cls, version: tuple[int, int, int]) -> KernelRules:
        """The mainline defaults for ``(major, minor, patch)``."""
        v = version[:2]
        flags = "P O C"
        if v >= (4, 8):
            flags += " F"
        if v >= (7, 3):
            flags += " T L D"
        return cls(
            version=version,
            max_register_length=1920 if v >= (3, 18) else 256,
            buffer_size=256 if v >= (5, 1) else 128,
            flag_letters=flags.replace(" ", ""),
            # The fix reached 6.18.44 as a stable backport but not 6.1.176
            # (spec, addendum); 6.18+ is the measured floor.
            rejects_flag_delimiter=v >= (6, 18),
            strict_offset=v >= (4, 18),
            precise_errors=v >= (4, 8),
            opens_interpreter_first=v >= (5, 12),
            open_binary_no_rewrite=v >= (5, 8),
            preserve_argv0_auxv=v >= (5, 12),
            userns_instances=v >= (6, 7),
            requires_absolute_credentials_interpreter=v >= (7, 3),
        )

    @staticmethod
    def running() -> KernelRules:
        """Rules for the kernel this process runs on (read once, then cached)."""
        return _running()


@functools.lru_cache(maxsize=1)
def _running() -> KernelRules:
    return KernelRules.for_release_or_default(os.uname().release)

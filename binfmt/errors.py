"""The library's exceptions, all of them.

Every error is a :class:`BinfmtError`, and each also inherits the builtin a
caller would naturally catch (``ValueError`` for bad input, ``OSError``
subclasses for the kernel's answers, ``LookupError`` for unknown names), so
``except ValueError`` keeps working for code that does not know this library.
Every one of them survives :mod:`pickle` (a process pool passes them back),
and ``str()`` of each is one line naming the value at fault and the rule.

Messages speak in the library's terms; the command line adds its own hints
(which option to pass) when it prints them.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any, Optional

__all__ = [
    "ArchiveError",
    "BinfmtError",
    "ConfigError",
    "ElfError",
    "InstallError",
    "InvalidElf",
    "InvalidEntry",
    "InvalidValue",
    "KernelError",
    "LockTimeout",
    "MalformedStatus",
    "NoSuchEntry",
    "NotElf",
    "NotMounted",
    "NotRegularFile",
    "PermissionDenied",
    "SandboxUnavailable",
    "UnknownTarget",
    "UnsafeFileName",
    "WriteError",
    "errno_name",
    "show_value",
]


def errno_name(number: Optional[int]) -> str:
    """The symbolic name of an errno (``2`` → ``"ENOENT"``); ``None`` counts as ``EIO``."""
    value = _errno.EIO if number is None else number
    return _errno.errorcode.get(value, str(value))


def show_value(value: object) -> str:
    """Quote a bad value for a one-line message (``repr``), shortened if it is long."""
    text = repr(value)
    if len(text) > 80:
        text = text[:60] + "…" + text[-15:]
    return text


class BinfmtError(Exception):
    """Base class of every error raised by :mod:`binfmt`."""


class InvalidValue(BinfmtError, ValueError):
    """An argument that breaks a rule: ``invalid jobs 0: must be at least 1``.

    ``what`` names the argument, ``value`` is what was given, ``rule`` what it must be.
    """

    def __init__(self, what: str, value: object, rule: str) -> None:
        self.what = what
        self.value = value
        self.rule = rule
        super().__init__(f"invalid {what} {show_value(value)}: {rule}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.value, self.rule))


class InvalidEntry(BinfmtError, ValueError):
    """A register line or entry that the kernel would refuse.

    ``field`` names the part at fault (``"name"``, ``"offset"``, ``"magic"`` …),
    ``value`` is the offending text as given, and ``errno`` is what the
    kernel's ``write(2)`` on ``register`` would fail with (``EINVAL`` for every
    syntax error, ``ENAMETOOLONG`` or ``EEXIST`` for name problems).
    """

    def __init__(self, field: str, value: object, rule: str, errno: int = _errno.EINVAL) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        self.errno = errno
        super().__init__(f"invalid {field} {show_value(value)}: {rule}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.value, self.rule, self.errno))


class MalformedStatus(BinfmtError, ValueError):
    """An entry file (or ``status``) whose text is not what the kernel prints."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.where, self.problem))


class UnknownTarget(BinfmtError, LookupError):
    """A QEMU target, alias or OCI platform name that the table does not know."""


class NoSuchEntry(BinfmtError, LookupError):
    """No binfmt_misc entry of that name is registered (``name``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no entry named {show_value(name)} is registered")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name,))

    def __str__(self) -> str:
        return str(self.args[0])


class InstallError(BinfmtError, RuntimeError):
    """A plan that cannot be applied, or an apply that failed and was rolled back.

    ``restored`` says, after a failed write, whether the state read again
    equals the state before (``None``: nothing needed undoing, e.g. the plan
    had errors); ``differences`` lists what does not, one line each.
    ``applied`` is true when every write succeeded but the state read
    afterwards is not what the plan makes (another writer changed it).
    """

    def __init__(
        self,
        message: str,
        *,
        applied: bool = False,
        restored: Optional[bool] = None,
        differences: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.applied = applied
        self.restored = restored
        self.differences = tuple(differences)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0],), self.__dict__)


class LockTimeout(BinfmtError, TimeoutError):
    """Another process held a binfmt_misc instance's writer lock for too long.

    ``holder`` is its PID when ``/proc/locks`` tells it, ``command`` its name.
    """

    def __init__(
        self, path: str, seconds: float, holder: Optional[int], command: Optional[str] = None
    ) -> None:
        who = "another process"
        if holder is not None:
            who = f"process {holder}" + (f" ({command})" if command else "")
        super().__init__(
            f"the writer lock of {path} is held by {who} and was not released within "
            f"{seconds:g} s: nothing was written"
        )
        self.path = path
        self.seconds = seconds
        self.holder = holder
        self.command = command

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.seconds, self.holder, self.command))


class SandboxUnavailable(BinfmtError, RuntimeError):
    """This machine cannot create a private binfmt_misc instance."""


class _OneLineOSError(OSError):
    """An OSError whose ``str()`` is just its message (no ``[Errno N]`` prefix)."""

    def __str__(self) -> str:
        return str(self.strerror)


class NotMounted(BinfmtError, _OneLineOSError, FileNotFoundError):
    """binfmt_misc is not mounted at the given path."""

    def __init__(self, path: str) -> None:
        super().__init__(
            _errno.ENOENT,
            f"binfmt_misc is not mounted at {path}: mount it with "
            f"'mount -t binfmt_misc binfmt_misc {path}' (as root)",
        )
        self.filename = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.filename,))


class PermissionDenied(BinfmtError, _OneLineOSError, PermissionError):
    """The caller may not read or write the binfmt_misc files."""

    def __init__(self, path: str, action: str) -> None:
        super().__init__(
            _errno.EACCES,
            f"permission denied to {action} {path}: run as root "
            "(or in a user namespace that mounted its own binfmt_misc)",
        )
        self.filename = path
        self.action = action

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.filename, self.action))


class KernelError(BinfmtError, _OneLineOSError):
    """The kernel refused a write; ``errno`` is the kernel's answer.

    ``entry`` is the name of the entry concerned (or ``None`` for global
    writes), and the message explains the errno in binfmt_misc's terms.
    """

    def __init__(self, err: int, path: str, message: str, entry: Optional[str] = None) -> None:
        super().__init__(err, f"{message} ({errno_name(err)}: {os.strerror(err)})")
        self.filename = path
        self.entry = entry
        self.message = message

    @property
    def errno_name(self) -> str:
        """The errno's symbolic name (``"EEXIST"``), as JSON output spells it."""
        return errno_name(self.errno)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errno, self.filename, self.message, self.entry))


class ArchiveError(BinfmtError, ValueError):
    """An image archive that cannot be read to the end: not a tar stream, corrupt or truncated.

    ``source`` names the archive (``-`` for standard input), ``problem`` what is wrong
    and where (``truncated in member 'usr/bin/ls' at byte 10240``).
    """

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.problem))


class ElfError(BinfmtError, ValueError):
    """A file that is not a usable ELF file.

    ``reason`` says why (``"truncated ELF header: 20 of 52 bytes"``), ``path``
    names the file when it is known.
    """

    def __init__(self, reason: str, path: Optional[str] = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(reason if path is None else f"{path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.path))


class NotElf(ElfError):
    """Bytes that do not start with a valid ELF file header."""


class InvalidElf(ElfError):
    """An ELF file whose header is valid but whose contents are corrupt or truncated."""


class NotRegularFile(BinfmtError, OSError):
    """A path that is not a regular file, so it is not read (FIFOs could block).

    ``errno`` is ``EACCES``, what ``execve(2)`` answers for such a path.
    """

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(
            _errno.EACCES, f"{path} is a {kind}, not a regular file: only regular files execute"
        )
        self.filename = path
        self.kind = kind

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.filename, self.kind))


class ConfigError(BinfmtError, ValueError):
    """A configuration file (binfmt.d or a Debian format file) that cannot be used.

    ``source`` names the file, ``lineno`` the 1-based line at fault (``None``
    when the problem is the file as a whole), ``problem`` says what is wrong.
    The message starts with ``source:lineno:`` so editors can jump to it.
    """

    def __init__(self, source: str, lineno: Optional[int], problem: str) -> None:
        self.source = source
        self.lineno = lineno
        self.problem = problem
        where = source if lineno is None else f"{source}:{lineno}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.lineno, self.problem))


class UnsafeFileName(BinfmtError, ValueError):
    """A name that is not one plain file name inside one directory.

    Raised before anything is written, so a hostile or mistaken name (``../x``,
    ``a/b``, ``.``) never reaches the file system.
    """

    def __init__(self, name: str, rule: str) -> None:
        self.name = name
        self.rule = rule
        super().__init__(f"invalid file name {show_value(name)}: {rule}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.rule))


class WriteError(BinfmtError, _OneLineOSError):
    """Files could not be written safely; ``filename`` names the path, ``errno`` the cause."""

    def __init__(self, err: int, path: str, message: str) -> None:
        super().__init__(err, message)
        self.filename = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errno, self.filename, self.strerror))

"""The root an exec happens in: where paths are looked up and files opened.

An interpreter path in a binfmt_misc entry, or a binary's ``PT_INTERP``
loader, is looked up by the kernel in the exec'ing process's root: inside a
container, that is the container's root. :func:`resolve` walks a path one
component at a time under ``rootfs``, following symlinks as the kernel
would from inside it: an absolute link target starts again at ``rootfs``
and ``..`` never climbs above it, so a hostile tree cannot lead the walk
outside (the semantics of ``openat2(RESOLVE_IN_ROOT)``).

The exec model (:class:`binfmt.prediction.ExecModel`) reads every file
through a :class:`Root`, so that one model judges a directory on this
machine (:class:`DirectoryRoot`) and the tree of an image archive that was
never extracted (:class:`binfmt.archive.ArchiveRoot`) alike. A root does four
things: resolve a path inside it (to a *name*, the root's handle for a file:
a path on this machine for a directory), open a name as the kernel opens a
file for exec (:class:`OpenedFile`: its mode and first bytes, and its
``PT_INTERP`` on demand), and answer the two checks that belong to the
machine rather than to the file (a ``noexec`` mount, the caller's
permission).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Optional

import attrs

if TYPE_CHECKING:
    from .elf import ElfHeader

__all__ = [
    "MAX_SYMLINKS",
    "DirectoryRoot",
    "ExecFile",
    "Lookup",
    "OpenedFile",
    "Root",
    "open_exec_file",
    "resolve",
    "walk",
]

#: The kernel gives ELOOP after this many symlinks in one lookup.
MAX_SYMLINKS = 40


#: One step of a path walk: what ``name`` is in the directory the components so far
#: lead to, as ``(symlink target or None, whether a directory)``; raises
#: :class:`FileNotFoundError` (or :class:`NotADirectoryError`) when it is not there.
Lookup = Callable[[Sequence[str], str], tuple[Optional[str], bool]]


def walk(path: str, lookup: Lookup, *, cwd: str = "/", follow: bool = True) -> list[str]:
    """The kernel's walk of ``path`` inside a root: the components it leads to.

    The one definition of the lookup rules for every kind of root (a directory
    here, an archive's tree in :mod:`binfmt.archive`): ``..`` stops at the
    root, an absolute symlink starts again from the root, at most
    :data:`MAX_SYMLINKS` links (then ``ELOOP``), every component but the last
    a directory (else ``ENOTDIR``), the last followed only with ``follow``.
    ``path`` is absolute inside the root or relative to ``cwd`` (itself inside
    the root). Errors carry ``path`` as seen inside the root.
    """
    start = path if path.startswith("/") else cwd.rstrip("/") + "/" + path
    pending = [c for c in start.split("/") if c]
    pending.reverse()
    done: list[str] = []  # components below the root, all resolved and directories
    links = 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        try:
            target, is_dir = lookup(done, name)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        except NotADirectoryError:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
        is_last = not pending
        if target is not None and (follow or not is_last):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            if target.startswith("/"):
                done = []
            pending.extend(reversed([c for c in target.split("/") if c]))
            continue
        if not is_last and not is_dir:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        done.append(name)
    return done


def resolve(rootfs: str, path: str, *, cwd: str = "/", follow: bool = True) -> str:
    """The host path of ``path`` as seen from inside ``rootfs`` (a directory).

    ``path`` is absolute inside ``rootfs`` or relative to ``cwd`` (itself
    inside ``rootfs``). With ``follow`` a final symlink is followed too.
    Raises :class:`FileNotFoundError`, :class:`NotADirectoryError` or an
    ``OSError`` with ``ELOOP`` as the kernel's lookup would, with the path as
    seen inside ``rootfs`` in the message (:func:`walk`).
    """
    root = os.path.abspath(rootfs)

    def lookup(done: Sequence[str], name: str) -> tuple[Optional[str], bool]:
        host = os.path.join(root, *done, name)
        st = os.lstat(host)
        if stat.S_ISLNK(st.st_mode):
            return os.readlink(host), False
        return None, stat.S_ISDIR(st.st_mode)

    done = walk(path, lookup, cwd=cwd, follow=follow)
    return os.path.join(root, *done) if done else root


# -- the files the kernel opens ---------------------------------------------------------


class OpenedFile:
    """A file as the kernel holds it once opened for exec (the interface a root yields).

    :class:`ExecFile` is the one of a directory on this machine; an archive
    has its own. Attributes: ``path`` (the name it was opened by), ``mode``
    (``st_mode``) and ``head`` (the first bytes, up to the kernel's buffer;
    empty for files that are not regular).
    """

    path: str
    mode: int
    head: bytes

    @property
    def regular(self) -> bool:
        return stat.S_ISREG(self.mode)

    def program_interpreter(self, header: ElfHeader) -> Optional[str]:
        """The ``PT_INTERP`` of this ELF file, with the kernel's limits
        (:func:`binfmt.elf.program_interpreter`); raises ``InvalidElf`` or ``OSError``."""
        raise NotImplementedError


# Regular files ignore O_NONBLOCK; it keeps open() of a FIFO or a device from
# waiting, and O_NOCTTY keeps a terminal from becoming ours.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@attrs.frozen
class ExecFile(OpenedFile):
    """A file of this machine opened for exec: its descriptor, mode and first bytes."""

    #: The path on this machine.
    path: str
    #: The open descriptor (valid inside :func:`open_exec_file`'s ``with``).
    fd: int
    mode: int
    #: The first bytes, up to the kernel's buffer size (empty for non-regular files).
    head: bytes

    @property
    def noexec(self) -> bool:
        """On a filesystem mounted ``noexec``."""
        try:
            return bool(os.fstatvfs(self.fd).f_flag & os.ST_NOEXEC)
        except OSError:
            return False

    def program_interpreter(self, header: ElfHeader) -> Optional[str]:
        """The ``PT_INTERP`` of this ELF file (:func:`binfmt.elf.program_interpreter`)."""
        from .elf import program_interpreter

        return program_interpreter(self.fd, header)


@contextlib.contextmanager
def open_exec_file(path: str, buffer_size: int, *, follow: bool = True) -> Iterator[ExecFile]:
    """Open ``path`` without blocking and read its first ``buffer_size`` bytes.

    A FIFO or device is opened (``O_NONBLOCK``) but not read. ``follow=False``
    refuses a symlink at ``path`` (``ELOOP``). Raises the ``OSError`` of
    ``open(2)`` or ``read(2)``.
    """
    fd = os.open(path, _OPEN_FLAGS | (0 if follow else os.O_NOFOLLOW))
    try:
        mode = os.fstat(fd).st_mode
        head = os.read(fd, buffer_size) if stat.S_ISREG(mode) else b""
        # One read gives everything for a regular file; loop only for the
        # rare short read (a signal, some network filesystems).
        while 0 < len(head) < buffer_size:
            more = os.read(fd, buffer_size - len(head))
            if not more:
                break
            head += more
        yield ExecFile(path, fd, mode, head)
    finally:
        os.close(fd)


# -- roots ------------------------------------------------------------------------------


class Root:
    """Where an exec's paths are looked up and its files opened (see the module docstring)."""

    #: The root as shown in messages ("not found inside …"); ``"/"`` for this machine's.
    label: str = "/"

    def resolve(self, path: str, *, cwd: str = "/", follow: bool = True) -> str:
        """The name of ``path`` looked up inside the root (symlinks resolved inside it).

        Raises ``OSError`` (``ENOENT``, ``ENOTDIR``, ``ELOOP``) as the kernel's lookup would.
        """
        raise NotImplementedError

    def open(
        self, name: str, buffer_size: int, *, follow: bool = True
    ) -> AbstractContextManager[OpenedFile]:
        """Open the file ``name`` (from :meth:`resolve`, or a path of the root) for exec."""
        raise NotImplementedError

    def noexec(self, file: OpenedFile) -> bool:
        """Whether the file is on a mount that forbids exec (only a real mount can)."""
        return False

    def denied(self, file: OpenedFile) -> bool:
        """Whether this process, not being root, lacks exec permission (``access(X_OK)``)."""
        return False


class DirectoryRoot(Root):
    """A directory of this machine (``/``, or a container's extracted root).

    Names are paths on this machine. The ``noexec`` test (``fstatvfs``) is
    made once per directory of the files opened: a mount point is a directory.
    """

    def __init__(self, path: str = "/") -> None:
        self.path = os.path.abspath(path)
        self.label = self.path
        self._euid = os.geteuid()
        self._noexec: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"DirectoryRoot({self.path!r})"

    def resolve(self, path: str, *, cwd: str = "/", follow: bool = True) -> str:
        return resolve(self.path, path, cwd=cwd, follow=follow)

    def open(
        self, name: str, buffer_size: int, *, follow: bool = True
    ) -> AbstractContextManager[ExecFile]:
        return open_exec_file(name, buffer_size, follow=follow)

    def noexec(self, file: OpenedFile) -> bool:
        directory = file.path.rpartition("/")[0]
        known = self._noexec.get(directory)
        if known is None:
            known = self._noexec[directory] = bool(getattr(file, "noexec", False))
        return known

    def denied(self, file: OpenedFile) -> bool:
        return self._euid != 0 and not os.access(file.path, os.X_OK)

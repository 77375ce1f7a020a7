"""Resolve paths the way a process chrooted into a directory would see them.

An interpreter path in a binfmt_misc entry, or a binary's ``PT_INTERP``
loader, is looked up by the kernel in the exec'ing process's root: inside a
container, that is the container's root. :func:`resolve` walks a path one
component at a time under ``rootfs``, following symlinks as the kernel
would from inside it: an absolute link target starts again at ``rootfs``
and ``..`` never climbs above it, so a hostile tree cannot lead the walk
outside (the semantics of ``openat2(RESOLVE_IN_ROOT)``).
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["MAX_SYMLINKS", "resolve"]

#: The kernel gives ELOOP after this many symlinks in one lookup.
MAX_SYMLINKS = 40


def resolve(rootfs: str, path: str, *, cwd: str = "/", follow: bool = True) -> str:
    """The host path of ``path`` as seen from inside ``rootfs``.

    ``path`` is absolute inside ``rootfs`` or relative to ``cwd`` (itself
    inside ``rootfs``). With ``follow`` a final symlink is followed too.
    Raises :class:`FileNotFoundError`, :class:`NotADirectoryError` or an
    ``OSError`` with ``ELOOP`` as the kernel's lookup would, with the path as
    seen inside ``rootfs`` in the message.
    """
    root = os.path.abspath(rootfs)
    start = path if path.startswith("/") else os.path.join(cwd, path)
    pending = [c for c in start.split("/") if c]
    pending.reverse()
    done: list[str] = []  # components below root, all resolved and directories
    links = 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        host = os.path.join(root, *done, name)
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        except NotADirectoryError:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
        is_last = not pending
        if stat.S_ISLNK(st.st_mode) and (follow or not is_last):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            more = [c for c in target.split("/") if c]
            pending.extend(reversed(more))
            continue
        if not is_last and not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        done.append(name)
    return os.path.join(root, *done) if done else root

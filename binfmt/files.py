"""Writing configuration files safely: all or nothing, atomic, never through a link."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterable, Mapping

from . import text
from .entry import NAME_MAX, Entry
from .errors import InvalidEntry, UnsafeFileName, WriteError

__all__ = ["check_file_name", "one_file_each", "write_files"]


def one_file_each(entries: Iterable[Entry]) -> list[Entry]:
    """``entries`` as a list, one file each: :class:`InvalidEntry` for a repeated name."""
    result: list[Entry] = []
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise InvalidEntry("name", entry.name, "occurs twice; one file holds one entry")
        seen.add(entry.name)
        result.append(entry)
    return result


def check_file_name(name: str) -> None:
    """Raise :class:`UnsafeFileName` unless ``name`` is one plain file name of at most 255 bytes."""
    if not isinstance(name, str) or not name:
        raise UnsafeFileName(name, "must be a non-empty string")
    if name in (".", ".."):
        raise UnsafeFileName(name, "'.' and '..' name directories, not files")
    if "/" in name:
        raise UnsafeFileName(name, "must be a plain file name, without '/'")
    if "\0" in name:
        raise UnsafeFileName(name, "must not contain a NUL byte")
    if not text.encodable(name):
        raise UnsafeFileName(name, "holds text that is not bytes")
    if len(text.encode(name)) > NAME_MAX:
        raise UnsafeFileName(name, f"is longer than {NAME_MAX} bytes (NAME_MAX)")


def _os_error(exc: OSError, path: str, action: str) -> WriteError:
    err = exc.errno or errno.EIO
    return WriteError(err, path, f"cannot {action} {path}: {exc.strerror or exc}")


def write_files(directory: str, files: Mapping[str, str]) -> list[str]:
    """Write ``files`` (name → text) into the existing ``directory``, all or nothing.

    Every name must be one plain file name (not empty, ``.``, ``..``, no ``/``
    or NUL, at most 255 bytes), else :class:`UnsafeFileName` is raised before
    anything is written. An existing symlink (in /etc/binfmt.d typically a
    ``/dev/null`` mask) or non-regular file at a name is refused with
    :class:`WriteError`: nothing is ever written through a link.

    Each file is written to a temporary file in ``directory`` (mode 0644,
    flushed with ``fsync``); only when all are written are they renamed over
    their names (``os.replace``, atomic each), and the directory is synced.
    On a failure before the renames, the temporary files are removed and
    nothing changed. Should a rename itself fail (an I/O error), the files
    renamed before it stay written and the rest are removed. Returns the paths
    written, in the order of ``files``. Text is encoded as UTF-8 with
    ``surrogateescape``.
    """
    items = list(files.items())
    for name, content in items:
        check_file_name(name)
        if not isinstance(content, str):
            raise TypeError(
                f"invalid content for {name!r}: must be str, not {type(content).__name__}"
            )
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise WriteError(
                errno.ENOENT, directory, f"cannot write into {directory}: no such directory"
            ) from exc
        if exc.errno == errno.ENOTDIR:
            raise WriteError(
                errno.ENOTDIR, directory, f"cannot write into {directory}: not a directory"
            ) from exc
        raise _os_error(exc, directory, "open directory") from exc
    temps: list[tuple[str, str]] = []  # (temporary name, final name), not yet renamed
    try:
        for name, _ in items:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _os_error(exc, path, "inspect") from exc
            if stat.S_ISLNK(st.st_mode):
                raise WriteError(
                    errno.ELOOP,
                    path,
                    f"refusing to replace {path}: it is a symbolic link (a mask?); remove it first",
                )
            if not stat.S_ISREG(st.st_mode):
                raise WriteError(
                    errno.EEXIST, path, f"refusing to replace {path}: it is not a regular file"
                )
        for name, content in items:
            temp = f".binfmt-{secrets.token_hex(8)}.tmp"
            try:
                fd = os.open(
                    temp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=dir_fd,
                )
            except OSError as exc:
                raise _os_error(exc, os.path.join(directory, temp), "create") from exc
            temps.append((temp, name))
            try:
                os.fchmod(fd, 0o644)  # the umask may have removed bits
                data = text.encode(content)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as exc:
                raise _os_error(exc, os.path.join(directory, name), "write") from exc
            finally:
                os.close(fd)
        written = []
        while temps:
            temp, name = temps[0]
            path = os.path.join(directory, name)
            try:
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as exc:
                raise _os_error(exc, path, "rename into place") from exc
            temps.pop(0)
            written.append(path)
        os.fsync(dir_fd)
        return written
    finally:
        for temp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
        os.close(dir_fd)

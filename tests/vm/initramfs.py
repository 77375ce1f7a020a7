"""A busybox initramfs, written as a ``cpio -H newc`` archive in pure Python.

The kernel unpacks an uncompressed newc archive itself, so no ``cpio`` and
no compressor is needed. Files are given as bytes with a mode; directories
are implied by the paths. The archive is deterministic (fixed inode numbers
and times), so the same inputs give the same bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Union

import attrs

__all__ = ["Initramfs"]


@attrs.define
class Initramfs:
    """The files of an initramfs, by absolute path."""

    files: dict[str, tuple[int, bytes]] = attrs.field(factory=dict)

    def add(self, path: str, data: Union[bytes, str], mode: int = 0o644) -> None:
        """A regular file (``mode`` without the type bits)."""
        raw = data.encode() if isinstance(data, str) else data
        self.files[_norm(path)] = (stat.S_IFREG | mode, raw)

    def add_file(self, path: str, source: Union[str, os.PathLike[str]], mode: int = 0o755) -> None:
        """A copy of a host file."""
        self.add(path, Path(source).read_bytes(), mode)

    def symlink(self, path: str, target: str) -> None:
        self.files[_norm(path)] = (stat.S_IFLNK | 0o777, target.encode())

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self.files[_norm(path)] = (stat.S_IFDIR | mode, b"")

    def add_tree(self, prefix: str, files: Iterable[tuple[str, bytes, int]]) -> None:
        for name, data, mode in files:
            self.add(f"{prefix.rstrip('/')}/{name}", data, mode)

    def to_bytes(self) -> bytes:
        """The newc archive: parents before children, then ``TRAILER!!!``."""
        entries: dict[str, tuple[int, bytes]] = {}
        for path in sorted(self.files):
            parts = path.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                entries.setdefault(parent, (stat.S_IFDIR | 0o755, b""))
            entries[path] = self.files[path]
        out = bytearray()
        for ino, (path, (mode, data)) in enumerate(sorted(entries.items()), start=1):
            _member(out, path, mode, data, ino)
        _member(out, "TRAILER!!!", 0, b"", 0)
        out += b"\0" * (-len(out) % 512)
        return bytes(out)

    def write(self, path: Union[str, os.PathLike[str]]) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(self.to_bytes())
        os.replace(tmp, target)
        return target


def _norm(path: str) -> str:
    name = path.strip("/")
    if not name or ".." in name.split("/"):
        raise ValueError(f"bad initramfs path {path!r}")
    return name


def _member(out: bytearray, name: str, mode: int, data: bytes, ino: int) -> None:
    raw = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(raw), 0]
    out += b"070701" + b"".join(b"%08x" % f for f in fields)
    out += raw
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)

"""An image's root filesystem straight from its archive: read once, never extracted.

:func:`read_archive` reads tar streams — the output of ``docker export`` or
``crane export``, or an image's layers in order, lowest first — into an
in-memory index of the tree they make, and :class:`ArchiveRoot` serves that
index to the exec model (:class:`binfmt.prediction.ExecModel`) as a
:class:`~binfmt.rootfs.Root`: paths resolve inside it (symlinks followed
inside the archive's tree, an absolute target or ``..`` never leaving it),
files open to their mode and first bytes. So ``scan --tar`` judges every
program as ``scan`` judges it in the extracted tree.

What is kept is bounded by the number of members, not by their size: for
every member its name, type, mode and (symlinks) target; for files that
may be judged (with an exec bit, or every ELF file with ``all_files``) the
first 256 bytes and, for ELF files, the ``PT_INTERP`` path, worked out while
the member streams past (by :func:`binfmt.elf.program_interpreter`, over the
bytes it needs). File contents are skipped: with ``seek`` on an uncompressed
file, by reading in 1 MiB chunks from a pipe or a decompressor.

The tar dialects read: POSIX ustar and pax (``path``, ``linkpath``,
``size`` records), GNU (long names and link names, base-256 sizes) and v7.
Compression: gzip, xz and bzip2 (the standard library), zstd where the
standard library has it (Python 3.14's ``compression.zstd``); otherwise
decompress on the way in: ``zstd -dc image.tar.zst | binfmt scan --tar -``.

Layers apply as OCI image layers do: an entry replaces what lower layers had
at its path (directories merge), ``.wh.NAME`` deletes ``NAME`` from the
layers below, ``.wh..wh..opq`` empties its directory of what lower layers
put there; whiteout files themselves are not part of the tree. Hard links
share the file they name. Members that would land outside the root (a
``..`` component, as GNU tar refuses them) or under a file are left out and
counted in :attr:`Archive.warnings`. A stream that is not tar, is corrupt or
ends early raises :class:`~binfmt.errors.ArchiveError`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import IO, Any, Optional, Union

import attrs

from .elf import ElfHeader, NotElf, program_interpreter
from .errors import ArchiveError, BinfmtError
from .rootfs import OpenedFile, Root, walk
from .text import decode

__all__ = ["HEAD_SIZE", "Archive", "ArchiveFile", "ArchiveRoot", "Node", "read_archive"]

#: Bytes kept of each file that may be judged: the largest kernel buffer (5.1+).
HEAD_SIZE = 256
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_CHUNK = 1 << 20
# An ELF file's PT_INTERP is read from the bytes kept in memory up to this far
# into the file; beyond it (never in real programs), the file is spooled to disk.
_PREFIX_LIMIT = 1 << 20
# Metadata members (long names, pax records) larger than this are refused.
_META_LIMIT = 1 << 20
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"

_TYPES = {
    b"0": stat.S_IFREG,
    b"\0": stat.S_IFREG,
    b"7": stat.S_IFREG,
    b"2": stat.S_IFLNK,
    b"3": stat.S_IFCHR,
    b"4": stat.S_IFBLK,
    b"5": stat.S_IFDIR,
    b"D": stat.S_IFDIR,  # GNU dumpdir
    b"6": stat.S_IFIFO,
}
_HARDLINK = b"1"


class Node:
    """One file of the archive's tree (several names share it when hard-linked)."""

    __slots__ = ("children", "head", "interp", "mode", "opaque", "target")

    def __init__(self, mode: int, target: str = "") -> None:
        #: ``st_mode``: the type bits and the permission bits.
        self.mode = mode
        #: A symlink's target.
        self.target = target
        #: The first bytes (up to :data:`HEAD_SIZE`), kept for files that may be judged.
        self.head: Optional[bytes] = None
        #: ``PT_INTERP`` of an ELF file: the path, ``None``, or the error reading it gave.
        self.interp: Union[str, BaseException, None] = None
        #: A directory's entries (``None`` for other files).
        self.children: Optional[dict[str, Node]] = {} if stat.S_ISDIR(mode) else None
        #: A directory of a layer marked ``.wh..wh..opq``: lower layers' entries go.
        self.opaque = False


# A whiteout in a layer's tree: the name is deleted from the layers below.
_GONE = Node(0)
_UNREADABLE = b"\0unreadable"  # a head sentinel: content the reader does not decode (sparse)


@attrs.frozen
class Member:
    """One tar header, decoded (a file, directory, link …; not the metadata members)."""

    name: str
    #: The tar type flag (``b"0"`` regular, ``b"1"`` hard link, ``b"2"`` symlink …).
    type: bytes
    mode: int
    size: int
    linkname: str
    #: GNU or pax sparse file: the stored data is not the file's bytes.
    sparse: bool = False


class _Source:
    """A byte stream read forward: exact reads, and skips (a seek, or reads into scratch)."""

    def __init__(self, stream: IO[bytes], name: str, size: Optional[int]) -> None:
        self.stream = stream
        self.name = name
        #: The stream's length when known (a plain file): seeks past it are truncation.
        self.size = size
        self.offset = 0
        self.seekable = size is not None
        self._scratch = memoryview(bytearray(_CHUNK))

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        while len(data) < n:
            more = self.stream.read(n - len(data))
            if not more:
                break
            data += more
        self.offset += len(data)
        return data

    def skip(self, n: int, member: str) -> None:
        if n <= 0:
            return
        if self.seekable:
            assert self.size is not None
            if self.offset + n > self.size:
                raise self.truncated(member)
            self.stream.seek(n, io.SEEK_CUR)
            self.offset += n
            return
        while n > 0:
            got = self.stream.readinto(self._scratch[: min(n, _CHUNK)])  # type: ignore[attr-defined]
            if not got:
                raise self.truncated(member)
            n -= got
            self.offset += got

    def truncated(self, member: str) -> ArchiveError:
        where = f" in member {member!r}" if member else ""
        return ArchiveError(self.name, f"truncated{where}: the stream ends at byte {self.offset}")


def _number(field: bytes, what: str, source: _Source) -> int:
    """A tar number: octal text, or GNU base-256 (first byte 0x80 or 0xff)."""
    if field and field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:
            value -= 1 << (8 * (len(field) - 1))
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ArchiveError(
            source.name, f"corrupt header at byte {source.offset - _BLOCK}: {what} {text!r}"
        ) from None


def _checksum_ok(block: bytes, stored: int) -> bool:
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if unsigned == stored:
        return True
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 32
    return signed == stored


def _pax_records(data: bytes, source: _Source) -> dict[str, bytes]:
    """``"%d %s=%s\\n"`` records; a malformed one is an error."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break  # padding
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            length = 0
        end = pos + length
        if space < 0 or length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise ArchiveError(source.name, f"corrupt pax header at byte {source.offset}")
        key, _, value = data[space + 1 : end - 1].partition(b"=")
        records[decode(key)] = value
        pos = end
    return records


def members(source: _Source) -> Iterator[Member]:
    """The members of a tar stream; after each, the caller may read up to ``size`` bytes
    (:attr:`_Source.offset` tells how many it did); the rest is skipped."""
    long_name: Optional[bytes] = None
    long_link: Optional[bytes] = None
    pax: dict[str, bytes] = {}
    first = True
    while True:
        start = source.offset
        block = source.read(_BLOCK)
        if not block:
            if first:
                raise ArchiveError(source.name, "empty: not a tar archive")
            return  # the end without end-of-archive blocks: what was there is complete
        if len(block) < _BLOCK:
            raise source.truncated("")
        if block == _ZERO_BLOCK:
            return
        stored = _number(block[148:156], "checksum", source)
        if not _checksum_ok(block, stored):
            if first:
                raise ArchiveError(source.name, "not a tar archive (no valid header at byte 0)")
            raise ArchiveError(source.name, f"corrupt header at byte {start} (bad checksum)")
        first = False
        kind = block[156:157]
        size = _number(block[124:136], "size", source)
        if size < 0:
            raise ArchiveError(source.name, f"corrupt header at byte {start}: negative size")
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise ArchiveError(source.name, f"corrupt pax size at byte {start}") from None
        padded = -size % _BLOCK
        if kind in (b"L", b"K", b"x", b"g", b"X"):
            if size > _META_LIMIT:
                raise ArchiveError(source.name, f"metadata member of {size} bytes at byte {start}")
            data = source.read(size)
            if len(data) < size:
                raise source.truncated("")
            source.skip(padded, "")
            if kind == b"L":
                long_name = data.split(b"\0", 1)[0]
            elif kind == b"K":
                long_link = data.split(b"\0", 1)[0]
            elif kind in (b"x", b"X"):
                pax.update(_pax_records(data, source))
            else:
                _pax_records(data, source)  # global records: nothing this reader needs
            continue
        if kind in (b"V", b"M", b"N"):  # volume label; multi-volume pieces
            if kind != b"V":
                raise ArchiveError(source.name, f"multi-volume member at byte {start}")
            source.skip(size + padded, "")
            continue
        name = block[:100].split(b"\0", 1)[0]
        if block[257:263] == b"ustar\0":  # POSIX: a prefix for long names
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        if long_name is not None:
            name = long_name
        if "path" in pax:
            name = pax["path"]
        link = block[157:257].split(b"\0", 1)[0]
        if long_link is not None:
            link = long_link
        if "linkpath" in pax:
            link = pax["linkpath"]
        sparse = kind == b"S" or any(k.startswith("GNU.sparse.") for k in pax)
        if kind == b"S":
            kind = b"0"
        member = Member(
            decode(name),
            kind,
            _number(block[100:108], "mode", source) & 0o7777,
            size,
            decode(link),
            sparse,
        )
        long_name = long_link = None
        pax = {}
        body = source.offset
        yield member
        source.skip(size - (source.offset - body) + padded, member.name)


def _components(name: str) -> Optional[list[str]]:
    """A member name's components below the root, or ``None`` if it climbs (``..``)."""
    parts = [p for p in name.split("/") if p and p != "."]
    if ".." in parts:
        return None
    return parts


@attrs.frozen
class Archive:
    """The tree of one or more layers, merged, and what was left out of it."""

    #: The root directory.
    root: Node
    #: The sources read, lowest layer first.
    sources: tuple[str, ...]
    members: int
    #: Members left out (unsafe names, hard links to nothing …), up to 100, and their count.
    warnings: tuple[str, ...] = ()
    warnings_total: int = 0


class _Layer:
    """One layer read into its own tree (its whiteouts as markers), then merged below."""

    def __init__(self, source: _Source, below: Node, keep: str, warnings: list[str]) -> None:
        self.source = source
        self.root = Node(stat.S_IFDIR | 0o755)
        self.below = below
        self.keep = keep
        self.warnings = warnings
        self.count = 0
        self._memfd: Optional[int] = None

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def read(self) -> None:
        try:
            for member in members(self.source):
                self.count += 1
                self.add(member)
        finally:
            if self._memfd is not None:
                os.close(self._memfd)

    def _directory(self, parts: list[str], member: Member) -> Optional[Node]:
        """The directory that holds ``parts[-1]``, made as needed, or ``None`` (warned)."""
        node = self.root
        for i, part in enumerate(parts[:-1]):
            assert node.children is not None
            child = node.children.get(part)
            if child is None or child is _GONE:
                child = node.children[part] = Node(stat.S_IFDIR | 0o755)
            if child.children is None:
                what = "a symlink" if stat.S_ISLNK(child.mode) else "not a directory"
                self.warn(
                    f"{member.name}: left out, {'/'.join(parts[: i + 1])} is {what} in this layer"
                )
                return None
            node = child
        return node

    def add(self, member: Member) -> None:
        parts = _components(member.name)
        if parts is None:
            self.warn(f"{member.name}: left out, the name climbs out of the root ('..')")
            return
        if not parts:
            if member.type in (b"5", b"D"):
                self.root.mode = stat.S_IFDIR | member.mode
            return
        parent = self._directory(parts, member)
        if parent is None:
            return
        assert parent.children is not None
        name = parts[-1]
        if name == _OPAQUE:
            parent.opaque = True
            return
        if name.startswith(_WHITEOUT):
            parent.children[name[len(_WHITEOUT) :]] = _GONE
            return
        if member.type == _HARDLINK:
            node = self._hard_link(member)
            if node is not None:
                parent.children[name] = node
            return
        kind = _TYPES.get(member.type)
        if kind is None:
            self.warn(f"{member.name}: left out, unknown member type {member.type!r}")
            return
        existing = parent.children.get(name)
        if kind == stat.S_IFDIR and existing is not None and existing.children is not None:
            existing.mode = kind | member.mode  # directories merge
            return
        node = Node(kind | member.mode, member.linkname if kind == stat.S_IFLNK else "")
        if kind == stat.S_IFREG:
            self._read_content(node, member)
        parent.children[name] = node

    def _hard_link(self, member: Member) -> Optional[Node]:
        parts = _components(member.linkname)
        target = None
        if parts:
            target = _lookup(self.root, parts)
            if target is None or target is _GONE:
                target = _lookup(self.below, parts)
        if target is None or target is _GONE or target.children is not None:
            self.warn(f"{member.name}: left out, a hard link to {member.linkname!r}, not a file")
            return None
        return target

    def _read_content(self, node: Node, member: Member) -> None:
        if not (node.mode & 0o111 or self.keep == "all"):
            return
        if member.sparse:
            node.head = _UNREADABLE
            return
        head = self.source.read(min(member.size, HEAD_SIZE))
        if len(head) < min(member.size, HEAD_SIZE):
            raise self.source.truncated(member.name)
        if not node.mode & 0o111 and not head.startswith(b"\x7fELF"):
            return  # all files: only ELF files without exec bits are judged
        node.head = head
        if head.startswith(b"\x7fELF"):
            node.interp = self._interp(head, member)

    def _interp(self, head: bytes, member: Member) -> Union[str, BaseException, None]:
        """``PT_INTERP``, by :func:`binfmt.elf.program_interpreter` over the member's bytes."""
        try:
            header = ElfHeader.decode(head)
        except NotElf:
            return None
        if not header.phnum:
            return None
        prefix = head
        while True:
            fd = self._scratch_file()
            os.ftruncate(fd, 0)
            os.pwrite(fd, prefix, 0)
            try:
                return program_interpreter(fd, header)
            except (BinfmtError, OSError) as exc:
                if len(prefix) >= member.size:
                    return exc  # the whole file was there: the kernel's answer
                if len(prefix) >= _PREFIX_LIMIT:
                    return self._interp_spooled(prefix, header, member)
                # Perhaps only cut short here: read further and try again.
                want = min(member.size, _PREFIX_LIMIT, max(4096, 8 * len(prefix)))
                more = self.source.read(want - len(prefix))
                if len(more) < want - len(prefix):
                    raise self.source.truncated(member.name) from None
                prefix += more

    def _interp_spooled(
        self, prefix: bytes, header: ElfHeader, member: Member
    ) -> Union[str, BaseException, None]:
        """The rare ELF file whose program headers lie far in: the whole file, on disk."""
        with tempfile.TemporaryFile() as spool:
            spool.write(prefix)
            left = member.size - len(prefix)
            while left > 0:
                chunk = self.source.read(min(left, _CHUNK))
                if not chunk:
                    raise self.source.truncated(member.name)
                spool.write(chunk)
                left -= len(chunk)
            spool.flush()
            try:
                return program_interpreter(spool.fileno(), header)
            except (BinfmtError, OSError) as exc:
                return exc

    def _scratch_file(self) -> int:
        if self._memfd is None:
            if hasattr(os, "memfd_create"):
                self._memfd = os.memfd_create("binfmt-elf", os.MFD_CLOEXEC)
            else:  # pragma: no cover - not Linux
                fd, path = tempfile.mkstemp()
                os.unlink(path)
                self._memfd = fd
        return self._memfd


def _lookup(root: Node, parts: Sequence[str]) -> Optional[Node]:
    node: Optional[Node] = root
    for part in parts:
        if node is None or node.children is None:
            return None
        node = node.children.get(part)
    return node


def _merge(lower: Node, upper: Node) -> None:
    """Lay the directory ``upper`` of a layer over ``lower`` (OCI whiteout rules)."""
    assert lower.children is not None and upper.children is not None
    if upper.opaque:
        lower.children.clear()
    for name, node in upper.children.items():
        if node is _GONE:
            lower.children.pop(name, None)
            continue
        below = lower.children.get(name)
        if node.children is not None and below is not None and below.children is not None:
            below.mode = node.mode
            _merge(below, node)
        else:
            lower.children[name] = node
            if node.children is not None:
                _drop_markers(node)


def _drop_markers(directory: Node) -> None:
    """A layer's directory with nothing below it: its whiteouts delete nothing."""
    assert directory.children is not None
    directory.opaque = False
    gone = [n for n, c in directory.children.items() if c is _GONE]
    for name in gone:
        del directory.children[name]
    for child in directory.children.values():
        if child.children is not None:
            _drop_markers(child)


def read_archive(sources: Sequence[Union[str, IO[bytes]]], *, all_files: bool = False) -> Archive:
    """Read tar streams (paths, ``"-"`` for standard input, or binary files) lowest layer
    first, into one tree. ``all_files`` keeps the first bytes of every regular file (for
    ``scan``'s ``all_files``), not only of those with an exec bit.

    Raises :class:`~binfmt.errors.ArchiveError` for a stream that is not tar, is corrupt,
    ends early or is compressed in a way this Python cannot read, and ``OSError`` for a
    file that cannot be opened.
    """
    root = Node(stat.S_IFDIR | 0o755)
    names: list[str] = []
    warnings: list[str] = []
    count = 0
    for given in sources:
        with _opened(given) as source:
            names.append(source.name)
            layer = _Layer(source, root, "all" if all_files else "exec", warnings)
            try:
                layer.read()
            except (EOFError, OSError, ValueError) as exc:
                if isinstance(exc, ArchiveError):
                    raise
                raise ArchiveError(source.name, f"cannot be read: {exc}") from None
            count += layer.count
            root.mode = layer.root.mode
            _merge(root, layer.root)
    return Archive(root, tuple(names), count, tuple(warnings[:100]), len(warnings))


_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
    b"\x28\xb5\x2f\xfd": "zstd",
}


@contextlib.contextmanager
def _opened(given: Union[str, IO[bytes]]) -> Iterator[_Source]:
    with contextlib.ExitStack() as stack:
        if isinstance(given, str):
            name = given
            if given == "-":
                raw: Any = sys.stdin.buffer
            else:
                raw = stack.enter_context(open(given, "rb", buffering=1 << 16))
        else:
            name = getattr(given, "name", None) or "-"
            if not isinstance(name, str):
                name = "-"
            raw = given
        if not hasattr(raw, "peek"):
            raw = io.BufferedReader(raw, 1 << 16)
        magic = raw.peek(6)[:6]
        compression = next((c for m, c in _MAGIC.items() if magic.startswith(m)), None)
        size: Optional[int] = None
        if compression is None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                st = os.fstat(raw.fileno())
                if stat.S_ISREG(st.st_mode):
                    size = st.st_size - raw.tell()
            yield _Source(raw, name, size)
            return
        stream = stack.enter_context(_decompressor(compression, raw, name))
        yield _Source(stream, name, None)


def _decompressor(kind: str, raw: IO[bytes], name: str) -> Any:
    if kind == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "xz":
        import lzma

        return lzma.LZMAFile(raw)
    if kind == "bzip2":
        import bz2

        return bz2.BZ2File(raw)
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
    except ImportError:
        raise ArchiveError(
            name,
            f"zstd-compressed, which Python {sys.version_info[0]}.{sys.version_info[1]} "
            "cannot read (3.14 can): decompress it on the way in, zstd -dc FILE | "
            "binfmt scan --tar -",
        ) from None
    return zstd.ZstdFile(raw)


# -- the root ---------------------------------------------------------------------------


class ArchiveFile(OpenedFile):
    """A file of the archive, as the exec model opens it."""

    __slots__ = ("_interp", "head", "mode", "path")

    def __init__(self, path: str, node: Node, buffer_size: int) -> None:
        self.path = path
        self.mode = node.mode
        head = node.head or b""
        self.head = head[:buffer_size] if stat.S_ISREG(node.mode) else b""
        self._interp = node.interp

    def program_interpreter(self, header: ElfHeader) -> Optional[str]:
        if isinstance(self._interp, BaseException):
            raise self._interp
        return self._interp


class ArchiveRoot(Root):
    """An :class:`Archive`'s tree as the root of an exec: names are paths inside it."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        names = ["standard input" if s == "-" else s for s in archive.sources]
        #: The archive as messages name it ("not found inside image.tar").
        self.label = (
            ", ".join(names)
            if len(names) <= 3
            else f"{names[0]} … {names[-1]} ({len(names)} layers)"
        )

    def __repr__(self) -> str:
        return f"ArchiveRoot({self.label!r})"

    def resolve(self, path: str, *, cwd: str = "/", follow: bool = True) -> str:
        def lookup(done: Sequence[str], name: str) -> tuple[Optional[str], bool]:
            parent = _lookup(self.archive.root, done)  # a directory: walk() checked it
            assert parent is not None and parent.children is not None
            node = parent.children.get(name)
            if node is None:
                raise FileNotFoundError(name)
            if stat.S_ISLNK(node.mode):
                return node.target, False
            return None, node.children is not None

        return "/" + "/".join(walk(path, lookup, cwd=cwd, follow=follow))

    def node(self, name: str) -> Node:
        """The node at ``name`` (a path of the tree, symlinks not followed)."""
        node = _lookup(self.archive.root, [c for c in name.split("/") if c])
        if node is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
        return node

    @contextlib.contextmanager
    def open(self, name: str, buffer_size: int, *, follow: bool = True) -> Iterator[ArchiveFile]:
        node = self.node(name)
        if stat.S_ISLNK(node.mode):
            if not follow:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name)
            name = self.resolve(name)
            node = self.node(name)
        yield self.file(name, node, buffer_size)

    def file(self, name: str, node: Node, buffer_size: int) -> ArchiveFile:
        """The opened file of ``node`` (at ``name``); ``OSError`` for content not read."""
        if node.head is _UNREADABLE:
            raise OSError(errno.EOPNOTSUPP, "a sparse file in the archive: not read", name)
        return ArchiveFile(name, node, buffer_size)

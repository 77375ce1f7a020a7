"""The job and result files of the guest helper (``tests/vm/guest/helper.c``).

The host plans every system call the guest makes as a list of :class:`Op`;
:func:`encode` writes them for ``helper batch``, :func:`decode` reads what
it answered, one :class:`Result` per op (a missing or extra result means the
run was cut short, and is an error).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence
from typing import Optional

import attrs

__all__ = ["Exec", "Op", "Result", "decode", "encode", "errno_name"]


def errno_name(code: int) -> str:
    """``2`` → ``"ENOENT"``; ``0`` → ``"OK"``."""
    if code == 0:
        return "OK"
    return errno.errorcode.get(code, f"E{code}")


@attrs.frozen
class Op:
    """One operation: ``kind`` is the helper's op letter (see helper.c)."""

    kind: str
    path: bytes = b""
    data: bytes = b""
    #: What the host calls it, for reports (not sent).
    label: str = ""

    @classmethod
    def write(cls, path: str, data: bytes, label: str = "") -> Op:
        return cls("W", path.encode(), data, label)

    @classmethod
    def read(cls, path: str, label: str = "") -> Op:
        return cls("R", path.encode(), label=label)

    @classmethod
    def snapshot(cls, path: str, label: str = "") -> Op:
        return cls("S", path.encode(), label=label)

    @classmethod
    def exec(cls, path: str, argv: Sequence[str], label: str = "") -> Op:
        return cls("X", path.encode(), b"".join(a.encode() + b"\0" for a in argv), label)

    @classmethod
    def mount(cls, path: str, label: str = "") -> Op:
        return cls("M", path.encode(), label=label)

    @classmethod
    def umount(cls, path: str, label: str = "") -> Op:
        return cls("U", path.encode(), label=label)

    @classmethod
    def open_write(cls, path: str, label: str = "") -> Op:
        return cls("T", path.encode(), label=label)

    @classmethod
    def copy(cls, source: str, path: str, label: str = "") -> Op:
        return cls("C", path.encode(), source.encode(), label)

    @classmethod
    def unlink(cls, path: str, label: str = "") -> Op:
        return cls("D", path.encode(), label=label)

    @classmethod
    def userns(cls, label: str = "") -> Op:
        return cls("N", label=label)


@attrs.frozen
class Exec:
    """What an ``X`` op saw: the errno of a failed execve, or the exit status and output."""

    errno: Optional[str]
    status: Optional[int]
    output: bytes

    def lines(self) -> list[str]:
        return self.output.decode(errors="replace").splitlines()

    def value(self, key: str) -> Optional[str]:
        """The first ``key VALUE`` line the interpreter (showargs) printed."""
        for line in self.lines():
            k, _, v = line.partition(" ")
            if k == key:
                return v
        return None

    def argv(self) -> list[str]:
        return [line[4:] for line in self.lines() if line.startswith("arg ")]


@attrs.frozen
class Result:
    """The helper's answer to one op."""

    op: Op
    #: ``"OK"`` or the errno name.
    error: str
    payload: bytes

    def snapshot(self) -> list[tuple[bytes, str, bytes]]:
        """An ``S`` result: (name, errno name, content) in readdir order."""
        out, p, data = [], 0, self.payload
        while p < len(data):
            (n,) = struct.unpack_from("<I", data, p)
            name = data[p + 4 : p + 4 + n]
            err, clen = struct.unpack_from("<iI", data, p + 4 + n)
            start = p + 12 + n
            out.append((name, errno_name(err), data[start : start + clen]))
            p = start + clen
        return out

    def exec(self) -> Exec:
        kind, value = struct.unpack_from("<ci", self.payload)
        output = self.payload[5:]
        if kind == b"E":
            return Exec(errno_name(value), None, output)
        return Exec(None, value, output)


def encode(ops: Sequence[Op]) -> bytes:
    out = bytearray()
    for op in ops:
        out += op.kind.encode()
        out += struct.pack("<I", len(op.path)) + op.path
        out += struct.pack("<I", len(op.data)) + op.data
    return bytes(out)


def decode(ops: Sequence[Op], data: bytes) -> list[Result]:
    """Pair each op with its answer; ``ValueError`` if the counts or kinds disagree."""
    results: list[Result] = []
    p = 0
    while p < len(data):
        if len(results) >= len(ops):
            raise ValueError(f"more results than the {len(ops)} ops planned")
        kind = chr(data[p])
        err, n = struct.unpack_from("<iI", data, p + 1)
        op = ops[len(results)]
        if kind != op.kind:
            raise ValueError(f"result {len(results)} is for op {kind!r}, planned {op.kind!r}")
        results.append(Result(op, errno_name(err), data[p + 9 : p + 9 + n]))
        p += 9 + n
    if len(results) != len(ops):
        raise ValueError(f"{len(results)} results for {len(ops)} ops: the run was cut short")
    return results

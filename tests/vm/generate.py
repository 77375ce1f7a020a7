"""Register lines and operation sequences generated for a matrix run, from one seed.

The same grammar as ``tests/test_kernel_differential.py`` (mangled lines
and plausible ones), driven by :class:`random.Random` so that a run is
reproduced exactly from the seed it records. Interpreters come from a short
list of paths whose state in the guest is known (see ``GUEST_PATHS`` in
:mod:`tests.vm.matrix`), so the answer of an ``F`` line is predictable.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Optional

__all__ = ["INTERPRETERS", "lines", "sequences"]

D = b"\x01"  # stands for "the delimiter" until the line is assembled

_DELIMS = [b":", b":", b":", b"|", b"Q", b"\x00", b" ", b"x", b"A", b"a", b"\n", b"P", b"F"]
_DELIMS += [b"C", b"O", b"#", b"\\", b"M", b"E", b"0", b"\xff", b"T"]
_NAMES = [b"n", b"", b".", b"..", b"...", b"a/b", b"ab\x00cd", b"register", b"status"]
_NAMES += [b"sp ace", b"nl\n", b"\xff\xfe", b"x" * 255, b"x" * 256, D]
_TYPES = [b"M", b"M", b"M", b"E", b"E", b"", b"m", b"MM", b"X", b"e"]
_OFFSETS = [b"", b"", b"0", b"+5", b"-0", b"-1", b"5\n", b"0x10", b" 5", b"5 ", b"007"]
_OFFSETS += [b"2147483647", b"2147483648", b"4294967296", b"+", b"-", b"\n", b"1\x002", b"+-1"]
_PIECES = [b"A", b"B", b"\\x41", b"\\xff", b"\\x00", b"\\xAb", b"\\x4", b"\\xZZ", b"\\x", b"\\"]
_PIECES += [b"\\\\", b"\\n", b"\x00", b"x", b"/", b".", D, b"\n", b"\\X41", b"\\x7fELF"]
#: Interpreters of generated lines: their open_exec() answer in the guest is known.
INTERPRETERS = [b"/bin/true", b"/bin/true", b"/t/showargs", b"", b"cat", b"/bin/x y"]
INTERPRETERS += [b"/nonexistent", b"/etc/passwd", b"/etc", b"/bin/\x00x", b"/bin/true\n"]
INTERPRETERS += [b"/etc/passwd/x", D, b".", b"/bin/true/", b"/nonexistent/../bin/true", b"bin/cat"]
_ENDINGS = [b"", b"", b"", b"\n", b"\n\n", b"\r\n", b" "]


def _binary(r: random.Random, lo: int, hi: int) -> bytes:
    return bytes(r.randrange(256) for _ in range(r.randint(lo, hi)))


def _hexish(r: random.Random) -> bytes:
    k = r.randrange(4)
    if k == 0:
        return b"".join(r.choice(_PIECES) for _ in range(r.randint(0, 6)))
    if k == 1:
        return _binary(r, 0, 8)
    if k == 2:
        return b"\\x41" * r.randint(1, 260)
    return b"A" * r.randint(1, 260)


def _flags(r: random.Random) -> bytes:
    alphabet = "POCF" if r.random() < 0.5 else "POCFTLDp \n:\r"
    return "".join(r.choice(alphabet) for _ in range(r.randint(0, 4))).encode()


def mangled(r: random.Random, interpreters: Sequence[bytes] = INTERPRETERS) -> bytes:
    d = r.choice(_DELIMS)
    name = r.choice(_NAMES) if r.random() < 0.5 else _binary(r, 1, 12)
    offset = r.choice(_OFFSETS) if r.random() < 0.6 else str(r.randint(0, 300)).encode()
    fields = [name, r.choice(_TYPES), offset, _hexish(r), _hexish(r), r.choice(interpreters)]
    if r.random() < 0.5:
        fields[4] = b""
    line = d + d.join(fields) + d + _flags(r) + r.choice(_ENDINGS)
    line = line.replace(D, d)
    edit = r.randrange(10)
    if edit == 0 and line:
        i = r.randrange(len(line))
        line = line[:i] + line[i + 1 :]
    elif edit == 1:
        i = r.randint(0, len(line))
        line = line[:i] + bytes([r.randrange(256)]) + line[i:]
    elif edit == 2:
        line = line[:1] + r.randint(1900, 1930) * b"n" + line[1:]
    return line


def _safe(r: random.Random, d: bytes, lo: int, hi: int, extra: bytes = b"") -> bytes:
    while True:
        b = _binary(r, lo, hi)
        if d not in b and b"\x00" not in b and not any(c in b for c in extra):
            return b


def plausible(
    r: random.Random,
    names: Optional[list[bytes]] = None,
    interpreters: Optional[list[bytes]] = None,
) -> bytes:
    """A mostly well-formed line (most are accepted, so their entry files are compared).

    With ``names`` (the sequences), no field holds a newline: the fake
    kernel keeps entries as entry files, which a newline makes ambiguous.
    With ``interpreters``, the interpreter is one of them: the sequences
    run the fake kernel on the host, where a random relative name the
    guest happens to have (its ``/t``) does not exist.
    """
    d = r.choice([b":", b":", b"|", b"Q", b"\x00", b" "])
    nl = b"\n" if names else b""
    if names:
        name = r.choice(names)
    else:
        name = _safe(r, d, 1, 10, b"/")
        if name in (b".", b".."):
            name = b"n"
    if r.random() < 0.5:
        size = r.randint(1, 40)
        magic = _binary(r, size, size)
        mask = None if r.random() < 0.5 else _binary(r, size, size)
        offset = r.randint(0, 256 - size)
        literal = r.random() < 0.5

        def esc(data: bytes) -> bytes:
            return b"".join(
                bytes([b]) if literal and chr(b).isalnum() and bytes([b]) != d else b"\\x%02x" % b
                for b in data
            )

        fields = [
            name,
            b"M",
            str(offset).encode() if offset or r.random() < 0.5 else b"",
            esc(magic),
            b"" if mask is None else esc(mask),
        ]
    else:
        fields = [name, b"E", r.choice([b"", b"7"]), _safe(r, d, 1, 10, b"/" + nl), b""]
    if interpreters:
        fields.append(r.choice(interpreters).replace(D, d))
    else:
        interp = r.choice([b"/bin/true", b"/bin/true", b"/nonexistent/qemu", b"/etc/passwd"])
        fields.append(interp if r.random() < 0.7 else _safe(r, d, 1, 10, b"/" + nl))
    letters = "".join(r.choice("POCF") for _ in range(r.randint(0, 4)))
    return d + d.join(fields) + d + letters.encode() + r.choice([b"", b"\n"])


def lines(seed: int, count: int) -> list[bytes]:
    """``count`` lines, half mangled, half plausible."""
    r = random.Random(seed)
    return [mangled(r) if r.random() < 0.5 else plausible(r) for _ in range(count)]


#: One step of a sequence: ("register", line) or (command, name) with command
#: one of enable/disable/remove, or ("status", "1"/"0"/"-1").
Step = tuple[str, bytes]

_SEQ_NAMES = [b"a", b"b", b"c", b"qemu-aarch64"]
# The fake kernel opens F interpreters on the host: only paths that are the
# same there and in the guest (and not /etc/passwd/x: the fake says ENOENT
# where the kernel says ENOTDIR, reported to the fake's owners).
_SEQ_INTERPRETERS = [b"/bin/true", b"/bin/true", b"", b"cat", b"/nonexistent", b"/etc/passwd"]
_SEQ_INTERPRETERS += [b"/etc", D]


def sequences(seed: int, count: int, length: int = 12) -> list[list[Step]]:
    """Random write sequences for the fake kernel: register, enable, disable, remove, status."""
    r = random.Random(seed)
    out = []
    for _ in range(count):
        seq: list[Step] = []
        for _ in range(r.randint(1, length)):
            k = r.random()
            if k < 0.4:
                if r.random() < 0.85:
                    line = plausible(r, _SEQ_NAMES, _SEQ_INTERPRETERS)
                else:
                    line = mangled(r, _SEQ_INTERPRETERS)
                    while b"\n" in line[:-1]:  # see plausible(): no newline in a field
                        line = mangled(r, _SEQ_INTERPRETERS)
                seq.append(("register", line))
            elif k < 0.8:
                seq.append((r.choice(["enable", "disable", "remove"]), r.choice(_SEQ_NAMES)))
            else:
                seq.append(("status", r.choice([b"1", b"0", b"-1", b"0", b"1"])))
        out.append(seq)
    return out

"""Register lines at the parser's boundaries: the real kernel against the library, by stratum.

Each stratum starts from a well-formed line (random delimiter, name, fields
and flags) and puts one thing exactly at a rule's edge, so that every rule
of ``create_entry()`` decides a good share of the lines instead of the
first syntax check deciding most of them:

* ``mask-size``: a mask of the magic's size minus one, equal, plus one
  (also shortened by a raw NUL, or holding ``\\x00`` bytes);
* ``window``: offset + magic size of 254, 255, 256 and 257 (the 256-byte
  buffer), sizes 1 to 257, offsets near ``INT_MAX``;
* ``name-length``: names of 254, 255 and 256 bytes (ASCII or two-byte UTF-8),
  alone or with another fault (a bad flag, a missing ``F`` interpreter);
* ``line-length``: lines of 10, 11, 1919, 1920 and 1921 bytes, with and
  without the trailing newline;
* ``flags``: letters in any order, repeated, lower case, with one or two
  newlines, a flag letter as the delimiter;
* ``newline-fields``: interpreters and extensions that hold newlines, also
  lines that look like the entry file's own (``flags: ``, ``offset 0``), so
  that the entry file the kernel then writes is ambiguous.

The kernel's answer (errno, or the bytes of the entry file) must be
:func:`tests.kernel_model.expected`'s, and every entry the kernel accepted
must read back through :meth:`binfmt.BinfmtMisc.state` as the entry parsed
from the line, or, where the entry file is ambiguous, as the documented
reading (the shorter interpreter) among the entries that write that text.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from collections.abc import Iterator

import pytest

from binfmt import Entry
from binfmt.errors import InvalidEntry
from binfmt.kernel import KernelRules
from binfmt.sandbox import Sandbox

from .entry_readings import readings
from .kernel_model import expected, kernel_answer

pytestmark = pytest.mark.kernel

SEED = int(os.environ.get("BINFMT_REGISTER_SEED", "10"))
RULES = KernelRules.running()
BUF = RULES.buffer_size
MAX = RULES.max_register_length
DELIMITERS = [b":", b":", b"|", b"!", b"%", b",", b"\x01", b" "]


def _esc(rng: random.Random, data: bytes, delim: bytes) -> bytes:
    """Magic or mask bytes as a register line may spell them: literal or ``\\xHH``."""
    out = b""
    for b in data:
        raw = bytes([b])
        if raw.isalnum() and raw != delim and rng.random() < 0.5:
            out += raw
        else:
            out += b"\\x%02x" % b
    return out


def _name(rng: random.Random, delim: bytes) -> bytes:
    return b"n" + bytes(rng.choice(b"abcXYZ019-_.") for _ in range(rng.randint(0, 8)))


def _line(
    delim: bytes,
    name: bytes,
    kind: bytes,
    offset: bytes,
    magic: bytes,
    mask: bytes,
    interp: bytes,
    flags: bytes,
    end: bytes = b"",
) -> bytes:
    d = delim
    return d + d.join([name, kind, offset, magic, mask, interp]) + d + flags + end


def _magic_line(rng: random.Random, **over: bytes) -> bytes:
    d = over.get("delim", rng.choice(DELIMITERS))
    size = rng.randint(1, 8)
    magic = bytes(rng.randrange(256) for _ in range(size))
    fields = {
        "delim": d,
        "name": _name(rng, d),
        "kind": b"M",
        "offset": str(rng.randint(0, 16)).encode() if rng.random() < 0.5 else b"",
        "magic": _esc(rng, magic, d),
        "mask": b""
        if rng.random() < 0.5
        else _esc(rng, bytes(rng.randrange(256) for _ in magic), d),
        "interp": b"/bin/true",
        "flags": rng.choice([b"", b"P", b"OC", b"F", b"POCF"]),
        "end": rng.choice([b"", b"\n"]),
    }
    fields.update(over)
    return _line(
        *(
            fields[k]
            for k in ("delim", "name", "kind", "offset", "magic", "mask", "interp", "flags", "end")
        )
    )


def cases() -> Iterator[tuple[str, bytes]]:
    """(stratum, line) for every case, deterministically from SEED."""
    rng = random.Random(SEED)
    for _ in range(300):
        d = rng.choice(DELIMITERS)
        size = rng.choice([1, 2, 3, 4, 8, 16, 64, 128, 255, 256, rng.randint(1, 256)])
        magic = bytes(rng.randrange(256) for _ in range(size))
        mask_size = size + rng.choice([-1, 0, 1])
        mask = bytes(rng.randrange(256) for _ in range(mask_size))
        spelled = _esc(rng, mask, d)
        twist = rng.random()
        if twist < 0.1 and mask_size:  # a raw NUL cuts the mask short
            spelled = spelled[: len(spelled) // 2] + b"\0" + spelled[len(spelled) // 2 :]
        elif twist < 0.2:  # \x00 bytes count toward the size
            spelled = b"\\x00" * mask_size
        yield (
            "mask-size",
            _magic_line(rng, delim=d, offset=b"", magic=_esc(rng, magic, d), mask=spelled),
        )
    for _ in range(300):
        size = rng.choice([1, 2, 3, 100, 200, 255, 256, 257, rng.randint(1, 257)])
        total = rng.choice([BUF - 2, BUF - 1, BUF, BUF + 1])
        offset = max(total - size, 0)
        magic = bytes(rng.randrange(256) for _ in range(size))
        d = rng.choice(DELIMITERS)
        offset_text = rng.choice([str(offset), str(offset), "+" + str(offset), "0" + str(offset)])
        if rng.random() < 0.05:
            offset_text = rng.choice(["2147483647", "2147483648", "-0", str(2**32 + offset)])
        mask = b"" if rng.random() < 0.5 else bytes(rng.randrange(256) for _ in magic)
        yield (
            "window",
            _magic_line(
                rng,
                delim=d,
                offset=offset_text.encode(),
                magic=_esc(rng, magic, d),
                mask=_esc(rng, mask, d),
            ),
        )
    for _ in range(200):
        length = rng.choice([254, 255, 256])
        if rng.random() < 0.3:  # two-byte characters: bytes, not characters, count
            name = "é" * (length // 2) + "a" * (length % 2)
            raw = name.encode()
        else:
            raw = b"n" * length
        fault = rng.choice(
            [{}, {}, {}, {"flags": b"Px"}, {"interp": b"/nonexistent", "flags": b"F"}]
        )
        if rng.random() < 0.3:
            yield (
                "name-length",
                _line(
                    b":",
                    raw,
                    b"E",
                    b"",
                    b"ext",
                    b"",
                    fault.get("interp", b"/bin/true"),
                    fault.get("flags", b""),
                ),
            )
        else:
            yield "name-length", _magic_line(rng, delim=b":", name=raw, **fault)
    for _ in range(150):
        target = rng.choice([10, 11, 12, MAX - 1, MAX, MAX + 1])
        end = rng.choice([b"", b"\n"])
        base = _line(b":", b"n", b"E", b"", b"x", b"", b"/", b"", end)
        pad = target - len(base)
        if pad >= 0:
            # Grow the interpreter (or the name, up to NAME_MAX) to the target length.
            if rng.random() < 0.5 or pad > 250:
                line = _line(b":", b"n", b"E", b"", b"x", b"", b"/" + b"i" * pad, b"", end)
            else:
                line = _line(b":", b"n" * (1 + pad), b"E", b"", b"x", b"", b"/", b"", end)
        else:
            line = (b":n:E::x" + b":" * 8)[:target]
        assert len(line) == target or pad < 0, (target, line)
        yield "line-length", line
    for _ in range(200):
        alphabet = rng.choice([b"POCF", b"POCF", b"POCFpoTLD "])
        letters = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 5)))
        end = rng.choice([b"", b"", b"\n", b"\n\n", b"\r\n"])
        delim = rng.choice([b":", b":", b"P", b"O", b"C", b"F", b"|"])
        yield "flags", _magic_line(rng, delim=delim, flags=letters, end=end, magic=b"AB", mask=b"")
    fragments = [
        b"\n",
        b"\nflags: ",
        b"\nflags: P",
        b"\nflags: \noffset 0\nmagic 41",
        b"\nflags: \nextension .x",
        b"\noffset 3",
        b"\nmagic 00",
        b"\nenabled",
    ]
    for _ in range(250):
        frag = rng.choice(fragments)
        where = rng.choice(["interp-end", "interp-mid", "ext", "both"])
        interp = b"/bin/true"
        ext = b"zz"
        if where in ("interp-end", "both"):
            interp = b"/bin/true" + frag
        if where == "interp-mid":
            interp = b"/bin" + frag + b"/true"
        if where in ("ext", "both"):
            ext = b"e" + rng.choice(fragments)
        d = rng.choice([b":", b"|"])
        flags = rng.choice([b"", b"P", b"OC"])
        if where in ("ext", "both") or rng.random() < 0.4:
            yield "newline-fields", _line(d, _name(rng, d), b"E", b"", ext, b"", interp, flags)
        else:
            yield "newline-fields", _magic_line(rng, delim=d, interp=interp, flags=flags)


@pytest.mark.timeout(600)
def test_register_lines_at_the_edges(binfmt_sandbox: Sandbox) -> None:
    """Accept/refuse (errno) and entry file bytes are the kernel's; entries read back exactly."""
    box = binfmt_sandbox
    strata: Counter[str] = Counter()
    outcomes: Counter[tuple[str, str]] = Counter()
    ambiguous = 0
    deciding: Counter[str] = Counter()
    failures = []
    for stratum, line in cases():
        try:
            got = kernel_answer(box, line)
            if got[0] == "ok":
                # The library reads the kernel's entry file back (state(), as status does).
                state = box.misc.state()
                assert state.unreadable == (), (line, state.unreadable_reasons)
                (read,) = state.entries
                text = got[1]
                assert isinstance(text, bytes)
                options = readings(read.name, text.decode("utf-8", "surrogateescape"))
                parsed = Entry.parse(line, RULES)
                assert parsed in options, (line, options)
                assert read == options[0], (line, read, options)
                ambiguous += len(options) > 1
        finally:
            box.reset()
        want = expected(line, RULES)
        if got != want:
            failures.append((stratum, line[:80], got, want))
        try:
            Entry.parse(line, RULES)
            deciding["accepted by the parser"] += 1
        except InvalidEntry as exc:
            deciding[f"{exc.field}: {re.sub(r'[0-9]+', 'N', exc.rule)[:60]}"] += 1
        strata[stratum] += 1
        outcomes[(stratum, "accepted" if got[0] == "ok" else str(got[1]))] += 1
    total = sum(strata.values())
    print(f"\nregister lines: {total}, per stratum and kernel answer:")
    for (stratum, outcome), n in sorted(outcomes.items()):
        print(f"  {stratum:15} {outcome:13} {n:4}  ({100 * n / strata[stratum]:.0f}%)")
    print(f"  accepted lines whose entry file two entries could have written: {ambiguous}")
    print("the parser's deciding rule:")
    for rule, n in deciding.most_common():
        print(f"  {rule:75} {n:4}  ({100 * n / total:.1f}%)")
    assert not failures, failures[:5]
    for stratum in strata:
        assert strata[stratum] >= 0.05 * total, (stratum, strata)
        assert outcomes[(stratum, "accepted")] >= 0.1 * strata[stratum], (stratum, outcomes)
        refused = strata[stratum] - outcomes[(stratum, "accepted")]
        assert stratum == "newline-fields" or refused >= 0.1 * strata[stratum], (
            stratum,
            outcomes,
        )
    assert outcomes[("name-length", "ENAMETOOLONG")] >= 0.1 * strata["name-length"]
    assert outcomes[("name-length", "ENOENT")] >= 1  # F opens before the name is looked up
    assert ambiguous >= 3


@pytest.mark.parametrize(
    "line",
    [
        b":a/" + b"b" * 300 + b":M::AB::/bin/true:",  # '/' in a name too long
        b":" + b"b" * 300 + b":E::a/b::/bin/true:",  # '/' in the extension
        b":" + b"b" * 300 + b":E:::::/bin/true:",  # no extension
        b":" + b"b" * 300 + b":M::\x00AB::/bin/true:",  # the magic starts with a raw NUL
        b":register:E::a/b::/bin/true:",
        b":register:M::\x00AB::/bin/true:",
    ],
)
def test_syntax_faults_come_before_the_name_lookup(binfmt_sandbox: Sandbox, line: bytes) -> None:
    """create_entry() refuses a bad field (EINVAL) before the name is looked up
    (ENAMETOOLONG, EEXIST): the parser must decide in the kernel's order, not
    leave the field to the Entry constructor, which runs after the name rules
    (surviving mutants of the parser's name, extension and magic checks)."""
    box = binfmt_sandbox
    try:
        got = kernel_answer(box, line)
    finally:
        box.reset()
    assert got == ("err", "EINVAL")
    assert expected(line, RULES) == got


@pytest.mark.parametrize(
    "line",
    [
        b":n:M::AB\\::/bin/true:",  # a backslash last in the magic
        b":n:M::AB::\\\\:",  # an interpreter of two backslashes
        b":n:M::A\\q::/bin/true:",  # a backslash before a byte that is not x
        b":n:M::\\\\x41::/bin/true:",  # an escaped backslash before x41
        b":n:M::AB:\\\\:/bin/true:",  # a mask of two backslashes
    ],
)
def test_backslashes_that_are_not_hex_escapes(binfmt_sandbox: Sandbox, line: bytes) -> None:
    """string_unescape() keeps a backslash it cannot use: the entry file is the kernel's
    (surviving mutants of _unescape_hex's end-of-field tests)."""
    box = binfmt_sandbox
    try:
        got = kernel_answer(box, line)
    finally:
        box.reset()
    assert got == expected(line, RULES)


def test_edge_cases_are_what_the_library_refuses() -> None:
    """The strata's lines are decided by the rules they aim at (no kernel needed)."""
    reasons: Counter[str] = Counter()
    for stratum, line in cases():
        try:
            Entry.parse(line, RULES)
        except InvalidEntry as exc:
            reasons[f"{stratum}: {exc.field}"] += 1
    for needed in (
        "mask-size: mask",
        "window: magic",
        "name-length: name",
        "line-length: line",
        "flags: flags",
        "flags: delimiter",
    ):
        assert reasons[needed] >= 10, (needed, reasons)

"""Differential test: generated register lines, the real kernel vs. the library.

Each generated line is written to a private binfmt_misc instance. The
kernel's answer (errno, or the entry file it creates) must equal what
:meth:`binfmt.Entry.parse` and :meth:`binfmt.Entry.to_status` predict.
``BINFMT_DIFF_EXAMPLES`` raises the number of lines tried (default 1500).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binfmt.kernel import KernelRules
from binfmt.sandbox import Sandbox

from .kernel_model import expected, kernel_answer

pytestmark = pytest.mark.kernel

EXAMPLES = int(os.environ.get("BINFMT_DIFF_EXAMPLES", "1500"))
D = b"\x01"  # placeholder for "the delimiter", replaced when the line is assembled

delimiters = st.sampled_from(
    [
        b":",
        b":",
        b":",
        b"|",
        b"Q",
        b"\x00",
        b" ",
        b"x",
        b"A",
        b"a",
        b"\n",
        b"P",
        b"F",
        b"C",
        b"#",
        b"\\",
        b"M",
        b"E",
        b"0",
        b"\xff",
        b"T",
    ]
)
names = st.one_of(
    st.sampled_from(
        [
            b"n",
            b"",
            b".",
            b"..",
            b"...",
            b"a/b",
            b"ab\x00cd",
            b"register",
            b"status",
            b"sp ace",
            b"nl\n",
            b"\xff\xfe",
            b"x" * 255,
            b"x" * 256,
            D,
        ]
    ),
    st.binary(min_size=1, max_size=12),
)
types = st.sampled_from([b"M", b"M", b"M", b"E", b"E", b"", b"m", b"MM", b"X", b"e"])
offsets = st.one_of(
    st.sampled_from(
        [
            b"",
            b"",
            b"0",
            b"+5",
            b"-0",
            b"-1",
            b"5\n",
            b"0x10",
            b" 5",
            b"5 ",
            b"007",
            b"2147483647",
            b"2147483648",
            b"4294967296",
            b"+",
            b"-",
            b"\n",
            b"1\x002",
            b"+-1",
        ]
    ),
    st.integers(0, 300).map(lambda n: str(n).encode()),
    st.binary(max_size=4),
)
pieces = st.sampled_from(
    [
        b"A",
        b"B",
        b"\\x41",
        b"\\xff",
        b"\\x00",
        b"\\xAb",
        b"\\x4",
        b"\\xZZ",
        b"\\x",
        b"\\",
        b"\\\\",
        b"\\n",
        b"\x00",
        b"x",
        b"/",
        b".",
        D,
        b"\n",
        b"\\X41",
        b"\\x7fELF",
    ]
)
hexish = st.one_of(
    st.lists(pieces, max_size=6).map(b"".join),
    st.binary(max_size=8),
    st.integers(1, 260).map(lambda n: b"\\x41" * n),
    st.integers(1, 260).map(lambda n: b"A" * n),
)
interpreters = st.sampled_from(
    [
        b"/bin/true",
        b"/bin/true",
        b"",
        b"cat",
        b"/bin/x y",
        b"/nonexistent",
        b"/etc/passwd",
        b"/etc",
        b"/bin/\x00x",
        b"/bin/true\n",
        b"/etc/passwd/x",
        D,
    ]
)
flag_texts = st.one_of(
    st.text(alphabet="POCF", max_size=4).map(str.encode),
    st.text(alphabet="POCFTLDp \n:\r", max_size=4).map(str.encode),
)
endings = st.sampled_from([b"", b"", b"", b"\n", b"\n\n", b"\r\n", b" "])


@st.composite
def register_lines(draw: st.DrawFn) -> bytes:
    d = draw(delimiters)
    fields = [
        draw(names),
        draw(types),
        draw(offsets),
        draw(hexish),
        draw(hexish),
        draw(interpreters),
    ]
    if draw(st.booleans()):
        fields[4] = b""  # no mask: the common case
    line = d + d.join(fields) + d + draw(flag_texts) + draw(endings)
    line = line.replace(D, d)
    edit = draw(st.integers(0, 9))
    if edit == 0 and line:  # delete a byte
        i = draw(st.integers(0, len(line) - 1))
        line = line[:i] + line[i + 1 :]
    elif edit == 1:  # insert a byte
        i = draw(st.integers(0, len(line)))
        line = line[:i] + draw(st.binary(min_size=1, max_size=1)) + line[i:]
    elif edit == 2:  # grow towards the length limit
        line = line[:1] + draw(st.integers(1900, 1930)) * b"n" + line[1:]
    return line


@st.composite
def plausible_lines(draw: st.DrawFn) -> bytes:
    """Lines that are mostly well-formed, so that many are accepted and rendered."""
    d = draw(st.sampled_from([b":", b":", b"|", b"Q", b"\x00", b" "]))
    safe = st.binary(min_size=1, max_size=10).filter(lambda b: d not in b and b"\x00" not in b)
    name = draw(safe.filter(lambda b: b"/" not in b and b not in (b".", b"..")))
    if draw(st.booleans()):
        size = draw(st.integers(1, 40))
        magic = draw(st.binary(min_size=size, max_size=size))
        # The mask one byte short or long, the window one byte past the
        # buffer, now and then: the rules' edges (tests/test_kernel_register_edges.py
        # aims at them systematically).
        mask_size = size + draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
        mask = draw(st.one_of(st.none(), st.binary(min_size=mask_size, max_size=mask_size)))
        offset = draw(st.integers(0, 256 - size) | st.just(257 - size))
        literal = draw(st.booleans())

        def esc(data: bytes) -> bytes:
            return b"".join(
                bytes([b]) if literal and chr(b).isalnum() and bytes([b]) != d else b"\\x%02x" % b
                for b in data
            )

        fields = [
            name,
            b"M",
            str(offset).encode() if offset or draw(st.booleans()) else b"",
            esc(magic),
            b"" if mask is None else esc(mask),
        ]
    else:
        ext = draw(safe.filter(lambda b: b"/" not in b))
        fields = [name, b"E", draw(st.sampled_from([b"", b"7"])), ext, b""]
    fields.append(draw(safe) if draw(st.booleans()) else b"/bin/true")
    line = d + d.join(fields) + d + draw(st.text(alphabet="POCF", max_size=4)).encode()
    return line + draw(st.sampled_from([b"", b"\n"]))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(line=st.one_of(register_lines(), plausible_lines()))
def test_kernel_and_library_agree(binfmt_sandbox: Sandbox, line: bytes) -> None:
    """For any line, the kernel's accept/refuse (errno) and entry text equal the library's."""
    try:
        got = kernel_answer(binfmt_sandbox, line)
    finally:
        binfmt_sandbox.reset()
    assert got == expected(line, KernelRules.running())

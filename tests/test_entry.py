"""The entry model: construction rules, rendering, parsing details and matching."""

from __future__ import annotations

import errno

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from binfmt import Entry, EntryType, Flags, InvalidEntry, KernelRules, MalformedStatus

K618 = KernelRules.for_release("6.18.44")
K61 = KernelRules.for_release("6.1.176")
K44 = KernelRules.for_release("4.4.0")
K73 = KernelRules.for_release("7.3.0")


def magic_entry(**kw: object) -> Entry:
    base: dict[str, object] = {"name": "t", "interpreter": "/bin/true", "magic": b"AB"}
    base.update(kw)
    return Entry(**base)  # type: ignore[arg-type]


# -- construction -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "err"),
    [
        ({"name": ""}, "name", errno.EINVAL),
        ({"name": "."}, "name", errno.EINVAL),
        ({"name": ".."}, "name", errno.EINVAL),
        ({"name": "a/b"}, "name", errno.EINVAL),
        ({"name": "a\0b"}, "name", errno.EINVAL),
        ({"name": "status"}, "name", errno.EEXIST),
        ({"name": "register"}, "name", errno.EEXIST),
        ({"name": "n" * 256}, "name", errno.ENAMETOOLONG),
        ({"interpreter": ""}, "interpreter", errno.EINVAL),
        ({"magic": b""}, "magic", errno.EINVAL),
        ({"mask": b"\xff"}, "mask", errno.EINVAL),
        ({"offset": -1}, "offset", errno.EINVAL),
        ({"offset": 255}, "magic", errno.EINVAL),
        ({"magic": b"A" * 257}, "magic", errno.EINVAL),
        ({"extension": "exe"}, "extension", errno.EINVAL),
    ],
)
def test_constructor_refuses_what_every_kernel_refuses(
    kwargs: dict[str, object], field: str, err: int
) -> None:
    """Invalid fields raise InvalidEntry naming the field, with the kernel's errno."""
    with pytest.raises(InvalidEntry) as info:
        magic_entry(**kwargs)
    assert info.value.field == field
    assert info.value.errno == err
    assert str(info.value).startswith(f"invalid {field} ")


def test_invalid_entry_is_a_value_error() -> None:
    """InvalidEntry can be caught as ValueError by code that does not know the library."""
    with pytest.raises(ValueError, match="invalid name '': must not be empty"):
        magic_entry(name="")


def test_extension_entry_rules() -> None:
    """An E entry needs an extension without '/', and has no magic, mask or offset."""
    ok = Entry("e", "/bin/wine", type=EntryType.EXTENSION, extension="exe")
    assert ok.size == 0
    for bad in ({"extension": ""}, {"extension": "a/b"}, {"extension": None}):
        with pytest.raises(InvalidEntry):
            Entry("e", "/i", type=EntryType.EXTENSION, **bad)
    with pytest.raises(InvalidEntry, match="no offset, magic or mask"):
        Entry("e", "/i", type=EntryType.EXTENSION, extension="x", magic=b"A")


def test_flags_from_letters_adds_implied_bits_and_prints_in_kernel_order() -> None:
    """C implies O, repeats are ignored, and letters print as P O C F."""
    assert Flags.from_letters("FCOP").letters == "POCF"
    assert Flags.from_letters("C").letters == "OC"
    assert Flags.from_letters("PPP").letters == "P"
    assert Flags.from_letters("").letters == ""
    assert magic_entry(flags="CF").flags == Flags.CREDENTIALS | Flags.OPEN_BINARY | Flags.FIX_BINARY
    with pytest.raises(InvalidEntry, match="'x' is not a flag letter"):
        Flags.from_letters("x")


def test_check_applies_one_kernels_limits() -> None:
    """check() refuses what only some kernels refuse: 128-byte buffer before 5.1, F before 4.8."""
    wide = magic_entry(offset=120, magic=b"A" * 10)
    assert wide.check(K618) is wide
    with pytest.raises(InvalidEntry, match="at most 128"):
        wide.check(KernelRules.for_release("5.0"))
    fixed = magic_entry(flags="F")
    with pytest.raises(InvalidEntry, match="flag 'F' is not accepted"):
        fixed.check(KernelRules.for_release("4.7"))
    fixed.check(KernelRules.for_release("4.8"))


# -- rendering ----------------------------------------------------------------


SPEC_STATUS = [
    (
        ":m1:M::\\x7fELF\\x02::/bin/cat:",
        b"enabled\ninterpreter /bin/cat\nflags: \noffset 0\nmagic 7f454c4602\n",
    ),
    (
        ":m2:M:3:\\xff\\xfe:\\x0f\\xf0:/usr/bin/x y:POC",
        b"enabled\ninterpreter /usr/bin/x y\nflags: POC\noffset 3\nmagic fffe\nmask 0ff0\n",
    ),
    (
        ":e1:E::exe::/usr/bin/wine:",
        b"enabled\ninterpreter /usr/bin/wine\nflags: \nextension .exe\n",
    ),
    (":e2:E::x::/i:PC\n", b"enabled\ninterpreter /i\nflags: POC\nextension .x\n"),
]


@pytest.mark.parametrize(("line", "status"), SPEC_STATUS)
def test_status_text_matches_the_kernels(line: str, status: bytes) -> None:
    """to_status() reproduces the entry files the spec recorded, byte for byte."""
    assert Entry.parse(line, K618).to_status().encode() == status


def test_disabled_entry_status_and_register_line() -> None:
    """A disabled entry prints 'disabled'; its register line registers it enabled."""
    entry = magic_entry(enabled=False)
    assert entry.to_status().startswith("disabled\n")
    assert Entry.parse(entry.to_register(K618), K618) == attrs.evolve(entry, enabled=True)


def test_register_line_spells_magic_like_qemu() -> None:
    """Letters and digits stay literal, everything else is \\xHH, as in QEMU's table."""
    entry = magic_entry(
        magic=bytes.fromhex("7f454c460201010000000000000000000200b700"),
        mask=bytes.fromhex("ffffffffffffff00fffffffffffffffffeffffff"),
    )
    line = entry.to_register(K618)
    assert line.startswith(":t:M::\\x7fELF\\x02\\x01\\x01\\x00")
    assert ":\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00" in line
    assert line.endswith(":/bin/true:")


def test_register_line_picks_a_delimiter_not_in_the_fields() -> None:
    """A ':' in a field moves the delimiter to the next free character."""
    entry = magic_entry(name="a:b", interpreter="/opt/x|y")
    line = entry.to_register(K618)
    assert line[0] == "!"
    assert Entry.parse(line, K618) == entry


def test_long_magic_falls_back_to_minimal_escaping() -> None:
    """A 256-byte magic and mask fit the 1920-byte limit only with raw bytes; render them so."""
    entry = magic_entry(magic=bytes(range(1, 256)) + b"\x80", mask=b"\xfe" * 256)
    line = entry.to_register(K618)
    assert len(line.encode("utf-8", "surrogateescape")) <= 1920
    assert Entry.parse(line, K618) == entry


def test_unrenderable_entry_is_refused() -> None:
    """An entry whose line cannot fit the kernel's limit raises, naming the length."""
    entry = magic_entry(magic=b"\0" * 256, mask=b"\0" * 256)
    with pytest.raises(InvalidEntry, match="over the kernel's limit of 1920"):
        entry.to_register(K618)


# -- parsing by kernel version ------------------------------------------------


def test_flag_letter_delimiter_depends_on_the_kernel() -> None:
    """6.18 refuses flag letters as delimiters; 6.1 (no backport) takes them with a newline."""
    line = "PnamePMPPABPP/bin/catP\n"
    with pytest.raises(InvalidEntry, match="cannot be delimiters"):
        Entry.parse(line, K618)
    assert Entry.parse(line, K61).magic == b"AB"
    with pytest.raises(InvalidEntry, match="run past"):
        Entry.parse(line.rstrip("\n"), K61)


def test_old_kernels() -> None:
    """Before 4.8 name errors are EINVAL and F is unknown; before 5.1 the buffer is 128."""
    with pytest.raises(InvalidEntry) as info:
        Entry.parse(":" + "n" * 256 + ":M::AB::/i:", K44)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(InvalidEntry, match="flags"):
        Entry.parse(":n:M::AB::/i:F", K44)
    with pytest.raises(InvalidEntry, match="at most 128"):
        Entry.parse(":n:M:127:AB::/i:", K44)
    assert Entry.parse(":n:M:+5:AB::/i:", K618).offset == 5
    with pytest.raises(InvalidEntry, match="decimal"):
        Entry.parse(":n:M:+5:AB::/i:", K44)


def test_linux_7_3_flags() -> None:
    """7.3 adds T (implies O), L and D (created disabled), with their conflicts."""
    assert Entry.parse(":n:M::AB::/i:T", K73).flags.letters == "OT"
    assert Entry.parse(":n:M::AB::/i:D", K73).enabled is False
    with pytest.raises(InvalidEntry, match="T \\(transparent\\)"):
        Entry.parse(":n:M::AB::/i:TP", K73)
    with pytest.raises(InvalidEntry, match="L \\(loader\\)"):
        Entry.parse(":n:M::AB::/i:LO", K73)
    with pytest.raises(InvalidEntry, match="absolute"):
        Entry.parse(":n:M::AB::qemu:C", K73)
    assert Entry.parse(":n:M::AB::qemu:C", K618).interpreter == "qemu"


def test_parse_accepts_str_and_bytes_alike() -> None:
    """A str line is the same as its UTF-8 (surrogateescape) bytes; odd bytes survive."""
    raw = b":\xff\xfe:M::AB::/bin/\xe9:"
    from_bytes = Entry.parse(raw, K618)
    assert Entry.parse(raw.decode("utf-8", "surrogateescape"), K618) == from_bytes
    assert from_bytes.to_register(K618).encode("utf-8", "surrogateescape") == raw


# -- entry files ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("enabled\ninterpreter /i\nflags: \noffset 0\nmagic 41", "newline"),
        ("on\ninterpreter /i\nflags: \noffset 0\nmagic 41\n", "line 1"),
        ("enabled\ninterp /i\nflags: \noffset 0\nmagic 41\n", "line 2"),
        ("enabled\ninterpreter /i\nflags: CO\noffset 0\nmagic 41\n", "kernel form"),
        ("enabled\ninterpreter /i\nflags: X\noffset 0\nmagic 41\n", "line 3"),
        ("enabled\ninterpreter /i\nflags: \noffset -1\nmagic 41\n", "line 4"),
        ("enabled\ninterpreter /i\nflags: \noffset 0\nmagic 4G\n", "line 5"),
        ("enabled\ninterpreter /i\nflags: \noffset 0\nmagic 41\nmask 4\n", "line 6"),
        ("enabled\ninterpreter /i\nflags: \noffset 0\nmagic 41\nmask 41\nx\n", "unexpected"),
        ("enabled\ninterpreter /i\nflags: \noffset 0\nmagic 41\nmask 4142\n", "must be equal"),
        ("enabled\ninterpreter /i\nflags: \nextension .\n", "extension"),
        ("enabled\ninterpreter /i\nflags: \n", "line 4 is missing"),
        ("enabled\ninterpreter /i\nflags: \noffset 007\nmagic 41\n", "leading zero"),
        ("enabled\ninterpreter /i\nflags: \noffset 2147483648\nmagic 41\n", "line 4"),
        ("enabled\ninterpreter /i\nflags: \noffset " + "1" * 5000 + "\nmagic 41\n", "line 4"),
        ("enabled\ninterpreter /i\nflags: \noffset 0\n", "line 5 is missing"),
        ("enabled\ninterpreter /i\nflags: \noffset 0\nmagic 4\n", "line 5"),
        ("enabled\ninterpreter /i\nflags: \noffset 0\nmagic 41\nmusk 41\n", "line 6"),
        ("enabled\ninterpreter /i\nfoo\n", "line 3 'foo'"),
        ("enabled\ninterpreter /i\n", "line 3 is missing"),
    ],
)
def test_from_status_names_the_bad_line(text: str, problem: str) -> None:
    """Malformed entry files raise MalformedStatus naming the entry and the line."""
    with pytest.raises(MalformedStatus, match=problem) as info:
        Entry.from_status("bad", text)
    assert "'bad'" in str(info.value)


# -- matching -------------------------------------------------------------------


def test_mask_applies_to_both_sides() -> None:
    """Magic 5a5a/mask f0f0 matches 'ZZ' and 'PQ' but not 'j Z'; 5f/f0 matches 'Z' (spec §4.4)."""
    entry = magic_entry(magic=b"ZZ", mask=b"\xf0\xf0")
    assert entry.matches(b"ZZ") and entry.matches(b"PQ")
    assert not entry.matches(b"j Z")
    assert magic_entry(magic=b"\x5f", mask=b"\xf0").matches(b"Z")


def test_zero_magic_past_end_of_file_matches() -> None:
    """The window is zero-filled past EOF, so a zero magic at offset 2 matches a 2-byte file."""
    entry = magic_entry(offset=2, magic=b"\0\0")
    assert entry.matches(b"AB")
    assert not entry.matches(b"ABC")
    # A window partly past EOF: its missing bytes are zeros at the end, not
    # dropped (a shorter window would compare as a smaller number).
    partly = magic_entry(offset=1, magic=b"B\0")
    assert partly.matches(b"AB") and partly.matches(b"AB\0")
    assert not partly.matches(b"AC") and not partly.matches(b"ABC")


@pytest.mark.parametrize(
    ("path", "hit"),
    [
        ("t.zzx", True),
        ("a.b.zzx", True),
        (".zzx", True),
        ("./t.zzx", True),
        ("T.ZZX", False),
        ("dir.zzx/file", False),
        ("link", False),
        ("zzx", False),  # no dot: nothing to compare, even if the name is the extension
        ("t.zzx.bak", False),
    ],
)
def test_extension_uses_text_after_last_dot_of_exec_path(path: str, hit: bool) -> None:
    """Extension matching compares the text after the last '.' of the path as given."""
    entry = Entry("e", "/i", type=EntryType.EXTENSION, extension="zzx")
    assert entry.matches(b"", path) is hit


# -- properties -------------------------------------------------------------------

printable_text = st.text(
    alphabet=st.characters(blacklist_characters="\0/\n", blacklist_categories=["Cs"]),
    min_size=1,
    max_size=20,
)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    name = draw(printable_text.filter(lambda s: s not in (".", "..", "register", "status")))
    interpreter = draw(printable_text)
    flags = draw(st.text(alphabet="POCF", max_size=4))
    enabled = draw(st.booleans())
    if draw(st.booleans()):
        ext = draw(printable_text)
        return Entry(
            name, interpreter, type=EntryType.EXTENSION, extension=ext, flags=flags, enabled=enabled
        )
    magic = draw(st.binary(min_size=1, max_size=256))
    mask = draw(st.one_of(st.none(), st.binary(min_size=len(magic), max_size=len(magic))))
    offset = draw(st.integers(0, 256 - len(magic)))
    return Entry(
        name, interpreter, offset=offset, magic=magic, mask=mask, flags=flags, enabled=enabled
    )


@given(entries())
def test_register_line_round_trip(entry: Entry) -> None:
    """parse(to_register(e)) == e (a register line always registers an enabled entry)."""
    try:
        line = entry.to_register(K618)
    except InvalidEntry:
        # Only entries too big for any line; the constructor already bounds the rest.
        assert entry.size > 200
        return
    assert Entry.parse(line, K618) == attrs.evolve(entry, enabled=True)


@given(entries())
def test_status_round_trip(entry: Entry) -> None:
    """from_status(to_status(e)) == e."""
    assert Entry.from_status(entry.name, entry.to_status()) == entry


def test_a_line_at_the_length_limit_with_c_renders_without_the_implied_o() -> None:
    """The kernel takes ``PC`` at 1920 bytes; POC would be 1921: to_register writes PC (fuzzer)."""
    line = "|.l|M||I||/" + "i" * 1906 + "|PC"
    assert len(line) == K618.max_register_length
    entry = Entry.parse(line, K618)
    assert entry.flags.letters == "POC"
    rendered = entry.to_register(K618)
    assert rendered == line.replace("|", ":")
    assert Entry.parse(rendered, K618) == entry


def test_a_readable_line_exactly_at_the_length_limit_is_kept_as_it_is() -> None:
    """1920 bytes with ``POC`` is accepted: the shorter spellings are only for longer lines."""
    line = ":.l:M::I::/" + "i" * 1905 + ":POC"
    assert len(line) == K618.max_register_length
    assert Entry.parse(line, K618).to_register(K618) == line


def test_fields_holding_every_usual_delimiter_still_render() -> None:
    """When name and interpreter hold ``:|!%@…``, another byte is the delimiter."""
    used = ":|!%@,=~^+&*$?<>`'\"-_[]{}()"
    entry = Entry("n" + used, "/i" + used, magic=b"AB")
    line = entry.to_register(K618)
    assert line[0] not in used and Entry.parse(line, K618) == entry


# -- pinned by mutation testing (tests/tools/mutants.py) -----------------------------------


def test_a_raw_nul_inside_a_field_is_named_with_the_bytes_up_to_it() -> None:
    """strchr() stops at a NUL: the field is refused with what precedes it, the NUL shown."""
    with pytest.raises(InvalidEntry) as info:
        Entry.parse(b":n\x00:M::AB::/bin/x:")
    assert (info.value.field, info.value.value, info.value.rule) == (
        "name",
        "n\x00",
        "contains a raw NUL byte",
    )
    with pytest.raises(InvalidEntry) as info:
        Entry.parse(b":n:E::zz::/bin/x\x00:")
    assert (info.value.field, info.value.value) == ("interpreter", "/bin/x\x00")


@pytest.mark.parametrize("line", [b"", b":", b"\x00"])
def test_lines_too_short_are_refused_before_anything_is_read(line: bytes) -> None:
    """An empty line has no delimiter: the length rule answers first (no IndexError)."""
    with pytest.raises(InvalidEntry) as info:
        Entry.parse(line)
    assert info.value.field == "line" and "shorter than 11 bytes" in info.value.rule


def test_the_largest_offset_is_refused_by_the_window_not_the_range() -> None:
    """INT_MAX is a valid offset (the range rule); only the 256-byte window refuses it."""
    from binfmt.entry import INT_MAX

    with pytest.raises(InvalidEntry) as info:
        Entry("e", "/i", magic=b"A", offset=INT_MAX)
    assert info.value.field == "magic" and "256" in info.value.rule
    with pytest.raises(InvalidEntry) as info:
        Entry("e", "/i", magic=b"A", offset=INT_MAX + 1)
    assert info.value.field == "offset"


@pytest.mark.parametrize("release", ["6.18", "4.14"])
def test_offset_int_max_parses_and_only_the_window_refuses_it(release: str) -> None:
    """kstrtoint (and the old simple_strtoul) take INT_MAX itself; the buffer then refuses."""
    with pytest.raises(InvalidEntry) as info:
        Entry.parse(b":n:M:2147483647:A::/bin/x:", KernelRules.for_release(release))
    assert info.value.field == "magic" and "buffer" in info.value.rule
    with pytest.raises(InvalidEntry) as info:
        Entry.parse(b":n:M:2147483648:A::/bin/x:", KernelRules.for_release(release))
    assert info.value.field == "offset"


def test_before_4_18_an_offset_wraps_as_an_unsigned_long_stored_in_an_int() -> None:
    """simple_strtoul's 64-bit value is cut to the int field: 2**32 + 1 is offset 1."""
    old = KernelRules.for_release("4.14")
    assert Entry.parse(b":n:M:4294967297:A::/bin/x:", old).offset == 1
    with pytest.raises(InvalidEntry) as info:
        Entry.parse(b":n:M:4294967297:A::/bin/x:", K618)
    assert info.value.field == "offset"


def test_entry_file_errors_name_the_line_as_the_kernel_wrote_it() -> None:
    """The line number counts the newlines inside the interpreter; line 1 is quoted alone."""
    with pytest.raises(MalformedStatus, match=r"line 4: invalid flags 'Z'"):
        Entry.from_status("n", "enabled\ninterpreter /bin/a\nb\nflags: Z\nextension .x\n")
    with pytest.raises(MalformedStatus, match=r"line 3: invalid flags 'Z'"):
        Entry.from_status("n", "enabled\ninterpreter /bin/a\nflags: Z\nextension .x\n")
    with pytest.raises(MalformedStatus) as info:
        Entry.from_status("n", "bogus\ninterpreter /bin/a\nflags: \nextension .x\n")
    assert str(info.value).endswith("line 1 'bogus' should be 'enabled' or 'disabled'")


@pytest.mark.parametrize(
    ("offset", "read"),
    [("10", 10), ("0", 0), ("255", 255), ("01", None), ("", None), ("+1", None), ("1 ", None)],
)
def test_entry_file_offsets_are_read_only_as_the_kernel_prints_them(
    offset: str, read: object
) -> None:
    """%i of an int: no sign, no leading zero, not empty; a trailing zero is fine."""
    text = f"enabled\ninterpreter /bin/a\nflags: \noffset {offset}\nmagic 41\n"
    if read is None:
        with pytest.raises(MalformedStatus, match="offset"):
            Entry.from_status("n", text)
    else:
        assert Entry.from_status("n", text).offset == read

"""The QEMU signature table: its bytes, its names, and how it matches ELF headers."""

from __future__ import annotations

import json
import platform
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from binfmt.entry import Entry, EntryType, Flags
from binfmt.errors import UnknownTarget
from binfmt.kernel import KernelRules
from binfmt.qemu import (
    SIGNATURES,
    UPSTREAM_COMMIT,
    Signature,
    get,
    identify,
    lookup,
    match_header,
    resolve,
)
from binfmt.testing import require_or_skip

REFERENCE = Path(__file__).resolve().parent / "data/reference/binfmt-signatures.json"
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs/signatures.rst"
NAMES = [sig.name for sig in SIGNATURES]
# The four MIPS targets whose masks look at EF_MIPS_ABI2 in e_flags.
MIPS_ABI2_TARGETS = {"mips", "mipsel", "mipsn32", "mipsn32el"}


def _records(origin: str) -> list[dict[str, Any]]:
    data = json.loads(REFERENCE.read_text(encoding="utf-8"))
    records = [r for r in data["records"] if r["origin"] == origin]
    assert records, f"no {origin!r} records in {REFERENCE}"
    return records


def _entry_from_record(record: dict[str, Any]) -> Entry:
    return Entry(
        "x-" + record["name"].replace(":", "-"),
        "/usr/bin/true",
        magic=bytes.fromhex(record["magic_hex"]),
        mask=bytes.fromhex(record["mask_hex"]),
    )


def _flip_outside_mask(sig: Signature, header: bytes, noise: bytes) -> bytes:
    """Change every header bit the mask ignores according to ``noise``."""
    out = bytearray(header)
    for j, n in enumerate(noise[: len(out)]):
        ignored = ~sig.mask[j] & 0xFF if j < len(sig.mask) else 0xFF
        out[j] ^= n & ignored
    return bytes(out)


# -- the table itself ---------------------------------------------------------


def test_table_has_34_uniquely_named_targets() -> None:
    """The table holds QEMU's 34 targets, each name once."""
    assert len(SIGNATURES) == 34
    assert len(set(NAMES)) == 34
    assert UPSTREAM_COMMIT.startswith("1887cf23")


@pytest.mark.parametrize("sig", SIGNATURES, ids=NAMES)
def test_descriptive_fields_agree_with_the_magic(sig: Signature) -> None:
    """e_machine, class and byte order restate exactly what the magic bytes encode."""
    assert sig.magic[:4] == b"\x7fELF"
    assert sig.magic[4] == {32: 1, 64: 2}[sig.elf_class]
    assert sig.magic[5] == {"little": 1, "big": 2}[sig.byte_order]
    assert int.from_bytes(sig.magic[18:20], sig.byte_order) == sig.e_machine
    assert len(sig.mask) == len(sig.magic)


@pytest.mark.parametrize("sig", SIGNATURES, ids=NAMES)
def test_own_exec_and_dyn_headers_match(sig: Signature) -> None:
    """Every signature matches synthesized ET_EXEC and ET_DYN headers of its own target."""
    assert sig.matches(sig.header(2))
    assert sig.matches(sig.header(3))
    assert match_header(sig.header(2)) is sig
    assert match_header(sig.header(3)) is sig


@pytest.mark.parametrize("sig", SIGNATURES, ids=NAMES)
def test_no_other_targets_headers_match(sig: Signature) -> None:
    """No signature matches the ET_EXEC or ET_DYN header of any other target."""
    wrong = [
        other.name
        for other in SIGNATURES
        if other is not sig and (sig.matches(other.header(2)) or sig.matches(other.header(3)))
    ]
    assert wrong == []


@pytest.mark.parametrize("sig", SIGNATURES, ids=NAMES)
def test_relocatable_and_core_files_match_nothing(sig: Signature) -> None:
    """ET_NONE, ET_REL and ET_CORE files are not sent to QEMU (the e_type mask admits 2 and 3)."""
    for e_type in (0, 1, 4):
        assert not sig.matches(sig.header(e_type))
        assert match_header(sig.header(e_type)) is None


def test_mips_o32_and_n32_differ_only_in_abi2() -> None:
    """o32 and n32 signatures differ only in EF_MIPS_ABI2, and that bit alone picks the target."""
    for o32, n32 in (("mips", "mipsn32"), ("mipsel", "mipsn32el")):
        a, b = get(o32), get(n32)
        abi2_byte = 39 if a.byte_order == "big" else 36  # where 0x20 of e_flags lies
        assert [j for j in range(len(a.magic)) if a.magic[j] != b.magic[j]] == [abi2_byte]
        assert a.mask == b.mask and a.mask[abi2_byte] == 0x20
        ha, hb = a.header(), b.header()
        assert {j for j in range(len(ha)) if ha[j] != hb[j]} <= set(range(36, 40))
        assert a.e_flags & 0x20 == 0 and b.e_flags & 0x20 == 0x20
        assert match_header(a.header(e_flags=a.e_flags | 0x20)) is b
        assert match_header(b.header(e_flags=b.e_flags & ~0x20)) is a


def test_i386_and_i486_differ_only_in_e_machine() -> None:
    """i386 (EM_386) and i486 (EM_486) share every byte but e_machine, and both run qemu-i386."""
    i386, i486 = get("i386"), get("i486")
    h386, h486 = i386.header(), i486.header()
    assert [j for j in range(len(h386)) if h386[j] != h486[j]] == [18]
    assert (i386.e_machine, i486.e_machine) == (3, 6)
    assert i386.mask == i486.mask
    assert i386.interpreter_name == i486.interpreter_name == "qemu-i386"
    assert i486.entry_name == "qemu-i486"


def test_microblaze_carries_the_corrected_e_type() -> None:
    """Big-endian microblaze uses 00 02 / ff fe for e_type; QEMU's 02 00 / fe ff cannot match."""
    sig = get("microblaze")
    upstream_magic = sig.magic[:16] + b"\x02\x00" + sig.magic[18:]
    upstream_mask = sig.mask[:16] + b"\xfe\xff" + sig.mask[18:]
    assert (sig.magic[16:18], sig.mask[16:18]) == (b"\x00\x02", b"\xff\xfe")
    upstream = Entry("qemu-microblaze", "/q", magic=upstream_magic, mask=upstream_mask)
    for e_type in (2, 3):
        assert sig.matches(sig.header(e_type))
        assert not upstream.matches(sig.header(e_type))
    assert identify(upstream) == ()
    assert sig.upstream_difference is not None and "02 00" in sig.upstream_difference
    assert [s.name for s in SIGNATURES if s.upstream_difference is not None] == ["microblaze"]


def test_upstream_table_equals_the_reference_bytes() -> None:
    """Order, names, family, e_machine, class, byte order and bytes are QEMU's (bar microblaze)."""
    records = _records("qemu-upstream")
    assert [r["name"] for r in records] == NAMES
    for record, sig in zip(records, SIGNATURES):
        assert record["family"] == sig.family, sig.name
        assert record["e_machine"] == sig.e_machine, sig.name
        assert record["ei_class"] == f"ELF{sig.elf_class}", sig.name
        assert record["ei_data"] == {"little": "LSB", "big": "MSB"}[sig.byte_order], sig.name
        assert record["interpreter_basename"] == sig.interpreter_name, sig.name
        assert record["registered_name"] == sig.entry_name, sig.name
        magic, mask = bytes.fromhex(record["magic_hex"]), bytes.fromhex(record["mask_hex"])
        if sig.name == "microblaze":
            # Exactly the documented difference: e_type's two bytes swapped.
            assert record["matches_et_exec"] is False
            assert magic[16:18] == sig.magic[17:15:-1] and mask[16:18] == sig.mask[17:15:-1]
            assert magic[:16] + magic[18:] == sig.magic[:16] + sig.magic[18:]
            assert mask[:16] + mask[18:] == sig.mask[:16] + sig.mask[18:]
        else:
            assert (magic, mask) == (sig.magic, sig.mask), sig.name


def test_identify_recognises_debians_table() -> None:
    """Every entry of Debian's qemu-user-static identifies as its own target (cris: none)."""
    records = _records("debian-qemu-user-static")
    for record in records:
        found = identify(_entry_from_record(record))
        if record["name"] == "cris":  # dropped from QEMU, still in Debian 12
            assert found == ()
        else:
            assert found == (get(record["name"]),), record["name"]


def test_identify_and_lookup_recognise_tonistiiges_table() -> None:
    """tonistiigi/binfmt's entries identify as their target, and its OCI names look it up."""
    for record in _records("tonistiigi-binfmt"):
        sig = get(record["name"])
        assert identify(_entry_from_record(record)) == (sig,), record["name"]
        assert lookup(record["oci_arch"]) is sig
        assert lookup("linux/" + record["oci_arch"]) is sig
        assert record["registered_name"] == sig.entry_name


def test_pre_7_0_mips_entries_cannot_tell_o32_from_n32() -> None:
    """QEMU's pre-7.0 20-byte MIPS entries match both the o32 and the n32 headers."""
    historical = {r["name"]: r for r in _records("qemu-upstream-historical")}
    assert identify(_entry_from_record(historical["mips"])) == (get("mips"), get("mipsn32"))
    assert identify(_entry_from_record(historical["mipsel"])) == (
        get("mipsel"),
        get("mipsn32el"),
    )


def test_docs_table_lists_every_target_in_order() -> None:
    """docs/signatures.rst has one row per target, in table order, with its platforms."""
    if not DOCS_PAGE.is_file():
        require_or_skip(f"{DOCS_PAGE} is not present")
    lines = DOCS_PAGE.read_text(encoding="utf-8").splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("   * - ``")]
    assert [lines[i].split("``")[1] for i in rows] == NAMES
    for i, sig in zip(rows, SIGNATURES):
        assert lines[i + 1].strip() == "- " + sig.family
        assert all(f"``{p}``" in lines[i + 2] for p in sig.platforms), sig.name
        e_machine = str(sig.e_machine) if sig.e_machine < 1000 else hex(sig.e_machine)
        assert lines[i + 4].strip().startswith(f"- {e_machine} ("), sig.name
        assert lines[i + 5].strip() == f"- ELF{sig.elf_class} {sig.byte_order}"


# -- identify -----------------------------------------------------------------


@pytest.mark.parametrize("sig", SIGNATURES, ids=NAMES)
def test_identify_own_entry(sig: Signature) -> None:
    """An entry built from a signature identifies as exactly that signature."""
    assert identify(sig.to_entry("/usr/bin/" + sig.interpreter_name)) == (sig,)


def test_identify_ignores_magic_bits_outside_the_mask() -> None:
    """An entry whose magic differs only in masked-out bits still identifies as the target."""
    sig = get("i386")
    magic = bytearray(sig.magic)
    magic[5] = magic[6] = magic[7] = 0  # mask fe, fe, 00 there
    entry = Entry("x", "/x", magic=bytes(magic), mask=sig.mask)
    assert identify(entry) == (sig,)


def test_identify_loose_entry_lists_targets_in_table_order() -> None:
    """An entry that ignores e_machine names every target of that class and byte order."""
    loose = Entry("x", "/x", magic=bytes.fromhex("7f454c460201"), mask=b"\xff" * 6)
    expected = [s for s in SIGNATURES if (s.elf_class, s.byte_order) == (64, "little")]
    assert list(identify(loose)) == expected
    assert {s.name for s in expected} >= {"x86_64", "aarch64", "riscv64", "ppc64le"}


def test_identify_extension_and_foreign_entries_give_nothing() -> None:
    """Extension entries and magic entries for non-ELF formats identify as no target."""
    assert identify(Entry("jar", "/usr/bin/jexec", type=EntryType.EXTENSION, extension="jar")) == ()
    assert identify(Entry("wine", "/usr/bin/wine", magic=b"MZ")) == ()


# -- names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("aarch64", "aarch64"),
        ("i486", "i486"),
        ("mipsn32el", "mipsn32el"),
        ("amd64", "x86_64"),
        ("x64", "x86_64"),
        ("arm64", "aarch64"),
        ("armhf", "arm"),
        ("armel", "arm"),
        ("armv7l", "arm"),
        ("armv6l", "arm"),
        ("armv5tel", "arm"),
        ("armv7", "arm"),
        ("armv6", "arm"),
        ("i686", "i386"),
        ("i586", "i386"),
        ("386", "i386"),
        ("x86", "i386"),
        ("ppc64el", "ppc64le"),
        ("powerpc64le", "ppc64le"),
        ("powerpc", "ppc"),
        ("powerpc64", "ppc64"),
        ("mips64le", "mips64el"),
        ("mipsle", "mipsel"),
        ("loong64", "loongarch64"),
        ("arm64be", "aarch64_be"),
        ("linux/amd64", "x86_64"),
        ("linux/386", "i386"),
        ("linux/arm64", "aarch64"),
        ("linux/arm64/v8", "aarch64"),
        ("linux/arm/v7", "arm"),
        ("linux/arm/v6", "arm"),
        ("linux/arm/v5", "arm"),
        ("linux/arm", "arm"),
        ("linux/riscv64", "riscv64"),
        ("linux/ppc64le", "ppc64le"),
        ("linux/ppc64", "ppc64"),
        ("linux/s390x", "s390x"),
        ("linux/mips64le", "mips64el"),
        ("linux/mips64", "mips64"),
        ("linux/mipsle", "mipsel"),
        ("linux/mips", "mips"),
        ("linux/loong64", "loongarch64"),
        ("arm/v7", "arm"),
        ("LINUX/ARM64", "aarch64"),
        ("  AMD64 ", "x86_64"),
        ("X86_64", "x86_64"),
    ],
)
def test_lookup_accepts_names_aliases_and_platforms(text: str, name: str) -> None:
    """lookup() takes QEMU names, aliases and OCI platforms, in any case, linux/ optional."""
    assert lookup(text) is get(name)


def test_oci_platforms_are_the_documented_ones() -> None:
    """Exactly the documented targets have OCI platforms, canonical one first."""
    platforms = {sig.name: sig.platforms[0] for sig in SIGNATURES if sig.platforms}
    assert platforms == {
        "x86_64": "linux/amd64",
        "i386": "linux/386",
        "aarch64": "linux/arm64",
        "arm": "linux/arm/v7",
        "riscv64": "linux/riscv64",
        "ppc64le": "linux/ppc64le",
        "ppc64": "linux/ppc64",
        "s390x": "linux/s390x",
        "mips64el": "linux/mips64le",
        "mips64": "linux/mips64",
        "mipsel": "linux/mipsle",
        "mips": "linux/mips",
        "loongarch64": "linux/loong64",
    }


def test_every_spelling_names_one_target() -> None:
    """Names, aliases and platforms (with or without linux/) never name two targets."""
    owner: dict[str, str] = {}
    for sig in SIGNATURES:
        spellings = {sig.name, *sig.aliases, *sig.platforms}
        spellings |= {p.split("/", 1)[1] for p in sig.platforms}
        for spelling in spellings:
            key = spelling.lower()
            assert owner.setdefault(key, sig.name) == sig.name, (spelling, owner[key], sig.name)
            assert lookup(spelling) is sig
    aliases = [a.lower() for sig in SIGNATURES for a in sig.aliases]
    assert len(aliases) == len(set(aliases))
    assert not set(aliases) & {n.lower() for n in NAMES}


def test_unknown_name_raises_unknown_target_with_suggestions() -> None:
    """An unknown name raises UnknownTarget (a LookupError) quoting it and naming close matches."""
    with pytest.raises(UnknownTarget, match=r"'arm65'.*'arm64'"):
        lookup("arm65")
    with pytest.raises(LookupError, match=r"'linux/arm/v9'.*'linux/arm/v7'"):
        lookup("linux/arm/v9")
    with pytest.raises(UnknownTarget, match=r"'zzz'.*known targets: i386, i486"):
        lookup("zzz")


def test_get_takes_only_exact_qemu_names() -> None:
    """get() finds QEMU names exactly; aliases and other cases raise UnknownTarget."""
    assert get("aarch64").name == "aarch64"
    with pytest.raises(UnknownTarget, match=r"'arm64'.*did you mean"):
        get("arm64")
    with pytest.raises(UnknownTarget, match="'AARCH64'"):
        get("AARCH64")


def test_resolve_expands_all_and_dedupes_in_order() -> None:
    """resolve(): "all" is the whole table; repeats collapse to the first occurrence."""
    assert resolve("all") == list(SIGNATURES)
    assert resolve(["ALL", "arm64"]) == list(SIGNATURES)
    assert resolve(["riscv64", "arm64", "aarch64", "linux/arm64", "riscv64"]) == [
        get("riscv64"),
        get("aarch64"),
    ]
    assert resolve("arm64, linux/arm/v7,") == [get("aarch64"), get("arm")]
    assert resolve([]) == []
    with pytest.raises(UnknownTarget, match="'sparc128'"):
        resolve(["arm64", "sparc128"])


def test_interpreter_and_entry_names_follow_qemu() -> None:
    """Entries are named qemu-<target>; the interpreter is qemu-<target> except i486."""
    for sig in SIGNATURES:
        assert sig.entry_name == "qemu-" + sig.name
        expected = "qemu-i386" if sig.name == "i486" else "qemu-" + sig.name
        assert sig.interpreter_name == expected


# -- headers and entries ------------------------------------------------------


@pytest.mark.parametrize("sig", SIGNATURES, ids=NAMES)
def test_header_layout(sig: Signature) -> None:
    """header() is a well-formed ELF header: size, ident, e_type, e_machine, e_version, e_flags."""
    header = sig.header(3)
    order = "<" if sig.byte_order == "little" else ">"
    if sig.elf_class == 32:
        assert len(header) == 52
        (e_flags, ehsize) = struct.unpack_from(order + "IH", header, 36)
    else:
        assert len(header) == 64
        (e_flags, ehsize) = struct.unpack_from(order + "IH", header, 48)
    assert header[4:9] == bytes((sig.elf_class // 32, 1 if order == "<" else 2, 1, 0, 0))
    assert struct.unpack_from(order + "HHI", header, 16) == (3, sig.e_machine, 1)
    assert (e_flags, ehsize) == (sig.e_flags, len(header))


def test_header_rejects_out_of_range_fields() -> None:
    """header() refuses values that do not fit their ELF field."""
    sig = get("aarch64")
    with pytest.raises(ValueError, match="e_type"):
        sig.header(0x10000)
    with pytest.raises(ValueError, match="osabi"):
        sig.header(osabi=256)
    with pytest.raises(ValueError, match="e_flags"):
        sig.header(e_flags=-1)


def test_signature_validates_its_bytes() -> None:
    """A Signature refuses a mask of the wrong length and a magic that is not an ELF header."""
    good = get("aarch64")
    with pytest.raises(ValueError, match="mask"):
        Signature("x", "x", 183, 64, "little", good.magic, good.mask[:-1])
    with pytest.raises(ValueError, match="magic"):
        Signature("x", "x", 183, 64, "little", b"MZ" + good.magic[2:], good.mask)
    with pytest.raises(ValueError):
        Signature("x", "x", 183, 48, "little", good.magic, good.mask)


def test_to_entry_builds_qemus_registration() -> None:
    """to_entry() gives QEMU's entry name and bytes, the given flags, and a valid register line."""
    sig = get("aarch64")
    entry = sig.to_entry("/usr/bin/qemu-aarch64-static", "F")
    assert (entry.name, entry.offset, entry.magic, entry.mask) == (
        "qemu-aarch64",
        0,
        sig.magic,
        sig.mask,
    )
    assert entry.flags == Flags.FIX_BINARY
    assert sig.to_entry("/q", Flags.CREDENTIALS, name="arm64").name == "arm64"
    assert sig.to_entry("/q", "C").flags == Flags.CREDENTIALS | Flags.OPEN_BINARY
    rules = KernelRules.for_release("6.18.0")
    line = entry.to_register(rules)
    assert line.startswith(r":qemu-aarch64:M::\x7fELF\x02\x01\x01\x00")
    assert Entry.parse(line, rules) == entry


def test_short_files_are_zero_padded() -> None:
    """A file cut after e_machine still matches a 20-byte signature, but not a MIPS o32/n32 one."""
    assert match_header(get("aarch64").header()[:20]) is get("aarch64")
    assert match_header(get("mips").header()[:20]) is None  # e_version reads as 0
    assert match_header(b"") is None
    assert match_header(b"#!/bin/sh\n") is None


def test_host_binary_is_the_host_architecture() -> None:
    """A real host executable's first 64 bytes match the signature of the machine it runs on."""
    try:
        host = lookup(platform.machine())
    except UnknownTarget:
        require_or_skip(f"no QEMU target for this machine ({platform.machine()})")
    if host.elf_class != struct.calcsize("P") * 8:
        require_or_skip("this Python is not built for the machine's native ELF class")
    candidates = [Path("/usr/bin/qemu-aarch64-static"), Path(sys.executable)]
    for path in candidates:
        if path.is_file():
            with path.open("rb") as f:
                assert match_header(f.read(64)) is host, path


# -- properties ---------------------------------------------------------------


@given(st.sampled_from(SIGNATURES), st.sampled_from((2, 3)), st.binary(min_size=64, max_size=64))
def test_bits_outside_the_mask_never_matter(sig: Signature, e_type: int, noise: bytes) -> None:
    """Changing any header bit the mask ignores keeps the match."""
    assert sig.matches(_flip_outside_mask(sig, sig.header(e_type), noise))


@given(st.sampled_from(SIGNATURES), st.data())
def test_any_masked_bit_flip_breaks_the_match(sig: Signature, data: st.DataObject) -> None:
    """Flipping one bit that the mask compares makes the header stop matching."""
    header = bytearray(sig.header())
    j = data.draw(st.sampled_from([j for j, m in enumerate(sig.mask) if m]))
    bit = data.draw(st.sampled_from([1 << b for b in range(8) if sig.mask[j] >> b & 1]))
    header[j] ^= bit
    assert not sig.matches(bytes(header))


@given(st.sampled_from(SIGNATURES), st.integers(0, 255))
def test_osabi_is_ignored_except_loongarch(sig: Signature, osabi: int) -> None:
    """Every target accepts any EI_OSABI (GNU's 3 included), except loongarch64 which takes 0-3."""
    expected = osabi <= 3 if sig.name == "loongarch64" else True
    assert sig.matches(sig.header(osabi=osabi)) is expected
    assert sig.matches(sig.header(osabi=3))


@given(st.sampled_from(SIGNATURES), st.integers(0, 0xFFFFFFFF))
def test_e_flags_matter_only_for_mips_abi2(sig: Signature, e_flags: int) -> None:
    """e_flags never matter, except EF_MIPS_ABI2 for the mips/mipsel/mipsn32/mipsn32el entries."""
    matched = sig.matches(sig.header(e_flags=e_flags))
    if sig.name in MIPS_ABI2_TARGETS:
        assert matched is ((e_flags & 0x20) == (sig.e_flags & 0x20))
    else:
        assert matched


@given(st.binary(max_size=64), st.sampled_from(SIGNATURES), st.booleans())
def test_match_header_agrees_with_entries(noise: bytes, sig: Signature, elf: bool) -> None:
    """match_header() returns the first signature whose kernel entry matches, for any bytes."""
    header = _flip_outside_mask(sig, sig.header(), noise) if elf else noise
    entries = [(s, s.to_entry("/x")) for s in SIGNATURES]
    first = next((s for s, e in entries if e.matches(header)), None)
    assert match_header(header) is first
    for s, e in entries:
        assert s.matches(header) is e.matches(header)

"""binfmt.d and Debian format files: parsing as systemd/update-binfmts do, rendering, writing."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import attrs
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from binfmt import BinfmtError, Entry, EntryType, Flags, InvalidEntry, KernelRules
from binfmt.errors import ConfigError, UnsafeFileName, WriteError
from binfmt.persist import (
    RUN_DETECTORS,
    SYSTEMD_DIRS,
    ConfigLine,
    DebianFormat,
    binfmt_d_files,
    debian_files,
    effective_entries,
    effective_files,
    parse_binfmt_d,
    parse_debian_format,
    read_binfmt_d,
    read_debian_formats,
    render_binfmt_d,
    render_debian_format,
    write_files,
)
from binfmt.testing import require_or_skip

K618 = KernelRules.for_release("6.18.44")
DATA = Path(__file__).parent / "data" / "persist"
DEBIAN = DATA / "debian"
QEMU = DEBIAN / "qemu-user-static" / "usr"
UPDATE_BINFMTS_CACHE = Path(__file__).parent / ".cache" / "binfmt-support"
# A cold first example (imports, regex compilation) can exceed the 200 ms default.
FUZZ = settings(deadline=None)

RULE_A = r":a:M::\x7fELF::/usr/bin/a:"
RULE_B = r":b:E::exe::/usr/bin/wine:"


def entry_a(**changes: object) -> Entry:
    return attrs.evolve(Entry.parse(RULE_A, K618), **changes)  # type: ignore[arg-type]


def parse(text: str, source: str = "t.conf") -> list[ConfigLine]:
    return parse_binfmt_d(text, source, K618)


# == real files from Debian packages ===============================================


def qemu_names() -> list[str]:
    return sorted(p.name for p in (QEMU / "share" / "binfmts").iterdir())


def test_sources_lists_every_captured_file_with_its_hash() -> None:
    """tests/data/persist/SOURCES names each captured file, its package and sha256."""
    listed = {}
    for line in (DATA / "SOURCES").read_text().splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2].startswith("/"):
            listed[f"{fields[0]}{fields[2]}"] = fields[3]
    on_disk = {
        str(p.relative_to(DEBIAN)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in DEBIAN.rglob("*")
        if p.is_file()
    }
    assert listed == on_disk
    assert len(on_disk) == 63


@pytest.mark.parametrize("name", qemu_names())
def test_debian_qemu_pair_registers_the_same_entry_except_open_binary(name: str) -> None:
    """Debian's qemu binfmt.d line and format file agree, but only the .conf has O."""
    fmt = parse_debian_format(name, (QEMU / "share" / "binfmts" / name).read_text())
    conf = QEMU / "lib" / "binfmt.d" / f"{name}.conf"
    (line,) = parse(conf.read_text(), str(conf))
    from_format = fmt.to_entry(K618)
    assert fmt.package == "qemu-user-static"
    assert (fmt.credentials, fmt.preserve, fmt.fix_binary) == (False, True, True)
    assert fmt.interpreter == f"/usr/libexec/qemu-binfmt/{name[5:]}-binfmt-P"
    assert from_format.flags.letters == "PF"
    assert line.entry.flags.letters == "POF"
    assert line.entry == attrs.evolve(from_format, flags="POF")


def test_debian_qemu_formats_read_as_a_directory() -> None:
    """read_debian_formats reads all 29 qemu formats, sorted by name."""
    formats = read_debian_formats(str(QEMU / "share" / "binfmts"))
    assert [f.name for f in formats] == qemu_names()
    assert len(formats) == 29
    assert all(f.type is EntryType.MAGIC and f.mask for f in formats)


def test_installed_qemu_files_agree_the_same_way() -> None:
    """On a machine with qemu-user-static installed, the live pairs differ only by O too."""
    if not Path("/usr/share/binfmts/qemu-aarch64").exists():
        require_or_skip("Debian's qemu-user-static is not installed")
    formats = {f.name: f for f in read_debian_formats() if f.name.startswith("qemu-")}
    lines = {}
    for path in effective_files():
        if os.path.basename(path).startswith("qemu-"):
            with open(path) as handle:
                for line in parse(handle.read(), path):
                    lines[line.entry.name] = line
    assert formats and set(formats) == set(lines)
    for name, fmt in formats.items():
        assert lines[name].entry == attrs.evolve(fmt.to_entry(K618), flags="POF"), name


def test_python_format_is_the_pyc_magic() -> None:
    """python3.11 registers .pyc files: magic 3495 little-endian, then \\r\\n."""
    pkg = DEBIAN / "python3.11-minimal" / "usr"
    fmt = parse_debian_format("python3.11", (pkg / "share/binfmts/python3.11").read_text())
    assert fmt.magic == r"\xa7\x0d\x0d\x0a"
    assert (fmt.package, fmt.interpreter, fmt.offset, fmt.mask) == (
        "python3.11",
        "/usr/bin/python3.11",
        0,
        None,
    )
    entry = fmt.to_entry(K618)
    assert entry.magic == (3495).to_bytes(2, "little") + b"\r\n"
    assert entry.flags == Flags(0)
    (line,) = parse((pkg / "lib/binfmt.d/python3.11.conf").read_text())
    assert line.entry == entry


def test_openjdk_jar_format_matches_zip_files() -> None:
    """openjdk's jar format is a magic entry PK\\x03\\x04 run by /usr/bin/jexec."""
    path = DEBIAN / "openjdk-17-jre-headless/usr/lib/jvm/java-17-openjdk-amd64/lib/jar.binfmt"
    fmt = parse_debian_format("jar", path.read_text())
    assert (fmt.package, fmt.type, fmt.extension) == ("openjdk-17", EntryType.MAGIC, None)
    entry = fmt.to_entry(K618)
    assert entry == Entry("jar", "/usr/bin/jexec", magic=b"PK\x03\x04")
    assert entry.matches(b"PK\x03\x04\x14\x00\x08\x00")
    assert not entry.matches(b"PK\x05\x06")


def test_llvm_format_matches_bitcode() -> None:
    """llvm-14-runtime hands 'BC' bitcode files to lli-14, in both file kinds."""
    pkg = DEBIAN / "llvm-14-runtime" / "usr"
    name = "llvm-14-runtime.binfmt"
    fmt = parse_debian_format(name, (pkg / "share/binfmts" / name).read_text())
    entry = fmt.to_entry(K618)
    assert entry == Entry(name, "/usr/bin/lli-14", magic=b"BC")
    (line,) = parse((pkg / "lib/binfmt.d" / f"{name}.conf").read_text())
    assert line.entry == entry


@pytest.mark.parametrize(
    "path", sorted(p for p in DEBIAN.rglob("*") if p.is_file() and "binfmt.d" not in p.parts)
)
def test_real_format_files_render_back_to_themselves(path: Path) -> None:
    """Every captured format file parses, and its rendering parses to the same format."""
    name = "jar" if path.name == "jar.binfmt" else path.name
    fmt = parse_debian_format(name, path.read_text())
    assert parse_debian_format(name, render_debian_format(fmt)) == fmt


@pytest.mark.parametrize("path", sorted(DEBIAN.glob("*/usr/lib/binfmt.d/*.conf")))
def test_real_binfmt_d_files_are_named_after_their_entry(path: Path) -> None:
    """Debian names each binfmt.d file NAME.conf after its one entry (same-name override)."""
    (line,) = parse(path.read_text(), str(path))
    assert f"{line.entry.name}.conf" == path.name
    assert (line.source, line.lineno) == (str(path), 1)


# == systemd binfmt.d: lines =======================================================


def test_comments_blank_lines_and_blanks_around_rules() -> None:
    """#/; comments (also indented), blank lines and blanks around rules are skipped."""
    text = f"# c\n; c\n\n   \n\t# indented\n  {RULE_A}  \t\n;{RULE_B}\n#{RULE_B}\n"
    (line,) = parse(text)
    assert line.entry == entry_a()
    assert line.lineno == 6
    assert line.line == f"  {RULE_A}  \t"


def test_line_terminators_and_numbers_follow_read_line() -> None:
    """\\n, \\r, \\r\\n, \\n\\r and NUL end lines; a combined terminator counts once."""
    text = f"{RULE_A}\r\n{RULE_B}\n\r\n{RULE_A}\r\r{RULE_B}\0{RULE_A}"
    lines = parse(text)
    assert [(x.lineno, x.entry.name) for x in lines] == [
        (1, "a"),
        (2, "b"),
        (4, "a"),
        (6, "b"),
        (7, "a"),
    ]


def test_invalid_line_names_file_and_line() -> None:
    """A line the kernel refuses raises ConfigError 'source:lineno: …' chained to InvalidEntry."""
    with pytest.raises(ConfigError) as info:
        parse(f"# header\n{RULE_A}\n:bad:M::\\xZZ::/bin/x:\n", "/etc/binfmt.d/x.conf")
    err = info.value
    assert (err.source, err.lineno) == ("/etc/binfmt.d/x.conf", 3)
    assert str(err).startswith("/etc/binfmt.d/x.conf:3: invalid magic ")
    assert isinstance(err.__cause__, InvalidEntry)
    assert isinstance(err, ValueError)


def test_register_write_includes_the_newline_systemd_adds() -> None:
    """systemd writes rule + '\\n', and that newline counts toward the kernel's 1920 bytes."""

    def rule_of_length(length: int) -> str:
        head = ":long:M::AB::/"
        return head + "i" * (length - len(head) - 1) + ":"

    assert parse(rule_of_length(1919))[0].entry.name == "long"
    with pytest.raises(ConfigError, match="over the kernel's limit of 1920"):
        parse(rule_of_length(1920))


def test_text_that_is_not_bytes_is_a_config_error() -> None:
    """A lone surrogate (not from surrogateescape) is not bytes: ConfigError, not UnicodeError."""
    with pytest.raises(ConfigError, match="not bytes"):
        parse(":a\ud800:M::AB::/i:")


def test_effective_entries_keep_the_last_line_per_name() -> None:
    """apply_rule() removes a same-name entry first, so the last line wins and moves last."""
    lines = parse(f"{RULE_A}\n{RULE_B}\n{RULE_A.replace('/usr/bin/a', '/usr/bin/a2')}\n")
    kept = effective_entries(lines)
    assert [(x.entry.name, x.lineno) for x in kept] == [("b", 2), ("a", 3)]
    assert kept[1].entry.interpreter == "/usr/bin/a2"


# == systemd binfmt.d: directories =================================================


def make_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def rule(name: str, interpreter: str = "/bin/i") -> str:
    return f":{name}:M::AB::{interpreter}:\n"


@pytest.mark.parametrize(
    ("present", "winner"),
    [
        (("/etc", "/run", "/usr/local/lib", "/usr/lib", "/lib"), "/etc"),
        (("/run", "/usr/local/lib", "/usr/lib", "/lib"), "/run"),
        (("/usr/local/lib", "/usr/lib", "/lib"), "/usr/local/lib"),
        (("/usr/lib", "/lib"), "/usr/lib"),
        (("/lib",), "/lib"),
    ],
)
def test_same_name_in_a_higher_directory_wins(
    tmp_path: Path, present: tuple[str, ...], winner: str
) -> None:
    """/etc > /run > /usr/local/lib > /usr/lib > /lib for files of the same name."""
    make_tree(tmp_path, {f"{d}/binfmt.d/q.conf": rule("q", d) for d in present})
    assert effective_files(host_root=str(tmp_path)) == [
        str(tmp_path / f"{winner[1:]}/binfmt.d/q.conf")
    ]
    (line,) = read_binfmt_d(host_root=str(tmp_path), kernel=K618)
    assert line.entry.interpreter == winner


def test_files_apply_in_name_order_across_directories(tmp_path: Path) -> None:
    """Order is strcmp of the file name, whatever the directory ('-' < '.', 'B' < 'a')."""
    make_tree(
        tmp_path,
        {
            "/usr/lib/binfmt.d/10-x.conf": rule("x"),
            "/etc/binfmt.d/20-y.conf": rule("y"),
            "/run/binfmt.d/05-z.conf": rule("z"),
            "/usr/lib/binfmt.d/a.conf": rule("a"),
            "/etc/binfmt.d/a-b.conf": rule("ab"),
            "/run/binfmt.d/B.conf": rule("B"),
        },
    )
    files = effective_files(host_root=str(tmp_path))
    assert [os.path.basename(f) for f in files] == [
        "05-z.conf",
        "10-x.conf",
        "20-y.conf",
        "B.conf",
        "a-b.conf",
        "a.conf",
    ]
    assert [x.entry.name for x in read_binfmt_d(host_root=str(tmp_path), kernel=K618)] == [
        "z",
        "x",
        "y",
        "B",
        "ab",
        "a",
    ]


def test_a_later_file_name_overrides_an_entry(tmp_path: Path) -> None:
    """The same entry name in a later-sorting file replaces the earlier registration."""
    make_tree(
        tmp_path,
        {
            "/usr/lib/binfmt.d/qemu-arm.conf": rule("qemu-arm", "/usr/bin/vendor"),
            "/usr/lib/binfmt.d/99-local.conf": rule("qemu-arm", "/usr/bin/local"),
        },
    )
    lines = read_binfmt_d(host_root=str(tmp_path), kernel=K618)
    assert [x.entry.interpreter for x in lines] == ["/usr/bin/local", "/usr/bin/vendor"]
    (kept,) = effective_entries(lines)
    assert kept.entry.interpreter == "/usr/bin/vendor"  # "qemu-arm.conf" sorts after "99-…"


def test_dev_null_symlink_masks_a_vendor_file(tmp_path: Path) -> None:
    """A symlink to /dev/null in /etc hides the vendor file and contributes nothing."""
    make_tree(
        tmp_path, {"/usr/lib/binfmt.d/q.conf": rule("q"), "/usr/lib/binfmt.d/r.conf": rule("r")}
    )
    (tmp_path / "etc/binfmt.d").mkdir(parents=True)
    (tmp_path / "etc/binfmt.d/q.conf").symlink_to("/dev/null")
    assert effective_files(host_root=str(tmp_path)) == [str(tmp_path / "usr/lib/binfmt.d/r.conf")]
    assert [x.entry.name for x in read_binfmt_d(host_root=str(tmp_path), kernel=K618)] == ["r"]


def test_empty_file_hides_a_vendor_file(tmp_path: Path) -> None:
    """An empty /etc file wins its name like any file and registers nothing."""
    make_tree(tmp_path, {"/usr/lib/binfmt.d/q.conf": rule("q"), "/etc/binfmt.d/q.conf": ""})
    assert effective_files(host_root=str(tmp_path)) == [str(tmp_path / "etc/binfmt.d/q.conf")]
    assert read_binfmt_d(host_root=str(tmp_path), kernel=K618) == []


def test_only_visible_conf_files_count(tmp_path: Path) -> None:
    """Hidden files and names not ending in .conf are ignored, as systemd ignores them."""
    make_tree(
        tmp_path,
        {
            "/etc/binfmt.d/.hidden.conf": rule("hidden"),
            "/etc/binfmt.d/README": rule("readme"),
            "/etc/binfmt.d/x.conf.dpkg-old": rule("old"),
            "/etc/binfmt.d/x.conf": rule("x"),
        },
    )
    assert [x.entry.name for x in read_binfmt_d(host_root=str(tmp_path), kernel=K618)] == ["x"]


def test_custom_dirs_and_missing_dirs(tmp_path: Path) -> None:
    """dirs can be given; missing directories are skipped; no directory means no files."""
    make_tree(tmp_path, {"/a/x.conf": rule("x"), "/b/x.conf": rule("y")})
    assert effective_files(["/nope", "/b", "/a"], host_root=str(tmp_path)) == [
        str(tmp_path / "b/x.conf")
    ]
    assert effective_files(host_root=str(tmp_path / "empty")) == []
    assert SYSTEMD_DIRS[0] == "/etc/binfmt.d"


def test_dangling_symlink_is_skipped_but_a_directory_is_an_error(tmp_path: Path) -> None:
    """A vanished file is skipped (systemd ignores ENOENT); one that cannot be read is an error."""
    (tmp_path / "etc/binfmt.d").mkdir(parents=True)
    (tmp_path / "etc/binfmt.d/gone.conf").symlink_to(tmp_path / "nowhere")
    assert read_binfmt_d(host_root=str(tmp_path), kernel=K618) == []
    (tmp_path / "etc/binfmt.d/dir.conf").mkdir()
    with pytest.raises(ConfigError, match=r"dir\.conf: cannot be read"):
        read_binfmt_d(host_root=str(tmp_path), kernel=K618)


def test_invalid_line_in_a_tree_names_the_file(tmp_path: Path) -> None:
    """read_binfmt_d reports the invalid line's full path and line number."""
    make_tree(tmp_path, {"/etc/binfmt.d/x.conf": "# ok\n\n:x:Q::AB::/bin/i:\n"})
    with pytest.raises(ConfigError) as info:
        read_binfmt_d(host_root=str(tmp_path), kernel=K618)
    assert str(info.value).startswith(f"{tmp_path}/etc/binfmt.d/x.conf:3: invalid type 'Q'")


# == systemd binfmt.d: rendering ===================================================


def test_render_has_a_header_and_one_line_per_entry() -> None:
    """render_binfmt_d: header comment, optional comment lines, then the register lines."""
    text = render_binfmt_d([entry_a()], comment="line one\n\nline three", kernel=K618)
    lines = text.splitlines()
    assert lines[0].startswith("# Written by binfmt")
    assert lines[1:4] == ["# line one", "#", "# line three"]
    assert lines[4] == entry_a().to_register(K618)
    assert text.endswith("\n")


def test_comment_cannot_inject_a_rule() -> None:
    """Carriage returns and NULs in a comment (line ends for systemd) stay inside comments."""
    text = render_binfmt_d([], comment=f"x\r{RULE_A}\0{RULE_B}", kernel=K618)
    assert parse(text) == []


def test_render_refuses_a_line_break_in_a_field() -> None:
    """An interpreter with a newline cannot be one binfmt.d line: InvalidEntry, no broken file."""
    with pytest.raises(InvalidEntry, match=r"cannot be one line of a binfmt\.d file"):
        render_binfmt_d([entry_a(interpreter="/bin/x\ny")], kernel=K618)


def test_render_guards_against_a_comment_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should to_register ever start a line with '#' or ';', render refuses instead of hiding it."""
    monkeypatch.setattr(Entry, "to_register", lambda self, kernel=None: RULE_A.replace(":", "#"))
    with pytest.raises(InvalidEntry, match="cannot be one line"):
        render_binfmt_d([entry_a()], kernel=K618)


text_fields = st.text(
    alphabet=st.characters(codec="utf-8", blacklist_characters="\0"),
    min_size=1,
    max_size=12,
)


@st.composite
def entries(draw: st.DrawFn, letters: str = "POCF") -> Entry:
    name = draw(text_fields)
    interpreter = draw(text_fields)
    flags = draw(st.text(alphabet=letters, max_size=3))
    try:
        if draw(st.booleans()):
            return Entry(
                name,
                interpreter,
                type=EntryType.EXTENSION,
                extension=draw(text_fields),
                flags=flags,
            )
        magic = draw(st.binary(min_size=1, max_size=64))
        mask = draw(st.one_of(st.none(), st.binary(min_size=len(magic), max_size=len(magic))))
        offset = draw(st.integers(0, 256 - len(magic)))
        return Entry(name, interpreter, offset=offset, magic=magic, mask=mask, flags=flags)
    except InvalidEntry:
        assume(False)
        raise


@FUZZ
@given(st.lists(entries(), max_size=4))
def test_render_then_parse_gives_the_entries_back(items: list[Entry]) -> None:
    """parse_binfmt_d(render_binfmt_d(es)) == es, or render refuses with InvalidEntry."""
    try:
        text = render_binfmt_d(items, comment="round trip", kernel=K618)
    except InvalidEntry as exc:
        fields = [f for e in items for f in (e.name, e.interpreter, e.extension or "")]
        assert "delimiter" in str(exc) or any("\n" in f or "\r" in f for f in fields)
        return
    assert [x.entry for x in parse(text)] == items


# == Debian format files ===========================================================

FEX_MASK = r"\xff" * 5 + r"\xfe\xfe" + r"\x00" * 4 + r"\xff" * 5 + r"\xfe\xff\xff\xff"
FEX_LIKE = f"""\
package fex
interpreter /usr/bin/FEXInterpreter
magic \\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x3e\\x00
offset 0
mask {FEX_MASK}
credentials yes
fix_binary yes
preserve yes
expose_interpreter optional
"""


def test_fex_style_file_keeps_unknown_keys_and_flags() -> None:
    """Unknown keys land in extra; credentials yes gives C, which the kernel stores as OC."""
    fmt = parse_debian_format("FEX-x86_64", FEX_LIKE)
    assert fmt.extra == (("expose_interpreter", "optional"),)
    assert (fmt.credentials, fmt.preserve, fmt.fix_binary) == (True, True, True)
    entry = fmt.to_entry(K618)
    assert entry.flags.letters == "POCF"
    assert entry.magic[18] == 0x3E  # EM_X86_64
    assert parse_debian_format("FEX-x86_64", render_debian_format(fmt)) == fmt


def test_get_import_line_rules() -> None:
    """Keys are ASCII-lower-cased, end at the first space; C blanks end lines; later lines win."""
    text = (
        "# a comment is just a key\n"
        "Package  spaced\n"
        "INTERPRETER /usr/bin/i \t\r\n"
        "magic first\n"
        "magic \\x41B\n"
        " magic CD\n"  # a leading space makes the key empty
        "detector\n"
        "ÉXTRA v\n"
        "preserve Yes\n"
        "fix_binary yes\v\f\n"
        "credentials yes\x1c"  # not a C blank: the value is not exactly "yes"
    )
    fmt = parse_debian_format("n", text)
    assert fmt.package == " spaced"  # the value keeps its leading space
    assert fmt.interpreter == "/usr/bin/i"
    assert fmt.magic == "\\x41B"
    assert fmt.detector is None  # a key without a value is absent
    assert (fmt.preserve, fmt.fix_binary, fmt.credentials) == (False, True, False)
    assert fmt.extra == (("#", "a comment is just a key"), ("Éxtra", "v"))
    assert fmt.to_entry(K618) == Entry("n", "/usr/bin/i", magic=b"AB", flags="F")


def test_tab_does_not_separate_key_and_value() -> None:
    """get_import() splits at ' ' only, so 'package<TAB>x' has no package key."""
    with pytest.raises(ConfigError, match="required 'package' line missing"):
        parse_debian_format("n", "package\tx\ninterpreter /i\nmagic AB\n")


def test_extension_format() -> None:
    """An 'extension' format registers an E entry with the extension in the magic field."""
    fmt = parse_debian_format("wine", "package wine\ninterpreter /usr/bin/wine\nextension exe\n")
    assert (fmt.type, fmt.magic, fmt.extension, fmt.offset) == (EntryType.EXTENSION, "", "exe", 0)
    assert fmt.to_entry(K618) == Entry(
        "wine", "/usr/bin/wine", type=EntryType.EXTENSION, extension="exe"
    )


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("n", "", "is empty"),
        ("status", "package p\ninterpreter /i\nmagic AB\n", "reserved"),
        ("n", "interpreter /i\nmagic AB\n", "required 'package' line missing"),
        ("n", "package\ninterpreter /i\nmagic AB\n", "required 'package' line missing"),
        ("n", "package p\nmagic AB\n", "required 'interpreter' line missing"),
        ("n", "package p\ninterpreter /i\n", "either magic or extension is required"),
        ("n", "package p\ninterpreter /i\nmagic AB\nextension x\n", "both magic and extension"),
        ("n", "package p\ninterpreter /i\nextension x\nmask ff\n", "mask with extension"),
        ("n", "package p\ninterpreter /i\nextension x\noffset 1\n", "offset with extension"),
        ("n", "package p\ninterpreter /i\nextension\n", "'extension' line has no value"),
        ("n", "package p\ninterpreter /i\nmagic AB\noffset 0x10\n", "not a decimal number"),
        ("n", "package p\ninterpreter /i\nmagic AB\noffset 99999999999\n", "not a decimal"),
        ("n", "package p\ninterpreter /i\nmagic AB\ntype other\n", "must be 'magic' or"),
        ("n", "package p\ninterpreter /i\nextension x\ntype magic\n", "needs a 'magic' line"),
        ("n", "package p\ninterpreter /i\nmagic A\0B\n", "NUL"),
        ("n/m", "package p\ninterpreter /i\nmagic AB\n", "invalid name"),
    ],
)
def test_malformed_format_files_raise_config_error(name: str, text: str, problem: str) -> None:
    """Files update-binfmts refuses (or could not register) raise ConfigError naming the file."""
    with pytest.raises(ConfigError, match=problem) as info:
        parse_debian_format(name, text, source=f"/usr/share/binfmts/{name}")
    assert str(info.value).startswith(f"/usr/share/binfmts/{name}:")


def test_nul_in_a_format_file_names_its_line() -> None:
    """A NUL byte (update-binfmts would silently cut the line there) is refused with its line."""
    with pytest.raises(ConfigError) as info:
        parse_debian_format("n", "package p\ninterpreter /i\nmagic A\0B\n", source="f")
    assert (info.value.source, info.value.lineno) == ("f", 3)
    assert str(info.value) == "f:3: contains a NUL byte"


def test_to_entry_refuses_a_colon_in_a_field() -> None:
    """update-binfmts always delimits with ':', so a ':' in a field cannot register."""
    fmt = DebianFormat("n", "p", "/opt/a:b/i", magic="AB")
    with pytest.raises(InvalidEntry, match="contains ':'"):
        fmt.to_entry(K618)


def test_to_entry_keeps_its_own_interpreter_even_with_a_detector() -> None:
    """to_entry() does not substitute run-detectors; the caller decides (documented caveat)."""
    fmt = DebianFormat("n", "p", "/usr/bin/mono", magic="MZ", detector="/usr/lib/cli/detect")
    assert fmt.to_entry(K618).interpreter == "/usr/bin/mono"
    assert RUN_DETECTORS == "/usr/lib/binfmt-support/run-detectors"


@pytest.mark.parametrize(
    "bad",
    [
        {"interpreter": "/i\n"},
        {"interpreter": "/i "},
        {"package": ""},
        {"mask": ""},
        {"magic": ""},
        {"extension": "x"},
        {"offset": -1},
        {"name": "register"},
        {"name": "a/b"},
        {"extra": (("package", "x"),)},
        {"extra": (("Key", "x"),)},
        {"extra": (("a", "1"), ("a", "2"))},
        {"type": EntryType.EXTENSION, "extension": "x"},
    ],
)
def test_debian_format_validates_what_a_file_can_hold(bad: dict[str, object]) -> None:
    """Line breaks, trailing blanks, reserved names, E formats with magic … are refused."""
    kwargs: dict[str, object] = {"name": "n", "package": "p", "interpreter": "/i", "magic": "AB"}
    kwargs.update(bad)
    with pytest.raises(InvalidEntry):
        DebianFormat(**kwargs)  # type: ignore[arg-type]


def test_from_entry_spells_magic_like_to_register() -> None:
    """from_entry writes magic/mask in the spelling of the ':'-delimited register line."""
    entry = Entry(
        "qemu-x",
        "/usr/bin/qemu-x",
        offset=3,
        magic=b"\x7fELF\x02:\xff",
        mask=b"\xff" * 7,
        flags="F",
    )
    fmt = DebianFormat.from_entry(entry, "pkg")
    fields = entry.to_register(K618).split(":")
    assert (fmt.magic, fmt.mask) == (fields[4], fields[5])
    assert fmt.magic == "\\x7fELF\\x02\\x3a\\xff"
    assert (fmt.offset, fmt.fix_binary, fmt.package) == (3, True, "pkg")
    assert fmt.to_entry(K618) == entry


@pytest.mark.parametrize(
    ("letters", "rule"), [("O", "O without C"), ("PO", "O without C"), ("T", "only express")]
)
def test_from_entry_refuses_flags_debian_cannot_express(letters: str, rule: str) -> None:
    """O alone (update-binfmts writes C, never O) and the 7.3 flags cannot be a format file."""
    with pytest.raises(InvalidEntry, match=rule):
        DebianFormat.from_entry(entry_a(flags=letters), "p")


def test_from_entry_refuses_a_colon() -> None:
    """An entry whose name or interpreter holds ':' cannot be a Debian format."""
    with pytest.raises(InvalidEntry, match="contains ':'"):
        DebianFormat.from_entry(entry_a(interpreter="/opt/a:b"), "p")


safe_text = st.text(alphabet="abcXYZ019/._-+ \t#;\\é\u00ff:\n", min_size=1, max_size=10)


@st.composite
def debian_entries(draw: st.DrawFn) -> Entry:
    name, interpreter = draw(safe_text), draw(safe_text)
    flags = draw(st.sampled_from(["", "P", "C", "F", "PC", "PF", "CF", "PCF", "OC", "POCF"]))
    try:
        if draw(st.booleans()):
            ext = draw(safe_text)
            return Entry(name, interpreter, type=EntryType.EXTENSION, extension=ext, flags=flags)
        magic = draw(st.binary(min_size=1, max_size=80))
        mask = draw(st.one_of(st.none(), st.binary(min_size=len(magic), max_size=len(magic))))
        offset = draw(st.integers(0, 256 - len(magic)))
        return Entry(name, interpreter, offset=offset, magic=magic, mask=mask, flags=flags)
    except InvalidEntry:
        assume(False)
        raise


@FUZZ
@given(debian_entries(), st.lists(st.tuples(safe_text, safe_text), max_size=2))
def test_from_entry_render_parse_to_entry_round_trip(
    entry: Entry, extra: list[tuple[str, str]]
) -> None:
    """from_entry → render → parse → to_entry gives the entry back, or from_entry refuses."""
    try:
        fmt = DebianFormat.from_entry(entry, "pkg")
        fmt = attrs.evolve(fmt, extra=tuple(extra))
    except InvalidEntry:
        return
    text = render_debian_format(fmt)
    again = parse_debian_format(fmt.name, text)
    assert again == fmt
    assert again.to_entry(K618) == entry


def test_read_debian_formats_follows_links_and_skips_the_rest(tmp_path: Path) -> None:
    """Regular files and links to them are read (sorted); directories and dangling links are not."""
    (tmp_path / "b").write_text("package p\ninterpreter /i\nmagic BB\n")
    (tmp_path / "target").mkdir()
    (tmp_path / "target/jar.binfmt").write_text("package p\ninterpreter /j\nmagic PK\n")
    (tmp_path / "a").symlink_to(tmp_path / "target/jar.binfmt")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    formats = read_debian_formats(str(tmp_path))
    assert [(f.name, f.interpreter) for f in formats] == [("a", "/j"), ("b", "/i")]
    assert read_debian_formats(str(tmp_path / "missing")) == []


def test_read_debian_formats_names_the_malformed_file(tmp_path: Path) -> None:
    """A malformed file raises ConfigError with its path."""
    (tmp_path / "good").write_text("package p\ninterpreter /i\nmagic BB\n")
    (tmp_path / "bad").write_text("interpreter /i\nmagic BB\n")
    with pytest.raises(ConfigError) as info:
        read_debian_formats(str(tmp_path))
    assert info.value.source == str(tmp_path / "bad")


# == update-binfmts itself (differential) =========================================


def update_binfmts() -> str:
    found = shutil.which("update-binfmts")
    if found:
        return found
    cached = UPDATE_BINFMTS_CACHE / "usr" / "sbin" / "update-binfmts"
    if cached.exists():
        return str(cached)
    require_or_skip(
        "update-binfmts not found: apt-get download binfmt-support && "
        "dpkg-deb -x binfmt-support_*.deb tests/.cache/binfmt-support"
    )


def enable_line(tool: str, tmp: Path, text: str) -> Optional[str]:
    """The line `update-binfmts --enable` would write for format file ``text``, or None if refused.

    --procdir points at an empty directory, so the kernel is never touched:
    --import then only writes the database, and --test --enable only prints.
    """
    admin, importdir, proc = tmp / "admin", tmp / "import", tmp / "proc"
    for d in (admin, importdir, proc):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    (importdir / "fmt").write_text(text)
    common = ["--admindir", str(admin), "--importdir", str(importdir), "--procdir", str(proc)]
    subprocess.run([tool, *common, "--import", "fmt"], capture_output=True, check=False)
    assert list(proc.iterdir()) == []
    if not (admin / "fmt").exists():
        return None
    out = subprocess.run(
        [tool, *common, "--test", "--enable", "fmt"], capture_output=True, text=True, check=True
    ).stdout
    return out.split("format string:\n ", 1)[1]


DIFFERENTIAL_CASES = [
    FEX_LIKE,
    "Package x\nINTERPRETER /bin/i\nMagic \\x7fELF\n",
    "package x\ninterpreter /bin/i\nmagic  AB\n",
    "package x \r\ninterpreter /bin/i \t\r\nmagic AB\r\noffset 4\r\n",
    "package\tx\ninterpreter /bin/i\nmagic AB\n",
    "# comment\npackage x\ninterpreter /bin/i\nmagic AB\n",
    "package x\ninterpreter /bin/i\nmagic AA\nmagic BB\nmask \\xff\\x0f\n",
    "package x\ninterpreter /bin/i\nextension exe\n",
    "package x\ninterpreter /bin/i\nextension exe\ncredentials yes\npreserve yes\n",
    "package x\ninterpreter /bin/i\nmagic\nextension exe\n",
    "package x\ninterpreter /bin/i\nmagic AB\ncredentials Yes\nfix_binary yes",
    "package x\ninterpreter /bin/i\nmagic AB\ndetector /bin/true\n",
    "package x\ninterpreter /bin/i\nmagic AB\noffset abc\n",
    "package x\nmagic AB\n",
    "",
    "package x\ninterpreter /bin/i\n",
    "package x\ninterpreter /bin/i\nmagic AB\nextension exe\n",
    "package x\ninterpreter /bin/i\nmagic \\x4\\x41\n",
]


def ours(text: str) -> Optional[Entry]:
    try:
        return parse_debian_format("fmt", text).to_entry(K618)
    except (ConfigError, InvalidEntry):
        return None


def kernel_reads(line: Optional[str]) -> Optional[Entry]:
    if line is None:
        return None
    try:
        return Entry.parse(line, K618)
    except InvalidEntry:
        return None


@pytest.fixture(scope="module")
def real_files() -> Iterator[list[str]]:
    yield [
        p.read_text()
        for p in sorted(DEBIAN.rglob("*"))
        if p.is_file() and "binfmt.d" not in p.parts
    ]


@pytest.mark.parametrize("text", DIFFERENTIAL_CASES)
def test_update_binfmts_registers_what_to_entry_says(tmp_path: Path, text: str) -> None:
    """The real update-binfmts writes the line to_entry() models (or neither can register)."""
    tool = update_binfmts()
    line = enable_line(tool, tmp_path, text)
    expected = kernel_reads(line)
    got = ours(text)
    if got is not None and "detector" in text:
        got = attrs.evolve(got, interpreter=RUN_DETECTORS)
    assert got == expected, line


def test_update_binfmts_agrees_on_every_real_file(tmp_path: Path, real_files: list[str]) -> None:
    """For each captured Debian format file, update-binfmts' line parses to to_entry()."""
    tool = update_binfmts()
    for text in real_files:
        expected = kernel_reads(enable_line(tool, tmp_path, text))
        assert expected is not None
        assert ours(text) == expected


# == writing files =================================================================


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


@pytest.mark.parametrize(
    "bad", ["a/b", "../x", "/abs", ".", "..", "", "a\0b", "n" * 256, "é" * 128]
)
def test_unsafe_names_write_nothing(tmp_path: Path, bad: str) -> None:
    """A name that is not one plain file name raises UnsafeFileName before anything is written."""
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafeFileName) as info:
        write_files(str(out), {"ok.conf": "x\n", bad: "y\n"})
    assert info.value.name == bad
    assert str(info.value).startswith("invalid file name ")
    assert listing(out) == []
    assert listing(tmp_path) == ["out"]


def test_write_files_writes_atomically_with_mode_0644(tmp_path: Path) -> None:
    """Content and mode 0644 are exact (whatever the umask), old files replaced, no temps left."""
    (tmp_path / "old.conf").write_text("old\n")
    old_umask = os.umask(0o077)
    try:
        paths = write_files(str(tmp_path), {"new.conf": "new\n", "old.conf": "replaced\n"})
    finally:
        os.umask(old_umask)
    assert paths == [str(tmp_path / "new.conf"), str(tmp_path / "old.conf")]
    assert listing(tmp_path) == ["new.conf", "old.conf"]
    assert (tmp_path / "new.conf").read_text() == "new\n"
    assert (tmp_path / "old.conf").read_text() == "replaced\n"
    for path in paths:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_symlink_at_a_target_is_refused(tmp_path: Path) -> None:
    """A symlink (a /dev/null mask, say) at a name is never written through nor replaced."""
    target = tmp_path / "target"
    target.write_text("keep\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.conf").symlink_to(target)
    with pytest.raises(WriteError) as info:
        write_files(str(out), {"a.conf": "a\n", "x.conf": "evil\n"})
    assert info.value.errno == errno.ELOOP
    assert "symbolic link" in str(info.value)
    assert target.read_text() == "keep\n"
    assert (out / "x.conf").is_symlink()
    assert listing(out) == ["x.conf"]


def test_directory_at_a_target_is_refused(tmp_path: Path) -> None:
    """A non-regular file at a name is refused, and nothing else is written."""
    (tmp_path / "x.conf").mkdir()
    with pytest.raises(WriteError, match="not a regular file"):
        write_files(str(tmp_path), {"a.conf": "a\n", "x.conf": "x\n"})
    assert listing(tmp_path) == ["x.conf"]


def test_missing_or_non_directory_target_dir(tmp_path: Path) -> None:
    """Writing into a missing directory or a file raises WriteError naming it."""
    with pytest.raises(WriteError, match="no such directory") as info:
        write_files(str(tmp_path / "missing"), {"a": "a"})
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(tmp_path / "missing")
    assert isinstance(info.value, OSError) and isinstance(info.value, BinfmtError)
    (tmp_path / "file").write_text("")
    with pytest.raises(WriteError, match="not a directory"):
        write_files(str(tmp_path / "file"), {"a": "a"})


def test_failure_while_writing_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If a later file fails to write, no file appears or changes and no temp file remains."""
    (tmp_path / "b.conf").write_text("old\n")
    real_fsync = os.fsync
    calls = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(WriteError, match="No space left") as info:
        write_files(str(tmp_path), {"a.conf": "a\n", "b.conf": "b\n"})
    assert info.value.errno == errno.ENOSPC
    assert listing(tmp_path) == ["b.conf"]
    assert (tmp_path / "b.conf").read_text() == "old\n"


def test_failed_rename_keeps_earlier_files_and_removes_temps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename failing midway leaves the files renamed before it, and no temp files."""
    real_replace = os.replace
    calls = []

    def failing_replace(*args: object, **kwargs: object) -> None:
        calls.append(args)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real_replace(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(WriteError, match="rename"):
        write_files(str(tmp_path), {"a.conf": "a\n", "b.conf": "b\n"})
    assert listing(tmp_path) == ["a.conf"]


def test_exported_binfmt_d_files_override_vendor_files(tmp_path: Path) -> None:
    """binfmt_d_files writes NAME.conf into /etc/binfmt.d, beating /usr/lib's file of that name."""
    vendor = Entry.parse((QEMU / "lib" / "binfmt.d" / "qemu-aarch64.conf").read_text(), K618)
    make_tree(tmp_path, {"/usr/lib/binfmt.d/qemu-aarch64.conf": vendor.to_register(K618) + "\n"})
    mine = attrs.evolve(vendor, interpreter="/usr/bin/qemu-aarch64-static", flags="F")
    files = binfmt_d_files([mine, entry_a()], kernel=K618)
    assert list(files) == ["qemu-aarch64.conf", "a.conf"]
    (tmp_path / "etc/binfmt.d").mkdir(parents=True)
    write_files(str(tmp_path / "etc/binfmt.d"), files)
    lines = effective_entries(read_binfmt_d(host_root=str(tmp_path), kernel=K618))
    assert [x.entry for x in lines] == [entry_a(), mine]


def test_binfmt_d_files_refuse_hidden_and_repeated_names() -> None:
    """A '.name' entry would be a hidden file systemd ignores; one name cannot be two files."""
    with pytest.raises(InvalidEntry, match="hidden"):
        binfmt_d_files([entry_a(name=".x")], kernel=K618)
    with pytest.raises(InvalidEntry, match="twice"):
        binfmt_d_files([entry_a(), entry_a()], kernel=K618)


def test_debian_files_round_trip_through_an_import_dir(tmp_path: Path) -> None:
    """debian_files writes one format per entry that read_debian_formats turns back into it."""
    items = [
        entry_a(flags="PCF"),
        Entry("b", "/usr/bin/wine", type=EntryType.EXTENSION, extension="exe"),
    ]
    write_files(str(tmp_path), debian_files(items, package="mypkg"))
    formats = read_debian_formats(str(tmp_path))
    assert [f.package for f in formats] == ["mypkg", "mypkg"]
    assert [f.to_entry(K618) for f in formats] == items
    with pytest.raises(InvalidEntry, match="O without C"):
        debian_files([entry_a(flags="O")])


# == fuzz =========================================================================

binfmt_d_lines = st.lists(
    st.tuples(
        st.sampled_from(["", " ", "\t", "#", ";", " ;", "x"]),
        st.sampled_from([RULE_A, RULE_B, "", r":c:M:2:\x0a::/i:OC", ":d:M::ff:"]),
        st.sampled_from(["", " ", "\t ", ":", "P", "\\x"]),
        st.sampled_from(["\n", "\r", "\r\n", "\n\r", "\0", "\n\0", "\r\n\0", ""]),
    ).map("".join)
).map("".join)
weird_text = st.one_of(
    st.text(),
    st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
    binfmt_d_lines,
)


@FUZZ
@given(weird_text)
def test_parse_binfmt_d_raises_only_library_errors(text: str) -> None:
    """Any text either parses (every entry valid) or raises a BinfmtError."""
    try:
        lines = parse_binfmt_d(text, "fuzz.conf", K618)
    except BinfmtError:
        return
    for line in lines:
        assert line.entry == Entry.parse(line.line.strip(" \t") + "\n", K618)


DEBIAN_WORDS = st.sampled_from(
    [
        "package p\n",
        "interpreter /i\n",
        "magic AB\n",
        "magic \\x7f:\n",
        "mask ff\n",
        "extension x\n",
        "offset 3\n",
        "offset \n",
        "type magic\n",
        "detector /d\n",
        "credentials yes\n",
        "preserve yes\n",
        "fix_binary yes\n",
        "Extra  v \n",
        "\n",
        " ",
        "\0",
        "\r",
    ]
)
debian_text = st.tuples(st.lists(DEBIAN_WORDS), st.lists(DEBIAN_WORDS)).map(
    lambda w: "".join(w[0]) + "package p\ninterpreter /i\nmagic AB\n" + "".join(w[1])
)


@FUZZ
@given(st.one_of(st.text(max_size=8), st.just("fmt")), st.one_of(st.text(), debian_text))
def test_parse_debian_format_raises_only_library_errors(name: str, text: str) -> None:
    """Any text parses to a format that renders back to itself, or raises a BinfmtError."""
    try:
        fmt = parse_debian_format(name, text)
    except BinfmtError:
        return
    assert parse_debian_format(name, render_debian_format(fmt)) == fmt
    with contextlib.suppress(BinfmtError):
        fmt.to_entry(K618)

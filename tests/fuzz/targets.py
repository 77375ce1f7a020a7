"""Fuzz targets: every parser of outside data, each with its contract.

A target takes one byte string and raises (an ``AssertionError`` or any
exception that is not the library's own) only when the contract is broken:

* the only errors are the library's (:class:`binfmt.errors.BinfmtError` and
  its subclasses), never a ``ValueError``, ``IndexError``, ``OverflowError`` …;
* no hang (the runners time each input);
* every accepted input renders back to itself: a parsed register line's
  entry renders a line that parses to the same entry, an entry file read
  renders the same text, a binfmt.d or Debian format file's entries render a
  file that reads back the same, a ``#!`` line's reading renders a line read
  the same way.

The same targets run under atheris (coverage-guided, ``python -m
tests.fuzz.run``), under hypothesis in the test suite (``tests/test_fuzz.py``),
and over the checked-in corpus (``tests/fuzz/corpus/<target>/``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Callable

import attrs

from binfmt import qemu
from binfmt.binfmt_d import parse_binfmt_d, render_binfmt_d
from binfmt.debian import parse_debian_format, render_debian_format
from binfmt.elf import ElfHeader, NotElf, details, program_interpreter
from binfmt.entry import Entry, EntryType
from binfmt.errors import BinfmtError, InvalidEntry
from binfmt.host import Host
from binfmt.kernel import KernelRules
from binfmt.prediction import Shebang, parse_shebang, predict
from binfmt.procfs import BinfmtMisc, State
from binfmt.scan import FileResult, scan
from binfmt.text import decode

#: A target: True when the input got past the parser (accepted), False when refused.
Target = Callable[[bytes], bool]

#: Kernel rules a target may parse under, chosen by the input's first byte.
KERNELS = (
    KernelRules.for_release("6.18.0"),
    KernelRules.for_release("7.3.0"),
    KernelRules.for_release("5.10.0"),
    KernelRules.for_release("4.4.0"),
)
X86 = Host.from_facts("x86_64", "6.18.0", config={"CONFIG_IA32_EMULATION": "y"})
_SCRATCH = tempfile.mkdtemp(prefix="binfmt-fuzz-")


def _rules(data: bytes) -> tuple[KernelRules, bytes]:
    if not data:
        return KERNELS[0], b""
    return KERNELS[data[0] % len(KERNELS)], data[1:]


def _scratch(name: str) -> str:
    """An empty directory for one input (the same one each time: inputs run one by one)."""
    path = os.path.join(_SCRATCH, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def _entry_round_trip(entry: Entry, rules: KernelRules) -> None:
    """An accepted entry renders a register line and an entry file that read back as itself."""
    entry.check(rules)
    line = entry.to_register(rules)
    again = Entry.parse(line, rules)
    assert again == attrs.evolve(entry, enabled=True), (entry, line, again)
    text = entry.to_status()
    read = Entry.from_status(entry.name, text)
    assert read.to_status() == text, (entry, read)
    if read != entry:  # only where two entries write the same text
        assert read.interpreter in entry.interpreter, (entry, read)


# -- the targets ----------------------------------------------------------------------------


def register_line(data: bytes) -> bool:
    """``Entry.parse`` of one write to ``register``, under the rules the first byte picks."""
    rules, line = _rules(data)
    try:
        entry = Entry.parse(line, rules)
    except InvalidEntry as exc:
        assert exc.errno, exc
        return False
    _entry_round_trip(entry, rules)
    return True


def entry_file(data: bytes) -> bool:
    """``Entry.from_status`` of an entry file's bytes: an entry that writes the same text."""
    try:
        entry = Entry.from_status("fuzz", data)
    except BinfmtError:
        return False
    assert entry.to_status() == decode(data), (data, entry)
    return True


def procfs_tree(data: bytes) -> bool:
    """``BinfmtMisc(tree).state()`` of a fake tree cut from the input.

    Parts are separated by ``\\0\\0``: the ``status`` file, the ``register``
    file (the lookup order), then ``name=content`` entry files.
    """
    root = _scratch("tree")
    parts = data.split(b"\0\0")
    with open(os.path.join(root, "status"), "wb") as f:
        f.write(parts[0])
    with open(os.path.join(root, "register"), "wb") as f:
        f.write(parts[1] if len(parts) > 1 else b"")
    written = {}
    for i, part in enumerate(parts[2:]):
        raw, _, content = part.partition(b"=")
        name = decode(raw)
        if (
            not raw
            or b"/" in raw
            or b"\0" in raw
            or len(raw) > 255
            or name in (".", "..", "status", "register")
            or name in written
        ):
            name = f"e{i}"
        with open(os.path.join(root, name), "wb") as f:
            f.write(content)
        written[name] = content
    try:
        state = BinfmtMisc(root).state()
    except BinfmtError:
        return False
    assert len(state.entries) + len(state.unreadable) == len(written), (state, written)
    assert [n for n, _ in state.unreadable_reasons] == list(state.unreadable)
    for entry in state.entries:
        assert entry.to_status() == decode(written[entry.name]), (entry, written[entry.name])
    return bool(state.entries)


def binfmt_d(data: bytes) -> bool:
    """``parse_binfmt_d`` of a binfmt.d file; its entries render a file read back the same."""
    rules, body = _rules(data)
    text = decode(body)
    errors: list[BinfmtError] = []
    lines = parse_binfmt_d(text, "fuzz.conf", rules, errors)
    try:
        strict = parse_binfmt_d(text, "fuzz.conf", rules)
    except BinfmtError:
        assert errors
    else:
        assert not errors and strict == lines
    entries = [line.entry for line in lines]
    try:
        rendered = render_binfmt_d(entries, comment=text[:40], kernel=rules)
    except InvalidEntry:
        return bool(entries)  # an entry a binfmt.d line cannot hold (a line break in a field)
    again = [line.entry for line in parse_binfmt_d(rendered, "rendered.conf", rules)]
    assert again == [attrs.evolve(e, enabled=True) for e in entries], (entries, again)
    return bool(entries)


def debian_format(data: bytes) -> bool:
    """``parse_debian_format``; the format renders a file that reads back the same."""
    text = decode(data)
    try:
        fmt = parse_debian_format("fuzz", text)
    except BinfmtError:
        return False
    again = parse_debian_format("fuzz", render_debian_format(fmt))
    assert again == fmt, (fmt, again)
    with contextlib.suppress(BinfmtError):
        fmt.to_entry(KERNELS[0])
    return True


def elf_header(data: bytes) -> bool:
    """``ElfHeader.decode`` and everything derived from a header."""
    try:
        header = ElfHeader.decode(data)
    except NotElf:
        return False
    assert ElfHeader.decode(data[:64]) == header
    for name in dir(header):
        if not name.startswith("_"):
            getattr(header, name)
    qemu.match_header(data)
    return True


def elf_file(data: bytes) -> bool:
    """``details`` and ``program_interpreter`` of a file: library errors only, same PT_INTERP."""
    path = os.path.join(_SCRATCH, "elf")
    with open(path, "wb") as f:
        f.write(data)
    try:
        info = details(path)
    except BinfmtError:
        info = None
    try:
        header = ElfHeader.decode(data)
    except NotElf:
        assert info is None
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        interp = program_interpreter(fd, header)
    except BinfmtError:
        return False
    finally:
        os.close(fd)
    if info is not None:
        assert info.header == header
        assert info.interpreter == interp, (info.interpreter, interp)
    return True


def _render_shebang(shebang: Shebang) -> bytes:
    line = b"#!" + shebang.interpreter.encode("utf-8", "surrogateescape")
    if shebang.argument is not None:
        line += b" " + shebang.argument.encode("utf-8", "surrogateescape")
    # A NUL ends the line where a newline would lose something: an empty
    # argument (a blank, then a NUL), an empty interpreter, an argument that
    # ends in blanks (kept without a newline: the trim stops at the NUL padding).
    arg = shebang.argument
    if arg == "" or not shebang.interpreter or (arg is not None and arg[-1] in " \t"):
        return line + b"\0"
    return line + b"\n"


def shebang_line(data: bytes) -> bool:
    """``parse_shebang``: never raises; its reading renders a line read the same way."""
    size = 128 if data[:1] == b"\x80" else 256
    head = data[1:]
    shebang = parse_shebang(head, size)
    if shebang is None:
        return False
    assert "\0" not in shebang.interpreter and "\n" not in shebang.interpreter
    arg = shebang.argument
    assert arg is None or ("\0" not in arg and "\n" not in arg), shebang
    assert not any(c in shebang.interpreter for c in " \t"), shebang
    rendered = _render_shebang(shebang)
    if len(rendered) <= size - 1:
        assert parse_shebang(rendered, size) == shebang, (head, shebang, rendered)
    return True


_STATE = State(
    "/fuzz",
    True,
    True,
    (
        Entry("ext", "/fuzz/missing", type=EntryType.EXTENSION, extension="x"),
        Entry("hash", "/bin/sh", magic=b"#!/fuzz", flags="P"),
        qemu.get("aarch64").to_entry("/usr/bin/qemu-aarch64-static", "F"),
        qemu.get("riscv64").to_entry("/fuzz/missing-qemu", "OC"),
    ),
)


def exec_file(data: bytes) -> bool:
    """predict() and scan() of any bytes as an executable file: a verdict, never a traceback."""
    root = _scratch("exec")
    path = os.path.join(root, "file.x" if data[:1] == b"x" else "file")
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o755)
    verdict = predict(path, state=_STATE, host=X86, rootfs=root)
    found: list[FileResult] = []
    scan(root, state=_STATE, host=X86, on_result=found.append)
    assert len(found) <= 1
    if found and found[0].verdict is not None:
        assert found[0].verdict.errno == verdict.errno, (found[0].verdict, verdict)
    return verdict.errno is None


TARGETS: dict[str, Target] = {
    "register_line": register_line,
    "entry_file": entry_file,
    "procfs_tree": procfs_tree,
    "binfmt_d": binfmt_d,
    "debian_format": debian_format,
    "elf_header": elf_header,
    "elf_file": elf_file,
    "shebang_line": shebang_line,
    "exec_file": exec_file,
}

"""binfmt.elf: the struct header decoder, and pyelftools details on real and hostile files.

The real binaries are Debian's (busybox-static, hello and libc6 for eight
architectures), fetched by ``tests/fetch-debian.sh``; tests that need them
skip with that instruction when they are missing.
"""

from __future__ import annotations

import errno
import functools
import os
import pickle
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Optional

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binfmt.elf import (
    MACHINE_NAMES,
    ElfDetails,
    ElfError,
    ElfHeader,
    InvalidElf,
    NotElf,
    NotRegularFile,
    details,
    read_head,
)
from binfmt.errors import BinfmtError
from binfmt.testing import require_or_skip

DEBIAN_DIR = Path(__file__).resolve().parent / ".cache" / "debian"
REPO = Path(__file__).resolve().parent.parent


@attrs.frozen
class Arch:
    """What Debian's binaries for one architecture are, read off the real files."""

    name: str
    elf_class: int
    byte_order: str
    machine: int
    machine_name: str
    loader: str  # hello's PT_INTERP
    abi: tuple[tuple[str, str], ...]


LITTLE = ("endianness", "little")
ARCHS = {
    a.name: a
    for a in (
        Arch("arm64", 64, "little", 183, "AArch64", "/lib/ld-linux-aarch64.so.1", (LITTLE,)),
        Arch(
            "armhf",
            32,
            "little",
            40,
            "ARM",
            "/lib/ld-linux-armhf.so.3",
            (("arm_eabi", "5"), ("float_abi", "hard"), LITTLE),
        ),
        Arch(
            "armel",
            32,
            "little",
            40,
            "ARM",
            "/lib/ld-linux.so.3",
            (("arm_eabi", "5"), ("float_abi", "soft"), LITTLE),
        ),
        Arch("i386", 32, "little", 3, "i386", "/lib/ld-linux.so.2", ()),
        Arch(
            "mips64el",
            64,
            "little",
            8,
            "MIPS",
            "/lib64/ld.so.1",
            (("mips_abi", "n64"), ("mips_nan", "legacy"), LITTLE),
        ),
        Arch(
            "mipsel",
            32,
            "little",
            8,
            "MIPS",
            "/lib/ld.so.1",
            (("mips_abi", "o32"), ("mips_nan", "legacy"), LITTLE),
        ),
        Arch(
            "ppc64el",
            64,
            "little",
            21,
            "PowerPC64",
            "/lib64/ld64.so.2",
            (("ppc64_abi", "ELFv2"), LITTLE),
        ),
        Arch("s390x", 64, "big", 22, "S/390", "/lib/ld64.so.1", ()),
    )
}
ARCH_NAMES = sorted(ARCHS)


def debian_root(arch: str) -> Path:
    """The extracted Debian packages for ``arch``, or skip the test."""
    root = DEBIAN_DIR / arch
    if not (root / ".fetched").is_file():
        require_or_skip("Debian binaries not fetched: run tests/fetch-debian.sh")
    return root


def resolve_in_root(root: Path, path: str) -> Path:
    """Follow ``path``'s symlinks as if ``root`` were ``/`` (the loaders are symlinks)."""
    parts = [p for p in path.split("/") if p]
    current = root
    for _ in range(40):
        if not parts:
            return current
        candidate = current / parts.pop(0)
        if candidate.is_symlink():
            target = os.readlink(candidate)
            base = root if target.startswith("/") else current
            parts = [p for p in target.split("/") if p] + parts
            current = base
        else:
            current = candidate
    raise AssertionError(f"too many symlinks resolving {path} in {root}")


def host_file(path: str) -> str:
    """A binary of this machine, or skip the test."""
    if not os.path.isfile(path):
        require_or_skip(f"{path} is not installed on this machine")
    return path


def all_real_elf_files() -> list[Path]:
    """Every ELF regular file in the fetched Debian trees (busybox, hello, libc6)."""
    found = []
    for arch in ARCH_NAMES:
        root = DEBIAN_DIR / arch
        if not (root / ".fetched").is_file():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                with open(path, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        found.append(path)
    return found


# -- synthetic ELF files ----------------------------------------------------------

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_DEBUG, DT_FLAGS_1 = 0, 1, 21, 0x6FFFFFFB
DF_1_PIE = 0x08000000


def make_header(
    elf_class: int = 64,
    byte_order: str = "little",
    *,
    etype: int = 2,
    machine: int = 62,
    flags: int = 0,
    phoff: Optional[int] = None,
    phnum: int = 0,
    phentsize: Optional[int] = None,
    entry: int = 0x401000,
    osabi: int = 0,
    abiversion: int = 0,
    version: int = 1,
) -> bytes:
    """An ELF file header with the given fields, packed as a linker would."""
    e = "<" if byte_order == "little" else ">"
    ident = b"\x7fELF" + bytes(
        [1 if elf_class == 32 else 2, 1 if byte_order == "little" else 2, 1, osabi, abiversion]
    )
    ident += bytes(16 - len(ident))
    if elf_class == 32:
        size, ent = 52, 32
        rest = struct.pack(
            e + "HHIIIIIHHHHHH",
            etype,
            machine,
            version,
            entry,
            size if phoff is None else phoff,
            0,
            flags,
            size,
            ent if phentsize is None else phentsize,
            phnum,
            40,
            0,
            0,
        )
    else:
        size, ent = 64, 56
        rest = struct.pack(
            e + "HHIQQQIHHHHHH",
            etype,
            machine,
            version,
            entry,
            size if phoff is None else phoff,
            0,
            flags,
            size,
            ent if phentsize is None else phentsize,
            phnum,
            64,
            0,
            0,
        )
    return ident + rest


def make_phdr(elf_class: int, byte_order: str, p_type: int, offset: int, filesz: int) -> bytes:
    """One program header; addresses and alignment do not matter to details()."""
    e = "<" if byte_order == "little" else ">"
    if elf_class == 32:
        return struct.pack(e + "IIIIIIII", p_type, offset, 0, 0, filesz, filesz, 4, 4)
    return struct.pack(e + "IIQQQQQQ", p_type, 4, offset, 0, 0, filesz, filesz, 8)


def make_elf(
    segments: list[tuple[int, bytes]],
    *,
    elf_class: int = 64,
    byte_order: str = "little",
    etype: int = 3,
    machine: int = 62,
    flags: int = 0,
) -> bytes:
    """A complete ELF file whose program headers point at ``segments`` (type, contents)."""
    hsize, psize = (52, 32) if elf_class == 32 else (64, 56)
    offset = hsize + psize * len(segments)
    phdrs = b""
    body = b""
    for p_type, contents in segments:
        phdrs += make_phdr(elf_class, byte_order, p_type, offset + len(body), len(contents))
        body += contents
    header = make_header(
        elf_class, byte_order, etype=etype, machine=machine, flags=flags, phnum=len(segments)
    )
    return header + phdrs + body


def make_dynamic(
    tags: list[tuple[int, int]], elf_class: int = 64, byte_order: str = "little"
) -> bytes:
    """A dynamic table of (d_tag, d_val) pairs, as given (add DT_NULL yourself)."""
    fmt = ("<" if byte_order == "little" else ">") + ("iI" if elf_class == 32 else "qQ")
    return b"".join(struct.pack(fmt, tag, val) for tag, val in tags)


def write(tmp_path: Path, data: bytes, name: str = "file") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def details_or_error(path: str) -> Optional[ElfDetails]:
    """details(), with the library's ELF errors turned into None (anything else propagates)."""
    try:
        return details(path)
    except ElfError:
        return None


def finishes_within(seconds: float, call: Callable[[], object]) -> Optional[BaseException]:
    """Run ``call`` in a thread; fail the test if it blocks, return what it raised."""
    outcome: list[Optional[BaseException]] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # the caller asserts on it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"call still blocked after {seconds} s"
    return outcome[0]


# -- real Debian binaries -------------------------------------------------------


@pytest.mark.parametrize("arch", ARCH_NAMES)
@pytest.mark.parametrize(("program", "etype"), [("bin/busybox", 2), ("usr/bin/hello", 3)])
def test_decode_real_debian_binaries(arch: str, program: str, etype: int) -> None:
    """decode() reads class, byte order, machine and type of Debian's busybox and hello."""
    root = debian_root(arch)
    expected = ARCHS[arch]
    header = ElfHeader.decode(read_head(str(root / program)))
    assert header.elf_class == expected.elf_class
    assert header.byte_order == expected.byte_order
    assert header.machine == expected.machine
    assert header.machine_name == expected.machine_name
    assert header.type == etype
    assert header.is_executable_type
    assert header.version == 1
    assert header.phentsize == (32 if expected.elf_class == 32 else 56)
    assert header.abi == expected.abi


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_details_busybox_static(arch: str) -> None:
    """Debian's busybox-static is a static ET_EXEC: no interpreter, no loader, not PIE."""
    path = str(debian_root(arch) / "bin/busybox")
    info = details(path)
    assert info.interpreter is None
    assert not info.is_dynamic
    assert not info.is_dynamic
    assert not info.is_static_pie
    assert not info.is_pie
    assert info.header == ElfHeader.decode(read_head(path))
    assert info.abi == ARCHS[arch].abi


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_details_hello_interpreter(arch: str) -> None:
    """Debian's hello is a dynamic PIE whose PT_INTERP is the architecture's loader."""
    info = details(str(debian_root(arch) / "usr/bin/hello"))
    assert info.interpreter == ARCHS[arch].loader
    assert info.is_dynamic
    assert info.is_pie
    assert not info.is_static_pie
    assert info.abi == ARCHS[arch].abi


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_loader_is_in_libc6_and_relocates_itself(arch: str) -> None:
    """hello's interpreter exists in libc6 (through symlinks), same machine, self-relocating."""
    root = debian_root(arch)
    loader = resolve_in_root(root, ARCHS[arch].loader)
    assert loader.is_file(), f"{ARCHS[arch].loader} is not in libc6:{arch}"
    info = details(str(loader))
    assert info.header.machine == ARCHS[arch].machine
    assert info.header.elf_class == ARCHS[arch].elf_class
    assert info.interpreter is None
    assert info.is_static_pie  # ld.so: ET_DYN, PT_DYNAMIC, no PT_INTERP, no DT_NEEDED
    assert not info.is_dynamic


def test_arm_float_abi_hard_vs_soft() -> None:
    """armhf binaries say float_abi hard and armel ones soft, both EABI 5."""
    hard = dict(details(str(debian_root("armhf") / "usr/bin/hello")).abi)
    soft = dict(details(str(debian_root("armel") / "usr/bin/hello")).abi)
    assert (hard["arm_eabi"], hard["float_abi"]) == ("5", "hard")
    assert (soft["arm_eabi"], soft["float_abi"]) == ("5", "soft")


def test_host_qemu_static_is_static_pie() -> None:
    """Debian's qemu-aarch64-static is a static PIE: ET_DYN, no interpreter, self-relocating."""
    info = details(host_file("/usr/bin/qemu-aarch64-static"))
    assert info.header.type == 3
    assert info.interpreter is None
    assert info.is_static_pie
    assert info.is_pie
    assert not info.is_dynamic
    assert not info.is_dynamic


def test_host_ls_is_dynamic_pie() -> None:
    """The host's /bin/ls is a dynamic PIE with an absolute interpreter path."""
    info = details(host_file("/bin/ls"))
    assert info.interpreter is not None
    assert info.interpreter.startswith("/")
    assert info.is_dynamic
    assert info.is_pie
    assert not info.is_static_pie
    assert info.is_dynamic


def test_real_files_agree_with_pyelftools() -> None:
    """For every real ELF file, decode() and details() agree with pyelftools' own reading."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.enums import ENUM_E_MACHINE, ENUM_E_TYPE, ENUM_E_VERSION, ENUM_EI_OSABI
    from elftools.elf.segments import InterpSegment

    def number(value: object, names: Mapping[str, int]) -> object:
        return names[value] if isinstance(value, str) else value

    files = all_real_elf_files()
    files += [Path(p) for p in ("/bin/ls", "/usr/bin/qemu-aarch64-static") if os.path.isfile(p)]
    if len(files) < 10:
        require_or_skip("Debian binaries not fetched: run tests/fetch-debian.sh")
    for path in files:
        header = ElfHeader.decode(read_head(str(path)))
        info = details(str(path))
        with open(path, "rb") as stream:
            elf = ELFFile(stream)
            ident = elf["e_ident"]
            assert header.elf_class == elf.elfclass, path
            assert (header.byte_order == "little") == elf.little_endian, path
            assert header.osabi == number(ident["EI_OSABI"], ENUM_EI_OSABI), path
            assert header.abiversion == ident["EI_ABIVERSION"], path
            assert header.machine == number(elf["e_machine"], ENUM_E_MACHINE), path
            assert header.type == number(elf["e_type"], ENUM_E_TYPE), path
            assert header.version == number(elf["e_version"], ENUM_E_VERSION), path
            assert header.flags == elf["e_flags"], path
            assert (header.entry, header.phoff) == (elf["e_entry"], elf["e_phoff"]), path
            assert (header.phentsize, header.phnum) == (elf["e_phentsize"], elf["e_phnum"]), path
            interps = [
                s.get_interp_name()
                for s in elf.iter_segments("PT_INTERP")
                if isinstance(s, InterpSegment)
            ]
            assert info.interpreter == (interps[0] if interps else None), path
            has_dynamic = any(True for _ in elf.iter_segments("PT_DYNAMIC"))
            if info.is_static_pie:
                assert has_dynamic and not interps, path


# -- header decoding --------------------------------------------------------------

REAL_HEADERS = {
    "ELF64 little": make_header(64, "little"),
    "ELF64 big": make_header(64, "big", machine=22),
    "ELF32 little": make_header(32, "little", machine=40),
    "ELF32 big": make_header(32, "big", machine=8),
}


@pytest.mark.parametrize("name", sorted(REAL_HEADERS))
def test_every_truncated_prefix_is_not_elf(name: str) -> None:
    """Each proper prefix of a header raises NotElf saying how many bytes of how many."""
    data = REAL_HEADERS[name]
    size = len(data)
    assert ElfHeader.decode(data).elf_class == (32 if size == 52 else 64)
    for n in range(size):
        with pytest.raises(NotElf) as caught:
            ElfHeader.decode(data[:n])
        if n == 0:
            assert caught.value.reason == "not an ELF file (empty)"
        else:
            # Until EI_CLASS is there, the smallest header (ELF32) is what is missing.
            whole = size if n >= 5 else 52
            assert caught.value.reason == f"truncated ELF header: {n} of {whole} bytes"


def test_decode_prefers_the_real_file_header_from_longer_data() -> None:
    """decode() looks only at the header: trailing bytes (read_head's 256) change nothing."""
    data = make_header(64, "big", machine=22, flags=0x12345678, phnum=7)
    assert ElfHeader.decode(data + bytes(range(192))) == ElfHeader.decode(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"#!/bin/sh\n", "not an ELF file (magic b'#!/b', expected b'\\x7fELF')"),
        (b"\x7fELG" + bytes(60), "not an ELF file (magic b'\\x7fELG', expected b'\\x7fELF')"),
        (b"MZ", "not an ELF file (magic b'MZ', expected b'\\x7fELF')"),
        (b"\x7fELF\x07\x01" + bytes(58), "invalid EI_CLASS 7 (1 is ELF32, 2 is ELF64)"),
        (b"\x7fELF\x00\x01" + bytes(58), "invalid EI_CLASS 0 (1 is ELF32, 2 is ELF64)"),
        (b"\x7fELF\x02\x00" + bytes(58), "invalid EI_DATA 0 (1 is little-endian, 2 is big-endian)"),
        (b"\x7fELF\x01\x03" + bytes(58), "invalid EI_DATA 3 (1 is little-endian, 2 is big-endian)"),
        (b"\x7fELF\x02\x01" + bytes(14), "truncated ELF header: 20 of 64 bytes"),
        (b"\x7fELF\x01\x02" + bytes(14), "truncated ELF header: 20 of 52 bytes"),
    ],
)
def test_not_elf_reasons(data: bytes, reason: str) -> None:
    """NotElf's reason names the fault: magic, EI_CLASS, EI_DATA or truncation."""
    with pytest.raises(NotElf) as caught:
        ElfHeader.decode(data)
    assert caught.value.reason == reason
    assert str(caught.value) == reason
    assert caught.value.path is None
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, BinfmtError)


@given(st.binary(max_size=200))
def test_decode_arbitrary_bytes_raises_only_not_elf(data: bytes) -> None:
    """decode() of any bytes returns a header or raises NotElf, nothing else."""
    try:
        header = ElfHeader.decode(data)
    except NotElf as exc:
        assert exc.reason
    else:
        assert data[:4] == b"\x7fELF"
        assert header.elf_class in (32, 64)


@given(
    st.sampled_from([b"\x7fELF" + bytes([c, d]) for c in (0, 1, 2, 3) for d in (0, 1, 2, 3)]),
    st.binary(max_size=80),
)
def test_decode_elf_like_bytes_raises_only_not_elf(prefix: bytes, rest: bytes) -> None:
    """decode() of bytes with the magic and any class/data byte pair: a header or NotElf."""
    data = prefix + rest
    try:
        header = ElfHeader.decode(data)
    except NotElf:
        valid = prefix[4] in (1, 2) and prefix[5] in (1, 2)
        assert not valid or len(data) < (52 if prefix[4] == 1 else 64)
    else:
        assert header.elf_class == 32 * prefix[4]
        assert header.byte_order == ("little" if prefix[5] == 1 else "big")


@given(
    elf_class=st.sampled_from([32, 64]),
    byte_order=st.sampled_from(["little", "big"]),
    etype=st.integers(0, 0xFFFF),
    machine=st.integers(0, 0xFFFF),
    flags=st.integers(0, 0xFFFFFFFF),
    phnum=st.integers(0, 0xFFFF),
    phentsize=st.integers(0, 0xFFFF),
    osabi=st.integers(0, 255),
    abiversion=st.integers(0, 255),
    version=st.integers(0, 0xFFFFFFFF),
    entry=st.integers(0, 0xFFFFFFFF),
    phoff=st.integers(0, 0xFFFFFFFF),
)
def test_decode_reads_back_every_packed_field(
    elf_class: int,
    byte_order: str,
    etype: int,
    machine: int,
    flags: int,
    phnum: int,
    phentsize: int,
    osabi: int,
    abiversion: int,
    version: int,
    entry: int,
    phoff: int,
) -> None:
    """decode() returns exactly the fields struct.pack wrote, for both classes and orders."""
    data = make_header(
        elf_class,
        byte_order,
        etype=etype,
        machine=machine,
        flags=flags,
        phnum=phnum,
        phentsize=phentsize,
        osabi=osabi,
        abiversion=abiversion,
        version=version,
        entry=entry,
        phoff=phoff,
    )
    assert ElfHeader.decode(data) == ElfHeader(
        elf_class,
        byte_order,
        osabi,
        abiversion,
        etype,
        machine,
        version,
        entry,
        phoff,
        flags,
        phentsize,
        phnum,
    )


def test_decode_accepts_bytearray_and_memoryview() -> None:
    """decode() gives the same header for bytes, bytearray and memoryview input."""
    data = make_header(32, "big", machine=8, flags=0x20)
    expected = ElfHeader.decode(data)
    assert ElfHeader.decode(bytearray(data)) == expected
    assert ElfHeader.decode(memoryview(data)) == expected
    with pytest.raises(NotElf):
        ElfHeader.decode(bytearray(b"\x7fELF\x09"))


def test_machine_names_cover_qemus_table() -> None:
    """Every e_machine of QEMU's binfmt table has a name; others read 'e_machine N'."""
    qemu = {3, 6, 2, 18, 43, 20, 21, 4, 8, 42, 22, 183, 15, 243, 94, 47787, 189, 92, 62, 164,
            258, 36902, 40}  # fmt: skip
    assert qemu <= set(MACHINE_NAMES)
    names = {m: ElfHeader.decode(make_header(machine=m)).machine_name for m in qemu}
    assert names[62] == "x86-64"
    assert names[183] == "AArch64"
    assert names[40] == "ARM"
    assert names[243] == "RISC-V"
    assert names[8] == "MIPS"
    assert names[21] == "PowerPC64"
    assert names[22] == "S/390"
    assert names[258] == "LoongArch"
    assert len(set(names.values())) == len(qemu)
    assert ElfHeader.decode(make_header(machine=9999)).machine_name == "e_machine 9999"


@pytest.mark.parametrize(
    ("etype", "runs"), [(0, False), (1, False), (2, True), (3, True), (4, False)]
)
def test_is_executable_type(etype: int, runs: bool) -> None:
    """Only ET_EXEC and ET_DYN count as executable types."""
    assert ElfHeader.decode(make_header(etype=etype)).is_executable_type is runs


# -- ABI facts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elf_class", "byte_order", "machine", "flags", "abi"),
    [
        (32, "little", 40, 0x05000400, (("arm_eabi", "5"), ("float_abi", "hard"), LITTLE)),
        (32, "little", 40, 0x05000200, (("arm_eabi", "5"), ("float_abi", "soft"), LITTLE)),
        (32, "big", 40, 0x05000000, (("arm_eabi", "5"), ("endianness", "big"))),
        # Before EABI 5, 0x200/0x400 were GNU's old-ABI float bits: no float_abi.
        (32, "little", 40, 0x04000400, (("arm_eabi", "4"), LITTLE)),
        (32, "little", 40, 0x00000200, (("arm_eabi", "0"), LITTLE)),
        (
            32,
            "big",
            8,
            0x70001007,
            (("mips_abi", "o32"), ("mips_nan", "legacy"), ("endianness", "big")),
        ),
        (32, "little", 8, 0x20, (("mips_abi", "n32"), ("mips_nan", "legacy"), LITTLE)),
        (32, "little", 8, 0x420, (("mips_abi", "n32"), ("mips_nan", "2008"), LITTLE)),
        (64, "little", 8, 0x80000007, (("mips_abi", "n64"), ("mips_nan", "legacy"), LITTLE)),
        (
            64,
            "big",
            8,
            0x2000,
            (("mips_abi", "o64"), ("mips_nan", "legacy"), ("endianness", "big")),
        ),
        (32, "little", 8, 0x3000, (("mips_abi", "eabi32"), ("mips_nan", "legacy"), LITTLE)),
        (64, "little", 8, 0x4000, (("mips_abi", "eabi64"), ("mips_nan", "legacy"), LITTLE)),
        (64, "little", 243, 0x1, (("riscv_float_abi", "soft"),)),
        (64, "little", 243, 0x3, (("riscv_float_abi", "single"),)),
        (64, "little", 243, 0x5, (("riscv_float_abi", "double"),)),
        (32, "little", 243, 0x7, (("riscv_float_abi", "quad"),)),
        (64, "big", 21, 0, (("ppc64_abi", "ELFv1"), ("endianness", "big"))),
        (64, "little", 21, 0, (("ppc64_abi", "ELFv2"), LITTLE)),
        (64, "big", 21, 2, (("ppc64_abi", "ELFv2"), ("endianness", "big"))),
        (64, "little", 21, 1, (("ppc64_abi", "ELFv1"), LITTLE)),
        (64, "little", 21, 3, (("ppc64_abi", "unknown (e_flags 3)"), LITTLE)),
        (64, "big", 183, 0, (("endianness", "big"),)),
        (64, "little", 62, 0xFFFFFFFF, ()),
        (64, "big", 22, 0, ()),
    ],
)
def test_abi_facts(elf_class: int, byte_order: str, machine: int, flags: int, abi: object) -> None:
    """e_flags decode to psABI facts: ARM EABI/float, MIPS ABI/NaN, RISC-V float, ppc64 ELFv."""
    header = ElfHeader.decode(make_header(elf_class, byte_order, machine=machine, flags=flags))
    assert header.abi == abi


# -- details() on synthetic files ------------------------------------------------------


def test_synthetic_dynamic_pie(tmp_path: Path) -> None:
    """ET_DYN with PT_INTERP: dynamic PIE; the interpreter stops at its NUL."""
    path = write(tmp_path, make_elf([(PT_INTERP, b"/lib/ld-x.so\0"), (PT_LOAD, b"")]))
    info = details(path)
    assert info.interpreter == "/lib/ld-x.so"
    assert (info.is_dynamic, info.is_pie, info.is_static_pie, (not info.is_dynamic)) == (
        True,
        True,
        False,
        False,
    )


def test_synthetic_interpreter_bytes_survive(tmp_path: Path) -> None:
    """A non-UTF-8 interpreter decodes with surrogateescape; bytes after an inner NUL drop."""
    path = write(tmp_path, make_elf([(PT_INTERP, b"/lib/\xff\xfe\0junk\0")], etype=2))
    info = details(path)
    assert info.interpreter == "/lib/\udcff\udcfe"
    assert info.interpreter.encode("utf-8", "surrogateescape") == b"/lib/\xff\xfe"
    assert not info.is_pie  # ET_EXEC


def test_synthetic_static_pie_and_shared_library(tmp_path: Path) -> None:
    """ET_DYN without PT_INTERP is a static PIE only if its dynamic table has no DT_NEEDED."""
    static_pie = make_dynamic([(DT_FLAGS_1, DF_1_PIE), (DT_DEBUG, 0), (DT_NULL, 0)])
    info = details(write(tmp_path, make_elf([(PT_DYNAMIC, static_pie)]), "spie"))
    assert (info.is_static_pie, info.is_pie, (not info.is_dynamic), info.is_dynamic) == (
        True,
        True,
        True,
        False,
    )

    library = make_dynamic([(DT_NEEDED, 1), (DT_NULL, 0)])
    info = details(write(tmp_path, make_elf([(PT_DYNAMIC, library)]), "lib"))
    assert (info.is_static_pie, info.is_pie, (not info.is_dynamic), info.is_dynamic) == (
        False,
        False,
        False,
        True,
    )

    pie_without_interp = make_dynamic([(DT_NEEDED, 1), (DT_FLAGS_1, DF_1_PIE), (DT_NULL, 0)])
    info = details(write(tmp_path, make_elf([(PT_DYNAMIC, pie_without_interp)]), "pie"))
    assert (info.is_static_pie, info.is_pie, info.is_dynamic) == (False, True, True)


def test_synthetic_tags_after_dt_null_are_ignored(tmp_path: Path) -> None:
    """The dynamic table ends at DT_NULL: a DT_NEEDED after it does not count."""
    tags = make_dynamic([(DT_NULL, 0), (DT_NEEDED, 1)], 32, "big")
    path = write(
        tmp_path, make_elf([(PT_DYNAMIC, tags)], elf_class=32, byte_order="big", machine=8)
    )
    info = details(path)
    assert info.is_static_pie
    assert info.abi == (("mips_abi", "o32"), ("mips_nan", "legacy"), ("endianness", "big"))


def test_synthetic_first_interp_wins(tmp_path: Path) -> None:
    """With two PT_INTERP segments the first one is the interpreter, as in the kernel."""
    path = write(tmp_path, make_elf([(PT_INTERP, b"/first\0"), (PT_INTERP, b"/second\0")]))
    assert details(path).interpreter == "/first"


def test_synthetic_relocatable_without_program_headers(tmp_path: Path) -> None:
    """An ET_REL object has no program headers: details() returns, static and not executable."""
    path = write(tmp_path, make_header(etype=1, phoff=0, phentsize=0) + bytes(100))
    info = details(path)
    assert not info.header.is_executable_type
    assert info.interpreter is None
    assert not info.is_dynamic and not info.is_pie


def test_section_headers_are_not_read(tmp_path: Path) -> None:
    """A section header table past EOF does not matter: the kernel never reads it either."""
    data = bytearray(make_elf([(PT_INTERP, b"/lib/ld.so\0")]))
    struct.pack_into("<Q", data, 40, 1 << 40)  # e_shoff
    struct.pack_into("<HHH", data, 58, 64, 9, 5)  # e_shentsize, e_shnum, e_shstrndx
    assert details(write(tmp_path, bytes(data))).interpreter == "/lib/ld.so"


def hostile_cases() -> dict[str, tuple[bytes, str]]:
    """Files the kernel refuses or that lie about their sizes, with a word of the reason."""
    good = make_elf([(PT_INTERP, b"/lib/ld.so\0")])
    header, rest = good[:64], good[64:]

    def with_header(
        phnum: int = 1, phentsize: Optional[int] = None, phoff: Optional[int] = None
    ) -> bytes:
        return make_header(etype=3, phnum=phnum, phentsize=phentsize, phoff=phoff) + rest

    interp_at = 64 + 56
    return {
        "huge phnum": (with_header(phnum=0xFFFF), "over the kernel's limit of 65536"),
        "phnum just over 64 KiB": (with_header(phnum=1171), "65576 bytes (1171 entries)"),
        "bad phentsize": (with_header(phentsize=40), "e_phentsize is 40"),
        "zero phentsize": (with_header(phentsize=0), "e_phentsize is 0"),
        "phoff past EOF": (with_header(phoff=1 << 40), "runs past the end of the file"),
        "phoff at EOF": (with_header(phoff=len(good)), "runs past the end of the file"),
        "table truncated": (good[:100], "runs past the end of the file"),
        "interp past EOF": (
            header + make_phdr(64, "little", PT_INTERP, 1 << 62, 11) + good[interp_at:],
            "PT_INTERP (offset 4611686018427387904, 11 bytes) runs past the end",
        ),
        "interp huge": (
            header + make_phdr(64, "little", PT_INTERP, interp_at, 1 << 40) + good[interp_at:],
            "PT_INTERP is 1099511627776 bytes; the kernel accepts 2 to 4096",
        ),
        "interp one byte": (
            header + make_phdr(64, "little", PT_INTERP, interp_at, 1) + good[interp_at:],
            "PT_INTERP is 1 bytes",
        ),
        "interp without NUL": (
            make_elf([(PT_INTERP, b"/lib/ld.so")]),
            "PT_INTERP b'/lib/ld.so' does not end with a NUL byte",
        ),
        "interp truncated file": (good[:-3], "runs past the end of the file"),
        "dynamic past EOF": (
            header + make_phdr(64, "little", PT_DYNAMIC, 1 << 33, 32) + good[interp_at:],
            "PT_DYNAMIC (offset 8589934592, 32 bytes) runs past the end",
        ),
    }


@pytest.mark.parametrize("case", sorted(hostile_cases()))
def test_hostile_files_raise_invalid_elf(tmp_path: Path, case: str) -> None:
    """Corrupt program headers, PT_INTERP or PT_DYNAMIC give InvalidElf with the reason."""
    data, reason = hostile_cases()[case]
    path = write(tmp_path, data)
    with pytest.raises(InvalidElf) as caught:
        details(path)
    assert reason in caught.value.reason
    assert caught.value.path == path
    assert str(caught.value) == f"{path}: {caught.value.reason}"


@pytest.mark.parametrize(
    "error",
    [
        struct.error("unpack requires a buffer"),
        KeyError("e_machine"),
        AssertionError(),
        RecursionError("maximum recursion depth exceeded"),
        MemoryError(),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_pyelftools_exceptions_become_invalid_elf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """Whatever pyelftools raises on a file it dislikes surfaces as InvalidElf naming it."""
    from elftools.elf.elffile import ELFFile

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(ELFFile, "__init__", fail)
    path = write(tmp_path, make_elf([(PT_INTERP, b"/lib/ld.so\0")]))
    with pytest.raises(InvalidElf) as caught:
        details(path)
    assert caught.value.reason.startswith(f"pyelftools: {type(error).__name__}")


def test_largest_tables_are_read_quickly(tmp_path: Path) -> None:
    """64 KiB of program headers and of dynamic tags without DT_NULL: bounded, fast."""
    tags = make_dynamic([(DT_DEBUG, 0)] * 8192)  # 128 KiB, twice what details() reads
    segments = [(PT_DYNAMIC, tags)] + [(PT_LOAD, b"")] * 1169  # 1170 * 56 bytes <= 64 KiB
    path = write(tmp_path, make_elf(segments))
    start = time.monotonic()
    info = details(path)
    assert time.monotonic() - start < 5
    assert info.is_static_pie


def test_zero_length_and_short_files(tmp_path: Path) -> None:
    """An empty file and a file that ends inside the header are NotElf with the path."""
    empty = write(tmp_path, b"", "empty")
    with pytest.raises(NotElf) as caught:
        details(empty)
    assert str(caught.value) == f"{empty}: not an ELF file (empty)"
    short = write(tmp_path, make_header()[:40], "short")
    with pytest.raises(NotElf, match="truncated ELF header: 40 of 64 bytes"):
        details(short)
    script = write(tmp_path, b"#!/bin/sh\necho hi\n", "script")
    with pytest.raises(NotElf, match="not an ELF file"):
        details(script)


def test_directory_is_not_read(tmp_path: Path) -> None:
    """A directory raises NotRegularFile (errno EACCES, like execve) from both functions."""
    for call in (read_head, details):
        with pytest.raises(NotRegularFile) as caught:
            call(str(tmp_path))
        assert caught.value.errno == errno.EACCES
        assert caught.value.filename == str(tmp_path)
        assert "is a directory, not a regular file" in str(caught.value)
        assert isinstance(caught.value, OSError)
        assert isinstance(caught.value, BinfmtError)


def test_fifo_never_blocks(tmp_path: Path) -> None:
    """A FIFO without a writer (directly or through a symlink) is refused, not waited on."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    for path in (fifo, link):
        for call in (read_head, details):
            raised = finishes_within(5, functools.partial(call, str(path)))
            assert isinstance(raised, NotRegularFile), raised
            assert raised.kind == "FIFO"


def test_dev_null_is_a_device() -> None:
    """/dev/null is refused as a character device, without reading it."""
    if not stat.S_ISCHR(os.stat("/dev/null").st_mode):
        require_or_skip("/dev/null is not a character device here")
    raised = finishes_within(5, lambda: details("/dev/null"))
    assert isinstance(raised, NotRegularFile)
    assert raised.kind == "character device"


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    """A missing path raises the FileNotFoundError of open(2), unwrapped."""
    with pytest.raises(FileNotFoundError):
        details(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        read_head(str(tmp_path / "missing"))


def test_unreadable_file_is_permission_error() -> None:
    """A file without read permission raises PermissionError (checked as nobody when root)."""
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        path = os.path.join(tmp, "secret")
        with open(path, "wb") as f:
            f.write(make_elf([(PT_INTERP, b"/lib/ld.so\0")]))
        os.chmod(path, 0)
        if os.geteuid() != 0:
            for call in (read_head, details):
                with pytest.raises(PermissionError):
                    call(path)
            return
        # Root reads anything: check as nobody in a child process.
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                for call in (read_head, details):
                    try:
                        call(path)
                    except PermissionError:
                        continue
                    os._exit(2)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_read_head_reads_at_most_size(tmp_path: Path) -> None:
    """read_head() returns the first `size` bytes, or the whole file when shorter."""
    data = bytes(range(256)) * 8
    path = write(tmp_path, data)
    assert read_head(path) == data[:256]
    assert read_head(path, 10) == data[:10]
    assert read_head(path, 0) == b""
    assert read_head(path, 5000) == data
    with pytest.raises(ValueError, match="must not be negative"):
        read_head(path, -1)


def test_errors_pickle() -> None:
    """The ELF errors survive pickling with their reason, path and errno."""
    for exc in (NotElf("why", "/p"), InvalidElf("why"), NotRegularFile("/p", "FIFO")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc)
        assert str(back) == str(exc)
    assert pickle.loads(pickle.dumps(NotRegularFile("/p", "FIFO"))).errno == errno.EACCES


# -- fuzzing details() --------------------------------------------------------------------

FUZZ_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def fuzz_seed() -> bytes:
    """A small real binary when fetched (i386 hello, 30 KB), else a synthetic one."""
    hello = DEBIAN_DIR / "i386" / "usr/bin/hello"
    if (DEBIAN_DIR / "i386" / ".fetched").is_file():
        return hello.read_bytes()
    dynamic = make_dynamic([(DT_NEEDED, 1), (DT_FLAGS_1, DF_1_PIE), (DT_NULL, 0)], 32)
    return make_elf(
        [(PT_INTERP, b"/lib/ld-linux.so.2\0"), (PT_DYNAMIC, dynamic)], elf_class=32, machine=3
    )


SEED = fuzz_seed()


def check_details_contract(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(prefix="binfmt-fuzz-") as f:
        f.write(data)
        f.flush()
        info = details_or_error(f.name)
    if info is not None:
        assert info.header == ElfHeader.decode(data)
        assert info.interpreter is None or "\0" not in info.interpreter
        assert not (info.is_static_pie and info.interpreter is not None)


@FUZZ_SETTINGS
@given(st.binary(max_size=400))
def test_details_of_random_bytes(data: bytes) -> None:
    """details() of random bytes returns or raises an ElfError, nothing else."""
    check_details_contract(data)


@FUZZ_SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), min_size=1, max_size=12),
    st.one_of(st.none(), st.integers(0, len(SEED))),
)
def test_details_of_mutated_real_binary(edits: list[tuple[int, int]], cut: Optional[int]) -> None:
    """Bytes overwritten in a real binary's header and program headers, maybe truncated."""
    data = bytearray(SEED)
    for offset, value in edits:
        data[offset] = value
    check_details_contract(bytes(data[:cut]))


@FUZZ_SETTINGS
@given(
    st.sampled_from([(32, "little"), (32, "big"), (64, "little"), (64, "big")]),
    st.lists(
        st.tuples(st.sampled_from([0, 1, 2, 3, 4, 6, 0x6474E551, 0xFFFFFFFF]),
                  st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
        max_size=6,
    ),
    st.binary(max_size=300),
)  # fmt: skip
def test_details_of_random_program_headers(
    layout: tuple[int, str], phdrs: list[tuple[int, int, int]], body: bytes
) -> None:
    """Well-formed headers whose segments have arbitrary types, offsets and sizes."""
    elf_class, order = layout
    table = b"".join(make_phdr(elf_class, order, t, off, size) for t, off, size in phdrs)
    header = make_header(elf_class, order, etype=3, machine=183, phnum=len(phdrs))
    check_details_contract(header + table + body)


# -- import hygiene ----------------------------------------------------------------------


def test_import_does_not_load_pyelftools() -> None:
    """Importing binfmt.elf (and decoding a header) leaves pyelftools unimported."""
    code = (
        "import sys, binfmt.elf as e\n"
        "e.ElfHeader.decode(e.read_head(sys.executable))\n"
        "assert 'elftools' not in sys.modules, sorted(m for m in sys.modules if 'elf' in m)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr

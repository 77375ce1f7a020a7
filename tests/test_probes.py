"""The exit-status probes: their ELF headers, and their exit status under real QEMU.

The emulation tests run each probe directly under Debian's
``/usr/bin/qemu-<target>-static`` (no binfmt_misc involved) and skip, naming
the missing path, where that binary is absent. The x86 probes also run on the
host kernel when it is x86_64.
"""

from __future__ import annotations

import errno
import io
import os
import platform
import re
import stat
import struct
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
from elftools.elf.elffile import ELFFile

from binfmt import qemu
from binfmt.errors import UnknownTarget
from binfmt.probes import (
    HELD_MARK,
    HELD_PROBE_TARGETS,
    PROBE_STATUS,
    PROBE_TARGETS,
    held_probe,
    probe,
    write_probe,
)
from binfmt.testing import require_or_skip


class Expected(NamedTuple):
    """What a probe's header must say, written out independently of the module."""

    elfclass: int  # 1 = ELFCLASS32, 2 = ELFCLASS64
    data: int  # 1 = little-endian, 2 = big-endian
    machine: int


LSB, MSB = 1, 2
EXPECTED = {
    "aarch64": Expected(2, LSB, 183),
    "aarch64_be": Expected(2, MSB, 183),
    "alpha": Expected(2, LSB, 0x9026),
    "arm": Expected(1, LSB, 40),
    "armeb": Expected(1, MSB, 40),
    "cris": Expected(1, LSB, 76),
    "hexagon": Expected(1, LSB, 164),
    "hppa": Expected(1, MSB, 15),
    "i386": Expected(1, LSB, 3),
    "i486": Expected(1, LSB, 6),
    "loongarch64": Expected(2, LSB, 258),
    "m68k": Expected(1, MSB, 4),
    "microblaze": Expected(1, MSB, 0xBAAB),
    "microblazeel": Expected(1, LSB, 0xBAAB),
    "mips": Expected(1, MSB, 8),
    "mips64": Expected(2, MSB, 8),
    "mips64el": Expected(2, LSB, 8),
    "mipsel": Expected(1, LSB, 8),
    "mipsn32": Expected(1, MSB, 8),
    "mipsn32el": Expected(1, LSB, 8),
    "nios2": Expected(1, LSB, 113),
    "or1k": Expected(1, MSB, 92),
    "ppc": Expected(1, MSB, 20),
    "ppc64": Expected(2, MSB, 21),
    "ppc64le": Expected(2, LSB, 21),
    "riscv32": Expected(1, LSB, 243),
    "riscv64": Expected(2, LSB, 243),
    "s390x": Expected(2, MSB, 22),
    "sh4": Expected(1, LSB, 42),
    "sh4eb": Expected(1, MSB, 42),
    "sparc": Expected(1, MSB, 2),
    "sparc32plus": Expected(1, MSB, 18),
    "sparc64": Expected(2, MSB, 43),
    "x86_64": Expected(2, LSB, 62),
    "xtensa": Expected(1, LSB, 94),
    "xtensaeb": Expected(1, MSB, 94),
}

#: Every architecture with an OCI platform name must have a probe.
OCI_TARGETS = (
    "x86_64", "i386", "aarch64", "arm", "riscv64", "ppc64le", "ppc64", "s390x",
    "mips64el", "mips64", "mipsel", "mips", "loongarch64",
)  # fmt: skip

STATUSES = (PROBE_STATUS, 7, 0, 200, 255)


class Header(NamedTuple):
    """The fields of an ELF header and its first program header that a loader reads."""

    ident: bytes
    type: int
    machine: int
    version: int
    entry: int
    phoff: int
    shnum: int
    ehsize: int
    phentsize: int
    phnum: int
    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_filesz: int
    p_memsz: int
    p_align: int


def decode(data: bytes) -> Header:
    """Decode a probe's headers with struct, trusting only e_ident for class and order."""
    order = ">" if data[5] == MSB else "<"
    if data[4] == 2:
        (_, typ, machine, version, entry, phoff, _, _, ehsize, phentsize, phnum, _, shnum, _) = (
            struct.unpack_from(order + "16sHHIQQQIHHHHHH", data)
        )
        p_type, p_flags, p_offset, p_vaddr, _, p_filesz, p_memsz, p_align = struct.unpack_from(
            order + "IIQQQQQQ", data, phoff
        )
    else:
        (_, typ, machine, version, entry, phoff, _, _, ehsize, phentsize, phnum, _, shnum, _) = (
            struct.unpack_from(order + "16sHHIIIIIHHHHHH", data)
        )
        p_type, p_offset, p_vaddr, _, p_filesz, p_memsz, p_flags, p_align = struct.unpack_from(
            order + "IIIIIIII", data, phoff
        )
    return Header(
        data[:16], typ, machine, version, entry, phoff, shnum, ehsize, phentsize, phnum,
        p_type, p_flags, p_offset, p_vaddr, p_filesz, p_memsz, p_align,
    )  # fmt: skip


def e_flags(target: str) -> int:
    """The e_flags of ``target``'s probe (a 32-bit ELF: the field is at offset 36)."""
    order = ">" if EXPECTED[target].data == MSB else "<"
    flags: int = struct.unpack_from(order + "I", probe(target), 36)[0]
    return flags


def qemu_for(target: str) -> Path:
    """The Debian qemu-user-static binary that runs ``target`` (i486 runs on qemu-i386)."""
    return Path("/usr/bin") / f"qemu-{'i386' if target == 'i486' else target}-static"


def require_qemu(target: str) -> Path:
    """Return the QEMU binary for ``target``, or skip the test saying which path is absent."""
    qemu = qemu_for(target)
    if not os.access(qemu, os.X_OK):
        require_or_skip(f"{qemu} is absent (Debian package qemu-user-static)")
    return qemu


def test_targets_cover_every_oci_architecture() -> None:
    """PROBE_TARGETS is sorted, unique, and includes every architecture with an OCI platform."""
    assert list(PROBE_TARGETS) == sorted(set(PROBE_TARGETS))
    assert set(OCI_TARGETS) <= set(PROBE_TARGETS)
    assert set(PROBE_TARGETS) == set(EXPECTED)


@pytest.mark.parametrize("target", PROBE_TARGETS)
def test_header_is_a_minimal_static_executable(target: str) -> None:
    """Each probe is an ET_EXEC of its arch: one R+X PT_LOAD over the whole file, entry inside."""
    data = probe(target)
    h = decode(data)
    want = EXPECTED[target]
    assert h.ident == bytes([0x7F, 0x45, 0x4C, 0x46, want.elfclass, want.data, 1]) + bytes(9)
    assert (h.type, h.machine, h.version) == (2, want.machine, 1)
    assert (h.ehsize, h.phentsize) == ((64, 56) if want.elfclass == 2 else (52, 32))
    assert (h.phoff, h.phnum, h.shnum) == (h.ehsize, 1, 0)
    assert (h.p_type, h.p_flags) == (1, 4 | 1)  # PT_LOAD, PF_R | PF_X
    assert h.p_offset == 0 and h.p_filesz == h.p_memsz == len(data)
    assert h.p_align == 0x10000 and h.p_offset % h.p_align == h.p_vaddr % h.p_align
    assert h.entry == h.p_vaddr + h.ehsize + h.phentsize  # the code right after the headers
    assert h.p_vaddr >= 0x10000  # above the usual vm.mmap_min_addr


@pytest.mark.parametrize("target", PROBE_TARGETS)
def test_pyelftools_reads_the_probe(target: str) -> None:
    """pyelftools (what binfmt.elf uses for details) parses each probe: one segment, no sections."""
    elf = ELFFile(io.BytesIO(probe(target)))
    assert elf.elfclass == (64 if EXPECTED[target].elfclass == 2 else 32)
    assert elf.little_endian == (EXPECTED[target].data == LSB)
    assert elf.header["e_type"] == "ET_EXEC"
    assert elf.num_sections() == 0
    assert [s["p_type"] for s in elf.iter_segments()] == ["PT_LOAD"]


@pytest.mark.parametrize("target", PROBE_TARGETS)
def test_probe_is_tiny(target: str) -> None:
    """A probe is headers plus at most a few instructions: under 160 bytes."""
    assert len(probe(target)) < 160


@pytest.mark.parametrize("target", PROBE_TARGETS)
def test_probe_is_deterministic_and_only_the_code_depends_on_status(target: str) -> None:
    """Same arguments give the same bytes; another status changes only bytes after the headers."""
    assert probe(target) == probe(target, PROBE_STATUS) == probe(target, PROBE_STATUS)
    a, b = probe(target, 1), probe(target, 2)
    assert len(a) == len(b) and a != b
    code = decode(a).entry - decode(a).p_vaddr
    assert a[:code] == b[:code]


@pytest.mark.parametrize("target", ["arm", "armeb"])
def test_arm_probes_declare_eabi5(target: str) -> None:
    """ARM probes carry EABI version 5 (and BE8 for armeb), or a kernel would run them as OABI."""
    assert e_flags(target) == (0x05800000 if target == "armeb" else 0x05000000)


@pytest.mark.parametrize(
    ("target", "abi2"), [("mips", False), ("mipsel", False), ("mipsn32", True), ("mipsn32el", True)]
)
def test_mips_n32_is_marked_and_o32_is_not(target: str, abi2: bool) -> None:
    """EF_MIPS_ABI2 (0x20) is what tells n32 from o32 to QEMU, the kernel and binfmt masks."""
    assert bool(e_flags(target) & 0x20) == abi2


@pytest.mark.parametrize("status", [-1, 256, 1000])
def test_status_out_of_range_is_a_value_error(status: int) -> None:
    """A status outside 0..255 raises ValueError with one line naming the value and the rule."""
    with pytest.raises(ValueError, match=r"^invalid status") as info:
        probe("x86_64", status)
    message = str(info.value)
    assert "\n" not in message and repr(status) in message and "0..255" in message


@pytest.mark.parametrize("status", [True, 4.0, "42"])
def test_status_of_another_type_is_a_type_error(status: object) -> None:
    """A status that is not an int (a bool included) raises TypeError naming it."""
    with pytest.raises(TypeError, match=re.escape(repr(status))):
        probe("x86_64", status)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", ["", "amd64", "linux/arm64", "X86_64", "ia64"])
def test_unknown_target(target: str) -> None:
    """A name that is not a QEMU target with a probe raises UnknownTarget (a LookupError)."""
    with pytest.raises(UnknownTarget, match=re.escape(repr(target))) as info:
        probe(target)
    assert isinstance(info.value, LookupError)
    with pytest.raises(UnknownTarget):
        write_probe(target, ".")


def test_write_probe_writes_an_executable_atomically(tmp_path: Path) -> None:
    """write_probe writes probe-<target> mode 0755, replaces an old one, leaves no temp file."""
    old = tmp_path / "probe-aarch64"
    old.write_bytes(b"stale")
    old.chmod(0o600)
    path = write_probe("aarch64", str(tmp_path), 7)
    assert path == str(old)
    assert old.read_bytes() == probe("aarch64", 7)
    assert stat.S_IMODE(old.stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe-aarch64"]
    assert write_probe("s390x", tmp_path) == str(tmp_path / "probe-s390x")  # a PathLike works too


def test_write_probe_into_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    """A missing directory raises FileNotFoundError and creates nothing."""
    with pytest.raises(FileNotFoundError):
        write_probe("arm", str(tmp_path / "absent"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.qemu
@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("target", PROBE_TARGETS)
def test_probe_exits_with_status_under_qemu(target: str, status: int, tmp_path: Path) -> None:
    """Run directly under qemu-<target>-static, a probe exits with the status it was built for."""
    qemu = require_qemu(target)
    path = write_probe(target, str(tmp_path), status)
    result = subprocess.run([str(qemu), path], capture_output=True, timeout=60)
    assert result.returncode == status, result.stderr.decode(errors="replace")


@pytest.mark.qemu
@pytest.mark.parametrize("target", PROBE_TARGETS)
def test_the_only_syscall_is_exit_group(target: str, tmp_path: Path) -> None:
    """QEMU's -strace shows exactly one syscall, exit_group(status): the numbers are right."""
    qemu = require_qemu(target)
    path = write_probe(target, str(tmp_path), 42)
    result = subprocess.run([str(qemu), "-strace", path], capture_output=True, timeout=60)
    calls = [line.split(" ", 1)[1] for line in result.stderr.decode().splitlines() if line]
    assert calls == ["exit_group(42)"]


@pytest.mark.parametrize("status", [PROBE_STATUS, 7])
@pytest.mark.parametrize("target", ["x86_64", "i386", "i486"])
def test_x86_probes_run_natively(target: str, status: int, tmp_path: Path) -> None:
    """On an x86_64 host the kernel itself runs the x86_64, i386 and i486 (EM_486) probes."""
    if platform.machine() != "x86_64":
        require_or_skip(f"host is {platform.machine()}, not x86_64")
    path = write_probe(target, str(tmp_path), status)
    try:
        result = subprocess.run([path], capture_output=True, timeout=60)
    except OSError as e:
        if e.errno == errno.ENOEXEC and target != "x86_64":
            require_or_skip(
                "this kernel has no IA32 emulation (CONFIG_IA32_EMULATION off or disabled)"
            )
        raise
    assert result.returncode == status


def _debian_entries() -> dict[str, tuple[bytes, bytes]]:
    """Magic and mask of each qemu-* format in /usr/share/binfmts (update-binfmts files)."""
    entries = {}
    root = Path("/usr/share/binfmts")
    for path in sorted(root.glob("qemu-*")) if root.is_dir() else []:
        fields = dict(line.split(" ", 1) for line in path.read_text().splitlines() if " " in line)
        magic = _unescape(fields["magic"])
        mask = _unescape(fields["mask"]) if "mask" in fields else b"\xff" * len(magic)
        entries[path.name[len("qemu-") :]] = (magic, mask)
    return entries


def _unescape(text: str) -> bytes:
    """Decode update-binfmts' ``\\xNN`` escapes (other characters stand for themselves)."""
    return bytes(
        int(m[2:], 16) if m.startswith("\\x") else ord(m)
        for m in re.findall(r"\\x[0-9a-fA-F]{2}|.", text, re.S)
    )


@pytest.mark.qemu
@pytest.mark.parametrize("target", PROBE_TARGETS)
def test_probe_matches_its_own_debian_entry_and_no_other(target: str) -> None:
    """Each probe matches Debian's binfmt entry for its target (if any) and no other target's."""
    entries = _debian_entries()
    if not entries:
        require_or_skip("/usr/share/binfmts has no qemu-* files (Debian package qemu-user-static)")
    data = probe(target)
    matches = [
        name
        for name, (magic, mask) in entries.items()
        if all(data[i] & mask[i] == magic[i] & mask[i] for i in range(len(magic)))
    ]
    assert matches == ([target] if target in entries else [])


# -- held probes (what Host measures compat targets with) ---------------------------------


@pytest.mark.parametrize("target", HELD_PROBE_TARGETS)
def test_held_probe_is_the_probe_with_the_mark_and_more_code(target: str) -> None:
    """A held probe has the probe's headers but for the e_ident mark and its sizes."""
    held, plain = held_probe(target), probe(target)
    h, want = decode(held), EXPECTED[target]
    assert h.ident == bytes([0x7F, 0x45, 0x4C, 0x46, want.elfclass, want.data, 1, 0, 0]) + HELD_MARK
    assert (h.type, h.machine, h.version) == (2, want.machine, 1)
    assert h.p_filesz == h.p_memsz == len(held) and h.entry == decode(plain).entry
    assert held[16:52] == plain[16:52]  # e_type … e_shstrndx: the same ELF header
    assert held.endswith(plain[84:])  # the same exit code, after the read
    with pytest.raises(UnknownTarget, match="no held probe"):
        held_probe("aarch64")


@pytest.mark.parametrize("target", HELD_PROBE_TARGETS)
def test_held_probe_matches_no_qemu_entry(target: str) -> None:
    """No entry of QEMU's table matches a held probe; the plain probe matches its own."""
    held = held_probe(target)
    for sig in qemu.SIGNATURES:
        entry = sig.to_entry("/usr/bin/qemu-x")
        assert not entry.matches(held, f"probe-{target}"), sig.name
    assert qemu.get(target).to_entry("/usr/bin/qemu-x").matches(probe(target), "probe")


@pytest.mark.qemu
@pytest.mark.parametrize("target", HELD_PROBE_TARGETS)
def test_held_probe_reads_stdin_then_exits(target: str, tmp_path: Path) -> None:
    """Under QEMU's -strace: write(1, sp, 1), read(0, sp, 1), then exit_group(status)."""
    qemu_binary = require_qemu(target)
    path = tmp_path / f"held-{target}"
    path.write_bytes(held_probe(target, 9))
    path.chmod(0o755)
    result = subprocess.run(
        [str(qemu_binary), "-strace", str(path)], capture_output=True, timeout=60, input=b""
    )
    calls = [line.split(" ", 1)[1] for line in result.stderr.decode().splitlines() if line]
    assert result.returncode == 9 and len(result.stdout) == 1
    assert re.fullmatch(r"write\(1,0x[0-9a-f]+,1\) = 1", calls[0]), calls
    assert re.fullmatch(r"read\(0,0x[0-9a-f]+,1\) = 0", calls[1]), calls
    assert calls[2:] == ["exit_group(9)"]
    entries = _debian_entries()
    data = held_probe(target)
    assert not [
        name
        for name, (magic, mask) in entries.items()
        if all(data[i] & mask[i] == magic[i] & mask[i] for i in range(len(magic)))
    ]

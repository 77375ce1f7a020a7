"""Tiny static ELF programs that prove emulation works: they exit with a known status.

``verify`` runs one probe per architecture and checks its exit status, which
proves the whole chain (binfmt_misc match, interpreter, QEMU, syscall ABI)
without any foreign file on the host. Buildkit's archutil does the same with
checked-in binaries built by a toolchain; here each probe is assembled in pure
Python from a few instructions, so there is nothing to build, ship or trust.

Every probe is the smallest ELF the kernel and QEMU load: the ELF header, one
``PT_LOAD`` program header (read + execute) that maps the whole file at
``0x400000``, and then the code, which is the entry point. The code only
loads the status and the syscall number into the registers of the Linux
syscall ABI and traps: ``exit_group(status)``. The status is encoded in the
immediate field of the instruction that loads it (every architecture has a
load-immediate wide enough for 0..255), so the probe has no data, no stack use
and no relocation. Each code function below gives the assembly next to the
bytes. The encodings were checked against Debian's cross assemblers (GNU as
for x86, arm, aarch64, riscv, ppc, s390x, mips, alpha, hppa, m68k, sh4 and
sparc; llvm-mc for hexagon); Debian has none for loongarch64, xtensa,
microblaze, or1k, nios2 and cris, whose encodings come from their ISA manuals
and QEMU's decoders. The tests run every probe under its
``qemu-<target>-static`` and check, with ``-strace``, that its one syscall is
``exit_group(status)``.

``e_flags`` is 0 unless a loader reads it: ARM needs EABI version 5 (an
EABI-less file is an OABI program to a kernel with OABI compat, and OABI
syscalls take their number from the ``svc`` immediate), MIPS n32 is told from
o32 by ``EF_MIPS_ABI2``, big-endian ppc64 is ELFv1 (``e_entry`` is a function
descriptor), QEMU picks the Hexagon CPU from ``e_flags`` and refuses a file
without a known version, and loongarch64 and sparc32plus carry the flags their
toolchains always set. The MicroBlaze probes carry the old ``e_machine``
``0xBAAB``, which QEMU and the kernel accept like ``EM_MICROBLAZE`` (189),
because it is the only one that qemu-binfmt-conf.sh and Debian register: a
probe must match the entries it is meant to verify.

:func:`held_probe` is the other kind, for :class:`~binfmt.host.Host` to learn
whether the kernel itself runs a compat target (AArch32 on arm64, i386 on
x86_64): it writes one byte to its standard output (so the parent knows that
the program runs: the ``execve`` is over), then blocks in ``read(0, sp, 1)``
until its standard input is closed, so that the parent can look at
``/proc/<pid>/exe`` while it runs (the probe file itself if the kernel
loaded it, the interpreter if a binfmt_misc entry took it), then exits like
:func:`probe`. Its ``e_ident``
padding (bytes 9 to 15, which the kernel's ELF loader ignores) carries
:data:`HELD_MARK`, so that no entry of QEMU's table, which all require zero
there, matches it.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from typing import Callable, NamedTuple, Union

from binfmt.errors import UnknownTarget

__all__ = [
    "HELD_MARK",
    "HELD_PROBE_TARGETS",
    "PROBE_STATUS",
    "PROBE_TARGETS",
    "held_probe",
    "probe",
    "write_probe",
]

#: The status a probe exits with by default. Non-zero, so a loader that exits
#: cleanly without running the program cannot pass; not 1, 2, 126 or 127, which
#: shells and ``qemu`` use for their own failures; below 128, so it cannot be
#: mistaken for a death by signal in a shell's ``$?``.
PROBE_STATUS = 42

#: Where the single ``PT_LOAD`` segment is mapped (the file starts there).
_BASE = 0x400000
#: ``p_align`` of that segment: 64 KiB satisfies every page size (4K, 8K, 16K, 64K).
_ALIGN = 0x10000

_StrPath = Union[str, "os.PathLike[str]"]

_ET_EXEC = 2
_EV_CURRENT = 1
_PT_LOAD = 1
_PF_X = 1
_PF_R = 4


class _Arch(NamedTuple):
    """What a probe for one QEMU target is made of."""

    machine: int  # e_machine
    is64: bool  # ELFCLASS64 (else ELFCLASS32)
    big_endian: bool  # ELFDATA2MSB (else ELFDATA2LSB)
    flags: int  # e_flags
    code: Callable[[int, int], bytes]  # (status, address of the code) -> machine code


def _u32(big_endian: bool, *words: int) -> bytes:
    """Pack 32-bit instruction words in the given byte order."""
    return struct.pack((">" if big_endian else "<") + "I" * len(words), *words)


def _u16(big_endian: bool, *halves: int) -> bytes:
    """Pack 16-bit instruction halfwords in the given byte order."""
    return struct.pack((">" if big_endian else "<") + "H" * len(halves), *halves)


# Each code function takes the status (0..255, already checked) and the virtual
# address where the code will sit (only ppc64's function descriptor needs it).


def _x86_64(status: int, at: int) -> bytes:
    """x86_64: exit_group is 231, first argument in edi (zero-extends into rdi)."""
    return (
        b"\xbf" + struct.pack("<I", status)  # mov edi, status
        + b"\xb8\xe7\x00\x00\x00"  # mov eax, 231  (exit_group)
        + b"\x0f\x05"  # syscall
    )  # fmt: skip


def _i386(status: int, at: int) -> bytes:
    """i386: exit_group is 252, first argument in ebx, ``int 0x80``."""
    return (
        b"\xbb" + struct.pack("<I", status)  # mov ebx, status
        + b"\xb8\xfc\x00\x00\x00"  # mov eax, 252  (exit_group)
        + b"\xcd\x80"  # int 0x80
    )  # fmt: skip


def _aarch64(status: int, at: int) -> bytes:
    """AArch64 (instructions are little-endian even on aarch64_be)."""
    return _u32(
        False,
        0x52800000 | status << 5,  # mov w0, #status      (movz, imm16 in bits 20:5)
        0x52800BC8,  # mov w8, #94          (exit_group)
        0xD4000001,  # svc #0
    )


def _arm(status: int, at: int) -> bytes:
    """ARM EABI, A32 (little-endian instructions: also right for BE8 armeb)."""
    return _u32(
        False,
        0xE3A00000 | status,  # mov r0, #status      (imm8, rotation 0)
        0xE3A070F8,  # mov r7, #248         (exit_group)
        0xEF000000,  # svc #0
    )


def _arm_held(status: int, at: int) -> bytes:
    """ARM: ``write(1, sp, 1)``, ``read(0, sp, 1)`` (the byte at sp is argc's), then exit."""
    return _u32(
        False,
        0xE3A00001,  # mov r0, #1           (stdout)
        0xE1A0100D,  # mov r1, sp           (a buffer: the word holding argc)
        0xE3A02001,  # mov r2, #1
        0xE3A07004,  # mov r7, #4           (write)
        0xEF000000,  # svc #0
        0xE3A00000,  # mov r0, #0           (stdin)
        0xE1A0100D,  # mov r1, sp
        0xE3A02001,  # mov r2, #1
        0xE3A07003,  # mov r7, #3           (read)
        0xEF000000,  # svc #0
    ) + _arm(status, at)


def _i386_held(status: int, at: int) -> bytes:
    """i386: ``write(1, esp, 1)``, ``read(0, esp, 1)``, then exit."""
    return (
        b"\xbb\x01\x00\x00\x00"  # mov ebx, 1  (stdout)
        + b"\x89\xe1"  # mov ecx, esp  (a buffer: the word holding argc)
        + b"\xba\x01\x00\x00\x00"  # mov edx, 1
        + b"\xb8\x04\x00\x00\x00"  # mov eax, 4  (write)
        + b"\xcd\x80"  # int 0x80
        + b"\xbb\x00\x00\x00\x00"  # mov ebx, 0  (stdin)
        + b"\x89\xe1"  # mov ecx, esp
        + b"\xba\x01\x00\x00\x00"  # mov edx, 1
        + b"\xb8\x03\x00\x00\x00"  # mov eax, 3  (read)
        + b"\xcd\x80"  # int 0x80
        + _i386(status, at)
    )  # fmt: skip


def _riscv(status: int, at: int) -> bytes:
    """RISC-V (RV32 and RV64 alike; no compressed instructions)."""
    return _u32(
        False,
        0x00000513 | status << 20,  # li a0, status   (addi a0, zero, imm12)
        0x05E00893,  # li a7, 94       (exit_group)
        0x00000073,  # ecall
    )


def _ppc_body(big_endian: bool, status: int) -> bytes:
    """PowerPC, 32- and 64-bit: exit_group is 234 in r0, argument in r3."""
    return _u32(
        big_endian,
        0x38600000 | status,  # li r3, status   (addi r3, 0, simm16)
        0x380000EA,  # li r0, 234      (exit_group)
        0x44000002,  # sc
    )


def _ppc(status: int, at: int) -> bytes:
    """32-bit big-endian PowerPC."""
    return _ppc_body(True, status)


def _ppc64le(status: int, at: int) -> bytes:
    """ppc64le is ELFv2: ``e_entry`` is the code itself."""
    return _ppc_body(False, status)


def _ppc64(status: int, at: int) -> bytes:
    """Big-endian ppc64 is ELFv1: ``e_entry`` points at a function descriptor."""
    descriptor = struct.pack(">QQ", at + 16, 0)  # .quad code, .quad 0 (TOC, unused)
    return descriptor + _ppc_body(True, status)


def _s390x(status: int, at: int) -> bytes:
    """s390x: ``svc N`` carries syscall numbers below 256 itself; argument in r2."""
    return (
        b"\xa7\x29" + struct.pack(">H", status)  # lghi %r2, status
        + b"\x0a\xf8"  # svc 248  (exit_group)
    )  # fmt: skip


def _mips(number: int, big_endian: bool) -> Callable[[int, int], bytes]:
    """MIPS, every ABI: only the exit_group number and the byte order differ."""

    def code(status: int, at: int) -> bytes:
        return _u32(
            big_endian,
            0x24040000 | status,  # li a0, status   (addiu $4, $0, imm16)
            0x24020000 | number,  # li v0, number   (4246 o32, 5205 n64, 6205 n32)
            0x0000000C,  # syscall
        )

    return code


def _loongarch64(status: int, at: int) -> bytes:
    """LoongArch64 (generic syscall table)."""
    return _u32(
        False,
        0x02800004 | status << 10,  # addi.w $a0, $zero, status   (si12 in bits 21:10)
        0x0281780B,  # addi.w $a7, $zero, 94       (exit_group)
        0x002B0000,  # syscall 0
    )


def _alpha(status: int, at: int) -> bytes:
    """Alpha: exit_group is 405 in v0 ($0), argument in a0 ($16)."""
    return _u32(
        False,
        0x221F0000 | status,  # lda $16, status($31)
        0x201F0195,  # lda $0, 405($31)     (exit_group)
        0x00000083,  # call_pal 0x83        (callsys)
    )


def _hppa(status: int, at: int) -> bytes:
    """PA-RISC: branch to the gateway page; the number goes in r20 in the delay slot."""
    return _u32(
        True,
        0x341A0000 | status << 1,  # ldi status, %r26   (ldo, low-sign-extended im14)
        0xE4008200,  # ble 0x100(%sr2, %r0)   (be,l: to the gateway page, link in r31)
        0x341401BC,  # ldi 222, %r20      (exit_group; delay slot)
    )


def _m68k(status: int, at: int) -> bytes:
    """m68k: exit_group is 247 in d0, argument in d1, ``trap #0``."""
    return (
        b"\x22\x3c" + struct.pack(">I", status)  # move.l #status, %d1
        + b"\x20\x3c\x00\x00\x00\xf7"  # move.l #247, %d0  (exit_group)
        + b"\x4e\x40"  # trap #0
    )  # fmt: skip


def _sh4(big_endian: bool) -> Callable[[int, int], bytes]:
    """SuperH: ``mov #imm`` sign-extends 8 bits, so each value is zero-extended after."""

    def code(status: int, at: int) -> bytes:
        return _u16(
            big_endian,
            0xE400 | status,  # mov #status, r4
            0x644C,  # extu.b r4, r4
            0xE3FC,  # mov #-4, r3
            0x633C,  # extu.b r3, r3   (r3 = 252, exit_group)
            0xC311,  # trapa #0x11     (syscall with one argument)
        )

    return code


def _nios2(status: int, at: int) -> bytes:
    """Nios II: exit_group is 94 in r2, argument in r4."""
    return _u32(
        False,
        0x01000004 | status << 6,  # movi r4, status   (addi r4, r0, imm16 in bits 21:6)
        0x00801784,  # movi r2, 94       (exit_group)
        0x003B683A,  # trap
    )


def _cris(status: int, at: int) -> bytes:
    """CRIS: 16-bit instructions; ``[pc+]`` operands are 32-bit immediates after them."""
    return (
        struct.pack("<HI", 0xAE6F, status)  # move.d status, $r10
        + struct.pack("<HI", 0x9E6F, 252)  # move.d 252, $r9   (exit_group)
        + struct.pack("<H", 0xE93D)  # break 13
    )


def _sparc(trap: int) -> Callable[[int, int], bytes]:
    """SPARC: exit_group is 188 in g1, argument in o0; 32-bit ABI traps 0x10, 64-bit 0x6d."""

    def code(status: int, at: int) -> bytes:
        return _u32(
            True,
            0x90102000 | status,  # mov status, %o0   (or %g0, simm13, %o0)
            0x821020BC,  # mov 188, %g1      (exit_group)
            0x91D02000 | trap,  # ta 0x10 / ta 0x6d
        )

    return code


def _hexagon(status: int, at: int) -> bytes:
    """Hexagon: one instruction per packet; exit_group is 94 in r6."""
    return _u32(
        False,
        0x7800C000 | status << 5,  # { r0 = #status }   (A2_tfrsi, imm[8:0] in bits 13:5)
        0x7800CBC6,  # { r6 = #94 }       (exit_group)
        0x5400C004,  # { trap0(#1) }
    )


def _xtensa(big_endian: bool) -> Callable[[int, int], bytes]:
    """Xtensa: 24-bit instructions whose fields are mirrored between LE and BE cores."""

    def code(status: int, at: int) -> bytes:
        if big_endian:
            return (
                b"\x26\x0a" + bytes([status])  # movi a6, status  (op0=2 t=6 s=0 r=0xa imm8)
                + b"\x22\x0a\x77"  # movi a2, 119     (exit_group)
                + b"\x00\x05\x00"  # syscall          (op0=0 r=5)
            )  # fmt: skip
        return (
            b"\x62\xa0" + bytes([status])  # movi a6, status
            + b"\x22\xa0\x77"  # movi a2, 119     (exit_group)
            + b"\x00\x50\x00"  # syscall
        )  # fmt: skip

    return code


def _microblaze(big_endian: bool) -> Callable[[int, int], bytes]:
    """MicroBlaze: exit_group is 252 in r12, argument in r5, ``brki r14, 8``."""

    def code(status: int, at: int) -> bytes:
        return _u32(
            big_endian,
            0x30A00000 | status,  # addik r5, r0, status
            0x318000FC,  # addik r12, r0, 252   (exit_group)
            0xB9CC0008,  # brki r14, 0x8
        )

    return code


def _or1k(status: int, at: int) -> bytes:
    """OpenRISC 1000: exit_group is 94 in r11, argument in r3."""
    return _u32(
        True,
        0x9C600000 | status,  # l.addi r3, r0, status
        0x9D60005E,  # l.addi r11, r0, 94   (exit_group)
        0x20000001,  # l.sys 1
    )


_MIPS_O32 = 0x00001000  # EF_MIPS_ABI_O32, MIPS I
_MIPS_N64 = 0x20000000  # EF_MIPS_ARCH_3 (the first 64-bit ISA); n64 is ELFCLASS64
_MIPS_N32 = 0x20000020  # EF_MIPS_ARCH_3 | EF_MIPS_ABI2

# Keyed by QEMU target name (the NAME in qemu-NAME-static), sorted.
_ARCHES = {
    "aarch64": _Arch(183, True, False, 0, _aarch64),
    "aarch64_be": _Arch(183, True, True, 0, _aarch64),
    "alpha": _Arch(0x9026, True, False, 0, _alpha),
    "arm": _Arch(40, False, False, 0x05000000, _arm),  # EABI5
    "armeb": _Arch(40, False, True, 0x05800000, _arm),  # EABI5 | EF_ARM_BE8
    "cris": _Arch(76, False, False, 0, _cris),
    "hexagon": _Arch(164, False, False, 0x67, _hexagon),  # Hexagon V67
    "hppa": _Arch(15, False, True, 0, _hppa),
    "i386": _Arch(3, False, False, 0, _i386),
    "i486": _Arch(6, False, False, 0, _i386),  # EM_486, as qemu-binfmt-conf matches it
    "loongarch64": _Arch(258, True, False, 0x43, _loongarch64),  # LP64D, object ABI v1
    "m68k": _Arch(4, False, True, 0, _m68k),
    # EM_MICROBLAZE_OLD: the only e_machine that qemu-binfmt-conf.sh and Debian register.
    "microblaze": _Arch(0xBAAB, False, True, 0, _microblaze(True)),
    "microblazeel": _Arch(0xBAAB, False, False, 0, _microblaze(False)),
    "mips": _Arch(8, False, True, _MIPS_O32, _mips(4246, True)),
    "mips64": _Arch(8, True, True, _MIPS_N64, _mips(5205, True)),
    "mips64el": _Arch(8, True, False, _MIPS_N64, _mips(5205, False)),
    "mipsel": _Arch(8, False, False, _MIPS_O32, _mips(4246, False)),
    "mipsn32": _Arch(8, False, True, _MIPS_N32, _mips(6205, True)),
    "mipsn32el": _Arch(8, False, False, _MIPS_N32, _mips(6205, False)),
    "nios2": _Arch(113, False, False, 0, _nios2),
    "or1k": _Arch(92, False, True, 0, _or1k),
    "ppc": _Arch(20, False, True, 0, _ppc),
    "ppc64": _Arch(21, True, True, 1, _ppc64),  # ELFv1
    "ppc64le": _Arch(21, True, False, 2, _ppc64le),  # ELFv2
    "riscv32": _Arch(243, False, False, 0, _riscv),
    "riscv64": _Arch(243, True, False, 0, _riscv),
    "s390x": _Arch(22, True, True, 0, _s390x),
    "sh4": _Arch(42, False, False, 0, _sh4(False)),
    "sh4eb": _Arch(42, False, True, 0, _sh4(True)),
    "sparc": _Arch(2, False, True, 0, _sparc(0x10)),
    "sparc32plus": _Arch(18, False, True, 0x100, _sparc(0x10)),  # EF_SPARC_32PLUS
    "sparc64": _Arch(43, True, True, 0, _sparc(0x6D)),
    "x86_64": _Arch(62, True, False, 0, _x86_64),
    "xtensa": _Arch(94, False, False, 0, _xtensa(False)),
    "xtensaeb": _Arch(94, False, True, 0, _xtensa(True)),
}

#: The QEMU targets (``qemu-<target>``) that have a probe, sorted.
PROBE_TARGETS: tuple[str, ...] = tuple(sorted(_ARCHES))

# The held probes: the compat targets Host measures (same headers, other code).
_HELD = {
    "arm": _arm_held,
    "armeb": _arm_held,
    "i386": _i386_held,
    "i486": _i386_held,
}

#: The targets that have a :func:`held_probe`, sorted.
HELD_PROBE_TARGETS: tuple[str, ...] = tuple(sorted(_HELD))

#: What a held probe carries in ``e_ident[9:16]`` (``EI_PAD``): not zero, so no
#: entry of QEMU's table matches it; the kernel's ELF loader never reads it.
HELD_MARK = b"binfmt\x01"


def probe(target: str, status: int = PROBE_STATUS) -> bytes:
    """Return a static ``ET_EXEC`` ELF for QEMU ``target`` that exits with ``status``.

    The result is deterministic (the same bytes for the same arguments) and
    under 160 bytes. Raises :class:`~binfmt.errors.UnknownTarget` if
    ``target`` has no probe, ``ValueError`` unless ``0 <= status <= 255`` and
    ``TypeError`` if ``status`` is not an ``int`` (``bool`` included).
    """
    arch = _ARCHES.get(target)
    if arch is None:
        raise UnknownTarget(
            f"no probe for QEMU target {target!r}: known targets are {', '.join(PROBE_TARGETS)}"
        )
    return _build(arch, arch.code, _check_status(status), b"")


def held_probe(target: str, status: int = PROBE_STATUS) -> bytes:
    """A probe that says it runs, waits for its standard input to close, exits with ``status``.

    It writes one byte (any) to file descriptor 1, then reads one from file
    descriptor 0 (EOF or a byte, either will do), so the process stays alive
    while its parent, which saw the byte, looks at it; the
    ``e_ident`` padding carries :data:`HELD_MARK`. Only the targets of
    :data:`HELD_PROBE_TARGETS` have one (:class:`~binfmt.errors.UnknownTarget`
    otherwise); ``status`` is checked as in :func:`probe`.
    """
    code = _HELD.get(target)
    if code is None:
        raise UnknownTarget(
            f"no held probe for QEMU target {target!r}: known targets are "
            f"{', '.join(HELD_PROBE_TARGETS)}"
        )
    return _build(_ARCHES[target], code, _check_status(status), HELD_MARK)


def _check_status(status: int) -> int:
    if isinstance(status, bool) or not isinstance(status, int):
        raise TypeError(f"invalid status {status!r}: an exit status is an int in 0..255")
    if not 0 <= status <= 255:
        raise ValueError(f"invalid status {status!r}: an exit status is an int in 0..255")
    return status


def _build(arch: _Arch, emit: Callable[[int, int], bytes], status: int, pad: bytes) -> bytes:
    """The headers and ``emit``'s code; ``pad`` goes into ``e_ident[9:16]``."""
    order = ">" if arch.big_endian else "<"
    if arch.is64:
        ehdr, phdr = order + "16sHHIQQQIHHHHHH", order + "IIQQQQQQ"
    else:
        ehdr, phdr = order + "16sHHIIIIIHHHHHH", order + "IIIIIIII"
    ehsize, phentsize = struct.calcsize(ehdr), struct.calcsize(phdr)
    start = _BASE + ehsize + phentsize
    code = emit(status, start)
    size = ehsize + phentsize + len(code)
    elfclass, data = (2 if arch.is64 else 1), (2 if arch.big_endian else 1)
    # EI_OSABI (0, System V) and EI_ABIVERSION (0) are left in the zero padding.
    ident = (b"\x7fELF" + bytes([elfclass, data, _EV_CURRENT, 0, 0]) + pad).ljust(16, b"\0")
    header = struct.pack(
        ehdr,
        ident,
        _ET_EXEC,
        arch.machine,
        _EV_CURRENT,
        start,  # e_entry: the code follows the headers
        ehsize,  # e_phoff
        0,  # e_shoff: no section headers
        arch.flags,
        ehsize,
        phentsize,
        1,  # e_phnum
        0,  # e_shentsize
        0,  # e_shnum
        0,  # e_shstrndx
    )
    if arch.is64:
        # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        program = struct.pack(phdr, _PT_LOAD, _PF_R | _PF_X, 0, _BASE, _BASE, size, size, _ALIGN)
    else:
        # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align
        program = struct.pack(phdr, _PT_LOAD, 0, _BASE, _BASE, size, size, _PF_R | _PF_X, _ALIGN)
    return header + program + code


def write_probe(target: str, directory: _StrPath, status: int = PROBE_STATUS) -> str:
    """Write ``probe(target, status)`` to ``<directory>/probe-<target>`` (0755); return the path.

    The file is written to a temporary name in ``directory`` and renamed over
    the final name, so a concurrent reader (or exec) never sees a partial probe.
    """
    data = probe(target, status)
    directory = os.fspath(directory)
    path = os.path.join(directory, f"probe-{target}")
    fd, tmp = tempfile.mkstemp(prefix=f".probe-{target}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o755)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path

"""ELF files: a fast header decoder for every file, pyelftools details on demand.

Two layers, because they cost very different amounts:

* :meth:`ElfHeader.decode` reads the fixed-size file header from the first
  bytes of a file with one precompiled :class:`struct.Struct` (about a
  microsecond). A scan of ``/usr`` calls it for every file, together with
  :func:`read_head`.
* :func:`details` builds a pyelftools ``ELFFile`` (a few tenths of a
  millisecond) and reads the program headers, ``PT_INTERP`` and the dynamic
  section: what decides whether an exec needs a loader, and which one. It is
  for the few files whose details matter; pyelftools is imported inside it, so
  ``import binfmt.elf`` never imports pyelftools.

Both layers treat the file as hostile. Every offset and length is checked
against the file size and against the limits that the kernel's ``binfmt_elf``
applies before reading (a program header table of at most 64 KiB, a
``PT_INTERP`` of 2 to ``PATH_MAX`` bytes), so a truncated, corrupt or crafted
file gives :class:`NotElf` or :class:`InvalidElf` with the reason: never a
pyelftools exception, never an unbounded read.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from typing import IO, Any, Optional, Union

import attrs

from .errors import ElfError, InvalidElf, InvalidValue, NotElf, NotRegularFile
from .text import decode

__all__ = [
    "MACHINE_NAMES",
    "ElfDetails",
    "ElfError",
    "ElfHeader",
    "InvalidElf",
    "NotElf",
    "NotRegularFile",
    "details",
    "program_interpreter",
    "read_head",
]

ET_REL = 1
ET_EXEC = 2
ET_DYN = 3
ET_CORE = 4

EM_PPC = 20
EM_PPC64 = 21
EM_ARM = 40
EM_AARCH64 = 183
EM_MIPS = 8
EM_SH = 42
EM_XTENSA = 94
EM_MICROBLAZE = 189
EM_MICROBLAZE_OLD = 47787
EM_RISCV = 243

#: Short names for the e_machine values of QEMU's binfmt table (and Debian's).
MACHINE_NAMES = {
    2: "SPARC",
    3: "i386",
    4: "m68k",
    6: "i486",
    8: "MIPS",
    15: "PA-RISC",
    18: "SPARC32+",
    20: "PowerPC",
    21: "PowerPC64",
    22: "S/390",
    40: "ARM",
    42: "SuperH",
    43: "SPARC V9",
    62: "x86-64",
    76: "CRIS",
    92: "OpenRISC",
    94: "Xtensa",
    164: "Hexagon",
    183: "AArch64",
    189: "MicroBlaze",
    243: "RISC-V",
    258: "LoongArch",
    36902: "Alpha",
    47787: "MicroBlaze (old)",
}

# Machines that exist in both byte orders, where "endianness" is worth a fact.
_BI_ENDIAN = frozenset(
    {
        EM_ARM,
        EM_AARCH64,
        EM_MIPS,
        EM_PPC,
        EM_PPC64,
        EM_SH,
        EM_XTENSA,
        EM_MICROBLAZE,
        EM_MICROBLAZE_OLD,
    }
)

# e_flags bits (the psABIs; names as in binutils' include/elf/*.h).
EF_ARM_EABIMASK = 0xFF000000
EF_ARM_ABI_FLOAT_SOFT = 0x200
EF_ARM_ABI_FLOAT_HARD = 0x400
EF_MIPS_ABI2 = 0x20
EF_MIPS_NAN2008 = 0x400
EF_MIPS_ABI = 0x0000F000
E_MIPS_ABI_O64 = 0x2000
E_MIPS_ABI_EABI32 = 0x3000
E_MIPS_ABI_EABI64 = 0x4000
EF_RISCV_FLOAT_ABI = 0x6
EF_PPC64_ABI = 0x3

#: fs/binfmt_elf.c, elf_read_phdrs(): a larger program header table is ENOEXEC.
MAX_PHDR_TABLE = 65536
#: fs/binfmt_elf.c: a PT_INTERP longer than PATH_MAX (or shorter than 2) is ENOEXEC.
PATH_MAX = 4096
#: The most of PT_DYNAMIC that details() reads: 4096 ELF64 tags, far more than
#: any linker writes (DT_NULL ends the table long before).
MAX_DYNAMIC = 65536

_DT_NULL = "DT_NULL"
_DT_NEEDED = "DT_NEEDED"
_DT_FLAGS_1 = "DT_FLAGS_1"
_DF_1_PIE = 0x08000000

_MAGIC = b"\x7fELF"

# e_ident[EI_OSABI] .. e_phnum, skipping e_ident padding, e_shoff and
# e_ehsize; the trailing 6x makes each struct exactly one file header long,
# so unpack_from() only needs the length check decode() already did.
_FIELDS32 = "7xBB7xHHIIIxxxxIxxHH6x"
_FIELDS64 = "7xBB7xHHIQQxxxxxxxxIxxHH6x"

# Keyed by the first six bytes: magic, EI_CLASS and EI_DATA in one lookup.
_LAYOUTS: dict[object, tuple[struct.Struct, int, str]] = {
    _MAGIC + b"\x01\x01": (struct.Struct("<" + _FIELDS32), 32, "little"),
    _MAGIC + b"\x01\x02": (struct.Struct(">" + _FIELDS32), 32, "big"),
    _MAGIC + b"\x02\x01": (struct.Struct("<" + _FIELDS64), 64, "little"),
    _MAGIC + b"\x02\x02": (struct.Struct(">" + _FIELDS64), 64, "big"),
}
_EHDR32_SIZE = 52
_EHDR64_SIZE = 64

# Regular files ignore O_NONBLOCK; it keeps open() of a FIFO or a device from
# waiting, and O_NOCTTY keeps a terminal from becoming ours.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


# -- the hot path: the file header ----------------------------------------------


@attrs.frozen
class ElfHeader:
    """The ELF file header (``Elf32_Ehdr`` / ``Elf64_Ehdr``): what the kernel looks at first.

    Only the fields that matter for running a file are kept; offsets and sizes
    are the raw values, unchecked against any file (see :func:`details`).
    """

    elf_class: int  #: 32 or 64 (EI_CLASS).
    byte_order: str  #: ``"little"`` or ``"big"`` (EI_DATA).
    osabi: int  #: EI_OSABI (0 System V, 3 GNU/Linux …).
    abiversion: int  #: EI_ABIVERSION.
    type: int  #: e_type: 1 ET_REL, 2 ET_EXEC, 3 ET_DYN, 4 ET_CORE.
    machine: int  #: e_machine: 62 x86-64, 183 AArch64 … (see :attr:`machine_name`).
    version: int  #: e_version (1 for every real file).
    entry: int  #: e_entry.
    phoff: int  #: e_phoff: where the program header table starts.
    flags: int  #: e_flags: machine-specific ABI bits (see :attr:`abi`).
    phentsize: int  #: e_phentsize.
    phnum: int  #: e_phnum.

    @classmethod
    def decode(cls, data: Union[bytes, bytearray, memoryview]) -> ElfHeader:
        """Decode the header from the first bytes of a file (64 are always enough).

        Raises :class:`NotElf` with the reason for anything else: wrong magic,
        an invalid EI_CLASS or EI_DATA, or fewer bytes than the header needs.
        """
        try:
            layout = _LAYOUTS.get(data[:6])
        except TypeError:  # a bytearray or memoryview slice is not hashable
            layout = _LAYOUTS.get(bytes(data[:6]))
        if layout is None or len(data) < layout[0].size:
            raise NotElf(_why_not_elf(data))
        fields, elf_class, byte_order = layout
        osabi, abiver, etype, machine, version, entry, phoff, flags, phentsize, phnum = (
            fields.unpack_from(data)
        )
        return cls(
            elf_class,
            byte_order,
            osabi,
            abiver,
            etype,
            machine,
            version,
            entry,
            phoff,
            flags,
            phentsize,
            phnum,
        )

    @property
    def machine_name(self) -> str:
        """``"AArch64"``, ``"x86-64"`` … for QEMU's machines, else ``"e_machine N"``."""
        name = MACHINE_NAMES.get(self.machine)
        return name if name is not None else f"e_machine {self.machine}"

    @property
    def is_executable_type(self) -> bool:
        """ET_EXEC or ET_DYN: the two types the kernel's ELF loader runs."""
        return self.type == ET_EXEC or self.type == ET_DYN

    @property
    def abi(self) -> tuple[tuple[str, str], ...]:
        """The ABI facts that ``e_flags`` and the byte order encode, as ordered pairs.

        ARM: ``("arm_eabi", "5")`` (the EABI version, ``"0"`` for the old GNU
        ABI) and, from EABI 5, ``("float_abi", "hard" | "soft")`` when a bit
        says so. MIPS: ``("mips_abi", …)``: ``"o64"``, ``"eabi32"`` or
        ``"eabi64"`` when EF_MIPS_ABI names one, else ``"n64"`` for ELF64,
        ``"n32"`` for ELF32 with EF_MIPS_ABI2, else ``"o32"``; then
        ``("mips_nan", "2008" | "legacy")``. RISC-V: ``("riscv_float_abi",
        "soft" | "single" | "double" | "quad")``. PowerPC64: ``("ppc64_abi",
        "ELFv1" | "ELFv2")``, from e_flags or, when they are 0, the byte order
        (big-endian ELFv1, little-endian ELFv2). Machines built in both byte
        orders end with ``("endianness", "little" | "big")``.
        """
        facts: list[tuple[str, str]] = []
        machine, flags = self.machine, self.flags
        if machine == EM_ARM:
            eabi = (flags & EF_ARM_EABIMASK) >> 24
            facts.append(("arm_eabi", str(eabi)))
            # Before EABI 5 these two bits meant other things (GNU's old ABI).
            if eabi >= 5 and flags & EF_ARM_ABI_FLOAT_HARD:
                facts.append(("float_abi", "hard"))
            elif eabi >= 5 and flags & EF_ARM_ABI_FLOAT_SOFT:
                facts.append(("float_abi", "soft"))
        elif machine == EM_MIPS:
            named = {
                E_MIPS_ABI_O64: "o64",
                E_MIPS_ABI_EABI32: "eabi32",
                E_MIPS_ABI_EABI64: "eabi64",
            }
            abi = named.get(flags & EF_MIPS_ABI)
            if abi is None and self.elf_class == 64:
                abi = "n64"
            elif abi is None:
                abi = "n32" if flags & EF_MIPS_ABI2 else "o32"
            facts.append(("mips_abi", abi))
            facts.append(("mips_nan", "2008" if flags & EF_MIPS_NAN2008 else "legacy"))
        elif machine == EM_RISCV:
            floats = ("soft", "single", "double", "quad")
            facts.append(("riscv_float_abi", floats[(flags & EF_RISCV_FLOAT_ABI) >> 1]))
        elif machine == EM_PPC64:
            level = flags & EF_PPC64_ABI
            if level == 0:
                level = 1 if self.byte_order == "big" else 2
            # 3 is not defined; report the bits rather than guess.
            facts.append(("ppc64_abi", f"ELFv{level}" if level < 3 else "unknown (e_flags 3)"))
        if machine in _BI_ENDIAN:
            facts.append(("endianness", self.byte_order))
        return tuple(facts)


def _why_not_elf(data: Union[bytes, bytearray, memoryview]) -> str:
    """The reason decode() refused ``data``: only called when it did."""
    n = len(data)
    if n == 0:
        return "not an ELF file (empty)"
    if data[:4] != _MAGIC[:n]:
        return f"not an ELF file (magic {bytes(data[:4])!r}, expected {_MAGIC!r})"
    if n < 5:
        return f"truncated ELF header: {n} of {_EHDR32_SIZE} bytes"
    if data[4] not in (1, 2):
        return f"invalid EI_CLASS {data[4]} (1 is ELF32, 2 is ELF64)"
    size = _EHDR32_SIZE if data[4] == 1 else _EHDR64_SIZE
    if n < 6:
        return f"truncated ELF header: {n} of {size} bytes"
    if data[5] not in (1, 2):
        return f"invalid EI_DATA {data[5]} (1 is little-endian, 2 is big-endian)"
    return f"truncated ELF header: {n} of {size} bytes"


_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def _open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without blocking; refuse anything but a regular file."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "special file")
            raise NotRegularFile(path, kind)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_head(path: str, size: int = 256) -> bytes:
    """The first ``size`` bytes of the regular file ``path`` (fewer if it is shorter).

    Opens with ``O_NONBLOCK|O_NOCTTY|O_CLOEXEC`` and checks with ``fstat``
    before reading, so a FIFO or a device raises :class:`NotRegularFile`
    (errno ``EACCES``) instead of blocking or being read. Other failures are
    the ``OSError`` of ``open(2)`` or ``read(2)``.
    """
    if size < 0:
        raise InvalidValue("size", size, "must not be negative")
    fd, _ = _open_regular(path)
    try:
        data = os.read(fd, size)
        # One read gives everything for a regular file; loop only for the
        # rare short read (a signal, some network filesystems).
        while 0 < len(data) < size:
            more = os.read(fd, size - len(data))
            if not more:
                break
            data += more
        return data
    finally:
        os.close(fd)


# -- the scan path: PT_INTERP without pyelftools ----------------------------------

# (p_type, p_offset, p_filesz) from one program header, per class and byte order.
_PHDR = {
    (32, "little"): (struct.Struct("<II8xI"), 32),
    (32, "big"): (struct.Struct(">II8xI"), 32),
    (64, "little"): (struct.Struct("<I4xQ16xQ"), 56),
    (64, "big"): (struct.Struct(">I4xQ16xQ"), 56),
}
_PT_INTERP = 3


def _check_interp_size(length: int) -> Optional[str]:
    """Why the kernel refuses a PT_INTERP of ``length`` bytes, or ``None``."""
    if not 2 <= length <= PATH_MAX:
        return f"PT_INTERP is {length} bytes; the kernel accepts 2 to {PATH_MAX} (PATH_MAX)"
    return None


def _interp_path(raw: bytes) -> str:
    """The path the kernel opens for PT_INTERP bytes; :class:`InvalidElf` if it refuses them."""
    if not raw or raw[-1] != 0:
        raise InvalidElf(f"PT_INTERP {raw[:80]!r} does not end with a NUL byte")
    # The kernel opens the C string: up to the first NUL.
    return decode(raw[: raw.index(0)])


def _pread(fd: int, length: int, offset: int, what: str) -> bytes:
    """``length`` bytes at ``offset``, or :class:`InvalidElf` if the file has fewer there."""
    try:
        data = os.pread(fd, length, offset)
    except (OverflowError, ValueError):  # an offset beyond what off_t holds
        data = b""
    except OSError as exc:
        # An offset off_t holds, but offset + length does not: EINVAL.
        if exc.errno not in (errno.EINVAL, errno.EOVERFLOW):
            raise
        data = b""
    if len(data) != length:
        raise InvalidElf(f"{what} (offset {offset}, {length} bytes) runs past the end of the file")
    return data


def program_interpreter(fd: int, header: ElfHeader) -> Optional[str]:
    """The ``PT_INTERP`` path of an open ELF file, or ``None``: two ``pread`` calls, no parser.

    For scanning many files, where building a pyelftools object per file
    (:func:`details`) would cost ~0.4 ms each. Applies the kernel's limits
    (program header table of at most 64 KiB with the native entry size,
    ``PT_INTERP`` of 2 to 4096 bytes ending in NUL) and raises
    :class:`InvalidElf` where the kernel would refuse the file.
    """
    if header.phnum == 0:
        return None
    layout, entsize = _PHDR[(header.elf_class, header.byte_order)]
    if header.phentsize != entsize:
        raise InvalidElf(
            f"e_phentsize is {header.phentsize}, but ELF{header.elf_class} "
            f"program headers are {entsize} bytes (the kernel refuses it)"
        )
    size = header.phnum * entsize
    if size > MAX_PHDR_TABLE:
        raise InvalidElf(
            f"program header table is {size} bytes ({header.phnum} entries), "
            f"over the kernel's limit of {MAX_PHDR_TABLE}"
        )
    table = _pread(fd, size, header.phoff, "program header table")
    for start in range(0, size, entsize):
        p_type, p_offset, p_filesz = layout.unpack_from(table, start)
        if p_type != _PT_INTERP:
            continue
        refusal = _check_interp_size(p_filesz)
        if refusal is not None:
            raise InvalidElf(refusal)
        return _interp_path(_pread(fd, p_filesz, p_offset, "PT_INTERP"))
    return None


# -- on demand: pyelftools ------------------------------------------------------


@attrs.frozen
class ElfDetails:
    """What the kernel and the dynamic loader need from an ELF file, read by :func:`details`."""

    header: ElfHeader
    #: The PT_INTERP path the kernel loads (UTF-8, surrogateescape; no NUL), or None.
    interpreter: Optional[str]
    #: Needs a dynamic loader: has PT_INTERP, or a PT_DYNAMIC with DT_NEEDED entries.
    is_dynamic: bool
    #: ET_DYN without PT_INTERP, with a PT_DYNAMIC but no DT_NEEDED: relocates itself.
    is_static_pie: bool
    #: ET_DYN that is a program: has PT_INTERP, DF_1_PIE, or is a static PIE.
    is_pie: bool
    #: The header's ABI facts (:attr:`ElfHeader.abi`).
    abi: tuple[tuple[str, str], ...]


def details(path: str) -> ElfDetails:
    """Read the program headers of the ELF file at ``path`` with pyelftools.

    Raises :class:`NotElf` when the file header is not ELF,
    :class:`InvalidElf` when the rest is truncated, corrupt or over the
    kernel's limits (a program header table over 64 KiB or with an
    ``e_phentsize`` that is not the native size, a ``PT_INTERP`` outside
    2..4096 bytes or without its NUL, a segment past the end of the file),
    :class:`NotRegularFile` for directories, FIFOs and devices, and the
    ``OSError`` of ``open(2)`` (``ENOENT``, ``EACCES`` …). No pyelftools
    exception escapes, and at most about 130 KiB of the file is read.
    """
    fd, st = _open_regular(path)
    with os.fdopen(fd, "rb") as stream:
        head = stream.read(_EHDR64_SIZE)
        try:
            header = ElfHeader.decode(head)
        except NotElf as exc:
            raise NotElf(exc.reason, path) from None
        return _DetailsReader(path, stream, st.st_size, header).run()


class _DetailsReader:
    """One details() call: bounded reads of one file through pyelftools' structs."""

    def __init__(self, path: str, stream: IO[bytes], size: int, header: ElfHeader) -> None:
        self.path = path
        self.stream = stream
        self.size = size
        self.header = header

    def invalid(self, reason: str) -> InvalidElf:
        return InvalidElf(reason, self.path)

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset + length > self.size:
            raise self.invalid(
                f"{what} (offset {offset}, {length} bytes) runs past the end of the file "
                f"({self.size} bytes)"
            )
        self.stream.seek(offset)
        data = self.stream.read(length)
        if len(data) != length:
            raise self.invalid(f"{what} (offset {offset}, {length} bytes): the file shrank")
        return data

    def run(self) -> ElfDetails:
        from elftools.elf.elffile import ELFFile

        try:
            elf = ELFFile(self.stream)
            return self.facts(elf)
        except (ElfError, OSError):
            raise
        except Exception as exc:
            # pyelftools raises almost anything on bad input: ELFError,
            # ConstructError, struct.error, ValueError, KeyError,
            # AssertionError, IndexError, RecursionError, OverflowError,
            # UnicodeDecodeError, MemoryError …
            raise self.invalid(f"pyelftools: {type(exc).__name__}: {exc}") from None

    def facts(self, elf: Any) -> ElfDetails:
        header = self.header
        interp_seg: Optional[Any] = None
        dynamic_seg: Optional[Any] = None
        for phdr in self.program_headers(elf):
            # The kernel uses the first PT_INTERP; ld.so the first PT_DYNAMIC.
            if phdr["p_type"] == "PT_INTERP" and interp_seg is None:
                interp_seg = phdr
            elif phdr["p_type"] == "PT_DYNAMIC" and dynamic_seg is None:
                dynamic_seg = phdr
        interpreter = None if interp_seg is None else self.interpreter(interp_seg)
        needed, pie_flag = (False, False) if dynamic_seg is None else self.dynamic(elf, dynamic_seg)
        is_dyn_type = header.type == ET_DYN
        is_static_pie = (
            is_dyn_type and interp_seg is None and dynamic_seg is not None and not needed
        )
        return ElfDetails(
            header=header,
            interpreter=interpreter,
            is_dynamic=interp_seg is not None or needed,
            is_static_pie=is_static_pie,
            is_pie=is_dyn_type and (interp_seg is not None or pie_flag or is_static_pie),
            abi=header.abi,
        )

    def program_headers(self, elf: Any) -> list[Any]:
        header = self.header
        if header.phnum == 0:
            return []
        phdr = elf.structs.Elf_Phdr
        entsize = phdr.sizeof()
        if header.phentsize != entsize:
            raise self.invalid(
                f"e_phentsize is {header.phentsize}, but ELF{header.elf_class} "
                f"program headers are {entsize} bytes (the kernel refuses it)"
            )
        table_size = header.phnum * entsize
        if table_size > MAX_PHDR_TABLE:
            raise self.invalid(
                f"program header table is {table_size} bytes ({header.phnum} entries), "
                f"over the kernel's limit of {MAX_PHDR_TABLE}"
            )
        table = self.read(header.phoff, table_size, "program header table")
        return [phdr.parse(table[i : i + entsize]) for i in range(0, table_size, entsize)]

    def interpreter(self, seg: Any) -> str:
        length = seg["p_filesz"]
        refusal = _check_interp_size(length)
        if refusal is not None:
            raise self.invalid(refusal)
        try:
            return _interp_path(self.read(seg["p_offset"], length, "PT_INTERP"))
        except InvalidElf as exc:
            raise self.invalid(exc.reason) from None

    def dynamic(self, elf: Any, seg: Any) -> tuple[bool, bool]:
        """(has DT_NEEDED, DF_1_PIE is set) from the dynamic table, up to DT_NULL."""
        dyn = elf.structs.Elf_Dyn
        entsize = dyn.sizeof()
        length = min(seg["p_filesz"], MAX_DYNAMIC)
        length -= length % entsize
        data = self.read(seg["p_offset"], length, "PT_DYNAMIC")
        needed = pie = False
        for i in range(0, length, entsize):
            tag = dyn.parse(data[i : i + entsize])
            kind = tag["d_tag"]
            if kind == _DT_NULL:
                break
            if kind == _DT_NEEDED:
                needed = True
            elif kind == _DT_FLAGS_1 and tag["d_val"] & _DF_1_PIE:
                pie = True
        return needed, pie

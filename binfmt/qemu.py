"""QEMU user-mode ELF signatures: the magic/mask pairs that send a foreign binary to QEMU.

:data:`SIGNATURES` is QEMU's own table from ``scripts/qemu-binfmt-conf.sh``
(qemu/qemu@1887cf23, the QEMU 10.0 cycle), transcribed byte for byte and in
QEMU's order, with one correction: QEMU's big-endian ``microblaze`` entry has
its ``e_type`` bytes in little-endian order and can never match, so this table
swaps them (see :attr:`Signature.upstream_difference` and
``docs/signatures.rst``). Each signature also carries the names other tools
use for the same target: OCI platforms (``linux/arm64``) and aliases from
Debian, Go and ``uname -m`` (``arm64``, ``armhf``, ``i686`` …).

The bytes are data in this module; nothing is read at import time. The tests
compare the table with the reference JSON and check that every signature
matches synthesized ET_EXEC and ET_DYN headers of its own target and no
other target's.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Mapping
from typing import Literal, Optional, Union

import attrs

from .entry import Entry, EntryType, Flags, mask_bits, masked_key
from .errors import InvalidValue, UnknownTarget

__all__ = [
    "SIGNATURES",
    "UPSTREAM_COMMIT",
    "Coverage",
    "Signature",
    "coverage",
    "get",
    "identify",
    "is_qemu_entry",
    "lookup",
    "match_header",
    "resolve",
    "runs_qemu",
    "split_targets",
    "tests_same_bits",
]

#: How much of a target's programs an entry matches: its ET_EXEC and ET_DYN
#: headers both, one of them, or neither.
Coverage = Literal["all", "some", "none"]

#: The qemu/qemu commit whose ``scripts/qemu-binfmt-conf.sh`` the table follows.
UPSTREAM_COMMIT = "1887cf2368189087fdf977fb8d09b5ad47cc7aea"

_ELF_MAGIC = b"\x7fELF"
_ET_EXEC = 2
_ET_DYN = 3
# Field layout of an ELF file header (e_ident as 16 raw bytes), per class.
_HEADER_FORMAT = {32: "16sHHIIIIIHHHHHH", 64: "16sHHIQQQIHHHHHH"}
# e_ehsize, e_phentsize, e_shentsize per class.
_HEADER_SIZES = {32: (52, 32, 40), 64: (64, 56, 64)}


def _to_bytes(value: Union[bytes, bytearray, memoryview]) -> bytes:
    return bytes(value)


def _to_names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _default_interpreter_name(sig: Signature) -> str:
    return "qemu-" + sig.name


def _check_mask(sig: Signature, attribute: attrs.Attribute[bytes], mask: bytes) -> None:
    if len(mask) != len(sig.magic):
        raise InvalidValue(
            f"mask for {sig.name!r}",
            mask.hex(),
            f"{len(mask)} bytes but the magic has {len(sig.magic)}; they must be equal",
        )


def _check_magic(sig: Signature, attribute: attrs.Attribute[bytes], magic: bytes) -> None:
    if len(magic) < 20 or not magic.startswith(_ELF_MAGIC):
        raise InvalidValue(
            f"magic for {sig.name!r}",
            magic.hex(),
            "does not cover an ELF header up to e_machine (20 bytes starting with 7f454c46)",
        )


@attrs.frozen
class Signature:
    """One QEMU user-mode target: the bytes that identify its ELF files, and its names.

    ``magic`` and ``mask`` are compared with a file's first bytes at offset 0,
    exactly as binfmt_misc does (:meth:`matches`). ``e_machine``,
    ``elf_class`` and ``byte_order`` restate what the magic encodes, so code
    that describes a target need not decode the bytes. ``e_flags`` is what a
    typical Linux binary of the target carries; :meth:`header` uses it, and
    only the MIPS o32/n32 signatures look at it.
    """

    #: QEMU's target name (``"aarch64"``, ``"i486"``, ``"mipsn32el"``).
    name: str
    #: QEMU's family: the script skips every target in the host's family.
    family: str
    #: ELF ``e_machine`` the signature accepts.
    e_machine: int
    #: 32 or 64 (``EI_CLASS`` 1 or 2).
    elf_class: int = attrs.field(validator=attrs.validators.in_((32, 64)))
    #: ``"little"`` or ``"big"`` (``EI_DATA`` 1 or 2).
    byte_order: Literal["little", "big"] = attrs.field(
        validator=attrs.validators.in_(("little", "big"))
    )
    #: Bytes compared at offset 0 (bits outside :attr:`mask` are ignored).
    magic: bytes = attrs.field(converter=_to_bytes, validator=_check_magic)
    #: Which bits of each magic byte the kernel compares.
    mask: bytes = attrs.field(converter=_to_bytes, validator=_check_mask)
    #: OCI platforms (``"linux/arm64"``); the first is the canonical one.
    platforms: tuple[str, ...] = attrs.field(default=(), converter=_to_names)
    #: Other spellings of the target: Debian, Go and ``uname -m`` names.
    aliases: tuple[str, ...] = attrs.field(default=(), converter=_to_names)
    #: Basename of the QEMU binary (``i486`` runs under ``qemu-i386``).
    interpreter_name: str = attrs.field(
        default=attrs.Factory(_default_interpreter_name, takes_self=True)
    )
    #: Why these bytes differ from QEMU upstream's, or ``None`` if they do not.
    upstream_difference: Optional[str] = None
    #: ``e_flags`` of a typical binary; MIPS n32 has ``EF_MIPS_ABI2`` (0x20).
    e_flags: int = 0

    @property
    def entry_name(self) -> str:
        """The entry name QEMU's script registers: ``"qemu-"`` plus the target name."""
        return "qemu-" + self.name

    def header(
        self, e_type: int = _ET_EXEC, *, osabi: int = 0, e_flags: Optional[int] = None
    ) -> bytes:
        """A synthesized ELF file header of this target (52 bytes for ELF32, 64 for ELF64).

        ``e_type`` 2 is ET_EXEC and 3 is ET_DYN. The header has this target's
        class, byte order and ``e_machine``, ``EI_VERSION`` and ``e_version``
        1, ``EI_OSABI`` ``osabi`` (0, System V, by default; static glibc
        binaries say 3, GNU), and ``e_flags`` (default :attr:`e_flags`).
        Addresses and counts are zero: no program or section headers follow.
        """
        flags = self.e_flags if e_flags is None else e_flags
        _check_range("e_type", e_type, 0xFFFF)
        _check_range("osabi", osabi, 0xFF)
        _check_range("e_flags", flags, 0xFFFFFFFF)
        data = 1 if self.byte_order == "little" else 2
        ident = _ELF_MAGIC + bytes((self.elf_class // 32, data, 1, osabi, 0)) + bytes(7)
        order = "<" if self.byte_order == "little" else ">"
        ehsize, phentsize, shentsize = _HEADER_SIZES[self.elf_class]
        return struct.pack(
            order + _HEADER_FORMAT[self.elf_class],
            ident,
            e_type,
            self.e_machine,
            1,  # e_version
            0,  # e_entry
            0,  # e_phoff
            0,  # e_shoff
            flags,
            ehsize,
            phentsize,
            0,  # e_phnum
            shentsize,
            0,  # e_shnum
            0,  # e_shstrndx
        )

    def matches(self, header: bytes) -> bool:
        """Whether binfmt_misc would match a file starting with ``header`` against this signature.

        The kernel's rule: ``((header[j] ^ magic[j]) & mask[j]) == 0`` for
        every ``j``, with the header zero-padded when it is shorter than the
        magic (the kernel zero-fills its buffer past the end of the file).
        """
        size, mask = len(self.magic), mask_bits(self.mask)
        return masked_key(bytes(header), 0, size, mask) == masked_key(self.magic, 0, size, mask)

    def to_entry(
        self, interpreter: str, flags: Union[Flags, str] = "", name: Optional[str] = None
    ) -> Entry:
        """A magic :class:`~binfmt.entry.Entry` with this signature's bytes at offset 0.

        ``name`` defaults to :attr:`entry_name` (``qemu-aarch64``), as QEMU's
        script names it; ``interpreter`` is the full path of the QEMU binary.
        """
        return Entry(
            name if name is not None else self.entry_name,
            interpreter,
            magic=self.magic,
            mask=self.mask,
            flags=flags,
        )


def _check_range(field: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise InvalidValue(field, value, f"must be between 0 and {maximum:#x}")


_MICROBLAZE_DIFFERENCE = (
    "QEMU upstream writes e_type in little-endian byte order in this big-endian "
    "entry (magic bytes 16-17 '02 00', mask 'fe ff'), so it cannot match any "
    "big-endian ET_EXEC or ET_DYN file; this table uses '00 02' and 'ff fe', "
    "as Debian's qemu-user package does"
)

# Columns: name, family, e_machine, class, byte order, magic, mask. The hex is
# grouped by header field: ELF magic, EI_CLASS, EI_DATA, EI_VERSION, EI_OSABI,
# EI_ABIVERSION, EI_PAD, e_type, e_machine; the 40-byte MIPS rows go on with
# e_version, e_entry, e_phoff, e_shoff, e_flags (ELF32 layout).
# fmt: off
#: Every QEMU user-mode target with a binfmt_misc signature, in QEMU's order.
SIGNATURES: tuple[Signature, ...] = (
    Signature(
        "i386", "i386", 3, 32, "little",
        bytes.fromhex("7f454c46 01 01 01 00 00 00000000000000 0200 0300"),
        bytes.fromhex("ffffffff ff fe fe 00 ff ffffffffffffff feff ffff"),
        platforms=("linux/386",),
        aliases=("i686", "i586", "386", "x86", "ia32"),
    ),
    Signature(
        "i486", "i386", 6, 32, "little",
        bytes.fromhex("7f454c46 01 01 01 00 00 00000000000000 0200 0600"),
        bytes.fromhex("ffffffff ff fe fe 00 ff ffffffffffffff feff ffff"),
        interpreter_name="qemu-i386",
    ),
    Signature(
        "alpha", "alpha", 0x9026, 64, "little",
        bytes.fromhex("7f454c46 02 01 01 00 00 00000000000000 0200 2690"),
        bytes.fromhex("ffffffff ff fe fe 00 ff ffffffffffffff feff ffff"),
    ),
    Signature(
        "arm", "arm", 40, 32, "little",
        bytes.fromhex("7f454c46 01 01 01 00 00 00000000000000 0200 2800"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff feff ffff"),
        platforms=("linux/arm/v7", "linux/arm/v6", "linux/arm/v5", "linux/arm"),
        aliases=(
            "armhf", "armel", "armv8l", "armv7l", "armv6l", "armv5tel", "armv5l",
            "armv4tl", "armv7", "armv6", "armv5",
        ),
        e_flags=0x05000400,  # EABI version 5, hard-float (armhf)
    ),
    Signature(
        "armeb", "armeb", 40, 32, "big",
        bytes.fromhex("7f454c46 01 02 01 00 00 00000000000000 0002 0028"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff fffe ffff"),
        aliases=("armbe", "armv7b", "armv6b"),
        e_flags=0x05000000,  # EABI version 5
    ),
    Signature(
        "sparc", "sparc", 2, 32, "big",
        bytes.fromhex("7f454c46 01 02 01 00 00 00000000000000 0002 0002"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff fffe ffff"),
    ),
    Signature(
        "sparc32plus", "sparc", 18, 32, "big",
        bytes.fromhex("7f454c46 01 02 01 00 00 00000000000000 0002 0012"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff fffe ffff"),
        e_flags=0x100,  # EF_SPARC_32PLUS
    ),
    Signature(
        "sparc64", "sparc", 43, 64, "big",
        bytes.fromhex("7f454c46 02 02 01 00 00 00000000000000 0002 002b"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff fffe ffff"),
        aliases=("sparcv9",),
    ),
    Signature(
        "ppc", "ppc", 20, 32, "big",
        bytes.fromhex("7f454c46 01 02 01 00 00 00000000000000 0002 0014"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff fffe ffff"),
        aliases=("powerpc",),
    ),
    Signature(
        "ppc64", "ppc", 21, 64, "big",
        bytes.fromhex("7f454c46 02 02 01 00 00 00000000000000 0002 0015"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff fffe ffff"),
        platforms=("linux/ppc64",),
        aliases=("powerpc64",),
        e_flags=0x1,  # ELFv1 ABI
    ),
    Signature(
        "ppc64le", "ppcle", 21, 64, "little",
        bytes.fromhex("7f454c46 02 01 01 00 00 00000000000000 0200 1500"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff feff ff00"),
        platforms=("linux/ppc64le",),
        aliases=("ppc64el", "powerpc64le"),
        e_flags=0x2,  # ELFv2 ABI
    ),
    Signature(
        "m68k", "m68k", 4, 32, "big",
        bytes.fromhex("7f454c46 01 02 01 00 00 00000000000000 0002 0004"),
        bytes.fromhex("ffffffff ff ff fe 00 ff ffffffffffffff fffe ffff"),
    ),
    Signature(
        "mips", "mips", 8, 32, "big",
        bytes.fromhex(
            "7f454c46 01 02 01 00 00 00000000000000 0002 0008"
            " 00000001 00000000 00000000 00000000 00000000"
        ),
        bytes.fromhex(
            "ffffffff ff ff ff 00 00 ffffffffffffff fffe ffff"
            " ffffffff 00000000 00000000 00000000 00000020"
        ),
        platforms=("linux/mips",),
        e_flags=0x70001007,  # MIPS32r2, o32, PIC, CPIC, noreorder
    ),
    Signature(
        "mipsel", "mips", 8, 32, "little",
        bytes.fromhex(
            "7f454c46 01 01 01 00 00 00000000000000 0200 0800"
            " 01000000 00000000 00000000 00000000 00000000"
        ),
        bytes.fromhex(
            "ffffffff ff ff ff 00 00 ffffffffffffff feff ffff"
            " ffffffff 00000000 00000000 00000000 20000000"
        ),
        platforms=("linux/mipsle",),
        aliases=("mipsle",),
        e_flags=0x70001007,  # MIPS32r2, o32, PIC, CPIC, noreorder
    ),
    Signature(
        "mipsn32", "mips", 8, 32, "big",
        bytes.fromhex(
            "7f454c46 01 02 01 00 00 00000000000000 0002 0008"
            " 00000001 00000000 00000000 00000000 00000020"
        ),
        bytes.fromhex(
            "ffffffff ff ff ff 00 00 ffffffffffffff fffe ffff"
            " ffffffff 00000000 00000000 00000000 00000020"
        ),
        aliases=("mips64p32",),
        e_flags=0x80000027,  # MIPS64r2, EF_MIPS_ABI2 (n32), PIC, CPIC, noreorder
    ),
    Signature(
        "mipsn32el", "mips", 8, 32, "little",
        bytes.fromhex(
            "7f454c46 01 01 01 00 00 00000000000000 0200 0800"
            " 01000000 00000000 00000000 00000000 20000000"
        ),
        bytes.fromhex(
            "ffffffff ff ff ff 00 00 ffffffffffffff feff ffff"
            " ffffffff 00000000 00000000 00000000 20000000"
        ),
        aliases=("mips64p32le",),
        e_flags=0x80000027,  # MIPS64r2, EF_MIPS_ABI2 (n32), PIC, CPIC, noreorder
    ),
    Signature(
        "mips64", "mips", 8, 64, "big",
        bytes.fromhex("7f454c46 02 02 01 00 00 00000000000000 0002 0008"),
        bytes.fromhex("ffffffff ff ff ff 00 00 ffffffffffffff fffe ffff"),
        platforms=("linux/mips64",),
        e_flags=0x80000007,  # MIPS64r2, PIC, CPIC, noreorder
    ),
    Signature(
        "mips64el", "mips", 8, 64, "little",
        bytes.fromhex("7f454c46 02 01 01 00 00 00000000000000 0200 0800"),
        bytes.fromhex("ffffffff ff ff ff 00 00 ffffffffffffff feff ffff"),
        platforms=("linux/mips64le",),
        aliases=("mips64le",),
        e_flags=0x80000007,  # MIPS64r2, PIC, CPIC, noreorder
    ),
    Signature(
        "sh4", "sh4", 42, 32, "little",
        bytes.fromhex("7f454c46 01 01 01 00 00 00000000000000 0200 2a00"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff feff ffff"),
    ),
    Signature(
        "sh4eb", "sh4", 42, 32, "big",
        bytes.fromhex("7f454c46 01 02 01 00 00 00000000000000 0002 002a"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff fffe ffff"),
    ),
    Signature(
        "s390x", "s390x", 22, 64, "big",
        bytes.fromhex("7f454c46 02 02 01 00 00 00000000000000 0002 0016"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff fffe ffff"),
        platforms=("linux/s390x",),
    ),
    Signature(
        "aarch64", "arm", 183, 64, "little",
        bytes.fromhex("7f454c46 02 01 01 00 00 00000000000000 0200 b700"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff feff ffff"),
        platforms=("linux/arm64", "linux/arm64/v8"),
        aliases=("arm64",),
    ),
    Signature(
        "aarch64_be", "armeb", 183, 64, "big",
        bytes.fromhex("7f454c46 02 02 01 00 00 00000000000000 0002 00b7"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff fffe ffff"),
        aliases=("arm64be", "aarch64be"),
    ),
    Signature(
        "hppa", "hppa", 15, 32, "big",
        bytes.fromhex("7f454c46 01 02 01 00 00 00000000000000 0002 000f"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff fffe ffff"),
        aliases=("parisc",),
    ),
    Signature(
        "riscv32", "riscv", 243, 32, "little",
        bytes.fromhex("7f454c46 01 01 01 00 00 00000000000000 0200 f300"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff feff ffff"),
        e_flags=0x5,  # compressed instructions, double-float ABI
    ),
    Signature(
        "riscv64", "riscv", 243, 64, "little",
        bytes.fromhex("7f454c46 02 01 01 00 00 00000000000000 0200 f300"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff feff ffff"),
        platforms=("linux/riscv64",),
        e_flags=0x5,  # compressed instructions, double-float ABI
    ),
    Signature(
        "xtensa", "xtensa", 94, 32, "little",
        bytes.fromhex("7f454c46 01 01 01 00 00 00000000000000 0200 5e00"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff feff ffff"),
    ),
    Signature(
        "xtensaeb", "xtensaeb", 94, 32, "big",
        bytes.fromhex("7f454c46 01 02 01 00 00 00000000000000 0002 005e"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff fffe ffff"),
    ),
    Signature(
        # QEMU upstream has "0200" / "feff" for e_type here (see upstream_difference).
        "microblaze", "microblaze", 0xBAAB, 32, "big",
        bytes.fromhex("7f454c46 01 02 01 00 00 00000000000000 0002 baab"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff fffe ffff"),
        upstream_difference=_MICROBLAZE_DIFFERENCE,
    ),
    Signature(
        "microblazeel", "microblazeel", 0xBAAB, 32, "little",
        bytes.fromhex("7f454c46 01 01 01 00 00 00000000000000 0200 abba"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff feff ffff"),
    ),
    Signature(
        "or1k", "or1k", 92, 32, "big",
        bytes.fromhex("7f454c46 01 02 01 00 00 00000000000000 0002 005c"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff fffe ffff"),
        aliases=("openrisc",),
    ),
    Signature(
        "x86_64", "i386", 62, 64, "little",
        bytes.fromhex("7f454c46 02 01 01 00 00 00000000000000 0200 3e00"),
        bytes.fromhex("ffffffff ff fe fe 00 ff ffffffffffffff feff ffff"),
        platforms=("linux/amd64",),
        aliases=("amd64", "x64", "x86-64"),
    ),
    Signature(
        "hexagon", "hexagon", 164, 32, "little",
        bytes.fromhex("7f454c46 01 01 01 00 00 00000000000000 0200 a400"),
        bytes.fromhex("ffffffff ff ff ff 00 ff ffffffffffffff feff ffff"),
    ),
    Signature(
        "loongarch64", "loongarch", 258, 64, "little",
        bytes.fromhex("7f454c46 02 01 01 00 00 00000000000000 0200 0201"),
        bytes.fromhex("ffffffff ff ff ff fc 00 ffffffffffffff feff ffff"),
        platforms=("linux/loong64",),
        aliases=("loong64",),
        e_flags=0x43,  # object ABI v1, double-float ABI
    ),
)
# fmt: on


# -- lookup -------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _by_name() -> Mapping[str, Signature]:
    return {sig.name: sig for sig in SIGNATURES}


@functools.lru_cache(maxsize=1)
def _index() -> Mapping[str, Signature]:
    """Every spelling :func:`lookup` accepts, lower-cased, with its signature."""
    index: dict[str, Signature] = {}
    for sig in SIGNATURES:
        keys = [sig.name, *sig.aliases, *sig.platforms]
        keys += [p[len("linux/") :] for p in sig.platforms if p.startswith("linux/")]
        for key in keys:
            index.setdefault(key.lower(), sig)
    return index


def _unknown(text: str, candidates: Iterable[str], what: str) -> UnknownTarget:
    choices = sorted(set(candidates))
    import difflib  # only for the error message

    close = difflib.get_close_matches(text.strip().lower(), choices, n=5, cutoff=0.6)
    if close:
        hint = "did you mean " + ", ".join(repr(c) for c in close) + "?"
    else:
        hint = "known targets: " + ", ".join(sig.name for sig in SIGNATURES)
    return UnknownTarget(f"unknown {what} {text!r}: {hint}")


def get(name: str) -> Signature:
    """The signature of the QEMU target called exactly ``name`` (``"aarch64"``).

    Raises :class:`~binfmt.errors.UnknownTarget` naming the value and the
    closest target names.
    """
    try:
        return _by_name()[name]
    except KeyError:
        raise _unknown(name, _by_name(), "QEMU target") from None


def lookup(text: str) -> Signature:
    """The signature for a QEMU target name, an alias or an OCI platform.

    Case does not matter, and the ``linux/`` prefix of a platform is
    optional: ``"aarch64"``, ``"arm64"``, ``"linux/arm64"``, ``"ARM64/v8"``,
    ``"armhf"`` and ``"linux/arm/v7"`` all work. Raises
    :class:`~binfmt.errors.UnknownTarget` naming the value and close matches.
    """
    try:
        return _index()[text.strip().lower()]
    except KeyError:
        raise _unknown(text, _index(), "target, alias or platform") from None


def split_targets(targets: Union[str, Iterable[str]]) -> list[str]:
    """The names in a target list, in order: ``"arm64, riscv64"`` → ``["arm64", "riscv64"]``.

    A single string is split on commas, as is each item of an iterable; blanks
    around names and empty pieces are dropped; ``all`` (any case) is kept as
    ``"all"``.
    """
    items = [targets] if isinstance(targets, str) else list(targets)
    names = []
    for item in items:
        for piece in item.split(","):
            text = piece.strip()
            if text:
                names.append("all" if text.lower() == "all" else text)
    return names


def resolve(targets: Union[str, Iterable[str]]) -> list[Signature]:
    """The signatures for a target list (:func:`split_targets`), in order, once each.

    ``"all"`` stands for every signature in table order; every other name is
    looked up with :func:`lookup`. Raises :class:`~binfmt.errors.UnknownTarget`
    for the first name that is not known.
    """
    result: list[Signature] = []
    seen: set[Signature] = set()
    for name in split_targets(targets):
        for sig in SIGNATURES if name == "all" else (lookup(name),):
            if sig not in seen:
                seen.add(sig)
                result.append(sig)
    return result


# -- matching -----------------------------------------------------------------


def match_header(header: bytes) -> Optional[Signature]:
    """The first signature (in table order) whose magic and mask match a file's first bytes.

    ``header`` is the start of the file (64 bytes are plenty); ``None`` when
    no signature matches, e.g. for a script, a native-looking ET_REL object
    or a truncated file.
    """
    if header[:4] != _ELF_MAGIC:
        return None
    for sig in SIGNATURES:
        if sig.matches(header):
            return sig
    return None


def tests_same_bits(entry: Entry, sig: Signature) -> bool:
    """Whether the entry compares exactly the bits the signature compares, with the same values."""
    mask = entry.mask if entry.mask is not None else b"\xff" * entry.size
    if entry.offset != 0 or mask != sig.mask:
        return False
    bits = mask_bits(mask)
    size = len(mask)
    return masked_key(entry.magic, 0, size, bits) == masked_key(sig.magic, 0, size, bits)


def coverage(entry: Entry, sig: Signature) -> Coverage:
    """Whether ``entry`` matches ``sig``'s programs: ``"all"``, ``"some"`` or ``"none"``.

    The one definition of "this entry runs that target": the entry is tried
    on :meth:`Signature.header` with ``e_type`` ET_EXEC (static programs) and
    ET_DYN (PIE programs and shared objects).
    """
    if entry.type is not EntryType.MAGIC:
        return "none"
    offset, size, mask, key = entry.comparison()
    static, pie = _targets_by_key(offset, size, mask)
    hits = (sig.name in static.get(key, ())) + (sig.name in pie.get(key, ()))
    return ("none", "some", "all")[hits]


@functools.lru_cache(maxsize=256)
def _targets_by_key(
    offset: int, size: int, mask: Optional[int]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """For one way of comparing (offset, size, mask): the targets whose ET_EXEC, and
    whose ET_DYN, header gives each key, in table order.

    Entries that compare the same bytes (QEMU's 34 share ten ways) then cost
    a dictionary lookup each, whatever the number of targets.
    """
    # masked_key(header, offset, size, mask) is the unmasked window, masked
    # (-1 keeps every bit of a non-negative int).
    bits = -1 if mask is None else mask
    static: dict[int, list[str]] = {}
    pie: dict[int, list[str]] = {}
    for name, (static_window, pie_window) in _windows(offset, size).items():
        static.setdefault(static_window & bits, []).append(name)
        pie.setdefault(pie_window & bits, []).append(name)
    return static, pie


@functools.cache
def _program_headers() -> dict[str, tuple[bytes, bytes]]:
    """Each target's ET_EXEC and ET_DYN headers, built once."""
    return {sig.name: (sig.header(_ET_EXEC), sig.header(_ET_DYN)) for sig in SIGNATURES}


@functools.lru_cache(maxsize=64)
def _windows(offset: int, size: int) -> dict[str, tuple[int, int]]:
    """Each target's ET_EXEC and ET_DYN header bytes at ``offset``, ``size`` long, unmasked.

    Entries compare few distinct windows (QEMU's 34 targets: two), so they are
    worked out once and each identification costs two ``&`` per target.
    """
    return {
        name: (masked_key(static, offset, size, None), masked_key(pie, offset, size, None))
        for name, (static, pie) in _program_headers().items()
    }


@functools.lru_cache(maxsize=4096)
def identify(entry: Entry) -> tuple[Signature, ...]:
    """The targets an entry runs: those whose programs it all matches (:func:`coverage`).

    Entries that test exactly the signature's bits (same mask, same masked
    magic, at offset 0) come first, then the others in table order. An
    extension entry, or a magic entry for something other than these ELF
    targets, gives ``()``. Too loose an entry (e.g. one that ignores
    ``e_machine``) lists many targets.
    """
    if entry.type is not EntryType.MAGIC:
        return ()
    offset, size, mask, key = entry.comparison()
    static, pie = _targets_by_key(offset, size, mask)
    both = pie.get(key, ())
    found = [_by_name()[name] for name in static.get(key, ()) if name in both]
    exact = [sig for sig in found if tests_same_bits(entry, sig)]
    return tuple(exact + [sig for sig in found if sig not in exact])


def runs_qemu(entry: Entry) -> bool:
    """Named or run like QEMU, whatever it matches.

    QEMU's script names its entries ``qemu-TARGET`` and runs ``qemu-TARGET``
    binaries; Debian's packages run them through ``/usr/libexec/qemu-binfmt/``
    (also for targets this table has dropped, such as ``cris``).
    """
    interp = entry.interpreter.rsplit("/", 1)[-1]
    return (
        entry.name.startswith("qemu-")
        or interp.startswith("qemu-")
        or "/qemu-binfmt/" in entry.interpreter
    )


def is_qemu_entry(entry: Entry) -> bool:
    """Recognisably QEMU's: an entry for this table's ELF targets, named or run like QEMU.

    Rosetta, FEX, box64, WSLInterop and language runtimes are not QEMU's,
    whatever their magic matches (:func:`binfmt.qemu.runs_qemu`).
    """
    return runs_qemu(entry) and bool(identify(entry))

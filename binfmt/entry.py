"""One binfmt_misc entry: parse, validate, render and match it as the kernel does.

The register-line parser follows ``create_entry`` in ``fs/binfmt_misc.c``
step by step (see ``docs/kernel.rst``): the first byte is the delimiter, the
buffer is padded with eight more delimiters, fields are cut with a C-string
search that stops at a raw NUL, magic and mask go through a scan phase
(``\\x`` must be followed by two hex digits) and a decode phase (``\\xHH``
becomes a byte, any other backslash stays with the next character). Text
fields are ``str`` holding the raw bytes decoded as UTF-8 with
``surrogateescape``, so every byte the kernel accepts survives a round trip.
"""

from __future__ import annotations

import enum
import errno
import functools
from typing import TYPE_CHECKING, Optional, Union

import attrs

from . import text
from .errors import InvalidEntry, MalformedStatus, show_value

if TYPE_CHECKING:  # loaded on first use: reading entries (status) needs no kernel rules
    from .kernel import KernelRules

__all__ = [
    "INT_MAX",
    "NAME_MAX",
    "RESERVED_NAMES",
    "Entry",
    "EntryType",
    "Flags",
    "escape_magic",
    "extension_of",
    "mask_bits",
    "masked_key",
]

#: Names the kernel's directory already holds: registering them gives EEXIST.
RESERVED_NAMES = ("register", "status")
#: NAME_MAX: longer names fail in the dcache lookup with ENAMETOOLONG.
NAME_MAX = 255
#: The kernel stores the offset in an ``int``.
INT_MAX = 2**31 - 1

_HEX = frozenset(b"0123456789abcdefABCDEF")
_DIGITS = frozenset(b"0123456789")
# Delimiters to_register() tries, in order. ';' and '#' start comments in
# binfmt.d files, backslash and 'x' interact with escapes, flag letters are
# refused by fixed kernels.
_DELIMITER_CHOICES = ":|!%@,=~^+&*$?<>`'\"-_[]{}()"
# Bytes written literally in magic/mask; everything else as \xHH. Letters and
# digits only, which reproduces QEMU's own spelling of its table (\x7fELF\x02…).
_LITERAL = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


_decode = text.decode


def _encode(value: str) -> bytes:
    try:
        return text.encode(value)
    except UnicodeEncodeError:
        # A lone surrogate that does not stand for an undecodable byte.
        raise InvalidEntry(
            "text", value, "contains a character that is neither UTF-8 text nor an escaped byte"
        ) from None


def mask_bits(mask: Optional[bytes]) -> Optional[int]:
    """A mask as the integer :func:`masked_key` takes (``None``: compare every bit)."""
    return None if mask is None else int.from_bytes(mask, "big")


def masked_key(data: bytes, offset: int, size: int, mask: Optional[int]) -> int:
    """The kernel's magic comparison, as one integer: ``size`` bytes at ``offset``, masked.

    ``data`` is the start of a file (the kernel's buffer, zero-filled past the
    end of the file, so missing bytes count as zero) or a magic itself; ``mask``
    comes from :func:`mask_bits`. An entry matches a file exactly when both give
    the same key (``check_file()`` in ``fs/binfmt_misc.c``: ``(s[j] ^ magic[j]) &
    mask[j]`` is zero for every byte).
    """
    window = data[offset : offset + size]
    if len(window) < size:
        window = window + bytes(size - len(window))
    value = int.from_bytes(window, "big")
    return value if mask is None else value & mask


@functools.lru_cache(maxsize=4096)
def _magic_key(magic: bytes, mask: Optional[bytes]) -> tuple[Optional[int], int]:
    """An entry's side of the comparison: its mask as bits, and its magic's key."""
    bits = mask_bits(mask)
    return bits, masked_key(magic, 0, len(magic), bits)


def extension_of(path: str) -> Optional[str]:
    """What an extension entry compares: the text after the last ``.`` of the exec path."""
    dot = path.rfind(".")
    return None if dot < 0 else path[dot + 1 :]


class EntryType(enum.Enum):
    """How an entry recognises files: by magic bytes or by file-name extension."""

    MAGIC = "M"
    EXTENSION = "E"

    @property
    def label(self) -> str:
        """``"magic"`` or ``"extension"``: the spelling used in JSON output."""
        return self.name.lower()


class Flags(enum.Flag):
    """The flags after the interpreter, one letter each (spec §7).

    ``CREDENTIALS`` implies ``OPEN_BINARY`` and ``TRANSPARENT`` implies it too,
    exactly as the kernel stores them; :meth:`from_letters` adds the implied
    bit. ``TRANSPARENT`` and ``LOADER`` exist only from Linux 7.3.
    """

    PRESERVE_ARGV0 = 1  #: ``P``: keep the caller's argv[0] after the binary path.
    OPEN_BINARY = 2  #: ``O``: the kernel opens the binary, passes AT_EXECFD.
    CREDENTIALS = 4  #: ``C``: credentials from the binary, not the interpreter.
    FIX_BINARY = 8  #: ``F``: open the interpreter once, at registration.
    TRANSPARENT = 16  #: ``T`` (7.3): argv untouched, binary via AT_EXECFD.
    LOADER = 32  #: ``L`` (7.3): interpreter replaces the binary's PT_INTERP.

    @classmethod
    def from_letters(cls, letters: str) -> Flags:
        """``"CF"`` → ``OPEN_BINARY|CREDENTIALS|FIX_BINARY``; repeats are ignored.

        Raises :class:`InvalidEntry` for a letter that is not a flag.
        """
        bits = 0
        for letter in letters:
            try:
                bits |= _BIT_OF[letter]
            except KeyError:
                raise InvalidEntry(
                    "flags", letters, f"{letter!r} is not a flag letter (known: POCFTL)"
                ) from None
        return cls(_implied(bits))

    def normalized(self) -> Flags:
        """Add the bits the kernel sets implicitly (``C`` → ``O``, ``T`` → ``O``)."""
        bits = _implied(self.value)
        return self if bits == self.value else Flags(bits)

    @property
    def letters(self) -> str:
        """The letters in the kernel's print order (``P O C F T L``)."""
        # Plain integers: enum's operators cost a lot for something every entry asks.
        bits = self.value
        return "".join(letter for letter, bit in _ORDER_BITS if bits & bit)

    def __str__(self) -> str:
        return self.letters


# The letters in the kernel's print order, with their bits.
_ORDER_BITS = (("P", 1), ("O", 2), ("C", 4), ("F", 8), ("T", 16), ("L", 32))
_BIT_OF = dict(_ORDER_BITS)


def _implied(bits: int) -> int:
    """C (4) and T (16) imply O (2), as the kernel stores them."""
    return bits | 2 if bits & (4 | 16) else bits


def _to_flags(value: Union[Flags, str]) -> Flags:
    if isinstance(value, str):
        return Flags.from_letters(value)
    return value.normalized()


def _to_bytes(value: Union[bytes, bytearray, memoryview]) -> bytes:
    return bytes(value)


def _to_optional_bytes(value: Union[bytes, bytearray, memoryview, None]) -> Optional[bytes]:
    return None if value is None else bytes(value)


@attrs.frozen
class Entry:
    """A binfmt_misc entry, as the kernel holds it.

    Build one directly (``Entry("qemu-aarch64", "/usr/bin/qemu-aarch64-static",
    magic=…, mask=…, flags="F")``), parse a register line with :meth:`parse`, or
    an entry file with :meth:`from_status`. The constructor enforces what
    every kernel enforces; :meth:`check` adds one kernel version's limits.
    """

    name: str
    interpreter: str
    type: EntryType = EntryType.MAGIC
    offset: int = 0
    magic: bytes = attrs.field(default=b"", converter=_to_bytes)
    mask: Optional[bytes] = attrs.field(default=None, converter=_to_optional_bytes)
    extension: Optional[str] = None
    flags: Flags = attrs.field(default=Flags(0), converter=_to_flags)
    enabled: bool = True

    def __attrs_post_init__(self) -> None:
        _check_name(self.name)
        if not self.interpreter:
            raise InvalidEntry("interpreter", self.interpreter, "must not be empty")
        if "\0" in self.interpreter:
            raise InvalidEntry("interpreter", self.interpreter, "must not contain a NUL byte")
        if self.type is EntryType.EXTENSION:
            self._check_extension_fields()
        else:
            self._check_magic_fields()

    def _check_extension_fields(self) -> None:
        ext = self.extension
        if not ext:
            raise InvalidEntry("extension", ext, "an E entry needs a non-empty extension")
        if "/" in ext or "\0" in ext:
            raise InvalidEntry("extension", ext, "must not contain '/' or a NUL byte")
        if self.magic or self.mask is not None or self.offset:
            raise InvalidEntry(
                "type",
                "E",
                "an extension entry has no offset, magic or mask (the kernel skips them)",
            )

    def _check_magic_fields(self) -> None:
        if self.extension is not None:
            raise InvalidEntry("extension", self.extension, "only E entries have an extension")
        if not self.magic:
            raise InvalidEntry("magic", self.magic, "must not be empty")
        if self.mask is not None and len(self.mask) != len(self.magic):
            raise InvalidEntry(
                "mask",
                self.mask.hex(),
                f"is {len(self.mask)} bytes but the magic is {len(self.magic)}; they must be equal",
            )
        if not 0 <= self.offset <= INT_MAX:
            raise InvalidEntry("offset", self.offset, f"must be between 0 and {INT_MAX}")
        # 256 is the largest buffer any kernel has; check() applies the real one.
        _check_window(self.offset, len(self.magic), 256)

    # -- derived facts ------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes the magic covers (0 for extension entries)."""
        return len(self.magic)

    def same_registration(self, other: Entry) -> bool:
        """Whether ``other`` registers the same entry: equal but for the enabled state."""
        return attrs.evolve(self, enabled=True) == attrs.evolve(other, enabled=True)

    # -- kernel-version checks ----------------------------------------------

    def check(self, kernel: Optional[KernelRules] = None) -> Entry:
        """Raise :class:`InvalidEntry` if ``kernel`` would refuse this entry.

        Checks what varies by version: the buffer size, the flag letters, the
        7.3 flag combinations, and that the rendered register line fits.
        Returns ``self`` so it can be chained.
        """
        rules = _rules(kernel)
        if self.type is EntryType.MAGIC:
            _check_window(self.offset, self.size, rules.buffer_size)
        for letter in self.flags.letters:
            if letter not in rules.flag_letters:
                raise InvalidEntry(
                    "flags",
                    self.flags.letters,
                    f"flag {letter!r} is not accepted by this kernel "
                    f"(it accepts {rules.flag_letters!r})",
                )
        _check_flag_combinations(self.flags, self.interpreter, rules)
        self.to_register(rules)  # raises if no line of allowed length renders it
        return self

    # -- register lines -----------------------------------------------------

    @classmethod
    def parse(cls, line: Union[str, bytes], kernel: Optional[KernelRules] = None) -> Entry:
        """Parse one register line exactly as ``kernel`` would (default: running kernel).

        ``line`` is what one ``write(2)`` to ``register`` carries, including an
        optional single trailing newline. Raises :class:`InvalidEntry` with the
        kernel's errno for every line the kernel refuses (the interpreter's
        existence for ``F`` is not checked here: that is the kernel's open, see
        :meth:`binfmt.BinfmtMisc.register`).
        """
        data = _encode(line) if isinstance(line, str) else bytes(line)
        return _RegisterParser(data, _rules(kernel)).parse()

    def to_register(self, kernel: Optional[KernelRules] = None) -> str:
        """A register line the kernel accepts and that :meth:`parse` turns back into this entry.

        The enabled state is not part of a register line (a new entry starts
        enabled). The delimiter is ``:`` unless a field contains one, then the
        first of ``|!%@,=…`` that no field contains.
        """
        rules = _rules(kernel)
        texts = [self.name, self.interpreter, self.extension or ""]
        delim = _choose_delimiter(texts)
        line = ""
        # Readable first; if that is too long, escape only what must be, then
        # leave out the O that C (or T) implies.
        for letters, literal in (
            (self.flags.letters, _LITERAL),
            (self.flags.letters, _LITERAL_MINIMAL),
            (_shortest_letters(self.flags), _LITERAL_MINIMAL),
        ):
            if self.type is EntryType.EXTENSION:
                fields = [self.name, "E", "", self.extension or "", "", self.interpreter]
            else:
                magic = _escape(self.magic, delim, literal)
                mask = "" if self.mask is None else _escape(self.mask, delim, literal)
                offset = str(self.offset) if self.offset else ""
                fields = [self.name, "M", offset, magic, mask, self.interpreter]
            line = delim + delim.join(fields) + delim + letters
            if len(_encode(line)) <= rules.max_register_length:
                break
        length = len(_encode(line))
        if length > rules.max_register_length:
            raise InvalidEntry(
                "entry",
                self.name,
                f"its register line is {length} bytes, over the kernel's limit "
                f"of {rules.max_register_length}",
            )
        return line

    # -- entry files --------------------------------------------------------

    def to_status(self) -> str:
        """The text of ``/proc/sys/fs/binfmt_misc/<name>``, byte for byte (spec §2).

        Encode with ``utf-8``/``surrogateescape`` to get the kernel's bytes.
        """
        lines = [
            "enabled" if self.enabled else "disabled",
            f"interpreter {self.interpreter}",
            f"flags: {self.flags.letters}",
        ]
        if self.type is EntryType.EXTENSION:
            lines.append(f"extension .{self.extension}")
        else:
            lines.append(f"offset {self.offset}")
            lines.append(f"magic {self.magic.hex()}")
            if self.mask is not None:
                lines.append(f"mask {self.mask.hex()}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_status(cls, name: str, text: Union[str, bytes]) -> Entry:
        """Parse an entry file's text (as :meth:`to_status` renders it).

        Raises :class:`MalformedStatus` naming the line at fault.
        """
        if isinstance(text, bytes):
            text = _decode(text)
        return _parse_status(name, text)

    # -- matching -----------------------------------------------------------

    def matches(self, header: bytes, path: str = "") -> bool:
        """Whether the kernel would pick this entry for a file (ignoring ``enabled``).

        ``header`` is the start of the file (the kernel reads at most its
        buffer size, 256 bytes; missing bytes count as zero, so a zero magic
        past the end matches short files). ``path`` is the path as passed to
        ``execve``: an extension entry compares the text after its last dot.
        """
        if self.type is EntryType.EXTENSION:
            return extension_of(path) == self.extension
        offset, size, mask, key = self.comparison()
        return masked_key(header, offset, size, mask) == key

    def comparison(self) -> tuple[int, int, Optional[int], int]:
        """What :meth:`matches` compares: ``(offset, size, mask bits, key)``.

        A file matches when ``masked_key(header, offset, size, mask) == key``
        (:func:`masked_key`). For magic entries only.
        """
        mask, key = _magic_key(self.magic, self.mask)
        return self.offset, len(self.magic), mask, key


# -- validation helpers -----------------------------------------------------


def _rules(kernel: Optional[KernelRules]) -> KernelRules:
    """``kernel``, or the running kernel's rules."""
    if kernel is not None:
        return kernel
    from .kernel import KernelRules

    return KernelRules.running()


def _check_name(name: str) -> None:
    if not name or name in (".", ".."):
        raise InvalidEntry("name", name, "must not be empty, '.' or '..'")
    if "/" in name or "\0" in name:
        raise InvalidEntry("name", name, "must not contain '/' or a NUL byte")
    if name in RESERVED_NAMES:
        raise InvalidEntry(
            "name", name, "is one of the kernel's own files (register, status)", errno.EEXIST
        )
    if len(_encode(name)) > NAME_MAX:
        raise InvalidEntry(
            "name", name, f"is longer than {NAME_MAX} bytes (NAME_MAX)", errno.ENAMETOOLONG
        )


def _check_window(offset: int, size: int, buffer_size: int) -> None:
    if size > buffer_size or offset > buffer_size - size:
        raise InvalidEntry(
            "magic",
            f"offset {offset} + {size} bytes",
            f"offset + magic size must be at most {buffer_size} (the kernel's buffer)",
        )


def _check_flag_combinations(flags: Flags, interpreter: str, rules: KernelRules) -> None:
    """The flag rules Linux 7.3 added (spec §1.4, flags)."""
    if Flags.TRANSPARENT in flags and Flags.PRESERVE_ARGV0 in flags:
        raise InvalidEntry("flags", flags.letters, "T (transparent) cannot be combined with P")
    if Flags.LOADER in flags and flags & (
        Flags.TRANSPARENT | Flags.PRESERVE_ARGV0 | Flags.OPEN_BINARY
    ):
        raise InvalidEntry(
            "flags", flags.letters, "L (loader) cannot be combined with T, P, O or C"
        )
    if (
        rules.requires_absolute_credentials_interpreter
        and flags & (Flags.CREDENTIALS | Flags.LOADER)
        and Flags.FIX_BINARY not in flags
        and not interpreter.startswith("/")
    ):
        raise InvalidEntry(
            "interpreter", interpreter, "C or L without F needs an absolute interpreter path"
        )


# -- rendering helpers ------------------------------------------------------

# The least escaping a byte can get away with: not NUL (ends decoding), not a
# backslash (starts an escape), not a newline (breaks line-based files).
_LITERAL_MINIMAL = frozenset(range(1, 256)) - {ord("\\"), ord("\n"), ord("\r")}


def _escape(data: bytes, delim: str, literal: frozenset[int]) -> str:
    d = ord(delim)
    # Bytes above 0x7f become lone surrogates, which _encode() turns back into
    # the same single byte.
    return "".join(_decode(bytes((b,))) if b in literal and b != d else f"\\x{b:02x}" for b in data)


def escape_magic(data: bytes, delim: str = ":") -> str:
    """Magic or mask bytes as a register line spells them: letters and digits, else ``\\xHH``.

    The spelling of QEMU's own table (``\\x7fELF\\x02…``); ``delim`` is always escaped.
    """
    return _escape(data, delim, _LITERAL)


def _shortest_letters(flags: Flags) -> str:
    """The flag letters without the ``O`` that ``C`` or ``T`` implies (the kernel adds it)."""
    letters = flags.letters
    if flags & (Flags.CREDENTIALS | Flags.TRANSPARENT):
        letters = letters.replace("O", "")
    return letters


# When fields hold every delimiter of _DELIMITER_CHOICES: any other ASCII
# byte but NUL, line breaks, the backslash, 'x', hex digits (escapes) and flag
# letters (refused as delimiters by fixed kernels).
_DELIMITER_FALLBACK = "".join(
    c
    for c in map(chr, [*range(33, 127), 32, *range(1, 32), 127])  # printable first
    if c not in _DELIMITER_CHOICES and c not in "\n\r\\xX0123456789abcdefABCDEFPOCFTLD;#"
)


def _choose_delimiter(texts: list[str]) -> str:
    for candidate in _DELIMITER_CHOICES + _DELIMITER_FALLBACK:
        if not any(candidate in text for text in texts):
            return candidate
    raise InvalidEntry(
        "entry", texts[0], "every delimiter this library may use occurs in its fields"
    )


# -- the register-line parser -------------------------------------------------


class _RegisterParser:
    """``create_entry`` from fs/binfmt_misc.c, over a Python bytes buffer."""

    def __init__(self, data: bytes, rules: KernelRules) -> None:
        self.data = data
        self.rules = rules
        self.count = len(data)
        self.delim = data[0] if data else 0
        # The kernel pads with 8 delimiters; reading past that is out of bounds.
        self.buf = data + bytes([self.delim]) * 8
        self.pos = 1

    def fail(self, field: str, value: object, rule: str, err: int = errno.EINVAL) -> InvalidEntry:
        return InvalidEntry(field, value, rule, err)

    def field(self, name: str) -> bytes:
        """strchr(p, del): the bytes up to the next delimiter, stopping at a NUL."""
        start = self.pos
        end = self.buf.find(self.delim, start)
        if self.delim != 0:
            nul = self.buf.find(0, start)
            if nul != -1 and (end == -1 or nul < end):
                raise self.fail(name, _decode(self.buf[start : nul + 1]), "contains a raw NUL byte")
        if end == -1:
            raise self.fail(name, _decode(self.buf[start : self.count]), "missing its delimiter")
        self.pos = end + 1
        return self.buf[start:end]

    def scanarg(self, name: str) -> bytes:
        """scanarg(): up to the delimiter; ``\\x`` must be followed by two hex digits."""
        start = s = self.pos
        buf = self.buf
        while True:
            if s >= len(buf):
                raise self.fail(name, _decode(buf[start : self.count]), "missing its delimiter")
            c = buf[s]
            s += 1
            if c == self.delim:
                break
            if c == 0x5C and s < len(buf) and buf[s] == 0x78:  # backslash, 'x'
                s += 1
                for _ in range(2):
                    if s >= len(buf) or buf[s] not in _HEX:
                        raise self.fail(
                            name,
                            _decode(buf[start : min(s + 1, self.count)]),
                            r"'\x' must be followed by two hex digits",
                        )
                    s += 1
        self.pos = s
        return buf[start : s - 1]

    def parse(self) -> Entry:
        rules = self.rules
        if self.count < 11:
            raise self.fail(
                "line", _decode(self.data), "shorter than 11 bytes, the kernel's minimum"
            )
        if self.count > rules.max_register_length:
            raise self.fail(
                "line",
                _decode(self.data),
                f"is {self.count} bytes, over the kernel's limit of {rules.max_register_length}",
            )
        delim_char = chr(self.delim)
        if delim_char in rules.flag_letters and rules.rejects_flag_delimiter is not False:
            if rules.rejects_flag_delimiter is None:
                # Whether this kernel has the fix is not known: do not guess.
                raise self.fail(
                    "delimiter",
                    delim_char,
                    "a flag letter as the delimiter is refused by kernels with the fix, "
                    "and whether this one has it is unknown "
                    f"({rules.why_unknown('rejects_flag_delimiter')}): use another delimiter",
                )
            raise self.fail(
                "delimiter", delim_char, f"flag letters ({rules.flag_letters}) cannot be delimiters"
            )

        name = _decode(self.field("name"))
        if not name or name in (".", "..") or "/" in name:
            raise self.fail("name", name, "must not be empty, '.' or '..', nor contain '/'")

        type_char = self.buf[self.pos]
        self.pos += 1
        if type_char not in b"ME":
            raise self.fail("type", chr(type_char), "must be 'M' (magic) or 'E' (extension)")
        if self.buf[self.pos] != self.delim:
            raise self.fail(
                "type", _decode(self.buf[self.pos - 1 : self.pos + 1]), "must be one letter, M or E"
            )
        self.pos += 1

        offset = 0
        magic = b""
        mask: Optional[bytes] = None
        extension: Optional[str] = None
        if type_char == ord("M"):
            offset_text = self.field("offset")
            if offset_text:
                offset = self.parse_offset(offset_text)
            raw_magic = self.scanarg("magic")
            if not raw_magic or raw_magic[0] == 0:
                raise self.fail("magic", _decode(raw_magic), "must not be empty")
            raw_mask = self.scanarg("mask")
            magic = _unescape_hex(raw_magic)
            if raw_mask and raw_mask[0] != 0:
                mask = _unescape_hex(raw_mask)
                if len(mask) != len(magic):
                    raise self.fail(
                        "mask",
                        _decode(raw_mask),
                        f"decodes to {len(mask)} bytes but the magic to {len(magic)}; "
                        "they must be equal",
                    )
            _check_window(offset, len(magic), rules.buffer_size)
            entry_type = EntryType.MAGIC
        else:
            self.field("offset")  # ignored for E, but must be there
            extension = _decode(self.field("extension"))
            if not extension or "/" in extension:
                raise self.fail("extension", extension, "must not be empty nor contain '/'")
            self.field("mask")  # ignored for E, not even unescaped
            entry_type = EntryType.EXTENSION

        interpreter = _decode(self.field("interpreter"))
        if not interpreter:
            raise self.fail("interpreter", interpreter, "must not be empty")

        flags, enabled = self.parse_flags()
        _check_flag_combinations(flags, interpreter, rules)
        if len(_encode(name)) > NAME_MAX:
            err = errno.ENAMETOOLONG if rules.precise_errors else errno.EINVAL
            raise self.fail("name", name, f"is longer than {NAME_MAX} bytes (NAME_MAX)", err)
        if name in RESERVED_NAMES:
            err = errno.EEXIST if rules.precise_errors else errno.EINVAL
            raise self.fail(
                "name", name, "is one of the kernel's own files (register, status)", err
            )
        return Entry(
            name=name,
            interpreter=interpreter,
            type=entry_type,
            offset=offset,
            magic=magic,
            mask=mask,
            extension=extension,
            flags=flags,
            enabled=enabled,
        )

    def parse_offset(self, text: bytes) -> int:
        shown = _decode(text)
        if not self.rules.strict_offset:
            # simple_strtoul: leading digits, then the field must end; an int wrap.
            digits = len(text) - len(text.lstrip(b"0123456789"))
            if digits != len(text):
                raise self.fail("offset", shown, "must be a decimal number")
            value = int(text) % 2**32 if text else 0
            if value > INT_MAX:
                raise self.fail(
                    "offset",
                    shown,
                    "wraps to a negative int (the pre-4.18 overflow bug; not modelled)",
                )
            return value
        # kstrtoint(s, 10): one optional sign, decimal digits, one optional "\n".
        body = text[:-1] if text.endswith(b"\n") else text
        negative = body[:1] == b"-"
        if body[:1] in (b"+", b"-"):
            body = body[1:]
        if not body or not all(b in _DIGITS for b in body):
            raise self.fail("offset", shown, "must be a decimal number (no spaces, no 0x)")
        value = int(body)
        if negative and value:
            raise self.fail("offset", shown, "must not be negative")
        if value > INT_MAX:
            raise self.fail("offset", shown, f"must be at most {INT_MAX} (an int)")
        return value

    def parse_flags(self) -> tuple[Flags, bool]:
        """check_special_flags(), then one optional newline, then the end."""
        letters = self.rules.flag_letters
        start = p = self.pos
        while p < len(self.buf) and chr(self.buf[p]) in letters:
            p += 1
        if p >= len(self.buf):
            # Only reachable when the delimiter is a flag letter on a kernel
            # that allows it: the scan runs past the padding (out of bounds).
            raise self.fail(
                "flags", _decode(self.buf[start : self.count]), "run past the line's end"
            )
        seen = _decode(self.buf[start : min(p, self.count)])
        if self.buf[p] == 0x0A:
            p += 1
        if p != self.count:
            raise self.fail(
                "flags",
                _decode(self.buf[start : self.count]),
                f"only the letters {letters} then one optional newline may follow the interpreter",
            )
        enabled = "D" not in seen
        return Flags.from_letters(seen.replace("D", "")), enabled


def _unescape_hex(raw: bytes) -> bytes:
    """string_unescape_inplace(UNESCAPE_HEX): stop at NUL; ``\\xH[H]`` → byte; else keep ``\\c``."""
    nul = raw.find(0)
    if nul != -1:
        raw = raw[:nul]
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x5C and i + 1 < n:  # a backslash with something after it
            i += 1
            if raw[i] == 0x78 and i + 1 < n and raw[i + 1] in _HEX:  # \xH
                value = int(chr(raw[i + 1]), 16)
                i += 2
                if i < n and raw[i] in _HEX:  # \xHH
                    value = value * 16 + int(chr(raw[i]), 16)
                    i += 1
                out.append(value)
                continue
            out.append(0x5C)
        out.append(raw[i])
        i += 1
    return bytes(out)


# -- the entry-file parser ------------------------------------------------------
#
# entry_status() in fs/binfmt_misc.c writes, from the fixed structure of the
# entry (no escaping of any field):
#
#     "enabled\n" | "disabled\n"
#     "interpreter " <interpreter> "\n"
#     "flags: " <letters in P O C F (T L) order> "\n"
#     then "extension ." <extension> "\n"
#     or   "offset " <%i> "\n" "magic " <hex> "\n" [ "mask " <hex> "\n" ]
#
# The interpreter and the extension may hold any byte but NUL (and '/' for an
# extension), newlines included, so the text is cut from its structure, not
# into lines: the state line is at the start, the flags line is the first
# "\nflags: " after the interpreter line that is followed by a well-formed
# rest, and the rest is the extension (everything up to the final newline) or
# the offset, magic and mask lines, which hold no newline of their own.

_INTERPRETER = "interpreter "
_FLAGS = "\nflags: "
_EXTENSION = "extension ."
# %i of an int in [0, INT_MAX]: no sign, no leading zero, at most 10 digits.
_INT_DIGITS = 10


def _parse_status(name: str, text: str) -> Entry:
    """An entry file's text, as ``entry_status()`` writes it; see the note above.

    A text that two different entries would both produce (an interpreter or an
    extension that itself holds a line such as ``flags: ``) is read as the one
    with the shorter interpreter: the first flags line that leaves a
    well-formed rest ends the interpreter.
    """
    where = f"entry file {name!r}"
    if not text.endswith("\n"):
        raise MalformedStatus(where, "does not end with a newline")
    if text.startswith("enabled\n"):
        enabled, body = True, text[len("enabled\n") :]
    elif text.startswith("disabled\n"):
        enabled, body = False, text[len("disabled\n") :]
    else:
        first = text.split("\n", 1)[0]
        raise MalformedStatus(
            where, f"line 1 {show_value(first)} should be 'enabled' or 'disabled'"
        )
    if not body.startswith(_INTERPRETER):
        raise MalformedStatus(
            where,
            f"line 2 {show_value(body.split(chr(10), 1)[0])} should start with {_INTERPRETER!r}",
        )
    body = body[len(_INTERPRETER) :]
    problem: Optional[str] = None
    cut = body.find(_FLAGS)
    while cut >= 0:
        interpreter = body[:cut]
        line = 3 + interpreter.count("\n")  # the number of the flags line
        try:
            return _entry_of(name, enabled, interpreter, body[cut + 1 :], line)
        except MalformedStatus as exc:
            if problem is None:
                problem = exc.problem
        cut = body.find(_FLAGS, cut + 1)
    if problem is None:
        lines = body.split("\n")
        problem = (
            f"line 3 {show_value(lines[1])} should start with 'flags: '"
            if len(lines) > 2
            else "line 3 is missing (expected 'flags: '…)"
        )
    raise MalformedStatus(where, problem)


def _entry_of(name: str, enabled: bool, interpreter: str, rest: str, line: int) -> Entry:
    """The entry whose text from the flags line on is ``rest`` (ending in a newline)."""
    where = f"entry file {name!r}"
    flags_line, rest = rest.split("\n", 1)  # the text ends in a newline: there is one
    letters = flags_line[len("flags: ") :]
    try:
        flags = Flags.from_letters(letters)
    except InvalidEntry as exc:
        raise MalformedStatus(where, f"line {line}: {exc}") from None
    if flags.letters != letters:
        raise MalformedStatus(where, f"line {line} flags {letters!r} are not in kernel form")
    try:
        if rest.startswith(_EXTENSION):
            return Entry(
                name,
                interpreter,
                type=EntryType.EXTENSION,
                extension=rest[len(_EXTENSION) : -1],
                flags=flags,
                enabled=enabled,
            )
        if not rest:
            raise MalformedStatus(
                where, f"line {line + 1} is missing (expected 'offset ' or 'extension .')"
            )
        lines = rest[:-1].split("\n")
        offset = _offset_line(where, line + 1, lines[0])
        if len(lines) < 2:
            raise MalformedStatus(where, f"line {line + 2} is missing (expected 'magic '…)")
        magic = _hex_line(where, line + 2, lines[1], "magic ")
        mask = _hex_line(where, line + 3, lines[2], "mask ") if len(lines) > 2 else None
        if len(lines) > 3:
            raise MalformedStatus(where, f"unexpected line {show_value(lines[3])} after the mask")
        return Entry(
            name, interpreter, offset=offset, magic=magic, mask=mask, flags=flags, enabled=enabled
        )
    except InvalidEntry as exc:
        raise MalformedStatus(where, str(exc)) from None


def _offset_line(where: str, number: int, line: str) -> int:
    if not line.startswith("offset "):
        raise MalformedStatus(
            where,
            f"line {number} {show_value(line)} should be 'offset <number>' or 'extension .<ext>'",
        )
    digits = line[len("offset ") :]
    # Checked before int(): a text of thousands of digits is no int the kernel
    # prints (and int() refuses more than 4300 of them).
    if (
        not 0 < len(digits) <= _INT_DIGITS
        or not all(c in "0123456789" for c in digits)
        or (digits[0] == "0" and digits != "0")
        or int(digits) > INT_MAX
    ):
        raise MalformedStatus(
            where,
            f"line {number} offset {show_value(digits)} is not a decimal int as the kernel "
            f"writes it (0 to {INT_MAX}, no sign, no leading zero)",
        )
    return int(digits)


def _hex_line(where: str, number: int, line: str, prefix: str) -> bytes:
    if not line.startswith(prefix):
        raise MalformedStatus(
            where, f"line {number} {show_value(line)} should start with {prefix!r}"
        )
    text = line[len(prefix) :]
    if len(text) % 2 or not all(c in _HEXDIGITS for c in text):
        raise MalformedStatus(where, f"line {number} {show_value(text)} is not lowercase hex bytes")
    return bytes.fromhex(text)


_HEXDIGITS = frozenset("0123456789abcdef")

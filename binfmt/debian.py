"""Debian's binfmt-support format files: what ``update-binfmts`` imports.

update-binfmts imports format files from :data:`DEBIAN_IMPORTDIR`
(``/usr/share/binfmts``): ``key value`` lines. The parsing mirrors
``get_import``, ``binfmt_new`` and ``act_enable`` in binfmt-support 2.2's
``src/update-binfmts.c`` and ``src/format.c``; a format becomes an
:class:`~binfmt.entry.Entry` through :meth:`Entry.parse
<binfmt.entry.Entry.parse>` of the line update-binfmts would write.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from typing import Optional

import attrs

from .entry import INT_MAX, Entry, EntryType, Flags, escape_magic
from .errors import ConfigError, InvalidEntry
from .files import one_file_each
from .kernel import KernelRules
from .text import decode, encodable

__all__ = [
    "DEBIAN_IMPORTDIR",
    "RUN_DETECTORS",
    "DebianFormat",
    "debian_files",
    "parse_debian_format",
    "read_debian_formats",
    "render_debian_format",
]

#: Where packages install Debian format files (update-binfmts ``--importdir``).
DEBIAN_IMPORTDIR = "/usr/share/binfmts"
#: What update-binfmts registers as the interpreter of a format that needs a detector.
RUN_DETECTORS = "/usr/lib/binfmt-support/run-detectors"


# isspace() in the C locale: what get_import() strips from the end of a line.
_C_SPACE = " \t\n\v\f\r"
_KNOWN_KEYS = frozenset(
    (
        "package",
        "interpreter",
        "type",
        "magic",
        "offset",
        "mask",
        "extension",
        "detector",
        "credentials",
        "preserve",
        "fix_binary",
    )
)
_RESERVED_FORMAT_NAMES = (".", "..", "register", "status")


def _ascii_lower(text: str) -> str:
    """``tolower()`` in the C locale: only A-Z change."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def _check_value(field: str, value: str) -> None:
    """What one ``key value`` line can carry and give back unchanged."""
    if "\n" in value or "\0" in value:
        raise InvalidEntry(field, value, "must not contain a line break or a NUL byte")
    if value != value.rstrip(_C_SPACE):
        raise InvalidEntry(field, value, "must not end with white space (update-binfmts strips it)")
    if not encodable(value):
        raise InvalidEntry(field, value, "holds text that is not bytes")


def _check_optional(field: str, value: Optional[str]) -> None:
    if value is None:
        return
    if not value:
        raise InvalidEntry(field, value, "must be None or non-empty (an empty value is absent)")
    _check_value(field, value)


@attrs.frozen
class DebianFormat:
    """One Debian format file (``/usr/share/binfmts/NAME``), as update-binfmts reads it.

    ``magic`` and ``mask`` are the escaped text as written (``\\x7fELF\\x02…``);
    the kernel decodes it. An extension format has ``magic == ""`` and its
    ``extension`` set. ``credentials``/``preserve``/``fix_binary`` are true
    when the file says exactly ``yes``. ``extra`` keeps keys update-binfmts
    ignores (FEX writes ``expose_interpreter``), lower-cased as it reads them.
    """

    name: str
    package: str
    interpreter: str
    type: EntryType = EntryType.MAGIC
    offset: int = 0
    magic: str = ""
    mask: Optional[str] = None
    extension: Optional[str] = None
    detector: Optional[str] = None
    credentials: bool = False
    preserve: bool = False
    fix_binary: bool = False
    extra: tuple[tuple[str, str], ...] = ()

    def __attrs_post_init__(self) -> None:
        name = self.name
        if not name or name in _RESERVED_FORMAT_NAMES or "/" in name or "\0" in name:
            raise InvalidEntry(
                "name",
                name,
                "must be a file name (no '/' or NUL) other than '.', '..', 'register', 'status'",
            )
        if not encodable(name):
            raise InvalidEntry("name", name, "holds text that is not bytes")
        for field in ("package", "interpreter"):
            value = getattr(self, field)
            if not value:
                raise InvalidEntry(field, value, "must not be empty")
            _check_value(field, value)
        for field in ("mask", "extension", "detector"):
            _check_optional(field, getattr(self, field))
        if not 0 <= self.offset <= INT_MAX:
            raise InvalidEntry("offset", self.offset, f"must be between 0 and {INT_MAX}")
        if self.type is EntryType.EXTENSION:
            if self.extension is None or self.magic or self.mask is not None or self.offset:
                raise InvalidEntry(
                    "type", "extension", "needs an extension and no magic, mask or offset"
                )
        else:
            if self.extension is not None:
                raise InvalidEntry("extension", self.extension, "only extension formats have one")
            if not self.magic:
                raise InvalidEntry("magic", self.magic, "must not be empty")
            _check_value("magic", self.magic)
        seen = set()
        for key, value in self.extra:
            if (
                not key
                or " " in key
                or _ascii_lower(key) != key
                or key in _KNOWN_KEYS
                or key in seen
            ):
                raise InvalidEntry(
                    "extra", key, "keys must be unique, lower-case, without spaces, not known keys"
                )
            seen.add(key)
            _check_value("extra", key)
            _check_value("extra", value)

    def to_entry(self, kernel: Optional[KernelRules] = None) -> Entry:
        """The entry ``update-binfmts --enable`` registers for this format, as ``kernel`` reads it.

        ``act_enable()`` writes ``:NAME:M|E:OFFSET:MAGIC:MASK:INTERPRETER:`` then
        ``C`` (credentials), ``P`` (preserve), ``F`` (fix_binary) and a
        newline, with the extension in the magic field of an ``E`` format; the
        line is parsed here with :meth:`Entry.parse`, so escapes decode as the
        kernel decodes them (and ``C`` comes back as ``O`` + ``C``).

        Caveat: this uses the format's own interpreter. When the format has a
        ``detector``, or another installed format has the same type, offset,
        magic and mask, update-binfmts registers :data:`RUN_DETECTORS` instead
        (and refuses ``fix_binary``); that depends on the whole database, so
        it is left to the caller. Raises :class:`InvalidEntry` when a field
        holds ``:`` (update-binfmts always uses that delimiter, so the kernel
        would cut the field there) or when the kernel refuses the line.
        """
        texts = {
            "name": self.name,
            "magic": self.magic,
            "mask": self.mask or "",
            "extension": self.extension or "",
            "interpreter": self.interpreter,
        }
        for field, text in texts.items():
            if ":" in text:
                raise InvalidEntry(
                    field, text, "contains ':', the delimiter update-binfmts always uses"
                )
        letters = (
            ("C" if self.credentials else "")
            + ("P" if self.preserve else "")
            + ("F" if self.fix_binary else "")
        )
        if self.type is EntryType.EXTENSION:
            kind, match = "E", self.extension or ""
        else:
            kind, match = "M", self.magic
        line = (
            f":{self.name}:{kind}:{self.offset}:{match}:{self.mask or ''}:"
            f"{self.interpreter}:{letters}\n"
        )
        return Entry.parse(line, kernel)

    @classmethod
    def from_entry(cls, entry: Entry, package: str) -> DebianFormat:
        """The format file that makes update-binfmts register ``entry``.

        Magic and mask are spelled as :meth:`Entry.to_register` spells them
        (letters and digits literal, every other byte ``\\xHH``). Raises
        :class:`InvalidEntry` for what the format cannot say: ``O`` without
        ``C`` (update-binfmts writes only ``C``, ``P`` and ``F``), the 7.3
        flags ``T``/``L``, or a ``:`` in a text field. Whether the entry is
        enabled is not part of a format file.
        """
        flags = entry.flags
        if flags & (Flags.TRANSPARENT | Flags.LOADER):
            raise InvalidEntry(
                "flags", flags.letters, "a Debian format file can only express P, C (OC) and F"
            )
        if Flags.OPEN_BINARY in flags and Flags.CREDENTIALS not in flags:
            raise InvalidEntry(
                "flags",
                flags.letters,
                "O without C cannot be expressed in a Debian format file "
                "(update-binfmts writes C, which implies O, but never O alone)",
            )
        for field, text in (
            ("name", entry.name),
            ("interpreter", entry.interpreter),
            ("extension", entry.extension or ""),
        ):
            if ":" in text:
                raise InvalidEntry(
                    field, text, "contains ':', the delimiter update-binfmts always uses"
                )
        credentials = Flags.CREDENTIALS in flags
        preserve = Flags.PRESERVE_ARGV0 in flags
        fix_binary = Flags.FIX_BINARY in flags
        if entry.type is EntryType.EXTENSION:
            return cls(
                entry.name,
                package,
                entry.interpreter,
                type=EntryType.EXTENSION,
                extension=entry.extension,
                credentials=credentials,
                preserve=preserve,
                fix_binary=fix_binary,
            )
        return cls(
            entry.name,
            package,
            entry.interpreter,
            offset=entry.offset,
            magic=escape_magic(entry.magic),
            mask=None if entry.mask is None else escape_magic(entry.mask),
            credentials=credentials,
            preserve=preserve,
            fix_binary=fix_binary,
        )


def _format_lines(text: str) -> list[str]:
    """getline() lines: split at ``\\n`` only; no empty line after a final newline."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def parse_debian_format(name: str, text: str, source: Optional[str] = None) -> DebianFormat:
    """Parse the format file ``name`` as ``update-binfmts --import`` reads it.

    Mirrors ``get_import()``: each line loses its trailing white space
    (C ``isspace``); the key is everything before the first space (a tab does
    not separate), lower-cased in ASCII; the value is the rest, leading spaces
    included; a line without a space has no value, which counts as absent; a
    later line replaces an earlier one with the same key; nothing is a comment
    (a ``#`` line is just an unknown key). Then ``binfmt_new()``: a format is
    ``magic`` or ``extension`` (not both), an extension format takes no
    ``mask`` or ``offset``, a missing offset is 0. Unknown keys go to
    :attr:`DebianFormat.extra`.

    Raises :class:`ConfigError` naming ``source`` (default: ``name``) where
    update-binfmts refuses the file, and also where it would import a format
    that cannot register: no ``interpreter``, an offset that is not a decimal
    number, a NUL byte, an explicit ``type`` line other than ``magic`` or
    ``extension``.
    """
    where = source if source is not None else name
    values: dict[str, Optional[str]] = {}
    for lineno, raw in enumerate(_format_lines(text), 1):
        line = raw.rstrip(_C_SPACE)
        if "\0" in line:
            raise ConfigError(where, lineno, "contains a NUL byte")
        key, space, value = line.partition(" ")
        values[_ascii_lower(key)] = value if space else None

    def fail(problem: str) -> ConfigError:
        return ConfigError(where, None, problem)

    if not values:
        raise fail("is empty: nothing to import")
    if name in _RESERVED_FORMAT_NAMES:
        raise fail(f"binary format name {name!r} is reserved")
    if values.get("package") is None:
        raise fail("required 'package' line missing (or without a value)")
    if values.get("interpreter") is None:
        raise fail("required 'interpreter' line missing (or without a value)")

    has_magic = values.get("magic") is not None
    has_extension = "extension" in values
    if has_magic and has_extension:
        raise fail("can't use both magic and extension")
    type_text = values.get("type")
    if type_text is None:
        if not has_magic and not has_extension:
            raise fail("either magic or extension is required")
        type_text = "magic" if has_magic else "extension"
    elif type_text not in ("magic", "extension"):
        raise fail(f"type {type_text!r} must be 'magic' or 'extension'")
    elif (type_text == "magic") != has_magic:
        raise fail(f"type {type_text!r} needs a {type_text!r} line")

    offset = 0
    offset_text = values.get("offset")
    if type_text == "extension":
        if values.get("extension") is None:
            raise fail("the 'extension' line has no value")
        if values.get("mask") is not None:
            raise fail("can't use mask with extension")
        if offset_text is not None:
            raise fail("can't use offset with extension")
    elif offset_text is not None:
        if not offset_text.isascii() or not offset_text.isdigit() or len(offset_text) > 10:
            raise fail(f"offset {offset_text!r} is not a decimal number")
        offset = int(offset_text)

    extra = tuple(
        (key, value or "") for key, value in values.items() if key and key not in _KNOWN_KEYS
    )
    try:
        return DebianFormat(
            name=name,
            package=values["package"] or "",
            interpreter=values["interpreter"] or "",
            type=EntryType.MAGIC if type_text == "magic" else EntryType.EXTENSION,
            offset=offset,
            magic=(values.get("magic") or "") if type_text == "magic" else "",
            mask=values.get("mask") if type_text == "magic" else None,
            extension=values.get("extension") if type_text == "extension" else None,
            detector=values.get("detector"),
            credentials=values.get("credentials") == "yes",
            preserve=values.get("preserve") == "yes",
            fix_binary=values.get("fix_binary") == "yes",
            extra=extra,
        )
    except InvalidEntry as exc:
        raise fail(str(exc)) from exc


def render_debian_format(fmt: DebianFormat) -> str:
    """The text of ``fmt``'s format file; :func:`parse_debian_format` gives ``fmt`` back.

    Keys come in the order Debian's packages write them; ``offset`` only when
    it is not 0, the yes/no keys only when yes, then the :attr:`~DebianFormat.extra` keys.
    """
    lines = [f"package {fmt.package}", f"interpreter {fmt.interpreter}"]
    if fmt.type is EntryType.EXTENSION:
        lines.append(f"extension {fmt.extension}")
    else:
        lines.append(f"magic {fmt.magic}")
        if fmt.offset:
            lines.append(f"offset {fmt.offset}")
        if fmt.mask is not None:
            lines.append(f"mask {fmt.mask}")
    if fmt.detector is not None:
        lines.append(f"detector {fmt.detector}")
    for key in ("credentials", "preserve", "fix_binary"):
        if getattr(fmt, key):
            lines.append(f"{key} yes")
    lines += [f"{key} {value}" if value else key for key, value in fmt.extra]
    return "\n".join(lines) + "\n"


def read_debian_formats(importdir: str = DEBIAN_IMPORTDIR) -> list[DebianFormat]:
    """Every format file in ``importdir``, sorted by name (``update-binfmts --import``).

    Like ``act_import()`` with no name, every entry that ``stat()`` calls a
    regular file is read (symlinks followed: Debian's ``jar`` is an
    alternatives link), other entries are skipped. A missing directory holds
    no formats. Raises :class:`ConfigError` naming the first malformed file.
    """
    try:
        names = sorted(os.listdir(importdir), key=os.fsencode)
    except FileNotFoundError:
        return []
    formats = []
    for name in names:
        path = os.path.join(importdir, name)
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                continue
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(path, None, f"cannot be read: {exc.strerror}") from exc
        formats.append(parse_debian_format(name, decode(data), source=path))
    return formats


def debian_files(entries: Iterable[Entry], package: str = "binfmt") -> dict[str, str]:
    """One Debian format file per entry, named after the entry (:func:`binfmt.files.write_files`).

    ``package`` is the owner update-binfmts records. Raises
    :class:`InvalidEntry` for what :meth:`DebianFormat.from_entry` cannot
    express, or a repeated name.
    """
    return {
        entry.name: render_debian_format(DebianFormat.from_entry(entry, package))
        for entry in one_file_each(entries)
    }

"""Registrations that survive a reboot: systemd ``binfmt.d`` and Debian format files.

Two boot-time registrants read files this module reads and writes:

* **systemd-binfmt** applies ``*.conf`` files from the :data:`SYSTEMD_DIRS`
  (``binfmt.d(5)``): one kernel register line per line. The parsing mirrors
  ``apply_file``/``apply_rule`` in systemd's ``src/binfmt/binfmt.c`` and the
  file selection ``conf_files_list_strv`` in ``src/basic/conf-files.c``.
* **update-binfmts** (Debian's binfmt-support) imports format files from
  ``/usr/share/binfmts``: ``key value`` lines. The parsing mirrors
  ``get_import``, ``binfmt_new`` and ``act_enable`` in binfmt-support 2.2's
  ``src/update-binfmts.c`` and ``src/format.c``.

Both are parsed into :class:`~binfmt.entry.Entry` values through
:meth:`Entry.parse <binfmt.entry.Entry.parse>`, i.e. exactly as the kernel will
read the line the tool writes. :func:`write_files` writes such files
atomically and never through a symlink.

Text is ``str``; files are read as bytes and decoded as UTF-8 with
``surrogateescape``, so every byte survives (the convention of ``entry.py``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from typing import Optional

import attrs

from .entry import _LITERAL, INT_MAX, NAME_MAX, Entry, EntryType, Flags, _escape
from .errors import BinfmtError, ConfigError, InvalidEntry, UnsafeFileName, WriteError
from .kernel import KernelRules

__all__ = [
    "DEBIAN_IMPORTDIR",
    "RUN_DETECTORS",
    "SYSTEMD_DIRS",
    "ConfigLine",
    "DebianFormat",
    "binfmt_d_files",
    "debian_files",
    "effective_entries",
    "effective_files",
    "parse_binfmt_d",
    "parse_debian_format",
    "read_binfmt_d",
    "read_debian_formats",
    "render_binfmt_d",
    "render_debian_format",
    "write_files",
]

#: systemd's binfmt.d directories, highest precedence first (``CONF_PATHS("binfmt.d")``).
SYSTEMD_DIRS = (
    "/etc/binfmt.d",
    "/run/binfmt.d",
    "/usr/local/lib/binfmt.d",
    "/usr/lib/binfmt.d",
    "/lib/binfmt.d",
)
#: Where packages install Debian format files (update-binfmts ``--importdir``).
DEBIAN_IMPORTDIR = "/usr/share/binfmts"
#: What update-binfmts registers as the interpreter of a format that needs a detector.
RUN_DETECTORS = "/usr/lib/binfmt-support/run-detectors"


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _encodable(text: str) -> bool:
    """Whether ``text`` maps back to bytes (lone surrogates outside U+DC80..U+DCFF do not)."""
    try:
        _encode(text)
    except UnicodeEncodeError:
        return False
    return True


# == systemd binfmt.d ===========================================================

# read_line_full() in systemd's src/basic/fileio.c ends a line at \n, \r or
# NUL, and swallows one combination of distinct markers (\r\n, \n\r, each
# optionally followed by a NUL); a NUL always ends the terminator.
_SYSTEMD_LINE = re.compile(r"([^\n\r\0]*)(\n\r?\0?|\r\n?\0?|\0|\Z)")
# strstrip() strips WHITESPACE (" \t\n\r"); COMMENTS is "#;\n".
_SYSTEMD_WHITESPACE = " \t\n\r"
_SYSTEMD_COMMENTS = "#;"


def _systemd_lines(text: str) -> list[str]:
    """The lines systemd's ``read_line()`` returns, without their terminators."""
    lines = []
    pos, end = 0, len(text)
    while pos < end:
        match = _SYSTEMD_LINE.match(text, pos)
        assert match is not None  # the pattern matches the empty string
        lines.append(match.group(1))
        pos = match.end()
    return lines


@attrs.frozen
class ConfigLine:
    """One register line of a binfmt.d file, with where it came from.

    ``line`` is the raw text of the line (without its terminator); what
    systemd writes to ``register`` is that text stripped of blanks, plus a
    newline.
    """

    entry: Entry
    source: str
    lineno: int
    line: str


def parse_binfmt_d(
    text: str,
    source: str,
    kernel: Optional[KernelRules] = None,
    errors: Optional[list[BinfmtError]] = None,
) -> list[ConfigLine]:
    """Parse a binfmt.d file's text as systemd-binfmt applies it.

    Mirrors ``apply_file()`` in systemd's ``src/binfmt/binfmt.c``: lines end at
    ``\\n``, ``\\r`` or NUL (``read_line()``), each line is stripped of leading
    and trailing blanks (``strstrip()``), empty lines and lines whose first
    remaining character is ``#`` or ``;`` are skipped, and every other line is
    written to ``register`` followed by a newline (``apply_rule()``), so it is
    parsed here with :meth:`Entry.parse` under ``kernel`` (default: the running
    kernel). Line numbers count as systemd counts them.

    Raises :class:`ConfigError` (``source:lineno: …``, chained to the
    :class:`InvalidEntry`) for the first line the kernel would refuse. With an
    ``errors`` list, does what systemd does instead: collects the error there,
    skips the line and carries on.
    """
    rules = kernel or KernelRules.running()
    result = []
    for lineno, raw in enumerate(_systemd_lines(text), 1):
        rule = raw.strip(_SYSTEMD_WHITESPACE)
        if not rule or rule[0] in _SYSTEMD_COMMENTS:
            continue
        try:
            if not _encodable(rule):
                raise ConfigError(source, lineno, "the line holds text that is not bytes")
            try:
                entry = Entry.parse(rule + "\n", rules)
            except InvalidEntry as exc:
                raise ConfigError(source, lineno, str(exc)) from exc
        except ConfigError as exc:
            if errors is None:
                raise
            errors.append(exc)
            continue
        result.append(ConfigLine(entry, source, lineno, raw))
    return result


def _is_mask(path: str) -> bool:
    """A symlink to /dev/null (any character device): the documented way to mask a name."""
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def effective_files(dirs: Iterable[str] = SYSTEMD_DIRS, root: str = "/") -> list[str]:
    """The ``*.conf`` files systemd-binfmt applies at boot, in application order.

    Mirrors ``conf_files_list_strv()`` (``src/basic/conf-files.c``) as
    systemd-binfmt calls it (no flags): directories are scanned in ``dirs``
    order, hidden names (leading ``.``) are skipped, and the first directory
    holding a file name wins it (same-name override); the survivors are
    applied in ``strcmp`` order of their file *names*, whatever their
    directory. ``root`` prefixes every directory (a container image or a test
    tree); missing or unreadable directories are skipped, as systemd does.

    A name won by a symlink to ``/dev/null`` is masked: systemd reads nothing
    from it, so it is left out of the list (it still hides the same name in
    lower directories). An empty file hides it the same way and is listed. A
    dangling symlink is listed too; :func:`read_binfmt_d` skips it as
    systemd's ``apply_file(…, ignore_enoent=true)`` does.
    """
    winners: dict[str, str] = {}
    for directory in dirs:
        path = os.path.join(root, directory.lstrip("/"))
        try:
            names = os.listdir(path)
        except OSError:
            continue
        for name in names:
            if name.startswith(".") or not name.endswith(".conf"):
                continue
            winners.setdefault(name, os.path.join(path, name))
    ordered = sorted(winners, key=os.fsencode)
    return [winners[name] for name in ordered if not _is_mask(winners[name])]


def read_binfmt_d(
    dirs: Iterable[str] = SYSTEMD_DIRS,
    root: str = "/",
    kernel: Optional[KernelRules] = None,
    errors: Optional[list[BinfmtError]] = None,
) -> list[ConfigLine]:
    """Every register line of the :func:`effective_files`, in the order systemd applies them.

    The same name may occur more than once; :func:`effective_entries` gives
    what the kernel holds afterwards. Raises :class:`ConfigError` for an
    invalid line or a file that exists but cannot be read — or, with an
    ``errors`` list, collects them there and skips them, as systemd does.
    """
    lines: list[ConfigLine] = []
    for path in effective_files(dirs, root):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            continue
        except OSError as exc:
            problem = ConfigError(path, None, f"cannot be read: {exc.strerror}")
            if errors is None:
                raise problem from exc
            errors.append(problem)
            continue
        lines += parse_binfmt_d(_decode(data), path, kernel, errors)
    return lines


def effective_entries(lines: Iterable[ConfigLine]) -> list[ConfigLine]:
    """The lines whose entries remain registered after systemd applied ``lines`` in order.

    ``apply_rule()`` first removes an entry of the same name, then registers
    the line, so the last line for each name wins. The result is in
    registration order, by each survivor's position; the kernel looks entries
    up newest first, i.e. in the reverse of this order.
    """
    survivors: dict[str, ConfigLine] = {}
    for line in lines:
        survivors.pop(line.entry.name, None)
        survivors[line.entry.name] = line
    return list(survivors.values())


_HEADER = "# Written by binfmt. Each line is one binfmt_misc register line (binfmt.d(5))."


def _comment_lines(text: str) -> list[str]:
    return ["#" if not line else f"# {line}" for line in _systemd_lines(text)]


def render_binfmt_d(
    entries: Iterable[Entry],
    comment: Optional[str] = None,
    kernel: Optional[KernelRules] = None,
) -> str:
    """A binfmt.d file registering ``entries`` in order: a header comment, then one line each.

    Lines are :meth:`Entry.to_register` under ``kernel``; ``comment`` (any
    number of lines) follows the header as ``#`` lines. A binfmt.d line has no
    way to say "disabled": every entry is registered enabled. Raises
    :class:`InvalidEntry` for an entry whose line a binfmt.d file cannot hold
    (a text field with a line break, for instance).
    """
    out = [_HEADER]
    if comment is not None:
        out += _comment_lines(comment)
    for entry in entries:
        line = entry.to_register(kernel)
        # A line break would split the rule; blanks at either end would be
        # stripped; '#'/';' would make it a comment (to_register never picks
        # those delimiters, but the file format depends on it).
        if (
            _systemd_lines(line) != [line]
            or line != line.strip(_SYSTEMD_WHITESPACE)
            or line[0] in _SYSTEMD_COMMENTS
        ):
            raise InvalidEntry(
                "entry", entry.name, "its register line cannot be one line of a binfmt.d file"
            )
        out.append(line)
    return "\n".join(out) + "\n"


# == Debian binfmt-support format files =========================================

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
    if not _encodable(value):
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
        if not _encodable(name):
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
            magic=_escape(entry.magic, ":", _LITERAL),
            mask=None if entry.mask is None else _escape(entry.mask, ":", _LITERAL),
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
        formats.append(parse_debian_format(name, _decode(data), source=path))
    return formats


# == writing ======================================================================


def _check_file_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise UnsafeFileName(name, "must be a non-empty string")
    if name in (".", ".."):
        raise UnsafeFileName(name, "'.' and '..' name directories, not files")
    if "/" in name:
        raise UnsafeFileName(name, "must be a plain file name, without '/'")
    if "\0" in name:
        raise UnsafeFileName(name, "must not contain a NUL byte")
    if not _encodable(name):
        raise UnsafeFileName(name, "holds text that is not bytes")
    if len(_encode(name)) > NAME_MAX:
        raise UnsafeFileName(name, f"is longer than {NAME_MAX} bytes (NAME_MAX)")


def _os_error(exc: OSError, path: str, action: str) -> WriteError:
    err = exc.errno or errno.EIO
    return WriteError(err, path, f"cannot {action} {path}: {exc.strerror or exc}")


def write_files(directory: str, files: Mapping[str, str]) -> list[str]:
    """Write ``files`` (name → text) into the existing ``directory``, all or nothing.

    Every name must be one plain file name (not empty, ``.``, ``..``, no ``/``
    or NUL, at most 255 bytes), else :class:`UnsafeFileName` is raised before
    anything is written. An existing symlink (in /etc/binfmt.d typically a
    ``/dev/null`` mask) or non-regular file at a name is refused with
    :class:`WriteError`: nothing is ever written through a link.

    Each file is written to a temporary file in ``directory`` (mode 0644,
    flushed with ``fsync``); only when all are written are they renamed over
    their names (``os.replace``, atomic each), and the directory is synced.
    On a failure before the renames, the temporary files are removed and
    nothing changed. Should a rename itself fail (an I/O error), the files
    renamed before it stay written and the rest are removed. Returns the paths
    written, in the order of ``files``. Text is encoded as UTF-8 with
    ``surrogateescape``.
    """
    items = list(files.items())
    for name, text in items:
        _check_file_name(name)
        if not isinstance(text, str):
            raise TypeError(f"invalid content for {name!r}: must be str, not {type(text).__name__}")
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise WriteError(
                errno.ENOENT, directory, f"cannot write into {directory}: no such directory"
            ) from exc
        if exc.errno == errno.ENOTDIR:
            raise WriteError(
                errno.ENOTDIR, directory, f"cannot write into {directory}: not a directory"
            ) from exc
        raise _os_error(exc, directory, "open directory") from exc
    temps: list[tuple[str, str]] = []  # (temporary name, final name), not yet renamed
    try:
        for name, _ in items:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _os_error(exc, path, "inspect") from exc
            if stat.S_ISLNK(st.st_mode):
                raise WriteError(
                    errno.ELOOP,
                    path,
                    f"refusing to replace {path}: it is a symbolic link (a mask?); remove it first",
                )
            if not stat.S_ISREG(st.st_mode):
                raise WriteError(
                    errno.EEXIST, path, f"refusing to replace {path}: it is not a regular file"
                )
        for name, text in items:
            temp = f".binfmt-{secrets.token_hex(8)}.tmp"
            try:
                fd = os.open(
                    temp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=dir_fd,
                )
            except OSError as exc:
                raise _os_error(exc, os.path.join(directory, temp), "create") from exc
            temps.append((temp, name))
            try:
                os.fchmod(fd, 0o644)  # the umask may have removed bits
                data = _encode(text)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as exc:
                raise _os_error(exc, os.path.join(directory, name), "write") from exc
            finally:
                os.close(fd)
        written = []
        while temps:
            temp, name = temps[0]
            path = os.path.join(directory, name)
            try:
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as exc:
                raise _os_error(exc, path, "rename into place") from exc
            temps.pop(0)
            written.append(path)
        os.fsync(dir_fd)
        return written
    finally:
        for temp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
        os.close(dir_fd)


def _unique(entries: Iterable[Entry]) -> list[Entry]:
    result: list[Entry] = []
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise InvalidEntry("name", entry.name, "occurs twice; one file holds one entry")
        seen.add(entry.name)
        result.append(entry)
    return result


def binfmt_d_files(
    entries: Iterable[Entry], kernel: Optional[KernelRules] = None
) -> dict[str, str]:
    """One binfmt.d file per entry, ``NAME.conf``, for :func:`write_files`.

    Named after the entry, as QEMU's script and Debian's packages name theirs,
    so a file in /etc/binfmt.d overrides the vendor file of the same name in
    /usr/lib/binfmt.d. Raises :class:`InvalidEntry` for a name systemd would
    ignore (a leading ``.`` makes the file hidden) or a repeated name.
    """
    files = {}
    for entry in _unique(entries):
        if entry.name.startswith("."):
            raise InvalidEntry(
                "name", entry.name, "systemd-binfmt ignores hidden files (a leading '.')"
            )
        files[f"{entry.name}.conf"] = render_binfmt_d([entry], kernel=kernel)
    return files


def debian_files(entries: Iterable[Entry], package: str = "binfmt") -> dict[str, str]:
    """One Debian format file per entry, named after the entry, for :func:`write_files`.

    ``package`` is the owner update-binfmts records. Raises
    :class:`InvalidEntry` for what :meth:`DebianFormat.from_entry` cannot
    express, or a repeated name.
    """
    return {
        entry.name: render_debian_format(DebianFormat.from_entry(entry, package))
        for entry in _unique(entries)
    }

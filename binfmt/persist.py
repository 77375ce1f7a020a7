"""Registrations that survive a reboot: exporting entries to files, and loading them back.

Two boot-time registrants read files, each standard in its own module:
systemd-binfmt reads ``binfmt.d`` (:mod:`binfmt.binfmt_d`), Debian's
update-binfmts reads format files (:mod:`binfmt.debian`); files are written
atomically by :func:`binfmt.files.write_files`. This module holds what the
``export`` and ``load`` commands do with them: :func:`export_files` renders
entries in one of the formats, :func:`current_entries` picks registered
entries to export, :func:`load_entries` reads binfmt.d directories and files
into the entries they register. The names of the three standard modules are
re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal, Optional

from .binfmt_d import (
    SYSTEMD_DIRS,
    ConfigLine,
    binfmt_d_files,
    effective_entries,
    effective_files,
    parse_binfmt_d,
    read_binfmt_d,
    render_binfmt_d,
)
from .debian import (
    DEBIAN_IMPORTDIR,
    RUN_DETECTORS,
    DebianFormat,
    debian_files,
    parse_debian_format,
    read_debian_formats,
    render_debian_format,
)
from .entry import Entry
from .errors import BinfmtError, ConfigError, InvalidEntry, InvalidValue, NoSuchEntry
from .files import write_files
from .kernel import KernelRules
from .procfs import State
from .text import decode

__all__ = [
    "DEBIAN_IMPORTDIR",
    "FORMATS",
    "RUN_DETECTORS",
    "SYSTEMD_DIRS",
    "ConfigLine",
    "DebianFormat",
    "Format",
    "binfmt_d_files",
    "current_entries",
    "debian_files",
    "effective_entries",
    "effective_files",
    "export_files",
    "load_entries",
    "parse_binfmt_d",
    "parse_debian_format",
    "persisted_below",
    "read_binfmt_d",
    "read_debian_formats",
    "render_binfmt_d",
    "render_debian_format",
    "write_files",
]

#: The file formats :func:`export_files` writes.
Format = Literal["systemd", "debian", "register"]
FORMATS: tuple[Format, ...] = ("systemd", "debian", "register")
#: The one file of the ``register`` format: plain register lines, oldest first.
REGISTER_FILE = "binfmt.register"


def export_files(
    entries: Sequence[Entry],
    format: Format = "systemd",
    *,
    package: str = "binfmt",
    kernel: Optional[KernelRules] = None,
) -> dict[str, str]:
    """The files (name → text) that register ``entries``, in ``format``.

    ``systemd``: one ``NAME.conf`` per entry (:func:`binfmt_d_files`);
    ``debian``: one format file per entry owned by ``package``
    (:func:`debian_files`); ``register``: one file of register lines in order.
    """
    if format == "systemd":
        return binfmt_d_files(entries, kernel)
    if format == "debian":
        return debian_files(entries, package)
    if format == "register":
        lines = [e.to_register(kernel) for e in entries]
        for entry, line in zip(entries, lines):
            if "\n" in line or "\r" in line:
                raise InvalidEntry("entry", entry.name, "its register line holds a line break")
        return {REGISTER_FILE: "".join(line + "\n" for line in lines)}
    raise InvalidValue("format", format, f"must be one of {', '.join(FORMATS)}")


def current_entries(state: State, names: Sequence[str] = ()) -> list[Entry]:
    """The registered entries to export, oldest first (the order that registers them again).

    With ``names``, only those, each of which must be registered (else
    :class:`~binfmt.errors.NoSuchEntry`). Disabled entries are included:
    files cannot say disabled, so they come back enabled.
    """
    entries = list(reversed(state.entries))
    if not names:
        return entries
    for name in names:
        if state.get(name) is None:
            raise NoSuchEntry(name)
    return [e for e in entries if e.name in names]


def persisted_below(
    entries: Sequence[Entry], directory: str, dirs: Sequence[str] = SYSTEMD_DIRS
) -> dict[str, str]:
    """The entries that systemd-binfmt registers anyway, from below ``directory``: name → file.

    When ``directory`` is one of ``dirs`` (:data:`binfmt.binfmt_d.SYSTEMD_DIRS`, highest
    precedence first: ``/etc/binfmt.d``, say),
    an entry that a file of a lower-precedence directory (a vendor's
    ``/usr/lib/binfmt.d/python3.11.conf``) registers identically needs no
    copy there: the copy would hide the vendor's file and go stale when its
    package goes. Entries with a file of their own name already in
    ``directory`` are not listed (that file must be kept up to date).
    """
    target = os.path.normpath(os.path.abspath(directory))
    known = [os.path.normpath(d) for d in dirs]
    if target not in known:
        return {}
    lower = known[known.index(target) + 1 :]
    problems: list[BinfmtError] = []  # unreadable lines: systemd skips them, so do we
    below = {
        line.entry.name: line for line in effective_entries(read_binfmt_d(lower, errors=problems))
    }
    found = {}
    for entry in entries:
        line = below.get(entry.name)
        own = os.path.join(directory, f"{entry.name}.conf")
        if line is not None and line.entry.same_registration(entry) and not os.path.lexists(own):
            found[entry.name] = line.source
    return found


def load_entries(paths: Sequence[str], kernel: Optional[KernelRules] = None) -> list[Entry]:
    """The entries that binfmt.d directories and files register, in registration order.

    Directories are read together as systemd-binfmt reads its directories
    (give them highest precedence first: same-name override, ``/dev/null``
    masks, file-name order), then each file in turn; a later line for a name
    replaces an earlier one (:func:`effective_entries`). Raises
    :class:`~binfmt.errors.InvalidValue` for a path that does not exist and
    :class:`~binfmt.errors.ConfigError` for an unreadable file or a line the
    kernel would refuse.
    """
    for path in paths:
        if not os.path.exists(path):
            raise InvalidValue("path", path, "no such file or directory")
    dirs = [os.path.abspath(p) for p in paths if os.path.isdir(p)]
    lines: list[ConfigLine] = read_binfmt_d(dirs, kernel=kernel) if dirs else []
    for path in paths:
        if os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    content = decode(f.read())
            except OSError as exc:
                raise ConfigError(path, None, f"cannot be read: {exc.strerror}") from exc
            lines += parse_binfmt_d(content, path, kernel)
    return [line.entry for line in effective_entries(lines)]

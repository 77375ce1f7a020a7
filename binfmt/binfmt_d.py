"""systemd's ``binfmt.d``: the files systemd-binfmt registers at boot.

systemd-binfmt applies ``*.conf`` files from the :data:`SYSTEMD_DIRS`
(``binfmt.d(5)``): one kernel register line per line. The parsing mirrors
``apply_file``/``apply_rule`` in systemd's ``src/binfmt/binfmt.c`` and the
file selection ``conf_files_list_strv`` in ``src/basic/conf-files.c``. Lines
are parsed into :class:`~binfmt.entry.Entry` values with
:meth:`Entry.parse <binfmt.entry.Entry.parse>`, i.e. exactly as the kernel
will read what systemd writes. Files are read as bytes and decoded with the
library's convention (:mod:`binfmt.text`), so every byte survives.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from typing import Optional

import attrs

from .entry import Entry
from .errors import BinfmtError, ConfigError, InvalidEntry
from .files import one_file_each
from .kernel import KernelRules
from .text import decode, encodable

__all__ = [
    "SYSTEMD_DIRS",
    "ConfigLine",
    "binfmt_d_files",
    "effective_entries",
    "effective_files",
    "parse_binfmt_d",
    "read_binfmt_d",
    "render_binfmt_d",
]

#: systemd's binfmt.d directories, highest precedence first (``CONF_PATHS("binfmt.d")``).
SYSTEMD_DIRS = (
    "/etc/binfmt.d",
    "/run/binfmt.d",
    "/usr/local/lib/binfmt.d",
    "/usr/lib/binfmt.d",
    "/lib/binfmt.d",
)


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
            if not encodable(rule):
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


def effective_files(dirs: Iterable[str] = SYSTEMD_DIRS, host_root: str = "/") -> list[str]:
    """The ``*.conf`` files systemd-binfmt applies at boot, in application order.

    Mirrors ``conf_files_list_strv()`` (``src/basic/conf-files.c``) as
    systemd-binfmt calls it (no flags): directories are scanned in ``dirs``
    order, hidden names (leading ``.``) are skipped, and the first directory
    holding a file name wins it (same-name override); the survivors are
    applied in ``strcmp`` order of their file *names*, whatever their
    directory. ``host_root`` prefixes every directory (a container image or a test
    tree); missing or unreadable directories are skipped, as systemd does.

    A name won by a symlink to ``/dev/null`` is masked: systemd reads nothing
    from it, so it is left out of the list (it still hides the same name in
    lower directories). An empty file hides it the same way and is listed. A
    dangling symlink is listed too; :func:`read_binfmt_d` skips it as
    systemd's ``apply_file(…, ignore_enoent=true)`` does.
    """
    winners: dict[str, str] = {}
    for directory in dirs:
        path = os.path.join(host_root, directory.lstrip("/"))
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
    host_root: str = "/",
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
    for path in effective_files(dirs, host_root):
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
        lines += parse_binfmt_d(decode(data), path, kernel, errors)
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


def binfmt_d_files(
    entries: Iterable[Entry], kernel: Optional[KernelRules] = None
) -> dict[str, str]:
    """One binfmt.d file per entry, ``NAME.conf``, for :func:`binfmt.files.write_files`.

    Named after the entry, as QEMU's script and Debian's packages name theirs,
    so a file in /etc/binfmt.d overrides the vendor file of the same name in
    /usr/lib/binfmt.d. Raises :class:`InvalidEntry` for a name systemd would
    ignore (a leading ``.`` makes the file hidden) or a repeated name.
    """
    files = {}
    for entry in one_file_each(entries):
        if entry.name.startswith("."):
            raise InvalidEntry(
                "name", entry.name, "systemd-binfmt ignores hidden files (a leading '.')"
            )
        files[f"{entry.name}.conf"] = render_binfmt_d([entry], kernel=kernel)
    return files

"""The bottom floor of every report: escaping untrusted text, tables, JSON.

Much of what the commands print comes from outside: entry names and
interpreter paths from binfmt_misc, file names and ``#!`` lines from an
image, messages that quote them. Printed raw, a file called
``x\\x1b[31mRED\\nfake: line`` recolours the terminal and forges a report
line. So:

* :func:`printable` escapes every character that is not printable — C0 and
  C1 controls, DEL, line and paragraph separators, bidi overrides and other
  format characters — and every undecodable byte (held as ``U+DC80``..
  ``U+DCFF``, see :mod:`binfmt.text`) as ``\\xHH``, ``\\uHHHH`` or
  ``\\UHHHHHHHH``; printable text, non-ASCII included, is left alone.
* :func:`table` aligns rows of cells, escaping each cell first, so widths are
  those of what is shown.
* :func:`terminal_text` is the last line of defence for a whole report:
  every line of it is escaped, so a field that a renderer forgot still
  cannot move the cursor (it can only be shown escaped). The command line
  writes everything, stdout and stderr, through it.
* :func:`json_text` keeps values exact and the bytes safe: JSON escapes C0
  controls itself; this escapes the other non-printable characters as
  ``\\uXXXX`` too, so the document can be printed to a terminal. An
  undecodable byte ``0xXX`` appears as the lone surrogate ``"\\udcXX"``
  (Python's ``json`` reads it back, and ``.encode("utf-8", "surrogateescape")``
  gives the original bytes).

This module imports nothing else of the package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["json_text", "printable", "table", "terminal_text"]


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape holds it
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``, ``\\u202e`` …).

    Idempotent on its own output. A space is printable; a tab or newline is not.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def terminal_text(text: str) -> str:
    """A whole report made safe for a terminal: each line :func:`printable`, newlines kept."""
    if text.isprintable():
        return text
    return "\n".join(printable(line) for line in text.split("\n"))


def table(rows: Sequence[Sequence[str]], *, indent: str = "  ", gap: str = "  ") -> list[str]:
    """Rows of cells as aligned lines: every column but the last padded to its widest cell.

    Cells are escaped with :func:`printable` first. Trailing blanks are dropped.
    """
    shown = [[printable(cell) for cell in row] for row in rows]
    if not shown:
        return []
    columns = max(len(row) for row in shown)
    widths = [max((len(r[i]) for r in shown if i < len(r)), default=0) for i in range(columns)]
    lines = []
    for row in shown:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + row[-1:]
        lines.append((indent + gap.join(cells)).rstrip())
    return lines


# Outside strings json.dumps writes only ASCII; inside them, ensure_ascii=False
# leaves every character but '"', '\\' and C0 controls as it is.
_NON_ASCII = re.compile(r"[^\x00-\x7e]")


def _json_escape(match: re.Match[str]) -> str:
    ch = match.group()
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    high, low = divmod(code - 0x10000, 0x400)  # a UTF-16 surrogate pair, as JSON spells it
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"


def json_text(document: Any) -> str:
    """``document`` as indented JSON, one document per call, ending in a newline.

    Printable non-ASCII text stays readable; everything a terminal would act on
    is a ``\\u`` escape. Values round-trip exactly through :func:`json.loads`.
    """
    import json

    text = json.dumps(document, indent=2, ensure_ascii=False)
    return _NON_ASCII.sub(_json_escape, text) + "\n"

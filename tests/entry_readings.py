"""Every entry an entry file's text can stand for: the oracle for the entry-file reader.

Worked out by brute force, independently of :func:`binfmt.Entry.from_status`:
each ``"\\nflags: "`` after the interpreter line may end the interpreter, and
each rest is tried as an extension or as offset, magic and mask lines; the
readings are the entries whose own text (:meth:`~binfmt.Entry.to_status`) is
exactly the text. One reading: the text is unambiguous. Several: two entries
write the same text, and the library documents which one it returns (the
shortest interpreter).
"""

from __future__ import annotations

import re

from binfmt import Entry, EntryType, Flags
from binfmt.errors import BinfmtError

_MAGIC_TAIL = re.compile(r"offset (\d+)\nmagic ([0-9a-f]*)\n(?:mask ([0-9a-f]*)\n)?", re.DOTALL)


def readings(name: str, text: str) -> list[Entry]:
    """The entries whose entry file is ``text``, shortest interpreter first."""
    state = text.split("\n", 1)[0]
    if state not in ("enabled", "disabled") or not text.startswith(state + "\ninterpreter "):
        return []
    enabled = state == "enabled"
    body = text[len(state) + len("\ninterpreter ") :]
    found = []
    for cut in range(len(body)):
        if not body.startswith("\nflags: ", cut):
            continue
        interpreter = body[:cut]
        letters, _, rest = body[cut + len("\nflags: ") :].partition("\n")
        for entry in _tails(name, interpreter, letters, rest, enabled):
            if entry.to_status() == text:
                found.append(entry)
    return found


def _tails(name: str, interpreter: str, letters: str, rest: str, enabled: bool) -> list[Entry]:
    out = []
    try:
        flags = Flags.from_letters(letters)
        if rest.startswith("extension .") and rest.endswith("\n"):
            out.append(
                Entry(
                    name,
                    interpreter,
                    type=EntryType.EXTENSION,
                    extension=rest[len("extension .") : -1],
                    flags=flags,
                    enabled=enabled,
                )
            )
        match = _MAGIC_TAIL.fullmatch(rest)
        if match:
            offset, magic, mask = match.groups()
            out.append(
                Entry(
                    name,
                    interpreter,
                    offset=int(offset),
                    magic=bytes.fromhex(magic),
                    mask=None if mask is None else bytes.fromhex(mask),
                    flags=flags,
                    enabled=enabled,
                )
            )
    except (BinfmtError, ValueError):
        pass
    return out

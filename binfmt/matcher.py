"""A binfmt_misc state compiled for looking up many files quickly.

:meth:`State.lookup <binfmt.procfs.State.lookup>` tries every entry in turn,
which is what the kernel does and is fine for one file. A scan asks the same
question for hundreds of thousands of files, and nodes may carry dozens of
entries. Entries that compare the same bytes (same offset, size and mask —
QEMU's 34 targets use ten such groups) are grouped, and each group becomes one
dictionary keyed by :func:`~binfmt.entry.masked_key`, the kernel's comparison
as an integer: a lookup costs one key and one dict probe per group, whatever
the number of entries. The winner is the one earliest in lookup order, as in
the kernel.
"""

from __future__ import annotations

from typing import Optional

from .entry import Entry, EntryType, extension_of, mask_bits, masked_key
from .procfs import State

__all__ = ["Matcher"]


class Matcher:
    """``lookup(header, path)`` and ``candidates(header, path)`` with the kernel's answer."""

    def __init__(self, state: State) -> None:
        self.entries: tuple[Entry, ...] = tuple(state.entries) if state.enabled else ()
        #: (offset, size, mask) → {masked key → ranks of the entries with that key}
        groups: dict[tuple[int, int, Optional[int]], dict[int, list[int]]] = {}
        self._extensions: dict[str, list[int]] = {}
        for rank, entry in enumerate(self.entries):
            if not entry.enabled:
                continue
            if entry.type is EntryType.EXTENSION:
                assert entry.extension is not None
                self._extensions.setdefault(entry.extension, []).append(rank)
                continue
            mask = mask_bits(entry.mask)
            key = masked_key(entry.magic, 0, entry.size, mask)
            table = groups.setdefault((entry.offset, entry.size, mask), {})
            table.setdefault(key, []).append(rank)
        self._groups = tuple(groups.items())

    @property
    def groups(self) -> int:
        """How many dictionary probes one lookup costs (plus one for extensions)."""
        return len(self._groups)

    def lookup(self, header: bytes, path: str = "") -> Optional[Entry]:
        """The entry the kernel picks for a file whose first bytes are ``header``."""
        best: Optional[int] = None
        for (offset, size, mask), table in self._groups:
            ranks = table.get(masked_key(header, offset, size, mask))
            if ranks is not None and (best is None or ranks[0] < best):
                best = ranks[0]
        if self._extensions:
            ext = extension_of(path)
            ranks = self._extensions.get(ext) if ext is not None else None
            if ranks is not None and (best is None or ranks[0] < best):
                best = ranks[0]
        return None if best is None else self.entries[best]

    def candidates(self, header: bytes, path: str = "") -> list[Entry]:
        """Every enabled entry that matches, in lookup order: the first one wins."""
        found: list[int] = []
        for (offset, size, mask), table in self._groups:
            found += table.get(masked_key(header, offset, size, mask), ())
        if self._extensions:
            ext = extension_of(path)
            if ext is not None:
                found += self._extensions.get(ext, ())
        return [self.entries[rank] for rank in sorted(found)]
